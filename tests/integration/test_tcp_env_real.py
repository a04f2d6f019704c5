"""tcp-env for real: a TCP connection on fd 0 between two loopback
addresses, their names served by dnsmasq (control/dnsservers), and an
ident server on the client's address, port 113."""

import os
import shutil
import socket
import subprocess
import threading

import pytest

from conftest import TIMEOUT, install_home, needs_root, remove_home
from delivery import dnsmasq

pytestmark = [needs_root, pytest.mark.skipif(
    shutil.which('dnsmasq') is None, reason='dnsmasq not installed')]

SERVER, CLIENT, NAMELESS = '127.57.0.1', '127.57.0.2', '127.57.0.3'
ZONE = ('ptr-record=1.0.57.127.in-addr.arpa,Server.QMT.test\n'
        'ptr-record=2.0.57.127.in-addr.arpa,client.qmt.test\n'
        'address=/3.0.57.127.in-addr.arpa/\n'       # (no PTR: NXDOMAIN)
        'no-resolv\nno-hosts\n')


@pytest.fixture(scope='module')
def home():
    with dnsmasq(ZONE, ('2.0.57.127.in-addr.arpa', 'PTR')) as port:
        path = install_home()
        with open(os.path.join(path, 'control', 'dnsservers'), 'w') as f:
            f.write('127.0.0.1:%d\n' % port)
        yield path
        remove_home(path)


class Ident:
    """An RFC 1413 server on ip:113 answering every question with
    "<question> : USERID : UNIX : <user>"; asked: what it was asked."""

    def __init__(self, ip, user):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, 113))
        self.sock.listen(5)
        self.user, self.asked = user, []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT)
                question = b''
                while not question.endswith(b'\n'):
                    chunk = conn.recv(100)
                    if not chunk:
                        break
                    question += chunk
                self.asked.append(question)
                conn.sendall(question.strip() + b' : USERID : UNIX : ' + self.user + b'\r\n')

    def close(self):
        self.sock.close()


def connected(client_ip=CLIENT):
    """(server's end, client's end, server port, client port)."""
    listener = socket.socket()
    listener.bind((SERVER, 0))
    listener.listen(1)
    client = socket.socket()
    client.bind((client_ip, 0))
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return server, client, server.getsockname()[1], client.getsockname()[1]


def tcp_env(home, args, stdin, env=None):
    """Run bin/tcp-env ARGS /usr/bin/env: (exit code, the variables)."""
    r = subprocess.run([os.path.join(home, 'bin', 'tcp-env')] + args + ['/usr/bin/env'],
                       stdin=stdin, capture_output=True, timeout=TIMEOUT,
                       env=env if env is not None else {'PATH': '/usr/bin:/bin'})
    got = dict(line.split('=', 1) for line in r.stdout.decode().splitlines() if '=' in line)
    return r.returncode, got, r.stderr


def test_the_variables_of_a_connection(home):
    ident = Ident(CLIENT, b'joe')
    try:
        server, client, sport, cport = connected()
        with server, client:
            code, got, err = tcp_env(home, ['-t5'], server)
    finally:
        ident.close()
    assert code == 0, err
    want = {'PROTO': 'TCP', 'TCPLOCALIP': SERVER, 'TCPLOCALPORT': str(sport),
            'TCPLOCALHOST': 'server.qmt.test', 'TCPREMOTEIP': CLIENT,
            'TCPREMOTEPORT': str(cport), 'TCPREMOTEHOST': 'client.qmt.test',
            'TCPREMOTEINFO': 'joe'}
    assert {k: got.get(k) for k in want} == want, got
    assert ident.asked == [b'%d , %d\r\n' % (cport, sport)]
    assert 'LC_CTYPE' not in got and 'TCP6REMOTEIP' not in got


def test_minus_R_asks_no_ident_and_unsets_it(home):
    server, client, sport, cport = connected()
    with server, client:
        code, got, err = tcp_env(home, ['-R'], server,
                                 env={'PATH': '/usr/bin:/bin', 'TCPREMOTEINFO': 'forged'})
    assert code == 0, err
    assert 'TCPREMOTEINFO' not in got and got['TCPREMOTEHOST'] == 'client.qmt.test'


def test_a_peer_without_a_name_and_without_ident(home):
    server, client, sport, cport = connected(NAMELESS)
    with server, client:
        code, got, err = tcp_env(home, ['-t', '2'], server,
                                 env={'PATH': '/usr/bin:/bin', 'TCPREMOTEHOST': 'forged'})
    assert code == 0, err
    assert got['TCPREMOTEIP'] == NAMELESS
    assert 'TCPREMOTEHOST' not in got and 'TCPREMOTEINFO' not in got


def test_an_ipv6_client_is_proto_tcp6(home):
    """tcp-environ(5): TCP6 for an IPv6 client, as qmail-listen and
    tcpserver say for the same client (it said TCP)."""
    listener = socket.socket(socket.AF_INET6)
    try:
        listener.bind(('::1', 0))
    except OSError:
        listener.close()
        pytest.skip('no ::1 here')
    listener.listen(1)
    client = socket.socket(socket.AF_INET6)
    client.connect(listener.getsockname()[:2])
    server, _ = listener.accept()
    listener.close()
    with server, client:
        code, got, err = tcp_env(home, ['-R'], server)
    assert code == 0, err
    assert (got['PROTO'], got['TCPREMOTEIP'], got['TCPLOCALIP']) == ('TCP6', '::1', '::1')
    for name in ('LOCALIP', 'LOCALPORT', 'REMOTEIP', 'REMOTEPORT'):     # ${PROTO}REMOTEIP
        assert got['TCP6' + name] == got['TCP' + name], name


@pytest.mark.parametrize('proto', ['TCP', 'TCP6'])
def test_proto_tcp_already_changes_nothing(home, proto):
    """TCP6: what Debian's tcpserver and qmail-listen say for an IPv6
    client; tcp-env asked the DNS and ident again, over the -l name."""
    env = {'PATH': '/usr/bin:/bin', 'PROTO': proto, 'TCPREMOTEIP': '192.0.2.9'}
    with open(os.devnull, 'rb') as null:
        code, got, err = tcp_env(home, [], null, env=env)
    assert code == 0, err
    assert got['TCPREMOTEIP'] == '192.0.2.9' and 'TCPLOCALIP' not in got
    assert got['PROTO'] == proto


@pytest.mark.parametrize('args', [['-R'], []])
def test_no_connection_or_no_program_is_111_and_silent(home, args):
    with open(os.devnull, 'rb') as null:
        r = subprocess.run([os.path.join(home, 'bin', 'tcp-env')] + args,
                           stdin=null, capture_output=True, timeout=TIMEOUT,
                           env={'PATH': '/usr/bin:/bin'})
        assert (r.returncode, r.stdout, r.stderr) == (111, b'', b'')
        code, got, err = tcp_env(home, args, null)
    assert (code, got, err) == (111, {}, b'')


def test_an_unparsable_dnsservers_makes_names_softdnserror(home):
    """As qmail-remote defers on it, tcp-env asks no other resolver."""
    path = os.path.join(home, 'control', 'dnsservers')
    with open(path) as f:
        good = f.read()
    with open(path, 'w') as f:
        f.write('not an address\n')
    try:
        server, client, sport, cport = connected()
        with server, client:
            code, got, err = tcp_env(home, ['-R'], server)
    finally:
        with open(path, 'w') as f:
            f.write(good)
    assert code == 0, err
    assert (got['TCPLOCALHOST'], got['TCPREMOTEHOST']) == ('softdnserror',) * 2
