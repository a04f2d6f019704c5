"""The tmp/ file a qmail-lspawn worker makes ahead of its next maildir
delivery (local_deliver.Spare): used only where it fits and is still
ours, never left behind by a worker that goes."""

import array
import os
import select
import socket
import time

import pytest

from qmail import local
from qmail import local_deliver as ld
from qmail.lib import auto, spawn
from test_local import HOST, SENDER, USER, Home

WAIT = 10


@pytest.fixture
def home(tmp_path):
    return Home(tmp_path)


def made(spare, md):
    """A spare made in maildir md, as a worker does after a delivery."""
    spare.delivered(os.fsencode(md), os.stat(md), HOST)
    spare.prepare()
    names = os.listdir(md / 'tmp')
    assert len(names) == 1 and spare.count() == 1
    return md / 'tmp' / names[0]


def test_nothing_is_made_before_a_delivery(home):
    md = home.maildir()
    spare = ld.Spare()
    spare.prepare()
    assert os.listdir(md / 'tmp') == [] and spare.count() == 0


def test_the_spare_is_an_empty_file_in_tmp_that_fits_its_maildir(home):
    md = home.maildir()
    spare = ld.Spare()
    path = made(spare, md)
    assert path.stat().st_size == 0
    fd, unique = spare.take(os.fsencode(md), os.stat(md), HOST)
    assert unique == os.fsencode(path.name) and spare.count() == 0
    assert os.fstat(fd).st_ino == path.stat().st_ino
    os.close(fd)


@pytest.mark.parametrize('other', ['maildir', 'host'])
def test_a_spare_that_does_not_fit_is_removed(home, other):
    md = home.maildir()
    md2 = home.maildir('Other')
    spare = ld.Spare()
    path = made(spare, md)
    if other == 'maildir':
        got = spare.take(os.fsencode(md2), os.stat(md2), HOST)
    else:
        got = spare.take(os.fsencode(md), os.stat(md), b'renamed.example.org')
    assert got is None and spare.count() == 0
    assert not path.exists()


def test_a_spare_written_to_is_not_used(home):
    md = home.maildir()
    spare = ld.Spare()
    path = made(spare, md)
    path.write_bytes(b'someone else')
    assert spare.take(os.fsencode(md), os.stat(md), HOST) is None
    assert not path.exists()


def test_a_name_that_is_no_longer_the_spare_is_left_alone(home):
    md = home.maildir()
    spare = ld.Spare()
    path = made(spare, md)
    path.unlink()
    path.write_bytes(b'')                   # another file, at the same name
    assert spare.take(os.fsencode(md), os.stat(md), HOST) is None
    assert path.exists()
    path.unlink()
    path = made(spare, md)
    path.unlink()
    path.write_bytes(b'')
    spare.release()
    assert path.exists() and spare.count() == 0


def test_release_removes_the_spare(home):
    md = home.maildir()
    spare = ld.Spare()
    made(spare, md)
    spare.release()
    assert os.listdir(md / 'tmp') == [] and spare.count() == 0
    spare.release()                         # none held: nothing to do


# ---- in a worker, as qmail-lspawn runs them ----------------------------------

def start_worker(home):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 111
        try:
            ours.close()
            os.environ.pop('QMAILQUEUE', None)
            auto.QMAIL = str(home.qmail)
            code = spawn.worker_main(theirs, None, lambda f: local.main(list(f)),
                                     None, ld.SPARE)
        finally:
            os._exit(code)
    theirs.close()
    return pid, ours


def deliver(sock, home, body: bytes):
    mess = home.tmp / 'mess'
    mess.write_bytes(body)
    fdm = os.open(mess, os.O_RDONLY)
    fdr = os.open(home.tmp / 'report', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fields = [USER, os.fsencode(home.path), USER, b'', b'', HOST, SENDER, b'./Mailbox']
    sock.sendmsg([b'\0'.join(fields)],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [fdm, fdr]))])
    os.close(fdm)
    os.close(fdr)
    assert select.select([sock], [], [], WAIT)[0], 'no answer from the worker'
    return spawn.ANSWER.unpack(sock.recv(spawn.ANSWER.size))


def wait_until(what, check):
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail('waited %d s for %s' % (WAIT, what))
        time.sleep(0.01)


def test_a_worker_delivers_into_the_file_it_made_ahead(home):
    md = home.maildir()
    home.write('.qmail', b'./Maildir/\n')
    pid, sock = start_worker(home)
    try:
        assert deliver(sock, home, b'Subject: one\n\nbody\n') == (0, 1)
        wait_until('the spare', lambda: len(os.listdir(md / 'tmp')) == 1)
        name, = os.listdir(md / 'tmp')
        held = os.open(md / 'tmp' / name, os.O_RDONLY)    # (its inode stays its own)
        try:
            # Held between deliveries, and no leaked descriptor: kept (1).
            assert deliver(sock, home, b'Subject: two\n\nbody\n') == (0, 1)
            st = os.fstat(held)
            assert st.st_nlink == 1 and os.pread(held, 4096, 0).endswith(b'Subject: two\n\nbody\n')
            second = [n for n in os.listdir(md / 'new')
                      if os.stat(md / 'new' / n).st_ino == st.st_ino]
            assert len(second) == 1
        finally:
            os.close(held)
        wait_until('the next spare', lambda: len(os.listdir(md / 'tmp')) == 1)
        assert os.listdir(md / 'tmp') != [name]
    finally:
        sock.close()                        # told to go
        deadline = time.monotonic() + WAIT
        while os.waitpid(pid, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail('the worker did not go')
            time.sleep(0.01)
    assert os.listdir(md / 'tmp') == []
    assert len(os.listdir(md / 'new')) == 2
