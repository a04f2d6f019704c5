"""qmail-smtpd: the session fed bytes, its pure parts, and the real program.

Session tests use no socket and no process: a FakeQueue stands in for
qmail-queue and records what it was given.  The end-to-end tests run the
program with a shell script as QMAILQUEUE.
"""

import os
import re
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from conftest import main_code
from qmail import smtpd, smtpd_addr, smtpd_auth
from qmail.lib import cdb, control
from qmail.smtpd_blast import END, MORE, STRAYLF, Blast

NOW = 812090814                 # 26 Sep 1995 04:46:54 -0000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GREETING = b'mx.example.org'


class FakeQueue:
    """Records what qmail-smtpd hands to qmail-queue."""

    def __init__(self, status=''):
        self.status = status
        self.message = bytearray()
        self.envelope = []
        self.flagfail = False
        self.flagclosed = False
        self.pid = 4242

    def put(self, data):
        assert not self.envelope, 'message bytes after the envelope began'
        self.message += data

    def fail(self):
        self.flagfail = True

    def from_(self, sender):
        self.envelope.append(b'F' + sender)

    def to(self, recipient):
        self.envelope.append(b'T' + recipient)

    def close(self):
        assert not self.flagclosed, 'closed twice'
        self.flagclosed = True
        if self.flagfail and not self.status:
            return 'Zqq read error (#4.3.0)'
        return self.status

    @property
    def queued(self):
        """Would the real qmail-queue have queued it?"""
        return self.flagclosed and not self.flagfail and not self.status


class Harness:
    def __init__(self, status='', peer=None, **config):
        config.setdefault('greeting', GREETING)
        config.setdefault('rcpthosts', frozenset([b'example.org']))
        self.queues = []
        self.status = status
        self.session = smtpd.Session(smtpd.Config(**config),
                                     peer or smtpd.Peer(), self.newqueue, NOW)

    def newqueue(self):
        q = FakeQueue(self.status)
        self.queues.append(q)
        return q

    def feed(self, *chunks, now=NOW):
        return b''.join(self.session.feed(c, now) for c in chunks)

    @property
    def q(self):
        assert len(self.queues) == 1, 'got %d queues, want 1' % len(self.queues)
        return self.queues[0]


def replies(data: bytes) -> list:
    """The reply lines, without CR LF."""
    assert data == b'' or data.endswith(b'\r\n'), 'got %r' % data
    return data.split(b'\r\n')[:-1] if data else []


def check(got, want):
    assert got == want, 'got %r\nwant %r' % (got, want)


ENVELOPE = b'MAIL FROM:<a@b.example>\r\nRCPT TO:<u@example.org>\r\n'
BODY = b'Subject: x\r\n\r\nhi\r\n.\r\n'


# -- greeting and simple commands ---------------------------------------------

def test_greeting():
    h = Harness()
    check(h.session.greet(), b'220 mx.example.org ESMTP\r\n')


@pytest.mark.parametrize('databytes,want', [
    (0, [b'250-mx.example.org', b'250-PIPELINING', b'250 8BITMIME']),
    (5000, [b'250-mx.example.org', b'250-PIPELINING', b'250-8BITMIME',
            b'250 SIZE 5000']),
])
def test_ehlo(databytes, want):
    h = Harness(databytes=databytes)
    check(replies(h.feed(b'EHLO client.example\r\n')), want)


@pytest.mark.parametrize('commands,want', [
    (b'HELO x\r\n', [b'250 mx.example.org']),
    (b'helo\r\n', [b'250 mx.example.org']),
    (b'NOOP\r\n', [b'250 ok']),
    (b'noop whatever\r\n', [b'250 ok']),
    (b'VRFY root\r\n', [b"252 send some mail, i'll try my best"]),
    (b'HELP\r\n', [b'214 qmail home page: http://pobox.com/~djb/qmail.html']),
    (b'RSET\r\n', [b'250 flushed']),
    (b'EXPN root\r\n', [b'502 unimplemented (#5.5.1)']),
    (b'\r\n', [b'502 unimplemented (#5.5.1)']),
    (b'MAIL\tFROM:<a@b>\r\n', [b'502 unimplemented (#5.5.1)']),
    (b'NOOP\n', [b'250 ok']),                  # bare LF ends a command
    (b'RCPT TO:<u@example.org>\r\n', [b'503 MAIL first (#5.5.1)']),
    (b'DATA\r\n', [b'503 MAIL first (#5.5.1)']),
    (b'MAIL FROM:<a@b>\r\nDATA\r\n', [b'250 ok', b'503 RCPT first (#5.5.1)']),
    (b'MAIL FROM:<a@b>\r\nRSET\r\nRCPT TO:<u@example.org>\r\n',
     [b'250 ok', b'250 flushed', b'503 MAIL first (#5.5.1)']),
    (b'MAIL FROM:<a@b>\r\nHELO x\r\nRCPT TO:<u@example.org>\r\n',
     [b'250 ok', b'250 mx.example.org', b'503 MAIL first (#5.5.1)']),
    (b'MAIL FROM:<a@b>\r\nEHLO x\r\nRCPT TO:<u@example.org>\r\n',
     [b'250 ok', b'250-mx.example.org', b'250-PIPELINING', b'250 8BITMIME',
      b'503 MAIL first (#5.5.1)']),
    (b'mail from:<a@b>\r\nrcpt to:<u@EXAMPLE.org>\r\n', [b'250 ok', b'250 ok']),
    (b'MAIL <a@b>\r\nRCPT <u@example.org>\r\n', [b'250 ok', b'250 ok']),
    (b'MAIL FROM:<' + b'x' * 899 + b'>\r\n', [b'250 ok']),
    (b'MAIL FROM:<' + b'x' * 900 + b'>\r\n', [b'555 syntax error (#5.5.4)']),
    (b'MAIL FROM:<a@b>\r\nRCPT TO:<' + b'x' * 900 + b'>\r\n',
     [b'250 ok', b'555 syntax error (#5.5.4)']),
    (b'MAIL FROM:<a@b>\r\nMAIL FROM:<c@d>\r\n', [b'250 ok', b'250 ok']),
])
def test_commands(commands, want):
    h = Harness()
    check(replies(h.feed(commands)), want)
    assert not h.session.flagclosed
    check(h.queues, [])


def test_quit_closes_with_exit_0():
    h = Harness()
    check(h.feed(b'QUIT\r\nNOOP\r\n'), b'221 mx.example.org\r\n')
    assert h.session.flagclosed
    check(h.session.exitcode, 0)
    check(h.feed(b'NOOP\r\n'), b'')


def test_commands_split_anywhere():
    """The same replies however the network cuts the bytes."""
    data = b'EHLO x\r\n' + ENVELOPE + b'DATA\r\n' + BODY + b'QUIT\r\n'
    whole = Harness()
    want = whole.feed(data)
    for size in (1, 2, 3, 7):
        h = Harness()
        got = h.feed(*[data[i:i + size] for i in range(0, len(data), size)])
        check(got, want)
        check(h.q.message, whole.q.message)


# -- addresses -----------------------------------------------------------------

@pytest.mark.parametrize('arg,addr,rest', [
    (b'FROM:<a@b.example>', b'a@b.example', b''),
    (b'FROM: <a@b.example>', b'a@b.example', b''),
    (b'FROM:<>', b'', b''),
    (b'FROM:<a@b> SIZE=100 BODY=8BITMIME', b'a@b', b' SIZE=100 BODY=8BITMIME'),
    (b'FROM:a@b.example', b'a@b.example', b''),
    (b'FROM:   a@b.example SIZE=5', b'a@b.example', b'SIZE=5'),
    (b'<a@b>', b'a@b', b''),
    (b'a@b', b'', b''),                         # no '<', no ':': qmail's ""
    (b'TO:<@r1.example,@r2.example:u@c.example>', b'u@c.example', b''),
    (b'TO:@r1.example:u@c.example', b'u@c.example', b''),
    (b'TO:<@r1.example>', b'', b''),
    (b'TO:<"a b"@c.example>', b'a b@c.example', b''),
    (b'TO:<"a>b"@c.example>', b'a>b@c.example', b''),
    (b'TO:<a\\>b@c.example>', b'a>b@c.example', b''),
    (b'TO:<a\\\\b@c>', b'a\\b@c', b''),
    (b'TO:<u@c.example', b'u@c.example', b''),   # never ended: taken anyway
    (b'TO:<\xc3\xa9@c.example>', b'\xc3\xa9@c.example', b''),
])
def test_addrparse(arg, addr, rest):
    check(smtpd_addr.addrparse(arg), (addr, rest))


def addrparse_bytewise(arg: bytes):
    """qmail's addrparse as its loop reads it, byte by byte: what the
    shortcut for addresses without quotes or backslashes must equal."""
    terminator = b'>'[0]
    i = arg.find(b'<')
    if i >= 0:
        arg = arg[i + 1:]
    else:
        terminator = b' '[0]
        i = arg.find(b':')
        arg = (arg[i + 1:] if i >= 0 else b'').lstrip(b' ')
    if arg[:1] == b'@':
        i = arg.find(b':')
        arg = arg[i + 1:] if i >= 0 else b''
    addr, esc, quoted = bytearray(), False, False
    for i, ch in enumerate(arg):
        if esc:
            addr.append(ch)
            esc = False
        elif ch == terminator and not quoted:
            return bytes(addr), arg[i + 1:]
        elif ch == 0x5C:
            esc = True
        elif ch == 0x22:
            quoted = not quoted
        else:
            addr.append(ch)
    return bytes(addr), b''


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from([b'<', b'>', b' ', b':', b'@', b',', b'"', b'\\', b'a', b'b.c',
                                 b'\xc3', b'\0']), max_size=14).map(b''.join))
def test_addrparse_equals_the_bytewise_loop(arg):
    check(smtpd_addr.addrparse(arg), addrparse_bytewise(arg))


IPME = frozenset([b'\0\0\0\0', b'\x7f\0\0\x01', b'\xc0\0\x02\x01'])


@pytest.mark.parametrize('addr,liphost,want', [
    (b'u@[127.0.0.1]', b'me.example', b'u@me.example'),
    (b'u@[192.0.2.1]', b'me.example', b'u@me.example'),
    (b'u@[0.0.0.0]', b'me.example', b'u@me.example'),
    (b'u@[192.0.2.9]', b'me.example', b'u@[192.0.2.9]'),      # not mine
    (b'u@[127.0.0.1]', None, b'u@[127.0.0.1]'),               # no localiphost
    (b'u@[127.0.0.1]x', b'me.example', b'u@[127.0.0.1]x'),
    (b'u@[127.0.0.256]', b'me.example', b'u@[127.0.0.256]'),
    (b'u@[127.0.1]', b'me.example', b'u@[127.0.1]'),
    (b'a@x@[127.0.0.1]', b'me.example', b'a@x@me.example'),  # last '@'
    (b'[127.0.0.1]', b'me.example', b'[127.0.0.1]'),
    # leading zeros, as qmail's ip_scan (scan_ulong) reads them
    (b'u@[0127.0.0.1]', b'me.example', b'u@me.example'),
    (b'u@[127.0.0.0001]', b'me.example', b'u@me.example'),
    (b'u@[0000.0.0.0]', b'me.example', b'u@me.example'),
    (b'u@[' + b'0' * 800 + b'127.0.0.1]', b'me.example', b'u@me.example'),
    (b'u@[0256.0.0.1]', b'me.example', b'u@[0256.0.0.1]'),
    (b'u@[127.0.0.1000]', b'me.example', b'u@[127.0.0.1000]'),
    (b'u@[127.0.0.+1]', b'me.example', b'u@[127.0.0.+1]'),
])
def test_localiphost(addr, liphost, want):
    check(smtpd_addr.localiphost(addr, liphost, IPME), want)


MORERH = cdb.Cdb.from_bytes(cdb.make([(b'more.example', b''),
                                      (b'.sub.more.example', b'')]))


@pytest.mark.parametrize('addr,rcpthosts,want', [
    (b'u@anything.example', None, True),        # no rcpthosts: open
    (b'u@example.org', {b'example.org'}, True),
    (b'u@EXAMPLE.Org', {b'example.org'}, True),
    (b'u@x.example.org', {b'example.org'}, False),
    (b'u@x.example.org', {b'.example.org'}, True),
    (b'u@a.b.example.org', {b'.example.org'}, True),
    (b'u@example.org', {b'.example.org'}, False),
    (b'u@evil.example', {b'example.org'}, False),
    (b'u@example.org.evil', {b'example.org'}, False),
    (b'postmaster', {b'example.org'}, True),    # no '@': always
    (b'u@', {b'example.org'}, False),
    (b'u@more.example', {b'example.org'}, True),
    (b'u@x.sub.more.example', {b'example.org'}, True),
    (b'u@x.more.example', {b'example.org'}, False),
    (b'u@evil.example', set(), False),          # empty rcpthosts: nothing
    # not qmail: no domain is longer than 255 octets (each suffix a lookup)
    (b'u@' + b'a.' * 118 + b'x.sub.more.example', {b'example.org'}, True),
    (b'u@' + b'a.' * 119 + b'x.sub.more.example', {b'example.org'}, False),
    (b'u@' + b'a.' * 123 + b'example.org', {b'.example.org'}, False),
])
def test_addrallowed(addr, rcpthosts, want):
    got = smtpd_addr.addrallowed(addr, rcpthosts,
                                 MORERH if rcpthosts is not None else None)
    check(got, want)


@pytest.mark.parametrize('addr, user, want', [
    # a system login: its name at a domain of locals (or alone)
    (b'joe@example.org', b'joe', True),
    (b'Joe@Example.ORG', b'JOE', True),
    (b'joe@other.example', b'joe', True),
    (b'joe-lists@example.org', b'joe', False),      # joe-lists may be another user
    (b'joel@example.org', b'joe', False),
    (b'jo@example.org', b'joe', False),
    (b'joe@sub.example.org', b'joe', False),
    (b'joe@backup.example', b'joe', False),         # rcpthosts only: not ours to send as
    (b'joe@evil.example', b'joe', False),
    (b'joe', b'joe', True),
    (b'bob', b'joe', False),
    # a virtual login: itself
    (b'joe@example.org', b'joe@example.org', True),
    (b'JOE@example.ORG', b'joe@Example.org', True),
    (b'joe-x@example.org', b'joe@example.org', False),
    (b'joe@other.example', b'joe@example.org', False),
    (b'joe@a@example.org', b'joe@example.org', False),
    (b'joe', b'joe@example.org', False),
    # the null sender; an empty login owns nothing
    (b'', b'joe', True),
    (b'x@example.org', b'', False),
    (b'@example.org', b'', False),
    (b'@example.org', b'@example.org', False),
])
def test_sender_is_users(addr, user, want):
    check(smtpd_addr.sender_is_users(addr, user, {b'example.org', b'other.example'}), want)


def test_sender_is_users_owner():
    """A system login may also send from the addresses whose mail it gets
    (owner: its extensions, users/assign's, its virtual domains'); a
    virtual login never asks; an owner that cannot tell raises."""
    owners = {b'joe-lists@example.org': b'joe', b'joe-boss@example.org': b'boss',
              b'x@joe.example': b'joe'}
    asked = []

    def owner(addr):
        asked.append(addr)
        return owners.get(addr)
    locals_ = {b'example.org'}
    for addr, want in ((b'joe-lists@example.org', True), (b'joe-boss@example.org', False),
                       (b'x@joe.example', True), (b'y@joe.example', False),
                       (b'joe@example.org', True), (b'joe', True)):
        check(smtpd_addr.sender_is_users(addr, b'Joe', locals_, owner), want)
    check(asked, [b'joe-lists@example.org', b'joe-boss@example.org', b'x@joe.example',
                  b'y@joe.example'])
    check(smtpd_addr.sender_is_users(b'joe-lists@example.org', b'joe', locals_), False)
    check(smtpd_addr.sender_is_users(b'joe-lists@example.org', b'joe', set(), owner), False)
    check(smtpd_addr.sender_is_users(b'x@joe.example', b'joe@example.org', locals_, owner),
          False)

    def trouble(addr):
        raise OSError('users/cdb: no')
    with pytest.raises(OSError):
        smtpd_addr.sender_is_users(b'joe-lists@example.org', b'joe', locals_, trouble)


def test_mailbox_owner(tmp_path):
    """qmail-lspawn's answer, as qmail-smtpd finds it: locals and
    virtualdomains, then users/cdb, then qmail-getpw's rules."""
    from qmail import newu
    (tmp_path / 'control').mkdir()
    (tmp_path / 'control' / 'virtualdomains').write_bytes(b'joe.example:joe-v\na.example:alias\n')
    (tmp_path / 'users').mkdir()
    (tmp_path / 'users' / 'assign').write_bytes(
        b'=joe-lists:joe:1001:1001:/nonexistent:::\n'
        b'+joe-v-:joe:1001:1001:/nonexistent:-::\n'
        b'=info:Boss:1002:1002:/nonexistent:::\n'
        b'+alias-:alias:1003:1003:/nonexistent:-::\n.\n')
    newu.newu(str(tmp_path))
    owner = smtpd.MailboxOwner({b'example.org'}, str(tmp_path))
    check(owner(b'joe-lists@example.org'), b'joe')
    check(owner(b'JOE-LISTS@Example.ORG'), b'joe')
    check(owner(b'info@example.org'), b'boss')
    check(owner(b'any@joe.example'), b'joe')
    check(owner(b'joe-lists@far.example'), None)
    check(owner(b'x@a.example'), None)                  # the alias user's: no one's
    (tmp_path / 'users' / 'cdb').write_bytes(b'\0' * 100)  # a broken cdb: qmail-lspawn defers
    with pytest.raises(OSError):
        owner(b'joe-lists@example.org')


BMF = frozenset([b'spammer@bad.example', b'@worse.example'])


@pytest.mark.parametrize('addr,want', [
    (b'spammer@bad.example', True),
    (b'SPAMMER@Bad.Example', True),
    (b'other@bad.example', False),
    (b'anyone@worse.example', True),
    (b'anyone@WORSE.example', True),
    (b'anyone@sub.worse.example', False),
    (b'', False),
    (b'worse.example', False),
])
def test_bmfcheck(addr, want):
    check(smtpd_addr.bmfcheck(addr, BMF), want)


@pytest.mark.parametrize('rest,want', [
    (b'', None),
    (b' SIZE=1234', 1234),
    (b' BODY=8BITMIME size=77', 77),
    (b' SIZE=abc', None),
    (b' SIZE=', None),
    (b' SIZE=' + b'9' * 50, 10 ** 20),
])
def test_mail_size(rest, want):
    check(smtpd_addr.mail_size(rest), want)


# -- relaying and badmailfrom in the session -----------------------------------

def test_relay_refused():
    h = Harness()
    got = replies(h.feed(b'MAIL FROM:<a@b>\r\nRCPT TO:<u@elsewhere.example>\r\n'
                         b'RCPT TO:<u@example.org>\r\nDATA\r\n' + BODY))
    check(got, [b'250 ok',
                b"553 sorry, that domain isn't in my list of allowed rcpthosts"
                b" (#5.7.1)",
                b'250 ok', b'354 go ahead', b'250 ok %d qp 4242' % NOW])
    check(h.q.envelope, [b'Fa@b', b'Tu@example.org'])


def test_only_good_srs_addresses_at_the_srs_domain():
    """With control/srs_domain, a recipient there must be an SRS address
    of ours, good and not too old: anything else is refused at RCPT
    (srsfilter would bounce it later, to a sender most likely forged);
    without a secret to check with, everything is taken."""
    from qmail.lib import srs
    setting = srs.Srs(b'srs.example.org', [b's3'], rcpthosts=frozenset([b'example.org']))
    good = setting.forward(b'joe@far.example')
    old = setting.forward(b'joe@far.example', now=time.time() - 30 * 86400)
    h = Harness(rcpthosts=frozenset([b'example.org', b'srs.example.org']), srs=setting)
    got = replies(h.feed(b'MAIL FROM:<>\r\n', b'RCPT TO:<%s>\r\n' % good,
                         b'RCPT TO:<%s>\r\n' % good.upper(),
                         b'RCPT TO:<%s>\r\n' % old, b'RCPT TO:<joe@srs.example.org>\r\n',
                         b'RCPT TO:<SRS0=AAAA=AB=far.example=joe@SRS.example.org>\r\n',
                         b'RCPT TO:<u@example.org>\r\n'))
    refusal = b'550 sorry, that is no SRS address of mine, or it is too old (#5.1.1)'
    check(got, [b'250 ok', b'250 ok', b'250 ok', refusal, refusal, refusal, b'250 ok'])
    h = Harness(rcpthosts=frozenset([b'srs.example.org']), srs=setting)
    check(replies(h.feed(b'MAIL FROM:<a@b>\r\nRCPT TO:<Postmaster@srs.example.org>\r\n')),
          [b'250 ok', b'250 ok'])               # (RFC 5321 4.5.1)
    nosecret = srs.Srs(b'srs.example.org', [])
    h = Harness(rcpthosts=frozenset([b'srs.example.org']), srs=nosecret)
    check(replies(h.feed(b'MAIL FROM:<>\r\nRCPT TO:<x@srs.example.org>\r\n')),
          [b'250 ok', b'250 ok'])


@pytest.mark.parametrize('relayclient,want', [
    (b'', [b'Fa@b', b'Tu@elsewhere.example', b'Tu@example.org']),
    (b'@relay.example', [b'Fa@b', b'Tu@elsewhere.example@relay.example',
                         b'Tu@example.org@relay.example']),
])
def test_relayclient(relayclient, want):
    h = Harness(peer=smtpd.Peer(relayclient=relayclient))
    got = replies(h.feed(b'MAIL FROM:<a@b>\r\nRCPT TO:<u@elsewhere.example>\r\n'
                         b'RCPT TO:<u@example.org>\r\nDATA\r\n' + BODY))
    check(got[:3], [b'250 ok'] * 3)
    check(h.q.envelope, want)


def test_localiphost_before_rcpthosts():
    h = Harness(localiphost=b'example.org', ipme=IPME)
    got = replies(h.feed(b'MAIL FROM:<a@b>\r\nRCPT TO:<u@[127.0.0.1]>\r\n'
                         b'DATA\r\n' + BODY))
    check(got[1], b'250 ok')
    check(h.q.envelope, [b'Fa@b', b'Tu@example.org'])


@pytest.mark.parametrize('sender,want', [
    (b'spammer@bad.example', b'553 sorry, your envelope sender is in my'
                             b' badmailfrom list (#5.7.1)'),
    (b'x@Worse.Example', b'553 sorry, your envelope sender is in my'
                         b' badmailfrom list (#5.7.1)'),
    (b'good@bad.example', b'250 ok'),
])
def test_badmailfrom(sender, want):
    h = Harness(badmailfrom=BMF)
    got = replies(h.feed(b'MAIL FROM:<' + sender + b'>\r\n'
                         b'RCPT TO:<u@example.org>\r\n'))
    check(got, [b'250 ok', want])


@pytest.mark.parametrize('damage', [b'short', cdb.make([(b'b.example', b'')])[:2060]])
def test_a_damaged_morercpthosts_defers_only_what_needs_it(tmp_path, damage):
    """As qmail's rcpthosts(), which opens the cdb at the start and reads
    it at a lookup: mail for the domains of rcpthosts, and from a relay
    client, is taken; a recipient that needs the file gets 421.  A
    damaged file refused every connection with 421."""
    ctl = write_controls(tmp_path, {'me': b'm', 'rcpthosts': b'example.org\n',
                                    'morercpthosts.cdb': damage})
    config = smtpd.load_config(ctl, {})
    for peer, rcpts, want in (
            (smtpd.Peer(), [b'u@example.org', b'u@b.example'],
             [b'250 ok', b'250 ok', b'421 unable to read controls (#4.3.0)']),
            (smtpd.Peer(relayclient=b''), [b'u@b.example'], [b'250 ok', b'250 ok'])):
        s = smtpd.Session(config.copy(), peer, lambda: FakeQueue(''), NOW)
        got = replies(s.feed(b'MAIL FROM:<a@b>\r\n' + b''.join(
            b'RCPT TO:<%s>\r\n' % r for r in rcpts), NOW))
        check(got, want)


def test_morercpthosts_unreadable():
    class Broken:
        def __contains__(self, key):
            raise cdb.CdbError('cdb file truncated')
    h = Harness(morercpthosts=Broken())
    got = replies(h.feed(b'MAIL FROM:<a@b>\r\nRCPT TO:<u@x.example>\r\nNOOP\r\n'))
    check(got, [b'250 ok', b'421 unable to read controls (#4.3.0)'])
    assert h.session.flagclosed


# -- DATA ------------------------------------------------------------------------

def test_message_and_received_line():
    h = Harness(peer=smtpd.Peer(remoteip=b'192.48.96.5',
                                remotehost=b'relay1.uu.net', remoteinfo=b'7',
                                local=b'silverton.berkeley.edu'))
    got = h.feed(b'HELO uunet.uu.net\r\n' + ENVELOPE + b'DATA\r\n' + BODY)
    check(replies(got)[-2:], [b'354 go ahead', b'250 ok %d qp 4242' % NOW])
    check(bytes(h.q.message),
          b'Received: from relay1.uu.net (HELO uunet.uu.net) (7@192.48.96.5)\n'
          b'  by silverton.berkeley.edu with SMTP; 26 Sep 1995 04:46:54 -0000\n'
          b'Subject: x\n\nhi\n')
    check(h.q.envelope, [b'Fa@b.example', b'Tu@example.org'])
    assert h.q.queued


@pytest.mark.parametrize('peer,helo,want', [
    (dict(), None,
     b'Received: from unknown (1.2.3.4)\n'),
    (dict(remotehost=b'client.example'), b'other.example',
     b'Received: from client.example (HELO other.example) (1.2.3.4)\n'),
    (dict(remotehost=b'client.example'), b'',
     b'Received: from client.example (HELO ) (1.2.3.4)\n'),
    (dict(remotehost=b'a b\xff(c)', remoteinfo=b'us er;'), b'x y\r\x00<z>',
     b'Received: from a?b??c? (HELO x?y???z?) (us?er?@1.2.3.4)\n'),
    (dict(remoteinfo=b''), None,
     b'Received: from unknown (@1.2.3.4)\n'),
])
def test_received(peer, helo, want):
    p = smtpd.Peer(remoteip=b'1.2.3.4', local=b'mx.example', **peer)
    got = smtpd.received(p, helo, NOW)
    check(got, want + b'  by mx.example with SMTP; 26 Sep 1995 04:46:54 -0000\n')


def test_received_helo_matches_remotehost_case_insensitively():
    h = Harness(peer=smtpd.Peer(remoteip=b'1.2.3.4', remotehost=b'c.example'))
    h.feed(b'HELO C.EXAMPLE\r\n' + ENVELOPE + b'DATA\r\n' + BODY)
    assert h.q.message.startswith(b'Received: from c.example (1.2.3.4)\n')


# Blast alone: DATA bytes -> (message, state).
@pytest.mark.parametrize('data,want,state', [
    (b'a\r\nb\r\n.\r\n', b'a\nb\n', END),
    (b'.\r\n', b'', END),
    (b'..\r\n.\r\n', b'.\n', END),
    (b'..x\r\n...\r\n.\r\n', b'.x\n..\n', END),
    (b'.x\r\n.\r\n', b'x\n', END),
    (b'a.\r\n.b\r\n.\r\n', b'a.\nb\n', END),
    (b'.\rx\r\n.\r\n', b'.\rx\n', END),         # qmail keeps this dot
    (b'.\r\r\n.\r\n', b'.\r\n', END),
    (b'a\rb\r\n.\r\n', b'a\rb\n', END),         # lone CR kept
    (b'a\r\r\n.\r\n', b'a\r\n', END),
    (b'\r\n\r\n.\r\n', b'\n\n', END),
    (b'\x00\xff\x80\r\n.\r\n', b'\x00\xff\x80\n', END),     # 8-bit clean
    (b'a\r\n.\r\nMAIL', b'a\n', END),
    (b'a\nb\r\n.\r\n', b'', STRAYLF),
    (b'\n.\r\n', b'', STRAYLF),
    (b'a\r\n\n.\r\n', b'a\n', STRAYLF),
    (b'a\r\n.\n', b'a\n', STRAYLF),
    (b'a\r\n.\r\r\n', b'a\n.\r\n', MORE),
    (b'a\r\n..\n', b'a\n', STRAYLF),
    (b'abc', b'abc', MORE),
    (b'abc\r', b'abc', MORE),
    (b'abc\r\n.', b'abc\n', MORE),
])
def test_blast(data, want, state):
    b = Blast()
    out, used, got = b.feed(data)
    check((out, got), (want, state))
    if state == END:
        check(data[used:], b'MAIL' if data.endswith(b'MAIL') else b'')


@pytest.mark.parametrize('data', [
    b'a\r\nb\r\n.\r\n', b'..\r\n.\r\n', b'.\rx\r\n.\r\n', b'.\r\r\n.\r\n',
    b'a\r\r\n\r\n..x\r\n.\r\nNOOP\r\n', b'Received: x\r\n\r\nReceived: y\r\n.\r\n',
    b'a\r\nb\nc\r\n.\r\n',
])
def test_blast_split_anywhere(data):
    """Fed a byte at a time, Blast gives what it gives fed at once."""
    whole = Blast()
    want = whole.feed(data)
    b = Blast()
    out = b''
    used = 0
    for i in range(len(data)):
        o, u, state = b.feed(data[i:i + 1])
        out += o
        if state != MORE:
            used = i + u
            break
    check((state, b.hops), (want[2], whole.hops))
    if state != STRAYLF:        # after a bare LF the output is thrown away
        check(out, want[0])
    if state == END:
        check(used, want[1])


@pytest.mark.parametrize('header,hops', [
    (b'Received: a\r\n' * 99, 99),
    (b'Received: a\r\n' * 100, 100),
    (b'Delivered-To: a\r\n' * 50 + b'RECEIVED: b\r\n' * 50, 100),
    (b'received-spf: a\r\n' * 3, 3),              # qmail matches the prefix
    (b'X-Received: a\r\n' * 3, 0),
    (b'Receive: a\r\n' * 3, 0),
    (b'..Received: a\r\n', 0),
    (b'Subject: x\r\n\r\n' + b'Received: a\r\n' * 200, 0),   # body
    (b'Received: a\r\n\r\n' + b'Received: a\r\n' * 200, 1),
])
def test_hops_counted(header, hops):
    b = Blast()
    b.feed(header + b'\r\nbody\r\n.\r\n')
    check(b.hops, hops)


@pytest.mark.parametrize('count,want', [
    (99, b'250 ok %d qp 4242' % NOW),
    (100, b'554 too many hops, this message is looping (#5.4.6)'),
    (150, b'554 too many hops, this message is looping (#5.4.6)'),
])
def test_hops_reply(count, want):
    h = Harness()
    got = replies(h.feed(ENVELOPE + b'DATA\r\n' + b'Received: x\r\n' * count
                         + b'\r\nbody\r\n.\r\nNOOP\r\n'))
    check(got[-2:], [want, b'250 ok'])
    check(h.q.queued, count < 100)


@pytest.mark.parametrize('data', [
    b'Subject: x\n\nhi\r\n.\r\n',
    b'Subject: x\r\n\r\nhi\n.\n',
    b'Subject: x\r\n\nhi\r\n.\r\n',
])
def test_bare_lf_in_data(data):
    h = Harness()
    got = replies(h.feed(ENVELOPE + b'DATA\r\n' + data + b'QUIT\r\n'))
    check(got, [b'250 ok', b'250 ok', b'354 go ahead',
                b'451 See http://pobox.com/~djb/docs/smtplf.html.'])
    assert h.session.flagclosed
    check(h.session.exitcode, 1)
    assert h.q.flagfail and h.q.flagclosed, 'queue not failed and closed'
    check(h.q.envelope, [])


def test_pipelined_session_in_one_feed():
    h = Harness()
    data = (b'EHLO x\r\n' + ENVELOPE + b'DATA\r\n' + b'one\r\n.\r\n'
            + ENVELOPE + b'DATA\r\n' + b'..two\r\n.\r\nQUIT\r\n')
    got = replies(h.feed(data))
    ok = b'250 ok %d qp 4242' % NOW
    check(got[3:], [b'250 ok', b'250 ok', b'354 go ahead', ok,
                    b'250 ok', b'250 ok', b'354 go ahead', ok,
                    b'221 mx.example.org'])
    check([bytes(q.message).split(b'\n', 2)[2] for q in h.queues],
          [b'one\n', b'.two\n'])


@pytest.mark.parametrize('body,want,queued', [
    (b'x' * 98 + b'\r\n', b'250 ok %d qp 4242' % NOW, True),   # 99 stored
    (b'x' * 99 + b'\r\n', b'250 ok %d qp 4242' % NOW, True),   # 100 stored
    (b'x' * 100 + b'\r\n', b'552 sorry, that message size exceeds my'
                           b' databytes limit (#5.3.4)', False),
    (b'x\r\n' * 10000, b'552 sorry, that message size exceeds my'
                       b' databytes limit (#5.3.4)', False),
])
def test_databytes(body, want, queued):
    h = Harness(databytes=100)
    got = replies(h.feed(ENVELOPE + b'DATA\r\n', body, b'.\r\nNOOP\r\n'))
    check(got[-2:], [want, b'250 ok'])
    check(h.q.queued, queued)
    assert len(h.q.message) <= 100 + 200, 'kept %d bytes' % len(h.q.message)


@pytest.mark.parametrize('mail,want', [
    (b'MAIL FROM:<a@b> SIZE=100\r\n', b'250 ok'),
    (b'MAIL FROM:<a@b> SIZE=101\r\n', b'552 sorry, that message size exceeds'
                                      b' my databytes limit (#5.3.4)'),
    (b'MAIL FROM:<a@b> BODY=8BITMIME SIZE=99999999999999999999999\r\n',
     b'552 sorry, that message size exceeds my databytes limit (#5.3.4)'),
])
def test_mail_size_parameter(mail, want):
    h = Harness(databytes=100)
    got = replies(h.feed(mail + b'RCPT TO:<u@example.org>\r\n'))
    check(got[0], want)
    check(got[1], b'250 ok' if want == b'250 ok' else b'503 MAIL first (#5.5.1)')


def test_mail_refused_for_size_ends_the_open_transaction():
    """A second MAIL refused for its SIZE: the recipients after it must
    not join the transaction the client left open (they were queued with
    the old sender and the old recipients)."""
    h = Harness(databytes=100)
    got = replies(h.feed(b'MAIL FROM:<old@x>\r\nRCPT TO:<u@example.org>\r\n'
                         b'MAIL FROM:<new@x> SIZE=999999\r\nRCPT TO:<v@example.org>\r\n'
                         b'DATA\r\n'))
    check(got, [b'250 ok', b'250 ok',
                b'552 sorry, that message size exceeds my databytes limit (#5.3.4)',
                b'503 MAIL first (#5.5.1)', b'503 MAIL first (#5.5.1)'])
    assert not any(q.queued for q in h.queues)


def test_size_parameter_ignored_without_databytes():
    h = Harness()
    check(replies(h.feed(b'MAIL FROM:<a@b> SIZE=999999999999\r\n')), [b'250 ok'])


@pytest.mark.parametrize('status,want', [
    ('Zqq temporary problem (#4.3.0)', b'451 qq temporary problem (#4.3.0)'),
    ('Dqq permanent problem (#5.3.0)', b'554 qq permanent problem (#5.3.0)'),
    ('Zunable to exec qq (#4.3.0)', b'451 unable to exec qq (#4.3.0)'),
    ('Dsorry\r, no (#5.7.1)', b'554 sorry, no (#5.7.1)'),
])
def test_queue_status(status, want):
    h = Harness(status=status)
    got = replies(h.feed(ENVELOPE + b'DATA\r\n' + BODY))
    check(got[-1], want)
    check(h.q.envelope, [b'Fa@b.example', b'Tu@example.org'])


def test_queue_will_not_start():
    def newqueue():
        raise OSError(24, 'Too many open files')
    s = smtpd.Session(smtpd.Config(greeting=GREETING), smtpd.Peer(), newqueue, NOW)
    got = replies(s.feed(ENVELOPE + b'DATA\r\nNOOP\r\n', NOW))
    check(got, [b'250 ok', b'250 ok', b'451 qqt failure (#4.3.0)', b'250 ok'])


def test_disconnect_in_data_queues_nothing():
    h = Harness()
    h.feed(ENVELOPE + b'DATA\r\nSubject: x\r\n\r\nhalf a mess')
    check(h.session.eof(), b'')
    assert h.session.flagclosed
    assert h.q.flagfail and h.q.flagclosed, 'queue not failed and closed'
    check(h.q.envelope, [])
    check(h.session.exitcode, 1)


def test_timeout_in_data_queues_nothing():
    h = Harness()
    h.feed(ENVELOPE + b'DATA\r\nSubject: x\r\n')
    check(h.session.timeout(NOW + 1200), b'451 timeout (#4.4.2)\r\n')
    assert h.q.flagfail and h.q.flagclosed
    check(h.q.envelope, [])


def test_lifetime():
    h = Harness(lifetime=60)
    check(h.session.deadline, NOW + 60)
    check(h.feed(b'NOOP\r\n', now=NOW + 59), b'250 ok\r\n')
    check(h.feed(b'NOOP\r\n', now=NOW + 60), b'451 timeout (#4.4.2)\r\n')
    assert h.session.flagclosed
    check(Harness(lifetime=0).session.deadline, None)


# -- hostile clients -------------------------------------------------------------

@pytest.mark.parametrize('chunks', [
    [b'x' * 100000 + b'\r\nNOOP\r\n'],
    [b'MAIL FROM:<'] + [b'y' * 1000] * 100 + [b'>\r\nNOOP\r\n'],
    [b'x' * 999 + b'\r\nNOOP\r\n'],
    [b'x' * 998, b'x\r', b'\nNOOP\r\n'],
])
def test_long_line(chunks):
    h = Harness()
    got = b''
    for c in chunks:
        got += h.session.feed(c, NOW)
        assert len(h.session.linebuf) < smtpd.MAXCMDLINE, 'buffered %d' % len(
            h.session.linebuf)
    check(replies(got), [b'500 line too long (#5.5.2)', b'250 ok'])
    assert not h.session.flagclosed


@pytest.mark.parametrize('line,want', [
    (b'NOOP' + b' ' * 994 + b'\r\n', b'250 ok'),      # 998 + CR LF: fits
    (b'NOOP' + b' ' * 995 + b'\r\n', b'500 line too long (#5.5.2)'),
    (b'NOOP' + b' ' * 995 + b'\n', b'250 ok'),        # 1000 with the LF
])
def test_line_limit_edge(line, want):
    check(replies(Harness().feed(line)), [want])


@pytest.mark.parametrize('data,want', [
    (b'\0\0\0\r\n', [b'500 NUL in command (#5.5.2)']),
    (b'NOOP\0\r\n', [b'500 NUL in command (#5.5.2)']),
    (b'MAIL FROM:<a\0b@c>\r\n', [b'500 NUL in command (#5.5.2)']),
    (b'\xff\xfe\x80garbage\r\n', [b'502 unimplemented (#5.5.1)']),
])
def test_garbage(data, want):
    h = Harness()
    check(replies(h.feed(data)), want)


def test_binary_noise_never_raises():
    import random
    rnd = random.Random(5321)
    for _ in range(200):
        h = Harness(maxerrors=0)
        noise = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 3000)))
        data = ENVELOPE + b'DATA\r\n' + noise if rnd.random() < 0.3 else noise
        out = h.feed(data)
        assert out == b'' or out.endswith(b'\r\n')
        h.session.eof()
        for q in h.queues:
            assert q.flagclosed and not q.queued


@pytest.mark.parametrize('maxrcpt,count,accepted', [
    (3, 5, 3),
    (1000, 1001, 1000),
    (0, 1500, 1500),            # 0: no limit, as qmail
])
def test_too_many_recipients(maxrcpt, count, accepted):
    h = Harness(maxrcpt=maxrcpt, maxerrors=0)
    got = replies(h.feed(b'MAIL FROM:<a@b>\r\n'
                         + b'RCPT TO:<u@example.org>\r\n' * count
                         + b'DATA\r\n' + BODY))
    check(got.count(b'250 ok'), 1 + accepted)
    check(got.count(b'452 sorry, too many recipients (#4.5.3)'),
          count - accepted)
    check(len(h.q.envelope), 1 + accepted)


@pytest.mark.parametrize('maxerrors,data,want', [
    (3, b'FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n',
     [b'502 unimplemented (#5.5.1)'] * 3 + [b'421 too many errors (#4.7.0)']),
    (3, b'FOO\r\nNOOP\r\nRCPT TO:<u@x>\r\n\0\r\nNOOP\r\n',
     [b'502 unimplemented (#5.5.1)', b'250 ok', b'503 MAIL first (#5.5.1)',
      b'500 NUL in command (#5.5.2)', b'421 too many errors (#4.7.0)']),
    (2, b'MAIL FROM:<a@b>\r\nRCPT TO:<u@x.example>\r\nRCPT TO:<u@y.example>\r\n'
        b'NOOP\r\n',
     [b'250 ok'] + [b"553 sorry, that domain isn't in my list of allowed"
                    b" rcpthosts (#5.7.1)"] * 2
     + [b'421 too many errors (#4.7.0)']),
    (0, b'FOO\r\n' * 50 + b'NOOP\r\n', [b'502 unimplemented (#5.5.1)'] * 50
     + [b'250 ok']),
])
def test_too_many_errors(maxerrors, data, want):
    h = Harness(maxerrors=maxerrors)
    check(replies(h.feed(data)), want)
    check(h.session.flagclosed, maxerrors != 0)


# -- configuration -----------------------------------------------------------

def write_controls(tmp_path, files):
    ctl = tmp_path / 'control'
    ctl.mkdir()
    for name, data in files.items():
        (ctl / name).write_bytes(data)
    return control.Controls(str(ctl))


@pytest.mark.parametrize('files,env,attr,want', [
    ({'me': b'me.example\n'}, {}, 'greeting', b'me.example'),
    ({'me': b'me.example', 'smtpgreeting': b'mx.example hi  \n'}, {},
     'greeting', b'mx.example hi'),
    ({'me': b'me.example'}, {}, 'localiphost', b'me.example'),
    ({'smtpgreeting': b'g'}, {}, 'localiphost', None),
    ({'me': b'm', 'localiphost': b'lip.example'}, {}, 'localiphost',
     b'lip.example'),
    ({'me': b'm'}, {}, 'rcpthosts', None),
    ({'me': b'm', 'rcpthosts': b'A.example\n#c\n\n.B.example\n'}, {},
     'rcpthosts', frozenset([b'a.example', b'.b.example'])),
    ({'me': b'm', 'rcpthosts': b''}, {}, 'rcpthosts', frozenset()),
    ({'me': b'm', 'badmailfrom': b'X@Y.example\n@Z.example\n'}, {},
     'badmailfrom', frozenset([b'x@y.example', b'@z.example'])),
    ({'me': b'm'}, {}, 'databytes', 0),
    ({'me': b'm', 'databytes': b'5000\n'}, {}, 'databytes', 5000),
    ({'me': b'm', 'databytes': b'5000\n'}, {b'DATABYTES': b'0'}, 'databytes', 0),
    ({'me': b'm'}, {b'DATABYTES': b'77k'}, 'databytes', 77),
    ({'me': b'm', 'databytes': b'5'}, {b'DATABYTES': b'x'}, 'databytes', 0),
    ({'me': b'm'}, {}, 'timeout', 1200),
    ({'me': b'm', 'timeoutsmtpd': b'0'}, {}, 'timeout', 1),
    ({'me': b'm', 'timeoutsmtpd': b'30'}, {}, 'timeout', 30),
    ({'me': b'm'}, {}, 'maxrcpt', 1000),
    ({'me': b'm', 'maxrcptsmtpd': b'50'}, {}, 'maxrcpt', 50),
    ({'me': b'm'}, {}, 'maxerrors', 20),
    ({'me': b'm', 'maxerrorssmtpd': b'0'}, {}, 'maxerrors', 0),
    ({'me': b'm'}, {}, 'lifetime', 3600),
    ({'me': b'm', 'lifetimesmtpd': b'600'}, {}, 'lifetime', 600),
    ({'me': b'm', 'timeoutsmtpd': b'9999999999'}, {}, 'timeout', control.SECONDS_MAX),
    ({'me': b'm', 'lifetimesmtpd': b'2147483647'}, {}, 'lifetime', control.SECONDS_MAX),
])
def test_load_config(tmp_path, files, env, attr, want):
    config = smtpd.load_config(write_controls(tmp_path, files), env)
    check(getattr(config, attr), want)


def test_load_config_morercpthosts(tmp_path):
    ctl = write_controls(tmp_path, {
        'me': b'm', 'rcpthosts': b'a.example\n',
        'morercpthosts.cdb': cdb.make([(b'b.example', b'')])})
    config = smtpd.load_config(ctl, {})
    assert b'b.example' in config.morercpthosts
    # Without rcpthosts, qmail never opens morercpthosts.cdb.
    (tmp_path / 'control' / 'rcpthosts').unlink()
    check(smtpd.load_config(ctl, {}).morercpthosts, None)


@pytest.mark.parametrize('files,exc', [
    ({}, LookupError),                                  # neither me nor greeting
])
def test_load_config_refuses(tmp_path, files, exc):
    with pytest.raises(exc):
        smtpd.load_config(write_controls(tmp_path, files), {})


@pytest.mark.parametrize('env,want', [
    ({}, (b'unknown', b'unknown', None, b'unknown', None)),
    ({b'TCPREMOTEIP': b'1.2.3.4', b'TCPREMOTEHOST': b'h', b'TCPREMOTEINFO': b'i',
      b'TCPLOCALIP': b'5.6.7.8', b'RELAYCLIENT': b''},
     (b'1.2.3.4', b'h', b'i', b'5.6.7.8', b'')),
    ({b'TCPLOCALIP': b'5.6.7.8', b'TCPLOCALHOST': b'mx', b'TCPREMOTEHOST': b''},
     (b'unknown', b'', None, b'mx', None)),
])
def test_peer_env(env, want):
    p = smtpd.peer_env(env)
    check((p.remoteip, p.remotehost, p.remoteinfo, p.local, p.relayclient), want)


def test_local_ips():
    ips = smtpd_addr.local_ips()
    assert b'\0\0\0\0' in ips
    assert all(len(ip) == 4 for ip in ips)


# -- the shell, in this process ------------------------------------------------

def serve_pipes(config, writer, checker=None, then=None, tick=True):
    """serve() over pipes; writer(fd, done) plays the client in a thread
    until done is set.  then(), if given, runs once the session is made,
    before it is served."""
    rin, win = os.pipe()
    rout, wout = os.pipe()
    done = threading.Event()
    s = smtpd.Session(config, smtpd.Peer(), FakeQueue, time.time(), checker=checker,
                      tick=time.monotonic() if tick else None)
    if then is not None:
        then()
    client = threading.Thread(target=writer, args=(win, done), daemon=True)
    client.start()
    try:
        code = smtpd.serve(s, rin, wout)
    finally:
        done.set()
        client.join(10)
    os.close(wout)
    out = b''
    while True:
        chunk = os.read(rout, 65536)
        if not chunk:
            break
        out += chunk
    for fd in (rin, rout):
        os.close(fd)
    return code, out


def test_serve_read_timeout():
    def silent(fd, done):
        done.wait(30)
        os.close(fd)
    code, out = serve_pipes(smtpd.Config(greeting=GREETING, timeout=1), silent)
    check((code, out), (1, b'220 mx.example.org ESMTP\r\n451 timeout (#4.4.2)\r\n'))


@pytest.mark.parametrize('tick', [True, False])
def test_serve_cuts_off_a_dripping_client(tick):
    """A byte every 0.1 s never trips timeoutsmtpd (2 s); lifetime does,
    on the clock the session was made with (one made without a tick:
    the wall clock's, never mixed with the monotonic one)."""
    def drip(fd, done):
        while not done.wait(0.1):
            os.write(fd, b'N')
        os.close(fd)
    code, out = serve_pipes(smtpd.Config(greeting=GREETING, timeout=2,
                                         lifetime=1), drip, tick=tick)
    check((code, out), (1, b'220 mx.example.org ESMTP\r\n451 timeout (#4.4.2)\r\n'))


def test_lifetime_counts_the_seconds_lasted_not_the_wall_clock():
    """lifetimesmtpd is qmail's alarm(): the wall clock stepped two hours
    forward (NTP, a VM resumed) no longer ends a live session at once,
    nor does a step back let one run on past its lifetime."""
    s = smtpd.Session(smtpd.Config(greeting=GREETING, lifetime=60), smtpd.Peer(),
                      FakeQueue, NOW, tick=1000.0)
    check(s.deadline, 1060.0)
    check(s.feed(b'NOOP\r\n', NOW + 7200, 1001.0), b'250 ok\r\n')
    check(s.feed(b'NOOP\r\n', NOW - 7200, 1060.0), b'451 timeout (#4.4.2)\r\n')


@pytest.mark.parametrize('when', ['at the start', 'during the AUTH check'])
def test_serve_takes_the_deadline_and_the_auth_pause_from_a_clock_that_never_steps(
        monkeypatch, when):
    """The shell's clock for lifetimesmtpd and authdelaysmtpd: a step of
    the wall clock changes neither.  (Two hours forward once the session
    began, it got 451 timeout at its next line; an hour back while the
    password was checked, the 535 waited all of timeoutsmtpd.)"""
    real = time.time

    def step(seconds):
        monkeypatch.setattr(time, 'time', lambda: real() + seconds)

    class Refuse:
        def challenge(self):
            return b'<1.2@mx.example.org>'

        def check(self, creds):
            if when == 'during the AUTH check':
                step(-3600)
            return smtpd_auth.AUTH_BAD

    def client(fd, done):
        os.write(fd, b'EHLO x\r\nAUTH PLAIN AGpvZQBwYXNz\r\nNOOP\r\nQUIT\r\n')
        done.wait(30)
        os.close(fd)
    began = time.monotonic()
    code, out = serve_pipes(
        smtpd.Config(greeting=GREETING, timeout=20, lifetime=60, authdelay=0.2,
                     flagauthplain=True),
        client, checker=Refuse(),
        then=lambda: step(7200) if when == 'at the start' else None)
    lines = replies(out)
    assert time.monotonic() - began < 10, lines
    assert lines[-3:] == [b'535 authentication failed (#5.7.8)', b'250 ok',
                          b'221 mx.example.org'], lines
    assert code == 0


def test_serve_quit():
    def client(fd, done):
        os.write(fd, b'HELO x\r\nQUIT\r\n')
        done.wait(30)
        os.close(fd)
    code, out = serve_pipes(smtpd.Config(greeting=GREETING), client)
    check((code, out), (0, b'220 mx.example.org ESMTP\r\n250 mx.example.org\r\n'
                           b'221 mx.example.org\r\n'))


# -- the real program ----------------------------------------------------------

FAKEQ = """#!/bin/sh
cat > "{d}/message"
cat 0<&1 1>"{d}/envelope"
exit 0
"""


@pytest.fixture
def qmailhome(tmp_path):
    home = tmp_path / 'home'
    (home / 'control').mkdir(parents=True)
    (home / 'control' / 'me').write_bytes(b'mx.example.org\n')
    (home / 'control' / 'rcpthosts').write_bytes(b'example.org\n')
    out = tmp_path / 'out'
    out.mkdir()
    fakeq = tmp_path / 'fakeq'
    fakeq.write_text(FAKEQ.format(d=out))
    fakeq.chmod(0o755)
    return home, fakeq, out


def run_smtpd(home, fakeq, stdin, **env):
    base = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT,
            'QMAILQUEUE': str(fakeq), 'TCPREMOTEIP': '192.0.2.7',
            'TCPLOCALHOST': 'mx.example.org'}
    base.update(env)
    code = main_code('smtpd', home)
    return subprocess.run([sys.executable, '-c', code], input=stdin,
                          capture_output=True, env=base, timeout=60)


def test_program_receives_a_message(qmailhome):
    home, fakeq, out = qmailhome
    r = run_smtpd(home, fakeq,
                  b'EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n'
                  b'RCPT TO:<u@elsewhere.example>\r\nRCPT TO:<u@example.org>\r\n'
                  b'DATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n')
    # the session's log line (control/logsmtpd), nothing else
    assert re.match(rb'qmail-smtpd: pid \d+ from 192\.0\.2\.7 helo \S+ mail <[^>]*> '
                    rb'rcpt .*: 250 ok \d+ qp \d+\n$', r.stderr), r.stderr
    check(r.returncode, 0)
    got = replies(r.stdout)
    check(got[:8], [b'220 mx.example.org ESMTP', b'250-mx.example.org',
                    b'250-PIPELINING', b'250 8BITMIME', b'250 ok',
                    b"553 sorry, that domain isn't in my list of allowed"
                    b" rcpthosts (#5.7.1)", b'250 ok', b'354 go ahead'])
    assert re.fullmatch(rb'250 ok \d+ qp \d+', got[8]), got[8]
    check(got[9:], [b'221 mx.example.org'])
    message = (out / 'message').read_bytes()
    assert re.fullmatch(
        rb'Received: from unknown \(HELO client\.example\) \(192\.0\.2\.7\)\n'
        rb'  by mx\.example\.org with SMTP; \d+ \w\w\w \d{4} '
        rb'\d\d:\d\d:\d\d -0000\nSubject: hi\n\n\.dot\n', message), message
    check((out / 'envelope').read_bytes(), b'Fa@b.example\0Tu@example.org\0\0')


@pytest.mark.parametrize('lifetime', ['2147483647', '4294967296', '99999999999'])
def test_program_takes_forever_as_lifetimesmtpd_from_the_environment(qmailhome, lifetime):
    """2147483647, qmail's usual "forever", in a tcp.smtp rule: the alarm
    overflowed a C int and every session of that rule got "421 internal
    error".  Capped as control/lifetimesmtpd is."""
    home, fakeq, out = qmailhome
    r = run_smtpd(home, fakeq, b'HELO x\r\nQUIT\r\n', LIFETIMESMTPD=lifetime)
    check((r.returncode, replies(r.stdout)),
          (0, [b'220 mx.example.org ESMTP', b'250 mx.example.org',
               b'221 mx.example.org']))


def test_program_with_an_empty_queue_program_defers_the_message(qmailhome):
    """QMAILQUEUE set to nothing (a tcprules slip) cannot be run: 451, as
    qmail says it, and the session goes on (it ended with 421 internal
    error and a traceback's last line in the log)."""
    home, fakeq, out = qmailhome
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT, 'QMAILQUEUE': '',
           'TCPREMOTEIP': '192.0.2.7', 'TCPLOCALHOST': 'mx.example.org'}
    # home as the installed one (qmail-queue is then spawned directly)
    code = ('import sys; from qmail.lib import auto; auto.QMAIL = %r; '
            'from qmail import smtpd; sys.exit(smtpd.main([]))' % str(home))
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, env=env,
                       timeout=60, input=b'HELO x\r\nMAIL FROM:<a@b.example>\r\n'
                       b'RCPT TO:<u@example.org>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n'
                       b'.\r\nNOOP\r\nQUIT\r\n')
    check((r.returncode, replies(r.stdout)[4:]),
          (0, [b'354 go ahead', b'451 unable to exec qq (#4.3.0)', b'250 ok',
               b'221 mx.example.org']))
    assert b'internal' not in r.stderr, r.stderr


@pytest.mark.parametrize('dialogue, result', [
    (b'HELO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n'
     b'Subject: x\r\n\r\nbare\nLF\r\n.\r\n',
     b'mail <a@b.example> rcpt u@example.org: 451 See http://pobox.com/~djb/docs/smtplf.html.'),
    (b'HELO x\r\n' + b'FOO\r\n' * 30, b'mail - rcpt -: 421 too many errors (#4.7.0)'),
    (b'HELO x\r\nMAIL FROM:<a@b.example>\r\n', b'mail <a@b.example> rcpt -: client gone'),
    (b'HELO x\r\nQUIT\r\n', b'mail - rcpt -: QUIT'),
])
def test_program_logs_who_ended_the_session(qmailhome, dialogue, result):
    """The log said "client gone" when the server had closed the session
    (a bare LF, too many errors, a timeout): the admin chasing a sender's
    failures saw the wrong cause."""
    home, fakeq, out = qmailhome
    (home / 'control' / 'logsmtpd').write_bytes(b'1\n')
    r = run_smtpd(home, fakeq, dialogue)
    assert r.stderr.splitlines()[-1].endswith(b' helo x ' + result), r.stderr


def test_program_takes_forever_as_a_timeout(qmailhome):
    """2147483647 (qmail's "forever") as timeoutsmtpd and lifetimesmtpd:
    poll() in milliseconds and alarm() overflowed, and every session
    ended at its greeting with "421 internal error"."""
    home, fakeq, out = qmailhome
    for name in ('timeoutsmtpd', 'lifetimesmtpd'):
        (home / 'control' / name).write_bytes(b'2147483647\n')
    r = run_smtpd(home, fakeq, b'HELO x\r\nQUIT\r\n')
    check((r.returncode, replies(r.stdout)),
          (0, [b'220 mx.example.org ESMTP', b'250 mx.example.org', b'221 mx.example.org']))


@pytest.mark.parametrize('how', ['inetd', 'stderr_to_stdout'])
def test_no_log_line_reaches_the_client(qmailhome, how):
    """Under inetd fds 0, 1 and 2 are the connection, and "sendmail -bs
    2>&1" gives one pipe: qmail's qmail-smtpd says nothing but replies
    there, and the log line (control/logsmtpd) would reach the client as
    a bogus reply, before the real 250 of a message it had queued."""
    import socket
    home, fakeq, out = qmailhome
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT, 'QMAILQUEUE': str(fakeq),
           'TCPREMOTEIP': '192.0.2.7', 'TCPLOCALHOST': 'mx.example.org'}
    code = main_code('smtpd', home)
    dialogue = (b'HELO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@example.org>\r\n'
                b'DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n')
    if how == 'inetd':
        ours, theirs = socket.socketpair()
        with ours, theirs:
            proc = subprocess.Popen([sys.executable, '-c', code], stdin=theirs,
                                    stdout=theirs, stderr=theirs, env=env)
            theirs.close()
            ours.sendall(dialogue)
            ours.settimeout(60)
            got = b''
            while True:
                chunk = ours.recv(65536)
                if not chunk:
                    break
                got += chunk
            proc.wait(timeout=60)
    else:
        proc = subprocess.run([sys.executable, '-c', code], input=dialogue,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env, timeout=60)
        got = proc.stdout
    assert proc.returncode == 0
    assert (out / 'envelope').read_bytes() == b'Fa@b.example\0Tu@example.org\0\0'
    assert b'qmail-smtpd:' not in got, got
    assert all(re.match(rb'\d\d\d[ -]', line) for line in got.split(b'\r\n')[:-1]), got


def test_program_as_sendmail_bs(qmailhome):
    """sendmail -bs: RELAYCLIENT='' and DATABYTES=0, any recipient."""
    home, fakeq, out = qmailhome
    (home / 'control' / 'databytes').write_bytes(b'10\n')
    r = run_smtpd(home, fakeq,
                  b'HELO x\r\nMAIL FROM:<me@here>\r\nRCPT TO:<u@far.example>\r\n'
                  b'DATA\r\n' + b'long body line\r\n' * 10 + b'.\r\nQUIT\r\n',
                  RELAYCLIENT='', DATABYTES='0')
    check(r.returncode, 0)
    assert re.search(rb'\r\n250 ok \d+ qp \d+\r\n221 ', r.stdout), r.stdout
    check((out / 'envelope').read_bytes(), b'Fme@here\0Tu@far.example\0\0')


def test_program_disconnect_in_data(qmailhome):
    home, fakeq, out = qmailhome
    r = run_smtpd(home, fakeq, b'MAIL FROM:<a@b>\r\nRCPT TO:<u@example.org>\r\n'
                               b'DATA\r\nSubject: cut\r\n\r\nhalf')
    check(r.returncode, 1)
    check(replies(r.stdout)[-1], b'354 go ahead')
    # qmail-queue saw the message end but never an envelope: nothing queued.
    check((out / 'envelope').read_bytes(), b'')


def test_program_unreadable_me_is_421_whatever_else_is_there(qmailhome):
    """qmail's control_init reads me first: trouble with it is a 421 even
    when smtpgreeting and localiphost, the controls that default to it,
    are present (it was read only as their fallback, and the session
    went on)."""
    home, fakeq, out = qmailhome
    ctl = home / 'control'
    (ctl / 'smtpgreeting').write_bytes(b'greet.example ESMTP\n')
    (ctl / 'localiphost').write_bytes(b'mx.example.org\n')
    (ctl / 'me').unlink()
    (ctl / 'me').mkdir()                # EISDIR on read
    r = run_smtpd(home, fakeq, b'QUIT\r\n')
    check((r.returncode, r.stdout), (1, b'421 unable to read controls (#4.3.0)\r\n'))
    # the client sees the 421 alone; the log names the file and the reason
    assert re.fullmatch(rb'qmail-smtpd: pid \d+ from \S+: 421 unable to read controls '
                        rb'\(#4\.3\.0\): control/me: is a directory\n', r.stderr), r.stderr


def test_program_without_controls(tmp_path):
    (tmp_path / 'control').mkdir()
    r = run_smtpd(tmp_path, '/nonexistent', b'QUIT\r\n')
    check((r.returncode, r.stdout), (1, b'421 unable to read controls (#4.3.0)\r\n'))
    assert r.stderr.endswith(b': 421 unable to read controls (#4.3.0): '
                             b'no control/smtpgreeting and no control/me\n'), r.stderr


def test_program_as_module_never_tracebacks(tmp_path):
    """python -m qmail.smtpd runs in auto.QMAIL, whatever it holds here:
    a greeting or a 421, never a traceback."""
    r = subprocess.run([sys.executable, '-m', 'qmail.smtpd'],
                       input=b'QUIT\r\n', capture_output=True, cwd=str(tmp_path),
                       env={'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT},
                       timeout=60)
    assert all(line.startswith(b'qmail-smtpd: pid ') for line in r.stderr.splitlines()), r.stderr
    assert r.stdout[:4] in (b'220 ', b'421 '), r.stdout


class LineByLine(Blast):
    BULK = False


def fed_in_cuts(cls, data: bytes, most: int) -> tuple:
    """What a cls() makes of data fed in pieces of 1 to most bytes (the
    cuts drawn from data itself, so the same for every class): output
    (None after a bare LF), state, bytes used at the end, hops, and the
    state left (in header, carry, at line start)."""
    import random
    cuts = random.Random(data)
    b = cls()
    out, pos, state, used = b'', 0, MORE, None
    while pos < len(data) and state == MORE:
        size = cuts.randrange(1, most)
        o, u, state = b.feed(data[pos:pos + size])
        out += o
        if state == END:
            used = pos + u
        pos += size
    return (out if state != STRAYLF else None, state, used, b.hops,
            b.flaginheader, b.carry, b.flagatstart if state == MORE else None)


def test_blast_bulk_body_same_as_line_by_line():
    """The body's bulk path (Blast._bulk) gives exactly what the loop
    line by line gives: random DATA streams, random cuts."""
    import random
    rnd = random.Random(4242)
    tokens = [b'a', b'xyz', b'.', b'..', b'\r', b'\n', b'\r\n', b'\r\n.', b'.\r',
              b'Received: x', b'\r\n\r\n', b'\r\n.\r\n', b'\r\n..\r\n', b'\r\r\n']
    for _ in range(3000):
        data = b'Subject: s\r\n\r\n' * rnd.randrange(2) + b''.join(
            rnd.choice(tokens) for _ in range(rnd.randrange(1, 30)))
        assert fed_in_cuts(Blast, data, 12) == fed_in_cuts(LineByLine, data, 12), data


def test_blast_bulk_header_same_as_line_by_line():
    """The header's bulk path (Blast._bulk_header): the same message,
    state and hop count as line by line, header-heavy streams cut into
    pieces of up to 200 bytes."""
    import random
    rnd = random.Random(2424)
    tokens = [b'Received: x\r\n', b'DELIVERED-To: y\r\n', b'received', b'X: y\r\n',
              b' folded\r\n', b'.', b'..', b'\r', b'\n', b'\r\n', b'\r\n\r\n', b'\r\n.\r\n',
              b'a', b'Delivered', b'\r\r\n', b'\r\n.Received: z\r\n']
    for _ in range(3000):
        data = b''.join(rnd.choice(tokens) for _ in range(rnd.randrange(1, 60)))
        assert fed_in_cuts(Blast, data, 200) == fed_in_cuts(LineByLine, data, 200), data


def test_blast_header_that_never_ends_is_taken_in_bulk(monkeypatch):
    """A message that never ends its header: its lines at C speed, not a
    Python turn each (one call here for 20,000 lines)."""
    calls = []
    real = Blast._line_end
    monkeypatch.setattr(Blast, '_line_end', lambda self: calls.append(1) or real(self))
    b = Blast()
    out, used, state = b.feed(b'Received: a\r\n' * 20000)
    assert (state, b.hops, b.flaginheader) == (MORE, 20000, True)
    assert out == b'Received: a\n' * 20000 and calls == []


def test_blast_bulk_declined_is_not_tried_again_in_the_same_piece(monkeypatch):
    """A piece the bulk path declines (a ".\\r" line at its end) goes line
    by line from there: trying the bulk path at every line would scan
    the rest of the piece each time, the square of its size."""
    calls = []
    real = Blast._bulk
    monkeypatch.setattr(Blast, '_bulk', lambda self, *a: calls.append(1) or real(self, *a))
    b = Blast()
    b.feed(b'Subject: x\r\n\r\n')
    out, used, state = b.feed(b'a\r\n' * 1000 + b'.\rx\r\n')
    assert state == MORE and out == b'a\n' * 1000 + b'.\rx\n'
    assert len(calls) == 1


# -- writing to the client ------------------------------------------------------

def test_replies_to_a_socket_go_without_a_poll_until_its_buffer_is_full():
    """FdChannel over a socket sends at once (MSG_DONTWAIT); once the
    peer's buffer is full it waits for room; everything arrives, in
    order, and the descriptor is left open and blocking."""
    import socket
    import threading
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    channel = smtpd.FdChannel(a.fileno(), a.fileno())
    assert channel.sock is not None
    data = bytes(range(256)) * 4096                 # 1 MB, far past the buffer
    got = bytearray()

    def reader():
        while len(got) < len(data):
            chunk = b.recv(65536)
            if not chunk:
                break
            got.extend(chunk)
            time.sleep(0.001)
    t = threading.Thread(target=reader)
    t.start()
    channel.write(b'250 ok\r\n', 5)
    channel.write(data[8:], 5)
    t.join(30)
    channel.close()
    assert bytes(got[:8]) == b'250 ok\r\n' and bytes(got[8:]) == data[8:]
    assert channel.sock is None and a.getblocking()
    a.sendall(b'x')                                 # still open
    assert b.recv(1) == b'x'
    a.close()
    b.close()


def test_a_socket_whose_peer_never_reads_times_out():
    import socket
    a, b = socket.socketpair()
    channel = smtpd.FdChannel(a.fileno(), a.fileno())
    with pytest.raises(smtpd.Gone, match='timeout'):
        channel.write(b'x' * (8 << 20), 1)
    channel.close()
    a.close()
    b.close()


def test_a_socket_whose_peer_is_gone_is_gone_without_sigpipe():
    import socket
    a, b = socket.socketpair()
    b.close()
    channel = smtpd.FdChannel(a.fileno(), a.fileno())
    with pytest.raises(smtpd.Gone):
        channel.write(b'250 ok\r\n', 5)
    channel.close()
    a.close()


def test_replies_to_a_pipe_are_written_as_before():
    """sendmail -bs: fd 1 a pipe, no socket object."""
    r, w = os.pipe()
    channel = smtpd.FdChannel(r, w)
    assert channel.sock is None
    channel.write(b'220 hi\r\n', 5)
    assert os.read(r, 100) == b'220 hi\r\n'
    channel.close()
    os.close(r)
    os.close(w)


def test_log_line_keeps_a_reply_readable_and_safe():
    """The transaction's log line ends with the reply, at most 200 bytes
    of it: spaces kept, control and 8-bit bytes (a QMAILQUEUE filter's
    text) each an underscore, and no CR LF."""
    h = Harness(status='Dbad\x01 bytes \xe9 here (#5.3.0)')
    h.session.pid = 1
    h.feed(b'HELO x\r\n', ENVELOPE, b'DATA\r\n', BODY)
    logs = h.session.take_logs()
    assert logs.endswith(b': 554 bad_ bytes __ here (#5.3.0)\n'), logs


def test_abandoned_transactions_are_logged_up_to_a_count_then_counted():
    """4000 MAIL/RCPT pairs (64 KB from the client) made 4000 log lines,
    a megabyte: enough to rotate multilog's whole history away."""
    h = Harness()
    h.session.pid = 1
    pairs = 4000
    got = replies(h.feed(b'HELO x\r\n' + b'MAIL FROM:<>\r\nRCPT TO:<u@example.org>\r\n' * pairs))
    assert got.count(b'250 ok') == 2 * pairs
    h.session.note_end(b'QUIT')
    lines = h.session.take_logs().splitlines()
    assert len(lines) == smtpd.LOGABANDONED + 1, lines[-3:]
    assert lines[0].endswith(b'mail <> rcpt u@example.org: new MAIL before DATA')
    assert lines[-1].endswith(b': %d more transactions abandoned, not logged'
                              % (pairs - smtpd.LOGABANDONED)), lines[-1]
    # A message still gets its line after them.
    h2 = Harness()
    h2.feed(b'HELO x\r\n' + b'MAIL FROM:<>\r\nRCPT TO:<u@example.org>\r\nRSET\r\n' * 30,
            ENVELOPE, b'DATA\r\n', BODY)
    h2.session.note_end(b'QUIT')
    lines = h2.session.take_logs().splitlines()
    assert len(lines) == smtpd.LOGABANDONED + 2, lines[-3:]
    assert b'rcpt u@example.org: 250 ok ' in lines[-2], lines[-2]
    assert lines[-1].endswith(b': 10 more transactions abandoned, not logged'), lines[-1]


def test_an_empty_recipient_is_logged_as_such_not_as_none():
    """RCPT TO:<> is taken, as qmail takes it; its line said "rcpt -",
    as if there were no recipient at all."""
    h = Harness()
    h.session.pid = 1
    h.feed(b'HELO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<>\r\nRCPT TO:<u@example.org>\r\n'
           b'DATA\r\n', BODY)
    line = h.session.take_logs()
    assert b' rcpt <> u@example.org: 250 ok ' in line, line


def test_program_without_descriptors_for_qmail_queue_says_451_before_354(qmailhome):
    """No pipes for qmail-queue (the descriptor table full): qmail's
    qmail_open fails and qmail-smtpd answers DATA with 451, before the
    client sends the message.  This one said 354, took the whole message
    and only then said 451."""
    home, fakeq, out = qmailhome
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT, 'QMAILQUEUE': str(fakeq),
           'TCPREMOTEIP': '192.0.2.7', 'TCPLOCALHOST': 'mx.example.org'}
    # Three descriptors free once qmail-smtpd is loaded: enough for its
    # control files, one short of qmail-queue's three pipes.
    code = ('import os, resource, sys; from qmail.lib import auto; auto.QMAIL = %r; '
            'from qmail import smtpd; '
            'top = max(int(fd) for fd in os.listdir("/proc/self/fd")); '
            'resource.setrlimit(resource.RLIMIT_NOFILE, (top + 4, '
            'resource.getrlimit(resource.RLIMIT_NOFILE)[1])); '
            'sys.exit(smtpd.main([]))' % str(home))
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, env=env,
                       timeout=60, input=b'HELO x\r\nMAIL FROM:<a@b.example>\r\n'
                       b'RCPT TO:<u@example.org>\r\nDATA\r\nNOOP\r\nQUIT\r\n')
    check((r.returncode, replies(r.stdout)[4:]),
          (0, [b'451 qqt failure (#4.3.0)', b'250 ok', b'221 mx.example.org']))
    assert not (out / 'envelope').exists()
