"""qbiff: announce new mail the moment it arrives.

Runs as:  the user, from a .qmail file: |qbiff
Reads:    fd 0, the message (its Subject and the start of its body);
          USER, LOCAL and SENDER from qmail-local's environment; the
          utmp file, for USER's terminals.
Writes:   to each of USER's terminals that the user owns and has made
          owner-executable ("biff y"): "*** TO <LOCAL> FROM <SENDER>"
          and up to 78 bytes of subject and body, after a bell;
          unprintable bytes shown as '_' or '/'.
Exits:    0, always: a missed announcement is no reason to bounce or
          to retry a delivery.
See:      qbiff(1), biff(1), dot-qmail(5), utmp(5).
"""

import os
import struct
import sys

from qmail.except_ import internal_bug
from qmail.inject import (FEW_FIELDS_MAX, body_text, capped_readline, hfield_known,
                          read_header)
from qmail.maildirwatch import skipname
from qmail.lib.error import interrupt_kills

UTMP_FILE = '/var/run/utmp'     # glibc's _PATH_UTMP
TEXTMAX = 78

# glibc's struct utmp on Linux (384 bytes on every 64-bit and 32-bit
# ABI, time fields being 32-bit there): ut_type, ut_line, ut_user.
UTMP_SIZE = 384
UTMP_TYPE = struct.Struct('=h')
UTMP_LINE = slice(8, 40)
UTMP_USER = slice(44, 76)
UT_NAMESIZE = 32
USER_PROCESS = 7


def sanitize(s: bytes, replacement: int) -> bytes:
    return bytes(c if 32 <= c <= 126 else replacement for c in s)


def tofrom(local: bytes, sender: bytes) -> bytes:
    return sanitize(b'*** TO <' + local + b'> FROM <' + sender + b'>', 0x5f)


def excerpt(readline, read) -> bytes:
    """Four spaces, then the subject and the body, TEXTMAX bytes in all."""
    text = b'    '
    fields, body = read_header(readline, FEW_FIELDS_MAX)
    for h in fields:
        if hfield_known(h) == b'subject':
            text = (text + h[skipname(h):])[:TEXTMAX]
    if body is not None:
        text = (text + body)[:TEXTMAX]
        if len(text) < TEXTMAX:
            text = (text + body_text(read, TEXTMAX - len(text)))[:TEXTMAX]
    return sanitize(text, 0x2f)


def woof(tofrom_line: bytes, text: bytes) -> bytes:
    """The announcement: CR LF BEL, the two lines, each ending CR LF."""
    return b'\r\n\a' + tofrom_line + b'\r\n' + text + b'\r\n'


def ttys(utmp: bytes, user: bytes) -> list:
    """The terminal names (relative to /dev) where user is logged in.

    qbiff.c reads every record; Linux keeps records of ended sessions,
    so only USER_PROCESS ones count here.  Names with a '.' or a leading
    '/' are refused: nothing outside /dev is written to.
    """
    out = []
    for pos in range(0, len(utmp) - UTMP_SIZE + 1, UTMP_SIZE):
        rec = utmp[pos:pos + UTMP_SIZE]
        if UTMP_TYPE.unpack_from(rec)[0] != USER_PROCESS:
            continue
        if rec[UTMP_USER].split(b'\0', 1)[0] != user:
            continue
        line = rec[UTMP_LINE].split(b'\0', 1)[0]
        if not line or line.startswith(b'/') or b'.' in line:
            continue
        out.append(line)
    return out


def announce(line: bytes, message: bytes, uid: int) -> None:
    """Write message to /dev/line if it is ours and biff is on."""
    try:
        fd = os.open(b'/dev/' + line, os.O_WRONLY | os.O_APPEND |
                     os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o100 and st.st_uid == uid:
            os.write(fd, message)
    except OSError:
        pass
    finally:
        os.close(fd)


def qbiff(env, stdin) -> None:
    user = env.get(b'USER')
    sender = env.get(b'SENDER')
    local = env.get(b'LOCAL')
    if user is None or sender is None or local is None:
        return
    if len(user) > UT_NAMESIZE:
        return
    message = woof(tofrom(local, sender),
                   excerpt(capped_readline(stdin.readline), stdin.read))
    try:
        with open(UTMP_FILE, 'rb') as f:
            utmp = f.read()
    except OSError:
        return
    uid = os.getuid()
    for line in ttys(utmp, user):
        announce(line, message, uid)


def main(argv=None, stdin=None) -> int:
    """qbiff; stdin, a binary file standing in for fd 0 (tests)."""
    try:
        if stdin is None:
            stdin = open(0, 'rb', closefd=False)
        qbiff(os.environb, stdin)
    except (OSError, MemoryError):
        pass
    except Exception as err:    # last resort: never a traceback
        # Still 0: retrying would repeat the deliveries before |qbiff.
        internal_bug(b'qbiff', err)
    return 0


def run():
    interrupt_kills()
    sys.exit(main())


if __name__ == '__main__':
    run()
