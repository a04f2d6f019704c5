"""maildirwatch: look for new mail in a maildir.

Runs as:  the maildir's owner, in a VT100-compatible window, with no
          arguments; it runs until killed.
Reads:    MAILDIR (the maildir); every 30 seconds, the messages in
          MAILDIR/new, oldest first.
Writes:   fd 1: the window cleared, then per message "FROM <sender> TO
          <recipient>" (from its Return-Path and Delivered-To), its
          From field in bold, and up to 158 bytes of subject and body;
          unprintable bytes shown as '/' or '?'.
Removes:  files in MAILDIR/tmp untouched for 36 hours (maildir(5)).
Exits:    111 MAILDIR not set or unreachable, new/ unreadable, or a
          message that cannot be read; 0 when fd 1 goes away.
See:      qmail 1.03 maildirwatch(1), maildir(5).
"""

import os
import re
import sys
import time

from qmail.except_ import internal_bug, say
from qmail.inject import (FEW_FIELDS_MAX, body_text, capped_readline, hfield_known,
                          read_header)
from qmail.maildir2mbox import Fatal, maildir_chdir, maildir_clean, maildir_scan, open_message

FATAL = b'maildirwatch: fatal: '
INTERVAL = 30           # "twice per minute"
TEXTMAX = 158           # two lines of an 80-column window
CLEAR = b'\033[;H\033[;J'
BOLD, PLAIN = b'\033[1m', b'\033[0m'

_SKIPNAME = re.compile(rb'[^:]*:?[ \t\r\n]*')   # hfield_skipname
_UNPRINTABLE = re.compile(rb'[^\x20-\x7e]')


def skipname(h: bytes) -> int:
    """Where a field's value starts: after the colon and white space."""
    return _SKIPNAME.match(h).end()


def printable(s: bytes, replacement: bytes) -> bytes:
    return _UNPRINTABLE.sub(replacement, s)


def summary(readline, read) -> bytes:
    """The summary of one message, read through readline and read."""
    sender = b'?'
    recipient = b'?'
    fromline = b''
    text = b''
    fields, body = read_header(readline, FEW_FIELDS_MAX)
    for h in fields:
        name = hfield_known(h)
        if name == b'subject':
            text = (text + h[skipname(h):])[:TEXTMAX]
        elif name == b'delivered-to':
            i = skipname(h)
            if i < len(h):
                recipient = h[i:-1]
        elif name == b'return-path':
            i = skipname(h)
            if i < len(h):
                sender = h[i:-1]
        elif name == b'from':
            fromline = h[:-1]
    if body is not None:
        text = (text + body)[:TEXTMAX]
        if len(text) < TEXTMAX:
            text = (text + body_text(read, TEXTMAX - len(text)))[:TEXTMAX]
    out = [b'FROM ', printable(sender, b'?'),
           b' TO <', printable(recipient, b'?'), b'>\n']
    if fromline:
        out += [BOLD, printable(fromline, b'/'), PLAIN, b'\n']
    out += [printable(text, b'/'), b'\n\n']
    return b''.join(out)


def scan_once(now: int) -> bytes:
    """The screen for the maildir in the cwd: clear, then summaries."""
    maildir_clean(now)
    out = [CLEAR]
    for _, path in maildir_scan((b'new',), now):
        try:
            f = open_message(path)
        except OSError:
            continue        # delivered elsewhere since the scan
        with f:
            try:
                out.append(summary(capped_readline(f.readline), f.read))
            except OSError:
                raise Fatal(b'trouble reading new message') from None
    return b''.join(out)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(argv=None) -> int:
    try:
        maildir_chdir(os.environb)
        while True:
            screen = scan_once(int(time.time()))
            try:
                write_all(1, screen)
            except OSError:
                return 0    # the window is gone; maildirwatch.c dies of SIGPIPE
            time.sleep(INTERVAL)
    except Fatal as err:
        say(FATAL + err.text)
        return 111
    except MemoryError:
        say(FATAL + b'out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'maildirwatch', err)


def run():
    import signal
    # ^C ends it quietly, as it ends the C program.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(main())


if __name__ == '__main__':
    run()
