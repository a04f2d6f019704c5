"""preline: prepend lines to a message and feed it to a command.

Runs as:  the user, from a .qmail file: | preline [-d] [-f] [-r] command [arg ...]
Reads:    fd 0, the message; UFLINE, RPLINE, DTLINE from qmail-local's
          environment (qmail-command(8)), each with its newline.
Writes:   to command's fd 0 through a pipe: UFLINE (the From_ line),
          RPLINE (Return-Path), DTLINE (Delivered-To), then the message.
          command keeps our fds 1 and 2.
Options:  -f no From_ line, -r no Return-Path line, -d no Delivered-To
          line; -F -R -D put them back (the last letter wins).
Exits:    command's exit code, also when it stops reading before the end
          (not quite qmail: preline.c exited 111 there for a message
          longer than its buffer, and gave the command's code for a
          shorter one, whose last write it never checked); 111 if command
          crashes, cannot be started for a temporary reason, or a read or
          another write fails; 100 usage (also when UFLINE, RPLINE or
          DTLINE is not set) or command cannot be started for good.
See:      preline(1), qmail-command(8), mbox(5).
"""

import os
import sys

from qmail.except_ import (ChildCrashed, byteargs, errstr, internal_bug,
                           is_temporary, say, spawn, wait_exitcode)
from qmail.lib import blockread
from qmail.lib.error import interrupt_kills

USAGE = b'preline: usage: preline cmd [ arg ... ]'
FATAL = b'preline: fatal: '
BUFSIZE = 65536


class Usage(Exception):
    pass


def parse_options(args):
    """subgetopt over "frdFRD": ((flagufline, flagrpline, flagdtline),
    command argv).  Usage for an unknown option or no command."""
    flags = {'f': True, 'r': True, 'd': True}
    i = 0
    while i < len(args):
        word = args[i]
        if word[:1] != b'-' or word == b'-':
            break
        i += 1
        if word == b'--':
            break
        for c in word[1:].decode('latin-1'):
            if c in 'frd':
                flags[c] = False
            elif c in 'FRD':
                flags[c.lower()] = True
            else:
                raise Usage(c)          # getopt's complaint names it
    command = args[i:]
    if not command:
        raise Usage()
    return (flags['f'], flags['r'], flags['d']), command


def prelines(flags, ufline: bytes, rpline: bytes, dtline: bytes) -> bytes:
    """What goes in front of the message."""
    flagufline, flagrpline, flagdtline = flags
    return ((ufline if flagufline else b'') +
            (rpline if flagrpline else b'') +
            (dtline if flagdtline else b''))


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class InputError(OSError):
    """Reading the input failed (not writing the output)."""


def copy_with_prefix(prefix: bytes, infd: int, outfd: int) -> None:
    """prefix, then infd to its end, into outfd.  OSError on failure:
    InputError where reading infd failed."""
    buf = prefix
    while True:
        try:
            chunk = blockread.read(infd, BUFSIZE)
        except OSError as err:
            raise InputError(err.errno, err.strerror) from None
        if not chunk:
            break
        buf += chunk
        if len(buf) >= BUFSIZE:
            write_all(outfd, buf)
            buf = b''
    write_all(outfd, buf)


def preline(args) -> int:
    env = os.environb
    ufline = env.get(b'UFLINE')
    rpline = env.get(b'RPLINE')
    dtline = env.get(b'DTLINE')
    try:
        if ufline is None or rpline is None or dtline is None:
            raise Usage()
        flags, command = parse_options(args)
    except Usage as u:
        if u.args:
            say(b'preline: illegal option -- ' + u.args[0].encode('latin-1'))
        say(USAGE)
        return 100

    try:
        pi = os.pipe()
    except OSError as err:
        say(FATAL + b'unable to create pipe: ' + errstr(err))
        return 111
    try:
        pid = spawn(command, stdin_fd=pi[0])
    except OSError as err:
        os.close(pi[0])
        os.close(pi[1])
        say(FATAL + b'unable to run ' + command[0] + b': ' + errstr(err))
        return 111 if is_temporary(err) else 100
    os.close(pi[0])

    try:
        copy_with_prefix(prelines(flags, ufline, rpline, dtline), 0, pi[1])
    except BrokenPipeError:
        # The command stopped reading (it may have exited already: a
        # message small enough for one write then failed at random).
        # Its exit code is the answer, as preline(1) says; preline.c
        # never checked its last flush.
        pass
    except OSError as err:
        # As in preline.c: die at once, and let the command find EOF.
        say(FATAL + b'unable to copy input: ' + errstr(err))
        return 111
    finally:
        os.close(pi[1])

    try:
        return wait_exitcode(pid)
    except ChildCrashed:
        say(FATAL + b'child crashed')
        return 111
    except OSError as err:
        say(FATAL + b'wait failed: ' + errstr(err))
        return 111


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:
        return preline(byteargs(argv))
    except MemoryError:
        say(FATAL + b'out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'preline', err)


def run():
    interrupt_kills()
    sys.exit(main())


if __name__ == '__main__':
    run()
