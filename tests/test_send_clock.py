"""qmail-send and a wall clock that steps (an NTP step, date -s, a VM
resumed after days): its schedule is in wall-clock seconds, as qmail's.
A step back moves every due time back with it (qmail's waited as long
as the clock went back, and a message born while the clock was ahead
until the clock caught up); a step forward past queuelifetime bounces
nothing for its age for an hour (qmail's bounced the whole queue)."""

import os
import time

import pytest

from qmail import send
from qmail import send_rules as r
from qmail.lib.qfile import qfn
from scratch_send import put, scratch_send

SPLIT = 23
YEAR = 365 * 86400


def test_a_birth_to_come_counts_from_now():
    now = 10 ** 9
    assert r.nextretry(now + YEAR, now, 0) == now + 100
    assert r.nextretry(now + YEAR, now, 1) == now + 400
    assert r.nextretry(now - 99, now, 0) == now - 99 + 361          # as qmail


def test_a_next_try_only_grows_with_the_time_it_is_computed_at():
    """What makes a due time beyond nextretry(birth, now) one set by a
    clock since set back (Send.latest_due)."""
    birth = 10 ** 9
    for c in (0, 1):
        times = [r.nextretry(birth, birth + age, c) for age in range(0, 700000, 37)]
        assert times == sorted(times)


def test_a_clock_set_back_moves_the_schedule_back(tmp_path, monkeypatch):
    s, log = scratch_send(tmp_path, monkeypatch, SPLIT)
    wall, mono = time.time(), time.monotonic()
    s.watch_clock(wall, mono)
    base = int(wall)
    s.pqchan[0] = [(base + 100, 7), (base + 900, 8)]
    s.pqchan[1] = [(base + 400, 9)]
    s.pqdone, s.pqfail = [(base, 10)], [(base + 123, 11)]
    s.pqsettle, s.pqrespill = [(base + 123, 12, [0])], [(base + 10, 13)]
    s.todo_held = {14: (base + 123, 'id')}
    s.nexttodorun, s.cleanuptime = base + 1500, base + 76431
    s.watch_clock(wall + 30, mono + 30)                 # a steady clock: nothing moves
    assert s.pqchan[0] == [(base + 100, 7), (base + 900, 8)] and log == []
    s.watch_clock(wall + 40 - 86400, mono + 40)         # a day back
    back = base - 86400
    assert s.pqchan == [[(back + 100, 7), (back + 900, 8)], [(back + 400, 9)]]
    assert (s.pqdone, s.pqfail) == ([(back, 10)], [(back + 123, 11)])
    assert (s.pqsettle, s.pqrespill) == ([(back + 123, 12, [0])], [(back + 10, 13)])
    assert s.todo_held == {14: (back + 123, 'id')}
    assert (s.nexttodorun, s.cleanuptime) == (back + 1500, back + 76431)
    assert log == ['warning: the clock went back 86400 seconds; the schedule moves back '
                   'with it\n']


def test_a_start_after_the_clock_was_set_back_tries_now(tmp_path, monkeypatch):
    """qmail-send down while the clock went back a year: each waiting
    channel's next try, kept in its file's mtime, lay a year ahead."""
    s, log = scratch_send(tmp_path, monkeypatch, SPLIT)
    now = int(time.time())
    for messid, ahead in ((31, YEAR), (32, 300)):
        put(qfn('info', messid, SPLIT), b'Fa@b.example\0')
        put(qfn('remote', messid, SPLIT), b'Tc@d.example\0')
        os.utime(qfn('remote', messid, SPLIT), (now + ahead, now + ahead))
    s.recent = now
    s.pqstart()
    assert sorted(s.pqchan[1]) == [(now, 31), (now + 300, 32)]
    assert log == ['warning: 1 deliveries were due further ahead than qmail waits (the '
                   'clock was set back?); trying them now\n']


def test_a_lower_queuelifetime_moves_no_next_try(tmp_path, monkeypatch):
    """A message near the end of a week's lifetime has its last try hours
    ahead; queuelifetime lowered to a day and qmail-send restarted, that
    try stays where it was (it bounces then, as qmail's would), with no
    word of the clock (a review: the bound was taken from the lifetime)."""
    s, log = scratch_send(tmp_path, monkeypatch, SPLIT)
    now = int(time.time())
    birth = now - 604750
    put(qfn('info', 33, SPLIT), b'Fa@b.example\0')
    os.utime(qfn('info', 33, SPLIT), (birth, birth))
    put(qfn('remote', 33, SPLIT), b'Tc@d.example\0')
    due = r.nextretry(birth, now - 10, 1)
    assert due > now + 30000
    os.utime(qfn('remote', 33, SPLIT), (due, due))
    s.c.lifetime = 86400
    s.recent = now
    s.pqstart()
    assert s.pqchan[1] == [(due, 33)] and log == []


@pytest.mark.parametrize('stepped', [True, False])
def test_a_clock_set_forward_bounces_nothing_for_its_age_at_once(tmp_path, monkeypatch,
                                                                stepped):
    s, log = scratch_send(tmp_path, monkeypatch, SPLIT)
    wall, mono = time.time(), time.monotonic()
    now = int(wall)
    put(qfn('mess', 41, SPLIT), b'Subject: x\n\nbody\n')
    put(qfn('info', 41, SPLIT), b'Fa@b.example\0')      # born now
    put(qfn('local', 41, SPLIT), b'Tu@here.example\0')
    os.utime(qfn('local', 41, SPLIT), (now, now))
    s.pqadd(41)
    s.watch_clock(wall, mono)
    if stepped:                         # seen by the loop: a year on in a second
        s.watch_clock(wall + YEAR, mono + 1)
    s.recent = now + YEAR               # (else: the message is a year old, for real)
    assert s.pass_dochan(0)
    assert s.passes[0].job.flagdying is (not stepped)
    if stepped:
        assert ('warning: the clock went forward %d seconds; no message bounces for its age '
                'for the next 3600 seconds\n' % (YEAR - 1)) in log
        # an hour on, the clock still where it went: believed (the case below)
        assert s.clock_doubt_until == mono + 1 + send.CLOCK_DOUBT


def test_a_delivery_under_way_when_the_clock_goes_back_is_retried_in_time(tmp_path,
                                                                          monkeypatch):
    """Its retry was set before the step: it came back into the queue as
    far ahead as the clock went back (found by a review of the change)."""
    s, log = scratch_send(tmp_path, monkeypatch, SPLIT)
    wall, mono = time.time(), time.monotonic()
    now = int(wall)
    put(qfn('mess', 51, SPLIT), b'Subject: x\n\nbody\n')
    put(qfn('info', 51, SPLIT), b'Fa@b.example\0')
    put(qfn('local', 51, SPLIT), b'Tu@here.example\0')
    os.utime(qfn('info', 51, SPLIT), (now, now))
    s.pqadd(51)
    s.watch_clock(wall, mono)
    s.recent = now
    assert s.pass_dochan(0)
    job = s.passes[0].job
    assert job.retry == now + 100
    s.watch_clock(wall - 86400, mono + 1)             # a day back, the delivery under way
    s.passes[0] = None
    job.refs, job.flaghiteof = 1, False               # (its last reference: a deferral)
    s.job_close(job)
    assert s.pqchan[0] == [(now + 100 - 86401, 51)]


def test_a_message_born_while_the_clock_was_ahead_is_born_again_now(tmp_path, monkeypatch):
    """Its retries came every 100 s with no backoff, and it bounced only
    once the clock passed its birth and lifetime (found by a review)."""
    s, log = scratch_send(tmp_path, monkeypatch, SPLIT)
    now = int(time.time())
    put(qfn('mess', 52, SPLIT), b'Subject: x\n\nbody\n')
    put(qfn('info', 52, SPLIT), b'Fa@b.example\0')
    put(qfn('local', 52, SPLIT), b'Tu@here.example\0')
    os.utime(qfn('info', 52, SPLIT), (now + YEAR, now + YEAR))
    os.utime(qfn('local', 52, SPLIT), (now, now))
    s.pqadd(52)
    s.recent = now
    assert s.pass_dochan(0)
    assert s.passes[0].job.retry == now + 100
    assert int(os.stat(qfn('info', 52, SPLIT)).st_mtime) == now
