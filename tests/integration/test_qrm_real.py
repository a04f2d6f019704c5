"""qmail-qrm on a real queue: an installed home, qmail-start running with
remote mail deferred (its route a closed port), then stopped; the
program run as root, as the admin runs it."""

import os
import subprocess
import time

import pytest

from conftest import TIMEOUT, install_home, needs_root, queue_files, remove_home
from delivery import Mta, ensure_user, ids_of, inject, maildirmake, qread, wait_until

pytestmark = needs_root

DOMAIN = 'test.example.org'
DIRS = ('mess', 'intd', 'todo', 'info', 'local', 'remote', 'bounce')


@pytest.fixture
def world():
    home = install_home(DOMAIN)
    user = ensure_user('qmtqrm')
    maildirmake(os.path.join(user[3], 'Maildir'), user[1], user[2])
    with open(os.path.join(home, 'control', 'smtproutes'), 'w') as f:
        f.write(':127.0.0.1:1\n')           # nothing listens: every try defers
    mta = Mta(home, './Maildir/')
    w = {'home': home, 'mta': mta, 'user': user}
    yield w
    w['mta'].stop()
    remove_home(home)


def qrm(home, *args, user=None):
    kw = dict(user=user[1], group=user[2], extra_groups=[]) if user else {}
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-qrm')] + list(args),
                       capture_output=True, timeout=TIMEOUT + 40, **kw)
    assert r.stderr == b''
    return r.returncode, r.stdout.decode().splitlines()


def test_qrm_with_qmail_send_running(world):
    home, mta = world['home'], world['mta']
    inject(home, 'spam1@bad.example', 'r1@far.example', 'nosuchuser@' + DOMAIN)
    inject(home, 'spam2@bad.example', 'r2@far.example')
    inject(home, 'good@ok.example', 'a@far.example', 'b@far.example')
    # every message tried once: the remotes deferred, the local failure recorded
    wait_until(lambda: len(ids_of(qread(home), 'spam1@bad.example')) == 1
               and 'bouncing' in qread(home)
               and len(ids_of(qread(home), 'good@ok.example')) == 1)
    listing = qread(home)
    spam = ids_of(listing, 'spam1@bad.example') + ids_of(listing, 'spam2@bad.example')
    good, = ids_of(listing, 'good@ok.example')
    mta.wait_log('msg %d to remote' % good, count=2)       # its first try, both

    code, out = qrm(home, '-s', '*@BAD.example')
    assert code == 0, out
    assert sorted(out[:2]) == sorted(['qmail-qrm: #%d <spam%d@bad.example>: removed' % (m, i)
                                      for i, m in enumerate(spam, 1)])
    assert out[-1] == 'qmail-qrm: 2 messages removed'
    # qmail-send finished them at the ALRM, before qmail-qrm ended
    listing = qread(home)
    assert 'bad.example' not in listing and '#%d ' % good in listing
    for m in spam:
        assert 'end msg %d\n' % m in mta.log()
        assert not [f for f in queue_files(home, *DIRS) if f.endswith('/%d' % m)]
    assert 'bounce msg' not in mta.log()       # the recorded failure went with it
    # and nothing else was retried: qmail-send took commands for those
    # two (lock/command), not an ALRM (which retries every message)
    time.sleep(0.5)
    assert mta.log().count('msg %d to remote' % good) == 2

    # One recipient of the good message: marked done, the other still tried
    code, out = qrm(home, '-r', 'a@*', '#%d' % good)
    assert (code, out) == (0, ['qmail-qrm: #%d <good@ok.example>: removed remote a@far.example'
                               % good, 'qmail-qrm: 1 recipient removed'])
    assert '  done\tremote\ta@far.example' in qread(home)
    marked = len(mta.log())
    mta.signal(14)                              # ALRM: retry now
    mta.wait_log('msg %d to remote b@far.example' % good, count=2)
    time.sleep(0.5)
    assert 'to remote a@far.example' not in mta.log()[marked:]
    # Its last recipient taken: it finishes at once, not at its next
    # retry (found by a review: hours later, its bounce with it).
    code, out = qrm(home, '-r', 'b@*', '#%d' % good)
    assert code == 0, out
    mta.wait_log('end msg %d\n' % good, timeout=10)

    # a number not queued; a user who is not root cannot run it at all
    assert qrm(home, '999999999')[0] == 100
    st = os.stat(os.path.join(home, 'bin', 'qmail-qrm'))
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700)
    with pytest.raises(PermissionError):
        qrm(home, '-s', '*', user=world['user'])
    assert subprocess.run([os.path.join(home, 'bin', 'qmail-fsck'), '-q', home],
                          capture_output=True, timeout=TIMEOUT).returncode == 0


def test_qrm_with_qmail_send_stopped(world):
    home, mta = world['home'], world['mta']
    inject(home, 'early@bad.example', 'x@far.example')
    wait_until(lambda: ids_of(qread(home), 'early@bad.example'))
    mta.stop()
    inject(home, 'late@bad.example', 'qmtqrm@' + DOMAIN, 'y@far.example')
    listing = qread(home)
    early, = ids_of(listing, 'early@bad.example')
    late, = ids_of(listing, 'late@bad.example')
    assert '\ttodo\t' in listing                # the late one never preprocessed

    code, out = qrm(home, '-r', 'y@*', '-s', 'late@*')
    assert code == 111 and 'start it first' in out[0]
    code, out = qrm(home, '-n', '-s', '*@bad.example')
    assert code == 0 and out[-1] == 'qmail-qrm: 2 messages would be removed'
    assert ids_of(qread(home), 'late@bad.example') == [late]

    code, out = qrm(home, '-s', '*@bad.example')
    assert code == 0, out
    assert out == ['qmail-qrm: #%d <%s>: removed' % (m, s) for m, s in
                   sorted([(early, 'early@bad.example'), (late, 'late@bad.example')])] \
        + ['qmail-qrm: 2 messages removed']
    assert queue_files(home, *DIRS) == []
    assert subprocess.run([os.path.join(home, 'bin', 'qmail-fsck'), '-q', home],
                          capture_output=True, timeout=TIMEOUT).returncode == 0

    # started again: nothing of them is delivered
    new = os.path.join(world['user'][3], 'Maildir', 'new')
    world['mta'] = mta = Mta(home, './Maildir/', logname='send2.log')
    time.sleep(1)
    assert os.listdir(new) == []
    assert 'starting delivery' not in mta.log()


def test_qrm_expire_tells_the_sender(world):
    """-b: the message expires; at once (the ALRM) qmail-send tries it
    again, and what that try does not deliver bounces to the sender in
    qmail's words for a message too long in the queue."""
    home, mta, user = world['home'], world['mta'], world['user']
    inject(home, 'qmtqrm@' + DOMAIN, 'gone@far.example', 'kept@far.example')
    wait_until(lambda: ids_of(qread(home), 'qmtqrm@' + DOMAIN))
    messid, = ids_of(qread(home), 'qmtqrm@' + DOMAIN)
    assert qrm(home, '-b', '-r', 'gone@*', str(messid))[0] == 100      # whole messages only
    code, out = qrm(home, '-b', str(messid))
    assert (code, out) == (0, ['qmail-qrm: #%d <qmtqrm@%s>: expired (what its next try does '
                               'not deliver bounces)' % (messid, DOMAIN),
                               'qmail-qrm: 1 message expired'])
    new = os.path.join(user[3], 'Maildir', 'new')
    wait_until(lambda: os.listdir(new))
    bounce = open(os.path.join(new, os.listdir(new)[0]), 'rb').read()
    assert bounce.startswith(b'Return-Path: <>\n'), bounce[:200]
    for rcpt in (b'gone@far.example', b'kept@far.example'):
        assert b'<' + rcpt + b'>:\n' in bounce, bounce
    assert b"I'm not going to try again; this message has been in the queue too long." \
        in bounce, bounce
    wait_until(lambda: 'end msg %d\n' % messid in mta.log())
