"""Remote delivery: qmail-send and qmail-rspawn/qmail-remote sending to
Postfix's smtp-sink on 127.0.0.1, routed there by control/smtproutes
("sink.bench.test:127.0.0.1:PORT"), at concurrencyremote 20 and 100.

The messages are queued first (bench/fill.py, qmail-queue's own writer),
then qmail-start is started: messages/s = count / (time from starting
qmail-start to the last "success" line in qmail-send's log, seen by
polling every 50 ms), so todo/ preprocessing is included.  CPU as in
bench/e2e.py (smtp-sink's own time taken out with wait4).
"""

import os
import signal
import subprocess
import time

import fill
from procs import BenchError, children_cpu, free_port, reap_all, wait4, wait_for
from systems import QmailSystem

DOMAIN = 'sink.bench.test'
PROBE_TIMEOUT = 60      # for the first report: success or deferral


def log_counts(path):
    with open(path, 'rb') as f:
        data = f.read()
    return data.count(b': success: '), data.count(b': deferral: '), data.count(b': failure: ')


def sink(port):
    return subprocess.Popen(['smtp-sink', '-4', '-u', 'nobody', '127.0.0.1:%d' % port, '512'],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def one_run(count, concurrency, workers):
    port = free_port()
    q = QmailSystem(None)
    proc = None
    try:
        ctl = os.path.join(q.home, 'control')
        with open(os.path.join(ctl, 'smtproutes'), 'w') as f:
            f.write('%s:127.0.0.1:%d\n' % (DOMAIN, port))
        with open(os.path.join(ctl, 'concurrencyremote'), 'w') as f:
            f.write('%d\n' % concurrency)
        fill.fill(q.home, count, [b'bench@' + DOMAIN.encode()], workers=workers)
        reap_all(time.monotonic() + 5)
        proc = sink(port)
        wait_for(lambda: port_open(port), 30, 'smtp-sink listening')
        c0 = children_cpu()
        t0 = time.monotonic()
        q.start()
        log = os.path.join(q.top, 'send.log')
        ok, deferred, failed = wait_for(
            lambda: (lambda c: c if (c[0] or c[1] or c[2]) else None)(log_counts(log)),
            PROBE_TIMEOUT, 'a first remote delivery report', interval=0.05)
        if not ok:
            return None, 'not available yet (%s)' % first_report(log)
        wait_for(lambda: log_counts(log)[0] >= count, 120 + count * 0.2,
                 '%d remote deliveries' % count, interval=0.05)
        elapsed = time.monotonic() - t0
        proc.send_signal(signal.SIGTERM)
        _, sink_cpu = wait4(proc, 30)
        q.stop()
        cpu = children_cpu() - c0 - sink_cpu
        return {'rate': count / elapsed, 'cpu': cpu * 1000 / count}, None
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            wait4(proc, 30)
        q.stop()
        q.cleanup()


def first_report(log):
    with open(log, 'rb') as f:
        for line in f:
            if b': deferral: ' in line or b': failure: ' in line:
                return line.decode('utf-8', 'replace').split(': ', 2)[-1].strip()[:100]
    return 'no report'


def port_open(port):
    import socket
    s = socket.socket()
    try:
        s.connect(('127.0.0.1', port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def run(quick, say):
    """[(concurrency, result or None, note)]"""
    count = 300 if quick else 2000
    out = []
    for conc in (20, 100):
        try:
            res, note = one_run(count, conc, workers=4)
        except BenchError as e:
            res, note = None, 'failed: %s' % str(e).splitlines()[0]
        say('remote: concurrencyremote %d: %s' % (
            conc, note or '%.0f msg/s, %.1f CPU s/1000' % (res['rate'], res['cpu'])))
        out.append((conc, count, res, note))
    return out
