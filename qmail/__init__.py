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
"""

import os as _os

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
