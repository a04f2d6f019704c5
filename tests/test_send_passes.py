"""qmail-send's passes over a channel's messages: the trouble a pass
meets is named as qmail names it."""

import os

from qmail.lib.qfile import qfn
from scratch_send import put, scratch_send

SPLIT = 23


def test_an_unreadable_info_is_named_not_the_channel_file(tmp_path, monkeypatch):
    """An info/ left empty: qmail's warning names info/ (getinfo rebuilds
    the name before its trouble); this one named local/, a file that was
    fine, every 123 seconds (found by a review of the schedule)."""
    s, log = scratch_send(tmp_path, monkeypatch, SPLIT)
    put(qfn('mess', 44, SPLIT), b'Subject: x\n\nbody\n')
    put(qfn('info', 44, SPLIT), b'')
    put(qfn('local', 44, SPLIT), b'Tu@here.example\0')
    s.pqadd(44)
    assert s.pass_dochan(0)
    assert log == ['warning: trouble opening %s; will try again later\n'
                   % qfn('info', 44, SPLIT)]
    assert [m for _, m in s.pqchan[0]] == [44] and os.path.exists(qfn('local', 44, SPLIT))
