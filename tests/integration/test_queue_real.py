"""qmail-queue installed setuid qmailq, run by an ordinary user."""

import os
import pwd
import random
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import TIMEOUT, fake_stdlib, needs_root, queue_files

pytestmark = needs_root

DIRS = ('mess', 'intd', 'todo')


def qq(home, user, message, envelope, env=None, preexec=None):
    """Run bin/qmail-queue as user with files on fds 0 and 1."""
    name, uid, gid = user
    with tempfile.TemporaryFile() as m, tempfile.TemporaryFile() as e:
        m.write(message)
        e.write(envelope)
        m.seek(0)
        e.seek(0)
        return subprocess.run([os.path.join(home, 'bin/qmail-queue')],
                              stdin=m, stdout=e, stderr=subprocess.PIPE,
                              user=uid, group=gid, extra_groups=[],
                              env=env if env is not None else {'PATH': '/usr/bin:/bin'},
                              preexec_fn=preexec, timeout=TIMEOUT)


def new_files(home, before):
    return [f for f in queue_files(home, *DIRS) if f not in before]


def test_queue_files_byte_for_byte(home, test_user):
    before = queue_files(home, *DIRS)
    trigger = os.open(os.path.join(home, 'queue/lock/trigger'),
                      os.O_RDONLY | os.O_NONBLOCK)
    message = b'Subject: test\n\nbody\0with NUL\r\n\xff8bit\n'
    r = qq(home, test_user, message, b'Fsender@example.org\0Tone@example.org\0Ttwo@example.net\0\0')
    assert r.returncode == 0, r
    assert r.stderr == b''
    made = new_files(home, before)
    assert len(made) == 3, made
    mess = [f for f in made if f.startswith('mess/')][0]
    messid = int(mess.split('/')[-1])
    assert mess == 'mess/%d/%d' % (messid % 23, messid)
    assert sorted(made) == sorted([mess, 'intd/%d' % messid, 'todo/%d' % messid])
    q = os.path.join(home, 'queue')
    st = os.stat(os.path.join(q, mess))
    assert st.st_ino == messid, 'mess file not named by its inode'
    assert st.st_uid == pwd.getpwnam('qmailq').pw_uid
    assert st.st_gid == test_user[2]             # qmail-queue is not setgid
    assert st.st_mode & 0o7777 == 0o644
    data = open(os.path.join(q, mess), 'rb').read()
    m = re.match(rb'Received: \(qmail (\d+) invoked by uid (\d+)\); '
                 rb'\d+ \w\w\w \d{4} \d\d:\d\d:\d\d -0000\n', data)
    assert m, data[:100]
    assert int(m.group(2)) == test_user[1]
    assert data[m.end():] == message
    todo = os.stat(os.path.join(q, 'todo/%d' % messid))
    intd = os.stat(os.path.join(q, 'intd/%d' % messid))
    assert todo.st_ino == intd.st_ino and todo.st_nlink == 2
    assert todo.st_uid == pwd.getpwnam('qmailq').pw_uid
    assert todo.st_mode & 0o7777 == 0o644
    env = open(os.path.join(q, 'todo/%d' % messid), 'rb').read()
    assert env == b'u%d\0p%s\0Fsender@example.org\0Tone@example.org\0Ttwo@example.net\0' % (
        test_user[1], m.group(1))
    assert os.listdir(os.path.join(q, 'pid')) == []
    assert os.read(trigger, 10) == b'\0', 'trigger not pulled'
    os.close(trigger)


def test_envelope_just_under_the_limit(home, test_user):
    from qmail import queue
    n = (queue.ENVELOPEMAX - 3) // 18
    env = b'F\0' + b'Tuser@example.org\0' * n + b'\0'
    assert len(env) <= queue.ENVELOPEMAX
    before = queue_files(home, *DIRS)
    r = qq(home, test_user, b'\n', env)
    assert r.returncode == 0, r
    made = new_files(home, before)
    assert sorted(f.split('/')[0] for f in made) == ['intd', 'mess', 'todo']
    for f in made:
        os.unlink(os.path.join(home, 'queue', f))     # not for delivery here


def test_ten_thousand_recipients(home, test_user):
    before = queue_files(home, *DIRS)
    env = b'F\0' + b''.join(b'Tuser%d@example.org\0' % i for i in range(10000)) + b'\0'
    r = qq(home, test_user, b'\n', env)
    assert r.returncode == 0
    todo = [f for f in new_files(home, before) if f.startswith('todo/')][0]
    data = open(os.path.join(home, 'queue', todo), 'rb').read()
    assert data.count(b'\0T') == 10000


@pytest.mark.parametrize('envelope, code', [
    (b'Tnot-a-sender\0\0', 91),
    (b'Fa@b\0Xc@d\0\0', 91),
    (b'Fa@b\0Tc@d\0', 54),                       # EOF before the final NUL
    (b'', 54),
    (b'Fa@b\0T' + b'x' * 102400 + b'\0\0', 11),  # a 100 KB address
    (b'F' + b'x' * 2000 + b'\0Tc@d\0\0', 11),
    # not qmail: over 8 MB (qmail-send would hold it at 26 times that)
    (b'F\0' + b'Tuser@example.org\0' * ((8 << 20) // 18 + 1) + b'\0', 31),
])
def test_bad_envelope_leaves_nothing(home, test_user, envelope, code):
    before = queue_files(home, *DIRS)
    r = qq(home, test_user, b'Subject: x\n\nbody\n', envelope)
    assert r.returncode == code, 'got %d want %d' % (r.returncode, code)
    assert r.stderr == b''
    assert new_files(home, before) == []


def test_write_error_is_53_and_cleans_up(home, test_user):
    before = queue_files(home, *DIRS)

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    r = qq(home, test_user, b'x' * 100000, b'Fa@b\0Tc@d\0\0', preexec=small_files)
    assert r.returncode == 53
    assert new_files(home, before) == []


@pytest.mark.parametrize('paths, mode, code', [
    # mess/ unwritable: no nameless file there, and pid/ is tried
    (['queue/pid', 'queue/mess/*'], 0o550, 63),
    (['queue/mess/*'], 0o550, 64),
    (['queue/intd'], 0o500, 65),
    (['queue/todo'], 0o550, 66),
])
def test_broken_queue_directories(fresh_home, test_user, paths, mode, code):
    import glob
    for path in paths:
        for p in glob.glob(os.path.join(fresh_home, path)):
            os.chmod(p, mode)
    r = qq(fresh_home, test_user, b'Subject: x\n\nbody\n', b'Fa@b\0Tc@d\0\0')
    assert r.returncode == code, 'got %d want %d' % (r.returncode, code)
    assert queue_files(fresh_home, *DIRS) == []


def test_files_made_nameless_need_no_pid_directory(fresh_home, test_user):
    """The message's and the envelope's files are made nameless (inodes
    taken in mess/ subdirectories apart), so pid/ is not used: a broken
    one stops nothing, and a failure leaves no file anywhere."""
    os.chmod(os.path.join(fresh_home, 'queue/pid'), 0)
    r = qq(fresh_home, test_user, b'Subject: x\n\nbody\n', b'Fa@b\0Tc@d\0\0')
    assert r.returncode == 0
    made = queue_files(fresh_home, *DIRS)
    assert len(made) == 3 and not any(f.startswith('pid/') for f in made), made
    r = qq(fresh_home, test_user, b'Subject: x\n\nbody\n', b'Fa@b\0Tc@d\0')  # no final NUL
    assert r.returncode == 54
    assert queue_files(fresh_home, *DIRS) == made


@pytest.mark.parametrize('which', [0, 1])
def test_a_directory_for_message_or_envelope_is_54(fresh_home, test_user, which):
    """qmail-queue(8)'s read error, not the interpreter's exit 1."""
    name, uid, gid = test_user
    with tempfile.TemporaryFile() as f:
        f.write(b'Fa@b\0Tc@d\0\0' if which == 0 else b'Subject: x\n\nbody\n')
        f.seek(0)
        d = os.open('/', os.O_RDONLY | os.O_DIRECTORY)
        try:
            fds = {'stdin': d, 'stdout': f} if which == 0 else {'stdin': f, 'stdout': d}
            r = subprocess.run([os.path.join(fresh_home, 'bin/qmail-queue')],
                               stderr=subprocess.PIPE, user=uid, group=gid, extra_groups=[],
                               env={'PATH': '/usr/bin:/bin'}, timeout=TIMEOUT, **fds)
        finally:
            os.close(d)
    assert r.returncode == 54, (r.returncode, r.stderr)
    assert queue_files(fresh_home, *DIRS) == []


def test_unreachable_queue_is_62(fresh_home, test_user):
    os.chown(os.path.join(fresh_home, 'queue'), 0, 0)
    os.chmod(os.path.join(fresh_home, 'queue'), 0o700)
    r = qq(fresh_home, test_user, b'x\n', b'Fa@b\0Tc@d\0\0')
    assert r.returncode == 62


def test_environment_cannot_redirect(home, test_user, tmp_path):
    """PYTHON* variables and friends reach neither the interpreter nor the code."""
    evil = tempfile.mkdtemp(prefix='evil.', dir='/tmp')
    os.chmod(evil, 0o755)
    marker = os.path.join(evil, 'ran')
    payload = 'import os\nos.open(%r, os.O_CREAT|os.O_WRONLY, 0o666)\n' % marker
    for rel in ('qmail/__init__.py', 'qmail/queue.py', 'sitecustomize.py',
                'usercustomize.py', 'startup.py', 'os.py', 'signal.py'):
        os.makedirs(os.path.join(evil, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(evil, rel), 'w') as f:
            f.write(payload)
        os.chmod(os.path.join(evil, rel), 0o644)
    os.chmod(os.path.join(evil, 'qmail'), 0o755)
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': evil, 'PYTHONHOME': evil,
           'PYTHONSTARTUP': os.path.join(evil, 'startup.py'), 'PYTHONINSPECT': '1',
           'PYTHONUSERBASE': evil, 'LD_PRELOAD': os.path.join(evil, 'x.so'),
           'QMAILHOME': evil, 'QMAILQUEUE': '/bin/true'}
    before = queue_files(home, *DIRS)
    try:
        r = qq(home, test_user, b'x\n', b'Fa@b\0Tc@d\0\0', env=env)
        assert r.returncode == 0, r
        assert len(new_files(home, before)) == 3
        assert not os.path.exists(marker), 'caller-supplied code ran'
    finally:
        shutil.rmtree(evil, ignore_errors=True)     # (one was left in /tmp at each run)


def test_callers_directory_cannot_supply_the_stdlib(home, test_user):
    """The launcher gives the interpreter its own path as argv[0] and /
    as its cwd: from a bare name CPython looked for pyvenv.cfg in the
    cwd, and the caller's code ran as qmailq."""
    marker = tempfile.mktemp(prefix='ran.', dir='/tmp')
    evil = fake_stdlib(marker)
    try:
        before = queue_files(home, *DIRS)
        r = qq(home, test_user, b'x\n', b'Fa@b\0Tc@d\0\0', preexec=lambda: os.chdir(evil))
        assert not os.path.exists(marker), 'the caller\'s code ran as qmailq'
        assert r.returncode == 0, r
        assert len(new_files(home, before)) == 3
    finally:
        shutil.rmtree(evil, ignore_errors=True)
        if os.path.exists(marker):
            os.unlink(marker)


def test_kill_at_random_points_leaves_no_partial_todo(fresh_home, test_user):
    """SIGKILL qmail-queue mid-injection: whatever is in todo/ is whole,
    and every injection that exited 0 is there."""
    rng = random.Random(2)
    name, uid, gid = test_user
    body = b''.join(b'line %d of the message\n' % i for i in range(3000))
    envelope = b'Fa@b\0' + b''.join(b'Tr%d@example.org\0' % i for i in range(50)) + b'\0'
    chunks = [body[i:i + 8192] for i in range(0, len(body), 8192)]
    outcomes = []
    for attempt in range(30):
        msg_r, msg_w = os.pipe()
        env_r, env_w = os.pipe()
        p = subprocess.Popen([os.path.join(fresh_home, 'bin/qmail-queue')],
                             stdin=msg_r, stdout=env_r,
                             user=uid, group=gid, extra_groups=[],
                             env={'PATH': '/usr/bin:/bin'})
        os.close(msg_r)
        os.close(env_r)
        killat = rng.randrange(len(chunks) + 6)     # past the end: no kill
        steps = [(msg_w, c) for c in chunks] + [(msg_w, None), (env_w, envelope), (env_w, None)]
        try:
            for i, (fd, data) in enumerate(steps):
                if i == killat:
                    time.sleep(rng.uniform(0, 0.01))
                    p.kill()
                    break
                if data is None:
                    os.close(fd)
                else:
                    os.write(fd, data)
        except BrokenPipeError:
            pass
        for fd in (msg_w, env_w):
            try:
                os.close(fd)
            except OSError:
                pass
        p.wait(timeout=TIMEOUT)
        outcomes.append(p.returncode)
    todo = check_queue_whole(fresh_home, body)
    assert todo >= outcomes.count(0), 'an accepted message is missing'
    assert -signal.SIGKILL in outcomes, 'no injection was killed: %s' % outcomes
    assert 0 in outcomes, 'no injection completed: %s' % outcomes


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
def test_signals_the_caller_may_send_are_ignored(fresh_home, test_user, sig):
    """qmail-queue.c ignores them (sig_miscignore): a terminal's ^C or
    hangup mid-injection.  INT made this one exit 81, HUP and QUIT killed
    it, each leaving an empty file in mess/ for 36 hours."""
    name, uid, gid = test_user
    body = b'Subject: x\n\n' + b'body\n' * 1000
    before = queue_files(fresh_home, *DIRS)
    msg_r, msg_w = os.pipe()
    env_r, env_w = os.pipe()
    p = subprocess.Popen([os.path.join(fresh_home, 'bin/qmail-queue')],
                         stdin=msg_r, stdout=env_r, user=uid, group=gid, extra_groups=[],
                         env={'PATH': '/usr/bin:/bin'})
    os.close(msg_r)
    os.close(env_r)
    try:
        os.write(msg_w, body[:100])
        time.sleep(1)                   # started, its files made, waiting for more
        p.send_signal(sig)
        time.sleep(0.2)
        os.write(msg_w, body[100:])
        os.close(msg_w)
        os.write(env_w, b'Fa@b\0Tc@d\0\0')
        os.close(env_w)
        assert p.wait(timeout=TIMEOUT) == 0
    finally:
        p.kill()
        p.wait(timeout=TIMEOUT)
    new = new_files(fresh_home, before)
    assert sorted(f.split('/')[0] for f in new) == ['intd', 'mess', 'todo'], new
    check_queue_whole(fresh_home, body)


def check_queue_whole(home, body):
    q = os.path.join(home, 'queue')
    for f in os.listdir(os.path.join(q, 'todo')):
        messid = int(f)
        env = open(os.path.join(q, 'todo', f), 'rb').read()
        assert re.match(rb'u\d+\0p\d+\0F[^\0]*\0(T[^\0]+\0)*$', env), env[:80]
        mess = open(os.path.join(q, 'mess/%d/%d' % (messid % 23, messid)), 'rb').read()
        assert mess.endswith(body), 'todo/%d names a partial message' % messid
    return len(os.listdir(os.path.join(q, 'todo')))
