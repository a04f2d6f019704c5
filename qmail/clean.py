"""qmail-clean: remove queue files when qmail-send asks.

Runs as:  qmailq, started by qmail-start; cwd HOME/queue.
Reads:    fd 0, NUL-terminated requests: foop/<messid> (the message is
          finished: remove intd/ and mess/) or todo/<messid> (preprocessing
          is done: remove intd/ and todo/).
Writes:   fd 1, one byte per request: + done, ! try again later,
          x malformed request.
Removes:  those files, and every pid/ file older than OSSIFIED, swept
          every 30 requests (qmail-queue leaves one behind when killed),
          and every intd/ file as old whose mess/ is gone (a crash can
          leave one).
Exits:    0 at end of input; 111 queue unreachable; 100 qmail-send gone.
Trusts:   qmail-send only for the number, which must be digits.
See:      qmail-clean(8); INTERNALS.md "Cleanups".

qmail-clean is the only program that removes files qmail-queue wrote
(mess/, intd/, todo/), since they belong to qmailq.  The removal of
todo/ is made durable (the directory fsynced) before the answer: if a
crash could bring todo/ back, qmail-send would preprocess the message
again and forget which recipients were done.  A mess/ file that comes
back after a crash is harmless (state S2, cleaned once OSSIFIED), so
finishing a message costs no fsync.  Requests that arrive together
(qmail-send preprocesses in batches) are answered together, after one
fsync of each todo/ directory they changed.
"""

import os
import sys
import time

from qmail.lib import auto, durable, proctitle
from qmail.lib.qfile import parse_messid, qfn

OSSIFIED = 129600     # 36 hours, as qmail-send: must exceed qmail-queue's DEATH
SWEEP_EVERY = 30      # requests between sweeps of pid/
REQUEST_MAX = 100     # longest sensible request


def parse_request(req: bytes):
    """(kind, messid) for a well-formed request, else None."""
    if len(req) < 6 or len(req) > REQUEST_MAX:
        return None
    for prefix, kind in ((b'foop/', 'foop'), (b'todo/', 'todo')):
        if req.startswith(prefix):
            digits = req[len(prefix):]
            if digits.isdigit():
                return kind, int(digits)
    return None


def files_for(kind: str, messid: int, split: int):
    """What a request removes, in order: intd/ first (INTERNALS S3 -> S2)."""
    if kind == 'foop':
        return [qfn('intd', messid, split), qfn('mess', messid, split)]
    return [qfn('intd', messid, split), qfn('todo', messid, split)]


def remove_nosync(paths, flagsync: bool):
    """Unlink paths in order: (answer, directory still to fsync or None)."""
    for path in paths:
        try:
            durable.unlink(path)
        except FileNotFoundError:
            continue
        except OSError:
            return b'!', None
    if flagsync:
        # Even with nothing left to remove: a request asked again after
        # the directory's fsync failed finds the file gone, not durably.
        return b'+', os.path.dirname(paths[-1])
    return b'+', None


def answer_all(requests, split: int) -> bytes:
    """The answers to several requests, in order; a directory that more
    than one of them changed is fsynced once, before any is answered."""
    answers = bytearray()
    dirty = {}
    for req in requests:
        parsed = parse_request(req)
        if parsed is None:
            answers += b'x'
            continue
        answer, d = remove_nosync(files_for(*parsed, split), parsed[0] == 'todo')
        if d is not None:
            dirty.setdefault(d, []).append(len(answers))
        answers += answer
    for d, which in dirty.items():
        try:
            durable.fsync_dir(d)
        except OSError:
            for i in which:
                answers[i] = ord('!')
    return bytes(answers)


def sweep_pid(now: float):
    """Remove pid/ files a dead qmail-queue left behind."""
    try:
        names = os.listdir('pid')
    except OSError:
        return
    for name in names:
        path = 'pid/' + name
        try:
            st = os.stat(path)
        except OSError:
            continue
        if now >= st.st_atime + OSSIFIED:
            try:
                durable.unlink(path)
            except OSError:
                pass


def sweep_intd(now: float, split: int):
    """Remove intd/ files whose message is gone, OSSIFIED old.  A crash
    can leave one: the removal of intd/ is never fsynced (while mess/
    stays, a returning intd/ is harmless), but a later fsync of mess/ for
    another message can make the message's own removal durable first.
    qmail-send cannot do this cleanup: intd/ is qmailq's alone."""
    try:
        names = os.listdir('intd')
    except OSError:
        return
    for name in names:
        messid = parse_messid(name)
        if messid is None:
            continue
        path = 'intd/' + name
        try:
            if now < os.stat(path).st_mtime + OSSIFIED:
                continue
            os.stat(qfn('mess', messid, split))
            continue                    # its message lives: not ours
        except FileNotFoundError:
            pass
        except OSError:
            continue
        try:
            durable.unlink(path)
        except OSError:
            pass


def serve(infd: int, outfd: int, split: int) -> int:
    buf = b''
    skipping = False            # inside an overlong request, before its NUL
    sweep = 0
    while True:
        if sweep:
            sweep -= 1
        else:
            sweep_pid(time.time())
            sweep_intd(time.time(), split)
            sweep = SWEEP_EVERY
        while b'\0' not in buf:
            try:
                chunk = os.read(infd, 1024)
            except InterruptedError:
                continue
            except OSError:
                return 0
            if not chunk:
                return 0
            buf += chunk
            if len(buf) > 4 * REQUEST_MAX and b'\0' not in buf:
                buf = b''               # garbage: dropped as it comes, up
                skipping = True         # to its NUL, then answered x once
        *requests, buf = buf.split(b'\0')
        if skipping:
            requests[0] = b''           # the garbage's tail: its one answer
            skipping = False
        try:
            os.write(outfd, answer_all(requests, split))
        except OSError:
            return 100


def main(argv=None) -> int:
    try:
        os.chdir(auto.QMAIL)
        os.chdir('queue')
    except OSError:
        return 111
    return serve(0, 1, auto.SPLIT)


def run():
    import signal
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    proctitle.set_title('qmail-clean')
    try:
        code = main()
    except Exception:
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
