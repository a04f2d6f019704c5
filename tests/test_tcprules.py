"""tcprules cdb files read as Debian's tcpserver reads them."""

import os
import shutil
import subprocess

import pytest

from qmail.lib import tcprules

DATA = os.path.join(os.path.dirname(__file__), 'data', 'tcprules')


def test_candidates_order():
    assert tcprules.candidates('1.2.3.4', 'a.example.com', 'joe') == [
        'joe@1.2.3.4', '1.2.3.4', '=a.example.com', '1.2.3.', '1.2.', '1.',
        '=.example.com', '=.com', '=', '']
    assert tcprules.candidates('2001:db8::1') == [
        '2001:db8::1', '2001:db8::', '2001:db8:', '2001:', '']


@pytest.mark.skipif(not shutil.which('tcprules'), reason='ucspi-tcp not installed')
@pytest.mark.parametrize('ip, host, info, want', [
    ('127.0.0.1', None, None, (True, {'RELAYCLIENT': ''})),
    ('10.1.2.3', None, None, (False, {})),
    ('::1', None, None, (True, {'X': 'v6'})),
    ('2001:db8::1', None, None, (True, {'Y': 'exact6'})),
    ('2001:db8::5', None, None, (True, {'DEF': '1'})),
    ('5.5.5.5', 'a.b.example.com', None, (True, {'H': '2'})),
    ('5.5.5.5', 'host.example.com', None, (True, {'H': '1'})),
    ('1.2.3.4', None, 'joe', (True, {'J': '1'})),
    ('1.2.3.4', None, None, (True, {'DEF': '1'})),
])
def test_same_answer_as_tcprulescheck(tmp_path, ip, host, info, want):
    path = str(tmp_path / 'rules.cdb')
    with open(os.path.join(DATA, 'rules.txt'), 'rb') as f:
        subprocess.run(['tcprules', path, str(tmp_path / 'rules.tmp')], stdin=f,
                       check=True, timeout=30)
    allowed, env, rule = tcprules.lookup(path, ip, host, info)
    assert (allowed, env) == want
    check_env = {'TCPREMOTEIP': ip, 'PATH': '/usr/bin:/bin'}
    if host:
        check_env['TCPREMOTEHOST'] = host
    if info:
        check_env['TCPREMOTEINFO'] = info
    out = subprocess.run(['tcprulescheck', path], env=check_env, capture_output=True,
                         text=True, timeout=30).stdout
    assert out.startswith('rule %s:\n' % rule), (out, rule)
