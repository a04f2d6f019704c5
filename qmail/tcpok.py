"""qmail-tcpok: clear qmail-remote's list of addresses that timed out,
so that qmail-remote tries every address again.

Usage:    qmail-tcpok
Runs as:  root, or qmailr with group qmail (the file is qmailr's).
Writes:   HOME/queue/lock/tcpto, all zeros, under its lock
          (qmail.lib.tcpto).  Errors on fd 2.
Exits:    0 cleared; 111 the file could not be opened, locked or written.
See:      qmail-tcpok(8), qmail-tcpto(8).
"""

import sys

from qmail.lib import tcpto
from qmail.lib.error import error_str


def main(argv=None) -> int:
    fn = tcpto.path()
    try:
        tcpto.clear(fn)
    except OSError as err:
        sys.stderr.write('qmail-tcpok: fatal: unable to clear %s: %s\n'
                         % (fn, error_str(err).decode() if err.errno else err))
        return 111
    return 0


def run():
    try:
        code = main()
    except Exception as err:
        sys.stderr.write('qmail-tcpok: fatal: %s\n' % type(err).__name__)
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
