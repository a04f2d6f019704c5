"""qmail-newrcpt and the recipient map qmail-smtpd reads (lib/rcptmap).

A fake world in a temporary directory: passwd entries through an injected
lookup, homes with .qmail files, users/cdb compiled by qmail-newu's own
code, HOME/alias.  The map's answers are checked against a table, and
against an oracle that runs qmail-lspawn's, qmail-getpw's and
qmail-local's own functions on the same world.
"""

import os
import random
import stat
import types

import pytest

from qmail import getpw, newrcpt, newu
from qmail.lib import auto, cdb, rcptmap, users
from qmail.lib.qlx import Qlx
from qmail.lib.rcptmap import ACCEPT, REJECT, UNKNOWN, RcptMap
from qmail.local import find_dotqmail
from qmail.send_rules import Routing

A, R, U = ACCEPT, REJECT, UNKNOWN

# The files in each home under tmp/home: a name ending in '/' is a
# directory, 'name->x' a symlink to x.
HOMES = {
    'joe': ['.qmail', '.qmail-list', '.qmail-foo-default', '.qmail-Upper',
            '.qmail-a:b', '.qmail-info', '.qmail-dot.ted', '.qmail-dir/',
            '.qmail-link->.qmail-list', '.qmail-dangling->nowhere',
            '.qmail-bar-default', '.qmail-bazdefault', 'notes.txt'],
    'joe-foo': [],
    'ann': ['.qmail-t-dev', '.qmail-t-ops-default'],
    'bob': ['.qmail-default'],
    'carol': ['.qmail-x'],          # listdir fails: unreadable
    'dave': ['.qmail-default'],     # owned by someone else: not a user
    'root': ['.qmail-default'],     # uid 0: not a user
    'eve': ['.qmail-default'],      # passwd name "Eve": getpwnam("eve") fails
    'wwrite': [],                   # mode 0777: qmail-local defers
    'long': ['.qmail-default'],     # a name too long for qmail-getpw
}
PASSWD = [
    # (name, uid, home key)
    ('joe', 1001, 'joe'), ('joe-foo', 1002, 'joe-foo'), ('ann', 1003, 'ann'),
    ('bob', 1004, 'bob'), ('carol', 1005, 'carol'), ('dave', 1006, 'dave'),
    ('root', 0, 'root'), ('Eve', 1007, 'eve'), ('wwrite', 1011, 'wwrite'),
    ('x' * 32, 1012, 'long'),
    ('alias', 1010, 'ALIAS'),
]
ALIAS_FILES = ['.qmail-postmaster', '.qmail-mailer-daemon', '.qmail-root',
               '.qmail-owner-default', '.qmail-list:x']
ASSIGN = (b'=sales:joe:1001:1001:HOME/joe:-:list:\n'
          b'=nobox:joe:1001:1001:HOME/joe:-:nothing:\n'
          b'=Plain:ann:1003:1003:HOME/ann:::\n'
          b'=toor:root:0:0:HOME/root:-::\n'
          b'+team-:ann:1003:1003:HOME/ann:-:t-:\n'
          b'+help:joe:1001:1001:HOME/joe:::\n'
          b'.\n')
VIRTUALDOMAINS = [b'virt.example:joe', b'other.example:ann',
                  b'sub.virt.example:']


def routing():
    return Routing([b'example.org', b'Mail.Example.Org'], VIRTUALDOMAINS,
                   [b'example.org'], b'example.org')


class FakeWorld:
    """A qmail home and its users under root, and the functions that
    stand for passwd and for stat() (which fakes the owners)."""

    def __init__(self, root, assign=ASSIGN, alias_files=ALIAS_FILES):
        self.root = root
        self.qhome = os.path.join(root, 'qmail')
        for sub in ('users', 'alias', 'control'):
            os.makedirs(os.path.join(self.qhome, sub), exist_ok=True)
        self.owners = {}
        self.entries = {}
        for key, files in HOMES.items():
            self.make_home(os.path.join(root, 'home', key), files)
        alias_home = os.path.join(self.qhome, 'alias')
        self.make_home(alias_home, alias_files)
        for name, uid, key in PASSWD:
            home = alias_home if key == 'ALIAS' else \
                os.path.join(root, 'home', key)
            self.entries[name.encode()] = types.SimpleNamespace(
                pw_name=name, pw_uid=uid, pw_gid=uid, pw_dir=home)
            if key != 'dave':
                self.owners[os.fsencode(home)] = uid
        self.owners[os.fsencode(os.path.join(root, 'home', 'dave'))] = 999
        os.chmod(os.path.join(root, 'home', 'wwrite'), 0o777)
        self.unreadable = {os.fsencode(os.path.join(root, 'home', 'carol'))}
        self.write_assign(assign)

    def make_home(self, home, files):
        os.makedirs(home, exist_ok=True)
        os.chmod(home, 0o755)
        for f in files:
            path = os.path.join(home, f.split('->')[0].rstrip('/'))
            if f.endswith('/'):
                os.mkdir(path)
            elif '->' in f:
                os.symlink(f.split('->')[1], path)
            else:
                with open(path, 'w') as fp:
                    fp.write('./Maildir/\n')
                os.chmod(path, 0o644)

    def write_assign(self, assign):
        text = assign.replace(b'HOME/', os.fsencode(self.root) + b'/home/')
        with open(os.path.join(self.qhome, 'users', 'assign'), 'wb') as f:
            f.write(text)
        cdb.install(os.path.join(self.qhome, 'users', 'cdb.tmp'),
                    os.path.join(self.qhome, 'users', 'cdb'),
                    newu.assign_records(text.splitlines(keepends=True)))

    # the injected functions
    def list_users(self):
        return list(self.entries.values())

    def lookup_user(self, name: bytes):
        return self.entries.get(name)

    def stat(self, path):
        st = os.stat(path)
        p = os.fsencode(path).rstrip(b'/')
        return types.SimpleNamespace(
            st_mode=st.st_mode, st_uid=self.owners.get(p, st.st_uid),
            st_mtime_ns=st.st_mtime_ns, st_size=st.st_size, st_ino=st.st_ino)

    def listdir(self, path):
        if os.fsencode(path).rstrip(b'/') in self.unreadable:
            raise PermissionError(13, 'Permission denied')
        return os.listdir(path)

    def build(self, warnings=None, stamp_paths=()):
        return newrcpt.build(
            self.qhome, list_users=self.list_users,
            lookup_user=self.lookup_user, stat_fn=self.stat,
            listdir_fn=self.listdir, stamp_paths=stamp_paths, brk=b'-',
            alias=b'alias', patrn=0o002,
            warn=(warnings.append if warnings is not None else lambda t: None))

    def install(self, **kw):
        newrcpt.newrcpt(self.qhome, self.build(**kw))
        return rcptmap.map_path(self.qhome)

    # the oracle: qmail's own functions, run on the world
    def oracle(self, local: bytes, monkeypatch) -> str:
        monkeypatch.setattr(auto, 'QMAIL', self.qhome)

        def getpw_fn(loc):
            return getpw.getpw(loc, self.lookup_user, self.stat,
                               brk=b'-', alias=b'alias')
        try:
            n = users.nughde_get(local, users.cdb_path(self.qhome), getpw_fn)
        except Qlx:
            return A                     # deferred, not bounced
        if n.uid == 0 or not n.dash:
            return A
        home = os.fsencode(n.home)
        if home in self.unreadable or os.stat(home).st_mode & 0o002:
            return A
        names = {os.fsencode(f) for f in os.listdir(home)
                 if os.path.isfile(os.path.join(home, os.fsencode(f)))}
        return A if find_dotqmail(n.dash, n.ext, names)[0] else R


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return FakeWorld(str(tmp_path_factory.mktemp('world')))


@pytest.fixture(scope='module')
def rmap(world):
    m = RcptMap(world.install(), routing=routing())
    assert m.state == 'on', m.warning
    yield m
    m.close()


# -- the table ---------------------------------------------------------------

CASES = [
    # passwd users and their .qmail files
    (b'joe@example.org', A), (b'JOE@EXAMPLE.ORG', A), (b'joe@mail.example.org', A),
    (b'joe', A),                              # @envnoathost added
    (b'joe-list@example.org', A), (b'Joe-LIST@example.org', A),
    (b'joe-link@example.org', A),             # symlink to a file
    (b'joe-dangling@example.org', A),         # any symlink: never followed by root
    (b'joe-sub/x@example.org', U),            # a .qmail file in a subdirectory
    (b'joe-dir@example.org', R),              # a directory is no .qmail file
    (b'joe-nolist@example.org', R), (b'joe-@example.org', R),
    (b'joe-a.b@example.org', A), (b'joe-a:b@example.org', A), (b'joe-A.B@example.org', A),
    (b'joe-upper@example.org', R),            # .qmail-Upper: never a candidate
    (b'joe-dot.ted@example.org', R),          # .qmail-dot.ted: never a candidate
    (b'joe-bar@example.org', R), (b'joe-bar-x@example.org', A),
    (b'joe-bar-@example.org', A), (b'joe-Bar-X.Y@example.org', A),
    (b'joe-baz@example.org', R), (b'joe-bazx@example.org', R),  # .qmail-bazdefault
    (b'joe-foo@example.org', A),              # the user joe-foo
    (b'joe-foo-bar@example.org', R),          # joe-foo's, not joe's -default
    (b'joe-foox@example.org', R),
    (b'ann@example.org', A), (b'ann-x@example.org', R), (b'ann-t-dev@example.org', A),
    (b'ann-T-OPS-1@example.org', A),
    (b'bob@example.org', A), (b'bob-any-thing.at.all@example.org', A),
    (b'carol@example.org', A), (b'carol-anything@example.org', A),   # unreadable
    (b'wwrite-anything@example.org', A),      # writable home: deferred
    (b'dave@example.org', R), (b'dave-x@example.org', R),   # not his home
    (b'root@example.org', A), (b'root-x@example.org', R),   # alias's .qmail-root
    (b'eve@example.org', R), (b'x' * 32 + b'@example.org', R),
    # the alias user: as a passwd user, and as the catch-all
    (b'alias@example.org', A), (b'alias-postmaster@example.org', A),
    (b'alias-nosuch@example.org', R),
    (b'postmaster', A), (b'PostMaster@Example.Org', A), (b'mailer-daemon@example.org', A),
    (b'owner-anything@example.org', A), (b'owner-@example.org', A),
    (b'owner@example.org', R), (b'nosuch@example.org', R),
    (b'list.x@example.org', A), (b'LIST:X@example.org', A),
    # users/assign
    (b'sales@example.org', A), (b'SALES@example.org', A), (b'nobox@example.org', R),
    (b'plain@example.org', A), (b'plain-x@example.org', R),
    (b'team-dev@example.org', A), (b'team-x@example.org', R),
    (b'team-ops-1@example.org', A), (b'team-@example.org', R),
    (b'help@example.org', A), (b'helpdesk-x@example.org', A),
    (b'toor@example.org', A),                 # uid 0: deferred, not refused
    # virtualdomains: prepend-local
    (b'info@virt.example', A), (b'INFO@Virt.Example', A), (b'nope@virt.example', R),
    (b'x@other.example', R), (b't-dev@Other.Example', A),
    # not local
    (b'joe@remote.example', U), (b'x@sub.virt.example', U),
    (b'joe%remote.example@example.org', U),
    # too long to look up (a lookup per '-'): refused, so that padding
    # gets no unknown name past the map
    (b'nosuch' + b'-' * 250 + b'@example.org', R),
    (b'nosuch' + b'-' * 251 + b'@example.org', R),
    (b'bob-' + b'x' * 253 + b'@example.org', R),      # bob's catch-all, but too long
]


@pytest.mark.parametrize('recip,want', CASES)
def test_check(rmap, recip, want):
    got = rmap.check(recip, routing())
    assert got == want, '%r: got %s want %s (%r)' % (
        recip, got, want, rmap.explain(recip, routing()))


# -- the map agrees with qmail's own functions ---------------------------------

HEADS = [b'joe', b'Joe', b'joe-foo', b'ann', b'bob', b'carol', b'dave', b'root',
         b'eve', b'alias', b'wwrite', b'sales', b'nobox', b'plain', b'team',
         b'help', b'toor', b'postmaster', b'owner', b'list', b'nosuch', b'jo', b'']
TAILS = [b'', b'-', b'x', b'-list', b'-foo', b'-foo-bar', b'-a.b', b'-A:B',
         b'-t-dev', b'-T-OPS-9', b'-bar-', b'-bar-q', b'-baz', b'-info',
         b'-default', b'-postmaster', b'.x', b':x', b'-upper', b'-dir', b'-link']


def test_agrees_with_qmail(world, rmap, monkeypatch):
    wrong = []
    for head in HEADS:
        for tail in TAILS:
            local = head + tail
            got = rmap.check(local + b'@example.org', routing())
            want = world.oracle(local, monkeypatch)
            if got != want:
                wrong.append((local, got, want))
    assert not wrong, 'local, got, want: %r' % wrong


FUZZ_ALPHABET = b'joeantmhlp-.:xE'


def test_agrees_with_qmail_fuzz(world, rmap, monkeypatch):
    rnd = random.Random(1)
    wrong = []
    for _ in range(3000):
        local = bytes(rnd.choice(FUZZ_ALPHABET)
                      for _ in range(rnd.randint(0, 10)))
        got = rmap.check(local + b'@example.org', routing())
        want = world.oracle(local, monkeypatch)
        if got != want:
            wrong.append((local, got, want))
    assert not wrong, 'local, got, want: %r' % wrong[:20]


def test_warnings(world):
    warnings = []
    world.build(warnings)
    text = '\n'.join(warnings)
    for who in ('carol', 'wwrite', 'toor'):
        assert who in text, 'no warning about %s in %r' % (who, warnings)
    assert 'joe' not in text.replace('joe-foo', ''), warnings


# -- precedence: users/cdb before passwd, and its wildchars rule --------------

@pytest.mark.parametrize('assign,cases', [
    # +jo catches joe: the passwd user never sees it
    (b'+jo:ann:1003:1003:HOME/ann:-:t-:\n.\n',
     [(b'joe', R), (b'jodev', A), (b'joe-list', R), (b'ann', A), (b'jo', R)]),
    # case does not matter in a wildcard either (qmail-newu lowercases it)
    (b'+JO:ann:1003:1003:HOME/ann:-:t-:\n.\n',
     [(b'joe', R), (b'joe-list', R), (b'jodev', A)]),
    # a simple assignment beats a wildcard; a longer wildcard a shorter one
    (b'=joe-x:bob:1004:1004:HOME/bob:-:zz:\n'
     b'+joe-:ann:1003:1003:HOME/ann:-::\n'
     b'+joe-t-:bob:1004:1004:HOME/bob:-:q:\n.\n',
     [(b'joe-x', A), (b'joe-t-dev', A), (b'joe-list', R), (b'joe', A),
      (b'joe-foo', R)]),
    # +: catches everything
    (b'+:ann:1003:1003:HOME/ann:-::\n.\n',
     [(b'joe', R), (b't-dev', A), (b'postmaster', R)]),
    # an empty users/cdb: passwd and alias only
    (b'.\n', [(b'joe', A), (b'joe-list', A), (b'sales', R)]),
])
def test_precedence(tmp_path, monkeypatch, assign, cases):
    w = FakeWorld(str(tmp_path), assign=assign)
    rnd = random.Random(2)
    with RcptMap(w.install(), routing=routing()) as m:
        for local, want in cases:
            got = m.check(local + b'@example.org')
            assert got == want, '%r: got %s want %s' % (local, got, want)
            assert got == w.oracle(local, monkeypatch), local
        for _ in range(500):
            local = bytes(rnd.choice(FUZZ_ALPHABET)
                          for _ in range(rnd.randint(0, 9)))
            got = m.check(local + b'@example.org')
            assert got == w.oracle(local, monkeypatch), (local, got)


def test_a_slash_in_dash_or_ext_refuses_nothing(tmp_path, monkeypatch):
    """qmail-pw2u -/ (dash "-/") and users/assign lines with a '/' in the
    dash or the ext send qmail-local into a subdirectory of the home
    (.qmail-/foo); its names are not listed, so none of the owner's
    addresses is refused, among them those a file there delivers."""
    assign = (b'+joe-:ann:1003:1003:HOME/ann:-/::\n'
              b'=lst:ann:1003:1003:HOME/ann:-:/foo:\n'
              b'+sub-:ann:1003:1003:HOME/ann:-:/:\n.\n')
    w = FakeWorld(str(tmp_path), assign=assign)
    sub = os.path.join(w.root, 'home', 'ann', '.qmail-')
    os.mkdir(sub)
    with open(os.path.join(sub, 'foo'), 'w') as f:
        f.write('./Maildir/\n')
    with RcptMap(w.install(), routing=routing()) as m:
        for local in (b'joe-foo', b'joe-nosuch', b'lst', b'sub-foo', b'sub-bar'):
            assert m.check(local + b'@example.org') == A, local
        assert m.check(b'ann-nosuch@example.org') == R     # ann's own dash has none


def test_the_alias_user_as_a_user_has_this_homes_alias_dir(tmp_path, monkeypatch):
    """alias-foo@ is the passwd user alias with ext foo: qmail-getpw gives
    it this home's alias/, as every address the alias user takes, not
    its passwd home (another installation's, here)."""
    w = FakeWorld(str(tmp_path), alias_files=ALIAS_FILES + ['.qmail-foo'])
    elsewhere = os.path.join(str(tmp_path), 'otherqmail', 'alias')
    w.make_home(elsewhere, ['.qmail-bar'])
    w.entries[b'alias'].pw_dir = elsewhere
    w.owners[os.fsencode(elsewhere)] = 1010
    with RcptMap(w.install(), routing=routing()) as m:
        for local, want in [(b'alias-foo', A), (b'alias-bar', R)]:
            got = m.check(local + b'@example.org')
            assert got == want, '%r: got %s want %s' % (local, got, want)
            assert got == w.oracle(local, monkeypatch), local


def test_alias_default_takes_what_nobody_owns(tmp_path):
    w = FakeWorld(str(tmp_path), alias_files=ALIAS_FILES + ['.qmail-default'])
    with RcptMap(w.install(), routing=routing()) as m:
        for local, want in [(b'nosuch', A), (b'dave', A), (b'Anything-At.All', A),
                            (b'joe-nolist', R), (b'ann-x', R), (b'nobox', R),
                            (b'team-x', R)]:
            got = m.check(local + b'@example.org')
            assert got == want, '%r: got %s want %s' % (local, got, want)


def test_no_users_cdb(tmp_path):
    w = FakeWorld(str(tmp_path))
    os.unlink(os.path.join(w.qhome, 'users', 'cdb'))
    with RcptMap(w.install(), routing=routing()) as m:
        assert m.check(b'sales@example.org') == R
        assert m.check(b'joe-list@example.org') == A


def test_broken_users_cdb_is_fatal(tmp_path):
    w = FakeWorld(str(tmp_path))
    with open(os.path.join(w.qhome, 'users', 'cdb'), 'wb') as f:
        f.write(b'garbage')
    with pytest.raises(newrcpt.Fatal):
        w.build()


def test_no_alias_user_accepts_the_rest(tmp_path):
    w = FakeWorld(str(tmp_path))
    del w.entries[b'alias']
    warnings = []
    db = cdb.Cdb.from_bytes(cdb.make(w.build(warnings)))
    assert rcptmap.decide(b'nosuch', db.get, db.get(b'#w'))[0] is True
    assert rcptmap.decide(b'joe-nolist', db.get, db.get(b'#w'))[0] is False
    assert any('alias' in t for t in warnings), warnings


# -- the file: missing, corrupt, stale, installed -------------------------------

def test_missing_map_is_off(tmp_path):
    m = RcptMap(str(tmp_path / 'rcpt.cdb'), routing=routing())
    assert (m.state, m.warning) == ('off', None)
    assert m.check(b'nosuch@example.org') == U


def good_map(world):
    with open(world.install(), 'rb') as f:
        return f.read()


def bad_record(data):
    recs = list(cdb.Cdb.from_bytes(data))
    return cdb.make([(k, b'?' if k == b'!' else d) for k, d in recs])


@pytest.mark.parametrize('name,mangle', [
    ('garbage', lambda d: b'this is not a cdb'),
    ('truncated', lambda d: d[:len(d) - 40]),
    ('header only', lambda d: d[:2048]),
    ('no version', lambda d: cdb.make([(b'!', b'- alias')])),
    ('bad record', bad_record),
    ('no family', lambda d: cdb.make([(b'#v', b'1'), (b'#w', b'-')])),
    ('bad stamps', lambda d: cdb.make([(b'#v', b'1'), (b'#s', b'x')])),
    ('record outside', lambda d: d[:2048] + b'\xff' * (len(d) - 2048)),
])
def test_corrupt_map_answers_unknown(world, tmp_path, name, mangle):
    path = tmp_path / 'rcpt.cdb'
    path.write_bytes(mangle(good_map(world)))
    m = RcptMap(str(path), routing=routing())
    for recip in (b'nosuch@example.org', b'joe@example.org', b'joe-x@example.org'):
        assert m.check(recip) == U, (name, recip, m.state)
    assert m.state == 'broken' and m.warning, (name, m.state, m.warning)


def test_stale_map_refuses_nothing(tmp_path):
    w = FakeWorld(str(tmp_path))
    source = os.path.join(w.qhome, 'users', 'cdb')
    path = w.install(stamp_paths=[source, os.path.join(w.qhome, 'alias')])
    with RcptMap(path, routing=routing()) as m:
        assert m.state == 'on'
        assert m.check(b'nosuch@example.org') == R
    # qmail-newu ran again; qmail-newrcpt did not
    w.write_assign(ASSIGN + b'')
    with RcptMap(path, routing=routing()) as m:
        assert m.state == 'stale' and 'users/cdb' in m.warning
        assert m.check(b'nosuch@example.org') == U
        assert m.check(b'joe-list@example.org') == A
    # an alias .qmail file came
    w.install(stamp_paths=[os.path.join(w.qhome, 'alias')])
    open(os.path.join(w.qhome, 'alias', '.qmail-nosuch'), 'w').close()
    # timestamps are coarser than a test is fast: age the stamp for sure
    st = os.stat(os.path.join(w.qhome, 'alias'))
    os.utime(os.path.join(w.qhome, 'alias'),
             ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with RcptMap(path, routing=routing()) as m:
        assert m.state == 'stale'
        assert m.check(b'nosuch@example.org') == U


def test_installed_mode_and_atomic(world):
    path = world.install()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert not os.path.exists(path.replace('rcpt.cdb', 'rcpt.cdb.tmp'))


def test_load_follows_control(tmp_path):
    w = FakeWorld(str(tmp_path))
    w.install()
    ctl = os.path.join(w.qhome, 'control')
    with open(os.path.join(ctl, 'locals'), 'w') as f:
        f.write('example.org\n')
    with open(os.path.join(ctl, 'virtualdomains'), 'w') as f:
        f.write('virt.example:joe\n')
    assert rcptmap.load(w.qhome) is None       # off without control/rcptcheck
    open(os.path.join(ctl, 'rcptcheck'), 'w').close()
    m = rcptmap.load(w.qhome)
    assert m.state == 'on'
    assert m.check(b'info@virt.example') == A
    assert m.check(b'nope@virt.example') == R
    assert m.check(b'joe@mail.example.org') == U   # not in this locals
    m.close()
    os.unlink(rcptmap.map_path(w.qhome))
    m = rcptmap.load(w.qhome)
    assert m.state == 'off' and 'qmail-newrcpt' in m.warning
    assert m.check(b'nosuch@example.org') == U


def test_show_record():
    got = newrcpt.show_record(b'efoo\0a b\\', b'+ user x')
    assert got == b'efoo\\x00a b\\x5c\t+ user x\n', got


@pytest.mark.parametrize('text, want', [
    ('passwd: files\n', []),
    ('passwd:         files systemd\ngroup: files\n', []),
    ('passwd: files sss [NOTFOUND=return] ldap  # comment\n', ['sss', 'ldap']),
    ('# passwd: ldap\npasswd: compat\n', []),
    ('', []),
])
def test_nss_sources_newrcpt_cannot_list(text, want):
    from qmail import newrcpt
    assert newrcpt.nss_unlisted(text) == want


def test_reused_read_whole_or_in_pieces_saying_what_it_holds(world, monkeypatch):
    """A map read in pieces holds a descriptor; it is kept all the same
    (opening it again made qmail-smtpd read every control file again,
    37-87 ms a session), and says so: a qmail-listen worker does not
    count it as one left open."""
    path = world.install()
    with RcptMap(path, routing=routing()) as m:
        assert m.reusable() and m.descriptors == 0
    monkeypatch.setattr(cdb, 'READ_ALL_LIMIT', 0)
    with RcptMap(path, routing=routing()) as m:
        assert m.state == 'on' and m.reusable() and m.descriptors == 1
    assert m.descriptors == 0               # closed


def test_listed_lookup_answers_as_getpwnam_does():
    """qmail-newrcpt's getpwnam from the getpwall listing (one pass, where
    a getpwnam a user made it quadratic): the first entry of each name."""
    import pwd
    pw = types.SimpleNamespace
    entries = [pw(pw_name='joe', pw_uid=1), pw(pw_name='Joe', pw_uid=2),
               pw(pw_name='joe', pw_uid=3)]
    lookup = newrcpt.listed_lookup(entries)
    assert lookup(b'joe').pw_uid == 1 and lookup(b'Joe').pw_uid == 2
    assert lookup(b'ann') is None and lookup(b'') is None
    # and on this machine's own passwd, name for name
    system = newrcpt.listed_lookup(pwd.getpwall())
    for entry in pwd.getpwall():
        name = os.fsencode(entry.pw_name)
        assert system(name) == getpw.system_lookup(name), name
        assert system(name.upper()) == getpw.system_lookup(name.upper()), name
