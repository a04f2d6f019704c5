"""qmail/inject_token.py: RFC 822 tokens and address rewriting (token822).

Expected values were checked against notqmail's qmail-inject.
"""

import pytest
from hypothesis import given, settings, strategies as st

from qmail.inject_token import (
    AT, ATOM, COLON, COMMA, COMMENT, DOT, LEFT, LITERAL, QUOTE, RIGHT, SEMI,
    ParseError, Rules, addrlist, parse, quote, quote2, quote_need,
    rewrite_address, rewrite_field, rwgeneric, unparse, unquote,
)

RULES = Rules(b'mail', b'example.org', b'plus.example.org')


# ---------------------------------------------------------------- parse

@pytest.mark.parametrize('text, want', [
    (b'', []),
    (b'  \t\r\n', []),
    (b'a@b.c', [(ATOM, b'a'), (AT, b''), (ATOM, b'b'), (DOT, b''),
                (ATOM, b'c')]),
    (b',<>:;', [(COMMA, b''), (LEFT, b''), (RIGHT, b''), (COLON, b''),
                (SEMI, b'')]),
    (b'"a b"', [(QUOTE, b'a b')]),
    (b'"a\\"b\\\\c"', [(QUOTE, b'a"b\\c')]),
    (b'"a(b)c"', [(QUOTE, b'a(b)c')]),
    (b'(hi there)', [(COMMENT, b'hi there')]),
    # nested parentheses are counted, not kept; quoted ones are kept
    (b'(a (b) c)', [(COMMENT, b'a b c')]),
    (b'(a \\( b)', [(COMMENT, b'a ( b')]),
    (b'[1.2.3.4]', [(LITERAL, b'1.2.3.4')]),
    (b'[a\\]b]', [(LITERAL, b'a]b')]),
    (b'[]', [(LITERAL, b'')]),
    # a quoted-pair makes a special an atom byte
    (b'a\\@b', [(ATOM, b'a@b')]),
    (b'\\@', [(ATOM, b'@')]),
    # a trailing backslash is dropped
    (b'ab\\', [(ATOM, b'ab')]),
    (b'\\', [(ATOM, b'')]),
    # ) and ] may sit inside an atom, which then needs quoting
    (b'a)b', [(QUOTE, b'a)b')]),
    (b'a]b', [(QUOTE, b'a]b')]),
    (b'\xe9t\xe9', [(QUOTE, b'\xe9t\xe9')]),
    (b'a\x01b', [(QUOTE, b'a\x01b')]),
    (b'a\0b', [(QUOTE, b'a\0b')]),
    (b'a(c)b', [(ATOM, b'a'), (COMMENT, b'c'), (ATOM, b'b')]),
    (b'a"q"b', [(ATOM, b'a'), (QUOTE, b'q'), (ATOM, b'b')]),
    (b'a+b-c#d', [(ATOM, b'a+b-c#d')]),
])
def test_parse(text, want):
    got = parse(text)
    assert got == want, f'parse({text!r}): got {got!r}, want {want!r}'


@pytest.mark.parametrize('text', [
    b'"unbalanced',
    b'(unbalanced',
    b'((a)',
    b'[unbalanced',
    b')',
    b'a ]',
    b'"a\\',
    b'(a\\',
    b'[a\\',
    b'To: "x@y',
    b'From: me (Me',
])
def test_parse_error(text):
    with pytest.raises(ParseError) as info:
        parse(text)
    assert info.value.line == text, (
        f'ParseError line: got {info.value.line!r}, want {text!r}')


# ---------------------------------------------------------------- unparse

@pytest.mark.parametrize('tokens, want', [
    ([], b'\n'),
    ([(ATOM, b'To'), (COLON, b'')], b'To:\n'),
    ([(ATOM, b'To'), (COLON, b''), (ATOM, b'a'), (AT, b''), (ATOM, b'b')],
     b'To: a@b\n'),
    ([(ATOM, b'To'), (COLON, b''), (QUOTE, b'N'), (LEFT, b''), (ATOM, b'a'),
      (RIGHT, b''), (COMMENT, b'c')], b'To: "N" <a>(c)\n'),
    ([(ATOM, b'To'), (COLON, b''), (ATOM, b'a'), (COMMA, b''),
      (ATOM, b'b')], b'To: a, b\n'),
    ([(ATOM, b'X'), (COLON, b''), (QUOTE, b'a"b\\c\rd\ne(f)')],
     b'X: "a\\"b\\\\c\\\rd\\\ne\\(f\\)"\n'),
    ([(ATOM, b'X'), (COLON, b''), (LITERAL, b'1.2')], b'X: [1.2]\n'),
    ([(ATOM, b'X'), (COLON, b''), (ATOM, b'g'), (COLON, b''), (SEMI, b'')],
     b'X: g: ;\n'),
])
def test_unparse(tokens, want):
    got = unparse(tokens)
    assert got == want, f'unparse: got {got!r}, want {want!r}'


def test_unparse_folds_after_commas():
    words = [b'abcdefghij%02d@example.org' % i for i in range(8)]
    field = b'To: ' + b', '.join(words) + b'\n'
    got, _ = rewrite_field(field, RULES)
    want = (b'To: abcdefghij00@example.org, abcdefghij01@example.org,\n'
            b'  abcdefghij02@example.org, abcdefghij03@example.org,\n'
            b'  abcdefghij04@example.org, abcdefghij05@example.org,\n'
            b'  abcdefghij06@example.org, abcdefghij07@example.org\n')
    assert got == want, f'got {got!r}, want {want!r}'
    for line in got.split(b'\n'):
        assert len(line) <= 80, f'line too long: {line!r}'


def test_unparse_keeps_a_long_address_whole():
    long = b'x' * 100 + b'@example.org'
    got, _ = rewrite_field(b'To: a@b.c, ' + long + b', d@e.f\n', RULES)
    want = b'To: a@b.c,\n  ' + long + b',\n  d@e.f\n'
    assert got == want, f'got {got!r}, want {want!r}'


def test_unparse_linelen_zero_never_folds():
    tokens = parse(b'To: ' + b', '.join([b'a' * 30] * 10))
    got = unparse(tokens, 0)
    assert b'\n' not in got[:-1], f'got {got!r}'


# ---------------------------------------------------------------- unquote

@pytest.mark.parametrize('text, want', [
    (b'"a b"@c.d', b'a b@c.d'),
    (b'a (comment) @ b', b'a@b'),
    (b'x@[1.2.3.4]', b'x@[1.2.3.4]'),
    (b'<a@b>', b'<a@b>'),
])
def test_unquote(text, want):
    got = unquote(parse(text))
    assert got == want, f'unquote({text!r}): got {got!r}, want {want!r}'


# ---------------------------------------------------------------- quoting

@pytest.mark.parametrize('box, want', [
    (b'', True),
    (b'djb', False),
    (b'a.b', False),
    (b'a+b-c=d/e?f', False),
    (b'.a', True),
    (b'a.', True),
    (b'a..b', True),
    (b'a b', True),
    (b'a@b', True),
    (b'a"b', True),
    (b'a\\b', True),
    (b'a\x7f', True),
    (b'\xe9', True),
    (b'a\0b', True),
])
def test_quote_need(box, want):
    got = quote_need(box)
    assert got == want, f'quote_need({box!r}): got {got}, want {want}'


@pytest.mark.parametrize('address, want', [
    (b'', b''),
    (b'djb@example.org', b'djb@example.org'),
    (b'a b@c', b'"a b"@c'),
    (b'a"q@c', b'"a\\"q"@c'),
    (b'a@b@c', b'"a@b"@c'),
    (b'nohost', b'nohost'),
    (b'no host', b'"no host"'),
    (b'@c', b'""@c'),
    (b'x-@y-@[]', b'"x-@y-"@[]'),
])
def test_quote2(address, want):
    got = quote2(address)
    assert got == want, f'quote2({address!r}): got {got!r}, want {want!r}'


def test_quote_escapes():
    got = quote(b'a\r\n"\\')
    want = b'"a\\\r\\\n\\"\\\\"'
    assert got == want, f'got {got!r}, want {want!r}'


# ---------------------------------------------------------------- rewriting

@pytest.mark.parametrize('address, want', [
    (b'djb', b'djb@mail.example.org'),
    (b'djb@silverton', b'djb@silverton.example.org'),
    (b'djb@silverton.berkeley.edu', b'djb@silverton.berkeley.edu'),
    (b'eric@mammoth.cs+', b'eric@mammoth.cs.plus.example.org'),
    (b'eric@mammoth+', b'eric@mammoth.plus.example.org'),
    (b'djb@[128.32.183.163]', b'djb@[128.32.183.163]'),
    (b'<@a,@b:x@y.z>'[1:-1], b'x@y.z'),
    (b'@a:x', b'x@mail.example.org'),
    (b'@a', b''),
    (b'x@y.', b'x@y.example.org'),
    (b'x@', b'x@mail.example.org'),
    (b'#@[]', b'#@[]'),
    (b'x-@y-@[]', b'x-@y-@[]'),
    (b'', b''),
    (b'user+', b'user+@mail.example.org'),
])
def test_rwgeneric(address, want):
    got = unquote(rwgeneric(parse(address), RULES))
    assert got == want, f'rwgeneric({address!r}): got {got!r}, want {want!r}'


def test_rwgeneric_long_source_route():
    """A route of 300,000 hops is cut in one step (the token-by-token
    removal took the square of its length: minutes here).  An alarm
    fails the test long before that, with a margin no machine needs."""
    import signal

    def too_slow(signum, frame):
        raise AssertionError('source route removal too slow: quadratic?')
    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(30)
    try:
        route = parse(b'@r,' * 300000 + b'@r:x@y.z')
        got = unquote(rwgeneric(route, RULES))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert got == b'x@y.z', got[:80]


def test_rwgeneric_defaulthost_rules():
    rules = Rules(b'host+', b'dom.ain', b'plus.dom')
    got = unquote(rwgeneric(parse(b'u'), rules))
    assert got == b'u@host.plus.dom', f'got {got!r}'
    rules = Rules(b'host', b'dom.ain', b'plus.dom')
    got = unquote(rwgeneric(parse(b'u'), rules))
    assert got == b'u@host.dom.ain', f'got {got!r}'


@pytest.mark.parametrize('field, want, addresses', [
    # qmail-header(5): illegal spaces become commas
    (b'To: djb fred\n', b'To: djb@mail.example.org, fred@mail.example.org\n',
     [b'fred@mail.example.org', b'djb@mail.example.org']),
    (b'To: a@b.c (A Person), "The Almighty".One@heaven.af.mil\n',
     b'To: a@b.c (A Person), "The Almighty".One@heaven.af.mil\n',
     [b'The Almighty.One@heaven.af.mil', b'a@b.c']),
    (b'To: A Person <e@f>\n', b'To: A Person <e@f.example.org>\n',
     [b'e@f.example.org']),
    (b'To: random group: g@h, i@j;, k@l\n',
     b'To: random group: g@h.example.org, i@j.example.org;, '
     b'k@l.example.org\n',
     [b'k@l.example.org', b'i@j.example.org', b'g@h.example.org']),
    (b'To: g: a, b; c\n',
     b'To: g: a@mail.example.org, b@mail.example.org;, c@mail.example.org\n',
     [b'c@mail.example.org', b'b@mail.example.org', b'a@mail.example.org']),
    (b'Cc: recipient list not shown: ;\n',
     b'Cc: recipient list not shown: ;\n', []),
    (b'To: <@brl.mil:"a\\"quote"@heaven.af.mil>\n',
     b'To: <"a\\"quote"@heaven.af.mil>\n', [b'a"quote@heaven.af.mil']),
    (b'To: < "God"@heaven .af.mil>,\n  "a\\"quote" (Who?) @ heaven . af.  mil'
     b'\n  , God<"The Almighty.One"@heaven.af.mil>\n',
     b'To: <"God"@heaven.af.mil>, "a\\"quote"@heaven.af.mil (Who?),\n'
     b'  God <"The Almighty.One"@heaven.af.mil>\n',
     [b'The Almighty.One@heaven.af.mil', b'a"quote@heaven.af.mil',
      b'God@heaven.af.mil']),
    (b'To: a (c) @ b\n', b'To: a@b.example.org (c)\n', [b'a@b.example.org']),
    (b'To: Name <>\n', b'To: Name <>\n', [b'']),
    (b'To: <@foo:>\n', b'To: <>\n', [b'']),
    (b'TO :x\n', b'TO: x@mail.example.org\n', [b'x@mail.example.org']),
    (b'To:\n', b'To:\n', []),
    (b'To: eric@mammoth.cs+\n', b'To: eric@mammoth.cs.plus.example.org\n',
     [b'eric@mammoth.cs.plus.example.org']),
    (b'To: x@[1.2.3.4], y@z.\n', b'To: x@[1.2.3.4], y@z.example.org\n',
     [b'y@z.example.org', b'x@[1.2.3.4]']),
    (b'To: a\\@b@c\n', b'To: a@b@c.example.org\n', [b'a@b@c.example.org']),
    (b'To: a)b@c\n', b'To: "a\\)b"@c.example.org\n', [b'a)b@c.example.org']),
    # an unmatched < is just part of an address
    (b'To: a, b <c\n', b'To: a@mail.example.org, b <c@mail.example.org\n',
     [b'b<c@mail.example.org', b'a@mail.example.org']),
])
def test_rewrite_field(field, want, addresses):
    got, found = rewrite_field(field, RULES)
    assert got == want, f'text of {field!r}: got {got!r}, want {want!r}'
    assert found == addresses, (
        f'addresses of {field!r}: got {found!r}, want {addresses!r}')


@pytest.mark.parametrize('field, partial', [
    (b'To: "unbalanced\n', []),
    (b'To: (unbalanced\n', []),
    (b'To: [unbalanced\n', []),
    (b'To: )a\n', []),
    # right to left: the list is broken at the left end, after the
    # callback saw what lay to the right
    (b'To: a, b>\n', [b'a,b@mail.example.org']),
    (b'To: a;;\n', []),
    (b'To: a: b\n', [b'b@mail.example.org']),
    (b'To: x@y, g: a\n', [b'a@mail.example.org']),
])
def test_rewrite_field_errors(field, partial):
    with pytest.raises(ParseError) as info:
        rewrite_field(field, RULES)
    got = info.value
    assert got.line == field, f'line: got {got.line!r}, want {field!r}'
    assert got.addresses == partial, (
        f'partial addresses: got {got.addresses!r}, want {partial!r}')


def test_addrlist_callback_sees_left_to_right_addresses():
    seen = []

    def callback(addr):
        seen.append(unquote(addr))
        return addr

    out = addrlist(parse(b'To: a@b, "c d"@e, <f@g>'), callback)
    assert seen == [b'f@g', b'c d@e', b'a@b'], f'got {seen!r}'
    assert unparse(out) == b'To: a@b, "c d"@e, <f@g>\n', f'got {out!r}'


@pytest.mark.parametrize('address, want', [
    (b'fred', b'fred@mail.example.org'),
    (b'a b@c', b'a b@c.example.org'),
    (b'x@y.z', b'x@y.z'),
    (b'', b''),
    # an argument is one address: its box is quoted as a whole
    (b'a, b', b'a, b@mail.example.org'),
])
def test_rewrite_address(address, want):
    got = rewrite_address(address, RULES)
    assert got == want, f'{address!r}: got {got!r}, want {want!r}'


def test_rewrite_address_error_shows_quoted_text():
    with pytest.raises(ParseError) as info:
        rewrite_address(b'x y@(z', RULES)
    assert info.value.line == b'"x y"@(z', f'got {info.value.line!r}'


def test_rules_error():
    with pytest.raises(ParseError) as info:
        Rules(b'host(', b'dom', b'plus')
    assert info.value.line == b'@host(', f'got {info.value.line!r}'


def test_ten_thousand_addresses():
    addrs = [b'user%d@host%d.example.com' % (i, i) for i in range(10000)]
    text, found = rewrite_field(b'To: ' + b', '.join(addrs) + b'\n', RULES)
    assert found == addrs[::-1], 'addresses differ'
    assert max(len(line) for line in text.split(b'\n')) <= 80


def test_one_megabyte_address():
    box = b'a' * (1 << 20)
    text, found = rewrite_field(b'To: ' + box + b'@b.c\n', RULES)
    assert found == [box + b'@b.c'], 'address differs'
    assert text == b'To: ' + box + b'@b.c\n', 'text differs'


# ---------------------------------------------------------------- properties

_PIECES = st.sampled_from([
    b'a', b'x.y', b'@', b'.', b',', b' ', b'\t', b'\n ', b'<', b'>', b':',
    b';', b'"', b'(', b')', b'[', b']', b'\\', b'"q"', b'(c)', b'[1.2]',
    b'+', b'\xe9', b'\0', b'\r',
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=30).map(b''.join))
def test_rewrite_field_never_crashes(value):
    field = b'To: ' + value + b'\n'
    try:
        text, found = rewrite_field(field, RULES)
    except ParseError as err:
        assert err.line == field
        return
    assert text.endswith(b'\n')
    assert all(isinstance(a, bytes) for a in found)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=30).map(b''.join))
def test_rewritten_field_parses_again(value):
    # What qmail-inject writes can be fed to it again without a crash.
    try:
        text, found = rewrite_field(b'To: ' + value + b'\n', RULES)
    except ParseError:
        return
    try:
        again, found2 = rewrite_field(text, RULES)
    except ParseError:
        return          # e.g. a lone < ... > pairing changed; not a crash
    assert isinstance(again, bytes) and isinstance(found2, list)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_parse_any_bytes(data):
    try:
        tokens = parse(data)
    except ParseError:
        return
    assert all(isinstance(v, bytes) for _, v in tokens)
