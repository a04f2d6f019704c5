"""Temporary or permanent: qmail's error_temp, in one place.

An OSError whose errno is in TEMPORARY is worth retrying (the disk may
free up, the network come back); any other is taken as permanent by the
programs that must choose (qmail-local, qmail-getpw, except, ...).
"""

import errno

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
