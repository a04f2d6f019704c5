"""maildirmake: create a maildir for incoming mail.

Runs as:  the user who will own the maildir: maildirmake dir
Creates:  dir, dir/tmp, dir/new, dir/cur, each mode 0700 (umask 077).
Exits:    0 made; 111 a directory could not be made (dir must not
          exist); 100 usage.
See:      maildirmake(1), maildir(5).
"""

import os
import sys

from qmail.except_ import byteargs, errstr, internal_bug, say

USAGE = b'maildirmake: usage: maildirmake name'
FATAL = b'maildirmake: fatal: '
SUBDIRS = (b'tmp', b'new', b'cur')    # tmp first: maildir(5) writers need it


def maildirmake(name: bytes) -> int:
    try:
        os.mkdir(name, 0o700)
    except OSError as err:
        say(FATAL + b'unable to mkdir ' + name + b': ' + errstr(err))
        return 111
    for sub in SUBDIRS:
        path = name + b'/' + sub
        try:
            os.mkdir(path, 0o700)
        except OSError as err:
            say(FATAL + b'unable to mkdir ' + path + b': ' + errstr(err))
            return 111
    return 0


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:
        args = byteargs(argv)
        if not args:
            say(USAGE)
            return 100
        # Nobody else is to read the mail; restored for in-process callers.
        oldmask = os.umask(0o077)
        try:
            return maildirmake(args[0])
        finally:
            os.umask(oldmask)
    except MemoryError:
        say(FATAL + b'out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'maildirmake', err)


def run():
    sys.exit(main())


if __name__ == '__main__':
    run()
