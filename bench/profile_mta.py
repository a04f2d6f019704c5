"""Where the time goes per message on the end-to-end path (not part of
make bench; run by hand as root:
    .venv/bin/python bench/profile_mta.py [-n 1000] [--rusage-only | --cpu]
--rusage-only runs no profiler and gives each process role's CPU time
alone; --cpu profiles CPU time rather than wall time).

Starts an installed scratch home's qmail-start ./Maildir/ and qmail-listen
(qmail-smtpd as qmaild) under bench/profwrap.py, which profiles every
process and every forked child with cProfile and records each one's own
CPU time; sends N messages of 2 KB (-l: another size) with smtp-source
(10 sessions, one message per connection; --many: many), waits for them in Maildir/new, stops, and
prints per process role: processes, CPU ms per message (from rusage:
Python, kernel and fork costs included; cProfile's own overhead too, so
compare shares rather than absolutes), and the functions with the most
own time.  Then, without the profiler, the SMTP session's phases as the
client sees them (bench/smtpload.py timing each reply).
"""

import argparse
import collections
import glob
import io
import json
import os
import pstats
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import smtpload
from procs import BenchError, free_port, reap_all, set_subreaper, wait4, wait_for
from systems import RUNTIME, SMTPD_LIMIT, LocalUser, QmailSystem

HERE = os.path.dirname(os.path.abspath(__file__))


def short(title: str) -> str:
    word = title.split(' ', 1)[0] if title else '?'
    if 'profwrap' in title:
        return 'qmail-start'
    return os.path.basename(word)


def role(rec) -> str:
    chain = [short(t) for t in rec['lineage']] + [short(rec['title'])]
    names = {
        ('qmail-send',): 'qmail-send',
        ('qmail-listen',): 'qmail-listen (parent)',
        ('qmail-listen', 'qmail-listen'): 'qmail-smtpd (qmail-listen workers)',
        ('qmail-start', 'qmail-lspawn'): 'qmail-lspawn (parent)',
        ('qmail-start', 'qmail-lspawn', 'qmail-local'): 'qmail-local (qmail-lspawn workers)',
        ('qmail-start', 'qmail-lspawn', 'qmail-getpw'): 'qmail-getpw (qmail-lspawn helper)',
        ('qmail-start', 'qmail-queued'): 'qmail-queued (parent)',
        ('qmail-start', 'qmail-queued', 'qmail-queued'): 'qmail-queue writer (qmail-queued workers)',
        ('qmail-start', 'qmail-clean'): 'qmail-clean',
        ('qmail-start', 'qmail-rspawn'): 'qmail-rspawn',
        ('qmail-start', 'qmail-rspawn', 'qmail-remote'): 'qmail-remote (qmail-rspawn workers)',
    }
    return names.get(tuple(chain), ' > '.join(chain))


def start_profiled(q: QmailSystem, outdir: str):
    """QmailSystem.start, with both programs under profwrap."""
    wrap = [RUNTIME, '-I', os.path.join(HERE, 'profwrap.py'), outdir, q.home]
    env = dict(q.env, PROFWRAP_TIMER=os.environ.get('PROFWRAP_TIMER', ''))
    sendlog = os.path.join(q.top, 'send.log')
    listenlog = os.path.join(q.top, 'listen.log')
    with open(sendlog, 'wb') as out:
        q.procs.append(subprocess.Popen(wrap + ['start', './Maildir/'], stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True))
    pw = pwd.getpwnam('qmaild')
    with open(listenlog, 'wb') as out:
        q.procs.append(subprocess.Popen(
            wrap + ['listen', '-v', '-c', str(SMTPD_LIMIT), '-b', str(SMTPD_LIMIT),
                    '-x', os.path.join(q.home, 'control', 'tcp.smtp.cdb'), '-X',
                    '-u', str(pw.pw_uid), '-g', str(pw.pw_gid), '127.0.0.1', str(q.port),
                    os.path.join(q.home, 'bin', 'qmail-smtpd')],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out, env=env,
            start_new_session=True))
    from procs import file_has
    wait_for(lambda: file_has(sendlog, b'status: local 0/'), 60, 'qmail-send start')
    wait_for(lambda: file_has(listenlog, b'status: 0/'), 60, 'qmail-listen start')


def drive(q, user, n, sessions, many=False, size=2048):
    argv = ['smtp-source'] + (['-d'] if many else []) + [
            '-s', str(sessions), '-m', str(n), '-l', str(size),
            '-f', 'bench@client.example.com', '-t', user.address, '-M', 'client.example.com',
            '127.0.0.1:%d' % q.port]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    code, _ = wait4(proc, 600)
    if code:
        raise BenchError('smtp-source exited %d' % code)
    wait_for(lambda: user.count() >= n, 600, '%d deliveries' % n, 0.05)
    return time.monotonic() - t0


def analyse(outdir, n, top, sort):
    groups = collections.defaultdict(list)
    for path in glob.glob(os.path.join(outdir, '*.json')):
        with open(path) as f:
            rec = json.load(f)
        groups[role(rec)].append(rec)
    total = sum(r['utime'] + r['stime'] for recs in groups.values() for r in recs)
    lines = ['%d messages; all processes %.1f ms CPU per message (%s)'
             % (n, total * 1000 / n, {'none': 'no profiler', 'cpu': 'under cProfile, CPU timer'}
                .get(os.environ.get('PROFWRAP_TIMER'), 'under cProfile, wall timer')), '']
    order = sorted(groups.items(), key=lambda kv: -sum(r['utime'] + r['stime'] for r in kv[1]))
    lines.append('%-52s %6s %10s %10s %6s %8s %7s %6s' % ('role', 'procs', 'user ms/msg', 'sys ms/msg', 'share',
                                                    'oublk/m', 'flt/m', 'csw/m'))
    for name, recs in order:
        u = sum(r['utime'] for r in recs)
        s = sum(r['stime'] for r in recs)
        lines.append('%-52s %6d %10.2f %10.2f %5.0f%% %8.1f %7.1f %6.1f' % (
            name, len(recs), u * 1000 / n, s * 1000 / n, 100 * (u + s) / total,
            sum(r.get('oublock', 0) for r in recs) / n, sum(r.get('minflt', 0) for r in recs) / n,
            sum(r.get('nvcsw', 0) for r in recs) / n))
    for name, recs in order:
        files = [os.path.join(outdir, '%d.prof' % r['pid']) for r in recs]
        files = [f for f in files if os.path.exists(f) and os.path.getsize(f)]
        if not files:
            continue
        buf = io.StringIO()
        st = pstats.Stats(files[0], stream=buf)
        for f in files[1:]:
            try:
                st.add(f)
            except (TypeError, EOFError, ValueError):
                pass
        st.sort_stats(sort).print_stats(top)
        body = buf.getvalue()
        keep = body[body.find('   ncalls'):] if '   ncalls' in body else body
        lines += ['', '== %s: %d processes, per function (%s), per %d messages'
                  % (name, len(recs), sort, n), keep.rstrip()]
    return '\n'.join(lines)


def phases(q, user, n):
    """Client-side time of each SMTP step, median ms, without profiler."""
    times = collections.defaultdict(list)
    orig = smtpload.reply

    async def timed(reader, want):
        t = time.perf_counter()
        await orig(reader, want)
        times[want].append(time.perf_counter() - t)
    smtpload.reply = timed
    try:
        load = smtpload.Load('127.0.0.1', q.port, n, 1, False, 2048,
                             'bench@client.example.com', user.address)
        load.run(600)
    finally:
        smtpload.reply = orig
    wait_for(lambda: user.count() >= n, 600, '%d deliveries' % n, 0.05)
    names = {b'220': 'connect -> 220 greeting', b'250': 'EHLO/MAIL/RCPT/"." -> 250 (all)',
             b'354': 'DATA -> 354', b'221': 'QUIT -> 221'}
    out = ['SMTP phases, 1 session, 1 message per connection, %d messages (median / p95 ms):' % n]
    for k, v in times.items():
        v.sort()
        out.append('  %-34s %6.2f / %6.2f' % (names.get(k, k), v[len(v) // 2] * 1000,
                                            v[int(len(v) * 0.95)] * 1000))
    dot = sorted(load.accepted[i] - load.sent[i] for i in load.sent)
    out.append('  %-34s %6.2f / %6.2f' % ('"." -> 250 (the queueing)', dot[len(dot) // 2] * 1000,
                                          dot[int(len(dot) * 0.95)] * 1000))
    return '\n'.join(out)


def stamper(fd: int):
    """Fork a process stamping each line read from fd with time.time();
    returns a function that waits for end of file and gives [(t, line)]."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            out, buf = [], b''
            while True:
                chunk = os.read(fd, 65536)
                now = time.time()
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b'\n')
                out += [b'%.6f %s\n' % (now, line) for line in lines]
            data = memoryview(b''.join(out))
            while data:
                data = data[os.write(w, data):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(fd)

    def collect(timeout=120):
        chunks = []
        deadline = time.monotonic() + timeout
        import select
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], 1)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        os.close(r)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        out = []
        for line in b''.join(chunks).splitlines():
            t, _, text = line.partition(b' ')
            out.append((float(t), text))
        return out
    return collect


def timeline(q, user, n, rate, many=False):
    """Per-message wall time of each step at a load far below capacity:
    the client's stamps, qmail-send's log lines stamped as they arrive
    (a stamping process on its stdout, as multilog would), and inotify."""
    import re
    from watch import Watcher
    pr, pw_ = os.pipe()
    q.procs.append(subprocess.Popen([os.path.join(q.home, 'bin', 'qmail-start'), './Maildir/'],
                                    stdin=subprocess.DEVNULL, stdout=pw_, stderr=subprocess.STDOUT,
                                    env=q.env, start_new_session=True))
    os.close(pw_)
    collect = stamper(pr)
    pw = pwd.getpwnam('qmaild')
    q.procs.append(subprocess.Popen(
        [os.path.join(q.home, 'bin', 'qmail-listen'), '-q', '-c', str(SMTPD_LIMIT),
         '-u', str(pw.pw_uid), '-g', str(pw.pw_gid), '127.0.0.1', str(q.port),
         os.path.join(q.home, 'bin', 'qmail-smtpd')],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=q.env, start_new_session=True))
    time.sleep(1)
    watcher = Watcher(user.new)
    try:
        load = smtpload.Load('127.0.0.1', q.port, n, 1, many, 2048,
                             'bench@client.example.com', user.address,
                             rate=None if many else rate)
        load.run(600)
        wait_for(lambda: user.count() >= n, 300, '%d deliveries' % n, 0.05)
        time.sleep(0.5)
    finally:
        appeared = watcher.stop()
        for p in q.procs:
            p.terminate()
        # Read the stamps before reaping: the stamper cannot end while
        # its output fills the pipe to us.
        log = collect()
        q.stop()
    # A messid is an inode number, used again once its message is gone:
    # follow the log in order, one record per "new msg".  The records are
    # matched to the client's messages by order (an open loop well below
    # capacity takes them one at a time), not by qp: a qmail-queued
    # writer's pid serves many messages.
    cur, records, by_delivery = {}, [], {}
    for t, text in log:
        m = re.match(rb'new msg (\d+)$', text)
        if m:
            cur[int(m.group(1))] = {'new': t}
            records.append(cur[int(m.group(1))])
            continue
        m = re.match(rb'starting delivery (\d+): msg (\d+) ', text)
        if m and int(m.group(2)) in cur:
            cur[int(m.group(2))]['start'] = t
            by_delivery[int(m.group(1))] = cur[int(m.group(2))]
            continue
        m = re.match(rb'delivery (\d+): success', text)
        if m and int(m.group(1)) in by_delivery:
            by_delivery.pop(int(m.group(1)))['success'] = t
            continue
        m = re.match(rb'end msg (\d+)$', text)
        if m and int(m.group(1)) in cur:
            cur.pop(int(m.group(1)))['end'] = t
    steps = collections.defaultdict(list)
    by_num = dict(zip(sorted(load.accepted, key=load.accepted.get), records))
    for name in os.listdir(user.new):
        with open(os.path.join(user.new, name), 'rb') as f:
            head = f.read(4096)
        bid = re.search(rb'X-Bench-Id: (\d+)', head)
        if not bid or name not in appeared:
            continue
        num = int(bid.group(1))
        e = by_num.get(num, {})
        if not all(k in e for k in ('new', 'start', 'success', 'end')):
            continue
        chain = [('"." written -> 250 received (qmail-queue writer)', load.sent[num], load.accepted[num]),
                 ('250 -> qmail-send logs "new msg" (trigger, todo scan)', load.accepted[num], e['new']),
                 ('"new msg" -> "starting delivery" (preprocess, qmail-clean)', e['new'], e['start']),
                 ('"starting delivery" -> file in new/ (lspawn, getpw, local)', e['start'], appeared[name]),
                 ('file in new/ -> "success" logged (fsync new/, report)', appeared[name], e['success']),
                 ('"success" -> "end msg" (done mark, cleanup)', e['success'], e['end']),
                 ('"." written -> file in new/ (the latency)', load.sent[num], appeared[name])]
        for label, t0, t1 in chain:
            steps[label].append(t1 - t0)
    out = ['Timeline, %s, %d messages (%d traced); wall ms per message, median / p95:'
           % ('1 session, many messages per connection' if many else
              'open loop %d msg/s, 1 message per connection' % rate,
              n, len(steps.get(chain[0][0], [])))]
    for label, values in steps.items():
        values.sort()
        out.append('  %-62s %6.2f / %6.2f' % (label, values[len(values) // 2] * 1000,
                                             values[int(len(values) * 0.95)] * 1000))
    return '\n'.join(out)


def main():
    # Killed (timeout, ^C in a pipeline): the finally clauses still stop
    # the MTA, which would go on running under init.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    parser = argparse.ArgumentParser()
    parser.add_argument('-n', type=int, default=1000)
    parser.add_argument('-s', '--sessions', type=int, default=10)
    parser.add_argument('--top', type=int, default=18)
    parser.add_argument('--out', help='also write the report to this file')
    parser.add_argument('--cpu', action='store_true',
                        help='profile CPU time (time.process_time) instead of wall time')
    parser.add_argument('--sort', default='tottime')
    parser.add_argument('--timeline', type=int, metavar='RATE', default=0,
                        help='only the per-step wall times at RATE msg/s offered (with '
                        '--many: one session, closed loop, RATE unused)')
    parser.add_argument('--many', action='store_true',
                        help='many messages per connection (smtp-source -d)')
    parser.add_argument('-l', '--size', type=int, default=2048,
                        help='message size in bytes (smtp-source -l)')
    parser.add_argument('--rusage-only', action='store_true',
                        help='no profiler: only each process role\'s CPU time')
    args = parser.parse_args()
    if args.cpu:
        os.environ['PROFWRAP_TIMER'] = 'cpu'
    if args.rusage_only:
        os.environ['PROFWRAP_TIMER'] = 'none'
    set_subreaper()
    user = LocalUser()
    q = QmailSystem(free_port())
    outdir = tempfile.mkdtemp(prefix='qmailbench.prof.', dir='/var/tmp')
    os.chmod(outdir, 0o1777)
    try:
        if args.timeline:
            text = timeline(q, user, args.n, args.timeline, args.many)
            print(text)
            return 0
        start_profiled(q, outdir)
        try:
            took = drive(q, user, args.n, args.sessions, args.many, args.size)
        finally:
            q.stop()
        reap_all(time.monotonic() + 10)
        text = '%.1f s for %d messages of %d bytes, %d sessions, %s\n\n' % (
            took, args.n, args.size, args.sessions,
            'many messages per connection' if args.many else '1 message per connection')
        text += analyse(outdir, args.n, args.top, args.sort)
        user.empty()
        q.start()
        try:
            text += '\n\n' + phases(q, user, min(args.n, 500))
        finally:
            q.stop()
        print(text)
        if args.out:
            with open(args.out, 'w') as f:
                f.write(text + '\n')
    finally:
        q.stop()
        q.cleanup()
        user.remove()
        shutil.rmtree(outdir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
