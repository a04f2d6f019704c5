"""qmail-send's pure rules: routing, VERP, retries, bounce text."""

import pytest

from qmail import send_rules as r
from qmail.send import Pass, records

ROUTING = r.Routing(
    locals_=[b'example.org', b'LOCALHOST'],
    vdoms=[b'virt.example.net:joe-virt', b'.wild.example.net:wild',
           b'exc.wild.example.net:', b'bob@users.example.com:bobby',
           b'users.example.com:users'],
    percenthack=[b'relay.example.org'],
    envnoathost=b'example.org')


@pytest.mark.parametrize('recip, want', [
    (b'joe@example.org', (0, b'joe@example.org')),
    (b'joe@EXAMPLE.org', (0, b'joe@EXAMPLE.org')),
    (b'joe@localhost', (0, b'joe@localhost')),
    (b'joe', (0, b'joe@example.org')),                     # envnoathost
    (b'joe@elsewhere.com', (1, b'joe@elsewhere.com')),
    (b'info@virt.example.net', (0, b'joe-virt-info@virt.example.net')),
    (b'x@a.wild.example.net', (0, b'wild-x@a.wild.example.net')),
    (b'x@b.a.wild.example.net', (0, b'wild-x@b.a.wild.example.net')),
    (b'x@wild.example.net', (1, b'x@wild.example.net')),   # .wild needs a label
    (b'x@exc.wild.example.net', (1, b'x@exc.wild.example.net')),  # exception
    (b'bob@users.example.com', (0, b'bobby-bob@users.example.com')),
    (b'ann@users.example.com', (0, b'users-ann@users.example.com')),
    (b'u%elsewhere.com@relay.example.org', (1, b'u@elsewhere.com')),
    (b'u%joe%example.org@relay.example.org', (0, b'u%joe@example.org')),
    # after the hack the domain follows the last '@', as qmail-send.c
    # finds it again (it was taken from the replaced '%')
    (b'u%x@example.org@relay.example.org', (0, b'u@x@example.org')),
])
def test_rewrite(recip, want):
    got = r.rewrite(recip, ROUTING)
    assert got == want, 'got %r want %r' % (got, want)


def test_virtualdomains_last_line_wins():
    """As qmail's constmap: a line appended for a domain already listed
    overrides it (it delivered to the first line's user)."""
    routing = r.Routing([b'example.org'], [b'example.net:alice', b'Example.NET:bob'],
                        [], b'example.org')
    assert r.rewrite(b'u@example.net', routing) == (0, b'bob-u@example.net')
    assert r.stripvdomprepend(b'bob-u@example.net', routing) == b'u@example.net'


def test_rewrite_catchall():
    routing = r.Routing([b'example.org'], [b':alias-catchall'], [], b'example.org')
    assert r.rewrite(b'x@anywhere.com', routing) == (0, b'alias-catchall-x@anywhere.com')


@pytest.mark.parametrize('recip, want', [
    (b'joe-virt-info@virt.example.net', b'info@virt.example.net'),
    (b'wild-x@a.wild.example.net', b'x@a.wild.example.net'),
    (b'joe@example.org', b'joe@example.org'),
    (b'other-info@virt.example.net', b'other-info@virt.example.net'),
])
def test_stripvdomprepend(recip, want):
    assert r.stripvdomprepend(recip, ROUTING) == want


@pytest.mark.parametrize('sender, recip, want', [
    (b'owner-@lists.example.org-@[]', b'joe@example.com',
     b'owner-joe=example.com@lists.example.org'),
    (b'plain@example.org', b'joe@example.com', b'plain@example.org'),
    (b'', b'joe@example.com', b''),
    (b'owner-@lists.example.org-@[]', b'nodomain', b'owner-@lists.example.org-@[]'),
])
def test_senderadd(sender, recip, want):
    assert r.senderadd(sender, recip) == want


@pytest.mark.parametrize('age, channel, want', [
    (0, 0, 100), (0, 1, 400), (99, 0, 361), (100, 1, 900),
])
def test_nextretry_schedule(age, channel, want):
    birth = 1000000
    assert r.nextretry(birth, birth + age, channel) == birth + want


def test_nextretry_grows_with_square_root_of_age():
    birth = 0
    times = [r.nextretry(birth, t, 0) for t in (0, 100, 10000, 360000)]
    assert times == [100, 400, 12100, 372100]
    assert r.nextretry(1000, 500, 1) == 500 + 400            # clock went back: from now


@pytest.mark.parametrize('x', [0, 1, 2, 3, 4, 15, 16, 17, 10**6, 10**12 + 1])
def test_isqrt(x):
    y = r.isqrt(x)
    assert y * y <= x < (y + 1) * (y + 1)


@pytest.mark.parametrize('recip, report, want', [
    (b'a@b', b'Sorry, no mailbox here by that name. (#5.1.1)\n',
     b'<a@b>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n'),
    (b'a@b', b'no newline', b'<a@b>:\nno newline\n\n'),
    (b'a@b', b'para one\n\npara two\n', b'<a@b>:\npara one\n/para two\n\n'),
    (b'a\n@b', b'x\n', b'<a_@b>:\nx\n\n'),
])
def test_bounce_entry(recip, report, want):
    got = r.bounce_entry(recip, report)
    assert got == want, 'got %r want %r' % (got, want)


@pytest.mark.parametrize('sender, want', [
    (b'joe@example.com', (b'', b'joe@example.com')),
    (b'', (b'#@[]', b'postmaster@example.org')),
    (b'#@[]', None),
    (b'owner-@lists.example.org-@[]', (b'', b'owner-@lists.example.org')),
])
def test_bounce_envelope(sender, want):
    assert r.bounce_envelope(sender, b'postmaster@example.org') == want


def test_bounce_head_single_and_double():
    single = r.bounce_head(b'30 Jul 1996 04:04:54 -0000', b'MAILER-DAEMON',
                           b'mail.example.org', b'joe@example.com', True)
    assert single == (
        b'Date: 30 Jul 1996 04:04:54 -0000\n'
        b'From: MAILER-DAEMON@mail.example.org\n'
        b'To: joe@example.com\n'
        b'Subject: failure notice\n\n'
        b'Hi. This is the qmail-send program at mail.example.org.\n'
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n")
    double = r.bounce_head(b'd', b'MAILER-DAEMON', b'h', b'postmaster@h', False)
    assert double.endswith(b'I tried to deliver a bounce message to this address, '
                           b'but the bounce bounced!\n\n')
    assert r.bounce_separator(b'joe@example.com', True) == (
        b'--- Below this line is a copy of the message.\n\nReturn-Path: <joe@example.com>\n')
    assert r.bounce_separator(b'', False) == (
        b'--- Below this line is the original bounce.\n\nReturn-Path: <>\n')


def test_bounce_header_lines_hold_no_line_end_of_the_address():
    """Not qmail: a sender with a line end (qmail-queue takes any from a
    local user) starts no header line of its own in its bounce."""
    head = r.bounce_head(b'd', b'MAILER-DAEMON', b'h', b'a\nBcc: x@y\r@b', True)
    assert b'\nBcc:' not in head and b'\r' not in head
    assert b'\nTo: "a\\_Bcc: x@y\\_"@b\nSubject: failure notice\n' in head, head
    sep = r.bounce_separator(b'a\nX-Evil: 1@b', True)
    assert sep.count(b'\n') == 3 and b'\nX-Evil' not in sep, sep


@pytest.mark.parametrize('addr, want', [
    (b'joe@example.com', b'joe@example.com'),
    (b'joe smith@example.com', b'"joe smith"@example.com'),
    (b'.joe@example.com', b'".joe"@example.com'),
    (b'a..b@example.com', b'"a..b"@example.com'),
    (b'a"b@x', b'"a\\"b"@x'),
    (b'', b''),
    (b'#@[]', b'#@[]'),
])
def test_quote_addr(addr, want):
    assert r.quote2(addr) == want          # qmail.lib.quote, as qmail-send uses it


@pytest.mark.parametrize('text, want', [
    (b'did 0+0+1/\n', 'did_0+0+1//'),
    (b'a%b\xffc\td', 'a_b_c_d'),
])
def test_logsafe(text, want):
    assert r.logsafe(text) == want


def steps(data):
    """What a pass over a channel file reads, record by record."""
    p, out = Pass(None, data), []
    while (step := p.peek()) is not None:
        assert p.peek() == step                 # (a step not taken is read again)
        out.append(step)
        p.pos = step[0] + len(step[1]) + 1
    return out


def test_pass_reads_records_one_at_a_time():
    data = b'Ta@b\0Dc@d\0Te@f\0'
    assert steps(data) == [(0, b'Ta@b'), (5, b'Dc@d'), (10, b'Te@f')]
    assert steps(b'Ta@b\0Tpartial') == [(0, b'Ta@b')]
    assert steps(b'') == [] and steps(b'\0') == [(0, b'')]


def test_envelope_records():
    assert list(records(b'u0\0p1\0Fa@b\0Tc@d\0')) == [b'u0', b'p1', b'Fa@b', b'Tc@d']
    assert list(records(b'Fa@b\0Tc@d\0\0')) == [b'Fa@b', b'Tc@d', b'']
    assert list(records(b'Fa@b\0Tpartial')) == [b'Fa@b']
    for data in (b'', b'a\0b', b'\0\0x\0', b'Fa\0Tb\0Tc\0'):
        assert list(records(data)) == data.split(b'\0')[:-1]


def test_a_bug_is_logged_as_an_alert_before_the_exit(monkeypatch):
    """qmail-start runs qmail-send's main_logged: an exception out of the
    loop is an alert naming where it happened, then exit 111 (it was
    silent under qmail-start)."""
    from qmail import send as send_mod
    lines = []
    monkeypatch.setattr(send_mod, 'log', lines.append)

    def broken(argv=None):
        {}['missing']
    monkeypatch.setattr(send_mod, 'main', broken)
    assert send_mod.main_logged([]) == 111
    assert len(lines) == 1
    assert lines[0].startswith('alert: internal error: KeyError at test_send.py:')
    assert lines[0].endswith(' broken; exiting\n')
    import inspect
    from qmail import start
    assert 'send.main_logged(' in inspect.getsource(start)


class _Collect:
    def __init__(self):
        self.data = b''

    def put(self, data):
        self.data += data


@pytest.mark.parametrize('message, limit, want', [
    # cut inside the header: back to the last whole line
    (b'Received: from a\nSubject: long subject line\n\nbody\n', 30,
     b'Received: from a\n'),
    # a limit on a line's end keeps that line
    (b'Subject: x\n\nbody\n', 11, b'Subject: x\n'),
    # no end of line within the limit: cut where it falls
    (b'y' * 100 + b'\n', 10, b'y' * 10),
    # under the limit: all of it, no note
    (b'Subject: x\n\nbody\n', 1000, None),
    # a line across the 64 KB read: back to the line before it
    (b'l' * 65530 + b'\n' + b'B' * 1000 + b'\nend\n', 65600, b'l' * 65530 + b'\n'),
    (b'l' * 65530 + b'\n' + b'B' * 1000 + b'\nend\n', 66534, b'l' * 65530 + b'\n'
     + b'B' * 1000 + b'\n'),
    (b'l' * 65530 + b'\n' + b'B' * 1000 + b'\nend\n', 66536, None),
    # a first line longer than the limit: cut where it falls
    (b'y' * 200000 + b'\n', 150000, b'y' * 150000),
    # a line longer than a read (64 KB) after it: back to the line before
    # (it was cut where the limit fell, half a line quoted)
    (b'a\n' + b'y' * 200000 + b'\n', 150000, b'a\n'),
    (b'Subject: longline\n\n' + b'A' * 200000 + b'\nlast line\n', 150000,
     b'Subject: longline\n\n'),
    (b'a\n' + b'y' * 200000 + b'\nz\n', 200003, b'a\n' + b'y' * 200000 + b'\n'),
])
def test_bouncemaxbytes_cuts_the_copy_at_a_line_end(tmp_path, message, limit, want):
    from qmail.send import Send
    path = tmp_path / 'mess'
    path.write_bytes(message)
    qq = _Collect()
    Send.copy_into(None, qq, str(path), limit)
    if want is None:
        assert qq.data == message
    else:
        assert qq.data == want + (b'\n--- Rest of message truncated: over %d bytes '
                                  b'(control/bouncemaxbytes).\n' % limit)


def test_bouncemaxbytes_cut_as_a_whole_file_reading_gives_it(tmp_path):
    """Random messages with lines around and across the 64 KB pieces, cut
    as the rule says when read whole."""
    import random
    from qmail.send import Send
    rnd = random.Random(4242)
    path = tmp_path / 'mess'
    for _ in range(300):
        message = b''.join(b'x' * rnd.choice([0, 1, 5, 1000, 65535, 65536, 70000, 140000])
                           + b'\n' for _ in range(rnd.randint(1, 6)))
        if rnd.random() < 0.3:
            message = message[:-1]
        limit = rnd.randint(1, len(message) + 5)
        path.write_bytes(message)
        qq = _Collect()
        Send.copy_into(None, qq, str(path), limit)
        if len(message) <= limit:
            want = message if message.endswith(b'\n') or not message else message + b'\n'
        else:
            end = message.rfind(b'\n', 0, limit)
            want = (message[:end + 1] if end >= 0 else message[:limit]) + (
                b'\n--- Rest of message truncated: over %d bytes '
                b'(control/bouncemaxbytes).\n' % limit)
        assert qq.data == want, (len(message), limit)


@pytest.mark.parametrize('message, limit, want', [
    (b'Subject: x\n\nno final newline', 0, b'Subject: x\n\nno final newline\n'),
    (b'Subject: x\n\nno final newline', 1000, b'Subject: x\n\nno final newline\n'),
    (b'Subject: x\n\nends\n', 0, b'Subject: x\n\nends\n'),
    (b'', 0, b''),
    (b'x' * 70000, 0, b'x' * 70000 + b'\n'),
    (b'x' * 70000, 100000, b'x' * 70000 + b'\n'),
])
def test_a_bounce_copy_ends_its_last_line(tmp_path, message, limit, want):
    """A message without a final newline (from qmail-inject) bounced by a
    remote peer: a bounce ending in the same partial line could not go out
    by SMTP either (qmail-remote refuses it), and became a double bounce."""
    from qmail.send import Send
    path = tmp_path / 'mess'
    path.write_bytes(message)
    qq = _Collect()
    Send.copy_into(None, qq, str(path), limit)
    assert qq.data == want
