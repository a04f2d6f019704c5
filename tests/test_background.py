"""qmail.lib.background: disk work in threads, sequels in the loop, and
qmail-send's use of it (a job finishes only after its marks are durable;
a message is finished once even when both channels end together)."""

import heapq
import os
import select
import subprocess
import sys
import threading
import time
import types

import pytest

from qmail import send
from qmail.lib import background, durable
from qmail.lib.qfile import qfn
from scratch_send import put, scratch_send


def wait_finish(bg, timeout=10):
    """The loop's part: wait for readiness, run the sequels."""
    deadline = time.monotonic() + timeout
    while bg.pending:
        assert time.monotonic() < deadline, 'background work never finished'
        bg.release()            # as the loop does when it is busy
        if bg.fd != -1:
            select.select([bg.fd], [], [], 0.5)
        bg.finish()


def test_sequel_runs_in_the_loop_thread_not_at_submit():
    bg = background.Background()
    seen = []
    bg.submit(lambda: threading.get_ident(), lambda r: seen.append((r, threading.get_ident())))
    assert bg.pending == 1 and seen == []       # nothing runs the sequel but finish()
    wait_finish(bg)
    (worker, loop), = seen
    assert worker != loop == threading.get_ident()
    assert bg.pending == 0


def test_without_a_descriptor_for_the_threads_the_loop_does_the_work(monkeypatch):
    """The descriptor table full (a todo/ backlog's files open, a low
    ulimit -n): release() could not make the threads' wake-up pipe, and
    the OSError ended qmail-send at every start.  Now the loop does the
    held work itself, and the threads start when a pipe can be had."""
    bg = background.Background()
    seen = []
    real = os.pipe2

    def no_fd(flags):
        raise OSError(24, 'Too many open files')
    monkeypatch.setattr(background.os, 'pipe2', no_fd)
    bg.submit(lambda: threading.get_ident(), lambda r: seen.append((r, threading.get_ident())))
    bg.release()
    assert seen == [(threading.get_ident(),) * 2] and bg.pending == 0
    monkeypatch.setattr(background.os, 'pipe2', real)
    bg.submit(lambda: threading.get_ident(), lambda r: seen.append((r, threading.get_ident())))
    wait_finish(bg)
    assert seen[1][0] != seen[1][1] == threading.get_ident()   # the threads, now


def test_no_thread_to_be_had_the_loop_does_the_work(monkeypatch):
    """No thread would start (RLIMIT_NPROC reached, no memory for its
    stack): the held work was queued for threads that did not exist, and
    waited for ever.  The loop does it, as without a pipe."""
    bg = background.Background()
    seen = []

    def refused(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(background.threading.Thread, 'start', refused)
    bg.submit(lambda: threading.get_ident(), lambda r: seen.append((r, threading.get_ident())))
    bg.release()
    assert seen == [(threading.get_ident(),) * 2] and bg.pending == 0
    assert bg.fd == -1 and bg._work is None
    monkeypatch.undo()
    bg.submit(lambda: threading.get_ident(), lambda r: seen.append((r, threading.get_ident())))
    wait_finish(bg)
    assert seen[1][0] != seen[1][1] == threading.get_ident()   # the threads, now


def test_threads_start_under_a_run_scripts_softlimit():
    """softlimit -m N limits the stack to N too, and glibc gives a thread
    the stack limit as its size: qmail-send's two disk threads needed 2N
    of the N allowed ("can't start new thread")."""
    code = ('import threading\n'
            'from qmail.lib import background\n'
            'bg = background.Background()\n'
            'bg.submit(threading.get_ident, print)\n'
            'bg.release()\n'
            'import select; select.select([bg.fd], [], [], 10); bg.finish()\n'
            'print(threading.active_count())\n')
    r = subprocess.run(['softlimit', '-m', '300000000', sys.executable, '-c', code],
                       capture_output=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    worker, count = r.stdout.split()
    assert int(worker) != 0 and count == b'3'


def test_an_exception_in_the_work_is_raised_in_the_loop():
    bg = background.Background()

    def work():
        raise OSError('disk on fire')
    bg.submit(work, lambda r: None)
    with pytest.raises(OSError, match='disk on fire'):
        wait_finish(bg)


def test_held_work_runs_in_the_loop_when_it_is_idle_in_order():
    """run_held: each work then its sequel, in the calling thread; what a
    sequel submits waits for the loop's next decision; an exception
    leaves the rest held."""
    bg = background.Background()
    seen = []
    bg.submit(lambda: seen.append(('work', 1, threading.get_ident())) or 1,
              lambda r: seen.append(('then', r)) or bg.submit(lambda: 3, seen.append))
    bg.submit(lambda: seen.append(('work', 2, threading.get_ident())) or 2,
              lambda r: seen.append(('then', r)))
    assert bg.pending == 2 and seen == []
    bg.run_held()
    me = threading.get_ident()
    assert seen == [('work', 1, me), ('then', 1), ('work', 2, me), ('then', 2)]
    assert bg.pending == 1 and len(bg.held) == 1 and bg.fd == -1    # no thread started
    bg.run_held()
    assert seen[-1] == 3 and bg.pending == 0 and bg.held == []

    def fails():
        raise OSError('disk on fire')
    bg.submit(fails, seen.append)
    bg.submit(lambda: 4, seen.append)
    with pytest.raises(OSError, match='disk on fire'):
        bg.run_held()
    assert bg.pending == 1 and len(bg.held) == 1
    bg.run_held()
    assert seen[-1] == 4 and bg.pending == 0


def test_slow_held_work_sends_what_follows_to_the_threads(monkeypatch):
    """Held work that took long in the loop (a slow disk) keeps the loop
    from doing the next second's itself."""
    bg = background.Background()
    clock = [100.0]
    monkeypatch.setattr(background.time, 'monotonic', lambda: clock[0])
    assert bg.inline_ok()

    def slow():
        clock[0] += 0.05
    done = []
    bg.submit(slow, lambda r: done.append('slow'))
    bg.submit(lambda: None, lambda r: done.append('next'))
    bg.run_held()
    assert done == ['slow'] and len(bg.held) == 1     # the rest: for the threads
    assert not bg.inline_ok()
    clock[0] += background.INLINE_PAUSE
    assert bg.inline_ok()
    bg.run_held()
    assert done == ['slow', 'next']
    clock[0] += 100
    bg.submit(lambda: clock.__setitem__(0, clock[0] + 1), lambda r: None)   # 1 s
    bg.run_held()
    clock[0] += 5
    assert not bg.inline_ok()                   # ten times as long as it took
    clock[0] += 5
    bg.submit(lambda: None, lambda r: None)     # quick: inline stays fine
    bg.run_held()
    assert bg.inline_ok()


def test_inline_runs_at_once_in_order():
    bg = background.Background(inline=True)
    seen = []
    bg.submit(lambda: seen.append('work') or 7, lambda r: seen.append(('then', r)))
    assert seen == ['work', ('then', 7)] and bg.pending == 0 and bg.fd == -1


def test_lane_batches_what_comes_while_busy():
    bg = background.Background()
    gate = threading.Event()
    batches, sequels = [], []

    def work(batch):
        gate.wait(10)
        batches.append(list(batch))
        return len(batch)
    lane = background.Lane(bg, work, lambda batch, n: sequels.append((list(batch), n)))
    lane.add([1])
    lane.add([2, 3])            # the first batch is still on its way
    lane.add([4])
    assert lane.busy and lane.waiting == [2, 3, 4]
    gate.set()
    wait_finish(bg)
    assert batches == [[1], [2, 3, 4]]
    assert sequels == [([1], 1), ([2, 3, 4], 3)]
    assert not lane.busy and lane.waiting == []


# ---- qmail-send's state, with real threads -----------------------------------

@pytest.fixture
def queue_home(tmp_path, monkeypatch):
    return scratch_send(tmp_path, monkeypatch, 3)


def delivering(s, messid, recips):
    """A local job of messid whose pass is over, a delivery to each of
    recips under way (slots 0, 1, ...; delivery numbers 1, 2, ...)."""
    put(qfn('info', messid, 3), b'Fa@b.example\0')
    put(qfn('local', messid, 3), b''.join(b'T' + r + b'\0' for r in recips))
    job = s.job_open(messid, 0)
    job.flaghiteof = True
    job.numtodo = len(recips)
    job.refs = 1 + len(recips)
    pos = 0
    for i, r in enumerate(recips):
        s.dels[0][i] = send.Delivery(job, i + 1, pos, r)
        pos += len(r) + 2
    s.concurrencyused[0] = len(recips)
    s.job_close(job)            # the pass's reference
    return job


def test_a_job_finishes_only_after_its_marks_are_durable(queue_home, monkeypatch):
    """A delivery that does not end its job gets a D mark, written at
    once (as qmail writes it: a qmail-send killed after its log line does
    not make it again) and durable before anything goes on; the one that
    ends it is marked too, unsynced: the job's file is removed instead."""
    s, log = queue_home
    messid = 7
    job = delivering(s, messid, [b'u@here.example', b'v@here.example'])
    pwrites = []
    real_pwrite = durable.pwrite
    monkeypatch.setattr(durable, 'pwrite', lambda fd, data, pos: pwrites.append(pos) or real_pwrite(fd, data, pos))
    gate = threading.Event()
    real = s.marks_sync
    monkeypatch.setattr(s, 'marks_sync', lambda marks, out: gate.wait(10) and real(marks, out))
    s.del_reports(0, [b'\0Kdid 1+0+0\n'])
    assert s.concurrencyused[0] == 1 and s.dels[0][0] is None   # the slot is free now
    assert job.refs == 2 and job.numtodo == 2                   # its mark is not durable yet
    # ... but in the file already, before the background's fsync.
    assert open(qfn('local', messid, 3), 'rb').read() == b'Du@here.example\0Tv@here.example\0'
    gate.set()
    wait_finish(s.bg)
    assert job.refs == 1 and job.numtodo == 1
    assert open(qfn('local', messid, 3), 'rb').read() == b'Du@here.example\0Tv@here.example\0'
    s.del_reports(0, [b'\1Kdid 1+0+0\n'])
    wait_finish(s.bg)
    assert not os.path.exists(qfn('local', messid, 3))     # finished, then removed
    assert pwrites == [0, 16]                               # the last one's too, unsynced
    assert [m for _, m in s.pqdone] == [messid]
    assert 'delivery 1: success: did_1+0+0/\n' in log
    assert 'delivery 2: success: did_1+0+0/\n' in log


def test_a_success_is_marked_before_the_background_runs(queue_home, monkeypatch):
    """qmail-send killed (-9) between a delivery's "success" line and its
    background work repeats only the deliveries under way, as qmail's
    does: the marks of those reported, the job's last one included, are
    in its file at once (a kill keeps what was written; a power cut needs
    the fsync, which the job waits for)."""
    s, log = queue_home
    messid = 9
    delivering(s, messid, [b'u@here.example', b'v@here.example'])
    s.bg.inline = False
    gate = threading.Event()
    real_work = s.marking.work      # the background's part, held back
    monkeypatch.setattr(s.marking, 'work', lambda items: gate.wait(10) and real_work(items))
    real_unlink = durable.unlink
    monkeypatch.setattr(durable, 'unlink', lambda path: gate.wait(10) and real_unlink(path))
    s.del_reports(0, [b'\0Kdid 1+0+0\n', b'\1Kdid 1+0+0\n'])
    assert 'delivery 2: success: did_1+0+0/\n' in log
    # What a qmail-send killed now leaves for the next start:
    assert open(qfn('local', messid, 3), 'rb').read() == b'Du@here.example\0Dv@here.example\0'
    # A job's last delivery: its file's removal is the background's.
    last = delivering(s, 10, [b'w@here.example'])
    s.del_reports(0, [b'\0Kdid 1+0+0\n'])
    assert last.unmarked is not None
    assert open(qfn('local', 10, 3), 'rb').read() == b'Dw@here.example\0'
    gate.set()
    wait_finish(s.bg)
    assert not os.path.exists(qfn('local', 10, 3))


def test_a_job_that_cannot_remove_its_file_syncs_the_mark_it_left_unsynced(queue_home, monkeypatch):
    """The job's last delivery is marked but not synced (the file's
    removal records it); if the file then cannot go, the mark is made
    durable, so the retry does not repeat it."""
    s, log = queue_home
    messid = 8
    delivering(s, messid, [b'u@here.example'])
    real_unlink = durable.unlink
    synced = []
    real_sync = durable.sync_files

    def sync_files(fds, *a, **k):
        fds = list(fds)
        synced.extend(os.readlink('/proc/self/fd/%d' % fd) for fd in fds)
        return real_sync(fds, *a, **k)
    monkeypatch.setattr(durable, 'sync_files', sync_files)

    def unlink(path):
        if path == qfn('local', messid, 3):
            raise PermissionError(13, 'no')
        return real_unlink(path)
    monkeypatch.setattr(durable, 'unlink', unlink)
    s.del_reports(0, [b'\0Kdid 1+0+0\n'])
    wait_finish(s.bg)
    assert open(qfn('local', messid, 3), 'rb').read() == b'Du@here.example\0'
    assert any(path.endswith('/' + qfn('local', messid, 3)) for path in synced), synced
    assert [m for _, m in s.pqchan[0]] == [messid]          # tried again later
    assert s.pqdone == []
    assert any(line.startswith('warning: unable to unlink local/') for line in log)


def test_both_channels_ending_together_finish_the_message_once(queue_home):
    s, log = queue_home
    messid = 9
    put(qfn('info', messid, 3), b'Fa@b.example\0')
    jobs = []
    for c, d in ((0, 'local'), (1, 'remote')):
        put(qfn(d, messid, 3), b'DTx@y\0')
        job = s.job_open(messid, c)
        job.flaghiteof = True
        jobs.append(job)
    s.jobs_finish(jobs[:1])
    s.jobs_finish(jobs[1:])
    wait_finish(s.bg)
    assert [m for _, m in s.pqdone] == [messid]
    s.pqdone.append((0, messid))        # as if each channel's end had seen the other gone
    s.flagcleanalive = True
    requests = []
    s.clean_request = lambda reqs, then=None: requests.extend(reqs)
    s.recent = int(time.time()) + 10
    s.pass_do()
    wait_finish(s.bg)
    assert requests == ['foop/%d' % messid]                 # one end, one removal
    assert log.count('end msg %d\n' % messid) == 1
    assert not os.path.exists(qfn('info', messid, 3))


def test_end_msg_is_logged_once_after_info_goes(queue_home):
    """qmail-log(5)'s "end msg": once, when info/ is gone and the rest
    is about to go; not before a failed unlink of info/ and again after
    its retry."""
    s, log = queue_home
    messid = 12
    put(qfn('info', messid, 3), b'Fa@b.example\0')
    s.flagcleanalive = True
    requests = []
    s.clean_request = lambda reqs, then=None: requests.extend(reqs)
    ending = []
    s.messdone(messid, ending)
    assert ending == [messid] and log.count('end msg %d\n' % messid) == 0
    s.infos_unlinked(ending, ([messid], []))    # the unlink failed
    assert log.count('end msg %d\n' % messid) == 0 and requests == []
    ending = []
    s.messdone(messid, ending)                  # its retry
    s.infos_unlinked(ending, s.infos_unlink(ending))
    assert log.count('end msg %d\n' % messid) == 1
    assert requests == ['foop/%d' % messid]


def test_info_removal_is_durable_before_qmail_clean_removes_the_message(queue_home, monkeypatch):
    """info/ gone for good first: else a power cut could keep info/ and
    lose mess/, and the next start's foop of that number remove the mess/
    file of a new message given the same inode.  A directory that cannot
    be synced leaves the message to the cleanup, never asked to remove."""
    from qmail.lib import durable
    s, log = queue_home
    s.flagcleanalive = True
    requests = []
    s.clean_request = lambda reqs, then=None: requests.append(list(reqs))
    synced = []
    monkeypatch.setattr(durable, 'sync_dirs', lambda dirs: synced.append(list(dirs)) or [])
    for messid in (21, 22):
        put(qfn('info', messid, 3), b'Fa@b.example\0')
    ending = []
    s.messdone(21, ending)
    s.messdone(22, ending)
    s.infos_unlinked(ending, s.infos_unlink(ending))
    assert synced == [sorted({'info/0', 'info/1'})] and requests == [['foop/21', 'foop/22']]
    put(qfn('info', 23, 3), b'Fa@b.example\0')
    monkeypatch.setattr(durable, 'sync_dirs', lambda dirs: list(dirs))     # all failed
    ending = []
    s.messdone(23, ending)
    s.infos_unlinked(ending, s.infos_unlink(ending))
    assert requests == [['foop/21', 'foop/22']]     # no foop for 23
    assert any('unable to fsync info/2: message 23 left to the cleanup' in line for line in log)


def test_without_qmail_clean_a_finished_message_waits(queue_home):
    s, log = queue_home
    messid = 11
    put(qfn('info', messid, 3), b'Fa@b.example\0')
    s.flagcleanalive = False
    ending = []
    s.messdone(messid, ending)
    assert ending == [] and os.path.exists(qfn('info', messid, 3))
    (when, m), = s.pqdone
    assert m == messid and when >= int(time.time()) + send.SLEEP_SYSFAIL - 1


def test_fsync_many_together_reports_each_failure(tmp_path):
    """durable.fsync_many: every descriptor synced, the
    ones that fail returned (a closed descriptor: EBADF), in order."""
    from qmail.lib import durable
    fds = []
    for i in range(8):
        fds.append(os.open(str(tmp_path / str(i)), os.O_WRONLY | os.O_CREAT, 0o600))
        os.write(fds[-1], b'x')
    bad = [fds[2], fds[5]]
    for fd in bad:
        os.close(fd)
    assert durable.fsync_many(fds) == bad
    assert durable.fsync_dirs([str(tmp_path), str(tmp_path / 'missing'), str(tmp_path)] * 2) \
        == [str(tmp_path / 'missing')] * 2
    for fd in fds:
        if fd not in bad:
            os.close(fd)


def test_fsync_many_starts_every_writeback_before_the_first_fsync(tmp_path, monkeypatch):
    """The writeback of every file is started (sync_file_range) before
    the first fsync waits, so one commit carries them all; not under
    the crash hooks, where each fsync must stay its own crash point."""
    from qmail.lib import durable
    fds = [os.open(str(tmp_path / str(i)), os.O_WRONLY | os.O_CREAT, 0o600) for i in range(3)]
    assert durable.load_writeback()             # found in libc on Linux
    steps = []
    monkeypatch.setattr(durable, '_sync_file_range', lambda fd, a, b, c: steps.append(('start', fd)))
    real_fsync = os.fsync
    monkeypatch.setattr(durable.os, 'fsync', lambda fd: steps.append(('fsync', fd)) or real_fsync(fd))
    assert durable.fsync_many(fds) == []
    assert steps == [('start', fd) for fd in fds] + [('fsync', fd) for fd in fds]
    steps.clear()
    monkeypatch.setattr(durable, 'after', lambda name, target: None)
    assert durable.fsync_many(fds) == []
    assert steps == [('fsync', fd) for fd in fds]
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize('whole', [False, True])
def test_deliveries_start_before_preprocessing_is_durable_jobs_finish_after(queue_home, monkeypatch,
                                                                           whole):
    """A new message is queued once its files are written; its job, done
    before the files are durable and todo/ is gone, waits to finish.
    whole: the filesystem synced at once (syncfs), else file by file."""
    s, log = queue_home
    durable.load_writeback()
    if whole and not durable._syncfs:
        pytest.skip('no syncfs that reports errors on this kernel')
    monkeypatch.setattr(durable, '_syncfs', durable._syncfs if whole else False)
    monkeypatch.setattr(durable, '_little_dirty', lambda: True)
    messid = 13
    put(qfn('mess', messid, 3), b'Subject: x\n\nbody\n')
    put(qfn('todo', messid, 3), b'u0\0p1\0Fa@b.example\0Tu@here.example\0')
    put(qfn('bounce', messid, 3), b'stale failure of an interrupted run\n')
    gate = threading.Event()
    real = s.preprocess_sync
    monkeypatch.setattr(s, 'preprocess_sync', lambda made, out: gate.wait(10) and real(made, out))
    cleaned = []
    s.clean_request = lambda reqs, then=None: cleaned.extend(reqs) or then([True] * len(reqs))
    synced_dirs = []
    real_dirs = durable.fsync_dirs
    monkeypatch.setattr(durable, 'fsync_dirs',
                        lambda paths: synced_dirs.extend(paths) or real_dirs(paths))
    real_syncfs = durable.syncfs

    def syncfs(fds, group=None, opened=None):
        done = real_syncfs(fds, group, opened)
        if done:
            synced_dirs.append('(all)')
        return done
    monkeypatch.setattr(durable, 'syncfs', syncfs)
    s.preprocess_batch([messid])
    deadline = time.monotonic() + 10
    while not s.pqchan[0]:
        assert time.monotonic() < deadline
        s.bg.release()
        select.select([s.bg.fd], [], [], 0.5)
        s.bg.finish()
    assert [m for _, m in s.pqchan[0]] == [messid] and messid in s.unsettled
    assert not os.path.exists(qfn('bounce', messid, 3))     # the old run's report
    job = s.job_open(messid, 0)                 # its delivery done already
    job.flaghiteof = True
    s.job_close(job)
    assert s.unsettled[messid] == [job] and os.path.exists(qfn('local', messid, 3))
    assert cleaned == []                        # todo/ stays until durable
    gate.set()
    wait_finish(s.bg)
    assert cleaned == ['todo/%d' % messid] and messid not in s.unsettled
    # the stale bounce/'s removal durable before todo/ goes
    if whole:
        assert synced_dirs and set(synced_dirs) == {'(all)'}     # no fsync of each
    else:
        assert os.path.dirname(qfn('bounce', messid, 3)) in synced_dirs
        assert '(all)' not in synced_dirs
    assert not os.path.exists(qfn('local', messid, 3))
    assert [m for _, m in s.pqdone] == [messid]


def test_qmail_clean_unable_then_asked_again_later(queue_home):
    """qmail-clean answering '!' for todo/ leaves the message unsettled,
    and it is asked again after SLEEP_SYSFAIL (not left to a restart)."""
    s, log = queue_home
    s.bg.inline = True
    messid = 15
    put(qfn('mess', messid, 3), b'Subject: x\n\nbody\n')
    put(qfn('todo', messid, 3), b'u0\0p1\0Fa@b.example\0Tu@here.example\0')
    answers = [False]
    asked = []

    def clean_request(reqs, then=None):
        asked.extend(reqs)
        then([answers.pop(0) if answers else True for _ in reqs])
    s.clean_request = clean_request
    s.preprocess_batch([messid])
    assert asked == ['todo/%d' % messid] and messid in s.unsettled
    (when, m, _), = s.pqsettle
    assert m == messid and when >= int(time.time()) + send.SLEEP_SYSFAIL - 1
    s.recent = when - 1
    s.pass_do()
    assert len(asked) == 1                      # not yet
    s.recent = when
    s.pass_do()
    assert asked == ['todo/%d' % messid] * 2 and messid not in s.unsettled


def test_log_lines_are_written_by_the_loop_thread_only(queue_home, monkeypatch):
    """Background work hands its log lines to its sequel: a long line
    from the loop can never be cut by a thread's."""
    s, log = queue_home
    writers = []
    monkeypatch.setattr(send, 'log', lambda text: writers.append((threading.get_ident(), text)))
    messid = 17
    put(qfn('mess', messid, 3), b'Subject: x\n\nbody\n')
    put(qfn('todo', messid, 3), b'u0\0p1\0Fa@b.example\0Tu@here.example\0')
    s.clean_request = lambda reqs, then=None: then([True] * len(reqs))
    s.preprocess_batch([messid])
    wait_finish(s.bg)
    assert any(text.startswith('new msg %d' % messid) for _, text in writers)
    assert {ident for ident, _ in writers} == {threading.get_ident()}


def test_sighup_rereads_controls_without_moving_the_working_directory(queue_home, tmp_path):
    """The disk threads use paths relative to queue/: a reread must not
    change directory, even for a moment."""
    s, log = queue_home
    here = os.getcwd()
    s.ctl.directory = str(tmp_path / 'control')
    (tmp_path / 'control' / 'bouncefrom').write_text('postmaster\n')
    s.reread()
    assert os.getcwd() == here
    assert s.c.bouncefrom == b'postmaster'


def test_a_reread_that_fails_names_the_file_and_keeps_the_controls(queue_home, tmp_path):
    """The alert says which control file and why (it said only "unable to
    reread controls"), and the controls in force stay."""
    s, log = queue_home
    s.ctl.directory = str(tmp_path / 'control')
    before = s.c
    (tmp_path / 'control' / 'locals').mkdir()       # not a file: EISDIR
    s.reread()
    assert s.c is before
    # qmail's words, which admins grep for, then why.
    assert 'alert: unable to reread control/locals: Is a directory\n' in log, log


def test_a_reread_names_each_group_that_failed(queue_home, tmp_path):
    s, log = queue_home
    ctl = tmp_path / 'control'
    s.ctl.directory = str(ctl)
    (ctl / 'percenthack').mkdir()
    (ctl / 'bouncefrom').mkdir()
    s.reread()
    alerts = [line for line in log if line.startswith('alert: unable to reread ')]
    assert alerts == ['alert: unable to reread control/percenthack: Is a directory\n',
                      'alert: unable to reread control/bouncefrom: Is a directory\n'], alerts


@pytest.mark.parametrize('bad', ['concurrencylocal', 'concurrencyremote', 'bouncefrom',
                                 'queuelifetime', 'percenthack', 'envnoathost'])
def test_a_reread_takes_locals_and_virtualdomains_whatever_else_fails(queue_home, tmp_path,
                                                                        bad):
    """qmail-send(8): HUP rereads locals and virtualdomains.  A file the
    reread does not apply (the concurrency limits), or one beyond them
    that cannot be read, no longer holds them up: it gets its alert and
    its old value stays."""
    s, log = queue_home
    ctl = tmp_path / 'control'
    s.ctl.directory = str(ctl)
    before = s.c
    (ctl / 'virtualdomains').write_text('hup.example:joe\n')
    (ctl / 'locals').write_text('hup-local.example\n')
    (ctl / bad).mkdir()                 # not a file: EISDIR
    s.reread()
    assert s.c.routing.vdoms.get(b'hup.example') == b'joe'
    assert b'hup-local.example' in s.c.routing.locals
    assert s.c.concurrency == before.concurrency
    if bad in ('percenthack', 'envnoathost'):
        assert (s.c.routing.percenthack, s.c.routing.envnoathost) == \
            (before.routing.percenthack, before.routing.envnoathost)
    else:
        assert (s.c.bouncefrom, s.c.lifetime) == (before.bouncefrom, before.lifetime)
    alerts = [line for line in log if line.startswith('alert: unable to reread ')]
    if bad.startswith('concurrency'):
        assert alerts == [], alerts     # not read at all
    else:
        assert alerts == ['alert: unable to reread control/%s: Is a directory\n' % bad], alerts


@pytest.mark.parametrize('fresh_max, fresh_bytes', [(send.FRESH_MAX, send.FRESH_BYTES),
                                                     (0, send.FRESH_BYTES),
                                                     (send.FRESH_MAX, 10)])
def test_a_new_messages_first_pass_reads_nothing_back(queue_home, monkeypatch, fresh_max,
                                                      fresh_bytes):
    """The first pass over a message just preprocessed takes its records,
    sender and time from memory, as written; a later pass (or one past
    FRESH_MAX new messages, or FRESH_BYTES of their lists: passes may lag
    behind list posts of thousands of recipients) reads local/ and info/
    as qmail does."""
    s, log = queue_home
    s.bg.inline = True
    s.clean_request = lambda reqs, then=None: then([True] * len(reqs))
    monkeypatch.setattr(send, 'FRESH_MAX', fresh_max)
    monkeypatch.setattr(send, 'FRESH_BYTES', fresh_bytes)
    fresh_max = fresh_max and fresh_bytes > 10
    messid = 21
    put(qfn('mess', messid, 3), b'Subject: x\n\nbody\n')
    put(qfn('todo', messid, 3), b'u0\0p1\0Fa@b.example\0Tu@here.example\0Tv@here.example\0')
    s.preprocess_batch([messid])
    wait_finish(s.bg)
    assert bool(s.fresh) == bool(fresh_max)
    read = []
    real_slurp = send.slurp
    monkeypatch.setattr(send, 'slurp', lambda fn, *a, **k: read.append(fn) or real_slurp(fn, *a, **k))
    s.recent = time.time() + 1
    while s.pass_dochan(0):
        s.comm_buf[0] = b''             # the command gone to qmail-lspawn
    started = [d for d in s.dels[0] if d is not None]
    assert [d.recip for d in started] == [b'u@here.example', b'v@here.example']
    assert started[0].job.sender == b'a@b.example'
    assert s.fresh == {} and s.freshbytes == 0
    if fresh_max:
        assert read == []
    else:
        assert sorted(read) == [qfn('info', messid, 3), qfn('local', messid, 3)]
    # A second pass over the same message reads the file (its D marks).
    read.clear()
    heapq.heappush(s.pqchan[0], (0, messid))
    s.passes[0] = None
    s.dels = [[None] * 4, [None] * 4]
    s.concurrencyused = [0, 0]
    s.pass_dochan(0)
    assert qfn('local', messid, 3) in read


def test_qmail_clean_lost_is_said_once_and_fails_every_request(queue_home, monkeypatch):
    """qmail-clean gone: the write of a new request fails, then its end of
    file shows too; one alert (make soak counts one per kill), and every
    request unanswered fails (a message done twice is harmless)."""
    s, log = queue_home
    r_req, w_req = os.pipe()            # qmail-send -> qmail-clean
    r_ans, w_ans = os.pipe()            # qmail-clean -> qmail-send
    os.set_blocking(r_ans, False)
    monkeypatch.setattr(send, 'FDCLEAN_OUT', w_req)
    monkeypatch.setattr(send, 'FDCLEAN_IN', r_ans)
    answers = []
    s.clean_request(['todo/1'], lambda oks: answers.append(('todo/1', oks)))
    os.close(r_req)                     # qmail-clean killed
    os.close(w_ans)
    s.clean_request(['foop/2'], lambda oks: answers.append(('foop/2', oks)))
    s.clean_read()
    s.clean_request(['foop/3'], lambda oks: answers.append(('foop/3', oks)))
    assert answers == [('todo/1', [False]), ('foop/2', [False]), ('foop/3', [False])]
    assert [line for line in log if 'qmail-clean' in line] == [
        'alert: oh no! lost qmail-clean connection! dying...\n']
    assert s.flagexitasap and not s.clean_waiting
    os.close(w_req)
    os.close(r_ans)


def test_a_lane_with_a_window_makes_one_batch_of_what_comes_within_it(monkeypatch):
    """The first item of an idle lane waits window seconds for others;
    tick() before then starts nothing, after it one batch of all; items
    added while that batch is on its way go right after it; flush() ends
    the windows.  Under crash tests (durable's hooks) no window."""
    bg = background.Background()
    batches = []
    lane = background.Lane(bg, lambda batch: len(batch),
                           lambda batch, n: batches.append(list(batch)), window=0.05)
    lane.add([1])
    lane.add([2, 3])
    t0 = lane.due
    assert t0 is not None and not bg.held
    lane.tick(t0 - 0.01)
    assert not bg.held
    lane.tick(t0)
    assert len(bg.held) == 1 and lane.due is None
    lane.add([4])                       # while the batch is on its way
    assert lane.due is None
    bg.run_held()
    assert batches == [[1, 2, 3]]
    bg.run_held()                       # the one that waited went at once
    assert batches == [[1, 2, 3], [4]]
    lane.add([5])
    assert lane.due is not None
    lane.flush()
    bg.run_held()
    assert batches[-1] == [5] and lane.due is None
    lane.add([6])                       # flushed: no window any more
    assert lane.due is None and len(bg.held) == 1
    bg.run_held()
    hooked = background.Lane(bg, lambda batch: 0, lambda batch, n: batches.append(batch),
                             window=10)
    monkeypatch.setattr(background.durable, 'hook', lambda name, target: None)
    hooked.add([7])
    assert batches[-1] == [7]           # inline: done at once


def test_qmail_send_settles_messages_of_one_window_with_one_sync(queue_home, monkeypatch):
    """New messages one after another in a quiet queue (each its own
    preprocessing batch) are made durable by one sync, once the
    settling lane's window is over; then todo/ goes for all of them."""
    s, log = queue_home
    s.bg.inline = False
    s.settling.window = send.SYNC_WINDOW
    s.clean_request = lambda reqs, then=None: then([True] * len(reqs))
    syncs = []
    monkeypatch.setattr(durable, 'syncfs', lambda fds, group=None, opened=None: syncs.append(len(fds)) or False)
    for messid in (31, 32, 33):
        put(qfn('mess', messid, 3), b'Subject: x\n\nbody\n')
        put(qfn('todo', messid, 3), b'u0\0p1\0Fa@b.example\0Tu@here.example\0')
        s.preprocess_batch([messid])
        s.bg.run_held()                 # the files written, at once
    assert syncs == [] and s.settling.due is not None
    assert sorted(s.unsettled) == [31, 32, 33]
    s.settling.tick(s.settling.due)
    wait_finish(s.bg)
    assert syncs == [6]                 # info/ and local/ of three messages
    assert s.unsettled == {}


def test_a_channel_unsure_of_its_removal_keeps_the_message_from_finishing(queue_home):
    """Of a message's two jobs, the remote one's file is gone but its
    directory's fsync failed, the local one's is gone durably: the
    message must wait for the next start (a crash could bring back the
    remote list, whose info/ must then still be there), not finish
    because the local job found the remote file gone."""
    s, log = queue_home
    messid = 21
    remote = types.SimpleNamespace(id=messid, channel=1)
    local = types.SimpleNamespace(id=messid, channel=0)
    s.jobs_unlinked([remote, local], ([local], [], [remote], []))
    assert s.pqdone == []
    assert messid in s.unsettled
    assert any(line.startswith('alert: unable to fsync remote/') for line in log), log


@pytest.mark.parametrize('failure', ['short write', 'fsync', 'fsync_dir'])
def test_a_bounce_paragraph_retried_is_written_once(queue_home, monkeypatch, failure):
    """A paragraph whose append failed (a short write then ENOSPC, or an
    fsync of the file or its directory) is written again whole, after
    what came before it, never twice nor after a fragment of itself."""
    s, log = queue_home
    messid = 33
    monkeypatch.setattr(send.time, 'sleep', lambda seconds: None)
    s.addbounce(messid, b'first@x.example', b'Sorry, first. (#5.1.1)\n')
    path = os.path.abspath(s.fn('bounce', messid))
    before = open(path, 'rb').read()
    failed = []
    real_write, real_fsync, real_fsync_dir = os.write, send.durable.fsync, send.durable.fsync_dir

    def write(fd, data):
        if failure == 'short write' and not failed:
            failed.append(1)
            real_write(fd, bytes(data[:7]))
            raise OSError(28, 'No space left on device')
        return real_write(fd, data)

    def fsync(fd):
        if failure == 'fsync' and not failed:
            failed.append(1)
            raise OSError(5, 'Input/output error')
        return real_fsync(fd)

    def fsync_dir(path):
        if failure == 'fsync_dir' and len(failed) < 2:
            failed.append(1)
            raise OSError(5, 'Input/output error')
        return real_fsync_dir(path)
    monkeypatch.setattr(send.durable.os, 'write', write)
    monkeypatch.setattr(send.durable, 'fsync', fsync)
    monkeypatch.setattr(send.durable, 'fsync_dir', fsync_dir)
    s.addbounce(messid, b'second@x.example', b'Sorry, second. (#5.1.1)\n')
    monkeypatch.setattr(send.durable.os, 'write', real_write)
    after = open(path, 'rb').read()
    assert failed and any(line.startswith('alert: unable to append to bounce') for line in log)
    assert after.startswith(before)
    assert after[len(before):].count(b'second@x.example') == 1, after
    assert after[len(before):].startswith(b'<second@x.example>:'), after


def test_the_mutex_is_a_regular_file_of_its_own(tmp_path):
    """lock/ is qmailq's and qmail-start looks at the mutex as root: a
    FIFO there is not waited on, a link not followed (both OSError, so
    qmail-send's start says it cannot open its mutex); a held mutex is
    None, a free one is taken."""
    import fcntl
    path = str(tmp_path / 'sendmutex')
    os.mkfifo(path)
    with pytest.raises(OSError):
        send.lock_mutex(path)
    os.unlink(path)
    (tmp_path / 'target').write_bytes(b'')
    os.symlink(str(tmp_path / 'target'), path)
    with pytest.raises(OSError):
        send.lock_mutex(path)
    os.unlink(path)
    open(path, 'wb').close()
    fd = send.lock_mutex(path)
    assert fd is not None
    other = os.open(path, os.O_WRONLY)
    try:
        assert send.lock_mutex(path) is None
        with pytest.raises(OSError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)
        os.close(fd)


def test_a_bounce_is_recorded_with_the_descriptor_table_full(queue_home, monkeypatch):
    """Files waiting for their sync held every descriptor (a low ulimit
    -n), and addbounce slept for one to come free: only its own loop
    could close them, so qmail-send logged 'HELP! sleeping...' for good
    (found by a review of resource limits).  A spare descriptor kept for
    this is given up, and given back."""
    import resource
    s, log = queue_home
    monkeypatch.setattr(send.time, 'sleep', lambda seconds: pytest.fail('it slept'))
    highest = max(int(fd) for fd in os.listdir('/proc/self/fd'))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
    fillers = []
    try:
        while True:
            try:
                fillers.append(os.open('/dev/null', os.O_RDONLY))
            except OSError:
                break
        s.addbounce(34, b'who@x.example', b'Sorry. (#5.1.1)\n')
        assert s.reserve_fd != -1           # taken back
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert open(s.fn('bounce', 34), 'rb').read() == b'<who@x.example>:\nSorry. (#5.1.1)\n\n'
    assert log == []


def test_a_stop_while_a_bounce_cannot_be_recorded_ends_it(queue_home, monkeypatch):
    """TERM went unheard while the append failed (a disk that fails
    writes): svc -d could not stop qmail-send.  It ends as a crash would,
    the failure unrecorded and so its delivery made again at the next
    start."""
    s, log = queue_home

    def fsync(fd):
        raise OSError(5, 'Input/output error')

    slept = []

    def stop(seconds):
        slept.append(seconds)
        if len(slept) > 3:
            pytest.fail('the TERM went unheard')
        s.flagexitasap = True
    monkeypatch.setattr(send.durable, 'fsync', fsync)
    monkeypatch.setattr(send.time, 'sleep', stop)
    monkeypatch.setattr(send.os, '_exit', lambda code: (_ for _ in ()).throw(SystemExit(code)))
    with pytest.raises(SystemExit) as e:
        s.addbounce(35, b'who@x.example', b'Sorry. (#5.1.1)\n')
    assert e.value.code == 111
    assert log == ['alert: unable to append to bounce message; HELP! sleeping...\n',
                   'status: exiting with a failure unrecorded (its delivery is made again '
                   'at the next start)\n']


def test_a_first_pass_sees_marks_made_since_preprocessing(queue_home):
    """qmail-qrm's D marks on a new message's list, before any ALRM: the
    first pass takes the file, not the list remembered (its ctime moved),
    and starts no delivery for a recipient removed."""
    s, log = queue_home
    s.bg.inline = True
    s.clean_request = lambda reqs, then=None: then([True] * len(reqs))
    messid = 23
    put(qfn('mess', messid, 3), b'Subject: x\n\nbody\n')
    put(qfn('todo', messid, 3), b'u0\0p1\0Fa@b.example\0Tu@here.example\0Tv@here.example\0')
    s.preprocess_batch([messid])
    wait_finish(s.bg)
    assert s.fresh
    time.sleep(0.05)                    # (ctime moves by the kernel's tick)
    with open(qfn('local', messid, 3), 'r+b') as f:
        f.write(b'D')
    s.recent = time.time() + 1
    while s.pass_dochan(0):
        s.comm_buf[0] = b''
    assert [d.recip for d in s.dels[0] if d is not None] == [b'v@here.example']


def test_alrm_reads_the_recipient_lists_from_the_disk_again(queue_home):
    """qmail-qrm marks recipients done in local/ and remote/, then sends
    ALRM: a first pass that would take a new message's list from memory
    must take the file instead, with the marks (it had delivered a
    recipient just removed)."""
    s, log = queue_home
    s.bg.inline = True
    s.clean_request = lambda reqs, then=None: then([True] * len(reqs))
    messid = 22
    put(qfn('mess', messid, 3), b'Subject: x\n\nbody\n')
    put(qfn('todo', messid, 3), b'u0\0p1\0Fa@b.example\0Tu@here.example\0Tv@here.example\0')
    s.preprocess_batch([messid])
    wait_finish(s.bg)
    assert s.fresh
    fn = qfn('local', messid, 3)
    with open(fn, 'r+b') as f:          # qmail-qrm -r 'u@*'
        f.write(b'D')
    s.pqrun()
    assert s.fresh == {} and s.freshbytes == 0
    s.recent = time.time() + 1
    while s.pass_dochan(0):
        s.comm_buf[0] = b''
    started = [d.recip for d in s.dels[0] if d is not None]
    assert started == [b'v@here.example']


def test_alrm_rereads_a_pass_under_way(queue_home):
    """A pass waiting for delivery slots holds its list in memory: an
    ALRM after qmail-qrm's marks makes it read the file again, so the
    recipients it has not reached yet and that were removed are not
    delivered (C qmail reads the file a record at a time)."""
    s, log = queue_home
    s.bg.inline = True
    s.clean_request = lambda reqs, then=None: then([True] * len(reqs))
    s.concurrency = [2, 4]
    messid = 24
    recips = [b'u%d@here.example' % i for i in range(5)]
    put(qfn('mess', messid, 3), b'Subject: x\n\nbody\n')
    put(qfn('todo', messid, 3), b'u0\0p1\0Fa@b.example\0'
        + b''.join(b'T' + r + b'\0' for r in recips))
    s.preprocess_batch([messid])
    wait_finish(s.bg)
    s.recent = time.time() + 1
    while s.pass_dochan(0):
        s.comm_buf[0] = b''
    assert [d.recip for d in s.dels[0] if d is not None] == recips[:2]   # (2 slots)
    data = open(qfn('local', messid, 3), 'rb').read()
    with open(qfn('local', messid, 3), 'r+b') as f:     # qmail-qrm -r 'u3@*'
        f.seek(data.index(b'Tu3@'))
        f.write(b'D')
    s.pqrun()
    s.dels = [[None] * 4, [None] * 4]
    s.concurrencyused = [0, 0]
    s.concurrency = [4, 4]
    while s.pass_dochan(0):
        s.comm_buf[0] = b''
    assert [d.recip for d in s.dels[0] if d is not None] == [recips[2], recips[4]]
