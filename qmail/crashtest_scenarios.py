"""The scenarios of qmail-crashtest: what each sets up, runs, brings
back after the crash, and checks.

Part of qmail-crashtest (qmail/crashtest.py), which forks the children
and crashes them.  A queue scenario runs qmail's own code in one process:
qmail-queue's writer (queue.inject), qmail-send (a Send whose clean()
does qmail-clean's work at once, and whose bounces go through an
in-process qmail-queue), and, standing in for qmail-lspawn and
qmail-rspawn, deliveries that write what they receive to a log: the
recipients' side, durable whatever the queue's disk does.  A local
scenario runs qmail-local's main() with the message on fd 0.
"""

import json
import os
import re
import time

from qmail.lib import auto, background, control, durable, qqtalk
from qmail.lib.qfile import parse_messid, qfn
from qmail import clean, fsck, local, local_deliver, queue, send, send_rules

DOMAIN = b'crash.example'       # the scratch home's only local domain
FAR = b'far.example'            # a remote one
USER = b'crashuser'
AHEAD = 3600                    # the next start's clock: every retry due
ROUNDS = 2000                   # qmail-send loop turns before "stuck"
QUEUEDIRS = ('mess', 'intd', 'todo', 'info', 'local', 'remote', 'bounce',
             'pid')
SCRATCH_SPLIT = auto.SPLIT


class Box:
    """One scratch home and what lives beside it (made by qmail-crashtest)."""

    def __init__(self, root):
        self.root = root
        self.home = os.path.join(root, 'home')
        self.queue = os.path.join(self.home, 'queue')
        self.stash = os.path.join(root, 'stash')
        self.user = os.path.join(root, 'user')
        self.log = os.path.join(root, 'send.log')
        self.deliveries = os.path.join(root, 'deliveries')
        self.message = os.path.join(root, 'message')
        self.report = os.path.join(root, 'report')
        self.error = os.path.join(root, 'error')


# ---- the messages -----------------------------------------------------------

class Msg:
    """One test message: its text names it (X-Crashtest: tag)."""

    def __init__(self, tag: bytes, sender: bytes, recips, fail=()):
        self.tag, self.sender, self.recips = tag, sender, list(recips)
        self.fail = set(fail)
        self.body = (b'X-Crashtest: %s\nSubject: crash test %s\n\n' % (tag, tag)
                     + b''.join(b'line %d of message %s\n' % (i, tag)
                                for i in range(200)))

    def envelope(self) -> bytes:
        """What the injector writes to qmail-queue's fd 1."""
        return (b'F' + self.sender + b'\0'
                + b''.join(b'T' + r + b'\0' for r in self.recips) + b'\0')

    def records(self) -> list:
        """The envelope records todo/ must hold, u and p aside."""
        return [b'F' + self.sender] + [b'T' + r for r in self.recips]

    def channels(self) -> list:
        """[local addresses, remote addresses], as qmail-send routes them."""
        out = [[], []]
        for r in self.recips:
            c, addr = send_rules.rewrite(r, ROUTING)
            out[c].append(addr)
        return out


ROUTING = send_rules.Routing([DOMAIN], [], [], DOMAIN)
BOUNCE = b'bounce'


def header_of(data: bytes) -> bytes:
    return data.split(b'\n\n', 1)[0]


def tag_of(data: bytes):
    """The tag of a queued or delivered message (Received line and all),
    BOUNCE for a bounce, None if neither."""
    head = header_of(data)
    m = re.search(rb'^X-Crashtest: (\S+)$', head, re.M)
    if m:
        return m.group(1)
    if re.search(rb'^Subject: failure notice$', head, re.M):
        return BOUNCE
    return None


def queued_text_ok(data: bytes, msg: Msg) -> bool:
    """mess/: qmail-queue's Received line, then the message as given."""
    first, _, rest = data.partition(b'\n')
    return first.startswith(b'Received: (qmail ') and rest == msg.body


def bounce_ok(data: bytes, orig: Msg) -> bool:
    """A whole bounce of orig: every failure, then the message itself."""
    return (all(b'<' + r + b'>:\n' in data for r in orig.fail)
            and data.endswith(orig.body))


def memfd(data: bytes) -> int:
    fd = os.memfd_create('qmail-crashtest')
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def queue_uids() -> dict:
    try:
        return queue.queue_uids()
    except KeyError:
        return {'alias': -1, 'daemon': -1, 'send': -1}


def inject(msgtext: bytes, envelope: bytes, uid: int) -> int:
    """qmail-queue's writer in this process; cwd HOME/queue."""
    mfd, efd = memfd(msgtext), memfd(envelope)
    try:
        return queue.inject(mfd, efd, uid, os.getpid(), time.time(),
                            queue_uids(), SCRATCH_SPLIT)
    finally:
        os.close(mfd)
        os.close(efd)


class InProcessQueue:
    """qmail-send's QueueClient for bounces, with qmail-queue's writer run
    in this process: its steps are the scenario's steps."""

    def __init__(self, program, wait=None):
        self.pid = os.getpid()
        self.spawn_error = None
        self.flagerr = False
        self.mess = bytearray()
        self.env = bytearray()
        self.cur = self.mess

    def put(self, data):
        if not self.flagerr:
            self.cur += data

    def fail(self):
        self.flagerr = True

    def from_(self, sender):
        self.cur = self.env
        self.put(b'F' + sender + b'\0')

    def to(self, recip):
        self.put(b'T' + recip + b'\0')

    def close(self) -> str:
        self.put(b'\0')
        if self.flagerr:
            return qqtalk.status_text(0)
        code = inject(bytes(self.mess), bytes(self.env), queue_uids()['send'])
        return '' if code == 0 else qqtalk.status_text(code)


# ---- qmail-send, in one process ------------------------------------------------

class ScratchSend(send.Send):
    """qmail-send with qmail-clean's work done in this process."""

    inline = True

    def clean_request(self, requests, then=None):
        got = clean.answer_all([r.encode() for r in requests], self.split)
        if then is not None:
            then([a == ord('+') for a in got])

    def pausedir(self, d):
        raise OSError('unable to opendir %s' % d)

    def comm_do(self, c):
        """No spawn pipes here: drain() takes comm_buf itself."""


def new_send(box):
    ctl = control.Controls(os.path.join(box.home, 'control'))
    s = ScratchSend(ctl, send.Controls(ctl), SCRATCH_SPLIT)
    s.dels = [[None] * s.concurrency[0], [None] * s.concurrency[1]]
    s.numjobs = sum(s.concurrency)
    return s


class Spawn:
    """The deliveries qmail-send starts: a failure (D) for msg.fail, else
    success (K), each success written to the deliveries log first (the
    recipient has the message: durable, whatever the queue's disk does)."""

    def __init__(self, box, fail):
        self.box, self.fail = box, set(fail)

    def __call__(self, c, messid, recip):
        if recip in self.fail:
            return b'DSorry, no mailbox here by that name. (#5.1.1)\n'
        try:
            with open(qfn('mess', messid, SCRATCH_SPLIT), 'rb') as f:
                data = f.read()
        except OSError:
            return b'ZUnable to open the message. (#4.3.0)\n'
        line = json.dumps({'to': recip.decode('latin-1'),
                           'data': data.decode('latin-1')}) + '\n'
        fd = os.open(self.box.deliveries, os.O_WRONLY | os.O_APPEND
                     | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return b'Kdid 1+0+0/\n'


def deliver_started(s, spawn) -> bool:
    """The deliveries qmail-send started (comm_buf), made and reported."""
    made = False
    for c in (0, 1):
        buf = s.comm_buf[c]
        if buf:
            s.comm_buf[c] = b''
            slot, rest = buf[0], buf[1:].split(b'\0')
            messid = int(rest[0].split(b'/')[1])
            s.del_report(c, bytes((slot,)) + spawn(c, messid, rest[2]))
            made = True
    return made


def idle(s) -> bool:
    return not (os.listdir('todo') or s.pqchan[0] or s.pqchan[1]
                or s.pqdone or s.pqfail or s.pqsettle or s.passes != [None, None]
                or any(s.concurrencyused) or s.bg.pending)


def drain(s, spawn) -> bool:
    """qmail-send's loop without waiting: todo/ scan, passes, reports,
    until nothing is left to do.  False if it never gets there."""
    for _ in range(ROUNDS):
        s.recent = int(time.time()) + AHEAD
        batch = [parse_messid(name) for name in sorted(os.listdir('todo'))]
        s.preprocess_batch([m for m in batch if m is not None])
        s.pass_do()
        deliver_started(s, spawn)
        if idle(s):
            return True
    return False


class Deferred(background.Background):
    """Disk work that waits to be run, one piece at a time (run_one), the
    newest first: the overlap of threads made deterministic, with the
    latest work overtaking the earlier (D marks and finished jobs before
    the preprocessing's fsyncs)."""

    def __init__(self):
        super().__init__(inline=True)
        self.waiting = []

    def submit(self, work, then):
        self.waiting.append((work, then))
        self.pending += 1

    def run_one(self) -> bool:
        if not self.waiting:
            return False
        work, then = self.waiting.pop()
        self.pending -= 1
        then(work())
        return True


def drain_overlapped(s, spawn, alrm=False) -> bool:
    """drain(), with every delivery that can start made before the next
    piece of disk work: a new message's deliveries go out before its
    preprocessed files are durable, D marks wait behind them.  alrm: an
    ALRM each round (every retry due now)."""
    for _ in range(ROUNDS):
        s.recent = int(time.time()) + AHEAD
        if alrm:
            s.pqrun()
        if not s.preprocessing:
            batch = [parse_messid(name) for name in sorted(os.listdir('todo'))]
            batch = [m for m in batch if m is not None and m not in s.unsettled]
            if batch:
                s.preprocess_batch(batch)
        s.pass_do()
        if deliver_started(s, spawn) or s.bg.run_one():
            continue
        if idle(s):
            return True
    return False


def next_start(box, spawn):
    """What qmail-send does when it starts again, then 36 hours later."""
    s = new_send(box)
    s.pqstart()
    if not drain(s, spawn):
        raise RuntimeError('the queue never drains (%s)' % ' '.join(
            queue_files(box.queue)[:8]))
    later = int(time.time()) + send.OSSIFIED + AHEAD
    s.recent, s.cleanuptime, s.cleanupdir = later, 0, None
    s.cleanup_do()
    while s.cleanupdir is not None:
        s.cleanup_do()
    clean.sweep_pid(later)
    clean.sweep_intd(later, SCRATCH_SPLIT)


def queue_files(qdir) -> list:
    out = []
    for d in QUEUEDIRS:
        for dirpath, _, names in os.walk(os.path.join(qdir, d)):
            out += [os.path.relpath(os.path.join(dirpath, n), qdir)
                    for n in names]
    return sorted(out)


def read(path):
    try:
        with open(path, 'rb') as f:
            return f.read()
    except FileNotFoundError:
        return None


# ---- scenarios -----------------------------------------------------------------

class Scenario:
    """setup and run happen in one child (run watched by the recorder);
    recover in another; the checks in the parent, on the disk."""

    name = ''
    about = ''

    def enter(self, box):
        """The child's fds and cwd."""

    def setup(self, box):
        return None

    def run(self, box, state) -> bool:
        raise NotImplementedError

    def recover(self, box):
        raise NotImplementedError

    def check_crash(self, box, acked):
        return [], []

    def check_final(self, box, acked):
        return [], []


class QueueScenario(Scenario):
    """A scenario on the queue: qmail-queue, qmail-send, qmail-clean."""

    msgs = ()               # acknowledged before the scenario runs
    runmsg = None           # injected by the scenario (acked at its end)
    preprocessed = False    # setup also preprocesses msgs (S5)
    syncfs = False          # the whole filesystem synced at once where the
                            # code can (qmail-queued, qmail-send), else
                            # file by file (the set-uid qmail-queue; any
                            # program when much is dirty)

    def enter(self, box):
        os.chdir(box.queue)
        fd = os.open(box.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(fd, 0)
        os.close(fd)
        send.QueueClient = InProcessQueue
        durable.load_writeback()
        if not self.syncfs:
            durable._syncfs = False
        elif not durable._syncfs:
            raise RuntimeError('syncfs: none that reports errors on this kernel')
        else:
            durable._little_dirty = lambda: True    # whatever else is dirty

    def spawn(self, box):
        fail = set()
        for m in self.all_msgs():
            fail |= m.fail
        return Spawn(box, fail)

    def all_msgs(self):
        return list(self.msgs) + ([self.runmsg] if self.runmsg else [])

    def setup(self, box):
        for m in self.msgs:
            code = inject(m.body, m.envelope(), 0)
            if code:
                raise RuntimeError('setup: qmail-queue exited %d' % code)
        if self.preprocessed:
            s = new_send(box)
            for name in sorted(os.listdir('todo')):
                s.preprocess(int(name))
            if os.listdir('todo'):
                raise RuntimeError('setup: preprocessing failed')
        return [int(n) for n in sorted(os.listdir('todo'))]

    def recover(self, box):
        next_start(box, self.spawn(box))

    # -- checks --------------------------------------------------------------
    def bymsg(self):
        return {m.tag: m for m in self.all_msgs()}

    def check_crash(self, box, acked):
        """Right after the crash, before anything runs again."""
        fails = ['fsck: ' + str(p) for p in
                 fsck.check_queue(box.queue, SCRATCH_SPLIT, time.time())]
        known = self.bymsg()
        seen = set()
        for rel in queue_files(box.queue):
            d, *_, name = rel.split('/')
            if d != 'mess':
                continue
            messid = int(name)
            data = read(os.path.join(box.queue, rel))
            todo = read(os.path.join(box.queue, qfn('todo', messid, SCRATCH_SPLIT)))
            info = read(os.path.join(box.queue, qfn('info', messid, SCRATCH_SPLIT)))
            tag = tag_of(data)
            if todo is None and info is None:
                continue               # S2/S3: the 36-hour cleanup's
            seen.add(tag)
            fails += self.check_queued(box, messid, tag, data, todo, info, known)
        if acked and self.runmsg is not None and self.runmsg.tag not in seen:
            fails.append('acknowledged message %s is not in the queue'
                         % self.runmsg.tag.decode())
        return fails, []

    def check_queued(self, box, messid, tag, data, todo, info, known):
        fails = []
        where = 'message %d (%s)' % (messid, (tag or b'?').decode())
        if tag == BOUNCE:
            orig = [m for m in known.values() if m.fail]
            if not orig:
                return ['%s: a bounce of no failure' % where]
            if not bounce_ok(data, orig[0]):
                fails.append('%s: mess/ is not the whole bounce' % where)
            want = [b'F', b'T' + orig[0].sender]
        elif tag in known:
            msg = known[tag]
            if not queued_text_ok(data, msg):
                fails.append('%s: mess/ is not the whole message' % where)
            want = msg.records()
        else:
            return ['%s: a message nobody sent' % where]
        if todo is not None:
            got = [r for r in todo.split(b'\0')[:-1] if r[:1] not in (b'u', b'p')]
            if got != want or not todo.endswith(b'\0'):
                fails.append('%s: todo/ is not the whole envelope' % where)
            return fails
        if info != want[0] + b'\0':
            fails.append('%s: info/ is %r' % (where, info))
        if tag == BOUNCE:
            return fails
        for c, d in ((0, 'local'), (1, 'remote')):
            chan = read(os.path.join(box.queue, qfn(d, messid, SCRATCH_SPLIT)))
            if chan is None:
                continue
            addrs = [r[1:] for r in chan.split(b'\0')[:-1]]
            if addrs != known[tag].channels()[c] or not chan.endswith(b'\0'):
                fails.append('%s: %s/ is %r' % (where, d, chan))
        return fails

    def check_final(self, box, acked):
        """After the next start: everything delivered, the queue empty."""
        fails, notes = [], []
        left = queue_files(box.queue)
        if left:
            fails.append('left in the queue for good: %s' % ' '.join(left))
        known = self.bymsg()
        counts = {}
        for line in (read(box.deliveries) or b'').splitlines():
            rec = json.loads(line)
            to, data = rec['to'].encode('latin-1'), rec['data'].encode('latin-1')
            tag = tag_of(data)
            if tag == BOUNCE:
                orig = [m for m in known.values() if m.fail]
                if not orig or not bounce_ok(data, orig[0]):
                    fails.append('a broken bounce delivered to %s' % to.decode())
                elif set(re.findall(rb'^<([^>\n]*)>:$', data, re.M)) != set(orig[0].fail):
                    fails.append('a bounce to %s reports %s' % (to.decode(), b' '.join(
                        re.findall(rb'^<([^>\n]*)>:$', data, re.M)).decode()))
            elif tag not in known or not queued_text_ok(data, known[tag]):
                fails.append('a broken message delivered to %s' % to.decode())
            counts[tag, to] = counts.get((tag, to), 0) + 1
        for (tag, to), n in sorted(counts.items()):
            if n > 1:
                notes.append('%s delivered %d times to %s (INTERNALS 6: '
                             'at worst twice)' % (tag.decode(), n, to.decode()))
        for m in self.all_msgs():
            flagacked = m is not self.runmsg or acked
            good = [r for r in m.channels()[0] + m.channels()[1]
                    if r not in m.fail]
            got = [r for r in good if counts.get((m.tag, r))]
            if flagacked and len(got) < len(good):
                fails.append('acknowledged message %s lost for %s' % (
                    m.tag.decode(), b' '.join(r for r in good if r not in got)
                    .decode()))
            elif got and len(got) < len(good):
                fails.append('message %s delivered to only some recipients'
                             % m.tag.decode())
            if m.fail and (flagacked or got) \
                    and not counts.get((BOUNCE, m.sender)):
                fails.append('failure of %s to %s never bounced' % (
                    m.tag.decode(), b' '.join(sorted(m.fail)).decode()))
        return fails, notes


class InjectScenario(QueueScenario):
    name = 'queue'
    about = 'qmail-queue injects a message beside one already queued'
    msgs = (Msg(b'early', b'alice@' + FAR, [b'one@' + DOMAIN]),)
    runmsg = Msg(b'new', b'bob@' + FAR, [b'two@' + DOMAIN, b'x@' + FAR])

    def run(self, box, state):
        m = self.runmsg
        return inject(m.body, m.envelope(), 0) == 0


class QueuedScenario(InjectScenario):
    name = 'queued'
    about = ('a qmail-queued writer injects: its files and mess/ made '
             'durable by one syncfs of the filesystem')
    syncfs = True


class PreprocessScenario(QueueScenario):
    name = 'preprocess'
    about = ('qmail-send preprocesses todo/ (local and remote recipients), '
             'three messages in one batch')
    msgs = (Msg(b'pre', b'alice@' + FAR,
                [b'one@' + DOMAIN, b'two@' + DOMAIN, b'x@' + FAR]),
            Msg(b'pre2', b'bob@' + FAR, [b'two@' + DOMAIN]),
            Msg(b'pre3', b'carol@' + FAR, [b'y@' + FAR]))

    def run(self, box, state):
        s = new_send(box)
        s.preprocess_batch(state)
        return not os.listdir('todo')


class MarkdoneScenario(QueueScenario):
    name = 'markdone'
    about = 'deliveries reported K: markdone, then the message is done'
    msgs = (Msg(b'done', b'alice@' + FAR,
                [b'one@' + DOMAIN, b'two@' + DOMAIN, b'x@' + FAR]),)
    preprocessed = True

    def run(self, box, state):
        s = new_send(box)
        s.pqstart()
        return drain(s, self.spawn(box))


class BounceScenario(MarkdoneScenario):
    name = 'bounce'
    about = ('a delivery reported D: addbounce, markdone, messdone, '
             'injectbounce through qmail-queue, and the bounce delivered')
    msgs = (Msg(b'fails', b'bob@' + FAR,
                [b'nobody@' + DOMAIN, b'one@' + DOMAIN],
                fail=[b'nobody@' + DOMAIN]),)


class OverlapScenario(QueueScenario):
    name = 'overlap'
    about = ('qmail-send delivers new messages (one failure: a bounce) '
             'before their preprocessing is durable, then settles them '
             '(syncing the filesystem whole)')
    msgs = (Msg(b'soon', b'bob@' + FAR,
                [b'nobody@' + DOMAIN, b'one@' + DOMAIN, b'x@' + FAR],
                fail=[b'nobody@' + DOMAIN]),
            Msg(b'soon2', b'carol@' + FAR, [b'two@' + DOMAIN]))

    stale = {b'soon': b'one@' + DOMAIN, b'soon2': b'two@' + DOMAIN}
    syncfs = True
    direct_max = 0          # new messages delivered direct (send.Send.direct_max)
    direct_rcpt = send.DIRECT_RCPT  # and their recipients at most (Send.direct_rcpt)
    alrm = False            # retries made at once (drain_overlapped)

    def setup(self, box):
        """As if a crash had interrupted a run that had seen soon to one@
        and soon2 to two@ fail: bounce/ holds those stale paragraphs,
        which this run's preprocessing must remove for good (soon2 fails
        nothing now: a stale bounce/ of it come back would be mailed)."""
        state = super().setup(box)
        for messid in state:
            recip = self.stale.get(tag_of(read(qfn('mess', messid, SCRATCH_SPLIT)) or b''))
            if recip:
                with open(qfn('bounce', messid, SCRATCH_SPLIT), 'wb') as f:
                    f.write(send_rules.bounce_entry(recip, b'Stale.\n'))
                    os.fsync(f.fileno())
        fd = os.open('bounce', os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
        return state

    def run(self, box, state):
        """Ends with every message finished, nothing left for a restart."""
        s = new_send(box)
        s.direct_max = self.direct_max
        s.direct_rcpt = self.direct_rcpt
        s.bg = Deferred()
        for lane in s.lanes:
            lane.bg = s.bg
        return (drain_overlapped(s, self.spawn(box), self.alrm)
                and not [f for f in queue_files('.') if not f.startswith('mess/')])


class DirectScenario(OverlapScenario):
    name = 'direct'
    about = ('qmail-send delivers new local messages straight from todo/, '
             'writing no info/ nor local/; one failure spills its message '
             'to info/ (then a bounce)')
    msgs = (Msg(b'direct', b'alice@' + FAR, [b'one@' + DOMAIN, b'two@' + DOMAIN]),
            Msg(b'direct2', b'bob@' + FAR, [b'nobody@' + DOMAIN, b'one@' + DOMAIN],
                fail=[b'nobody@' + DOMAIN]))
    stale = {}
    syncfs = False
    direct_max = send.DIRECT_MAX
    direct_rcpt = 8         # the machinery for several (its marks, its spill)


class DeferOnce(Spawn):
    """Spawn, with each recipient in `defer` deferred at its first try."""

    def __init__(self, box, fail, defer):
        super().__init__(box, fail)
        self.defer = set(defer)

    def __call__(self, c, messid, recip):
        flag = os.path.join(self.box.root, 'deferred-' + recip.decode('latin-1'))
        if recip in self.defer and not os.path.exists(flag):
            open(flag, 'w').close()
            return b'Zmailbox busy, try later.\n'
        return super().__call__(c, messid, recip)


class DirectDeferScenario(DirectScenario):
    name = 'direct-defer'
    about = ('a message delivered direct, one recipient deferred once: '
             'it spills to info/ and local/ with the D marks of the others, '
             'and the retry delivers the rest')
    msgs = (Msg(b'deferred', b'alice@' + FAR,
                [b'one@' + DOMAIN, b'two@' + DOMAIN, b'three@' + DOMAIN]),)
    alrm = True

    def spawn(self, box):
        return DeferOnce(box, set(), [b'two@' + DOMAIN])


class QrmScenario(QueueScenario):
    name = 'qrm'
    about = ('qmail-qrm, qmail-send stopped: a preprocessed message and one '
             'still in todo/ removed whole, one recipient of another taken; '
             'the next start finishes what is left')
    msgs = (Msg(b'rm-all', b'alice@' + FAR, [b'one@' + DOMAIN, b'x@' + FAR]),
            Msg(b'rm-part', b'bob@' + FAR, [b'one@' + DOMAIN, b'two@' + DOMAIN,
                                            b'y@' + FAR]),
            Msg(b'keep', b'carol@' + FAR, [b'two@' + DOMAIN]))
    late = Msg(b'rm-todo', b'dave@' + FAR, [b'one@' + DOMAIN, b'z@' + FAR])
    preprocessed = True
    taken = {b'rm-all': None, b'rm-todo': None, b'rm-part': [b'two@' + DOMAIN]}

    def all_msgs(self):
        return list(self.msgs) + [self.late]

    def setup(self, box):
        state = super().setup(box)
        code = inject(self.late.body, self.late.envelope(), 0)
        if code:
            raise RuntimeError('setup: qmail-queue exited %d' % code)
        return state

    def run(self, box, state):
        from qmail import qrm
        said = []
        whole = qrm.Run(SCRATCH_SPLIT, said.append, [], ['alice@*', 'dave@*'],
                        [], False, live=False)
        part = qrm.Run(SCRATCH_SPLIT, said.append, [], ['bob@*'], ['two@*'],
                       False, live=False)
        for run in (whole, part):
            for messid in qrm.queued_ids(SCRATCH_SPLIT):
                run.take(messid, False)
        return (whole.code, whole.messages, part.code, part.recipients) == (0, 2, 0, 1)

    def check_crash(self, box, acked):
        # (the base's checks of the envelopes hold: D marks aside, what
        # is left of a message is as it was queued)
        return super().check_crash(box, False)

    def check_final(self, box, acked):
        """The queue empty; every recipient not chosen delivered once or
        twice; a chosen one delivered only if the removal did not finish
        (and then, for the message removed from todo/, to all of its
        recipients or to none)."""
        fails, notes = [], []
        left = queue_files(box.queue)
        if left:
            fails.append('left in the queue for good: %s' % ' '.join(left))
        counts = {}
        for line in (read(box.deliveries) or b'').splitlines():
            rec = json.loads(line)
            to, data = rec['to'].encode('latin-1'), rec['data'].encode('latin-1')
            tag = tag_of(data)
            if tag not in self.bymsg() or not queued_text_ok(data, self.bymsg()[tag]):
                fails.append('a broken message, or a bounce, delivered to %s' % to.decode())
            counts[tag, to] = counts.get((tag, to), 0) + 1
        for m in self.all_msgs():
            taken = self.taken.get(m.tag, ())
            got = [r for r in m.recips if counts.get((m.tag, r))]
            for r in m.recips:
                chosen = taken is None or r in taken
                if not chosen and r not in got:
                    fails.append('message %s lost for %s' % (m.tag.decode(), r.decode()))
                if chosen and r in got and acked:
                    fails.append('message %s delivered to %s after its removal'
                                 % (m.tag.decode(), r.decode()))
            if taken is None and m.tag == b'rm-todo' and got and len(got) < len(m.recips):
                fails.append('message %s delivered to only some recipients' % m.tag.decode())
        return fails, notes


class LocalScenario(Scenario):
    """qmail-local delivering a queued message (a regular file on fd 0)."""

    dotqmail = b''
    msg = Msg(b'local', b'bob@' + FAR, [USER + b'@' + DOMAIN])

    def argv(self, box):
        return [USER, os.fsencode(box.user), USER, b'', b'', DOMAIN,
                self.msg.sender, b'./Maildir/']

    def enter(self, box):
        fd = os.open(box.message, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
        fd = os.open(box.report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)          # (failure texts), as qmail-lspawn gives both
        os.close(fd)
        # As qmail-lspawn's workers: fd 0 is a queue file, so a retry
        # finds the exactly-once name of the attempt before.
        local_deliver.FROM_QUEUE = True

    def prepare(self, box):
        """The user's files, made by the parent with the scratch home."""
        with open(box.message, 'wb') as f:
            f.write(self.msg.body)
        with open(os.path.join(box.user, '.qmail'), 'wb') as f:
            f.write(self.dotqmail)

    def run(self, box, state):
        return local.main(self.argv(box)) == 0

    def recover(self, box):
        """qmail-send retries until qmail-local says K."""
        for _ in range(3):
            if local.main(self.argv(box)) == 0:
                return
        raise RuntimeError('qmail-local never succeeds: %r'
                           % (read(box.report) or b'')[-300:])

    def head(self):
        return (local.make_rpline(self.msg.sender)
                + local.make_dtline(USER, DOMAIN))


class MaildirScenario(LocalScenario):
    name = 'maildir'
    about = 'qmail-local delivers to two maildirs, exactly once'
    dotqmail = b'./Maildir/\n./Maildir2/\n'
    boxes = ('Maildir', 'Maildir2')

    def prepare(self, box):
        super().prepare(box)
        for md in self.boxes:
            for sub in ('', 'tmp', 'new', 'cur'):
                os.mkdir(os.path.join(box.user, md, sub), 0o700)

    def files(self, box, md):
        out = []
        for sub in ('new', 'cur'):
            d = os.path.join(box.user, md, sub)
            out += [os.path.join(d, n) for n in sorted(os.listdir(d))]
        return out

    def check_crash(self, box, acked):
        fails = []
        want = self.head() + self.msg.body
        for md in self.boxes:
            files = self.files(box, md)
            for path in files:
                if read(path) != want:
                    fails.append('%s: half-written %s' % (
                        md, os.path.relpath(path, box.user)))
            if len(files) > 1:
                fails.append('%s: %d files for one delivery' % (md, len(files)))
            if acked and not files:
                fails.append('%s: acknowledged delivery lost' % md)
        return fails, []

    def check_final(self, box, acked):
        fails, notes = self.check_crash(box, True)
        for md in self.boxes:
            tmp = os.listdir(os.path.join(box.user, md, 'tmp'))
            if tmp:
                notes.append('%s/tmp left with %s (the reader removes it '
                             'after 36 hours, maildir(5))' % (md, ' '.join(tmp)))
        return fails, notes


class MaildirSpareScenario(MaildirScenario):
    name = 'maildir-spare'
    about = ('qmail-local in a worker that made its next tmp/ file ahead: '
             'made, then used by the delivery, exactly once')

    def run(self, box, state):
        # As a qmail-lspawn worker after two deliveries to ./Maildir/:
        # the spare is made (a crash point of its own), then delivered into.
        os.chdir(box.user)
        where = b'./Maildir/'
        for _ in range(2):
            local_deliver.SPARE.delivered(where, os.stat(where),
                                          os.uname().nodename.encode()[:64])
        local_deliver.SPARE.prepare()
        assert local_deliver.SPARE.count() == 1
        ok = local.main(self.argv(box)) == 0
        assert local_deliver.SPARE.count() == 0     # the delivery took it
        return ok


class MboxScenario(LocalScenario):
    name = 'mbox'
    about = 'qmail-local appends to an mbox with mail in it, and to a new one'
    dotqmail = b'./mbox\n./newbox\n'
    old = (b'From alice@far.example Thu Jan  1 00:00:00 1970\n'
           b'Subject: already here\n\nan earlier delivery\n\n')

    def prepare(self, box):
        super().prepare(box)
        with open(os.path.join(box.user, 'mbox'), 'wb') as f:
            f.write(self.old)
            os.fsync(f.fileno())

    @staticmethod
    def undated(data):
        return re.sub(rb'(?m)^From (\S+) .*$', rb'From \1 DATE', data)

    def entry(self):
        quoted = b''.join(local_deliver.mbox_quote(self.msg.body.splitlines(True)))
        return self.undated(local.make_ufline(self.msg.sender, 0)
                            + self.head() + quoted)

    def copies(self, box, name, old):
        """How many whole copies of the entry follow old; None if the
        file is anything else."""
        data = self.undated(read(os.path.join(box.user, name)) or b'')
        old = self.undated(old)
        if not data.startswith(old):
            return None
        rest, entry, n = data[len(old):], self.entry(), 0
        while rest.startswith(entry):
            rest, n = rest[len(entry):], n + 1
        return None if rest else n

    def check(self, box, least, most):
        fails, notes = [], []
        for name, old in (('mbox', self.old), ('newbox', b'')):
            n = self.copies(box, name, old)
            if n is None:
                fails.append('%s: not the old mail and whole copies '
                             'of the new' % name)
            elif n < least:
                fails.append('%s: acknowledged delivery lost' % name)
            elif n > most:
                fails.append('%s: %d copies' % (name, n))
            elif n > 1:
                notes.append('%s: delivered twice (mbox: at least once)' % name)
        return fails, notes

    def check_crash(self, box, acked):
        return self.check(box, 1 if acked else 0, 1)

    def check_final(self, box, acked):
        return self.check(box, 1, 2)


SCENARIOS = [InjectScenario(), QueuedScenario(), PreprocessScenario(), MarkdoneScenario(),
             BounceScenario(), OverlapScenario(), DirectScenario(), DirectDeferScenario(),
             QrmScenario(),
             MaildirScenario(),
             MaildirSpareScenario(),
             MboxScenario()]
