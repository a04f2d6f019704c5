"""checkpassword: check a system user's password, then run a program as
that user.

Usage:    checkpassword program [arg ...]
          e.g. qmail-popup pop.example.org checkpassword qmail-pop3d Maildir
Runs as:  root: started by qmail-popup (as root), or by qmail-smtpd's
          AUTH as qmaild through bin/checkpassword, a set-uid root
          launcher only root and the nofiles group may run
          (qmail/check-launcher.c); the real uid is then qmaild's.
Reads:    fd 3, "user\\0password\\0timestamp\\0" (the checkpassword
          interface, cr.yp.to/checkpwd/interface.html), at most MAXINPUT
          bytes; the timestamp is not used (no APOP: the password is
          stored hashed).  The user's passwd entry (getpwnam) and shadow
          entry (getspnam(3)), both through NSS, so /etc/nsswitch.conf is
          honoured as login(1) honours it.
Does:     when the password is right: initgroups, setgid, setuid (and
          checks that no root id is left), chdir to the home directory,
          sets HOME, USER and SHELL from the passwd entry, and execs
          program with its arguments; fds 0, 1 and 2 as given, fd 3
          closed.
Exits:    1 the password is wrong, or the user unknown, locked ("!" or
          "*" in shadow, an empty password too), expired (shadow's
          expire date), its password to be changed first (last changed
          on day 0, or older than its maximum age), or root or of
          root's group (uid 0, gid 0 or group 0 among its groups never
          log in here: root has no maildir, and a checker for the
          network should not tell whether root's password was
          guessed);
          2 misuse: no program, fd 3 unreadable or not two NUL-ended
          fields;
          111 temporary trouble: the shadow entry cannot be read (not
          root), libcrypt is missing, the hash cannot be computed (no
          memory for it: see README on softlimit), becoming the user,
          the chdir or the exec fails.
Trusts:   its caller for nothing but fd 3's bytes; it never writes the
          password anywhere, and overwrites its copies after the check.
See:      cr.yp.to/checkpwd/interface.html, crypt(5), shadow(5),
          qmail-popup(8).

The password check is crypt(3) from libxcrypt (libcrypt.so.1, which
Debian ships as a dependency of libc's users: login, passwd), through
ctypes: crypt_rn() hashes the password with the setting of the stored
hash (yescrypt, SHA-512, bcrypt ... whatever passwd(1) wrote), and the
two are compared with hmac.compare_digest.  Why: Python's crypt and spwd
modules are deprecated since 3.11 and gone in 3.13; passlib is
unmaintained; libxcrypt is the very code that passwd(1) and login(1)
use on this system, so every hash they can make, this can check.
getspnam(3) comes from libc through ctypes, for the same reason.  An
unknown or locked user costs a hash too, with the setting of one of the
system's own stored hashes (unknown_setting: methods and costs differ
where passwd(1) wrote yescrypt and chpasswd SHA-512), so time does not
tell which users exist.

XXX no PAM: account rules beyond shadow's (pam_access, pam_nologin, ...)
do not apply here.
"""

import ctypes
import errno
import hashlib
import hmac
import os
import pwd
import sys
import time

MAXINPUT = 16384         # qmail-popup sends a line of at most 12288 bytes
CRYPT_DATA = 32768       # sizeof(struct crypt_data) in libxcrypt
CRYPT_OUTPUT = 384       # CRYPT_OUTPUT_SIZE
DAY = 86400

BAD = 1
MISUSE = 2
TEMP = 111


class Trouble(Exception):
    """Temporary trouble: exit 111."""


# -- fd 3 ---------------------------------------------------------------------

def read_input(fd: int = 3, limit: int = MAXINPUT) -> bytearray:
    """Everything on fd, at most limit bytes; OSError if fd is unusable,
    ValueError if there is more."""
    data = bytearray()
    while True:
        chunk = os.read(fd, limit + 1 - len(data))
        if not chunk:
            return data
        data += chunk
        if len(data) > limit:
            data[:] = bytes(len(data))
            raise ValueError('input too long')


def parse_input(data: bytes):
    """(user, password) from "user\\0password\\0timestamp\\0"; ValueError
    unless both are there and NUL-ended."""
    end = data.find(b'\0')
    if end < 0:
        raise ValueError('no user')
    end2 = data.find(b'\0', end + 1)
    if end2 < 0:
        raise ValueError('no password')
    return bytes(data[:end]), bytearray(data[end + 1:end2])


def wipe(buf):
    if isinstance(buf, bytearray):
        buf[:] = bytes(len(buf))
    elif isinstance(buf, ctypes.Array):
        ctypes.memset(buf, 0, ctypes.sizeof(buf))


# -- libc and libxcrypt -------------------------------------------------------

class Spwd(ctypes.Structure):
    """struct spwd of shadow.h."""
    _fields_ = [('sp_namp', ctypes.c_char_p), ('sp_pwdp', ctypes.c_char_p),
                ('sp_lstchg', ctypes.c_long), ('sp_min', ctypes.c_long),
                ('sp_max', ctypes.c_long), ('sp_warn', ctypes.c_long),
                ('sp_inact', ctypes.c_long), ('sp_expire', ctypes.c_long),
                ('sp_flag', ctypes.c_ulong)]


def libcrypt():
    """libxcrypt, or Trouble."""
    # The ABI's name only: ctypes.util.find_library would run ldconfig,
    # and failing that cc and objdump found on the caller's PATH, as root
    # (set-uid, for qmail-smtpd).
    try:
        lib = ctypes.CDLL('libcrypt.so.1', use_errno=True)
    except OSError:
        raise Trouble('unable to load libcrypt') from None
    lib.crypt_rn.restype = ctypes.c_char_p
    lib.crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    return lib


def crypt(lib, password: bytes, setting: bytes):
    """crypt_rn(): the hash of password under setting, or None when the
    setting is no hash libxcrypt knows (a locked account's "!", say).
    Trouble when it fails on a setting it calls well-formed while this
    process's memory is limited: the hash could not be computed
    (yescrypt or bcrypt without the memory it needs, under a run
    script's softlimit), which says nothing of the password.  libxcrypt's
    errno is EINVAL either way, and crypt_checksalt looks at the method
    only, not its parameters: without a limit such a failure is a
    malformed hash (a wrong password, as before)."""
    data = ctypes.create_string_buffer(CRYPT_DATA)
    phrase = ctypes.create_string_buffer(bytes(password), len(password) + 1)
    try:
        ctypes.set_errno(0)
        out = lib.crypt_rn(phrase, setting, data, CRYPT_DATA)
        if out is None or out[:1] == b'*':
            # (ERANGE: a password past CRYPT_MAX_PASSPHRASE_SIZE, no hash's)
            if (ctypes.get_errno() != errno.ERANGE and memory_limited()
                    and well_formed(lib, setting)):
                raise Trouble('unable to compute a %s hash (out of memory?)'
                              % hash_method(setting))
            return None
        return bytes(out)
    finally:
        wipe(data)
        wipe(phrase)


CRYPT_SALT_OK, CRYPT_SALT_INVALID = 0, 1        # crypt_checksalt(3)'s answers
CRYPT_SALT_METHOD_DISABLED = 2


def well_formed(lib, setting: bytes) -> bool:
    """crypt_checksalt(3): setting is one libxcrypt can hash with (legacy
    or too cheap by its standards, maybe, but neither malformed nor of a
    method it was built without).  False where libxcrypt is older than
    the call (4.3)."""
    try:
        check = lib.crypt_checksalt
    except AttributeError:
        return False
    check.restype = ctypes.c_int
    check.argtypes = [ctypes.c_char_p]
    return check(setting) not in (CRYPT_SALT_INVALID, CRYPT_SALT_METHOD_DISABLED)


def memory_limited() -> bool:
    """Is this process's address space or data size limited (softlimit
    -m, -a, -d; ulimit -v, -d)?"""
    import resource
    return any(resource.getrlimit(r)[0] != resource.RLIM_INFINITY
               for r in (resource.RLIMIT_AS, resource.RLIMIT_DATA))


def hash_method(setting: bytes) -> str:
    """For the log: the setting's method prefix ("$y$"), or "DES"."""
    if setting[:1] != b'$':
        return 'DES'
    return setting[:setting.find(b'$', 1) + 1].decode('ascii', 'replace')


def dummy_setting(lib) -> bytes:
    """A setting of the system's preferred method, for unknown users."""
    try:
        lib.crypt_gensalt_rn.restype = ctypes.c_char_p
        lib.crypt_gensalt_rn.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                         ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        out = ctypes.create_string_buffer(CRYPT_OUTPUT)
        if lib.crypt_gensalt_rn(None, 0, None, 0, out, CRYPT_OUTPUT):
            return out.value
    except AttributeError:
        pass
    return b'$6$qmailcheckpassw'


SHADOW = '/etc/shadow'
SHADOW_READ_MAX = 4 << 20       # bytes of it read for unknown_setting


def shadow_settings():
    """(key, the stored hashes of /etc/shadow): what unknown_setting picks
    from.  Read for every check, known user or not, so that its cost
    (22 ms for 40,000 lines) tells nothing either; key, a digest of the
    file, which no client can read."""
    try:
        with open(SHADOW, 'rb') as f:
            data = f.read(SHADOW_READ_MAX)
    except OSError:
        data = b''
    hashes = []
    for line in data.split(b'\n'):
        fields = line.split(b':', 2)
        # any hash crypt takes (DES's too); not a lock ("!", "*") nor none
        if len(fields) > 2 and fields[1] and fields[1][:1] not in (b'!', b'*'):
            hashes.append(fields[1])
    return hashlib.sha256(data).digest(), hashes


def unknown_setting(lib, user: bytes, settings) -> bytes:
    """What an unknown or locked user's password is hashed with, for the
    time it takes: one of the stored hashes of /etc/shadow (settings,
    from shadow_settings), picked by the name keyed with the file's
    digest (the same name costs the same each time; unknown names cost
    what the system's users do, method by method, as often); a setting
    of the preferred method (dummy_setting) where it has none.  One
    setting for all had an unknown user take 44 ms here, and a user
    whose hash is SHA-512 29: time told who had an account."""
    key, hashes = settings
    if not hashes:
        return dummy_setting(lib)
    pick = hashlib.sha256(key + b'\0' + user).digest()
    return hashes[int.from_bytes(pick[:8], 'big') % len(hashes)]


def shadow_readable():
    """Trouble if /etc/shadow is there and this process may not read it."""
    if os.path.exists(SHADOW) and not os.access(SHADOW, os.R_OK, effective_ids=True):
        raise Trouble('unable to read shadow: %s' % os.strerror(errno.EACCES))


def getspnam(name: bytes):
    """(hash, expire day, last change day, maximum age; -1 where none),
    None for no shadow entry; Trouble when the shadow database cannot be
    read (EACCES: not root).  An unreadable
    /etc/shadow is Trouble before NSS is asked: NSS goes on to its next
    source (systemd's says "no entry", or makes one up for root) and the
    errno is lost, so every login failed as a wrong password."""
    shadow_readable()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.getspnam.restype = ctypes.POINTER(Spwd)
    libc.getspnam.argtypes = [ctypes.c_char_p]
    ctypes.set_errno(0)
    sp = libc.getspnam(name)
    if not sp:
        err = ctypes.get_errno()
        if err in (0, errno.ENOENT, errno.ESRCH):
            return None
        raise Trouble('unable to read shadow: %s' % os.strerror(err))
    entry = sp.contents
    return (entry.sp_pwdp or b''), entry.sp_expire, entry.sp_lstchg, entry.sp_max


# -- the decision -------------------------------------------------------------

def stored_hash(pw_passwd: bytes, shadow):
    """The hash to check against: shadow's when there is an entry, else
    the passwd field's ("x" and "*" are no hash)."""
    if shadow is not None:
        return shadow[0]
    return pw_passwd


def usable(stored: bytes, expire: int, today: int, lstchg: int = -1,
           maxdays: int = -1) -> bool:
    """Can this account log in at all?  Not with an empty or locked hash,
    nor after its expire day (shadow(5): the account is expired on that
    day; -1 or 0... none), nor with a password that must be changed
    first: last changed on day 0 (the admin's "change it at the next
    login"), or older than its maximum age.  login(1) would ask for a
    new one; a mail client cannot, so pam_unix's verdict stands: no."""
    if not stored or stored[:1] in (b'!', b'*') or stored == b'x':
        return False
    if expire is not None and expire > 0 and today >= expire:
        return False
    if lstchg == 0:
        return False
    if lstchg > 0 and maxdays >= 0 and today - lstchg > maxdays:
        return False
    return True


def verify(lib, password: bytes, stored: bytes) -> bool:
    computed = crypt(lib, password, stored)
    return computed is not None and hmac.compare_digest(computed, stored)


def check(user: bytes, password: bytes, lib, now: float):
    """The passwd entry if user may log in with password, else None;
    Trouble for temporary trouble.  An unreadable shadow is Trouble for
    every user, unknown ones too: were it found out only for users that
    exist, its 111 would tell a network client which names do."""
    shadow_readable()
    settings = shadow_settings()        # for every user: the same cost
    try:
        pw = pwd.getpwnam(os.fsdecode(user)) if user and b'/' not in user else None
    except KeyError:
        pw = None
    except (OSError, UnicodeError, ValueError) as err:
        raise Trouble('unable to read passwd: %s' % err) from None
    if pw is None:
        verify(lib, password, unknown_setting(lib, user, settings))     # the same time
        return None
    shadow = getspnam(user)
    stored = stored_hash(os.fsencode(pw.pw_passwd), shadow)
    expire, lstchg, maxdays = shadow[1:] if shadow is not None else (-1, -1, -1)
    if not usable(stored, expire, int(now // DAY), lstchg, maxdays):
        verify(lib, password, unknown_setting(lib, user, settings))
        return None
    if not verify(lib, password, stored) or pw.pw_uid == 0 or pw.pw_gid == 0:
        return None                 # no root id, group either
    try:
        if 0 in os.getgrouplist(pw.pw_name, pw.pw_gid):
            return None
    except OSError as err:
        raise Trouble('unable to read groups: %s' % err) from None
    return pw


# -- becoming the user --------------------------------------------------------

def become(name: str, uid: int, gid: int, home: str, shell: str, groups=None):
    """Drop to the user (supplementary groups, then gid, then uid, then
    check no root id is left), chdir home, set HOME, USER and SHELL.
    groups None: the user's groups from the group database (initgroups);
    else that list.  Raises Trouble."""
    try:
        if groups is None:
            os.initgroups(name, gid)
        else:
            os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
    except OSError as err:
        raise Trouble('unable to become %s: %s' % (name, err.strerror)) from None
    if uid != 0 and 0 in (os.getuid(), os.geteuid()) or os.getegid() != gid:
        raise Trouble('unable to drop root')
    if gid != 0 and 0 in os.getgroups():
        raise Trouble('refused: %s is in the root group' % name)
    try:
        os.chdir(home)
    except OSError as err:
        raise Trouble('unable to chdir to %s: %s' % (home, err.strerror)) from None
    os.environ['HOME'] = home
    os.environ['USER'] = name
    os.environ['SHELL'] = shell


def execute(argv):
    """exec argv (SIGPIPE and SIGXFSZ back to their defaults, which
    Python had set to ignore); Trouble if it cannot be."""
    import signal
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        raise Trouble('unable to run %s: %s' % (os.fsdecode(argv[0]), err.strerror)) from None


def log(prog: str, text: str):
    try:
        os.write(2, ('%s: %s\n' % (prog, text)).encode('utf-8', 'replace'))
    except OSError:
        pass


def take_input():
    """(user, password) from fd 3, which is then closed; None for misuse."""
    try:
        data = read_input(3)
    except (OSError, ValueError):
        return None
    finally:
        try:
            os.close(3)
        except OSError:
            pass
    try:
        return parse_input(data)
    except ValueError:
        return None
    finally:
        wipe(data)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    password = None
    try:
        if not argv:
            log('checkpassword', 'usage: checkpassword program [arg ...]')
            return MISUSE
        got = take_input()
        if got is None:
            return MISUSE
        user, password = got
        pw = check(user, password, libcrypt(), time.time())
        wipe(password)
        if pw is None:
            return BAD
        become(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell)
        execute([os.fsencode(a) for a in argv])
        return TEMP             # not reached
    except Trouble as err:
        log('checkpassword', 'temporary trouble: %s' % err)
        return TEMP
    except (MemoryError, KeyboardInterrupt):
        return TEMP
    except Exception as err:    # last resort: temporary, never a traceback
        log('checkpassword', 'internal error: %s' % type(err).__name__)
        return TEMP
    finally:
        if password is not None:
            wipe(password)


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
