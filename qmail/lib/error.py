"""Temporary or permanent: qmail's error_temp, in one place; and
qmail's error_str, the text of an errno in reports and warnings.

An OSError whose errno is in TEMPORARY is worth retrying (the disk may
free up, the network come back); any other is taken as permanent by the
programs that must choose (qmail-local, qmail-getpw, except, ...).
"""

import errno
import io
import os

TEMPORARY = frozenset(getattr(errno, name) for name in (
    'EINTR', 'ENOMEM', 'ETXTBSY', 'EIO', 'ETIMEDOUT', 'EWOULDBLOCK',
    'EAGAIN', 'EDEADLK', 'EBUSY', 'ENFILE', 'EMFILE', 'EFBIG', 'ENOSPC',
    'ENETDOWN', 'ENETUNREACH', 'ENETRESET', 'ECONNABORTED', 'ECONNRESET',
    'ENOBUFS', 'ETOOMANYREFS', 'ECONNREFUSED', 'EHOSTDOWN', 'EHOSTUNREACH',
    'EPROCLIM', 'EUSERS', 'EDQUOT', 'ESTALE', 'ENOLCK') if hasattr(errno, name))


def is_temporary(err) -> bool:
    """Whether an OSError (or an errno) is worth retrying."""
    code = err if isinstance(err, int) else err.errno
    return code in TEMPORARY


# qmail's error_str texts: they appear in reports, so they are qmail's.
ERROR_STR = {
    0: 'no error',
    errno.EINTR: 'interrupted system call',
    errno.ENOMEM: 'out of memory',
    errno.ENOENT: 'file does not exist',
    errno.ETXTBSY: 'text busy',
    errno.EIO: 'input/output error',
    errno.EEXIST: 'file already exists',
    errno.ETIMEDOUT: 'timed out',
    errno.EINPROGRESS: 'operation in progress',
    errno.EAGAIN: 'temporary failure',
    errno.EPIPE: 'broken pipe',
    errno.EPERM: 'permission denied',
    errno.EACCES: 'access denied',
    errno.ESRCH: 'no such process',
    errno.ENXIO: 'device not configured',
    errno.E2BIG: 'argument list too long',
    errno.ENOEXEC: 'exec format error',
    errno.EBADF: 'file descriptor not open',
    errno.ECHILD: 'no child processes',
    errno.EDEADLK: 'operation would cause deadlock',
    errno.EFAULT: 'bad address',
    errno.EBUSY: 'device busy',
    errno.EXDEV: 'cross-device link',
    errno.ENODEV: 'device does not support operation',
    errno.ENOTDIR: 'not a directory',
    errno.EISDIR: 'is a directory',
    errno.EINVAL: 'invalid argument',
    errno.ENFILE: 'system cannot open more files',
    errno.EMFILE: 'process cannot open more files',
    errno.ENOTTY: 'not a tty',
    errno.EFBIG: 'file too big',
    errno.ENOSPC: 'out of disk space',
    errno.ESPIPE: 'unseekable descriptor',
    errno.EROFS: 'read-only file system',
    errno.EMLINK: 'too many links',
    errno.EOPNOTSUPP: 'operation not supported',
    errno.ELOOP: 'symbolic link loop',
    errno.ENAMETOOLONG: 'file name too long',
    errno.ENOTEMPTY: 'directory not empty',
    errno.EUSERS: 'too many users',
    errno.EDQUOT: 'disk quota exceeded',
    errno.ESTALE: 'stale NFS file handle',
    errno.ENOLCK: 'no locks available',
    errno.ENOSYS: 'system call not available',
}


def error_str(err) -> bytes:
    """qmail's text for an OSError (or an errno)."""
    code = err if isinstance(err, int) else err.errno
    text = ERROR_STR.get(code)
    if text is None:
        text = os.strerror(code).lower() if code else 'unknown error'
    return text.encode()


class _Output(io.RawIOBase):
    """fd 1 for a report's sys.stdout: a write that fails is remembered,
    not raised, and the rest of the report dropped, so the failure is
    told once, at the end (flushed_status), whatever was writing."""

    def __init__(self):
        super().__init__()
        self.error = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.error is None:
            try:
                return os.write(1, data)
            except BrokenPipeError as err:
                self.error = err
                raise                   # the reader is gone: stop (| head)
            except OSError as err:
                self.error = err
        return len(data)


_output = []


def guard_stdout() -> None:
    """Make sys.stdout a report's (_Output): a full disk or a closed
    fd 1 (where CPython gives sys.stdout None) becomes one line and exit
    111 from flushed_status, not an exception wherever the buffer filled."""
    import sys
    old = sys.stdout
    raw = _Output()
    try:
        tty = os.isatty(1)
    except OSError:
        tty = False
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw, 65536),
        encoding=getattr(old, 'encoding', None) or 'utf-8',
        errors=getattr(old, 'errors', None) or 'strict',
        line_buffering=tty)         # an admin watching sees each line
    _output[:] = [raw]


def flushed_status(code: int, prog: str) -> int:
    """code, once stdout is flushed; 111 with one line on fd 2 if the
    output could not be written (a full disk, /dev/full, fd 1 closed),
    not CPython's "Exception ignored" and exit 120 at its own last
    flush.  A reader gone away (| head) is no failure."""
    import sys
    err = None
    try:
        if sys.stdout is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        sys.stdout.flush()
    except OSError as e:
        err = e
    if err is None and _output:
        err = _output[0].error
    if err is not None and not isinstance(err, BrokenPipeError) and code == 0:
        try:
            os.write(2, b'%s: fatal: unable to write output: %s\n'
                     % (prog.encode(), error_str(err)))
        except OSError:
            pass
        code = 111
    return code


def exit_flushed(code: int, prog: str) -> None:
    """End the program with flushed_status(code, prog).  Never returns."""
    import sys
    code = flushed_status(code, prog)
    try:
        sys.stderr.flush()
    except (OSError, AttributeError):
        pass
    os._exit(code)


def interrupt_kills() -> None:
    """SIGINT back to its default: a ^C ends the program at once and
    quietly, as it ends a C qmail program, not with CPython's
    KeyboardInterrupt traceback."""
    import _signal
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
