"""DNS for qmail-remote, on dnspython: qmail's dns.c (dns_mxip, dns_ip).

Each lookup ends one of three ways, as in qmail: an answer (possibly
empty: the name exists but has no such records), DnsSoft (try again
later: a timeout, a server failure, a refused query) or DnsHard (the
name does not exist, or cannot be a domain name at all).

MX resolution follows RFC 974 and RFC 5321 section 5.1: the MX records
sorted by preference, equal preferences in random order; a name with no
MX records is its own mail exchanger at preference 0 (its A and AAAA
records); a CNAME is followed by the resolver; an MX host that does not
exist is skipped, one that cannot be looked up now makes an empty result
a deferral rather than a bounce.  A null MX (RFC 7505: one MX, host ".")
says the domain takes no mail.  An IP literal, [1.2.3.4] or
[IPv6:2001:db8::1] (or a bare dotted quad, as qmail allows), is used as
it is, with no lookup.

Addresses of one host: IPv4 first, then IPv6.  XXX: conservative, so a
machine whose IPv6 is configured but not routed still delivers without
waiting on a timeout; a host with IPv6 only is reached over IPv6.

Nameservers: the list given to make_resolver() (qmail-remote reads it
from control/dnsservers), else /etc/resolv.conf.  Never from the
environment: qmail-remote runs with qmail-send's environment, and a
lookup redirected elsewhere would redirect mail.
"""

import ipaddress
import time

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

DNS_TIMEOUT = 5.0       # seconds per server and try (resolv.conf's default)
DNS_LIFETIME = 30.0     # seconds per lookup at most; then the delivery is deferred
MX_MAX = 32             # MX hosts tried at most: a domain's DNS is its owner's to fill
MX_BUDGET = 120.0       # seconds for all of one delivery's address lookups: MX_MAX
                        # hosts whose servers never answer would take half an hour
PORT_DNS = 53


class DnsSoft(Exception):
    """The lookup failed temporarily."""


class DnsHard(Exception):
    """The name does not exist."""


class NullMx(Exception):
    """The domain publishes a null MX: it accepts no mail (RFC 7505)."""


class Mx:
    """One address to try: its preference, the host name it came from
    (for TLS verification), and the address as text."""

    __slots__ = ('pref', 'name', 'ip')

    def __init__(self, pref: int, name: str, ip: str):
        self.pref, self.name, self.ip = pref, name, ip

    def __repr__(self):
        return 'Mx(%d, %r, %r)' % (self.pref, self.name, self.ip)

    def __eq__(self, other):
        return (isinstance(other, Mx)
                and (self.pref, self.name, self.ip) == (other.pref, other.name, other.ip))


# --- pure -----------------------------------------------------------------

def nameservers(lines):
    """[(address, port)] of control/dnsservers' lines (bytes), None for
    none (then /etc/resolv.conf).  Raises ValueError or UnicodeError."""
    return [parse_nameserver(line.decode('ascii')) for line in lines] or None


def parse_nameserver(line: str):
    """(address, port) of a control/dnsservers line: 1.2.3.4, 1.2.3.4:5353,
    2001:db8::53 or [2001:db8::53]:5353.  Raises ValueError."""
    line = line.strip()
    port = PORT_DNS
    if line.startswith('['):
        end = line.find(']')
        if end == -1:
            raise ValueError('unclosed bracket')
        addr, rest = line[1:end], line[end + 1:]
        if rest:
            if not rest.startswith(':'):
                raise ValueError('junk after bracket')
            port = int(rest[1:])
    elif line.count(':') == 1:
        addr, _, p = line.partition(':')
        port = int(p)
    else:
        addr = line
    addr = str(ipaddress.ip_address(addr))
    if not 0 < port < 65536:
        raise ValueError('bad port')
    return addr, port


def literal(host: str):
    """The address of an IP-literal host, or None: [1.2.3.4], 1.2.3.4,
    [IPv6:2001:db8::1] (RFC 5321 4.1.3), and [2001:db8::1] leniently."""
    text = host
    if text.startswith('[') and text.endswith(']'):
        text = text[1:-1]
        if text[:5].lower() == 'ipv6:':
            text = text[5:]
            try:
                return str(ipaddress.IPv6Address(text))
            except ValueError:
                return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def order_mx(mxs, rand):
    """[(pref, name)] by preference, names of equal preference shuffled
    with rand (a random.Random): RFC 5321 5.1 load sharing."""
    groups = {}
    for pref, name in mxs:
        groups.setdefault(pref, []).append(name)
    out = []
    for pref in sorted(groups):
        names = groups[pref]
        rand.shuffle(names)
        out.extend((pref, name) for name in names)
    return out


def is_null_mx(mxs) -> bool:
    """RFC 7505: a single MX record whose host is the root."""
    return len(mxs) == 1 and mxs[0][1] == ''


# --- lookups ----------------------------------------------------------------

def make_resolver(nameservers=None, lifetime: float = DNS_LIFETIME):
    """A resolver using nameservers, [(address, port)], or /etc/resolv.conf
    when that is None.  Raises DnsSoft when resolv.conf gives no server."""
    if nameservers:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [dns.nameserver.Do53Nameserver(addr, port)
                           for addr, port in nameservers]
    else:
        try:
            res = dns.resolver.Resolver()
        except (dns.exception.DNSException, OSError) as err:
            raise DnsSoft('unable to read /etc/resolv.conf: %s' % err) from None
    # qmail's res_query: the name is looked up as given, no search list.
    res.search = []
    res.domain = dns.name.root
    res.use_search_by_default = False
    res.timeout = DNS_TIMEOUT
    res.lifetime = lifetime
    return res


def to_name(host: str):
    """host as an absolute DNS name; DnsHard if it cannot be one."""
    if not host or host == '.':
        raise DnsHard('empty name')
    try:
        return dns.name.from_text(host)
    except (dns.exception.DNSException, UnicodeError, ValueError) as err:
        raise DnsHard(str(err)) from None


def query(res, name, rdtype):
    """The records of one type, [] when the name exists without them."""
    try:
        answer = res.resolve(name, rdtype, search=False, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN) as err:
        raise DnsHard(str(err)) from None
    except dns.exception.DNSException as err:
        # timeouts, SERVFAIL and REFUSED from every server, bad replies
        raise DnsSoft(str(err)) from None
    return list(answer.rrset) if answer.rrset is not None else []


def mx(res, host: str):
    """[(pref, exchange)] of host, exchange '' for the root; None when
    host has no MX records.  Raises DnsSoft, DnsHard."""
    records = query(res, to_name(host), dns.rdatatype.MX)
    if not records:
        return None
    return [(r.preference, r.exchange.to_text(omit_final_dot=True)
             if r.exchange != dns.name.root else '') for r in records]


def addresses(res, host: str):
    """(addresses of host, flagsoft): its A records then its AAAA
    records; flagsoft when one of the two lookups failed temporarily.
    Raises DnsHard when the name does not exist."""
    name = to_name(host)
    out = []
    flagsoft = False
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            out.extend(r.address for r in query(res, name, rdtype))
        except DnsSoft:
            flagsoft = True
        except DnsHard:
            # NXDOMAIN for AAAA after A records (some broken servers
            # answer so): the name has the A records, as qmail, which
            # asks for A alone, would deliver to them.
            if rdtype == dns.rdatatype.A or not (out or flagsoft):
                raise
    return out, flagsoft


def dns_ip(res, host: str):
    """qmail's dns_ip: the addresses of host itself at preference 0 (for
    an smtproutes relay, or a domain without MX).  Raises DnsSoft when
    none were found and a lookup failed temporarily, DnsHard when host
    does not exist."""
    lit = literal(host)
    if lit is not None:
        return [Mx(0, lit, lit)]
    ips, flagsoft = addresses(res, host)
    if not ips and flagsoft:
        raise DnsSoft('address lookup failed')
    return [Mx(0, host.rstrip('.'), ip) for ip in ips]


def dns_mxip(res, host: str, rand, budget: float = MX_BUDGET, clock=None):
    """qmail's dns_mxip: (addresses to try in order, flagsoft).  Raises
    DnsSoft, DnsHard (host does not exist), NullMx.  The MX hosts' address
    lookups stop after budget seconds (flagsoft: the rest were not
    asked)."""
    lit = literal(host)
    if lit is not None:
        return [Mx(0, lit, lit)], False
    mxs = mx(res, host)
    if mxs is None:                     # e.g. a CNAME to a name with A only
        return dns_ip(res, host), False
    if is_null_mx(mxs):
        raise NullMx(host)
    out = []
    flagsoft = False
    clock = clock or time.monotonic
    deadline = clock() + budget
    for pref, name in order_mx(mxs, rand)[:MX_MAX]:
        if not name:
            continue
        if clock() >= deadline:
            flagsoft = True             # not asked: a later try may get them
            break
        lit = literal(name)
        if lit is not None:             # broken DNS, but qmail takes it
            out.append(Mx(pref, lit, lit))
            continue
        try:
            ips, soft = addresses(res, name)
        except DnsHard:
            continue
        except DnsSoft:
            flagsoft = True
            continue
        flagsoft = flagsoft or soft
        out.extend(Mx(pref, name, ip) for ip in ips)
    return out, flagsoft
