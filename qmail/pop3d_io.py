"""qmail-pop3d's and qmail-popup's connection: command lines as
commands.c cuts them, and the client's descriptors with poll() timeouts.

Part of qmail-pop3d (see qmail/pop3d.py), shared with qmail-popup, which
speaks the same command syntax on the same kind of connection.  Nothing
here knows POP3's verbs.
"""

import os
import select
import stat
import time

import _socket    # not `socket`: its enum import costs start-up time

READSIZE = 65536
WRITESIZE = 65536        # a socket send with MSG_DONTWAIT takes what fits
PIPEWRITE = 4096         # PIPE_BUF: what a pipe that polled writable takes
LINGER = 1.0             # seconds to read what a client sent past our end
LINGERMAX = 1 << 20      # bytes read and dropped then, at most

TOOLONG = object()       # Lines.take's word for a line over the limit


# -- commands.c: lines and verbs ---------------------------------------------

class Lines:
    """Cut a byte stream into command lines, as commands.c does: a line
    ends at LF; one longer than the limit is thrown away as it arrives
    and reported once its LF comes."""

    def __init__(self):
        self.buf = bytearray()
        self.flagtoolong = False

    def take(self, data: bytes, pos: int, limit: int):
        """(line without its LF, new pos), (TOOLONG, new pos), or (None,
        len(data)) when data[pos:] holds no LF yet.  limit counts the LF."""
        i = data.find(b'\n', pos)
        if i < 0:
            if not self.flagtoolong:
                if len(self.buf) + len(data) - pos > limit - 1:
                    self.flagtoolong = True
                    self.buf.clear()
                else:
                    self.buf += data[pos:]
            return None, len(data)
        if self.flagtoolong or len(self.buf) + i - pos + 1 > limit:
            self.flagtoolong = False
            self.buf.clear()
            return TOOLONG, i + 1
        line = bytes(self.buf) + data[pos:i]
        self.buf.clear()
        return line, i + 1

    def clear(self):
        self.buf.clear()
        self.flagtoolong = False


def parse_command(line: bytes):
    """(verb in lower case, argument): the verb ends at the first space,
    the argument starts after the spaces following it; a CR before the
    LF is dropped."""
    if line.endswith(b'\r'):
        line = line[:-1]
    verb, _, arg = line.partition(b' ')
    return verb.lower(), arg.lstrip(b' ')


# -- the connection ------------------------------------------------------------

class Gone(Exception):
    """The client cannot be written to (timeout or error)."""


def is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


class Conn:
    """The client on fdin and fdout, with poll() timeouts.  On a socket,
    sends use MSG_DONTWAIT, so a write never blocks, whatever the fd's
    own flags; on a pipe, at most PIPE_BUF bytes go per write, which a
    pipe that polled writable takes at once."""

    def __init__(self, fdin: int = 0, fdout: int = 1):
        self.fdin = fdin
        self.fdout = fdout
        self.sockin = _socket.socket(fileno=os.dup(fdin)) if is_socket(fdin) else None
        self.sockout = _socket.socket(fileno=os.dup(fdout)) if is_socket(fdout) else None

    def nodelay(self):
        """TCP_NODELAY on the client's socket, if it is TCP: for a server
        that makes each reply one write, Nagle only holds back the last
        segment of a long one until the client's delayed ACK."""
        if self.sockout is not None:
            try:
                self.sockout.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            except OSError:
                pass                    # a Unix socket: nothing to do

    def wait_in(self, wait: float) -> bool:
        poller = select.poll()
        poller.register(self.fdin, select.POLLIN)
        return bool(poller.poll(max(0, int(wait * 1000))))

    def read(self, wait: float, flagline: bool = False):
        """Up to READSIZE bytes; b'' at the end or on an error; None when
        nothing came for wait seconds.  flagline: on a socket, nothing
        past the first LF is taken from the kernel (qmail-popup leaves
        what follows PASS for the program it starts)."""
        deadline = time.monotonic() + wait
        while True:
            if not self.wait_in(deadline - time.monotonic()):
                return None
            try:
                if flagline and self.sockin is not None:
                    return self.recv_line()
                return os.read(self.fdin, READSIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return b''

    def recv_line(self) -> bytes:
        peek = self.sockin.recv(READSIZE, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)
        i = peek.find(b'\n')
        return self.sockin.recv(len(peek) if i < 0 else i + 1, _socket.MSG_DONTWAIT)

    def write(self, data: bytes, timeout: float):
        """Write all of data, waiting at most timeout seconds for each
        piece; raises Gone."""
        poller = select.poll()
        poller.register(self.fdout, select.POLLOUT)
        view = memoryview(data)
        while view:
            if not poller.poll(max(1, int(timeout * 1000))):
                raise Gone('write timeout')
            try:
                if self.sockout is not None:
                    n = self.sockout.send(view[:WRITESIZE], _socket.MSG_DONTWAIT)
                else:
                    n = os.write(self.fdout, view[:PIPEWRITE])
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as err:
                raise Gone(err.strerror) from None
            view = view[n:]

    def linger(self):
        """Before exiting on our own word: if the client sent what we
        will never read, closing now would answer with a reset, which
        may destroy our last reply before the client reads it.  So end
        our side first, and drop what comes for a moment."""
        if self.sockin is None or self.sockout is None or not self.wait_in(0):
            return
        try:
            self.sockout.shutdown(_socket.SHUT_WR)
        except OSError:
            return
        deadline = time.monotonic() + LINGER
        total = 0
        while total < LINGERMAX:
            if not self.wait_in(deadline - time.monotonic()):
                return
            try:
                data = self.sockin.recv(READSIZE, _socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            if not data:
                return
            total += len(data)

    def close(self):
        for sock in (self.sockin, self.sockout):
            if sock is not None:
                sock.close()


NO_LIMIT = 2000000      # seconds (23 days): "no limit", yet a poll() timeout


def silence_limit(seconds: int) -> int:
    """control/timeoutpop3 as a timeout: 0 (or less) means no limit."""
    return NO_LIMIT if seconds <= 0 else seconds


def read_wait(timeout: float, deadline, now: float) -> float:
    """timeout, or less when the deadline comes sooner."""
    if deadline is None:
        return timeout
    return max(0, min(timeout, deadline - now))
