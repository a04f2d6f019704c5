"""qmail.lib.manpage: a program's description becomes its man page."""

import ast
import os
import subprocess

from qmail.lib import manpage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DOC = """qmail-thing: do one thing
well, and say so.

Runs as:  qmails; cwd HOME/queue.
Usage:    qmail-thing [-v] dir
          qmail-thing -n
Reads:    fd 0, lines.  A line "-x" or ".y"
          counts; a backslash \\ stays.
Exits:    0 done; 111 trouble.
See:      qmail-send(8), qmail-log(5).

Beyond qmail 1.03: a paragraph with a colon.  Its second sentence.
.starts with a dot

  - a list item
  - another, kept as written
"""


def test_parse_takes_the_name_the_summary_and_the_fields_in_order():
    name, summary, parts = manpage.parse(DOC)
    assert name == 'qmail-thing'
    assert summary == 'do one thing well, and say so'
    assert [label for label, _ in parts] == [
        'Runs as', 'Usage', 'Reads', 'Exits', 'See', None, None]
    label, lines = parts[2]
    assert manpage.dedent(lines) == ['fd 0, lines.  A line "-x" or ".y"',
                                     'counts; a backslash \\ stays.']


def test_page_sections_and_escapes():
    text = manpage.page('qmail-thing', DOC, date='2026-11-27')
    lines = text.split('\n')
    assert lines[0] == '.TH QMAIL\\-THING 8 "2026-11-27" "qmail-py" "qmail"'
    assert 'qmail\\-thing \\- do one thing well, and say so' in lines
    # Usage is the synopsis, as written, and not repeated below.
    syn = lines.index('.SH SYNOPSIS')
    assert lines[syn + 1:syn + 5] == ['.nf', 'qmail\\-thing [\\-v] dir', 'qmail\\-thing \\-n', '.fi']
    assert text.count('Usage') == 0
    # Backslashes and leading dots never reach roff as requests.
    assert 'counts; a backslash \\e stays.' in lines
    assert '\\&.starts with a dot' in lines
    assert not any(l.startswith('.starts') for l in lines)
    # The list keeps its layout; the prose is filled.
    nf = lines.index('\\- a list item')
    assert '.nf' in lines[nf - 2:nf] and lines[nf + 2] == '.fi'
    see = lines.index('.SH SEE ALSO')
    assert lines[see + 1] == 'qmail\\-send(8), qmail\\-log(5).'
    assert lines.index('.SH DESCRIPTION') < lines.index('.B Runs as') < see


def test_user_commands_are_section_1():
    assert manpage.section_of('maildirmake') == '1'
    assert manpage.section_of('forward') == '1'
    assert manpage.section_of('qmail-smtpd') == '8'
    assert manpage.section_of('sendmail') == '8'
    assert manpage.section_of('checkpassword') == '8'    # root's, run by qmail-popup


def test_usage_from_the_usage_constant():
    src = "'''x: y.'''\nA = 1\nUSAGE = (b'maildirmake: usage: '\n         b'maildirmake name')\n"
    assert manpage.usage_of(src) == 'maildirmake name'
    assert manpage.usage_of(ast.parse(src)) == 'maildirmake name'   # parsed once
    assert manpage.usage_of("USAGE = 'usage: qmail-x add n\\n       qmail-x del n'\n") == \
        'qmail-x add n\n       qmail-x del n'
    assert manpage.usage_of("USAGE = 3\n") is None
    assert manpage.usage_of("X = b'usage: no'\n") is None
    text = manpage.page('maildirmake', 'maildirmake: make one.\n', usage='maildirmake name')
    assert '.SH SYNOPSIS\n.nf\nmaildirmake name\n.fi\n' in text


def test_control_page_has_every_file_of_the_readme():
    readme = open(os.path.join(ROOT, 'control', 'README')).read()
    text = manpage.control_page(readme, date='2026-11-27')
    from qmail.lib.ctltable import CONTROLS
    for entry in CONTROLS:
        assert '.B %s\n' % manpage.escape(entry[0]) in text, entry[0]
    # A default with a single space in it stays whole.
    assert 'Default: me, else "bouncehost".  Read by qmail\\-send.' in text
    assert 'Default: 20.  Read by qmail\\-send.' in text    # concurrencyremote 20
    assert 'Control files\n' not in text and '=====' not in text


def test_pages_render_without_warnings(tmp_path):
    from qmail.install import CHECKERS, PROGRAMS
    pages = []
    for name, module in [(p[0], p[1]) for p in PROGRAMS] + [(c[0], c[1]) for c in CHECKERS]:
        src = open(os.path.join(ROOT, 'qmail', module + '.py')).read()
        doc = ast.get_docstring(ast.parse(src), clean=False)
        assert doc and doc.startswith(name + ': '), name
        pages.append(manpage.page(name, doc, usage=manpage.usage_of(src)))
    pages.append(manpage.control_page(open(os.path.join(ROOT, 'control', 'README')).read()))
    written = os.listdir(os.path.join(ROOT, 'qmail', 'man'))
    assert 'dot-qmail.5' in written
    for name in written:
        pages.append(open(os.path.join(ROOT, 'qmail', 'man', name)).read())
    for i, text in enumerate(pages):
        path = tmp_path / ('p%d.8' % i)
        path.write_text(text)
        r = subprocess.run(['groff', '-man', '-Tutf8', '-ww', '-z', str(path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == '', (text[:200], r.stderr)


def test_a_paragraph_that_opens_like_a_field_stays_a_paragraph():
    """"The design: ..." wrapped at the margin is prose, not a field
    whose text then broke off into a paragraph of its own."""
    doc = ("qmail-x: y.\n\nRuns as:  qmaild.\n\nThe design: a Session is fed\n"
           "bytes and answers.\n\nAdded:   a field\n         goes on indented.\n")
    name, summary, parts = manpage.parse(doc)
    assert [label for label, _ in parts] == ['Runs as', None, 'Added']
    assert parts[1][1] == ['The design: a Session is fed', 'bytes and answers.']


def test_see_also_names_qmails_page_where_it_names_this_one():
    text = manpage.page('qmail-thing', DOC, date='2026-11-27')
    see = text.split('.SH SEE ALSO\n')[1]
    assert see.startswith("qmail's qmail\\-send(8)") is False
    text = manpage.page('qmail-send', DOC.replace('qmail-thing', 'qmail-send'))
    see = text.split('.SH SEE ALSO\n')[1]
    assert see.startswith("qmail's qmail\\-send(8), qmail\\-log(5).")


def test_crashtest_names_every_scenario():
    from qmail import crashtest, crashtest_scenarios
    doc = ' '.join(crashtest.__doc__.split())
    for scenario in crashtest_scenarios.SCENARIOS:
        assert ' %s ' % scenario.name in doc or ' %s (' % scenario.name in doc, scenario.name


HAND_WRITTEN = ('addresses.5', 'dot-qmail.5', 'envelopes.5', 'maildir.5', 'mbox.5',
                'qmail-command.8', 'qmail-header.5', 'qmail-log.5', 'qmail-users.5',
                'tcp-environ.5')


def test_hand_written_pages_have_their_name_and_render_without_warnings():
    """Each page of qmail/man, which install_man copies into
    HOME/man/man<section>/, opens with its own .TH and a NAME line that
    whatis and apropos read, and renders without a groff warning."""
    mandir = os.path.join(ROOT, 'qmail', 'man')
    names = sorted(os.listdir(mandir))
    for expected in HAND_WRITTEN:
        assert expected in names, expected
    for name in names:
        page, _, section = name.rpartition('.')
        assert page and section.isdigit(), name
        path = os.path.join(mandir, name)
        lines = open(path, encoding='utf-8').read().split('\n')
        assert lines[0].startswith('.TH %s %s ' % (manpage.escape(page).upper(), section)), name
        assert '.SH NAME' in lines, name
        summary = lines[lines.index('.SH NAME') + 1]
        assert summary.startswith(manpage.escape(page) + ' \\- ') and len(summary) > 20, name
        assert '.SH "SEE ALSO"' in lines, name
        r = subprocess.run(['groff', '-man', '-Tutf8', '-ww', '-z', path],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == '', (name, r.stderr)


def test_hand_written_pages_cite_pages_that_are_installed():
    """A format page (section 5, or any qmail page that is no program's)
    named in SEE ALSO is one qmail-install writes, and a program is named
    in the section its page is filed in."""
    import re
    from qmail.install import CHECKERS, PROGRAMS
    mandir = os.path.join(ROOT, 'qmail', 'man')
    written = set(os.listdir(mandir))
    programs = {p[0] for p in PROGRAMS} | {c[0] for c in CHECKERS} | {'qmail-queue'}
    for name in sorted(written):
        text = open(os.path.join(mandir, name), encoding='utf-8').read()
        see = text.split('.SH "SEE ALSO"\n', 1)[1].replace('\\-', '-')
        for ref, section in re.findall(r'([a-z][a-z0-9-]*)\((\d)\)', see):
            if ref in programs:
                assert section == manpage.section_of(ref), (name, ref, section)
            elif section == '5' or ref.startswith('qmail'):
                assert (ref, section) in (('qmail-control', '5'), ('qmail', '7')) \
                    or '%s.%s' % (ref, section) in written, (name, ref, section)


def test_index_lists_the_hand_written_pages_with_their_summaries():
    """qmail(7) names every page, not the programs only: the formats of
    qmail/man, each with the summary from its NAME line."""
    mandir = os.path.join(ROOT, 'qmail', 'man')
    others = []
    for name in sorted(os.listdir(mandir)):
        with open(os.path.join(mandir, name), encoding='utf-8') as f:
            others.append((name.rpartition('.')[0], name.rpartition('.')[2],
                           manpage.summary_of(f.read())))
    expect = dict((n, s) for n, _, s in others)
    assert all(s and '\\' not in s for s in expect.values()), expect
    assert manpage.summary_of('.TH DOT-QMAIL 5\n.SH NAME\ndot\\-qmail \\- the files\n') \
        == 'the files'
    assert manpage.summary_of('.SH NAME\nx \\- the \\fBdot\\fR\\-qmail\\(aqs \\f(CWfiles\\fP\n') \
        == "the dot-qmail's files"
    assert '.TP\nx(5)\nx\n' in manpage.index_page([], [('x', '5', '')])   # no summary: its name
    page = manpage.index_page([('qmail-send', 'schedules deliveries')], others)
    assert '.SH "FILES AND FORMATS"' in page
    for name, section, _ in others:
        assert '%s(%s)' % (manpage.escape(name), section) in page, name
