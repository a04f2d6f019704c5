"""qmail-qrm on scratch queues: choosing, removing whole messages with
qmail-send stopped, D marks for chosen recipients, and what it says.
The real thing, with qmail-send running and stopped, is in
tests/integration/test_queue_real.py; its crash safety is
qmail-crashtest's "qrm" scenario."""

import os
import time

import pytest

from qmail import qrm
from qmail.lib.qfile import qfn

SPLIT = 3


@pytest.fixture
def queue(tmp_path, monkeypatch):
    q = tmp_path / 'queue'
    for d in ('info', 'local', 'remote', 'mess'):
        for i in range(SPLIT):
            (q / d / str(i)).mkdir(parents=True)
    for d in ('todo', 'intd', 'bounce', 'lock'):
        (q / d).mkdir()
    monkeypatch.chdir(q)
    return q


def put(name, data: bytes):
    with open(name, 'wb') as f:
        f.write(data)


def get(name):
    try:
        with open(name, 'rb') as f:
            return f.read()
    except FileNotFoundError:
        return None


def preprocessed(messid, sender, local=(), remote=(), bounce=None):
    put(qfn('mess', messid, SPLIT), b'Subject: x\n\nbody\n')
    put(qfn('info', messid, SPLIT), b'F' + sender + b'\0')
    if local:
        put(qfn('local', messid, SPLIT), b''.join(b'T' + r + b'\0' for r in local))
    if remote:
        put(qfn('remote', messid, SPLIT), b''.join(b'T' + r + b'\0' for r in remote))
    if bounce is not None:
        put(qfn('bounce', messid, SPLIT), bounce)


def in_todo(messid, sender, recips):
    put(qfn('mess', messid, SPLIT), b'Subject: x\n\nbody\n')
    put(qfn('intd', messid, SPLIT), b'u0\0p1\0F' + sender + b'\0')
    put(qfn('todo', messid, SPLIT), b'u0\0p1\0F' + sender + b'\0'
        + b''.join(b'T' + r + b'\0' for r in recips) + b'\0')


def files_of(messid):
    return sorted(d for d in ('mess', 'info', 'local', 'remote', 'todo', 'intd', 'bounce')
                  if os.path.exists(qfn(d, messid, SPLIT)))


def run(ids=(), s=(), r=(), dry=False, live=False):
    said = []
    job = qrm.Run(SPLIT, said.append, list(ids), list(s), list(r), dry, live, wait=0.3)
    for messid in (list(ids) or qrm.queued_ids(SPLIT)):
        job.take(messid, bool(ids))
    return job, said


# -- choosing -----------------------------------------------------------------

@pytest.mark.parametrize('patterns, address, want', [
    (['*@bad.example'], b'x@bad.example', True),
    (['*@bad.example'], b'x@BAD.Example', True),
    (['*@BAD.example'], b'x@bad.example', True),
    (['*@bad.example'], b'x@notbad.example.org', False),
    (['<>'], b'', True),
    ([''], b'', True),
    (['<>'], b'x@y', False),
    (['*'], b'', True),
    (['a@*', 'b@*'], b'b@z', True),
    (['joe'], b'joe@host', False),
    (['<>'], b'#@[]', True),                   # a double bounce is a bounce
    (['u@[1.2.3.4]'], b'u@[1.2.3.4]', True),  # the address itself, [ ] and all
    (['u@[1.2.3.4]'], b'u@[1.2.3.5]', False),
    (['*\\xff*'], b'a\xffb', False),        # bytes not UTF-8 are not a crash
])
def test_matches(patterns, address, want):
    assert qrm.matches(patterns, address) is want


@pytest.mark.parametrize('argv, want', [
    (['123'], (False, [], [], [123], [], False)),
    (['#123', '45'], (False, [], [], [123, 45], [], False)),
    (['-n', '-s', '*@x'], (True, ['*@x'], [], [], [], False)),
    (['-ns*@x'], (True, ['*@x'], [], [], [], False)),
    (['-r', 'a@*', '-r', 'b@*', '7'], (False, [], ['a@*', 'b@*'], [7], [], False)),
    (['-s', '<>'], (False, ['<>'], [], [], [], False)),
    (['--', '9'], (False, [], [], [9], [], False)),
    (['-S', '*lottery*', '-S*prize*'], (False, [], [], [], ['*lottery*', '*prize*'], False)),
    (['-b', '7'], (False, [], [], [7], [], True)),
    (['-nbs', 'x@*'], (True, ['x@*'], [], [], [], True)),
    (['-b', '-r', 'x@*', '7'], None),
    ([], None),                         # nothing chosen: never "all"
    (['-n'], None),
    (['-s'], None),
    (['-x', '1'], None),
    (['abc'], None),
    (['#'], None),
    (['-1'], None),
])
def test_parse_args(argv, want):
    assert qrm.parse_args(argv) == want


def test_chosen_recipients_skip_those_done():
    data = b'Ta@x\0Db@x\0Tc@y\0'
    assert qrm.chosen_recipients(data, None) == [(0, b'a@x'), (10, b'c@y')]
    assert qrm.chosen_recipients(data, ['*@y']) == [(10, b'c@y')]
    assert qrm.chosen_recipients(data, ['b@x']) == []


def test_shown_has_no_control_characters():
    """As qmail-qread prints: no C0 or C1 control, no bidi override."""
    assert qrm.shown(b'a\x1b[2J\nb\xff@x') == 'a_[2J_b_@x'
    assert qrm.shown('x\u009b2J\u202eb@y'.encode()) == 'x__2J___b@y'


def test_usage_is_100_and_must_be_root(monkeypatch, capsys):
    assert qrm.main([]) == 100
    assert 'usage: qmail-qrm' in capsys.readouterr().out
    monkeypatch.setattr(os, 'geteuid', lambda: 1000)
    assert qrm.main(['1']) == 111
    assert 'must be run as root' in capsys.readouterr().out


# -- qmail-send stopped ---------------------------------------------------------

def test_whole_messages_go_with_every_file(queue):
    preprocessed(10, b'spam@bad.example', [b'u@here'], [b'x@far'], bounce=b'<u2@here>:\nNo.\n\n')
    preprocessed(11, b'good@ok.example', [b'u@here'])
    in_todo(12, b'more@bad.example', [b'v@here'])
    put(qfn('info', 12, SPLIT), b'F')       # an interrupted preprocessing's
    job, said = run(s=['*@bad.example'])
    assert files_of(10) == [] and files_of(12) == []
    assert files_of(11) == ['info', 'local', 'mess']
    assert said == ['#10 <spam@bad.example>: removed', '#12 <more@bad.example>: removed']
    assert (job.code, job.summary()) == (0, '2 messages removed')


def test_recipients_taken_get_d_marks(queue):
    preprocessed(20, b'a@b', [b'u@here', b'w@here'], [b'x@far'], bounce=b'<y@far>:\nNo.\n\n')
    job, said = run(r=['w@*', 'x@*'])
    assert get(qfn('local', 20, SPLIT)) == b'Tu@here\0Dw@here\0'
    assert get(qfn('remote', 20, SPLIT)) == b'Dx@far\0'
    assert get(qfn('bounce', 20, SPLIT)) == b'<y@far>:\nNo.\n\n'     # the others' failures
    assert said == ['#20 <a@b>: removed local w@here', '#20 <a@b>: removed remote x@far']
    assert (job.code, job.summary()) == (0, '2 recipients removed')
    # Again: nothing left to take, nothing chosen.
    job, said = run(r=['w@*', 'x@*'])
    assert said == [] and job.summary() == '0 recipients removed'


def test_sender_and_recipient_both_choose(queue):
    preprocessed(30, b'a@b', [b'u@here'])
    preprocessed(31, b'c@d', [b'u@here'])
    run(s=['c@*'], r=['u@*'])
    assert get(qfn('local', 30, SPLIT)) == b'Tu@here\0'
    assert get(qfn('local', 31, SPLIT)) == b'Du@here\0'


def test_dry_run_changes_nothing(queue):
    preprocessed(40, b'a@b', [b'u@here'])
    in_todo(41, b'a@b', [b'v@here'])
    before = {m: files_of(m) for m in (40, 41)}
    job, said = run(s=['a@b'], dry=True)
    assert said == ['#40 <a@b>: would remove', '#41 <a@b>: would remove']
    job, said = run(r=['*@here'], dry=True)
    assert said == ['#40 <a@b>: would remove local u@here', '#41 <a@b>: would remove todo v@here']
    assert job.summary() == '2 recipients would be removed'
    assert {m: files_of(m) for m in (40, 41)} == before
    assert get(qfn('local', 40, SPLIT)) == b'Tu@here\0'


def test_recipients_of_a_message_in_todo_wait_for_qmail_send(queue):
    in_todo(50, b'a@b', [b'v@here', b'w@here'])
    job, said = run(r=['v@*'])
    assert job.code == 111
    assert said[0] == ('#50 <a@b>: still in todo/ (qmail-send has not preprocessed it: '
                       'start it first): not removed, try again')
    assert files_of(50) == ['intd', 'mess', 'todo']


def test_a_message_named_and_not_queued_is_100(queue):
    preprocessed(60, b'a@b', [b'u@here'])
    job, said = run(ids=[60, 61])
    assert said == ['#60 <a@b>: removed', '#61: not in the queue']
    assert job.code == 100
    assert files_of(60) == []


def test_a_broken_envelope_is_trouble_and_the_rest_goes_on(queue):
    preprocessed(70, b'a@b', [b'u@here'])
    put(qfn('info', 70, SPLIT), b'')            # no sender
    os.mkdir(qfn('local', 71, SPLIT))           # not a file
    put(qfn('info', 71, SPLIT), b'Fa@b\0')
    preprocessed(72, b'a@b', [b'u@here'])
    job, said = run(s=['a@b'])
    assert said[0] == '#70: trouble: info/ holds no sender: not removed, try again'
    assert said[1] == ('#71: trouble: %s: is a directory: not removed, try again'
                       % qfn('local', 71, SPLIT))
    assert said[2] == '#72 <a@b>: removed'
    assert job.code == 111
    assert files_of(70) == ['info', 'local', 'mess']


def test_a_huge_file_is_not_read_whole(queue, monkeypatch):
    monkeypatch.setattr(qrm, 'READ_MAX', 100)
    preprocessed(80, b'a@b', [b'u%d@here' % i for i in range(40)])
    job, said = run(s=['a@b'])
    assert said == ['#80: trouble: %s is longer than any envelope: not removed, try again'
                    % qfn('local', 80, SPLIT)]


def test_a_link_in_the_queue_is_not_followed(queue, tmp_path):
    outside = tmp_path / 'outside'
    outside.write_bytes(b'Tu@here\0')
    preprocessed(90, b'a@b')
    os.symlink(outside, qfn('local', 90, SPLIT))
    job, said = run(r=['u@*'])
    assert job.code == 111 and 'trouble' in said[0]
    assert outside.read_bytes() == b'Tu@here\0'


# -- qmail-send running -----------------------------------------------------

def test_running_whole_message_marked_and_its_bounce_dropped(queue):
    preprocessed(100, b'a@b', [b'u@here'], [b'x@far'], bounce=b'<y@far>:\nNo.\n\n')
    job = qrm.Run(SPLIT, [].append, [100], [], [], False, True, wait=0.3)
    job.take(100, True)
    assert get(qfn('local', 100, SPLIT)) == b'Du@here\0'
    assert get(qfn('remote', 100, SPLIT)) == b'Dx@far\0'
    assert files_of(100) == ['info', 'local', 'mess', 'remote']     # qmail-send's to finish
    assert [m.id for m in job.finishing] == [100]


def test_running_a_message_in_todo_is_waited_for(queue):
    in_todo(110, b'a@b', [b'v@here'])
    said = []
    job = qrm.Run(SPLIT, said.append, [], ['a@b'], [], False, True, wait=0.3)
    job.take(110, False)
    assert job.code == 111
    assert said == ['#110 <a@b>: still in todo/ (being delivered or preprocessed): '
                    'not removed, try again']


def test_running_without_qmail_send_found_says_what_to_do(queue, monkeypatch):
    preprocessed(120, b'a@b', [b'u@here'])
    preprocessed(121, b'a@b', [b'u@here'])
    said = []
    job = qrm.Run(SPLIT, said.append, [120, 121], [], [], False, True, wait=0.3)
    monkeypatch.setattr(qrm, 'mutex_holder', lambda qdir: None)
    job.take_all([120, 121], True)
    job.finish()
    assert said == ['#120 <a@b>: removed', '#121 <a@b>: removed',
                    'qmail-send not found: what is marked goes at its next retry (or at '
                    'once: svc -a on qmail-send)']
    assert job.code == 0


def test_a_mutex_held_by_another_program_gets_no_alrm(queue, monkeypatch):
    """The mutex's holder, from /proc/locks, gets ALRM only if it is
    qmail-send: qmail-fsck -r or a qmail-qrm holding it would be killed
    by it."""
    import fcntl
    put('lock/sendmutex', b'')
    fd = os.open('lock/sendmutex', os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert qrm.mutex_holder('.') == os.getpid()
        assert qrm.is_send(os.getpid()) is False    # pytest
        preprocessed(130, b'a@b', [b'u@here'])
        said = []
        job = qrm.Run(SPLIT, said.append, [130], [], [], False, True, wait=0.3)
        job.take_all([130], True)
        assert said[-1] == ('queue/lock/sendmutex is held by pid %d, not qmail-send '
                            '(qmail-fsck -r? another qmail-qrm?): what is marked goes when '
                            'qmail-send next looks at it' % os.getpid())
    finally:
        os.close(fd)


def test_is_send_without_a_title(tmp_path):
    """Without setproctitle qmail-send's title is the interpreter's
    command line: its script's name says who it is."""
    import subprocess
    import sys
    for name, want in (('qmail-start', True), ('qmail-send', True), ('qmail-fsck', False)):
        script = tmp_path / name
        script.write_text('import time\ntime.sleep(30)\n')
        proc = subprocess.Popen([sys.executable, '-I', str(script), './Maildir/'])
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with open('/proc/%d/cmdline' % proc.pid, 'rb') as f:
                    if name.encode() in f.read():
                        break
                time.sleep(0.01)
            assert qrm.is_send(proc.pid) is want, name
        finally:
            proc.kill()
            proc.wait()


def test_messages_in_todo_share_one_wait(queue, monkeypatch):
    """Messages still in todo/ while qmail-send runs: looked at again for
    WAIT seconds in all (each had its own 30 s, one after another), the
    others taken and qmail-send told first."""
    for m in (140, 141, 142):
        in_todo(m, b'a@b', [b'v@here'])
    preprocessed(143, b'a@b', [b'u@here'])
    told = []
    monkeypatch.setattr(qrm, 'mutex_holder', lambda qdir: 4242)
    monkeypatch.setattr(qrm, 'is_send', lambda pid: True)
    monkeypatch.setattr(os, 'kill', lambda pid, sig: told.append((pid, sig)))
    said = []
    job = qrm.Run(SPLIT, said.append, [], ['a@b'], [], False, True, wait=0.5)
    start = time.monotonic()
    job.take_all(qrm.queued_ids(SPLIT), False)
    assert time.monotonic() - start < 2
    assert said[0] == '#143 <a@b>: removed'
    assert told == [(4242, 14)]                 # at once, for #143
    assert said[1:] == ['#%d <a@b>: still in todo/ (being delivered or preprocessed): '
                        'not removed, try again' % m for m in (140, 141, 142)]
    assert job.code == 111


def test_a_named_message_delivered_meanwhile_is_said_so(queue):
    in_todo(150, b'a@b', [b'v@here'])
    said = []
    job = qrm.Run(SPLIT, said.append, [150], [], [], False, True, wait=2)
    assert job.take(150, True, last=False) is False
    for d in ('todo', 'intd', 'mess'):
        os.unlink(qfn(d, 150, SPLIT))
    assert job.take(150, True) is True
    assert said == ['#150: delivered before it could be removed'] and job.code == 100


def test_a_named_message_not_chosen_is_said_so(queue):
    preprocessed(160, b'a@b', [b'u@here'])
    job, said = run(ids=[160], s=['x@*'])
    assert said == ['#160 <a@b>: not chosen by -s or -r'] and job.code == 0
    assert files_of(160) == ['info', 'local', 'mess']


def test_numbers_from_stdin(monkeypatch):
    import io
    monkeypatch.setattr('sys.stdin', io.TextIOWrapper(io.BytesIO(b'#12 13\n14\n')))
    assert qrm.parse_args(['-n', '-', '9']) == (True, [], [], [9, 12, 13, 14], [], False)
    monkeypatch.setattr('sys.stdin', io.TextIOWrapper(io.BytesIO(b'12 x\n')))
    assert qrm.parse_args(['-']) is None
    monkeypatch.setattr('sys.stdin', io.TextIOWrapper(io.BytesIO(b'')))
    assert qrm.parse_args(['-']) is None


@pytest.mark.parametrize('head, want', [
    (b'From: a\nSubject: Win a prize\n\nbody Subject: no\n', 'Win a prize'),
    (b'subject:   folded\r\n  over two\r\n\tlines\r\nTo: x\r\n\r\n', 'folded over two lines'),
    (b'Subject: =?UTF-8?B?R2V3aW5uc3BpZWwgZsO8cg==?=\n\n', 'Gewinnspiel f\u00fcr'),
    (b'Subject: =?bogus?Q?x?=\n\n', '=?bogus?Q?x?='),
    (b'From: a\n\nSubject: in the body\n', ''),
    (b'X-Subject: no\n\n', ''),
    (b'Subject: \xff\xfe raw\n\n', '\ufffd\ufffd raw'),
])
def test_subject_of(head, want):
    assert qrm.subject_of(head) == want


def test_subject_chooses(queue):
    preprocessed(170, b'a@b', [b'u@here'])
    put(qfn('mess', 170, SPLIT), b'Subject: =?UTF-8?Q?You_won_the_LOTTERY?=\n\nbody\n')
    preprocessed(171, b'a@b', [b'u@here'])
    put(qfn('mess', 171, SPLIT), b'Subject: lunch\n\nthe lottery is a tax\n')
    said = []
    job = qrm.Run(SPLIT, said.append, [], ['a@b'], [], False, False, wait=0.3,
                  subjects=['*lottery*'])
    for messid in qrm.queued_ids(SPLIT):
        job.take(messid, False)
    assert said == ['#170 <a@b>: removed']
    assert files_of(170) == [] and files_of(171) == ['info', 'local', 'mess']


def test_expire(queue):
    """-b: the message made older than queuelifetime (info/'s time), for
    qmail-send to bounce what its next try does not deliver; nothing
    else changes.  Not with -r (whole messages only)."""
    preprocessed(180, b'a@b', [b'u@here'], [b'x@far'])
    before = {d: get(qfn(d, 180, SPLIT)) for d in ('local', 'remote', 'info')}
    said = []
    job = qrm.Run(SPLIT, said.append, [180], [], [], False, False, bounce=True,
                  lifetime=1000)
    start = time.time()
    job.take(180, True)
    assert said == ['#180 <a@b>: expired (what its next try does not deliver bounces)']
    assert job.summary() == '1 message expired'
    born = os.stat(qfn('info', 180, SPLIT)).st_mtime
    assert start - 1000 - qrm.EXPIRE_SLACK - 2 < born < start - 1000
    assert {d: get(qfn(d, 180, SPLIT)) for d in ('local', 'remote', 'info')} == before
    in_todo(181, b'a@b', [b'v@here'])
    said.clear()
    job = qrm.Run(SPLIT, said.append, [181], [], [], False, False, bounce=True)
    job.take(181, True)
    assert job.code == 111 and 'start it first' in said[0]
    assert qrm.parse_args(['-b', '-r', 'x@*']) is None


def test_a_message_file_that_cannot_be_read_for_its_subject(queue):
    """-S reads the message's head: a FIFO put there is not waited on (no
    subject: not chosen), a directory is trouble for that message only."""
    preprocessed(190, b'a@b', [b'u@here'])
    os.unlink(qfn('mess', 190, SPLIT))
    os.mkfifo(qfn('mess', 190, SPLIT))
    said = []
    job = qrm.Run(SPLIT, said.append, [], ['a@b'], [], True, False, subjects=['*x*'])
    job.take(190, False)
    assert said == [] and job.code == 0
    os.unlink(qfn('mess', 190, SPLIT))
    os.mkdir(qfn('mess', 190, SPLIT))
    job.take(190, False)
    assert said[0].startswith('#190: trouble: ') and job.code == 111, said
