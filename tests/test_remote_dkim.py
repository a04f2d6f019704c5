"""qmail-remote's DKIM signatures (qmail/remote_dkim.py): which domain's
key signs, and a signature a verifier accepts for the message exactly as
remote_smtp sends it."""

import base64
import os
import subprocess
import sys

import pytest

from qmail import remote_dkim as rd
from qmail import remote_smtp as smtp

dkim = pytest.importorskip('dkim')


@pytest.fixture(scope='module')
def keypair(tmp_path_factory):
    """(private key PEM, the TXT record's text for it)."""
    d = tmp_path_factory.mktemp('dkimkey')
    key = d / 'key.pem'
    subprocess.run(['openssl', 'genrsa', '-out', str(key), '2048'], check=True,
                   capture_output=True, timeout=60)
    der = subprocess.run(['openssl', 'rsa', '-in', str(key), '-pubout', '-outform', 'DER'],
                         check=True, capture_output=True, timeout=60).stdout
    return key.read_bytes(), b'v=DKIM1; k=rsa; p=' + base64.b64encode(der)


def control_with(tmp_path, files):
    """A control directory with domainkeys/<domain>/<name> files."""
    ctl = tmp_path / 'control'
    ctl.mkdir(exist_ok=True)
    (ctl / 'domainkeys').mkdir(exist_ok=True)
    for (domain, name), data in files.items():
        (ctl / 'domainkeys' / domain).mkdir(parents=True, exist_ok=True)
        (ctl / 'domainkeys' / domain / name).write_bytes(data)
    return str(ctl)


def signed(message, sender, ctl):
    """What deliver() does: the key from the header, then the signature."""
    found = rd.key_for(rd.header_of(rd.wire_form(message)), sender, ctl)
    return None if found is None else (rd.sign(message, found), found)


@pytest.mark.parametrize('header, want', [
    (b'From: Joe <joe@Example.ORG>\r\nTo: x@y\r\n', b'example.org'),
    (b'To: x@y\r\nfrom:\r\n  "Doe, Jane" <jane@lists.example.org> (home)\r\n', b'lists.example.org'),
    (b'From: undisclosed\r\n', b''),
    (b'Subject: no from\r\n', None),
    (b'From: a@b.example.\r\nFrom: c@d.example\r\n', b'b.example'),
    # dkimpy's name for the field: no space before the colon
    (b'From : joe@example.org\r\n', None),
    (b'From: a@ex\x00ample.org\r\n', b''),
    (b'From: a@../../etc\r\n', b''),
    (b'From: joe@b\xc3\xbccher.example\r\n', b'xn--bcher-kva.example'),
])
def test_from_domain(header, want):
    assert rd.from_domain(header) == want


def test_candidates_stop_above_the_last_dot():
    assert rd.candidates(b'a.b.example.org') == [b'a.b.example.org', b'b.example.org',
                                                 b'example.org']
    assert rd.candidates(b'localhost') == [b'localhost']


def test_wire_form_and_header():
    wire = rd.wire_form(b'A: 1\nB: 2\r\n\nbody\rline\n')
    assert wire == b'A: 1\r\nB: 2\r\n\r\nbody\r\nline\r\n'
    assert rd.header_of(wire) == b'A: 1\r\nB: 2\r\n'
    assert rd.header_of(b'\r\nbody only\r\n') == b''


def test_the_selector_file_names_the_key_else_default(tmp_path):
    ctl = control_with(tmp_path, {('example.org', 'selector'): b'2026b\n',
                                  ('example.org', '2026a'): b'old', ('example.org', '2026b'): b'new',
                                  ('example.org', '2026b.pub'): b'public',
                                  ('sub.example.org', 'default'): b'k3',
                                  ('bad.example', 'selector'): b'x; y=z\n'})
    d, sel, path = rd.find_key(ctl, b'example.org')
    assert (d, sel, os.path.basename(path)) == (b'example.org', b'2026b', '2026b')
    assert rd.find_key(ctl, b'lists.example.org')[:2] == (b'example.org', b'2026b')
    assert rd.find_key(ctl, b'a.sub.example.org')[:2] == (b'sub.example.org', b'default')
    assert rd.find_key(ctl, b'example.net') is None
    # a key made, its record not yet published, no selector file: nothing
    # signed (it deferred all the domain's mail, wanting "default")
    (tmp_path / 'control' / 'domainkeys' / 'new.example').mkdir()
    (tmp_path / 'control' / 'domainkeys' / 'new.example' / 'sel2027').write_bytes(b'k')
    assert rd.find_key(ctl, b'new.example') is None
    with pytest.raises(rd.Dkim) as err:
        rd.find_key(ctl, b'bad.example')
    assert err.value.args[0] == (b'The selector in control/domainkeys/bad.example/selector '
                                 b'is no selector. (#4.3.0)\n')


def verify(wire: bytes, txt: bytes) -> bool:
    return dkim.verify(wire, dnsfunc=lambda name, timeout=5: txt)


def on_the_wire(field: bytes, message: bytes) -> bytes:
    """What remote_smtp sends, the dots unstuffed as a server does."""
    blaster = smtp.Blaster()
    return (blaster.feed(field) + blaster.feed(message)).replace(b'\r\n..', b'\r\n.')


def test_a_signature_verifies_for_the_message_as_sent(tmp_path, keypair):
    key, txt = keypair
    ctl = control_with(tmp_path, {('example.org', 'sel'): key,
                                  ('example.org', 'selector'): b'sel\n'})
    message = (b'From: Joe <joe@example.org>\nTo: you@example.net\nSubject: hi\n'
               b'Date: Fri, 27 Nov 2026 20:00:00 +0000\n\nline one\r\n.dot line\rlast\n')
    field, (d, selector, _) = signed(message, b'joe@example.org', ctl)
    assert (d, selector) == (b'example.org', b'sel')
    assert field.startswith(b'DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;')
    assert b'\r' not in field and field.endswith(b'\n')
    assert b' s=sel;' in field
    received = on_the_wire(field, message)
    assert verify(received, txt)
    assert not verify(received.replace(b'line one', b'line 1'), txt)


def test_only_mail_whose_envelope_is_ours_is_signed(tmp_path, keypair):
    """A forward keeps the envelope sender: mail from elsewhere with a
    From: in this domain (a forgery through a forward or a list) was
    signed, and passed DMARC in this domain's name."""
    key, txt = keypair
    ctl = control_with(tmp_path, {('example.org', 'default'): key})
    msg = b'From: CEO <ceo@example.org>\n\nwire the money\n'
    assert signed(msg, b'attacker@evil.example', ctl) is None
    assert signed(msg, b'', ctl) is None                        # a bounce
    assert signed(msg, b'ceo@example.org', ctl) is not None
    assert signed(msg, b'owner-x=y@lists.example.org', ctl) is not None    # (VERP)
    assert signed(b'From: a@other.example\n\nb\n', b'joe@example.org', ctl) is None
    # a From: without an address: the envelope's domain
    assert signed(b'From: undisclosed\n\nb\n', b'Joe@Example.Org', ctl)[1][0] == b'example.org'
    # no From: field: none can be signed (RFC 6376 5.4)
    assert signed(b'Subject: x\n\nbody\n', b'joe@example.org', ctl) is None


def test_mail_delivered_here_and_sent_on_is_not_signed(tmp_path, keypair):
    """Any SMTP client may give a sender of ours without AUTH: a forged
    From: of ours sent to a forwarding address went out signed (found by
    a review).  qmail-local's Delivered-To: marks mail sent on."""
    ctl = control_with(tmp_path, {('example.org', 'default'): keypair[0]})
    forwarded = (b'Delivered-To: fwd@example.org\nFrom: CEO <ceo@example.org>\n\n'
                 b'wire the money\n')
    assert signed(forwarded, b'ceo@example.org', ctl) is None
    assert signed(forwarded.replace(b'Delivered-To: fwd@example.org\n', b''),
                  b'ceo@example.org', ctl) is not None


def test_a_key_above_that_fits_the_envelope_is_found(tmp_path, keypair):
    """From: at sub.example.org (its own key), envelope at example.org:
    example.org's key signs (DMARC's relaxed alignment), where no key
    was used."""
    ctl = control_with(tmp_path, {('sub.example.org', 'default'): keypair[0],
                                  ('example.org', 'default'): keypair[0]})
    got = rd.key_for(b'From: a@sub.example.org\r\n', b'x@example.org', ctl)
    assert got[0] == b'example.org'
    got = rd.key_for(b'From: a@sub.example.org\r\n', b'x@sub.example.org', ctl)
    assert got[0] == b'sub.example.org'


def test_without_domainkeys_nothing_is_read(tmp_path):
    (tmp_path / 'control').mkdir()
    assert not rd.configured(str(tmp_path / 'control'))
    assert rd.key_for(b'From: a@example.org\r\n', b'a@example.org',
                      str(tmp_path / 'control')) is None


@pytest.mark.parametrize('trouble, want', [
    ('unreadable', b'Unable to read the DKIM key control/domainkeys/example.org/default: '
                   b'Is a directory. (#4.3.0)\n'),
    ('garbage', b'Unable to use the DKIM key control/domainkeys/example.org/default: '),
    ('no module', b'There are DKIM keys in control/domainkeys, but the dkim module '
                  b'(dkimpy) is missing. (#4.3.0)\n'),
])
def test_a_key_that_cannot_sign_makes_the_mail_wait(tmp_path, monkeypatch, keypair, trouble, want):
    ctl = control_with(tmp_path, {} if trouble == 'unreadable' else
                       {('example.org', 'default'): b'not a key' if trouble == 'garbage'
                        else keypair[0]})
    if trouble == 'unreadable':
        (tmp_path / 'control' / 'domainkeys' / 'example.org' / 'default').mkdir(parents=True)
    if trouble == 'no module':
        monkeypatch.setitem(sys.modules, 'dkim', None)
    with pytest.raises(rd.Dkim) as err:
        signed(b'From: a@example.org\n\nb\n', b'a@example.org', ctl)
    assert err.value.args[0].startswith(want), err.value.args[0]


@pytest.mark.parametrize('message', [
    b'From: a@example.org\nno colon here\n\nbody\n',
    b' continued first\nFrom: a@example.org\n\nbody\n',
])
def test_a_message_dkimpy_cannot_take_goes_unsigned(tmp_path, keypair, message):
    """Sent unsigned, as before there were keys (C qmail sends them):
    waiting would only bounce them a week later."""
    ctl = control_with(tmp_path, {('example.org', 'default'): keypair[0]})
    found = rd.key_for(rd.header_of(rd.wire_form(message)), b'a@example.org', ctl)
    if found is None:
        return                  # (its From: was not found: unsigned anyway)
    with pytest.raises(rd.Unsigned):
        rd.sign(message, found)


def test_the_session_sends_the_field_first_and_counts_it_in_size(tmp_path):
    from test_remote import FakeSock, OK
    sock = FakeSock(OK)
    out = []
    message = b'From: a@example.org\n\nhi\n'
    (tmp_path / 'mess').write_bytes(message)
    r = os.open(tmp_path / 'mess', os.O_RDONLY)
    field = b'DKIM-Signature: v=1; d=example.org;\n b=abc\n'
    try:
        final = smtp.Session(smtp.Conn(sock, 10), b'192.0.2.1', b'me', out).run(
            b's@x', [b'r@example.com'], r, size=len(message),
            dkim=(field, b'DKIM signed for example.org (s=sel).\n'))
    finally:
        os.close(r)
    assert final == (b'K192.0.2.1 accepted message.\nDKIM signed for example.org (s=sel).\n'
                     b'Remote host said: 250 ok 123\n')
    wire = b'DKIM-Signature: v=1; d=example.org;\r\n b=abc\r\nFrom: a@example.org\r\n\r\nhi\r\n'
    assert sock.sent.endswith(b'DATA\r\n' + wire + b'.\r\nQUIT\r\n')
    assert b'SIZE=%d' % len(wire) in sock.sent
