"""qmail-analog's reports: qmailanalog's z-scripts over m and d records.

A part of qmail-analog (qmail/analog.py); pure: records in, text out.

Each report is what the z-script of the same name prints: a paragraph
explaining it, a blank line, then its lines; the tables aligned as
columnt aligns them (every column but the last right-aligned to its
widest entry, columns two spaces apart).  Numbers are printed as awk
prints them: whole numbers as integers, others with six significant
digits, the totals of delays with the precision the scripts ask for.

  overall     zoverall:    message, recipient, attempt and byte counts;
                           qtime, ddelay and xdelay totals and averages;
                           time span and average concurrency.
  ddist       zddist:      doneby avg pct, for pct from 10 to 100.
  deferrals   zdeferrals:  del xdelay reason, one line per reason,
  failures    zfailures:   largest xdelay first; '_' shown as ' '.
  successes   zsuccesses:
  recipients  zrecipients: sbytes mess tries xdelay recipient (chan.address)
  rhosts      zrhosts:     sbytes mess tries xdelay host
  senders     zsenders:    mess bytes sbytes rbytes recips tries xdelay uid/<sender>
  suids       zsuids:      mess bytes sbytes rbytes recips tries xdelay uid
  rxdelay     zrxdelay:    avg tries recipient, smallest average xdelay first.

Deviations, on purpose: the z-scripts leave order to sort(1) with flags
that varied between versions; here the tables are sorted by their
leading numbers, largest first, then by name, so output is
deterministic.  ddist's avg is the mean over the deliveries (the awk
script averaged distinct delay values, so ties counted once).
"""

from qmail.analog_match import NS

OVERALL_HEAD = """\
Basic statistics

qtime is the time spent by a message in the queue.

ddelay is the latency for a successful delivery to one recipient---the
end of successful delivery, minus the time when the message was queued.

xdelay is the latency for a delivery attempt---the time when the attempt
finished, minus the time when it started. The average concurrency is the
total xdelay for all deliveries divided by the time span; this is a good
measure of how busy the mailer is.

"""

DDIST_HEAD = """\
Distribution of ddelays for successful deliveries

Meaning of each line: The first pct% of successful deliveries
all happened within doneby seconds. The average ddelay was avg.

"""

REASONS_HEAD = """\
Reasons for %s

One line per reason for %s. Information on each line:
* del is the number of deliveries that ended for this reason.
* xdelay is the total xdelay on those deliveries.

"""

TARGETS_HEAD = """\
%s

One line per %s. Information on each line:
* sbytes is the number of bytes successfully delivered to this %s.
* mess is the number of messages sent to this %s (success plus failure).
* tries is the number of delivery attempts (success, failure, deferral).
* xdelay is the total xdelay incurred by this %s.

"""

SENDERS_HEAD = """\
%s

One line per %s. Information on each line:
* mess is the number of messages sent by this %s.
* bytes is the number of bytes sent by this %s.
* sbytes is the number of bytes successfully received from this %s.
* rbytes is the number of bytes from this %s, weighted by recipient.
* recips is the number of recipients (success plus failure).
* tries is the number of delivery attempts (success, failure, deferral).
* xdelay is the total xdelay incurred by this %s.

"""

RXDELAY_HEAD = """\
Recipients in the best order for mailing lists

One line per recipient, sorted by avg. Information on each line:
* avg is the _average_ xdelay for the recipient.
* tries is the number of deliveries that avg is based on.

"""


# -- formatting ---------------------------------------------------------------
def awknum(x) -> str:
    """A number as awk's print writes it: integral values as integers,
    others through OFMT, "%.6g"."""
    if x == int(x) and abs(x) < 1e16:
        return '%d' % int(x)
    return '%.6g' % x


def columnt(rows: list) -> str:
    """columnt(1): fields aligned, all but the last column right-justified
    to its widest entry and followed by two spaces."""
    rows = [[f for f in row if f] for row in rows]
    rows = [row for row in rows if row]
    if not rows:
        return ''
    maxfield = max(len(row) for row in rows) - 1
    width = [0] * (maxfield + 1)
    for row in rows:
        for i, f in enumerate(row):
            width[i] = max(width[i], len(f))
    out = []
    for row in rows:
        parts = []
        for i, f in enumerate(row):
            parts.append(f.rjust(width[i]) + '  ' if i < maxfield else f)
        out.append(''.join(parts) + '\n')
    return ''.join(out)


def seconds(ns: int) -> float:
    return ns / NS


def name_key(name: str):
    """Names that are numbers (uids) in numeric order, before the rest."""
    if name.isdigit() and name.isascii() and len(name) < 100:
        return (0, int(name), '')
    return (1, 0, name)


# -- zoverall -------------------------------------------------------------------
def overall(messages: list, deliveries: list) -> str:
    out = [OVERALL_HEAD]
    first = last = None
    mbytes = rbytes = recips = tries = 0
    qtime = 0
    for m in messages:
        mbytes += m.bytes
        rbytes += m.bytes * m.nk
        qtime += m.done - m.birth
        recips += m.nk + m.nd
        tries += m.nk + m.nd + m.nz
        if first is None or m.birth < first:
            first = m.birth
        if last is None or m.done > last:
            last = m.done
    succ = fail = 0
    ddelay = xdelay = 0
    for d in deliveries:
        if d.result == 'k':
            succ += 1
            ddelay += d.ddone - d.birth
        elif d.result == 'd':
            fail += 1
        xdelay += d.ddone - d.dstart
        if first is None or d.birth < first:
            first = d.birth
        if last is None or d.ddone > last:
            last = d.ddone
    n = len(messages)
    out.append('Completed messages: %d\n' % n)
    if n:
        out.append('Recipients for completed messages: %d\n' % recips)
        out.append('Total delivery attempts for completed messages: %d\n' % tries)
        out.append('Average delivery attempts per completed message: %s\n' % awknum(tries / n))
        out.append('Bytes in completed messages: %d\n' % mbytes)
        out.append('Bytes weighted by success: %d\n' % rbytes)
        out.append('Average message qtime (s): %s\n' % awknum(seconds(qtime) / n))
    out.append('\n')
    nd = len(deliveries)
    out.append('Total delivery attempts: %d\n' % nd)
    if nd:
        out.append('  success: %d\n' % succ)
        out.append('  failure: %d\n' % fail)
        out.append('  deferral: %d\n' % (nd - succ - fail))
        out.append('Total ddelay (s): %.6f\n' % seconds(ddelay))
        if succ:
            out.append('Average ddelay per success (s): %.6f\n' % (seconds(ddelay) / succ))
        out.append('Total xdelay (s): %.6f\n' % seconds(xdelay))
        out.append('Average xdelay per delivery attempt (s): %.6f\n' % (seconds(xdelay) / nd))
        if last > first:
            span = seconds(last - first)
            out.append('Time span (days): %s\n' % awknum(span / 86400))
            out.append('Average concurrency: %s\n' % awknum(seconds(xdelay) / span))
    return ''.join(out)


# -- zddist -----------------------------------------------------------------------
def ddist_rows(deliveries: list) -> list:
    """(doneby, avg, pct) for each percentage from 10 to 100 reached by
    some delivery: doneby is the smallest ddelay by which pct% of the
    successful deliveries were done, avg the mean ddelay of those."""
    delays = sorted(seconds(d.ddone - d.birth) for d in deliveries if d.result == 'k')
    n = len(delays)
    rows = []
    total = 0.0
    i = 0
    while i < n:
        # equal delays end together: the last of them sets the percentage
        j = i
        while j + 1 < n and delays[j + 1] == delays[i]:
            j += 1
        pct = (j + 1) * 100 // n
        total += delays[i] * (j - i + 1)
        if pct >= 10 and (not rows or rows[-1][2] != pct):
            rows.append((delays[i], total / (j + 1), pct))
        elif rows and rows[-1][2] == pct:
            rows[-1] = (rows[-1][0], total / (j + 1), pct)
        i = j + 1
    return rows


def ddist(messages: list, deliveries: list) -> str:
    rows = [['doneby', 'avg', 'pct']]
    rows += [['%.2f' % doneby, '%.2f' % avg, '%d' % pct]
             for doneby, avg, pct in ddist_rows(deliveries)]
    return DDIST_HEAD + columnt(rows)


# -- zdeferrals, zfailures, zsuccesses ------------------------------------------------
def reason_rows(deliveries: list, result: str) -> list:
    """[(del, xdelay seconds, reason)] for deliveries ending in result."""
    count, xdelay = {}, {}
    for d in deliveries:
        if d.result == result:
            count[d.reason] = count.get(d.reason, 0) + 1
            xdelay[d.reason] = xdelay.get(d.reason, 0) + d.ddone - d.dstart
    rows = [(count[r], seconds(xdelay[r]), r) for r in count]
    rows.sort(key=lambda row: (-row[1], -row[0], row[2]))
    return rows


def reasons(deliveries: list, result: str, what: str, each: str) -> str:
    rows = [['del', 'xdelay', 'reason']]
    rows += [['%d' % n, '%.2f' % x, r] for n, x, r in reason_rows(deliveries, result)]
    return (REASONS_HEAD % (what, each)) + columnt(rows).replace('_', ' ')


def deferrals(messages: list, deliveries: list) -> str:
    return reasons(deliveries, 'z', 'deferral', 'deferral')


def failures(messages: list, deliveries: list) -> str:
    return reasons(deliveries, 'd', 'failure', 'delivery failure')


def successes(messages: list, deliveries: list) -> str:
    return reasons(deliveries, 'k', 'success', 'successful delivery')


# -- zrecipients, zrhosts, zrxdelay -------------------------------------------------
def host_of(target: str) -> str:
    """What follows the last '@', as zrhosts cuts it."""
    return target.rpartition('@')[2]


def target_rows(deliveries: list, keyf) -> list:
    """[(sbytes, mess, tries, xdelay seconds, key)] per key of a delivery."""
    acc = {}
    for d in deliveries:
        key = keyf(d)
        a = acc.get(key)
        if a is None:
            a = acc[key] = [0, 0, 0, 0]
        if d.result == 'k':
            a[0] += d.bytes
            a[1] += 1
        elif d.result == 'd':
            a[1] += 1
        a[2] += 1
        a[3] += d.ddone - d.dstart
    rows = [(a[0], a[1], a[2], seconds(a[3]), k) for k, a in acc.items()]
    rows.sort(key=lambda r: (-r[0], -r[1], -r[3], -r[2], r[4]))
    return rows


def targets(deliveries: list, keyf, title: str, per: str, column: str) -> str:
    rows = [['sbytes', 'mess', 'tries', 'xdelay', column]]
    rows += [['%d' % s, '%d' % m, '%d' % t, '%.2f' % x, k]
             for s, m, t, x, k in target_rows(deliveries, keyf)]
    return (TARGETS_HEAD % ((title, per) + (column,) * 3)) + columnt(rows)


def recipients(messages: list, deliveries: list) -> str:
    return targets(deliveries, lambda d: d.target, 'Recipients', 'recipient', 'recipient')


def rhosts(messages: list, deliveries: list) -> str:
    return targets(deliveries, lambda d: host_of(d.target), 'Recipient hosts',
                   'recipient host', 'host')


def rxdelay(messages: list, deliveries: list) -> str:
    rows = [(x / t, t, k) for s, m, t, x, k in target_rows(deliveries, lambda d: d.target)]
    rows.sort(key=lambda r: (r[0], -r[1], r[2]))
    table = [['avg', 'tries', 'recipient']]
    table += [['%.2f' % avg, '%d' % t, k] for avg, t, k in rows]
    return RXDELAY_HEAD + columnt(table)


# -- zsenders, zsuids -----------------------------------------------------------------
def sender_rows(messages: list, deliveries: list, keyf) -> list:
    """[(mess, bytes, sbytes, rbytes, recips, tries, xdelay s, key)] per key
    of a completed message; xdelay sums every delivery with that key."""
    acc = {}
    for m in messages:
        key = keyf(m)
        a = acc.get(key)
        if a is None:
            a = acc[key] = [0, 0, 0, 0, 0, 0]
        a[0] += 1
        a[1] += m.bytes
        a[2] += m.bytes * m.nk
        a[3] += m.bytes * (m.nk + m.nd)
        a[4] += m.nk + m.nd
        a[5] += m.nk + m.nd + m.nz
    xdelay = {}
    for d in deliveries:
        key = keyf(d)
        if key in acc:
            xdelay[key] = xdelay.get(key, 0) + d.ddone - d.dstart
    rows = [tuple(a) + (seconds(xdelay.get(k, 0)), k) for k, a in acc.items()]
    rows.sort(key=lambda r: (-r[0], -r[1], -r[2], -r[3], -r[5], name_key(r[7])))
    return rows


def senders_table(messages, deliveries, keyf, title, per, column) -> str:
    rows = [['mess', 'bytes', 'sbytes', 'rbytes', 'recips', 'tries', 'xdelay', column]]
    rows += [['%d' % v for v in r[:6]] + ['%.6f' % r[6], r[7]]
             for r in sender_rows(messages, deliveries, keyf)]
    return (SENDERS_HEAD % ((title, per) + (column,) * 5)) + columnt(rows)


def senders(messages: list, deliveries: list) -> str:
    return senders_table(messages, deliveries, lambda r: '%s/%s' % (r.uid, r.sender),
                         'Senders', 'sender', 'sender')


def suids(messages: list, deliveries: list) -> str:
    return senders_table(messages, deliveries, lambda r: r.uid,
                         'Sender uids', 'sender uid', 'uid')


REPORTS = {
    'overall': overall,
    'ddist': ddist,
    'deferrals': deferrals,
    'failures': failures,
    'successes': successes,
    'recipients': recipients,
    'rhosts': rhosts,
    'senders': senders,
    'suids': suids,
    'rxdelay': rxdelay,
}
