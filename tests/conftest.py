"""Shared fixtures: installed qmail homes and an ordinary user.

Integration tests need root (CI runs as root): they install real homes
with real users under /tmp and run the installed programs.
"""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

RUNTIME = os.environ.get('QMAIL_RUNTIME_PYTHON',
                         '/usr/local/lib/qmail/venv/bin/python3')
TEST_USER = 'qmtest'
TIMEOUT = 60

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason='needs root')


def install_home(fqdn='test.example.org'):
    home = tempfile.mkdtemp(prefix='qmailtest.', dir='/tmp')
    os.chmod(home, 0o755)
    home = os.path.join(home, 'qmail')
    subprocess.run([sys.executable, '-m', 'qmail.install', '--home', home,
                    '--python', RUNTIME, '--fqdn', fqdn],
                   check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT)
    return home


def remove_home(home):
    shutil.rmtree(os.path.dirname(home), ignore_errors=True)


@pytest.fixture(scope='session')
def test_user():
    """An ordinary user: (name, uid, gid)."""
    if os.geteuid() != 0:
        pytest.skip('needs root')
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(['useradd', '-M', '-U', '-s', '/usr/sbin/nologin',
                        TEST_USER], check=True, timeout=TIMEOUT)
        pw = pwd.getpwnam(TEST_USER)
    return pw.pw_name, pw.pw_uid, pw.pw_gid


@pytest.fixture(scope='session')
def home():
    """One installed home shared by tests that only add messages."""
    if os.geteuid() != 0:
        pytest.skip('needs root')
    path = install_home()
    yield path
    remove_home(path)


@pytest.fixture
def fresh_home():
    """A home of the test's own, for tests that break or count things."""
    if os.geteuid() != 0:
        pytest.skip('needs root')
    path = install_home()
    yield path
    remove_home(path)


def queue_files(home, *dirs):
    """Relative paths of every file under the given queue directories."""
    out = []
    for d in dirs:
        top = os.path.join(home, 'queue', d)
        for dirpath, _, names in os.walk(top):
            for name in names:
                out.append(os.path.relpath(os.path.join(dirpath, name),
                                           os.path.join(home, 'queue')))
    return sorted(out)


def run_as(user, argv, **kw):
    """Run argv as the ordinary user (no supplementary groups)."""
    name, uid, gid = user
    kw.setdefault('timeout', TIMEOUT)
    kw.setdefault('capture_output', True)
    env = kw.pop('env', None)
    base = {'PATH': '/usr/bin:/bin', 'USER': name, 'LOGNAME': name,
            'HOME': '/nonexistent'}
    if env:
        base.update(env)
    return subprocess.run(argv, user=uid, group=gid, extra_groups=[],
                          env=base, **kw)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_code(module, home, args='[]'):
    """python -c text that runs qmail.<module>.main(args, home=home) as
    that home's installed program would run: auto.QMAIL is home too, so
    qmail-queue (QMAILQUEUE) starts there, as qmail's qmail_open does,
    not in /var/qmail, which a machine that never ran make run lacks."""
    return ('import sys; from qmail.lib import auto; auto.QMAIL = %r; '
            'from qmail import %s; sys.exit(%s.main(%s, home=auto.QMAIL))'
            % (str(home), module, module, args))


_ANY_USER_PYTHON = []


def any_user_python():
    """(python, PYTHONPATH) that a user other than root may run, for
    tests that run this tree's code as such a user: the developers' venv
    and this tree where every user may reach them, else (a clone in
    root's own /root, mode 0700 on Debian) the runtime venv's python
    and a copy of the package in a directory of its own under /tmp."""
    if _ANY_USER_PYTHON:
        return _ANY_USER_PYTHON[0]
    probe = subprocess.run(
        ['setpriv', '--reuid', 'nobody', '--regid', 'nogroup', '--clear-groups',
         sys.executable, '-c', 'import qmail'], cwd='/', capture_output=True,
        env={'PATH': '/usr/bin:/bin', 'PYTHONPATH': ROOT}, timeout=TIMEOUT)
    if probe.returncode == 0:
        got = (sys.executable, ROOT)
    else:
        import atexit
        if not os.access(RUNTIME, os.X_OK):
            pytest.fail('this tree is not readable by other users and there is no '
                        'runtime python at %s (make test makes one; or set '
                        'QMAIL_RUNTIME_PYTHON)' % RUNTIME)
        top = tempfile.mkdtemp(prefix='qmail-tests-code.', dir='/tmp')
        owner = os.getpid()
        # Removed by this process only, not by a forked child that exits.
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(top, True))
        shutil.copytree(os.path.join(ROOT, 'qmail'), os.path.join(top, 'qmail'),
                        ignore=shutil.ignore_patterns('__pycache__'))
        for d, dirs, files in os.walk(top):
            os.chmod(d, 0o755)
            for name in files:
                os.chmod(os.path.join(d, name), 0o644)
        got = (RUNTIME, top)
    _ANY_USER_PYTHON.append(got)
    return got


def fake_stdlib(marker, top='/tmp'):
    """A new directory under top that, as a caller's cwd, would give
    CPython's start a stdlib of the caller's (pyvenv.cfg naming a home
    beside it, whose lib/python3.X holds the os.py landmark and an
    encodings package; sitecustomize.py and startup.py there too, for
    PYTHONPATH and PYTHONSTARTUP): each file creates marker when run.
    The caller removes it."""
    evil = tempfile.mkdtemp(prefix='evil.', dir=top)
    lib = stdlib_of(evil)
    os.makedirs(os.path.join(lib, 'encodings'))
    os.makedirs(os.path.join(evil, 'fakehome'))
    payload = 'import posix\nposix.open(%r, posix.O_CREAT | posix.O_WRONLY, 0o666)\n' % marker
    for rel in ('os.py', 'encodings/__init__.py', 'sitecustomize.py', 'startup.py'):
        with open(os.path.join(lib, rel), 'w') as f:
            f.write(payload)
    with open(os.path.join(evil, 'pyvenv.cfg'), 'w') as f:
        f.write('home = %s\n' % os.path.join(evil, 'fakehome'))
    for d, dirs, files in os.walk(evil):
        os.chmod(d, 0o755)
        for name in files:
            os.chmod(os.path.join(d, name), 0o644)
    return evil


def stdlib_of(evil):
    """fake_stdlib's lib/python3.X."""
    return os.path.join(evil, 'lib', 'python%d.%d' % sys.version_info[:2])
