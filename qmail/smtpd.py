"""qmail-smtpd: receive mail via SMTP.

Usage:    qmail-smtpd [hostname checkprogram subprogram ...]
          The arguments of the widespread qmail-smtpd AUTH patch: with
          them SMTP AUTH is offered, hostname naming this host in the
          CRAM-MD5 challenge and checkprogram (a checkpassword program,
          run with the rest as its arguments) judging the passwords.
Runs as:  qmaild, under tcpserver or tcp-env, the connection on fd 0 and
          fd 1; or as a local user, from sendmail -bs, with RELAYCLIENT=''
          and DATABYTES=0.  cwd HOME (auto.QMAIL, never the environment).
Reads:    fd 0, SMTP.  The environment of tcp-environ(5): TCPREMOTEIP,
          TCPREMOTEHOST, TCPREMOTEINFO, TCPLOCALHOST, TCPLOCALIP (IPv4 or,
          as ucspi-tcp-ipv6 sets them, IPv6 "2001:db8::1"); and
          RELAYCLIENT, DATABYTES, QMAILQUEUE, TLSCIPHERS, REQUIRE_AUTH
          (set: MAIL gets 530 until AUTH, but from a RELAYCLIENT),
          FORCEAUTHMAILFROM (set, not "0": after AUTH, MAIL gets 553
          but from the user's own address, sender_is_users, or a 451
          when MailboxOwner cannot tell whose it is), SMTPS (set,
          even empty: TLS from the start, before the greeting, as the
          qmail TLS patch has it for port 465; no certificate or no
          handshake is no session, exit 1, the log says why), and
          MAXRCPTSMTPD, MAXERRORSSMTPD, LIFETIMESMTPD (limits, below).
          control/smtpgreeting (else me, else refuse to run), localiphost
          (else me), rcpthosts, morercpthosts.cdb, badmailfrom, databytes,
          locals, virtualdomains and users/cdb (FORCEAUTHMAILFROM), srs_*
          (a recipient at srs_domain must be a good SRS address:
          Srs.recipient_ok, else 550),
          timeoutsmtpd, servercert.pem (and, at STARTTLS,
          tlsserverciphers), smtpauthplaintext, smtpauthcram, and the
          limits below.
Writes:   fd 1, SMTP replies.  Each message, behind a Received line, and
          its envelope into qmail-queue ($QMAILQUEUE, else
          HOME/bin/qmail-queue), which starts when DATA begins and is fed
          the message as it arrives; after AUTH, with TCPREMOTEINFO set to
          the user in its environment, as the AUTH patch does.
Exits:    0 after QUIT; 1 when the client goes away or times out, after a
          bare LF in DATA, after too many errors, or when the controls or
          this host's IP addresses cannot be read (after a 421 reply).
Trusts:   nobody on fd 0.  Every byte the client sends is bounded (see
          Limits); its text reaches the Received line only through
          safe(); the environment is the admin's (tcpserver's rules).
See:      qmail-smtpd(8), tcp-environ(5), qmail-control(5), qmail-newmrh(8);
          RFC 5321; RFC 1870 (SIZE); RFC 2920 (PIPELINING); RFC 3207
          (STARTTLS); RFC 4954 (AUTH); RFC 3848 (ESMTPSA).

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

Beyond qmail 1.03, as the common patches have it:
  * STARTTLS (qmail/smtpd_tls.py), offered in EHLO when
    control/servercert.pem exists and fds 0 and 1 are one socket (never
    to sendmail -bs).  "220 ready for tls", then the handshake, within
    60 seconds (and timeoutsmtpd); if it fails, the connection is
    closed (exit 1).  Bytes the client sent after STARTTLS, before the
    handshake, are thrown away (CVE-2011-0411), and after it everything
    the client said is forgotten: HELO/EHLO, MAIL, RCPT, AUTH (RFC 3207
    4.2).  Refusals: "454 TLS not available due to temporary reason
    (#4.3.0)" when the certificate cannot be loaded, "503 TLS already
    active (#5.5.1)", "501 syntax error (no parameters allowed)
    (#5.5.4)"; without the offer, 502 as for any unknown verb.
  * SMTP AUTH (qmail/smtpd_auth.py, which lists the replies): LOGIN and
    PLAIN, and CRAM-MD5 when control/smtpauthcram exists; offered under
    TLS only unless control/smtpauthplaintext exists; checked by the
    checkpassword program of the arguments (without them AUTH is 502).
    A client that authenticated may relay, as with RELAYCLIENT=''.
  * The Received line says "with SMTP" as qmail does, or RFC 3848's
    "with ESMTPS" (TLS), "with ESMTPA" (AUTH), "with ESMTPSA" (both).
    Under TLS the protocol and cipher follow in a comment, the TLS
    patch's "(cipher encrypted)" with the protocol version added; after
    AUTH the user stands where qmail puts TCPREMOTEINFO, as the AUTH
    patch does.  Addresses appear as tcpserver gives them, IPv6 plain
    as in the qmail IPv6 patches:
      Received: from pc.example (HELO pc) (alice@2001:db8::7)
        by mx.example.org with ESMTPSA (TLSv1.3 TLS_AES_256_GCM_SHA384 encrypted); 26 Sep 1995 04:46:54 -0000
  * box@[IPv6:2001:db8::1] (the tag in any case) becomes box@localiphost
    when the address is this host's (any in /proc/net/if_inet6), as
    box@[d.d.d.d] does; so does an IPv4-mapped [IPv6:::ffff:d.d.d.d].

Limits (control file, default; 0 in the file means no limit; the
environment's MAXRCPTSMTPD, MAXERRORSSMTPD and LIFETIMESMTPD, set by
tcp.smtp or by sendmail -bs, override the first three as DATABYTES
does databytes):
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
  maxauthsmtpd    3     failed AUTH attempts per connection (535, 454
                        or 501 inside an exchange); the next AUTH gets
                        "421 too many authentication failures (#4.7.0)"
                        and the connection is dropped.
  authdelaysmtpd  2     seconds before a 535 reply, and before anything
                        the client sent after the failed AUTH is read,
                        counted from the AUTH's last line: the check
                        takes part of them, so the reply's time does
                        not tell which user or hash was tried.
  MAXCMDLINE      1000  bytes in a command line with its CR LF (fixed).
  MAXAUTHLINE     12288 bytes in a SASL response line (RFC 4954 4; fixed).

The design: Session is the protocol and every policy decision, fed
bytes and the time, answering bytes; it holds all of one connection's
state, so a listener that forks per connection can make one per child.
Config and Peer are its values, read by load_config() and peer_env().
serve() is the shell: fd 0 and fd 1 with poll() timeouts, or the TLS
connection once STARTTLS is done.  The Session never does I/O of its
own: at STARTTLS it sets flagstarttls and the shell does the handshake
(then tls_started()); a failed AUTH sets pause, which the shell sleeps
before sending the replies and reading on; passwords are checked by the
injected authenticator (smtpd_auth.Checkpassword in the program).  The
DATA stream is qmail/smtpd_blast.py's.
"""

import os
import stat
import sys
import time
import select

import _signal    # not `signal`: its enum import costs start-up time
import _socket    # not `socket`: only its C type is needed here

from qmail.lib import auto, control, stderr
from qmail.lib.control import scan_ulong
from qmail.lib import cdb
from qmail.lib.cdb import CdbError
from qmail.lib.date822 import date822
from qmail.lib.qqtalk import QueueClient
from qmail.lib import rcptmap
from qmail.smtpd_addr import (ip6_scanbracket, localiphost6, parse_if_inet6,  # noqa: F401
                               local_ips6,
                               ADDRMAX, addrallowed, addrparse, bmfcheck, sender_is_users,
                              local_ips, localiphost, mail_size)
from qmail.smtpd_auth import (CLOSE, MAXAUTHLINE, PAUSE, REFUSED, Auth,
                              Checkpassword)
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
DEFAULT_MAXAUTH = 3      # smtplib tries CRAM-MD5, PLAIN, LOGIN: 3 failures
DEFAULT_AUTHDELAY = 2    # seconds: as dovecot's auth_failure_delay
CERTFILE = 'control/servercert.pem'     # smtpd_tls.CERTFILE, unimported

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
R_AUTHFIRST = b'530 authentication required (#5.7.0)\r\n'
R_BADSRS = b'550 sorry, that is no SRS address of mine, or it is too old (#5.1.1)\r\n'
R_NOTYOURS = b'553 sorry, that sender address is not the user you authenticated as (#5.7.1)\r\n'
R_OWNERTEMP = b'451 unable to tell whose that sender address is, try again later (#4.3.0)\r\n'
R_STRAYLF = b'451 See http://pobox.com/~djb/docs/smtplf.html.\r\n'
R_TIMEOUT = b'451 timeout (#4.4.2)\r\n'
R_CONTROL = b'421 unable to read controls (#4.3.0)\r\n'
R_IPME = b'421 unable to figure out my IP addresses (#4.3.0)\r\n'
R_NOMEM = b'421 out of memory (#4.3.0)\r\n'
R_INTERNAL = b'421 internal error (#4.3.0)\r\n'
R_TOOLONG = b'500 line too long (#5.5.2)\r\n'
R_AUTHTOOLONG = b'500 auth exchange line too long (#5.5.6)\r\n'    # RFC 4954 4
R_NUL = b'500 NUL in command (#5.5.2)\r\n'
R_MAXRCPT = b'452 sorry, too many recipients (#4.5.3)\r\n'
R_ERRORS = b'421 too many errors (#4.7.0)\r\n'
R_TLSTEMP = b'454 TLS not available due to temporary reason (#4.3.0)\r\n'
R_TLSACTIVE = b'503 TLS already active (#5.5.1)\r\n'
R_TLSARG = b'501 syntax error (no parameters allowed) (#5.5.4)\r\n'


# -- values -----------------------------------------------------------------

LOGRCPTS = 20            # recipients named in a log line; then a count
LOGABANDONED = 20        # abandoned transactions logged a session; then a count


_LOGSAFE = bytes(c if 33 <= c <= 126 else 95 for c in range(256))
_LOGRESULT = bytes(c if 32 <= c <= 126 else 95 for c in range(256))   # a reply's: spaces kept


def logsafe(s: bytes) -> bytes:
    """Peer-controlled bytes made safe for one log line: at most 200,
    each space, control or 8-bit byte an underscore."""
    return s[:200].translate(_LOGSAFE)


class Config:
    """What the control files (and DATABYTES) say, as values.

    rcpthosts is None when control/rcpthosts is missing (every domain
    allowed), else a set of lowercased entries; morercpthosts anything
    answering `in` (a Cdb) or None; badmailfrom a set, lowercased; ipme
    this host's IPv4 addresses as 4-byte strings and IPv6 addresses as
    16-byte strings.  flagtls: STARTTLS may be offered (a certificate,
    and a socket: the shell decides); flagauthplain: AUTH without TLS;
    flagcram: offer CRAM-MD5; flagrequireauth: MAIL only after AUTH
    (or from a RELAYCLIENT), for mail clients' ports (REQUIRE_AUTH);
    flagforcefrom: after AUTH, MAIL only from the user's own addresses
    (FORCEAUTHMAILFROM): a login without a domain also at a domain of
    locals_ (control/locals, else me; none where the checkprogram is not
    a system checker: system_checker), and any address whose mail the
    user gets (owner: MailboxOwner, set by main for a system checker)."""

    def __init__(self, greeting, localiphost=None, rcpthosts=None,
                 morercpthosts=None, badmailfrom=frozenset(), databytes=0,
                 timeout=DEFAULT_TIMEOUT, maxrcpt=DEFAULT_MAXRCPT,
                 maxerrors=DEFAULT_MAXERRORS, lifetime=DEFAULT_LIFETIME,
                 ipme=frozenset((b'\0\0\0\0',)), flagtls=False,
                 flagauthplain=False, flagcram=False,
                 maxauth=DEFAULT_MAXAUTH, authdelay=DEFAULT_AUTHDELAY,
                 flaglog=True, rcptmap=None, flagrequireauth=False,
                 flagforcefrom=False, locals_=frozenset(), srs=None):
        self.greeting = greeting
        self.owner = None
        self.srs = srs
        self.flagrequireauth = flagrequireauth
        self.flagforcefrom = flagforcefrom
        self.locals_ = locals_
        self.flaglog = flaglog
        self.rcptmap = rcptmap      # unknown local recipients: 550
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
        self.flagtls = flagtls
        self.flagauthplain = flagauthplain
        self.flagcram = flagcram
        self.maxauth = maxauth
        self.authdelay = authdelay

    def copy(self) -> 'Config':
        """Another Config with the same values (a session changes its own)."""
        other = object.__new__(Config)
        other.__dict__.update(self.__dict__)
        return other


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


# -- the Received line ------------------------------------------------------

_SAFE = frozenset(b'.@%+/=:-[]abcdefghijklmnopqrstuvwxyz'
                  b'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789')
_SAFETABLE = bytes(c if c in _SAFE else 0x3F for c in range(256))


def safe(s: bytes) -> bytes:
    """received.c's safeput: every byte it does not trust becomes '?'."""
    return s.translate(_SAFETABLE)


_TLSSAFETABLE = bytes(c if c in _SAFE or c in b'_ ' else 0x3F for c in range(256))


def received(peer: Peer, helo, now: float, tls=None, user=None) -> bytes:
    """qmail's Received line; helo None when it matched TCPREMOTEHOST.
    tls is smtpd_tls.describe()'s "TLSv1.3 TLS_AES_256_GCM_SHA384" once
    STARTTLS is done, user the AUTH user (see the docstring)."""
    parts = [b'Received: from ', safe(peer.remotehost)]
    if helo is not None:
        parts += [b' (HELO ', safe(helo), b')']
    parts.append(b' (')
    info = peer.remoteinfo if user is None else user
    if info is not None:
        parts += [safe(info), b'@']
    parts += [safe(peer.remoteip), b')\n  by ', safe(peer.local), b' with ']
    if tls is None and user is None:
        parts.append(b'SMTP')
    else:   # RFC 3848
        parts += [b'ESMTP', b'S' if tls is not None else b'',
                  b'A' if user is not None else b'']
    if tls is not None:
        parts += [b' (', tls.translate(_TLSSAFETABLE), b' encrypted)']
    parts += [b'; ', date822(now), b'\n']
    return b''.join(parts)


# -- the session ------------------------------------------------------------

COMMANDS = {
    b'rcpt': 'smtp_rcpt', b'mail': 'smtp_mail', b'data': 'smtp_data',
    b'quit': 'smtp_quit', b'helo': 'smtp_helo', b'ehlo': 'smtp_ehlo',
    b'rset': 'smtp_rset', b'help': 'smtp_help', b'noop': 'smtp_noop',
    b'vrfy': 'smtp_vrfy', b'starttls': 'smtp_starttls', b'auth': 'smtp_auth',
}


class Session:
    """One SMTP connection: feed it bytes, send what it answers.

        s = Session(config, peer, newqueue, now)
        send(s.greet())
        while not s.flagclosed: send(s.feed(received_bytes, now))
        ... s.eof() when the client goes away, s.timeout(now) when it
        is silent too long or past s.deadline; s.exitcode at the end.

    now is the wall clock's time, for the Received line and the 250's
    stamp; tick, where given, a clock that never steps (time.monotonic),
    for the deadline (lifetimesmtpd), which must count the seconds the
    session lasted whatever the wall clock does (qmail's alarm()).
    Without tick, now serves for both.

    newqueue() starts qmail-queue and returns its QueueClient (or any
    object with put, fail, from_, to, close and pid); OSError from it
    means "451 qqt failure".

    checker, when AUTH is configured, is smtpd_auth.Checkpassword or
    any object with challenge() -> bytes and check(Credentials) ->
    AUTH_OK, AUTH_BAD or AUTH_TEMP; self.auth is then its smtpd_auth.Auth.

    Two requests to the shell, after feed() returns:
      flagstarttls  send the replies, then load the certificate: on
                    failure send starttls_refused(); else send "220
                    ready for tls", do the handshake and call
                    tls_started(description), or drop the connection if
                    it fails (smtpd_tls.starttls()).  Until then feed()
                    takes nothing.
      pause         seconds to wait before sending the replies; then,
                    while held is not empty, feed(b'', now) again."""

    def __init__(self, config: Config, peer: Peer, newqueue, now: float,
                 checker=None, tick: float = None):
        self.config = config
        self.peer = peer
        self.newqueue = newqueue
        self.auth = None if checker is None else Auth(
            checker, config.flagauthplain, config.flagcram, config.maxauth)
        start = now if tick is None else tick
        # The shell's clock for the deadline: the one it was set on.
        self.clock = time.time if tick is None else time.monotonic
        self.deadline = start + config.lifetime if config.lifetime else None
        self.now = now
        self.flagclosed = False
        self.exitcode = 1
        self.closereply = None      # what the server ended the session with
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
        self.tls = None             # smtpd_tls.describe() once encrypted
        self.flagstarttls = False   # the shell's turn: see the docstring
        self.pause = 0
        self.held = b''             # input not read yet because of pause
        self.pid = 0                # set by the shell, for the log line
        self.logs = []              # log lines for the shell to write
        self.flaglogged = False     # a line was made for this session
        self.flagtlswhy = False     # a refused STARTTLS said why
        self.flagtxlogged = True    # the current transaction has its line
        self.refused = 0            # refused RCPTs in this transaction
        self.abandoned = 0          # transactions abandoned (RSET, new MAIL)

    # -- the interface to the shell --

    def greet(self) -> bytes:
        return b'220 ' + self.config.greeting + b' ESMTP\r\n'

    def feed(self, data: bytes, now: float, tick: float = None) -> bytes:
        """Take bytes from the client; return the replies to send."""
        self.pause = 0
        if self.flagclosed or self.flagstarttls:
            return b''
        if self.held:
            data, self.held = self.held + data, b''
        if self.deadline is not None and (now if tick is None else tick) >= self.deadline:
            return self.timeout(now)
        self.now = now
        pos = 0
        try:
            while (pos < len(data) and not self.flagclosed
                   and not self.flagstarttls and not self.pause):
                if self.qq is not None:
                    pos = self.data_in(data, pos)
                else:
                    pos = self.command_in(data, pos)
        except CdbError:
            self.abort_queue()
            self.close(R_CONTROL)
        if self.pause and not self.flagclosed:
            self.held = data[pos:]
        # After STARTTLS, data[pos:] goes: it was sent in the clear, and
        # must not pass for what the client says under TLS (CVE-2011-0411).
        return self.take_replies()

    def starttls_refused(self, why: bytes = b'control/servercert.pem: ') -> bytes:
        """The certificate (or the cipher list) could not be loaded: go
        on in the clear; the log says what and why (else the admin sees
        only the client's 454)."""
        self.flagstarttls = False
        if not self.flagtlswhy:     # once: the client may ask again and again
            self.flagtlswhy = True
            self.log(b'starttls', b'unable to load ' + why)
        return R_TLSTEMP

    def tls_started(self, description: bytes):
        """The handshake is done: forget what the client said before
        (RFC 3207 4.2), as a new connection would; a transaction left
        open gets its line first, as one left by RSET."""
        self.note_abandoned(b'STARTTLS before DATA')
        self.refused = 0
        self.flagtxlogged = True
        self.flagstarttls = False
        self.tls = description
        self.dohelo(self.peer.remotehost)
        self.seenmail = False
        self.mailfrom = b''
        self.rcptto = []
        if self.auth is not None:
            self.auth.forget()
        self.linebuf.clear()
        self.flagtoolong = False

    def eof(self) -> bytes:
        """The client went away: nothing half-received is queued."""
        self.abort_queue()
        self.held = b''
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

    # -- the log: one line per transaction, at least one per session --

    def log(self, what: bytes, result: bytes):
        """A log line: the client and its helo, what happened, the result."""
        self.logs.append(b'qmail-smtpd: pid %d from %s helo %s %s: %s\n' % (
            self.pid, logsafe(self.peer.remoteip), logsafe(self.helo or b'-'), what,
            result.rstrip(b'\r\n')[:200].translate(_LOGRESULT)))

    def note(self, result: bytes):
        """A transaction's line: sender, recipients and the result."""
        rcpts = b' '.join(logsafe(r) or b'<>' for r in self.rcptto[:LOGRCPTS])
        if len(self.rcptto) > LOGRCPTS:
            rcpts += b' (+%d more)' % (len(self.rcptto) - LOGRCPTS)
        what = b'mail %s rcpt %s' % (
            b'<%s>' % logsafe(self.mailfrom) if self.seenmail or self.rcptto else b'-',
            rcpts or b'-')
        if self.refused:
            what += b' refused %d' % self.refused
        if self.authuser:
            what += b' auth %s' % logsafe(self.authuser)
        if self.tls:
            what += b' tls'
        self.log(what, result)
        self.flaglogged = True
        self.flagtxlogged = True

    def note_abandoned(self, why: bytes):
        """A transaction left before DATA: its line, for the first
        LOGABANDONED a session, then only a count at its end (a client's
        64 KB of MAIL and RCPT made a megabyte of log, enough to rotate
        multilog's whole history away)."""
        if not self.flagtxlogged and (self.rcptto or self.refused):
            self.abandoned += 1
            if self.abandoned <= LOGABANDONED:
                self.note(why)
            else:
                self.flagtxlogged = True

    def note_end(self, why: bytes):
        """At the session's end: the open transaction, else the session."""
        self.note_abandoned(why)
        if self.abandoned > LOGABANDONED:
            self.log(b'mail - rcpt -', b'%d more transactions abandoned, not logged'
                     % (self.abandoned - LOGABANDONED))
        if not self.flaglogged:
            self.rcptto = []
            self.note(why)

    def take_logs(self) -> bytes:
        out = b''.join(self.logs)
        self.logs = []
        return out

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
        self.closereply = reply

    def bad(self, reply: bytes):
        """A refused command: counted towards maxerrorssmtpd."""
        self.out(reply)
        self.errors += 1

    def command_in(self, data: bytes, pos: int) -> int:
        """Collect one command line (or SASL response line) from
        data[pos:]; return the new pos."""
        flagsasl = self.auth is not None and self.auth.sasl is not None
        limit = MAXAUTHLINE if flagsasl else MAXCMDLINE
        i = data.find(b'\n', pos)
        if i < 0:
            if not self.flagtoolong:
                if len(self.linebuf) + len(data) - pos > limit - 1:
                    self.flagtoolong = True
                    self.linebuf.clear()
                else:
                    self.linebuf += data[pos:]
            return len(data)
        if self.flagtoolong or len(self.linebuf) + i - pos + 1 > limit:
            self.flagtoolong = False
            self.linebuf.clear()
            if flagsasl:
                self.auth.sasl = None       # the exchange is over
            self.bad(R_AUTHTOOLONG if flagsasl else R_TOOLONG)
        else:
            line = bytes(self.linebuf) + data[pos:i]
            self.linebuf.clear()
            if flagsasl:
                self.auth_reply(*self.auth.response(line))
            else:
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
        lines = [self.config.greeting, b'PIPELINING', b'8BITMIME']
        if self.config.flagtls and self.tls is None:
            lines.append(b'STARTTLS')
        keyword = None if self.auth is None else self.auth.keyword(
            self.tls is not None)
        if keyword is not None:
            lines.append(keyword)
        if self.config.databytes:
            # RFC 1870: at most 20 digits; a limit beyond that is none to declare.
            lines.append(b'SIZE %d' % self.config.databytes
                         if self.config.databytes < 10 ** 20 else b'SIZE')
        self.out(b''.join(b'250-' + line + b'\r\n' for line in lines[:-1])
                 + b'250 ' + lines[-1] + b'\r\n')
        self.seenmail = False
        self.dohelo(arg)

    def smtp_rset(self, arg):
        self.note_abandoned(b'RSET before DATA')
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

    def smtp_starttls(self, arg):
        if not self.config.flagtls:
            self.bad(R_UNIMPL)
        elif self.tls is not None:
            self.bad(R_TLSACTIVE)
        elif arg:
            self.bad(R_TLSARG)
        else:
            self.flagstarttls = True

    def smtp_auth(self, arg):
        if self.auth is None:
            self.bad(R_UNIMPL)
        else:
            self.auth_reply(*self.auth.command(arg, self.tls is not None,
                                               self.seenmail))

    def auth_reply(self, reply: bytes, what):
        refused, self.auth.refused_user = self.auth.refused_user, None
        if refused is not None:
            # Each refusal logged (the user tried, never the password):
            # guessing shows, and a tool such as fail2ban can act on it.
            self.log(b'auth %s refused' % logsafe(refused), reply)
        if what == CLOSE:
            self.abort_queue()
            self.close(reply)
        elif what == REFUSED:
            self.bad(reply)
        else:
            self.out(reply)
            if what == PAUSE:
                self.pause = self.config.authdelay

    @property
    def authuser(self):
        return None if self.auth is None else self.auth.user

    # -- MAIL, RCPT, DATA --

    def parse_addr(self, arg: bytes):
        """addrparse with localiphost and qmail's length check:
        (address, rest), or None for a syntax error."""
        addr, rest = addrparse(arg)
        addr = localiphost(addr, self.config.localiphost, self.config.ipme)
        addr = localiphost6(addr, self.config.localiphost, self.config.ipme)
        if len(addr) > ADDRMAX:
            return None
        return addr, rest

    def smtp_mail(self, arg):
        parsed = self.parse_addr(arg)
        if parsed is None:
            self.bad(R_SYNTAX)
            return
        addr, rest = parsed
        if self.config.flagrequireauth and self.authuser is None \
                and self.peer.relayclient is None:
            self.note_abandoned(b'new MAIL before DATA')
            self.seenmail = False
            self.bad(R_AUTHFIRST)
            return
        try:
            notyours = self.config.flagforcefrom and self.authuser is not None and \
                not sender_is_users(addr, self.authuser, self.config.locals_, self.config.owner)
        except OSError as err:
            self.note_abandoned(b'new MAIL before DATA')
            self.seenmail = False
            self.log(b'mail <%s> rcpt - auth %s: %s' % (
                logsafe(addr), logsafe(self.authuser), logsafe(str(err).encode('utf-8', 'replace'))),
                R_OWNERTEMP)
            self.out(R_OWNERTEMP)
            return
        if notyours:
            self.note_abandoned(b'new MAIL before DATA')
            self.seenmail = False
            # (each logged: the errors' limit ends a session that goes on)
            self.log(b'mail <%s> rcpt - auth %s' % (logsafe(addr), logsafe(self.authuser)),
                     R_NOTYOURS)
            self.bad(R_NOTYOURS)
            return
        size = mail_size(rest)
        if self.config.databytes and size is not None and size > self.config.databytes:
            # The client meant a new transaction: an earlier one it left
            # open must not take the recipients that follow.
            self.note_abandoned(b'new MAIL before DATA')
            self.seenmail = False
            self.out(R_SIZE)
            return
        self.note_abandoned(b'new MAIL before DATA')
        self.flagbarf = bmfcheck(addr, self.config.badmailfrom)
        self.seenmail = True
        self.rcptto = []
        self.refused = 0
        self.flagtxlogged = False
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
            self.refused += 1
            self.bad(R_BMF)
            return
        if self.peer.relayclient is not None:
            addr += self.peer.relayclient
        elif self.authuser is None and not addrallowed(
                addr, self.config.rcpthosts, self.config.morercpthosts):
            self.refused += 1
            self.bad(R_NOGATEWAY)
            return
        if self.config.srs is not None and not self.config.srs.recipient_ok(parsed[0]):
            self.refused += 1
            self.bad(R_BADSRS)
            return
        if self.config.rcptmap is not None and \
                self.config.rcptmap.check(parsed[0]) == rcptmap.REJECT:
            # A refusal now instead of a bounce later (no backscatter);
            # counted as an error, which slows down address guessing.
            self.refused += 1
            self.bad(rcptmap.REPLY_REJECT)
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
        qq.put(received(self.peer, self.fakehelo, self.now, self.tls,
                        self.authuser))

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
            reply = b'250 ok %d qp %d\r\n' % (int(self.now), self.qp)
        elif flaghops:
            reply = R_HOPS
        elif self.flagoverflow:
            reply = R_SIZE
        else:
            text = qqx[1:].replace('\r', '').replace('\n', '')
            code = b'554 ' if qqx[0] == 'D' else b'451 '
            reply = code + text.encode('utf-8', 'replace') + b'\r\n'
        self.out(reply)
        self.note(reply)

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

# Every control file load_config() reads (rcptcheck's maps aside).
CONFIG_FILES = ('smtpgreeting', 'me', 'locals', 'srs_domain', 'srs_secrets', 'srs_maxage',
                'srs_hashmin', 'srs_hashlength', 'srs_separator', 'srs_alwaysrewrite',
                'rcpthosts', 'morercpthosts.cdb',
                'badmailfrom', 'databytes', 'localiphost', 'timeoutsmtpd',
                'maxrcptsmtpd', 'maxerrorssmtpd', 'lifetimesmtpd',
                'servercert.pem', 'smtpauthplaintext', 'smtpauthcram',
                'maxauthsmtpd', 'authdelaysmtpd', 'logsmtpd', 'rcptcheck')
# And those the recipient map's routing is read from, with rcptcheck.
ROUTING_FILES = ('locals', 'virtualdomains', 'percenthack', 'envnoathost')
_last_config = None         # (key, Config): a pool worker's previous session


def load_config(ctl: control.Controls, environ) -> Config:
    """setup(): the controls, with DATABYTES from environ over databytes;
    a copy of the session's own to change.

    A pool worker (qmail-listen) serves many sessions: the previous
    session's Config is used again while no control file it came from
    changed (control.stamps) and the recipient map, if rcptcheck is on,
    is the same file with the same sources (RcptMap.fresh); else
    everything is read as at a process start.

    Raises OSError or CdbError (a control is unreadable: 421) and
    LookupError when neither smtpgreeting nor me exists, as qmail
    refuses to run then."""
    global _last_config
    config, _last_config = kept_config(_last_config, ctl, environ, CONFIG_FILES,
                                       read_config)
    config = config.copy()
    if environ.get(b'DATABYTES') is not None:
        # (a session's own, from tcprules: no reason to read again)
        config.databytes = scan_ulong(environ[b'DATABYTES'])
    return config


def kept_config(last, ctl: control.Controls, environ, files: tuple, read):
    """(config, what to keep for the next session): last's config again
    while none of files (rcptcheck last of them: with it ROUTING_FILES
    too) changed and its recipient map is fresh (DATABYTES, a session's
    own, is the caller's to apply); else read(ctl, environ), kept
    unless a file could not be stamped or
    its map or morercpthosts.cdb is broken.  last is (key, config) or
    None; qmail-smtpd's and qmail-qmtpd's load_config."""
    key = control.stamps(ctl.directory, files)
    if key is not None and key[-1] is not None:         # rcptcheck
        routing = control.stamps(ctl.directory, ROUTING_FILES)
        key = None if routing is None else key + routing
    map_stale = False
    if key is not None:
        key = (ctl.directory, key)
        if last is not None and last[0] == key:
            config = last[1]
            if config.rcptmap is None or config.rcptmap.fresh():
                return config, last
            map_stale = True            # (qmail-newrcpt made a new map)
    config = read(ctl, environ)
    if key is not None and (config.rcptmap is None or config.rcptmap.reusable()) and (
            not isinstance(config.morercpthosts, cdb.Unreadable)):
        if last is not None and (map_stale or last[0] != key) and (
                config.rcptmap is None or config.rcptmap.fresh()):
            # Read again, and kept from now on (a map that cannot be
            # trusted yet is read at each session: no reason to retire)
            _changed[0] = True      # retire()
        return config, (key, config)
    # A file changed a moment ago (no key): the last kept stays, to tell
    # the next session's reading that the files changed since.
    return config, (last if key is None else None)


_changed = [False]      # a pool worker's kept Config was read again


def held(last) -> int:
    """The descriptors a kept Config holds open between sessions (a cdb
    over READ_ALL_LIMIT is read in pieces: morercpthosts.cdb of a
    million domains, users/rcpt.cdb of many users), for qmail-listen's
    count of a worker's descriptors."""
    if last is None:
        return 0
    config = last[1]
    return ((config.morercpthosts.descriptors if config.morercpthosts is not None else 0)
            + (config.rcptmap.descriptors if config.rcptmap is not None else 0))


def descriptors() -> int:
    """qmail-listen's question: those qmail-smtpd keeps (held)."""
    return held(_last_config)


def retire() -> bool:
    """After a session in a qmail-listen worker: whether the worker
    should make way for a fresh one because its kept Config had to be
    read again (a control file changed).  What it read is its own; a
    worker forked after the listener read the same (warm) shares it."""
    changed, _changed[0] = _changed[0], False
    return changed


def warm(home=None):
    """In qmail-listen's parent, before it forks workers (prefork's
    before_fork): the Config a session would load now, kept for the
    workers to use as they find it (load_config), in pages they share
    rather than each a parsed copy of its own (rcpthosts and
    badmailfrom of 100,000 lines each: 58 MB a worker)."""
    warm_config(load_config, home)


def warm_config(load, home=None):
    """load(Controls, environ) as a session in a worker would call it:
    from home, as the -u user, with the listener's environment; the
    parent's directory unchanged.  Trouble is left for a session to
    meet and report."""
    try:
        # (O_PATH: a directory the -u user may search but not read)
        here = os.open('.', os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.chdir(auto.QMAIL if home is None else home)
        load(control.Controls('control').init(), os.environb)
    except (OSError, CdbError, LookupError):
        pass
    finally:
        _changed[0] = False     # the parent's reading is no worker's to retire for
        os.fchdir(here)
        os.close(here)


def read_config(ctl: control.Controls, environ) -> Config:
    """The controls as read now (load_config)."""
    greeting = ctl.line('smtpgreeting', flagme=True)
    if greeting is None:
        raise LookupError('no control/smtpgreeting and no control/me')
    rcpthosts = control.readfile(ctl.path('rcpthosts'))
    morercpthosts = None
    if rcpthosts is not None:
        rcpthosts = frozenset(h.lower() for h in rcpthosts)
        try:
            morercpthosts = cdb.open_lookup(ctl.path('morercpthosts.cdb'))
        except FileNotFoundError:
            pass
    badmailfrom = frozenset(a.lower() for a in ctl.lines('badmailfrom'))
    databytes = ctl.int('databytes', 0)     # (DATABYTES: load_config)
    # (FORCEAUTHMAILFROM's domains of system users: qmail-send's locals)
    locals_ = frozenset(h.strip().lower() for h in ctl.lines('locals', flagme=True) if h)
    setting = None
    if ctl.line('srs_domain'):      # (the module only where SRS is set)
        from qmail.lib import srs
        setting = srs.load_ctl(ctl, reverse_only=True)
    return Config(
        locals_=locals_,
        srs=setting,
        greeting=greeting,
        localiphost=ctl.line('localiphost', flagme=True),
        rcpthosts=rcpthosts,
        morercpthosts=morercpthosts,
        badmailfrom=badmailfrom,
        databytes=databytes,
        timeout=max(ctl.seconds('timeoutsmtpd', DEFAULT_TIMEOUT), 1),
        maxrcpt=ctl.int('maxrcptsmtpd', DEFAULT_MAXRCPT),
        maxerrors=ctl.int('maxerrorssmtpd', DEFAULT_MAXERRORS),
        lifetime=ctl.seconds('lifetimesmtpd', DEFAULT_LIFETIME),
        flagtls=ctl.exists('servercert.pem'),
        flagauthplain=ctl.exists('smtpauthplaintext'),
        flagcram=ctl.exists('smtpauthcram'),
        maxauth=ctl.int('maxauthsmtpd', DEFAULT_MAXAUTH),
        authdelay=ctl.seconds('authdelaysmtpd', DEFAULT_AUTHDELAY),
        flaglog=bool(ctl.int('logsmtpd', 1)),
        rcptmap=rcptmap.load('.') if ctl.exists('rcptcheck') else None,
    )


def control_trouble(err) -> bytes:
    """What a control's read error was, for the log line of the 421."""
    if isinstance(err, OSError):
        from qmail.lib.error import error_str
        what = os.fsencode(err.filename) if err.filename else b'control'
        return logsafe(what) + b': ' + error_str(err)
    return str(err).encode('utf-8', 'replace')[:200].translate(_LOGRESULT)


# (variable, Config attribute, the most it may say: a lifetime as
# control/lifetimesmtpd, where 2147483647 is qmail's usual "forever")
LIMITS_ENV = ((b'MAXRCPTSMTPD', 'maxrcpt', None), (b'MAXERRORSSMTPD', 'maxerrors', None),
              (b'LIFETIMESMTPD', 'lifetime', control.SECONDS_MAX))


def env_limits(config: Config, environ):
    """The limits beyond qmail from the environment, over their control
    files, as DATABYTES is (from tcp.smtp for some clients, say; sendmail
    -bs sets all three to 0, no limit)."""
    for name, attr, most in LIMITS_ENV:
        value = environ.get(name)
        if value is not None:
            value = scan_ulong(value)
            setattr(config, attr, value if most is None else min(value, most))


# -- the shell --------------------------------------------------------------

class Gone(Exception):
    """The client cannot be written to (timeout or error)."""


SEND_NOW = _socket.MSG_DONTWAIT | _socket.MSG_NOSIGNAL


def write_all(fd: int, data: bytes, timeout: int, sock=None):
    """Write data, waiting at most timeout seconds for each piece.  With
    sock (a socket object over fd) each piece is first tried without
    waiting, which saves a poll() per reply; only a full socket buffer
    makes it wait."""
    poller = None
    view = memoryview(data)
    while view:
        if sock is not None:
            try:
                view = view[sock.send(view[:WRITESIZE], SEND_NOW):]
                continue
            except BlockingIOError:
                pass
            except OSError as err:
                raise Gone(err.strerror) from err
        if poller is None:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
        if not poller.poll(timeout * 1000):
            raise Gone('write timeout')
        try:
            n = os.write(fd, view[:WRITESIZE])
        except OSError as err:
            raise Gone(err.strerror) from err
        view = view[n:]


def socket_over(fd: int):
    """A socket object over fd (not owning it: detach() before it goes),
    or None where fd is no socket (sendmail -bs: pipes)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        return _socket.socket(fileno=fd)
    except OSError:
        return None


def is_socket(fdin: int, fdout: int) -> bool:
    """Are fdin and fdout one stream socket, as tcpserver gives them?
    (Not the pipes of sendmail -bs: no STARTTLS there.)"""
    try:
        a = os.fstat(fdin)
        b = os.fstat(fdout)
    except OSError:
        return False
    return stat.S_ISSOCK(a.st_mode) and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class FdChannel:
    """The connection in the clear: fdin and fdout with poll() timeouts.
    smtpd_tls.TlsChannel is the same once encrypted."""

    def __init__(self, fdin: int, fdout: int):
        self.fdin = fdin
        self.fdout = fdout
        self.poller = select.poll()
        self.poller.register(fdin, select.POLLIN)
        self.sock = socket_over(fdout)

    def close(self):
        """Let go of the socket object; the descriptors stay open."""
        if self.sock is not None:
            self.sock.detach()
            self.sock = None

    def read(self, wait: float):
        """Up to READSIZE bytes; b'' at the end or on an error; None
        when nothing came for wait seconds."""
        if not self.poller.poll(int(wait * 1000)):
            return None
        try:
            return os.read(self.fdin, READSIZE)
        except OSError:
            return b''

    def write(self, data: bytes, timeout: float):
        write_all(self.fdout, data, timeout, self.sock)


def serve(session: Session, fdin: int = 0, fdout: int = 1,
          certfile: str = CERTFILE, smtps: bool = False) -> int:
    """Run one session over fdin and fdout; return its exit code.

    Each read waits at most timeoutsmtpd seconds, and never past the
    session's deadline (lifetimesmtpd).  certfile is loaded when the
    session asks for STARTTLS, relative to the cwd (HOME).  smtps: the
    TLS handshake comes first, before the greeting (port 465, RFC 8314);
    without a certificate or a handshake, no session (exit 1, the log
    says why)."""
    timeout = session.config.timeout
    channel = FdChannel(fdin, fdout)
    try:
        if smtps:
            return serve_smtps(session, channel, fdin, certfile, timeout)
        return serve_session(session, channel, fdin, certfile, timeout)
    finally:
        channel.close()
        # The session's end: QUIT, the reply the server closed it with
        # (a bare LF, a timeout, too many errors), else the client left.
        session.note_end(b'QUIT' if session.exitcode == 0
                         else session.closereply or b'client gone')
        write_logs(session)


def write_logs(session: Session, fd: int = 2):
    logs = session.take_logs()
    if logs and session.config.flaglog:
        stderr.log(logs, fd)        # (never into the client's stream)


def serve_smtps(session, channel, fdin, certfile, timeout) -> int:
    """serve_session() once the handshake is done (SMTPS)."""
    if not is_socket(fdin, channel.fdout):
        session.abort()
        session.closereply = b'SMTPS: not a network connection'
        return 1
    smtpd_tls, why = tls_module()
    if smtpd_tls is None:
        session.abort()
        session.closereply = b'SMTPS: unable to load ' + why
        return 1
    tls = smtpd_tls.smtps(session, fdin, certfile, read_wait(session, session.clock()))
    if tls is None:
        return 1
    return serve_session(session, tls, fdin, certfile, timeout, tlschannel=tls)


def serve_session(session, channel, fdin, certfile, timeout, tlschannel=None) -> int:
    """tlschannel: the channel, when it is encrypted from the start
    (SMTPS); it is closed at the end, as one STARTTLS made."""
    try:
        channel.write(session.greet(), timeout)
        while not session.flagclosed:
            data = channel.read(read_wait(session, session.clock()))
            if data is None:
                channel.write(session.timeout(time.time()), timeout)
                break
            if not data:
                session.eof()
                break
            fed = session.clock()
            replies = session.feed(data, time.time(), fed)
            write_logs(session)
            while True:
                if session.pause:
                    # From the input, not from the reply: the check's own
                    # time is inside the pause, so how long a 535 takes
                    # does not tell one user's password hash from
                    # another's, nor from an unknown user's.
                    now = session.clock()
                    time.sleep(max(0, min(fed + session.pause - now,
                                          read_wait(session, now))))
                if replies:
                    channel.write(replies, timeout)
                if session.flagstarttls:
                    channel = starttls(session, channel, fdin, certfile)
                    if channel is None:
                        return 1
                    if session.tls is not None:
                        tlschannel = channel
                if not session.held or session.flagclosed:
                    break
                fed = session.clock()
                replies = session.feed(b'', time.time(), fed)
    except Gone:
        session.abort()
        return 1
    finally:
        if tlschannel is not None:
            tlschannel.close()
    return session.exitcode


def tls_module():
    """(qmail.smtpd_tls, None), loaded when TLS is first wanted (ssl costs
    start-up time); (None, why for the log) when a memory limit too
    small for libssl (softlimit -m) keeps it from loading."""
    try:
        from qmail import smtpd_tls
    except (ImportError, MemoryError) as err:
        why = str(err) or type(err).__name__
        return None, b'the ssl module: ' + logsafe(why.encode('utf-8', 'replace'))
    return smtpd_tls, None


def starttls(session, channel, fdin, certfile):
    """smtpd_tls.starttls(): the channel to go on with, None if the
    handshake failed.  Without the ssl module (tls_module) a 454, the
    session goes on in the clear and the log says why."""
    smtpd_tls, why = tls_module()
    if smtpd_tls is None:
        channel.write(session.starttls_refused(why), session.config.timeout)
        return channel
    return smtpd_tls.starttls(session, channel, fdin, certfile,
                              read_wait(session, session.clock()))


def read_wait(session: Session, now: float) -> float:
    """timeoutsmtpd, or less when the lifetime ends sooner (now: on the
    session's clock, session.clock())."""
    wait = session.config.timeout
    if session.deadline is not None:
        wait = max(0, min(wait, session.deadline - now))
    return wait


def say(fd: int, reply: bytes):
    """A last reply before exiting; if the client is gone, so be it."""
    try:
        write_all(fd, reply, DEFAULT_TIMEOUT)
    except Gone:
        pass


SYSTEM_CHECKERS = (b'checkpassword', b'checkpassword-pam')


class MailboxOwner:
    """FORCEAUTHMAILFROM's owner(addr) for system logins: the user whose
    mail a sender address is, found as qmail-send and qmail-lspawn would
    (locals and virtualdomains, then users/cdb, then qmail-getpw's rules,
    run here as qmaild: getpwnam and a stat of the home), lowercased;
    None for another host's address or the alias user's.  Raises OSError
    when that cannot be told now (control/virtualdomains or users/cdb
    unreadable, the passwd database or a home failing: qmail-lspawn would
    defer too).  virtualdomains is read at the first question, by the
    sessions that ask (a mail client's), not by every session."""

    def __init__(self, locals_, home):
        self.locals_, self.home = locals_, home
        self.routing = None

    def __call__(self, addr: bytes):
        from qmail import getpw, send_rules
        from qmail.lib import users
        from qmail.lib.qlx import Qlx, QLX_NOALIAS
        if self.routing is None:
            vdoms = control.Controls(os.path.join(self.home, 'control')).lines('virtualdomains')
            self.routing = send_rules.Routing(self.locals_, vdoms, (), b'')
        channel, routed = send_rules.rewrite(addr, self.routing)
        if channel != 0:
            return None
        local = routed[:routed.rfind(b'@')]
        try:
            n = users.nughde_get(local, users.cdb_path(self.home),
                                 lambda name: getpw.getpw(name, getpw.system_lookup))
        except Qlx as err:
            if err.code == QLX_NOALIAS:
                return None         # (nobody's: not this user's either)
            raise OSError(err.why or str(err)) from None
        user = n.user.lower()
        return None if user == auto.USER_ALIAS.encode() else user


def system_checker(argv) -> bool:
    """Are the AUTH logins system users' (the checkprogram is qmail's or
    DJB's checkpassword, or checkpassword-pam), rather than virtual ones
    (vcheckpassword, vchkpw: whose names need not hold a domain)?"""
    return len(argv) >= 2 and os.path.basename(os.fsencode(argv[1])) in SYSTEM_CHECKERS


def authenticator(argv):
    """The AUTH patch's arguments: hostname checkprogram [args ...]; None
    without a checkprogram, and AUTH is not offered."""
    argv = [os.fsencode(a) for a in argv]
    if len(argv) < 2 or not argv[0] or not argv[1]:
        return None
    return Checkpassword(argv[0], argv[1:])


def queue_starter(program: str, environ, session_of, seen=None):
    """newqueue for the session: qmail-queue, with TCPREMOTEINFO the AUTH
    user's name once there is one (the AUTH patch's way of telling a
    QMAILQUEUE filter), else what tcpserver said.  The name is in the
    environment only while qmail-queue starts: a password checker run
    later (AUTH again after STARTTLS) sees what tcpserver said.  seen: a
    faster read-only view of environ."""
    seen = environ if seen is None else seen
    remoteinfo = seen.get(b'TCPREMOTEINFO')

    def put(info):
        if seen.get(b'TCPREMOTEINFO') != info:
            if info is None:
                environ.pop(b'TCPREMOTEINFO', None)
            else:
                environ[b'TCPREMOTEINFO'] = info

    def started():
        qq = QueueClient(program)
        if qq.open_failed():
            # As qmail's qmail_open failing: 451 before the 354, not a
            # message sent for nothing.
            qq.close()
            raise OSError('qmail_open failed')
        return qq

    def newqueue():
        session = session_of()
        if session.authuser is None:
            put(remoteinfo)
            return started()
        put(session.authuser)
        try:
            return started()
        finally:
            put(remoteinfo)
    return newqueue


IPME_TTL = 10           # seconds a pre-forked worker keeps its list of
_ipme = [0.0, None]     # this host's addresses (qmail reads it per session)


def ipme_now() -> frozenset:
    """This host's addresses, looked up again after IPME_TTL seconds."""
    now = time.monotonic()
    if _ipme[1] is None or now - _ipme[0] > IPME_TTL:
        _ipme[1] = local_ips() | local_ips6()
        _ipme[0] = now
    return _ipme[1]


def main(argv=None, home=None) -> int:
    """qmail-smtpd [hostname checkprogram subprogram ...].  home is for
    tests: qmail-smtpd itself always runs in auto.QMAIL."""
    argv = sys.argv[1:] if argv is None else argv
    home = auto.QMAIL if home is None else home
    environ = os.environb
    # Reads from CPython's own bytes dict where there is one (the same
    # data os.environb changes through putenv): environb's get() costs a
    # KeyError for each variable absent, a dozen per session.
    seen = getattr(environ, '_data', None)
    seen = seen if isinstance(seen, dict) else environ
    session = None
    # SMTPS set (the qmail TLS patch's variable, from the run script of a
    # port 465 service): TLS from the start, so nothing in the clear,
    # not even a 421 (the log says why).
    smtps = seen.get(b'SMTPS') is not None
    try:
        try:
            os.chdir(home)
            config = load_config(control.Controls('control').init(), seen)
        except (OSError, CdbError, LookupError) as err:
            if not smtps:
                say(1, R_CONTROL)
            # The client sees only the 421; the log says which and why.
            stderr.log(b'qmail-smtpd: pid %d from %s: %s: %s\n' % (
                os.getpid(), logsafe(seen.get(b'TCPREMOTEIP') or b'unknown'),
                R_CONTROL.rstrip(b'\r\n'), control_trouble(err)))
            return 1
        try:
            config.ipme = ipme_now()
        except OSError as err:
            if not smtps:
                say(1, R_IPME)
            stderr.log(b'qmail-smtpd: pid %d from %s: %s: %s\n' % (
                os.getpid(), logsafe(seen.get(b'TCPREMOTEIP') or b'unknown'),
                R_IPME.rstrip(b'\r\n'), (err.strerror or 'error').encode()))
            return 1
        config.flagtls = config.flagtls and is_socket(0, 1)
        # REQUIRE_AUTH set (a mail clients' port: RFC 6409 lets it ask
        # for AUTH first), as the AUTH patches name it
        config.flagrequireauth = seen.get(b'REQUIRE_AUTH') is not None
        # FORCEAUTHMAILFROM (the AUTH/TLS patches' name; "1" there, any
        # value but "0" here): an authenticated client sends as itself
        config.flagforcefrom = seen.get(b'FORCEAUTHMAILFROM') not in (None, b'', b'0')
        if not system_checker(argv):
            config.locals_ = frozenset()    # (a virtual login is no system user's)
        elif config.flagforcefrom:
            config.owner = MailboxOwner(config.locals_, home)
        env_limits(config, seen)
        if config.rcptmap is not None and config.rcptmap.warning and config.flaglog:
            stderr.log(b'qmail-smtpd: warning: %s\n'
                       % config.rcptmap.warning.encode('utf-8', 'replace'))
        program = seen.get(b'QMAILQUEUE')
        program = (os.path.join(home, 'bin/qmail-queue') if program is None
                   else os.fsdecode(program))
        if config.lifetime:
            _signal.alarm(config.lifetime + config.timeout + ALARM_SLACK)
        session = Session(config, peer_env(seen),
                          queue_starter(program, environ, lambda: session, seen),
                          time.time(), checker=authenticator(argv),
                          tick=time.monotonic())
        session.pid = os.getpid()
        return serve(session, 0, 1, smtps=smtps)
    except MemoryError:
        if session is not None:
            session.abort()
        if not smtps and (session is None or session.tls is None):  # never in the clear under TLS
            say(1, R_NOMEM)
        try:
            stderr.log(b'qmail-smtpd: pid %d: out of memory\n' % os.getpid())
        except MemoryError:
            pass
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
        stderr.log(('qmail-smtpd: internal error: %s at %s\n'
                    % (type(err).__name__, where)).encode())
        if not smtps and (session is None or session.tls is None):  # never in the clear under TLS
            say(1, R_INTERNAL)
        return 1


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
