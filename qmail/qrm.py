"""qmail-qrm: take messages, or some of their recipients, out of the
queue, without a bounce (or expire them: -b).

Usage:    qmail-qrm [-n] [-b | -r recipient] [-s sender] [-S subject] [messid ...] [-]
Runs as:  root, while qmail-send runs or is stopped.
Chooses:  the messages numbered (as qmail-qread shows them, with or
          without the '#'; "-" reads more numbers from fd 0); with -s,
          those whose envelope sender matches (a shell pattern, or the
          address itself, case ignored; '<>' is the null sender of a
          bounce and qmail's #@[] of a double bounce); with -r, those
          with a recipient not yet done that matches; with -S, those
          whose Subject (unfolded, encoded words decoded, in the first
          HEAD_MAX bytes) matches a shell pattern, case ignored ('*'
          around a word: contains it).  -s, -r and -S may be given more
          than once (any of a kind matches, every kind given must); at
          least one of a number, -s, -r or -S is needed, so "-s '*'" is
          every message.
Removes:  without -r, the whole message: every recipient not yet done,
          and the failure reports recorded for those done (no bounce
          message is sent for it); with -r, only the matching recipients:
          the others are delivered as before, and any failure among them
          bounces as before.  -n: says what would go, changes nothing.
          -b: expire instead (postsuper -e): the whole message is made
          older than control/queuelifetime (expire()), so that qmail-send
          tries it once more at once (with it stopped, at its next
          start) and bounces to the sender every recipient
          not delivered then, in qmail's words for a message too long
          in the queue.  A message still in todo/ is waited for, or,
          with qmail-send stopped, left.  A held message (qmail-qhold)
          is released by either: it is to finish.
Reads:    HOME/queue: todo/, info/, local/, remote/, bounce/;
          lock/sendmutex (is qmail-send running?) and /proc/locks (its
          process number).
Writes:   While qmail-send runs: a D mark over each chosen recipient
          of local/ and remote/ (qmail-send's own mark for a recipient
          done), made durable, and for a whole message bounce/ removed;
          then, on qmail-send's lock/command (qmail.lib.sendcmd; as soon
          as the messages already preprocessed are marked, and again at
          the end), an R for each message marked (its recipient lists
          read again, a pass under way's too) and an N for each to
          finish (run now, held or not), so that those finish at once
          and nothing else is retried; only where qmail-send takes no
          commands (a home without the FIFO) an ALRM, which reads every
          list again and retries every deferred message now, as svc -a.
          qmail-qrm waits up to WAIT seconds for them to leave the
          queue.  A delivery already under way ends as it
          would have (a failure there is still reported); messages not
          yet preprocessed, or delivered straight from todo/ (a local
          delivery waiting for a slot), are looked at again for WAIT
          seconds in all, then left ("try again").
          While qmail-send is stopped: lock/sendmutex is held for the
          whole run, so that it cannot start meanwhile; a whole message's
          files are removed in an order that leaves, at any crash, the
          message either whole or with every recipient done (remove_whole);
          chosen recipients get their D marks.
          fd 1, a line per message ("#messid <sender>: removed", or a
          line per recipient taken, or why not), then a count.
Exits:    0 done (nothing chosen is no fault); 100 usage, or a message
          numbered is not in the queue; 111 something chosen could not
          be removed now (the line says why: run it again), or the queue
          could not be read.
Trusts:   nothing in the queue: names must be digits, envelopes are read
          with a size limit, and what is printed has its control
          characters replaced.
See:      qmail-qread, qmail-qhold, qmail-send (lock/command), INTERNALS.md (the queue's
          states), qmail-fsck.

The removal is qmail-send's own: a recipient is done once its record in
local/ or remote/ starts with D, and a message whose recipients are all
done is finished by qmail-send as after its last delivery.  So qmail-qrm
needs no new way to talk to a running qmail-send, and a crash at any
moment leaves a queue qmail-send finishes, with each chosen recipient
either still to be delivered or done.
"""

import fnmatch
import os
import sys
import time

from qmail.lib import auto, durable, sendcmd
from qmail.lib.error import error_str, exit_flushed, guard_stdout, interrupt_kills
from qmail.lib.qfile import parse_messid, qfn
from qmail.qread import parse_todo
from qmail.qread import printable as shown      # (as qmail-qread prints them)

WAIT = 30                   # seconds for qmail-send to take up and finish
POLL = 0.1                  # between looks while waiting
READ_MAX = 2 * (8 << 20)    # the longest envelope qmail-send may write
CHANNELS = ('local', 'remote')
HEAD_MAX = 65536            # bytes of a message looked at for its Subject
EXPIRE_SLACK = 60           # -b: older than queuelifetime by this much


class Trouble(Exception):
    """What keeps a message from being removed now: its line's text."""


# -- choosing (pure) --------------------------------------------------------

def matches(patterns, address: bytes) -> bool:
    """Does address match one of the shell patterns (case ignored), or
    equal it?  The null sender of a bounce, and qmail's #@[] of a double
    bounce, are matched by '<>' (and '')."""
    text = address.decode('utf-8', 'surrogateescape').lower()
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern in ('<>', ''):
            if text in ('', '#@[]'):    # (and qmail's double bounce)
                return True
        elif text == pattern or fnmatch.fnmatchcase(text, pattern):
            return True                 # (an address literal's [ ] as written)
    return False


def parse_ids(words):
    """Message numbers from qmail-qread's "#123" or "123"; None if a word
    is not one."""
    ids = []
    for word in words:
        messid = parse_messid(word[1:] if word.startswith('#') else word)
        if messid is None:
            return None
        ids.append(messid)
    return ids


def records_at(data: bytes):
    """(offset, record) of each \\0-ended record of an envelope."""
    pos = 0
    while True:
        end = data.find(b'\0', pos)
        if end == -1:
            return
        yield pos, data[pos:end]
        pos = end + 1


def chosen_recipients(data: bytes, rpatterns) -> list:
    """(offset, address) of each recipient not yet done (a T record) that
    is chosen: all of them without rpatterns."""
    return [(pos, rec[1:]) for pos, rec in records_at(data)
            if rec[:1] == b'T' and (not rpatterns or matches(rpatterns, rec[1:]))]


def subject_of(head: bytes) -> str:
    """The Subject field of a message's header, unfolded and with its
    encoded words (RFC 2047) decoded; '' if it has none."""
    lines = head.replace(b'\r\n', b'\n').split(b'\n')
    value = None
    for line in lines:
        if not line:
            break                       # the header's end
        if value is not None:
            if line[:1] in (b' ', b'\t'):
                value += b' ' + line.strip()
                continue
            break
        if line[:8].lower() == b'subject:':
            value = line[8:].strip()
    if value is None:
        return ''
    text = value.decode('utf-8', 'replace')
    try:
        from email.header import decode_header, make_header
        return str(make_header(decode_header(text)))
    except Exception:                   # (a broken encoded word: as it is)
        return text


def read_head(path: str, limit: int = HEAD_MAX) -> bytes:
    """The first limit bytes of a message (enough for its header)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def info_sender(data: bytes):
    """The sender info/ holds; None if it holds none (written in part)."""
    end = data.find(b'\0')
    if end == -1 or not data.startswith(b'F'):
        return None
    return data[1:end]


# -- the queue --------------------------------------------------------------

def read_envelope(path: str) -> bytes:
    """A queue file's bytes (up to READ_MAX); FileNotFoundError if gone.
    (Not a link followed, nor a FIFO waited on: lock/ and the queue's
    directories are qmailq's and qmails', and this runs as root.)"""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        chunks, size = [], 0
        while size <= READ_MAX:
            try:
                chunk = os.read(fd, 65536)
            except OSError as err:
                err.filename = path     # (a directory: EISDIR, named)
                raise
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > READ_MAX:
            raise Trouble('%s is longer than any envelope' % path)
        return b''.join(chunks)
    finally:
        os.close(fd)


def exists(path: str) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def queued_ids(split: int) -> list:
    """Every message number in todo/ and info/, in order."""
    ids = set()
    for d in ['todo'] + ['info/%d' % i for i in range(split)]:
        for name in os.listdir(d):
            messid = parse_messid(name)
            if messid is not None:
                ids.add(messid)
    return sorted(ids)


class Message:
    """One message as the queue holds it now: in todo/ (not yet
    preprocessed: its sender and recipients from there), or its sender
    from info/ and its recipient lists from local/ and remote/."""

    def __init__(self, messid: int, split: int):
        self.id, self.split = messid, split
        self.chans = {}
        try:
            self.sender, self.recips = parse_todo(read_envelope(self.fn('todo')))
            self.in_todo = True
            return
        except FileNotFoundError:       # (or preprocessed a moment ago)
            self.in_todo = False
        # todo/ gone: preprocessing wrote info/, local/ and remote/ whole
        # (and made them durable) before it went.
        sender = info_sender(read_envelope(self.fn('info')))
        if sender is None:
            raise Trouble('info/ holds no sender')
        self.sender = sender
        for c in CHANNELS:
            try:
                self.chans[c] = read_envelope(self.fn(c))
            except FileNotFoundError:
                pass
        self.recips = [rec[1:] for data in self.chans.values()
                       for _, rec in records_at(data) if rec[:1] == b'T']

    def fn(self, d: str) -> str:
        return qfn(d, self.id, self.split)

    def chosen(self, rpatterns) -> list:
        """(channel, offset, address) of the recipients to take."""
        return [(c, pos, addr) for c, data in self.chans.items()
                for pos, addr in chosen_recipients(data, rpatterns)]


def mark_done(msg: Message, chosen) -> None:
    """A D mark over each chosen recipient's record, durable (as
    qmail-send marks a recipient done).  qmail-send sees it when it next
    reads the file: at the message's next pass (a new message's first
    pass checks the file's ctime), and at once after an R command (or
    an ALRM)."""
    for c in CHANNELS:
        offsets = [pos for ch, pos, _ in chosen if ch == c]
        if not offsets:
            continue
        try:
            fd = os.open(msg.fn(c), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue                    # qmail-send finished it meanwhile
        try:
            for pos in offsets:
                durable.pwrite(fd, b'D', pos)
            durable.fsync(fd)
        finally:
            os.close(fd)


def expire(msg: Message, lifetime: int, now: float = None) -> None:
    """-b: the message made older than queuelifetime (info/'s time is its
    birth, as qmail-send and qmail-qread read it): at its next try
    qmail-send bounces each recipient that is not delivered then, with
    qmail's own words for a message too long in the queue, as C qmail
    admins do by setting that time back by hand.  A delivery under way
    ends as it would have."""
    now = time.time() if now is None else now
    born = now - lifetime - EXPIRE_SLACK
    os.utime(msg.fn('info'), (born, born), follow_symlinks=False)
    for c in CHANNELS:              # due now: tried at a start too, not at its retry
        try:
            os.utime(msg.fn(c), (now, now), follow_symlinks=False)
        except FileNotFoundError:
            pass


def unlink_synced(paths) -> None:
    """Remove the files that are there, then sync their directories."""
    dirs = []
    for path in paths:
        try:
            durable.unlink(path)
        except FileNotFoundError:
            continue
        dirs.append(os.path.dirname(path))
    for d in sorted(set(dirs)):
        durable.fsync_dir(d)


def remove_whole(msg: Message) -> None:
    """qmail-send stopped (its mutex held): the message's files go in an
    order whose every prefix is a queue qmail-send handles, with the
    message either whole or none of its recipients still to be tried.
    Not yet preprocessed: what an interrupted preprocessing left goes
    first (todo/ wins over it at a start), then todo/, the moment the
    message leaves the queue.  Preprocessed: every recipient marked done
    first (from then on a start only finishes it), then bounce/ and the
    recipient lists, then info/ (a message with no recipient list left
    is finished at a start), durably before mess/ (a new message may be
    given the inode, and a stale info/ would claim it)."""
    if msg.in_todo:
        unlink_synced([msg.fn('bounce'), msg.fn('local'), msg.fn('remote'), msg.fn('info')])
        unlink_synced([msg.fn('todo')])
    else:
        mark_done(msg, msg.chosen(None))
        unlink_synced([msg.fn('bounce'), msg.fn('local'), msg.fn('remote')])
        unlink_synced([msg.fn('info')])
    for d in ('intd', 'mess'):
        try:
            durable.unlink(msg.fn(d))
        except FileNotFoundError:
            pass


def mark_held(msg: Message, hold: bool, now: float = None) -> None:
    """Set or clear the hold mark (qmail-qhold's: sendcmd.HELD_BIT) on the
    message's recipient lists, durably; a message to finish here (removed,
    or expired) has it cleared, so that no start keeps it waiting.  A
    list whose mark is cleared is due now (its time, the next try a
    start reads, set to now): a release with qmail-send stopped is tried
    at its start."""
    for c in CHANNELS:
        try:
            fd = os.open(msg.fn(c), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            continue                    # (none for that channel, or finished meanwhile)
        try:
            mode = os.fstat(fd).st_mode & 0o7777
            want = mode | sendcmd.HELD_BIT if hold else mode & ~sendcmd.HELD_BIT
            if want != mode:
                os.fchmod(fd, want)
                if not hold:
                    due = time.time() if now is None else now
                    os.utime(fd, (due, due))
                durable.fsync(fd)
        finally:
            os.close(fd)


def drop_bounce(msg: Message) -> None:
    """qmail-send running: the failures recorded for the message go, so
    that no bounce is sent when it finishes."""
    unlink_synced([msg.fn('bounce')])


def mutex_holder(qdir: str):
    """The process that holds qmail-send's mutex (an flock, listed in
    /proc/locks by device and inode), or None."""
    try:
        st = os.stat(os.path.join(qdir, 'lock', 'sendmutex'))
        with open('/proc/locks', 'rb') as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return None
    want = '%02x:%02x:%d' % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        fields = line.decode('ascii', 'replace').split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" ("->" if blocked)
        if '->' in fields or len(fields) < 6 or fields[1] != 'FLOCK':
            continue
        if fields[5] == want and fields[4].isdigit():
            return int(fields[4])
    return None


def is_send(pid: int) -> bool:
    """Is pid qmail-send?  Its title says so (setproctitle), or, where
    the title could not be set, its arguments: a script named qmail-send
    or qmail-start (which becomes qmail-send).  The mutex may be held by
    another (qmail-fsck -r, a qmail-qrm while qmail-send is stopped),
    and ALRM would kill it."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            args = f.read(1 << 16).split(b'\0')
    except OSError:
        return False
    if args[0].split(b' ')[0] == b'qmail-send':
        return True
    return any(os.path.basename(a) in (b'qmail-send', b'qmail-start') for a in args[1:3])


def chooses(msg: Message, spatterns, rpatterns, subjects) -> bool:
    """Is the message chosen: its sender by spatterns, a recipient not
    yet done by rpatterns, its Subject by subjects (lowercased shell
    patterns)?  Each kind given must match."""
    if spatterns and not matches(spatterns, msg.sender):
        return False
    if rpatterns and not any(matches(rpatterns, r) for r in msg.recips):
        return False
    if subjects:
        subject = subject_of(read_head(msg.fn('mess'))).lower()
        if not any(fnmatch.fnmatchcase(subject, p) for p in subjects):
            return False
    return True


# -- the run ----------------------------------------------------------------

class Run:
    """One qmail-qrm run: take() each message; those still in todo/
    while qmail-send runs are taken by take_later(), after tell(), with
    one deadline for them all; then finish()."""

    def __init__(self, split, say, ids, spatterns, rpatterns, dry, live, wait=WAIT,
                 qdir='.', subjects=(), bounce=False, lifetime=604800):
        self.split, self.say = split, say
        self.bounce = bounce
        self.lifetime = lifetime
        self.subjects = [p.lower() for p in subjects]
        self.ids, self.spatterns, self.rpatterns = ids, spatterns, rpatterns
        self.dry, self.live, self.wait, self.qdir = dry, live, wait, qdir
        self.code = 0
        self.messages = self.recipients = 0
        self.finishing = []         # whole messages qmail-send is to finish
        self.untold = []            # commands for what was marked since the last tell
        self.later = []             # message numbers still in todo/
        self.seen = set()           # numbered messages seen in the queue
        self.told = False           # qmail-send was told (commands, or an ALRM)
        self.warned = False         # (that it could not be told: said once)

    def fault(self, code: int) -> None:
        self.code = max(self.code, code)

    def look(self, messid: int):
        """The message, or None if it is not in the queue."""
        try:
            return Message(messid, self.split)
        except FileNotFoundError:
            return None

    def chooses(self, msg: Message) -> bool:
        return chooses(msg, self.spatterns, self.rpatterns, self.subjects)

    def take(self, messid: int, named: bool, last: bool = True) -> bool:
        """Choose and remove one message, saying what became of it;
        False if it is still in todo/ and qmail-send runs (to be tried
        again: take_later), unless this is the last look."""
        try:
            msg = self.look(messid)
            chosen = msg is not None and self.chooses(msg)
        except (OSError, Trouble) as err:
            self.trouble(messid, err)
            return True
        if msg is None:
            if messid in self.seen:
                self.say('#%d: delivered before it could be removed' % messid)
                self.fault(100)
            elif named:
                self.say('#%d: not in the queue' % messid)
                self.fault(100)
            return True
        self.seen.add(messid)
        if not chosen:
            if named:
                self.say('#%d <%s>: not chosen by -s or -r' % (messid, shown(msg.sender)))
            return True
        if msg.in_todo and not self.dry and (self.live or self.rpatterns or self.bounce):
            # Not yet preprocessed (or delivered straight from todo/): its
            # recipient lists do not exist yet.  qmail-send makes them in
            # a moment, unless this delivery succeeds first.
            if self.live and not last:
                return False
            self.say('#%d <%s>: still in todo/ (%s): not removed, try again'
                     % (messid, shown(msg.sender),
                        'being delivered or preprocessed' if self.live
                        else 'qmail-send has not preprocessed it: start it first'))
            self.fault(111)
            return True
        try:
            self.remove(msg)
        except (OSError, Trouble) as err:
            self.trouble(messid, err)
        return True

    def take_all(self, wanted, named: bool) -> None:
        for messid in wanted:
            if not self.take(messid, named, last=False):
                self.later.append(messid)
        if self.later:
            self.tell()
        self.take_later(named)
        self.tell()

    def take_later(self, named: bool) -> None:
        """Messages still in todo/: looked at again until they are
        preprocessed or gone, WAIT seconds for them all."""
        deadline = time.monotonic() + self.wait
        while self.later:
            last = time.monotonic() >= deadline
            self.later = [m for m in self.later if not self.take(m, named, last)]
            if self.later:
                time.sleep(POLL)

    def remove(self, msg: Message) -> None:
        label = '#%d <%s>' % (msg.id, shown(msg.sender))
        verb = 'would remove' if self.dry else 'removed'
        if self.bounce:
            verb = 'would expire' if self.dry else \
                'expired (what its next try does not deliver bounces)'
            if not self.dry:
                expire(msg, self.lifetime)
                mark_held(msg, False)
                self.untold.append(sendcmd.line(b'N', msg.id))
            self.say('%s: %s' % (label, verb))
            self.messages += 1
            return
        if not self.rpatterns:
            if not self.dry:
                if self.live:
                    mark_done(msg, msg.chosen(None))
                    drop_bounce(msg)
                    mark_held(msg, False)
                    self.finishing.append(msg)
                    self.untold += [sendcmd.line(b'R', msg.id), sendcmd.line(b'N', msg.id)]
                else:
                    remove_whole(msg)
            self.say('%s: %s' % (label, verb))
            self.messages += 1
            return
        if msg.in_todo:                 # (-n only: where they go is not known yet)
            chosen = [('todo', 0, r) for r in msg.recips if matches(self.rpatterns, r)]
        else:
            chosen = msg.chosen(self.rpatterns)
            if not self.dry and chosen:
                mark_done(msg, chosen)
                # Its last recipients to go: it is to finish now (N), not at
                # its next retry (a review: hours later, its bounce too).
                last = len(chosen) == len(msg.chosen(None))
                self.untold.append(sendcmd.line(b'R', msg.id))
                if last:
                    self.untold.append(sendcmd.line(b'N', msg.id))
        for c, _, addr in chosen:
            self.say('%s: %s %s %s' % (label, verb, c, shown(addr)))
        self.recipients += len(chosen)

    def trouble(self, messid: int, err) -> None:
        why = err if isinstance(err, Trouble) else '%s%s' % (
            err.filename + ': ' if getattr(err, 'filename', None) else '',
            error_str(err).decode())
        self.say('#%d: trouble: %s: not removed, try again' % (messid, why))
        self.fault(111)

    def tell(self) -> None:
        """qmail-send running: the commands for the messages marked now
        (lock/command: read again, and run now those to finish), so that
        it finishes them at once, not at their next retries.  Where it
        takes no commands (a home without the FIFO), an ALRM: every
        recipient list read again, every message retried now."""
        if not self.live or self.dry or not self.untold:
            return
        commands, self.untold = self.untold, []
        if sendcmd.send(self.qdir, commands):
            self.told = True
            return
        pid = mutex_holder(self.qdir)
        if pid is not None and is_send(pid):
            try:
                os.kill(pid, 14)            # SIGALRM
                self.told = True
                return
            except OSError:
                pass
        if self.warned:
            return
        self.warned = True
        if pid is not None:
            self.say('queue/lock/sendmutex is held by pid %d, not qmail-send (qmail-fsck '
                     '-r? another qmail-qrm?): what is marked goes when qmail-send next '
                     'looks at it' % pid)
        else:
            self.say('qmail-send not found: what is marked goes at its next '
                     'retry (or at once: svc -a on qmail-send)')

    def finish(self) -> None:
        """Whole messages marked: waited for until qmail-send has
        finished them (info/ gone), WAIT seconds."""
        if not self.told:
            return
        left = list(self.finishing)
        deadline = time.monotonic() + self.wait
        while left and time.monotonic() < deadline:
            time.sleep(POLL)
            left = [m for m in left if exists(m.fn('info'))]
        for m in left:
            self.say('#%d: marked; still in the queue after %d seconds '
                     '(a delivery under way ends first)' % (m.id, self.wait))

    def summary(self) -> str:
        what = []
        if self.messages or not self.rpatterns:
            what.append('%d message%s' % (self.messages, '' if self.messages == 1 else 's'))
        if self.rpatterns:
            what.append('%d recipient%s' % (self.recipients,
                                            '' if self.recipients == 1 else 's'))
        verb = ('expired', 'would expire') if self.bounce else \
            ('removed', 'would be removed')
        return '%s %s' % (' and '.join(what), verb[self.dry])


def usage(say) -> int:
    say('usage: qmail-qrm [-n] [-b | -r recipient] [-s sender] [-S subject] [messid ...] [-]')
    return 100


def parse_selection(argv, flags: str):
    """The arguments qmail-qrm and qmail-qhold share: (the flag letters
    of flags given, a set; spatterns, rpatterns, subjects, ids), or None
    for a usage error (nothing chosen included)."""
    seen, spatterns, rpatterns, subjects = set(), [], [], []
    args = list(argv)
    while args and args[0].startswith('-') and args[0] != '-':
        opt = args.pop(0)
        if opt == '--':
            break
        i = 1
        while i < len(opt):
            ch = opt[i]
            if ch in flags:
                seen.add(ch)
                i += 1
                continue
            if ch not in 'srS':
                return None
            value = opt[i + 1:]
            if not value:
                if not args:
                    return None
                value = args.pop(0)
            {'s': spatterns, 'r': rpatterns, 'S': subjects}[ch].append(value)
            break
    if '-' in args:                     # more numbers on fd 0 (a long list)
        args = [a for a in args if a != '-'] + stdin_words()
        if not args:
            return None
    ids = parse_ids(args)
    if ids is None or not (ids or spatterns or rpatterns or subjects):
        return None
    return seen, spatterns, rpatterns, subjects, ids


def parse_args(argv):
    """(dry, spatterns, rpatterns, ids, subjects, bounce), or None for a
    usage error."""
    parsed = parse_selection(argv, 'nb')
    if parsed is None:
        return None
    seen, spatterns, rpatterns, subjects, ids = parsed
    if 'b' in seen and rpatterns:
        return None                     # (-b is for whole messages)
    return 'n' in seen, spatterns, rpatterns, ids, subjects, 'b' in seen


def stdin_words(limit: int = 1 << 24) -> list:
    """The words on fd 0 (message numbers: qmail-qread's output cut to
    them, say), up to limit bytes."""
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        return ['not-a-number']         # (a usage error, not a part of a list)
    return data.decode('ascii', 'replace').split()


def main(argv=None, say=None) -> int:
    say = say or say_line
    parsed = parse_args(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        return usage(say)
    dry, spatterns, rpatterns, ids, subjects, bounce = parsed

    def make_run(live):
        from qmail.lib import control
        lifetime = control.Controls(os.path.join(auto.QMAIL, 'control')).int(
            'queuelifetime', 604800)
        return Run(auto.SPLIT, say, ids, spatterns, rpatterns, dry, live=live,
                   subjects=subjects, bounce=bounce, lifetime=lifetime)
    return in_queue(say, dry, ids, make_run)


def in_queue(say, dry: bool, ids, make_run) -> int:
    """What qmail-qrm and qmail-qhold do around their choice: as root, in
    HOME/queue, with lock/sendmutex held unless qmail-send holds it
    (then live) or this is a dry run; make_run(live) gives the run, which
    takes the messages numbered (every queued one without), finishes, and
    says its summary.  The exit code."""
    if os.geteuid() != 0:
        say('fatal: must be run as root')
        return 111
    qdir = os.path.join(auto.QMAIL, 'queue')
    try:
        os.chdir(qdir)
    except OSError as err:
        say('fatal: unable to switch to %s: %s' % (qdir, error_str(err).decode()))
        return 111
    os.umask(0o077)
    from qmail.fsck import hold_sendmutex
    mutex = None if dry else hold_sendmutex('.')
    try:
        run = make_run(mutex is None)
        try:
            wanted = ids if ids else queued_ids(auto.SPLIT)
        except OSError as err:
            say('fatal: unable to read the queue: %s%s' % (
                err.filename + ': ' if err.filename else '', error_str(err).decode()))
            return 111
        run.take_all(sorted(set(wanted)), bool(ids))
        run.finish()
        say(run.summary())
        return run.code
    finally:
        if mutex is not None:
            os.close(mutex)


def say_line(text: str) -> None:
    sys.stdout.write('qmail-qrm: %s\n' % text)
    sys.stdout.flush()


def run_program(main, say_line, name: str):
    """Run main() as the program name: its exit code, a write error on
    fd 1 one line on fd 2 and 111, anything else one line and 111, never
    a traceback."""
    guard_stdout()                  # a full disk or closed fd 1: one line, 111
    interrupt_kills()
    try:
        code = main()
    except OSError as err:          # stdout itself, most likely
        try:
            os.write(2, b'%s: fatal: unable to write: %s\n' % (name.encode(), error_str(err)))
        except OSError:
            pass
        code = 111
    except Exception as err:        # last resort: never a traceback
        try:
            say_line('fatal: internal error: %s' % type(err).__name__)
        except OSError:
            pass
        code = 111
    exit_flushed(code, name)


def run():
    run_program(main, say_line, 'qmail-qrm')


if __name__ == '__main__':
    run()
