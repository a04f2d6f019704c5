"""qmail-install: create qmail's users and install a qmail home.

Runs as:  root, from `make setup` (QMAIL_HOME=/var/qmail by default).
Reads:    the qmail package it is part of; control/me if present.
Writes:   the users and groups of conf-users/conf-groups, if missing;
          the home's tree with qmail's owners and modes (HIER below, after
          notqmail's hier.c); HOME/lib/python/, a copy of the package
          whose qmail/lib/auto.py fixes the home, ids and split; HOME/bin/,
          one small script per program and the setuid launcher of
          qmail-queue, compiled here; control files as config-fast writes
          them, when control/me does not exist yet; the service scripts
          (supervise/*/run, log/run: qmail-listen on --smtp-addr,
          --smtp-port, --pop3-port, --submission-port and --smtps-port,
          or where the scripts there listen now, else 127.0.0.1, 25,
          110, 587 and 465); control/tcp.smtp if missing,
          and its cdb when the rules are newer.
Exits:    0 installed; 100 usage, not root, or a runtime interpreter
          without dnspython and idna; 111 a step failed.

Idempotent: running it again repairs owners and modes, replaces the code
and keeps the queue and every control file.  The queue's split is an
existing queue's (a C qmail's conf-split: queue/mess/0..n-1), else
--split, else 23; a --split other than the queue's is refused (100).
A service script the admin edited is kept (its last line, a digest of
what was written, no longer matches; a script from before that line
counts as edited unless it is this version's text), the new one written
beside it as run.new, with a warning.  The code is switched in
one rename (lib/python is a symlink), and each program resolves the link
once, as it starts: all its modules, those it imports late too (say
qmail-smtpd's TLS at the first STARTTLS), come from the one copy it
began with.  The copy before is kept for the programs still running on
it, and any older one a daemon still runs on (qmail.lib.inuse); the
rest go.  Restart the services after an upgrade (make run does).
"""

import argparse
import ast
import compileall
import errno
import fcntl
import grp
import hashlib
import os
import pwd
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile

from qmail.lib import auto, control, inuse, manpage

DEFAULT_HOME = '/var/qmail'
DEFAULT_PYTHON = '/usr/local/lib/qmail/venv/bin/python3'

# conf-groups, conf-users, and INSTALL.ids: user -> (group, home under HOME)
GROUPS = ('qmail', 'nofiles')
USERS = (
    ('alias', 'nofiles', 'alias'),
    ('qmaild', 'nofiles', ''),
    ('qmaill', 'nofiles', ''),
    ('qmailp', 'nofiles', ''),
    ('qmailq', 'qmail', ''),
    ('qmailr', 'qmail', ''),
    ('qmails', 'qmail', ''),
)

# The tree: kind, path, owner, group, mode.  d directory; s directory
# split into auto.SPLIT subdirectories; z file of that many zero bytes
# (path, size); p named pipe.  Owners and modes are qmail's (hier.c).
HIER = (
    ('d', '', 'root', 'qmail', 0o755),
    ('d', 'control', 'root', 'qmail', 0o755),
    ('d', 'users', 'root', 'qmail', 0o755),
    ('d', 'bin', 'root', 'qmail', 0o755),
    ('d', 'lib', 'root', 'qmail', 0o755),
    ('d', 'run', 'qmailq', 'qmail', 0o755),
    ('d', 'boot', 'root', 'qmail', 0o755),
    ('d', 'doc', 'root', 'qmail', 0o755),
    ('d', 'man', 'root', 'qmail', 0o755),
    ('d', 'man/man1', 'root', 'qmail', 0o755),
    ('d', 'man/man5', 'root', 'qmail', 0o755),
    ('d', 'man/man7', 'root', 'qmail', 0o755),
    ('d', 'man/man8', 'root', 'qmail', 0o755),
    ('d', 'alias', 'alias', 'qmail', 0o2755),
    ('d', 'queue', 'qmailq', 'qmail', 0o750),
    ('d', 'queue/pid', 'qmailq', 'qmail', 0o700),
    ('d', 'queue/intd', 'qmailq', 'qmail', 0o700),
    ('d', 'queue/todo', 'qmailq', 'qmail', 0o750),
    ('d', 'queue/bounce', 'qmails', 'qmail', 0o700),
    ('s', 'queue/mess', 'qmailq', 'qmail', 0o750),
    ('s', 'queue/info', 'qmails', 'qmail', 0o700),
    ('s', 'queue/local', 'qmails', 'qmail', 0o700),
    ('s', 'queue/remote', 'qmails', 'qmail', 0o700),
    ('d', 'queue/lock', 'qmailq', 'qmail', 0o750),
    ('z', ('queue/lock/tcpto', 1024), 'qmailr', 'qmail', 0o644),
    ('z', ('queue/lock/sendmutex', 0), 'qmails', 'qmail', 0o600),
    ('z', ('queue/lock/syncfs', 0), 'qmailq', 'qmail', 0o600),
    ('p', 'queue/lock/trigger', 'qmails', 'qmail', 0o622),
    ('p', 'queue/lock/command', 'qmails', 'qmail', 0o600),
)

# The programs: name in bin/, module in qmail/, mode, and whether it needs
# the interpreter's site-packages (dnspython and friends).  Programs that
# do not start with -S, which saves interpreter start time.  Where qmail
# installs a binary 0711, a script here is 0755: the interpreter must be
# able to read it, and it holds no secret (the code is in lib/ anyway).
PROGRAMS = (
    ('qmail-inject', 'inject', 0o755, False),
    ('sendmail', 'sendmail', 0o755, False),
    ('qmail-qread', 'qread', 0o755, False),
    ('qmail-qstat', 'qstat', 0o755, False),
    ('qmail-showctl', 'showctl', 0o755, True),
    ('qmail-smtpd', 'smtpd', 0o755, False),
    ('qmail-listen', 'listen', 0o755, True),
    ('qmail-qmtpd', 'qmtpd', 0o755, False),
    ('qmail-qmqpd', 'qmqpd', 0o755, False),
    ('qmail-qmqpc', 'qmqpc', 0o755, False),
    ('qmail-start', 'start', 0o700, True),
    ('qmail-send', 'send', 0o755, True),
    ('qmail-lspawn', 'lspawn', 0o700, True),
    ('qmail-rspawn', 'rspawn', 0o755, True),
    ('qmail-remote', 'remote', 0o755, True),
    ('qmail-tcpto', 'tcpto', 0o755, False),
    ('qmail-tcpok', 'tcpok', 0o755, False),
    ('tcp-env', 'tcp_env', 0o755, True),
    ('qmail-clean', 'clean', 0o755, True),
    ('qmail-queued', 'queued', 0o755, True),
    ('qmail-svscan', 'svscan', 0o700, False),
    ('qmail-local', 'local', 0o755, False),
    ('qmail-getpw', 'getpw', 0o755, False),
    ('qmail-newu', 'newu', 0o700, False),
    ('qmail-newmrh', 'newmrh', 0o700, False),
    ('qmail-newrcpt', 'newrcpt', 0o700, False),
    ('qmail-fsck', 'fsck', 0o700, False),
    ('qmail-qrm', 'qrm', 0o700, False),
    ('qmail-qhold', 'qhold', 0o700, False),
    ('qmail-crashtest', 'crashtest', 0o700, False),
    ('qmail-analog', 'analog', 0o755, False),
    ('qmail-popup', 'popup', 0o755, False),
    ('qmail-pop3d', 'pop3d', 0o755, False),
    ('qmail-vpasswd', 'vpasswd', 0o700, True),
    ('qmail-pw2u', 'pw2u', 0o755, False),
    ('splogger', 'splogger', 0o755, False),
    ('forward', 'forward', 0o755, False),
    ('srsfilter', 'srsfilter', 0o755, False),
    ('condredirect', 'condredirect', 0o755, False),
    ('bouncesaying', 'bouncesaying', 0o755, False),
    ('except', 'except_', 0o755, False),
    ('preline', 'preline', 0o755, False),
    ('maildirmake', 'maildirmake', 0o755, False),
    ('maildir2mbox', 'maildir2mbox', 0o755, False),
    ('maildirwatch', 'maildirwatch', 0o755, False),
    ('qreceipt', 'qreceipt', 0o755, False),
    ('qbiff', 'qbiff', 0o755, False),
    ('predate', 'predate', 0o755, False),
    ('datemail', 'datemail', 0o755, False),
    ('mailsubj', 'mailsubj', 0o755, False),
)

# The password checkers, each run by a set-uid root launcher
# (check-launcher.c) so that qmail-smtpd's AUTH works as qmaild: bin/name
# runs HOME/lib/name.py; name, module, whether it needs site-packages.
CHECKERS = (
    ('checkpassword', 'checkpassword', False),
    ('vcheckpassword', 'vcheckpassword', True),
)
CHECKER_MODE = 0o4710       # root's, set-uid; group nofiles (qmaild's) may run it

SAFE_PATH = re.compile(r'^/[A-Za-z0-9._/+-]*$')


class InstallError(Exception):
    pass


def say(text):
    print('qmail-install: ' + text, flush=True)


# --- users --------------------------------------------------------------

def ensure_ids():
    """Create qmail's groups and users if missing (INSTALL.ids)."""
    for group in GROUPS:
        try:
            grp.getgrnam(group)
        except KeyError:
            say('creating group ' + group)
            subprocess.run(['groupadd', '-r', group], check=True)
    for user, group, sub in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            say('creating user ' + user)
            home = os.path.join(DEFAULT_HOME, sub) if sub else DEFAULT_HOME
            subprocess.run(['useradd', '-r', '-M', '-g', group, '-d', home,
                            '-s', '/usr/sbin/nologin', user], check=True)


def lookup_ids():
    uids = {u: pwd.getpwnam(u).pw_uid for u, _, _ in USERS}
    uids['root'] = 0
    gids = {g: grp.getgrnam(g).gr_gid for g in GROUPS}
    return uids, gids


# --- the tree -----------------------------------------------------------

def root_made_link(path) -> bool:
    """A symlink that only root could have made or put there: root's, in
    a directory root owns and nobody else may write (HOME's own entries,
    as HOME/queue moved to another disk), so no user can swap it between
    this look and the open that follows."""
    try:
        st = os.lstat(path)
        parent = os.lstat(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return _root_link(st, parent)


def root_made_link_at(dirfd: int, name: str) -> bool:
    """root_made_link() for name in the directory open as dirfd."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        parent = os.fstat(dirfd)
    except OSError:
        return False
    return _root_link(st, parent)


def _root_link(st, parent) -> bool:
    """st a link of root's in parent, root's and writable by root alone."""
    return (stat.S_ISLNK(st.st_mode) and st.st_uid == 0 and parent.st_uid == 0
            and not parent.st_mode & 0o022)


def open_at(dirfd: int, name: str, flags: int) -> int:
    """name in the directory open as dirfd, opened with flags and without
    following a symlink, but one root made (root_made_link_at)."""
    if not root_made_link_at(dirfd, name):
        flags |= os.O_NOFOLLOW
    return os.open(name, flags | os.O_CLOEXEC, dir_fd=dirfd)


def open_parent(path):
    """(descriptor of path's directory, path's last name), the directory
    reached from / one name at a time, never through a symlink but one
    root made (root_made_link).  The installer runs as root in
    directories qmail's users own (queue/ and all in it are qmailq's,
    alias/ the alias user's): a link one of them swaps in for
    queue/lock between two steps must not take root's mkdir, create or
    chown elsewhere, as a full path given to the kernel would.  The
    caller closes the descriptor."""
    parts = [p for p in os.path.abspath(path).split('/') if p]
    if not parts:
        raise InstallError('%s has no parent' % path)
    fd = os.open('/', os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[:-1]:
            try:
                nfd = open_at(fd, name, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise InstallError('%s: %s is a symlink not made by root, or no '
                                       'directory: refused' % (path, name)) from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def fix(path, uid, gid, mode, kind=None):
    """Set owner, then mode (chown clears set-id bits), on path itself:
    never through a symlink, in path or at its end (open_parent).  A
    symlink root made (HOME/queue on another disk) is followed.  kind:
    the stat.S_IS* test the file must pass.  A file that is not a
    directory must have one link: one a user made to a file of root's
    (/etc/shadow, say, on the same disk) must not become the user's."""
    dfd, name = open_parent(path)
    try:
        _fix_at(dfd, name, path, uid, gid, mode, kind)
    finally:
        os.close(dfd)


def _fix_at(dfd, name, path, uid, gid, mode, kind):
    try:
        fd = open_at(dfd, name, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InstallError('%s is a symlink not made by root: refused' % path) from None
        raise
    try:
        st = os.fstat(fd)
        if kind is not None and not kind(st.st_mode):
            raise InstallError('%s is not what it should be (mode %o)' % (path, st.st_mode))
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink != 1:
            raise InstallError('%s has %d links: refused' % (path, st.st_nlink))
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def make_dir(path, uid, gid, mode):
    dfd, name = open_parent(path)
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
        except FileExistsError:
            pass
        _fix_at(dfd, name, path, uid, gid, mode, stat.S_ISDIR)
    finally:
        os.close(dfd)


FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def spread_subdirs(path):
    """Ask the filesystem to place path's new subdirectories, and so the
    files made in them, in block groups apart (chattr +T, ext2/3/4's
    Orlov hint; elsewhere nothing happens).  The queue's directories
    each take files at the message rate, and ext4 (without a journal)
    scans past every inode freed in the last minutes of a group at each
    file it creates there: kept apart, each group sees a share of that.
    Only subdirectories made afterwards move."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        flags = struct.unpack('i', fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack('i', 0)))[0]
        if not flags & FS_TOPDIR_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack('i', flags | FS_TOPDIR_FL))
    except OSError:         # not ext2/3/4, or it refuses: placement is only a hint
        pass
    finally:
        os.close(fd)


def make_zero_file(path, size, uid, gid, mode):
    dfd, name = open_parent(path)
    try:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, b'\0' * size)
                os.fsync(fd)
            finally:
                os.close(fd)
        _fix_at(dfd, name, path, uid, gid, mode, stat.S_ISREG)
    finally:
        os.close(dfd)


def make_fifo(path, uid, gid, mode):
    dfd, name = open_parent(path)
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            os.mkfifo(name, 0o600, dir_fd=dfd)
        else:
            if not stat.S_ISFIFO(st.st_mode):
                os.unlink(name, dir_fd=dfd)
                os.mkfifo(name, 0o600, dir_fd=dfd)
        _fix_at(dfd, name, path, uid, gid, mode, stat.S_ISFIFO)
    finally:
        os.close(dfd)


def install_tree(home, uids, gids, split):
    for kind, what, owner, group, mode in HIER:
        uid, gid = uids[owner], gids[group]
        if kind == 'z':
            name, size = what
            make_zero_file(os.path.join(home, name), size, uid, gid, mode)
            continue
        path = os.path.join(home, what) if what else home
        if kind == 'p':
            make_fifo(path, uid, gid, mode)
        elif kind == 'd':
            make_dir(path, uid, gid, mode)
            if what == 'queue':
                spread_subdirs(path)
        elif kind == 's':
            make_dir(path, uid, gid, mode)
            spread_subdirs(path)
            for i in range(split):
                make_dir(os.path.join(path, str(i)), uid, gid, mode)


# --- the code -----------------------------------------------------------

def auto_source(home, python, split, uids, gids):
    """The installed qmail/lib/auto.py: every value fixed."""
    template = open(auto.__file__, encoding='utf-8').read()
    fixed = {
        'QMAIL': repr(home),
        'SPLIT': repr(split),
        'PYTHON': repr(python),
        'UIDS': repr(uids),
        'GIDS': repr(gids),
    }
    out = []
    for line in template.splitlines():
        m = re.match(r'^([A-Z]+) = ', line)
        if m and m.group(1) in fixed:
            line = '%s = %s' % (m.group(1), fixed[m.group(1)])
        out.append(line)
    return '\n'.join(out) + '\n'


def copy_tree_readonly(src, dst):
    """Copy the package, root-owned and world-readable, without caches."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(
        '__pycache__', '*.pyc', '*.c'))
    for dirpath, dirnames, filenames in os.walk(dst):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


def install_lib(home, python, split, uids, gids):
    """HOME/lib/python -> python.<n>, switched atomically."""
    lib = os.path.join(home, 'lib')
    src = os.path.dirname(os.path.dirname(os.path.abspath(auto.__file__)))
    new = tempfile.mkdtemp(prefix='python.', dir=lib)
    os.chmod(new, 0o755)
    copy_tree_readonly(src, os.path.join(new, 'qmail'))
    with open(os.path.join(new, 'qmail', 'lib', 'auto.py'), 'w') as f:
        f.write(auto_source(home, python, split, uids, gids))
    compileall.compile_dir(new, quiet=1)
    for dirpath, dirnames, filenames in os.walk(new):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    link = os.path.join(lib, 'python')
    old = os.path.realpath(link) if os.path.islink(link) else None
    tmp = link + '.new'
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(os.path.basename(new), tmp)
    if os.path.isdir(link) and not os.path.islink(link):
        shutil.rmtree(link)
    os.rename(tmp, link)
    # The copy just replaced stays, for the programs running on it, and
    # any a daemon still runs on (qmail.lib.inuse); the others go.
    keep = {os.path.basename(new)} | inuse.copies_in_use(lib)
    if old and os.path.dirname(old) == lib:
        keep.add(os.path.basename(old))
    for name in os.listdir(lib):
        if name.startswith('python.') and name not in keep:
            shutil.rmtree(os.path.join(lib, name), ignore_errors=True)
    # The fixed scripts the set-uid launchers run.
    write_file(os.path.join(lib, 'qmail-queue.py'),
               program_script(home, python, 'queue', False), 0o644)
    for name, module, needs_site in CHECKERS:
        write_file(os.path.join(lib, name + '.py'),
                   program_script(home, python, module, needs_site), 0o644)


def program_script(home, python, module, needs_site):
    flags = '-I' if needs_site else '-IS'
    return ('#!%s %s\n'
            '# qmail program for the home %s; written by qmail-install.\n'
            'import os, sys\n'
            'sys.path.insert(0, os.path.realpath(%r))   # one copy, whatever comes\n'
            'from qmail.%s import run\n'
            'run()\n') % (python, flags, home,
                          os.path.join(home, 'lib', 'python'), module)


def write_file(path, text, mode, uid=0, gid=0):
    """path made anew with text: written under a fresh name of its own
    (never a name someone may have planted a link at), then renamed."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.',
                               prefix='.' + os.path.basename(path) + '.')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
            f.flush()
            os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def compile_launcher(home, source, name, strings, uid, gid, mode):
    """Compile qmail/<source> into bin/<name> with @KEY@ replaced by
    strings[KEY], owned uid:gid, mode (set-uid)."""
    src = os.path.join(os.path.dirname(os.path.abspath(auto.__file__)), '..', source)
    text = open(src).read()
    for key, value in strings.items():
        text = text.replace('@%s@' % key, value)
    bindir = os.path.join(home, 'bin')
    with tempfile.TemporaryDirectory() as tmpdir:
        csrc = os.path.join(tmpdir, name + '.c')
        with open(csrc, 'w') as f:
            f.write(text)
        out = os.path.join(bindir, '.%s.new' % name)
        subprocess.run(['cc', '-O2', '-Wall', '-Werror', '-o', out, csrc],
                       check=True)
    os.chown(out, uid, gid)
    os.chmod(out, mode)
    os.rename(out, os.path.join(bindir, name))


def build_launcher(home, python, uids, gids):
    """Compile bin/qmail-queue: setuid qmailq, 04711."""
    compile_launcher(home, 'queue-launcher.c', 'qmail-queue',
                     {'PYTHON': python, 'QMAIL': home}, uids['qmailq'], gids['qmail'],
                     0o4711)


def build_checkers(home, python, uids, gids):
    """Compile bin/checkpassword and bin/vcheckpassword: set-uid root,
    run by root and the nofiles group alone (CHECKER_MODE), going on
    for root and qmaild alone."""
    for name, module, needs_site in CHECKERS:
        compile_launcher(home, 'check-launcher.c', name,
                         {'PYTHON': python, 'FLAGS': '-I' if needs_site else '-IS',
                          'SCRIPT': os.path.join(home, 'lib', name + '.py'),
                          'QMAILD': '%d' % uids['qmaild']},
                         0, gids['nofiles'], CHECKER_MODE)


def install_bin(home, python, uids, gids):
    build_launcher(home, python, uids, gids)
    build_checkers(home, python, uids, gids)
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(auto.__file__)))
    for name, module, mode, needs_site in PROGRAMS:
        if not os.path.exists(os.path.join(pkg, module + '.py')):
            continue                  # not written yet in this version
        write_file(os.path.join(home, 'bin', name),
                   program_script(home, python, module, needs_site),
                   mode, 0, gids['qmail'])


# --- control files ------------------------------------------------------

def derive_defaultdomain(fqdn: str) -> str:
    """config-fast: drop the first label if the name has at least 3."""
    m = re.match(r'^([^.]*)\.([^.]*)\.', fqdn)
    if m:
        return fqdn[m.end(1) + 1:]
    return fqdn


def derive_plusdomain(fqdn: str) -> str:
    """config-fast: the last two labels."""
    m = re.match(r'^.*\.([^.]*)\.([^.]*)$', fqdn)
    if m:
        return '%s.%s' % (m.group(1), m.group(2))
    return fqdn


def config_fast(home, fqdn):
    """Write me, defaultdomain, plusdomain, locals, rcpthosts once."""
    control = os.path.join(home, 'control')
    if os.path.exists(os.path.join(control, 'me')):
        return
    say('configuring control/ for ' + fqdn)
    for name, value in (('defaultdomain', derive_defaultdomain(fqdn)),
                        ('plusdomain', derive_plusdomain(fqdn)),
                        ('locals', fqdn), ('rcpthosts', fqdn),
                        ('me', fqdn)):        # me last: it marks "done"
        write_file(os.path.join(control, name), value + '\n', 0o644)


# The system's sendmail, for the default home only (INSTALL: "ln -s
# /var/qmail/bin/sendmail /usr/lib/sendmail"), and mailq (sendmail by
# that name runs qmail-qread).  Another MTA's file is left alone:
# replacing it is the admin's decision (REMOVE.sendmail).
SYSTEM_LINKS = ('/usr/sbin/sendmail', '/usr/lib/sendmail', '/usr/bin/mailq')


def link_system_sendmail(home):
    target = os.path.join(home, 'bin', 'sendmail')
    for path in SYSTEM_LINKS:
        try:
            current = os.readlink(path)
        except FileNotFoundError:
            current = None
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            say('leaving %s alone: another MTA owns it' % path)
            continue
        if current == target:
            continue
        if current is not None and not current.endswith('/bin/sendmail'):
            say('leaving %s alone: it points to %s' % (path, current))
            continue
        tmp = path + '.qmail-new'
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(target, tmp)
        os.rename(tmp, path)
        say('%s -> %s' % (path, target))


def host_fqdn():
    """This host's name; a name without a dot gets .localdomain, since
    qmail-inject appends defaultdomain to dotless names (root@vm would
    become root@vm.vm and leave for a host that does not exist)."""
    name = socket.getfqdn()
    if not name or name == 'localhost':
        name = socket.gethostname()
    name = name.lower().rstrip('.')
    if '.' not in name:
        name += '.localdomain'
    return name


ALIAS_FILES = ('.qmail-postmaster', '.qmail-mailer-daemon', '.qmail-root')


def install_aliases(home, uids, gids):
    """INSTALL.alias: mail for postmaster, MAILER-DAEMON and root goes to
    the alias user; until the admin points these at a person, it is
    kept in HOME/alias/Maildir/ rather than bounced.  Existing files are
    the admin's and stay as they are."""
    alias = os.path.join(home, 'alias')
    maildir = os.path.join(alias, 'Maildir')
    for sub in ('', 'tmp', 'new', 'cur'):
        make_dir(os.path.join(maildir, sub), uids['alias'], gids['qmail'], 0o700)
    for name in ALIAS_FILES:
        path = os.path.join(alias, name)
        if not os.path.exists(path):
            write_file(path, './Maildir/\n', 0o644, 0, gids['qmail'])


# --- services (daemontools; runit and systemd files live in boot/) ---------

SEND_RUN = """#!/bin/sh
# qmail-send under supervise: qmail-start forks the daemons; its log goes
# to stdout, which supervise pipes into log/run (multilog).
exec env - PATH="%(home)s/bin:/usr/bin:/bin" \\
  qmail-start "`cat %(home)s/control/defaultdelivery 2>/dev/null || echo ./Maildir/`" 2>&1
"""

SMTPD_RUN = """#!/bin/sh
# qmail-smtpd under supervise, through qmail-listen (see README
# "Receiving"); rules in control/tcp.smtp, compiled by
# qmail-install or: tcprules control/tcp.smtp.cdb control/tcp.smtp.tmp < control/tcp.smtp
# (as qmail reads a number: its leading digits; none, or 0: 20, said in
# the log rather than a qmail-listen refusing to start every second)
LINE=`head -1 %(home)s/control/concurrencyincoming 2>/dev/null`
LIMIT=`echo "$LINE" | sed 's/[^0-9].*//'`
if [ -z "$LINE" ]; then
  LIMIT=20
elif [ -z "$LIMIT" ] || [ "$LIMIT" -lt 1 ] 2>/dev/null; then
  echo "qmail-smtpd run: control/concurrencyincoming is no number of at least 1; taking 20"
  LIMIT=20
fi
exec env - PATH="%(home)s/bin:/usr/bin:/bin" \\
  qmail-listen -v -c "$LIMIT" -x %(home)s/control/tcp.smtp.cdb -X \\
  -u %(uid)d -g %(gid)d %(addr)s %(port)s %(home)s/bin/qmail-smtpd 2>&1
"""


def wait_for_checker(flag: str, name: str) -> str:
    """A run script's lines that take the checker from control/<flag>
    (its first line, blanks trimmed) and, when it names none, say so
    and sleep a minute (the supervisor then tries again) rather than
    serve logins nothing checks.  name: the service's, or %(name)s."""
    return ("CHECKER=`head -1 %%(home)s/control/%s 2>/dev/null | "
            "sed 's/^[[:space:]]*//;s/[[:space:]]*$//'`\n"
            'if [ -z "$CHECKER" ]; then\n'
            '  echo "%s run: control/%s names no checker; looking again in a minute"\n'
            '  exec sleep 60\n'
            'fi\n' % (flag, name, flag))


POP3D_RUN = """#!/bin/sh
# qmail-pop3d under supervise, as root (the checker switches to the
# user): enabled by qmail-svscan when control/pop3checker names the
# checkpassword program (checkpassword for system users, vcheckpassword
# for virtual ones).
""" + wait_for_checker('pop3checker', 'qmail-pop3d') + """ME=`head -1 %(home)s/control/me`
exec env - PATH="%(home)s/bin:/usr/bin:/bin" \\
  qmail-listen -v -c 20 -x %(home)s/control/tcp.pop3.cdb -X %(addr)s %(port)s \\
  %(home)s/bin/qmail-popup "$ME" "$CHECKER" %(home)s/bin/qmail-pop3d Maildir 2>&1
"""

SUBMISSION_RUN = """#!/bin/sh
# qmail-smtpd for mail clients, through qmail-listen as qmaild, %(what)s
# (put the certificate in control/servercert.pem); enabled by qmail-svscan when
# control/submissionchecker names the checkpassword program
# (checkpassword for system users, vcheckpassword for virtual ones).
# MAIL only after AUTH (REQUIRE_AUTH), only from the user's own addresses
# (FORCEAUTHMAILFROM), and then relaying; rules, if any, in
# control/tcp.submission.cdb (tcprules, as tcp.smtp; FORCEAUTHMAILFROM="0"
# there lets users send as anyone).
""" + wait_for_checker('submissionchecker', '%(name)s') + """ME=`head -1 %(home)s/control/me`
exec env - PATH="%(home)s/bin:/usr/bin:/bin" REQUIRE_AUTH=1 FORCEAUTHMAILFROM=1 %(smtps)s\\
  qmail-listen -v -c 20 -x %(home)s/control/tcp.submission.cdb -X \\
  -u %(uid)d -g %(gid)d %(addr)s %(port)s \\
  %(home)s/bin/qmail-smtpd "$ME" "$CHECKER" /bin/true 2>&1
"""

LOG_RUN = """#!/bin/sh
exec setuidgid qmaill multilog t %(home)s/log/%(name)s
"""

DEFAULT_TCP_SMTP = """# qmail-smtpd's tcprules: who may connect, who may relay.
127.:allow,RELAYCLIENT=""
::1:allow,RELAYCLIENT=""
:allow
"""


BOOT_README = """qmail's boot/ scripts (home, proc, binm1 ... binm3, and the
/var/qmail/rc made from one of them) are not used by this qmail.

Their one setting, the delivery for users without a .qmail file, is
%(home)s/control/defaultdelivery: one instruction a line, as in a
.qmail file (./Maildir/, ./Mailbox, |preline procmail).  The run
script %(home)s/supervise/qmail-send/run gives it to qmail-start;
after a change, restart qmail-send (svc -t on its service directory,
or systemctl restart qmail-send).  qmail-showctl prints it.

qmail-start runs under a supervisor: daemontools (make run, or link
%(home)s/supervise/* into svscan's directory), or the systemd units and
runit scripts in the source's boot/ directory.  qmail-send's log goes to
%(home)s/log/qmail-send (multilog) under daemontools.
"""

DOC_README = """The documentation of this qmail.

The programs follow qmail's manual pages (notqmail keeps them current).
Each program's own description (what it reads and writes, the user it
runs as, its exit codes, and where it differs from qmail or adds to
it) opens its module: %(home)s/lib/python/qmail/<module>.py, the module
named as the program without its qmail- prefix (qmail-smtpd: smtpd.py,
qmail-send: send.py, tcp-env: tcp_env.py, except: except_.py).

The manual pages in %(home)s/man: one per program, made from those
descriptions when the home is installed; qmail-control(5), the control
files; the file formats (dot-qmail(5), maildir(5), qmail-log(5) and
more), written for this qmail; and qmail(7), the list of them all.  With
%(home)s/bin in PATH, `man qmail-send` finds them; otherwise
`man -M %(home)s/man qmail-send`, or MANPATH.

qmail-showctl prints every control file's value, or its default.  The
control files, their defaults and their readers, and the setup, the
service scripts and the differences from qmail, are in the source's
control/README and README.md.
"""


def install_docs(home, gids):
    """HOME/boot/README and HOME/doc/README: where an admin following
    qmail's INSTALL looks for boot/proc and the manual pages."""
    for sub, text in (('boot', BOOT_README), ('doc', DOC_README)):
        write_file(os.path.join(home, sub, 'README'), text % {'home': home},
                   0o644, 0, gids['qmail'])


def install_man(home, gids):
    """HOME/man: a page per program in bin/, made from the description
    that opens its module (qmail.lib.manpage), the pages of qmail/man
    (file formats and the like, written by hand), qmail-control(5) from
    the source's control/README, and qmail(7), the list of them all.
    With HOME/bin in PATH, man(1) finds them (man-db looks in ../man of
    each PATH directory); MANPATH=HOME/man does it otherwise."""
    pkg = os.path.join(home, 'lib', 'python', 'qmail')
    index = []
    for name, module in ([(p[0], p[1]) for p in PROGRAMS] + [('qmail-queue', 'queue')]
                         + [(c[0], c[1]) for c in CHECKERS]):
        try:
            with open(os.path.join(pkg, module + '.py'), encoding='utf-8') as f:
                source = f.read()
        except FileNotFoundError:
            continue                    # (as install_bin: no module, no program)
        tree = ast.parse(source)
        doc = ast.get_docstring(tree, clean=False) or name
        section = manpage.section_of(name)
        for other in ('1', '8'):        # an earlier install's, filed elsewhere
            if other != section:
                try:
                    os.unlink(os.path.join(home, 'man', 'man' + other, name + '.' + other))
                except FileNotFoundError:
                    pass
        write_file(os.path.join(home, 'man', 'man' + section, name + '.' + section),
                   manpage.page(name, doc, usage=manpage.usage_of(tree)),
                   0o644, 0, gids['qmail'])
        index.append((name, manpage.parse(doc)[1]))
    # The file formats and the like, written by hand: qmail/man/<name>.<section>.
    try:
        written = sorted(os.listdir(os.path.join(pkg, 'man')))
    except FileNotFoundError:
        written = []
    others = []
    for name in written:
        base, _, section = name.rpartition('.')
        if section.isdigit():
            with open(os.path.join(pkg, 'man', name), encoding='utf-8') as f:
                text = f.read()
            write_file(os.path.join(home, 'man', 'man' + section, name),
                       text, 0o644, 0, gids['qmail'])
            others.append((base, section, manpage.summary_of(text)))
    src = os.path.dirname(os.path.dirname(os.path.abspath(auto.__file__)))
    readme = os.path.join(os.path.dirname(src), 'control', 'README')
    control_page = os.path.join(home, 'man', 'man5', 'qmail-control.5')
    try:
        with open(readme, encoding='utf-8') as f:
            text = f.read()
    except FileNotFoundError:
        pass                    # not run from the source: the page stays as it was
    else:
        write_file(control_page, manpage.control_page(text), 0o644, 0, gids['qmail'])
    if os.path.exists(control_page):
        others.append(('qmail-control', '5', 'the control files'))
    write_file(os.path.join(home, 'man', 'man7', 'qmail.7'),
               manpage.index_page(sorted(index), sorted(others)), 0o644, 0, gids['qmail'])


LISTEN_DEFAULTS = {'smtp_addr': '127.0.0.1', 'smtp_port': '25', 'pop3_port': '110',
                   'submission_port': '587', 'smtps_port': '465'}


def listening(home) -> dict:
    """Where the home's services listen now, as its run scripts say (the
    address and port qmail-listen is given, however the rest of the line
    was edited: rblsmtpd before qmail-smtpd, say): a reinstall not told
    otherwise keeps them, so `make run` over a home set up with
    SMTP_ADDR=0 does not move SMTP back to 127.0.0.1.  POP3 listens on
    SMTP's address; either script may tell it.  A value found in
    neither is the default (LISTEN_DEFAULTS)."""
    found = {}
    for name, port in (('qmail-smtpd', 'smtp_port'), ('qmail-pop3d', 'pop3_port'),
                       ('qmail-submission', 'submission_port'), ('qmail-smtps', 'smtps_port')):
        try:
            with open(os.path.join(home, 'supervise', name, 'run')) as f:
                got = listen_args(f.read(1 << 16))
        except (OSError, UnicodeDecodeError):
            continue
        if got is not None:
            found.setdefault('smtp_addr', got[0])
            found[port] = got[1]
    return {**LISTEN_DEFAULTS, **found}


def script_lines(script: str):
    """A shell script's lines, continued lines joined, comments cut (a
    comment may name a program)."""
    for line in script.replace('\\\n', ' ').splitlines():
        yield line.split('#', 1)[0]


def listen_args(script: str):
    """(address, port) of the first qmail-listen command in a shell
    script, or None: its arguments read as qmail-listen reads them."""
    import getopt
    import shlex
    from qmail.listen import OPTSPEC
    for line in script_lines(script):
        words = line.split()
        for i, word in enumerate(words):
            if word == 'qmail-listen' or word.endswith('/qmail-listen'):
                try:
                    _, rest = getopt.getopt(shlex.split(' '.join(words[i + 1:])), OPTSPEC)
                except (getopt.GetoptError, ValueError):
                    break
                if len(rest) >= 2 and rest[1].isdigit():
                    return rest[0], rest[1]
    return None


# What the programs a service script runs need of memory, with room: an
# interpreter, the ssl module for STARTTLS and a yescrypt hash of
# Debian's default cost (about 40 MB in all); with vcheckpassword,
# Argon2's 64 MB and its threads' stacks (about 130 MB).
MEMORY_NEEDED = 64000000
MEMORY_NEEDED_ARGON2 = 200000000

# The options that set a limit on memory, each with its unit in bytes:
# daemontools' softlimit (-m sets all of them) and runit's chpst take
# bytes, the shell's ulimit kilobytes.  The getopt specs are the tools'.
MEMORY_OPTIONS = {
    'softlimit': ('a:c:d:f:l:m:o:p:r:s:t:', {'-m': 1, '-a': 1, '-d': 1}),
    'chpst': ('u:U:b:e:/:C:n:l:L:m:d:o:p:f:c:r:t:vP012V', {'-m': 1, '-d': 1}),
}


def memory_limit(script: str):
    """(bytes, how) for the lowest limit on memory a shell script sets
    (softlimit -m/-a/-d, chpst -m/-d, ulimit -v/-d), how being the words
    that set it; None if it sets none."""
    import getopt
    import shlex
    low = None
    for line in script_lines(script):
        try:        # (; && | apart: "ulimit -v 2000; exec ...")
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            words = list(lex)
        except ValueError:
            words = line.split()
        for i, word in enumerate(words):
            name = os.path.basename(word)
            found = []
            if name in MEMORY_OPTIONS:
                spec, units = MEMORY_OPTIONS[name]
                try:
                    opts, _ = getopt.getopt(words[i + 1:], spec)
                except getopt.GetoptError:
                    continue
                found = [(int(v) * units[o], '%s %s %s' % (name, o, v))
                         for o, v in opts if o in units and v.isdigit()]
            elif name == 'ulimit':
                rest = words[i + 1:]
                for j, opt in enumerate(rest[:-1]):
                    if set(opt) <= set(';&|()'):     # its command ends
                        break
                    if (opt[:1] == '-' and opt[1:] and set(opt[1:]) <= set('HSvd')
                            and set(opt[1:]) & set('vd') and rest[j + 1].isdigit()):
                        found.append((int(rest[j + 1]) * 1024,
                                      'ulimit %s %s' % (opt, rest[j + 1])))
            for got in found:
                if low is None or got[0] < low[0]:
                    low = got
    return low


def memory_warning(path, script: str):
    """A warning if the service script at path limits memory below what
    its programs need (a run script kept from C qmail: Life with qmail's
    have softlimit -m 2000000), else None."""
    limit = memory_limit(script)
    need = MEMORY_NEEDED_ARGON2 if 'vcheckpassword' in script else MEMORY_NEEDED
    if limit is None or limit[0] >= need:
        return None
    return ('qmail-install: warning: %s limits memory to %d bytes (%s): this '
            "qmail's programs need more (Python); give at least %d, or no limit "
            '(README: "Memory limits")\n' % (path, limit[0], limit[1], need))


def install_services(home, uids, gids, smtp_addr=None, smtp_port=None, pop3_port=None,
                     submission_port=None, smtps_port=None):
    """HOME/supervise/<service>/{run,log/run} and HOME/log/<service>:
    the daemontools setup (qmail's own INSTALL layout, logs per home).
    An address or port not given is the one the home's run script has
    (listening), else the default."""
    was = listening(home)
    smtp_addr = smtp_addr or was['smtp_addr']
    smtp_port = smtp_port or was['smtp_port']
    pop3_port = pop3_port or was['pop3_port']
    submission_port = submission_port or was['submission_port']
    smtps_port = smtps_port or was['smtps_port']
    sup = os.path.join(home, 'supervise')
    logs = os.path.join(home, 'log')
    make_dir(sup, 0, gids['qmail'], 0o755)
    make_dir(logs, 0, gids['qmail'], 0o755)
    services = {
        'qmail-send': SEND_RUN % {'home': home},
        'qmail-smtpd': SMTPD_RUN % {'home': home, 'uid': uids['qmaild'],
                                    'gid': gids['nofiles'], 'addr': smtp_addr,
                                    'port': smtp_port},
        'qmail-pop3d': POP3D_RUN % {'home': home, 'addr': smtp_addr, 'port': pop3_port},
        # mail clients' SMTP: submission (587), and TLS from the start (465)
        'qmail-submission': SUBMISSION_RUN % {
            'home': home, 'uid': uids['qmaild'], 'gid': gids['nofiles'], 'addr': smtp_addr,
            'port': submission_port, 'smtps': '', 'name': 'qmail-submission',
            'what': 'for\n# submission (STARTTLS, then SMTP AUTH)'},
        'qmail-smtps': SUBMISSION_RUN % {
            'home': home, 'uid': uids['qmaild'], 'gid': gids['nofiles'], 'addr': smtp_addr,
            'port': smtps_port, 'smtps': 'SMTPS=1 ', 'name': 'qmail-smtps',
            'what': 'with\n# TLS from the start (SMTPS, RFC 8314), then SMTP AUTH'},
    }
    for name, text in services.items():
        d = os.path.join(sup, name)
        make_dir(d, 0, gids['qmail'], 0o755)
        write_kept(os.path.join(d, 'run'), text, 0o755, 0, gids['qmail'])
        try:
            with open(os.path.join(d, 'run')) as f:
                warning = memory_warning(os.path.join(d, 'run'), f.read(1 << 16))
        except (OSError, UnicodeDecodeError):
            warning = None
        if warning:
            sys.stderr.write(warning)
        make_dir(os.path.join(d, 'log'), 0, gids['qmail'], 0o755)
        write_kept(os.path.join(d, 'log', 'run'), LOG_RUN % {'home': home, 'name': name},
                   0o755, 0, gids['qmail'])
        make_dir(os.path.join(logs, name), uids['qmaill'], gids['nofiles'], 0o750)
    # The rules: written if absent, compiled if newer than their cdb.  A
    # cdb the admin built (from this file or another) is the admin's.
    rules = os.path.join(home, 'control', 'tcp.smtp')
    cdbfile = rules + '.cdb'
    if not os.path.exists(rules):
        if os.path.exists(cdbfile):
            return
        write_file(rules, DEFAULT_TCP_SMTP, 0o644)
    try:        # (>=: a file's time has the kernel clock's tick, coarser than the writes)
        stale = os.stat(rules).st_mtime_ns >= os.stat(cdbfile).st_mtime_ns
    except FileNotFoundError:
        stale = True
    if stale:
        compile_rules(rules)


# The last line of a file qmail-install writes for the admin to edit (the
# service scripts): the digest of what it wrote.  A reinstall replaces the
# file while the digest still matches, and keeps it once edited.
KEPT_MARK = '# qmail-install wrote this; edited, it is kept at a reinstall: '


def marked(text: str) -> str:
    return text + KEPT_MARK + hashlib.sha256(text.encode()).hexdigest()[:16] + '\n'


def write_kept(path, text, mode, uid, gid):
    """path made text (with its mark), unless the admin changed it since
    qmail-install wrote it: then it is kept, the new text goes to
    path.new, and a warning says so.  A file from before the mark counts
    as the installer's if it is the new text exactly."""
    new = marked(text)
    try:
        with open(path) as f:
            now = f.read()
    except FileNotFoundError:
        now = None
    except (OSError, UnicodeDecodeError):
        now = ''                        # unreadable as text: not ours to replace
    if now is not None and now not in (new, text):
        body, _, mark = now.rpartition(KEPT_MARK)
        if not mark or marked(body) != now:
            write_file(path + '.new', new, mode, uid, gid)
            fix(path, uid, gid, mode, stat.S_ISREG)     # kept, but root's as supervise runs it
            sys.stderr.write('qmail-install: kept %s, changed since it was installed; '
                             'this version would have written %s.new\n' % (path, path))
            return
    write_file(path, new, mode, uid, gid)


def compile_rules(rules):
    """control/tcp.smtp -> control/tcp.smtp.cdb, with tcprules(1) (Debian's
    ucspi-tcp, which make installs).  Without it nothing is built, and
    says so: qmail-listen -X then serves every client with no rule (no
    RELAYCLIENT: nobody relays), until tcprules compiles the file."""
    cdbfile = rules + '.cdb'
    if shutil.which('tcprules'):
        with open(rules, 'rb') as f:
            subprocess.run(['tcprules', cdbfile, rules + '.tmp'], stdin=f, check=True)
        os.chmod(cdbfile, 0o644)
    elif not os.path.exists(cdbfile):
        sys.stderr.write('qmail-install: warning: tcprules(1) not found (ucspi-tcp): %s '
                         'not built; until it is, no client may relay\n' % cdbfile)


def status_text(home):
    from qmail import svscan
    me = control.me_text(home)
    return '''qmail home %(home)s is installed for %(me)s.
Queue a first message (as any user):
    echo 'Subject: hello' | %(home)s/bin/sendmail root@%(me)s
See it in the queue (as root):
    %(home)s/bin/qmail-qread
    %(home)s/bin/qmail-qstat
Configuration: %(home)s/bin/qmail-showctl
A user without a .qmail file gets mail in ~/Maildir/ (make it with
%(home)s/bin/maildirmake ~/Maildir as that user).  Mail for root,
postmaster and MAILER-DAEMON lands in %(home)s/alias/Maildir/ until
you point %(home)s/alias/.qmail-root (and -postmaster,
-mailer-daemon) at a person, as qmail's INSTALL.alias says.
Run it: %(run)s (or %(home)s/bin/qmail-svscan start); %(stop)s.''' % {
        'home': home, 'me': me, 'run': svscan.make_cmd('run', home),
        'stop': svscan.make_cmd('stop', home)}


# --- main -----------------------------------------------------------------

def check_path(what, path):
    if not SAFE_PATH.match(path) or '//' in path or '/../' in path + '/':
        raise InstallError('%s must be a plain absolute path: %r' % (what, path))


def root_only(path) -> str:
    """None if path, and every directory above it, is root's and
    writable by nobody else (a sticky directory, as /tmp, may be
    world-writable: others cannot replace root's names there); else
    the first that is not."""
    path = os.path.abspath(path)
    while True:
        try:
            st = os.lstat(path)
        except OSError:
            return path
        sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if st.st_uid != 0 or (st.st_mode & 0o022 and not sticky
                              and not stat.S_ISLNK(st.st_mode)):
            return path
        if path == '/':
            return None
        path = os.path.dirname(path)


# The modules of pyproject's dependencies, as the programs import them:
# without the first, qmail-remote crashes; without the others, a program
# does without (process titles, qmail-send's watch on todo/) or says so
# when used (argon2: qmail-vpasswd and vcheckpassword).
RUNTIME_MODULES = ('dns.resolver', 'idna')
RUNTIME_OPTIONAL = ('pyinotify', 'setproctitle', 'argon2', 'dkim')
# Run by the runtime: a line "<module> <why>" for each that will not import.
IMPORT_EACH = '''import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as e:
        print(name, '%s: %s' % (type(e).__name__, e))
'''


def check_runtime(python):
    """The interpreter runs as root (qmail-start, qmail-lspawn) and as
    qmailq (the setuid qmail-queue): it, what it links to and its
    environment's directory must be root's alone, or their owner would
    become root."""
    for path in (python, os.path.realpath(python),
                 os.path.join(os.path.dirname(os.path.dirname(python)), 'lib')):
        bad = root_only(path)
        if bad is not None:
            raise InstallError('the runtime %s is not root\'s alone: %s may be changed by '
                               'someone else (see make setup)' % (python, bad))
    # What the programs import (pyproject's dependencies): without the
    # required ones every remote delivery would crash, and wait in the
    # queue for a week.  One interpreter start tries them all.
    try:
        r = subprocess.run([python, '-I', '-c', IMPORT_EACH] + list(RUNTIME_MODULES
                                                                     + RUNTIME_OPTIONAL),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        failed = dict(line.split(' ', 1) for line in
                      r.stdout.decode('utf-8', 'replace').splitlines() if ' ' in line)
        if r.returncode != 0:
            failed.setdefault(RUNTIME_MODULES[0], 'exit %d' % r.returncode)
    except (OSError, subprocess.TimeoutExpired) as e:
        failed = {RUNTIME_MODULES[0]: str(e)}
    for name in RUNTIME_MODULES:
        if name in failed:
            raise InstallError('the runtime %s lacks a library the programs need (%s): %s '
                               '(see make setup)' % (python, ', '.join(RUNTIME_MODULES),
                                                     failed[name]))
    for name in RUNTIME_OPTIONAL:
        if name in failed:
            sys.stderr.write('qmail-install: warning: the runtime %s has no %s (see make '
                             'setup)\n' % (python, name))


def check_home(home):
    """HOME and the directories above it must be root's alone: the
    set-uid launchers run HOME/lib's scripts as root (and qmailq), and
    whoever may rename HOME, or a directory above it, may put their own
    there."""
    bad = root_only(os.path.dirname(home)) or root_only(
        os.path.dirname(os.path.realpath(home)))
    if bad is None and os.path.lexists(home):
        bad = root_only(home) or root_only(os.path.realpath(home))
    if bad is not None:
        raise InstallError('the home %s is not root\'s alone: %s may be changed by '
                           'someone else' % (home, bad))


def queue_split(home):
    """The split of a queue already in home (its mess/ subdirectories
    0 to n-1: n), or None where there is none.  InstallError for
    subdirectories that are no one split."""
    mess = os.path.join(home, 'queue', 'mess')
    try:
        names = os.listdir(mess)
    except FileNotFoundError:
        return None
    nums = sorted(int(n) for n in names if n.isdigit() and n.isascii() and len(n) < 6)
    if not nums:
        return None
    if nums != list(range(len(nums))):
        raise InstallError('%s has subdirectories %s: not the split of one queue '
                           '(give --split, and see README "Moving from C qmail")'
                           % (mess, ' '.join(map(str, nums[:30]))))
    return len(nums)


def choose_split(home, split=None) -> int:
    """The split to install with: an existing queue's (a C qmail's
    conf-split, say: another would leave its messages where no program
    looks), else split, else qmail's 23."""
    found = queue_split(home)
    if found is not None and split is not None and split != found:
        raise InstallError('the queue in %s is split %d ways; --split %d would leave its '
                           'messages where nothing looks for them' % (home, found, split))
    if found is not None:
        return found
    return auto.SPLIT if split is None else split


def install(home, python, fqdn, split=None, smtp_addr=None, smtp_port=None,
            pop3_port=None, submission_port=None, smtps_port=None):
    check_path('home', home)
    check_path('python', python)
    if not os.access(python, os.X_OK):
        raise InstallError('no interpreter at %s (run make setup)' % python)
    check_runtime(python)
    ensure_ids()
    uids, gids = lookup_ids()
    os.makedirs(os.path.dirname(home), exist_ok=True)
    existed = os.path.lexists(home)
    check_home(home)
    if not existed:
        # Made now, by root, or the install stops: one made by someone
        # else after check_home looked (in a sticky /tmp, say) would be
        # taken over with whatever they had put in it (service/ included).
        try:
            os.mkdir(home, 0o755)
        except FileExistsError:
            raise InstallError('the home %s appeared while the install began: made by '
                               'someone else?' % home) from None
    split = choose_split(home, split)
    if split != auto.SPLIT:
        say('queue split %d ways (conf-split)' % split)
    install_tree(home, uids, gids, split)
    install_lib(home, python, split, uids, gids)
    install_bin(home, python, uids, gids)
    if fqdn and os.path.exists(os.path.join(home, 'control', 'me')):
        me = control.me_text(home)
        if me != fqdn:
            sys.stderr.write('qmail-install: warning: --fqdn %s not applied: the home is '
                             'configured for %s already (control/me and the files '
                             'config-fast wrote: edit them to change it)\n' % (fqdn, me))
    config_fast(home, fqdn or host_fqdn())
    install_aliases(home, uids, gids)
    install_services(home, uids, gids, smtp_addr, smtp_port, pop3_port,
                     submission_port, smtps_port)
    install_docs(home, gids)
    install_man(home, gids)
    if home == DEFAULT_HOME:
        link_system_sendmail(home)
    else:
        say('not linking %s: only %s is the system\'s qmail (make the links '
            'yourself for this home)' % (', '.join(SYSTEM_LINKS), DEFAULT_HOME))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='qmail-install')
    parser.add_argument('--home', default=DEFAULT_HOME)
    parser.add_argument('--python', default=DEFAULT_PYTHON)
    parser.add_argument('--fqdn', default='')
    # Not given: what the home's service scripts say, else 127.0.0.1,
    # 25 and 110 (install_services).
    parser.add_argument('--smtp-addr', default=None)
    parser.add_argument('--smtp-port', default=None)
    parser.add_argument('--pop3-port', default=None)
    parser.add_argument('--submission-port', default=None)
    parser.add_argument('--smtps-port', default=None)
    parser.add_argument('--split', type=int, default=None,
                        help="the queue's subdirectories (conf-split; default: an "
                        "existing queue's, else 23)")
    parser.add_argument('--status', action='store_true',
                        help='say what is installed and how to use it')
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 100        # --help: 0
    if args.status:
        if not control.me_text(args.home):
            print('qmail-install: %s is not installed (no control/me)' % args.home,
                  file=sys.stderr)
            return 111
        print(status_text(args.home))
        return 0
    if os.geteuid() != 0:
        print('qmail-install: fatal: must be run as root', file=sys.stderr)
        return 100
    try:
        if args.split is not None and not 1 <= args.split <= 9999:
            raise InstallError('--split wants a number from 1 to 9999')
        install(args.home.rstrip('/') or '/', args.python, args.fqdn, split=args.split,
                smtp_addr=args.smtp_addr, smtp_port=args.smtp_port,
                pop3_port=args.pop3_port, submission_port=args.submission_port,
                smtps_port=args.smtps_port)
    except InstallError as e:
        print('qmail-install: fatal: %s' % e, file=sys.stderr)
        return 100
    except (OSError, subprocess.CalledProcessError) as e:
        print('qmail-install: fatal: %s' % e, file=sys.stderr)
        return 111
    say('installed %s' % args.home)
    return 0


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
