"""qmail-lspawn: run local deliveries for qmail-send.

Runs as:  root (the only long-running root process), started by
          qmail-start; cwd HOME/queue/mess.
Reads:    fd 0, qmail-send's delivery commands (see qmail.lib.spawn);
          HOME/users/cdb; the passwd database through qmail-getpw's rules,
          asked of a long-lived helper running as qmailp:nofiles.
Writes:   fd 1, one report per delivery: K, Z or D, qmail-local's text.
Runs:     each delivery as the user in charge of the address (nughde),
          with that user's groups, gid and uid (never root: QLX_ROOT),
          through qmail-local's main() with qmail-local's argv, in a
          delivery worker: a child forked from this process, so the code
          is loaded, that took on the user once and then runs up to
          MAX_USE deliveries for that same user, one at a time.  A worker
          gets each delivery's message and report pipe as descriptors
          over its socket and answers with qmail-local's exit code; it
          never serves another user, and it retires after IDLE_EXIT
          seconds unused, after leaving anything open, or when told.  A
          worker that dies mid-delivery is reported as a crash (Z, so
          the delivery is retried), as a crashed qmail-local would be.
Args:     qmail-lspawn defaultdelivery (passed to qmail-local).
Exits:    0 when qmail-send is gone and deliveries are done; 100 usage.
Trusts:   qmail-send for the command framing; the message file only if
          owned by qmailq; the qmailp helper for nothing but a record
          that must parse.
See:      qmail-lspawn(8), qmail-getpw(8), qmail-users(5), qlx.h.
"""

import array
import collections
import os
import signal
import socket
import struct
import sys
import time

from qmail.lib import auto, spawn, users
from qmail.lib.qlx import QLX_SYS, QLX_ROOT, QLX_USAGE, REPORTS, Qlx

TEMPORARY_CODES = (111, 71, 74, 75)
GETPW_MAX = 4096          # a nughde record longer than this is garbage
GETPW_TIMEOUT = 60        # seconds the qmailp helper may take to answer
MAX_USE = 100             # deliveries a worker runs before it retires
IDLE_EXIT = 30            # seconds an idle worker is kept
MAX_IDLE = 20             # idle workers kept, all users together
JOB_MAX = 65536           # a delivery's argv, as the worker receives it
ANSWER = struct.Struct('<iB')      # qmail-local's exit code, keep-me flag
CRASHED = signal.SIGKILL           # a wstat saying "killed by a signal"


def report(wstat: int, output: bytes) -> bytes:
    """qmail-local's exit status and output as a K/Z/D report."""
    if os.WIFSIGNALED(wstat):
        return b'Zqmail-local crashed.\n'
    code = os.WEXITSTATUS(wstat)
    if code in REPORTS:
        letter, text = REPORTS[code]
        return (letter + text + '\n').encode()
    if code in TEMPORARY_CODES:
        letter = b'Z'
    elif code == 0:
        letter = b'K'
    else:
        letter = b'D'
    return letter + output.split(b'\0', 1)[0]


def fresh_child(title: str, keep=()):
    """In a child forked from this loop: its own process title, a fresh
    process's signals, and no descriptor of the parent's but those in
    keep (moved to 3, 4, ..., returned in that order); fds 0-2 on
    /dev/null."""
    import gc
    gc.freeze()         # the parent's objects are never ours to collect
    try:
        from setproctitle import setproctitle
        setproctitle(title)
    except ImportError:
        pass
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGTERM, signal.SIGHUP,
                signal.SIGALRM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    # Above every fd we may hold, then down to 3, 4, ...: no clobbering.
    top = max(list(keep) + [2]) + 1
    moved = [os.dup2(fd, top + i, inheritable=False) for i, fd in enumerate(keep)]
    out = [os.dup2(fd, 3 + i, inheritable=False) for i, fd in enumerate(moved)]
    os.closerange(3 + len(out), 1 << 16)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    return out


def become(n: users.Nughde):
    """The user's supplementary groups, gid, then uid."""
    name = os.fsdecode(n.user)
    try:
        groups = os.getgrouplist(name, n.gid)
    except OSError:
        groups = [n.gid]
    os.setgroups(groups)
    os.setgid(n.gid)
    os.setuid(n.uid)


# ---- the qmailp helper: qmail-getpw, asked over a pipe -------------------

GETPW_ANSWER = struct.Struct('<BI')     # exit code, record length


def getpw_helper(rfd: int, wfd: int):
    """In the helper child, as qmailp: for each NUL-terminated local part
    read, qmail-getpw's exit code and record (empty unless 0)."""
    from qmail import getpw
    buf = b''
    while True:
        try:
            chunk = os.read(rfd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            return 0
        buf += chunk
        while b'\0' in buf:
            local, buf = buf.split(b'\0', 1)
            try:
                record = users.format_nughde(getpw.getpw(local, getpw.system_lookup, os.stat))
                code = 0
            except Qlx as e:
                record, code = b'', e.code
            except Exception:
                record, code = b'', QLX_SYS
            out = GETPW_ANSWER.pack(code, len(record)) + record
            while out:
                out = out[os.write(wfd, out):]
        if len(buf) > GETPW_MAX:
            return QLX_USAGE


class Getpw:
    """The helper, seen from qmail-lspawn: ask(local, then) queues a
    question; then(nughde or Qlx) runs when the answer comes, in order.
    A helper that dies or takes over GETPW_TIMEOUT fails its questions
    (QLX_SYS, temporary) and is replaced at the next question."""

    def __init__(self, spawner):
        self.spawner = spawner
        self.pid = None
        self.rfd = self.wfd = -1
        self.pending = collections.deque()    # (asked at, then)
        self.progress = 0.0                   # last answer, or first question
        self.buf = b''

    def start(self):
        """Fork the helper; raises OSError (nothing left open)."""
        to_r, to_w = os.pipe()
        try:
            from_r, from_w = os.pipe()
        except OSError:
            os.close(to_r)
            os.close(to_w)
            raise
        try:
            pid = os.fork()
        except OSError:
            for fd in (to_r, to_w, from_r, from_w):
                os.close(fd)
            raise
        if pid == 0:
            code = QLX_USAGE
            try:
                rfd, wfd = fresh_child('qmail-getpw', (to_r, from_w))
                os.setgroups([auto.gid(auto.GROUP_NOFILES)])
                os.setgid(auto.gid(auto.GROUP_NOFILES))
                os.setuid(auto.uid(auto.USER_PASSWD))
                code = getpw_helper(rfd, wfd)
            except BaseException:
                code = QLX_USAGE
            finally:
                os._exit(code)
        os.close(to_r)
        os.close(from_w)
        os.set_blocking(to_w, False)
        os.set_blocking(from_r, False)
        self.pid, self.wfd, self.rfd = pid, to_w, from_r
        self.spawner.watch[from_r] = self.readable

    def ask(self, local: bytes, then):
        if self.pid is None:
            try:
                self.start()
            except OSError:
                then(Qlx(QLX_SYS, 'unable to start the qmail-getpw helper'))
                return
        try:
            request = local.split(b'\0', 1)[0] + b'\0'
            if os.write(self.wfd, request) != len(request):
                raise BlockingIOError
        except OSError:
            self.fail('qmail-getpw helper not answering')
            then(Qlx(QLX_SYS, 'qmail-getpw helper not answering'))
            return
        if not self.pending:
            self.progress = time.monotonic()
        self.pending.append((time.monotonic(), then))

    def readable(self):
        try:
            chunk = os.read(self.rfd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b''
        if not chunk:
            return self.fail('qmail-getpw crashed')
        self.buf += chunk
        while len(self.buf) >= GETPW_ANSWER.size:
            code, length = GETPW_ANSWER.unpack_from(self.buf)
            if length > GETPW_MAX or not self.pending:
                return self.fail('qmail-getpw helper out of step')
            if len(self.buf) < GETPW_ANSWER.size + length:
                return
            record = self.buf[GETPW_ANSWER.size:GETPW_ANSWER.size + length]
            self.buf = self.buf[GETPW_ANSWER.size + length:]
            _, then = self.pending.popleft()
            self.progress = time.monotonic()
            if code:
                then(Qlx(code, 'qmail-getpw failed'))
                continue
            try:
                then(users.parse_nughde(record))
            except Qlx as e:
                then(e)

    def tick(self):
        """A helper that answered nothing for GETPW_TIMEOUT seconds while
        asked (one lookup that long, not a long queue) is given up."""
        if self.pending and time.monotonic() - self.progress > GETPW_TIMEOUT:
            self.fail('qmail-getpw timed out')

    def fail(self, why: str):
        if self.pid is not None:
            try:
                # Not reaped yet (alive, or a zombie whose pid cannot have
                # been reused): only then is the pid still the helper's.
                if os.waitpid(self.pid, os.WNOHANG)[0] == 0:
                    os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
            self.spawner.watch.pop(self.rfd, None)
            os.close(self.rfd)
            os.close(self.wfd)
            self.pid = None
            self.rfd = self.wfd = -1
            self.buf = b''
        pending, self.pending = self.pending, collections.deque()
        for _, then in pending:
            then(Qlx(QLX_SYS, why))


# ---- delivery workers ----------------------------------------------------

def worker_main(sock: socket.socket, n: users.Nughde) -> int:
    """In a worker child: become the user, then run deliveries."""
    from qmail import local as qmail_local
    from qmail.lib import prefork
    try:
        become(n)
        failed = QLX_ROOT if os.getuid() == 0 or os.geteuid() == 0 else 0
    except (OSError, ValueError, OverflowError):
        failed = QLX_USAGE
    if failed:
        # qmail-lspawn's report for its first delivery, as a child would
        # have exited: "Internal qmail-lspawn bug." or the root refusal.
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
    while True:
        try:
            msg, ancdata, _, _ = sock.recvmsg(JOB_MAX, socket.CMSG_SPACE(2 * fdsize))
        except InterruptedError:
            continue
        fds = array.array('i')
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fdsize])
        if not msg:
            return 0                    # told to go
        if len(fds) != 2:
            return QLX_USAGE
        os.dup2(fds[0], 0)
        os.dup2(fds[1], 1)
        os.dup2(fds[1], 2)
        os.close(fds[0])
        os.close(fds[1])
        argv = [os.fsdecode(a) for a in msg.split(b'\0')]
        code = qmail_local.main(argv)
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        for fd in (0, 1, 2):
            os.dup2(null, fd)           # the report pipe's end of file
        os.chdir('/')
        keep = prefork.open_fds() == baseline
        sock.sendall(ANSWER.pack(code, keep))
        if not keep:
            return 0


class Worker:
    __slots__ = ('pid', 'sock', 'key', 'uses', 'idle_since', 'delnum')

    def __init__(self, pid, sock, key):
        self.pid, self.sock, self.key = pid, sock, key
        self.uses = 0
        self.idle_since = time.monotonic()
        self.delnum = None


class Deliveries:
    """qmail-lspawn's start(): users/cdb here, the passwd rules in the
    qmailp helper, the delivery in a worker of the user in charge."""

    def __init__(self, spawner, aliasempty: str):
        self.spawner = spawner
        self.aliasempty = aliasempty
        self.getpw = Getpw(spawner)
        self.idle = collections.OrderedDict()     # key -> [Worker], oldest first
        self.nidle = 0
        spawner.tick = self.tick

    def start(self, fdmess, fdout, sender, recip, at, delnum):
        local = recip[:at].split(b'\0', 1)[0]
        if not local:
            return spawn.Done(0)                 # <>: nothing to deliver
        try:
            n = users.nughde_get(local, users.cdb_path(auto.QMAIL), lambda _: None)
        except Qlx as e:
            return spawn.Done(e.code << 8)
        job = (sender, recip, at, delnum, local)
        if n is not None:
            return self.dispatch(n, os.dup(fdmess), job, now=True)
        held = os.dup(fdmess)                    # until the helper answers

        def then(answer):
            if isinstance(answer, Qlx):
                os.close(held)
                self.spawner.finish(delnum, answer.code << 8)
                return
            try:
                got = self.dispatch(answer, held, job, now=False)
            except OSError:                  # no fork, no socketpair: later
                got = spawn.Done(QLX_SYS << 8)
            if isinstance(got, spawn.Done):
                self.spawner.finish(delnum, got.wstat)
        self.getpw.ask(local, then)
        return None

    def dispatch(self, n: users.Nughde, fdmess: int, job, now: bool):
        """Hand the delivery to a worker; fdmess is ours to close."""
        sender, recip, at, delnum, local = job
        try:
            if n.uid == 0:
                return spawn.Done(QLX_ROOT << 8)
            slot = self.spawner.slots[delnum]
            argv = ['--', n.user, n.home, local, n.dash, n.ext, recip[at + 1:],
                    sender, self.aliasempty]
            msg = b'\0'.join(a if isinstance(a, bytes) else os.fsencode(a) for a in argv)
            if len(msg) > JOB_MAX:
                return spawn.Done(QLX_USAGE << 8)
            for attempt in (1, 2):
                worker = self.take((n.uid, n.gid, n.user)) or self.fork_worker(n)
                try:
                    worker.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                 array.array('i', [fdmess, slot.fdout]))])
                    break
                except OSError:
                    self.retire(worker)          # gone while idle: another
                    if attempt == 2:
                        return spawn.Done(CRASHED)
            worker.delnum = delnum
            self.spawner.watch[worker.sock.fileno()] = lambda: self.answered(worker)
            return None
        finally:
            os.close(fdmess)

    def take(self, key):
        workers = self.idle.get(key)
        if not workers:
            return None
        worker = workers.pop()
        if not workers:
            del self.idle[key]
        self.nidle -= 1
        return worker

    def fork_worker(self, n: users.Nughde) -> Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            code = QLX_USAGE
            try:
                fd, = fresh_child('qmail-local ' + os.fsdecode(n.user), (theirs.fileno(),))
                code = worker_main(socket.socket(fileno=fd), n)
            except BaseException:
                code = QLX_USAGE
            finally:
                os._exit(code)
        theirs.close()
        ours.setblocking(False)     # a stale poll result must not block us
        return Worker(pid, ours, (n.uid, n.gid, n.user))

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
        if not keep or worker.uses >= MAX_USE:
            self.retire(worker)
            return
        worker.idle_since = time.monotonic()
        self.idle.setdefault(worker.key, []).append(worker)
        self.idle.move_to_end(worker.key)
        self.nidle += 1
        while self.nidle > MAX_IDLE:
            oldest = next(iter(self.idle))
            self.retire(self.take(oldest))

    def retire(self, worker: Worker):
        """Closing its socket tells the worker to exit; the loop reaps it."""
        worker.sock.close()

    def tick(self):
        self.getpw.tick()
        now = time.monotonic()
        for key in list(self.idle):
            workers = self.idle[key]
            while workers and now - workers[0].idle_since > IDLE_EXIT:
                self.retire(workers.pop(0))
                self.nidle -= 1
            if not workers:
                del self.idle[key]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        return 100
    aliasempty = argv[0]
    try:
        os.chdir(auto.QMAIL)
        os.chdir('queue/mess')
    except OSError:
        return 111
    import qmail.local          # loaded once here, used by every worker  # noqa: F401
    import qmail.getpw          # likewise for the qmailp helper  # noqa: F401
    from qmail.lib import prefork  # noqa: F401
    spawner = spawn.Spawner(None, report, auto.uid(auto.USER_QUEUE), truncreport=3000)
    spawner.start = Deliveries(spawner, aliasempty).start
    return spawner.loop()


def run():
    try:
        from setproctitle import setproctitle
        setproctitle('qmail-lspawn ' + ' '.join(sys.argv[1:2]))
    except ImportError:
        pass
    try:
        code = main()
    except Exception:
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
