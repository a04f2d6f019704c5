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

The steps, as the hooks name them: create, open_append, write, pwrite,
truncate, fsync, link, rename, unlink, fsync_dir.  A file step names
its target by descriptor, a directory step by path.
"""

import _thread     # the C module: no import cost for qmail-queue's start
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
# fsync() waits for a journal commit; a program that has many files to make
# durable (qmail-send preprocessing a batch) gets them all into one commit
# by asking for them together, from threads: the filesystem serves
# concurrent fsyncs with the same commit (group commit), where one after
# another each waits for its own.  Under crash tests (hook set) they run
# one after another, in order, so each step stays a crash point.

_pool = None
_pool_lock = _thread.allocate_lock()
POOL_THREADS = 16
THREADS_FROM = 4        # fewer are done one after another: a thread costs too


def _each(fn, items) -> list:
    """fn(item) for every item, together; the items whose fn raised
    OSError (each is tried once: a second fsync after a failed one may
    report success for data that was lost)."""
    global _pool
    items = list(items)
    failed = []
    if hook is not None or after is not None or len(items) < THREADS_FROM:
        for item in items:
            try:
                fn(item)
            except OSError:
                failed.append(item)
        return failed
    with _pool_lock:                   # qmail-send's two disk threads share it
        if _pool is None:
            _pool = _Pool(POOL_THREADS)
    return _pool.each(fn, items)


def _forget_pool():
    global _pool, _pool_lock
    _pool = None
    _pool_lock = _thread.allocate_lock()


# A forked child has none of the parent's threads: it starts its own pool.
os.register_at_fork(after_in_child=_forget_pool)


class _Pool:
    """Threads taking (fn, item, batch) from one queue; a batch's caller
    waits until its last item is done (cheaper per item than futures)."""

    def __init__(self, n: int):
        import queue
        import threading
        self._lock = threading.Lock
        self.work = queue.SimpleQueue()
        for _ in range(n):
            threading.Thread(target=self._thread, name='fsync', daemon=True).start()

    def each(self, fn, items) -> list:
        batch = _Batch(len(items), self._lock)
        for item in items:
            self.work.put((fn, item, batch))
        batch.done.acquire()            # released by the last item's thread
        if batch.error is not None:
            raise batch.error
        return [item for item in items if item in batch.failed]

    def _thread(self):
        while True:
            fn, item, batch = self.work.get()
            try:
                fn(item)
            except OSError:
                batch.failed.append(item)
            except BaseException as e:
                batch.error = e
            with batch.count:
                batch.left -= 1
                if batch.left == 0:
                    batch.done.release()


class _Batch:
    def __init__(self, n: int, lock):
        self.left = n
        self.failed = []
        self.error = None
        self.count = lock()
        self.done = lock()
        self.done.acquire()


def fsync_many(fds) -> list:
    """fsync() each descriptor, together; those that failed."""
    return _each(fsync, fds)


def fsync_dirs(paths) -> list:
    """fsync_dir() each directory, together; those that failed."""
    return _each(fsync_dir, paths)
