"""Helpers for tests that run the delivery side: users with homes, a
running qmail-start, waiting on the log and on mailboxes."""

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

TIMEOUT = 60


def ensure_user(name, home_root='/tmp/qmail-test-homes'):
    """A real user with a home directory of its own: (name, uid, gid, home)."""
    os.makedirs(home_root, exist_ok=True)
    os.chmod(home_root, 0o755)
    home = os.path.join(home_root, name)
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(['useradd', '-M', '-U', '-d', home, '-s', '/bin/sh', name],
                       check=True, timeout=TIMEOUT)
        pw = pwd.getpwnam(name)
    if os.path.isdir(pw.pw_dir):
        shutil.rmtree(pw.pw_dir)
    os.makedirs(pw.pw_dir)
    os.chown(pw.pw_dir, pw.pw_uid, pw.pw_gid)
    os.chmod(pw.pw_dir, 0o755)
    return pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir


def maildirmake(path, uid, gid):
    for sub in ('', 'tmp', 'new', 'cur'):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
        os.chown(os.path.join(path, sub), uid, gid)
        os.chmod(os.path.join(path, sub), 0o700)


class Mta:
    """qmail-start running from an installed home, logging to a file."""

    def __init__(self, home, defaultdelivery='./Maildir/', logname='send.log'):
        self.home = home
        self.logpath = os.path.join(os.path.dirname(home), logname)
        self.logf = open(self.logpath, 'ab')
        self.proc = subprocess.Popen(
            [os.path.join(home, 'bin', 'qmail-start'), defaultdelivery],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
            env={'PATH': os.path.join(home, 'bin') + ':/usr/bin:/bin'},
            start_new_session=True)
        self.wait_log('status: local 0/', TIMEOUT)

    def log(self):
        with open(self.logpath, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def wait_log(self, text, timeout=TIMEOUT, count=1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            if self.proc.poll() is not None:
                raise AssertionError('qmail-start exited %s; log:\n%s'
                                     % (self.proc.returncode, self.log()[-3000:]))
            time.sleep(0.05)
        raise AssertionError('no %r in log after %ss:\n%s' % (text, timeout, self.log()[-3000:]))

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=TIMEOUT)
        # the spawns and qmail-clean exit when qmail-send is gone
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.logf.close()

    def kill(self):
        """SIGKILL every process of the MTA."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=TIMEOUT)
        self.logf.close()


def group_processes(pgid):
    """{pid: (ppid, title)} of the processes in a process group."""
    out = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            with open('/proc/%s/cmdline' % name, 'rb') as f:
                title = f.read().replace(b'\0', b' ').decode('utf-8', 'replace').strip()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            out[int(name)] = (int(fields[1]), title)
    return out


def wait_group_gone(pgid, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_processes(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def fast_queue(home, messages, sender=b'a@example.com'):
    """Queue [(recipients, message bytes)] with qmail-queue's own writer,
    in one forked process running as qmailq: the real code path of an
    injection without an interpreter start per message."""
    import pwd
    from qmail import queue
    from qmail.lib import auto
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(pwd.getpwnam('qmailq').pw_gid)
            os.setuid(pwd.getpwnam('qmailq').pw_uid)
            os.chdir(os.path.join(home, 'queue'))
            uids = queue.queue_uids()
            for recips, message in messages:
                env = b'F' + sender + b'\0' + b''.join(b'T' + r + b'\0' for r in recips) + b'\0'
                mr, mw = os.pipe()
                er, ew = os.pipe()
                # small enough for the pipe buffers: write, close, read
                os.write(mw, message)
                os.close(mw)
                os.write(ew, env)
                os.close(ew)
                rc = queue.inject(mr, er, 0, os.getpid(), time.time(), uids, auto.SPLIT)
                os.close(mr)
                os.close(er)
                if rc:
                    os._exit(rc)
            code = 0
        finally:
            os._exit(code)
    _, wstat = os.waitpid(pid, 0)
    assert os.WIFEXITED(wstat) and os.WEXITSTATUS(wstat) == 0, wstat


def wait_files(path, count, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            names = []
        if len(names) >= count:
            return sorted(names)
        time.sleep(0.05)
    raise AssertionError('%d files in %s after %ss, wanted %d'
                         % (len(names), path, timeout, count))


def free_port(host='127.0.0.1'):
    """A TCP port free on host just now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_dns_port(host='127.0.0.1'):
    """A port free for both UDP and TCP on host (dnsmasq wants both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return port
    raise AssertionError('no free port')


@contextlib.contextmanager
def dnsmasq(zone: str, probe):
    """dnsmasq on 127.0.0.1 serving zone (its configuration's text), once
    it answers probe, (name, rdtype): yields its port; stopped after."""
    import dns.resolver
    tmp = tempfile.mkdtemp(prefix='qmt-dns.')
    conf = os.path.join(tmp, 'dnsmasq.conf')
    with open(conf, 'w') as f:
        f.write(zone)
    port = free_dns_port()
    proc = subprocess.Popen(
        ['dnsmasq', '--keep-in-foreground', '--conf-file=' + conf,
         '--listen-address=127.0.0.1', '--bind-interfaces', '--port=%d' % port,
         '--pid-file=', '--user=nobody', '--log-facility=' + os.path.join(tmp, 'log')],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = ['127.0.0.1']
        res.port = port
        res.lifetime = 1
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                res.resolve(*probe)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError('dnsmasq did not start: %r' % proc.stderr.read())
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        shutil.rmtree(tmp, ignore_errors=True)


# -- the queue as the admin's tools see it (qmail-qrm's, qmail-qhold's tests) --

def inject(home, sender, *recips, subject=b'queue test'):
    """qmail-inject -f sender recips, a short message; it must queue."""
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-inject'), '-f' + sender] + list(recips),
                       input=b'Subject: %s\n\nbody\n' % subject, timeout=TIMEOUT)
    assert r.returncode == 0


def qread(home) -> str:
    return subprocess.run([os.path.join(home, 'bin', 'qmail-qread')], capture_output=True,
                          timeout=TIMEOUT).stdout.decode()


def ids_of(listing: str, sender: str) -> list:
    """The numbers of the messages from sender in a qmail-qread listing."""
    import re
    return [int(m) for m in re.findall(r'#(\d+)  \d+  <%s>' % re.escape(sender), listing)]


def wait_until(what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.05)
    raise AssertionError('timed out')

