"""Fill a queue fast: tests/integration/delivery.py's fast_queue (qmail-
queue's own writer, qmail.queue.inject, in forked processes running as
qmailq: the real code path of an injection without an interpreter start
per message), spread over several workers, so 100,000 messages take a
minute rather than several."""

import os
import pwd
import time

from procs import BenchError


def worker(home: str, first: int, count: int, recips, sender: bytes, body: bytes):
    from qmail import queue
    from qmail.lib import auto
    os.setgroups([])
    os.setgid(pwd.getpwnam('qmailq').pw_gid)
    os.setuid(pwd.getpwnam('qmailq').pw_uid)
    os.chdir(os.path.join(home, 'queue'))
    uids = queue.queue_uids()
    env = b'F' + sender + b'\0' + b''.join(b'T' + r + b'\0' for r in recips) + b'\0'
    for i in range(first, first + count):
        message = b'Subject: bench %d\n\n%s\n' % (i, body)
        mr, mw = os.pipe()
        er, ew = os.pipe()
        # small enough for the pipe buffers: write, close, read
        os.write(mw, message)
        os.close(mw)
        os.write(ew, env)
        os.close(ew)
        rc = queue.inject(mr, er, 0, os.getpid(), time.time(), uids, auto.SPLIT)
        os.close(mr)
        os.close(er)
        if rc:
            return rc
    return 0


def fill(home: str, count: int, recips, workers: int = 4,
         sender: bytes = b'bench@example.com', size: int = 2000):
    """Queue count messages of about size bytes to recips (bytes)."""
    body = b'x' * size
    per, extra = divmod(count, workers)
    pids, first = [], 0
    for w in range(workers):
        n = per + (1 if w < extra else 0)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = worker(home, first, n, recips, sender, body)
            finally:
                os._exit(code)
        pids.append(pid)
        first += n
    bad = []
    for pid in pids:
        _, wstat = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(wstat) != 0:
            bad.append(os.waitstatus_to_exitcode(wstat))
    if bad:
        raise BenchError('filling the queue failed: exit codes %s' % bad)
