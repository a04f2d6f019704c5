"""This host's addresses (qmail's ipme.c), part of qmail-remote.

qmail-remote must not connect to itself: an MX whose address is one of
ours means "deliver locally", and a message that comes back here would
loop.  qmail asks the kernel for the interface addresses (SIOCGIFCONF,
IPv4 only); this asks Linux's rtnetlink for every address of every
interface, both families, secondary addresses included.  0.0.0.0 and ::
always count, as "this host" (RFC 1122 3.2.1.3).  An address that is
only routed here (127.0.0.2 on a 127.0.0.1/8 loopback) is not on an
interface, so it is not "me", as in qmail.

XXX: interfaces that are down count too (qmail skips them): erring on
the side of "me" turns a possible loop into a bounce.  Non-Linux kernels
have no rtnetlink: ipme() raises OSError there, and qmail-remote defers.
"""

import ipaddress
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWADDR = 20
RTM_GETADDR = 22
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFA_ADDRESS = 1
IFA_LOCAL = 2
NLMSG_HDR = struct.Struct('=IHHII')
IFADDRMSG = struct.Struct('=BBBBI')
RTATTR = struct.Struct('=HH')
RECVSIZE = 1 << 16
MESSAGES_MAX = 100000   # a kernel dump longer than this is not believed

ALWAYS = (ipaddress.ip_address('0.0.0.0'), ipaddress.ip_address('::'))


def align4(n: int) -> int:
    return (n + 3) & ~3


def parse_dump(data: bytes, seq: int):
    """(addresses, done) from one recv of an RTM_GETADDR dump."""
    out = []
    off = 0
    while off + NLMSG_HDR.size <= len(data):
        length, mtype, _flags, mseq, _pid = NLMSG_HDR.unpack_from(data, off)
        if length < NLMSG_HDR.size or off + length > len(data):
            raise OSError('malformed netlink message')
        if mseq == seq:
            if mtype == NLMSG_DONE:
                return out, True
            if mtype == NLMSG_ERROR:
                raise OSError('netlink error')
            if mtype == RTM_NEWADDR:
                out.extend(parse_addr(data[off + NLMSG_HDR.size:off + length]))
        off += align4(length)
    return out, False


def parse_addr(body: bytes):
    """The interface address of one RTM_NEWADDR message (IFA_LOCAL, which
    for a point-to-point link is ours where IFA_ADDRESS is the peer's)."""
    if len(body) < IFADDRMSG.size:
        return []
    family = body[0]
    attrs = {}
    off = IFADDRMSG.size
    while off + RTATTR.size <= len(body):
        rlen, rtype = RTATTR.unpack_from(body, off)
        if rlen < RTATTR.size:
            break
        attrs.setdefault(rtype, body[off + RTATTR.size:off + rlen])
        off += align4(rlen)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None:
        return []
    if family == socket.AF_INET and len(raw) == 4:
        return [ipaddress.IPv4Address(raw)]
    if family == socket.AF_INET6 and len(raw) == 16:
        return [ipaddress.IPv6Address(raw)]
    return []


def ipme() -> frozenset:
    """Every address of this host, as ipaddress objects.  OSError."""
    seq = 1
    found = list(ALWAYS)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as s:
        s.settimeout(10)
        s.bind((0, 0))
        req = (NLMSG_HDR.pack(NLMSG_HDR.size + IFADDRMSG.size, RTM_GETADDR,
                              NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
               + IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        s.sendto(req, (0, 0))
        for _ in range(MESSAGES_MAX):
            data = s.recv(RECVSIZE)
            if not data:
                raise OSError('netlink closed')
            addrs, done = parse_dump(data, seq)
            found.extend(addrs)
            if done:
                return frozenset(found)
    raise OSError('netlink dump too long')


def is_me(ip: str, me) -> bool:
    """Is ip one of me?  An IPv4-mapped IPv6 address (::ffff:a.b.c.d, as
    an AAAA record may hold) is the IPv4 address it maps: a connection
    to it reaches that address.  So is one with a zone (::1%1, from a
    literal [IPv6:::1%1]) the address without it: compared with the
    zone, it passed for another host, and the mail came back here round
    after round."""
    addr = ipaddress.ip_address(ip.split('%', 1)[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr in me
