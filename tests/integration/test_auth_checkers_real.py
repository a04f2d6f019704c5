"""SMTP AUTH in qmail-smtpd with the same checkers as POP3: the system
users' checkpassword and the virtual users' vcheckpassword, as shipped."""

import os
import pwd
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import TIMEOUT, install_home, needs_root, remove_home
from delivery import ensure_user

pytestmark = needs_root

DOMAIN = 'auth.example.org'


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope='module')
def site():
    home = install_home(DOMAIN)
    open(os.path.join(home, 'control', 'smtpauthplaintext'), 'w').close()
    with open(os.path.join(home, 'control', 'authdelaysmtpd'), 'w') as f:
        f.write('0\n')
    user = ensure_user('qmtauth')
    subprocess.run(['chpasswd'], input=b'qmtauth:sys-secret-2\n', check=True, timeout=TIMEOUT)
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-vpasswd'), 'add', 'virtuser',
                        str(user[1]), str(user[2]), user[3]],
                       input=b'virt-secret-3\n', capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    procs, ports = [], {}
    for name in ('checkpassword', 'vcheckpassword'):
        port = free_port()
        # As root, no -u: the checker reads /etc/shadow or users/vpasswd.
        procs.append(subprocess.Popen(
            [os.path.join(home, 'bin', 'qmail-listen'), '127.0.0.1', str(port),
             os.path.join(home, 'bin', 'qmail-smtpd'), DOMAIN,
             os.path.join(home, 'bin', name), '/bin/true'],
            env={'PATH': '/usr/bin:/bin'}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        ports[name] = port
    deadline = time.monotonic() + TIMEOUT
    for port in ports.values():
        while True:
            try:
                socket.create_connection(('127.0.0.1', port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    yield {'home': home, 'ports': ports}
    for p in procs:
        p.terminate()
        p.wait(timeout=TIMEOUT)
    remove_home(home)


@pytest.mark.parametrize('checker, user, password', [
    ('checkpassword', 'qmtauth', 'sys-secret-2'),
    ('vcheckpassword', 'virtuser', 'virt-secret-3'),
])
def test_auth_then_relay(site, checker, user, password):
    port = site['ports'][checker]
    with smtplib.SMTP('127.0.0.1', port, timeout=TIMEOUT) as s:
        s.ehlo('client')
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail('a@example.com', ['far@elsewhere.example'], b'Subject: x\r\n\r\nb\r\n')
    with smtplib.SMTP('127.0.0.1', port, timeout=TIMEOUT) as s:
        s.ehlo('client')
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(user, 'wrong-' + password)
    with smtplib.SMTP('127.0.0.1', port, timeout=TIMEOUT) as s:
        s.ehlo('client')
        s.login(user, password)
        s.sendmail('a@example.com', ['far@elsewhere.example'], b'Subject: relayed\r\n\r\nb\r\n')
    todo = os.path.join(site['home'], 'queue', 'todo')
    envs = [open(os.path.join(todo, n), 'rb').read() for n in os.listdir(todo)]
    assert any(b'Tfar@elsewhere.example\0' in e for e in envs)
