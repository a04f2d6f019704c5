"""qmail-smtpd's STARTTLS (RFC 3207): the server context, the handshake,
and the connection once encrypted.

Part of qmail-smtpd (see qmail/smtpd.py: the Session decides when, this
module does the I/O).  Imported only when a client says STARTTLS, since
the ssl module costs start-up time every connection would pay.

The certificate is control/servercert.pem, certificate chain and
private key in one PEM file, as the common qmail TLS patch has it; it
must be readable by qmaild.  The context is OpenSSL's defaults for a
server (ssl.create_default_context(ssl.Purpose.CLIENT_AUTH): no client
certificate asked for) with TLS 1.2 at least, the server's cipher
order, no compression, no renegotiation and no session tickets.  The
ciphers up to TLS 1.2 are OpenSSL's, or, as the TLS patch has it, those
of the environment's TLSCIPHERS or else of control/tlsserverciphers (an
OpenSSL cipher list, its lines joined by ":"); TLS 1.3's suites stay
OpenSSL's.  A list that cannot be read, or selects no cipher, refuses
STARTTLS as a certificate that cannot be loaded does.

STARTTLS is offered only when fd 0 and fd 1 are one socket, as under
tcpserver (smtpd.is_socket); never on the pipes of sendmail -bs.
"""

import os
import socket
import ssl

from qmail.lib import control
from qmail.lib.error import error_str
from qmail.smtpd import Gone

CERTFILE = 'control/servercert.pem'
CIPHERFILE = 'control/tlsserverciphers'
HANDSHAKE_TIMEOUT = 60   # seconds; also capped by timeoutsmtpd and the lifetime
READSIZE = 65536

R_TLSGO = b'220 ready for tls\r\n'


class TlsError(Exception):
    """The handshake failed: no SMTP can follow on this connection."""


class CipherTrouble(ValueError):
    """The cipher list cannot be read or selects no cipher: args
    (where it comes from, why), both bytes."""


def starttls(session, channel, fd: int, certfile: str, wait: float):
    """The shell's part of STARTTLS, once the Session asked for it: the
    new channel; the old one if the certificate cannot be loaded (the
    Session's 454 is sent); None if the handshake failed (the session
    is aborted: the connection must be dropped).  wait is what is left
    of timeoutsmtpd and the lifetime."""
    timeout = session.config.timeout
    try:
        ctx = server_context(certfile)
    except (OSError, ValueError, MemoryError) as err:    # ssl.SSLError is an OSError
        channel.write(session.starttls_refused(cert_trouble(err)), timeout)
        return channel
    channel.write(R_TLSGO, timeout)
    return started(session, ctx, fd, wait)


def smtps(session, fd: int, certfile: str, wait: float):
    """TLS before the greeting (SMTPS, port 465): the TlsChannel, or None
    when there can be no session (session.closereply says why, for the
    log: nothing can be said to the client)."""
    try:
        ctx = server_context(certfile)
    except (OSError, ValueError, MemoryError) as err:
        session.abort()
        session.closereply = b'SMTPS: unable to load ' + cert_trouble(err)
        return None
    return started(session, ctx, fd, wait)


def started(session, ctx, fd: int, wait: float):
    """The handshake, then the session's start under TLS: the TlsChannel,
    or None (the session aborted) when it failed."""
    try:
        tls = handshake(ctx, fd, min(HANDSHAKE_TIMEOUT, wait))
    except TlsError as err:
        session.abort()
        # The log says so: a scanner's or a broken client's failed
        # handshake is not a client that just went away.
        session.closereply = b'TLS handshake failed (%s)' % str(err).encode('ascii', 'replace')
        return None
    session.tls_started(tls.description)
    return tls


def cert_trouble(err) -> bytes:
    """What could not be loaded, and why, for the log:
    b"control/servercert.pem: " and the reason, or the cipher list's."""
    if isinstance(err, CipherTrouble):
        return b'%s: %s' % err.args
    if isinstance(err, MemoryError):
        return b'control/servercert.pem: out of memory'
    return b'control/servercert.pem: ' + cert_reason(err)


def cert_reason(err) -> bytes:
    if isinstance(err, ssl.SSLError):
        text = err.reason or err.strerror or str(err)
    elif isinstance(err, OSError):
        text = err.strerror or str(err)
    else:
        text = str(err)
    return str(text).encode('utf-8', 'replace')


def cipher_list(environ, cipherfile: str = CIPHERFILE):
    """(where, the OpenSSL cipher list) from TLSCIPHERS, else from the
    control file; None for OpenSSL's own.  CipherTrouble if the file
    cannot be read."""
    value = environ.get(b'TLSCIPHERS')
    if value:
        return b'TLSCIPHERS', value
    try:
        lines = control.readfile(cipherfile)
    except OSError as err:
        raise CipherTrouble(cipherfile.encode(), error_str(err)) from None
    value = control.colon_list(lines)
    return None if value is None else (cipherfile.encode(), value)


def server_context(certfile: str = CERTFILE, environ=None,
                   cipherfile: str = CIPHERFILE) -> ssl.SSLContext:
    """Raises OSError (ssl.SSLError among them) when the file is missing,
    unreadable, not a regular file or not a certificate with its key;
    CipherTrouble when the cipher list (cipher_list: environ, else
    os.environb) cannot be read or selects nothing."""
    # Looked at first without waiting: OpenSSL's own open of a FIFO put
    # there hung every STARTTLS (and STLS) session for good.
    control.open_regular(certfile).close()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= (ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
                    | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET)
    # No session tickets: each STARTTLS makes its context anew, so none
    # could ever resume a session (TLS 1.3 sent two for nothing).
    ctx.num_tickets = 0
    ctx.load_cert_chain(certfile)
    ciphers = cipher_list(os.environb if environ is None else environ, cipherfile)
    if ciphers is not None:
        try:
            ctx.set_ciphers(ciphers[1].decode('ascii'))
        except (ssl.SSLError, UnicodeError):
            raise CipherTrouble(ciphers[0], b'no cipher can be selected') from None
    return ctx


def describe(sslsock) -> bytes:
    """"TLSv1.3 TLS_AES_256_GCM_SHA384", for the Received line."""
    cipher = sslsock.cipher()
    name = cipher[0] if cipher else 'unknown'
    return ('%s %s' % (sslsock.version() or 'TLS', name)).encode('ascii', 'replace')


def handshake(ctx: ssl.SSLContext, fd: int, timeout: float) -> 'TlsChannel':
    """Start TLS as the server on the socket fd; raises TlsError.

    The socket object gets a duplicate of fd, so fds 0 and 1 stay what
    tcpserver made them.  Whatever the client sent after STARTTLS and
    before its ClientHello has been dropped by the Session; bytes still
    in the kernel go to OpenSSL, which fails the handshake on them."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as err:
        raise TlsError(str(err)) from None
    try:
        sock.settimeout(max(timeout, 0.001))
        sslsock = ctx.wrap_socket(sock, server_side=True,
                                  do_handshake_on_connect=False)
        sslsock.do_handshake()
    except (OSError, ValueError) as err:    # ssl.SSLError, timeout, reset
        sock.close()
        raise TlsError(handshake_trouble(err)) from None
    return TlsChannel(sslsock)


def handshake_trouble(err) -> str:
    """A failed handshake's reason, short, for the log: OpenSSL's
    ("WRONG_VERSION_NUMBER"), "timeout", or the error's kind."""
    if isinstance(err, TimeoutError):
        return 'timeout'
    if isinstance(err, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return 'connection closed'
    if isinstance(err, ssl.SSLError):      # (its errno is OpenSSL's, not the system's)
        return err.reason or type(err).__name__
    if isinstance(err, OSError) and err.errno:
        return error_str(err).decode()
    return type(err).__name__


class TlsChannel:
    """The encrypted connection, with smtpd.FdChannel's read and write."""

    def __init__(self, sslsock):
        self.sslsock = sslsock
        self.description = describe(sslsock)

    def read(self, wait: float):
        """Up to READSIZE bytes; b'' at the end or on an error; None
        when nothing came for wait seconds."""
        try:
            self.sslsock.settimeout(max(wait, 0.001))
            return self.sslsock.recv(READSIZE)
        except TimeoutError:
            return None
        except (OSError, ValueError):
            return b''

    def close(self):
        """The end: close_notify (RFC 8446 6.1) sent, the client's not
        waited for, and the duplicate descriptor closed.  Without it a
        strict client takes the end of the connection for a truncation."""
        try:
            self.sslsock.setblocking(False)
            self.sslsock.unwrap()
        except (OSError, ValueError):   # SSLWantReadError: ours is sent
            pass
        try:
            self.sslsock.close()
        except OSError:
            pass

    def write(self, data: bytes, timeout: float):
        """Raises smtpd.Gone when the client cannot be written to within
        timeout seconds, or at all."""
        try:
            self.sslsock.settimeout(timeout)
            self.sslsock.sendall(data)
        except (OSError, ValueError) as err:    # ssl.SSLError, timeout, reset
            raise Gone(type(err).__name__) from None
