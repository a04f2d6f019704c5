"""qmail-send's state in a scratch queue, for the tests that drive it
by hand (no pipes, no loop): tests/test_background.py and
tests/test_send_direct.py."""

from qmail import send
from qmail.lib import control


def scratch_send(tmp_path, monkeypatch, split):
    """A Send working in a new queue under tmp_path (control/me, the
    split directories, intd/, lock/command; the cwd), its lanes' windows off (no loop
    here to tick them), 4 local and 4 remote slots, and the list its log
    lines go to: (send, log)."""
    (tmp_path / 'control').mkdir()
    (tmp_path / 'control' / 'me').write_text('here.example\n')
    q = tmp_path / 'queue'
    for d in ('info', 'local', 'remote', 'mess', 'todo', 'bounce'):
        for i in range(split):
            (q / d / str(i)).mkdir(parents=True)
    (q / 'intd').mkdir()
    (q / 'lock').mkdir()
    import os
    os.mkfifo(q / 'lock' / 'command', 0o600)
    monkeypatch.chdir(q)
    ctl = control.Controls(str(tmp_path / 'control'))
    s = send.Send(ctl, send.Controls(ctl), split)
    for lane in s.lanes:
        lane.window = 0.0
    s.dels = [[None] * 4, [None] * 4]
    s.numjobs = 8
    s.concurrency = [4, 4]
    log = []
    monkeypatch.setattr(send, 'log', log.append)
    return s, log


def put(path, data: bytes):
    with open(path, 'wb') as f:
        f.write(data)
