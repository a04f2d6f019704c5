"""Durable steps on disk, each one named.

Every program that changes the queue or a mailbox does it through these
helpers, so the order of steps is visible in one place and a test can
watch it.  A step that fails raises OSError; the caller knows what the
failure means for its state (see INTERNALS.md, states S1-S5).

Linux, unlike the BSD filesystems qmail was written for, does not make
link() and rename() durable by themselves: the directory must be
fsynced too, which fsync_dir() does.  Nor is a file's content durable
before fsync(): writes (write_all, pwrite, truncate) stay in memory
until then, and a power cut takes them back.

The steps, as the hooks name them: create, create_anon, open_append,
write, pwrite, truncate, fsync, link, rename, unlink, fsync_dir, and
syncfs (all of a filesystem).  A file step names its target by
descriptor, a directory step (and create_anon, before its file exists)
by path; syncfs by a descriptor of any file on the filesystem.
"""

import fcntl
import os
import struct
import time

# Hooks for tests of crash safety (qmail.lib.crashsim): hook(name, target)
# is called before each step, after(name, target) once it has succeeded.
# Set only by code (never from the environment), so no caller of a
# privileged program can reach them.
hook = None
after = None


def _step(name, target):
    if hook is not None:
        hook(name, target)


def _done(name, target):
    if after is not None:
        after(name, target)


def create_excl(path, mode: int = 0o644) -> int:
    """Create path, which must not exist; return a descriptor for writing."""
    _step('create', path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                 os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    _done('create', path)
    return fd


def create_anon(dirpath, mode: int = 0o644) -> int:
    """Create a file with no name yet (O_TMPFILE), its inode taken where
    dirpath's are; return a descriptor for writing.  link_anon() names
    it; if the process dies first, nothing is left behind.  Raises
    OSError where the filesystem or kernel has no such files."""
    _step('create_anon', dirpath)
    fd = os.open(dirpath, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode)
    _done('create_anon', fd)
    return fd


def link_anon(fd: int, dst) -> None:
    """Give the file of create_anon() its first name (it must not exist)."""
    _step('link', dst)
    # linkat(AT_SYMLINK_FOLLOW) of the /proc link names the file itself;
    # Python calls plain link() (which would link the /proc link) unless
    # a directory descriptor is given: the path is absolute, so the
    # kernel never looks at it, and fd itself will do.
    os.link('/proc/self/fd/%d' % fd, dst, src_dir_fd=fd, follow_symlinks=True)
    _done('link', dst)


def open_append(path, mode: int = 0o600, flags: int = 0) -> int:
    """Open path for appending, creating it if missing; flags are added
    to the open (O_NONBLOCK, say).  Return a descriptor for writing."""
    _step('open_append', path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                 | flags, mode)
    _done('open_append', path)
    return fd


def write_all(fd: int, data) -> None:
    """Write every byte of data, however many writes that takes."""
    _step('write', fd)
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    _done('write', fd)


def pwrite(fd: int, data, pos: int) -> None:
    """Write every byte of data at offset pos (the file offset stays)."""
    _step('pwrite', fd)
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n
    _done('pwrite', fd)


def truncate(fd: int, length: int) -> None:
    """Cut the file back to length bytes."""
    _step('truncate', fd)
    os.ftruncate(fd, length)
    _done('truncate', fd)


def fsync(fd: int) -> None:
    _step('fsync', fd)
    os.fsync(fd)
    _done('fsync', fd)


def link(src, dst) -> None:
    _step('link', dst)
    os.link(src, dst)
    _done('link', dst)


def rename(src, dst) -> None:
    # The hooks see the source too: a rename changes two entries.
    _step('rename', (src, dst))
    os.rename(src, dst)
    _done('rename', (src, dst))


def unlink(path) -> None:
    _step('unlink', path)
    os.unlink(path)
    _done('unlink', path)


def fsync_dir(path) -> None:
    """Make the entries of directory path durable."""
    _step('fsync_dir', path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _done('fsync_dir', path)


# ---- a file's fsync for its directory's --------------------------------------
#
# A directory that may be written and searched but not read (a drop box)
# cannot be opened, so not fsynced.  On filesystems with a journal or log
# the fsync of a file newly linked there carries its entry too (ext3 and
# ext4 with a journal, xfs, btrfs: the commit holds the link with the
# inode's change of link count; tmpfs keeps nothing anyway).  Not ext4
# without a journal: it syncs a new file's directory only while the file
# is new (EXT4_STATE_NEWENTRY, set when it is made in tmp/ and cleared by
# its first fsync), not after a link into new/; nor ext2, nor the others:
# there only the directory's fsync will do.  Known by the mount's type in
# /proc/self/mountinfo (ext2 and ext4 share statfs's magic) and, for
# ext4, jbd2's list of journals (has_journal).

ENTRY_BY_FILE_FSYNC = ('ext3', 'xfs', 'btrfs', 'tmpfs')
_fs_types = {}          # st_dev -> the mount's type ('' if not found)


def mount_type(dev: int) -> str:
    """The filesystem type of the mount of device dev ('' if unknown)."""
    if dev not in _fs_types:
        want = '%d:%d' % (os.major(dev), os.minor(dev))
        found = ''
        try:
            with open('/proc/self/mountinfo', 'rb') as f:
                for line in f:
                    fields = line.split()
                    if len(fields) > 2 and fields[2].decode('ascii', 'replace') == want \
                            and b'-' in fields[6:]:
                        found = fields[fields.index(b'-', 6) + 1].decode('ascii', 'replace')
                        break
        except (OSError, ValueError, IndexError):
            found = ''
        _fs_types[dev] = found
    return _fs_types[dev]


def file_fsync_carries_entry(fd: int) -> bool:
    """Does fd's fsync make its new name durable too (see above)?"""
    try:
        dev = os.fstat(fd).st_dev
    except OSError:
        return False
    kind = mount_type(dev)
    return kind in ENTRY_BY_FILE_FSYNC or (kind == 'ext4' and has_journal(dev))


# ---- many at once ---------------------------------------------------------
#
# fsync() waits for the data's writeback and a journal commit.  A program
# with many files to make durable (qmail-send preprocessing a batch) first
# starts the writeback of every one (sync_file_range, which does not
# wait), then fsyncs them one after another: the first fsync's commit
# carries every file's metadata, so the later ones mostly find their work
# done.  Measured here: a third of the time of one plain fsync after
# another, less than from threads (which also fight over the interpreter
# lock), and nothing to start or share.  Under crash tests (hook set) the
# writeback is not started early, so each fsync stays the crash point.

_sync_file_range = None     # libc's, once load_writeback() found it
SYNC_FILE_RANGE_WRITE = 2
_syncfs = None              # libc's, once load_writeback() found it usable


def load_writeback() -> bool:
    """Look sync_file_range and syncfs up (ctypes: 1.5 ms, so only the
    long-lived programs do, at their start: qmail-send, qmail-queued
    before its writers fork; the set-uid qmail-queue goes without)."""
    global _sync_file_range, _syncfs
    if _sync_file_range is None:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong,
                           ctypes.c_uint]
            _sync_file_range = fn
        except (ImportError, OSError, AttributeError):
            _sync_file_range = False
        else:
            _syncfs = False
            fn = getattr(libc, 'syncfs', None)
            statfs = getattr(libc, 'fstatfs', None)
            if (syncfs_reports_errors(os.uname().release)
                    and fn is not None and statfs is not None):
                fn.argtypes = [ctypes.c_int]
                statfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
                buf = ctypes.create_string_buffer(STATFS_SIZE)
                kind = ctypes.c_long.from_buffer(buf)   # f_type comes first

                def fs_kind(fd):
                    return kind.value if statfs(fd, buf) == 0 else None
                _syncfs = (fn, fs_kind)
    return bool(_sync_file_range)


def _writeback(fd: int) -> None:
    """Start writing fd's dirty pages out, without waiting (a hint: an
    error is left for the fsync to report)."""
    if _sync_file_range:
        _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def _each(fn, items) -> list:
    """fn(item) for every item, in order; the items whose fn raised
    OSError (each is tried once: a second fsync after a failed one may
    report success for data that was lost)."""
    failed = []
    for item in items:
        try:
            fn(item)
        except OSError:
            failed.append(item)
    return failed


def fsync_many(fds) -> list:
    """fsync() each descriptor, their writeback started together first;
    those that failed."""
    fds = list(fds)
    if hook is None and after is None and len(fds) > 1:
        for fd in fds:
            _writeback(fd)
    return _each(fsync, fds)


def fsync_dirs(paths) -> list:
    """fsync_dir() each directory; those that failed."""
    return _each(fsync_dir, paths)


# ---- the whole filesystem at once -------------------------------------------
#
# Linux's syncfs() makes every change on a filesystem durable: data,
# inodes, directory entries, with one cache flush where fsync() of each
# file and directory flushes once apiece (qmail-queue's four: 0.9 ms here,
# against 0.45 for syncfs and one directory).  It also waits for every
# other process's dirty data on that filesystem, which may be a great
# deal: it is used only while the machine's dirty and writeback pages
# stay under SYNCFS_DIRTY_MAX.  It is trusted only where it reports
# failures: Linux 5.17 and later (5.8 began returning writeback errors,
# 5.17 the filesystem's own, a failed journal commit or cache flush),
# and filesystems known to write everything it is asked to (FUSE, for
# one, answers syncfs without asking its server; fsync does ask), with
# every file or directory concerned on that one filesystem.
#
# On ext2, and ext3/ext4 without a journal, syncfs flushes the disk's
# cache (if at all: not the native ext2 driver) before its last step
# (sync_filesystem's sync_blockdev), the write of the filesystem's metadata
# (inodes, directory blocks) held in the block device's cache: that
# metadata may still sit in a volatile disk cache when it returns, and
# the next flush (the todo/ fsync that follows qmail-queue's syncfs)
# makes it durable together with what came after it, in no order.  There
# an fsync of one of the (now clean) files follows the syncfs: its own
# cache flush (50 us here) covers all that syncfs wrote.  With a journal
# (or on xfs and btrfs) syncfs ends with the log's commit, durable.

SYNCFS_DIRTY_MAX = 16 << 20     # bytes waiting to be written, machine-wide
SYNCFS_KINDS = {                # statfs f_type of the filesystems trusted
    0xEF53: 'ext2/ext3/ext4',
    0x58465342: 'xfs',
    0x9123683E: 'btrfs',
    0x01021994: 'tmpfs',        # nothing durable, with fsync neither
}
STATFS_SIZE = 256               # bytes, more than any struct statfs


def syncfs_reports_errors(release: str) -> bool:
    """Does a kernel of this uname release report errors from syncfs?"""
    try:
        major, minor = release.split('.')[:2]
        digits = len(minor) - len(minor.lstrip('0123456789'))
        return (int(major), int(minor[:digits])) >= (5, 17)
    except ValueError:
        return False


def dirty_bytes(meminfo: bytes) -> int:
    """Dirty plus Writeback of a /proc/meminfo text, in bytes (a huge
    number where the text does not say)."""
    total = 0
    for key in (b'\nDirty:', b'\nWriteback:'):
        start = meminfo.find(key)
        if start < 0:
            return 1 << 62
        end = meminfo.find(b'kB', start)
        try:
            total += int(meminfo[start + len(key):end if end >= 0 else None]) * 1024
        except ValueError:
            return 1 << 62
    return total


DIRTY_TTL = 0.05       # seconds a reading of /proc/meminfo is used again
_dirty = [-1.0, 1 << 62]        # when read (monotonic), the bytes it said


def _little_dirty() -> bool:
    """Few enough bytes dirty machine-wide for a syncfs?  Read at most
    every DIRTY_TTL (the kernel writes all of /proc/meminfo out for each
    read: a tenth of a qmail-queue writer's system time): the answer
    only weighs a syncfs's wait, never what it makes durable."""
    now = time.monotonic()
    if not 0 <= now - _dirty[0] < DIRTY_TTL:
        try:
            fd = os.open('/proc/meminfo', os.O_RDONLY | os.O_CLOEXEC)
            try:
                text = os.read(fd, 16384)
            finally:
                os.close(fd)
        except OSError:
            return False
        _dirty[:] = [now, dirty_bytes(text)]
    return _dirty[1] <= SYNCFS_DIRTY_MAX


_kinds = {}             # (the statfs function, st_dev) -> its f_type
_journal = {}           # st_dev -> has a journal (for EXT_MAGIC)
EXT_MAGIC = 0xEF53


def has_journal(dev: int) -> bool:
    """Does the ext2/3/4 filesystem on device dev have a journal (jbd2
    lists each in /proc/fs/jbd2 as <device>-8)?  False when unknown."""
    if dev not in _journal:
        try:
            name = os.path.basename(os.path.realpath(
                '/sys/dev/block/%d:%d' % (os.major(dev), os.minor(dev))))
            _journal[dev] = os.path.isdir('/proc/fs/jbd2/%s-8' % name)
        except OSError:
            _journal[dev] = False
    return _journal[dev]


def _one_trusted_fs(fds):
    """The filesystem (st_dev) all of fds are on, if it is of a kind
    syncfs is trusted on; else None.  (A filesystem's kind is asked once
    per process.)"""
    try:
        dev = os.fstat(fds[0]).st_dev
        if any(os.fstat(fd).st_dev != dev for fd in fds[1:]):
            return None
    except OSError:
        return None
    return dev if _fs_kind(fds[0], dev) in SYNCFS_KINDS else None


def _fs_kind(fd: int, dev: int):
    key = (_syncfs[1], dev)
    kind = _kinds.get(key)
    if kind is None:
        kind = _syncfs[1](fd)
        if kind is not None:
            _kinds[key] = kind
    return kind


def _sync_dev(fd: int, dev: int) -> int:
    """syncfs(fd) of filesystem dev, then, on ext2/3/4 without a journal,
    the flush it leaves out (above): 0, or -1 with errno set."""
    if _syncfs[0](fd) != 0:
        return -1
    if _fs_kind(fd, dev) != EXT_MAGIC or has_journal(dev):
        return 0
    try:
        os.fsync(fd)
    except OSError as e:
        import ctypes
        ctypes.set_errno(e.errno or 5)
        return -1
    return 0


# ---- a group commit -----------------------------------------------------------
#
# Processes that syncfs one filesystem often, and many at a time
# (qmail-queue's writers under load), can share the work: each takes a
# lock file in turn, and one whose writing was done before a syncfs that
# has since succeeded began needs none of its own.  The file holds the
# start of the last syncfs that succeeded (CLOCK_MONOTONIC, nanoseconds),
# the filesystem it synced, the boot it was in (the clock starts again
# at each boot) and when the file it was called on was opened.  A
# syncfs that failed publishes nothing, so each process then runs its
# own and learns of the failure itself.  That is why the opening counts
# too: syncfs reports a write error only to a file opened before the
# error was first reported, so another process's syncfs stands for ours
# only if its file was opened no later than ours (an error after our
# opening is then one it would have reported too).

GROUP_STAMP = struct.Struct('<QQQ')    # st_dev, start, opened
_boot = []


def _boot_id() -> bytes:
    if not _boot:
        try:
            with open('/proc/sys/kernel/random/boot_id', 'rb') as f:
                _boot.append(f.read(64).strip())
        except OSError:
            _boot.append(b'')
    return _boot[0]


def _group_syncfs(fd: int, dev: int, group: str, written: int, opened) -> int:
    """syncfs(fd) (of filesystem dev), unless a syncfs of it that began
    after written, on a file opened no later than fd, has succeeded
    meanwhile: 0, or the call's -1 (errno set).  opened: (before, after)
    fd was opened, monotonic ns: another's "after" no later than our
    "before" puts its opening first; ours published is our "after"."""
    boot = _boot_id()
    try:
        gfd = os.open(group, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return _sync_dev(fd, dev)
    try:
        fcntl.flock(gfd, fcntl.LOCK_EX)
        data = os.pread(gfd, GROUP_STAMP.size + 64, 0)
        if boot and len(data) > GROUP_STAMP.size and data[GROUP_STAMP.size:] == boot:
            synced, start, its_opened = GROUP_STAMP.unpack_from(data)
            if synced == dev and start > written and its_opened <= opened[0]:
                return 0
        start = time.monotonic_ns()
        rc = _sync_dev(fd, dev)
        if rc == 0 and boot:
            os.pwrite(gfd, GROUP_STAMP.pack(dev, start, opened[1]) + boot, 0)
        return rc
    except OSError:
        return _sync_dev(fd, dev)
    finally:
        os.close(gfd)


def syncfs(fds, group: str = None, opened: tuple = None, wait: bool = False) -> bool:
    """Make everything written to the files (or directories) of fds, and
    everything else on their filesystem, durable at once: True.  False
    where it is not done (see above: the caller fsyncs each one).
    Raises OSError if the filesystem had a writeback error since fds[0]
    was opened (give the earliest opened first); then nothing is known
    to be durable.  group: the lock file of a group commit (above),
    shared by the processes that sync this filesystem, and opened: when
    fds[0] was opened, (time.monotonic_ns() read just before, and just
    after); without it no group.  wait: done however much other data
    waits to be written (for a caller that has no other way)."""
    written = time.monotonic_ns()
    fds = list(fds)
    if not fds or not _syncfs or not (wait or _little_dirty()):
        return False
    dev = _one_trusted_fs(fds)
    if dev is None:
        return False
    _step('syncfs', fds[0])
    rc = (_sync_dev(fds[0], dev) if group is None or opened is None
          else _group_syncfs(fds[0], dev, group, written, opened))
    if rc != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    _done('syncfs', fds[0])
    return True


def name_by_file(fd: int) -> bool:
    """Can the file of fd be made durable with its name without an fsync
    of its directory (sync_name)?  For a directory that may be written
    and searched but not read (a drop box, a 1733 spool), which cannot
    be opened to be synced."""
    if file_fsync_carries_entry(fd):
        return True
    load_writeback()
    return bool(_syncfs) and _one_trusted_fs([fd]) is not None


def sync_name(fd: int) -> bool:
    """Make the file of fd durable with its name, without its directory:
    the file's fsync where that carries a new name, else a syncfs of its
    filesystem (ext2, ext4 without a journal), which writes every
    directory's entries and, with the flush after it, makes them durable
    (above).  False where neither can be trusted here (name_by_file);
    OSError where the disk failed."""
    if file_fsync_carries_entry(fd):
        fsync(fd)
        return True
    load_writeback()
    return syncfs([fd], wait=True)


def syncfs_dirs(paths) -> bool:
    """syncfs() for the entries changed in directories paths, as
    fsync_dirs() would make them durable; False where it is not done
    (a directory that cannot be opened among them too)."""
    if not paths or not _syncfs:
        return False
    fds = []
    try:
        try:
            for path in paths:
                fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError:
            return False
        return syncfs(fds)
    finally:
        for fd in fds:
            os.close(fd)


def sync_files(fds, group: str = None, opened: tuple = None) -> tuple:
    """Make what was written to the files of fds durable: one syncfs()
    where it can (their directory entries, and all else on their
    filesystem, then durable too: whole), else fsync_many().  Returns
    (the descriptors that failed, whole); a failed syncfs fails them
    all.  group, opened: see syncfs()."""
    fds = list(fds)
    try:
        if syncfs(fds, group, opened):
            return [], True
    except OSError:
        return fds, False
    return fsync_many(fds), False


def sync_dirs(paths) -> list:
    """fsync_dirs(), by one syncfs() where it can; the paths that failed
    (all of them if syncfs did)."""
    paths = list(paths)
    try:
        if syncfs_dirs(paths):
            return []
    except OSError:
        return paths
    return fsync_dirs(paths)
