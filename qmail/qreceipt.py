"""qreceipt: respond to delivery notice requests.

Runs as:  the user, from a .qmail file: |qreceipt youraddress
Reads:    fd 0, the message's header; SENDER, the envelope sender, from
          qmail-local's environment; QMAILQUEUE.
Writes:   if youraddress is listed in a Notice-Requested-Upon-Delivery-To
          field and the sender is neither <> nor #@[]: a success notice
          to qmail-queue ($QMAILQUEUE, else HOME/bin/qmail-queue) with
          the envelope F<> T<SENDER>, quoting the Message-ID field.
Exits:    0 notice sent, or none asked for; 100 usage (also when SENDER
          is not set), a Notice-Requested-Upon-Delivery-To field that
          does not parse, or qmail-queue's permanent failure; 111 read
          error or qmail-queue's temporary failure.
See:      qreceipt(1), envelopes(5), dot-qmail(5).
"""

import os
import sys

from qmail.except_ import byteargs, internal_bug, say
from qmail.forward import open_queue
from qmail.inject import header_fields, hfield_known
from qmail.inject_token import ParseError, addrlist, parse, quote2, unquote
from qmail.lib.error import interrupt_kills

USAGE = b'qreceipt: usage: qreceipt deliveryaddress'
FATAL = b'qreceipt: fatal: '
BUFSIZE = 65536

# Senders that must never get mail back: the null sender and qmail's
# double-bounce sender (envelopes(5)).
NO_RECEIPT = (b'', b'#@[]')


class Fatal(Exception):
    def __init__(self, code: int, text: bytes):
        super().__init__(text)
        self.code = code
        self.text = text


def requested(field: bytes, target: bytes) -> bool:
    """Whether a Notice-Requested-Upon-Delivery-To field lists target.
    Fatal(100) if the field is not an address list."""
    found = []

    def check(addr):
        if unquote(addr) == target:
            found.append(True)
        return addr

    try:
        addrlist(parse(field), check)
    except ParseError:
        shown = field.rstrip(b'\n').replace(b'\n', b' ')
        raise Fatal(100, b'unable to parse this: ' + shown) from None
    return bool(found)


def scan_header(fields, target: bytes):
    """(flagreceipt, messageid field or None) from the header fields."""
    flagreceipt = False
    messageid = None
    for h in fields:
        name = hfield_known(h)
        if name == b'message-id':
            messageid = h
        elif name == b'notice-requested-upon-delivery-to':
            if requested(h, target):
                flagreceipt = True
    return flagreceipt, messageid


def notice(target: bytes, returnpath: bytes, messageid) -> bytes:
    """The success notice, as qreceipt.c words it."""
    quoted = quote2(returnpath)
    out = [b'From: DELIVERY NOTICE SYSTEM <', quoted, b'>\n',
           b'To: <', quoted, b'>\n',
           b'Subject: success notice\n',
           b'\n',
           b'Hi! This is the qreceipt program. Your message was delivered'
           b' to the\nfollowing address: ', target,
           b'. Thanks for asking.\n']
    if messageid is not None:
        out += [b'Your ', messageid]
    return b''.join(out)


def send(message: bytes, recipient: bytes) -> None:
    try:
        qq, status = open_queue()
    except OSError:
        raise Fatal(111, b'unable to fork') from None
    if qq is not None:
        qq.put(message)
        qq.from_(b'')
        qq.to(recipient)
        status = qq.close()
    if status:
        if status[:1] == 'D':
            raise Fatal(100, b'permanent qmail-queue error')
        raise Fatal(111, b'temporary qmail-queue error')


def qreceipt(args, stdin) -> int:
    if not args:
        say(USAGE)
        return 100
    target = args[0]
    returnpath = os.environb.get(b'SENDER')
    if returnpath is None:
        say(USAGE)
        return 100
    # One field at a time, each whole, as qreceipt.c reads them: an
    # address list is only known once all of it is read.
    try:
        flagreceipt, messageid = scan_header(header_fields(stdin.readline, []), target)
    except OSError:
        raise Fatal(111, b'read error') from None
    # The body is not needed; qreceipt.c reads it only to throw it away.
    if not flagreceipt or returnpath in NO_RECEIPT:
        return 0
    send(notice(target, returnpath, messageid), returnpath)
    return 0


def main(argv=None, stdin=None) -> int:
    """qreceipt with argv (no program name); stdin, a binary file
    standing in for fd 0 (tests)."""
    if argv is None:
        argv = sys.argv[1:]
    try:
        if stdin is None:
            try:
                stdin = open(0, 'rb', buffering=BUFSIZE, closefd=False)
            except OSError:             # fd 0 closed
                raise Fatal(111, b'read error') from None
        return qreceipt(byteargs(argv), stdin)
    except Fatal as err:
        say(FATAL + err.text)
        return err.code
    except MemoryError:
        say(FATAL + b'out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'qreceipt', err)


def run():
    interrupt_kills()
    sys.exit(main())


if __name__ == '__main__':
    run()
