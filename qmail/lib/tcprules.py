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
# So are its answers, per client, while it is: most connections come
# from clients seen before, and each lookup tries several keys.
_kept = {}          # path -> (stamp, Cdb, {(ip, host, info): answer})
ANSWERS_KEPT = 4096


def _rules(path: str):
    """(the rules' Cdb, whether the caller must close it, the answers
    kept for it or None)."""
    st = os.stat(path)
    current = control.stamp(st)
    settled = control.settled(st, time.time())
    hit = _kept.get(path)
    if hit is not None and hit[0] == current and settled:
        if hit[2] is None:          # read while racy, settled since
            hit = _kept[path] = (hit[0], hit[1], {})
        return hit[1], False, hit[2]
    _kept.pop(path, None)
    db = cdb.Cdb(path)
    if not db.in_memory:
        return db, True, None
    answers = {} if settled else None
    _kept[path] = (current, db, answers)
    return db, False, answers


def lookup(path: str, ip: str, host: str = None, info: str = None):
    """(allowed, env, rule name) for a connection; no rule: allowed.
    Raises cdb.CdbError or OSError if the file cannot be read."""
    db, owned, answers = _rules(path)
    key = (ip, host, info)
    if answers is not None:
        got = answers.get(key)
        if got is not None:
            allowed, env, name = got
            return allowed, dict(env), name
    try:
        got = True, {}, None
        for name in candidates(ip, host, info):
            data = db.get(name.encode('latin-1'))
            if data is not None:
                allowed, env = parse(data)
                got = allowed, env, name
                break
    finally:
        if owned:
            db.close()
    if answers is not None:
        if len(answers) >= ANSWERS_KEPT:
            answers.clear()
        answers[key] = got
        got = got[0], dict(got[1]), got[2]
    return got
