"""qmail-analog: stamps, matchup, the z-reports, the charts, the command."""

import calendar
import io
import os
import sys
import time
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings, strategies as st

from qmail import analog
from qmail import analog_match as am
from qmail import analog_plot as ap
from qmail import analog_report as ar

DATA = os.path.join(os.path.dirname(__file__), 'data', 'analog')
GOLDEN_LOG = os.path.join(DATA, 'golden.log')
NS = am.NS
T0 = 1700000000                      # 2023-11-14 22:13:20 UTC
SVG = '{http://www.w3.org/2000/svg}'


def tai(sec: float) -> str:
    """multilog's label for a time: 2^62 + 10 + seconds, then nanoseconds."""
    whole = int(sec)
    return '@%016x%08x' % (2 ** 62 + 10 + whole, round((sec - whole) * 1e9))


def golden_lines() -> list:
    with open(GOLDEN_LOG) as f:
        return f.read().splitlines()


def golden(name: str) -> str:
    with open(os.path.join(DATA, 'golden.' + name)) as f:
        return f.read()


def match(lines) -> am.Matcher:
    return am.match_lines(lines)


# -- stamps ---------------------------------------------------------------------------
@pytest.mark.parametrize('line, kind, ns, rest', [
    # multilog: 0x4000000063a1b2c3 - 2^62 - 10 = 0x63a1b2c3 - 10
    ('@4000000063a1b2c300000000 new msg 5', am.TAI, (0x63a1b2c3 - 10) * NS, 'new msg 5'),
    ('@400000006553f10a00989680 new msg 5', am.TAI, T0 * NS + 10_000_000, 'new msg 5'),
    ('@400000006553f10a3b9ac9ff end msg 5', am.TAI, T0 * NS + 999_999_999, 'end msg 5'),
    # splogger / accustamp
    ('1700000000.123456 new msg 5', am.NUM, T0 * NS + 123_456_000, 'new msg 5'),
    ('1700000000 new msg 5', am.NUM, T0 * NS, 'new msg 5'),
    ('1700000000.123456789123 new msg 5', am.NUM, T0 * NS + 123_456_789, 'new msg 5'),
    ('1700000000.123456+continued text', am.CONT, T0 * NS + 123_456_000, 'continued text'),
    # syslog around splogger: splogger's stamp wins
    ('Nov 14 22:13:20 mail qmail: 1700000000.5 new msg 5', am.NUM,
     T0 * NS + 500_000_000, 'new msg 5'),
    # syslog alone: no year, put in SYSLOG_YEAR
    ('Nov  4 22:13:20 mail qmail-send[42]: new msg 5', am.SYSLOG,
     calendar.timegm((2000, 11, 4, 22, 13, 20, 0, 0, 0)) * NS, 'new msg 5'),
    # RFC 3339 (rsyslog) and tai64nlocal
    ('2023-11-14T22:13:20.25Z mail qmail: new msg 5', am.ISO, T0 * NS + 250_000_000, 'new msg 5'),
    ('2023-11-15T00:13:20+02:00 new msg 5', am.ISO, T0 * NS, 'new msg 5'),
    ('2023-11-14 22:13:20.123456789 delivery 5: success: did_1+0+0/', am.ISO,
     T0 * NS + 123_456_789, 'delivery 5: success: did_1+0+0/'),
    # runit's svlogd -tt (boot/runit)
    ('2023-11-14_22:13:20.25000 new msg 5', am.ISO, T0 * NS + 250_000_000, 'new msg 5'),
    # none
    ('new msg 5', am.NONE, None, 'new msg 5'),
    ('delivery 5: success: did_1+0+0/', am.NONE, None, 'delivery 5: success: did_1+0+0/'),
    ('@zzzz new msg 5', am.NONE, None, '@zzzz new msg 5'),
    ('@3fffffffffffffff00000000 new msg 5', am.NONE, None,        # before 1970
     '@3fffffffffffffff00000000 new msg 5'),
    ('10000-01-01T00:00:00Z new msg 5', am.NONE, None, '10000-01-01T00:00:00Z new msg 5'),
])
def test_parse_stamp(line, kind, ns, rest):
    got = am.parse_stamp(line)
    assert got == (kind, ns, rest), 'got %r want %r' % (got, (kind, ns, rest))


@pytest.mark.parametrize('label, want', [
    ('4000000000000000' '00000000', -10 * NS),
    ('400000000000000a' '00000001', 1),
    ('400000006553f10a' '3b9ac9ff', T0 * NS + 999_999_999),
])
def test_tai64n_ns(label, want):
    assert am.tai64n_ns(label) == want


@pytest.mark.parametrize('ns, want', [
    (T0 * NS + 10_500_000, '1700000000.010500'),        # splogger's precision
    (T0 * NS + 123_456_789, '1700000000.123456789'),    # tai64n's
    (0, '0.000000'),
])
def test_fmt_stamp(ns, want):
    assert am.fmt_stamp(ns) == want
    assert am.num_ns(want) == ns


@pytest.mark.parametrize('stamp', [
    lambda s: tai(s) + ' ',
    lambda s: '%d.%06d ' % (int(s), round((s - int(s)) * 1e6)),
    lambda s: 'Nov 14 22:13:20 mail qmail: %d.%06d ' % (int(s), round((s - int(s)) * 1e6)),
    lambda s: time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(int(s)))
    + '.%06dZ ' % round((s - int(s)) * 1e6),
    lambda s: time.strftime('%Y-%m-%d_%H:%M:%S', time.gmtime(int(s)))
    + '.%05d ' % (round((s - int(s)) * 1e6) // 10),
], ids=['tai64n', 'splogger', 'syslog+splogger', 'rfc3339', 'svlogd-tt'])
def test_every_stamp_form_gives_the_same_report(stamp):
    lines = []
    for line in golden_lines():
        ns = am.tai64n_ns(line[1:25])
        lines.append(stamp(ns / NS) + line[26:])
    m = match(lines)
    assert ar.overall(m.messages, m.deliveries) == golden('overall')


def test_bare_lines_count_with_no_delays():
    m = match(line[26:] for line in golden_lines())
    assert m.stamped == 0 and m.first is None
    assert len(m.messages) == 4 and len(m.deliveries) == 6
    text = ar.overall(m.messages, m.deliveries)
    assert 'Completed messages: 4\n' in text
    assert 'Total xdelay (s): 0.000000\n' in text
    assert 'Time span' not in text


def test_yearless_syslog_moves_on_across_new_year():
    m = match(['Dec 31 23:59:59 mail qmail: new msg 5',
               'Dec 31 23:59:59 mail qmail: info msg 5: bytes 10 from <a@b> qp 1 uid 0',
               'Jan  1 00:00:01 mail qmail: end msg 5'])
    assert [(x.done - x.birth) // NS for x in m.messages] == [2]


@pytest.mark.parametrize('year_before', [False, True])
def test_yearless_syslog_chunks_across_new_year(year_before):
    """A syslog log cut in chunks (matchup -p): the pending lines carry
    their year, and the next chunk's Jan 1 was taken as that year's, a
    year before the message was born (delays of -31622393 s)."""
    first = ['Dec 31 23:59:58 mail qmail: info msg 5: bytes 10 from <a@b> qp 1 uid 2']
    if year_before:         # the first chunk crossed a new year already
        first = ['Dec 30 10:00:00 mail qmail: new msg 4', 'Jan  1 00:00:00 mail qmail: new msg 6',
                 'Dec 31 23:59:58 mail qmail: info msg 5: bytes 10 from <a@b> qp 1 uid 2']
    rest = ['Jan  1 00:00:03 mail qmail-send[42]: starting delivery 1: msg 5 to local x@y',
            'Jan  1 00:00:04 mail qmail-send[42]: delivery 1: success: ok',
            'Jan  1 00:00:05 mail qmail-send[42]: end msg 5']
    whole = match(first + rest)
    chunk = match(first)
    second = match(chunk.pending_lines() + rest)
    assert chunk.output_lines() + second.output_lines() == whole.output_lines()
    assert [(x.done - x.birth) // NS for x in second.messages] == [7]


def test_a_stamp_late_in_year_9999_before_syslog_lines_is_no_crash():
    """The year a yearless date takes from a dated stamp before it stops
    at 9999: a stray stamp late in 9999 made it year 10000, and
    calendar.timegm's ValueError cost the whole report."""
    sec = 253402300799 - 86400
    label = '@%016x%08x' % (2 ** 62 + 10 + sec, 0)
    m = match([label + ' status: local 0/10 remote 0/20',
               'Jan  1 00:00:01 host qmail: new msg 5',
               'Jan  1 00:00:02 host qmail: info msg 5: bytes 10 from <a@b> qp 1 uid 2',
               'Jan  1 00:00:03 host qmail: end msg 5'])
    assert len(m.messages) == 1 and m.last <= am.TIME_MAX


# -- matchup ----------------------------------------------------------------------------
def test_golden_matchup():
    m = match(golden_lines())
    got = ''.join(line + '\n' for line in m.output_lines())
    assert got == golden('matchup')
    assert (m.bounces, m.lost, m.stray_results, m.unknown) == (1, 0, 0, 0)
    assert not m.msgs and not m.dels


def test_golden_records():
    m = match(golden_lines())
    msgs = {x.qp: (x.nk, x.nd, x.nz, x.sender) for x in m.messages}
    assert msgs == {'501': (1, 0, 0, '<alice@example.org>'),
                    '502': (1, 0, 1, '<alice@example.org>'),
                    '503': (1, 1, 0, '<dave@example.org>'),
                    '504': (1, 0, 0, '<>')}
    results = [(d.result, d.target) for d in m.deliveries]
    assert results == [('k', 'local.bob@example.org'),
                       ('z', 'remote.carol@example.net'),
                       ('k', 'local.bob@example.org'),
                       ('d', 'remote.nobody@example.com'),
                       ('k', 'local.dave@example.org'),
                       ('k', 'remote.carol@example.net')]


def L(sec, text):
    return '%s %s' % (tai(T0 + sec), text)


RUN1 = [
    L(0, 'status: local 0/10 remote 0/20'),
    L(1, 'new msg 5'),
    L(1, 'info msg 5: bytes 100 from <a@example.org> qp 9 uid 0'),
    L(2, 'starting delivery 1: msg 5 to local b@example.org'),
    L(3, 'delivery 1: success: did_1+0+0/'),
    L(4, 'starting delivery 2: msg 5 to remote c@example.net'),
    L(5, 'starting delivery 3: msg 5 to remote d@example.net'),
    L(6, 'delivery 3: deferral: timeout/'),
]
# qmail-send killed with delivery 2 under way; the new one numbers from 1.
RUN2 = [
    L(100, 'status: local 0/10 remote 0/20'),
    L(101, 'starting delivery 1: msg 5 to remote c@example.net'),
    L(102, 'delivery 1: success: ok/'),
    L(103, 'starting delivery 2: msg 5 to remote d@example.net'),
    L(105, 'delivery 2: success: ok/'),
    L(106, 'end msg 5'),
]


@pytest.mark.parametrize('between, lost, runs', [
    ([], 1, 1),                                     # killed: noticed by numbering
    ([L(50, 'status: exiting')], 1, 1),             # told: exiting ends the run
])
def test_matching_across_a_restart(between, lost, runs):
    m = match(RUN1 + between + RUN2)
    got = [(d.result, d.target, (d.ddone - d.dstart) // NS) for d in m.deliveries]
    assert got == [('k', 'local.b@example.org', 1),
                   ('z', 'remote.d@example.net', 1),
                   ('k', 'remote.c@example.net', 1),
                   ('k', 'remote.d@example.net', 2)]
    assert (m.lost, m.runs_ended) == (lost, runs)
    [msg] = m.messages
    assert (msg.nk, msg.nd, msg.nz) == (3, 0, 1)
    assert not m.dels and m.pending_lines() == []


def test_restart_does_not_leave_stale_deliveries_open():
    # delivery 7 of the old run never finished; the new run stops at 3
    lines = [L(0, 'new msg 5'),
             L(0, 'info msg 5: bytes 100 from <a@example.org> qp 9 uid 0'),
             L(1, 'starting delivery 7: msg 5 to remote c@example.net'),
             L(9, 'starting delivery 1: msg 5 to remote c@example.net'),
             L(9, 'delivery 1: deferral: busy/'),
             L(19, 'starting delivery 2: msg 5 to remote c@example.net')]
    m = match(lines)
    assert m.lost == 1
    assert sorted(m.dels) == [2]


def test_log_starting_in_the_middle():
    lines = [L(0, 'delivery 3: success: did_1+0+0/'),            # start not seen
             L(1, 'starting delivery 4: msg 77 to remote X@Example.com'),
             L(3, 'delivery 4: failure: no_such_user/'),
             L(4, 'end msg 77'),                                   # info not seen
             L(5, 'new msg 78'),
             L(5, 'info msg 78: bytes 5 from <a@b> qp 1 uid 2')]
    m = match(lines)
    assert m.stray_results == 1
    [d] = m.deliveries
    assert d.line() == ('d d %s %s %s 0 ? remote.x@example.com ? ? no_such_user/'
                        % (am.fmt_stamp((T0 + 1) * NS), am.fmt_stamp((T0 + 1) * NS),
                           am.fmt_stamp((T0 + 3) * NS)))
    assert m.messages == []
    assert sorted(m.intervals(), key=str) == [((T0 + 5) * NS, None), (None, (T0 + 4) * NS)]


def test_new_msg_forgets_a_reused_number():
    m = match([L(0, 'info msg 5: bytes 1 from <a@b> qp 1 uid 0'),
               L(1, 'new msg 5'),
               L(2, 'end msg 5')])
    assert m.messages == [] and m.stray_ends == [(T0 + 2) * NS]


@pytest.mark.parametrize('line, want', [
    ('warning: trouble opening remote/3/1002; will try again later',
     'warning: trouble opening remote/3/1002; will try again later'),
    ('alert: oh no! lost spawn connection! dying...',
     'alert: oh no! lost spawn connection! dying...'),
    ('triple bounce: discarding bounce/55', 'triple bounce: discarding bounce/55'),
    ('tcpserver: status: 0/40', '? tcpserver: status: 0/40'),
    ('info msg x: bytes', '? info msg x: bytes'),
    ('delivery 5: sideways: x', '? delivery 5: sideways: x'),
])
def test_lines_passed_through(line, want):
    m = match([line])
    assert m.output_lines() == [want]


def test_report_mangled_is_a_deferral():
    m = match([L(0, 'starting delivery 1: msg 5 to local a@b'),
               L(1, 'delivery 1: report mangled, will defer')])
    assert [(d.result, d.reason) for d in m.deliveries] == [('z', 'report_mangled')]


WORDS = ['status:', 'exiting', 'new', 'info', 'msg', 'starting', 'delivery', 'end', 'to',
         'local', 'remote', 'success:', 'failure:', 'deferral:', 'report', 'bytes', 'from',
         'qp', 'uid', 'extra', 'bounce', 'triple', 'm', 'd', 'k', 'z', '5', '5:', '-1', '٣',
         '1_0', '<a@b>', '@', '@4000000063a1b2c300000000', '1700000000.5', '1700000000.5+',
         'Nov', '14', '22:13:20', '2023-11-14T22:13:20Z', '²', '']


@pytest.mark.parametrize('line', [
    '@', '@' + 'g' * 24, '@4000_00063a1b2c300000000 new msg 5', '1²³ new msg 5',
    '١٢ new msg 5', 'starting delivery', 'starting delivery 5: msg x to local a',
    'delivery', 'delivery x: success: a', 'delivery 5:', 'info msg', 'end msg', 'new msg',
    'extra', 'extra 5', 'extra x 1 2 3', 'm 1 2', 'm a b c d e f g h i', 'd k',
    'd q 1 2 3 4 5 6 7 8 9',
    'd k 1 2 3 x <a> local.b 1 2 r', 'Feb 30 10:00:00 h t: new msg 5',
    '@ffffffffffffffffffffffff new msg 5', '@3fffffffffffffff00000000 new msg 5',
    '99999999999999999999.5 new msg 5', '0001-01-01T00:00:00Z new msg 5',
    'm 99999999999999999999 1 2 0 0 0 <a> 1 2',
    '2023-13-45T99:99:99Z new msg 5', '\x00\xff', ' \t ',
])
def test_odd_lines_do_not_break_matching(line):
    m = match([line, L(1, 'new msg 5'), line])
    assert m.lines <= 3
    for func in ar.REPORTS.values():
        func(m.messages, m.deliveries)
    ap.render(m)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(WORDS), max_size=9).map(' '.join), max_size=30))
def test_any_word_salad_matches_without_error(lines):
    m = match(lines)
    m.output_lines()
    m.pending_lines()
    for func in ar.REPORTS.values():
        func(m.messages, m.deliveries)
    ap.render(m)


@pytest.mark.parametrize('cut', [3, 11, 13, 20, 27, 34])
def test_pending_carries_over_between_chunks(cut):
    lines = golden_lines()
    whole = match(lines).output_lines()
    first = match(lines[:cut])
    second = match(first.pending_lines() + lines[cut:])
    assert first.output_lines() + second.output_lines() == whole
    assert second.lost == 0


def test_matchup_records_are_input_too():
    m = match(golden_lines())
    again = match(m.output_lines())
    assert [r.line() for r in again.messages] == [r.line() for r in m.messages]
    assert [r.line() for r in again.deliveries] == [r.line() for r in m.deliveries]
    for name, func in ar.REPORTS.items():
        assert func(again.messages, again.deliveries) == golden(name), name


# -- reports ------------------------------------------------------------------------------
@pytest.mark.parametrize('name', sorted(ar.REPORTS))
def test_golden_reports(name):
    m = match(golden_lines())
    got = ar.REPORTS[name](m.messages, m.deliveries)
    assert got == golden(name), 'got:\n%s\nwant:\n%s' % (got, golden(name))


def test_overall_numbers_by_hand():
    text = golden('overall')
    # qtimes 0.3895 + 401.5995 + 1.1995 + 0.3994; ddelays 0.2895 + 401.4995
    # + 0.2995 + 0.2994; xdelays 0.2 + 2 + 0.2 + 0.8 + 0.2 + 1.5; span
    # 0.0105 .. 411.6
    for want in ('Completed messages: 4', 'Recipients for completed messages: 5',
                 'Total delivery attempts for completed messages: 6',
                 'Average delivery attempts per completed message: 1.5',
                 'Bytes in completed messages: 6900', 'Bytes weighted by success: 6900',
                 'Average message qtime (s): 100.897', 'Total delivery attempts: 6',
                 '  success: 4', '  failure: 1', '  deferral: 1',
                 'Total ddelay (s): 402.387900', 'Average ddelay per success (s): 100.596975',
                 'Total xdelay (s): 4.900000',
                 'Average xdelay per delivery attempt (s): 0.816667',
                 'Time span (days): %.6g' % (411.5895 / 86400),
                 'Average concurrency: %.6g' % (4.9 / 411.5895)):
        assert want + '\n' in text, want


def test_overall_of_nothing():
    assert ar.overall([], []) == ar.OVERALL_HEAD + (
        'Completed messages: 0\n\nTotal delivery attempts: 0\n')


@pytest.mark.parametrize('x, want', [
    (1, '1'), (1.5, '1.5'), (100.896975, '100.897'), (0.000551822123, '0.000551822'),
    (6900.0, '6900'), (1e-7, '1e-07'),
])
def test_awknum(x, want):
    assert ar.awknum(x) == want


@pytest.mark.parametrize('rows, want', [
    ([['del', 'xdelay', 'reason'], ['10', '1.50', 'a_b']],
     'del  xdelay  reason\n 10    1.50  a_b\n'),
    ([['a'], ['bbb', 'c']], '  a  \nbbb  c\n'),     # columnt pads a short line too
    ([], ''),
])
def test_columnt(rows, want):
    assert ar.columnt(rows) == want


def d_ok(delay, result='k'):
    return am.Delivery(result, 0, 0, int(delay * NS), 1, '<a@b>', 'local', 'x@y', '1', '0', 'ok')


@pytest.mark.parametrize('delays, want', [
    ([], []),
    ([1, 2, 3, 4], [(1, 1, 25), (2, 1.5, 50), (3, 2, 75), (4, 2.5, 100)]),
    # ties end together: both 1s are done by the 50% mark
    ([1, 1, 5, 9], [(1, 1, 50), (5, 7 / 3, 75), (9, 4, 100)]),
    ([0.5] * 3 + [2] * 7, [(0.5, 0.5, 30), (2, 1.55, 100)]),
])
def test_ddist_rows(delays, want):
    assert ar.ddist_rows([d_ok(x) for x in delays]) == want


def test_ddist_ignores_unsuccessful():
    assert ar.ddist_rows([d_ok(5, 'z'), d_ok(7, 'd'), d_ok(1)]) == [(1, 1, 100)]


@pytest.mark.parametrize('target, host', [
    ('remote.joe@example.com', 'example.com'),
    ('local.a@b@c.org', 'c.org'),
    ('local.postmaster', 'local.postmaster'),
])
def test_host_of(target, host):
    assert ar.host_of(target) == host


# -- charts -------------------------------------------------------------------------------
@pytest.mark.parametrize('first, last, want', [
    (T0, T0 + 411.6, ap.Timeline(1699999980, 60, 8)),             # per minute
    (T0, T0 + 86399, ap.Timeline(1699999920, 120, 721)),          # 1441 minutes: wider
    (T0, T0 + 30 * 86400, ap.Timeline(1699999200, 3600, 721)),
])
def test_timeline(first, last, want):
    tl = ap.timeline(int(first * NS), int(last * NS))
    assert tl == want
    assert tl.bins <= ap.MAXBINS
    assert tl.start <= first < last < tl.end


def test_timeline_beyond_daily_bins():
    tl = ap.timeline(0, 5 * 365 * 86400 * NS)
    assert tl.bins <= ap.MAXBINS and tl.width % 86400 == 0


def test_count_bins():
    tl = ap.Timeline(T0 - 20, 60, 3)
    times = [(T0 + s) * NS for s in (-20, 0, 39, 40, 100, 159)]
    assert ap.count_bins(times, tl) == [3, 1, 2]


@pytest.mark.parametrize('intervals, want', [
    ([], [0, 0, 0]),
    ([(0, 30)], [1, 0, 0]),
    ([(0, 90), (70, 150)], [1, 2, 1]),
    ([(0, 60), (60, 120)], [1, 1, 0]),          # one leaves as the next enters
    ([(None, 100), (10, None)], [2, 2, 1]),     # present before / after the log
    ([(None, 30), (None, 150)], [2, 1, 1]),
])
def test_queue_peaks(intervals, want):
    tl = ap.Timeline(T0, 60, 3)
    ivs = [(None if a is None else (T0 + a) * NS, None if b is None else (T0 + b) * NS)
           for a, b in intervals]
    assert ap.queue_peaks(ivs, tl) == want


@pytest.mark.parametrize('delays, want', [
    ([], []),
    ([0.05], [('0s-0.1s', 1)]),
    ([0.05, 0.3, 0.3, 1.5], [('0s-0.1s', 1), ('0.1s-0.2s', 0), ('0.2s-0.5s', 2),
                             ('0.5s-1s', 0), ('1s-2s', 1)]),
    ([-1], [('0s-0.1s', 1)]),                   # a clock step back: first bin
])
def test_delay_histogram(delays, want):
    assert ap.delay_histogram(delays) == want


def test_delay_histogram_edges():
    bars = ap.delay_histogram([0.1, 3600, 10 * 86400])
    assert len(bars) == len(ap.DELAY_EDGES)
    assert bars[1] == ('0.1s-0.2s', 1)
    assert ('1h-2h', 1) in bars
    assert bars[-1] == ('>7d', 1)


@pytest.mark.parametrize('vmax, want', [
    (0, (1, 1)), (3, (4, 1)), (7, (8, 2)), (80, (100, 20)), (4045, (5000, 1000)),
])
def test_nice_scale(vmax, want):
    assert ap.nice_scale(vmax) == want


def svg_tree(text: str):
    assert text.startswith('<?xml')
    return ET.fromstring(text.encode())


def polylines(root):
    return {p.get('data-name'): p.get('points').split() for p in root.iter(SVG + 'polyline')}


def test_golden_charts():
    m = match(golden_lines())
    files = ap.render(m)
    assert sorted(files) == ['ddist.svg', 'deliveries.svg', 'index.html', 'queue.svg']
    # 22:13:20 .. 22:20:11: eight one-minute bins
    lines = polylines(svg_tree(files['deliveries.svg']))
    assert sorted(lines) == ['deferral', 'failure', 'success']
    assert all(len(points) == 8 for points in lines.values())
    queue = polylines(svg_tree(files['queue.svg']))
    assert list(queue) == ['in queue'] and len(queue['in queue']) == 8
    # ddelays 0.29 s (3) and 401.5 s (1): bars from 0s-0.1s to 5m-10m
    root = svg_tree(files['ddist.svg'])
    bars = [r for r in root.iter(SVG + 'rect') if r.get('class') == 'bar']
    assert len(bars) == 12
    heights = [float(r.get('height')) for r in bars]
    assert [h > 0 for h in heights] == [False] * 2 + [True] + [False] * 8 + [True]
    assert heights[2] == 3 * heights[11]
    html = files['index.html']
    for name in ('deliveries.svg', 'queue.svg', 'ddist.svg'):
        assert 'src="%s"' % name in html
    assert 'Completed messages: 4' in html
    assert 'Average message qtime (s): 100.897' in html


def test_chart_values_follow_the_log():
    m = match(golden_lines())
    tl = ap.log_timeline(m)
    assert ap.count_bins([d.ddone for d in m.deliveries if d.result == 'k'], tl) == [
        3, 0, 0, 0, 0, 0, 0, 1]
    assert ap.queue_peaks(m.intervals(), tl) == [2, 1, 1, 1, 1, 1, 1, 1]


def test_charts_of_a_log_without_stamps():
    m = match(line[26:] for line in golden_lines())
    files = ap.render(m)
    for name in ('deliveries.svg', 'queue.svg'):
        root = svg_tree(files[name])
        texts = [t.text for t in root.iter(SVG + 'text')]
        assert ap.NO_TIMES in texts
        assert all(not pts for pts in polylines(root).values())
    root = svg_tree(files['ddist.svg'])
    assert len([r for r in root.iter(SVG + 'rect') if r.get('class') == 'bar']) == 1


def test_charts_escape_text():
    text = ap.bar_chart('a <b> & "c"', 'x<', 'y&', [('<1s', 2)])
    root = svg_tree(text)
    assert root.find(SVG + 'title').text == 'a <b> & "c"'


def test_empty_log():
    m = match([])
    files = ap.render(m)
    for name in ('deliveries.svg', 'queue.svg', 'ddist.svg'):
        svg_tree(files[name])
    assert 'Completed messages: 0' in files['index.html']


# -- a big log ----------------------------------------------------------------------------
def synthetic_log(nlines: int, t0: int = T0):
    """At least nlines of a busy qmail-send: a message every 2 s with a
    local and a remote recipient; every 7th remote delivery is deferred and
    retried 10 minutes later, every 11th fails and bounces; qmail-send
    restarts halfway.  Returns (lines, messages, attempts, restart time)."""
    events = []                  # (time, seq, kind, text or delivery key)
    seq = 0
    i = 0
    approx = 0
    while approx < nlines:
        t = t0 + 2 * i
        mid = 1000 + i
        rcpt = 'u%d@host%d.example.net' % (i % 97, i % 9)
        accepted = 'success: 192.0.2.7_accepted_message./'
        ev = [(t, 'text', 'new msg %d' % mid),
              (t + 0.0005, 'text', 'info msg %d: bytes %d from <User%d@Example.org> qp %d uid %d'
               % (mid, 500 + 37 * (i % 100), i % 13, 20000 + i, 1000 + i % 3)),
              (t + 0.1, 'start', (i, 'l', 'local', 'box%d@example.org' % (i % 50))),
              (t + 0.2, 'result', ((i, 'l'), 'success: did_1+0+0/')),
              (t + 0.3, 'start', (i, 'r', 'remote', rcpt))]
        if i % 7 == 0:
            ev += [(t + 0.8, 'result', ((i, 'r'), 'deferral: Connected_to_192.0.2.7_but_busy./')),
                   (t + 600.3, 'start', (i, 'R', 'remote', rcpt)),
                   (t + 600.8, 'result', ((i, 'R'), accepted)),
                   (t + 600.9, 'text', 'end msg %d' % mid)]
        elif i % 11 == 0:
            ev += [(t + 0.8, 'result', ((i, 'r'), 'failure: Sorry,_no_mailbox_here./')),
                   (t + 0.85, 'text', 'bounce msg %d qp %d' % (mid, 90000 + i)),
                   (t + 0.9, 'text', 'end msg %d' % mid)]
        else:
            ev += [(t + 0.8, 'result', ((i, 'r'), accepted)),
                   (t + 0.9, 'text', 'end msg %d' % mid)]
        for e in ev:
            events.append((e[0], seq) + e[1:])
            seq += 1
        approx += len(ev) + sum(1 for e in ev if e[1] == 'result')   # + status lines
        i += 1
    nmsg = i
    restart = t0 + 2 * (nmsg // 2) + 1.9        # a quiet moment: nothing under way
    events.append((restart, seq, 'text', 'status: exiting'))
    events.append((restart + 0.05, seq + 1, 'text', 'status: local 0/10 remote 0/20'))
    events.sort()
    lines, numbers, delnum, attempts = [], {}, 0, 0
    for t, _, kind, what in events:
        if kind == 'text':
            text = what
            if text == 'status: exiting':
                delnum = 0
        elif kind == 'start':
            delnum += 1
            numbers[what[:2]] = delnum
            text = 'starting delivery %d: msg %d to %s %s' % (
                delnum, 1000 + what[0], what[2], what[3])
        else:
            attempts += 1
            text = 'delivery %d: %s' % (numbers[what[0]], what[1])
            status = 'status: local 0/10 remote %d/20' % (delnum % 3)
            lines.append(tai(t) + ' ' + text)
            text = status
        lines.append(tai(t) + ' ' + text)
    return lines, nmsg, attempts, restart


def test_big_log_quickly():
    lines, nmsg, attempts, restart = synthetic_log(100_000)
    assert len(lines) >= 100_000
    began = time.monotonic()
    m = match(lines)
    reports = {name: func(m.messages, m.deliveries) for name, func in ar.REPORTS.items()}
    files = ap.render(m)
    elapsed = time.monotonic() - began
    assert elapsed < 10, 'took %.1f s' % elapsed
    assert len(m.messages) == nmsg and len(m.deliveries) == attempts
    assert (m.lost, m.runs_ended, m.stray_results, m.unknown) == (0, 1, 0, 0)
    assert not m.msgs and not m.dels
    assert 'Completed messages: %d\n' % nmsg in reports['overall']
    assert '  deferral: %d\n' % len(range(0, nmsg, 7)) in reports['overall']
    tl = ap.log_timeline(m)
    for points in polylines(svg_tree(files['deliveries.svg'])).values():
        assert len(points) == tl.bins
    sys.stderr.write('%d lines in %.2f s\n' % (len(lines), elapsed))


# -- the command -------------------------------------------------------------------------
def run_main(monkeypatch, capsysbinary, argv, stdin=b''):
    monkeypatch.setattr(sys, 'stdin', io.TextIOWrapper(io.BytesIO(stdin)))
    code = analog.main(argv)
    out, err = capsysbinary.readouterr()
    return code, out.decode('latin-1'), err.decode('latin-1')


@pytest.mark.parametrize('argv, report', [
    ([], 'overall'),
    (['overall'], 'overall'),
    (['recipients'], 'recipients'),
    (['rhosts'], 'rhosts'),
    (['senders'], 'senders'),
    (['suids'], 'suids'),
    (['ddist'], 'ddist'),
    (['deferrals'], 'deferrals'),
    (['failures'], 'failures'),
    (['successes'], 'successes'),
    (['rxdelay'], 'rxdelay'),
    (['matchup'], 'matchup'),
])
def test_command_reads_stdin(monkeypatch, capsysbinary, argv, report):
    with open(GOLDEN_LOG, 'rb') as f:
        log = f.read()
    code, out, err = run_main(monkeypatch, capsysbinary, argv, log)
    assert (code, out, err) == (0, golden(report), '')


def test_a_log_of_nothing_understood_is_warned_of(monkeypatch, capsysbinary):
    """Stamps of an unknown form (svlogd -tt's were, once) made every line
    unknown and the report empty, like a quiet log's; now it says so."""
    log = b'2026/11/26 18:09:16 new msg 5\n2026/11/26 18:09:16 end msg 5\n'
    code, out, err = run_main(monkeypatch, capsysbinary, ['overall'], log)
    assert code == 0 and 'Completed messages: 0' in out, out
    assert err.startswith('qmail-analog: warning: no line of the log was understood'), err
    code, out, err = run_main(monkeypatch, capsysbinary, ['overall'], b'')
    assert err == ''


def test_command_reads_files_in_turn(monkeypatch, capsysbinary, tmp_path):
    import gzip
    lines = golden_lines()
    a, b = tmp_path / 'a', tmp_path / 'b.gz'
    a.write_text('\n'.join(lines[:20]) + '\n')
    with gzip.open(b, 'wt') as f:
        f.write('\n'.join(lines[20:]))                 # no last newline
    code, out, err = run_main(monkeypatch, capsysbinary, ['overall', str(a), str(b)])
    assert (code, out) == (0, golden('overall'))


def test_command_matchup_pending(monkeypatch, capsysbinary, tmp_path):
    lines = golden_lines()
    a = tmp_path / 'a'
    a.write_text('\n'.join(lines[:20]) + '\n' + lines[20])     # cut mid-file
    pending = tmp_path / 'pending'
    code, out1, err = run_main(monkeypatch, capsysbinary, ['matchup', '-p', str(pending), str(a)])
    assert code == 0
    assert pending.read_text().endswith(lines[20])             # the unfinished line
    rest = tmp_path / 'rest'
    rest.write_text('\n' + '\n'.join(lines[21:]) + '\n')
    code, out2, err = run_main(monkeypatch, capsysbinary, ['matchup', str(pending), str(rest)])
    assert code == 0
    assert out1 + out2 == golden('matchup')


def test_command_plot(monkeypatch, capsysbinary, tmp_path):
    outdir = tmp_path / 'charts' / 'today'
    code, out, err = run_main(monkeypatch, capsysbinary, ['plot', '-o', str(outdir), GOLDEN_LOG])
    assert (code, out, err) == (0, '', '')
    assert sorted(os.listdir(outdir)) == ['ddist.svg', 'deliveries.svg', 'index.html', 'queue.svg']
    for name in ('ddist.svg', 'deliveries.svg', 'queue.svg'):
        ET.parse(str(outdir / name))


@pytest.mark.parametrize('argv', [
    ['plot'], ['plot', '-o'], ['overall', '-x'], ['matchup', '-o', 'x'], ['--help'],
])
def test_command_usage(monkeypatch, capsysbinary, argv):
    code, out, err = run_main(monkeypatch, capsysbinary, argv)
    assert code == 100 and out == '' and 'usage: qmail-analog' in err


def test_command_missing_file(monkeypatch, capsysbinary, tmp_path):
    code, out, err = run_main(monkeypatch, capsysbinary, [str(tmp_path / 'nope')])
    assert code == 111
    assert err.startswith('qmail-analog: fatal: unable to read %s' % (tmp_path / 'nope'))


def test_command_unwritable_outdir(monkeypatch, capsysbinary, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    code, out, err = run_main(monkeypatch, capsysbinary,
                              ['plot', '-o', str(blocker / 'sub'), GOLDEN_LOG])
    assert code == 111 and err.startswith('qmail-analog: fatal: unable to write')


def test_names_sort_numbers_first_and_odd_digits_as_names():
    """'²' is a digit to str.isdigit(), not to int(); nor are 5000 digits."""
    from qmail import analog_report
    names = ['b', '10', '\u00b2', '9', '7' * 5000, 'a']
    assert sorted(names, key=analog_report.name_key) == \
        ['9', '10', '7' * 5000, 'a', 'b', '\u00b2']


@pytest.mark.parametrize('argv, picked', [
    (['xqp', '502'], [2, 9, 10]),
    (['xqp', '999'], []),
    (['xsender', 'ALICE@example.org'], [0, 1, 2, 9, 10]),
    (['xsender', '<alice@example.org>'], [0, 1, 2, 9, 10]),
    (['xsender', ''], [7, 8]),
    (['xsender', '<>'], [7, 8]),
    (['xrecipient', 'bob@example.org'], [0, 1, 3, 6]),
    (['xrecipient', 'remote.nobody@Example.com'], [4, 6]),
    (['xrecipient', 'local.nobody@example.com'], []),
])
def test_x_tools_pick_matchup_lines(monkeypatch, capsysbinary, argv, picked):
    """qmailanalog's xqp, xsender and xrecipient: the m and d lines that
    matchup prints for the messages asked about, in its order (the m
    line of a recipient's message too); addresses without case."""
    lines = golden('matchup').split('\n')
    code, out, err = run_main(monkeypatch, capsysbinary, argv + [GOLDEN_LOG])
    assert (code, err) == (0, '')
    assert out == ''.join(lines[i] + '\n' for i in picked), out


@pytest.mark.parametrize('argv', [['xqp'], ['xsender', '--'], ['xrecipient']])
def test_x_tools_need_a_key(monkeypatch, capsysbinary, argv):
    code, out, err = run_main(monkeypatch, capsysbinary, argv)
    assert code == 100 and out == '' and 'needs what to look for' in err, err


EIGHT_BIT_LOG = (
    b'@400000006553f10a00989680 new msg 7\n'
    b'@400000006553f10a00a037a0 info msg 7: bytes 10 from <Jos\xc3\xa9@X.org> qp 9 uid 5\n'
    b'@400000006553f10a05f5e100 starting delivery 1: msg 7 to remote J\xc3\x89@x.org\n'
    b'@400000006553f10a11e1a300 delivery 1: success: ok/\n'
    b'@400000006553f10a17d78400 end msg 7\n')


@pytest.mark.parametrize('argv, count', [
    (['xsender', 'JOSé@x.org'], 2),          # A-Z folded, é as its bytes
    (['xsender', 'josÉ@x.org'], 0),          # É is not é: matchup folds A-Z only
    (['xrecipient', 'jÉ@x.org'], 2),
    (['xrecipient', 'remote.jÉ@X.org'], 2),
    (['xrecipient', 'local.jÉ@x.org'], 0),   # a channel asked for: that one only
])
def test_x_tools_read_an_8bit_key_as_the_log_is_read(monkeypatch, capsysbinary, argv, count):
    """The key (UTF-8 on the command line) compared as the log's bytes:
    an address with é was never found, and the empty answer looked like
    "no such mail"."""
    code, out, err = run_main(monkeypatch, capsysbinary, argv, EIGHT_BIT_LOG)
    assert (code, err) == (0, '') and out.count('\n') == count, out
