"""tcpserver's access rules: read the cdb that tcprules(1) compiles.

The key tried first wins: TCPREMOTEINFO@TCPREMOTEIP, TCPREMOTEIP,
=TCPREMOTEHOST, the IP's shorter prefixes ending in '.' (or ':' for
IPv6), =suffixes of the host starting with '.', then "=", then "".  The
data is "D" (deny) or a list of "+VAR=VALUE" items, each NUL-ended.
Same rules, same file, as Debian's tcpserver, so one tcp.smtp.cdb
serves both ways of running qmail-smtpd.
"""

import os
import time

from qmail.lib import cdb, control


def candidates(ip: str, host: str = None, info: str = None):
    """The rule names to try, in order."""
    out = []
    if info:
        out.append('%s@%s' % (info, ip))
    out.append(ip)
    if host:
        out.append('=' + host)
    sep = ':' if ':' in ip else '.'
    for k in range(len(ip) - 1, 0, -1):
        if ip[k - 1] == sep:
            out.append(ip[:k])
    if host:
        for k, ch in enumerate(host):
            if ch == '.':
                out.append('=' + host[k:])
        out.append('=')
    out.append('')
    return out


def parse(data: bytes):
    """(allowed, {VAR: VALUE}) from a rule's data."""
    if data.startswith(b'D'):
        return False, {}
    env = {}
    for item in data.split(b'\0'):
        if item.startswith(b'+') and b'=' in item:
            var, _, value = item[1:].partition(b'=')
            env[var.decode('latin-1')] = value.decode('latin-1')
    return True, env


# A pre-forked qmail-listen worker looks rules up at every connection: the
# file read whole is kept while a stat() shows it unchanged (as
# qmail.lib.control keeps controls, racy changes included).
_kept = {}          # path -> (stamp, Cdb)


def _rules(path: str):
    """(the rules' Cdb, whether the caller must close it)."""
    st = os.stat(path)
    current = control.stamp(st)
    hit = _kept.get(path)
    if hit is not None and hit[0] == current and control.settled(st, time.time()):
        return hit[1], False
    _kept.pop(path, None)
    db = cdb.Cdb(path)
    if not db.in_memory:
        return db, True
    _kept[path] = (current, db)
    return db, False


def lookup(path: str, ip: str, host: str = None, info: str = None):
    """(allowed, env, rule name) for a connection; no rule: allowed.
    Raises cdb.CdbError or OSError if the file cannot be read."""
    db, owned = _rules(path)
    try:
        for name in candidates(ip, host, info):
            data = db.get(name.encode('latin-1'))
            if data is not None:
                allowed, env = parse(data)
                return allowed, env, name
    finally:
        if owned:
            db.close()
    return True, {}, None
