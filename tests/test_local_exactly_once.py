"""Exactly-once Maildir deliveries (beyond qmail 1.03): a repeated
delivery of the same queued message to the same place is recognised."""

import os

from qmail import local_deliver as ld
from test_local import Home, recording_dir_syncs  # noqa: F401  (the fixture's class)

import pytest


@pytest.fixture
def home(tmp_path, monkeypatch):
    # fd 0 a queue file, as qmail-lspawn's workers say
    monkeypatch.setattr(ld, 'FROM_QUEUE', True)
    return Home(tmp_path)


def test_a_message_given_by_hand_is_delivered_each_time(tmp_path):
    """qmail-local run by hand (not by qmail-lspawn) on a saved message:
    each run delivers it, as qmail's did, under a name of its own."""
    home = Home(tmp_path)
    md, mess = queued(home, tmp_path, b'Subject: by hand\n\nbody\n')
    for attempt in range(3):
        code, report = run_on(home, mess)
        assert code == 0, report
    assert len(os.listdir(md / 'new')) == 3


def run_on(home, mess):
    """qmail-local with the file mess on fd 0: (exit code, report)."""
    fd = os.open(mess, os.O_RDONLY)
    try:
        return home.run(stdin=fd)
    finally:
        os.close(fd)


def queued(home, tmp_path, body: bytes, dotqmail: bytes = b'./Maildir/\n'):
    """A maildir, a .qmail delivering to it and a queued message holding
    body: (the maildir, the message's path)."""
    md = home.maildir()
    home.write('.qmail', dotqmail)
    mess = tmp_path / 'queued'
    mess.write_bytes(body)
    return md, mess


def test_repeat_of_the_same_queue_file_is_one_file(home, tmp_path):
    md, mess = queued(home, tmp_path, b'Subject: once\n\nbody\n')
    for attempt in range(3):
        code, report = run_on(home, mess)
        assert code == 0, report
    assert len(os.listdir(md / 'new')) == 1
    assert os.listdir(md / 'tmp') == []


def test_repeat_after_the_reader_moved_it_to_cur(home, tmp_path):
    md, mess = queued(home, tmp_path, b'Subject: read\n\nbody\n')
    fd = os.open(mess, os.O_RDONLY)
    assert home.run(stdin=fd)[0] == 0
    name, = os.listdir(md / 'new')
    os.rename(md / 'new' / name, md / 'cur' / (name + ':2,S'))
    assert home.run(stdin=fd)[0] == 0
    os.close(fd)
    assert os.listdir(md / 'new') == []
    assert os.listdir(md / 'cur') == [name + ':2,S']


def test_another_attempts_tmp_file_is_left_alone(home, tmp_path):
    """A half-written file in tmp/ (an attempt cut short, or one under
    way: the same recipient twice in an envelope, two workers) is
    neither linked nor removed; the delivery writes its own."""
    md, mess = queued(home, tmp_path, b'Subject: half\n\nbody\n')
    fd = os.open(mess, os.O_RDONLY)
    assert home.run(stdin=fd)[0] == 0
    name, = os.listdir(md / 'new')
    os.rename(md / 'new' / name, md / 'tmp' / name)      # as if the link never happened
    with open(md / 'tmp' / name, 'r+b') as f:
        f.truncate(5)                                    # and the write was cut short
    assert home.run(stdin=fd)[0] == 0
    os.close(fd)
    assert os.listdir(md / 'tmp') == [name]
    assert (md / 'tmp' / name).read_bytes() == b'Retur'
    data = (md / 'new' / name).read_bytes()
    assert data.endswith(b'Subject: half\n\nbody\n')


def test_two_instructions_to_one_maildir_make_two_files(home, tmp_path):
    md, mess = queued(home, tmp_path, b'Subject: twice\n\nbody\n', b'./Maildir/\n./Maildir/\n')
    fd = os.open(mess, os.O_RDONLY)
    assert home.run(stdin=fd)[0] == 0
    assert home.run(stdin=fd)[0] == 0
    os.close(fd)
    assert len(os.listdir(md / 'new')) == 2


def test_a_different_message_in_the_same_inode_is_delivered(home, tmp_path):
    md, mess = queued(home, tmp_path, b'Subject: first\n\nbody\n')
    fd = os.open(mess, os.O_RDONLY)
    assert home.run(stdin=fd)[0] == 0
    os.close(fd)
    st = os.stat(mess)
    os.utime(mess, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))   # a new message instance
    fd = os.open(mess, os.O_RDONLY)
    assert home.run(stdin=fd)[0] == 0
    os.close(fd)
    assert len(os.listdir(md / 'new')) == 2


def test_another_message_in_the_same_inode_and_second(home, tmp_path):
    """Same inode, same mtime (a filesystem with 1-second times reusing
    an inode within a second), other bytes: another message, delivered."""
    md, mess = queued(home, tmp_path, b'Subject: first\n\nbody\n')
    st = os.stat(mess)
    fd = os.open(mess, os.O_RDONLY)
    assert home.run(stdin=fd)[0] == 0
    os.close(fd)
    with open(mess, 'r+b') as f:
        f.write(b'Subject: other')
    os.utime(mess, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(mess).st_ino == st.st_ino
    fd = os.open(mess, os.O_RDONLY)
    assert home.run(stdin=fd)[0] == 0
    os.close(fd)
    assert len(os.listdir(md / 'new')) == 2


def test_names_are_maildir_form():
    name = ld.maildir_name((457, 1795622466123456789), b'Return-Path: <a@b>\n', 1, b'host/x:y')
    assert name.startswith(b'1795622466.M123456I457X')
    assert name.endswith(b'.host\\057x\\072y')
    assert b'/' not in name and b':' not in name


@pytest.mark.parametrize('big', [False, True])
@pytest.mark.parametrize('suffix, found', [
    (b'', True), (b':2,', True), (b':2,S', True), (b':2,RS', True),
    (b':2,DFPRST', True), (b':1,whatever', False),
])
def test_already_delivered_in_cur(tmp_path, monkeypatch, big, suffix, found):
    for sub in ('new', 'cur', 'tmp'):
        (tmp_path / sub).mkdir()
    if big:
        monkeypatch.setattr(ld, 'SCAN_CUR_MAX', -1)
    name = b'1.M2I3Xabc.host'
    (tmp_path / 'cur' / (name + suffix).decode()).write_bytes(b'')
    want = found or (not big and suffix.startswith(b':'))
    assert ld.already_delivered(os.fsencode(tmp_path), name) == want


def test_a_repeat_syncs_new_before_it_counts(home, tmp_path):
    """An attempt killed between its link into new/ and the fsync of
    new/ leaves a name that a power cut can take away: the retry that
    finds it syncs the directory before reporting the delivery done."""
    md, mess = queued(home, tmp_path, b'Subject: synced\n\nbody\n')
    fd = os.open(mess, os.O_RDONLY)
    assert home.run(stdin=fd)[0] == 0
    synced = tmp_path / 'synced'
    assert home.run(stdin=fd, setup=recording_dir_syncs(synced))[0] == 0
    os.close(fd)
    assert b'./Maildir/new' in synced.read_bytes().split(b'\n')
    assert len(os.listdir(md / 'new')) == 1


def test_a_failed_sync_of_new_leaves_the_file_for_the_retry(home, tmp_path):
    """The fsync of new/ failing: not delivered (111), but the file, whole,
    stays; taken back, it could vanish under an attempt that had just
    counted it delivered.  The retry finds it, syncs, and is done."""
    md, mess = queued(home, tmp_path, b'Subject: eio\n\nbody\n')

    def failing():
        from qmail.lib import durable

        def fsync_dir(path):
            raise OSError(5, 'Input/output error')
        durable.fsync_dir = fsync_dir
    fd = os.open(mess, os.O_RDONLY)
    assert home.run(stdin=fd, setup=failing)[0] == 111
    assert len(os.listdir(md / 'new')) == 1
    assert home.run(stdin=fd)[0] == 0
    os.close(fd)
    name, = os.listdir(md / 'new')
    assert (md / 'new' / name).read_bytes().endswith(b'Subject: eio\n\nbody\n')


def test_recipients_differing_only_where_delivered_to_hides_it(home, tmp_path):
    """Delivered-To makes a line break '_': two recipients that differ
    only there still get a copy each (qmail wrote two); the same one
    again still gets none."""
    md, mess = queued(home, tmp_path, b'Subject: two\n\nbody\n')
    fd = os.open(mess, os.O_RDONLY)
    try:
        for loc in (b'u-dup\n', b'u-dup_', b'u-dup\n'):
            code, report = home.run(stdin=fd, loc=loc)
            assert code == 0, report
    finally:
        os.close(fd)
    assert len(os.listdir(md / 'new')) == 2


@pytest.mark.parametrize('sender', [b'god@heaven.af.mil', b'god\n@heaven.af.mil'])
def test_a_plain_recipient_keeps_the_name_it_had(home, tmp_path, sender):
    """Only a recipient with a line break adds to the name's digest: for
    any other (whatever the sender) the name is the one an older
    qmail-local gave, so a retry after an upgrade finds its file."""
    import hashlib
    md, mess = queued(home, tmp_path, b'Subject: plain\n\nbody\n')
    fd = os.open(mess, os.O_RDONLY)
    try:
        code, report = home.run(stdin=fd, sender=sender)
    finally:
        os.close(fd)
    assert code == 0, report
    name, = os.listdir(md / 'new')
    data = (md / 'new' / name).read_bytes()
    head = b''.join(data.splitlines(keepends=True)[:2])
    assert head.startswith(b'Return-Path: ') and b'\nDelivered-To: ' in head
    st = os.stat(mess)
    host = name.split('.', 2)[2].encode()
    assert name.encode() == ld.maildir_name((st.st_ino, st.st_mtime_ns), head, 1,
                                            host, hashlib.sha256(mess.read_bytes()).digest())
