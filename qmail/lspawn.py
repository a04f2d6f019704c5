"""qmail-lspawn: run local deliveries for qmail-send.

Usage:    qmail-lspawn defaultdelivery
Runs as:  root (the only long-running root process), started by
          qmail-start; cwd HOME/queue/mess.
Reads:    fd 0, qmail-send's delivery commands (see qmail.lib.spawn);
          HOME/users/cdb; the passwd database through qmail-getpw's rules,
          asked of a long-lived helper running as qmailp:nofiles (an
          answer serves the same address again for up to PW_TTL, 1 s,
          while /etc/passwd is unchanged: PwAnswers).
Writes:   fd 1, one report per delivery: K, Z or D, qmail-local's text.
Runs:     each delivery as the user in charge of the address (nughde),
          with its gid as the only group, then its uid (never root:
          QLX_ROOT; become()),
          through qmail-local's main() with qmail-local's argv, in a
          delivery worker: a child forked from this process, so the code
          is loaded, that took on the user once and then runs up to
          MAX_USE deliveries for that same user, one at a time.  A worker
          gets each delivery's message and report pipe as descriptors
          over its socket and answers with qmail-local's exit code; it
          never serves another user, and it retires after spawn.IDLE_EXIT
          seconds unused, after leaving anything open, or when told.
          So a user who just had mail has a process for a while ("qmail-local
          USER", up to IDLE_EXIT, 30 s, idle), where qmail's ended with
          each delivery: userdel and usermod refuse the user until it is
          gone ("user is currently used by process"); wait, or kill it,
          which costs nothing when it is idle and a retry when not.  A
          worker that dies mid-delivery is reported as a crash (Z, so
          the delivery is retried), as a crashed qmail-local would be.
          While it waits, a worker whose last two deliveries went to one
          maildir holds the next one's file in its tmp/, made ahead
          (local_deliver.Spare), and removes it when it goes.
Args:     qmail-lspawn defaultdelivery (passed to qmail-local).
Exits:    0 when qmail-send is gone and deliveries are done; 100 usage.
Trusts:   qmail-send for the command framing; the message file only if
          owned by qmailq; the qmailp helper for nothing but a record
          that must parse.
See:      qmail-lspawn(8), qmail-getpw(8), qmail-users(5), qlx.h.
"""

import collections
import os
import signal
import struct
import sys
import time

from qmail.lib import auto, control, proctitle, spawn, users
from qmail.lib.qlx import QLX_SYS, QLX_ROOT, QLX_USAGE, REPORTS, Qlx

TEMPORARY_CODES = (111, 71, 74, 75)
GETPW_MAX = 1 << 17       # a question or record longer than this is garbage:
                          # above a delivery's arguments (spawn.JOB_MAX), as
                          # the alias user's record holds the local part whole
GETPW_TIMEOUT = 60        # seconds a qmailp helper may take to answer
GETPW_HELPERS = 4         # helpers answering at once (each one question)


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


def become(n: users.Nughde):
    """The user's gid, then uid; no supplementary group but the gid, as
    qmail-lspawn(8) says (and qmail's prot_gid does): users/assign's
    user field is free text, and a name's groups in /etc/group are not
    the uid's to have."""
    os.setgroups([n.gid])
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


class Helper:
    """One qmailp helper process, answering one question at a time."""
    __slots__ = ('pid', 'rfd', 'wfd', 'buf', 'then', 'since')

    def __init__(self, pid, rfd, wfd):
        self.pid, self.rfd, self.wfd = pid, rfd, wfd
        self.buf = b''
        self.then = None        # the question's then(), while it has one
        self.since = 0.0        # when it was asked


class Getpw:
    """The helpers, seen from qmail-lspawn: ask(local, then) queues a
    question; then(nughde or Qlx) runs when its answer comes.  Up to
    GETPW_HELPERS helpers answer at once, each one question at a time,
    started as questions wait: a lookup that hangs (a home on an NFS
    server that is down) holds its own helper only, not every lookup
    behind it.  A helper that dies or takes over GETPW_TIMEOUT fails its
    question (QLX_SYS, temporary) and goes; the others go on."""

    def __init__(self, spawner):
        self.spawner = spawner
        self.idle = []                        # Helpers without a question
        self.busy = {}                        # rfd -> Helper with one
        self.waiting = collections.deque()    # (local, then) for the next free

    def start(self) -> Helper:
        """Fork a helper; raises OSError (nothing left open)."""
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
                rfd, wfd = spawn.fresh_child('qmail-getpw', (to_r, from_w))
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
        helper = Helper(pid, from_r, to_w)
        self.spawner.watch[from_r] = lambda: self.readable(helper)
        return helper

    def ask(self, local: bytes, then):
        self.waiting.append((local.split(b'\0', 1)[0], then))
        self.dispatch()

    def dispatch(self):
        """Questions that wait, to helpers that are free (or new)."""
        while self.waiting:
            if self.idle:
                helper = self.idle.pop()
            elif len(self.busy) < GETPW_HELPERS:
                try:
                    helper = self.start()
                except OSError:
                    if self.busy:
                        return          # asked again when one is free
                    self.fail_waiting('unable to start the qmail-getpw helper')
                    return
            else:
                return
            local, then = self.waiting.popleft()
            request = local + b'\0'
            try:
                if os.write(helper.wfd, request) != len(request):
                    raise BlockingIOError
            except OSError:
                self.drop(helper)
                then(Qlx(QLX_SYS, 'qmail-getpw helper not answering'))
                continue
            helper.then, helper.since = then, time.monotonic()
            self.busy[helper.rfd] = helper

    def readable(self, helper: Helper):
        try:
            chunk = os.read(helper.rfd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b''
        if not chunk:
            return self.drop(helper, 'qmail-getpw crashed')
        helper.buf += chunk
        if len(helper.buf) < GETPW_ANSWER.size:
            return
        code, length = GETPW_ANSWER.unpack_from(helper.buf)
        if length > GETPW_MAX or helper.then is None \
                or len(helper.buf) > GETPW_ANSWER.size + length:
            return self.drop(helper, 'qmail-getpw helper out of step')
        if len(helper.buf) < GETPW_ANSWER.size + length:
            return
        record = helper.buf[GETPW_ANSWER.size:]
        then, helper.then, helper.buf = helper.then, None, b''
        del self.busy[helper.rfd]
        self.idle.append(helper)
        if code:
            then(Qlx(code, 'qmail-getpw failed'))
        else:
            try:
                then(users.parse_nughde(record))
            except Qlx as e:
                then(e)
        self.dispatch()

    def tick(self):
        """A helper asked GETPW_TIMEOUT seconds ago and still silent is
        given up, its question failed; the others' go on."""
        now = time.monotonic()
        for helper in list(self.busy.values()):
            if now - helper.since > GETPW_TIMEOUT:
                self.drop(helper, 'qmail-getpw timed out')

    def drop(self, helper: Helper, why: str = None):
        """The helper goes (killed if alive); its question, if any, fails."""
        try:
            # Not reaped yet (alive, or a zombie whose pid cannot have
            # been reused): only then is the pid still the helper's.
            if os.waitpid(helper.pid, os.WNOHANG)[0] == 0:
                os.kill(helper.pid, signal.SIGKILL)
        except OSError:
            pass
        self.spawner.watch.pop(helper.rfd, None)
        self.busy.pop(helper.rfd, None)
        if helper in self.idle:
            self.idle.remove(helper)
        os.close(helper.rfd)
        os.close(helper.wfd)
        then, helper.then = helper.then, None
        if then is not None:
            then(Qlx(QLX_SYS, why or 'qmail-getpw helper gone'))
        self.dispatch()

    def fail_waiting(self, why: str):
        waiting, self.waiting = self.waiting, collections.deque()
        for _, then in waiting:
            then(Qlx(QLX_SYS, why))


# ---- delivery workers ----------------------------------------------------

def worker_setup(n: users.Nughde) -> int:
    """In a new worker: become the user; 0, or the code of the failure."""
    try:
        become(n)
    except (OSError, ValueError, OverflowError):
        return QLX_USAGE
    if os.getuid() == 0 or os.geteuid() == 0:
        return QLX_ROOT
    return 0


def worker_deliver(fields) -> int:
    """One delivery in a worker: qmail-local with these arguments."""
    from qmail import local as qmail_local, local_deliver
    local_deliver.FROM_QUEUE = True         # fd 0 is the queue's mess file
    return qmail_local.main(list(fields))      # bytes, as parse_args wants them


def worker_spare():
    """The tmp/ file a worker makes ahead for its next maildir delivery."""
    from qmail import local_deliver
    return local_deliver.SPARE


PW_TTL = 1.0            # seconds a helper's answer may serve again
PW_MAX = 4096           # answers kept at most
PASSWD = '/etc/passwd'


def file_stamp(path):
    """What changes when path is written or replaced (None: missing)."""
    try:
        return control.stamp(os.stat(path))
    except OSError:
        return None


class PwAnswers:
    """The qmailp helper's answers, each used again for its local part
    for up to PW_TTL seconds while /etc/passwd is the same file, unchanged
    since before the question: a delivery after another to the same
    address then wakes no helper (at one message at a time, 0.5 ms of
    latency).  What else an answer rests on (the home's owner, which the
    helper checked; a passwd source other than files, a home made for a
    longer user name, the alias fallback) is seen again within PW_TTL,
    as nscd's cache would have it much later.  Users' homes are never
    looked at here (root's loop, serving every user: one home on a hung
    NFS server would stop all local delivery).  Failures are never kept,
    nor an answer that fell back to the alias user (no such user, or a
    home not the user's: useradd writes /etc/passwd before it makes the
    home, and a message in between made the next second's mail to that
    user bounce, where qmail-getpw, asked each time, delivered it)."""

    def __init__(self, passwd: str = PASSWD, ttl: float = PW_TTL, clock=time.monotonic):
        self.passwd, self.ttl, self.clock = passwd, ttl, clock
        self.answers = {}       # local -> (Nughde, time asked, passwd stamp)

    def get(self, local: bytes):
        got = self.answers.get(local)
        if got is None:
            return None
        n, asked, stamp = got
        if self.clock() - asked > self.ttl or file_stamp(self.passwd) != stamp:
            del self.answers[local]
            return None
        return n

    def asking(self):
        """(time, passwd stamp) before a question: an answer is trusted
        only as of then."""
        return self.clock(), file_stamp(self.passwd)

    def put(self, local: bytes, n, asked):
        if asked[1] is None or fell_back(local, n):
            return
        # Oldest first (a refreshed answer moves to the end): those past
        # their time go now, not when the same address comes again.
        answers = self.answers
        answers.pop(local, None)
        now = self.clock()
        while answers:
            oldest = next(iter(answers))
            if now - answers[oldest][1] <= self.ttl:
                break
            del answers[oldest]
        if len(answers) >= PW_MAX:
            answers.clear()
        answers[local] = (n, asked[0], asked[1])


def fell_back(local: bytes, n) -> bool:
    """Did qmail-getpw answer local with the alias user's catch-all
    (qmail-getpw.c's fallback: ext the whole local part after a '-')?"""
    return n.dash == b'-' and n.ext == local and n.user == auto.USER_ALIAS.encode()


class Deliveries:
    """qmail-lspawn's start(): users/cdb here, the passwd rules in the
    qmailp helper (its answers kept briefly: PwAnswers), the delivery in
    a worker of the user in charge."""

    def __init__(self, spawner, aliasempty: str):
        self.spawner = spawner
        self.aliasempty = aliasempty
        self.getpw = Getpw(spawner)
        self.pw_answers = PwAnswers()
        self.workers = spawn.Workers(spawner, worker_setup, worker_deliver, worker_spare)
        spawner.tick = self.tick

    def tick(self):
        self.getpw.tick()
        self.workers.tick()

    def start(self, fdmess, fdout, sender, recip, at, delnum):
        local = recip[:at].split(b'\0', 1)[0]
        if not local:
            return spawn.Done(0)                 # <>: nothing to deliver
        try:
            n = users.nughde_get(local, users.cdb_path(auto.QMAIL), lambda _: None)
        except Qlx as e:
            return spawn.Done(e.code << 8)
        job = (sender, recip, at, delnum, local)
        if n is None:
            n = self.pw_answers.get(local)
        if n is not None:
            return self.dispatch(n, os.dup(fdmess), job)
        held = os.dup(fdmess)                    # until the helper answers
        asked = self.pw_answers.asking()

        def then(answer):
            if isinstance(answer, Qlx):
                os.close(held)
                self.spawner.finish(delnum, answer.code << 8)
                return
            self.pw_answers.put(local, answer, asked)
            try:
                got = self.dispatch(answer, held, job)
            except OSError:                  # no fork, no socketpair: later
                got = spawn.Done(QLX_SYS << 8)
            if isinstance(got, spawn.Done):
                self.spawner.finish(delnum, got.wstat)
        self.getpw.ask(local, then)
        return None

    def dispatch(self, n: users.Nughde, fdmess: int, job):
        """Hand the delivery to a worker of user n; fdmess is ours to close."""
        sender, recip, at, delnum, local = job
        try:
            if n.uid == 0:
                return spawn.Done(QLX_ROOT << 8)
            argv = ['--', n.user, n.home, local, n.dash, n.ext, recip[at + 1:],
                    sender, self.aliasempty]
            return self.workers.run((n.uid, n.gid, n.user), n,
                                    'qmail-local ' + os.fsdecode(n.user),
                                    argv, fdmess, delnum)
        finally:
            os.close(fdmess)


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
    proctitle.set_title('qmail-lspawn ' + ' '.join(sys.argv[1:2]))
    try:
        code = main()
    except Exception:
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
