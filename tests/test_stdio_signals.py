"""What every program shares from qmail/__init__.py and qmail.lib.error:
a failed write to fd 2 is lost, not an exit code of CPython's; ^C ends
the small tools quietly."""

import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code, **kw):
    """code in a fresh interpreter, whose qmail home does not exist (as on
    a machine without /var/qmail: nothing here may depend on one)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    code = 'from qmail.lib import auto; auto.QMAIL = "/nonexistent/home"; ' + code
    return subprocess.Popen([sys.executable, '-c', code], env=env, **kw)


def test_a_diagnostic_lost_to_a_full_disk_keeps_the_exit_code():
    """2>/dev/full: a usage error exited 120 (the flush at exit failed),
    not 100; C qmail ignores the failed write."""
    with open('/dev/full', 'w') as full:
        p = python('import sys, qmail; sys.stderr.write("qmail-x: usage\\n"); '
                   'sys.stderr.flush(); sys.exit(100)', stderr=full)
        assert p.wait(timeout=30) == 100
        p = python('import sys; from qmail.preline import run; sys.argv[1:] = []; run()',
                   stdin=subprocess.DEVNULL, stderr=full)
        assert p.wait(timeout=30) == 100


@pytest.mark.parametrize('module, args', [('predate', ['cat']), ('preline', ['cat'])])
def test_interrupt_ends_a_tool_quietly(module, args):
    """^C: killed by SIGINT, as a C qmail program, with no traceback."""
    p = python('import os, sys; from qmail.%s import run; sys.argv[1:] = %r; '
               'os.environ.update(UFLINE="From x\\n", RPLINE="", DTLINE=""); run()'
               % (module, args), stdin=subprocess.PIPE, stderr=subprocess.PIPE,
               stdout=subprocess.DEVNULL)
    try:
        time.sleep(1.0)         # started and reading its input
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=30)
        err = p.stderr.read()
    finally:
        p.stdin.close()
        p.stderr.close()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert code == -signal.SIGINT, (code, err)
    assert b'Traceback' not in err and b'KeyboardInterrupt' not in err, err
