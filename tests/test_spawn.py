"""The spawn loop's framing and the spawns' reports."""

import errno
import os

import pytest

from qmail import clean, lspawn, rspawn
from qmail.lib import spawn
from qmail.lib.qlx import QLX_CDB, QLX_ROOT, QLX_EXECHARD


def test_command_parser_splits_any_way():
    stream = b'\x05' + b'3/457\0a@b\0c@d\0' + b'\x00' + b'1/2\0\0e@f\0'
    want = [(5, b'3/457', b'a@b', b'c@d'), (0, b'1/2', b'', b'e@f')]
    for step in (1, 2, 7, len(stream)):
        p = spawn.CommandParser()
        got = []
        for i in range(0, len(stream), step):
            got += p.feed(stream[i:i + step])
        assert got == want, 'step %d: got %r' % (step, got)


@pytest.mark.parametrize('messid, bad', [
    (b'3/457', False), (b'457', False), (b'/457', True), (b'3/45a', True),
    (b'', True), (b'1' * 101, True), (b'../x', True),
])
def test_check_messid(messid, bad):
    assert (spawn.check_messid(messid) is not None) == bad


def status(code=None, signal=None):
    return signal if signal is not None else code << 8


@pytest.mark.parametrize('wstat, output, want', [
    (status(0), b'did 0+0+1/\n', b'Kdid 0+0+1/\n'),
    (status(111), b'Temporary trouble.\n', b'ZTemporary trouble.\n'),
    (status(100), b'Sorry, no mailbox.\n\0junk', b'DSorry, no mailbox.\n'),
    (status(42), b'odd\n', b'Dodd\n'),
    (status(QLX_CDB), b'', b'ZTrouble reading users/cdb in qmail-lspawn.\n'),
    (status(QLX_ROOT), b'', b'ZNot allowed to perform deliveries as root.\n'),
    (status(QLX_EXECHARD), b'', b'DUnable to run qmail-local.\n'),
    (status(signal=9), b'', b'Zqmail-local crashed.\n'),
])
def test_lspawn_report(wstat, output, want):
    assert lspawn.report(wstat, output) == want


@pytest.mark.parametrize('wstat, output, want', [
    (status(0), b'rjoe@x accepted.\0Kgreat.\0', b'Kjoe@x accepted.great.'),
    (status(0), b'hNo such user.\0DGiving up.\0', b'DNo such user.Giving up.'),
    (status(0), b'sMailbox busy.\0ZTry later.\0', b'ZMailbox busy.Try later.'),
    (status(0), b'rok\0DConnection broke.\0', b'DokConnection broke.'),
    (status(0), b'', b'Zqmail-remote produced no output.\n'),
    (status(111), b'', b'ZUnable to run qmail-remote.\n'),
    (status(5), b'', b'DUnable to run qmail-remote.\n'),
    (status(signal=11), b'', b'Zqmail-remote crashed.\n'),
])
def test_rspawn_report(wstat, output, want):
    got = rspawn.report(wstat, output)
    assert got == want, 'got %r want %r' % (got, want)


def test_truncate_report():
    out = bytearray(b'x' * 5000)
    spawn.truncate(out, 3000)
    assert len(out) == 3000 - 3 and out.endswith(b'\nError report too long, sorry.\n')


@pytest.mark.parametrize('req, want', [
    (b'foop/457', ('foop', 457)), (b'todo/1', ('todo', 1)),
    (b'todo/', None), (b'info/457', None), (b'foop/45x', None),
    (b'foop/' + b'1' * 200, None),
])
def test_clean_requests(req, want):
    assert clean.parse_request(req) == want


def test_clean_serve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for d in ('intd', 'todo', 'pid', 'mess/3'):
        os.makedirs(d)
    for f in ('intd/26', 'todo/26', 'mess/3/26'):
        open(f, 'w').close()
    old = 'pid/1.2.1'
    open(old, 'w').close()
    os.utime(old, (1000, 1000))
    rin, win = os.pipe()
    rout, wout = os.pipe()
    os.write(win, b'todo/26\0foop/26\0junk\0foop/99\0')
    os.close(win)
    assert clean.serve(rin, wout, 23) == 0
    assert os.read(rout, 10) == b'++x+'
    assert sorted(os.listdir('intd') + os.listdir('todo') + os.listdir('mess/3')) == []
    assert os.listdir('pid') == []


def test_clean_answers_an_overlong_request_once(tmp_path, monkeypatch):
    """A request longer than its buffer holds, arriving in several reads:
    one answer, x, then the next request's; qmail-send pairs answers
    with requests in order (its tail was taken as more requests)."""
    import threading
    monkeypatch.chdir(tmp_path)
    for d in ('intd', 'todo', 'pid'):
        os.makedirs(d)
    rin, win = os.pipe()
    rout, wout = os.pipe()
    t = threading.Thread(target=lambda: (os.write(win, b'A' * 2148 + b'\0todo/1\0'),
                                         os.close(win)))
    t.start()
    assert clean.serve(rin, wout, 23) == 0
    t.join(10)
    assert os.read(rout, 64) == b'x+'


def test_clean_sweeps_an_intd_whose_message_is_gone(tmp_path, monkeypatch):
    """A crash can leave intd/N after mess/N's removal became durable:
    qmail-clean (intd/ is qmailq's) removes it once OSSIFIED old, and
    leaves a young one, and one whose message lives."""
    import time
    from qmail.lib.qfile import qfn
    monkeypatch.chdir(tmp_path)
    os.mkdir('intd')
    for i in range(3):
        os.makedirs('mess/%d' % i)
    old = time.time() - clean.OSSIFIED - 100
    for messid in (21, 22, 23):
        with open('intd/%d' % messid, 'wb') as f:
            f.write(b'u0\0p1\0Fa@b\0Tx@y\0')
    os.utime('intd/21', (old, old))     # orphan, old: removed
    os.utime('intd/23', (old, old))     # old, but its message lives
    open(qfn('mess', 23, 3), 'wb').close()
    clean.sweep_intd(time.time(), 3)
    assert sorted(os.listdir('intd')) == ['22', '23']


@pytest.mark.parametrize('name', ['\u00b2', '\u0663', '9' * 5000])
def test_clean_sweep_passes_by_a_name_that_is_no_message_number(tmp_path, monkeypatch, name):
    """str.isdigit() takes '²' and Arabic digits, which int() refuses, and
    int() refuses over 4300 digits: such an old file in intd/ killed
    qmail-clean at each start (and qmail-send with it).  Not ours: left."""
    import time
    monkeypatch.chdir(tmp_path)
    os.mkdir('intd')
    os.makedirs('mess/0')
    old = time.time() - clean.OSSIFIED - 100
    path = 'intd/' + name[:200]
    open(path, 'wb').close()
    os.utime(path, (old, old))
    clean.sweep_intd(time.time(), 1)
    assert os.listdir('intd') == [name[:200]]


@pytest.mark.parametrize('age, kept', [(10, True), (spawn.MAX_AGE + 1, False)])
def test_a_delivery_worker_past_its_age_retires(age, kept):
    """A worker set up once (a user's groups, gid and uid) is kept for
    the next delivery of its key only until MAX_AGE: then a new one
    takes the user's groups as they are now."""
    import socket
    import time

    class Spawner:
        watch = {}
        done = []

        def finish(self, delnum, wstat):
            self.done.append((delnum, wstat))
    workers = spawn.Workers(Spawner(), None, None)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = spawn.Worker(12345, ours, ('user', 1000, 1000))
    worker.born = time.monotonic() - age
    worker.delnum = 3
    theirs.send(spawn.ANSWER.pack(0, 1))
    workers.answered(worker)
    assert Spawner.done == [(3, 0)]
    assert (workers.take(('user', 1000, 1000)) is worker) == kept
    assert (ours.fileno() != -1) == kept       # retiring closes its socket
    theirs.close()
    ours.close()


def test_an_idle_worker_past_its_age_is_not_taken():
    """A worker that went idle just before MAX_AGE is not given another
    delivery after it: take() retires it and gives a younger one, or
    none."""
    import socket
    import time

    class Spawner:
        watch = {}
    workers = spawn.Workers(Spawner(), None, None)
    key = ('user', 1000, 1000)
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    young = spawn.Worker(1, pairs[0][0], key)
    old = spawn.Worker(2, pairs[1][0], key)
    old.born = time.monotonic() - spawn.MAX_AGE - 1
    workers.idle[key] = [young, old]          # old is the one take() pops first
    workers.nidle = 2
    assert workers.take(key) is young
    assert pairs[1][0].fileno() == -1          # retired: its socket closed
    assert workers.take(key) is None and key not in workers.idle
    assert workers.nidle == 0
    old.born = time.monotonic() - spawn.MAX_AGE - 1
    workers.idle[key] = [old]
    workers.nidle = 1
    assert workers.take(key) is None and key not in workers.idle and workers.nidle == 0
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


def test_a_title_from_bytes_that_are_not_utf8_is_shown_escaped():
    from qmail.lib import proctitle
    title = 'qmail-local ' + os.fsdecode(b'j\xf6rg')
    assert proctitle.printable(title) == 'qmail-local j\\xf6rg'
    proctitle.set_title(title)              # never raises


@pytest.mark.skipif(os.geteuid() != 0, reason='workers become the user')
def test_a_user_name_that_is_not_utf8_is_delivered_as_any_other(tmp_path):
    """The worker's process title is made from the user's name: a name in
    Latin-1 (legal in users/assign) once killed every worker at birth,
    'qmail-local crashed' at each retry until the message bounced."""
    import pwd
    import select
    import time
    from qmail.lib import users
    nobody = pwd.getpwnam('nobody')

    class Slot:
        def __init__(self, fdout):
            self.fdout = fdout

    class Spawner:
        def __init__(self):
            self.watch, self.slots, self.done = {}, {}, {}

        def finish(self, delnum, wstat):
            self.done[delnum] = wstat
    sp = Spawner()
    d = lspawn.Deliveries(sp, './Mailbox\n')
    msg = tmp_path / 'msg'
    msg.write_bytes(b'Subject: x\n\nbody\n')
    fd = os.open(str(msg), os.O_RDONLY)
    pipes = {}
    try:
        for delnum, user in ((0, b'joe'), (1, b'j\xf6rg')):
            r, w = os.pipe()
            sp.slots[delnum] = Slot(w)
            n = users.Nughde(user, nobody.pw_uid, nobody.pw_gid,
                             str(tmp_path / 'nosuchhome').encode(), b'-', b'x')
            d.dispatch(n, os.dup(fd), (b'a@b.example', b'joe-x@here.example', 16, delnum, b'joe-x'))
            pipes[delnum] = r
        deadline = time.monotonic() + 20
        while len(sp.done) < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select(list(sp.watch), [], [], 0.5)
            for r in ready:
                sp.watch[r]()
        reports = []
        for delnum in (0, 1):
            os.set_blocking(pipes[delnum], False)
            try:
                out = os.read(pipes[delnum], 4096)
            except BlockingIOError:
                out = b''
            reports.append(lspawn.report(sp.done[delnum], out))
        assert reports[0] == reports[1] and b'crashed' not in reports[1], reports
    finally:
        os.close(fd)
        for delnum in list(sp.slots):
            os.close(sp.slots[delnum].fdout)
        for r in pipes.values():
            os.close(r)
        pids = []
        for workers in d.workers.idle.values():
            for worker in workers:
                pids.append(worker.pid)
                d.workers.retire(worker)        # its socket closed: it exits
        for pid in pids:
            os.waitpid(pid, 0)


def test_scan_ulong_of_thousands_of_digits():
    """Python's int() refuses over 4300 digits: a users/assign uid that
    long made qmail-lspawn exit at each delivery to that user."""
    from qmail.lib import control, users
    from qmail.lib.qlx import Qlx, QLX_USAGE
    assert control.scan_ulong(b'9' * 5000) == control.ULONG_HUGE
    assert control.scan_ulong(b'0' * 5000 + b'17:x') == 17
    assert control.scan_ulong(b'x') == 0
    with pytest.raises(Qlx) as e:
        users.parse_nughde(b'joe\0' + b'9' * 5000 + b'\0100\0/home/joe\0-\0\0')
    assert e.value.code == QLX_USAGE


def test_a_delivery_start_that_raises_defers_that_delivery_only(tmp_path, monkeypatch):
    """An exception from start() (a record no one foresaw) is that
    delivery's deferral, not the end of qmail-lspawn's loop."""
    (tmp_path / '0').mkdir()
    (tmp_path / '0' / '123').write_bytes(b'x\n')
    monkeypatch.chdir(tmp_path)
    sent = []
    sp = spawn.Spawner(lambda *a: int('9' * 5000), lambda w, o: b'', os.getuid())
    monkeypatch.setattr(sp, 'put', sent.append)
    sp.docmd(3, b'0/123', b'a@b', b'c@d.example')
    assert sent == [b'\x03ZInternal qmail-spawn bug: ValueError. (#4.3.5)\n\0']
    assert sp.slots[3] is None


@pytest.mark.parametrize('err, want', [
    (errno.EMFILE, b'Zqmail-spawn unable to create pipe: too many open files. (#4.3.0)\n'),
    (errno.EAGAIN, b'Zqmail-spawn unable to fork. (#4.3.0)\n'),
])
def test_a_delivery_start_out_of_descriptors_says_so(tmp_path, monkeypatch, err, want):
    """The worker's socket or pipe failing for want of descriptors (a
    low ulimit -n) was reported as "unable to fork"."""
    (tmp_path / '0').mkdir()
    (tmp_path / '0' / '123').write_bytes(b'x\n')
    monkeypatch.chdir(tmp_path)
    sent = []

    def start(*a):
        raise OSError(err, os.strerror(err))
    sp = spawn.Spawner(start, lambda w, o: b'', os.getuid())
    monkeypatch.setattr(sp, 'put', sent.append)
    sp.docmd(3, b'0/123', b'a@b', b'c@d.example')
    assert sent == [b'\x03' + want + b'\0']
    assert sp.slots[3] is None


def test_idle_workers_found_dead_give_way_to_a_new_one():
    """Two idle workers of a user killed (by that user): the delivery got
    "qmail-local crashed" and waited for its retry; a new worker takes it."""
    import socket

    class Slot:
        fdout = 1

    class Spawner:
        watch = {}
        slots = {7: Slot()}
    workers = spawn.Workers(Spawner(), None, None)
    key = ('user', 1000, 1000)
    dead = []
    for pid in (1, 2, 3):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.close()                          # the worker is gone
        dead.append(ours)
    workers.idle[key] = [spawn.Worker(i + 1, s, key) for i, s in enumerate(dead)]
    workers.nidle = 3
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    forked = []

    def fork(k, arg, title):
        forked.append(k)
        return spawn.Worker(99, ours, k)
    workers.fork = fork
    try:
        assert workers.run(key, None, 'qmail-local user', [b'x'], 0, 7) is None
        assert forked == [key] and workers.nidle == 0
        assert theirs.recv(64) == b'x'
        assert all(s.fileno() == -1 for s in dead)     # retired
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize('closed', [(), (0,)])
@pytest.mark.parametrize('keep', [(62, 63), (63,), (4, 3), (5, 9, 7)])
def test_a_worker_keeps_its_descriptors_at_the_descriptor_limit(keep, tmp_path, closed):
    """A worker's kept descriptors move to 3, 4, ... in keep's order.  At
    the limit (qmail-lspawn's socketpair for a new worker at its last two
    numbers, under a low ulimit -n) they were first copied above the
    highest, which is no number: EBADF, and the delivery was deferred as
    "qmail-local crashed" (found by a review of resource limits)."""
    import subprocess
    import sys
    code = (
        'import os, resource, sys\n'
        'from qmail.lib import spawn\n'
        'resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit('
        'resource.RLIMIT_NOFILE)[1]))\n'
        'keep = %r\n'
        'for i, fd in enumerate(keep):\n'
        '    os.dup2(os.open("/dev/null" if i %% 2 else "/etc/hostname", os.O_RDONLY), fd)\n'
        'want = [os.fstat(fd).st_ino for fd in keep]\n'
        'for fd in %r:\n'
        '    os.close(fd)   # a parent with stdin closed: no copy goes there\n'
        'out = spawn.fresh_child("t", keep)\n'
        'got = [os.fstat(fd).st_ino for fd in out]\n'
        'left = sorted(int(f) for f in os.listdir("/proc/self/fd"))\n'
        'with open(sys.argv[1], "w") as f:\n'
        '    print(out, got == want, left, file=f)\n' % (keep, closed))
    result = tmp_path / 'result'
    r = subprocess.run([sys.executable, '-c', code, str(result)], capture_output=True,
                       timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    n = len(keep)
    # (listdir's own descriptor is the one past the kept)
    assert result.read_text() == '%r True %r\n' % (list(range(3, 3 + n)),
                                                    list(range(3 + n + 1)))
