"""End to end: SMTP in on 127.0.0.1, delivered into a local user's
Maildir, this project against Debian's Postfix.

For each case (message size, parallel sessions, one message per
connection or all of a session's over one connection), each system is
started fresh, driven, stopped; the two systems alternate run by run
(and which goes first alternates case by case and round by round), so
slow drifts of the machine fall on both.  Two kinds of run per system
and case, the throughput run ROUNDS times (the median of each figure is
reported: one run's ratio moved by a third on the development VM), the
latency run once (2000 stamped messages are their own median):

  throughput  Postfix's smtp-source (-s sessions, -m count, -l size,
              -d for many messages per connection).  messages/s = count
              / (ctime of the last file in Maildir/new - the moment
              smtp-source was started); CPU = RUSAGE_CHILDREN of the bench
              (a child subreaper) across start .. stop, less smtp-source's
              own (wait4) and less the system's idle start+stop cost; also
              split into user and kernel time.
  latency     bench/smtpload.py, the same sessions and mode, each message
              stamped: latency = the moment its file appeared in
              Maildir/new (inotify, bench/watch.py: qmail's link, Postfix's
              rename) - the moment the client wrote its final ".".

One more case has a latency run only: an open loop (a connection with
one message every 1/50 s), a load both systems keep up with.
"""

import os
import subprocess
import time

import smtpload
from procs import BenchError, children_times, reap_all, wait4_times, wait_for
from watch import Watcher

ROUNDS = 3              # throughput runs per system and case (BENCH_QUICK: 1)
SENDER = 'bench@client.example.com'
OPEN_RATE = 50          # msg/s offered in the open-loop case
HELO = 'client.example.com'


class Case:
    def __init__(self, size, sessions, reuse, count, rate=None):
        self.size, self.sessions, self.reuse, self.count = size, sessions, reuse, count
        self.rate = rate

    def label(self):
        if self.rate:
            return '%d KB, open loop, %d msg/s offered, 1 msg/conn' % (
                self.size // 1024, self.rate)
        return '%s, %d session%s, %s' % (
            '%d KB' % (self.size // 1024), self.sessions,
            '' if self.sessions == 1 else 's',
            'many msgs/conn' if self.reuse else '1 msg/conn')

    def timeout(self):
        return 120 + self.count * 0.3 * max(1, self.size // 20000)


def cases(quick: bool):
    n = 300 if quick else 2000
    big = 100 if quick else 500
    out = []
    for sessions in (1, 10, 50):
        for reuse in (False, True):
            out.append(Case(2048, sessions, reuse, n))
    out.append(Case(100 * 1024, 10, False, big))
    # Latency at a load both systems keep up with (closed loops of 10 and
    # more sessions outrun qmail-py's deliveries, and their latency then
    # measures the queue's growth over the run).
    out.append(Case(2048, 0, False, 200 if quick else 1000, rate=OPEN_RATE))
    return out


def new_ctimes(newdir):
    out = []
    for name in os.listdir(newdir):
        out.append(os.stat(os.path.join(newdir, name)).st_ctime_ns / 1e9)
    return out


def wait_delivered(user, count, timeout, system):
    try:
        wait_for(lambda: user.count() >= count, timeout,
                 '%d deliveries into %s' % (count, user.new), interval=0.05)
    except BenchError as e:
        raise BenchError('%s: %s (%d there)\n%s' % (system.name, e, user.count(),
                                                     system.log_tail()))
    time.sleep(0.2)             # a duplicate would show now
    if user.count() != count:
        raise BenchError('%s: %d files in %s for %d messages'
                         % (system.name, user.count(), user.new, count))


def idle_cost(system) -> tuple:
    """(user, kernel) CPU seconds of starting and stopping the system
    with no mail: the try of three that cost least."""
    costs = []
    for _ in range(3):
        reap_all(time.monotonic() + 5)
        u0, k0 = children_times()
        system.start()
        system.stop()
        u1, k1 = children_times()
        costs.append((u1 - u0, k1 - k0))
    return min(costs, key=sum)


def throughput_run(system, user, case, baseline):
    user.empty()
    reap_all(time.monotonic() + 5)
    u0, k0 = children_times()
    system.start()
    try:
        argv = ['smtp-source', '-s', str(case.sessions), '-m', str(case.count),
                '-l', str(case.size), '-f', SENDER, '-t', user.address, '-M', HELO]
        if case.reuse:
            argv.append('-d')
        argv.append('127.0.0.1:%d' % system.port)
        t0 = time.time()
        with open(os.devnull, 'wb') as null:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=null,
                                    stderr=subprocess.PIPE)
        code, (client_user, client_kernel) = wait4_times(proc, case.timeout())
        err = proc.stderr.read().decode('utf-8', 'replace')
        proc.stderr.close()
        if code != 0:
            raise BenchError('%s: smtp-source exited %d: %s\n%s'
                             % (system.name, code, err[-1000:], system.log_tail()))
        wait_delivered(user, case.count, case.timeout(), system)
        last = max(new_ctimes(user.new))
    finally:
        system.stop()
    u1, k1 = children_times()
    user_s = u1 - u0 - client_user - baseline[0]
    kernel_s = k1 - k0 - client_kernel - baseline[1]
    per = 1000 / case.count
    return {'rate': case.count / (last - t0), 'cpu': (user_s + kernel_s) * per,
            'user': user_s * per, 'kernel': kernel_s * per,
            'client_cpu': client_user + client_kernel}


def latency_run(system, user, case):
    user.empty()
    reap_all(time.monotonic() + 5)
    system.start()
    watcher = None
    try:
        watcher = Watcher(user.new)
        load = smtpload.Load('127.0.0.1', system.port, case.count, case.sessions,
                             case.reuse, case.size, SENDER, user.address, HELO,
                             rate=case.rate)
        try:
            t0, _ = load.run(case.timeout())
        except (OSError, smtpload.SmtpError, TimeoutError) as e:
            raise BenchError('%s: load client: %r\n%s' % (system.name, e, system.log_tail()))
        wait_delivered(user, case.count, case.timeout(), system)
        arrived = smtpload.delivered(user.new, watcher.stop())
    finally:
        if watcher is not None:
            watcher.stop()
        system.stop()
    lat = smtpload.latencies(load.sent, arrived)
    if len(lat) != case.count:
        raise BenchError('%s: %d of %d messages matched' % (system.name, len(lat), case.count))
    return {'p50': smtpload.percentile(lat, 50), 'p95': smtpload.percentile(lat, 95),
            'rate_lat': case.count / (max(arrived.values()) - t0)}


def medians(runs):
    """{figure: its median over runs} (each run a dict of figures)."""
    out = {}
    for key in runs[0]:
        values = sorted(r[key] for r in runs)
        n = len(values)
        out[key] = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return out


def run(systems, user, quick, say):
    """{case label: {system name: results}} and the idle costs (CPU
    seconds)."""
    baselines = {}
    for s in systems:
        baselines[s.name] = idle_cost(s)
        say('e2e: %s idle start+stop costs %.2f s CPU' % (s.name, sum(baselines[s.name])))
    results = {}
    for i, case in enumerate(cases(quick)):
        order = systems if i % 2 == 0 else systems[::-1]
        got = {s.name: {} for s in systems}
        results[case.label()] = (case, got)
        runs = {s.name: [] for s in systems}
        for r in range(0 if case.rate else 1 if quick else ROUNDS):
            for s in order if r % 2 == 0 else order[::-1]:
                try:
                    one = throughput_run(s, user, case, baselines[s.name])
                except BenchError as e:
                    say('e2e: %s %s: FAILED: %s' % (s.name, case.label(), e))
                    continue
                runs[s.name].append(one)
                say('e2e: %s %s: %.0f msg/s, %.2f CPU s/1000'
                    % (s.name, case.label(), one['rate'], one['cpu']))
        for name, got_runs in runs.items():
            if got_runs:
                got[name].update(medians(got_runs))
        for s in order:
            try:
                got[s.name].update(latency_run(s, user, case))
            except BenchError as e:
                say('e2e: %s %s: FAILED: %s' % (s.name, case.label(), e))
                continue
            say('e2e: %s %s: latency p50 %.0f ms p95 %.0f ms'
                % (s.name, case.label(), got[s.name]['p50'] * 1000, got[s.name]['p95'] * 1000))
    return results, {name: sum(cost) for name, cost in baselines.items()}
