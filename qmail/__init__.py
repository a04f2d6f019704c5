"""qmail in Python: one module per qmail program; shared helpers in qmail.lib.

Imported first by every program, it takes back the one change the
interpreter makes to the environment: started in the C locale, CPython
sets LC_CTYPE=C.UTF-8 (PEP 538), and that would reach every program a
.qmail file runs (qmail-start passes its environment on, and qmail's
INSTALL starts it with "env -" and PATH alone).  The variable is put back
as it was in the environment the program was started with (the kernel
keeps that one in /proc/self/environ): gone if it had none, C or POSIX
if the caller said so; where that cannot be read (a set-uid program),
it stays.

It also stands in for a descriptor 0, 1 or 2 closed when the program
started, where CPython leaves sys.stdin, stdout or stderr None and each
read or write through it raised AttributeError (an "internal bug", an
exit 1, a report lost): reads and writes of fds 0 and 1 fail as on the
closed descriptor (OSError, EBADF, which the programs answer as any
read or write error), and what goes to fd 2 is lost, as a C qmail
program's diagnostics are (strerr ignores the failed write).  So too
a write to an open fd 2 that fails (2>/dev/full): lost, where the
flush at exit turned the program's exit code into CPython's 120.
"""

import io as _io
import os as _os
import sys as _sys

_COERCED = (b'C.UTF-8', b'C.utf8', b'UTF-8')


def _undo_locale_coercion():
    if _os.environb.get(b'LC_CTYPE') not in _COERCED:
        return
    try:
        fd = _os.open('/proc/self/environ', _os.O_RDONLY | _os.O_CLOEXEC)
        try:
            chunks = []
            while True:
                chunk = _os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            _os.close(fd)
    except OSError:
        return
    for entry in b''.join(chunks).split(b'\0'):
        if entry.startswith(b'LC_CTYPE='):
            # The caller's (C or POSIX, coerced): back as it was.
            _os.environb[b'LC_CTYPE'] = entry[len(b'LC_CTYPE='):]
            return
    del _os.environb[b'LC_CTYPE']


_undo_locale_coercion()


class _Closed(_io.BufferedIOBase):
    """The buffer of a standard stream whose descriptor was closed."""

    def __init__(self, lose: bool = False):
        super().__init__()
        self._lose = lose           # writes vanish (fd 2), else fail

    def readable(self):
        return True

    def writable(self):
        return True

    def _fail(self, *args):
        raise OSError(9, 'Bad file descriptor')

    read = read1 = readinto = readinto1 = fileno = _fail

    def write(self, data):
        if self._lose:
            return len(data)
        self._fail()


class _Lossy(_io.RawIOBase):
    """fd 2 for writing, where a failed write is lost (a full disk under
    2>file): the program's exit code stays its own, not CPython's 120
    for a flush that failed at exit."""

    def writable(self):
        return True

    def fileno(self):
        return 2

    def write(self, data):
        try:
            return _os.write(2, data)
        except BlockingIOError:
            raise
        except OSError:
            return len(data)


def _stand_ins_for_closed_stdio():
    if _sys.stdin is None:
        _sys.stdin = _io.TextIOWrapper(_Closed(), encoding='utf-8', errors='surrogateescape')
    if _sys.stdout is None:
        _sys.stdout = _io.TextIOWrapper(_Closed(), encoding='utf-8', errors='surrogateescape',
                                        write_through=True)
    if _sys.stderr is None:
        _sys.stderr = _io.TextIOWrapper(_Closed(lose=True), encoding='utf-8',
                                        errors='backslashreplace', write_through=True)
    elif _sys.stderr is _sys.__stderr__ and _sys.stderr.fileno() == 2:
        # (only the interpreter's own: a test harness's capture stays)
        _sys.stderr = _io.TextIOWrapper(_io.BufferedWriter(_Lossy()),
                                        encoding=_sys.stderr.encoding,
                                        errors='backslashreplace', write_through=True)


_stand_ins_for_closed_stdio()
