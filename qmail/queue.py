"""qmail-queue: put one message into the queue.

Runs as:  qmailq (setuid, through the launcher bin/qmail-queue), with the
          caller's real uid; cwd HOME/queue.
Reads:    fd 0, the message; then fd 1, the envelope: F sender NUL,
          T recipient NUL for each recipient, then one more NUL.
Writes:   mess/<split>/<messid>, the message (messid is the file's
          inode), first made nameless (Linux O_TMPFILE) or, where the
          system cannot, as pid/<pid>.<time>.<seq> renamed by link;
          intd/<messid> holding u<uid>, p<pid> and the envelope, named
          once written, before its fsync (or made at once, the same
          way); todo/<messid> as a link to it; then pulls lock/trigger
          to wake qmail-send.  Durable before the todo/ link: both files
          and mess/ (fsync of each, or one syncfs of the filesystem,
          shared by writers that wait at once: a group commit on
          lock/syncfs); todo/ fsynced before exit 0.
Exits:    0 queued; 11 address too long; 31 envelope over ENVELOPEMAX
          bytes (not qmail, which has no limit: qmail-send holds a new
          message's envelope whole, at some 26 times its size, and any
          local user may queue one); 51 out of memory; 52 timeout;
          53 write error; 54 read error; 61 home; 62 queue; 63 pid/;
          64 mess/; 65 intd/; 66 todo/; 81 internal bug; 91 bad envelope.
          Prints nothing: the exit code is the whole answer.
Trusts:   nobody: the caller controls the bytes of message and envelope,
          which are copied, never interpreted, beyond the envelope's
          framing and the address length limit.
See:      qmail-queue(8); INTERNALS.md "How messages enter the queue".

The same writer, enqueue(), serves the setuid command and any process
already running as qmailq with the code loaded that forks one writer per
message (no interpreter start per message).

Every failure after the mess file exists and before the todo/ link
truncates and removes what this process made, so a failed injection
leaves no file in mess/, intd/ or todo/.  A failure to flush todo/ after
the link (exit 53) leaves the message queued: qmail-send delivers it, and
a sender that retries makes a duplicate, never a loss.  A pid/ file left by a crash is qmail-clean's to sweep (a
nameless file goes with the process).  The timeout (DEATH) exits
without cleaning: a stuck qmail-queue must not race qmail-send, which
cleans such files once they are OSSIFIED.
"""

import fcntl
import os
import sys
import time

# The C module under `signal`: importing `signal` pulls in enum, a third
# of this program's start-up time.
import _signal as signal

from qmail.lib import auto, durable
from qmail.lib.date822 import date822
from qmail.lib.qfile import pidfn, qfn

DEATH = 86400        # 24 hours; must stay below qmail-send's OSSIFIED (36 h)
ADDR = 1003          # an address with its NUL must fit in this many bytes
ENVELOPEMAX = 8 << 20  # bytes of envelope: some 200,000 recipients
BUFSIZE = 65536
PIDTRIES = 9         # pid/ names tried before giving up (63)
MESS_TRIES = 9       # nameless files whose inode names a message already
                     # there (a restored queue), before giving up (64)
SYNC_GROUP = 'lock/syncfs'  # writers share their syncfs (durable's group commit)


class QueueExit(Exception):
    """Stop with qmail-queue exit code self.code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def received_line(pid: int, uid: int, now: float, uids: dict) -> bytes:
    """qmail-queue's Received line: who invoked it, and when."""
    if uid == uids['alias']:
        who = b'by alias'
    elif uid == uids['daemon']:
        who = b'from network'
    elif uid == uids['send']:
        who = b'for bounce'
    else:
        who = b'by uid %d' % uid
    return b'Received: (qmail %d invoked %s); %s\n' % (pid, who, date822(now))


class EnvelopeParser:
    """Checks the envelope's framing as it streams past.

    feed() takes raw bytes and returns the bytes to append to intd; done
    is set once the terminating NUL has been seen.  Raises QueueExit(91)
    for a bad tag, QueueExit(11) for an address of ADDR bytes or more
    and QueueExit(31) past ENVELOPEMAX bytes.
    """

    def __init__(self, limit: int = ENVELOPEMAX):
        self.pending = bytearray()
        self.flagsender = True     # the next record must be F
        self.done = False
        self.left = limit

    def feed(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            raise QueueExit(31)
        pending = self.pending
        pending += data
        out = bytearray()
        pos = 0
        while pos < len(pending) and not self.done:
            tag = pending[pos]
            if self.flagsender:
                if tag != 0x46:            # F
                    raise QueueExit(91)
            elif tag == 0:
                self.done = True
                pos += 1
                break
            elif tag != 0x54:              # T
                raise QueueExit(91)
            end = pending.find(b'\0', pos + 1, pos + 1 + ADDR)
            if end == -1:
                if len(pending) - pos - 1 >= ADDR:
                    raise QueueExit(11)
                break                      # the record continues in the next read
            out += pending[pos:end + 1]
            self.flagsender = False
            pos = end + 1
        del pending[:pos]
        return bytes(out)


def read_some(fd: int, client=None) -> bytes:
    """Up to BUFSIZE bytes of fd.  client (qmail-queued's writers): a
    poll of fd and of the connection of the process that handed fd over
    (client_watch), waited on until fd has something: once that
    connection is gone, nobody waits for this injection's answer, and
    fd may never end (it handed over both ends of one pipe, and the
    writer itself holds the write end), so the injection ends there
    (54), freeing the writer, not at DEATH a day later.  As C
    qmail-queue, whose caller's end is its own."""
    if client is not None:
        fds = dict(client.poll())      # waits for fd or the client
        if fds.get(fd, 0) == 0:
            raise QueueExit(54)         # the client's socket is closed
    try:
        return os.read(fd, BUFSIZE)
    except OSError:
        raise QueueExit(54) from None


def client_watch(msgfd: int, envfd: int, conn: int):
    """For read_some: a poll of the descriptor read, for input, and of
    conn for its hang-up alone (registered for no event: POLLHUP comes
    when the client's socket is closed whole; a half-close, shutdown of
    its writing side, is no hang-up, nor anything it sends)."""
    import select
    watches = []
    for fd in (msgfd, envfd):
        p = select.poll()
        p.register(fd, select.POLLIN)
        p.register(conn, 0)
        watches.append(p)
    return watches


class Writer:
    """The files one injection makes, so that a failure removes them."""

    def __init__(self, split: int):
        self.split = split
        self.messfn = self.intdfn = None
        self.messfd = self.intdfd = -1

    def cleanup(self):
        """Undo this injection: intd first, then mess (S3 -> S2 -> S1)."""
        for fd, fn in ((self.intdfd, self.intdfn), (self.messfd, self.messfn)):
            if fn is None:
                continue
            try:
                durable.truncate(fd, 0)
            except OSError:
                pass
            try:
                durable.unlink(fn)
            except OSError:
                break
        self.close()

    def close(self):
        """Let go of the files (qmail-queued's writers live on)."""
        for fd in (self.messfd, self.intdfd):
            if fd != -1:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.messfd = self.intdfd = -1

    def anon_dir(self, pid: int, which: int) -> str:
        """Where a nameless file takes its inode: a mess/ subdirectory
        picked by pid (which: 0 the message, 1 the envelope), so that
        writers' files spread over the filesystem's block groups as the
        split subdirectories do (see qmail-install's spread_subdirs)."""
        return 'mess/%d' % ((pid + which * (self.split // 2 + 1)) % self.split)

    def create_anon(self, pid: int, which: int):
        """A nameless file for the message (which 0) or envelope (1), or
        None where the system has no such files (qmail's way, then)."""
        if anon_usable():
            try:
                return durable.create_anon(self.anon_dir(pid, which))
            except OSError:
                pass
        return None

    def pidopen(self, pid: int, starttime: int) -> str:
        for seq in range(1, PIDTRIES + 1):
            fn = pidfn(pid, starttime, seq)
            try:
                self.messfd = durable.create_excl(fn)
                return fn
            except OSError:
                continue
        raise QueueExit(63)

    def write(self, fd: int, data: bytes):
        try:
            durable.write_all(fd, data)
        except OSError:
            raise QueueExit(53) from None

    def syncdir(self, path: str):
        try:
            durable.fsync_dir(path)
        except OSError:
            raise QueueExit(53) from None

    def enqueue(self, msgfd: int, envfd: int, uid: int, pid: int,
                now: float, uids: dict, client: int = -1) -> int:
        received = received_line(pid, uid, now, uids)

        # S1: the message's file, nameless or pid/; its inode names the
        # message.  (When it was opened matters to the group commit.)
        # A message already named by that inode (a queue restored from a
        # backup, or copied: its files are not named by their inodes)
        # makes the link fail; qmail gives up (64), and while the
        # filesystem hands the same inode out again, every injection
        # would.  A nameless file there is kept open, so that its inode
        # stays taken, and another is made.
        busy = []
        try:
            while True:
                tmpfn = None
                before = time.monotonic_ns()
                fd = self.create_anon(pid, 0)
                if fd is None:
                    tmpfn = self.pidopen(pid, int(now))
                else:
                    self.messfd = fd
                opened = (before, time.monotonic_ns())
                try:
                    messid = os.fstat(self.messfd).st_ino
                except OSError:
                    raise QueueExit(63) from None
                # Locked while this writer lives, from before it has a
                # name in mess/: qmail-send's cleanup of files that look
                # abandoned (no todo/, 36 hours old by the clock: an NTP
                # step or a resumed VM makes every file look so) leaves a
                # locked one alone.  (A fresh inode: nobody else holds it.)
                try:
                    fcntl.flock(self.messfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    pass
                messfn = qfn('mess', messid, self.split)
                try:
                    if tmpfn is None:
                        durable.link_anon(self.messfd, messfn)
                    else:
                        durable.link(tmpfn, messfn)
                except FileExistsError:
                    if tmpfn is not None or len(busy) >= MESS_TRIES:
                        raise QueueExit(64) from None
                    busy.append(self.messfd)
                    self.messfd = -1
                    continue
                except OSError:
                    raise QueueExit(64) from None
                break
        finally:
            for fd in busy:
                os.close(fd)
        intdfn = qfn('intd', messid, self.split)
        todofn = qfn('todo', messid, self.split)
        self.messfn = messfn          # S2: from here on, failures clean up
        if tmpfn is not None:
            try:
                durable.unlink(tmpfn)
            except OSError:
                raise QueueExit(63) from None

        # The envelope's nameless file, made now where it can be: its
        # inode is allocated while the client is still sending, not after
        # the final "." (S3 begins only once it is named).
        early = self.create_anon(pid, 1) if tmpfn is None else None
        if early is not None:
            self.intdfd = early         # (closed with the rest on a failure)

        # The message: Received line, then fd 0 byte for byte.
        watchm, watche = (None, None) if client < 0 else client_watch(msgfd, envfd, client)
        buf = bytearray(received)
        while True:
            chunk = read_some(msgfd, watchm)
            if not chunk:
                break
            buf += chunk
            if len(buf) >= BUFSIZE:
                self.write(self.messfd, buf)
                buf.clear()
        self.write(self.messfd, buf)

        # S3: intd/ receives the envelope: named once written when its
        # file could be made nameless, else at once.
        fd = early if early is not None else self.create_anon(pid, 1)
        if fd is None:
            try:
                try:
                    fd = durable.create_excl(intdfn)
                except FileExistsError:
                    # Stale, as below: the inode naming it is our message's.
                    durable.unlink(intdfn)
                    fd = durable.create_excl(intdfn)
            except OSError:
                raise QueueExit(65) from None
            self.intdfn = intdfn
        self.intdfd = fd
        parser = EnvelopeParser()
        out = bytearray(b'u%d\0p%d\0' % (uid, pid))
        while not parser.done:
            chunk = read_some(envfd, watche)
            if not chunk:
                raise QueueExit(54)    # EOF before the final NUL
            out += parser.feed(chunk)
            if len(out) >= BUFSIZE:
                self.write(self.intdfd, out)
                out.clear()
        self.write(self.intdfd, out)
        # Named before its fsync: a nameless file's fsync writes its
        # inode with no link, and a link made afterwards reaches the disk
        # only with the directory (ext4 without a journal: fsck then
        # clears the entry, and the accepted message is gone).
        if self.intdfn is None:
            try:
                try:
                    durable.link_anon(self.intdfd, intdfn)
                except FileExistsError:
                    # Stale: this message's inode is ours, so an envelope
                    # named by it is of a message gone (a power cut can
                    # keep intd/ and lose mess/).  It goes; ours takes it.
                    durable.unlink(intdfn)
                    durable.link_anon(self.intdfd, intdfn)
            except OSError:
                raise QueueExit(65) from None
            self.intdfn = intdfn
        # Both files, and the message's link in mess/, durable before
        # todo/ names the message: all at once where the filesystem can
        # be synced whole (one cache flush), else each file (their
        # writeback started together, so the second fsync finds its work
        # done) and then mess/'s directory.
        failed, whole = durable.sync_files([self.messfd, self.intdfd], SYNC_GROUP, opened)
        if failed:
            raise QueueExit(53)
        if not whole:
            self.syncdir(os.path.dirname(messfn))

        # S4: the link in todo/ is the moment of acceptance.  From here
        # on the files are qmail-send's, which may be delivering them
        # already (a scan of todo/ may find the link at once): no failure
        # removes or truncates them.  The trigger is pulled after todo/'s
        # flush: pulled before, qmail-send's delivery flushed the Maildir
        # file while that flush was under way, and the one-session
        # latency rose from 1.74 to 2.22 ms.
        try:
            durable.link(intdfn, todofn)
        except OSError:
            raise QueueExit(66) from None
        self.messfn = self.intdfn = None
        try:
            durable.fsync_dir('todo')
        except OSError:
            # Not known to be durable: report failure.  The message is in
            # the queue all the same and will be delivered: the sender
            # retrying makes a duplicate, never a loss.
            triggerpull()
            raise QueueExit(53) from None
        self.close()
        triggerpull()
        return 0


_anon = None


def anon_usable() -> bool:
    """Can a nameless file be named here, through /proc/self/fd (a
    process may always use its own, set-uid or not)?"""
    global _anon
    if _anon is None:
        _anon = hasattr(os, 'O_TMPFILE') and os.path.isdir('/proc/self/fd')
    return _anon


def triggerpull():
    """Wake qmail-send through lock/trigger; nobody listening is fine."""
    try:
        fd = os.open('lock/trigger', os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, b'\0')
    except OSError:
        pass
    os.close(fd)


def queue_uids() -> dict:
    """The uids whose Received lines qmail words specially."""
    return {'alias': auto.uid(auto.USER_ALIAS),
            'daemon': auto.uid(auto.USER_DAEMON),
            'send': auto.uid(auto.USER_SEND)}


def inject(msgfd: int, envfd: int, uid: int, pid: int, now: float,
           uids: dict, split: int, client: int = -1) -> int:
    """Queue one message; cwd must be HOME/queue.  Returns the exit code.
    client: qmail-queued's connection to the caller (read_some)."""
    writer = Writer(split)
    try:
        return writer.enqueue(msgfd, envfd, uid, pid, now, uids, client)
    except QueueExit as e:
        writer.cleanup()
        return e.code
    except MemoryError:
        writer.cleanup()
        return 51
    except Exception:
        writer.cleanup()
        return 81


def die_timeout(signum, frame):
    os._exit(52)           # thou shalt not clean up here: see DEATH


# Ignored, as qmail-queue.c's sig_miscignore() and sig_pipeignore(): the
# caller may send them (a terminal's ^C or hangup reaches the whole
# foreground group), and one taken halfway would leave a partial file in
# mess/, or report a failure for a message already linked into todo/.
IGNORED = ('SIGPIPE', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGVTALRM', 'SIGPROF',
           'SIGXCPU', 'SIGXFSZ')


def main(argv=None) -> int:
    os.umask(0o033)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    for name in IGNORED:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal.signal(signal.SIGALRM, die_timeout)
    signal.alarm(DEATH)
    try:
        uids = queue_uids()
    except (KeyError, OSError):
        return 81
    try:
        os.chdir(auto.QMAIL)
    except OSError:
        return 61
    try:
        os.chdir('queue')
    except OSError:
        return 62
    return inject(0, 1, os.getuid(), os.getpid(), time.time(), uids, auto.SPLIT)


def run():
    try:
        code = main()
    except BaseException:
        code = 81
    sys.stdout = sys.stderr = None     # nothing left to flush on fd 1
    os._exit(code)


if __name__ == '__main__':
    run()
