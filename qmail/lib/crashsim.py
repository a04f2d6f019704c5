"""Crashes on purpose: stop a process, or cut its power, after step k.

A Recorder watches every durable step of qmail.lib.durable through its
hooks and numbers them 1, 2, ...  It can end the process right after
step k in one of two ways:

  stop      os._exit(STOP_EXIT): the process dies, the disk keeps
            everything the kernel was told (a kill -9, a crashed
            program);
  powercut  first undo everything that was not yet made durable, then
            os._exit(POWERCUT_EXIT): the machine lost power.

The power cut follows what Linux promises and nothing more.  A file's
content is durable once fsynced: bytes written since its last fsync go
back to what they were then (a snapshot taken before the first write
since that fsync; a new file goes back to empty).  A directory's entries
are durable once the directory is fsynced (fsync_dir): names created,
linked, renamed or unlinked in it since then go back to what they named
then (an entry about to be unlinked or replaced is first stashed by a
hard link in the stash directory, so it can be restored).  Every
directory goes back on its own, all of it: the worst case for each.  A
file made without a name (create_anon) and fsynced before it was linked
has "no link" in its inode on disk until an fsync after the link: its
names go (as ext4 without a journal, and its fsck, would have it).
syncfs makes all of a filesystem durable, every file and directory.  A
real disk may also keep some of what was not yet durable (ext4 commits
its journal in order, every few seconds), so states between "all kept"
(stop) and "none kept" (powercut) exist too; they are not tried.

Installed by code only, never from the environment, so no caller of a
privileged program can reach it: qmail-crashtest installs it in its
forked children.  Files written other than through qmail.lib.durable are
invisible to it; that is why every queue and mailbox write goes there.
"""

import os
import stat

from qmail.lib import durable

STOP_EXIT = 86          # the child stopped after step k, as planned
POWERCUT_EXIT = 87      # the child lost power after step k, as planned
SNAPSHOT_MAX = 1 << 22  # bigger files are not snapshot: a simulation of
                        # mail-sized files, not of a disk

STOP, POWERCUT = 'stop', 'powercut'
CONTENT_STEPS = ('write', 'pwrite', 'truncate')


class CrashSimError(Exception):
    """The simulation cannot model this step (a file too big, say)."""


class Step(tuple):
    """One durable step as it happened: (number, name, path, inode)."""

    __slots__ = ()

    def __new__(cls, number, name, path, inode):
        return tuple.__new__(cls, (number, name, path, inode))

    number = property(lambda self: self[0])
    name = property(lambda self: self[1])
    path = property(lambda self: self[2])
    inode = property(lambda self: self[3])

    def __str__(self):
        return '%d %s %s%s' % (self.number, self.name, self.path,
                               '' if self.inode is None else ' #%d' % self.inode)


def _str(path) -> str:
    return os.fsdecode(path)


def _fdpath(fd: int) -> str:
    try:
        return os.readlink('/proc/self/fd/%d' % fd)
    except OSError:
        return 'fd %d' % fd


class Recorder:
    """Numbers the durable steps; undoes what is not durable on demand.

    crash_at: the step after which to crash (None: never; the caller may
    still call crash() itself, at the end of a scenario).  mode: STOP or
    POWERCUT.  stashdir: a directory on the same filesystem as the files
    watched, for the hard links that keep unlinked entries.
    """

    def __init__(self, stashdir, crash_at=None, mode=STOP):
        if mode not in (STOP, POWERCUT):
            raise ValueError('mode must be %r or %r' % (STOP, POWERCUT))
        self.stashdir = os.path.abspath(_str(stashdir))
        self.crash_at = crash_at
        self.mode = mode
        self.steps = []
        # (dev, ino) -> (descriptor open for reading and writing, bytes
        # at the last fsync): the files written since their last fsync.
        self.dirty = {}
        # real directory path -> {name: stashed path, or None for "no
        # such entry"}: what each entry named at the directory's last
        # fsync, for the entries changed since.
        self.entries = {}
        self.nstash = 0
        self.names = {}         # inode -> the last path a step gave it
        # (dev, ino) -> [paths linked since]: files fsynced while they had
        # no name (create_anon), their inode on disk saying "no link"
        # until an fsync of theirs after the link (see powercut).
        self.nameless = {}
        self._old = None

    # -- installing -----------------------------------------------------------
    def install(self):
        self._old = (durable.hook, durable.after)
        durable.hook = self.before
        durable.after = self.done

    def uninstall(self):
        if self._old is not None:
            durable.hook, durable.after = self._old
            self._old = None

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, *exc):
        self.uninstall()
        return False

    # -- the hooks ------------------------------------------------------------
    def before(self, name, target):
        """Before a step: remember what it may take back."""
        if name in CONTENT_STEPS:
            self._snapshot(target)
        elif name == 'create' or name == 'link' or name == 'unlink':
            self._touch(target)
        elif name == 'open_append':
            if not os.path.lexists(target):
                self._touch(target)
        elif name == 'rename':
            src, dst = target
            self._touch(src)
            self._touch(dst)

    def done(self, name, target):
        """After a step: count it, make durable what it made durable,
        and crash if this was step crash_at."""
        if name in ('create', 'create_anon'):
            try:                        # an inode number used again: a new file
                st = os.fstat(target) if isinstance(target, int) else os.lstat(target)
                self.nameless.pop((st.st_dev, st.st_ino), None)
            except OSError:
                pass
        if name == 'fsync':
            self._synced(target)
        elif name == 'fsync_dir':
            self._dir_synced(target)
        elif name == 'syncfs':
            self._fs_synced(target)
        elif name == 'link':
            try:
                st = os.lstat(target)
            except OSError:
                pass
            else:
                linked = self.nameless.get((st.st_dev, st.st_ino))
                if linked is not None:
                    linked.append(os.path.abspath(_str(target)))
        self.steps.append(self._describe(len(self.steps) + 1, name, target))
        if self.crash_at is not None and len(self.steps) == self.crash_at:
            self.crash()

    def _describe(self, number, name, target):
        if isinstance(target, int):
            try:
                inode = os.fstat(target).st_ino
            except OSError:
                return Step(number, name, _fdpath(target), None)
            # By the name a step gave the file, if it still has it: the
            # descriptor may name a link since removed (pid/ -> mess/).
            path = self.names.get(inode)
            try:
                if path is None or os.lstat(path).st_ino != inode:
                    path = _fdpath(target)
            except OSError:
                path = _fdpath(target)
            return Step(number, name, path, inode)
        if isinstance(target, tuple):
            src, dst = target
            path = '%s -> %s' % (os.path.abspath(_str(src)),
                                 os.path.abspath(_str(dst)))
            target = dst
        else:
            path = os.path.abspath(_str(target))
        try:
            inode = os.lstat(target).st_ino
        except OSError:
            inode = None
        else:
            self.names[inode] = os.path.abspath(_str(target))
        return Step(number, name, path, inode)

    # -- file contents ----------------------------------------------------------
    def _snapshot(self, fd):
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in self.dirty:
            return
        if not stat.S_ISREG(st.st_mode):
            return
        if st.st_size > SNAPSHOT_MAX:
            raise CrashSimError('%s: %d bytes, too big to snapshot'
                                % (_fdpath(fd), st.st_size))
        # The step's descriptor may be write-only: open the file anew.
        rw = os.open('/proc/self/fd/%d' % fd, os.O_RDWR | os.O_CLOEXEC)
        chunks = []
        pos = 0
        while True:
            chunk = os.pread(rw, 65536, pos)
            if not chunk:
                break
            chunks.append(chunk)
            pos += len(chunk)
        self.dirty[key] = (rw, b''.join(chunks))

    def _synced(self, fd):
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        entry = self.dirty.pop(key, None)
        if entry is not None:
            os.close(entry[0])
        if st.st_nlink == 0:
            self.nameless[key] = []
        else:
            self.nameless.pop(key, None)

    # -- directory entries --------------------------------------------------------
    def _where(self, path):
        path = os.path.abspath(_str(path))
        return os.path.realpath(os.path.dirname(path)), os.path.basename(path)

    def _touch(self, path):
        """Before an entry changes: remember what it names now, unless it
        changed already since its directory's last fsync."""
        d, name = self._where(path)
        changed = self.entries.setdefault(d, {})
        if name in changed:
            return
        full = os.path.join(d, name)
        if os.path.lexists(full):
            self.nstash += 1
            kept = os.path.join(self.stashdir, '%d' % self.nstash)
            os.link(full, kept, follow_symlinks=False)
            changed[name] = kept
        else:
            changed[name] = None

    def _dir_synced(self, path):
        changed = self.entries.pop(os.path.realpath(os.path.abspath(_str(path))), None)
        for kept in (changed or {}).values():
            if kept is not None:
                try:
                    os.unlink(kept)
                except OSError:
                    pass

    # -- the whole filesystem ------------------------------------------------------
    def _fs_synced(self, fd):
        """syncfs: every file and directory on fd's filesystem durable.  A
        file with no name yet has its inode written so ("no link")."""
        dev = os.fstat(fd).st_dev
        for key in [k for k in self.dirty if k[0] == dev]:
            rw, _ = self.dirty.pop(key)
            nlink = os.fstat(rw).st_nlink
            os.close(rw)
            if nlink == 0:
                self.nameless[key] = []
        for key in [k for k, linked in self.nameless.items() if k[0] == dev and linked]:
            del self.nameless[key]      # linked since: its inode now says so
        for d in list(self.entries):
            try:
                if os.stat(d).st_dev != dev:
                    continue
            except OSError:
                pass
            self._dir_synced(d)

    # -- the crash ----------------------------------------------------------------
    def crash(self):
        """End the process now, as mode says."""
        if self.mode == POWERCUT:
            self.powercut()
            os._exit(POWERCUT_EXIT)
        os._exit(STOP_EXIT)

    def powercut(self):
        """Take back everything not yet durable (without exiting: tests of
        the simulation itself call this)."""
        for rw, data in self.dirty.values():
            os.ftruncate(rw, 0)
            if data:
                os.pwrite(rw, data, 0)
            os.close(rw)
        self.dirty = {}
        for d, changed in self.entries.items():
            for name, kept in changed.items():
                full = os.path.join(d, name)
                try:
                    os.unlink(full)
                except FileNotFoundError:
                    pass
                except IsADirectoryError:
                    continue
                if kept is not None:
                    os.link(kept, full, follow_symlinks=False)
                    os.unlink(kept)
        self.entries = {}
        # A file last fsynced without a name has "no link" in its inode
        # on disk (ext4 without a journal keeps that; a directory's fsync
        # writes the entry, not the inode): fsck clears the entries that
        # name it, the ones just brought back too, and the file is gone.
        for linked in self.nameless.values():
            for path in linked:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self.nameless = {}
