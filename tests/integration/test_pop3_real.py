"""qmail-popup and qmail-pop3d facing the network: under Debian's
tcpserver (as root, so the checkers can become the users) and under
qmail-listen, with the real checkers: checkpassword for a system user
made here (useradd, chpasswd) and vcheckpassword for a virtual user made
by qmail-vpasswd.  Mail is delivered for real by the running MTA (sendmail
in, qmail-local out), then fetched and deleted by poplib, fetchmail and
getmail6; a delivery races an open session; STLS; a wrong password."""

import os
import poplib
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

from conftest import RUNTIME, TIMEOUT, install_home, needs_root, remove_home
from delivery import Mta, ensure_user, free_port, maildirmake

pytestmark = needs_root

DOMAIN = 'test.example.org'
USER, PASSWORD = 'qmtpop', 'Pop-Secret 1'
VUSER, VPASSWORD = 'vuser@virtual.example', 'virtual-Secret'
VLOCAL = 'qmtvirt'                      # vuser's mail: qmtvirt@DOMAIN
VHOMES = '/tmp/qmail-test-vhomes'
AUTHDELAY = 1

# The programs this test installs into the home's bin/, as qmail-install
# would: name, module, mode, whether it needs site-packages.
PROGRAMS = (
    ('qmail-popup', 'popup', 0o755, False),
    ('qmail-pop3d', 'pop3d', 0o755, False),
    ('checkpassword', 'checkpassword', 0o700, False),
    ('vcheckpassword', 'vcheckpassword', 0o700, True),
    ('qmail-vpasswd', 'vpasswd', 0o700, True),
)


def wait_port(port):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError('nothing listening on %s' % port)


def install_programs(home):
    from qmail import install
    import grp
    gid = grp.getgrnam('qmail').gr_gid
    for name, module, mode, needs_site in PROGRAMS:
        install.write_file(os.path.join(home, 'bin', name),
                           install.program_script(home, RUNTIME, module, needs_site),
                           mode, 0, gid)


class Server:
    """A POP3 server on a free 127.0.0.1 port, its stderr in a file."""

    def __init__(self, home, name, server, program):
        self.port = free_port()
        self.logpath = os.path.join(os.path.dirname(home), name + '.log')
        self.logf = open(self.logpath, 'ab')
        self.proc = subprocess.Popen(
            server + ['127.0.0.1', str(self.port)] + program,
            env={'PATH': os.path.join(home, 'bin') + ':/usr/bin:/bin'},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.logf)
        wait_port(self.port)

    def log(self):
        with open(self.logpath, 'rb') as f:
            return f.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        self.logf.close()


def popup_argv(home, checker):
    b = os.path.join(home, 'bin')
    return [os.path.join(b, 'qmail-popup'), DOMAIN, os.path.join(b, checker),
            os.path.join(b, 'qmail-pop3d'), 'Maildir']


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    home = install_home(DOMAIN)
    install_programs(home)
    ctl = os.path.join(home, 'control')
    with open(os.path.join(ctl, 'authdelaypop3'), 'w') as f:
        f.write('%d\n' % AUTHDELAY)
    d = tmp_path_factory.mktemp('cert')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
                    '-keyout', str(d / 'k'), '-out', str(d / 'c'),
                    '-subj', '/CN=' + DOMAIN, '-days', '1'],
                   check=True, capture_output=True, timeout=TIMEOUT)
    with open(os.path.join(ctl, 'servercert.pem'), 'wb') as f:
        f.write((d / 'c').read_bytes() + (d / 'k').read_bytes())
    os.chmod(os.path.join(ctl, 'servercert.pem'), 0o600)

    # A system user with a password, and a Maildir.
    user = ensure_user(USER)
    subprocess.run(['chpasswd'], input=('%s:%s\n' % (USER, PASSWORD)).encode(),
                   check=True, timeout=TIMEOUT)
    maildirmake(os.path.join(user[3], 'Maildir'), user[1], user[2])

    # A virtual user: its mail belongs to qmtvmail, kept under VHOMES.
    vmail = ensure_user('qmtvmail')
    shutil.rmtree(VHOMES, ignore_errors=True)
    os.makedirs(VHOMES, 0o755)
    os.chmod(VHOMES, 0o755)
    vhome = os.path.join(VHOMES, 'vuser')
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-vpasswd'), 'add', '-m', VUSER,
                        'qmtvmail', 'qmtvmail', vhome],
                       input=(VPASSWORD + '\n').encode(), capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(home, 'users', 'assign'), 'w') as f:
        f.write('=%s:qmtvmail:%d:%d:%s:::\n.\n' % (VLOCAL, vmail[1], vmail[2], vhome))
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-newu')], capture_output=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr

    mta = Mta(home, './Maildir/')
    servers = {
        'tcpserver': Server(home, 'tcpserver', ['tcpserver', '-H', '-R', '-l', DOMAIN],
                            popup_argv(home, 'checkpassword')),
        'listen': Server(home, 'listen', [os.path.join(home, 'bin', 'qmail-listen'), '-Q'],
                         popup_argv(home, 'checkpassword')),
        'virtual': Server(home, 'virtual', ['tcpserver', '-H', '-R', '-l', DOMAIN],
                          popup_argv(home, 'vcheckpassword')),
    }
    yield {'home': home, 'user': user, 'vmaildir': os.path.join(vhome, 'Maildir'),
           'maildir': os.path.join(user[3], 'Maildir'), 'mta': mta, 'servers': servers,
           'tmp': tmp_path_factory}
    for s in servers.values():
        s.stop()
    mta.stop()
    remove_home(home)
    shutil.rmtree(VHOMES, ignore_errors=True)


# -- helpers ------------------------------------------------------------------------

def names(maildir):
    return {sub: sorted(os.listdir(os.path.join(maildir, sub))) for sub in ('new', 'cur')}


def empty(maildir):
    for sub in ('new', 'cur'):
        for name in os.listdir(os.path.join(maildir, sub)):
            os.unlink(os.path.join(maildir, sub, name))


def deliver(site, to, subject, body=b'hello\n', maildir=None):
    """Mail in through sendmail, out through qmail-local; the path of the
    file, once qmail-pop3d will list it (modified before this second)."""
    maildir = maildir or site['maildir']
    before = set(os.listdir(os.path.join(maildir, 'new')))
    message = b'From: sender@example.com\nTo: %s\nSubject: %s\n\n%s' % (
        to.encode(), subject.encode(), body)
    r = subprocess.run([os.path.join(site['home'], 'bin', 'sendmail'), '-f',
                        'sender@example.com', to], input=message,
                       capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        new = set(os.listdir(os.path.join(maildir, 'new'))) - before
        if new:
            path = os.path.join(maildir, 'new', new.pop())
            while int(time.time()) <= int(os.stat(path).st_mtime):
                time.sleep(0.05)
            return path
        time.sleep(0.05)
    raise AssertionError('%s not delivered' % subject)


def pop(site, kind='tcpserver'):
    return poplib.POP3('127.0.0.1', site['servers'][kind].port, timeout=TIMEOUT)


def subject_of(lines):
    for line in lines:
        if line.startswith(b'Subject: '):
            return line[9:].decode()
    return None


# -- the tests ------------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['tcpserver', 'listen'])
def test_poplib_fetch_and_delete(site, kind):
    empty(site['maildir'])
    deliver(site, USER + '@' + DOMAIN, 'first ' + kind)
    deliver(site, USER + '@' + DOMAIN, 'second ' + kind, b'.dotted\nline\n')
    p = pop(site, kind)
    assert re.fullmatch(rb"\+OK <\d+(\.\d+)?\.\d+@%s>" % DOMAIN.encode(), p.getwelcome())
    caps = p.capa()
    assert {'TOP', 'UIDL', 'USER', 'STLS', 'SASL'} <= set(caps), caps
    p.user(USER)
    check_ok(p.pass_(PASSWORD))
    count, size = p.stat()
    assert count == 2
    _, listing, _ = p.list()
    assert len(listing) == 2
    _, uidls, _ = p.uidl()
    files = sorted(os.listdir(os.path.join(site['maildir'], 'new')))
    assert sorted(u.split()[1].decode() for u in uidls) == sorted(f.split(':')[0] for f in files)
    subjects = set()
    for i in (1, 2):
        _, lines, _ = p.retr(i)
        subjects.add(subject_of(lines))
        assert lines[0].startswith(b'Return-Path: <sender@example.com>')
        if subject_of(lines).startswith('second'):
            assert lines[-3:] == [b'.dotted', b'line', b'']     # qmail's extra blank line
    assert subjects == {'first ' + kind, 'second ' + kind}
    _, top, _ = p.top(1, 0)
    assert top[-1] == b'' and subject_of(top) is not None
    p.dele(1)
    p.dele(2)
    assert p.stat()[0] == 0
    p.quit()
    assert names(site['maildir']) == {'new': [], 'cur': []}


def check_ok(reply):
    assert reply.startswith(b'+OK'), reply


def test_seen_messages_move_to_cur(site):
    empty(site['maildir'])
    path = deliver(site, USER + '@' + DOMAIN, 'kept')
    p = pop(site)
    p.user(USER)
    p.pass_(PASSWORD)
    uid = p.uidl(1).split()[2]
    p.retr(1)
    p.quit()
    assert names(site['maildir']) == {'new': [], 'cur': [os.path.basename(path) + ':2,']}
    p = pop(site)
    p.user(USER)
    p.pass_(PASSWORD)
    assert p.uidl(1).split()[2] == uid          # the same UIDL from cur/
    p.dele(1)
    p.quit()
    assert names(site['maildir']) == {'new': [], 'cur': []}


def test_wrong_password_is_delayed_and_logged(site):
    server = site['servers']['tcpserver']
    p = pop(site)
    p.user(USER)
    start = time.monotonic()
    with pytest.raises(poplib.error_proto) as e:
        p.pass_('not the ' + PASSWORD)
    assert e.value.args[0] == b'-ERR authorization failed'
    assert time.monotonic() - start >= AUTHDELAY - 0.1
    p.user(USER)                # the connection goes on: try again
    check_ok(p.pass_(PASSWORD))
    p.quit()
    deadline = time.monotonic() + TIMEOUT
    want = b'qmail-popup: login failed: user %s from 127.0.0.1 by pass: checker exit 1\n' % USER.encode()
    while want not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log()
    assert want in log, log
    assert PASSWORD.encode() not in log and b'not the' not in log


def test_unknown_user_and_root_are_refused(site):
    for user, password in (('nosuchuser', 'x'), ('root', 'x'), (USER, '')):
        p = pop(site)
        if password:
            p.user(user)
            with pytest.raises(poplib.error_proto):
                p.pass_(password)
        p.quit()


def test_virtual_user(site):
    vmaildir = site['vmaildir']
    empty(vmaildir)
    path = deliver(site, VLOCAL + '@' + DOMAIN, 'for the virtual user', maildir=vmaildir)
    assert pwd.getpwuid(os.stat(path).st_uid).pw_name == 'qmtvmail'
    p = pop(site, 'virtual')
    p.user(VUSER)
    with pytest.raises(poplib.error_proto):
        p.pass_('wrong')
    p.user(VUSER.upper())
    check_ok(p.pass_(VPASSWORD))
    _, lines, _ = p.retr(1)
    assert subject_of(lines) == 'for the virtual user'
    p.dele(1)
    p.quit()
    assert names(vmaildir) == {'new': [], 'cur': []}
    # the system user is no virtual user, and the reverse
    p = pop(site, 'virtual')
    p.user(USER)
    with pytest.raises(poplib.error_proto):
        p.pass_(PASSWORD)
    p.quit()
    p = pop(site)
    p.user(VUSER)
    with pytest.raises(poplib.error_proto):
        p.pass_(VPASSWORD)
    p.quit()


def test_virtual_user_password_change(site):
    home = site['home']
    vpasswd = os.path.join(home, 'bin', 'qmail-vpasswd')
    r = subprocess.run([vpasswd, 'passwd', VUSER], input=b'changed-Secret\n',
                       capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    try:
        p = pop(site, 'virtual')
        p.user(VUSER)
        with pytest.raises(poplib.error_proto):
            p.pass_(VPASSWORD)
        p.user(VUSER)
        check_ok(p.pass_('changed-Secret'))
        p.quit()
    finally:
        r = subprocess.run([vpasswd, 'passwd', VUSER], input=(VPASSWORD + '\n').encode(),
                           capture_output=True, timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr


def stls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.mark.parametrize('kind', ['tcpserver', 'listen'])
def test_stls(site, kind):
    empty(site['maildir'])
    deliver(site, USER + '@' + DOMAIN, 'over tls', b'x' * 100 + b'\n' * 3000)
    p = pop(site, kind)
    check_ok(p.stls(stls_context()))
    assert 'STLS' not in p.capa()
    p.user(USER)
    check_ok(p.pass_(PASSWORD))
    _, lines, _ = p.retr(1)
    assert subject_of(lines) == 'over tls'
    p.dele(1)
    check_ok(p.quit())
    assert names(site['maildir']) == {'new': [], 'cur': []}


def test_a_password_waits_for_stls_where_the_network_could_read_it(site):
    """Over tcpserver, a client elsewhere (tcprules gives its connections
    another TCPREMOTEIP) is refused USER until STLS, then logs in; with
    control/pop3authplaintext it may log in in the clear.  Clients on
    this host (every other test here) may at once."""
    home = site['home']
    rules = os.path.join(str(site['tmp'].mktemp('rules')), 'tcp.pop3')
    with open(rules, 'w') as f:
        f.write('127.0.0.1:allow,TCPREMOTEIP="192.0.2.9"\n')
    subprocess.run(['tcprules', rules + '.cdb', rules + '.tmp'], stdin=open(rules),
                   check=True, timeout=TIMEOUT)
    server = Server(home, 'elsewhere', ['tcpserver', '-H', '-R', '-l', DOMAIN,
                                        '-x', rules + '.cdb'],
                    popup_argv(home, 'checkpassword'))
    plaintext = os.path.join(home, 'control', 'pop3authplaintext')
    try:
        empty(site['maildir'])
        deliver(site, USER + '@' + DOMAIN, 'after stls')
        p = poplib.POP3('127.0.0.1', server.port, timeout=TIMEOUT)
        capa = p.capa()
        assert 'STLS' in capa and 'USER' not in capa and 'SASL' not in capa, capa
        with pytest.raises(poplib.error_proto) as e:
            p.user(USER)
        assert e.value.args[0] == b'-ERR login in the clear refused: STLS first'
        check_ok(p.stls(stls_context()))
        assert 'USER' in p.capa()
        p.user(USER)
        check_ok(p.pass_(PASSWORD))
        _, lines, _ = p.retr(1)
        assert subject_of(lines) == 'after stls'
        check_ok(p.quit())

        open(plaintext, 'w').close()
        p = poplib.POP3('127.0.0.1', server.port, timeout=TIMEOUT)
        p.user(USER)
        check_ok(p.pass_(PASSWORD))
        assert p.stat()[0] == 1
        check_ok(p.quit())
        log = server.log()
        assert b'192.0.2.9' not in log and PASSWORD.encode() not in log, log
    finally:
        server.stop()
        if os.path.exists(plaintext):
            os.unlink(plaintext)


def test_delivery_racing_a_session(site):
    """A message delivered while a session is open is neither shown in
    it nor lost: the next session has it."""
    empty(site['maildir'])
    deliver(site, USER + '@' + DOMAIN, 'before')
    p = pop(site)
    p.user(USER)
    p.pass_(PASSWORD)
    assert p.stat()[0] == 1
    late = deliver(site, USER + '@' + DOMAIN, 'during')
    assert p.stat()[0] == 1
    assert len(p.list()[1]) == 1
    _, lines, _ = p.retr(1)
    assert subject_of(lines) == 'before'
    p.dele(1)
    p.quit()
    assert names(site['maildir']) == {'new': [os.path.basename(late)], 'cur': []}
    p = pop(site)
    p.user(USER)
    p.pass_(PASSWORD)
    _, lines, _ = p.retr(1)
    assert subject_of(lines) == 'during'
    p.dele(1)
    p.quit()
    assert names(site['maildir']) == {'new': [], 'cur': []}


def test_client_vanishing_mid_retr_changes_nothing(site):
    empty(site['maildir'])
    deliver(site, USER + '@' + DOMAIN, 'small')
    deliver(site, USER + '@' + DOMAIN, 'big', b'0123456789abcdef\n' * 400000)
    before = names(site['maildir'])
    s = socket.create_connection(('127.0.0.1', site['servers']['tcpserver'].port),
                                 timeout=TIMEOUT)
    f = s.makefile('rb')
    f.readline()
    s.sendall(b'USER %s\r\nPASS %s\r\n' % (USER.encode(), PASSWORD.encode()))
    assert f.readline().startswith(b'+OK')
    assert f.readline().startswith(b'+OK')
    s.sendall(b'DELE 1\r\nRETR 2\r\n')
    f.read(100000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\1\0\0\0\0\0\0\0')   # reset
    f.close()
    s.close()
    time.sleep(1)
    assert names(site['maildir']) == before
    p = pop(site)
    p.user(USER)
    p.pass_(PASSWORD)
    assert p.stat()[0] == 2
    p.quit()


def test_fetchmail(site):
    if shutil.which('fetchmail') is None:
        pytest.skip('no fetchmail')
    empty(site['maildir'])
    deliver(site, USER + '@' + DOMAIN, 'fetchmail one')
    deliver(site, USER + '@' + DOMAIN, 'fetchmail two', b'.leading dot\nend\n')
    d = site['tmp'].mktemp('fetchmail')
    out = d / 'out'
    rc = d / 'fetchmailrc'
    rc.write_text(
        'set no bouncemail\n'
        'poll 127.0.0.1 with proto POP3 port %d\n'
        '  user "%s" there with password "%s" is root here\n'
        '  sslproto ""\n'
        '  fetchall no keep\n'
        '  mda "/bin/sh -c \'cat >> %s; echo =====END >> %s\'"\n'
        % (site['servers']['tcpserver'].port, USER, PASSWORD, out, out))
    rc.chmod(0o600)
    r = subprocess.run(['fetchmail', '-f', str(rc), '--nodetach', '--nosyslog', '-v'],
                       env={'PATH': '/usr/bin:/bin', 'HOME': str(d), 'FETCHMAILHOME': str(d)},
                       capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    text = out.read_bytes()
    assert text.count(b'=====END') == 2, text
    assert b'Subject: fetchmail one' in text and b'Subject: fetchmail two' in text
    assert b'\n.leading dot\nend\n' in text            # unstuffed again
    assert names(site['maildir']) == {'new': [], 'cur': []}


def test_fetchmail_stls(site):
    if shutil.which('fetchmail') is None:
        pytest.skip('no fetchmail')
    empty(site['maildir'])
    deliver(site, USER + '@' + DOMAIN, 'fetchmail tls')
    d = site['tmp'].mktemp('fetchmailtls')
    out = d / 'out'
    rc = d / 'fetchmailrc'
    rc.write_text(
        'poll 127.0.0.1 with proto POP3 port %d\n'
        '  user "%s" there with password "%s" is root here\n'
        '  sslproto "tls1.2+" no sslcertck\n'
        '  fetchall no keep\n'
        '  mda "/bin/sh -c \'cat >> %s\'"\n'
        % (site['servers']['tcpserver'].port, USER, PASSWORD, out))
    rc.chmod(0o600)
    r = subprocess.run(['fetchmail', '-f', str(rc), '--nodetach', '--nosyslog', '-v'],
                       env={'PATH': '/usr/bin:/bin', 'HOME': str(d), 'FETCHMAILHOME': str(d)},
                       capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert b'STLS' in r.stdout + r.stderr
    assert b'Subject: fetchmail tls' in out.read_bytes()
    assert names(site['maildir']) == {'new': [], 'cur': []}


def test_getmail(site):
    """getmail6 refuses to deliver as root: it runs as nobody, into a
    Maildir of nobody's."""
    if shutil.which('getmail') is None:
        pytest.skip('no getmail')
    empty(site['maildir'])
    deliver(site, USER + '@' + DOMAIN, 'getmail one')
    deliver(site, USER + '@' + DOMAIN, 'getmail two', b'.dot\n')
    nobody = pwd.getpwnam('nobody')
    d = tempfile.mkdtemp(prefix='getmail.', dir='/tmp')
    try:
        dest = os.path.join(d, 'Maildir')
        for sub in ('tmp', 'new', 'cur'):
            os.makedirs(os.path.join(dest, sub))
        rc = os.path.join(d, 'getmailrc')
        with open(rc, 'w') as f:
            f.write('[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\n'
                    'port = %d\nusername = %s\npassword = %s\n\n'
                    '[destination]\ntype = Maildir\npath = %s/\n\n'
                    '[options]\ndelete = true\nread_all = true\nverbose = 2\n'
                    % (site['servers']['tcpserver'].port, USER, PASSWORD, dest))
        for dirpath, dirs, files in os.walk(d):
            for name in dirs + files + ['']:
                os.chown(os.path.join(dirpath, name), nobody.pw_uid, nobody.pw_gid)
        r = subprocess.run(['getmail', '--getmaildir', d, '--rcfile', rc],
                           env={'PATH': '/usr/bin:/bin', 'HOME': d},
                           user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
                           capture_output=True, timeout=TIMEOUT)
        assert r.returncode == 0, r.stdout + r.stderr
        got = {}
        for n in os.listdir(os.path.join(dest, 'new')):
            with open(os.path.join(dest, 'new', n), 'rb') as f:
                data = f.read()
            got[subject_of(data.split(b'\n'))] = data
        assert sorted(got) == ['getmail one', 'getmail two'], r.stdout
        assert got['getmail two'].endswith(b'\n.dot\n\n')     # unstuffed; the blank line
        assert names(site['maildir']) == {'new': [], 'cur': []}
    finally:
        shutil.rmtree(d, ignore_errors=True)
