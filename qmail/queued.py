"""qmail-queued: qmail-queue without an interpreter start per message.

Runs as:  qmailq, group qmail; started by qmail-start (it ends with
          qmail-send); cwd HOME/queue.
Reads:    connections on the socket HOME/run/qmail-queue.sock (mode 0666:
          anyone may queue mail, as anyone may run bin/qmail-queue).  A
          client sends one byte with two descriptors attached (SCM_RIGHTS):
          the read ends of its message and envelope, exactly what it
          would give qmail-queue on fds 0 and 1.
Writes:   per connection, a writer runs qmail-queue's own code,
          qmail.queue.inject(), and answers on the connection: its pid
          as "<pid>\\n" at once, then one byte, qmail-queue's exit code.
          Writers are pre-forked workers (qmail.lib.prefork), SPARE kept
          idle, each serving up to MAX_USE injections one after another,
          at most MAX_WRITERS at once.  The "pid" stands for qmail-queue's
          pid wherever qmail shows one (the qp of the 250 reply and of
          qmail-send's log, the Received line, the envelope's p): the
          writer's pid for its first injection, then pid + n * 2^22 for
          its n-th (Linux pids stay below 2^22), so that a qp still names
          one injection, as a fresh qmail-queue's pid did.
Trusts:   nothing the client says: the uid recorded in the envelope and
          the Received line is the one the kernel reports for the
          connection (SO_PEERCRED), as the setuid launcher records the
          caller's real uid.  The descriptors are only read from, under
          qmail-queue's DEATH timer, and only while the client is there:
          gone, with nothing left to read, its injection ends (54;
          queue.read_some), so a writer is not held by descriptors
          whose writer is the writer itself.  Nor does it let one user
          hold the writers: the byte and descriptors must come within HELLO
          seconds, and a user other than root and the MTA's own (qmaild,
          qmails, alias) has at most PER_UID injections at once; one
          more is closed unanswered, and the client uses bin/qmail-queue
          at once (its own process, as with qmail).
Exits:    0 on TERM, or at end of file on fd 0: qmail-start gives it a
          pipe whose other end only qmail-send holds, so it ends with
          qmail-send (a parent-death signal cannot cross from qmails to
          qmailq); 111 if it cannot start, or is run as any user but
          qmailq (by hand as root it would make root's queue files).
          Clients fall back to bin/qmail-queue whenever the socket is
          absent or refuses, so mail never depends on it; an internal
          error in the pool's parent restarts the pool a second later
          (the fifth within a minute: exit 111).  What went wrong goes
          to fd 2, which qmail-start makes qmail-send's log: lines
          "warning: qmail-queued: ..." and "alert: qmail-queued: ..."
          (its writers' fd 2 is /dev/null: a busy one outlives
          qmail-send, and must not hold the log's pipe open).
See:      qmail-queue(8); qmail/lib/qqtalk.py (the client).
"""

import _signal
import array
import fcntl
import mmap
import os
import signal
import socket
import struct
import sys
import tempfile
import time

from qmail.lib import auto, durable, prefork, proctitle
from qmail import queue

SOCKET = 'run/qmail-queue.sock'      # under HOME
MAX_WRITERS = 100                     # concurrent injections; more wait
SPARE = 4                             # idle writers kept ready
MAX_USE = 500                         # injections a writer serves, then retires
                                      # (its qp stays below 2^31: qp_for)
HELLO = 10                            # seconds for the client's byte and descriptors
PER_UID = MAX_WRITERS // 4            # injections at once of one user (not the MTA's)


def socket_path(home: str) -> str:
    return os.path.join(home, SOCKET)


def recv_fds(conn: socket.socket):
    """The two descriptors a client sent, or None."""
    fds = array.array('i')
    try:
        msg, ancdata, flags, addr = conn.recvmsg(1, socket.CMSG_SPACE(2 * fds.itemsize))
    except OSError:
        return None
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    got = list(fds)
    if msg != b'Q' or len(got) != 2:
        for fd in got:
            os.close(fd)
        return None
    return got


UCRED = struct.Struct('3i')             # pid, uid, gid


def peer_uid(conn: socket.socket) -> int:
    pid, uid, gid = UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                 UCRED.size))
    return uid


class UidCap:
    """Which user each busy writer serves, shared by the writers (memory
    the pool's parent maps before they fork, a record lock around each
    change): take() a place for an injection of uid, or None when the
    user has PER_UID already; give() it back.  A place whose writer died
    is taken back at the next take(), whoever's it was.  The exempt (root, the MTA's users)
    are not counted: their own limits hold (qmail-listen's -c), and where
    they hold every writer (more sessions in DATA at once than
    MAX_WRITERS), a client waits qqtalk's DAEMON_WAIT (qmail-send a
    quarter second) and runs bin/qmail-queue itself."""

    SLOT = struct.Struct('2i')          # writer's pid, uid + 1 (0: free)

    def __init__(self, exempt, places: int = MAX_WRITERS, per_uid: int = PER_UID):
        self.exempt = frozenset(exempt)
        self.places, self.per_uid = places, per_uid
        self.mem = mmap.mmap(-1, self.SLOT.size * places)
        try:
            self.lockfile = tempfile.TemporaryFile(dir='lock')   # nameless, ours only
        except OSError:
            self.lockfile = tempfile.TemporaryFile()

    def _locked(self, fn):
        fcntl.lockf(self.lockfile, fcntl.LOCK_EX)
        try:
            return fn()
        finally:
            fcntl.lockf(self.lockfile, fcntl.LOCK_UN)

    def take(self, uid: int):
        if uid in self.exempt:
            return -1
        me = os.getpid()

        def claim():
            mine, free = [], None
            for i in range(self.places):
                pid, who = self.SLOT.unpack_from(self.mem, i * self.SLOT.size)
                if who and pid != me and not alive(pid):
                    # Its writer died (killed, or its DEATH timer's exit
                    # skipped give()): free again, whoever's it was, so
                    # that dead places do not add up for any user.
                    who = 0
                    self.SLOT.pack_into(self.mem, i * self.SLOT.size, 0, 0)
                if who == uid + 1:
                    mine.append(i)
                if who == 0 and free is None:
                    free = i
            if len(mine) >= self.per_uid or free is None:
                return None
            self.SLOT.pack_into(self.mem, free * self.SLOT.size, me, uid + 1)
            return free
        return self._locked(claim)

    def give(self, place):
        if place is not None and place >= 0:
            self._locked(lambda: self.SLOT.pack_into(self.mem, place * self.SLOT.size, 0, 0))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass                            # someone else's: alive
    return True


QP_STRIDE = 1 << 22         # above any Linux pid (PID_MAX_LIMIT)


def qp_for(pid: int, served: int) -> int:
    """The qp of a writer's injection after `served` others: below
    MAX_USE * QP_STRIDE = 2^31 less a little, so a qp fits the signed
    32-bit number a log tool may read it into."""
    return pid + served * QP_STRIDE


def writer(conn: socket.socket, uids: dict, qp: int, cap: UidCap = None) -> int:
    """One injection, answered on conn; in a pool worker.  qp: what
    stands for qmail-queue's pid (qp_for); cap: the places per user."""
    # _signal's: signal.signal() converts to and from enums, 30 us a call.
    _signal.signal(_signal.SIGALRM, queue.die_timeout)
    _signal.alarm(queue.DEATH)
    place = None
    try:
        uid = peer_uid(conn)
        if cap is not None:
            place = cap.take(uid)
            if place is None:
                return 54       # closed unanswered: bin/qmail-queue at once
        conn.settimeout(HELLO)
        fds = recv_fds(conn)
        conn.settimeout(None)
        if fds is None:
            return 54
        try:
            conn.sendall(b'%d\n' % qp)
            code = queue.inject(fds[0], fds[1], uid, qp, time.time(),
                                uids, auto.SPLIT, conn.fileno())
        finally:
            for fd in fds:
                os.close(fd)
        try:
            conn.sendall(bytes((code,)))
        except OSError:
            pass
        return code
    finally:
        if cap is not None:
            cap.give(place)
        _signal.alarm(0)
        _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)


def make_handler(uids: dict, cap: UidCap = None):
    # In each worker, from its first injection: its descriptors' count,
    # its pid, the injections it served.
    baseline = pid = None
    served = 0

    def handle(conn: socket.socket, addr) -> bool:
        """False retires the worker: after an internal error, or when a
        descriptor was left open."""
        nonlocal baseline, pid, served
        if pid is None:
            baseline = prefork.open_fds() - 1       # less conn
            pid = os.getpid()
        qp = qp_for(pid, served)
        served += 1
        try:
            code = writer(conn, uids, qp, cap)
        except OSError:
            code = 54           # the client went away
        except BaseException:
            code = 81
        finally:
            conn.close()
        return code != 81 and prefork.open_fds() == baseline
    return handle


RESTART_PAUSE = 1.0     # seconds between a failed pool and the next
RESTARTS = 5            # failures within RESTART_WINDOW seconds: give up
RESTART_WINDOW = 60.0


def serve(listener: socket.socket, uids: dict):
    """Run the writers' pool until TERM or qmail-send's end.  A bug in
    the pool's parent costs a pause, not the daemon (nothing restarts
    it before qmail-send does): the pool starts again, the old one's
    idle writers gone, its busy ones finishing; clients use
    bin/qmail-queue meanwhile.  A pool that keeps failing (RESTARTS
    within RESTART_WINDOW) ends the daemon: exit 111, and clients fall
    back at once, finding nobody at the socket."""
    durable.load_writeback()            # once, before the writers fork
    stopping = []
    pools = []
    failures = []                       # when pools failed, the last minute's

    def stop(signum, frame):
        stopping.append(signum)
        if pools:
            pools[-1].stop()
    signal.signal(signal.SIGTERM, stop)
    watch = {}
    if watch_fd0():
        watch[0] = lambda: True         # readable: qmail-send is gone
    cap = UidCap({0} | {uids[k] for k in ('alias', 'daemon', 'send') if k in uids})
    while not stopping:
        pools[:] = [prefork.Pool(listener, make_handler(uids, cap), MAX_WRITERS,
                                 spare=SPARE, max_use=MAX_USE, log=pool_log,
                                 child_init=quiet)]
        if stopping:
            break                       # TERM came as the pool was made
        try:
            pools[0].serve(watch)
            return 0
        except Exception as err:
            if stopping:
                raise
            trouble = why(err)
        now = time.monotonic()
        failures = [t for t in failures if now - t < RESTART_WINDOW] + [now]
        if len(failures) >= RESTARTS:
            say('alert', 'writers failed %d times within %g seconds, the last: %s'
                % (RESTARTS, RESTART_WINDOW, trouble))
            return 111
        say('warning', 'writers failed: %s; starting them again' % trouble)
        time.sleep(RESTART_PAUSE)
    return 0


def say(kind: str, text: str):
    """One line to fd 2, which qmail-start makes qmail-send's log, in its
    words (qmail-log(5)): "warning: qmail-queued: ..." for trouble it
    gets over, "alert: qmail-queued: ..." when it stops (qmail-send then
    says injections go through bin/qmail-queue)."""
    try:
        os.write(2, ('%s: qmail-queued: %s\n' % (kind, text)).encode('utf-8', 'replace'))
    except OSError:
        pass


def quiet():
    """In each writer: fd 2 on /dev/null.  A writer may outlive qmail-send
    (an injection under way: qmail-queue's DEATH is a day), and with the
    log's pipe it kept a logger qmail-start ran (splogger, multilog)
    from seeing its end."""
    fd = os.open(os.devnull, os.O_WRONLY)
    if fd != 2:
        os.dup2(fd, 2)
        os.close(fd)


def pool_log(level: int, text: str):
    """The pool's warnings (unable to fork, to accept); not its level 1
    "end" lines, tcpserver's form, for qmail-listen's log."""
    if level == 0:
        say('warning', text[len('warning: '):] if text.startswith('warning: ') else text)


def why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return '%s (%s)' % (type(err).__name__, err)


def watch_fd0() -> bool:
    """True if fd 0 is a pipe to watch for qmail-send's end."""
    import stat
    try:
        return stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        return False


def listen(home: str) -> socket.socket:
    path = socket_path(home)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o111)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o666)
    s.listen(64)
    return s


def main(argv=None) -> int:
    # Only as qmailq, as qmail-start runs it: started by hand as root (or
    # anyone else), its writers made the queue's files that user's, where
    # the set-uid qmail-queue makes qmailq's whoever runs it.
    try:
        if os.geteuid() != auto.uid(auto.USER_QUEUE):
            say('alert', 'must run as %s (qmail-start starts it)' % auto.USER_QUEUE)
            return 111
    except KeyError as err:
        say('alert', "unable to find qmail's users: %s" % err.args[0])
        return 111
    try:
        uids = queue.queue_uids()
    except KeyError as err:
        say('alert', "unable to find qmail's users: %s" % err.args[0])
        return 111
    try:
        os.chdir(auto.QMAIL)
        listener = listen(auto.QMAIL)
        os.chdir('queue')
    except OSError as err:
        say('alert', 'unable to listen on %s: %s' % (socket_path(auto.QMAIL), why(err)))
        return 111
    os.umask(0o033)
    return serve(listener, uids)


def run():
    proctitle.set_title('qmail-queued')
    try:
        code = main()
    except Exception:
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
