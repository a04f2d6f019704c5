"""qmail.lib.control's cache: a control read again is the file's current
content whatever happened to it in between (edited in place twice in one
clock tick, replaced by rename, removed, made unreadable)."""

import os

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
