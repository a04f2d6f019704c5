"""The spawn loop shared by qmail-lspawn and qmail-rspawn (qmail's spawn.c).

Reads:    fd 0, from qmail-send, one command per delivery: a slot number
          byte, then NUL-terminated the message's name under queue/mess
          ("split/messid"), the sender and the recipient.
Writes:   fd 1: first one byte, the number of slots (SPAWN); then per
          finished delivery the slot byte, the report (K, Z or D and its
          text) and a NUL.
Runs:     each delivery through the program's start(): qmail-rspawn
          forks a child of this process (the code already loaded: no
          interpreter start), qmail-lspawn hands it to a delivery worker.
          The delivery gets the message on fd 0 and a pipe on fds 1 and 2;
          whatever it writes there, with its exit status, becomes the
          report.
Exits:    0 when qmail-send closes fd 0 and every delivery has finished.

The parent holds the write end of each delivery's pipe until the child
has been reaped (or the worker has answered), so end-of-file on the pipe
means the status is known.
"""

import gc
import os
import select
import signal
import stat

SPAWN = 120          # conf-spawn: slots, also qmail-send's concurrency ceiling
MESSID_MAX = 100


class Slot:
    __slots__ = ('pid', 'fdin', 'fdout', 'wstat', 'output')

    def __init__(self, pid, fdin, fdout):
        self.pid, self.fdin, self.fdout = pid, fdin, fdout
        self.wstat = None
        self.output = bytearray()


class CommandParser:
    """Splits qmail-send's byte stream into (delnum, messid, sender, recip)."""

    def __init__(self):
        self.stage = 0
        self.fields = []
        self.buf = bytearray()
        self.delnum = 0

    def feed(self, data: bytes):
        out = []
        for byte in data:
            if self.stage == 0:
                self.delnum = byte
                self.fields = []
                self.buf = bytearray()
                self.stage = 1
                continue
            if byte:
                self.buf.append(byte)
                continue
            self.fields.append(bytes(self.buf))
            self.buf = bytearray()
            self.stage += 1
            if self.stage == 4:
                out.append((self.delnum, *self.fields))
                self.stage = 0
        return out


def check_messid(messid: bytes):
    """None if messid is a sane 'split/number' name, else a D/Z report."""
    if len(messid) > MESSID_MAX:
        return b'DInternal error: messid too long. (#5.3.5)\n'
    if not messid:
        return b'DInternal error: messid too short. (#5.3.5)\n'
    for i, ch in enumerate(messid):
        if not (48 <= ch <= 57) and not (i and ch == 0x2f):
            return b'DInternal error: messid has nonnumerics. (#5.3.5)\n'
    return None


def truncate(output: bytearray, limit: int):
    """Keep a report short, saying so (limit 0: no limit)."""
    if limit > 100 and len(output) > limit:
        note = b'\nError report too long, sorry.\n'
        del output[limit - len(note) - 3:]
        output += note


class Done:
    """start() finished the delivery at once (wstat as from waitpid)."""
    __slots__ = ('wstat',)

    def __init__(self, wstat: int):
        self.wstat = wstat


class Spawner:
    """The loop.  start(fdmess, fdout, sender, recip, at, delnum) runs one
    delivery and returns the pid of the child it forked, or Done(wstat)
    if it finished at once, or None if it handed the delivery to a
    process that is not our child: then whoever has it calls
    finish(delnum, wstat) later, from a watch callback or tick().
    report(wstat, output) -> bytes.

    watch: {fd: callback()} polled along with the rest; tick(), if set,
    runs at least every `tick_seconds` and after each event."""

    def __init__(self, start, report, uid_queue, truncreport=0):
        self.start = start
        self.report = report
        self.uid_queue = uid_queue
        self.truncreport = truncreport
        self.slots = [None] * SPAWN
        self.flagreading = True
        self.flagwriting = True
        self.parser = CommandParser()
        self.byslot = {}
        self.watch = {}
        self.tick = None
        self.tick_seconds = 10.0

    def put(self, data: bytes):
        if not self.flagwriting:
            return
        while data:
            try:
                n = os.write(1, data)
            except InterruptedError:
                continue
            except OSError:
                self.flagwriting = False
                return
            data = data[n:]

    def err(self, delnum, text: bytes):
        self.put(bytes((delnum,)) + text + b'\0')

    def docmd(self, delnum, messid, sender, recip):
        if delnum >= SPAWN:
            return self.err(delnum, b'ZInternal error: delnum too big. (#4.3.5)\n')
        if self.slots[delnum] is not None:
            return self.err(delnum, b'ZInternal error: delnum in use. (#4.3.5)\n')
        bad = check_messid(messid)
        if bad:
            return self.err(delnum, bad)
        at = recip.rfind(b'@')
        if at == -1:
            return self.err(delnum, b'DSorry, address must include host name. (#5.1.3)\n')
        try:
            fdmess = os.open(messid, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return self.err(delnum, b'Zqmail-spawn unable to open message. (#4.3.0)\n')
        try:
            try:
                st = os.fstat(fdmess)
            except OSError:
                return self.err(delnum, b'Zqmail-spawn unable to fstat message. (#4.3.0)\n')
            if not stat.S_ISREG(st.st_mode):
                return self.err(delnum, b'ZSorry, message has wrong type. (#4.3.5)\n')
            if st.st_uid != self.uid_queue:
                # qmailq has to be trusted; if it is not, limit the damage.
                return self.err(delnum, b'ZSorry, message has wrong owner. (#4.3.5)\n')
            try:
                fdin, fdout = os.pipe()
            except OSError:
                return self.err(delnum, b'Zqmail-spawn unable to create pipe. (#4.3.0)\n')
            os.set_inheritable(fdin, False)
            os.set_blocking(fdin, False)
            os.set_inheritable(fdout, False)
            slot = Slot(None, fdin, fdout)
            self.slots[delnum] = slot
            try:
                pid = self.start(fdmess, fdout, sender, recip, at, delnum)
            except OSError:
                self.slots[delnum] = None
                os.close(fdin)
                os.close(fdout)
                return self.err(delnum, b'Zqmail-spawn unable to fork. (#4.3.0)\n')
        finally:
            os.close(fdmess)
        if isinstance(pid, Done):
            self.finish(delnum, pid.wstat)
        elif pid is not None:
            slot.pid = pid
            self.byslot[pid] = delnum

    def finish(self, delnum: int, wstat: int):
        """The delivery in slot delnum is over: once its pipe reaches end
        of file, its report goes to qmail-send."""
        slot = self.slots[delnum]
        if slot is None or slot.wstat is not None:
            return
        slot.wstat = wstat
        if slot.fdout != -1:
            os.close(slot.fdout)
            slot.fdout = -1

    def reap(self):
        while True:
            try:
                pid, wstat = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            delnum = self.byslot.pop(pid, None)
            if delnum is None:
                continue
            self.finish(delnum, wstat)

    def readslot(self, delnum):
        slot = self.slots[delnum]
        try:
            data = os.read(slot.fdin, 4096)
        except InterruptedError:
            return
        except OSError:
            return
        if data:
            slot.output += data
            truncate(slot.output, self.truncreport)
            return
        if slot.wstat is None:
            return                      # cannot happen: we hold fdout
        self.put(bytes((delnum,)) + self.report(slot.wstat, bytes(slot.output)) + b'\0')
        os.close(slot.fdin)
        self.slots[delnum] = None

    def loop(self) -> int:
        wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(wakeup_r, False)
        os.set_blocking(wakeup_w, False)
        signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.put(bytes((SPAWN,)))
        # Everything loaded so far stays put: forked children then share
        # these pages instead of copying them when a collection runs
        # (make bench: a fork with a collection cost 3.1 ms, 0.56 ms frozen).
        gc.freeze()
        while True:
            self.reap()
            if self.tick is not None:
                self.tick()
            active = [i for i, s in enumerate(self.slots) if s is not None]
            if not self.flagreading and not active:
                return 0
            poller = select.poll()
            poller.register(wakeup_r, select.POLLIN)
            if self.flagreading:
                poller.register(0, select.POLLIN)
            byfd = {}
            for i in active:
                poller.register(self.slots[i].fdin, select.POLLIN)
                byfd[self.slots[i].fdin] = i
            watched = dict(self.watch)
            for fd in watched:
                poller.register(fd, select.POLLIN)
            try:
                ready = poller.poll(None if self.tick is None else self.tick_seconds * 1000)
            except InterruptedError:
                continue
            for fd, ev in ready:
                if fd in watched:
                    # Only if it is still the same watch: a callback may
                    # have closed this fd and another opened it again.
                    if self.watch.get(fd) is watched[fd]:
                        watched[fd]()
                    continue
                if fd == wakeup_r:
                    try:
                        os.read(wakeup_r, 512)
                    except OSError:
                        pass
                    self.reap()
                elif fd == 0:
                    self.getcmd()
                elif fd in byfd:
                    self.reap()
                    self.readslot(byfd[fd])

    def getcmd(self):
        try:
            data = os.read(0, 1024)
        except InterruptedError:
            return
        except OSError:
            self.flagreading = False
            return
        if not data:
            self.flagreading = False
            return
        for cmd in self.parser.feed(data):
            self.docmd(*cmd)


def child_setup(fdmess: int, fdout: int):
    """In a delivery child: fd 0 the message, fds 1 and 2 the report pipe,
    and the signal state of a fresh process."""
    gc.disable()     # short-lived: a collection would copy the parent's pages
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGTERM, signal.SIGHUP,
                signal.SIGALRM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    os.dup2(fdmess, 0)
    os.dup2(fdout, 1)
    os.dup2(fdout, 2)
    # A fork keeps every descriptor of the parent, close-on-exec or not:
    # another delivery's pipe held here would delay its end-of-file.
    os.closerange(3, 1 << 16)
