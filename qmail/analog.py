"""qmail-analog: statistics and charts from qmail-send's activity record.

Runs as:  anyone who can read the log; touches no queue, needs no qmail.
Usage:    qmail-analog [report] [file ...]
          qmail-analog matchup [-p pendingfile] [file ...]
          qmail-analog plot -o dir [file ...]
          qmail-analog xqp|xsender|xrecipient key [file ...]
          report is one of qmailanalog's z-scripts, without the z:
          overall (the default), ddist, deferrals, failures, successes,
          recipients, rhosts, senders, suids, rxdelay.
Reads:    the files in turn as one log ("-" or none: stdin; a name
          ending .gz is gunzipped): qmail-send's lines (qmail-log(5)),
          each stamped by multilog (@tai64n), splogger or accustamp
          (seconds.fraction), syslog, RFC 3339, or not at all; or
          matchup's own m and d lines (so `matchup` output can be kept
          and reported on later).  Lines longer than LINEMAX are cut.
Writes:   fd 1, for a report: the z-script's text (qmail/analog_report.py
          lists the forms).  For matchup: matchup(1)'s output, an m line
          per message that left the queue, a d line per delivery attempt,
          warnings, alerts and bounces as they were, other lines behind
          "? "; with -p, what is still open (messages, deliveries, a last
          line without its newline) goes to pendingfile as log lines to
          put before the next chunk of log, as matchup writes fd 5.
          For plot: dir/deliveries.svg, dir/queue.svg, dir/ddist.svg and
          dir/index.html (qmail/analog_plot.py), creating dir.
          For qmailanalog's x tools, matchup's m and d lines of the
          messages in question, in matchup's order: xqp qp, those with
          that qp (a pid: not unique over time); xsender sender, those
          of messages from sender (<> or nothing for bounces); xrecipient
          recip, the deliveries to recip on either channel (or, as
          local.joe@host, on one) and the m lines of their messages.
          Addresses compare without case (A-Z), as matchup writes them.
Exits:    0; 100 usage; 111 cannot read a file or write the output
          (one line on fd 2).
Trusts:   nothing in the log: a line it cannot parse is counted (and
          shown by matchup) and skipped; the charts escape all text.
See:      qmail-log(5); qmailanalog's matchup(1) and z-scripts;
          qmail/analog_match.py for how lines become messages and
          deliveries (restarts, logs that begin in the middle).
"""

import gzip
import os
import sys

from qmail import analog_match as match
from qmail import analog_plot as plot
from qmail import analog_report as report
from qmail.lib import error
from qmail.lib.error import exit_flushed

PROG = 'qmail-analog'
LINEMAX = 65536           # qmail-send's lines are far shorter (REPORTMAX 10000)
USAGE = ('usage: qmail-analog [overall|ddist|deferrals|failures|successes|'
         'recipients|rhosts|senders|suids|rxdelay] [file ...]\n'
         '       qmail-analog matchup [-p pendingfile] [file ...]\n'
         '       qmail-analog plot -o dir [file ...]\n'
         '       qmail-analog xqp|xsender|xrecipient key [file ...]\n')
XTOOLS = ('xqp', 'xsender', 'xrecipient')


class Usage(Exception):
    """A command line qmail-analog cannot follow."""


class ReadError(Exception):
    """An input that cannot be read: (name, reason)."""


# -- command line -----------------------------------------------------------------
def parse_args(argv: list):
    """(command, options, files) from argv; Usage if malformed."""
    args = list(argv)
    command = 'overall'
    if args and (args[0] in report.REPORTS or args[0] in ('matchup', 'plot') + XTOOLS):
        command = args.pop(0)
    elif args and args[0] in ('-h', '--help', 'help'):
        raise Usage('')
    opts = {}
    if command in XTOOLS:
        if not args or args[0] == '--':
            raise Usage('%s needs what to look for' % command)
        opts['key'] = args.pop(0)
    flags = {'matchup': {'-p': 'pending'}, 'plot': {'-o': 'outdir'}}.get(command, {})
    files = []
    while args:
        a = args.pop(0)
        if a == '--':
            files += args
            break
        if a in flags:
            if not args:
                raise Usage('option %s needs an argument' % a)
            opts[flags[a]] = args.pop(0)
        elif a.startswith('-') and a != '-':
            raise Usage('unknown option %s' % a)
        else:
            files.append(a)
    if command == 'plot' and 'outdir' not in opts:
        raise Usage('plot needs -o dir')
    return command, opts, files or ['-']


# -- input ---------------------------------------------------------------------------
def open_input(name: str):
    if name == '-':
        return sys.stdin.buffer
    if name.endswith('.gz'):
        return gzip.open(name, 'rb')
    return open(name, 'rb')


def read_lines(stream, tail: list):
    """The lines of stream as text, without newline; a last line that has
    no newline goes to tail instead, as matchup leaves it for next time."""
    while True:
        raw = stream.readline(LINEMAX)
        if not raw:
            return
        if not raw.endswith(b'\n'):
            if len(raw) == LINEMAX:              # cut: drop the rest of it
                while True:
                    more = stream.readline(LINEMAX)
                    if not more or more.endswith(b'\n'):
                        break
                raw += b'\n'
            else:
                tail.append(raw.decode('latin-1'))
                return
        yield raw[:-1].rstrip(b'\r').decode('latin-1')


def match_files(files: list, keep_tail: bool):
    """(Matcher over all the files, the unterminated last line or '').
    A file's unterminated last line is a line unless keep_tail asks to
    hand the very last one back."""
    m = match.Matcher()
    tail = []
    for name in files:
        if tail:
            m.feed(tail.pop())
        try:
            stream = open_input(name)
            try:
                for line in read_lines(stream, tail):
                    m.feed(line)
            finally:
                if stream is not sys.stdin.buffer:
                    stream.close()
        except OSError as e:          # gzip's BadGzipFile is one too
            raise ReadError(name, e.strerror or str(e))
        except EOFError as e:         # a truncated .gz
            raise ReadError(name, str(e) or 'unexpected end of file')
    last = ''
    if tail:
        if keep_tail:
            last = tail.pop()
        else:
            m.feed(tail.pop())
    return m, last


# -- output --------------------------------------------------------------------------
def write_out(text: str):
    sys.stdout.buffer.write(text.encode('latin-1', 'replace'))


def write_file(path: str, text: str):
    """Write path whole: a temporary beside it, then rename over it."""
    tmp = '%s.tmp%d' % (path, os.getpid())
    try:
        with open(tmp, 'wb') as f:
            f.write(text.encode('utf-8', 'replace'))
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def do_matchup(m, last: str, pending):
    write_out(''.join(line + '\n' for line in m.output_lines()))
    if pending is not None:
        text = ''.join(line + '\n' for line in m.pending_lines()) + last
        write_file(pending, text)


def selected(items, command: str, key: str) -> list:
    """The m and d records of items (a Matcher's, in order) that an x
    tool picks for key (see the description above).  The key is read as
    the log is: its bytes as latin-1, lower case for A-Z only."""
    key = os.fsencode(key).decode('latin-1')
    if command == 'xqp':
        return [it for it in items if not isinstance(it, str) and it.qp == key]
    key = key.translate(match.LOWER)
    if command == 'xsender':
        if key.startswith('<') and key.endswith('>'):
            key = key[1:-1]
        want = '<%s>' % key
        return [it for it in items if not isinstance(it, str) and it.sender == want]
    # A channel in front (local.joe@host) asks for that channel's
    # deliveries; a bare address, for the recipient on either.
    chan = key.partition('.')[0] in ('local', 'remote')
    out = []
    messages = set()
    for it in items:
        if isinstance(it, match.Delivery):
            if key == (it.target if chan else it.recip):
                out.append(it)
                messages.add((it.birth, it.qp, it.uid, it.sender))
        elif isinstance(it, match.Message):
            if (it.birth, it.qp, it.uid, it.sender) in messages:
                out.append(it)
    return out


def do_plot(m, outdir: str):
    os.makedirs(outdir, exist_ok=True)
    for name, text in plot.render(m).items():
        write_file(os.path.join(outdir, name), text)


def fatal(text: str) -> int:
    sys.stderr.write('%s: fatal: %s\n' % (PROG, text))
    return 111


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        command, opts, files = parse_args(argv)
    except Usage as e:
        if str(e):
            sys.stderr.write('%s: %s\n' % (PROG, e))
        sys.stderr.write(USAGE)
        return 100
    try:
        m, last = match_files(files, command == 'matchup' and 'pending' in opts)
    except ReadError as e:
        name, reason = e.args
        return fatal('unable to read %s: %s' % ('stdin' if name == '-' else name, reason))
    if m.lines and m.unknown == m.lines:
        # (a report of nothing would look like a quiet log)
        sys.stderr.write('%s: warning: no line of the log was understood: is it '
                         "qmail-send's, with time stamps of a known form?\n" % PROG)
    try:
        if command == 'matchup':
            do_matchup(m, last, opts.get('pending'))
        elif command == 'plot':
            do_plot(m, opts['outdir'])
        elif command in XTOOLS:
            write_out(''.join(it.line() + '\n'
                              for it in selected(m.items, command, opts['key'])))
        else:
            write_out(report.REPORTS[command](m.messages, m.deliveries))
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        return fatal('unable to write %s: %s' % (e.filename or 'output', e.strerror))
    return 0


def run():
    error.guard_stdout()            # a full disk or closed fd 1: one line, 111
    try:
        code = main()
    except BrokenPipeError:
        # the reader went away (qmail-analog recipients | head): not our
        # failure; stdout goes to /dev/null so the exit flush stays quiet
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        code = 0
    except KeyboardInterrupt:
        code = 111
    except Exception as e:
        sys.stderr.write('%s: fatal: internal bug: %s\n' % (PROG, type(e).__name__))
        code = 111
    exit_flushed(code, PROG)


if __name__ == '__main__':
    run()
