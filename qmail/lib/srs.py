"""SRS, the Sender Rewriting Scheme: a forwarded message's envelope
sender made an address of ours, so that the next host's SPF check
passes, and the bounces that come back to it go on to the real sender.

The scheme is Shevek's (Mail::SRS::Guarded, libsrs2: the qmail SRS
patch's), so addresses made by either are reversed by the other with
the same secret:

    SRS0=HHHH=TT=example.com=joe@srs.example.org
    SRS1=HHHH=fwd.example==HHHH=TT=example.com=joe@srs.example.org

HHHH: the first hashlength characters of the base64 HMAC-SHA1, under
the first secret, of the lowercased fields that follow; TT: the day,
two base32 characters (days since 1970, modulo 1024).  An SRS0 address
forwarded again becomes SRS1, naming the host that made the SRS0 (its
bounce goes back there); an SRS1 one keeps its first host.  A reversal
checks the hash under every secret (the newest first: a secret can be
replaced while addresses made with the old one still come back) and,
for SRS0, the age.

The controls are the qmail SRS patch's: srs_domain (the domain of the
addresses made; none: no rewriting), srs_secrets (one a line, the first
used to make), srs_maxage (days, 21), srs_hashlength (4), srs_hashmin
(the hashlength), srs_alwaysrewrite (0: a sender at a domain of ours,
rcpthosts, is kept) and srs_separator ('=' after SRS0, or '+' or '-').
Pure but for load(), which reads them.
"""

import os
import time

from qmail.lib import control

BASE32 = b'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'
DAY = 86400
TICKSLOTS = 1024            # two base32 characters of days
MAXAGE = 21
HASHLENGTH = 4
ADDRMAX = 899               # as qmail-smtpd's: qmail refuses 900 bytes (with its NUL, 901)


class SrsError(ValueError):
    """An address that cannot be reversed (or made): why, as text."""


class TooLong(SrsError):
    """The SRS address would be longer than an address may be."""

    def __init__(self):
        super().__init__('the SRS address would be too long')


class Srs:
    """One SRS setting: domain (bytes), secrets (the first makes), and
    the scheme's numbers; rcpthosts and morercpthosts say which senders
    are ours (kept unless alwaysrewrite)."""

    def __init__(self, domain: bytes, secrets, maxage=MAXAGE, hashlength=HASHLENGTH,
                 hashmin=None, alwaysrewrite=False, separator=b'=',
                 rcpthosts=None, morercpthosts=None):
        self.domain = domain
        # a list, or a function that reads them (OSError), called when a
        # hash is first wanted: a sender that stays as it is needs none
        self._secrets = secrets if callable(secrets) else [s for s in secrets if s]
        self.maxage = maxage if maxage > 0 else MAXAGE
        self.hashlength = hashlength if hashlength > 0 else HASHLENGTH
        self.hashmin = min(hashmin if hashmin else self.hashlength, self.hashlength)
        self.alwaysrewrite = alwaysrewrite
        self.separator = separator if separator in (b'=', b'+', b'-') else b'='
        self.rcpthosts, self.morercpthosts = rcpthosts, morercpthosts

    @property
    def secrets(self) -> list:
        if callable(self._secrets):
            self._secrets = [s for s in self._secrets() if s]
        return self._secrets

    # -- the pieces ------------------------------------------------------------

    def hash(self, secret: bytes, *fields: bytes) -> bytes:
        import base64
        import hmac             # (here: hashlib costs 4 ms a start, and a
                                # qmail-smtpd or condredirect with no SRS
                                # address to make or check needs none)
        mac = hmac.new(secret, b''.join(f.lower() for f in fields), 'sha1').digest()
        return base64.b64encode(mac).rstrip(b'=')

    def hash_ok(self, given: bytes, *fields: bytes) -> bool:
        import hmac
        if len(given) < self.hashmin:
            return False
        made = [self.hash(s, *fields)[:len(given)] for s in self.secrets]
        if any(hmac.compare_digest(given, m) for m in made):
            return True
        # a host on the way may have changed the case of the local part
        return any(hmac.compare_digest(given.lower(), m.lower()) for m in made)

    # -- making and reversing --------------------------------------------------

    def forward(self, sender: bytes, now: float = None) -> bytes:
        """The sender a forward of mail from sender goes out with: sender
        itself if it is the null sender, qmail's double-bounce or VERP
        sender (ending in @[]), has no domain, or is ours (unless
        alwaysrewrite); SrsError if there is no secret."""
        at = sender.rfind(b'@')
        if not sender or at <= 0 or at == len(sender) - 1 or sender.endswith(b'@[]'):
            return sender               # (#@[] and VERP's -@[]: qmail's own)
        user, host = sender[:at], sender[at + 1:]
        if b'@' in user:
            return sender               # a source route or worse: as it is
        if not self.alwaysrewrite and self.ours(sender):
            return sender
        if not self.secrets:
            raise SrsError('no secret in control/srs_secrets')
        tag = srs_tag(user)
        if tag == b'SRS1':
            # SRS1=HHHH=host==rest: the first host kept, hashed anew
            parts = user[5:].split(b'=', 2)
            if len(parts) == 3:
                return self.address(b'SRS1', parts[1], parts[2])
        elif tag == b'SRS0':
            return self.address(b'SRS1', host, user[4:])    # (its separator kept)
        stamp = timestamp(now)
        return self.address(b'SRS0', stamp, host, user)

    def address(self, tag: bytes, *fields: bytes) -> bytes:
        """tag, the separator, the hash of fields (first secret) and
        fields, joined by '=', at the SRS domain; TooLong if it is."""
        hashed = self.hash(self.secrets[0], *fields)[:self.hashlength]
        made = tag + self.separator + b'='.join((hashed,) + fields) + b'@' + self.domain
        if len(made) > ADDRMAX:
            raise TooLong()
        return made

    def reverse(self, address: bytes, now: float = None) -> bytes:
        """The address an SRS address of ours stands for (for SRS1, the
        SRS0 address of the host that made it); SrsError says why not."""
        at = address.rfind(b'@')
        local = address[:at] if at >= 0 else address
        tag = srs_tag(local)
        if tag is None:
            raise SrsError('not an SRS address')
        if not self.secrets:
            raise SrsError('no secret in control/srs_secrets')
        if tag == b'SRS1':
            parts = local[5:].split(b'=', 2)
            if len(parts) != 3 or not parts[1]:
                raise SrsError('a malformed SRS1 address')
            given, host, rest = parts
            if not self.hash_ok(given, host, rest):
                raise SrsError('its hash is wrong')
            return b'SRS0' + rest + b'@' + host
        parts = local[5:].split(b'=', 3)
        if len(parts) != 4 or not parts[2] or not parts[3]:
            raise SrsError('a malformed SRS0 address')
        given, stamp, host, user = parts
        if not self.hash_ok(given, stamp, host, user):
            raise SrsError('its hash is wrong')
        if not timestamp_ok(stamp, self.maxage, now):
            raise SrsError('it is too old')
        return user + b'@' + host

    def recipient_ok(self, addr: bytes) -> bool:
        """May a receiving server (qmail-smtpd, qmail-qmtpd) take addr?
        At the SRS domain only a good SRS address of ours, or postmaster
        (RFC 5321 4.5.1: every domain has one): srsfilter would bounce
        the rest, to a sender most likely forged.  Any other domain's,
        yes; and where the secrets cannot be read, yes (srsfilter
        decides)."""
        at = addr.rfind(b'@')
        if at < 0 or addr[at + 1:].lower().rstrip(b'.') != self.domain.rstrip(b'.'):
            return True
        if addr[:at].lower() == b'postmaster':
            return True
        try:
            if not self.secrets:
                return True
            self.reverse(addr)
        except SrsError:
            return False
        except OSError:
            return True
        return True

    def ours(self, sender: bytes) -> bool:
        """Is the sender at a domain of ours (rcpthosts, morercpthosts,
        or the SRS domain itself)?"""
        from qmail.smtpd_addr import addrallowed
        host = sender[sender.rfind(b'@') + 1:].lower()
        if host == self.domain.lower():
            return True
        if self.rcpthosts is None:
            return False                # no rcpthosts: no domain is known ours
        try:
            return addrallowed(sender, self.rcpthosts, self.morercpthosts)
        except Exception:
            return False                # (a broken morercpthosts.cdb: rewrite)


def srs_tag(local: bytes):
    """b'SRS0' or b'SRS1' when the local part starts with it and a
    separator (= + -, any case), else None."""
    tag = local[:5].upper()
    if len(tag) == 5 and tag[4:5] in b'=+-' and tag[:4] in (b'SRS0', b'SRS1'):
        return tag[:4]
    return None


def timestamp(now: float = None) -> bytes:
    days = int((time.time() if now is None else now) // DAY)
    return bytes((BASE32[(days >> 5) & 31], BASE32[days & 31]))


def timestamp_ok(stamp: bytes, maxage: int, now: float = None) -> bool:
    """Made within maxage days of today (not in the future)?"""
    stamp = stamp.upper()
    if len(stamp) != 2 or any(c not in BASE32 for c in stamp):
        return False
    then = BASE32.index(stamp[0]) * 32 + BASE32.index(stamp[1])
    today = int((time.time() if now is None else now) // DAY) % TICKSLOTS
    while today < then:
        today += TICKSLOTS
    return today <= then + maxage


FILES = ('srs_domain', 'srs_secrets', 'srs_maxage', 'srs_hashlength', 'srs_hashmin',
         'srs_alwaysrewrite', 'srs_separator')


def load(home: str):
    """The Srs of control/ under home, or None when srs_domain is
    missing or empty.  OSError when a control cannot be read."""
    return load_ctl(control.Controls(os.path.join(home, 'control')))


def load_ctl(ctl, reverse_only: bool = False):
    """load() from a control.Controls; reverse_only: for reversing and
    checking addresses alone (qmail-smtpd), without the domains that
    are ours (rcpthosts, morercpthosts.cdb)."""
    domain = ctl.line('srs_domain')
    if not domain:
        return None
    alwaysrewrite = ctl.int('srs_alwaysrewrite', 0) != 0
    rcpthosts = more = None
    if not alwaysrewrite and not reverse_only:
        lines = control.readfile(ctl.path('rcpthosts'))
        if lines is not None:
            rcpthosts = frozenset(line.lower() for line in lines if line)
            from qmail.lib import cdb
            try:
                more = cdb.open_lookup(ctl.path('morercpthosts.cdb'))
            except FileNotFoundError:
                more = None
    separator = ctl.line('srs_separator') or b'='
    return Srs(domain.strip().lower(), lambda: ctl.lines('srs_secrets'),
               ctl.int('srs_maxage', MAXAGE), ctl.int('srs_hashlength', HASHLENGTH),
               ctl.int('srs_hashmin', 0), alwaysrewrite, separator[:1], rcpthosts, more)


def rewrite(home: str, sender: bytes) -> bytes:
    """sender as a forward from this host sends it: made an SRS address
    when control/srs_domain says so and it is another domain's; as it
    is if it would be too long an address.  OSError when a control
    cannot be read, SrsError when there is no secret."""
    setting = load(home)
    if setting is None:
        return sender
    try:
        return setting.forward(sender)
    except TooLong:
        return sender
