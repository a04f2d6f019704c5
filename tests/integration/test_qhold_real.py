"""qmail-qhold on a real queue: an installed home, qmail-start running,
remote mail deferred (its route a closed port) and a local recipient
whose .qmail defers; messages held, retried by ALRM (not the held),
qmail-send restarted (still held), released (tried at once)."""

import os
import re
import stat
import subprocess
import time

import pytest

from conftest import TIMEOUT, install_home, needs_root, remove_home
from delivery import Mta, ensure_user, ids_of, inject, maildirmake, qread, wait_until

pytestmark = needs_root

DOMAIN = 'test.example.org'


@pytest.fixture
def world():
    home = install_home(DOMAIN)
    user = ensure_user('qmthold')
    maildirmake(os.path.join(user[3], 'Maildir'), user[1], user[2])
    dot = os.path.join(user[3], '.qmail-later')
    with open(dot, 'w') as f:
        f.write('|exit 111\n')              # defers until the admin changes it
    os.chown(dot, user[1], user[2])
    with open(os.path.join(home, 'control', 'smtproutes'), 'w') as f:
        f.write(':127.0.0.1:1\n')           # nothing listens: every try defers
    mta = Mta(home, './Maildir/')
    w = {'home': home, 'mta': mta, 'user': user, 'dot': dot}
    yield w
    w['mta'].stop()
    remove_home(home)


def qhold(home, *args):
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-qhold')] + list(args),
                       capture_output=True, timeout=TIMEOUT + 40)
    assert r.stderr == b''
    return r.returncode, r.stdout.decode().splitlines()


def tries(log, messid):
    return len(re.findall(r'starting delivery \d+: msg %d to ' % messid, log))


def test_hold_and_release(world):
    home, mta, user = world['home'], world['mta'], world['user']
    inject(home, 'bulk@bad.example', 'r1@far.example', 'qmthold-later@' + DOMAIN)
    inject(home, 'good@ok.example', 'a@far.example')
    wait_until(lambda: len(ids_of(qread(home), 'bulk@bad.example')) == 1
               and len(ids_of(qread(home), 'good@ok.example')) == 1)
    listing = qread(home)
    bulk, = ids_of(listing, 'bulk@bad.example')
    good, = ids_of(listing, 'good@ok.example')
    wait_until(lambda: tries(mta.log(), bulk) == 2 and tries(mta.log(), good) == 1)

    code, out = qhold(home, '-s', '*@bad.example')
    assert (code, out) == (0, ['qmail-qhold: #%d <bulk@bad.example>: held' % bulk,
                               'qmail-qhold: 1 message held']), out
    mta.wait_log('hold msg %d\n' % bulk)
    assert re.search(r'#%d  \d+  <bulk@bad.example>  held\n' % bulk, qread(home)), qread(home)
    for c in ('local', 'remote'):
        path = os.path.join(home, 'queue', c, str(bulk % 23), str(bulk))
        assert os.stat(path).st_mode & stat.S_ISVTX
    # A second hold changes nothing; an ALRM retries the others, not it.
    assert qhold(home, '#%d' % bulk) == (0, [
        'qmail-qhold: #%d <bulk@bad.example>: held already' % bulk,
        'qmail-qhold: 0 messages held'])
    mta.signal(14)
    mta.wait_log('msg %d to remote a@far.example' % good, count=2)
    time.sleep(1)
    assert tries(mta.log(), bulk) == 2

    # Held through a restart: the mark on disk is what the start reads.
    mta.stop()
    world['mta'] = mta = Mta(home, './Maildir/', logname='send2.log')
    mta.signal(14)
    mta.wait_log('msg %d to remote a@far.example' % good)
    time.sleep(1)
    assert tries(mta.log(), bulk) == 0

    # Released: tried at once; the local one now delivered.
    with open(world['dot'], 'w') as f:
        f.write('./Maildir/\n')
    code, out = qhold(home, '-u', '%d' % bulk)
    assert (code, out) == (0, ['qmail-qhold: #%d <bulk@bad.example>: released' % bulk,
                               'qmail-qhold: 1 message released']), out
    mta.wait_log('release msg %d\n' % bulk)
    mta.wait_log('msg %d to local %s-later@%s' % (bulk, 'qmthold', DOMAIN))
    mta.wait_log('msg %d to remote r1@far.example' % bulk)
    wait_until(lambda: len(os.listdir(os.path.join(user[3], 'Maildir', 'new'))) == 1)
    assert ' held' not in qread(home)
    assert subprocess.run([os.path.join(home, 'bin', 'qmail-fsck'), '-q', home],
                          capture_output=True, timeout=TIMEOUT).returncode == 0


def test_hold_with_qmail_send_stopped(world):
    home, mta = world['home'], world['mta']
    inject(home, 'stop@bad.example', 'x@far.example')
    wait_until(lambda: ids_of(qread(home), 'stop@bad.example'))
    messid, = ids_of(qread(home), 'stop@bad.example')
    mta.wait_log('msg %d to remote' % messid)
    mta.stop()
    assert qhold(home, '-n', '%d' % messid) == (0, [
        'qmail-qhold: #%d <stop@bad.example>: would hold' % messid,
        'qmail-qhold: 1 message would be held'])
    code, out = qhold(home, '-s', 'stop@bad.example')
    assert code == 0 and out[0].endswith(': held'), out
    world['mta'] = mta = Mta(home, './Maildir/', logname='send2.log')
    mta.signal(14)
    time.sleep(1.5)
    assert tries(mta.log(), messid) == 0
    # Released while qmail-send is stopped: tried at its start, not at
    # the retry its file recorded (a review: 7 minutes later).
    mta.stop()
    assert qhold(home, '-u', '%d' % messid)[0] == 0
    world['mta'] = mta = Mta(home, './Maildir/', logname='send3.log')
    mta.wait_log('msg %d to remote x@far.example' % messid, timeout=10)
    # Held again, running; already held: said, told again, exit 0.
    code, out = qhold(home, '%d' % messid)
    assert code == 0 and out[0].endswith(': held'), out
    assert qhold(home, '%d' % messid) == (0, [
        'qmail-qhold: #%d <stop@bad.example>: held already' % messid,
        'qmail-qhold: 0 messages held'])
    # qmail-qrm still removes a held message, and it finishes at once.
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-qrm'), '%d' % messid],
                       capture_output=True, timeout=TIMEOUT + 40)
    assert r.returncode == 0, r.stdout
    mta.wait_log('end msg %d\n' % messid)
    assert tries(mta.log(), messid) == 1
