"""datemail: sendmail, with a Date field in the local time zone.

Usage:    datemail [sendmail options and arguments]
Runs as:  anyone.
Reads:    fd 0, the message; the clock and the local time zone.
Does:     what qmail's datemail.sh does with "predate sendmail ...":
          sendmail (qmail.sendmail.main, in this same process) reads
          predate's Date line and then fd 0.
Exits:    sendmail's exit code; 111 if fd 0 cannot be replaced or read.
See:      qmail 1.03 datemail.sh, predate.c; sendmail's docstring.

qmail-inject would add a Date in GMT; mail readers that show the
sender's time want the sender's zone, which is what predate writes.

sendmail reads fd 0 itself, so fd 0 becomes a pipe for the call, fed
by a thread with the Date line and then the real fd 0 -- the pipe
predate would have made, without a second interpreter.  XXX sendmail
-bs execs qmail-smtpd on that pipe, where it makes no sense anyway.
"""

import os
import sys
import threading
import time

from qmail.except_ import byteargs, errstr, internal_bug, say
from qmail.predate import date_now
from qmail.preline import InputError, copy_with_prefix
from qmail.lib.error import interrupt_kills

FATAL = b'datemail: fatal: '


def feeder(prefix: bytes, src: int, dst: int) -> None:
    """Thread body: prefix and src into dst, until EOF or the reader
    goes away; owns and closes both fds.  Where src cannot be read, the
    whole process ends (111) before sendmail sees an end of input: it
    would queue the message cut short (its qmail-queue, left with an
    unfinished envelope, queues nothing)."""
    try:
        copy_with_prefix(prefix, src, dst)
    except InputError as err:
        say(FATAL + b'unable to read input: ' + errstr(err))
        os._exit(111)
    except OSError:
        pass
    finally:
        os.close(dst)
        os.close(src)


def with_prefixed_stdin(prefix: bytes, call):
    """call() with fd 0 reading prefix and then the old fd 0; fd 0 is
    restored afterwards.  OSError if the fds cannot be set up."""
    saved = os.dup(0)
    try:
        src = os.dup(0)
        try:
            r, w = os.pipe()
        except OSError:
            os.close(src)
            raise
        # (a stack of its own size, not the soft stack limit, glibc's
        # default: under softlimit -m N, N of stack did not fit in N)
        threading.stack_size(1 << 20)
        thread = threading.Thread(target=feeder, args=(prefix, src, w),
                                  daemon=True)
        thread.start()
        try:
            os.dup2(r, 0)
        finally:
            os.close(r)
        try:
            return call()
        finally:
            # Closing the pipe's last read end stops the feeder (EPIPE)
            # if the call left input unread.
            os.dup2(saved, 0)
    finally:
        os.close(saved)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:
        args = byteargs(argv)
        from qmail import sendmail     # imported late: qmail-inject is big
        try:
            return with_prefixed_stdin(
                date_now(time.time()),
                lambda: sendmail.main(args, 'sendmail'))
        except OSError as err:
            say(FATAL + b'unable to set up fds: ' + errstr(err))
            return 111
    except MemoryError:
        say(FATAL + b'out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'datemail', err)


def run():
    interrupt_kills()
    sys.exit(main())


if __name__ == '__main__':
    run()
