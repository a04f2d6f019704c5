"""qmail-qread: list the messages in the queue and their recipients.

Runs as:  root, or qmails with group qmail.
Reads:    HOME/queue: info/, local/, remote/, bounce/, mess/ (sizes) and,
          beyond qmail 1.03, todo/ for messages qmail-send has not yet
          preprocessed.
Writes:   fd 1, per message a line
              <date> GMT  #<messid>  <bytes>  <sender>  [bouncing] [held]
          then one line per recipient, "\\tlocal\\t" or "\\tremote\\t" and
          the address, prefixed by "  done" once delivered or bounced.
          A message still in todo/ lists its recipients as "\\ttodo\\t":
          where they go is decided at preprocessing (or it is one of
          the few qmail-send delivers straight from todo/, listed so
          while that delivery lasts).  Unprintable bytes
          become '_'.  " held" (beyond qmail): qmail-qhold holds the
          message, whose deliveries wait for its release.  Trouble
          with one message prints
          "warning: trouble with #<messid>" and the scan goes on.
Exits:    0; 111 if the queue cannot be opened, or the list cannot be
          written (a full disk, fd 1 closed: one line on fd 2).
See:      qmail-qread(8).
"""

import bisect
import os
import sys

from qmail.lib import auto, error
from qmail.lib.date822 import date822
from qmail.lib.error import error_str
from qmail.lib.qfile import parse_messid, qfn
from qmail.lib.sendcmd import HELD_BIT


def printable(data: bytes) -> str:
    return ''.join(chr(c) if 32 <= c <= 126 else '_' for c in data)


def stats_line(messid: int, qtime: float, size: int, sender: bytes,
               bouncing: bool, held: bool = False) -> str:
    """The message's line, as qmail-qread formats it (held: beyond it)."""
    date = date822(qtime)[:-6].decode()        # drop " -0000"
    line = '%s GMT  #%d  %d  <%s> ' % (date, messid, size, printable(sender))
    if bouncing:
        line += ' bouncing'
    if held:
        line += ' held'
    return line + '\n'


def recipient_lines(channel: str, data: bytes) -> str:
    """Lines for a local/ or remote/ file: T not done, D done."""
    out = []
    for record in data.split(b'\0'):
        if not record:
            continue
        if record[:1] == b'D':
            out.append('  done\t%s\t%s\n' % (channel, printable(record[1:])))
        elif record[:1] == b'T':
            out.append('\t%s\t%s\n' % (channel, printable(record[1:])))
    return ''.join(out)


def parse_todo(data: bytes):
    """(sender, recipients) from a todo/ envelope (u, p, F, T records)."""
    sender, recips = b'', []
    for record in data.split(b'\0'):
        if record[:1] == b'F':
            sender = record[1:]
        elif record[:1] == b'T':
            recips.append(record[1:])
    return sender, recips


def read_file(path: str):
    with open(path, 'rb') as f:
        return f.read(), os.fstat(f.fileno())


def list_dir(path: str):
    """Message numbers in one directory, in order."""
    ids = []
    with os.scandir(path) as it:
        for entry in it:
            messid = parse_messid(entry.name)
            if messid is not None:
                ids.append(messid)
    return sorted(ids)


def show_info(messid: int, split: int, in_todo: bool = False):
    """Everything qmail-qread prints for a preprocessed message; None for
    one still in todo/ (in_todo) whose info/ holds no sender yet (its
    writing failed, a full disk: qmail-send starts again from todo/)."""
    size = os.stat(qfn('mess', messid, split)).st_size
    bouncing = os.path.exists(qfn('bounce', messid, split))
    data, st = read_file(qfn('info', messid, split))
    if in_todo and not data.startswith(b'F'):
        return None
    sender = data.split(b'\0', 1)[0][1:]
    out = []
    held = False
    for channel in ('local', 'remote'):
        try:
            data, cst = read_file(qfn(channel, messid, split))
        except FileNotFoundError:
            continue
        except OSError as err:          # the other channel still shown
            out.append(trouble(messid, err))
            continue
        held = held or bool(cst.st_mode & HELD_BIT)
        out.append(recipient_lines(channel, data))
    return stats_line(messid, st.st_mtime, size, sender, bouncing, held) + ''.join(out)


def trouble(messid: int, err: OSError) -> str:
    """qmail-qread's warning for a message it cannot show, with why."""
    return 'warning: trouble with #%d: %s\n' % (messid, error_str(err).decode())


def show_todo(messid: int, split: int) -> str:
    data, st = read_file(qfn('todo', messid, split))
    size = os.stat(qfn('mess', messid, split)).st_size
    sender, recips = parse_todo(data)
    out = [stats_line(messid, st.st_mtime, size, sender, False)]
    out.extend('\ttodo\t%s\n' % printable(r) for r in recips)
    return ''.join(out)


def in_sorted(ids: list, messid: int) -> bool:
    i = bisect.bisect_left(ids, messid)
    return i < len(ids) and ids[i] == messid


def scan(split: int, write) -> None:
    """Write the listing, each message as it is read; cwd is HOME/queue.
    todo/ is listed first (numbers only: a backlog of a million costs
    no more than its list), and what is there is shown after info/,
    unless info/ showed it; one preprocessed in between is then looked
    for in info/ again, so that no message is left out."""
    todo = list_dir('todo')
    shown = set()
    for i in range(split):
        for messid in list_dir('info/%d' % i):
            try:
                text = show_info(messid, split, in_sorted(todo, messid))
            except OSError as err:      # as qmail's, gone meanwhile too
                text = trouble(messid, err)
            if text is None:            # an info/ left empty: todo/'s below
                continue
            shown.add(messid)
            write(text)
    for messid in todo:
        if messid in shown:
            continue
        try:
            text = show_todo(messid, split)
        except FileNotFoundError:
            try:
                text = show_info(messid, split)     # preprocessed meanwhile
            except FileNotFoundError:
                continue                            # or done already
            except OSError as err:
                text = trouble(messid, err)
        except OSError as err:
            text = trouble(messid, err)
        write(text)


def main(argv=None) -> int:
    try:
        os.chdir(os.path.join(auto.QMAIL, 'queue'))
    except OSError as e:
        sys.stdout.write('fatal: unable to chdir: %s\n' % error_str(e).decode())
        return 111
    try:
        scan(auto.SPLIT, sys.stdout.write)
    except OSError as e:
        sys.stdout.write('fatal: unable to opendir %s: %s\n'
                         % (e.filename or '', error_str(e).decode()))
        return 111
    return 0


def run():
    error.guard_stdout()            # a full disk or closed fd 1: one line, 111
    try:
        code = main()
    except BrokenPipeError:
        code = 0                    # the reader is gone (| head)
    except Exception as e:
        sys.stderr.write('qmail-qread: fatal: internal bug: %s\n' % type(e).__name__)
        code = 111
    error.exit_flushed(code, 'qmail-qread')


if __name__ == '__main__':
    run()
