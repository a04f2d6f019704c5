"""qmail-showctl's report and the control-file documentation."""

import os

import pytest

from qmail import showctl
from qmail.lib import auto
from qmail.lib.ctltable import CONTROLS

ROOT = os.path.dirname(os.path.dirname(__file__))
DATA = os.path.join(os.path.dirname(__file__), 'data', 'showctl')


@pytest.fixture
def fixed_ids(monkeypatch):
    monkeypatch.setattr(auto, 'UIDS', {'alias': 7790, 'qmaild': 7791, 'qmaill': 7792,
                                       'root': 0, 'qmailp': 7793, 'qmailq': 7794,
                                       'qmailr': 7795, 'qmails': 7796})
    monkeypatch.setattr(auto, 'GIDS', {'nofiles': 2108, 'qmail': 2107})


def test_report(tmp_path, fixed_ids):
    ctl = tmp_path / 'control'
    ctl.mkdir()
    files = {
        'me': 'mail.example.org\n',
        'locals': 'mail.example.org\n# a comment\n\nexample.org  \n',
        'rcpthosts': 'example.org\n',
        'concurrencyremote': '55\n',
        'databytes': 'lots\n',             # not a number: the default
        'badmailfrom': 'spam@example.net\n@bad.example\n',
        'smtpgreeting': 'greetings\x01 from here\n',
        'mystery': 'what\n',
    }
    for name, text in files.items():
        (ctl / name).write_text(text)
    got = showctl.describe('/var/qmail', str(ctl), sorted(files), b'mail.example.org')
    want = open(os.path.join(DATA, 'report.txt')).read()
    assert got == want, 'got:\n%s\nwant:\n%s' % (got, want)


def test_the_rules_files_are_known(tmp_path, fixed_ids):
    """README has the admin make control/tcp.qmqp(.cdb) for QMQP: that is
    no mystery to qmail-showctl, as tcp.smtp is not."""
    ctl = tmp_path / 'control'
    ctl.mkdir()
    names = ['tcp.qmqp', 'tcp.qmqp.cdb', 'tcp.qmtp.cdb', 'tcp.pop3.tmp', 'tcp.smtp', 'mystery']
    for name in names:
        (ctl / name).write_text('x\n')
    got = showctl.describe('/var/qmail', str(ctl), sorted(names), b'mail.example.org')
    assert got.count('I have no idea what this file does.') == 1, got
    assert '\nmystery: I have no idea' in got


def test_every_control_documented():
    readme = open(os.path.join(ROOT, 'control', 'README')).read()
    for name, *_ in CONTROLS:
        assert '\n' + name + ' ' in readme, '%s missing from control/README' % name


def test_shipped_defaults_match_code():
    table = {c[0]: c for c in CONTROLS}
    for name in os.listdir(os.path.join(ROOT, 'control')):
        if name == 'README':
            continue
        assert name in table, 'control/%s is not a known control' % name
        kind, default = table[name][1], table[name][2]
        assert kind != 'flag', 'control/%s: a presence flag has no default file' % name
        got = open(os.path.join(ROOT, 'control', name)).read()
        assert got == default + '\n', 'control/%s: got %r want %r' % (name, got, default)


def test_a_defaultdelivery_of_several_lines_is_shown_whole(tmp_path, fixed_ids):
    """Each line is an instruction (qmail-start gets the whole file), so
    showing the first alone hid the others."""
    ctl = tmp_path / 'control'
    ctl.mkdir()
    (ctl / 'defaultdelivery').write_text('|preline procmail\n./Maildir/\n')
    got = showctl.describe('/var/qmail', str(ctl), ['defaultdelivery'], b'mail.example.org')
    assert ('\ndefaultdelivery: Default delivery is one instruction a line:\n'
            '|preline procmail\n./Maildir/\n') in got, got
    (ctl / 'defaultdelivery').write_text('# our default\n./Mailbox\n')
    got = showctl.describe('/var/qmail', str(ctl), ['defaultdelivery'], b'mail.example.org')
    assert '\ndefaultdelivery: Default delivery is ./Mailbox.\n' in got, got


@pytest.mark.parametrize('make, oops', [
    (lambda home: None, 'Oops! Unable to chdir to control.\n'),
    (lambda home: (home / 'control').write_text('a file\n'), 'Oops! Unable to chdir to control.\n'),
    (lambda home: (home / 'control').mkdir(), 'Oops! Trouble reading control/me.'),
])
def test_trouble_comes_after_the_settings(tmp_path, fixed_ids, monkeypatch, capsys, make, oops):
    """As qmail's: the compiled-in settings are printed first, then what
    went wrong (it printed the Oops line alone)."""
    home = tmp_path / 'qmail'
    home.mkdir()
    make(home)
    if oops.endswith('control/me.'):
        (home / 'control' / 'me').mkdir()          # unreadable as a file
    monkeypatch.setattr(auto, 'QMAIL', str(home))
    assert showctl.main([]) == 111
    out = capsys.readouterr().out
    assert out == showctl.header(str(home)) + oops, out
    assert out.startswith('qmail home directory: %s.\n' % home)


def test_smtproutes_passwords_are_not_shown(tmp_path, fixed_ids):
    """A route with SMTP AUTH ("relay:587 user password"): the password
    never in the report, and a file anyone may read is named."""
    ctl = tmp_path / 'control'
    ctl.mkdir()
    (ctl / 'smtproutes').write_text(':smarthost.example:587 mailer s3cret pass\n'
                                    'old.example:relay.example\n')
    os.chmod(ctl / 'smtproutes', 0o644)
    got = showctl.describe('/var/qmail', str(ctl), ['smtproutes'], b'mail.example.org')
    assert 's3cret' not in got
    assert ('\nsmtproutes: \nSMTP route: :smarthost.example:587 mailer (password not shown)\n'
            'SMTP route: old.example:relay.example\n'
            'Oops! It holds passwords and anyone may read it: chgrp qmail and chmod 640 it.\n'
            ) in got, got
    os.chown(ctl / 'smtproutes', 0, 2107)       # (fixed_ids' qmail)
    os.chmod(ctl / 'smtproutes', 0o640)
    got = showctl.describe('/var/qmail', str(ctl), ['smtproutes'], b'mail.example.org')
    assert 'Oops' not in got and 's3cret' not in got
    os.chown(ctl / 'smtproutes', 0, 4242)       # some other group
    got = showctl.describe('/var/qmail', str(ctl), ['smtproutes'], b'mail.example.org')
    assert 'Oops! It holds passwords and group 4242 may read it' in got, got


def test_clientcert_is_checked_as_qmail_remote_loads_it(tmp_path, fixed_ids):
    """control/clientcert.pem: shown as present; one qmail-remote cannot
    load is named with why, and a key anyone may read too; never its
    contents."""
    import subprocess
    ctl = tmp_path / 'control'
    ctl.mkdir()
    got = showctl.describe('/var/qmail', str(ctl), [], b'mail.example.org')
    assert '\nclientcert.pem: (Default.) qmail-remote presents no client certificate.\n' in got
    cert, key = tmp_path / 'c.pem', tmp_path / 'k.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', str(key),
                    '-out', str(cert), '-days', '2', '-subj', '/CN=client.example'],
                   check=True, capture_output=True, timeout=60)
    pem = ctl / 'clientcert.pem'
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    os.chown(pem, 0, 2107)                      # (fixed_ids' qmail)
    os.chmod(pem, 0o640)
    got = showctl.describe('/var/qmail', str(ctl), ['clientcert.pem'], b'mail.example.org')
    assert ('\nclientcert.pem: qmail-remote presents this certificate, with its key, to a '
            'server that asks.\n\n') in got, got
    assert 'Oops' not in got and 'PRIVATE' not in got
    os.chmod(pem, 0o644)
    got = showctl.describe('/var/qmail', str(ctl), ['clientcert.pem'], b'mail.example.org')
    assert ('Oops! It holds a private key and anyone may read it: chgrp qmail and '
            'chmod 640 it.\n') in got, got
    # three days on, its certificate (made for two) has expired
    import time
    late = showctl.expiry_trouble(str(pem), now=time.time() + 3 * 86400)
    assert late.startswith('Oops! Its certificate expired (') and late.endswith(
        ' GMT): servers that check it refuse it.\n'), late
    assert showctl.expiry_trouble(str(pem)) == ''
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    os.chown(pem, 0, 0)                         # chgrp qmail forgotten
    os.chmod(pem, 0o640)
    got = showctl.describe('/var/qmail', str(ctl), ['clientcert.pem'], b'mail.example.org')
    assert ('Oops! qmail-remote (qmailr, group qmail) cannot read it: chgrp qmail and '
            'chmod 640 it.\n') in got, got
    os.chown(pem, 0, 2107)
    pem.write_bytes(cert.read_bytes())
    got = showctl.describe('/var/qmail', str(ctl), ['clientcert.pem'], b'mail.example.org')
    assert ('Oops! qmail-remote cannot use it (not a certificate with its key (OpenSSL: '
            'pem lib)): it shows servers no certificate.\n') in got, got
    pem.unlink()
    os.mkfifo(pem, 0o640)                       # never opened: it would hang
    got = showctl.describe('/var/qmail', str(ctl), ['clientcert.pem'], b'mail.example.org')
    assert 'Oops! qmail-remote cannot use it (not a file): it shows servers no' in got, got


def test_servercert_is_checked_as_qmail_smtpd_loads_it(tmp_path, fixed_ids):
    """control/servercert.pem: one qmail-smtpd and qmail-popup cannot load
    is named (POP3 logins from other hosts wait for STLS: found by a
    review), one qmaild cannot read, a key anyone may read."""
    import pwd
    import subprocess
    ctl = tmp_path / 'control'
    ctl.mkdir()
    cert, key = tmp_path / 'c.pem', tmp_path / 'k.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', str(key),
                    '-out', str(cert), '-days', '2', '-subj', '/CN=mail.example.org'],
                   check=True, capture_output=True, timeout=60)
    pem = ctl / 'servercert.pem'
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    qmaild = pwd.getpwnam('qmaild').pw_uid
    os.chown(pem, qmaild, 0)
    os.chmod(pem, 0o400)
    got = showctl.describe('/var/qmail', str(ctl), ['servercert.pem'], b'mail.example.org')
    assert '\nservercert.pem: STARTTLS is offered with this certificate and key.\n' in got, got
    assert 'Oops' not in got and 'PRIVATE' not in got, got
    os.chmod(pem, 0o644)
    got = showctl.describe('/var/qmail', str(ctl), ['servercert.pem'], b'mail.example.org')
    assert ('Oops! It holds a private key and anyone may read it: chown qmaild:root and '
            'chmod 400 it.\n') in got, got
    os.chown(pem, 0, 0)
    os.chmod(pem, 0o600)
    got = showctl.describe('/var/qmail', str(ctl), ['servercert.pem'], b'mail.example.org')
    assert 'Oops! qmail-smtpd (qmaild) cannot read it: its STARTTLS fails.\n' in got, got
    pem.write_bytes(b'garbage\n')
    got = showctl.describe('/var/qmail', str(ctl), ['servercert.pem'], b'mail.example.org')
    assert ('Oops! qmail-smtpd and qmail-popup cannot use it (' in got
            and '): STARTTLS and STLS fail, and POP3 logins from other hosts wait for STLS.\n'
            in got), got


def test_srs_secrets_are_counted_not_shown(tmp_path, fixed_ids):
    ctl = tmp_path / 'control'
    ctl.mkdir()
    (ctl / 'srs_secrets').write_text('t0ps3cret\nold-one\n')
    (ctl / 'srs_domain').write_text('srs.example.org\n')
    got = showctl.describe('/var/qmail', str(ctl), ['srs_domain', 'srs_secrets'],
                           b'mail.example.org')
    assert 't0ps3cret' not in got and 'old-one' not in got
    assert ('\nsrs_secrets: \n2 secrets, not shown; the first makes SRS addresses, each '
            'reverses them.\n') in got, got
    assert '\nsrs_domain: Forwarded mail gets an SRS sender at srs.example.org.\n' in got


def test_srs_settings_that_cannot_work_are_named(tmp_path, fixed_ids):
    ctl = tmp_path / 'control'
    ctl.mkdir()
    (ctl / 'srs_domain').write_text('mail.example.org\n')       # = me, no locals
    (ctl / 'rcpthosts').write_text('example.org\n')
    got = showctl.describe('/var/qmail', str(ctl), ['rcpthosts', 'srs_domain'],
                           b'mail.example.org')
    for oops in ("Oops! srs_domain mail.example.org is in locals: its addresses are local "
                 "users', and bounces to SRS addresses fail; give SRS a domain of its own.\n",
                 'Oops! No virtualdomains line "mail.example.org:srs": bounces to SRS '
                 'addresses do not reach srsfilter.\n',
                 'Oops! srs_domain mail.example.org is not in rcpthosts: qmail-smtpd refuses '
                 'the bounces to SRS addresses.\n',
                 'Oops! No secret in srs_secrets: forwards wait.\n'):
        assert oops in got, (oops, got)
    (ctl / 'srs_domain').write_text('SRS.example.org \n')
    (ctl / 'locals').write_text('example.org\n')
    (ctl / 'virtualdomains').write_text('srs.example.org:srs\n')
    (ctl / 'rcpthosts').write_text('example.org\nsrs.example.org\n')
    (ctl / 'srs_secrets').write_text('s3\n')
    os.chmod(ctl / 'srs_secrets', 0o600)
    got = showctl.describe('/var/qmail', str(ctl), [], b'mail.example.org')
    assert [line for line in got.splitlines() if line.startswith('Oops')] == [
        'Oops! srs_secrets is not readable by all: qmail-local reads it as the user who '
        'forwards, and forwards wait; chmod 644 it.']
    os.chmod(ctl / 'srs_secrets', 0o644)
    got = showctl.describe('/var/qmail', str(ctl), [], b'mail.example.org')
    assert 'Oops' not in got, got


def test_domainkeys_are_shown_by_domain_and_selector(tmp_path, fixed_ids):
    ctl = tmp_path / 'control'
    keys = ctl / 'domainkeys' / 'example.org'
    keys.mkdir(parents=True)
    (keys / 'selector').write_text('2026b\n')
    for sel in ('2026a', '2026b'):
        (keys / sel).write_text('-----BEGIN PRIVATE KEY-----\n')
        os.chmod(keys / sel, 0o644 if sel == '2026b' else 0o640)
    (ctl / 'domainkeys' / 'Upper.Example').mkdir()
    (ctl / 'domainkeys' / 'nokey.example').mkdir()
    (ctl / 'domainkeys' / 'sub.example.org').mkdir()
    got = showctl.describe('/var/qmail', str(ctl), ['domainkeys'], b'mail.example.org')
    assert ('\ndomainkeys: \n'
            'Oops! Upper.Example is never looked up: a domain in lower case, as DNS writes '
            'it (xn-- for an international one).\n'
            'DKIM signs mail from example.org and below (its envelope sender there too) '
            'with selector 2026b.\n'
            'Oops! Anyone may read the key example.org/2026b: chgrp qmail and chmod 640 it.\n'
            'nokey.example: no selector file and no key named default: nothing is signed '
            'for it.\n'
            'sub.example.org: no selector file and no key named default: its mail is signed '
            'with the key of example.org.\n') in got, got
    assert 'BEGIN' not in got and 'no idea' not in got


def test_routes_qmail_remote_cannot_parse_are_named(tmp_path, fixed_ids):
    """A route qmail-remote defers all mail on ("Unable to parse
    control/smtproutes.") was shown as any other (found by a review)."""
    ctl = tmp_path / 'control'
    ctl.mkdir()
    (ctl / 'smtproutes').write_text('x.example:relay.x:587 onlyuser\n'
                                    'y.example:relay.y :587 u p\n'
                                    'z.example:relay.z:99999\n'
                                    'ok.example:relay.ok:587\n'
                                    'mx.example:\n')
    os.chmod(ctl / 'smtproutes', 0o600)
    got = showctl.describe('/var/qmail', str(ctl), ['smtproutes'], b'mail.example.org')
    oops = 'Oops! qmail-remote cannot parse this route: its mail waits.\n'
    assert got.count(oops) == 3, got
    assert 'SMTP route: ok.example:relay.ok:587\nSMTP route: mx.example:\n' in got, got


def test_tlsdestinations_say_the_ca_file_apart():
    assert showctl.with_cafile(b'[127.0.0.1]:/etc/ssl/r.pem') == \
        b'[127.0.0.1] (CA file /etc/ssl/r.pem)'
    assert showctl.with_cafile(b'example.org') == b'example.org'
    assert showctl.with_cafile(b':') == b"every domain (the system's CAs)"
    assert showctl.with_cafile(b'ex.org::.mail.ex.net mx') == \
        b"ex.org (the system's CAs; certificate names .mail.ex.net mx)"
