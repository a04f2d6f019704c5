"""qmail-analog's plots: SVG charts and an index page, written as text.

A part of qmail-analog (qmail/analog.py); pure: a Matcher in, file
contents out (no plotting library: SVG is small enough to write).

Charts:   deliveries.svg  delivery attempts ending per time bin (one
                          minute, or wider so that a long log has at most
                          MAXBINS bins), one line each for success,
                          deferral and failure;
          queue.svg       messages in the queue (from info msg to end msg;
                          those the log saw only leaving count from its
                          start), the peak in each bin;
          ddist.svg       successful deliveries by ddelay, in bins of a
                          1-2-5 ladder from 0.1 s to a week;
          index.html      the three, with zoverall's report, zddist's,
                          zdeferrals', zfailures', and what the matcher
                          had to skip.
Times on the charts are UTC.  Each series is one <polyline> with a point
per bin, each bar one <rect class="bar">, so the files are easy to check.
"""

import html
import math
import time

from qmail.analog_match import NS
from qmail import analog_report as report

# Bin widths tried in order; the first giving at most MAXBINS bins wins,
# so a day's log is plotted per minute (1440 bins).
BIN_WIDTHS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAXBINS = 1440
TICK_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
              86400, 172800, 604800, 2592000)
MAXTICKS = 8
MARKERS_UPTO = 60          # bins; beyond, markers would blot the lines

# ddelay histogram edges, seconds: 0.1 s ... 7 days (queuelifetime's default)
DELAY_EDGES = (0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800,
               3600, 7200, 14400, 43200, 86400, 172800, 345600, 604800)

WIDTH, HEIGHT = 860, 400
LEFT, TOP, BOTTOM = 72, 52, 78
RIGHT_LEGEND, RIGHT_PLAIN = 160, 28

# name, result, colour, dashes (so equal lines still show both)
SERIES = (('success', 'k', '#2e7d32', ''), ('deferral', 'z', '#ef8f00', ''),
          ('failure', 'd', '#c62828', '6 3'))
QUEUE_COLOR = '#1565c0'
BAR_COLOR = '#5c6bc0'
GRID_COLOR = '#dddddd'


class Timeline:
    """Bins of width seconds from start (a multiple of width)."""
    __slots__ = ('start', 'width', 'bins')

    def __init__(self, start: int, width: int, bins: int):
        self.start, self.width, self.bins = start, width, bins

    @property
    def end(self) -> int:
        return self.start + self.width * self.bins

    def __eq__(self, other):
        return (self.start, self.width, self.bins) == (other.start, other.width, other.bins)

    def __repr__(self):
        return 'Timeline(%d, %d, %d)' % (self.start, self.width, self.bins)


# -- pure computations ------------------------------------------------------------
def timeline(first_ns: int, last_ns: int, maxbins: int = MAXBINS) -> Timeline:
    """The narrowest bins (one minute at best) that cover first..last in
    at most maxbins."""
    a, b = first_ns // NS, last_ns // NS
    for w in BIN_WIDTHS:
        if b // w - a // w + 1 <= maxbins:
            return Timeline(a // w * w, w, b // w - a // w + 1)
    w = 86400 * ((b // 86400 - a // 86400) // maxbins + 1)
    return Timeline(a // w * w, w, b // w - a // w + 1)


def bin_index(ns: int, tl: Timeline) -> int:
    i = (ns // NS - tl.start) // tl.width
    return min(max(i, 0), tl.bins - 1)


def count_bins(times_ns, tl: Timeline) -> list:
    """How many of the times fall in each bin."""
    counts = [0] * tl.bins
    for t in times_ns:
        counts[bin_index(t, tl)] += 1
    return counts


def queue_peaks(intervals, tl: Timeline) -> list:
    """The largest number of messages in the queue during each bin, from
    (enter, leave) pairs, None meaning beyond the log's reach.  A message
    is in the queue from its enter up to, not including, its leave, so one
    leaving and one entering at the same instant do not overlap."""
    base = 0
    events = []
    for enter, leave in intervals:
        if enter is None:
            base += 1
        else:
            events.append((enter, 1))
        if leave is not None:
            events.append((leave, -1))
    events.sort()
    peaks = [0] * tl.bins
    size, i, n = base, 0, len(events)
    for b in range(tl.bins):
        start = (tl.start + b * tl.width) * NS
        end = start + tl.width * NS
        while i < n and events[i][0] <= start:     # at the bin's first instant
            size += events[i][1]
            i += 1
        peak = size
        while i < n and events[i][0] < end:
            size += events[i][1]
            if size > peak:
                peak = size
            i += 1
        peaks[b] = peak
    return peaks


def fmt_duration(s: float) -> str:
    """0.5s, 30s, 2m, 4h, 7d: a bin edge for a label."""
    for unit, name in ((86400, 'd'), (3600, 'h'), (60, 'm')):
        if s >= unit and s % unit == 0:
            return '%d%s' % (s // unit, name)
    return ('%g' % s) + 's'


def delay_histogram(delays, edges=DELAY_EDGES) -> list:
    """[(label, count)]: delays (seconds) per bin of edges, the last bin
    open-ended; bins past the last non-empty one left out."""
    counts = [0] * len(edges)
    for x in delays:
        lo, hi = 0, len(edges) - 1           # last edge <= x, by bisection
        if x >= edges[hi]:
            lo = hi
        else:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if edges[mid] <= x:
                    lo = mid
                else:
                    hi = mid
        counts[lo] += 1
    while counts and counts[-1] == 0:
        counts.pop()
    bars = []
    for i, c in enumerate(counts):
        if i + 1 < len(edges):
            label = '%s-%s' % (fmt_duration(edges[i]), fmt_duration(edges[i + 1]))
        else:
            label = '>' + fmt_duration(edges[i])
        bars.append((label, c))
    return bars


def nice_scale(vmax: float, target: int = 5):
    """(top, step) for an axis from 0 holding vmax with room above it, in
    1-2-5 steps of whole numbers (the charts count things)."""
    if vmax <= 0:
        return 1, 1
    raw = vmax / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    step = max(1, int(round(step)))
    return (int(vmax // step) + 1) * step, step     # headroom for bar labels


def time_ticks(tl: Timeline) -> list:
    """[(seconds, label)]: at most MAXTICKS round times on the axis."""
    span = tl.end - tl.start
    step = next((s for s in TICK_STEPS if span / s <= MAXTICKS), TICK_STEPS[-1])
    if step >= 86400:
        fmt = '%Y-%m-%d'
    elif tl.start // 86400 == (tl.end - 1) // 86400:
        fmt = '%H:%M'
    else:
        fmt = '%m-%d %H:%M'
    first = -(-tl.start // step) * step
    return [(t, time.strftime(fmt, time.gmtime(t)))
            for t in range(first, tl.end + 1, step)]


def utc(sec: int) -> str:
    return time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(sec))


def per_what(width: int) -> str:
    return 'minute' if width == 60 else fmt_duration(width)


# -- SVG ---------------------------------------------------------------------------
def esc(text: str) -> str:
    return html.escape(text, quote=True)


def svg_head(title: str, right: int) -> list:
    return [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
        'viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" '
        'font-size="12">' % (WIDTH, HEIGHT, WIDTH, HEIGHT),
        '<title>%s</title>' % esc(title),
        '<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>' % (WIDTH, HEIGHT),
        '<text class="title" x="%.1f" y="28" text-anchor="middle" font-size="16" '
        'font-weight="bold">%s</text>' % (LEFT + (WIDTH - LEFT - right) / 2, esc(title)),
    ]


def svg_yaxis(top: int, step: int, ylabel: str, right: int) -> list:
    """Grid lines, tick labels and the axis title of the y axis."""
    pw, ph = WIDTH - LEFT - right, HEIGHT - TOP - BOTTOM
    out = ['<g class="y-axis">']
    for v in range(0, top + 1, step):
        y = TOP + ph - v * ph / top
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s"/>'
                   % (LEFT, y, LEFT + pw, y, GRID_COLOR))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%d</text>' % (LEFT - 6, y + 4, v))
    out.append('<text x="18" y="%.1f" text-anchor="middle" transform="rotate(-90 18 %.1f)">'
               '%s</text>' % (TOP + ph / 2, TOP + ph / 2, esc(ylabel)))
    out.append('</g>')
    return out


def svg_frame(right: int) -> str:
    pw, ph = WIDTH - LEFT - right, HEIGHT - TOP - BOTTOM
    return ('<path class="axes" d="M%d %d V%d H%d" fill="none" stroke="#000000"/>'
            % (LEFT, TOP, TOP + ph, LEFT + pw))


def svg_message(text: str, right: int) -> str:
    pw, ph = WIDTH - LEFT - right, HEIGHT - TOP - BOTTOM
    return ('<text class="empty" x="%.1f" y="%.1f" text-anchor="middle" fill="#666666">%s</text>'
            % (LEFT + pw / 2, TOP + ph / 2, esc(text)))


def line_chart(title: str, ylabel: str, tl, series: list, empty: str = 'no data') -> str:
    """Lines over time: series is [(name, color, dashes, values per bin,
    legend text)]; tl None means the log has no times, and the chart
    says so."""
    right = RIGHT_LEGEND
    pw, ph = WIDTH - LEFT - right, HEIGHT - TOP - BOTTOM
    out = svg_head(title, right)
    vmax = max((max(s[3]) for s in series if s[3]), default=0)
    top, step = nice_scale(vmax)
    out += svg_yaxis(top, step, ylabel, right)
    if tl is None or tl.bins == 0:
        out.append(svg_frame(right))
        out.append(svg_message(empty, right))
        out.append('</svg>')
        return '\n'.join(out) + '\n'
    span = tl.end - tl.start
    out.append('<g class="x-axis">')
    for t, label in time_ticks(tl):
        x = LEFT + (t - tl.start) * pw / span
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#000000"/>'
                   % (x, TOP + ph, x, TOP + ph + 5))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                   % (x, TOP + ph + 19, esc(label)))
    out.append('<text x="%.1f" y="%d" text-anchor="middle">time (UTC), %s to %s</text>'
               % (LEFT + pw / 2, HEIGHT - 22, utc(tl.start), utc(tl.end)))
    out.append('</g>')
    out.append(svg_frame(right))
    for k, (name, color, dashes, values, legend) in enumerate(series):
        pts = ['%.1f,%.1f' % (LEFT + (i + 0.5) * pw / tl.bins, TOP + ph - v * ph / top)
               for i, v in enumerate(values)]
        dash = ' stroke-dasharray="%s"' % dashes if dashes else ''
        out.append('<polyline class="series" data-name="%s" fill="none" stroke="%s"%s '
                   'stroke-width="1.5" stroke-linejoin="round" points="%s"/>'
                   % (esc(name), color, dash, ' '.join(pts)))
        if tl.bins <= MARKERS_UPTO:
            out.append('<g class="markers" fill="%s">' % color)
            out += ['<circle cx="%s" cy="%s" r="2.5"/>' % tuple(p.split(',')) for p in pts]
            out.append('</g>')
        ly = TOP + 10 + 22 * k
        lx = LEFT + pw + 16
        out.append('<g class="legend"><line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s"%s '
                   'stroke-width="3"/><text x="%d" y="%d">%s</text></g>'
                   % (lx, ly, lx + 18, ly, color, dash, lx + 24, ly + 4, esc(legend)))
    out.append('</svg>')
    return '\n'.join(out) + '\n'


def bar_chart(title: str, xlabel: str, ylabel: str, bars: list,
              empty: str = 'no data') -> str:
    """Bars: [(label, count)], one <rect class="bar"> each."""
    right = RIGHT_PLAIN
    pw, ph = WIDTH - LEFT - right, HEIGHT - TOP - BOTTOM
    out = svg_head(title, right)
    top, step = nice_scale(max((c for _, c in bars), default=0))
    out += svg_yaxis(top, step, ylabel, right)
    out.append(svg_frame(right))
    if not bars:
        out.append(svg_message(empty, right))
    n = len(bars) or 1
    slot = pw / n
    for i, (label, count) in enumerate(bars):
        h = count * ph / top
        x = LEFT + i * slot + slot * 0.1
        out.append('<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f" '
                   'fill="%s"><title>%s: %d</title></rect>'
                   % (x, TOP + ph - h, slot * 0.8, h, BAR_COLOR, esc(label), count))
        cx = LEFT + (i + 0.5) * slot
        if count:
            out.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%d</text>'
                       % (cx, TOP + ph - h - 4, count))
        out.append('<text x="%.1f" y="%d" text-anchor="end" font-size="11" '
                   'transform="rotate(-35 %.1f %d)">%s</text>'
                   % (cx, TOP + ph + 14, cx, TOP + ph + 14, esc(label)))
    out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
               % (LEFT + pw / 2, HEIGHT - 8, esc(xlabel)))
    out.append('</svg>')
    return '\n'.join(out) + '\n'


# -- the charts of a log -------------------------------------------------------------
def log_timeline(matcher):
    if matcher.first is None:
        return None
    return timeline(matcher.first, matcher.last)


NO_TIMES = 'the log carries no time stamps'


def deliveries_svg(matcher, tl) -> str:
    series = []
    for name, result, color, dashes in SERIES:
        times = [d.ddone for d in matcher.deliveries if d.result == result]
        series.append((name, color, dashes, count_bins(times, tl) if tl else [],
                       '%s (%d)' % (name, len(times))))
    per = per_what(tl.width) if tl else 'minute'
    return line_chart('Delivery attempts per %s' % per, 'attempts per %s' % per, tl, series,
                      NO_TIMES)


def queue_svg(matcher, tl) -> str:
    per = per_what(tl.width) if tl else 'minute'
    values = queue_peaks(matcher.intervals(), tl) if tl else []
    return line_chart('Messages in the queue', 'messages (peak per %s)' % per, tl,
                      [('in queue', QUEUE_COLOR, '', values,
                        'in queue (peak %d)' % max(values, default=0))], NO_TIMES)


def ddist_svg(matcher) -> str:
    delays = [(d.ddone - d.birth) / NS for d in matcher.deliveries if d.result == 'k']
    return bar_chart('Delay of successful deliveries (ddelay)',
                     'ddelay: end of delivery minus time queued',
                     'successful deliveries', delay_histogram(delays),
                     'no successful deliveries')


def notes(matcher) -> list:
    """(what, how many): the log's shape and what matching had to skip."""
    return [
        ('log lines read', matcher.lines),
        ('lines with a time stamp', matcher.stamped),
        ('messages completed (m lines)', len(matcher.messages)),
        ('messages still in the queue at the end', len(matcher.msgs)),
        ('messages seen only leaving (log began later)', len(matcher.stray_ends)),
        ('delivery attempts finished (d lines)', len(matcher.deliveries)),
        ('deliveries still under way at the end', len(matcher.dels)),
        ('results of deliveries started before the log', matcher.stray_results),
        ('deliveries lost when qmail-send stopped', matcher.lost),
        ('qmail-send runs ended', matcher.runs_ended),
        ('bounces', matcher.bounces),
        ('triple bounces discarded', matcher.triples),
        ('warnings', matcher.warnings),
        ('alerts', matcher.alerts),
        ('lines not understood', matcher.unknown),
    ]


def index_html(matcher, tl, charts: list) -> str:
    ms, ds = matcher.messages, matcher.deliveries
    span = ('%s to %s UTC' % (utc(matcher.first // NS), utc(matcher.last // NS))
            if matcher.first is not None else 'no time stamps')
    out = ['<!DOCTYPE html>',
           '<html lang="en">',
           '<head>',
           '<meta charset="utf-8">',
           '<title>qmail-analog</title>',
           '<style>',
           'body { font-family: sans-serif; margin: 2em auto; max-width: 900px; color: #222; }',
           'pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }',
           'img { display: block; max-width: 100%; margin: 1em 0; border: 1px solid #ddd; }',
           'table { border-collapse: collapse; } td { padding: 0 1em 0 0; }',
           'td.n { text-align: right; }',
           '</style>',
           '</head>',
           '<body>',
           '<h1>qmail-analog</h1>',
           '<p>qmail-send activity, %s.</p>' % esc(span)]
    out.append('<h2>Overall</h2>')
    out.append('<pre>%s</pre>' % esc(report.overall(ms, ds)))
    for name, alt in charts:
        out.append('<img src="%s" alt="%s">' % (esc(name), esc(alt)))
    for title, func in (('Delivery delays', report.ddist),
                        ('Deferrals', report.deferrals),
                        ('Failures', report.failures)):
        out.append('<h2>%s</h2>' % title)
        out.append('<pre>%s</pre>' % esc(func(ms, ds)))
    out.append('<h2>The log</h2>')
    out.append('<table>')
    out += ['<tr><td>%s</td><td class="n">%d</td></tr>' % (esc(k), v) for k, v in notes(matcher)]
    out.append('</table>')
    out.append('</body>')
    out.append('</html>')
    return '\n'.join(out) + '\n'


def render(matcher) -> dict:
    """{file name: contents} of everything `qmail-analog plot` writes."""
    tl = log_timeline(matcher)
    charts = [('deliveries.svg', 'delivery attempts over time'),
              ('queue.svg', 'messages in the queue over time'),
              ('ddist.svg', 'distribution of delivery delays')]
    return {
        'deliveries.svg': deliveries_svg(matcher, tl),
        'queue.svg': queue_svg(matcher, tl),
        'ddist.svg': ddist_svg(matcher),
        'index.html': index_html(matcher, tl, charts),
    }
