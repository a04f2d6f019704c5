"""make bench: measure this qmail on this machine, and Postfix beside it.

Runs as root, on loopback only; BENCH_QUICK=1 (or --quick) for a
shortened run while developing.  Installs scratch homes under /tmp and a
private Postfix under /var/tmp, measures, stops and removes everything
(even on failure), prints the tables and writes them to bench/results.txt
and, in markdown for the README, bench/results.md.  Sections:

  disk      the disk's own limit: create + write 2 KB + fsync + rename,
            serially and with 10 workers.
  inject    1,000 messages through bin/sendmail as an ordinary user,
            one process after another: messages/s, and the share of
            each injection that is interpreter start.
  local     5,000 messages of 2 KB queued, then qmail-start: local
            deliveries per second into one user's Maildir, and CPU
            milliseconds per delivery of all the MTA's processes.
  exactly-once  the cost of the exactly-once Maildir check.
  e2e       SMTP in, Maildir out, against Debian's Postfix: bench/e2e.py.
  remote    qmail-remote into Postfix's smtp-sink: bench/remotebench.py.
  scale     100,000 messages queued: bench/scale.py.

The bench process is a child subreaper, so every MTA process ends up
reaped by it and its CPU time counted (bench/procs.py).  Postfix comes
from bench/setup-postfix.sh, which make bench runs first.  Where the
time goes per message: bench/profile_mta.py, by hand.
"""

import argparse
import os
import pwd
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import e2e
import remotebench
import report
import scale
from procs import (BenchError, free_port, kill_all_children, reap_all,
                   set_subreaper, wait_for)
from systems import (LocalUser, PostfixSystem, QmailSystem, RUNTIME,
                     install_home, load_delivery_helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = 'qmtest'
MESSAGE = b'To: bench@example.org\nSubject: bench\n\n' + b'x' * 2000 + b'\n'


def ensure_user():
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(['useradd', '-M', '-U', '-s', '/usr/sbin/nologin', USER],
                       check=True)
        pw = pwd.getpwnam(USER)
    return pw.pw_uid, pw.pw_gid


def time_runs(argv, n, uid, gid, data=b''):
    """Per-run wall times in seconds of argv started n times."""
    times = []
    env = {'PATH': '/usr/bin:/bin', 'USER': USER}
    for _ in range(n):
        t0 = time.perf_counter()
        r = subprocess.run(argv, input=data, user=uid, group=gid, extra_groups=[],
                           env=env, stdout=subprocess.DEVNULL, timeout=60)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit('bench: %s exited %d' % (argv[0], r.returncode))
    return times


def bench_inject(n):
    uid, gid = ensure_user()
    home = install_home()
    try:
        sendmail = os.path.join(home, 'bin', 'sendmail')
        t0 = time.perf_counter()
        times = time_runs([sendmail, '-t'], n, uid, gid, MESSAGE)
        total = time.perf_counter() - t0
        start = time_runs([RUNTIME, '-I', '-S', '-c', 'pass'], 200, uid, gid)
        queued = len(os.listdir(os.path.join(home, 'queue', 'todo')))
        assert queued == n, 'queued %d of %d' % (queued, n)
    finally:
        shutil.rmtree(os.path.dirname(home), ignore_errors=True)
    per = statistics.median(times) * 1000
    interp = statistics.median(start) * 1000
    return [
        ('inject: sendmail -t, %d messages of 2 KB, serial' % n, '%.0f msg/s' % (n / total)),
        ('inject: median time per message', '%.1f ms' % per),
        ('inject: of which interpreter start (2 x %.1f ms)' % interp,
         '%.1f ms (%.0f%%)' % (2 * interp, 200 * interp / per)),
    ]


def bench_local(n, user):
    fast_queue = load_delivery_helpers().fast_queue
    home = install_home()
    try:
        user.empty()
        body = b'x' * 2000
        fast_queue(home, [([user.address.encode()],
                           b'Subject: bench %d\n\n%s\n' % (i, body)) for i in range(n)])
        reap_all(time.monotonic() + 5)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-start'), './Maildir/'],
                                stdout=subprocess.DEVNULL, env={'PATH': '/usr/bin:/bin'})
        try:
            wait_for(lambda: user.count() >= n, 1200, '%d local deliveries' % n, 0.05)
            elapsed = time.perf_counter() - t0
            delivered = user.count()
        finally:
            proc.send_signal(signal.SIGTERM)
            reap_all(time.monotonic() + 60, [proc])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        shutil.rmtree(os.path.dirname(home), ignore_errors=True)
        user.empty()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return [
        ('local: %d queued messages of 2 KB into one Maildir' % n,
         '%.0f deliveries/s' % (delivered / elapsed)),
        ('local: CPU of all MTA processes per delivery', '%.1f ms' % (cpu * 1000 / delivered)),
    ]


def bench_exactly_once():
    """What the exactly-once Maildir check costs per delivery: naming the
    file from the message, and looking for it in new/ and cur/."""
    from qmail import local_deliver as ld
    rows = []
    for files in (0, 1000, 10000):
        d = tempfile.mkdtemp(prefix='qmailbench.md.', dir='/var/tmp')
        for sub in ('new', 'cur', 'tmp'):
            os.mkdir(os.path.join(d, sub))
        for i in range(files):
            open(os.path.join(d, 'cur', '%d.M1P1Q%d.host:2,S' % (i, i)), 'w').close()
        dd = os.fsencode(d)
        n = 2000
        t0 = time.perf_counter()
        for i in range(n):
            name = ld.maildir_name((1000 + i, 10 ** 18 + i), b'Return-Path: <a@b>\n', 1, b'host')
            ld.already_delivered(dd, name)
        per = (time.perf_counter() - t0) / n * 1e6
        shutil.rmtree(d, ignore_errors=True)
        rows.append(('exactly-once Maildir check, %d messages in cur/' % files,
                     '%.0f us per delivery' % per))
    return rows


def children_of(ppid):
    out = []
    for p in os.listdir('/proc'):
        if not p.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % p) as f:
                if f.read().rsplit(')', 1)[1].split()[1] == str(ppid):
                    out.append(int(p))
        except OSError:
            continue
    return out


def pss_kb(pid):
    """Proportional set size of a process, kB (shared pages split)."""
    try:
        with open('/proc/%d/smaps_rollup' % pid) as f:
            for line in f:
                if line.startswith('Pss:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def bench_idle_memory(n=50):
    """Memory per idle SMTP connection under qmail-listen (PSS of each
    connection's qmail-smtpd, so the pages shared with the listener
    count in shares), and under tcpserver (a whole interpreter each)."""
    import socket as socketmod
    home = install_home()
    uid, gid = pwd.getpwnam('qmaild').pw_uid, pwd.getpwnam('qmaild').pw_gid
    rows = []
    try:
        for kind in ('qmail-listen', 'tcpserver'):
            s = socketmod.socket()
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
            s.close()
            smtpd = os.path.join(home, 'bin', 'qmail-smtpd')
            if kind == 'tcpserver':
                argv = ['tcpserver', '-H', '-R', '-l', 'x', '-c', str(n + 10),
                        '-u', str(uid), '-g', str(gid), '127.0.0.1', str(port), smtpd]
            else:
                argv = [os.path.join(home, 'bin', 'qmail-listen'), '-q', '-c', str(n + 10),
                        '-u', str(uid), '-g', str(gid), '127.0.0.1', str(port), smtpd]
            server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            conns = []
            try:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        socketmod.create_connection(('127.0.0.1', port), timeout=1).close()
                        break
                    except OSError:
                        time.sleep(0.05)
                for _ in range(n):
                    c = socketmod.create_connection(('127.0.0.1', port), timeout=30)
                    c.recv(1000)                 # the greeting: the session is up
                    conns.append(c)
                time.sleep(0.5)
                kids = [p for p in children_of(server.pid)]
                total = sum(pss_kb(k) for k in kids)
                rows.append(('SMTP: memory per idle connection, %s (PSS, %d connections)'
                             % (kind, len(kids)), '%.1f MB' % (total / max(1, len(kids)) / 1024)))
            finally:
                for c in conns:
                    c.close()
                server.terminate()
                server.wait(timeout=30)
    finally:
        shutil.rmtree(os.path.dirname(home), ignore_errors=True)
    return rows


def bench_disk(n, workers):
    d = tempfile.mkdtemp(prefix='qmailbench.disk.', dir='/var/tmp')
    data = b'x' * 2048

    def one(i, w):
        tmp = os.path.join(d, 'tmp.%d.%d' % (w, i))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, os.path.join(d, 'new.%d.%d' % (w, i)))

    t0 = time.perf_counter()
    if workers == 1:
        for i in range(n):
            one(i, 0)
    else:
        pids = []
        for w in range(workers):
            pid = os.fork()
            if pid == 0:
                try:
                    for i in range(n // workers):
                        one(i, w)
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
    total = time.perf_counter() - t0
    shutil.rmtree(d, ignore_errors=True)
    return [('disk: create+write 2 KB+fsync+rename, %d worker%s' %
             (workers, '' if workers == 1 else 's'), '%.0f files/s' % (n / total))]


def section(name, rows, failures, fn, *args):
    """Run one section; a failure is a row of its own, not the end."""
    t0 = time.monotonic()
    try:
        got = fn(*args)
    except Exception as e:          # the harness reports and goes on
        traceback.print_exc()
        failures.append(name)
        rows.append(('%s: FAILED' % name, str(e).splitlines()[0][:120] if str(e) else type(e).__name__))
        return None
    say('bench: %s took %.0f s' % (name, time.monotonic() - t0))
    return got


def say(text):
    print(text, file=sys.stderr, flush=True)


def remote_rows(got):
    rows = []
    for conc, count, res, note in got:
        what = 'remote: %d messages into smtp-sink, concurrencyremote %d' % (count, conc)
        if res is None:
            rows.append((what, note))
        else:
            rows.append((what, '%.0f msg/s, %.1f CPU s/1000 msgs' % (res['rate'], res['cpu'])))
    return rows


NOTES = """\
- e2e: qmail-py is an installed scratch home: qmail-start ./Maildir/ and
  qmail-listen -c 100 running qmail-smtpd as qmaild; Postfix %(pfver)s is a
  private instance (config and queue under /var/tmp, Maildir delivery,
  biff = no, no alias maps, otherwise Debian's defaults: in_flow_delay 1s,
  local_destination_concurrency_limit 2, default_process_limit 100).  Both
  listen on 127.0.0.1, deliver to the same local user, are started fresh
  for each run and alternate run by run.
- msg/s: smtp-source (-s sessions, -m, -l, -d for many messages per
  connection); from starting smtp-source to the ctime of the last file in
  Maildir/new.  Throughput and CPU are the medians of %(rounds)s runs per
  system, the systems alternating.
- p50/p95: a second run with bench/smtpload.py (same sessions and mode),
  each message stamped: the moment its file appeared in Maildir/new
  (inotify, in a watcher process of its own) minus the moment the client
  wrote the final "." of DATA.
- CPU s/1000: all the MTA's processes (the bench is a child subreaper, so
  all are reaped by it: RUSAGE_CHILDREN), less smtp-source's own and less
  the idle start+stop cost (%(idle)s);
  by kind: ru_utime and ru_stime, each less its part of the same.
- ratio: qmail-py / Postfix.
- At 10 and 50 sessions the clients offer mail faster than a system
  may deliver it: where its queue grows all through the run (Postfix's,
  whose local deliveries run two at a time), the latency there measures
  that growth and rises with the number of messages.  The open loop case
  offers %(rate)d msg/s, which both systems keep up with.
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--quick', action='store_true',
                        default=os.environ.get('BENCH_QUICK', '') not in ('', '0'))
    parser.add_argument('--only', default='',
                        help='comma-separated sections: disk,inject,local,exactly-once,e2e,remote,scale')
    parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results.txt'))
    parser.add_argument('--md', default=os.path.join(ROOT, 'bench', 'results.md'))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit('bench: run as root')
    quick = args.quick
    only = set(filter(None, args.only.split(',')))

    def want(name):
        return not only or name in only

    set_subreaper()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    t_start = time.monotonic()
    load_before = os.getloadavg()
    rows, failures = [], []
    e2e_got, idle = None, {}
    user = None
    systems = []
    try:
        if want('disk'):
            rows += section('disk', rows, failures, bench_disk, 1000, 1) or []
            rows += section('disk', rows, failures, bench_disk, 1000, 10) or []
        if want('inject'):
            rows += section('inject', rows, failures, bench_inject, 200 if quick else 1000) or []
        user = LocalUser()
        if want('local'):
            rows += section('local', rows, failures, bench_local, 1000 if quick else 5000, user) or []
        if want('exactly-once'):
            rows += section('exactly-once', rows, failures, bench_exactly_once) or []
        if want('idle'):
            rows += section('idle', rows, failures, bench_idle_memory, 50) or []
        if want('e2e'):
            systems.append(QmailSystem(free_port()))
            try:
                systems.append(PostfixSystem(free_port()))
            except BenchError as e:
                say('bench: Postfix columns left empty: %s' % e)
            got = section('e2e', rows, failures, e2e.run, systems, user, quick, say)
            if got:
                e2e_got, idle = got
        if want('remote'):
            got = section('remote', rows, failures, remotebench.run, quick, say)
            rows += remote_rows(got or [])
        if want('scale'):
            rows += section('scale', rows, failures, scale.run,
                            10000 if quick else 100000, user, quick, say) or []
    finally:
        for s in systems:
            try:
                s.stop()
            except Exception as e:
                say('bench: stopping %s: %s' % (s.name, e))
            s.cleanup()
        if user is not None:
            user.remove()
        kill_all_children()
        reap_all(time.monotonic() + 10)
    write_results(args, quick, rows, e2e_got, idle, load_before, time.monotonic() - t_start)
    return 1 if failures else 0


def write_results(args, quick, rows, e2e_got, idle, load_before, took):
    names = ('qmail-py', 'Postfix')
    head = 'qmail-py benchmark%s, %s, %d cores, load average %.1f before, %.1f after, %.0f s' % (
        ' (BENCH_QUICK)' if quick else '', time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        os.cpu_count(), load_before[0], os.getloadavg()[0], took)
    text = [head, '']
    md = ['Measured %s' % head.split(', ', 1)[1], '']
    if e2e_got:
        text += ['End to end: SMTP on 127.0.0.1 into Maildir/new, qmail-py against Postfix', '']
        for title, header, erows in report.e2e_tables(e2e_got, names):
            text += [title, '', report.text_table(header, erows), '']
            md += ['**%s**' % title, '', report.md_table(header, erows), '']
        notes = NOTES % {
            'pfver': postfix_version(), 'rate': e2e.OPEN_RATE,
            'rounds': 1 if quick else e2e.ROUNDS,
            'idle': ', '.join('%s %.2f s' % (k, v) for k, v in idle.items())}
        text += [notes]
        md += [notes]
    if rows:
        header, prow = report.pair_rows(rows)
        text += [report.text_table(header, prow), '']
        md += [report.md_table(header, prow), '']
    out = '\n'.join(text).rstrip() + '\n'
    print(out, end='')
    with open(args.out, 'w') as f:
        f.write(out)
    with open(args.md, 'w') as f:
        f.write('\n'.join(md).rstrip() + '\n')


def postfix_version():
    try:
        r = subprocess.run(['postconf', '-dh', 'mail_version'], capture_output=True,
                           text=True, timeout=30)
        return r.stdout.strip() or '?'
    except (OSError, subprocess.SubprocessError):
        return '?'


if __name__ == '__main__':
    sys.exit(main())
