"""mailsubj: send a mail message with a subject line.

Runs as:  anyone: mailsubj subject recip ...
Reads:    fd 0, the body of the message.
Writes:   to qmail-inject, run in this process with no arguments (so it
          takes the recipients from the header):
              Subject: subject
              To: recip ...
              <blank line>
              body
          subject and recips go in as given; they must be quoted
          properly for the header.
Exits:    qmail-inject's: 0 queued; 100 a header that does not parse or
          no recipients; 111 temporary trouble.  100 with no arguments.
See:      mailsubj(1), qmail-inject(8), qmail-header(5).
"""

import io
import sys

from qmail.except_ import byteargs, internal_bug, say
from qmail.lib import blockread
from qmail.lib.error import interrupt_kills

USAGE = b'mailsubj: usage: mailsubj subject recip ...'
BUFSIZE = 65536


def header(subject: bytes, recips) -> bytes:
    """What mailsubj.sh's echo lines produce."""
    return (b'Subject: ' + subject + b'\n' +
            b'To:' + b''.join(b' ' + r for r in recips) + b'\n' +
            b'\n')


class PrefixReader(blockread.Raw):
    """prefix, then whatever fd holds: a pipe's two ends in one file."""

    def __init__(self, prefix: bytes, fd: int):
        super().__init__(fd)
        self.prefix = memoryview(prefix)

    def readinto(self, b):
        if self.prefix:
            n = min(len(b), len(self.prefix))
            b[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        return super().readinto(b)


def prefixed_stdin(prefix: bytes):
    """A binary file reading prefix and then fd 0."""
    return io.BufferedReader(PrefixReader(prefix, 0), BUFSIZE)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:
        args = byteargs(argv)
        if not args:
            say(USAGE)
            return 100
        from qmail import inject    # imported late: it is a big module
        return inject.main([], stdin=prefixed_stdin(header(args[0], args[1:])))
    except MemoryError:
        say(b'mailsubj: fatal: out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'mailsubj', err)


def run():
    interrupt_kills()
    sys.exit(main())


if __name__ == '__main__':
    run()
