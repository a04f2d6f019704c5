"""qmail-pw2u: build users/assign lines from a passwd file.

Usage:    qmail-pw2u [-/ohHuUC] [-cCHAR] < passwd > assign
Runs as:  the admin, as `qmail-pw2u < /etc/passwd > HOME/users/assign`
          (then qmail-newu).
Options:  -o (default) skip a user whose home is missing or not his;
          -h stop if a home is missing, skip one not owned by its user;
          -H do not look at homes; -U (default) skip names with
          uppercase letters; -u allow them; -cCHAR use CHAR as the
          user-extension break instead of conf-break ('-'); -C no
          extensions; -/ use home/.qmail-/... instead of home/.qmail-...
Reads:    fd 0, V7 passwd lines user:password:uid:gid:gecos:home:shell;
          HOME/users/include, exclude, mailnames (list controls),
          subusers and append, each optional.
Writes:   fd 1, qmail-users(5) assignments ending with a '.' line.
Exits:    0 done; 100 bad option; 111 with "qmail-pw2u: fatal: ..." for
          trouble reading, writing, a home that cannot be stat()ed (or,
          with -h, is missing), no alias user, or a subuser whose user
          is unknown.  Nothing is written to fd 1 then.
See:      qmail-pw2u(8), qmail-users(5), qmail-getpw(8).

Rules, as qmail-pw2u.c applies them, in this order: skip a line with a
NUL or fewer than six ':'; skip uid 0 (the uid as scan_ulong reads it);
skip uppercase names (-U); skip names not in include (if it exists) or
in exclude; then the home rule.  include, exclude, mailnames and the
subusers' user field match names without regard to case, and for a
name listed twice the last line wins.  The uid and gid are copied as
written.  A user named exactly as the alias user (conf-users) also gets
the catch-all wildcard "+:alias:...:-::", printed before its own lines;
its lines name this home's alias/ directory, not the passwd home (the
same in a default install), as qmail-getpw's fallback does.  A subuser
can only name a user that passed the rules.
"""

import errno
import os
import sys

from qmail import getpw
from qmail.lib import auto, control
from qmail.lib.error import error_str, flushed_status, guard_stdout, interrupt_kills
from qmail.lib.users import scan_ulong

FATAL = b'qmail-pw2u: fatal: '
# conf-break: the user-extension delimiter.  auto.BREAK if the install sets it.
BREAK = getattr(auto, 'BREAK', '-').encode()


class Fatal(Exception):
    """Stop with exit 111; the message (bytes) follows FATAL."""

    def __init__(self, message: bytes):
        super().__init__(message)
        self.message = message


class Usage(Exception):
    """A bad option: exit 100."""


class Options:
    def __init__(self):
        self.dashcolon = b'-:'
        self.homestrategy = 2   # 2 -o, 1 -h, 0 -H
        self.flagnoupper = True
        self.brk = BREAK        # b'' with -C

    def __repr__(self):
        return 'Options(%r)' % vars(self)


class Rules:
    """users/include, exclude, mailnames: None when the file is missing.

    include and exclude are sets of lowercased names; mailnames maps a
    lowercased name to the rest of its line (the mailnames, ':'-separated).
    """

    def __init__(self, include=None, exclude=None, mailnames=None):
        self.include = include
        self.exclude = exclude
        self.mailnames = mailnames


def name_set(lines):
    return None if lines is None else {line.lower() for line in lines}


def name_map(lines):
    """qmail's constmap with flagcolon: key before the first ':', lines
    without one ignored, the last of duplicate keys winning."""
    if lines is None:
        return None
    out = {}
    for line in lines:
        key, colon, value = line.partition(b':')
        if colon:
            out[key.lower()] = value
    return out


def parse_options(argv) -> Options:
    """sgetopt with "/ohHuUc:C"; the first non-option ends the options."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == b'--':
            break
        if not arg.startswith(b'-') or arg == b'-':
            break
        j = 1
        while j < len(arg):
            c = arg[j:j + 1]
            j += 1
            if c == b'/':
                opts.dashcolon = b'-/:'
            elif c == b'o':
                opts.homestrategy = 2
            elif c == b'h':
                opts.homestrategy = 1
            elif c == b'H':
                opts.homestrategy = 0
            elif c == b'u':
                opts.flagnoupper = False
            elif c == b'U':
                opts.flagnoupper = True
            elif c == b'C':
                opts.brk = b''
            elif c == b'c':
                if j < len(arg):
                    optarg = arg[j:]
                elif i + 1 < len(argv):
                    i += 1
                    optarg = argv[i]
                else:
                    raise Usage('option requires an argument -- c')
                opts.brk = optarg[:1]      # "" turns extensions off, as -C
                break
            else:
                raise Usage('illegal option -- %s' % c.decode('latin-1'))
        i += 1
    return opts


def parse_passwd_line(line: bytes):
    """(user, uidstr, gidstr, home) of a passwd line, or None to skip it."""
    if b'\0' in line:
        return None
    fields = line.split(b':', 6)
    if len(fields) < 7:
        return None
    return fields[0], fields[2], fields[3], fields[5]


def wanted(user: bytes, uid: int, home: bytes, opts, rules, stat_fn) -> bool:
    """The skipping rules; raises Fatal when a home cannot be judged."""
    if not uid:
        return False
    if opts.flagnoupper and any(65 <= c <= 90 for c in user):
        return False
    if rules.include is not None and user.lower() not in rules.include:
        return False
    if rules.exclude is not None and user.lower() in rules.exclude:
        return False
    if opts.homestrategy:
        try:
            st = stat_fn(home)
        except OSError as err:
            if err.errno != errno.ENOENT or opts.homestrategy == 1:
                raise Fatal(b'unable to stat ' + home + b': ' + error_str(err)) from err
            return False
        if st.st_uid != uid:
            return False
    return True


def split_lines(data: bytes) -> list:
    """getln's lines: split after each newline only, the last maybe partial."""
    lines = data.split(b'\n')
    out = [line + b'\n' for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def account(line: bytes, opts, rules, stat_fn, alias: bytes):
    """(assignment lines, user, uugh) for one passwd line; None if skipped.

    uugh is ":user:uid:gid:home:", the middle of every assignment.
    """
    fields = parse_passwd_line(line)
    if fields is None:
        return None
    user, uidstr, gidstr, home = fields
    if not wanted(user, scan_ulong(uidstr), home, opts, rules, stat_fn):
        return None
    if user == alias:
        home = getpw.alias_home()       # where qmail-getpw's fallback looks
    uugh = b':' + user + b':' + uidstr + b':' + gidstr + b':' + home + b':'
    out = []
    if user == alias:
        out.append(b'+' + uugh + opts.dashcolon + b':\n')
    names = None
    if rules.mailnames is not None:
        names = rules.mailnames.get(user.lower())
    if names is None:
        names = user
    for name in names.split(b':'):
        if not name:
            continue
        out.append(b'=' + name + uugh + b'::\n')
        if opts.brk:
            out.append(b'+' + name + opts.brk + uugh + opts.dashcolon + b':\n')
    return out, user, uugh


def accounts(lines, opts, rules, stat_fn, alias: bytes):
    """(assignment lines, {lowercased user: uugh}) for all passwd lines.

    Raises Fatal if no alias user came through the rules.
    """
    out = []
    allusers = {}
    flagalias = False
    for line in lines:
        got = account(line, opts, rules, stat_fn, alias)
        if got is None:
            continue
        lines_, user, uugh = got
        out += lines_
        allusers[user.lower()] = uugh
        flagalias = flagalias or user == alias
    if not flagalias:
        raise Fatal(b'unable to find ' + alias + b' user')
    return out, allusers


def subuser(line: bytes, allusers: dict, opts):
    """The assignment lines for one users/subusers line sub:user:pre:."""
    sub, colon, rest = line.partition(b':')
    if not colon:
        return []
    user, colon, rest = rest.partition(b':')
    if not colon:
        return []
    uugh = allusers.get(user.lower())
    if uugh is None:
        raise Fatal(b'unable to find ' + user + b' user for subuser')
    pre, colon, rest = rest.partition(b':')
    if not colon:
        return []
    out = [b'=' + sub + uugh + opts.dashcolon + pre + b':\n']
    if opts.brk:
        out.append(b'+' + sub + opts.brk + uugh + opts.dashcolon + pre + b'-:\n')
    return out


def no_file(name: str):
    return None


def pw2u(passwd: bytes, opts, rules, stat_fn, load=no_file,
         alias: bytes = None) -> bytes:
    """The whole output for passwd, as bytes; raises Fatal.

    stat_fn(home) stats a home directory; load(name) gives the bytes of
    users/subusers or users/append, or None if missing.  They are asked
    for after the accounts, as qmail-pw2u reads them, so a missing alias
    user is reported first.
    """
    if alias is None:
        alias = auto.USER_ALIAS.encode()
    out, allusers = accounts(split_lines(passwd), opts, rules, stat_fn, alias)
    subusers = load('subusers')
    if subusers is not None:
        for line in split_lines(subusers):
            out += subuser(line, allusers, opts)
    append = load('append')
    if append is not None:
        out.append(append)
    out.append(b'.\n')
    return b''.join(out)


# -- I/O --------------------------------------------------------------------

def read_rules(users: str) -> Rules:
    try:
        return Rules(name_set(control.readfile(os.path.join(users, 'include'))),
                     name_set(control.readfile(os.path.join(users, 'exclude'))),
                     name_map(control.readfile(os.path.join(users, 'mailnames'))))
    except OSError as err:
        raise Fatal(b'unable to read controls') from err


def read_optional(path: str):
    """A users/ file's bytes, or None if it does not exist."""
    try:
        f = open(path, 'rb')
    except FileNotFoundError:
        return None
    except OSError as err:
        raise Fatal(b'unable to read controls') from err
    with f:
        try:
            return f.read()
        except OSError as err:
            raise Fatal(b'unable to read input') from err


def warn(data: bytes) -> None:
    """Bytes to stderr (a home directory's name need not be UTF-8)."""
    sys.stderr.flush()
    buf = getattr(sys.stderr, 'buffer', None)
    if buf is None:
        sys.stderr.write(data.decode('utf-8', 'backslashreplace'))
        return
    buf.write(data)
    buf.flush()


def main(argv=None, stdin=None, stdout=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    argv = [a if isinstance(a, bytes) else os.fsencode(a) for a in argv]
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    try:
        opts = parse_options(argv)
    except Usage as err:
        sys.stderr.write('qmail-pw2u: %s\n' % err)
        return 100
    users = os.path.join(auto.QMAIL, 'users')
    try:
        if not os.path.isdir(auto.QMAIL):
            raise Fatal(b'unable to chdir')
        rules = read_rules(users)
        try:
            passwd = stdin.read()
        except OSError as err:
            raise Fatal(b'unable to read input') from err
        out = pw2u(passwd, opts, rules, os.stat,
                   lambda name: read_optional(os.path.join(users, name)))
        try:
            stdout.write(out)
            stdout.flush()
        except OSError as err:
            raise Fatal(b'unable to write output') from err
    except Fatal as err:
        warn(FATAL + err.message + b'\n')
        return 111
    return 0


def run():
    interrupt_kills()
    guard_stdout()                  # a full disk or closed fd 1: one line, 111
    try:
        code = main()
    except MemoryError:
        sys.stderr.write('qmail-pw2u: fatal: out of memory\n')
        code = 111
    except Exception as e:                  # last resort: temporary
        sys.stderr.write('qmail-pw2u: fatal: internal bug: %s\n'
                         % type(e).__name__)
        code = 111
    sys.exit(flushed_status(code, 'qmail-pw2u'))


if __name__ == '__main__':
    run()
