"""qmail-newmrh: control/morercpthosts into morercpthosts.cdb."""

import os
import pytest

from qmail import newmrh
from qmail.lib import auto, cdb


@pytest.mark.parametrize('text,want', [
    (b'Example.COM\n', [b'example.com']),
    (b'a.example  \t\nb.example', [b'a.example', b'b.example']),
    (b'# comment\n\n   \n#x.example\nc.example\n', [b'c.example']),
    (b'  lead.example\n', [b'  lead.example']),     # leading space kept
    (b'cr.example\r\n', [b'cr.example\r']),        # as qmail: \r kept
    (b'd.example\nd.example\n', [b'd.example', b'd.example']),
    (b'', []),
])
def test_host_records(text, want):
    got = [k for k, d in newmrh.host_records(text.splitlines(keepends=True))]
    assert got == want, 'got %r want %r' % (got, want)


@pytest.fixture
def qhome(tmp_path, monkeypatch):
    (tmp_path / 'control').mkdir()
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path))
    return tmp_path


def test_main_writes_cdb(qhome):
    ctl = qhome / 'control'
    (ctl / 'morercpthosts').write_bytes(b'Example.COM\n.sub.example.net\n# no\n')
    assert newmrh.main([]) == 0
    data = (ctl / 'morercpthosts.cdb').read_bytes()
    assert data == cdb.make([(b'example.com', b''), (b'.sub.example.net', b'')])
    db = cdb.Cdb(str(ctl / 'morercpthosts.cdb'))
    assert db.get(b'example.com') == b''
    assert db.get(b'Example.COM') is None
    db.close()
    assert not (ctl / 'morercpthosts.tmp').exists()
    assert (ctl / 'morercpthosts.cdb').stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize('source, why', [
    (None, 'file does not exist'),
    # A FIFO: a plain open() waited for a writer for good; an empty read
    # would have built an empty database.
    ('fifo', 'not a regular file'),
])
def test_main_unreadable_source_leaves_cdb_alone(qhome, capsys, source, why):
    ctl = qhome / 'control'
    if source == 'fifo':
        os.mkfifo(str(ctl / 'morercpthosts'))
    (ctl / 'morercpthosts.cdb').write_bytes(b'old')
    assert newmrh.main([]) == 111
    assert capsys.readouterr().err == (
        'qmail-newmrh: fatal: unable to read control/morercpthosts: %s\n' % why)
    assert (ctl / 'morercpthosts.cdb').read_bytes() == b'old'


def test_main_unwritable_temp(qhome, capsys):
    ctl = qhome / 'control'
    (ctl / 'morercpthosts').write_bytes(b'a.example\n')
    (ctl / 'morercpthosts.tmp').mkdir()     # cannot be replaced by a file
    assert newmrh.main([]) == 111
    err = capsys.readouterr().err
    assert err.startswith('qmail-newmrh: fatal: unable to write to '
                          'control/morercpthosts.tmp: ')
    assert not (ctl / 'morercpthosts.cdb').exists()


def test_main_no_home(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path / 'none'))
    assert newmrh.main([]) == 111
    assert capsys.readouterr().err == (
        'qmail-newmrh: fatal: unable to chdir to %s: file does not exist\n'
        % (tmp_path / 'none'))
