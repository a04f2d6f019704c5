"""The .qmail helpers and mailbox tools: forward, condredirect,
bouncesaying, except, preline, maildirmake, maildir2mbox, maildirwatch,
qreceipt, qbiff, predate, datemail, mailsubj.

Programs run in this process (main([...])) with fd 0 replaced by a file
and QMAILQUEUE pointing at a small sh script that saves what it is given
on fd 0 (the message) and fd 1 (the envelope).
"""

import contextlib
import io
import errno
import os
import re
import signal
import stat
import struct
import time

import pytest

from conftest import ROOT, any_user_python
from qmail.lib import auto, durable
from qmail import (bouncesaying, condredirect, except_, forward,
                   maildir2mbox, maildirmake, maildirwatch, mailsubj,
                   predate, preline, qbiff, qreceipt)

DTLINE = b'Delivered-To: joe-list@example.org\n'
RPLINE = b'Return-Path: <sender@example.net>\n'
UFLINE = b'From sender@example.net Thu Jan  1 00:00:00 1970\n'
MESSAGE = b'Subject: hello\n\nbody line\nFrom the start\n'
DATE_RE = re.compile(rb'^Date: \d{1,2} [A-Z][a-z]{2} \d{4} '
                     rb'\d\d:\d\d:\d\d [+-]\d{4}$')


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def stdin(tmp_path):
    """feed(data): fd 0 becomes a file holding data (seekable, as
    qmail-local's is).  fd 0 is restored afterwards."""
    saved = os.dup(0)
    count = [0]

    def feed(data: bytes):
        count[0] += 1
        path = tmp_path / ('stdin.%d' % count[0])
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
    yield feed
    os.dup2(saved, 0)
    os.close(saved)


class FakeQueue:
    """A QMAILQUEUE script and what it saw."""

    def __init__(self, d):
        self.dir = d

    def read(self, name):
        path = self.dir / name
        return path.read_bytes() if path.exists() else None

    @property
    def mess(self):
        return self.read('mess')

    @property
    def envelope(self):
        return self.read('env')

    @property
    def cwd(self):
        return self.read('cwd')


@pytest.fixture
def fakeqq(tmp_path, monkeypatch):
    d = tmp_path / 'qq'
    d.mkdir()
    script = d / 'qmail-queue'
    script.write_text(
        '#!/bin/sh\n'
        'cat > "%(d)s/mess" || exit 54\n'
        'cat 0<&1 > "%(d)s/env" || exit 54\n'
        'pwd > "%(d)s/cwd"\n'
        'exit ${FAKEQQ_EXIT:-0}\n' % {'d': d})
    script.chmod(0o755)
    home = tmp_path / 'home'
    (home / 'control').mkdir(parents=True)
    monkeypatch.setenv('QMAILQUEUE', str(script))
    monkeypatch.delenv('FAKEQQ_EXIT', raising=False)
    monkeypatch.setattr(auto, 'QMAIL', str(home))
    monkeypatch.chdir(tmp_path)     # the programs chdir to the home
    return FakeQueue(d)


def err_lines(capfd):
    return capfd.readouterr().err.splitlines()


# ---------------------------------------------------------------- except

@pytest.mark.parametrize('argv, want, message', [
    ([], 100, 'except: usage: except program [ arg ... ]'),
    (['true'], 100, None),
    (['false'], 0, None),
    (['sh', '-c', 'exit 100'], 0, None),
    (['sh', '-c', 'exit 111'], 111, 'except: fatal: temporary child error'),
    (['sh', '-c', 'kill -9 $$'], 111, 'except: fatal: child crashed'),
    (['/nonexistent/program'], 0, None),
    ([''], 0, None),        # "$NOPE" in .qmail: execvp's ENOENT, not a crash
])
def test_except(argv, want, message, capfd):
    got = except_.main(argv)
    lines = err_lines(capfd)
    assert got == want, 'except %r: got %d want %d' % (argv, got, want)
    assert lines == ([message] if message else []), \
        'got %r want %r' % (lines, message)


# ---------------------------------------------------------------- bouncesaying

@pytest.mark.parametrize('argv, want, message', [
    ([], 100,
     'bouncesaying: usage: bouncesaying error [ program [ arg ... ] ]'),
    (['This address no longer accepts mail.'], 100,
     'This address no longer accepts mail.'),
    (['gone', 'true'], 100, 'gone'),
    (['gone', 'false'], 0, None),
    (['gone', 'sh', '-c', 'exit 111'], 111,
     'bouncesaying: fatal: temporary child error'),
    (['gone', 'sh', '-c', 'kill -9 $$'], 111,
     'bouncesaying: fatal: child crashed'),
    (['gone', '/nonexistent/program'], 0, None),
    (['gone', ''], 0, None),
])
def test_bouncesaying(argv, want, message, capfd, stdin):
    stdin(MESSAGE)
    got = bouncesaying.main(argv)
    lines = err_lines(capfd)
    assert got == want, 'bouncesaying %r: got %d want %d' % (argv, got, want)
    assert lines == ([message] if message else []), \
        'got %r want %r' % (lines, message)


def test_bouncesaying_program_sees_message(tmp_path, stdin):
    stdin(MESSAGE)
    out = tmp_path / 'seen'
    got = bouncesaying.main(['no', 'sh', '-c', 'cat > "%s"; exit 1' % out])
    assert got == 0, 'got %d want 0' % got
    assert out.read_bytes() == MESSAGE


# ---------------------------------------------------------------- forward

def test_forward(fakeqq, stdin, monkeypatch, capfd):
    monkeypatch.setenv('NEWSENDER', 'joe-owner@example.org')
    monkeypatch.setenv('SENDER', 'original@example.net')
    monkeypatch.setenv('DTLINE', DTLINE.decode())
    stdin(MESSAGE)
    got = forward.main(['a@example.com', 'b@example.com'])
    lines = err_lines(capfd)
    assert got == 0, 'got %d want 0; stderr %r' % (got, lines)
    want_env = b'Fjoe-owner@example.org\0Ta@example.com\0Tb@example.com\0\0'
    assert fakeqq.envelope == want_env, \
        'envelope: got %r want %r' % (fakeqq.envelope, want_env)
    assert fakeqq.mess == DTLINE + MESSAGE, \
        'message: got %r want %r' % (fakeqq.mess, DTLINE + MESSAGE)
    assert len(lines) == 1 and re.fullmatch(r'forward: qp \d+', lines[0]), \
        'got %r want forward: qp <pid>' % lines
    # qmail_open starts qmail-queue in the qmail home.
    assert fakeqq.cwd.rstrip(b'\n') == os.fsencode(auto.QMAIL)


@pytest.mark.parametrize('unset, message', [
    ('NEWSENDER', 'forward: fatal: NEWSENDER not set'),
    ('DTLINE', 'forward: fatal: DTLINE not set'),
])
def test_forward_needs_environment(unset, message, fakeqq, stdin,
                                   monkeypatch, capfd):
    monkeypatch.setenv('NEWSENDER', 's@example.org')
    monkeypatch.setenv('DTLINE', DTLINE.decode())
    monkeypatch.delenv(unset)
    stdin(MESSAGE)
    got = forward.main(['a@example.com'])
    lines = err_lines(capfd)
    assert (got, lines) == (100, [message]), \
        'got %r want %r' % ((got, lines), (100, [message]))
    assert fakeqq.mess is None, 'qmail-queue ran'


def test_forward_without_an_address_is_refused(fakeqq, stdin, monkeypatch, capfd):
    """"|forward $UNSET": qmail's forward queued the message to nobody."""
    monkeypatch.setenv('NEWSENDER', 's@example.org')
    monkeypatch.setenv('DTLINE', DTLINE.decode())
    stdin(MESSAGE)
    got = forward.main([])
    assert (got, err_lines(capfd)) == (100, ['forward: usage: forward address [ address ... ]'])
    assert fakeqq.mess is None, 'qmail-queue ran'


@pytest.mark.parametrize('qqexit, want, message', [
    ('31', 100, 'forward: fatal: mail server permanently rejected message'
                ' (#5.3.0)'),
    ('11', 100, 'forward: fatal: envelope address too long for qq (#5.1.3)'),
    ('53', 111, 'forward: fatal: qq write error or disk full (#4.3.0)'),
    ('71', 111, 'forward: fatal: mail server temporarily rejected message'
                ' (#4.3.0)'),
])
def test_forward_queue_failure(qqexit, want, message, fakeqq, stdin,
                               monkeypatch, capfd):
    monkeypatch.setenv('NEWSENDER', 's@example.org')
    monkeypatch.setenv('DTLINE', DTLINE.decode())
    monkeypatch.setenv('FAKEQQ_EXIT', qqexit)
    stdin(MESSAGE)
    got = forward.main(['a@example.com'])
    lines = err_lines(capfd)
    assert (got, lines) == (want, [message]), \
        'got %r want %r' % ((got, lines), (want, [message]))


@pytest.mark.parametrize('program', ['missing', ''])
def test_forward_no_queue_program(fakeqq, stdin, monkeypatch, capfd, program):
    """QMAILQUEUE set to nothing cannot be run, as qmail's qmail_open (and
    qmail-inject's, qmail-smtpd's) has it: forward used bin/qmail-queue."""
    monkeypatch.setenv('QMAILQUEUE', str(fakeqq.dir / program) if program else '')
    monkeypatch.setenv('NEWSENDER', 's@example.org')
    monkeypatch.setenv('DTLINE', DTLINE.decode())
    stdin(MESSAGE)
    got = forward.main(['a@example.com'])
    lines = err_lines(capfd)
    want = (111, ['forward: fatal: unable to exec qq (#4.3.0)'])
    assert (got, lines) == want, 'got %r want %r' % ((got, lines), want)


# ---------------------------------------------------------------- condredirect

@pytest.mark.parametrize('argv, want, message', [
    ([], 100, 'condredirect: usage: condredirect newaddress program'
              ' [ arg ... ]'),
    (['new@example.com'], 100,
     'condredirect: usage: condredirect newaddress program [ arg ... ]'),
    (['new@example.com', 'false'], 0, None),
    (['new@example.com', 'sh', '-c', 'exit 100'], 0, None),
    (['new@example.com', '/nonexistent/program'], 0, None),
    (['new@example.com', ''], 0, None),
    (['new@example.com', 'sh', '-c', 'exit 111'], 111,
     'condredirect: fatal: temporary child error'),
    (['new@example.com', 'sh', '-c', 'kill -9 $$'], 111,
     'condredirect: fatal: child crashed'),
])
def test_condredirect_not_redirected(argv, want, message, fakeqq, stdin,
                                     monkeypatch, capfd):
    monkeypatch.setenv('SENDER', 's@example.org')
    monkeypatch.setenv('DTLINE', DTLINE.decode())
    stdin(MESSAGE)
    got = condredirect.main(argv)
    lines = err_lines(capfd)
    assert got == want, 'condredirect %r: got %d want %d' % (argv, got, want)
    assert lines == ([message] if message else []), \
        'got %r want %r' % (lines, message)
    assert fakeqq.mess is None, 'qmail-queue ran'


def test_condredirect_redirects(fakeqq, stdin, monkeypatch, capfd, tmp_path):
    monkeypatch.setenv('SENDER', 'original@example.net')
    monkeypatch.setenv('NEWSENDER', 'joe-owner@example.org')
    monkeypatch.setenv('DTLINE', DTLINE.decode())
    stdin(MESSAGE)
    seen = tmp_path / 'seen'
    # The program reads the whole message; condredirect must rewind.
    got = condredirect.main(['new@example.com', 'sh', '-c',
                             'cat > "%s"' % seen])
    lines = err_lines(capfd)
    assert got == 99, 'got %d want 99; stderr %r' % (got, lines)
    assert seen.read_bytes() == MESSAGE
    want_env = b'Foriginal@example.net\0Tnew@example.com\0\0'
    assert fakeqq.envelope == want_env, \
        'envelope: got %r want %r' % (fakeqq.envelope, want_env)
    assert fakeqq.mess == DTLINE + MESSAGE, \
        'message: got %r want %r' % (fakeqq.mess, DTLINE + MESSAGE)
    assert len(lines) == 1 and re.fullmatch(r'condredirect: qp \d+',
                                            lines[0]), lines


@pytest.mark.parametrize('unset, qqexit, want, message', [
    ('SENDER', None, 100, 'condredirect: fatal: SENDER not set'),
    ('DTLINE', None, 100, 'condredirect: fatal: DTLINE not set'),
    (None, '31', 100, 'condredirect: fatal: mail server permanently'
                      ' rejected message (#5.3.0)'),
    (None, '52', 111, 'condredirect: fatal: qq timeout (#4.3.0)'),
])
def test_condredirect_failures(unset, qqexit, want, message, fakeqq, stdin,
                               monkeypatch, capfd):
    monkeypatch.setenv('SENDER', 's@example.org')
    monkeypatch.setenv('DTLINE', DTLINE.decode())
    if unset:
        monkeypatch.delenv(unset)
    if qqexit:
        monkeypatch.setenv('FAKEQQ_EXIT', qqexit)
    stdin(MESSAGE)
    got = condredirect.main(['new@example.com', 'true'])
    lines = err_lines(capfd)
    assert (got, lines) == (want, [message]), \
        'got %r want %r' % ((got, lines), (want, [message]))


def test_condredirect_unseekable_input(fakeqq, monkeypatch, capfd):
    monkeypatch.setenv('SENDER', 's@example.org')
    monkeypatch.setenv('DTLINE', DTLINE.decode())
    saved = os.dup(0)
    r, w = os.pipe()
    os.write(w, MESSAGE)
    os.close(w)
    os.dup2(r, 0)
    os.close(r)
    try:
        got = condredirect.main(['new@example.com', 'true'])
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    lines = err_lines(capfd)
    assert got == 111, 'got %d want 111' % got
    assert len(lines) == 1 and lines[0].startswith(
        'condredirect: fatal: unable to rewind: '), lines


# ---------------------------------------------------------------- preline

@pytest.mark.parametrize('options, want', [
    ([], UFLINE + RPLINE + DTLINE + MESSAGE),
    (['-f'], RPLINE + DTLINE + MESSAGE),
    (['-r'], UFLINE + DTLINE + MESSAGE),
    (['-d'], UFLINE + RPLINE + MESSAGE),
    (['-frd'], MESSAGE),
    (['-f', '-r', '-d'], MESSAGE),
    (['-fF'], UFLINE + RPLINE + DTLINE + MESSAGE),
    (['-d', '-D', '-r', '--'], UFLINE + DTLINE + MESSAGE),
])
def test_preline_lines(options, want, tmp_path, stdin, monkeypatch):
    monkeypatch.setenv('UFLINE', UFLINE.decode())
    monkeypatch.setenv('RPLINE', RPLINE.decode())
    monkeypatch.setenv('DTLINE', DTLINE.decode())
    stdin(MESSAGE)
    out = tmp_path / 'out'
    got = preline.main(options + ['sh', '-c', 'cat > "%s"' % out])
    assert got == 0, 'got %d want 0' % got
    assert out.read_bytes() == want, \
        'preline %r: got %r want %r' % (options, out.read_bytes(), want)


@pytest.mark.parametrize('argv, unset, want, message', [
    (['sh', '-c', 'cat >/dev/null; exit 7'], None, 7, None),
    (['sh', '-c', 'cat >/dev/null; exit 111'], None, 111, None),
    ([], None, 100, 'preline: usage: preline cmd [ arg ... ]'),
    (['-f'], None, 100, 'preline: usage: preline cmd [ arg ... ]'),
    (['-x', 'cat'], None, 100, ['preline: illegal option -- x',
                                'preline: usage: preline cmd [ arg ... ]']),
    (['cat'], 'UFLINE', 100, 'preline: usage: preline cmd [ arg ... ]'),
    (['cat'], 'DTLINE', 100, 'preline: usage: preline cmd [ arg ... ]'),
    (['/nonexistent/program'], None, 100,
     'preline: fatal: unable to run /nonexistent/program:'
     ' file does not exist'),
    ([''], None, 100, 'preline: fatal: unable to run : file does not exist'),
    (['sh', '-c', 'cat >/dev/null; kill -9 $$'], None, 111,
     'preline: fatal: child crashed'),
])
def test_preline_exits(argv, unset, want, message, stdin, monkeypatch, capfd):
    monkeypatch.setenv('UFLINE', UFLINE.decode())
    monkeypatch.setenv('RPLINE', RPLINE.decode())
    monkeypatch.setenv('DTLINE', DTLINE.decode())
    if unset:
        monkeypatch.delenv(unset)
    stdin(MESSAGE)
    got = preline.main(argv)
    lines = err_lines(capfd)
    assert got == want, 'preline %r: got %d want %d' % (argv, got, want)
    message = message if isinstance(message, list) else [message] if message else []
    assert lines == message, 'got %r want %r' % (lines, message)


def test_preline_command_that_stops_reading(stdin, monkeypatch, capfd):
    """A command that closes its input early: its exit code is the
    answer, not 111 from the write that found the pipe closed (which,
    for a small message, happened or not by chance)."""
    for name, value in (('UFLINE', UFLINE), ('RPLINE', RPLINE), ('DTLINE', DTLINE)):
        monkeypatch.setenv(name, value.decode())
    stdin(MESSAGE * 20000)      # more than a pipe holds: the write waits
    got = preline.main(['sh', '-c', 'exec 0<&-; sleep 0.2; exit 7'])
    assert (got, err_lines(capfd)) == (7, [])


@pytest.fixture
def scripts(tmp_path):
    """Two scripts without a #! line, 'yes' (exit 0) and 'no' (exit 1),
    each reading its input first."""
    for name, code in (('yes', 0), ('no', 1)):
        path = tmp_path / name
        path.write_text('cat >/dev/null\nexit %d\n' % code)
        path.chmod(0o755)
    return tmp_path


def test_scripts_without_hashbang_run_under_sh(scripts, stdin, monkeypatch, capfd):
    """As execvp runs them (qmail's programs use it): glibc's
    posix_spawnp alone refuses them (ENOEXEC), and the checker of a
    .qmail line counted as missing."""
    yes, no = str(scripts / 'yes'), str(scripts / 'no')
    assert except_.main([yes]) == 100 and except_.main([no]) == 0
    stdin(MESSAGE)
    assert bouncesaying.main(['gone', yes]) == 100
    stdin(MESSAGE)
    assert bouncesaying.main(['gone', no]) == 0
    for name, value in (('UFLINE', UFLINE), ('RPLINE', RPLINE), ('DTLINE', DTLINE)):
        monkeypatch.setenv(name, value.decode())
    stdin(MESSAGE)
    assert preline.main([no]) == 1
    monkeypatch.setenv('PATH', str(scripts) + ':/usr/bin:/bin')
    assert except_.main(['yes']) == 100       # found on PATH, then run by sh
    lines = err_lines(capfd)
    assert lines == ['gone'], lines


def test_execvp_spawnp(scripts, monkeypatch):
    """qmail.lib.execvp, which qmail-popup and qmail-smtpd's AUTH use for
    checkpassword too: bytes or str, a path or a PATH search (our PATH,
    as posix_spawnp's; the child's environment is another matter)."""
    from qmail.lib import execvp
    monkeypatch.setenv('PATH', str(scripts) + ':/usr/bin:/bin')
    env = {'PATH': '/nonexistent'}
    quiet = [(os.POSIX_SPAWN_OPEN, 0, '/dev/null', os.O_RDONLY, 0),
             (os.POSIX_SPAWN_OPEN, 1, '/dev/null', os.O_WRONLY, 0)]
    for args, code in (([str(scripts / 'no')], 1), ([b'yes', b'an arg'], 0),
                       (['sh', '-c', 'exit 3'], 3)):
        pid = execvp.spawnp(args, env, file_actions=quiet)
        assert os.waitpid(pid, 0)[1] >> 8 == code, args
    with pytest.raises(FileNotFoundError):
        execvp.spawnp(['no-such-program'], env)
    assert execvp.find(b'yes') == os.fsencode(scripts / 'yes')
    assert execvp.find('no-such-program') is None


# ---------------------------------------------------------------- maildirmake

def test_maildirmake_tree(tmp_path):
    target = tmp_path / 'Maildir'
    old = os.umask(0)           # maildirmake's own umask must win
    try:
        got = maildirmake.main([str(target)])
    finally:
        os.umask(old)
    assert got == 0, 'got %d want 0' % got
    for path in (target, target / 'tmp', target / 'new', target / 'cur'):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert path.is_dir() and mode == 0o700, \
            '%s: got mode %o want 700' % (path, mode)
    assert sorted(os.listdir(target)) == ['cur', 'new', 'tmp']


@pytest.mark.parametrize('argv, want, message', [
    ([], 100, 'maildirmake: usage: maildirmake name'),
    (['{exists}'], 111,
     'maildirmake: fatal: unable to mkdir {exists}: file already exists'),
    (['{missing}/Maildir'], 111,
     'maildirmake: fatal: unable to mkdir {missing}/Maildir:'
     ' file does not exist'),
])
def test_maildirmake_failures(argv, want, message, tmp_path, capfd):
    names = {'exists': str(tmp_path), 'missing': str(tmp_path / 'no')}
    argv = [a.format(**names) for a in argv]
    got = maildirmake.main(argv)
    lines = err_lines(capfd)
    want_lines = [message.format(**names)]
    assert (got, lines) == (want, want_lines), \
        'got %r want %r' % ((got, lines), (want, want_lines))


# ---------------------------------------------------------------- maildir2mbox

@pytest.mark.parametrize('first, want', [
    (b'Return-Path: <a@example.org>\n', b'From a@example.org '),
    (b'Return-Path: <>\n', b'From MAILER-DAEMON '),
    (b'Return-Path: <a b\tc@example.org>\n', b'From a-b-c@example.org '),
    (b'Received: from x\n', b'From XXX '),
    (b'Return-Path: <a@example.org>', b'From XXX '),   # no newline
    (b'', b'From XXX '),
])
def test_maildir2mbox_ufline(first, want):
    got = maildir2mbox.ufline(first, 0)
    want += b'Thu Jan 01 00:00:00 1970\n'
    assert got == want, 'got %r want %r' % (got, want)


@pytest.mark.parametrize('when, want', [
    (0, b'Thu Jan 01 00:00:00 1970\n'),
    (838699494, b'Tue Jul 30 04:04:54 1996\n'),
    (1700000000, b'Tue Nov 14 22:13:20 2023\n'),
])
def test_myctime(when, want):
    got = maildir2mbox.myctime(when)
    assert got == want, 'got %r want %r' % (got, want)


@pytest.mark.parametrize('line, want', [
    (b'From x\n', True), (b'>From x\n', True), (b'>>>From x\n', True),
    (b'From\n', False), (b'from x\n', False), (b' From x\n', False),
    (b'>From', False),
])
def test_gfrom(line, want):
    got = maildir2mbox.gfrom(line)
    assert got == want, '%r: got %r want %r' % (line, got, want)


def mbox_by_whole_lines(lines, when):
    """mbox_lines as it was, each line held whole: the reference."""
    out = []
    for i, line in enumerate(lines):
        if i == 0:
            out.append(maildir2mbox.ufline(line, when))
        if maildir2mbox.gfrom(line):
            out.append(b'>')
        out.append(line if line.endswith(b'\n') else line + b'\n')
    if not lines:
        out.append(maildir2mbox.ufline(b'', when))
    return b''.join(out) + b'\n'


def test_mbox_lines_in_pieces_as_whole_lines():
    """Lines cut into pieces anywhere (as a long line is read) give the
    same mbox as whole lines: the quoting of a line is decided by its
    beginning however it was cut."""
    import random
    rnd = random.Random(4)
    alphabet = [b'>', b'F', b'r', b'o', b'm', b' ', b'x', b'\n', b'From ', b'>>From ']
    for _ in range(3000):
        message = b''.join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 25)))
        lines = message.splitlines(keepends=True)
        pieces, rest = [], message
        while rest:
            line_end = rest.find(b'\n') + 1 or len(rest)
            n = rnd.randrange(1, line_end + 1)      # within one line, as readline(limit)
            pieces.append(rest[:n])
            rest = rest[n:]
        got = b''.join(maildir2mbox.mbox_lines(pieces, 0))
        assert got == mbox_by_whole_lines(lines, 0), (message, pieces)


def test_maildir2mbox_a_long_line_is_not_held_whole(tmp_path):
    """A line of 300,000 '>'s and then "From " is read and written a
    buffer at a time, and still quoted."""
    line = b'>' * 300000 + b'From x ' + b'y' * 200000 + b'\n'
    path = tmp_path / 'm'
    path.write_bytes(b'Subject: s\n\n' + line + b'end')
    with maildir2mbox.open_message(str(path).encode()) as f:
        pieces = list(maildir2mbox.mbox_lines(maildir2mbox.message_pieces(f), 0))
    assert max(map(len, pieces)) <= maildir2mbox.BUFSIZE
    got = b''.join(pieces)
    assert got.endswith(b'Subject: s\n\n>' + line + b'end\n\n')


def test_maildir2mbox_a_long_return_path_still_names_the_sender(tmp_path, monkeypatch):
    """The first line is read whole for the From_ line's sender, where it
    is a Return-Path, even past a buffer (up to RETURN_PATH_MAX)."""
    sender = b'a' * 70000 + b'@example.com'
    path = tmp_path / 'm'
    path.write_bytes(b'Return-Path: <' + sender + b'>\n\nbody\n')

    def mbox():
        with maildir2mbox.open_message(str(path).encode()) as f:
            return b''.join(maildir2mbox.mbox_lines(maildir2mbox.message_pieces(f), 0))
    got = mbox()
    assert got.startswith(b'From ' + sender + b' Thu Jan 01 00:00:00 1970\nReturn-Path: <')
    assert got.endswith(b'>\n\nbody\n\n')
    monkeypatch.setattr(maildir2mbox, 'RETURN_PATH_MAX', 100000)
    path.write_bytes(b'Return-Path: <' + sender * 2 + b'>\n\nbody\n')
    got = mbox()
    assert got.startswith(b'From XXX Thu Jan 01 00:00:00 1970\nReturn-Path: <aaa')
    assert got.endswith(sender + b'>\n\nbody\n\n') and got.count(b'\n') == 5


def make_maildir(root):
    for sub in ('tmp', 'new', 'cur'):
        (root / sub).mkdir(parents=True)


def put(path, data, mtime):
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def mbox_env(monkeypatch, cwd, maildir, mail, mailtmp):
    """maildir2mbox's environment (MAILDIR, MAIL, MAILTMP), run from cwd."""
    monkeypatch.setenv('MAILDIR', str(maildir))
    monkeypatch.setenv('MAIL', str(mail))
    monkeypatch.setenv('MAILTMP', str(mailtmp))
    monkeypatch.chdir(cwd)


def test_maildir2mbox_moves(tmp_path, monkeypatch, capfd):
    md = tmp_path / 'Maildir'
    make_maildir(md)
    t1, t2, t3 = 838699494, 838699500, 838700000
    put(md / 'new' / '2.b', b'Return-Path: <>\nSubject: bounce\n\n'
        b'From here\n>From there\n', t2)
    put(md / 'cur' / '1.a:2,S', b'Return-Path: <x y@example.org>\n'
        b'Subject: one\n\nbody\n', t1)
    put(md / 'new' / '3.c', b'Subject: no return path\n\nlast line', t3)
    future = int(time.time()) + 3600    # "this very second" or later: stays
    put(md / 'new' / '4.d', b'Subject: later\n\n', future)
    put(md / 'new' / '.hidden', b'not a message\n', t1)
    stale = md / 'tmp' / 'stale'
    put(stale, b'', t1)
    fresh = md / 'tmp' / 'fresh'
    fresh.write_bytes(b'')
    mbox = tmp_path / 'mbox'
    old = b'From old@example.org Mon Jan 01 00:00:00 1996\nold\n\n'
    mbox.write_bytes(old)
    mbox_env(monkeypatch, tmp_path, md, mbox, tmp_path / 'mbox.tmp')

    got = maildir2mbox.main([])
    lines = err_lines(capfd)
    assert got == 0, 'got %d want 0; stderr %r' % (got, lines)
    want = (old +
            b'From x-y@example.org Tue Jul 30 04:04:54 1996\n'
            b'Return-Path: <x y@example.org>\nSubject: one\n\nbody\n\n'
            b'From MAILER-DAEMON Tue Jul 30 04:05:00 1996\n'
            b'Return-Path: <>\nSubject: bounce\n\n>From here\n>>From there\n'
            b'\n'
            b'From XXX Tue Jul 30 04:13:20 1996\n'
            b'Subject: no return path\n\nlast line\n\n')
    assert mbox.read_bytes() == want, \
        'got:\n%s\nwant:\n%s' % (mbox.read_bytes().decode(), want.decode())
    assert sorted(os.listdir(md / 'new')) == ['.hidden', '4.d']
    assert os.listdir(md / 'cur') == []
    assert not stale.exists() and fresh.exists()
    assert not (tmp_path / 'mbox.tmp').exists()


@pytest.mark.parametrize('by', ['fsync', 'syncfs', None])
def test_maildir2mbox_directory_that_cannot_be_read(by, tmp_path, monkeypatch, capfd):
    """MAIL in a directory that may be written and searched but not read
    (a 1733 spool): it cannot be opened to be synced.  Where the file's
    fsync carries its new name (a journal), that one is used; elsewhere
    (ext4 without a journal) a syncfs, and where none is to be trusted
    (a kernel before 5.17) the run fails before MAIL is replaced.  It used to fail after: the
    messages were in the new MAIL and still in the maildir, and every
    later run appended them again."""
    md = tmp_path / 'Maildir'
    make_maildir(md)
    put(md / 'new' / '1.a', b'Return-Path: <a@b>\n\nx\n', 838699494)
    spool = tmp_path / 'spool'
    spool.mkdir()
    mbox = spool / 'mbox'
    mbox.write_bytes(b'')
    mbox_env(monkeypatch, tmp_path, md, mbox, spool / 'mbox.tmp')
    real_fsync_dir, real_fsync = durable.fsync_dir, durable.fsync
    synced = []

    def fsync_dir(path):
        if os.fsencode(path) == os.fsencode(str(spool)):
            raise PermissionError(errno.EACCES, 'Permission denied')
        return real_fsync_dir(path)

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        return real_fsync(fd)
    monkeypatch.setattr(durable, 'fsync_dir', fsync_dir)
    monkeypatch.setattr(durable, 'fsync', fsync)
    monkeypatch.setattr(durable, 'file_fsync_carries_entry', lambda fd: by == 'fsync')
    if by is None:
        monkeypatch.setattr(durable, 'load_writeback', lambda: False)
        monkeypatch.setattr(durable, '_syncfs', False)
    elif by == 'syncfs':
        if not durable.load_writeback() or not durable._syncfs:
            pytest.skip('no syncfs that reports its errors (Linux before 5.17)')
        real_sync_dev = durable._sync_dev

        def sync_dev(fd, dev):
            synced.append(('syncfs', os.fstat(fd).st_ino))
            return real_sync_dev(fd, dev)
        monkeypatch.setattr(durable, '_sync_dev', sync_dev)
    got = maildir2mbox.main([])
    lines = err_lines(capfd)
    if by:
        assert (got, lines) == (0, []), (got, lines)
        assert mbox.read_bytes().count(b'\nx\n') == 1
        assert os.listdir(md / 'new') == []
        want = mbox.stat().st_ino if by == 'fsync' else ('syncfs', mbox.stat().st_ino)
        assert synced[-1] == want, 'the renamed MAIL was not synced'
    else:
        assert (got, lines) == (111, ['maildir2mbox: fatal: unable to sync the directory of '
                                      '%s: access denied' % mbox]), (got, lines)
        assert mbox.read_bytes() == b'', 'MAIL replaced'
        assert os.listdir(md / 'new') == ['1.a']


def test_maildir2mbox_nothing_new(tmp_path, monkeypatch):
    md = tmp_path / 'Maildir'
    make_maildir(md)
    mbox_env(monkeypatch, tmp_path, md, tmp_path / 'mbox', tmp_path / 'mbox.tmp')
    got = maildir2mbox.main([])
    assert got == 0, 'got %d want 0' % got
    assert not (tmp_path / 'mbox').exists(), 'an empty run made MAIL'


def test_maildir2mbox_relative_paths(tmp_path, monkeypatch):
    """MAIL and MAILTMP are taken from inside MAILDIR, after the chdir."""
    md = tmp_path / 'Maildir'
    make_maildir(md)
    put(md / 'new' / '1', b'Return-Path: <a@b>\n\nx\n', 838699494)
    mbox_env(monkeypatch, tmp_path, md, 'mbox', 'mbox.tmp')
    got = maildir2mbox.main([])
    assert got == 0, 'got %d want 0' % got
    want = b'From a@b Tue Jul 30 04:04:54 1996\nReturn-Path: <a@b>\n\nx\n\n'
    assert (md / 'mbox').read_bytes() == want
    assert stat.S_IMODE((md / 'mbox').stat().st_mode) == 0o600


@pytest.mark.parametrize('unset, message', [
    ('MAIL', 'maildir2mbox: fatal: MAIL not set'),
    ('MAILTMP', 'maildir2mbox: fatal: MAILTMP not set'),
    ('MAILDIR', 'maildir2mbox: fatal: MAILDIR not set'),
])
def test_maildir2mbox_environment(unset, message, tmp_path, monkeypatch,
                                  capfd):
    mbox_env(monkeypatch, tmp_path, tmp_path, tmp_path / 'mbox', tmp_path / 'mbox.tmp')
    monkeypatch.delenv(unset)
    got = maildir2mbox.main([])
    lines = err_lines(capfd)
    assert (got, lines) == (111, [message]), \
        'got %r want %r' % ((got, lines), (111, [message]))


def test_maildir2mbox_unwritable_tmp_keeps_messages(tmp_path, monkeypatch,
                                                    capfd):
    md = tmp_path / 'Maildir'
    make_maildir(md)
    put(md / 'new' / '1', b'x\n', 838699494)
    mbox_env(monkeypatch, tmp_path, md, tmp_path / 'mbox', tmp_path / 'no' / 'mbox.tmp')
    got = maildir2mbox.main([])
    lines = err_lines(capfd)
    assert got == 111, 'got %d want 111' % got
    assert lines[0].startswith('maildir2mbox: fatal: unable to create '), lines
    assert os.listdir(md / 'new') == ['1'], 'a message was lost'


@pytest.mark.parametrize('how', ['same name', 'hard link'])
def test_maildir2mbox_refuses_a_maildirtmp_that_is_mail(how, tmp_path, monkeypatch, capfd):
    """MAILTMP naming MAIL itself once emptied the mbox before copying it,
    and exited 0."""
    md = tmp_path / 'Maildir'
    make_maildir(md)
    put(md / 'new' / '1', b'x\n', 838699494)
    mbox = tmp_path / 'mbox'
    old = b'From old@example.org Mon Jan 01 00:00:00 1996\nold\n\n'
    mbox.write_bytes(old)
    tmp = mbox if how == 'same name' else tmp_path / 'mbox.tmp'
    if how == 'hard link':
        os.link(str(mbox), str(tmp))
    mbox_env(monkeypatch, tmp_path, md, mbox, tmp)
    got = maildir2mbox.main([])
    lines = err_lines(capfd)
    assert (got, lines) == (111, ['maildir2mbox: fatal: MAILTMP is the same file as MAIL'])
    assert mbox.read_bytes() == old and os.listdir(md / 'new') == ['1']


def test_maildir2mbox_ends_an_unended_mbox_and_skips_fifos(tmp_path, monkeypatch):
    """An old mbox without a final newline gets one before the first From_
    line; a FIFO in new/ is left alone (opening it waited for ever, with
    MAIL locked)."""
    md = tmp_path / 'Maildir'
    make_maildir(md)
    put(md / 'new' / '1', b'Return-Path: <a@b>\n\nx\n', 838699494)
    os.mkfifo(str(md / 'new' / '2'))
    os.utime(str(md / 'new' / '2'), (838699494, 838699494))
    mbox = tmp_path / 'mbox'
    mbox.write_bytes(b'From old@example.org Mon Jan 01 00:00:00 1996\nold')
    mbox_env(monkeypatch, tmp_path, md, mbox, tmp_path / 'mbox.tmp')

    def hung(signum, frame):
        raise AssertionError('maildir2mbox waits on the FIFO')
    old_handler = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        assert maildir2mbox.main([]) == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
    assert mbox.read_bytes() == (b'From old@example.org Mon Jan 01 00:00:00 1996\nold\n'
                                 b'From a@b Tue Jul 30 04:04:54 1996\nReturn-Path: <a@b>\n\nx\n\n')
    assert os.listdir(md / 'new') == ['2']


# ---------------------------------------------------------------- maildirwatch

def test_maildirwatch_summary():
    msg = io.BytesIO(b'Return-Path: <s@example.net>\n'
                     b'Delivered-To: joe@example.org\n'
                     b'From: Sender \x01Name <s@example.net>\n'
                     b'Subject: the\tsubject\n'
                     b'\n' + b'x' * 300 + b'\n')
    got = maildirwatch.summary(msg.readline, msg.read)
    text = b'the/subject//' + b'x' * (158 - 13)
    want = (b'FROM <s@example.net> TO <joe@example.org>\n'
            b'\033[1mFrom: Sender /Name <s@example.net>\033[0m\n' +
            text + b'\n\n')
    assert got == want, 'got %r want %r' % (got, want)


def test_maildirwatch_scan(tmp_path, monkeypatch):
    make_maildir(tmp_path)
    put(tmp_path / 'new' / 'b', b'Subject: second\n\n', 838700000)
    put(tmp_path / 'new' / 'a', b'Subject: first\n\n', 838699494)
    put(tmp_path / 'cur' / 'c', b'Subject: seen\n\n', 838699494)
    monkeypatch.chdir(tmp_path)
    got = maildirwatch.scan_once(int(time.time()))
    want = (maildirwatch.CLEAR +
            b'FROM ? TO <?>\nfirst//\n\n' +
            b'FROM ? TO <?>\nsecond//\n\n')
    assert got == want, 'got %r want %r' % (got, want)


# ---------------------------------------------------------------- qreceipt

NOTICE_HEADER = (b'Message-ID: <123@example.net>\n'
                 b'Notice-Requested-Upon-Delivery-To: "Joe" <joe@example.org>,'
                 b' other@example.com\n'
                 b'Subject: hi\n\nbody\n')


def want_notice(returnpath_quoted):
    return (b'From: DELIVERY NOTICE SYSTEM <' + returnpath_quoted + b'>\n'
            b'To: <' + returnpath_quoted + b'>\n'
            b'Subject: success notice\n\n'
            b'Hi! This is the qreceipt program. Your message was delivered'
            b' to the\nfollowing address: joe@example.org. Thanks for'
            b' asking.\n'
            b'Your Message-ID: <123@example.net>\n')


def test_qreceipt_sends_notice(fakeqq, stdin, monkeypatch, capfd):
    monkeypatch.setenv('SENDER', 'a b@example.net')
    stdin(NOTICE_HEADER)
    got = qreceipt.main(['joe@example.org'])
    lines = err_lines(capfd)
    assert got == 0, 'got %d want 0; stderr %r' % (got, lines)
    want = want_notice(b'"a b"@example.net')
    assert fakeqq.mess == want, 'got %r want %r' % (fakeqq.mess, want)
    want_env = b'F\0Ta b@example.net\0\0'
    assert fakeqq.envelope == want_env, \
        'envelope: got %r want %r' % (fakeqq.envelope, want_env)


@pytest.mark.parametrize('message, target, sender, want, err', [
    (NOTICE_HEADER, 'nobody@example.org', 's@example.net', 0, None),
    (NOTICE_HEADER, 'joe@example.org', '', 0, None),
    (NOTICE_HEADER, 'joe@example.org', '#@[]', 0, None),
    (b'Subject: no request\n\njoe@example.org\n', 'joe@example.org',
     's@example.net', 0, None),
    (b'Notice-Requested-Upon-Delivery-To: "joe@example.org\n\n',
     'joe@example.org', 's@example.net', 100,
     'qreceipt: fatal: unable to parse this: '
     'Notice-Requested-Upon-Delivery-To: "joe@example.org'),
    (b'Notice-Requested-Upon-Delivery-To: joe@example.org>\n\n',
     'joe@example.org', 's@example.net', 100,
     'qreceipt: fatal: unable to parse this: '
     'Notice-Requested-Upon-Delivery-To: joe@example.org>'),
    (NOTICE_HEADER, None, 's@example.net', 100,
     'qreceipt: usage: qreceipt deliveryaddress'),
    (NOTICE_HEADER, 'joe@example.org', None, 100,
     'qreceipt: usage: qreceipt deliveryaddress'),
])
def test_qreceipt_no_notice(message, target, sender, want, err, fakeqq,
                            stdin, monkeypatch, capfd):
    if sender is None:
        monkeypatch.delenv('SENDER', raising=False)
    else:
        monkeypatch.setenv('SENDER', sender)
    stdin(message)
    got = qreceipt.main([target] if target else [])
    lines = err_lines(capfd)
    assert (got, lines) == (want, [err] if err else []), \
        'got %r want %r' % ((got, lines), (want, err))
    assert fakeqq.mess is None, 'a notice was sent'


@pytest.mark.parametrize('field', [
    # one line of 70 KB, the address after it
    b'Notice-Requested-Upon-Delivery-To: "' + b'a' * 70000 + b'"@x, joe@example.org\n',
    # folded over 8,000 lines, 79 KB, the address last
    b'Notice-Requested-Upon-Delivery-To: '
    + b''.join(b'u%d@x,\n ' % i for i in range(8000)) + b'joe@example.org\n',
])
def test_qreceipt_reads_a_long_request_whole(field, fakeqq, stdin, monkeypatch, capfd):
    """The field was cut at 64 KB: the first bounced the message as
    unparsable (exit 100), the second sent no notice.  qreceipt.c reads
    each field whole."""
    monkeypatch.setenv('SENDER', 's@example.net')
    stdin(b'Message-ID: <123@example.net>\n' + field + b'Subject: hi\n\nbody\n')
    got = qreceipt.main(['joe@example.org'])
    assert (got, err_lines(capfd)) == (0, [])
    assert fakeqq.mess == want_notice(b's@example.net')


def test_qreceipt_without_fd_0_is_a_read_error():
    """It said "internal bug (OSError in main)"; qreceipt.c: "read error"."""
    import subprocess
    import sys
    code = 'import sys; from qmail import qreceipt; sys.exit(qreceipt.main(["joe@x"]))'
    r = subprocess.run([sys.executable, '-c', code], stdin=subprocess.DEVNULL,
                       capture_output=True, preexec_fn=lambda: os.close(0), timeout=60,
                       env=dict(os.environ, SENDER='s@x', PYTHONPATH=ROOT))
    assert (r.returncode, r.stderr) == (111, b'qreceipt: fatal: read error\n')


@pytest.mark.parametrize('qqexit, want, message', [
    ('31', 100, 'qreceipt: fatal: permanent qmail-queue error'),
    ('53', 111, 'qreceipt: fatal: temporary qmail-queue error'),
])
def test_qreceipt_queue_failure(qqexit, want, message, fakeqq, stdin,
                                monkeypatch, capfd):
    monkeypatch.setenv('SENDER', 's@example.net')
    monkeypatch.setenv('FAKEQQ_EXIT', qqexit)
    stdin(NOTICE_HEADER)
    got = qreceipt.main(['joe@example.org'])
    lines = err_lines(capfd)
    assert (got, lines) == (want, [message]), \
        'got %r want %r' % ((got, lines), (want, [message]))


# ---------------------------------------------------------------- qbiff

def utmp_record(ut_type, line, user):
    rec = bytearray(qbiff.UTMP_SIZE)
    struct.pack_into('=h', rec, 0, ut_type)
    rec[qbiff.UTMP_LINE] = line.ljust(32, b'\0')
    rec[qbiff.UTMP_USER] = user.ljust(32, b'\0')
    return bytes(rec)


def test_qbiff_ttys():
    utmp = b''.join([
        utmp_record(7, b'pts/1', b'joe'),
        utmp_record(8, b'pts/2', b'joe'),       # dead process
        utmp_record(7, b'pts/3', b'joey'),
        utmp_record(7, b'../etc/passwd', b'joe'),
        utmp_record(7, b'/etc/passwd', b'joe'),
        utmp_record(7, b'tty4', b'joe'),
        b'partial record',
    ])
    got = qbiff.ttys(utmp, b'joe')
    assert got == [b'pts/1', b'tty4'], 'got %r' % got


def test_qbiff_announcement():
    msg = io.BytesIO(b'Subject: lunch?\n\nAt noon\x07.\n')
    text = qbiff.excerpt(msg.readline, msg.read)
    got = qbiff.woof(qbiff.tofrom(b'joe-lunch', b'a\x1b@example.net'), text)
    want = (b'\r\n\a*** TO <joe-lunch> FROM <a_@example.net>\r\n'
            b'    lunch?//At noon/./\r\n')
    assert got == want, 'got %r want %r' % (got, want)


@pytest.mark.parametrize('body, want', [
    (b'abc', b'    s//abc/'),            # headerbody.c ends a last line with a newline
    (b'abc\n', b'    s//abc/'),
    (b'', b'    s//'),
])
def test_qbiff_and_maildirwatch_a_last_line_without_newline(body, want):
    msg = io.BytesIO(b'Subject: s\n\n' + body)
    assert qbiff.excerpt(msg.readline, msg.read) == want
    msg = io.BytesIO(b'Subject: s\n\n' + body)
    got = maildirwatch.summary(msg.readline, msg.read)
    assert got.endswith(b'\n' + want[4:] + b'\n\n'), got


def test_qbiff_always_zero(stdin, monkeypatch):
    monkeypatch.delenv('USER', raising=False)
    stdin(MESSAGE)
    assert qbiff.main([]) == 0


# ---------------------------------------------------------------- predate

@pytest.mark.parametrize('fields, gmtoff, want', [
    ((1996, 7, 30, 11, 54, 54), 0, b'Date: 30 Jul 1996 11:54:54 +0000\n'),
    ((2024, 1, 5, 1, 2, 3), 3600, b'Date: 5 Jan 2024 01:02:03 +0100\n'),
    ((2024, 1, 5, 1, 2, 3), -5 * 3600, b'Date: 5 Jan 2024 01:02:03 -0500\n'),
    ((2024, 1, 5, 1, 2, 3), 19800, b'Date: 5 Jan 2024 01:02:03 +0530\n'),
    ((2024, 1, 5, 1, 2, 3), -(3600 + 29), b'Date: 5 Jan 2024 01:02:03 -0100\n'),
    ((2024, 1, 5, 1, 2, 3), 3600 + 30, b'Date: 5 Jan 2024 01:02:03 +0101\n'),
])
def test_predate_date_line(fields, gmtoff, want):
    tm = time.struct_time(fields + (0, 1, 0))
    got = predate.date_line(tm, gmtoff)
    assert got == want, 'got %r want %r' % (got, want)


def test_predate_feeds_child(tmp_path, stdin):
    stdin(MESSAGE)
    out = tmp_path / 'out'
    got = predate.main(['sh', '-c', 'cat > "%s"; exit 3' % out])
    assert got == 3, 'got %d want 3' % got
    date, rest = out.read_bytes().split(b'\n', 1)
    assert DATE_RE.match(date), 'got %r' % date
    assert rest == MESSAGE, 'got %r want %r' % (rest, MESSAGE)


@pytest.mark.parametrize('argv, want, message', [
    ([], 100, 'predate: usage: predate child'),
    (['/nonexistent/program'], 111,
     'predate: fatal: unable to run /nonexistent/program:'
     ' file does not exist'),
    (['sh', '-c', 'kill -9 $$'], 111, 'predate: fatal: child crashed'),
])
def test_predate_failures(argv, want, message, stdin, capfd):
    stdin(MESSAGE)
    got = predate.main(argv)
    lines = err_lines(capfd)
    assert (got, lines) == (want, [message]), \
        'got %r want %r' % ((got, lines), (want, [message]))


def test_predate_read_error_kills_the_child_before_its_end_of_input(tmp_path, capfd):
    """A sendmail fed the message cut short would queue it: the child
    is killed first, and predate says why (111)."""
    done = tmp_path / 'done'
    saved = os.dup(0)
    fd = os.open(tmp_path, os.O_RDONLY)        # read(): EISDIR
    os.dup2(fd, 0)
    os.close(fd)
    try:
        got = predate.main(['sh', '-c', 'cat > /dev/null; echo queued > "%s"' % done])
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    assert got == 111
    assert err_lines(capfd) == ['predate: fatal: unable to read input: is a directory']
    assert not done.exists()


def test_datemail_read_error_queues_nothing(tmp_path, fakeqq):
    """datemail's feeder ends the process before sendmail reads an end
    of input; the fake qmail-queue gets no finished envelope."""
    import subprocess
    import sys
    env = dict(os.environ, USER='joe', PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    code = ('import os, sys\n'
            'os.dup2(os.open(%r, os.O_RDONLY), 0)   # read(): EISDIR\n'
            'from qmail.lib import auto; auto.QMAIL = %r\n'
            'from qmail import datemail; sys.exit(datemail.main(["a@example.com"]))'
            % (str(tmp_path), str(tmp_path / 'home')))
    proc = subprocess.run([sys.executable, '-c', code], stdin=subprocess.DEVNULL, env=env,
                          capture_output=True, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 111, proc.stderr
    assert b'datemail: fatal: unable to read input: is a directory' in proc.stderr
    assert not (fakeqq.envelope or b'').endswith(b'\0\0')


def test_datemail_under_a_run_scripts_softlimit(tmp_path, fakeqq):
    """softlimit -m N makes the stack limit N, glibc's default size for a
    thread: datemail's feeder thread could not start within N ("internal
    bug (RuntimeError in start)", 111)."""
    import subprocess
    import sys
    env = dict(os.environ, USER='joe', PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    code = ('import sys\n'
            'from qmail.lib import auto; auto.QMAIL = %r\n'
            'from qmail import datemail; sys.exit(datemail.main(["a@example.com"]))'
            % str(tmp_path / 'home'))
    proc = subprocess.run(['softlimit', '-m', '300000000', sys.executable, '-c', code],
                          input=b'Subject: dated\n\nbody\n', env=env,
                          capture_output=True, timeout=60, cwd=str(tmp_path))
    assert (proc.returncode, proc.stderr) == (0, b'')
    assert b'\nDate: ' in fakeqq.mess and fakeqq.mess.endswith(b'\n\nbody\n')


# ---------------------------------------------------------------- mailsubj, datemail

@pytest.mark.parametrize('subject, recips, want', [
    (b'hi', [b'a@b'], b'Subject: hi\nTo: a@b\n\n'),
    (b'two words', [b'a@b', b'c@d'], b'Subject: two words\nTo: a@b c@d\n\n'),
    (b'', [], b'Subject: \nTo:\n\n'),
])
def test_mailsubj_header(subject, recips, want):
    got = mailsubj.header(subject, recips)
    assert got == want, 'got %r want %r' % (got, want)


def test_mailsubj_sends(fakeqq, stdin, monkeypatch):
    pytest.importorskip('qmail.inject')
    monkeypatch.setenv('USER', 'joe')
    stdin(b'the body\n')
    got = mailsubj.main(['lunch', 'a@example.com', 'b@example.com'])
    assert got == 0, 'got %d want 0' % got
    assert b'\nSubject: lunch\n' in b'\n' + fakeqq.mess, fakeqq.mess
    assert b'\nTo: a@example.com, b@example.com\n' in fakeqq.mess, \
        fakeqq.mess
    assert fakeqq.mess.endswith(b'\n\nthe body\n'), fakeqq.mess
    recips = fakeqq.envelope.split(b'\0')[1:-2]
    assert recips == [b'Tb@example.com', b'Ta@example.com'] or \
        recips == [b'Ta@example.com', b'Tb@example.com'], recips


def test_mailsubj_usage(capfd):
    got = mailsubj.main([])
    lines = err_lines(capfd)
    want = (100, ['mailsubj: usage: mailsubj subject recip ...'])
    assert (got, lines) == want, 'got %r want %r' % ((got, lines), want)


def test_datemail_sends(fakeqq, stdin, monkeypatch):
    pytest.importorskip('qmail.sendmail')
    from qmail import datemail
    monkeypatch.setenv('USER', 'joe')
    stdin(b'Subject: dated\n\nthe body\n')
    got = datemail.main(['a@example.com'])
    assert got == 0, 'got %d want 0' % got
    dates = [line for line in fakeqq.mess.split(b'\n')
             if line.startswith(b'Date:')]
    assert len(dates) == 1 and DATE_RE.match(dates[0]), \
        'got Date lines %r' % dates
    assert fakeqq.mess.endswith(b'\n\nthe body\n'), fakeqq.mess
    assert fakeqq.envelope.endswith(b'\0Ta@example.com\0\0'), \
        fakeqq.envelope
    # fd 0 is ours again.
    assert os.lseek(0, 0, os.SEEK_CUR) >= 0


# ---------------------------------------------------------------- splogger

def test_splogger_entries():
    from qmail import splogger
    assert splogger.entries(b'warning: a\x01b', 1.5) == [(splogger.syslog.LOG_WARNING,
                                                         '1.500000 warning: a?b')]
    assert splogger.entries(b'', 1.5) == []
    long = splogger.entries(b'alert: ' + b'x' * 1600, 2.0)
    assert [t[:9] for _, t in long] == ['2.000000 ', '2.000000+', '2.000000+']
    assert [len(t) - 9 for _, t in long] == [799, 799, 9]
    assert {p for p, _ in long} == {splogger.syslog.LOG_ALERT}


@pytest.mark.parametrize('arg, want', [('16', 16), ('1x6', 1), ('x', 0), ('', 0), ('2', 2)])
def test_splogger_facility_as_scan_ulong_reads_it(arg, want):
    from qmail import splogger
    assert splogger.facility_of(arg) == want << 3


@pytest.mark.parametrize('arg, want', [
    # C: scan_ulong wraps mod 2**64, << 3 too, and openlog takes an int
    ('99999999999999999999', 411041784),     # ((10**20 - 1) mod 2**64) << 3, low 32 bits
    ('268435456', -2**31),                   # 2**28 << 3: the sign bit
    ('536870912', 0),                        # 2**29 << 3: gone
    ('268435455', 2**31 - 8),
    ('9' * 60, -8),           # past 40 digits too: wrapped digit by digit
])
def test_splogger_facility_wraps_as_c(arg, want):
    """A number too big for C wraps, as C's; it used to overflow Python's
    openlog, and splogger logged nothing and exited 111."""
    from qmail import splogger
    assert splogger.facility_of(arg) == want
    splogger.syslog.openlog('t', 0, splogger.facility_of(arg))    # no OverflowError
    splogger.syslog.closelog()


def test_splogger_folds_as_it_reads():
    """Pieces of any size give the entries a whole line would, each sent
    as soon as it is full: a line of any length is held FOLD bytes at a
    time (it was held whole, and split again at each 4 KB read); a last
    line without a newline is sent at the end."""
    from qmail import splogger
    data = b'x' * 5000 + b'\nwarning: w\n\ntail'
    for size in (1, 7, 4096, len(data)):
        f = splogger.Folder()
        got = []
        for i in range(0, len(data), size):
            got += f.feed(data[i:i + size], 1.0)
            assert len(f.cur) < splogger.FOLD
        got += f.end(1.0)
        assert got == (splogger.entries(b'x' * 5000, 1.0) + splogger.entries(b'warning: w', 1.0)
                       + splogger.entries(b'tail', 1.0)), size


def test_splogger_takes_a_tag_that_is_not_utf8():
    """openlog failed on it (UnicodeEncodeError): splogger logged nothing
    and exited 111, and whatever wrote to it lost its log.  A read error
    ends the input, as splogger.c's: exit 0 (it was 111)."""
    import subprocess
    import sys
    from qmail import splogger
    assert splogger.tag_of(os.fsdecode(b't\xff\xc3\xa9')) == 't?\u00e9'
    code = 'import sys; from qmail import splogger; sys.exit(splogger.main())'
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, '-c', code, b't\xff', '16'], input=b'hello\n',
                       capture_output=True, env=env, timeout=60)
    assert (r.returncode, r.stderr) == (0, b'')
    r = subprocess.run([sys.executable, '-c', code], stdin=subprocess.DEVNULL,
                       preexec_fn=lambda: os.close(0), capture_output=True, env=env,
                       timeout=60)
    assert (r.returncode, r.stderr) == (0, b'')


def run_with_closed(module, args, close, stdin=b'', env=None, home=None):
    """python -c running qmail.<module>.run() with fd close closed (home:
    auto.QMAIL, where the program needs one)."""
    import subprocess
    import sys
    code = 'import sys; sys.argv[1:] = %r; from qmail.lib import auto; %s' \
        'from qmail import %s; %s.run()' % (
            args, '' if home is None else 'auto.QMAIL = %r; ' % str(home), module, module)
    return subprocess.run([sys.executable, '-c', code], input=stdin if close != 0 else None,
                          stdin=subprocess.DEVNULL if close == 0 else None,
                          capture_output=True, timeout=60,
                          preexec_fn=lambda: os.close(close),
                          env=dict(env or {}, PATH='/usr/bin:/bin', PYTHONPATH=ROOT))


def test_a_closed_stderr_loses_the_warning_not_the_report():
    """fd 2 closed: CPython makes sys.stderr None, and the warning's
    write raised, then the last-resort handler's: exit 1 and the whole
    report lost.  As C qmail's strerr, what goes to fd 2 is lost."""
    r = run_with_closed('analog', ['overall'], 2, stdin=b'garbage\n')
    assert r.returncode == 0 and b'Basic statistics' in r.stdout, (r.returncode, r.stdout)


def test_a_closed_stdin_is_a_read_error_not_an_internal_bug(tmp_path):
    (tmp_path / 'users').mkdir()        # (a machine without /var/qmail: its own home)
    r = run_with_closed('pw2u', [], 0, home=tmp_path)
    assert (r.returncode, r.stderr) == (111, b'qmail-pw2u: fatal: unable to read input\n')


def test_tcp_env_with_fd_1_or_2_closed():
    """tcp-env.c: 111, saying nothing, where its output cannot be
    written (it printed a traceback and exited 1); an unknown option is
    named on fd 2 and ignored, fd 2 closed or not (it exited 111)."""
    r = run_with_closed('tcp_env', ['true'], 1)
    assert (r.returncode, r.stderr) == (111, b'')
    r = run_with_closed('tcp_env', ['-Z', 'true'], 2, env={'PROTO': 'TCP'})
    assert r.returncode == 0, r


# ---------------------------------------------------------------- qmail-svscan

def test_svscan_stop_believes_no_stale_pidfile(tmp_path):
    """A pidfile from before a reboot or a kill names some other process
    now: stop must signal neither it nor its parent (it sent TERM to the
    parent of whatever had svscan's old pid)."""
    import subprocess
    import sys
    from qmail import svscan
    svdir = tmp_path / 'service'
    svdir.mkdir()
    parent = subprocess.Popen([sys.executable, '-c',
                               'import subprocess, sys; p = subprocess.Popen(["sleep", "30"]); '
                               'print(p.pid, flush=True); p.wait()'],
                              stdout=subprocess.PIPE)
    try:
        child = int(parent.stdout.readline())
        for text in ('%d\n' % child, '%d %d\n' % (parent.pid, child)):
            (svdir / '.svscan.pid').write_text(text)
            assert svscan.running_here(str(tmp_path)) is None
            assert svscan.stop(str(tmp_path)) == 0
            assert parent.poll() is None
            os.kill(child, 0)                       # both alive still
    finally:
        parent.kill()
        parent.wait()
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass


def test_maildir_clean_leaves_a_linked_tmp_alone(tmp_path, monkeypatch):
    """tmp/ as a symbolic link to another directory: its old files are
    not the maildir's to remove."""
    md = tmp_path / 'Maildir'
    (md / 'new').mkdir(parents=True)
    (md / 'cur').mkdir()
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    put(elsewhere / 'precious', b'x', 838699494)
    os.symlink(str(elsewhere), str(md / 'tmp'))
    monkeypatch.chdir(md)
    maildir2mbox.maildir_clean(int(time.time()))
    assert (elsewhere / 'precious').exists()
    os.unlink(str(md / 'tmp'))
    (md / 'tmp').mkdir()
    put(md / 'tmp' / 'stale', b'x', 838699494)
    maildir2mbox.maildir_clean(int(time.time()))
    assert not (md / 'tmp' / 'stale').exists()


def test_checkpassword_without_shadow_access_is_temporary_trouble():
    """Not root (qmail-smtpd's AUTH as qmaild): NSS moved on past the
    unreadable /etc/shadow and said "no entry", so every login failed as
    a wrong password (exit 1, a 535) instead of saying why (111)."""
    import subprocess
    import sys
    code = ('import sys; from qmail import checkpassword as c\n'
            'try:\n    c.getspnam(b"root")\nexcept c.Trouble as e:\n'
            '    print("trouble", e); sys.exit(0)\nsys.exit(3)\n')
    argv = [sys.executable, '-c', code]
    env = dict(os.environ, PYTHONPATH=ROOT)
    if os.geteuid() == 0:
        python, env['PYTHONPATH'] = any_user_python()
        argv = ['setpriv', '--reuid', 'nobody', '--regid', 'nogroup', '--clear-groups',
                python, '-c', code]
    r = subprocess.run(argv, capture_output=True, timeout=30, cwd='/', env=env)
    assert r.returncode == 0 and b'unable to read shadow' in r.stdout, (r.returncode, r.stdout, r.stderr)


def test_qmail_queue_runs_in_the_qmail_home(fakeqq, tmp_path, monkeypatch):
    """As qmail's qmail_open does: a QMAILQUEUE program given relative to
    HOME starts wherever its caller works (qmail-send in HOME/queue: its
    bounces waited for ever), and runs in HOME."""
    from qmail.lib.qqtalk import QueueClient
    home = tmp_path / 'home'
    (home / 'bin').mkdir()
    script = home / 'bin' / 'filter'
    script.write_text('#!/bin/sh\nexec "$QQ"\n')
    script.chmod(0o755)
    monkeypatch.setenv('QQ', os.environ['QMAILQUEUE'])
    (tmp_path / 'queue').mkdir()
    monkeypatch.chdir(tmp_path / 'queue')
    qq = QueueClient('bin/filter')
    assert qq.spawn_error is None
    qq.put(b'Subject: x\n\nbody\n')
    qq.from_(b'a@b.example')
    qq.to(b'c@d.example')
    assert qq.close() == ''
    assert fakeqq.mess == b'Subject: x\n\nbody\n'
    assert fakeqq.cwd.rstrip(b'\n') == os.fsencode(str(home))


@pytest.mark.parametrize('given, want', [
    ({}, None),                                 # coerced: taken back
    ({'LC_CTYPE': 'C.UTF-8'}, 'C.UTF-8'),       # the caller's own: kept
    ({'LC_CTYPE': 'POSIX'}, 'POSIX'),           # coerced too: put back
])
def test_programs_pass_on_no_lc_ctype_of_the_interpreters(home, tmp_path, given, want):
    """Started in the C locale (qmail-start under "env -"), CPython sets
    LC_CTYPE=C.UTF-8, which reached every program a .qmail file runs."""
    import subprocess
    env = {'UFLINE': 'From x\n', 'RPLINE': 'Return-Path: <x>\n',
           'DTLINE': 'Delivered-To: y\n', 'PATH': '/usr/bin:/bin'}
    env.update(given)
    r = subprocess.run([os.path.join(str(home), 'bin', 'preline'), '/usr/bin/env'],
                       input=b'body\n', capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    got = [line.split('=', 1)[1] for line in lines if line.startswith('LC_CTYPE=')]
    assert got == ([] if want is None else [want]), lines
    assert 'PATH=/usr/bin:/bin' in lines


@pytest.mark.parametrize('argv, want', [
    (['prog'], (True, 30, ['prog'])),
    (['-R', 'prog', '-r'], (False, 30, ['prog', '-r'])),
    (['-Rt5', 'prog'], (False, 5, ['prog'])),
    (['-t', '7', '-r', '--', '-prog'], (True, 7, ['-prog'])),
    (['-tx', 'prog'], (True, 0, ['prog'])),             # scan_ulong: 0
    (['-R'], None), (['-t'], None), ([], None),
    (['-x', 'prog'], (True, 30, ['prog'])),             # said, then ignored (sgetopt)
])
def test_tcp_env_arguments(argv, want):
    from qmail import tcp_env
    assert tcp_env.parse_args(argv) == want


@pytest.mark.parametrize('answer, want', [
    (b'6193 , 23 : USERID : UNIX : stjohns\r\n', b'stjohns'),
    (b'6193, 23 : USERID : UNIX,US-ASCII : joe smith\r\nmore', b'joesmith'),
    (b'6195 , 23 : ERROR : NO-USER\r\n', b''),
    (b'1,2:USERID:UNIX:joe\0evil\r\n', b'joe'),     # C's string ends there
    (b'1,2:USERID:UNIX:' + b'x' * 2000 + b'\r\n', b'x' * 998),
])
def test_tcp_env_remoteinfo(answer, want):
    from qmail import tcp_env
    assert tcp_env.remoteinfo_of(answer) == want


@pytest.mark.parametrize('program, args, stdin', [
    ('qmail-fsck', [], b''),
    ('qmail-analog', ['overall'], b'@400000006553f10a00000000 status: local 0/10 remote 0/20\n'),
    ('qmail-tcpto', [], b''),
    ('qmail-qread', [], b''),
    ('qmail-qstat', [], b''),
    ('qmail-showctl', [], b''),
    ('sendmail', ['-bp'], b''),
])
def test_a_report_that_cannot_be_written_is_111_and_one_line(home, program, args, stdin):
    """stdout a full disk: one line on fd 2 and exit 111, as the docstrings
    say, not CPython's 'Exception ignored' (or two tracebacks) and 120."""
    import subprocess
    with something_to_report(home, program), open('/dev/full', 'wb') as full:
        r = subprocess.run([os.path.join(str(home), 'bin', program)] + args,
                           input=stdin, stdout=full, stderr=subprocess.PIPE,
                           env={'PATH': '/usr/bin:/bin'}, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 111, (r.returncode, err)
    assert 'Traceback' not in err and 'Exception ignored' not in err, err
    assert err.count('\n') == 1 and 'fatal' in err, err


@contextlib.contextmanager
def something_to_report(home, program):
    """So that program has a line to write: a message in todo/ for
    qmail-qread and sendmail -bp (no qmail-send runs on this home), a
    record in qmail-tcpto's table (cleared after)."""
    import subprocess
    from qmail.lib import tcpto
    if program in ('qmail-qread', 'sendmail'):
        r = subprocess.run([os.path.join(str(home), 'bin', 'qmail-inject'), '-fa@b.example',
                            'x@y.example'], input=b'Subject: q\n\nq\n',
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
    if program != 'qmail-tcpto':
        yield
        return
    table = tcpto.path(str(home))
    with open(table, 'rb') as f:
        before = f.read()
    place = tcpto.update(tcpto.read_table(table), tcpto.packed('192.0.2.1'),
                         True, int(time.time()), False)
    with open(table, 'r+b') as f:
        f.seek(place[0])
        f.write(place[1])
    try:
        yield
    finally:
        # As it was, size too: the home is the session's (test_tree
        # checks the table's size).
        with open(table, 'r+b') as f:
            f.write(before)
            f.truncate()


@pytest.mark.parametrize('program, args', [
    ('qmail-qread', []), ('qmail-qstat', []), ('qmail-showctl', []), ('sendmail', ['-bp']),
    ('qmail-fsck', []), ('qmail-tcpto', []), ('qmail-analog', ['overall']), ('qmail-pw2u', []),
])
def test_a_report_with_stdout_closed_is_111_and_one_line(home, program, args):
    """fd 1 closed (CPython's sys.stdout is then None): one line on fd 2
    and 111, not "internal bug (AttributeError)"."""
    import pwd
    import subprocess
    alias = pwd.getpwnam('alias')
    # The alias user's home as this home has it (passwd's, /var/qmail/alias,
    # is not there on a machine that never ran make run).
    stdin = {'qmail-analog': b'@400000006553f10a00000000 status: local 0/10 remote 0/20\n',
             'qmail-pw2u': b'alias:x:%d:%d::%s/alias:/bin/false\n'
                           % (alias.pw_uid, alias.pw_gid, os.fsencode(str(home)))}.get(program, b'')
    with something_to_report(home, program):
        r = subprocess.run([os.path.join(str(home), 'bin', program)] + args,
                           input=stdin, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, env={'PATH': '/usr/bin:/bin'}, timeout=60,
                           preexec_fn=lambda: os.close(1))
    err = r.stderr.decode()
    assert r.returncode == 111, (r.returncode, err)
    assert err.count('\n') == 1 and 'unable to write output' in err, err


def test_a_report_into_a_pipe_closed_early_ends_quietly(home):
    """qmail-showctl | head -1: the reader gone is no failure."""
    import subprocess
    r = subprocess.run('%s | head -1 >/dev/null; echo "${PIPESTATUS[0]}"'
                       % os.path.join(str(home), 'bin', 'qmail-showctl'),
                       shell=True, executable='/bin/bash', capture_output=True,
                       env={'PATH': '/usr/bin:/bin'}, timeout=60)
    assert r.stdout.strip() == b'0' and r.stderr == b'', (r.stdout, r.stderr)


def test_svscan_start_keeps_the_admins_own_services(tmp_path):
    """qmail-svscan start removed every link in HOME/service it did not
    make itself, an admin's qmail-qmtpd service among them."""
    from qmail import svscan
    home = str(tmp_path)
    for name in ('qmail-send', 'qmail-smtpd', 'qmail-pop3d'):
        os.makedirs(os.path.join(home, 'supervise', name))
    os.makedirs(tmp_path / 'elsewhere' / 'qmail-qmtpd')
    os.makedirs(os.path.join(home, 'supervise', 'qmail-qmqpd'))   # the admin's, beside ours
    svdir = svscan.link_services(home, ['qmail-send', 'qmail-smtpd', 'qmail-pop3d'])
    os.symlink(str(tmp_path / 'elsewhere' / 'qmail-qmtpd'), os.path.join(svdir, 'qmail-qmtpd'))
    os.symlink(os.path.join(home, 'supervise', 'qmail-qmqpd'), os.path.join(svdir, 'qmail-qmqpd'))
    svscan.link_services(home, ['qmail-send', 'qmail-smtpd'])      # pop3d's checker gone
    assert sorted(os.listdir(svdir)) == ['qmail-qmqpd', 'qmail-qmtpd', 'qmail-send',
                                         'qmail-smtpd']


def test_svscan_runs_the_optional_services_once_their_checker_is_named(tmp_path):
    """pop3checker runs qmail-pop3d, submissionchecker qmail-submission
    and qmail-smtps; an empty file started them with no checker (POP3's
    every login a usage error, mail clients' SMTP without AUTH)."""
    from qmail import svscan
    home = str(tmp_path)
    for name in svscan.INSTALLED:
        os.makedirs(os.path.join(home, 'supervise', name))
    os.makedirs(os.path.join(home, 'control'))
    assert svscan.services(home) == ['qmail-send', 'qmail-smtpd']
    for flag in ('pop3checker', 'submissionchecker'):
        open(os.path.join(home, 'control', flag), 'w').close()
    assert svscan.services(home) == ['qmail-send', 'qmail-smtpd']
    time.sleep(0.01)
    with open(os.path.join(home, 'control', 'submissionchecker'), 'w') as f:
        f.write('/var/qmail/bin/checkpassword\n')
    os.utime(os.path.join(home, 'control', 'submissionchecker'), (1, 1))  # (a new stamp)
    assert svscan.services(home) == ['qmail-send', 'qmail-smtpd', 'qmail-submission',
                                     'qmail-smtps']


def test_svscan_reads_only_a_regular_log_file(tmp_path):
    """log/<name>/ is qmaill's: a link there to a file of root's had its
    last line printed by the start (run as root), a FIFO hung it."""
    from qmail import svscan
    log = tmp_path / 'log' / 'qmail-send'
    log.mkdir(parents=True)
    (log / 'current').write_bytes(b'@400000000000000000000000 first\n@4000000000000000'
                                  b'00000000 last words\n')
    assert svscan.last_log_line(str(tmp_path), 'qmail-send') == 'last words'
    secret = tmp_path / 'secret'
    secret.write_bytes(b'ROOT SECRET\n')
    (log / 'current').unlink()
    os.symlink(str(secret), str(log / 'current'))
    assert svscan.last_log_line(str(tmp_path), 'qmail-send') == ''
    (log / 'current').unlink()
    os.link(str(secret), str(log / 'current'))     # where the kernel allows it
    assert svscan.last_log_line(str(tmp_path), 'qmail-send') == ''
    (log / 'current').unlink()
    os.mkfifo(str(log / 'current'))
    assert svscan.last_log_line(str(tmp_path), 'qmail-send') == ''


def test_install_help_and_status_of_nothing(tmp_path, capsys):
    from qmail import install
    assert install.main(['--help']) == 0          # help asked for: no usage error
    assert install.main(['--bogus']) == 100
    assert install.main(['--status', '--home', str(tmp_path)]) == 111
    assert 'is not installed' in capsys.readouterr().err


@pytest.mark.parametrize('ignored', [True, False])
def test_svscan_start_leaves_an_ignored_hangup_ignored(tmp_path, ignored):
    """HUP stops make run's foreground (its terminal closed), but one run
    under nohup, HUP ignored, must stay up at logout."""
    import subprocess
    import sys
    script = tmp_path / 'fg.py'
    script.write_text('''
import os, signal, subprocess, sys
sys.path.insert(0, %(root)r)
from qmail import svscan
os.makedirs(%(svc)r, exist_ok=True)
svscan.running_here = lambda h: None
svscan.svc_dirs = lambda h: []
svscan.link_services = lambda h, n: %(svc)r
svscan.intro = lambda h: 'started\\n'
svscan.stop_services = lambda h: []
real = subprocess.Popen
subprocess.Popen = lambda args, **kw: real(['sleep', '600'], **kw)
sys.exit(svscan.start(%(home)r))
''' % {'root': os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
       'svc': str(tmp_path / 'service'), 'home': str(tmp_path)})
    import signal as sig
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            preexec_fn=(lambda: sig.signal(sig.SIGHUP, sig.SIG_IGN))
                            if ignored else None)
    try:
        import select
        assert select.select([proc.stdout], [], [], 30)[0], 'no start'
        assert proc.stdout.readline() == b'started\n'
        proc.send_signal(sig.SIGHUP)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        assert (proc.poll() is None) == ignored
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert select.select([proc.stdout], [], [], 30)[0]
        assert b'stopped.' in proc.stdout.read1(65536)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_closing_words_name_the_home_for_make(tmp_path):
    """The Makefile's targets act on QMAIL_HOME, /var/qmail by default:
    another home's closing words say make run/stop QMAIL_HOME=<home>,
    where plain make stop would have stopped /var/qmail's."""
    from qmail import install, svscan
    (tmp_path / 'control').mkdir()
    (tmp_path / 'control' / 'me').write_text('mx.example\n')
    home = str(tmp_path)
    assert 'make run QMAIL_HOME=%s (' % home in install.status_text(home)
    assert 'make stop QMAIL_HOME=%s.' % home in install.status_text(home)
    assert 'Ctrl-C or make stop QMAIL_HOME=%s stops' % home in svscan.intro(home)
    assert svscan.make_cmd('stop', '/var/qmail') == 'make stop'


def test_closing_words_say_each_user_needs_the_maildir(tmp_path):
    """With a maildir in each home as the default delivery (make run's
    ./Maildir/), the closing words say each user needs one, and how to
    make it: qmail makes none, and a user's mail waited in the queue
    ("Unable to chdir to maildir") with nothing said at the start."""
    from qmail import svscan
    (tmp_path / 'control').mkdir()
    home = str(tmp_path)
    assert ('%s/bin/maildirmake ~/Maildir as the user, and /etc/skel/Maildir' % home
            in svscan.intro(home))
    (tmp_path / 'control' / 'defaultdelivery').write_text('./Mail.d/\n')
    assert 'goes to ~/Mail.d/, which each user needs' in svscan.intro(home)
    for line in ('./Mailbox\n', '|/usr/bin/procmail\n', '/var/spool/maildirs/x/\n'):
        (tmp_path / 'control' / 'defaultdelivery').write_text(line)
        assert 'maildirmake' not in svscan.intro(home), line


def test_svscan_reads_svstat_per_service_directory(monkeypatch):
    """Each service's state from svstat's line for its directory (a
    path may hold ": "); up with a pid, else None: down, want down,
    supervise not running, unable to open."""
    import subprocess
    from qmail import svscan
    dirs = ['/h: x/service/qmail-send', '/h: x/service/qmail-smtpd',
            '/h: x/service/qmail-pop3d', '/h: x/service/other']
    text = ('/h: x/service/qmail-send: up (pid 41) 3 seconds\n'
            '/h: x/service/qmail-smtpd: up (pid 42) 0 seconds, want down\n'
            '/h: x/service/qmail-pop3d: down 2 seconds, normally up\n'
            '/h: x/service/other: unable to open supervise/ok: file does not exist\n')
    monkeypatch.setattr(svscan.subprocess, 'run', lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout=text, stderr=''))
    assert svscan.service_pids(dirs) == {dirs[0]: 41, dirs[1]: 42, dirs[2]: None, dirs[3]: None}
