"""qmail-smtpd's SMTP AUTH (RFC 4954): policy, SASL exchanges, checkpassword.

Part of qmail-smtpd (see qmail/smtpd.py).  Auth is one connection's
AUTH, fed the AUTH command and the lines answering its challenges, and
answering a reply with what the Session should do about it; it is pure
but for the checker it is given.  The mechanisms are pure too: each is
fed the client's lines and answers a 334 challenge or the Credentials
to check.  Checkpassword is the checker, and the I/O: it runs a program
speaking the checkpassword interface (cr.yp.to/checkpwd/interface.html)
as the widespread qmail-smtpd AUTH patch does, so that the same
command line works:

    qmail-smtpd mx.example.org /bin/checkpassword /bin/true

Policy:
  * AUTH is offered in EHLO (and accepted) under TLS only, unless
    control/smtpauthplaintext exists: else "538 encryption required for
    requested authentication mechanism (#5.7.11)".
  * "235 ok, go ahead (#2.0.0)": the Session then relays for the client
    as with RELAYCLIENT='' and names the user in the Received line.
  * "535 authentication failed (#5.7.8)", sent authdelaysmtpd seconds
    after the credentials came, the check's time included (PAUSE);
    "454 temporary authentication failure (#4.7.0)", after the same
    delay, when checkpassword exits 111, dies, cannot start or takes
    CHECKTIMEOUT seconds (at once, it would tell a right password
    whose user could not be set up, or a user the checker looked up
    before it found it could not read the passwords, from the rest).
  * Refused commands (they count towards maxerrorssmtpd): "504 auth type
    unimplemented (#5.5.4)", "503 you're already authenticated
    (#5.5.1)", "503 no auth during mail transaction (#5.5.1)", the 538
    above, and "501 malformed auth input (#5.5.4)" for AUTH without a
    mechanism or with more than an initial response.
  * Failures (they count towards maxauthsmtpd): 535, 454, and inside an
    exchange "501 malformed auth input (#5.5.4)" or "501 auth exchange
    cancelled (#5.0.0)".  Once maxauthsmtpd have failed, AUTH gets "421
    too many authentication failures (#4.7.0)" and the connection ends.

Mechanisms:
  PLAIN     RFC 4616: authzid NUL user NUL password, in base64, as the
            initial response or after an empty "334 ".  An authzid other
            than the user is refused (no one may act as someone else).
  LOGIN     The de facto one: "334 VXNlcm5hbWU6" (Username:), then
            "334 UGFzc3dvcmQ6" (Password:); the user may come as the
            initial response.
  CRAM-MD5  RFC 2195: challenge "<pid.time.random@hostname>", response
            "user hexdigest".  A checkpassword program cannot check it
            unless it knows the AUTH patch's convention: fd 3 carries
            "user\\0challenge\\0digest\\0" in place of "user\\0password\\0
            timestamp\\0" (cmd5checkpw, for one, does); so it is
            offered only when the admin says the program does
            (control/smtpauthcram).  The digest is after the last space
            (the AUTH patch cut at the first), so a user may hold one.

Base64 is decoded strictly: anything but the base64 alphabet with its
padding is "501 malformed auth input"; so is an empty user or password,
or a NUL where checkpassword would read it as a separator.  A line "*"
cancels the exchange (501).  The password is never logged, echoed, or
kept after the check.
"""

import binascii
import fcntl
import os
import select
import time

import _signal    # not `signal`: its enum import costs start-up time

from qmail.lib import execvp

# What a checkpassword program answers (its exit code), and what
# Checkpassword.check() returns: 0 yes, 1 no, 111 cannot tell now.
AUTH_OK = 0
AUTH_BAD = 1
AUTH_TEMP = 111

# What the Session does with a reply of Auth's.
SEND = 'send'
REFUSED = 'refused'      # a refused command: counted as in maxerrorssmtpd
PAUSE = 'pause'          # a bad password: send after authdelaysmtpd seconds
CLOSE = 'close'          # send, and drop the connection

R_AUTHOK = b'235 ok, go ahead (#2.0.0)\r\n'
R_AUTHBAD = b'535 authentication failed (#5.7.8)\r\n'
R_AUTHTEMP = b'454 temporary authentication failure (#4.7.0)\r\n'
R_AUTHTYPE = b'504 auth type unimplemented (#5.5.4)\r\n'
R_AUTHTWICE = b"503 you're already authenticated (#5.5.1)\r\n"
R_AUTHMAIL = b'503 no auth during mail transaction (#5.5.1)\r\n'
R_AUTHTLS = (b'538 encryption required for requested authentication'
             b' mechanism (#5.7.11)\r\n')
R_AUTHINPUT = b'501 malformed auth input (#5.5.4)\r\n'
R_AUTHCANCEL = b'501 auth exchange cancelled (#5.0.0)\r\n'
R_AUTHMAX = b'421 too many authentication failures (#4.7.0)\r\n'

MAXAUTHLINE = 12288      # RFC 4954 4: a server takes SASL lines this long
CHECKTIMEOUT = 60        # seconds a checkpassword program may take
HEXDIGEST = 32           # CRAM-MD5's HMAC-MD5, in hex
HEX = b'0123456789abcdefABCDEF'

PROMPT_EMPTY = b'334 \r\n'
PROMPT_USER = b'334 VXNlcm5hbWU6\r\n'       # "Username:"
PROMPT_PASS = b'334 UGFzc3dvcmQ6\r\n'       # "Password:"


class Malformed(Exception):
    """The client's SASL data cannot be used: 501."""


class Credentials:
    """What checkpassword reads from fd 3: user, secret (the password,
    or CRAM-MD5's challenge) and response (empty, or CRAM-MD5's
    digest); authzid is PLAIN's, else empty."""

    __slots__ = ('user', 'secret', 'response', 'authzid')

    def __init__(self, user, secret, response=b'', authzid=b''):
        self.user = user
        self.secret = secret
        self.response = response
        self.authzid = authzid

    def __repr__(self):         # never the secret, even in a traceback
        return '<Credentials user=%r>' % (self.user,)


def b64decode(line: bytes) -> bytes:
    """Strict base64, as RFC 4954 asks; "=" is the empty response."""
    if line == b'=':
        return b''
    try:
        return binascii.a2b_base64(line, strict_mode=True)
    except binascii.Error:
        raise Malformed('bad base64') from None


def b64encode(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)


def field(data: bytes) -> bytes:
    """A user or password: not empty, and no NUL for checkpassword."""
    if not data or b'\0' in data:
        raise Malformed('empty field or NUL')
    return data


class Plain:
    name = b'PLAIN'

    def start(self, initial):
        if initial is None:
            return PROMPT_EMPTY
        return self.step(initial)

    def step(self, line):
        parts = b64decode(line).split(b'\0')
        if len(parts) != 3:
            raise Malformed('PLAIN wants authzid NUL user NUL password')
        authzid, user, password = parts
        return Credentials(field(user), field(password), authzid=authzid)


class Login:
    name = b'LOGIN'

    def __init__(self):
        self.user = None

    def start(self, initial):
        if initial is None:
            return PROMPT_USER
        return self.step(initial)

    def step(self, line):
        data = field(b64decode(line))
        if self.user is None:
            self.user = data
            return PROMPT_PASS
        return Credentials(self.user, data)


class CramMD5:
    name = b'CRAM-MD5'

    def __init__(self, challenge: bytes):
        self.challenge = challenge

    def start(self, initial):
        if initial is not None:     # the server speaks first (RFC 2195)
            raise Malformed('CRAM-MD5 takes no initial response')
        return b'334 ' + b64encode(self.challenge) + b'\r\n'

    def step(self, line):
        user, sep, digest = b64decode(line).rpartition(b' ')
        if not sep or len(digest) != HEXDIGEST or digest.strip(HEX):
            raise Malformed('CRAM-MD5 wants user SP hexdigest')
        return Credentials(field(user), self.challenge, digest.lower())


def mechanism(name: bytes, flagcram: bool, challenge):
    """The mechanism called name (any case), or None if not offered.
    challenge() makes CRAM-MD5's, only when that is asked for."""
    name = name.upper()
    if name == b'PLAIN':
        return Plain()
    if name == b'LOGIN':
        return Login()
    if name == b'CRAM-MD5' and flagcram:
        return CramMD5(challenge())
    return None


def mechanisms(flagcram: bool) -> bytes:
    """The EHLO keyword's parameters."""
    return b'LOGIN PLAIN CRAM-MD5' if flagcram else b'LOGIN PLAIN'


# -- one connection's AUTH ----------------------------------------------------

class Auth:
    """AUTH's state and policy for one connection (see the docstring).

    checker has challenge() -> bytes and check(Credentials) -> AUTH_OK,
    AUTH_BAD or AUTH_TEMP.  user is the authenticated user, or None;
    sasl the mechanism waiting for the client's next line, or None."""

    def __init__(self, checker, flagplain=False, flagcram=False, maxfailures=3):
        self.checker = checker
        self.flagplain = flagplain
        self.flagcram = flagcram
        self.maxfailures = maxfailures
        self.user = None
        self.sasl = None
        self.failures = 0
        self.refused_user = None    # whom the checker just turned down (for the log)

    def keyword(self, flagtls: bool):
        """EHLO's AUTH line, or None when AUTH is not offered."""
        if flagtls or self.flagplain:
            return b'AUTH ' + mechanisms(self.flagcram)
        return None

    def forget(self):
        """After STARTTLS (RFC 3207 4.2): who the client was, and any
        exchange under way; the failures stay counted."""
        self.user = None
        self.sasl = None

    def command(self, arg: bytes, flagtls: bool, flagmail: bool):
        """AUTH arg: (reply, SEND | REFUSED | PAUSE | CLOSE)."""
        if self.maxfailures and self.failures >= self.maxfailures:
            return R_AUTHMAX, CLOSE
        if self.user is not None:
            return R_AUTHTWICE, REFUSED
        if flagmail:
            return R_AUTHMAIL, REFUSED
        if not flagtls and not self.flagplain:
            return R_AUTHTLS, REFUSED
        words = arg.split()
        if not words or len(words) > 2:
            return R_AUTHINPUT, REFUSED
        mech = mechanism(words[0], self.flagcram, self.checker.challenge)
        if mech is None:
            return R_AUTHTYPE, REFUSED
        try:
            return self.step(mech, mech.start(words[1] if len(words) > 1 else None))
        except Malformed:
            return self.fail(R_AUTHINPUT)

    def response(self, line: bytes):
        """A line answering a 334 challenge: as command()."""
        mech, self.sasl = self.sasl, None
        if line.endswith(b'\r'):
            line = line[:-1]
        if line == b'*':
            return self.fail(R_AUTHCANCEL)
        try:
            return self.step(mech, mech.step(line))
        except Malformed:
            return self.fail(R_AUTHINPUT)

    def step(self, mech, step):
        """step is a 334 challenge to send, or the Credentials."""
        if isinstance(step, bytes):
            self.sasl = mech
            return step, SEND
        if step.authzid and step.authzid != step.user:
            result = AUTH_BAD           # no one may act as another
        else:
            result = self.checker.check(step)
        if result == AUTH_OK:
            self.user = step.user
            return R_AUTHOK, SEND
        self.refused_user = step.user
        # A 454 waits as a 535 does: at once, it would tell a wrong
        # password from a right one whose user could not be set up.
        if result == AUTH_TEMP:
            return self.fail(R_AUTHTEMP, PAUSE)
        return self.fail(R_AUTHBAD, PAUSE)

    def fail(self, reply: bytes, what=SEND):
        self.failures += 1
        return reply, what


# -- checkpassword --------------------------------------------------------------

def payload(creds: Credentials) -> bytearray:
    """checkpassword's fd 3: user, secret, response, each NUL-ended."""
    return bytearray(creds.user + b'\0' + creds.secret + b'\0'
                     + creds.response + b'\0')


def exit_result(wstat: int) -> int:
    """The checkpassword interface: 0 yes; 111 (or a crash) temporary
    trouble; any other code no, as the AUTH patch reads it."""
    if os.WIFEXITED(wstat):
        code = os.WEXITSTATUS(wstat)
        if code == 0:
            return AUTH_OK
        return AUTH_TEMP if code == 111 else AUTH_BAD
    return AUTH_TEMP


class Checkpassword:
    """Asks `argv` (a checkpassword program and its argument program)
    whether a user's credentials are good.

    The program gets fd 3 as a pipe holding payload(), fd 0 and fd 1 on
    /dev/null (the AUTH patch gave it the SMTP connection, which under
    TLS it could only garble), fd 2 and the environment as qmail-smtpd
    has them (so it may log TCPREMOTEIP).  It is killed after timeout
    seconds, which is temporary trouble, as is failing to start it."""

    def __init__(self, hostname: bytes, argv, timeout=CHECKTIMEOUT):
        self.hostname = hostname
        self.argv = list(argv)
        self.timeout = timeout

    def challenge(self) -> bytes:
        """RFC 2195's msg-id form, unique and unguessable."""
        return b'<%d.%d.%s@%s>' % (os.getpid(), int(time.time()),
                                   os.urandom(8).hex().encode(), self.hostname)

    def check(self, creds: Credentials) -> int:
        data = payload(creds)
        try:
            return self._run(data)
        except OSError:
            return AUTH_TEMP
        finally:
            data[:] = bytes(len(data))

    def _run(self, data: bytearray) -> int:
        r, w = os.pipe()
        try:
            # dup2(r, 3) must not be dup2(3, 3), which would leave
            # close-on-exec set; and r must survive the opens on 0 and 1.
            r4 = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 4)
            os.close(r)
            r = r4
            pid = execvp.spawnp(
                self.argv, os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, r, 3),
                    (os.POSIX_SPAWN_OPEN, 0, '/dev/null', os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, '/dev/null', os.O_WRONLY, 0),
                ],
                setsigdef=execvp.DEFAULT_SIGNALS)
        except OSError:
            os.close(r)
            os.close(w)
            return AUTH_TEMP
        os.close(r)
        deadline = time.monotonic() + self.timeout
        try:
            self._feed(w, data, deadline)
        finally:
            os.close(w)
        return self._wait(pid, deadline)

    @staticmethod
    def _feed(w: int, data: bytearray, deadline: float):
        """Write the payload without blocking past deadline; a program
        that exits unread is judged by its exit code alone."""
        os.set_blocking(w, False)
        poller = select.poll()
        poller.register(w, select.POLLOUT)
        view = memoryview(data)
        try:
            while view:
                wait = deadline - time.monotonic()
                if wait <= 0 or not poller.poll(int(wait * 1000) + 1):
                    return
                try:
                    n = os.write(w, view)
                except BlockingIOError:
                    continue
                except OSError:         # EPIPE: it did not read
                    return
                view = view[n:]
        finally:
            view.release()

    @staticmethod
    def _wait(pid: int, deadline: float) -> int:
        nap = 0.001
        while True:
            done, wstat = os.waitpid(pid, os.WNOHANG)
            if done:
                return exit_result(wstat)
            if time.monotonic() >= deadline:
                os.kill(pid, _signal.SIGKILL)
                os.waitpid(pid, 0)
                return AUTH_TEMP
            time.sleep(nap)
            nap = min(nap * 2, 0.05)
