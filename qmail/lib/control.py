"""Reading qmail's control files, with qmail's rules.

A one-line control is its first line with trailing spaces, tabs and the
newline removed.  A list control is every line so stripped, skipping
empty lines and lines starting with '#'.  A missing file means "use the
default"; any other failure to read raises OSError, which callers treat
as a temporary failure (qmail's "unable to read controls").

Several defaults are derived from control/me: `rldef(..., flagme=True)`
falls back to me when the file is missing, then to the literal default.
Every control file and its default is listed in control/README.
"""

import errno
import os
import stat
import time

# A control file is written by the admin; more than this is a mistake,
# not configuration: trouble reading it (EFBIG), never a part taken for
# the whole (a virtualdomains entry past the cut was silently gone).
MAX_CONTROL_BYTES = 1 << 26


def open_read(path) -> int:
    """qmail's open_read: a descriptor for reading path, opened without
    waiting (a FIFO put there, with nobody writing, reads as empty
    instead of hanging the reader: qmail-send, every qmail-smtpd)."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


class NotRegular(OSError):
    """What open_regular() raises for a FIFO, a device, a directory."""

    def __init__(self, path):
        super().__init__(errno.EINVAL, 'not a regular file', path)


def open_regular(path):
    """A binary file object for reading path, which must be a regular
    file (OSError otherwise), looked at without waiting: for the admin's
    tools that build a database from it, where a FIFO would hang them
    and an empty read build an empty database, and for the certificate
    OpenSSL opens itself, blocking."""
    fd = open_read(path)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, 'rb')
    except BaseException:
        os.close(fd)
        raise


def _read(path):
    """The file's bytes, or None if it does not exist."""
    try:
        fd = open_read(path)
    except FileNotFoundError:
        return None
    try:
        chunks, total = [], 0
        while total < MAX_CONTROL_BYTES:
            try:
                chunk = os.read(fd, min(1 << 20, MAX_CONTROL_BYTES - total))
            except OSError as e:        # (a directory): the error names it
                raise type(e)(e.errno, e.strerror, path) from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        else:
            try:
                more = os.read(fd, 1)
            except OSError as e:
                raise type(e)(e.errno, e.strerror, path) from None
            if more:
                raise OSError(errno.EFBIG, 'File too large', path)
        return b''.join(chunks)
    finally:
        os.close(fd)


# Parsed controls, for processes that read them again and again (the
# pre-forked qmail-smtpd workers read theirs at every session, as
# qmail-smtpd does at its start): path and parser -> (the file's identity
# and times, the value).  A stat() per read tells whether the file
# changed; an edit, a replacement by rename or a removal shows at once.
# A file changed in the last RACY seconds is always read again: two
# writes within one tick of the filesystem's clock can leave the same
# times and size behind (git's "racy" entries).  A filesystem whose
# times have fractions of a second (ext4, xfs, btrfs) ticks with the
# kernel's clock, milliseconds: RACY_FINE is ample there; RACY covers
# whole seconds (ext3) and FAT's two.
_cache = {}
RACY = 2
RACY_FINE = 0.1


def stamp(st) -> tuple:
    """A file's identity and times, from its stat(): equal while the file
    is unchanged, if it is settled()."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(st, now: float) -> bool:
    """Changed long enough before now (RACY, or RACY_FINE where the
    times have fractions) that its stamp can be trusted."""
    fine = st.st_ctime_ns % 1_000_000_000
    return now - st.st_ctime > (min(RACY, RACY_FINE) if fine else RACY)


def _cached(path, parse):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _cache.pop((path, parse), None)
        return None
    current = stamp(st)
    hit = _cache.get((path, parse))
    if hit is not None and hit[0] == current and settled(st, time.time()):
        return hit[1]
    data = _read(path)
    value = None if data is None else parse(data)
    if value is not None or data is None:
        _cache[(path, parse)] = (current, value)
    return value


_joined = {}        # (directory, names) -> paths, for stamps()
# (directory, names) -> (the directory's stamp, the names it had no entry
# for then): while the directory is unchanged (no entry made, removed or
# renamed in it), those are still missing and need no stat() each.
_missing = {}


def stamps(directory: str, names: tuple) -> tuple:
    """For a value derived from several control files (qmail-smtpd's
    whole configuration): a key that stays equal while none of them
    changes (each file's identity and times, or None if missing), or
    None when it cannot be trusted: a file changed in the last RACY
    seconds, or one that cannot be stat()ed (the reading will say why).
    Most of the files are usually missing: they are looked for again
    only once the directory itself changed (a dangling symlink, whose
    target may appear elsewhere, is looked at every time)."""
    key = (directory, names)
    paths = _joined.get(key)
    if paths is None:
        paths = _joined[key] = [os.path.join(directory, n) for n in names]
    now = time.time()
    try:
        dst = os.stat(directory)
    except OSError:
        return None
    dstamp = stamp(dst) if settled(dst, now) else None
    known = _missing.get(key)
    missing = known[1] if known is not None and dstamp is not None \
        and known[0] == dstamp else None
    found_missing = []
    out = []
    for name, path in zip(names, paths):
        if missing is not None and name in missing:
            out.append(None)
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            out.append(None)
            try:
                os.lstat(path)
            except OSError:
                found_missing.append(name)
            continue
        except OSError:
            return None
        if not settled(st, now):
            return None
        out.append(stamp(st))
    if missing is None and dstamp is not None:
        _missing[key] = (dstamp, frozenset(found_missing))
    return tuple(out)


def strip_line(line: bytes) -> bytes:
    """Remove trailing newline, spaces and tabs, as qmail does."""
    return line.rstrip(b' \t\n')


def parse_line(data: bytes) -> bytes:
    """The value of a one-line control file."""
    return strip_line(data.split(b'\n', 1)[0])


def parse_lines(data: bytes) -> list:
    """The values of a list control file: no empty or '#' lines."""
    out = []
    for line in data.split(b'\n'):
        line = strip_line(line)
        if line and not line.startswith(b'#'):
            out.append(line)
    return out


# The longest timeout or lifetime taken, about 24.8 days: poll() waits at
# most 2**31 - 1 ms, and alarm() takes a timeout and a lifetime added.
# More ("2147483647", qmail's "forever") means never all the same; taken
# whole, it failed every session with "internal error".
SECONDS_MAX = (2 ** 31 - 1) // 1000 - 1
ULONG_HUGE = 10 ** 40      # what scan_ulong gives for more significant digits


def scan_ulong(s: bytes) -> int:
    """qmail's scan_ulong: the value of the leading digits, 0 if none.
    More than 40 significant digits give ULONG_HUGE, beyond every limit
    a caller checks (Python's int() refuses over 4300 digits)."""
    n = 0
    while n < len(s) and 48 <= s[n] <= 57:
        n += 1
    digits = s[:n].lstrip(b'0')
    if len(digits) > 40:
        return ULONG_HUGE
    return int(digits) if digits else 0


def parse_int(data: bytes):
    """qmail's scan_ulong on the first line: leading digits (their value
    as scan_ulong gives it), or None."""
    line = parse_line(data)
    if not line[:1].isdigit():
        return None
    return scan_ulong(line)


def readline(path):
    """A one-line control as bytes, or None if the file is missing."""
    return _cached(path, parse_line)


def readfile(path):
    """A list control as a list of bytes, or None if the file is missing."""
    value = _cached(path, parse_lines)
    return None if value is None else list(value)


def colon_list(lines):
    """The non-empty lines of a list control joined by ":" (an OpenSSL
    cipher list, as the qmail TLS patch reads tls*ciphers), or None when
    there are none."""
    lines = [line for line in lines or () if line]
    return b':'.join(lines) if lines else None


def me_text(home) -> str:
    """control/me's line under home as text, for the admin's own messages
    (qmail-install's and qmail-svscan's greetings); '' if it is missing.
    Read as any control is, so a FIFO put there does not hang them."""
    line = readline(os.path.join(home, 'control', 'me'))
    return '' if line is None else line.decode('utf-8', 'replace').strip()


def readint(path):
    """A numeric control, or None if missing or not a number."""
    return _cached(path, parse_int)


class Controls:
    """The control directory of one qmail home, with control/me remembered."""

    def __init__(self, directory):
        self.directory = directory
        self._me = False

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def init(self):
        """control/me read now, as qmail's control_init: trouble reading
        it is the program's trouble (qmail-smtpd's 421, qmail-remote's
        deferral, qmail-inject's read error) even where every control
        that defaults to it is present.  Returns self."""
        self._me = readline(self.path('me'))
        return self

    @property
    def me(self):
        """control/me, or None; read once."""
        if self._me is False:
            self._me = readline(self.path('me'))
        return self._me

    def line(self, name: str, default=None, flagme=False):
        """A one-line control; else me (if flagme and me is set); else default."""
        value = readline(self.path(name))
        if value is not None:
            return value
        if flagme and self.me is not None:
            return self.me
        return default

    def lines(self, name: str, flagme=False):
        """A list control; else [me] if flagme and me is set; else []."""
        value = readfile(self.path(name))
        if value is not None:
            return value
        if flagme and self.me is not None:
            return [self.me]
        return []

    def int(self, name: str, default: int) -> int:
        value = readint(self.path(name))
        return default if value is None else value

    def seconds(self, name: str, default: int) -> int:
        """A timeout or lifetime: int(), at most SECONDS_MAX."""
        return min(self.int(name, default), SECONDS_MAX)

    def exists(self, name: str) -> bool:
        try:
            os.stat(self.path(name))
        except OSError as err:
            if err.errno == errno.ENOENT:
                return False
            raise
        return True
