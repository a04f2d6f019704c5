"""qmail-local's four kinds of delivery: maildir, mbox, program, forward.

Part of qmail-local (qmail/local.py), which decides what to deliver;
this module does the deliveries, each from the message on fd 0, which
is rewound first (qmail-local(8): fd 0 is a seekable file).

Every failure is a Failure carrying qmail-local's exit code (111
temporary, 100 permanent) and the report line qmail-local prints; the
texts are qmail's, since they reach logs and bounces.  A program's own
failure carries no text: the program has already said why on fd 1/2.

See: maildir(5), mbox(5), qmail-command(8), dot-qmail(5) "ERROR HANDLING".
"""

import errno
import hashlib         # at import: qmail-lspawn loads it once for every child
import fcntl
import os
import stat
import time

import _signal    # not `signal`: its enum import costs start-up time

from qmail.lib import auto, durable
from qmail.lib.error import error_str, is_temporary  # noqa: F401  (used here and by local, newrcpt)
from qmail.lib.qqtalk import QueueClient, queue_program

BUFSIZE = 65536
# maildir(5): the delivery must abort if it has not finished in 24 hours,
# well before a reader may clean tmp/ (files untouched for 36 hours).
MAILDIR_TIMEOUT = 86400
MAILDIR_TRIES = 3        # names tried in tmp/, two seconds apart (maildir(5))
LOCK_TIMEOUT = 30        # seconds an mbox may stay locked by someone else

# qmail-command(8): the exit codes that mean permanent failure (100 and
# sendmail's EX_USAGE, EX_DATAERR, EX_SOFTWARE, EX_PROTOCOL, EX_NOPERM,
# EX_CONFIG, and 112); 0 and 99 mean success; every other code, temporary.
PROGRAM_HARD = frozenset((100, 64, 65, 70, 76, 77, 78, 112))


class Failure(Exception):
    """Stop delivering: exit with self.code after printing self.text."""

    code = 111

    def __init__(self, text: bytes = b''):
        super().__init__(text)
        self.text = text


class TempFail(Failure):
    code = 111


class PermFail(Failure):
    code = 100


class _Alarm(Exception):
    """The alarm set around a step that may block forever went off."""


# ---- pure parts ----------------------------------------------------------

def gfrom(line: bytes) -> bool:
    """Whether a line needs >From quoting: >*From followed by a space."""
    return line.lstrip(b'>').startswith(b'From ')


def mbox_quote(chunks):
    """The message as mbox(5) stores it, from readline-sized pieces.

    Each piece is a whole line or a part of one (a line longer than the
    reader's limit arrives in several); the last may lack its newline.
    Yields >From-quoted output ending in the blank line mbox(5) requires:
    one newline after a complete last line, two after a partial one.
    """
    atstart = True
    partial = False
    for chunk in chunks:
        if not chunk:
            break
        # XXX a line start of more than BUFSIZE '>' is not seen whole;
        # such a line is never a From_ line anyone wrote.
        if atstart and gfrom(chunk):
            yield b'>'
        yield chunk
        atstart = chunk.endswith(b'\n')
        partial = not atstart
    yield b'\n\n' if partial else b'\n'


def looping(chunks, dtline: bytes) -> bool:
    """Whether the header holds exactly dtline (with its newline).

    Like qmail, compares each whole line up to the first line that is
    just a newline, or to the end of the message.  chunks are readline
    pieces with a limit above len(dtline), so a piece that starts a line
    and lacks a newline is a last partial line or longer than dtline.
    """
    atstart = True
    for chunk in chunks:
        complete = chunk.endswith(b'\n')
        if atstart and complete:
            if chunk == b'\n':
                return False            # end of header
            if chunk == dtline:
                return True
        atstart = complete
    return False


def maildir_unique(when: float, pid: int, seq: int, host: bytes) -> bytes:
    """The file name of one maildir delivery: unique on this host.

    The form is maildir(5)'s time.pid.host, its middle part written as
    https://cr.yp.to/proto/maildir.html advises: M microseconds, P the
    pid, Q the number of this delivery within the process (qmail forked
    a child for each, so its pid sufficed).  '/' and ':' in the host
    name would break the name, so they are written as octal escapes.
    """
    host = host.replace(b'/', b'\\057').replace(b':', b'\\072')
    sec = int(when)
    usec = int((when - sec) * 1000000)
    return b'%d.M%dP%dQ%d.%s' % (sec, usec, pid, seq, host)


def program_outcome(code: int) -> int:
    """A program's exit code as qmail-local reads it (qmail-command(8)):
    0 delivered, 99 delivered and skip the rest, 100 or 111 failure."""
    if code in (0, 99):
        return code
    if code in PROGRAM_HARD:
        return 100
    return 111


# ---- the message on fd 0 --------------------------------------------------

def rewind() -> None:
    try:
        os.lseek(0, 0, os.SEEK_SET)
    except OSError:
        raise TempFail(b'Unable to rewind message. (#4.3.0)') from None


def message_reader():
    """A buffered reader of the message from its start; fd 0 stays open."""
    rewind()
    return open(0, 'rb', buffering=BUFSIZE, closefd=False)


def message_lines(reader, limit: int = BUFSIZE):
    """Line pieces of at most limit bytes, until the end of the message."""
    return iter(lambda: reader.readline(limit), b'')


def check_loop(dtline: bytes) -> None:
    """Bounce a message that already has this Delivered-To line."""
    reader = message_reader()
    try:
        found = looping(message_lines(reader, max(BUFSIZE, len(dtline) + 1)),
                        dtline)
    except OSError as err:
        raise TempFail(b'Unable to read message: %s. (#4.3.0)'
                       % error_str(err)) from None
    if found:
        raise PermFail(b'This message is looping: '
                       b'it already has my Delivered-To line. (#5.4.6)')


class _alarm:
    """Raise _Alarm if the block takes more than seconds (qmail's alarm)."""

    def __init__(self, seconds: int):
        self.seconds = seconds
        self.old = None

    @staticmethod
    def _ring(signum, frame):
        raise _Alarm()

    def __enter__(self):
        self.old = _signal.signal(_signal.SIGALRM, self._ring)
        _signal.alarm(self.seconds)
        return self

    def __exit__(self, *exc):
        _signal.alarm(0)
        _signal.signal(_signal.SIGALRM, self.old or _signal.SIG_DFL)
        return False


# ---- maildir --------------------------------------------------------------

# Set by qmail-lspawn's delivery workers: fd 0 is a queue file, which a
# retry gives again.  qmail-local run by hand (a saved message, delivered
# once per run as with qmail) leaves it False.
FROM_QUEUE = False


def message_identity():
    """(inode, mtime in ns) of the message on fd 0 when it is a queue file:
    together they name this message instance (an inode is reused only
    after the file is gone, and a new file gets a new mtime).  None for
    anything else (a pipe, a file given by hand): then deliveries get
    the at-least-once names."""
    if not FROM_QUEUE:
        return None
    try:
        st = os.fstat(0)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_ino, st.st_mtime_ns


def maildir_name(ident, head: bytes, seq: int, host: bytes, content: bytes = b'') -> bytes:
    """The exactly-once file name of one maildir delivery.

    Derived from the message (ident, and content: the digest of its
    bytes, which tells two messages apart that a filesystem with
    1-second times gave one inode within a second), its recipient and
    sender (head: the Return-Path and Delivered-To lines) and the
    instruction's number in the .qmail file, so a repeated delivery of
    the same message to the same place finds the same name; still
    maildir(5)'s time.unique.host, unique on this host.
    """
    ino, mtime_ns = ident
    sec, nsec = divmod(mtime_ns, 1000000000)
    digest = hashlib.sha256(head + b'\0%d\0' % seq + content).hexdigest()[:20].encode()
    host = host.replace(b'/', b'\\057').replace(b':', b'\\072')
    return b'%d.M%dI%dX%s.%s' % (sec, nsec // 1000, ino, digest, host)


# maildir(5) info flags, in the ASCII order readers write them.
FLAGS = b'DFPRST'
# Up to this directory size (bytes), cur/ is read whole; beyond, only the
# names a reader makes from ours (name:2,flags) are tried, 64 stats.
SCAN_CUR_MAX = 1 << 16


def flag_suffixes():
    """Every ":2,<flags>" a reader may append, flags in ASCII order."""
    out = []
    for mask in range(1 << len(FLAGS)):
        out.append(b':2,' + bytes(f for i, f in enumerate(FLAGS) if mask >> i & 1))
    return out


FLAG_SUFFIXES = flag_suffixes()


NO_DIRECTORY = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def already_delivered(dirname: bytes, name: bytes) -> bool:
    """True if name is in new/, or in cur/ with or without its info.

    A small cur/ is read whole; a big one (a reader who keeps years of
    mail) would cost a directory scan per delivery, so then only the 64
    standard ":2,flags" forms are looked for; a reader writing another
    form of info makes a repeat possible again, as in qmail.
    """
    if os.path.lexists(os.path.join(dirname, b'new', name)):
        return True
    cur = os.path.join(dirname, b'cur')
    # A cur/ that is no directory (a file, a link that loops) holds no
    # message: qmail, which never looks there, delivers (it was deferred
    # at every try, until the bounce).
    try:
        st = os.stat(cur)
    except OSError as err:
        if err.errno in NO_DIRECTORY:
            return False
        raise
    if not stat.S_ISDIR(st.st_mode):
        return False
    if st.st_size > SCAN_CUR_MAX:
        return in_cur_by_name(cur, name)
    prefix = name + b':'
    try:
        with os.scandir(cur) as it:
            for entry in it:
                if entry.name == name or entry.name.startswith(prefix):
                    return True
    except PermissionError:
        # cur/ searchable only: the standard forms, by name (where it is
        # not even that, nothing is seen, and a retry may deliver again).
        return in_cur_by_name(cur, name)
    except OSError as err:
        if err.errno not in NO_DIRECTORY:
            raise
    return False


def in_cur_by_name(cur: bytes, name: bytes) -> bool:
    """name in cur/, bare or in one of the 64 standard ":2,flags" forms,
    looked for by name (no reading of cur/)."""
    base = os.path.join(cur, name)
    return any(os.path.lexists(base + suffix) for suffix in FLAG_SUFFIXES) \
        or os.path.lexists(base)


def sync_dir(dirpath: bytes, fd: int = -1, path: bytes = None) -> None:
    """Make dirpath's entries durable (durable.fsync_dir).  Where it may
    be written and searched but not read (a drop box's new/, the 1733
    directory of mboxes), it cannot be opened to be synced, and qmail,
    which syncs no directory, delivers there: then the file (fd, or path
    opened) is synced with its name (durable.sync_name: its own fsync on
    a journal's filesystem, a syncfs on ext4 without one); where neither
    can be trusted (a kernel before 5.17 on ext4 without a journal) the
    PermissionError stands, and the delivery is deferred."""
    try:
        durable.fsync_dir(dirpath)
    except PermissionError:
        if fd == -1 and path is None:
            return                      # nothing of ours to sync there
        own = fd == -1
        if own:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not durable.sync_name(fd):
                raise
        finally:
            if own:
                os.close(fd)


class Spare:
    """The next delivery's file in tmp/, made ahead of time.

    A process that delivers to maildirs one message after another (a
    qmail-lspawn worker, the user's) makes, while it waits for the next
    delivery, the tmp/ file of the next one to the maildir its last two
    deliveries went to: maildir(5) steps 2-4, done early.  Creating a
    file may cost more than the rest of the delivery (ext4 without a
    journal passes over every inode freed in the last minute in the
    directory's block groups: 0.1 to 0.6 ms where mail is read and
    deleted; a round trip on NFS), and the next message then waits for
    none of it.  (A nameless file, named at the delivery, would leave
    nothing behind; naming it then, while the previous message's
    changes to tmp/ are being written out, cost 0.1 ms of the 0.45 from
    the 250 to new/ here.)

    The file is empty and named as any delivery's (time.unique.host),
    so it is one more delivery's tmp/ file to anyone else.  It is used
    only if it is still ours (the same inode at the name and behind our
    descriptor, one link, nothing written) and the delivery goes to the
    same maildir (same directory, same host name in the file name);
    otherwise it is removed.  release() removes it when the process
    stops delivering (qmail-lspawn's workers also on TERM, HUP or INT
    while they wait); one killed otherwise leaves it, empty, for the
    reader to clean (maildir(5): files untouched for 36 hours).
    """

    PREPARE_TIMEOUT = 30        # seconds the making may take

    def __init__(self):
        self.last = None    # the last delivery's maildir: (absolute path, (st_dev, st_ino), host)
        self.want = None    # that, when the one before went there too
        self.held = None    # (that key, path, fd, (st_dev, st_ino) of the file)

    def count(self) -> int:
        """The descriptors held (for a worker's leak check)."""
        return 0 if self.held is None else 1

    @staticmethod
    def key(dirname: bytes, st, host: bytes):
        """What a spare is made for: maildir dirname (stat st, seen from
        the cwd) and the host name in the file's name.  OSError if the
        cwd cannot be named."""
        return (os.path.join(os.getcwdb(), dirname), (st.st_dev, st.st_ino), host)

    @staticmethod
    def ours(path: bytes, fd: int, ident):
        """(lstat of path, fstat of fd) while both are still the spare's
        inode ident, else None."""
        try:
            here, mine = os.lstat(path), os.fstat(fd)
        except OSError:
            return None
        if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino) == ident:
            return here, mine
        return None

    def delivered(self, dirname: bytes, st, host: bytes):
        """A delivery to maildir dirname (stat st) went through."""
        try:
            key = self.key(dirname, st, host)
        except OSError:
            key = None
        self.want = key if key is not None and key == self.last else None
        self.last = key

    def prepare(self):
        """Between deliveries: make the spare, if there is a maildir to
        make it in and none is held.  Never raises: a failure makes
        none, and none again until two deliveries in a row say where."""
        if self.want is None or self.held is not None:
            return
        path = None
        fd = -1
        try:
            with _alarm(self.PREPARE_TIMEOUT):
                unique = maildir_unique(time.time(), os.getpid(), 0, self.want[2])
                path = os.path.join(self.want[0], b'tmp', unique)
                fd = durable.create_excl(path, 0o644)
                st = os.fstat(fd)
        except Exception:
            if fd != -1:
                os.close(fd)
                _try_unlink(path)
            self.want = self.last = None
            return
        self.held = (self.want, path, fd, (st.st_dev, st.st_ino))

    def take(self, dirname: bytes, st, host: bytes):
        """(fd, unique) of the spare for a delivery to maildir dirname
        (stat st), or None; a spare that does not fit is removed."""
        if self.held is None:
            return None
        made_for, path, fd, ident = self.held
        self.held = None
        found = self.ours(path, fd, ident)
        try:
            if (found is not None and found[0].st_nlink == 1 and found[1].st_size == 0
                    and self.key(dirname, st, host) == made_for):
                return fd, os.path.basename(path)
        except OSError:
            pass
        os.close(fd)
        if found is not None:
            _try_unlink(path)
        return None

    def release(self):
        """Remove the spare, if one is held (the process is leaving)."""
        if self.held is None:
            return
        _, path, fd, ident = self.held
        self.held = None
        found = self.ours(path, fd, ident)
        os.close(fd)
        if found is not None:
            _try_unlink(path)


SPARE = Spare()


def _maildir_open(dirname: bytes, host: bytes, seq: int, st=None):
    """Create tmp/<unique>, or take the spare made for it; return (fd,
    unique).  maildir(5) steps 2-4."""
    if st is not None:
        got = SPARE.take(dirname, st, host)
        if got is not None:
            return got
    for loop in range(MAILDIR_TRIES):
        unique = maildir_unique(time.time(), os.getpid(), seq, host)
        try:
            fd = durable.create_excl(os.path.join(dirname, b'tmp', unique),
                                     0o644)
        except FileExistsError:
            # Another delivery with the same name: should never happen.
            if loop == MAILDIR_TRIES - 1:
                raise
            time.sleep(2)
            continue
        return fd, unique
    raise AssertionError('unreachable')


def _maildir_link(tmpname: bytes, newname: bytes) -> None:
    """Link tmp/<unique> to new/<unique>: the moment of delivery.

    A filesystem without hard links gets a rename instead; the name is
    unique, so the missing no-clobber check of link() costs nothing.
    """
    try:
        durable.link(tmpname, newname)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        if os.path.lexists(newname):
            raise
        durable.rename(tmpname, newname)


def deliver_maildir(dirname: bytes, head: bytes, host: bytes, seq: int,
                    who: bytes = b''):
    """Store head (Return-Path, Delivered-To) and the message in a maildir.

    Every failure is temporary, as in qmail: mail waits in the queue
    until the maildir is repaired.  The tmp/ file is removed on every
    path.  Crash windows: before the link, a file in tmp/ (the reader
    cleans it, maildir(5)) and the message still undelivered in the
    queue; after the fsync of new/, a delivered message that qmail-send
    has not heard of and delivers again.  Beyond qmail, that repeat is
    harmless: when the message is a queue file, its name in new/ comes
    from the message, the recipient and the instruction (maildir_name),
    so the retry finds the file in new/ or cur/ and counts it delivered:
    exactly once, unless the reader has already deleted it, or renames
    it in cur/ as the check reads (a flag change: a directory read may
    miss an entry being renamed, and the 64 names tried one by one may
    each miss it; a check repeated for that would double every
    delivery's cost to narrow a window that needs a crash and a flag
    change on that message in the same instant).  (So a
    recipient listed twice in one envelope gets one copy here, where
    qmail made two.)  who: the raw recipient where Delivered-To changed
    it (a line break made '_': local.raw_names), so two recipients that
    differ only there keep a copy each.  The name in tmp/ is each
    attempt's own: two deliveries of one message to one place at once
    (that recipient twice, handled by two workers) never touch each
    other's file, and the second to link finds the first's, whole, in
    new/.
    """
    rewind()
    try:
        st = os.stat(dirname)
    except OSError as err:
        if is_temporary(err):
            raise TempFail(b'Temporary error on maildir delivery. (#4.3.0)')
        raise TempFail(b'Unable to chdir to maildir. (#4.2.1)') from None
    if not stat.S_ISDIR(st.st_mode) or not os.access(dirname, os.X_OK):
        # qmail chdirs into it: one not to be searched fails there.
        raise TempFail(b'Unable to chdir to maildir. (#4.2.1)')
    tmpname = None
    fd = -1
    ident = message_identity()
    try:
        with _alarm(MAILDIR_TIMEOUT):
            fd, unique = _maildir_open(dirname, host, seq, st)
            tmpname = os.path.join(dirname, b'tmp', unique)
            content = hashlib.sha256() if ident is not None else None
            durable.write_all(fd, head)
            while True:
                try:
                    data = os.read(0, BUFSIZE)
                except OSError:
                    raise TempFail(b'Unable to read message. (#4.3.0)') \
                        from None
                if not data:
                    break
                durable.write_all(fd, data)
                if content is not None:
                    content.update(data)
            durable.fsync(fd)
            os.close(fd)    # NFS reports write errors here (maildir(5))
            fd = -1
            if content is not None:
                unique = maildir_name(ident, head + who, seq, host,
                                      content.digest())
                if already_delivered(dirname, unique):
                    # An earlier attempt got here, perhaps killed before
                    # its fsync of new/: durable now, before it counts.
                    newname = os.path.join(dirname, b'new', unique)
                    sync_dir(os.path.join(dirname, b'new'),
                             path=newname if os.path.lexists(newname) else None)
                    sync_dir(os.path.join(dirname, b'cur'))
                    return
            newname = os.path.join(dirname, b'new', unique)
            linked = False
            try:
                _maildir_link(tmpname, newname)
                linked = True
            except FileExistsError:
                if ident is None:
                    raise
                # The same delivery, made meanwhile: it is there, whole.
            try:
                sync_dir(os.path.join(dirname, b'new'), path=newname)
            except OSError:
                # Not durable, so not delivered.  With the exactly-once
                # name the file stays (whole: fsynced before its link):
                # the retry finds it and syncs new/ again; taken back here,
                # it could vanish under an attempt that had just counted
                # it delivered.  Any other name is taken back, or the
                # retry would make a second copy.
                if linked and ident is None:
                    _try_unlink(newname)
                raise
            SPARE.delivered(dirname, st, host)
    except _Alarm:
        raise TempFail(b'Timeout on maildir delivery. (#4.3.0)') from None
    except OSError:
        raise TempFail(b'Temporary error on maildir delivery. (#4.3.0)') \
            from None
    finally:
        if fd != -1:
            os.close(fd)
        if tmpname is not None:
            _try_unlink(tmpname)


def _try_unlink(path: bytes) -> None:
    try:
        durable.unlink(path)
    except OSError:
        pass


# ---- mbox ----------------------------------------------------------------

def _lock(fd: int) -> bool:
    """flock the mbox, waiting at most LOCK_TIMEOUT; False if unlockable."""
    try:
        with _alarm(LOCK_TIMEOUT):
            fcntl.flock(fd, fcntl.LOCK_EX)
    except _Alarm:
        raise TempFail(b'File has been locked for 30 seconds straight. '
                       b'(#4.3.0)') from None
    except OSError:
        return False     # qmail goes on unlocked, and cannot truncate
    return True


MBOX_REOPEN = 5         # opens of an mbox replaced while its lock was awaited


def _open_locked(fn: bytes):
    """(fd, locked): the mbox now at fn, opened for appending and locked
    (or not, where it cannot be: locked False).  One replaced while the
    lock was awaited (maildir2mbox writes a new mbox and renames it over
    the old one, which it holds locked meanwhile) is let go and the new
    one opened: appended to, the old one's copy would be lost with it."""
    for _ in range(MBOX_REOPEN):
        try:
            fd = durable.open_append(fn, 0o600, os.O_NONBLOCK)
        except OSError as err:
            raise TempFail(b'Unable to open %s: %s. (#4.2.1)'
                           % (fn, error_str(err))) from None
        try:
            locked = _lock(fd)
            if not locked or _still_named(fd, fn):
                return fd, locked
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise TempFail(b'Unable to lock %s: it is replaced again and again. (#4.3.0)' % fn)


def _still_named(fd: int, fn: bytes) -> bool:
    """Is the file open on fd still the one fn names?  (Yes where that
    cannot be told: the append goes on as before.)"""
    try:
        st = os.stat(fn)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


def mbox_gap(tail: bytes, size: int) -> bytes:
    """What goes before a new message's From_ line in an mbox of size
    bytes whose last bytes are tail: nothing where the last message
    ended as ours do (an empty line), else the line end and empty line
    it lacks.  An attempt killed mid-write leaves half a message; the
    next one's From_ line would have gone on after it, mid-line where
    the cut was mid-line, its copy then hidden from every reader."""
    if size == 0 or tail.endswith(b'\n\n') or (size == 1 and tail == b'\n'):
        return b''
    return b'\n' if tail.endswith(b'\n') else b'\n\n'


def _mbox_tail(fd: int, pos: int) -> bytes:
    """The last two bytes before pos of the file open on fd (for
    appending only: read through a second descriptor); b'\n\n' where
    they cannot be read (nothing added then).  The read leaves the
    access time alone where the owner may ask it (O_NOATIME): a reader
    that tells new mail by a modification time later than the access
    time (biff, a shell's MAILCHECK, mutt) would miss this delivery if
    both fell in one clock tick; qmail never read the file."""
    if pos == 0:
        return b''
    path = '/proc/self/fd/%d' % fd
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        rfd = os.open(path, flags | os.O_NOATIME)
    except OSError:                     # EPERM: not the file's owner
        try:
            rfd = os.open(path, flags)
        except OSError:
            return b'\n\n'
    try:
        return os.pread(rfd, 2, max(0, pos - 2))
    except OSError:
        return b'\n\n'
    finally:
        os.close(rfd)


def deliver_mbox(fn: bytes, head: bytes):
    """Append the message to an mbox file (mbox(5)), after head (From_,
    Return-Path, Delivered-To).  On trouble the file is truncated back to
    its old length, if it could be locked; a crash can still leave half
    a message (dot-qmail(5) warns of it), which the next delivery ends
    with an empty line before its own (mbox_gap)."""
    reader = message_reader()
    fd, flaglocked = _open_locked(fn)
    pos = 0
    try:
        pos = os.lseek(fd, 0, os.SEEK_END)
        buf = bytearray(mbox_gap(_mbox_tail(fd, pos), pos) + head)
        lines = message_lines(reader)
        for piece in mbox_quote(_reading(lines)):
            buf += piece
            if len(buf) >= BUFSIZE:
                durable.write_all(fd, buf)
                buf.clear()
        durable.write_all(fd, buf)
        durable.fsync(fd)
        # Its name, perhaps new (made now, or by an attempt killed before
        # this fsync, whose mbox this one found already there): Linux
        # makes it durable only with an fsync of the directory.
        sync_dir(os.path.dirname(fn) or b'.', fd=fd)
    except _ReadError as err:
        _truncate(fd, pos, flaglocked)
        raise TempFail(b'Unable to read message: %s. (#4.3.0)'
                       % error_str(err.err)) from None
    except OSError as err:
        _truncate(fd, pos, flaglocked)
        raise TempFail(b'Unable to write %s: %s. (#4.3.0)'
                       % (fn, error_str(err))) from None
    except BaseException:
        _truncate(fd, pos, flaglocked)
        raise
    finally:
        try:
            os.close(fd)
        except OSError:
            # After the fsync: the message is there, and a deferral now
            # would append it again (as qmail's mailfile, which ignores
            # close()).  Before it, the error above is what is told.
            pass


class _ReadError(Exception):
    """Reading the message failed (not writing the mbox)."""

    def __init__(self, err: OSError):
        super().__init__(err)
        self.err = err


def _reading(lines):
    """The line pieces, with a read error told apart from a write error."""
    while True:
        try:
            chunk = next(lines)
        except StopIteration:
            return
        except OSError as err:
            raise _ReadError(err) from None
        yield chunk


def _truncate(fd: int, pos: int, flaglocked: bool) -> None:
    if flaglocked:
        try:
            durable.truncate(fd, pos)
        except OSError:
            pass


# ---- program --------------------------------------------------------------

def deliver_program(command: bytes, env: dict) -> bool:
    """Run sh -c command in the cwd (the home directory) with the message
    on stdin and fd 1/2 shared with qmail-local (qmail-command(8)).
    Returns True for exit code 99 (ignore the remaining instructions).
    (posix_spawn, not a fork of this process: a tenth of the cost.  Its
    one trace: glibc's spawn leaves its two internal signals, 32 and 33,
    ignored in the program, which no program sees, as glibc sets its own
    handlers for them; qmail's fork and exec left them at default.)"""
    rewind()
    try:
        pid = os.posix_spawn(
            '/bin/sh', [b'/bin/sh', b'-c', command], env,
            setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGALRM),
            setsigmask=(),
        )
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.ENOMEM):
            raise TempFail(b'Unable to fork: %s. (#4.3.0)'
                           % error_str(err)) from None
        raise TempFail(b'Unable to run /bin/sh: %s. (#4.3.0)'
                       % error_str(err)) from None
    _, wstat = os.waitpid(pid, 0)
    if not os.WIFEXITED(wstat):
        raise TempFail(b'Aack, child crashed. (#4.3.0)')
    outcome = program_outcome(os.WEXITSTATUS(wstat))
    if outcome == 100:
        raise PermFail()
    if outcome == 111:
        raise TempFail()
    return outcome == 99


# ---- forward --------------------------------------------------------------

def forward(recips: list, dtline: bytes, newsender: bytes) -> int:
    """Re-inject the message, after dtline, to recips from newsender.

    Returns qmail-queue's pid, which qmail-local reports as "qp".
    qmail-queue runs with its cwd at the qmail home, as qmail's does;
    no delivery follows a forward, so qmail-local's cwd may move.
    """
    rewind()
    try:
        os.chdir(auto.QMAIL)
    except OSError:
        raise TempFail(b'Unable to forward message: '
                       b'qq trouble in home directory (#4.3.0).') from None
    qq = QueueClient(queue_program())
    qp = qq.pid or 0
    qq.put(dtline)
    while True:
        try:
            data = os.read(0, BUFSIZE)
        except OSError:
            qq.fail()
            break
        if not data:
            break
        qq.put(data)
    qq.from_(newsender)
    for recip in recips:
        qq.to(recip)
    qqx = qq.close()
    if not qqx:
        return qp
    text = b'Unable to forward message: %s.' % qqx[1:].encode()
    if qqx[0] == 'D':
        raise PermFail(text)
    raise TempFail(text)
