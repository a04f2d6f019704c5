"""qmail-newu: compile users/assign into users/cdb for qmail-lspawn.

Runs as:  root (the admin), by hand after changing users/assign.
Reads:    HOME/users/assign, qmail-users(5): lines
            =local:user:uid:gid:homedir:dash:ext:   (simple)
            +loc:user:uid:gid:homedir:dash:pre:     (wildcard)
          ended by a line starting with '.'; nothing after it is read.
Writes:   HOME/users/cdb.tmp, then renames it to HOME/users/cdb (mode
          0644), so qmail-lspawn sees the old database or the new one.
Exits:    0 done; 111 with "qmail-newu: fatal: ..." on stderr for a bad
          line (its number said, beyond qmail), a missing final '.', or
          trouble reading or writing, and then users/cdb is left alone.
Trusts:   the admin's users/assign; it is checked for form only.
See:      qmail-newu(8), qmail-users(5), qmail-lspawn(8); the keys are
          described in qmail/lib/users.py, which reads them.

As qmail-newu.c parses a line: the part before the first ':' less its
first character is the address; a first character of '+' makes a
wildcard, and ANY other first character a simple assignment ('=' by
convention).  After the address come exactly six ':'-terminated fields;
anything after the sixth ':' is ignored.  A line must end in a newline
and contain no NUL.  Keys are lowercased, and wildchars too: qmail-newu.c
keeps a wildchar's case, so that a wildcard written '+JOE:' never
matched (lookups lowercase the address, as qmail-users(5) promises), and
its mail went to the catch-all instead.
"""

import os
import sys

from qmail.lib import auto, control
from qmail.lib.cdb import InstallError, install

FATAL = 'qmail-newu: fatal: '


class Fatal(Exception):
    """Stop with exit 111 and this message after FATAL."""


def parse_assign_line(line: bytes):
    """One assignment line (with its newline): (key, data, wildchar).

    wildchar is the byte a wildcard adds to the wildchars, or b''.
    Raises Fatal for a bad line.
    """
    if not line.endswith(b'\n') or b'\0' in line:
        raise Fatal('bad format in users/assign')
    i = line.find(b':')
    if i <= 0:
        raise Fatal('bad format in users/assign')
    address = line[1:i].lower()
    if line[0:1] == b'+':
        key = b'!' + address
        wildchar = line[i - 1:i].lower() if i >= 2 else b''
    else:
        key = b'!' + address + b'\0'
        wildchar = b''
    fields = line[i + 1:].split(b':', 6)
    if len(fields) < 7:                     # fewer than six ':'
        raise Fatal('bad format in users/assign')
    return key, b'\0'.join(fields[:6]), wildchar


def assign_records(lines):
    """The (key, data) records of users/cdb, in qmail-newu's order.

    lines: the lines of users/assign, each with its newline (the last
    may lack it).  The records of the assignments in order, then the
    "" key holding the wildchars.  Raises Fatal for a bad line or a
    missing '.' line.
    """
    wildchars = b''
    for number, line in enumerate(lines, 1):
        if line.startswith(b'.'):
            yield b'', wildchars
            return
        try:
            key, data, wildchar = parse_assign_line(line)
        except Fatal as err:    # (beyond qmail: which line)
            raise Fatal('%s, line %d' % (err, number)) from None
        if wildchar and wildchar not in wildchars:
            wildchars += wildchar
        yield key, data
    raise Fatal("bad format in users/assign, no '.' line at its end")


def read_lines(f):
    """The lines of f; a read error is Fatal."""
    while True:
        try:
            line = f.readline()
        except OSError as err:
            raise Fatal('unable to read users/assign') from err
        if not line:
            return
        yield line


def newu(home: str) -> None:
    users = os.path.join(home, 'users')
    try:
        f = control.open_regular(os.path.join(users, 'assign'))
    except OSError as err:
        raise Fatal('unable to open users/assign') from err
    with f:
        try:
            install(os.path.join(users, 'cdb.tmp'),
                    os.path.join(users, 'cdb'),
                    assign_records(read_lines(f)))
        except InstallError as err:
            if err.step == 'open':
                raise Fatal('unable to open users/cdb.tmp') from err
            if err.step == 'write':
                raise Fatal('unable to write users/cdb.tmp') from err
            raise Fatal('unable to move users/cdb.tmp to users/cdb') from err


def main(argv=None) -> int:
    home = auto.QMAIL
    if not os.path.isdir(home):
        sys.stderr.write(FATAL + 'unable to chdir\n')
        return 111
    try:
        newu(home)
    except Fatal as err:
        sys.stderr.write(FATAL + '%s\n' % err)
        return 111
    return 0


def run():
    try:
        code = main()
    except MemoryError:
        sys.stderr.write(FATAL + 'out of memory\n')
        code = 111
    except Exception as e:                  # last resort: temporary
        sys.stderr.write(FATAL + 'internal bug: %s\n' % type(e).__name__)
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
