"""When each file appeared in a directory: inotify, in a process of its own.

The latency runs need the moment a delivered file appears in Maildir/new
to a millisecond.  A file's ctime is stamped with the kernel's coarse
clock (up to a tick, several ms, early), and a watcher thread inside the
bench would wait for the GIL behind the load client (up to the 5 ms
switch interval), so a forked process of its own waits in read() on an
inotify descriptor and stamps each IN_CREATE (qmail's link into new/)
and IN_MOVED_TO (Postfix's rename into new/) with time.time() as it
wakes.  stop() collects {file name: time}.
"""

import ctypes
import os
import select
import struct
import time

from procs import BenchError

IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_CLOEXEC = 0o2000000
EVENT = struct.Struct('iIII')
READY_TIMEOUT = 30


def watch_loop(path: bytes, ready_w: int, stop_r: int, out_w: int):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(IN_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, path, IN_CREATE | IN_MOVED_TO) < 0:
        os.write(ready_w, b'E')
        return 1
    os.write(ready_w, b'R')
    seen = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(stop_r, select.POLLIN)
    while True:
        ready = dict(poller.poll())
        if fd in ready:
            data = os.read(fd, 65536)
            now = time.time()
            pos = 0
            while pos + EVENT.size <= len(data):
                _, _, _, length = EVENT.unpack_from(data, pos)
                name = data[pos + EVENT.size:pos + EVENT.size + length].rstrip(b'\0')
                seen.append(b'%.6f %s\n' % (now, name))
                pos += EVENT.size + length
            continue
        if stop_r in ready:
            break
    payload = b''.join(seen)
    view = memoryview(payload)
    while view:
        n = os.write(out_w, view)
        view = view[n:]
    return 0


class Watcher:
    def __init__(self, path: str):
        ready_r, ready_w = os.pipe()
        self.stop_r, self.stop_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                os.close(ready_r)
                os.close(self.stop_w)
                os.close(self.out_r)
                code = watch_loop(os.fsencode(path), ready_w, self.stop_r, out_w)
            finally:
                os._exit(code)
        os.close(ready_w)
        os.close(self.stop_r)
        os.close(out_w)
        r, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
        answer = os.read(ready_r, 1) if r else b''
        os.close(ready_r)
        if answer != b'R':
            self.stop()
            raise BenchError('inotify watch on %s failed' % path)

    def stop(self) -> dict:
        """{name: time the file appeared}; the watcher exits."""
        if self.stop_w == -1:
            return {}
        os.close(self.stop_w)
        self.stop_w = -1
        chunks = []
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.out_r], [], [], 1)
            if not r:
                continue
            chunk = os.read(self.out_r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self.out_r)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass                # reaped already by procs.reap_all
        out = {}
        for line in b''.join(chunks).splitlines():
            t, _, name = line.partition(b' ')
            out.setdefault(name.decode('utf-8', 'replace'), float(t))
        return out
