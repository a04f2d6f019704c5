"""The crash model of qmail.lib.crashsim: what a power cut takes back,
on a scratch directory, through the steps of qmail.lib.durable."""

import os

import pytest

from qmail.lib import crashsim, durable


@pytest.fixture
def box(tmp_path):
    (tmp_path / 'd').mkdir()
    (tmp_path / 'stash').mkdir()
    return tmp_path


def recorder(box, **kw):
    return crashsim.Recorder(str(box / 'stash'), **kw)


def make(path, data):
    fd = durable.create_excl(path if isinstance(path, bytes) else str(path))
    durable.write_all(fd, data)
    return fd


def names(box):
    return sorted(os.listdir(box / 'd'))


def test_no_hook_unless_code_installs_one():
    assert durable.hook is None and durable.after is None


@pytest.mark.parametrize('link_first', [True, False])
def test_a_nameless_file_fsynced_before_its_link_loses_its_names(box, link_first):
    """create_anon, then fsync and link: an fsync before the link leaves
    "no link" in the inode on disk, and a power cut takes its names even
    from a directory fsynced since (qmail-queue's envelope: named, then
    fsynced)."""
    with recorder(box) as rec:
        fd = durable.create_anon(str(box / 'd'))
        durable.write_all(fd, b'envelope')
        if link_first:
            durable.link_anon(fd, str(box / 'd' / 'intd'))
        durable.fsync(fd)
        if not link_first:
            durable.link_anon(fd, str(box / 'd' / 'intd'))
        durable.link(str(box / 'd' / 'intd'), str(box / 'd' / 'todo'))
        durable.fsync_dir(str(box / 'd'))
        os.close(fd)
        rec.powercut()
    if link_first:
        assert names(box) == ['intd', 'todo']
        assert (box / 'd' / 'todo').read_bytes() == b'envelope'
    else:
        assert names(box) == []


def test_a_nameless_file_fsynced_before_its_link_stays_gone_after_an_unlink(box):
    """The directory's rollback brings back a name removed since its
    fsync; the inode still says "no link": the name goes again."""
    with recorder(box) as rec:
        fd = durable.create_anon(str(box / 'd'))
        durable.write_all(fd, b'envelope')
        durable.fsync(fd)
        durable.link_anon(fd, str(box / 'd' / 'intd'))
        durable.fsync_dir(str(box / 'd'))
        durable.unlink(str(box / 'd' / 'intd'))
        os.close(fd)
        rec.powercut()
    assert names(box) == []


def test_create_and_write_without_fsync_vanish(box):
    with recorder(box) as rec:
        os.close(make(box / 'd' / 'a', b'hello'))
        rec.powercut()
    assert names(box) == []


def test_fsynced_file_without_directory_fsync_vanishes(box):
    with recorder(box) as rec:
        fd = make(box / 'd' / 'a', b'hello')
        durable.fsync(fd)
        os.close(fd)
        rec.powercut()
    assert names(box) == []


def test_fsynced_file_and_directory_stay(box):
    with recorder(box) as rec:
        fd = make(box / 'd' / 'a', b'hello')
        durable.fsync(fd)
        os.close(fd)
        durable.fsync_dir(str(box / 'd'))
        rec.powercut()
    assert (box / 'd' / 'a').read_bytes() == b'hello'
    assert os.listdir(box / 'stash') == []


def test_synced_entry_of_an_unsynced_file_is_empty(box):
    # Linux after a power cut: the name survives, the data never written.
    with recorder(box) as rec:
        fd = make(box / 'd' / 'a', b'hello')
        durable.fsync_dir(str(box / 'd'))
        os.close(fd)
        rec.powercut()
    assert (box / 'd' / 'a').read_bytes() == b''


@pytest.mark.parametrize('synced, want', [(False, b'old'), (True, b'oldnew')])
def test_append_goes_back_to_the_last_fsync(box, synced, want):
    (box / 'd' / 'm').write_bytes(b'old')
    with recorder(box) as rec:
        fd = durable.open_append(str(box / 'd' / 'm'))
        durable.write_all(fd, b'new')
        if synced:
            durable.fsync(fd)
        os.close(fd)
        rec.powercut()
    assert (box / 'd' / 'm').read_bytes() == want


def test_snapshot_is_of_the_last_fsync_not_the_first_write(box):
    with recorder(box) as rec:
        fd = make(box / 'd' / 'a', b'one')
        durable.fsync(fd)
        durable.fsync_dir(str(box / 'd'))
        durable.write_all(fd, b'two')
        durable.write_all(fd, b'three')
        os.close(fd)
        rec.powercut()
    assert (box / 'd' / 'a').read_bytes() == b'one'


def test_pwrite_and_truncate_are_undone(box):
    (box / 'd' / 'local').write_bytes(b'Ta@b\0Tc@d\0')
    with recorder(box) as rec:
        fd = os.open(box / 'd' / 'local', os.O_WRONLY)
        durable.pwrite(fd, b'D', 5)
        durable.truncate(fd, 5)
        os.close(fd)
        rec.powercut()
    assert (box / 'd' / 'local').read_bytes() == b'Ta@b\0Tc@d\0'


def test_open_append_of_a_new_file_is_undone(box):
    with recorder(box) as rec:
        fd = durable.open_append(str(box / 'd' / 'bounce'))
        durable.write_all(fd, b'<x@y>:\nfailed\n\n')
        durable.fsync(fd)
        os.close(fd)
        rec.powercut()
    assert names(box) == []


@pytest.mark.parametrize('synced', [False, True])
def test_unlink_without_directory_fsync_is_undone(box, synced):
    (box / 'd' / 'a').write_bytes(b'keep me')
    ino = os.stat(box / 'd' / 'a').st_ino
    with recorder(box) as rec:
        durable.unlink(str(box / 'd' / 'a'))
        if synced:
            durable.fsync_dir(str(box / 'd'))
        rec.powercut()
    if synced:
        assert names(box) == []
    else:
        assert (box / 'd' / 'a').read_bytes() == b'keep me'
        assert os.stat(box / 'd' / 'a').st_ino == ino
    assert os.listdir(box / 'stash') == []


def test_rename_is_undone_in_both_directories(box):
    (box / 'e').mkdir()
    (box / 'd' / 'tmp').write_bytes(b'new')
    (box / 'e' / 'final').write_bytes(b'old')
    with recorder(box) as rec:
        durable.rename(str(box / 'd' / 'tmp'), str(box / 'e' / 'final'))
        assert (box / 'e' / 'final').read_bytes() == b'new'
        rec.powercut()
    assert (box / 'd' / 'tmp').read_bytes() == b'new'
    assert (box / 'e' / 'final').read_bytes() == b'old'


def test_rename_with_only_the_target_synced(box):
    # Each directory goes back on its own: the new name stays, and so
    # does the old one (a link count a real fsck would fix).
    (box / 'e').mkdir()
    (box / 'd' / 'tmp').write_bytes(b'new')
    with recorder(box) as rec:
        durable.rename(str(box / 'd' / 'tmp'), str(box / 'e' / 'final'))
        durable.fsync_dir(str(box / 'e'))
        rec.powercut()
    assert (box / 'e' / 'final').read_bytes() == b'new'
    assert (box / 'd' / 'tmp').read_bytes() == b'new'


def test_link_is_undone(box):
    (box / 'd' / 'intd').write_bytes(b'F\0')
    with recorder(box) as rec:
        durable.link(str(box / 'd' / 'intd'), str(box / 'd' / 'todo'))
        rec.powercut()
    assert names(box) == ['intd']


def test_relative_and_bytes_paths(box, monkeypatch):
    monkeypatch.chdir(box)
    with recorder(box) as rec:
        fd = make(b'd/a', b'x')
        durable.fsync(fd)
        os.close(fd)
        durable.fsync_dir(str(box / 'd'))      # the same directory, named
        durable.unlink('d/a')                  # differently
        rec.powercut()
    assert (box / 'd' / 'a').read_bytes() == b'x'


def test_steps_are_numbered_with_their_inodes(box):
    with recorder(box) as rec:
        fd = make(box / 'd' / 'a', b'x')
        durable.fsync(fd)
        os.close(fd)
        durable.link(str(box / 'd' / 'a'), str(box / 'd' / 'b'))
        try:
            durable.unlink(str(box / 'd' / 'missing'))
        except FileNotFoundError:
            pass                               # a failed step is no step
    ino = os.stat(box / 'd' / 'a').st_ino
    assert [(s.number, s.name, s.inode) for s in rec.steps] == [
        (1, 'create', ino), (2, 'write', ino), (3, 'fsync', ino),
        (4, 'link', ino)]
    assert rec.steps[3].path == str(box / 'd' / 'b')
    assert durable.hook is None and durable.after is None


def crash_child(box, k, mode):
    """Four steps in a child that crashes after step k; its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            crashsim.Recorder(str(box / 'stash'), k, mode).install()
            fd = make(box / 'd' / 'a', b'data')          # steps 1, 2
            durable.fsync(fd)                            # 3
            durable.fsync_dir(str(box / 'd'))            # 4
        finally:
            os._exit(0)
    _, wstat = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wstat)


@pytest.mark.parametrize('k, want', [
    (1, b''), (2, b'data'), (3, b'data'), (4, b'data')])
def test_stop_after_step_k_keeps_what_the_kernel_has(box, k, want):
    assert crash_child(box, k, crashsim.STOP) == crashsim.STOP_EXIT
    assert (box / 'd' / 'a').read_bytes() == want


@pytest.mark.parametrize('k, want', [
    (1, None), (2, None), (3, None), (4, b'data')])
def test_powercut_after_step_k_keeps_what_is_durable(box, k, want):
    assert crash_child(box, k, crashsim.POWERCUT) == crashsim.POWERCUT_EXIT
    got = (box / 'd' / 'a').read_bytes() if names(box) else None
    assert got == want


def test_no_crash_past_the_last_step(box):
    assert crash_child(box, 5, crashsim.STOP) == 0


def test_too_big_to_snapshot(box, monkeypatch):
    monkeypatch.setattr(crashsim, 'SNAPSHOT_MAX', 4)
    (box / 'd' / 'big').write_bytes(b'12345')
    with recorder(box):
        fd = durable.open_append(str(box / 'd' / 'big'))
        with pytest.raises(crashsim.CrashSimError):
            durable.write_all(fd, b'6')
        os.close(fd)


@pytest.fixture
def with_syncfs(monkeypatch):
    """durable.syncfs as the long-lived programs have it, whatever else
    is dirty on this machine."""
    durable.load_writeback()
    if not durable._syncfs:
        pytest.skip('no syncfs that reports errors on this kernel')
    monkeypatch.setattr(durable, '_little_dirty', lambda: True)


def test_syncfs_makes_every_file_and_entry_durable(box, with_syncfs):
    """One syncfs: files written and directories changed before it stay;
    what changed after it goes back."""
    (box / 'd' / 'sub').mkdir()
    with recorder(box) as rec:
        a = make(box / 'd' / 'a', b'one')
        b = make(box / 'd' / 'sub' / 'b', b'two')
        assert durable.syncfs([a, b]) is True
        durable.write_all(b, b'-more')
        c = make(box / 'd' / 'c', b'three')
        durable.unlink(str(box / 'd' / 'a'))
        rec.powercut()
    for fd in (a, b, c):
        os.close(fd)
    assert names(box) == ['a', 'sub']
    assert (box / 'd' / 'a').read_bytes() == b'one'
    assert (box / 'd' / 'sub' / 'b').read_bytes() == b'two'
    assert [s.name for s in rec.steps][:5] == ['create', 'write', 'create', 'write', 'syncfs']


@pytest.mark.parametrize('link_first', [True, False])
def test_syncfs_of_a_nameless_file(box, with_syncfs, link_first):
    """syncfs writes a nameless file's inode as it is: linked first, it
    stays; synced before its link, the link (even fsynced) goes."""
    with recorder(box) as rec:
        fd = durable.create_anon(str(box / 'd'))
        durable.write_all(fd, b'envelope')
        if link_first:
            durable.link_anon(fd, str(box / 'd' / 'intd'))
        durable.syncfs([fd])
        if not link_first:
            durable.link_anon(fd, str(box / 'd' / 'intd'))
            durable.fsync_dir(str(box / 'd'))
        os.close(fd)
        rec.powercut()
    assert names(box) == (['intd'] if link_first else [])


def test_syncfs_declines_where_unknown_untrusted_or_too_much_is_dirty(box, monkeypatch):
    """False (the caller fsyncs each file) without a syncfs that reports
    errors, with more dirty data machine-wide than it should wait for,
    on a filesystem of a kind not trusted, or with the descriptors on
    two filesystems; no step is counted then."""
    fd = make(box / 'd' / 'a', b'x')
    ext4 = 0xEF53
    with recorder(box) as rec:
        monkeypatch.setattr(durable, '_syncfs', False)
        assert durable.syncfs([fd]) is False
        monkeypatch.setattr(durable, '_syncfs', (lambda fd: 0, lambda fd: ext4))
        monkeypatch.setattr(durable, 'SYNCFS_DIRTY_MAX', -1)
        assert durable.syncfs([fd]) is False
        monkeypatch.setattr(durable, 'SYNCFS_DIRTY_MAX', 1 << 62)
        assert durable.syncfs([]) is False
        monkeypatch.setattr(durable, '_syncfs', (lambda fd: 0, lambda fd: 0x65735546))  # FUSE
        assert durable.syncfs([fd]) is False
        monkeypatch.setattr(durable, '_syncfs', (lambda fd: 0, lambda fd: ext4))
        proc = os.open('/proc/self/status', os.O_RDONLY)       # another filesystem
        assert durable.syncfs([fd, proc]) is False
        os.close(proc)
        assert durable.syncfs([fd, fd]) is True
        assert durable.syncfs_dirs([str(box / 'd'), str(box / 'nosuch')]) is False
        assert durable.syncfs_dirs([str(box / 'd'), str(box)]) is True
    os.close(fd)
    assert [s.name for s in rec.steps] == ['syncfs', 'syncfs']


def test_syncfs_knows_this_filesystem(box):
    """The kind statfs reports for the test's own directory (ext4 or
    tmpfs on the machines this runs on) is one syncfs is trusted on."""
    durable.load_writeback()
    if not durable._syncfs:
        pytest.skip('no syncfs that reports errors on this kernel')
    fd = os.open(str(box / 'd'), os.O_RDONLY)
    kind = durable._syncfs[1](fd)
    proc = os.open('/proc/self/status', os.O_RDONLY)
    try:
        assert kind in durable.SYNCFS_KINDS, hex(kind)
        assert durable._syncfs[1](proc) == 0x9FA0                # procfs
    finally:
        os.close(fd)
        os.close(proc)


def test_syncfs_failure_raises(box, monkeypatch):
    import ctypes
    fd = make(box / 'd' / 'a', b'x')

    def failing(fd):
        ctypes.set_errno(5)
        return -1
    monkeypatch.setattr(durable, '_syncfs', (failing, lambda fd: 0xEF53))
    monkeypatch.setattr(durable, '_little_dirty', lambda: True)
    with pytest.raises(OSError) as e:
        durable.syncfs([fd])
    os.close(fd)
    assert e.value.errno == 5


@pytest.mark.parametrize('release, ok', [
    ('6.1.0-18-amd64', True), ('5.17.0', True), ('5.18-rc1', True),
    ('5.16.20', False), ('5.15.0-91-generic', False), ('5.8.0', False),
    ('5.10.0-28-cloud-amd64', False), ('5.4-rc7', False), ('4.19.0-26-amd64', False),
    ('3.10.0-1160.el7.x86_64', False), ('6.18.44-fc-v669', True), ('10.0', True),
    ('garbage', False), ('', False)])
def test_syncfs_reports_errors_from_linux_5_17(release, ok):
    assert durable.syncfs_reports_errors(release) is ok


def test_dirty_bytes_of_meminfo():
    text = (b'MemTotal:        8123456 kB\nDirty:              1234 kB\n'
            b'Writeback:            16 kB\nWritebackTmp:       99 kB\n')
    assert durable.dirty_bytes(text) == (1234 + 16) * 1024
    assert durable.dirty_bytes(b'MemTotal: 1 kB\nDirty: 5 kB\n') >= 1 << 62
    assert durable.dirty_bytes(b'Dirty: x kB\nWriteback: 0 kB\n') >= 1 << 62
    with open('/proc/meminfo', 'rb') as f:
        assert durable.dirty_bytes(f.read()) < 1 << 62
