"""qmail-qstat: how many messages are in the queue.

Runs as:  root, or a user in group qmail.
Reads:    HOME/queue/mess/*/ and HOME/queue/todo/.
Writes:   fd 1, two lines: messages in queue; not yet preprocessed
          (in todo/: beyond qmail, that includes the few qmail-send is
          delivering straight from todo/, for as long as that delivery
          takes; see qmail-send's direct delivery).
Exits:    0; 111 if the queue cannot be read, or the counts cannot be
          written (one line on stderr).
See:      qmail-qstat(8).
"""

import os
import sys

from qmail.lib import auto, error


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
                         % (e.filename or queue, error.error_str(e).decode()))
        return 111
    sys.stdout.write('messages in queue: %d\n' % mess)
    sys.stdout.write('messages in queue but not yet preprocessed: %d\n' % todo)
    return 0


def run():
    error.guard_stdout()            # a full disk or closed fd 1: one line, 111
    try:
        code = main()
    except BrokenPipeError:
        code = 0                    # the reader is gone (| head)
    except Exception as e:
        sys.stderr.write('qmail-qstat: fatal: internal bug: %s\n' % type(e).__name__)
        code = 111
    error.exit_flushed(code, 'qmail-qstat')


if __name__ == '__main__':
    run()
