"""SRS (qmail.lib.srs): addresses made and reversed as Shevek's Mail::SRS
(Debian's libmail-srs-perl, which make installs) makes and reverses
them, both ways; hashes, ages, SRS1, and what is never reversed; and
srs_sender in qmail-local, srsfilter's choice of address."""

import subprocess

import pytest

from qmail import local, srsfilter
from qmail.lib import srs

NOW = 1795000000.0          # 2026-11-18
DAY = 86400


def perl(code: str, *args) -> list:
    """Mail::SRS's answers, one a line (time() is NOW for it too)."""
    prog = ('BEGIN { *CORE::GLOBAL::time = sub { %d } } use Mail::SRS; ' % NOW) + code
    r = subprocess.run(['perl', '-e', prog] + list(args), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().splitlines()


def make(**kw):
    kw.setdefault('rcpthosts', frozenset([b'example.org']))
    return srs.Srs(b'srs.example.org', [b'tops3cret', b'older'], **kw)


def test_made_as_mail_srs_makes_them():
    got = [make().forward(s, NOW).decode() for s in
           (b'joe@example.com', b'A.Person+tag@Sub.Example.NET',
            b'SRS0=sK8X=JQ=example.com=joe@fwd1.example',
            b'SRS1=dksw=fwd1.example==sK8X=JQ=example.com=joe@fwd2.example')]
    want = perl('my $s = Mail::SRS->new(Secret => ["tops3cret", "older"]); '
                'print $s->forward($_, "srs.example.org"), "\\n" for @ARGV;',
                'joe@example.com', 'A.Person+tag@Sub.Example.NET',
                'SRS0=sK8X=JQ=example.com=joe@fwd1.example',
                'SRS1=dksw=fwd1.example==sK8X=JQ=example.com=joe@fwd2.example')
    assert got == want
    assert got[0].startswith('SRS0=') and got[2].startswith('SRS1=') and got[3].startswith('SRS1=')
    assert got[3].split('=')[2] == 'fwd1.example'       # SRS1 keeps the first host


def test_reversed_as_mail_srs_reverses_them():
    ours = [make().forward(s, NOW - 3 * DAY) for s in
            (b'joe@example.com', b'SRS0=sK8X=JQ=example.com=joe@fwd1.example')]
    want = perl('my $s = Mail::SRS->new(Secret => ["older", "tops3cret"]); '
                'print $s->reverse($_), "\\n" for @ARGV;', *[o.decode() for o in ours])
    assert [make().reverse(o, NOW).decode() for o in ours] == want
    assert want == ['joe@example.com', 'SRS0=sK8X=JQ=example.com=joe@fwd1.example']
    # theirs, made with the old secret: reversed by ours
    theirs = perl('my $s = Mail::SRS->new(Secret => "older"); '
                  'print $s->forward("ann\\@example.net", "srs.example.org"), "\\n";')[0]
    assert make().reverse(theirs.encode(), NOW) == b'ann@example.net'


def test_what_is_never_reversed():
    good = make().forward(b'joe@example.com', NOW)
    local, host = good.split(b'@')
    bad = {
        b'SRS0=AAAA' + local[9:] + b'@' + host: 'its hash is wrong',
        local.replace(b'=joe', b'=mallory') + b'@' + host: 'its hash is wrong',
        b'SRS0=' + local[5:7] + b'=' + local[10:] + b'@' + host: 'its hash is wrong',  # short hash
        b'SRS0=xx@' + host: 'a malformed SRS0 address',
        b'SRS1=abcd=host@' + host: 'a malformed SRS1 address',
        b'SRS2=a=b=c=d@' + host: 'not an SRS address',
        b'joe@' + host: 'not an SRS address',
    }
    for address, why in bad.items():
        with pytest.raises(srs.SrsError) as err:
            make().reverse(address, NOW)
        assert str(err.value) == why, address
    with pytest.raises(srs.SrsError, match='too old'):
        make().reverse(good, NOW + 22 * DAY)
    with pytest.raises(srs.SrsError, match='too old'):
        make().reverse(good, NOW - 2 * DAY)             # from the future
    assert make().reverse(good, NOW + 21 * DAY) == b'joe@example.com'
    with pytest.raises(srs.SrsError, match='hash is wrong'):
        srs.Srs(b'srs.example.org', [b'another']).reverse(good, NOW)
    # a host on the way that smashed the case
    assert make().reverse(good.upper(), NOW) == b'JOE@EXAMPLE.COM'


def test_senders_kept():
    s = make()
    for sender in (b'', b'#@[]', b'list-owner-@example.com-@[]', b'joe', b'joe@',
                   b'@example.com', b'joe@example.org', b'joe@EXAMPLE.ORG',
                   b'x@srs.example.org', b'a@b@example.com'):
        assert s.forward(sender, NOW) == sender, sender
    assert make(alwaysrewrite=True).forward(b'joe@example.org', NOW).startswith(b'SRS0=')
    assert make(rcpthosts=None).forward(b'joe@example.org', NOW).startswith(b'SRS0=')


def test_settings():
    s = make(hashlength=8, separator=b'+')
    made = s.forward(b'joe@example.com', NOW)
    assert made.startswith(b'SRS0+') and len(made.split(b'=')[0]) == len(b'SRS0+') + 8
    assert s.reverse(made, NOW) == b'joe@example.com'
    assert make(separator=b'x').separator == b'='
    with pytest.raises(srs.SrsError, match='no secret'):
        srs.Srs(b'srs.example.org', [b'']).forward(b'joe@example.com', NOW)
    with pytest.raises(srs.TooLong):
        make().forward(b'j' * 880 + b'@example.com', NOW)


def test_longest_address():
    """The longest SRS address made is the longest a qmail-smtpd takes
    (899 bytes): one of 900 would be refused by the next hop."""
    s = make()
    overhead = len(s.forward(b'j@example.com', NOW)) - 1
    assert len(s.forward(b'j' * (899 - overhead) + b'@example.com', NOW)) == 899
    with pytest.raises(srs.TooLong):
        s.forward(b'j' * (900 - overhead) + b'@example.com', NOW)


def test_rewrite(tmp_path):
    """What qmail-local and condredirect call: too long an SRS address
    keeps the sender (it would wait for ever)."""
    assert srs.rewrite(str(tmp_path), b'joe@example.com') == b'joe@example.com'
    (tmp_path / 'control').mkdir()
    (tmp_path / 'control' / 'srs_domain').write_text('srs.example.org\n')
    (tmp_path / 'control' / 'srs_secrets').write_text('s\n')
    assert srs.rewrite(str(tmp_path), b'joe@example.com').startswith(b'SRS0=')
    long = b'j' * 880 + b'@example.com'
    assert srs.rewrite(str(tmp_path), long) == long


def test_load(tmp_path):
    ctl = tmp_path / 'control'
    ctl.mkdir()
    assert srs.load(str(tmp_path)) is None
    (ctl / 'srs_domain').write_text('SRS.Example.ORG\n')
    (ctl / 'srs_secrets').write_text('new\nold\n')
    (ctl / 'rcpthosts').write_text('example.org\n')
    (ctl / 'srs_maxage').write_text('7\n')
    s = srs.load(str(tmp_path))
    assert (s.domain, s.secrets, s.maxage, s.hashlength) == (
        b'srs.example.org', [b'new', b'old'], 7, 4)
    assert s.forward(b'joe@example.org') == b'joe@example.org'
    # The secrets are read only when a hash is wanted: a sender that
    # stays as it is needs none (a program's delivery of a bounce).
    (ctl / 'srs_secrets').unlink()
    (ctl / 'srs_secrets').mkdir()
    s = srs.load(str(tmp_path))
    assert s.forward(b'') == b'' and s.forward(b'joe@example.org') == b'joe@example.org'
    with pytest.raises(OSError):
        s.forward(b'joe@example.com')
    (ctl / 'srs_domain').write_text('  Srs.Example.ORG  \n')
    assert srs.load(str(tmp_path)).domain == b'srs.example.org'


def test_qmail_local_sends_forwards_with_an_srs_sender(tmp_path, monkeypatch):
    """srs_sender: once a delivery; unreadable controls or no secret
    defer it (a forward must not go out unrewritten when SRS is on)."""
    ctl = tmp_path / 'control'
    ctl.mkdir()
    monkeypatch.setattr(local.auto, 'QMAIL', str(tmp_path))
    memo = []
    assert local.srs_sender(b'joe@example.com', memo) == b'joe@example.com'    # no SRS
    (ctl / 'srs_domain').write_text('srs.example.org\n')
    (ctl / 'srs_secrets').write_text('s3\n')
    assert memo == [b'joe@example.com']
    memo = []
    made = local.srs_sender(b'joe@example.com', memo)
    assert made.startswith(b'SRS0=') and made.endswith(b'@srs.example.org')
    assert local.srs_sender(b'other@example.com', memo) == made                # (memo)
    assert local.srs_sender(b'', []) == b''
    (ctl / 'srs_secrets').write_text('\n')
    with pytest.raises(local.TempFail) as err:
        local.srs_sender(b'joe@example.com', [])
    assert b'no secret in control/srs_secrets' in err.value.args[0]
    (ctl / 'srs_secrets').unlink()
    (ctl / 'srs_secrets').mkdir()
    with pytest.raises(local.TempFail) as err:
        local.srs_sender(b'joe@example.com', [])
    assert err.value.args[0].startswith(b'Unable to read the SRS controls: ')
    # a program's NEWSENDER: as it is, the delivery not deferred (it may
    # forward nothing); and nothing remembered for a forward after it
    memo = []
    assert local.srs_sender(b'joe@example.com', memo, strict=False) == b'joe@example.com'
    assert memo == []
    # senders that stay as they are need no secret
    assert local.srs_sender(b'', []) == b''
    assert local.srs_sender(b'#@[]', []) == b'#@[]'


def test_srsfilter_target():
    s = make()
    made = s.forward(b'joe@example.com')
    local_part = made.split(b'@')[0]
    env = {b'DEFAULT': local_part, b'HOST': b'SRS.example.org'}
    assert srsfilter.target(env, s) == b'joe@example.com'
    assert srsfilter.target({b'EXT': local_part, b'HOST': b'srs.example.org'}, s) == \
        b'joe@example.com'
    with pytest.raises(srs.SrsError, match='not control/srs_domain'):
        srsfilter.target({b'DEFAULT': local_part, b'HOST': b'other.example'}, s)
    evil = s.forward(b'joe\n@example.com')
    with pytest.raises(srs.SrsError, match='stands for no address'):
        srsfilter.target({b'DEFAULT': evil.split(b'@')[0], b'HOST': b'srs.example.org'}, s)


def test_condredirect_redirects_from_an_srs_sender(tmp_path, monkeypatch):
    """condredirect keeps SENDER (qmail's), made an SRS address when
    control/srs_domain is set; unreadable controls: 111, nothing queued."""
    import os
    from qmail import condredirect
    ctl = tmp_path / 'control'
    ctl.mkdir()
    (ctl / 'srs_domain').write_text('srs.example.org\n')
    (ctl / 'srs_secrets').write_text('s3\n')
    monkeypatch.setattr(condredirect.auto, 'QMAIL', str(tmp_path))
    got = []
    monkeypatch.setattr(condredirect.forward, 'reinject',
                        lambda sender, dt, rcpts: got.append((sender, rcpts)) or ('', 7))
    monkeypatch.setattr(condredirect, 'child_verdict', lambda name, args: (None, None))
    monkeypatch.setattr(os, 'lseek', lambda fd, pos, how: 0)
    monkeypatch.setenv('SENDER', 'joe@example.com')
    monkeypatch.setenv('DTLINE', 'Delivered-To: x\n')
    assert condredirect.condredirect([b'new@far.example', b'true']) == 99
    assert got[0][0].startswith(b'SRS0=') and got[0][0].endswith(b'@srs.example.org')
    (ctl / 'srs_secrets').unlink()
    (ctl / 'srs_secrets').mkdir()
    got.clear()
    assert condredirect.condredirect([b'new@far.example', b'true']) == 111
    assert got == []


def test_srsfilter_sends_other_mail_from_an_srs_sender(tmp_path, monkeypatch):
    """A bounce goes on from <>; anything else from an SRS address, so the
    next host's SPF check sees our domain, not the sender's."""
    ctl = tmp_path / 'control'
    ctl.mkdir()
    (ctl / 'srs_domain').write_text('srs.example.org\n')
    (ctl / 'srs_secrets').write_text('s3\n')
    monkeypatch.setattr(srsfilter.auto, 'QMAIL', str(tmp_path))
    target = srs.load(str(tmp_path)).forward(b'joe@example.com')
    got = []
    monkeypatch.setattr(srsfilter.forward, 'reinject',
                        lambda sender, dt, rcpts: got.append((sender, rcpts)) or ('', 7))
    monkeypatch.setenv('DEFAULT', target.split(b'@')[0].decode())
    monkeypatch.setenv('HOST', 'srs.example.org')
    monkeypatch.setenv('DTLINE', 'Delivered-To: x\n')
    for sender in ('', 'someone@elsewhere.example'):
        monkeypatch.setenv('SENDER', sender)
        assert srsfilter.srsfilter() == 0
    assert got[0] == (b'', [b'joe@example.com'])
    assert got[1][0].startswith(b'SRS0=') and got[1][1] == [b'joe@example.com']
    assert srs.load(str(tmp_path)).reverse(got[1][0]) == b'someone@elsewhere.example'
