"""DKIM signatures for qmail-remote (part of qmail-remote; beyond qmail).

Reads:    HOME/control/domainkeys/DOMAIN/SELECTOR, the private key (PEM,
          RSA) that signs mail from DOMAIN with that selector, as the
          qmail DKIM setups lay them out; the public key goes into DNS as
          the TXT record SELECTOR._domainkey.DOMAIN.  A domain's
          directory holds one key, or, while a new one takes over, two:
          the one whose name sorts last signs.  Readable by qmailr
          (qmail-remote runs as qmailr, group qmail): chgrp qmail, chmod
          640 each key.
Signs:    each message qmail-remote sends whose From: address (else,
          a From: without one, the envelope sender's; a message with no
          From: cannot be signed) is at a domain with a key,
          or under one (mail from lists.example.org with example.org's
          key, which DMARC's relaxed alignment accepts); nothing else.
          RFC 6376, rsa-sha256, c=relaxed/relaxed, dkimpy's choice of
          header fields (From signed twice, so no second From: can be
          added).  The message is signed as it goes on the wire: each
          line end (LF, CR LF or a lone CR in the queue's file) as CR
          LF, which is what remote_smtp's Blaster sends.
Fails:    (Dkim's args: the text of qmail-remote's Z report) a key that
          cannot be read or used, or the dkim module (dkimpy) missing
          when there are keys: the mail waits, never goes unsigned.
"""

import email.utils
import os

DIRECTORY = 'control/domainkeys'     # as the reports name it
SUBDIR = 'domainkeys'                 # in the control directory


class Dkim(Exception):
    """Signing failed: args[0] is the report's text (bytes)."""


def wire_form(message: bytes) -> bytes:
    """The message's line ends as they are sent: CR LF."""
    return message.replace(b'\r\n', b'\n').replace(b'\r', b'\n').replace(b'\n', b'\r\n')


def header_of(message: bytes) -> bytes:
    """The header (up to the first empty line) of a wire_form message."""
    end = message.find(b'\r\n\r\n')
    if message.startswith(b'\r\n'):
        return b''
    return message if end == -1 else message[:end + 2]


def from_domain(header: bytes):
    """The domain of the From: field's first address, lowercased; b''
    for a From: with no address with a domain in it; None, no From:."""
    value = None
    for line in header.split(b'\r\n'):
        if value is not None:
            if line[:1] in (b' ', b'\t'):
                value += b' ' + line.strip()
                continue
            break
        name, sep, rest = line.partition(b':')
        if sep and name.strip().lower() == b'from':
            value = rest.strip()
    if value is None:
        return None
    for _, addr in email.utils.getaddresses([value.decode('latin-1')]):
        domain = addr.rpartition('@')[2]
        if '@' in addr and domain:
            return domain.strip().lower().rstrip('.').encode('latin-1')
    return b''


def candidates(domain: bytes):
    """domain, then each domain above it with at least one dot
    (a.b.example.org: b.example.org, example.org)."""
    labels = domain.split(b'.')
    return [b'.'.join(labels[i:]) for i in range(len(labels) - 1)] or [domain]


def find_key(control_dir: str, domain: bytes):
    """(signing domain, selector, key path) for mail from domain, or
    None.  control_dir: the home's control (qmail-remote's: 'control')."""
    base = os.path.join(control_dir, SUBDIR)
    for d in candidates(domain):
        if not d or d.startswith(b'.') or b'/' in d or d in (b'.', b'..'):
            continue
        try:
            names = [n for n in os.listdir(os.path.join(base, os.fsdecode(d)))
                     if not n.startswith('.')]
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            raise Dkim(b'Unable to read ' + os.fsencode(DIRECTORY) + b'/' + d
                       + b'. (#4.3.0)\n') from None
        if names:
            selector = max(names)
            return d, os.fsencode(selector), os.path.join(base, os.fsdecode(d), selector)
    return None


def configured(control_dir: str = 'control') -> bool:
    return os.path.isdir(os.path.join(control_dir, SUBDIR))


def signature(message: bytes, sender: bytes, control_dir: str = 'control'):
    """The DKIM-Signature field (its lines ending in LF, as a queue file's)
    for message (the queue's file as it is), and (domain, selector);
    None when no key signs its mail.  Raises Dkim."""
    if not configured(control_dir):
        return None
    wire = wire_form(message)
    domain = from_domain(header_of(wire))
    if domain is None:
        return None             # no From: field, which a signature must cover
    if not domain:
        at = sender.rpartition(b'@')
        domain = at[2].lower() if at[1] else None
    if not domain:
        return None
    found = find_key(control_dir, domain)
    if found is None:
        return None
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
    except ImportError:
        raise Dkim(b'There are DKIM keys in ' + os.fsencode(DIRECTORY) + b', but the dkim '
                   b'module (dkimpy) is missing. (#4.3.0)\n') from None
    try:
        field = dkim.sign(wire, selector, d, key,
                          canonicalize=(b'relaxed', b'relaxed'))
    except Exception as err:        # dkim.DKIMException, a key it cannot parse
        text = str(err).encode('ascii', 'replace')[:200]
        raise Dkim(b'Unable to sign with the DKIM key ' + shown + b': '
                   + bytes(c if 32 <= c < 127 else 63 for c in text) + b'. (#4.3.0)\n') from None
    return field.replace(b'\r\n', b'\n'), (d, selector)
