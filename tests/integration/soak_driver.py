"""Crash soak: the whole MTA under daemontools, mail pouring in over SMTP
to a Maildir and to Postfix's smtp-sink, while every kind of qmail
process is killed with SIGKILL in turn; then every acknowledged message
is looked for.

Runs as:  root: it installs a scratch home under /tmp, a user (qmsoak),
          and runs svscan and smtp-sink.
Usage:    soak_driver.py [--messages N] [--kills K] [--sessions S]
          [--seed X] [--keep] [--quiet]
          (`make soak`: 10,000 messages, 200 kills; the short run is
          tests/integration/test_soak_real.py, inside `make test`.)
Needs:    daemontools (svscan, supervise, multilog), Postfix's smtp-sink
          (bench/setup-postfix.sh installs Postfix without letting it
          take over the machine).
Does:     installs a home whose qmail-smtpd listens on a free port, with
          control/smtproutes sending all remote mail to smtp-sink on
          127.0.0.2 (which keeps every received message in a file, -d);
          starts `qmail-svscan start`, so supervise restarts what dies;
          S concurrent SMTP sessions send messages, each with its number
          in the Subject, the envelope and the recipient address, to a
          local address (qmsoak-N, a Maildir), a remote one (r-N at the
          sink) or both; the ledger keeps every message that got 250
          after DATA (a refused or cut message is sent again under a new
          number, as a client would).  Meanwhile a killer thread, at K
          random points of the load, SIGKILLs one process of the next
          kind in KINDS, found by its process title and its parent's in
          the daemontools session, and after killing a daemon waits for
          supervise and qmail-start to bring the MTA back.  Then it waits
          (bounded, hurrying retries with SIGALRM) for an empty queue and
          no delivery left running, stops everything, and reads the
          Maildir, the sink's files and qmail-send's log.
Checks:   (the promises; each broken one is a line of the report)
          - every acknowledged message delivered, whole, to each of its
            recipients: none lost;
          - Maildir deliveries exactly once: no local duplicate;
          - remote deliveries at least once: each duplicate explained by
            a crash window, an attempt of that delivery during which its
            qmail-remote, qmail-rspawn or qmail-send was killed (or a kill
            of qmail-send just after its success was logged, before the
            done mark, or of qmail-clean before the new message's todo/
            was removed: deliveries start before that);
          - no bounce; no qmail-send alert but those a kill explains;
            no warning from qmail-listen or qmail-smtpd; nothing left to
            deliver at the end (todo/ and info/ empty), qmail-fsck clean;
            every killed daemon brought back by supervise.
          Not a failure: mess/ files an interrupted injection or a lost
          qmail-clean request left behind (qmail-send removes them after
          36 hours, as qmail does; qmail-qstat counts them meanwhile),
          and messages delivered though the client never saw their 250
          (killed after the queue commit: the client would send again).
Writes:   the summary on stdout; progress lines on stderr (unless --quiet).
Exits:    0 every promise kept; 1 one broken; 111 could not run.
See:      soak_report.py (the addresses, and the reading of what
          happened); tests/integration/test_crash_real.py (the same crash
          windows on one qmail-start, by hand); README "Delivering";
          INTERNALS.md "Cleanups".
"""

import argparse
import collections
import os
import pwd
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (os.path.dirname(HERE), HERE):          # conftest, delivery
    if _p not in sys.path:
        sys.path.insert(0, _p)

from conftest import RUNTIME                       # noqa: E402
from delivery import ensure_user, free_port, maildirmake      # noqa: E402
from soak_report import (DOMAIN, RESTARTS_MTA, USER, analyse,  # noqa: E402
                         end_marker, read_log, recipients, sender, summary)

SINK_HOST = '127.0.0.2'         # loopback, not one of qmail's own addresses
SMTP_SINK = shutil.which('smtp-sink') or '/usr/sbin/smtp-sink'     # Debian's postfix

# The kinds of process killed, in turn.  Ephemeral kinds alternate with
# daemons, whose death costs a restart.  qmail-queue twice: first a
# writer forked by qmail-queued, then, qmail-queued being dead, the
# bin/qmail-queue that qmail-smtpd falls back to; qmail-send comes next,
# and its restart brings qmail-queued back (nothing else does).
KINDS = ('qmail-smtpd', 'qmail-local', 'qmail-queue', 'qmail-remote', 'qmail-queued',
         'qmail-queue', 'qmail-send', 'qmail-lspawn', 'qmail-listen', 'qmail-rspawn',
         'qmail-clean')
# Processes that mean work is still under way (the drain waits for none).
# qmail-smtpd, qmail-queue, qmail-local and qmail-remote run in workers
# that stay after their work: with the load over and the queue empty,
# they have nothing left in hand.
BUSY = ('straggler',)
DAEMON_CHILDREN = ('qmail-lspawn', 'qmail-rspawn', 'qmail-clean', 'qmail-queued')

FIND_TIMEOUT = 5        # seconds to look for a victim of one kind before giving up
RECOVER_TIMEOUT = 60    # seconds for supervise + qmail-start to bring the MTA back
SMTP_TIMEOUT = 60       # per SMTP read or write of the load's clients
START_TIMEOUT = 60      # svscan, smtp-sink, the first qmail-send
ALRM_EVERY = 2          # seconds between SIGALRMs to qmail-send while draining
# ---- messages --------------------------------------------------------------------

def message(n: int, rng: random.Random) -> bytes:
    lines = [b'%d %s' % (i, bytes(rng.choice(b'abcdefghijklmnopqrstuvwxyz ')
                                  for _ in range(rng.randint(10, 70))))
             for i in range(rng.randint(3, 40))]
    head = (b'From: <%s>\r\nSubject: soak %d\r\nMessage-ID: <soak.%d@client.example>\r\n'
            % (sender(n).encode(), n, n))
    return head + b'\r\n' + b'\r\n'.join(lines) + b'\r\nsoak-end %d\r\n' % n


# ---- processes ------------------------------------------------------------------

class Proc:
    __slots__ = ('pid', 'ppid', 'sid', 'state', 'title')

    def __init__(self, pid, ppid, sid, state, title):
        self.pid, self.ppid, self.sid, self.state, self.title = pid, ppid, sid, state, title


def processes(sids) -> dict:
    """{pid: Proc} of the live processes in the given sessions."""
    out = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name, 'rb') as f:
                fields = f.read().rsplit(b')', 1)[1].split()
            if int(fields[3]) not in sids or fields[0] == b'Z':
                continue
            with open('/proc/%s/cmdline' % name, 'rb') as f:
                title = f.read().replace(b'\0', b' ').decode('utf-8', 'replace').strip()
        except (OSError, IndexError, ValueError):
            continue
        out[int(name)] = Proc(int(name), int(fields[1]), int(fields[3]),
                              fields[0].decode(), title)
    return out


def kind_of(p: Proc, procs: dict):
    """What a process is, from its title and its parent's (children of a
    daemon carry the daemon's title: qmail-lspawn's children are the
    qmail-local deliveries, qmail-queued's the queue writers)."""
    parent = procs.get(p.ppid)
    pt = parent.title if parent else ''
    grand = procs.get(parent.ppid) if parent else None
    gt = grand.title if grand else ''
    t = p.title
    if pt.startswith('qmail-listen') and gt.startswith('qmail-listen'):
        return 'qmail-queue'            # bin/qmail-queue, when qmail-queued is gone
    if t.startswith('qmail-listen'):
        if pt.startswith('supervise'):
            return 'qmail-listen'
        return 'qmail-smtpd' if pt.startswith('qmail-listen') else 'straggler'
    if t == 'qmail-send':
        return 'qmail-send' if pt.startswith('supervise') else 'straggler'
    for worker, daemon in (('qmail-local', 'qmail-lspawn'), ('qmail-remote', 'qmail-rspawn')):
        if t.startswith(worker):            # a delivery worker
            if pt.split(' ', 1)[0] == daemon and gt == 'qmail-send':
                return worker
            return 'straggler'
    for daemon, child in (('qmail-lspawn', 'qmail-local'), ('qmail-rspawn', 'qmail-remote'),
                          ('qmail-queued', 'qmail-queue'), ('qmail-clean', None)):
        if t.split(' ', 1)[0] != daemon:
            continue
        if pt == 'qmail-send':
            return daemon
        if child and pt.split(' ', 1)[0] == daemon and gt == 'qmail-send':
            return child
        if child == 'qmail-queue' and pt == 'qmail-queued':
            return child                # a writer of an orphaned qmail-queued
        return 'straggler'              # orphaned
    return None


def classify(procs: dict) -> dict:
    """{kind: [pid, ...]} of the MTA's processes."""
    out = collections.defaultdict(list)
    for p in procs.values():
        kind = kind_of(p, procs)
        if kind:
            out[kind].append(p.pid)
    return out


def mta_up(kinds: dict, old_send=None) -> bool:
    """A qmail-send (not old_send) with all four children."""
    sends = [p for p in kinds.get('qmail-send', []) if p != old_send]
    return len(sends) == 1 and all(len(kinds.get(c, [])) == 1 for c in DAEMON_CHILDREN)


# ---- the pieces: sink, MTA -------------------------------------------------------

def wait_port(host: str, port: int, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError('nothing listening on %s:%d after %ds' % (host, port, timeout))


def stop_process(proc: subprocess.Popen, timeout: float):
    """TERM, then KILL the process group if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=timeout)


class Sink:
    """Postfix's smtp-sink on SINK_HOST, keeping each message it accepts
    in a file of its own (-d): a file exists for a transaction whose
    final dot arrived (an aborted one is unlinked)."""

    def __init__(self, top: str):
        self.dir = os.path.join(top, 'sink')
        os.mkdir(self.dir)
        nobody = pwd.getpwnam('nobody')
        os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
        self.port = free_port(SINK_HOST)
        self.out = open(os.path.join(top, 'sink.out'), 'wb')
        # %H%M%S. plus smtp-sink's random hex: names repeat only within a
        # second, and smtp-sink retries on EEXIST.
        self.proc = subprocess.Popen(
            [SMTP_SINK, '-u', 'nobody', '-d', os.path.join(self.dir, '%H%M%S.'),
             '%s:%d' % (SINK_HOST, self.port), '256'],
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_port(SINK_HOST, self.port)

    def copies(self):
        """[(recipient, number, whole)] for every message received."""
        out = []
        for name in os.listdir(self.dir):
            with open(os.path.join(self.dir, name), 'rb') as f:
                data = f.read()
            m = re.search(rb'\nSubject: soak (\d+)\n', data)
            n = int(m.group(1)) if m else None
            for rcpt in re.findall(rb'^X-Rcpt-Args: <([^>]*)>', data, re.M):
                out.append((rcpt.decode('utf-8', 'replace'), n,
                            n is not None and end_marker(n) in data))
        return out

    def stop(self):
        stop_process(self.proc, 10)
        self.out.close()


class Supervised:
    """`qmail-svscan start` on a home: svscan, supervise, the MTA."""

    def __init__(self, home: str, top: str):
        self.home = home
        self.stopped = False
        self.out = open(os.path.join(top, 'svscan.out'), 'wb')
        self.proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-svscan'), 'start'],
                                     stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={'PATH': '/usr/bin:/bin'},
                                     cwd='/')
        pidfile = os.path.join(home, 'service', '.svscan.pid')
        deadline = time.monotonic() + START_TIMEOUT
        svscan = None
        while svscan is None and time.monotonic() < deadline:
            try:
                svscan = int(open(pidfile).read().split()[1])   # "<qmail-svscan> <svscan>"
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        if svscan is None:
            raise RuntimeError('qmail-svscan did not start svscan')
        self.sids = {self.proc.pid, svscan}
        if not self.wait(lambda k: mta_up(k) and k.get('qmail-listen'), START_TIMEOUT):
            raise RuntimeError('the MTA did not come up under svscan')

    def kinds(self) -> dict:
        return classify(processes(self.sids))

    def wait(self, cond, timeout) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond(self.kinds()):
                return True
            time.sleep(0.05)
        return False

    def alarm(self):
        for pid in self.kinds().get('qmail-send', []):
            try:
                os.kill(pid, signal.SIGALRM)
            except ProcessLookupError:
                pass

    def listing(self) -> str:
        procs = processes(self.sids)
        return '\n'.join('%7d %7d %-12s %s' % (p.pid, p.ppid, kind_of(p, procs), p.title)
                         for p in sorted(procs.values(), key=lambda p: p.pid))

    def stop(self):
        """qmail-svscan's own stop (svc -dx: deliveries finish), then
        SIGKILL whatever is left in its sessions."""
        if self.stopped:
            return
        self.stopped = True
        try:
            stop_process(self.proc, 180)
        finally:
            subprocess.run([os.path.join(self.home, 'bin', 'qmail-svscan'), 'stop'],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=180)
            for _ in range(3):
                left = processes(self.sids)
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                if not left:
                    break
                time.sleep(0.2)
            self.out.close()


def install(top: str, smtp_port: int, sink_port: int) -> str:
    home = os.path.join(top, 'qmail')
    subprocess.run([sys.executable, '-m', 'qmail.install', '--home', home, '--python', RUNTIME,
                    '--fqdn', DOMAIN, '--smtp-port', str(smtp_port),
                    '--pop3-port', str(free_port('127.0.0.1'))],
                   check=True, stdout=subprocess.DEVNULL, timeout=120,
                   cwd=os.path.dirname(os.path.dirname(HERE)))
    with open(os.path.join(home, 'control', 'smtproutes'), 'w') as f:
        f.write(':%s:%d\n' % (SINK_HOST, sink_port))
    # multilog keeps 10 files of 99999 bytes by default: too little for
    # the whole record of a long soak, which the analysis reads.
    for name in ('qmail-send', 'qmail-smtpd'):
        with open(os.path.join(home, 'supervise', name, 'log', 'run'), 'w') as f:
            f.write('#!/bin/sh\nexec setuidgid qmaill multilog t s16777215 n50 %s\n'
                    % os.path.join(home, 'log', name))
    return home


def make_user():
    _, uid, gid, home = ensure_user(USER)
    maildir = os.path.join(home, 'Maildir')
    maildirmake(maildir, uid, gid)
    path = os.path.join(home, '.qmail-default')
    with open(path, 'w') as f:
        f.write('./Maildir/\n')
    os.chown(path, uid, gid)
    return maildir


# ---- the load ---------------------------------------------------------------------

class Ledger:
    """Numbers handed out, and which got their 250."""

    def __init__(self, target: int):
        self.target = target
        self.lock = threading.Lock()
        self.next = 0
        self.inflight = 0
        self.acked = {}                          # n -> (local, remote)
        self.refused = collections.Counter()     # reason -> count
        self.connect_failures = 0
        self.gate = lambda: float('inf')         # the killer holds the load back

    def take(self):
        """A new number, None when enough are acknowledged or on their
        way, 'wait' while the killer is behind."""
        with self.lock:
            if len(self.acked) + self.inflight >= self.target:
                return None
            if len(self.acked) + self.inflight >= self.gate():
                return 'wait'
            n = self.next
            self.next += 1
            self.inflight += 1
            return n

    def ack(self, n: int):
        with self.lock:
            self.inflight -= 1
            self.acked[n] = recipients(n)

    def refuse(self, n: int, reason: str):
        with self.lock:
            self.inflight -= 1
            self.refused[reason] += 1

    def count(self) -> int:
        return len(self.acked)


def send_one(s: smtplib.SMTP, n: int, rng: random.Random, ledger: Ledger) -> bool:
    """One message on an open session; False if the session is done for."""
    rcpts = [r for r in recipients(n) if r]
    try:
        code, _ = s.mail(sender(n))
        if code != 250:
            ledger.refuse(n, 'MAIL %d' % code)
            return False
        for r in rcpts:
            code, _ = s.rcpt(r)
            if code not in (250, 251):
                ledger.refuse(n, 'RCPT %d' % code)
                return False
        code, _ = s.data(message(n, rng))
    except (smtplib.SMTPException, OSError) as e:
        ledger.refuse(n, type(e).__name__)
        return False
    if code != 250:
        ledger.refuse(n, 'DATA %d' % code)
        return False
    ledger.ack(n)
    return True


def session_loop(port: int, ledger: Ledger, rng: random.Random, stop: threading.Event):
    """A client: sessions of 1-20 messages, again and again; a refused or
    cut message makes it hang up and connect anew."""
    while not stop.is_set():
        try:
            s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.example',
                             timeout=SMTP_TIMEOUT)
        except (smtplib.SMTPException, OSError):
            with ledger.lock:
                ledger.connect_failures += 1
            time.sleep(rng.uniform(0.05, 0.3))
            continue
        healthy = True
        stop_all = False
        try:
            s.ehlo()
            for _ in range(rng.randint(1, 20)):
                n = ledger.take()
                while n == 'wait' and not stop.is_set():
                    time.sleep(0.02)
                    n = ledger.take()
                if n is None or n == 'wait':
                    stop_all = n is None
                    break
                if not send_one(s, n, rng, ledger):
                    healthy = False
                    break
            if healthy:
                s.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            s.close()
        if healthy and stop_all:
            return


class Killer(threading.Thread):
    """At each threshold of acknowledged messages, SIGKILL one process
    of the next kind; after a daemon, wait for the MTA to be back."""

    def __init__(self, mta: Supervised, ledger: Ledger, thresholds, rng, say):
        super().__init__(daemon=True)
        self.mta, self.ledger, self.thresholds, self.rng, self.say = \
            mta, ledger, thresholds, rng, say
        self.k = 0
        self.kills = []                  # (wall time, kind, pid, kind in detail)
        self.missed = collections.Counter()
        self.recoveries = []             # seconds from kill to a whole MTA again
        self.stuck = []                  # what supervise did not bring back
        self.stop = threading.Event()
        self.searching = False
        self.slack = max(10, ledger.target // max(1, len(thresholds)) // 2)
        ledger.gate = self.gate

    def gate(self):
        """How far the load may run ahead: a little past the current
        kill's threshold while the killer waits for the MTA to come back,
        so that kills stay spread over the load; no limit while it looks
        for a victim (a qmail-queue exists only while mail comes in)."""
        if self.searching or self.k >= len(self.thresholds):
            return float('inf')
        return self.thresholds[self.k] + self.slack

    def run(self):
        while self.k < len(self.thresholds) and not self.stop.is_set():
            while (self.ledger.count() < self.thresholds[self.k]
                   and not self.ledger_done() and not self.stop.is_set()):
                time.sleep(0.01)
            self.kill_one(KINDS[self.k % len(KINDS)])
            self.k += 1

    def ledger_done(self):
        return self.ledger.count() >= self.ledger.target

    def kill_one(self, kind: str):
        self.searching = True
        try:
            self.find_and_kill(kind)
        finally:
            self.searching = False

    def find_and_kill(self, kind: str):
        deadline = time.monotonic() + FIND_TIMEOUT
        while time.monotonic() < deadline and not self.stop.is_set():
            procs = processes(self.mta.sids)
            kinds = classify(procs)
            victims = kinds.get(kind)
            if victims:
                pid = self.rng.choice(victims)
                how = kind
                if kind == 'qmail-queue':
                    how = ('qmail-queue (writer of qmail-queued)'
                           if procs[pid].title == 'qmail-queued' else 'qmail-queue (bin/)')
                old_send = (kinds.get('qmail-send') or [None])[0]
                old_listen = (kinds.get('qmail-listen') or [None])[0]
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                t = time.time()
                self.kills.append((t, kind, pid, how))
                self.searching = False
                self.say('kill %d/%d: %s pid %d (%s) at %d acknowledged'
                         % (self.k + 1, len(self.thresholds), how, pid, procs[pid].title[:60],
                            self.ledger.count()))
                if kind in RESTARTS_MTA:
                    self.recover(kind, t, lambda k: mta_up(k, old_send))
                elif kind == 'qmail-listen':
                    self.recover(kind, t, lambda k: any(p != old_listen
                                                        for p in k.get('qmail-listen', [])))
                return
            time.sleep(0.005)
        self.missed[kind] += 1
        self.say('kill %d/%d: no %s found in %ds' % (self.k + 1, len(self.thresholds),
                                                     kind, FIND_TIMEOUT))

    def recover(self, kind, t, cond):
        if self.mta.wait(cond, RECOVER_TIMEOUT):
            self.recoveries.append(time.time() - t)
            return
        self.stuck.append('%s killed at %.3f: not back after %ds; processes:\n%s'
                          % (kind, t, RECOVER_TIMEOUT, self.mta.listing()))


def queue_files(home: str, d: str):
    """Names of the files under queue/d (split subdirectories or not)."""
    top = os.path.join(home, 'queue', d)
    out = []
    for dirpath, _, names in os.walk(top):
        out.extend(os.path.join(dirpath, n) for n in names)
    return out


def queue_size(home: str):
    """(messages in queue/mess, in queue/todo), as qmail-qstat counts them."""
    return len(queue_files(home, 'mess')), len(queue_files(home, 'todo'))


def queued(home: str) -> int:
    """Messages qmail-send still has work for: committed (todo/) and not
    yet done (info/).  A mess/ file with neither is an injection that
    never committed, or a done message whose qmail-clean request was
    lost; qmail-send removes those after OSSIFIED (36 hours)."""
    return len(queue_files(home, 'todo')) + len(queue_files(home, 'info'))


def leftovers(home: str, acked) -> collections.Counter:
    """The mess/ files left at the end, by what they were."""
    out = collections.Counter()
    intd = {os.path.basename(f) for f in queue_files(home, 'intd')}
    for fn in queue_files(home, 'mess'):
        with open(fn, 'rb') as f:
            m = re.search(rb'\nSubject: soak (\d+)\r?\n', f.read(1 << 16))
        if os.path.basename(fn) in intd:
            out['injection cut before its envelope was complete'] += 1
        elif m and int(m.group(1)) in acked:
            out['delivered message whose qmail-clean request was lost'] += 1
        else:
            out['injection cut while the message was written'] += 1
    return out


class Sampler(threading.Thread):
    def __init__(self, home):
        super().__init__(daemon=True)
        self.home = home
        self.max = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.5):
            try:
                self.max = max(self.max, queue_size(self.home)[0])
            except OSError:
                pass


# ---- the run ---------------------------------------------------------------------

def run_soak(messages=500, kills=30, sessions=6, seed=None, keep=False, say=None) -> dict:
    """Install, load, kill, drain, stop, look.  The report's 'broken'
    lists every promise not kept; everything started is stopped."""
    say = say or (lambda text: None)
    seed = random.randrange(1 << 32) if seed is None else seed
    rng = random.Random(seed)
    top = tempfile.mkdtemp(prefix='qmailsoak.', dir='/tmp')
    os.chmod(top, 0o755)
    report = {'messages': messages, 'kills_wanted': kills, 'sessions': sessions,
              'seed': seed, 'top': top, 'broken': []}
    sink = mta = sampler = killer = maildir = None
    stop = threading.Event()
    threads = []
    t0 = time.monotonic()
    try:
        maildir = make_user()
        sink = Sink(top)
        smtp_port = free_port('127.0.0.1')
        home = install(top, smtp_port, sink.port)
        mta = Supervised(home, top)
        wait_port('127.0.0.1', smtp_port)
        say('soak: home %s, smtp %d, sink %s:%d, seed %d'
            % (home, smtp_port, SINK_HOST, sink.port, seed))
        ledger = Ledger(messages)
        thresholds = sorted(int(rng.uniform(0.03, 0.97) * messages) for _ in range(kills))
        killer = Killer(mta, ledger, thresholds, random.Random(rng.random()), say)
        sampler = Sampler(home)
        sampler.start()
        t_load = time.monotonic()
        t_wall = time.time()
        killer.start()
        for _ in range(sessions):
            th = threading.Thread(target=session_loop, daemon=True,
                                  args=(smtp_port, ledger, random.Random(rng.random()), stop))
            th.start()
            threads.append(th)
        load_deadline = time.monotonic() + max(300, messages * 0.3)
        next_say = 0
        while any(th.is_alive() for th in threads) and time.monotonic() < load_deadline:
            time.sleep(0.5)
            if time.monotonic() >= next_say:
                say('load: %d acknowledged, queue %d' % (ledger.count(), queue_size(home)[0]))
                next_say = time.monotonic() + 10
        if any(th.is_alive() for th in threads):
            report['broken'].append('the load did not finish: %d of %d acknowledged'
                                    % (ledger.count(), messages))
            stop.set()
        report['load_seconds'] = time.monotonic() - t_load
        killer.join(RECOVER_TIMEOUT + FIND_TIMEOUT * len(KINDS) * 3)
        if killer.is_alive():
            killer.stop.set()
            killer.join(RECOVER_TIMEOUT + FIND_TIMEOUT)
        stop.set()
        for th in threads:
            th.join(SMTP_TIMEOUT * 2)

        t_drain = time.monotonic()
        drained = drain(home, mta, max(300, messages * 0.1), say)
        report['drain_seconds'] = time.monotonic() - t_drain
        if not drained:
            report['broken'].append('queue not empty after draining: %d messages '
                                    'undelivered; processes:\n%s'
                                    % (queued(home), mta.listing()))
        sampler.stop.set()
        report['max_queue'] = sampler.max
        mta.stop()
        mta = None
        report['qstat'] = subprocess.run([os.path.join(home, 'bin', 'qmail-qstat')],
                                         capture_output=True, text=True,
                                         timeout=60).stdout.strip()
        fsck = subprocess.run([os.path.join(home, 'bin', 'qmail-fsck')],
                              capture_output=True, text=True, timeout=300)
        report['fsck'] = fsck.returncode
        report['leftovers'] = dict(leftovers(home, ledger.acked))
        if fsck.returncode:
            report['broken'].append('qmail-fsck exit %d:\n%s' % (fsck.returncode,
                                                                 fsck.stdout[-3000:]))
        report.update(acked=ledger.count(), sent=ledger.next,
                      refused=dict(ledger.refused), connect_failures=ledger.connect_failures,
                      local_rcpts=sum(1 for lr, _ in ledger.acked.values() if lr),
                      remote_rcpts=sum(1 for _, rr in ledger.acked.values() if rr),
                      kills=collections.Counter(k[1] for k in killer.kills),
                      kills_detail=collections.Counter(k[3] for k in killer.kills),
                      missed=dict(killer.missed), recoveries=killer.recoveries)
        report['broken'].extend(killer.stuck)
        if len(killer.kills) < kills * 0.8:
            report['broken'].append('only %d of %d kills made' % (len(killer.kills), kills))
        log = read_log(os.path.join(home, 'log', 'qmail-send'))
        smtpd_log = read_log(os.path.join(home, 'log', 'qmail-smtpd'))
        found = analyse(ledger.acked, ledger.next, killer.kills, maildir, sink.copies(),
                        log, smtpd_log, t_wall)
        report['broken'].extend(found.pop('broken'))
        report.update(found)
    except Exception as e:
        report['broken'].append('soak could not run: %s: %s' % (type(e).__name__, e))
        raise
    finally:
        stop.set()
        if killer is not None:
            killer.stop.set()
        if sampler is not None:
            sampler.stop.set()
        if mta is not None:
            mta.stop()
        if sink is not None:
            sink.stop()
        report['elapsed'] = time.monotonic() - t0
        if not keep and not report['broken']:
            shutil.rmtree(top, ignore_errors=True)
            if maildir:
                shutil.rmtree(maildir, ignore_errors=True)
    return report


def drain(home: str, mta: Supervised, timeout: float, say) -> bool:
    """Wait for an empty queue and no delivery, injection or orphan left
    running, sending SIGALRM to qmail-send now and then: deferred
    deliveries (a killed qmail-local or qmail-remote) wait for it."""
    deadline = time.monotonic() + timeout
    next_alarm = 0
    while time.monotonic() < deadline:
        left = queued(home)
        kinds = mta.kinds()
        # Not mta_up(): a killed qmail-clean goes unnoticed by qmail-send
        # until it next asks it something, which an empty queue never does.
        if not left and not any(kinds.get(k) for k in BUSY):
            return True
        if time.monotonic() >= next_alarm:
            mta.alarm()
            next_alarm = time.monotonic() + ALRM_EVERY
            say('drain: %d messages to deliver' % left)
        time.sleep(0.2)
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description='qmail crash soak')
    parser.add_argument('--messages', type=int, default=10000)
    parser.add_argument('--kills', type=int, default=200)
    parser.add_argument('--sessions', type=int, default=6)
    parser.add_argument('--seed', type=int)
    parser.add_argument('--keep', action='store_true', help='keep the scratch home')
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write('soak: must run as root\n')
        return 111
    for tool in ('svscan', 'smtp-sink'):
        if not shutil.which(tool, path=os.environ.get('PATH', '') + ':/usr/sbin:/usr/bin'):
            sys.stderr.write('soak: %s not installed (daemontools; bench/setup-postfix.sh)\n'
                             % tool)
            return 111
    os.environ['PATH'] = os.environ.get('PATH', '/usr/bin:/bin') + ':/usr/sbin'

    def say(text):
        if not args.quiet:
            sys.stderr.write('%s %s\n' % (time.strftime('%H:%M:%S'), text))

    def on_term(signum, frame):
        raise KeyboardInterrupt     # run_soak's finally stops what it started
    signal.signal(signal.SIGTERM, on_term)

    try:
        report = run_soak(args.messages, args.kills, args.sessions, args.seed, args.keep, say)
    except Exception as e:
        sys.stderr.write('soak: could not run: %s: %s\n' % (type(e).__name__, e))
        return 111
    print(summary(report))
    return 1 if report['broken'] else 0


if __name__ == '__main__':
    sys.exit(main())
