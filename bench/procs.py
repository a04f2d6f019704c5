"""Processes for the benchmark: start, wait with a timeout, stop, reap,
and count the CPU time of everything an MTA ran.

CPU accounting: the bench process is a child subreaper
(PR_SET_CHILD_SUBREAPER), so an MTA process whose parent has exited is
reparented to it rather than to init.  Once an MTA is stopped and every
process of it reaped, RUSAGE_CHILDREN holds the CPU time of all of them:
each process's own time reaches its parent when the parent waits for it,
and so on up to us.  A run's MTA CPU is the RUSAGE_CHILDREN difference
across start .. stop, less the load client's (measured with wait4) and
less the system's idle start+stop cost (measured once).
"""

import ctypes
import os
import resource
import signal
import socket
import subprocess
import time

PR_SET_CHILD_SUBREAPER = 36


class BenchError(Exception):
    """A run failed: the message says what and where to look."""


def set_subreaper():
    """Orphaned MTA processes come back to us, so their CPU time counts."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_CHILD_SUBREAPER)')


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def children_times() -> tuple:
    """(user, kernel) CPU seconds of the reaped children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime, r.ru_stime


def reap_all(deadline: float, procs=()) -> bool:
    """Wait for every child until none is left or the monotonic deadline
    passes; True if none is left.  Popen objects in procs get their
    returncode, so subprocess does not wait for them again."""
    bypid = {p.pid: p for p in procs}
    while True:
        try:
            pid, wstat = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
            continue
        if pid in bypid:
            bypid[pid].returncode = os.waitstatus_to_exitcode(wstat)


def kill_all_children():
    """Last resort on failure: SIGKILL every descendant we can see."""
    me = os.getpid()
    parents = {}
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open('/proc/%s/stat' % name) as f:
                    parents[int(name)] = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    mine = {me}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    mine.discard(me)
    for pid in mine:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait4(proc: subprocess.Popen, timeout: float):
    """(exit code, CPU seconds) of one child, waited for with a timeout;
    the child is killed if it overstays."""
    code, (user, kernel) = wait4_times(proc, timeout)
    return code, user + kernel


def wait4_times(proc: subprocess.Popen, timeout: float):
    """wait4(), the CPU seconds as (user, kernel)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, wstat, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(wstat)
            return proc.returncode, (ru.ru_utime, ru.ru_stime)
        if time.monotonic() >= deadline:
            proc.kill()
            pid, wstat, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(wstat)
            raise BenchError('%s still running after %ds: killed'
                             % (proc.args[0], timeout))
        time.sleep(0.01)


def wait_for(pred, timeout: float, what: str, interval: float = 0.02):
    """Poll pred() until true; BenchError naming what after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError('timeout after %ds: %s' % (timeout, what))
        time.sleep(interval)


def free_port(host: str = '127.0.0.1') -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def file_has(path: str, text: bytes) -> bool:
    try:
        with open(path, 'rb') as f:
            return text in f.read()
    except FileNotFoundError:
        return False


def rss_kb(pid: int):
    """(VmRSS, VmHWM) of a process in KB, or None."""
    out = {}
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith(('VmRSS:', 'VmHWM:')):
                    out[line.split(':')[0]] = int(line.split()[1])
    except OSError:
        return None
    return out.get('VmRSS'), out.get('VmHWM')


def find_process(title_prefix: str, ancestor: int):
    """The pid of a descendant of ancestor whose cmdline starts with
    title_prefix (setproctitle names qmail's daemons), or None."""
    parents, titles = {}, {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                parents[int(name)] = int(f.read().rsplit(')', 1)[1].split()[1])
            with open('/proc/%s/cmdline' % name, 'rb') as f:
                titles[int(name)] = f.read().replace(b'\0', b' ').strip()
        except (OSError, ValueError, IndexError):
            continue
    for pid, title in titles.items():
        if not title.startswith(title_prefix.encode()):
            continue
        p = pid
        while p > 1:
            if p == ancestor:
                return pid
            p = parents.get(p, 0)
    return None
