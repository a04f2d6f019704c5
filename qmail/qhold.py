"""qmail-qhold: hold messages in the queue, or release them (-u).

Usage:    qmail-qhold [-n] [-u] [-s sender] [-r recipient] [-S subject] [messid ...] [-]
Runs as:  root, while qmail-send runs or is stopped.
Chooses:  as qmail-qrm does: the messages numbered (as qmail-qread shows
          them; "-" reads more from fd 0), or those whose envelope
          sender (-s), a recipient not yet done (-r) or Subject (-S)
          matches; -r chooses whole messages here.  "-s '*'" is every
          message.  -n: says what would be done, changes nothing.
Holds:    a held message starts no delivery, is not retried, not even by
          an ALRM, and is not bounced for its age while held; a delivery
          under way when the hold comes ends as it would have.  Released
          (-u), every recipient still to be delivered is tried at once,
          and one whose message is older than queuelifetime by then
          bounces if that try fails, as at any try.  qmail-qread shows a
          held message with " held" after its sender, and qmail-qrm may
          still remove one (or expire it: -b releases it for its try).
          A message still in todo/ (not yet preprocessed, or delivered
          straight from there) cannot be held: it is looked at again for
          WAIT seconds, then left ("try again").
Writes:   the hold mark, HELD_BIT (S_ISVTX, qmail.lib.sendcmd) on the
          message's local/ and remote/ (set or cleared, made durable),
          which qmail-send reads at its start; then, while qmail-send
          runs, "H" or "U" lines on lock/command so that it acts at once
          ("hold msg N", "release msg N" in its log).  With qmail-send
          stopped, lock/sendmutex is held for the run.  fd 1: a line per
          message ("#messid <sender>: held" or released, or why not),
          then a count.
Exits:    0 done (nothing chosen is no fault); 100 usage, or a message
          numbered is not in the queue; 111 something chosen could not
          be held or released now (the line says why: run it again), a
          running qmail-send could not be told (the marks take effect at
          each message's next pass: svc -a for all at once), or the
          queue could not be read.
Trusts:   nothing in the queue, as qmail-qrm.
See:      qmail-qrm, qmail-qread, qmail-send; INTERNALS.md.

The mark is the truth and qmail-send's memory follows it: every pass
qmail-send starts reads the mark (a held message waits), an ALRM looks
at the held again (a released one goes), and a start reads them all; a
command only makes a change take effect at once.  A hold never removes
anything: at worst a message is held when it should not be, and
qmail-qread says so.  A message named that is held already is told
again (and said to be).
"""

import os
import sys
import time

from qmail.lib import auto, sendcmd
from qmail.lib.error import error_str
from qmail.qrm import (CHANNELS, POLL, WAIT, Message, Trouble, chooses, in_queue, mark_held,
                       parse_selection, run_program)
from qmail.qread import printable as shown


def held(msg: Message) -> bool:
    """Does one of its recipient lists carry the hold mark?"""
    for c in CHANNELS:
        try:
            if os.lstat(msg.fn(c)).st_mode & sendcmd.HELD_BIT:
                return True
        except FileNotFoundError:
            pass
    return False


class Run:
    """One qmail-qhold run over the messages wanted."""

    def __init__(self, split, say, spatterns, rpatterns, subjects, release, dry, live,
                 qdir='.', wait=WAIT):
        self.split, self.say = split, say
        self.spatterns, self.rpatterns = spatterns, rpatterns
        self.subjects = [p.lower() for p in subjects]
        self.release, self.dry, self.live = release, dry, live
        self.qdir, self.wait = qdir, wait
        self.code = 0
        self.count = 0
        self.commands = []
        self.later = []

    def fault(self, code: int) -> None:
        self.code = max(self.code, code)

    def chooses(self, msg: Message) -> bool:
        return chooses(msg, self.spatterns, self.rpatterns, self.subjects)

    def take(self, messid: int, named: bool, last: bool) -> bool:
        """Hold or release one message; False if it is still in todo/ and
        is to be looked at again."""
        try:
            try:
                msg = Message(messid, self.split)
            except FileNotFoundError:
                msg = None
            if msg is None:
                if named:
                    self.say('#%d: not in the queue' % messid)
                    self.fault(100)
                return True
            if not self.chooses(msg):
                if named:
                    self.say('#%d <%s>: not chosen by -s, -r or -S' % (messid, shown(msg.sender)))
                return True
            label = '#%d <%s>' % (messid, shown(msg.sender))
            if msg.in_todo:
                if self.release or self.dry:
                    return True         # (nothing in todo/ is held)
                if self.live and not last:
                    return False
                self.say('%s: still in todo/ (%s): not held, try again' % (
                    label, 'being delivered or preprocessed' if self.live
                    else 'qmail-send has not preprocessed it: start it first'))
                self.fault(111)
                return True
            if held(msg) != self.release:
                # Held already (or not held): said for a message named.
                # A hold is told again: a running qmail-send that missed
                # it (its FIFO full, say) cuts a pass under way now.
                if named:
                    self.say('%s: %s' % (label, 'not held' if self.release else 'held already'))
                if not self.release and not self.dry:
                    self.commands.append(sendcmd.line(b'H', messid))
                return True
            verb = ('would release', 'released') if self.release else ('would hold', 'held')
            if not self.dry:
                mark_held(msg, not self.release)
                self.commands.append(sendcmd.line(b'U' if self.release else b'H', messid))
            self.say('%s: %s' % (label, verb[not self.dry]))
            self.count += 1
        except (OSError, Trouble) as err:
            why = err if isinstance(err, Trouble) else '%s%s' % (
                err.filename + ': ' if getattr(err, 'filename', None) else '',
                error_str(err).decode())
            self.say('#%d: trouble: %s: not %s, try again'
                     % (messid, why, 'released' if self.release else 'held'))
            self.fault(111)
        return True

    def take_all(self, wanted, named: bool) -> None:
        for messid in wanted:
            if not self.take(messid, named, last=False):
                self.later.append(messid)
        self.tell()
        deadline = time.monotonic() + self.wait
        while self.later:
            last = time.monotonic() >= deadline
            self.later = [m for m in self.later if not self.take(m, named, last)]
            self.tell()
            if self.later:
                time.sleep(POLL)

    def tell(self) -> None:
        """qmail-send running: the commands for what was marked, so that
        it acts now rather than at its next start."""
        if not self.live or not self.commands:
            return
        commands, self.commands = self.commands, []
        if not sendcmd.send(self.qdir, commands):
            # The marks hold all the same (every pass reads them, an ALRM
            # looks at the held again), but not at once: said, and 111.
            self.say('qmail-send took no command on queue/%s (its FIFO missing, full, or '
                     'not read: qmail-fsck -r makes it): %s at its next pass of each '
                     'message (svc -a on qmail-send: now), not at once'
                     % (sendcmd.COMMAND, 'releases take effect' if self.release
                        else 'holds take effect'))
            self.fault(111)

    def finish(self) -> None:
        """(Nothing to wait for: a hold takes nothing out of the queue.)"""

    def summary(self) -> str:
        verb = ('released', 'would be released') if self.release else \
            ('held', 'would be held')
        return '%d message%s %s' % (self.count, '' if self.count == 1 else 's',
                                    verb[self.dry])


def usage(say) -> int:
    say('usage: qmail-qhold [-n] [-u] [-s sender] [-r recipient] [-S subject] '
        '[messid ...] [-]')
    return 100


def parse_args(argv):
    """(dry, release, spatterns, rpatterns, subjects, ids), or None."""
    parsed = parse_selection(argv, 'nu')
    if parsed is None:
        return None
    seen, spatterns, rpatterns, subjects, ids = parsed
    return 'n' in seen, 'u' in seen, spatterns, rpatterns, subjects, ids


def main(argv=None, say=None) -> int:
    say = say or say_line
    parsed = parse_args(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        return usage(say)
    dry, release, spatterns, rpatterns, subjects, ids = parsed
    return in_queue(say, dry, ids, lambda live: Run(
        auto.SPLIT, say, spatterns, rpatterns, subjects, release, dry, live=live))


def say_line(text: str) -> None:
    sys.stdout.write('qmail-qhold: %s\n' % text)
    sys.stdout.flush()


def run():
    run_program(main, say_line, 'qmail-qhold')


if __name__ == '__main__':
    run()
