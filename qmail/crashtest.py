"""qmail-crashtest: crash qmail's programs after every durable step, in two
ways, and check that no mail is lost.

Runs as:  root, on scratch homes of its own: never the installed queue.
Usage:    qmail-crashtest [-nv] [-d dir] [scenario ...]
Args:     scenarios (default: all): queue queued preprocess markdone
          bounce overlap direct direct-defer qrm maildir maildir-spare mbox
          (qmail/crashtest_scenarios.py says what each does).
          -n: list each scenario's steps, crash nothing.
Does:     for each scenario, counts the N durable steps it takes
          (qmail.lib.durable); then for each crash point k = 1..N, and
          once more after the last step, when the program answers
          (exit 0, report K), and in each mode (stop: the process dies;
          powercut: the machine dies, and what was not durable is undone,
          qmail.lib.crashsim), in a forked child on a fresh scratch home
          under dir: sets up, runs the scenario and crashes at k; checks
          the disk; runs the next start as the real programs would
          (qmail-send's start and its todo/ scan, with qmail-clean's work
          in the same process, every delivery and then the cleanups 36
          hours later; or qmail-local's retry); checks again.
Checks:   every acknowledged injection is delivered or still queued;
          no todo/ entry names an incomplete message or envelope; mess
          files are named by their inode; info/, local/, remote/ hold
          complete records (the checks of qmail-fsck); nothing is left in
          the queue once it is worked off and cleaned; no half-written
          file in Maildir/new; an acknowledged delivery (K) is never
          lost; an exactly-once Maildir delivery makes one file per
          message and recipient; a failure (D) is bounced.
Writes:   fd 1, one line per scenario and mode: the crash points checked
          and how many broke an invariant (notes: allowed repeats, such
          as a message delivered twice); with -v each failure and note.
Exits:    0 every invariant held; 1 one broke; 100 usage; 111 could not
          run (not root, no scratch directory).
See:      INTERNALS.md (states S1-S5), qmail.lib.crashsim (the crash
          model), qmail-fsck (the queue checks).
"""

import os
import select
import shutil
import signal
import sys
import tempfile

from qmail.lib import crashsim
from qmail.lib.error import exit_flushed, guard_stdout
from qmail.crashtest_scenarios import (
    DOMAIN, SCENARIOS, SCRATCH_SPLIT, Box, LocalScenario, read)

CHILD_TIMEOUT = 60              # seconds a child may take
RUN_FAILED = 3                  # a child's scenario ran to its end and failed
NOT_REACHED = 4                 # a child ended before its crash point
NOT_REACHED_TRIES = 5           # fresh homes tried for a point not reached
CHILD_ERROR = 70                # a child raised


# ---- the scratch home ------------------------------------------------------------

def build_box(root, ids) -> Box:
    from qmail import install
    box = Box(root)
    os.mkdir(root, 0o700)
    os.mkdir(box.stash, 0o700)
    os.mkdir(box.user, 0o755)
    uids, gids = ids
    install.install_tree(box.home, uids, gids, SCRATCH_SPLIT)
    for name, value in (('me', DOMAIN), ('locals', DOMAIN)):
        with open(os.path.join(box.home, 'control', name), 'wb') as f:
            f.write(value + b'\n')
    return box


def home_ids():
    """qmail's users for the scratch tree; root for all if there are none
    (the children run as root anyway)."""
    from qmail import install
    try:
        return install.lookup_ids()
    except KeyError:
        names = [u for u, _, _ in install.USERS] + ['root']
        return dict.fromkeys(names, 0), dict.fromkeys(install.GROUPS, 0)


# ---- children ----------------------------------------------------------------

def in_child(box, fn) -> int:
    """fn() in a forked child, its exit code; a raise writes box.error."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = CHILD_ERROR
        try:
            code = fn()
        except BaseException as err:   # a forked child: report, then _exit
            try:
                with open(box.error, 'a') as f:
                    f.write('%s: %s\n' % (type(err).__name__, err))
            except BaseException:
                pass
        finally:
            os._exit(code if isinstance(code, int) else CHILD_ERROR)
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], CHILD_TIMEOUT)
        if not ready:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(pidfd)
    _, wstat = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wstat)


def count_steps(scenario, box) -> list:
    """The steps of a run without a crash, described relative to box."""
    out = os.path.join(box.root, 'steps')

    def child():
        scenario.enter(box)
        state = scenario.setup(box)
        rec = crashsim.Recorder(box.stash)
        with rec:
            ok = scenario.run(box, state)
        with open(out, 'w') as f:
            for step in rec.steps:
                f.write(str(step).replace(box.root + '/', '') + '\n')
        return 0 if ok else RUN_FAILED

    code = in_child(box, child)
    if code != 0:
        raise RuntimeError('%s does not run without a crash: exit %d %s'
                           % (scenario.name, code, (read(box.error) or b'').decode()))
    return read(out).decode().splitlines()


def crash_point(scenario, box, mode, k, nsteps):
    """Crash after step k (k > nsteps: after the answer); (fails, notes),
    or None if this run ended before step k."""
    want = crashsim.STOP_EXIT if mode == crashsim.STOP else crashsim.POWERCUT_EXIT

    def child():
        scenario.enter(box)
        state = scenario.setup(box)
        rec = crashsim.Recorder(box.stash, k if k <= nsteps else None, mode)
        rec.install()
        ok = scenario.run(box, state)
        if k <= nsteps:
            return NOT_REACHED
        if not ok:
            return RUN_FAILED
        rec.crash()

    code = in_child(box, child)
    if code == NOT_REACHED:
        return None
    if code != want:
        return ['the crashing child exited %d, not %d: %s' % (
            code, want, (read(box.error) or b'').decode().strip())], []
    acked = k > nsteps
    fails, notes = scenario.check_crash(box, acked)

    def again():
        scenario.enter(box)
        scenario.recover(box)
        return 0

    code = in_child(box, again)
    if code != 0:
        fails.append('the next start failed: exit %d: %s' % (
            code, (read(box.error) or b'').decode().strip()))
    more_fails, more_notes = scenario.check_final(box, acked)
    return fails + more_fails, notes + more_notes


class Result:
    def __init__(self, scenario, mode, points):
        self.scenario, self.mode, self.points = scenario, mode, points
        self.failed = []        # (k, step, [failures])
        self.noted = []         # (k, step, [notes])


def crash_scenario(scenario, scratch, ids, modes):
    """Every crash point of one scenario, in each mode: [Result]."""
    seq = [0]

    def fresh():
        seq[0] += 1
        box = build_box(os.path.join(scratch, '%s.%d' % (scenario.name, seq[0])),
                        ids)
        if isinstance(scenario, LocalScenario):
            scenario.prepare(box)
        return box

    box = fresh()
    try:
        steps = count_steps(scenario, box)
    finally:
        shutil.rmtree(box.root, ignore_errors=True)
    results = []
    for mode in modes:
        res = Result(scenario, mode, len(steps) + 1)
        for k in range(1, len(steps) + 2):
            where = steps[k - 1] if k <= len(steps) else 'after the answer'
            # A run may take fewer steps than the counted one: its files
            # are named by their inodes, and fewer split directories to
            # fsync when two fall in one.  A fresh home lays them out anew.
            for _ in range(NOT_REACHED_TRIES):
                box = fresh()
                try:
                    got = crash_point(scenario, box, mode, k, len(steps))
                finally:
                    shutil.rmtree(box.root, ignore_errors=True)
                if got is not None:
                    fails, notes = got
                    break
            else:
                fails, notes = ['the crashing child ended before step %d, %d times'
                                % (k, NOT_REACHED_TRIES)], []
            if fails:
                res.failed.append((k, where, fails))
            if notes:
                res.noted.append((k, where, notes))
        results.append(res)
    return results


# ---- main ----------------------------------------------------------------------

def say(text):
    sys.stdout.write(text + '\n')
    sys.stdout.flush()


def complain(text):
    """A usage or fatal line: fd 2, as qmail's programs say them."""
    sys.stderr.write(text + '\n')
    sys.stderr.flush()


def summary(res) -> str:
    line = '%-11s %-9s %3d crash points (%d steps + the answer)  %d failures' % (
        res.scenario.name, res.mode, res.points, res.points - 1, len(res.failed))
    if res.noted:
        line += '  %d notes' % len(res.noted)
    return line


def details(res):
    for label, items in (('FAIL', res.failed), ('note', res.noted)):
        for k, where, texts in items:
            for text in texts:
                say('  %s %s %s k=%d (%s): %s' % (label, res.scenario.name,
                                                  res.mode, k, where, text))


def list_steps(scenario, scratch, ids) -> bool:
    """-n: the scenario and its steps, one a line."""
    box = build_box(os.path.join(scratch, scenario.name + '.plan'), ids)
    try:
        if isinstance(scenario, LocalScenario):
            scenario.prepare(box)
        steps = count_steps(scenario, box)
    except RuntimeError as err:
        say('%-11s cannot run: %s' % (scenario.name, err))
        return False
    finally:
        shutil.rmtree(box.root, ignore_errors=True)
    say('%s: %s' % (scenario.name, scenario.about))
    for step in steps:
        say('  ' + step)
    return True


def usage():
    complain('usage: qmail-crashtest [-nv] [-d dir] [scenario ...]; scenarios: '
             + ' '.join(s.name for s in SCENARIOS))
    return 100


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = list(argv)
    flagverbose = flagplan = False
    base = None
    while args and args[0].startswith('-'):
        opt = args.pop(0)
        if opt == '--':
            break
        if opt == '-v':
            flagverbose = True
        elif opt == '-n':
            flagplan = True
        elif opt == '-d' and args:
            base = args.pop(0)
        else:
            return usage()
    byname = {s.name: s for s in SCENARIOS}
    if any(a not in byname for a in args):
        return usage()
    chosen = [byname[a] for a in args] or SCENARIOS
    if os.geteuid() != 0:
        complain('qmail-crashtest: fatal: must be run as root')
        return 111
    try:
        scratch = tempfile.mkdtemp(prefix='qmail-crashtest.', dir=base)
    except OSError as err:
        complain('qmail-crashtest: fatal: unable to make a scratch directory: %s'
                 % err.strerror)
        return 111
    flagbroke = False
    try:
        ids = home_ids()
        for scenario in chosen:
            if flagplan:
                flagbroke = not list_steps(scenario, scratch, ids) or flagbroke
                continue
            try:
                results = crash_scenario(scenario, scratch, ids,
                                        (crashsim.STOP, crashsim.POWERCUT))
            except RuntimeError as err:
                say('%-11s cannot run: %s' % (scenario.name, err))
                flagbroke = True
                continue
            for res in results:
                say(summary(res))
                if flagverbose:
                    details(res)
                flagbroke = flagbroke or bool(res.failed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if flagbroke else 0


def stop(signum, frame):
    """TERM: end as ^C does, through main's cleanup of its scratch."""
    raise KeyboardInterrupt


def run():
    guard_stdout()              # a full disk or closed fd 1: one line, 111
    signal.signal(signal.SIGTERM, stop)
    try:
        code = main()
    except KeyboardInterrupt:    # ^C or TERM: the scratch is gone (main's finally)
        code = 111
    except Exception as err:     # last resort: never a traceback, never 1
        complain('qmail-crashtest: fatal: internal error: %s: %s'
                 % (type(err).__name__, err))
        code = 111
    exit_flushed(code, 'qmail-crashtest')


if __name__ == '__main__':
    run()
