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


def compile_rules(path, data):
    """What tcprules does: a new cdb, renamed over the old one."""
    from qmail.lib import cdb
    with open(path + '.tmp', 'wb') as f:
        w = cdb.Writer(f)
        for k, v in data.items():
            w.add(k, v)
        w.finish()
    os.rename(path + '.tmp', path)


def test_rules_kept_while_unchanged_and_reread_when_changed(tmp_path, monkeypatch):
    """qmail-listen's workers look rules up per connection: the file is
    read again only once it changed (replaced by tcprules' rename)."""
    from qmail.lib import cdb, control, tcprules
    path = str(tmp_path / 'tcp.smtp.cdb')

    compile_rules(path, {b'127.0.0.1': b'+RELAYCLIENT=\0'})
    monkeypatch.setattr(control, 'RACY', -1e9)
    opened = []
    real = cdb.Cdb
    monkeypatch.setattr(cdb, 'Cdb', lambda p: opened.append(p) or real(p))
    assert tcprules.lookup(path, '127.0.0.1')[1] == {'RELAYCLIENT': ''}
    assert tcprules.lookup(path, '127.0.0.1')[1] == {'RELAYCLIENT': ''}
    assert len(opened) == 1
    compile_rules(path, {b'127.0.0.1': b'D'})
    assert tcprules.lookup(path, '127.0.0.1')[0] is False
    assert len(opened) == 2
    os.unlink(path)
    with pytest.raises(FileNotFoundError):
        tcprules.lookup(path, '127.0.0.1')


def test_answers_kept_per_client_while_the_rules_are_unchanged(tmp_path, monkeypatch):
    """A client seen before gets its kept answer (a copy: the caller's
    changes stay its own); a changed file forgets every answer."""
    from qmail.lib import cdb, control, tcprules
    path = str(tmp_path / 'tcp.smtp.cdb')

    compile_rules(path, {b'10.': b'+RELAYCLIENT=\0', b'': b'D'})
    monkeypatch.setattr(control, 'RACY', -1e9)
    gets = []
    real_get = cdb.Cdb.get
    monkeypatch.setattr(cdb.Cdb, 'get', lambda self, k: gets.append(k) or real_get(self, k))
    first = tcprules.lookup(path, '10.1.2.3')
    assert first == (True, {'RELAYCLIENT': ''}, '10.')
    first[1]['MINE'] = 'x'
    n = len(gets)
    assert tcprules.lookup(path, '10.1.2.3') == (True, {'RELAYCLIENT': ''}, '10.')
    assert len(gets) == n                              # from the kept answer
    assert tcprules.lookup(path, '192.0.2.1') == (False, {}, '')
    assert tcprules.lookup(path, '10.1.2.3', info='bob')[2] == '10.'   # another key
    compile_rules(path, {b'10.1.2.3': b'D'})
    assert tcprules.lookup(path, '10.1.2.3') == (False, {}, '10.1.2.3')


def test_the_default_rules_let_local_clients_relay_on_ipv4_and_ipv6(tmp_path):
    """README: local clients may relay.  With SMTP_ADDR=:: a client on ::1
    got 553 where one on 127.0.0.1 relayed."""
    from qmail import install
    if not shutil.which('tcprules'):
        pytest.skip('no tcprules')
    rules = tmp_path / 'tcp.smtp'
    rules.write_text(install.DEFAULT_TCP_SMTP)
    install.compile_rules(str(rules))
    cdbfile = str(rules) + '.cdb'
    for ip in ('127.0.0.1', '::1'):
        assert tcprules.lookup(cdbfile, ip)[:2] == (True, {'RELAYCLIENT': ''}), ip
    for ip in ('192.0.2.1', '2001:db8::1', '::2'):
        assert tcprules.lookup(cdbfile, ip)[:2] == (True, {}), ip
