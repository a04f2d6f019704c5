"""splogger: feed lines to syslog.

Runs as:  qmaill, as qmail-start's logger (or any user).
Args:     splogger [tag [fac]]: tag default "splogger"; fac numeric,
          default the mail facility (2).
Reads:    stdin, one message per line.
Writes:   syslog: "<seconds>.<microseconds> message" with priority alert,
          warning or info by the message's first word; unprintable bytes
          become '?'; blank lines are skipped; a message is folded every
          799 characters, the continuation marked by '+' after the stamp.
Exits:    0 at end of input.
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


def entries(line: bytes, now: float):
    """(priority, text) for each syslog entry of one input line."""
    text = ''.join(chr(c) if 32 <= c <= 126 else '?' for c in line)
    if not text:
        return []
    pieces = [text[i:i + FOLD] for i in range(0, len(text), FOLD)]
    st = stamp(now)
    prio = priority(pieces[0])
    out = [(prio, '%s %s' % (st, pieces[0]))]
    out.extend((prio, '%s+%s' % (st, p)) for p in pieces[1:])
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    tag = argv[0] if argv else 'splogger'
    facility = syslog.LOG_MAIL
    if len(argv) > 1:
        digits = ''.join(c for c in argv[1] if c.isdigit())
        facility = int(digits or 0) << 3
    syslog.openlog(tag, 0, facility)
    buf = b''
    while True:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b'\n')
        for line in lines:
            for prio, text in entries(line, time.time()):
                syslog.syslog(prio, text)
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
