"""qmail-smtpd's addresses: parsing MAIL and RCPT, and the checks on them.

Part of qmail-smtpd (see qmail/smtpd.py).  Pure functions taking the
controls as values, except local_ips(), which asks the kernel for this
host's addresses (qmail's ipme.c).
"""

import _socket    # not `socket`: inet_pton only, without enum

ADDRMAX = 899            # qmail refuses an address of 900 bytes with its NUL
SIZEDIGITS = 20          # a SIZE= longer than this is "too big" unparsed


def addrparse(arg: bytes):
    """qmail's addrparse: (address, rest) from MAIL's or RCPT's argument.

    The address is what follows '<' up to '>', or without '<' what
    follows the first ':' up to a space; a leading source route
    "@a,@b:" goes; quotes are dropped and a backslash takes the next
    byte as it is.  rest is what follows the end of the address (the
    ESMTP parameters), empty if the address never ended."""
    terminator = b'>'[0]
    i = arg.find(b'<')
    if i >= 0:
        arg = arg[i + 1:]
    else:       # partner should go read rfc 821
        terminator = b' '[0]
        i = arg.find(b':')
        arg = arg[i + 1:] if i >= 0 else b''
        arg = arg.lstrip(b' ')
    if arg[:1] == b'@':
        i = arg.find(b':')
        arg = arg[i + 1:] if i >= 0 else b''
    end = arg.find(terminator)
    plain = arg if end < 0 else arg[:end]
    if b'\\' not in plain and b'"' not in plain:
        # No quote nor backslash before the end: the loop's answer at once.
        return plain, (b'' if end < 0 else arg[end + 1:])
    addr = bytearray()
    flagesc = flagquoted = False
    rest = b''
    for i, ch in enumerate(arg):
        if flagesc:
            addr.append(ch)
            flagesc = False
        elif ch == terminator and not flagquoted:
            rest = arg[i + 1:]
            break
        elif ch == 0x5C:        # backslash
            flagesc = True
        elif ch == 0x22:        # double quote
            flagquoted = not flagquoted
        else:
            addr.append(ch)
    return bytes(addr), rest


def ip_scanbracket(s: bytes):
    """The 4 bytes of "[d.d.d.d]" if s is exactly that, else None.
    Each number is read as qmail's ip_scan reads it, leading zeros and
    all ([0127.0.0.1] is 127.0.0.1); unlike it, a number above 255 is no
    address (qmail keeps its last byte)."""
    if len(s) < 9 or s[:1] != b'[' or s[-1:] != b']':
        return None
    parts = s[1:-1].split(b'.')
    if len(parts) != 4:
        return None
    out = []
    for p in parts:
        if not p.isdigit():
            return None
        p = p.lstrip(b'0') or b'0'
        if len(p) > 3 or int(p) > 255:
            return None
        out.append(int(p))
    return bytes(out)


def localiphost(addr: bytes, liphost, ipme) -> bytes:
    """box@[d.d.d.d] becomes box@liphost when d.d.d.d is this host's."""
    if liphost is None:
        return addr
    i = addr.rfind(b'@')
    if i < 0:
        return addr
    ip = ip_scanbracket(addr[i + 1:])
    if ip is None or ip not in ipme:
        return addr
    return addr[:i + 1] + liphost


def bmfcheck(addr: bytes, badmailfrom) -> bool:
    """Is the sender in badmailfrom, itself or as @domain (any case)?"""
    if not badmailfrom:
        return False
    low = addr.lower()
    if low in badmailfrom:
        return True
    j = low.rfind(b'@')
    return j >= 0 and low[j:] in badmailfrom


DOMAINMAX = 255     # octets in a domain name (RFC 1035 2.3.4)


def addrallowed(addr: bytes, rcpthosts, morercpthosts) -> bool:
    """qmail's rcpthosts(): is the recipient's domain ours to accept?

    Without rcpthosts, yes; an address without '@' always.  Else the
    domain, then each of its suffixes starting at a dot, is looked up
    in rcpthosts, then in morercpthosts (which may raise CdbError).
    Not qmail: a domain longer than DOMAINMAX is no one's, and not looked
    up (each suffix costs a cdb hash, a byte at a time)."""
    if rcpthosts is None:
        return True
    j = addr.rfind(b'@')
    if j < 0:
        return True
    host = addr[j + 1:].lower()
    if len(host) > DOMAINMAX:
        return False
    suffixes = [host[k:] for k in range(len(host))
                if k == 0 or host[k] == 0x2E]
    if any(s in rcpthosts for s in suffixes):
        return True
    if morercpthosts is not None:
        return any(s in morercpthosts for s in suffixes)
    return False


def mail_size(rest: bytes):
    """The SIZE= parameter of MAIL (RFC 1870), or None."""
    for word in rest.split(b' '):
        if word[:5].upper() == b'SIZE=':
            digits = word[5:]
            if digits.isdigit():
                return int(digits) if len(digits) <= SIZEDIGITS else 10 ** SIZEDIGITS
    return None


def local_ips() -> frozenset:
    """ipme: 0.0.0.0 and the IPv4 address of every interface that is up
    (Linux SIOCGIFCONF, as qmail's ipme.c).  Raises OSError."""
    import array
    import fcntl
    import socket
    import struct
    SIOCGIFCONF, SIOCGIFFLAGS, IFF_UP = 0x8912, 0x8913, 0x1
    ifreqsize = 16 + max(16, struct.calcsize('LLHBBB0L'))
    ips = {b'\0\0\0\0'}     # "this host", RFC 1122 3.2.1.3
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        size = 64 * ifreqsize
        while True:
            buf = array.array('B', bytes(size))
            ifc = bytearray(struct.pack('iP', size, buf.buffer_info()[0]))
            fcntl.ioctl(s.fileno(), SIOCGIFCONF, ifc, True)
            length = struct.unpack_from('i', ifc)[0]
            if length + ifreqsize < size:   # else there may be more
                break
            size *= 2
            if size > 1 << 22:
                raise OSError('too many network interfaces')
        data = buf.tobytes()[:length]
        for off in range(0, length - ifreqsize + 1, ifreqsize):
            family = struct.unpack_from('H', data, off + 16)[0]
            if family != socket.AF_INET:
                continue
            req = bytearray(data[off:off + 16] + bytes(ifreqsize - 16))
            fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req, True)
            if struct.unpack_from('H', req, 16)[0] & IFF_UP:
                ips.add(data[off + 20:off + 24])
    return frozenset(ips)


IF_INET6 = '/proc/net/if_inet6'


# -- IPv6 address literals --------------------------------------------------

def ip6_scanbracket(s: bytes):
    """The 16 bytes of "[IPv6:addr]" (RFC 5321 4.1.3; the tag in any
    case) if s is exactly that, else None."""
    if len(s) < 8 or s[:6].lower() != b'[ipv6:' or s[-1:] != b']':
        return None
    try:
        return _socket.inet_pton(_socket.AF_INET6, s[6:-1].decode('ascii'))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


V4MAPPED = bytes(10) + b'\xff\xff'


def localiphost6(addr: bytes, liphost, ipme) -> bytes:
    """box@[IPv6:addr] becomes box@liphost when addr is this host's
    (or is IPv4-mapped, ::ffff:d.d.d.d, with d.d.d.d this host's)."""
    if liphost is None:
        return addr
    i = addr.rfind(b'@')
    if i < 0:
        return addr
    ip = ip6_scanbracket(addr[i + 1:])
    if ip is None:
        return addr
    if ip not in ipme and not (ip[:12] == V4MAPPED and ip[12:] in ipme):
        return addr
    return addr[:i + 1] + liphost


def parse_if_inet6(data: bytes) -> frozenset:
    """The IPv6 addresses in Linux's /proc/net/if_inet6: a line per
    address, 32 hex digits first.  XXX every address listed counts,
    whether or not its interface is up (qmail's ipme asks IFF_UP)."""
    ips = set()
    for line in data.split(b'\n'):
        word = line.split(b' ', 1)[0]
        if len(word) == 32:
            try:
                ips.add(bytes.fromhex(word.decode('ascii')))
            except (UnicodeDecodeError, ValueError):
                pass
    return frozenset(ips)


def local_ips6() -> frozenset:
    """This host's IPv6 addresses, with :: ("this host", as 0.0.0.0 is
    among the IPv4 ones and qmail-remote counts it); just that when the
    kernel has no IPv6."""
    unspecified = frozenset((bytes(16),))
    try:
        with open(IF_INET6, 'rb') as f:
            return parse_if_inet6(f.read(1 << 20)) | unspecified
    except FileNotFoundError:
        return unspecified


def sender_is_users(addr: bytes, user: bytes, locals_, owner=None) -> bool:
    """May a client that logged in as user send from addr
    (FORCEAUTHMAILFROM)?  The AUTH patch's rule is addr == user; here,
    case aside, and for a login without a domain (a system user's) that
    name at a domain of locals_ (qmail-send's control/locals: where
    system users get mail; a domain we are only a backup MX for is in
    rcpthosts, not there; empty for a virtual login without a domain),
    or alone; and any other address whose mail the user gets, as
    owner(addr) says: the user's extensions (joe-lists, unless users/
    assign or a user joe-lists takes it), an address users/assign gives
    the user, one at a virtual domain of the user's.  owner raises
    OSError when it cannot tell now.  The null sender (a client's own
    bounce or receipt) is anyone's."""
    if not addr:
        return True
    laddr, user = addr.lower(), user.lower()
    if not user or user.startswith(b'@'):
        return False                # (an empty login owns nothing)
    if b'@' in user or b'@' not in laddr:
        return laddr == user
    local, _, domain = laddr.rpartition(b'@')
    if local == user and domain in locals_:
        return True
    if owner is None or not locals_:
        return False                # (no system user: no mailbox to own)
    return owner(addr) == user
