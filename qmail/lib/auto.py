"""Install-time constants: qmail's auto_qmail, auto_uids, auto_split.

qmail compiles its home, its users' ids and the queue split into every
binary, so no environment variable can redirect a privileged program.
This file plays that part.  The copy in the source tree is a template
for development (home /var/qmail, ids looked up by name); qmail-install
writes the real one into HOME/lib/python/qmail/lib/auto.py with every
value fixed, and the programs in HOME/bin import that copy.
"""

import grp
import pwd

QMAIL = '/var/qmail'
SPLIT = 23              # conf-split: subdirectories of mess, info, local, remote
BREAK = '-'             # conf-break: the user-extension delimiter
PATRN = 0o002           # conf-patrn: mode bits a .qmail file or home may not have
PYTHON = '/usr/local/lib/qmail/venv/bin/python3'

# conf-users and conf-groups, in qmail's roles.
USER_ALIAS = 'alias'
USER_DAEMON = 'qmaild'
USER_LOG = 'qmaill'
USER_OWNER = 'root'
USER_PASSWD = 'qmailp'
USER_QUEUE = 'qmailq'
USER_REMOTE = 'qmailr'
USER_SEND = 'qmails'
GROUP_QMAIL = 'qmail'
GROUP_NOFILES = 'nofiles'

UIDS = None             # the installed copy fixes {user name: uid}
GIDS = None             # and {group name: gid}


def uid(name: str) -> int:
    """The uid of one of qmail's users."""
    if UIDS is not None:
        return UIDS[name]
    return pwd.getpwnam(name).pw_uid


def gid(name: str) -> int:
    """The gid of one of qmail's groups."""
    if GIDS is not None:
        return GIDS[name]
    return grp.getgrnam(name).gr_gid
