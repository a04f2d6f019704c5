"""qmail-svscan: run a qmail home's services under daemontools, in the
foreground, and stop them cleanly.

Runs as:  root (make run).
Usage:    qmail-svscan [start|stop|status|running]; start is the default.
Does:     start: links HOME/service/<name> to HOME/supervise/<name> for
          qmail-send, qmail-smtpd and, when HOME/control/pop3checker
          exists, qmail-pop3d, when HOME/control/submissionchecker
          exists, qmail-submission (port 587) and qmail-smtps (465);
          starts svscan(8) on HOME/service, which
          runs supervise(8) for each service and for its log/ (multilog
          with tai64n stamps into HOME/log/<name>); prints where to look,
          and a warning for each service that does not stay up its
          first FLAP_WAIT seconds (qmail-smtpd on a port another MTA
          holds), with the last line of its log (one that fails later,
          after a DNS timeout say, is not seen); waits.  On INT, TERM or
          HUP (its terminal closed), or `qmail-svscan stop` from
          elsewhere, it stops svscan (so it restarts nothing), brings
          every service down with `svc -dx` (qmail-send finishes the
          deliveries under way; nothing queued is lost) and waits for
          each supervise to exit.
          With no foreground qmail-svscan (killed uncleanly), stop first
          stops any svscan left running on HOME/service.
          status: svstat for every service.  running: exit 0 if this
          home's services run (a foreground, an svscan, or any service
          up, also under a system-wide svscan that HOME/supervise is
          linked into), else 1.
Writes:   HOME/service/.svscan.pid while running: this process's pid and
          svscan's.  stop believes it only while both processes are
          still those (a pid from before a reboot or a kill may be
          anyone's by now), and waits for this one to exit, after its
          services; start refuses to run a second time on one home,
          while a service of an earlier start is still up (a stop that
          gave up waiting: stop again, or wait), or while a system-wide
          svscan runs HOME/supervise (README "Start at boot").
Exits:    0 after a clean stop; 100 usage; 111 if svscan cannot start
          or services do not stop in time (their names on stderr).
See:      svscan(8), supervise(8), svc(8), multilog(8); README "Running".
"""

import errno
import os
import re
import signal
import stat
import subprocess
import sys
import time

from qmail.lib import auto, control

STOP_TIMEOUT = 120      # seconds for qmail-send to finish its deliveries
FLAP_WAIT = 2.0         # seconds each service must stay up after the start
LOG_TAIL = 4096         # bytes of a log read for its last line


INSTALLED = ('qmail-send', 'qmail-smtpd', 'qmail-pop3d',       # qmail-install's services
             'qmail-submission', 'qmail-smtps')
OPTIONAL = (('pop3checker', ('qmail-pop3d',)),          # a control file: what it enables
            ('submissionchecker', ('qmail-submission', 'qmail-smtps')))


def services(home: str):
    names = ['qmail-send', 'qmail-smtpd']
    for flag, enabled in OPTIONAL:
        if control_line(os.path.join(home, 'control', flag)):
            names += [n for n in enabled
                      if os.path.isdir(os.path.join(home, 'supervise', n))]
    return names


def control_line(path: str) -> bool:
    """Does the file name something on its first line (a checker)?  An
    empty one enabled a service with no checker: POP3 answering every
    login with a usage error, SMTP for mail clients without AUTH."""
    try:
        return bool(control.readline(path))
    except OSError:
        return False


def link_services(home: str, names):
    svdir = os.path.join(home, 'service')
    os.makedirs(svdir, exist_ok=True)
    # svscan runs, as root, every run script it finds there: service/
    # must be root's alone (a home taken over from someone else, say).
    st = os.lstat(svdir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise OSError(errno.EPERM, '%s is not a directory of root\'s alone '
                      '(owner %d, mode %04o): svscan would run what others put there'
                      % (svdir, st.st_uid, stat.S_IMODE(st.st_mode)))
    for name in names:
        link = os.path.join(svdir, name)
        target = os.path.join(home, 'supervise', name)
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)
    # A link of ours not wanted now (qmail-pop3d without its checker)
    # goes; whatever the admin put there stays, svscan runs it too.
    for name in INSTALLED:
        link = os.path.join(svdir, name)
        if name not in names and os.path.islink(link) \
                and os.readlink(link) == os.path.join(home, 'supervise', name):
            os.unlink(link)
    return svdir


def svc_dirs(home: str):
    svdir = os.path.join(home, 'service')
    out = []
    for name in sorted(os.listdir(svdir)) if os.path.isdir(svdir) else []:
        if name.startswith('.'):
            continue
        d = os.path.join(svdir, name)
        out.append(d)
        if os.path.isdir(os.path.join(d, 'log')):
            out.append(os.path.join(d, 'log'))
    return out


def supervise_dirs(home: str):
    """HOME/supervise's service directories (and their logs): what a
    system-wide svscan runs when an admin links them into /etc/service."""
    out = []
    for name in INSTALLED:
        d = os.path.join(home, 'supervise', name)
        for sub in (d, os.path.join(d, 'log')):
            if os.path.isdir(sub):
                out.append(sub)
    return out


def supervised_elsewhere(home: str) -> list:
    """The home's services that a supervise not of this home's service/
    runs (daemontools-run's svscanboot on /etc/service, say)."""
    mine = {os.path.realpath(d) for d in svc_dirs(home)}
    return [d for d in supervise_dirs(home) if os.path.realpath(d) not in mine and running(d)]


def running(d: str) -> bool:
    return subprocess.run(['svok', d], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def stop_services(home: str) -> list:
    """svc -dx the services, then their logs; the names still running."""
    dirs = svc_dirs(home)
    mains = [d for d in dirs if not d.endswith('/log')]
    logs = [d for d in dirs if d.endswith('/log')]
    for group in (mains, logs):
        live = [d for d in group if running(d)]
        if live:
            subprocess.run(['svc', '-dx'] + live)
        deadline = time.monotonic() + STOP_TIMEOUT
        while live and time.monotonic() < deadline:
            live = [d for d in live if running(d)]
            time.sleep(0.1)
        if live:
            return live
    return []


def make_cmd(target: str, home: str) -> str:
    """The make command for home: the Makefile's default is /var/qmail."""
    import shlex
    if os.path.realpath(home) == os.path.realpath('/var/qmail'):
        return 'make ' + target
    return 'make %s QMAIL_HOME=%s' % (target, shlex.quote(home))


def home_maildir(home: str):
    """The maildir of the default delivery (control/defaultdelivery, as
    qmail-send's run script reads it, else ./Maildir/) that lies in each
    user's home, e.g. "Maildir", or None (an mbox, a program, a path
    elsewhere)."""
    lines = control.readfile(os.path.join(home, 'control', 'defaultdelivery'))
    for line in (lines if lines is not None else [b'./Maildir/']):
        if line.startswith(b'./') and line.endswith(b'/') and len(line) > 3:
            return line[2:-1].decode('utf-8', 'replace')
    return None


def intro(home: str) -> str:
    me = control.me_text(home)
    maildir = home_maildir(home)
    users = ('Users\' mail goes to ~/%(md)s/, which each user needs (qmail makes none):\n'
             '    %(home)s/bin/maildirmake ~/%(md)s as the user, and /etc/skel/%(md)s\n'
             '    for new accounts; until then their mail waits in the queue.\n'
             % {'md': maildir, 'home': home}) if maildir else ''
    return ('qmail is running under daemontools (svscan %(home)s/service).\n'
            'Send a first message:\n'
            '    echo "Subject: hello" | %(home)s/bin/sendmail root@%(me)s\n'
            'It lands in %(home)s/alias/Maildir/new/ (root\'s mail; see README).\n'
            '%(users)s'
            'Logs: %(home)s/log/<service>/current (%(services)s)\n'
            '    (tai64nlocal < %(home)s/log/qmail-send/current for readable times)\n'
            'Status: svstat %(home)s/service/*; Ctrl-C or %(stop)s stops everything.\n'
            % {'home': home, 'me': me, 'stop': make_cmd('stop', home), 'users': users,
               'services': ', '.join(services(home))})


def cmdline(pid: int):
    """pid's arguments, or None when there is no such process."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().split(b'\0')[:-1]
    except OSError:
        return None


def parent_of(pid: int):
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            return int(f.read().rsplit(b')', 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def running_here(home: str):
    """The pid of the foreground qmail-svscan of this home, if the
    pidfile names one still running (it and its svscan); else None."""
    svdir = os.path.join(home, 'service')
    try:
        with open(os.path.join(svdir, '.svscan.pid')) as f:
            fg, scan = (int(w) for w in f.read().split()[:2])
    except (OSError, ValueError):
        return None
    args = cmdline(fg) or []
    if not any(a.endswith(b'qmail-svscan') for a in args[:3]):
        return None
    if cmdline(scan) != [b'svscan', os.fsencode(svdir)] or parent_of(scan) != fg:
        return None
    return fg


def svscans_of(home: str) -> list:
    """The pids of every svscan running on HOME/service (one that lost
    its foreground qmail-svscan to a kill -9 lives on in its own
    session, and restarts any service stopped under it)."""
    want = [b'svscan', os.fsencode(os.path.join(home, 'service'))]
    pids = []
    for name in os.listdir('/proc'):
        if name.isdigit() and cmdline(int(name)) == want:
            pids.append(int(name))
    return pids


def stop_svscans(pids, timeout: float = 30) -> None:
    """TERM each svscan and wait for it to go (then KILL)."""
    want = {pid: cmdline(pid) for pid in pids}     # (before: a pid used again is not it)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        want = {pid: args for pid, args in want.items() if args and cmdline(pid) == args}
        if not want:
            return
        time.sleep(0.1)
    for pid in want:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def service_pids(dirs) -> dict:
    """{service dir: the pid svstat shows it up with, or None}."""
    out = {d: None for d in dirs}
    try:
        r = subprocess.run(['svstat'] + list(dirs), capture_output=True,
                           text=True, errors='replace', timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return out
    for line in r.stdout.splitlines():
        for d in dirs:                  # (a path may hold ": " itself)
            if line.startswith(d + ': '):
                m = re.match(r'up \(pid (\d+)\)', line[len(d) + 2:])
                if m:
                    out[d] = int(m.group(1))
    return out


def last_log_line(home: str, name: str) -> str:
    """The last line of HOME/log/<name>/current, without its stamp.  The
    directory is qmaill's: read (as root) only a regular file there with
    no other name, not a link (symbolic or hard) to one of root's, nor a
    FIFO that would hang the start."""
    try:
        fd = os.open(os.path.join(home, 'log', name, 'current'),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, 'rb') as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                return ''         # (a hard link to a file of root's, too)
            f.seek(max(0, st.st_size - LOG_TAIL))
            lines = f.read(LOG_TAIL).decode('utf-8', 'replace').splitlines()
    except OSError:
        return ''
    lines = [l for l in lines if l.strip()]
    return re.sub(r'^@[0-9a-f]{24} ', '', lines[-1]) if lines else ''


def not_staying_up(home: str, wait: float = FLAP_WAIT) -> list:
    """(name, last log line) of each service (not its log) that is down
    or was started again within wait seconds."""
    # (an admin's service kept down by its down file is not a failure)
    mains = [d for d in svc_dirs(home) if not d.endswith('/log')
             and not os.path.exists(os.path.join(d, 'down'))]
    if not mains:
        return []
    before = service_pids(mains)
    time.sleep(wait)
    after = service_pids(mains)
    return [(os.path.basename(d), last_log_line(home, os.path.basename(d)))
            for d in mains if after[d] is None or after[d] != before[d]]


def say(text: str, out=None):
    """A line for the admin; a terminal closed under us takes nothing
    (a write error there must not stop the stopping)."""
    try:
        out = out or sys.stdout
        out.write(text)
        out.flush()
    except (OSError, ValueError):
        pass


def start(home: str) -> int:
    if running_here(home) is not None:
        sys.stderr.write('qmail-svscan: already running for %s (make stop first)\n' % home)
        return 111
    # A service still up from an earlier start (one whose stop timed out,
    # or whose svscan lost its foreground): a second supervise for it
    # would fail on its lock, and a service's log pipe with it.
    elsewhere = supervised_elsewhere(home)
    if elsewhere:
        sys.stderr.write('qmail-svscan: supervised already, by another svscan (/etc/service?): '
                         '%s\n' % ' '.join(elsewhere))
        return 111
    left = [d for d in svc_dirs(home) if running(d)]
    if left:
        sys.stderr.write('qmail-svscan: still running from an earlier start: %s '
                         '(make stop, or wait for it to end)\n' % ' '.join(left))
        return 111
    names = services(home)
    svdir = link_services(home, names)
    proc = subprocess.Popen(['svscan', svdir], stdin=subprocess.DEVNULL,
                            start_new_session=True)
    pidfile = os.path.join(svdir, '.svscan.pid')
    try:
        with open(pidfile, 'w') as f:
            f.write('%d %d\n' % (os.getpid(), proc.pid))
    except BaseException:
        # svscan must not run on without anyone to stop it
        stop_svscans([proc.pid])
        stop_services(home)
        raise
    flag = []
    # HUP too: the terminal of make run closed.  Left running, svscan
    # would go on alone, out of reach of make stop.
    # (an INT or HUP ignored when we started, as under nohup or in a
    # script's background job, stays ignored)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN or sig == signal.SIGTERM:
            signal.signal(sig, lambda s, f: flag.append(s))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(running(d) for d in svc_dirs(home)):
        time.sleep(0.1)
    failing = not_staying_up(home)
    say(intro(home))
    for name, line in failing:
        say('qmail-svscan: warning: %s does not stay up; its log ends: %s\n'
            % (name, line or '(nothing)'), sys.stderr)
    while not flag and proc.poll() is None:
        time.sleep(0.5)
    say('stopping services...\n')
    # svscan first: left running, it would start a new supervise for each
    # service that svc -dx has just stopped.
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    stuck = stop_services(home)
    try:
        os.unlink(pidfile)
    except FileNotFoundError:
        pass
    if stuck:
        say('qmail-svscan: still running: %s\n' % ' '.join(stuck), sys.stderr)
        return 111
    say('stopped.\n')
    return 0


def stop(home: str) -> int:
    fg = running_here(home)
    if fg is None:
        # Nobody in the foreground (or a stale pidfile): stop what runs,
        # an svscan left alone first (a kill -9 of the foreground), or it
        # would start each service again.
        stop_svscans(svscans_of(home))
        stuck = stop_services(home)
        try:
            os.unlink(os.path.join(home, 'service', '.svscan.pid'))
        except OSError:
            pass
        return 111 if stuck else 0
    # Ask the foreground qmail-svscan to stop, and wait for it: it exits
    # once every service has (qmail-send after its deliveries).
    args = cmdline(fg)
    os.kill(fg, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT + 30
    while time.monotonic() < deadline:
        if cmdline(fg) != args:
            # Gone; if it gave up on a service (a delivery longer than
            # its wait), keep waiting here, and say so if in vain.
            stuck = stop_services(home)
            if stuck:
                sys.stderr.write('qmail-svscan: still running: %s\n' % ' '.join(stuck))
                return 111
            return 0
        time.sleep(0.2)
    return 111


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = argv[0] if argv else 'start'
    home = auto.QMAIL
    if cmd == 'start':
        return start(home)
    if cmd == 'stop':
        return stop(home)
    if cmd == 'running':        # (make run asks before it replaces the code)
        return 0 if running_here(home) is not None or svscans_of(home) or any(
            running(d) for d in svc_dirs(home)) or supervised_elsewhere(home) else 1
    if cmd == 'status':
        dirs = svc_dirs(home)
        if dirs:
            subprocess.run(['svstat'] + dirs)
        return 0
    sys.stderr.write('qmail-svscan: usage: qmail-svscan [start|stop|status|running]\n')
    return 100


def run():
    try:
        code = main()
    except Exception as e:
        sys.stderr.write('qmail-svscan: fatal: %s\n' % e)
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
