"""qmail-qread and qmail-qstat: formats checked against golden files."""

import os

import pytest

from qmail import qread, qstat

DATA = os.path.join(os.path.dirname(__file__), 'data', 'qread')


def make_queue(root, split=23):
    """A small queue in every state qmail-qread reports."""
    for d in ('mess', 'info', 'local', 'remote'):
        for i in range(split):
            os.makedirs(os.path.join(root, d, str(i)))
    for d in ('todo', 'intd', 'bounce', 'pid'):
        os.makedirs(os.path.join(root, d))

    def put(rel, data, mtime=None):
        path = os.path.join(root, rel)
        with open(path, 'wb') as f:
            f.write(data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
    # 457: preprocessed, one local done, one remote pending, bouncing
    put('mess/20/457', b'x' * 1234)
    put('info/20/457', b'Fsender@example.org\0', 838699494)
    put('local/20/457', b'Dalice@example.org\0Tbob@example.org\0')
    put('remote/20/457', b'Tcarol@example.net\0')
    put('bounce/457', b'')
    # 46: null sender, remote only, unprintable byte in an address
    put('mess/0/46', b'y' * 10)
    put('info/0/46', b'F\0', 838700000)
    put('remote/0/46', b'Td\x01ve@example.net\0')
    # 99: not yet preprocessed
    put('mess/7/99', b'z' * 77)
    put('todo/99', b'u1000\0p42\0Fuser@example.org\0Tone@example.org\0Ttwo@example.org\0',
        838701000)
    # 100: in todo/ but also in info/ (preprocessing under way): listed once
    put('mess/8/100', b'w')
    put('todo/100', b'u0\0p1\0Fa@b\0Tc@d\0', 838701000)
    put('info/8/100', b'Fa@b\0', 838701000)
    put('remote/8/100', b'Tc@d\0')
    # 123: info/ without mess/: trouble
    put('info/8/123', b'Fx@y\0', 838701000)
    # not a message
    put('info/1/junk', b'')


def test_qread_unreadable_channel_keeps_the_rest(tmp_path, monkeypatch):
    """A local/ list that cannot be read: its warning, with the reason,
    between the message's date line and its remote/ list."""
    make_queue(str(tmp_path))
    os.makedirs(tmp_path / 'local' / '8' / '100')
    monkeypatch.chdir(tmp_path)
    out = []
    qread.scan(23, out.append)
    got = ''.join(out)
    assert ('30 Jul 1996 04:30:00 GMT  #100  1  <a@b> \n'
            'warning: trouble with #100: is a directory\n'
            '\tremote\tc@d\n') in got, got


def test_qread_listing(tmp_path, monkeypatch):
    make_queue(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    out = []
    qread.scan(23, out.append)
    got = ''.join(out)
    want = open(os.path.join(DATA, 'listing.txt')).read()
    assert got == want, 'got:\n%s\nwant:\n%s' % (got, want)


def test_qread_todo_with_an_empty_info_lists_todo(tmp_path, monkeypatch):
    """qmail-send's info/ write failed (a full disk) and left it empty:
    the message is listed from todo/, not as "<>" with no recipient."""
    make_queue(str(tmp_path))
    with open(tmp_path / 'info' / '8' / '100', 'wb'):
        pass
    monkeypatch.chdir(tmp_path)
    out = []
    qread.scan(23, out.append)
    got = ''.join(out)
    assert '30 Jul 1996 04:30:00 GMT  #100  1  <a@b> \n\ttodo\tc@d\n' in got, got
    assert got.count('#100 ') == 1, got


@pytest.mark.parametrize('bouncing, want', [
    (False, '30 Jul 1996 04:04:54 GMT  #457  1234  <a@b> \n'),
    (True, '30 Jul 1996 04:04:54 GMT  #457  1234  <a@b>  bouncing\n'),
])
def test_stats_line(bouncing, want):
    got = qread.stats_line(457, 838699494, 1234, b'a@b', bouncing)
    assert got == want, 'got %r want %r' % (got, want)


def test_qstat_counts(tmp_path):
    make_queue(str(tmp_path))
    assert qstat.count_queue(str(tmp_path), 23) == (4, 2)


def test_queue_tools_word_system_errors_as_qmail(tmp_path, monkeypatch, capsys):
    """qmail's error_str texts ("file does not exist"), not strerror's."""
    from qmail import qread as qread_mod, qstat
    from qmail.lib import auto
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path / 'none'))
    assert qread_mod.main([]) == 111
    assert capsys.readouterr().out == 'fatal: unable to chdir: file does not exist\n'
    assert qstat.main([]) == 111
    assert capsys.readouterr().err.endswith(': file does not exist\n')
