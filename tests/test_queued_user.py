"""qmail-queued runs only as qmailq."""

import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root (to be the wrong user)')
def test_qmail_queued_refuses_to_run_as_root(tmp_path):
    """Started by hand as root, its writers made root's files in the
    queue (the set-uid qmail-queue makes qmailq's whoever runs it)."""
    code = ('import sys; from qmail import queued; from qmail.lib import auto; '
            'auto.QMAIL = %r; sys.exit(queued.main([]))' % str(tmp_path))
    r = subprocess.run([sys.executable, '-c', code], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)
    assert r.returncode == 111
    assert b'must run as qmailq' in r.stderr
    assert os.listdir(tmp_path) == []           # no socket made
