"""qmail-local: deliver or forward a mail message.

Runs as:  the recipient (never root), forked by qmail-lspawn, which calls
          main() with the arguments below; or as bin/qmail-local.
Usage:    qmail-local [-nN] [--] user homedir local dash ext domain
          sender defaultdelivery
Reads:    fd 0, the message: a seekable file, read once per delivery;
          homedir/.qmail<dash><ext> (or a -default file, or
          defaultdelivery), the delivery instructions of dot-qmail(5).
Writes:   maildirs, mbox files, programs' stdin, qmail-queue (forwards,
          whose sender control/srs_domain may make an SRS address:
          srs_sender);
          fd 1, the report: errors, "did F+W+P" (files, forwards,
          programs done) and "qp <pid>" after a forward.  Programs run
          by a delivery share fd 1 and 2.  With -n, the instructions
          ("maildir", "mbox", "program", "forward" lines) instead of
          delivering.
Exits:    0 delivered; 100 permanent failure (bounce); 111 temporary
          failure (retry).  qmail-lspawn reads any other code as
          permanent, so no other code leaves here.
Trusts:   the user's files, as the user; not the message, the sender or
          the local part, which reach programs only through their
          environment (qmail-command(8) warns of it).
See:      qmail-local(8), dot-qmail(5), qmail-command(8), maildir(5),
          mbox(5), envelopes(5).

A failed instruction stops the delivery at once; forwards wait until
every other instruction has succeeded, so an error anywhere prevents
all forwarding (dot-qmail(5) "ERROR HANDLING").  Beyond qmail: a .qmail
file over 64 MB (MAX_DOTQMAIL) is not read, and its delivery deferred
("file too big"), where qmail reads any size.  The deliveries
themselves are in qmail/local_deliver.py.
"""

import errno
import os
import stat
import sys
import time

import _signal    # not `signal`: its enum import costs start-up time

from qmail.lib import auto
from qmail.lib.quote import quote2
from qmail.lib.date822 import MONTHS
from qmail.local_deliver import (
    Failure, PermFail, TempFail, check_loop, deliver_maildir, deliver_mbox,
    deliver_program, error_str, forward, is_temporary)

USAGE = (b'qmail-local: usage: qmail-local [ -nN ] user homedir local dash '
         b'ext domain sender aliasempty')
# conf-patrn: mode bits forbidden on the home directory and the .qmail
# file (other-writable); an installed auto.py may fix another value.
# qmail's own default too, though dot-qmail(5) speaks of group-writable
# ones as well (the user's private group is often the only member).
PATRN_DEFAULT = 0o002
# A .qmail file is typed by a person (or written by a list manager);
# more than this is a mistake, and reading it all would hurt.
MAX_DOTQMAIL = 1 << 26
XBIT_FILE = b'Uh-oh: .qmail has file delivery but has x bit set. (#4.7.0)'
XBIT_PROG = b'Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)'
DAYS = (b'Mon', b'Tue', b'Wed', b'Thu', b'Fri', b'Sat', b'Sun')


class Instruction(tuple):
    """One delivery instruction: (kind, arg).  kind is maildir, mbox,
    program, forward, or defer (stop with the temporary failure arg)."""

    __slots__ = ()

    def __new__(cls, kind: str, arg: bytes):
        return tuple.__new__(cls, (kind, arg))

    kind = property(lambda self: self[0])
    arg = property(lambda self: self[1])

    def __repr__(self):
        return 'Instruction(%r, %r)' % self


# ---- pure: the lines and variables of a delivery ---------------------------

class IllegalOption(ValueError):
    """An option qmail-local does not take: args[0] is its letter."""


def parse_args(argv):
    """(flagdoit, [user, homedir, local, dash, ext, domain, sender,
    defaultdelivery]) from the arguments after the program name; None
    for a usage error, IllegalOption for an option not -n or -N."""
    args = [a if isinstance(a, bytes) else os.fsencode(a) for a in argv]
    flagdoit = True
    while args and args[0].startswith(b'-') and args[0] != b'-':
        opt = args.pop(0)
        if opt == b'--':
            break
        for ch in opt[1:]:
            if ch == ord('n'):
                flagdoit = False
            elif ch == ord('N'):
                flagdoit = True
            else:
                raise IllegalOption(bytes((ch,)))
    if len(args) != 8 or not args[1].startswith(b'/'):
        return None
    return flagdoit, args


def make_dtline(local: bytes, host: bytes) -> bytes:
    """The Delivered-To line, newline included; newlines inside become _."""
    return b'Delivered-To: ' + (local + b'@' + host).replace(b'\n', b'_') \
        + b'\n'


def make_rpline(sender: bytes) -> bytes:
    """The Return-Path line, newline included."""
    return b'Return-Path: <' + quote2(sender).replace(b'\n', b'_') + b'>\n'


def myctime(t: float) -> bytes:
    """The From_ line's date in GMT, asctime-like, newline included
    (qmail pads the day of the month with a zero)."""
    tm = time.gmtime(int(t))
    return b'%s %s %02d %02d:%02d:%02d %d\n' % (
        DAYS[tm.tm_wday], MONTHS[tm.tm_mon - 1], tm.tm_mday,
        tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_year)


def make_ufline(sender: bytes, now: float) -> bytes:
    """The mbox From_ line (mbox(5)), newline included."""
    if sender:
        who = sender.replace(b' ', b'-').replace(b'\t', b'-') \
            .replace(b'\n', b'-')
    else:
        who = b'MAILER-DAEMON'
    return b'From ' + who + b' ' + myctime(now)


def make_safeext(ext: bytes) -> bytes:
    """ext as it names a file: ASCII lowercase, dots made colons (for
    security: no .qmail-../ tricks)."""
    return ext.lower().replace(b'.', b':')


def ext_parts(ext: bytes) -> list:
    """[EXT2, EXT3, EXT4]: ext after its first, second, third dash."""
    out = []
    for _ in range(3):
        dash = ext.find(b'-')
        ext = ext[dash + 1:] if dash >= 0 else b''
        out.append(ext)
    return out


def host_parts(host: bytes) -> list:
    """[HOST2, HOST3, HOST4]: host before its last, second-to-last and
    third-to-last dot (the whole host while there is no such dot)."""
    out = []
    for _ in range(3):
        dot = host.rfind(b'.')
        if dot >= 0:
            host = host[:dot]
        out.append(host)
    return out


def dotqmail_candidates(dash: bytes, ext: bytes) -> list:
    """The files qmail-local tries, in order, with the DEFAULT each sets.

    ".qmail" dash safeext first; then for each dash-separated prefix of
    ext, longest first, the prefix followed by "default".  With an empty
    dash and ext this tries .qmail, then .qmaildefault, as qmail does.
    DEFAULT (None: unset) is the part of ext the "default" stands for,
    in the recipient's own case.
    """
    safeext = make_safeext(ext)
    first = b'.qmail' + dash + safeext
    cands = [(first, ext[-7:] if safeext.endswith(b'default') else None)]
    for i in range(len(safeext), -1, -1):
        if i == 0 or safeext[i - 1:i] == b'-':
            cands.append((b'.qmail' + dash + safeext[:i] + b'default',
                          ext[i:]))
    return cands


def find_dotqmail(dash: bytes, ext: bytes, existing) -> tuple:
    """(file name, DEFAULT) of the first candidate in existing, a set of
    names or any container whose `in` looks at the disk; (None, None)."""
    for name, default in dotqmail_candidates(dash, ext):
        if name in existing:
            return name, default
    return None, None


def newsender(sender: bytes, local: bytes, host: bytes,
              flagowner: bool, flagownerdefault: bool) -> bytes:
    """The envelope sender of forwards (dot-qmail(5)): local-owner@host
    when .qmail<dash><ext>-owner exists, a VERP local-owner-@host-@[]
    when -owner-default exists too; the sender itself for bounces (<>
    and #@[]) and otherwise."""
    if sender in (b'', b'#@[]') or not flagowner:
        return sender
    if flagownerdefault:
        return local + b'-owner-@' + host + b'-@[]'
    return local + b'-owner@' + host


def plan(cmds: bytes, flagforwardonly: bool) -> list:
    """The instructions of a .qmail text, in order (dot-qmail(5)).

    Lines end at newlines; trailing spaces and tabs are ignored, and so
    is everything from a NUL in what is used (qmail sees C strings),
    though as in qmail the line's last byte, NUL or not, says maildir
    or mbox, and the spaces stripped are those that end the line.  A
    blank first line, and a file or program line once forwards only are
    allowed (the x bit, or +list), become a defer at the place qmail
    would stop.
    """
    out = []
    lines = cmds.split(b'\n')
    if cmds.endswith(b'\n'):
        lines.pop()
    for number, line in enumerate(lines):
        whole = line.rstrip(b' \t')
        line = whole.split(b'\0', 1)[0]
        first = line[:1]
        if not line:
            if number == 0:
                out.append(Instruction('defer', b'Uh-oh: first line of '
                                       b'.qmail file is blank. (#4.2.1)'))
                break
        elif first == b'#':
            pass
        elif first in (b'.', b'/'):
            if flagforwardonly:
                out.append(Instruction('defer', XBIT_FILE))
                break
            out.append(Instruction('maildir' if whole.endswith(b'/')
                                   else 'mbox', line))
        elif first == b'|':
            if flagforwardonly:
                out.append(Instruction('defer', XBIT_PROG))
                break
            out.append(Instruction('program', line[1:]))
        elif first == b'+':
            if line == b'+list':
                flagforwardonly = True
        elif first == b'&':
            out.append(Instruction('forward', line[1:]))
        else:
            out.append(Instruction('forward', line))
    return out


def command_env(base: dict, user: bytes, homedir: bytes, local: bytes,
                ext: bytes, host: bytes, sender: bytes, newsend: bytes,
                default, lines: dict) -> dict:
    """The environment of programs (qmail-command(8)); base is the
    inherited one.  DEFAULT is removed when no -default file applies."""
    env = dict(base)
    env.update({
        b'HOST': host, b'HOME': homedir, b'USER': user, b'LOCAL': local,
        b'RECIPIENT': local + b'@' + host, b'DTLINE': lines['dt'],
        b'SENDER': sender, b'RPLINE': lines['rp'], b'UFLINE': lines['uf'],
        b'EXT': ext, b'NEWSENDER': newsend,
    })
    for n, part in zip((b'2', b'3', b'4'), ext_parts(ext)):
        env[b'EXT' + n] = part
    for n, part in zip((b'2', b'3', b'4'), host_parts(host)):
        env[b'HOST' + n] = part
    if default is None:
        env.pop(b'DEFAULT', None)
    else:
        env[b'DEFAULT'] = default
    return env


def count_report(counts: list, qp: int) -> bytes:
    """The success report: did files+forwards+programs, then qp."""
    text = b'did %d+%d+%d\n' % tuple(counts)
    if qp:
        text += b'qp %d\n' % qp
    return text


# ---- I/O: the home directory and the .qmail files --------------------------

def check_home(homedir: bytes, patrn: int, flagdoit: bool) -> None:
    """chdir to the home directory and refuse one that is unsafe now."""
    try:
        os.chdir(homedir)
    except OSError as err:
        raise TempFail(b'Unable to switch to %s: %s. (#4.3.0)'
                       % (homedir, error_str(err))) from None
    try:
        st = os.stat('.')
    except OSError as err:
        raise TempFail(b'Unable to stat home directory: %s. (#4.3.0)'
                       % error_str(err)) from None
    if st.st_mode & patrn:
        raise TempFail(b'Uh-oh: home directory is writable. (#4.7.0)')
    if st.st_mode & stat.S_ISVTX:
        # dot-qmail(5) "SAFE QMAIL EDITING": the user is editing.
        if flagdoit:
            raise TempFail(b'Home directory is sticky: '
                           b'user is editing his .qmail file. (#4.2.1)')
        say_fd2(b'Warning: home directory is sticky.\n')


def _open_error(name: bytes, err: OSError) -> TempFail:
    return TempFail(b'Unable to open %s: %s. (#4.3.0)'
                    % (name, error_str(err)))


class DotQmailProbe:
    """The disk as find_dotqmail's set of existing .qmail files.

    A name is in it if it opens and is a regular file; the first one
    found is kept open, as qmail keeps it.  Trouble that may pass
    (a temporary error, or a file the user cannot read) defers, as does
    a .qmail file anyone may write.
    """

    def __init__(self, patrn: int):
        self.patrn = patrn
        self.fd = -1
        self.cutable = False

    def __contains__(self, name: bytes) -> bool:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            if is_temporary(err) or err.errno in (errno.EPERM, errno.EACCES):
                raise _open_error(name, err) from None
            return False
        try:
            st = os.fstat(fd)
        except OSError as err:
            os.close(fd)
            raise _open_error(name, err) from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return False
        if st.st_mode & self.patrn:
            os.close(fd)
            raise TempFail(b'Uh-oh: .qmail file is writable. (#4.7.0)')
        self.fd = fd
        self.cutable = bool(st.st_mode & stat.S_IXUSR)
        return True

    def slurp(self, name: bytes) -> bytes:
        """The found file's contents; the file is closed."""
        chunks = []
        size = 0
        try:
            while True:
                data = os.read(self.fd, 65536)
                if not data:
                    break
                size += len(data)
                if size > MAX_DOTQMAIL:
                    raise TempFail(b'Unable to read %s: file too big. '
                                   b'(#4.3.0)' % name)
                chunks.append(data)
        except OSError as err:
            raise TempFail(b'Unable to read %s: %s. (#4.3.0)'
                           % (name, error_str(err))) from None
        finally:
            os.close(self.fd)
            self.fd = -1
        return b''.join(chunks)


def dotqmail_exists(name: bytes) -> bool:
    """Whether a -owner file exists (stat; trouble that may pass defers)."""
    try:
        os.stat(name)
    except OSError as err:
        if is_temporary(err):
            raise _open_error(name, err) from None
        return False
    return True


# ---- main ------------------------------------------------------------------

def say_fd1(data: bytes, fd: int = 1) -> None:
    """Write to the report (fd 1) now: programs write to it too.  Failure
    texts and warnings go to fd 2, as qmail's (qmail-lspawn gives both
    fds one pipe; run by hand, 2>/dev/null leaves "did" alone)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return        # nobody listens; the exit code still counts
        view = view[n:]


def deliver(argv, say, now: float) -> int:
    """qmail-local proper: raises Failure for every failure."""
    try:
        parsed = parse_args(argv)
    except IllegalOption as bad:
        # qmail's getopt names the option first, then comes the usage.
        raise PermFail(b'qmail-local: illegal option -- ' + bad.args[0]
                       + b'\n' + USAGE) from None
    if parsed is None:
        raise PermFail(USAGE)
    flagdoit, args = parsed
    user, homedir, local, dash, ext, host, sender, aliasempty = args
    patrn = getattr(auto, 'PATRN', PATRN_DEFAULT)

    check_home(homedir, patrn, flagdoit)
    lines = {'dt': make_dtline(local, host), 'rp': make_rpline(sender),
             'uf': make_ufline(sender, now)}
    if flagdoit:
        check_loop(lines['dt'])

    probe = DotQmailProbe(patrn)
    name, default = find_dotqmail(dash, ext, probe)
    if name is None and dash:
        raise PermFail(b'Sorry, no mailbox here by that name. (#5.1.1)')

    safeext = make_safeext(ext)
    owner = b'.qmail' + dash + safeext + b'-owner'
    flagowner = flagownerdefault = False
    if sender not in (b'', b'#@[]'):
        flagowner = dotqmail_exists(owner)
        if flagowner:
            flagownerdefault = dotqmail_exists(owner + b'-default')
    ueo = newsender(sender, local, host, flagowner, flagownerdefault)

    cmds = probe.slurp(name) if name is not None else b''
    flagforwardonly = probe.cutable
    if not cmds:
        # dot-qmail(5): an empty or (for the user's own address) missing
        # .qmail means the administrator's default delivery.
        cmds = aliasempty
        flagforwardonly = False

    env = None                  # made for the first program (a copy of
                                # os.environb costs more than a Maildir)
    forwarder = []              # ueo, once SRS has seen it (srs_sender)
    counts = [0, 0, 0]          # files, forwards, programs
    recips = []
    seq = 0
    for ins in plan(cmds, flagforwardonly):
        kind, arg = ins
        if kind == 'defer':
            raise TempFail(arg)
        if kind == 'forward':
            counts[1] += 1
            if flagdoit:
                recips.append(arg)
            else:
                say(b'forward ' + arg + b'\n')
            continue
        if kind == 'program':
            counts[2] += 1
            if not flagdoit:
                say(b'program ' + arg + b'\n')
                continue
            if env is None:
                env = command_env(os.environb, user, homedir, local, ext, host,
                                  sender, srs_sender(ueo, forwarder, strict=False),
                                  default, lines)
            if deliver_program(arg, env):
                break           # exit code 99: ignore the rest
            continue
        counts[0] += 1
        if not flagdoit:
            say(kind.encode() + b' ' + arg + b'\n')
        elif kind == 'maildir':
            seq += 1
            deliver_maildir(arg, lines['rp'] + lines['dt'],
                            os.uname().nodename.encode()[:64], seq,
                            raw_names(local, host))
        else:
            deliver_mbox(arg, lines['uf'] + lines['rp'] + lines['dt'])

    qp = 0
    if recips:
        qp = forward(recips, lines['dt'], srs_sender(ueo, forwarder))
    say(count_report(counts, qp))
    return 0


def srs_sender(ueo: bytes, memo: list, strict: bool = True) -> bytes:
    """The sender of forwards (and NEWSENDER of programs): ueo, made an
    SRS address of ours when control/srs_domain is set and ueo is
    another domain's (qmail.lib.srs), so that the host the mail goes on
    to finds our SPF record, not the sender's; read once a delivery
    (memo).  SRS controls that cannot be read (or no secret) defer a
    forward (strict); a program gets ueo as it is in NEWSENDER then, as
    its delivery may forward nothing at all."""
    if memo:
        return memo[0]
    from qmail.lib import srs
    try:
        made = srs.rewrite(auto.QMAIL, ueo)
    except OSError as err:
        if not strict:
            return ueo
        raise TempFail(b'Unable to read the SRS controls: %s. (#4.3.0)'
                       % error_str(err)) from None
    except srs.SrsError as err:
        if not strict:
            return ueo
        raise TempFail(b'Unable to rewrite the sender with SRS: %s. (#4.3.0)'
                       % str(err).encode()) from None
    memo.append(made)
    return made


def raw_names(local: bytes, host: bytes) -> bytes:
    """What the Delivered-To line lost: the recipient as given, where a
    line break in it became '_' (two recipients 'a\\n' and 'a_' would
    otherwise share one exactly-once Maildir name, and so one copy);
    nothing for every other recipient, so their names stay as they were.
    (The sender is one for all the message's recipients: it tells none
    apart.)"""
    if b'\n' not in local + host:
        return b''
    return b'\0' + local + b'@' + host


def where(err: BaseException) -> str:
    """file:line of the innermost frame an exception passed through."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return '?'
    code = tb.tb_frame.f_code
    return '%s:%d %s' % (os.path.basename(code.co_filename), tb.tb_lineno,
                         code.co_name)


def say_fd2(data: bytes) -> None:
    say_fd1(data, 2)


def main(argv=None) -> int:
    """qmail-local with argv (the arguments after the program name).

    Safe to call in a forked child of qmail-lspawn: it never raises and
    never exits, and what it reports is on fd 1 when it returns.
    """
    if argv is None:
        argv = sys.argv[1:]
    try:
        os.umask(0o077)
        # As qmail-local.c: a qmail-queue that stops reading a forwarded
        # message (a filter refusing it early) is an error to report,
        # not a signal to die of.  Programs it runs get the default back.
        _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
        return deliver(argv, say_fd1, time.time())
    except Failure as fail:
        if fail.text:
            say_fd2(fail.text + b'\n')
        return fail.code
    except MemoryError:
        say_fd2(b'Out of memory. (#4.3.0)\n')
        return 111
    except BaseException as err:   # last resort: never a traceback, never 1
        try:
            say_fd2(b'Unexpected error in qmail-local: %s at %s. (#4.3.0)\n'
                    % (type(err).__name__.encode(), where(err).encode()))
        except BaseException:
            pass
        return 111


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
