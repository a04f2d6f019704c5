"""The delivery side running for real: qmail-start from an installed home,
real users, sendmail and qmail-queue feeding it, mail landing in Maildirs
and mboxes, bounces, retries, crashes."""

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import TIMEOUT, install_home, needs_root, remove_home, run_as
from delivery import Mta, ensure_user, group_processes, maildirmake

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'bench'))
from procs import rss_kb  # noqa: E402  (the benchmark's reading of /proc/PID/status)

pytestmark = needs_root

DOMAIN = 'test.example.org'


@pytest.fixture(scope='module')
def world():
    """A home, two users with Maildirs, and the MTA running."""
    home = install_home(DOMAIN)
    u1 = ensure_user('qmtu1')
    u2 = ensure_user('qmtu2')
    for name, uid, gid, h in (u1, u2):
        maildirmake(os.path.join(h, 'Maildir'), uid, gid)
    alias = os.path.join(home, 'alias')
    with open(os.path.join(alias, '.qmail-postmaster'), 'w') as f:
        f.write('&qmtu1@%s\n' % DOMAIN)
    mta = Mta(home, './Maildir/')
    yield {'home': home, 'u1': u1, 'u2': u2, 'mta': mta}
    mta.stop()
    remove_home(home)


def write_qmail(user, ext, text):
    name, uid, gid, h = user
    path = os.path.join(h, '.qmail' + ('-' + ext if ext else ''))
    with open(path, 'w') as f:
        f.write(text)
    os.chown(path, uid, gid)
    os.chmod(path, 0o644)
    return path


def queue_raw(home, sender, recips, message, user=None):
    """qmail-queue with a raw message: the mailbox gets exactly these bytes
    after the Received line."""
    env = b'F' + sender.encode() + b'\0' + b''.join(
        b'T' + r.encode() + b'\0' for r in recips) + b'\0'
    with tempfile.TemporaryFile() as m, tempfile.TemporaryFile() as e:
        m.write(message)
        e.write(env)
        m.seek(0)
        e.seek(0)
        kw = {}
        if user:
            kw = dict(user=user[1], group=user[2], extra_groups=[])
        r = subprocess.run([os.path.join(home, 'bin/qmail-queue')], stdin=m, stdout=e,
                           timeout=TIMEOUT, **kw)
    assert r.returncode == 0


def new_mail(user, before=()):
    d = os.path.join(user[3], 'Maildir', 'new')
    return [os.path.join(d, n) for n in sorted(os.listdir(d)) if n not in before]


def listing(user):
    return set(os.listdir(os.path.join(user[3], 'Maildir', 'new')))


def wait_new(user, before, count=1, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = new_mail(user, before)
        if len(got) >= count:
            return got
        time.sleep(0.05)
    raise AssertionError('no new mail for %s' % user[0])


RECEIVED = re.compile(rb'Received: \(qmail \d+ invoked by uid \d+\); '
                      rb'\d+ \w\w\w \d{4} \d\d:\d\d:\d\d -0000\n')


def test_maildir_delivery_exact_bytes(world):
    home, u2 = world['home'], world['u2']
    before = listing(u2)
    message = b'Subject: exact\n\nline one\n.\nFrom here\n\0binary\xff\n'
    queue_raw(home, 'someone@example.com', ['qmtu2@' + DOMAIN], message, user=world['u1'])
    path, = wait_new(u2, before)
    data = open(path, 'rb').read()
    head = b'Return-Path: <someone@example.com>\nDelivered-To: qmtu2@%s\n' % DOMAIN.encode()
    assert data.startswith(head), data[:200]
    rest = data[len(head):]
    m = RECEIVED.match(rest)
    assert m and b'invoked by uid %d' % world['u1'][1] in m.group(0)
    assert rest[m.end():] == message
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (u2[1], u2[2])
    assert stat.S_IMODE(st.st_mode) == 0o600
    # The file shows in new/ at the link; the same delivery then fsyncs
    # new/ and only then removes tmp/'s name: wait for the delivery's end.
    # What may stay is an idle worker's spare, empty, made for its next
    # delivery (after two to this maildir: earlier tests may have made them).
    tmp = os.path.join(u2[3], 'Maildir', 'tmp')

    def written():
        return [n for n in os.listdir(tmp) if os.path.getsize(os.path.join(tmp, n))]
    deadline = time.monotonic() + TIMEOUT
    while written() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert written() == [], os.listdir(tmp)


def test_sendmail_user_to_user(world):
    u1, u2 = world['u1'], world['u2']
    before = listing(u2)
    r = run_as(u1[:3], [world['home'] + '/bin/sendmail', '-t'],
               input=b'To: qmtu2\nSubject: from one to two\n\nhi\n')
    assert r.returncode == 0, r.stderr
    path, = wait_new(u2, before)
    data = open(path, 'rb').read()
    assert data.startswith(b'Return-Path: <qmtu1@%s>\nDelivered-To: qmtu2@%s\n'
                           % (DOMAIN.encode(), DOMAIN.encode()))
    assert b'\nSubject: from one to two\n' in data and data.endswith(b'\n\nhi\n')


def test_mbox_delivery(world):
    home, u2 = world['home'], world['u2']
    write_qmail(u2, 'mbox', './Mailbox\n')
    mbox = os.path.join(u2[3], 'Mailbox')
    message = b'Subject: mbox\n\nFrom the start\n>From quoted\nend\n'
    queue_raw(home, 'x@example.com', ['qmtu2-mbox@' + DOMAIN], message)
    world['mta'].wait_log('success', count=1)
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(mbox) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    data = open(mbox, 'rb').read()
    assert re.match(rb'From x@example.com \w\w\w \w\w\w [ \d]\d \d\d:\d\d:\d\d \d{4}\n'
                    rb'Return-Path: <x@example.com>\nDelivered-To: qmtu2-mbox@%s\n'
                    % DOMAIN.encode(), data), data[:200]
    assert data.endswith(b'Subject: mbox\n\n>From the start\n>>From quoted\nend\n\n')
    st = os.stat(mbox)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (u2[1], 0o600)


def test_program_and_default_and_extension(world):
    home, u2 = world['home'], world['u2']
    out = os.path.join(u2[3], 'env.out')
    write_qmail(u2, 'lists-default',
                '# a comment\n|echo "$DEFAULT $EXT $EXT2 $LOCAL $HOST $SENDER $RECIPIENT" > %s\n'
                './Maildir/\n' % out)
    before = listing(u2)
    queue_raw(home, 's@example.com', ['qmtu2-lists-Foo-Bar@' + DOMAIN], b'Subject: p\n\nb\n')
    wait_new(u2, before)
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    got = open(out).read().split()
    assert got == ['Foo-Bar', 'lists-Foo-Bar', 'Foo-Bar', 'qmtu2-lists-Foo-Bar', DOMAIN,
                   's@example.com', 'qmtu2-lists-Foo-Bar@' + DOMAIN], got


def test_unknown_extension_bounces_in_qsbmf(world):
    home, u1 = world['home'], world['u1']
    before = listing(u1)
    queue_raw(home, 'qmtu1@' + DOMAIN, ['qmtu1-nosuch@' + DOMAIN],
              b'Subject: will bounce\n\nbody\n')
    path, = wait_new(u1, before)
    data = open(path, 'rb').read()
    assert data.startswith(b'Return-Path: <>\nDelivered-To: qmtu1@%s\n' % DOMAIN.encode())
    text = data.split(b'\n', 3)[3]
    assert re.search(
        rb'\nFrom: MAILER-DAEMON@%s\nTo: qmtu1@%s\nSubject: failure notice\n\n'
        rb'Hi. This is the qmail-send program at %s.\n'
        rb"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        rb"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        rb'<qmtu1-nosuch@%s>:\nSorry, no mailbox here by that name. \(#5.1.1\)\n\n'
        rb'--- Below this line is a copy of the message.\n\n'
        rb'Return-Path: <qmtu1@%s>\nReceived: ' % ((DOMAIN.encode(),) * 5), text), text
    assert text.endswith(b'Subject: will bounce\n\nbody\n')


def test_double_bounce_goes_to_postmaster(world):
    home, u1 = world['home'], world['u1']
    before = listing(u1)
    # The sender does not exist: the bounce bounces, and the double
    # bounce reaches postmaster, which the alias user forwards to qmtu1.
    queue_raw(home, 'nobody-here@' + DOMAIN, ['qmtu1-nosuch2@' + DOMAIN], b'Subject: dbl\n\nb\n')
    path, = wait_new(u1, before)
    data = open(path, 'rb').read()
    assert b'Return-Path: <#@[]>\n' in data
    assert b'I tried to deliver a bounce message to this address, but the bounce bounced!' in data
    assert b'<nobody-here@%s>:\nSorry, no mailbox here by that name.' % DOMAIN.encode() in data
    assert b'--- Below this line is the original bounce.\n\nReturn-Path: <>\n' in data


def test_deferral_retried_after_alrm_and_permanent_failure_bounced(world):
    home, u1, u2, mta = world['home'], world['u1'], world['u2'], world['mta']
    flag = os.path.join(u2[3], 'flag')
    write_qmail(u2, 'retry', '|test -f %s || { echo not yet; exit 111; }\n./Maildir/\n' % flag)
    write_qmail(u2, 'hard', '|echo go away; exit 100\n')
    before2 = listing(u2)
    before1 = listing(u1)
    queue_raw(home, 'qmtu1@' + DOMAIN, ['qmtu2-retry@' + DOMAIN], b'Subject: retry\n\nb\n')
    mta.wait_log('deferral: not_yet/')
    open(flag, 'w').close()
    time.sleep(1.1)
    mta.signal(signal.SIGALRM)
    path, = wait_new(u2, before2)
    assert b'Subject: retry' in open(path, 'rb').read()
    queue_raw(home, 'qmtu1@' + DOMAIN, ['qmtu2-hard@' + DOMAIN], b'Subject: hard\n\nb\n')
    bounce, = wait_new(u1, before1)
    assert b'<qmtu2-hard@%s>:\ngo away\n' % DOMAIN.encode() in open(bounce, 'rb').read()


def test_forwarding_loop_is_stopped(world):
    home, u1, u2 = world['home'], world['u1'], world['u2']
    write_qmail(u2, 'loop', '&qmtu2-loop@%s\n' % DOMAIN)
    before = listing(u1)
    queue_raw(home, 'qmtu1@' + DOMAIN, ['qmtu2-loop@' + DOMAIN], b'Subject: loop\n\nb\n')
    path, = wait_new(u1, before)
    data = open(path, 'rb').read()
    assert b'This message is looping: it already has my Delivered-To line. (#5.4.6)' in data


def test_forward_keeps_sender_and_adds_delivered_to(world):
    home, u1, u2 = world['home'], world['u1'], world['u2']
    write_qmail(u2, 'fwd', '&qmtu1@%s\n' % DOMAIN)
    before = listing(u1)
    queue_raw(home, 'orig@example.com', ['qmtu2-fwd@' + DOMAIN], b'Subject: fwd\n\nb\n')
    path, = wait_new(u1, before)
    data = open(path, 'rb').read()
    assert data.startswith(b'Return-Path: <orig@example.com>\nDelivered-To: qmtu1@%s\n'
                           % DOMAIN.encode())
    assert b'\nDelivered-To: qmtu2-fwd@%s\n' % DOMAIN.encode() in data


def test_deliveries_run_as_the_recipient_never_root(world):
    """The recipient's uid and gid, and no supplementary group but the
    gid (qmail-lspawn(8)), though /etc/group lists the user in another."""
    home, u2 = world['home'], world['u2']
    out = os.path.join(u2[3], 'ids.out')
    subprocess.run(['groupadd', '-f', 'qmtextra'], check=True, timeout=TIMEOUT)
    subprocess.run(['gpasswd', '-a', 'qmtu2', 'qmtextra'], check=True, timeout=TIMEOUT,
                   stdout=subprocess.DEVNULL)
    try:
        assert len(os.getgrouplist('qmtu2', u2[2])) > 1
        write_qmail(u2, 'ids', '|id -u > %s; id -g >> %s; id -G >> %s\n' % (out, out, out))
        queue_raw(home, 'x@example.com', ['qmtu2-ids@' + DOMAIN], b'\n')
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if os.path.exists(out) and open(out).read().count('\n') == 3:
                break
            time.sleep(0.05)
    finally:
        subprocess.run(['gpasswd', '-d', 'qmtu2', 'qmtextra'], timeout=TIMEOUT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uid, gid, groups = open(out).read().split('\n')[:3]
    assert (int(uid), int(gid)) == (u2[1], u2[2])
    assert list(map(int, groups.split())) == [u2[2]]


def test_the_processes_and_their_users(world):
    pid = world['mta'].proc.pid
    out = subprocess.run(['ps', '-o', 'user=,args=', '-g', str(os.getpgid(pid))],
                         capture_output=True, text=True, timeout=TIMEOUT).stdout
    rows = {line.split(None, 1)[1].split()[0]: line.split()[0] for line in out.splitlines()}
    assert rows.get('qmail-send') == 'qmails', out
    assert rows.get('qmail-lspawn') == 'root', out
    assert rows.get('qmail-rspawn') == 'qmailr', out
    assert rows.get('qmail-clean') == 'qmailq', out


def test_users_assign_exact_and_wildcard(world):
    home, u2 = world['home'], world['u2']
    name, uid, gid, h = u2
    with open(os.path.join(home, 'users', 'assign'), 'w') as f:
        f.write('=joe:qmtu2:%d:%d:%s:-:joe:\n+team-:qmtu2:%d:%d:%s:-:team-:\n.\n'
                % (uid, gid, h, uid, gid, h))
    r = subprocess.run([home + '/bin/qmail-newu'], capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    try:
        write_qmail(u2, 'joe', './Maildir/\n')
        write_qmail(u2, 'team-default', './Maildir/\n')
        before = listing(u2)
        queue_raw(home, 'x@example.com', ['joe@' + DOMAIN, 'team-Blue@' + DOMAIN],
                  b'Subject: assign\n\nb\n')
        paths = wait_new(u2, before, count=2)
        heads = sorted(open(p, 'rb').read().split(b'\n')[1] for p in paths)
        # qmail-local's Delivered-To names the address, not the user.
        assert heads == [b'Delivered-To: joe@' + DOMAIN.encode(),
                         b'Delivered-To: team-Blue@' + DOMAIN.encode()], heads
    finally:
        os.unlink(os.path.join(home, 'users', 'cdb'))


def set_control(world, name, value):
    path = os.path.join(world['home'], 'control', name)
    if value is None:
        os.unlink(path)
    else:
        with open(path, 'w') as f:
            f.write(value + '\n')
    world['mta'].signal(signal.SIGHUP)
    time.sleep(0.3)


def test_queuelifetime_turns_deferral_into_bounce(world):
    home, u1, u2, mta = world['home'], world['u1'], world['u2'], world['mta']
    write_qmail(u2, 'never', '|echo still not; exit 111\n')
    set_control(world, 'queuelifetime', '2')
    try:
        before = listing(u1)
        queue_raw(home, 'qmtu1@' + DOMAIN, ['qmtu2-never@' + DOMAIN], b'Subject: old\n\nb\n')
        mta.wait_log('deferral: still_not/')
        time.sleep(3)
        mta.signal(signal.SIGALRM)
        bounce, = wait_new(u1, before)
        data = open(bounce, 'rb').read()
        assert (b"<qmtu2-never@%s>:\nstill not\nI'm not going to try again; "
                b"this message has been in the queue too long.\n" % DOMAIN.encode()) in data
    finally:
        set_control(world, 'queuelifetime', None)


def test_bouncemaxbytes_cuts_the_copy(world):
    home, u1 = world['home'], world['u1']
    set_control(world, 'bouncemaxbytes', '500')
    try:
        before = listing(u1)
        queue_raw(home, 'qmtu1@' + DOMAIN, ['qmtu1-nosuch3@' + DOMAIN],
                  b'Subject: big\n\n' + b'y' * 5000 + b'\n')
        bounce, = wait_new(u1, before)
        data = open(bounce, 'rb').read()
        copy = data.split(b'--- Below this line is a copy of the message.\n\n', 1)[1]
        assert b'y' * 5000 not in copy
        assert copy.endswith(b'\n--- Rest of message truncated: over 500 bytes '
                             b'(control/bouncemaxbytes).\n')
    finally:
        set_control(world, 'bouncemaxbytes', None)


def test_logger_gets_the_record_as_qmaill(tmp_path):
    home = install_home(DOMAIN)
    logdir = tempfile.mkdtemp(prefix='qmlog.', dir='/tmp')
    os.chown(logdir, pwd_uid('qmaill'), 0)
    out = os.path.join(logdir, 'current')
    try:
        p = subprocess.Popen([home + '/bin/qmail-start', './Maildir/', '/bin/sh', '-c',
                              'id -un > %s.who; grep ^SigIgn /proc/$$/status > %s.sig; '
                              'exec cat >> %s' % (out, out, out)],
                             env={'PATH': '/usr/bin:/bin'}, start_new_session=True)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if os.path.exists(out) and 'status: local 0/10 remote 0/20' in open(out).read():
                break
            time.sleep(0.05)
        assert 'status: local 0/10 remote 0/20' in open(out).read()
        assert open(out + '.who').read().strip() == 'qmaill'
        # SIGPIPE and SIGXFSZ as qmail-start's C leaves them, not as the
        # interpreter set them for itself (ignored, and kept across exec)
        ignored = int(open(out + '.sig').read().split()[1], 16)
        assert ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)) == 0, hex(ignored)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while 'status: exiting' not in open(out).read() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 'status: exiting' in open(out).read()
    finally:
        remove_home(home)
        shutil.rmtree(logdir, ignore_errors=True)      # (one was left in /tmp at each run)


def pwd_uid(name):
    import pwd
    return pwd.getpwnam(name).pw_uid


def test_lost_trigger_pull_still_noticed(world):
    """With lock/trigger gone, qmail-queue's pull fails; the inotify watch
    on todo/ still wakes qmail-send (else: the 25-minute scan)."""
    home, u2 = world['home'], world['u2']
    trigger = os.path.join(home, 'queue', 'lock', 'trigger')
    os.rename(trigger, trigger + '.off')
    try:
        before = listing(u2)
        queue_raw(home, 'x@example.com', ['qmtu2@' + DOMAIN], b'Subject: no trigger\n\nb\n')
        path, = wait_new(u2, before)
        assert b'Subject: no trigger' in open(path, 'rb').read()
    finally:
        os.rename(trigger + '.off', trigger)


def test_a_broken_todo_is_warned_about_once_not_at_every_injection(world):
    """A todo/ file qmail-send cannot take (an unknown record) stays, with
    one warning; the scans that each injection starts (two or three:
    the trigger, the inotify watch) leave it alone for SLEEP_SYSFAIL
    instead of logging the warning again each time."""
    home, u2 = world['home'], world['u2']
    q = os.path.join(home, 'queue')
    split = len(os.listdir(os.path.join(q, 'mess')))
    messid = 987654321          # an inode no new message gets here
    mess = os.path.join(q, 'mess', str(messid % split), str(messid))
    todo = os.path.join(q, 'todo', str(messid))
    with open(mess, 'wb') as f:
        f.write(b'Subject: broken\n\nb\n')
    with open(todo + '.tmp', 'wb') as f:   # (whole when qmail-send sees it)
        f.write(b'u0\0p1\0Fa@b\0Xc@d\0\0')
    for path in (mess, todo + '.tmp'):
        os.chown(path, pwd_uid('qmailq'), os.stat(q).st_gid)
    os.rename(todo + '.tmp', todo)
    warning = 'warning: unknown record type in todo/%d' % messid
    try:
        before = listing(u2)
        for i in range(4):
            queue_raw(home, 'x@example.com', ['qmtu2@' + DOMAIN],
                      b'Subject: next to a broken todo %d\n\nb\n' % i)
            wait_new(u2, before, count=i + 1)
        world['mta'].wait_log(warning)
        assert world['mta'].log().count(warning) == 1, world['mta'].log()[-3000:]
        assert os.path.exists(todo) and os.path.exists(mess)    # nothing taken away
    finally:
        for path in (todo, mess):
            os.unlink(path)


def test_injection_goes_through_qmail_queued(world, test_user):
    """With the MTA running, sendmail's message reaches the queue through
    qmail-queued: it arrives even while bin/qmail-queue cannot run, and
    the envelope still records the injecting user's uid."""
    home, u2 = world['home'], world['u2']
    qq = os.path.join(home, 'bin', 'qmail-queue')
    assert os.path.exists(os.path.join(home, 'run', 'qmail-queue.sock'))
    mode = os.stat(qq).st_mode
    os.chmod(qq, 0)
    try:
        before = listing(u2)
        r = run_as(test_user, [home + '/bin/sendmail', 'qmtu2@' + DOMAIN],
                   input=b'Subject: via qmail-queued\n\nb\n')
        assert r.returncode == 0, r.stderr
        path, = wait_new(u2, before)
        data = open(path, 'rb').read()
        assert b'invoked by uid %d)' % test_user[1] in data
    finally:
        os.chmod(qq, mode & 0o7777)
        os.chown(qq, pwd_uid('qmailq'), os.stat(qq).st_gid)
        os.chmod(qq, mode & 0o7777)


def test_a_second_qmail_start_is_refused_and_touches_nothing(world, test_user):
    """qmail-start while qmail-send runs (README's line typed twice, a
    supervisor's second copy) said qmail-send was running, but its
    qmail-queued had replaced the running one's socket first: every
    injection then took bin/qmail-queue, slowly, till the next restart."""
    home, u2 = world['home'], world['u2']
    sock = os.path.join(home, 'run', 'qmail-queue.sock')
    before = os.stat(sock).st_ino
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-start'), './Maildir/'],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT,
                       env={'PATH': '/usr/bin:/bin'})
    assert (r.returncode, r.stdout) == (111, b'alert: cannot start: qmail-send is '
                                             b'already running\n'), r
    time.sleep(0.5)                     # (what it forked had time to act)
    assert os.stat(sock).st_ino == before
    qq = os.path.join(home, 'bin', 'qmail-queue')
    mode = os.stat(qq).st_mode
    os.chmod(qq, 0)                     # only qmail-queued can take it
    try:
        was = listing(u2)
        r = run_as(test_user, [home + '/bin/sendmail', 'qmtu2@' + DOMAIN],
                   input=b'Subject: after a refused start\n\nb\n')
        assert r.returncode == 0, r.stderr
        wait_new(u2, was)
    finally:
        os.chmod(qq, mode & 0o7777)
        os.chown(qq, pwd_uid('qmailq'), os.stat(qq).st_gid)
        os.chmod(qq, mode & 0o7777)


def test_unreadable_control_waits_instead_of_crash_looping(tmp_path):
    """control/locals unreadable by qmails: qmail-send says why, keeps
    running and starts as soon as it is repaired."""
    home = install_home(DOMAIN)
    locals_ = os.path.join(home, 'control', 'locals')
    os.chmod(locals_, 0o600)             # root only: qmails cannot read it
    logpath = os.path.join(os.path.dirname(home), 'ctl.log')
    with open(logpath, 'wb') as logf:
        p = subprocess.Popen([home + '/bin/qmail-start', './Maildir/'], stdout=logf,
                             stderr=subprocess.STDOUT, env={'PATH': '/usr/bin:/bin'},
                             start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while b'unable to read controls' not in open(logpath, 'rb').read():
            assert time.monotonic() < deadline, open(logpath, 'rb').read()
            assert p.poll() is None, 'qmail-send exited'
            time.sleep(0.1)
        time.sleep(1)
        assert p.poll() is None, 'qmail-send exited instead of waiting'
        os.chmod(locals_, 0o644)
        deadline = time.monotonic() + TIMEOUT
        while b'status: local 0/10' not in open(logpath, 'rb').read():
            assert time.monotonic() < deadline, open(logpath, 'rb').read()
            time.sleep(0.2)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=TIMEOUT)
        remove_home(home)


def test_a_list_post_costs_qmail_send_its_bytes_not_an_object_each():
    """One message of 100,000 recipients (a list post): qmail-send's
    memory grows by a few times the envelope's bytes, its recipient list
    read a record at a time as qmail reads it (it held a tuple and a
    bytes object per recipient: 7.8 times the envelope).  The remote
    channel is held (concurrencyremote 0), so the pass starts and no
    delivery does."""
    home = install_home(DOMAIN)
    with open(os.path.join(home, 'control', 'concurrencyremote'), 'w') as f:
        f.write('0\n')
    mta = Mta(home, logname='list.log')
    try:
        # qmail-start becomes qmail-send once its daemons are forked off
        # (a process it spawns shows its title for an instant, until exec)
        pid = mta.proc.pid
        procs = group_processes(pid)
        assert procs[pid][1].startswith('qmail-send'), procs
        base = rss_kb(pid)[0]
        recips = ['member%06d@list.remote.example' % i for i in range(100000)]
        env_bytes = sum(len(r) + 2 for r in recips)
        queue_raw(home, 'list-owner@example.com', recips, b'Subject: a post\n\nb\n')
        mta.wait_log('new msg')
        time.sleep(2)               # the pass starts at once; at most 2 s for a slow machine
        grown = (rss_kb(pid)[1] - base) * 1024
        assert grown < 5 * env_bytes, (grown, env_bytes)
    finally:
        mta.stop()
        remove_home(home)


@pytest.mark.parametrize('name, value', [
    ('concurrencylocal', 'lots'), ('queuelifetime', '-5'), ('bouncemaxbytes', 'x'),
])
def test_invalid_control_values_fall_back_to_defaults(tmp_path, name, value):
    home = install_home(DOMAIN)
    with open(os.path.join(home, 'control', name), 'w') as f:
        f.write(value + '\n')
    mta = Mta(home, './Maildir/')
    try:
        assert 'status: local 0/10 remote 0/20' in mta.log()
    finally:
        mta.stop()
        remove_home(home)


def wait_lines(path, count, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            lines = open(path).read().splitlines()
            if len(lines) >= count:
                return lines
        time.sleep(0.05)
    raise AssertionError('%s: fewer than %d lines' % (path, count))


def test_delivery_workers_one_user_each_fresh_environment(world):
    """qmail-lspawn's delivery workers: deliveries for one user, one
    after another, run in the same worker (the program's parent), each
    with its own environment (no EXT left over from the delivery before);
    another user's delivery never runs in that worker."""
    home, u1, u2 = world['home'], world['u1'], world['u2']
    out2 = os.path.join(u2[3], 'worker.out')
    out1 = os.path.join(u1[3], 'worker.out')
    line = '|echo "$PPID $(id -u) default=${DEFAULT-unset}" >> %s\n'
    write_qmail(u2, 'wk-default', line % out2)
    write_qmail(u2, 'wkx', line % out2)
    write_qmail(u1, 'wk-default', line % out1)
    for i, (user, ext) in enumerate([(u2, 'wk-a'), (u2, 'wkx'), (u1, 'wk-c'), (u2, 'wk-d')]):
        queue_raw(home, 's@example.com', ['%s-%s@%s' % (user[0], ext, DOMAIN)],
                  b'Subject: w%d\n\nb\n' % i)
        wait_lines(out2 if user is u2 else out1, 3 if i == 3 else (1 if i == 2 else i + 1))
    lines2 = [ln.split() for ln in open(out2).read().splitlines()]
    lines1 = [ln.split() for ln in open(out1).read().splitlines()]
    assert [ln[2] for ln in lines2] == ['default=a', 'default=unset', 'default=d']
    assert lines1[0][2] == 'default=c'
    assert len({ln[0] for ln in lines2}) == 1, lines2          # one worker for qmtu2
    assert lines1[0][0] != lines2[0][0]                        # another for qmtu1
    assert {ln[1] for ln in lines2} == {str(u2[1])} and lines1[0][1] == str(u1[1])


def test_delivery_worker_killed_mid_delivery_is_retried(world):
    """kill -9 of the worker while qmail-local runs: the delivery is
    reported as a crash (deferral), a new worker delivers it on retry,
    once; a killed qmail-getpw helper is replaced."""
    home, u2, mta = world['home'], world['u2'], world['mta']
    flag = os.path.join(u2[3], 'wkill.flag')
    pidf = os.path.join(u2[3], 'wkill.pid')
    write_qmail(u2, 'wkill', '|echo $PPID > %s; while ! test -f %s; do sleep 0.05; done\n'
                './Maildir/\n' % (pidf, flag))
    before = listing(u2)
    queue_raw(home, 's@example.com', ['qmtu2-wkill@' + DOMAIN], b'Subject: wkill\n\nb\n')
    worker = int(wait_lines(pidf, 1)[0])
    assert open('/proc/%d/cmdline' % worker).read().startswith('qmail-local qmtu2')
    os.kill(worker, signal.SIGKILL)
    open(flag, 'w').close()         # the program, orphaned, ends: the pipe closes
    mta.wait_log('deferral: qmail-local_crashed./')
    helper = subprocess.run(['pgrep', '-x', '-u', 'qmailp', 'qmail-getpw'],
                            capture_output=True, text=True, timeout=TIMEOUT).stdout.split()
    assert helper
    for pid in helper:
        os.kill(int(pid), signal.SIGKILL)
    time.sleep(1.1)
    mta.signal(signal.SIGALRM)
    path, = wait_new(u2, before)
    assert b'Subject: wkill' in open(path, 'rb').read()
    assert int(open(pidf).read()) != worker
    # a user found through qmail-getpw after its helper was killed
    before = listing(u2)
    queue_raw(home, 's@example.com', ['qmtu2@' + DOMAIN], b'Subject: after helper\n\nb\n')
    path, = wait_new(u2, before)
    time.sleep(0.3)
    assert len(new_mail(u2, before)) == 1


def test_a_qmail_queued_that_cannot_start_says_why_in_the_log(world):
    """qmail-queued's fd 2 was /dev/null: a daemon that could not listen
    (or, under ulimit -n 24, open that /dev/null) ended with "exit 111"
    in qmail-send's alert and no reason anywhere."""
    home = install_home(DOMAIN)
    run = os.path.join(home, 'run')
    os.chown(run, 0, 0)             # qmailq may not make its socket here
    os.chmod(run, 0o755)
    mta = Mta(home, './Maildir/')
    try:
        mta.wait_log('alert: qmail-queued: unable to listen on %s/qmail-queue.sock: '
                     'Permission denied' % run)
        mta.wait_log('alert: qmail-queued ended (exit 111)')
        before = listing(world['u2'])
        queue_raw(home, 'someone@example.com', ['qmtu2@' + DOMAIN], b'Subject: q\n\nx\n')
        wait_new(world['u2'], before)
    finally:
        mta.stop()
        remove_home(home)


def test_a_busy_queue_writer_does_not_hold_the_log_open(world):
    """qmail-queued's writers had the log's pipe as fd 2: one in an
    injection outlived qmail-send (qmail-queue's DEATH is a day), and the
    logger qmail-start ran (cat here; splogger, multilog) never saw its
    end.  Writers have /dev/null there now."""
    import array
    import socket as socketmod
    home = install_home(DOMAIN)
    logpath = os.path.join(os.path.dirname(home), 'logger.out')
    client = None
    with open(logpath, 'wb') as out:
        proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-start'), './Maildir/', 'cat'],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={'PATH': '/usr/bin:/bin'}, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while b'status: local 0/' not in open(logpath, 'rb').read():
            assert time.monotonic() < deadline, 'qmail-send did not start'
            time.sleep(0.05)
        logger = [p for p, (pp, t) in group_processes(proc.pid).items()
                  if pp == proc.pid and t == 'cat']
        assert len(logger) == 1
        # an injection that never comes: a writer waits for it
        client = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
        client.connect(os.path.join(home, 'run', 'qmail-queue.sock'))
        pm, pe = os.pipe(), os.pipe()
        client.sendmsg([b'Q'], [(socketmod.SOL_SOCKET, socketmod.SCM_RIGHTS,
                                 array.array('i', [pm[0], pe[0]]))])
        client.settimeout(TIMEOUT)
        assert client.recv(32).endswith(b'\n')         # a writer took it
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while os.path.exists('/proc/%d' % logger[0]):
            with open('/proc/%d/stat' % logger[0]) as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    break
            assert time.monotonic() < deadline, 'the logger still runs: its pipe is held'
            time.sleep(0.05)
    finally:
        if client is not None:
            client.close()
            for fd in pm + pe:
                os.close(fd)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        remove_home(home)


def test_qmail_start_without_descriptors_says_why(world):
    """qmail-start that cannot make its pipes (ulimit -n 22) exits 111;
    as C qmail's, it said nothing at all."""
    import resource
    home = install_home(DOMAIN)
    log = os.path.join(os.path.dirname(home), 'start.log')
    try:
        with open(log, 'wb') as f:
            r = subprocess.run(
                [os.path.join(home, 'bin', 'qmail-start'), './Maildir/'],
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                env={'PATH': '/usr/bin:/bin'}, timeout=TIMEOUT,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (22, 22)))
        assert r.returncode == 111
        assert open(log).read() == 'alert: cannot start: qmail-start: Too many open files\n'
    finally:
        remove_home(home)


def test_a_dead_qmail_queued_is_reaped_and_mail_still_flows(world):
    """qmail-queued is qmail-send's child (qmail-start forked it, then
    became qmail-send): killed, it was a zombie till the next restart and
    nothing said so.  Now it is reaped and told, and injections go on
    through bin/qmail-queue."""
    home = install_home(DOMAIN)
    u2 = world['u2']
    mta = Mta(home, './Maildir/')
    try:
        mta.wait_log('status: local 0/')
        procs = group_processes(mta.proc.pid)
        master = [p for p, (pp, t) in procs.items()
                  if t.startswith('qmail-queued') and pp == mta.proc.pid]
        assert len(master) == 1, procs
        for p, (pp, t) in procs.items():
            if t.startswith('qmail-queued'):
                os.kill(p, signal.SIGKILL)
        mta.wait_log('alert: qmail-queued ended (signal 9); injections go through '
                     'bin/qmail-queue until qmail-send restarts')
        deadline = time.monotonic() + TIMEOUT
        while os.path.exists('/proc/%d' % master[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists('/proc/%d' % master[0]), 'qmail-queued left a zombie'
        before = listing(u2)
        queue_raw(home, 'someone@example.com', ['qmtu2@' + DOMAIN], b'Subject: after\n\nx\n')
        wait_new(u2, before)
        assert mta.proc.poll() is None
    finally:
        mta.stop()
        remove_home(home)
