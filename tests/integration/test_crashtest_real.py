"""qmail-crashtest over every scenario: qmail's programs crashed after
each durable step, stopped and powered off, lose no mail.  And the tool
can fail: a qmail-queue or a maildir delivery that skips an fsync is
caught.  Its partner qmail-fsck, on a live queue, sees no problem in
messages moving between states."""

import os
import re
import subprocess
import sys
import threading
import time

import pytest

from conftest import install_home, needs_root, remove_home
from delivery import Mta, ensure_user, fast_queue, maildirmake

from qmail import crashtest, fsck, install, local_deliver, queue
from qmail.lib import auto

pytestmark = needs_root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINE = re.compile(r'^(\S+)\s+(stop|powercut)\s+(\d+) crash points '
                  r'\((\d+) steps \+ the answer\)\s+(\d+) failures')


def summary(out):
    """{(scenario, mode): (crash points, failures)}"""
    got = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            got[m.group(1), m.group(2)] = (int(m.group(3)), int(m.group(5)))
    return got


def test_every_scenario_survives_every_crash_point():
    proc = subprocess.run([sys.executable, '-m', 'qmail.crashtest', '-v'],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = summary(proc.stdout)
    names = [s.name for s in crashtest.SCENARIOS]
    assert sorted(got) == sorted((n, m) for n in names
                                 for m in ('stop', 'powercut')), proc.stdout
    for (name, mode), (points, failures) in got.items():
        assert failures == 0, proc.stdout
        assert points > 3, (name, mode, points)
    # The two modes crash at the same steps.
    for name in names:
        assert got[name, 'stop'][0] == got[name, 'powercut'][0]


def test_usage_and_unknown_scenario(capsys):
    assert crashtest.main(['nosuch']) == 100
    assert crashtest.main(['-x']) == 100
    out, err = capsys.readouterr()
    assert out == '' and err.startswith('usage: qmail-crashtest')


def test_a_report_that_cannot_be_written_is_one_line_and_111(tmp_path):
    """fd 1 closed or a full disk: a traceback and exit 1 (which says an
    invariant broke), or 120; and TERM leaves no scratch directory."""
    import signal
    import subprocess
    import sys
    import time
    argv = [sys.executable, '-m', 'qmail.crashtest', '-d', str(tmp_path), '-n', 'queue']
    r = subprocess.run(argv, stdout=open('/dev/full', 'w'), stderr=subprocess.PIPE,
                       timeout=120)
    assert r.returncode == 111 and r.stderr.count(b'\n') == 1, r.stderr
    assert b'unable to write output' in r.stderr
    p = subprocess.Popen(argv[:-2], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 111 and b'Traceback' not in err, err
    assert os.listdir(tmp_path) == []


def test_a_crash_point_no_run_reaches_is_a_failure(monkeypatch, capsys):
    """A run may take fewer steps than the counted one (its split
    directories depend on inode numbers): a fresh home is tried again.
    A point that no run reaches stays a failure."""
    real = crashtest.count_steps
    monkeypatch.setattr(crashtest, 'count_steps',
                        lambda scenario, box: real(scenario, box) + ['a step never taken'])
    assert crashtest.main(['-v', 'queue']) == 1
    out = capsys.readouterr().out
    assert re.search(r'ended before step \d+, %d times' % crashtest.NOT_REACHED_TRIES, out), out


def test_a_queue_that_links_todo_before_its_message_is_durable(monkeypatch, capsys):
    """qmail-queue without the fsync of mess/ (and of its directory): todo/
    can name a message a power cut empties.  Stopping the process breaks
    nothing (the kernel keeps the data); cutting the power does."""
    real_many = queue.durable.fsync_many

    def fsync_many(fds):
        fds = list(fds)
        return real_many(fds[1:])       # [message, envelope]: the envelope only

    monkeypatch.setattr(queue.durable, 'fsync_many', fsync_many)
    monkeypatch.setattr(queue.Writer, 'syncdir', lambda self, path: None)
    assert crashtest.main(['-v', 'queue']) == 1
    out = capsys.readouterr().out
    got = summary(out)
    assert got['queue', 'stop'][1] == 0, out
    assert got['queue', 'powercut'][1] > 0, out
    assert re.search(r'todo-without-mess|todo-empty-mess|'
                     r'mess/ is not the whole message', out), out
    assert 'acknowledged message new lost' in out, out


def test_a_writer_that_links_todo_before_its_syncfs(monkeypatch, capsys):
    """A qmail-queued writer whose syncfs says done without doing it:
    stopping is harmless, a power cut loses the acknowledged message."""
    from qmail.lib import durable
    durable.load_writeback()
    if not durable._syncfs:
        pytest.skip('no syncfs that reports errors on this kernel')
    monkeypatch.setattr(queue.durable, 'syncfs', lambda fds, group=None, opened=None: True)
    assert crashtest.main(['-v', 'queued']) == 1
    out = capsys.readouterr().out
    got = summary(out)
    assert got['queued', 'stop'][1] == 0, out
    assert got['queued', 'powercut'][1] > 0, out
    assert 'acknowledged message new lost' in out, out


def test_a_send_whose_syncfs_does_nothing(monkeypatch, capsys):
    """qmail-send settling messages on a syncfs that syncs nothing: a
    power cut after todo/ is gone takes their info/ and local/ too."""
    from qmail.lib import durable
    durable.load_writeback()
    if not durable._syncfs:
        pytest.skip('no syncfs that reports errors on this kernel')
    monkeypatch.setattr(durable, 'syncfs', lambda fds, group=None, opened=None: True)
    assert crashtest.main(['-v', 'overlap']) == 1
    out = capsys.readouterr().out
    got = summary(out)
    assert got['overlap', 'stop'][1] == 0, out
    assert got['overlap', 'powercut'][1] > 0, out


def test_a_maildir_delivery_that_links_before_fsync(monkeypatch, capsys):
    """A delivery that links tmp/ into new/ without the file's fsync leaves
    an empty file in new/ after a power cut: a lost message."""
    monkeypatch.setattr(local_deliver.durable, 'fsync', lambda fd: None)
    assert crashtest.main(['-v', 'maildir']) == 1
    out = capsys.readouterr().out
    assert summary(out)['maildir', 'powercut'][1] > 0, out
    assert 'half-written' in out


def test_a_delivery_into_the_spare_that_links_before_fsync(monkeypatch, capsys):
    """The same with the tmp/ file a worker made ahead (maildir-spare):
    the scenario delivers into the spare, and a power cut finds it
    empty in new/."""
    monkeypatch.setattr(local_deliver.durable, 'fsync', lambda fd: None)
    assert crashtest.main(['-v', 'maildir-spare']) == 1
    out = capsys.readouterr().out
    assert summary(out)['maildir-spare', 'powercut'][1] > 0, out
    assert 'half-written' in out


def test_a_qrm_that_removes_info_before_the_recipient_lists(monkeypatch, capsys):
    """qmail-qrm taking info/ (and mess/) before local/ and remote/, with
    no D marks first: a crash between leaves recipient lists of no
    message, in the queue for good."""
    from qmail import qrm

    def remove_whole(msg):
        qrm.unlink_synced([msg.fn('todo'), msg.fn('info'), msg.fn('mess')])
        qrm.unlink_synced([msg.fn('bounce'), msg.fn('local'), msg.fn('remote'), msg.fn('intd')])
    monkeypatch.setattr(qrm, 'remove_whole', remove_whole)
    assert crashtest.main(['-v', 'qrm']) == 1
    out = capsys.readouterr().out
    assert summary(out)['qrm', 'stop'][1] > 0, out
    assert 'left in the queue for good' in out


def test_bounce_entry_must_be_durable_before_the_d_mark(monkeypatch, capsys):
    """The bug qmail-crashtest found in qmail-send's addbounce: bounce/<id>
    fsynced but not its directory, then the recipient marked D: a power
    cut forgot the failure and no bounce was ever sent.  Without the
    fsync of bounce/ the tool says so; with it (the code), it passes."""
    from qmail.lib import durable
    real = durable.fsync_dir
    monkeypatch.setattr(durable, 'fsync_dir',
                        lambda path: None if path == 'bounce' else real(path))
    assert crashtest.main(['-v', 'bounce']) == 1
    out = capsys.readouterr().out
    assert summary(out)['bounce', 'stop'][1] == 0, out
    assert 'failure of fails to nobody@crash.example never bounced' in out


def test_deliveries_before_durability_need_their_safeguards(monkeypatch, capsys):
    """The overlap scenario (a new message delivered before its
    preprocessing is durable) breaks when qmail-send forgets either
    safeguard: a stale bounce/ of an interrupted run kept (its old
    failure is mailed), or a job finished before its message is settled
    (the message is stranded until a restart)."""
    from qmail import send
    real_write = send.Send.preprocess_write

    def keeps_bounce(self, messid, routing, out):
        saved = send.Send.fn(self, 'bounce', messid)
        try:
            with open(saved, 'rb') as f:
                data = f.read()
        except FileNotFoundError:
            data = None
        got = real_write(self, messid, routing, out)
        if data is not None:
            with open(saved, 'wb') as f:
                f.write(data)
        return got
    monkeypatch.setattr(send.Send, 'preprocess_write', keeps_bounce)
    assert crashtest.main(['-v', 'overlap']) == 1
    out = capsys.readouterr().out
    assert 'a broken bounce delivered' in out or 'reports one@crash.example' in out, out
    monkeypatch.undo()

    def no_parking(self, jobs):
        self.finishing.add(jobs)
    monkeypatch.setattr(send.Send, 'jobs_finish', no_parking)
    assert crashtest.main(['-v', 'overlap']) != 0
    assert 'overlap does not run without a crash' in capsys.readouterr().out


def test_direct_delivery_needs_its_spill(monkeypatch, capsys):
    """The direct scenario breaks when a message delivered direct is
    finished though a recipient failed: its bounce forgotten."""
    from qmail import send

    def finish_anyway(self, job):
        self.preprocess_synced([(job.id, None)])
    monkeypatch.setattr(send.Send, 'spill', finish_anyway)
    assert crashtest.main(['-v', 'direct']) != 0
    out = capsys.readouterr().out
    # (the run itself ends with bounce/ left behind)
    assert 'never bounced' in out or 'direct does not run without a crash' in out, out


def test_fsck_on_a_live_queue_reports_nothing():
    """Messages injected, preprocessed, delivered, bounced and cleaned
    while qmail-fsck scans again and again: no scan reports a problem."""
    home = install_home('test.example.org')
    mta = None
    try:
        user = ensure_user('qmtfsck')
        maildirmake(os.path.join(user[3], 'Maildir'), user[1], user[2])
        mta = Mta(home, './Maildir/')
        uids, gids = install.lookup_ids()
        done = []

        def feed():
            try:
                for _ in range(4):
                    fast_queue(home, [([b'qmtfsck@test.example.org',
                                        b'nosuch@test.example.org'],
                                       b'Subject: %d\n\nx\n' % i)
                                      for i in range(50)])
            finally:
                done.append(True)

        feeder = threading.Thread(target=feed)
        feeder.start()
        scans, seen = 0, []
        deadline = time.monotonic() + 120
        while (not done or scans < 3) and time.monotonic() < deadline:
            seen += fsck.check_queue(os.path.join(home, 'queue'), auto.SPLIT,
                                     time.time(), uids)
            scans += 1
        feeder.join(timeout=60)
        mta.wait_log('delivery 400:')
        said = []
        code = fsck.fsck(home, install.HIER, auto.SPLIT, uids, gids,
                         time.time(), False, said.append)
        assert seen == [] and scans >= 3
        assert (code, said) == (0, [])
    finally:
        if mta is not None:
            mta.stop()
        remove_home(home)
