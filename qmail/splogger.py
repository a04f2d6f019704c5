"""splogger: feed lines to syslog.

Runs as:  qmaill, as qmail-start's logger (or any user).
Usage:    splogger [tag [fac]]
Args:     tag default "splogger"; fac numeric, default the mail
          facility (2).
Reads:    stdin, one message per line.
Writes:   syslog: "<seconds>.<microseconds> message" with priority alert,
          warning or info by the message's first word; unprintable bytes
          become '?'; blank lines are skipped; a message is folded every
          799 characters, the continuation marked by '+' after the stamp,
          each piece sent as it fills; a last line without a newline is
          sent at the end of input.
Exits:    0 at end of input (or a read error, as at its end).
See:      splogger(8).
"""

import os
import sys
import syslog
import time


FOLD = 799


def stamp(t: float) -> str:
    sec = int(t)
    return '%d.%06d' % (sec, int((t - sec) * 1e6))


def priority(message: str) -> int:
    if message.startswith('alert:'):
        return syslog.LOG_ALERT
    if message.startswith('warning:'):
        return syslog.LOG_WARNING
    return syslog.LOG_INFO


_SAFE = bytes(c if 32 <= c <= 126 else 0x3F for c in range(256))


def entries(line: bytes, now: float):
    """(priority, text) for each syslog entry of one whole input line."""
    folder = Folder()
    return folder.feed(line + b'\n', now)


class Folder:
    """Input in pieces of any size to syslog entries: a line is cut every
    FOLD characters as they arrive, so a line of any length costs FOLD
    bytes of memory and one pass (splogger.c's 800-byte buffer)."""

    def __init__(self):
        self.cur = b''          # this line's characters not yet sent
        self.first = None       # (priority, stamp) once its first went

    def feed(self, chunk: bytes, now: float) -> list:
        out = []
        lines = chunk.split(b'\n')
        for i, part in enumerate(lines):
            self.cur += part.translate(_SAFE)
            while len(self.cur) >= FOLD:
                out.append(self.piece(self.cur[:FOLD], now))
                self.cur = self.cur[FOLD:]
            if i < len(lines) - 1:          # a newline ends the line
                out.extend(self.end(now))
        return out

    def end(self, now: float) -> list:
        """The rest of the line, at its newline or at the end of input."""
        out = [self.piece(self.cur, now)] if self.cur else []
        self.cur, self.first = b'', None
        return out

    def piece(self, text: bytes, now: float):
        text = text.decode('ascii')
        if self.first is None:
            self.first = (priority(text), stamp(now))
            return self.first[0], '%s %s' % (self.first[1], text)
        return self.first[0], '%s+%s' % (self.first[1], text)


def facility_of(arg: str) -> int:
    """The syslog facility of splogger's fac argument, read as qmail's
    scan_ulong reads it: the leading digits ("1x6" is 1), none is 0; a
    number too big wraps as C's unsigned long does, and reaches openlog
    as a C int (whose check then keeps the default facility)."""
    value = 0
    for c in os.fsencode(arg):       # scan_ulong on a 64-bit unsigned long
        if not 48 <= c <= 57:
            break
        value = (value * 10 + c - 48) % (1 << 64)
    fac = ((value << 3) % (1 << 64)) % (1 << 32)
    return fac - (1 << 32) if fac >= 1 << 31 else fac


def tag_of(arg: str) -> str:
    """The tag as syslog takes it (text): bytes that are not UTF-8 (a
    Latin-1 name in a run script) become '?', as unprintable bytes do in
    messages, where they made openlog fail and the logger exit at once."""
    return os.fsencode(arg).decode('utf-8', 'replace').replace('\ufffd', '?')


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    tag = tag_of(argv[0]) if argv else 'splogger'
    facility = facility_of(argv[1]) if len(argv) > 1 else syslog.LOG_MAIL
    syslog.openlog(tag, 0, facility)
    folder = Folder()
    while True:
        try:
            chunk = os.read(0, 4096)
        except OSError:             # as splogger.c: a read error ends the input
            chunk = b''
        entries = folder.feed(chunk, time.time()) if chunk else folder.end(time.time())
        for prio, text in entries:
            syslog.syslog(prio, text)
        if not chunk:
            return 0


def run():
    try:
        code = main()
    except KeyboardInterrupt:
        code = 0
    except Exception:
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
