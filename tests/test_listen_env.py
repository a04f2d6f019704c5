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


def test_tcp6_variables_as_from_tcpserver(monkeypatch):
    """Debian's tcpserver (IPv6 patch) gives an IPv6 client PROTO=TCP6, an
    IPv4 one PROTO=TCP, and both each TCP variable as TCP6 too (an IPv4
    address there IPv4-mapped).  A run script moved over from it finds
    the same; an inherited TCP6INTERFACE reaches no client."""
    monkeypatch.setenv('TCP6INTERFACE', 'eth9')
    base = listen.base_environ()
    assert b'TCP6INTERFACE' not in base
    env = listen.connection_env(base, ('::1', 25), ('::1', 40002), 'mx', {})
    assert env[b'PROTO'] == b'TCP6'
    for name in (b'LOCALIP', b'LOCALPORT', b'LOCALHOST', b'REMOTEIP', b'REMOTEPORT'):
        assert env[b'TCP6' + name] == env[b'TCP' + name], name
    assert env[b'TCP6REMOTEIP'] == b'::1' and env[b'TCP6LOCALHOST'] == b'mx'
    env4 = listen.connection_env(base, ('::ffff:127.0.0.1', 25), ('::ffff:10.0.0.9', 1), 'mx', {})
    assert (env4[b'PROTO'], env4[b'TCPREMOTEIP'], env4[b'TCPLOCALIP']) == \
        (b'TCP', b'10.0.0.9', b'127.0.0.1')
    assert (env4[b'TCP6REMOTEIP'], env4[b'TCP6LOCALIP'], env4[b'TCP6REMOTEPORT']) == \
        (b'::ffff:10.0.0.9', b'::ffff:127.0.0.1', b'1')
    env4b = listen.connection_env(base, ('127.0.0.1', 25), ('10.0.0.9', 1), 'mx', {})
    assert env4b == env4                # an IPv4 socket: the same


def test_a_link_local_client_gets_its_interface():
    """As tcpserver: TCP6INTERFACE names the interface of a client whose
    address has a scope (the fourth part of an IPv6 peer's address)."""
    import socket
    index, name = socket.if_nameindex()[0]
    env = listen.connection_env({}, ('fe80::5', 25, 0, index),
                                ('fe80::9%' + name, 40003, 0, index), 'mx', {})
    assert env[b'TCP6INTERFACE'] == name.encode()
    assert env[b'TCPREMOTEIP'] == b'fe80::9' and env[b'PROTO'] == b'TCP6'
    env = listen.connection_env({}, ('::1', 25, 0, 0), ('::1', 40004, 0, 0), 'mx', {})
    assert b'TCP6INTERFACE' not in env


import pytest


@pytest.mark.parametrize('ip, want', [
    ('2001:db8:0:1:1:1:1:1', '2001:db8::1:1:1:1:1'),    # one zero group: "::", as ip6_fmt
    ('2001:db8:1::2:0:5', '2001:db8:1::2:0:5'),
    ('1:0:0:2:0:0:3:4', '1::2:0:0:3:4'),                # the first of equal runs
    ('1:0:0:2:0:0:0:3', '1:0:0:2::3'),                  # the longest run
    ('::', '::'), ('::1', '::1'), ('2001:db8::', '2001:db8::'),
    ('2001:DB8::A', '2001:db8::a'),
    ('::ffff:192.0.2.7', '192.0.2.7'), ('fe80::1%eth0', 'fe80::1'),
    ('192.0.2.7', '192.0.2.7'),
])
def test_addresses_written_as_tcpserver_writes_them(ip, want):
    """So that one rules file (keys such as 2001:db8::1:1:1:1:1 or its
    prefixes) means the same to Debian's tcpserver and to qmail-listen."""
    assert listen.unmap(ip) == want


def test_rule_values_pass_as_bytes():
    """A rule's value reaches the program byte for byte, as tcpserver
    passes it (it was encoded twice: UTF-8 of its latin-1 reading)."""
    env = listen.connection_env({}, ('127.0.0.1', 25), ('10.0.0.9', 1), 'mx',
                                {'X': b'gr\xc3\xbc\xc3\x9fe'.decode('latin-1')})
    assert env[b'X'] == b'gr\xc3\xbc\xc3\x9fe'


def test_a_rule_variable_without_a_name_is_none():
    """tcprules takes ="x": putenv of no name failed, and the client the
    rule allows was dropped ("OSError in child").  A NUL ends a name or
    value, as in tcpserver's C strings."""
    env = listen.connection_env({}, ('127.0.0.1', 25), ('10.0.0.9', 1), 'mx',
                                {'': 'x', 'Y': '1', 'Z\0W': 'a\0b'})
    assert b'' not in env and env[b'Y'] == b'1' and env[b'Z'] == b'a'


def test_tcpserver_options(monkeypatch, tmp_path):
    """A tcpserver run script's options are taken: -q nothing, -Q (the
    default) errors, -v all; -U from $UID and $GID; the lookups' options
    accepted; a relative -x made absolute against where it started."""
    monkeypatch.chdir(tmp_path)
    o = listen.parse_args(['0', '25', 'qmail-smtpd'])
    assert o.verbosity == 0
    assert listen.parse_args(['-q', '0', '25', 'x']).verbosity == -1
    assert listen.parse_args(['-Q', '0', '25', 'x']).verbosity == 0
    assert listen.parse_args(['-v', '0', '25', 'x']).verbosity == 1
    monkeypatch.setenv('UID', '71')
    monkeypatch.setenv('GID', '72')
    o = listen.parse_args(['-vRHhpPoO46D1', '-t', '26', '-B', 'hi\r\n', '-U', '-x', 'tcp.cdb',
                           '-l', 'mx.example', '0', '25', 'qmail-smtpd'])
    assert (o.uid, o.gid, o.nodelay, o.printport, o.banner) == (71, 72, True, True, b'hi\r\n')
    assert o.rules == str(tmp_path / 'tcp.cdb') and o.localname == 'mx.example'
    with pytest.raises(ValueError):
        listen.parse_args(['-Z', '0', '25', 'x'])


def test_dash_u_without_uid_keeps_the_user_given(monkeypatch):
    """tcpserver's -U changes the uid or gid only where $UID or $GID is
    set: unset, an earlier -u -g stands (it was cancelled: root)."""
    monkeypatch.delenv('UID', raising=False)
    monkeypatch.delenv('GID', raising=False)
    o = listen.parse_args(['-u', '1000', '-g', '1001', '-U', '0', '25', 'qmail-smtpd'])
    assert (o.uid, o.gid) == (1000, 1001)
    monkeypatch.setenv('UID', '7')
    o = listen.parse_args(['-u', '1000', '-g', '1001', '-U', '0', '25', 'qmail-smtpd'])
    assert (o.uid, o.gid) == (7, 1001)


def test_a_worker_in_a_directory_it_may_not_read_still_serves(tmp_path):
    """Started in a directory the -u user cannot open, a worker serves on
    (its set-up failed, and every worker died before its first client)."""
    import pwd
    d = tmp_path / 'private'
    d.mkdir(mode=0o700)
    nobody = pwd.getpwnam('nobody')
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(d)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            w = listen.Listener.__new__(listen.Listener)
            w.worker_init()
            code = 0 if w.cwd is None else 2
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0


def test_limit_and_backlog_numbers():
    """-c from control/concurrencyincoming: a huge one was an OverflowError
    (exit 111, so supervise restarted it for ever), and 0 or -5 said
    "need host port program"; now taken as LIMIT_MAX, or named."""
    big = '99999999999999999999'
    o = listen.parse_args(['-c', big, '-b', big, '0', '25', 'x'])
    assert (o.limit, o.backlog) == (listen.LIMIT_MAX, listen.BACKLOG_MAX)
    assert listen.parse_args(['-c', '7', '-b', '0', '0', '25', 'x']).limit == 7
    assert listen.parse_args(['-c', '9' * 5000, '0', '25', 'x']).limit == listen.LIMIT_MAX
    for bad in ('0', '-5', 'x', '\u00b2'):
        with pytest.raises(ValueError, match='-c wants'):
            listen.parse_args(['-c', bad, '0', '25', 'x'])


@pytest.mark.parametrize('line, want, said', [
    (None, '20', False), ('35\n', '35', False), ('35 # our peak\n', '35', False),
    ('abc\n', '20', True), ('0\n', '20', True), ('  \n', '20', True),
])
def test_the_run_script_takes_concurrencyincoming_as_qmail_reads_a_number(
        tmp_path, line, want, said):
    """A file with no number (or 0) made qmail-listen refuse to start,
    every second under supervise; now 20, and the log says why."""
    import subprocess
    from qmail import install
    home = tmp_path / 'home'
    (home / 'bin').mkdir(parents=True)
    (home / 'control').mkdir()
    stub = home / 'bin' / 'qmail-listen'
    stub.write_text('#!/bin/sh\necho "listen $*"\n')
    stub.chmod(0o755)
    if line is not None:
        (home / 'control' / 'concurrencyincoming').write_text(line)
    run = tmp_path / 'run'
    run.write_text(install.SMTPD_RUN % {'home': home, 'uid': 1, 'gid': 2,
                                        'addr': '0', 'port': '25'})
    out = subprocess.run(['sh', str(run)], capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert lines[-1].startswith('listen -v -c %s -x ' % want), out
    assert (len(lines) == 2) == said, out
    if said:
        assert 'concurrencyincoming is no number of at least 1; taking 20' in lines[0]


@pytest.mark.parametrize('args, what', [
    (['0', '99999', 'x'], 'port wants'), (['0', '\u00b2', 'x'], 'port wants'),
    (['-u', '99999999999999999999', '0', '25', 'x'], '-u wants'),
    (['-g', 'x', '0', '25', 'x'], '-g wants'),
])
def test_a_port_uid_or_gid_out_of_range_is_named(args, what):
    """They were an OverflowError ("internal bug", 111: a restart loop
    under supervise) or int()'s text; a uid is never taken as another."""
    with pytest.raises(ValueError, match=what):
        listen.parse_args(args)


def test_a_service_name_is_a_port():
    assert listen.parse_args(['0', 'smtp', 'x']).port == 'smtp'
    assert listen.parse_args(['0', '025', 'x']).port == '25'


def test_only_this_homes_programs_run_in_process(tmp_path):
    """A wrapper script named qmail-smtpd (setting DATABYTES, say) or
    another home's qmail-smtpd was taken for this home's and never run."""
    home = tmp_path / 'home'
    (home / 'bin').mkdir(parents=True)
    own = home / 'bin' / 'qmail-smtpd'
    own.write_text('#!/bin/sh\n')
    (tmp_path / 'link').symlink_to(own)
    wrap = tmp_path / 'wrap'
    wrap.mkdir()
    (wrap / 'qmail-smtpd').write_text('#!/bin/sh\nexec %s "$@"\n' % own)
    (tmp_path / 'links').mkdir()
    (tmp_path / 'links' / 'qmail-smtpd').symlink_to(own)     # a link of the name: ours
    h = str(home)
    assert listen.builtin_module(str(own), h) == 'smtpd'
    assert listen.builtin_module(str(tmp_path / 'links' / 'qmail-smtpd'), h) == 'smtpd'
    assert listen.builtin_module(str(tmp_path / 'link'), h) is None    # another name
    assert listen.builtin_module(str(wrap / 'qmail-smtpd'), h) is None
    assert listen.builtin_module(str(tmp_path / 'none' / 'qmail-smtpd'), h) is None
    assert listen.builtin_module('qmail-qmqpd', h) == 'qmqpd'           # README's bare name
    assert listen.builtin_module(str(home / 'bin' / 'rblsmtpd'), h) is None


def test_tcp_env_names_an_unknown_option_and_goes_on(capsys):
    """qmail's tcp-env (sgetopt) says "illegal option" and runs the
    program; this one exited 111 without a word."""
    from qmail import tcp_env
    assert tcp_env.parse_args(['-x', '-R', 'prog', 'a']) == (False, tcp_env.DEFAULT_TIMEOUT,
                                                             ['prog', 'a'])
    assert capsys.readouterr().err == 'tcp-env: illegal option -- x\n'
    assert tcp_env.parse_args(['-rt7', 'prog']) == (True, 7, ['prog'])
    assert tcp_env.parse_args(['-R']) is None           # no program: usage
    assert tcp_env.parse_args(['-t']) is None
    assert capsys.readouterr().err == 'tcp-env: option requires an argument -- t\n'


def test_debians_interface_option_is_taken():
    """Debian's tcpserver -I interface: a run script using it moved over
    got a usage error."""
    o = listen.parse_args(['-I', 'lo', 'fe80::1', '25', 'qmail-smtpd'])
    assert (o.interface, o.host) == ('lo', 'fe80::1')
    import socket
    try:
        socket.create_server(('::1', 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip('no IPv6 loopback here')
    s = listen.bind('::1', '0', 5, 'lo')        # a scope on a v6 address: bound
    try:
        assert s.getsockname()[0] == '::1'
    finally:
        s.close()
