"""bouncesaying: perhaps bounce each incoming message.

Runs as:  the user, from a .qmail file: |bouncesaying error [program [arg ...]].
Reads:    nothing itself; program inherits fds 0, 1, 2 (the message on
          fd 0, as qmail-local gives it) and the environment.
Writes:   fd 2: error, which qmail-local puts in the bounce.
Exits:    100 after writing error, if there is no program or it exits 0;
          111 if program exits 111, crashes, or cannot be started for a
          temporary reason; 0 for any other exit code (or no such
          program), so the rest of .qmail is processed.  100 for usage.
See:      bouncesaying(1), condredirect(1), except(1), qmail-command(8).
"""

import sys

from qmail.except_ import byteargs, child_verdict, internal_bug, say

USAGE = b'bouncesaying: usage: bouncesaying error [ program [ arg ... ] ]'


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:
        args = byteargs(argv)
        if not args:
            say(USAGE)
            return 100
        if len(args) > 1:
            code, message = child_verdict(b'bouncesaying', args[1:])
            if code is not None:
                if message is not None:
                    say(message)
                return code
        say(args[0])
        return 100
    except MemoryError:
        say(b'bouncesaying: fatal: out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'bouncesaying', err)


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
