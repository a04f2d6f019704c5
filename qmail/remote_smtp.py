"""qmail-remote's SMTP conversation with one host (part of qmail-remote).

qmail-remote.c's smtp(), with EHLO, SIZE and STARTTLS added.  Each step
and the report it ends with (IP is the partner's address):

  greeting    not 220: Z "Connected to IP but greeting failed."
  EHLO        not 250: HELO instead; not 250 either:
                       Z "Connected to IP but my name was rejected."
  STARTTLS    when the peer offers it (see TLS below)
  MAIL FROM   5xx: D, other failures Z, "Connected to IP but sender was
              rejected."  SIZE= is given when the peer offers SIZE.
  RCPT TO     per recipient, in order: 2xx/3xx an r record, 5xx an h
              record, others an s record, "IP does not like recipient.";
              none accepted: D "Giving up on IP."
  DATA        3xx goes on; 5xx D, others Z, "IP failed on DATA command."
  the dot     2xx K "IP accepted message."; 5xx D, others Z, "IP failed
              after I sent the message."
The peer's last reply follows as "Remote host said: ...".  QUIT is sent
and not waited for.  A connection that dies, or a peer silent for
timeoutremote seconds, is Z "Connected to IP but connection died.",
with "Possible duplicate!" once the final dot is sent.  A reply code
that is not three digits counts as a temporary failure, never as
success; a reply longer than REPLYMAX bytes ends the conversation.

The message: every line ends in CR LF (LF, CR LF and a lone CR in the
file each end a line), a line starting with a dot gets another, and the
end is dot CR LF.  8-bit data is sent as it is.  A message whose last
line has no end cannot be sent: D (#5.6.2).  Not qmail, which put a CR
before each LF and sent any other CR as it was (CR LF in the file went
out as CR CR LF): a lone CR, or CR LF, followed by "." then reached the
peer unstuffed, and a server that takes either as a line end read the
end of DATA there and the rest as commands of the sender's choosing
(SMTP smuggling, 2023).  Here no CR goes out but before its LF.

TLS: with a Tls policy and STARTTLS offered, the conversation goes on
encrypted, after a new EHLO.  Opportunistic (no certificate check): a
refused STARTTLS means plain text; a failed or stalled handshake, or a
connection that dies under TLS before MAIL FROM is answered, raises
TlsFallback so the caller reconnects in plain text (Session's
fellback): there a refusal that may be for the want of TLS (530, or
an enhanced code 5.7.x) is temporary, and the K report says "In the
clear: TLS had failed."  Required (from
control/tlsdestinations): the certificate must verify (Tls.match, or
the name the address came from), else Z (#4.7.5); a peer without
STARTTLS is Z (#4.7.10).  Whatever the peer sent before the handshake
is discarded (CVE-2011-0411, command injection).  The K report says
which protocol and cipher carried the message, and whether verified.
On port 465 (Tls.implicit) the handshake comes first, before the
greeting; no STARTTLS.

SMTP AUTH (RFC 4954), for an smtproutes relay given a user and a
password: only once the conversation is encrypted and verified (a
password makes TLS required: no STARTTLS is Z #4.7.10, a certificate
that does not verify Z #4.7.5), after the EHLO under TLS; PLAIN, else
LOGIN, else CRAM-MD5, from what AUTH (or an old "AUTH=") offers.  235
goes on to MAIL, and the K report says "SMTP AUTH as user."; anything
else is Z (#4.7.8 refused, #4.7.0 not offered): a wrong password is
the admin's to fix while the mail waits.  So is a refusal for policy
after it (530, 5.7.x: a sender the account may not use).  The password
is in no report, nor the user in a Z (it may end in a bounce).
"""

import binascii
import hmac
import os
import re
import ssl
import stat
import time

HUGESMTPTEXT = 5000     # bytes of a reply kept for the report (qmail's)
REPLYMAX = 1 << 16      # bytes of one reply read at most: the peer's to fill
READSIZE = 4096
BLASTSIZE = 1 << 16
DOT_COMPANY = 1024      # bytes of the message's end written with its dot
EXTMAX = 100            # EHLO keywords believed


class Dropped(Exception):
    """The connection died, timed out, or carried an absurd reply."""

    def __init__(self, why=b'connection died'):
        super().__init__(why)
        self.why = why


class TlsFallback(Exception):
    """Opportunistic TLS failed in the handshake: try again in plain text."""


class PartialLine(Exception):
    """The message does not end with a newline."""


class ReadError(Exception):
    """fd 0 could not be read."""


class Tls:
    """What TLS to do with one host: ctx, the name to send as SNI (and to
    verify, when ctx checks host names), required (defer without it) and
    verify (ctx checks the certificate), the destination domain for the
    texts; match, when not None: the names the certificate must hold one
    of (name_matches), checked here, as ctx then checks the chain alone."""

    def __init__(self, ctx, hostname, required, verify, domain=b'', match=None):
        self.ctx, self.hostname = ctx, hostname
        self.required, self.verify, self.domain = required, verify, domain
        self.match = match
        self.implicit = False   # TLS from the start (port 465), not STARTTLS
        self.reason = None      # why required, when not tlsdestinations

    def why(self) -> bytes:
        """Why this TLS is required, for a report."""
        if self.reason is not None:
            return self.reason
        if self.required:
            return b'my control/tlsdestinations requires TLS for ' + safe(self.domain)
        return b'port 465 is TLS from the start'


def cert_names(cert: dict) -> list:
    """The DNS names a peer's certificate (ssl's getpeercert()) is for:
    its subjectAltName entries, else its subject's commonName."""
    names = [v for k, v in cert.get('subjectAltName', ()) if k == 'DNS']
    if names:
        return names
    return [v for rdn in cert.get('subject', ()) for k, v in rdn if k == 'commonName']


def name_matches(name: str, patterns) -> bool:
    """Is a certificate's name (perhaps "*.x.y") one that patterns allow:
    "d", d itself; ".d", any name under d (a wildcard only if every name
    it covers is under d)?"""
    name = name.lower().rstrip('.')
    wild = name.startswith('*.')
    base = name[2:] if wild else name
    if wild and '.' not in base:
        return False                # "*.org": no CA may say so (nor OpenSSL take it)
    for p in patterns:
        p = p.lower()
        if p.startswith('.'):
            if base.endswith(p) or (wild and base == p[1:]):
                return True
        elif not wild and name == p:
            return True
        elif wild and p.partition('.')[2] == base and p.partition('.')[0] not in ('', '*'):
            return True
    return False


class NoCipher(ValueError):
    """The cipher list selects no cipher."""


class Passphrase(Exception):
    """The client key has a passphrase."""


def no_passphrase(*_):
    """A key with a passphrase is refused, never asked for on a tty."""
    raise Passphrase()


def cert_note(ctx) -> bytes:
    """For a report: why the client certificate was not shown, or b''."""
    trouble = getattr(ctx, 'clientcert_trouble', None)
    if not trouble:
        return b''
    return b' (my control/clientcert.pem was not shown: ' + safe(trouble) + b')'


def tls_context(verify: bool, cafile=None, hostnames=True,
                ciphers: bytes = None, clientcert: str = None) -> ssl.SSLContext:
    """A client context: OpenSSL's defaults; with verify, the peer's
    certificate must chain to cafile (or the system's CAs) and, with
    hostnames, name the host (else Tls.match says what it must name);
    with ciphers, an OpenSSL cipher list, those ciphers (up to TLS 1.2);
    with clientcert, a PEM file of a certificate chain and its key,
    shown to a server that asks for one (one that cannot be used is
    not: the server decides whether to go on without, as with the TLS
    patch, and the context's clientcert_trouble says why, for the
    report).  OSError (ssl.SSLError among them) if cafile cannot be
    loaded, NoCipher if ciphers selects none."""
    if verify:
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.check_hostname = hostnames
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if ciphers is not None:
        try:
            ctx.set_ciphers(ciphers.decode('ascii'))
        except (ssl.SSLError, UnicodeError):
            raise NoCipher(ciphers) from None
    if clientcert is not None:
        ctx.clientcert_trouble = load_client_cert(ctx, clientcert)
    return ctx


CLIENTCERT_MAX = 1 << 20    # bytes: a certificate chain and its key are a few KB


def load_client_cert(ctx: ssl.SSLContext, path: str):
    """path's certificate chain and key into ctx; None, or why not.  Only
    a regular file up to CLIENTCERT_MAX is opened (a FIFO there had held
    qmail-remote for good, outside every timeout)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return 'not a file'
        if st.st_size > CLIENTCERT_MAX:
            return 'too big for a certificate and its key'
        ctx.load_cert_chain(path, password=no_passphrase)
        return None
    except Passphrase:
        return 'its key has a passphrase'
    except ssl.SSLError as err:
        # ("PEM lib" for a file without a key; KEY_VALUES_MISMATCH...)
        text = err.reason or re.sub(r'^\[\w+\] | \(_ssl\.c:\d+\)$', '', str(err))
        return 'not a certificate with its key (OpenSSL: %s)' % text.lower().replace('_', ' ')
    except OSError as err:
        return (err.strerror or str(err)).lower()
    except MemoryError:
        return 'out of memory'


# --- pure -----------------------------------------------------------------

class BadTlsName(Exception):
    """A host name that cannot be sent in TLS (SNI) nor checked."""


def sni_ok(name: str) -> bool:
    """Can ssl take name as server_hostname (what its IDNA encoding
    accepts: labels of 1 to 63 characters)?  An MX name from DNS may hold
    anything a label can, escaped."""
    try:
        name.encode('idna')
    except UnicodeError:
        return False
    return True


def to_lf(data: bytes) -> bytes:
    """Each line end (CR LF, a lone CR, LF) as LF: the lines the Blaster
    sends, each then ending in CR LF (what a DKIM signature covers)."""
    return data.replace(b'\r\n', b'\n').replace(b'\r', b'\n')


class Blaster:
    """The message in SMTP's form, fed in chunks of any size: a CR, a LF
    or CR LF ends a line and goes as CR LF, a leading dot is doubled.
    Each chunk is passed on at once, nothing held but two flags, so a
    line of any length costs no memory (it was held whole, at some three
    times its size, as qmail's blast streams through its 1 KB buffer)."""

    def __init__(self):
        self.at_start = True            # the next byte begins a line
        self.after_cr = False           # the last byte was a CR: a LF next is its pair

    def feed(self, chunk: bytes) -> bytes:
        if self.after_cr and chunk[:1] == b'\n':
            chunk = chunk[1:]
        self.after_cr = False
        if not chunk:
            return b''
        self.after_cr = chunk.endswith(b'\r')
        block = to_lf(chunk)
        block = block.replace(b'\n.', b'\n..')
        if self.at_start and block.startswith(b'.'):
            block = b'.' + block
        self.at_start = block.endswith(b'\n')
        return block.replace(b'\n', b'\r\n')

    def finish(self) -> bytes:
        """The final dot.  Raises PartialLine: the message's last line
        has no end (what was sent of it then goes with the session, the
        dot never follows)."""
        if not self.at_start:
            raise PartialLine()
        return b'.\r\n'


def wire_size(fd: int, size: int) -> int:
    """The SIZE= of the size bytes from fd's offset: RFC 1870 counts
    them as sent, each line ending in CR LF (the file's lines end in LF
    alone); read without moving the offset.  size if it cannot be read
    (the blast will tell)."""
    try:
        pos, lines, left = os.lseek(fd, 0, os.SEEK_CUR), 0, size
        while left > 0:
            chunk = os.pread(fd, min(left, 1 << 20), pos)
            if not chunk:
                break
            lines += chunk.count(b'\n')
            pos += len(chunk)
            left -= len(chunk)
    except OSError:
        return size
    return size + lines


def parse_code(line: bytes) -> int:
    """The reply code of a reply's first line; 0 if it has none."""
    head = line[:3]
    return int(head) if len(head) == 3 and head.isdigit() else 0


def parse_ehlo(text: bytes) -> dict:
    """{KEYWORD: parameters} from an EHLO reply (its first line is the
    greeting, not an extension)."""
    ext = {}
    for line in text.split(b'\n')[1:EXTMAX + 1]:
        words = line[4:].split(None, 1)
        if words:
            ext[words[0].upper()] = words[1] if len(words) > 1 else b''
    return ext


def safe(text) -> bytes:
    """Peer- or library-made text for a report: printable ASCII only."""
    if isinstance(text, str):
        text = text.encode('ascii', 'replace')
    return bytes(ch if 32 <= ch < 127 else 63 for ch in text)


def b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)


def is_perm(code: int) -> bool:
    return 500 <= code <= 599


def wants_tls(code: int, text: bytes) -> bool:
    """A refusal that may be for the want of TLS: 530 (RFC 3207's "Must
    issue a STARTTLS command first"), or an enhanced status code of
    class 5.7 (security or policy) opening any of its lines."""
    return code == 530 or any(line[4:8] == b'5.7.' for line in text.split(b'\n'))


def is_ok(code: int) -> bool:
    """qmail's "code < 400", less codes that are not codes."""
    return 200 <= code <= 399


# --- the connection -----------------------------------------------------------

class Conn:
    """One SMTP connection: bounded replies, a timeout on every write and
    on each whole reply (not each read: a server dripping a byte now and
    then would hold the delivery for REPLYMAX timeouts), every socket
    failure a Dropped."""

    def __init__(self, sock, timeout: float):
        self.sock = sock
        self.timeout = timeout
        self.sock.settimeout(timeout)
        self.buf = bytearray()
        self.text = b''         # the last reply, CRs removed (qmail's smtptext)

    def send(self, data: bytes):
        try:
            self.sock.sendall(data)
        except OSError:
            raise Dropped() from None

    def _line(self, limit: int, deadline: float) -> bytes:
        while True:
            i = self.buf.find(b'\n')
            if i != -1:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit:
                raise Dropped(b'its reply was too long')
            left = deadline - time.monotonic()
            if left <= 0:
                raise Dropped()
            try:
                self.sock.settimeout(left)
                data = self.sock.recv(READSIZE)
            except OSError:
                raise Dropped() from None
            finally:
                self.sock.settimeout(self.timeout)
            if not data:
                raise Dropped()
            self.buf += data

    def reply(self) -> int:
        """Read one reply: its code; the text is kept in self.text."""
        text = bytearray()
        code = None
        deadline = time.monotonic() + self.timeout
        while True:
            line = self._line(REPLYMAX - len(text), deadline)
            if code is None:
                code = parse_code(line)
            text += line.replace(b'\r', b'')
            if len(text) > REPLYMAX:
                raise Dropped(b'its reply was too long')
            if line[3:4] != b'-':
                break
        self.text = bytes(text[:HUGESMTPTEXT]).replace(b'\0', b'?')
        return code

    def command(self, line: bytes) -> int:
        self.send(line + b'\r\n')
        return self.reply()

    def starttls(self, tls: Tls):
        """The handshake; raises what ssl raises, and BadTlsName (before
        anything is sent) for a name ssl cannot carry."""
        self.buf.clear()
        name = tls.hostname or None
        if name is not None and not sni_ok(name):
            # (wrap_socket would fail only after taking the socket over)
            if tls.verify:
                raise BadTlsName()
            name = None                 # opportunistic: no SNI, no check
        self.sock = tls.ctx.wrap_socket(self.sock, server_hostname=name)
        if tls.verify and tls.match is not None:
            names = cert_names(self.sock.getpeercert() or {})
            if not any(name_matches(n, tls.match) for n in names):
                err = ssl.SSLCertVerificationError('certificate names no allowed host')
                err.verify_message = 'it names %s, not %s' % (
                    ', '.join(names[:5]) or 'nothing', ' or '.join(tls.match))
                raise err

    def tls_state(self, verified: bool) -> bytes:
        cipher = self.sock.cipher()
        state = b'TLS %s %s %s' % (safe(self.sock.version() or '?'),
                                   safe(cipher[0] if cipher else '?'),
                                   b'verified' if verified else b'unverified')
        trouble = getattr(self.sock.context, 'clientcert_trouble', None)
        if trouble:
            state += b', without my control/clientcert.pem: ' + safe(trouble)
        return state

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --- the conversation ---------------------------------------------------------

class Session:
    """One conversation.  run() returns the message report (K, Z or D
    and its text); recipient records are appended to out."""

    def __init__(self, conn: Conn, partner: bytes, helohost: bytes, out: list,
                 fellback: bool = False):
        """fellback: this is the plain connection after opportunistic
        TLS failed in the handshake (TlsFallback)."""
        self.conn, self.partner, self.helohost, self.out = conn, partner, helohost, out
        self.flagcritical = False
        self.tlsinfo = b''
        self.authinfo = b''     # the K report's line once SMTP AUTH is done
        self.prefix = b''       # header lines sent before the message (DKIM)
        self.signedinfo = b''   # the K report's line for them
        self.fellback = fellback
        self.fellnote = b''     # cert_note of the TLS that failed, for the report
        self.tls = None

    def refused(self, code: int) -> bool:
        """A permanent refusal.  Not on the plain connection after a
        failed handshake when it may be for the want of TLS (wants_tls):
        a peer that requires TLS says 530 to MAIL there, and that was a
        bounce where qmail's TLS patch and Postfix defer; it waits now,
        as a deferral, for a handshake that works."""
        if not is_perm(code):
            return False
        if self.fellback and wants_tls(code, self.conn.text):
            self.note(b'(TLS had failed: this was the connection in the clear)\n')
            return False
        if self.authinfo and wants_tls(code, self.conn.text):
            # A relay's policy refusal after SMTP AUTH (a sender the
            # account may not use, an account not allowed to relay) is
            # the admin's to fix, as a refused password is: it waits.
            self.note(b'(a refusal for policy on a route with SMTP AUTH: waiting for '
                      b'the account to be put right)\n')
            return False
        return True

    def note(self, line: bytes):
        """line after the last reply's text, in the report."""
        text = self.conn.text
        self.conn.text = text + (b'' if text.endswith(b'\n') else b'\n') + line

    def said(self) -> bytes:
        """The last reply's text, once (qmail's outsmtptext empties it):
        "Giving up" after refused recipients repeats none of it."""
        text, self.conn.text = self.conn.text, b''
        return b'Remote host said: ' + text if text else b''

    def quit(self, prepend: bytes, append: bytes, said=True) -> bytes:
        try:
            self.conn.send(b'QUIT\r\n')     # waiting for the reply is pointless
        except Dropped:
            pass
        return prepend + self.partner + append + b'.\n' + (self.said() if said else b'')

    def dropped(self, err: Dropped) -> bytes:
        note = cert_note(self.tls.ctx) if self.tls is not None and self.tlsinfo else b''
        return (b'ZConnected to ' + self.partner + b' but ' + err.why + note + b'. '
                + (b'Possible duplicate! ' if self.flagcritical else b'') + b'(#4.4.2)\n')

    def run(self, sender, recips, fd, size=None, tls=None, auth=None, dkim=None) -> bytes:
        """auth: (user, password) to give the relay (SMTP AUTH), or None.
        dkim: (a DKIM-Signature field to send before the message, the
        line for the K report), or None."""
        if dkim is not None:
            self.prefix, self.signedinfo = dkim
        self.tls = tls
        try:
            return self.smtp(sender, recips, fd, size, tls, auth)
        except Dropped as err:
            return self.dropped(err)

    def fall_back(self, tls):
        """The connection died under opportunistic TLS before the message
        began (a peer that wants a client certificate says so only then):
        TlsFallback, to try again in the clear, as after a failed
        handshake.  Mail that must have TLS is not let go in clear."""
        if tls is not None and self.tlsinfo and not tls.required and not tls.implicit:
            raise TlsFallback() from None

    def hello_under(self, tls) -> dict:
        """hello() again, once encrypted."""
        try:
            return self.hello()
        except Dropped:
            self.fall_back(tls)
            raise

    def hello(self) -> dict:
        """EHLO, else HELO: the extensions, or None if both failed.  A
        421 to EHLO ends it there: the peer is closing (a HELO would
        find the connection gone, and the 421's text lost)."""
        code = self.conn.command(b'EHLO ' + self.helohost)
        if code == 250:
            return parse_ehlo(self.conn.text)
        if code == 421:
            return None
        if self.conn.command(b'HELO ' + self.helohost) == 250:
            return {}
        return None

    def gives_up(self, what: bytes, why: bytes, code: bytes, said=b'') -> bytes:
        """QUIT, and the Z report "Connected to IP but what; why. (#code)"
        (a TLS or SMTP AUTH requirement not met), said after it."""
        try:
            self.conn.send(b'QUIT\r\n')
        except Dropped:
            pass
        return (b'ZConnected to ' + self.partner + b' but ' + what
                + b'; ' + why + b'. (#' + code + b')\n' + said)

    def required_fails(self, tls: Tls, what: bytes, code: bytes, said=b'') -> bytes:
        return self.gives_up(what, tls.why(), code, said)

    def starttls(self, ext: dict, tls: Tls):
        """None when the conversation may go on (encrypted or not), else
        the Z report.  Raises TlsFallback, Dropped."""
        if b'STARTTLS' not in ext:
            if tls.required:
                return self.required_fails(tls, b'it does not offer STARTTLS', b'4.7.10')
            return None
        code = self.conn.command(b'STARTTLS')
        if code != 220:
            if tls.required:
                return self.required_fails(tls, b'STARTTLS failed', b'4.7.10', self.said())
            return None
        return self.handshake(tls)

    def handshake(self, tls: Tls):
        """The TLS handshake (after STARTTLS's 220, or at once on port
        465): None, or the Z report.  Raises TlsFallback (opportunistic
        STARTTLS: try again in the clear), Dropped."""
        fallback = not tls.required and not tls.implicit
        try:
            self.conn.starttls(tls)
        except ssl.SSLCertVerificationError as err:
            return self.required_fails(
                tls, b'its certificate could not be verified for ' + safe(tls.hostname)
                + b' (' + safe(err.verify_message or str(err)) + b')', b'4.7.5')
        except BadTlsName:
            return self.required_fails(
                tls, b'its name ' + safe(tls.hostname) + b' cannot be checked against a '
                b'certificate', b'4.7.5')
        except TimeoutError:
            if fallback:            # a handshake that stalls: as one that fails
                raise TlsFallback() from None
            raise Dropped() from None
        except OSError as err:      # ssl.SSLError, a reset in the handshake
            if fallback:
                raise TlsFallback() from None
            return self.required_fails(
                tls, b'the TLS handshake failed (' + safe(str(err)) + b')' + cert_note(tls.ctx),
                b'4.7.5')
        self.tlsinfo = self.conn.tls_state(tls.verify)
        return None

    def authenticate(self, ext: dict, auth) -> bytes:
        """SMTP AUTH (RFC 4954) as auth's user, under TLS: PLAIN, else
        LOGIN, else CRAM-MD5, as the relay offers them.  None once it
        said 235, else the Z report: a refused password is the admin's
        to fix in control/smtproutes, and the mail waits for it."""
        user, password = auth
        offered = ext.get(b'AUTH')
        if offered is None:     # an old server's "AUTH=LOGIN PLAIN"
            offered = next((k[5:] + b' ' + v for k, v in ext.items()
                            if k.startswith(b'AUTH=')), None)
        if offered is None:
            return self.auth_fails(b'it does not offer SMTP AUTH', b'4.7.0', said=False)
        mechs = offered.upper().split()
        conn = self.conn
        if b'PLAIN' in mechs:
            code = conn.command(b'AUTH PLAIN ' + b64(b'\0' + user + b'\0' + password))
        elif b'LOGIN' in mechs:
            code = conn.command(b'AUTH LOGIN')
            if code == 334:
                code = conn.command(b64(user))
            if code == 334:
                code = conn.command(b64(password))
        elif b'CRAM-MD5' in mechs:
            code = conn.command(b'AUTH CRAM-MD5')
            if code == 334:
                try:
                    challenge = binascii.a2b_base64(conn.text[4:].strip())
                except binascii.Error:
                    challenge = None
                if challenge is None:
                    code = conn.command(b'*')       # cancelled (RFC 4954)
                else:
                    digest = hmac.new(password, challenge, 'md5').hexdigest()
                    code = conn.command(b64(user + b' ' + digest.encode()))
        else:
            return self.auth_fails(b'it offers no SMTP AUTH mechanism I use (PLAIN, LOGIN, '
                                   b'CRAM-MD5)', b'4.7.0', said=False)
        if code == 334:             # it wants more than the mechanism gives
            code = conn.command(b'*')
        if code == 235:
            self.authinfo = b'SMTP AUTH as ' + safe(user) + b'.\n'
            return None
        # (not the user's name: this text reaches senders in a bounce)
        return self.auth_fails(b'it refused my SMTP AUTH', b'4.7.8')

    def auth_fails(self, what: bytes, code: bytes, said=True) -> bytes:
        return self.gives_up(what, b'my control/smtproutes gives a user and password '
                             b'for this route', code, self.said() if said else b'')

    def smtp(self, sender, recips, fd, size, tls, auth=None) -> bytes:
        conn = self.conn
        if tls is not None and tls.implicit:
            failed = self.handshake(tls)
            if failed is not None:
                return failed
        if conn.reply() != 220:
            return self.quit(b'ZConnected to ', b' but greeting failed')
        ext = self.hello()
        if ext is None:
            return self.quit(b'ZConnected to ', b' but my name was rejected')
        if tls is not None and not tls.implicit:
            failed = self.starttls(ext, tls)
            if failed is not None:
                return failed
            if self.tlsinfo:
                ext = self.hello_under(tls)
                if ext is None:
                    return self.quit(b'ZConnected to ', b' but my name was rejected')
        if auth is not None:
            if not self.tlsinfo:        # (never: a password makes TLS required)
                return self.auth_fails(b'not under TLS', b'4.7.0', said=False)
            failed = self.authenticate(ext, auth)
            if failed is not None:
                return failed

        mail = b'MAIL FROM:<' + sender + b'>'
        if b'SIZE' in ext and size is not None:
            mail += b' SIZE=%d' % (wire_size(fd, size) + len(self.prefix)
                                   + self.prefix.count(b'\n'))
        try:
            code = conn.command(mail)
        except Dropped:
            self.fall_back(tls)
            raise
        if self.refused(code):
            return self.quit(b'DConnected to ', b' but sender was rejected')
        if not is_ok(code):
            return self.quit(b'ZConnected to ', b' but sender was rejected')

        flagbother = False
        for recip in recips:
            if recip is None:           # refused before asking: see remote.py
                self.out.append(b'hSorry, I will not send an address with a line break. (#5.1.3)\n')
                continue
            code = conn.command(b'RCPT TO:<' + recip + b'>')
            if self.refused(code):
                self.out.append(b'h' + self.partner + b' does not like recipient.\n' + self.said())
            elif not is_ok(code):
                self.out.append(b's' + self.partner + b' does not like recipient.\n' + self.said())
            else:
                self.out.append(b'r')
                flagbother = True
        if not flagbother:
            # (no text: the refusals said theirs; an address refused
            # before asking leaves MAIL's 250 there)
            return self.quit(b'DGiving up on ', b'', said=False)

        code = conn.command(b'DATA')
        if self.refused(code):
            return self.quit(b'D', b' failed on DATA command')
        if not 300 <= code <= 399:
            return self.quit(b'Z', b' failed on DATA command')
        try:
            self.blast(fd)
        except ReadError:
            return b'ZUnable to read message. (#4.3.0)\n'
        except PartialLine:
            return b'DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n'
        code = conn.reply()
        self.flagcritical = False
        if self.refused(code):
            return self.quit(b'D', b' failed after I sent the message')
        if not 200 <= code <= 299:
            return self.quit(b'Z', b' failed after I sent the message')
        if self.tlsinfo:
            return (self.quit(b'K', b' accepted message', False) + self.tlsinfo + b'.\n'
                    + self.authinfo + self.signedinfo + self.said())
        if self.fellback:
            return (self.quit(b'K', b' accepted message', False)
                    + b'In the clear: TLS had failed' + self.fellnote + b'.\n'
                    + self.signedinfo + self.said())
        if self.signedinfo:
            return self.quit(b'K', b' accepted message', False) + self.signedinfo + self.said()
        return self.quit(b'K', b' accepted message')

    def blast(self, fd):
        """The message from fd, then the final dot.  Raises ReadError,
        PartialLine (before the dot, so the peer drops the message)."""
        blaster = Blaster()
        # The last piece goes with the dot, in one write, as qmail's
        # buffered output sends a small message.  A DKIM field goes first.
        held = blaster.feed(self.prefix) if self.prefix else b''
        while True:
            try:
                chunk = os.read(fd, BLASTSIZE)
            except OSError:
                raise ReadError() from None
            if not chunk:
                break
            data = blaster.feed(chunk)
            if data:
                if held:
                    self.conn.send(held)
                held = data
        tail = blaster.finish()
        # Only a small last piece goes with the dot: a connection lost
        # before that says "Possible duplicate!" only once the peer could
        # have the whole message, as qmail's 1 KB buffer has it.
        cut = max(0, len(held) - DOT_COMPANY)
        if cut:
            self.conn.send(memoryview(held)[:cut])
        self.flagcritical = True
        self.conn.send(held[cut:] + tail)
