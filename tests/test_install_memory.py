"""qmail-install's warning about a service script that limits memory
below what the programs need (a run script kept from C qmail)."""

import pytest

from qmail import install

# Life with qmail's qmail-smtpd run script, as admins keep it.
LWQ_SMTPD = '''#!/bin/sh
QMAILDUID=`id -u qmaild`
NOFILESGID=`id -g qmaild`
MAXSMTPD=`cat /var/qmail/control/concurrencyincoming`
LOCAL=`head -1 /var/qmail/control/me`
exec /usr/local/bin/softlimit -m 2000000 \\
    /usr/local/bin/tcpserver -v -R -l "$LOCAL" -x /etc/tcp.smtp.cdb -c "$MAXSMTPD" \\
    -u "$QMAILDUID" -g "$NOFILESGID" 0 smtp /var/qmail/bin/qmail-smtpd 2>&1
'''


@pytest.mark.parametrize('script, want', [
    (LWQ_SMTPD, (2000000, 'softlimit -m 2000000')),
    ('exec softlimit -m12000000 -o 100 tcpserver 0 25 x\n', (12000000, 'softlimit -m 12000000')),
    ('exec softlimit -a 90000000 -d 30000000 x\n', (30000000, 'softlimit -d 30000000')),
    ('exec chpst -u qmaild -m 5000000 x\n', (5000000, 'chpst -m 5000000')),
    ('ulimit -v 20000\nexec x\n', (20480000, 'ulimit -v 20000')),
    ('ulimit -Sd 3000; exec x\n', (3072000, 'ulimit -Sd 3000')),
    ('exec softlimit -o 100 -s 1000000 x\n', None),       # no limit on memory
    ('exec softlimit -m = x\n', None),                     # the hard limit: not known here
    ('# softlimit -m 2000000 (removed)\nexec x\n', None),   # a comment
    ('ulimit -n 1024\nexec x\n', None),
    ('ulimit -n 1024; exec prog -d 3000\n', None),       # another command's -d
    ('exec x softlimit\n', None),
    ('exec softlimit -m\n', None),                         # softlimit's own usage error
])
def test_memory_limit(script, want):
    assert install.memory_limit(script) == want


def test_memory_warning():
    warning = install.memory_warning('/h/supervise/qmail-smtpd/run', LWQ_SMTPD)
    assert warning == (
        'qmail-install: warning: /h/supervise/qmail-smtpd/run limits memory to 2000000 '
        "bytes (softlimit -m 2000000): this qmail's programs need more (Python); give at "
        'least 64000000, or no limit (README: "Memory limits")\n')
    assert install.memory_warning('x', LWQ_SMTPD.replace('2000000', '64000000')) is None
    assert install.memory_warning('x', 'exec tcpserver 0 25 qmail-smtpd\n') is None
    # vcheckpassword's Argon2 needs 64 MB of its own
    pop3 = 'exec softlimit -m 100000000 tcpserver 0 110 qmail-popup h vcheckpassword qmail-pop3d M\n'
    assert '200000000' in install.memory_warning('x', pop3)
    assert install.memory_warning('x', pop3.replace('100000000', '200000000')) is None
