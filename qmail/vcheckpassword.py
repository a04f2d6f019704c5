"""vcheckpassword: check a virtual user's password, then run a program as
the ids that user's mail belongs to.

Usage:    vcheckpassword program [arg ...]
          e.g. qmail-popup pop.example.org vcheckpassword qmail-pop3d Maildir
Runs as:  root: started by qmail-popup (as root), or by qmail-smtpd's
          AUTH as qmaild through bin/vcheckpassword, a set-uid root
          launcher only root and the nofiles group may run
          (qmail/check-launcher.c).
Reads:    fd 3, "user\\0password\\0timestamp\\0" (the checkpassword
          interface, cr.yp.to/checkpwd/interface.html), at most
          checkpassword.MAXINPUT bytes; the timestamp is not used.
          HOME/users/vpasswd (auto.QMAIL, never the environment), the
          users kept by qmail-vpasswd (see qmail/vpasswd.py for the
          format), trusted only if it is a regular file owned by root
          and writable by root alone.
Does:     when the name (folded to lower case) is there and the password
          verifies against its Argon2id hash: setgroups to the gid alone,
          setgid, setuid (checking no root id is left), chdir to the home
          of the line, sets HOME (that home), USER (the virtual name) and
          SHELL (/usr/sbin/nologin: a virtual user has none), and execs
          program with its arguments.
Exits:    1 the password is wrong or the name unknown (an unknown name
          costs a hash too, so time does not tell which names exist);
          2 misuse (no program, fd 3 unreadable or malformed);
          111 temporary trouble: the file is missing, unreadable or not
          trusted, argon2-cffi is missing, the hash cannot be computed
          (argon2's 64 MB refused: see README on softlimit), becoming the
          ids, the chdir or the exec fails.  Each 111 is logged on fd 2.
Trusts:   HOME/users/vpasswd as written by root; nothing its caller says
          but fd 3's bytes.
See:      qmail-vpasswd, checkpassword, qmail-popup(8).
"""

import os
import sys

from qmail.lib import auto
from qmail.checkpassword import (BAD, MISUSE, TEMP, Trouble, become, execute,
                                 log, take_input, wipe)
from qmail.vpasswd import FILE, lookup, trusted_read

SHELL = '/usr/sbin/nologin'
DUMMY_PASSWORD = b'qmail-vcheckpassword: no such user'


def verify(hasher, stored: bytes, password: bytes) -> bool:
    """argon2-cffi's verify: True, or False for a mismatch or a hash it
    cannot read; Trouble when the hash could not be computed (argon2's
    memory, 64 MB by default, refused under a run script's softlimit, or
    its threads): that says nothing of the password."""
    from argon2.exceptions import InvalidHashError, VerificationError
    from argon2.low_level import error_to_str, lib
    try:
        return hasher.verify(stored.decode('ascii'), bytes(password))
    except VerificationError as err:
        if str(err) in (error_to_str(lib.ARGON2_MEMORY_ALLOCATION_ERROR),
                        error_to_str(lib.ARGON2_THREAD_FAIL)):
            raise Trouble('unable to compute the hash: %s' % err) from None
        return False
    except (InvalidHashError, UnicodeDecodeError):
        return False


def check(data: bytes, user: bytes, password: bytes):
    """The Entry if user may log in with password, else None."""
    try:
        from argon2 import PasswordHasher
    except ImportError:
        raise Trouble('argon2-cffi is not installed') from None
    hasher = PasswordHasher()
    entry = lookup(data, user) if user else None
    if entry is None or entry.uid == 0 or entry.gid == 0:     # no root id, gid either
        # as long as a real check: hash a password with the same parameters
        from argon2.exceptions import HashingError
        try:
            hasher.hash(DUMMY_PASSWORD)
        except HashingError as err:     # as verify's Trouble, for a name that exists
            raise Trouble('unable to compute the hash: %s' % err) from None
        return None
    return entry if verify(hasher, entry.hash, password) else None


def main(argv=None, home=None) -> int:
    """home is for tests: otherwise always auto.QMAIL."""
    argv = sys.argv[1:] if argv is None else argv
    home = auto.QMAIL if home is None else home
    password = None
    try:
        if not argv:
            log('vcheckpassword', 'usage: vcheckpassword program [arg ...]')
            return MISUSE
        got = take_input()
        if got is None:
            return MISUSE
        user, password = got
        try:
            data = trusted_read(os.path.join(home, FILE))
        except OSError as err:
            raise Trouble('unable to read %s: %s' % (FILE, err.strerror)) from None
        if data is None:
            raise Trouble('no %s' % FILE)
        entry = check(data, user, password)
        wipe(password)
        if entry is None:
            return BAD
        become(os.fsdecode(entry.name), entry.uid, entry.gid,
               os.fsdecode(entry.home), SHELL, groups=[entry.gid])
        execute([os.fsencode(a) for a in argv])
        return TEMP             # not reached
    except Trouble as err:
        log('vcheckpassword', 'temporary trouble: %s' % err)
        return TEMP
    except (MemoryError, KeyboardInterrupt):
        return TEMP
    except Exception as err:    # last resort: temporary, never a traceback
        log('vcheckpassword', 'internal error: %s' % type(err).__name__)
        return TEMP
    finally:
        if password is not None:
            wipe(password)


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
