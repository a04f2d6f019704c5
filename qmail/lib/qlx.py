"""qlx.h: the exit codes qmail-lspawn's child and qmail-getpw report.

0, 111 and 100 are qmail-local's own success, soft and hard failure;
these others say what went wrong before or around qmail-local, and
qmail-lspawn's report() turns each into a Z (or, for QLX_EXECHARD, a D)
line for qmail-send.  Only QLX_EXECHARD is permanent.
"""

QLX_USAGE = 112         # internal bug: bad nughde record, chdir, setuid
QLX_BUG = 101
QLX_ROOT = 113          # the user's uid is 0: never deliver as root
QLX_NFS = 115           # temporary error stat()ing a home directory
QLX_NOALIAS = 116       # no alias user to take the address
QLX_CDB = 117           # trouble reading users/cdb
QLX_SYS = 118           # temporary system trouble (fork, pipe, getpwnam)
QLX_NOMEM = 119
QLX_EXECSOFT = 120      # unable to run qmail-local, temporarily
QLX_EXECPW = 121        # unable to run qmail-getpw
QLX_EXECHARD = 126      # unable to run qmail-local, permanently

# qmail-lspawn's report() text for each code: (letter, text).
REPORTS = {
    QLX_CDB: ('Z', 'Trouble reading users/cdb in qmail-lspawn.'),
    QLX_NOMEM: ('Z', 'Out of memory in qmail-lspawn.'),
    QLX_SYS: ('Z', 'Temporary failure in qmail-lspawn.'),
    QLX_NOALIAS: ('Z', 'Unable to find alias user!'),
    QLX_ROOT: ('Z', 'Not allowed to perform deliveries as root.'),
    QLX_USAGE: ('Z', 'Internal qmail-lspawn bug.'),
    QLX_NFS: ('Z', 'NFS failure in qmail-local.'),
    QLX_EXECHARD: ('D', 'Unable to run qmail-local.'),
    QLX_EXECSOFT: ('Z', 'Unable to run qmail-local.'),
    QLX_EXECPW: ('Z', 'Unable to run qmail-getpw.'),
}


class Qlx(Exception):
    """Trouble finding a user for an address; .code is the qlx.h code
    the process should exit with."""

    def __init__(self, code: int, why: str = ''):
        super().__init__(code, why)
        self.code = code
        self.why = why

    def __str__(self):
        return '%s (qlx %d)' % (self.why or 'qlx', self.code)
