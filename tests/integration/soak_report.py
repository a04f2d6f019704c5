"""The crash soak's bookkeeping: the addresses it sends to, and what it
makes of the record afterwards (soak_driver.py runs the soak).

Reads:    qmail-send's multilog record (tai64n stamps), qmail-smtpd's,
          the Maildir and smtp-sink's message files, the kills made.
Decides:  per recipient, how many whole copies arrived; which acknowledged
          recipients got none (lost); which delivery attempts were crash
          windows (INTERNALS "Cleanups": a delivery made while the report
          of it died with qmail-remote, qmail-rspawn or qmail-send), and
          whether they account for every remote duplicate; which alerts a
          kill explains.  Maildir deliveries are exactly once here (the
          file name comes from the message: local_deliver.maildir_name),
          so no local duplicate is excused.
Writes:   nothing: analyse() returns the report, summary() its text.
"""

import collections
import os
import re
import statistics

DOMAIN = 'soak.example.org'
USER = 'qmsoak'                 # qmsoak-N@DOMAIN goes to ~qmsoak/Maildir via .qmail-default
SINK_DOMAIN = 'sink.example'    # r-N@SINK_DOMAIN: remote, to smtp-sink
BOUNCE_DOMAIN = 'bounce.sink.example'   # senders: a bounce lands in the sink too

# Killing one of these takes qmail-send down (at once or when it next
# talks to it); supervise must bring up a new one with all its children.
RESTARTS_MTA = ('qmail-send', 'qmail-lspawn', 'qmail-rspawn', 'qmail-clean')
# The kills that can make a delivery of the channel happen without
# qmail-send hearing of it: the INTERNALS "Cleanups" window.
WINDOW_KINDS = {'local': ('qmail-local', 'qmail-lspawn', 'qmail-send'),
                'remote': ('qmail-remote', 'qmail-rspawn', 'qmail-send')}
# A success attempted again: its mark, or its message's todo/ removal,
# never reached the disk.  qmail-send starts a new message's deliveries
# before its todo/ goes (qmail-clean's job); with qmail-clean killed
# first, qmail-send exits leaving todo/, and the next start delivers again.
AGAIN_KINDS = ('qmail-send', 'qmail-clean')

# multilog stamps a line when it reads it, after qmail-send wrote it: a
# kill may precede the stamp of the line it followed by this much (a
# scheduler's wakeup, generously).
LAG = 0.5
CLOCK = 0.1             # the killer notes the time just after kill(2) returns
TAI_OFFSET = (1 << 62) + 10     # daemontools' tai64 label of the Unix epoch
DETAIL_LINES = 10       # duplicates shown one by one in the summary
# What qmail-send says when a partner is killed; each needs a kill.  A
# spawn killed before its greeting byte (right after a restart) stops
# the new qmail-send at once, as qmail's does: supervise tries again.
EXPECTED_ALERTS = (
    (('qmail-lspawn', 'qmail-rspawn'),
     ('alert: oh no! lost spawn connection! dying...',
      'alert: cannot start: hath the daemon spawn no fire?')),
    (('qmail-clean',), ('alert: oh no! lost qmail-clean connection! dying...',)),
    (('qmail-queued',), ('alert: qmail-queued ended (signal 9); injections go through '
                         'bin/qmail-queue until qmail-send restarts',)),
)


def recipients(n: int):
    """(local, remote) addresses of message n: one, the other or both."""
    local = '%s-%d@%s' % (USER, n, DOMAIN)
    remote = 'r-%d@%s' % (n, SINK_DOMAIN)
    return {0: (local, None), 1: (None, remote), 2: (local, remote)}[n % 3]


def sender(n: int) -> str:
    return 's-%d@%s' % (n, BOUNCE_DOMAIN)


def end_marker(n: int) -> bytes:
    """The last line of message n: a copy without it is not whole."""
    return b'\nsoak-end %d\n' % n


# ---- reading what happened --------------------------------------------------------

def read_log(logdir: str):
    """[(unix time, text)] of a multilog directory, oldest first."""
    names = sorted(n for n in os.listdir(logdir) if n.startswith('@'))
    out = []
    for name in names + ['current']:
        try:
            with open(os.path.join(logdir, name), 'rb') as f:
                data = f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            continue
        for line in data.splitlines():
            m = re.match(r'@([0-9a-f]{16})([0-9a-f]{8}) (.*)', line)
            if m:
                out.append((int(m.group(1), 16) - TAI_OFFSET + int(m.group(2), 16) / 1e9,
                            m.group(3)))
    return out


class Attempt:
    __slots__ = ('channel', 'recip', 'start', 'end', 'outcome', 'instance')

    def __init__(self, channel, recip, start, instance):
        self.channel, self.recip, self.start, self.instance = channel, recip, start, instance
        self.end = None
        self.outcome = None            # success, deferral, failure; None: never reported


def attempts(lines):
    """Every delivery attempt in qmail-send's record, and the number of
    qmail-send instances: delivery numbers start again at 1 in each, and
    an attempt its instance never reported ends when the next starts."""
    out = []
    current = {}
    instance = 0
    last = 0
    for t, text in lines:
        m = re.match(r'starting delivery (\d+): msg \d+ to (local|remote) (\S+)$', text)
        if m:
            delid = int(m.group(1))
            if delid <= last or not instance:
                for a in current.values():
                    a.end = t
                current = {}
                instance += 1
            last = delid
            a = Attempt(m.group(2), m.group(3), t, instance)
            current[delid] = a
            out.append(a)
            continue
        m = re.match(r'delivery (\d+): (success|deferral|failure): ', text)
        if m and int(m.group(1)) in current:
            a = current.pop(int(m.group(1)))
            a.end, a.outcome = t, m.group(2)
    end = lines[-1][0] if lines else 0
    for a in current.values():
        a.end = end
    return out, instance


def kills_between(kills, kinds, start, end):
    """Kills of those kinds between two log stamps: from LAG before the
    first (the line may have been stamped late) to the second (an event
    that followed the kill was stamped after it)."""
    return [k for k in kills if k[1] in kinds and start - LAG <= k[0] <= end + CLOCK]


def windows(tries, kills):
    """[(attempt, kills)] for the attempts of one delivery (in log order)
    that may have delivered without the done mark: unreported or
    deferred, with a kill of the delivering process, its spawn or
    qmail-send under way; or reported success, yet attempted again (the
    mark never reached the disk), with qmail-send or qmail-clean killed
    in between (AGAIN_KINDS)."""
    out = []
    for i, a in enumerate(tries):
        if a.outcome != 'success':
            found = kills_between(kills, WINDOW_KINDS[a.channel], a.start, a.end)
        elif i + 1 < len(tries):
            found = kills_between(kills, AGAIN_KINDS, a.end, tries[i + 1].start)
        else:
            found = []
        if found:
            out.append((a, found))
    return out


def lost_marks(tries, kills):
    """Attempts made again after a logged success with no kill of
    qmail-send or qmail-clean in between: a done mark lost without a
    crash."""
    return [later for a, later in zip(tries, tries[1:])
            if a.outcome == 'success'
            and not kills_between(kills, AGAIN_KINDS, a.end, later.start)]


def local_copies(maildir: str):
    """[(number, whole)] for every file in the Maildir."""
    out = []
    for sub in ('new', 'cur'):
        d = os.path.join(maildir, sub)
        for name in os.listdir(d):
            with open(os.path.join(d, name), 'rb') as f:
                data = f.read()
            m = re.search(rb'^Delivered-To: %s-(\d+)@' % USER.encode(), data, re.M)
            n = int(m.group(1)) if m else None
            out.append((n, n is not None and end_marker(n) in data))
    return out


def analyse(acked: dict, issued: int, kills, maildir: str, sink_copies, log, smtpd_log,
            t0: float) -> dict:
    """The report: counts, and the broken promises with evidence.

    acked: {number: (local, remote)} of the messages that got 250;
    issued: how many numbers were sent; kills: [(time, kind, pid,
    detail)]; sink_copies: Sink.copies(); log, smtpd_log: read_log() of
    qmail-send's and qmail-smtpd's records; t0: the wall time the load
    started (times in the report count from it)."""
    r = {'broken': []}
    broken = r['broken']
    tries, r['instances'] = attempts(log)
    by_recip = collections.defaultdict(list)
    for a in tries:
        by_recip[a.recip].append(a)

    local = collections.Counter()
    for n, whole in local_copies(maildir):
        if n is None or not whole:
            broken.append('a Maildir file that is not a whole soak message (number %s)' % n)
        if n is not None:
            local[n] += 1
    remote = collections.Counter()
    bounces = []
    for rcpt, n, whole in sink_copies:
        m = re.match(r'r-(\d+)@' + re.escape(SINK_DOMAIN) + '$', rcpt)
        if not m:
            bounces.append(rcpt)
            continue
        if not whole:
            broken.append('the sink holds a partial copy for %s' % rcpt)
        remote[int(m.group(1))] += 1

    lost = []
    for n, (lrcpt, rrcpt) in sorted(acked.items()):
        for rcpt, seen in ((lrcpt, local), (rrcpt, remote)):
            if rcpt and not seen[n]:
                lost.append(rcpt)
    r['lost'] = len(lost)
    for rcpt in lost[:20]:
        trail = '; '.join('%s %.2f-%.2f %s' % (a.channel, a.start - t0, a.end - t0,
                                               a.outcome or 'unreported')
                          for a in by_recip.get(rcpt, []))
        broken.append('lost: acknowledged, never delivered to %s (attempts: %s)'
                      % (rcpt, trail or 'none'))
    if len(lost) > 20:
        broken.append('... and %d more lost' % (len(lost) - 20))

    r['dup_local'] = sum(c - 1 for c in local.values() if c > 1)
    for n, c in sorted(local.items()):
        if c > 1:
            broken.append('local duplicate: %s-%d delivered %d times (Maildir deliveries '
                          'are exactly once)' % (USER, n, c))
    r['dup_remote'] = sum(c - 1 for c in remote.values() if c > 1)
    explained = 0
    r['dup_detail'] = []
    for n, c in sorted(remote.items()):
        if c < 2:
            continue
        rcpt = recipients(n)[1]
        w = windows(by_recip.get(rcpt, []), kills)
        why = '; '.join('%s attempt %.2f-%.2f s, killed: %s' % (
            a.outcome or 'unreported', a.start - t0, a.end - t0,
            ' '.join('%s %.2f' % (k[1], k[0] - t0) for k in found))
            for a, found in w)
        r['dup_detail'].append('%s: %d copies; %s' % (rcpt, c, why or 'no crash window'))
        if len(w) >= c - 1:
            explained += c - 1
        else:
            broken.append('unexplained remote duplicate: %s delivered %d times, %d crash '
                          'windows (%s)' % (rcpt, c, len(w), why or 'none'))
    r['dup_remote_explained'] = explained

    stray = [n for n in set(local) | set(remote) if not 0 <= n < issued]
    if stray:
        broken.append('delivered numbers never sent: %s' % sorted(stray)[:20])
    r['unacked_delivered'] = len((set(local) | set(remote)) - set(acked))

    r['bounces'] = len(bounces)
    failures = [text for _, text in log if re.match(r'delivery \d+: failure: ', text)]
    if failures or bounces:
        broken.append('%d permanent failures, %d bounces in the sink: %s'
                      % (len(failures), len(bounces), failures[:3]))
    alerts = collections.Counter(text for _, text in log if text.startswith('alert:'))
    r['alerts'] = dict(alerts)
    killed = collections.Counter(k[1] for k in kills)
    for kinds, texts in EXPECTED_ALERTS:
        seen = sum(alerts.pop(t, 0) for t in texts)
        if seen > sum(killed[k] for k in kinds):
            broken.append('%d alerts %s, more than the %s kills' % (seen, texts, kinds))
    for text, count in alerts.items():
        broken.append('unexpected %r (%d times)' % (text, count))

    r['warnings'] = dict(collections.Counter(
        re.sub(r'\d+', 'N', text) for _, text in log if text.startswith('warning:')))
    for _, text in smtpd_log:
        if re.search(r'warning|fatal|internal|Error', text):
            broken.append('qmail-smtpd log: %s' % text)

    for rcpt, its in sorted(by_recip.items()):
        for later in lost_marks(its, kills):
            broken.append('%s attempted again at %.2f s after a success, no qmail-send '
                          'or qmail-clean kill in between: a done mark lost'
                          % (rcpt, later.start - t0))

    unreported = [a for a in tries if a.outcome is None]
    r['unreported'] = len(unreported)
    r['unreported_unexplained'] = sum(
        1 for a in unreported
        if not kills_between(kills, WINDOW_KINDS[a.channel] + RESTARTS_MTA, a.start, a.end))
    r['attempts'] = len(tries)
    r['successes'] = sum(1 for a in tries if a.outcome == 'success')
    r['deferrals'] = sum(1 for a in tries if a.outcome == 'deferral')
    return r


def summary(r: dict) -> str:
    kills = r.get('kills', {})
    rec = r.get('recoveries') or [0]
    lines = [
        'soak: %d messages acknowledged of %d sent (%d sessions, seed %d)'
        % (r.get('acked', 0), r.get('sent', 0), r['sessions'], r['seed']),
        '  refused or cut, sent again under a new number: %s; failed connects: %d'
        % (', '.join('%s %d' % kv for kv in sorted(r.get('refused', {}).items())) or 'none',
           r.get('connect_failures', 0)),
        '  recipients: %d local (Maildir), %d remote (smtp-sink)'
        % (r.get('local_rcpts', 0), r.get('remote_rcpts', 0)),
        '  kills: %d of %d: %s' % (sum(kills.values()), r['kills_wanted'], ', '.join(
            '%s %d' % (k, n) for k, n in sorted(r.get('kills_detail', {}).items()))),
        '  not found when their turn came: %s'
        % (', '.join('%s %d' % kv for kv in sorted(r.get('missed', {}).items())) or 'none'),
        '  MTA brought back by supervise %d times, in %.1f s at most, %.1f s median '
        '(%d qmail-send instances made deliveries)'
        % (len(r.get('recoveries') or []), max(rec), statistics.median(rec),
           r.get('instances', 0)),
        '  lost: %d' % r.get('lost', 0),
        '  duplicates: local %d, remote %d (%d explained by a crash window)'
        % (r.get('dup_local', 0), r.get('dup_remote', 0), r.get('dup_remote_explained', 0)),
    ]
    detail = r.get('dup_detail', [])
    lines += ['    ' + d for d in detail[:DETAIL_LINES]]
    if len(detail) > DETAIL_LINES:
        lines.append('    ... %d more' % (len(detail) - DETAIL_LINES))
    lines += [
        '  delivered though never acknowledged: %d' % r.get('unacked_delivered', 0),
        '  delivery attempts: %d (%d successes, %d deferrals, %d never reported: '
        '%d without a kill to explain)'
        % (r.get('attempts', 0), r.get('successes', 0), r.get('deferrals', 0),
           r.get('unreported', 0), r.get('unreported_unexplained', 0)),
        '  bounces: %d; alerts: %s' % (r.get('bounces', 0), ', '.join(
            '%s x%d' % kv for kv in sorted(r.get('alerts', {}).items())) or 'none'),
        '  qmail-send warnings: %s' % (', '.join(
            '%s x%d' % kv for kv in sorted(r.get('warnings', {}).items())) or 'none'),
        '  max queue size: %d messages' % r.get('max_queue', 0),
        '  elapsed: %.0f s (load %.0f s, drain %.0f s)'
        % (r.get('elapsed', 0), r.get('load_seconds', 0), r.get('drain_seconds', 0)),
        '  after: %s; qmail-fsck exit %s'
        % (r.get('qstat', '?').replace('\n', '; '), r.get('fsck', '?')),
        '  left in mess/ for qmail-send\'s 36-hour cleanup: %s'
        % (', '.join('%d %s' % (v, k) for k, v in sorted(r.get('leftovers', {}).items()))
           or 'nothing'),
    ]
    if r['broken']:
        lines.append('BROKEN PROMISES (files kept in %s):' % r['top'])
        lines += ['  ' + b for b in r['broken']]
    else:
        lines.append('every promise kept')
    return '\n'.join(lines)
