"""qmail-remote's pure parts: MX ordering, smtproutes, address quoting,
dot-stuffing, the SMTP conversation fed from a script (no socket), the
reports as qmail-rspawn reads them, and the tcpto table."""

import os
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from qmail import remote, remote_ipme, remote_smtp as smtp, rspawn
from qmail import tcpto as tcpto_prog
from qmail.lib import dns as qdns, tcpto


# --- DNS -------------------------------------------------------------------

def test_order_mx_sorted_by_preference():
    mxs = [(20, 'c'), (10, 'a'), (30, 'd'), (10, 'b'), (20, 'e')]
    got = qdns.order_mx(list(mxs), random.Random(7))
    assert [p for p, _ in got] == [10, 10, 20, 20, 30], got
    assert sorted(got) == sorted(mxs)


def test_order_mx_ties_shuffled_seeded():
    mxs = [(10, 'a'), (10, 'b'), (10, 'c'), (5, 'first')]
    orders = {tuple(qdns.order_mx(list(mxs), random.Random(seed))) for seed in range(50)}
    assert all(o[0] == (5, 'first') for o in orders)
    assert len(orders) == 6, 'every order of the tie appears: %r' % orders
    # the same seed, the same order
    assert qdns.order_mx(list(mxs), random.Random(3)) == qdns.order_mx(list(mxs), random.Random(3))


@pytest.mark.parametrize('mxs, want', [
    ([(0, '')], True),
    ([(0, ''), (10, 'mx.example.com')], False),
    ([(10, 'mx.example.com')], False),
])
def test_null_mx(mxs, want):
    assert qdns.is_null_mx(mxs) == want


@pytest.mark.parametrize('host, want', [
    ('[1.2.3.4]', '1.2.3.4'),
    ('1.2.3.4', '1.2.3.4'),
    ('[IPv6:2001:db8::1]', '2001:db8::1'),
    ('[ipv6:2001:DB8::1]', '2001:db8::1'),
    ('[2001:db8::1]', '2001:db8::1'),
    ('[IPv6:1.2.3.4]', None),

    ('[1.2.3.400]', None),
    ('example.com', None),
    ('[example.com]', None),
    ('', None),
])
def test_literal(host, want):
    assert qdns.literal(host) == want


@pytest.mark.parametrize('line, want', [
    ('127.0.0.1', ('127.0.0.1', 53)),
    ('127.0.0.1:5353', ('127.0.0.1', 5353)),
    ('2001:db8::53', ('2001:db8::53', 53)),
    ('[2001:db8::53]:5353', ('2001:db8::53', 5353)),
    ('[::1]', ('::1', 53)),
])
def test_parse_nameserver(line, want):
    assert qdns.parse_nameserver(line) == want


@pytest.mark.parametrize('line', ['ns.example.com', '1.2.3.4:0', '1.2.3.4:x',
                                  '[::1', '[::1]x', '1.2.3.4:70000', ''])
def test_parse_nameserver_bad(line):
    with pytest.raises(ValueError):
        qdns.parse_nameserver(line)


# --- smtproutes, tlsdestinations --------------------------------------------

ROUTES = remote.parse_map([
    b'inside.af.mil:firewall.af.mil:26',
    b'.af.mil:',
    b':heaven.af.mil',
    b'Upper.Example.COM:relay.example.com',
    b'v6.example.com:[IPv6:2001:db8::25]:2525',
    b'no colon here',
    b'dup.example.com:first',
    b'dup.example.com:second',
    b'[IPv6:2001:db8::9]:[::1]:2526',     # a literal domain: its colons are its own
    b'[192.0.2.9]:relay4.example.com',
    b'[IPv6:2001:db8::8]',                 # no colon after it: ignored
])


@pytest.mark.parametrize('host, want', [
    (b'inside.af.mil', b'firewall.af.mil:26'),
    (b'x.af.mil', b''),                  # routed by MX
    (b'a.b.af.mil', b''),
    (b'af.mil', b'heaven.af.mil'),       # .af.mil needs a label before it
    (b'elsewhere.org', b'heaven.af.mil'),
    (b'upper.example.com', b'relay.example.com'),
    (b'UPPER.EXAMPLE.COM', b'relay.example.com'),
    (b'dup.example.com', b'second'),     # qmail's constmap: the last line wins
    (b'[IPv6:2001:db8::9]', b'[::1]:2526'),
    (b'[ipv6:2001:DB8::9]', b'[::1]:2526'),
    (b'[192.0.2.9]', b'relay4.example.com'),
    (b'[IPv6:2001:db8::8]', b'heaven.af.mil'),
])
def test_smtproutes_lookup(host, want):
    got = remote.lookup_map(host, ROUTES)
    assert got == want, 'got %r want %r' % (got, want)


def test_smtproutes_no_default():
    routes = remote.parse_map([b'a.example.com:relay'])
    assert remote.lookup_map(b'b.example.com', routes) is None
    assert remote.lookup_map(b'x.a.example.com', routes) is None


@pytest.mark.parametrize('value, want', [
    (b'firewall.af.mil:26', (b'firewall.af.mil', 26, None)),
    (b'relay.example.com', (b'relay.example.com', 25, None)),
    (b'[1.2.3.4]:2525', (b'[1.2.3.4]', 2525, None)),
    (b'[IPv6:2001:db8::25]:2525', (b'[IPv6:2001:db8::25]', 2525, None)),
    (b'[IPv6:2001:db8::25]', (b'[IPv6:2001:db8::25]', 25, None)),
    # qmail's scan_ulong: the port's leading digits, the rest ignored
    (b'[1.2.3.4]:26:', (b'[1.2.3.4]', 26, None)),
    (b'smarthost.example:587 ', (b'smarthost.example', 587, None)),
    # the SMTP AUTH patches' form: a user, then the password (the rest)
    (b'smarthost.example:587 user secret', (b'smarthost.example', 587, (b'user', b'secret'))),
    (b'smarthost.example user  two words ', (b'smarthost.example', 25, (b'user', b'two words'))),
    (b'[IPv6:2001:db8::25]:465\tu@x.example p:w', (b'[IPv6:2001:db8::25]', 465,
                                                  (b'u@x.example', b'p:w'))),
])
def test_parse_relay(value, want):
    assert remote.parse_relay(value) == want


@pytest.mark.parametrize('value', [b':2525', b'relay:', b'relay:x', b'relay:0', b'relay:99999',
                                   b'[1.2.3.4', b'relay:587 useronly', b'relay :587 user pw'])
def test_parse_relay_bad(value):
    with pytest.raises(ValueError):
        remote.parse_relay(value)


def test_tlsdestinations_lookup():
    table = remote.parse_tlsmap([b'secure.example.com', b'.bank.example:/etc/ca.pem'])
    assert remote.lookup_map(b'secure.example.com', table) == b''
    assert remote.lookup_map(b'www.bank.example', table) == b'/etc/ca.pem'
    assert remote.lookup_map(b'bank.example', table) is None
    assert remote.lookup_map(b'other.example.com', table) is None
    everything = remote.parse_tlsmap([b':'])
    assert remote.lookup_map(b'any.where', everything) == b''


# --- addresses ----------------------------------------------------------------

@pytest.mark.parametrize('addr, want', [
    (b'joe@example.com', b'joe@example.com'),
    (b'', b''),
    (b'#@[]', b'#@[]'),
    (b'a b@example.com', b'"a b"@example.com'),
    (b'x.@example.com', b'"x."@example.com'),
    (b'.x@example.com', b'".x"@example.com'),
    (b'a..b@example.com', b'"a..b"@example.com'),
    (b'a"b\\c@example.com', b'"a\\"b\\\\c"@example.com'),
    (b'@example.com', b'""@example.com'),
    (b'a@b@example.com', b'"a@b"@example.com'),
    (b'caf\xc3\xa9@example.com', b'"caf\xc3\xa9"@example.com'),   # qmail quotes 8-bit
    (b'owner-joe=example.com@lists.example.org', b'owner-joe=example.com@lists.example.org'),
    (b'postmaster', b'postmaster'),
])
def test_addrmangle(addr, want):
    assert remote.addrmangle(addr) == want


def test_usable_drops_me_and_worse():
    mxs = [qdns.Mx(10, 'a', '192.0.2.1'), qdns.Mx(20, 'me', '127.0.0.1'),
           qdns.Mx(30, 'c', '192.0.2.3')]
    is_me = lambda ip: ip == '127.0.0.1'    # noqa: E731
    assert remote.usable(mxs, is_me, False) == mxs[:1]
    assert remote.usable(mxs, is_me, True) == mxs            # a relay may be me
    assert remote.usable([qdns.Mx(0, 'me', '127.0.0.1')], is_me, False) == []
    assert remote.usable(mxs, lambda ip: False, False) == mxs


def test_capped_per_host_and_in_all():
    many = [qdns.Mx(10, 'big', '192.0.2.%d' % i) for i in range(20)]
    other = [qdns.Mx(20, 'h%d' % i, '198.51.100.%d' % i) for i in range(40)]
    got = remote.capped(many + other)
    assert got[:remote.ADDR_PER_HOST] == many[:remote.ADDR_PER_HOST]
    assert got[remote.ADDR_PER_HOST:] == other[:remote.ADDR_MAX - remote.ADDR_PER_HOST]
    assert len(got) == remote.ADDR_MAX
    assert remote.capped(other[:3]) == other[:3]


def test_is_me_ipv4_mapped():
    import ipaddress
    me = frozenset({ipaddress.ip_address('192.0.2.7'), ipaddress.ip_address('::1')})
    assert remote_ipme.is_me('::ffff:192.0.2.7', me)
    assert remote_ipme.is_me('192.0.2.7', me) and remote_ipme.is_me('::1', me)
    assert not remote_ipme.is_me('::ffff:192.0.2.8', me)
    assert not remote_ipme.is_me('2001:db8::c000:207', me)


def test_is_me_with_a_zone():
    """A literal [IPv6:::1%1] gives "::1%1": it is ::1, this host, not
    another (compared with its zone it passed for one, and the mail came
    back here round after round); a relay so written still connects."""
    import ipaddress
    me = frozenset([ipaddress.ip_address('::1'), ipaddress.ip_address('fe80::1')])
    assert qdns.literal('[IPv6:::1%1]') == '::1%1'
    assert remote_ipme.is_me('::1%1', me) and remote_ipme.is_me('fe80::1%eth0', me)
    assert not remote_ipme.is_me('fe80::2%eth0', me)


@pytest.mark.parametrize('name, ok', [
    ('mx.example.com', True), ('b\\252cher.example', True),
    ('x' * 64 + '.example.com', False), ('a..b', False),
])
def test_sni_ok(name, ok):
    assert smtp.sni_ok(name) is ok


def test_ipme_parse_dump():
    # one RTM_NEWADDR for 192.0.2.7 (IFA_LOCAL) then NLMSG_DONE
    attr = remote_ipme.RTATTR.pack(8, remote_ipme.IFA_LOCAL) + bytes([192, 0, 2, 7])
    body = remote_ipme.IFADDRMSG.pack(2, 24, 0, 0, 1) + attr
    msg = remote_ipme.NLMSG_HDR.pack(16 + len(body), remote_ipme.RTM_NEWADDR, 2, 1, 0) + body
    done = remote_ipme.NLMSG_HDR.pack(20, remote_ipme.NLMSG_DONE, 2, 1, 0) + bytes(4)
    addrs, finished = remote_ipme.parse_dump(msg + done, 1)
    assert [str(a) for a in addrs] == ['192.0.2.7'] and finished


def test_ipme_real():
    me = remote_ipme.ipme()
    assert remote_ipme.is_me('127.0.0.1', me)
    assert remote_ipme.is_me('0.0.0.0', me)
    assert not remote_ipme.is_me('127.0.0.2', me)   # routed here, on no interface


# --- the message ----------------------------------------------------------------

@pytest.mark.parametrize('message, want', [
    (b'', b'.\r\n'),
    (b'a\n', b'a\r\n.\r\n'),
    (b'.\n', b'..\r\n.\r\n'),
    (b'.a\n.\n..b\n', b'..a\r\n..\r\n...b\r\n.\r\n'),
    (b'a\r\nb\r\n', b'a\r\nb\r\n.\r\n'),            # CR LF stays
    (b'a\rb\n', b'a\r\nb\r\n.\r\n'),                # a lone CR ends a line
    (b'a\r.\r\n', b'a\r\n..\r\n.\r\n'),            # ... and its dot is stuffed
    (b'a\r\r\n', b'a\r\n\r\n.\r\n'),
    (b'last\r', b'last\r\n.\r\n'),
    (b'\xff\x00\x80 8bit\n', b'\xff\x00\x80 8bit\r\n.\r\n'),
    (b'\n\n', b'\r\n\r\n.\r\n'),
    (b'x\n.', None),
    (b'no newline', None),
])
def test_blast(message, want):
    b = smtp.Blaster()
    if want is None:
        b.feed(message)
        with pytest.raises(smtp.PartialLine):
            b.finish()
        return
    got = b.feed(message) + b.finish()
    assert got == want, 'got %r want %r' % (got, want)


def stuff(block: bytes) -> bytes:
    """The SMTP form of whole lines, said plainly: CR LF or a lone CR
    ends a line as LF does, each line goes with CR LF, a leading dot is
    doubled (the Blaster's result for a whole message)."""
    block = block.replace(b'\r\n', b'\n').replace(b'\r', b'\n')
    block = block.replace(b'\n.', b'\n..')
    if block.startswith(b'.'):
        block = b'.' + block
    return block.replace(b'\n', b'\r\n')


def test_blast_passes_a_long_line_on_as_it_comes():
    """A line of 50 MB was held whole (some three times its size) until
    its end: a one-line message to a forwarding user cost the qmail-remote
    worker hundreds of MB.  Each chunk goes out as it is fed."""
    b = smtp.Blaster()
    chunk = b'z' * 65536
    assert b.feed(b'.' + chunk) == b'..' + chunk
    for _ in range(10):
        assert b.feed(chunk) == chunk
    assert b.feed(b'end\r') == b'end\r\n'
    assert b.feed(b'\n.x\n') == b'..x\r\n'
    assert b.finish() == b'.\r\n'


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b'a', b'.', b'\n', b'\r', b'\r\n', b'..', b'\xe9', b'.\r\n']),
                max_size=40),
       st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=20))
def test_blast_chunking_does_not_matter(parts, cuts):
    message = b''.join(parts) + b'\n'
    whole = smtp.Blaster()
    want = whole.feed(message) + whole.finish()
    chunked = smtp.Blaster()
    got, pos, i = b'', 0, 0
    while pos < len(message):
        n = cuts[i % len(cuts)]
        got += chunked.feed(message[pos:pos + n])
        pos, i = pos + n, i + 1
    got += chunked.finish()
    assert got == want
    assert want == stuff(message) + b'.\r\n'      # the whole message's form
    # the SMTP data never ends early and every line ends in CR LF
    body = want[:-3]
    lines = body.split(b'\r\n')
    assert lines[-1] == b''
    assert b'.' not in [ln for ln in lines[:-1]]
    assert b'\r' not in b''.join(lines) and b'\n' not in b''.join(lines)
    # undoing the stuffing gives the lines back
    unstuffed = [ln[1:] if ln.startswith(b'.') else ln for ln in lines[:-1]]
    normalized = message.replace(b'\r\n', b'\n').replace(b'\r', b'\n')
    assert b'\n'.join(unstuffed) + b'\n' == normalized


# --- replies ----------------------------------------------------------------------

@pytest.mark.parametrize('line, code', [
    (b'250 ok\r\n', 250), (b'554-no\r\n', 554), (b'25\r\n', 0), (b'abc\r\n', 0), (b'\r\n', 0),
])
def test_parse_code(line, code):
    assert smtp.parse_code(line) == code


def test_parse_ehlo():
    text = b'250-mx.example.com hi\n250-PIPELINING\n250-size 1000\n250 STARTTLS\n'
    assert smtp.parse_ehlo(text) == {b'PIPELINING': b'', b'SIZE': b'1000', b'STARTTLS': b''}


class FakeSock:
    """The peer's side of a conversation as a script: every reply is
    sent in answer to the next command (the greeting at once)."""

    def __init__(self, replies, chunk=7):
        self.replies = list(replies)
        self.sent = b''
        self.pending = b''
        self.chunk = chunk
        self.closed = False
        self.timeout = None
        self._next()

    def _next(self):
        if self.replies:
            r = self.replies.pop(0)
            self.pending += r if r is not None else b''
            self.hang = r is None
        else:
            self.hang = True

    def settimeout(self, t):
        self.timeout = t

    def sendall(self, data):
        if self.closed:
            raise BrokenPipeError()
        self.sent += data
        # a reply is due after each command line, and after the final dot
        while True:
            if self.sent.endswith(b'\r\n.\r\n') or self.sent == b'.\r\n':
                if getattr(self, 'in_data', False):
                    self.in_data = False
                    self._next()
                return
            if self.sent.endswith(b'\r\n') and not getattr(self, 'in_data', False):
                line = self.sent[:-2].rsplit(b'\r\n', 1)[-1]
                if line == b'DATA':
                    self.in_data = True
                if line != b'QUIT':
                    self._next()
            return

    def recv(self, n):
        if self.pending:
            out, self.pending = self.pending[:self.chunk], self.pending[self.chunk:]
            return out
        if self.hang:
            raise TimeoutError('timed out')
        return b''

    def close(self):
        self.closed = True


def converse(replies, recips=(b'joe@example.com',), message=b'Subject: x\n\nhi\n'):
    sock = FakeSock(replies)
    out = []
    r, w = os.pipe()
    os.write(w, message)
    os.close(w)
    try:
        session = smtp.Session(smtp.Conn(sock, 10), b'192.0.2.1', b'me.example.org', out)
        final = session.run(b'sender@example.org', list(recips), r, size=len(message))
    finally:
        os.close(r)
    return out, final, sock.sent


OK = [b'220 hi\r\n', b'250-mx\r\n250 SIZE 100000\r\n', b'250 ok\r\n', b'250 ok\r\n',
      b'354 go\r\n', b'250 ok 123\r\n']


def test_session_success():
    out, final, sent = converse(OK)
    assert out == [b'r']
    assert final == b'K192.0.2.1 accepted message.\nRemote host said: 250 ok 123\n'
    assert sent == (b'EHLO me.example.org\r\nMAIL FROM:<sender@example.org> SIZE=15\r\n'
                    b'RCPT TO:<joe@example.com>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n')


def test_session_helo_fallback():
    out, final, sent = converse([b'220 hi\r\n', b'502 what\r\n'] + OK[1:])
    assert sent.startswith(b'EHLO me.example.org\r\nHELO me.example.org\r\nMAIL FROM:<sender@example.org>\r\n')
    assert final.startswith(b'K')


@pytest.mark.parametrize('replies, want_out, want_final', [
    ([b'421 busy\r\n'], [], b'ZConnected to 192.0.2.1 but greeting failed.\nRemote host said: 421 busy\n'),
    ([b'554 go away\r\n'], [], b'ZConnected to 192.0.2.1 but greeting failed.\nRemote host said: 554 go away\n'),
    ([b'220 hi\r\n', b'500 no\r\n', b'501 bad name\r\n'], [],
     b'ZConnected to 192.0.2.1 but my name was rejected.\nRemote host said: 501 bad name\n'),
    (OK[:2] + [b'451 later\r\n'], [],
     b'ZConnected to 192.0.2.1 but sender was rejected.\nRemote host said: 451 later\n'),
    (OK[:2] + [b'553 no such sender\r\n'], [],
     b'DConnected to 192.0.2.1 but sender was rejected.\nRemote host said: 553 no such sender\n'),
    (OK[:3] + [b'550 no mailbox\r\n'],
     [b'h192.0.2.1 does not like recipient.\nRemote host said: 550 no mailbox\n'],
     b'DGiving up on 192.0.2.1.\n'),
    (OK[:3] + [b'450 greylisted\r\n'],
     [b's192.0.2.1 does not like recipient.\nRemote host said: 450 greylisted\n'],
     b'DGiving up on 192.0.2.1.\n'),
    (OK[:4] + [b'554 no data\r\n'], [b'r'],
     b'D192.0.2.1 failed on DATA command.\nRemote host said: 554 no data\n'),
    (OK[:4] + [b'451 no data now\r\n'], [b'r'],
     b'Z192.0.2.1 failed on DATA command.\nRemote host said: 451 no data now\n'),
    (OK[:4] + [b'250 what\r\n'], [b'r'],
     b'Z192.0.2.1 failed on DATA command.\nRemote host said: 250 what\n'),
    (OK[:5] + [b'554 spam\r\n'], [b'r'],
     b'D192.0.2.1 failed after I sent the message.\nRemote host said: 554 spam\n'),
    (OK[:5] + [b'452 full\r\n'], [b'r'],
     b'Z192.0.2.1 failed after I sent the message.\nRemote host said: 452 full\n'),
    (OK[:5] + [b'xyz garbage\r\n'], [b'r'],
     b'Z192.0.2.1 failed after I sent the message.\nRemote host said: xyz garbage\n'),
    ([b'220 hi\r\n', None], [], b'ZConnected to 192.0.2.1 but connection died. (#4.4.2)\n'),
    (OK[:5] + [None], [b'r'],
     b'ZConnected to 192.0.2.1 but connection died. Possible duplicate! (#4.4.2)\n'),
    (OK[:5] + [b''], [b'r'],
     b'ZConnected to 192.0.2.1 but connection died. Possible duplicate! (#4.4.2)\n'),
])
def test_session_failures(replies, want_out, want_final):
    if replies[-1] == b'':
        replies = replies[:-1]          # the peer closes instead of replying
    out, final, _ = converse(replies)
    assert out == want_out, 'got %r want %r' % (out, want_out)
    assert final == want_final, 'got %r want %r' % (final, want_final)


def test_session_several_recipients():
    replies = OK[:3] + [b'250 ok\r\n', b'550 unknown\r\n', b'451 later\r\n', b'250 ok\r\n'] + OK[4:]
    out, final, sent = converse(replies, recips=[b'a@x', b'b@x', b'c@x', b'd@x'])
    assert out == [b'r', b'h192.0.2.1 does not like recipient.\nRemote host said: 550 unknown\n',
                   b's192.0.2.1 does not like recipient.\nRemote host said: 451 later\n', b'r']
    assert final.startswith(b'K192.0.2.1 accepted message.')
    assert sent.count(b'RCPT TO:') == 4 and sent.count(b'DATA\r\n') == 1


def test_session_multiline_reply_kept():
    replies = OK[:5] + [b'250-first\r\n250-second\r\n250 third\r\n']
    _, final, _ = converse(replies)
    assert final == (b'K192.0.2.1 accepted message.\n'
                     b'Remote host said: 250-first\n250-second\n250 third\n')


def test_session_reply_bounded():
    huge = b''.join(b'220-%06d %s\r\n' % (i, b'x' * 200) for i in range(400)) + b'220 end\r\n'
    _, final, _ = converse([huge])
    assert final == b'ZConnected to 192.0.2.1 but its reply was too long. (#4.4.2)\n'


def test_session_text_bounded_and_nul_free():
    long = b'250-' + b'y' * 6000 + b'\r\n250 ok\x00\r\n'
    _, final, _ = converse(OK[:5] + [long])
    said = final.split(b'Remote host said: ', 1)[1]
    assert len(said) == smtp.HUGESMTPTEXT and b'\0' not in final


def test_session_partial_line_not_sent():
    out, final, sent = converse(OK, message=b'no newline')
    assert final == b'DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n'
    assert not sent.endswith(b'.\r\n')


def test_session_refused_line_break():
    # remote.deliver passes None for a recipient with a line break
    recips = [None if remote.has_break(r) else r for r in [b'a\nb@x', b'c@x']]
    out, final, sent = converse(OK[:3] + [b'250 ok\r\n'] + OK[4:], recips=recips)
    assert out[0] == b'hSorry, I will not send an address with a line break. (#5.1.3)\n'
    assert out[1] == b'r' and final.startswith(b'K')
    assert sent.count(b'RCPT TO') == 1


def test_session_every_recipient_refused_before_asking_quotes_nothing():
    """"Giving up" carried MAIL's "250 ok" into the bounce."""
    out, final, sent = converse(OK[:3], recips=[None, None])
    assert out == [b'hSorry, I will not send an address with a line break. (#5.1.3)\n'] * 2
    assert final == b'DGiving up on 192.0.2.1.\n'
    assert b'RCPT' not in sent


def test_session_ehlo_421_is_the_name_rejected_with_its_text():
    """A 421 to EHLO: the peer is closing; a HELO found the connection
    gone and the report said "connection died", the 421's text lost."""
    out, final, sent = converse([b'220 hi\r\n', b'421 4.7.0 too many from you\r\n', b''])
    assert final == (b'ZConnected to 192.0.2.1 but my name was rejected.\n'
                     b'Remote host said: 421 4.7.0 too many from you\n')
    assert b'HELO' not in sent


def test_session_size_counts_the_line_ends_as_sent(tmp_path):
    """RFC 1870: SIZE= counts CR LF; the file's lines end in LF alone."""
    message = b'Subject: x\n\nhi\n'
    path = tmp_path / 'mess'
    path.write_bytes(b'skipped' + message)
    sock = FakeSock(OK)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 7, os.SEEK_SET)
        session = smtp.Session(smtp.Conn(sock, 10), b'192.0.2.1', b'me.example.org', [])
        final = session.run(b's@x', [b'j@y'], fd, size=remote.message_span(fd))
    finally:
        os.close(fd)
    assert final.startswith(b'K')
    assert b'MAIL FROM:<s@x> SIZE=18\r\n' in sock.sent, sock.sent
    assert sock.sent.endswith(b'Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n')


def test_session_small_message_goes_with_its_dot_in_one_write():
    """Body and dot written apart: the dot's small segment could wait for
    the peer's delayed ACK of the body (Nagle), as qmail's buffered
    output does not.  A big message: every piece, the last with the dot."""
    import tempfile
    for message, writes in ((b'Subject: x\n\nhi\n', 1), (b'line\n' * 40000, 5)):
        sock = FakeSock(OK)
        calls = []
        real = sock.sendall
        sock.sendall = lambda data: (calls.append(bytes(data)), real(bytes(data)))[1]
        with tempfile.TemporaryFile() as f:         # the queue's mess file
            f.write(message)
            f.seek(0)
            session = smtp.Session(smtp.Conn(sock, 10), b'192.0.2.1', b'me.example.org', [])
            final = session.run(b's@x', [b'j@y'], f.fileno(), size=len(message))
        assert final.startswith(b'K'), final
        body = calls[calls.index(b'DATA\r\n') + 1:-1]     # (then QUIT)
        assert len(body) == writes and body[-1].endswith(b'\r\n.\r\n'), [len(c) for c in body]
        assert 3 < len(body[-1]) <= smtp.DOT_COMPANY + 3
        assert b''.join(body) == message.replace(b'\n', b'\r\n') + b'.\r\n'


def test_session_dying_before_the_last_kilobyte_is_no_possible_duplicate():
    """The "Possible duplicate!" window opens with the message's last
    kilobyte and its dot, not with its last 64 KB read."""
    import tempfile
    sock = FakeSock(OK)
    real = sock.sendall
    sent = []

    def sendall(data):
        if sent and b'DATA\r\n' in sent and len(bytes(data)) > 10000:
            raise BrokenPipeError()
        sent.append(bytes(data))
        return real(bytes(data))
    sock.sendall = sendall
    with tempfile.TemporaryFile() as f:
        f.write(b'line\n' * 4000)
        f.seek(0)
        session = smtp.Session(smtp.Conn(sock, 10), b'192.0.2.1', b'me.example.org', [])
        final = session.run(b's@x', [b'j@y'], f.fileno(), size=20000)
    assert final == b'ZConnected to 192.0.2.1 but connection died. (#4.4.2)\n', final


def test_remote_connections_send_without_delay():
    import socket
    with socket.create_server(('127.0.0.1', 0)) as srv:
        sock = remote.connect('127.0.0.1', srv.getsockname()[1], 10)
        with sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_session_required_tls_without_starttls():
    tls = smtp.Tls(None, 'mx.example.com', True, True, b'example.com')
    sock = FakeSock(OK)
    out = []
    session = smtp.Session(smtp.Conn(sock, 10), b'192.0.2.1', b'me', out)
    final = session.run(b's@x', [b'r@example.com'], 0, tls=tls)
    assert final == (b'ZConnected to 192.0.2.1 but it does not offer STARTTLS; my '
                     b'control/tlsdestinations requires TLS for example.com. (#4.7.10)\n')
    assert b'MAIL FROM' not in sock.sent


def test_session_opportunistic_starttls_refused_goes_on():
    tls = smtp.Tls(None, 'mx.example.com', False, False, b'example.com')
    replies = [b'220 hi\r\n', b'250-mx\r\n250 STARTTLS\r\n', b'454 not now\r\n'] + OK[2:]
    sock = FakeSock(replies)
    out = []
    r, w = os.pipe()
    os.write(w, b'x\n')
    os.close(w)
    final = smtp.Session(smtp.Conn(sock, 10), b'192.0.2.1', b'me', out).run(
        b's@x', [b'r@example.com'], r, tls=tls)
    os.close(r)
    assert final.startswith(b'K192.0.2.1 accepted message.\nRemote host said: 250')
    assert b'STARTTLS\r\nMAIL FROM' in sock.sent


# --- SMTP AUTH to a relay (smtproutes "relay:port user password") ---------------

class FakeTlsSock(FakeSock):
    """FakeSock, as it is once "encrypted" (FakeCtx): the session's
    replies go on from the same script."""

    context = None          # (an SSLSocket's SSLContext)

    def version(self):
        return 'TLSv1.3'

    def cipher(self):
        return ('TLS_AES_256_GCM_SHA384', 'TLSv1.3', 256)

    def getpeercert(self):
        return {}


class FakeCtx:
    def wrap_socket(self, sock, server_hostname=None):
        self.hostname = server_hostname
        return sock


def converse_auth(replies, auth=(b'user', b'secret'), starttls=True, implicit=False, out=None,
                  required=True):
    tls = smtp.Tls(FakeCtx(), 'relay.example', required, required, b'example.com')
    tls.reason = b'my control/smtproutes gives a password for this route'
    tls.implicit = implicit
    sock = FakeTlsSock(replies)
    out = [] if out is None else out
    r, w = os.pipe()
    os.write(w, b'Subject: x\n\nhi\n')
    os.close(w)
    try:
        final = smtp.Session(smtp.Conn(sock, 10), b'192.0.2.1', b'me', out).run(
            b's@x', [b'r@example.com'], r, tls=tls, auth=auth)
    finally:
        os.close(r)
    return final, sock.sent


def ehlo_offering(*ext):
    lines = [b'250-relay'] + [b'250-' + e for e in ext]
    lines[-1] = b'250 ' + lines[-1][4:]
    return b'\r\n'.join(lines) + b'\r\n'


TAIL = [b'250 ok\r\n', b'250 ok\r\n', b'354 go\r\n', b'250 ok 9\r\n']


@pytest.mark.parametrize('mechs, replies, wire', [
    (b'AUTH LOGIN PLAIN', [b'235 ok\r\n'], [b'AUTH PLAIN AHVzZXIAc2VjcmV0']),
    (b'AUTH LOGIN', [b'334 VXNlcm5hbWU6\r\n', b'334 UGFzc3dvcmQ6\r\n', b'235 ok\r\n'],
     [b'AUTH LOGIN', b'dXNlcg==', b'c2VjcmV0']),
    (b'AUTH=LOGIN', [b'334 VXNlcm5hbWU6\r\n', b'334 UGFzc3dvcmQ6\r\n', b'235 ok\r\n'],
     [b'AUTH LOGIN', b'dXNlcg==', b'c2VjcmV0']),
    # RFC 2195's own example: tim, tanstaaftanstaaf
    (b'AUTH CRAM-MD5', [b'334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n',
                        b'235 ok\r\n'],
     [b'AUTH CRAM-MD5', b'dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw']),
])
def test_session_smtp_auth_under_tls(mechs, replies, wire):
    auth = (b'tim', b'tanstaaftanstaaf') if b'CRAM' in mechs else (b'user', b'secret')
    final, sent = converse_auth(
        [b'220 hi\r\n', ehlo_offering(b'STARTTLS', mechs), b'220 go\r\n',
         ehlo_offering(mechs)] + replies + TAIL, auth=auth)
    assert final == (b'K192.0.2.1 accepted message.\nTLS TLSv1.3 TLS_AES_256_GCM_SHA384 '
                     b'verified.\nSMTP AUTH as %s.\nRemote host said: 250 ok 9\n' % auth[0])
    lines = sent.split(b'\r\n')
    at = lines.index(b'EHLO me', 2)         # the EHLO under TLS
    assert lines[at + 1:at + 1 + len(wire)] == wire
    assert lines[at + 1 + len(wire)] == b'MAIL FROM:<s@x>'


def test_session_smtp_auth_on_port_465_is_tls_from_the_start():
    final, sent = converse_auth([b'220 hi\r\n', ehlo_offering(b'AUTH PLAIN'), b'235 ok\r\n']
                                + TAIL, implicit=True)
    assert final.startswith(b'K192.0.2.1 accepted message.\nTLS TLSv1.3')
    assert sent.startswith(b'EHLO me\r\nAUTH PLAIN AHVzZXIAc2VjcmV0\r\nMAIL FROM:<s@x>')


@pytest.mark.parametrize('replies, want', [
    # refused: the mail waits for the admin to fix the password
    ([ehlo_offering(b'AUTH PLAIN'), b'535 5.7.8 bad credentials\r\n'],
     b'ZConnected to 192.0.2.1 but it refused my SMTP AUTH; my control/smtproutes '
     b'gives a user and password for this route. (#4.7.8)\n'
     b'Remote host said: 535 5.7.8 bad credentials\n'),
    ([ehlo_offering(b'SIZE 100')],
     b'ZConnected to 192.0.2.1 but it does not offer SMTP AUTH; my control/smtproutes '
     b'gives a user and password for this route. (#4.7.0)\n'),
    ([ehlo_offering(b'AUTH GSSAPI XOAUTH2')],
     b'ZConnected to 192.0.2.1 but it offers no SMTP AUTH mechanism I use (PLAIN, LOGIN, '
     b'CRAM-MD5); my control/smtproutes gives a user and password for this route. (#4.7.0)\n'),
    # a challenge the mechanism does not expect: cancelled, then refused
    ([ehlo_offering(b'AUTH PLAIN'), b'334 more?\r\n', b'501 cancelled\r\n'],
     b'ZConnected to 192.0.2.1 but it refused my SMTP AUTH; my control/smtproutes '
     b'gives a user and password for this route. (#4.7.8)\nRemote host said: 501 cancelled\n'),
])
def test_session_smtp_auth_failures_defer_and_send_no_mail(replies, want):
    final, sent = converse_auth([b'220 hi\r\n', ehlo_offering(b'STARTTLS', b'AUTH PLAIN'),
                                 b'220 go\r\n'] + replies + TAIL)
    assert final == want
    assert b'MAIL FROM' not in sent and b'secret' not in final


def test_session_port_465_never_falls_back_to_the_clear():
    """A connection dying under TLS on port 465 (no password: TLS not
    required) was TlsFallback, and a second, plain connection then waited
    for a greeting the TLS-only port never gives (timeoutremote)."""
    final, sent = converse_auth([b'220 hi\r\n', ehlo_offering(b'SIZE 9'), None],
                                auth=None, implicit=True, required=False)
    assert final == b'ZConnected to 192.0.2.1 but connection died. (#4.4.2)\n'


@pytest.mark.parametrize('stage', ['mail', 'rcpt'])
def test_session_a_policy_refusal_after_smtp_auth_waits(stage):
    """A relay refusing for policy once authenticated (a sender the
    account may not use) bounced at once: it is the admin's to fix, as a
    refused password is."""
    refusal = b'553 5.7.1 <s@x>: Sender address rejected: not owned by user user\r\n'
    tail = [refusal] if stage == 'mail' else [b'250 ok\r\n', refusal]
    out = []
    final, sent = converse_auth([b'220 hi\r\n', ehlo_offering(b'STARTTLS', b'AUTH PLAIN'),
                                 b'220 go\r\n', ehlo_offering(b'AUTH PLAIN'), b'235 ok\r\n']
                                + tail, out=out)
    said = (b'Remote host said: 553 5.7.1 <s@x>: Sender address rejected: not owned by '
            b'user user\n(a refusal for policy on a route with SMTP AUTH: waiting for the '
            b'account to be put right)\n')
    if stage == 'mail':
        assert final == b'ZConnected to 192.0.2.1 but sender was rejected.\n' + said
    else:       # the recipient's s: it waits (the D is for the r ones, none)
        assert out == [b's192.0.2.1 does not like recipient.\n' + said]


def test_session_smtp_auth_never_sends_the_password_in_the_clear():
    final, sent = converse_auth([b'220 hi\r\n', ehlo_offering(b'AUTH PLAIN')] + TAIL)
    assert final == (b'ZConnected to 192.0.2.1 but it does not offer STARTTLS; my '
                     b'control/smtproutes gives a password for this route. (#4.7.10)\n')
    assert b'AUTH' not in sent and b'MAIL' not in sent


# --- reports, as qmail-rspawn reads them ----------------------------------------

@pytest.mark.parametrize('output, want', [
    (b'r\0K192.0.2.1 accepted message.\nRemote host said: 250 ok\n\0',
     b'K192.0.2.1 accepted message.\nRemote host said: 250 ok\n'),
    (b'h192.0.2.1 does not like recipient.\nRemote host said: 550 no\n\0'
     b'DGiving up on 192.0.2.1.\n\0',
     b'D192.0.2.1 does not like recipient.\nRemote host said: 550 no\n'
     b'Giving up on 192.0.2.1.\n'),
    (b's192.0.2.1 does not like recipient.\nRemote host said: 450 later\n\0'
     b'DGiving up on 192.0.2.1.\n\0',
     b'Z192.0.2.1 does not like recipient.\nRemote host said: 450 later\n'
     b'Giving up on 192.0.2.1.\n'),
    (b'r\0Z192.0.2.1 failed after I sent the message.\nRemote host said: 451 x\n\0',
     b'Z192.0.2.1 failed after I sent the message.\nRemote host said: 451 x\n'),
    (b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0",
     b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"),
    (b"DSorry, I couldn't find any host named nx.example. (#5.1.2)\n\0",
     b"DSorry, I couldn't find any host named nx.example. (#5.1.2)\n"),
])
def test_rspawn_reads_reports(output, want):
    assert rspawn.report(0, output) == want


def run_main(args, cwd=None):
    code = ('import sys; from qmail import remote; '
            'sys.exit(remote.main(sys.argv[1:]))')
    return subprocess.run([sys.executable, '-c', code] + args, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60, cwd=cwd)


def test_main_usage_is_a_report():
    r = run_main(['only.one'])
    assert r.returncode == 0
    assert r.stdout == b'DI (qmail-remote) was invoked improperly. (#5.3.5)\n\0'


def test_main_always_one_report_and_exit_0():
    # The source tree's auto.QMAIL (/var/qmail) may or may not exist
    # here; whichever step stops this delivery (no home, no control/me,
    # the sender's line break), it stops before any network, with one
    # report and exit code 0.
    r = run_main(['example.com', 'a\nb@example.com', 'c@example.com'])
    assert r.returncode == 0 and not r.stderr
    assert r.stdout in (b'ZUnable to switch to home directory. (#4.3.0)\n\0',
                        b'ZUnable to read control files. (#4.3.0)\n\0',
                        b'D' + remote.P_SENDER + b'\0'), r.stdout


def test_main_unreadable_me_defers_whatever_else_is_there(tmp_path, monkeypatch, capfd):
    """qmail-remote's control_init reads me first: with helohost present
    an unreadable me was never read, and the delivery went out."""
    from qmail.lib import auto
    ctl = tmp_path / 'control'
    ctl.mkdir()
    (ctl / 'helohost').write_text('helo.example\n')
    (ctl / 'me').mkdir()                # EISDIR on read
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert remote.main(['example.com', 'a@b.example', 'c@example.com']) == 0
    assert capfd.readouterr().out == 'ZUnable to read control files. (#4.3.0)\n\0'


# --- tcpto ----------------------------------------------------------------------

A = tcpto.packed('192.0.2.9')
B = tcpto.packed('192.0.2.10')
V6 = tcpto.packed('2001:db8::9')
EMPTY = bytes(tcpto.SIZE4)


def apply(buf, change):
    if change is None:
        return buf
    pos, rec = change
    buf = bytearray(buf) + bytes(max(0, pos + len(rec) - len(buf)))
    buf[pos:pos + len(rec)] = rec
    return bytes(buf)


def test_tcpto_record_format():
    buf = apply(EMPTY, tcpto.update(EMPTY, A, True, 0x01020304, False))
    assert buf[:16] == bytes([192, 0, 2, 9, 1, 0, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0])
    assert len(buf) == 1024
    assert tcpto.records(buf) == [('192.0.2.9', 1, 0x01020304)]


def test_tcpto_two_timeouts_make_dead():
    now, pid = 1_000_000, 0
    buf = apply(EMPTY, tcpto.update(EMPTY, A, True, now, False))
    assert tcpto.lookup(buf, A, now + 1, pid) == (False, True)      # one is not enough
    assert tcpto.update(buf, A, True, now + 60, True) is None       # within 2 minutes
    buf = apply(buf, tcpto.update(buf, A, True, now + 130, True))
    assert tcpto.records(buf) == [('192.0.2.9', 2, now + 130)]
    assert tcpto.lookup(buf, A, now + 131, pid) == (True, True)
    assert tcpto.lookup(buf, A, now + 130 + 3839, pid) == (True, True)
    assert tcpto.lookup(buf, A, now + 130 + 3840, pid) == (False, True)   # (60 + 0) << 6
    assert tcpto.lookup(buf, A, now + 130 + 3840, 31) == (True, True)     # (60 + 31) << 6
    assert tcpto.lookup(buf, A, now - 5, pid) == (False, True)            # clock went back
    assert tcpto.lookup(buf, B, now, pid) == (False, False)


def test_tcpto_success_clears():
    now = 5000
    buf = apply(EMPTY, tcpto.update(EMPTY, A, True, now, False))
    buf = apply(buf, tcpto.update(buf, A, True, now + 200, True))
    assert tcpto.update(buf, A, False, now + 300, False) is None    # not seen: left alone
    buf = apply(buf, tcpto.update(buf, A, False, now + 300, True))
    assert tcpto.records(buf) == []
    assert tcpto.lookup(buf, A, now + 301, 0) == (False, True)


def test_tcpto_count_capped():
    now, buf = 0, EMPTY
    for i in range(15):
        buf = apply(buf, tcpto.update(buf, A, True, now + i * 200, True))
    assert tcpto.records(buf)[0][1] == 10


def test_tcpto_full_table_evicts_oldest():
    buf = EMPTY
    for i in range(64):
        addr = bytes([10, 0, 0, i])
        buf = apply(buf, tcpto.update(buf, addr, True, 10000 + i, False))
    assert len(tcpto.records(buf)) == 64
    buf = apply(buf, tcpto.update(buf, A, True, 20000, False))
    ips = [ip for ip, _, _ in tcpto.records(buf)]
    assert '10.0.0.0' not in ips and '192.0.2.9' in ips and len(ips) == 64
    assert buf[:4] == A


def test_tcpto_empty_file_remembers_nothing():
    assert tcpto.update(b'', A, True, 1, False) is None
    assert tcpto.update(b'', V6, True, 1, False) is None
    assert tcpto.lookup(b'', A, 1, 0) == (False, False)


def test_tcpto_ipv6_after_qmails_table():
    buf = apply(EMPTY, tcpto.update(EMPTY, V6, True, 77, False))
    assert len(buf) == 1024 + 32
    assert buf[:1024] == EMPTY                      # qmail's table untouched
    assert buf[1024:1040] == V6 and buf[1040] == 1
    assert tcpto.records(buf) == [('2001:db8::9', 1, 77)]
    buf = apply(buf, tcpto.update(buf, V6, True, 300, True))
    assert tcpto.lookup(buf, V6, 301, 0) == (True, True)


def test_tcpto_file_io(tmp_path):
    fn = str(tmp_path / 'tcpto')
    with open(fn, 'wb') as f:
        f.write(bytes(1024))
    mem = tcpto.Memory(fn, pid=0)
    assert not mem.dead('192.0.2.9', 1000)
    mem.err('192.0.2.9', True, 1000)
    mem.err('2001:db8::9', True, 1000)
    assert not mem.dead('192.0.2.9', 1001)
    mem.err('192.0.2.9', True, 1200)
    assert mem.dead('192.0.2.9', 1201)
    got = tcpto_prog.format_records(tcpto.records(tcpto.read_table(fn)), 1300)
    assert got == (b'192.0.2.9 timed out 100 seconds ago; # recent timeouts: 2\n'
                   b'2001:db8::9 timed out 300 seconds ago; # recent timeouts: 1\n')
    tcpto.clear(fn)
    assert tcpto.read_table(fn) == bytes(tcpto.SIZE)
    mem.err('192.0.2.9', True, 2000)
    tcpto.tcpto_clean(fn)
    assert tcpto.records(tcpto.read_table(fn)) == []


def test_tcpto_missing_file_is_no_memory(tmp_path):
    mem = tcpto.Memory(str(tmp_path / 'none'), pid=0)
    assert not mem.dead('192.0.2.9', 1)
    mem.err('192.0.2.9', True, 1)                   # no exception
    tcpto.tcpto_clean(str(tmp_path / 'none'))       # no exception, no file
    assert not os.path.exists(tmp_path / 'none')


# --- control files ------------------------------------------------------------------

def settings_from(tmp_path, **files):
    from qmail.lib import control
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return remote.Settings(control.Controls(str(tmp_path)))


def test_settings_defaults(tmp_path):
    s = settings_from(tmp_path, me='mail.example.org\n')
    assert s.helohost == b'mail.example.org'
    assert (s.timeoutconnect, s.timeout) == (60, 1200)
    assert s.routes == {} and s.tlsdest == {} and s.nameservers is None


def test_settings_files(tmp_path):
    s = settings_from(tmp_path, me='me.example\n', helohost='helo.example \n',
                      timeoutconnect='5\n', timeoutremote='0\n',
                      smtproutes='a.example:relay.example:26\n',
                      tlsdestinations='# banks\n.bank.example\n',
                      dnsservers='127.0.0.1:5353\n[::1]\n')
    assert s.helohost == b'helo.example'
    assert (s.timeoutconnect, s.timeout) == (5, 1)      # never 0: that would be no wait at all
    assert s.routes == {b'a.example': b'relay.example:26'}
    assert s.tlsdest == {b'.bank.example': b''}
    assert s.nameservers == [('127.0.0.1', 5353), ('::1', 53)]


def test_settings_are_kept_while_their_files_stay(tmp_path, monkeypatch):
    """A qmail-rspawn worker parsed smtproutes and tlsdestinations at every
    delivery (10,000 lines each: 150 ms a delivery; found by a review of
    large configurations): kept now while no control file changes."""
    import time
    from qmail.lib import control
    monkeypatch.setattr(remote, '_last_settings', None)
    (tmp_path / 'me').write_text('me.example\n')
    (tmp_path / 'smtproutes').write_text('a.example:relay.example\n')
    time.sleep(control.RACY_FINE + 0.1)            # (a file just changed is not trusted)
    first = remote.load_settings(control.Controls(str(tmp_path)))
    assert remote.load_settings(control.Controls(str(tmp_path))) is first
    (tmp_path / 'smtproutes').write_text('a.example:other.example\n')
    time.sleep(control.RACY_FINE + 0.1)
    again = remote.load_settings(control.Controls(str(tmp_path)))
    assert again is not first and again.routes == {b'a.example': b'other.example'}
    (tmp_path / 'tlsdestinations').write_text('a.example\n')      # a file that was missing
    time.sleep(control.RACY_FINE + 0.1)
    assert remote.load_settings(control.Controls(str(tmp_path))).tlsdest == {b'a.example': b''}


def test_settings_without_a_name_defer(tmp_path):
    with pytest.raises(remote.Report) as e:
        settings_from(tmp_path)
    assert e.value.record == b'ZUnable to read control files. (#4.3.0)\n'


def test_settings_bad_dnsservers_defer(tmp_path):
    with pytest.raises(remote.Report) as e:
        settings_from(tmp_path, me='x\n', dnsservers='ns.example.com\n')
    assert e.value.record == b'ZUnable to parse control/dnsservers. (#4.3.0)\n'


def test_a_reply_dripped_a_byte_at_a_time_times_out_as_a_whole():
    """timeoutremote bounds a whole reply, not each read: a server that
    sends a byte every 0.2 s, never waiting a whole timeout (1 s) between
    two, used to hold the connection for as many timeouts as the reply
    had bytes (here 3 s, and up to REPLYMAX of them)."""
    import socket
    import threading
    import time
    ours, theirs = socket.socketpair()

    def drip():
        try:
            for byte in b'250 a dripped reply\r\n':
                time.sleep(0.2)
                theirs.send(bytes((byte,)))
        except OSError:
            pass
    t = threading.Thread(target=drip, daemon=True)
    t.start()
    conn = smtp.Conn(ours, 1)
    start = time.monotonic()
    with pytest.raises(smtp.Dropped):
        conn.reply()
    assert time.monotonic() - start < 1.5
    ours.close()
    theirs.close()
    t.join(10)


class FakeResolver:
    """answers: {(name, type): [addresses] or an exception to raise}."""

    def __init__(self, answers):
        self.answers = answers

    def resolve(self, name, rdtype, search=False, raise_on_no_answer=False):
        import dns.rdatatype

        class Answer:
            pass
        got = self.answers[(name.to_text(omit_final_dot=True), dns.rdatatype.to_text(rdtype))]
        if isinstance(got, Exception):
            raise got
        answer = Answer()

        class R:
            def __init__(self, address):
                self.address = address
        answer.rrset = [R(a) for a in got] if got else None
        return answer


def test_an_nxdomain_for_aaaa_after_a_records_keeps_them():
    """Some broken servers answer NXDOMAIN for AAAA when A exists: the A
    records are kept (qmail asks for A alone); the name was bounced as
    "couldn't find any host" before."""
    import dns.resolver
    nx = dns.resolver.NXDOMAIN()
    res = FakeResolver({('a.example', 'A'): ['192.0.2.1'], ('a.example', 'AAAA'): nx,
                        ('b.example', 'A'): nx, ('b.example', 'AAAA'): nx,
                        ('c.example', 'A'): [], ('c.example', 'AAAA'): nx})
    assert qdns.addresses(res, 'a.example') == (['192.0.2.1'], False)
    for name in ('b.example', 'c.example'):
        with pytest.raises(qdns.DnsHard):
            qdns.addresses(res, name)


@pytest.mark.parametrize('host, want', [
    (b'example.org', b'example.org'),
    (b'Example.ORG.', b'example.org'),
    (b'example.or\\g', b'example.org'),
    (b'example.\\111rg', b'example.org'),
    ('bücher.test'.encode(), b'xn--bcher-kva.test'),
    # IDNA 2008 (UTS 46, not transitional), as browsers and registries:
    # IDNA 2003 made this fass.de, another domain and another MX.
    ('faß.de'.encode(), b'xn--fa-hia.de'),
    ('Bücher.Test'.encode(), b'xn--bcher-kva.test'),
    (b'[192.0.2.1]', b'[192.0.2.1]'),
    (b'[IPv6:2001:DB8::1]', b'[ipv6:2001:db8::1]'),
    (b'a..b', b'a..b'),                     # no DNS name: as it is
])
def test_policy_name(host, want):
    assert remote.policy_name(host) == want


def test_every_spelling_of_a_listed_domain_needs_tls():
    """The TLS requirement and the route go with the name DNS looks up,
    not with its spelling: "plain.example." reached the same MX in the
    clear (a helper's review)."""
    table = remote.parse_tlsmap([b'plain.example', b'xn--bcher-kva.test', b'.sub.example.',
                                 b'Upper.Example.\r', b'[IPv6:2001:db8::1]:/etc/ssl/x.pem'])
    assert set(table) == {b'plain.example', b'xn--bcher-kva.test', b'.sub.example',
                          b'upper.example', b'[ipv6:2001:db8::1]'}
    assert table[b'[ipv6:2001:db8::1]'] == b'/etc/ssl/x.pem'
    for host in (b'plain.example', b'PLAIN.example.', b'plain.exampl\\e',
                 b'plain.\\101xample', 'bücher.test'.encode(), b'a.Sub.Example.',
                 b'upper.example'):
        assert remote.lookup_map(remote.policy_name(host), table) is not None, host
    assert remote.lookup_map(remote.policy_name(b'other.example.'), table) is None


@pytest.mark.parametrize('name, patterns, want', [
    ('example.org', ['example.org', '.example.org'], True),
    ('mx.example.org', ['example.org', '.example.org'], True),
    ('MX.Example.Org.', ['example.org', '.example.org'], True),
    ('*.example.org', ['example.org', '.example.org'], True),     # all under it
    ('*.mx.example.org', ['.example.org'], True),
    ('mx.attacker.example', ['example.org', '.example.org'], False),
    ('evilexample.org', ['example.org', '.example.org'], False),
    ('*.org', ['example.org', '.example.org'], False),            # covers other names
    ('*', ['example.org', '.example.org'], False),
    ('example.org.evil', ['example.org', '.example.org'], False),
    ('*.google.com', ['mx.google.com'], True),                    # names it
    ('*.google.com', ['google.com'], False),
    ('mx.google.com', ['.google.com'], True),
])
def test_name_matches(name, patterns, want):
    assert smtp.name_matches(name, patterns) == want


def test_cert_names():
    cert = {'subject': ((('commonName', 'cn.example'),),),
            'subjectAltName': (('DNS', 'a.example'), ('IP Address', '192.0.2.1'),
                               ('DNS', '*.b.example'))}
    assert smtp.cert_names(cert) == ['a.example', '*.b.example']
    assert smtp.cert_names({'subject': ((('commonName', 'cn.example'),),)}) == ['cn.example']
    assert smtp.cert_names({}) == []


def test_tls_policy_names():
    table = remote.parse_tlsmap([b'plain.example', b'hosted.example::.mail.example mx2.example',
                                 b'loose.example::mx'])
    p = remote.tls_policy(b'plain.example', table)
    assert (p.required, p.match) == (True, ['plain.example', '.plain.example'])
    assert not p.ctx_names.check_hostname and p.ctx.check_hostname
    assert remote.tls_policy(b'hosted.example', table).match == ['.mail.example', 'mx2.example']
    assert remote.tls_policy(b'loose.example', table).match is None
    assert remote.tls_policy(b'other.example', table).required is False


def test_tlsclientciphers_setting(tmp_path):
    s = settings_from(tmp_path, me='me.example\n')
    assert s.tlsciphers is None
    s = settings_from(tmp_path, me='me.example\n', tlsclientciphers='HIGH\n\n!aNULL\n')
    assert s.tlsciphers == b'HIGH:!aNULL'
    p = remote.tls_policy(b'x.example', {}, b'ECDHE-RSA-AES256-GCM-SHA384')
    assert {c['name'] for c in p.ctx.get_ciphers() if c['protocol'] != 'TLSv1.3'} == {
        'ECDHE-RSA-AES256-GCM-SHA384'}
    for table in ({}, remote.parse_tlsmap([b'x.example'])):
        with pytest.raises(remote.Report) as got:
            remote.tls_policy(b'x.example', table, b'NO-SUCH-CIPHER')
        assert got.value.record.startswith(b"ZThe cipher list in control/tlsclientciphers"), \
            got.value


def test_mx_address_lookups_stop_at_the_budget(monkeypatch):
    """MX hosts whose DNS never answers cost 64 s each (A and AAAA, 30 s
    lifetime and a little): 32 of them took half an hour before any
    connection.  After MX_BUDGET the rest are not asked (flagsoft)."""
    now = [0.0]
    asked = []
    monkeypatch.setattr(qdns, 'mx', lambda res, host: [(10, 'mx%d.example' % i)
                                                       for i in range(32)])

    def slow(res, name):
        asked.append(name)
        now[0] += 64
        raise qdns.DnsSoft('timeout')
    monkeypatch.setattr(qdns, 'addresses', slow)
    out, flagsoft = qdns.dns_mxip(None, 'slow.example', random.Random(1),
                                  clock=lambda: now[0])
    assert (out, flagsoft) == ([], True)
    assert len(asked) == 2 and now[0] <= qdns.MX_BUDGET + 64


def test_an_mx_that_is_an_address_is_checked_against_the_domain():
    """An MX record holding a bare address is DNS's word, as forgeable as
    a name: its certificate must name the domain, not the address."""
    table = remote.parse_tlsmap([b'ipmx.example', b'hosted.example::mx .mail.example'])
    p = remote.tls_policy(b'ipmx.example', table)
    tls = remote.tls_for(b'ipmx.example', qdns.Mx(10, '192.0.2.5', '192.0.2.5'), p)
    assert tls.match == ['ipmx.example', '.ipmx.example'] and tls.ctx is p.ctx_names
    lit = remote.tls_for(b'[192.0.2.5]', qdns.Mx(0, '192.0.2.5', '192.0.2.5'),
                         remote.tls_policy(b'[192.0.2.5]', remote.parse_tlsmap([b':'])))
    assert lit.match is None and lit.hostname == '192.0.2.5'
    # "mx" among other names: the MX host's own name is one more
    h = remote.tls_for(b'hosted.example', qdns.Mx(10, 'MX1.Other.example', '192.0.2.6'),
                       remote.tls_policy(b'hosted.example', table))
    assert h.match == ['mx1.other.example', '.mail.example']


def test_route_and_name_keys_are_spelled_as_dns_looks_up():
    routes = remote.parse_map(['bücher.test:relay.test'.encode(), b'Final.Example.:r2:26'])
    assert remote.lookup_map(remote.policy_name('bücher.test'.encode()), routes) == b'relay.test'
    assert remote.lookup_map(remote.policy_name(b'final.example'), routes) == b'r2:26'
    table = remote.parse_tlsmap([b'h.example::mx2.example. B\xc3\xbccher.test'])
    assert remote.tls_policy(b'h.example', table).match == ['mx2.example', 'xn--bcher-kva.test']


def test_a_timed_out_a_and_an_nxdomain_aaaa_is_temporary():
    import dns.exception
    import dns.resolver
    res = FakeResolver({('t.example', 'A'): dns.exception.Timeout(),
                        ('t.example', 'AAAA'): dns.resolver.NXDOMAIN()})
    assert qdns.addresses(res, 't.example') == ([], True)


def test_idna_2008_is_what_dns_names_use():
    """dnspython takes IDNA 2008 only where the idna package is there
    (a dependency: pyproject.toml, and the Makefile's runtime); without
    it faß.de silently becomes fass.de again."""
    import dns.name
    assert dns.name.have_idna_2008
    runtime = '/usr/local/lib/qmail/venv/bin/python3'
    if os.path.exists(runtime):
        import subprocess
        r = subprocess.run([runtime, '-c', 'import dns.name; print(dns.name.have_idna_2008)'],
                           capture_output=True, timeout=60)
        assert r.stdout.strip() == b'True', (r.stdout, r.stderr)
