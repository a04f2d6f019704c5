"""durable's group commit: processes that syncfs one filesystem share a
syncfs through a lock file holding the start of the last one that
succeeded (qmail-queue's writers, lock/syncfs)."""

import fcntl
import os
import time

import pytest

from qmail.lib import durable


OPENED = (1000, 1000)       # when "our" file was opened: before all else here


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """A stand-in syncfs that appends a line to a file per call (so
    children's calls count too) and answers what `answer` holds."""
    log = tmp_path / 'calls'
    log.write_bytes(b'')
    answer = [0]

    def fake(fd):
        with open(log, 'ab') as f:
            f.write(b'%d\n' % os.getpid())
        return answer[0]
    monkeypatch.setattr(durable, '_syncfs', (fake, lambda fd: 0xEF53))
    monkeypatch.setattr(durable, '_little_dirty', lambda: True)
    calls = lambda: len(log.read_bytes().splitlines())     # noqa: E731
    return calls, answer


def test_a_syncfs_begun_after_the_writing_covers_it(tmp_path, counted):
    calls, answer = counted
    group = str(tmp_path / 'syncfs')
    fd = os.open(tmp_path, os.O_RDONLY)
    dev = os.fstat(fd).st_dev
    try:
        before = time.monotonic_ns()
        assert durable._group_syncfs(fd, dev, group, time.monotonic_ns(), OPENED) == 0
        assert calls() == 1
        # Written before that syncfs began: covered, no call.
        assert durable._group_syncfs(fd, dev, group, before, OPENED) == 0
        assert calls() == 1
        # Written after it began: a syncfs of its own.
        assert durable._group_syncfs(fd, dev, group, time.monotonic_ns(), OPENED) == 0
        assert calls() == 2
        # A failed syncfs publishes nothing: the next caller syncs itself.
        answer[0] = -1
        written = time.monotonic_ns()
        assert durable._group_syncfs(fd, dev, group, written, OPENED) == -1
        answer[0] = 0
        assert durable._group_syncfs(fd, dev, group, written, OPENED) == 0
        assert calls() == 4
        # A stamp of another boot covers nothing (the clock began again),
        # nor one of another filesystem.
        later = time.monotonic_ns() + 10**12
        for stamp in (durable.GROUP_STAMP.pack(dev, later, 0) + b'another-boot',
                      durable.GROUP_STAMP.pack(dev + 1, later, 0) + durable._boot_id()):
            with open(group, 'wb') as f:
                f.write(stamp)
            assert durable._group_syncfs(fd, dev, group, time.monotonic_ns(), OPENED) == 0
        assert calls() == 6
        with open(group, 'wb') as f:
            f.write(durable.GROUP_STAMP.pack(dev, later, 0) + durable._boot_id())
        assert durable._group_syncfs(fd, dev, group, time.monotonic_ns(), OPENED) == 0
        assert calls() == 6
        # A syncfs on a file opened after ours does not stand for ours: an
        # error reported before that opening is not reported to it.
        with open(group, 'wb') as f:
            f.write(durable.GROUP_STAMP.pack(dev, later, OPENED[0] + 1) + durable._boot_id())
        assert durable._group_syncfs(fd, dev, group, time.monotonic_ns(), OPENED) == 0
        assert calls() == 7
    finally:
        os.close(fd)


def test_syncfs_with_a_group(tmp_path, counted):
    """The public call: True, the step counted for crashsim, the stamp
    file made when missing."""
    calls, _ = counted
    group = str(tmp_path / 'syncfs')
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert durable.syncfs([fd], group, OPENED) is True
        assert calls() == 1 and os.path.getsize(group) > durable.GROUP_STAMP.size
        assert durable.sync_files([fd], group, OPENED) == ([], True)
        assert calls() == 2
        # Without the time of the opening, no group: a syncfs of its own.
        assert durable.syncfs([fd], group) is True
        assert calls() == 3
    finally:
        os.close(fd)


def test_writers_waiting_together_share_one_syncfs(tmp_path, counted):
    """Three processes done writing wait on the lock while another
    holds it: the first to get it syncs, and its syncfs, begun after the
    others finished writing, covers them."""
    calls, _ = counted
    group = str(tmp_path / 'syncfs')
    holder = os.open(group, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fd = os.open(tmp_path, os.O_RDONLY)
                code = durable._group_syncfs(fd, os.fstat(fd).st_dev, group,
                                             time.monotonic_ns(), (1, 1))
            finally:
                os._exit(code & 0xff)
        pids.append(pid)
    time.sleep(0.3)                 # all three blocked on the lock
    assert calls() == 0
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    deadline = time.monotonic() + 30
    for pid in pids:
        while True:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                break
            assert time.monotonic() < deadline, 'a child did not finish'
            time.sleep(0.01)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert calls() == 1


@pytest.mark.parametrize('kind, journal, flushed', [
    (0xEF53, False, True),          # ext2, or ext3/4 without a journal
    (0xEF53, True, False),          # the journal's commit is durable
    (0x58465342, False, False),     # xfs: its log's
])
def test_a_flush_follows_syncfs_where_its_metadata_may_be_left_in_the_cache(
        tmp_path, monkeypatch, kind, journal, flushed):
    """ext2/3/4 without a journal write the block device's metadata after
    syncfs's own cache flush: an fsync of a synced file flushes again."""
    monkeypatch.setattr(durable, '_syncfs', (lambda fd: 0, lambda fd: kind))
    monkeypatch.setattr(durable, '_little_dirty', lambda: True)
    monkeypatch.setattr(durable, 'has_journal', lambda dev: journal)
    fsyncs = []
    real = os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: fsyncs.append(fd) or real(fd))
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert durable.syncfs([fd]) is True
        assert durable.syncfs([fd], str(tmp_path / 'syncfs'), OPENED) is True
        assert fsyncs == ([fd, fd] if flushed else [])
        if flushed:
            def failing(fd):
                raise OSError(5, 'Input/output error')
            monkeypatch.setattr(os, 'fsync', failing)
            with pytest.raises(OSError):
                durable.syncfs([fd])
            with pytest.raises(OSError):
                durable.syncfs([fd], str(tmp_path / 'syncfs2'), OPENED)
    finally:
        os.close(fd)


def test_has_journal_of_this_filesystem(tmp_path):
    """Whatever this machine's filesystem is, the answer is a bool and
    agrees with /proc/fs/jbd2."""
    import glob
    dev = os.stat(tmp_path).st_dev
    got = durable.has_journal(dev)
    assert isinstance(got, bool)
    if not glob.glob('/proc/fs/jbd2/*'):
        assert got is False
