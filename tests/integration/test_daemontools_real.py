"""The MTA under Debian's daemontools, as `make run` runs it: svscan
started by the test, svc -t/-d/-u, a killed qmail-send restarted by
supervise with no mail lost, multilog logs with tai64n stamps."""

import os
import pwd
import re
import signal
import smtplib
import subprocess
import sys
import time

import pytest

from conftest import RUNTIME, TIMEOUT, needs_root, remove_home, run_as
from delivery import ensure_user, free_port, maildirmake

pytestmark = [needs_root, pytest.mark.skipif(
    subprocess.run(['which', 'svscan'], capture_output=True).returncode != 0,
    reason='daemontools not installed')]

DOMAIN = 'svc.example.org'


def svstat(d):
    return subprocess.run(['svstat', d], capture_output=True, text=True,
                          timeout=TIMEOUT).stdout


def pid_of(d):
    m = re.search(r': up \(pid (\d+)\)', svstat(d))
    return int(m.group(1)) if m else None


def wait_for(cond, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError('timed out waiting for ' + what)


@pytest.fixture
def supervised(tmp_path):
    import tempfile
    top = tempfile.mkdtemp(prefix='qmailtest.', dir='/tmp')
    os.chmod(top, 0o755)
    home = os.path.join(top, 'qmail')
    port = free_port()
    pop3port = free_port()
    subport, smtpsport = free_port(), free_port()
    subprocess.run([sys.executable, '-m', 'qmail.install', '--home', home, '--python', RUNTIME,
                    '--fqdn', DOMAIN, '--smtp-port', str(port), '--pop3-port', str(pop3port),
                    '--submission-port', str(subport), '--smtps-port', str(smtpsport)],
                   check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT)
    for name in ('pop3checker', 'submissionchecker'):
        with open(os.path.join(home, 'control', name), 'w') as f:
            f.write(os.path.join(home, 'bin', 'checkpassword') + '\n')
    # the certificate of the mail clients' services (STARTTLS, SMTPS)
    certfile = os.path.join(top, 'cert.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', certfile,
                    '-out', certfile + '.crt', '-days', '2', '-subj', '/CN=' + DOMAIN],
                   check=True, capture_output=True, timeout=TIMEOUT)
    servercert = os.path.join(home, 'control', 'servercert.pem')
    with open(servercert, 'wb') as f:
        f.write(open(certfile + '.crt', 'rb').read() + open(certfile, 'rb').read())
    os.chown(servercert, pwd.getpwnam('qmaild').pw_uid, 0)
    os.chmod(servercert, 0o400)
    user = ensure_user('qmtsvc')
    subprocess.run(['chpasswd'], input=b'qmtsvc:pop-secret-1\n', check=True, timeout=TIMEOUT)
    maildirmake(os.path.join(user[3], 'Maildir'), user[1], user[2])
    out = open(os.path.join(top, 'svscan.out'), 'wb')
    proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-svscan'), 'start'],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={'PATH': '/usr/bin:/bin'}, cwd='/')
    svc = os.path.join(home, 'service')
    wait_for(lambda: os.path.exists(os.path.join(top, 'svscan.out')) and
             b'Ctrl-C' in open(os.path.join(top, 'svscan.out'), 'rb').read(), 'qmail-svscan')
    yield {'home': home, 'port': port, 'user': user, 'svc': svc, 'proc': proc, 'top': top,
           'pop3port': pop3port, 'subport': subport, 'smtpsport': smtpsport,
           'cafile': certfile + '.crt'}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=TIMEOUT * 3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    out.close()
    subprocess.run([os.path.join(home, 'bin', 'qmail-svscan'), 'stop'], timeout=TIMEOUT * 3,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    remove_home(home)


def maildir_count(user):
    return len(os.listdir(os.path.join(user[3], 'Maildir', 'new')))


def smtp_send(port, subject):
    with smtplib.SMTP('127.0.0.1', port, timeout=TIMEOUT) as s:
        s.sendmail('a@example.com', ['qmtsvc@' + DOMAIN],
                   b'Subject: %s\r\n\r\nbody\r\n' % subject.encode())


def test_supervised_mta(supervised):
    home, port, user, svc = (supervised[k] for k in ('home', 'port', 'user', 'svc'))
    send_dir = os.path.join(svc, 'qmail-send')
    smtpd_dir = os.path.join(svc, 'qmail-smtpd')
    for d in (send_dir, smtpd_dir, send_dir + '/log', smtpd_dir + '/log'):
        wait_for(lambda: pid_of(d) is not None, 'svstat up ' + d)

    smtp_send(port, 'one')
    wait_for(lambda: maildir_count(user) == 1, 'first delivery')

    # svc -t: qmail-send restarts, mail still flows
    old = pid_of(send_dir)
    subprocess.run(['svc', '-t', send_dir], check=True, timeout=TIMEOUT)
    wait_for(lambda: pid_of(send_dir) not in (None, old), 'restart after svc -t')
    smtp_send(port, 'two')
    wait_for(lambda: maildir_count(user) == 2, 'delivery after svc -t')

    # svc -d: down; mail is queued, not delivered; svc -u: delivered
    subprocess.run(['svc', '-d', send_dir], check=True, timeout=TIMEOUT)
    wait_for(lambda: ': down ' in svstat(send_dir), 'svc -d')
    r = run_as(('qmtsvc',) + user[1:3], [home + '/bin/sendmail', 'qmtsvc@' + DOMAIN],
               input=b'Subject: while down\n\nb\n')
    assert r.returncode == 0, r.stderr
    smtp_send(port, 'three')
    time.sleep(1)
    assert maildir_count(user) == 2
    subprocess.run(['svc', '-u', send_dir], check=True, timeout=TIMEOUT)
    wait_for(lambda: maildir_count(user) == 4, 'delivery after svc -u')

    # kill -9 qmail-send: supervise restarts it; nothing is lost
    for i in range(10):
        smtp_send(port, 'burst %d' % i)
    victim = pid_of(send_dir)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: pid_of(send_dir) not in (None, victim), 'supervise restart')
    wait_for(lambda: maildir_count(user) == 14, 'every message after kill -9', timeout=120)
    subjects = sorted(re.search(rb'\nSubject: ([^\n]*)\n', open(os.path.join(
        user[3], 'Maildir', 'new', n), 'rb').read()).group(1)
        for n in os.listdir(os.path.join(user[3], 'Maildir', 'new')))
    assert len(set(subjects)) == 14, subjects

    # multilog: tai64n stamps, qmail-log lines, one directory per service
    log = open(os.path.join(home, 'log', 'qmail-send', 'current')).read()
    assert re.search(r'^@4000[0-9a-f]{20} status: local 0/10 remote 0/20$', log, re.M), log[:500]
    assert re.search(r'^@4000[0-9a-f]{20} delivery \d+: success: ', log, re.M)
    slog = open(os.path.join(home, 'log', 'qmail-smtpd', 'current')).read()
    assert re.search(r'^@4000[0-9a-f]{20} qmail-listen: ok \d+ ', slog, re.M)

    # POP3 is served because control/pop3checker names a checker
    import poplib
    pop_dir = os.path.join(svc, 'qmail-pop3d')
    wait_for(lambda: pid_of(pop_dir) is not None, 'svstat up qmail-pop3d')
    wait_for(lambda: subprocess.run(['sh', '-c', 'exec 3<>/dev/tcp/127.0.0.1/%d'
                                     % supervised['pop3port']], capture_output=True,
                                    executable='/bin/bash').returncode == 0, 'pop3 port')
    # qmail-pop3d, like qmail's, leaves out messages of the current second
    # ("don't want to mix up the order"): let the last delivery age.
    time.sleep(1.1)
    pop = poplib.POP3('127.0.0.1', supervised['pop3port'], timeout=TIMEOUT)
    pop.user('qmtsvc')
    pop.pass_('pop-secret-1')
    count, size = pop.stat()
    assert count == 14
    subjects_seen = {re.search(rb'\nSubject: ([^\n]*)', b'\n'.join(pop.retr(i)[1]) + b'\n').group(1)
                     for i in range(1, count + 1)}
    assert subjects_seen == set(subjects)
    pop.quit()

    # Mail clients' SMTP, because control/submissionchecker names a
    # checker: submission (STARTTLS, then AUTH) and SMTPS (465's kind)
    import ssl
    sub_dir, smtps_dir = os.path.join(svc, 'qmail-submission'), os.path.join(svc, 'qmail-smtps')
    for d in (sub_dir, smtps_dir):
        wait_for(lambda: pid_of(d) is not None, 'svstat up ' + d)
    ctx = ssl.create_default_context(cafile=supervised['cafile'])
    ctx.check_hostname = False
    wait_for(lambda: subprocess.run(['sh', '-c', 'exec 3<>/dev/tcp/127.0.0.1/%d'
                                     % supervised['smtpsport']], capture_output=True,
                                    executable='/bin/bash').returncode == 0, 'smtps port')
    with smtplib.SMTP('127.0.0.1', supervised['subport'], timeout=TIMEOUT) as s:
        s.starttls(context=ctx)
        s.login('qmtsvc', 'pop-secret-1')
        # FORCEAUTHMAILFROM, set by the run script: only her own addresses
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            s.sendmail('root@' + DOMAIN, ['qmtsvc@' + DOMAIN], b'Subject: forged\r\n\r\nb\r\n')
        assert refused.value.smtp_code == 553, refused.value
        # and her extensions (qmail-smtpd, as qmaild, asks the passwd
        # rules qmail-getpw follows: qmtsvc-lists is hers)
        assert s.docmd('MAIL', 'FROM:<qmtsvc-lists@%s>' % DOMAIN)[0] == 250
        assert s.rset()[0] == 250
        s.sendmail('qmtsvc@' + DOMAIN, ['qmtsvc@' + DOMAIN], b'Subject: submitted\r\n\r\nb\r\n')
    with smtplib.SMTP_SSL('127.0.0.1', supervised['smtpsport'], timeout=TIMEOUT,
                          context=ctx) as s:
        s.login('qmtsvc', 'pop-secret-1')
        s.sendmail('qmtsvc@' + DOMAIN, ['qmtsvc@' + DOMAIN], b'Subject: smtps\r\n\r\nb\r\n')
    # (qmail-pop3d moved the 14 above to cur/)
    wait_for(lambda: sorted(re.search(rb'\nSubject: ([^\n]*)\n', open(os.path.join(
        user[3], 'Maildir', 'new', n), 'rb').read()).group(1)
        for n in os.listdir(os.path.join(user[3], 'Maildir', 'new'))) == [b'smtps', b'submitted'],
        'the mail clients\' messages')

    # make stop (qmail-svscan stop): it returns once the foreground
    # qmail-svscan has exited, after every service; both exit 0
    proc = supervised['proc']
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-svscan'), 'stop'],
                       timeout=TIMEOUT * 3, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert proc.poll() == 0, 'qmail-svscan stop returned before the services stopped'
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-svscan'), 'stop'],
                       timeout=TIMEOUT * 3, capture_output=True)
    assert r.returncode == 0, r.stderr              # a second stop: nothing to do
    for d in (send_dir, smtpd_dir, pop_dir, sub_dir, smtps_dir):
        assert subprocess.run(['svok', d], timeout=TIMEOUT).returncode != 0
    assert 'status: exiting' in open(os.path.join(home, 'log', 'qmail-send', 'current')).read()


def start_again(home, top, outname, dirs):
    """qmail-svscan start once more, up with every service: (its Popen,
    the pidfile's foreground and svscan pids)."""
    with open(os.path.join(top, outname), 'wb') as out:
        proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-svscan'), 'start'],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={'PATH': '/usr/bin:/bin'}, cwd='/')
    wait_for(lambda: b'Ctrl-C' in open(os.path.join(top, outname), 'rb').read(), outname)
    for d in dirs:
        wait_for(lambda: pid_of(d) is not None, 'svstat up ' + d)
    pidfile = os.path.join(home, 'service', '.svscan.pid')
    fg, scan = (int(w) for w in open(pidfile).read().split()[:2])
    return proc, fg, scan


def test_hangup_stops_and_leftovers_block_a_second_start(supervised):
    """Closing make run's terminal (HUP) killed the foreground alone: its
    svscan went on, out of make stop's reach.  And a start while an
    earlier start's services were still up came up half-working (a
    second supervise fails on its lock, and its service's log pipe)."""
    home, svc, top = supervised['home'], supervised['svc'], supervised['top']
    dirs = [os.path.join(svc, n) for n in ('qmail-send', 'qmail-smtpd')]
    dirs += [d + '/log' for d in dirs]
    for d in dirs:
        wait_for(lambda: pid_of(d) is not None, 'svstat up ' + d)
    proc = supervised['proc']

    def running():          # what make run asks before it installs anything
        return subprocess.run([os.path.join(home, 'bin', 'qmail-svscan'), 'running'],
                              timeout=TIMEOUT).returncode == 0
    assert running()
    os.kill(proc.pid, signal.SIGHUP)
    assert proc.wait(timeout=TIMEOUT * 3) == 0
    for d in dirs:
        assert subprocess.run(['svok', d], timeout=TIMEOUT).returncode != 0, d
    assert not running()
    # again, then lose the foreground and its svscan (kill -9): services stay
    second, fg, scan = start_again(home, top, 'svscan2.out', dirs)
    os.kill(scan, signal.SIGKILL)
    os.kill(fg, signal.SIGKILL)
    second.wait(timeout=TIMEOUT)
    assert running()                    # no foreground, but services up
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-svscan'), 'start'], cwd='/',
                       capture_output=True, timeout=TIMEOUT, env={'PATH': '/usr/bin:/bin'})
    assert r.returncode == 111 and b'still running from an earlier start' in r.stderr, r
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-svscan'), 'stop'],
                       capture_output=True, timeout=TIMEOUT * 3)
    assert r.returncode == 0, r.stderr
    for d in dirs:
        assert subprocess.run(['svok', d], timeout=TIMEOUT).returncode != 0, d
    # a third time, and lose only the foreground: its svscan lives on in
    # its own session and would start each service again; stop stops it
    third, fg, scan = start_again(home, top, 'svscan3.out', dirs)
    os.kill(fg, signal.SIGKILL)
    third.wait(timeout=TIMEOUT)
    assert running()
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-svscan'), 'stop'],
                       capture_output=True, timeout=TIMEOUT * 3)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists('/proc/%d' % scan) or \
        b'svscan' not in open('/proc/%d/cmdline' % scan, 'rb').read()
    time.sleep(6)                       # (svscan looks at its services every 5 s)
    for d in dirs:
        assert subprocess.run(['svok', d], timeout=TIMEOUT).returncode != 0, d
    assert not running()


def test_a_service_that_does_not_stay_up_is_named_at_start(tmp_path):
    """Another MTA on the SMTP port (exim4 on a Debian host): qmail-listen
    cannot bind and supervise starts it again every second.  make run
    said all was running; now it names the service and its log's last
    line, and the rest runs on."""
    import socket
    import tempfile
    top = tempfile.mkdtemp(prefix='qmailtest.', dir='/tmp')
    os.chmod(top, 0o755)
    home = os.path.join(top, 'qmail')
    port = free_port()
    subprocess.run([sys.executable, '-m', 'qmail.install', '--home', home, '--python', RUNTIME,
                    '--fqdn', DOMAIN, '--smtp-port', str(port)],
                   check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(('127.0.0.1', port))
    holder.listen(1)
    outname = os.path.join(top, 'svscan.out')
    proc = None
    try:
        with open(outname, 'wb') as out:
            proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-svscan'), 'start'],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={'PATH': '/usr/bin:/bin'},
                                    cwd='/')
        wait_for(lambda: b'does not stay up' in open(outname, 'rb').read()
                 or b'Ctrl-C' in open(outname, 'rb').read() and proc.poll() is not None,
                 'qmail-svscan start')
        time.sleep(0.5)
        text = open(outname, 'rb').read().decode()
        assert 'qmail-svscan: warning: qmail-smtpd does not stay up; its log ends: ' in text, text
        assert 'unable to bind' in text, text
        assert 'qmail-send does not stay up' not in text, text
        assert pid_of(os.path.join(home, 'service', 'qmail-send')), 'qmail-send is not up'
    finally:
        holder.close()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=TIMEOUT * 3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run([os.path.join(home, 'bin', 'qmail-svscan'), 'stop'], timeout=TIMEOUT * 3,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        remove_home(home)


def test_a_home_supervised_by_the_systems_svscan_is_not_started_again(tmp_path):
    """README "Start at boot": HOME/supervise/* linked into /etc/service,
    daemontools-run's svscan runs them.  make run asked `running` (no:
    HOME/service was empty), installed over the running daemons, and its
    start would have run a second supervise for each (failing on the
    lock).  Both now see the other supervise."""
    import tempfile
    top = tempfile.mkdtemp(prefix='qmailtest.', dir='/tmp')
    os.chmod(top, 0o755)
    home = os.path.join(top, 'qmail')
    subprocess.run([sys.executable, '-m', 'qmail.install', '--home', home, '--python', RUNTIME,
                    '--fqdn', DOMAIN, '--smtp-port', str(free_port())],
                   check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT)
    service = os.path.join(home, 'supervise', 'qmail-pop3d')    # (a stand-in: no mail moves)
    with open(os.path.join(service, 'run'), 'w') as f:
        f.write('#!/bin/sh\nexec sleep 600\n')
    svscan = os.path.join(home, 'bin', 'qmail-svscan')

    def ask(cmd):
        return subprocess.run([svscan, cmd], cwd='/', capture_output=True, timeout=TIMEOUT,
                              env={'PATH': '/usr/bin:/bin'})
    other = subprocess.Popen(['supervise', service], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: pid_of(service) is not None, 'the other supervise')
        assert ask('running').returncode == 0
        r = ask('start')
        assert r.returncode == 111, r
        assert r.stderr == ('qmail-svscan: supervised already, by another svscan '
                            '(/etc/service?): %s\n' % service).encode(), r.stderr
        assert not os.path.exists(os.path.join(home, 'service', 'qmail-send')) or \
            pid_of(os.path.join(home, 'service', 'qmail-send')) is None
    finally:
        subprocess.run(['svc', '-dx', service], timeout=TIMEOUT)
        try:
            other.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(other.pid, signal.SIGKILL)
            other.wait(timeout=TIMEOUT)
        remove_home(home)
