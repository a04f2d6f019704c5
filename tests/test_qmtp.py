"""QMTP and QMQP: netstrings, qmail-qmtpd, qmail-qmqpd, qmail-qmqpc.

Session tests use no socket and no process: a FakeQueue stands in for
qmail-queue and records what it was given.  The end-to-end tests run
each program in its own process, qmail-qmtpd and qmail-qmqpd with a
shell script as QMAILQUEUE, qmail-qmqpc against a small QMQP server in
a thread on 127.0.0.1.
"""

import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import main_code
from qmail import qmqpc, qmqpd, qmtpd, smtpd
from qmail.lib import control, netstring, rcptmap
from qmail.lib.cdb import CdbError
from qmail.lib.netstring import Incomplete, NetstringError, TooLong

NOW = 812090814                 # 26 Sep 1995 04:46:54 -0000
DATE = b'26 Sep 1995 04:46:54 -0000'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 60

R_NOGATEWAY = b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
R_CANTHANDLE = b"Dsorry, I can't handle that recipient (#5.1.3)"
R_SENDER = b'Dunacceptable sender (#5.1.7)'
R_SIZE = b'Dsorry, that message size exceeds my databytes limit (#5.3.4)'
R_HOPS = b'Dtoo many hops, this message is looping (#5.4.6)'
R_MAXRCPT = b'Zsorry, too many recipients (#4.5.3)'
R_QQT = b'Zqqt failure (#4.3.0)'
R_ADDRESSES = b"Dsorry, I can't accept addresses like that (#5.1.3)"
K_OK = b'Kok %d qp 4242' % NOW


def check(got, want):
    assert got == want, 'got %r\nwant %r' % (got, want)


def ns(payload: bytes) -> bytes:
    return b'%d:%s,' % (len(payload), payload)


def package(message: bytes, sender: bytes, recipients, mode=b'\n') -> bytes:
    """A QMTP package; mode is the message's first byte."""
    return (ns(mode + message) + ns(sender)
            + ns(b''.join(ns(r) for r in recipients)))


def packet(message: bytes, sender: bytes, recipients) -> bytes:
    """A QMQP packet."""
    return ns(ns(message) + ns(sender) + b''.join(ns(r) for r in recipients))


def responses(data: bytes) -> list:
    """The response netstrings' payloads."""
    return netstring.decode_all(data, 1 << 20, 1 << 20)


def pieces(data: bytes, size: int) -> list:
    return [data[i:i + size] for i in range(0, len(data), size)]


class FakeQueue:
    """Records what a server hands to qmail-queue."""

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
        assert not self.envelope, 'two senders'
        self.envelope.append(b'F' + sender)

    def to(self, recipient):
        assert self.envelope, 'recipient before sender'
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
    """A server session with FakeQueues; module is qmtpd or qmqpd."""

    def __init__(self, module=qmtpd, status='', peer=None, flagqqt=False,
                 now=NOW, tick=None, **config):
        if module is qmtpd:
            config.setdefault('rcpthosts', frozenset([b'example.org']))
        self.queues = []
        self.status = status
        self.flagqqt = flagqqt
        self.session = module.Session(module.Config(**config),
                                      peer or smtpd.Peer(), self.newqueue, now,
                                      tick=tick)

    def newqueue(self):
        if self.flagqqt:
            raise OSError('no qmail-queue')
        q = FakeQueue(self.status)
        self.queues.append(q)
        return q

    def feed(self, *chunks, now=NOW):
        """Every response to chunks, as the shell writes them: feed's,
        then take_replies' until it has nothing more."""
        out = []
        for c in chunks:
            got = self.session.feed(c, now)
            while got:
                out.append(got)
                got = self.session.take_replies()
        return b''.join(out)

    @property
    def q(self):
        assert len(self.queues) == 1, 'got %d queues, want 1' % len(self.queues)
        return self.queues[0]

    def check_queued(self, envelope):
        """envelope: one qmail-queue started, which queued the message
        with this envelope; None: none was started."""
        if envelope is None:
            check(self.queues, [])
        else:
            check(self.q.envelope, envelope)
            check(self.q.queued, True)

    def nothing_queued(self):
        for q in self.queues:
            assert not q.queued, 'queued %r' % bytes(q.message)
            assert q.flagclosed, 'qmail-queue left running'


def received(protocol=b'QMTP'):
    return (b'Received: from unknown (unknown)\n  by unknown with '
            + protocol + b'; ' + DATE + b'\n')


# -- netstrings ---------------------------------------------------------------

@pytest.mark.parametrize('payload,want', [
    (b'', b'0:,'),
    (b'hello world!', b'12:hello world!,'),
    (b'\0,:', b'3:\0,:,'),
])
def test_netstring_encode(payload, want):
    check(netstring.encode(payload), want)


@pytest.mark.parametrize('data,limit,want', [
    (b'0:,', 0, (b'', 3)),
    (b'12:hello world!,', 12, (b'hello world!', 16)),
    (b'3:abc,4:defg,', 10, (b'abc', 6)),
    (b'1:,,', 1, (b',', 4)),
])
def test_netstring_decode(data, limit, want):
    check(netstring.decode(data, limit), want)


@pytest.mark.parametrize('data,limit,error', [
    (b'', 10, Incomplete),
    (b'12', 100, Incomplete),
    (b'3:ab', 10, Incomplete),
    (b'3:abc', 10, Incomplete),
    (b':,', 10, NetstringError),          # a length needs a digit
    (b'01:a,', 10, NetstringError),       # no leading zero
    (b'00:,', 10, NetstringError),
    (b'-1:a,', 10, NetstringError),
    (b' 1:a,', 10, NetstringError),
    (b'1 :a,', 10, NetstringError),
    (b'1:ab', 10, NetstringError),        # no comma where it must be
    (b'1:a;', 10, NetstringError),
    (b'11:hello world,', 10, TooLong),
    (b'11', 10, TooLong),                 # refused before any payload
    (b'9' * 1000, 10 ** 9, TooLong),      # never reads a thousand digits
])
def test_netstring_decode_refuses(data, limit, error):
    with pytest.raises(error) as info:
        netstring.decode(data, limit)
    check(type(info.value), error)


def test_netstring_reader_refuses_early():
    """The digits alone are refused: nothing is read past them."""
    r = netstring.Reader(100)
    with pytest.raises(TooLong):
        r.feed(b'101')
    r = netstring.Reader(100)
    check(r.feed(b'10'), (2, b''))
    check(r.length, None)


@pytest.mark.parametrize('data', [
    b'0:,', b'12:hello world!,', b'5:\r\n\r\n\0,',
])
def test_netstring_reader_any_split(data):
    for size in range(1, len(data) + 1):
        r = netstring.Reader(100)
        got = b''
        for piece in pieces(data + b'rest', size):
            pos, chunk = r.feed(piece)
            got += chunk
            if r.done:
                break
        assert r.done, 'size %d: not done' % size
        check((size, got), (size, netstring.decode(data, 100)[0]))


@pytest.mark.parametrize('data,want', [
    (b'', []),
    (b'1:a,0:,2:bc,', [b'a', b'', b'bc']),
])
def test_netstring_decode_all(data, want):
    check(netstring.decode_all(data, 10, 10), want)


@pytest.mark.parametrize('data,error', [
    (b'1:a,2:b', NetstringError),
    (b'1:a,x', NetstringError),
    (b'1:a,' * 4, TooLong),               # more than maxcount
    (b'11:aaaaaaaaaaa,', TooLong),
])
def test_netstring_decode_all_refuses(data, error):
    with pytest.raises(error):
        netstring.decode_all(data, 10, 3)


# -- qmail-qmtpd: pure parts ----------------------------------------------------

@pytest.mark.parametrize('peer,protocol,want', [
    (smtpd.Peer(), b'QMTP', received()),
    (smtpd.Peer(remoteip=b'192.0.2.7', remotehost=b'client.example',
                remoteinfo=b'joe', local=b'mx.example.org'), b'QMTP',
     b'Received: from client.example (joe@192.0.2.7)\n'
     b'  by mx.example.org with QMTP; ' + DATE + b'\n'),
    (smtpd.Peer(remoteip=b'192.0.2.7', remotehost=b'evil\nhost (x)',
                remoteinfo=b'', local=b'mx'), b'QMQP',
     b'Received: from evil?host??x? (@192.0.2.7)\n'
     b'  by mx with QMQP; ' + DATE + b'\n'),
])
def test_received(peer, protocol, want):
    check(qmtpd.received(peer, protocol, NOW), want)


@pytest.mark.parametrize('message,want', [
    (b'a\r\nb\r\n', b'a\nb\n'),
    (b'a\rb\r\n', b'a\rb\n'),              # a lone CR stays
    (b'a\r\r\nb', b'a\r\nb'),              # CR CR LF: only the last pair goes
    (b'a\n', b'a\n'),                      # a bare LF stays
    (b'end\r', b'end\r'),                  # a final CR stays
    (b'\r\n\r\n', b'\n\n'),
    (b'8bit \xff\x00\r\n', b'8bit \xff\x00\n'),
])
def test_cr_mode_message(message, want):
    """However the message is cut, CR LF becomes LF and nothing else changes."""
    for size in range(1, len(message) + 2):
        h = Harness()
        data = package(message, b'a@b', [b'u@example.org'], mode=b'\r')
        got = h.feed(*pieces(data, size))
        check((size, responses(got)), (size, [K_OK]))
        check((size, bytes(h.q.message)), (size, received() + want))


@pytest.mark.parametrize('message', [
    b'', b'a\r\nb\r\n', b'\r\r\n\r', b'Subject: x\n\n\xff\xfe\0body\n',
])
def test_lf_mode_message_verbatim(message):
    h = Harness()
    got = h.feed(package(message, b'a@b', [b'u@example.org']))
    check(responses(got), [K_OK])
    check(bytes(h.q.message), received() + message)


@pytest.mark.parametrize('header,hops', [
    (b'Subject: x\n', 0),
    (b'Received: x\nreceived: y\nDELIVERED-To: z\nReceived-SPF: w\n', 4),
    (b'X-Received: x\n  Received: y\n', 0),
    (b'Subject: x\n\nReceived: in the body\n', 0),
])
def test_hopcount(header, hops):
    for size in (1, 3, len(header)):
        h = qmtpd.HopCount()
        for piece in pieces(header, size):
            h.feed(piece)
        check((size, h.hops), (size, hops))


def test_hopcount_any_cuts_same_as_counting_the_lines():
    """Whole lines at once (the bulk path) or a byte at a time: the count
    of the header's hop lines, up to its empty line."""
    import random
    rnd = random.Random(77)
    tokens = [b'Received: x\n', b'delivered-to: y\n', b'X: r\n', b' received\n', b'\n',
              b'RECEIVED', b'a', b'Delivered']
    for _ in range(2000):
        data = b''.join(rnd.choice(tokens) for _ in range(rnd.randrange(1, 40)))
        head = data.split(b'\n\n', 1)[0] if not data.startswith(b'\n') else b''
        lines = head.split(b'\n')
        if not data.startswith(b'\n') and b'\n\n' not in data:
            lines = lines[:-1]              # the last, unfinished, not yet counted
        want = sum(1 for line in lines if line.lower().startswith((b'received', b'delivered')))
        h = qmtpd.HopCount()
        for piece in pieces(data, rnd.randrange(1, 50)):
            h.feed(piece)
        assert h.hops == want, data


# -- qmail-qmtpd: the session ---------------------------------------------------

def test_one_package():
    h = Harness()
    got = h.feed(package(b'Subject: hi\n\nbody\n', b'a@b.example',
                         [b'u@example.org']))
    check(responses(got), [K_OK])
    check(bytes(h.q.message), received() + b'Subject: hi\n\nbody\n')
    check(h.q.envelope, [b'Fa@b.example', b'Tu@example.org'])
    assert h.q.queued
    assert not h.session.flagclosed


def test_several_packages_one_connection():
    """Three packages in a row, however cut: three messages, each with
    one response per recipient, in order."""
    data = (package(b'one\n', b'a@b', [b'u@example.org', b'v@example.org',
                                       b'w@example.org'])
            + package(b'two\r\n', b'', [b'x@example.org'], mode=b'\r')
            + package(b'three\n', b'c@d', [b'y@example.org', b'z@elsewhere']))
    want = [K_OK] * 4 + [K_OK, R_NOGATEWAY]
    for size in (1, 2, 5, 64, len(data)):
        h = Harness()
        check((size, responses(h.feed(*pieces(data, size)))), (size, want))
        check([bytes(q.message) for q in h.queues],
              [received() + b'one\n', received() + b'two\n',
               received() + b'three\n'])
        check([q.envelope for q in h.queues],
              [[b'Fa@b', b'Tu@example.org', b'Tv@example.org', b'Tw@example.org'],
               [b'F', b'Tx@example.org'],
               [b'Fc@d', b'Ty@example.org']])
        assert all(q.queued for q in h.queues)
        assert not h.session.flagclosed


def test_no_response_before_the_package_ends():
    data = package(b'hi\n', b'a@b', [b'u@example.org'])
    h = Harness()
    check(h.feed(data[:-1]), b'')
    check(responses(h.feed(data[-1:])), [K_OK])


LONG = b'x' * 990 + b'@example.org'       # 1002 bytes


@pytest.mark.parametrize('recipients,want,envelope', [
    ([b'u@example.org'], [K_OK], [b'Tu@example.org']),
    ([b'u@EXAMPLE.ORG'], [K_OK], [b'Tu@EXAMPLE.ORG']),
    ([b'postmaster'], [K_OK], [b'Tpostmaster']),        # no '@': local
    ([b'u@sub.example.org'], [R_NOGATEWAY], []),
    ([b'u@elsewhere.example', b'u@example.org', b'v@elsewhere.example'],
     [R_NOGATEWAY, K_OK, R_NOGATEWAY], [b'Tu@example.org']),
    ([b'u\0x@example.org', b'v@example.org'], [R_CANTHANDLE, K_OK],
     [b'Tv@example.org']),
    ([b'u\nBcc: x@example.org', b'u\r@example.org', b'v@example.org'],
     [R_CANTHANDLE, R_CANTHANDLE, K_OK], [b'Tv@example.org']),     # not qmail
    ([LONG, b'v@example.org'], [R_CANTHANDLE, K_OK], [b'Tv@example.org']),
    ([b'x' * 987 + b'@example.org'], [K_OK], [b'T' + b'x' * 987 + b'@example.org']),
    ([b'x' * 988 + b'@example.org'], [R_CANTHANDLE], []),
    ([b'u@example.org', b'u@example.org'], [K_OK, K_OK],
     [b'Tu@example.org', b'Tu@example.org']),
])
def test_recipients_each_get_a_response(recipients, want, envelope):
    h = Harness()
    got = responses(h.feed(package(b'hi\n', b'a@b', recipients)))
    check(got, want)
    h.check_queued([b'Fa@b'] + envelope if envelope else None)


@pytest.mark.parametrize('relayclient,recipients,want,envelope', [
    (b'', [b'u@far.example', b'v@example.org'], [K_OK, K_OK],
     [b'Tu@far.example', b'Tv@example.org']),
    (b'@relay', [b'u@far.example'], [K_OK], [b'Tu@far.example@relay']),
    # RELAYCLIENT's length counts towards the 1000 bytes
    (b'', [b'x' * 999], [K_OK], [b'T' + b'x' * 999]),
    (b'y', [b'x' * 999], [R_CANTHANDLE], []),
    (b'y', [b'x' * 998], [K_OK], [b'T' + b'x' * 998 + b'y']),
])
def test_relayclient(relayclient, recipients, want, envelope):
    h = Harness(peer=smtpd.Peer(relayclient=relayclient))
    check(responses(h.feed(package(b'hi\n', b'a@b', recipients))), want)
    h.check_queued([b'Fa@b'] + envelope if envelope else None)


@pytest.mark.parametrize('rcpthosts,more,recipient,want', [
    (None, None, b'u@anywhere.example', K_OK),   # no rcpthosts: all allowed
    (frozenset([b'.example.org']), None, b'u@sub.example.org', K_OK),
    (frozenset([b'example.org']), frozenset([b'other.example']),
     b'u@other.example', K_OK),
    (frozenset([b'example.org']), frozenset([b'other.example']),
     b'u@third.example', R_NOGATEWAY),
])
def test_rcpthosts(rcpthosts, more, recipient, want):
    h = Harness(rcpthosts=rcpthosts, morercpthosts=more)
    check(responses(h.feed(package(b'hi\n', b'a@b', [recipient]))), [want])


R_BMF = b'Dsorry, your envelope sender is in my badmailfrom list (#5.7.1)'
R_UNKNOWN = b'Dsorry, no mailbox here by that name (#5.1.1)'


@pytest.mark.parametrize('sender,want', [
    (b'spam@bad.example', R_BMF),
    (b'Spam@BAD.example', R_BMF),           # any case, as qmail-smtpd
    (b'joe@EVIL.example', R_BMF),           # @domain
    (b'joe@good.example', K_OK),
    (b'', K_OK),                            # a bounce
])
def test_badmailfrom(sender, want):
    """A sender in badmailfrom has every recipient refused, whatever else
    each would get; nothing is queued."""
    h = Harness(badmailfrom=frozenset([b'spam@bad.example', b'@evil.example']))
    got = responses(h.feed(package(b'hi\n', sender, [b'u@example.org', b'v@example.org'])))
    check(got, [want, want])
    h.check_queued([b'F' + sender, b'Tu@example.org', b'Tv@example.org']
                   if want == K_OK else None)


class FakeRcptMap:
    """Knows u@example.org; refuses the rest of example.org."""

    def __init__(self):
        self.asked = []

    def check(self, addr):
        self.asked.append(addr)
        if addr.lower().endswith(b'@example.org'):
            return rcptmap.ACCEPT if addr == b'u@example.org' else rcptmap.REJECT
        return rcptmap.UNKNOWN


def test_rcptcheck_refuses_unknown_local_recipients():
    rmap = FakeRcptMap()
    h = Harness(rcptmap=rmap)
    got = h.feed(package(b'hi\n', b'a@b', [b'u@example.org', b'nobody@example.org',
                                            b'x@elsewhere', b'u@example.org']))
    check(responses(got), [K_OK, R_UNKNOWN, R_NOGATEWAY, K_OK])
    check(h.q.envelope, [b'Fa@b', b'Tu@example.org', b'Tu@example.org'])
    check(rmap.asked, [b'u@example.org', b'nobody@example.org', b'u@example.org'])


R_BADSRS = b'Dsorry, that is no SRS address of mine, or it is too old (#5.1.1)'


def test_only_good_srs_addresses_at_the_srs_domain():
    """As qmail-smtpd: with control/srs_domain, a recipient there must be
    postmaster or a good SRS address of ours, whoever the client is; a
    bad one is refused now, not bounced later to a forged sender."""
    from qmail.lib import srs
    setting = srs.Srs(b'srs.example.org', [b's3'], rcpthosts=frozenset([b'example.org']))
    good = setting.forward(b'joe@far.example')
    old = srs.Srs(b"srs.example.org", [b"s3"]).forward(b"joe@far.example", time.time() - 40 * 86400)
    rcpts = [good, old, b'joe@srs.example.org', b'PostMaster@srs.example.org',
             b'u@example.org']
    h = Harness(rcpthosts=frozenset([b'example.org', b'srs.example.org']), srs=setting)
    got = h.feed(package(b'hi\n', b'a@b', rcpts))
    check(responses(got), [K_OK, R_BADSRS, R_BADSRS, K_OK, K_OK])
    check(h.q.envelope, [b'Fa@b', b'T' + good, b'TPostMaster@srs.example.org',
                         b'Tu@example.org'])
    h = Harness(srs=setting, peer=smtpd.Peer(relayclient=b''))
    got = h.feed(package(b'hi\n', b'a@b', [b'joe@srs.example.org', good]))
    check(responses(got), [R_BADSRS, K_OK])
    # No secret to check with: srsfilter decides later.
    h = Harness(srs=srs.Srs(b'srs.example.org', []), rcpthosts=frozenset([b'srs.example.org']))
    check(responses(h.feed(package(b'hi\n', b'', [b'x@srs.example.org']))), [K_OK])


def test_srs_is_read_only_where_set(tmp_path):
    ctl = tmp_path / 'control'
    ctl.mkdir()
    (ctl / 'me').write_text('example.org\n')
    assert qmtpd.read_config(control.Controls(str(ctl)).init(), {}).srs is None
    (ctl / 'srs_domain').write_text('srs.example.org\n')
    (ctl / 'srs_secrets').write_text('s3\n')
    setting = qmtpd.read_config(control.Controls(str(ctl)).init(), {}).srs
    assert setting.domain == b'srs.example.org'
    assert not setting.recipient_ok(b'joe@srs.example.org')


def test_rcptcheck_with_relayclient_asks_before_appending():
    """As qmail-smtpd: the map is asked for the address the client gave."""
    rmap = FakeRcptMap()
    h = Harness(rcptmap=rmap, peer=smtpd.Peer(relayclient=b'@relay'))
    got = h.feed(package(b'hi\n', b'a@b', [b'nobody@example.org', b'u@far.example']))
    check(responses(got), [R_UNKNOWN, K_OK])
    check(h.q.envelope, [b'Fa@b', b'Tu@far.example@relay'])
    check(rmap.asked, [b'nobody@example.org', b'u@far.example'])


def test_maxrcpt():
    """Past maxrcptqmtpd accepted recipients: Z, so the client retries;
    refused ones are not counted and keep their own response."""
    h = Harness(maxrcpt=2)
    got = h.feed(package(b'hi\n', b'a@b', [
        b'u@example.org', b'x@elsewhere', b'v@example.org', b'w@example.org',
        b'x@elsewhere']))
    check(responses(got), [K_OK, R_NOGATEWAY, K_OK, R_MAXRCPT, R_NOGATEWAY])
    check(h.q.envelope, [b'Fa@b', b'Tu@example.org', b'Tv@example.org'])


@pytest.mark.parametrize('databytes,mode,message,want', [
    (0, b'\n', b'x' * 100000, K_OK),
    (5, b'\n', b'12345', K_OK),
    (5, b'\n', b'123456', R_SIZE),
    (4, b'\r', b'a\r\nb\r\n', K_OK),                 # counted as stored
    (3, b'\r', b'a\r\nb\r\n', R_SIZE),
    (4, b'\r', b'abc\r', K_OK),                      # a final lone CR counts
    (3, b'\r', b'abc\r', R_SIZE),
])
def test_databytes(databytes, mode, message, want):
    h = Harness(databytes=databytes)
    data = package(message, b'a@b', [b'u@example.org', b'x@elsewhere'], mode)
    check(responses(h.feed(*pieces(data, 7))), [want, R_NOGATEWAY])
    h.check_queued([b'Fa@b', b'Tu@example.org'] if want == K_OK else None)


def test_databytes_after_qmail_queue_started():
    """Past HOLD bytes qmail-queue has started: an overflow after that
    fails it, and it was fed no more than databytes."""
    databytes = 2 * qmtpd.HOLD
    h = Harness(databytes=databytes)
    data = package(b'x' * (3 * qmtpd.HOLD), b'a@b', [b'u@example.org'])
    check(responses(h.feed(*pieces(data, 4096))), [R_SIZE])
    h.nothing_queued()
    assert len(h.q.message) <= len(received()) + databytes, len(h.q.message)


@pytest.mark.parametrize('sender,databytes,want', [
    (b'x' * 999, 0, K_OK),
    (b'x' * 1000, 0, R_SENDER),
    (b'x' * 100000, 0, R_SENDER),
    (b'a\0b', 0, R_SENDER),
    (b'a@b\nBcc: c@d', 0, R_SENDER),      # not qmail: a bounce's header
    (b'a\r@b', 0, R_SENDER),
    (b'x' * 1000, 1, R_SIZE),            # databytes wins, as qmail's order
])
def test_sender(sender, databytes, want):
    h = Harness(databytes=databytes)
    got = h.feed(package(b'hi\n', sender, [b'u@example.org', b'x@elsewhere']))
    check(responses(got), [want, R_NOGATEWAY])
    h.check_queued([b'F' + sender, b'Tu@example.org'] if want == K_OK else None)


def test_bad_sender_after_qmail_queue_started():
    """A message past HOLD has started qmail-queue before its sender
    came: a bad sender then reaches it empty, and it is failed."""
    h = Harness()
    got = h.feed(package(b'x' * (qmtpd.HOLD + 10), b'a\0b', [b'u@example.org']))
    check(responses(got), [R_SENDER])
    h.nothing_queued()
    check(h.q.envelope[0], b'F')


@pytest.mark.parametrize('hops,want', [(99, K_OK), (100, R_HOPS)])
def test_hops(hops, want):
    h = Harness()
    message = b'Received: x\n' * (hops - 1) + b'Delivered-To: y\n\nbody\n'
    got = h.feed(package(message, b'a@b', [b'u@example.org']))
    check(responses(got), [want])
    h.check_queued([b'Fa@b', b'Tu@example.org'] if want == K_OK else None)


def test_refused_packages_start_no_qmail_queue():
    """A relay attempt costs no qmail-queue per package (qmail started
    one for each), unless its message passes HOLD bytes; then the one
    started queues nothing."""
    h = Harness()
    got = h.feed(*[package(b'hi\n', b'a@b', [b'x@elsewhere'])] * 50,
                 package(b'\n', b'', []))
    check(responses(got), [R_NOGATEWAY] * 50)
    check(h.queues, [])
    got = h.feed(package(b'y' * (qmtpd.HOLD + 1), b'a@b', [b'x@elsewhere']))
    check(responses(got), [R_NOGATEWAY])
    check(len(h.queues), 1)
    h.nothing_queued()


def test_held_message_reaches_qmail_queue_whole():
    """Started at the first accepted recipient, qmail-queue gets the
    Received line, the message held so far, the sender, then the
    recipients, in that order (FakeQueue checks it)."""
    h = Harness()
    message = b'Subject: x\n\n' + b'z' * 1000 + b'\n'
    got = h.feed(*pieces(package(message, b'a@b', [b'x@elsewhere', b'u@example.org']), 13))
    check(responses(got), [R_NOGATEWAY, K_OK])
    check(bytes(h.q.message), received() + message)
    h.check_queued([b'Fa@b', b'Tu@example.org'])


@pytest.mark.parametrize('status,want', [
    ('Zqq temporary problem (#4.3.0)', b'Zqq temporary problem (#4.3.0)'),
    ('Dmail server permanently rejected message (#5.3.0)',
     b'Dmail server permanently rejected message (#5.3.0)'),
    ('Zsplit\r\nreply (#4.3.0)', b'Zsplitreply (#4.3.0)'),
])
def test_queue_answer_for_each_accepted(status, want):
    h = Harness(status=status)
    got = h.feed(package(b'hi\n', b'a@b', [b'u@example.org', b'x@elsewhere',
                                           b'v@example.org']))
    check(responses(got), [want, R_NOGATEWAY, want])


def test_queue_cannot_start():
    """Every recipient gets Z; the connection goes on."""
    h = Harness(flagqqt=True)
    got = h.feed(package(b'hi\n', b'a@b', [b'u@example.org', b'x@elsewhere']))
    check(responses(got), [R_QQT, R_NOGATEWAY])
    h.flagqqt = False
    check(responses(h.feed(package(b'hi\n', b'a@b', [b'u@example.org']))),
          [K_OK])


@pytest.mark.parametrize('recipients', [
    [], [b'x@elsewhere'], [b'u\0@example.org'],
])
def test_no_accepted_recipient_queues_nothing(recipients):
    h = Harness()
    got = responses(h.feed(package(b'hi\n', b'a@b', recipients)))
    check(len(got), len(recipients))
    h.nothing_queued()


BAD_PACKAGES = [
    (b'x', 'a length not a number'),
    (b'01:\n,', 'a leading zero'),
    (b':\n,', 'a length without digits'),
    (b'0:,', 'an empty message'),
    (b'1:x,', 'a message starting neither LF nor CR'),
    (b'2:\nab', 'a message without its comma'),
    (ns(b'\nhi') + b'3:a@b;', 'a sender without its comma'),
    (ns(b'\nhi') + ns(b'a@b') + b'x', 'a recipient list not a netstring'),
    (ns(b'\nhi') + ns(b'a@b') + ns(b'x'), 'a recipient not a netstring'),
    (ns(b'\nhi') + ns(b'a@b') + ns(b'5:ab'), 'a recipient cut by the list'),
    (ns(b'\nhi') + ns(b'a@b') + ns(ns(b'u@example.org') + b'0'),
     'a recipient list ending in a length'),
    (b'99999999999:', 'a message over MAXMESSAGE'),
    (b'9' * 100000, 'endless digits'),
    (ns(b'\nhi') + b'1048577:', 'a sender over MAXENVELOPE'),
    (ns(b'\nhi') + ns(b'a@b') + b'1048577:', 'a recipient list over MAXENVELOPE'),
]


@pytest.mark.parametrize('data,why', BAD_PACKAGES)
def test_bad_package_closes(data, why):
    """No response, nothing queued, exit 100, however the bytes come."""
    for size in (1, len(data)):
        h = Harness()
        got = h.feed(*pieces(data + package(b'hi\n', b'a@b', [b'u@example.org']),
                             size))
        check((why, size, got), (why, size, b''))
        assert h.session.flagclosed, why
        check((why, h.session.exitcode), (why, 100))
        h.nothing_queued()


def test_bad_package_after_good_one():
    h = Harness()
    got = h.feed(package(b'hi\n', b'a@b', [b'u@example.org']) + b'x')
    check(responses(got), [K_OK])
    check(h.session.exitcode, 100)
    assert h.queues[0].queued


def test_oversized_message_refused_unread():
    """The length alone ends it: qmail-queue is never started."""
    h = Harness()
    check(h.feed(b'%d:' % (qmtpd.MAXMESSAGE + 1)), b'')
    assert h.session.flagclosed
    check(h.queues, [])


def test_truncated_input():
    """The client may go away anywhere: nothing is queued, nothing said."""
    data = package(b'Subject: x\r\n\r\nbody\r\n', b'a@b',
                   [b'u@example.org', b'v@example.org'], mode=b'\r')
    for cut in range(len(data)):
        h = Harness()
        check((cut, h.feed(data[:cut])), (cut, b''))
        h.session.eof()
        assert h.session.flagclosed
        check((cut, h.session.exitcode), (cut, 0))
        h.nothing_queued()


def test_eof_between_packages():
    h = Harness()
    h.feed(package(b'hi\n', b'a@b', [b'u@example.org']))
    h.session.eof()
    check(h.session.exitcode, 0)
    assert h.q.queued


def test_timeout_and_lifetime():
    data = package(b'hi\n', b'a@b', [b'u@example.org'])
    h = Harness()
    h.feed(data[:10])
    check(h.session.timeout(NOW + 1200), b'')
    check(h.session.exitcode, 111)
    h.nothing_queued()
    h = Harness(lifetime=100)
    check(h.feed(data[:10]), b'')
    check(h.feed(data[10:], now=NOW + 100), b'')
    assert h.session.flagclosed
    check(h.session.exitcode, 111)
    h.nothing_queued()
    check(h.feed(data), b'')


def test_a_damaged_morercpthosts_defers_only_what_needs_it(tmp_path):
    """qmail-qmtpd.c opens the cdb at its start and reads it at a lookup:
    mail for the domains of rcpthosts, and from a relay client, is
    taken.  A damaged file made every connection exit 111."""
    from qmail.lib import cdb, control
    (tmp_path / 'control').mkdir()
    (tmp_path / 'control' / 'rcpthosts').write_bytes(b'example.org\n')
    (tmp_path / 'control' / 'morercpthosts.cdb').write_bytes(b'xy')
    config = qmtpd.load_config(control.Controls(str(tmp_path / 'control')).init(), {})
    assert isinstance(config.morercpthosts, cdb.Unreadable)
    for peer, rcpt in ((smtpd.Peer(), b'u@example.org'),
                       (smtpd.Peer(relayclient=b''), b'u@elsewhere')):
        h = Harness(peer=peer, **config.__dict__)
        check(responses(h.feed(package(b'hi\n', b'a@b', [rcpt]))), [K_OK])
        assert not h.session.flagclosed
    h = Harness(**config.__dict__)
    check(h.feed(package(b'hi\n', b'a@b', [b'u@elsewhere'])), b'')
    check(h.session.exitcode, 111)
    h.nothing_queued()


def test_a_pool_worker_keeps_its_config_while_the_files_stay(tmp_path, monkeypatch):
    """qmail-qmtpd read every control file again each session (rcpthosts
    and badmailfrom of 100,000 lines: 50 ms of CPU a session; found by a
    review of large configurations): kept now, as qmail-smtpd keeps its."""
    import time
    from qmail.lib import control
    monkeypatch.setattr(qmtpd, '_last_config', None)
    ctl_dir = tmp_path / 'control'
    ctl_dir.mkdir()
    (ctl_dir / 'me').write_bytes(b'mx.example.org\n')
    (ctl_dir / 'rcpthosts').write_bytes(b'example.org\n')
    time.sleep(control.RACY_FINE + 0.1)         # (a file just changed is not trusted)

    def load(env=None):
        return qmtpd.load_config(control.Controls(str(ctl_dir)).init(), env or {})
    first = load()
    assert load() is first
    other = load({b'DATABYTES': b'100'})                        # another session's rule
    assert other is not first and other.databytes == 100
    assert other.rcpthosts is first.rcpthosts                   # (nothing read again)
    assert load() is first and first.databytes == 0
    (ctl_dir / 'rcpthosts').write_bytes(b'example.org\nexample.net\n')
    time.sleep(control.RACY_FINE + 0.1)
    again = load()
    assert again is not first and again.rcpthosts == frozenset({b'example.org', b'example.net'})
    (ctl_dir / 'badmailfrom').write_bytes(b'spam@example.com\n')    # one that was missing
    time.sleep(control.RACY_FINE + 0.1)
    assert load().badmailfrom == frozenset({b'spam@example.com'})


def test_unreadable_morercpthosts():
    class Broken:
        def __contains__(self, key):
            raise CdbError('bad cdb')
    h = Harness(morercpthosts=Broken())
    check(h.feed(package(b'hi\n', b'a@b', [b'u@elsewhere'])), b'')
    check(h.session.exitcode, 111)
    h.nothing_queued()


# -- qmail-qmqpd: the session -----------------------------------------------------

def test_qmqp_one_packet():
    data = packet(b'Subject: hi\n\r\nbody\n', b'a@b', [b'u@far.example',
                                                      b'v@example.org'])
    for size in (1, 3, len(data)):
        h = Harness(qmqpd)
        got = h.feed(*pieces(data + b'ignored', size))
        check((size, responses(got)), (size, [K_OK]))
        check(bytes(h.q.message), received(b'QMQP') + b'Subject: hi\n\r\nbody\n')
        check(h.q.envelope, [b'Fa@b', b'Tu@far.example', b'Tv@example.org'])
        assert h.q.queued
        assert h.session.flagclosed
        check(h.session.exitcode, 0)


@pytest.mark.parametrize('sender,recipients', [
    (b'x' * 1000, [b'u@v']),
    (b'a\0b', [b'u@v']),
    (b'a@b', [b'u@v', b'x' * 1000]),
    (b'a@b', [b'u\0v', b'w@x']),
    (b'a@b\nBcc: c@d', [b'u@v']),
    (b'a@b', [b'u@v', b'w\r@x']),
])
def test_qmqp_bad_addresses(sender, recipients):
    h = Harness(qmqpd)
    check(responses(h.feed(packet(b'hi\n', sender, recipients))), [R_ADDRESSES])
    h.nothing_queued()


def test_qmqp_longest_addresses():
    h = Harness(qmqpd)
    got = h.feed(packet(b'hi\n', b'x' * 999, [b'y' * 999]))
    check(responses(got), [K_OK])
    check(h.q.envelope, [b'F' + b'x' * 999, b'T' + b'y' * 999])


@pytest.mark.parametrize('status,flagqqt,want', [
    ('Zqq temporary problem (#4.3.0)', False, b'Zqq temporary problem (#4.3.0)'),
    ('Dqq permanent problem (#5.3.0)', False, b'Dqq permanent problem (#5.3.0)'),
    ('', True, R_QQT),
])
def test_qmqp_queue_answer(status, flagqqt, want):
    h = Harness(qmqpd, status=status, flagqqt=flagqqt)
    check(responses(h.feed(packet(b'hi\n', b'a@b', [b'u@v']))), [want])


def test_qmqp_no_recipients_goes_to_qmail_queue():
    """qmail-qmqpd leaves an empty recipient list to qmail-queue."""
    h = Harness(qmqpd)
    check(responses(h.feed(packet(b'hi\n', b'a@b', []))), [K_OK])
    check(h.q.envelope, [b'Fa@b'])


@pytest.mark.parametrize('data,why', [
    (b'x', 'garbage'),
    (ns(b''), 'an empty packet'),
    (ns(ns(b'hi\n')), 'no sender'),
    (ns(ns(b'hi\n') + ns(b'a@b') + b'3:u@'), 'a recipient cut by the packet'),
    (ns(ns(b'hi\n') + ns(b'a@b') + ns(b'u@v') + b'x'), 'trailing garbage inside'),
    (ns(ns(b'hi\n') + ns(b'a@b') + ns(b'u@v'))[:-1] + b'.', 'no final comma'),
    (b'2000000001:', 'a packet over MAXPACKET'),
    (b'5:99999,', 'an inner length running over'),
])
def test_qmqp_bad_packet_closes(data, why):
    for size in (1, len(data)):
        h = Harness(qmqpd)
        got = h.feed(*pieces(data, size))
        check((why, got), (why, b''))
        assert h.session.flagclosed, why
        check((why, h.session.exitcode), (why, 100))
        h.nothing_queued()


def test_qmqp_truncated_input():
    data = packet(b'hi\n', b'a@b', [b'u@v', b'w@x'])
    for cut in range(len(data)):
        h = Harness(qmqpd)
        check((cut, h.feed(data[:cut])), (cut, b''))
        h.session.eof()
        h.nothing_queued()


# -- qmail-qmqpc: pure parts ------------------------------------------------------

@pytest.mark.parametrize('envelope,want', [
    (b'F\0\0', (b'', [])),
    (b'Fa@b\0Tu@v\0Tw@x\0\0', (b'a@b', [b'u@v', b'w@x'])),
    (b'F\0T\0\0', (b'', [b''])),
    (b'Fa@b\0Tu@v\0\0trailing', (b'a@b', [b'u@v'])),
    (b'F' + b'x' * 1002 + b'\0\0', (b'x' * 1002, [])),
])
def test_qmqpc_envelope(envelope, want):
    for size in (1, 2, len(envelope)):
        e = qmqpc.Envelope()
        done = False
        for piece in pieces(envelope, size):
            done = e.feed(piece)
            if done:
                break
        assert done, 'size %d: not done' % size
        check((size, (e.sender, e.recipients)), (size, want))


@pytest.mark.parametrize('envelope,code', [
    (b'\0', 91),
    (b'Ta@b\0\0', 91),
    (b'Fa@b\0Xu@v\0\0', 91),
    (b'F' + b'x' * 1003 + b'\0\0', 11),
    (b'Fa@b\0T' + b'x' * 1010, 11),       # refused before its NUL
])
def test_qmqpc_envelope_refused(envelope, code):
    e = qmqpc.Envelope()
    with pytest.raises(qmqpc.QmqpExit) as info:
        e.feed(envelope)
    check(info.value.code, code)


@pytest.mark.parametrize('envelope', [b'', b'F', b'Fa@b\0', b'Fa@b\0Tu@v\0'])
def test_qmqpc_envelope_incomplete(envelope):
    check(qmqpc.Envelope().feed(envelope), False)


@pytest.mark.parametrize('line,want', [
    (b'192.0.2.1', (socket.AF_INET, '192.0.2.1')),
    (b'2001:db8::1', (socket.AF_INET6, '2001:db8::1')),
    (b'mx.example.org', None),
    (b'192.0.2', None),
    (b'192.0.2.256', None),
    (b'\xff', None),
    # qmail's ip_scan: a leading address counts, leading zeros are decimal
    (b'192.0.2.1 primary relay', (socket.AF_INET, '192.0.2.1')),
    (b'127.000.000.001', (socket.AF_INET, '127.0.0.1')),
    (b'010.0.0.1', (socket.AF_INET, '10.0.0.1')),
    (b' 192.0.2.1', None),
    (b'2001:db8::1 primary', None),
])
def test_qmqpc_parse_server(line, want):
    check(qmqpc.parse_server(line), want)


@pytest.mark.parametrize('first,code', [
    (b'K', 0), (b'Z', 71), (b'D', 31), (b'x', 74),
])
def test_qmqpc_answer(first, code):
    check(qmqpc.answer(first[0]), code)


def test_qmqpc_packet_bytes():
    spool = qmqpc.Spool()
    spool.write(b'hi\n')
    after = qmqpc.envelope_netstrings(b'a@b', [b'u@v'])
    check(after, b',3:a@b,3:u@v,')
    check(packet(b'hi\n', b'a@b', [b'u@v']),
          b'%d:3:hi\n%s,' % (len(b'3:hi\n') + len(after), after))


def test_qmqpc_spool_to_file():
    spool = qmqpc.Spool()
    data = bytes(range(256)) * (qmqpc.SPOOLMEM // 256 + 10)
    for piece in pieces(data, 100000):
        spool.write(piece)
    assert spool.file is not None
    check(spool.size, len(data))
    check(b''.join(spool.chunks()) == data, True)


# -- the real programs ----------------------------------------------------------

FAKEQ = """#!/bin/sh
cat > "{d}/message.$$"
cat 0<&1 1>"{d}/envelope.$$"
exit ${{FAKEQ_EXIT:-0}}
"""


@pytest.fixture
def qmailhome(tmp_path):
    home = tmp_path / 'home'
    (home / 'control').mkdir(parents=True)
    (home / 'control' / 'rcpthosts').write_bytes(b'example.org\n')
    out = tmp_path / 'out'
    out.mkdir()
    fakeq = tmp_path / 'fakeq'
    fakeq.write_text(FAKEQ.format(d=out))
    fakeq.chmod(0o755)
    return home, fakeq, out


def program_env(fakeq, **env):
    base = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT,
            'QMAILQUEUE': str(fakeq), 'TCPREMOTEIP': '192.0.2.7',
            'TCPLOCALHOST': 'mx.example.org'}
    base.update(env)
    return base


def server_argv(module, home):
    code = main_code(module, home)
    return [sys.executable, '-c', code]


def run_server(module, home, fakeq, stdin, **env):
    return subprocess.run(server_argv(module, home), input=stdin,
                          capture_output=True, env=program_env(fakeq, **env),
                          timeout=TIMEOUT)


def queued(out, qp: bytes):
    pid = qp.decode()
    return ((out / ('message.' + pid)).read_bytes(),
            (out / ('envelope.' + pid)).read_bytes())


RECEIVED_RE = (rb'Received: from unknown \(192\.0\.2\.7\)\n  by mx\.example\.org'
               rb' with %s; \d+ \w\w\w \d{4} \d\d:\d\d:\d\d -0000\n')


def test_qmtpd_program(qmailhome):
    home, fakeq, out = qmailhome
    r = run_server('qmtpd', home, fakeq,
                   package(b'Subject: one\n\nbody\n', b'a@b',
                           [b'u@example.org', b'x@elsewhere', b'v@example.org'])
                   + package(b'Subject: two\r\n\r\nbody\r\n', b'', [b'w@example.org'],
                             mode=b'\r'))
    check(r.stderr, b'')
    check(r.returncode, 0)
    got = responses(r.stdout)
    check(len(got), 4)
    check(got[1], R_NOGATEWAY)
    for i in (0, 2, 3):
        assert re.fullmatch(rb'Kok \d+ qp \d+', got[i]), got[i]
    check(got[0], got[2])
    message, envelope = queued(out, got[0].split()[-1])
    assert re.fullmatch(RECEIVED_RE % b'QMTP' + rb'Subject: one\n\nbody\n',
                        message), message
    check(envelope, b'Fa@b\0Tu@example.org\0Tv@example.org\0\0')
    message, envelope = queued(out, got[3].split()[-1])
    assert re.fullmatch(RECEIVED_RE % b'QMTP' + rb'Subject: two\n\nbody\n',
                        message), message
    check(envelope, b'F\0Tw@example.org\0\0')


def test_many_recipients_are_answered_in_pieces_in_order():
    """A package of many recipients is answered a batch at a time, not
    built as one text (349,525 empty addresses fit in MAXENVELOPE: 56 MB
    of replies held at once); every answer comes, in order."""
    h = Harness(maxrcpt=0)
    n = 3 * qmtpd.REPLYBATCH + 5
    recipients = [b'u%d@example.org' % i if i % 3 else b'x%d@elsewhere' % i
                  for i in range(n)]
    first = h.session.feed(package(b'hi\n', b'a@b', recipients), NOW)
    check(len(responses(first)), qmtpd.REPLYBATCH)
    rest = []
    while True:
        more = h.session.take_replies()
        if not more:
            break
        rest.append(more)
    got = responses(first + b''.join(rest))
    check(len(got), n)
    for i, r in enumerate(got):
        if i % 3:
            assert r.startswith(b'Kok '), (i, r)
        else:
            check(r, R_NOGATEWAY)
    # and the next package's answers follow, with nothing left over
    check(responses(h.feed(package(b'hi\n', b'a@b', [b'u@example.org']))), [got[1]])


def test_qmtpd_program_many_recipients(qmailhome):
    """The shell writes every piece of a long answer."""
    home, fakeq, out = qmailhome
    (home / 'control' / 'maxrcptqmtpd').write_bytes(b'0\n')
    n = 5000
    r = run_server('qmtpd', home, fakeq,
                   package(b'Subject: many\n\nbody\n', b'a@b',
                           [b'u%d@example.org' % i for i in range(n)]))
    check(r.returncode, 0)
    got = responses(r.stdout)
    check(len(got), n)
    check(len(set(got)), 1)
    assert re.fullmatch(rb'Kok \d+ qp \d+', got[0]), got[0]


def test_qmtpd_program_relayclient_and_databytes(qmailhome):
    home, fakeq, out = qmailhome
    (home / 'control' / 'databytes').write_bytes(b'5\n')
    r = run_server('qmtpd', home, fakeq,
                   package(b'12345', b'a@b', [b'u@far.example'])
                   + package(b'123456', b'a@b', [b'u@far.example']),
                   RELAYCLIENT='')
    check(r.returncode, 0)
    got = responses(r.stdout)
    assert re.fullmatch(rb'Kok \d+ qp \d+', got[0]), got
    check(got[1], R_SIZE)
    check(queued(out, got[0].split()[-1])[1], b'Fa@b\0Tu@far.example\0\0')


def test_qmtpd_program_badmailfrom_and_rcptcheck(qmailhome):
    """control/badmailfrom is read; control/rcptcheck without
    users/rcpt.cdb (qmail-newrcpt never run) refuses nobody and says so."""
    home, fakeq, out = qmailhome
    (home / 'control' / 'badmailfrom').write_bytes(b'@evil.example\n')
    (home / 'control' / 'rcptcheck').write_bytes(b'')
    r = run_server('qmtpd', home, fakeq,
                   package(b'hi\n', b'x@evil.example', [b'u@example.org'])
                   + package(b'hi\n', b'x@good.example', [b'u@example.org']))
    check(r.returncode, 0)
    got = responses(r.stdout)
    check(got[0], R_BMF)
    assert re.fullmatch(rb'Kok \d+ qp \d+', got[1]), got
    assert r.stderr.startswith(b'qmail-qmtpd: warning: control/rcptcheck exists but '), r.stderr
    assert b'qmail-newrcpt' in r.stderr


@pytest.mark.parametrize('stdin,code', [
    (b'garbage', 100),
    (b'99999999999999999999:', 100),
    (package(b'hi\n', b'a@b', [b'u@example.org'])[:-3], 0),   # cut short
])
def test_qmtpd_program_bad_input(qmailhome, stdin, code):
    home, fakeq, out = qmailhome
    r = run_server('qmtpd', home, fakeq, stdin)
    check((r.returncode, r.stdout, r.stderr), (code, b'', b''))
    for f in out.iterdir():
        if f.name.startswith('envelope.'):
            check(f.read_bytes(), b'')      # qmail-queue saw no envelope


def test_qmtpd_program_without_qmail_queue(qmailhome):
    home, fakeq, out = qmailhome
    r = run_server('qmtpd', home, '/nonexistent/qmail-queue',
                   package(b'hi\n', b'a@b', [b'u@example.org', b'x@elsewhere']))
    check((r.returncode, responses(r.stdout), r.stderr),
          (0, [b'Zunable to exec qq (#4.3.0)', R_NOGATEWAY], b''))


def serve_pipes(writer, module=qmtpd, then=None, **config):
    """qmtpd.serve() over pipes; writer(fd, done) plays the client in a
    thread until done is set; then(), if given, runs once the session is
    made, before it is served."""
    rin, win = os.pipe()
    rout, wout = os.pipe()
    done = threading.Event()
    h = Harness(module=module, now=time.time(), tick=time.monotonic(), **config)
    if then is not None:
        then()
    client = threading.Thread(target=writer, args=(win, done), daemon=True)
    client.start()
    try:
        code = qmtpd.serve(h.session, rin, wout)
    finally:
        done.set()
        client.join(TIMEOUT)
        os.close(wout)
    out = b''
    while True:
        chunk = os.read(rout, 65536)
        if not chunk:
            break
        out += chunk
    for fd in (rin, rout):
        os.close(fd)
    return h, code, out


def test_serve_packages_then_close():
    def client(fd, done):
        data = package(b'hi\n', b'a@b', [b'u@example.org']) * 2
        for piece in pieces(data, 5):
            os.write(fd, piece)
        os.close(fd)
    h, code, out = serve_pipes(client)
    got = responses(out)
    check((code, len(got)), (0, 2))
    for response in got:
        assert re.fullmatch(rb'Kok \d+ qp 4242', response), response
    check([q.queued for q in h.queues], [True, True])


@pytest.mark.parametrize('module', [qmtpd, qmqpd])
def test_lifetime_counts_the_seconds_lasted_not_the_wall_clock(monkeypatch, module):
    """lifetimeqmtpd is qmail's alarm(3600): the wall clock stepped two
    hours forward once the session began no longer drops it unanswered
    (its Received line and "ok" stamp still take the wall clock's time)."""
    real = time.time
    h = Harness(module=module, now=NOW, tick=500.0, lifetime=60)
    check(h.session.deadline, 560.0)
    if module is qmtpd:
        data = package(b'hi\n', b'a@b', [b'u@example.org'])
    else:
        data = packet(b"hi\n", b"a@b", [b"u@example.org"])
    got = h.session.feed(data, NOW + 7200, 501.0)
    assert b'Kok %d ' % (NOW + 7200) in got, got
    h2 = Harness(module=module, now=NOW, tick=500.0, lifetime=60)
    check(h2.session.feed(data, NOW - 7200, 560.0), b'')     # past it: dropped
    assert h2.session.flagclosed

    def client(fd, done):
        os.write(fd, data)
        done.wait(TIMEOUT)
        os.close(fd)
    h, code, out = serve_pipes(client, module=module, timeout=5, lifetime=60,
                               then=lambda: monkeypatch.setattr(
                                   time, 'time', lambda: real() + 7200))
    assert b'Kok ' in out, (code, out)


def test_serve_silent_client_times_out():
    def client(fd, done):
        os.write(fd, b'10:\nhalf')
        done.wait(TIMEOUT)
        os.close(fd)
    h, code, out = serve_pipes(client, timeout=1)
    check((code, out), (111, b''))
    h.nothing_queued()


def test_qmtpd_program_without_home(tmp_path):
    r = run_server('qmtpd', tmp_path / 'nonexistent', '/nonexistent',
                   package(b'hi\n', b'a@b', [b'u@example.org']))
    check((r.returncode, r.stdout, r.stderr), (111, b'', b''))


def test_qmqpd_program(qmailhome):
    home, fakeq, out = qmailhome
    r = run_server('qmqpd', home, fakeq,
                   packet(b'Subject: hi\n\nbody\n', b'a@b',
                          [b'u@far.example', b'v@example.org']))
    check(r.stderr, b'')
    check(r.returncode, 0)
    got = responses(r.stdout)
    assert re.fullmatch(rb'Kok \d+ qp \d+', got[0]), got
    message, envelope = queued(out, got[0].split()[-1])
    assert re.fullmatch(RECEIVED_RE % b'QMQP' + rb'Subject: hi\n\nbody\n',
                        message), message
    check(envelope, b'Fa@b\0Tu@far.example\0Tv@example.org\0\0')


def test_qmqpd_program_queue_refuses(qmailhome):
    home, fakeq, out = qmailhome
    r = run_server('qmqpd', home, fakeq, packet(b'hi\n', b'a@b', [b'u@v']),
                   FAKEQ_EXIT='31')
    check((r.returncode, responses(r.stdout)),
          (0, [b'Dmail server permanently rejected message (#5.3.0)']))


def test_qmqpd_program_garbage(qmailhome):
    home, fakeq, out = qmailhome
    r = run_server('qmqpd', home, fakeq, b'12:garbage')
    check((r.returncode, r.stdout, r.stderr), (100, b'', b''))


# -- qmail-qmqpc against a QMQP server in a thread --------------------------------

def read_packet(conn) -> bytes:
    """One QMQP packet from conn, or what arrived before it closed."""
    data = b''
    while True:
        try:
            return netstring.decode(data, 1 << 24)[0]
        except Incomplete:
            pass
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk


class QmqpServer:
    """Listens on 127.0.0.1; each connection goes to handler(conn)."""

    def __init__(self, handler):
        self.handler = handler
        self.packets = []
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(5)
        self.sock.settimeout(TIMEOUT)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT)
                try:
                    self.handler(self, conn)
                except OSError:
                    pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)    # wakes accept() on Linux
        except OSError:
            pass
        self.sock.close()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), 'server thread still running'



def answering(response: bytes):
    """A handler: read the packet, answer response."""
    def handler(server, conn):
        server.packets.append(read_packet(conn))
        conn.sendall(response)
    return handler


def run_qmqpc(home, port, message: bytes, envelope: bytes):
    """qmail-qmqpc with the message on fd 0 and the envelope on fd 1."""
    code = ('import sys; from qmail import qmqpc; '
            'sys.exit(qmqpc.main([], home=%r, port=%d))' % (str(home), port))
    rfd, wfd = os.pipe()
    try:
        p = subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE,
                             stdout=rfd, stderr=subprocess.PIPE,
                             env={'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT})
    finally:
        os.close(rfd)
    try:
        os.write(wfd, envelope)
    finally:
        os.close(wfd)
    _, err = p.communicate(message, timeout=TIMEOUT)
    check(err, b'')
    return p.returncode


@pytest.fixture
def qmqpchome(tmp_path):
    home = tmp_path / 'client'
    (home / 'control').mkdir(parents=True)
    return home


def servers(home, *lines):
    (home / 'control' / 'qmqpservers').write_bytes(
        b''.join(line + b'\n' for line in lines))


ENVELOPE = b'Fa@b\0Tu@v\0Tw@x\0\0'
PACKET = packet(b'Subject: hi\n\nbody\n', b'a@b', [b'u@v', b'w@x'])


@pytest.mark.parametrize('response,code', [
    (b'23:Kok 812090814 qp 4242,', 0),
    (b'30:Zqq temporary problem (#4.3.0),', 71),
    (b'30:Dqq permanent problem (#5.3.0),', 31),
    (b'5:Kok', 0),              # the first byte decides, as qmail's
    (b'', 74),                  # closed without an answer
    (b'Kok', 74),               # no netstring
    (b'0:,', 74),
    (b'3:Xyz,', 74),
    (b'99999999:K', 74),        # over MAXREPLY
])
def test_qmqpc_answers(qmqpchome, response, code):
    server = QmqpServer(answering(response))
    try:
        servers(qmqpchome, b'127.0.0.1')
        got = run_qmqpc(qmqpchome, server.port, b'Subject: hi\n\nbody\n', ENVELOPE)
    finally:
        server.close()
    check(got, code)
    check(server.packets, [netstring.decode(PACKET, 1 << 20)[0]])


def test_qmqpc_falls_back_to_the_next_server(qmqpchome):
    """127.0.0.2 has nothing on the port (refused); the bad line is skipped."""
    server = QmqpServer(answering(b'2:Kx,'))
    try:
        servers(qmqpchome, b'# comment', b'not-an-address', b'127.0.0.2',
                b'127.0.0.1', b'127.0.0.3')
        got = run_qmqpc(qmqpchome, server.port, b'Subject: hi\n\nbody\n', ENVELOPE)
    finally:
        server.close()
    check(got, 0)
    check(len(server.packets), 1)


def test_qmqpc_family_unavailable_tries_the_next_server(monkeypatch):
    """No IPv6 sockets (a kernel with IPv6 off): the IPv4 server after
    the IPv6 one gets the message; with only the IPv6 one, 56."""
    server = QmqpServer(answering(b'2:Kx,'))
    real = socket.socket

    def no_ipv6(family=socket.AF_INET, *args, **kw):
        if family == socket.AF_INET6:
            raise OSError(97, 'Address family not supported by protocol')
        return real(family, *args, **kw)
    monkeypatch.setattr(qmqpc.socket, 'socket', no_ipv6)
    spool = qmqpc.Spool()
    spool.write(b'hi\n')
    after = qmqpc.envelope_netstrings(b'a@b', [b'u@v'])
    v6, v4 = qmqpc.parse_server(b'2001:db8::1'), qmqpc.parse_server(b'127.0.0.1')
    try:
        check(qmqpc.deliver([v6, v4], spool, after, server.port), 0)
        check(qmqpc.deliver([v6], spool, after, server.port), 56)
    finally:
        server.close()
    check(len(server.packets), 1)


def test_qmqpc_no_server_after_connect_failure(qmqpchome):
    """Once a server took the connection, no other is tried: it may
    have the message."""
    first = QmqpServer(answering(b''))
    second = QmqpServer(answering(b'2:Kx,'))
    try:
        servers(qmqpchome, b'127.0.0.1')
        got = run_qmqpc(qmqpchome, first.port, b'hi\n', ENVELOPE)
    finally:
        first.close()
        second.close()
    check((got, second.packets), (74, []))


@pytest.mark.parametrize('lines,code', [
    (None, 55),                         # no qmqpservers
    ((), 55),                           # naming nobody
    ((b'mx.example.org',), 55),         # nobody usable
    ((b'127.0.0.2',), 73),              # refused
])
def test_qmqpc_no_server(qmqpchome, lines, code):
    if lines is not None:
        servers(qmqpchome, *lines)
    check(run_qmqpc(qmqpchome, 1, b'hi\n', ENVELOPE), code)


@pytest.mark.parametrize('envelope,code', [
    (b'', 91),
    (b'Fa@b\0Tu@v\0', 91),              # no final NUL
    (b'Xa@b\0\0', 91),
    (b'F' + b'x' * 2000 + b'\0\0', 11),
])
def test_qmqpc_bad_envelope(qmqpchome, envelope, code):
    server = QmqpServer(answering(b'2:Kx,'))
    try:
        servers(qmqpchome, b'127.0.0.1')
        got = run_qmqpc(qmqpchome, server.port, b'hi\n', envelope)
    finally:
        server.close()
    check((got, server.packets), (code, []))


def test_qmqpc_unreadable_me_is_55(qmqpchome):
    """qmail-qmqpc's control_init reads me before qmqpservers."""
    server = QmqpServer(answering(b'2:Kx,'))
    try:
        servers(qmqpchome, b'127.0.0.1')
        me = qmqpchome / 'control' / 'me'
        if me.exists():
            me.unlink()
        me.mkdir()                      # EISDIR on read
        got = run_qmqpc(qmqpchome, server.port, b'hi\n', ENVELOPE)
    finally:
        server.close()
    check((got, server.packets), (55, []))


def test_qmqpc_without_home(tmp_path):
    check(run_qmqpc(tmp_path / 'nonexistent', 1, b'hi\n', ENVELOPE), 61)


def test_qmqpc_to_qmqpd(qmailhome, qmqpchome):
    """The whole way: qmail-qmqpc, a large message, qmail-qmqpd under a
    tcpserver in a thread, qmail-queue."""
    home, fakeq, out = qmailhome
    results = []

    def tcpserver(server, conn):
        r = subprocess.run(server_argv('qmqpd', home), stdin=conn.fileno(),
                           stdout=conn.fileno(), stderr=subprocess.PIPE,
                           env=program_env(fakeq, TCPREMOTEIP='127.0.0.1'),
                           timeout=TIMEOUT)
        results.append((r.returncode, r.stderr))

    message = b'Subject: big\n\n' + b'0123456789abcde\n' * (qmqpc.SPOOLMEM // 8)
    server = QmqpServer(tcpserver)
    try:
        servers(qmqpchome, b'127.0.0.1')
        got = run_qmqpc(qmqpchome, server.port, message, ENVELOPE)
    finally:
        server.close()
    check((got, results), (0, [(0, b'')]))
    names = sorted(f.name for f in out.iterdir())
    check(len(names), 2)
    check((out / names[0]).read_bytes(), b'Fa@b\0Tu@v\0Tw@x\0\0')
    stored = (out / names[1]).read_bytes()
    assert stored.startswith(b'Received: from unknown (127.0.0.1)\n'), stored[:100]
    check(stored.split(b'\n', 2)[2] == message, True)
