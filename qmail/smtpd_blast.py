"""qmail-smtpd's DATA stream: SMTP transparency, newlines and hop counting.

Part of qmail-smtpd (see qmail/smtpd.py); the part of qmail-smtpd.c
called blast().  A Blast is fed the bytes that follow "354 go ahead" in
whatever pieces the network delivers and turns them into the message as
stored, streaming: it keeps at most two undecided bytes and the first
nine bytes of the current header line, so a message of any size, or a
line of any length, costs no memory.

The rules, as qmail-smtpd(8) TRANSPARENCY and qmail's blast() have them:

  * every LF must follow a CR: a bare LF anywhere in the data is
    refused ("451 See http://pobox.com/~djb/docs/smtplf.html.") and the
    connection dropped; CR LF becomes LF; any other CR is kept;
  * a line "." ends the data;
  * a line starting with "." loses that dot, except a line starting
    with "." CR (not followed by LF), which is kept whole, as qmail does;
  * in the header (up to the first empty line), each line starting
    with "received" or "delivered", in any case, is a hop.  qmail
    matches the prefix only, so "Received-SPF:" and "Delivered-To:"
    count too.  The lines are looked at as they arrive, before the dot
    is removed.
"""

import re

CR = 0x0D
LF = 0x0A
DOT = 0x2E
HOPPREFIX = 9            # len(b'delivered'): all a header line needs
HOPLINE = re.compile(rb'^(?:received|delivered)', re.I | re.M)

# What feed() reports.
MORE = 'more'            # all input used; the data goes on
END = 'end'              # the "." line was seen; used counts up to it
STRAYLF = 'straylf'      # a bare LF: refuse the message, drop the client


def whole_lines(rest: bytes, stop: bytes):
    """(the lines of rest up to stop, which begins with a CR LF that
    ends the last of them, stopped: True) or, without stop, (its whole
    lines, False); None if it has no whole line.  For the bulk paths: a
    line that may be the data's end (stop "\\r\\n.\\r\\n") or the header's
    (stop "\\r\\n\\r\\n") goes no further."""
    k = rest.find(stop)
    if k >= 0:
        return rest[:k + 2], True
    j = rest.rfind(b'\r\n')
    if j < 0:
        return None
    return rest[:j + 2], False


class Blast:
    """One message's DATA, from after "354" up to and including "."."""

    BULK = True     # the body's whole lines at once (_bulk); False: line by line

    def __init__(self):
        self.flagatstart = True     # next byte starts a line
        self.carry = b''            # undecided: "." or ".\r" at line start, or a final "\r"
        self.flaginheader = True
        self.hdr = b''              # first raw bytes of the current header line
        self.hops = 0

    def feed(self, data: bytes):
        """(message bytes, bytes of data used, MORE | END | STRAYLF).

        With MORE all of data was used; with END the bytes after `used`
        are the client's next commands (pipelined); with STRAYLF the
        message must be refused, and nothing more be read."""
        carried = len(self.carry)
        buf = self.carry + data if carried else data
        self.carry = b''
        out = []
        p = 0
        n = len(buf)
        bulk = hbulk = self.BULK
        while p < n:
            if hbulk and self.flagatstart and self.flaginheader and not self.hdr:
                done = self._bulk_header(buf, p, out)
                if done is None:
                    hbulk = False       # (as below: not again in this piece)
                else:
                    p = done
                    if p >= n:
                        break
                    continue
            if bulk and self.flagatstart and not self.flaginheader:
                done = self._bulk(buf, p, out, carried)
                if done is None:
                    # Line by line for the rest of this piece: tried again
                    # at each line, the scan of all that is left would
                    # cost the square of the piece (a peer could send a
                    # ".\r" line at the end of every piece).
                    bulk = False
                elif isinstance(done, tuple):
                    return done
                else:
                    p = done            # the last line, unfinished, goes on below
                    if p >= n:
                        break
            if self.flagatstart:
                if buf[p] == DOT:
                    if p + 1 >= n:
                        self.carry = buf[p:]
                        break
                    if buf[p + 1] == CR:
                        if p + 2 >= n:
                            self.carry = buf[p:]
                            break
                        if buf[p + 2] == LF:
                            return b''.join(out), p + 3 - carried, END
                        # ".\r" and more: qmail keeps this line's dot.
                    else:
                        self._header_bytes(b'.')
                        p += 1      # the stuffed dot goes
                self.flagatstart = False
            i = buf.find(b'\n', p)
            if i < 0:
                end = n
                if buf[n - 1] == CR:     # maybe the CR of a CR LF
                    end = n - 1
                    self.carry = b'\r'
                segment = buf[p:end]
                out.append(segment)
                self._header_bytes(segment)
                break
            if i == 0 or buf[i - 1] != CR:
                return b''.join(out), 0, STRAYLF
            segment = buf[p:i - 1]
            out.append(segment)
            out.append(b'\n')
            self._header_bytes(segment)
            self._line_end()
            self.flagatstart = True
            p = i + 1
        return b''.join(out), len(data), MORE

    def _bulk(self, buf: bytes, p: int, out: list, carried: int):
        """The body from a line start at p, its whole lines at once
        (replace and count run at C speed, where a loop per line costs
        a Python turn per line: 1,500 of them for 100 KB).  Appends the
        message bytes to out; returns feed()'s answer at the ".", else
        the position of the unfinished last line, for the loop to take
        on; None (nothing done) where the loop must look line by line:
        a bare LF, a line starting ".\r" not followed by LF (qmail keeps
        its dot), or no whole line."""
        rest = buf[p:] if p else buf
        if rest.startswith(b'.\r\n'):
            return b''.join(out), p + 3 - carried, END
        got = whole_lines(rest, b'\r\n.\r\n')
        if got is None:
            return None
        whole, stopped = got
        if whole.count(b'\n') != whole.count(b'\r\n') or b'\n.\r' in whole \
                or whole.startswith(b'.\r'):
            return None
        part = whole[1:] if whole.startswith(b'.') else whole
        out.append(part.replace(b'\r\n.', b'\r\n').replace(b'\r\n', b'\n'))
        if stopped:                     # the "." line after them: the end
            return b''.join(out), p + len(whole) + 3 - carried, END
        return p + len(whole)

    def _bulk_header(self, buf: bytes, p: int, out: list):
        """The header from a line start at p, its whole lines at once, as
        _bulk does the body's (line by line, a message that never ends
        its header cost 25 times the body's CPU per byte): the hops
        counted, the empty line that ends it taken too.  The new
        position, or None where the loop must look line by line (a bare
        LF, a line starting with a dot, the empty line first, no whole
        line)."""
        rest = buf[p:] if p else buf
        if rest.startswith(b'\r\n'):
            return None
        got = whole_lines(rest, b'\r\n\r\n')
        if got is None:
            return None
        part, stopped = got
        if part.startswith(b'.') or b'\n.' in part \
                or part.count(b'\n') != part.count(b'\r\n'):
            return None
        self.hops += len(HOPLINE.findall(part))
        out.append(part.replace(b'\r\n', b'\n'))
        if not stopped:
            return p + len(part)
        out.append(b'\n')              # the empty line: the body follows
        self.flaginheader = False
        return p + len(part) + 2

    def _header_bytes(self, segment: bytes):
        if self.flaginheader and len(self.hdr) < HOPPREFIX:
            self.hdr += segment[:HOPPREFIX - len(self.hdr)]

    def _line_end(self):
        """A header line is complete: count it, or see the header end."""
        if self.flaginheader:
            if not self.hdr:
                self.flaginheader = False
            else:
                low = self.hdr.lower()
                if low.startswith(b'received') or low.startswith(b'delivered'):
                    self.hops += 1
        self.hdr = b''
