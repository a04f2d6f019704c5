"""posix_spawnp with execvp's fallback to the shell.

qmail starts the programs a user or an admin names (a .qmail checker run
by except, bouncesaying, condredirect, preline or predate; a
checkpassword) with execvp, which runs a file the kernel will not
execute (ENOEXEC: a script without a #! line) with /bin/sh, as POSIX
requires.  glibc's posix_spawnp does not: the script would count as
missing.  spawnp() spawns, and on ENOEXEC spawns /bin/sh with the file
found on PATH, as execvp does.  Pure process start-up: no I/O of its own.
"""

import _signal
import errno
import os

SHELL = '/bin/sh'

# CPython ignores these at its start, and an ignored signal stays ignored
# across exec: a program qmail starts gets their defaults back, as a C
# qmail's child has them (setsigdef=DEFAULT_SIGNALS).
DEFAULT_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


def find(name):
    """The file execvp would run for name: name itself if it holds a
    slash, else the first executable of that name in our PATH (the
    default path without one), where posix_spawnp looks too, whatever
    environment the child gets; None if there is none."""
    if isinstance(name, str):
        name = os.fsencode(name)
    if b'/' in name:
        return name
    for d in os.get_exec_path():
        path = os.path.join(os.fsencode(d) or b'.', name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def spawnp(args, environ, **kw):
    """os.posix_spawnp(args[0], args, environ, **kw) (args[0] looked for
    on this process's PATH, not environ's); a file the kernel cannot
    execute is run by /bin/sh instead.  The pid, or OSError (ENOENT
    for an empty name, as execvp gives: posix_spawnp refuses it with a
    ValueError)."""
    if not args or not args[0]:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), '')
    try:
        return os.posix_spawnp(args[0], args, environ, **kw)
    except OSError as err:
        if err.errno != errno.ENOEXEC:
            raise
        path = find(args[0])
        if path is None:
            raise
        return os.posix_spawn(SHELL, [os.fsencode(SHELL), path]
                              + [os.fsencode(a) for a in args[1:]], environ, **kw)
