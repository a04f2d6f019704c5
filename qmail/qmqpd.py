"""qmail-qmqpd: receive mail via QMQP, from trusted clients.

Runs as:  qmaild, under tcpserver, whose rules must let in only the
          preauthorized clients (mini-qmail hosts running qmail-qmqpc):
          this server relays to any destination.  The connection on fd 0
          and fd 1.  cwd HOME (auto.QMAIL, never the environment).
Reads:    fd 0, one QMQP packet: a netstring holding the message, the
          envelope sender and the recipients, each a netstring.  The
          environment of tcp-environ(5): TCPREMOTEIP, TCPREMOTEHOST,
          TCPREMOTEINFO, TCPLOCALHOST, TCPLOCALIP; and QMAILQUEUE.  No
          control file.
Writes:   fd 1, one response netstring for the message: "Kok <time> qp
          <pid>", or qmail-queue's Z or D text, or "Dsorry, I can't
          accept addresses like that (#5.1.3)".  The message, behind a
          Received line "with QMQP", and its envelope into qmail-queue
          ($QMAILQUEUE, else HOME/bin/qmail-queue), which starts when the
          message's length has arrived and is fed the message as it does.
Exits:    0 after the response, or when the client closes the connection
          before the packet's end (then nothing is queued) or cannot be
          written the response (the message is queued by then); 100 when it
          breaks the protocol (a malformed netstring, a length above
          MAXPACKET, a packet without a message or a sender); 111 after
          TIMEOUT seconds of silence or LIFETIME seconds in all.  QMQP
          answers only at the end of the packet, so these just close.
Trusts:   the client to choose any sender and recipients (tcpserver's
          rules decide who that is), but not with memory or time: every
          length is bounded before it is believed, an address is kept
          only up to 999 bytes, and the client's text reaches the
          Received line only through safe().
See:      qmail-qmqpd(8), qmail-qmqpc(8), tcp-environ(5);
          cr.yp.to/proto/qmqp.html; cr.yp.to/proto/netstrings.txt.

Behaviour is qmail 1.03's: the message is stored as it comes (QMQP
carries LF line ends); a sender or recipient of 1000 bytes or more, or
holding a NUL (or, not qmail, a CR or LF), refuses the whole message ("Dsorry, I can't accept
addresses like that (#5.1.3)"); bytes after the packet are ignored.
Added: when qmail-queue cannot be started the packet is read to its end
and answered "Zqqt failure (#4.3.0)" (qmail closed the connection); a
client silent for TIMEOUT seconds is cut off (qmail had only its alarm).

Limits (fixed; QMQP clients are trusted, so no control file):
  MAXPACKET  2000000000  bytes in the packet netstring (qmail's getlen()
                         gave up near 2e9); every inner netstring lies
                         within it.
  LIFETIME   3600        seconds a connection may last (qmail-qmqpd's
                         alarm(3600)); SIGALRM at LIFETIME + TIMEOUT +
                         qmtpd.ALARM_SLACK ends a process stuck in a write.
  TIMEOUT    1200        seconds of silence before the connection is cut.
  ADDRMAX    999         bytes in an address (qmail's buf[1000]).

Session is the protocol, fed bytes and the time, answering bytes; the
shell is qmail-qmtpd's serve(), and the Received line its received().
"""

import os
import sys
import time

import _signal    # not `signal`: its enum import costs start-up time

from qmail.lib import auto
from qmail.lib.netstring import NetstringError, Reader, encode
from qmail.lib.qqtalk import QueueClient
from qmail.qmtpd import (ALARM_SLACK, EXIT_GONE, EXIT_PROTO, EXIT_TEMP,
                         R_QQT, complain, has_unsafe, queue_program, received,
                         serve)
from qmail.smtpd import Peer, peer_env

MAXPACKET = 2000000000
LIFETIME = 3600
TIMEOUT = 1200
ADDRMAX = 999

R_ADDRESSES = b"Dsorry, I can't accept addresses like that (#5.1.3)"

# The inner netstring being read.
MESSAGE, SENDER, RECIPIENT = 'message', 'sender', 'recipient'


class Config:
    """The session's two clocks, fixed for qmail-qmqpd (see Limits)."""

    def __init__(self, timeout=TIMEOUT, lifetime=LIFETIME):
        self.timeout = timeout
        self.lifetime = lifetime


class Session:
    """One QMQP connection, one message: feed it bytes, send what it
    answers, as qmail-qmtpd's Session (same shell interface).

    newqueue() starts qmail-queue and returns its QueueClient (or any
    object with put, fail, from_, to, close and pid); OSError from it or
    from the client's methods means "Zqqt failure"."""

    def __init__(self, config: Config, peer: Peer, newqueue, now: float,
                 tick: float = None):
        self.config = config
        self.peer = peer
        self.newqueue = newqueue
        start = now if tick is None else tick
        # The shell's clock for the deadline: the one it was set on.
        self.clock = time.time if tick is None else time.monotonic     # as qmail-qmtpd's
        self.deadline = start + config.lifetime if config.lifetime else None
        self.now = now
        self.flagclosed = False
        self.exitcode = EXIT_GONE
        self.replies = []
        self.packet = Reader(MAXPACKET)
        self.inner = Reader(MAXPACKET)   # within the packet, so bounded by it
        self.field = MESSAGE
        self.qq = None
        self.qp = 0
        self.flagqqstarted = False
        self.flagqqt = False
        self.flagok = True          # every address acceptable so far
        self.addr = bytearray()
        self.flagaddrlong = False

    # -- the interface to the shell --

    def greet(self) -> bytes:
        return b''

    def feed(self, data: bytes, now: float, tick: float = None) -> bytes:
        if self.flagclosed:
            return b''
        if self.deadline is not None and (now if tick is None else tick) >= self.deadline:
            return self.timeout(now)
        self.now = now
        pos = 0
        try:
            while pos < len(data) and not self.flagclosed:
                pos, chunk = self.packet.feed(data, pos)
                self.contents(chunk)
                if self.packet.done:
                    self.finish()
        except NetstringError:
            self.abort_queue()
            self.close(EXIT_PROTO)
        return self.take_replies()

    def take_replies(self) -> bytes:
        """The responses due (one per message: never many)."""
        out = b''.join(self.replies)
        self.replies = []
        return out

    def eof(self) -> bytes:
        self.abort_queue()
        self.flagclosed = True
        return b''

    def timeout(self, now: float) -> bytes:
        self.abort_queue()
        self.close(EXIT_TEMP)
        return b''

    def abort(self):
        self.abort_queue()
        self.flagclosed = True

    # -- the state machine --

    def close(self, exitcode: int):
        self.flagclosed = True
        self.exitcode = exitcode

    def contents(self, chunk: bytes):
        """A piece of the packet's payload: the inner netstrings."""
        pos = 0
        while pos < len(chunk):
            r = self.inner
            pos, piece = r.feed(chunk, pos)
            if self.field == MESSAGE:
                if not self.flagqqstarted and r.length is not None:
                    self.begin()
                if piece and self.qq is not None:
                    self.qq.put(piece)
            elif r.length is not None and r.length > ADDRMAX:
                self.flagaddrlong = True        # read past, unkept
            else:
                self.addr += piece
            if r.done:
                self.end_field()
                self.inner = Reader(MAXPACKET)

    def begin(self):
        """The message's length has arrived: start qmail-queue."""
        self.flagqqstarted = True
        try:
            self.qq = self.newqueue()
        except OSError:
            self.flagqqt = True
            return
        self.qp = getattr(self.qq, 'pid', None) or 0
        self.qq.put(received(self.peer, b'QMQP', self.now))

    def end_field(self):
        if self.field == MESSAGE:
            self.field = SENDER
            return
        addr = bytes(self.addr)
        flagok = not self.flagaddrlong and not has_unsafe(addr)
        self.addr = bytearray()
        self.flagaddrlong = False
        if not flagok:
            self.flagok = False
            addr = b''
        if self.field == SENDER:
            self.qq_call('from_', addr)
            self.field = RECIPIENT
        elif flagok:
            self.qq_call('to', addr)
        if not flagok and self.qq is not None:
            self.qq.fail()

    def finish(self):
        """The packet's last byte is in: close qmail-queue, respond, stop."""
        if self.field != RECIPIENT or self.inner.started:
            raise NetstringError('packet without a message and a sender')
        result = self.queue_result()
        if not result:
            result = b'Kok %d qp %d' % (int(self.now), self.qp)
        elif not self.flagok:
            result = R_ADDRESSES    # never said over a message queued
        self.replies.append(encode(result))
        self.close(EXIT_GONE)

    def queue_result(self) -> bytes:
        if self.qq is None:
            return R_QQT
        qq, self.qq = self.qq, None
        try:
            status = qq.close()
        except OSError:
            return R_QQT
        if self.flagqqt and not status:
            return R_QQT
        status = status.replace('\r', '').replace('\n', '')
        return status.encode('utf-8', 'replace')

    def qq_call(self, name: str, *args):
        if self.qq is None:
            return
        try:
            getattr(self.qq, name)(*args)
        except OSError:
            self.flagqqt = True
            self.qq.fail()

    def abort_queue(self):
        qq, self.qq = self.qq, None
        if qq is None:
            return
        qq.fail()
        try:
            qq.close()
        except OSError:
            pass


def main(argv=None, home=None) -> int:
    """qmail-qmqpd; argv is ignored, as qmail's is.  home is for tests:
    qmail-qmqpd itself always runs in auto.QMAIL."""
    home = auto.QMAIL if home is None else home
    environ = os.environb
    session = None
    try:
        try:
            os.chdir(home)
        except OSError:
            return EXIT_TEMP
        program = queue_program(home, environ)
        config = Config()
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
        complain('qmail-qmqpd', err)
        return EXIT_TEMP


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
