"""qmail-smtpd: receive mail via SMTP.

Runs as:  qmaild, under tcpserver or tcp-env, the connection on fd 0 and
          fd 1; or as a local user, from sendmail -bs, with RELAYCLIENT=''
          and DATABYTES=0.  cwd HOME (auto.QMAIL, never the environment).
Reads:    fd 0, SMTP.  The environment of tcp-environ(5): TCPREMOTEIP,
          TCPREMOTEHOST, TCPREMOTEINFO, TCPLOCALHOST, TCPLOCALIP; and
          RELAYCLIENT, DATABYTES, QMAILQUEUE.  control/smtpgreeting (else
          me, else refuse to run), localiphost (else me), rcpthosts,
          morercpthosts.cdb, badmailfrom, databytes, timeoutsmtpd, and the
          limits below.
Writes:   fd 1, SMTP replies.  Each message, behind a Received line, and
          its envelope into qmail-queue ($QMAILQUEUE, else
          HOME/bin/qmail-queue), which starts when DATA begins and is fed
          the message as it arrives.
Exits:    0 after QUIT; 1 when the client goes away or times out, after a
          bare LF in DATA, after too many errors, or when the controls or
          this host's IP addresses cannot be read (after a 421 reply).
Trusts:   nobody on fd 0.  Every byte the client sends is bounded (see
          Limits); its text reaches the Received line only through
          safe(); the environment is the admin's (tcpserver's rules).
See:      qmail-smtpd(8), tcp-environ(5), qmail-control(5), qmail-newmrh(8);
          RFC 5321; RFC 1870 (SIZE); RFC 2920 (PIPELINING).

Behaviour is qmail 1.03's, reply texts included: commands are matched
without case and end at LF (a CR before it is dropped); MAIL and RCPT
take an address in or out of angle brackets, quotes and backslashes
removed, a source route dropped; there is no HELO requirement.  Added
for today's network, each with its own reply:
  * EHLO advertises "SIZE <databytes>" when databytes is set, and MAIL
    refuses a SIZE= parameter above it with qmail's 552 databytes reply;
  * a command line of more than MAXCMDLINE bytes gets "500 line too
    long (#5.5.2)" once its LF arrives, and is never buffered;
  * a command holding a NUL byte gets "500 NUL in command (#5.5.2)"
    (qmail's C cut the line at the NUL);
  * in box@[d.d.d.d], a number above 255 is no address of this host
    (qmail's ip_scan kept its low byte).
Where qmail versions differ, the texts are qmail 1.03's (HELP, and the
smtplf URL); notqmail points both at newer pages.

Limits (control file, default; 0 in the file means no limit):
  maxrcptsmtpd    1000  recipients per message; more get "452 sorry, too
                        many recipients (#4.5.3)" (RFC 5321 4.5.3.1.8
                        asks for at least 100).
  maxerrorssmtpd  20    refused commands per connection (the 500, 502,
                        503, 553 and 555 replies); then "421 too many
                        errors (#4.7.0)" and the connection is dropped.
  lifetimesmtpd   3600  seconds a connection may last, however busy: a
                        client dripping a byte a second is cut off with
                        "451 timeout (#4.4.2)", as is one silent for
                        timeoutsmtpd seconds (default 1200).  SIGALRM at
                        lifetime + timeout + ALARM_SLACK ends a process
                        stuck in a write.
  MAXCMDLINE      1000  bytes in a command line with its CR LF (fixed).

The design: Session is the protocol and every policy decision, fed
bytes and the time, answering bytes; it holds all of one connection's
state, so a listener that forks per connection can make one per child.
Config and Peer are its values, read by load_config() and peer_env().
serve() is the shell: fd 0 and fd 1 with poll() timeouts.  The DATA
stream is qmail/smtpd_blast.py's.
"""

import os
import sys
import time
import select

import _signal    # not `signal`: its enum import costs start-up time

from qmail.lib import auto, control
from qmail.lib.cdb import Cdb, CdbError
from qmail.lib.date822 import date822
from qmail.lib.qqtalk import QueueClient
from qmail.smtpd_addr import (ADDRMAX, addrallowed, addrparse, bmfcheck,
                              local_ips, localiphost, mail_size)
from qmail.smtpd_blast import Blast, END, STRAYLF

MAXHOPS = 100            # qmail-smtpd(8): 100 or more Received/Delivered-To
MAXCMDLINE = 1000        # RFC 5321's text line: enough for an ADDRMAX address
READSIZE = 65536
WRITESIZE = 4096         # a poll()-writable fd takes this without blocking long
ALARM_SLACK = 60

DEFAULT_TIMEOUT = 1200
DEFAULT_MAXRCPT = 1000
DEFAULT_MAXERRORS = 20
DEFAULT_LIFETIME = 3600

# qmail-smtpd.c's replies, and the few added ones (see the docstring).
R_UNIMPL = b'502 unimplemented (#5.5.1)\r\n'
R_SYNTAX = b'555 syntax error (#5.5.4)\r\n'
R_WANTMAIL = b'503 MAIL first (#5.5.1)\r\n'
R_WANTRCPT = b'503 RCPT first (#5.5.1)\r\n'
R_BMF = b'553 sorry, your envelope sender is in my badmailfrom list (#5.7.1)\r\n'
R_NOGATEWAY = b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n"
R_NOOP = b'250 ok\r\n'
R_VRFY = b"252 send some mail, i'll try my best\r\n"
R_QQT = b'451 qqt failure (#4.3.0)\r\n'
R_HELP = b'214 qmail home page: http://pobox.com/~djb/qmail.html\r\n'
R_FLUSHED = b'250 flushed\r\n'
R_GOAHEAD = b'354 go ahead\r\n'
R_HOPS = b'554 too many hops, this message is looping (#5.4.6)\r\n'
R_SIZE = b'552 sorry, that message size exceeds my databytes limit (#5.3.4)\r\n'
R_STRAYLF = b'451 See http://pobox.com/~djb/docs/smtplf.html.\r\n'
R_TIMEOUT = b'451 timeout (#4.4.2)\r\n'
R_CONTROL = b'421 unable to read controls (#4.3.0)\r\n'
R_IPME = b'421 unable to figure out my IP addresses (#4.3.0)\r\n'
R_NOMEM = b'421 out of memory (#4.3.0)\r\n'
R_INTERNAL = b'421 internal error (#4.3.0)\r\n'
R_TOOLONG = b'500 line too long (#5.5.2)\r\n'
R_NUL = b'500 NUL in command (#5.5.2)\r\n'
R_MAXRCPT = b'452 sorry, too many recipients (#4.5.3)\r\n'
R_ERRORS = b'421 too many errors (#4.7.0)\r\n'


# -- values -----------------------------------------------------------------

class Config:
    """What the control files (and DATABYTES) say, as values.

    rcpthosts is None when control/rcpthosts is missing (every domain
    allowed), else a set of lowercased entries; morercpthosts anything
    answering `in` (a Cdb) or None; badmailfrom a set, lowercased; ipme
    this host's IPv4 addresses as 4-byte strings."""

    def __init__(self, greeting, localiphost=None, rcpthosts=None,
                 morercpthosts=None, badmailfrom=frozenset(), databytes=0,
                 timeout=DEFAULT_TIMEOUT, maxrcpt=DEFAULT_MAXRCPT,
                 maxerrors=DEFAULT_MAXERRORS, lifetime=DEFAULT_LIFETIME,
                 ipme=frozenset((b'\0\0\0\0',))):
        self.greeting = greeting
        self.localiphost = localiphost
        self.rcpthosts = rcpthosts
        self.morercpthosts = morercpthosts
        self.badmailfrom = badmailfrom
        self.databytes = databytes
        self.timeout = timeout
        self.maxrcpt = maxrcpt
        self.maxerrors = maxerrors
        self.lifetime = lifetime
        self.ipme = ipme


class Peer:
    """The connection, as tcp-environ(5) describes it, plus RELAYCLIENT.
    remoteinfo and relayclient are None when unset; set but empty is
    not the same thing, for qmail."""

    def __init__(self, remoteip=b'unknown', remotehost=b'unknown',
                 remoteinfo=None, local=b'unknown', relayclient=None):
        self.remoteip = remoteip
        self.remotehost = remotehost
        self.remoteinfo = remoteinfo
        self.local = local
        self.relayclient = relayclient


def peer_env(environ) -> Peer:
    """qmail-smtpd's setup(): the Peer from an environment of bytes."""
    local = environ.get(b'TCPLOCALHOST')
    if local is None:
        local = environ.get(b'TCPLOCALIP')
    return Peer(remoteip=_default(environ.get(b'TCPREMOTEIP'), b'unknown'),
                remotehost=_default(environ.get(b'TCPREMOTEHOST'), b'unknown'),
                remoteinfo=environ.get(b'TCPREMOTEINFO'),
                local=_default(local, b'unknown'),
                relayclient=environ.get(b'RELAYCLIENT'))


def _default(value, default):
    return default if value is None else value


def scan_ulong(s: bytes) -> int:
    """qmail's scan_ulong: the leading digits, 0 if none."""
    n = 0
    while n < len(s) and 48 <= s[n] <= 57:
        n += 1
    return int(s[:n]) if n else 0


# -- the Received line ------------------------------------------------------

_SAFE = frozenset(b'.@%+/=:-[]abcdefghijklmnopqrstuvwxyz'
                  b'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789')
_SAFETABLE = bytes(c if c in _SAFE else 0x3F for c in range(256))


def safe(s: bytes) -> bytes:
    """received.c's safeput: every byte it does not trust becomes '?'."""
    return s.translate(_SAFETABLE)


def received(peer: Peer, helo, now: float) -> bytes:
    """qmail's Received line; helo None when it matched TCPREMOTEHOST."""
    parts = [b'Received: from ', safe(peer.remotehost)]
    if helo is not None:
        parts += [b' (HELO ', safe(helo), b')']
    parts.append(b' (')
    if peer.remoteinfo is not None:
        parts += [safe(peer.remoteinfo), b'@']
    parts += [safe(peer.remoteip), b')\n  by ', safe(peer.local),
              b' with SMTP; ', date822(now), b'\n']
    return b''.join(parts)


# -- the session ------------------------------------------------------------

COMMANDS = {
    b'rcpt': 'smtp_rcpt', b'mail': 'smtp_mail', b'data': 'smtp_data',
    b'quit': 'smtp_quit', b'helo': 'smtp_helo', b'ehlo': 'smtp_ehlo',
    b'rset': 'smtp_rset', b'help': 'smtp_help', b'noop': 'smtp_noop',
    b'vrfy': 'smtp_vrfy',
}


class Session:
    """One SMTP connection: feed it bytes, send what it answers.

        s = Session(config, peer, newqueue, now)
        send(s.greet())
        while not s.flagclosed: send(s.feed(received_bytes, now))
        ... s.eof() when the client goes away, s.timeout(now) when it
        is silent too long or past s.deadline; s.exitcode at the end.

    newqueue() starts qmail-queue and returns its QueueClient (or any
    object with put, fail, from_, to, close and pid); OSError from it
    means "451 qqt failure"."""

    def __init__(self, config: Config, peer: Peer, newqueue, now: float):
        self.config = config
        self.peer = peer
        self.newqueue = newqueue
        self.deadline = now + config.lifetime if config.lifetime else None
        self.now = now
        self.flagclosed = False
        self.exitcode = 1
        self.replies = []
        self.linebuf = bytearray()
        self.flagtoolong = False
        self.errors = 0
        self.helo = None
        self.fakehelo = None
        self.dohelo(peer.remotehost)
        self.seenmail = False
        self.flagbarf = False
        self.mailfrom = b''
        self.rcptto = []
        self.qq = None              # while DATA is being read
        self.blast = None
        self.qp = 0
        self.size = 0
        self.flagoverflow = False

    # -- the interface to the shell --

    def greet(self) -> bytes:
        return b'220 ' + self.config.greeting + b' ESMTP\r\n'

    def feed(self, data: bytes, now: float) -> bytes:
        """Take bytes from the client; return the replies to send."""
        if self.flagclosed:
            return b''
        if self.deadline is not None and now >= self.deadline:
            return self.timeout(now)
        self.now = now
        pos = 0
        try:
            while pos < len(data) and not self.flagclosed:
                if self.qq is not None:
                    pos = self.data_in(data, pos)
                else:
                    pos = self.command_in(data, pos)
        except CdbError:
            self.abort_queue()
            self.close(R_CONTROL)
        return self.take_replies()

    def eof(self) -> bytes:
        """The client went away: nothing half-received is queued."""
        self.abort_queue()
        self.flagclosed = True
        return self.take_replies()

    def timeout(self, now: float) -> bytes:
        """The client was silent for timeoutsmtpd, or is past deadline."""
        self.abort_queue()
        self.close(R_TIMEOUT)
        return self.take_replies()

    def abort(self):
        """The shell cannot go on (a write failed): queue nothing."""
        self.abort_queue()
        self.flagclosed = True

    # -- the state machine --

    def out(self, reply: bytes):
        self.replies.append(reply)

    def take_replies(self) -> bytes:
        out = b''.join(self.replies)
        self.replies = []
        return out

    def close(self, reply: bytes, exitcode: int = 1):
        self.out(reply)
        self.flagclosed = True
        self.exitcode = exitcode

    def bad(self, reply: bytes):
        """A refused command: counted towards maxerrorssmtpd."""
        self.out(reply)
        self.errors += 1

    def command_in(self, data: bytes, pos: int) -> int:
        """Collect one command line from data[pos:]; return the new pos."""
        i = data.find(b'\n', pos)
        if i < 0:
            if not self.flagtoolong:
                if len(self.linebuf) + len(data) - pos > MAXCMDLINE - 1:
                    self.flagtoolong = True
                    self.linebuf.clear()
                else:
                    self.linebuf += data[pos:]
            return len(data)
        if self.flagtoolong or len(self.linebuf) + i - pos + 1 > MAXCMDLINE:
            self.flagtoolong = False
            self.linebuf.clear()
            self.bad(R_TOOLONG)
        else:
            line = bytes(self.linebuf) + data[pos:i]
            self.linebuf.clear()
            self.command(line)
        if (not self.flagclosed and self.config.maxerrors
                and self.errors >= self.config.maxerrors):
            self.abort_queue()
            self.close(R_ERRORS)
        return i + 1

    def command(self, line: bytes):
        if line.endswith(b'\r'):
            line = line[:-1]
        if b'\0' in line:
            self.bad(R_NUL)
            return
        i = line.find(b' ')
        if i < 0:
            verb, arg = line, b''
        else:
            verb, arg = line[:i], line[i:].lstrip(b' ')
        name = COMMANDS.get(verb.lower())
        if name is None:
            self.bad(R_UNIMPL)
        else:
            getattr(self, name)(arg)

    def dohelo(self, arg: bytes):
        self.helo = arg
        self.fakehelo = None if arg.lower() == self.peer.remotehost.lower() else arg

    def smtp_helo(self, arg):
        self.out(b'250 ' + self.config.greeting + b'\r\n')
        self.seenmail = False
        self.dohelo(arg)

    def smtp_ehlo(self, arg):
        lines = [b'250-' + self.config.greeting, b'250-PIPELINING']
        if self.config.databytes:
            lines += [b'250-8BITMIME', b'250 SIZE %d' % self.config.databytes]
        else:
            lines.append(b'250 8BITMIME')
        self.out(b'\r\n'.join(lines) + b'\r\n')
        self.seenmail = False
        self.dohelo(arg)

    def smtp_rset(self, arg):
        self.seenmail = False
        self.out(R_FLUSHED)

    def smtp_quit(self, arg):
        self.close(b'221 ' + self.config.greeting + b'\r\n', exitcode=0)

    def smtp_help(self, arg):
        self.out(R_HELP)

    def smtp_noop(self, arg):
        self.out(R_NOOP)

    def smtp_vrfy(self, arg):
        self.out(R_VRFY)

    def parse_addr(self, arg: bytes):
        """addrparse with localiphost and qmail's length check:
        (address, rest), or None for a syntax error."""
        addr, rest = addrparse(arg)
        addr = localiphost(addr, self.config.localiphost, self.config.ipme)
        if len(addr) > ADDRMAX:
            return None
        return addr, rest

    def smtp_mail(self, arg):
        parsed = self.parse_addr(arg)
        if parsed is None:
            self.bad(R_SYNTAX)
            return
        addr, rest = parsed
        size = mail_size(rest)
        if self.config.databytes and size is not None and size > self.config.databytes:
            self.out(R_SIZE)
            return
        self.flagbarf = bmfcheck(addr, self.config.badmailfrom)
        self.seenmail = True
        self.rcptto = []
        self.mailfrom = addr
        self.out(b'250 ok\r\n')

    def smtp_rcpt(self, arg):
        if not self.seenmail:
            self.bad(R_WANTMAIL)
            return
        if self.config.maxrcpt and len(self.rcptto) >= self.config.maxrcpt:
            self.out(R_MAXRCPT)
            return
        parsed = self.parse_addr(arg)
        if parsed is None:
            self.bad(R_SYNTAX)
            return
        addr = parsed[0]
        if self.flagbarf:
            self.bad(R_BMF)
            return
        if self.peer.relayclient is not None:
            addr += self.peer.relayclient
        elif not addrallowed(addr, self.config.rcpthosts,
                             self.config.morercpthosts):
            self.bad(R_NOGATEWAY)
            return
        self.rcptto.append(addr)
        self.out(b'250 ok\r\n')

    def smtp_data(self, arg):
        if not self.seenmail:
            self.bad(R_WANTMAIL)
            return
        if not self.rcptto:
            self.bad(R_WANTRCPT)
            return
        self.seenmail = False
        try:
            qq = self.newqueue()
        except OSError:
            self.out(R_QQT)
            return
        self.qq = qq
        self.qp = getattr(qq, 'pid', None) or 0
        self.blast = Blast()
        self.size = 0
        self.flagoverflow = False
        self.out(R_GOAHEAD)
        qq.put(received(self.peer, self.fakehelo, self.now))

    def data_in(self, data: bytes, pos: int) -> int:
        """Pass message bytes from data[pos:] on; return the new pos."""
        chunk = data[pos:] if pos else data
        message, used, state = self.blast.feed(chunk)
        self.message(message)
        if state == STRAYLF:
            self.abort_queue()
            self.close(R_STRAYLF)
            return len(data)
        if state == END:
            self.finish_message()
            return pos + used
        return len(data)

    def message(self, message: bytes):
        """databytes counts the message as stored: after CR LF -> LF and
        unstuffing, without the Received lines."""
        if self.flagoverflow or not message:
            return
        self.size += len(message)
        if self.config.databytes and self.size > self.config.databytes:
            self.flagoverflow = True
            self.qq.fail()
            return
        self.qq.put(message)

    def finish_message(self):
        qq, self.qq = self.qq, None
        flaghops = self.blast.hops >= MAXHOPS
        self.blast = None
        if flaghops:
            qq.fail()
        try:
            qq.from_(self.mailfrom)
            for addr in self.rcptto:
                qq.to(addr)
            qqx = qq.close()
        except OSError:
            qqx = 'Zqqt failure (#4.3.0)'
        if not qqx:
            self.out(b'250 ok %d qp %d\r\n' % (int(self.now), self.qp))
        elif flaghops:
            self.out(R_HOPS)
        elif self.flagoverflow:
            self.out(R_SIZE)
        else:
            text = qqx[1:].replace('\r', '').replace('\n', '')
            code = b'554 ' if qqx[0] == 'D' else b'451 '
            self.out(code + text.encode('utf-8', 'replace') + b'\r\n')

    def abort_queue(self):
        """Make sure qmail-queue queues nothing: fail, then close."""
        qq, self.qq = self.qq, None
        self.blast = None
        if qq is None:
            return
        qq.fail()
        try:
            qq.close()
        except OSError:
            pass


# -- reading the world ------------------------------------------------------

def load_config(ctl: control.Controls, environ) -> Config:
    """setup(): the controls, with DATABYTES from environ over databytes.

    Raises OSError or CdbError (a control is unreadable: 421) and
    LookupError when neither smtpgreeting nor me exists, as qmail
    refuses to run then."""
    greeting = ctl.line('smtpgreeting', flagme=True)
    if greeting is None:
        raise LookupError('no control/smtpgreeting and no control/me')
    rcpthosts = control.readfile(ctl.path('rcpthosts'))
    morercpthosts = None
    if rcpthosts is not None:
        rcpthosts = frozenset(h.lower() for h in rcpthosts)
        try:
            morercpthosts = Cdb(ctl.path('morercpthosts.cdb'))
        except FileNotFoundError:
            pass
    badmailfrom = frozenset(a.lower() for a in ctl.lines('badmailfrom'))
    databytes = ctl.int('databytes', 0)
    if environ.get(b'DATABYTES') is not None:
        databytes = scan_ulong(environ[b'DATABYTES'])
    return Config(
        greeting=greeting,
        localiphost=ctl.line('localiphost', flagme=True),
        rcpthosts=rcpthosts,
        morercpthosts=morercpthosts,
        badmailfrom=badmailfrom,
        databytes=databytes,
        timeout=max(ctl.int('timeoutsmtpd', DEFAULT_TIMEOUT), 1),
        maxrcpt=ctl.int('maxrcptsmtpd', DEFAULT_MAXRCPT),
        maxerrors=ctl.int('maxerrorssmtpd', DEFAULT_MAXERRORS),
        lifetime=ctl.int('lifetimesmtpd', DEFAULT_LIFETIME),
    )


# -- the shell --------------------------------------------------------------

class Gone(Exception):
    """The client cannot be written to (timeout or error)."""


def write_all(fd: int, data: bytes, timeout: int):
    """Write data, waiting at most timeout seconds for each piece."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    view = memoryview(data)
    while view:
        if not poller.poll(timeout * 1000):
            raise Gone('write timeout')
        try:
            n = os.write(fd, view[:WRITESIZE])
        except OSError as err:
            raise Gone(err.strerror) from err
        view = view[n:]


def serve(session: Session, fdin: int = 0, fdout: int = 1) -> int:
    """Run one session over fdin and fdout; return its exit code.

    Each read waits at most timeoutsmtpd seconds, and never past the
    session's deadline (lifetimesmtpd)."""
    timeout = session.config.timeout
    poller = select.poll()
    poller.register(fdin, select.POLLIN)
    try:
        write_all(fdout, session.greet(), timeout)
        while not session.flagclosed:
            now = time.time()
            wait = timeout
            if session.deadline is not None:
                wait = max(0, min(wait, session.deadline - now))
            if not poller.poll(int(wait * 1000)):
                write_all(fdout, session.timeout(time.time()), timeout)
                break
            try:
                data = os.read(fdin, READSIZE)
            except OSError:
                data = b''
            if not data:
                session.eof()
                break
            replies = session.feed(data, time.time())
            if replies:
                write_all(fdout, replies, timeout)
    except Gone:
        session.abort()
        return 1
    return session.exitcode


def say(fd: int, reply: bytes):
    """A last reply before exiting; if the client is gone, so be it."""
    try:
        write_all(fd, reply, DEFAULT_TIMEOUT)
    except Gone:
        pass


def main(argv=None, home=None) -> int:
    """qmail-smtpd; argv is ignored, as qmail's is.  home is for tests:
    qmail-smtpd itself always runs in auto.QMAIL."""
    home = auto.QMAIL if home is None else home
    environ = os.environb
    session = None
    try:
        try:
            os.chdir(home)
            config = load_config(control.Controls('control'), environ)
        except (OSError, CdbError, LookupError):
            say(1, R_CONTROL)
            return 1
        try:
            config.ipme = local_ips()
        except OSError:
            say(1, R_IPME)
            return 1
        program = environ.get(b'QMAILQUEUE')
        program = (os.path.join(home, 'bin/qmail-queue') if program is None
                   else os.fsdecode(program))
        if config.lifetime:
            _signal.alarm(config.lifetime + config.timeout + ALARM_SLACK)
        session = Session(config, peer_env(environ),
                          lambda: QueueClient(program), time.time())
        return serve(session, 0, 1)
    except MemoryError:
        if session is not None:
            session.abort()
        say(1, R_NOMEM)
        return 1
    except KeyboardInterrupt:   # sendmail -bs at a terminal, and ^C
        if session is not None:
            session.abort()
        return 1
    except Exception as err:    # last resort: temporary, never a traceback
        if session is not None:
            session.abort()
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = ('%s:%d' % (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
                 if tb is not None else '?')
        try:
            os.write(2, ('qmail-smtpd: internal error: %s at %s\n'
                         % (type(err).__name__, where)).encode())
        except OSError:
            pass
        say(1, R_INTERNAL)
        return 1


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
