"""Manual pages from the programs' own descriptions.

Each program's module opens with its description: a first paragraph
"name: what it does", then fields such as "Usage:", "Runs as:",
"Reads:", "Writes:", "Exits:", "See:" (the label at the start of a
line, its text indented under it), then free paragraphs.  page() turns
that into a man(7) page, so that `man qmail-send` shows what the code
says it does, and cannot drift from it.  control_page() does the same
for control/README (qmail-control(5)), index_page() lists every program
(qmail(7)).  Pure text in, text out: qmail-install writes the files.
"""

import ast
import datetime
import re

# A field's label: a capitalised word or few at the start of a line,
# a colon, then its text.  (Free paragraphs that open with a phrase and
# a colon have digits, commas or dots in the phrase, or are longer.)
FIELD = re.compile(r'^([A-Z][A-Za-z -]{0,18}[a-z]):( +)(\S.*)$')
SECTION_1 = frozenset((     # user commands, as qmail files them
    'forward', 'condredirect', 'bouncesaying', 'except', 'preline',
    'maildirmake', 'maildir2mbox', 'maildirwatch', 'qreceipt', 'qbiff',
    'predate', 'datemail', 'mailsubj', 'tcp-env', 'srsfilter'))
SOURCE = 'qmail-py'
MANUAL = 'qmail'


def section_of(name: str) -> str:
    return '1' if name in SECTION_1 else '8'


def escape(text: str) -> str:
    """Text safe on a roff line: backslashes and minus signs escaped,
    a leading dot or quote made literal."""
    text = text.replace('\\', '\\e').replace('-', '\\-')
    if text.startswith(('.', "'")):
        text = '\\&' + text
    return text


def blocks(lines):
    """Split lines into blocks at blank lines."""
    block = []
    for line in lines:
        if line.strip():
            block.append(line.rstrip())
        elif block:
            yield block
            block = []
    if block:
        yield block


def dedent(lines):
    indent = min(len(l) - len(l.lstrip()) for l in lines if l.strip())
    return [l[indent:] for l in lines]


def is_layout(lines) -> bool:
    """Lines whose arrangement carries meaning (a list, a table, a
    usage line, an indented example): shown as written, not filled."""
    for l in lines:
        if l[:1] in (' ', '\t') or l.lstrip().startswith(('- ', '* ', '$ ', '#')):
            return True
        if re.search(r'\S {3,}\S', l.strip()):
            return True
    return False


def text(lines):
    """roff for a block of lines: filled, or as written."""
    lines = dedent(lines)
    if is_layout(lines):
        return ['.nf'] + [escape(l) if l.strip() else '' for l in lines] + ['.fi']
    # One source line per roff line: filled all the same, and a sentence
    # that ends a line keeps its two spaces.
    return [escape(l.strip()) for l in lines]


def parse(doc: str):
    """(name, summary, parts) of a description: parts is [(label,
    lines)] in their order, label None for a free paragraph."""
    lines = doc.expandtabs().strip('\n').split('\n')
    first = []
    while lines and lines[0].strip():
        first.append(lines.pop(0).strip())
    head = ' '.join(first)
    name, _, summary = head.partition(': ')
    parts = []
    for block in blocks(lines):
        current = None
        prose = not any(l[:1] == ' ' for l in block[1:]) and any(
            not FIELD.match(l) for l in block[1:])
        for line in block:
            # A block that opens like a field but goes on unindented is
            # prose ("The design: ..." wrapped at the margin).
            m = None if prose else FIELD.match(line)
            if m:
                current = (m.group(1), [' ' * (len(m.group(1)) + 1 + len(m.group(2)))
                                        + m.group(3)])
                parts.append(current)
            elif current is not None and line[:1] == ' ':
                current[1].append(line)
            else:
                if current is None or current[0] is not None:
                    current = (None, [])
                    parts.append(current)
                current[1].append(line)
        # A field ends with its block; the next line of text starts afresh.
    return name.strip(), summary.strip().rstrip('.'), parts


def header(name: str, section: str, date: str) -> list:
    return ['.TH %s %s "%s" "%s" "%s"' % (
        name.upper().replace('-', '\\-'), section, date, SOURCE, MANUAL)]


def usage_of(source):
    """The usage text a module gives on a bad command line (its USAGE
    constant, "name: usage: ..." or "usage: ..."), without the prefix;
    None if it has none.  source: the module's text, or its ast.Module
    when the caller has parsed it already."""
    tree = source if isinstance(source, ast.Module) else ast.parse(source)
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == 'USAGE'
                and isinstance(node.value, ast.Constant)):
            value = node.value.value
            if isinstance(value, bytes):
                value = value.decode('utf-8', 'replace')
            if not isinstance(value, str) or 'usage: ' not in value:
                return None
            return value.split('usage: ', 1)[1].strip()
    return None


def page(program: str, doc: str, date: str = None, usage: str = None) -> str:
    """The man page of program (its name in bin/) from its description;
    usage: the synopsis when the description has no Usage field."""
    date = date or datetime.date.today().isoformat()
    section = section_of(program)
    name, summary, parts = parse(doc)
    out = header(program, section, date)
    out += ['.SH NAME', '%s \\- %s' % (escape(program), escape(summary))]
    field = [p for p in parts if p[0] == 'Usage']
    see = [p for p in parts if p[0] == 'See']
    out.append('.SH SYNOPSIS')
    if field:
        out.append('.nf')
        for l in dedent(field[0][1]):
            out.append(escape(l))
        out.append('.fi')
    elif usage:
        out.append('.nf')
        out += [escape(l.strip()) for l in usage.split('\n') if l.strip()]
        out.append('.fi')
    else:
        out.append('.B %s' % escape(program))
    out.append('.SH DESCRIPTION')
    for label, lines in parts:
        if label in ('Usage', 'See'):
            continue
        if label is None:
            out.append('.PP')
            out += text(lines)
        else:
            out += ['.TP 10', '.B %s' % escape(label)]
            out += text(lines)
    out += ['.SH NOTES',
            'This page is the description that opens the program\'s module '
            '(qmail/%s.py in the home\'s lib/python).  Where it is silent, the '
            'program does what qmail\'s manual page of the same name says (in the '
            'sources of qmail and notqmail; not installed here).  Pages named in '
            'SEE ALSO that this home does not have are qmail\'s too.'
            % escape(module_hint(program))]
    if see:
        # Its own name there is qmail's page of that name.
        own = re.compile(r'(?<![\w-])%s\(%s\)' % (re.escape(program), section))
        out.append('.SH SEE ALSO')
        out += text([own.sub("qmail's " + program + '(' + section + ')', l)
                     for l in see[0][1]])
    return '\n'.join(out) + '\n'


def module_hint(program: str) -> str:
    name = program[len('qmail-'):] if program.startswith('qmail-') else program
    name = name.replace('-', '_')
    return 'except_' if name == 'except' else name


def control_page(readme: str, date: str = None) -> str:
    """qmail-control(5) from control/README: its opening paragraphs,
    then one entry per file of its table (name, default, readers, and
    the indented lines under the row: what the file does)."""
    date = date or datetime.date.today().isoformat()
    out = header('qmail-control', '5', date)
    out += ['.SH NAME', 'qmail\\-control \\- the control files of qmail',
            '.SH DESCRIPTION']
    lines = readme.expandtabs().split('\n')
    rule = next((i for i, l in enumerate(lines) if l.startswith('----')), len(lines))
    intro = lines[:max(rule - 1, 0)]
    if len(intro) > 1 and intro[1].strip() and set(intro[1].strip()) <= set('='):
        intro = intro[2:]           # the title and its underline
    for block in blocks(intro):
        out.append('.PP')
        out += text(block)
    out.append('.SH FILES')
    entry = None
    for line in lines[rule + 1:]:
        if line.strip() and line[:1] != ' ':
            if entry is not None:
                out += entry_text(*entry)
            entry = (line, [])
        elif line.strip() and entry is not None:
            entry[1].append(line)
    if entry is not None:
        out += entry_text(*entry)
    out += ['.SH SEE ALSO', 'qmail\\-showctl(8), qmail(7)']
    return '\n'.join(out) + '\n'


def entry_text(row: str, lines) -> list:
    """One file of the table: "name default  readers" (the default may
    hold single spaces; two or more part the columns)."""
    name, _, rest = row.strip().partition(' ')
    cells = re.split(r' {2,}', rest.strip(), maxsplit=1)
    default = cells[0]
    readers = cells[1] if len(cells) > 1 else ''
    out = ['.TP', '.B %s' % escape(name),
           escape('Default: %s.' % default.rstrip('.')
                  + ('  Read by %s.' % readers.rstrip('.') if readers else ''))]
    if lines:
        out.append('.br')
        out += text(lines)
    return out


def unroff(text: str) -> str:
    """text with the roff escapes a NAME line may hold undone: fonts
    (\\fB, \\f(CW, \\f[I]) dropped, \\(em as --, \\(aq and \\(cq as ',
    \\- as -, \\e as \\, \\& as nothing."""
    text = re.sub(r'\\f(\[[^]]*\]|\(..|.)', '', text)
    text = text.replace('\\(em', '--').replace('\\(aq', "'").replace('\\(cq', "'")
    return re.sub(r'\\([-e&])', lambda m: {'-': '-', 'e': '\\', '&': ''}[m.group(1)], text)


def summary_of(roff: str) -> str:
    """The summary of a hand-written page: its NAME line after the dash
    ("name \\- summary"), with the roff escapes a NAME line may hold
    undone (fonts, dashes, quotes); '' if it has none."""
    lines = roff.split('\n')
    for i, line in enumerate(lines[:-1]):
        if line.strip() == '.SH NAME':
            return unroff(lines[i + 1].partition(' \\- ')[2].strip())
    return ''


def index_page(programs, others=(), date: str = None) -> str:
    """qmail(7): every program with its one-line summary and section,
    then the other pages (name, section, summary): the file formats."""
    date = date or datetime.date.today().isoformat()
    out = header('qmail', '7', date)
    out += ['.SH NAME', 'qmail \\- the qmail mail transfer agent, in Python',
            '.SH DESCRIPTION',
            'A qmail home holds these programs in its bin/ directory, each '
            'with its own manual page.  README.md of the source tells how to '
            'install, run and measure it, and where it differs from qmail.',
            '.SH PROGRAMS']
    for program, summary in programs:
        out += ['.TP', '%s(%s)' % (escape(program), section_of(program)),
                escape(summary)]
    if others:
        out += ['.SH "FILES AND FORMATS"']
        for name, section, summary in others:
            out += ['.TP', '%s(%s)' % (escape(name), section), escape(summary or name)]
    return '\n'.join(out) + '\n'
