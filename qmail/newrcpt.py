"""qmail-newrcpt: compile the deliverable local addresses for qmail-smtpd.

Beyond qmail 1.03.
Runs as:  root (the admin), by hand like qmail-newu: after qmail-newu,
          after adding or removing a user, and after anyone adds or
          removes a .qmail file (from cron, say, every few minutes).
Usage:    qmail-newrcpt [-n]
Reads:    HOME/users/cdb, as qmail-lspawn does (not users/assign: run
          qmail-newu first); the passwd database: every entry, each name
          then looked up as qmail-getpw looks it up; the mode of each
          home directory and the names of its .qmail files, never their
          contents; HOME/alias likewise; whether control/rcptcheck exists.
Writes:   HOME/users/rcpt.cdb.tmp, renamed to HOME/users/rcpt.cdb (mode
          0644), with the keys described in qmail/lib/rcptmap.py.  With
          -n, the records on fd 1 instead, one a line, and no file.
          stderr: "qmail-newrcpt: warning: ..." for each owner whose
          addresses are all accepted because its files could not be
          judged, and for sources that look forgotten.
Exits:    0 done, warnings or not; 100 usage; 111 with "qmail-newrcpt:
          fatal: ..." for an unusable users/cdb or trouble writing, and
          then users/rcpt.cdb is left alone.
Trusts:   users/cdb and passwd, as qmail-lspawn and qmail-getpw do; a
          home only for the names in it, which are stat()ed, not opened.
See:      qmail/lib/rcptmap.py (keys, lookup, staleness); qmail-users(5),
          qmail-getpw(8), qmail-local(8), dot-qmail(5).

Who owns a local part (lowercased: every step below ignores case):
  1. a users/cdb simple assignment for exactly it;
  2. the longest users/cdb wildcard it starts with, among those the
     lookup can reach (the wildchars rule of qmail/lib/users.py);
  3. the longest passwd user u (qmail-getpw's rules: uid not 0, home
     owned by u, name shorter than 32) that it equals or that it starts
     with followed by the break character;
  4. the alias user, with HOME/alias.
The owner gives qmail-local a home, a dash and an ext.  With an empty
dash the address is deliverable (a missing .qmail means the default
delivery); otherwise it is deliverable iff qmail-local finds
.qmail<dash><ext> or one of its -default files there, as
qmail.local.find_dotqmail decides.  A family's files become "e" and "d"
keys relative to the family's prefix, so one cdb lookup per candidate
answers for any address.  Trouble qmail-local or qmail-lspawn would meet
as a temporary failure (unreadable or writable home, uid 0, no alias
user, a .qmail file that cannot be stat()ed) is not ours to judge: every
address of that owner is accepted, with a warning.  So is every
address of an owner whose dash or ext has a '/' (its .qmail files are in
a subdirectory, which is not listed).
"""

import errno
import os
import pwd
import stat
import sys
from typing import NamedTuple, Optional

from qmail.lib import auto, cdb, rcptmap
from qmail.lib.cdb import InstallError, install
from qmail.lib.qlx import Qlx
from qmail.lib.users import parse_nughde
from qmail.lib.error import flushed_status, guard_stdout
from qmail import getpw
from qmail.local import find_dotqmail, make_safeext
from qmail.local_deliver import is_temporary

FATAL = 'qmail-newrcpt: fatal: '
WARNING = 'qmail-newrcpt: warning: '
USAGE = 'qmail-newrcpt: usage: qmail-newrcpt [ -n ]\n'
# The passwd file stamped for staleness; with NSS beyond files, adding a
# user elsewhere is not seen (README of rcptmap: run qmail-newrcpt).
PASSWD_FILE = '/etc/passwd'


class Fatal(Exception):
    """Stop with exit 111 and this message after FATAL."""


class Owner(NamedTuple):
    """Who takes some local parts, as qmail-local will see them."""
    note: bytes                  # b'user joe', for the map and warnings
    dash: bytes
    ext: bytes                   # ext; for a family, what precedes the rest
    files: Optional[frozenset]   # .qmail names in the home; None: unjudged


class World(NamedTuple):
    """Everything that decides ownership and deliverability."""
    exact: dict                  # users/cdb =local: local -> Owner
    wild: dict                   # reachable users/cdb +loc: loc -> Owner
    users: dict                  # qmail-getpw users: name -> Owner
    alias: Owner
    brk: bytes                   # conf-break


# ---- pure: owners and their keys -------------------------------------------

def accepts_all(owner: Owner) -> bool:
    """Every address of owner is deliverable, or not ours to refuse.
    A '/' in the dash or the ext (qmail-pw2u -/, or such a users/assign
    line) sends qmail-local into a subdirectory of the home (.qmail-/foo),
    whose names are not listed here: nothing of that owner is refused."""
    return owner.files is None or not owner.dash or b'/' in owner.dash + owner.ext


def exact_ok(owner: Owner) -> bool:
    """qmail-local delivers owner's single address (ext fixed)."""
    if accepts_all(owner):
        return True
    return find_dotqmail(owner.dash, owner.ext, owner.files)[0] is not None


def family_rules(owner: Owner):
    """(all, exact, defaults) for a family: all deliverable; else the
    rests (in safeext form) that a .qmail file names exactly, and the
    rest prefixes, each ending in '-', that a -default file covers.

    qmail-local looks for .qmail<dash><safeext>, then for each prefix of
    safeext that is empty or ends in '-', longest first,
    .qmail<dash><prefix>default; safeext is safe(ext) + safe(rest).
    """
    if accepts_all(owner):
        return True, [], []
    pre = make_safeext(owner.ext)
    head = b'.qmail' + owner.dash
    exact, defaults = set(), set()
    for name in owner.files:
        if not name.startswith(head):
            continue
        x = name[len(head):]
        if make_safeext(x) != x:
            continue          # uppercase or '.': no safeext names it
        if x.startswith(pre):
            exact.add(x[len(pre):])
        if x.endswith(b'default'):
            y = x[:-len(b'default')]
            if y and not y.endswith(b'-'):
                continue      # .qmail-foodefault is no -default file
            if pre.startswith(y):
                return True, [], []
            if y.startswith(pre):
                defaults.add(y[len(pre):])
    return False, sorted(exact), sorted(defaults)


def wild_owner(world: World, local: bytes):
    """The longest reachable users/cdb wildcard local starts with, or None."""
    for i in range(len(local), -1, -1):
        if local[:i] in world.wild:
            return local[:i]
    return None


def prefix_owner(world: World, prefix: bytes) -> tuple:
    """Who owns the local parts starting with prefix, counting only rules
    no longer than prefix: ('cdb', loc), ('user', name) or ('alias', b'')."""
    loc = wild_owner(world, prefix)
    if loc is not None:
        return 'cdb', loc
    if len(world.brk) == 1:
        for i in range(len(prefix) - 1, 0, -1):
            if prefix[i:i + 1] == world.brk and prefix[:i] in world.users:
                return 'user', prefix[:i]
    return 'alias', b''


def families(world: World) -> list:
    """[(prefix, Owner)] of every family that owns its own prefix."""
    out = list(world.wild.items())
    if len(world.brk) == 1:
        for name, owner in world.users.items():
            if prefix_owner(world, name + world.brk) == ('user', name):
                out.append((name + world.brk, owner))
    if b'' not in world.wild:
        out.append((b'', world.alias))
    return sorted(out)


def mark(ok: bool, owner: Owner) -> bytes:
    return (b'+ ' if ok else b'- ') + owner.note


def records(world: World, stamps=()) -> list:
    """The (key, data) records of users/rcpt.cdb for world; stamps is
    [(path, stamp)] of the sources read (rcptmap.stamp)."""
    fams = families(world)
    famchars = bytes(sorted({p[-1] for p, _ in fams if p}))
    out = [(b'#v', rcptmap.VERSION), (b'#w', famchars),
           (b'#s', rcptmap.format_stamps(stamps))]
    for local, owner in sorted(world.exact.items()):
        out.append((b'=' + local, mark(exact_ok(owner), owner)))
    for name, owner in sorted(world.users.items()):
        # the user's own name: empty dash, so the default delivery at worst
        if name not in world.exact and wild_owner(world, name) is None:
            out.append((b'=' + name, mark(True, owner)))
    for prefix, owner in fams:
        flagall, exact, defaults = family_rules(owner)
        out.append((b'!' + prefix, mark(flagall, owner)))
        out.extend((b'e' + prefix + b'\0' + s, b'+') for s in exact)
        out.extend((b'd' + prefix + b'\0' + s, b'+') for s in defaults)
    return out


def show_record(key: bytes, data: bytes) -> bytes:
    """One record as a line for -n: key, a tab, data; bytes that are
    not printable (NUL, tab, newline...) and backslash as \\xNN."""
    def esc(b):
        return b''.join(bytes((c,)) if 32 <= c < 127 and c != 92
                        else b'\\x%02x' % c for c in b)
    return esc(key) + b'\t' + esc(data) + b'\n'


# ---- I/O: reading the world through injected functions ---------------------

def _b(s) -> bytes:
    return s if isinstance(s, bytes) else os.fsencode(s)


def read_users_cdb(path):
    """(exact, wild, wildchars) of users/cdb as raw records, the first
    record of each key winning as in qmail-lspawn's lookup; empty if the
    file does not exist.  Fatal if it exists but is unusable: qmail-lspawn
    defers every delivery then, and no map can describe that."""
    try:
        db = cdb.Cdb(path)
    except FileNotFoundError:
        return {}, {}, b''
    except (OSError, cdb.CdbError) as err:
        raise Fatal('unable to read users/cdb: %s' % err) from err
    exact, wild, wildchars = {}, {}, None
    with db:
        try:
            for key, data in db:
                if key == b'':
                    if wildchars is None:
                        wildchars = data
                elif key.startswith(b'!') and key.endswith(b'\0'):
                    exact.setdefault(key[1:-1], data)
                elif key.startswith(b'!'):
                    wild.setdefault(key[1:], data)
        except cdb.CdbError as err:
            raise Fatal('unable to read users/cdb: %s' % err) from err
    if wildchars is None:
        raise Fatal('users/cdb has no wildchars key: run qmail-newu')
    # Only a prefix ending in a wildchar is ever looked up (users.py).
    wild = {loc: data for loc, data in wild.items()
            if not loc or loc[-1] in wildchars}
    return exact, wild, wildchars


class Survey:
    """Reads homes and passwd through injected functions; collects
    warnings through warn(text)."""

    def __init__(self, home, *, list_users, lookup_user, stat_fn,
                 listdir_fn, patrn, warn):
        self.home = home
        self.list_users = list_users
        self.lookup_user = lookup_user
        self.stat_fn = stat_fn
        self.listdir_fn = listdir_fn
        self.patrn = patrn
        self.warn = warn
        self._files = {}

    def files(self, homedir: bytes, who: bytes):
        """The .qmail names qmail-local would find in homedir, or None
        (with a warning) when qmail-local would defer instead."""
        if homedir not in self._files:
            self._files[homedir] = self._scan(homedir, who)
        return self._files[homedir]

    def _give_up(self, homedir: bytes, who: bytes, why: str):
        self.warn('%s (%s): %s; accepting every address of %s'
                  % (os.fsdecode(homedir), os.fsdecode(who), why,
                     os.fsdecode(who)))
        return None

    def _scan(self, homedir: bytes, who: bytes):
        # qmail-local's check_home: each of these defers every delivery.
        try:
            st = self.stat_fn(homedir)
        except OSError as err:
            return self._give_up(homedir, who, 'unable to stat home: %s'
                                 % err.strerror)
        if st.st_mode & self.patrn:
            return self._give_up(homedir, who, 'home directory is writable')
        if st.st_mode & stat.S_ISVTX:
            return self._give_up(homedir, who, 'home directory is sticky '
                                 '(being edited: run again later)')
        try:
            names = self.listdir_fn(homedir)
        except OSError as err:
            return self._give_up(homedir, who, 'unable to read home: %s'
                                 % err.strerror)
        found = set()
        for name in names:
            name = _b(name)
            if name.startswith(b'.qmail') and self._exists(homedir, name, who):
                found.add(name)
        return frozenset(found)

    def _exists(self, homedir: bytes, name: bytes, who: bytes) -> bool:
        """qmail-local's probe: a regular file; trouble it would defer on
        counts as existing, so nothing is refused.  A symlink counts as
        existing without being followed: root resolving it would say, in
        a map everyone reads (and at RCPT), whether the file a user named
        exists where only root may look; qmail-local, as the user,
        follows it itself."""
        path = os.path.join(homedir, name)
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return True
        except OSError:
            pass
        try:
            st = self.stat_fn(path)
        except OSError as err:
            if is_temporary(err) or err.errno in (errno.EPERM, errno.EACCES):
                self.warn('unable to stat %s (%s): %s' % (
                    os.fsdecode(path), os.fsdecode(who), err.strerror))
                return True
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        if st.st_mode & self.patrn:
            self.warn('%s (%s) is writable: qmail-local defers deliveries '
                      'through it' % (os.fsdecode(path), os.fsdecode(who)))
        return True

    def assigned(self, key: bytes, data: bytes, wild: bool) -> Owner:
        """The Owner of a users/cdb record, as qmail-lspawn would use it."""
        note = b'assign ' + (b'+' if wild else b'=') + key
        try:
            n = parse_nughde(data + b'\0')
        except Qlx:
            self.warn('users/cdb record for %s is malformed; accepting '
                      'its addresses' % os.fsdecode(key))
            return Owner(note, b'-', b'', None)
        if n.uid == 0:
            self.warn('users/cdb assigns %s to uid 0, which qmail-lspawn '
                      'refuses; accepting its addresses' % os.fsdecode(key))
            return Owner(note, n.dash, n.ext, None)
        files = self.files(n.home, note) if n.dash else frozenset()
        return Owner(note, n.dash, n.ext, files)

    def passwd_users(self, alias: bytes = None) -> dict:
        """{name: Owner} of every passwd name qmail-getpw would take; the
        alias user's files are HOME/alias there too (alias@, alias-x@)."""
        out = {}
        for pw in self.list_users():
            name = _b(pw.pw_name).lower()
            if not name or len(name) >= getpw.GETPW_USERLEN or name in out:
                continue
            note = b'user ' + name
            try:
                found = self.lookup_user(name)
                if not getpw.is_user(found, self.stat_fn):
                    continue
            except (OSError, Qlx) as err:
                self.warn('unable to look up user %s: %s; accepting its '
                          'addresses' % (os.fsdecode(name), err))
                out[name] = Owner(note, b'-', b'', None)
                continue
            homedir = self.alias_home() if name == alias else _b(found.pw_dir)
            out[name] = Owner(note, b'-', b'', self.files(homedir, note))
        return out

    def alias_user(self, alias: bytes) -> Owner:
        note = b'alias'
        try:
            found = self.lookup_user(alias)
        except OSError as err:
            self.warn('unable to look up the alias user: %s; accepting '
                      'every address nobody else owns' % err)
            return Owner(note, b'-', b'', None)
        if found is None:
            self.warn('no alias user %s: qmail-lspawn defers; accepting '
                      'every address nobody else owns' % os.fsdecode(alias))
            return Owner(note, b'-', b'', None)
        return Owner(note, b'-', b'', self.files(self.alias_home(), note))

    def alias_home(self) -> bytes:
        """Where the alias user's files are: this home's alias/, as
        qmail-getpw's getpw.alias_home() says for the installed home."""
        return os.fsencode(os.path.join(self.home, 'alias'))


def take_stamps(paths, stat_fn, warn) -> list:
    """[(path, stamp)] of the sources, taken before they are read, so an
    edit during the build makes the map stale, never wrong."""
    out = []
    for path in paths:
        try:
            out.append((path, rcptmap.stamp(path, stat_fn)))
        except OSError as err:
            warn('unable to stat %s: %s; changes to it will go unnoticed'
                 % (path, err.strerror))
    return out


def newer(a, b, stat_fn) -> bool:
    """a exists and was changed after b (or b is missing)."""
    try:
        ta = stat_fn(a).st_mtime_ns
    except OSError:
        return False
    try:
        return ta > stat_fn(b).st_mtime_ns
    except OSError:
        return True


def qmail_names(path) -> list:
    """The names in directory path that start with ".qmail"."""
    prefix = b'.qmail' if isinstance(path, bytes) else '.qmail'
    with os.scandir(path) as it:
        return [e.name for e in it if e.name.startswith(prefix)]


def build(home, *, list_users=pwd.getpwall, lookup_user=getpw.system_lookup,
          stat_fn=os.stat, listdir_fn=None, stamp_paths=None,
          brk: bytes = getpw.BREAK, alias: bytes = None, patrn: int = None,
          warn=None) -> list:
    """The records of users/rcpt.cdb for the qmail home `home`.

    list_users() -> passwd entries (pw_name, pw_uid, pw_gid, pw_dir);
    lookup_user(name) -> one, or None (qmail-getpw's getpwnam); stat_fn
    as os.stat, listdir_fn(home) the names there (default: those
    starting with ".qmail", read as they come, so a home of millions of
    entries is not held).  stamp_paths: the sources to stamp (default
    users/cdb, HOME/alias, /etc/passwd).  Raises Fatal.
    """
    if listdir_fn is None:
        listdir_fn = qmail_names
    if warn is None:
        def warn(text):
            sys.stderr.write(WARNING + text + '\n')
    if alias is None:
        alias = auto.USER_ALIAS.encode()
    if patrn is None:
        patrn = getattr(auto, 'PATRN', 0o002)
    users_cdb = os.path.join(home, 'users', 'cdb')
    if stamp_paths is None:
        stamp_paths = [users_cdb, os.path.join(home, 'alias'), PASSWD_FILE]
    stamps = take_stamps(stamp_paths, stat_fn, warn)
    if newer(os.path.join(home, 'users', 'assign'), users_cdb, stat_fn):
        warn('users/assign is newer than users/cdb, which qmail-lspawn '
             'uses: run qmail-newu, then qmail-newrcpt')
    exact, wild, _ = read_users_cdb(users_cdb)
    survey = Survey(home, list_users=list_users, lookup_user=lookup_user,
                    stat_fn=stat_fn, listdir_fn=listdir_fn, patrn=patrn,
                    warn=warn)
    world = World(
        exact={k: survey.assigned(k, d, False) for k, d in exact.items()},
        wild={k: survey.assigned(k, d, True) for k, d in wild.items()},
        users=survey.passwd_users(alias),
        alias=survey.alias_user(alias),
        brk=brk)
    return records(world, stamps)


def newrcpt(home, recs) -> None:
    """Install recs as HOME/users/rcpt.cdb, atomically."""
    users = os.path.join(home, 'users')
    try:
        install(os.path.join(users, 'rcpt.cdb.tmp'),
                os.path.join(users, 'rcpt.cdb'), recs)
    except InstallError as err:
        if err.step == 'open':
            raise Fatal('unable to open users/rcpt.cdb.tmp') from err
        if err.step == 'write':
            raise Fatal('unable to write users/rcpt.cdb.tmp') from err
        raise Fatal('unable to move users/rcpt.cdb.tmp to users/rcpt.cdb') \
            from err


NSSWITCH = '/etc/nsswitch.conf'
NSS_LISTED = {'files', 'compat', 'systemd'}     # what getpwall lists whole


def nss_unlisted(text: str) -> list:
    """The passwd sources of an nsswitch.conf text whose users getpwall
    may not list (LDAP, SSSD, ... with enumeration off), which
    qmail-getpw's getpwnam still finds."""
    for line in text.splitlines():
        line = line.split('#', 1)[0].strip()
        if line.startswith('passwd:'):
            return [w for w in line[7:].split()
                    if not w.startswith('[') and w not in NSS_LISTED]
    return []


def listed_lookup(entries):
    """getpwnam answered from a getpwall listing, for a passwd whose every
    source lists its users (nss_unlisted finds none): the first entry of
    each name, the one getpwnam finds.  A getpwnam a user read
    /etc/passwd through again: 50,000 users took 46 s (found by a review
    of large configurations)."""
    first = {}
    for pw in entries:
        first.setdefault(os.fsencode(pw.pw_name), pw)
    return lambda name: first.get(name) if name else None


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    flagdoit = True
    for arg in argv:
        if arg != '-n':
            sys.stderr.write(USAGE)
            return 100
        flagdoit = False
    home = auto.QMAIL
    if not os.path.isdir(home):
        sys.stderr.write(FATAL + 'unable to chdir\n')
        return 111
    try:
        with open(NSSWITCH) as f:
            others = nss_unlisted(f.read())
    except OSError:
        others = []
    if others:
        sys.stderr.write(WARNING + 'passwd comes also from %s (%s): users there '
                         'that this host does not list are refused by the map, and '
                         'adding one changes no file it watches\n'
                         % (' '.join(others), NSSWITCH))
    try:
        if others:
            recs = build(home)
        else:
            entries = pwd.getpwall()
            recs = build(home, list_users=lambda: entries,
                         lookup_user=listed_lookup(entries))
        if flagdoit:
            newrcpt(home, recs)
            if not os.path.exists(os.path.join(home, 'control', 'rcptcheck')):
                sys.stderr.write(WARNING + 'control/rcptcheck does not exist:'
                                 ' qmail-smtpd does not use the map\n')
        else:
            sys.stdout.buffer.write(b''.join(show_record(k, d)
                                             for k, d in recs))
            sys.stdout.buffer.flush()
    except Fatal as err:
        sys.stderr.write(FATAL + '%s\n' % err)
        return 111
    return 0


def run():
    guard_stdout()                  # a full disk or closed fd 1 (-n): one line, 111
    try:
        code = main()
    except MemoryError:
        sys.stderr.write(FATAL + 'out of memory\n')
        code = 111
    except Exception as e:                  # last resort: temporary
        sys.stderr.write(FATAL + 'internal bug: %s\n' % type(e).__name__)
        code = 111
    sys.exit(flushed_status(code, 'qmail-newrcpt'))


if __name__ == '__main__':
    run()
