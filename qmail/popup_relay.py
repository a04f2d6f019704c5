"""qmail-popup's I/O past its command loop: the TLS layer of STLS, the
subprogram (started with fd 3 reading the checkpassword payload, waited
for) and the relay that carries bytes between the two when the
subprogram cannot have the connection itself.

Part of qmail-popup (see qmail/popup.py: its Session decides, serve()
calls these).  The TLS layer is OpenSSL over memory buffers
(ssl.MemoryBIO), so that every byte is read and written by this code on
plain descriptors under poll(): nothing waits unseen inside an
SSLSocket, and the relay is one poll() loop over the client, the
subprogram's socket pair and nothing else.  ssl is imported only when a
client says STLS.
"""

import errno
import fcntl
import os
import select
import time

import _signal    # not `signal`: its enum import costs start-up time
import _socket    # not `socket`, for the same reason

from qmail.pop3d_io import PIPEWRITE, READSIZE, WRITESIZE, Gone
from qmail.lib import execvp

RELAY_BUFFER = 262144    # bytes held for one side before reading pauses


# -- TLS over memory buffers -------------------------------------------------

class TlsError(Exception):
    """The TLS connection failed: nothing more can be said on it."""


class Tls:
    """A server TLS connection as a transformation: raw bytes from the
    client in, plaintext out, and the reverse (ssl.MemoryBIO).  Nothing
    is hidden in a buffer poll() cannot see: decode() returns every
    byte of plaintext OpenSSL can make of what it was given."""

    def __init__(self, ctx):
        import ssl
        self.ssl = ssl
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.flageof = False

    def handshake(self, raw: bytes):
        """(done, raw bytes to send); raises TlsError."""
        if raw:
            self.incoming.write(raw)
        try:
            self.obj.do_handshake()
        except self.ssl.SSLWantReadError:
            return False, self.outgoing.read()
        except (self.ssl.SSLError, ValueError) as err:
            raise TlsError(type(err).__name__) from None
        return True, self.outgoing.read()

    def decode(self, raw):
        """(plaintext, raw bytes to send) from raw, the client's bytes:
        None for none new, b'' for the end of the connection.  flageof
        once the client closed (close_notify, or the end)."""
        if raw:
            self.incoming.write(raw)
        elif raw is not None:
            self.incoming.write_eof()
        chunks = []
        while True:
            try:
                data = self.obj.read(READSIZE)
            except self.ssl.SSLWantReadError:
                break
            except (self.ssl.SSLZeroReturnError, self.ssl.SSLEOFError):
                self.flageof = True
                break
            except self.ssl.SSLError as err:
                raise TlsError(type(err).__name__) from None
            if not data:
                self.flageof = True
                break
            chunks.append(data)
        return b''.join(chunks), self.outgoing.read()

    def encode(self, plain: bytes) -> bytes:
        view = memoryview(plain)
        try:
            while view:
                n = self.obj.write(view)
                view = view[n:]
        except self.ssl.SSLError as err:
            raise TlsError(type(err).__name__) from None
        return self.outgoing.read()

    def close(self) -> bytes:
        """Our close_notify, for a last write."""
        try:
            self.obj.unwrap()
        except (self.ssl.SSLError, ValueError):
            pass
        return self.outgoing.read()


def server_context(certfile: str):
    """qmail-smtpd's: OSError (ssl.SSLError too) if it cannot be loaded."""
    from qmail import smtpd_tls     # ssl costs start-up time: only for STLS
    return smtpd_tls.server_context(certfile)


class TlsConn:
    """The client under TLS: pop3d_io.Conn's read and write, over Tls."""

    def __init__(self, conn, tls: Tls):
        self.conn = conn
        self.tls = tls
        self.fdin = conn.fdin

    def read(self, wait: float, flagline: bool = False):
        """As pop3d_io.Conn.read; flagline means nothing under TLS (the
        relay gives the subprogram what was read past PASS)."""
        deadline = time.monotonic() + wait
        raw = None              # first what OpenSSL already holds
        while True:
            try:
                plain, out = self.tls.decode(raw)
            except TlsError:
                return b''
            if out:
                self.conn.write(out, max(wait, 1))
            if plain:
                return plain
            if self.tls.flageof:
                return b''
            raw = self.conn.read(deadline - time.monotonic())
            if raw is None:
                return None

    def write(self, data: bytes, timeout: float):
        try:
            self.conn.write(self.tls.encode(data), timeout)
        except TlsError:
            raise Gone('TLS') from None

    def finish(self, timeout: float):
        try:
            self.conn.write(self.tls.close(), timeout)
        except Gone:
            pass


# -- the subprogram ---------------------------------------------------------

def spawn(argv, payload: bytearray, fd01=None) -> int:
    """Start argv[0] (found on PATH) with fd 3 reading payload, fds 0 and 1
    fd01's if given (else ours), SIGPIPE as the default; its pid, or
    OSError.  The payload (a bounded line, a timestamp) fits in a pipe,
    so it is written before the program starts and nothing can block."""
    r, w = os.pipe()
    r4 = -1
    try:
        os.set_blocking(w, False)
        if os.write(w, payload) != len(payload):
            raise OSError(errno.E2BIG, 'checkpassword input too long')
        os.close(w)
        w = -1
        # dup2(r, 3) must not be dup2(3, 3), which would leave close-on-exec
        # set; and r must survive the dup2s onto 0 and 1.
        r4 = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 4)
        actions = []
        if fd01 is not None:
            actions += [(os.POSIX_SPAWN_DUP2, fd01, 0), (os.POSIX_SPAWN_DUP2, fd01, 1)]
        actions.append((os.POSIX_SPAWN_DUP2, r4, 3))
        return execvp.spawnp(argv, os.environ, file_actions=actions,
                             setsigdef=execvp.DEFAULT_SIGNALS)
    finally:
        for fd in (r, w, r4):
            if fd >= 0:
                os.close(fd)


def reap(pid: int):
    """The wait status if pid has ended, else None."""
    done, wstat = os.waitpid(pid, os.WNOHANG)
    return wstat if done else None


def wait_child(pid: int, deadline) -> int:
    """Wait for pid; SIGKILL it at deadline (monotonic; None: never)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        nap = 0.01
        while True:
            wstat = reap(pid)
            if wstat is not None:
                return wstat
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                os.kill(pid, _signal.SIGKILL)
                return os.waitpid(pid, 0)[1]
            if pidfd is not None:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                poller.poll(-1 if wait is None else int(wait * 1000) + 1)
            else:
                time.sleep(nap if wait is None else min(nap, wait))
                nap = min(nap * 2, 1.0)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def relay(conn, child, held: bytes, idle: float, deadline):
    """Carry bytes between the client (conn: pop3d_io.Conn or TlsConn) and
    the subprogram's end of a socket pair (child), both ways, until the
    subprogram closes its end.  The client's bytes, held first, go to
    the subprogram only once it has said something: a checker that says
    no never reads them, and they are the session's again.  When the
    client goes away the subprogram's input ends.

    Returns (flagok, flagspoke, unsent): flagok False if nothing moved
    for idle seconds or deadline (monotonic) came, and the caller kills
    the subprogram; unsent the client's bytes it never got."""
    tls = conn.tls if isinstance(conn, TlsConn) else None
    raw = conn.conn if tls is not None else conn
    to_child = bytearray(held)
    to_client = bytearray()
    if tls is not None:         # what came with the handshake or after PASS
        try:
            plain, out = tls.decode(None)
        except TlsError:
            plain, out = b'', b''
        to_child += plain
        to_client += out
    flagclient = tls is None or not tls.flageof     # still reading the client
    flagshut = False            # the subprogram's input is closed
    flaggone = False            # the client cannot be written to
    flagspoke = False
    poller = select.poll()
    while True:
        if flagspoke and not flagclient and not to_child and not flagshut:
            try:
                child.shutdown(_socket.SHUT_WR)
            except OSError:
                pass
            flagshut = True
        events = {child.fileno(): 0}
        if flagclient and len(to_child) < RELAY_BUFFER:
            events[raw.fdin] = select.POLLIN
        if to_client:
            events[raw.fdout] = events.get(raw.fdout, 0) | select.POLLOUT
        if len(to_client) < RELAY_BUFFER:
            events[child.fileno()] |= select.POLLIN
        if flagspoke and to_child and not flagshut:
            events[child.fileno()] |= select.POLLOUT
        for fd, ev in events.items():
            poller.register(fd, ev)
        wait = idle if deadline is None else min(idle, deadline - time.monotonic())
        ready = dict(poller.poll(max(0, int(wait * 1000))))
        for fd in events:
            poller.unregister(fd)
        if not ready or (deadline is not None and time.monotonic() >= deadline):
            return False, flagspoke, bytes(to_child)
        if ready.get(raw.fdin, 0) and flagclient:
            data = read_some(raw.fdin)
            if data is not None and tls is None:
                to_child += data
                flagclient = bool(data)
            elif data is not None:
                try:
                    plain, out = tls.decode(data)
                except TlsError:
                    plain, out = b'', b''
                    flagclient = False
                to_child += plain
                if out and not flaggone:
                    to_client += out
                if tls.flageof or not data:
                    flagclient = False
        cready = ready.get(child.fileno(), 0)
        if cready & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = child.recv(READSIZE, _socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b''
            if data == b'':
                flush(raw, to_client, idle, flaggone)
                return True, flagspoke, bytes(to_child)
            if data:
                flagspoke = True
            if data and tls is not None and not flaggone:
                try:
                    data = tls.encode(data)
                except TlsError:
                    flaggone = True
            if data and not flaggone:
                to_client += data
        if cready & select.POLLOUT and to_child:
            try:
                n = child.send(to_child[:WRITESIZE], _socket.MSG_DONTWAIT)
                del to_child[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:     # it will not read: let it go
                to_child.clear()
                flagshut = True
        oready = ready.get(raw.fdout, 0)
        if oready and to_client:
            try:
                n = send_some(raw, to_client)
                del to_client[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:     # the client is gone: the subprogram's input ends
                flaggone = True
                flagclient = False
                to_client.clear()


def read_some(fd: int):
    """One read from the client: bytes, b'' at the end, None if nothing."""
    try:
        return os.read(fd, READSIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b''


def send_some(conn, data) -> int:
    """One write to the client that cannot block."""
    if conn.sockout is not None:
        return conn.sockout.send(data[:WRITESIZE], _socket.MSG_DONTWAIT)
    return os.write(conn.fdout, data[:PIPEWRITE])


def flush(conn, data, timeout: float, flaggone: bool):
    if data and not flaggone:
        try:
            conn.write(bytes(data), timeout)
        except Gone:
            pass
