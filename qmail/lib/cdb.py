"""D. J. Bernstein's constant database: reader and writer.

The format, as qmail's cdbmss.c writes it and cdb_seek.c reads it, and
as cdbmake and tinycdb agree on (all numbers are unsigned 32-bit
little-endian):

    header   256 pairs (pos, slots): where hash table b starts, and its
             number of slots; 2048 bytes.
    records  from offset 2048, in the order they were added:
             klen, dlen, key bytes, data bytes.
    tables   table 0, then 1, ... 255; each slot is a pair (hash, recpos),
             recpos 0 meaning an empty slot.

A key's hash is h = ((h << 5) + h) ^ c over its bytes, from 5381, mod
2**32.  It lives in table h & 255, which has twice as many slots as
records; the search starts at slot (h >> 8) % slots and walks on,
wrapping, until it finds an empty slot or has looked at every slot.
Records with the same key are found in the order they were added, so
a reader that takes the first match (qmail-lspawn does) sees the first
one added.  Writer places the slots exactly as cdbmake does, so a file
it makes is byte-for-byte the file qmail-newu or cdbmake would make.

Offsets are 32 bits: no file may reach 4 GiB.  The reader never trusts
the file: every offset is checked against the file's size, and a short,
corrupt or oversized file raises CdbError, which callers treat as a
temporary failure (qmail-lspawn's QLX_CDB, qmail-smtpd's 421).

Small files are read into memory once; large ones are read with pread,
never mmap, so a file truncated under a reader gives CdbError, not
SIGBUS.
"""

import io
import os
import struct

from qmail.lib import durable

HASHSTART = 5381
HEADER_SIZE = 2048
MAX_SIZE = 0xFFFFFFFF           # a position must fit in 32 bits
# A file this small is cheaper to read whole than to seek in, for the
# many lookups of a long-lived reader; morercpthosts.cdb can be larger.
READ_ALL_LIMIT = 1 << 24
# ... and for one lookup (qmail-lspawn's in users/cdb at each delivery):
# a few preads beat reading a big file whole.
ONE_LOOKUP_READ_ALL = 1 << 16

_PAIR = struct.Struct('<II')
_HEADER = struct.Struct('<512I')


class CdbError(Exception):
    """The cdb file is unreadable, truncated, corrupt or too big."""


class Unreadable:
    """Stands for a cdb that opened but is corrupt or truncated, where
    qmail only opens the file at the start and meets the damage at a
    lookup: every lookup raises CdbError (qmail-smtpd's morercpthosts.cdb:
    mail for the domains of rcpthosts, and from relay clients, goes on
    being taken, the lookups that need the file are deferred)."""

    in_memory = False       # (read again by the next session, not kept)
    descriptors = 0

    def __init__(self, problem: str):
        self.problem = problem

    def get(self, key: bytes, default=None):
        raise CdbError(self.problem)

    def get_all(self, key: bytes) -> list:
        raise CdbError(self.problem)

    def __contains__(self, key: bytes) -> bool:
        raise CdbError(self.problem)

    def close(self) -> None:
        pass


def open_lookup(path):
    """Cdb(path) for lookups, or, where the file is there but damaged,
    an Unreadable whose lookups fail.  OSError (ENOENT included) as
    Cdb's: a file that cannot be opened fails at once, as qmail's."""
    try:
        return Cdb(path)
    except CdbError as err:
        return Unreadable(str(err))


def hash(key: bytes) -> int:            # noqa: A001 (cdb's own name)
    """cdb's hash of key."""
    h = HASHSTART
    for c in key:
        h = (((h << 5) + h) & 0xFFFFFFFF) ^ c
    return h


# -- reading ---------------------------------------------------------------

class Cdb:
    """A cdb opened for lookups: Cdb(path) or Cdb.from_bytes(data).

    get(key) is the first record for key or None; get_all(key) every
    one, in the order added; iterating gives (key, data) in file order.
    """

    def __init__(self, path=None, *, _data=None, read_all: int = None):
        """read_all: a file up to this size (READ_ALL_LIMIT) is read
        whole; a larger one is looked up in with pread, its descriptor
        held."""
        self._fd = None
        self._data = None
        self.stat = None        # the file's fstat() when it was opened
        if path is None:
            self._data = bytes(_data)
            self._size = len(self._data)
        else:
            self._open(path, READ_ALL_LIMIT if read_all is None else read_all)
        if self._size > MAX_SIZE:
            self.close()
            raise CdbError('cdb file is 4 GiB or more')
        if self._size < HEADER_SIZE:
            self.close()
            raise CdbError('cdb file shorter than its header')
        self._header = _HEADER.unpack(self._read(0, HEADER_SIZE))
        # A table past the end means a truncated file: say so now, not
        # only when a lookup happens to reach the missing part.
        for b in range(256):
            pos, slots = self._header[2 * b], self._header[2 * b + 1]
            if pos + 8 * slots > self._size:
                self.close()
                raise CdbError('cdb hash table %d outside the file' % b)

    @classmethod
    def from_bytes(cls, data: bytes) -> 'Cdb':
        return cls(_data=data)

    def _open(self, path, read_all: int):
        """Open path; OSError (including ENOENT) goes to the caller."""
        # (without waiting, as qmail's open_read: a FIFO in its place
        # reads as empty, no hang)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.stat = os.fstat(fd)
            size = self.stat.st_size
            if size <= read_all:
                self._data = _read_whole(fd, size)
                self._size = len(self._data)
                os.close(fd)
            else:
                self._fd = fd
                self._size = size
        except BaseException:
            if self._fd is None:
                os.close(fd)
            raise

    @property
    def in_memory(self) -> bool:
        """Read whole (no descriptor held open)."""
        return self._fd is None

    @property
    def descriptors(self) -> int:
        """How many it holds open (a qmail-listen worker's count)."""
        return 0 if self._fd is None else 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._data = None

    def __del__(self):
        # A file over READ_ALL_LIMIT keeps its descriptor: one a session
        # opened (qmail-smtpd's morercpthosts.cdb, users/rcpt.cdb) goes
        # with it, or a qmail-listen worker finds it left open and retires.
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read(self, pos: int, n: int) -> bytes:
        if pos < 0 or n < 0 or pos + n > self._size:
            raise CdbError('cdb offset %d+%d outside the file' % (pos, n))
        if self._data is not None:
            return self._data[pos:pos + n]
        if self._fd is None:
            raise CdbError('cdb is closed')
        try:
            got = os.pread(self._fd, n, pos)
        except OSError as err:
            raise CdbError('unable to read cdb: %s' % err.strerror) from err
        if len(got) != n:
            raise CdbError('cdb file truncated')
        return got

    def _find(self, key: bytes):
        """Yield (datapos, dlen) of each record for key, in order added."""
        h = hash(key)
        b = h & 255
        tpos, slots = self._header[2 * b], self._header[2 * b + 1]
        if not slots:
            return
        slot = (h >> 8) % slots
        for _ in range(slots):
            sh, rpos = _PAIR.unpack(self._read(tpos + 8 * slot, 8))
            if not rpos:
                return
            if sh == h:
                klen, dlen = _PAIR.unpack(self._read(rpos, 8))
                if klen == len(key) and self._read(rpos + 8, klen) == key:
                    yield rpos + 8 + klen, dlen
            slot += 1
            if slot == slots:
                slot = 0

    def get(self, key: bytes, default=None):
        for dpos, dlen in self._find(key):
            return self._read(dpos, dlen)
        return default

    def get_all(self, key: bytes) -> list:
        return [self._read(dpos, dlen) for dpos, dlen in self._find(key)]

    def __contains__(self, key: bytes) -> bool:
        for _ in self._find(key):
            return True
        return False

    def __iter__(self):
        """(key, data) of every record, in file order, as cdbdump gives."""
        eod = self._header[0]           # table 0 starts where records end
        if eod < HEADER_SIZE or eod > self._size:
            raise CdbError('cdb header points outside the file')
        pos = HEADER_SIZE
        while pos < eod:
            klen, dlen = _PAIR.unpack(self._read(pos, 8))
            if pos + 8 + klen + dlen > eod:
                raise CdbError('cdb record runs past the end of records')
            record = self._read(pos + 8, klen + dlen)
            yield record[:klen], record[klen:]
            pos += 8 + klen + dlen

    def keys(self):
        return (k for k, _ in self)

    def items(self):
        return iter(self)


def _read_whole(fd: int, size: int) -> bytes:
    parts = []
    while True:
        chunk = os.read(fd, max(size, 65536))
        if not chunk:
            break
        parts.append(chunk)
    return b''.join(parts)


# -- writing ---------------------------------------------------------------

class Writer:
    """Writes a cdb to a binary file object that can seek (a temp file).

        w = Writer(f); w.add(key, data) ...; w.finish()

    The caller owns the file: it flushes, fsyncs, closes and renames it
    into place (see qmail.newu).  Records are streamed as they are
    added; only a (hash, position) pair per record is kept in memory.
    """

    def __init__(self, f):
        self._f = f
        self._pos = HEADER_SIZE
        self._entries = []          # (hash, position), in order added
        self._finished = False
        f.seek(0)
        f.write(bytes(HEADER_SIZE))     # placeholder; finish() fills it

    def add(self, key: bytes, data: bytes) -> None:
        if self._finished:
            raise ValueError('cdb already finished')
        klen, dlen = len(key), len(data)
        end = self._pos + 8 + klen + dlen
        if end > MAX_SIZE:
            raise CdbError('cdb would reach 4 GiB')
        self._f.write(_PAIR.pack(klen, dlen))
        self._f.write(key)
        self._f.write(data)
        self._entries.append((hash(key), self._pos))
        self._pos = end

    def finish(self) -> None:
        """Write the hash tables, then the header at the start."""
        if self._finished:
            raise ValueError('cdb already finished')
        buckets = [[] for _ in range(256)]
        for entry in self._entries:
            buckets[entry[0] & 255].append(entry)
        total = self._pos + sum(16 * len(b) for b in buckets)
        if total > MAX_SIZE:
            raise CdbError('cdb would reach 4 GiB')
        header = []
        pos = self._pos
        for bucket in buckets:
            table = place(bucket)
            header += (pos, len(table))
            if table:
                self._f.write(b''.join(_PAIR.pack(h, p) for h, p in table))
            pos += 8 * len(table)
        self._f.seek(0)
        self._f.write(_HEADER.pack(*header))
        self._f.seek(pos)
        self._finished = True
        self._entries = []


def place(bucket: list) -> list:
    """One hash table: slots for a bucket's (hash, pos), as cdbmake fills it.

    Twice as many slots as records; each record, in the order added,
    takes the first free slot from (hash >> 8) % slots on.
    """
    slots = 2 * len(bucket)
    table = [(0, 0)] * slots
    for h, p in bucket:
        where = (h >> 8) % slots
        while table[where][1]:
            where += 1
            if where == slots:
                where = 0
        table[where] = (h, p)
    return table


def make(pairs) -> bytes:
    """The bytes of a cdb holding pairs of (key, data), in that order."""
    buf = io.BytesIO()
    w = Writer(buf)
    for key, data in pairs:
        w.add(key, data)
    w.finish()
    return buf.getvalue()


# -- installing a new cdb file ---------------------------------------------

class InstallError(Exception):
    """A step of install() failed: .step is 'open', 'write' or 'rename';
    .err the OSError or CdbError behind it."""

    def __init__(self, step: str, err: Exception):
        super().__init__(step, err)
        self.step = step
        self.err = err


def install(tmp: str, final: str, records, mode: int = 0o644) -> None:
    """Replace final atomically with a cdb of records, through tmp.

    records is an iterable of (key, data); any exception it raises (a
    parse or read error of the source file) propagates unchanged.  The
    steps: remove a stale tmp, create tmp exclusively, write, fsync,
    close, rename over final, fsync the directory.  Readers see the old
    file or the new one, never part of one.  tmp is removed on failure;
    final is untouched unless the rename happened.  Like qmail-newu,
    nothing guards against two simultaneous installs.
    """
    try:
        durable.unlink(tmp)         # left by a crash or an earlier failure
    except FileNotFoundError:
        pass
    except OSError as err:
        raise InstallError('open', err) from err
    try:
        fd = durable.create_excl(tmp, mode)
    except OSError as err:
        raise InstallError('open', err) from err
    renamed = False
    try:
        try:
            os.fchmod(fd, mode)     # whatever the umask
        except OSError as err:
            raise InstallError('open', err) from err
        _write(fd, records)
        try:
            os.close(fd)            # NFS reports write errors here
        except OSError as err:
            raise InstallError('write', err) from err
        finally:
            fd = -1
        try:
            durable.rename(tmp, final)
            renamed = True
            durable.fsync_dir(os.path.dirname(final) or '.')
        except OSError as err:
            raise InstallError('rename', err) from err
    finally:
        if fd != -1:
            os.close(fd)
        if not renamed:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _write(fd: int, records) -> None:
    """The cdb of records into fd, flushed and fsynced."""
    f = os.fdopen(fd, 'wb', buffering=1 << 16, closefd=False)
    try:
        w = Writer(f)
        for key, data in records:
            try:
                w.add(key, data)
            except (OSError, CdbError) as err:
                raise InstallError('write', err) from err
        try:
            w.finish()
            f.flush()
            durable.fsync(fd)
        except (OSError, CdbError) as err:
            raise InstallError('write', err) from err
    finally:
        try:
            f.close()               # closefd=False: fd stays open
        except OSError:
            pass
