"""tcp-env: set up the TCP environment variables, then run a program.

Usage:    tcp-env [ -rR ] [ -ttimeout ] program [ arg ... ]
Runs as:  whoever runs it: inetd, as the user its line names (qmaild for
          qmail-smtpd); fd 0 is the connection.
Reads:    the two ends of the connection on fd 0 (getsockname,
          getpeername); the names of both addresses in the reverse DNS
          (resolvers from HOME/control/dnsservers, as qmail-remote, else
          /etc/resolv.conf); with -r, the peer's ident server (RFC 1413,
          port 113), asked from this end's address.
Writes:   nothing: it sets tcp-environ(5)'s PROTO (TCP, TCP6 for an
          IPv6 client, as qmail-listen and tcpserver say, with each TCP
          variable below also as TCP6: TCP6REMOTEIP...), TCPLOCALIP,
          TCPLOCALPORT, TCPLOCALHOST, TCPREMOTEIP, TCPREMOTEPORT,
          TCPREMOTEHOST and TCPREMOTEINFO, then execs program with its
          arguments.  A name is lowercased; one that could not be looked
          up for a temporary reason is "softdnserror", one that does not
          exist leaves its variable unset; TCPREMOTEINFO is what the
          ident server said after its third colon, unset if it said
          nothing in time.  When PROTO is TCP already (tcpserver, or
          qmail-listen, made the whole environment), nothing is asked or
          changed: program runs at once; so too for TCP6, what Debian's
          tcpserver and qmail-listen say for an IPv6 client (qmail's
          tcp-env, IPv4 only, asked again).
Options:  -r (the default) ask for TCPREMOTEINFO; -R do not; -t timeout:
          seconds for the ident server's connection, and again for its
          whole answer (default 30).
Exits:    program's own (it is exec'd), with SIGPIPE and SIGXFSZ back to
          their defaults; 111, saying nothing, as qmail's tcp-env, when
          no program is named, fd 0 is no TCP connection, or program
          cannot be run.
Differs:  IPv6 connections too, their addresses written as qmail-listen
          writes them (an IPv4-mapped one as IPv4).
See:      tcp-env(1), tcp-environ(5); qmail-listen for a server that needs
          no inetd.
"""

import os
import select
import signal
import socket
import sys
import time

from qmail.lib import auto
from qmail.lib.control import Controls, scan_ulong
from qmail.listen import TCP_ENV, unmap

IDENT_PORT = 113
IDENT_LINE = 999           # bytes of the answer kept (remoteinfo.c's line[999])
DEFAULT_TIMEOUT = 30


def parse_args(argv):
    """(flagremoteinfo, timeout, program argv), or None for a usage error.
    Options as qmail's sgetopt "rRt:": clustered, -t's value attached or
    the next word, "--" ends them; another letter is named on stderr and
    ignored, as qmail's tcp-env does."""
    flag, timeout = True, DEFAULT_TIMEOUT
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == '--':
            i += 1
            break
        if not word.startswith('-') or word == '-':
            break
        j = 1
        while j < len(word):
            c = word[j]
            if c == 'r':
                flag = True
            elif c == 'R':
                flag = False
            elif c == 't':
                value = word[j + 1:]
                if not value:
                    i += 1
                    if i >= len(argv):
                        sys.stderr.write('tcp-env: option requires an argument -- t\n')
                        sys.stderr.flush()
                        return None
                    value = argv[i]
                timeout = scan_ulong(os.fsencode(value))
                break
            else:               # as qmail's sgetopt: said, then ignored
                sys.stderr.write('tcp-env: illegal option -- %s\n' % c)
                sys.stderr.flush()
            j += 1
        i += 1
    rest = argv[i:]
    return (flag, timeout, rest) if rest else None


def remoteinfo_of(answer: bytes) -> bytes:
    """What remoteinfo.c keeps of an ident answer: the bytes after its
    third colon, blanks (space, tab, CR) dropped, up to the LF, at most
    998 (a NUL ends it, as it ends qmail's C string)."""
    out = bytearray()
    colons = 0
    for ch in answer.split(b'\n', 1)[0].split(b'\0', 1)[0]:
        if ch in b' \t\r':
            continue
        if colons < 3:
            if ch == 0x3a:
                colons += 1
        else:
            out.append(ch)
    return bytes(out[:IDENT_LINE - 1])


def ask_ident(local, remote, timeout: int):
    """The peer's ident answer for this connection, or None."""
    family = socket.AF_INET6 if ':' in local[0] else socket.AF_INET
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        s.bind((local[0], 0))
        s.settimeout(timeout)
        s.connect((remote[0], IDENT_PORT))
        s.sendall(b'%d , %d\r\n' % (remote[1], local[1]))
        got = b''
        deadline = time.monotonic() + timeout     # the whole answer's
        while b'\n' not in got and len(got) < 4 * IDENT_LINE:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([s], [], [], wait)[0]:
                return None
            chunk = s.recv(IDENT_LINE)
            if not chunk:
                return None         # remoteinfo.c: no LF, no answer
            got += chunk
        return remoteinfo_of(got)
    except (OSError, ValueError, OverflowError):
        return None
    finally:
        s.close()


def name_of(resolver, ip: str):
    """(found, name): the first PTR name of ip, lowercased; "softdnserror"
    after a temporary failure; (False, None) when there is none."""
    import dns.exception
    import dns.resolver
    import dns.reversename
    try:
        qname = dns.reversename.from_address(ip)
        answer = resolver.resolve(qname, 'PTR', search=False, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN):
        return False, None
    except (dns.exception.DNSException, ValueError, OSError):
        return True, 'softdnserror'
    if answer.rrset is None:
        return False, None
    for rr in answer.rrset:
        name = rr.target.to_text(omit_final_dot=True).lower()
        return True, '' if name == '.' else name
    return False, None


def host_of(resolver, ip: str):
    """The variable's value for ip's name: None leaves it unset."""
    if resolver is None:
        return 'softdnserror'
    found, name = name_of(resolver, ip)
    return name if found else None


def make_resolver():
    """A resolver as qmail-remote's (control/dnsservers, read the same
    way, else /etc/resolv.conf); None when there is none to ask (that
    file unreadable or unparsable: names are then "softdnserror")."""
    from qmail.lib import dns as qdns
    try:
        ctl = Controls(os.path.join(auto.QMAIL, 'control'))
        return qdns.make_resolver(qdns.nameservers(ctl.lines('dnsservers')))
    except Exception:
        return None


def set_env(name: str, value) -> None:
    """Set (or, for None, unset) one variable; a value the environment
    cannot hold leaves it unset."""
    os.environ.pop(name, None)
    if value is not None:
        try:
            os.environb[name.encode()] = value if isinstance(value, bytes) \
                else os.fsencode(value)
        except ValueError:
            pass


def describe_connection(flagremoteinfo: bool, timeout: int) -> bool:
    """Set the variables from fd 0's connection; False if it is none."""
    try:
        sock = socket.socket(fileno=os.dup(0))
    except OSError:
        return False
    try:
        if sock.type != socket.SOCK_STREAM or sock.family not in (
                socket.AF_INET, socket.AF_INET6):
            return False
        local = sock.getsockname()
        remote = sock.getpeername()
    except OSError:
        return False
    finally:
        sock.close()
    local_ip, remote_ip = unmap(local[0]), unmap(remote[0])
    ipv6 = ':' in remote_ip
    set_env('PROTO', 'TCP6' if ipv6 else 'TCP')
    set_env('TCPLOCALPORT', str(local[1]))
    set_env('TCPLOCALIP', local_ip)
    resolver = make_resolver()
    set_env('TCPLOCALHOST', host_of(resolver, local_ip))
    set_env('TCPREMOTEPORT', str(remote[1]))
    set_env('TCPREMOTEIP', remote_ip)
    set_env('TCPREMOTEHOST', host_of(resolver, remote_ip))
    set_env('TCPREMOTEINFO', None)
    if flagremoteinfo:
        info = ask_ident((local_ip, local[1]), (remote_ip, remote[1]), timeout)
        if info is not None:
            set_env('TCPREMOTEINFO', info)
    # An IPv6 client's copies, ${PROTO}REMOTEIP and so on (UCSPI's way,
    # as tcpserver and qmail-listen give them); for IPv4, none.
    for name in TCP_NAMES:
        set_env('TCP6' + name[3:], os.environb.get(name.encode()) if ipv6 else None)
    return True


# tcp-environ(5)'s TCP variables (qmail-listen's list less PROTO and the TCP6 copies)
TCP_NAMES = tuple(k for k in TCP_ENV if k.startswith('TCP') and not k.startswith('TCP6'))


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    parsed = parse_args(argv)
    if parsed is None:
        return 111
    flagremoteinfo, timeout, program = parsed
    if os.environ.get('PROTO') not in ('TCP', 'TCP6'):
        if not describe_connection(flagremoteinfo, timeout):
            return 111
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(program[0], program)
    except (OSError, ValueError):
        return 111
    return 111


def run():
    try:
        code = main()
    except BaseException:
        code = 111
    sys.stdout.flush()
    os._exit(code)


if __name__ == '__main__':
    run()
