"""qmail-send: deliver the messages in the queue.

Runs as:  qmails, group qmail, started by qmail-start; cwd HOME/queue.
Reads:    todo/ (new messages, woken by lock/trigger); info/, local/,
          remote/, bounce/, mess/; control/ at start and on SIGHUP.
Writes:   fd 0, the activity record (qmail-log(5)); commands to
          qmail-lspawn on fd 1, qmail-rspawn on fd 3, qmail-clean on fd 5;
          reads their answers on fds 2, 4, 6.  Creates info/, local/,
          remote/ from todo/ (preprocessing), marks recipients done in
          local/ and remote/, appends to bounce/, injects bounces through
          qmail-queue, and asks qmail-clean to remove todo/ and mess/.
Commands: lines on the FIFO lock/command (qmail.lib.sendcmd: root's and
          qmails's only): hold a message (H), release it (U), run it
          now (N), read its recipient lists again (R).  A held message
          (HELD_BIT on its local/ or remote/, read at each pass it would
          start, at start, and for the held at an ALRM) starts no
          delivery until released; "hold msg" and "release msg" in the
          log.
Signals:  ALRM retry everything now (but held messages); HUP reread locals, virtualdomains
          (and the other controls but concurrencylocal and
          concurrencyremote, which a restart takes, as qmail's); TERM
          (and INT) start no delivery, finish those under way, write
          what a full disk kept from being recorded (exit_begin), exit.
Exits:    0 after TERM; 111 cannot start (alert line in the log; control
          files that exist but cannot be read are waited for instead,
          qmail-log(5)).
Trusts:   the spawns' reports only as far as their framing: a report is
          at most REPORTMAX bytes and names a delivery slot in use.
See:      qmail-send(8), qmail-log(5), INTERNALS.md.

Durability beyond qmail 1.03: Linux needs directories fsynced.  Before
todo/ is removed the new info/, local/ and remote/ entries are made
durable; a recipient's D mark is fsynced before its job can finish
(and its recipient list go), and a bounce paragraph before its D mark,
so a crash never forgets a delivery's outcome once the job moved on,
nor a failure.  The marks are written the moment a delivery reports,
as qmail writes them (a killed qmail-send repeats only the deliveries
under way), and fsynced in the background.  The delivery that ends a
job is marked but not synced: the removal of the job's file, durable
before info/ goes, records it (a power cut before that delivers it
again, as one before a D mark's fsync would).

A new message's deliveries start as soon as its preprocessed files are
written, before they are durable; its jobs finish (and its recipient
lists go) only once they are and todo/ is gone.  A crash in between
leaves todo/: the next start preprocesses and delivers again, at worst
a second time (as a crash between a delivery and its D mark does).

Direct delivery, beyond qmail: a new message for one local recipient
(DIRECT_RCPT) is delivered straight from todo/, its recipient list kept
in memory: no info/ nor local/ is written, nor any D mark.  Delivered to
all, it is removed (todo/ durably first, then mess/).  A deferral or a
failure (or qmail-send stopping) spills it: its info/ and local/ are
written then, with the D marks of what was done, and it goes on as any
message.  Until then todo/ stays, so a crash delivers it again from the
start (at worst twice, as above; a maildir delivery finds its file there
and is not repeated): with one recipient that is the delivery under way,
which a crash may repeat in qmail too.  (With more, a recipient whose
delivery never ended, a .qmail program that hangs, kept the others'
successes in memory as long, and a crash then repeated them, an mbox or
program line's copy too.)  At most DIRECT_MAX such messages at once
(waiting for a delivery slot too: a spill costs more files and syncs
than the wait): those past that are preprocessed as usual, so a backlog
is queued as qmail queues it; none while concurrencylocal is 0.  Until
it is spilled or removed such a message is in todo/ only: qmail-qstat
counts it as not yet preprocessed and qmail-qread lists its recipients
as todo.

The loop does not wait for the disk: preprocessing, D marks, removing
finished jobs' files and messages' info/ are done by threads
(qmail.lib.background), each step's sequel back in the loop once the
step is durable; qmail-clean's answers are read as they come.
"""

import collections
import copy
import errno
import heapq
import math
import os
import select
import signal
import stat
import sys
import time

from qmail.lib import auto, background, control, durable, proctitle, sendcmd
from qmail.lib.date822 import date822
from qmail.lib.qfile import parse_messid, qfn
from qmail.lib.qqtalk import QueueClient, queue_program
from qmail import send_rules as rules

SLEEP_TODO = 1500         # scan todo/ every 25 minutes even if not triggered
TODO_BATCH = 32           # todo/ entries preprocessed with one round of syncing
FD_RESERVE = 128          # descriptors left for all but files awaiting their sync
FD_RESERVE_MIN = 24       # ... under a low limit: what qmail-send holds idle, and some
FILES_PER_MESSAGE = 3     # info/ and channel files a message holds open till synced
MARK_TROUBLE = 'warning: trouble marking %s; message will be delivered twice!\n'
PASS_STEPS = 200          # steps of a channel's pass per turn of the loop
SLEEP_FUZZ = 1            # slop on sleeps, against Zeno
SLEEP_FOREVER = 86400     # longest wait in poll()
QUEUED_PID = None         # qmail-queued's, when qmail-start forked it
SLEEP_CLEANUP = 76431     # between sweeps of mess/ for stale files
SLEEP_SYSFAIL = 123       # retry after a system failure
SLEEP_EXITSPILL = 10      # stopping: retry an unwritten spill (exit_begin)
OSSIFIED = 129600         # 36 hours: must exceed qmail-queue's DEATH (24 h)
CLOCK_STEP = 60           # the clock against the monotonic one: a step (watch_clock)
CLOCK_DOUBT = 3600        # after a step forward, no bounce for age (watch_clock)
REPORTMAX = 10000         # longest delivery report believed
SPAWN_MAX = 120           # conf-spawn: the spawns' slot limit
FRESH_MAX = 10000       # new messages whose first pass needs no reading back
FRESH_BYTES = 8 << 20   # and the bytes of their recipient lists, in all
DIRECT_RCPT = 1         # most local recipients of a message delivered direct:
                        # one, whose delivery a crash may repeat as qmail's
                        # would; with more, one that never ends (a .qmail
                        # program) kept the others' done in memory alone
DIRECT_MAX = 64         # most messages delivered direct at once
SYNC_WINDOW = 0.01      # seconds a batch of syncs waits for more (background.Lane)
BOUNCE_DAEMON_WAIT = 0.25   # seconds for qmail-queued to take a bounce, then bin/qmail-queue

CHANFDOUT = (1, 3)
CHANFDIN = (2, 4)
CHANDIR = ('local', 'remote')
TOCHAN = (' to local ', ' to remote ')
FDCLEAN_OUT, FDCLEAN_IN = 5, 6
LOGFD = 0


def log(text: str):
    """One write per line, straight to fd 0, as qmail's log1 flushes (a
    line held back would be lost with a killed qmail-send, and the lines
    are how an admin follows each message)."""
    data = text.encode('utf-8', 'replace')
    while data:
        try:
            n = os.write(LOGFD, data)
        except InterruptedError:
            continue
        except OSError:
            return
        data = data[n:]


def slurp(fn, limit: int = 0, want_stat: bool = False):
    """A queue file's bytes (the first limit of them, if limit), with
    its stat() if want_stat; OSError as open() would raise it.  Without
    open()'s buffered object (three system calls fewer per file)."""
    fd = os.open(fn, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        size = 0
        while not limit or size < limit:
            chunk = os.read(fd, limit - size if limit else 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b''.join(chunks)
        return (data, os.fstat(fd)) if want_stat else data
    finally:
        os.close(fd)


class Controls:
    """What qmail-send reads from control/."""

    def __init__(self, ctl: control.Controls):
        self.concurrency = [min(ctl.int('concurrencylocal', 10), SPAWN_MAX),
                            min(ctl.int('concurrencyremote', 20), SPAWN_MAX)]
        self.read_rest(ctl)
        self.routing = routing(ctl)

    def again(self, ctl: control.Controls):
        """SIGHUP: (the controls, [trouble, ...]).  As qmail's regetcontrols,
        locals and virtualdomains are taken whenever they can be read,
        else nothing changes (OSError or ValueError raised).  Beyond
        qmail the others are read too: percenthack and envnoathost, and
        then the rest, each group taken if all of it can be read, else
        kept, a trouble saying why.  The concurrency limits are not read:
        they stay as at start (the spawns' slot tables were sized then)."""
        locals_, virtual = routing_core(ctl)
        troubles = []
        try:
            percent, noathost = routing_more(ctl)
        except (OSError, ValueError) as e:
            troubles.append(e)
            percent, noathost = self.routing.percenthack, self.routing.envnoathost
        new = copy.copy(self)
        new.routing = rules.Routing(locals_, virtual, percent, noathost)
        rest = copy.copy(new)
        try:
            rest.read_rest(ctl)
        except (OSError, ValueError) as e:
            return new, troubles + [e]
        return rest, troubles

    def read_rest(self, ctl: control.Controls):
        """All but the concurrency limits and the routing."""
        self.lifetime = ctl.int('queuelifetime', 604800)
        self.bouncefrom = no_nul('bouncefrom', ctl.line('bouncefrom', b'MAILER-DAEMON'))
        self.bouncehost = no_nul('bouncehost', ctl.line('bouncehost', b'bouncehost',
                                                        flagme=True))
        dbhost = no_nul('doublebouncehost', ctl.line('doublebouncehost', b'doublebouncehost',
                                                     flagme=True))
        dbto = no_nul('doublebounceto', ctl.line('doublebounceto', b'postmaster'))
        # An empty line: double bounces are thrown away (control/README).
        self.doublebounceto = dbto + b'@' + dbhost if dbto else None
        self.bouncemaxbytes = ctl.int('bouncemaxbytes', 0)


def no_nul(name: str, value: bytes) -> bytes:
    """value, a control's that goes into queue files and envelopes, whose
    records a NUL ends: ValueError naming the file if it holds one (a
    NUL in envnoathost split every recipient it completed, and the
    message said "unknown record type" at each retry for good)."""
    if value is not None and b'\0' in value:
        raise ValueError('control/%s holds a NUL byte' % name)
    return value


def routing(ctl: control.Controls) -> rules.Routing:
    return rules.Routing(*routing_core(ctl), *routing_more(ctl))


def routing_core(ctl: control.Controls):
    """(locals, virtualdomains): what qmail-send's HUP rereads."""
    if ctl.me is None and not ctl.exists('locals'):
        raise OSError(errno.ENOENT, 'no control/locals and no control/me')
    virtual = ctl.lines('virtualdomains')
    for line in virtual:
        no_nul('virtualdomains', line)
    return ctl.lines('locals', flagme=True), virtual


def routing_more(ctl: control.Controls):
    """(percenthack, envnoathost): the rest of the routing."""
    return (ctl.lines('percenthack'),
            no_nul('envnoathost', ctl.line('envnoathost', b'envnoathost', flagme=True)))


class Job:
    """One pass of one message through one channel."""
    __slots__ = ('refs', 'id', 'channel', 'retry', 'sender', 'numtodo',
                 'flaghiteof', 'flagdying', 'unmarked', 'direct', 'moved')

    def __init__(self, messid, channel):
        self.unmarked = None    # the last D mark, unsynced: the file's removal records it
        self.direct = None      # a Direct: the message has no info/ nor local/
        self.refs = 1
        self.id = messid
        self.channel = channel
        self.retry = 0
        self.sender = b''
        self.numtodo = 0
        self.flaghiteof = False
        self.flagdying = False
        self.moved = 0          # Send.clock_back when retry was set

    def due(self, clock_back: int) -> int:
        """retry, moved back as far as the clock went back since it was set
        (Send.schedule_back: a delivery under way then)."""
        return self.retry - (clock_back - self.moved)


class Delivery:
    __slots__ = ('job', 'delid', 'mpos', 'recip')

    def __init__(self, job, delid, mpos, recip):
        self.job, self.delid, self.mpos, self.recip = job, delid, mpos, recip


class Pass:
    """The recipient list being read for one channel: the file's bytes
    and the offset of its next record, each record cut out as it is
    reached (as qmail reads it, a record at a time: a list post's
    hundreds of thousands of recipients cost their bytes, not an
    object each)."""
    __slots__ = ('job', 'data', 'pos')

    def __init__(self, job, data):
        self.job, self.data, self.pos = job, data, 0

    def peek(self):
        """(offset, record) of the next record, or None at the end."""
        end = self.data.find(b'\0', self.pos)
        if end == -1:
            return None
        return self.pos, self.data[self.pos:end]


class Direct:
    """A new message delivered straight from todo/ (Send.direct_max):
    its local/ recipient list (as preprocessing would have written it)
    and what became of each, in memory only."""
    __slots__ = ('data', 'sender', 'birth', 'marked', 'failed', 'job')

    def __init__(self, data, sender, birth):
        self.data, self.sender, self.birth = data, sender, birth
        self.marked = set()     # offsets of the records done (success or bounce)
        self.failed = False     # a failure: bounce/ has its paragraph
        self.job = None


def records(data: bytes):
    """The \\0-ended records of an envelope, one at a time (what follows
    the last \\0 is none)."""
    pos = 0
    while True:
        end = data.find(b'\0', pos)
        if end == -1:
            return
        yield data[pos:end]
        pos = end + 1


def todo_identity(fn, st=None):
    """(inode, ctime) of a todo/ file (st: its stat, if taken), or None
    if it cannot be looked at (then nothing holds it)."""
    if st is None:
        try:
            st = os.stat(fn)
        except OSError:
            return None
    return st.st_ino, st.st_ctime_ns


class Failed:
    """preprocess_write's answer for a todo/ it warned about: the
    identity of the file it read, to hold (Send.todo_held)."""
    __slots__ = ('identity',)

    def __init__(self, identity):
        self.identity = identity


def all_due(pq: list, when: int) -> list:
    """A (time, messid) heap with every entry due at when."""
    due = [(when, messid) for _, messid in pq]
    heapq.heapify(due)
    return due


class Send:
    inline = False              # crash tests: disk work done at once, in order
    direct_max = 0              # messages delivered direct at once (main: DIRECT_MAX)
    direct_rcpt = DIRECT_RCPT   # most local recipients of one (tests: more)

    def __init__(self, ctl: control.Controls, controls: Controls, split: int):
        self.ctl = ctl
        self.c = controls
        self.split = split
        self.recent = int(time.time())
        self.flagexitasap = False
        self.flagdying = False          # a partner is gone: no waiting to exit
        self.exitheard = False          # exitasap's first loop seen (exit_begin)
        self.flagrunasap = False
        self.flagreadasap = False
        self.flagchildasap = False      # a child ended: qmail-queued, perhaps
        self.queued_pid = QUEUED_PID    # until it is reaped
        self.flagspawnalive = [True, True]
        self.flagcleanalive = True
        self.concurrency = list(controls.concurrency)
        self.concurrencyused = [0, 0]
        self.dels = [[], []]
        self.comm_buf = [b'', b'']
        self.dline = [bytearray(), bytearray()]
        self.masterdelid = 1
        self.pqchan = [[], []]
        self.heldchan = [set(), set()]  # held messids (the mark on local/ or
                                        # remote/, sendcmd) waiting for release
        self.commandfd = -1             # lock/command (sendcmd), read and written
        self.commands = sendcmd.Reader()
        self.pqdone = []
        self.pqfail = []
        self.jobs_open = 0
        self.numjobs = 0
        self.passes = [None, None]
        self.tododir = None
        self.nexttodorun = self.recent
        self.triggerfd = -1
        self.trigger_warned = False     # lock/trigger is no FIFO: said once
        self.cleanupdir = None
        self.cleanuptime = self.recent
        self.clock_base = (time.time(), time.monotonic())
        self.clock_doubt_until = 0.0    # monotonic: a step forward's doubt
        self.clock_back = 0             # seconds the clock went back, in all
        self.reserve_fd = spare_descriptor()    # given up for a bounce's append
        self.notifier = None
        self.inotifyfd = -1
        self.bg = background.Background(self.inline)
        self.marking = background.Lane(self.bg, self.marks_disk, self.marks_synced)
        self.finishing = background.Lane(self.bg, self.jobs_unlink, self.jobs_unlinked,
                                         window=SYNC_WINDOW)
        self.removing = background.Lane(self.bg, self.infos_unlink, self.infos_unlinked)
        self.settling = background.Lane(self.bg, self.settle_sync, self.settle_synced,
                                        window=SYNC_WINDOW)
        self.tidying = background.Lane(self.bg, self.tidy_sync, lambda items, result: None,
                                       window=SYNC_WINDOW)
        self.lanes = (self.marking, self.finishing, self.removing, self.settling, self.tidying)
        self.settle_cap = settle_cap()
        self.clean_waiting = collections.deque()    # (requests, then)
        self.clean_buf = b''
        self.preprocessing = False      # a batch of todo/ being written
        self.unsettled = {}             # messid -> jobs waiting to finish
        self.todo_held = {}             # messid -> (when, identity): a todo/
                                        # that failed (with a warning), tried
                                        # again then or once it is another file
        self.freshbytes = 0             # the records' bytes in self.fresh
        self.fresh = {}                 # (channel, messid) -> (records,
                                        # sender, birth) of a new message
                                        # until its first pass reads them
        self.pqsettle = []              # (when, messid, chans): todo/ removal again
        self.pqrespill = []             # (when, messid): a spill to write again
        self.respills = {}              # messid -> (job, left) of a failed spill
        self.ending = set()             # messdone under way
        self.directs = {}               # messid -> Direct, delivered from todo/
        self.direct_room = 0            # how many more the batch written may take
        self.spilled = {}               # messid -> retry time, or None (all done):
                                        # a Direct's files on their way to disk

    # -- names ----------------------------------------------------------------
    def fn(self, d, messid):
        return qfn(d, messid, self.split)

    # -- clean ------------------------------------------------------------------
    def clean_request(self, requests, then=None):
        """Ask qmail-clean to remove files (todo/N: todo/ and intd/ of a
        preprocessed message; foop/N: all of a finished one).  Its answers,
        one byte per request and in order, are read in the loop
        (clean_read); then([True if removed]) runs once all of these are in."""
        if not self.flagcleanalive:
            if then is not None:
                then([False] * len(requests))
            return
        data = b''.join(r.encode() + b'\0' for r in requests)
        try:
            while data:
                data = data[os.write(FDCLEAN_OUT, data):]
        except OSError:
            self.cleandied()
            if then is not None:
                then([False] * len(requests))
            return
        self.clean_waiting.append((requests, then))

    def clean_read(self):
        """qmail-clean's answers that have come: each request's then()."""
        try:
            data = os.read(FDCLEAN_IN, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b''
        if not data:
            self.cleandied()
            return
        self.clean_buf += data
        while self.clean_waiting and len(self.clean_buf) >= len(self.clean_waiting[0][0]):
            requests, then = self.clean_waiting.popleft()
            answers = self.clean_buf[:len(requests)]
            self.clean_buf = self.clean_buf[len(requests):]
            oks = []
            for request, answer in zip(requests, answers):
                if answer != ord('+'):
                    log('warning: qmail-clean unable to clean up %s\n' % request)
                oks.append(answer == ord('+'))
            if then is not None:
                then(oks)

    def cleandied(self):
        """qmail-clean is gone (a failed write, or end of file): said once,
        however many ways it shows; its unanswered requests fail."""
        if self.flagcleanalive:
            log('alert: oh no! lost qmail-clean connection! dying...\n')
        self.flagcleanalive = False
        self.flagexitasap = self.flagdying = True
        waiting, self.clean_waiting = self.clean_waiting, collections.deque()
        for requests, then in waiting:
            if then is not None:
                then([False] * len(requests))

    def spawndied(self, c):
        if self.flagspawnalive[c]:
            log('alert: oh no! lost spawn connection! dying...\n')
        self.flagspawnalive[c] = False
        self.flagexitasap = self.flagdying = True

    # -- info -----------------------------------------------------------------
    def getinfo(self, messid):
        """(sender, birth) from info/, or None."""
        try:
            data, st = slurp(self.fn('info', messid), 2048, want_stat=True)
        except OSError:
            return None
        end = data.find(b'\0')
        if end == -1 or not data.startswith(b'F'):
            return None
        return data[1:end], int(st.st_mtime)

    # -- priority queues -----------------------------------------------------
    def pqadd(self, messid) -> int:
        """messid into the queues its files say; how many of its next
        tries lay beyond what the schedule gives (a clock since set back)
        and are due now."""
        fixed = 0
        fn = self.fn('info', messid)
        try:
            birth = int(os.stat(fn).st_mtime)
        except FileNotFoundError:
            return 0                    # someone yanking our chain
        except OSError:
            return self.pqadd_fail(fn, messid)
        fn = self.fn('todo', messid)
        try:
            os.stat(fn)
            return 0                    # preprocessing was interrupted: todo wins
        except FileNotFoundError:
            pass
        except OSError:
            return self.pqadd_fail(fn, messid)
        found = False
        for c in (0, 1):
            fn = self.fn(CHANDIR[c], messid)
            try:
                st = os.stat(fn)
            except FileNotFoundError:
                continue
            except OSError:
                self.pqadd_fail(fn, messid)
                return fixed
            found = True
            if st.st_mode & sendcmd.HELD_BIT:
                self.heldchan[c].add(messid)    # (its time is kept for nothing)
                continue
            due = int(st.st_mtime)
            if due > self.latest_due(birth, c):
                due = self.recent           # set by a clock since set back
                fixed += 1
            heapq.heappush(self.pqchan[c], (due, messid))
            found = True
        if not found:
            heapq.heappush(self.pqdone, (int(time.time()), messid))
        return fixed

    def latest_due(self, birth: int, c: int) -> int:
        """The furthest ahead a next try of a message born at birth can lie
        on a clock that never went back: the schedule's own (nextretry
        only grows with the time it is computed at), or a retry after
        trouble, with a minute's slack."""
        return max(rules.nextretry(birth, self.recent, c),
                   self.recent + SLEEP_SYSFAIL) + CLOCK_STEP

    def pqadd_fail(self, fn, messid) -> int:
        log('warning: unable to stat %s; will try again later\n' % fn)
        heapq.heappush(self.pqfail, (int(time.time()) + SLEEP_SYSFAIL, messid))
        return 0

    def pqstart(self):
        fixed = 0
        for i in range(self.split):
            d = 'info/%d' % i
            while True:
                try:
                    names = os.listdir(d)
                    break
                except OSError:
                    self.pausedir(d)
            for name in names:
                messid = parse_messid(name)
                if messid is not None:
                    fixed += self.pqadd(messid)
        if fixed:
            log('warning: %d deliveries were due further ahead than qmail waits '
                '(the clock was set back?); trying them now\n' % fixed)

    def pqfinish(self):
        """Record each waiting channel's next try in its file's mtime."""
        for c in (0, 1):
            for dt, messid in self.pqchan[c]:
                fn = self.fn(CHANDIR[c], messid)
                try:
                    os.utime(fn, (dt, dt))
                except OSError:
                    log('warning: unable to utime %s; message will be retried too soon\n' % fn)

    def pqrun(self):
        """ALRM: every job due now, every held todo/ and every spill that
        could not be written tried at once, each recipient list as the
        disk has it."""
        self.todo_held.clear()
        self.nexttodorun = self.recent
        # The recipient lists are read from the disk again, where an
        # admin's D marks may be (qmail-qrm, which sends this ALRM): those
        # new messages' first passes would take from memory, and those of
        # passes under way, which C qmail reads a record at a time.
        self.fresh.clear()
        self.freshbytes = 0
        for c in (0, 1):
            if self.passes[c] is not None:
                self.pass_reread(self.passes[c])
        for c in (0, 1):
            self.pqchan[c] = all_due(self.pqchan[c], self.recent)
        self.held_recheck()
        self.respill_now()

    # -- commands (qmail.lib.sendcmd) --------------------------------------------
    def command_set(self):
        """Open lock/command, read and write (a FIFO with no writer left
        would read as at its end for ever); none, or not a FIFO: no
        commands (a warning once), the marks on disk still read at start."""
        try:
            fd = os.open(sendcmd.COMMAND, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        except OSError as err:
            log('warning: unable to open %s: %s; holds and releases take effect at '
                'the next start (qmail-fsck -r makes it)\n'
                % (sendcmd.COMMAND, err.strerror or 'error'))
            return
        try:
            fifo = stat.S_ISFIFO(os.fstat(fd).st_mode)
        except OSError:
            fifo = False
        if not fifo:
            os.close(fd)
            log('warning: %s is not a named pipe, not read (qmail-fsck -r makes it one)\n'
                % sendcmd.COMMAND)
            return
        self.commandfd = fd

    def command_read(self):
        """Read what waits on lock/command and do it, a batch at a time:
        each kind of command costs one look at the queues per batch, not
        one per message (20,000 holds would take qmail-send minutes)."""
        commands = []
        for _ in range(16):             # (then the loop goes on: more next turn)
            try:
                data = os.read(self.commandfd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                os.close(self.commandfd)
                self.commandfd = -1
                break
            if not data:
                break
            commands.extend(self.commands.feed(data))
        if commands:
            self.commands_do(commands)

    def commands_do(self, commands):
        """H: a pass under way of the message is cut (no more of its
        deliveries start; those under way end as they would have); its
        next pass finds the mark and waits.  U, N: a held message (or,
        for N, any) due now.  R: its recipient lists read again."""
        hold, now, reread = set(), set(), set()
        for verb, messid in commands:
            if verb == b'H':
                hold.add(messid)
                now.discard(messid)
                log('hold msg %d\n' % messid)
            elif verb in (b'U', b'N'):
                now.add(messid)
                hold.discard(messid)
                if verb == b'U' or any(messid in h for h in self.heldchan):
                    log('release msg %d\n' % messid)
            elif verb == b'R':
                reread.add(messid)
        for c in (0, 1):
            for messid in hold | reread:
                self.fresh_drop(c, messid)
            p = self.passes[c]
            if p is not None and p.job.direct is None:
                if p.job.id in hold:
                    self.passes[c] = None
                    self.job_close(p.job)
                elif p.job.id in reread:
                    self.pass_reread(p)
            if not now:
                continue
            for d in self.dels[c]:
                if d is not None and d.job.id in now:
                    # (a job cut by a hold, still waiting for the
                    # deliveries it started: due now when they end)
                    d.job.retry, d.job.moved = self.recent, self.clock_back
            released = self.heldchan[c] & now
            self.heldchan[c] -= released
            if any(m in now for _, m in self.pqchan[c]):
                self.pqchan[c] = [(min(t, self.recent) if m in now else t, m)
                                  for t, m in self.pqchan[c]]
                heapq.heapify(self.pqchan[c])
            for messid in released:
                heapq.heappush(self.pqchan[c], (self.recent, messid))

    def held_recheck(self):
        """ALRM: held messages whose mark is gone (a release whose command
        was lost) go back to the queue, due now."""
        for c in (0, 1):
            for messid in list(self.heldchan[c]):
                try:
                    held = os.stat(self.fn(CHANDIR[c], messid)).st_mode & sendcmd.HELD_BIT
                except FileNotFoundError:
                    held = False
                except OSError:
                    continue
                if not held:
                    self.heldchan[c].discard(messid)
                    heapq.heappush(self.pqchan[c], (self.recent, messid))

    def fresh_drop(self, c: int, messid: int):
        fresh = self.fresh.pop((c, messid), None)
        if fresh is not None:
            self.freshbytes -= len(fresh[0])

    def pass_reread(self, p):
        """A pass under way takes its recipient list as the disk has it
        (D marks made in place: the same length), as C reads a record at
        a time."""
        if p.job.direct is not None:
            return
        try:
            data = slurp(self.fn(CHANDIR[p.job.channel], p.job.id))
        except OSError:
            return
        if len(data) == len(p.data):
            p.data = data

    def respill_now(self):
        self.pqrespill = all_due(self.pqrespill, self.recent)

    def exit_begin(self):
        """The first turn of the loop after exitasap.  A spill not yet
        written (a full queue disk) is tried at once; on a stop (TERM)
        qmail-send then waits for it, trying every SLEEP_EXITSPILL
        seconds, as C qmail-send waits for a bounce paragraph it cannot
        append: gone without it, the next start would make that message's
        deliveries again from todo/ (an mbox or program line's copy twice).
        A partner's death (flagdying) waits for nothing: that is a crash."""
        self.exitheard = True
        self.respill_now()

    def pausedir(self, d):
        log('alert: unable to opendir %s, sleeping...\n' % d)
        time.sleep(10)

    # -- jobs -----------------------------------------------------------------
    def job_avail(self):
        return self.jobs_open < self.numjobs

    def job_open(self, messid, c):
        self.jobs_open += 1
        return Job(messid, c)

    def job_close(self, job, finishing=None):
        """One reference to job gone; the last closes it.  A job whose
        recipients are all done is finished (jobs_finish) at once, or,
        with finishing, appended there for the caller to finish with
        others."""
        job.refs -= 1
        if job.refs > 0:
            return
        self.jobs_open -= 1
        if job.direct is not None:
            return self.direct_end(job)
        if job.flaghiteof and not job.numtodo:
            if finishing is None:
                self.jobs_finish([job])
            else:
                finishing.append(job)
            return
        heapq.heappush(self.pqchan[job.channel], (job.due(self.clock_back), job.id))

    def jobs_finish(self, jobs):
        """Jobs with every recipient done: their channel files removed
        and the directories fsynced together (in the background), then
        each message goes on to messdone unless its other channel is
        still going.  A job of a message not yet settled (its todo/ not
        yet gone: preprocess_batch) waits for it."""
        ready = []
        for job in jobs:
            parked = self.unsettled.get(job.id)
            if parked is None:
                ready.append(job)
            else:
                parked.append(job)      # until its message is settled
        if ready:
            self.finishing.add(ready)

    def jobs_unlink(self, jobs):
        """Background: ([jobs whose file is gone, durably], [jobs whose
        file is still there], [jobs whose file is gone, not durably],
        [log lines]).  A file that stays gets its job's last D mark
        (written unsynced by del_reports) written again and fsynced, so
        the retry does not deliver that recipient again."""
        removed, failed, out = [], [], []
        for job in jobs:
            fn = self.fn(CHANDIR[job.channel], job.id)
            try:
                durable.unlink(fn)
                removed.append((job, fn))
            except OSError:
                failed.append(job)
                if job.unmarked is not None:
                    self.marks_sync([self.mark_write(*job.unmarked, out)], out)
        # Durable before info/ goes (messdone): else a power cut could
        # bring back a recipient list whose message is forgotten.
        bad = set(durable.sync_dirs(sorted({os.path.dirname(fn) for _, fn in removed})))
        return ([job for job, fn in removed if os.path.dirname(fn) not in bad], failed,
                [job for job, fn in removed if os.path.dirname(fn) in bad], out)

    def jobs_unlinked(self, jobs, result):
        gone, failed, unsure, out = result
        for line in out:
            log(line)
        for job in failed:
            log('warning: unable to unlink %s; will try again later\n'
                % self.fn(CHANDIR[job.channel], job.id))
            heapq.heappush(self.pqchan[job.channel],
                           (int(time.time()) + SLEEP_SYSFAIL, job.id))
        for job in unsure:
            # Gone, but a crash may bring it back (with its D marks, or
            # without the last, never synced: delivered again then): the
            # message must not be finished before.  A second fsync after a
            # failed one proves nothing; the next start sees the truth.
            log('alert: unable to fsync %s: message %d waits for the next start\n'
                % (os.path.dirname(self.fn(CHANDIR[job.channel], job.id)), job.id))
            self.unsettled.setdefault(job.id, [])
        for job in gone:
            if job.id in self.unsettled:
                continue                # the other channel's removal is unsure
            # After the unlink: of two channels finishing at once, one at
            # least sees the other gone (a message done twice is harmless:
            # messdone finds info/ gone, or under way).
            other = self.fn(CHANDIR[1 - job.channel], job.id)
            try:
                os.stat(other)
                continue                # the other channel is still going
            except FileNotFoundError:
                pass
            except OSError:
                log('warning: unable to stat %s\n' % other)
            heapq.heappush(self.pqdone, (int(time.time()), job.id))

    # -- bounces ----------------------------------------------------------------
    def addbounce(self, messid, recip, report):
        """Append a failure paragraph to bounce/<messid>, durably."""
        text = rules.bounce_entry(rules.stripvdomprepend(recip, self.c.routing), report)
        fn = self.fn('bounce', messid)
        size = None                     # the file's length before ours
        while True:
            try:
                fd = durable.open_append(fn, 0o600)
                try:
                    # A failed try may have left part of the paragraph, or
                    # all of it unsynced: it goes, so that the retry does
                    # not add it twice (or after a fragment).
                    length = os.fstat(fd).st_size
                    if size is None:
                        size = length
                    elif length > size:
                        durable.truncate(fd, size)
                    durable.write_all(fd, text)
                    durable.fsync(fd)
                finally:
                    os.close(fd)
                # A new bounce/ entry is durable only with its directory;
                # without this a crash after the D mark forgets the failure.
                durable.fsync_dir(os.path.dirname(fn))
                if self.reserve_fd == -1:
                    self.reserve_fd = spare_descriptor()
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE) and self.reserve_fd != -1:
                    # The descriptors are taken (files waiting for their
                    # sync hold them, and only this loop can close them):
                    # the spare one goes, and the append is tried again.
                    os.close(self.reserve_fd)
                    self.reserve_fd = -1
                    continue
                log('alert: unable to append to bounce message; HELP! sleeping...\n')
                time.sleep(10)
                if self.flagexitasap:
                    # Stopped while a failure cannot be recorded: exit as
                    # a crash would (no D mark: the delivery is made
                    # again at the next start, and fails again), rather
                    # than ignore the TERM for as long as that lasts.
                    log('status: exiting with a failure unrecorded (its delivery is '
                        'made again at the next start)\n')
                    os._exit(111)

    def injectbounce(self, messid) -> bool:
        """Turn bounce/<messid> into a bounce message; True when done."""
        bfn = self.fn('bounce', messid)
        try:
            os.stat(bfn)
        except FileNotFoundError:
            return True
        except OSError:
            log('warning: unable to stat %s\n' % bfn)
            return False
        info = self.getinfo(messid)
        if info is None:
            log('warning: trouble reading %s, will try the bounce again later\n'
                % self.fn('info', messid))
            return False
        sender, birth = info
        env = rules.bounce_envelope(sender, self.c.doublebounceto)
        if env is None:
            log('triple bounce: discarding %s\n' % bfn)
        elif env[1] is None:
            log('double bounce: discarding %s\n' % bfn)
        else:
            bsender, brecip = env
            single = bool(bsender == b'')
            # (qmail-send's loop waits for this: not for a pool held whole)
            qq = QueueClient(queue_program(), wait=BOUNCE_DAEMON_WAIT)
            if qq.spawn_error is not None:
                log('warning: unable to start qmail-queue, will try later\n')
                qq.close()
                return False
            qq.put(rules.bounce_head(date822(time.time()), self.c.bouncefrom,
                                     self.c.bouncehost, brecip, single))
            self.copy_into(qq, bfn, 0)
            origsender = sender[:-4] if sender.endswith(b'-@[]') else sender
            qq.put(rules.bounce_separator(origsender, single))
            self.copy_into(qq, self.fn('mess', messid), self.c.bouncemaxbytes)
            qq.from_(bsender)
            qq.to(brecip)
            if qq.close():
                log('warning: trouble injecting bounce message, will try later\n')
                return False
            log('bounce msg %d qp %d\n' % (messid, qq.pid))
        try:
            durable.unlink(bfn)
            # Else a crash could bring bounce/ back and inject the bounce
            # again (qmail-crashtest's "bounce" scenario shows it).
            durable.fsync_dir('bounce')
        except OSError:
            log('warning: unable to unlink %s\n' % bfn)
            return False
        return True

    def copy_into(self, qq, fn, limit):
        """The file fn into qq; with a limit it is over, its first limit
        bytes up to the last whole line within them (copy_cut: the first
        line alone, longer than the limit, is cut at the limit), then a
        line saying so.  A copy whose last line has no end gets one
        (beyond qmail): a bounce ending in a partial line could not go
        out by SMTP, and doubled."""
        try:
            with open(fn, 'rb') as f:
                cut = None
                if limit and os.fstat(f.fileno()).st_size > limit:
                    cut = copy_cut(f, limit)
                    f.seek(0)
                copied, ended = 0, True
                while cut is None or copied < cut:
                    chunk = f.read(65536 if cut is None else min(65536, cut - copied))
                    if not chunk:
                        break
                    qq.put(chunk)
                    copied += len(chunk)
                    ended = chunk[-1:] == b'\n'
                if cut is not None:
                    qq.put(b'\n--- Rest of message truncated: over %d bytes '
                           b'(control/bouncemaxbytes).\n' % limit)
                elif not ended:
                    qq.put(b'\n')
        except OSError:
            qq.fail()

    # -- deliveries ---------------------------------------------------------------
    def del_status(self):
        line = 'status: local %d/%d remote %d/%d' % (
            self.concurrencyused[0], self.concurrency[0],
            self.concurrencyused[1], self.concurrency[1])
        if self.flagexitasap:
            line += ' exitasap'
        log(line + '\n')

    def del_canexit(self):
        return all(not (self.flagspawnalive[c] and self.concurrencyused[c]) for c in (0, 1))

    def del_avail(self, c):
        return (self.flagspawnalive[c] and not self.comm_buf[c]
                and self.concurrencyused[c] < self.concurrency[c])

    def del_start(self, job, mpos, recip):
        c = job.channel
        if not self.del_avail(c):
            return
        slots = self.dels[c]
        try:
            i = slots.index(None)
        except ValueError:
            return
        delid = self.masterdelid
        self.masterdelid += 1
        slots[i] = Delivery(job, delid, mpos, recip)
        job.refs += 1
        self.concurrencyused[c] += 1
        split = '%d/%d' % (job.id % self.split, job.id)
        self.comm_buf[c] = (bytes((i,)) + split.encode() + b'\0'
                            + rules.senderadd(job.sender, recip) + b'\0'
                            + recip + b'\0')
        log('starting delivery %d: msg %d%s%s\n' % (delid, job.id, TOCHAN[c],
                                                     rules.logsafe(recip)))
        self.del_status()

    def mark_write(self, c, messid, pos, out):
        """The D mark written, not yet synced: (path, fd), or None after
        the warning (appended to out, for the loop to log)."""
        fn = self.fn(CHANDIR[c], messid)
        try:
            fd = os.open(fn, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            out.append(MARK_TROUBLE % fn)
            return None
        try:
            durable.pwrite(fd, b'D', pos)
        except OSError:
            os.close(fd)
            out.append(MARK_TROUBLE % fn)
            return None
        return fn, fd

    def mark_now(self, mark, out):
        """The D mark written, its file closed, not yet synced: its path,
        or None after the warning (mark_write)."""
        written = self.mark_write(*mark, out)
        if written is None:
            return None
        os.close(written[1])
        return written[0]

    def marks_sync(self, marks, out):
        """fsync the D marks written, together, and close them."""
        marks = [m for m in marks if m is not None]
        bad = set(durable.sync_files(fd for _, fd in marks)[0])
        for fn, fd in marks:
            if fd in bad:
                out.append(MARK_TROUBLE % fn)
            os.close(fd)

    def del_dochan(self, c):
        try:
            data = os.read(CHANFDIN[c], 2048)
        except InterruptedError:
            return
        except OSError:
            return
        if not data:
            self.spawndied(c)
            return
        lines = []
        for byte in data:
            dline = self.dline[c]
            if len(dline) < REPORTMAX:
                dline.append(byte)
            elif byte:
                continue
            else:
                dline[-1] = 0
            # The first byte is the slot number and may itself be 0.
            if byte == 0 and len(dline) > 1:
                lines.append(bytes(dline[:-1]))
                dline.clear()
        if lines:
            self.del_reports(c, lines)

    def del_report(self, c, line: bytes):
        self.del_reports(c, [line])

    def del_reports(self, c, lines):
        """Reports that came together: each logged and its slot freed;
        every D mark written at once, as qmail writes it (so a qmail-send
        killed after the log line does not make that delivery again), and
        the marks fsynced together in the background (with those of other
        reports that come meanwhile), then (marks_synced) each delivery's
        job closed: a job may finish only once its marks are durable."""
        slots = self.dels[c]
        items, ending, direct = [], [], []
        marklog = []
        for line in lines:
            delnum = line[0]
            if delnum >= len(slots) or slots[delnum] is None:
                log('warning: internal error: delivery report out of range\n')
                continue
            d = slots[delnum]
            kind, report = line[1:2], line[2:]
            if kind == b'Z' and d.job.flagdying:
                kind = b'D'
                report = report + b"I'm not going to try again; this message has been in the queue too long.\n"
            mark = None
            if kind == b'K':
                log('delivery %d: success: %s\n' % (d.delid, rules.logsafe(report)))
                mark = (c, d.job.id, d.mpos)
            elif kind == b'Z':
                log('delivery %d: deferral: %s\n' % (d.delid, rules.logsafe(report)))
            elif kind == b'D':
                log('delivery %d: failure: %s\n' % (d.delid, rules.logsafe(report)))
                self.addbounce(d.job.id, d.recip, report)
                mark = (c, d.job.id, d.mpos)
            else:
                log('delivery %d: report mangled, will defer\n' % d.delid)
            if d.job.direct is not None:
                # No file to mark: the outcome is kept in memory, and the
                # job goes on at once (direct_end).
                if mark is not None:
                    d.job.direct.marked.add(d.mpos)
                    d.job.direct.failed |= kind == b'D'
                direct.append((mark, d))
            elif mark is not None and d.job.flaghiteof and d.job.refs == 1 \
                    and d.job.numtodo == 1:
                # The job's last recipient, its last delivery: the job
                # ends now and its file goes (jobs_finish), which records
                # the outcome durably as well as a D mark would.  The
                # mark is written all the same (not synced): the removal
                # is the background's, and a qmail-send killed before it
                # must not make the delivery again.  Synced only if the
                # file cannot be removed.
                d.job.unmarked = mark
                self.mark_now(mark, [])         # (trouble: the removal records it)
                ending.append((mark, d))
            else:
                # Closed once written: its sync reopens it, no descriptor waits.
                items.append((mark, d, None if mark is None else self.mark_now(mark, marklog)))
            slots[delnum] = None
            self.concurrencyused[c] -= 1
            self.del_status()
        for line in marklog:
            log(line)
        if ending:
            self.marks_synced(ending, None)
        if direct:
            self.marks_synced(direct, None)
        if any(written for _, _, written in items):
            self.marking.add(items)
        elif items:                     # deferrals only (or marks that failed)
            self.marks_synced(items, None)

    def marks_disk(self, items):
        """Background: the files of the D marks del_reports wrote,
        fsynced together; the log lines of their troubles."""
        out, marks = [], []
        for fn in sorted({written for _, _, written in items if written is not None}):
            try:
                marks.append((fn, os.open(fn, os.O_WRONLY | os.O_CLOEXEC)))
            except OSError:
                out.append(MARK_TROUBLE % fn)
        self.marks_sync(marks, out)
        return out

    def marks_synced(self, items, out):
        """The marks durable: each delivery's job closed."""
        for line in out or ():
            log(line)
        finishing = []
        for mark, d, *_ in items:
            if mark is not None:
                d.job.numtodo -= 1
            self.job_close(d.job, finishing)
        if finishing:
            self.jobs_finish(finishing)

    def comm_do(self, c):
        buf = self.comm_buf[c]
        try:
            n = os.write(CHANFDOUT[c], buf)
        except BlockingIOError:
            return
        except BrokenPipeError:
            self.spawndied(c)
            return
        except OSError:
            return
        self.comm_buf[c] = buf[n:]

    # -- passes -------------------------------------------------------------------
    def pass_wakeup(self, wakeup):
        if self.flagexitasap:
            return min(wakeup, self.pqrespill[0][0]) if self.pqrespill else wakeup
        for c in (0, 1):
            if self.passes[c] is not None and self.del_avail(c):
                return 0
        if self.job_avail():
            for c in (0, 1):
                if self.passes[c] is None and self.pqchan[c]:
                    wakeup = min(wakeup, self.pqchan[c][0][0])
        for pq in (self.pqfail, self.pqdone, self.pqsettle, self.pqrespill):
            if pq:
                wakeup = min(wakeup, pq[0][0])
        return wakeup

    def pass_dochan(self, c):
        """One step of channel c's pass; True if it made progress."""
        if self.flagexitasap:
            return False
        p = self.passes[c]
        if p is None:
            if not self.job_avail() or not self.pqchan[c]:
                return False
            dt, messid = self.pqchan[c][0]
            if dt > self.recent:
                return False
            heapq.heappop(self.pqchan[c])
            direct = self.directs.get(messid) if c == 0 else None
            fresh = self.fresh.pop((c, messid), None)
            if fresh is not None:
                self.freshbytes -= len(fresh[0])
                if not self.fresh_unchanged(c, messid, fresh[3]):
                    fresh = None
            if direct is not None:
                data, sender, birth = direct.data, direct.sender, direct.birth
            elif fresh is not None:
                data, sender, birth = fresh[:3]
            else:
                fn = self.fn(CHANDIR[c], messid)
                try:
                    data, st = slurp(fn, want_stat=True)
                except OSError:
                    self.pass_trouble(c, fn, messid)
                    return True
                if st.st_mode & sendcmd.HELD_BIT:
                    # Held (qmail-qhold): the mark is the truth, whatever
                    # command was lost.  (A new message's list from memory
                    # is used only while its ctime is unchanged: unmarked.)
                    self.heldchan[c].add(messid)
                    return True
                info = self.getinfo(messid)
                if info is None:        # (the file at fault named, as qmail's)
                    self.pass_trouble(c, self.fn('info', messid), messid)
                    return True
                sender, birth = info
                if birth > self.recent + CLOCK_STEP:
                    # Born while the clock was ahead: born now, so that its
                    # retries back off and it bounces in its time (info/'s
                    # time is its birth, for qmail's programs too).
                    birth = self.recent
                    try:
                        os.utime(self.fn('info', messid), (birth, birth))
                    except OSError:
                        pass
            job = self.job_open(messid, c)
            job.retry = rules.nextretry(birth, self.recent, c)
            job.moved = self.clock_back
            job.flagdying = (self.recent > birth + self.c.lifetime
                             and time.monotonic() >= self.clock_doubt_until)
            job.sender = sender
            if direct is not None:
                job.direct = direct
                direct.job = job
            p = self.passes[c] = Pass(job, data)
        step = p.peek()
        if step is None:
            # At once, slot or none: a job whose pass is over can end with
            # its last report (del_reports).
            p.job.flaghiteof = True
            self.job_close(p.job)
            self.passes[c] = None
            return True
        pos, record = step
        tag = record[:1]
        if tag == b'T' and not self.del_avail(c):
            return False
        p.pos = pos + len(record) + 1
        if tag == b'T':
            p.job.numtodo += 1
            self.del_start(p.job, pos, record[1:])
        elif tag != b'D':
            log('warning: unknown record type in %s!\n' % self.fn(CHANDIR[c], p.job.id))
            self.job_close(p.job)
            self.passes[c] = None
        return True

    def fresh_unchanged(self, c, messid, stamp) -> bool:
        """Is the recipient list as preprocessing wrote it (its ctime)?
        An admin's D marks (qmail-qrm) change it: then it is read again."""
        try:
            return os.stat(self.fn(CHANDIR[c], messid)).st_ctime_ns == stamp
        except OSError:
            return False

    def pass_trouble(self, c, fn, messid):
        log('warning: trouble opening %s; will try again later\n' % fn)
        heapq.heappush(self.pqchan[c], (self.recent + SLEEP_SYSFAIL, messid))

    def messdone(self, messid, ending):
        """The message is finished: bounce what failed, then remove it:
        info/ (appended to ending, for the caller to remove with others'
        in the background, infos_unlink), then the rest through
        qmail-clean."""
        if messid in self.ending:
            return                      # under way
        if not self.flagcleanalive:
            # Without qmail-clean the mess/ file would outlive info/ (a
            # leftover for the 36-hour cleanup): leave the message whole
            # for the next qmail-send to finish.
            return self.messdone_fail(messid)
        try:
            for fn in (self.fn('local', messid), self.fn('remote', messid),
                       self.fn('todo', messid)):
                try:
                    os.stat(fn)
                    return              # false alarm
                except FileNotFoundError:
                    pass
            fn = self.fn('info', messid)
            try:
                os.stat(fn)
            except FileNotFoundError:
                return
        except OSError:
            log('warning: unable to stat %s; will try again later\n' % fn)
            return self.messdone_fail(messid)
        if not self.injectbounce(messid):
            return self.messdone_fail(messid)
        self.ending.add(messid)         # "end msg" once info/ is gone
        ending.append(messid)

    def messdone_fail(self, messid):
        heapq.heappush(self.pqdone, (int(time.time()) + SLEEP_SYSFAIL, messid))

    def infos_unlink(self, messids):
        """Background: info/ of finished messages removed, durably, each
        before its mess/ (info/ without mess/ after a power cut: the next
        start would finish that number again, and qmail-clean remove the
        mess/ file of a new message given the same inode); (the messids
        whose unlink failed, those whose directory could not be synced)."""
        failed, removed = [], []
        for messid in messids:
            fn = self.fn('info', messid)
            try:
                durable.unlink(fn)
                removed.append((messid, fn))
            except OSError:
                failed.append(messid)
        bad = set(durable.sync_dirs(sorted({os.path.dirname(fn) for _, fn in removed})))
        return failed, [m for m, fn in removed if os.path.dirname(fn) in bad]

    def infos_unlinked(self, messids, result):
        """Then qmail-clean is asked for the rest of each message."""
        failed, unsure = result
        for messid in failed:
            log('warning: unable to unlink %s; will try again later\n'
                % self.fn('info', messid))
            self.ending.discard(messid)
            self.messdone_fail(messid)
        for messid in unsure:
            # Its mess/ stays (a leftover for the 36-hour cleanup): a
            # second fsync after a failed one proves nothing.
            log('alert: unable to fsync %s: message %d left to the cleanup\n'
                % (os.path.dirname(self.fn('info', messid)), messid))
            self.ending.discard(messid)
        gone = [m for m in messids if m not in failed and m not in unsure]
        for messid in gone:
            # qmail-log(5): about to remove the message; logged once,
            # after info/ went (a failed unlink is retried, as in qmail).
            log('end msg %d\n' % messid)
        if gone:
            self.clean_request(['foop/%d' % m for m in gone],
                               lambda oks: self.ending.difference_update(gone))

    def pass_do(self):
        # qmail takes one step per channel per turn of the loop; a turn
        # here may preprocess a whole batch, so take every step there is
        # (up to PASS_STEPS a channel) rather than start one delivery per
        # batch, the channels in turn as qmail's are (a message's local
        # and remote deliveries alternate; neither takes every free job).
        going = [0, 1]
        for _ in range(PASS_STEPS):
            for c in tuple(going):
                if not self.pass_dochan(c):
                    going.remove(c)
                elif self.comm_buf[c]:
                    self.comm_do(c)     # the spawn takes it now: next one
            if not going:
                break
        if self.pqfail and self.pqfail[0][0] <= self.recent:
            _, messid = heapq.heappop(self.pqfail)
            self.pqadd(messid)
        settle = []
        while self.pqsettle and self.pqsettle[0][0] <= self.recent:
            _, messid, chans = heapq.heappop(self.pqsettle)
            settle.append((messid, chans))
        if settle:
            self.preprocess_synced(settle)
        due = []                # (each tried once a turn: a failure goes back in)
        while self.pqrespill and self.pqrespill[0][0] <= self.recent:
            due.append(heapq.heappop(self.pqrespill)[1])
        for messid in due:
            self.spill(*self.respills.pop(messid))
        ending = []
        for _ in range(PASS_STEPS):
            if not self.pqdone or self.pqdone[0][0] > self.recent:
                break
            _, messid = heapq.heappop(self.pqdone)
            self.messdone(messid, ending)
        if ending:
            self.removing.add(ending)

    # -- direct delivery ------------------------------------------------------------
    def direct_end(self, job):
        """A direct message's job is over (every delivery reported, or
        its pass given up).  Delivered to all: log its end and have
        qmail-clean remove todo/ (durably, with intd/), then mess/
        (preprocess_cleaned).  Else spill it."""
        d, messid = job.direct, job.id
        left = d.data.count(b'\0') > len(d.marked)
        if not d.failed and not left:
            log('end msg %d\n' % messid)
            self.preprocess_synced([(messid, None)])
        else:
            self.spill(job, left)

    def spill(self, job, left):
        """A direct message not delivered to all (a deferral, a failure,
        qmail-send stopping): its info/ and local/ written now as
        preprocessing would have, with a D mark for each recipient done,
        and settled as a new message's are (its bounce/ paragraphs are
        durable already: addbounce); then it goes on as any message, to
        its retry or its bounce (preprocess_cleaned).  Files that cannot
        be written (here in the loop: two small files, their sync in
        the background; a full or failing disk): the spill is tried
        again SLEEP_SYSFAIL later, its marks kept in memory and todo/
        left alone (a todo/ scan would deliver it direct again, every
        delivery made once more, an mbox or program line's copy too);
        only a restart meanwhile starts it over from todo/."""
        d, messid = job.direct, job.id
        self.directs.pop(messid, None)
        data = bytearray(d.data)
        for pos in d.marked:
            data[pos] = ord('D')
        # No recipient left: no local/ (messdone would wait for it to go).
        local = bytes(data) if left else b''
        out = []
        files, ok = self.write_files(messid, (('info', b'F' + d.sender + b'\0'),
                                              ('local', local)), out)
        if ok:
            try:
                os.utime(files[0][1], (d.birth, d.birth))   # info/: the message's age
            except OSError:
                out.append('warning: trouble writing to %s\n' % files[0][0])
                ok = False
                for _, fd in files:
                    os.close(fd)
        for line in out:
            log(line)
        if ok:
            self.spilled[messid] = job.due(self.clock_back) if left else None
            self.settling.add([(messid, (local, b''), files, [], d.sender)])
            return
        for fn, _ in files:
            try:
                durable.unlink(fn)
            except OSError:
                pass
        self.respills[messid] = (job, left)     # (still unsettled: no todo/ scan takes it)
        later = SLEEP_SYSFAIL
        if self.flagexitasap:
            later = SLEEP_EXITSPILL
            if not self.flagdying:
                log('status: exiting once msg %d can be recorded (killed now, '
                    'its deliveries are made again at the next start)\n' % messid)
        heapq.heappush(self.pqrespill, (self.recent + later, messid))

    def tidy_sync(self, messids):
        """Background, a batch of the tidying lane: the mess/ directories
        of messages delivered direct and removed, fsynced (one syncfs
        where it can).  Nothing waits for it (a mess/ file back after a
        crash is the 36-hour cleanup's; qmail-send stopping waits for it
        as for any lane), but what the removals left dirty
        is flushed here, not by the next message's qmail-queue, in the
        time its client waits: the work the settling of info/ and
        local/ used to do by the way."""
        return durable.sync_dirs(sorted({os.path.dirname(self.fn('mess', m)) for m in messids}))

    def direct_stop(self):
        """Exiting: a direct message whose pass has not begun is
        forgotten (its todo/ stays for the next start); one whose pass
        has begun is given up and spilled, at once or once its
        deliveries under way report."""
        p = self.passes[0]
        if p is not None and p.job.direct is not None:
            self.passes[0] = None
            # Cut short, it is due again at once, as qmail's unfinished
            # pass is (its file's time left alone): not at its next retry.
            p.job.retry = self.recent
            p.job.moved = self.clock_back
            self.job_close(p.job)
        idle = {m for m, d in self.directs.items() if d.job is None}
        if idle:
            for messid in idle:
                del self.directs[messid]
                self.unsettled.pop(messid, None)
            self.pqchan[0] = [(t, m) for t, m in self.pqchan[0] if m not in idle]
            heapq.heapify(self.pqchan[0])

    # -- todo ---------------------------------------------------------------------
    def trigger_set(self):
        if self.triggerfd != -1:
            os.close(self.triggerfd)
        try:
            self.triggerfd = os.open('lock/trigger', os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.triggerfd = -1
            return
        # Anything but a named pipe is always readable: qmail-send spun
        # at full CPU on a plain file there (as qmail's does).  Left
        # unwatched, with a warning once: the watch on todo/ still sees
        # new mail at once.
        try:
            fifo = stat.S_ISFIFO(os.fstat(self.triggerfd).st_mode)
        except OSError:
            fifo = False
        if not fifo:
            os.close(self.triggerfd)
            self.triggerfd = -1
            if not self.trigger_warned:
                self.trigger_warned = True
                log('warning: lock/trigger is not a named pipe, not watched '
                    '(qmail-fsck -r makes it one)\n')

    def watch_todo(self):
        """Beyond the trigger: an inotify watch on todo/, so a message
        whose trigger pull was lost (a missing or broken lock/trigger)
        is still noticed at once, not at the next 25-minute scan.  Only
        the readiness matters (todo/ is listed anyway): the events are
        read raw and dropped, not parsed."""
        try:
            import pyinotify
            wm = pyinotify.WatchManager()
            wm.add_watch('todo', pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO,
                         quiet=False)
            self.notifier = wm          # keeps the descriptor open
            self.inotifyfd = wm.get_fd()
            os.set_blocking(self.inotifyfd, False)
        except Exception:              # no inotify: the trigger and the scan remain
            self.notifier, self.inotifyfd = None, -1

    def inotify_read(self) -> bool:
        """Drain the inotify descriptor; True if anything was there."""
        got = False
        while True:
            try:
                if not os.read(self.inotifyfd, 65536):
                    break
                got = True
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.notifier, self.inotifyfd = None, -1
                break
        return got

    def settle_room(self) -> int:
        """How many more messages' files may be open, awaiting their sync,
        within the descriptor limit (settle_cap); none: todo/ waits."""
        return self.settle_cap - len(self.settling.waiting) - self.settling.inflight

    def settling_full(self) -> bool:
        return self.settle_room() <= 0

    def todo_do(self, triggered):
        if self.flagexitasap or self.preprocessing or self.settling_full():
            return
        if self.tododir is None:
            if not triggered and self.recent < self.nexttodorun:
                return
            self.trigger_set()
            try:
                self.tododir = iter(sorted(os.listdir('todo')))
            except OSError:
                self.pausedir('todo')
                return
            self.nexttodorun = self.recent + SLEEP_TODO
            if self.todo_held:          # (a held file removed is never listed again)
                self.todo_held = {m: h for m, h in self.todo_held.items()
                                  if h[0] > self.recent}
        batch = []
        room = min(TODO_BATCH, self.settle_room())
        while len(batch) < room:
            name = next(self.tododir, None)
            if name is None:
                self.tododir = None
                break
            messid = parse_messid(name)
            if (messid is not None and messid not in self.unsettled
                    and not self.todo_holds(messid)):
                batch.append(messid)
        if batch:
            self.preprocess_batch(batch)

    def todo_holds(self, messid) -> bool:
        """Whether todo/'s messid waits after a failure: until its time,
        unless the name is now another file (removed, a new message's)."""
        held = self.todo_held.get(messid)
        if held is None:
            return False
        # (a clock stepped back does not make the hold longer)
        if (0 < held[0] - self.recent <= SLEEP_SYSFAIL
                and todo_identity(self.fn('todo', messid)) == held[1]):
            return True
        del self.todo_held[messid]
        return False

    def preprocess(self, messid):
        """todo/ -> info/, local/, remote/ (INTERNALS section 4)."""
        self.preprocess_batch([messid])

    def preprocess_batch(self, messids):
        """Preprocess several messages with one round of syncing.  In the
        background, every message's info/ and channel files are written
        (preprocess_write); then each is queued at once, its deliveries
        free to start, while in the background the files are fsynced
        together and each directory once (preprocess_sync); then todo/ is
        cleaned for all (preprocess_synced); then each message is settled
        (preprocess_cleaned).  Until it is settled a message's jobs may
        deliver but not finish: a crash before then leaves its todo/, and
        the next start preprocesses and delivers it again (at worst twice,
        never lost, as a crash between a delivery and its D mark).  A
        message whose todo/ cannot be read or whose files cannot be
        written keeps todo/, with a warning, and no scan tries it again
        for SLEEP_SYSFAIL (qmail's tried it at every scan: each injection
        logged the warning again), then a scan does (or at once on ALRM);
        qmail-clean is asked again, after SLEEP_SYSFAIL, for a todo/ it
        could not remove; a message whose files cannot be fsynced stays
        unsettled until the next start, with an alert (a second fsync
        proves nothing).  One batch is written at a time: todo_do waits
        for it."""
        self.preprocessing = True
        routing = self.c.routing        # one batch, one set of rules
        out = []
        # None while local deliveries are held (concurrencylocal 0): a
        # direct message would wait in todo/, "not yet preprocessed".
        self.direct_room = 0 if self.flagexitasap or not self.concurrency[0] else max(
            0, self.direct_max - len(self.directs))

        def work():
            made, failed = [], []
            for m in messids:
                got = self.preprocess_write(m, routing, out)
                if isinstance(got, Failed):
                    failed.append((m, got.identity))
                elif got is not None:
                    made.append(got)
            return made, failed
        self.bg.submit(work, lambda result: self.preprocess_written(*result, out))

    def preprocess_written(self, made, failed, out):
        for line in out:
            log(line)
        self.preprocessing = False
        now = int(time.time())
        for messid, identity in failed:
            if identity is not None:
                self.todo_held[messid] = now + SLEEP_SYSFAIL, identity
                # a scan is due when the hold ends, not at the next trigger
                self.nexttodorun = min(self.nexttodorun, now + SLEEP_SYSFAIL)
        for made_one in made:
            self.todo_held.pop(made_one[0], None)
        for messid, chans, files, _, sender in made:
            if files is None:           # to be delivered direct
                if not self.flagexitasap:   # (else todo/ stays for the next start)
                    self.unsettled[messid] = []
                    self.directs[messid] = Direct(bytes(chans[0]), sender, now)
                    heapq.heappush(self.pqchan[0], (now, messid))
                continue
            self.unsettled[messid] = []
            fds = dict(files)
            for c in (0, 1):
                if chans[c]:
                    heapq.heappush(self.pqchan[c], (now, messid))
                    # What its first pass would read back: the file as
                    # written (no D mark yet), and info/'s sender and time.
                    # (bounded in number and in bytes: passes may lag far
                    # behind, list posts of thousands of recipients queued)
                    if (len(self.fresh) < FRESH_MAX
                            and self.freshbytes + len(chans[c]) <= FRESH_BYTES):
                        try:
                            stamp = os.fstat(fds[self.fn(CHANDIR[c], messid)]).st_ctime_ns
                        except (KeyError, OSError):
                            continue
                        self.fresh[c, messid] = (bytes(chans[c]), sender, now, stamp)
                        self.freshbytes += len(chans[c])
        made = [m for m in made if m[2] is not None]
        if made:
            self.settling.add(made)

    def settle_sync(self, made):
        """Background, a batch of the settling lane: preprocess_sync."""
        out = []
        return self.preprocess_sync(made, out), out

    def settle_synced(self, made, result):
        synced, out = result
        self.preprocess_synced(synced, out)

    def preprocess_sync(self, made, out):
        """Background: the written files fsynced together, then each
        directory once (those of files a past run left and this one
        removed too); [(messid, chans)] of the messages whose files are
        durable (the others' troubles are appended to out)."""
        failed, whole = durable.sync_files(fd for _, _, files, _, _ in made for _, fd in files)
        bad = set(failed)
        synced = []
        for messid, chans, files, stale, _ in made:
            failed = [fn for fn, fd in files if fd in bad]
            for _, fd in files:
                os.close(fd)
            if failed:
                out.append('alert: unable to fsync %s: message %d waits for the next '
                           'start\n' % (failed[0], messid))
            else:
                synced.append((messid, chans, [fn for fn, _ in files] + stale))
        bad = set() if whole else set(durable.fsync_dirs(
            sorted({os.path.dirname(fn) for _, _, fns in synced for fn in fns})))
        good = []
        for messid, chans, fns in synced:
            failed = sorted({os.path.dirname(fn) for fn in fns} & bad)
            if failed:
                out.append('alert: unable to fsync %s: message %d waits for the next '
                           'start\n' % (failed[0], messid))
            else:
                good.append((messid, chans))
        return good

    def preprocess_synced(self, synced, out=()):
        for line in out:
            log(line)
        if synced:
            self.clean_request(['todo/%d' % messid for messid, _ in synced],
                               lambda oks: self.preprocess_cleaned(synced, oks))

    def preprocess_cleaned(self, synced, oks):
        """todo/ gone: the messages are settled, their waiting jobs finish.
        A message delivered direct (chans None) is finished: the rest of
        it goes.  A spilled one goes on as any message."""
        now = int(time.time())
        for (messid, chans), ok in zip(synced, oks):
            if not ok:                  # qmail-clean could not: ask again later
                heapq.heappush(self.pqsettle, (now + SLEEP_SYSFAIL, messid, chans))
                continue
            parked = self.unsettled.pop(messid)
            if chans is None:
                self.directs.pop(messid, None)
                self.clean_request(['foop/%d' % messid],
                                   lambda oks, m=messid: self.tidying.add([m]))
                continue
            if messid in self.spilled:
                when = self.spilled.pop(messid)
                if when is None:
                    heapq.heappush(self.pqdone, (now, messid))
                else:
                    heapq.heappush(self.pqchan[0], (when, messid))
                continue
            if not chans[0] and not chans[1]:
                heapq.heappush(self.pqdone, (now, messid))
            if parked:
                self.jobs_finish(parked)

    def preprocess_write(self, messid, routing, out):
        """Background: one message's info/ and channel files, written,
        not yet synced: (messid, chans, [(path, fd)], [stale paths it
        removed], sender); a Failed after a warning, None if todo/ is
        gone; files None and nothing written for a message to deliver
        direct (direct_room left, local recipients only, at most
        direct_rcpt, and no stale file of an earlier try).  Its log
        lines are appended to out."""
        fn = self.fn('todo', messid)
        try:
            envelope, st = slurp(fn, want_stat=True)
        except FileNotFoundError:
            return None                 # done since the listing
        except OSError:
            out.append('warning: unable to open %s\n' % fn)
            return Failed(todo_identity(fn))
        failed = Failed(todo_identity(fn, st))
        fn = self.fn('mess', messid)
        try:
            size = os.stat(fn).st_size
        except OSError:
            out.append('warning: unable to stat %s\n' % fn)
            return failed
        # bounce/ too: a failure reported before a crash interrupted the
        # last preprocessing (deliveries start before todo/ goes) is
        # reported again when the delivery is tried again.
        stale = []
        for d in ('local', 'remote', 'info', 'bounce'):
            fn = self.fn(d, messid)
            try:
                durable.unlink(fn)
                stale.append(fn)
            except FileNotFoundError:
                pass
            except OSError:
                out.append('warning: unable to unlink %s\n' % fn)
                return failed
        info = []
        news = []       # logged once the message is the queue's (C: once info/ is made)
        chans = [bytearray(), bytearray()]
        uid = pid = 0
        for record in records(envelope):
            tag = record[:1]
            if tag == b'u':             # (for the log line only)
                uid = control.scan_ulong(record[1:])
            elif tag == b'p':
                pid = control.scan_ulong(record[1:])
            elif tag == b'F':
                info.append(record + b'\0')
                news.append('new msg %d\n' % messid)
                news.append('info msg %d: bytes %d from <%s> qp %d uid %d\n' % (
                    messid, size, rules.logsafe(record[1:]), pid, uid))
            elif tag == b'T':
                c, addr = rules.rewrite(record[1:], routing)
                chans[c] += b'T' + addr + b'\0'
            else:
                out.append('warning: unknown record type in %s\n' % self.fn('todo', messid))
                return failed
        if not info:
            out.append('warning: unknown record type in %s\n' % self.fn('todo', messid))
            return failed
        if (self.direct_room > 0 and not stale and not chans[1]
                and 0 < chans[0].count(b'\0') <= self.direct_rcpt):
            self.direct_room -= 1
            out.extend(news)
            return messid, chans, None, stale, info[0][1:-1]
        files, ok = self.write_files(messid, (('info', b''.join(info)), ('local', chans[0]),
                                              ('remote', chans[1])), out)
        if not ok:
            return failed
        out.extend(news)
        return messid, chans, files, stale, info[0][1:-1]

    def write_files(self, messid, contents, out):
        """Each (directory, data) of contents with data made the
        message's new file there, written, not synced: ([(path, fd)],
        True); or, after a warning appended to out, (those made, False),
        their descriptors closed."""
        files = []
        for d, data in contents:
            if not data:
                continue
            fn = self.fn(d, messid)
            try:
                fd = durable.create_excl(fn, 0o600)
            except OSError:
                out.append('warning: unable to create %s\n' % fn)
                break
            files.append((fn, fd))
            try:
                durable.write_all(fd, data)
            except OSError:
                out.append('warning: trouble writing to %s\n' % fn)
                break
        else:
            return files, True
        for _, fd in files:
            os.close(fd)
        return files, False

    # -- cleanups -----------------------------------------------------------------
    def cleanup_do(self):
        """Remove messages stuck in S2/S3 (a crashed qmail-queue), one per turn."""
        if self.cleanupdir is None:
            if self.recent < self.cleanuptime:
                return
            ids = []
            for i in range(self.split):
                try:
                    ids.extend(m for m in map(parse_messid, os.listdir('mess/%d' % i))
                               if m is not None)
                except OSError:
                    self.pausedir('mess/%d' % i)
            self.cleanupdir = iter(ids)
        messid = next(self.cleanupdir, None)
        if messid is None:
            self.cleanupdir = None
            self.cleanuptime = self.recent + SLEEP_CLEANUP
            return
        try:
            st = os.stat(self.fn('mess', messid))
        except OSError:
            return
        if self.recent <= st.st_atime + OSSIFIED:
            return
        if writer_alive(self.fn('mess', messid)):
            return
        # (after the lock: a writer that linked todo/ and ended is seen)
        for d in ('info', 'todo'):
            try:
                os.stat(self.fn(d, messid))
                return
            except FileNotFoundError:
                pass
            except OSError:
                return
        self.clean_request(['foop/%d' % messid])

    # -- the clock ---------------------------------------------------------------
    def watch_clock(self, wall: float, mono: float):
        """Each turn: the wall clock against the monotonic one.  qmail's
        schedule is in wall-clock seconds (due times, births), so a step
        of the clock moved it all: set back, every due time was as much
        further away (a day back: a day without retries); set forward
        past queuelifetime, the whole queue bounced at its next try, for
        a clock that may be put right a minute later.  A step back moves
        every due time back with it; a step forward lets no message bounce
        for its age for CLOCK_DOUBT seconds (they are tried; a clock that
        stays where it went is believed then)."""
        base_wall, base_mono = self.clock_base
        self.clock_base = (wall, mono)
        step = int(wall - (base_wall + (mono - base_mono)))
        if step < -CLOCK_STEP:
            self.schedule_back(-step)
            log('warning: the clock went back %d seconds; the schedule moves back '
                'with it\n' % -step)
        elif step > CLOCK_STEP:
            self.clock_doubt_until = mono + CLOCK_DOUBT
            log('warning: the clock went forward %d seconds; no message bounces for its '
                'age for the next %d seconds\n' % (step, CLOCK_DOUBT))

    def schedule_back(self, step: int):
        """Every wall-clock due time step seconds earlier (a uniform shift
        keeps each heap a heap)."""
        for pq in self.pqchan + [self.pqdone, self.pqfail, self.pqrespill]:
            pq[:] = [(when - step, *rest) for when, *rest in pq]
        self.pqsettle[:] = [(when - step, messid, chans)
                            for when, messid, chans in self.pqsettle]
        self.todo_held = {m: (when - step, ident) for m, (when, ident) in self.todo_held.items()}
        self.nexttodorun -= step
        self.cleanuptime -= step
        self.spilled = {m: None if when is None else when - step
                        for m, when in self.spilled.items()}
        self.clock_back += step         # for the jobs under way (Job.due)

    # -- signals and controls -------------------------------------------------------
    def reread(self):
        """The controls again (SIGHUP).  control/ is named by its full
        path: the working directory stays queue/, which the disk threads'
        relative paths need at every moment."""
        try:
            ctl = control.Controls(self.ctl.directory)
            self.c, troubles = self.c.again(ctl)
        except (OSError, ValueError) as e:
            troubles = [e]
        for trouble in troubles:
            log(reread_alert(trouble, self.ctl.directory))

    def on_signal(self, signum, frame):
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.flagexitasap = True
        elif signum == signal.SIGALRM:
            self.flagrunasap = True
        elif signum == signal.SIGHUP:
            self.flagreadasap = True
        elif signum == signal.SIGCHLD:
            self.flagchildasap = True

    def reap_queued(self):
        """qmail-queued, forked by qmail-start and so this process's child,
        has ended: reaped (no zombie till the restart) and told.  Only its
        pid is waited for: a bounce's qmail-queue has its own waitpid.
        Injections go on, through bin/qmail-queue, as when it is absent."""
        if self.queued_pid is None:
            return
        try:
            pid, wstat = os.waitpid(self.queued_pid, os.WNOHANG)
        except ChildProcessError:
            pid, wstat = self.queued_pid, None
        if pid != self.queued_pid:
            return
        self.queued_pid = None
        how = ('unknown status' if wstat is None
               else 'signal %d' % os.WTERMSIG(wstat) if os.WIFSIGNALED(wstat)
               else 'exit %d' % os.WEXITSTATUS(wstat))
        log('alert: qmail-queued ended (%s); injections go through bin/qmail-queue '
            'until qmail-send restarts\n' % how)

    # -- the loop -------------------------------------------------------------------
    def hello_spawns(self):
        """Each spawn first says how many slots it has."""
        for c in (0, 1):
            while True:
                try:
                    ch = os.read(CHANFDIN[c], 1)
                    break
                except InterruptedError:
                    continue
                except OSError:
                    ch = b''
                    break
            if not ch:
                log('alert: cannot start: hath the daemon spawn no fire?\n')
                return False
            self.concurrency[c] = min(self.concurrency[c], ch[0])
            self.numjobs += self.concurrency[c]
            self.dels[c] = [None] * self.concurrency[c]
        for fd in CHANFDOUT:
            os.set_blocking(fd, False)
        os.set_blocking(FDCLEAN_IN, False)     # answers read as they come
        return True

    def loop(self, wakeup_r):
        self.pqstart()
        self.del_status()
        self.command_set()
        self.trigger_set()
        self.watch_todo()
        poller, polled = None, None
        while True:
            if self.flagexitasap and self.directs:
                self.direct_stop()      # (its spills are then waited for)
            if self.flagexitasap and not self.exitheard:
                self.exit_begin()
            if (self.flagexitasap and self.del_canexit() and not self.bg.pending
                    and not self.clean_waiting
                    and (self.flagdying or not self.respills)
                    and not any(lane.waiting for lane in self.lanes)):
                break
            wall = time.time()
            self.recent = int(wall)
            now = time.monotonic()
            self.watch_clock(wall, now)
            for lane in self.lanes:
                if self.flagexitasap:
                    lane.flush()
                lane.tick(now)
            if self.flagrunasap:
                self.flagrunasap = False
                self.pqrun()
            if self.flagreadasap:
                self.flagreadasap = False
                self.reread()
            if self.flagchildasap:
                self.flagchildasap = False
                self.reap_queued()
            wakeup = self.recent + SLEEP_FOREVER
            fds = {wakeup_r: select.POLLIN}
            for c in (0, 1):
                if self.flagspawnalive[c]:
                    fds[CHANFDIN[c]] = select.POLLIN
                    if self.comm_buf[c]:
                        fds[CHANFDOUT[c]] = select.POLLOUT
            if self.bg.fd != -1:
                fds[self.bg.fd] = select.POLLIN
            if self.commandfd != -1:
                fds[self.commandfd] = select.POLLIN
            if self.clean_waiting:
                fds[FDCLEAN_IN] = select.POLLIN
            if not self.flagexitasap and not self.preprocessing and not self.settling_full():
                # (while a batch is on its way to disk, or too many wait
                # for their sync, a pulled trigger waits: its descriptor
                # stays readable)
                if self.triggerfd != -1:
                    fds[self.triggerfd] = fds.get(self.triggerfd, 0) | select.POLLIN
                if self.inotifyfd != -1:
                    fds[self.inotifyfd] = select.POLLIN
                if self.tododir is not None:
                    wakeup = 0
                wakeup = min(wakeup, self.nexttodorun)
            wakeup = self.pass_wakeup(wakeup)
            if self.cleanupdir is not None:
                wakeup = 0
            wakeup = min(wakeup, self.cleanuptime)
            timeout = 0 if wakeup <= self.recent else (wakeup - self.recent + SLEEP_FUZZ) * 1000
            dues = [lane.due for lane in self.lanes if lane.due is not None]
            if dues:
                timeout = min(timeout, max(0, math.ceil((min(dues) - now) * 1000)))
            if fds != polled:           # poll() itself takes the whole set
                poller = select.poll()
                for fd, ev in fds.items():
                    poller.register(fd, ev)
                polled = fds
            try:
                ready = dict(poller.poll(0 if self.bg.held else timeout))
            except InterruptedError:
                continue
            if self.bg.held:
                # Disk work came: done here if nothing else waits
                # (qmail.lib.background); if something does, that first,
                # once, then the threads take it.
                inline = self.bg.inline_ok()
                if not ready and inline:
                    # The turn goes on after: what the sequels made
                    # possible (a new message's deliveries) starts before
                    # the next held work (its fsyncs) is done here.
                    self.bg.run_held()
                elif self.bg.passed_over or not inline:
                    self.bg.release()
                else:
                    self.bg.passed_over = True
            self.recent = int(time.time())
            if wakeup_r in ready:
                try:
                    os.read(wakeup_r, 512)
                except OSError:
                    pass
            if self.bg.fd != -1 and ready.get(self.bg.fd, 0):
                self.bg.finish()
            if ready.get(FDCLEAN_IN, 0) and self.clean_waiting:
                self.clean_read()
            if self.commandfd != -1 and ready.get(self.commandfd, 0):
                self.command_read()
            for c in (0, 1):
                if self.flagspawnalive[c] and self.comm_buf[c] and \
                        ready.get(CHANFDOUT[c], 0) & (select.POLLOUT | select.POLLERR):
                    self.comm_do(c)
            for c in (0, 1):
                if self.flagspawnalive[c] and ready.get(CHANFDIN[c], 0):
                    self.del_dochan(c)
            triggered = self.triggerfd != -1 and bool(ready.get(self.triggerfd, 0))
            if self.inotifyfd != -1 and ready.get(self.inotifyfd, 0):
                triggered = self.inotify_read() or triggered
            self.todo_do(triggered)
            self.pass_do()
            self.cleanup_do()
        self.pqfinish()
        log('status: exiting\n')


CONTROL_RETRY = 10      # seconds between attempts to read unreadable controls


def copy_cut(f, limit: int) -> int:
    """Where a bounce's copy of the file f is cut at bouncemaxbytes: after
    the last newline within its first limit bytes, so no line is left
    half; limit where there is none (a first line that long).  Read
    backwards from the limit a piece at a time: a line of any length
    costs no more memory than a piece."""
    end = limit
    while end > 0:
        start = max(0, end - 65536)
        f.seek(start)
        piece = f.read(end - start)
        i = piece.rfind(b'\n')
        if i >= 0:
            return start + i + 1
        end = start
    return limit


SENDMUTEX = 'lock/sendmutex'        # under queue/: held while qmail-send runs
ALREADY_RUNNING = 'alert: cannot start: qmail-send is already running\n'


def lock_mutex(path: str):
    """A descriptor of the mutex at path, locked (the lock lasts while it
    is open); None if another process holds it.  OSError if it cannot be
    opened or is not a regular file: lock/ is qmailq's, and qmail-start
    looks as root, so a link there is not followed, nor a FIFO waited on."""
    import fcntl
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, 'not a regular file', path)
    except OSError:
        os.close(fd)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def spare_descriptor() -> int:
    """A descriptor held for when the table is full (Send.addbounce); -1
    if none can be had now."""
    try:
        return os.open('/dev/null', os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def writer_alive(path: str) -> bool:
    """Does a qmail-queue still write the message at path?  It holds a
    lock on the file from before the file has a name to its end
    (queue.Writer.enqueue); a file that cannot be opened is left for the
    next scan too."""
    import fcntl
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def controls_trouble(e, name=None) -> str:
    """Which control file (name, else the error's), and why: what the
    admin must repair."""
    name = name if name is not None else getattr(e, 'filename', None)
    why = getattr(e, 'strerror', None) or str(e)
    return '%s%s' % (os.fsdecode(name) + ': ' if name else '', why)


def reread_alert(e, directory: str) -> str:
    """The HUP alert: qmail's "alert: unable to reread control/locals"
    for a file of control/, then why; else "controls" and the trouble."""
    name = getattr(e, 'filename', None)
    if name is not None and os.path.dirname(os.fsdecode(name)) == directory.rstrip('/'):
        return 'alert: unable to reread control/%s\n' % controls_trouble(
            e, os.path.basename(os.fsdecode(name)))
    return 'alert: unable to reread controls: %s\n' % controls_trouble(e)


def wait_or_term(seconds: int) -> bool:
    """Sleep; True if TERM or INT arrived meanwhile.  HUP or ALRM ends
    the sleep early (the admin says: read the controls again now); by
    their default action they killed qmail-send without a word."""
    got = []
    old = {sig: signal.signal(sig, lambda s, f: got.append(s))
           for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM)}
    deadline = time.monotonic() + seconds
    while not got and time.monotonic() < deadline:
        time.sleep(0.2)
    for sig, handler in old.items():
        signal.signal(sig, handler)
    return signal.SIGTERM in got or signal.SIGINT in got


def main(argv=None) -> int:
    try:
        os.chdir(auto.QMAIL)
    except OSError:
        log('alert: cannot start: unable to switch to home directory\n')
        return 111
    ctl = control.Controls('control')
    while True:
        try:
            controls = Controls(ctl)
            break
        except (OSError, ValueError) as e:
            # qmail exits here, and a supervisor restarts it every second:
            # a crash loop.  Wait instead, saying why, until the admin
            # repairs the file; TERM still stops us.
            log('alert: cannot start: unable to read controls: %s; '
                'trying again in %d seconds\n' % (controls_trouble(e), CONTROL_RETRY))
            if wait_or_term(CONTROL_RETRY):
                return 111
            ctl = control.Controls('control')
    ctl.directory = os.path.join(auto.QMAIL, 'control')
    try:
        os.chdir('queue')
    except OSError:
        log('alert: cannot start: unable to switch to queue directory\n')
        return 111
    os.umask(0o077)
    try:
        fd = lock_mutex(SENDMUTEX)
    except OSError:
        log('alert: cannot start: unable to open mutex\n')
        return 111
    if fd is None:
        log(ALREADY_RUNNING)
        return 111
    durable.load_writeback()
    send = Send(ctl, controls, auto.SPLIT)
    send.direct_max = DIRECT_MAX
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_w, False)
    os.set_blocking(wakeup_r, False)
    signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
    # INT as TERM: Ctrl-C on a qmail-start in the foreground stops cleanly.
    for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, send.on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, send.on_signal if QUEUED_PID is not None
                  else signal.SIG_DFL)
    if not send.hello_spawns():
        return 111
    send.loop(wakeup_r)
    return 0


def settle_cap() -> int:
    """How many messages' files may wait open for their sync.  A todo/
    backlog is preprocessed faster than a slow disk syncs it, and each
    message holds its files open till then: without a bound, the
    descriptors ran out (and "unable to create remote/..." for the rest).
    What RLIMIT_NOFILE leaves after FD_RESERVE (under a low limit, half
    of it, but at least FD_RESERVE_MIN), at least one message: a batch
    of todo/ takes no more than what is left (todo_do)."""
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft > 1 << 20:
        soft = 1 << 20
    reserve = min(FD_RESERVE, max(FD_RESERVE_MIN, soft // 2))
    return max(1, (soft - reserve) // FILES_PER_MESSAGE)


def main_logged(argv=None) -> int:
    """main(), with a bug logged as an alert (where it happened: file,
    line, function) before the exit 111, whoever started qmail-send."""
    try:
        return main(argv)
    except Exception as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = '?' if tb is None else '%s:%d %s' % (
            os.path.basename(tb.tb_frame.f_code.co_filename), tb.tb_lineno,
            tb.tb_frame.f_code.co_name)
        log('alert: internal error: %s at %s; exiting\n' % (type(e).__name__, where))
        return 111


def run():
    proctitle.set_title('qmail-send')
    sys.exit(main_logged())


if __name__ == '__main__':
    run()
