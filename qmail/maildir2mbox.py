"""maildir2mbox: move mail from a maildir to an mbox.

Runs as:  the mailbox's owner, with no arguments.
Reads:    MAILDIR (the maildir; we chdir there, so relative MAIL and
          MAILTMP are taken from it), MAIL (the mbox), MAILTMP (a file
          it may overwrite, on MAIL's filesystem); MAILDIR/new and
          MAILDIR/cur, oldest first.
Writes:   MAILTMP: MAIL's old contents, then each message in mbox(5)
          form -- a From_ line made from its Return-Path, ">From "
          quoting, a blank line after it; then renames MAILTMP to MAIL.
Removes:  the messages moved, only after MAIL is safely replaced;
          files in MAILDIR/tmp untouched for 36 hours.
Locks:    MAIL, with flock, for as long as it works (mail readers);
          not against a second maildir2mbox.
Exits:    0 done, or nothing new; 111 any trouble, MAIL and the maildir
          unchanged (a message that cannot be unlinked afterwards is
          only a warning: it will be moved twice).
See:      maildir2mbox(1), maildir(5), mbox(5).
"""

import errno
import fcntl
import os
import stat
import sys
import time

from qmail.lib import durable
from qmail.except_ import errstr, internal_bug, say

FATAL = b'maildir2mbox: fatal: '
WARNING = b'maildir2mbox: warning: '
BUFSIZE = 65536
RETURN_PATH_MAX = 1 << 20     # a first line held whole for its sender

# maildir(5): a file in tmp/ whose atime is this old is a writer's
# leftover, safe to remove.
TMP_STALE = 129600      # 36 hours

DAYS = (b'Mon', b'Tue', b'Wed', b'Thu', b'Fri', b'Sat', b'Sun')
MONTHS = (b'Jan', b'Feb', b'Mar', b'Apr', b'May', b'Jun',
          b'Jul', b'Aug', b'Sep', b'Oct', b'Nov', b'Dec')


class Fatal(Exception):
    def __init__(self, text: bytes):
        super().__init__(text)
        self.text = text


# ---------------------------------------------------------------- mbox form

def myctime(t: int) -> bytes:
    """qmail's myctime: ctime(3)'s form in GMT, day of month two digits."""
    tm = time.gmtime(t)
    return b'%s %s %02d %02d:%02d:%02d %d\n' % (
        DAYS[tm.tm_wday], MONTHS[tm.tm_mon - 1], tm.tm_mday,
        tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_year)


def ufline(first: bytes, when: int) -> bytes:
    """The From_ line for a message whose first line is first (with its
    newline if it had one), delivered at when.

    "Return-Path: <addr>" gives "From addr", spaces and tabs as "-";
    "Return-Path: <>" gives MAILER-DAEMON; anything else XXX.
    """
    sender = b'XXX'
    if first.endswith(b'\n') and first.startswith(b'Return-Path: <'):
        if first[14:15] == b'>':
            sender = b'MAILER-DAEMON'
        else:
            # Up to the ">\n" that should end it, as maildir2mbox.c does.
            sender = first[14:-2].replace(b' ', b'-').replace(b'\t', b'-')
    return b'From ' + sender + b' ' + myctime(when)


def gfrom(line: bytes) -> bool:
    """A line an mbox reader could take for a From_ line, perhaps
    already quoted: any number of '>' and then "From "."""
    return line.lstrip(b'>').startswith(b'From ')


def mbox_lines(pieces, when: int):
    """The mbox form of a message given as pieces of its lines, in order
    (whole lines, or a long line in several pieces; a newline only at a
    piece's end, as readline(limit) gives them): From_ line, the lines
    with >From quoting, a blank line.  A last line without a newline
    gets one.  (maildir2mbox.c drops such a line: a bug.)

    Memory stays bounded whatever the lines' length: a line's leading
    '>'s are counted, not held, until the bytes after them decide its
    quoting; a first line that is a Return-Path is held whole up to
    RETURN_PATH_MAX, for the From_ line's sender."""
    first = True
    start = (0, b'')    # a line's beginning: ('>'s, up to 5 bytes after them)
    pieces = iter(pieces)
    for piece in pieces:
        if first:
            if piece.startswith(b'Return-Path: <'):
                piece = first_line(piece, pieces)
            yield ufline(piece, when)
            first = False
        if start is None:                   # within a line
            yield piece
        else:
            gts, head = start
            if not head:
                rest = piece.lstrip(b'>')
                gts += len(piece) - len(rest)
            else:
                rest = piece
            take = 5 - len(head)
            head, rest = head + rest[:take], rest[take:]
            if len(head) < 5 and b'\n' not in head:
                start = gts, head           # undecided: the next piece tells
                continue
            yield from line_start(gts, head)
            yield rest
            piece = rest or head
        start = (0, b'') if piece.endswith(b'\n') else None
    if first:
        yield ufline(b'', when)
    if start is None:                       # a last line without its newline
        yield b'\n'
    elif start != (0, b''):                 # one too short to decide, likewise
        yield from line_start(*start)
        yield b'\n'
    yield b'\n'


def first_line(piece: bytes, pieces) -> bytes:
    """piece with the rest of its line from pieces, up to
    RETURN_PATH_MAX bytes (a longer one is then a piece of its line, and
    ufline() gives XXX, as for any line without its newline)."""
    while not piece.endswith(b'\n') and len(piece) < RETURN_PATH_MAX:
        more = next(pieces, b'')
        if not more:
            break
        piece += more
    return piece


def line_start(gts: int, head: bytes):
    """A line's beginning, its '>'s given as a count (head holds none
    at its start): quoted if they and head make a From_ line, the '>'s
    written a buffer at a time."""
    if gfrom(head):
        yield b'>'
    while gts > 0:
        yield b'>' * min(gts, BUFSIZE)
        gts -= BUFSIZE
    yield head


def message_pieces(f):
    """A message file's lines, a long one in pieces of at most BUFSIZE."""
    while True:
        piece = f.readline(BUFSIZE)
        if not piece:
            return
        yield piece


# ---------------------------------------------------------------- the maildir

def maildir_chdir(env) -> None:
    maildir = env.get(b'MAILDIR')
    if maildir is None:
        raise Fatal(b'MAILDIR not set')
    try:
        os.chdir(maildir)
    except OSError as err:
        raise Fatal(b'unable to chdir to ' + maildir + b': ' + errstr(err))


def maildir_clean(now: int) -> None:
    """Remove tmp/ files untouched for TMP_STALE seconds; errors ignored.
    A tmp that is a symbolic link is left alone: its old files are not
    this maildir's (root running the tool for a user would remove them)."""
    try:
        if not stat.S_ISDIR(os.lstat(b'tmp').st_mode):
            return
        names = os.listdir(b'tmp')
    except OSError:
        return
    for name in names:
        if name.startswith(b'.'):
            continue
        path = b'tmp/' + name
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and now > st.st_atime + TMP_STALE:
                os.unlink(path)
        except OSError:
            pass


def maildir_scan(subdirs, now: int) -> list:
    """[(mtime, path)] of the messages in subdirs, oldest first.

    A message from this very second is left for the next run: another
    could still arrive in the same second and be put before it.
    """
    found = []
    for sub in subdirs:
        try:
            names = os.listdir(sub)
        except OSError as err:
            raise Fatal(b'unable to scan $MAILDIR/' + sub + b': '
                        + errstr(err))
        for name in names:
            if name.startswith(b'.'):
                continue
            path = sub + b'/' + name
            try:
                st = os.stat(path)
            except OSError:
                continue
            # Only files: opening a FIFO someone left there would wait
            # for a writer for ever (with MAIL locked).
            if stat.S_ISREG(st.st_mode) and int(st.st_mtime) < now:
                found.append((int(st.st_mtime), path))
    found.sort()
    return found


# ---------------------------------------------------------------- moving

def copy_fd(infd: int, out, name: bytes) -> None:
    """The old mbox, whole; ended by a newline if it lacked one (else the
    first message's From_ line would join its last line, and readers
    would take that message as part of the one before)."""
    last = b'\n'
    while True:
        try:
            chunk = os.read(infd, BUFSIZE)
        except OSError as err:
            raise Fatal(b'unable to read ' + name + b': ' + errstr(err))
        if not chunk:
            if last != b'\n':
                out(b'\n')
            return
        out(chunk)
        last = chunk[-1:]


def open_message(path: bytes):
    """A message file of the scan, read-only, never waiting (a FIFO
    put there since the scan: reading it then gives end of file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    return os.fdopen(fd, 'rb', buffering=BUFSIZE)


def append_message(path: bytes, when: int, out) -> None:
    try:
        f = open_message(path)
    except OSError as err:
        raise Fatal(b'unable to read $MAILDIR/' + path + b': ' + errstr(err))
    with f:
        try:
            for piece in mbox_lines(message_pieces(f), when):
                out(piece)      # write errors are Fatal, not OSError
        except OSError as err:
            raise Fatal(b'unable to read $MAILDIR/' + path + b': '
                        + errstr(err))


class Output:
    """Buffered writes to MAILTMP; a write error is Fatal at once."""

    def __init__(self, fd: int, name: bytes):
        self.fd = fd
        self.name = name
        self.buf = bytearray()

    def fail(self, err: OSError) -> Fatal:
        return Fatal(b'unable to write to ' + self.name + b': ' + errstr(err))

    def __call__(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= BUFSIZE:
            self.flush()

    def flush(self) -> None:
        try:
            durable.write_all(self.fd, self.buf)
        except OSError as err:
            raise self.fail(err)
        self.buf.clear()


def maildir2mbox(env, now: int) -> int:
    mbox = env.get(b'MAIL')
    if mbox is None:
        raise Fatal(b'MAIL not set')
    mboxtmp = env.get(b'MAILTMP')
    if mboxtmp is None:
        raise Fatal(b'MAILTMP not set')
    maildir_chdir(env)
    maildir_clean(now)
    messages = maildir_scan((b'new', b'cur'), now)
    if not messages:
        return 0

    # The lock lives on the old MAIL's inode until we exit; readers that
    # flock MAIL wait for the rename.
    try:
        fdlock = os.open(mbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT |
                         os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        fcntl.flock(fdlock, fcntl.LOCK_EX)
    except OSError as err:
        raise Fatal(b'unable to lock ' + mbox + b': ' + errstr(err))
    try:
        return move(mbox, mboxtmp, messages)
    finally:
        os.close(fdlock)


def rename_sync_by_file(mbox: bytes, fd: int) -> bool:
    """Asked before the rename onto mbox: will it be made durable from
    the file (durable.sync_name: True) rather than by its directory's
    fsync (False)?  The file stands in where the directory may be
    written and searched but not read (the 1733 of a mail spool: it
    cannot be opened to be synced) and its filesystem allows it (fd, on
    it: durable.name_by_file).  Fatal where neither can be done, before
    anything changed: asked after the rename, the messages stayed in the
    maildir and in the new MAIL, and every run moved them again."""
    try:
        durable.fsync_dir(os.path.dirname(mbox) or b'.')
        return False
    except PermissionError as err:
        if durable.name_by_file(fd):
            return True
        problem = err
    except OSError as err:
        problem = err
    raise Fatal(b'unable to sync the directory of ' + mbox + b': ' + errstr(problem))


def move(mbox: bytes, mboxtmp: bytes, messages) -> int:
    try:
        fdold = os.open(mbox, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise Fatal(b'unable to read ' + mbox + b': ' + errstr(err))
    try:
        fdnew = os.open(mboxtmp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        os.close(fdold)
        raise Fatal(b'unable to create ' + mboxtmp + b': ' + errstr(err))
    # Emptied only once known not to be MAIL itself (the same name, a
    # link to it): truncated first, the old mail would be gone.
    try:
        old, new = os.fstat(fdold), os.fstat(fdnew)
        if (old.st_dev, old.st_ino) == (new.st_dev, new.st_ino):
            raise Fatal(b'MAILTMP is the same file as MAIL')
        os.ftruncate(fdnew, 0)
    except BaseException as err:
        os.close(fdold)
        os.close(fdnew)
        if isinstance(err, OSError):
            raise Fatal(b'unable to create ' + mboxtmp + b': ' + errstr(err)) from None
        raise

    out = Output(fdnew, mboxtmp)
    try:
        copy_fd(fdold, out, mbox)
        for mtime, path in messages:
            append_message(path, mtime, out)
        out.flush()
        durable.fsync(fdnew)
        by_file = rename_sync_by_file(mbox, fdnew)
    except OSError as err:
        os.close(fdnew)
        raise out.fail(err)
    except BaseException:
        os.close(fdnew)
        raise
    finally:
        os.close(fdold)
    try:
        os.close(fdnew)
    except OSError as err:      # NFS reports write errors here
        raise out.fail(err)

    try:
        durable.rename(mboxtmp, mbox)
    except OSError as err:
        raise Fatal(b'unable to move ' + mboxtmp + b' to ' + mbox + b': '
                    + errstr(err))
    # Linux makes the rename durable only with its directory: until then
    # a crash could bring the old MAIL back, so the messages stay.
    try:
        if by_file:
            fd = os.open(mbox, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if not durable.sync_name(fd):
                    raise OSError(errno.EACCES, 'Permission denied')
            finally:
                os.close(fd)
        else:
            durable.fsync_dir(os.path.dirname(mbox) or b'.')
    except OSError as err:
        raise Fatal(b'unable to sync the directory of ' + mbox + b': '
                    + errstr(err))

    for _, path in messages:
        try:
            durable.unlink(path)
        except OSError as err:
            say(WARNING + b'$MAILDIR/' + path + b' will be delivered twice;'
                b' unable to unlink: ' + errstr(err))
    return 0


def main(argv=None) -> int:
    try:
        oldmask = os.umask(0o077)
        try:
            return maildir2mbox(os.environb, int(time.time()))
        finally:
            os.umask(oldmask)
    except Fatal as err:
        say(FATAL + err.text)
        return 111
    except MemoryError:
        say(FATAL + b'out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'maildir2mbox', err)


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
