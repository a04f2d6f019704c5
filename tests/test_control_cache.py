"""qmail.lib.control's cache: a control read again is the file's current
content whatever happened to it in between (edited in place twice in one
clock tick, replaced by rename, removed, made unreadable)."""

import errno
import os
import time

import pytest

from qmail.lib import control


def test_every_change_is_seen(tmp_path):
    path = str(tmp_path / 'databytes')
    assert control.readint(path) is None
    for value in (1, 2, 3):                  # rewrites faster than a clock tick
        with open(path, 'w') as f:
            f.write('%d\n' % value)
        assert control.readint(path) == value
    with open(path + '.new', 'w') as f:
        f.write('40\n')
    os.rename(path + '.new', path)
    assert control.readint(path) == 40
    os.unlink(path)
    assert control.readint(path) is None


def test_cached_value_is_a_copy_and_old_files_are_not_reread(tmp_path, monkeypatch):
    path = str(tmp_path / 'rcpthosts')
    with open(path, 'w') as f:
        f.write('a.example\n# c\n\nb.example\n')
    old = os.stat(path).st_mtime - 100
    os.utime(path, (old, old))
    monkeypatch.setattr(control, 'RACY', -1e9)   # ctime is now: trust it anyway
    got = control.readfile(path)
    assert got == [b'a.example', b'b.example']
    got.append(b'mutated')
    reads = []
    monkeypatch.setattr(control, '_read', lambda p: reads.append(p))
    assert control.readfile(path) == [b'a.example', b'b.example']
    assert reads == []                           # served from the cache


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads anything')
def test_unreadable_is_an_error(tmp_path):
    path = str(tmp_path / 'me')
    with open(path, 'w') as f:
        f.write('x\n')
    os.chmod(path, 0)
    with pytest.raises(OSError):
        control.readline(path)


def test_smtpd_config_reused_until_a_control_changes(tmp_path, monkeypatch):
    """A pool worker's qmail-smtpd reads its controls again only when one
    changed; each session gets its own copy to change."""
    from qmail import smtpd
    d = tmp_path / 'control'
    d.mkdir()
    (d / 'me').write_text('mx.example\n')
    (d / 'rcpthosts').write_text('a.example\n')
    monkeypatch.setattr(smtpd, '_last_config', None)
    reads = []
    real = smtpd.read_config
    monkeypatch.setattr(smtpd, 'read_config',
                        lambda ctl, env: reads.append(1) or real(ctl, env))
    ctl = control.Controls(str(d))
    smtpd.load_config(ctl, {})
    assert len(reads) == 1                  # files just written: racy, not kept
    smtpd.load_config(ctl, {})
    assert len(reads) == 2
    monkeypatch.setattr(control, 'RACY', -1e9)
    first = smtpd.load_config(ctl, {})
    second = smtpd.load_config(ctl, {})
    assert len(reads) == 3                  # the second from the first's
    assert second is not first and second.rcpthosts == frozenset([b'a.example'])
    first.ipme = frozenset([b'x'])
    assert smtpd.load_config(ctl, {}).ipme != first.ipme
    (d / 'rcpthosts').write_text('a.example\nb.example\n')
    assert b'b.example' in smtpd.load_config(ctl, {}).rcpthosts
    assert len(reads) == 4
    (d / 'databytes').write_text('1000\n')  # a file appearing counts too
    assert smtpd.load_config(ctl, {}).databytes == 1000
    # DATABYTES (tcprules', a session's own) reads nothing again: a worker
    # serving clients with and without it read every file each time
    assert smtpd.load_config(ctl, {b'DATABYTES': b'7'}).databytes == 7
    assert smtpd.load_config(ctl, {}).databytes == 1000
    assert len(reads) == 5


def test_settled_after_a_tick_where_times_have_fractions():
    """ext4's times have nanoseconds from a clock ticking in milliseconds:
    a file changed 0.2 s ago is settled; where times are whole seconds
    (the change may still share its second with the next), not yet."""
    import types
    now = 1_800_000_000.0

    def st(ctime_ns):
        return types.SimpleNamespace(st_ctime_ns=ctime_ns, st_ctime=ctime_ns / 1e9)
    fine = int((now - 0.2) * 1e9)
    assert fine % 1_000_000_000
    assert control.settled(st(fine), now)
    assert not control.settled(st(int((now - 0.05) * 1e9)), now)
    assert not control.settled(st(int(now - 1) * 1_000_000_000), now)
    assert control.settled(st(int(now - 3) * 1_000_000_000), now)


def test_stamps_look_for_missing_files_again_only_when_the_directory_changed(tmp_path, monkeypatch):
    d = tmp_path / 'control'
    d.mkdir()
    (d / 'me').write_text('mx.example\n')
    os.symlink(str(tmp_path / 'elsewhere'), str(d / 'rcpthosts'))     # dangling
    names = ('me', 'rcpthosts', 'badmailfrom', 'databytes')
    old = time.time() - 100
    os.utime(str(d), (old, old))    # a new entry below changes mtime for sure
    monkeypatch.setattr(control, 'RACY', -1e9)
    monkeypatch.setattr(control, '_missing', {})
    first = control.stamps(str(d), names)
    assert first[0] is not None and first[1:] == (None, None, None)
    looked = []
    real_stat = os.stat
    monkeypatch.setattr(control.os, 'stat', lambda p, *a, **k: looked.append(os.path.basename(p)) or real_stat(p, *a, **k))
    assert control.stamps(str(d), names) == first
    assert sorted(looked) == ['control', 'me', 'rcpthosts']   # not the missing ones
    (tmp_path / 'elsewhere').write_text('a.example\n')     # the link's target appears
    second = control.stamps(str(d), names)
    assert second[1] is not None and second != first
    (d / 'databytes').write_text('1000\n')                  # a new entry in the directory
    third = control.stamps(str(d), names)
    assert third[3] is not None and third != second


def test_smtpd_config_with_a_recipient_map_reused_until_map_source_or_routing_changes(
        tmp_path, monkeypatch):
    """With control/rcptcheck, a pool worker's sessions share the map
    read once (a map under cdb's READ_ALL_LIMIT is read whole: once per
    session was up to 16 MB a connection), while users/rcpt.cdb is the
    same file, its sources as stamped and the routing controls as read."""
    from qmail import smtpd
    from qmail.lib import rcptmap
    from test_rcptmap import ASSIGN, FakeWorld
    w = FakeWorld(str(tmp_path))
    source = os.path.join(w.qhome, 'users', 'cdb')
    w.install(stamp_paths=[source])
    ctl_dir = os.path.join(w.qhome, 'control')
    for name, text in (('me', 'mx.example.org\n'), ('locals', 'example.org\n'),
                       ('rcptcheck', '')):
        with open(os.path.join(ctl_dir, name), 'w') as f:
            f.write(text)
    monkeypatch.chdir(w.qhome)
    monkeypatch.setattr(control, 'RACY', -1e9)
    monkeypatch.setattr(smtpd, '_last_config', None)
    reads = []
    real = smtpd.read_config
    monkeypatch.setattr(smtpd, 'read_config',
                        lambda ctl, env: reads.append(1) or real(ctl, env))
    ctl = control.Controls(ctl_dir)

    def check(addr):
        return smtpd.load_config(ctl, {}).rcptmap.check(addr)
    assert check(b'nosuch@example.org') == rcptmap.REJECT
    assert check(b'nosuch@example.org') == rcptmap.REJECT
    assert len(reads) == 1
    w.write_assign(ASSIGN)                  # qmail-newu ran, qmail-newrcpt not
    assert check(b'nosuch@example.org') == rcptmap.UNKNOWN      # stale
    assert check(b'nosuch@example.org') == rcptmap.UNKNOWN
    assert len(reads) == 2                  # (a stale map stays so: kept)
    smtpd.retire()
    w.install(stamp_paths=[source])         # qmail-newrcpt: a new file
    assert check(b'nosuch@example.org') == rcptmap.REJECT
    assert len(reads) == 3
    # read again for a new map, the files the same: a qmail-listen worker
    # makes way for one that shares the listener's reading (it kept a
    # private copy of the whole Config till its 1000th session)
    assert smtpd.retire()
    assert check(b'nosuch@example.org') == rcptmap.REJECT
    assert not smtpd.retire()
    with open(os.path.join(ctl_dir, 'locals'), 'w') as f:
        f.write('other.example\n')          # the routing changed
    assert check(b'nosuch@example.org') == rcptmap.UNKNOWN      # not local now
    assert len(reads) == 4
    os.unlink(rcptmap.map_path(w.qhome))    # the map removed: off
    assert check(b'nosuch@other.example') == rcptmap.UNKNOWN
    assert smtpd.load_config(ctl, {}).rcptmap.state == 'off'
    assert len(reads) == 5


def test_parse_int_of_thousands_of_digits():
    """Python's int() refuses over 4300 digits: qmail-send did not start
    (or its HUP failed) on a control file that long."""
    assert control.parse_int(b'9' * 5000 + b'\n') == control.ULONG_HUGE
    assert control.parse_int(b'0042x\n') == 42
    assert control.parse_int(b'x\n') is None and control.parse_int(b'') is None


def _in_thread(fn, fifo):
    """fn() in a thread; what it returned or raised, or 'hung' (the
    thread is then let go by a writer opening the FIFO)."""
    import threading
    out = []

    def run():
        try:
            out.append(fn())
        except Exception as e:
            out.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        return 'hung'
    return out[0]


def test_a_fifo_reads_as_empty_not_hang(tmp_path):
    """qmail opens controls with O_NDELAY: a FIFO put in a control's place
    (nobody writing) is an empty file.  A plain open() waited for a
    writer: qmail-send, qmail-smtpd and qmail-inject hung for good."""
    from qmail.lib import cdb
    fifo = str(tmp_path / 'rcpthosts')
    os.mkfifo(fifo)
    assert _in_thread(lambda: control.readfile(fifo), fifo) == []
    assert _in_thread(lambda: control.readline(fifo), fifo) == b''
    got = _in_thread(lambda: cdb.Cdb(fifo), fifo)
    assert isinstance(got, cdb.CdbError), got       # a short cdb: temporary


def test_the_admin_greetings_read_me_without_hanging_on_a_fifo(tmp_path):
    """qmail-install's and qmail-svscan's closing words name control/me;
    they read it as a control (a FIFO there hung the admin's command)."""
    from qmail import install, svscan
    (tmp_path / 'control').mkdir()
    me = str(tmp_path / 'control' / 'me')
    os.mkfifo(me)
    for greeting in (install.status_text, svscan.intro):
        got = _in_thread(lambda: greeting(str(tmp_path)), me)
        assert isinstance(got, str) and 'root@\n' in got, got
    os.unlink(me)
    with open(me, 'w') as f:
        f.write('mx.example\r\n')
    for greeting in (install.status_text, svscan.intro):
        assert 'root@mx.example\n' in greeting(str(tmp_path))


@pytest.mark.parametrize('load, names', [
    ('qmtpd', ('timeoutqmtpd', 'lifetimeqmtpd')),
    ('popup', ('timeoutpop3', 'lifetimepop3', 'authdelaypop3')),
    ('pop3d', ('timeoutpop3',)),
    ('remote', ('timeoutconnect', 'timeoutremote')),
])
def test_a_timeout_of_forever_is_taken_as_the_longest_wait(tmp_path, load, names):
    """qmail takes 2147483647 (or more: C truncates) for "never"; poll()
    in ms, alarm() and socket timeouts overflowed on it, and every
    session or delivery failed as an internal error."""
    import importlib
    mod = importlib.import_module('qmail.' + load)
    ctl_dir = tmp_path / 'control'
    ctl_dir.mkdir()
    (ctl_dir / 'me').write_text('me.example\n')
    for name in names:
        (ctl_dir / name).write_text('9999999999\n')
    ctl = control.Controls(str(ctl_dir))
    got = mod.Settings(ctl) if load == 'remote' else mod.load_config(ctl, {}) \
        if load == 'qmtpd' else mod.load_config(ctl)
    attrs = {'timeoutconnect': 'timeoutconnect', 'timeoutremote': 'timeout',
             'authdelaypop3': 'authdelay'}
    for name in names:
        attr = attrs.get(name, 'lifetime' if name.startswith('lifetime') else 'timeout')
        assert getattr(got, attr) == control.SECONDS_MAX, name


def test_only_a_missing_file_means_the_default(tmp_path):
    """control.c takes the default for ENOENT alone.  A control whose path
    runs through a file (ENOTDIR: a symlink to /x/file/rcpthosts) is
    trouble, as a directory or an unreadable file is: taken for missing,
    rcpthosts let qmail-smtpd relay for anyone, where qmail answers 421."""
    plain = tmp_path / 'plainfile'
    plain.write_text('x\n')
    d = tmp_path / 'control'
    d.mkdir()
    for name in ('rcpthosts', 'databytes', 'me', 'smtpauthplaintext'):
        os.symlink(str(plain / name), str(d / name))
    for read in (control.readfile, control.readline, control.readint):
        with pytest.raises(NotADirectoryError):
            read(str(d / 'rcpthosts'))
    ctl = control.Controls(str(d))
    with pytest.raises(NotADirectoryError):
        ctl.lines('rcpthosts')
    with pytest.raises(NotADirectoryError):
        ctl.exists('smtpauthplaintext')
    assert control.readfile(str(d / 'nosuch')) is None      # missing: the default
    assert not ctl.exists('nosuch')
    from qmail import smtpd
    (d / 'me').unlink()
    (d / 'me').write_text('mx.example\n')
    with pytest.raises(NotADirectoryError):
        smtpd.read_config(control.Controls(str(d)), {})   # qmail-smtpd: 421


def test_a_control_past_the_limit_is_trouble_not_cut(tmp_path, monkeypatch):
    """More than MAX_CONTROL_BYTES is an error (the programs' "unable to
    read controls"), not the first part taken for the whole."""
    monkeypatch.setattr(control, 'MAX_CONTROL_BYTES', 100)
    path = tmp_path / 'virtualdomains'
    path.write_bytes(b'a.example:joe\n' * 7 + b'last.example:joe\n')   # 115 bytes
    with pytest.raises(OSError) as info:
        control.readfile(str(path))
    assert info.value.errno == errno.EFBIG and info.value.filename == str(path)
    path.write_bytes(b'a.example:joe\n' * 7)                             # 98: whole
    assert control.readfile(str(path)) == [b'a.example:joe'] * 7


def test_smtpd_retire_says_when_a_kept_config_was_read_again(tmp_path, monkeypatch):
    """qmail-listen retires a worker that read its controls again (the
    files changed), so that one forked after the listener read them
    shares them; a fresh worker's first reading, another DATABYTES or a
    reading of files changed a moment ago is no reason."""
    from qmail import smtpd
    d = tmp_path / 'control'
    d.mkdir()
    (d / 'me').write_text('mx.example\n')
    (d / 'rcpthosts').write_text('a.example\n')
    monkeypatch.setattr(smtpd, '_last_config', None)
    monkeypatch.setattr(smtpd, '_changed', [False])
    ctl = control.Controls(str(d))
    monkeypatch.setattr(control, 'RACY', -1e9)
    smtpd.load_config(ctl, {})
    assert not smtpd.retire()               # the first reading
    smtpd.load_config(ctl, {b'DATABYTES': b'7'})
    assert not smtpd.retire()               # not the files (nor read again)
    smtpd.load_config(ctl, {})
    assert not smtpd.retire()
    (d / 'rcpthosts').write_text('a.example\nb.example\n')
    monkeypatch.setattr(control, 'RACY', 1e9)   # changed a moment ago: no key
    assert b'b.example' in smtpd.load_config(ctl, {}).rcpthosts
    assert not smtpd.retire()
    monkeypatch.setattr(control, 'RACY', -1e9)  # settled: kept, the change seen
    assert b'b.example' in smtpd.load_config(ctl, {}).rcpthosts
    assert smtpd.retire()
    assert not smtpd.retire()               # said once
    smtpd.load_config(ctl, {})
    assert not smtpd.retire()
