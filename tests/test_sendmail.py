"""qmail/sendmail.py: sendmail's options, translated for qmail-inject.

Expected plans were checked against notqmail's sendmail; the
deliberate differences are marked "not qmail".
"""

import os
import subprocess
import sys
import types

import pytest

from qmail import inject, sendmail
from qmail.lib import auto
from qmail.sendmail import SMTPD_ENV, USAGE, sender_env, translate

UNSET_FROM = [(b'QMAILNAME', None), (b'MAILNAME', None), (b'NAME', None),
              (b'QMAILHOST', None), (b'MAILHOST', None)]


@pytest.mark.parametrize('args, action, iargs, env', [
    ([], 'inject', [b'-a', b'--'], []),
    ([b'a@b', b'c'], 'inject', [b'-a', b'--', b'a@b', b'c'], []),
    ([b'-t'], 'inject', [b'-H', b'--'], []),
    ([b'-t', b'x'], 'inject', [b'-H', b'--', b'x'], []),
    ([b'-f', b'a@b'], 'inject', [b'-a', b'-f', b'a@b', b'--'],
     UNSET_FROM + [(b'QMAILHOST', b'b'), (b'QMAILUSER', b'a')]),
    ([b'-fa@b@c', b'r'], 'inject', [b'-a', b'-f', b'a@b@c', b'--', b'r'],
     UNSET_FROM + [(b'QMAILHOST', b'c'), (b'QMAILUSER', b'a@b')]),
    ([b'-f', b'nohost'], 'inject', [b'-a', b'-f', b'nohost', b'--'],
     UNSET_FROM + [(b'QMAILUSER', b'nohost')]),
    ([b'-f', b'', b'r'], 'inject', [b'-a', b'-f', b'', b'--', b'r'],
     UNSET_FROM + [(b'QMAILUSER', b'')]),
    ([b'-fone', b'-ftwo'], 'inject', [b'-a', b'-f', b'two', b'--'],
     UNSET_FROM + [(b'QMAILUSER', b'two')]),
    ([b'-tf', b'x@y'], 'inject', [b'-H', b'-f', b'x@y', b'--'],
     UNSET_FROM + [(b'QMAILHOST', b'y'), (b'QMAILUSER', b'x')]),
    # not qmail: -F is qmail-inject's, over QMAILNAME (sendmail.c's
    # MAILNAME lost to QMAILNAME, and to -f's clean-up)
    ([b'-F', b'Joe Doe'], 'inject', [b'-a', b'-F', b'Joe Doe', b'--'], []),
    ([b'-FJoe', b'-fj@x', b'r'], 'inject', [b'-a', b'-f', b'j@x', b'-F', b'Joe', b'--', b'r'],
     UNSET_FROM + [(b'QMAILHOST', b'x'), (b'QMAILUSER', b'j')]),
    # not qmail: -r is -f (mail -r); DSN and syslog options ignored
    ([b'-r', b'a@b', b'x'], 'inject', [b'-a', b'-f', b'a@b', b'--', b'x'],
     UNSET_FROM + [(b'QMAILHOST', b'b'), (b'QMAILUSER', b'a')]),
    ([b'-N', b'never', b'-R', b'hdrs', b'-V', b'id1', b'-L', b'tag', b'x'], 'inject',
     [b'-a', b'--', b'x'], []),
    # ignored flags
    ([b'-oi', b'-oem', b'-odb', b'-i', b'x'], 'inject', [b'-a', b'--', b'x'],
     []),
    ([b'-B8BITMIME', b'-v', b'-x', b'-m', b'-eq', b'-pfoo', b'r'], 'inject',
     [b'-a', b'--', b'r'], []),
    ([b'-B', b'8BITMIME', b'-e', b'q', b'-p', b'foo', b'-o', b'i', b'r'],
     'inject', [b'-a', b'--', b'r'], []),
    ([b'-Efoo', b'-J', b'x'], 'inject', [b'-a', b'--', b'x'], []),
    ([b'-tEjunk', b'x'], 'inject', [b'-H', b'--', b'x'], []),
    ([b'-bm', b'x'], 'inject', [b'-a', b'--', b'x'], []),
    # options end at the first recipient, at -- and at -
    ([b'x', b'-t'], 'inject', [b'-a', b'--', b'x', b'-t'], []),
    ([b'-t', b'--', b'-x'], 'inject', [b'-H', b'--', b'-x'], []),
    ([b'-', b'y'], 'inject', [b'-a', b'--', b'-', b'y'], []),
    ([b'-bp'], 'qread', [], []),
    ([b'-bpx'], 'qread', [], []),
    ([b'-t', b'-bp', b'-q'], 'qread', [], []),
    ([b'-bs'], 'smtpd', [], list(SMTPD_ENV)),
    ([b'-b', b's'], 'smtpd', [], list(SMTPD_ENV)),
    ([b'-bz'], 'usage', [], []),
    ([b'-b', b''], 'usage', [], []),
    ([b'-q'], 'usage', [], []),
    ([b'-f'], 'usage', [], []),
    ([b'-b'], 'usage', [], []),
    ([b'-r'], 'usage', [], []),
])
def test_translate(args, action, iargs, env):
    got = translate(args)
    assert (got.action, got.args, got.env) == (action, iargs, env), (
        f'translate({args!r}): got {got!r}, want '
        f'{(action, iargs, env)!r}')


def test_translate_smtpd_keeps_tcpserver_environment():
    got = translate([b'-bs'], environ={b'PROTO': b'TCP'})
    assert (got.action, got.env) == ('smtpd', []), f'got {got!r}'


@pytest.mark.parametrize('progname, args, action', [
    ('mailq', [], 'qread'),
    ('mailq', [b'-v'], 'qread'),
    ('mailq', [b'-bs'], 'smtpd'),       # options come first, as in C
    ('newaliases', [], 'newaliases'),
    ('newaliases', [b'-bp'], 'qread'),
    ('sendmail', [], 'inject'),
])
def test_translate_progname(progname, args, action):
    got = translate(args, progname)
    assert got.action == action, (
        f'{progname} {args!r}: got {got.action!r}, want {action!r}')


@pytest.mark.parametrize('sender, want', [
    (b'a@b', UNSET_FROM + [(b'QMAILHOST', b'b'), (b'QMAILUSER', b'a')]),
    (b'a', UNSET_FROM + [(b'QMAILUSER', b'a')]),
    (b'@b', UNSET_FROM + [(b'QMAILHOST', b'b'), (b'QMAILUSER', b'')]),
    (b'a@', UNSET_FROM + [(b'QMAILHOST', b''), (b'QMAILUSER', b'a')]),
])
def test_sender_env(sender, want):
    got = sender_env(sender)
    assert got == want, f'sender_env({sender!r}): got {got!r}, want {want!r}'


# ---------------------------------------------------------------- main

@pytest.fixture
def home(tmp_path, monkeypatch):
    """A qmail home; the environment sendmail changes is put back after."""
    saved = os.environ.copy()
    qmail = tmp_path / 'qmail'
    (qmail / 'control').mkdir(parents=True)
    (qmail / 'control' / 'me').write_bytes(b'example.org\n')
    monkeypatch.setattr(auto, 'QMAIL', str(qmail))
    monkeypatch.chdir(tmp_path)
    for var in ('QMAILUSER', 'QMAILHOST', 'QMAILNAME', 'MAILNAME', 'NAME',
                'MAILHOST', 'PROTO', 'QMAILINJECT', 'QMAILQUEUE'):
        monkeypatch.delenv(var, raising=False)
    yield qmail
    os.environ.clear()
    os.environ.update(saved)


def test_main_runs_inject_in_process(home, monkeypatch, capsys):
    calls = []

    def fake_main(args):
        calls.append((args, os.environ.get('QMAILUSER'),
                      os.environ.get('QMAILHOST'),
                      os.environ.get('MAILNAME'), os.getcwd()))
        return 42
    monkeypatch.setattr(inject, 'main', fake_main)
    monkeypatch.setenv('NAME', 'dropped')
    code = sendmail.main(['-oi', '-F', 'Joe', '-f', 'joe@x.y', 'r@s'],
                         progname='sendmail')
    assert code == 42, f'got {code}'
    want = [([b'-a', b'-f', b'joe@x.y', b'-F', b'Joe', b'--', b'r@s'], 'joe', 'x.y', None,
             str(home))]
    assert calls == want, f'got {calls!r}, want {want!r}'
    assert 'NAME' not in os.environ


@pytest.mark.parametrize('argv', [['-q'], ['-f'], ['-t', '-Q', 'x']])
def test_main_usage(home, capsys, argv):
    # not qmail: sendmail.c's getopt also prints "illegal option" first
    code = sendmail.main(argv, progname='sendmail')
    err = capsys.readouterr().err
    assert (code, err) == (100, USAGE.decode() + '\n'), f'got {(code, err)!r}'


def test_main_usage_bad_b(home, capsys):
    code = sendmail.main(['-bz'], progname='sendmail')
    err = capsys.readouterr().err
    assert (code, err) == (100, USAGE.decode() + '\n'), f'got {(code, err)!r}'


def test_main_newaliases(home, capsys):
    code = sendmail.main([], progname='newaliases')
    err = capsys.readouterr().err
    want = 'sendmail: fatal: please use fastforward/newaliases instead\n'
    assert (code, err) == (100, want), f'got {(code, err)!r}'


@pytest.mark.parametrize('argv, progname', [
    (['-bp'], 'sendmail'),
    ([], 'mailq'),
])
def test_main_qread_in_process(home, monkeypatch, argv, progname):
    calls = []
    fake = types.ModuleType('qmail.qread')
    fake.main = lambda args: calls.append(args) or 7
    monkeypatch.setitem(sys.modules, 'qmail.qread', fake)
    import qmail
    monkeypatch.setattr(qmail, 'qread', fake, raising=False)
    code = sendmail.main(argv, progname=progname)
    assert (code, calls) == (7, [[]]), f'got {(code, calls)!r}'


def test_main_qread_missing(home, monkeypatch, capsys):
    import qmail
    monkeypatch.setitem(sys.modules, 'qmail.qread', None)
    monkeypatch.delattr(qmail, 'qread', raising=False)
    code = sendmail.main(['-bp'], progname='sendmail')
    err = capsys.readouterr().err
    want = 'sendmail: fatal: unable to run qmail-qread\n'
    assert (code, err) == (111, want), f'got {(code, err)!r}'


def test_main_smtpd(home, monkeypatch):
    calls = []

    def fake_execv(path, argv):
        calls.append((path, argv, os.environ.get('TCPREMOTEINFO'),
                      os.environ.get('RELAYCLIENT')))
        raise OSError('no')
    monkeypatch.setattr(sendmail.os, 'execv', fake_execv)
    for name, _ in SMTPD_ENV:
        monkeypatch.delenv(name.decode(), raising=False)
    code = sendmail.main(['-bs'], progname='sendmail')
    path = os.path.join(str(home), 'bin/qmail-smtpd')
    want = [(path, [path], 'sendmail-bs', '')]
    assert (code, calls) == (111, want), f'got {(code, calls)!r}'


def test_main_no_home(home, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path / 'nonexistent'))
    code = sendmail.main(['x'], progname='sendmail')
    err = capsys.readouterr().err
    want = 'sendmail: fatal: unable to switch to qmail home directory\n'
    assert (code, err) == (111, want), f'got {(code, err)!r}'


def test_main_internal_bug(home, monkeypatch, capsys):
    def boom(*args, **kw):
        raise ValueError('surprise')
    monkeypatch.setattr(sendmail, 'translate', boom)
    code = sendmail.main(['x'], progname='sendmail')
    err = capsys.readouterr().err
    want = 'sendmail: fatal: internal bug (ValueError in boom)\n'
    assert (code, err) == (111, want), f'got {(code, err)!r}'


def test_end_to_end(home, tmp_path):
    """The real program, one interpreter: sendmail -t -f, to a fake
    qmail-queue."""
    qq = tmp_path / 'fake-qmail-queue'
    qq.write_text(f"#!/bin/sh\ncat > '{tmp_path}/msg'\n"
                  f"cat <&1 > '{tmp_path}/env'\n")
    qq.chmod(0o700)
    script = (
        'import sys\n'
        'from qmail.lib import auto\n'
        f'auto.QMAIL = {str(home)!r}\n'
        'from qmail import sendmail\n'
        'sys.exit(sendmail.main(sys.argv[1:], progname="sendmail"))\n')
    env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
           'QMAILQUEUE': str(qq), 'USER': 'nobody', 'NAME': 'Dropped'}
    proc = subprocess.run(
        [sys.executable, '-c', script, '-t', '-oi', '-F', 'Web App',
         '-f', 'www@shop.example.com', 'extra@example.net'],
        input=b'To: buyer@example.com\nSubject: order\n\nthanks\n',
        capture_output=True, env=env, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, b''), proc
    msg = (tmp_path / 'msg').read_bytes()
    envelope = (tmp_path / 'env').read_bytes()
    assert b'\nFrom: "Web App" <www@shop.example.com>\n' in msg, msg
    assert msg.endswith(b'To: buyer@example.com\nSubject: order\n\n'
                        b'thanks\n'), msg
    want = (b'Fwww@shop.example.com\0Textra@example.net\0'
            b'Tbuyer@example.com\0\0')
    assert envelope == want, f'got {envelope!r}, want {want!r}'
