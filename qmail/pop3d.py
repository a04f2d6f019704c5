"""qmail-pop3d: distribute mail via POP.

Usage:    qmail-pop3d maildirname
Runs as:  the user whose mail it is, started by a checkpassword program
          under qmail-popup:
              qmail-popup host.example.org checkpassword qmail-pop3d Maildir
          cwd the user's home (checkpassword's chdir); the connection on
          fd 0 and fd 1 (under STLS, qmail-popup's relay).
Reads:    fd 0, POP3 commands of the TRANSACTION state (RFC 1939).  The
          maildir maildirname, relative to the cwd: new/ and cur/ as they
          are at login.  control/timeoutpop3 in the qmail home
          (auto.QMAIL, never the environment); one the user may not read
          is its default, with a warning on fd 2 (C qmail-pop3d reads
          no control: a mode of 0600 there must not stop every login).
Writes:   fd 1, replies and messages.  At QUIT and only then: deleted
          messages are unlinked, the others still in new/ renamed into
          cur/ with ":2," appended (maildir(5): seen by a reader), and
          both directories fsynced before "+OK".  At login, files in tmp/
          not accessed for 36 hours are removed, as qmail-pop3d does.
Exits:    0 once it has said anything to the client: after QUIT, a
          timeout, the client going away, or an -ERR it cannot go on
          after ("this user has no $HOME/Maildir", "unable to scan
          $HOME/Maildir"), as qmail-pop3d does, so that qmail-popup adds
          nothing; 1 without a word when run as root (logged on fd 2),
          which qmail-popup reports as a failed login.
Trusts:   the client for nothing: every line is bounded (see Limits), a
          message number is checked against the list made at login.  The
          maildir is the user's own; a name in it that is no regular file
          (a FIFO, a directory) is not listed, nor opened when it became
          one since.
See:      qmail-pop3d(8), maildir(5), qmail-popup(8); RFC 1939 (POP3),
          RFC 2449 (CAPA).

Behaviour is qmail-pop3d's, reply texts included ("+OK " with its space,
"-ERR unable to open that message", ...): commands are matched without
case and end at LF, a CR before it dropped; UIDL is a message's maildir
name up to the ':' (so it stays the same when the message moves from new/
to cur/); LIST gives the file's size (qmail's; the octets sent are a few
more, CR LF and the extra blank line); messages are numbered in order of
modification time, and a file modified in the second of the login (or
later) is left for the next session, qmail's guard for that order;
every message sent ends with an extra blank line (qmail-pop3d(8)); "TOP n"
without a line count sends the whole message, as qmail's does.

Differences from qmail-pop3d, each for a reason:
  * STAT counts only the messages not deleted (RFC 1939 5: "messages
    marked as deleted are not counted"); qmail's counted them all.
  * LAST is the highest message number retrieved or deleted (RFC 1460);
    qmail's counted deletions only.  RSET sets it back to 0.  "TOP n"
    without a line count, which sends the whole message, counts as a
    retrieval.
  * A line stored with CR LF is sent with one CR LF, not CR CR LF; a
    bare CR ending the file (no LF after it) is dropped, not sent as
    CR CR LF.
  * A command holding a NUL gets "-ERR NUL in command" (qmail cut the
    line at the NUL).
  * A message in new/ whose name already has ":2,..." info keeps that
    name in cur/ at QUIT; qmail appended a second ":2,".
  * RETR takes no line count ("RETR 1 5" was TOP 1 5 in qmail).
  * A message deleted or moved by another session meanwhile: RETR and TOP
    look for it in cur/ under its new name, else "-ERR unable to open
    that message"; at QUIT a message already gone counts as deleted.
    qmail answered QUIT with an -ERR line and an +OK line (two replies
    to one command); here a failed unlink gets the -ERR line only.
  * A read error in the middle of a message drops the connection instead
    of ending the message with ".": the client must not take a truncated
    message for a whole one, and delete it.
  * CAPA (RFC 2449): TOP, UIDL, USER.
  * A client silent for timeoutpop3 reads "-ERR timeout" before the close
    (qmail closed without a word, as RFC 1939 has it for its autologout):
    a person debugging by hand learns why; no client acts on it.
  * A UIDL of a name longer than 70 bytes or holding bytes outside
    0x21-0x7E (RFC 1939 7) is the name's SHA-256, in hex, 40 digits.

Safety of the maildir: the list is made once, at login; a message
delivered during the session lands in new/ and is neither listed nor
touched until the next session.  Nothing changes before QUIT: a client
that goes away, times out, or is cut off in the middle of RETR leaves
the maildir as it was (apart from the tmp/ cleanup).  Two sessions on
one maildir: each works on its own list, see above.

Limits (control file, default; 0 in the file means no limit):
  timeoutpop3   1200  seconds a client may stay silent (qmail-pop3d's
                      20-minute idle timeout), and a write may wait.
  (none)              on a session's length, however long, as in qmail:
                      a mailbox fetched over a slow link must reach
                      QUIT, or its deletions never happen and the next
                      session starts over.  (lifetimepop3 is the login
                      phase's, in qmail-popup.)  The work on files (a
                      message's next piece, the scan, QUIT's unlinks and
                      renames) runs under an alarm of timeout +
                      ALARM_SLACK, which ends a process stuck on a hung
                      file system; waits on the client have their own
                      timeouts, and no alarm.
  MAXCMDLINE    1000  bytes in a command line with its LF (fixed; RFC
                      2449 4 lets a client send 255): "-ERR line too
                      long" once its LF arrives; never buffered.
  MAXERRORS     20    refused commands per session (fixed; an unknown
                      verb, bad syntax, a NUL, a line too long: not a
                      message number out of range or deleted); then
                      "-ERR too many errors" and the connection is
                      dropped, its deletions undone as at any end
                      without QUIT.
  MAXMESSAGES   100000  messages listed per session, the oldest (fixed);
                      the rest wait for a later session.

The design: Session is the protocol, fed bytes and the time and
answering bytes; RETR and TOP leave a transfer that the shell drains
with more().  Maildir is the disk: scan, open, remove, mark seen.  Blast
is the message-to-POP3 conversion, pure.  qmail/pop3d_io.py holds what
qmail-popup shares: Conn, the connection with poll() timeouts, and Lines
and parse_command, which cut commands as commands.c does.
"""

import errno
import os
import stat
import sys
import time

import _signal    # not `signal`: its enum import costs start-up time

from qmail.lib import auto, control, durable, stderr
from qmail.pop3d_io import (TOOLONG, Conn, Gone, Lines, parse_command, read_wait,
                            silence_limit)

MAXCMDLINE = 1000        # as qmail-smtpd's; a POP3 client sends at most 255
MAXERRORS = 20
REPLY_HOLD = 65536      # bytes of replies pending before commands wait
MAXMESSAGES = 100000     # a Message costs ~200 bytes: 20 MB at most
READSIZE = 65536
CARRYMAX = 65536         # bytes of a line TOP holds before sending them
ALARM_SLACK = 60
TMPAGE = 129600          # maildir(5): tmp/ files untouched for 36 hours go
UIDMAX = 70              # RFC 1939 7: a unique-id is 1 to 70 characters

DEFAULT_TIMEOUT = 1200   # qmail-popup(8) and qmail-pop3d(8): 20 minutes
DEFAULT_LIFETIME = 3600  # lifetimepop3: qmail-popup's login phase (none here)

R_OK = b'+OK \r\n'
R_SYNTAX = b'-ERR syntax error\r\n'
R_UNIMPL = b'-ERR unimplemented\r\n'
R_DELETED = b'-ERR already deleted\r\n'
R_NOZERO = b'-ERR messages are counted from 1\r\n'
R_TOOBIG = b'-ERR not that many messages\r\n'
R_NOSUCH = b'-ERR unable to open that message\r\n'
R_NOUNLINK = b'-ERR unable to unlink all deleted messages\r\n'
R_NOMAILDIR = b'-ERR this user has no $HOME/Maildir\r\n'
R_SCAN = b'-ERR unable to scan $HOME/Maildir\r\n'
R_CONTROL = b'-ERR unable to read controls\r\n'
R_INTERNAL = b'-ERR internal error\r\n'
R_NOMEM = b'-ERR out of memory\r\n'
R_TOOLONG = b'-ERR line too long\r\n'
R_NUL = b'-ERR NUL in command\r\n'
R_ERRORS = b'-ERR too many errors\r\n'
R_TIMEOUT = b'-ERR timeout\r\n'
R_CAPA = (b'+OK capability list follows\r\n'
          b'TOP\r\nUIDL\r\nUSER\r\n.\r\n')
END = b'\r\n.\r\n'       # qmail's extra blank line, then the terminator


def scan_ulong(s: bytes):
    """qmail's scan_ulong: (value of the leading digits, how many), (0, 0)
    without a digit."""
    n = 0
    while n < len(s) and 48 <= s[n] <= 57:
        n += 1
    return (int(s[:n]) if n else 0), n


# -- the message, as POP3 sends it -------------------------------------------

class Blast:
    """qmail-pop3d's blast(): a maildir message (lines ending in LF, or CR
    LF) as POP3 multi-line data: every line ends in CR LF, a line starting
    with '.' gets another '.' (RFC 1939 3), and the end is the extra
    blank line and ".".  body None sends it all; body n (TOP) the
    header, the blank line and n lines of the body.

    Fed the file in pieces of any size; done is set once TOP has what it
    wants (read no more).  Memory is bounded: RETR holds at most one CR,
    TOP at most CARRYMAX bytes of a line."""

    def __init__(self, body=None):
        self.body = body
        self.flagheader = True
        self.flagstart = True       # RETR: the next byte starts a line
        self.flagmid = False        # TOP: part of this line has been sent
        self.carry = b''
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b''
        if self.body is None:
            return self.feed_all(data)
        out = []
        if self.carry:
            data, self.carry = self.carry + data, b''
        pos = 0
        while not self.done:
            i = data.find(b'\n', pos)
            if i < 0:
                break
            self.line(data[pos:i], out, True)
            pos = i + 1
        rest = data[pos:]
        if not self.done and rest:
            if len(rest) > CARRYMAX:
                keep = 1 if rest.endswith(b'\r') else 0   # it may precede LF
                self.line(rest[:len(rest) - keep], out, False)
                self.carry = rest[len(rest) - keep:]
            else:
                self.carry = rest
        return b''.join(out)

    def feed_all(self, data: bytes) -> bytes:
        """RETR: the same conversion, done with bytes.replace per piece."""
        if self.carry:
            data, self.carry = self.carry + data, b''
        if data.endswith(b'\r'):
            data, self.carry = data[:-1], b'\r'
        if not data:
            return b''
        data = data.replace(b'\r\n', b'\n')
        prefix = b'.' if self.flagstart and data[:1] == b'.' else b''
        self.flagstart = data.endswith(b'\n')
        return prefix + data.replace(b'\n.', b'\n..').replace(b'\n', b'\r\n')

    def line(self, text: bytes, out: list, flagcomplete: bool):
        """TOP: one line, or the first part of a long one (not complete)."""
        if flagcomplete and text.endswith(b'\r'):
            text = text[:-1]
        if not self.flagmid:
            if self.body is not None and not self.flagheader:
                if self.body <= 0:
                    self.done = True
                    return
                self.body -= 1
            if flagcomplete and not text:
                self.flagheader = False
            elif text[:1] == b'.':
                out.append(b'.')
        out.append(text)
        if flagcomplete:
            out.append(b'\r\n')
        self.flagmid = not flagcomplete

    def finish(self) -> bytes:
        """The end of the file (or of TOP's lines): the last line, if it
        had no LF, then the extra blank line and the terminator."""
        out = []
        if not self.done:
            if self.body is None:
                # (a CR held back in case an LF came is a last line too)
                if not self.flagstart or self.carry:
                    out.append(b'\r\n')
            elif self.carry or self.flagmid:
                self.line(self.carry, out, True)
            self.carry = b''
        self.done = True
        out.append(END)
        return b''.join(out)


# -- the maildir ---------------------------------------------------------------

class Message:
    __slots__ = ('name', 'size', 'flagdeleted')

    def __init__(self, name: str, size: int):
        self.name = name            # 'new/...' or 'cur/...', as listed
        self.size = size
        self.flagdeleted = False


def unique(name: str) -> str:
    """The maildir unique name: after new/ or cur/, up to the ':'."""
    return name[4:].split(':', 1)[0]


def uidl(name: str) -> bytes:
    """The UIDL of a message (see the docstring)."""
    uid = os.fsencode(unique(name))
    if 0 < len(uid) <= UIDMAX and all(0x21 <= c <= 0x7e for c in uid):
        return uid
    import hashlib
    return hashlib.sha256(uid).hexdigest()[:40].encode()


class Maildir:
    """The user's maildir, the cwd (qmail-pop3d chdirs into it)."""

    def __init__(self, path: str = '.'):
        self.path = path

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def clean(self, now: float):
        """maildir_clean(): tmp/ files not accessed for 36 hours."""
        try:
            entries = list(os.scandir(self.join('tmp')))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith('.'):
                continue
            try:
                if now > entry.stat().st_atime + TMPAGE:
                    os.unlink(entry.path)
            except OSError:
                pass

    def scan(self, now: float, limit: int = MAXMESSAGES) -> list:
        """maildir_scan(): the messages of new/ and cur/ modified before
        the second of now, oldest first; OSError if a directory cannot
        be read."""
        import heapq
        second = int(now)
        found = []
        for sub in ('new', 'cur'):
            with os.scandir(self.join(sub)) as it:
                for entry in it:
                    if entry.name.startswith('.'):
                        continue
                    try:
                        st = entry.stat()
                    except OSError:     # gone meanwhile
                        continue
                    if not stat.S_ISREG(st.st_mode) or int(st.st_mtime) >= second:
                        continue
                    found.append((int(st.st_mtime), sub + '/' + entry.name, st.st_size))
                    if len(found) >= 2 * limit:     # bounded, whatever is there
                        found = heapq.nsmallest(limit, found)
        # One message, two names: moved from new/ to cur/, or renamed in
        # cur/, while the directories were read.  Listed once (its UIDL
        # must be unique, RFC 1939), under its cur/ name; RETR finds it
        # wherever it went (locate).
        chosen = heapq.nsmallest(limit, found)
        kept = {}
        for item in chosen:
            base = unique(item[1])
            if base not in kept or item[1].startswith('cur/'):
                kept[base] = item
        if len(kept) < len(chosen):
            chosen = sorted(kept.values())
        return [Message(name, size) for _, name, size in chosen]

    def locate(self, name: str):
        """Where a message listed as name is now, if another reader moved
        it into cur/; None if it is gone."""
        base = unique(name)
        guess = 'cur/' + base + ':2,'
        if guess != name and os.path.lexists(self.join(guess)):
            return guess
        try:
            with os.scandir(self.join('cur')) as it:
                for entry in it:
                    if entry.name == base or entry.name.startswith(base + ':'):
                        candidate = 'cur/' + entry.name
                        if candidate != name:
                            return candidate
        except OSError:
            pass
        return None

    def open(self, name: str) -> int:
        """A descriptor reading the message; OSError if it cannot be had.
        O_NONBLOCK so that a FIFO put in its place cannot hang us."""
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(self.join(name), flags)
        except FileNotFoundError:
            moved = self.locate(name)
            if moved is None:
                raise
            fd = os.open(self.join(moved), flags)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, 'not a regular file')
            os.set_blocking(fd, True)
        except OSError:
            os.close(fd)
            raise
        return fd

    def remove(self, name: str) -> bool:
        """Unlink a deleted message; True if it is gone (already, too)."""
        try:
            durable.unlink(self.join(name))
            return True
        except FileNotFoundError:
            moved = self.locate(name)
        except OSError:
            return False
        if moved is None:
            return True
        try:
            durable.unlink(self.join(moved))
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True

    def seen(self, name: str):
        """new/x -> cur/x:2, ("if it fails, bummer", says qmail-pop3d)."""
        if not name.startswith('new/'):
            return
        base = name[4:]
        target = 'cur/' + (base if ':' in base else base + ':2,')
        try:
            durable.rename(self.join(name), self.join(target))
        except OSError:
            pass

    def sync(self):
        """Make the unlinks and renames durable before "+OK" to QUIT."""
        for sub in ('new', 'cur'):
            try:
                durable.fsync_dir(self.join(sub))
            except OSError:
                pass


# -- the session -------------------------------------------------------------

class Config:
    def __init__(self, timeout=DEFAULT_TIMEOUT, maxerrors=MAXERRORS):
        self.timeout = timeout
        self.maxerrors = maxerrors


COMMANDS = {
    b'quit': 'pop3_quit', b'stat': 'pop3_stat', b'list': 'pop3_list',
    b'uidl': 'pop3_uidl', b'dele': 'pop3_dele', b'retr': 'pop3_retr',
    b'rset': 'pop3_rset', b'last': 'pop3_last', b'top': 'pop3_top',
    b'noop': 'pop3_noop', b'capa': 'pop3_capa',
}


class Transfer:
    """A message on its way: the descriptor and its Blast."""

    def __init__(self, fd: int, blast: Blast):
        self.fd = fd
        self.blast = blast


class Session:
    """One POP3 session in the TRANSACTION state: feed it bytes, send what
    it answers.

        s = Session(config, maildir, messages, now)
        send(s.greet())
        while not s.flagclosed:
            send(s.feed(received_bytes, now))
            while s.transfer is not None: send(s.more())
            ... while s.held: feed(b'', now) again (commands that came
            behind a RETR); s.eof() when the client goes away,
            s.timeout(now) when it is silent too long or past s.deadline;
            s.abort() when it cannot be written to.
        s.exitcode at the end."""

    def __init__(self, config: Config, maildir: Maildir, messages: list, now: float):
        self.config = config
        self.maildir = maildir
        self.messages = messages
        self.last = 0
        self.lines = Lines()
        self.replies = []
        self.errors = 0
        self.flagclosed = False
        self.flaglinger = False     # closed on our word: Conn.linger()
        self.exitcode = 0
        self.transfer = None
        self.held = b''
        self.pending = 0            # bytes in self.replies
        self.alive = [len(messages), sum(m.size for m in messages)]   # STAT's
        self.deleted = []           # DELE's, for RSET: its cost theirs, not the maildir's

    # -- the interface to the shell --

    def greet(self) -> bytes:
        return R_OK

    def feed(self, data: bytes, now: float) -> bytes:
        """Take bytes from the client; return the replies to send."""
        if self.flagclosed:
            return b''
        if self.held:
            data, self.held = self.held + data, b''
        if self.transfer is not None:   # the shell drains it first
            self.held = data
            return b''
        pos = 0
        # Commands wait while REPLY_HOLD of replies is unsent: a client
        # that pipelines LIST or UIDL without reading would otherwise
        # have each listing built, in memory, for every 6 bytes it sends.
        while (pos < len(data) and not self.flagclosed and self.transfer is None
               and self.pending < REPLY_HOLD):
            line, pos = self.lines.take(data, pos, MAXCMDLINE)
            if line is None:
                break
            if line is TOOLONG:
                self.bad(R_TOOLONG)
            else:
                self.command(line)
            if (not self.flagclosed and self.config.maxerrors
                    and self.errors >= self.config.maxerrors):
                self.close(R_ERRORS)
        if (self.transfer is not None or self.pending >= REPLY_HOLD) and not self.flagclosed:
            self.held = data[pos:]
        return self.take_replies()

    def more(self) -> bytes:
        """The next piece of the message being sent; at its end the
        terminator, and transfer is None again.  A read error drops the
        connection (see the docstring)."""
        t = self.transfer
        if t is None:
            return b''
        try:
            chunk = os.read(t.fd, READSIZE)
        except OSError:
            self.end_transfer()
            self.held = b''
            self.flagclosed = True
            return b''
        if chunk:
            out = t.blast.feed(chunk)
            if not t.blast.done:
                return out
            return out + self.end_transfer()
        return self.end_transfer()

    def end_transfer(self) -> bytes:
        t, self.transfer = self.transfer, None
        os.close(t.fd)
        return t.blast.finish()

    def eof(self):
        self.abort()

    def timeout(self, now: float) -> bytes:
        self.abort()
        return R_TIMEOUT

    def abort(self):
        """The session ends without QUIT: the maildir stays as it is."""
        if self.transfer is not None:
            os.close(self.transfer.fd)
            self.transfer = None
        self.held = b''
        self.flagclosed = True

    # -- the state machine --

    def out(self, reply: bytes):
        self.replies.append(reply)
        self.pending += len(reply)

    def take_replies(self) -> bytes:
        out = b''.join(self.replies)
        self.replies = []
        self.pending = 0
        return out

    def close(self, reply: bytes, exitcode: int = 0):
        self.out(reply)
        self.flagclosed = True
        self.flaglinger = True
        self.exitcode = exitcode

    def bad(self, reply: bytes):
        self.out(reply)
        self.errors += 1

    def command(self, line: bytes):
        if b'\0' in line:
            self.bad(R_NUL)
            return
        verb, arg = parse_command(line)
        name = COMMANDS.get(verb)
        if name is None:
            self.bad(R_UNIMPL)
        else:
            getattr(self, name)(arg)

    def msgno(self, arg: bytes):
        """qmail's msgno(): the index of a message not deleted, or None
        after the -ERR reply."""
        u, n = scan_ulong(arg)
        if not n:
            self.bad(R_SYNTAX)
            return None
        # A number the client may well have meant (a message deleted, or
        # gone since its last listing) is no protocol error: not counted
        # towards MAXERRORS, whose close would drop the session's DELEs.
        if not u:
            self.out(R_NOZERO)
            return None
        if u > len(self.messages):
            self.out(R_TOOBIG)
            return None
        if self.messages[u - 1].flagdeleted:
            self.out(R_DELETED)
            return None
        return u - 1

    def pop3_noop(self, arg):
        self.out(R_OK)

    def pop3_capa(self, arg):
        self.out(R_CAPA)

    def pop3_stat(self, arg):
        self.out(b'+OK %d %d\r\n' % tuple(self.alive))

    def pop3_rset(self, arg):
        for i in self.deleted:
            m = self.messages[i]
            m.flagdeleted = False
            self.alive[0] += 1
            self.alive[1] += m.size
        self.deleted.clear()
        self.last = 0
        self.out(R_OK)

    def pop3_last(self, arg):
        self.out(b'+OK %d\r\n' % self.last)

    def pop3_dele(self, arg):
        i = self.msgno(arg)
        if i is None:
            return
        self.messages[i].flagdeleted = True
        self.deleted.append(i)
        self.alive[0] -= 1
        self.alive[1] -= self.messages[i].size
        self.last = max(self.last, i + 1)
        self.out(R_OK)

    def listing(self, arg: bytes, show):
        if arg:
            i = self.msgno(arg)
            if i is not None:
                self.out(b'+OK %d %s\r\n' % (i + 1, show(self.messages[i])))
            return
        lines = [R_OK]
        for i, m in enumerate(self.messages):
            if not m.flagdeleted:
                lines.append(b'%d %s\r\n' % (i + 1, show(m)))
        lines.append(b'.\r\n')
        self.out(b''.join(lines))

    def pop3_list(self, arg):
        self.listing(arg, lambda m: b'%d' % m.size)

    def pop3_uidl(self, arg):
        self.listing(arg, lambda m: uidl(m.name))

    def pop3_retr(self, arg):
        i = self.msgno(arg)
        if i is not None:
            self.send_message(i, None)

    def pop3_top(self, arg):
        i = self.msgno(arg)
        if i is None:
            return
        _, n = scan_ulong(arg)
        rest = arg[n:].lstrip(b' ')
        body, n = scan_ulong(rest)
        self.send_message(i, body if n else None)

    def send_message(self, i: int, body):
        try:
            fd = self.maildir.open(self.messages[i].name)
        except OSError:
            self.out(R_NOSUCH)
            return
        if body is None:
            self.last = max(self.last, i + 1)
        self.out(R_OK)
        self.transfer = Transfer(fd, Blast(body))

    def pop3_quit(self, arg):
        """The UPDATE state (RFC 1939 6)."""
        flagfailed = False
        for m in self.messages:
            if m.flagdeleted:
                if not self.maildir.remove(m.name):
                    flagfailed = True
            else:
                self.maildir.seen(m.name)
        self.maildir.sync()
        self.close(R_NOUNLINK if flagfailed else R_OK)


# -- reading the world, and the shell ------------------------------------------

def load_config(ctl: control.Controls) -> Config:
    """Raises OSError when a control file cannot be read, but for one
    this user may not read: its default then (see the docstring).  (No
    lifetime: see the docstring.)"""
    try:
        timeout = ctl.seconds('timeoutpop3', DEFAULT_TIMEOUT)
    except PermissionError:
        log('warning: unable to read control/timeoutpop3 as uid %d: permission denied; '
            'using %d' % (os.getuid(), DEFAULT_TIMEOUT))
        timeout = DEFAULT_TIMEOUT
    return Config(timeout=silence_limit(timeout))


def on_files(timeout: int, fn, *args):
    """fn(*args), work on files, under the alarm that ends a process a
    hung file system holds; the alarm is off again for the waits on the
    client (which have their own timeouts, however slow it reads)."""
    _signal.alarm(timeout + ALARM_SLACK)
    try:
        return fn(*args)
    finally:
        _signal.alarm(0)


def serve(session: Session, conn: Conn) -> int:
    """Run one session over conn; return its exit code."""
    timeout = session.config.timeout
    try:
        conn.write(session.greet(), timeout)
        while not session.flagclosed:
            data = conn.read(read_wait(timeout, None, time.time()))
            if data is None:
                conn.write(session.timeout(time.time()), timeout)
                break
            if not data:
                session.eof()
                break
            replies = on_files(timeout, session.feed, data, time.time())
            while True:
                # A RETR's +OK, its message and the terminator leave in
                # as few writes as they fit in: written apart, the second
                # waited for the client's delayed ACK of the first (Nagle),
                # 40 ms a message for a client that asks one at a time.
                out = replies
                while session.transfer is not None:
                    out += on_files(timeout, session.more)
                    if len(out) >= READSIZE:
                        conn.write(out, timeout)
                        out = b''
                if out:
                    conn.write(out, timeout)
                if not session.held or session.flagclosed:
                    break
                replies = on_files(timeout, session.feed, b'', time.time())
    except Gone:
        session.abort()
        return session.exitcode
    if session.flaglinger:
        conn.linger()
    return session.exitcode


def log(text: str):
    stderr.log(('qmail-pop3d: %s\n' % text).encode('utf-8', 'replace'))


def say(reply: bytes):
    """A last reply before exiting; if the client is gone, so be it."""
    try:
        Conn(0, 1).write(reply, DEFAULT_TIMEOUT)
    except (Gone, OSError):
        pass


def main(argv=None, home=None) -> int:
    """qmail-pop3d maildirname.  home is for tests: the controls are
    always auto.QMAIL's otherwise."""
    argv = sys.argv[1:] if argv is None else argv
    home = auto.QMAIL if home is None else home
    session = None
    try:
        if os.getuid() == 0:
            log('invoked as uid 0, terminating')
            return 1
        try:
            config = load_config(control.Controls(os.path.join(home, 'control')))
        except OSError:
            say(R_CONTROL)
            return 0
        if not argv or not argv[0]:
            say(R_NOMAILDIR)
            return 0
        try:
            os.chdir(argv[0])
        except OSError:
            say(R_NOMAILDIR)
            return 0
        now = time.time()
        maildir = Maildir('.')
        on_files(config.timeout, maildir.clean, now)
        try:
            messages = on_files(config.timeout, maildir.scan, now)
        except OSError:
            say(R_SCAN)
            return 0
        session = Session(config, maildir, messages, now)
        conn = Conn(0, 1)
        conn.nodelay()      # the writes are whole already: no tail held back
        return serve(session, conn)
    except MemoryError:
        if session is None or session.transfer is None:
            say(R_NOMEM)
        return 0
    except Exception as err:    # last resort: never a traceback
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        log('internal error: %s in %s' % (
            type(err).__name__, tb.tb_frame.f_code.co_name if tb else '?'))
        if session is None or session.transfer is None:
            say(R_INTERNAL)
        return 0


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
