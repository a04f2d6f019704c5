"""Commands to a running qmail-send, through the FIFO queue/lock/command.

The FIFO is qmails's, mode 0600: only root and qmails may write to it
(lock/trigger is anyone's, and says only "look at todo/").  qmail-send
holds it open for reading and writing (no end of file when a writer
goes), reads whole lines and acts on each at once:

  H<messid>   hold: a pass under way of the message is cut (no new
              delivery of it starts; one under way ends as it would
              have); the admin's tool has set the hold mark on its
              recipient lists first (HELD_BIT), which every pass and a
              restart read.
  U<messid>   release: held no more, every recipient list due now (the
              mark already cleared).
  N<messid>   now: due now, held or not (a message qmail-qrm has taken
              every recipient from, or expired: it is to finish now).
  R<messid>   read again: the recipient lists as the disk has them now
              (qmail-qrm's D marks), for a pass under way too.

A line is at most LINE_MAX bytes; anything else is ignored.  Each write
holds whole lines and at most PIPE_BUF bytes, so writers never mix, and
starts with an empty line, so that a stray piece without its newline
left by another writer swallows no command.
Nothing here is an instruction qmail-send must not lose: the marks on
disk are the truth (a pass that starts reads them; an ALRM looks at the
held again), and a command only makes them take effect at once: cut a
pass under way, run a released message now.
"""

import errno
import os
import select
import stat
import time

COMMAND = 'lock/command'        # under HOME/queue
LINE_MAX = 32
PIPE_BUF = 4096
HELD_BIT = stat.S_ISVTX         # on local/ and remote/: the message is held
VERBS = b'HUNR'


def line(verb: bytes, messid: int) -> bytes:
    """One command line: verb (one of VERBS) for message messid."""
    return b'%s%d\n' % (verb, messid)


def send(qdir: str, commands, timeout: float = 10.0) -> bool:
    """Write the command lines to qmail-send's FIFO; False if there is
    none to write to (no FIFO, or no qmail-send reading it), or it did
    not take them within timeout seconds."""
    path = os.path.join(qdir, COMMAND)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:                 # ENXIO: nobody reads it; ENOENT: none
        return False
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        deadline = time.monotonic() + timeout
        batch = b'\n'
        pending = list(commands) + [None]
        for line in pending:
            if line is not None and len(batch) + len(line) <= PIPE_BUF:
                batch += line
                continue
            while batch:
                try:
                    os.write(fd, batch)     # (whole: at most PIPE_BUF)
                    batch = b''
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    poller = select.poll()
                    poller.register(fd, select.POLLOUT)
                    poller.poll(min(left, 1.0) * 1000)
                except OSError as err:
                    if err.errno == errno.EINTR:
                        continue
                    return False        # EPIPE: qmail-send went away
            batch = b'\n' + line if line is not None else b''
        return True
    finally:
        os.close(fd)


class Reader:
    """qmail-send's end: feed() what was read, take (verb, messid) pairs."""

    def __init__(self):
        self.partial = b''
        self.skipping = False       # in a line too long: dropped to its end

    def feed(self, data: bytes) -> list:
        out = []
        if self.skipping:
            end = data.find(b'\n')
            if end == -1:
                return out
            data, self.skipping = data[end + 1:], False
        *whole, rest = (self.partial + data).split(b'\n')
        self.partial = rest
        if len(rest) > LINE_MAX:
            self.partial, self.skipping = b'', True
        for line in whole:
            if 2 <= len(line) <= LINE_MAX and line[:1] in VERBS and line[1:].isdigit():
                out.append((line[:1], int(line[1:])))
        return out
