"""qmail-smtpd facing the network: under Debian's tcpserver and under
qmail-listen, as qmaild, with tcprules, rblsmtpd, real clients (smtplib,
swaks), a relay battery and garbage."""

import os
import pwd
import re
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import TIMEOUT, install_home, needs_root, remove_home
from delivery import Mta, ensure_user, free_port, maildirmake

pytestmark = needs_root

DOMAIN = 'test.example.org'
RULES = '''127.0.0.2:allow,RELAYCLIENT="",RBLSMTPD=""
127.0.0.3:deny
127.0.0.4:allow,RBLSMTPD="-go away, you are listed"
:allow,RBLSMTPD=""
'''


def wait_port(port, host='127.0.0.1'):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError('nothing listening on %s' % port)


class Servers:
    """tcpserver and qmail-listen, each running qmail-smtpd, both as
    qmaild with the same rules, each with and without rblsmtpd."""

    def __init__(self, home):
        self.home = home
        self.procs = []
        self.ports = {}
        try:
            self.start(home)
        except BaseException:
            self.stop()
            raise

    def start(self, home):
        rules = os.path.join(os.path.dirname(home), 'tcp.smtp')
        with open(rules, 'w') as f:
            f.write(RULES)
        self.cdb = rules + '.cdb'
        subprocess.run(['tcprules', self.cdb, rules + '.tmp'], input=RULES.encode(),
                       check=True, timeout=TIMEOUT)
        os.chmod(self.cdb, 0o644)
        pw = pwd.getpwnam('qmaild')
        ids = ['-u', str(pw.pw_uid), '-g', str(pw.pw_gid)]
        smtpd = os.path.join(home, 'bin', 'qmail-smtpd')
        env = {'PATH': '/usr/bin:/bin'}
        same = ['-H', '-R', '-l', DOMAIN, '-x', self.cdb] + ids     # one run script's options
        for kind, argv in (
                ('tcpserver', ['tcpserver'] + same),
                ('listen', [os.path.join(home, 'bin', 'qmail-listen')] + same)):
            for rbl in (False, True):
                port = free_port()
                prog = (['rblsmtpd', smtpd] if rbl else [smtpd])
                p = subprocess.Popen(argv + ['0', str(port)] + prog, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.procs.append(p)
                self.ports[(kind, rbl)] = port
        for port in self.ports.values():
            wait_port(port)

    def stop(self):
        for p in self.procs:
            p.terminate()
            try:
                p.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope='module')
def site():
    home = install_home(DOMAIN)
    user = ensure_user('qmtrecv')
    maildirmake(os.path.join(user[3], 'Maildir'), user[1], user[2])
    mta = Mta(home, './Maildir/')
    try:
        servers = Servers(home)
    except BaseException:           # nothing left running when set-up fails
        mta.stop()
        remove_home(home)
        raise
    yield {'home': home, 'user': user, 'mta': mta, 'servers': servers}
    servers.stop()
    mta.stop()
    remove_home(home)


KINDS = ['tcpserver', 'listen']


def port(site, kind, rbl=False):
    return site['servers'].ports[(kind, rbl)]


def new_mail(user, before):
    d = os.path.join(user[3], 'Maildir', 'new')
    return [os.path.join(d, n) for n in sorted(os.listdir(d)) if n not in before]


def listing(user):
    return set(os.listdir(os.path.join(user[3], 'Maildir', 'new')))


def wait_new(user, before, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = new_mail(user, before)
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError('no new mail')


@pytest.mark.parametrize('kind', KINDS)
def test_smtplib_to_a_real_maildir(site, kind):
    user = site['user']
    before = listing(user)
    with smtplib.SMTP('127.0.0.1', port(site, kind), timeout=TIMEOUT) as s:
        code, caps = s.ehlo('client.example.com')
        assert code == 250 and b'PIPELINING' in caps and b'8BITMIME' in caps
        s.sendmail('sender@example.com', ['qmtrecv@' + DOMAIN],
                   b'Subject: via %s\r\n\r\nhello \xe9 8bit\r\n..dot\r\n' % kind.encode())
    path, = wait_new(user, before)
    data = open(path, 'rb').read()
    assert data.startswith(b'Return-Path: <sender@example.com>\nDelivered-To: qmtrecv@%s\n'
                           % DOMAIN.encode())
    assert re.search(rb'\nReceived: from unknown \(HELO client.example.com\) \(127.0.0.1\)\n'
                     rb'  by %s with SMTP; ' % DOMAIN.encode(), data), data[:400]
    assert re.search(rb'Received: \(qmail \d+ invoked from network\)', data)
    # smtplib stuffs the dot and qmail-smtpd takes it out again
    assert data.endswith(b'Subject: via %s\n\nhello \xe9 8bit\n..dot\n' % kind.encode())
    assert pwd.getpwuid(os.stat(path).st_uid).pw_name == 'qmtrecv'


@pytest.mark.parametrize('kind', KINDS)
def test_swaks(site, kind):
    user = site['user']
    before = listing(user)
    r = subprocess.run(['swaks', '--server', '127.0.0.1:%d' % port(site, kind),
                        '--to', 'qmtrecv@' + DOMAIN, '--from', 'swaks@example.com',
                        '--header', 'Subject: swaks via ' + kind],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    path, = wait_new(user, before)
    assert b'Subject: swaks via ' + kind.encode() in open(path, 'rb').read()


def talk(port, lines, source='127.0.0.1', timeout=10):
    """Send lines (bytes, CRLF added) in one write; return all replies."""
    s = socket.create_connection(('127.0.0.1', port), timeout=timeout,
                                 source_address=(source, 0))
    try:
        s.sendall(b''.join(line + b'\r\n' for line in lines))
        out = b''
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def codes(replies):
    return [line[:3] for line in replies.split(b'\r\n') if line[3:4] == b' ']


@pytest.mark.parametrize('kind', KINDS)
def test_rules_deny_and_relayclient(site, kind):
    p = port(site, kind)
    s = socket.create_connection(('127.0.0.1', p), timeout=10, source_address=('127.0.0.3', 0))
    assert s.recv(100) == b'', 'a denied client got a greeting'
    s.close()
    relay = [b'HELO x', b'MAIL FROM:<a@example.com>', b'RCPT TO:<far@elsewhere.example>', b'QUIT']
    assert codes(talk(p, relay, source='127.0.0.1')) == [b'220', b'250', b'250', b'553', b'221']
    assert codes(talk(p, relay, source='127.0.0.2')) == [b'220', b'250', b'250', b'250', b'221']


@pytest.mark.parametrize('kind', KINDS)
def test_rblsmtpd_in_front(site, kind):
    p = port(site, kind, rbl=True)
    out = talk(p, [b'HELO x', b'MAIL FROM:<a@example.com>', b'RCPT TO:<qmtrecv@%s>'
                   % DOMAIN.encode(), b'QUIT'], source='127.0.0.4')
    assert b'553 go away, you are listed' in out, out
    out = talk(p, [b'HELO x', b'QUIT'], source='127.0.0.1')
    assert codes(out) == [b'220', b'250', b'221'], out


RELAY_BATTERY = [
    b'<victim@elsewhere.example>',
    b'victim@elsewhere.example',
    b'<VICTIM@ElseWhere.EXAMPLE>',
    b'<victim@elsewhere.example.>',
    b'<@%s:victim@elsewhere.example>' % DOMAIN.encode(),
    b'<@a,@b:victim@elsewhere.example>',
    b'<victim@[1.2.3.4]>',
    b'<victim@%s.elsewhere.example>' % DOMAIN.encode(),
    b'<victim@%s@elsewhere.example>' % DOMAIN.encode(),
    b'<"victim@elsewhere.example">',
    b'<victim%elsewhere.example>',
    b'<elsewhere.example!victim>',
    b'<victim@elsewhere.example (comment)>',
    b'<victim\\@elsewhere.example@elsewhere.example>',
    # accepted, but they stay here: the domain is ours
    b'<victim%%elsewhere.example@%s>' % DOMAIN.encode(),
    b'<"victim@elsewhere.example"@%s>' % DOMAIN.encode(),
    b'<elsewhere.example!victim@%s>' % DOMAIN.encode(),
    b'<victim@%s>' % DOMAIN.upper().encode(),
    b'<victim@[127.0.0.1]>',
]


@pytest.mark.parametrize('kind', KINDS)
def test_relay_battery_queues_nothing_for_elsewhere(kind):
    """RELAYCLIENT unset: whatever qmail-smtpd accepts, qmail-send routes
    to a local domain; nothing is queued for a domain outside rcpthosts."""
    from qmail import send_rules
    home = install_home(DOMAIN)
    servers = Servers(home)
    try:
        p = servers.ports[(kind, False)]
        lines = [b'HELO x', b'MAIL FROM:<a@example.com>']
        lines += [b'RCPT TO:' + r for r in RELAY_BATTERY]
        lines += [b'DATA', b'Subject: relay?', b'', b'x', b'.', b'QUIT']
        out = talk(p, lines)
        got = codes(out)
        assert got[:3] == [b'220', b'250', b'250']
        rcpt = got[3:3 + len(RELAY_BATTERY)]
        assert len(rcpt) == len(RELAY_BATTERY)
        for addr, code in zip(RELAY_BATTERY, rcpt):
            foreign = b'@elsewhere.example' in addr.lower() or b'@[1.2.3.4]' in addr
            if foreign and DOMAIN.encode() not in addr.lower():
                assert code == b'553', (addr, code)
        q = os.path.join(home, 'queue', 'todo')
        routing = send_rules.Routing([DOMAIN.encode()], [], [], DOMAIN.encode())
        for name in os.listdir(q):
            env = open(os.path.join(q, name), 'rb').read()
            for rec in env.split(b'\0'):
                if rec[:1] == b'T':
                    channel, addr = send_rules.rewrite(rec[1:], routing)
                    assert channel == 0, 'queued for elsewhere: %r' % rec
    finally:
        servers.stop()
        remove_home(home)


@pytest.mark.parametrize('kind', KINDS)
def test_hundred_pipelined_commands(site, kind):
    lines = [b'EHLO x', b'MAIL FROM:<a@example.com>']
    lines += [b'RCPT TO:<qmtrecv-%d@%s>' % (i, DOMAIN.encode()) for i in range(97)]
    lines += [b'QUIT']
    got = codes(talk(port(site, kind), lines))
    assert got == [b'220', b'250', b'250'] + [b'250'] * 97 + [b'221'], got


def todo_count(home):
    return len(os.listdir(os.path.join(home, 'queue', 'todo')))


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('garbage', [
    b'\0\0\0\r\n' * 10,
    b'HELO ' + b'a' * 102400 + b'\r\n',
    bytes(range(256)) * 50,
    b'MAIL FROM:<a@b>\r\nRCPT TO:<' + b'x' * 100000 + b'@%s>\r\n' % DOMAIN.encode(),
])
def test_garbage_gets_an_answer_and_queues_nothing(kind, garbage):
    home = install_home(DOMAIN)
    servers = Servers(home)
    try:
        s = socket.create_connection(('127.0.0.1', servers.ports[(kind, False)]), timeout=10)
        assert s.recv(1000).startswith(b'220 ')
        s.sendall(garbage)
        s.sendall(b'QUIT\r\n')
        out = b''
        while True:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        s.close()
        assert out == b'' or re.match(rb'^(\d\d\d[ -][^\r\n]*\r\n)+$', out), out[:300]
        assert b'Traceback' not in out
        assert todo_count(home) == 0
    finally:
        servers.stop()
        remove_home(home)


@pytest.mark.parametrize('kind', KINDS)
def test_disconnect_mid_data_queues_nothing(kind):
    home = install_home(DOMAIN)
    servers = Servers(home)
    try:
        s = socket.create_connection(('127.0.0.1', servers.ports[(kind, False)]), timeout=10)
        s.recv(1000)
        s.sendall(b'HELO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<qmtrecv@%s>\r\nDATA\r\n'
                  % DOMAIN.encode())
        time.sleep(0.3)
        s.sendall(b'Subject: cut\r\n\r\n' + b'half a message\r\n' * 1000)
        s.close()
        time.sleep(1)
        assert todo_count(home) == 0
        assert os.listdir(os.path.join(home, 'queue', 'intd')) == []
        for i in range(23):
            assert os.listdir(os.path.join(home, 'queue', 'mess', str(i))) == []
    finally:
        servers.stop()
        remove_home(home)


@pytest.mark.parametrize('kind', KINDS)
def test_slow_drip_is_cut_off(kind):
    """One byte a second: the session's lifetime ends it."""
    home = install_home(DOMAIN)
    with open(os.path.join(home, 'control', 'lifetimesmtpd'), 'w') as f:
        f.write('3\n')
    servers = Servers(home)
    try:
        s = socket.create_connection(('127.0.0.1', servers.ports[(kind, False)]), timeout=30)
        s.recv(1000)
        start = time.monotonic()
        closed = False
        reply = b''
        for ch in b'HELO a-very-slow-client.example.com\r\n':
            try:
                s.sendall(bytes((ch,)))
            except OSError:
                closed = True
                break
            time.sleep(0.5)
            s.setblocking(False)
            try:
                chunk = s.recv(1000)
                reply += chunk
                if chunk == b'' or b'451' in reply:
                    closed = True
                    break
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
            if time.monotonic() - start > 20:
                break
        s.close()
        assert closed, 'a slow drip kept the session open: %r' % reply
    finally:
        servers.stop()
        remove_home(home)


def test_ipv6_client_under_listen(site):
    """qmail-listen on :: takes IPv6 and IPv4 clients; the Received line
    shows the IPv6 address."""
    home, user = site['home'], site['user']
    p = free_port()
    pw = pwd.getpwnam('qmaild')
    proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-listen'), '-u', str(pw.pw_uid),
                             '-g', str(pw.pw_gid), '::', str(p),
                             os.path.join(home, 'bin', 'qmail-smtpd')],
                            env={'PATH': '/usr/bin:/bin'}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(p, '::1')
        before = listing(user)
        with smtplib.SMTP('::1', p, timeout=TIMEOUT) as s:
            s.sendmail('six@example.com', ['qmtrecv@' + DOMAIN], b'Subject: v6\r\n\r\nb\r\n')
        path, = wait_new(user, before)
        data = open(path, 'rb').read()
        assert re.search(rb'Received: from unknown \(HELO [^)]*\) \([^)]*::1[^)]*\)', data), data[:400]
        with smtplib.SMTP('127.0.0.1', p, timeout=TIMEOUT) as s:
            assert s.noop()[0] == 250
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)


def test_unknown_local_recipients_refused_at_rcpt_time():
    """control/rcptcheck with the map qmail-newrcpt builds: a user without
    a mailbox by that name gets 550 at RCPT, a real one 250; nothing
    refused is queued (no bounce, no backscatter later)."""
    home = install_home(DOMAIN)
    user = ensure_user('qmtrcpt')   # (not the site's user: ensure_user empties its home)
    with open(os.path.join(user[3], '.qmail-lists-default'), 'w') as f:
        f.write('./Maildir/\n')
    os.chown(os.path.join(user[3], '.qmail-lists-default'), user[1], user[2])
    open(os.path.join(home, 'control', 'rcptcheck'), 'w').close()
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-newrcpt')], capture_output=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    servers = Servers(home)
    try:
        for kind in KINDS:
            lines = [b'HELO x', b'MAIL FROM:<a@example.com>']
            want = {b'qmtrcpt': b'250', b'QMTRCPT': b'250', b'qmtrcpt-lists-x': b'250',
                    b'qmtrcpt-nosuch': b'550', b'nobody-at-all-here': b'550',
                    b'postmaster': b'250'}
            for local in want:
                lines.append(b'RCPT TO:<%s@%s>' % (local, DOMAIN.encode()))
            lines.append(b'QUIT')
            got = codes(talk(servers.ports[(kind, False)], lines))[3:-1]
            assert got == list(want.values()), (kind, got)
        assert todo_count(home) == 0
    finally:
        servers.stop()
        remove_home(home)


def test_listen_worker_reuse_keeps_connections_apart(site):
    """With -c 1 one pre-forked worker serves every connection in turn
    (the log shows one pid).  What the rules gave one client stays with
    it: RELAYCLIENT for 127.0.0.2 never reaches 127.0.0.1 after it, nor
    TCPREMOTEIP; a client that vanishes mid-DATA or mid-command leaves the
    worker fit for the next.  A worker killed mid-session is replaced."""
    home = site['home']
    p = free_port()
    pw = pwd.getpwnam('qmaild')
    err = os.path.join(os.path.dirname(home), 'listen-reuse.log')
    cdb = site['servers'].cdb
    with open(err, 'wb') as errf:
        # -x relative, as djb's run scripts give it: qmail-smtpd's chdir
        # to its home in one session must not move it for the next.
        proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-listen'), '-v', '-c', '1',
                                 '-x', os.path.basename(cdb),
                                 '-u', str(pw.pw_uid), '-g', str(pw.pw_gid), '0', str(p),
                                 os.path.join(home, 'bin', 'qmail-smtpd')],
                                env={'PATH': '/usr/bin:/bin'}, stdout=subprocess.DEVNULL,
                                stderr=errf, cwd=os.path.dirname(cdb))
    try:
        wait_port(p)
        relay = [b'HELO x', b'MAIL FROM:<a@example.com>', b'RCPT TO:<far@elsewhere.example>',
                 b'QUIT']
        for _ in range(3):
            assert codes(talk(p, relay, source='127.0.0.2')) == [b'220', b'250', b'250', b'250', b'221']
            assert codes(talk(p, relay, source='127.0.0.1')) == [b'220', b'250', b'250', b'553', b'221']
        # a client gone mid-DATA, another mid-line
        s = socket.create_connection(('127.0.0.1', p), timeout=10, source_address=('127.0.0.2', 0))
        s.sendall(b'HELO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<qmtrecv@%s>\r\nDATA\r\n'
                  b'Subject: half\r\n' % DOMAIN.encode())
        time.sleep(0.3)
        s.close()
        s = socket.create_connection(('127.0.0.1', p), timeout=10)
        s.sendall(b'HELO half-a-comm')
        s.close()
        assert codes(talk(p, relay, source='127.0.0.1')) == [b'220', b'250', b'250', b'553', b'221']
        with smtplib.SMTP('127.0.0.1', p, timeout=TIMEOUT) as c:     # a whole message
            c.sendmail('a@example.com', ['qmtrecv@' + DOMAIN], b'Subject: reuse\r\n\r\nx\r\n')
        log = open(err).read()
        assert 'warning' not in log, log
        pids = set(re.findall(r'^qmail-listen: pid (\d+) from ', log, re.M))
        assert len(pids) == 1, log
        assert 'status: 1/1' in log and 'status: 0/1' in log, log
        # "end" with the wait status, as tcpserver writes it (log parsers)
        ends = re.findall(r'^qmail-listen: end (\d+) status (\d+)$', log, re.M)
        assert {p for p, _ in ends} == pids, log
        assert {st for _, st in ends} == {'0', '256'}, log      # QUIT; a client gone
        # kill the worker in a session: a new one takes the next client
        s = socket.create_connection(('127.0.0.1', p), timeout=10)
        assert s.recv(100).startswith(b'220')
        killed = pids.pop()
        os.kill(int(killed), 9)
        s.close()
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                got = codes(talk(p, relay, source='127.0.0.2'))
                if got:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, 'no worker after a kill'
            time.sleep(0.1)
        assert got == [b'220', b'250', b'250', b'250', b'221']
        log = open(err).read()
        assert len(set(re.findall(r'^qmail-listen: pid (\d+) from ', log, re.M))) == 2, log
        assert re.search(r'^qmail-listen: end %s status 9$' % killed, log, re.M), log
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)


def test_listen_killed_mid_session_frees_the_port(site):
    """kill -9 of qmail-listen while a worker holds a session: the worker
    lets go of the port at once (a restarted qmail-listen binds it, as
    supervise would start it) and finishes its session; idle workers go."""
    home = site['home']
    p = free_port()
    pw = pwd.getpwnam('qmaild')
    argv = [os.path.join(home, 'bin', 'qmail-listen'), '-u', str(pw.pw_uid),
            '-g', str(pw.pw_gid), '0', str(p), os.path.join(home, 'bin', 'qmail-smtpd')]
    first = subprocess.Popen(argv, env={'PATH': '/usr/bin:/bin'},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        wait_port(p)
        s = socket.create_connection(('127.0.0.1', p), timeout=10)
        assert s.recv(100).startswith(b'220')
        first.kill()
        first.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + 10
        while True:
            second = subprocess.Popen(argv, env={'PATH': '/usr/bin:/bin'},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            if second.poll() is None:
                break
            assert time.monotonic() < deadline, 'the port stayed taken'
        with smtplib.SMTP('127.0.0.1', p, timeout=TIMEOUT) as c:
            assert c.noop()[0] == 250
        s.sendall(b'NOOP\r\n')                  # the old session goes on
        assert s.recv(100).startswith(b'250')
        s.sendall(b'QUIT\r\n')
        assert s.recv(100).startswith(b'221')
        s.close()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=TIMEOUT)


def test_listen_without_its_rules_drops_the_connection_and_says_why(site):
    """As tcpserver: the connection is dropped, and the log says why
    (the README once named /etc/tcp.smtp.cdb, which nothing makes)."""
    home = site['home']
    pw = pwd.getpwnam('qmaild')
    missing = os.path.join(os.path.dirname(home), 'no-such-rules.cdb')
    err = log_of_a_dropped_connection(home, [
        '-v', '-c', '1', '-x', missing, '-u', str(pw.pw_uid), '-g', str(pw.pw_gid), '0',
        os.path.join(home, 'bin', 'qmail-smtpd')])
    assert ('qmail-listen: warning: dropping connection, unable to read %s: '
            'file does not exist' % missing) in err, err


def log_of_a_dropped_connection(home, args):
    """qmail-listen with args (the port put in before the program, the
    last of them), one client it must drop at once: its log."""
    p = free_port()
    proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-listen')] + args[:-1]
                            + [str(p), args[-1]],
                            env={'PATH': '/usr/bin:/bin'}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_port(p)
        s = socket.create_connection(('127.0.0.1', p), timeout=10)
        s.settimeout(10)
        assert s.recv(100) == b''
        s.close()
    finally:
        proc.terminate()
        err = proc.communicate(timeout=TIMEOUT)[1].decode()
    return err


def test_listen_as_tcpserver_banner_fork_failure_and_nameless_variable(site):
    """-B is written before the rules are looked at (a client then
    dropped got nothing); a fork that fails drops that connection alone
    (it stopped the listener: exit 111, the port closed); a rule's
    variable with no name (tcprules takes ="x") is none (the client it
    allows was dropped)."""
    import pathlib
    import shutil
    import tempfile
    home = site['home']
    uid = 64917                 # no one's: its processes are the listener's alone
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix='qmailtest.', dir='/tmp'))
    rules = tmp_path / 'rules'
    rules.write_text('127.0.0.5:deny\n127.0.0.6:allow,="x",Y="1"\n:allow\n')
    subprocess.run(['tcprules', str(tmp_path / 'rules.cdb'), str(tmp_path / 'rules.tmp')],
                   stdin=open(rules), check=True, timeout=TIMEOUT)
    prog = tmp_path / 'prog'
    prog.write_text('#!/bin/sh\necho "Y=$Y"\nexec sleep 2\n')
    prog.chmod(0o755)
    os.chmod(tmp_path, 0o755)
    p = free_port()
    proc = subprocess.Popen(['prlimit', '--nproc=4', os.path.join(home, 'bin', 'qmail-listen'),
                             '-v', '-c', '10', '-B', 'HELLO\r\n',
                             '-x', str(tmp_path / 'rules.cdb'), '-u', str(uid),
                             '-g', str(uid), '0', str(p), str(prog)],
                            env={'PATH': '/usr/bin:/bin'}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

    def read_all(source):
        s = socket.create_connection(('127.0.0.1', p), source_address=(source, 0), timeout=10)
        s.settimeout(10)
        out = b''
        try:
            while True:
                chunk = s.recv(100)
                if not chunk:
                    return out
                out += chunk
        finally:
            s.close()
    try:
        wait_port(p)
        assert read_all('127.0.0.5') == b'HELLO\r\n'                # denied: the banner
        assert read_all('127.0.0.6') == b'HELLO\r\nY=1\n'
        # the user may have 4 processes: some of these connections cannot fork
        socks = [socket.create_connection(('127.0.0.1', p), timeout=10) for _ in range(6)]
        time.sleep(1)
        for s in socks:
            s.close()
        time.sleep(2.5)
        assert proc.poll() is None, 'qmail-listen stopped'
        assert read_all('127.0.0.7').startswith(b'HELLO\r\nY=\n')    # still serving
    finally:
        proc.terminate()
        err = proc.communicate(timeout=TIMEOUT)[1].decode()
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert 'warning: dropping connection, unable to fork' in err, err
    assert 'OSError' not in err, err


def test_listen_names_a_program_it_cannot_run(site):
    """As tcpserver: "unable to run PROG: file does not exist" (it said
    "warning: FileNotFoundError in child")."""
    err = log_of_a_dropped_connection(site['home'], ['-c', '1', '-u', '64917', '-g', '64917',
                                                     '0', '/nonexistent/prog'])
    assert ('qmail-listen: warning: dropping connection, unable to run /nonexistent/prog: '
            'file does not exist') in err, err


def test_listen_out_of_descriptors_at_start_says_so(site):
    """Under a low ulimit -n qmail-listen cannot make its pipes: the
    system's reason, not "internal bug: OSError"."""
    import resource
    home = site['home']
    pw = pwd.getpwnam('qmaild')

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (12, 12))
    proc = subprocess.run([os.path.join(home, 'bin', 'qmail-listen'), '-u', str(pw.pw_uid),
                           '-g', str(pw.pw_gid), '127.0.0.1', str(free_port()),
                           os.path.join(home, 'bin', 'qmail-smtpd')],
                          env={'PATH': '/usr/bin:/bin'}, stdin=subprocess.DEVNULL,
                          capture_output=True, preexec_fn=low, timeout=TIMEOUT)
    assert (proc.returncode, proc.stderr) == (
        111, b'qmail-listen: fatal: unable to start: Too many open files\n'), proc


def private_dirty_kb(pid) -> int:
    with open('/proc/%d/smaps_rollup' % pid) as f:
        for line in f:
            if line.startswith('Private_Dirty:'):
                return int(line.split()[1])
    raise AssertionError('no Private_Dirty for %d' % pid)


def test_listen_workers_share_the_parsed_control_files():
    """Each qmail-listen worker parsed rcpthosts and badmailfrom for
    itself at its first session: of 100,000 lines each, 41 MB of its
    own a worker (a hundred workers, 4 GB).  The listener loads them
    before it forks, and a worker that finds them unchanged uses them
    in the pages it shares with it.  A change is still seen at once."""
    home = install_home(DOMAIN)
    ctl = os.path.join(home, 'control')
    with open(os.path.join(ctl, 'rcpthosts'), 'w') as f:
        f.write(DOMAIN + '\n' + ''.join('d%06d.example.net\n' % i for i in range(50000)))
    with open(os.path.join(ctl, 'badmailfrom'), 'w') as f:
        f.write(''.join('spam%06d@example.com\n' % i for i in range(50000)))
    # A file changed a moment ago is read again each time (its stamp is
    # not trusted: control.settled); these were written long before.
    time.sleep(0.2)
    p = free_port()
    pw = pwd.getpwnam('qmaild')
    proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-listen'), '-c', '2',
                             '-u', str(pw.pw_uid), '-g', str(pw.pw_gid), '127.0.0.1', str(p),
                             os.path.join(home, 'bin', 'qmail-smtpd')],
                            env={'PATH': '/usr/bin:/bin'}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(p)
        known = [b'HELO x', b'MAIL FROM:<a@example.com>', b'RCPT TO:<u@d012345.example.net>',
                 b'QUIT']
        for _ in range(4):      # both workers serve (one takes each in turn, or one all)
            assert codes(talk(p, known)) == [b'220', b'250', b'250', b'250', b'221']
        assert codes(talk(p, [b'HELO x', b'MAIL FROM:<spam000007@example.com>',
                              b'RCPT TO:<u@%s>' % DOMAIN.encode(), b'QUIT'])) \
            == [b'220', b'250', b'250', b'553', b'221']
        workers = subprocess.run(['pgrep', '-P', str(proc.pid)], capture_output=True,
                                 text=True, timeout=TIMEOUT).stdout.split()
        assert workers
        sizes = [private_dirty_kb(int(w)) for w in workers]
        # (about 1.5 MB each; 20 MB each when every worker parsed its own)
        assert max(sizes) < 8000, sizes
        # A change is seen at the next session.  A worker that reads the
        # files again (once they are settled) makes way for a new one,
        # forked after the listener read them: shared again.
        with open(os.path.join(ctl, 'rcpthosts'), 'a') as f:
            f.write('new.example.net\n')
        new = [b'HELO x', b'MAIL FROM:<a@example.com>', b'RCPT TO:<u@new.example.net>', b'QUIT']
        for _ in range(3):
            assert codes(talk(p, new)) == [b'220', b'250', b'250', b'250', b'221']
        time.sleep(0.2)
        for _ in range(8):
            assert codes(talk(p, new)) == [b'220', b'250', b'250', b'250', b'221']
        time.sleep(0.5)         # the last one's successor forked
        after = subprocess.run(['pgrep', '-P', str(proc.pid)], capture_output=True,
                               text=True, timeout=TIMEOUT).stdout.split()
        assert set(after) != set(workers)
        sizes = [private_dirty_kb(int(w)) for w in after]
        assert max(sizes) < 8000, sizes
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
        remove_home(home)


def test_listen_worker_keeps_a_big_morercpthosts_cdb_open_between_sessions():
    """morercpthosts.cdb over 16 MiB is read in pieces through its
    descriptor.  A qmail-listen worker took such a Config for one it
    could not keep (a descriptor held between sessions retired it), so
    every session read every control file again (37-87 ms).  Now the
    Config is kept and its descriptor counted as kept on purpose: the
    worker serves on, and a new qmail-newmrh is seen at once."""
    home = install_home(DOMAIN)
    ctl = os.path.join(home, 'control')
    with open(os.path.join(ctl, 'morercpthosts'), 'w') as f:
        f.write(''.join('d%06d.example.net\n' % i for i in range(450000)))
    subprocess.run([os.path.join(home, 'bin', 'qmail-newmrh')], check=True, timeout=TIMEOUT)
    cdbpath = os.path.join(ctl, 'morercpthosts.cdb')
    assert os.path.getsize(cdbpath) > 1 << 24
    time.sleep(0.2)             # settled (control.settled)
    p = free_port()
    pw = pwd.getpwnam('qmaild')
    err = os.path.join(os.path.dirname(home), 'listen-cdb.log')
    with open(err, 'wb') as errf:
        proc = subprocess.Popen([os.path.join(home, 'bin', 'qmail-listen'), '-v', '-c', '1',
                                 '-u', str(pw.pw_uid), '-g', str(pw.pw_gid), '127.0.0.1', str(p),
                                 os.path.join(home, 'bin', 'qmail-smtpd')],
                                env={'PATH': '/usr/bin:/bin'}, stdout=subprocess.DEVNULL,
                                stderr=errf)
    try:
        wait_port(p)

        def rcpt(domain):
            return codes(talk(p, [b'HELO x', b'MAIL FROM:<a@example.com>',
                                  b'RCPT TO:<u@%s>' % domain, b'QUIT']))[3]
        for _ in range(3):
            assert rcpt(b'd123456.example.net') == b'250'
            assert rcpt(b'elsewhere.example') == b'553'
        worker, = subprocess.run(['pgrep', '-P', str(proc.pid)], capture_output=True,
                                 text=True, timeout=TIMEOUT).stdout.split()
        held = [os.readlink('/proc/%s/fd/%s' % (worker, fd))
                for fd in os.listdir('/proc/%s/fd' % worker)]
        assert cdbpath in held, held
        log = open(err).read()
        assert 'warning' not in log, log
        assert len(set(re.findall(r'^qmail-listen: pid (\d+) from ', log, re.M))) == 1, log
        with open(os.path.join(ctl, 'morercpthosts'), 'a') as f:
            f.write('new.example.net\n')
        subprocess.run([os.path.join(home, 'bin', 'qmail-newmrh')], check=True, timeout=TIMEOUT)
        assert rcpt(b'new.example.net') == b'250'
        assert 'warning' not in open(err).read()
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
        remove_home(home)
