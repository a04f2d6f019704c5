"""Log lines on fd 2, where a server under tcpserver or qmail-listen
has its log (multilog, splogger), but never into the client's stream.

Under inetd, fds 0, 1 and 2 are all the connection, and "sendmail -bs
2>&1" gives qmail-smtpd one pipe for both: qmail's servers write nothing
there but their protocol, and a log line would reach the client as a
bogus reply (before the real 250 of a message already queued, say).
"""

import os


def shares_client(fd: int = 2) -> bool:
    """Is fd the file of fd 0 or fd 1 (or unusable)?"""
    try:
        st = os.fstat(fd)
        for other in (0, 1):
            o = os.fstat(other)
            if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino):
                return True
    except OSError:
        return True
    return False


def log(line: bytes, fd: int = 2) -> None:
    """Write line to fd unless it is the client's stream; no error."""
    if shares_client(fd):
        return
    try:
        os.write(fd, line)
    except OSError:
        pass
