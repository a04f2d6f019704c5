"""forward: forward new mail to one or more addresses.

Usage:    forward address [address ...]
Runs as:  the user, from a .qmail file: |forward address ...
Reads:    fd 0, the message; NEWSENDER (the forwarding sender,
          dot-qmail(5)) and DTLINE (the Delivered-To line, with its
          newline) from qmail-local's environment; QMAILQUEUE.
Writes:   DTLINE and the message to qmail-queue ($QMAILQUEUE, else
          HOME/bin/qmail-queue, started in HOME), with the envelope
          F<NEWSENDER> and one T<address> per argument; fd 2,
          "forward: qp <pid>" (qmail-queue's pid) on success.
Exits:    0 queued; 100 no address, NEWSENDER or DTLINE not set, or
          qmail-queue's permanent failure; 111 qmail-queue's temporary
          failure or a read error on fd 0.
See:      forward(1), qmail-command(8), dot-qmail(5), qmail-queue(8).

reinject() and send_on() serve condredirect and srsfilter too; open_queue()
serves qreceipt.
"""

import os
import sys

from qmail.lib import auto
from qmail.lib.qqtalk import QueueClient, queue_program, status_text
from qmail.except_ import byteargs, errstr, internal_bug, say
from qmail.lib.error import interrupt_kills

BUFSIZE = 65536
FATAL = b'forward: fatal: '


class ReadError(Exception):
    """fd 0 failed while the message was being copied."""

    def __init__(self, err: OSError):
        super().__init__(err)
        self.err = err


def open_queue():
    """qmail_open: qmail-queue started in the qmail home, as qmail's
    child does before its exec.  (client, None), or (None, status) when
    the home is unreachable -- qmail's child would exit 61 there.
    OSError if no pipe can be made."""
    try:
        os.chdir(auto.QMAIL)
    except OSError:
        return None, status_text(61)
    return QueueClient(queue_program()), None


def reinject(sender: bytes, dtline: bytes, recipients, infd: int = 0):
    """DTLINE and fd infd's bytes to qmail-queue under a new envelope.

    (status, qp): qmail's status text ('' for success, else Z... or
    D...) and qmail-queue's pid.  ReadError if infd fails; OSError if
    qmail-queue cannot be started ("unable to fork").
    """
    qq, status = open_queue()
    if qq is None:
        return status, 0
    qq.put(dtline)
    while True:
        try:
            chunk = os.read(infd, BUFSIZE)
        except OSError as err:
            # An unfinished envelope makes qmail-queue give up; close()
            # waits for it so no zombie is left behind.
            qq.fail()
            qq.close()
            raise ReadError(err) from None
        if not chunk:
            break
        qq.put(chunk)
    qp = qq.pid or 0
    qq.from_(sender)
    for recipient in recipients:
        qq.to(recipient)
    return qq.close(), qp


def exit_for(status: str) -> int:
    """qmail's *qqx == 'D' ? 100 : 111."""
    return 100 if status[:1] == 'D' else 111


def send_on(name: bytes, sender: bytes, dtline: bytes, recipients) -> int:
    """reinject(), said on fd 2 as forward, condredirect and srsfilter
    say it: "name: qp <pid>" and 0, else "name: fatal: why" and 100 or
    111."""
    fatal = name + b': fatal: '
    try:
        status, qp = reinject(sender, dtline, recipients)
    except ReadError as err:
        say(fatal + b'unable to read message: ' + errstr(err.err))
        return 111
    except OSError as err:
        say(fatal + b'unable to fork: ' + errstr(err))
        return 111
    if status:
        say(fatal + status[1:].encode('utf-8', 'replace'))
        return exit_for(status)
    say(b'%s: qp %d' % (name, qp))
    return 0


def forward(args) -> int:
    if not args:
        # qmail's forward queued the message to nobody and exited 0: mail
        # for "|forward $UNSET" was gone.  Refused as condredirect
        # refuses a missing address.
        say(b'forward: usage: forward address [ address ... ]')
        return 100
    env = os.environb
    sender = env.get(b'NEWSENDER')
    if sender is None:
        say(FATAL + b'NEWSENDER not set')
        return 100
    dtline = env.get(b'DTLINE')
    if dtline is None:
        say(FATAL + b'DTLINE not set')
        return 100
    return send_on(b'forward', sender, dtline, args)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:
        return forward(byteargs(argv))
    except MemoryError:
        say(FATAL + b'out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'forward', err)


def run():
    interrupt_kills()
    sys.exit(main())


if __name__ == '__main__':
    run()
