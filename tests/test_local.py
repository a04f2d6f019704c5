"""Tests for qmail-local (qmail/local.py, qmail/local_deliver.py).

The pure parts are tables.  Deliveries run main() in a forked child
whose fd 0 is the message file and fd 1 and 2 the report file, as
qmail-lspawn runs it, in a home directory under tmp_path.
"""

import os
import re
import stat
import sys
import time

import pytest

from qmail import local
from qmail import local_deliver as ld
from qmail.lib import auto

USER = b'joe'
HOST = b'example.com'
SENDER = b'god@heaven.af.mil'
MESSAGE = b'From: God <god@heaven.af.mil>\nSubject: hi\n\nHow is it going?\n'
WAIT = 10          # seconds any one delivery may take


# ---- pure parts -------------------------------------------------------------

I = local.Instruction
X_BIT = b'Uh-oh: .qmail has file delivery but has x bit set. (#4.7.0)'
X_BIT_PROG = b'Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)'
BLANK = b'Uh-oh: first line of .qmail file is blank. (#4.2.1)'


@pytest.mark.parametrize('cmds, forwardonly, want', [
    (b'./Mailbox\n', False, [I('mbox', b'./Mailbox')]),
    (b'./Maildir/', False, [I('maildir', b'./Maildir/')]),
    (b'/home/djb/Mailbox.sos \t\n', False,
     [I('mbox', b'/home/djb/Mailbox.sos')]),
    (b'|preline /usr/ucb/vacation djb\n', False,
     [I('program', b'preline /usr/ucb/vacation djb')]),
    (b'&me@new.job.com\n', False, [I('forward', b'me@new.job.com')]),
    (b'me@new.job.com\n', False, [I('forward', b'me@new.job.com')]),
    (b'# comment\n\n&a@b\n\n./Maildir/\n', False,
     [I('forward', b'a@b'), I('maildir', b'./Maildir/')]),
    (b'\n&a@b\n', False, [I('defer', BLANK)]),
    (b' \n', False, [I('defer', BLANK)]),
    (b'', False, [I('defer', BLANK)]),
    (b'&a@b\n./Mailbox\n', True, [I('forward', b'a@b'), I('defer', X_BIT)]),
    (b'|prog\n', True, [I('defer', X_BIT_PROG)]),
    (b'./Mailbox\n+list\n&a@b\n|prog\n', False,
     [I('mbox', b'./Mailbox'), I('forward', b'a@b'), I('defer', X_BIT_PROG)]),
    (b'+other\n|prog\n', False, [I('program', b'prog')]),
    (b'./Maildir/\n./Mailbox\n|a\n|b\n', False,
     [I('maildir', b'./Maildir/'), I('mbox', b'./Mailbox'),
      I('program', b'a'), I('program', b'b')]),
    (b'a@b\0junk\n', False, [I('forward', b'a@b')]),
    # qmail-local.c: the line's last byte says maildir or mbox, the C
    # string is the path; trailing blanks are stripped from the line
    (b'./mb/\0junk\n', False, [I('mbox', b'./mb/')]),
    (b'./M2\0/\n', False, [I('maildir', b'./M2')]),
    (b'./mb \0x \n', False, [I('mbox', b'./mb ')]),
    (b'\0x\n', False, [I('defer', BLANK)]),
    (b'+list\0x\n|p\n', False, [I('defer', X_BIT_PROG)]),
    (b'&\n', False, [I('forward', b'')]),
])
def test_plan(cmds, forwardonly, want):
    got = local.plan(cmds, forwardonly)
    assert got == want, 'plan(%r): got %r, want %r' % (cmds, got, want)


@pytest.mark.parametrize('dash, ext, want', [
    (b'', b'', [(b'.qmail', None), (b'.qmaildefault', b'')]),
    (b'-', b'', [(b'.qmail-', None), (b'.qmail-default', b'')]),
    (b'-', b'a', [(b'.qmail-a', None), (b'.qmail-default', b'a')]),
    (b'-', b'a-', [(b'.qmail-a-', None), (b'.qmail-a-default', b''),
                   (b'.qmail-default', b'a-')]),
    (b'-', b'a-b', [(b'.qmail-a-b', None), (b'.qmail-a-default', b'b'),
                    (b'.qmail-default', b'a-b')]),
    (b'-', b'a-b-c', [(b'.qmail-a-b-c', None),
                      (b'.qmail-a-b-default', b'c'),
                      (b'.qmail-a-default', b'b-c'),
                      (b'.qmail-default', b'a-b-c')]),
    (b'-', b'Foo.Bar-X', [(b'.qmail-foo:bar-x', None),
                          (b'.qmail-foo:bar-default', b'X'),
                          (b'.qmail-default', b'Foo.Bar-X')]),
    (b'-', b'list-Default', [(b'.qmail-list-default', b'Default'),
                             (b'.qmail-list-default', b'Default'),
                             (b'.qmail-default', b'list-Default')]),
])
def test_dotqmail_candidates(dash, ext, want):
    got = local.dotqmail_candidates(dash, ext)
    assert got == want, 'candidates(%r, %r): got %r, want %r' % (
        dash, ext, got, want)


@pytest.mark.parametrize('ext, existing, want', [
    (b'foo-bar', {b'.qmail-foo-bar', b'.qmail-default'},
     (b'.qmail-foo-bar', None)),
    (b'foo-bar', {b'.qmail-foo-default', b'.qmail-default'},
     (b'.qmail-foo-default', b'bar')),
    (b'foo-bar', {b'.qmail-default'}, (b'.qmail-default', b'foo-bar')),
    (b'foo-bar', {b'.qmail-foo', b'.qmail'}, (None, None)),
    (b'FOO-Bar', {b'.qmail-foo-default'}, (b'.qmail-foo-default', b'Bar')),
    (b'a.b', {b'.qmail-a:b'}, (b'.qmail-a:b', None)),
    (b'a.b', {b'.qmail-a.b'}, (None, None)),
])
def test_find_dotqmail(ext, existing, want):
    got = local.find_dotqmail(b'-', ext, existing)
    assert got == want, 'find(%r in %r): got %r, want %r' % (
        ext, existing, got, want)


@pytest.mark.parametrize('sender, want', [
    (b'', b'Return-Path: <>\n'),
    (b'god@heaven.af.mil', b'Return-Path: <god@heaven.af.mil>\n'),
    (b'a b@c', b'Return-Path: <"a b"@c>\n'),
    (b'a"b@c', b'Return-Path: <"a\\"b"@c>\n'),
    (b'.a@c', b'Return-Path: <".a"@c>\n'),
    (b'a..b@c', b'Return-Path: <"a..b"@c>\n'),
    (b'@c', b'Return-Path: <""@c>\n'),
    (b'x@y@c', b'Return-Path: <"x@y"@c>\n'),
    (b'#@[]', b'Return-Path: <#@[]>\n'),
    (b'nodomain', b'Return-Path: <nodomain>\n'),
    (b'a\nb@c', b'Return-Path: <"a\\_b"@c>\n'),
])
def test_rpline(sender, want):
    got = local.make_rpline(sender)
    assert got == want, 'rpline(%r): got %r, want %r' % (sender, got, want)


@pytest.mark.parametrize('loc, host, want', [
    (b'joe', b'example.com', b'Delivered-To: joe@example.com\n'),
    (b'example.com-joe', b'example.com',
     b'Delivered-To: example.com-joe@example.com\n'),
    (b'a\nb', b'c', b'Delivered-To: a_b@c\n'),
])
def test_dtline(loc, host, want):
    got = local.make_dtline(loc, host)
    assert got == want, 'dtline: got %r, want %r' % (got, want)


@pytest.mark.parametrize('sender, now, want', [
    (b'god@heaven.af.mil', 820631134,
     b'From god@heaven.af.mil Wed Jan 03 01:05:34 1996\n'),
    (b'', 0, b'From MAILER-DAEMON Thu Jan 01 00:00:00 1970\n'),
    (b'a b\tc\nd', 1000000000, b'From a-b-c-d Sun Sep 09 01:46:40 2001\n'),
])
def test_ufline(sender, now, want):
    got = local.make_ufline(sender, now)
    assert got == want, 'ufline: got %r, want %r' % (got, want)


@pytest.mark.parametrize('host, want', [
    (b'a.b.c.d', [b'a.b.c', b'a.b', b'a']),
    (b'mail.example.com', [b'mail.example', b'mail', b'mail']),
    (b'localhost', [b'localhost'] * 3),
    (b'', [b''] * 3),
])
def test_host_parts(host, want):
    got = local.host_parts(host)
    assert got == want, 'host_parts(%r): got %r, want %r' % (host, got, want)


@pytest.mark.parametrize('ext, want', [
    (b'a-b-c-d', [b'b-c-d', b'c-d', b'd']),
    (b'a-b', [b'b', b'', b'']),
    (b'abc', [b'', b'', b'']),
    (b'', [b'', b'', b'']),
    (b'-x', [b'x', b'', b'']),
])
def test_ext_parts(ext, want):
    got = local.ext_parts(ext)
    assert got == want, 'ext_parts(%r): got %r, want %r' % (ext, got, want)


@pytest.mark.parametrize('sender, owner, ownerdefault, want', [
    (b'djb@x', False, False, b'djb@x'),
    (b'djb@x', True, False, b'sos-owner@lists.example'),
    (b'djb@x', True, True, b'sos-owner-@lists.example-@[]'),
    (b'', True, True, b''),
    (b'#@[]', True, False, b'#@[]'),
])
def test_newsender(sender, owner, ownerdefault, want):
    got = local.newsender(sender, b'sos', b'lists.example', owner,
                          ownerdefault)
    assert got == want, 'newsender: got %r, want %r' % (got, want)


@pytest.mark.parametrize('argv, want', [
    (['u', '/h', 'l', '', '', 'd', 's', './Mailbox'],
     (True, [b'u', b'/h', b'l', b'', b'', b'd', b's', b'./Mailbox'])),
    (['-n', 'u', '/h', 'l', '-', 'e', 'd', 's', 'x'],
     (False, [b'u', b'/h', b'l', b'-', b'e', b'd', b's', b'x'])),
    (['-nN', '--', 'u', '/h', 'l', '-', 'e', 'd', 's', 'x'],
     (True, [b'u', b'/h', b'l', b'-', b'e', b'd', b's', b'x'])),
    (['--', '-u', '/h', 'l', '-', 'e', 'd', 's', 'x'],
     (True, [b'-u', b'/h', b'l', b'-', b'e', b'd', b's', b'x'])),
    (['u', 'h', 'l', '', '', 'd', 's', 'x'], None),
    (['u', '/h', 'l', '', '', 'd', 's'], None),
    (['u', '/h', 'l', '', '', 'd', 's', 'x', 'y'], None),
])
def test_parse_args(argv, want):
    got = local.parse_args(argv)
    assert got == want, 'parse_args(%r): got %r, want %r' % (argv, got, want)


def test_parse_args_names_an_unknown_option():
    with pytest.raises(local.IllegalOption) as info:
        local.parse_args(['-nx', 'u', '/h', 'l', '', '', 'd', 's', 'x'])
    assert info.value.args == (b'x',)


@pytest.mark.parametrize('code, want', [
    (0, 0), (99, 99), (100, 100), (111, 111), (64, 100), (65, 100),
    (70, 100), (76, 100), (77, 100), (78, 100), (112, 100), (1, 111),
    (2, 111), (75, 111), (126, 111), (127, 111),
])
def test_program_outcome(code, want):
    got = ld.program_outcome(code)
    assert got == want, 'exit %d: got %d, want %d' % (code, got, want)


def pieces(data, size=65536):
    """data cut as readline(size) would cut it."""
    out = []
    for line in data.splitlines(keepends=True):
        while len(line) > size:
            out.append(line[:size])
            line = line[size:]
        out.append(line)
    return out


@pytest.mark.parametrize('message, want', [
    (b'a\n', b'a\n\n'),
    (b'a', b'a\n\n'),
    (b'', b'\n'),
    (b'From x\nFrom me\n', b'>From x\n>From me\n\n'),
    (b'Subject: x\n\nFrom here\n>From there\n>>From  x\n',
     b'Subject: x\n\n>From here\n>>From there\n>>>From  x\n\n'),
    (b'From: header\nFromage\n From x\n>From\n',
     b'From: header\nFromage\n From x\n>From\n\n'),
    (b'x\nFrom partial', b'x\n>From partial\n\n'),
])
def test_mbox_quote(message, want):
    got = b''.join(ld.mbox_quote(pieces(message)))
    assert got == want, 'quote(%r): got %r, want %r' % (message, got, want)


def test_mbox_quote_long_line():
    # A line cut into pieces is quoted once, at its start only.
    message = b'From ' + b'x' * 10 + b'From \n'
    got = b''.join(ld.mbox_quote(pieces(message, 5)))
    want = b'>' + message + b'\n'
    assert got == want, 'got %r, want %r' % (got, want)


DT = b'Delivered-To: joe@example.com\n'


@pytest.mark.parametrize('message, want', [
    (DT + b'\nbody\n', True),
    (b'Received: x\n' + DT + b'\nbody\n', True),
    (b'Received: x\n\n' + DT, False),
    (b'Delivered-To: JOE@example.com\n\n', False),
    (b'Delivered-To: joe@example.com.\n\n', False),
    (b'delivered-to: joe@example.com\n\n', False),
    (b'Delivered-To: joe@example.com', False),
    (b'X: y\r\n' + DT, True),          # \r\n is no end of header to qmail
    (b'', False),
])
def test_looping(message, want):
    got = ld.looping(pieces(message), DT)
    assert got == want, 'looping(%r): got %r, want %r' % (message, got, want)


@pytest.mark.parametrize('when, pid, seq, host, want', [
    (1700000000.25, 42, 1, b'mx', b'1700000000.M250000P42Q1.mx'),
    (5.0, 1, 2, b'a/b:c', b'5.M0P1Q2.a\\057b\\072c'),
])
def test_maildir_unique(when, pid, seq, host, want):
    got = ld.maildir_unique(when, pid, seq, host)
    assert got == want, 'got %r, want %r' % (got, want)


@pytest.mark.parametrize('counts, qp, want', [
    ([0, 0, 1], 0, b'did 0+0+1\n'),
    ([2, 3, 1], 4242, b'did 2+3+1\nqp 4242\n'),
])
def test_count_report(counts, qp, want):
    got = local.count_report(counts, qp)
    assert got == want, 'got %r, want %r' % (got, want)


@pytest.mark.parametrize('err, want', [
    (2, b'file does not exist'), (13, b'access denied'),
    (28, b'out of disk space'), (1, b'permission denied'),
])
def test_error_str(err, want):
    got = ld.error_str(err)
    assert got == want, 'error_str(%d): got %r, want %r' % (err, got, want)


# ---- deliveries in a forked child ------------------------------------------

def wait_child(pid: int, why: str) -> int:
    """Child pid's wait status; killed, and the test failed with why, if
    it takes more than WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        got, wstat = os.waitpid(pid, os.WNOHANG)
        if got:
            return wstat
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(why)
        time.sleep(0.01)


class Home:
    """A recipient's home under tmp_path, and a way to deliver to it."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.path = tmp_path / 'home'
        self.path.mkdir(mode=0o755)
        os.chmod(self.path, 0o755)
        self.qmail = tmp_path / 'qmailhome'      # auto.QMAIL for forwards
        self.qmail.mkdir()

    def write(self, name, data, mode=0o644):
        p = self.path / name
        p.write_bytes(data)
        os.chmod(p, mode)
        return p

    def maildir(self, name='Maildir'):
        for sub in ('cur', 'new', 'tmp'):
            (self.path / name / sub).mkdir(parents=True)
        return self.path / name

    def run(self, *, message=MESSAGE, loc=USER, dash=b'', ext=b'',
            sender=SENDER, default=b'./Mailbox', opts=(), env=None,
            homedir=None, stdin=None, setup=None):
        """Run qmail-local; return (exit code, report)."""
        homedir = homedir or os.fsencode(self.path)
        argv = list(opts) + [USER, homedir, loc, dash, ext, HOST, sender,
                             default]
        mess = self.tmp / 'mess'
        mess.write_bytes(message)
        report = self.tmp / 'report'
        pid = os.fork()
        if pid == 0:
            code = 111
            try:
                fdm = stdin
                if fdm is None:
                    fdm = os.open(mess, os.O_RDONLY)
                fdr = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fdm, 0)
                os.dup2(fdr, 1)
                os.dup2(fdr, 2)
                os.environ.pop('QMAILQUEUE', None)
                os.environ.update(env or {})
                auto.QMAIL = str(self.qmail)
                if setup is not None:
                    setup()
                code = local.main(argv)
            finally:
                os._exit(code)
        wstat = wait_child(pid, 'qmail-local took more than %d seconds' % WAIT)
        assert os.WIFEXITED(wstat), 'qmail-local died: wstat %d' % wstat
        return os.WEXITSTATUS(wstat), report.read_bytes()


@pytest.fixture
def home(tmp_path):
    return Home(tmp_path)


def expect(got, want):
    assert got == want, 'got %r, want %r' % (got, want)


HEAD = (b'Return-Path: <god@heaven.af.mil>\n'
        b'Delivered-To: joe@example.com\n')


def test_maildir_delivery(home):
    md = home.maildir()
    expect(home.run(default=b'./Maildir/'), (0, b'did 1+0+0\n'))
    new = os.listdir(md / 'new')
    assert len(new) == 1, 'new/: got %r, want one file' % new
    expect(os.listdir(md / 'tmp'), [])
    expect((md / 'new' / new[0]).read_bytes(), HEAD + MESSAGE)
    mode = stat.S_IMODE(os.stat(md / 'new' / new[0]).st_mode)
    expect(oct(mode), oct(0o600))


def test_maildir_twice_in_one_qmail(home):
    md = home.maildir()
    home.write('.qmail', b'./Maildir/\n./Maildir/\n')
    expect(home.run(), (0, b'did 2+0+0\n'))
    new = sorted(os.listdir(md / 'new'))
    expect(len(new), 2)
    for name in new:
        expect((md / 'new' / name).read_bytes(), HEAD + MESSAGE)


@pytest.mark.parametrize('setup, want', [
    ('missing', b'Unable to chdir to maildir. (#4.2.1)\n'),
    ('notmp', b'Temporary error on maildir delivery. (#4.3.0)\n'),
])
def test_maildir_trouble(home, setup, want):
    if setup == 'notmp':
        (home.path / 'Maildir' / 'new').mkdir(parents=True)
    expect(home.run(default=b'./Maildir/'), (111, want))


def test_maildir_not_to_be_searched_is_unable_to_chdir(home):
    """qmail chdirs into the maildir: one that can be stat()ed but not
    searched (mode 600, or another user's behind a link) is "Unable to
    chdir to maildir", not a temporary error further on.  (Root searches
    anything: the child is told it may not.)"""
    home.maildir()

    def cannot_search():
        real = os.access
        os.access = lambda path, mode, **kw: False if (
            mode & os.X_OK and os.fsencode(path).rstrip(b'/').endswith(b'Maildir')) \
            else real(path, mode, **kw)
    expect(home.run(default=b'./Maildir/', setup=cannot_search),
           (111, b'Unable to chdir to maildir. (#4.2.1)\n'))


FROM_LINE = re.compile(rb'From god@heaven\.af\.mil '
                       rb'(Mon|Tue|Wed|Thu|Fri|Sat|Sun) '
                       rb'(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) '
                       rb'\d\d \d\d:\d\d:\d\d \d{4}\n\Z')


def test_mbox_delivery(home):
    message = (b'Subject: x\n\nFrom the start\n>From quoted\nFromage\n'
               b'last line')
    expect(home.run(message=message), (0, b'did 1+0+0\n'))
    data = (home.path / 'Mailbox').read_bytes()
    first, rest = data.split(b'\n', 1)
    assert FROM_LINE.match(first + b'\n'), 'From_ line: got %r' % first
    want = HEAD + (b'Subject: x\n\n>From the start\n>>From quoted\nFromage\n'
                   b'last line\n\n')
    expect(rest, want)
    mode = stat.S_IMODE(os.stat(home.path / 'Mailbox').st_mode)
    expect(oct(mode), oct(0o600))


def test_mbox_appends(home):
    old = b'From x Thu Jan 01 00:00:00 1970\nold\n\n'
    home.write('Mailbox', old, 0o600)
    expect(home.run(), (0, b'did 1+0+0\n'))
    expect(home.run(sender=b''), (0, b'did 1+0+0\n'))
    data = (home.path / 'Mailbox').read_bytes()
    assert data.startswith(old), 'old mail lost: got %r' % data[:80]
    parts = data[len(old):].split(b'\n', 1)
    assert FROM_LINE.match(parts[0] + b'\n'), 'From_: got %r' % parts[0]
    second = parts[1].index(b'From MAILER-DAEMON ')
    expect(parts[1][:second], HEAD + MESSAGE + b'\n')
    tail = parts[1][second:].split(b'\n', 1)[1]
    expect(tail, b'Return-Path: <>\nDelivered-To: joe@example.com\n'
           + MESSAGE + b'\n')


@pytest.mark.parametrize('tail, size, gap', [
    (b'', 0, b''), (b'\n', 1, b''), (b'\n\n', 40, b''),
    (b'x\n', 40, b'\n'), (b'AA', 40, b'\n\n'), (b'A', 1, b'\n\n'),
])
def test_mbox_gap(tail, size, gap):
    assert ld.mbox_gap(tail, size) == gap


@pytest.mark.parametrize('torn', [b'Subject: half\n\nAAAA', b'Subject: half\n\nAAAA\n'])
def test_mbox_after_half_a_message_starts_a_message_of_its_own(home, torn):
    """An attempt killed mid-write leaves half a message: the retry's
    From_ line went on after it, mid-line where the cut was, and mail
    readers saw one message, the complete copy hidden in the torn one."""
    old = b'From x Thu Jan 01 00:00:00 1970\nold\n\nFrom x Thu Jan 01 00:00:00 1970\n' + torn
    home.write('Mailbox', old, 0o600)
    expect(home.run(), (0, b'did 1+0+0\n'))
    data = (home.path / 'Mailbox').read_bytes()
    assert data.startswith(old + (b'\n' if torn.endswith(b'\n') else b'\n\n') + b'From god@'), data
    import mailbox
    assert len(mailbox.mbox(str(home.path / 'Mailbox'))) == 3


def test_mbox_name_is_synced_even_when_the_file_was_there(home, tmp_path):
    """An attempt killed after creating the mbox, before its fsync of the
    directory: the next delivery found a file there and synced only the
    file, so a power cut could take the whole mbox away."""
    home.write('Mailbox', b'From x Thu Jan 01 00:00:00 1970\nold\n\n', 0o600)
    synced = tmp_path / 'synced'
    expect(home.run(setup=recording_dir_syncs(synced)), (0, b'did 1+0+0\n'))
    assert synced.read_bytes() == b'.\n'


def test_mbox_close_failing_after_the_fsync_delivers_once(home):
    """close() failing once the message is written and synced (an
    EDQUOT some filesystems report there) was a deferral, and the retry
    appended the message again (found by a review of disk quotas); qmail's
    mailfile ignores close() too."""
    def setup():
        import errno
        from qmail import local_deliver
        real = os.close

        def close(fd):
            path = os.readlink('/proc/self/fd/%d' % fd)
            real(fd)
            if path.endswith('/Mailbox'):
                raise OSError(errno.EDQUOT, 'Disk quota exceeded')
        local_deliver.os = type('os', (), {k: getattr(os, k) for k in dir(os)
                                           if not k.startswith('__')})
        local_deliver.os.close = staticmethod(close)
    expect(home.run(setup=setup), (0, b'did 1+0+0\n'))
    assert (home.path / 'Mailbox').read_bytes().count(b'\nFrom god@') + \
        (home.path / 'Mailbox').read_bytes().startswith(b'From god@') == 1


def recording_dir_syncs(record):
    """A setup for Home.run: each directory qmail-local fsyncs is
    appended to the file record, a line each (the run is a child)."""
    def setup():
        from qmail.lib import durable
        real = durable.fsync_dir

        def fsync_dir(path):
            with open(record, 'ab') as f:
                f.write(os.fsencode(path) + b'\n')
            return real(path)
        durable.fsync_dir = fsync_dir
    return setup


def test_mbox_unopenable(home):
    (home.path / 'Mailbox').mkdir()
    code, report = home.run()
    expect((code, report),
           (111, b'Unable to open ./Mailbox: is a directory. (#4.2.1)\n'))


def test_mbox_write_error_truncates(home):
    old = b'From x Thu Jan 01 00:00:00 1970\nold\n\n'
    home.write('Mailbox', old, 0o600)

    def small_files():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(old) + 100,) * 2)

    code, report = home.run(message=MESSAGE * 10, setup=small_files)
    expect((code, report),
           (111, b'Unable to write ./Mailbox: file too big. (#4.3.0)\n'))
    expect((home.path / 'Mailbox').read_bytes(), old)


def test_mbox_locked(home):
    import fcntl
    box = home.write('Mailbox', b'', 0o600)

    def short_wait():
        ld.LOCK_TIMEOUT = 1

    with open(box, 'ab') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        code, report = home.run(setup=short_wait)
    expect((code, report), (111, b'File has been locked for 30 seconds '
                                 b'straight. (#4.3.0)\n'))
    expect(box.read_bytes(), b'')



def test_mbox_replaced_while_locked_gets_the_message(home):
    """maildir2mbox holds the old mbox locked while it writes a new one,
    then renames that over it: a delivery waiting for the lock used to
    append to the old file, gone with the rename, and report success."""
    import subprocess
    import threading
    box = home.write('Mailbox', b'', 0o600)
    # The lock is held by a process of its own: qmail-local's fork would
    # inherit a lock taken here, and wait for itself.
    locker = subprocess.Popen(
        [sys.executable, '-c', 'import fcntl, sys; f = open(sys.argv[1], "ab"); '
         'fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True); sys.stdin.read()', str(box)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)      # (qmail-local's fork keeps stdin open)
    try:
        assert locker.stdout.readline() == b'1\n'

        def replace():
            time.sleep(0.5)                     # qmail-local waits for the lock
            new = box.parent / 'Mailbox.tmp'
            new.write_bytes(b'From x Thu Jan 01 00:00:00 1970\nmoved\n\n')
            os.chmod(new, 0o600)
            os.rename(new, box)
            locker.kill()                       # its lock on the old file goes
        t = threading.Thread(target=replace)
        t.start()
        expect(home.run(), (0, b'did 1+0+0\n'))
        t.join(30)
    finally:
        locker.kill()
        locker.wait()
    data = box.read_bytes()
    assert data.startswith(b'From x Thu Jan 01 00:00:00 1970\nmoved\n\n') \
        and data.endswith(HEAD + MESSAGE + b'\n'), data

ENV_NAMES = (b'SENDER', b'NEWSENDER', b'RECIPIENT', b'USER', b'HOME',
             b'HOST', b'HOST2', b'HOST3', b'HOST4', b'LOCAL', b'EXT',
             b'EXT2', b'EXT3', b'EXT4', b'DEFAULT', b'DTLINE', b'RPLINE',
             b'UFLINE')


def read_env(path):
    env = {}
    for item in path.read_bytes().split(b'\0'):
        if item:
            k, v = item.split(b'=', 1)
            env[k] = v
    return env


def test_program_environment(home):
    out = home.tmp / 'env'
    copy = home.tmp / 'stdin'
    home.write('.qmail-list-default',
               b'|env -0 > %s; cat > %s; pwd >> %s\n'
               % (os.fsencode(out), os.fsencode(copy), os.fsencode(copy)))
    home.write('.qmail-list-a-b-owner', b'')
    code, report = home.run(loc=b'joe-list-A-b', dash=b'-',
                            ext=b'list-A-b', env={'DEFAULT': 'inherited'})
    expect((code, report), (0, b'did 0+0+1\n'))
    env = read_env(out)
    missing = [name for name in ENV_NAMES if name not in env]
    expect(missing, [])
    home_b = os.fsencode(home.path)
    want = {
        b'SENDER': SENDER,
        b'NEWSENDER': b'joe-list-A-b-owner@example.com',
        b'RECIPIENT': b'joe-list-A-b@example.com',
        b'USER': USER, b'HOME': home_b, b'HOST': HOST,
        b'HOST2': b'example', b'HOST3': b'example', b'HOST4': b'example',
        b'LOCAL': b'joe-list-A-b', b'EXT': b'list-A-b', b'EXT2': b'A-b',
        b'EXT3': b'b', b'EXT4': b'', b'DEFAULT': b'A-b',
        b'DTLINE': b'Delivered-To: joe-list-A-b@example.com\n',
        b'RPLINE': b'Return-Path: <god@heaven.af.mil>\n',
    }
    for name, value in want.items():
        expect((name, env.get(name)), (name, value))
    assert FROM_LINE.match(env[b'UFLINE']), 'UFLINE: got %r' % env[b'UFLINE']
    # The command gets the message as it is, in the home directory.
    expect(copy.read_bytes(), MESSAGE + home_b + b'\n')


def test_program_no_default(home):
    out = home.tmp / 'env'
    home.write('.qmail-x', b'|env -0 > %s\n' % os.fsencode(out))
    code, _ = home.run(dash=b'-', ext=b'x', sender=b'',
                       env={'DEFAULT': 'inherited'})
    expect(code, 0)
    env = read_env(out)
    expect(env.get(b'DEFAULT'), None)
    expect(env.get(b'NEWSENDER'), b'')


@pytest.mark.parametrize('status, want_code, ran_next', [
    (0, 0, True),
    (99, 0, False),
    (100, 100, False),
    (111, 111, False),
    (64, 100, False),
    (112, 100, False),
    (1, 111, False),
    (42, 111, False),
])
def test_program_exit_codes(home, status, want_code, ran_next):
    flag = home.tmp / 'next'
    home.write('.qmail', b'|echo said %d; exit %d\n|touch %s\n'
               % (status, status, os.fsencode(flag)))
    code, report = home.run()
    expect(code, want_code)
    expect(flag.exists(), ran_next)
    want = b'said %d\n' % status
    if want_code == 0:
        want += b'did 0+0+2\n' if ran_next else b'did 0+0+1\n'
    expect(report, want)


def test_program_crash(home):
    home.write('.qmail', b'|kill -9 $$\n')
    expect(home.run(), (111, b'Aack, child crashed. (#4.3.0)\n'))


def test_program_sees_start_of_message_each_time(home):
    copies = home.tmp / 'copies'
    home.write('.qmail', b'|head -c 5 >> %s\n|cat >> %s\n'
               % (os.fsencode(copies), os.fsencode(copies)))
    expect(home.run()[0], 0)
    expect(copies.read_bytes(), MESSAGE[:5] + MESSAGE)


def test_loop_detected(home):
    message = b'Delivered-To: joe@example.com\n' + MESSAGE
    expect(home.run(message=message),
           (100, b'This message is looping: it already has my Delivered-To '
                 b'line. (#5.4.6)\n'))
    assert not (home.path / 'Mailbox').exists(), 'delivered a loop'


def test_other_delivered_to_is_fine(home):
    message = b'Delivered-To: joe-x@example.com\n' + MESSAGE
    expect(home.run(message=message), (0, b'did 1+0+0\n'))


def fake_queue(home, status=0):
    """A QMAILQUEUE script saving its message, envelope and cwd."""
    script = home.tmp / 'fakeqq'
    out = home.tmp / 'qq'
    script.write_bytes(b'#!/bin/sh\ncat > %s.mess\ncat <&1 > %s.env\n'
                       b'pwd > %s.cwd\nexit %d\n'
                       % ((os.fsencode(out),) * 3 + (status,)))
    os.chmod(script, 0o755)
    return {'QMAILQUEUE': str(script)}, out


def qq_output(out):
    return (out.with_suffix('.mess').read_bytes(),
            out.with_suffix('.env').read_bytes())


def test_forward(home):
    env, out = fake_queue(home)
    home.write('.qmail', b'&me@new.job.com\nother@x.org\n')
    code, report = home.run(env=env)
    expect(code, 0)
    assert re.fullmatch(rb'did 0\+2\+0\nqp \d+\n', report), \
        'report: got %r' % report
    mess, envelope = qq_output(out)
    expect(mess, b'Delivered-To: joe@example.com\n' + MESSAGE)
    expect(envelope, b'F' + SENDER + b'\0Tme@new.job.com\0Tother@x.org\0\0')
    expect(out.with_suffix('.cwd').read_bytes(),
           os.fsencode(home.qmail) + b'\n')


@pytest.mark.parametrize('files, sender, want', [
    ((), SENDER, SENDER),
    (('.qmail-sos-owner',), SENDER, b'joe-sos-owner@example.com'),
    (('.qmail-sos-owner', '.qmail-sos-owner-default'), SENDER,
     b'joe-sos-owner-@example.com-@[]'),
    (('.qmail-sos-owner',), b'', b''),
    (('.qmail-sos-owner',), b'#@[]', b'#@[]'),
])
def test_forward_sender(home, files, sender, want):
    env, out = fake_queue(home)
    home.write('.qmail-sos', b'a@b.c\n')
    for name in files:
        home.write(name, b'&owner@b.c\n')
    code, _ = home.run(env=env, loc=b'joe-sos', dash=b'-', ext=b'sos',
                       sender=sender)
    expect(code, 0)
    expect(qq_output(out)[1], b'F' + want + b'\0Ta@b.c\0\0')


@pytest.mark.parametrize('status, want', [
    (31, (100, b'Unable to forward message: mail server permanently '
               b'rejected message (#5.3.0).\n')),
    (71, (111, b'Unable to forward message: mail server temporarily '
               b'rejected message (#4.3.0).\n')),
])
def test_forward_refused(home, status, want):
    env, _ = fake_queue(home, status)
    home.write('.qmail', b'a@b.c\n')
    expect(home.run(env=env), want)


def test_forward_refused_unread_in_a_worker(home):
    """A qmail-queue (a QMAILQUEUE filter) that refuses before reading a
    big message, in a delivery worker whose SIGPIPE is the default (a
    fresh process's, spawn.fresh_signals): the refusal is reported, as
    qmail-local.c does; the worker died of SIGPIPE, and a permanent
    refusal became a retry for the whole queue lifetime."""
    import signal
    script = home.tmp / 'refuse'
    script.write_bytes(b'#!/bin/sh\nexit 31\n')
    os.chmod(script, 0o755)
    home.write('.qmail', b'a@b.c\n')
    got = home.run(env={'QMAILQUEUE': str(script)}, message=MESSAGE * 40000,
                   setup=lambda: signal.signal(signal.SIGPIPE, signal.SIG_DFL))
    expect(got, (100, b'Unable to forward message: mail server permanently '
                      b'rejected message (#5.3.0).\n'))


def test_forward_without_qmail_home(home):
    env, out = fake_queue(home)
    home.write('.qmail', b'a@b.c\n')
    home.qmail.rmdir()
    expect(home.run(env=env),
           (111, b'Unable to forward message: '
                 b'qq trouble in home directory (#4.3.0).\n'))


def test_forward_after_99_but_not_after_failure(home):
    env, out = fake_queue(home)
    home.write('.qmail', b'a@b.c\n|exit 99\nlater@b.c\n')
    code, report = home.run(env=env)
    expect(code, 0)
    assert report.startswith(b'did 0+1+1\nqp '), 'report: got %r' % report
    expect(qq_output(out)[1], b'F' + SENDER + b'\0Ta@b.c\0\0')
    out.with_suffix('.env').unlink()
    home.write('.qmail', b'a@b.c\n|exit 111\n')
    expect(home.run(env=env), (111, b''))
    assert not out.with_suffix('.env').exists(), 'forwarded after a failure'


def test_forward_list_only(home):
    env, out = fake_queue(home)
    home.write('.qmail', b'a@b.c\n', 0o744)
    expect(home.run(env=env)[0], 0)
    home.write('.qmail', b'a@b.c\n./Mailbox\n', 0o744)
    expect(home.run(env=env), (111, X_BIT + b'\n'))


@pytest.mark.parametrize('mode, want', [
    (0o757, b'Uh-oh: home directory is writable. (#4.7.0)\n'),
    (0o1755, b'Home directory is sticky: user is editing his .qmail file. '
             b'(#4.2.1)\n'),
])
def test_home_deferred(home, mode, want):
    os.chmod(home.path, mode)
    expect(home.run(), (111, want))
    assert not (home.path / 'Mailbox').exists(), 'delivered anyway'


def test_home_missing(home):
    missing = os.fsencode(home.tmp / 'nohome')
    expect(home.run(homedir=missing),
           (111, b'Unable to switch to %s: file does not exist. (#4.3.0)\n'
                 % missing))


@pytest.mark.parametrize('name, mode, ext, want', [
    ('.qmail', 0o646, b'',
     (111, b'Uh-oh: .qmail file is writable. (#4.7.0)\n')),
    ('.qmail-foo-default', 0o666, b'foo-bar',
     (111, b'Uh-oh: .qmail file is writable. (#4.7.0)\n')),
    ('.qmail', 0o664, b'', (0, b'did 1+0+0\n')),
])
def test_dotqmail_writable(home, name, mode, ext, want):
    home.write(name, b'./Mailbox\n', mode)
    dash = b'-' if ext else b''
    loc = b'joe-' + ext if ext else USER
    expect(home.run(dash=dash, ext=ext, loc=loc), want)


def test_no_mailbox_by_that_name(home):
    home.write('.qmail-foo', b'./Mailbox\n')
    expect(home.run(loc=b'joe-bar', dash=b'-', ext=b'bar'),
           (100, b'Sorry, no mailbox here by that name. (#5.1.1)\n'))


def test_empty_dotqmail_means_default(home):
    md = home.maildir()
    home.write('.qmail-foo', b'')
    expect(home.run(loc=b'joe-foo', dash=b'-', ext=b'foo',
                    default=b'./Maildir/'), (0, b'did 1+0+0\n'))
    expect(len(os.listdir(md / 'new')), 1)


def test_default_delivery_lines(home):
    out = home.tmp / 'ran'
    default = b'./Mailbox\n|touch %s' % os.fsencode(out)
    expect(home.run(default=default), (0, b'did 1+0+1\n'))
    assert out.exists(), 'program line of defaultdelivery not run'


def test_show_instructions(home):
    home.write('.qmail', b'# hi\n./Maildir/\n./Mailbox\n|prog arg\n'
                         b'&a@b.c\nd@e.f\n')
    want = (b'maildir ./Maildir/\nmbox ./Mailbox\nprogram prog arg\n'
            b'forward a@b.c\nforward d@e.f\ndid 2+2+1\n')
    expect(home.run(opts=['-n']), (0, want))
    assert not (home.path / 'Mailbox').exists(), '-n delivered'


def test_show_sticky_warns(home):
    os.chmod(home.path, 0o1755)
    expect(home.run(opts=['-n']),
           (0, b'Warning: home directory is sticky.\nmbox ./Mailbox\n'
               b'did 1+0+0\n'))


def test_usage(home):
    code, report = home.run(opts=['-x'])
    expect(code, 100)
    # qmail's getopt names the unknown option before the usage line.
    assert report.startswith(b'qmail-local: illegal option -- x\nqmail-local: usage:'), \
        'got %r' % report


def test_unseekable_message(home):
    r, w = os.pipe()
    os.write(w, MESSAGE)
    os.close(w)
    code, report = home.run(stdin=r)
    os.close(r)
    expect((code, report), (111, b'Unable to rewind message. (#4.3.0)\n'))


@pytest.fixture
def open_home():
    """A Home others may reach (pytest's tmp_path is root's alone)."""
    import shutil
    import tempfile
    import pathlib
    if os.geteuid() != 0:
        pytest.skip('needs root')
    top = tempfile.mkdtemp(prefix='qmail-local-test.')
    os.chmod(top, 0o755)
    yield Home(pathlib.Path(top))
    shutil.rmtree(top, ignore_errors=True)


def as_nobody():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def journalled(monkeypatch, kind='xfs'):
    """The drop box's filesystem: one whose file fsync carries a new
    name (this machine's may be ext4 without a journal, which does not)."""
    from qmail.lib import durable
    monkeypatch.setattr(durable, 'mount_type', lambda dev: kind)


def test_maildir_drop_box(open_home, monkeypatch):
    """new/ and tmp/ writable and searchable only, cur/ private: maildir(5)
    delivery reads none of them, and qmail delivers there.  The fsync of
    new/ (which must open it) failed, so every attempt was deferred with
    the message already in new/, until it bounced."""
    journalled(monkeypatch)
    md = open_home.maildir('drop')
    os.chmod(md, 0o711)
    for sub, mode in (('tmp', 0o733), ('new', 0o733), ('cur', 0o700)):
        os.chmod(md / sub, mode)
    open_home.write('.qmail', b'./drop/\n')
    monkeypatch.setattr(ld, 'FROM_QUEUE', True)     # as from qmail-lspawn
    mess = open_home.write('queued', MESSAGE)
    fd = os.open(mess, os.O_RDONLY)
    try:
        for _ in range(2):          # the second finds the first, by name
            code, report = open_home.run(setup=as_nobody, stdin=fd)
            expect((code, report[:1]), (0, b'd'))
    finally:
        os.close(fd)
    new = os.listdir(md / 'new')
    assert len(new) == 1, new
    assert (md / 'new' / new[0]).read_bytes().endswith(MESSAGE)
    assert os.listdir(md / 'tmp') == []


@pytest.mark.parametrize('cur', ['file', 'loop'])
def test_a_maildir_whose_cur_is_no_directory_is_delivered_to(open_home, monkeypatch, cur):
    """qmail writes tmp/ and new/ only: a cur/ that is a file, or a link
    to itself, was an error of the exactly-once look there, and every
    attempt was deferred until the bounce."""
    md = open_home.maildir('odd')
    os.rmdir(md / 'cur')
    if cur == 'file':
        (md / 'cur').write_bytes(b'')
    else:
        os.symlink('cur', str(md / 'cur'))
    open_home.write('.qmail', b'./odd/\n')
    monkeypatch.setattr(ld, 'FROM_QUEUE', True)     # as from qmail-lspawn
    code, report = open_home.run()
    expect((code, report[:1]), (0, b'd'))
    assert len(os.listdir(md / 'new')) == 1


def test_mbox_in_a_directory_others_may_not_read(open_home, monkeypatch):
    """A spool directory of mode 1733: the mbox is made and appended to,
    as by qmail (its name's durability is the file's own fsync there)."""
    journalled(monkeypatch)
    spool = open_home.path / 'spool'
    spool.mkdir()
    os.chmod(spool, 0o1733)
    open_home.write('.qmail', b'./spool/Mbox\n')
    code, report = open_home.run(setup=as_nobody)
    expect((code, report[:1]), (0, b'd'))
    assert (spool / 'Mbox').read_bytes().startswith(b'From god@heaven.af.mil ')


def test_failures_and_warnings_go_to_fd_2_reports_to_fd_1(home, tmp_path):
    """As qmail's (strerr on fd 2, "did" and -n's listing on fd 1): run by
    hand, 2>/dev/null leaves the report alone; under qmail-lspawn both
    fds are one pipe."""
    import subprocess
    home.write('.qmail', b'./Mailbox\n')
    os.chmod(home.path, 0o1755)                     # sticky: being edited
    code = ('import sys; from qmail import local; sys.exit(local.main(sys.argv[1:]))')
    argv = [sys.executable, '-c', code] + [os.fsdecode(a) for a in (
        USER, os.fsencode(home.path), USER, b'', b'', HOST, SENDER, b'./Mailbox')]
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))}
    r = subprocess.run(argv[:3] + ['-n'] + argv[3:], input=MESSAGE,
                       capture_output=True, env=env, timeout=60)
    expect((r.returncode, r.stdout, r.stderr),
           (0, b'mbox ./Mailbox\ndid 1+0+0\n', b'Warning: home directory is sticky.\n'))
    r = subprocess.run(argv, input=MESSAGE, capture_output=True, env=env, timeout=60)
    expect((r.returncode, r.stdout, r.stderr), (111, b'', b'Home directory is sticky: '
                                                 b'user is editing his .qmail file. (#4.2.1)\n'))


@pytest.mark.parametrize('kind, journal', [('ext2', False), ('ext4', False)])
@pytest.mark.parametrize('mailbox', ['maildir', 'mbox'])
def test_drop_box_where_a_file_fsync_does_not_carry_its_name(open_home, monkeypatch,
                                                            kind, journal, mailbox):
    """On ext2, and ext4 without a journal (which syncs a file's directory
    only while the file is new, not after its link into new/), a file's
    fsync leaves its name to chance there: a syncfs of the filesystem
    (and the flush after it) makes it durable.  It was deferred at every
    attempt, until it bounced."""
    from qmail.lib import durable
    md = open_home.maildir('drop')
    for sub, mode in (('tmp', 0o733), ('new', 0o733), ('cur', 0o700)):
        os.chmod(md / sub, mode)
    spool = open_home.path / 'spool'
    spool.mkdir()
    os.chmod(spool, 0o1733)
    open_home.write('.qmail', b'./drop/\n' if mailbox == 'maildir' else b'./spool/Mbox\n')
    journalled(monkeypatch, kind)
    monkeypatch.setattr(durable, 'has_journal', lambda dev: journal)
    if not durable.load_writeback() or not durable._syncfs:
        pytest.skip('no syncfs that reports its errors (Linux before 5.17)')
    marks = open_home.path / 'synced'          # written by nobody's delivery
    marks.write_bytes(b'')
    os.chmod(marks, 0o666)
    real_sync_dev = durable._sync_dev

    def sync_dev(fd, dev):
        with open(marks, 'ab') as f:
            f.write(b'%d\n' % os.fstat(fd).st_ino)
        return real_sync_dev(fd, dev)
    monkeypatch.setattr(durable, '_sync_dev', sync_dev)
    code, report = open_home.run(setup=as_nobody)
    expect((code, report[:1]), (0, b'd'))
    if mailbox == 'maildir':
        files = [md / 'new' / n for n in os.listdir(md / 'new')]
        assert len(files) == 1 and files[0].read_bytes().endswith(MESSAGE)
    else:
        files = [spool / 'Mbox']
        assert files[0].read_bytes().startswith(b'From god@heaven.af.mil ')
    assert marks.read_bytes() == b'%d\n' % files[0].stat().st_ino, 'not synced by syncfs'


@pytest.mark.parametrize('kind', ['ext2', 'ext4'])
def test_drop_box_where_nothing_carries_its_name_is_deferred(open_home, monkeypatch, kind):
    """Without a syncfs to trust (a kernel before 5.17), nothing but the
    directory's fsync makes the name durable there: deferred."""
    from qmail.lib import durable
    md = open_home.maildir('drop')
    for sub, mode in (('tmp', 0o733), ('new', 0o733), ('cur', 0o700)):
        os.chmod(md / sub, mode)
    open_home.write('.qmail', b'./drop/\n')
    journalled(monkeypatch, kind)
    monkeypatch.setattr(durable, 'has_journal', lambda dev: False)
    monkeypatch.setattr(durable, 'load_writeback', lambda: False)
    monkeypatch.setattr(durable, '_syncfs', False)
    code, report = open_home.run(setup=as_nobody)
    expect((code, report), (111, b'Temporary error on maildir delivery. (#4.3.0)\n'))


def test_ext4_with_a_journal_carries_the_name(monkeypatch):
    from qmail.lib import durable
    monkeypatch.setattr(durable, 'mount_type', lambda dev: 'ext4')
    for journal in (True, False):
        monkeypatch.setattr(durable, 'has_journal', lambda dev: journal)
        with open(__file__, 'rb') as f:
            assert durable.file_fsync_carries_entry(f.fileno()) == journal


@pytest.mark.parametrize('owner', [65534, 0])
def test_mbox_delivery_leaves_the_access_time_alone(open_home, owner):
    """Reading the mbox's tail must not make its access time now: a
    reader that sees new mail by mtime > atime would miss the delivery.
    The owner's delivery keeps it (O_NOATIME); another user's (who may
    not ask that) still reads the tail: the old message, which lacks its
    closing empty line, gets one before the new From line."""
    open_home.write('.qmail', b'./Mbox\n')
    mbox = open_home.path / 'Mbox'
    old = b'From x Thu Jan 01 00:00:00 1970\nold\n'
    mbox.write_bytes(old)
    os.chown(mbox, owner, owner)
    os.chmod(mbox, 0o600 if owner else 0o666)
    then = time.time() - 3600
    os.utime(mbox, (then - 60, then))       # read since: relatime updates it
    code, report = open_home.run(setup=as_nobody)
    expect((code, report[:1]), (0, b'd'))
    st = os.stat(mbox)
    assert st.st_size > 40 and st.st_mtime > then + 1000
    assert mbox.read_bytes().startswith(old + b'\nFrom god@heaven.af.mil '), mbox.read_bytes()[:80]
    if owner:
        expect(st.st_atime, then - 60)
