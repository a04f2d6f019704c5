"""qmail-queued's serve(): a bug in the pool's parent restarts the pool
instead of leaving the daemon down until qmail-send's restart."""

import signal

import pytest

from qmail import queued


@pytest.fixture(autouse=True)
def keep_term():
    """serve() sets a TERM handler: the test process gets its own back."""
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


class FakePool:
    runs = []

    def __init__(self, sock, handle, limit, spare, max_use, log=None, child_init=None):
        self.stopped = False

    def stop(self):
        self.stopped = True

    def serve(self, watch):
        FakePool.runs.append(self)
        if len(FakePool.runs) == 1:
            raise TypeError('a bug')
        return None


def test_a_failed_pool_is_started_again(monkeypatch, capfd):
    FakePool.runs = []
    pauses = []
    monkeypatch.setattr(queued.prefork, 'Pool', FakePool)
    monkeypatch.setattr(queued, 'watch_fd0', lambda: False)
    monkeypatch.setattr(queued.durable, 'load_writeback', lambda: None)
    monkeypatch.setattr(queued.time, 'sleep', pauses.append)
    assert queued.serve(None, {}) == 0
    assert len(FakePool.runs) == 2 and FakePool.runs[0] is not FakePool.runs[1]
    assert pauses == [queued.RESTART_PAUSE]
    # fd 2 is qmail-send's log (qmail-start's fd 1): it says why
    assert capfd.readouterr().err == ('warning: qmail-queued: writers failed: '
                                      'TypeError (a bug); starting them again\n')


def test_term_in_the_pause_ends_the_daemon(monkeypatch):
    """TERM between a failed pool and the next: no next."""
    FakePool.runs = []
    monkeypatch.setattr(queued.prefork, 'Pool', FakePool)
    monkeypatch.setattr(queued, 'watch_fd0', lambda: False)
    monkeypatch.setattr(queued.durable, 'load_writeback', lambda: None)
    monkeypatch.setattr(queued.time, 'sleep',
                        lambda s: signal.getsignal(signal.SIGTERM)(15, None))
    assert queued.serve(None, {}) == 0
    assert len(FakePool.runs) == 1


def test_a_pool_failing_again_and_again_ends_the_daemon(monkeypatch, capfd):
    """Clients then find nobody at the socket and fall back at once,
    rather than wait on a socket no writer serves."""
    FakePool.runs = []
    monkeypatch.setattr(queued.prefork, 'Pool', FakePool)
    monkeypatch.setattr(queued, 'watch_fd0', lambda: False)
    monkeypatch.setattr(queued.durable, 'load_writeback', lambda: None)
    monkeypatch.setattr(queued.time, 'sleep', lambda s: None)

    def serve(self, watch):
        FakePool.runs.append(self)
        raise TypeError('a bug')
    monkeypatch.setattr(FakePool, 'serve', serve)
    assert queued.serve(None, {}) == 111
    assert len(FakePool.runs) == queued.RESTARTS
    said = capfd.readouterr().err.splitlines()
    assert said[-1] == ('alert: qmail-queued: writers failed 5 times within 60 seconds, '
                        'the last: TypeError (a bug)')
    assert len(said) == queued.RESTARTS


def test_a_qp_fits_a_signed_32_bit_number():
    assert queued.qp_for((1 << 22) - 1, queued.MAX_USE - 1) < 1 << 31


def test_a_pool_failing_while_stopping_is_not_restarted(monkeypatch):
    FakePool.runs = []
    monkeypatch.setattr(queued.prefork, 'Pool', FakePool)
    monkeypatch.setattr(queued, 'watch_fd0', lambda: False)
    monkeypatch.setattr(queued.durable, 'load_writeback', lambda: None)

    def serve(self, watch):
        FakePool.runs.append(self)
        queued.signal.getsignal(queued.signal.SIGTERM)(15, None)    # TERM came
        raise TypeError('a bug')
    monkeypatch.setattr(FakePool, 'serve', serve)
    with pytest.raises(TypeError):
        queued.serve(None, {})
    assert len(FakePool.runs) == 1 and FakePool.runs[0].stopped


def test_each_injection_of_a_writer_has_its_own_qp(tmp_path, monkeypatch):
    """A writer serves many injections: the first gets its pid as qp (in
    the answer, the envelope's p and the Received line), the n-th
    pid + n * 2^22, so a qp names one injection as a pid did."""
    import array
    import os
    import socket
    from qmail import queue
    from qmail.lib import auto, qfile
    for d in ['pid', 'intd', 'todo'] + ['mess/%d' % i for i in range(auto.SPLIT)]:
        os.makedirs(tmp_path / d)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(queue, 'triggerpull', lambda: None)
    handle = queued.make_handler({'alias': -1, 'daemon': -1, 'send': -1})
    qps = []
    for n in range(3):
        ours, theirs = socket.socketpair()
        msg_r, msg_w = os.pipe()
        env_r, env_w = os.pipe()
        os.write(msg_w, b'Subject: %d\n\nbody\n' % n)
        os.write(env_w, b'Fa@b\0Tc@d\0\0')
        os.close(msg_w)
        os.close(env_w)
        ours.sendmsg([b'Q'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               array.array('i', [msg_r, env_r]))])
        os.close(msg_r)
        os.close(env_r)
        assert handle(theirs, None) is True
        answer = ours.recv(64)
        ours.close()
        line, code = answer.split(b'\n')
        assert code == b'\0'
        qps.append(int(line))
    pid = os.getpid()
    assert qps == [pid, pid + (1 << 22), pid + (2 << 22)]
    seen = set()
    for name in os.listdir('todo'):
        env = open(os.path.join('todo', name), 'rb').read()
        p = int(env.split(b'\0')[1][1:])
        body = open(qfile.qfn('mess', int(name), auto.SPLIT), 'rb').read()
        assert body.startswith(b'Received: (qmail %d invoked ' % p), body
        seen.add(p)
    assert seen == set(qps)


def test_a_user_holds_at_most_per_uid_writers(tmp_path, monkeypatch):
    """One user's injections at once are capped (a local user could hold
    every writer, each waiting for its descriptors or its message, and
    every injection then waited 5 s before bin/qmail-queue); root and
    the MTA's users are not counted; a place whose writer died is taken
    back."""
    import os
    monkeypatch.chdir(tmp_path)
    cap = queued.UidCap({0, 71}, places=8, per_uid=3)
    assert [cap.take(1001) for _ in range(3)] == [0, 1, 2]
    assert cap.take(1001) is None                     # a fourth: refused
    assert cap.take(1002) == 3                        # another user: room
    assert cap.take(0) == -1 and cap.take(71) == -1   # never counted
    cap.give(1)
    assert cap.take(1001) == 1
    # a place held by a writer that died is free again when it counts
    pid = os.fork()
    if pid == 0:
        os._exit(0 if cap.take(1003) is not None else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert [cap.take(1003) for _ in range(3)] == [4, 5, 6]



def test_dead_writers_places_come_back_for_every_user(tmp_path, monkeypatch):
    """Writers that died holding places (DEATH's exit skips give()) do
    not add up: the next take(), by anyone, frees them; they were freed
    only when their own user came back."""
    import os
    monkeypatch.chdir(tmp_path)
    cap = queued.UidCap(set(), places=6, per_uid=3)
    for uid in (2001, 2002):
        pid = os.fork()
        if pid == 0:
            got = [cap.take(uid) for _ in range(3)]
            os._exit(0 if None not in got else 1)
        assert os.waitpid(pid, 0)[1] == 0
    # every place is a dead writer's; a third user still gets in
    assert [cap.take(2003) for _ in range(3)] == [0, 1, 2]


def test_a_client_silent_after_connecting_frees_its_writer(tmp_path, monkeypatch):
    """The byte and the descriptors must come within HELLO seconds: a
    client that connects and sends nothing held a writer for 24 hours."""
    import socket
    import time
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(queued, 'HELLO', 0.2)
    ours, theirs = socket.socketpair()
    try:
        t0 = time.monotonic()
        assert queued.writer(theirs, {}, 1, None) == 54
        assert time.monotonic() - t0 < 5
    finally:
        ours.close()
        theirs.close()


UIDS = {'alias': -1, 'daemon': -1, 'send': -1}


def queue_dirs(tmp_path, monkeypatch):
    import os
    from qmail import queue
    from qmail.lib import auto
    for d in ['pid', 'intd', 'todo'] + ['mess/%d' % i for i in range(auto.SPLIT)]:
        os.makedirs(tmp_path / d)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(queue, 'triggerpull', lambda: None)


def pipes_holding(message: bytes, envelope: bytes):
    """(message, envelope): read ends of pipes holding them, written whole."""
    import os
    ends = []
    for data in (message, envelope):
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        ends.append(r)
    return ends


def hand_over(sock, fds):
    import array
    import socket
    sock.sendmsg([b'Q'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', fds))])


@pytest.mark.parametrize('stage', ['message', 'envelope'])
def test_a_client_gone_frees_a_writer_whose_input_never_ends(tmp_path, monkeypatch, stage):
    """A local user handed over both ends of one pipe (the writer then
    holds the write end itself: no end of file) and went away: the
    writer was held until DEATH, 24 hours, and four users held all
    MAX_WRITERS.  Now the injection ends (54, nothing queued) once the
    client is gone and nothing is left to read."""
    import os
    import socket
    import time
    queue_dirs(tmp_path, monkeypatch)
    ours, theirs = socket.socketpair()
    r, w = os.pipe()
    if stage == 'message':
        fds = [r, os.dup(w)]
    else:
        os.write(w, b'Subject: x\n\nbody\n')
        os.close(w)
        env_r, env_w = os.pipe()
        os.write(env_w, b'Fa@b\0Tc@d\0')      # no final NUL
        fds, w = [r, env_r], env_w
    hand_over(ours, fds)
    for fd in fds:
        os.close(fd)
    pid = os.fork()
    if pid == 0:                # the writer, in a child: without the
        code = 81               # watch it would wait for DEATH
        try:
            ours.close()
            code = queued.writer(theirs, UIDS, 1, None)
        finally:
            os._exit(code)
    theirs.close()
    time.sleep(0.3)
    ours.close()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, wstat = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail('the writer still waits for its input')
    finally:
        os.close(w)
    assert os.waitstatus_to_exitcode(wstat) == 54
    assert os.listdir('todo') == [] and os.listdir('intd') == []


def test_a_client_that_half_closes_its_socket_is_still_served(tmp_path, monkeypatch):
    """shutdown(SHUT_WR) is no hang-up: the client still waits for its
    answer, writing its message after it."""
    import os
    import socket
    import threading
    import time
    queue_dirs(tmp_path, monkeypatch)
    ours, theirs = socket.socketpair()
    msg_r, msg_w = os.pipe()
    env_r, env_w = os.pipe()
    hand_over(ours, [msg_r, env_r])
    os.close(msg_r)
    os.close(env_r)
    answer = []

    def client():
        ours.recv(64)
        ours.shutdown(socket.SHUT_WR)
        for piece in (b'Subject: x\n', b'\n', b'body\n'):
            time.sleep(0.05)
            os.write(msg_w, piece)
        os.close(msg_w)
        os.write(env_w, b'Fa@b\0Tc@d\0\0')
        os.close(env_w)
        answer.append(ours.recv(1))
        ours.close()
    t = threading.Thread(target=client)
    t.start()
    try:
        assert queued.writer(theirs, UIDS, 1, None) == 0
    finally:
        theirs.close()
        t.join(10)
    assert answer == [b'\0'] and len(os.listdir('todo')) == 1


def test_a_client_gone_after_its_last_byte_is_still_queued(tmp_path, monkeypatch):
    """What is there to read is read: a client that wrote everything and
    died before the answer has its message queued, as qmail-queue goes
    on after its caller's death."""
    import os
    import socket
    import threading
    queue_dirs(tmp_path, monkeypatch)
    ours, theirs = socket.socketpair()
    msg_r, env_r = pipes_holding(b'Subject: x\n\nbody\n', b'Fa@b\0Tc@d\0\0')
    hand_over(ours, [msg_r, env_r])
    os.close(msg_r)
    os.close(env_r)
    # (as a real client, it goes only after the writer's pid line)
    threading.Thread(target=lambda: (ours.recv(64), ours.close())).start()
    try:
        assert queued.writer(theirs, UIDS, 1, None) == 0
    finally:
        theirs.close()
    assert len(os.listdir('todo')) == 1


def test_a_client_waits_for_a_pool_held_whole_only_so_long(tmp_path, monkeypatch):
    """Every writer busy (sessions parked in DATA hold theirs): a client
    waited 5 s before bin/qmail-queue, qmail-send's loop for each bounce.
    Now the wait it is given (DAEMON_WAIT, 1 s; qmail-send a quarter)."""
    import os
    import socket
    import time
    from qmail.lib import auto, qqtalk
    (tmp_path / 'run').mkdir()
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path))
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.bind(str(tmp_path / 'run' / 'qmail-queue.sock'))
    held.listen(5)                  # no writer ever accepts
    pim, pie = os.pipe(), os.pipe()
    try:
        t0 = time.monotonic()
        assert qqtalk.connect_daemon(pim, pie, 0.2) is None
        assert time.monotonic() - t0 < 3
    finally:
        held.close()
        for fd in pim + pie:
            os.close(fd)
    assert qqtalk.DAEMON_WAIT <= 1
