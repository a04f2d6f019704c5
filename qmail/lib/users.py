"""Which user controls a local address: qmail-lspawn's nughde_get.

The answer is a nughde record: user name, uid, gid, home directory,
dash and ext; qmail-local then reads home/.qmail<dash><ext>.

Order (qmail-lspawn.c, nughde_get; qmail-users(5)):
  1. users/cdb, if it exists, as qmail-newu wrote it:
       ""            the wildchars: the last character of each
                     wildcard assignment's loc, in order of first use
       "!" loc       a wildcard assignment +loc:... (loc lowercased)
       "!" local NUL a simple assignment =local:... (local lowercased)
     each holding "user NUL uid NUL gid NUL home NUL dash NUL ext".
     The address, lowercased, is tried first exactly ("!" local NUL),
     then as a wildcard: every prefix of it, longest first, but only
     prefixes ending in one of the wildchars, and finally the empty
     prefix "!" (an assignment "+:..." catches everything).  A wildcard
     match appends the rest of the address, in its original case, to
     ext.  So a simple assignment beats any wildcard, and a longer loc
     beats a shorter one.
  2. otherwise qmail-getpw (qmail.getpw), the passwd rules.

A users/cdb that exists but cannot be read or lacks the "" key is
QLX_CDB: temporary, never "no such user", since treating a broken
database as absent would deliver to the wrong user.
"""

import os
from typing import NamedTuple

from qmail.lib import cdb
from qmail.lib.control import scan_ulong  # noqa: F401  (pw2u takes it from here)
from qmail.lib.qlx import Qlx, QLX_CDB, QLX_USAGE


class Nughde(NamedTuple):
    user: bytes
    uid: int
    gid: int
    home: bytes
    dash: bytes
    ext: bytes


def parse_nughde(record: bytes) -> Nughde:
    """A NUL-separated record, as qmail-getpw prints it and users/cdb
    holds it (after nughde_get's NUL), into a Nughde.

    As qmail-lspawn's spawn() does: six NUL-terminated fields, anything
    after the sixth NUL ignored; uid and gid by scan_ulong.  A record
    with fewer NULs is QLX_USAGE.
    """
    fields = record.split(b'\0', 6)
    if len(fields) < 7:
        raise Qlx(QLX_USAGE, 'nughde record has fewer than six fields')
    uid, gid = scan_ulong(fields[1]), scan_ulong(fields[2])
    # uid_t and gid_t are 32 bits; a larger number is a broken record.
    if uid > 0xFFFFFFFF or gid > 0xFFFFFFFF:
        raise Qlx(QLX_USAGE, 'uid or gid out of range')
    return Nughde(fields[0], uid, gid, fields[3], fields[4], fields[5])


def format_nughde(n: Nughde) -> bytes:
    """The record as qmail-getpw prints it: six fields, each NUL-terminated."""
    return b''.join((n.user, b'\0', b'%d' % n.uid, b'\0', b'%d' % n.gid,
                     b'\0', n.home, b'\0', n.dash, b'\0', n.ext, b'\0'))


def cdb_lookup(db, local: bytes):
    """The record for local in an open users/cdb, or None if not assigned.

    Pure apart from db.get: the lookup order of nughde_get.  Raises
    CdbError if the database is bad, Qlx(QLX_CDB) if it has no "" key.
    """
    wildchars = db.get(b'')
    if wildchars is None:
        raise Qlx(QLX_CDB, 'users/cdb has no wildchars key')
    lower = b'!' + local.lower()
    data = db.get(lower + b'\0')
    if data is not None:
        return data + b'\0'
    for i in range(len(lower), 0, -1):
        # lower[:i] is "!" and the first i-1 bytes of local.
        if i == 1 or lower[i - 1] in wildchars:
            data = db.get(lower[:i])
            if data is not None:
                return data + local[i - 1:] + b'\0'
    return None


def nughde_get(local: bytes, cdb_path, getpw_fn) -> Nughde:
    """The user in charge of local: users/cdb at cdb_path, else getpw_fn.

    getpw_fn(local) returns a Nughde or raises Qlx (qmail-lspawn runs
    bin/qmail-getpw as qmailp and passes on its exit code).  Raises
    Qlx(QLX_CDB) for a users/cdb that exists but cannot be used, and
    Qlx(QLX_USAGE) for a record without six fields.  The uid may be 0:
    refusing root (QLX_ROOT) is the spawner's job, after setuid.
    """
    local = local.split(b'\0', 1)[0]        # a C string, as lspawn has it
    try:
        db = cdb.Cdb(cdb_path, read_all=cdb.ONE_LOOKUP_READ_ALL)    # (closed below)
    except FileNotFoundError:
        db = None
    except (OSError, cdb.CdbError) as err:
        raise Qlx(QLX_CDB, 'unable to open users/cdb: %s' % err) from err
    if db is not None:
        try:
            record = cdb_lookup(db, local)
        except cdb.CdbError as err:
            raise Qlx(QLX_CDB, 'unable to read users/cdb: %s' % err) from err
        finally:
            db.close()
        if record is not None:
            return parse_nughde(record)
    return getpw_fn(local)


def cdb_path(home: str) -> str:
    """HOME/users/cdb."""
    return os.path.join(home, 'users', 'cdb')
