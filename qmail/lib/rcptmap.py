"""The recipient map: is a local address deliverable?  qmail-smtpd's side.

Beyond qmail 1.03.  qmail-newrcpt (qmail/newrcpt.py, run by root) works
out, by the rules of qmail-send, qmail-lspawn, qmail-getpw and
qmail-local, which local parts would find a mailbox, and writes them to
HOME/users/rcpt.cdb.  qmail-smtpd, as qmaild, reads home directories
never: it only looks addresses up here, so that an unknown local
recipient gets 550 at RCPT time instead of a bounce (backscatter) later.

The check is on when HOME/control/rcptcheck exists (its contents are not
read) and users/rcpt.cdb exists; load() does both tests.

Keys are local parts, not addresses: check() first applies qmail-send's
rewrite() with the caller's Routing (locals, virtualdomains, percenthack,
envnoathost), so a remote address is 'unknown' (rcpthosts decides), and
info@virt.example is looked up as the local part prepend-info.  A change
to locals or virtualdomains therefore needs no rebuild.

Keys, all lowercased (qmail-lspawn, qmail-getpw and qmail-local all
ignore the case of a local part; only the environment of a delivery
sees it):
  "#v"              format version, b"1"
  "#w"              the family chars: the last byte of each non-empty
                    family prefix (as users/cdb's "" key holds its
                    wildchars); only prefixes ending in one are tried
  "#s"              stamps of the files the map was built from: path NUL
                    "mtime_ns size ino" (or "-": missing) NUL, repeated
  "=" local         an address with an exact answer (a users/assign
                    =local line; a passwd user's own name)
  "!" prefix        a family: every local part starting with prefix
                    belongs to one owner (a users/assign +loc line, a
                    passwd user's "name-", the alias user's ""); the
                    longest prefix present wins.
  "e" prefix NUL s  within family prefix: the rest of the local part,
                    with '.' as ':' (qmail-local's safeext), equals s
                    (a .qmail-<ext> file)
  "d" prefix NUL s  within family prefix: the rest, so transformed,
                    starts with s, which ends in '-' (a .qmail-<ext>-default)
The data of "=" and "!" keys is "+" (deliverable) or "-" (not: for a
family, unless an "e" or "d" key says so), then a space and a note
naming the owner; "e" and "d" data is "+".  qmail-newrcpt decides which
owner a prefix belongs to, so a lookup never needs more rules than these.

Staleness: the map stamps users/cdb, HOME/alias and the passwd file.
When one of them no longer matches (qmail-newu was run, a user was
added, an alias .qmail file came or went, but qmail-newrcpt was not
run), the map still answers, but "reject" becomes "unknown": a stale
map may know too few addresses, and refusing mail for a mailbox that
exists is worse than a late bounce.  .qmail files in users' homes are
not stamped (qmail-smtpd must not touch homes): run qmail-newrcpt after
a user adds one, or from cron.

A map that cannot be read or is corrupt answers "unknown" for every
address and says so in .warning; it never raises.
"""

import os
import time

from qmail.lib import cdb, control
from qmail.send_rules import Routing, rewrite

ACCEPT = 'accept'
REJECT = 'reject'
UNKNOWN = 'unknown'          # not this map's business: do what qmail 1.03 does

VERSION = b'1'
# qmail-local's "Sorry, no mailbox here by that name. (#5.1.1)", at RCPT.
REPLY_REJECT = b'550 sorry, no mailbox here by that name (#5.1.1)\r\n'


class MapError(Exception):
    """The map is not one qmail-newrcpt wrote: answer unknown."""


# ---- stamps: shared with qmail-newrcpt -------------------------------------

def stamp(path, stat_fn=os.stat) -> bytes:
    """What a source file looks like now: "mtime_ns size ino", or "-" if
    it does not exist.  Raises OSError for other trouble."""
    try:
        st = stat_fn(path)
    except (FileNotFoundError, NotADirectoryError):
        return b'-'
    return b'%d %d %d' % (st.st_mtime_ns, st.st_size, st.st_ino)


def format_stamps(stamps) -> bytes:
    """The "#s" data for [(path, stamp)]."""
    return b''.join(os.fsencode(p) + b'\0' + s + b'\0' for p, s in stamps)


def parse_stamps(data: bytes) -> list:
    """[(path, stamp)] from "#s" data; MapError if malformed."""
    fields = data.split(b'\0')
    if fields[-1] != b'' or len(fields) % 2 != 1:
        raise MapError('bad stamps')
    return [(fields[i], fields[i + 1]) for i in range(0, len(fields) - 1, 2)]


def stale_source(stamps, stat_fn=os.stat):
    """The first source whose stamp changed (bytes path), else None.  A
    source that cannot be stat()ed counts as changed: unverifiable."""
    for path, then in stamps:
        try:
            now = stamp(path, stat_fn)
        except OSError:
            return path
        if now != then:
            return path
    return None


# ---- the lookup: pure, given a get(key) function ---------------------------

def safe_rest(rest: bytes) -> bytes:
    """The part of a (lowercased) local part inside a family, as
    qmail-local names files: make_safeext, '.' becomes ':'."""
    return rest.replace(b'.', b':')


def verdict(data: bytes) -> bool:
    if data[:1] == b'+':
        return True
    if data[:1] == b'-':
        return False
    raise MapError('bad record')


LOOKUPMAX = 256      # bytes of a local part the map is asked about


def decide(local: bytes, get, famchars: bytes):
    """(deliverable, note) for a lowercased local part; get(key) is the
    map's first record for key, or None; deliverable None when the map
    cannot tell (a '/' in the part a .qmail file is named by: qmail-local
    then opens a file in a subdirectory of the home, which qmail-newrcpt
    does not look into).  MapError for a map that does not answer (no
    family at all)."""
    data = get(b'=' + local)
    if data is not None:
        return verdict(data), data[2:]
    for i in range(len(local), -1, -1):
        if i and local[i - 1] not in famchars:
            continue
        family = local[:i]
        data = get(b'!' + family)
        if data is None:
            continue
        if verdict(data):
            return True, data[2:]
        rest = safe_rest(local[i:])
        if b'/' in rest:
            return None, data[2:] + b' (a .qmail file in a subdirectory)'
        if get(b'e' + family + b'\0' + rest) is not None:
            return True, data[2:] + b' .qmail-' + rest
        for j in range(len(rest), 0, -1):
            if rest[j - 1:j] == b'-' and \
                    get(b'd' + family + b'\0' + rest[:j]) is not None:
                return True, data[2:] + b' .qmail-' + rest[:j] + b'default'
        return False, data[2:]
    raise MapError('no family for an address')


def local_part(recipient: bytes, routing: Routing):
    """The local part qmail-lspawn would see, lowercased, or None for a
    remote recipient."""
    channel, addr = rewrite(recipient, routing)
    if channel != 0:
        return None
    at = addr.rfind(b'@')
    local = addr[:at] if at != -1 else addr
    return local.split(b'\0', 1)[0].lower()    # lspawn sees a C string


# ---- the map file -----------------------------------------------------------

class RcptMap:
    """users/rcpt.cdb opened for qmail-smtpd.

    state is 'off' (no file: every answer unknown, nothing to say),
    'broken' (unreadable or corrupt: every answer unknown, .warning says
    why), 'stale' (a source changed since the build: rejects become
    unknown, .warning says which), or 'on'.  routing, if given, is used
    when check() gets none.
    """

    def __init__(self, path, *, routing: Routing = None, stat_fn=os.stat):
        self.path = path
        self.routing = routing
        self.state = 'off'
        self.warning = None
        self._db = None
        self._famchars = b''
        self._stamps = []
        self._opened = None     # the file's control.stamp(), if settled when read
        try:
            db = cdb.Cdb(path)
        except FileNotFoundError:
            return
        except (OSError, cdb.CdbError) as err:
            self._broken('unable to read %s: %s' % (path, err))
            return
        try:
            if db.get(b'#v') != VERSION:
                raise MapError('not a qmail-newrcpt map of version 1')
            self._famchars = db.get(b'#w') or b''
            stamps = parse_stamps(db.get(b'#s') or b'')
        except (cdb.CdbError, MapError) as err:
            db.close()
            self._broken('%s is corrupt: %s' % (path, err))
            return
        self._db = db
        self._stamps = stamps
        if control.settled(db.stat, time.time()):
            self._opened = control.stamp(db.stat)
        self.state = 'on'
        changed = stale_source(stamps, stat_fn)
        if changed is not None:
            self.state = 'stale'
            self.warning = ('%s is older than %s: run qmail-newrcpt; '
                            'refusing no recipient until then'
                            % (path, os.fsdecode(changed)))

    def reusable(self) -> bool:
        """May a later session use this map again, after fresh() says
        so?  Not a broken one.  (One over cdb's READ_ALL_LIMIT, read in
        pieces, holds its descriptor: descriptors says so.)"""
        return self.state != 'broken'

    @property
    def descriptors(self) -> int:
        """How many it holds open (a qmail-listen worker's count)."""
        return 0 if self._db is None else self._db.descriptors

    def fresh(self, stat_fn=os.stat) -> bool:
        """Would RcptMap(path) now answer as this one does?  The same
        file, unchanged (settled when read and since), and, for a map in
        use, its sources still as stamped: a few stat()s, where opening
        the map reads all of it."""
        if not self.reusable():
            return False
        try:
            st = stat_fn(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return self.state == 'off'
        except OSError:
            return False
        if self.state == 'off' or self._opened is None or self._opened != control.stamp(st):
            return False
        # A stale map stays stale: only a new build (a new file) helps.
        return self.state == 'stale' or stale_source(self._stamps, stat_fn) is None

    def _broken(self, why: str) -> None:
        self.state = 'broken'
        self.warning = why + '; refusing no recipient'
        if self._db is not None:
            self._db.close()
            self._db = None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def explain(self, recipient: bytes, routing: Routing = None):
        """(answer, note): check()'s answer and the owner it came from."""
        routing = self.routing if routing is None else routing
        if self._db is None:
            return UNKNOWN, b'no map'
        if routing is None:
            raise ValueError('RcptMap.check needs a Routing')
        local = local_part(recipient, routing)
        if local is None:
            return UNKNOWN, b'not a local domain'
        if len(local) > LOOKUPMAX:
            # Each '-' is a lookup of the part before it: a local part of
            # hundreds would cost a client's RCPT milliseconds of CPU.
            # Refused, not left to qmail-local: padding an unknown name
            # with dashes must not get it past the map (RFC 5321 allows
            # 64 bytes; VERP addresses stay well under this).
            return REJECT, b'local part too long to look up'
        try:
            ok, note = decide(local, self._db.get, self._famchars)
        except (cdb.CdbError, MapError) as err:
            self._broken('%s is corrupt: %s' % (self.path, err))
            return UNKNOWN, b'corrupt map'
        if ok:
            return ACCEPT, note
        if ok is None:
            return UNKNOWN, note
        if self.state == 'stale':
            return UNKNOWN, note + b' (stale map)'
        return REJECT, note

    def check(self, recipient: bytes, routing: Routing = None) -> str:
        """'accept', 'reject' or 'unknown' for one envelope recipient.

        'reject': qmail-local would say "no mailbox here by that name";
        refuse it (REPLY_REJECT).  'unknown': a remote domain, or no
        usable map: go on as qmail 1.03 does (rcpthosts).  Never raises
        for a bad map.
        """
        return self.explain(recipient, routing)[0]


# ---- the control ------------------------------------------------------------

def map_path(home) -> str:
    """HOME/users/rcpt.cdb."""
    return os.path.join(home, 'users', 'rcpt.cdb')


def routing_from_control(ctl: control.Controls) -> Routing:
    """qmail-send's Routing, from the same control files qmail-send
    reads (locals, virtualdomains, percenthack, envnoathost)."""
    return Routing(ctl.lines('locals', flagme=True),
                   ctl.lines('virtualdomains'),
                   ctl.lines('percenthack'),
                   ctl.line('envnoathost', b'envnoathost', flagme=True))


def load(home='.', stat_fn=os.stat):
    """The RcptMap qmail-smtpd should use, or None: the check is off.

    Off unless HOME/control/rcptcheck exists.  Then HOME/users/rcpt.cdb
    is opened (state 'off' if it is missing) with the routing read from
    control.  Raises OSError when a control file cannot be read, as
    other controls do (qmail-smtpd: 421).
    """
    ctl = control.Controls(os.path.join(home, 'control'))
    if not ctl.exists('rcptcheck'):
        return None
    rmap = RcptMap(map_path(home), routing=routing_from_control(ctl),
                   stat_fn=stat_fn)
    if rmap.state == 'off':
        rmap.warning = ('control/rcptcheck exists but %s does not: run '
                        'qmail-newrcpt' % rmap.path)
    return rmap
