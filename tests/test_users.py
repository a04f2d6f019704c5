"""qmail-users: assign parsing (newu), lookups (lib/users), getpw, pw2u."""

import errno
import io
import os
import types

import pytest

from qmail import getpw, newu, pw2u
from qmail.lib import auto, cdb, qlx, users
from qmail.lib.qlx import Qlx
from qmail.lib.users import Nughde

# The man page's example, qmail-users(5) WILDCARD ASSIGNMENTS.
MAN_EXAMPLE = (b'+:alias:7790:2108:/var/qmail/alias:-::\n'
               b'+joe-:joe:507:100:/home/joe:-::\n'
               b'=joe:joe:507:100:/home/joe:::\n'
               b'.\n')


def compile_assign(text: bytes) -> cdb.Cdb:
    lines = text.splitlines(keepends=True)
    return cdb.Cdb.from_bytes(cdb.make(newu.assign_records(lines)))


def no_getpw(local):
    raise AssertionError('qmail-getpw asked for %r' % local)


# -- qmail-newu: the keys --------------------------------------------------

def test_newu_records_of_man_example():
    got = list(newu.assign_records(MAN_EXAMPLE.splitlines(keepends=True)))
    want = [
        (b'!', b'alias\x007790\x002108\x00/var/qmail/alias\x00-\x00'),
        (b'!joe-', b'joe\x00507\x00100\x00/home/joe\x00-\x00'),
        (b'!joe\x00', b'joe\x00507\x00100\x00/home/joe\x00\x00'),
        (b'', b'-'),
    ]
    assert got == want


@pytest.mark.parametrize('line,want', [
    (b'=Joe.Shmoe:joe:503:78:/home/joe:::\n',
     (b'!joe.shmoe\x00', b'joe\x00503\x0078\x00/home/joe\x00\x00', b'')),
    # the wildchar keeps its case; the key is lowercased
    (b'+Sales.X:s:1:2:/h:-:pre:\n', (b'!sales.x', b's\x001\x002\x00/h\x00-\x00pre', b'x')),
    (b'+:a:1:2:/h:-::\n', (b'!', b'a\x001\x002\x00/h\x00-\x00', b'')),
    # anything after the sixth colon is ignored
    (b'=x:u:1:2:/h:d:e:junk:more\n', (b'!x\x00', b'u\x001\x002\x00/h\x00d\x00e', b'')),
    # qmail-newu treats any first character but '+' as '='
    (b'*x:u:1:2:/h:::\n', (b'!x\x00', b'u\x001\x002\x00/h\x00\x00', b'')),
    (b'=:u:1:2:/h:::\n', (b'!\x00', b'u\x001\x002\x00/h\x00\x00', b'')),
])
def test_newu_line(line, want):
    got = newu.parse_assign_line(line)
    assert got == want, 'got %r want %r' % (got, want)


@pytest.mark.parametrize('text', [
    b'',                                        # no '.' line
    b'=joe:joe:507:100:/home/joe:::\n',         # no '.' line
    b'=joe:joe:507:100:/home/joe:::',           # last line lacks newline
    b'=joe:joe:507:100:/home/joe::\n.\n',       # five colons
    b':joe:507:100:/home/joe:::\n.\n',          # empty before first colon
    b'=joe\n.\n',                               # no colon
    b'\n.\n',                                   # empty line
    b'=jo\x00e:joe:507:100:/home/joe:::\n.\n',  # NUL
])
def test_newu_bad_format(text):
    lines = text.splitlines(keepends=True)
    with pytest.raises(newu.Fatal, match='bad format in users/assign'):
        list(newu.assign_records(lines))


def test_newu_dot_without_newline_ends():
    lines = [b'=joe:joe:507:100:/home/joe:::\n', b'.']
    assert list(newu.assign_records(lines))[-1] == (b'', b'')


def test_newu_stops_at_dot_line():
    text = b'=a:a:1:1:/a:::\n.anything here\ngarbage, never read\n'
    got = list(newu.assign_records(text.splitlines(keepends=True)))
    assert [k for k, _ in got] == [b'!a\x00', b'']


def test_newu_wildchars_once_each_in_order():
    text = (b'+a-:u:1:1:/h:-::\n+b.:u:1:1:/h:-::\n+c-:u:1:1:/h:-::\n'
            b'+d=:u:1:1:/h:-::\n.\n')
    got = dict(newu.assign_records(text.splitlines(keepends=True)))
    assert got[b''] == b'-.='


@pytest.fixture
def qhome(tmp_path, monkeypatch):
    (tmp_path / 'users').mkdir()
    (tmp_path / 'control').mkdir()
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path))
    return tmp_path


def test_newu_main_writes_cdb(qhome):
    (qhome / 'users' / 'assign').write_bytes(MAN_EXAMPLE)
    assert newu.main([]) == 0
    data = (qhome / 'users' / 'cdb').read_bytes()
    assert data == cdb.make(newu.assign_records(MAN_EXAMPLE.splitlines(True)))
    assert not (qhome / 'users' / 'cdb.tmp').exists()
    assert (qhome / 'users' / 'cdb').stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize('text,message', [
    (b'=joe:joe:507:100:/home/joe:::\n',
     "bad format in users/assign, no '.' line at its end"),
    (b'=a:a:1:1:/a:::\n=joe:joe\n.\n', 'bad format in users/assign, line 2'),
    (None, 'unable to open users/assign'),
])
def test_newu_main_fails_and_leaves_cdb_alone(qhome, capsys, text, message):
    if text is not None:
        (qhome / 'users' / 'assign').write_bytes(text)
    (qhome / 'users' / 'cdb').write_bytes(b'old')
    assert newu.main([]) == 111
    assert capsys.readouterr().err == 'qmail-newu: fatal: %s\n' % message
    assert (qhome / 'users' / 'cdb').read_bytes() == b'old'
    assert not (qhome / 'users' / 'cdb.tmp').exists()


def test_newu_main_no_home(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path / 'none'))
    assert newu.main([]) == 111
    assert capsys.readouterr().err == 'qmail-newu: fatal: unable to chdir\n'


# -- qmail-lspawn's lookup order -------------------------------------------

@pytest.mark.parametrize('local,want', [
    # the man page: joe by the third line, joe-direct by the second,
    # bill by the first
    (b'joe', (b'joe', 507, 100, b'/home/joe', b'', b'')),
    (b'joe-direct', (b'joe', 507, 100, b'/home/joe', b'-', b'direct')),
    (b'bill', (b'alias', 7790, 2108, b'/var/qmail/alias', b'-', b'bill')),
    # case: keys are lowercased, the appended rest keeps its case
    (b'JOE', (b'joe', 507, 100, b'/home/joe', b'', b'')),
    (b'Joe-Direct', (b'joe', 507, 100, b'/home/joe', b'-', b'Direct')),
    (b'joe-', (b'joe', 507, 100, b'/home/joe', b'-', b'')),
    (b'joex', (b'alias', 7790, 2108, b'/var/qmail/alias', b'-', b'joex')),
    (b'', (b'alias', 7790, 2108, b'/var/qmail/alias', b'-', b'')),
])
def test_cdb_lookup_man_example(tmp_path, local, want):
    path = tmp_path / 'cdb'
    path.write_bytes(cdb.make(newu.assign_records(MAN_EXAMPLE.splitlines(True))))
    got = users.nughde_get(local, str(path), no_getpw)
    assert got == Nughde(*want), 'got %r want %r' % (got, want)


def test_longer_wildcard_wins_and_exact_beats_wildcard():
    text = (b'+a-:short:1:1:/s:-:s-:\n'
            b'+a-b-:long:2:2:/l:-:l-:\n'
            b'=a-b-c:exact:3:3:/e:::\n'
            b'=a-b-c:second:4:4:/e2:::\n'
            b'.\n')
    db = compile_assign(text)

    def look(local):
        return users.parse_nughde(users.cdb_lookup(db, local))
    assert look(b'a-b-c') == Nughde(b'exact', 3, 3, b'/e', b'', b'')
    assert look(b'a-b-d') == Nughde(b'long', 2, 2, b'/l', b'-', b'l-d')
    assert look(b'a-x') == Nughde(b'short', 1, 1, b'/s', b'-', b's-x')
    assert users.cdb_lookup(db, b'b') is None


def test_wildcard_only_at_wildchars():
    # '+ab:' has wildchar 'b'; 'abc' ends a prefix 'ab' in 'b', so it
    # matches; with no "+:" line, other addresses are not in the cdb.
    db = compile_assign(b'+ab:u:1:1:/h:-:x:\n.\n')
    assert users.cdb_lookup(db, b'abc') == b'u\x001\x001\x00/h\x00-\x00xc\x00'
    assert users.cdb_lookup(db, b'xabc') is None
    # A wildcard's case does not matter, as for any local part: '+aB'
    # matches as '+ab' does (qmail-newu.c kept the wildchar 'B', which
    # no lowercased address ends a prefix in: it never matched).
    db = compile_assign(b'+aB:u:1:1:/h:-:x:\n.\n')
    assert users.cdb_lookup(db, b'abc') == b'u\x001\x001\x00/h\x00-\x00xc\x00'
    assert users.cdb_lookup(db, b'ABX') == b'u\x001\x001\x00/h\x00-\x00xX\x00'  # ext as written


def test_nughde_get_falls_back_to_getpw(tmp_path):
    seen = []

    def fake_getpw(local):
        seen.append(local)
        return Nughde(b'u', 5, 6, b'/h', b'', b'')
    path = tmp_path / 'cdb'
    # no users/cdb at all
    assert users.nughde_get(b'x', str(path), fake_getpw).user == b'u'
    # a users/cdb without the address and without a catch-all
    path.write_bytes(cdb.make(newu.assign_records([b'=y:y:1:1:/y:::\n', b'.\n'])))
    assert users.nughde_get(b'Xy', str(path), fake_getpw).user == b'u'
    assert seen == [b'x', b'Xy']


def test_nughde_get_passes_getpw_failure(tmp_path):
    def failing(local):
        raise Qlx(qlx.QLX_NOALIAS)
    with pytest.raises(Qlx) as info:
        users.nughde_get(b'x', str(tmp_path / 'cdb'), failing)
    assert info.value.code == qlx.QLX_NOALIAS


@pytest.mark.parametrize('make', [
    lambda p: p.write_bytes(cdb.make([(b'!x\0', b'a\x001\x001\x00/\x00\x00')])),
    lambda p: p.write_bytes(b'short'),
    lambda p: p.write_bytes(cdb.make([(b'', b'')])[:2060]),
    lambda p: p.mkdir(),
])
def test_nughde_get_bad_cdb_is_qlx_cdb(tmp_path, make):
    path = tmp_path / 'cdb'
    make(path)
    with pytest.raises(Qlx) as info:
        users.nughde_get(b'x', str(path), no_getpw)
    assert info.value.code == qlx.QLX_CDB


def test_nughde_get_unreadable_cdb(tmp_path, monkeypatch):
    path = tmp_path / 'cdb'
    path.write_bytes(cdb.make([(b'', b'')]))

    def denied(*args, **kw):
        raise PermissionError(errno.EACCES, 'denied')
    monkeypatch.setattr(os, 'open', denied)     # root reads everything
    with pytest.raises(Qlx) as info:
        users.nughde_get(b'x', str(path), no_getpw)
    assert info.value.code == qlx.QLX_CDB


def test_short_record_is_qlx_usage(tmp_path):
    path = tmp_path / 'cdb'
    path.write_bytes(cdb.make([(b'', b''), (b'!x\0', b'u\x001\x002')]))
    with pytest.raises(Qlx) as info:
        users.nughde_get(b'x', str(path), no_getpw)
    assert info.value.code == qlx.QLX_USAGE


@pytest.mark.parametrize('record,want', [
    (b'joe\x00507\x00100\x00/home/joe\x00-\x00ext\x00',
     Nughde(b'joe', 507, 100, b'/home/joe', b'-', b'ext')),
    (b'a\x00x\x0012y\x00/\x00\x00\x00extra\x00',
     Nughde(b'a', 0, 12, b'/', b'', b'')),
])
def test_parse_nughde(record, want):
    assert users.parse_nughde(record) == want


def test_format_nughde_round_trip():
    n = Nughde(b'joe', 507, 100, b'/home/joe', b'-', b'Ext')
    assert users.format_nughde(n) == b'joe\x00507\x00100\x00/home/joe\x00-\x00Ext\x00'
    assert users.parse_nughde(users.format_nughde(n)) == n


# -- qmail-getpw's rules ---------------------------------------------------

def pwent(name, uid, gid, home):
    return types.SimpleNamespace(pw_name=name, pw_uid=uid, pw_gid=gid,
                                 pw_dir=home)


PASSWD = {
    b'root': pwent('root', 0, 0, '/root'),
    b'joe': pwent('joe', 507, 100, '/home/joe'),
    b'joe-list': pwent('joe-list', 508, 100, '/home/joelist'),
    b'nohome': pwent('nohome', 509, 100, '/home/gone'),
    b'notmine': pwent('notmine', 510, 100, '/home/joe'),
    b'nfs': pwent('nfs', 511, 100, '/nfs/down'),
    b'a' * 31: pwent('a' * 31, 512, 100, '/home/long31'),
    b'a' * 32: pwent('a' * 32, 513, 100, '/home/long32'),
    b'alias': pwent('alias', 7790, 2108, '/var/qmail/alias'),
}
OWNERS = {b'/root': 0, b'/home/joe': 507, b'/home/joelist': 508,
          b'/var/qmail/alias': 0, b'/home/long31': 512, b'/home/long32': 513}


def fake_lookup(name):
    return PASSWD.get(name)


def fake_stat(path):
    if path == b'/nfs/down':
        raise OSError(errno.ESTALE, 'stale')
    if path not in OWNERS:
        raise FileNotFoundError(errno.ENOENT, 'nope')
    return types.SimpleNamespace(st_uid=OWNERS[path])


def alias_for(local):
    return Nughde(b'alias', 7790, 2108, b'/var/qmail/alias', b'-', local)


@pytest.mark.parametrize('local,want', [
    (b'joe', Nughde(b'joe', 507, 100, b'/home/joe', b'', b'')),
    (b'joe-', Nughde(b'joe', 507, 100, b'/home/joe', b'-', b'')),
    (b'joe-foo-bar', Nughde(b'joe', 507, 100, b'/home/joe', b'-', b'foo-bar')),
    (b'JOE-Foo', Nughde(b'joe', 507, 100, b'/home/joe', b'-', b'Foo')),
    # longest prefix first: joe-list is a user itself
    (b'joe-list', Nughde(b'joe-list', 508, 100, b'/home/joelist', b'', b'')),
    (b'joe-list-x', Nughde(b'joe-list', 508, 100, b'/home/joelist', b'-', b'x')),
    (b'joe-listx', Nughde(b'joe', 507, 100, b'/home/joe', b'-', b'listx')),
    # a prefix must end at the break
    (b'joex', alias_for(b'joex')),
    # uid 0 is never a user; the alias user is not checked
    (b'root', alias_for(b'root')),
    (b'nohome-x', alias_for(b'nohome-x')),
    (b'notmine', alias_for(b'notmine')),
    # names of 32 characters or more are not looked up
    (b'a' * 31 + b'-x', Nughde(b'a' * 31, 512, 100, b'/home/long31', b'-', b'x')),
    (b'a' * 32, alias_for(b'a' * 32)),
    (b'Stranger', alias_for(b'Stranger')),
    (b'', alias_for(b'')),
])
def test_getpw_rules(local, want):
    got = getpw.getpw(local, fake_lookup, fake_stat, brk=b'-', alias=b'alias')
    assert got == want, 'got %r want %r' % (got, want)


def test_getpw_other_break_and_none():
    got = getpw.getpw(b'joe+x', fake_lookup, fake_stat, brk=b'+', alias=b'alias')
    assert got == Nughde(b'joe', 507, 100, b'/home/joe', b'-', b'x')
    got = getpw.getpw(b'joe-x', fake_lookup, fake_stat, brk=b'', alias=b'alias')
    assert got == alias_for(b'joe-x')


def test_getpw_temporary_home_trouble_is_nfs():
    with pytest.raises(Qlx) as info:
        getpw.getpw(b'nfs-x', fake_lookup, fake_stat, alias=b'alias')
    assert info.value.code == qlx.QLX_NFS


def test_getpw_temporary_lookup_trouble_is_sys():
    def busy(name):
        raise OSError(errno.ETXTBSY, 'busy')
    with pytest.raises(Qlx) as info:
        getpw.getpw(b'joe', busy, fake_stat, alias=b'alias')
    assert info.value.code == qlx.QLX_SYS


def test_getpw_no_alias():
    with pytest.raises(Qlx) as info:
        getpw.getpw(b'nobody-here', fake_lookup, fake_stat, alias=b'noalias')
    assert info.value.code == qlx.QLX_NOALIAS


def test_getpw_alias_user_itself_gets_this_homes_alias_dir(monkeypatch):
    """alias@ and alias-x@ name the alias user as a user (its passwd home
    is its own): its files are still this home's alias/, as for every
    other address the alias user takes (README: several homes share one
    set of users); the passwd home was another home's."""
    monkeypatch.setattr(auto, 'QMAIL', '/srv/q2')

    def stat(path):
        return types.SimpleNamespace(st_uid={b'/var/qmail/alias': 7790}[path])
    got = getpw.getpw(b'alias', fake_lookup, stat, alias=b'alias')
    assert got == Nughde(b'alias', 7790, 2108, b'/srv/q2/alias', b'', b''), got
    got = getpw.getpw(b'Alias-X', fake_lookup, stat, alias=b'alias')
    assert got == Nughde(b'alias', 7790, 2108, b'/srv/q2/alias', b'-', b'X'), got
    assert getpw.getpw(b'nosuch', fake_lookup, stat, alias=b'alias').home == b'/srv/q2/alias'


def test_getpw_main(monkeypatch, capfdbinary):
    monkeypatch.setattr(getpw, 'system_lookup', fake_lookup)
    monkeypatch.setattr(os, 'stat', fake_stat)
    monkeypatch.setattr(auto, 'USER_ALIAS', 'alias')
    assert getpw.main(['Joe-Foo']) == 0
    assert capfdbinary.readouterr().out == b'joe\x00507\x00100\x00/home/joe\x00-\x00Foo\x00'
    assert getpw.main([]) == 100
    monkeypatch.setattr(auto, 'USER_ALIAS', 'noalias')
    assert getpw.main(['nobody']) == qlx.QLX_NOALIAS
    assert getpw.main(['nfs']) == qlx.QLX_NFS
    assert capfdbinary.readouterr().out == b''


def test_qlx_codes():
    # qlx.h, the numbers qmail-lspawn's report() knows
    assert (qlx.QLX_USAGE, qlx.QLX_BUG, qlx.QLX_ROOT, qlx.QLX_NFS,
            qlx.QLX_NOALIAS, qlx.QLX_CDB, qlx.QLX_SYS, qlx.QLX_NOMEM,
            qlx.QLX_EXECSOFT, qlx.QLX_EXECPW, qlx.QLX_EXECHARD) == \
        (112, 101, 113, 115, 116, 117, 118, 119, 120, 121, 126)


# -- qmail-pw2u ------------------------------------------------------------

SAMPLE_PASSWD = (
    b'root:x:0:0:root:/root:/bin/bash\n'
    b'alias:*:7790:2108::/var/qmail/alias:/bin/true\n'
    b'joe:x:507:100:Joe Shmoe:/home/joe:/bin/sh\n'
    b'Upper:x:600:100::/home/upper:/bin/sh\n'
    b'gone:x:601:100::/home/gone:/bin/sh\n'
    b'notmine:x:602:100::/home/joe:/bin/sh\n'
    b'short:x:603:100::/home/short\n'           # no shell field: skipped
    b'nul\x00:x:604:100::/home/nul:/bin/sh\n'
    b'mary:x:0605:0100::/home/mary:/bin/sh'     # last line, no newline
)
PW2U_OWNERS = {b'/root': 0, b'/var/qmail/alias': 7790, b'/home/joe': 507,
               b'/home/upper': 600, b'/home/short': 603, b'/home/mary': 605}


def pw2u_stat(path):
    if path not in PW2U_OWNERS:
        raise FileNotFoundError(errno.ENOENT, 'nope')
    return types.SimpleNamespace(st_uid=PW2U_OWNERS[path])


def run_pw2u(argv=(), rules=None, files=None, passwd=SAMPLE_PASSWD):
    opts = pw2u.parse_options(list(argv))
    return pw2u.pw2u(passwd, opts, rules or pw2u.Rules(), pw2u_stat,
                     (files or {}).get, alias=b'alias')


def test_pw2u_default():
    want = (b'+:alias:7790:2108:/var/qmail/alias:-::\n'
            b'=alias:alias:7790:2108:/var/qmail/alias:::\n'
            b'+alias-:alias:7790:2108:/var/qmail/alias:-::\n'
            b'=joe:joe:507:100:/home/joe:::\n'
            b'+joe-:joe:507:100:/home/joe:-::\n'
            b'=mary:mary:0605:0100:/home/mary:::\n'
            b'+mary-:mary:0605:0100:/home/mary:-::\n'
            b'.\n')
    got = run_pw2u()
    assert got == want, 'got:\n%s\nwant:\n%s' % (got.decode(), want.decode())


def test_pw2u_alias_lines_name_this_homes_alias_dir(monkeypatch):
    """A home other than /var/qmail: the alias user's lines name its
    alias/ (where qmail-getpw's fallback looks), not the passwd home,
    another installation's; the home rule still looks at the passwd one."""
    monkeypatch.setattr(auto, 'QMAIL', '/srv/q2')
    got = run_pw2u().splitlines()
    assert got[:3] == [b'+:alias:7790:2108:/srv/q2/alias:-::',
                       b'=alias:alias:7790:2108:/srv/q2/alias:::',
                       b'+alias-:alias:7790:2108:/srv/q2/alias:-::'], got
    assert b'=joe:joe:507:100:/home/joe:::' in got


def test_pw2u_options():
    got = run_pw2u([b'-uH', b'-c', b'+', b'-/'])
    lines = got.splitlines()
    assert b'=Upper:Upper:600:100:/home/upper:::' in lines
    assert b'+Upper+:Upper:600:100:/home/upper:-/::' in lines
    assert b'=gone:gone:601:100:/home/gone:::' in lines        # -H
    assert b'=notmine:notmine:602:100:/home/joe:::' in lines
    assert b'+:alias:7790:2108:/var/qmail/alias:-/::' in lines
    assert not any(b'root' in line for line in lines)
    got = run_pw2u([b'-C'])
    assert b'+joe' not in got and b'=joe:joe:507:100:/home/joe:::\n' in got
    got = run_pw2u([b'-cx'])
    assert b'+joex:joe:507:100:/home/joe:-::\n' in got


def test_pw2u_bad_option():
    with pytest.raises(pw2u.Usage):
        pw2u.parse_options([b'-z'])
    with pytest.raises(pw2u.Usage):
        pw2u.parse_options([b'-c'])
    assert pw2u.parse_options([b'file', b'-C']).brk == b'-'   # first non-option ends


def test_pw2u_h_stops_on_missing_home():
    with pytest.raises(pw2u.Fatal) as info:
        run_pw2u([b'-h'])
    assert info.value.message == b'unable to stat /home/gone: file does not exist'


def test_pw2u_stat_trouble_stops():
    def denied(path):
        raise PermissionError(errno.EACCES, 'denied')
    with pytest.raises(pw2u.Fatal) as info:
        pw2u.pw2u(SAMPLE_PASSWD, pw2u.Options(), pw2u.Rules(), denied,
                  {}.get, alias=b'alias')
    assert info.value.message == b'unable to stat /var/qmail/alias: access denied'


def test_pw2u_no_alias():
    with pytest.raises(pw2u.Fatal) as info:
        run_pw2u(passwd=b'joe:x:507:100::/home/joe:/bin/sh\n')
    assert info.value.message == b'unable to find alias user'


def test_pw2u_include_exclude_mailnames():
    rules = pw2u.Rules(
        include=pw2u.name_set([b'alias', b'JOE', b'mary']),
        exclude=pw2u.name_set([b'mary']),
        mailnames=pw2u.name_map([b'joe:joe.shmoe::js', b'alias:',
                                 b'nocolon', b'ghost:g']))
    got = run_pw2u(rules=rules)
    want = (b'+:alias:7790:2108:/var/qmail/alias:-::\n'
            b'=joe.shmoe:joe:507:100:/home/joe:::\n'
            b'+joe.shmoe-:joe:507:100:/home/joe:-::\n'
            b'=js:joe:507:100:/home/joe:::\n'
            b'+js-:joe:507:100:/home/joe:-::\n'
            b'.\n')
    assert got == want, got.decode()


def test_pw2u_subusers_and_append():
    files = {'subusers': b'sales:joe:sales:\nignored:joe\nsup:JOE:support:x\n',
             'append': b'=extra:joe:507:100:/home/joe:::\n'}
    got = run_pw2u(files=files).splitlines(keepends=True)
    assert got[-6:] == [
        b'=sales:joe:507:100:/home/joe:-:sales:\n',
        b'+sales-:joe:507:100:/home/joe:-:sales-:\n',
        b'=sup:joe:507:100:/home/joe:-:support:\n',
        b'+sup-:joe:507:100:/home/joe:-:support-:\n',
        b'=extra:joe:507:100:/home/joe:::\n',
        b'.\n']


def test_pw2u_subuser_unknown_user():
    with pytest.raises(pw2u.Fatal) as info:
        run_pw2u(files={'subusers': b'x:gone:pre:\n'})
    assert info.value.message == b'unable to find gone user for subuser'


def test_pw2u_main(qhome, capsysbinary):
    users_dir = qhome / 'users'
    (users_dir / 'exclude').write_bytes(b'# nobody else\nroot\n')
    (users_dir / 'append').write_bytes(b'=x:alias:7790:2108:/a:::\n')
    out = io.BytesIO()
    code = pw2u.main(['-H'], stdin=io.BytesIO(SAMPLE_PASSWD), stdout=out)
    assert code == 0
    assert out.getvalue().endswith(b'=x:alias:7790:2108:/a:::\n.\n')
    assert b'=gone:gone:601:100:/home/gone:::\n' in out.getvalue()
    out = io.BytesIO()
    assert pw2u.main(['-H'], stdin=io.BytesIO(b''), stdout=out) == 111
    assert out.getvalue() == b''
    assert capsysbinary.readouterr().err == b'qmail-pw2u: fatal: unable to find alias user\n'
    assert pw2u.main(['-q'], stdin=io.BytesIO(b''), stdout=out) == 100


# -- end to end: pw2u | newu | lspawn's lookup -----------------------------

def test_pw2u_newu_lookup(tmp_path):
    assign = run_pw2u(files={'subusers': b'sales:joe:sales:\n'})
    path = tmp_path / 'cdb'
    path.write_bytes(cdb.make(newu.assign_records(assign.splitlines(True))))

    def look(local):
        return users.nughde_get(local, str(path), no_getpw)
    assert look(b'joe') == Nughde(b'joe', 507, 100, b'/home/joe', b'', b'')
    assert look(b'Joe-Box') == Nughde(b'joe', 507, 100, b'/home/joe', b'-', b'Box')
    assert look(b'sales') == Nughde(b'joe', 507, 100, b'/home/joe', b'-', b'sales')
    assert look(b'sales-eu') == Nughde(b'joe', 507, 100, b'/home/joe', b'-', b'sales-eu')
    assert look(b'postmaster') == Nughde(b'alias', 7790, 2108, b'/var/qmail/alias',
                                         b'-', b'postmaster')
    assert look(b'alias-x') == Nughde(b'alias', 7790, 2108, b'/var/qmail/alias',
                                      b'-', b'x')


# ---- qmail-lspawn's kept answers of the qmailp helper -------------------------

def _kept(tmp_path):
    from qmail import lspawn
    passwd = tmp_path / 'passwd'
    passwd.write_text('bob:x:1234:1234::/home/bob:/bin/sh\n')
    home = tmp_path / 'home'
    home.mkdir()
    now = [100.0]
    answers = lspawn.PwAnswers(str(passwd), ttl=1.0, clock=lambda: now[0])
    n = users.Nughde(b'bob', os.stat(home).st_uid, 1234, os.fsencode(str(home)), b'', b'')
    return lspawn, answers, passwd, home, now, n


def test_a_helper_answer_serves_again_for_a_second(tmp_path):
    lspawn, answers, passwd, home, now, n = _kept(tmp_path)
    assert answers.get(b'bob') is None
    asked = answers.asking()
    answers.put(b'bob', n, asked)
    now[0] += 0.5
    assert answers.get(b'bob') == n
    assert answers.get(b'alice') is None
    now[0] += 0.6                               # 1.1 s after the question
    assert answers.get(b'bob') is None
    assert answers.answers == {}


def test_answers_past_their_second_go_without_being_asked_for_again(tmp_path):
    """Mail to many addresses, each once (unknown users, say): answers
    past PW_TTL no longer pile up until PW_MAX clears them all."""
    lspawn, answers, passwd, home, now, n = _kept(tmp_path)
    for i in range(50):
        answers.put(b'nosuch%d' % i, n, answers.asking())
        now[0] += 0.1
    assert len(answers.answers) <= 11, len(answers.answers)
    assert b'nosuch49' in answers.answers and b'nosuch0' not in answers.answers
    answers.put(b'nosuch45', n, answers.asking())     # refreshed: the newest now
    now[0] += 0.95
    answers.put(b'other', n, answers.asking())
    assert set(answers.answers) == {b'nosuch45', b'other'}, answers.answers


def test_a_helper_answer_goes_when_passwd_changes_even_during_the_question(tmp_path):
    lspawn, answers, passwd, home, now, n = _kept(tmp_path)
    asked = answers.asking()
    with open(passwd, 'a') as f:                # while the helper reads it
        f.write('carol:x:1235:1235::/home/carol:/bin/sh\n')
    answers.put(b'bob', n, asked)
    assert answers.get(b'bob') is None          # the stamp of before
    asked = answers.asking()
    answers.put(b'bob', n, asked)
    assert answers.get(b'bob') == n
    os.replace(str(passwd), str(passwd) + '.old')   # vipw: a new file
    with open(passwd, 'w') as f:
        f.write('bob:x:1234:1234::/home/bob:/bin/sh\n')
    assert answers.get(b'bob') is None


def test_an_answer_that_fell_back_to_alias_is_not_kept(tmp_path):
    """No such user yet (useradd writes /etc/passwd before it makes the
    home; a home restored): the alias answer is asked again next time,
    as qmail-getpw was asked for each delivery, so the user's own mail
    is not bounced for a second.  alias@ and alias-x@ themselves are
    kept."""
    from qmail.lib import auto
    lspawn, answers, passwd, home, now, n = _kept(tmp_path)
    alias = auto.USER_ALIAS.encode()
    fallback = users.Nughde(alias, 7790, 2108, b'/var/qmail/alias', b'-', b'bob')
    answers.put(b'bob', fallback, answers.asking())
    assert answers.get(b'bob') is None
    for local, dash, ext in ((alias, b'', b''), (alias + b'-x', b'-', b'x')):
        own = users.Nughde(alias, 7790, 2108, b'/var/qmail/alias', dash, ext)
        answers.put(local, own, answers.asking())
        assert answers.get(local) == own


def test_kept_answers_never_look_at_a_users_home(tmp_path, monkeypatch):
    """qmail-lspawn's loop (root, every user's) stats no home: one on a
    hung NFS server stopped all local delivery.  The helper checked the
    owner when it answered; within PW_TTL that answer stands."""
    lspawn, answers, passwd, home, now, n = _kept(tmp_path)
    looked = []
    real_stat = os.stat
    monkeypatch.setattr(lspawn.os, 'stat', lambda p, *a, **k: looked.append(os.fsencode(p))
                        or real_stat(p, *a, **k))
    answers.put(b'bob', n, answers.asking())
    assert answers.get(b'bob') == n
    assert os.fsencode(str(home)) not in looked and looked, looked
    monkeypatch.setattr(lspawn.os, 'stat', real_stat)
    missing = lspawn.PwAnswers(str(tmp_path / 'nosuch'), clock=lambda: now[0])
    missing.put(b'bob', n, missing.asking())    # no passwd file to stamp
    assert missing.get(b'bob') is None


def test_getpw_helper_answers_a_long_local_part(tmp_path):
    """A local part of 5000 bytes (a local user may send one; it falls to
    the alias user, whose record holds it whole) gets its answer, and the
    helper goes on: it took it as garbage and quit, failing every
    question behind it."""
    import threading
    from qmail import lspawn
    q_r, q_w = os.pipe()
    a_r, a_w = os.pipe()
    done = []
    t = threading.Thread(target=lambda: done.append(lspawn.getpw_helper(q_r, a_w)), daemon=True)
    t.start()
    try:
        os.write(q_w, b'x' * 5000 + b'\0' + b'nosuchuserhere\0')
        answers = []
        buf = b''
        while len(answers) < 2:
            buf += os.read(a_r, 65536)
            while len(buf) >= lspawn.GETPW_ANSWER.size:
                code, length = lspawn.GETPW_ANSWER.unpack_from(buf)
                if len(buf) < lspawn.GETPW_ANSWER.size + length:
                    break
                answers.append((code, buf[lspawn.GETPW_ANSWER.size:][:length]))
                buf = buf[lspawn.GETPW_ANSWER.size + length:]
        assert answers[0][0] == answers[1][0], answers     # the same fate: the alias's
        if answers[0][0] == 0:
            assert answers[0][1].rstrip(b'\0').endswith(b'x' * 5000)
    finally:
        os.close(q_w)
        t.join(10)
        for fd in (q_r, a_r, a_w):
            os.close(fd)
    assert done == [0]


def test_getpw_long_answer_is_read_not_taken_for_garbage():
    """qmail-lspawn's side: an answer holding a 5000-byte local part is
    read as the record it is (it was 'out of step': the helper killed and
    every question behind it failed, the other users' too)."""
    from qmail import lspawn

    class Spawner:
        watch = {}
    g = lspawn.Getpw(Spawner())
    r, w = os.pipe()
    helper = lspawn.Helper(-1, r, -1)
    got = []
    helper.then = got.append
    g.busy[r] = helper
    dropped = []
    g.drop = lambda h, why=None: dropped.append(why)
    record = b'alias\x00999\x00994\x00/var/qmail/alias\x00-\x00' + b'x' * 5000 + b'\x00'
    try:
        os.write(w, lspawn.GETPW_ANSWER.pack(0, len(record)) + record[:3000])
        g.readable(helper)                  # half of it: waits for the rest
        assert got == [] and dropped == []
        os.write(w, record[3000:])
        g.readable(helper)
    finally:
        os.close(r)
        os.close(w)
    assert dropped == []
    assert [n.home for n in got] == [b'/var/qmail/alias'] and got[0].ext == b'x' * 5000
    assert g.idle == [helper] and g.busy == {}


def test_a_hung_lookup_holds_up_no_other(monkeypatch):
    """One home on a hung NFS server: its lookup times out alone, while
    the questions asked after it are answered by other helpers (they
    all waited behind it, and failed with it)."""
    import select
    import time
    from qmail import getpw, lspawn
    from qmail.lib.qlx import QLX_SYS
    real = getpw.getpw

    def lookup(local, *args):
        if local == b'slowhome':
            time.sleep(30)
        return real(local, *args)
    monkeypatch.setattr(getpw, 'getpw', lookup)
    monkeypatch.setattr(lspawn, 'GETPW_TIMEOUT', 1)
    monkeypatch.setattr(lspawn.auto, 'uid', lambda name: os.getuid())   # no qmailp needed
    monkeypatch.setattr(lspawn.auto, 'gid', lambda name: os.getgid())

    class Spawner:
        watch = {}
    g = lspawn.Getpw(Spawner())
    answers = {}
    t0 = time.monotonic()
    for local in (b'slowhome', b'nosuch-one', b'nosuch-two'):
        g.ask(local, lambda a, local=local: answers.setdefault(local, (time.monotonic() - t0, a)))
    try:
        while len(answers) < 3 and time.monotonic() - t0 < 20:
            ready, _, _ = select.select(list(Spawner.watch), [], [], 0.2)
            for fd in ready:
                if fd in Spawner.watch:
                    Spawner.watch[fd]()
            g.tick()
    finally:
        helpers = list(g.idle) + list(g.busy.values())
        for helper in helpers:
            g.drop(helper)
        for helper in helpers:
            try:
                os.waitpid(helper.pid, 0)
            except ChildProcessError:
                pass
    assert len(answers) == 3, answers
    took, slow = answers[b'slowhome']
    assert isinstance(slow, Qlx) and slow.code == QLX_SYS and took >= 1
    for local in (b'nosuch-one', b'nosuch-two'):
        took, answer = answers[local]
        assert took < 1 and not (isinstance(answer, Qlx) and answer.code == QLX_SYS), \
            (local, took, answer)


def test_one_lookup_in_a_big_users_cdb_reads_no_more_than_it_needs(tmp_path, monkeypatch):
    """qmail-lspawn looks one address up per delivery: a users/cdb of
    100,000 lines (15 MB) was read whole each time (5.5 ms a delivery,
    in root's one loop).  Above 64 KB the lookup preads what it needs."""
    lines = [b'=u%d:u%d:%d:%d:/home/u%d:::\n' % (i, i, 1000 + i, 1000 + i, i)
             for i in range(3000)] + [b'.\n']
    path = tmp_path / 'cdb'
    path.write_bytes(cdb.make(newu.assign_records(lines)))
    assert path.stat().st_size > cdb.ONE_LOOKUP_READ_ALL
    whole = []
    real = cdb._read_whole
    monkeypatch.setattr(cdb, '_read_whole', lambda fd, size: whole.append(size) or real(fd, size))
    before = len(os.listdir('/proc/self/fd'))
    got = users.nughde_get(b'u2999', str(path), lambda local: None)
    assert (got.user, got.uid, got.home) == (b'u2999', 3999, b'/home/u2999'), got
    assert whole == [] and len(os.listdir('/proc/self/fd')) == before
