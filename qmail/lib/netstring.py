"""Netstrings: djb's length-prefixed strings, "12:hello world!,".

QMTP and QMQP frame everything in them: a decimal length, a colon,
that many bytes, a comma.  The peer chooses the length, so every reader
here takes a limit and refuses a longer declaration as soon as its
digits say so, before a byte of payload is read or a byte of memory
promised: the length is never used to size a buffer.

Strict as cr.yp.to/proto/netstrings.txt is: at least one digit, no
leading zero ("0:," is the only length starting with 0), nothing but
digits before the colon.  qmail's C readers are laxer (":," reads as
empty, leading zeros pass); no client qmail ships sends either.

Reader streams one netstring's payload in whatever pieces the network
delivers and never holds it; decode() takes a whole one from a buffer.
"""

COLON = 0x3A
COMMA = 0x2C
ZERO = 0x30
NINE = 0x39

# Reader.state
LENGTH = 'length'       # reading digits up to the colon
BODY = 'body'           # passing the payload on
TRAILER = 'comma'       # waiting for the comma
DONE = 'done'           # the comma was read; nothing more is taken


class NetstringError(ValueError):
    """The bytes are not a netstring: the peer broke the protocol."""


class TooLong(NetstringError):
    """The declared length is above the reader's limit."""


class Incomplete(NetstringError):
    """decode(): the buffer ends inside the netstring."""


def encode(payload: bytes) -> bytes:
    return b'%d:%s,' % (len(payload), payload)


def encode_all(payloads) -> bytes:
    return b''.join(encode(p) for p in payloads)


class Reader:
    """One netstring, fed in pieces: feed(data, pos) -> (pos, chunk).

    Each call takes what it can from data[pos:] and returns the new
    position and the payload bytes it passed over (b'' while reading
    the length or the comma).  length is None until the colon has been
    read; left counts the payload bytes still to come; done is true
    once the comma has been read, and then feed takes nothing more.
    Raises TooLong or NetstringError; the reader is then unusable."""

    def __init__(self, limit: int):
        self.limit = limit
        self.state = LENGTH
        self.length = None
        self.left = 0
        self.ndigits = 0
        self.value = 0

    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def started(self) -> bool:
        """Has any byte of this netstring been read?"""
        return self.ndigits > 0 or self.state != LENGTH

    def feed(self, data: bytes, pos: int = 0):
        n = len(data)
        if self.state == LENGTH:
            pos = self._length(data, pos)
        chunk = b''
        if self.state == BODY and pos < n:
            take = min(self.left, n - pos)
            chunk = data[pos:pos + take]
            pos += take
            self.left -= take
            if not self.left:
                self.state = TRAILER
        if self.state == TRAILER and pos < n:
            if data[pos] != COMMA:
                raise NetstringError('netstring without its comma')
            pos += 1
            self.state = DONE
        return pos, chunk

    def _length(self, data: bytes, pos: int) -> int:
        n = len(data)
        while pos < n:
            ch = data[pos]
            pos += 1
            if ch == COLON:
                if not self.ndigits:
                    raise NetstringError('netstring length without digits')
                self.length = self.left = self.value
                self.state = BODY if self.value else TRAILER
                return pos
            if not ZERO <= ch <= NINE:
                raise NetstringError('netstring length not a number')
            if self.ndigits and not self.value:
                raise NetstringError('netstring length with a leading zero')
            self.ndigits += 1
            self.value = self.value * 10 + ch - ZERO
            if self.value > self.limit:
                raise TooLong('netstring longer than %d bytes' % self.limit)
        return pos


def decode(data: bytes, limit: int, pos: int = 0):
    """The netstring at data[pos:]: (payload, position after its comma).

    Raises Incomplete if data ends inside it, TooLong if it claims more
    than limit bytes, NetstringError if it is not a netstring."""
    r = Reader(limit)
    end, payload = r.feed(data, pos)
    if not r.done:
        raise Incomplete('netstring cut short')
    return payload, end


def decode_all(data: bytes, limit: int, maxcount: int) -> list:
    """data as exactly a sequence of netstrings, each at most limit
    bytes and at most maxcount of them; Incomplete counts as malformed."""
    out = []
    pos = 0
    while pos < len(data):
        if len(out) >= maxcount:
            raise TooLong('more than %d netstrings' % maxcount)
        try:
            payload, pos = decode(data, limit, pos)
        except Incomplete:
            raise NetstringError('netstring cut short') from None
        out.append(payload)
    return out
