"""qmail.lib.cdb: the constant database, byte for byte as cdbmake makes it."""

import os
import shutil
import struct
import subprocess

import pytest

from qmail.lib import cdb

TINYCDB = shutil.which('cdb')
needs_tinycdb = pytest.mark.skipif(TINYCDB is None,
                                   reason='tinycdb (cdb(1)) not installed')


def pair(a, b):
    return struct.pack('<II', a, b)


@pytest.mark.parametrize('key,want', [
    (b'', 5381),
    (b'a', 177604),                 # (5381 * 33) ^ 0x61
    (b'ab', (177604 * 33) ^ 0x62),
    (b'\xff' * 40, None),           # only checks it stays in 32 bits
])
def test_hash(key, want):
    got = cdb.hash(key)
    if want is not None:
        assert got == want, 'hash(%r): got %d want %d' % (key, got, want)
    assert 0 <= got <= 0xFFFFFFFF


def test_golden_empty():
    # No records: every table is empty and starts right after the header.
    want = pair(2048, 0) * 256
    assert cdb.make([]) == want


def test_golden_one_record():
    # hash(b'a') = 177604 = 0x2B5C4: table 0xC4 = 196, two slots, start
    # slot (177604 >> 8) % 2 = 693 % 2 = 1.  The record is 10 bytes at
    # 2048, so tables start at 2058; table 196 takes 16 bytes.
    record = pair(1, 1) + b'ab'
    table196 = pair(0, 0) + pair(177604, 2048)
    header = (pair(2058, 0) * 196 + pair(2058, 2) + pair(2074, 0) * 59)
    want = header + record + table196
    got = cdb.make([(b'a', b'b')])
    assert got == want, 'got %r\nwant %r' % (got[2048:], want[2048:])


def test_golden_collision_in_one_table():
    # Two records of one key: table of 4 slots, both from the same start
    # slot (693 % 4 = 1), the first added in the first slot reached.
    record1 = pair(1, 1) + b'a1'
    record2 = pair(1, 1) + b'a2'
    table = pair(0, 0) + pair(177604, 2048) + pair(177604, 2058) + pair(0, 0)
    header = pair(2068, 0) * 196 + pair(2068, 4) + pair(2100, 0) * 59
    got = cdb.make([(b'a', b'1'), (b'a', b'2')])
    assert got == header + record1 + record2 + table


def test_golden_wraps_around():
    # Three records of a key whose start slot is the last: 693 % 6 = 3,
    # so slots 3, 4, 5, then wrap to 0.
    recs = [(b'a', b'%d' % i) for i in range(4)]
    got = cdb.make(recs)
    tpos, slots = struct.unpack_from('<II', got, 8 * 196)
    assert slots == 8 and 693 % 8 == 5
    table = [struct.unpack_from('<II', got, tpos + 8 * i) for i in range(8)]
    want_pos = [2048 + 10 * i for i in range(4)]
    assert [p for _, p in table] == [want_pos[3], 0, 0, 0, 0,
                                     want_pos[0], want_pos[1], want_pos[2]]


def test_round_trip_many_keys():
    pairs = [(b'key%d' % i, b'data %d' % (i * i)) for i in range(5000)]
    db = cdb.Cdb.from_bytes(cdb.make(pairs))
    for key, data in pairs:
        assert db.get(key) == data
    assert db.get(b'key5000') is None
    assert db.get(b'nope', b'dflt') == b'dflt'
    assert list(db) == pairs
    assert b'key17' in db and b'key-1' not in db


def test_duplicates_first_wins_and_get_all_in_order():
    pairs = [(b'dup', b'one'), (b'other', b'x'), (b'dup', b'two'),
             (b'dup', b'three')]
    db = cdb.Cdb.from_bytes(cdb.make(pairs))
    assert db.get(b'dup') == b'one'
    assert db.get_all(b'dup') == [b'one', b'two', b'three']
    assert db.get_all(b'missing') == []


def test_empty_key_and_empty_data():
    db = cdb.Cdb.from_bytes(cdb.make([(b'', b'wild'), (b'k', b'')]))
    assert db.get(b'') == b'wild'
    assert db.get(b'k') == b''
    assert b'k' in db


def test_binary_keys():
    pairs = [(bytes([i, 0, 255 - i]), bytes([i]) * i) for i in range(256)]
    db = cdb.Cdb.from_bytes(cdb.make(pairs))
    for key, data in pairs:
        assert db.get(key) == data


def test_file_reader_both_paths(tmp_path, monkeypatch):
    path = tmp_path / 'x.cdb'
    pairs = [(b'k%d' % i, b'v%d' % i) for i in range(100)]
    path.write_bytes(cdb.make(pairs))
    with cdb.Cdb(str(path)) as db:
        assert db.get(b'k42') == b'v42'
    # A file over the read-all limit is read with pread.
    monkeypatch.setattr(cdb, 'READ_ALL_LIMIT', 0)
    with cdb.Cdb(str(path)) as db:
        assert db._fd is not None
        assert db.get(b'k99') == b'v99'
        assert list(db) == pairs
    assert db._fd is None


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        cdb.Cdb(str(tmp_path / 'none'))


@pytest.mark.parametrize('cut', [0, 1, 2047, 2048, 2055, 2060, -1, -9])
def test_truncated_file_raises_cdberror(cut):
    data = cdb.make([(b'key', b'value'), (b'other', b'v2')])
    short = data[:cut]
    try:
        db = cdb.Cdb.from_bytes(short)
        db.get(b'key')
        db.get(b'other')
        list(db)
    except cdb.CdbError:
        return
    pytest.fail('no CdbError for a file cut at %d' % cut)


def test_truncated_file_under_pread(tmp_path, monkeypatch):
    monkeypatch.setattr(cdb, 'READ_ALL_LIMIT', 0)
    path = tmp_path / 'x.cdb'
    path.write_bytes(cdb.make([(b'key', b'value')]))
    db = cdb.Cdb(str(path))
    os.truncate(str(path), 2050)            # shrinks under the reader
    with pytest.raises(cdb.CdbError):
        db.get(b'key')
    db.close()


def corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


GET = lambda db: db.get(b'a')         # noqa: E731
DUMP = lambda db: list(db)          # noqa: E731


@pytest.mark.parametrize('offset,value,action', [
    (8 * 196, 0xFFFFFF00, GET),     # table position outside the file
    (8 * 196 + 4, 1000, GET),       # table longer than the file
    (2058 + 8 + 4, 0x7FFFFFFF, GET),  # slot points outside the file
    (2052, 0xFFFFFFF0, GET),        # data length past the end
    (2048, 0xFFFFFFF0, DUMP),       # key length past the end of records
    (0, 100, DUMP),                 # end of records inside the header
    (0, 1 << 20, DUMP),             # end of records past the file
])
def test_corrupt_offsets_raise_cdberror(offset, value, action):
    data = cdb.make([(b'a', b'b')])
    with pytest.raises(cdb.CdbError):
        action(cdb.Cdb.from_bytes(corrupt(data, offset,
                                          struct.pack('<I', value))))


def test_corrupt_lookup_loop_is_bounded():
    # Every slot full and pointing at the wrong key: the search stops
    # after looking at each slot once.
    data = cdb.make([(b'a', b'b')])
    tpos = 2058
    bad = corrupt(data, tpos, pair(177604, 2048) + pair(177604, 2048))
    bad = corrupt(bad, 2048 + 8, b'z')      # the record's key is now 'z'
    assert cdb.Cdb.from_bytes(bad).get(b'a') is None


def test_too_big_is_refused(monkeypatch):
    monkeypatch.setattr(cdb, 'MAX_SIZE', 2048 + 100)
    with pytest.raises(cdb.CdbError):
        cdb.make([(b'k', b'x' * 200)])
    with pytest.raises(cdb.CdbError):
        cdb.make([(b'k%d' % i, b'') for i in range(10)])   # tables too
    with pytest.raises(cdb.CdbError):
        cdb.Cdb.from_bytes(bytes(2048 + 101))


def test_install_replaces_atomically(tmp_path):
    final = tmp_path / 'x.cdb'
    tmp = tmp_path / 'x.tmp'
    final.write_bytes(b'old')
    tmp.write_bytes(b'stale temp from a crash')
    cdb.install(str(tmp), str(final), [(b'a', b'b')])
    assert final.read_bytes() == cdb.make([(b'a', b'b')])
    assert not tmp.exists()
    assert final.stat().st_mode & 0o777 == 0o644


def test_install_failure_leaves_final_alone(tmp_path):
    final = tmp_path / 'x.cdb'
    tmp = tmp_path / 'x.tmp'
    final.write_bytes(b'old')

    def records():
        yield b'a', b'b'
        raise ValueError('bad source line')
    with pytest.raises(ValueError):
        cdb.install(str(tmp), str(final), records())
    assert final.read_bytes() == b'old'
    assert not tmp.exists()


def test_install_steps_in_order(tmp_path, monkeypatch):
    from qmail.lib import durable
    steps = []
    monkeypatch.setattr(durable, 'hook', lambda name, path: steps.append(name))
    cdb.install(str(tmp_path / 't'), str(tmp_path / 'f'), [])
    assert steps == ['unlink', 'create', 'fsync', 'rename', 'fsync_dir']


# -- cross-checks with tinycdb, when it is installed -----------------------

@needs_tinycdb
def test_tinycdb_reads_ours(tmp_path):
    pairs = [(b'one', b'1'), (b'two', b'22'), (b'', b'empty key'),
             (b'dup', b'first'), (b'dup', b'second')]
    path = tmp_path / 'ours.cdb'
    path.write_bytes(cdb.make(pairs))
    dump = subprocess.run([TINYCDB, '-d', str(path)], capture_output=True,
                          check=True, timeout=30).stdout
    want = b''.join(b'+%d,%d:%s->%s\n' % (len(k), len(d), k, d)
                    for k, d in pairs) + b'\n'
    assert dump == want
    got = subprocess.run([TINYCDB, '-q', str(path), 'two'],
                         capture_output=True, check=True, timeout=30).stdout
    assert got == b'22'
    got = subprocess.run([TINYCDB, '-q', '-n', '1', str(path), 'dup'],
                         capture_output=True, check=True, timeout=30).stdout
    assert got == b'first'
    got = subprocess.run([TINYCDB, '-q', '-n', '2', str(path), 'dup'],
                         capture_output=True, check=True, timeout=30).stdout
    assert got == b'second'


@needs_tinycdb
def test_we_read_tinycdbs_and_bytes_match(tmp_path):
    pairs = [(b'k%d' % i, b'v' * (i % 7)) for i in range(700)]
    pairs += [(b'k3', b'again')]
    src = b''.join(b'+%d,%d:%s->%s\n' % (len(k), len(d), k, d)
                   for k, d in pairs) + b'\n'
    path = tmp_path / 'theirs.cdb'
    subprocess.run([TINYCDB, '-c', str(path)], input=src, check=True,
                   timeout=30)
    theirs = path.read_bytes()
    db = cdb.Cdb(str(path))
    assert list(db) == pairs
    assert db.get(b'k3') == b'vvv'
    assert db.get_all(b'k3') == [b'vvv', b'again']
    db.close()
    assert cdb.make(pairs) == theirs


def test_a_dropped_cdb_closes_its_descriptor(tmp_path, monkeypatch):
    """A file too big to read whole keeps a descriptor; dropping the Cdb
    (a qmail-smtpd session's morercpthosts.cdb, at the session's end)
    closes it, or a qmail-listen worker would find it open and retire
    after every connection."""
    monkeypatch.setattr(cdb, 'READ_ALL_LIMIT', 0)
    path = tmp_path / 'big.cdb'
    path.write_bytes(cdb.make([(b'k', b'v')]))
    before = len(os.listdir('/proc/self/fd'))
    db = cdb.Cdb(str(path))
    assert not db.in_memory and db.get(b'k') == b'v'
    assert len(os.listdir('/proc/self/fd')) == before + 1
    del db
    assert len(os.listdir('/proc/self/fd')) == before
