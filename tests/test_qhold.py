"""Holding messages: qmail-send's side (a scratch queue, driven by hand),
the command FIFO (qmail.lib.sendcmd), qmail-qread's "held", and
qmail-qhold's arguments.  tests/integration/test_qhold_real.py runs it
all on an installed home."""

import os
import stat
import threading
import time

import pytest

from qmail import qhold, qread
from qmail.lib import sendcmd
from qmail.lib.qfile import qfn
from scratch_send import put, scratch_send

SPLIT = 23


@pytest.fixture
def s(tmp_path, monkeypatch):
    s, s.log = scratch_send(tmp_path, monkeypatch, SPLIT)
    s.bg.inline = True
    return s


def preprocessed(messid, recips, held=False):
    """A message qmail-send preprocessed: mess/, info/, local/."""
    put(qfn('mess', messid, SPLIT), b'Subject: x\n\nbody\n')
    put(qfn('info', messid, SPLIT), b'Fa@b.example\0')
    put(qfn('local', messid, SPLIT), b''.join(b'T' + r + b'\0' for r in recips))
    os.chmod(qfn('local', messid, SPLIT), 0o1600 if held else 0o600)


def start(s):
    """Every delivery the passes can start, taken by qmail-lspawn:
    {recipient: slot}."""
    s.recent = int(time.time()) + 1
    for _ in range(100):
        if not s.pass_dochan(0):
            break
        s.comm_buf[0] = b''
    return {d.recip: i for i, d in enumerate(s.dels[0]) if d is not None}


def report(s, slot, text=b'Kdid 0+0+1\n'):
    s.del_reports(0, [bytes((slot,)) + text])


def hold(messid):
    os.chmod(qfn('local', messid, SPLIT), 0o1600)


def release(messid):
    os.chmod(qfn('local', messid, SPLIT), 0o600)


def test_the_mark_holds_at_start_and_alrm_does_not_run_it(s):
    preprocessed(70, [b'u@here.example'])
    preprocessed(71, [b'v@here.example'], held=True)
    s.pqstart()
    assert s.heldchan[0] == {71}
    assert [m for _, m in s.pqchan[0]] == [70]
    assert sorted(start(s)) == [b'u@here.example']
    s.pqrun()                                   # ALRM: every message now, but the held
    assert [m for _, m in s.pqchan[0]] == []
    assert s.heldchan[0] == {71}


def test_hold_cuts_a_pass_and_release_runs_it_now(s):
    """H while a pass is under way: no more of its deliveries start (those
    started end as they would have); U: due now."""
    preprocessed(72, [b'r%d@here.example' % i for i in range(6)])
    s.pqstart()
    slots = start(s)
    assert len(slots) == 4                      # 4 local slots: the pass waits
    hold(72)
    s.commands_do([(b'H', 72)])
    assert s.log[-1] == 'hold msg 72\n' and s.passes[0] is None
    report(s, slots[b'r0@here.example'])
    assert len(start(s)) == 3                   # a slot free, and nothing started in it
    for r in (b'r1@here.example', b'r2@here.example', b'r3@here.example'):
        report(s, slots[r])
    s.pqrun()                                   # (its retry now: its pass finds the mark)
    assert start(s) == {}
    assert s.heldchan[0] == {72} and s.pqchan[0] == []
    release(72)
    s.commands_do([(b'U', 72)])
    assert s.log[-1] == 'release msg 72\n' and s.heldchan[0] == set()
    assert sorted(start(s)) == [b'r4@here.example', b'r5@here.example']


def test_release_while_its_deliveries_end(s):
    preprocessed(73, [b'r%d@here.example' % i for i in range(5)])
    s.pqstart()
    slots = start(s)
    hold(73)
    s.commands_do([(b'H', 73)])
    release(73)
    s.commands_do([(b'U', 73)])                 # before the 4 deliveries end
    for slot in slots.values():
        report(s, slot)
    assert sorted(start(s)) == [b'r4@here.example']     # at once, not at its retry


def test_the_mark_holds_without_its_command_and_a_release_without_its_own(s):
    """Commands lost (a full FIFO, a restart): the next pass finds the
    mark and waits; an ALRM finds a mark gone and runs it (a review
    found 4,688 of 20,000 held messages delivered at an ALRM)."""
    preprocessed(80, [b'u@here.example'])
    s.pqstart()
    hold(80)
    s.pqrun()
    assert start(s) == {} and s.heldchan[0] == {80}
    release(80)
    s.pqrun()
    assert sorted(start(s)) == [b'u@here.example']


def test_an_id_used_again_is_not_held_by_an_old_command(s):
    """H for a message that ends meanwhile leaves nothing behind: a new
    message given its number (an inode) is delivered (a review found it
    stuck until a restart)."""
    s.commands_do([(b'H', 81)])                 # (its message gone)
    preprocessed(81, [b'w@here.example'])
    s.pqadd(81)
    assert sorted(start(s)) == [b'w@here.example']


def test_now_runs_a_held_message_and_one_not_due(s):
    preprocessed(74, [b'u@here.example'], held=True)
    preprocessed(75, [b'v@here.example'])
    s.pqstart()
    s.pqchan[0] = [(s.recent + 3600, 75)]      # deferred an hour
    release(74)
    s.commands_do([(b'N', 74), (b'N', 75)])
    assert sorted(start(s)) == [b'u@here.example', b'v@here.example']


def test_read_again_takes_the_marks_made_meanwhile(s):
    """R (qmail-qrm's D marks): a pass under way reads its list again."""
    preprocessed(76, [b'r%d@here.example' % i for i in range(6)])
    s.pqstart()
    slots = start(s)
    with open(qfn('local', 76, SPLIT), 'r+b') as f:
        data = f.read()
        f.seek(data.index(b'Tr5@'))
        f.write(b'D')
    s.commands_do([(b'R', 76)])
    report(s, slots[b'r0@here.example'])
    assert b'r5@here.example' not in start(s)
    assert b'r4@here.example' in start(s)


def test_many_commands_cost_one_look_at_the_queue(s, monkeypatch):
    """20,000 holds in one batch: the queue is looked at once per batch,
    not once per message (a review: 14,000 holds took 14 s of CPU)."""
    s.pqchan[0] = [(s.recent + 3600, m) for m in range(10 ** 6, 10 ** 6 + 20000)]
    began = time.process_time()
    s.commands_do([(b'N', m) for m in range(10 ** 6, 10 ** 6 + 20000)]
                  + [(b'H', m) for m in range(2 * 10 ** 6, 2 * 10 ** 6 + 20000)])
    assert time.process_time() - began < 2
    assert all(t <= s.recent for t, _ in s.pqchan[0])


def test_commands_come_through_the_fifo(s):
    preprocessed(77, [b'u@here.example'])
    s.pqstart()
    s.command_set()
    assert s.commandfd != -1
    assert sendcmd.send('.', [sendcmd.line(b'H', 77), b'junk\n', b'X1\n'])
    s.command_read()
    assert s.log == ['hold msg 77\n']
    os.close(s.commandfd)


def test_no_fifo_is_a_warning_and_no_commands(s):
    os.unlink(sendcmd.COMMAND)
    s.command_set()
    assert s.commandfd == -1
    assert s.log[-1].startswith('warning: unable to open lock/command: ')
    assert not sendcmd.send('.', [b'H1\n'])
    put(sendcmd.COMMAND, b'')
    s.command_set()
    assert s.commandfd == -1 and 'not a named pipe' in s.log[-1]
    assert not sendcmd.send('.', [b'H1\n'])


def test_send_without_a_reader_and_a_full_fifo(tmp_path):
    os.mkdir(tmp_path / 'lock')
    os.mkfifo(tmp_path / 'lock' / 'command', 0o600)
    assert not sendcmd.send(str(tmp_path), [b'H1\n'])   # nobody reads: ENXIO
    fd = os.open(tmp_path / 'lock' / 'command', os.O_RDWR | os.O_NONBLOCK)
    try:
        many = [sendcmd.line(b'N', m) for m in range(10 ** 6, 10 ** 6 + 20000)]  # 180 KB
        got = []

        def drain():
            reader = sendcmd.Reader()
            deadline = time.monotonic() + 30
            while len(got) < len(many) and time.monotonic() < deadline:
                try:
                    got.extend(reader.feed(os.read(fd, 65536)))
                except BlockingIOError:
                    time.sleep(0.01)
        t = threading.Thread(target=drain)
        t.start()
        assert sendcmd.send(str(tmp_path), many)
        t.join(35)
        assert got == [(b'N', m) for m in range(10 ** 6, 10 ** 6 + 20000)]
        assert not sendcmd.send(str(tmp_path), many, timeout=0.2)   # nobody drains it
    finally:
        os.close(fd)


@pytest.mark.parametrize('chunks, want', [
    ([b'H1\nU22\n'], [(b'H', 1), (b'U', 22)]),
    ([b'H1', b'2\nN', b'3\n'], [(b'H', 12), (b'N', 3)]),
    ([b'h1\nH\nHx\nH-1\nQ5\n\nR 7\nR7\n'], [(b'R', 7)]),
    ([b'H' + b'9' * 40 + b'\nH5\n'], [(b'H', 5)]),
    ([b'H' + b'9' * 40, b'9' * 10, b'\nH6\n'], [(b'H', 6)]),       # too long, in pieces
    ([b'H9', b'\nH435\n'], [(b'H', 9), (b'H', 435)]),    # (send's leading newline)
])
def test_reader(chunks, want):
    r = sendcmd.Reader()
    got = []
    for c in chunks:
        got.extend(r.feed(c))
    assert got == want


def test_qread_says_held(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for d in ('mess', 'info', 'local', 'remote'):
        os.makedirs('%s/%d' % (d, 78 % SPLIT))
    preprocessed(78, [b'u@here.example'])
    put(qfn('remote', 78, SPLIT), b'Tv@far.example\0')
    assert ' held' not in qread.show_info(78, SPLIT)
    os.chmod(qfn('remote', 78, SPLIT), 0o1600)
    first = qread.show_info(78, SPLIT).split('\n')[0]
    assert first.endswith('  <a@b.example>  held'), first


@pytest.mark.parametrize('argv, want', [
    (['-s', '*@bad.example'], (False, False, ['*@bad.example'], [], [], [])),
    (['-nu', '12', '#13'], (True, True, [], [], [], [12, 13])),
    (['-r', 'x@*', '-Sspam*'], (False, False, [], ['x@*'], ['spam*'], [])),
    ([], None), (['-u'], None), (['-x', '1'], None), (['abc'], None),
])
def test_qhold_arguments(argv, want):
    assert qhold.parse_args(argv) == want


def test_mark_is_set_and_cleared_durably(tmp_path, monkeypatch):
    from qmail import qrm
    monkeypatch.chdir(tmp_path)
    for d in ('local', 'remote', 'info'):
        os.makedirs('%s/%d' % (d, 79 % SPLIT))
    put(qfn('info', 79, SPLIT), b'Fa@b\0')
    put(qfn('local', 79, SPLIT), b'Tu@h\0')
    msg = qrm.Message(79, SPLIT)
    qrm.mark_held(msg, True)
    assert os.stat(qfn('local', 79, SPLIT)).st_mode & stat.S_ISVTX
    assert qhold.held(msg)
    qrm.mark_held(msg, False)
    assert not qhold.held(msg)
    assert stat.S_IMODE(os.stat(qfn('local', 79, SPLIT)).st_mode) == 0o644
