"""RFC 822 tokens and address lists, as qmail-inject reads and rewrites them.

This is qmail's token822 and the address rewriting of qmail-inject(8),
kept apart from the program so that both can be tested without I/O.

Tokens:   (kind, value) pairs; value is bytes for ATOM, QUOTE, LITERAL and
          COMMENT (without quotes, brackets or parentheses, quoted-pairs
          resolved) and b'' for the punctuation . , @ < > : ;
Parsing:  parse() splits a header field into tokens; addrlist() walks an
          address list from right to left, as qmail does ("rfc 822 address
          lists are easy to parse from right to left"), handing every
          address to a callback that may rewrite it; unparse() writes the
          tokens back, folding long lists after commas.
Rewrites: qmail-header(5) "ADDRESS LISTS": source routes are stripped, a
          lone box gets @defaulthost, a host without dots gets
          .defaultdomain, a host ending in + gets the + replaced by
          .plusdomain.  <> and box@[] are left alone.
Errors:   ParseError, carrying the text that did not parse and the
          addresses the callback had already seen (qmail-inject keeps them
          when a recipient field is allowed to fail).
Order:    addresses are found right to left, and qmail-inject hands them
          to qmail-queue in that order; we keep it.
See:      qmail-header(5), addresses(5), qmail-inject(8).
"""

import re

from qmail.lib.quote import quote, quote2, quote_need  # noqa: F401  (inject's names)

# Token kinds, token822's numbering.
ATOM = 1
QUOTE = 2
LITERAL = 3
COMMENT = 4
LEFT = 5
RIGHT = 6
AT = 7
COMMA = 8
SEMI = 9
COLON = 10
DOT = 11

LINELEN = 80    # qmail-inject folds rewritten address lists near this width

_PUNCT = {
    ord('.'): DOT, ord(','): COMMA, ord('@'): AT, ord('<'): LEFT,
    ord('>'): RIGHT, ord(':'): COLON, ord(';'): SEMI,
}
_PUNCT_TEXT = {
    DOT: b'.', COMMA: b',', AT: b'@', LEFT: b'<', RIGHT: b'>',
    COLON: b':', SEMI: b';',
}
_WORDS = (ATOM, QUOTE, LITERAL, COMMENT)
_PHRASE = (COMMENT, ATOM, QUOTE, AT, DOT)   # what may precede <route-addr>

_COMMA_TOKEN = (COMMA, b'')

# One token (or a run of white space) at a position, comments apart.
# An atom starts with anything that is not white space, punctuation or
# one of ( ) [ ] " and goes on while the bytes are not white space,
# punctuation or one of ( [ " -- so ")" and "]" may sit inside an atom,
# which then is written out quoted.  A backslash quotes the next byte
# anywhere; a backslash at the very end of an atom is dropped.
_TOKEN = re.compile(rb'''
    (?P<space>[ \t\r\n]+)
  | (?P<punct>[.,@<>:;])
  | "(?P<quote>(?:[^"\\]++|\\.)*+)"
  | \[(?P<literal>(?:[^\]\\]++|\\.)*+)\]
  | (?P<atom>(?:[^.,@<>:;\ \t\r\n()\[\]"\\]|\\.|\\\Z)
             (?:[^.,@<>:;\ \t\r\n(\["\\]++|\\.|\\\Z)*+)
''', re.X | re.S)
_COMMENT_SPECIAL = re.compile(rb'[()\\]')
_UNESCAPE = re.compile(rb'\\(.?)', re.S)
_ATOM_BAD = re.compile(rb'[\x00-\x1f\x7f-\xff)\]\\]')
_ESCAPE = re.compile(rb'(["\[\]()\\\r\n])')


class ParseError(ValueError):
    """Text that is not an RFC 822 token sequence or address list.

    line: the text qmail-inject would show; addresses: envelope addresses
    the rewriting callback had already collected before the failure.
    """

    def __init__(self, line: bytes, addresses=None):
        super().__init__(line)
        self.line = line
        self.addresses = list(addresses or ())


# ---------------------------------------------------------------- tokens

def _unescape(value: bytes) -> bytes:
    if b'\\' not in value:
        return value
    return _UNESCAPE.sub(rb'\1', value)


def _comment(data: bytes, pos: int):
    """The comment opening at data[pos] == '(': (value, end).

    Nested parentheses count levels but are not kept in the value, as
    token822 does; quoted-pairs keep their byte.
    """
    level = 1
    parts = []
    i = pos + 1
    while level:
        m = _COMMENT_SPECIAL.search(data, i)
        if m is None:
            raise ParseError(data)
        k = m.start()
        parts.append(data[i:k])
        ch = data[k]
        if ch == 0x28:          # (
            level += 1
            i = k + 1
        elif ch == 0x29:        # )
            level -= 1
            i = k + 1
        else:                   # backslash
            if k + 1 >= len(data):
                raise ParseError(data)
            parts.append(data[k + 1:k + 2])
            i = k + 2
    return b''.join(parts), i


def parse(data: bytes) -> list:
    """Tokens of data; ParseError on an unbalanced quote, comment or
    domain literal, a stray ) or ], or a backslash ending one of those."""
    tokens = []
    pos = 0
    end = len(data)
    match = _TOKEN.match
    while pos < end:
        if data[pos] == 0x28:   # (
            value, pos = _comment(data, pos)
            tokens.append((COMMENT, value))
            continue
        m = match(data, pos)
        if m is None:
            raise ParseError(data)
        pos = m.end()
        kind = m.lastgroup
        if kind == 'space':
            continue
        if kind == 'punct':
            tokens.append((_PUNCT[data[m.start()]], b''))
        elif kind == 'quote':
            tokens.append((QUOTE, _unescape(m.group('quote'))))
        elif kind == 'literal':
            tokens.append((LITERAL, _unescape(m.group('literal'))))
        else:
            value = _unescape(m.group('atom'))
            # An atom that could not be written back as an atom is a quote.
            tokens.append((QUOTE if _ATOM_BAD.search(value) else ATOM, value))
    return tokens


def _needspace(last: int, new: int) -> bool:
    if not last:
        return False
    if last in (COLON, COMMA):
        return True
    if new == LEFT:
        return True
    return last in _WORDS and new in _WORDS


def _escaped(value: bytes) -> bytes:
    return _ESCAPE.sub(rb'\\\1', value)


_OPEN = {QUOTE: b'"', LITERAL: b'[', COMMENT: b'('}
_CLOSE = {QUOTE: b'"', LITERAL: b']', COMMENT: b')'}


def unparse(tokens, linelen: int = LINELEN) -> bytes:
    """Tokens as header text ending in a newline.

    Every comma is followed by a tentative line break; a break is taken
    back when the line holding it, joined with the next one up to the
    following comma, still fits in linelen (token822_unparse's rule, kept
    to the byte: the measure includes the two bytes of the break).
    Continuation lines start with two spaces.
    """
    out = bytearray()
    lineb = 0           # where the current output line starts
    linee = None        # the newline of the pending (tentative) break

    def tentative_break():
        nonlocal lineb, linee
        if linee is not None and (not linelen or len(out) - lineb <= linelen):
            del out[linee:linee + 2]
            linee = len(out)
        else:
            if linee is not None:
                lineb = linee + 1
            linee = len(out)
        out.extend(b'\n ')

    last = 0
    for kind, value in tokens:
        if _needspace(last, kind):
            out.append(0x20)
        last = kind
        if kind == COMMA:
            out.append(0x2c)
            tentative_break()
        elif kind in _PUNCT_TEXT:
            out += _PUNCT_TEXT[kind]
        else:
            if kind != ATOM:
                out += _OPEN[kind]
            out += _escaped(value)
            if kind != ATOM:
                out += _CLOSE[kind]
    tentative_break()
    del out[-1]
    return bytes(out)


def unquote(tokens) -> bytes:
    """Tokens as an envelope address: no quoting, no comments."""
    parts = []
    for kind, value in tokens:
        if kind in _PUNCT_TEXT:
            parts.append(_PUNCT_TEXT[kind])
        elif kind == LITERAL:
            parts.append(b'[' + value + b']')
        elif kind != COMMENT:
            parts.append(value)
    return b''.join(parts)


# ---------------------------------------------------------------- quoting

# quote_need, quote and quote2 are qmail.lib.quote's (imported above).


# ---------------------------------------------------------------- address lists

def addrlist(tokens, callback) -> list:
    """An address list rewritten, right to left, as token822_addrlist does.

    tokens is a whole header field; its first two tokens (field name and
    colon) are kept as they are.  callback(address tokens, left to right)
    returns the tokens to put in its place.  Words with no separator
    between them are taken as separate addresses and a comma is put in
    ("djb fred" -> "djb, fred"); comments are moved out of an address to
    follow it.  ParseError for a ; that opens a second group, a : outside
    a group, or a > with no <.
    """
    begin = 2
    out = []            # built right to left, reversed at the end
    addr = []           # the address being collected, right to left
    ingroup = False
    wordok = True
    i = len(tokens) - 1

    def gotaddr():
        new = callback(addr[::-1])
        out.extend(reversed(new))
        addr.clear()

    def flush(comma):
        if addr:
            gotaddr()
            if comma:
                out.append(_COMMA_TOKEN)

    while i >= begin:
        kind = tokens[i][0]
        if kind == SEMI:
            flush(True)
            if ingroup:
                raise ParseError(b'')
            ingroup = True
            wordok = True
            out.append(tokens[i])
            i -= 1
        elif kind == COLON:
            flush(False)
            if not ingroup:
                raise ParseError(b'')
            ingroup = False
            # The group's name, and the comma before it, pass unchanged.
            while i >= begin and tokens[i][0] != COMMA:
                out.append(tokens[i])
                i -= 1
            if i >= begin:
                out.append(tokens[i])
                i -= 1
            wordok = True
        elif kind == RIGHT:
            flush(True)
            out.append(tokens[i])
            i -= 1
            while i >= begin and tokens[i][0] != LEFT:
                addr.append(tokens[i])
                i -= 1
            gotaddr()   # even when empty: <> is an address
            if i < begin:
                raise ParseError(b'')
            out.append(tokens[i])
            i -= 1
            while i >= begin and tokens[i][0] in _PHRASE:
                out.append(tokens[i])
                i -= 1
            wordok = False
        elif kind in (ATOM, QUOTE, LITERAL):
            if not wordok:
                flush(True)
            wordok = False
            addr.append(tokens[i])
            i -= 1
        elif kind == COMMENT:
            # Lexically a space: it neither separates nor joins words.
            out.append(tokens[i])
            i -= 1
        elif kind == COMMA:
            flush(False)
            wordok = True
            out.append(tokens[i])
            i -= 1
        else:           # @ . and a < with no >
            wordok = True
            addr.append(tokens[i])
            i -= 1
    flush(False)
    out.extend(reversed(tokens[:begin]))
    out.reverse()
    return out


class Rules:
    """What qmail-inject appends to incomplete addresses, as tokens:
    defaulthost as '@' host, defaultdomain and plusdomain as '.' domain."""

    __slots__ = ('defaulthost', 'defaultdomain', 'plusdomain')

    def __init__(self, defaulthost: bytes, defaultdomain: bytes,
                 plusdomain: bytes):
        self.defaultdomain = parse(b'.' + defaultdomain)
        self.defaulthost = parse(b'@' + defaulthost)
        self.plusdomain = parse(b'.' + plusdomain)


def rwgeneric(addr: list, rules: Rules) -> list:
    """One address (tokens, left to right) completed per qmail-header(5)."""
    if not addr:
        return addr                     # <> stays <>
    if (len(addr) >= 2 and addr[-2][0] == AT and addr[-1][0] == LITERAL
            and not addr[-1][1]):
        return addr                     # box@[] stays, e.g. #@[]
    addr = list(addr)
    # Source route: <@a,@b:box@host> -> box@host.
    if addr[0][0] == AT:
        # (one slice: popping each token off the front costs the square
        # of the route's length, minutes for a 1 MB field)
        colon = next((i for i, (kind, _) in enumerate(addr) if kind == COLON), len(addr))
        addr = addr[colon + 1:]
        if not addr:
            return addr
    if addr[-1][0] == DOT:              # box@host. -> box@host
        addr.pop()
        if not addr:
            return addr
    if addr[-1][0] == AT:               # box@ -> box
        addr.pop()
        if not addr:
            return addr
    if not any(kind == AT for kind, _ in addr):
        addr.extend(rules.defaulthost)
    kind, value = addr[-1]
    if kind == ATOM and value.endswith(b'+'):
        addr[-1] = (ATOM, value[:-1])
        addr.extend(rules.plusdomain)
    # The domain part: the tokens after the last @.
    domain = []
    for token in reversed(addr):
        if token[0] == AT:
            break
        domain.append(token[0])
    if DOT not in domain and LITERAL not in domain:
        addr.extend(rules.defaultdomain)
    return addr


def rewrite_field(field: bytes, rules: Rules, linelen: int = LINELEN):
    """A header field holding an address list, as qmail-inject rewrites it.

    Returns (text, addresses): the field's new text, ending in a newline,
    and the envelope form of every address, right to left.  ParseError
    (line = field) if it is not an address list; its addresses are those
    found before the trouble.
    """
    found = []

    def rewrite(addr):
        addr = rwgeneric(addr, rules)
        found.append(unquote(addr))
        return addr

    try:
        tokens = parse(field)
        out = addrlist(tokens, rewrite)
    except ParseError:
        raise ParseError(field, found) from None
    return unparse(out, linelen), found


def rewrite_address(address: bytes, rules: Rules) -> bytes:
    """An address given as an argument (a recipient, or -f's sender):
    quoted as in an envelope, completed, back to envelope form."""
    tokens = parse(quote2(address))
    return unquote(rwgeneric(tokens, rules))
