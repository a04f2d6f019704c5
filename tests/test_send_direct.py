"""qmail-send's direct delivery: a new message for local recipients only
is delivered from todo/ with its recipient list in memory; info/ and
local/ are written only when it is not delivered to all (a deferral, a
failure, qmail-send stopping)."""

import heapq
import os
import time

import pytest

from qmail import send
from qmail.lib import durable
from qmail.lib.qfile import qfn
from scratch_send import put, scratch_send

SPLIT = 3


@pytest.fixture
def s(tmp_path, monkeypatch):
    s, s.log = scratch_send(tmp_path, monkeypatch, SPLIT)
    s.direct_max = send.DIRECT_MAX
    s.direct_rcpt = 8           # the machinery for several (marks, spills); main's is 1
    s.bg.inline = True
    s.asked = []

    def clean_request(reqs, then=None):
        """qmail-clean, as far as the files go."""
        for r in reqs:
            kind, messid = r.split('/')
            names = ['intd/' + messid] + ([qfn('todo', int(messid), SPLIT)] if kind == 'todo'
                                          else [qfn('mess', int(messid), SPLIT)])
            for name in names:
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass
        s.asked.extend(reqs)
        if then is not None:
            then([True] * len(reqs))
    s.clean_request = clean_request
    s.created = []
    real_create = durable.create_excl
    monkeypatch.setattr(durable, 'create_excl',
                        lambda fn, mode=0o644: s.created.append(fn) or real_create(fn, mode))
    return s


def read(path) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


def queue(s, messid, recips, sender=b'a@b.example'):
    put(qfn('mess', messid, SPLIT), b'Subject: x\n\nbody\n')
    put('intd/%d' % messid, b'')
    put(qfn('todo', messid, SPLIT), b'u0\0p1\0F' + sender + b'\0'
        + b''.join(b'T' + r + b'\0' for r in recips))


def disk_full_for(monkeypatch, path):
    """durable.create_excl fails with ENOSPC for path while full[0]
    (the list returned) is true."""
    real_create = durable.create_excl
    full = [True]

    def create_excl(fn, mode=0o644):
        if full[0] and fn == path:
            raise OSError(28, 'No space left on device')
        return real_create(fn, mode)
    monkeypatch.setattr(durable, 'create_excl', create_excl)
    return full


def start(s, recent=None):
    """The passes, every delivery they can start taken by qmail-lspawn."""
    s.recent = recent or int(time.time()) + 1
    for _ in range(100):
        if not s.pass_dochan(0):
            break
        s.comm_buf[0] = b''
    return {d.recip: i for i, d in enumerate(s.dels[0]) if d is not None}


def report(s, slot, text):
    s.del_reports(0, [bytes((slot,)) + text])


def test_delivered_to_all_no_info_nor_local_nor_marks(s):
    queue(s, 31, [b'u@here.example', b'v@here.example'])
    s.preprocess_batch([31])
    assert 31 in s.directs and 31 in s.unsettled
    assert s.created == [] and s.asked == []
    assert 'new msg 31\n' in s.log
    slots = start(s)
    assert sorted(slots) == [b'u@here.example', b'v@here.example']
    report(s, slots[b'u@here.example'], b'Kdid 1+0+0\n')
    assert s.asked == []                        # one recipient to go: todo/ stays
    assert os.path.exists(qfn('todo', 31, SPLIT))
    report(s, slots[b'v@here.example'], b'Kdid 1+0+0\n')
    assert s.asked == ['todo/31', 'foop/31']    # todo/ first, then the rest
    assert s.created == []                      # never an info/ nor a local/
    assert 'end msg 31\n' in s.log
    assert s.directs == {} and s.unsettled == {} and s.jobs_open == 0
    assert not os.path.exists(qfn('mess', 31, SPLIT))
    assert s.pqchan == [[], []] and s.pqdone == []


def test_a_failure_spills_info_and_the_message_goes_to_its_bounce(s):
    queue(s, 32, [b'u@here.example', b'v@here.example'])
    s.preprocess_batch([32])
    slots = start(s)
    report(s, slots[b'u@here.example'], b'DSorry, no mailbox here by that name. (#5.1.1)\n')
    report(s, slots[b'v@here.example'], b'Kdid 1+0+0\n')
    assert read(qfn('bounce', 32, SPLIT)).startswith(b'<u@here.example>:\n')
    assert read(qfn('info', 32, SPLIT)) == b'Fa@b.example\0'
    # Nobody left to deliver to: no local/ (messdone would wait for it).
    assert not os.path.exists(qfn('local', 32, SPLIT))
    assert s.asked == ['todo/32'] and not os.path.exists(qfn('todo', 32, SPLIT))
    assert [m for _, m in s.pqdone] == [32] and s.pqchan[0] == []
    assert 'end msg 32\n' not in s.log          # messdone's, after the bounce
    assert s.directs == {} and s.unsettled == {} and s.spilled == {}


def test_a_deferral_spills_local_with_the_marks_of_what_was_done(s):
    queue(s, 33, [b'u@here.example', b'v@here.example'])
    s.preprocess_batch([33])
    slots = start(s)
    report(s, slots[b'u@here.example'], b'ZUnable to chdir to maildir. (#4.2.1)\n')
    report(s, slots[b'v@here.example'], b'Kdid 1+0+0\n')
    assert read(qfn('local', 33, SPLIT)) == b'Tu@here.example\0Dv@here.example\0'
    assert read(qfn('info', 33, SPLIT)) == b'Fa@b.example\0'
    assert s.asked == ['todo/33']
    (when, messid), = s.pqchan[0]
    assert messid == 33 and when > time.time()  # the retry, as any deferral's
    assert s.directs == {} and s.unsettled == {}
    # The retry reads the file: v@ is not delivered again.
    s.dels = [[None] * 4, [None] * 4]
    s.concurrencyused = [0, 0]
    assert list(start(s, when)) == [b'u@here.example']


def test_a_remote_recipient_or_too_many_is_preprocessed_as_usual(s):
    queue(s, 34, [b'u@here.example', b'x@far.example'])
    queue(s, 35, [b'r%d@here.example' % i for i in range(s.direct_rcpt + 1)])
    queue(s, 36, [b'u@here.example'])
    s.preprocess_batch([34, 35, 36])
    assert list(s.directs) == [36]
    assert os.path.exists(qfn('remote', 34, SPLIT)) and os.path.exists(qfn('local', 35, SPLIT))
    assert not os.path.exists(qfn('info', 36, SPLIT))


def test_stale_files_of_an_interrupted_run_mean_the_usual_way(s):
    """Their removal must be durable before todo/ goes: preprocessing syncs it."""
    queue(s, 37, [b'u@here.example'])
    put(qfn('bounce', 37, SPLIT), b'stale\n')
    s.preprocess_batch([37])
    assert s.directs == {} and os.path.exists(qfn('local', 37, SPLIT))
    assert not os.path.exists(qfn('bounce', 37, SPLIT))


def test_at_most_direct_max_at_once_whatever_the_concurrency(s):
    """A message waiting for a delivery slot stays direct: a spill costs
    two files, their syncs and removals, more than the wait."""
    s.direct_max = 6
    s.concurrency[0] = 1
    ids = list(range(40, 48))
    for m in ids:
        queue(s, m, [b'u@here.example'])
    s.preprocess_batch(ids)
    assert sorted(s.directs) == ids[:6]
    for m in ids[6:]:
        assert os.path.exists(qfn('info', m, SPLIT))
    s.direct_max = 0                            # off: all the usual way
    queue(s, 60, [b'u@here.example'])
    s.preprocess_batch([60])
    assert 60 not in s.directs and os.path.exists(qfn('info', 60, SPLIT))


def test_none_while_local_deliveries_are_held(s):
    """concurrencylocal 0 holds local mail: a message then goes to info/
    and local/ as qmail's does, not left in todo/ (qmail-qstat's "not yet
    preprocessed") till the limit is raised."""
    s.concurrency[0] = 0
    queue(s, 61, [b'u@here.example'])
    s.preprocess_batch([61])
    assert 61 not in s.directs and os.path.exists(qfn('local', 61, SPLIT))
    assert not os.path.exists(qfn('todo', 61, SPLIT))


def test_stopping_forgets_what_did_not_start_and_spills_what_did(s):
    queue(s, 61, [b'u@here.example', b'v@here.example'])
    queue(s, 62, [b'w@here.example'])
    s.preprocess_batch([61, 62])
    s.concurrency[0] = 1                        # one slot: 61's pass waits after u@
    slots = start(s)
    assert list(slots) == [b'u@here.example'] and s.passes[0] is not None
    s.flagexitasap = True
    s.direct_stop()
    assert s.passes[0] is None
    assert list(s.directs) == [61]              # 62: nothing done, todo/ stays
    assert 62 not in s.unsettled and all(m != 62 for _, m in s.pqchan[0])
    assert os.path.exists(qfn('todo', 62, SPLIT)) and not os.path.exists(qfn('info', 62, SPLIT))
    report(s, slots[b'u@here.example'], b'Kdid 1+0+0\n')
    assert read(qfn('local', 61, SPLIT)) == b'Du@here.example\0Tv@here.example\0'
    assert s.asked == ['todo/61'] and s.directs == {}
    # A batch written while stopping leaves todo/ alone.
    queue(s, 63, [b'u@here.example'])
    s.flagexitasap = False
    s.preprocess_batch([63])
    assert 63 in s.directs


def test_the_loop_exits_only_once_a_stopped_direct_message_is_spilled(s, monkeypatch):
    """direct_stop runs in the loop's turn; the spill's settling and
    qmail-clean's answer are waited for."""
    queue(s, 64, [b'u@here.example', b'v@here.example'])
    s.preprocess_batch([64])
    s.concurrency[0] = 1
    slots = start(s)
    s.flagexitasap = True
    s.direct_stop()
    report(s, slots[b'u@here.example'], b'Kdid 1+0+0\n')
    assert not s.bg.pending and not any(lane.waiting for lane in s.lanes)
    assert s.del_canexit() and s.unsettled == {}
    heapq.heapify(s.pqchan[0])
    assert [m for _, m in s.pqchan[0]] == [64]
    # v@ was never tried: due at once after the restart, as qmail's cut
    # pass is, not at the first retry (birth + 100 s).
    assert s.pqchan[0][0][0] <= s.recent
    s.pqfinish()                                # local/ is there to be stamped
    assert os.stat(qfn('local', 64, SPLIT)).st_mtime <= s.recent
    assert not any(line.startswith('warning') for line in s.log), s.log


def test_stopped_before_its_pass_began_the_loop_exits_without_a_warning(s):
    """TERM after the batch, before the pass: the loop forgets the
    message before its exit test, so pqfinish has no local/ to stamp."""
    queue(s, 65, [b'u@here.example'])
    s.preprocess_batch([65])
    assert [m for _, m in s.pqchan[0]] == [65]
    s.flagexitasap = True
    r, w = os.pipe()
    try:
        s.loop(r)
    finally:
        os.close(r)
        os.close(w)
    assert s.directs == {} and s.pqchan[0] == []
    assert os.path.exists(qfn('todo', 65, SPLIT))
    assert not any(line.startswith('warning') for line in s.log), s.log


def test_a_spill_that_cannot_write_is_tried_again_not_delivered_again(s, monkeypatch):
    """No half-written spill: what was made goes and todo/ stays, but the
    message is not delivered direct again by a todo/ scan (every delivery
    made once more, each SLEEP_SYSFAIL while the disk is full: an mbox or
    a program line's copy too): the spill itself is tried again, with the
    marks of what was done, until it is written."""
    queue(s, 66, [b'u@here.example', b'v@here.example'])
    s.preprocess_batch([66])
    slots = start(s)
    full = disk_full_for(monkeypatch, qfn('local', 66, SPLIT))
    report(s, slots[b'u@here.example'], b'ZUnable to chdir to maildir. (#4.2.1)\n')
    report(s, slots[b'v@here.example'], b'Kdid 1+0+0\n')
    assert 'warning: unable to create %s\n' % qfn('local', 66, SPLIT) in s.log
    assert not os.path.exists(qfn('info', 66, SPLIT))
    assert os.path.exists(qfn('todo', 66, SPLIT)) and s.asked == []
    assert s.directs == {} and s.spilled == {} and 66 in s.unsettled
    s.todo_do(True)                             # a scan meanwhile: not taken again
    assert s.directs == {} and s.pqchan[0] == []
    when, messid = s.pqrespill[0]
    assert messid == 66 and when <= s.recent + send.SLEEP_SYSFAIL
    s.pass_do()                                 # not yet: still full
    assert 66 in s.respills
    full[0] = False
    s.recent = when
    s.pass_do()
    assert s.respills == {} and s.pqrespill == []
    assert read(qfn('local', 66, SPLIT)) == b'Tu@here.example\0Dv@here.example\0'
    assert os.path.exists(qfn('info', 66, SPLIT))


def unwritten_spill(s, monkeypatch, messid):
    """A direct message delivered to one recipient by an mbox line, its
    other deferred, its spill unwritten (the queue's disk full): the
    list disk_full_for returns."""
    queue(s, messid, [b'u@here.example', b'v@here.example'])
    s.preprocess_batch([messid])
    slots = start(s)
    full = disk_full_for(monkeypatch, qfn('local', messid, SPLIT))
    report(s, slots[b'u@here.example'], b'ZUnable to chdir to maildir. (#4.2.1)\n')
    report(s, slots[b'v@here.example'], b'Kdid 1+0+0\n')
    assert messid in s.respills and os.path.exists(qfn('todo', messid, SPLIT))
    return full


def test_alrm_tries_an_unwritten_spill_at_once(s, monkeypatch):
    """ALRM retries everything now: a spill waiting SLEEP_SYSFAIL too."""
    full = unwritten_spill(s, monkeypatch, 67)
    assert s.pqrespill[0][0] > s.recent
    full[0] = False
    s.pqrun()
    s.pass_do()
    assert s.respills == {}
    assert read(qfn('local', 67, SPLIT)) == b'Tu@here.example\0Dv@here.example\0'


def run_loop(s, seconds=10):
    """s.loop() until it returns; after seconds, a guard ends it (its
    spills forgotten, a partner's death: s.guarded says so, and the test
    fails rather than hangs); returns the time it took.  The spawns'
    descriptors are not polled (here fds 2 and 4 are pytest's)."""
    import threading
    s.flagspawnalive = [False, False]
    s.guarded = False
    r, w = os.pipe()

    def guard_fires():
        s.guarded = s.flagdying = True
        s.respills.clear()
        s.pqrespill.clear()
        os.write(w, b'x')
    guard = threading.Timer(seconds, guard_fires)
    guard.start()
    began = time.monotonic()
    try:
        s.loop(r)
    finally:
        guard.cancel()
        os.close(r)
        os.close(w)
    return time.monotonic() - began


def test_a_stop_waits_for_an_unwritten_spill(s, monkeypatch):
    """TERM with a spill unwritten: qmail-send keeps trying it and exits
    once it is written.  Gone before, the next start took the message
    from todo/ and made every delivery again (the mbox line's copy
    twice), where qmail, which delivers nothing before info/ is written,
    made each once."""
    import threading
    full = unwritten_spill(s, monkeypatch, 68)
    monkeypatch.setattr(send, 'SLEEP_EXITSPILL', 0)
    s.flagexitasap = True
    s.exit_begin()                      # the loop's first turn: at once
    s.pass_do()
    assert s.log[-1] == 'status: exiting once msg 68 can be recorded (killed ' \
        'now, its deliveries are made again at the next start)\n', s.log[-3:]
    assert s.pqrespill == [(s.recent, 68)]
    threading.Timer(1.5, lambda: full.__setitem__(0, False)).start()
    took = run_loop(s)
    assert not s.guarded, 'the loop did not end by itself'
    assert took >= 1.4
    assert s.respills == {}
    assert read(qfn('local', 68, SPLIT)) == b'Tu@here.example\0Dv@here.example\0'


def test_a_dying_qmail_send_does_not_wait_for_a_spill(s, monkeypatch):
    """A partner gone (spawn or qmail-clean): exit at once, as after a crash."""
    unwritten_spill(s, monkeypatch, 69)
    s.flagexitasap = s.flagdying = True
    assert run_loop(s, 5) < 5 and not s.guarded
    assert 69 in s.respills
    assert not any(line.startswith('status: exiting once') for line in s.log), s.log


def test_an_empty_doublebounceto_throws_double_bounces_away(s, tmp_path, monkeypatch):
    """control/README promises it; the double bounce went to "@host",
    bounced in its turn and ended as a triple bounce."""
    from qmail.lib import control
    (tmp_path / 'control' / 'doublebounceto').write_text('\n')
    c = send.Controls(control.Controls(str(tmp_path / 'control')))
    assert c.doublebounceto is None
    (tmp_path / 'control' / 'doublebounceto').write_text('admin\n')
    assert send.Controls(control.Controls(str(tmp_path / 'control'))).doublebounceto \
        == b'admin@here.example'
    s.c.doublebounceto = None
    monkeypatch.setenv('QMAILQUEUE', str(tmp_path / 'no-qmail-queue'))     # never to run
    put(qfn('mess', 70, SPLIT), b'Subject: failure notice\n\nx\n')
    put(qfn('info', 70, SPLIT), b'F\0')                 # a bounce that bounced
    put(qfn('bounce', 70, SPLIT), b'<postmaster@here.example>:\nSorry.\n\n')
    assert s.injectbounce(70) is True
    assert 'double bounce: discarding %s\n' % qfn('bounce', 70, SPLIT) in s.log
    assert not os.path.exists(qfn('bounce', 70, SPLIT))


@pytest.mark.parametrize('sig, stops', [('SIGHUP', False), ('SIGALRM', False), ('SIGTERM', True)])
def test_waiting_for_readable_controls_survives_hup_and_alrm(sig, stops):
    """qmail-send waits for an unreadable control file instead of exiting;
    a HUP or an ALRM meanwhile killed it (their default action)."""
    import signal
    import threading
    t = threading.Timer(0.3, lambda: os.kill(os.getpid(), getattr(signal, sig)))
    t.start()
    start = time.monotonic()
    try:
        assert send.wait_or_term(5) is stops
    finally:
        t.cancel()
    assert time.monotonic() - start < 4          # the signal ended the wait


def test_a_bounce_whose_info_cannot_be_read_says_so(s):
    """It was tried again every 123 s for ever without a word."""
    put(qfn('mess', 71, SPLIT), b'Subject: x\n\nbody\n')
    put(qfn('info', 71, SPLIT), b'garbage')
    put(qfn('bounce', 71, SPLIT), b'<u@here.example>:\nSorry.\n\n')
    assert s.injectbounce(71) is False
    assert 'warning: trouble reading %s, will try the bounce again later\n' \
        % qfn('info', 71, SPLIT) in s.log
    assert os.path.exists(qfn('bounce', 71, SPLIT))


def test_a_backlog_waits_while_too_many_files_await_their_sync(tmp_path, monkeypatch):
    """Each preprocessed message holds its files open till their sync: a
    todo/ backlog preprocessed faster than the disk syncs ran out of
    descriptors.  todo/ now waits while settle_cap messages wait, a cap
    from RLIMIT_NOFILE."""
    import resource
    monkeypatch.setattr(resource, 'getrlimit', lambda which: (256, 4096))
    assert send.settle_cap() == (256 - send.FD_RESERVE) // send.FILES_PER_MESSAGE
    # A low limit leaves half for the rest (FD_RESERVE_MIN at least), and
    # a batch takes no more than the room left: it was at least a batch
    # of 32, 96 files, and "unable to create local/..." at ulimit -n 30.
    monkeypatch.setattr(resource, 'getrlimit', lambda which: (100, 4096))
    assert send.settle_cap() == 50 // send.FILES_PER_MESSAGE
    monkeypatch.setattr(resource, 'getrlimit', lambda which: (30, 4096))
    assert send.settle_cap() == (30 - send.FD_RESERVE_MIN) // send.FILES_PER_MESSAGE
    monkeypatch.setattr(resource, 'getrlimit', lambda which: (10, 4096))
    assert send.settle_cap() == 1
    s, log = scratch_send(tmp_path, monkeypatch, 2)
    for i in range(2):
        os.rmdir('todo/%d' % i)         # (todo/ is not split)
    s.settle_cap = 3
    s.settling.waiting = [object()] * 2
    s.settling.inflight = 1
    assert s.settling_full()
    called = []
    monkeypatch.setattr(s, 'preprocess_batch', called.append)
    put('todo/12345', b'u0\0p1\0Fa@b\0Tc@d\0\0')
    s.todo_do(True)
    assert called == [] and s.tododir is None      # not even scanned
    s.settling.inflight = 0
    s.todo_do(True)
    assert len(called) == 1 and 12345 in called[0]
    # the batch fits the room: one more message at most here
    for m in (12346, 12347, 12348):
        put('todo/%d' % m, b'u0\0p1\0Fa@b\0Tc@d\0\0')
    s.tododir = None
    s.settling.waiting = [object()] * 2
    s.todo_do(True)
    assert len(called) == 2 and len(called[1]) == 1, called


def test_a_uid_or_pid_of_thousands_of_digits_is_logged_not_fatal(s):
    """int() refuses over 4300 digits: qmail-send exited at each start on
    such a todo/ file.  The numbers only go into the log line."""
    put(qfn('mess', 70, SPLIT), b'Subject: x\n\nbody\n')
    put('intd/70', b'')
    put(qfn('todo', 70, SPLIT), b'u' + b'9' * 5000 + b'\0p' + b'7' * 5000
        + b'\0Fa@b.example\0Tu@here.example\0')
    s.preprocess_batch([70])
    info = [line for line in s.log if line.startswith('info msg 70:')]
    assert len(info) == 1, s.log
    assert not [line for line in s.log if 'alert' in line or 'warning' in line], s.log
    assert start(s)


def test_a_control_that_cannot_be_read_at_start_is_named(tmp_path, monkeypatch):
    """The wait at start said only "Is a directory": which file?"""
    from qmail.lib import auto
    (tmp_path / 'control' / 'me').mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path))
    said = []
    monkeypatch.setattr(send, 'log', said.append)
    monkeypatch.setattr(send, 'wait_or_term', lambda seconds: True)    # TERM at once
    assert send.main([]) == 111
    assert said == ['alert: cannot start: unable to read controls: control/me: '
                    'Is a directory; trying again in %d seconds\n' % send.CONTROL_RETRY], said


@pytest.mark.parametrize('name', ['envnoathost', 'virtualdomains', 'bouncefrom',
                                  'doublebounceto'])
def test_a_nul_in_a_control_that_goes_into_records_is_refused_by_name(tmp_path, name):
    """Records in queue files end at a NUL: one in envnoathost split each
    recipient it completed, and the message failed at every retry."""
    from qmail.lib import control
    d = tmp_path / 'control'
    d.mkdir()
    (d / 'me').write_bytes(b'here.example\n')
    (d / name).write_bytes(b'a.example:al\0ias\n' if name == 'virtualdomains'
                           else b'bad\0value\n')
    with pytest.raises(ValueError, match='control/%s holds a NUL' % name) as e:
        send.Controls(control.Controls(str(d)))
    assert send.controls_trouble(e.value) == 'control/%s holds a NUL byte' % name


def test_a_trigger_that_is_no_fifo_is_left_unwatched_with_one_warning(s):
    """A plain file is always readable: qmail-send woke at once, again
    and again, at full CPU.  (New mail is still seen: the todo/ watch.)"""
    put('lock/trigger', b'')
    for _ in range(3):
        s.trigger_set()
        assert s.triggerfd == -1
    assert [line for line in s.log if 'lock/trigger' in line] == [
        'warning: lock/trigger is not a named pipe, not watched '
        '(qmail-fsck -r makes it one)\n']
    os.unlink('lock/trigger')
    os.mkfifo('lock/trigger')
    s.trigger_set()
    assert s.triggerfd != -1
    os.close(s.triggerfd)
    s.triggerfd = -1


def test_new_msg_is_logged_once_the_files_are_made_not_before(s, monkeypatch):
    """As qmail: "new msg" and "info msg" once info/ is made.  Logged
    before, a message whose info/ could not be made had them again at
    every retry (C qmail: only the warning)."""
    queue(s, 67, [b'u@remote.example'])
    full = disk_full_for(monkeypatch, qfn('info', 67, SPLIT))
    s.preprocess_batch([67])
    assert 'warning: unable to create %s\n' % qfn('info', 67, SPLIT) in s.log
    assert not any('msg 67' in line for line in s.log), s.log
    full[0] = False
    s.preprocess_batch([67])
    lines = [line for line in s.log if 'msg 67' in line]
    assert lines[0] == 'new msg 67\n' and lines[1].startswith('info msg 67: bytes 17 from <a@b.example>')
    assert len(lines) == 2
    assert os.path.exists(qfn('info', 67, SPLIT))


def test_a_messages_local_and_remote_deliveries_start_in_turn(s, monkeypatch):
    """As qmail's loop steps each channel once per turn: local, remote,
    local, remote..., not every local delivery before the first remote
    one (which took every free job for one channel first)."""
    queue(s, 37, [b'u%d@here.example' % i for i in range(3)]
          + [b'x%d@far.example' % i for i in range(3)])
    s.preprocess_batch([37])
    monkeypatch.setattr(s, 'comm_do', lambda c: s.comm_buf.__setitem__(c, b''))
    s.recent = int(time.time()) + 1
    s.pass_do()
    started = [line.split(' to ')[1].split(' ')[0] for line in s.log
               if line.startswith('starting delivery')]
    assert started == ['local', 'remote'] * 3, s.log


def scan(s, recent):
    """One whole todo/ scan, as a trigger pull starts it."""
    s.recent = recent
    s.tododir = None
    s.todo_do(True)
    while s.tododir is not None:
        s.todo_do(True)


def test_a_todo_that_failed_waits_sysfail_not_the_next_scan(s, monkeypatch):
    """A todo/ that could not be preprocessed (here: disk full for its
    info/) is tried again SLEEP_SYSFAIL later, not at every scan: each
    injection's scan logged its warning again."""
    s.direct_max = 0                            # info/ and local/ to be written
    queue(s, 41, [b'u@here.example'])
    full = disk_full_for(monkeypatch, qfn('info', 41, SPLIT))
    now = int(time.time())
    scan(s, now)
    warning = 'warning: unable to create %s\n' % qfn('info', 41, SPLIT)
    assert s.log.count(warning) == 1 and 'new msg 41\n' not in s.log
    assert s.nexttodorun <= now + send.SLEEP_SYSFAIL      # a scan is due then
    full[0] = False
    for t in (now + 1, now + 60, now + send.SLEEP_SYSFAIL - 1):
        scan(s, t)
    assert s.log.count(warning) == 1 and 'new msg 41\n' not in s.log
    scan(s, now + send.SLEEP_SYSFAIL + 1)
    assert 'new msg 41\n' in s.log and 41 not in s.todo_held
    assert os.path.exists(qfn('info', 41, SPLIT))
    assert not os.path.exists(qfn('todo', 41, SPLIT))


def test_a_held_todo_replaced_by_another_file_is_taken_at_once(s):
    """The hold is the failed file's: a new todo/ under that name (the
    old one removed, the inode number given to a new message) is not
    kept waiting."""
    put(qfn('mess', 42, SPLIT), b'Subject: x\n\nbody\n')
    put(qfn('todo', 42, SPLIT), b'u0\0p1\0Fa@b\0Xc@d\0')
    now = int(time.time())
    scan(s, now)
    assert s.log.count('warning: unknown record type in todo/42\n') == 1
    scan(s, now + 1)
    assert s.log.count('warning: unknown record type in todo/42\n') == 1
    os.unlink(qfn('todo', 42, SPLIT))
    queue(s, 42, [b'u@here.example'])
    scan(s, now + 2)
    assert 'new msg 42\n' in s.log and 42 in s.directs and 42 not in s.todo_held


def test_alrm_tries_a_held_todo_at_once(s):
    """After the admin repaired what failed, ALRM (qmail-send's "try
    everything now") lifts the hold: the next pass of the loop scans."""
    put(qfn('mess', 43, SPLIT), b'Subject: x\n\nbody\n')
    put(qfn('todo', 43, SPLIT), b'u0\0p1\0Fa@b\0Xc@d\0')
    now = int(time.time())
    scan(s, now)
    assert 43 in s.todo_held
    put(qfn('todo', 43, SPLIT), b'u0\0p1\0Fa@b\0Tu@here.example\0')    # repaired in place
    s.recent = now + 1
    s.pqrun()
    assert not s.todo_held and s.nexttodorun <= s.recent
    scan(s, now + 1)
    assert 'new msg 43\n' in s.log


def test_a_clock_stepped_back_does_not_lengthen_a_hold(s):
    put(qfn('mess', 44, SPLIT), b'Subject: x\n\nbody\n')
    put(qfn('todo', 44, SPLIT), b'u0\0p1\0Fa@b\0Xc@d\0')
    now = int(time.time())
    scan(s, now)
    assert s.log.count('warning: unknown record type in todo/44\n') == 1
    scan(s, now - 3600)                         # an hour back: tried again
    assert s.log.count('warning: unknown record type in todo/44\n') == 2


def test_only_a_message_for_one_local_recipient_goes_direct(s):
    """With several, one whose delivery never ended (a .qmail program
    that hangs) kept the others' successes in memory as long: a crash
    then, or a kill after a TERM that waited for it, delivered them
    again, an mbox or program line's copy too, where qmail had written
    their D marks."""
    s.direct_rcpt = send.DIRECT_RCPT
    assert send.DIRECT_RCPT == 1
    queue(s, 51, [b'u@here.example', b'v@here.example'])
    queue(s, 52, [b'u@here.example'])
    s.preprocess_batch([51, 52])
    assert list(s.directs) == [52]
    assert os.path.exists(qfn('local', 51, SPLIT))
