"""qmail-getpw: find the passwd user in charge of a local address.

Usage:    qmail-getpw local
Runs as:  qmailp, started by qmail-lspawn as bin/qmail-getpw local,
          when users/cdb does not assign the address.
Reads:    the passwd database (getpwnam); stats home directories.
Writes:   fd 1: user, uid, gid, homedir, dash, ext, each ending in NUL
          (for the alias user, HOME/alias: alias_home()); nothing at all
          in case of trouble.
Exits:    0 found; 100 no argument; QLX_SYS (118) temporary getpwnam
          trouble; QLX_NFS (115) temporary trouble stat()ing a home;
          QLX_NOALIAS (116) no alias user.  qmail-lspawn passes the code
          on, so all but 0 and 100 are temporary failures.
Trusts:   the passwd database; the address only as a string to split.
See:      qmail-getpw(8), qmail-users(5), qmail-lspawn(8).

Rules (qmail-getpw(8)): an account is a user if its uid is not 0, its
home directory exists, and it owns that directory.  The longest prefix
of local that is either all of local or ends just before the break
character (conf-break, '-') and that, lowercased, names a user shorter
than 32 characters, is the user: dash is '' and ext '' for all of local,
else dash is '-' and ext is what follows the break.  Otherwise the alias
user takes the address, with no checks, dash '-' and ext all of local.
ext keeps local's case; only the user name is lowercased.
"""

import os
import pwd
import sys

from qmail.lib import auto
from qmail.lib.error import is_temporary
from qmail.lib.qlx import Qlx, QLX_NFS, QLX_NOALIAS, QLX_SYS
from qmail.lib.users import Nughde, format_nughde

# conf-break: the user-ext delimiter.  auto.BREAK if the install sets it.
BREAK = getattr(auto, 'BREAK', '-').encode()
# qmail-getpw's username buffer: names must be shorter than this.
GETPW_USERLEN = 32

error_temp = is_temporary      # qmail's name for it


def _b(s) -> bytes:
    return s if isinstance(s, bytes) else os.fsencode(s)


def as_user(name: bytes, lookup_user):
    """lookup_user(name), with temporary trouble as QLX_SYS.

    lookup_user returns a passwd entry (pw_name, pw_uid, pw_gid, pw_dir)
    or None; it raises OSError when it cannot tell (qmail's ETXTBSY).
    """
    try:
        return lookup_user(name)
    except OSError as err:
        raise Qlx(QLX_SYS, 'getpwnam trouble: %s' % err) from err


def is_user(pw, stat_fn) -> bool:
    """Rules (1)-(3): uid not 0, home exists, owned by the account.

    A home that cannot be stat()ed for a temporary reason is QLX_NFS:
    the address must not fall through to alias because NFS is down.
    """
    if pw is None or not pw.pw_uid:
        return False
    try:
        st = stat_fn(_b(pw.pw_dir))
    except OSError as err:
        if error_temp(err):
            raise Qlx(QLX_NFS, 'unable to stat home: %s' % err) from err
        return False
    return st.st_uid == pw.pw_uid


def record(pw, dash: bytes, ext: bytes) -> Nughde:
    return Nughde(_b(pw.pw_name), pw.pw_uid, pw.pw_gid, _b(pw.pw_dir),
                  dash, ext)


def getpw(local: bytes, lookup_user, stat_fn=os.stat, *, brk: bytes = BREAK,
          alias: bytes = None) -> Nughde:
    """The user in charge of local, by qmail-getpw's rules; raises Qlx.

    lookup_user(name: bytes) -> passwd entry or None; stat_fn(path) ->
    object with st_uid, raising OSError.  brk is the break character
    (b'' turns extensions off); alias the catch-all user's name.
    """
    if alias is None:
        alias = auto.USER_ALIAS.encode()
    local = local.split(b'\0', 1)[0]        # a C string, as argv gives it
    n = len(local)
    while True:
        if n < GETPW_USERLEN and (n == len(local) or local[n:n + 1] == brk):
            pw = as_user(local[:n].lower(), lookup_user)
            if is_user(pw, stat_fn):
                dash, ext = (b'', b'') if n == len(local) else (b'-', local[n + 1:])
                if _b(pw.pw_name) == alias:     # alias@, alias-x@: its files, below
                    return Nughde(_b(pw.pw_name), pw.pw_uid, pw.pw_gid, alias_home(), dash, ext)
                return record(pw, dash, ext)
        if n == 0:
            break
        n -= 1
    pw = as_user(alias, lookup_user)
    if pw is None:
        raise Qlx(QLX_NOALIAS, 'no alias user')
    return Nughde(_b(pw.pw_name), pw.pw_uid, pw.pw_gid, alias_home(), b'-', local)


def alias_home() -> bytes:
    """The alias user's files: this home's alias/ directory, not the
    alias user's passwd home.  The two are the same in a default install
    (/var/qmail/alias), and several homes can share one set of users
    (make setup QMAIL_HOME=...); qmail-pw2u writes it too."""
    return os.fsencode(os.path.join(auto.QMAIL, 'alias'))


def system_lookup(name: bytes):
    """getpwnam: the entry, or None.  Like getpwnam, it cannot tell a
    missing user from a failing database (qmail-getpw(8) WARNING)."""
    if not name:
        return None
    try:
        return pwd.getpwnam(os.fsdecode(name))
    except KeyError:
        return None


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if not argv:
        return 100
    local = _b(argv[0])
    try:
        found = getpw(local, system_lookup, os.stat)
    except Qlx as err:
        return err.code
    out = format_nughde(found)
    # Straight to fd 1, not through sys.stdout: qmail-lspawn may call
    # main() in a forked child whose inherited stdout buffer is not ours.
    try:
        while out:
            out = out[os.write(1, out):]
    except OSError:
        return QLX_SYS
    return 0


def run():
    try:
        code = main()
    except Exception as e:                  # last resort: temporary
        sys.stderr.write('qmail-getpw: fatal: internal bug: %s\n'
                         % type(e).__name__)
        code = QLX_SYS
    sys.exit(code)


if __name__ == '__main__':
    run()
