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


def test_any_process_working_in_the_home_refuses(home):
    """A qmail-listen under systemd or runit is no service of
    qmail-svscan's and holds no sendmutex: a process whose cwd is in the
    home, or whose arguments name its programs, is seen all the same."""
    for argv, cwd in ((['sleep', '60'], os.path.join(home, 'queue')),
                      (['sh', '-c', 'sleep 60', os.path.join(home, 'bin', 'qmail-smtpd')], '/')):
        proc = subprocess.Popen(argv, cwd=cwd)
        try:
            with pytest.raises(uninstall.Refused) as e:
                uninstall.uninstall(home, links=())
            assert e.value.args[0] == 111 and 'pid %d' % proc.pid in e.value.args[1], e.value.args
            assert os.path.isdir(home)
        finally:
            proc.kill()
            proc.wait()


def test_a_refusal_after_the_links_went_puts_them_back(home, tmp_path, monkeypatch):
    """The links go first (no local injection starts while it checks
    again); a second check that refuses, or a rename that fails, brings
    them back."""
    link = tmp_path / 'sendmail'
    os.symlink(os.path.join(home, 'bin', 'sendmail'), link)
    real_rename = os.rename

    def rename(a, b):
        raise OSError(16, 'Device or resource busy')
    monkeypatch.setattr(uninstall.os, 'rename', rename)
    with pytest.raises(OSError):
        uninstall.uninstall(home, links=(str(link),))
    assert os.readlink(link) == os.path.join(home, 'bin', 'sendmail') and os.path.isdir(home)
    monkeypatch.setattr(uninstall.os, 'rename', real_rename)
    calls = []
    real_check = uninstall.check

    def check(h):
        calls.append(h)
        if len(calls) == 2:
            inject(home)                # an injection done between the checks
        real_check(h)
    monkeypatch.setattr(uninstall, 'check', check)
    with pytest.raises(uninstall.Refused):
        uninstall.uninstall(home, links=(str(link),))
    assert os.readlink(link) == os.path.join(home, 'bin', 'sendmail') and os.path.isdir(home)


def test_a_message_that_arrives_during_the_rename_is_named(home, monkeypatch):
    real_rename = os.rename

    def rename(a, b):
        inject(home)                    # its qmail-queue was under way
        real_rename(a, b)
    monkeypatch.setattr(uninstall.os, 'rename', rename)
    with pytest.raises(uninstall.Refused) as e:
        uninstall.uninstall(home, links=())
    assert 'arrived during the uninstall' in e.value.args[1] and 'make run' in e.value.args[1]


def test_the_links_are_compared_as_real_paths(home, tmp_path):
    """/var/qmail a link to the real home: the system link names the
    link, --home the real path (or the other way): still ours."""
    alias = tmp_path / 'qmail-alias'
    os.symlink(home, alias)
    link = tmp_path / 'sendmail'
    os.symlink(str(alias / 'bin' / 'sendmail'), link)
    uninstall.uninstall(home, links=(str(link),))
    assert not os.path.lexists(link)
