"""DKIM signatures for qmail-remote (part of qmail-remote; beyond qmail).

Reads:    HOME/control/domainkeys/DOMAIN/selector, one line: the
          selector that signs mail from DOMAIN (without it, "default" if
          there is such a key, else nothing is signed for DOMAIN);
          HOME/control/domainkeys/DOMAIN/<selector>, its private key
          (PEM, RSA).  Other files there are ignored (the public key, an
          editor's backup, a key being retired).  The public key goes
          into DNS as the TXT record <selector>._domainkey.DOMAIN; a new
          key takes over when the selector file names it, once its
          record is published.  DOMAIN in lower case, as DNS writes it
          (an international one in its xn-- form).  Each key readable by
          qmailr (qmail-remote runs as qmailr, group qmail): chgrp qmail,
          chmod 640.
Signs:    a message qmail-remote sends when its From: address is at a
          domain with a key, or under one (mail from lists.example.org
          with example.org's key, which DMARC's relaxed alignment
          accepts), its envelope sender is under that same signing
          domain, and it has no Delivered-To: field: mail delivered here
          and sent on (a .qmail forward, a list) came from anywhere, any
          SMTP client may give a sender of ours, so a forgery of this
          domain's From: sent to a forwarding address is not signed.
          Nor is mail with no From: (a signature must cover one), nor
          bounces (sender <>).
          RFC 6376, rsa-sha256, c=relaxed/relaxed, dkimpy's choice of
          header fields (From signed twice, so no second From: can be
          added), over the message as it goes on the wire: each line end
          (LF, CR LF or a lone CR in the queue's file) as CR LF, which is
          what remote_smtp's Blaster sends.
Fails:    (Dkim's args: the text of qmail-remote's Z report) a key or
          selector that cannot be read or used, or the dkim module
          (dkimpy) missing when there are keys: the mail waits, never
          goes unsigned.  A message dkimpy cannot take (a header line
          without a colon, say) goes unsigned, and the K report says
          why: the key is sound, the message is what it is.
Costs:    nothing unless control/domainkeys exists; then the header is
          read first, and the whole message only when a key applies
          (held some six times over while it is signed).
"""

import email.utils
import os
import re

from qmail import remote_smtp

DIRECTORY = 'control/domainkeys'     # as the reports name it
SUBDIR = 'domainkeys'                 # in the control directory
HEADER_MAX = 1 << 18                  # bytes read to find the From: field
SELECTOR_FILE = 'selector'
DEFAULT_SELECTOR = b'default'
SELECTOR_OK = re.compile(rb'[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?'
                         rb'(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\Z')
DOMAIN_OK = re.compile(rb'[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\Z')


class Dkim(Exception):
    """Signing failed: args[0] is the report's text (bytes)."""


class Unsigned(Exception):
    """The message cannot be signed (dkimpy refused it): args[0] is why."""


def configured(control_dir: str = 'control') -> bool:
    return os.path.isdir(os.path.join(control_dir, SUBDIR))


def wire_form(message: bytes) -> bytes:
    """The message's line ends as the Blaster sends them: CR LF."""
    return remote_smtp.to_lf(message).replace(b'\n', b'\r\n')


def header_of(message: bytes) -> bytes:
    """The header (up to the first empty line) of a wire_form message."""
    end = message.find(b'\r\n\r\n')
    if message.startswith(b'\r\n'):
        return b''
    return message if end == -1 else message[:end + 2]


def dns_form(domain: str):
    """domain as DNS spells it: lower case, no final dot, an international
    name in its ASCII (xn--) form; None if it is no domain name."""
    domain = domain.strip().rstrip('.').lower()
    try:
        ascii_form = domain.encode('ascii')
    except UnicodeEncodeError:
        try:
            import idna
            ascii_form = idna.encode(domain, uts46=True)
        except (ImportError, UnicodeError, ValueError):
            return None
    return ascii_form if DOMAIN_OK.match(ascii_form) else None


def from_domain(header: bytes):
    """The domain of the From: field's first address (dns_form); b'' for
    a From: with no address with a domain in it; None, no From: (the
    field's name as RFC 5322 writes it: "From:", no space before the
    colon, as dkimpy finds it)."""
    value = None
    for line in header.split(b'\r\n'):
        if value is not None:
            if line[:1] in (b' ', b'\t'):
                value += b' ' + line.strip()
                continue
            break
        name, sep, rest = line.partition(b':')
        if sep and name.lower() == b'from':
            value = rest.strip()
    if value is None:
        return None
    text = value.decode('utf-8', 'replace')
    for _, addr in email.utils.getaddresses([text]):
        domain = addr.rpartition('@')[2]
        if '@' in addr and domain:
            return dns_form(domain) or b''
    return b''


def candidates(domain: bytes):
    """domain, then each domain above it with at least one dot
    (a.b.example.org: b.example.org, example.org)."""
    labels = domain.split(b'.')
    return [b'.'.join(labels[i:]) for i in range(len(labels) - 1)] or [domain]


def find_key(control_dir: str, domain: bytes, fits=None):
    """(signing domain, selector, key path) for mail from domain, or
    None: the nearest domain, at or above it, with a key and, if given,
    fits(that domain).  Raises Dkim for a selector file that cannot be
    read or names no selector."""
    base = os.path.join(control_dir, SUBDIR)
    for d in candidates(domain):
        if not DOMAIN_OK.match(d) or (fits is not None and not fits(d)):
            continue
        ddir = os.path.join(base, os.fsdecode(d))
        shown = os.fsencode(DIRECTORY) + b'/' + d
        try:
            with open(os.path.join(ddir, SELECTOR_FILE), 'rb') as f:
                selector = f.read(256).split(b'\n', 1)[0].strip()
        except (FileNotFoundError, NotADirectoryError):
            selector = None
        except OSError as err:
            raise Dkim(b'Unable to read ' + shown + b'/selector: '
                       + (err.strerror or 'error').encode() + b'. (#4.3.0)\n') from None
        if selector is None:
            # No selector file: the key "default", if there; else none
            # yet (a key made, its record not yet published: unsigned,
            # not waiting)
            if not os.path.lexists(os.path.join(ddir, os.fsdecode(DEFAULT_SELECTOR))):
                continue
            selector = DEFAULT_SELECTOR
        if not SELECTOR_OK.match(selector):
            raise Dkim(b'The selector in ' + shown + b'/selector is no selector. (#4.3.0)\n')
        return d, selector, os.path.join(ddir, os.fsdecode(selector))
    return None


def key_for(header: bytes, sender: bytes, control_dir: str = 'control'):
    """(signing domain, selector, key path) for a message whose header
    (a wire_form one) and envelope sender are these, or None: no key
    applies.  Raises Dkim."""
    if not configured(control_dir):
        return None
    if delivered_here(header):
        return None             # passed through a delivery here: a forward, a list
    domain = from_domain(header)
    if domain is None:
        return None             # no From: field, which a signature must cover
    at = sender.rpartition(b'@')
    sender_domain = dns_form(at[2].decode('utf-8', 'replace')) if at[1] else None
    if not sender_domain:
        return None             # a bounce, or a sender without a domain

    def fits(d):                # the envelope's domain is under it too
        return sender_domain == d or sender_domain.endswith(b'.' + d)
    return find_key(control_dir, domain or sender_domain, fits)


def delivered_here(header: bytes) -> bool:
    """Has the message a Delivered-To: field (qmail-local's): it was
    delivered here and sent on, by a .qmail forward (an & line, forward,
    condredirect) or a list.  (A program given the message without
    preline, piping it to qmail-inject, gets no Delivered-To: what it
    sends on is its own, signed as the user's.)
    What arrives from anywhere (with any envelope sender: an SMTP client
    needs no AUTH to give one of ours) may reach a forward: it is not
    this host's to vouch for."""
    for line in header.split(b'\r\n'):
        name, sep, _ = line.partition(b':')
        if sep and name.lower() == b'delivered-to':
            return True
    return False


def sign(message: bytes, found) -> bytes:
    """The DKIM-Signature field (its lines ending in LF, as a queue file's)
    for message (the queue's file as it is) with found (key_for's).
    Raises Dkim (the key, the module), Unsigned (the message),
    MemoryError."""
    d, selector, path = found
    shown = os.fsencode(DIRECTORY) + b'/' + d + b'/' + selector
    try:
        with open(path, 'rb') as f:
            key = f.read(1 << 16)
    except OSError as err:
        raise Dkim(b'Unable to read the DKIM key ' + shown + b': '
                   + (err.strerror or 'error').encode() + b'. (#4.3.0)\n') from None
    try:
        import dkim
        import dkim.crypto
    except ImportError:
        raise Dkim(b'There are DKIM keys in ' + os.fsencode(DIRECTORY) + b', but the dkim '
                   b'module (dkimpy) is missing. (#4.3.0)\n') from None
    try:
        dkim.crypto.parse_pem_private_key(key)
    except MemoryError:
        raise
    except Exception as err:        # dkim.crypto.UnparsableKeyError and the like
        raise Dkim(b'Unable to use the DKIM key ' + shown + b': ' + printable(err)
                   + b'. (#4.3.0)\n') from None
    try:
        field = dkim.sign(wire_form(message), selector, d, key,
                          canonicalize=(b'relaxed', b'relaxed'))
    except MemoryError:
        raise
    except Exception as err:        # the message's: dkim.MessageFormatError ...
        raise Unsigned(printable(err)) from None
    return field.replace(b'\r\n', b'\n')


def printable(err: BaseException) -> bytes:
    return remote_smtp.safe(str(err) or type(err).__name__)[:200]
