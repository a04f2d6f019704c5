"""qmail-fsck: check a qmail home's tree and queue; with -r, repair them
without losing mail.

Runs as:  root, on a running or a stopped queue.
Usage:    qmail-fsck [-r] [-q] [home]   (home: the installed one)
Reads:    the home's tree, against qmail-install's table (HIER): types,
          owners, modes, the split subdirectories; every file in
          HOME/queue: names, inodes, owners, modes (at least what its
          writer gives it: 0644 for qmail-queue's, whose readers are
          other users, 0600 for qmail-send's), ages, and the envelope
          records of todo/, info/, local/, remote/.
Writes:   fd 1, one line per problem, "qmail-fsck: <kind> <path>: <what>
          (-r: <repair>)": without -r, the plan; with -r, one more line
          per repair.  -q: no summary line.
Repairs:  (-r) owners and modes as qmail-install sets them (a queue
          file: its writer's user, group qmail and mode, and the hold
          mark of qmail-qhold kept); a missing directory, lock file or
          FIFO (lock/trigger, lock/command: a file or link in a FIFO's
          place is replaced); a queue file in the wrong
          split subdirectory (moved to its own); stale files that
          qmail-send and qmail-clean remove themselves: messages in S2/S3
          older than OSSIFIED, intd/ files whose message is gone, pid/
          files older than OSSIFIED.  Anything else that holds mail (a
          message, an envelope, a recipient list, a bounce) is never
          deleted: the message's files are moved to
          HOME/queue/fsck/<messid>.<time>/ with a REPORT, out of
          qmail-send's way, and only while qmail-send is stopped (its
          mutex, lock/sendmutex, is held through the repairs; a message
          taken from under a running one stays a job in its memory).  A
          message file not named by its inode (a restored queue) is
          reported only: qmail-send delivers it as it is.
Exits:    0 clean; 1 problems found (and, with -r, repaired as far as
          safe: run it again to see what is left); 100 usage; 111 could
          not check (or could not write its report).
Trusts:   nothing in the queue: names are checked to be digits, files
          are read with a size limit.
See:      INTERNALS.md (states S1-S5, "Cleanups"), qmail-install (HIER),
          qmail-crashtest, which runs the same queue checks after every
          crash it makes.

A live queue moves under the scan: a message goes from S4 to S5 to S1
while its files are looked at one by one.  So each message is looked at
twice, in an order that makes a reported problem impossible for a
message on its normal way (see look_at), and a problem is reported only
if both looks show it.
"""

import errno
import os
import stat
import sys
import time

from qmail.install import root_made_link
from qmail.lib import auto, durable
from qmail.lib.error import error_str, exit_flushed, guard_stdout
from qmail.lib.qfile import FLATDIRS, SPLITDIRS, parse_messid, qfn
from qmail.queue import ENVELOPEMAX

OSSIFIED = 129600        # 36 hours, qmail-send's and qmail-clean's: an older
                         # file has no live qmail-queue (DEATH, 24 hours)
READ_MAX = 2 * ENVELOPEMAX  # an envelope longer than this is not one (qmail-queue
                            # takes up to ENVELOPEMAX; intd adds u and p, local/
                            # and remote/ a byte per recipient)
QUARANTINE = 'fsck'      # HOME/queue/fsck: what -r takes out of the queue
QUEUE_FILE_OWNER = {     # who writes the files in each queue directory
    'mess': 'qmailq', 'intd': 'qmailq', 'todo': 'qmailq', 'pid': 'qmailq',
    'info': 'qmails', 'local': 'qmails', 'remote': 'qmails',
    'bounce': 'qmails',
}
QUEUE_FILE_MODE = {      # as its writer makes it: qmail-queue's under umask 033
    'mess': 0o644, 'intd': 0o644, 'todo': 0o644, 'pid': 0o644,
    'info': 0o600, 'local': 0o600, 'remote': 0o600, 'bounce': 0o600,
}
LOOK_ORDER1 = ('todo', 'intd', 'info', 'local', 'remote', 'bounce')
LOOK_ORDER2 = ('intd', 'info', 'todo', 'local', 'remote', 'bounce')


class Problem(tuple):
    """(kind, path, detail, repair, messid): path is relative to the home;
    repair is what -r does: quarantine, remove, move, chown, chmod,
    create, or '' (nothing safe: the admin decides)."""

    __slots__ = ()

    def __new__(cls, kind, path, detail, repair='', messid=None):
        return tuple.__new__(cls, (kind, path, detail, repair, messid))

    kind = property(lambda self: self[0])
    path = property(lambda self: self[1])
    detail = property(lambda self: self[2])
    repair = property(lambda self: self[3])
    messid = property(lambda self: self[4])

    def __str__(self):
        return '%s %s: %s' % (self.kind, self.path, self.detail)


# ---- pure: records -------------------------------------------------------

def todo_trouble(data: bytes):
    """What is wrong with an envelope in todo/ (qmail-queue's u, p, F, T
    records, each NUL-terminated), or None."""
    if not data:
        return 'empty envelope'
    if not data.endswith(b'\0'):
        return 'envelope ends inside a record'
    senders = 0
    for record in data[:-1].split(b'\0'):
        tag = record[:1]
        if tag == b'F':
            senders += 1
        elif tag in (b'u', b'p'):
            if not record[1:].isdigit():
                return 'bad %s record' % tag.decode()
        elif tag != b'T':
            return 'unknown record type %s' % record_type(tag)
    if senders != 1:
        return '%d sender records' % senders
    return None


def record_type(tag: bytes) -> str:
    """A record's first byte for the report: itself if printable, else
    its number ("\\x01")."""
    if not tag:
        return '(an empty record)'
    return chr(tag[0]) if 33 <= tag[0] <= 126 else '\\x%02x' % tag[0]


def info_trouble(data: bytes):
    """What is wrong with info/ (one F record), or None."""
    if not data.startswith(b'F') or not data.endswith(b'\0') \
            or data.count(b'\0') != 1:
        return 'not one sender record'
    return None


def chan_trouble(data: bytes):
    """What is wrong with local/ or remote/ (T or D records), or None."""
    if not data:
        return 'empty recipient list'
    if not data.endswith(b'\0'):
        return 'recipient list ends inside a record'
    for record in data[:-1].split(b'\0'):
        if record[:1] not in (b'T', b'D'):
            return 'unknown record type %s' % record_type(record[:1])
    return None


def envelope_text(data: bytes) -> str:
    """A todo/ or intd/ envelope for people: sender and recipients."""
    lines = []
    for record in data.split(b'\0'):
        tag, addr = record[:1], record[1:].decode('utf-8', 'replace')
        if tag == b'F':
            lines.append('from <%s>' % addr)
        elif tag == b'T':
            lines.append('to <%s>' % addr)
    return '\n'.join(lines)


# ---- pure: one message's files, looked at twice ---------------------------

class Look:
    """What look_at saw of one message: first[d] and second[d] are
    (inode, atime, size) or None; mess is that of mess/; data[d] the
    bytes read between the looks (only if the inode did not change)."""

    def __init__(self):
        self.first = {}
        self.second = {}
        self.mess = None
        self.data = {}

    def stays(self, d) -> bool:
        """Present at both looks, the same file."""
        a, b = self.first.get(d), self.second.get(d)
        return a is not None and b is not None and a[0] == b[0]

    def gone(self, d) -> bool:
        """Absent at the second look."""
        return self.second.get(d) is None


def judge(messid: int, look: Look, split: int, now: float) -> list:
    """The problems of one message (INTERNALS states S1-S5).

    The looks make each report a proof on a live queue: qmail creates
    mess before intd before todo, and info before local and remote
    (with todo still there); it removes todo before mess, local and
    remote and bounce before info, info before mess, intd before mess.
    """
    out = []

    def path(d):
        return 'queue/' + qfn(d, messid, split)

    flagtodo = look.stays('todo')
    if look.mess is not None:
        if look.mess[0] != messid:
            # A queue restored from a backup, or copied: qmail-send
            # delivers it all the same (it never looks at inodes), so it
            # stays; qmail-queue, handed inode messid for a nameless new
            # message, takes another (qmail's gave up, 64, as this one
            # still does where files cannot be made nameless).
            out.append(Problem('mess-name', path('mess'),
                               'a message named %d is inode %d (qmail-send delivers it '
                               'as it is)' % (messid, look.mess[0]), '', messid))
    if flagtodo:
        if look.mess is None:
            out.append(Problem('todo-without-mess', path('todo'),
                               'queued envelope, message file missing',
                               'quarantine', messid))
        elif look.mess[2] == 0:
            out.append(Problem('todo-empty-mess', path('todo'),
                               'queued envelope, empty message file',
                               'quarantine', messid))
        if 'todo' in look.data:
            trouble = todo_trouble(look.data['todo'])
            if trouble:
                out.append(Problem('todo-malformed', path('todo'), trouble,
                                   'quarantine', messid))
    if look.stays('info') and look.mess is None:
        out.append(Problem('info-without-mess', path('info'),
                           'preprocessed message, message file missing',
                           'quarantine', messid))
    # Without todo/, info/ local/ remote/ are qmail-send's whole record
    # (S5); with it they may be half made (S4), and preprocessing redoes
    # them.
    flagnotodo = look.gone('todo') and not look.first.get('todo')
    if flagnotodo:
        if look.stays('info') and 'info' in look.data:
            trouble = info_trouble(look.data['info'])
            if trouble:
                out.append(Problem('info-malformed', path('info'), trouble,
                                   'quarantine', messid))
        for d in ('local', 'remote'):
            if not look.stays(d):
                continue
            if look.gone('info'):
                out.append(Problem('%s-without-info' % d, path(d),
                                   'recipients of a message qmail-send '
                                   'no longer knows', 'quarantine', messid))
            elif d in look.data:
                trouble = chan_trouble(look.data[d])
                if trouble:
                    out.append(Problem('%s-malformed' % d, path(d), trouble,
                                       'quarantine', messid))
        if look.stays('bounce') and look.gone('info'):
            out.append(Problem('bounce-without-info', path('bounce'),
                               'failure reports nobody will send',
                               'quarantine', messid))
    if look.stays('intd') and look.mess is None and flagnotodo \
            and now >= look.second['intd'][1] + OSSIFIED:
        out.append(Problem('intd-without-mess', path('intd'),
                           'envelope of an injection whose message is gone, '
                           'older than 36 hours', 'remove', messid))
    if look.mess is not None and flagnotodo and look.gone('info') \
            and not any(look.first.get(d) or look.second.get(d)
                        for d in ('local', 'remote', 'bounce')) \
            and now >= look.mess[1] + OSSIFIED:
        # qmail-send's own cleanup (INTERNALS "Cleanups"); by atime, as
        # there.
        out.append(Problem('mess-stale', path('mess'),
                           'message never queued (S2/S3), older than 36 hours',
                           'remove', messid))
    if any(p.repair == 'quarantine' for p in out):
        out = [p for p in out if p.repair == 'quarantine']
    return out


# ---- I/O: looking at the queue --------------------------------------------

def _lstat(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_atime, st.st_size


def _read(path, inode):
    """The bytes of path if it is still the file inode, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_ino != inode or not stat.S_ISREG(st.st_mode):
            return None
        chunks, size = [], 0
        while size <= READ_MAX:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b''.join(chunks)
    finally:
        os.close(fd)


def look_at(qdir: str, messid: int, split: int) -> Look:
    """Look at one message's files in the order judge() relies on: every
    file but mess, then mess, then read the envelopes, then every file
    but mess again (info before todo, todo before local and remote)."""
    look = Look()

    def p(d):
        return os.path.join(qdir, qfn(d, messid, split))

    for d in LOOK_ORDER1:
        look.first[d] = _lstat(p(d))
    look.mess = _lstat(p('mess'))
    for d in ('todo', 'info', 'local', 'remote'):
        if look.first[d] is not None:
            data = _read(p(d), look.first[d][0])
            if data is not None:
                look.data[d] = data
    for d in LOOK_ORDER2:
        look.second[d] = _lstat(p(d))
    return look


def _listdir(path):
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def scan_names(qdir: str, split: int, uids=None):
    """({messid}, [problems]) from every queue directory: the numbers of
    the messages with any file, and names that are not qmail's, files in
    the wrong split subdirectory, owners that are not qmail's."""
    ids = set()
    problems = []

    def one(d, sub, name):
        rel = os.path.join(sub, name) if sub else name
        full = os.path.join(qdir, d, rel)
        messid = parse_messid(name)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return                      # gone meanwhile: a live queue
        if messid is None or not stat.S_ISREG(st.st_mode):
            problems.append(Problem('stray', 'queue/%s/%s' % (d, rel),
                                    'not a qmail queue file'))
            return
        if uids is not None and st.st_uid != uids[QUEUE_FILE_OWNER[d]]:
            problems.append(Problem('file-owner', 'queue/%s/%s' % (d, rel),
                                    'owner %d, want %s' % (
                                        st.st_uid, QUEUE_FILE_OWNER[d]),
                                    'chown', messid))
        want = QUEUE_FILE_MODE[d]
        if st.st_mode & want != want:
            # Its readers cannot read it: qmail-send (todo/, the message
            # for a bounce), qmail-rspawn as qmailr (mess/), and they try
            # again and again ("trouble opening", "unable to open message").
            problems.append(Problem('file-mode', 'queue/%s/%s' % (d, rel),
                                    'mode %04o, want %04o' % (stat.S_IMODE(st.st_mode), want),
                                    'chmod', messid))
        if sub is not None and sub != str(messid % split):
            problems.append(Problem('misplaced', 'queue/%s/%s' % (d, rel),
                                    'belongs in %s/%d/' % (d, messid % split),
                                    'move', messid))
        ids.add(messid)

    for d in SPLITDIRS:
        for sub in _listdir(os.path.join(qdir, d)):
            if not os.path.isdir(os.path.join(qdir, d, sub)) \
                    or parse_messid(sub) is None:
                problems.append(Problem('stray', 'queue/%s/%s' % (d, sub),
                                        'not a split subdirectory'))
                continue
            for name in _listdir(os.path.join(qdir, d, sub)):
                one(d, sub, name)
    for d in FLATDIRS:
        for name in _listdir(os.path.join(qdir, d)):
            one(d, None, name)
    return ids, problems


def scan_pid(qdir: str, now: float) -> list:
    out = []
    for name in _listdir(os.path.join(qdir, 'pid')):
        try:
            st = os.lstat(os.path.join(qdir, 'pid', name))
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            out.append(Problem('stray', 'queue/pid/' + name, 'not a file qmail-queue makes'))
        elif now >= st.st_atime + OSSIFIED:
            out.append(Problem('pid-stale', 'queue/pid/' + name,
                               'left by a dead qmail-queue', 'remove'))
    return out


def check_queue(qdir: str, split: int, now: float, uids=None) -> list:
    """Every problem of the queue in qdir, each seen twice.  A message with
    a file in the wrong split subdirectory is judged only once that file
    is in its place (fsck -r moves it, then looks again)."""
    ids, problems = scan_names(qdir, split, uids)
    ids -= {p.messid for p in problems if p.kind == 'misplaced'}
    suspects = {}
    for messid in sorted(ids):
        found = judge(messid, look_at(qdir, messid, split), split, now)
        if found:
            suspects[messid] = found
    for messid, found in suspects.items():
        again = set(judge(messid, look_at(qdir, messid, split), split, now))
        problems.extend(p for p in found if p in again)
    problems.extend(scan_pid(qdir, now))
    return problems


def check_tree(home: str, hier, split: int, uids: dict, gids: dict) -> list:
    """The home's tree against qmail-install's table: types, owners, modes."""
    out = []
    want_type = {'d': stat.S_ISDIR, 's': stat.S_ISDIR, 'z': stat.S_ISREG,
                 'p': stat.S_ISFIFO}
    for kind, what, owner, group, mode in hier:
        name = what[0] if kind == 'z' else what
        paths = [name]
        if kind == 's':
            paths += [os.path.join(name, str(i)) for i in range(split)]
        for rel in paths:
            full = os.path.join(home, rel) if rel else home
            label = rel or '.'
            try:
                # (HOME/queue may be root's link to another disk: what it
                # names is checked; any other link is a wrong type)
                st = os.stat(full) if rel == 'queue' and root_made_link(full) else os.lstat(full)
            except FileNotFoundError:
                out.append(Problem('missing', label, 'not there', 'create'))
                continue
            if not want_type[kind](st.st_mode):
                # (a lock/ FIFO holds nothing: a file or link there is
                # replaced by one, as qmail-install does)
                out.append(Problem('type', label, 'wrong file type',
                                   'create' if kind == 'p' and not stat.S_ISDIR(st.st_mode)
                                   else ''))
                continue
            if (st.st_uid, st.st_gid) != (uids[owner], gids[group]):
                out.append(Problem('owner', label, 'owner %d:%d, want %s:%s'
                                   % (st.st_uid, st.st_gid, owner, group),
                                   'chown'))
            if stat.S_IMODE(st.st_mode) != mode:
                out.append(Problem('mode', label, 'mode %04o, want %04o'
                                   % (stat.S_IMODE(st.st_mode), mode),
                                   'chmod'))
    return out


# ---- I/O: repairs -----------------------------------------------------------

class Repairer:
    """-r: each repair re-checks what it acts on, and never deletes mail."""

    def __init__(self, home, hier, split, uids, gids, now, say):
        self.home = home
        self.qdir = os.path.join(home, 'queue')
        self.hier = {(e[1][0] if e[0] == 'z' else e[1]): e for e in hier}
        self.hier['.'] = self.hier['']         # the home, as check_tree shows it
        self.split = split
        self.uids, self.gids = uids, gids
        self.now = now
        self.say = say
        self.quarantined = set()

    def repair(self, problem, problems) -> bool:
        action = getattr(self, 'do_' + problem.repair, None)
        if action is None:
            return False
        try:
            return action(problem, problems)
        except OSError as err:
            self.say('unable to repair %s: %s' % (problem.path, err.strerror))
            return False

    def _at(self, rel):
        """(descriptor of rel's directory, rel's last name): each directory
        below the home opened without following a link (qmail's users own
        queue/ and what is in it: a link they plant must not take root
        elsewhere), but for HOME/queue itself when root made it a link
        (the queue on another disk).  The caller closes the descriptor."""
        parts = rel.split('/')
        fd = os.open(self.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts[:-1]):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                if not (i == 0 and root_made_link(os.path.join(self.home, part))):
                    flags |= os.O_NOFOLLOW
                nfd = os.open(part, flags, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def _fix(self, rel, uid, gid, mode):
        """chown (uid or gid -1: kept) and chmod (None: kept) of rel itself,
        through a descriptor opened without following a link."""
        dfd, name = self._at(rel)
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
        if not (rel == 'queue' and root_made_link(os.path.join(self.home, rel))):
            flags |= os.O_NOFOLLOW      # (HOME/queue may be root's link elsewhere)
        try:
            fd = os.open(name, flags, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            # A file with a link elsewhere (one a qmail user made to a file
            # of root's, where the kernel lets them) is not given away;
            # todo/N and intd/N share theirs, as qmail-queue makes them:
            # a second link is let be only where it is that partner.
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and not (
                    st.st_nlink == 2 and self._partner_is(rel, st)):
                raise OSError(errno.EMLINK, '%s has %d links: not changed'
                              % (rel, st.st_nlink))
            os.fchown(fd, uid, gid)
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def _partner_is(self, rel, st) -> bool:
        """Is the other name of the file rel (st: its fstat) its todo/ or
        intd/ partner, queue/intd/N for queue/todo/N and the reverse?"""
        parts = rel.split('/')
        if len(parts) < 3 or parts[0] != 'queue' or parts[1] not in ('todo', 'intd'):
            return False
        parts[1] = 'intd' if parts[1] == 'todo' else 'todo'
        try:
            dfd, name = self._at('/'.join(parts))
        except OSError:
            return False
        try:
            other = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return False
        finally:
            os.close(dfd)
        return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)

    def _unlink(self, rel):
        dfd, name = self._at(rel)
        try:
            os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)

    def _link(self, src_rel, dst_dir_fd, dst_name):
        """Link queue file src_rel (the link itself, never what it names)."""
        dfd, name = self._at(src_rel)
        try:
            os.link(name, dst_name, src_dir_fd=dfd, dst_dir_fd=dst_dir_fd,
                    follow_symlinks=False)
        finally:
            os.close(dfd)

    def _tree_entry(self, rel):
        entry = self.hier.get(rel)
        if entry is None:               # a split subdirectory
            entry = self.hier[os.path.dirname(rel)]
        return entry

    def do_chown(self, problem, problems):
        if problem.kind == 'file-owner':
            # (its group too: the writer's, qmail, as it made the file)
            d = problem.path.split('/')[1]
            self._fix(problem.path, self.uids[QUEUE_FILE_OWNER[d]],
                      self.gids.get('qmail', -1), None)
            return True
        _, _, owner, group, mode = self._tree_entry(problem.path)
        # (the mode after: chown may clear set-id bits)
        self._fix(problem.path, self.uids[owner], self.gids[group], mode)
        return True

    def do_chmod(self, problem, problems):
        if problem.kind == 'file-mode':
            d = problem.path.split('/')[1]
            mode = QUEUE_FILE_MODE[d]
            if d in ('local', 'remote'):
                try:            # (qmail-qhold's hold mark stays)
                    st = os.lstat(os.path.join(self.home, problem.path))
                    mode |= st.st_mode & stat.S_ISVTX
                except OSError:
                    pass
            self._fix(problem.path, -1, -1, mode)
            return True
        self._fix(problem.path, -1, -1, self._tree_entry(problem.path)[4])
        return True

    def do_create(self, problem, problems):
        from qmail import install
        kind, what, owner, group, mode = self._tree_entry(problem.path)
        uid, gid = self.uids[owner], self.gids[group]
        full = os.path.join(self.home, problem.path)
        if kind == 'z':
            install.make_zero_file(full, what[1], uid, gid, mode)
        elif kind == 'p':
            install.make_fifo(full, uid, gid, mode)
        else:
            install.make_dir(full, uid, gid, mode)
        return True

    def do_move(self, problem, problems):
        """A file in the wrong split subdirectory goes to its own."""
        d = problem.path.split('/')[1]
        src = os.path.join(self.home, problem.path)
        dst = os.path.join(self.qdir, qfn(d, problem.messid, self.split))
        if os.path.lexists(dst):
            self.say('unable to repair %s: %s exists' % (problem.path, dst))
            return False
        ddfd, dname = self._at(os.path.relpath(dst, self.home))
        try:
            self._link(problem.path, ddfd, dname)
        finally:
            os.close(ddfd)
        durable.fsync_dir(os.path.dirname(dst))
        self._unlink(problem.path)
        durable.fsync_dir(os.path.dirname(src))
        return True

    def still(self, problem) -> bool:
        """Whether a message's problem is there at one more look."""
        return problem in judge(problem.messid,
                                look_at(self.qdir, problem.messid, self.split),
                                self.split, self.now)

    def do_remove(self, problem, problems):
        """What qmail-send and qmail-clean would remove: seen again first."""
        if problem.kind == 'pid-stale':
            full = os.path.join(self.home, problem.path)
            st = _lstat(full)
            if st is None or self.now < st[1] + OSSIFIED:
                return False
            self._unlink(problem.path)
            return True
        if not self.still(problem):
            return False
        # intd before mess, as qmail-clean (S3 -> S2 -> S1).
        for d in ('intd', 'mess'):
            if problem.kind == 'intd-without-mess' and d == 'mess':
                break
            try:
                self._unlink('queue/' + qfn(d, problem.messid, self.split))
            except FileNotFoundError:
                pass
        return True

    def do_quarantine(self, problem, problems):
        """Move every file of the message to queue/fsck/<messid>.<time>/,
        each by link, fsync, unlink: never a moment without a copy."""
        messid = problem.messid
        if messid in self.quarantined:
            return True
        if not self.still(problem):
            return False
        self.quarantined.add(messid)
        base = os.path.join(self.qdir, QUARANTINE)
        # queue/ is qmailq's: a link planted there, or swapped in between
        # two steps, must not have root make directories and put mail
        # where it points.  Each step is relative to a directory opened
        # without following a link.
        qfd, name = self._at(os.path.relpath(base, self.home))
        try:
            try:
                os.mkdir(name, 0o700, dir_fd=qfd)
            except FileExistsError:
                pass
            else:
                os.fsync(qfd)
            basefd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                             | os.O_CLOEXEC, dir_fd=qfd)
        finally:
            os.close(qfd)
        try:
            if os.fstat(basefd).st_uid != 0:
                import errno
                raise OSError(errno.ENOTDIR, '%s is not root\'s directory' % base)
            dname = '%d.%d' % (messid, self.now)
            dest = os.path.join(base, dname)
            os.mkdir(dname, 0o700, dir_fd=basefd)
            os.fsync(basefd)
            destfd = os.open(dname, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                             | os.O_CLOEXEC, dir_fd=basefd)
        finally:
            os.close(basefd)
        moved = []
        envelope = b''
        try:
            for d in ('todo', 'intd', 'info', 'local', 'remote', 'bounce', 'mess'):
                src = os.path.join(self.qdir, qfn(d, messid, self.split))
                st = os.lstat(src) if os.path.lexists(src) else None
                if st is None or not stat.S_ISREG(st.st_mode):
                    continue
                rel = os.path.relpath(src, self.home)
                self._link(rel, destfd, d)
                if d in ('todo', 'intd') and not envelope:
                    envelope = _read(os.path.join(dest, d), st.st_ino) or b''
                moved.append((d, src))
            os.fsync(destfd)
            for d, src in moved:
                self._unlink(os.path.relpath(src, self.home))
                durable.fsync_dir(os.path.dirname(src))
            mine = [p for p in problems if p.messid == messid]
            report = ['qmail-fsck moved message %d here at %s.' % (
                messid, time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(self.now))),
                'Problems:'] + ['  ' + str(p) for p in mine] + ['Files:'] + [
                '  %s <- queue/%s' % (d, os.path.relpath(src, self.qdir))
                for d, src in moved]
            if envelope:
                report += ['Envelope:'] + ['  ' + line for line in
                                           envelope_text(envelope).split('\n')]
            fd = os.open('REPORT', os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=destfd)
            try:
                durable.write_all(fd, ('\n'.join(report) + '\n').encode())
                durable.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(destfd)
        finally:
            os.close(destfd)
        self.say('moved message %d to queue/%s/%s' % (
            messid, QUARANTINE, os.path.basename(dest)))
        return True


# ---- main ---------------------------------------------------------------------

def planted(qdir: str, split: int) -> list:
    """The queue's directories (and split subdirectories) that are there
    but not directories of their own: links qmail's users may have made,
    through which a check would read, and a repair change, files of
    root's anywhere."""
    bad = []
    for d in sorted(set(SPLITDIRS) | set(FLATDIRS) | {'pid', 'lock', QUARANTINE}):
        path = os.path.join(qdir, d)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            bad.append('queue/' + d)
            continue
        if d in SPLITDIRS:
            for sub in os.listdir(path):
                if not stat.S_ISDIR(os.lstat(os.path.join(path, sub)).st_mode) \
                        and parse_messid(sub) is not None and int(sub) < split:
                    bad.append('queue/%s/%s' % (d, sub))
    return bad


def fsck(home, hier, split, uids, gids, now, flagrepair, say) -> int:
    """Check (and repair) one home; returns the exit code."""
    qdir = os.path.join(home, 'queue')
    if not os.path.isdir(qdir) or (os.path.islink(qdir) and not root_made_link(qdir)):
        say('fatal: no queue at %s' % qdir)
        return 111
    bad = planted(qdir, split)
    if bad:
        for rel in bad:
            say('fatal: %s is not a directory of its own (a link?): '
                'nothing checked or repaired' % rel)
        return 111
    problems = check_tree(home, hier, split, uids, gids)
    problems += check_queue(qdir, split, now, uids)
    for p in problems:
        say(shown(p))
    if flagrepair and problems:
        # Messages go out of qmail-send's way only while it is stopped: one
        # taken from under it stays a job in its memory, "trouble opening"
        # logged at every retry until a restart.  The mutex is held
        # through the repairs, so that it does not start meanwhile.
        mutex = hold_sendmutex(qdir)
        try:
            fixer = Repairer(home, hier, split, uids, gids, now, say)
            # The tree first: the queue's repairs need its directories.
            moved = repair_all(fixer, problems, say, mutex is not None)
            again = []
            if moved:
                # Files back in their split subdirectory: judge their messages.
                again = [p for p in check_queue(qdir, split, now, uids)
                         if p.messid in moved and p.kind not in ('file-owner', 'file-mode')]
                for p in again:
                    say(shown(p))
                repair_all(fixer, again, say, mutex is not None)
            if mutex is None and any(p.repair == 'quarantine' for p in problems + again):
                say('qmail-send may be running (lock/sendmutex held, missing or not a '
                    'file): nothing was moved to queue/%s; stop it, then run '
                    'qmail-fsck -r again' % QUARANTINE)
        finally:
            if mutex is not None:
                os.close(mutex)
    return 1 if problems else 0


def hold_sendmutex(qdir: str):
    """queue/lock/sendmutex locked (a descriptor), or None while qmail-send
    holds it, and whenever that cannot be told: a mutex missing (perhaps
    unlinked under a running qmail-send; -r makes it, and the next run
    can move messages), not a regular file, or not to be opened.  Opened
    without following a link or waiting (lock/ is qmailq's)."""
    from qmail.send import lock_mutex
    try:
        return lock_mutex(os.path.join(qdir, 'lock', 'sendmutex'))
    except OSError:
        return None


def shown(p) -> str:
    """A problem as reported: what -r would do is the plan."""
    return str(p) + (' (-r: %s)' % p.repair if p.repair else '')


def repair_all(fixer, problems, say, may_quarantine=True) -> set:
    """Repair in order; the numbers of the messages whose files moved.
    Without may_quarantine (qmail-send runs) a quarantine is not done:
    such problems are said not repaired."""
    moved = set()
    for p in problems:
        if p.repair == 'quarantine' and not may_quarantine:
            say('not repaired: ' + str(p))
            continue
        if fixer.repair(p, problems):
            if p.repair == 'move':
                moved.add(p.messid)
            if p.repair != 'quarantine':
                say('repaired %s: %s' % (p.path, p.repair))
        elif p.repair:
            say('not repaired: ' + str(p))
    return moved


def usage(say) -> int:
    say('usage: qmail-fsck [-r] [-q] [home]')
    return 100


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    flagrepair = flagquiet = False
    args = list(argv)
    while args and args[0].startswith('-') and args[0] != '-':
        opt = args.pop(0)
        if opt == '--':
            break
        for ch in opt[1:]:
            if ch == 'r':
                flagrepair = True
            elif ch == 'q':
                flagquiet = True
            else:
                return usage(say_line)
    if len(args) > 1:
        return usage(say_line)
    home = args[0] if args else auto.QMAIL
    if os.geteuid() != 0:
        say_line('fatal: must be run as root')
        return 111
    from qmail import install
    try:
        uids, gids = install.lookup_ids()
    except KeyError as err:
        say_line('fatal: no such user or group: %s' % err)
        return 111
    try:
        code = fsck(home, install.HIER, auto.SPLIT, uids, gids, time.time(),
                    flagrepair, say_line)
    except OSError as err:
        say_line('fatal: %s: %s' % (err.filename or home, err.strerror))
        return 111
    if not flagquiet:
        say_line('%s: %s' % (home, 'clean' if code == 0 else
                             'problems found' if code == 1 else 'not checked'))
    return code


_SAFE = {c: '?' for c in list(range(32)) + [127]}


def say_line(text: str) -> None:
    """One line of output: a name qmailq made in the queue cannot forge
    lines nor send escape sequences to root's terminal (controls become
    '?'; bytes that are not UTF-8 come out escaped, never raise)."""
    text = text.translate(_SAFE).encode('utf-8', 'backslashreplace')
    sys.stdout.buffer.write(b'qmail-fsck: %s\n' % text)
    sys.stdout.flush()


def run():
    guard_stdout()               # a full disk or closed fd 1: one line, 111
    try:
        code = main()
    except OSError as err:       # stdout itself, most likely (a full disk)
        try:
            os.write(2, b'qmail-fsck: fatal: unable to write: %s\n' % error_str(err))
        except OSError:
            pass
        code = 111
    except Exception as err:     # last resort: never a traceback, never 1
        try:
            say_line('fatal: internal error: %s' % type(err).__name__)
        except OSError:
            pass
        code = 111
    exit_flushed(code, 'qmail-fsck')


if __name__ == '__main__':
    run()
