"""Talking to qmail-queue: qmail's qmail_open/put/from/to/close.

The caller starts qmail-queue (or the program named by QMAILQUEUE),
writes the message to its fd 0, then the envelope to its fd 1, and
reads a custom error string from its fd 6 when it exits 82.  close()
turns the exit code into qmail's status text: "" for success, else a
string starting with Z (temporary) or D (permanent) and ending in an
enhanced status code, ready for an SMTP reply or a diagnostic.

Callers run with their cwd at the qmail home, as qmail's do, so a
QMAILQUEUE program starts there too.

When the program is the home's own bin/qmail-queue and qmail-queued is
listening on HOME/run/qmail-queue.sock, the message goes there instead:
the same writer, forked from a process that has the code loaded, so no
interpreter starts.  If the socket is absent or refuses, the client
runs bin/qmail-queue as before.
"""

import errno
import os

from qmail.lib import auto, execvp

BUFSIZE = 65536
ERRSTR_MAX = 255   # qmail reads at most this much of a custom error


DAEMON_WAIT = 1         # seconds for qmail-queued to take a message, then
                        # bin/qmail-queue (a writer is free, or forked, in
                        # milliseconds: only a pool held whole waits this)


def queue_program() -> str:
    """The program qmail's qmail_open starts: QMAILQUEUE's, even set to
    nothing (which cannot be run: "unable to exec qq", as qmail's),
    else HOME/bin/qmail-queue."""
    program = os.environ.get('QMAILQUEUE')
    if program is None:
        program = os.path.join(auto.QMAIL, 'bin/qmail-queue')
    return program


def daemon_socket():
    return os.path.join(auto.QMAIL, 'run', 'qmail-queue.sock')


def connect_daemon(pim, pie, wait: float = DAEMON_WAIT):
    """Hand the read ends to qmail-queued; (socket, pid) or None when it
    has not taken them within wait seconds (every writer busy: slow
    clients in DATA, say) or is not there."""
    path = daemon_socket()       # (absent: connect() fails, no stat() first)
    import array
    import socket
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:             # no descriptor for it: bin/qmail-queue's turn
        return None
    # qmail-queued answers at once unless all its writers are busy: then,
    # after wait, bin/qmail-queue.  (No one user can keep them all:
    # qmail-queued's PER_UID; one past it is closed unanswered, and
    # bin/qmail-queue follows at once.  Its own users can: qmail-smtpd's
    # sessions hold a writer from DATA to ".".)
    s.settimeout(wait)
    try:
        s.connect(path)
        s.sendmsg([b'Q'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                            array.array('i', [pim[0], pie[0]]))])
        # The pid line comes whole, in one send, and nothing follows it
        # before the message is written: read it in one go.
        line = b''
        while not line.endswith(b'\n') and len(line) < 32:
            chunk = s.recv(32 - len(line))
            if not chunk:
                raise OSError('qmail-queued went away')
            line += chunk
        s.settimeout(None)
        return s, int(line)
    except (OSError, ValueError):
        s.close()
        return None


def in_home() -> bool:
    try:
        return os.path.samefile('.', auto.QMAIL)
    except OSError:
        return False


def pipes(n: int) -> list:
    """n pipes; OSError (none left open) if the descriptors run out."""
    made = []
    try:
        for _ in range(n):
            made.append(os.pipe())
    except OSError:
        for pair in made:
            for fd in pair:
                os.close(fd)
        raise
    return made


class QueueClient:
    """One message on its way into the queue.  Descriptors that cannot
    be had (the table full) are qmail's "unable to exec qq": its
    qmail_open fails, the caller says so and tries later."""

    def __init__(self, program: str, wait: float = DAEMON_WAIT):
        """wait: how long qmail-queued may take to answer (connect_daemon)."""
        self.flagerr = False
        self.buf = bytearray()
        self.pid = None
        self.spawn_error = None
        self.sock = None
        # qmail-queued knows its client by the effective uid (SO_PEERCRED);
        # qmail-queue records the real one: a set-uid caller goes there.
        self.fdm = self.fde = self.fderr = self.fdout = -1
        if program == os.path.join(auto.QMAIL, 'bin', 'qmail-queue') \
                and os.geteuid() == os.getuid():
            try:
                pim, pie = pipes(2)
            except OSError:
                pass                # none to spare: bin/qmail-queue's turn
            else:
                got = connect_daemon(pim, pie, wait)
                if got is not None:
                    self.sock, self.pid = got
                    os.close(pim[0])
                    os.close(pie[0])
                    self.fdm, self.fde, self.fderr = pim[1], pie[1], -1
                    self.fdout = self.fdm
                    return
                for fd in pim + pie:
                    os.close(fd)
        path, argv = program, [program]
        if not in_home():
            # qmail starts qmail-queue (or QMAILQUEUE's program, by its
            # path as given) in HOME; qmail-send works in HOME/queue.
            path = '/bin/sh'
            argv = [path, '-c', 'cd "$1" 2>/dev/null || exit 61; shift; '
                    '[ -f "$1" ] && [ -x "$1" ] || exit 120; exec "$@"', 'qmail-queue',
                    auto.QMAIL, program if '/' in program else './' + program]
        try:
            pim, pie, pierr = pipes(3)
        except OSError as err:
            self.spawn_error = err
            self.flagerr = True
            return
        try:
            self.pid = os.posix_spawn(
                path, argv, os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, pim[0], 0),
                    (os.POSIX_SPAWN_DUP2, pie[0], 1),
                    (os.POSIX_SPAWN_DUP2, pierr[1], 6),
                ],
                setsigdef=execvp.DEFAULT_SIGNALS,
            )
        except (OSError, ValueError) as err:
            # ValueError: an empty program (QMAILQUEUE set to nothing),
            # which qmail's exec also fails on: "unable to exec qq".
            self.spawn_error = err
            self.flagerr = True
        for fd in (pim[0], pie[0], pierr[1]):
            os.close(fd)
        self.fdm, self.fde, self.fderr = pim[1], pie[1], pierr[0]
        self.fdout = self.fdm

    def open_failed(self) -> bool:
        """Whether qmail's qmail_open would have failed: no pipes, or no
        process (fork's EAGAIN, ENOMEM).  A program that could not be
        run is not that: qmail finds it at qmail_close."""
        err = self.spawn_error
        return err is not None and (self.fde == -1 or getattr(
            err, 'errno', None) in (errno.EAGAIN, errno.ENOMEM))

    def _flush(self):
        data = memoryview(bytes(self.buf))
        self.buf.clear()
        while data and not self.flagerr:
            try:
                n = os.write(self.fdout, data)
            except OSError:
                self.flagerr = True
                return
            data = data[n:]

    def put(self, data: bytes):
        """Append bytes to the message (or, after from_, the envelope)."""
        if self.flagerr:
            return
        self.buf += data
        if len(self.buf) >= BUFSIZE:
            self._flush()

    def fail(self):
        """Abandon the message: close() will not report success."""
        self.flagerr = True

    def from_(self, sender: bytes):
        """End the message; start the envelope with the sender."""
        self._flush()
        if self.fdm != -1:
            os.close(self.fdm)
        self.fdm = -1
        self.fdout = self.fde
        self.put(b'F' + sender + b'\0')

    def to(self, recipient: bytes):
        self.put(b'T' + recipient + b'\0')

    def close(self) -> str:
        """Finish the envelope, wait for qmail-queue, return qmail's status."""
        self.put(b'\0')
        self._flush()
        if self.fdm != -1:
            os.close(self.fdm)
        if self.fde == -1:                  # no pipes could be had
            return 'Zunable to exec qq (#4.3.0)'
        os.close(self.fde)
        if self.sock is not None:
            return self.close_daemon()
        errstr = b''
        try:
            while len(errstr) < ERRSTR_MAX:
                chunk = os.read(self.fderr, ERRSTR_MAX - len(errstr))
                if not chunk:
                    break
                errstr += chunk
        except OSError:
            pass
        os.close(self.fderr)
        if self.pid is None:
            return 'Zunable to exec qq (#4.3.0)'
        try:
            _, wstat = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return 'Zqq waitpid surprise (#4.3.0)'
        if os.WIFSIGNALED(wstat):
            return 'Zqq crashed (#4.3.0)'
        code = os.WEXITSTATUS(wstat)
        if code == 0 and not self.flagerr:
            return ''
        return status_text(code, errstr.decode('utf-8', 'replace'))


    def close_daemon(self) -> str:
        """qmail-queued's writer answers with qmail-queue's exit code."""
        try:
            code = self.sock.recv(1)
        except OSError:
            code = b''
        self.sock.close()
        if not code:
            return 'Zqq crashed (#4.3.0)'
        if code[0] == 0 and not self.flagerr:
            return ''
        return status_text(code[0])


def status_text(code: int, errstr: str = '') -> str:
    """qmail's reading of a qmail-queue exit code (code 0 here means a
    write to qmail-queue failed, which qmail reports as a read error)."""
    fixed = {
        115: 'Denvelope address too long for qq (#5.1.3)',
        11: 'Denvelope address too long for qq (#5.1.3)',
        31: 'Dmail server permanently rejected message (#5.3.0)',
        51: 'Zqq out of memory (#4.3.0)',
        52: 'Zqq timeout (#4.3.0)',
        53: 'Zqq write error or disk full (#4.3.0)',
        0: 'Zqq read error (#4.3.0)',
        54: 'Zqq read error (#4.3.0)',
        55: 'Zqq unable to read configuration (#4.3.0)',
        56: 'Zqq trouble making network connection (#4.3.0)',
        61: 'Zqq trouble in home directory (#4.3.0)',
        62: 'Zqq trouble creating files in queue (#4.3.0)',
        63: 'Zqq trouble creating files in queue (#4.3.0)',
        64: 'Zqq trouble creating files in queue (#4.3.0)',
        65: 'Zqq trouble creating files in queue (#4.3.0)',
        66: 'Zqq trouble creating files in queue (#4.3.0)',
        71: 'Zmail server temporarily rejected message (#4.3.0)',
        72: 'Zconnection to mail server timed out (#4.4.1)',
        73: 'Zconnection to mail server rejected (#4.4.1)',
        74: 'Zcommunication with mail server failed (#4.4.2)',
        81: 'Zqq internal bug (#4.3.0)',
        91: 'Zqq internal bug (#4.3.0)',
        120: 'Zunable to exec qq (#4.3.0)',
    }
    if code in fixed:
        return fixed[code]
    if code == 82 and len(errstr) > 2:
        text = errstr.split('\n')[0].split('\0')[0]     # qmail's text ends at either
        # qmail takes any first letter but D as temporary and shows the
        # rest: said here as a Z, which every reader (a QMTP response too)
        # takes for temporary.
        return text if text[:1] in ('D', 'Z') else 'Z' + text[1:]
    if 11 <= code <= 40:
        return 'Dqq permanent problem (#5.3.0)'
    return 'Zqq temporary problem (#4.3.0)'
