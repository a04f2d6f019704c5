"""qmail-tcpto: print qmail-remote's list of addresses that timed out.

Usage:    qmail-tcpto
Runs as:  root, or qmailr with group qmail (the file is qmailr's).
Reads:    HOME/queue/lock/tcpto, under its lock (qmail.lib.tcpto).
Writes:   fd 1, one line per remembered address:
          "1.2.3.4 timed out 125 seconds ago; # recent timeouts: 2"
          (IPv6 addresses too).  Errors on fd 2.
Exits:    0 listed; 111 the file could not be opened, locked or read.
See:      qmail-tcpto(8), qmail-tcpok(8).
"""

import sys
import time

from qmail.lib import tcpto
from qmail.lib import error
from qmail.lib.error import exit_flushed


def format_records(records, now: int) -> bytes:
    """qmail-tcpto's lines for [(address, count, when)]."""
    return b''.join(b'%s timed out %d seconds ago; # recent timeouts: %d\n'
                    % (ip.encode("ascii"), max(0, now - when), count)
                    for ip, count, when in records)


def fatal(what: str, err: OSError) -> int:
    sys.stderr.write('qmail-tcpto: fatal: unable to %s: %s\n'
                     % (what, error.error_str(err).decode() if err.errno else err))
    return 111


def main(argv=None) -> int:
    try:
        buf = tcpto.read_table(tcpto.path())
    except OSError as err:
        return fatal('read %s' % tcpto.path(), err)
    data = format_records(tcpto.records(buf), int(time.time()))
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except OSError as err:
        return fatal('write', err)
    return 0


def run():
    error.guard_stdout()            # a full disk or closed fd 1: one line, 111
    try:
        code = main()
    except Exception as err:
        sys.stderr.write('qmail-tcpto: fatal: %s\n' % type(err).__name__)
        code = 111
    exit_flushed(code, 'qmail-tcpto')


if __name__ == '__main__':
    run()
