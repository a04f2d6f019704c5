"""qmail-qstat: how many messages are in the queue.

Runs as:  root, or a user in group qmail.
Reads:    HOME/queue/mess/*/ and HOME/queue/todo/.
Writes:   fd 1, two lines: messages in queue; not yet preprocessed.
Exits:    0; 111 if the queue cannot be read (one line on stderr).
See:      qmail-qstat(8).
"""

import os
import sys

from qmail.lib import auto


def count_files(path: str) -> int:
    with os.scandir(path) as it:
        return sum(1 for e in it if e.is_file(follow_symlinks=False))


def count_queue(queue: str, split: int):
    """(messages, not yet preprocessed)."""
    mess = sum(count_files(os.path.join(queue, 'mess', str(i)))
               for i in range(split))
    return mess, count_files(os.path.join(queue, 'todo'))


def main(argv=None) -> int:
    queue = os.path.join(auto.QMAIL, 'queue')
    try:
        mess, todo = count_queue(queue, auto.SPLIT)
    except OSError as e:
        sys.stderr.write('qmail-qstat: fatal: unable to read %s: %s\n'
                         % (e.filename or queue, e.strerror))
        return 111
    sys.stdout.write('messages in queue: %d\n' % mess)
    sys.stdout.write('messages in queue but not yet preprocessed: %d\n' % todo)
    return 0


def run():
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        code = 0
    except Exception as e:
        sys.stderr.write('qmail-qstat: fatal: internal bug: %s\n' % type(e).__name__)
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
