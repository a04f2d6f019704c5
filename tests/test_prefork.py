"""qmail.lib.prefork: workers take turns on one socket, retire after
max_use connections or when the handler says so, are replaced when they
die, never exceed the limit, and go when the pool stops."""

import os
import signal
import socket
import time

import pytest

from qmail.lib import prefork

TIMEOUT = 20


def start_pool(tmp_path, limit, spare, max_use, hold=0.0, report=True):
    """A pool in a forked child: each connection gets 'pid\\n'.  A
    connection sending 'x' retires its worker; 'k' kills it."""
    path = str(tmp_path / 'sock')
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(50)
    statuses = str(tmp_path / 'status')

    def handle(conn, addr):
        conn.sendall(b'%d\n' % os.getpid())
        what = conn.recv(1)
        time.sleep(hold)
        conn.close()
        if what == b'k':
            os.kill(os.getpid(), signal.SIGKILL)
        return what != b'x'

    def status(busy, total):
        with open(statuses, 'a') as f:
            f.write('%d/%d\n' % (busy, total))

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            pool = prefork.Pool(s, handle, limit, spare=spare, max_use=max_use,
                                status=status if report else None)
            signal.signal(signal.SIGTERM, lambda *a: pool.stop())
            pool.serve()
            code = 0
        finally:
            os._exit(code)
    s.close()
    return pid, path, statuses


def ask(path, what=b'.'):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(TIMEOUT)
    c.connect(path)
    pid = int(c.makefile('rb').readline())
    c.sendall(what)
    c.recv(1)
    c.close()
    return pid


def stop(pid):
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail('pool did not stop')


def workers_of(pid):
    out = []
    for p in os.listdir('/proc'):
        if p.isdigit():
            try:
                with open('/proc/%s/stat' % p) as f:
                    if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                        out.append(int(p))
            except OSError:
                pass
    return out


@pytest.mark.parametrize('report', [True, False])
def test_reuse_and_retirement(tmp_path, report):
    """A retired or killed worker's slot is free again for its
    replacement (limit 1: one slot in all)."""
    pid, path, _ = start_pool(tmp_path, limit=1, spare=1, max_use=3, report=report)
    try:
        got = [ask(path) for _ in range(7)]
        # one worker at a time, each serving 3 connections
        assert got[0] == got[1] == got[2] != got[3] == got[4] == got[5] != got[6]
        first = ask(path, b'x')           # the handler retires its worker
        assert ask(path) != first
        victim = ask(path, b'k')          # killed: replaced
        assert ask(path) != victim
    finally:
        stop(pid)


@pytest.mark.parametrize('report', [True, False])
def test_spare_workers_and_limit(tmp_path, report):
    """With status reports the parent hears of every start and end of a
    connection; without, only from a worker that leaves fewer than
    spare idle (the scoreboard tells the rest): the same workers."""
    pid, path, statuses = start_pool(tmp_path, limit=3, spare=2, max_use=100, hold=0.5,
                                     report=report)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(workers_of(pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        assert len(workers_of(pid)) == 2          # spare, no more
        conns = []
        for _ in range(5):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(TIMEOUT)
            c.connect(path)
            conns.append(c)
        time.sleep(1.0)
        assert len(workers_of(pid)) == 3          # the limit
        for c in conns:
            assert int(c.makefile('rb').readline()) > 0
            c.sendall(b'.')
        for c in conns:
            c.close()
        if report:
            assert '3/3' in open(statuses).read()
        else:
            assert not os.path.exists(statuses)
        idle = workers_of(pid)
    finally:
        stop(pid)
    # stopping ends the idle workers too
    deadline = time.monotonic() + TIMEOUT
    while any(os.path.exists('/proc/%d' % w) for w in idle) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in idle if os.path.exists('/proc/%d' % w)]


def status_lines(statuses):
    try:
        with open(statuses) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def wait_lines(statuses, count):
    """Until the status file has count lines (a worker reports its
    return to idle after the client saw the connection close)."""
    deadline = time.monotonic() + TIMEOUT
    while len(status_lines(statuses)) < count:
        assert time.monotonic() < deadline, status_lines(statuses)
        time.sleep(0.01)


def test_status_from_workers_and_parent(tmp_path):
    """Each start and end of a connection reports the busy count, from
    the worker that made the change; the parent reports the first count
    (before any worker's) and a worker that died busy."""
    pid, path, statuses = start_pool(tmp_path, limit=3, spare=1, max_use=100)
    try:
        wait_lines(statuses, 1)
        for n in range(4):
            ask(path)
            wait_lines(statuses, 1 + 2 * (n + 1))
        ask(path, b'k')                   # killed while busy
        wait_lines(statuses, 1 + 2 * 5)
        time.sleep(0.3)
        got = status_lines(statuses)
    finally:
        stop(pid)
    # the parent's first count; 4 connections' start and end; the killed
    # worker's start (by itself) and end (by the parent, after its death)
    assert got == ['0/3'] + ['1/3', '0/3'] * 5, got


def switches(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('voluntary_ctxt_switches:'):
                return int(line.split()[1])
    raise AssertionError('no voluntary_ctxt_switches')


def test_status_reports_leave_the_parent_asleep(tmp_path):
    """With status reports too, a connection wakes the parent only when
    idle workers run short: 40 connections one after another (each
    worker back to idle before the next), not 80 wake-ups (the parent's
    own poll ends once a second)."""
    pid, path, statuses = start_pool(tmp_path, limit=3, spare=1, max_use=1000)
    try:
        wait_lines(statuses, 1)
        for n in range(5):
            ask(path)                     # the pool at its working size
            wait_lines(statuses, 1 + 2 * (n + 1))
        time.sleep(0.2)
        before = switches(pid)
        t0 = time.monotonic()
        for n in range(40):
            ask(path)
            wait_lines(statuses, 1 + 2 * (5 + n + 1))
        woken = switches(pid) - before
        seconds = time.monotonic() - t0
    finally:
        stop(pid)
    assert woken <= 2 + 2 * seconds, (woken, seconds)


@pytest.mark.parametrize('state, logged', [(prefork.BUSY, True), (prefork.IDLE, False)])
def test_a_killed_worker_gets_an_end_line_only_if_it_was_serving(monkeypatch, state, logged):
    """tcpserver's "end PID status S" closes a connection's "pid PID
    from" line: written by the parent for a worker killed during one
    (busy on the scoreboard); an idle worker killed has none to close,
    and an end line of its own confused scripts pairing them."""
    lines = []
    pool = prefork.Pool(None, None, 4, log=lambda level, text: lines.append(text))
    pool.board = bytearray([prefork.FREE] * 4)
    pool.board[2] = state
    pool.workers[4321] = 2
    monkeypatch.setattr(prefork, 'reaped', lambda: [(4321, signal.SIGKILL)])
    pool.reap()
    assert lines == (['end 4321 status 9'] if logged else [])
    assert pool.board[2] == prefork.FREE and pool.free == [2] and pool.workers == {}


def test_fork_failures_in_a_row_are_said_less_and_less(monkeypatch):
    """A process limit reached (softlimit -p) while idle: 'unable to fork'
    every 2 s, for good (found by a review of resource limits).  Now at
    the first failure, the 10th, 100th ... in a row, and once it works."""
    import errno
    lines = []
    pool = prefork.Pool(None, None, 4, spare=1, log=lambda level, text: lines.append(text))
    pool.board = bytearray([prefork.FREE] * 4)
    pool.free = [3, 2, 1, 0]
    monkeypatch.setattr(prefork.time, 'sleep', lambda s: None)

    def refused():
        raise OSError(errno.EAGAIN, 'Resource temporarily unavailable')
    monkeypatch.setattr(prefork.os, 'fork', refused)
    for _ in range(120):
        pool.grow()
    assert lines == ['warning: unable to fork: Resource temporarily unavailable',
                     'warning: unable to fork: Resource temporarily unavailable (10 times in a row)',
                     'warning: unable to fork: Resource temporarily unavailable (100 times in a row)']
    monkeypatch.setattr(prefork.os, 'fork', lambda: 4321)      # (the parent's side)
    pool.grow()
    assert lines[-1] == 'warning: able to fork again, after 120 failures'
    assert pool.workers == {4321: 0} and pool.fork_failures == 0


def test_before_fork_runs_once_a_batch_and_its_trouble_is_ignored(monkeypatch):
    """before_fork() in the parent (qmail-listen's reading of the control
    files its workers will share): once before each batch of forks, none
    when no worker is wanted; an exception from it forks all the same."""
    calls = []

    def before():
        calls.append(1)
        if len(calls) == 2:
            raise OSError('unreadable')
    pool = prefork.Pool(None, None, 4, spare=2, before_fork=before)
    pool.board = bytearray([prefork.FREE] * 4)
    pool.free = [3, 2, 1, 0]
    pids = iter(range(1000, 1010))
    monkeypatch.setattr(prefork.os, 'fork', lambda: next(pids))    # (the parent's side)
    pool.grow()
    assert calls == [1] and len(pool.workers) == 2
    pool.grow()                         # two idle: nothing wanted
    assert calls == [1]
    pool.board[pool.workers[1000]] = prefork.BUSY
    pool.grow()
    assert calls == [1, 1] and len(pool.workers) == 3
