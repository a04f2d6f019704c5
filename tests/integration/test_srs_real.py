"""SRS on a real home: a forward goes out with an SRS sender, and a
bounce to that address comes back through srsfilter to the real
sender; a forged SRS address bounces.  (qmail-send, qmail-lspawn,
qmail-local as the users, srsfilter as alias.)"""

import os
import re
import subprocess
import time

import pytest

from conftest import TIMEOUT, install_home, needs_root, remove_home
from delivery import Mta, ensure_user, maildirmake

pytestmark = needs_root

DOMAIN = 'test.example.org'
SRSDOMAIN = 'srs.test.example.org'


@pytest.fixture(scope='module')
def world():
    home = install_home(DOMAIN)
    users = [ensure_user(n) for n in ('qmtsrsa', 'qmtsrsb', 'qmtsrsc')]
    for name, uid, gid, h in users:
        maildirmake(os.path.join(h, 'Maildir'), uid, gid)
    b = users[1]
    with open(os.path.join(b[3], '.qmail'), 'w') as f:
        f.write('&qmtsrsc@%s\n' % DOMAIN)
    os.chown(os.path.join(b[3], '.qmail'), b[1], b[2])
    ctl = os.path.join(home, 'control')
    for name, text in (('srs_domain', SRSDOMAIN), ('srs_secrets', 'n3w\nold'),
                       ('srs_alwaysrewrite', '1'), ('virtualdomains', SRSDOMAIN + ':srs')):
        with open(os.path.join(ctl, name), 'w') as f:
            f.write(text + '\n')
        os.chmod(os.path.join(ctl, name), 0o644)
    with open(os.path.join(home, 'alias', '.qmail-srs-default'), 'w') as f:
        f.write('|%s/bin/srsfilter\n' % home)
    mta = Mta(home, './Maildir/')
    yield {'home': home, 'users': users, 'mta': mta}
    mta.stop()
    remove_home(home)


def inject(home, sender, recip, body=b'Subject: srs test\n\nhello\n'):
    r = subprocess.run([os.path.join(home, 'bin', 'qmail-inject'), '-f', sender, recip],
                       input=body, timeout=TIMEOUT)
    assert r.returncode == 0


def wait_mail(user, count=1):
    new = os.path.join(user[3], 'Maildir', 'new')
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        names = sorted(os.listdir(new))
        if len(names) >= count:
            return [open(os.path.join(new, n), 'rb').read() for n in names]
        time.sleep(0.05)
    raise AssertionError('no mail for %s' % user[0])


def test_forward_and_bounce_back(world):
    home, (a, _, c) = world['home'], world['users']
    inject(home, 'qmtsrsa@' + DOMAIN, 'qmtsrsb@' + DOMAIN)
    forwarded, = wait_mail(c)
    m = re.match(rb'Return-Path: <(SRS0=[^=]{4}=[A-Z2-7]{2}=test\.example\.org=qmtsrsa@'
                 + re.escape(SRSDOMAIN.encode()) + rb')>\n', forwarded)
    assert m, forwarded[:300]
    srsaddr = m.group(1).decode()
    # the same address, reversed by Mail::SRS with our secret
    r = subprocess.run(['perl', '-MMail::SRS', '-e',
                        'print Mail::SRS->new(Secret => "n3w")->reverse($ARGV[0])', srsaddr],
                       capture_output=True, timeout=TIMEOUT)
    assert r.stdout == b'qmtsrsa@' + DOMAIN.encode(), r

    # a bounce to it reaches the real sender, from the null sender
    inject(home, '', srsaddr, b'Subject: failure notice\n\nyour forward bounced\n')
    bounced, = wait_mail(a)
    assert bounced.startswith(b'Return-Path: <>\n'), bounced[:300]
    assert b'Delivered-To: srs-' + srsaddr.encode() in bounced
    assert b'your forward bounced' in bounced

    # a forged one (another hash) bounces to its sender
    forged = re.sub(r'^SRS0=....', 'SRS0=AAAA', srsaddr)
    inject(home, 'qmtsrsa@' + DOMAIN, forged)
    notices = [m for m in wait_mail(a, 2) if b'your forward bounced' not in m]
    assert b'not a valid SRS address of mine: its hash is wrong. (#5.1.1)' in notices[0], notices
    log = world['mta'].log()
    assert re.search(r'delivery \d+: failure: srsfilter:_Sorry,_that_is_not_a_valid_SRS', log), log
