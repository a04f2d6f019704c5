"""qmail/inject.py: qmail-inject's header rewriting, options and queueing.

Expected values were checked against notqmail's qmail-inject; the
deliberate differences are marked "not qmail".
"""

import io
import os
import signal
import stat
import time

import pytest

from qmail import inject
from qmail.inject import (
    Fatal, GetOpt, Injection, hfield_known, hfield_valid, read_header,
    rewrite_header, settings_from,
)
from qmail.lib import auto

NOW = 1795621200            # 25 Nov 2026 15:40:00 GMT
PID = 4242
DATE = b'Date: 25 Nov 2026 15:40:00 -0000\n'
MSGID = b'Message-ID: <20261125154000.4242.qmail@id.example.org>\n'

CTL = {
    'defaultdomain': b'example.org',
    'defaulthost': b'mail',
    'plusdomain': b'plus.example.org',
    'idhost': b'id.example.org',
}

ENV_VARS = (
    'QMAILUSER', 'MAILUSER', 'USER', 'LOGNAME', 'QMAILHOST', 'MAILHOST',
    'QMAILNAME', 'MAILNAME', 'NAME', 'QMAILSUSER', 'QMAILSHOST',
    'QMAILINJECT', 'QMAILMFTFILE', 'QMAILDEFAULTDOMAIN', 'QMAILDEFAULTHOST',
    'QMAILIDHOST', 'QMAILPLUSDOMAIN', 'QMAILQUEUE',
)


def settings(mft=None, **env):
    env = {k.encode(): v for k, v in env.items()}
    env.setdefault(b'USER', b'joe')
    return settings_from(env, CTL, mft)


def header(fields, env=None, mft=None, **kw):
    s = settings(mft, **(env or {}))
    return rewrite_header(fields, s, NOW, PID, **kw)


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize('env, attr, want', [
    ({}, 'mailuser', b'joe'),
    ({'USER': None}, 'mailuser', b'anonymous'),
    ({'USER': None, 'LOGNAME': b'lo'}, 'mailuser', b'lo'),
    ({'LOGNAME': b'lo'}, 'mailuser', b'joe'),
    ({'MAILUSER': b'mu'}, 'mailuser', b'mu'),
    ({'QMAILUSER': b'qu', 'MAILUSER': b'mu'}, 'mailuser', b'qu'),
    ({'QMAILUSER': b'qu'}, 'mailruser', b'qu'),
    ({'QMAILSUSER': b'su'}, 'mailruser', b'su'),
    ({}, 'mailhost', None),
    ({'MAILHOST': b'mh'}, 'mailhost', b'mh'),
    ({'QMAILHOST': b'qh', 'MAILHOST': b'mh'}, 'mailhost', b'qh'),
    ({'QMAILHOST': b'qh'}, 'mailrhost', b'qh'),
    ({'QMAILHOST': b'qh', 'QMAILSHOST': b'sh'}, 'mailrhost', b'sh'),
    ({}, 'fullname', None),
    ({'NAME': b'n'}, 'fullname', b'n'),
    ({'NAME': b'n', 'MAILNAME': b'm'}, 'fullname', b'm'),
    ({'NAME': b'n', 'MAILNAME': b'm', 'QMAILNAME': b'q'}, 'fullname', b'q'),
    ({'NAME': b''}, 'fullname', b''),
    ({}, 'idhost', b'id.example.org'),
    ({'QMAILIDHOST': b'other'}, 'idhost', b'other'),
    ({'QMAILINJECT': b'csfirm'}, 'flagnamecomment', True),
    ({'QMAILINJECT': b'csfirm'}, 'flagdeletesender', True),
    ({'QMAILINJECT': b'csfirm'}, 'flagdeletefrom', True),
    ({'QMAILINJECT': b'csfirm'}, 'flagdeletemessid', True),
    ({'QMAILINJECT': b'csfirm'}, 'flaghackrecip', True),
    ({'QMAILINJECT': b'csfirm'}, 'flaghackmess', True),
    ({'QMAILINJECT': b'xyz'}, 'flaghackrecip', False),
])
def test_settings_from(env, attr, want):
    env = dict(env)
    env.setdefault('USER', b'joe')
    env = {k.encode(): v for k, v in env.items() if v is not None}
    got = getattr(settings_from(env, CTL), attr)
    assert got == want, f'{attr} from {env!r}: got {got!r}, want {want!r}'


@pytest.mark.parametrize('env, address, want', [
    ({}, b'u', b'u@mail.example.org'),
    ({'QMAILDEFAULTHOST': b'h.net'}, b'u', b'u@h.net'),
    ({'QMAILDEFAULTDOMAIN': b'd.net'}, b'u@x', b'u@x.d.net'),
    ({'QMAILPLUSDOMAIN': b'p.net'}, b'u@x+', b'u@x.p.net'),
    ({'QMAILDEFAULTHOST': b'h+'}, b'u', b'u@h.plus.example.org'),
])
def test_settings_rules(env, address, want):
    s = settings(**env)
    got = inject.rewrite_address(address, s.rules)
    assert got == want, f'{address!r} with {env!r}: got {got!r}, want {want!r}'


# ---------------------------------------------------------------- fields

@pytest.mark.parametrize('h, want', [
    (b'To: a\n', b'to'),
    (b'tO: a\n', b'to'),
    (b'To : a\n', b'to'),
    (b'To\t:a\n', b'to'),
    (b'RESENT-MESSAGE-ID: <x>\n', b'resent-message-id'),
    (b'Mail-Followup-To: a\n', b'mail-followup-to'),
    (b'Too: a\n', None),
    (b'T o: a\n', None),
    (b'X-To: a\n', None),
    (b'To\n', None),
    (b'Resent_To: a\n', None),
])
def test_hfield_known(h, want):
    got = hfield_known(h)
    assert got == want, f'hfield_known({h!r}): got {got!r}, want {want!r}'


@pytest.mark.parametrize('h, want', [
    (b'Subject: x\n', True),
    (b'X-Weird!#$: x\n', True),
    (b'Subject  \t: x\n', True),
    (b'Subject:\n', True),
    (b': x\n', False),
    (b' : x\n', False),
    (b'Sub ject: x\n', False),
    (b'Sub\x01ject: x\n', False),
    (b'Sub\xe9ject: x\n', False),
    (b'Sub\0: x\n', False),
    (b'no colon\n', False),
    (b'\n', False),
])
def test_hfield_valid(h, want):
    got = hfield_valid(h)
    assert got == want, f'hfield_valid({h!r}): got {got}, want {want}'


@pytest.mark.parametrize('now, want', [
    (NOW, DATE),
    (0, b'Date: 1 Jan 1970 00:00:00 -0000\n'),
    (812090813, b'Date: 26 Sep 1995 04:46:53 -0000\n'),
])
def test_date_field(now, want):
    got = inject.date_field(now)
    assert got == want, f'date_field({now}): got {got!r}, want {want!r}'


def test_msgid_field():
    got = inject.msgid_field(812090813, 12345, b'silverton.berkeley.edu')
    want = (b'Message-ID: <19950926044653.12345.qmail'
            b'@silverton.berkeley.edu>\n')
    assert got == want, f'got {got!r}, want {want!r}'


# ---------------------------------------------------------------- read_header

@pytest.mark.parametrize('message, fields, body', [
    (b'', [], None),
    (b'\n', [], b'\n'),
    (b'\nbody\n', [], b'\n'),
    (b'A: 1\nB: 2\n\nbody\n', [b'A: 1\n', b'B: 2\n'], b'\n'),
    (b'A: 1\n  more\n\tmore\nB: 2\n', [b'A: 1\n  more\n\tmore\n', b'B: 2\n'],
     None),
    (b'A: no newline', [b'A: no newline\n'], None),
    # a line that is not a header field ends the header; a blank line is
    # put in before it
    (b'A: 1\nnot a field\nB: 2\n', [b'A: 1\n'], b'\nnot a field\n'),
    (b'not a field\n', [], b'\nnot a field\n'),
    (b' leading space: x\n', [], b'\n leading space: x\n'),
    (b'A: 1\r\n\r\nbody\n', [b'A: 1\r\n'], b'\n\r\n'),
    # an mbox From_ line becomes a field
    (b'From djb Thu Jan  1\nA: 1\n\n', [b'MBOX-Line: From djb Thu Jan  1\n',
                                        b'A: 1\n'], b'\n'),
    (b'X-Nul: a\0b\n\n', [b'X-Nul: a\0b\n'], b'\n'),
    # a NUL in a field name makes it no field
    (b'X\0Y: a\n\n', [], b'\nX\0Y: a\n'),
])
def test_read_header(message, fields, body):
    got = read_header(io.BytesIO(message).readline)
    assert got == (fields, body), (
        f'read_header({message!r}): got {got!r}, want {(fields, body)!r}')


def test_capped_readline_keeps_the_start_of_a_long_line():
    """qbiff and maildirwatch hold no more than a cap of a line
    a sender made as long as the message (a 50 MB Subject: cost 164 MB)."""
    f = io.BytesIO(b'Subject: ' + b'a' * 200000 + b'\nTo: b\n\n' + b'z' * 5000)
    readline = inject.capped_readline(f.readline, 1000)
    first = readline()
    assert first == b'Subject: ' + b'a' * 991 + b'\n'
    assert readline() == b'To: b\n'
    assert readline() == b'\n'
    assert readline() == b'z' * 1000            # the input ends within the line
    assert readline() == b''


def test_a_field_folded_a_million_times_is_held_once_or_cut():
    """The field was a list of its lines (some fifteen times its size):
    now one bytearray; with fieldmax, what is past it is read and dropped."""
    message = b'X-Big: a\n' + b' f\n' * 100000 + b'Subject: s\n\nbody\n'
    fields, body = inject.read_header(io.BytesIO(message).readline)
    assert fields == [b'X-Big: a\n' + b' f\n' * 100000, b'Subject: s\n'] and body == b'\n'
    fields, body = inject.read_header(io.BytesIO(message).readline, 3000)
    assert fields[0].startswith(b'X-Big: a\n f\n') and 3000 <= len(fields[0]) < 3010
    assert fields[0].endswith(b'\n')
    assert fields[1:] == [b'Subject: s\n'] and body == b'\n'


# ---------------------------------------------------------------- rewrite_header

FROM_JOE = b'From: joe@mail.example.org\n'
NOT_SHOWN = b'Cc: recipient list not shown: ;\n'

REWRITE_CASES = [
    # id, fields, env, keyword arguments, header, sender, recipients
    ('stamps added', [b'To: fred\n'], {}, {},
     DATE + MSGID + FROM_JOE + b'To: fred@mail.example.org\n',
     b'joe@mail.example.org', [b'fred@mail.example.org']),
    ('stamps kept', [b'Date: x\n', b'Message-ID: <y>\n', b'From: a@b.c\n',
                     b'To: d@e.f\n'], {}, {},
     b'Date: x\nMessage-ID: <y>\nFrom: a@b.c\nTo: d@e.f\n',
     b'joe@mail.example.org', [b'd@e.f']),
    ('from with name', [b'To: x@y.z\n'], {'NAME': b'Joe Q. Public'}, {},
     DATE + MSGID + b'From: "Joe Q. Public" <joe@mail.example.org>\n'
     b'To: x@y.z\n', b'joe@mail.example.org', [b'x@y.z']),
    ('from comment style', [b'To: x@y.z\n'],
     {'NAME': b'Joe (Q) Public', 'QMAILINJECT': b'c'}, {},
     DATE + MSGID + b'From: joe@mail.example.org (Joe \\(Q\\) Public)\n'
     b'To: x@y.z\n', b'joe@mail.example.org', [b'x@y.z']),
    ('from user and host', [b'To: x@y.z\n'],
     {'QMAILUSER': b'Joe Bloggs', 'QMAILHOST': b'bloggs'}, {},
     DATE + MSGID + b'From: "Joe Bloggs"@bloggs.example.org\nTo: x@y.z\n',
     b'Joe Bloggs@bloggs.example.org', [b'x@y.z']),
    ('from host plus', [b'To: x@y.z\n'], {'MAILHOST': b'box+'}, {},
     DATE + MSGID + b'From: joe@box.plus.example.org\nTo: x@y.z\n',
     b'joe@box.plus.example.org', [b'x@y.z']),
    ('envelope sender user and host', [b'To: x@y.z\n'],
     {'QMAILSUSER': b'bounces', 'QMAILSHOST': b'lists.example.com'}, {},
     DATE + MSGID + FROM_JOE + b'To: x@y.z\n',
     b'bounces@lists.example.com', [b'x@y.z']),
    ('bcc removed', [b'To: a@b.c\n', b'Bcc: secret@d.e\n', b'BCC: s2\n'],
     {}, {}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe@mail.example.org',
     [b'a@b.c', b'secret@d.e', b's2@mail.example.org']),
    ('only bcc', [b'Bcc: secret@d.e\n'], {}, {},
     DATE + MSGID + FROM_JOE + NOT_SHOWN,
     b'joe@mail.example.org', [b'secret@d.e']),
    ('apparently-to', [b'Apparently-To: a\n'], {}, {},
     DATE + MSGID + FROM_JOE + NOT_SHOWN
     + b'Apparently-To: a@mail.example.org\n',
     b'joe@mail.example.org', [b'a@mail.example.org']),
    ('cc only', [b'Cc: a@b.c\n'], {}, {},
     DATE + MSGID + FROM_JOE + b'Cc: a@b.c\n',
     b'joe@mail.example.org', [b'a@b.c']),
    ('content-length removed', [b'To: a@b.c\n', b'Content-Length: 5\n'], {},
     {}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe@mail.example.org', [b'a@b.c']),
    ('return-path sets sender', [b'Return-Path: <bounce@x.y>\n',
                                 b'To: a@b.c\n'], {}, {},
     DATE + MSGID + FROM_JOE + b'To: a@b.c\n', b'bounce@x.y', [b'a@b.c']),
    ('return-path null sender', [b'Return-Path: <>\n', b'To: a@b.c\n'], {},
     {}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n', b'', [b'a@b.c']),
    ('first return-path wins', [b'Return-Path: <one@x.y>\n',
                                b'Return-Path: <two@x.y>\n',
                                b'To: a@b.c\n'], {}, {},
     DATE + MSGID + FROM_JOE + b'To: a@b.c\n', b'one@x.y', [b'a@b.c']),
    ('return-path rewritten', [b'Return-Path: bounce\n', b'To: a@b.c\n'],
     {}, {}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'bounce@mail.example.org', [b'a@b.c']),
    ('QMAILINJECT s ignores return-path',
     [b'Return-Path: <bounce@x.y>\n', b'To: a@b.c\n'],
     {'QMAILINJECT': b's'}, {}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe@mail.example.org', [b'a@b.c']),
    ('-f beats return-path', [b'Return-Path: <bounce@x.y>\n',
                              b'To: a@b.c\n'], {},
     {'sender': b'owner@lists.x'}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'owner@lists.x', [b'a@b.c']),
    ('QMAILINJECT f deletes from', [b'From: someone@else.x\n',
                                    b'To: a@b.c\n'],
     {'QMAILINJECT': b'f'}, {}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe@mail.example.org', [b'a@b.c']),
    ('QMAILINJECT i deletes message-id', [b'Message-ID: <old@x>\n',
                                          b'To: a@b.c\n'],
     {'QMAILINJECT': b'i'}, {}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe@mail.example.org', [b'a@b.c']),
    ('QMAILINJECT r: per-recipient VERP', [b'To: a@b.c\n'],
     {'QMAILINJECT': b'r'}, {}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe-@mail.example.org-@[]', [b'a@b.c']),
    ('QMAILINJECT r with return-path', [b'Return-Path: <list@x.y>\n',
                                        b'To: a@b.c\n'],
     {'QMAILINJECT': b'r'}, {}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'list@x.y-@[]', [b'a@b.c']),
    ('QMAILINJECT r leaves -f alone', [b'To: a@b.c\n'],
     {'QMAILINJECT': b'r'}, {'sender': b'owner@x.y'},
     DATE + MSGID + FROM_JOE + b'To: a@b.c\n', b'owner@x.y', [b'a@b.c']),
    ('QMAILINJECT m: per-message VERP', [b'To: a@b.c\n'],
     {'QMAILINJECT': b'm'}, {}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe-1795621200.4242@mail.example.org', [b'a@b.c']),
    ('QMAILINJECT rm', [b'To: a@b.c\n'],
     {'QMAILINJECT': b'rm'}, {}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe-1795621200.4242-@mail.example.org-@[]', [b'a@b.c']),
    ('resent', [b'From: orig@x.y\n', b'To: orig-to@x.y\n',
                b'Date: old\n', b'Message-ID: <old@x>\n',
                b'Resent-To: fwd@z.w\n'], {}, {},
     b'Resent-' + DATE + b'Resent-' + MSGID + b'Resent-' + FROM_JOE
     + b'From: orig@x.y\nTo: orig-to@x.y\nDate: old\nMessage-ID: <old@x>\n'
     b'Resent-To: fwd@z.w\n',
     b'joe@mail.example.org', [b'fwd@z.w']),
    ('resent without resent recipients', [b'Resent-Date: now\n',
                                          b'Resent-Message-ID: <n@x>\n',
                                          b'Resent-From: me@x.y\n',
                                          b'Resent-Bcc: hidden@x.y\n'],
     {}, {}, b'Resent-Cc: recipient list not shown: ;\n'
     b'Resent-Date: now\nResent-Message-ID: <n@x>\nResent-From: me@x.y\n',
     b'joe@mail.example.org', [b'hidden@x.y']),
    ('resent uses resent recipients only', [b'To: a@b.c\n',
                                            b'Resent-Cc: d@e.f\n'],
     {}, {}, b'Resent-' + DATE + b'Resent-' + MSGID + b'Resent-' + FROM_JOE
     + b'To: a@b.c\nResent-Cc: d@e.f\n',
     b'joe@mail.example.org', [b'd@e.f']),
    ('-a: arguments only', [b'To: a@b.c\n'], {},
     {'recipstrategy': 'a', 'args': [b'x', b'y@z.w']},
     DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe@mail.example.org', [b'x@mail.example.org', b'y@z.w']),
    ('-a with no arguments', [b'To: a@b.c\n'], {},
     {'recipstrategy': 'a'}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe@mail.example.org', []),
    ('-h: header only', [b'To: a@b.c\n'], {},
     {'recipstrategy': 'h', 'args': [b'x']},
     DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe@mail.example.org', [b'a@b.c']),
    ('-H: both', [b'To: a@b.c\n'], {},
     {'recipstrategy': 'H', 'args': [b'x']},
     DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe@mail.example.org', [b'x@mail.example.org', b'a@b.c']),
    ('-A with arguments', [b'To: a@b.c\n'], {},
     {'recipstrategy': 'A', 'args': [b'x']},
     DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe@mail.example.org', [b'x@mail.example.org']),
    ('-A without arguments', [b'To: a@b.c\n'], {},
     {'recipstrategy': 'A'}, DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'joe@mail.example.org', [b'a@b.c']),
    ('-n prints return-path', [b'To: a@b.c\n'], {}, {'flagqueue': False},
     b'Return-Path: <joe@mail.example.org>\n' + DATE + MSGID + FROM_JOE
     + b'To: a@b.c\n', b'joe@mail.example.org', [b'a@b.c']),
    ('-n quotes return-path', [b'To: a@b.c\n'], {'QMAILINJECT': b'r'},
     {'flagqueue': False},
     b'Return-Path: <"joe-@mail.example.org-"@[]>\n' + DATE + MSGID
     + FROM_JOE + b'To: a@b.c\n', b'joe-@mail.example.org-@[]', [b'a@b.c']),
    ('-n null sender', [b'To: a@b.c\n'], {},
     {'flagqueue': False, 'sender': b''},
     b'Return-Path: <>\n' + DATE + MSGID + FROM_JOE + b'To: a@b.c\n',
     b'', [b'a@b.c']),
    ('old-style list gets commas', [b'To: djb fred\n'], {}, {},
     DATE + MSGID + FROM_JOE
     + b'To: djb@mail.example.org, fred@mail.example.org\n',
     b'joe@mail.example.org',
     [b'fred@mail.example.org', b'djb@mail.example.org']),
    ('sender fields rewritten', [b'Sender: s\n', b'Reply-To: r@x\n',
                                 b'Errors-To: e\n', b'To: t@x.y\n'], {}, {},
     DATE + MSGID + FROM_JOE + b'Sender: s@mail.example.org\n'
     b'Reply-To: r@x.example.org\nErrors-To: e@mail.example.org\n'
     b'To: t@x.y\n', b'joe@mail.example.org', [b't@x.y']),
    ('other fields untouched', [b'Subject: a b  c\n', b'X-To: a\n',
                                b'To: t@x.y\n'], {}, {},
     DATE + MSGID + FROM_JOE + b'Subject: a b  c\nX-To: a\nTo: t@x.y\n',
     b'joe@mail.example.org', [b't@x.y']),
    ('folded field', [b'To: a@b.c,\n\td@e.f\n'], {}, {},
     DATE + MSGID + FROM_JOE + b'To: a@b.c, d@e.f\n',
     b'joe@mail.example.org', [b'd@e.f', b'a@b.c']),
    ('group and route', [b'To: list: <@r.x:a@b.c>, d;\n'], {}, {},
     DATE + MSGID + FROM_JOE + b'To: list: <a@b.c>, d@mail.example.org;\n',
     b'joe@mail.example.org', [b'd@mail.example.org', b'a@b.c']),
    # notqmail: a broken recipient field is passed on unchanged
    ('unparsable to kept', [b'To: "broken\n', b'Cc: c@d.e\n'], {}, {},
     DATE + MSGID + FROM_JOE + b'To: "broken\nCc: c@d.e\n',
     b'joe@mail.example.org', [b'c@d.e']),
    ('NUL bytes', [b'To: a\0b@c.d\n', b'X-Nul: \0\n'], {}, {},
     DATE + MSGID + FROM_JOE + b'To: "a\0b"@c.d\nX-Nul: \0\n',
     b'joe@mail.example.org', [b'a\0b@c.d']),
    ('mbox line kept', [b'MBOX-Line: From x y\n', b'To: a@b.c\n'], {}, {},
     DATE + MSGID + FROM_JOE + b'MBOX-Line: From x y\nTo: a@b.c\n',
     b'joe@mail.example.org', [b'a@b.c']),
]


@pytest.mark.parametrize(
    'fields, env, kw, want_header, want_sender, want_recips',
    [c[1:] for c in REWRITE_CASES], ids=[c[0] for c in REWRITE_CASES])
def test_rewrite_header(fields, env, kw, want_header, want_sender,
                        want_recips):
    got_header, got_sender, got_recips = header(fields, env, **kw)
    assert got_header == want_header, (
        f'header: got {got_header!r}, want {want_header!r}')
    assert got_sender == want_sender, (
        f'sender: got {got_sender!r}, want {want_sender!r}')
    assert got_recips == want_recips, (
        f'recipients: got {got_recips!r}, want {want_recips!r}')


@pytest.mark.parametrize('fields, mft, want', [
    ([b'To: list@lists.example.org, b@x.y\n', b'Cc: c@d.e\n'],
     [b'LIST@lists.example.org'],
     b'Mail-Followup-To: c@d.e,\n  list@lists.example.org,\n  b@x.y\n'),
    ([b'To: a b\n'], [b'b@mail.example.org'],
     b'Mail-Followup-To: a@mail.example.org,\n  b@mail.example.org\n'),
    ([b'To: list@lists.example.org\n', b'Mail-Followup-To: x\n'],
     [b'list@lists.example.org'], b''),
    ([b'To: a@b.c\n'], [b'list@lists.example.org'], b''),
    ([b'To: list@lists.example.org\n'], None, b''),
    ([b'To: "a b"@c.d\n'], [b'a b@c.d'], b'Mail-Followup-To: "a b"@c.d\n'),
    ([b'Bcc: list@lists.example.org\n'], [b'list@lists.example.org'], b''),
])
def test_mail_followup_to(fields, mft, want):
    inj = Injection(settings(mft))
    for h in fields:
        inj.doheaderfield(h)
    got = inj.followup()
    assert got == want, f'got {got!r}, want {want!r}'


@pytest.mark.parametrize('field', [
    b'From: "unbalanced\n',
    b'From: (unbalanced\n',
    b'Sender: a, b>\n',
    b'Reply-To: x;;\n',
    b'Return-Path: a@b>\n',
    b'Resent-From: [x\n',
])
def test_unparsable_sender_field(field):
    with pytest.raises(Fatal) as info:
        header([field, b'To: a@b.c\n'])
    got = info.value
    want = b'unable to parse this line: ' + field.rstrip(b'\n')
    assert (got.code, got.text) == (100, want), (
        f'got {(got.code, got.text)!r}, want {(100, want)!r}')


def test_invalid_field():
    # read_header never passes one on; the check stays, as in qmail.
    with pytest.raises(Fatal) as info:
        header([b'Bad Name: x\n'])
    got = (info.value.code, info.value.text)
    assert got == (100, b'invalid header field: Bad Name: x'), f'got {got!r}'


def test_unparsable_folded_field_is_one_line():
    with pytest.raises(Fatal) as info:
        header([b'From: a,\n  "b\n'])
    got = info.value.text
    assert b'\n' not in got, f'got {got!r}'


def test_unparsable_argument():
    with pytest.raises(Fatal) as info:
        header([], recipstrategy='a', args=[b'x@(y'])
    got = (info.value.code, info.value.text)
    assert got == (100, b'unable to parse address: x@(y'), f'got {got!r}'


def test_fullname_option_beats_environment():
    s = settings(QMAILNAME=b'Env Name')
    s.fullname = b'Option Name'
    got, _, _ = rewrite_header([b'To: a@b.c\n'], s, NOW, PID)
    assert b'From: "Option Name" <joe@mail.example.org>\n' in got, got


def test_injection_recipients_in_qmail_order():
    inj = Injection(settings(), 'H', [b'arg1', b'arg2'])
    for h in (b'To: t1, t2\n', b'Cc: c1\n', b'Bcc: b1\n'):
        inj.doheaderfield(h)
    inj.finishheader(NOW, PID)
    got = inj.recipients()
    want = [b'arg1@mail.example.org', b'arg2@mail.example.org',
            b't2@mail.example.org', b't1@mail.example.org',
            b'c1@mail.example.org', b'b1@mail.example.org']
    assert got == want, f'got {got!r}, want {want!r}'


def test_ten_thousand_header_recipients():
    addrs = [b'user%d@example.com' % i for i in range(10000)]
    _, _, got = header([b'To: ' + b', '.join(addrs) + b'\n'])
    assert got == addrs[::-1], 'recipients differ'


def test_ten_thousand_argument_recipients():
    addrs = [b'user%d@example.com' % i for i in range(10000)]
    _, _, got = header([], args=addrs)
    assert got == addrs, 'recipients differ'


def test_megabyte_header_line():
    subject = b'Subject: ' + b'x' * (1 << 20) + b'\n'
    to = b'To: ' + b'y' * (1 << 20) + b'@example.com\n'
    got, _, recips = header([subject, to])
    assert got.endswith(subject + to), 'fields changed'
    assert recips == [b'y' * (1 << 20) + b'@example.com']


# ---------------------------------------------------------------- getopt

@pytest.mark.parametrize('args, want, rest', [
    ([], [], []),
    ([b'-n', b'x'], [('n', None)], [b'x']),
    ([b'-nH', b'x'], [('n', None), ('H', None)], [b'x']),
    ([b'-fa@b', b'x'], [('f', b'a@b')], [b'x']),
    ([b'-f', b'a@b', b'x'], [('f', b'a@b')], [b'x']),
    ([b'-nf', b'', b'x'], [('n', None), ('f', b'')], [b'x']),
    ([b'-n', b'--', b'-h'], [('n', None)], [b'-h']),
    ([b'-n', b'-', b'-h'], [('n', None)], [b'-', b'-h']),
    ([b'x', b'-n'], [], [b'x', b'-n']),
    ([b'-FJoe Doe', b'-r'], [('F', b'Joe Doe'), ('r', None)], []),
])
def test_getopt(args, want, rest):
    opts = GetOpt(args, inject.OPTIONS)
    got = []
    while True:
        opt = opts.next()
        if opt is None:
            break
        got.append((opt, opts.arg))
    assert got == want, f'options of {args!r}: got {got!r}, want {want!r}'
    assert opts.rest() == rest, f'rest: got {opts.rest()!r}, want {rest!r}'


@pytest.mark.parametrize('args, want', [
    ([b'-x'], b'qmail-inject: illegal option -- x'),
    ([b'-nz'], b'qmail-inject: illegal option -- z'),
    ([b'-f'], b'qmail-inject: option requires an argument -- f'),
])
def test_getopt_trouble(args, want):
    opts = GetOpt(args, inject.OPTIONS)
    while True:
        opt = opts.next()
        if opt in (None, '?'):
            break
    got = opts.complaint(b'qmail-inject')
    assert (opt, got) == ('?', want), f'got {(opt, got)!r}, want {want!r}'


# ---------------------------------------------------------------- main, end to end

FAKE_QQ = '''#!/bin/sh
cat > '{dir}/msg'
cat <&1 > '{dir}/env'
{extra}
'''


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A qmail home with control files, a clean environment, fixed time
    and pid; the test's cwd is restored afterwards."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('USER', 'joe')
    qmail = tmp_path / 'qmail'
    (qmail / 'control').mkdir(parents=True)
    (qmail / 'control' / 'me').write_bytes(b'mx.example.org\n')
    (qmail / 'control' / 'defaultdomain').write_bytes(b'example.org  \n')
    (qmail / 'control' / 'defaulthost').write_bytes(b'mail\n')
    (qmail / 'control' / 'plusdomain').write_bytes(b'plus.example.org\n')
    (qmail / 'control' / 'idhost').write_bytes(b'id.example.org\n')
    monkeypatch.setattr(auto, 'QMAIL', str(qmail))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inject.time, 'time', lambda: NOW + 0.5)
    monkeypatch.setattr(inject.os, 'getpid', lambda: PID)
    return qmail


def fake_queue(tmp_path, monkeypatch, extra='exit 0'):
    qq = tmp_path / 'fake-qmail-queue'
    qq.write_text(FAKE_QQ.format(dir=tmp_path, extra=extra))
    qq.chmod(stat.S_IRWXU)
    monkeypatch.setenv('QMAILQUEUE', str(qq))
    return tmp_path


def queued(dirpath):
    """(message, sender, recipients) as the fake qmail-queue saw them."""
    msg = (dirpath / 'msg').read_bytes()
    env = (dirpath / 'env').read_bytes()
    assert env.startswith(b'F') and env.endswith(b'\0\0'), env[:100]
    records = env[:-1].split(b'\0')[:-1]
    sender = records[0][1:]
    recips = []
    for r in records[1:]:
        assert r.startswith(b'T'), r
        recips.append(r[1:])
    return msg, sender, recips


def run(capsys, args, message=b''):
    out = io.BytesIO()
    code = inject.main(args, stdin=io.BytesIO(message), stdout=out)
    err = capsys.readouterr().err
    return code, out.getvalue(), err


GOLDEN_IN = (b'From djb  Thu Jan  1 00:00:00 1970\n'
             b'Subject: Go, Bears!\n'
             b'To: fred, eric@mammoth.cs+,\n'
             b'  random group: g@h, i@j;, "The Almighty".One@heaven.af.mil\n'
             b'Bcc: hidden\n'
             b'Return-Path: <ignored@x.y>\n'
             b'Content-Length: 9999\n'
             b'\n'
             b"I've got money on this one.\n"
             b'no newline at end')
GOLDEN_OUT = (b'Return-Path: <bounces@lists.example.org>\n'
              + DATE + MSGID
              + b'From: "D. J. Bernstein" <djb@silverton.example.org>\n'
              b'MBOX-Line: From djb  Thu Jan  1 00:00:00 1970\n'
              b'Subject: Go, Bears!\n'
              b'To: fred@mail.example.org, eric@mammoth.cs.plus.example.org,\n'
              b'  random group: g@h.example.org, i@j.example.org;,\n'
              b'  "The Almighty".One@heaven.af.mil\n'
              b'\n'
              b"I've got money on this one.\n"
              b'no newline at end\n')


def test_golden_print(home, capsys, monkeypatch):
    monkeypatch.setenv('NAME', 'D. J. Bernstein')
    monkeypatch.setenv('QMAILUSER', 'djb')
    monkeypatch.setenv('QMAILHOST', 'silverton')
    code, out, err = run(capsys, ['-n', '-fbounces@lists.example.org'],
                         GOLDEN_IN)
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    assert out == GOLDEN_OUT, f'got {out!r}, want {GOLDEN_OUT!r}'


def test_queue(home, tmp_path, capsys, monkeypatch):
    fake_queue(tmp_path, monkeypatch)
    code, out, err = run(capsys, [], b'To: fred, x@y.z\nBcc: b\n\nhi\n')
    assert (code, out, err) == (0, b'', ''), f'got {(code, out, err)!r}'
    msg, sender, recips = queued(tmp_path)
    want = (DATE + MSGID + FROM_JOE
            + b'To: fred@mail.example.org, x@y.z\n\nhi\n')
    assert msg == want, f'message: got {msg!r}, want {want!r}'
    assert sender == b'joe@mail.example.org', f'sender: got {sender!r}'
    want_recips = [b'x@y.z', b'fred@mail.example.org', b'b@mail.example.org']
    assert recips == want_recips, f'recipients: got {recips!r}'


def test_queue_reads_a_non_blocking_stdin_to_its_end(home, tmp_path, capsys, monkeypatch):
    """fd 0 left non-blocking by a parent that shares the pipe: a read
    that found no data yet was taken for the end of the input, and the
    message was queued cut short, exit 0."""
    import threading
    fake_queue(tmp_path, monkeypatch)
    r, w = os.pipe()
    os.set_blocking(r, False)
    saved = os.dup(0)

    def writer():
        for part in (b'To: x@y.z\nSubject: one', b' two\n\nbody 1\n', b'body 2\n'):
            os.write(w, part)
            time.sleep(0.2)
        os.close(w)
    t = threading.Thread(target=writer)
    try:
        os.dup2(r, 0)
        t.start()
        code = inject.main([])
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(r)
        t.join(10)
    assert code == 0, capsys.readouterr().err
    msg, _, recips = queued(tmp_path)
    assert msg.endswith(b'Subject: one two\n\nbody 1\nbody 2\n') and recips == [b'x@y.z'], msg


@pytest.mark.parametrize('args, env, sender, recips', [
    (['-a', 'x@y.z'], {}, b'joe@mail.example.org', [b'x@y.z']),
    (['-h', 'x@y.z'], {}, b'joe@mail.example.org', [b'to@a.b']),
    (['-H', 'x@y.z'], {}, b'joe@mail.example.org', [b'x@y.z', b'to@a.b']),
    (['x@y.z'], {}, b'joe@mail.example.org', [b'x@y.z']),
    (['-f', 'list@l.org', 'x'], {}, b'list@l.org', [b'x@mail.example.org']),
    (['-f', '', 'x@y.z'], {}, b'', [b'x@y.z']),
    (['-r'], {}, b'joe-@mail.example.org-@[]', [b'to@a.b']),
    ([], {'QMAILINJECT': 'r'}, b'joe-@mail.example.org-@[]', [b'to@a.b']),
    ([], {'QMAILINJECT': 'm'}, b'joe-1795621200.4242@mail.example.org',
     [b'to@a.b']),
    (['-n', '-N'], {}, b'joe@mail.example.org', [b'to@a.b']),
])
def test_queue_envelope(home, tmp_path, capsys, monkeypatch, args, env,
                        sender, recips):
    fake_queue(tmp_path, monkeypatch)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, _, err = run(capsys, args, b'To: to@a.b\n\nbody\n')
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    _, got_sender, got_recips = queued(tmp_path)
    assert got_sender == sender, f'sender: got {got_sender!r}, want {sender!r}'
    assert got_recips == recips, f'recips: got {got_recips!r}, want {recips!r}'


@pytest.mark.parametrize('extra, code, want_err', [
    ('exit 31', 100, 'qmail-inject: fatal: mail server permanently rejected'
     ' message (#5.3.0)\n'),
    ('exit 71', 111, 'qmail-inject: fatal: mail server temporarily rejected'
     ' message (#4.3.0)\n'),
    ('printf "Dgo away (#5.7.1)" >&6; exit 82', 100,
     'qmail-inject: fatal: go away (#5.7.1)\n'),
    ('printf "Zlater (#4.3.0)" >&6; exit 82', 111,
     'qmail-inject: fatal: later (#4.3.0)\n'),
    ('printf "Dno\\000more" >&6; exit 82', 100, 'qmail-inject: fatal: no\n'),
    # any other first letter: temporary, its text kept (as qmail's; a
    # review found it replaced by "qq temporary problem")
    ('printf "Xcustom filter says wait" >&6; exit 82', 111,
     'qmail-inject: fatal: custom filter says wait\n'),
    ('printf "Xy" >&6; exit 82', 111, 'qmail-inject: fatal: qq temporary problem (#4.3.0)\n'),
    ('kill -9 $$', 111, 'qmail-inject: fatal: qq crashed (#4.3.0)\n'),
])
def test_queue_failure(home, tmp_path, capsys, monkeypatch, extra, code,
                       want_err):
    fake_queue(tmp_path, monkeypatch, extra)
    got = run(capsys, [], b'To: a@b.c\n\nbody\n')
    assert (got[0], got[2]) == (code, want_err), (
        f'got {(got[0], got[2])!r}, want {(code, want_err)!r}')


def test_queue_unrunnable(home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('QMAILQUEUE', str(tmp_path / 'nonexistent'))
    got = run(capsys, [], b'To: a@b.c\n\nbody\n')
    want = (111, b'', 'qmail-inject: fatal: unable to exec qq (#4.3.0)\n')
    assert got == want, f'got {got!r}, want {want!r}'


def test_queue_program_empty(home, tmp_path, capsys, monkeypatch):
    """QMAILQUEUE set to nothing (a slip in a service script) is a program
    that cannot be run, as for qmail: not an internal error."""
    monkeypatch.setenv('QMAILQUEUE', '')
    got = run(capsys, [], b'To: a@b.c\n\nbody\n')
    want = (111, b'', 'qmail-inject: fatal: unable to exec qq (#4.3.0)\n')
    assert got == want, f'got {got!r}, want {want!r}'


def test_default_queue_program(home, capsys):
    # No QMAILQUEUE: HOME/bin/qmail-queue, missing here.
    got = run(capsys, [], b'To: a@b.c\n\nbody\n')
    want = (111, b'', 'qmail-inject: fatal: unable to exec qq (#4.3.0)\n')
    assert got == want, f'got {got!r}, want {want!r}'


def test_megabyte_header_line_end_to_end(home, tmp_path, capsys,
                                         monkeypatch):
    fake_queue(tmp_path, monkeypatch)
    subject = b'Subject: ' + b's' * (1 << 20) + b'\n'
    box = b'r' * (1 << 20)
    message = subject + b'To: ' + box + b'@x.y\n\nbody\n'
    code, _, err = run(capsys, [], message)
    assert (code, err) == (0, ''), f'got {(code, err[:200])!r}'
    msg, _, recips = queued(tmp_path)
    assert subject in msg, 'subject lost'
    assert recips == [box + b'@x.y'], 'recipient lost'


def test_nul_bytes_end_to_end(home, tmp_path, capsys, monkeypatch):
    fake_queue(tmp_path, monkeypatch)
    message = b'X-Nul: a\0b\nTo: a@b.c\n\nbody\0with\0nuls\n'
    code, _, err = run(capsys, [], message)
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    msg, _, _ = queued(tmp_path)
    assert msg.endswith(b'X-Nul: a\0b\nTo: a@b.c\n\nbody\0with\0nuls\n'), msg


def test_nul_in_address_is_cut_in_envelope(home, tmp_path, capsys,
                                           monkeypatch):
    # qmail hands C strings to qmail-queue: an address ends at a NUL.
    fake_queue(tmp_path, monkeypatch)
    code, _, err = run(capsys, [], b'To: ab\0cd@x.y\n\n')
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    _, _, recips = queued(tmp_path)
    assert recips == [b'ab'], f'got {recips!r}'


def test_ten_thousand_recipients_end_to_end(home, tmp_path, capsys,
                                            monkeypatch):
    fake_queue(tmp_path, monkeypatch)
    addrs = ['user%d@example.com' % i for i in range(10000)]
    code, _, err = run(capsys, ['-a'] + addrs, b'Subject: many\n\nbody\n')
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    _, _, recips = queued(tmp_path)
    assert recips == [a.encode() for a in addrs], 'recipients differ'


def test_big_body_streams(home, tmp_path, capsys, monkeypatch):
    fake_queue(tmp_path, monkeypatch)
    body = b''.join(b'line %d\n' % i for i in range(200000))
    code, _, err = run(capsys, [], b'To: a@b.c\n\n' + body)
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    msg, _, _ = queued(tmp_path)
    assert msg.endswith(b'\n\n' + body), 'body changed'


@pytest.mark.parametrize('args, message, code, err', [
    (['-n'], b'From: "unbalanced\nTo: a\n\n', 100,
     'qmail-inject: fatal: unable to parse this line: From: "unbalanced\n'),
    (['-n'], b'From: (unbalanced\n\n', 100,
     'qmail-inject: fatal: unable to parse this line: From: (unbalanced\n'),
    (['-n'], b'Sender: x>\n\n', 100,
     'qmail-inject: fatal: unable to parse this line: Sender: x>\n'),
    (['-n', '-f', 'a@(b'], b'', 100,
     'qmail-inject: fatal: unable to parse this line: a@(b\n'),
    (['-n', 'x@[y'], b'', 100,
     'qmail-inject: fatal: unable to parse address: x@[y\n'),
    (['-x'], b'', 100, 'qmail-inject: illegal option -- x\n'),
    (['-f'], b'', 100, 'qmail-inject: option requires an argument -- f\n'),
    # not qmail: qmail-inject would queue a message for nobody
    ([], b'Subject: x\n\n', 100, 'qmail-inject: fatal: no recipients\n'),
    (['-a'], b'To: a@b.c\n\n', 100, 'qmail-inject: fatal: no recipients\n'),
    ([], b'To: "unbalanced\n\n', 100,
     'qmail-inject: fatal: no recipients\n'),
])
def test_main_failures(home, capsys, args, message, code, err):
    got = run(capsys, args, message)
    assert (got[0], got[2]) == (code, err), (
        f'got {(got[0], got[2])!r}, want {(code, err)!r}')
    assert 'Traceback' not in got[2]


def test_unparsable_recipient_field_is_kept(home, capsys):
    code, out, err = run(capsys, ['-n'], b'To: "unbalanced\nCc: c\n\n')
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    assert b'\nTo: "unbalanced\nCc: c@mail.example.org\n\n' in out, out


def test_no_home(home, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path / 'nonexistent'))
    got = run(capsys, ['-n'], b'To: a\n\n')
    want = (111, b'', 'qmail-inject: fatal: unable to switch to qmail home'
            ' directory\n')
    assert got == want, f'got {got!r}, want {want!r}'


def test_unreadable_control(home, capsys):
    (home / 'control' / 'defaulthost').unlink()
    (home / 'control' / 'defaulthost').mkdir()     # EISDIR on read
    got = run(capsys, ['-n'], b'To: a\n\n')
    want = (111, b'', 'qmail-inject: fatal: read error\n')
    assert got == want, f'got {got!r}, want {want!r}'


def test_unreadable_me_is_a_read_error_whatever_else_is_there(home, capsys):
    """qmail-inject's control_init reads me first: with every control that
    defaults to it present, an unreadable me was not read at all."""
    for name in ('defaultdomain', 'defaulthost', 'plusdomain', 'idhost'):
        assert (home / 'control' / name).exists()
    (home / 'control' / 'me').unlink()
    (home / 'control' / 'me').mkdir()              # EISDIR on read
    got = run(capsys, ['-n'], b'To: a\n\n')
    want = (111, b'', 'qmail-inject: fatal: read error\n')
    assert got == want, f'got {got!r}, want {want!r}'


def test_controls_default_to_me(home, capsys):
    for name in ('defaultdomain', 'defaulthost', 'plusdomain', 'idhost'):
        (home / 'control' / name).unlink()
    code, out, err = run(capsys, ['-n'], b'To: a, b@c, d@e+\n\n')
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    want = (b'Return-Path: <joe@mx.example.org>\n' + DATE
            + b'Message-ID: <20261125154000.4242.qmail@mx.example.org>\n'
            b'From: joe@mx.example.org\n'
            b'To: a@mx.example.org, b@c.mx.example.org, d@e.mx.example.org\n'
            b'\n')
    assert out == want, f'got {out!r}, want {want!r}'


def test_controls_literal_defaults(home, capsys):
    for name in ('me', 'defaultdomain', 'defaulthost', 'plusdomain',
                 'idhost'):
        (home / 'control' / name).unlink()
    code, out, err = run(capsys, ['-n'], b'To: a, b@c, d@e+\n\n')
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    want = (b'Return-Path: <joe@defaulthost.defaultdomain>\n' + DATE
            + b'Message-ID: <20261125154000.4242.qmail@idhost>\n'
            b'From: joe@defaulthost.defaultdomain\n'
            b'To: a@defaulthost.defaultdomain, b@c.defaultdomain, '
            b'd@e.plusdomain\n'
            b'\n')
    assert out == want, f'got {out!r}, want {want!r}'


def test_environment_beats_controls(home, capsys, monkeypatch):
    monkeypatch.setenv('QMAILDEFAULTHOST', 'h.net')
    monkeypatch.setenv('QMAILDEFAULTDOMAIN', 'd.net')
    monkeypatch.setenv('QMAILPLUSDOMAIN', 'p.net')
    monkeypatch.setenv('QMAILIDHOST', 'i.net')
    code, out, err = run(capsys, ['-n'], b'To: a, b@c, d@e+\n\n')
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    want = (b'Return-Path: <joe@h.net>\n' + DATE
            + b'Message-ID: <20261125154000.4242.qmail@i.net>\n'
            b'From: joe@h.net\n'
            b'To: a@h.net, b@c.d.net, d@e.p.net\n'
            b'\n')
    assert out == want, f'got {out!r}, want {want!r}'


def test_mft_file(home, tmp_path, capsys, monkeypatch):
    (tmp_path / 'lists').write_bytes(b'# my lists\n\nqmail@list.cr.yp.to\n')
    monkeypatch.setenv('QMAILMFTFILE', 'lists')     # relative to cwd
    code, out, err = run(capsys, ['-n'],
                         b'To: QMAIL@list.cr.yp.to\nCc: me@x.y\n\n')
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    want = b'Mail-Followup-To: me@x.y,\n  QMAIL@list.cr.yp.to\n'
    assert want in out, f'got {out!r}'


def test_mft_file_missing(home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('QMAILMFTFILE', str(tmp_path / 'nonexistent'))
    code, out, err = run(capsys, ['-n'], b'To: a@b.c\n\n')
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    assert b'Mail-Followup-To' not in out, out


def test_fullname_option(home, capsys, monkeypatch):
    monkeypatch.setenv('QMAILNAME', 'Env Name')
    code, out, err = run(capsys, ['-n', '-F', 'Opt Name'], b'To: a@b.c\n\n')
    assert (code, err) == (0, ''), f'got {(code, err)!r}'
    assert b'\nFrom: "Opt Name" <joe@mail.example.org>\n' in out, out


def test_empty_input(home, capsys):
    code, out, err = run(capsys, ['-n'], b'')
    want = (b'Return-Path: <joe@mail.example.org>\n' + DATE + MSGID
            + FROM_JOE + NOT_SHOWN)
    assert (code, out, err) == (0, want, ''), f'got {(code, out, err)!r}'


def test_internal_bug_is_one_line(home, capsys, monkeypatch):
    def boom(*args):
        raise KeyError('surprise')
    monkeypatch.setattr(inject, 'header_fields', boom)
    code, _, err = run(capsys, ['-n'], b'To: a\n\n')
    assert code == 111, f'got {code}'
    assert err == 'qmail-inject: fatal: internal bug (KeyError in boom)\n', err


def test_a_reader_gone_is_no_success(home, capsys):
    class Gone:
        def write(self, data):
            raise BrokenPipeError

        def flush(self):
            raise BrokenPipeError
    code = inject.main(['-n'], stdin=io.BytesIO(b'To: a\n\nbody\n'), stdout=Gone())
    assert (code, capsys.readouterr().err) == (
        111, 'qmail-inject: fatal: unable to write output\n')


def test_a_reader_gone_is_a_temporary_failure_as_the_c_program(home):
    """`qmail-inject -n | head -c 10`: the C program ignores SIGPIPE and
    exits 111 ("read error", at its next read); this one died of SIGPIPE
    (it was thought to be the C program's way); exiting 0 would claim the
    copy was made."""
    import subprocess
    import sys
    r, w = os.pipe()
    os.close(r)                     # the reader is gone before the first write
    try:
        p = subprocess.run(
            [sys.executable, '-c', 'from qmail.lib import auto; auto.QMAIL = %r; '
             'from qmail import inject; inject.run()' % str(home), '-n'],
            input=b'To: a@b.c\n\n' + b'body line\n' * 20000, stdout=w,
            stderr=subprocess.PIPE, timeout=60,
            env={'PATH': '/usr/bin:/bin', 'USER': 'joe',
                 'PYTHONPATH': os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (111, b'qmail-inject: fatal: unable to write output\n')


def test_main_reads_fd0_and_writes_fd1(home, tmp_path, capfd):
    # No stdin/stdout given: fds 0 and 1, as the installed program.
    src = tmp_path / 'in'
    src.write_bytes(b'To: a@b.c\n\nbody')
    fd = os.open(src, os.O_RDONLY)
    saved = os.dup(0)
    try:
        os.dup2(fd, 0)
        code = inject.main(['-n'])
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(fd)
    out = capfd.readouterr().out
    assert code == 0, f'got {code}'
    assert out.endswith('To: a@b.c\n\nbody\n'), out


@pytest.mark.parametrize('euid, daemon', [(0, True), (1, False)])
def test_a_set_uid_caller_is_queued_by_qmail_queue_not_the_daemon(tmp_path, monkeypatch,
                                                                   euid, daemon):
    """qmail-queued knows its client by the effective uid; qmail-queue
    records the real one, as qmail does: a set-uid program's mail says
    who ran it."""
    from qmail.lib import qqtalk
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path))
    asked = []
    monkeypatch.setattr(qqtalk, 'connect_daemon', lambda *a: asked.append(1))
    monkeypatch.setattr(qqtalk.os, 'getuid', lambda: 0)
    monkeypatch.setattr(qqtalk.os, 'geteuid', lambda: euid)
    try:
        qqtalk.QueueClient(os.path.join(str(tmp_path), 'bin', 'qmail-queue'))
    except OSError:
        pass                        # no qmail-queue here to run
    assert bool(asked) == daemon


def test_a_queue_program_gets_sigpipe_and_sigxfsz_as_defaults(tmp_path, monkeypatch):
    """QMAILQUEUE's program (spamc before qmail-queue, say) started with
    SIGXFSZ ignored, as the interpreter set it for itself: under softlimit
    -f it got EFBIG where a C qmail's child is killed."""
    from qmail.lib import qqtalk
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    seen = tmp_path / 'sigign'
    program = tmp_path / 'qq'
    program.write_text('#!/bin/sh\ngrep ^SigIgn /proc/$$/status > %s\ncat > /dev/null\n'
                       'cat <&1 > /dev/null\n' % seen)
    program.chmod(0o755)
    qq = qqtalk.QueueClient(str(program))
    qq.put(b'Subject: x\n\nbody\n')
    qq.from_(b'a@b.c')
    qq.to(b'd@e.f')
    assert qq.close() == ''
    ignored = int(seen.read_text().split()[1], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)) == 0, hex(ignored)


@pytest.mark.parametrize('args, env', [
    (['-f', 'x\nSubject: injected@evil.example', 'a@b.c'], {}),
    (['-F', 'Joe\r\nBcc: c@d.e', 'a@b.c'], {}),
    (['a@b.c'], {'NAME': 'Joe\nX-Injected: 1'}),
    (['a@b.c'], {'QMAILHOST': 'h\n.example'}),
])
def test_a_line_break_in_sender_name_user_or_host_is_refused(home, tmp_path, capsys,
                                                             monkeypatch, args, env):
    """Beyond qmail: they went into From:, Message-ID: or the envelope as
    they were, so "sendmail -f" with a web form's input added header
    fields of its writer's choosing."""
    fake_queue(tmp_path, monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, args, b'Subject: x\n\nbody\n')
    assert code == 100 and 'line break in the' in err, (code, err)
    assert not (tmp_path / 'msg').exists()


@pytest.mark.parametrize('env, header', [
    ({'NAME': 'Joe\nX-Injected: 1'}, b'From: joe@example.org\n'),
    ({'QMAILHOST': 'h\n.example'},
     b'From: joe@example.org\nMessage-ID: <1@example.org>\n'),
])
def test_a_line_break_in_a_value_the_message_does_not_use_stops_nothing(
        home, tmp_path, capsys, monkeypatch, env, header):
    """As with qmail: NAME or the host matter only to the From: (and
    sender, Message-ID) qmail-inject makes, so a message bringing its own
    is queued, with none of that text in it."""
    fake_queue(tmp_path, monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv('QMAILSHOST', 'example.org')
    code, out, err = run(capsys, ['a@b.c'], header + b'Subject: x\n\nbody\n')
    assert code == 0, err
    msg = (tmp_path / 'msg').read_bytes()
    assert b'Injected' not in msg and b'h\n' not in msg


def test_a_header_of_many_small_fields_costs_about_its_size(tmp_path):
    """1.5 million fields, 10.5 MB: the fields are passed on as they are
    read, into one buffer, not kept as an object each (which took 244 MB
    and ran out under this limit: 'qmail-inject: fatal: out of memory').
    Its home is an empty directory: no control file, every default."""
    import resource
    import subprocess
    import sys
    limit = 128 << 20

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    header = b'X-A: b\n' * 1500000 + b'To: x@example.com\n'
    r = subprocess.run(
        [sys.executable, '-c', 'import sys; from qmail.lib import auto; auto.QMAIL = %r; '
         'from qmail import inject; sys.exit(inject.main(["-n"]))' % str(tmp_path)],
        input=header + b'\nbody\n', capture_output=True, preexec_fn=cap,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=120)
    assert (r.returncode, r.stderr) == (0, b'')
    assert r.stdout.endswith(header + b'\nbody\n')


@pytest.mark.parametrize('control, env, code', [
    ('idhost', {}, 111),             # the admin's: try again once it is mended
    ('me', {}, 111),                 # (idhost's default)
    (None, {'QMAILIDHOST': 'h\r'}, 100),     # the caller's
])
def test_a_cr_in_the_message_id_host_is_the_admins_or_the_callers(
        home, tmp_path, capsys, monkeypatch, control, env, code):
    """A control file saved with CR LF ends its line in a CR: that is no
    fault of the mail's, so 111, not the 100 of a caller's own value."""
    fake_queue(tmp_path, monkeypatch)
    ctl = tmp_path / 'qmail' / 'control'
    if control == 'me':
        (ctl / 'idhost').unlink()
    if control is not None:
        (ctl / control).write_bytes(b'id.example.org\r\n')
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    got, out, err = run(capsys, ['a@b.c'], b'Subject: x\n\nbody\n')
    assert got == code and 'line break in the host' in err, (got, err)
    if code == 111:
        assert 'control/idhost' in err, err


@pytest.mark.parametrize('daemon', [False, True])
@pytest.mark.parametrize('free', [3, 4])
def test_a_queue_client_without_descriptors_is_unable_to_exec_qq(tmp_path, monkeypatch,
                                                                 daemon, free):
    """The descriptor table full (a low ulimit -n): QueueClient's pipes
    raised OSError out of qmail-send's bounce (exit 111, again at every
    restart), and the pipes already made stayed open (a pool worker then
    retired for a descriptor left open).  Now qmail's qmail_open failure:
    "unable to exec qq", nothing left open."""
    import resource
    from qmail.lib import prefork, qqtalk
    monkeypatch.setattr(auto, 'QMAIL', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    before = prefork.open_fds()
    highest = max(int(fd) for fd in os.listdir('/proc/self/fd'))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
    fillers = []
    try:
        while True:             # every free descriptor taken ...
            try:
                fillers.append(os.open('/dev/null', os.O_RDONLY))
            except OSError:
                break
        # ... but three or four: a pipe of the three fails, or (for
        # qmail-queued: the daemon path) the two pipes are had, its
        # socket is not (found by a review of the fix)
        for _ in range(free):
            os.close(fillers.pop())
        qq = qqtalk.QueueClient(str(tmp_path / 'bin' / 'qmail-queue') if daemon else '/bin/true')
        assert qq.spawn_error is not None and qq.flagerr
        qq.put(b'Subject: x\n\nbody\n')
        qq.from_(b'a@b.c')
        qq.to(b'd@e.f')
        assert qq.close() == 'Zunable to exec qq (#4.3.0)'
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert prefork.open_fds() == before
