"""qmail-queued: qmail-queue without an interpreter start per message.

Runs as:  qmailq, group qmail; started by qmail-start (it ends with
          qmail-send); cwd HOME/queue.
Reads:    connections on the socket HOME/run/qmail-queue.sock (mode 0666:
          anyone may queue mail, as anyone may run bin/qmail-queue).  A
          client sends one byte with two descriptors attached (SCM_RIGHTS):
          the read ends of its message and envelope, exactly what it
          would give qmail-queue on fds 0 and 1.
Writes:   per connection, a forked writer runs qmail-queue's own code,
          qmail.queue.inject(), and answers on the connection: its pid
          as "<pid>\\n" at once, then one byte, qmail-queue's exit code.
Trusts:   nothing the client says: the uid recorded in the envelope and
          the Received line is the one the kernel reports for the
          connection (SO_PEERCRED), as the setuid launcher records the
          caller's real uid.  The descriptors are only read from, under
          qmail-queue's DEATH timer.
Exits:    0 on TERM, or at end of file on fd 0: qmail-start gives it a
          pipe whose other end only qmail-send holds, so it ends with
          qmail-send (a parent-death signal cannot cross from qmails to
          qmailq); 111 if it cannot start.  Clients fall back to bin/qmail-queue whenever the
          socket is absent or refuses, so mail never depends on it.
See:      qmail-queue(8); qmail/lib/qqtalk.py (the client).
"""

import array
import os
import signal
import socket
import sys
import time

from qmail.lib import auto
from qmail import queue

SOCKET = 'run/qmail-queue.sock'      # under HOME
MAX_WRITERS = 100                     # concurrent injections; more wait


def socket_path(home: str) -> str:
    return os.path.join(home, SOCKET)


def recv_fds(conn: socket.socket):
    """The two descriptors a client sent, or None."""
    fds = array.array('i')
    try:
        msg, ancdata, flags, addr = conn.recvmsg(1, socket.CMSG_SPACE(2 * fds.itemsize))
    except OSError:
        return None
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    got = list(fds)
    if msg != b'Q' or len(got) != 2:
        for fd in got:
            os.close(fd)
        return None
    return got


def peer_uid(conn: socket.socket) -> int:
    import struct
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize('3i'))
    pid, uid, gid = struct.unpack('3i', creds)
    return uid


def writer(conn: socket.socket, listener: socket.socket, uids: dict) -> int:
    """In the forked child: one injection, answered on conn."""
    import gc
    gc.disable()
    listener.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, queue.die_timeout)
    signal.alarm(queue.DEATH)
    uid = peer_uid(conn)
    fds = recv_fds(conn)
    if fds is None:
        return 54
    conn.sendall(b'%d\n' % os.getpid())
    code = queue.inject(fds[0], fds[1], uid, os.getpid(), time.time(), uids, auto.SPLIT)
    try:
        conn.sendall(bytes((code,)))
    except OSError:
        pass
    return code


def serve(listener: socket.socket, uids: dict):
    children = set()
    flagexit = []

    def on_term(signum, frame):
        flagexit.append(signum)
        listener.close()

    def reap(signum=None, frame=None):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGCHLD, reap)
    import gc
    import select
    gc.freeze()             # writers share the loaded code's pages
    watch_parent = watch_fd0()
    while not flagexit:
        if len(children) >= MAX_WRITERS:
            signal.sigtimedwait([signal.SIGCHLD], 1)
            reap()
            continue
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        if watch_parent:
            poller.register(0, select.POLLIN)
        try:
            ready = dict(poller.poll())
        except (InterruptedError, ValueError):
            continue
        if watch_parent and ready.get(0):
            break                       # qmail-send is gone
        try:
            conn, _ = listener.accept()
        except OSError:
            if flagexit:
                break
            time.sleep(0.1)
            continue
        pid = os.fork()
        if pid == 0:
            code = 81
            try:
                code = writer(conn, listener, uids)
            except BaseException:
                code = 81
            finally:
                os._exit(code)
        children.add(pid)
        conn.close()
    return 0


def watch_fd0() -> bool:
    """True if fd 0 is a pipe to watch for qmail-send's end."""
    import stat
    try:
        return stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        return False


def listen(home: str) -> socket.socket:
    path = socket_path(home)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o111)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o666)
    s.listen(64)
    return s


def main(argv=None) -> int:
    try:
        uids = queue.queue_uids()
        os.chdir(auto.QMAIL)
        listener = listen(auto.QMAIL)
        os.chdir('queue')
    except (OSError, KeyError):
        return 111
    os.umask(0o033)
    return serve(listener, uids)


def run():
    try:
        from setproctitle import setproctitle
        setproctitle('qmail-queued')
    except ImportError:
        pass
    try:
        code = main()
    except Exception:
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
