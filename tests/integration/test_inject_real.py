"""sendmail and qmail-inject from an installed home, run by an ordinary user."""

import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import TIMEOUT, needs_root, queue_files, run_as

pytestmark = needs_root

DIRS = ('mess', 'intd', 'todo')


def new_messages(home, before):
    """{messid: (message bytes, envelope bytes)} for todo/ entries not in before."""
    q = os.path.join(home, 'queue')
    out = {}
    for f in queue_files(home, 'todo'):
        if f in before:
            continue
        messid = int(f.split('/')[1])
        env = open(os.path.join(q, f), 'rb').read()
        mess = open(os.path.join(q, 'mess/%d/%d' % (messid % 23, messid)), 'rb').read()
        out[messid] = (mess, env)
    return out


def header_of(mess):
    return mess.split(b'\n\n', 1)[0].split(b'\n')


def test_sendmail_t(home, test_user):
    before = queue_files(home, *DIRS)
    msg = b'To: Alice <alice@example.org>, bob\nSubject: hello\nBcc: secret@example.net\n\nbody\n'
    r = run_as(test_user, [home + '/bin/sendmail', '-t', '-i'], input=msg)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b''
    (mess, env), = new_messages(home, before).values()
    name, uid, gid = test_user
    assert env.startswith(b'u%d\0p' % uid)
    records = env.split(b'\0')
    assert records[2] == b'F%s@test.example.org' % name.encode()
    assert sorted(records[3:-1]) == [b'Talice@example.org', b'Tbob@test.example.org',
                                     b'Tsecret@example.net']
    head = header_of(mess)
    assert re.match(rb'Received: \(qmail \d+ invoked by uid %d\); ' % uid, head[0])
    assert not any(h.lower().startswith(b'bcc:') for h in head), 'Bcc kept'
    assert any(re.match(rb'Date: \d+ \w\w\w \d{4} \d\d:\d\d:\d\d -0000$', h) for h in head), head
    assert any(re.match(rb'Message-ID: <\d+\.\d+\.qmail@test\.example\.org>$', h, re.I) for h in head), head
    assert b'From: %s@test.example.org' % name.encode() in head
    assert b'To: Alice <alice@example.org>, bob@test.example.org' in head
    assert mess.endswith(b'\n\nbody\n')


def test_qmail_inject_arguments_and_sender(home, test_user):
    before = queue_files(home, *DIRS)
    r = run_as(test_user, [home + '/bin/qmail-inject', '-fbounces@example.com',
                           'x@example.org', 'y'], input=b'Subject: s\n\nb\n')
    assert r.returncode == 0, r.stderr
    (mess, env), = new_messages(home, before).values()
    assert env.split(b'\0')[2:-1] == [b'Fbounces@example.com', b'Tx@example.org',
                                      b'Ty@test.example.org']
    assert b'Cc: recipient list not shown: ;' in header_of(mess)


def test_sendmail_f_sets_from(home, test_user):
    before = queue_files(home, *DIRS)
    r = run_as(test_user, [home + '/bin/sendmail', '-f', 'list-owner@example.com',
                           '-F', 'The List', 'z@example.org'], input=b'Subject: s\n\nb\n')
    assert r.returncode == 0, r.stderr
    (mess, env), = new_messages(home, before).values()
    assert env.split(b'\0')[2] == b'Flist-owner@example.com'
    assert b'From: "The List" <list-owner@example.com>' in header_of(mess)


def test_qmailqueue_is_honoured(home, test_user, tmp_path):
    d = tempfile.mkdtemp(prefix='qq-fake.', dir='/tmp')   # (removed below: one was left a run)
    os.chmod(d, 0o777)
    script = os.path.join(d, 'fake-qq')
    with open(script, 'w') as f:
        f.write('#!/bin/sh\ncat > %s/mess; cat <&1 > %s/env 2>/dev/null || true; exit 0\n' % (d, d))
    os.chmod(script, 0o755)
    before = queue_files(home, *DIRS)
    r = run_as(test_user, [home + '/bin/qmail-inject', 'q@example.org'],
               input=b'Subject: via fake\n\nb\n', env={'QMAILQUEUE': script})
    assert r.returncode == 0, r.stderr
    try:
        assert b'Subject: via fake' in open(os.path.join(d, 'mess'), 'rb').read()
        assert new_messages(home, before) == {}
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize('argv, msg, code', [
    (['-t'], b'To: "unbalanced@example.org\n\nb\n', 100),
    (['-t'], b'To: (unbalanced comment a@example.org\n\nb\n', 100),
    (['-t'], b'Subject: no recipients\n\nb\n', 100),
    (['nobody@' + 'x' * 102400 + '.example.org'], b'Subject: big\n\nb\n', 100),
    (['-Q'], b'', 100),
])
def test_bad_input_is_refused_cleanly(home, test_user, argv, msg, code):
    before = queue_files(home, *DIRS)
    r = run_as(test_user, [home + '/bin/sendmail'] + argv, input=msg)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert r.stderr.count(b'\n') == 1, r.stderr
    assert b'Traceback' not in r.stderr
    assert r.stderr.startswith((b'sendmail:', b'qmail-inject:')), r.stderr
    assert queue_files(home, *DIRS) == before


def test_huge_header_line_nul_bytes_and_many_recipients(home, test_user):
    before = queue_files(home, *DIRS)
    to = b', '.join(b'user%d@example.org' % i for i in range(10000))
    msg = (b'To: ' + to + b'\nX-Long: ' + b'a' * (1024 * 1024) +
           b'\nSubject: nul\0here\n\nbody\0with nul\n')
    r = run_as(test_user, [home + '/bin/sendmail', '-t'], input=msg)
    assert r.returncode == 0, r.stderr
    (mess, env), = new_messages(home, before).values()
    assert env.count(b'\0T') == 10000
    assert b'a' * (1024 * 1024) in mess
    assert mess.endswith(b'body\0with nul\n')


def test_sendmail_bp_lists_the_queue(home, test_user):
    r = run_as(test_user, [home + '/bin/sendmail', 'listme@example.org'],
               input=b'Subject: list me\n\nb\n')
    assert r.returncode == 0
    r = subprocess.run([home + '/bin/sendmail', '-bp'], capture_output=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert b'\ttodo\tlistme@example.org\n' in r.stdout
    r = run_as(test_user, [home + '/bin/sendmail', '-bp'])
    assert r.returncode == 111          # the queue is not the user's to read


def test_qstat_counts_messages(home):
    r = subprocess.run([home + '/bin/qmail-qstat'], capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0
    lines = r.stdout.decode().splitlines()
    mess = int(lines[0].split(': ')[1])
    todo = int(lines[1].split(': ')[1])
    assert lines[0].startswith('messages in queue: ')
    assert lines[1].startswith('messages in queue but not yet preprocessed: ')
    assert mess == len(queue_files(home, 'mess')) and todo == len(queue_files(home, 'todo'))


def test_kill_sendmail_at_random_points(fresh_home, test_user):
    """SIGKILL anywhere in sendmail -> qmail-inject -> qmail-queue leaves
    no todo/ entry naming an incomplete message or envelope."""
    rng = random.Random(7)
    name, uid, gid = test_user
    body = b''.join(b'body line %d\n' % i for i in range(20000))
    msg = b'To: a@example.org\nSubject: kill\n\n' + body
    outcomes = []
    for attempt in range(20):
        p = subprocess.Popen([fresh_home + '/bin/sendmail', '-t'], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             user=uid, group=gid, extra_groups=[],
                             env={'PATH': '/usr/bin:/bin', 'USER': name},
                             start_new_session=True)
        deadline = time.monotonic() + rng.uniform(0, 0.15)
        killed = False
        try:
            for i in range(0, len(msg), 16384):
                p.stdin.write(msg[i:i + 16384])
                p.stdin.flush()
            p.stdin.close()
        except BrokenPipeError:
            pass
        while p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)     # sendmail and its qmail-queue
            killed = True
        p.wait(timeout=TIMEOUT)
        outcomes.append('killed' if killed else p.returncode)
    q = os.path.join(fresh_home, 'queue')
    todo = os.listdir(os.path.join(q, 'todo'))
    for f in todo:
        messid = int(f)
        env = open(os.path.join(q, 'todo', f), 'rb').read()
        assert re.match(rb'u\d+\0p\d+\0F[^\0]*\0(T[^\0]+\0)+$', env), env[:80]
        mess = open(os.path.join(q, 'mess/%d/%d' % (messid % 23, messid)), 'rb').read()
        assert mess.endswith(body), 'todo/%s names a partial message' % f
    assert len(todo) >= outcomes.count(0)
    assert 'killed' in outcomes, outcomes


def test_sendmail_bs_speaks_smtp_on_stdio(fresh_home, test_user):
    """sendmail -bs runs qmail-smtpd on stdin/stdout, relaying allowed."""
    home = fresh_home
    session = (b'HELO me\r\nMAIL FROM:<u@example.com>\r\n'
               b'RCPT TO:<anyone@elsewhere.example>\r\nDATA\r\n'
               b'Subject: over bs\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n')
    r = run_as(test_user, [home + '/bin/sendmail', '-bs'], input=session)
    assert r.returncode == 0, r.stderr
    replies = r.stdout.split(b'\r\n')
    assert replies[0].startswith(b'220 test.example.org ESMTP'), replies
    codes = [line[:3] for line in replies if line]
    assert codes == [b'220', b'250', b'250', b'250', b'354', b'250', b'221'], replies
    (mess, env), = new_messages(home, []).values()
    assert env.split(b'\0')[2:-1] == [b'Fu@example.com', b'Tanyone@elsewhere.example']
    assert b'(sendmail-bs@127.0.0.1)' in mess.split(b'\n\n')[0]
    assert mess.endswith(b'Subject: over bs\n\n.dot\nbody\n')


def test_sendmail_bs_has_no_limits_and_no_log(fresh_home, test_user):
    """As qmail's, sendmail -bs takes a message for more recipients than
    maxrcptsmtpd lets a network client name, and more refused commands
    than maxerrorssmtpd; and it writes nothing on fd 2, which a mailer
    library may never read (a full pipe there would stop it)."""
    home = fresh_home
    rcpts = b''.join(b'RCPT TO:<u%d@elsewhere.example>\r\n' % i for i in range(1500))
    session = (b'HELO me\r\n' + b'BOGUS\r\n' * 30 + b'MAIL FROM:<u@example.com>\r\n'
               + rcpts + b'DATA\r\nSubject: many\r\n\r\nbody\r\n.\r\nQUIT\r\n')
    r = run_as(test_user, [home + '/bin/sendmail', '-bs'], input=session)
    assert (r.returncode, r.stderr) == (0, b''), r
    codes = [line[:3] for line in r.stdout.split(b'\r\n') if line]
    assert codes == [b'220', b'250'] + [b'502'] * 30 + [b'250'] * 1501 + [
        b'354', b'250', b'221'], sorted(set(codes))
    (mess, env), = new_messages(home, []).values()
    assert sum(f.startswith(b'T') for f in env.split(b'\0')) == 1500, env[-200:]
