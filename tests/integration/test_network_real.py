"""A two-host mail network on loopback: two installed homes of this
project, each with its MTA and its qmail-smtpd on port 25 of its own
127.56.0.x address, found through MX records served by dnsmasq."""

import os
import pwd
import re
import shutil
import socket
import subprocess
import time

import pytest

from conftest import TIMEOUT, install_home, needs_root, remove_home, run_as
from delivery import Mta, dnsmasq, ensure_user, maildirmake

pytestmark = [needs_root, pytest.mark.skipif(
    shutil.which('dnsmasq') is None, reason='dnsmasq not installed')]

HOSTS = {'a': ('hosta.net.test', '127.56.0.1'), 'b': ('hostb.net.test', '127.56.0.2')}
ZONE = ''.join('mx-host=%s,mx.%s,10\nhost-record=mx.%s,%s\n' % (d, d, d, ip)
               for d, ip in HOSTS.values())


def wait_for(cond, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError('timed out: ' + what)


def listening(ip):
    try:
        socket.create_connection((ip, 25), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope='module')
def network():
    first = next(iter(HOSTS.values()))[0]
    with dnsmasq(ZONE, ('mx.' + first, 'A')) as dnsport:
        yield from sites_up(dnsport)


def sites_up(dnsport):
    sites, procs = {}, []
    try:
        qmaild = pwd.getpwnam('qmaild')
        for key, (domain, ip) in HOSTS.items():
            home = install_home(domain)
            ctl = os.path.join(home, 'control')
            with open(os.path.join(ctl, 'dnsservers'), 'w') as f:
                f.write('127.0.0.1:%d\n' % dnsport)
            for name in ('timeoutconnect', 'timeoutremote'):
                with open(os.path.join(ctl, name), 'w') as f:
                    f.write('10\n')
            user = ensure_user('qmtnet' + key)
            maildirmake(os.path.join(user[3], 'Maildir'), user[1], user[2])
            mta = Mta(home, './Maildir/')
            smtpd = subprocess.Popen(
                [os.path.join(home, 'bin', 'qmail-listen'), '-u', str(qmaild.pw_uid),
                 '-g', str(qmaild.pw_gid), ip, '25', os.path.join(home, 'bin', 'qmail-smtpd')],
                env={'PATH': '/usr/bin:/bin'}, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            procs.append(smtpd)
            sites[key] = {'home': home, 'domain': domain, 'ip': ip, 'user': user, 'mta': mta}
        for site in sites.values():
            wait_for(lambda: listening(site['ip']), 'smtpd on ' + site['ip'])
        yield sites
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
        for site in sites.values():
            site['mta'].stop()
            remove_home(site['home'])


def maildir(user):
    d = os.path.join(user[3], 'Maildir', 'new')
    return {n: open(os.path.join(d, n), 'rb').read() for n in os.listdir(d)}


def test_mail_crosses_from_one_host_to_the_other(network):
    a, b = network['a'], network['b']
    before = set(maildir(b['user']))
    r = run_as(a['user'][:3], [a['home'] + '/bin/sendmail', '-t'],
               input=b'To: qmtnetb@hostb.net.test\nSubject: across\n\nhello b\n')
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(set(maildir(b['user'])) - before) == 1, 'delivery on host b')
    name, = set(maildir(b['user'])) - before
    data = maildir(b['user'])[name]
    assert data.startswith(b'Return-Path: <qmtneta@hosta.net.test>\n'
                           b'Delivered-To: qmtnetb@hostb.net.test\n')
    # b's qmail-smtpd wrote who connected: a's address, as seen by b
    assert re.search(rb'Received: from unknown \(HELO hosta.net.test\) \(127.0.0.1\)\n'
                     rb'  by hostb.net.test with E?SMTPS?', data) or \
        re.search(rb'Received: from unknown \(HELO hosta.net.test\) \(127\.\d+\.\d+\.\d+\)', data), \
        data[:600]
    assert b'\nSubject: across\n' in data and data.endswith(b'\n\nhello b\n')
    log = a['mta'].log()
    assert re.search(r'delivery \d+: success: 127\.56\.0\.2_accepted_message', log), log[-2000:]


def test_bounce_travels_back(network):
    a = network['a']
    before = set(maildir(a['user']))
    r = run_as(a['user'][:3], [a['home'] + '/bin/sendmail', 'nosuchuser@hostb.net.test'],
               input=b'Subject: to nobody\n\nb\n')
    assert r.returncode == 0, r.stderr
    wait_for(lambda: len(set(maildir(a['user'])) - before) == 1, 'the bounce on host a')
    name, = set(maildir(a['user'])) - before
    data = maildir(a['user'])[name]
    assert data.startswith(b'Return-Path: <>\n')
    assert b'Hi. This is the qmail-send program at hostb.net.test.' in data
    assert b'<nosuchuser@hostb.net.test>:\nSorry, no mailbox here by that name. (#5.1.1)' in data


def test_two_hundred_messages_across(network):
    a, b = network['a'], network['b']
    before = set(maildir(b['user']))
    from delivery import fast_queue
    fast_queue(a['home'], [([b'qmtnetb@hostb.net.test'], b'Subject: bulk %d\n\nb\n' % i)
                           for i in range(200)], sender=b'qmtneta@hosta.net.test')
    wait_for(lambda: len(set(maildir(b['user'])) - before) >= 200, '200 deliveries', 180)
    got = sorted(int(re.search(rb'\nSubject: bulk (\d+)\n', maildir(b['user'])[n]).group(1))
                 for n in set(maildir(b['user'])) - before)
    assert got == list(range(200))
