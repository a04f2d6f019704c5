"""qmail-smtpd beyond qmail 1.03: STARTTLS, SMTP AUTH, IPv6 clients.

Session tests feed bytes to smtpd.Session with fakes for qmail-queue and
the password checker, and play the shell's part of STARTTLS by hand.
The end-to-end tests run qmail-smtpd in a subprocess on an accepted TCP
socket (fds 0 and 1, as tcpserver gives them), with a certificate made
by openssl, a checkpassword shell script, smtplib and swaks as clients,
and a QMAILQUEUE script saving the message and the envelope.
"""

import base64
import hmac
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from conftest import main_code
from qmail import smtpd, smtpd_auth

NOW = 812090814                 # 26 Sep 1995 04:46:54 -0000
DATE = b'26 Sep 1995 04:46:54 -0000'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GREETING = b'mx.example.org'
TLSINFO = b'TLSv1.3 TLS_AES_256_GCM_SHA384'
USER, PASSWORD = b'alice', b's3cret'
CHALLENGE = b'<4242.812090814.0123456789abcdef@mx.example.org>'
TIMEOUT = 60


def check_log_only(stderr: bytes):
    """stderr holds qmail-smtpd's session log lines and nothing else
    (no traceback, no password)."""
    for line in stderr.splitlines():
        assert line.startswith(b'qmail-smtpd: pid '), stderr
    assert PASSWORD not in stderr


def check(got, want):
    assert got == want, 'got %r\nwant %r' % (got, want)


def replies(data: bytes) -> list:
    assert data == b'' or data.endswith(b'\r\n'), 'got %r' % data
    return data.split(b'\r\n')[:-1] if data else []


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def cram_digest(password: bytes, challenge: bytes) -> bytes:
    return hmac.new(password, challenge, 'md5').hexdigest().encode()


class FakeQueue:
    def __init__(self):
        self.message = bytearray()
        self.envelope = []
        self.flagfail = False
        self.pid = 4242

    def put(self, data):
        self.message += data

    def fail(self):
        self.flagfail = True

    def from_(self, sender):
        self.envelope.append(b'F' + sender)

    def to(self, recipient):
        self.envelope.append(b'T' + recipient)

    def close(self):
        return 'Zqq read error (#4.3.0)' if self.flagfail else ''


class FakeAuth:
    """A checkpassword that knows one user, and the CRAM convention."""

    def __init__(self, result=None):
        self.result = result    # forced answer, else the real comparison
        self.asked = []

    def challenge(self):
        return CHALLENGE

    def check(self, creds):
        self.asked.append((creds.user, creds.secret, creds.response))
        if self.result is not None:
            return self.result
        if creds.user != USER:
            return smtpd_auth.AUTH_BAD
        if creds.response:
            good = hmac.compare_digest(creds.response,
                                       cram_digest(PASSWORD, creds.secret))
        else:
            good = creds.secret == PASSWORD
        return smtpd_auth.AUTH_OK if good else smtpd_auth.AUTH_BAD


class Harness:
    def __init__(self, checker=True, peer=None, tls=None, **config):
        config.setdefault('greeting', GREETING)
        config.setdefault('rcpthosts', frozenset([b'example.org']))
        config.setdefault('authdelay', 0)
        self.checker = FakeAuth() if checker is True else checker
        self.queues = []
        self.session = smtpd.Session(
            smtpd.Config(**config),
            peer or smtpd.Peer(remoteip=b'192.0.2.7', local=b'mx.example.org'),
            self.newqueue, NOW, checker=self.checker)
        if tls is not None:
            self.session.tls_started(tls)

    def newqueue(self):
        q = FakeQueue()
        self.queues.append(q)
        return q

    def feed(self, *chunks):
        """Feed, and play the shell's pause loop (without sleeping)."""
        out = b''
        for chunk in chunks:
            out += self.session.feed(chunk, NOW)
            while self.session.held and not self.session.flagclosed:
                out += self.session.feed(b'', NOW)
        return out

    @property
    def q(self):
        assert len(self.queues) == 1, 'got %d queues' % len(self.queues)
        return self.queues[0]


PLAIN = b64(b'\0' + USER + b'\0' + PASSWORD)
BADPLAIN = b64(b'\0' + USER + b'\0wrong')
SEND = (b'MAIL FROM:<a@b.example>\r\nRCPT TO:<u@elsewhere.example>\r\n'
        b'DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n')
R_RELAY = b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
OK = b'250 ok %d qp 4242' % NOW


# -- EHLO ------------------------------------------------------------------------

@pytest.mark.parametrize('kw,tls,want', [
    (dict(checker=None), None, [b'PIPELINING', b'8BITMIME']),
    (dict(checker=None, flagtls=True), None, [b'PIPELINING', b'8BITMIME', b'STARTTLS']),
    (dict(flagtls=True), None, [b'PIPELINING', b'8BITMIME', b'STARTTLS']),
    (dict(flagtls=True), TLSINFO, [b'PIPELINING', b'8BITMIME', b'AUTH LOGIN PLAIN']),
    (dict(flagtls=True, flagcram=True), TLSINFO,
     [b'PIPELINING', b'8BITMIME', b'AUTH LOGIN PLAIN CRAM-MD5']),
    (dict(flagauthplain=True), None, [b'PIPELINING', b'8BITMIME', b'AUTH LOGIN PLAIN']),
    (dict(flagauthplain=True, flagtls=True, databytes=99), None,
     [b'PIPELINING', b'8BITMIME', b'STARTTLS', b'AUTH LOGIN PLAIN', b'SIZE 99']),
    # RFC 1870's size-param has at most 20 digits: past that, no number
    (dict(databytes=10 ** 20), None, [b'PIPELINING', b'8BITMIME', b'SIZE']),
    (dict(databytes=10 ** 20 - 1), None, [b'PIPELINING', b'8BITMIME', b'SIZE ' + b'9' * 20]),
    (dict(), None, [b'PIPELINING', b'8BITMIME']),   # AUTH only under TLS
])
def test_ehlo_offers(kw, tls, want):
    h = Harness(tls=tls, **kw)
    got = replies(h.feed(b'EHLO client.example\r\n'))
    check(got, [b'250-mx.example.org'] + [b'250-' + w for w in want[:-1]]
          + [b'250 ' + want[-1]])


# -- STARTTLS --------------------------------------------------------------------

def test_starttls_asks_the_shell():
    h = Harness(flagtls=True)
    check(replies(h.feed(b'EHLO x\r\nSTARTTLS\r\n')),
          [b'250-mx.example.org', b'250-PIPELINING', b'250-8BITMIME',
           b'250 STARTTLS'])
    assert h.session.flagstarttls
    check(h.feed(b'NOOP\r\n'), b'')     # nothing is read until it is done
    h.session.tls_started(TLSINFO)
    assert not h.session.flagstarttls
    check(h.feed(b'NOOP\r\n'), b'250 ok\r\n')


def test_starttls_injection_discarded_cve_2011_0411():
    """Commands pipelined after STARTTLS, in the clear, are thrown away."""
    h = Harness(flagtls=True)
    got = h.feed(b'EHLO x\r\nSTARTTLS\r\nMAIL FROM:<evil@x.example>\r\n'
                 b'RCPT TO:<u@example.org>\r\nDATA\r\n')
    check(replies(got)[-1], b'250 STARTTLS')
    check(len(replies(got)), 4)
    check(h.session.linebuf, bytearray())
    h.session.tls_started(TLSINFO)
    check(replies(h.feed(b'RCPT TO:<u@example.org>\r\n')),
          [b'503 MAIL first (#5.5.1)'])
    check(h.queues, [])


def test_starttls_injection_of_a_partial_line():
    h = Harness(flagtls=True)
    h.feed(b'STARTTLS\r\nNO')
    h.session.tls_started(TLSINFO)
    check(replies(h.feed(b'OP\r\n')), [b'502 unimplemented (#5.5.1)'])


def test_starttls_forgets_everything():
    h = Harness(flagtls=True, flagauthplain=True,
                peer=smtpd.Peer(remoteip=b'192.0.2.7', local=b'mx.example.org'))
    got = replies(h.feed(b'HELO pc.example\r\nAUTH PLAIN ' + PLAIN + b'\r\n'
                         b'MAIL FROM:<a@b.example>\r\n'))
    check(got, [b'250 mx.example.org', b'235 ok, go ahead (#2.0.0)', b'250 ok'])
    h.feed(b'STARTTLS\r\n')
    h.session.tls_started(TLSINFO)
    check(replies(h.feed(b'RCPT TO:<u@example.org>\r\n')),
          [b'503 MAIL first (#5.5.1)'])
    check(h.session.authuser, None)
    got = replies(h.feed(b'MAIL FROM:<a@b.example>\r\nRCPT TO:<u@elsewhere.example>\r\n'
                         b'RCPT TO:<u@example.org>\r\nDATA\r\nhi\r\n.\r\n'))
    check(got, [b'250 ok', R_RELAY, b'250 ok', b'354 go ahead', OK])
    check(bytes(h.q.message),
          b'Received: from unknown (192.0.2.7)\n'
          b'  by mx.example.org with ESMTPS (' + TLSINFO + b' encrypted); '
          + DATE + b'\nhi\n')


def test_starttls_logs_the_transaction_it_ends():
    """A MAIL and RCPTs left open by STARTTLS get their line, as those
    RSET ends; they used to vanish from the log, a refused relay
    attempt among them."""
    h = Harness(flagtls=True)
    h.feed(b'EHLO pre.example\r\nMAIL FROM:<s@x.example>\r\n'
           b'RCPT TO:<u@elsewhere.example>\r\nRCPT TO:<u@example.org>\r\nSTARTTLS\r\n')
    h.session.tls_started(TLSINFO)
    h.feed(b'EHLO post.example\r\nQUIT\r\n')
    h.session.note_end(b'QUIT')         # (the serving loop's, at the end)
    logs = b''.join(h.session.logs)
    assert re.search(rb'helo pre.example mail <s@x.example> rcpt u@example.org '
                     rb'refused 1: STARTTLS before DATA\n', logs), logs
    check(logs.count(b'\n'), 1)     # the session has its line: no other


def test_auth_user_is_in_the_environment_only_while_qmail_queue_starts(monkeypatch):
    """TCPREMOTEINFO carries the AUTH user to qmail-queue (the AUTH
    patch's way); it used to stay in qmail-smtpd's environment, so a
    password checker run after STARTTLS saw the earlier user's name."""
    seen = []

    class Spy:
        def __init__(self, program):
            seen.append(os.environ.get('TCPREMOTEINFO'))

        def open_failed(self):
            return False

    monkeypatch.setattr(smtpd, 'QueueClient', Spy)
    monkeypatch.setenv('TCPREMOTEINFO', 'identd-said')
    session = type('S', (), {'authuser': b'alice'})()
    newqueue = smtpd.queue_starter('/bin/true', os.environb, lambda: session)
    newqueue()
    check(seen, ['alice'])
    check(os.environ.get('TCPREMOTEINFO'), 'identd-said')
    session.authuser = None
    newqueue()
    check(seen, ['alice', 'identd-said'])
    monkeypatch.delenv('TCPREMOTEINFO')
    newqueue = smtpd.queue_starter('/bin/true', os.environb, lambda: session)
    session.authuser = b'bob'
    newqueue()
    check((seen[-1], os.environ.get('TCPREMOTEINFO')), ('bob', None))


@pytest.mark.parametrize('kw,tls,line,want', [
    (dict(), None, b'STARTTLS\r\n', b'502 unimplemented (#5.5.1)'),
    (dict(flagtls=True), TLSINFO, b'STARTTLS\r\n', b'503 TLS already active (#5.5.1)'),
    (dict(flagtls=True), None, b'STARTTLS now\r\n',
     b'501 syntax error (no parameters allowed) (#5.5.4)'),
])
def test_starttls_refused(kw, tls, line, want):
    h = Harness(tls=tls, **kw)
    check(replies(h.feed(line + b'NOOP\r\n')), [want, b'250 ok'])
    assert not h.session.flagstarttls


def test_starttls_without_certificate():
    h = Harness(flagtls=True)
    h.feed(b'STARTTLS\r\n')
    check(h.session.starttls_refused(),
          b'454 TLS not available due to temporary reason (#4.3.0)\r\n')
    check(h.feed(b'NOOP\r\n'), b'250 ok\r\n')
    check(h.session.tls, None)


# -- AUTH: the exchanges -----------------------------------------------------------

def authed(h):
    check(h.session.authuser, USER)
    check(h.checker.asked[-1], (USER, PASSWORD, b''))


@pytest.mark.parametrize('exchange,prompts', [
    ([b'AUTH PLAIN ' + PLAIN], []),
    ([b'auth plain ' + PLAIN], []),
    ([b'AUTH PLAIN', PLAIN], [b'334 ']),
    ([b'AUTH PLAIN ' + b64(USER + b'\0' + USER + b'\0' + PASSWORD)], []),
    ([b'AUTH LOGIN', b64(USER), b64(PASSWORD)],
     [b'334 VXNlcm5hbWU6', b'334 UGFzc3dvcmQ6']),
    ([b'AUTH LOGIN ' + b64(USER), b64(PASSWORD)], [b'334 UGFzc3dvcmQ6']),
])
def test_auth_ok(exchange, prompts):
    h = Harness(tls=TLSINFO)
    got = replies(h.feed(b''.join(line + b'\r\n' for line in exchange)))
    check(got, prompts + [b'235 ok, go ahead (#2.0.0)'])
    authed(h)


def test_auth_cram_md5():
    h = Harness(tls=TLSINFO, flagcram=True)
    got = replies(h.feed(b'AUTH CRAM-MD5\r\n'))
    check(got, [b'334 ' + b64(CHALLENGE)])
    answer = b64(USER + b' ' + cram_digest(PASSWORD, CHALLENGE))
    check(replies(h.feed(answer + b'\r\n')), [b'235 ok, go ahead (#2.0.0)'])
    check(h.checker.asked, [(USER, CHALLENGE, cram_digest(PASSWORD, CHALLENGE))])


def test_auth_cram_md5_wrong():
    h = Harness(tls=TLSINFO, flagcram=True)
    h.feed(b'AUTH CRAM-MD5\r\n')
    answer = b64(USER + b' ' + cram_digest(b'wrong', CHALLENGE))
    check(replies(h.feed(answer + b'\r\n')), [b'535 authentication failed (#5.7.8)'])


def test_auth_allows_relaying():
    h = Harness(tls=TLSINFO, peer=smtpd.Peer(remoteip=b'192.0.2.7',
                                            remotehost=b'pc.example',
                                            remoteinfo=b'ident',
                                            local=b'mx.example.org'))
    check(replies(h.feed(b'MAIL FROM:<a@b.example>\r\nRCPT TO:<u@elsewhere.example>\r\n')),
          [b'250 ok', R_RELAY])
    got = replies(h.feed(b'RSET\r\nEHLO pc\r\nAUTH PLAIN ' + PLAIN + b'\r\n' + SEND))
    check(got[-5:], [b'235 ok, go ahead (#2.0.0)', b'250 ok', b'250 ok',
                     b'354 go ahead', OK])
    # Relaying as with RELAYCLIENT='': nothing appended.
    check(h.q.envelope, [b'Fa@b.example', b'Tu@elsewhere.example'])
    check(bytes(h.q.message),
          b'Received: from pc.example (HELO pc) (alice@192.0.2.7)\n'
          b'  by mx.example.org with ESMTPSA (' + TLSINFO + b' encrypted); '
          + DATE + b'\nSubject: x\n\nhi\n')


def test_auth_without_tls_allowed_by_control():
    h = Harness(flagauthplain=True)
    got = replies(h.feed(b'AUTH PLAIN ' + PLAIN + b'\r\n' + SEND))
    check(got[-1], OK)
    assert h.q.message.startswith(b'Received: from unknown (alice@192.0.2.7)\n'
                                  b'  by mx.example.org with ESMTPA; ')


def test_relayclient_still_appends_after_auth():
    h = Harness(tls=TLSINFO, peer=smtpd.Peer(relayclient=b'@relay.example'))
    h.feed(b'AUTH PLAIN ' + PLAIN + b'\r\n' + SEND)
    check(h.q.envelope, [b'Fa@b.example', b'Tu@elsewhere.example@relay.example'])


# -- AUTH: refusals ------------------------------------------------------------------

@pytest.mark.parametrize('kw,tls,data,want', [
    (dict(checker=None), TLSINFO, b'AUTH PLAIN ' + PLAIN, b'502 unimplemented (#5.5.1)'),
    (dict(flagtls=True), None, b'AUTH PLAIN ' + PLAIN,
     b'538 encryption required for requested authentication mechanism (#5.7.11)'),
    (dict(), None, b'AUTH LOGIN',
     b'538 encryption required for requested authentication mechanism (#5.7.11)'),
    (dict(), TLSINFO, b'AUTH DIGEST-MD5', b'504 auth type unimplemented (#5.5.4)'),
    (dict(), TLSINFO, b'AUTH CRAM-MD5', b'504 auth type unimplemented (#5.5.4)'),
    (dict(), TLSINFO, b'AUTH', b'501 malformed auth input (#5.5.4)'),
    (dict(), TLSINFO, b'AUTH PLAIN a b', b'501 malformed auth input (#5.5.4)'),
    (dict(), TLSINFO, b'MAIL FROM:<a@b>\r\nAUTH PLAIN ' + PLAIN,
     b'503 no auth during mail transaction (#5.5.1)'),
    (dict(), TLSINFO, b'AUTH PLAIN ' + PLAIN + b'\r\nAUTH PLAIN ' + PLAIN,
     b"503 you're already authenticated (#5.5.1)"),
])
def test_auth_refused(kw, tls, data, want):
    """Refusals count as errors (maxerrorssmtpd), not as failed AUTHs."""
    h = Harness(tls=tls, **kw)
    got = replies(h.feed(data + b'\r\nNOOP\r\n'))
    check(got[-2:], [want, b'250 ok'])
    check(h.session.errors, 1)
    if h.session.auth is not None:
        check(h.session.auth.failures, 0)


@pytest.mark.parametrize('exchange,want', [
    ([b'AUTH PLAIN !!!!'], b'501 malformed auth input (#5.5.4)'),
    ([b'AUTH PLAIN ' + PLAIN[:-1]], b'501 malformed auth input (#5.5.4)'),
    ([b'AUTH PLAIN', b'AG Fs'], b'501 malformed auth input (#5.5.4)'),
    ([b'AUTH PLAIN', b''], b'501 malformed auth input (#5.5.4)'),
    ([b'AUTH PLAIN ='], b'501 malformed auth input (#5.5.4)'),
    ([b'AUTH PLAIN ' + b64(USER + b'\0' + PASSWORD)], b'501 malformed auth input (#5.5.4)'),
    ([b'AUTH PLAIN ' + b64(b'\0\0' + PASSWORD)], b'501 malformed auth input (#5.5.4)'),
    ([b'AUTH PLAIN ' + b64(b'\0' + USER + b'\0')], b'501 malformed auth input (#5.5.4)'),
    ([b'AUTH PLAIN ' + b64(b'\0' + USER + b'\0a\0b')], b'501 malformed auth input (#5.5.4)'),
    ([b'AUTH LOGIN', b'*'], b'501 auth exchange cancelled (#5.0.0)'),
    ([b'AUTH PLAIN', b'*'], b'501 auth exchange cancelled (#5.0.0)'),
    ([b'AUTH LOGIN', b64(USER + b'\0x')], b'501 malformed auth input (#5.5.4)'),
    ([b'AUTH LOGIN', b64(USER), b''], b'501 malformed auth input (#5.5.4)'),
    ([b'AUTH LOGIN', b'%%%'], b'501 malformed auth input (#5.5.4)'),
])
def test_auth_malformed(exchange, want):
    h = Harness(tls=TLSINFO, flagcram=True)
    got = replies(h.feed(b''.join(line + b'\r\n' for line in exchange) + b'NOOP\r\n'))
    check(got[-2:], [want, b'250 ok'])
    check(h.checker.asked, [])
    check(h.session.auth.failures, 1)


@pytest.mark.parametrize('line', [
    b'!!', b'abc', b'=',
    b64(USER + b' ' + b'x' * 32),               # not hex
    b64(USER + b' ' + b'a' * 31),               # too short
    b64(USER + b' 0x' + b'a' * 30),             # int(x, 16) would take it
    b64(USER + b' ' + b'a_' * 16),
    b64(USER + b' ' + b'a' * 30 + b'\0a'),
    b64(USER + cram_digest(PASSWORD, CHALLENGE)),   # no space
    b64(b' ' + cram_digest(PASSWORD, CHALLENGE)),   # no user
])
def test_auth_cram_malformed(line):
    h = Harness(tls=TLSINFO, flagcram=True)
    h.feed(b'AUTH CRAM-MD5\r\n')
    check(replies(h.feed(line + b'\r\n')), [b'501 malformed auth input (#5.5.4)'])
    check(h.checker.asked, [])


def test_auth_cram_takes_no_initial_response():
    h = Harness(tls=TLSINFO, flagcram=True)
    check(replies(h.feed(b'AUTH CRAM-MD5 ' + b64(b'x') + b'\r\n')),
          [b'501 malformed auth input (#5.5.4)'])


def test_auth_authzid_other_than_user():
    h = Harness(tls=TLSINFO)
    got = replies(h.feed(b'AUTH PLAIN ' + b64(b'bob\0' + USER + b'\0' + PASSWORD)
                         + b'\r\n'))
    check(got, [b'535 authentication failed (#5.7.8)'])
    check(h.checker.asked, [])


def test_auth_wrong_password_pauses():
    """The 535 waits authdelay seconds, and so does what follows it."""
    h = Harness(tls=TLSINFO, authdelay=2)
    s = h.session
    got = s.feed(b'NOOP\r\nAUTH PLAIN ' + BADPLAIN + b'\r\nMAIL FROM:<a@b>\r\n'
                 b'RCPT TO:<u@elsewhere.example>\r\n', NOW)
    check(replies(got), [b'250 ok', b'535 authentication failed (#5.7.8)'])
    check(s.pause, 2)
    check(s.held, b'MAIL FROM:<a@b>\r\nRCPT TO:<u@elsewhere.example>\r\n')
    got = s.feed(b'', NOW + 2)
    check(replies(got), [b'250 ok', R_RELAY])
    check((s.pause, s.held), (0, b''))


def test_auth_pause_holds_a_pipelined_retry():
    h = Harness(tls=TLSINFO, authdelay=1, maxauth=0)
    s = h.session
    data = b'AUTH PLAIN ' + BADPLAIN + b'\r\n'
    got = s.feed(data * 3, NOW)
    check(replies(got), [b'535 authentication failed (#5.7.8)'])
    check(len(h.checker.asked), 1)
    check(s.held, data * 2)
    check(replies(s.feed(b'', NOW)), [b'535 authentication failed (#5.7.8)'])
    check(len(h.checker.asked), 2)


def test_auth_temporary_trouble_waits_as_a_refusal_does():
    """A 454 takes authdelay as a 535 does: at once, it would tell a
    right password (whose user could not be set up) from a wrong one."""
    h = Harness(checker=FakeAuth(smtpd_auth.AUTH_TEMP), tls=TLSINFO, authdelay=5)
    got = replies(h.session.feed(b'AUTH PLAIN ' + PLAIN + b'\r\nNOOP\r\n', NOW))
    check(got, [b'454 temporary authentication failure (#4.7.0)'])
    check(h.session.pause, 5)
    check(replies(h.session.feed(b'', NOW)), [b'250 ok'])
    check(h.session.authuser, None)


def test_auth_failures_limited():
    h = Harness(tls=TLSINFO, maxauth=3)
    got = replies(h.feed(b'AUTH PLAIN ' + BADPLAIN + b'\r\n'
                         b'AUTH LOGIN\r\n*\r\n'
                         b'AUTH PLAIN !\r\n'
                         b'AUTH PLAIN ' + PLAIN + b'\r\nNOOP\r\n'))
    check(got, [b'535 authentication failed (#5.7.8)',
                b'334 VXNlcm5hbWU6', b'501 auth exchange cancelled (#5.0.0)',
                b'501 malformed auth input (#5.5.4)',
                b'421 too many authentication failures (#4.7.0)'])
    assert h.session.flagclosed
    check(len(h.checker.asked), 1)


def test_auth_never_echoes_the_password():
    h = Harness(tls=TLSINFO, flagcram=True, maxauth=0)
    secrets = [PASSWORD, b64(PASSWORD), b'wrong', b64(b'wrong')]
    data = (b'AUTH LOGIN\r\n' + b64(USER) + b'\r\n' + b64(b'wrong') + b'\r\n'
            b'AUTH PLAIN ' + BADPLAIN + b'\r\n'
            b'AUTH LOGIN ' + b64(USER) + b'\r\n' + b64(PASSWORD) + b'\r\n')
    got = h.feed(data)
    for secret in secrets:
        assert secret not in got, secret
    assert PASSWORD not in repr(smtpd_auth.Credentials(USER, PASSWORD)).encode()


def test_auth_refusals_are_logged_with_the_user_never_the_password():
    """Each refusal by the checker is a log line naming the client and
    the user tried: guessing shows (it left no trace at all)."""
    h = Harness(tls=TLSINFO, maxauth=0)
    h.feed(b'EHLO c.example\r\nAUTH PLAIN ' + BADPLAIN + b'\r\n'
           b'AUTH LOGIN ' + b64(b'mallory') + b'\r\n' + b64(b'guess') + b'\r\n')
    logs = b''.join(h.session.logs)
    check(logs.count(b' refused: 535'), 2)
    assert b'from 192.0.2.7 helo c.example auth ' + USER + b' refused: 535' in logs, logs
    assert b'auth mallory refused' in logs, logs
    for secret in (b'wrong', b'guess', b64(b'guess')):
        assert secret not in logs
    h = Harness(checker=FakeAuth(smtpd_auth.AUTH_TEMP), tls=TLSINFO)
    h.feed(b'AUTH PLAIN ' + PLAIN + b'\r\n')
    assert b'auth ' + USER + b' refused: 454' in b''.join(h.session.logs)


def test_sasl_line_limit():
    """RFC 4954 4: SASL lines of 12288 bytes; commands stay at 1000."""
    h = Harness(tls=TLSINFO)
    h.feed(b'AUTH PLAIN\r\n')
    long_ok = b64(b'\0' + USER + b'\0' + b'p' * 9000)
    assert len(long_ok) + 2 <= smtpd_auth.MAXAUTHLINE
    check(replies(h.feed(long_ok + b'\r\n')), [b'535 authentication failed (#5.7.8)'])
    check(h.checker.asked[-1][1], b'p' * 9000)
    h.feed(b'AUTH PLAIN\r\n')
    check(replies(h.feed(b'A' * 13000 + b'\r\nNOOP\r\n')),
          [b'500 auth exchange line too long (#5.5.6)', b'250 ok'])
    check(replies(h.feed(b'NOOP' + b' ' * 2000 + b'\r\n')),
          [b'500 line too long (#5.5.2)'])


def test_auth_split_anywhere():
    data = (b'EHLO x\r\nAUTH LOGIN\r\n' + b64(USER) + b'\r\n' + b64(PASSWORD)
            + b'\r\n' + SEND + b'QUIT\r\n')
    whole = Harness(tls=TLSINFO)
    want = whole.feed(data)
    for size in (1, 3, 7):
        h = Harness(tls=TLSINFO)
        got = h.feed(*[data[i:i + size] for i in range(0, len(data), size)])
        check(got, want)
        check(h.q.envelope, whole.q.envelope)


def test_auth_noise_never_raises():
    import random
    rnd = random.Random(4954)
    for _ in range(200):
        h = Harness(tls=TLSINFO, flagcram=True, maxerrors=0, maxauth=0)
        noise = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 500)))
        mech = rnd.choice([b'PLAIN', b'LOGIN', b'CRAM-MD5'])
        out = h.feed(b'AUTH ' + mech + b'\r\n' + noise + b'\r\n' + noise)
        assert out == b'' or out.endswith(b'\r\n')


# -- the Received line -----------------------------------------------------------

@pytest.mark.parametrize('peer,tls,user,want', [
    (dict(remoteip=b'::1', local=b'::1'), None, None,
     b'Received: from unknown (::1)\n  by ::1 with SMTP; '),
    (dict(remoteip=b'2001:db8::7', remoteinfo=b'id'), None, None,
     b'Received: from unknown (id@2001:db8::7)\n  by mx.example with SMTP; '),
    (dict(), TLSINFO, None,
     b'Received: from unknown (192.0.2.7)\n'
     b'  by mx.example with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384 encrypted); '),
    (dict(remoteinfo=b'id'), None, b'alice',
     b'Received: from unknown (alice@192.0.2.7)\n  by mx.example with ESMTPA; '),
    (dict(remoteip=b'::1'), b'TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384', b'a b@c(d)',
     b'Received: from unknown (a?b@c?d?@::1)\n'
     b'  by mx.example with ESMTPSA (TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384 encrypted); '),
    (dict(), b'TLS;v1\n(x)', None,
     b'Received: from unknown (192.0.2.7)\n'
     b'  by mx.example with ESMTPS (TLS?v1??x? encrypted); '),
])
def test_received(peer, tls, user, want):
    peer.setdefault('remoteip', b'192.0.2.7')
    peer.setdefault('local', b'mx.example')
    got = smtpd.received(smtpd.Peer(**peer), None, NOW, tls, user)
    check(got, want + DATE + b'\n')


# -- IPv6 ------------------------------------------------------------------------

IPME = frozenset([b'\0\0\0\0', b'\x7f\0\0\x01', socket.inet_pton(socket.AF_INET6, '::1'),
                  socket.inet_pton(socket.AF_INET6, '2001:db8::1')])


@pytest.mark.parametrize('addr,liphost,want', [
    (b'u@[IPv6:::1]', b'me.example', b'u@me.example'),
    (b'u@[ipv6:2001:DB8::1]', b'me.example', b'u@me.example'),
    (b'u@[IPv6:2001:db8:0:0:0:0:0:1]', b'me.example', b'u@me.example'),
    (b'u@[IPv6:::ffff:127.0.0.1]', b'me.example', b'u@me.example'),
    (b'u@[IPv6:2001:db8::2]', b'me.example', b'u@[IPv6:2001:db8::2]'),
    (b'u@[IPv6:::1]', None, b'u@[IPv6:::1]'),
    (b'u@[IPv6:::1', b'me.example', b'u@[IPv6:::1'),
    (b'u@[IPv6:::1%lo]', b'me.example', b'u@[IPv6:::1%lo]'),
    (b'u@[IPv6:1::2::3]', b'me.example', b'u@[IPv6:1::2::3]'),
    (b'u@[IPv6:\xff]', b'me.example', b'u@[IPv6:\xff]'),
    (b'u@[::1]', b'me.example', b'u@[::1]'),
    (b'u@[IPv6:]', b'me.example', b'u@[IPv6:]'),
])
def test_localiphost6(addr, liphost, want):
    check(smtpd.localiphost6(addr, liphost, IPME), want)


def test_localiphost6_in_rcpt():
    h = Harness(checker=None, localiphost=b'example.org', ipme=IPME)
    got = replies(h.feed(b'MAIL FROM:<a@[IPv6:::1]>\r\nRCPT TO:<u@[IPv6:::1]>\r\n'
                         b'RCPT TO:<u@[IPv6:2001:db8::9]>\r\n'))
    check(got, [b'250 ok', b'250 ok', R_RELAY])
    check(h.session.mailfrom, b'a@example.org')
    check(h.session.rcptto, [b'u@example.org'])


def test_parse_if_inet6():
    data = (b'00000000000000000000000000000001 01 80 10 80       lo\n'
            b'fd000000000000000000000000000002 04 40 00 82     eth0\n'
            b'garbage\n\n')
    check(smtpd.parse_if_inet6(data),
          frozenset([socket.inet_pton(socket.AF_INET6, '::1'),
                     socket.inet_pton(socket.AF_INET6, 'fd00::2')]))


def test_local_ips6():
    ips = smtpd.local_ips6()
    assert all(len(ip) == 16 for ip in ips)
    # [IPv6:::] is this host, as [0.0.0.0] is (and qmail-remote counts it)
    assert bytes(16) in ips


@pytest.mark.parametrize('env,want', [
    ({b'TCPREMOTEIP': b'::1', b'TCPLOCALIP': b'::1'}, (b'::1', b'::1')),
    ({b'TCPREMOTEIP': b'2001:db8::7', b'TCPLOCALIP': b'2001:db8::1',
      b'TCPLOCALHOST': b'mx.example'}, (b'2001:db8::7', b'mx.example')),
])
def test_peer_env_ipv6(env, want):
    p = smtpd.peer_env(env)
    check((p.remoteip, p.local), want)


# -- configuration -----------------------------------------------------------------

@pytest.mark.parametrize('files,attr,want', [
    ({}, 'flagtls', False),
    ({'servercert.pem': b'x'}, 'flagtls', True),
    ({}, 'flagauthplain', False),
    ({'smtpauthplaintext': b''}, 'flagauthplain', True),
    ({}, 'flagcram', False),
    ({'smtpauthcram': b''}, 'flagcram', True),
    ({}, 'maxauth', 3),
    ({'maxauthsmtpd': b'10\n'}, 'maxauth', 10),
    ({}, 'authdelay', 2),
    ({'authdelaysmtpd': b'0\n'}, 'authdelay', 0),
])
def test_load_config(tmp_path, files, attr, want):
    from qmail.lib import control
    ctl = tmp_path / 'control'
    ctl.mkdir()
    (ctl / 'me').write_bytes(b'me.example\n')
    for name, data in files.items():
        (ctl / name).write_bytes(data)
    config = smtpd.load_config(control.Controls(str(ctl)), {})
    check(getattr(config, attr), want)


@pytest.mark.parametrize('argv,want', [
    ([], None),
    (['mx.example.org'], None),
    (['mx.example.org', ''], None),
    (['mx.example.org', '/bin/checkpassword', '/bin/true'],
     (b'mx.example.org', [b'/bin/checkpassword', b'/bin/true'])),
])
def test_authenticator_arguments(argv, want):
    auth = smtpd.authenticator(argv)
    check(auth if auth is None else (auth.hostname, auth.argv), want)


# -- the mechanisms and checkpassword, alone ----------------------------------------

@pytest.mark.parametrize('line,want', [
    (b'', b''), (b'=', b''), (b'YQ==', b'a'), (b'AGEAYg==', b'\0a\0b'),
])
def test_b64decode(line, want):
    check(smtpd_auth.b64decode(line), want)


@pytest.mark.parametrize('line', [b'YQ', b'Y Q==', b'YQ==\t', b'==YQ', b'YQ==YQ==', b'\xff'])
def test_b64decode_strict(line):
    with pytest.raises(smtpd_auth.Malformed):
        smtpd_auth.b64decode(line)


@pytest.mark.parametrize('wstat,want', [
    (0, smtpd_auth.AUTH_OK),
    (1 << 8, smtpd_auth.AUTH_BAD),
    (2 << 8, smtpd_auth.AUTH_BAD),
    (111 << 8, smtpd_auth.AUTH_TEMP),
    (9, smtpd_auth.AUTH_TEMP),          # killed
])
def test_exit_result(wstat, want):
    check(smtpd_auth.exit_result(wstat), want)


CHECKPASSWORD = """#!/bin/sh
# Accepts alice/s3cret; logs what it saw on fd 3, one field a line.
tr '\\000' '\\n' <&3 > "{log}"
[ "$(sed -n 1p "{log}")" = alice ] || exit 1
[ "$(sed -n 2p "{log}")" = s3cret ] || exit 1
exec "$@"
"""


@pytest.fixture
def checkpassword(tmp_path):
    path = tmp_path / 'checkpassword'
    log = tmp_path / 'checkpassword.log'
    path.write_text(CHECKPASSWORD.format(log=log))
    path.chmod(0o755)
    return str(path), log


@pytest.mark.parametrize('user,password,argv,want', [
    (USER, PASSWORD, ['/bin/true'], smtpd_auth.AUTH_OK),
    (USER, b'wrong', ['/bin/true'], smtpd_auth.AUTH_BAD),
    (b'bob', PASSWORD, ['/bin/true'], smtpd_auth.AUTH_BAD),
    (USER, PASSWORD, ['/bin/false'], smtpd_auth.AUTH_BAD),
    (USER, PASSWORD, ['sh', '-c', 'exit 111'], smtpd_auth.AUTH_TEMP),
    (USER, PASSWORD, ['sh', '-c', 'kill -9 $$'], smtpd_auth.AUTH_TEMP),
    # fd 0 and fd 1 are /dev/null, not the client's connection.
    (USER, PASSWORD, ['sh', '-c', 'test -c /dev/stdin && test -c /dev/stdout'],
     smtpd_auth.AUTH_OK),
])
def test_checkpassword_program(checkpassword, user, password, argv, want):
    prog, log = checkpassword
    auth = smtpd_auth.Checkpassword(b'mx.example.org', [prog] + argv)
    check(auth.check(smtpd_auth.Credentials(user, password)), want)
    check(log.read_bytes(), user + b'\n' + password + b'\n\n')


def test_checkpassword_fd3_when_pipe_would_be_fd3():
    """With fd 3 free, the pipe's read end is fd 3: dup2(3, 3) would
    leave it close-on-exec and the checker would read nothing."""
    code = ('import os, sys; from qmail import smtpd_auth\n'
            'for fd in range(3, 64):\n'
            '    try: os.close(fd)\n'
            '    except OSError: pass\n'
            'a = smtpd_auth.Checkpassword(b"h", sys.argv[1:])\n'
            'c = smtpd_auth.Credentials(b"alice", b"s3cret")\n'
            'sys.exit(a.check(c))\n')
    r = subprocess.run([sys.executable, '-c', code, 'sh', '-c',
                        'tr "\\000" "\\n" <&3 | grep -qx s3cret'],
                       env={'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT},
                       timeout=TIMEOUT, close_fds=True)
    check(r.returncode, smtpd_auth.AUTH_OK)


def test_checkpassword_missing_program():
    auth = smtpd_auth.Checkpassword(b'h', ['/nonexistent/checkpassword', '/bin/true'])
    check(auth.check(smtpd_auth.Credentials(USER, PASSWORD)), smtpd_auth.AUTH_TEMP)


def test_checkpassword_timeout():
    auth = smtpd_auth.Checkpassword(b'h', ['sleep', '30'], timeout=0.5)
    start = time.monotonic()
    check(auth.check(smtpd_auth.Credentials(USER, PASSWORD)), smtpd_auth.AUTH_TEMP)
    assert time.monotonic() - start < 20


def test_checkpassword_not_reading():
    """A checker that never reads fd 3 is judged by its exit code."""
    auth = smtpd_auth.Checkpassword(b'h', ['true'])
    big = smtpd_auth.Credentials(USER, b'p' * 200000)
    check(auth.check(big), smtpd_auth.AUTH_OK)


def test_cram_challenge_form():
    auth = smtpd_auth.Checkpassword(b'mx.example.org', ['true'])
    a, b = auth.challenge(), auth.challenge()
    assert re.fullmatch(rb'<\d+\.\d+\.[0-9a-f]{16}@mx\.example\.org>', a), a
    assert a != b


# -- the real program on a TCP socket -----------------------------------------------

FAKEQ = """#!/bin/sh
printf '%s' "${{TCPREMOTEINFO-unset}}" > "{d}/remoteinfo"
cat > "{d}/message"
cat 0<&1 1>"{d}/envelope"
exit 0
"""

CRAMCHECK = """#!{python}
import hmac, os, sys
data = os.read(3, 65536).split(b'\\0')
user, secret, response = data[0], data[1], data[2]
if user != b'alice':
    sys.exit(1)
if response:
    good = hmac.compare_digest(response,
                               hmac.new(b's3cret', secret, 'md5').hexdigest().encode())
else:
    good = secret == b's3cret'
if not good:
    sys.exit(1)
os.execvp(sys.argv[1], sys.argv[1:])
"""


@pytest.fixture(scope='session')
def certificate(tmp_path_factory):
    """servercert.pem: a self-signed certificate and its key."""
    if shutil.which('openssl') is None:
        pytest.skip('no openssl command')
    d = tmp_path_factory.mktemp('cert')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
                    '-keyout', str(d / 'k'), '-out', str(d / 'c'),
                    '-subj', '/CN=localhost', '-days', '1'],
                   check=True, capture_output=True, timeout=TIMEOUT)
    pem = d / 'servercert.pem'
    pem.write_bytes((d / 'c').read_bytes() + (d / 'k').read_bytes())
    return pem, d / 'c'


@pytest.fixture
def home(tmp_path, certificate, checkpassword):
    h = tmp_path / 'home'
    (h / 'control').mkdir(parents=True)
    (h / 'control' / 'me').write_bytes(b'mx.example.org\n')
    (h / 'control' / 'rcpthosts').write_bytes(b'example.org\n')
    (h / 'control' / 'authdelaysmtpd').write_bytes(b'0\n')
    (h / 'control' / 'servercert.pem').write_bytes(certificate[0].read_bytes())
    out = tmp_path / 'out'
    out.mkdir()
    fakeq = tmp_path / 'fakeq'
    fakeq.write_text(FAKEQ.format(d=out))
    fakeq.chmod(0o755)
    return Home(h, fakeq, out, checkpassword[0], certificate[1])


def test_server_context(certificate):
    from qmail import smtpd_tls
    ctx = smtpd_tls.server_context(str(certificate[0]))
    check(ctx.minimum_version, ssl.TLSVersion.TLSv1_2)
    want = ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    check(ctx.options & want, want)
    check(ctx.verify_mode, ssl.CERT_NONE)       # no client certificates


@pytest.mark.parametrize('pem', [b'', b'not a certificate\n'])
def test_server_context_refuses(tmp_path, pem):
    from qmail import smtpd_tls
    (tmp_path / 'servercert.pem').write_bytes(pem)
    with pytest.raises(OSError):
        smtpd_tls.server_context(str(tmp_path / 'servercert.pem'))
    with pytest.raises(OSError):
        smtpd_tls.server_context(str(tmp_path / 'missing.pem'))


def test_server_context_refuses_a_fifo_without_waiting(tmp_path):
    """OpenSSL opens the file itself, blocking: a FIFO put in
    servercert.pem's place hung every STARTTLS and STLS for good."""
    import threading
    from qmail import smtpd_tls
    fifo = str(tmp_path / 'servercert.pem')
    os.mkfifo(fifo)
    got = []

    def load():
        try:
            smtpd_tls.server_context(fifo)
        except OSError as e:
            got.append(e)
    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():                    # let it go: a writer comes and goes
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail('server_context waited on a FIFO')
    assert got and 'not a regular file' in str(got[0]), got


def test_server_context_ciphers(tmp_path, certificate):
    """As the TLS patch: TLSCIPHERS, else control/tlsserverciphers (its
    lines joined by ":"), else OpenSSL's own list."""
    from qmail import smtpd_tls
    cert = str(certificate[0])
    cipherfile = tmp_path / 'tlsserverciphers'

    def names(environ=None):
        ctx = smtpd_tls.server_context(cert, environ or {}, str(cipherfile))
        return {c['name'] for c in ctx.get_ciphers() if c['protocol'] != 'TLSv1.3'}
    default = names()
    assert 'ECDHE-RSA-AES128-GCM-SHA256' in default and len(default) > 2, default
    cipherfile.write_bytes(b'ECDHE-RSA-AES128-GCM-SHA256\n\nECDHE-RSA-AES256-GCM-SHA384\n')
    check(names(), {'ECDHE-RSA-AES128-GCM-SHA256', 'ECDHE-RSA-AES256-GCM-SHA384'})
    check(names({b'TLSCIPHERS': b'ECDHE-RSA-CHACHA20-POLY1305'}), {'ECDHE-RSA-CHACHA20-POLY1305'})
    check(names({b'TLSCIPHERS': b''}), {'ECDHE-RSA-AES128-GCM-SHA256',
                                        'ECDHE-RSA-AES256-GCM-SHA384'})
    cipherfile.write_bytes(b'NO-SUCH-CIPHER\n')
    with pytest.raises(smtpd_tls.CipherTrouble) as got:
        names()
    check(smtpd_tls.cert_trouble(got.value),
          str(cipherfile).encode() + b': no cipher can be selected')
    cipherfile.unlink()
    cipherfile.mkdir()                  # unreadable as a file
    with pytest.raises(smtpd_tls.CipherTrouble) as got:
        names()
    assert smtpd_tls.cert_trouble(got.value).startswith(str(cipherfile).encode() + b': '), got


class Home:
    def __init__(self, path, fakeq, out, checkpassword, cafile):
        self.path = path
        self.fakeq = fakeq
        self.out = out
        self.checkpassword = checkpassword
        self.cafile = cafile
        self.argv = ['mx.example.org', checkpassword, '/bin/true']

    def control(self, name, data=b''):
        (self.path / 'control' / name).write_bytes(data)

    def message(self):
        return (self.out / 'message').read_bytes()

    def envelope(self):
        return (self.out / 'envelope').read_bytes()


class Server:
    """Accepts one connection on 127.0.0.1 or ::1 and runs qmail-smtpd
    on it, fds 0 and 1 the accepted socket, as tcpserver would."""

    def __init__(self, home, host='127.0.0.1', argv=None, env=None, prelude=''):
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)
        self.host = host
        self.port = self.listener.getsockname()[1]
        self.home = home
        self.argv = home.argv if argv is None else argv
        self.env = env or {}
        self.prelude = prelude      # python run before qmail-smtpd's main
        self.returncode = None
        self.stderr = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            conn, peer = self.listener.accept()
        except OSError:
            return
        env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT,
               'QMAILQUEUE': str(self.home.fakeq), 'TCPREMOTEIP': peer[0],
               'TCPLOCALIP': self.host, 'TCPLOCALHOST': 'mx.example.org'}
        env.update(self.env)
        code = self.prelude + main_code('smtpd', self.home.path, repr(self.argv))
        with conn:
            proc = subprocess.Popen([sys.executable, '-c', code], stdin=conn,
                                    stdout=conn, stderr=subprocess.PIPE, env=env)
        try:
            self.stderr = proc.communicate(timeout=TIMEOUT)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            self.stderr = proc.communicate()[1]
        self.returncode = proc.returncode

    def wait(self):
        self.thread.join(TIMEOUT)
        self.listener.close()
        assert not self.thread.is_alive(), 'qmail-smtpd did not finish'
        check_log_only(self.stderr)     # never a traceback
        return self.returncode


def client_context(cafile):
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False          # the certificate says localhost
    return ctx


def connect(server):
    return smtplib.SMTP(server.host, server.port, timeout=TIMEOUT)


def login(smtp, mech, user='alice', password='s3cret'):
    smtp.user, smtp.password = user, password
    return smtp.auth(mech, getattr(smtp, 'auth_' + mech.lower().replace('-', '_')))


def ehlo_keywords(smtp):
    code, text = smtp.ehlo('client.example')
    check(code, 250)
    return [line.split(b' ')[0] for line in text.split(b'\n')[1:]]


def check_received(message, who, protocol, by=b'mx.example.org'):
    first = message.split(b'\n  by ', 1)
    check(first[0], b'Received: from unknown (HELO client.example) (' + who + b')')
    assert first[1].startswith(by + b' with ' + protocol), first[1]
    return first[1]


@pytest.mark.parametrize('mech', ['PLAIN', 'LOGIN'])
def test_program_starttls_and_auth(home, mech):
    server = Server(home)
    with connect(server) as smtp:
        check(ehlo_keywords(smtp), [b'PIPELINING', b'8BITMIME', b'STARTTLS'])
        # Before STARTTLS: no AUTH, and no relaying.
        check(smtp.docmd('AUTH', 'PLAIN'),
              (538, b'encryption required for requested authentication'
                    b' mechanism (#5.7.11)'))
        smtp.mail('a@b.example')
        check(smtp.rcpt('u@elsewhere.example')[0], 553)
        smtp.rset()
        check(smtp.starttls(context=client_context(home.cafile))[0], 220)
        check(ehlo_keywords(smtp), [b'PIPELINING', b'8BITMIME', b'AUTH'])
        check(smtp.esmtp_features['auth'].split(), ['LOGIN', 'PLAIN'])
        check(login(smtp, mech), (235, b'ok, go ahead (#2.0.0)'))
        refused = smtp.sendmail('a@b.example', ['u@elsewhere.example'],
                                b'Subject: relayed\r\n\r\nhi\r\n')
        check(refused, {})
        smtp.quit()
    check(server.wait(), 0)
    rest = check_received(home.message(), b'alice@127.0.0.1', b'ESMTPSA')
    assert re.match(rb'mx\.example\.org with ESMTPSA \(TLSv1\.[23] [A-Z0-9_-]+ '
                    rb'encrypted\); \d+ \w+ \d{4} [\d:]+ -0000\nSubject: relayed\n\nhi\n$',
                    rest), rest
    check(home.envelope(), b'Fa@b.example\0Tu@elsewhere.example\0\0')
    # As the AUTH patch does, for QMAILQUEUE filters.
    check((home.out / 'remoteinfo').read_bytes(), b'alice')


def test_program_smtps_is_tls_from_the_start(home):
    """SMTPS set (the qmail TLS patch's variable, for port 465): the
    handshake first, then the greeting; no STARTTLS, AUTH at once."""
    server = Server(home, env={'SMTPS': '1'})
    with smtplib.SMTP_SSL(server.host, server.port, timeout=TIMEOUT,
                          context=client_context(home.cafile)) as smtp:
        check(ehlo_keywords(smtp), [b'PIPELINING', b'8BITMIME', b'AUTH'])
        check(smtp.docmd('STARTTLS'), (503, b'TLS already active (#5.5.1)'))
        check(login(smtp, 'PLAIN'), (235, b'ok, go ahead (#2.0.0)'))
        check(smtp.sendmail('a@b.example', ['u@elsewhere.example'],
                            b'Subject: smtps\r\n\r\nhi\r\n'), {})
        smtp.quit()
    check(server.wait(), 0)
    check_received(home.message(), b'alice@127.0.0.1', b'ESMTPSA')


@pytest.mark.parametrize('how, why', [
    ('plain', rb'TLS handshake failed \(\S+'),
    ('nocert', rb'SMTPS: unable to load control/servercert\.pem: \S'),
])
def test_program_smtps_without_a_handshake_is_no_session(home, how, why):
    """A client speaking SMTP in the clear to port 465, or no certificate:
    nothing is said in the clear, the log says why."""
    if how == 'nocert':
        (home.path / 'control' / 'servercert.pem').unlink()
    server = Server(home, env={'SMTPS': ''})       # set, even empty, counts
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        if how == 'plain':
            sock.sendall(b'EHLO client.example\r\n')
        got = b''
        try:
            while True:
                chunk = sock.recv(1000)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:    # (the EHLO unread when it closed)
            pass
        assert b'220' not in got and b'250' not in got, got
    check(server.wait(), 1)
    assert re.search(rb'qmail-smtpd: pid \d+ from 127\.0\.0\.1 helo \S+ mail - rcpt -: '
                     + why, server.stderr), server.stderr


def test_program_require_auth_wants_auth_before_mail(home):
    """REQUIRE_AUTH (the mail clients' services set it): MAIL gets 530
    until AUTH, so a client without a password cannot use port 587 as
    port 25 without port 25's rules; a RELAYCLIENT needs none."""
    server = Server(home, env={'REQUIRE_AUTH': '1'})
    with connect(server) as smtp:
        smtp.starttls(context=client_context(home.cafile))
        smtp.ehlo('client.example')
        check(smtp.docmd('MAIL', 'FROM:<a@b.example>'),
              (530, b'authentication required (#5.7.0)'))
        check(smtp.docmd('RCPT', 'TO:<u@example.org>'), (503, b'MAIL first (#5.5.1)'))
        check(login(smtp, 'PLAIN'), (235, b'ok, go ahead (#2.0.0)'))
        check(smtp.sendmail('a@b.example', ['u@example.org'], b'Subject: x\r\n\r\nb\r\n'), {})
        smtp.quit()
    check(server.wait(), 0)
    server = Server(home, env={'REQUIRE_AUTH': '', 'RELAYCLIENT': ''})
    with connect(server) as smtp:
        check(smtp.sendmail('a@b.example', ['u@example.org'], b'Subject: y\r\n\r\nb\r\n'), {})
        smtp.quit()
    check(server.wait(), 0)


def test_program_forceauthmailfrom_keeps_users_to_their_own_addresses(home):
    """FORCEAUTHMAILFROM (the AUTH/TLS patches' variable): after AUTH,
    MAIL only from the user's own address (a system login "alice": at a
    domain of control/locals, not of rcpthosts alone, nor an extension
    of hers that is another user's mailbox); 553 else, and the transaction
    is refused until a MAIL that is hers.  Without AUTH it changes
    nothing (a RELAYCLIENT, or port 25)."""
    (home.path / 'control' / 'locals').write_bytes(b'example.org\n')
    (home.path / 'control' / 'rcpthosts').write_bytes(b'example.org\nbackup.example\n')
    server = Server(home, env={'FORCEAUTHMAILFROM': '1', 'RELAYCLIENT': ''})
    with connect(server) as smtp:
        smtp.starttls(context=client_context(home.cafile))
        smtp.ehlo('client.example')
        check(smtp.docmd('MAIL', 'FROM:<bob@example.org>'), (250, b'ok'))  # no AUTH yet
        check(smtp.docmd('RSET'), (250, b'flushed'))
        check(login(smtp, 'PLAIN'), (235, b'ok, go ahead (#2.0.0)'))
        refused = ('bob@example.org', 'alice@elsewhere.example', 'alicex@example.org',
                   'alice-boss@example.org', 'alice@backup.example')
        for sender in refused:
            check(smtp.docmd('MAIL', 'FROM:<%s>' % sender),
                  (553, b'sorry, that sender address is not the user you authenticated as '
                        b'(#5.7.1)'))
            check(smtp.docmd('RCPT', 'TO:<u@far.example>'), (503, b'MAIL first (#5.5.1)'))
        for sender in ('Alice@Example.ORG', 'alice', ''):
            check(smtp.docmd('MAIL', 'FROM:<%s>' % sender), (250, b'ok'))
            check(smtp.docmd('RSET'), (250, b'flushed'))
        check(smtp.sendmail('alice@example.org', ['u@far.example'],
                            b'Subject: x\r\n\r\nb\r\n'), {})
        smtp.quit()
    check(server.wait(), 0)
    got = re.findall(rb'mail <([^>]*)> rcpt - auth alice: 553 sorry, that sender address '
                     rb'is not the user you authenticated as \(#5\.7\.1\)\n', server.stderr)
    assert got == [r.encode() for r in refused], server.stderr
    # The addresses whose mail she gets, as qmail-lspawn finds them: an
    # extension users/assign gives her, one of her virtual domain; not
    # another user's extension.  users/cdb unreadable: 451, try later.
    from qmail import newu
    (home.path / 'users').mkdir(exist_ok=True)
    (home.path / 'users' / 'assign').write_bytes(
        b'=alice-lists:alice:1001:1001:/nonexistent:::\n'
        b'+alice-v-:alice:1001:1001:/nonexistent:-::\n'
        b'=bob-lists:bob:1002:1002:/nonexistent:::\n.\n')
    newu.newu(str(home.path))
    (home.path / 'control' / 'virtualdomains').write_bytes(b'alice.example:alice-v\n')
    server = Server(home, env={'FORCEAUTHMAILFROM': '1'})
    with connect(server) as smtp:
        smtp.starttls(context=client_context(home.cafile))
        smtp.ehlo('client.example')
        check(login(smtp, 'PLAIN'), (235, b'ok, go ahead (#2.0.0)'))
        for sender in ('alice-lists@example.org', 'Any@Alice.Example'):
            check(smtp.docmd('MAIL', 'FROM:<%s>' % sender), (250, b'ok'))
            check(smtp.docmd('RSET'), (250, b'flushed'))
        check(smtp.docmd('MAIL', 'FROM:<bob-lists@example.org>'),
              (553, b'sorry, that sender address is not the user you authenticated as '
                    b'(#5.7.1)'))
        (home.path / 'users' / 'cdb').write_bytes(b'\0' * 10)
        check(smtp.docmd('MAIL', 'FROM:<alice-lists@example.org>'),
              (451, b'unable to tell whose that sender address is, try again later (#4.3.0)'))
        check(smtp.docmd('MAIL', 'FROM:<alice@example.org>'), (250, b'ok'))
        smtp.quit()
    check(server.wait(), 0)
    (home.path / 'users' / 'cdb').unlink()
    (home.path / 'control' / 'virtualdomains').unlink()
    # A virtual login without a domain (vcheckpassword's names need none)
    # is no system user: only itself, never a system user's address.
    vchecker = os.path.join(os.path.dirname(home.argv[1]), 'vcheckpassword')
    shutil.copy(home.argv[1], vchecker)
    server = Server(home, env={'FORCEAUTHMAILFROM': '1', 'RELAYCLIENT': ''},
                    argv=[home.argv[0], vchecker] + home.argv[2:])
    with connect(server) as smtp:
        smtp.starttls(context=client_context(home.cafile))
        smtp.ehlo('client.example')
        check(login(smtp, 'PLAIN'), (235, b'ok, go ahead (#2.0.0)'))
        check(smtp.docmd('MAIL', 'FROM:<alice@example.org>'),
              (553, b'sorry, that sender address is not the user you authenticated as '
                    b'(#5.7.1)'))
        check(smtp.docmd('MAIL', 'FROM:<alice>'), (250, b'ok'))
        smtp.quit()
    check(server.wait(), 0)


@pytest.mark.parametrize('argv, want', [
    (['h', '/var/qmail/bin/checkpassword', '/bin/true'], True),
    (['h', '/bin/checkpassword', '/bin/true'], True),
    (['h', '/usr/sbin/checkpassword-pam', '-s', 'smtp', '/bin/true'], True),
    (['h', '/var/qmail/bin/vcheckpassword', '/bin/true'], False),
    (['h', '/home/vpopmail/bin/vchkpw', '/bin/true'], False),
    (['h'], False),
    ([], False),
])
def test_system_checker(argv, want):
    assert smtpd.system_checker(argv) is want


def test_program_smtps_says_nothing_in_the_clear_when_it_cannot_start(home):
    """With SMTPS a 421 for unreadable controls went out in the clear on
    the TLS port (found by a review): the log alone says why."""
    (home.path / 'control' / 'smtpgreeting').unlink(missing_ok=True)
    (home.path / 'control' / 'me').unlink()
    server = Server(home, env={'SMTPS': '1'})
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        check(sock.recv(1000), b'')
    check(server.wait(), 1)
    assert b'421 unable to read controls' in server.stderr, server.stderr


def test_program_bad_password(home):
    home.control('authdelaysmtpd', b'1\n')
    server = Server(home)
    with connect(server) as smtp:
        smtp.starttls(context=client_context(home.cafile))
        smtp.ehlo('client.example')
        start = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            login(smtp, 'PLAIN', password='wrong')
        assert time.monotonic() - start >= 1, 'no delay after a bad password'
        check((err.value.smtp_code, err.value.smtp_error),
              (535, b'authentication failed (#5.7.8)'))
        smtp.mail('a@b.example')
        check(smtp.rcpt('u@elsewhere.example')[0], 553)
        smtp.quit()
    check(server.wait(), 0)


def test_program_bad_password_delay_includes_the_check(home, tmp_path):
    """authdelaysmtpd counts from the credentials: a checker that takes
    1.5 s of a 2 s delay makes the 535 come after 2 s, not 3.5, so the
    time does not tell which user (or hash method) was tried."""
    home.control('authdelaysmtpd', b'2\n')
    slow = tmp_path / 'slowcheck'
    slow.write_text('#!/bin/sh\nsleep 1.5\nexit 1\n')
    slow.chmod(0o755)
    server = Server(home, argv=['mx.example.org', str(slow), '/bin/true'])
    with connect(server) as smtp:
        smtp.starttls(context=client_context(home.cafile))
        smtp.ehlo('client.example')
        start = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            login(smtp, 'PLAIN', password='wrong')
        took = time.monotonic() - start
        assert 1.9 <= took < 3.0, took
        smtp.quit()
    check(server.wait(), 0)


def test_program_cram_md5(home, tmp_path):
    home.control('smtpauthcram')
    checker = tmp_path / 'cramcheck'
    checker.write_text(CRAMCHECK.format(python=sys.executable))
    checker.chmod(0o755)
    server = Server(home, argv=['mx.example.org', str(checker), '/bin/true'])
    with connect(server) as smtp:
        smtp.starttls(context=client_context(home.cafile))
        smtp.ehlo('client.example')
        check(smtp.esmtp_features['auth'].split(), ['LOGIN', 'PLAIN', 'CRAM-MD5'])
        check(smtp.login('alice', 's3cret')[0], 235)    # smtplib picks CRAM-MD5
        smtp.quit()
    check(server.wait(), 0)


def test_program_starttls_injection(home):
    """CVE-2011-0411: a MAIL sent in the clear right after STARTTLS must
    not count as said under TLS."""
    server = Server(home)
    sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
    f = sock.makefile('rb')
    f.readline()
    sock.sendall(b'EHLO client.example\r\nSTARTTLS\r\nMAIL FROM:<evil@x.example>\r\n')
    while not f.readline().startswith(b'250 '):
        pass
    check(f.readline(), b'220 ready for tls\r\n')
    f.close()
    tls = client_context(home.cafile).wrap_socket(sock)
    f = tls.makefile('rb')
    tls.sendall(b'RCPT TO:<u@example.org>\r\nQUIT\r\n')
    check(f.readline(), b'503 MAIL first (#5.5.1)\r\n')
    check(f.readline(), b'221 mx.example.org\r\n')
    f.close()
    tls.close()
    check(server.wait(), 0)


def starttls_asked(server):
    """A connection to server that has had its "220 ready for tls"."""
    sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
    f = sock.makefile('rb')
    f.readline()
    sock.sendall(b'STARTTLS\r\n')
    check(f.readline(), b'220 ready for tls\r\n')
    f.close()
    return sock


@pytest.mark.parametrize('version', ['TLSv1_2', 'TLSv1_3'])
def test_program_sends_no_session_ticket(home, version):
    """Each STARTTLS makes its context anew, so no ticket could ever
    resume a session: TLS 1.3 sent two with every handshake, for nothing
    (found against Postfix and openssl s_client by a helper's review)."""
    server = Server(home)
    sock = starttls_asked(server)
    ctx = client_context(home.cafile)
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    tls = ctx.wrap_socket(sock)
    tls.sendall(b'QUIT\r\n')
    assert tls.recv(100).startswith(b'221 '), 'no 221'      # (tickets come before it)
    assert tls.session is None or not tls.session.has_ticket
    tls.close()
    check(server.wait(), 0)


def test_program_ends_tls_with_close_notify(home):
    """After the 221 the server says close_notify: a client that takes an
    end without it for a truncation (suppress_ragged_eofs=False) sees a
    clean end, not UNEXPECTED_EOF_WHILE_READING."""
    server = Server(home)
    sock = starttls_asked(server)
    ctx = client_context(home.cafile)
    ctx.options &= ~getattr(ssl, 'OP_IGNORE_UNEXPECTED_EOF', 0)    # (Debian's default)
    tls = ctx.wrap_socket(sock, suppress_ragged_eofs=False)
    tls.sendall(b'QUIT\r\n')
    got = b''
    while not got.endswith(b'\r\n'):
        got += tls.recv(100)
    check(got, b'221 mx.example.org\r\n')
    check(tls.recv(100), b'')           # close_notify: SSLEOFError without it
    tls.close()
    check(server.wait(), 0)


@pytest.mark.parametrize('garbage, why', [
    (b'GET / HTTP/1.0\r\n\r\n', rb'TLS handshake failed \([A-Z_]+\)'),
    (b'\x16\x03\x01\x00\x05hello', rb'TLS handshake failed \(\S+\)'),  # a truncated ClientHello
    (b'', rb'TLS handshake failed \(connection closed\)'),     # the client hangs up
])
def test_program_broken_handshake(home, garbage, why):
    server = Server(home)
    sock = starttls_asked(server)
    if garbage:
        sock.sendall(garbage)
    sock.shutdown(socket.SHUT_WR)
    try:
        rest = sock.recv(65536)         # perhaps a TLS alert; no SMTP
    except ConnectionResetError:
        rest = b''
    assert b'250' not in rest and b'traceback' not in rest.lower(), rest
    sock.close()
    check(server.wait(), 1)
    # the log tells a failed handshake from a client that went away
    assert re.search(rb'qmail-smtpd: pid \d+ from 127\.0\.0\.1 helo \S+ mail - rcpt -: '
                     + why + rb'\n', server.stderr), server.stderr


def test_program_handshake_timeout(home):
    home.control('timeoutsmtpd', b'1\n')
    server = Server(home)
    sock = starttls_asked(server)
    check(sock.recv(100), b'')          # closed, after a second of silence
    sock.close()
    check(server.wait(), 1)


def test_program_unreadable_certificate(home):
    home.control('servercert.pem', b'not a certificate\n')
    server = Server(home)
    with connect(server) as smtp:
        smtp.ehlo('client.example')
        for _ in range(3):
            check(smtp.docmd('STARTTLS'),
                  (454, b'TLS not available due to temporary reason (#4.3.0)'))
        check(smtp.noop()[0], 250)
        smtp.quit()
    check(server.wait(), 0)
    # why, for the admin (the client sees only the 454), once a connection
    got = re.findall(rb'qmail-smtpd: pid \d+ from 127\.0\.0\.1 helo client\.example '
                     rb'starttls: unable to load control/servercert\.pem: \S',
                     server.stderr)
    assert len(got) == 1, server.stderr


def test_program_without_memory_for_the_ssl_module(home):
    """A memory limit too small for libssl (softlimit -m in a run script
    kept from C qmail): STARTTLS ended the session with "421 internal
    error".  Now the 454 of a certificate that cannot be loaded, the
    session goes on in the clear, and the log says why."""
    # qmail-smtpd loaded, then 2 MB more address space: libcrypto's
    # mapping fails (ssl is imported only at the first STARTTLS)
    prelude = ('import resource; from qmail import smtpd; '
               'vm = [int(l.split()[1]) for l in open("/proc/self/status") '
               'if l.startswith("VmSize")][0]; '
               'resource.setrlimit(resource.RLIMIT_AS, ((vm + 2048) * 1024, '
               'resource.RLIM_INFINITY)); ')
    server = Server(home, prelude=prelude)
    with connect(server) as smtp:
        smtp.ehlo('client.example')
        for _ in range(2):
            check(smtp.docmd('STARTTLS'),
                  (454, b'TLS not available due to temporary reason (#4.3.0)'))
        # (no DATA: 2 MB leave no room for starting the QMAILQUEUE script)
        check(smtp.mail('a@b.example')[0], 250)
        check(smtp.rcpt('u@example.org')[0], 250)
        check(smtp.rset()[0], 250)
        smtp.quit()
    check(server.wait(), 0)
    got = re.findall(rb'qmail-smtpd: pid \d+ from 127\.0\.0\.1 helo client\.example '
                     rb'starttls: unable to load the ssl module: \S', server.stderr)
    assert len(got) == 1, server.stderr


def test_program_tlsserverciphers(home):
    """The cipher up to TLS 1.2 is one control/tlsserverciphers allows;
    one that allows none refuses STARTTLS, and the log says why."""
    home.control('tlsserverciphers', b'ECDHE-RSA-AES256-GCM-SHA384\n')
    server = Server(home)
    sock = starttls_asked(server)
    ctx = client_context(home.cafile)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    tls = ctx.wrap_socket(sock)
    check(tls.cipher()[0], 'ECDHE-RSA-AES256-GCM-SHA384')
    tls.sendall(b'QUIT\r\n')
    assert tls.recv(100).startswith(b'221 '), 'no 221'
    tls.close()
    check(server.wait(), 0)

    home.control('tlsserverciphers', b'NO-SUCH-CIPHER\n')
    server = Server(home)
    with connect(server) as smtp:
        smtp.ehlo('client.example')
        check(smtp.docmd('STARTTLS'),
              (454, b'TLS not available due to temporary reason (#4.3.0)'))
        smtp.quit()
    check(server.wait(), 0)
    assert re.search(rb'starttls: unable to load control/tlsserverciphers: '
                     rb'no cipher can be selected\n', server.stderr), server.stderr


def test_program_auth_plaintext_control(home):
    home.control('smtpauthplaintext')
    server = Server(home)
    with connect(server) as smtp:
        assert b'AUTH' in ehlo_keywords(smtp)
        check(login(smtp, 'PLAIN')[0], 235)
        smtp.sendmail('a@b.example', ['u@elsewhere.example'], b'\r\nhi\r\n')
        smtp.quit()
    check(server.wait(), 0)
    check_received(home.message(), b'alice@127.0.0.1', b'ESMTPA')


def test_program_without_auth_keeps_remoteinfo(home):
    server = Server(home, env={'TCPREMOTEINFO': 'ident'})
    with connect(server) as smtp:
        smtp.ehlo('client.example')
        smtp.sendmail('a@b.example', ['u@example.org'], b'\r\nhi\r\n')
        smtp.quit()
    check(server.wait(), 0)
    check((home.out / 'remoteinfo').read_bytes(), b'ident')
    check_received(home.message(), b'ident@127.0.0.1', b'SMTP')


def test_program_ipv6(home):
    if not socket.has_ipv6:
        pytest.skip('no IPv6')
    try:
        server = Server(home, host='::1')
    except OSError:
        pytest.skip('no ::1')
    with smtplib.SMTP('::1', server.port, timeout=TIMEOUT) as smtp:
        smtp.starttls(context=client_context(home.cafile))
        smtp.ehlo('client.example')
        login(smtp, 'LOGIN')
        smtp.sendmail('a@b.example', ['u@[IPv6:::1]', 'v@example.org'], b'\r\nhi\r\n')
        smtp.quit()
    check(server.wait(), 0)
    rest = check_received(home.message(), b'alice@::1', b'ESMTPSA')
    assert rest.startswith(b'mx.example.org with ESMTPSA (TLSv1.'), rest
    # [IPv6:::1] is this host: localiphost (here control/me) replaces it.
    check(home.envelope(), b'Fa@b.example\0Tu@mx.example.org\0Tv@example.org\0\0')


def test_program_under_tcpserver_ipv6(home):
    """ucspi-tcp-ipv6's tcpserver sets TCPREMOTEIP=::1 itself."""
    if shutil.which('tcpserver') is None:
        pytest.skip('no tcpserver')
    code = main_code('smtpd', home.path, repr(home.argv))
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT, 'QMAILQUEUE': str(home.fakeq)}
    proc = subprocess.Popen(['tcpserver', '-1', '-H', '-R', '-c', '1', '-6', '::1', '0',
                             sys.executable, '-c', code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            pytest.skip('tcpserver cannot listen on ::1: %r' % proc.stderr.read(200))
        port = int(line)
        with smtplib.SMTP('::1', port, timeout=TIMEOUT) as smtp:
            smtp.starttls(context=client_context(home.cafile))
            smtp.ehlo('client.example')
            login(smtp, 'PLAIN')
            smtp.sendmail('a@b.example', ['u@elsewhere.example'], b'\r\nhi\r\n')
            smtp.quit()
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
    rest = check_received(home.message(), b'alice@::1', b'ESMTPSA', by=b'::1')
    assert rest.startswith(b'::1 with ESMTPSA (TLSv1.'), rest


def swaks_has_tls():
    if shutil.which('swaks') is None:
        return False
    r = subprocess.run(['swaks', '--support'], capture_output=True,
                       timeout=TIMEOUT)
    return b'=== TLS supported' in r.stdout + r.stderr


@pytest.mark.parametrize('mech', ['PLAIN', 'LOGIN'])
def test_swaks(home, mech):
    if not swaks_has_tls():
        pytest.skip('swaks without TLS (Debian: libnet-ssleay-perl)')
    server = Server(home)
    r = subprocess.run(['swaks', '--server', '%s:%d' % (server.host, server.port),
                        '--tls', '--auth', mech, '--auth-user', 'alice',
                        '--auth-password', 's3cret', '--to', 'x@elsewhere.example',
                        '--from', 'y@example.com', '--helo', 'client.example'],
                       capture_output=True, timeout=TIMEOUT)
    check(server.wait(), 0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert b'<~  235 ok, go ahead (#2.0.0)' in r.stdout, r.stdout
    check_received(home.message(), b'alice@127.0.0.1', b'ESMTPSA')
    check(home.envelope(), b'Fy@example.com\0Tx@elsewhere.example\0\0')


def test_swaks_bad_password(home):
    if not swaks_has_tls():
        pytest.skip('swaks without TLS (Debian: libnet-ssleay-perl)')
    server = Server(home)
    r = subprocess.run(['swaks', '--server', '%s:%d' % (server.host, server.port),
                        '--tls', '--auth', 'PLAIN', '--auth-user', 'alice',
                        '--auth-password', 'nope', '--to', 'x@elsewhere.example',
                        '--from', 'y@example.com'],
                       capture_output=True, timeout=TIMEOUT)
    server.wait()
    assert r.returncode != 0
    assert b'535 authentication failed (#5.7.8)' in r.stdout, r.stdout
    assert b'nope' not in r.stdout.split(b'535')[1]


def test_program_as_sendmail_bs_offers_neither(home):
    """Pipes, not a socket: no STARTTLS even with a certificate, and so
    no AUTH (which wants TLS)."""
    code = main_code('smtpd', home.path, repr(home.argv))
    r = subprocess.run([sys.executable, '-c', code],
                       input=b'EHLO x\r\nSTARTTLS\r\nAUTH PLAIN ' + PLAIN + b'\r\nQUIT\r\n',
                       capture_output=True, timeout=TIMEOUT,
                       env={'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT,
                            'QMAILQUEUE': str(home.fakeq)})
    check_log_only(r.stderr)
    check(replies(r.stdout), [
        b'220 mx.example.org ESMTP', b'250-mx.example.org', b'250-PIPELINING',
        b'250 8BITMIME', b'502 unimplemented (#5.5.1)',
        b'538 encryption required for requested authentication mechanism (#5.7.11)',
        b'221 mx.example.org'])
