"""make bench: measure this qmail on this machine.

Runs as root.  Installs a scratch home under /tmp, measures, prints a
table and writes it to bench/results.txt.  Sections so far:

  inject    1,000 messages through bin/sendmail as an ordinary user,
            one process after another: messages/s, and the share of
            each injection that is interpreter start (two starts: the
            sendmail process and qmail-queue behind its launcher).
  local     5,000 messages of 2 KB queued, then qmail-start: local
            deliveries per second into one user's Maildir, and CPU
            milliseconds per delivery of all the MTA's processes.
  disk      the disk's own limit: create + write 2 KB + fsync + rename.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME = '/usr/local/lib/qmail/venv/bin/python3'
USER = 'qmtest'
MESSAGE = b'To: bench@example.org\nSubject: bench\n\n' + b'x' * 2000 + b'\n'


def install_home():
    top = tempfile.mkdtemp(prefix='qmailbench.', dir='/tmp')
    os.chmod(top, 0o755)
    home = os.path.join(top, 'qmail')
    subprocess.run([sys.executable, '-m', 'qmail.install', '--home', home,
                    '--python', RUNTIME, '--fqdn', 'bench.example.org'],
                   check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return home


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
                           env=env, stdout=subprocess.DEVNULL)
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


def set_subreaper():
    """Orphaned MTA processes come back to us, so their CPU time counts."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_all(deadline):
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)


def bench_local(n):
    sys.path[:0] = [os.path.join(ROOT, 'tests'), os.path.join(ROOT, 'tests', 'integration')]
    from delivery import ensure_user, fast_queue, maildirmake
    set_subreaper()
    home = install_home()
    try:
        name, uid, gid, h = ensure_user('qmbench')
        maildirmake(os.path.join(h, 'Maildir'), uid, gid)
        body = b'x' * 2000
        fast_queue(home, [([b'qmbench@bench.example.org'],
                           b'Subject: bench %d\n\n%s\n' % (i, body)) for i in range(n)])
        reap_all(time.monotonic() + 5)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        new = os.path.join(h, 'Maildir', 'new')
        t0 = time.perf_counter()
        proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-start'), './Maildir/'],
                                stdout=subprocess.DEVNULL, env={'PATH': '/usr/bin:/bin'})
        while len(os.listdir(new)) < n and time.perf_counter() - t0 < 1200:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        delivered = len(os.listdir(new))
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        reap_all(time.monotonic() + 30)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        shutil.rmtree(os.path.dirname(home), ignore_errors=True)
        shutil.rmtree(h, ignore_errors=True)
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--messages', type=int, default=1000)
    parser.add_argument('--local', type=int, default=5000)
    parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results.txt'))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit('bench: run as root')
    rows = []
    rows += bench_disk(1000, 1)
    rows += bench_disk(1000, 10)
    rows += bench_inject(args.messages)
    rows += bench_local(args.local)
    rows += bench_exactly_once()
    width = max(len(r[0]) for r in rows)
    lines = ['%-*s  %s' % (width, a, b) for a, b in rows]
    text = 'qmail-py benchmark, %s, %d cores\n\n%s\n' % (
        time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), os.cpu_count(),
        '\n'.join(lines))
    print(text, end='')
    with open(args.out, 'w') as f:
        f.write(text)


if __name__ == '__main__':
    main()
