"""qmail-inject: preprocess and send a mail message.

Usage:    qmail-inject [-nNaAhHr] [-fsender] [-Fname] [recip ...]
Runs as:  the user sending mail; also inside sendmail's process.
Reads:    fd 0, the message.  The environment (qmail-inject(8) ENVIRONMENT
          VARIABLES): QMAILUSER MAILUSER USER LOGNAME, QMAILHOST MAILHOST,
          QMAILNAME MAILNAME NAME, QMAILSUSER QMAILSHOST, QMAILINJECT,
          QMAILMFTFILE, QMAILDEFAULTDOMAIN QMAILDEFAULTHOST QMAILIDHOST
          QMAILPLUSDOMAIN, QMAILQUEUE.  HOME/control/defaultdomain,
          defaulthost, idhost, plusdomain (each defaulting to control/me,
          then to its own name).
Writes:   the message, its header rewritten per qmail-header(5), to
          qmail-queue ($QMAILQUEUE, else HOME/bin/qmail-queue) with its
          envelope; with -n to fd 1 instead, headed by Return-Path.
Options:  -a -A -h -H choose recipients (arguments, header, or both);
          -f sender; -n print, -N queue (default); and, beyond qmail's
          man page, -r (same as QMAILINJECT=r) and -F name (the personal
          name, overriding QMAILNAME MAILNAME NAME; sendmail's -F).
VERPs:    r (or -r) turns the default sender box@host into
          box-@host-@[] and a Return-Path sender pre@host into
          pre@host-@[]; -f's sender is left alone.  qmail-send then
          writes box-recip=domain@host for each recipient (addresses(5)).
          m appends -time.pid to the default sender's box.
Exits:    0 queued (or printed); 100 bad usage, an address or header that
          does not parse, no recipients (not qmail, which queues such a
          message for nobody), or qmail-queue's permanent failure; 111
          temporary trouble.  One line on fd 2 on failure.
See:      qmail-inject(8), qmail-header(5), addresses(5), envelopes(5).
"""

import os
import signal
import sys
import time

from qmail.lib import auto
from qmail.lib import blockread
from qmail.lib import control
from qmail.lib.qqtalk import QueueClient, queue_program
from qmail.inject_token import (
    ATOM, AT, COLON, COMMENT, LEFT, QUOTE, RIGHT,
    ParseError, Rules, quote2, quote_need, rewrite_address, rewrite_field,
    unparse,
)

BUFSIZE = 65536

# Recipient strategies (-A, -a, -h, -H).
RECIP_DEFAULT = 'A'
RECIP_ARGS = 'a'
RECIP_HEADER = 'h'
RECIP_AH = 'H'

OPTIONS = 'aAhHnNf:rF:'

# hfield.c's known fields; every other field only has to be valid.
KNOWN_FIELDS = frozenset((
    b'sender', b'from', b'reply-to', b'to', b'cc', b'bcc', b'date',
    b'message-id', b'subject', b'resent-sender', b'resent-from',
    b'resent-reply-to', b'resent-to', b'resent-cc', b'resent-bcc',
    b'resent-date', b'resent-message-id', b'return-receipt-to',
    b'errors-to', b'apparently-to', b'received', b'return-path',
    b'delivered-to', b'content-length', b'content-type',
    b'content-transfer-encoding', b'notice-requested-upon-delivery-to',
    b'mail-followup-to',
))
# qmail-header(5) "SENDER ADDRESSES", rewritten but not recipients.
SENDER_FIELDS = frozenset((
    b'sender', b'from', b'reply-to', b'return-receipt-to', b'errors-to',
    b'resent-sender', b'resent-from', b'resent-reply-to',
))
RESENT_FIELDS = frozenset((
    b'resent-sender', b'resent-from', b'resent-reply-to', b'resent-to',
    b'resent-cc', b'resent-bcc', b'resent-date', b'resent-message-id',
))
# Fields that never leave qmail-inject.
DELETED_FIELDS = frozenset((
    b'bcc', b'resent-bcc', b'return-path', b'content-length',
))

MONTHS = (b'Jan', b'Feb', b'Mar', b'Apr', b'May', b'Jun', b'Jul', b'Aug',
          b'Sep', b'Oct', b'Nov', b'Dec')

# The envelope sender's tail asking qmail-send for a per-recipient VERP:
# pre@host-@[] goes out as prerecip=domain@host (addresses(5)).
VERP_TAIL = b'-@[]'


class Fatal(Exception):
    """qmail-inject gives up: code 100 or 111, text for "fatal: ..."."""

    def __init__(self, code: int, text: bytes):
        super().__init__(text)
        self.code = code
        self.text = text


def one_line(text: bytes) -> bytes:
    """A header field shown in a diagnostic: qmail prints it as it is,
    on the lines after the message; here it is folded onto the message's
    line, so that a failure stays one line of stderr (and of a bounce)."""
    return text.rstrip(b'\n').replace(b'\r', b' ').replace(b'\n', b' ')


def cannot_parse(line: bytes) -> Fatal:
    return Fatal(100, b'unable to parse this line: ' + one_line(line))


def cstr(s: bytes) -> bytes:
    """What C sees of a string: up to its first NUL (qmail_from, qmail_to)."""
    nul = s.find(b'\0')
    return s if nul < 0 else s[:nul]


# ---------------------------------------------------------------- settings

class Settings:
    """Everything qmail-inject takes from its environment and controls."""

    def __init__(self):
        self.flagnamecomment = False    # QMAILINJECT c
        self.flagdeletesender = False   # s
        self.flagdeletefrom = False     # f
        self.flagdeletemessid = False   # i
        self.flaghackrecip = False      # r, or -r
        self.flaghackmess = False       # m
        self.mailhost = None
        self.mailrhost = None
        self.mailuser = b'anonymous'
        self.mailruser = b'anonymous'
        self.fullname = None
        self.idhost = b'idhost'
        self.idhost_control = False     # from control/idhost (or me), not QMAILIDHOST
        self.rules = Rules(b'defaulthost', b'defaultdomain', b'plusdomain')
        self.mft = None                 # lowercased addresses, or None


def env_first(env, *names):
    for name in names:
        value = env.get(name)
        if value is not None:
            return value
    return None


def refuse_line_break(value, what: bytes, code: int = 100):
    """Beyond qmail: a name, user or host that goes into a header field
    the program makes (From, Message-ID) or into the envelope must not
    break its line: "sendmail -f" with a line break in it (a web form's
    input, say) added header fields of the sender's choosing.  Checked
    where the value is used, so one the message makes no use of (NAME,
    when it brings its own From) stops nothing, as with qmail.  code:
    111 where the value is the admin's (a control file saved with CR LF
    ends its line in a CR), not the caller's."""
    if value is not None and (b'\n' in value or b'\r' in value):
        raise Fatal(code, b'line break in the ' + what)


def settings_from(env, ctl: dict, mft=None) -> Settings:
    """Settings from an environment (bytes to bytes) and control values.

    ctl maps defaultdomain, defaulthost, plusdomain, idhost to their
    control values (defaults already applied); the QMAIL* variables
    override them.  mft is QMAILMFTFILE's lines, or None.  ParseError if
    a default host or domain is not RFC 822 text.
    """
    s = Settings()
    for letter in env.get(b'QMAILINJECT', b''):
        if letter == ord('c'):
            s.flagnamecomment = True
        elif letter == ord('s'):
            s.flagdeletesender = True
        elif letter == ord('f'):
            s.flagdeletefrom = True
        elif letter == ord('i'):
            s.flagdeletemessid = True
        elif letter == ord('r'):
            s.flaghackrecip = True
        elif letter == ord('m'):
            s.flaghackmess = True
    s.mailhost = env_first(env, b'QMAILHOST', b'MAILHOST')
    s.mailrhost = env_first(env, b'QMAILSHOST')
    if s.mailrhost is None:
        s.mailrhost = s.mailhost
    user = env_first(env, b'QMAILUSER', b'MAILUSER', b'USER', b'LOGNAME')
    s.mailuser = b'anonymous' if user is None else user
    s.mailruser = env_first(env, b'QMAILSUSER')
    if s.mailruser is None:
        s.mailruser = s.mailuser
    s.fullname = env_first(env, b'QMAILNAME', b'MAILNAME', b'NAME')
    defaultdomain = env_first(env, b'QMAILDEFAULTDOMAIN')
    defaulthost = env_first(env, b'QMAILDEFAULTHOST')
    plusdomain = env_first(env, b'QMAILPLUSDOMAIN')
    idhost = env_first(env, b'QMAILIDHOST')
    s.rules = Rules(
        ctl['defaulthost'] if defaulthost is None else defaulthost,
        ctl['defaultdomain'] if defaultdomain is None else defaultdomain,
        ctl['plusdomain'] if plusdomain is None else plusdomain)
    s.idhost = ctl['idhost'] if idhost is None else idhost
    s.idhost_control = idhost is None
    if mft is not None:
        s.mft = frozenset(line.lower() for line in mft)
    return s


# ---------------------------------------------------------------- header fields

def hfield_known(h: bytes):
    """The lowercased name of a field qmail knows, else None."""
    colon = h.find(b':')
    if colon < 0:
        return None
    name = h[:colon].rstrip(b' \t').lower()
    return name if name in KNOWN_FIELDS else None


def hfield_valid(h: bytes) -> bool:
    """A header field: a nonempty name of printable non-space ASCII,
    perhaps spaces or tabs, then a colon."""
    colon = h.find(b':')
    if colon < 0:
        return False
    name = h[:colon].rstrip(b' \t')
    if not name:
        return False
    return all(33 <= c <= 126 for c in name)


def date_field(now: int) -> bytes:
    """"Date: 26 Sep 1995 04:46:53 -0000\\n" (newfield.c), in GMT."""
    t = time.gmtime(now)
    return b'Date: %d %s %d %02d:%02d:%02d -0000\n' % (
        t.tm_mday, MONTHS[t.tm_mon - 1], t.tm_year,
        t.tm_hour, t.tm_min, t.tm_sec)


def msgid_field(now: int, pid: int, idhost: bytes, control: bool = False) -> bytes:
    """"Message-ID: <19950926044653.12345.qmail@idhost>\\n" (newfield.c);
    control: idhost is control/idhost's (or me's), not QMAILIDHOST."""
    if control:
        refuse_line_break(idhost, b'host of control/idhost (or me)', 111)
    refuse_line_break(idhost, b'host')
    t = time.gmtime(now)
    return b'Message-ID: <%d%02d%02d%02d%02d%02d.%d.qmail@%s>\n' % (
        t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
        pid, idhost)


def default_from(s: Settings) -> bytes:
    """The From field qmail-inject makes for the user (without "Resent-")."""
    for what, value in ((b'name', s.fullname), (b'user', s.mailuser),
                        (b'host', s.mailhost)):
        refuse_line_break(value, what)
    named = s.fullname is not None
    tokens = [(ATOM, b'From'), (COLON, b'')]
    if named and not s.flagnamecomment:
        tokens += [(QUOTE, s.fullname), (LEFT, b'')]
    tokens.append((QUOTE if quote_need(s.mailuser) else ATOM, s.mailuser))
    if s.mailhost is not None:
        tokens += [(AT, b''), (ATOM, s.mailhost)]
    if named and not s.flagnamecomment:
        tokens.append((RIGHT, b''))
    if named and s.flagnamecomment:
        tokens.append((COMMENT, s.fullname))
    # Written out and read back, as qmail does, so that odd user or host
    # names come out exactly as qmail would rewrite them.
    text = unparse(tokens)
    try:
        text, _ = rewrite_field(text, s.rules)
    except ParseError:
        raise cannot_parse(text) from None
    return text


def default_sender(s: Settings, now: int, pid: int) -> bytes:
    """The envelope sender when neither -f nor Return-Path gives one:
    QMAILSUSER@QMAILSHOST (else the From user and host), with the m
    and r VERP tails."""
    refuse_line_break(s.mailruser, b'user')
    refuse_line_break(s.mailrhost, b'host')
    box = s.mailruser
    if s.flaghackmess:
        box += b'-%d.%d' % (now, pid)
    if s.flaghackrecip:
        box += b'-'
    tokens = [(ATOM, b'Return-Path'), (COLON, b''), (QUOTE, box)]
    if s.mailrhost is not None:
        tokens += [(AT, b''), (ATOM, s.mailrhost)]
    text = unparse(tokens)
    try:
        _, found = rewrite_field(text, s.rules)
    except ParseError:
        raise cannot_parse(text) from None
    if not found:
        return b''
    return found[0] + (VERP_TAIL if s.flaghackrecip else b'')


class Injection:
    """One message's header on its way through qmail-inject.

    Feed the fields to doheaderfield() in order, then finishheader();
    sender and recipients() then hold the envelope.
    """

    def __init__(self, settings: Settings, recipstrategy=RECIP_DEFAULT,
                 args=(), sender=None):
        """args: recipient arguments (bytes); sender: -f's, or None."""
        self.settings = settings
        if recipstrategy == RECIP_DEFAULT:
            recipstrategy = RECIP_ARGS if args else RECIP_HEADER
        self.reciplist = []
        if recipstrategy != RECIP_HEADER:
            for arg in args:
                try:
                    self.reciplist.append(
                        rewrite_address(arg, settings.rules))
                except ParseError:
                    raise Fatal(100, b'unable to parse address: '
                                + arg) from None
        self.flagrh = recipstrategy != RECIP_ARGS
        self.sender = sender
        self.seen = set()
        # The fields passed on, as one buffer: a header of a million
        # small fields costs its own size, not an object per field.
        self.savedh = bytearray()
        self.hrlist = []        # To Cc Bcc Apparently-To
        self.tocclist = []      # To Cc, for Mail-Followup-To
        self.hrrlist = []       # Resent-To Resent-Cc Resent-Bcc
        self.flagresent = False

    def doheaderfield(self, h: bytes):
        """Take one header field (folded lines joined, ending in \\n)."""
        s = self.settings
        htype = hfield_known(h)
        if s.flagdeletefrom and htype == b'from':
            return
        if s.flagdeletemessid and htype == b'message-id':
            return
        if s.flagdeletesender and htype == b'return-path':
            return
        if htype:
            self.seen.add(htype)
        elif not hfield_valid(h):
            raise Fatal(100, b'invalid header field: ' + one_line(h))

        # Recipient fields may fail to parse; sender fields may not.
        lists = ()
        addrfield = True
        mayfail = True
        if htype in (b'to', b'cc'):
            lists = (self.hrlist, self.tocclist)
        elif htype in (b'bcc', b'apparently-to'):
            lists = (self.hrlist,)
        elif htype in (b'resent-to', b'resent-cc', b'resent-bcc'):
            lists = (self.hrrlist,)
        elif htype == b'return-path' or htype in SENDER_FIELDS:
            mayfail = False
        else:
            addrfield = False

        if addrfield:
            try:
                h, found = rewrite_field(h, s.rules)
            except ParseError as err:
                # notqmail: a broken recipient field is passed on as it
                # is (it may come from a bounce being forwarded); what was
                # found before the trouble still counts.
                if not mayfail:
                    raise cannot_parse(h) from None
                found = err.addresses
            for found_list in lists:
                found_list.extend(found)
            if htype == b'return-path' and self.sender is None and found:
                self.sender = found[0]
                if s.flaghackrecip:
                    self.sender += VERP_TAIL

        if htype in DELETED_FIELDS:
            return
        self.savedh += h

    def finishheader(self, now: int, pid: int, flagqueue=True) -> bytes:
        """The header as it leaves qmail-inject; settles the sender."""
        s = self.settings
        seen = self.seen
        self.flagresent = bool(seen & RESENT_FIELDS)
        if self.sender is None:
            self.sender = default_sender(s, now, pid)
        out = []
        if not flagqueue:
            out.append(b'Return-Path: <' + quote2(cstr(self.sender))
                       + b'>\n')
        if self.flagresent:
            if b'resent-date' not in seen:
                out.append(b'Resent-' + date_field(now))
            if b'resent-message-id' not in seen:
                out.append(b'Resent-' + msgid_field(now, pid, s.idhost, s.idhost_control))
            if b'resent-from' not in seen:
                out.append(b'Resent-' + default_from(s))
            if b'resent-to' not in seen and b'resent-cc' not in seen:
                out.append(b'Resent-Cc: recipient list not shown: ;\n')
        else:
            if b'date' not in seen:
                out.append(date_field(now))
            if b'message-id' not in seen:
                out.append(msgid_field(now, pid, s.idhost, s.idhost_control))
            if b'from' not in seen:
                out.append(default_from(s))
            if b'to' not in seen and b'cc' not in seen:
                out.append(b'Cc: recipient list not shown: ;\n')
            out.append(self.followup())
        out.append(self.savedh)
        return b''.join(out)

    def followup(self) -> bytes:
        """Mail-Followup-To, if To+Cc names a list in QMAILMFTFILE."""
        mft = self.settings.mft
        if mft is None or b'mail-followup-to' in self.seen:
            return b''
        if not any(a.lower() in mft for a in self.tocclist):
            return b''
        return (b'Mail-Followup-To: '
                + b',\n  '.join(quote2(cstr(a))
                                for a in reversed(self.tocclist))
                + b'\n')

    def recipients(self) -> list:
        """The envelope recipients, in the order qmail-inject gives them."""
        recips = list(self.reciplist)
        if self.flagrh:
            recips += self.hrrlist if self.flagresent else self.hrlist
        return recips


def rewrite_header(fields, settings: Settings, now: int, pid: int,
                   recipstrategy=RECIP_DEFAULT, args=(), sender=None,
                   flagqueue=True):
    """The whole header work without I/O: (header, sender, recipients)."""
    inj = Injection(settings, recipstrategy, args, sender)
    for h in fields:
        inj.doheaderfield(h)
    header = inj.finishheader(now, pid, flagqueue)
    return header, inj.sender, inj.recipients()


FEW_FIELDS_MAX = 65536   # bytes of a line, and of a field, for qbiff and the like


def read_header(readline, fieldmax: int = None):
    """The header fields of a message, as headerbody.c splits it.

    Returns (fields, body): fields with folded lines joined; body is what
    starts the body -- b'\\n' after the blank line, or b'\\n' plus the
    first line that is not a header field (the header ends there, and a
    blank line is put in) -- or None if the input ended in the header.
    A "From " line becomes an MBOX-Line field.  A last line without a
    newline gets one.  fieldmax: keep no more of a field than about
    that (the rest of its lines are read and dropped).
    """
    end = []
    fields = list(header_fields(readline, end, fieldmax))
    return fields, end[0]


def capped_readline(readline, limit: int = FEW_FIELDS_MAX):
    """A readline (a buffered file's, which takes a size) that gives at
    most limit bytes of each line, the rest of a longer one read and
    dropped, the newline kept: a program that shows the start of a few
    fields (qbiff, maildirwatch) holds no more than that of a line a
    sender made as long as the message."""
    def capped():
        line = readline(limit)
        if len(line) < limit or line.endswith(b'\n'):
            return line
        while True:
            more = readline(limit)
            if not more:
                return line
            if more.endswith(b'\n'):
                return line + b'\n'
    return capped


def body_text(read, want: int) -> bytes:
    """Up to want bytes more of a message through read (a buffered
    file's: short only at its end), as headerbody.c's lines give them:
    a last line without a newline gets one."""
    data = read(want)
    if len(data) < want and data and not data.endswith(b'\n'):
        data += b'\n'
    return data


def header_fields(readline, end: list, fieldmax: int = None):
    """read_header() one field at a time, as they are read; once the
    header is over, end gets what starts the body (read_header's body).
    A field is gathered in one bytearray: a field folded a million times
    was a list of a million lines, some fifteen times its size."""
    current = None
    while True:
        line = readline()
        if not line:
            if current is not None:
                yield bytes(current)
            end.append(None)
            return
        if not line.endswith(b'\n'):
            line += b'\n'
        if current is not None:
            if line[0] in (0x20, 0x09):
                if fieldmax is None or len(current) < fieldmax:
                    current += line
                continue
            yield bytes(current)
            current = None
        if line == b'\n':
            end.append(b'\n')
            return
        if line.startswith(b'From '):
            current = bytearray(b'MBOX-Line: ')
            current += line
        elif hfield_valid(line):
            current = bytearray(line)
        else:
            end.append(b'\n' + line)
            return


# ---------------------------------------------------------------- options

class GetOpt:
    """djb's subgetopt over a list of bytes (no program name): options
    end at the first argument not starting with -, at a lone -, or after
    --; an option's argument is the rest of its word or the next word."""

    def __init__(self, args, opts: str):
        self.args = args
        self.ind = 0
        self.pos = 0
        self.arg = None
        self.problem = b''
        self.missing = False
        self.takes = {}
        for i, c in enumerate(opts):
            if c != ':':
                self.takes[ord(c)] = opts[i + 1:i + 2] == ':'

    def next(self):
        """The next option letter (str); None when options end; '?' for
        an unknown option or a missing argument (see problem, missing)."""
        self.arg = None
        args = self.args
        if self.ind >= len(args):
            return None
        if self.pos and self.pos >= len(args[self.ind]):
            self.ind += 1
            self.pos = 0
            if self.ind >= len(args):
                return None
        if not self.pos:
            word = args[self.ind]
            if word[:1] != b'-':
                return None
            self.pos = 1
            if word[1:2] in (b'-', b''):
                if word[1:2]:
                    self.ind += 1
                self.pos = 0
                return None
        c = args[self.ind][self.pos]
        self.pos += 1
        if c not in self.takes:
            self.problem = bytes((c,))
            return '?'
        if self.takes[c]:
            arg = args[self.ind][self.pos:]
            self.ind += 1
            self.pos = 0
            if not arg:
                if self.ind >= len(args):
                    self.problem = bytes((c,))
                    self.missing = True
                    return '?'
                arg = args[self.ind]
                self.ind += 1
            self.arg = arg
        return chr(c)

    def skip_word(self):
        """Drop the rest of the current word (sendmail's -E and -J)."""
        if self.pos:
            self.pos = len(self.args[self.ind])

    def complaint(self, progname: bytes) -> bytes:
        if self.missing:
            return progname + b': option requires an argument -- ' + self.problem
        return progname + b': illegal option -- ' + self.problem

    def rest(self) -> list:
        return self.args[self.ind:]


# ---------------------------------------------------------------- I/O

def complain(line: bytes):
    """One line on fd 2."""
    err = sys.stderr
    if err is None:
        return
    try:
        err.flush()
        buf = getattr(err, 'buffer', None)
        if buf is not None:
            buf.write(line + b'\n')
            buf.flush()
        else:
            err.write(line.decode('utf-8', 'replace') + '\n')
            err.flush()
    except (OSError, ValueError):
        pass


def read_controls(mftfile):
    """(control values, mft lines); chdirs to the qmail home, as qmail
    does before reading control/.  mftfile is read first, from the
    caller's directory."""
    mft = None
    if mftfile is not None:
        try:
            mft = control.readfile(mftfile)
        except OSError:
            raise Fatal(111, b'read error') from None
    try:
        os.chdir(auto.QMAIL)
    except OSError:
        raise Fatal(111, b'unable to switch to qmail home directory') from None
    ctl = control.Controls(os.path.join(auto.QMAIL, 'control'))
    values = {}
    try:
        ctl.init()
        for name in ('defaultdomain', 'defaulthost', 'plusdomain', 'idhost'):
            values[name] = ctl.line(name, name.encode(), flagme=True)
    except OSError:
        raise Fatal(111, b'read error') from None
    return values, mft


def copy_body(infile, put, first: bytes):
    """The body, streamed; a last line without a newline gets one."""
    put(first)
    last = first[-1:]
    while True:
        try:
            chunk = infile.read(BUFSIZE)
        except OSError:
            raise Fatal(111, b'read error') from None
        if not chunk:
            break
        put(chunk)
        last = chunk[-1:]
    if last and last != b'\n':
        put(b'\n')


def inject(argv, stdin=None, stdout=None) -> int:
    starttime = int(time.time())
    pid = os.getpid()
    env = os.environb
    args = [a if isinstance(a, bytes) else os.fsencode(a) for a in argv]

    ctl, mft = read_controls(env.get(b'QMAILMFTFILE'))
    try:
        settings = settings_from(env, ctl, mft)
    except ParseError as err:
        raise cannot_parse(err.line) from None

    recipstrategy = RECIP_DEFAULT
    flagqueue = True
    sender = None
    opts = GetOpt(args, OPTIONS)
    while True:
        opt = opts.next()
        if opt is None:
            break
        if opt == '?':
            complain(opts.complaint(b'qmail-inject'))
            return 100
        if opt in 'aAhH':
            recipstrategy = opt
        elif opt == 'n':
            flagqueue = False
        elif opt == 'N':
            flagqueue = True
        elif opt == 'r':
            settings.flaghackrecip = True
        elif opt == 'F':
            refuse_line_break(opts.arg, b'name')
            settings.fullname = opts.arg
        elif opt == 'f':
            refuse_line_break(opts.arg, b'sender')
            try:
                sender = rewrite_address(opts.arg, settings.rules)
            except ParseError as err:
                raise cannot_parse(err.line) from None

    inj = Injection(settings, recipstrategy, opts.rest(), sender)

    end = []
    try:
        if stdin is None:
            stdin = blockread.reader(0, BUFSIZE)
        for h in header_fields(stdin.readline, end):
            inj.doheaderfield(h)
    except OSError:
        raise Fatal(111, b'read error') from None
    body = end[0]
    header = inj.finishheader(starttime, pid, flagqueue)

    if not flagqueue:
        return print_message(stdin, stdout, header, body)

    recips = inj.recipients()
    if not recips:
        raise Fatal(100, b'no recipients')
    try:
        qq = QueueClient(queue_program())
    except OSError:
        raise Fatal(111, b'unable to run qmail-queue') from None
    qq.put(header)
    if body is not None:
        copy_body(stdin, qq.put, body)
    qq.from_(cstr(inj.sender))
    for recip in recips:
        qq.to(cstr(recip))
    status = qq.close()
    if status:
        raise Fatal(100 if status[0] == 'D' else 111,
                    status[1:].encode('utf-8', 'replace'))
    return 0


class FdWriter:
    """Buffered writes to a descriptor, with no flush left over for the
    interpreter's exit to trip on once the reader has gone away."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()

    def write(self, data: bytes):
        self.buf += data
        if len(self.buf) >= BUFSIZE:
            self.flush()

    def flush(self):
        while self.buf:
            n = os.write(self.fd, self.buf)
            del self.buf[:n]


def print_message(stdin, stdout, header: bytes, body) -> int:
    """-n: the message on fd 1.  A write failure, a reader gone away
    included, is fatal, 111: the C program ignores SIGPIPE and meets the
    failed write at its next read ("read error", 111), or, past the end
    of its input, not at all."""
    if stdout is None:
        stdout = FdWriter(1)
    try:
        stdout.write(header)
        if body is not None:
            copy_body(stdin, stdout.write, body)
        stdout.flush()
    except OSError:
        raise Fatal(111, b'unable to write output') from None
    return 0


def where(err: BaseException) -> str:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name if tb is not None else '?'


def main(argv=None, stdin=None, stdout=None) -> int:
    """qmail-inject with argv (no program name); stdin and stdout are
    binary files standing in for fds 0 and 1 (tests)."""
    if argv is None:
        argv = sys.argv[1:]
    try:
        return inject(argv, stdin, stdout)
    except Fatal as err:
        complain(b'qmail-inject: fatal: ' + err.text)
        return err.code
    except MemoryError:
        complain(b'qmail-inject: fatal: out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        complain(b'qmail-inject: fatal: internal bug (%s in %s)' % (
            type(err).__name__.encode(), where(err).encode()))
        return 111


def run():
    # Interrupted, qmail-inject just dies, as the C program does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(main())


if __name__ == '__main__':
    run()
