"""qmail-popup: read a POP username and password, then run subprogram.

Usage:    qmail-popup hostname subprogram [arg ...]
          e.g. qmail-popup pop.example.org checkpassword qmail-pop3d Maildir
Runs as:  root (so that checkpassword may become the user), under
          tcpserver or qmail-listen: the connection on fd 0 and fd 1.
Reads:    fd 0, POP3 commands of the AUTHORIZATION state: USER, PASS,
          APOP, QUIT, NOOP (qmail-popup's), CAPA, STLS, AUTH PLAIN (see
          below).  In the qmail home (auto.QMAIL, never the environment):
          control/servercert.pem (and, at STLS, tlsserverciphers, unless
          TLSCIPHERS is set), pop3authplaintext, timeoutpop3,
          lifetimepop3, maxauthpop3, authdelaypop3.  TCPREMOTEIP, for
          the log, and with TCPLOCALIP to know a client on this host.
Writes:   fd 1, replies; the greeting "+OK <pid.time@hostname>"
          (<pid.seq.time@hostname> in a qmail-listen worker's later
          sessions), whose timestamp is APOP's (RFC 1939 7).  fd 2, one line per failed
          login: the user (made printable), TCPREMOTEIP and why; never
          the password.
Runs:     subprogram, the checkpassword interface
          (cr.yp.to/checkpwd/interface.html): fd 3 reads
          "user\\0password\\0<pid.time@hostname>\\0"; for APOP the
          password is the client's digest, as qmail-popup gives it.  Fds
          0 and 1 are the connection itself (qmail-popup(8)), or under
          STLS a socket pair that this program relays to and from the
          TLS connection.  Its environment is this program's; SIGPIPE
          as the default.  The subprogram's "+OK" is the answer to PASS.
Exits:    0 after QUIT or after a subprogram that exited 0; 1 otherwise
          (timeout, client gone, too many failures, usage: "-ERR usage:
          popup hostname subprogram").
Trusts:   nobody on fd 0: lines are bounded, the password goes nowhere but
          fd 3 of the checker and is overwritten in memory after; the
          subprogram and the environment are the admin's.
See:      qmail-popup(8), qmail-pop3d(8), RFC 1939, RFC 2449 (CAPA),
          RFC 2595 (STLS), RFC 5034 (AUTH), RFC 4616 (PLAIN).

Behaviour is qmail-popup's, reply texts included: "+OK " for USER, QUIT
and NOOP; "-ERR syntax error", "-ERR USER first", "-ERR authorization
first" for any other command; "-ERR authorization failed" when the
subprogram exits non-zero, "-ERR aack, child crashed" when it dies of a
signal.  Commands are matched without case and end at LF (a CR before it
dropped); the argument starts after the spaces following the verb, so a
password keeps its inner and trailing spaces.

Differences from qmail-popup, each for a reason:
  * A failed login does not end the connection: "-ERR authorization
    failed" comes authdelaypop3 seconds after the checker started, its
    own time included, so that the reply's time tells nothing of the
    user (nothing else the client sent is read meanwhile), and the client may try again, up to
    maxauthpop3 failures; the last one's reply is followed by the end of
    the connection.  The subprogram's exit code tells: 0, the session
    took place; non-zero (checkpassword's 1 no, 2 misuse, 111 trouble,
    qmail-pop3d's 1 as root), a failed login, which it can be only if
    the subprogram wrote nothing, as qmail-pop3d and checkpassword
    never do then.  XXX a subprogram of another kind that speaks and
    then exits non-zero gets an -ERR line after its own words; a relayed
    one (under STLS) is seen to have spoken and gets nothing.
  * Exit 111 (checkpassword's temporary trouble) is answered "-ERR
    temporary authorization failure"; a subprogram that cannot be
    started counts the same.
  * CAPA (RFC 2449): TOP, UIDL, USER, SASL PLAIN, and STLS when offered.
  * Where STLS is offered, a password is not taken in the clear: before
    the handshake, USER and AUTH PLAIN get "-ERR login in the clear
    refused: STLS first" (a refused command, not a failed login), and
    CAPA lists neither USER nor SASL PLAIN; so does APOP, since the
    shipped checkers, which keep hashes, take its "digest" for the
    password itself.  control/pop3authplaintext lets the clear in
    again (RFC 2595 lets a server refuse it; qmail-smtpd's AUTH does so
    unless control/smtpauthplaintext exists).  A client on this host
    (TCPREMOTEIP a loopback address, or TCPLOCALIP itself) crosses no
    network, so it may: a webmail on the host, a TLS front end such as
    stunnel on port 995.  Without a certificate, or on pipes, nothing
    changes: POP3 in the clear is qmail-popup's.
  * STLS (RFC 2595) when control/servercert.pem exists and fds 0 and 1
    are one socket: "+OK begin TLS negotiation", then the handshake
    (TLS 1.2 at least, qmail-smtpd's server context) within 60 seconds;
    a failed handshake ends the connection.  Bytes sent after STLS and
    before the handshake are never taken as commands (CVE-2011-0411):
    already read, they are thrown away; still in the kernel, they reach
    the handshake, which fails on them.  USER and AUTH start over; the
    failures stay counted.  "-ERR TLS
    not available due to temporary reason" if the certificate cannot be
    loaded, "-ERR TLS already active" under TLS; without the offer STLS
    is an unknown command.
  * AUTH (RFC 5034) with PLAIN: "AUTH PLAIN", "+ " and the base64 line,
    or the initial response on the AUTH line; "*" cancels ("-ERR auth
    exchange cancelled"); "-ERR malformed auth input" for bad base64, an
    empty user or password, or a NUL inside one; an authorization
    identity other than the user fails like a wrong password; "-ERR
    unrecognized authentication type" for other mechanisms; "AUTH" alone
    lists the mechanisms (the pre-RFC 5034 practice).  The user and
    password go to the same subprogram, as USER and PASS would.
  * A command line over MAXCMDLINE bytes gets "-ERR line too long", one
    holding a NUL "-ERR NUL in command"; MAXERRORS refused commands end
    the connection ("-ERR too many errors").
  * "-ERR timeout" before the connection is dropped for silence
    (timeoutpop3) or age (lifetimepop3).

Nothing sent after PASS (or APOP, AUTH) is read here: on a socket, lines
are taken from the kernel one at a time (MSG_PEEK), so what a client
pipelines behind PASS is there for the subprogram.  When more was read
anyway (a pipe, or TLS), the subprogram gets it through the relay.

Limits (control file, default; 0 in the file means no limit):
  timeoutpop3   1200  seconds a client may stay silent (qmail-popup(8)'s
                      20 minutes), and a write may wait.
  lifetimepop3  3600  seconds the AUTHORIZATION state may last.  Not the
                      subprogram's session after a login, which lasts
                      as long as it needs, as in qmail (a mailbox fetched
                      over a slow link must reach QUIT, or its deletions
                      never happen): qmail-pop3d's own timeoutpop3 ends
                      a silent one.  Nor a checker that hangs (on its
                      password backend, say): as with qmail, it holds
                      its connection until it ends.
  maxauthpop3   3     failed logins per connection (qmail-popup: 1).
  authdelaypop3 2     seconds before "-ERR authorization failed" (and
                      the temporary failure) is sent.
  MAXCMDLINE    1000  bytes in a command line with its LF (fixed).
  MAXAUTHLINE   12288 bytes in an AUTH response line (fixed; RFC 4954's).
  MAXERRORS     20    refused commands per connection (fixed).

The design: Session is the AUTHORIZATION state, fed bytes and the time,
answering bytes, and asking the shell for three things: a pause before
its replies, a STLS handshake (flagstarttls), a login (login: the user
and password to give the subprogram; then login_failed() if it said no).
The shell is serve(): the connection (pop3d_io.Conn, or popup_relay's
TlsConn over it), starttls() and run_login(); qmail/popup_relay.py holds
the TLS layer, the subprogram's start and wait, and the relay.
"""

import os
import sys
import time

import _socket    # not `socket`: its enum import costs start-up time

from qmail.lib import auto, control, stderr
from qmail.pop3d import DEFAULT_LIFETIME, DEFAULT_TIMEOUT, MAXCMDLINE, MAXERRORS
from qmail.pop3d_io import (TOOLONG, Conn, Gone, Lines, is_socket,
                            parse_command, read_wait, silence_limit)
from qmail.popup_relay import (Tls, TlsConn, TlsError, relay, server_context,
                               spawn, wait_child)
from qmail.smtpd_auth import MAXAUTHLINE, Malformed, b64decode, field
from qmail.lib.error import interrupt_kills

DEFAULT_MAXAUTH = 3
DEFAULT_AUTHDELAY = 2    # seconds; as qmail-smtpd's authdelaysmtpd
CERTFILE = 'control/servercert.pem'     # qmail-smtpd's, with its key
HANDSHAKE_TIMEOUT = 60
KILL_SLACK = 60          # seconds a relayed subprogram may stay silent past timeoutpop3
USERLOG = 64             # bytes of a user name in a log line

# What became of a login: the subprogram's verdict as the Session sees it.
LOGIN_BAD = 'bad'
LOGIN_TEMP = 'temp'
LOGIN_CRASHED = 'crashed'

R_OK = b'+OK \r\n'
R_SYNTAX = b'-ERR syntax error\r\n'
R_WANTUSER = b'-ERR USER first\r\n'
R_AUTHORIZ = b'-ERR authorization first\r\n'
R_BADAUTH = b'-ERR authorization failed\r\n'
R_TEMPAUTH = b'-ERR temporary authorization failure\r\n'
R_CRASHED = b'-ERR aack, child crashed\r\n'
R_USAGE = b'-ERR usage: popup hostname subprogram\r\n'
R_CONTROL = b'-ERR unable to read controls\r\n'
R_INTERNAL = b'-ERR internal error\r\n'
R_NOMEM = b'-ERR out of memory\r\n'
R_TOOLONG = b'-ERR line too long\r\n'
R_NUL = b'-ERR NUL in command\r\n'
R_ERRORS = b'-ERR too many errors\r\n'
R_TIMEOUT = b'-ERR timeout\r\n'
R_STLSGO = b'+OK begin TLS negotiation\r\n'
R_TLSTEMP = b'-ERR TLS not available due to temporary reason\r\n'
R_TLSACTIVE = b'-ERR TLS already active\r\n'
R_AUTHTYPE = b'-ERR unrecognized authentication type\r\n'
R_AUTHINPUT = b'-ERR malformed auth input\r\n'
R_AUTHCANCEL = b'-ERR auth exchange cancelled\r\n'
R_AUTHLIST = b'+OK\r\nPLAIN\r\n.\r\n'
R_AUTHNONE = b'+OK\r\n.\r\n'
R_CLEAR = b'-ERR login in the clear refused: STLS first\r\n'
PROMPT = b'+ \r\n'


# -- values -----------------------------------------------------------------

class Config:
    """flagtls: STLS may be offered (a certificate, on a socket);
    flagauthplain: a password may come in the clear even so."""

    def __init__(self, timeout=DEFAULT_TIMEOUT, lifetime=DEFAULT_LIFETIME,
                 maxauth=DEFAULT_MAXAUTH, authdelay=DEFAULT_AUTHDELAY,
                 maxerrors=MAXERRORS, flagtls=False, flagauthplain=False):
        self.timeout = timeout
        self.lifetime = lifetime
        self.maxauth = maxauth
        self.authdelay = authdelay
        self.maxerrors = maxerrors
        self.flagtls = flagtls
        self.flagauthplain = flagauthplain


class Login:
    """What the subprogram is to judge.  secret is a bytearray, wiped
    by wipe() once written to the pipe."""

    __slots__ = ('user', 'secret', 'how')

    def __init__(self, user: bytes, secret, how: str):
        self.user = user
        self.secret = bytearray(secret)
        self.how = how              # 'pass', 'apop' or 'auth', for the log

    def payload(self, timestamp: bytes) -> bytearray:
        """The checkpassword interface's fd 3."""
        return bytearray(self.user + b'\0') + self.secret + b'\0' + timestamp + b'\0'

    def wipe(self):
        self.secret[:] = bytes(len(self.secret))

    def __repr__(self):         # never the secret, even in a traceback
        return '<Login user=%r>' % (self.user,)


def timestamp(pid: int, now: float, hostname: bytes, seq: int = 0) -> bytes:
    """qmail-popup's APOP timestamp, <pid.time@hostname>.  A process that
    serves several sessions (a qmail-listen worker) numbers the later
    ones, <pid.seq.time@hostname>: RFC 1939 wants every greeting's
    timestamp different, and two sessions may share a pid and a second."""
    if seq:
        return b'<%d.%d.%d@%s>' % (pid, seq, int(now), hostname)
    return b'<%d.%d@%s>' % (pid, int(now), hostname)


_sessions = [0]         # sessions this process has served


# -- the session ------------------------------------------------------------

COMMANDS = {
    b'user': 'pop3_user', b'pass': 'pop3_pass', b'apop': 'pop3_apop',
    b'quit': 'pop3_quit', b'noop': 'pop3_noop', b'capa': 'pop3_capa',
    b'stls': 'pop3_stls', b'auth': 'pop3_auth',
}


class Session:
    """The AUTHORIZATION state of one connection: feed it bytes, send
    what it answers.

        s = Session(config, hostname, pid, now)
        send(s.greet())
        while not s.flagclosed: send(s.feed(received_bytes, now)) ...
        s.eof() when the client goes away; s.timeout(now) when it is
        silent too long or past s.deadline.  s.exitcode at the end.

    Requests to the shell, after feed() returns (feed takes nothing
    until they are done):
      pause         seconds to wait before sending the replies; then,
                    while held is not empty, feed(b'', now) again.
      flagstarttls  load the certificate: on failure send
                    starttls_refused(); else send R_STLSGO, shake hands
                    and call tls_started(), or drop the connection.
      login         run the subprogram with login.payload(timestamp),
                    and held (what the client sent after the line) for
                    it; if it exits 0, the connection is over (exit 0);
                    else send login_failed(verdict)."""

    def __init__(self, config: Config, hostname: bytes, pid: int, now: float,
                 remoteip: bytes = b'unknown', seq: int = 0, tick: float = None):
        self.config = config
        self.remoteip = remoteip
        self.logs = []              # lines for fd 2, taken by the shell
        self.timestamp = timestamp(pid, now, hostname, seq)
        # now: the wall clock (the greeting's timestamp).  The deadline is
        # on tick's clock where given, one that never steps (the shell's
        # time.monotonic, as feed's now): lifetimepop3 counts the seconds
        # the session lasted, whatever the wall clock does.
        start = now if tick is None else tick
        # The shell's clock for the deadline: the one it was set on.
        self.clock = time.time if tick is None else time.monotonic
        self.deadline = start + config.lifetime if config.lifetime else None
        self.flagtlswhy = False     # a refused STLS said why, in the log
        self.lines = Lines()
        self.replies = []
        self.errors = 0
        self.failures = 0
        self.user = None            # after USER
        self.flagsasl = False       # AUTH PLAIN waits for its line
        self.flagtls = False
        self.flagclosed = False
        self.flaglinger = False     # closed on our word: Conn.linger()
        self.exitcode = 1
        self.flagstarttls = False
        self.login = None
        self.pause = 0
        self.held = b''

    # -- the interface to the shell --

    def greet(self) -> bytes:
        return b'+OK ' + self.timestamp + b'\r\n'

    def feed(self, data: bytes, now: float) -> bytes:
        """Take bytes from the client; return the replies to send."""
        self.pause = 0
        if self.flagclosed or self.flagstarttls or self.login is not None:
            return b''
        if self.held:
            data, self.held = self.held + data, b''
        if self.deadline is not None and now >= self.deadline:
            return self.timeout(now)
        pos = 0
        while (pos < len(data) and not self.flagclosed and not self.flagstarttls
               and self.login is None and not self.pause):
            line, pos = self.lines.take(
                data, pos, MAXAUTHLINE if self.flagsasl else MAXCMDLINE)
            if line is None:
                break
            if line is TOOLONG:
                self.flagsasl = False
                self.bad(R_TOOLONG)
            elif self.flagsasl:
                self.flagsasl = False
                self.auth_response(line)
            else:
                self.command(line)
            if (not self.flagclosed and self.config.maxerrors
                    and self.errors >= self.config.maxerrors):
                self.close(R_ERRORS)
        if (self.login is not None or self.pause) and not self.flagclosed:
            self.held = data[pos:]
        # After STLS, data[pos:] goes: it came in the clear, and must not
        # pass for what the client says under TLS.
        return self.take_replies()

    def take_held(self) -> bytes:
        held, self.held = self.held, b''
        return held

    def starttls_refused(self) -> bytes:
        self.flagstarttls = False
        return R_TLSTEMP

    def tls_started(self):
        """RFC 2595 4: what the client said in the clear is forgotten."""
        self.flagstarttls = False
        self.flagtls = True
        self.user = None
        self.flagsasl = False
        self.lines.clear()

    def login_failed(self, verdict: str, why: bytes = b'') -> bytes:
        """The subprogram exited non-zero without a word (why: how it
        ended, for the log), or crashed."""
        login, self.login = self.login, None
        if login is not None:
            self.logs.append(log_line(login.user, login.how, self.remoteip, why))
        self.fail_login(verdict)
        return self.take_replies()

    def fail_login(self, verdict: str):
        self.user = None
        self.failures += 1
        if verdict == LOGIN_CRASHED:
            self.close(R_CRASHED)
            return
        reply = R_TEMPAUTH if verdict == LOGIN_TEMP else R_BADAUTH
        if self.config.maxauth and self.failures >= self.config.maxauth:
            self.close(reply)
        else:
            self.out(reply)
        self.pause = self.config.authdelay

    def login_done(self, code: int):
        """The subprogram ran the session (or spoke, then failed).  Its
        last reply may have been followed by commands it never read
        (qmail-pop3d without a maildir says why and exits): linger, or
        the close sends a reset that destroys that reply."""
        self.login = None
        self.held = b''
        self.flagclosed = True
        self.flaglinger = True
        self.exitcode = 0 if code == 0 else 1

    def eof(self):
        self.held = b''
        self.flagclosed = True

    def timeout(self, now: float) -> bytes:
        self.close(R_TIMEOUT)
        return self.take_replies()

    # -- the state machine --

    def out(self, reply: bytes):
        self.replies.append(reply)

    def take_replies(self) -> bytes:
        out = b''.join(self.replies)
        self.replies = []
        return out

    def close(self, reply: bytes, exitcode: int = 1):
        self.out(reply)
        self.held = b''
        self.flagclosed = True
        self.flaglinger = True
        self.exitcode = exitcode

    def bad(self, reply: bytes):
        self.out(reply)
        self.errors += 1

    def command(self, line: bytes):
        if b'\0' in line:
            self.bad(R_NUL)
            return
        verb, arg = parse_command(line)
        name = COMMANDS.get(verb)
        if name is None or (name == 'pop3_stls' and not self.config.flagtls):
            self.bad(R_AUTHORIZ)
        else:
            getattr(self, name)(arg)

    def pop3_noop(self, arg):
        self.out(R_OK)

    def pop3_quit(self, arg):
        self.close(R_OK, exitcode=0)

    def clear_refused(self) -> bool:
        """Would a password sent now cross the network in the clear,
        where TLS is offered and the admin wants it used?"""
        return (self.config.flagtls and not self.flagtls
                and not self.config.flagauthplain)

    def pop3_user(self, arg):
        if self.clear_refused():
            self.bad(R_CLEAR)
        elif not arg:
            self.bad(R_SYNTAX)
        else:
            self.user = arg
            self.out(R_OK)

    def pop3_pass(self, arg):
        if self.user is None:
            self.bad(R_WANTUSER)
        elif not arg:
            self.bad(R_SYNTAX)
        else:
            self.login = Login(self.user, arg, 'pass')

    def pop3_apop(self, arg):
        user, space, digest = arg.partition(b' ')
        if self.clear_refused():
            # The shipped checkers store hashes, so they read the
            # "digest" as the password itself: in the clear as PASS.
            self.bad(R_CLEAR)
        elif not space or not user or not digest:
            self.bad(R_SYNTAX)
        else:
            self.login = Login(user, digest, 'apop')

    def pop3_capa(self, arg):
        lines = [b'+OK capability list follows', b'TOP', b'UIDL']
        if not self.clear_refused():
            lines += [b'USER', b'SASL PLAIN']
        if self.config.flagtls and not self.flagtls:
            lines.append(b'STLS')
        lines.append(b'.')
        self.out(b''.join(line + b'\r\n' for line in lines))

    def pop3_stls(self, arg):
        if self.flagtls:
            self.bad(R_TLSACTIVE)
        elif arg:
            self.bad(R_SYNTAX)
        else:
            self.flagstarttls = True

    def pop3_auth(self, arg):
        words = arg.split()
        if not words:
            self.out(R_AUTHNONE if self.clear_refused() else R_AUTHLIST)
        elif words[0].upper() != b'PLAIN':
            self.bad(R_AUTHTYPE)
        elif len(words) > 2:
            self.bad(R_SYNTAX)
        elif self.clear_refused():
            self.bad(R_CLEAR)       # an initial response is not looked at
        elif len(words) == 2:
            self.auth_response(words[1])
        else:
            self.flagsasl = True
            self.out(PROMPT)

    def auth_response(self, line: bytes):
        """RFC 4616: authzid NUL user NUL password, in base64."""
        if line.endswith(b'\r'):
            line = line[:-1]
        if line == b'*':
            self.auth_failed(R_AUTHCANCEL)
            return
        try:
            parts = b64decode(line).split(b'\0')
            if len(parts) != 3:
                raise Malformed('PLAIN wants authzid NUL user NUL password')
            authzid, user, password = parts
            field(user)
            field(password)
        except Malformed:
            self.auth_failed(R_AUTHINPUT)
            return
        if authzid and authzid != user:     # no one may act as another
            self.logs.append(log_line(user, 'auth', self.remoteip,
                                      b'authorization identity differs'))
            self.fail_login(LOGIN_BAD)
            return
        self.login = Login(user, password, 'auth')

    def auth_failed(self, reply: bytes):
        """A cancelled or malformed exchange: a failure, not delayed."""
        self.failures += 1
        if self.config.maxauth and self.failures >= self.config.maxauth:
            self.close(reply)
        else:
            self.out(reply)


def starttls(session: Session, conn, certfile: str, wait: float):
    """The shell's part of STLS: a TlsConn; conn itself if the certificate
    cannot be loaded (the -ERR is sent); None if the handshake failed."""
    timeout = session.config.timeout
    try:
        ctx = server_context(certfile)
    except (OSError, ValueError, ImportError, MemoryError) as err:
        # (ImportError, MemoryError: a memory limit too small for libssl)
        if not session.flagtlswhy:      # once a connection: a client may ask again and again
            session.flagtlswhy = True
            if isinstance(err, ImportError):
                why = b'the ssl module: ' + (str(err) or type(err).__name__).encode(
                    'utf-8', 'replace')
            elif isinstance(err, MemoryError):
                why = b'control/servercert.pem: out of memory'
            else:
                from qmail.smtpd_tls import cert_trouble
                why = cert_trouble(err)
            log(b'qmail-popup: unable to load %s\n' % why[:200].translate(_PRINTABLE_SP))
        conn.write(session.starttls_refused(), timeout)
        return conn
    conn.write(R_STLSGO, timeout)
    tls = Tls(ctx)
    deadline = time.monotonic() + min(HANDSHAKE_TIMEOUT, wait)
    raw = b''
    try:
        while True:
            done, out = tls.handshake(raw)
            if out:
                conn.write(out, timeout)
            if done:
                break
            raw = conn.read(deadline - time.monotonic())
            if not raw:         # silence or the end: no TLS, no session
                return None
    except (TlsError, Gone):
        return None
    session.tls_started()
    return TlsConn(conn, tls)


def run_login(session: Session, conn, argv, flagdirect: bool):
    """Run the subprogram for session.login; (wait status, whether it
    spoke: always False when it had the connection itself).  A
    subprogram that cannot be started exits 111, as it were.  What the
    client sent that the subprogram never got is session.held again."""
    login = session.login
    payload = login.payload(session.timestamp)
    held = session.take_held()
    config = session.config
    try:
        # No deadline: the session after a login is the subprogram's, as
        # long as it needs (see lifetimepop3).
        if flagdirect and not held:
            try:
                pid = spawn(argv, payload)
            except OSError:
                return 111 << 8, False
            return wait_child(pid, None), False
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            try:
                pid = spawn(argv, payload, theirs.fileno())
            except OSError:
                session.held = held     # the client's next commands, unanswered yet
                return 111 << 8, False
            finally:
                theirs.close()
            ok, spoke, unsent = relay(conn, ours, held,
                                      config.timeout + KILL_SLACK, None)
            if not spoke:
                session.held = unsent
            return wait_child(pid, None if ok else time.monotonic()), spoke
        finally:
            ours.close()
    finally:
        payload[:] = bytes(len(payload))
        login.wipe()


def verdict(wstat: int):
    """LOGIN_CRASHED, LOGIN_TEMP (exit 111) or LOGIN_BAD; None for exit 0."""
    if os.WIFSIGNALED(wstat):
        return LOGIN_CRASHED
    code = os.WEXITSTATUS(wstat) if os.WIFEXITED(wstat) else 1
    if code == 0:
        return None
    return LOGIN_TEMP if code == 111 else LOGIN_BAD


# -- logging ------------------------------------------------------------------

_PRINTABLE = bytes(c if 0x21 <= c <= 0x7e else 0x3F for c in range(256))
_PRINTABLE_SP = bytes(c if 0x20 <= c <= 0x7e else 0x3F for c in range(256))


def log_line(user: bytes, how: str, remoteip: bytes, why: bytes) -> bytes:
    """One line for fd 2: who failed, from where, how, why; never the
    secret.  The user's bytes outside 0x21-0x7E become '?'."""
    shown = user[:USERLOG].translate(_PRINTABLE)
    if len(user) > USERLOG:
        shown += b'...'
    ip = (remoteip or b'unknown')[:64].translate(_PRINTABLE)
    return b'qmail-popup: login failed: user %s from %s by %s: %s\n' % (
        shown, ip, how.encode(), why)


def describe(wstat: int) -> bytes:
    """How the subprogram ended, for the log."""
    if os.WIFSIGNALED(wstat):
        return b'checker crashed with signal %d' % os.WTERMSIG(wstat)
    if os.WIFEXITED(wstat):
        return b'checker exit %d' % os.WEXITSTATUS(wstat)
    return b'checker status %d' % wstat


def log(line: bytes):
    stderr.log(line)


# -- the shell ----------------------------------------------------------------

def load_config(ctl: control.Controls) -> Config:
    """Raises OSError when a control file cannot be read."""
    return Config(timeout=silence_limit(ctl.seconds('timeoutpop3', DEFAULT_TIMEOUT)),
                  lifetime=ctl.seconds('lifetimepop3', DEFAULT_LIFETIME),
                  maxauth=ctl.int('maxauthpop3', DEFAULT_MAXAUTH),
                  authdelay=ctl.seconds('authdelaypop3', DEFAULT_AUTHDELAY),
                  flagtls=ctl.exists('servercert.pem'),
                  flagauthplain=ctl.exists('pop3authplaintext'))


def write_logs(session: Session):
    for line in session.logs:
        log(line)
    session.logs.clear()


def serve(session: Session, conn, argv, certfile: str) -> int:
    """Run one connection; return the exit code."""
    timeout = session.config.timeout
    flagdirect = True           # the subprogram may have fds 0 and 1
    try:
        conn.write(session.greet(), timeout)
        while not session.flagclosed:
            data = conn.read(read_wait(timeout, session.deadline, session.clock()),
                             flagline=True)
            if data is None:
                conn.write(session.timeout(session.clock()), timeout)
                break
            if not data:
                session.eof()
                break
            since = session.clock()
            replies = session.feed(data, since)
            while True:
                if session.pause:
                    # From the login's start: the checker's own time is
                    # inside the pause, so how long a refusal takes does
                    # not tell one user's password hash from another's.
                    now = session.clock()
                    time.sleep(max(0, min(since + session.pause - now, read_wait(
                        timeout, session.deadline, now))))
                if replies:
                    conn.write(replies, timeout)
                if session.flagstarttls:
                    conn = starttls(session, conn, certfile,
                                    read_wait(timeout, session.deadline, session.clock()))
                    if conn is None:
                        return 1
                    flagdirect = not isinstance(conn, TlsConn)
                if session.login is not None:
                    write_logs(session)     # a refusal before it in the same read
                    since = session.clock()
                    wstat, spoke = run_login(session, conn, argv, flagdirect)
                    what = verdict(wstat)
                    if what is None or spoke:
                        session.login_done(0 if what is None else 1)
                        break
                    replies = session.login_failed(what, describe(wstat))
                    write_logs(session)
                    continue
                write_logs(session)
                if not session.held or session.flagclosed:
                    break
                since = session.clock()
                replies = session.feed(b'', since)
    except Gone:
        return 1
    if isinstance(conn, TlsConn):
        conn.finish(timeout)
        conn = conn.conn
    if session.flaglinger:
        conn.linger()
    return session.exitcode


def main(argv=None, home=None) -> int:
    """qmail-popup hostname subprogram [arg ...].  home is for tests: the
    controls are always auto.QMAIL's otherwise."""
    argv = sys.argv[1:] if argv is None else argv
    home = auto.QMAIL if home is None else home
    conn = session = None
    try:
        conn = Conn(0, 1)
        conn.nodelay()      # also for qmail-pop3d's RETRs, and under TLS the relay's
        args = [os.fsencode(a) for a in argv]
        if len(args) < 2 or not args[1]:
            conn.write(R_USAGE, DEFAULT_TIMEOUT)
            return 1
        try:
            config = load_config(control.Controls(os.path.join(home, 'control')))
        except OSError:
            conn.write(R_CONTROL, DEFAULT_TIMEOUT)
            return 1
        config.flagtls = (config.flagtls and conn.sockin is not None
                          and is_socket(1) and same_file(0, 1))
        config.flagauthplain = config.flagauthplain or this_host(
            os.environb.get(b'TCPREMOTEIP', b''), os.environb.get(b'TCPLOCALIP', b''))
        session = Session(config, args[0], os.getpid(), time.time(),
                          os.environb.get(b'TCPREMOTEIP', b'unknown'), _sessions[0],
                          tick=time.monotonic())
        _sessions[0] += 1
        return serve(session, conn, args[1:], os.path.join(home, CERTFILE))
    except Gone:
        return 1
    except MemoryError:
        if session is None or not session.flagtls:  # not in the clear under TLS
            say(conn, R_NOMEM)
        return 1
    except Exception as err:    # last resort: never a traceback
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        log(('qmail-popup: internal error: %s in %s\n' % (
            type(err).__name__, tb.tb_frame.f_code.co_name if tb else '?')).encode())
        if session is None or not session.flagtls:
            say(conn, R_INTERNAL)
        return 1


def this_host(remoteip: bytes, localip: bytes) -> bool:
    """Is the client on this host: what it sends crosses no network?"""
    if remoteip.startswith(b'::ffff:'):
        remoteip = remoteip[7:]
    if localip.startswith(b'::ffff:'):
        localip = localip[7:]
    if remoteip.startswith(b'127.') or remoteip == b'::1':
        return True
    return bool(remoteip) and remoteip == localip and remoteip != b'unknown'


def same_file(a: int, b: int) -> bool:
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def say(conn, reply: bytes):
    """A last reply in the clear; if the client is gone, so be it."""
    if conn is None:
        return
    try:
        conn.write(reply, DEFAULT_TIMEOUT)
    except (Gone, OSError):
        pass


def run():
    interrupt_kills()
    sys.exit(main())


if __name__ == '__main__':
    run()
