"""qmail-newmrh: compile control/morercpthosts for qmail-smtpd.

Runs as:  root (the admin), by hand after changing morercpthosts.
Reads:    HOME/control/morercpthosts: one host or domain a line.
Writes:   HOME/control/morercpthosts.tmp, renamed to
          HOME/control/morercpthosts.cdb (mode 0644): one key a host,
          lowercased, with empty data.
Exits:    0 done; 111 with "qmail-newmrh: fatal: ..." on stderr, and
          morercpthosts.cdb is left alone.
See:      qmail-newmrh(8), qmail-smtpd(8) (rcpthosts).

As qmail-newmrh.c reads a line: lowercase it, strip trailing spaces,
tabs and newlines (not carriage returns), and skip it if then empty or
starting with '#'.  Leading white space is kept.  A host listed twice
gets two records, which qmail-smtpd cannot tell from one.
"""

import os
import sys

from qmail.lib import auto, control, error
from qmail.lib.cdb import InstallError, install

FATAL = 'qmail-newmrh: fatal: '

class Fatal(Exception):
    """Stop with exit 111 and this message after FATAL."""


def error_str(err: Exception) -> str:
    if getattr(err, 'errno', None) is None:
        return str(err)
    return error.error_str(err).decode()


def host_records(lines):
    """(host, b'') for each line of morercpthosts, as qmail-newmrh keeps it."""
    for line in lines:
        host = line.lower().rstrip(b' \t\n')
        if host and not host.startswith(b'#'):
            yield host, b''


def read_lines(f):
    while True:
        try:
            line = f.readline()
        except OSError as err:
            raise Fatal('unable to read control/morercpthosts: %s'
                        % error_str(err)) from err
        if not line:
            return
        yield line


def newmrh(home: str) -> None:
    ctl = os.path.join(home, 'control')
    try:
        f = control.open_regular(os.path.join(ctl, 'morercpthosts'))
    except OSError as err:
        raise Fatal('unable to read control/morercpthosts: %s'
                    % (err.strerror if isinstance(err, control.NotRegular)
                       else error_str(err))) from err
    with f:
        try:
            install(os.path.join(ctl, 'morercpthosts.tmp'),
                    os.path.join(ctl, 'morercpthosts.cdb'),
                    host_records(read_lines(f)))
        except InstallError as err:
            if err.step == 'rename':
                # qmail prints no ': ' before the error here; a slip.
                raise Fatal('unable to move control/morercpthosts.tmp to '
                            'control/morercpthosts.cdb: %s'
                            % error_str(err.err)) from err
            raise Fatal('unable to write to control/morercpthosts.tmp: %s'
                        % error_str(err.err)) from err


def main(argv=None) -> int:
    home = auto.QMAIL
    try:
        os.close(os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as err:
        sys.stderr.write(FATAL + 'unable to chdir to %s: %s\n'
                         % (home, error_str(err)))
        return 111
    try:
        newmrh(home)
    except Fatal as err:
        sys.stderr.write(FATAL + '%s\n' % err)
        return 111
    return 0


def run():
    try:
        code = main()
    except Exception as e:                  # last resort: temporary
        sys.stderr.write(FATAL + 'internal bug: %s\n' % type(e).__name__)
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
