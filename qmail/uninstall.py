"""qmail-uninstall: take a qmail home out of service, losing no mail.

Usage:    python -m qmail.uninstall [--home HOME]   (make uninstall)
Runs as:  root, from the source tree (not installed in HOME/bin: it
          moves HOME away).
Refuses:  (exit 111, nothing changed) while anything of HOME runs (a
          qmail-send holding queue/lock/sendmutex, or any process working
          in HOME or running its programs, whoever started it:
          qmail-svscan, systemd, runit), while the queue holds a message
          (mess/ or todo/; one that cannot be read counts as holding
          one): accepted mail is delivered first (make run, then make
          stop once qmail-qstat says 0), and while a filesystem is
          mounted at or under HOME.  (exit 100) HOME that is not a qmail
          home.
Does:     removes /usr/sbin/sendmail, /usr/lib/sendmail and
          /usr/bin/mailq where they
          are qmail-install's links to HOME/bin/sendmail (another
          MTA's are left alone; so no local injection starts), checks
          again, then renames HOME to
          HOME.removed-YYYYMMDD-HHMMSS beside it: nothing is deleted,
          since HOME/alias/Maildir may hold root's and postmaster's mail
          and HOME/log the record of what was sent; remove that
          directory once read.  Says what it did and what it left: qmail's
          users and groups, the runtime venv (shared by every home), boot
          files copied into /etc, and Postfix from make test
          (make postfix-remove).  A message whose injection ended
          during the rename is found in the moved queue: it says how to
          put the home back to deliver it (exit 111).
Exits:    0 done; 100 usage or not a qmail home; 111 refused or failed.
"""

import argparse
import os
import sys
import time

from qmail import svscan
from qmail.install import DEFAULT_HOME, SYSTEM_LINKS

PROG = 'qmail-uninstall'


class Refused(Exception):
    """Uninstalling now would stop or lose something: (exit code, why)."""


def say(text: str):
    print('%s: %s' % (PROG, text), flush=True)


def is_home(home: str) -> bool:
    return all(os.path.exists(os.path.join(home, p))
               for p in ('bin/qmail-send', 'control', 'queue/mess', 'queue/todo'))


def queued(home: str) -> int:
    """Files in the queue's mess/ and todo/: none once every message
    has gone (a message not yet preprocessed has one in each).  A
    directory that cannot be read raises OSError: unknown is not empty."""
    def fail(err):
        raise err
    return sum(len(names) for sub in ('mess', 'todo')
               for _, _, names in os.walk(os.path.join(home, 'queue', sub),
                                          onerror=fail, followlinks=True))


def processes_in(home: str) -> list:
    """(pid, name) of the processes working in home or running its
    programs (cwd under it, or an argument naming a path under it):
    qmail-send and its children, qmail-listen, supervise and multilog,
    whoever started them (qmail-svscan, systemd, runit)."""
    inside = os.fsencode(os.path.realpath(home)) + b'/'
    mine = ancestors()
    out = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) in mine:
            continue
        pid = int(entry)
        try:
            cwd = os.fsencode(os.readlink('/proc/%d/cwd' % pid))
        except OSError:                 # gone, or a kernel thread
            continue
        args = svscan.cmdline(pid) or []
        if (cwd + b'/').startswith(inside) or any(a.startswith(inside) for a in args):
            name = os.path.basename(args[0]).decode('utf-8', 'replace') if args else '?'
            out.append((pid, name))
    return out


def ancestors() -> set:
    """This process and those it descends from (the admin's shell may
    stand in HOME: that is no use of it)."""
    out = set()
    pid = os.getpid()
    while pid is not None and pid > 1 and pid not in out:
        out.add(pid)
        pid = svscan.parent_of(pid)
    return out


def running(home: str) -> str:
    """What of home runs, in words, or ''."""
    from qmail.fsck import hold_sendmutex
    mutex = os.path.join(home, 'queue', 'lock', 'sendmutex')
    if os.path.exists(mutex):
        fd = hold_sendmutex(os.path.join(home, 'queue'))
        if fd is None:
            return 'a qmail-send holds queue/lock/sendmutex'
        os.close(fd)
    procs = processes_in(home)
    if procs:
        return 'processes work in it: %s' % ', '.join(
            '%s (pid %d)' % (name, pid) for pid, name in procs[:8])
    return ''


def mounts_in(home: str) -> list:
    """The mount points at or under home."""
    top = os.path.realpath(home)
    out = []
    try:
        with open('/proc/self/mountinfo', 'rb') as f:
            for line in f:
                point = line.split(b' ')[4].decode('unicode_escape', 'replace')
                if point == top or point.startswith(top + '/'):
                    out.append(point)
    except (OSError, IndexError):
        pass
    return out


def check(home: str) -> None:
    """Raise Refused unless home may go now."""
    if not is_home(home):
        raise Refused(100, '%s is not a qmail home' % home)
    what = running(home)
    if what:
        raise Refused(111, '%s is running (%s): stop it first (make stop, or '
                      'systemctl stop qmail-send qmail-smtpd)' % (home, what))
    n = queued(home)
    if n:
        raise Refused(111, 'the queue of %s is not empty (%d files in mess/ and todo/): '
                      'let qmail-send deliver it first (make run; make stop once '
                      'qmail-qstat says 0 messages)' % (home, n))
    mounts = mounts_in(home)
    if mounts:
        raise Refused(111, 'a filesystem is mounted at %s: a renamed home would '
                      'leave it behind (and /etc/fstab names it): move it '
                      'yourself' % ', '.join(mounts))


def system_links(home: str, links=SYSTEM_LINKS) -> list:
    """(path, target) of the links among links that lead to home's
    sendmail (compared as real paths)."""
    want = os.path.realpath(os.path.join(home, 'bin', 'sendmail'))
    out = []
    for path in links:
        try:
            target = os.readlink(path)
        except OSError:                 # missing, or a file: not ours
            continue
        if os.path.realpath(os.path.join(os.path.dirname(path), target)) == want:
            out.append((path, target))
    return out


def uninstall(home: str, links=SYSTEM_LINKS, now=None) -> str:
    """Check, unlink, check again, rename: the new name of home.  The
    links go first, so that no local injection starts meanwhile; they
    come back if anything then refuses or the rename fails."""
    home = os.path.abspath(home).rstrip('/')
    check(home)
    ours = system_links(home, links)
    for path, _ in ours:
        os.unlink(path)
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(now))
    moved = '%s.removed-%s' % (home, stamp)
    try:
        check(home)                     # anything started meanwhile
        os.rename(home, moved)
    except BaseException:
        for path, target in ours:
            try:
                os.symlink(target, path)
            except OSError:
                pass
        raise
    for path, _ in ours:
        say('removed %s (a link to %s/bin/sendmail)' % (path, home))
    late = queued(moved)
    if late:
        # An injection that began before the links went and ended after
        # the check: its message is in the moved queue.
        raise Refused(111, '%d queue files arrived during the uninstall; they are in '
                      '%s/queue: mv %s %s, then make run to deliver them'
                      % (late, moved, moved, home))
    say('moved %s to %s: its alias/Maildir (mail for root and postmaster) '
        'and log/ are there; remove it once read' % (home, moved))
    say('left in place: qmail\'s users and groups (userdel alias qmaild qmaill '
        'qmailp qmailq qmailr qmails; groupdel qmail nofiles), the runtime '
        '/usr/local/lib/qmail (shared by every home), boot files copied into '
        '/etc, and the Postfix of make test (make postfix-remove)')
    return moved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG)
    parser.add_argument('--home', default=DEFAULT_HOME)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return 100 if e.code else 0
    if os.geteuid() != 0:
        sys.stderr.write('%s: fatal: run as root\n' % PROG)
        return 100
    try:
        uninstall(args.home)
    except Refused as e:
        code, why = e.args
        sys.stderr.write('%s: fatal: %s\n' % (PROG, why))
        return code
    except OSError as e:
        sys.stderr.write('%s: fatal: %s\n' % (PROG, e))
        return 111
    return 0


if __name__ == '__main__':
    sys.exit(main())
