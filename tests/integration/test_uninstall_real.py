"""make uninstall (qmail/uninstall.py) on installed homes: refused while
the queue holds mail or qmail-send runs, and then nothing changes;
otherwise only its own sendmail links go and the home is renamed, mail
and logs kept."""

import fcntl
import os
import subprocess
import sys

import pytest

from conftest import TIMEOUT, install_home, needs_root, remove_home
from qmail import uninstall

pytestmark = needs_root


@pytest.fixture
def home():
    path = install_home()
    yield path
    remove_home(path)           # its directory, with what the home became


def inject(home):
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-inject'), 'x@example.com'],
                       input=b'Subject: kept\n\nbody\n', capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr


def snapshot(home):
    return sorted(os.path.relpath(os.path.join(d, n), home)
                  for d, dirs, files in os.walk(home) for n in dirs + files)


def test_a_queued_message_refuses_and_changes_nothing(home, tmp_path):
    inject(home)                            # no qmail-send runs: it stays queued
    link = tmp_path / 'sendmail'
    os.symlink(os.path.join(home, 'bin', 'sendmail'), link)
    before = snapshot(home)
    with pytest.raises(uninstall.Refused) as e:
        uninstall.uninstall(home, links=(str(link),))
    assert e.value.args[0] == 111 and 'queue' in e.value.args[1], e.value.args
    assert os.path.islink(link) and snapshot(home) == before


def test_a_running_qmail_send_refuses(home):
    fd = os.open(os.path.join(home, 'queue', 'lock', 'sendmutex'), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)      # as qmail-send holds it
        with pytest.raises(uninstall.Refused) as e:
            uninstall.uninstall(home, links=())
        assert e.value.args[0] == 111 and 'sendmutex' in e.value.args[1], e.value.args
        assert os.path.isdir(home)
    finally:
        os.close(fd)


def test_an_empty_queue_moves_the_home_and_only_its_own_links(home, tmp_path):
    ours = tmp_path / 'sendmail'
    other = tmp_path / 'lib-sendmail'
    plain = tmp_path / 'exim-sendmail'
    os.symlink(os.path.join(home, 'bin', 'sendmail'), ours)
    os.symlink('/usr/sbin/exim4', other)
    plain.write_text('another MTA\n')
    maildir = os.path.join(home, 'alias', 'Maildir', 'new')
    with open(os.path.join(maildir, '1.2.host'), 'w') as f:
        f.write('Subject: for root\n\nkept\n')
    moved = uninstall.uninstall(home, links=(str(ours), str(other), str(plain)),
                                now=1800000000)
    assert not os.path.exists(home)
    assert moved.startswith(home + '.removed-20') and os.path.isdir(moved)
    assert os.listdir(os.path.join(moved, 'alias', 'Maildir', 'new')) == ['1.2.host']
    assert not os.path.lexists(ours)
    assert os.readlink(other) == '/usr/sbin/exim4' and plain.read_text() == 'another MTA\n'


def test_not_a_home_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'qmail.uninstall', '--home', str(tmp_path)],
                       capture_output=True, timeout=TIMEOUT,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__)))))
    assert r.returncode == 100 and b'is not a qmail home' in r.stderr, r
    assert os.path.isdir(tmp_path)
