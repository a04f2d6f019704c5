"""Durable steps on disk, each one named.

Every program that changes the queue or a mailbox does it through these
helpers, so the order of steps is visible in one place and a test can
watch it.  A step that fails raises OSError; the caller knows what the
failure means for its state (see INTERNALS.md, states S1-S5).

Linux, unlike the BSD filesystems qmail was written for, does not make
link() and rename() durable by themselves: the directory must be
fsynced too, which fsync_dir() does.
"""

import os

# A hook for tests of crash safety: called with the step's name and path
# before the step runs.  Set only by code (never from the environment),
# so no caller of a privileged program can reach it.
hook = None


def _step(name, path):
    if hook is not None:
        hook(name, path)


def create_excl(path: str, mode: int = 0o644) -> int:
    """Create path, which must not exist; return a descriptor for writing."""
    _step('create', path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                   os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def write_all(fd: int, data) -> None:
    """Write every byte of data, however many writes that takes."""
    _step('write', fd)
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync(fd: int) -> None:
    _step('fsync', fd)
    os.fsync(fd)


def link(src: str, dst: str) -> None:
    _step('link', dst)
    os.link(src, dst)


def rename(src: str, dst: str) -> None:
    _step('rename', dst)
    os.rename(src, dst)


def unlink(path: str) -> None:
    _step('unlink', path)
    os.unlink(path)


def fsync_dir(path: str) -> None:
    """Make the entries of directory path durable."""
    _step('fsync_dir', path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
