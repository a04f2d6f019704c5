"""Reading a descriptor that someone may have left non-blocking.

A pipe or socket on fd 0 can come with O_NONBLOCK set by a parent that
shares it (a web server's worker, a node process).  A read that finds
no data yet then fails with EAGAIN, which Python's buffered files take
for the end of the input: sendmail would queue the message cut short
and exit 0.  The flag belongs to the open file the parent shares, so it
is not cleared here (the parent relies on it); instead a read that
finds nothing waits in poll() for data, as a blocking read would.
"""

import io
import os
import select


def wait_readable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        try:
            poller.poll()
            return
        except InterruptedError:
            continue


def read(fd: int, n: int) -> bytes:
    """os.read(fd, n), waiting for data where fd is non-blocking."""
    while True:
        try:
            return os.read(fd, n)
        except BlockingIOError:
            wait_readable(fd)


class Raw(io.RawIOBase):
    """fd as a raw file for io.BufferedReader; reads wait (read()); the
    descriptor is never closed here."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = read(self.fd, len(b))
        b[:len(data)] = data
        return len(data)


def reader(fd: int, buffering: int = io.DEFAULT_BUFFER_SIZE) -> io.BufferedReader:
    """A buffered binary file reading fd, left open at the end."""
    return io.BufferedReader(Raw(fd), buffering)
