"""SMTP AUTH in qmail-smtpd with the same checkers as POP3: the system
users' checkpassword and the virtual users' vcheckpassword, as shipped
(set-uid root, for the nofiles group), with qmail-smtpd as qmaild."""

import grp
import os
import pwd
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import TIMEOUT, fake_stdlib, install_home, needs_root, remove_home, stdlib_of
from delivery import ensure_user, free_port

pytestmark = needs_root

DOMAIN = 'auth.example.org'


@pytest.fixture(scope='module')
def site():
    home = install_home(DOMAIN)
    open(os.path.join(home, 'control', 'smtpauthplaintext'), 'w').close()
    with open(os.path.join(home, 'control', 'authdelaysmtpd'), 'w') as f:
        f.write('0\n')
    user = ensure_user('qmtauth')
    subprocess.run(['chpasswd'], input=b'qmtauth:sys-secret-2\n', check=True, timeout=TIMEOUT)
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-vpasswd'), 'add', 'virtuser',
                        str(user[1]), str(user[2]), user[3]],
                       input=b'virt-secret-3\n', capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    procs, ports = [], {}
    for name in ('checkpassword', 'vcheckpassword'):
        port = free_port()
        # qmail-smtpd as qmaild, as installed: the set-uid checker reads
        # /etc/shadow or users/vpasswd, which qmaild cannot.
        procs.append(subprocess.Popen(
            [os.path.join(home, 'bin', 'qmail-listen'),
             '-u', str(pwd.getpwnam('qmaild').pw_uid), '-g', str(grp.getgrnam('nofiles').gr_gid),
             '127.0.0.1', str(port),
             os.path.join(home, 'bin', 'qmail-smtpd'), DOMAIN,
             os.path.join(home, 'bin', name), '/bin/true'],
            env={'PATH': '/usr/bin:/bin'}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        ports[name] = port
    deadline = time.monotonic() + TIMEOUT
    for port in ports.values():
        while True:
            try:
                socket.create_connection(('127.0.0.1', port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    yield {'home': home, 'ports': ports}
    for p in procs:
        p.terminate()
        p.wait(timeout=TIMEOUT)
    remove_home(home)


@pytest.mark.parametrize('checker, user, password', [
    ('checkpassword', 'qmtauth', 'sys-secret-2'),
    ('vcheckpassword', 'virtuser', 'virt-secret-3'),
])
def test_auth_then_relay(site, checker, user, password):
    port = site['ports'][checker]
    with smtplib.SMTP('127.0.0.1', port, timeout=TIMEOUT) as s:
        s.ehlo('client')
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail('a@example.com', ['far@elsewhere.example'], b'Subject: x\r\n\r\nb\r\n')
    with smtplib.SMTP('127.0.0.1', port, timeout=TIMEOUT) as s:
        s.ehlo('client')
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(user, 'wrong-' + password)
    with smtplib.SMTP('127.0.0.1', port, timeout=TIMEOUT) as s:
        s.ehlo('client')
        s.login(user, password)
        s.sendmail('a@example.com', ['far@elsewhere.example'], b'Subject: relayed\r\n\r\nb\r\n')
    todo = os.path.join(site['home'], 'queue', 'todo')
    envs = [open(os.path.join(todo, n), 'rb').read() for n in os.listdir(todo)]
    assert any(b'Tfar@elsewhere.example\0' in e for e in envs)


# -- the set-uid launcher ---------------------------------------------------------

def as_user(site, user, group, data, argv=('/usr/bin/id', '-u'), cwd='/', env=None,
            checker='checkpassword'):
    """bin/<checker> run as user:group (no other groups, no capabilities
    left), fd 3 reading data, its argv[0] the bare name (a caller picks
    it: CPython looked for pyvenv.cfg in the cwd from such a name)."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    try:
        return subprocess.run(
            [checker] + list(argv), executable=os.path.join(site['home'], 'bin', checker),
            pass_fds=(r, 3),
            preexec_fn=lambda: os.dup2(r, 3), user=pwd.getpwnam(user).pw_uid,
            group=grp.getgrnam(group).gr_gid, extra_groups=[], cwd=cwd,
            env=env if env is not None else {'PATH': '/usr/bin:/bin'},
            capture_output=True, timeout=TIMEOUT)
    finally:
        os.close(r)


def test_launcher_runs_the_program_as_the_user_for_qmaild(site):
    uid = pwd.getpwnam('qmtauth').pw_uid
    r = as_user(site, 'qmaild', 'nofiles', b'qmtauth\0sys-secret-2\0<1@h>\0',
                ('/bin/sh', '-c', 'id -u; id -ru; pwd; echo "$HOME"'))
    assert r.returncode == 0, r
    lines = r.stdout.decode().split('\n')
    assert lines[:2] == [str(uid), str(uid)]
    assert lines[2] == lines[3] == pwd.getpwnam('qmtauth').pw_dir
    assert as_user(site, 'qmaild', 'nofiles', b'qmtauth\0wrong\0<1@h>\0').returncode == 1
    assert as_user(site, 'qmaild', 'nofiles', b'root\0x\0<1@h>\0').returncode == 1
    r = as_user(site, 'qmaild', 'nofiles', b'virtuser\0virt-secret-3\0<1@h>\0',
                checker='vcheckpassword')
    assert (r.returncode, r.stdout) == (0, b'%d\n' % uid), r


@pytest.mark.parametrize('checker, data', [
    ('checkpassword', b'qmtauth\0sys-secret-2\0<1@h>\0'),
    ('vcheckpassword', b'virtuser\0virt-secret-3\0<1@h>\0'),
])
def test_a_run_scripts_softlimit_leaves_room_for_the_hash(site, checker, data):
    """daemontools' softlimit -m N, as qmail's run scripts have it, limits
    the stack to N as well, and glibc gives each thread that much: argon2's
    four threads never fitted in N (vcheckpassword answered 111, "unable
    to compute the hash: Threading failure", under any -m).  The launcher
    brings the stack limit down to 8 MB; the right password logs in, the
    wrong one is refused, as without the limit."""
    got = []
    for fd3 in (data, data.replace(b'secret', b'wrong')):
        r, w = os.pipe()
        os.write(w, fd3)
        os.close(w)
        try:
            p = subprocess.run(
                ['softlimit', '-m', '1000000000', os.path.join(site['home'], 'bin', checker),
                 '/bin/sh', '-c', 'ulimit -s'],
                capture_output=True, timeout=TIMEOUT, env={'PATH': '/usr/bin:/bin'},
                preexec_fn=lambda: os.dup2(r, 3), pass_fds=(r, 3))
        finally:
            os.close(r)
        got.append((p.returncode, p.stdout, p.stderr))
    assert got == [(0, b'8192\n', b''), (1, b'', b'')]


def test_launcher_is_for_root_and_nofiles_alone(site):
    with pytest.raises(PermissionError):
        as_user(site, 'nobody', 'nogroup', b'qmtauth\0sys-secret-2\0<1@h>\0')
    st = os.stat(os.path.join(site['home'], 'bin', 'checkpassword'))
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (
        0, grp.getgrnam('nofiles').gr_gid, 0o4710)


def test_launcher_takes_no_code_from_the_caller(site, tmp_path):
    """Neither the environment nor the cwd (pyvenv.cfg naming a stdlib of
    the caller's, as bin/qmail-queue once let through) nor a closed fd
    3 gets the caller anything as root."""
    marker = str(tmp_path / 'ran')
    os.chmod(tmp_path, 0o755)
    evil = fake_stdlib(marker, str(tmp_path))
    lib = stdlib_of(evil)
    env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': lib, 'PYTHONHOME': evil,
           'PYTHONSTARTUP': os.path.join(lib, 'startup.py'), 'PYTHONINSPECT': '1',
           'LD_PRELOAD': os.path.join(evil, 'x.so')}
    r = as_user(site, 'qmaild', 'nofiles', b'qmtauth\0sys-secret-2\0<1@h>\0',
                cwd=evil, env=env)
    assert (r.returncode, r.stdout) == (0, b'%d\n' % pwd.getpwnam('qmtauth').pw_uid), r
    assert not os.path.exists(marker), "the caller's code ran as root"
    r = subprocess.run([os.path.join(site['home'], 'bin', 'checkpassword'), '/bin/true'],
                       user=pwd.getpwnam('qmaild').pw_uid, group=grp.getgrnam('nofiles').gr_gid,
                       extra_groups=[], capture_output=True, timeout=TIMEOUT,
                       env={'PATH': '/usr/bin:/bin'})
    assert r.returncode == 2, r                   # no fd 3: misuse, as checkpassword says


def test_launcher_a_directory_on_fd_0_to_2_is_temporary_trouble(site, tmp_path):
    """The interpreter aborts on a directory as stdin, stdout or stderr
    with exit 1, which to the caller says "wrong password"; the launcher
    stops first, 111, and nothing runs."""
    marker = tmp_path / 'ran'
    os.chmod(tmp_path, 0o777)
    for fd in (0, 1, 2):
        d = os.open('/', os.O_RDONLY | os.O_DIRECTORY)
        r, w = os.pipe()
        os.write(w, b'qmtauth\0sys-secret-2\0<1@h>\0')
        os.close(w)

        def setup(fd=fd, d=d, r=r):
            os.dup2(r, 3)
            os.dup2(d, fd)
        try:
            p = subprocess.run(
                ['checkpassword', '/bin/sh', '-c', 'touch %s' % marker],
                executable=os.path.join(site['home'], 'bin', 'checkpassword'),
                pass_fds=(r, d, 3), preexec_fn=setup, user=pwd.getpwnam('qmaild').pw_uid,
                group=grp.getgrnam('nofiles').gr_gid, extra_groups=[],
                env={'PATH': '/usr/bin:/bin'}, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=TIMEOUT)
        finally:
            os.close(r)
            os.close(d)
        assert p.returncode == 111, (fd, p.returncode)
    assert not marker.exists()


def test_launcher_goes_on_for_root_and_qmaild_alone(site, tmp_path):
    """alias, qmaill and qmailp are in nofiles too, but have no password
    to check: the launcher stops them (111) before the interpreter."""
    marker = tmp_path / 'ran'
    os.chmod(tmp_path, 0o777)
    for user in ('alias', 'qmaill', 'qmailp'):
        r = as_user(site, user, 'nofiles', b'qmtauth\0sys-secret-2\0<1@h>\0',
                    ('/bin/sh', '-c', 'touch %s' % marker))
        assert (r.returncode, r.stdout, r.stderr) == (111, b'', b''), (user, r)
    assert not marker.exists()


@pytest.mark.parametrize('useradd', [['-g', '0'], ['-G', 'root']])
def test_no_login_for_the_root_group(site, useradd):
    """A user whose group, or one of whose groups, is root's gets no
    session, as root does not (vcheckpassword refuses gid 0 alike)."""
    name = 'qmtgid0'
    subprocess.run(['userdel', '-r', name], capture_output=True, timeout=TIMEOUT)
    subprocess.run(['useradd', '-m'] + useradd + [name], check=True, timeout=TIMEOUT)
    try:
        subprocess.run(['chpasswd'], input=b'%s:gid0-secret\n' % name.encode(),
                       check=True, timeout=TIMEOUT)
        r = as_user(site, 'qmaild', 'nofiles', b'%s\0gid0-secret\0<1@h>\0' % name.encode())
        assert (r.returncode, r.stdout) == (1, b''), r
    finally:
        subprocess.run(['userdel', '-r', name], capture_output=True, timeout=TIMEOUT)
