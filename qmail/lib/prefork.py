"""A pool of pre-forked workers taking turns on one listening socket.

Used by qmail-listen (SMTP, QMTP, QMQP, POP3 sessions, as qmaild or the
-u user) and qmail-queued (qmail-queue writers, as qmailq).  A fork of a
loaded Python process is cheap, but the copies its first minutes of work
make of the parent's pages are not (make bench: 1 to 2 ms of CPU per
fork); a worker that serves many connections pays that once.  This is
Postfix's process reuse and Apache's prefork, kept within qmail's trust
partition: every worker is a child of one server running as one user,
and serves only that server's kind of connection.

The parent never accepts.  It forks workers, keeps at least `spare` of
them idle (never more than `limit` in all) and reaps them.  Each worker
has a byte of a shared scoreboard (anonymous shared memory, one slot per
possible worker, given by the parent at the fork and freed at the reap)
that says I (idle) or B (busy), set by the worker itself at no cost.
The parent is woken through a pipe every worker writes to, a 5-byte
record (the pid and B or I; writes of a few bytes to a pipe are atomic,
so records never interleave), only when it must act: a worker taking a
connection finds fewer than `spare` idle.  Otherwise a connection costs
the parent nothing, where a wake-up of it for each start and end of one
was 3% of all CPU under load.  The busy count's changes (status given:
qmail-listen's status lines) are reported by the worker that made them,
from the scoreboard; the parent reports only the first count and those
its reaping changes (a worker that died busy).  Two workers changing
at the same instant may report in either order: a line may be one off
until the next change.

A worker polls the socket and a second pipe whose write end only the
parent holds: end of file there means the parent is stopping (or gone),
and an idle worker exits.  A busy one learns of its parent's death by a
signal (PR_SET_PDEATHSIG) and closes its copy of the listening socket at
once, so that a restarted server can bind the port while the old
connection goes on; it exits when that connection ends.  A worker also exits after `max_use`
connections, after `idle_exit` seconds without one, or when its handler
raises; the parent replaces it.  So a long-lived process never
accumulates what one connection left behind for long.

The handler, handle(conn, addr), runs in the worker and must leave the
process as it found it (descriptors, signals, environment, alarm): the
servers built on this check their own state after each connection and
retire a worker that did not.
"""

import ctypes
import errno
import gc
import mmap
import os
import select
import signal
import socket
import struct
import time

RECORD = struct.Struct('<iB')      # pid, state
PR_SET_PDEATHSIG = 1
ORPHAN_SIGNAL = signal.SIGUSR2
BUSY, IDLE, FREE = ord('B'), ord('I'), 0


def reaped():
    """(pid, wait status) of each child that has ended, without waiting
    for any (the reaping loops of qmail-listen, its pool and the spawns)."""
    while True:
        try:
            pid, wstat = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, wstat


class Pool:
    """pool = Pool(sock, handle, limit); pool.serve(watch) -> None.

    child_init() runs once in each new worker, before its first
    connection; before_fork(), in the parent before it forks one or
    more workers, loads what they should share (their copy-on-write
    pages) rather than each read for itself; its exceptions are
    ignored (the workers then read it themselves).  status(busy, total) is called whenever the number of
    busy workers changes: in the worker that took or ended a connection,
    in the parent at the start and when a worker died busy.  watch:
    extra descriptors for the parent's poll; watch[fd]() is called when
    one is readable and returns True to stop the pool."""

    def __init__(self, sock, handle, limit, spare=4, max_use=100, idle_exit=60.0,
                 child_init=None, status=None, log=None, before_fork=None):
        self.sock = sock
        self.before_fork = before_fork
        self.handle = handle
        self.limit = max(1, limit)
        self.spare = max(1, min(spare, self.limit))
        self.max_use = max_use
        self.idle_exit = idle_exit
        self.child_init = child_init
        self.status = status
        self.log = log
        self.workers = {}        # pid -> its slot on the scoreboard
        self.board = None        # the scoreboard: a byte per slot
        self.free = []           # slots no worker has
        self.slot = None         # a worker's own
        self.stopping = False
        self.status_r = self.status_w = None
        self.death_r = self.death_w = None
        self.wakeup_r = None
        self.unreported = True   # the first count, then a worker's death
        self.fork_failures = 0   # in a row (a process limit reached)

    # -- parent ----------------------------------------------------------

    def busy(self) -> int:
        return self.board[:].count(BUSY) if self.board is not None else 0

    def stop(self):
        """Idle workers exit now, busy ones after their connection."""
        self.stopping = True
        fd, self.death_w = self.death_w, None   # (a TERM may call this mid-way)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def serve(self, watch=None):
        watch = dict(watch or {})
        fds = []
        unset = object()
        old_wakeup = old_chld = unset
        try:
            self.status_r, self.status_w = os.pipe2(os.O_CLOEXEC)
            fds += [self.status_r, self.status_w]
            self.death_r, self.death_w = os.pipe2(os.O_CLOEXEC)
            fds.append(self.death_r)            # (death_w: stop() closes it)
            os.set_blocking(self.status_r, False)
            self.wakeup_r, wakeup_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            fds += [self.wakeup_r, wakeup_w]
            self.board = mmap.mmap(-1, self.limit)      # shared, all FREE
            self.free = list(range(self.limit - 1, -1, -1))
            old_wakeup = signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
            old_chld = signal.signal(signal.SIGCHLD, lambda s, f: None)
            self.sock.setblocking(False)
            gc.freeze()         # workers share the loaded code's pages
            self.parent = os.getpid()
            poller = select.poll()          # the same descriptors every turn
            poller.register(self.wakeup_r, select.POLLIN)
            poller.register(self.status_r, select.POLLIN)
            for fd in watch:
                poller.register(fd, select.POLLIN)
            self.report()                   # the first count, before any worker's
            while not self.stopping:
                self.reap()
                self.grow()
                self.report()
                try:
                    # A second at most: two workers taking connections at
                    # the same instant may each miss the other's byte and
                    # neither wake the parent; a fork that failed is tried
                    # again too.
                    ready = poller.poll(1000)
                except InterruptedError:
                    continue
                for fd, _ in ready:
                    if fd == self.wakeup_r:
                        try:
                            os.read(self.wakeup_r, 512)
                        except OSError:
                            pass
                    elif fd == self.status_r:
                        self.read_status()
                    elif fd in watch and watch[fd]():
                        self.stop()
        finally:
            self.stop()
            try:
                if old_wakeup is not unset:
                    signal.set_wakeup_fd(old_wakeup)
                if old_chld is not unset:
                    # (None: a handler not set from Python; the default then)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL if old_chld is None
                                  else old_chld)
            except (OSError, ValueError):
                pass
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def grow(self):
        warmed = self.before_fork is None
        while (not self.stopping and len(self.workers) < self.limit
               and len(self.workers) - self.busy() < self.spare):
            if not warmed:
                warmed = True
                try:
                    self.before_fork()
                except Exception:
                    pass
            slot = self.free.pop()
            self.board[slot] = IDLE
            try:
                pid = os.fork()
            except OSError as e:
                self.board[slot] = FREE
                self.free.append(slot)
                self.fork_failures += 1
                # Said at the first, then at the 10th, 100th ... in a row:
                # a process limit reached while idle said it every 2 s.
                n = self.fork_failures
                if self.log and (n == 1 or str(n).strip('0') == '1'):
                    self.log(0, 'warning: unable to fork: %s%s' % (
                        e.strerror, '' if n == 1 else ' (%d times in a row)' % n))
                time.sleep(1)
                return
            if pid == 0:
                self.worker(slot)       # never returns
            if self.fork_failures and self.log:
                self.log(0, 'warning: able to fork again, after %d failures'
                         % self.fork_failures)
            self.fork_failures = 0
            self.workers[pid] = slot

    def reap(self):
        for pid, wstat in reaped():
            slot = self.workers.pop(pid, None)
            if slot is None:
                continue
            busy = self.board[slot] == BUSY
            if busy:
                self.unreported = True  # its end is the parent's to report
            self.board[slot] = FREE     # busy or not when it ended
            self.free.append(slot)
            if busy and os.WIFSIGNALED(wstat) and self.log:
                # Killed during a connection: its "end" line, in tcpserver's
                # form, is ours to write.  An idle worker had none to end.
                self.log(1, 'end %d status %d' % (pid, wstat))

    def read_status(self):
        """The records only wake the parent: the scoreboard says who is
        busy."""
        while True:
            try:
                if len(os.read(self.status_r, RECORD.size * 800)) < RECORD.size * 800:
                    return
            except (BlockingIOError, InterruptedError):
                return

    def report(self):
        """The busy count, when the parent changed it (workers report
        their own changes)."""
        if self.unreported:
            self.unreported = False
            if self.status:
                self.status(self.busy(), self.limit)

    # -- worker ----------------------------------------------------------

    def tell(self, state):
        """Set this worker's slot, report the new busy count; wake the
        parent if it must act."""
        self.board[self.slot] = state
        if self.status is not None:
            try:
                self.status(self.busy(), self.limit)
            except Exception:
                pass                    # a report lost, not the connection
        if state == IDLE or self.board[:].count(IDLE) >= self.spare:
            return
        try:
            os.write(self.status_w, RECORD.pack(self.me, state))
        except OSError:
            pass

    def worker(self, slot: int):
        code = 0
        self.slot = slot
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            os.close(self.status_r)
            os.close(self.wakeup_r)
            os.close(self.death_w)
            self.me = os.getpid()           # for tell(), twice a connection
            self.orphan = False
            signal.signal(ORPHAN_SIGNAL, self.on_orphan)
            parent_death_signal(ORPHAN_SIGNAL)
            if os.getppid() != self.parent:
                return                  # the parent died before that
            wait = self.waiter()            # before child_init's fd baseline
            if self.child_init:
                self.child_init()
            code = self.work(wait)
        except BaseException:
            code = 111
        finally:
            os._exit(code)

    def on_orphan(self, signum, frame):
        """The parent is gone: let go of the port now (a restarted server
        binds it), finish the connection in hand, then exit."""
        self.orphan = True
        try:
            self.sock.close()
        except OSError:
            pass

    def waiter(self):
        """wait(seconds) -> {fd: events}: for a connection on the listening
        socket or the parent's death.  With epoll the socket is exclusive
        (EPOLLEXCLUSIVE): a connection wakes one idle worker, not every
        one of them to find all but one accept() empty."""
        try:
            ep = select.epoll()
        except (AttributeError, OSError):
            ep = None
        if ep is not None:
            try:
                ep.register(self.sock.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
                ep.register(self.death_r, select.EPOLLIN)
                return lambda seconds: dict(ep.poll(seconds))
            except (AttributeError, OSError):
                ep.close()
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.death_r, select.POLLIN)
        return lambda seconds: dict(poller.poll(seconds * 1000))

    def work(self, wait) -> int:
        uses = 0
        idle_since = time.monotonic()
        # socket.accept() asks the listening socket its family and type
        # as enums for each connection: the same socket object from the
        # raw accept and plain ints, and blocking as accept4 made it (no
        # setblocking call: 10% of a qmail-queue writer's Python).
        accept = self.sock._accept
        kind = (int(self.sock.family), int(self.sock.type), self.sock.proto)
        while uses < self.max_use and not self.orphan:
            try:
                ready = wait(1)
            except InterruptedError:
                continue
            if self.death_r in ready:
                return 0
            if not ready and time.monotonic() - idle_since > self.idle_exit:
                return 0
            # Nothing ready: look anyway, once a second.  epoll's exclusive
            # wakeup may have gone to a worker that did not take the
            # connection (it died, or took another), and is not given again.
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                continue                # another worker took it
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if self.log:
                        self.log(0, 'warning: unable to accept: %s' % e.strerror)
                    time.sleep(1)       # no storm of replacements
                    return 111
                continue
            conn = socket.socket(*kind, fileno=fd)
            if conn.gettimeout() is not None:
                conn.setblocking(True)
            self.tell(BUSY)
            uses += 1
            if not self.handle(conn, addr):
                return 0                # the handler wants this worker gone
            self.tell(IDLE)
            idle_since = time.monotonic()
        return 0


def parent_death_signal(signum: int):
    """prctl(PR_SET_PDEATHSIG): signum when the parent dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def open_fds() -> int:
    """How many descriptors this process has open (to spot a leak)."""
    try:
        return len(os.listdir('/proc/self/fd')) - 1     # less listdir's own
    except OSError:
        return -1


def describe_fds(skip=(0, 1, 2)) -> str:
    """The open descriptors above skip and what they are, for a log line."""
    out = []
    try:
        for name in sorted(os.listdir('/proc/self/fd'), key=int):
            fd = int(name)
            if fd in skip:
                continue
            try:
                out.append('%d=%s' % (fd, os.readlink('/proc/self/fd/' + name)))
            except OSError:
                pass
    except OSError:
        pass
    return ' '.join(out)
