"""qmail-lspawn: run local deliveries for qmail-send.

Runs as:  root (the only long-running root process), started by
          qmail-start; cwd HOME/queue/mess.
Reads:    fd 0, qmail-send's delivery commands (see qmail.lib.spawn);
          HOME/users/cdb; the passwd database through qmail-getpw's rules,
          looked up in a child running as qmailp.
Writes:   fd 1, one report per delivery: K, Z or D, qmail-local's text.
Runs:     each delivery in a forked child that finds the user in charge
          of the address (nughde), takes on that user's groups, gid and
          uid (never root: QLX_ROOT), and calls qmail-local's main() with
          qmail-local's argv: no interpreter start per delivery.
Args:     qmail-lspawn defaultdelivery (passed to qmail-local).
Exits:    0 when qmail-send is gone and deliveries are done; 100 usage.
Trusts:   qmail-send for the command framing; the message file only if
          owned by qmailq.
See:      qmail-lspawn(8), qmail-getpw(8), qmail-users(5), qlx.h.
"""

import os
import sys

from qmail.lib import auto, spawn, users
from qmail.lib.qlx import QLX_SYS, QLX_ROOT, QLX_USAGE, REPORTS, Qlx

TEMPORARY_CODES = (111, 71, 74, 75)
GETPW_MAX = 4096          # a nughde record longer than this is garbage


def report(wstat: int, output: bytes) -> bytes:
    """qmail-local's exit status and output as a K/Z/D report."""
    if os.WIFSIGNALED(wstat):
        return b'Zqmail-local crashed.\n'
    code = os.WEXITSTATUS(wstat)
    if code in REPORTS:
        letter, text = REPORTS[code]
        return (letter + text + '\n').encode()
    if code in TEMPORARY_CODES:
        letter = b'Z'
    elif code == 0:
        letter = b'K'
    else:
        letter = b'D'
    return letter + output.split(b'\0', 1)[0]


def getpw_as_qmailp(local: bytes) -> users.Nughde:
    """qmail-getpw's answer, computed in a child running as qmailp:nofiles
    (parsing passwd is not a job for root)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = QLX_USAGE
        try:
            import gc
            gc.disable()
            os.close(r)
            os.setgroups([auto.gid(auto.GROUP_NOFILES)])
            os.setgid(auto.gid(auto.GROUP_NOFILES))
            os.setuid(auto.uid(auto.USER_PASSWD))
            os.dup2(w, 1)
            from qmail import getpw
            code = getpw.main([os.fsdecode(local)])
        except BaseException:
            code = QLX_USAGE
        finally:
            os._exit(code)
    os.close(w)
    out = bytearray()
    while len(out) <= GETPW_MAX:
        try:
            chunk = os.read(r, 1024)
        except InterruptedError:
            continue
        if not chunk:
            break
        out += chunk
    os.close(r)
    while True:
        try:
            _, wstat = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(wstat):
        raise Qlx(QLX_SYS, 'qmail-getpw crashed')
    if os.WEXITSTATUS(wstat):
        raise Qlx(os.WEXITSTATUS(wstat), 'qmail-getpw failed')
    return users.parse_nughde(bytes(out))


def become(n: users.Nughde):
    """The user's supplementary groups, gid, then uid."""
    name = os.fsdecode(n.user)
    try:
        groups = os.getgrouplist(name, n.gid)
    except OSError:
        groups = [n.gid]
    os.setgroups(groups)
    os.setgid(n.gid)
    os.setuid(n.uid)


def deliver(sender: bytes, recip: bytes, at: int, aliasempty: str) -> int:
    """The delivery child's work; returns its exit code."""
    local = recip[:at].split(b'\0', 1)[0]
    if not local:
        return 0                         # <>: nothing to deliver
    try:
        os.chdir(auto.QMAIL)
    except OSError:
        return QLX_USAGE
    try:
        n = users.nughde_get(local, users.cdb_path(auto.QMAIL), getpw_as_qmailp)
    except Qlx as e:
        return e.code
    try:
        become(n)
    except (OSError, ValueError, OverflowError):
        return QLX_USAGE
    if os.getuid() == 0 or os.geteuid() == 0:
        return QLX_ROOT
    argv = ['--', n.user, n.home, local, n.dash, n.ext,
            recip[at + 1:], sender, aliasempty]
    argv = [a if isinstance(a, str) else os.fsdecode(a) for a in argv]
    from qmail import local as qmail_local
    return qmail_local.main(argv)


def make_start(aliasempty: str):
    def start(fdmess, fdout, sender, recip, at):
        pid = os.fork()
        if pid == 0:
            code = QLX_USAGE
            try:
                spawn.child_setup(fdmess, fdout)
                code = deliver(sender, recip, at, aliasempty)
            except BaseException:
                code = QLX_USAGE
            finally:
                os._exit(code)
        return pid
    return start


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        return 100
    aliasempty = argv[0]
    try:
        os.chdir(auto.QMAIL)
        os.chdir('queue/mess')
    except OSError:
        return 111
    import qmail.local          # loaded once here, used by every child  # noqa: F401
    import qmail.getpw          # likewise for the qmailp lookup child  # noqa: F401
    spawner = spawn.Spawner(make_start(aliasempty), report,
                            auto.uid(auto.USER_QUEUE), truncreport=3000)
    return spawner.loop()


def run():
    try:
        from setproctitle import setproctitle
        setproctitle('qmail-lspawn ' + ' '.join(sys.argv[1:2]))
    except ImportError:
        pass
    try:
        code = main()
    except Exception:
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
