"""qmail's quote.c: a box (local part) quoted for RFC 821/822 only when
it must be, with as little quoting as possible.

Used wherever an address is written into a header or an SMTP command:
qmail-inject, qmail-local's Return-Path, qmail-send's bounces,
qmail-remote's MAIL FROM and RCPT TO.
"""

# Bytes a box may hold unquoted: printable ASCII except space and
# "(),:;<>@[\] (quote.c's table); bytes above 127 always need quotes.
OK = frozenset(c for c in range(33, 127) if c not in b'"(),:;<>@[\\]')


def quote_need(box: bytes) -> bool:
    """Whether box must be quoted: empty, a byte outside OK, or dots at
    either end or doubled."""
    if not box:
        return True
    for c in box:
        if c not in OK:
            return True
    return box.startswith(b'.') or box.endswith(b'.') or b'..' in box


def quote(box: bytes) -> bytes:
    """box, in quotes with CR, LF, " and \\ escaped if it needs them."""
    if not quote_need(box):
        return box
    out = bytearray(b'"')
    for c in box:
        if c in b'\r\n"\\':
            out += b'\\'
        out.append(c)
    out += b'"'
    return bytes(out)


def quote2(address: bytes) -> bytes:
    """An address with its box (before the last @) quoted as needed, the
    domain as it is; the empty address stays empty."""
    if not address:
        return address
    at = address.rfind(b'@')
    if at < 0:
        return quote(address)
    return quote(address[:at]) + address[at:]
