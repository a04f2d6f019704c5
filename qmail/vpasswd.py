"""qmail-vpasswd: add, change, delete and list virtual POP3 users.

Usage:    qmail-vpasswd add [-m] name uid gid home
          qmail-vpasswd passwd name
          qmail-vpasswd del name
          qmail-vpasswd list
Runs as:  root.  The password of add and passwd is read from the
          terminal (twice) when stdin is one, else as the first line of
          stdin (for scripts: printf '%s\\n' "$pw" | qmail-vpasswd ...).
Reads:    HOME/users/vpasswd (auto.QMAIL, never the environment).
Writes:   HOME/users/vpasswd, replaced whole and durably (its other
          lines, comments among them, kept as they are): the new text
          goes to users/vpasswd.tmp (created exclusively, fsynced), is
          renamed over the old file, and users/ is fsynced; concurrent
          runs wait for users/vpasswd.lock.  Owner root, mode 0600.  With
          -m, add also makes home and home/Maildir (tmp, new, cur) owned
          by uid:gid, mode 0700, where they are missing.
Exits:    0 done; 100 usage, a bad name, uid 0, a user that exists (add)
          or does not (passwd, del), passwords that differ, not root
          (installed mode 0700, bin/qmail-vpasswd refuses others
          before that: 126 from the shell); 111 the file could not be
          read or written.
See:      vcheckpassword (which reads the file), qmail-popup(8).

The file, one user a line, '#' lines and empty lines ignored:
    name:hash:uid:gid:home
  name   the login name, folded to lower case, 1 to 255 of
         [a-z0-9._@+=-], not starting with '-'; "alice@example.org" is
         a fine name.
  hash   an Argon2id hash in PHC form ($argon2id$v=19$m=...,t=...,p=...
         $salt$hash) made by argon2-cffi's PasswordHasher with its
         defaults (RFC 9106's low-memory profile: 64 MiB, 3 passes, 4
         lanes), salted per user.  The parameters travel in each hash,
         so changing them later leaves old hashes valid.
  uid, gid  the ids the user's mail belongs to, numbers (add takes
         names too); never 0.
  home   the directory the user's program runs in, absolute; as for a
         system user, its Maildir is whatever the program is told
         (qmail-pop3d Maildir: home/Maildir).  The last field, so it may
         hold ':'.

Why Argon2id and argon2-cffi: Argon2id won the Password Hashing
Competition and is RFC 9106's and OWASP's first choice; it is
memory-hard, so guessing on GPUs costs much more than with bcrypt or
SHA-512 crypt; argon2-cffi is the maintained binding of the reference
implementation, and verify() compares in constant time.  bcrypt would
cut passwords at 72 bytes.  The cost is memory: each check takes 64 MiB
for ~50 ms, so N logins at once take N x 64 MiB (tcpserver -c bounds N).
"""

import errno
import fcntl
import getpass
import grp
import os
import pwd
import re
import stat
import sys

from qmail.lib import auto, durable
from qmail.lib.error import flushed_status, guard_stdout

FILE = 'users/vpasswd'
LOCK = 'users/vpasswd.lock'
TMP = 'users/vpasswd.tmp'
MAXFILE = 1 << 26        # a users file bigger than this is a mistake
MAXPASSWORD = 4096       # bytes; qmail-popup takes lines of 12288 at most
NAME = re.compile(rb'^[a-z0-9._@+=][a-z0-9._@+=-]{0,254}$')
HEADER = b'# qmail-vpasswd: name:hash:uid:gid:home; edit with qmail-vpasswd\n'


class Usage(Exception):
    """A permanent mistake of the caller's: exit 100."""


class Entry:
    __slots__ = ('name', 'hash', 'uid', 'gid', 'home')

    def __init__(self, name: bytes, hash_: bytes, uid: int, gid: int, home: bytes):
        self.name = name
        self.hash = hash_
        self.uid = uid
        self.gid = gid
        self.home = home

    def __repr__(self):         # not the hash
        return '<Entry %r uid=%d gid=%d home=%r>' % (self.name, self.uid, self.gid, self.home)


# -- the format -----------------------------------------------------------------

def fold(name: bytes) -> bytes:
    return name.lower()


def check_name(name: bytes) -> bytes:
    name = fold(name)
    if not NAME.match(name):
        raise Usage('bad name %r: 1 to 255 of a-z 0-9 . _ @ + = -' % name.decode('latin-1'))
    return name


def check_home(home: bytes) -> bytes:
    if not home.startswith(b'/') or b'\n' in home or b'\0' in home:
        raise Usage('home must be an absolute path')
    return home


def parse_line(line: bytes):
    """An Entry, or None for a comment, an empty or a malformed line."""
    if not line or line.startswith(b'#'):
        return None
    parts = line.split(b':', 4)
    if len(parts) != 5:
        return None
    name, hash_, uid, gid, home = parts
    if not NAME.match(name) or not uid.isdigit() or not gid.isdigit() or not home.startswith(b'/'):
        return None
    return Entry(name, hash_, int(uid), int(gid), home)


def format_entry(e: Entry) -> bytes:
    return b'%s:%s:%d:%d:%s\n' % (e.name, e.hash, e.uid, e.gid, e.home)


def parse(data: bytes) -> list:
    return [e for e in (parse_line(line) for line in data.split(b'\n')) if e is not None]


def lookup(data: bytes, name: bytes):
    """The Entry for name (folded), or None: the first line for it that
    parses.  Found by searching the text, not by splitting it into lines
    (100,000 users: 20 ms a login), and the whole text is looked through
    whether the name is there or not (count), so that the time taken
    tells little of it."""
    name = fold(name)
    want = b'\n' + name + b':'
    first = data.startswith(want[1:])
    if not data.count(want) and not first:
        return None
    pos = 0 if first else data.find(want) + 1      # where a candidate line starts
    while pos != -1:
        end = data.find(b'\n', pos)
        e = parse_line(data[pos:end if end != -1 else len(data)])
        if e is not None and e.name == name:
            return e
        pos = data.find(want, pos)
        if pos != -1:
            pos += 1
    return None


def render(entries) -> bytes:
    return HEADER + b''.join(format_entry(e) for e in entries)


def edit(data: bytes, change) -> bytes:
    """The file's text after change(entries) edited its users: every
    other line (comments, blank lines, lines vcheckpassword ignores) stays
    where it was, as written; a user added goes at the end."""
    lines = data.split(b'\n')
    if lines[-1] == b'':
        lines.pop()
    items = [parse_line(line) or line for line in lines]
    entries = [x for x in items if isinstance(x, Entry)]
    change(entries)
    kept = {id(e) for e in entries}
    out = [format_entry(x) if isinstance(x, Entry) else x + b'\n'
           for x in items if not isinstance(x, Entry) or id(x) in kept]
    seen = {id(x) for x in items}
    out += [format_entry(e) for e in entries if id(e) not in seen]
    return b''.join(out)


def trusted_read(path: str) -> bytes:
    """The file's bytes, if root owns it and nobody else may write it;
    None if it does not exist; OSError (EPERM) otherwise.  The check is
    on the open descriptor, so no rename between check and read fools it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise PermissionError(1, 'not a regular file owned by root, writable by root alone')
        chunks = []
        size = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAXFILE:
                raise OSError(27, 'file too large')
            chunks.append(chunk)
        return b''.join(chunks)
    finally:
        os.close(fd)


# -- hashing ----------------------------------------------------------------------

def hasher():
    from argon2 import PasswordHasher      # only where passwords are hashed
    return PasswordHasher()


def make_hash(password: bytes) -> bytes:
    return hasher().hash(password).encode('ascii')


# -- changing the file -------------------------------------------------------------

def rewrite(home: str, change) -> None:
    """Under the lock: read the users, let change(entries) edit the list
    (it raises Usage to refuse), write it back durably.  OSError for
    trouble; the old file stays whole whatever fails."""
    lockfd = os.open(os.path.join(home, LOCK), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(lockfd, fcntl.LOCK_EX)
        path = os.path.join(home, FILE)
        data = trusted_read(path)
        if not data:                    # none yet, or empty: a new file
            entries = []
            change(entries)
            text = render(entries)
        else:
            text = edit(data, change)
        write_file(path, os.path.join(home, TMP), text)
    finally:
        os.close(lockfd)


def write_file(path: str, tmp: str, data: bytes) -> None:
    """tmp, written and fsynced, renamed to path; the directory fsynced."""
    try:
        os.unlink(tmp)          # a crashed run's; we hold the lock
    except FileNotFoundError:
        pass
    fd = durable.create_excl(tmp, 0o600)
    try:
        try:
            durable.write_all(fd, data)
            durable.fsync(fd)
        finally:
            os.close(fd)
        durable.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    durable.fsync_dir(os.path.dirname(path))


def find(entries, name: bytes):
    for i, e in enumerate(entries):
        if e.name == name:
            return i
    return None


def add(home: str, name: bytes, hash_: bytes, uid: int, gid: int, userhome: bytes):
    def change(entries):
        if find(entries, name) is not None:
            raise Usage('%s exists' % name.decode('latin-1'))
        entries.append(Entry(name, hash_, uid, gid, userhome))
    rewrite(home, change)


def set_password(home: str, name: bytes, hash_: bytes):
    def change(entries):
        i = find(entries, name)
        if i is None:
            raise Usage('no user %s' % name.decode('latin-1'))
        entries[i].hash = hash_
    rewrite(home, change)


def delete(home: str, name: bytes):
    def change(entries):
        i = find(entries, name)
        if i is None:
            raise Usage('no user %s' % name.decode('latin-1'))
        del entries[i]
    rewrite(home, change)


def make_home(userhome: bytes, uid: int, gid: int):
    """-m: home and home/Maildir/{tmp,new,cur}, where missing: the
    directories above the home root's (0755), the rest the user's (0700).
    Walked a directory at a time from /, each opened through the one
    above it and without following a link but one root made
    (qmail-install's open_at): a link put where someone other than root
    may write (the user's home, a directory of theirs above it, a sticky
    /tmp; the home itself made a link to a directory of root's) had root
    make directories wherever it pointed and give them to the user.
    Such a link is refused (OSError, ENOTDIR).  A home of / is refused
    (EINVAL)."""
    parts = [p for p in userhome.split(b'/') if p]
    if not parts:
        raise OSError(errno.EINVAL, 'a home of / is refused')
    steps = [(name, None) for name in parts[:-1]] + [(parts[-1], (uid, gid)),
                                                       (b'Maildir', (uid, gid))]
    fd = os.open(b'/', os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for name, owner in steps:
        fd = _enter(fd, name, owner)        # (which closes the fd it is given)
    try:
        for name in (b'tmp', b'new', b'cur'):
            os.close(_enter(os.dup(fd), name, (uid, gid)))
    finally:
        os.close(fd)


def _enter(fd: int, name: bytes, owner):
    """The directory name in the directory open on fd, made if missing
    (owner: (uid, gid), mode 0700, else root's 0755), opened.  fd is
    closed, whether this returns or raises."""
    from qmail.install import open_at       # (here: vcheckpassword imports this module)
    made = False
    try:
        try:
            os.mkdir(name, 0o755 if owner is None else 0o700, dir_fd=fd)
            made = True
        except FileExistsError:
            pass
        new = open_at(fd, name, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(fd)
    if made and owner is not None:
        try:
            os.fchown(new, *owner)
            os.fchmod(new, 0o700)
        except OSError:
            os.close(new)
            raise
    return new


# -- the command line ------------------------------------------------------------

ID_MAX = 2 ** 32 - 2        # (uid_t)-1 means "no change" to chown


def to_id(text: str, database) -> int:
    if text.isascii() and text.isdigit():
        value = int(text)
        if value > ID_MAX:
            raise Usage('uid or gid %s is out of range' % text)
    else:
        try:
            value = database(text)
        except KeyError:
            raise Usage('unknown user or group %s' % text) from None
    if value == 0:
        raise Usage('uid and gid 0 are not allowed')
    return value


def read_password(stdin=None) -> bytes:
    """From the terminal, twice; else stdin's first line."""
    stdin = sys.stdin if stdin is None else stdin
    if stdin.isatty():
        first = getpass.getpass('password: ').encode('utf-8')
        if getpass.getpass('again: ').encode('utf-8') != first:
            raise Usage('the passwords differ')
        password = first
    else:
        line = stdin.buffer.readline(MAXPASSWORD + 2)
        password = line.rstrip(b'\n').rstrip(b'\r')
    if not password or b'\0' in password or len(password) > MAXPASSWORD:
        raise Usage('a password is 1 to %d bytes, no NUL' % MAXPASSWORD)
    return password


USAGE = '''usage: qmail-vpasswd add [-m] name uid gid home
       qmail-vpasswd passwd name
       qmail-vpasswd del name
       qmail-vpasswd list'''


def command(argv, home: str, stdin=None) -> int:
    """Run one command; raises Usage or OSError."""
    if not argv:
        raise Usage(USAGE)
    verb, args = argv[0], argv[1:]
    if verb == 'list' and not args:
        data = trusted_read(os.path.join(home, FILE)) or b''
        for e in parse(data):
            sys.stdout.buffer.write(b'%s %d %d %s\n' % (e.name, e.uid, e.gid, e.home))
        sys.stdout.flush()
        return 0
    if verb == 'add':
        flagmake = args[:1] == ['-m']
        if flagmake:
            args = args[1:]
        if len(args) != 4:
            raise Usage(USAGE)
        name = check_name(os.fsencode(args[0]))
        uid = to_id(args[1], lambda n: pwd.getpwnam(n).pw_uid)
        gid = to_id(args[2], lambda n: grp.getgrnam(n).gr_gid)
        userhome = check_home(os.fsencode(args[3]))
        hash_ = make_hash(read_password(stdin))
        add(home, name, hash_, uid, gid, userhome)
        if flagmake:
            make_home(userhome, uid, gid)
        return 0
    if verb == 'passwd' and len(args) == 1:
        name = check_name(os.fsencode(args[0]))
        set_password(home, name, make_hash(read_password(stdin)))
        return 0
    if verb == 'del' and len(args) == 1:
        delete(home, check_name(os.fsencode(args[0])))
        return 0
    raise Usage(USAGE)


def main(argv=None, home=None, stdin=None) -> int:
    """home is for tests: otherwise always auto.QMAIL."""
    argv = sys.argv[1:] if argv is None else argv
    home = auto.QMAIL if home is None else home
    try:
        if os.geteuid() != 0:
            raise Usage('must be run as root')
        return command(argv, home, stdin)
    except Usage as err:
        sys.stderr.write('qmail-vpasswd: %s\n' % err)
        return 100
    except OSError as err:
        sys.stderr.write('qmail-vpasswd: fatal: %s\n' % (err.strerror or err))
        return 111
    except ImportError:
        sys.stderr.write('qmail-vpasswd: fatal: argon2-cffi is not installed\n')
        return 111
    except KeyboardInterrupt:
        return 100
    except Exception as err:    # last resort: never a traceback
        sys.stderr.write('qmail-vpasswd: fatal: internal error: %s\n' % type(err).__name__)
        return 111


def run():
    guard_stdout()                  # a full disk or closed fd 1: one line, 111
    sys.exit(flushed_status(main(), 'qmail-vpasswd'))


if __name__ == '__main__':
    run()
