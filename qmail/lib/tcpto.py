"""qmail-remote's memory of dead hosts: queue/lock/tcpto (tcpto.c).

The file, owned by qmailr, is qmail's table: 1024 bytes, 64 records of
16 bytes, one per IPv4 address:

    bytes 0-3    the address
    byte  4      recent connection timeouts, 0 to 10 (0: a free slot)
    bytes 8-11   time of the last counted timeout, seconds, little-endian

Beyond qmail, IPv6 peers have a table of the same kind after it, bytes
1024-3071: 64 records of 32 bytes (address in 0-15, count in 16, time in
24-27).  qmail's own tools read only the first 1024 bytes, so the file
stays theirs to read; missing bytes of the IPv6 table read as zeros, so
a file of qmail's size works and grows when an IPv6 peer times out.

The rules (qmail-tcpto(8)): a connection attempt that times out counts
against its address, at most once per two minutes; an address with two
or more recent timeouts is skipped for about an hour after the last one
((60 + pid % 32) * 64 seconds, so not every qmail-remote retries at
once); a connection that succeeds, or fails otherwise, clears the count.
When the table is full the record with the least time + count * 1024 is
taken.  Readers and writers hold an exclusive flock on the file opened
for writing; a file that cannot be opened or locked means "no memory".
"""

import fcntl
import ipaddress
import os

from qmail.lib import auto

ERRMIN = 120            # seconds between two timeouts that both count
COUNTMAX = 10
SIZE4 = 1024            # qmail's table; tcpto_clean and qmail-tcpok clear it
SIZE = SIZE4 + 2048     # with the IPv6 table


class Table:
    """Where one address family's records live in the file."""

    def __init__(self, offset, reclen, addrlen, countpos, whenpos, nrec=64):
        self.offset, self.reclen, self.addrlen = offset, reclen, addrlen
        self.countpos, self.whenpos, self.nrec = countpos, whenpos, nrec


V4 = Table(0, 16, 4, 4, 8)
V6 = Table(SIZE4, 32, 16, 16, 24)


def path(home=None) -> str:
    return os.path.join(home or auto.QMAIL, 'queue', 'lock', 'tcpto')


# --- pure -----------------------------------------------------------------

def packed(ip: str) -> bytes:
    """The address as the table holds it (4 or 16 bytes)."""
    return ipaddress.ip_address(ip).packed


def table_for(addr: bytes) -> Table:
    return V4 if len(addr) == 4 else V6


def count_records(buf: bytes, t: Table) -> int:
    """How many records of table t the file holds: qmail's read size >> 4
    for IPv4; the whole IPv6 table once qmail's table is complete."""
    if t is V4:
        return min(t.nrec, len(buf) // t.reclen)
    return t.nrec if len(buf) >= SIZE4 else 0


def record_at(buf: bytes, t: Table, i: int) -> bytearray:
    start = t.offset + i * t.reclen
    rec = bytearray(buf[start:start + t.reclen])
    return rec + bytes(t.reclen - len(rec))


def rec_when(rec, t: Table) -> int:
    return int.from_bytes(rec[t.whenpos:t.whenpos + 4], 'little')


def set_when(rec: bytearray, t: Table, when: int):
    rec[t.whenpos:t.whenpos + 4] = (when & 0xffffffff).to_bytes(4, 'little')


def records(buf: bytes):
    """[(address text, count, when)] of every record with a count."""
    out = []
    for t in (V4, V6):
        for i in range(count_records(buf, t)):
            rec = record_at(buf, t, i)
            if rec[t.countpos]:
                ip = ipaddress.ip_address(bytes(rec[:t.addrlen]))
                out.append((str(ip), rec[t.countpos], rec_when(rec, t)))
    return out


def lookup(buf: bytes, addr: bytes, now: int, pid: int):
    """(dead, flagwasthere): qmail's tcpto().  dead: skip this address."""
    t = table_for(addr)
    for i in range(count_records(buf, t)):
        rec = record_at(buf, t, i)
        if bytes(rec[:t.addrlen]) == addr:
            if rec[t.countpos] >= 2:
                age = now - rec_when(rec, t)
                if 0 <= age < (60 + (pid & 31)) << 6:
                    return True, True
            return False, True
    return False, False


def update(buf: bytes, addr: bytes, flagerr: bool, now: int, flagwasthere: bool):
    """qmail's tcpto_err(): (file offset, record) to write after a
    connection attempt, or None to leave the file alone.  flagerr: the
    attempt timed out."""
    if not flagerr and not flagwasthere:
        return None     # could have been added meanwhile; not worth a look
    t = table_for(addr)
    n = count_records(buf, t)
    if not n:
        return None
    for i in range(n):
        rec = record_at(buf, t, i)
        if bytes(rec[:t.addrlen]) != addr:
            continue
        if not flagerr:
            rec[t.countpos] = 0
        else:
            if rec[t.countpos] and now < ERRMIN + rec_when(rec, t):
                return None
            rec[t.countpos] = min(rec[t.countpos] + 1, COUNTMAX)
            set_when(rec, t, now)
        return t.offset + i * t.reclen, bytes(rec)
    if not flagerr:
        return None
    slot = None
    for i in range(n):
        if not record_at(buf, t, i)[t.countpos]:
            slot = i
            break
    if slot is None:        # full: evict the oldest, weighted by its count
        slot = min(range(n), key=lambda i: (
            rec_when(record_at(buf, t, i), t) + (record_at(buf, t, i)[t.countpos] << 10), i))
    rec = record_at(buf, t, slot)
    rec[:t.addrlen] = addr
    set_when(rec, t, now)
    rec[t.countpos] = 1
    return t.offset + slot * t.reclen, bytes(rec)


# --- the file ---------------------------------------------------------------

def _open_locked(fn):
    """fd of fn opened for writing and locked exclusively; OSError."""
    fd = os.open(fn, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        raise
    return fd


def _read_all(fn) -> bytes:
    with open(fn, 'rb') as f:
        return f.read(SIZE)


def read_table(fn=None) -> bytes:
    """The file's contents, read under the lock (qmail-tcpto).  OSError."""
    fn = fn or path()
    fd = _open_locked(fn)
    try:
        return _read_all(fn)
    finally:
        os.close(fd)


def clear(fn=None):
    """Forget every timeout (qmail-tcpok), under the lock.  OSError."""
    fn = fn or path()
    fd = _open_locked(fn)
    try:
        _write_zeros(fd)
    finally:
        os.close(fd)


def _write_zeros(fd):
    data = bytes(SIZE)
    os.lseek(fd, 0, os.SEEK_SET)
    while data:
        data = data[os.write(fd, data):]


def tcpto_clean(fn=None):
    """Forget every timeout, without the lock: qmail-rspawn does this at
    start (tcpto_clean.c), when no qmail-remote runs.  Errors ignored:
    the worst case is an old memory."""
    fn = fn or path()
    try:
        fd = os.open(fn, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _write_zeros(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Memory:
    """qmail-remote's use of the file: ask before connecting, tell after.
    Trouble with the file is ignored, as qmail does: the memory is an
    optimization, never a reason to defer."""

    def __init__(self, fn=None, pid=None):
        self.fn = fn or path()
        self.pid = os.getpid() if pid is None else pid
        self.wasthere = {}

    def _buf(self):
        try:
            fd = _open_locked(self.fn)
        except OSError:
            return None, None
        try:
            return fd, _read_all(self.fn)
        except OSError:
            os.close(fd)
            return None, None

    def dead(self, ip: str, now: int) -> bool:
        """True: ip timed out recently and repeatedly; do not try it."""
        addr = packed(ip)
        fd, buf = self._buf()
        if fd is None:
            self.wasthere[ip] = False
            return False
        os.close(fd)
        dead, self.wasthere[ip] = lookup(buf, addr, now, self.pid)
        return dead

    def err(self, ip: str, flagerr: bool, now: int):
        """Record the outcome of connecting to ip: flagerr if it timed out."""
        addr = packed(ip)
        if not flagerr and not self.wasthere.get(ip, False):
            return
        fd, buf = self._buf()
        if fd is None:
            return
        try:
            change = update(buf, addr, flagerr, now, self.wasthere.get(ip, False))
            if change is not None:
                os.pwrite(fd, change[1], change[0])
        except OSError:
            pass            # XXX as qmail: a lost record costs a timeout, no mail
        finally:
            os.close(fd)
