"""qmail-send's log while its loop runs: a turn's lines leave together,
before the loop sleeps, in writes of whole lines no bigger than PIPE_BUF
(a pipe takes such a write whole: another writer cannot cut a line)."""

import os

from qmail import send


def test_lines_held_for_the_turn_then_written_whole(monkeypatch):
    r, w = os.pipe()
    writes = []
    real_write = os.write

    def write(fd, data):
        if fd == w:
            writes.append(bytes(data))
        return real_write(fd, data)
    monkeypatch.setattr(send, 'LOGFD', w)
    monkeypatch.setattr(send.os, 'write', write)
    send.log('before the loop: at once\n')
    assert writes == [b'before the loop: at once\n']
    monkeypatch.setattr(send, '_logheld', [])
    lines = ['delivery %d: success: %s\n' % (i, 'x' * 90) for i in range(100)]
    for line in lines:
        send.log(line)
    assert len(writes) > 1                     # full pipe-sized writes went already
    send.log_flush()
    assert b''.join(writes[1:]) == ''.join(lines).encode()
    for data in writes[1:]:
        assert len(data) <= send.PIPE_BUF and data.endswith(b'\n')
    n = len(writes)
    send.log_flush()                           # nothing held: nothing written
    assert len(writes) == n
    os.close(w)
    got = b''
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        got += chunk
    os.close(r)
    assert got == b'before the loop: at once\n' + ''.join(lines).encode()
