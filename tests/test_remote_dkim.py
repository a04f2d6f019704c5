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


def control_with(tmp_path, keys):
    """A control directory with domainkeys/<domain>/<selector> files."""
    ctl = tmp_path / 'control'
    for (domain, selector), data in keys.items():
        (ctl / 'domainkeys' / domain).mkdir(parents=True, exist_ok=True)
        (ctl / 'domainkeys' / domain / selector).write_bytes(data)
    ctl.mkdir(exist_ok=True)
    return str(ctl)


@pytest.mark.parametrize('header, want', [
    (b'From: Joe <joe@Example.ORG>\r\nTo: x@y\r\n', b'example.org'),
    (b'To: x@y\r\nfrom:\r\n  "Doe, Jane" <jane@lists.example.org> (home)\r\n', b'lists.example.org'),
    (b'From: undisclosed\r\n', b''),
    (b'Subject: no from\r\n', None),
    (b'From: a@b.example.\r\nFrom: c@d.example\r\n', b'b.example'),
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


def test_the_key_of_the_domain_or_a_domain_above_it(tmp_path):
    ctl = control_with(tmp_path, {('example.org', '2026a'): b'k1', ('example.org', '2026b'): b'k2',
                                  ('example.org', '.hidden'): b'x', ('sub.example.org', 'sel'): b'k3'})
    got = rd.find_key(ctl, b'example.org')
    assert got[:2] == (b'example.org', b'2026b')        # the last name: the newer key
    assert rd.find_key(ctl, b'lists.example.org')[:2] == (b'example.org', b'2026b')
    assert rd.find_key(ctl, b'a.sub.example.org')[:2] == (b'sub.example.org', b'sel')
    assert rd.find_key(ctl, b'example.net') is None
    assert rd.find_key(ctl, b'..') is None


def verify(wire: bytes, txt: bytes) -> bool:
    return dkim.verify(wire, dnsfunc=lambda name, timeout=5: txt)


def test_a_signature_verifies_for_the_message_as_sent(tmp_path, keypair):
    key, txt = keypair
    ctl = control_with(tmp_path, {('example.org', 'sel'): key})
    message = (b'From: Joe <joe@example.org>\nTo: you@example.net\nSubject: hi\n'
               b'Date: Fri, 27 Nov 2026 20:00:00 +0000\n\nline one\r\n.dot line\rlast\n')
    field, (d, selector) = rd.signature(message, b'bounce@elsewhere.example', ctl)
    assert (d, selector) == (b'example.org', b'sel')
    assert field.startswith(b'DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;')
    assert b'\r' not in field and field.endswith(b'\n')
    assert b' s=sel;' in field
    # what remote_smtp puts on the wire, the dots unstuffed as a server does
    blaster = smtp.Blaster()
    sent = blaster.feed(field) + blaster.feed(message)
    received = sent.replace(b'\r\n..', b'\r\n.')
    assert verify(received, txt)
    assert not verify(received.replace(b'line one', b'line 1'), txt)


def test_a_from_without_an_address_signs_for_the_envelope_sender(tmp_path, keypair):
    key, txt = keypair
    ctl = control_with(tmp_path, {('example.org', 'sel'): key})
    field, (d, _) = rd.signature(b'From: undisclosed\n\nbody\n', b'Joe@Example.Org', ctl)
    assert d == b'example.org'
    assert rd.signature(b'From: a@other.example\n\nbody\n', b'joe@example.org', ctl) is None
    assert rd.signature(b'From: undisclosed\n\nbody\n', b'', ctl) is None
    # no From: field at all: none can be signed (RFC 6376 5.4)
    assert rd.signature(b'Subject: x\n\nbody\n', b'joe@example.org', ctl) is None


def test_without_domainkeys_nothing_is_signed(tmp_path):
    (tmp_path / 'control').mkdir()
    assert rd.signature(b'From: a@example.org\n\nb\n', b'a@example.org',
                        str(tmp_path / 'control')) is None


@pytest.mark.parametrize('trouble, want', [
    ('unreadable', b'Unable to read the DKIM key control/domainkeys/example.org/sel: '
                   b'Is a directory. (#4.3.0)\n'),
    ('garbage', b'Unable to sign with the DKIM key control/domainkeys/example.org/sel: '),
    ('no module', b'There are DKIM keys in control/domainkeys, but the dkim module '
                  b'(dkimpy) is missing. (#4.3.0)\n'),
])
def test_a_key_that_cannot_sign_makes_the_mail_wait(tmp_path, monkeypatch, keypair, trouble, want):
    ctl = control_with(tmp_path, {} if trouble == 'unreadable' else
                       {('example.org', 'sel'): b'not a key' if trouble == 'garbage' else keypair[0]})
    if trouble == 'unreadable':
        (tmp_path / 'control' / 'domainkeys' / 'example.org' / 'sel').mkdir(parents=True)
    if trouble == 'no module':
        monkeypatch.setitem(sys.modules, 'dkim', None)
    with pytest.raises(rd.Dkim) as err:
        rd.signature(b'From: a@example.org\n\nb\n', b'', ctl)
    assert err.value.args[0].startswith(want), err.value.args[0]


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
