"""except: reverse the exit code of a program.

Runs as:  the user, usually from a .qmail file: |except program [arg ...].
Reads:    nothing itself; program inherits fds 0, 1, 2, the environment
          and the cwd, and is found on PATH as execvp finds it.
Writes:   fd 2, one line when it fails.
Exits:    100 if program exits 0; 111 if program exits 111, crashes, or
          cannot be started for a temporary reason; 0 for any other exit
          code, including a program that does not exist.  100 for usage.
See:      except(1), bouncesaying(1), condredirect(1), qmail-command(8).

The module also holds what except.c shares with its siblings: starting
a program as fork+execvp would (spawn), reading its exit code as
qmail's wait_exitcode does (wait_exitcode), and the errno split of
qmail's error_temp (is_temporary, from qmail.lib.error).  bouncesaying, condredirect,
preline and predate import them from here.
"""

import os
import sys

from qmail.lib import execvp
from qmail.lib.error import error_str, is_temporary

USAGE = b'except: usage: except program [ arg ... ]'
FATAL = b'except: fatal: '


DEFAULT_SIGNALS = execvp.DEFAULT_SIGNALS


class ChildCrashed(Exception):
    """The child was killed by a signal: qmail's wait_crashed."""


def errstr(err: OSError) -> bytes:
    """The text strerr_die*sys puts after the colon: qmail's error_str
    ("file does not exist", "access denied")."""
    if err.errno is None:
        return str(err).encode('utf-8', 'replace')
    return error_str(err.errno)


def byteargs(argv) -> list:
    """Arguments as bytes, as C sees them."""
    return [a if isinstance(a, bytes) else os.fsencode(a) for a in argv]


def say(line: bytes) -> None:
    """One line on fd 2, unbuffered, as strerr writes it."""
    data = memoryview(line + b'\n')
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass


def internal_bug(prog: bytes, err: BaseException) -> int:
    """The last-resort report: one line, and the safe temporary code."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_name if tb is not None else '?'
    say(prog + b': fatal: internal bug (%s in %s)' % (
        type(err).__name__.encode(), where.encode()))
    return 111


# ---------------------------------------------------------------- children

def spawn(args, stdin_fd=None) -> int:
    """Start args[0], found on PATH, with args; stdin_fd becomes its fd 0.

    The pid, or OSError if it could not be started (posix_spawnp reports
    the exec failure here, where fork+execvp would report it in the
    child's exit code); a script without #! runs under /bin/sh, as
    execvp would run it.  Our own descriptors are close-on-exec, so the
    child sees only fds 0, 1, 2 and whatever the caller passed down.
    """
    actions = []
    if stdin_fd is not None:
        actions.append((os.POSIX_SPAWN_DUP2, stdin_fd, 0))
    return execvp.spawnp(args, os.environ, file_actions=actions,
                         setsigdef=DEFAULT_SIGNALS)


def wait_exitcode(pid: int) -> int:
    """Wait for pid; its exit code.  ChildCrashed if a signal killed it;
    OSError if the wait failed."""
    _, wstat = os.waitpid(pid, 0)
    if os.WIFSIGNALED(wstat):
        raise ChildCrashed()
    return os.WEXITSTATUS(wstat)


def run_program(args) -> int:
    """Run args to completion on our fds; its exit code.

    A program that cannot be started gives the code except.c's child
    exits with after a failed execvp: 111 for a temporary errno, else
    100.  ChildCrashed and OSError (wait failed) as wait_exitcode.
    """
    try:
        pid = spawn(args)
    except OSError as err:
        return 111 if is_temporary(err) else 100
    return wait_exitcode(pid)


def child_verdict(prog: bytes, args):
    """Run args for bouncesaying, condredirect or except.

    (None, None) if the program exited 0; else (code, message) for the
    caller to exit with: 111 with "temporary child error" for exit 111,
    "child crashed" or "wait failed"; 0 with no message for any other
    exit, "so the rest of .qmail will be processed as usual".
    """
    fatal = prog + b': fatal: '
    try:
        code = run_program(args)
    except ChildCrashed:
        return 111, fatal + b'child crashed'
    except OSError:
        return 111, fatal + b'wait failed'
    if code == 0:
        return None, None
    if code == 111:
        return 111, fatal + b'temporary child error'
    return 0, None


# ---------------------------------------------------------------- except

def reverse(code):
    """except(1)'s table, given child_verdict's code (None for exit 0)."""
    if code is None:
        return 100
    return code


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:
        args = byteargs(argv)
        if not args:
            say(USAGE)
            return 100
        code, message = child_verdict(b'except', args)
        if message is not None:
            say(message)
        return reverse(code)
    except MemoryError:
        say(FATAL + b'out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'except', err)


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
