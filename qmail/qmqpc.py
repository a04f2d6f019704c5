"""qmail-qmqpc: queue a mail message via QMQP.

Runs as:  whoever injects mail, in place of qmail-queue: in a mini-qmail
          installation HOME/bin/qmail-queue is a link to this program.
          cwd HOME (auto.QMAIL, never the environment).
Reads:    fd 0, the message; then fd 1, the envelope in qmail-queue's
          format: F sender NUL, T recipient NUL for each recipient, then
          one more NUL.  control/qmqpservers: the QMQP servers' IP
          addresses, one a line, tried in order.
Writes:   the message and envelope, as one QMQP packet, to the first
          server accepting a TCP connection on port 628; reads its one
          response.  Prints nothing: the exit code is the whole answer.
Exits:    qmail-queue(8)'s codes:
            0   the server said K: it has the message;
            31  it said D: refused for good;
            71  it said Z: refused for now;
            11  an address of ADDR bytes or more (qmail-queue's limit);
            51  out of memory, or an envelope beyond MAXENVELOPE;
            53  the message could not be spooled (disk full);
            54  fd 0 or fd 1 could not be read;
            55  control/qmqpservers missing or unreadable, or naming
                no usable address;
            56  no socket could be made;
            61  HOME is unreachable;
            72  the last server tried timed out connecting (CONNECT_TIMEOUT);
            73  the last server tried refused the connection;
            74  a server took the connection, then failed: a write or
                read timed out (TIMEOUT), the connection broke, or the
                response was no netstring starting K, Z or D.  No other
                server is tried then: this one may have the message;
            81  an internal bug; 91 a malformed envelope.
Trusts:   the caller for the message and envelope, framing checked as
          qmail-queue checks it; the server for its response's first
          byte only, read bounded (MAXREPLY) and within TIMEOUT.
See:      qmail-qmqpc(8), qmail-qmqpd(8), qmail-queue(8), qmail-control(5);
          cr.yp.to/proto/qmqp.html; cr.yp.to/proto/netstrings.txt.

As qmail's: the message and envelope are read whole before the first
connection (QMQP declares the packet's length first); a line of
qmqpservers not starting with an address is skipped; the answer is the first
byte of the response.  Beyond qmail: the message is kept in memory up
to SPOOLMEM bytes, beyond that in an unlinked temporary file, so its
size is bounded by the disk, not memory; qmqpservers may name IPv6
addresses too; and the whole response must arrive within TIMEOUT of
the packet's end (qmail timed each read alone).

Short-lived and run for every message: it imports little.
"""

import os
import re
import sys
import time
import socket

from qmail.lib import auto, control
from qmail.lib.netstring import NetstringError, Reader

PORT_QMQP = 628
CONNECT_TIMEOUT = 10     # qmail-qmqpc's timeoutconn(..., 10)
TIMEOUT = 60             # its GEN_SAFE_TIMEOUTREAD/WRITE(..., 60, ...)
ADDR = 1003              # qmail-queue's: an address with its NUL must fit
MAXENVELOPE = 1 << 26    # bytes of envelope held in memory
MAXREPLY = 1 << 16       # bytes a response may declare
SPOOLMEM = 1 << 20       # message bytes held in memory before a file
READSIZE = 65536


class QmqpExit(Exception):
    """Stop with qmail-queue exit code self.code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


# -- the pure parts -----------------------------------------------------------

class Envelope:
    """qmail-queue's envelope, fed in pieces: feed(data) is True once
    the terminating NUL has been read; then sender and recipients hold
    it.  Raises QmqpExit(91) for a bad record, QmqpExit(11) for an
    address of ADDR bytes or more.  Each byte is looked at once."""

    def __init__(self):
        self.pending = bytearray()
        self.sender = None
        self.recipients = []
        self.size = 0

    def feed(self, data: bytes) -> bool:
        pending = self.pending
        pending += data
        pos = 0
        try:
            while True:
                end = pending.find(b'\0', pos, pos + 1 + ADDR)
                if end < 0:
                    if len(pending) - pos > ADDR:    # tag + address, no NUL
                        raise QmqpExit(11)
                    return False
                tag = pending[pos]
                if self.sender is None:
                    if tag != 0x46 or end == pos:    # F; "\0" is no sender
                        raise QmqpExit(91)
                    self.sender = bytes(pending[pos + 1:end])
                elif end == pos:
                    return True
                elif tag != 0x54:                    # T
                    raise QmqpExit(91)
                else:
                    self.recipients.append(bytes(pending[pos + 1:end]))
                self.size += end + 1 - pos
                if self.size > MAXENVELOPE:
                    raise QmqpExit(51)
                pos = end + 1
        finally:
            del pending[:pos]


def envelope_netstrings(sender: bytes, recipients) -> bytes:
    """What follows the message in the packet: its comma, then the
    envelope as netstrings."""
    parts = [b',']
    for addr in [sender] + list(recipients):
        parts.append(b'%d:%s,' % (len(addr), addr))
    return b''.join(parts)


def parse_server(line: bytes):
    """A qmqpservers line as an address to connect to, or None to skip it.
    As qmail reads it, a line starting with an IPv4 address in dotted
    form names that address, whatever follows (a comment after a space)
    and with leading zeros taken as decimal; beyond qmail, a part above
    255 makes it no address (qmail kept its low byte), and an IPv6
    address, the whole line, is one too."""
    m = IPV4_START.match(line)
    if m is not None:
        parts = [int(p) for p in m.groups()]
        if max(parts) > 255:
            return None
        return socket.AF_INET, '%d.%d.%d.%d' % tuple(parts)
    try:
        text = line.decode('ascii')
        socket.inet_pton(socket.AF_INET6, text)
    except (UnicodeDecodeError, OSError, ValueError):
        return None
    return socket.AF_INET6, text


IPV4_START = re.compile(rb'([0-9]{1,10})\.([0-9]{1,10})\.([0-9]{1,10})\.([0-9]{1,10})')


def answer(first: int) -> int:
    """The exit code for the response's first byte."""
    return {0x4B: 0, 0x5A: 71, 0x44: 31}.get(first, 74)     # K Z D


# -- reading the caller -------------------------------------------------------

class Spool:
    """The message, in memory up to SPOOLMEM bytes, then in an unlinked
    temporary file ($TMPDIR: this program runs as the caller)."""

    def __init__(self):
        self.mem = bytearray()
        self.file = None
        self.size = 0

    def write(self, data: bytes):
        self.size += len(data)
        if self.file is None and len(self.mem) + len(data) <= SPOOLMEM:
            self.mem += data
            return
        try:
            if self.file is None:
                import tempfile     # rarely needed: not at start-up
                self.file = tempfile.TemporaryFile()
                self.file.write(self.mem)
                self.mem = bytearray()
            self.file.write(data)
        except OSError:
            raise QmqpExit(53) from None

    def chunks(self):
        if self.file is None:
            yield bytes(self.mem)
            return
        try:
            self.file.flush()
            self.file.seek(0)
            while True:
                data = self.file.read(READSIZE)
                if not data:
                    return
                yield data
        except OSError:
            raise QmqpExit(53) from None


def read_fd(fd: int) -> bytes:
    try:
        return os.read(fd, READSIZE)
    except OSError:
        raise QmqpExit(54) from None


def getmess(fdmess: int, fdenv: int):
    """The message from fdmess (a Spool), then the envelope from fdenv
    as the netstrings that follow the message in the packet."""
    spool = Spool()
    while True:
        data = read_fd(fdmess)
        if not data:
            break
        spool.write(data)
    envelope = Envelope()
    while True:
        data = read_fd(fdenv)
        if not data:
            raise QmqpExit(91)      # the envelope ends without its NUL
        if envelope.feed(data):
            return spool, envelope_netstrings(envelope.sender,
                                              envelope.recipients)


def read_servers() -> list:
    """control/qmqpservers, as (family, address) pairs."""
    try:
        control.Controls('control').init()      # qmail's control_init: me too
        lines = control.readfile('control/qmqpservers')
    except OSError:
        raise QmqpExit(55) from None
    if lines is None:
        raise QmqpExit(55)
    return [s for s in map(parse_server, lines) if s is not None]


# -- talking to a server ------------------------------------------------------

def connect(family: int, address: str, port: int):
    """A connected socket, or an exit code (56, 72, 73) to remember: no
    socket of this family (IPv6 off in the kernel, say) is no reason not
    to try the next server, which may be IPv4."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return 56
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect((address, port))
    except TimeoutError:
        sock.close()
        return 72
    except OSError:
        sock.close()
        return 73
    return sock


def send_all(sock, data: bytes):
    """Write data; each send waits at most TIMEOUT."""
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view[:READSIZE])
        except OSError:
            raise QmqpExit(74) from None
        view = view[n:]


def read_answer(sock, deadline: float) -> int:
    """The exit code the response's first byte means."""
    r = Reader(MAXREPLY)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise QmqpExit(74)
        sock.settimeout(left)
        try:
            data = sock.recv(1024)
        except OSError:
            raise QmqpExit(74) from None
        if not data:
            raise QmqpExit(74)
        try:
            _, chunk = r.feed(data)
        except NetstringError:
            raise QmqpExit(74) from None
        if chunk:
            return answer(chunk[0])
        if r.length == 0:
            raise QmqpExit(74)      # "0:," says nothing


def doit(sock, spool: Spool, after: bytes) -> int:
    """Send the packet over a connected socket; the server's answer."""
    sock.settimeout(TIMEOUT)
    inner = b'%d:' % spool.size
    total = len(inner) + spool.size + len(after)
    send_all(sock, b'%d:%s' % (total, inner))
    for chunk in spool.chunks():
        send_all(sock, chunk)
    send_all(sock, after + b',')
    return read_answer(sock, time.monotonic() + TIMEOUT)


def deliver(servers, spool: Spool, after: bytes, port: int) -> int:
    """Try each server in turn until one takes a connection."""
    lasterror = 55
    for family, address in servers:
        sock = connect(family, address, port)
        if isinstance(sock, int):
            lasterror = sock
            continue
        try:
            return doit(sock, spool, after)
        finally:
            sock.close()
    return lasterror


def main(argv=None, home=None, port=None) -> int:
    """qmail-qmqpc; argv is ignored.  home and port are for tests:
    qmail-qmqpc itself always runs in auto.QMAIL and talks to port 628."""
    home = auto.QMAIL if home is None else home
    port = PORT_QMQP if port is None else port
    try:
        try:
            os.chdir(home)
        except OSError:
            return 61
        servers = read_servers()
        spool, after = getmess(0, 1)
        return deliver(servers, spool, after, port)
    except QmqpExit as e:
        return e.code
    except MemoryError:
        return 51
    except Exception as err:    # last resort: temporary, never a traceback
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = ('%s:%d' % (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
                 if tb is not None else '?')
        try:
            os.write(2, ('qmail-qmqpc: internal error: %s at %s\n'
                         % (type(err).__name__, where)).encode())
        except OSError:
            pass
        return 81


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
