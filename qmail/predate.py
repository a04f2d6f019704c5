"""predate: put a Date field in front of a message and feed it to a program.

Runs as:  anyone: predate child [arg ...]; datemail is predate sendmail.
Reads:    fd 0, the message; the clock and the local time zone.
Writes:   to child's fd 0 through a pipe: "Date: " with the local time
          and its numeric offset from GMT (RFC 822, four-digit year),
          then fd 0 as it is.  child keeps our fds 1 and 2.
Exits:    child's exit code; 111 if child crashes or cannot be started,
          or fd 0 cannot be read;
          100 usage.
See:      qmail 1.03 predate.c; qmail-header(5).

A write error (the child stopped reading) just ends the copy: child's
exit code decides, as in predate.c.  Beyond predate.c, a read error
kills child before it sees the end of its input (a sendmail would
queue the message cut short) and exits 111.
"""

import os
import signal
import sys
import time

from qmail.except_ import (ChildCrashed, byteargs, errstr, internal_bug,
                           say, spawn, wait_exitcode)
from qmail.preline import InputError, copy_with_prefix
from qmail.lib.error import interrupt_kills

USAGE = b'predate: usage: predate child'
FATAL = b'predate: fatal: '

MONTHS = (b'Jan', b'Feb', b'Mar', b'Apr', b'May', b'Jun',
          b'Jul', b'Aug', b'Sep', b'Oct', b'Nov', b'Dec')


def date_line(tm, gmtoff: int) -> bytes:
    """The Date field for local broken-down time tm, gmtoff seconds east
    of GMT; the offset rounded to the minute, as predate.c does."""
    if gmtoff < 0:
        sign, minutes = b'-', (-gmtoff + 30) // 60
    else:
        sign, minutes = b'+', (gmtoff + 30) // 60
    return b'Date: %d %s %d %02d:%02d:%02d %s%02d%02d\n' % (
        tm.tm_mday, MONTHS[tm.tm_mon - 1], tm.tm_year,
        tm.tm_hour, tm.tm_min, tm.tm_sec,
        sign, minutes // 60, minutes % 60)


def date_now(now: float) -> bytes:
    tm = time.localtime(int(now))
    return date_line(tm, tm.tm_gmtoff)


def predate(args) -> int:
    if not args:
        say(USAGE)
        return 100
    try:
        pi = os.pipe()
    except OSError as err:
        say(FATAL + b'unable to create pipe: ' + errstr(err))
        return 111
    try:
        pid = spawn(args, stdin_fd=pi[0])
    except OSError as err:
        os.close(pi[0])
        os.close(pi[1])
        say(FATAL + b'unable to run ' + args[0] + b': ' + errstr(err))
        return 111
    os.close(pi[0])
    cut = None
    try:
        copy_with_prefix(date_now(time.time()), 0, pi[1])
    except InputError as err:
        cut = err
        try:
            os.kill(pid, signal.SIGKILL)    # before it reads the end
        except OSError:
            pass
    except OSError:
        pass        # predate.c leaves substdio_copy's result unchecked
    finally:
        os.close(pi[1])
    if cut is not None:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
        say(FATAL + b'unable to read input: ' + errstr(cut))
        return 111
    try:
        return wait_exitcode(pid)
    except ChildCrashed:
        say(FATAL + b'child crashed')
        return 111
    except OSError as err:
        say(FATAL + b'wait failed: ' + errstr(err))
        return 111


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:
        return predate(byteargs(argv))
    except MemoryError:
        say(FATAL + b'out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'predate', err)


def run():
    interrupt_kills()
    sys.exit(main())


if __name__ == '__main__':
    run()
