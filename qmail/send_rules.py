"""qmail-send's decisions, as pure functions: no I/O, the time passed in.

Routing (rewrite), the VERP sender (senderadd), the retry schedule
(nextretry), and the text of bounces (bounce_entry, bounce_message).
"""

from qmail.lib.quote import quote, quote2

CHANNELS = 2                  # 0 local, 1 remote
CHANSKIP = (10, 20)           # per-channel retry skip: local retries sooner


class Routing:
    """The control files that route recipients (read by qmail-send)."""

    def __init__(self, locals_, vdoms, percenthack, envnoathost):
        self.locals = {d.lower() for d in locals_}
        self.percenthack = {d.lower() for d in percenthack}
        self.envnoathost = envnoathost
        self.vdoms = {}
        for line in vdoms:
            # "domain:prepend" or "user@domain:prepend"; the key may contain
            # no colon, the prepend may.  The last entry for a key wins,
            # as in qmail's constmap (each line goes in front of those
            # before it): an override appended to the file takes effect.
            key, sep, prepend = line.partition(b':')
            if sep:
                self.vdoms[key.lower()] = prepend


def rewrite(recip: bytes, r: Routing):
    """(channel, address) for one envelope recipient, qmail-send's rules:
    add @envnoathost; apply the percent hack; locals; then virtualdomains
    (user@domain, domain, .wildcard suffixes, the empty catch-all)."""
    addr = recip
    at = addr.rfind(b'@')
    if at == -1:
        addr = addr + b'@' + r.envnoathost
        at = addr.rfind(b'@')
    while addr[at + 1:].lower() in r.percenthack:
        pct = addr.rfind(b'%', 0, at)
        if pct == -1:
            break
        addr = addr[:pct] + b'@' + addr[pct + 1:at]
        at = pct
    at = addr.rfind(b'@')       # the domain follows the last '@', whichever made it
    domain = addr[at + 1:].lower()
    if domain in r.locals:
        return 0, addr
    lower = addr.lower()
    for i in range(len(addr) + 1):
        if i == 0 or i == at + 1 or i == len(addr) or (i > at and addr[i:i + 1] == b'.'):
            prepend = r.vdoms.get(lower[i:])
            if prepend is not None:
                if not prepend:
                    break              # an exception: not a virtual domain
                return 0, prepend + b'-' + addr
    return 1, addr


def stripvdomprepend(recip: bytes, r: Routing) -> bytes:
    """The address as the sender wrote it, for bounces: undo rewrite()'s
    virtual-domain prefix."""
    at = recip.rfind(b'@')
    if at == -1:
        return recip
    domain = recip[at + 1:]
    ldomain = domain.lower()
    for i in range(len(domain) + 1):
        if i == 0 or i == len(domain) or domain[i:i + 1] == b'.':
            prepend = r.vdoms.get(ldomain[i:])
            if prepend is not None:
                if not prepend:
                    break
                if recip[:len(prepend)] != prepend or recip[len(prepend):len(prepend) + 1] != b'-':
                    break
                return recip[len(prepend) + 1:]
    return recip


def senderadd(sender: bytes, recip: bytes) -> bytes:
    """The sender for one delivery: owner-@host-@[] becomes
    owner-recipbox=reciphost@host (VERP); anything else is unchanged."""
    if sender.endswith(b'-@[]'):
        j = sender.rfind(b'@', 0, len(sender) - 4)
        k = recip.rfind(b'@')
        if k != -1 and j != -1 and j + 5 <= len(sender):
            return (sender[:j] + recip[:k] + b'=' + recip[k + 1:] + b'@'
                    + sender[j + 1:len(sender) - 4])
    return sender


def isqrt(x: int) -> int:
    """The largest y with y*y <= x."""
    if x <= 0:
        return 0
    y = int(x ** 0.5)
    while y * y > x:
        y -= 1
    while (y + 1) * (y + 1) <= x:
        y += 1
    return y


def nextretry(birth: int, recent: int, channel: int) -> int:
    """When to try again: qmail's schedule, square root of the age plus
    the channel's skip, squared, after birth.  A birth still to come (the
    clock set back since the message came) counts from now: qmail counted
    from the birth, and the message waited as long as the clock went
    back, years for a machine that came up with its clock years ahead."""
    if birth > recent:
        return recent + CHANSKIP[channel] ** 2
    n = isqrt(recent - birth) + CHANSKIP[channel]
    return birth + n * n


_LOGSAFE = bytes(47 if c == 10 else 95 if c == 37 or c < 33 or c > 126 else c
                 for c in range(256))


def logsafe(text: bytes) -> str:
    """A peer-controlled string made safe for one log line: newlines
    become '/', spaces, controls, 8-bit bytes and '%' become '_'."""
    return text.translate(_LOGSAFE).decode('ascii')


def bounce_entry(recip: bytes, report: bytes) -> bytes:
    """One recipient's paragraph in bounce/<messid>: <addr>:, the report,
    with blank lines inside the report made non-blank ("/") so that
    paragraphs stay one per recipient, then an empty line."""
    text = bytearray(b'<' + recip.replace(b'\n', b'_') + b'>:\n' + report)
    if report and not report.endswith(b'\n'):
        text += b'\n'
    for pos in range(len(text) - 2, 0, -1):
        if text[pos] == 0x0a and text[pos - 1] == 0x0a:
            text[pos] = 0x2f               # '/'
    return bytes(text) + b'\n'


def bounce_envelope(sender: bytes, doublebounceto: bytes):
    """(bounce sender, bounce recipient), or None for a triple bounce.
    A bounce of a bounce (sender empty) goes to doublebounceto with the
    sender #@[] (recipient None: doublebounceto None, thrown away); a
    bounce of that is thrown away."""
    if sender.endswith(b'-@[]') and len(sender) >= 4:
        sender = sender[:-4]               # owner-@host-@[] -> owner-@host
    if sender == b'#@[]':
        return None
    if sender:
        return b'', sender
    return b'#@[]', doublebounceto


def one_line(text: bytes) -> bytes:
    """A header field's text with no line end in it (not qmail): an
    address with a CR or LF, which qmail-queue takes from anyone, would
    otherwise start header lines of its own in the bounce."""
    return text.replace(b'\r', b'_').replace(b'\n', b'_')


def bounce_head(date: bytes, bouncefrom: bytes, bouncehost: bytes,
                recip: bytes, single: bool) -> bytes:
    """The top of a bounce message, up to the failure paragraphs."""
    text = (b'Date: ' + date + b'\n'
            b'From: ' + quote(bouncefrom) + b'@' + bouncehost + b'\n'
            b'To: ' + one_line(quote2(recip)) + b'\n'
            b'Subject: failure notice\n'
            b'\n'
            b'Hi. This is the qmail-send program at ' + bouncehost + b'.\n')
    if single:
        text += (b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
                 b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n")
    else:
        text += b'I tried to deliver a bounce message to this address, but the bounce bounced!\n\n'
    return text


def bounce_separator(sender: bytes, single: bool) -> bytes:
    """Between the failure paragraphs and the copy of the message."""
    if single:
        line = b'--- Below this line is a copy of the message.\n\n'
    else:
        line = b'--- Below this line is the original bounce.\n\n'
    return line + b'Return-Path: <' + one_line(quote2(sender)) + b'>\n'
