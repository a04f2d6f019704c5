"""qmail-start: turn on mail delivery.

Runs as:  root, usually under a supervisor (daemontools' run script).
Usage:    qmail-start [defaultdelivery [logger arg ...]]
Args:     defaultdelivery, for users without a .qmail file, is passed to
          qmail-lspawn (default ./Mailbox); the logger, if given, reads
          qmail-send's activity record on its stdin, running as qmaill
          (splogger, multilog, or any program).
Starts:   qmail-send (qmails, group qmail), qmail-lspawn (root),
          qmail-rspawn (qmailr, group qmail), qmail-clean (qmailq), with
          the pipes between them on qmail-send's fds 1-6, and the logger;
          beyond qmail, qmail-queued (qmailq), the queue writer that saves
          injections an interpreter start, ending when qmail-send ends.
          Each is a fork of this process, so none pays an interpreter
          start; this process becomes qmail-send.
Writes:   nothing itself; without a logger, qmail-send's record goes to
          qmail-start's stdout.
Exits:    111 on any trouble before qmail-send starts (qmail says
          nothing; this one says why, an "alert: cannot start:" line in
          the log.  A qmail-send already running is named, and nothing else
          is started.  The look at its lock is let go before qmail-send
          takes it: of two qmail-starts at the same instant both may
          start their daemons, and the refused one's qmail-queued take
          the socket; injections then use bin/qmail-queue until the
          next restart, slower, nothing lost).
See:      qmail-start(8), qmail-send(8), qmail-log(5).

The environment given to qmail-start reaches qmail-local and the
programs it runs: start it with a clean one (env - PATH=...).
"""

import os
import sys

from qmail.lib import auto, proctitle


LOG_FD = 1      # the activity record: fd 1 until qmail-start becomes qmail-send, then 0


def die():
    os._exit(111)


def drop(uid: int, gid: int, groups):
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)


def devnull_fd2():
    """qmail closes fd 2 of the daemons; point it at /dev/null instead, so
    no file opened later can take its number."""
    fd = os.open('/dev/null', os.O_WRONLY)
    if fd != 2:
        os.dup2(fd, 2)
        os.close(fd)


def child(fdin: int, fdout: int, pipes, setup, program, logged=False):
    """Fork a daemon reading fdin as its fd 0 and writing fdout as fd 1.
    logged: its fd 2 is qmail-start's fd 1, the log (qmail-queued's,
    which talks to nobody else); else /dev/null."""
    pid = os.fork()
    if pid:
        return pid
    code = 111
    try:
        # A Ctrl-C reaches the whole process group: only qmail-send acts
        # on it; the others finish when qmail-send closes their pipes.
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        setup()
        os.dup2(fdin, 0)
        if logged:
            os.dup2(1, 2)
        else:
            devnull_fd2()
        os.dup2(fdout, 1)
        os.closerange(3, 1 << 16)
        code = program()
    except BaseException:
        code = 111
    finally:
        os._exit(code)


def sendmutex_free(send) -> bool:
    """False if a qmail-send holds its mutex (the lock its start takes;
    tried here and let go).  True if it cannot be looked at: qmail-send's
    start then says why."""
    try:
        fd = send.lock_mutex(os.path.join(auto.QMAIL, 'queue', send.SENDMUTEX))
    except OSError:
        return True
    if fd is None:
        return False
    os.close(fd)
    return True


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.chdir('/')
    os.umask(0o077)
    # (a KeyError: a user or group missing; run() says so)
    uidl, uidq = auto.uid(auto.USER_LOG), auto.uid(auto.USER_QUEUE)
    uidr, uids = auto.uid(auto.USER_REMOTE), auto.uid(auto.USER_SEND)
    gidn, gidq = auto.gid(auto.GROUP_NOFILES), auto.gid(auto.GROUP_QMAIL)
    os.setgroups([gidq])
    os.setgid(gidq)
    for fd in (2, 3, 4, 5, 6):     # keep 2-6 taken while the pipes are made
        os.dup2(0, fd)
    defaultdelivery = argv[0] if argv else './Mailbox'
    logger = argv[1:]

    # Import every daemon now, as root, while the code is readable.
    from qmail import clean, lspawn, queued, rspawn, send
    from qmail.lib import inuse
    inuse.mark()                # this copy stays while the daemons run on it

    if logger:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                drop(uidl, gidn, [gidn])
                os.close(w)
                os.dup2(r, 0)
                for fd in (2, 3, 4, 5, 6):
                    os.close(fd)
                import signal
                from qmail.lib.execvp import DEFAULT_SIGNALS
                for sig in DEFAULT_SIGNALS:     # (multilog's, as qmail-start leaves them)
                    signal.signal(sig, signal.SIG_DFL)
                os.execvp(logger[0], logger)
            except BaseException:
                pass
            os._exit(111)
        os.close(r)
        os.dup2(w, 1)
        os.close(w)

    # Another qmail-send running (a qmail-start by hand, a supervisor's
    # second copy): say so and start nothing, not even the daemons that
    # would end with the refused qmail-send; qmail-queued's start would
    # take the socket of the running one from its clients.
    if not sendmutex_free(send):
        try:
            os.write(1, send.ALREADY_RUNNING.encode())
        except OSError:
            pass
        return 111

    pi = [os.pipe() for _ in range(6)]     # pi1..pi6 of qmail-start.c
    pipes = [fd for p in pi for fd in p]

    def as_lspawn():
        proctitle.set_title('qmail-lspawn ' + defaultdelivery)
        return lspawn.main([defaultdelivery])

    def as_rspawn():
        proctitle.set_title('qmail-rspawn')
        return rspawn.main([])

    def as_clean():
        proctitle.set_title('qmail-clean')
        return clean.main([])

    def setup_rspawn():
        groups = os.getgrouplist(auto.USER_REMOTE, gidq)
        drop(uidr, gidq, groups)

    child(pi[0][0], pi[1][1], pipes, lambda: None, as_lspawn)
    child(pi[2][0], pi[3][1], pipes, setup_rspawn, as_rspawn)
    child(pi[4][0], pi[5][1], pipes, lambda: os.setuid(uidq), as_clean)

    def as_queued():
        proctitle.set_title('qmail-queued')
        return queued.main([])

    def setup_queued():
        drop(uidq, gidq, [gidq])
    # qmail-queued's fd 0 is a pipe whose write end only qmail-send keeps
    # (fd 7, close-on-exec): end of file there tells it to stop.
    pq = os.pipe()
    send.QUEUED_PID = child(pq[0], os.open('/dev/null', os.O_WRONLY), pipes,
                            setup_queued, as_queued, logged=True)
    os.close(pq[0])

    os.setuid(uids)
    os.dup2(1, 0)                          # the activity record: fd 0
    global LOG_FD
    LOG_FD = 0
    os.dup2(pi[0][1], 1)
    os.dup2(pi[1][0], 2)
    os.dup2(pi[2][1], 3)
    os.dup2(pi[3][0], 4)
    os.dup2(pi[4][1], 5)
    os.dup2(pi[5][0], 6)
    os.dup2(pq[1], 7, inheritable=False)
    for fd in pipes:
        if fd > 7:
            os.close(fd)
    os.closerange(8, 1 << 16)
    proctitle.set_title('qmail-send')
    return send.main_logged([])


def run():
    try:
        code = main()
    except BaseException as err:
        # Beyond qmail, which exits without a word: the log says why.
        if isinstance(err, OSError) and err.strerror:
            why = err.strerror
        elif isinstance(err, KeyError):
            why = "unable to find qmail's users and groups"
        else:
            why = 'internal error (%s)' % type(err).__name__
        try:
            os.write(LOG_FD, ('alert: cannot start: qmail-start: %s\n' % why).encode())
        except OSError:
            pass
        code = 111
    os._exit(code)


if __name__ == '__main__':
    run()
