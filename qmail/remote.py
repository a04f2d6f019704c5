"""qmail-remote: send one message via SMTP to recipients at one host.

Usage:    qmail-remote host sender recip [recip ...]
Runs as:  qmailr, group qmail: qmail-rspawn's forked child (the module
          is loaded once there), or on its own; cwd changed to HOME.
Reads:    fd 0, the message (qmail-send's mess file, seekable); control/
          me, helohost, smtproutes, timeoutconnect, timeoutremote,
          dnsservers, tlsdestinations, tlsclientciphers, clientcert.pem,
          domainkeys/ (DKIM keys: remote_dkim); the DNS (MX, A, AAAA,
          CNAME).
Writes:   fd 1, NUL-terminated reports: one per recipient the peer was
          asked about, r (accepted), h (rejected for good) or s (rejected
          for now), in argv order, then the message report, K (success:
          the peer took the message for every r recipient), Z (temporary
          failure) or D (permanent failure), each with a human-readable
          text that may end up in a bounce.  See qmail-rspawn's report().
          queue/lock/tcpto, the addresses that time out (qmail.lib.tcpto).
Exits:    0, always (qmail-remote(8)): every failure is a report.
Trusts:   qmail-send for the arguments (sender already VERP-expanded by
          qmail-send; used as it is); nothing the DNS or the peer says
          beyond the bounds in qmail.lib.dns and remote_smtp.
See:      qmail-remote(8), qmail-tcpto(8); RFC 5321 sections 4 and 5.

Where the message goes: the first smtproutes entry (by the host, then
each .suffix of it, then the empty domain; later lines win, as qmail's
constmap) gives a relay[:port] whose addresses are tried (no MX lookup,
and no check that the relay is this host); an empty relay, or no entry,
means the host's MX records (qmail.lib.dns).  Addresses at or below the
best preference that is this host's (remote_ipme) are dropped: if that
leaves none, D "Although I'm listed as a best-preference MX...".  Each
remaining address not marked dead in tcpto is tried in order, with
timeoutconnect; the first connection made decides (remote_smtp);
if none, Z "Sorry, I wasn't able to establish an SMTP connection."

Beyond qmail 1.03:
  control/dnsservers: resolvers to ask, one a line (1.2.3.4, 1.2.3.4:5353,
      2001:db8::53, [2001:db8::53]:5353); default /etc/resolv.conf.
  control/tlsdestinations: domains that require TLS with a verified
      certificate, one a line, "domain" (the system's CAs) or
      "domain:/path/cafile.pem"; ".domain" for its subdomains and
      ":cafile" or ":" for every domain, matched like smtproutes, both
      against the recipient's domain as DNS looks it up (policy_name: a
      final dot, escapes or an international spelling change nothing).
      A third field lists what an MX host's certificate may name:
      "domain:cafile:.mail.example mx2.example" ("d" itself, ".d" any
      name under d, "mx" the MX host's own name as DNS gave it); without
      it, the domain or a name under it (Postfix's "secure"), so that a
      forged MX record cannot send the mail to a host that merely holds
      a good certificate for its own name.  An smtproutes relay's
      certificate must name the relay, a literal's its address.
      Other domains get opportunistic STARTTLS, without verification.
  control/tlsclientciphers: the OpenSSL cipher list for TLS up to 1.2
      (its lines joined by ":"), as the qmail TLS patch has it; default
      OpenSSL's.  One that selects no cipher defers the mail (Z).
  control/clientcert.pem: a certificate chain and its key in one PEM
      file, as the TLS patch has it, shown to a server that asks for a
      client certificate.  One that cannot be loaded is not shown (the
      server decides whether to go on without), and the success report
      says why after its TLS state.
  IPv6: AAAA records and [IPv6:...] literals are used; tcpto keeps
      IPv6 peers in its own table.
  control/smtproutes: a domain's spaces around it do not count, and a
      port that is not a number from 1 to 65535 ("relay:", "relay:x",
      "relay:93189") defers the mail with "Unable to parse
      control/smtproutes." where qmail tried port 0, or the number
      modulo 65536.  A user and a password after the relay ("relay:587
      user password", the SMTP AUTH patches' form) are given to the
      relay by SMTP AUTH (remote_smtp), only under TLS verified for the
      relay's name (tlsdestinations' CA file, else the system's).  Port
      465 is TLS from the connection's start (RFC 8314), no STARTTLS.
  An address with a CR or LF is never sent (the peer would read the
      rest as a command): such a recipient is refused for good (h),
      such a sender fails the message (D).
  A message whose last line has no end (it came through qmail-inject,
      or a forward, never through SMTP) fails at once, D "SMTP cannot
      transfer messages with partial final lines. (#5.6.2)", before any
      connection: qmail gives that answer only after the peer accepted a
      recipient and DATA, so it first deferred such a message for as
      long as the peer was down (up to queuelifetime) and bounced it
      with the peer's refusal of a recipient when there was one.  The
      message could never have gone; its bounce now says why at once.
"""

import os
import random
import signal
import socket
import stat
import sys
import time

from qmail.lib import auto, control, tcpto
from qmail.lib.quote import quote
from qmail.lib import dns as qdns
from qmail import remote_dkim, remote_ipme, remote_smtp

PORT_SMTP = 25          # silly rabbit, /etc/services is for users
PORT_SUBMISSIONS = 465  # TLS from the connection's start (RFC 8314)


class Report(Exception):
    """Ends the delivery with a message report: letter and text."""

    def __init__(self, record: bytes):
        super().__init__(record)
        self.record = record


def temp(text: bytes) -> Report:
    return Report(b'Z' + text)


def perm(text: bytes) -> Report:
    return Report(b'D' + text)


T_NOMEM = b'Out of memory. (#4.3.0)\n'
T_OSERR = b'System resources temporarily unavailable. (#4.3.0)\n'
T_NOCONN = b"Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"
T_DNS = b"Sorry, I couldn't find any host by that name. (#4.1.2)\n"
T_CHDIR = b'Unable to switch to home directory. (#4.3.0)\n'
T_CONTROL = b'Unable to read control files. (#4.3.0)\n'
P_USAGE = b'I (qmail-remote) was invoked improperly. (#5.3.5)\n'
P_NOMX = b"Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n"
P_AMBIGMX = (b"Sorry. Although I'm listed as a best-preference MX or A for that host,\n"
             b"it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n")
P_SENDER = b'Sorry, I will not send an envelope sender with a line break. (#5.1.7)\n'


# --- pure -----------------------------------------------------------------

def outsafe(text: bytes) -> bytes:
    """qmail's outsafe: a host name from argv, printable."""
    return bytes(ch if 33 <= ch <= 126 else 63 for ch in text)


def split_policy_line(line: bytes):
    """(key, sep, value) of a control/smtproutes or tlsdestinations line:
    at its first colon, as qmail's constmap, but past the brackets of an
    address literal ([IPv6:2001:db8::1]: its colons are its own)."""
    if line.startswith(b'['):
        end = line.find(b']')
        if end > 0:
            sep = line[end + 1:end + 2]
            return line[:end + 1], sep if sep == b':' else b'', line[end + 2:] if sep == b':' else b''
    return line.partition(b':')


def parse_map(lines) -> dict:
    """qmail's constmap with flagcolon: {lowercased key: value}; lines
    without a colon are ignored; a later line wins."""
    out = {}
    for line in lines:
        key, sep, value = split_policy_line(line)
        if sep:
            out[policy_key(key)] = value      # as policy_name spells hosts
    return out


def parse_tlsmap(lines) -> dict:
    """control/tlsdestinations: like parse_map, and a line without a
    colon is a domain with the system's CAs."""
    out = {}
    for line in lines:
        key, _, value = split_policy_line(line)
        out[policy_key(key)] = value.strip()
    return out


def policy_name(host: bytes) -> bytes:
    """host as DNS will look it up, for control/smtproutes and
    control/tlsdestinations: lower case, no final dot, escapes such as
    "\\116" undone, an international name in its ASCII (IDNA) form; an
    address literal, or what DNS could not take, as it is.  Without this,
    "example.org." or "bücher.test" reached the same hosts as the
    spellings listed, without their TLS requirement or route."""
    if host.startswith(b'['):
        return host.lower()
    try:
        return os.fsencode(qdns.to_name(os.fsdecode(host)).to_text(
            omit_final_dot=True)).lower()
    except (qdns.DnsHard, UnicodeError, ValueError):
        return host.lower()


def policy_key(key: bytes) -> bytes:
    """A control file's domain as policy_name() spells a host ("." and
    the empty key stay what they are)."""
    key = key.strip().lower()
    if len(key) > 1 and key.endswith(b'.'):
        key = key[:-1]
    if key.startswith(b'.'):
        return b'.' + policy_name(key[1:]) if len(key) > 1 else key
    return policy_name(key) if key else key


def lookup_map(host: bytes, table: dict):
    """The value for host: host itself, then each suffix from a dot,
    then the empty domain (qmail-remote's smtproutes walk); None."""
    host = host.lower()
    for i in range(len(host) + 1):
        if i == 0 or i == len(host) or host[i:i + 1] == b'.':
            value = table.get(host[i:])
            if value is not None:
                return value
    return None


def parse_relay(value: bytes):
    """(relay host, port, auth) of an smtproutes value "relay",
    "relay:port", or either followed by a user and a password ("relay:587
    user secret", the SMTP AUTH patches' form; the password is the rest
    of the line, spaces inside it kept): auth is (user, password) or
    None.  [IPv6:...] literals keep their colons.  As qmail reads the
    port, only its leading digits count ("relay:26:" is port 26).
    Raises ValueError."""
    words = value.split(None, 1)
    hostport = words[0] if words else b''
    auth = None
    if len(words) > 1:
        creds = words[1].split(None, 1)
        if len(creds) != 2:
            raise ValueError('a user without a password')
        if creds[0].startswith(b':'):
            raise ValueError('a space before the port')     # "relay :587 user pw"
        auth = (creds[0], creds[1].strip())
    port = PORT_SMTP
    if hostport.startswith(b'['):
        end = hostport.find(b']')
        if end == -1:
            raise ValueError('unclosed bracket')
        relay, rest = hostport[:end + 1], hostport[end + 1:]
    else:
        relay, sep, rest = hostport.partition(b':')
        rest = sep + rest
    if not relay:
        raise ValueError('no relay')
    if rest:
        digits = rest[1:len(rest) - len(rest[1:].lstrip(b'0123456789'))]
        if not rest.startswith(b':') or not digits:
            raise ValueError('bad port')
        port = int(digits)
        if not 0 < port < 65536:
            raise ValueError('bad port')
    return relay, port, auth


def addrmangle(addr: bytes) -> bytes:
    """The address for MAIL FROM or RCPT TO: the box quoted if need be."""
    j = addr.rfind(b'@')
    if j == -1:
        return addr
    box = addr[:j]
    return quote(box) + addr[j:]


def has_break(addr: bytes) -> bool:
    return b'\n' in addr or b'\r' in addr


def usable(addrs, is_me, relay: bool):
    """The addresses worth trying: those preferred over the best
    preference at which this host is listed; all of them for a relay."""
    prefme = 300000 if relay else 100000
    if not relay:
        for mx in addrs:
            if mx.pref < prefme and is_me(mx.ip):
                prefme = mx.pref
    return [mx for mx in addrs if mx.pref < prefme]


ADDR_PER_HOST = 8      # addresses tried of one MX host (or relay)
ADDR_MAX = 32          # addresses tried in all, each up to timeoutconnect


def capped(addrs):
    """addrs in order, at most ADDR_PER_HOST of each host and ADDR_MAX
    in all: a domain's owner fills its DNS, and each address that does
    not answer holds this delivery for timeoutconnect."""
    seen = {}
    out = []
    for mx in addrs:
        n = seen.get(mx.name, 0)
        if n < ADDR_PER_HOST:
            seen[mx.name] = n + 1
            out.append(mx)
            if len(out) == ADDR_MAX:
                break
    return out


# --- the shell ------------------------------------------------------------

class Settings:
    """qmail-remote's control files."""

    def __init__(self, ctl: control.Controls):
        self.directory = ctl.directory      # (control/domainkeys: remote_dkim)
        helohost = ctl.line('helohost', flagme=True)
        if helohost is None:
            raise temp(T_CONTROL)
        self.helohost = helohost
        self.timeoutconnect = max(1, ctl.seconds('timeoutconnect', 60))
        self.timeout = max(1, ctl.seconds('timeoutremote', 1200))
        self.routes = parse_map(ctl.lines('smtproutes'))
        self.tlsdest = parse_tlsmap(ctl.lines('tlsdestinations'))
        self.tlsciphers = control.colon_list(ctl.lines('tlsclientciphers'))
        cert = os.path.join(ctl.directory, CLIENTCERT)
        self.clientcert = cert if os.path.lexists(cert) else None
        try:
            self.nameservers = qdns.nameservers(ctl.lines('dnsservers'))
        except (ValueError, UnicodeError):
            raise temp(b'Unable to parse control/dnsservers. (#4.3.0)\n') from None


# What Settings reads (helohost falls back to me).
CLIENTCERT = 'clientcert.pem'       # the TLS patch's, in control/
SETTINGS_FILES = ('helohost', 'me', 'timeoutconnect', 'timeoutremote', 'smtproutes',
                  'tlsdestinations', 'tlsclientciphers', 'dnsservers', CLIENTCERT)
_last_settings = None


def load_settings(ctl: control.Controls) -> Settings:
    """Settings, kept by a worker of qmail-rspawn (which runs many
    deliveries) while none of their control files changed
    (control.stamps), as qmail-smtpd keeps its Config: smtproutes and
    tlsdestinations of 10,000 lines each took 150 ms a delivery to
    parse (their names put in DNS form)."""
    global _last_settings
    key = control.stamps(ctl.directory, SETTINGS_FILES)
    if key is not None and _last_settings is not None and _last_settings[0] == key:
        return _last_settings[1]
    _last_settings = None
    settings = Settings(ctl)
    if key is not None:
        _last_settings = (key, settings)
    return settings


def message_span(fd: int):
    """The message's bytes still to read from fd, if fd is a regular file
    (qmail-rspawn gives the mess file at offset 0), else None."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return max(0, st.st_size - os.lseek(fd, 0, os.SEEK_CUR))
    except OSError:
        return None


def read_span(fd: int, size: int) -> bytes:
    """The size bytes from fd's offset, which stays where it is."""
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    chunks, left = [], size
    while left > 0:
        chunk = os.pread(fd, min(left, 1 << 20), pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
        left -= len(chunk)
    return b''.join(chunks)


def spooled(fd: int):
    """fd's message copied into an unnamed file, at its start: for
    qmail-remote run by hand on a pipe, with DKIM keys to sign with (the
    message is read twice).  qmail-rspawn gives the queue's file."""
    import tempfile
    f = tempfile.TemporaryFile()
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        f.write(chunk)
    f.flush()
    f.seek(0)
    return f


def check_final_newline(fd: int, size):
    """Refuse a message whose last line has no end before connecting,
    rather than halfway through DATA as qmail does."""
    if not size:
        return
    try:
        last = os.pread(fd, 1, os.lseek(fd, 0, os.SEEK_CUR) + size - 1)
    except OSError:
        return                          # the blast will tell
    if last and last not in b'\n\r':
        raise perm(b'SMTP cannot transfer messages with partial final lines. (#5.6.2)\n')


def resolve(host: bytes, relay, resolver, rand):
    """[Mx] to try for host (or the relay); Report when there is none."""
    target = relay if relay is not None else host
    name, shown = os.fsdecode(target), outsafe(target)
    try:
        if relay is not None:
            addrs, flagsoft = qdns.dns_ip(resolver, name), False
        else:
            addrs, flagsoft = qdns.dns_mxip(resolver, name, rand)
    except qdns.DnsSoft:
        raise temp(T_DNS) from None
    except qdns.DnsHard:
        raise perm(b"Sorry, I couldn't find any host named " + shown + b'. (#5.1.2)\n') from None
    except qdns.NullMx:
        raise perm(b'Sorry, ' + shown + b' does not accept mail (null MX). (#5.1.10)\n') from None
    if not addrs:
        raise temp(T_DNS) if flagsoft else perm(P_NOMX)
    return addrs, flagsoft


class TlsPolicy:
    """control/tlsdestinations' word on one domain: required, the context
    that checks host names (for an smtproutes relay, an address literal,
    or "mx"), the one that checks the chain alone, and match: the names
    a certificate from an MX host must hold one of (None: the MX host's
    own name, "mx")."""

    def __init__(self, required, ctx, ctx_names=None, match=None):
        self.required, self.ctx, self.ctx_names, self.match = required, ctx, ctx_names, match


def tls_policy(host: bytes, tlsdest: dict, ciphers: bytes = None,
               clientcert: str = None) -> TlsPolicy:
    """The TlsPolicy for host (as policy_name spells it): required (and
    verified) if control/tlsdestinations names it, else opportunistic.
    A line "domain:cafile:names" lists what an MX host's certificate may
    name ("d" itself, ".d" any name under d, "mx" the MX host's own name
    from DNS); without names, the domain or a name under it (Postfix's
    "secure"): a forged MX record cannot send the mail to a host that
    merely holds a certificate for its own name.  ciphers: the OpenSSL
    cipher list (control/tlsclientciphers), None for OpenSSL's;
    clientcert: control/clientcert.pem's path, None if there is none."""
    value = lookup_map(host, tlsdest)
    try:
        if value is None:
            return TlsPolicy(False, remote_smtp.tls_context(False, ciphers=ciphers,
                                                            clientcert=clientcert))
        cafile, _, names = value.partition(b':')
        cafile = os.fsdecode(cafile) or None
        match = [os.fsdecode(policy_key(n)) for n in names.replace(b',', b' ').split()]
        if not match:
            h = os.fsdecode(host)
            match = [h, '.' + h]
        if match == ['mx']:
            match = None                # the MX host's own name, by ctx
        return TlsPolicy(True, remote_smtp.tls_context(True, cafile, ciphers=ciphers,
                                                       clientcert=clientcert),
                         remote_smtp.tls_context(True, cafile, hostnames=False,
                                                 ciphers=ciphers, clientcert=clientcert),
                         match)
    except remote_smtp.NoCipher:
        raise temp(b'The cipher list in control/tlsclientciphers selects no cipher. '
                   b'(#4.3.0)\n') from None
    except OSError:
        raise temp(b'Unable to load the CA file that control/tlsdestinations names for '
                   + outsafe(host) + b'. (#4.3.0)\n') from None


def required_policy(ciphers: bytes = None, clientcert: str = None) -> TlsPolicy:
    """TLS required and verified with the system's CAs (an smtproutes
    route with a password, where tlsdestinations says nothing)."""
    try:
        return TlsPolicy(True, remote_smtp.tls_context(True, ciphers=ciphers,
                                                       clientcert=clientcert))
    except remote_smtp.NoCipher:
        raise temp(b'The cipher list in control/tlsclientciphers selects no cipher. '
                   b'(#4.3.0)\n') from None
    except OSError:
        raise temp(b"Unable to load the system's CA certificates. (#4.3.0)\n") from None


def tls_for(host: bytes, mx, policy: TlsPolicy, relay=None):
    """The Tls of one address: SNI is the name the address came from (MX
    host or relay), the address itself for a literal; a required one is
    verified against the relay's name, the literal, or policy.match."""
    hostname = mx.name if qdns.literal(mx.name) is None else mx.ip
    # The address literal's own check only for a literal recipient: an MX
    # record that is a bare address is DNS's word, as forgeable as a name.
    if policy.required and policy.match is not None and relay is None \
            and qdns.literal(os.fsdecode(host)) is None:
        match = [hostname.lower() if p == 'mx' else p for p in policy.match]
        return remote_smtp.Tls(policy.ctx_names, hostname, True, True, host, match)
    return remote_smtp.Tls(policy.ctx, hostname, policy.required, policy.required, host)


def connect(ip: str, port: int, timeout: float):
    """A connected socket; TimeoutError, OSError."""
    family = socket.AF_INET6 if ':' in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((ip, port))
        # Each command, and the message's end with its dot, is one write:
        # nothing for Nagle to gather, only a last segment to hold back
        # till the peer's delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def deliver(host: bytes, sender: bytes, recips, settings: Settings, fd: int,
            out: list, resolver=None, is_me=None, rand=None, memory=None,
            now=time.time) -> bytes:
    """One delivery: recipient records appended to out, the message
    report returned; Report raised for the failures before a connection.
    resolver, is_me, rand and memory are the tests' to replace."""
    if has_break(sender):
        raise perm(P_SENDER)
    size = message_span(fd)
    check_final_newline(fd, size)
    mangled = [None if has_break(r) else addrmangle(r) for r in recips]

    relay, port, auth = None, PORT_SMTP, None
    key = policy_name(host)
    route = lookup_map(key, settings.routes)
    if route:
        try:
            relay, port, auth = parse_relay(route)
        except ValueError:
            raise temp(b'Unable to parse control/smtproutes. (#4.3.0)\n') from None
    policy = tls_policy(key, settings.tlsdest, settings.tlsciphers, settings.clientcert)
    reason = None           # why TLS is required, when not tlsdestinations
    if auth is not None:
        # A password goes only under TLS, to the relay its certificate
        # names: checked with the CA file tlsdestinations gives for the
        # relay's name, else for the domain, else the system's CAs.
        relay_key = policy_name(relay)
        if lookup_map(relay_key, settings.tlsdest) is not None:
            policy = tls_policy(relay_key, settings.tlsdest, settings.tlsciphers,
                                settings.clientcert)
        elif not policy.required:
            policy = required_policy(settings.tlsciphers, settings.clientcert)
        reason = b'my control/smtproutes gives a password for this route'

    if resolver is None:
        try:
            resolver = qdns.make_resolver(settings.nameservers)
        except qdns.DnsSoft:
            raise temp(b'Unable to read /etc/resolv.conf. (#4.3.0)\n') from None
    addrs, flagsoft = resolve(host, relay, resolver, rand or random.Random())
    if is_me is None:
        try:
            me = remote_ipme.ipme()
        except OSError:
            raise temp(T_OSERR) from None
        is_me = lambda ip: remote_ipme.is_me(ip, me)   # noqa: E731
    addrs = usable(addrs, is_me, relay is not None)
    if not addrs:
        # Listed as the best MX we could look up; a better one whose
        # addresses did not answer may be back later: then it is theirs.
        raise temp(T_DNS) if flagsoft else perm(P_AMBIGMX)
    addrs = capped(addrs)

    # Signed once, for every address tried (a key under
    # control/domainkeys for the From: domain: remote_dkim).
    dkim = None                         # (DKIM-Signature field, its report line)
    if size is not None and remote_dkim.configured(settings.directory):
        try:
            head = read_span(fd, min(size, remote_dkim.HEADER_MAX))
            found = remote_dkim.key_for(remote_dkim.header_of(remote_dkim.wire_form(head)),
                                        sender, settings.directory)
            if found is not None:
                d, selector = outsafe(found[0]), outsafe(found[1])
                try:
                    dkim = (remote_dkim.sign(read_span(fd, size), found),
                            b'DKIM signed for ' + d + b' (s=' + selector + b').\n')
                except remote_dkim.Unsigned as err:
                    dkim = (b'', b'Not DKIM signed for ' + d + b': ' + err.args[0] + b'.\n')
        except remote_dkim.Dkim as err:
            raise temp(err.args[0]) from None
        except MemoryError:
            raise temp(T_NOMEM) from None

    memory = memory or tcpto.Memory()
    for mx in addrs:
        if memory.dead(mx.ip, int(now())):
            continue
        # Opportunistic TLS that fails in the handshake gets a second,
        # plain connection to the same address (fellback).
        fellback = False
        first = tls_for(host, mx, policy, relay)
        first.implicit = port == PORT_SUBMISSIONS
        first.reason = reason
        for tls in (first, None):
            try:
                sock = connect(mx.ip, port, settings.timeoutconnect)
            except TimeoutError:
                memory.err(mx.ip, True, int(now()))
                break
            except OSError:
                memory.err(mx.ip, False, int(now()))
                break
            memory.err(mx.ip, False, int(now()))
            conn = remote_smtp.Conn(sock, settings.timeout)
            session = remote_smtp.Session(conn, mx.ip.encode('ascii'),
                                          settings.helohost, out, fellback)
            if fellback:
                session.fellnote = remote_smtp.cert_note(first.ctx)
            try:
                return session.run(addrmangle(sender), mangled, fd, size, tls, auth, dkim)
            except remote_smtp.TlsFallback:
                fellback = True
                continue
            finally:
                conn.close()
    raise temp(T_NOCONN)


def write_all(fd: int, data: bytes):
    while data:
        data = data[os.write(fd, data):]


def main(argv=None) -> int:
    args = [os.fsencode(a) for a in (sys.argv[1:] if argv is None else argv)]
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    out = []
    try:
        if len(args) < 3:
            raise perm(P_USAGE)
        try:
            os.chdir(auto.QMAIL)
        except OSError:
            raise temp(T_CHDIR) from None
        try:
            settings = load_settings(control.Controls('control').init())
        except OSError:
            raise temp(T_CONTROL) from None
        fd, spool = 0, None
        if message_span(0) is None and remote_dkim.configured(settings.directory):
            try:
                spool = spooled(0)
            except OSError:
                raise temp(b'Unable to read message. (#4.3.0)\n') from None
            fd = spool.fileno()
        try:
            final = deliver(args[0], args[1], args[2:], settings, fd, out)
        finally:
            if spool is not None:
                spool.close()
    except Report as r:
        final = r.record
    except MemoryError:
        final = b'Z' + T_NOMEM
    except Exception as err:        # the last resort: defer, never bounce
        final = (b'Zqmail-remote bug: %s in %s. (#4.3.0)\n'
                 % (type(err).__name__.encode(), where(err)))
    try:
        write_all(1, b''.join(rec + b'\0' for rec in out + [final]))
    except OSError:
        pass
    return 0


def where(err: BaseException) -> bytes:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return b'?'
    code = tb.tb_frame.f_code
    return ('%s:%d' % (os.path.basename(code.co_filename), tb.tb_lineno)).encode()


def run():
    try:
        code = main()
    except BaseException:
        code = 0
    sys.exit(code)


if __name__ == '__main__':
    run()
