"""condredirect: perhaps redirect mail to another address.

Runs as:  the user, from a .qmail file:
          |condredirect newaddress program [arg ...]
Reads:    fd 0, the message, which must be seekable (qmail-local gives a
          file): program reads it first, then it is rewound and read
          again.  SENDER and DTLINE from qmail-local's environment;
          QMAILQUEUE; control/srs_* (below).
Writes:   if program exits 0: DTLINE and the message to qmail-queue
          ($QMAILQUEUE, else HOME/bin/qmail-queue) with the envelope
          F<SENDER> T<newaddress>, and "condredirect: qp <pid>" on fd 2.
Exits:    99 redirected, so qmail-local ignores the rest of .qmail;
          0 if program exits other than 0 or 111 (or does not exist),
          so the rest of .qmail is processed as usual; 111 if program
          exits 111, crashes or cannot be started for a temporary
          reason, or on a temporary qmail-queue failure, a rewind or
          read error; 100 usage, SENDER or DTLINE not set, or
          qmail-queue's permanent failure.
See:      condredirect(1), bouncesaying(1), except(1), qmail-command(8).

The envelope sender is SENDER, as in qmail 1.03's condredirect.c, not
NEWSENDER as forward uses: a redirected message keeps its sender, or,
with control/srs_domain (beyond qmail, as the qmail SRS patch does),
that sender made an SRS address (qmail.lib.srs; controls that cannot be
read, or no secret: exit 111).
"""

import os
import sys

from qmail.except_ import (byteargs, child_verdict, errstr, internal_bug,
                           say)
from qmail.lib import auto, srs
from qmail import forward

USAGE = (b'condredirect: usage: condredirect newaddress program'
         b' [ arg ... ]')
FATAL = b'condredirect: fatal: '


def condredirect(args) -> int:
    if len(args) < 2:
        say(USAGE)
        return 100
    code, message = child_verdict(b'condredirect', args[1:])
    if code is not None:
        if message is not None:
            say(message)
        return code

    try:
        os.lseek(0, 0, os.SEEK_SET)
    except OSError as err:
        say(FATAL + b'unable to rewind: ' + errstr(err))
        return 111

    env = os.environb
    sender = env.get(b'SENDER')
    if sender is None:
        say(FATAL + b'SENDER not set')
        return 100
    dtline = env.get(b'DTLINE')
    if dtline is None:
        say(FATAL + b'DTLINE not set')
        return 100
    try:
        sender = srs.rewrite(auto.QMAIL, sender)
    except OSError as err:
        say(FATAL + b'unable to read the SRS controls: ' + errstr(err))
        return 111
    except srs.SrsError as err:
        say(FATAL + b'unable to rewrite the sender with SRS: ' + str(err).encode())
        return 111

    code = forward.send_on(b'condredirect', sender, dtline, [args[0]])
    return 99 if code == 0 else code


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:
        return condredirect(byteargs(argv))
    except MemoryError:
        say(FATAL + b'out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'condredirect', err)


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
