"""qmail-uninstall: take a qmail home out of service, losing no mail.

Usage:    python -m qmail.uninstall [--home HOME]   (make uninstall)
Runs as:  root, from the source tree (not installed in HOME/bin: it
          moves HOME away).
Refuses:  (exit 111, nothing changed) while anything of HOME runs
          (qmail-svscan's services, or a qmail-send holding
          queue/lock/sendmutex, under systemd say), and while the queue
          holds a message (mess/ or todo/): accepted mail is delivered
          first (make run, then make stop once qmail-qstat says 0).
          (exit 100) HOME that is not a qmail home.
Does:     removes /usr/sbin/sendmail and /usr/lib/sendmail where they
          are qmail-install's links to HOME/bin/sendmail (another
          MTA's are left alone), then renames HOME to
          HOME.removed-YYYYMMDD-HHMMSS beside it: nothing is deleted,
          since HOME/alias/Maildir may hold root's and postmaster's mail
          and HOME/log the record of what was sent; remove that
          directory once read.  Says what it did and what it left: qmail's
          users and groups, the runtime venv (shared by every home), boot
          files copied into /etc, and Postfix from make test
          (make postfix-remove).
Exits:    0 done; 100 usage or not a qmail home; 111 refused or failed.
"""

import argparse
import os
import sys
import time

from qmail.install import DEFAULT_HOME, SYSTEM_LINKS

PROG = 'qmail-uninstall'


class Refused(Exception):
    """Uninstalling now would stop or lose something: (exit code, why)."""


def say(text: str):
    print('%s: %s' % (PROG, text), flush=True)


def is_home(home: str) -> bool:
    return all(os.path.exists(os.path.join(home, p))
               for p in ('bin/qmail-send', 'control', 'queue'))


def queued(home: str) -> int:
    """Files in the queue's mess/ and todo/: none once every message
    has gone (a message not yet preprocessed has one in each)."""
    return sum(len(names) for sub in ('mess', 'todo')
               for _, _, names in os.walk(os.path.join(home, 'queue', sub)))


def running(home: str) -> str:
    """What of home runs, in words, or ''."""
    from qmail import svscan
    from qmail.fsck import hold_sendmutex
    if svscan.running_here(home) is not None or svscan.svscans_of(home):
        return 'qmail-svscan runs its services'
    live = [os.path.basename(d) for d in svscan.svc_dirs(home)
            if not d.endswith('/log') and svscan.running(d)]
    if live:
        return 'supervise runs %s' % ', '.join(live)
    mutex = os.path.join(home, 'queue', 'lock', 'sendmutex')
    if os.path.exists(mutex):
        fd = hold_sendmutex(os.path.join(home, 'queue'))
        if fd is None:
            return 'a qmail-send holds queue/lock/sendmutex'
        os.close(fd)
    return ''


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


def unlink_system_links(home: str, links=SYSTEM_LINKS) -> list:
    """Remove the links among links that point to home's sendmail; the
    paths removed."""
    target = os.path.join(home, 'bin', 'sendmail')
    gone = []
    for path in links:
        try:
            if os.readlink(path) != target:
                continue
        except OSError:                 # missing, or a file: not ours
            continue
        os.unlink(path)
        gone.append(path)
    return gone


def uninstall(home: str, links=SYSTEM_LINKS, now=None) -> str:
    """Check, unlink, rename: the new name of home."""
    home = os.path.abspath(home).rstrip('/')
    check(home)
    for path in unlink_system_links(home, links):
        say('removed %s (a link to %s/bin/sendmail)' % (path, home))
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(now))
    moved = '%s.removed-%s' % (home, stamp)
    os.rename(home, moved)
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
