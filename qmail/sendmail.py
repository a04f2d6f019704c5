"""sendmail: the sendmail interface, handing mail to qmail-inject.

Runs as:  any user, as sendmail, mailq or newaliases (by name).
Reads:    its options; the message on fd 0 (read by qmail-inject).
Does:     sendmail [-t] [-fsender] [-Fname] [arg ...]: runs qmail-inject
          in this same process (no second interpreter) as
          qmail-inject -a|-H [-f sender] -- arg ...; -t means -H, the
          default is -a.  -f also sets QMAILUSER and QMAILHOST from the
          sender, dropping QMAILNAME MAILNAME NAME QMAILHOST MAILHOST;
          -F name is qmail-inject's -F (over any name variable).  -bp (or
          the name mailq) runs qmail-qread; -bs runs qmail-smtpd on fds
          0 and 1, with a local client's environment unless PROTO is
          set (no limits, and its log on fd 2 sent to /dev/null, as
          qmail-smtpd logs nothing); -bm is the default.  -B -p -v -i
          -x -m -e -o* -E -J are accepted and ignored, as sendmail.c
          does; beyond it, -r is -f (mail -r passes it), and -N -R -V
          -L (DSN and syslog options of other MTAs' sendmail) are
          accepted and ignored.
Exits:    qmail-inject's, qmail-qread's or qmail-smtpd's code; 100 for a
          bad option or as newaliases; 111 if the qmail home or a
          program is unreachable.
See:      notqmail sendmail.c; qmail-inject(8).
"""

import os
import signal
import sys

from qmail.lib import auto
from qmail import inject

USAGE = (b'sendmail: usage: sendmail [ -t ] [ -fsender ] [ -Fname ]'
         b' [ -bp ] [ -bs ] [ arg ... ]')
OPTIONS = 'vimte:f:p:o:B:F:EJxb:r:N:R:V:L:'

# What qmail-smtpd sees from "sendmail -bs" when no tcpserver set PROTO:
# a trusted local client (RELAYCLIENT) with no size limit, nor any of
# the limits beyond qmail's (a local program may send one message to
# thousands over -bs, as with -t), whose log goes nowhere (below).
SMTPD_ENV = (
    (b'RELAYCLIENT', b''),
    (b'DATABYTES', b'0'),
    (b'MAXRCPTSMTPD', b'0'),
    (b'MAXERRORSSMTPD', b'0'),
    (b'LIFETIMESMTPD', b'0'),
    (b'PROTO', b'TCP'),
    (b'TCPLOCALIP', b'127.0.0.1'),
    (b'TCPLOCALHOST', b'localhost'),
    (b'TCPREMOTEIP', b'127.0.0.1'),
    (b'TCPREMOTEHOST', b'localhost'),
    (b'TCPREMOTEINFO', b'sendmail-bs'),
)


class Plan:
    """What sendmail is to do: action is 'inject', 'qread', 'smtpd',
    'usage' or 'newaliases'; args are qmail-inject's arguments; env is
    a list of (name, value) to set in order, value None to unset."""

    def __init__(self, action, args=(), env=()):
        self.action = action
        self.args = list(args)
        self.env = list(env)

    def __repr__(self):
        return 'Plan(%r, %r, %r)' % (self.action, self.args, self.env)


def sender_env(sender: bytes) -> list:
    """sendmail.c's do_sender: the From name and host follow -f."""
    env = [(b'QMAILNAME', None), (b'MAILNAME', None), (b'NAME', None),
           (b'QMAILHOST', None), (b'MAILHOST', None)]
    at = sender.rfind(b'@')
    if at < 0:
        env.append((b'QMAILUSER', sender))
    else:
        env.append((b'QMAILHOST', sender[at + 1:]))
        env.append((b'QMAILUSER', sender[:at]))
    return env


def translate(args, progname: str = 'sendmail', environ=None) -> Plan:
    """sendmail's arguments (no program name, bytes) as a Plan.

    environ (bytes to bytes) is consulted only for PROTO, for -bs.
    """
    environ = {} if environ is None else environ
    flagh = False
    sender = None
    name = None
    opts = inject.GetOpt(args, OPTIONS)
    while True:
        opt = opts.next()
        if opt is None:
            break
        if opt == 't':
            flagh = True
        elif opt in 'fr':
            sender = opts.arg
        elif opt == 'F':
            name = opts.arg
        elif opt in 'EJ':
            opts.skip_word()            # Sony NEWS-OS: optional argument
        elif opt == 'b':
            mode = opts.arg[:1]
            if mode == b'm':
                continue
            if mode == b'p':
                return Plan('qread')
            if mode == b's':
                env = [] if b'PROTO' in environ else list(SMTPD_ENV)
                return Plan('smtpd', env=env)
            return Plan('usage')
        elif opt == '?':
            # sendmail.c lets getopt name the option on a line of its own
            # first; one line of diagnostics is the rule here.
            return Plan('usage')
        # B p v i x m e o: qmail has one error mode and one delivery
        # mode, and no use for the rest; N R V L: DSN and syslog
        # options, likewise.

    if progname == 'mailq':
        return Plan('qread')
    if progname == 'newaliases':
        return Plan('newaliases')

    iargs = [b'-H' if flagh else b'-a']
    env = []
    if sender is not None:
        iargs += [b'-f', sender]
        env += sender_env(sender)
    if name is not None:
        # The name asked for, over QMAILNAME too (sendmail.c sets
        # MAILNAME, which QMAILNAME outranks and -f clears).
        iargs += [b'-F', name]
    iargs.append(b'--')
    iargs += opts.rest()
    return Plan('inject', iargs, env)


# ---------------------------------------------------------------- I/O

def complain(line: bytes):
    inject.complain(line)


def apply_env(env):
    for name, value in env:
        if value is None:
            os.environb.pop(name, None)
        else:
            os.environb[name] = value


def run_qread() -> int:
    try:
        from qmail import qread
        from qmail.lib import error
    except ImportError:
        complain(b'sendmail: fatal: unable to run qmail-qread')
        return 111
    error.guard_stdout()            # a full disk or closed fd 1: one line, 111
    try:
        code = qread.main([])
    except BrokenPipeError:
        return 0                    # the reader is gone (| head)
    return error.flushed_status(code, 'sendmail')


def run_smtpd(env) -> int:
    """qmail-smtpd in this process's place.  For a local client (env
    set: no tcpserver), its log lines go to /dev/null: qmail's writes
    nothing on fd 2, and a caller that never reads its end of a pipe
    there (Symfony's and Laravel's mailers) would stop it, a few hundred
    messages into a session, once the pipe is full."""
    apply_env(env)
    program = os.path.join(auto.QMAIL, 'bin/qmail-smtpd')
    try:
        sys.stdout.flush()
    except (AttributeError, OSError, ValueError):
        pass
    saved = -1
    if env:
        try:
            saved = os.dup(2)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        except OSError:
            pass
    try:
        os.execv(program, [program])
    except OSError:
        pass
    if saved != -1:                     # the complaint goes where it always did
        os.dup2(saved, 2)
        os.close(saved)
    complain(b'sendmail: fatal: unable to run qmail-smtpd')
    return 111


def sendmail(argv, progname: str) -> int:
    try:
        os.chdir(auto.QMAIL)
    except OSError:
        complain(b'sendmail: fatal: unable to switch to qmail home directory')
        return 111
    args = [a if isinstance(a, bytes) else os.fsencode(a) for a in argv]
    plan = translate(args, progname, os.environb)
    if plan.action == 'usage':
        complain(USAGE)
        return 100
    if plan.action == 'qread':
        return run_qread()
    if plan.action == 'smtpd':
        return run_smtpd(plan.env)
    if plan.action == 'newaliases':
        complain(b'sendmail: fatal: please use fastforward/newaliases instead')
        return 100
    apply_env(plan.env)
    return inject.main(plan.args)


def main(argv=None, progname=None) -> int:
    """sendmail with argv (no program name); progname is the name it was
    run as (sendmail, mailq, newaliases), from sys.argv[0] by default."""
    if argv is None:
        argv = sys.argv[1:]
        if progname is None:
            progname = os.path.basename(sys.argv[0])
    if progname is None:
        progname = 'sendmail'
    try:
        return sendmail(argv, progname)
    except MemoryError:
        complain(b'sendmail: fatal: out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        complain(b'sendmail: fatal: internal bug (%s in %s)' % (
            type(err).__name__.encode(), inject.where(err).encode()))
        return 111


def run():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(main())


if __name__ == '__main__':
    run()
