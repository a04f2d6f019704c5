"""Temporary or permanent: qmail's error_temp, in one place; and
qmail's error_str, the text of an errno in reports and warnings.

An OSError whose errno is in TEMPORARY is worth retrying (the disk may
free up, the network come back); any other is taken as permanent by the
programs that must choose (qmail-local, qmail-getpw, except, ...).
"""

import errno
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


def exit_flushed(code: int, prog: str) -> None:
    """End the program with code, its stdout flushed first.  A flush that
    fails (a full disk, /dev/full) is exit 111 with one line on fd 2, not
    CPython's "Exception ignored" and exit 120 at its own last flush; a
    reader gone away (| head) is no failure.  Never returns."""
    import sys
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    except OSError as err:
        if code == 0:
            try:
                os.write(2, b'%s: fatal: unable to write output: %s\n'
                         % (prog.encode(), error_str(err)))
            except OSError:
                pass
            code = 111
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(code)
