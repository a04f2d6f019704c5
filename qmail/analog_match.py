"""qmail-analog's matchup: qmail-send's log lines become messages and deliveries.

A part of qmail-analog (qmail/analog.py); pure: lines in, records out.

Stamps:   each line may begin with a time stamp, recognized here and only
          here: multilog's @tai64n label (2^62 + 10 + seconds, 16 hex
          digits, then 8 hex digits of nanoseconds; the 10 is TAI-UTC as
          tai64nunix assumes, without a leap-second table); splogger's or
          accustamp's "seconds.fraction" (a '+' after it marks splogger's
          continuation of a folded line, which is skipped); syslog's
          "Mmm dd hh:mm:ss host tag:" (then splogger's stamp inside, if
          any, wins); RFC 3339 / tai64nlocal "yyyy-mm-dd[T ]hh:mm:ss.f"
          (optionally followed by syslog's host and tag); or none.  A line
          without a stamp takes the time of the line before it (0 before
          any), so a log with no stamps at all still counts right, with
          every delay 0.
Matching: as qmailanalog's matchup does.  A message is known from its
          "info msg" line until its "end msg" line, which makes an m
          record; "new msg" forgets an older message of the same number
          (numbers are inodes, reused at once).  A delivery is known from
          "starting delivery" until "delivery N: success|failure|deferral"
          (or "report mangled", a deferral), which makes a d record and
          counts toward its message.  Delivery numbers start again at 1 in
          each run of qmail-send, so "status: exiting", or a delivery
          number not above the last one started, ends the run: deliveries
          still open then were lost (qmail-send died) and are dropped.
          Messages live across runs: they stay in the queue.
Middles:  a log may start in the middle: a result whose start is missing
          is counted and dropped (matchup drops it too); a delivery of a
          message whose info line is missing gets matchup's stand-ins
          (birth = start of delivery, 0 bytes, sender, qp and uid "?"); an
          "end msg" of such a message makes no m record but is kept, for
          the queue-size plot, as a message present since the log began.
Records:  m birth done bytes nk nd nz <sender> qp uid
          d result birth dstart ddone bytes <sender> chan.recip qp uid reason
          in matchup's order (nk successes, nd failures, nz deferrals;
          result k, d or z); times are nanoseconds since the epoch here and
          "seconds.fraction" when printed.  Sender and recipient are
          lowercased (ASCII) and the reason has its blanks made '_', as
          matchup does.  matchup's own m and d lines are accepted as input
          too, and its pending output ("info msg", "extra", "starting
          delivery" lines), so a long log can be processed in chunks.
See:      qmail-log(5); qmailanalog's matchup(1).
"""

import calendar
import re
import time

NS = 1_000_000_000
TAI_EPOCH = 2 ** 62 + 10        # label of 1970-01-01 00:00:00 UTC, as tai64nunix

# What a stamp was; CONT is splogger's folded continuation, not a line.
NONE, TAI, NUM, SYSLOG, ISO, CONT = range(6)

MONTHS = {m: i for i, m in enumerate(
    'Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec'.split(), 1)}
# A yearless syslog date is put in this (leap) year, so Feb 29 exists;
# the matcher moves it on a year when the months wrap (Dec -> Jan).
SYSLOG_YEAR = 2000
# Stamps are believed from 1970 to the end of 9999: beyond, no calendar
# (gmtime, the charts' axes) can show them, and no log was written then.
TIME_MAX = 253402300800 * NS
HALF_YEAR = 183 * 86400 * NS
YEAR_NS = 365 * 86400 * NS
YEAR_MAX = 9999                 # (TIME_MAX's): no syslog date is moved past it

# ASCII: \d must not take other scripts' digits, which int() would refuse
RE_HEX24 = re.compile(r'[0-9a-fA-F]{24}', re.ASCII)
RE_NUM = re.compile(r'(\d+)(?:\.(\d*))?(?:(\+)|[ \t]+)', re.ASCII)
RE_SYSLOG = re.compile(r'([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)[ \t]+', re.ASCII)
RE_ISO = re.compile(r'(\d{4})-(\d\d)-(\d\d)[T _](\d\d):(\d\d):(\d\d)'
                    r'(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)?[ \t]+', re.ASCII)
RE_HOSTTAG = re.compile(r'\S+[ \t]+[^\s:]+:[ \t]*')
RE_INFO = re.compile(r'info msg (\d+): bytes (\d+) from (<.*>) qp (\d+) uid (\d+)\s*$',
                     re.ASCII)

# First words of the lines qmail-send (and matchup) write: a line starting
# with one of them is not preceded by a syslog host and tag.
KNOWN = frozenset(('status:', 'new', 'info', 'starting', 'delivery', 'end',
                   'bounce', 'triple', 'warning:', 'alert:', 'extra', 'm', 'd'))

LOWER = str.maketrans('ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
RESULTS = (('succ', 'k'), ('fail', 'd'), ('defer', 'z'), ('report', 'z'))


# -- stamps -----------------------------------------------------------------
def tai64n_ns(label: str) -> int:
    """Nanoseconds since the epoch of a tai64n label (24 hex digits, no @).
    Raises ValueError if it is not one."""
    if not RE_HEX24.fullmatch(label):
        raise ValueError('tai64n label is 24 hex digits')
    return (int(label[:16], 16) - TAI_EPOCH) * NS + int(label[16:], 16)


def frac_ns(frac: str) -> int:
    """Nanoseconds of the digits after a decimal point."""
    return int(frac[:9].ljust(9, '0')) if frac else 0


def num_ns(text: str) -> int:
    """Nanoseconds of "seconds[.fraction]"; ValueError if not that."""
    sec, dot, frac = text.partition('.')
    if not (sec.isascii() and sec.isdigit()) or (frac and not (frac.isascii() and frac.isdigit())):
        raise ValueError('not seconds.fraction: %r' % text)
    ns = int(sec) * NS + frac_ns(frac)
    if ns >= TIME_MAX:
        raise ValueError('time beyond 9999: %r' % text)
    return ns


def fmt_stamp(ns: int) -> str:
    """"seconds.fraction": 6 digits when the stamp has no more (splogger),
    else 9 (tai64n), as matchup prints its input's stamps."""
    if ns < 0:
        return '-' + fmt_stamp(-ns)
    sec, nsec = divmod(ns, NS)
    if nsec % 1000 == 0:
        return '%d.%06d' % (sec, nsec // 1000)
    return '%d.%09d' % (sec, nsec)


def strip_hosttag(rest: str) -> str:
    """Drop syslog's "host tag: " unless the line is already qmail's."""
    head = rest.split(None, 1)
    if head and head[0] not in KNOWN:
        m = RE_HOSTTAG.match(rest)
        if m:
            return rest[m.end():]
    return rest


def inner_stamp(rest: str):
    """splogger's stamp after a syslog prefix: (kind, ns, rest) or None."""
    m = RE_NUM.match(rest)
    if not m:
        return None
    kind = CONT if m.group(3) else NUM
    return kind, int(m.group(1)) * NS + frac_ns(m.group(2)), rest[m.end():]


def parse_stamp(line: str):
    """(kind, ns or None, rest of the line) for one log line; a stamp out
    of TIME_MAX's range is no stamp."""
    kind, ns, rest = read_stamp(line)
    if ns is not None and not 0 <= ns < TIME_MAX:
        return NONE, None, line
    return kind, ns, rest


def read_stamp(line: str):
    if line[:1] == '@':
        try:
            ns = tai64n_ns(line[1:25])
        except ValueError:
            return NONE, None, line
        return TAI, ns, line[25:].lstrip(' \t')
    c = line[:1]
    if '0' <= c <= '9':
        m = RE_ISO.match(line)
        if m:
            y, mo, d, hh, mm, ss, frac, tz = m.groups()
            try:
                sec = calendar.timegm((int(y), int(mo), int(d), int(hh),
                                       int(mm), int(ss), 0, 0, 0))
            except (ValueError, OverflowError):
                return NONE, None, line
            # XXX: a stamp without a zone (tai64nlocal) is local time; it is
            # taken as UTC, which keeps every delay right but across a DST change.
            if tz and tz != 'Z':
                off = (int(tz[1:3]) * 60 + int(tz[-2:])) * 60
                sec -= off if tz[0] == '+' else -off
            rest = strip_hosttag(line[m.end():])
            return inner_stamp(rest) or (ISO, sec * NS + frac_ns(frac), rest)
        m = RE_NUM.match(line)
        if m:
            kind = CONT if m.group(3) else NUM
            return kind, int(m.group(1)) * NS + frac_ns(m.group(2)), line[m.end():]
        return NONE, None, line
    if 'A' <= c <= 'Z':
        m = RE_SYSLOG.match(line)
        if m and m.group(1) in MONTHS:
            mon, day, hh, mm, ss = m.groups()
            try:
                sec = calendar.timegm((SYSLOG_YEAR, MONTHS[mon], int(day),
                                       int(hh), int(mm), int(ss), 0, 0, 0))
            except (ValueError, OverflowError):
                return NONE, None, line
            rest = strip_hosttag(line[m.end():])
            return inner_stamp(rest) or (SYSLOG, sec * NS, rest)
    return NONE, None, line


# -- records ----------------------------------------------------------------
class Message:
    """An m record: a message that left the queue."""
    __slots__ = ('birth', 'done', 'bytes', 'nk', 'nd', 'nz', 'sender', 'qp', 'uid')

    def __init__(self, birth, done, nbytes, nk, nd, nz, sender, qp, uid):
        self.birth, self.done, self.bytes = birth, done, nbytes
        self.nk, self.nd, self.nz = nk, nd, nz
        self.sender, self.qp, self.uid = sender, qp, uid

    def line(self) -> str:
        return 'm %s %s %d %d %d %d %s %s %s' % (
            fmt_stamp(self.birth), fmt_stamp(self.done), self.bytes,
            self.nk, self.nd, self.nz, self.sender, self.qp, self.uid)


class Delivery:
    """A d record: one finished delivery attempt."""
    __slots__ = ('result', 'birth', 'dstart', 'ddone', 'bytes', 'sender',
                 'chan', 'recip', 'qp', 'uid', 'reason')

    def __init__(self, result, birth, dstart, ddone, nbytes, sender, chan,
                 recip, qp, uid, reason):
        self.result, self.birth, self.dstart, self.ddone = result, birth, dstart, ddone
        self.bytes, self.sender, self.chan, self.recip = nbytes, sender, chan, recip
        self.qp, self.uid, self.reason = qp, uid, reason

    @property
    def target(self) -> str:
        """chan.recip, the recipient as the reports name it."""
        return '%s.%s' % (self.chan, self.recip)

    def line(self) -> str:
        return 'd %s %s %s %s %d %s %s %s %s %s' % (
            self.result, fmt_stamp(self.birth), fmt_stamp(self.dstart),
            fmt_stamp(self.ddone), self.bytes, self.sender, self.target,
            self.qp, self.uid, self.reason)


class MsgState:
    """A message in the queue, between its info and end lines."""
    __slots__ = ('birth', 'bytes', 'sender', 'qp', 'uid', 'nk', 'nd', 'nz')

    def __init__(self, birth, nbytes, sender, qp, uid):
        self.birth, self.bytes, self.sender, self.qp, self.uid = birth, nbytes, sender, qp, uid
        self.nk = self.nd = self.nz = 0


class DelState:
    """A delivery under way, between its starting and result lines."""
    __slots__ = ('messid', 'chan', 'recip', 'start')

    def __init__(self, messid, chan, recip, start):
        self.messid, self.chan, self.recip, self.start = messid, chan, recip, start


def parse_record(fields: list):
    """A Message or Delivery from matchup's own m or d line (split);
    ValueError if malformed."""
    if fields[0] == 'm' and len(fields) == 10:
        return Message(num_ns(fields[1]), num_ns(fields[2]), int(fields[3]),
                       int(fields[4]), int(fields[5]), int(fields[6]),
                       fields[7], fields[8], fields[9])
    if fields[0] == 'd' and len(fields) in (10, 11) and fields[1] in ('k', 'd', 'z'):
        chan, dot, recip = fields[7].partition('.')
        return Delivery(fields[1], num_ns(fields[2]), num_ns(fields[3]),
                        num_ns(fields[4]), int(fields[5]), fields[6], chan,
                        recip, fields[8], fields[9],
                        fields[10] if len(fields) == 11 else '')
    raise ValueError('not a matchup record')


# -- the matcher --------------------------------------------------------------
def in_year(ns: int, years: int) -> int:
    """A yearless syslog date (ns, read as SYSLOG_YEAR's) as the same
    day and time years later (Feb 29 where there is none: Mar 1)."""
    if not years:
        return ns
    sec, frac = divmod(ns, NS)
    t = time.gmtime(sec)
    year = SYSLOG_YEAR + years
    mon, day = t.tm_mon, t.tm_mday
    if (mon, day) == (2, 29) and not calendar.isleap(year):
        mon, day = 3, 1
    return calendar.timegm((year, mon, day, t.tm_hour, t.tm_min, t.tm_sec)) * NS + frac


class Matcher:
    """Feed it log lines (without their newline) in order; read records.

    items keeps matchup's output in log order: Message and Delivery records
    and the lines passed through as text (warnings, alerts, bounces as they
    were; unknown lines behind "? ")."""

    def __init__(self):
        self.msgs = {}            # messid -> MsgState
        self.dels = {}            # delivery number -> DelState, this run
        self.lastdel = 0          # highest delivery number started this run
        self.items = []
        self.messages = []
        self.deliveries = []
        self.stray_ends = []      # end-msg times of messages never seen starting
        self.stray_results = 0    # results of deliveries never seen starting
        self.lost = 0             # deliveries started, never finished, run ended
        self.runs_ended = 0
        self.bounces = 0
        self.triples = 0
        self.warnings = 0
        self.alerts = 0
        self.unknown = 0
        self.lines = 0
        self.stamped = 0          # lines that carried a time stamp
        self.first = None         # earliest and latest time seen
        self.last = None
        self.now = None           # time of the latest line
        self.syslog_years = 0     # years added to yearless syslog dates
        self.syslog_last = None
        self.dated_last = None    # the latest stamp with its year (a -p file's)

    # -- time --
    def clock(self, kind: int, ns):
        if ns is None:
            return self.now if self.now is not None else 0
        if kind == SYSLOG:
            # A date half a year before the last one is next year's (from
            # SYSLOG_YEAR, a leap year, on); before any, the last stamp
            # that has its year sets it: the pending lines of an earlier
            # chunk (-p) are such, and their messages were born then.
            base = ns
            ns = in_year(base, self.syslog_years)
            last = self.syslog_last if self.syslog_last is not None else self.dated_last
            if last is not None and ns < last - HALF_YEAR:
                # (a year or more at once: from 2000 to a -p file's year)
                years = self.syslog_years + max(1, (last - ns) // YEAR_NS)
                while ns < last - HALF_YEAR and SYSLOG_YEAR + years <= YEAR_MAX:
                    ns = in_year(base, years)
                    self.syslog_years = years
                    years += 1
            self.syslog_last = ns
        else:
            self.dated_last = ns
        self.stamped += 1
        self.now = ns
        if self.first is None or ns < self.first:
            self.first = ns
        if self.last is None or ns > self.last:
            self.last = ns
        return ns

    # -- lines --
    def feed(self, line: str) -> None:
        kind, ns, rest = parse_stamp(line)
        if kind == CONT:
            return
        fields = rest.split()
        if not fields:
            return
        self.lines += 1
        t = self.clock(kind, ns)
        word = fields[0]
        try:
            if word == 'status:':
                if fields[1:2] == ['exiting']:
                    self.end_run()
            elif word == 'starting' and fields[1:2] == ['delivery']:
                self.starting(t, fields)
            elif word == 'delivery':
                self.delivery(t, rest, fields)
            elif word == 'new' and fields[1:2] == ['msg']:
                self.msgs.pop(int(fields[2]), None)
            elif word == 'info' and fields[1:2] == ['msg']:
                self.info(t, rest)
            elif word == 'end' and fields[1:2] == ['msg']:
                self.endmsg(t, int(fields[2]))
            elif word == 'extra':
                self.extra(fields)
            elif word == 'bounce' and fields[1:2] == ['msg']:
                self.bounces += 1
                self.items.append(line)
            elif word == 'triple' and fields[1:2] == ['bounce:']:
                self.triples += 1
                self.items.append(line)
            elif word == 'warning:':
                self.warnings += 1
                self.items.append(line)
            elif word == 'alert:':
                self.alerts += 1
                self.items.append(line)
            elif word in ('m', 'd') and kind == NONE:
                self.record(parse_record(fields))
            else:
                raise ValueError('unknown line')
        except (ValueError, IndexError):
            self.unknown += 1
            self.items.append('? ' + line)

    def end_run(self):
        """qmail-send's run is over: its open deliveries will never finish."""
        self.lost += len(self.dels)
        self.dels.clear()
        self.lastdel = 0
        self.runs_ended += 1

    def starting(self, t: int, fields: list):
        # starting delivery D: msg M to local|remote R
        if len(fields) < 7 or not fields[2].endswith(':') or fields[5] != 'to':
            raise ValueError('malformed starting line')
        d = int(fields[2][:-1])
        m = int(fields[4])
        if d <= self.lastdel:
            self.end_run()         # a new qmail-send numbers from 1 again
        self.lastdel = d
        recip = fields[7] if len(fields) > 7 else ''
        self.dels[d] = DelState(m, fields[6], recip.translate(LOWER), t)

    def delivery(self, t: int, rest: str, fields: list):
        # delivery D: success|failure|deferral: REPORT / report mangled, will defer
        if not fields[1].endswith(':') or len(fields) < 3:
            raise ValueError('malformed delivery line')
        d = int(fields[1][:-1])
        for prefix, result in RESULTS:
            if fields[2].startswith(prefix):
                break
        else:
            raise ValueError('unknown delivery result')
        if prefix == 'report':
            reason = 'report_mangled'
        else:
            parts = rest.split(None, 3)
            reason = '_'.join(parts[3].split()) if len(parts) > 3 else ''
        ds = self.dels.pop(d, None)
        if ds is None:
            self.stray_results += 1
            return
        ms = self.msgs.get(ds.messid)
        if ms is None:
            rec = Delivery(result, ds.start, ds.start, t, 0, '?', ds.chan,
                           ds.recip, '?', '?', reason)
        else:
            if result == 'k':
                ms.nk += 1
            elif result == 'd':
                ms.nd += 1
            else:
                ms.nz += 1
            rec = Delivery(result, ms.birth, ds.start, t, ms.bytes, ms.sender,
                           ds.chan, ds.recip, ms.qp, ms.uid, reason)
        self.deliveries.append(rec)
        self.items.append(rec)

    def info(self, t: int, rest: str):
        m = RE_INFO.match(rest)
        if not m:
            raise ValueError('malformed info line')
        messid = int(m.group(1))
        self.msgs[messid] = MsgState(t, int(m.group(2)), m.group(3).translate(LOWER),
                                     m.group(4), m.group(5))

    def endmsg(self, t: int, messid: int):
        ms = self.msgs.pop(messid, None)
        if ms is None:
            self.stray_ends.append(t)
            return
        rec = Message(ms.birth, t, ms.bytes, ms.nk, ms.nd, ms.nz, ms.sender, ms.qp, ms.uid)
        self.messages.append(rec)
        self.items.append(rec)

    def extra(self, fields: list):
        # extra M nk nz nd: counts carried over by matchup's pending output
        ms = self.msgs.get(int(fields[1]))
        if ms is not None:
            ms.nk, ms.nz, ms.nd = int(fields[2]), int(fields[3]), int(fields[4])

    def record(self, rec):
        """One of matchup's own m or d lines, read back in."""
        if isinstance(rec, Message):
            self.messages.append(rec)
            self.note_time(rec.birth)
            self.note_time(rec.done)
        else:
            self.deliveries.append(rec)
            self.note_time(rec.dstart)
            self.note_time(rec.ddone)
        self.items.append(rec)

    def note_time(self, ns: int):
        if self.first is None or ns < self.first:
            self.first = ns
        if self.last is None or ns > self.last:
            self.last = ns

    # -- results --
    def output_lines(self) -> list:
        """matchup's standard output, one string per line."""
        return [it if isinstance(it, str) else it.line() for it in self.items]

    def pending_lines(self) -> list:
        """matchup's descriptor-5 output: what is still open, as log lines a
        later run reads first.  Deliveries in increasing order, so that the
        later run does not take them for a restart."""
        out = []
        for messid, ms in self.msgs.items():
            stamp = fmt_stamp(ms.birth)
            out.append('%s info msg %d: bytes %d from %s qp %s uid %s'
                       % (stamp, messid, ms.bytes, ms.sender, ms.qp, ms.uid))
            out.append('%s extra %d %d %d %d' % (stamp, messid, ms.nk, ms.nz, ms.nd))
        for d in sorted(self.dels):
            ds = self.dels[d]
            out.append('%s starting delivery %d: msg %d to %s %s'
                       % (fmt_stamp(ds.start), d, ds.messid, ds.chan, ds.recip))
        return out

    def intervals(self) -> list:
        """(enter, leave) of every message seen in the queue; None where
        the log does not reach: before its start or after its end."""
        out = [(m.birth, m.done) for m in self.messages]
        out.extend((ms.birth, None) for ms in self.msgs.values())
        out.extend((None, t) for t in self.stray_ends)
        return out


def match_lines(lines) -> Matcher:
    """Run a Matcher over an iterable of lines."""
    matcher = Matcher()
    for line in lines:
        matcher.feed(line)
    return matcher
