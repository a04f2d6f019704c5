"""The spawn loop shared by qmail-lspawn and qmail-rspawn (qmail's spawn.c).

Reads:    fd 0, from qmail-send, one command per delivery: a slot number
          byte, then NUL-terminated the message's name under queue/mess
          ("split/messid"), the sender and the recipient.
Writes:   fd 1: first one byte, the number of slots (SPAWN); then per
          finished delivery the slot byte, the report (K, Z or D and its
          text) and a NUL.
Runs:     each delivery through the program's start(): qmail-rspawn
          forks a child of this process (the code already loaded: no
          interpreter start), qmail-lspawn hands it to a delivery worker.
          The delivery gets the message on fd 0 and a pipe on fds 1 and 2;
          whatever it writes there, with its exit status, becomes the
          report.
Exits:    0 when qmail-send closes fd 0 and every delivery has finished.

The parent holds the write end of each delivery's pipe until the child
has been reaped (or the worker has answered), so end-of-file on the pipe
means the status is known.
"""

import array
import errno
import fcntl
import gc
import os
import select
import _signal
import signal
import socket
import stat
import struct
import time

from qmail.lib import prefork, proctitle

SPAWN = 120          # conf-spawn: slots, also qmail-send's concurrency ceiling
MESSID_MAX = 100
MAX_USE = 1000       # deliveries a worker runs before it retires
MAX_AGE = 300        # seconds after which a worker takes no more: it
                     # took its identity once (qmailr's groups; a local
                     # user's uid and gid, which users/cdb may change)
IDLE_EXIT = 30       # seconds an idle worker is kept
MAX_IDLE = 20        # idle workers kept, all keys together
JOB_MAX = 65536      # a delivery's arguments, as the worker receives them
ANSWER = struct.Struct('<iB')      # the delivery's exit code, keep-me flag
CRASHED = signal.SIGKILL           # a wstat saying "killed by a signal"


class Slot:
    __slots__ = ('pid', 'fdin', 'fdout', 'wstat', 'output')

    def __init__(self, pid, fdin, fdout):
        self.pid, self.fdin, self.fdout = pid, fdin, fdout
        self.wstat = None
        self.output = bytearray()


class CommandParser:
    """Splits qmail-send's byte stream into (delnum, messid, sender, recip)."""

    def __init__(self):
        self.stage = 0
        self.fields = []
        self.buf = bytearray()
        self.delnum = 0

    def feed(self, data: bytes):
        out = []
        pos, end = 0, len(data)
        while pos < end:
            if self.stage == 0:         # the slot number: one byte, maybe 0
                self.delnum = data[pos]
                self.fields = []
                self.buf = bytearray()
                self.stage = 1
                pos += 1
                continue
            nul = data.find(b'\0', pos)
            if nul == -1:
                self.buf += data[pos:]
                break
            self.buf += data[pos:nul]
            self.fields.append(bytes(self.buf))
            self.buf = bytearray()
            self.stage += 1
            pos = nul + 1
            if self.stage == 4:
                out.append((self.delnum, *self.fields))
                self.stage = 0
        return out


def check_messid(messid: bytes):
    """None if messid is a sane 'split/number' name, else a D/Z report."""
    if len(messid) > MESSID_MAX:
        return b'DInternal error: messid too long. (#5.3.5)\n'
    if not messid:
        return b'DInternal error: messid too short. (#5.3.5)\n'
    for i, ch in enumerate(messid):
        if not (48 <= ch <= 57) and not (i and ch == 0x2f):
            return b'DInternal error: messid has nonnumerics. (#5.3.5)\n'
    return None


def truncate(output: bytearray, limit: int):
    """Keep a report short, saying so (limit 0: no limit)."""
    if limit > 100 and len(output) > limit:
        note = b'\nError report too long, sorry.\n'
        del output[limit - len(note) - 3:]
        output += note


class Done:
    """start() finished the delivery at once (wstat as from waitpid)."""
    __slots__ = ('wstat',)

    def __init__(self, wstat: int):
        self.wstat = wstat


class Spawner:
    """The loop.  start(fdmess, fdout, sender, recip, at, delnum) runs one
    delivery and returns the pid of the child it forked, or Done(wstat)
    if it finished at once, or None if it handed the delivery to a
    process that is not our child: then whoever has it calls
    finish(delnum, wstat) later, from a watch callback or tick().
    report(wstat, output) -> bytes.

    watch: {fd: callback()} polled along with the rest; tick(), if set,
    runs at least every `tick_seconds` and after each event."""

    def __init__(self, start, report, uid_queue, truncreport=0):
        self.start = start
        self.report = report
        self.uid_queue = uid_queue
        self.truncreport = truncreport
        self.slots = [None] * SPAWN
        self.flagreading = True
        self.flagwriting = True
        self.parser = CommandParser()
        self.byslot = {}
        self.watch = {}
        self.tick = None
        self.tick_seconds = 10.0

    def put(self, data: bytes):
        if not self.flagwriting:
            return
        while data:
            try:
                n = os.write(1, data)
            except InterruptedError:
                continue
            except OSError:
                self.flagwriting = False
                return
            data = data[n:]

    def err(self, delnum, text: bytes):
        self.put(bytes((delnum,)) + text + b'\0')

    def docmd(self, delnum, messid, sender, recip):
        if delnum >= SPAWN:
            return self.err(delnum, b'ZInternal error: delnum too big. (#4.3.5)\n')
        if self.slots[delnum] is not None:
            return self.err(delnum, b'ZInternal error: delnum in use. (#4.3.5)\n')
        bad = check_messid(messid)
        if bad:
            return self.err(delnum, bad)
        at = recip.rfind(b'@')
        if at == -1:
            return self.err(delnum, b'DSorry, address must include host name. (#5.1.3)\n')
        try:
            fdmess = os.open(messid, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return self.err(delnum, b'Zqmail-spawn unable to open message. (#4.3.0)\n')
        try:
            try:
                st = os.fstat(fdmess)
            except OSError:
                return self.err(delnum, b'Zqmail-spawn unable to fstat message. (#4.3.0)\n')
            if not stat.S_ISREG(st.st_mode):
                return self.err(delnum, b'ZSorry, message has wrong type. (#4.3.5)\n')
            if st.st_uid != self.uid_queue:
                # qmailq has to be trusted; if it is not, limit the damage.
                return self.err(delnum, b'ZSorry, message has wrong owner. (#4.3.5)\n')
            try:
                fdin, fdout = os.pipe()
            except OSError:
                return self.err(delnum, b'Zqmail-spawn unable to create pipe. (#4.3.0)\n')
            os.set_inheritable(fdin, False)
            os.set_blocking(fdin, False)
            os.set_inheritable(fdout, False)
            slot = Slot(None, fdin, fdout)
            self.slots[delnum] = slot
            try:
                pid = self.start(fdmess, fdout, sender, recip, at, delnum)
            except Exception as e:
                # One delivery's trouble, not the daemon's end (exiting,
                # it would meet the same record at each restart).
                self.slots[delnum] = None
                os.close(fdin)
                os.close(fdout)
                if isinstance(e, OSError):
                    if e.errno in (errno.EMFILE, errno.ENFILE):
                        # (the worker's socket or pipe: the fork came after)
                        return self.err(delnum, b'Zqmail-spawn unable to create pipe: '
                                        b'too many open files. (#4.3.0)\n')
                    return self.err(delnum, b'Zqmail-spawn unable to fork. (#4.3.0)\n')
                return self.err(delnum, b'ZInternal qmail-spawn bug: %s. (#4.3.5)\n'
                                % type(e).__name__.encode())
        finally:
            os.close(fdmess)
        if isinstance(pid, Done):
            self.finish(delnum, pid.wstat)
        elif pid is not None:
            slot.pid = pid
            self.byslot[pid] = delnum

    def finish(self, delnum: int, wstat: int):
        """The delivery in slot delnum is over: once its pipe reaches end
        of file, its report goes to qmail-send."""
        slot = self.slots[delnum]
        if slot is None or slot.wstat is not None:
            return
        slot.wstat = wstat
        if slot.fdout != -1:
            os.close(slot.fdout)
            slot.fdout = -1

    def reap(self):
        for pid, wstat in prefork.reaped():
            delnum = self.byslot.pop(pid, None)
            if delnum is not None:
                self.finish(delnum, wstat)

    def readslot(self, delnum):
        slot = self.slots[delnum]
        try:
            data = os.read(slot.fdin, 4096)
        except InterruptedError:
            return
        except OSError:
            return
        if data:
            slot.output += data
            truncate(slot.output, self.truncreport)
            return
        if slot.wstat is None:
            return                      # cannot happen: we hold fdout
        self.put(bytes((delnum,)) + self.report(slot.wstat, bytes(slot.output)) + b'\0')
        os.close(slot.fdin)
        self.slots[delnum] = None

    def loop(self) -> int:
        wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(wakeup_r, False)
        os.set_blocking(wakeup_w, False)
        signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.put(bytes((SPAWN,)))
        # Everything loaded so far stays put: forked children then share
        # these pages instead of copying them when a collection runs
        # (make bench: a fork with a collection cost 3.1 ms, 0.56 ms frozen).
        gc.freeze()
        poller, polled = None, None
        while True:
            self.reap()
            if self.tick is not None:
                self.tick()
            active = [i for i, s in enumerate(self.slots) if s is not None]
            if not self.flagreading and not active:
                return 0
            byfd = {}
            for i in active:
                byfd[self.slots[i].fdin] = i
            watched = dict(self.watch)
            fds = (wakeup_r,) + ((0,) if self.flagreading else ()) + tuple(byfd) + tuple(watched)
            if fds != polled:           # the set changed: poll() takes it whole
                poller = select.poll()
                for fd in fds:
                    poller.register(fd, select.POLLIN)
                polled = fds
            try:
                ready = poller.poll(None if self.tick is None else self.tick_seconds * 1000)
            except InterruptedError:
                continue
            for fd, ev in ready:
                if fd in watched:
                    # Only if it is still the same watch: a callback may
                    # have closed this fd and another opened it again.
                    if self.watch.get(fd) is watched[fd]:
                        watched[fd]()
                    continue
                if fd == wakeup_r:
                    try:
                        os.read(wakeup_r, 512)
                    except OSError:
                        pass
                    self.reap()
                elif fd == 0:
                    self.getcmd()
                elif fd in byfd:
                    self.reap()
                    self.readslot(byfd[fd])

    def getcmd(self):
        try:
            data = os.read(0, 1024)
        except InterruptedError:
            return
        except OSError:
            self.flagreading = False
            return
        if not data:
            self.flagreading = False
            return
        for cmd in self.parser.feed(data):
            self.docmd(*cmd)


def fresh_signals():
    """In a child of the spawn loop: the signal state of a fresh process."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGTERM, signal.SIGHUP,
                signal.SIGALRM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def child_setup(fdmess: int, fdout: int):
    """In a delivery child: fd 0 the message, fds 1 and 2 the report pipe,
    and the signal state of a fresh process."""
    gc.disable()     # short-lived: a collection would copy the parent's pages
    fresh_signals()
    os.dup2(fdmess, 0)
    os.dup2(fdout, 1)
    os.dup2(fdout, 2)
    # A fork keeps every descriptor of the parent, close-on-exec or not:
    # another delivery's pipe held here would delay its end-of-file.
    os.closerange(3, 1 << 16)


# ---- delivery workers: a fork per worker, not per delivery ------------------

class Worker:
    __slots__ = ('pid', 'sock', 'key', 'uses', 'born', 'idle_since', 'delnum')

    def __init__(self, pid, sock, key):
        self.pid, self.sock, self.key = pid, sock, key
        self.uses = 0
        self.born = self.idle_since = time.monotonic()
        self.delnum = None


class Workers:
    """Deliveries run by long-lived children of the spawner, each set up
    once for one key (qmail-lspawn: a user, whose groups, gid and uid the
    worker takes; qmail-rspawn: one key, nothing to take) and then given
    deliveries of that key only, one at a time, up to MAX_USE and for
    MAX_AGE seconds at most.

    run(key, arg, title, fields, fdmess, delnum) hands a delivery to an
    idle worker of key, or forks one that calls setup(arg) first (0, or
    the exit code to report for its first delivery before it exits).
    The worker gets the message and the slot's report pipe as
    descriptors (SCM_RIGHTS) with the fields NUL-joined, puts them on
    fds 0, 1 and 2, calls deliver(fields) -> exit code, and answers with
    that code; the spawner then calls finish().  A worker that dies
    mid-delivery makes the delivery's wstat "killed" (a crash report).
    A worker that left a descriptor open after a delivery retires."""

    def __init__(self, spawner, setup, deliver, spare=None):
        self.spawner = spawner
        self.setup = setup
        self.deliver = deliver
        self.spare = spare       # a function: the worker's Spare, or None
        self.idle = {}           # key -> [Worker], oldest first
        self.nidle = 0

    def run(self, key, arg, title, fields, fdmess, delnum):
        """None (the worker has it), or Done(wstat); fdmess stays ours."""
        msg = b'\0'.join(a if isinstance(a, bytes) else os.fsencode(a) for a in fields)
        if len(msg) > JOB_MAX:
            return Done(111 << 8)
        fdout = self.spawner.slots[delnum].fdout
        while True:
            # Idle workers gone meanwhile (killed by their user, say) are
            # retired one after another; a new one is forked once none is
            # left, and only its failure is the delivery's.
            worker = self.take(key)
            fresh = worker is None
            if fresh:
                worker = self.fork(key, arg, title)
            try:
                worker.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                             array.array('i', [fdmess, fdout]))])
                break
            except OSError:
                self.retire(worker)
                if fresh:
                    return Done(CRASHED)
        worker.delnum = delnum
        self.spawner.watch[worker.sock.fileno()] = lambda: self.answered(worker)
        return None

    def take(self, key):
        """An idle worker of key, none past MAX_AGE (those retire)."""
        workers = self.idle.get(key)
        now = time.monotonic()
        while workers:
            worker = workers.pop()
            self.nidle -= 1
            if now - worker.born <= MAX_AGE:
                break
            self.retire(worker)
        else:
            worker = None
        if key in self.idle and not workers:
            del self.idle[key]
        return worker

    def fork(self, key, arg, title) -> Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            code = 111
            try:
                fd, = fresh_child(title, (theirs.fileno(),))
                code = worker_main(socket.socket(fileno=fd), self.setup, self.deliver, arg,
                                   self.spare() if self.spare is not None else None)
            except BaseException:
                code = 111
            finally:
                os._exit(code)
        theirs.close()
        ours.setblocking(False)     # a stale poll result must not block us
        return Worker(pid, ours, key)

    def answered(self, worker: Worker):
        try:
            data = worker.sock.recv(ANSWER.size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b''
        delnum, worker.delnum = worker.delnum, None
        self.spawner.watch.pop(worker.sock.fileno(), None)
        if len(data) != ANSWER.size:
            self.retire(worker)
            self.spawner.finish(delnum, CRASHED)
            return
        code, keep = ANSWER.unpack(data)
        self.spawner.finish(delnum, (code & 0xff) << 8)
        worker.uses += 1
        now = time.monotonic()
        if not keep or worker.uses >= MAX_USE or now - worker.born > MAX_AGE:
            self.retire(worker)
            return
        worker.idle_since = now
        self.idle.setdefault(worker.key, []).append(worker)
        self.nidle += 1
        while self.nidle > MAX_IDLE:
            oldest = min(self.idle, key=lambda k: self.idle[k][0].idle_since)
            workers = self.idle[oldest]
            self.retire(workers.pop(0))
            if not workers:
                del self.idle[oldest]
            self.nidle -= 1

    def retire(self, worker: Worker):
        """Closing its socket tells the worker to exit; the loop reaps it."""
        worker.sock.close()

    def tick(self):
        now = time.monotonic()
        for key in list(self.idle):
            workers = self.idle[key]
            while workers and now - workers[0].idle_since > IDLE_EXIT:
                self.retire(workers.pop(0))
                self.nidle -= 1
            if not workers:
                del self.idle[key]


STOPS = (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT)   # a worker's stops


def worker_main(sock: socket.socket, setup, deliver, arg, spare=None) -> int:
    """In a worker child: setup(arg), then deliveries until told to go.
    spare: what the deliveries make ahead of time (local_deliver.Spare:
    prepare() after each answer, never raising; count() of descriptors
    it holds; release() when the worker goes), or None."""
    try:
        return _worker_loop(sock, setup, deliver, arg, spare)
    finally:
        if spare is not None:
            try:
                spare.release()
            except Exception:
                pass


def _worker_loop(sock: socket.socket, setup, deliver, arg, spare) -> int:
    failed = setup(arg) if setup is not None else 0
    if failed:
        # The report for its first delivery, as a child would have exited.
        try:
            sock.recv(JOB_MAX)
            sock.sendall(ANSWER.pack(failed, 0))
        except OSError:
            pass
        return failed
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    os.chdir('/')
    baseline = prefork.open_fds()
    fdsize = array.array('i').itemsize
    waiting = [False]
    if spare is not None:
        # Stopped while it waits (a service manager's TERM to the whole
        # group, ^C), the worker lets its spare go first; in a delivery
        # the signal ends it as it always did.
        def stop(signum, frame):
            if waiting[0]:
                raise SystemExit(0)
            _signal.signal(signum, _signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        for sig in STOPS:
            _signal.signal(sig, stop)
    while True:
        waiting[0] = True
        try:
            msg, ancdata, _, _ = sock.recvmsg(JOB_MAX, socket.CMSG_SPACE(2 * fdsize))
        except InterruptedError:
            continue
        finally:
            waiting[0] = False
        fds = array.array('i')
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fdsize])
        if not msg:
            return 0                    # told to go
        if len(fds) != 2:
            return 111
        os.dup2(fds[0], 0)
        os.dup2(fds[1], 1)
        os.dup2(fds[1], 2)
        os.close(fds[0])
        os.close(fds[1])
        code = deliver(msg.split(b'\0'))
        _signal.alarm(0)
        _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)    # (no enums: 30 us less)
        for fd in (0, 1, 2):
            os.dup2(null, fd)           # the report pipe's end of file
        os.chdir('/')
        fds = prefork.open_fds()
        if fds >= 0 and spare is not None:
            fds -= spare.count()
        keep = fds == baseline
        sock.sendall(ANSWER.pack(code, keep))
        if not keep:
            return 0
        if spare is not None:
            # A stop while the spare is made waits for it to be made (or
            # not), then comes as one in the wait, which lets it go: a
            # TERM just after its file appeared killed the worker and
            # left the file (a test saw it once in about 30 runs).
            _signal.pthread_sigmask(_signal.SIG_BLOCK, STOPS)
            try:
                spare.prepare()         # (never raises)
            finally:
                waiting[0] = True
                _signal.pthread_sigmask(_signal.SIG_UNBLOCK, STOPS)


def fresh_child(title: str, keep=()):
    """In a child forked from this loop: its own process title, a fresh
    process's signals, and no descriptor of the parent's but those in
    keep (moved to 3, 4, ..., returned in that order); fds 0-2 on
    /dev/null."""
    gc.freeze()         # the parent's objects are never ours to collect
    proctitle.set_title(title)
    fresh_signals()
    # The parent's others closed first: at the descriptor limit (a kept
    # socketpair at its last two numbers) there was no number free above
    # them, and the dup2 there failed ("qmail-local crashed").  Then each
    # kept one copied to the lowest free number from 3 on (each above the
    # last, so at or above its place among 3, 4, ...; not 0 to 2, which
    # a parent may have closed) and put down in its place: no copy is
    # clobbered before it is moved.
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 16)
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in keep]
    out = [fd if fd == 3 + i else os.dup2(fd, 3 + i, inheritable=False)
           for i, fd in enumerate(moved)]
    os.closerange(3 + len(out), 1 << 16)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    return out
