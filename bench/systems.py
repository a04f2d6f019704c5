"""The two mail systems the end-to-end runs compare, each started fresh
for a run and stopped after it, both listening on 127.0.0.1 only and
delivering into the same local user's ~/Maildir/.

  QmailSystem    an installed scratch home of this project: qmail-start
                 ./Maildir/ (qmail-send and its daemons, logging to a
                 file) and qmail-listen running qmail-smtpd as qmaild.
  PostfixSystem  Debian's Postfix as a private instance: its own config
                 directory, queue and log under /var/tmp, started with
                 postfix -c DIR start; the system's Postfix is untouched.

Both keep their defaults except where noted: qmail-listen gets -c 100
(Postfix's default_process_limit) so 50 sessions are served at once by
both; Postfix gets biff = no (qmail notifies nobody by default) and no
alias maps (the bench needs none, and Debian's "No configuration"
leaves /etc/aliases.db out).
"""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from procs import BenchError, file_has, kill_all_children, reap_all, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME = os.environ.get('QMAIL_RUNTIME_PYTHON', '/usr/local/lib/qmail/venv/bin/python3')
DOMAIN = 'bench.example.org'
USER = 'qmbench'
START_TIMEOUT = 60
STOP_TIMEOUT = 120           # qmail-send finishes deliveries under way
SMTPD_LIMIT = 100            # Postfix's default_process_limit


def load_delivery_helpers():
    for sub in ('tests', os.path.join('tests', 'integration')):
        path = os.path.join(ROOT, sub)
        if path not in sys.path:
            sys.path.append(path)
    import delivery
    return delivery


def install_home(fqdn=DOMAIN, smtp_port='25'):
    top = tempfile.mkdtemp(prefix='qmailbench.', dir='/tmp')
    os.chmod(top, 0o755)
    home = os.path.join(top, 'qmail')
    subprocess.run([sys.executable, '-m', 'qmail.install', '--home', home,
                    '--python', RUNTIME, '--fqdn', fqdn, '--smtp-port', smtp_port],
                   check=True, stdout=subprocess.DEVNULL, cwd=ROOT, timeout=120)
    return home


def remove_home(home):
    shutil.rmtree(os.path.dirname(home), ignore_errors=True)


class LocalUser:
    """The recipient: a real user with ~/Maildir/ (tests' ensure_user)."""

    def __init__(self, name=USER):
        delivery = load_delivery_helpers()
        self.name, self.uid, self.gid, self.home = delivery.ensure_user(name)
        self.maildir = os.path.join(self.home, 'Maildir')
        delivery.maildirmake(self.maildir, self.uid, self.gid)
        self.new = os.path.join(self.maildir, 'new')
        self.address = '%s@%s' % (self.name, DOMAIN)

    def empty(self):
        for sub in ('new', 'cur', 'tmp'):
            d = os.path.join(self.maildir, sub)
            for name in os.listdir(d):
                os.unlink(os.path.join(d, name))

    def count(self) -> int:
        return len(os.listdir(self.new))

    def remove(self):
        shutil.rmtree(self.home, ignore_errors=True)


class QmailSystem:
    name = 'qmail-py'

    def __init__(self, port, home: str = None):
        """port None: qmail-send and its daemons only, no qmail-listen."""
        self.port = port
        self.home = home or install_home()
        self.owns_home = home is None
        self.top = os.path.dirname(self.home)
        self.procs = []
        self.env = {'PATH': os.path.join(self.home, 'bin') + ':/usr/bin:/bin'}

    def start(self):
        sendlog = os.path.join(self.top, 'send.log')
        listenlog = os.path.join(self.top, 'listen.log')
        with open(sendlog, 'wb') as out:
            self.send = subprocess.Popen(
                [os.path.join(self.home, 'bin', 'qmail-start'), './Maildir/'],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.env, start_new_session=True)
        self.procs.append(self.send)
        wait_for(lambda: file_has(sendlog, b'status: local 0/'), START_TIMEOUT,
                 'qmail-send start (%s)' % sendlog)
        if self.port is None:           # delivery only: no SMTP
            return
        pw = pwd.getpwnam('qmaild')
        with open(listenlog, 'wb') as out:
            self.listen = subprocess.Popen(
                [os.path.join(self.home, 'bin', 'qmail-listen'), '-v',
                 '-c', str(SMTPD_LIMIT), '-b', str(SMTPD_LIMIT),
                 '-x', os.path.join(self.home, 'control', 'tcp.smtp.cdb'), '-X',
                 '-u', str(pw.pw_uid), '-g', str(pw.pw_gid),
                 '127.0.0.1', str(self.port), os.path.join(self.home, 'bin', 'qmail-smtpd')],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out,
                env=self.env, start_new_session=True)
        self.procs.append(self.listen)
        wait_for(lambda: file_has(listenlog, b'status: 0/'), START_TIMEOUT,
                 'qmail-listen start (%s)' % listenlog)
        if any(p.poll() is not None for p in self.procs):
            raise BenchError('qmail exited at start: see %s' % self.top)

    def stop(self):
        for p in self.procs:
            if p.returncode is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        if not reap_all(time.monotonic() + STOP_TIMEOUT, self.procs):
            kill_all_children()
            reap_all(time.monotonic() + 10, self.procs)
            raise BenchError('qmail did not stop within %ds' % STOP_TIMEOUT)
        self.procs = []

    def log_tail(self) -> str:
        out = []
        for name in ('send.log', 'listen.log'):
            try:
                with open(os.path.join(self.top, name), 'rb') as f:
                    out.append('%s:\n%s' % (name, f.read()[-2000:].decode('utf-8', 'replace')))
            except OSError:
                pass
        return '\n'.join(out)

    def cleanup(self):
        if self.owns_home:
            remove_home(self.home)


MASTER_CF = """\
# bench/systems.py: a private Postfix for make bench, loopback only.
%(listen)s inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixSystem:
    """Debian's Postfix, a private instance under /var/tmp."""
    name = 'Postfix'

    def __init__(self, port: int, extra=()):
        if not os.path.exists('/usr/sbin/postfix'):
            raise BenchError('Postfix is not installed (bench/setup-postfix.sh)')
        self.port = port
        self.top = tempfile.mkdtemp(prefix='qmailbench-postfix.', dir='/var/tmp')
        os.chmod(self.top, 0o755)
        self.etc = os.path.join(self.top, 'etc')
        self.queue = os.path.join(self.top, 'queue')
        self.data = os.path.join(self.top, 'data')
        self.maillog = os.path.join(self.top, 'maillog')
        os.mkdir(self.etc, 0o755)
        os.mkdir(self.queue, 0o755)     # postfix check makes the rest
        with open(os.path.join(self.etc, 'master.cf'), 'w') as f:
            f.write(MASTER_CF % {'listen': '127.0.0.1:%d' % port})
        open(os.path.join(self.etc, 'main.cf'), 'w').close()
        self.postconf([
            'compatibility_level=3.6',
            'queue_directory=' + self.queue,
            'data_directory=' + self.data,
            'maillog_file=' + self.maillog,
            'syslog_name=postfix-bench',
            'myhostname=' + DOMAIN,
            'mydomain=' + DOMAIN.split('.', 1)[1],
            'myorigin=$myhostname',
            'mydestination=' + DOMAIN,
            'inet_interfaces=127.0.0.1',
            'inet_protocols=ipv4',
            'mynetworks=127.0.0.0/8',
            'home_mailbox=Maildir/',
            'alias_maps=',
            'alias_database=',
            'biff=no',
            'relayhost=',
        ] + list(extra))

    def postconf(self, settings):
        subprocess.run(['postconf', '-c', self.etc, '-e'] + settings, check=True,
                       timeout=60)

    def postfix(self, cmd, timeout=120):
        r = subprocess.run(['postfix', '-c', self.etc, cmd], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        return r.returncode, r.stdout.decode('utf-8', 'replace')

    def start(self):
        self.running = True
        code, out = self.postfix('start')
        if code != 0:
            raise BenchError('postfix start: %s' % out)
        pidfile = os.path.join(self.queue, 'pid', 'master.pid')
        wait_for(lambda: os.path.exists(pidfile), START_TIMEOUT, 'Postfix master.pid')

    running = False

    def stop(self):
        if not self.running:
            return
        self.running = False
        code, out = self.postfix('stop')
        ok = reap_all(time.monotonic() + STOP_TIMEOUT)
        if code != 0 or not ok:
            kill_all_children()
            reap_all(time.monotonic() + 10)
            raise BenchError('postfix stop (%d): %s' % (code, out))

    def log_tail(self) -> str:
        try:
            with open(self.maillog, 'rb') as f:
                return 'maillog:\n' + f.read()[-3000:].decode('utf-8', 'replace')
        except OSError:
            return ''

    def cleanup(self):
        if os.path.exists(os.path.join(self.queue, 'pid', 'master.pid')):
            self.postfix('stop')
            reap_all(time.monotonic() + 30)
        shutil.rmtree(self.top, ignore_errors=True)
