"""qmail-qmtpd: receive mail via QMTP.

Runs as:  qmaild, under tcpserver or tcp-env, the connection on fd 0 and
          fd 1.  cwd HOME (auto.QMAIL, never the environment).
Reads:    fd 0, QMTP packages, one after another: three netstrings
          holding the message, the envelope sender, and the recipients
          (each itself a netstring).  The environment of tcp-environ(5):
          TCPREMOTEIP, TCPREMOTEHOST, TCPREMOTEINFO, TCPLOCALHOST,
          TCPLOCALIP; and RELAYCLIENT, DATABYTES, QMAILQUEUE.
          control/rcpthosts, morercpthosts.cdb, badmailfrom, databytes,
          rcptcheck (with users/rcpt.cdb), srs_* (see below), and the
          limits below.
Writes:   fd 1, after each whole package, one response netstring per
          recipient, in the client's order: "K..." queued, "Z..." try
          again later, "D..." refused.  Each message, behind a Received
          line "with QMTP", and its envelope into qmail-queue
          ($QMAILQUEUE, else HOME/bin/qmail-queue), which starts at the
          first recipient accepted, or once HOLD bytes of the message
          have arrived, and is then fed the message as it comes.
Exits:    0 when the client closes the connection, or cannot be written
          to; 100 when it breaks the protocol (a malformed netstring, a
          length above the limits, an empty message, a message not
          starting with LF or CR); 111 after a timeout, at the end of
          lifetimeqmtpd, or when the controls cannot be read.  QMTP has
          no way to answer before a package ends, so each of these just
          closes the connection, and nothing of a package cut short is
          queued.
Trusts:   nobody on fd 0.  Every length the client declares is bounded
          before it is believed (see Limits); its text reaches the
          Received line only through safe(); the environment is the
          admin's (tcpserver's rules).
See:      qmail-qmtpd(8), qmail-smtpd(8) (rcpthosts, RELAYCLIENT,
          databytes), tcp-environ(5), qmail-control(5);
          cr.yp.to/proto/qmtp.txt; cr.yp.to/proto/netstrings.txt.

Behaviour is qmail 1.03's, response texts included:
  * the message's first byte says how its lines end: LF, and the rest
    is stored as it comes; CR, and every CR LF becomes LF (any other CR
    is kept).  Bytes are 8-bit clean either way;
  * a recipient of 1000 bytes or more (counting RELAYCLIENT, appended to
    every recipient when set) or holding a NUL, CR or LF gets "Dsorry, I can't
    handle that recipient (#5.1.3)"; without RELAYCLIENT, one whose
    domain is not in rcpthosts or morercpthosts gets qmail-smtpd's
    rcpthosts refusal, as a D;
  * a sender of 1000 bytes or more, or holding a NUL, CR or LF (not
    qmail: a line break would reach a bounce's header), refuses the whole
    message: "Dunacceptable sender (#5.1.7)"; a message longer than
    databytes (counted as stored, without the Received line) gets
    "Dsorry, that message size exceeds my databytes limit (#5.3.4)";
  * accepted recipients share qmail-queue's answer: "Kok <time> qp
    <pid>", or its Z or D text.  A package with no recipient queues
    nothing and gets no response.
Added for today's network, each with its own response:
  * a message with MAXHOPS (100) or more Received or Delivered header
    lines is refused, as qmail-smtpd does: "Dtoo many hops, this
    message is looping (#5.4.6)" (qmail-qmtpd.c left this an XXX);
  * recipients past maxrcptqmtpd in one package get "Zsorry, too many
    recipients (#4.5.3)", so the client sends them again later;
  * when qmail-queue cannot be started the package is read to its end
    and every recipient gets "Zqqt failure (#4.3.0)" (qmail closed the
    connection);
  * a client silent for timeoutqmtpd seconds is cut off (qmail had only
    its one-hour alarm, which is lifetimeqmtpd here);
  * the sender checks qmail-smtpd makes, so that an admin's refusal
    holds on port 209 too: a sender in control/badmailfrom has every
    recipient refused, "Dsorry, your envelope sender is in my
    badmailfrom list (#5.7.1)"; and where control/rcptcheck turns the
    recipient map on (qmail.lib.rcptmap), an unknown local recipient
    gets "Dsorry, no mailbox here by that name (#5.1.1)" instead of a
    bounce later;
  * where control/srs_domain is set, a recipient at that domain must be
    postmaster or a good SRS address of this host (qmail-smtpd's check):
    else "Dsorry, that is no SRS address of mine, or it is too old
    (#5.1.1)", not a bounce later to a sender most likely forged.

Limits (control file, default; 0 in the file means no limit, but for
timeoutqmtpd, where it means 1 second, as qmail-smtpd's timeoutsmtpd):
  maxrcptqmtpd   1000  accepted recipients per package; later ones get Z.
  timeoutqmtpd   1200  seconds of silence before the connection is cut.
  lifetimeqmtpd  3600  seconds a connection may last, however busy
                       (qmail-qmtpd's alarm(3600)).  SIGALRM at lifetime
                       + timeout + ALARM_SLACK ends a process stuck in a
                       write.
  MAXMESSAGE  2000000000  bytes in the message netstring (fixed; qmail's
                       getlen() gave up near 2e9).  databytes, when set,
                       refuses smaller messages with a D response.
  MAXENVELOPE 1048576  bytes in the sender netstring and in the recipient
                       list (fixed): a thousand recipients of maximal
                       length, tens of thousands of usual ones.  So at
                       most 349525 ("0:,") recipients and about 24 MB of
                       responses to one package, written REPLYBATCH
                       (1024) recipients' worth at a time from a byte
                       per recipient (as qmail-qmtpd's one-byte
                       failure list), never held whole.  A list over
                       it closes the connection, so it must stay far
                       above any real client's batch: the client would
                       retry it.
  ADDRMAX     999      bytes in an address (qmail's buf[1000]).
  HOLD        65536    bytes of a message (its Received line included)
                       held in memory before qmail-queue starts: a client
                       whose every recipient is refused (a relay attempt,
                       ten bytes a package) starts no qmail-queue unless
                       it sends that much.  qmail started one for each.

The design: Session is the protocol and every policy decision, fed
bytes and the time, answering bytes; Package holds one package's state.
The netstrings are qmail/lib/netstring.py's Reader, streaming, so a
message of any size costs no more memory than HOLD.  serve() is the shell, shared with
qmail-qmqpd: fd 0 and fd 1 with poll() timeouts.
"""

import collections
import copy
import os
import sys
import time
import select

import _signal    # not `signal`: its enum import costs start-up time

from qmail.lib import auto, control, stderr
from qmail.lib import cdb
from qmail.lib.cdb import CdbError
from qmail.lib.date822 import date822
from qmail.lib.netstring import NetstringError, Reader, encode
from qmail.lib.qqtalk import QueueClient
from qmail.smtpd import (Gone, MAXHOPS, Peer, held, kept_config, peer_env, retire as
                         smtpd_retire, safe, scan_ulong, warm_config, write_all)
from qmail.smtpd_blast import HOPLINE
from qmail.lib import rcptmap
from qmail.smtpd_addr import addrallowed, bmfcheck

MAXMESSAGE = 2000000000
MAXENVELOPE = 1 << 20
ADDRMAX = 999
HOLD = 65536
HOPPREFIX = 9            # len(b'delivered'): all a header line needs
READSIZE = 65536
REPLYBATCH = 1024       # recipients answered per write (take_replies)
ALARM_SLACK = 60

DEFAULT_TIMEOUT = 1200
DEFAULT_LIFETIME = 3600
DEFAULT_MAXRCPT = 1000

EXIT_GONE = 0            # qmail-qmtpd's saferead/safewrite: _exit(0)
EXIT_PROTO = 100         # badproto()
EXIT_TEMP = 111          # resources()

LF = 0x0A
CR = 0x0D

# qmail-qmtpd.c's responses, and the added ones (see the docstring).
R_NOGATEWAY = b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
R_CANTHANDLE = b"Dsorry, I can't handle that recipient (#5.1.3)"
R_SENDER = b'Dunacceptable sender (#5.1.7)'
R_SIZE = b'Dsorry, that message size exceeds my databytes limit (#5.3.4)'
R_HOPS = b'Dtoo many hops, this message is looping (#5.4.6)'
R_MAXRCPT = b'Zsorry, too many recipients (#4.5.3)'
R_QQT = b'Zqqt failure (#4.3.0)'
R_BMF = b'Dsorry, your envelope sender is in my badmailfrom list (#5.7.1)'
R_UNKNOWN = b'Dsorry, no mailbox here by that name (#5.1.1)'
R_BADSRS = b'Dsorry, that is no SRS address of mine, or it is too old (#5.1.1)'

# A recipient's fate, one byte each in Package.results.
RCPT_OK = 0              # shares qmail-queue's answer
RCPT_NOGATEWAY = 1
RCPT_CANTHANDLE = 2
RCPT_MAXRCPT = 3
RCPT_BMF = 4
RCPT_UNKNOWN = 5
RCPT_BADSRS = 6
FIXED_RESPONSE = {
    RCPT_NOGATEWAY: encode(R_NOGATEWAY),
    RCPT_CANTHANDLE: encode(R_CANTHANDLE),
    RCPT_MAXRCPT: encode(R_MAXRCPT),
    RCPT_BMF: encode(R_BMF),
    RCPT_UNKNOWN: encode(R_UNKNOWN),
    RCPT_BADSRS: encode(R_BADSRS),
}

# Where a Session is in a package.
MESSAGE, SENDER, RECIPIENTS = 'message', 'sender', 'recipients'


# -- values -----------------------------------------------------------------


def has_unsafe(addr) -> bool:
    """A NUL (qmail's envelope separator), or a CR or LF, which would
    end a header line of the bounce that quotes the address."""
    return b'\0' in addr or b'\n' in addr or b'\r' in addr

class Config:
    """What the control files (and DATABYTES) say, as values.

    rcpthosts is None when control/rcpthosts is missing (every domain
    allowed), else a set of lowercased entries; morercpthosts anything
    answering `in` (a Cdb) or None."""

    def __init__(self, rcpthosts=None, morercpthosts=None, databytes=0,
                 timeout=DEFAULT_TIMEOUT, lifetime=DEFAULT_LIFETIME,
                 maxrcpt=DEFAULT_MAXRCPT, badmailfrom=frozenset(), rcptmap=None,
                 srs=None):
        self.srs = srs                      # None: no control/srs_domain
        self.badmailfrom = badmailfrom      # lowercased, as qmail-smtpd's
        self.rcptmap = rcptmap              # None: rcptcheck is off
        self.rcpthosts = rcpthosts
        self.morercpthosts = morercpthosts
        self.databytes = databytes
        self.timeout = timeout
        self.lifetime = lifetime
        self.maxrcpt = maxrcpt


def received(peer: Peer, protocol: bytes, now: float) -> bytes:
    """received.c's line for a client that gives no HELO:
    "Received: from HOST (INFO@IP)\\n  by LOCAL with QMTP; DATE\\n"."""
    parts = [b'Received: from ', safe(peer.remotehost), b' (']
    if peer.remoteinfo is not None:
        parts += [safe(peer.remoteinfo), b'@']
    parts += [safe(peer.remoteip), b')\n  by ', safe(peer.local),
              b' with ', protocol, b'; ', date822(now), b'\n']
    return b''.join(parts)


def crlf_to_lf(chunk: bytes, flagpendingcr: bool):
    """One piece of a CR-mode message: (bytes to store, flagpendingcr).

    Every CR LF becomes LF, any other CR stays; a CR ending the piece
    waits for the next one (the caller stores it if the message ends)."""
    if flagpendingcr:
        chunk = b'\r' + chunk
    flagpendingcr = chunk.endswith(b'\r')
    if flagpendingcr:
        chunk = chunk[:-1]
    return chunk.replace(b'\r\n', b'\n'), flagpendingcr


class HopCount:
    """Counts header lines starting "received" or "delivered" (any case;
    a prefix, as qmail-smtpd matches) in a message with LF line ends,
    fed in pieces; keeps at most HOPPREFIX bytes of a line."""

    def __init__(self):
        self.flaginheader = True
        self.hdr = b''
        self.hops = 0

    def feed(self, data: bytes):
        pos = 0
        n = len(data)
        while self.flaginheader and pos < n:
            if not self.hdr:
                # At a line start: the whole lines at once (one Python
                # turn a line made a header that never ends cost 70
                # times the body's CPU per byte).
                if data.startswith(b'\n', pos):
                    self.flaginheader = False     # the empty line
                    return
                k = data.find(b'\n\n', pos)
                if k >= 0:
                    self.hops += len(HOPLINE.findall(data, pos, k + 1))
                    self.flaginheader = False
                    return
                k = data.rfind(b'\n', pos)
                if k >= 0:
                    self.hops += len(HOPLINE.findall(data, pos, k + 1))
                    pos = k + 1
                    continue
            i = data.find(b'\n', pos)
            end = n if i < 0 else i
            if len(self.hdr) < HOPPREFIX:
                self.hdr += data[pos:min(end, pos + HOPPREFIX - len(self.hdr))]
            if i < 0:
                return
            if not self.hdr:
                self.flaginheader = False     # the empty line: body next
            else:
                low = self.hdr.lower()
                if low.startswith(b'received') or low.startswith(b'delivered'):
                    self.hops += 1
            self.hdr = b''
            pos = i + 1


# -- the session ------------------------------------------------------------

class Package:
    """One package's state, from its message length to its responses."""

    def __init__(self):
        self.qq = None
        self.qp = 0
        self.held = bytearray()     # the message so far; None once qmail-queue
                                    # started (or was tried), or never will
        self.envsender = None       # the sender, once known
        self.flagqqt = False        # qmail-queue could not be started or fed
        self.flagcr = None          # None until the message's first byte
        self.flagpendingcr = False
        self.size = 0
        self.flagoverflow = False
        self.hopcount = HopCount()
        self.flaghops = False
        self.sender = bytearray()
        self.flagsenderok = True
        self.flagbarf = False       # the sender is in badmailfrom
        self.rcpt = None            # Reader of the recipient being read
        self.addr = bytearray()
        self.flagaddrlong = False
        self.results = bytearray()  # one RCPT_* per recipient
        self.accepted = 0


class Session:
    """One QMTP connection: feed it bytes, send what it answers.

        s = Session(config, peer, newqueue, now)
        while not s.flagclosed: send(s.feed(received_bytes, now))
        ... s.eof() when the client goes away, s.timeout(now) when it
        is silent too long or past s.deadline; s.exitcode at the end.

    newqueue() starts qmail-queue and returns its QueueClient (or any
    object with put, fail, from_, to, close and pid); OSError from it or
    from the client's methods means "Zqqt failure"."""

    def __init__(self, config: Config, peer: Peer, newqueue, now: float,
                 protocol: bytes = b'QMTP', tick: float = None):
        self.config = config
        self.peer = peer
        self.newqueue = newqueue
        self.protocol = protocol
        start = now if tick is None else tick
        # The shell's clock for the deadline: the one it was set on.
        self.clock = time.time if tick is None else time.monotonic     # (see feed)
        self.deadline = start + config.lifetime if config.lifetime else None
        self.now = now
        self.flagclosed = False
        self.exitcode = EXIT_GONE
        self.replies = collections.deque()     # [ok, results, next]
        self.phase = MESSAGE
        self.reader = Reader(MAXMESSAGE)
        self.pkg = None

    # -- the interface to the shell --

    def greet(self) -> bytes:
        return b''                  # QMTP: the client speaks first

    def feed(self, data: bytes, now: float, tick: float = None) -> bytes:
        """Take bytes from the client; return the responses to send.
        now is the wall clock's time (the Received line, the "ok" stamp);
        tick, where given, a clock that never steps (time.monotonic) for
        the deadline, which counts the seconds the session lasted, as
        qmail's alarm() did, whatever the wall clock does."""
        if self.flagclosed:
            return b''
        if self.deadline is not None and (now if tick is None else tick) >= self.deadline:
            return self.timeout(now)
        self.now = now
        pos = 0
        try:
            while pos < len(data) and not self.flagclosed:
                pos = self.step(data, pos)
        except NetstringError:      # TooLong included: refused unread
            self.abort_queue()
            self.close(EXIT_PROTO)
        except CdbError:
            self.abort_queue()
            self.close(EXIT_TEMP)
        return self.take_replies()

    def eof(self) -> bytes:
        """The client went away: nothing of a package cut short is queued."""
        self.abort_queue()
        self.flagclosed = True
        return self.take_replies()

    def timeout(self, now: float) -> bytes:
        """Silent for timeoutqmtpd, or past the deadline (lifetimeqmtpd)."""
        self.abort_queue()
        self.close(EXIT_TEMP)
        return self.take_replies()

    def abort(self):
        """The shell cannot go on (a write failed): queue nothing more."""
        self.abort_queue()
        self.flagclosed = True

    # -- the state machine --

    def take_replies(self) -> bytes:
        """The responses due, at most REPLYBATCH recipients' worth: a
        package of many recipients is answered in pieces (the shell asks
        again until this says b''), from its one byte per recipient, never
        held as text whole (349,525 recipients fit in MAXENVELOPE)."""
        out = []
        left = REPLYBATCH
        while self.replies and left:
            entry = self.replies[0]
            ok, results, pos = entry
            end = min(len(results), pos + left)
            out.extend(ok if fate == RCPT_OK else FIXED_RESPONSE[fate]
                       for fate in results[pos:end])
            left -= end - pos
            if end == len(results):
                self.replies.popleft()
            else:
                entry[2] = end
        return b''.join(out)

    def close(self, exitcode: int):
        self.flagclosed = True
        self.exitcode = exitcode

    def step(self, data: bytes, pos: int) -> int:
        """Read from data[pos:] in the current phase; return the new pos."""
        r = self.reader
        pos, chunk = r.feed(data, pos)
        if self.phase == MESSAGE:
            if self.pkg is None and r.length is not None:
                self.begin(r.length)
                if self.flagclosed:
                    return pos
            if chunk:
                self.message(chunk)
            if r.done and not self.flagclosed:
                self.end_message()
        elif self.phase == SENDER:
            if r.length is not None and r.length > ADDRMAX:
                self.pkg.flagsenderok = False       # read past, unkept
            else:
                self.pkg.sender += chunk
            if r.done:
                self.end_sender()
        else:
            self.recipients(chunk)
            if r.done:
                if self.pkg.rcpt.started:
                    raise NetstringError('recipient cut off by the list end')
                self.finish()
        return pos

    def begin(self, length: int):
        """The message's length has arrived: its Received line is made
        (the time of its arrival), held until qmail-queue starts."""
        if length == 0:             # not even the line-end byte
            self.close(EXIT_PROTO)
            return
        pkg = self.pkg = Package()
        pkg.held += received(self.peer, self.protocol, self.now)

    def start_queue(self):
        """Start qmail-queue and give it what was held: the message so
        far, and the sender if it came."""
        pkg = self.pkg
        held, pkg.held = pkg.held, None
        try:
            pkg.qq = self.newqueue()
        except OSError:
            pkg.flagqqt = True
            return
        pkg.qp = getattr(pkg.qq, 'pid', None) or 0
        self.qq_call('put', bytes(held))
        if pkg.envsender is not None:
            self.qq_call('from_', pkg.envsender)

    def message(self, chunk: bytes):
        pkg = self.pkg
        if pkg.flagcr is None:
            if chunk[0] == LF:
                pkg.flagcr = False
            elif chunk[0] == CR:
                pkg.flagcr = True
            else:
                self.abort_queue()
                self.close(EXIT_PROTO)
                return
            chunk = chunk[1:]
        if pkg.flagcr:
            chunk, pkg.flagpendingcr = crlf_to_lf(chunk, pkg.flagpendingcr)
        self.store(chunk)

    def store(self, data: bytes):
        """Message bytes as stored; databytes counts these."""
        pkg = self.pkg
        if not data:
            return
        pkg.size += len(data)
        pkg.hopcount.feed(data)
        if pkg.flagoverflow:
            return
        if self.config.databytes and pkg.size > self.config.databytes:
            pkg.flagoverflow = True
            self.qq_fail()
            return
        if pkg.qq is not None:
            pkg.qq.put(data)
        elif pkg.held is not None:
            pkg.held += data
            if len(pkg.held) > HOLD:
                self.start_queue()

    def end_message(self):
        pkg = self.pkg
        if pkg.flagpendingcr:
            pkg.flagpendingcr = False
            self.store(b'\r')
        if pkg.hopcount.hops >= MAXHOPS:
            pkg.flaghops = True
            self.qq_fail()
        self.phase = SENDER
        self.reader = Reader(MAXENVELOPE)

    def end_sender(self):
        pkg = self.pkg
        if has_unsafe(pkg.sender):
            pkg.flagsenderok = False
        sender = bytes(pkg.sender) if pkg.flagsenderok else b''
        pkg.flagbarf = bmfcheck(sender, self.config.badmailfrom)
        pkg.sender = None
        pkg.envsender = sender
        self.qq_call('from_', sender)
        if not pkg.flagsenderok:
            self.qq_fail()
        self.phase = RECIPIENTS
        self.reader = Reader(MAXENVELOPE)
        pkg.rcpt = Reader(MAXENVELOPE)

    def recipients(self, chunk: bytes):
        """A piece of the recipient list: netstrings, one per recipient."""
        pkg = self.pkg
        relaylen = len(self.peer.relayclient or b'')
        pos = 0
        while pos < len(chunk):
            r = pkg.rcpt
            pos, piece = r.feed(chunk, pos)
            if r.length is not None and r.length + relaylen > ADDRMAX:
                pkg.flagaddrlong = True
            else:
                pkg.addr += piece
            if r.done:
                self.recipient(bytes(pkg.addr), pkg.flagaddrlong)
                pkg.rcpt = Reader(MAXENVELOPE)
                pkg.addr = bytearray()
                pkg.flagaddrlong = False

    def recipient(self, addr: bytes, flaglong: bool):
        """One recipient: refuse it, or hand it to qmail-queue.  Permanent
        refusals come before maxrcptqmtpd's Z, so that a client does not
        retry an address it could never send."""
        pkg = self.pkg
        if flaglong or has_unsafe(addr):
            fate = RCPT_CANTHANDLE
        elif pkg.flagbarf:
            fate = RCPT_BMF
        elif self.peer.relayclient is None and not addrallowed(
                addr, self.config.rcpthosts, self.config.morercpthosts):
            fate = RCPT_NOGATEWAY
        elif self.config.srs is not None and not self.config.srs.recipient_ok(addr):
            fate = RCPT_BADSRS
        elif self.config.rcptmap is not None and \
                self.config.rcptmap.check(addr) == rcptmap.REJECT:
            fate = RCPT_UNKNOWN
        elif self.config.maxrcpt and pkg.accepted >= self.config.maxrcpt:
            fate = RCPT_MAXRCPT
        else:
            fate = RCPT_OK
            if self.peer.relayclient is not None:
                addr += self.peer.relayclient
            if pkg.held is not None:
                self.start_queue()
            self.qq_call('to', addr)
            pkg.accepted += 1
        pkg.results.append(fate)

    def finish(self):
        """The package's last byte is in: close qmail-queue, respond."""
        pkg, self.pkg = self.pkg, None
        self.phase = MESSAGE
        self.reader = Reader(MAXMESSAGE)
        if not pkg.accepted:
            self.qq_fail(pkg)
        result = self.queue_result(pkg)
        if result:
            # qmail's order: the sender overrides qmail-queue's answer,
            # databytes the sender.  Never said over a message queued.
            if pkg.flaghops:
                result = R_HOPS
            if not pkg.flagsenderok:
                result = R_SENDER
            if pkg.flagoverflow:
                result = R_SIZE
        else:
            result = b'Kok %d qp %d' % (int(self.now), pkg.qp)
        if pkg.results:
            self.replies.append([encode(result), pkg.results, 0])

    def queue_result(self, pkg: Package) -> bytes:
        """qmail-queue's answer: b'' queued, else a Z or D text."""
        if pkg.qq is None:
            return R_QQT
        qq, pkg.qq = pkg.qq, None
        try:
            status = qq.close()
        except OSError:
            return R_QQT
        if pkg.flagqqt and not status:
            return R_QQT                # cannot happen: fail() was called
        status = status.replace('\r', '').replace('\n', '')
        return status.encode('utf-8', 'replace')

    def qq_call(self, name: str, *args):
        """A qmail-queue step; trouble makes the message fail, not us."""
        pkg = self.pkg
        if pkg.qq is None:
            return
        try:
            getattr(pkg.qq, name)(*args)
        except OSError:
            pkg.flagqqt = True
            pkg.qq.fail()

    def qq_fail(self, pkg=None):
        """The message must not be queued; qmail-queue, if started, will
        say so; if not, it never starts (finish() says why)."""
        pkg = self.pkg if pkg is None else pkg
        if pkg.qq is not None:
            pkg.qq.fail()
        else:
            pkg.held = None             # not started: it never will be

    def abort_queue(self):
        """Make sure qmail-queue queues nothing: fail, then close."""
        pkg, self.pkg = self.pkg, None
        if pkg is None or pkg.qq is None:
            return
        qq, pkg.qq = pkg.qq, None
        qq.fail()
        try:
            qq.close()
        except OSError:
            pass


# -- reading the world ------------------------------------------------------

def load_rcpthosts(ctl: control.Controls):
    """(rcpthosts, morercpthosts) as qmail's rcpthosts_init() reads them:
    (None, None) when control/rcpthosts is missing.  Raises OSError."""
    rcpthosts = control.readfile(ctl.path('rcpthosts'))
    if rcpthosts is None:
        return None, None
    try:
        morercpthosts = cdb.open_lookup(ctl.path('morercpthosts.cdb'))
    except FileNotFoundError:
        morercpthosts = None
    return frozenset(h.lower() for h in rcpthosts), morercpthosts


# What load_config reads (rcptcheck last: with it, ROUTING_FILES too).
CONFIG_FILES = ('me', 'rcpthosts', 'morercpthosts.cdb', 'badmailfrom', 'databytes',
                'timeoutqmtpd', 'lifetimeqmtpd', 'maxrcptqmtpd', 'rcptcheck',
                'srs_domain', 'srs_secrets', 'srs_maxage', 'srs_hashmin', 'srs_hashlength',
                'srs_separator')
_last_config = None         # (key, Config): a pool worker's previous session


def load_config(ctl: control.Controls, environ) -> Config:
    """The controls, with DATABYTES from environ over databytes.
    Raises OSError or CdbError: a control is unreadable.

    A pool worker keeps the previous session's Config while none of its
    files changed, as qmail-smtpd's load_config does (nothing changes
    a Config once made): with rcpthosts and badmailfrom of 100,000
    lines each session cost 50 ms of CPU to read them again."""
    global _last_config
    config, _last_config = kept_config(_last_config, ctl, environ, CONFIG_FILES,
                                       read_config)
    if environ.get(b'DATABYTES') is not None:
        # (a session's own, from tcprules: no reason to read again)
        config = copy.copy(config)
        config.databytes = scan_ulong(environ[b'DATABYTES'])
    return config


def warm(home=None):
    """qmail-listen's parent loads the Config its workers will share
    (smtpd.warm)."""
    warm_config(load_config, home)


retire = smtpd_retire   # qmail-listen's question after a session (smtpd.retire)


def descriptors() -> int:
    """qmail-listen's question: those the kept Config holds (smtpd.held)."""
    return held(_last_config)


def read_config(ctl: control.Controls, environ) -> Config:
    """The controls as read now (load_config)."""
    rcpthosts, morercpthosts = load_rcpthosts(ctl)
    databytes = ctl.int('databytes', 0)     # (DATABYTES: load_config)
    setting = None
    if ctl.line('srs_domain'):      # (the module only where SRS is set)
        from qmail.lib import srs
        setting = srs.load_ctl(ctl, reverse_only=True)
    return Config(
        srs=setting,
        rcpthosts=rcpthosts,
        morercpthosts=morercpthosts,
        databytes=databytes,
        timeout=max(ctl.seconds('timeoutqmtpd', DEFAULT_TIMEOUT), 1),
        lifetime=ctl.seconds('lifetimeqmtpd', DEFAULT_LIFETIME),
        maxrcpt=ctl.int('maxrcptqmtpd', DEFAULT_MAXRCPT),
        badmailfrom=frozenset(a.lower() for a in ctl.lines('badmailfrom')),
        rcptmap=rcptmap.load(os.path.dirname(ctl.directory) or '.'),  # None: no rcptcheck
    )


def queue_program(home: str, environ) -> str:
    program = environ.get(b'QMAILQUEUE')
    if program is None:
        return os.path.join(home, 'bin/qmail-queue')
    return os.fsdecode(program)


# -- the shell --------------------------------------------------------------

def serve(session, fdin: int = 0, fdout: int = 1) -> int:
    """Run one session over fdin and fdout; return its exit code.

    Each read waits at most the configured timeout, and never past the
    session's deadline (on the session's own clock, session.clock():
    time.monotonic when it was made with a tick).  The session needs config.timeout, deadline,
    flagclosed, exitcode, greet, feed, eof, timeout, abort and
    take_replies (asked again after each write until it says b'': a long
    answer comes in pieces)."""
    timeout = session.config.timeout
    poller = select.poll()
    poller.register(fdin, select.POLLIN)
    try:
        write_all(fdout, session.greet(), timeout)
        while not session.flagclosed:
            now = session.clock()
            wait = timeout
            if session.deadline is not None:
                wait = max(0, min(wait, session.deadline - now))
            if not poller.poll(int(wait * 1000)):
                write_all(fdout, session.timeout(time.time()), timeout)
                break
            try:
                data = os.read(fdin, READSIZE)
            except OSError:
                data = b''
            if not data:
                session.eof()
                break
            replies = session.feed(data, time.time(), session.clock())
            while replies:
                write_all(fdout, replies, timeout)
                replies = session.take_replies()
    except Gone:
        session.abort()
        return EXIT_GONE
    return session.exitcode


def complain(program: str, err: BaseException):
    """The last-resort guard's one line on fd 2: the exception, and where."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = ('%s:%d' % (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
             if tb is not None else '?')
    stderr.log(('%s: internal error: %s at %s\n'
                % (program, type(err).__name__, where)).encode())


def main(argv=None, home=None) -> int:
    """qmail-qmtpd; argv is ignored, as qmail's is.  home is for tests:
    qmail-qmtpd itself always runs in auto.QMAIL."""
    home = auto.QMAIL if home is None else home
    environ = os.environb
    session = None
    try:
        try:
            os.chdir(home)
            config = load_config(control.Controls('control').init(), environ)
        except (OSError, CdbError):
            return EXIT_TEMP        # no response is possible before a package
        if config.rcptmap is not None and config.rcptmap.warning:
            stderr.log(b'qmail-qmtpd: warning: %s\n'
                       % config.rcptmap.warning.encode('utf-8', 'replace'))
        program = queue_program(home, environ)
        if config.lifetime:
            _signal.alarm(config.lifetime + config.timeout + ALARM_SLACK)
        session = Session(config, peer_env(environ),
                          lambda: QueueClient(program), time.time(), tick=time.monotonic())
        return serve(session, 0, 1)
    except (MemoryError, KeyboardInterrupt):
        if session is not None:
            session.abort()
        return EXIT_TEMP
    except Exception as err:    # last resort: temporary, never a traceback
        if session is not None:
            session.abort()
        complain('qmail-qmtpd', err)
        return EXIT_TEMP


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
