"""qmail-rspawn: run remote deliveries for qmail-send.

Runs as:  qmailr, group qmail, started by qmail-start; cwd HOME/queue/mess.
Reads:    fd 0, qmail-send's delivery commands (see qmail.lib.spawn).
Writes:   fd 1, one report per delivery, made from qmail-remote's
          per-recipient r/h/s lines and its final K/Z/D line.
Runs:     each delivery as qmail-remote host sender recipient in a
          delivery worker (qmail.lib.spawn.Workers): a child of this
          process, the code loaded, that runs up to spawn.MAX_USE
          deliveries one after another; or, when QMAILREMOTE names a
          program, in a forked child that execs it.  Unlike qmail's,
          a QMAILREMOTE that cannot be run (missing, not executable)
          defers the delivery rather than bouncing it: the admin's
          mistake should not bounce all remote mail.  An empty
          QMAILREMOTE names no program: the built-in qmail-remote runs.
Exits:    0 when qmail-send is gone and deliveries are done.
See:      qmail-rspawn(8), qmail-remote(8).
"""

import os
import sys

from qmail.lib import auto, proctitle, spawn


def report(wstat: int, output: bytes) -> bytes:
    """qmail-remote's output and status as one K/Z/D report: the
    recipient's line decides, the final K/Z/D line is appended when it
    does not contradict."""
    if os.WIFSIGNALED(wstat):
        return b'Zqmail-remote crashed.\n'
    code = os.WEXITSTATUS(wstat)
    if code == 111:
        return b'ZUnable to run qmail-remote.\n'
    if code != 0:
        return b'DUnable to run qmail-remote.\n'
    if not output:
        return b'Zqmail-remote produced no output.\n'
    records = output.split(b'\0')
    result = -1
    for rec in records[:-1]:            # only NUL-terminated records count
        if rec[:1] == b'K':
            result = 1
            break
        if rec[:1] == b'Z':
            result = 0
            break
        if rec[:1] == b'D':
            break
    orr = result
    if output[:1] == b's':
        orr = 0
    elif output[:1] == b'h':
        orr = -1
    out = {1: b'K', 0: b'Z', -1: b'D'}[orr]
    first, sep, rest = output[1:].partition(b'\0')
    if not sep:
        return out
    out += first
    if result <= orr and rest[:1] in (b'Z', b'D', b'K'):
        out += rest[1:].split(b'\0', 1)[0]
    return out


def deliver(sender: bytes, recip: bytes, at: int) -> int:
    host = recip[at + 1:]
    program = os.environ.get('QMAILREMOTE')
    args = [os.fsdecode(a) for a in (host, sender, recip)]
    if program:
        try:
            os.execvp(program, [program] + args)
        except OSError:
            return 111
    try:
        from qmail import remote
    except ImportError:
        return 111
    return remote.main(args)


def worker_deliver(fields) -> int:
    """One delivery in a worker: qmail-remote host sender recipient."""
    from qmail import remote
    return remote.main([os.fsdecode(a) for a in fields])


def make_start(spawner):
    """start() for the spawn loop: workers, unless QMAILREMOTE is set."""
    if os.environ.get('QMAILREMOTE'):
        return start
    workers = spawn.Workers(spawner, None, worker_deliver)
    spawner.tick = workers.tick

    def start_in_worker(fdmess, fdout, sender, recip, at, delnum):
        return workers.run('qmailr', None, 'qmail-remote', (recip[at + 1:], sender, recip),
                           fdmess, delnum)
    return start_in_worker


def start(fdmess, fdout, sender, recip, at, delnum=None):
    pid = os.fork()
    if pid == 0:
        code = 111
        try:
            spawn.child_setup(fdmess, fdout)
            code = deliver(sender, recip, at)
        except BaseException:
            code = 111
        finally:
            os._exit(code)
    return pid


def main(argv=None) -> int:
    try:
        os.chdir(auto.QMAIL)
        os.chdir('queue/mess')
    except OSError:
        return 111
    from qmail.lib import tcpto
    tcpto.tcpto_clean()          # as qmail-rspawn does at start
    try:
        import qmail.remote     # loaded once here, used by every child  # noqa: F401
    except ImportError:
        pass
    spawner = spawn.Spawner(None, report, auto.uid(auto.USER_QUEUE))
    spawner.start = make_start(spawner)
    return spawner.loop()


def run():
    proctitle.set_title('qmail-rspawn')
    try:
        code = main()
    except Exception:
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
