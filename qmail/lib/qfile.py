"""Names of queue files: qmail's fmtqfn.

A message is known by its number, the inode of its mess file.  The
directories mess, info, local and remote are split into SPLIT
subdirectories by number modulo SPLIT; todo, intd and bounce are not.
Names are relative to HOME/queue, where every queue program works.
"""

SPLITDIRS = ('mess', 'info', 'local', 'remote')
FLATDIRS = ('todo', 'intd', 'bounce')


def qfn(directory: str, messid: int, split: int) -> str:
    """The queue file for message messid in directory."""
    if directory in SPLITDIRS:
        return '%s/%d/%d' % (directory, messid % split, messid)
    return '%s/%d' % (directory, messid)


def pidfn(pid: int, starttime: int, seq: int) -> str:
    """qmail-queue's temporary name, unique to this process and attempt."""
    return 'pid/%d.%d.%d' % (pid, starttime, seq)


def parse_messid(name: str):
    """The message number a queue file name carries, or None if it is not
    all digits (such files are not ours and are left alone)."""
    if name and name.isdigit() and name.isascii() and len(name) < 20:
        return int(name)
    return None
