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

import os

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
            if syncfs_reports_errors(os.uname().release):
                fn = getattr(libc, 'syncfs', None)
                if fn is not None:
                    fn.argtypes = [ctypes.c_int]
                    _syncfs = fn
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
# stay under SYNCFS_DIRTY_MAX, and never where the kernel does not report
# writeback errors through it (before Linux 5.8 it returned 0 always).

SYNCFS_DIRTY_MAX = 16 << 20     # bytes waiting to be written, machine-wide


def syncfs_reports_errors(release: str) -> bool:
    """Does a kernel of this uname release report errors from syncfs?"""
    try:
        major, minor = release.split('.')[:2]
        return (int(major), int(''.join(c for c in minor if c.isdigit()) or 0)) >= (5, 8)
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


def _little_dirty() -> bool:
    try:
        fd = os.open('/proc/meminfo', os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 16384)
        finally:
            os.close(fd)
    except OSError:
        return False
    return dirty_bytes(text) <= SYNCFS_DIRTY_MAX


def syncfs(fd: int) -> bool:
    """Make everything on fd's filesystem durable at once: True.  False
    where it is not done (syncfs unknown here, or too much dirty data
    machine-wide): the caller fsyncs file by file.  Raises OSError if
    the filesystem had a writeback error since fd was opened; then
    nothing is known to be durable."""
    if not _syncfs or not _little_dirty():
        return False
    _step('syncfs', fd)
    if _syncfs(fd) != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    _done('syncfs', fd)
    return True


def syncfs_dir(path) -> bool:
    """syncfs() of the filesystem holding directory path (its changes
    are made durable as fsync_dir's are, and everything else there)."""
    if not _syncfs:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return syncfs(fd)
    finally:
        os.close(fd)
