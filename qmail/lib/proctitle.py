"""Process titles, as ps shows them: never a reason for a program to fail.

set_title(title) uses setproctitle where it is installed.  A title made
from bytes that are not UTF-8 (a user name from users/assign, an
argument: os.fsdecode() keeps such bytes as lone surrogates, which
setproctitle refuses) shows them as \\xNN.  Any trouble leaves the title
as it was.
"""

import os


def printable(title: str) -> str:
    """title with each byte that is not UTF-8 written as \\xNN."""
    return os.fsencode(title).decode('utf-8', 'backslashreplace')


def set_title(title: str) -> None:
    try:
        from setproctitle import setproctitle
        setproctitle(printable(title))
    except Exception:
        pass
