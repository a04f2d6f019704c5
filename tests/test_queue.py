"""qmail-queue's pure parts: the envelope framing and the Received line."""

import pytest

from qmail.queue import ADDR, EnvelopeParser, QueueExit, received_line
from qmail.lib.qfile import parse_messid, pidfn, qfn

UIDS = {'alias': 100, 'daemon': 101, 'send': 102}


def feed_all(chunks):
    p = EnvelopeParser()
    out = b''
    for c in chunks:
        out += p.feed(c)
        if p.done:
            break
    return out, p.done


@pytest.mark.parametrize('env, want', [
    (b'Fa@b\0Tc@d\0\0', b'Fa@b\0Tc@d\0'),
    (b'F\0Tc@d\0\0', b'F\0Tc@d\0'),                 # null sender
    (b'Fa@b\0\0', b'Fa@b\0'),                        # no recipients
    (b'Fa@b\0Tc@d\0Te@f\0\0trailing', b'Fa@b\0Tc@d\0Te@f\0'),
])
def test_envelope_whole(env, want):
    got, done = feed_all([env])
    assert done, 'parser did not see the end of %r' % env
    assert got == want, 'got %r want %r' % (got, want)


@pytest.mark.parametrize('env', [b'Fa@b\0Tc@d\0\0', b'F' + b'x' * 1002 + b'\0\0'])
def test_envelope_byte_by_byte(env):
    got, done = feed_all([env[i:i + 1] for i in range(len(env))])
    assert done
    assert got == env[:-1]


@pytest.mark.parametrize('env, code', [
    (b'Ta@b\0', 91),                     # must start with F
    (b'Fa@b\0Xc@d\0', 91),               # recipients are T
    (b'F' + b'x' * ADDR + b'\0', 11),    # address too long
    (b'F' + b'x' * ADDR, 11),            # ... even before its NUL
    (b'Fa@b\0T' + b'x' * (100 * 1024) + b'\0\0', 11),
])
def test_envelope_errors(env, code):
    with pytest.raises(QueueExit) as e:
        feed_all([env])
    assert e.value.code == code, 'got %d want %d' % (e.value.code, code)


def test_longest_address_accepted():
    env = b'Fa@b\0T' + b'y' * (ADDR - 1) + b'\0\0'
    got, done = feed_all([env])
    assert done and got == env[:-1]


def test_incomplete_envelope_not_done():
    got, done = feed_all([b'Fa@b\0Tc@'])
    assert not done


def test_ten_thousand_recipients():
    env = b'Fa@b\0' + b''.join(b'Tuser%d@example.org\0' % i for i in range(10000)) + b'\0'
    got, done = feed_all([env[i:i + 4096] for i in range(0, len(env), 4096)])
    assert done and got == env[:-1]


@pytest.mark.parametrize('uid, who', [
    (100, b'by alias'), (101, b'from network'), (102, b'for bounce'),
    (0, b'by uid 0'), (1000, b'by uid 1000'),
])
def test_received_line(uid, who):
    got = received_line(4321, uid, 838699494, UIDS)
    want = b'Received: (qmail 4321 invoked ' + who + b'); 30 Jul 1996 04:04:54 -0000\n'
    assert got == want, 'got %r want %r' % (got, want)


def test_queue_names():
    assert qfn('mess', 457, 23) == 'mess/20/457'
    assert qfn('info', 23, 23) == 'info/0/23'
    assert qfn('todo', 457, 23) == 'todo/457'
    assert qfn('intd', 457, 23) == 'intd/457'
    assert qfn('bounce', 457, 23) == 'bounce/457'
    assert pidfn(12, 838699494, 1) == 'pid/12.838699494.1'
    assert parse_messid('457') == 457
    for bad in ('', '45a', '-1', '4.5', '\u0664'):
        assert parse_messid(bad) is None, bad


def inject_once(queue) -> int:
    """One small message through queue.inject (cwd: a scratch queue)."""
    import os
    msg_r, msg_w = os.pipe()
    env_r, env_w = os.pipe()
    os.write(msg_w, b'Subject: x\n\nbody\n')
    os.write(env_w, b'Fa@b\0Tc@d\0\0')
    os.close(msg_w)
    os.close(env_w)
    try:
        return queue.inject(msg_r, env_r, 0, 99, 1e9, {'alias': -1, 'daemon': -1, 'send': -1}, 23)
    finally:
        os.close(msg_r)
        os.close(env_r)


def test_inject_leaves_no_descriptor_open(tmp_path, monkeypatch):
    """qmail-queued's writers live on and retire on a descriptor left
    open: an injection, nameless files and all, must close each one."""
    import os
    from qmail import queue
    from qmail.lib import prefork
    for d in ['pid', 'intd', 'todo'] + ['mess/%d' % i for i in range(23)]:
        os.makedirs(tmp_path / d)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(queue, 'triggerpull', lambda: None)
    before = prefork.open_fds()
    for n in range(2):
        assert inject_once(queue) == 0
    assert prefork.open_fds() == before
    assert len(os.listdir('todo')) == 2 and os.listdir('pid') == []


@pytest.mark.parametrize('nameless', [True, False])
def test_a_stale_envelope_named_by_the_new_message_is_replaced(tmp_path, monkeypatch, nameless):
    """A power cut can keep intd/<n> and lose mess/<n>; inode n is then
    used again by a new message, whose envelope must take the name (where
    files cannot be made nameless too: every injection failed, 65, while
    ext4 kept handing out inode n)."""
    import os
    from qmail import queue
    from qmail.lib import qfile
    for d in ['pid', 'intd', 'todo'] + ['mess/%d' % i for i in range(23)]:
        os.makedirs(tmp_path / d)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(queue, 'triggerpull', lambda: None)
    real_fstat = os.fstat
    made = []

    def fstat(fd):
        st = real_fstat(fd)
        if not made:                    # the message's inode: plant a stale envelope
            made.append(st.st_ino)
            with open(qfile.qfn('intd', st.st_ino, 23), 'wb') as f:
                f.write(b'u0\0p1\0Fstale@x\0Tstale@y\0\0')
        return st
    monkeypatch.setattr(queue.os, 'fstat', fstat)
    monkeypatch.setattr(queue, '_anon', nameless)
    assert inject_once(queue) == 0
    messid = made[0]
    assert open(qfile.qfn('todo', messid, 23), 'rb').read() == b'u0\0p99\0Fa@b\0Tc@d\0'
    assert os.stat(qfile.qfn('todo', messid, 23)).st_ino == os.stat(qfile.qfn('intd', messid, 23)).st_ino


def test_a_message_already_named_by_the_new_inode_is_left_alone(tmp_path, monkeypatch):
    """A queue restored from a backup holds messages not named by their
    inodes: when a new nameless file gets inode n and mess/n is such a
    message, the writer keeps that file (so n stays taken), makes another
    and queues under its inode; the old message is untouched.  qmail
    gives up with 64, and every injection did while the filesystem handed
    out n again."""
    import os
    from qmail import queue
    from qmail.lib import prefork, qfile
    for d in ['pid', 'intd', 'todo'] + ['mess/%d' % i for i in range(23)]:
        os.makedirs(tmp_path / d)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(queue, 'triggerpull', lambda: None)
    monkeypatch.setattr(queue, '_anon', True)
    real_fstat = os.fstat
    planted = []

    def fstat(fd):
        st = real_fstat(fd)
        if len(planted) < 2:            # the first two inodes: restored messages
            planted.append(st.st_ino)
            with open(qfile.qfn('mess', st.st_ino, 23), 'wb') as f:
                f.write(b'Subject: restored\n\n')
        return st
    monkeypatch.setattr(queue.os, 'fstat', fstat)
    before = prefork.open_fds()
    assert inject_once(queue) == 0
    assert prefork.open_fds() == before
    todo = os.listdir('todo')
    assert len(todo) == 1 and int(todo[0]) not in planted, (todo, planted)
    for n in planted:
        assert open(qfile.qfn('mess', n, 23), 'rb').read() == b'Subject: restored\n\n'
    got = open(qfile.qfn('mess', int(todo[0]), 23), 'rb').read()
    assert got.endswith(b'Subject: x\n\nbody\n'), got


def test_todo_flush_failure_leaves_the_message_queued(tmp_path, monkeypatch):
    """Once todo/ names the message, qmail-send may be delivering it (a
    scan of todo/ finds it at once): a failed flush of todo/ answers 53
    and leaves every file whole, and pulls the trigger; before, the
    writer truncated the message, maybe under the delivery."""
    import os
    from qmail import queue
    from qmail.lib import durable, prefork
    for d in ['pid', 'intd', 'todo'] + ['mess/%d' % i for i in range(23)]:
        os.makedirs(tmp_path / d)
    monkeypatch.chdir(tmp_path)
    order = []
    monkeypatch.setattr(queue, 'triggerpull', lambda: order.append('trigger'))
    real = durable.fsync_dir

    def fsync_dir(path):
        if path == 'todo':
            order.append('flush')
            raise OSError(5, 'Input/output error')
        return real(path)
    monkeypatch.setattr(durable, 'fsync_dir', fsync_dir)
    before = prefork.open_fds()
    assert inject_once(queue) == 53
    assert order == ['flush', 'trigger']
    assert prefork.open_fds() == before
    [messid] = os.listdir('todo')
    assert open('intd/' + messid, 'rb').read() == b'u0\0p99\0Fa@b\0Tc@d\0'
    [mess] = [os.path.join(r, f) for r, _, fs in os.walk('mess') for f in fs]
    assert os.path.basename(mess) == messid
    assert open(mess, 'rb').read().endswith(b'Subject: x\n\nbody\n')


def test_a_failed_injection_leaves_no_descriptor_and_no_file(tmp_path, monkeypatch):
    """The envelope's nameless file is made before the message is read:
    an injection that fails after it (here the envelope ends early, 54)
    closes it with the rest and leaves nothing in the queue."""
    import os
    from qmail import queue
    from qmail.lib import prefork
    for d in ['pid', 'intd', 'todo'] + ['mess/%d' % i for i in range(23)]:
        os.makedirs(tmp_path / d)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(queue, 'triggerpull', lambda: None)
    before = prefork.open_fds()
    msg_r, msg_w = os.pipe()
    env_r, env_w = os.pipe()
    os.write(msg_w, b'Subject: x\n\nbody\n')
    os.write(env_w, b'Fa@b\0Tc@d\0')            # no final NUL
    os.close(msg_w)
    os.close(env_w)
    try:
        code = queue.inject(msg_r, env_r, 0, 99, 1e9, {'alias': -1, 'daemon': -1, 'send': -1}, 23)
    finally:
        os.close(msg_r)
        os.close(env_r)
    assert code == 54
    assert prefork.open_fds() == before
    assert [f for _, _, fs in os.walk(tmp_path) for f in fs] == []
