"""qmail-send's cleanup of abandoned messages (mess/ with no todo/ nor
info/, OSSIFIED old by the clock) against a qmail-queue still writing:
a clock stepped forward by more than 36 hours (an NTP step, a VM resumed
after days) made every file look abandoned, and the cleanup removed the
message a client was sending; qmail-queue then named it in todo/ and
said 0, and the accepted mail was gone (C qmail's flaw too)."""

import os
import threading
import time

from qmail import queue, send
from scratch_send import scratch_send

SPLIT = 23


def test_cleanup_leaves_a_message_qmail_queue_still_writes(tmp_path, monkeypatch):
    s, _ = scratch_send(tmp_path, monkeypatch, SPLIT)
    os.mkdir('pid')
    monkeypatch.setattr(queue, 'triggerpull', lambda: None)
    asked = []
    monkeypatch.setattr(s, 'clean_request', lambda reqs, then=None: asked.extend(reqs))
    msg_r, msg_w = os.pipe()
    env_r, env_w = os.pipe()
    os.write(msg_w, b'Subject: half\n\n')
    got = []
    writer = threading.Thread(target=lambda: got.append(queue.inject(
        msg_r, env_r, 0, 99, time.time(), {'alias': -1, 'daemon': -1, 'send': -1}, SPLIT)))
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while not any(os.listdir('mess/%d' % i) for i in range(SPLIT)):
            assert time.monotonic() < deadline, 'qmail-queue made no mess/ file'
            time.sleep(0.01)
        messid = next(int(n) for i in range(SPLIT) for n in os.listdir('mess/%d' % i))
        # beside it, one abandoned for real: its writer died (no lock)
        dead = 'mess/%d/%d' % (1, 1 + SPLIT)
        open(dead, 'w').close()
        s.recent = time.time() + 2 * send.OSSIFIED     # the clock stepped on
        s.cleanuptime = 0
        for _ in range(4):
            s.cleanup_do()
        assert asked == ['foop/%d' % (1 + SPLIT)], asked
    finally:
        os.write(msg_w, b'body\n')
        os.close(msg_w)
        os.write(env_w, b'Fa@b\0Tc@d\0\0')
        os.close(env_w)
        writer.join(10)
        os.close(msg_r)
        os.close(env_r)
    assert got == [0]
    assert os.path.exists('todo/%d' % messid)
    assert os.path.exists('mess/%d/%d' % (messid % SPLIT, messid))
    # once written, the message is todo/'s: the cleanup asks nothing
    asked.clear()
    s.cleanupdir = None
    s.cleanuptime = 0
    for _ in range(4):
        s.cleanup_do()
    assert 'foop/%d' % messid not in asked
