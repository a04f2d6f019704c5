"""Which copy of the code running daemons are on.

qmail-install puts each new copy of the package in HOME/lib/python.<x>
and switches the link HOME/lib/python to it; the copies before go, but
not one a daemon still runs on: its late imports (qmail-smtpd's TLS at
the first STARTTLS, qmail-remote in a new qmail-rspawn worker) must
find their files until it is restarted.  So each long-running daemon
(qmail-start before it forks the others, qmail-listen before its
workers) maps this very file of its copy into memory: no descriptor is
kept, the children forked inherit the mapping, and the installer finds
it in /proc/<pid>/maps.
"""

import mmap
import os

_mapped = []


def mark():
    """Map this file of the running copy (once per process tree)."""
    if _mapped:
        return
    try:
        with open(os.path.abspath(__file__), 'rb') as f:
            _mapped.append(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))
    except (OSError, ValueError):
        pass                            # (a copy being removed: nothing to keep)


def copies_in_use(lib: str) -> set:
    """The names (python.<x>) of lib's copies some process has mapped."""
    prefix = (os.path.join(os.path.abspath(lib), 'python.')).encode()
    out = set()
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/maps' % pid, 'rb') as f:
                data = f.read()
        except OSError:
            continue                    # gone meanwhile
        start = 0
        while True:
            i = data.find(prefix, start)
            if i < 0:
                break
            name = data[i + len(prefix) - len(b'python.'):].split(b'/', 1)[0]
            out.add(os.fsdecode(name))
            start = i + len(prefix)
    return out
