"""qmail-listen's pool workers serve connection after connection in one
process: each gets tcp-environ(5) and its rule's variables, and nothing
of one connection's environment may reach the next."""

import os

from qmail import listen


def test_connection_environment_set_and_taken_back(monkeypatch):
    monkeypatch.setenv('KEEP', 'kept')
    monkeypatch.setenv('TCPREMOTEHOST', 'stale.example')      # not the worker's own
    base = listen.base_environ()
    assert b'TCPREMOTEHOST' not in base and base[b'KEEP'] == b'kept'
    env = listen.connection_env(base, ('::ffff:127.0.0.1', 25), ('10.0.0.9', 40001),
                                'mx.example', {'RELAYCLIENT': '', 'DATABYTES': '1000'})
    listen.set_environ(env)
    assert os.environ['TCPREMOTEIP'] == '10.0.0.9' and os.environ['TCPREMOTEPORT'] == '40001'
    assert os.environ['TCPLOCALIP'] == '127.0.0.1' and os.environ['PROTO'] == 'TCP'
    assert os.environ['RELAYCLIENT'] == '' and os.environ['DATABYTES'] == '1000'
    assert 'TCPREMOTEHOST' not in os.environ
    assert os.getenv('KEEP') == 'kept'
    os.environb[b'TCPREMOTEINFO'] = b'alice'     # what the session itself sets (AUTH)
    os.environ['KEEP'] = 'changed'
    listen.set_environ(base)
    for name in ('RELAYCLIENT', 'DATABYTES', 'TCPREMOTEIP', 'TCPREMOTEINFO', 'PROTO'):
        assert name not in os.environ, name
    assert os.environ['KEEP'] == 'kept'
    assert dict(os.environb) == base
    # what the C library sees too (putenv and unsetenv were called)
    import ctypes
    getenv = ctypes.CDLL(None).getenv
    getenv.restype = ctypes.c_char_p
    assert getenv(b'RELAYCLIENT') is None and getenv(b'KEEP') == b'kept'
