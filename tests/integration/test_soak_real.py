"""The crash soak, short: 500 messages over SMTP to a Maildir and to
Postfix's smtp-sink, 30 SIGKILLs across every kind of qmail process, the
MTA under daemontools.  Fails if an acknowledged message is lost, a
Maildir delivery is repeated, a remote duplicate has no crash window to
explain it, or supervise does not bring a killed daemon back.  The long
run is `make soak` (tests/integration/soak_driver.py)."""

import os
import shutil

import pytest

from conftest import needs_root
from soak_driver import KINDS, SMTP_SINK, run_soak, summary

pytestmark = [needs_root,
              pytest.mark.skipif(shutil.which('svscan') is None,
                                 reason='daemontools not installed'),
              pytest.mark.skipif(not os.access(SMTP_SINK, os.X_OK),
                                 reason='smtp-sink not installed (bench/setup-postfix.sh)')]


def test_soak_500_messages_30_kills():
    report = run_soak(messages=500, kills=30, sessions=6)
    text = summary(report)
    print('\n' + text)
    assert not report['broken'], text
    assert report['acked'] == 500
    # every kind of process was killed at least once
    assert all(report['kills'][k] for k in KINDS), text
