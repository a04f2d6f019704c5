"""qmail-showctl: explain the qmail configuration.

Runs as:  anyone.
Reads:    HOME/control/*, and the install-time constants.
Writes:   fd 1, each control file with its effective value, saying
          "(Default.)" where the file is missing; files it does not know.
Exits:    0; 111 if the home or control/ cannot be read, or the
          report cannot be written (one line on fd 2).
See:      qmail-showctl(8), qmail-control(5), control/README.
"""

import os
import sys

from qmail.lib import auto, control, error
from qmail.lib.ctltable import CONTROLS, KNOWN_FILES


def safe(value: bytes) -> str:
    """Unprintable bytes become '?', as qmail-showctl prints them."""
    return ''.join(chr(c) if 32 <= c <= 126 else '?' for c in value)


def show_int(out, path, name, default, pre, post):
    out.append('\n%s: ' % name)
    try:
        value = control.readint(path)
    except OSError:
        out.append('Oops! Trouble reading this file.\n')
        return
    if value is None:
        out.append('(Default.) %s%s%s.\n' % (pre, default, post))
    else:
        out.append('%s%d%s.\n' % (pre, value, post))


def show_str(out, path, name, default, flagme, me, pre):
    out.append('\n%s: ' % name)
    try:
        value = control.readline(path)
        # defaultdelivery may hold several instructions, as a .qmail file
        more = control.readfile(path) if name == 'defaultdelivery' else None
    except OSError:
        out.append('Oops! Trouble reading this file.\n')
        return
    if more:                    # (its comment lines are no instructions)
        if len(more) > 1:
            out.append('%sone instruction a line:\n' % pre)
            out.extend('%s\n' % safe(line) for line in more)
            return
        value = more[0]
    if value is None:
        out.append('(Default.) ')
        value = me if (flagme and me is not None) else default.encode()
    out.append('%s%s.\n' % (pre, safe(value)))


def hide_password(line: bytes):
    """An smtproutes line with its password (the rest of the line after
    the relay and the user) not shown; whether it had one."""
    words = line.split(None, 2)
    if len(words) < 3:
        return line, False
    return words[0] + b' ' + words[1] + b' (password not shown)', True


def route_trouble(line: bytes):
    """An Oops line for an smtproutes line qmail-remote cannot use (its
    mail waits: "Unable to parse control/smtproutes."), else None."""
    from qmail import remote         # (its parser, not a copy of it)
    key, sep, value = remote.split_policy_line(line)
    if not sep or not value.strip():
        return None                 # no colon: ignored; no relay: the MX
    try:
        remote.parse_relay(value.strip())
    except ValueError:
        return 'Oops! qmail-remote cannot parse this route: its mail waits.\n'
    return None


def with_cafile(line: bytes) -> bytes:
    """A tlsdestinations line as words: "domain (CA file f; names n)"."""
    key, sep, rest = line.partition(b':')
    if not sep:
        return line
    cafile, _, names = rest.partition(b':')
    more = [b'CA file ' + cafile] if cafile else [b"the system's CAs"]
    if names.strip():
        more.append(b'certificate names ' + names.strip())
    return (key or b'every domain') + b' (' + b'; '.join(more) + b')'


def show_lst(out, path, name, default, pre, post):
    """Returns True if the file exists (showctl's rcpthosts rule)."""
    out.append('\n%s: ' % name)
    try:
        values = control.readfile(path)
    except OSError:
        out.append('Oops! Trouble reading this file.\n')
        return False
    if values is None:
        out.append('(Default.) %s\n' % default)
        return False
    out.append('\n')
    passwords = False
    for value in values:
        trouble = None
        if name == 'srs_secrets':
            out.append('%d secret%s, not shown; the first makes SRS addresses, '
                       'each reverses them.\n' % (len(values), '' if len(values) == 1 else 's'))
            break
        if name == 'smtproutes':
            trouble = route_trouble(value)
            value, had = hide_password(value)
            passwords = passwords or had
        elif name == 'tlsdestinations':
            value = with_cafile(value)
        out.append('%s%s%s\n' % (pre, safe(value), post))
        if trouble:
            out.append(trouble)
    if passwords:
        out.append(readers_trouble(path, 'passwords'))
    return True


def readers_trouble(path: str, what: str, fix: str = 'chgrp qmail and chmod 640 it') -> str:
    """An Oops line if others than root and group qmail (qmail-remote's,
    as qmailr) may read the file at path, which holds secrets; else ''."""
    try:
        st = os.stat(path)
    except OSError:
        return ''
    try:
        qmail_gid = auto.gid(auto.GROUP_QMAIL)
    except KeyError:
        qmail_gid = None
    if st.st_mode & 0o004 or (st.st_mode & 0o040 and st.st_gid not in (0, qmail_gid)):
        return ('Oops! It holds %s and %s may read it: %s.\n'
                % (what, 'anyone' if st.st_mode & 0o004 else 'group %d' % st.st_gid, fix))
    return ''


def readable_by(st, uid: int, gids) -> bool:
    """May the user uid, in groups gids, read a file of stat st?"""
    return bool(st.st_mode & 0o004 or (st.st_uid == uid and st.st_mode & 0o400)
                or (st.st_gid in gids and st.st_mode & 0o040))


def qmailr_trouble(path: str) -> str:
    """An Oops line if qmail-remote, as qmailr in group qmail, cannot
    read the file (root may: this program's own reading proves
    nothing); else ''."""
    try:
        st = os.stat(path)
        uid, gid = auto.uid(auto.USER_REMOTE), auto.gid(auto.GROUP_QMAIL)
    except (OSError, KeyError):
        return ''
    if readable_by(st, uid, (gid,)):
        return ''
    return ('Oops! qmail-remote (qmailr, group qmail) cannot read it: chgrp qmail and '
            'chmod 640 it.\n')


def clientcert_trouble(path: str) -> str:
    """Oops lines for control/clientcert.pem: qmail-remote cannot load it
    (and goes without), or others may read its key."""
    import ssl
    from qmail import remote_smtp
    why = remote_smtp.load_client_cert(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), path)
    out = readers_trouble(path, 'a private key') + qmailr_trouble(path)
    if why:
        out = ('Oops! qmail-remote cannot use it (%s): it shows servers no certificate.\n'
               % safe(why.encode('ascii', 'replace'))) + out
    else:
        out = expiry_trouble(path) + out
    return out


def servercert_trouble(path: str) -> str:
    """Oops lines for control/servercert.pem: qmail-smtpd and qmail-popup
    cannot load it (STARTTLS and STLS fail, and POP3 logins from other
    hosts with them, where it makes them wait for STLS), qmail-smtpd (as
    qmaild) cannot read it, others may read its key, or it expired."""
    from qmail import smtpd_tls
    try:
        smtpd_tls.server_context(path, environ={}, cipherfile=os.devnull)
    except Exception as err:        # (OSError, ssl.SSLError, CipherTrouble)
        why = getattr(err, 'strerror', None) or str(err) or type(err).__name__
        out = ('Oops! qmail-smtpd and qmail-popup cannot use it (%s): STARTTLS and STLS '
               'fail, and POP3 logins from other hosts wait for STLS.\n'
               % safe(str(why).encode('ascii', 'replace')))
    else:
        out = expiry_trouble(path).replace('servers that check it', 'clients that check it')
    return out + readers_trouble(path, 'a private key', 'chown qmaild:root and chmod 400 it') \
        + qmaild_trouble(path)


def qmaild_trouble(path: str) -> str:
    """An Oops line if qmail-smtpd, as qmaild (its groups too), cannot
    read the file (root may: this program's own reading proves nothing)."""
    import pwd
    try:
        st = os.stat(path)
        pw = pwd.getpwnam(auto.USER_DAEMON)
        gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except (OSError, KeyError):
        return ''
    if readable_by(st, pw.pw_uid, gids):
        return ''
    return 'Oops! qmail-smtpd (qmaild) cannot read it: its STARTTLS fails.\n'


def expiry_trouble(path: str, now: float = None) -> str:
    """An Oops line if the (first) certificate in path has expired: a
    server that checks it refuses it.  '' if it cannot be told."""
    import ssl
    import time
    try:
        end = ssl._ssl._test_decode_cert(path)['notAfter']
        if ssl.cert_time_to_seconds(end) >= (time.time() if now is None else now):
            return ''
    except Exception:               # (a private helper of the ssl module)
        return ''
    return 'Oops! Its certificate expired (%s): servers that check it refuse it.\n' % safe(
        end.encode('ascii', 'replace'))


def mrh_cdb_status(ctl) -> str:
    def mtime(name):
        try:
            return os.stat(os.path.join(ctl, name)).st_mtime
        except OSError:
            return None
    src, cdb = mtime('morercpthosts'), mtime('morercpthosts.cdb')
    if src is None and cdb is None:
        return '(Default.) No effect.'
    if src is None:
        return "Oops! morercpthosts.cdb exists but morercpthosts doesn't."
    if cdb is None:
        return "Oops! morercpthosts exists but morercpthosts.cdb doesn't."
    if src > cdb:
        return 'Oops! morercpthosts.cdb is older than morercpthosts.'
    return 'Modified recently enough; hopefully up to date.'


def header(home: str) -> str:
    """The compiled-in settings, printed before anything is read."""
    users = (auto.USER_ALIAS, auto.USER_DAEMON, auto.USER_LOG, auto.USER_OWNER,
             auto.USER_PASSWD, auto.USER_QUEUE, auto.USER_REMOTE, auto.USER_SEND)
    out = ['qmail home directory: %s.\n' % home,
           'user-ext delimiter: -.\n',
           'paternalism (in decimal): 2.\n',
           'silent concurrency limit: 120.\n',
           'subdirectory split: %d.\n' % auto.SPLIT]
    try:
        out.append('user ids: %s.\n' % ', '.join(str(auto.uid(u)) for u in users))
        out.append('group ids: %d, %d.\n' % (auto.gid(auto.GROUP_NOFILES),
                                             auto.gid(auto.GROUP_QMAIL)))
    except KeyError:
        out.append('Oops! qmail users are missing.\n')
    return ''.join(out)


def describe(home: str, ctl: str, names: list, me) -> str:
    """The whole report for the control directory ctl."""
    return header(home) + controls(ctl, names, me)


def controls(ctl: str, names: list, me) -> str:
    """The report's part after the header: each control file."""
    out = []
    rcpthosts_exist = False
    for name, kind, default, flagme, pre, post, _ in CONTROLS:
        path = os.path.join(ctl, name)
        if kind == 'flag':
            out.append('\n%s: %s\n' % (name, pre if os.path.exists(path) else
                                          '(Default.) ' + default))
            if name == 'clientcert.pem' and os.path.lexists(path):
                out.append(clientcert_trouble(path))
            if name == 'servercert.pem' and os.path.lexists(path):
                out.append(servercert_trouble(path))
        elif kind == 'int':
            show_int(out, path, name, default, pre, post)
        elif kind == 'str':
            show_str(out, path, name, default, flagme, me, pre)
        elif name == 'morercpthosts' and not rcpthosts_exist:
            show_lst(out, path, name,
                     'No rcpthosts; morercpthosts is irrelevant.',
                     "No rcpthosts; doesn't matter that morercpthosts has ", '.')
        else:
            exists = show_lst(out, path, name, default, pre, post)
            if name == 'rcpthosts':
                rcpthosts_exist = exists
        if name == 'morercpthosts':
            out.append('\nmorercpthosts.cdb: %s\n' % mrh_cdb_status(ctl))
    out.append(srs_trouble(ctl, me))
    known = {c[0] for c in CONTROLS} | set(KNOWN_FILES)
    for name in names:
        if name == 'domainkeys':
            out.append(show_domainkeys(os.path.join(ctl, name)))
        elif name not in known:
            out.append('\n%s: I have no idea what this file does.\n' % name)
    return ''.join(out)


def srs_trouble(ctl: str, me) -> str:
    """Oops lines for an SRS setting that cannot work: srs_domain a local
    domain (its addresses would be users'), without its virtualdomains
    line or outside rcpthosts (bounces never reach srsfilter), no
    secret, or secrets qmail-local (as the user) cannot read."""
    try:
        domain = control.readline(os.path.join(ctl, 'srs_domain'))
    except OSError:
        return ''
    domain = (domain or b'').strip().lower()
    if not domain:
        return ''
    out = []

    def lines(name):
        try:
            return [v.strip().lower() for v in control.readfile(os.path.join(ctl, name)) or ()]
        except OSError:
            return []
    locals_ = lines('locals') if os.path.exists(os.path.join(ctl, 'locals')) else \
        [(me or b'').lower()]
    shown = safe(domain)
    if domain in locals_:
        out.append('Oops! srs_domain %s is in locals: its addresses are local users\', '
                   'and bounces to SRS addresses fail; give SRS a domain of its own.\n' % shown)
    if not any(v.partition(b':')[0] == domain for v in lines('virtualdomains')):
        out.append('Oops! No virtualdomains line "%s:srs": bounces to SRS addresses do not '
                   'reach srsfilter.\n' % shown)
    if os.path.exists(os.path.join(ctl, 'rcpthosts')) and domain not in lines('rcpthosts'):
        out.append('Oops! srs_domain %s is not in rcpthosts: qmail-smtpd refuses the bounces '
                   'to SRS addresses.\n' % shown)
    path = os.path.join(ctl, 'srs_secrets')
    try:
        secrets = [v for v in control.readfile(path) or () if v]
        mode = os.stat(path).st_mode
    except OSError:
        secrets, mode = [], 0o004
    if not secrets:
        out.append('Oops! No secret in srs_secrets: forwards wait.\n')
    elif not mode & 0o004:
        out.append('Oops! srs_secrets is not readable by all: qmail-local reads it as the '
                   'user who forwards, and forwards wait; chmod 644 it.\n')
    return '\n' + ''.join(out) if out else ''


def show_domainkeys(path: str) -> str:
    """control/domainkeys/DOMAIN/{selector,<selector>} (qmail-remote's
    DKIM keys): which domain signs with which selector, never a key;
    what would keep one from signing, and a key anyone may read."""
    from qmail import remote_dkim
    out = ['\ndomainkeys: ']
    try:
        domains = sorted(d for d in os.listdir(path) if not d.startswith('.'))
    except OSError:
        return out[0] + 'Oops! Trouble reading this directory.\n'
    if not domains:
        return out[0] + 'No DKIM keys: no mail is signed.\n'
    out.append('\n')
    ctl = os.path.dirname(path)
    for domain in domains:
        shown = safe(os.fsencode(domain))
        if not remote_dkim.DOMAIN_OK.match(os.fsencode(domain)):
            out.append('Oops! %s is never looked up: a domain in lower case, as DNS '
                       'writes it (xn-- for an international one).\n' % shown)
            continue
        try:
            found = remote_dkim.find_key(ctl, os.fsencode(domain))
        except remote_dkim.Dkim as err:
            out.append('Oops! %s\n' % safe(err.args[0].rstrip(b'\n')))
            continue
        if found is None:
            out.append('%s: no selector file and no key named default: nothing is '
                       'signed for it.\n' % shown)
            continue
        if found[0] != os.fsencode(domain):
            out.append('%s: no selector file and no key named default: its mail is '
                       'signed with the key of %s.\n' % (shown, safe(found[0])))
            continue
        _, selector, key = found
        out.append('DKIM signs mail from %s and below (its envelope sender there too) '
                   'with selector %s.\n' % (shown, safe(selector)))
        try:
            mode = os.stat(key).st_mode
        except OSError:
            out.append('Oops! No key %s/%s to sign with: the mail waits.\n'
                       % (shown, safe(selector)))
            continue
        if mode & 0o004:
            out.append('Oops! Anyone may read the key %s/%s: chgrp qmail and chmod 640 it.\n'
                       % (shown, safe(selector)))
    return ''.join(out)


def main(argv=None) -> int:
    home = auto.QMAIL
    ctl = os.path.join(home, 'control')
    # As qmail's: the compiled-in settings first, whatever follows.
    sys.stdout.write(header(home))
    if not os.path.isdir(home):
        sys.stdout.write('Oops! Unable to chdir to %s.\n' % home)
        return 111
    if not os.path.isdir(ctl) or not os.access(ctl, os.X_OK):
        sys.stdout.write('Oops! Unable to chdir to control.\n')
        return 111
    try:
        names = sorted(os.listdir(ctl))
    except OSError:
        sys.stdout.write('Oops! Unable to open current directory.\n')
        return 111
    try:
        me = control.readline(os.path.join(ctl, 'me'))
    except OSError:
        sys.stdout.write('Oops! Trouble reading control/me.')
        return 111
    sys.stdout.write(controls(ctl, names, me))
    return 0


def run():
    error.guard_stdout()            # a full disk or closed fd 1: one line, 111
    try:
        code = main()
    except BrokenPipeError:
        code = 0                    # the reader is gone (| head)
    except Exception as e:
        sys.stderr.write('qmail-showctl: fatal: internal bug: %s\n' % type(e).__name__)
        code = 111
    error.exit_flushed(code, 'qmail-showctl')


if __name__ == '__main__':
    run()
