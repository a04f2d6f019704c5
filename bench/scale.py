"""Scale: a queue of 100,000 messages (2 KB each, one local recipient),
just queued (in todo/, as after a burst of injections while qmail-send
was down), filled with qmail-queue's own writer (bench/fill.py).

  qmail-qread   wall time of bin/qmail-qread over the whole queue (output
                to a pipe and counted), and of qmail-qstat;
  qmail-send    from starting qmail-start to the first "status:" line of
                its log, and to the first file in the user's Maildir/new;
                qmail-send's VmRSS at those two moments, and its VmHWM (peak
                RSS) after WINDOW more seconds of work; how many messages
                it delivered in that window; and how long TERM takes.
"""

import os
import signal
import subprocess
import time

import fill
from procs import BenchError, reap_all, rss_kb, wait_for
from systems import QmailSystem

WINDOW = 20              # seconds of qmail-send at work after its first delivery


def timed(argv, timeout=600):
    t0 = time.monotonic()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise BenchError('%s exited %d: %s' % (argv[0], r.returncode, r.stderr[-300:]))
    return elapsed, r.stdout


def run(count, user, quick, say):
    q = QmailSystem(None)
    window = 5 if quick else WINDOW
    rows = []
    try:
        t0 = time.monotonic()
        fill.fill(q.home, count, [user.address.encode()], workers=8)
        filltime = time.monotonic() - t0
        say('scale: %d messages queued in %.0f s' % (count, filltime))
        rows.append(('scale: fill the queue with qmail-queue\'s writer (8 workers)',
                     '%.0f msg/s' % (count / filltime)))
        bindir = os.path.join(q.home, 'bin')
        took, out = timed([os.path.join(bindir, 'qmail-qread')])
        listed = out.count(b'\n\t')
        rows.append(('scale: qmail-qread over %d queued messages' % count,
                     '%.2f s (%d recipients listed)' % (took, listed)))
        took, out = timed([os.path.join(bindir, 'qmail-qstat')])
        rows.append(('scale: qmail-qstat over %d queued messages' % count, '%.2f s' % took))

        user.empty()
        log = os.path.join(q.top, 'send.log')
        reap_all(time.monotonic() + 5)
        t0 = time.monotonic()
        with open(log, 'wb') as out:
            proc = subprocess.Popen([os.path.join(bindir, 'qmail-start'), './Maildir/'],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=q.env,
                                    start_new_session=True)
        q.procs.append(proc)

        def status_line():
            with open(log, 'rb') as f:
                return b'status:' in f.read()
        wait_for(status_line, 120, 'qmail-send\'s first status line', interval=0.005)
        t_status = time.monotonic() - t0
        rss_status = rss_kb(proc.pid)
        wait_for(lambda: user.count() > 0, 300, 'a first delivery', interval=0.005)
        t_first = time.monotonic() - t0
        rss_first = rss_kb(proc.pid)
        t_end = time.monotonic() + window
        while time.monotonic() < t_end:
            time.sleep(0.1)
        hwm = rss_kb(proc.pid)
        delivered = user.count()
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if not reap_all(time.monotonic() + 120, [proc]):
            raise BenchError('qmail-send did not stop within 120 s')
        q.procs = []
        t_stop = time.monotonic() - t1
        rows += [
            ('scale: qmail-start to qmail-send\'s first status line', '%.2f s' % t_status),
            ('scale: qmail-start to the first delivery in Maildir/new', '%.2f s' % t_first),
            ('scale: qmail-send RSS at the first status line', '%.1f MB' % (rss_status[0] / 1024)),
            ('scale: qmail-send RSS at the first delivery', '%.1f MB' % (rss_first[0] / 1024)),
            ('scale: qmail-send peak RSS after %d s more' % window,
             '%.1f MB (%d delivered by then)' % (hwm[1] / 1024, delivered)),
            ('scale: qmail-send stop (TERM) with deliveries under way', '%.2f s' % t_stop),
        ]
        say('scale: first status %.2f s, first delivery %.2f s, RSS %.1f/%.1f MB, peak %.1f MB'
            % (t_status, t_first, rss_status[0] / 1024, rss_first[0] / 1024, hwm[1] / 1024))
    finally:
        q.stop()
        q.cleanup()
        user.empty()
    return rows
