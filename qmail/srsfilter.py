"""srsfilter: pass mail sent to an SRS address of ours on to the address
it stands for (a bounce of a message forwarded here, back to its sender).

Usage:    srsfilter
Runs as:  the alias user (or any user) from a .qmail file, as the qmail
          SRS patch has it: control/virtualdomains "srs.example.org:srs"
          and ~alias/.qmail-srs-default holding "|HOME/bin/srsfilter".
Reads:    fd 0, the message; DEFAULT (the SRS local part, as the
          -default file matched it; else EXT), HOST, SENDER and DTLINE
          from qmail-local's environment; control/srs_domain,
          srs_secrets, srs_maxage, srs_hashmin (qmail.lib.srs).
Writes:   DTLINE and the message to qmail-queue ($QMAILQUEUE, else
          HOME/bin/qmail-queue), with the reversed address as its one
          recipient (an SRS1 address: the SRS0 address of the host that
          forwarded it to us, which reverses it in turn) and the same
          envelope sender: the null sender of a bounce, or any other
          made an SRS address as a forward's is; fd 2, "srsfilter: qp
          <pid>" on success, else why not.
Exits:    0 queued; 100 not an SRS address of ours (a wrong hash, too
          old, malformed, or another domain: the message bounces, and a
          bounce's bounce goes to the postmaster); 111 controls that
          cannot be read, no secret, or qmail-queue's temporary failure.
See:      forward(1), qmail-command(8), qmail.lib.srs.

Unlike the patch's srsfilter, which threw away (exit 0) what came with
a sender, any mail to a good SRS address goes on: an auto-reply sent
with its own sender is mail, not noise to lose.  As with every SRS
(Mail::SRS, libsrs2, postsrsd), whoever has seen one of our SRS
addresses may send through it, to that address, for srs_maxage days;
and as the hash covers the host and user joined, to the same bytes cut
elsewhere (example.com=bob as example.co=mbob).
"""

import os
import sys

from qmail.lib import auto, srs
from qmail import forward
from qmail.except_ import errstr, internal_bug, say
from qmail.lib.error import interrupt_kills

FATAL = b'srsfilter: fatal: '


def target(env, setting) -> bytes:
    """The address the message goes on to; srs.SrsError says why not."""
    local = env.get(b'DEFAULT')
    if local is None:
        local = env.get(b'EXT') or b''
    host = (env.get(b'HOST') or b'').lower()
    if host.rstrip(b'.') != setting.domain.rstrip(b'.'):
        raise srs.SrsError('%s is not control/srs_domain'
                           % host.decode('utf-8', 'replace'))
    made = setting.reverse(local + b'@' + host)
    if b'\n' in made or b'\0' in made:
        raise srs.SrsError('it stands for no address')
    return made


def srsfilter() -> int:
    env = os.environb
    sender, dtline = env.get(b'SENDER'), env.get(b'DTLINE')
    if sender is None or dtline is None:
        say(FATAL + b'SENDER or DTLINE not set: run me from a .qmail file')
        return 100
    try:
        setting = srs.load(auto.QMAIL)
        if setting is not None and not setting.secrets:
            say(FATAL + b'control/srs_secrets has no secret')
            return 111
    except OSError as err:
        say(FATAL + b'unable to read the SRS controls: ' + errstr(err))
        return 111
    if setting is None:
        say(FATAL + b'control/srs_domain is not set')
        return 111
    try:
        recipient = target(env, setting)
    except srs.SrsError as err:
        say(b'srsfilter: Sorry, that is not a valid SRS address of mine: %s. (#5.1.1)'
            % str(err).encode())
        return 100
    try:
        # Mail that is not a bounce goes on as a forward does: from an SRS
        # address of ours (the next host's SPF check sees our domain).
        sender = setting.forward(sender)
    except srs.TooLong:
        pass
    return forward.send_on(b'srsfilter', sender, dtline, [recipient])


def main(argv=None) -> int:
    try:
        return srsfilter()
    except MemoryError:
        say(FATAL + b'out of memory')
        return 111
    except Exception as err:    # last resort: never a traceback, never 1
        return internal_bug(b'srsfilter', err)


def run():
    interrupt_kills()
    sys.exit(main())


if __name__ == '__main__':
    run()
