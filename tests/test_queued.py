"""qmail-queued's serve(): a bug in the pool's parent restarts the pool
instead of leaving the daemon down until qmail-send's restart."""

import signal

import pytest

from qmail import queued


@pytest.fixture(autouse=True)
def keep_term():
    """serve() sets a TERM handler: the test process gets its own back."""
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


class FakePool:
    runs = []

    def __init__(self, sock, handle, limit, spare, max_use):
        self.stopped = False

    def stop(self):
        self.stopped = True

    def serve(self, watch):
        FakePool.runs.append(self)
        if len(FakePool.runs) == 1:
            raise TypeError('a bug')
        return None


def test_a_failed_pool_is_started_again(monkeypatch):
    FakePool.runs = []
    pauses = []
    monkeypatch.setattr(queued.prefork, 'Pool', FakePool)
    monkeypatch.setattr(queued, 'watch_fd0', lambda: False)
    monkeypatch.setattr(queued.durable, 'load_writeback', lambda: None)
    monkeypatch.setattr(queued.time, 'sleep', pauses.append)
    assert queued.serve(None, {}) == 0
    assert len(FakePool.runs) == 2 and FakePool.runs[0] is not FakePool.runs[1]
    assert pauses == [queued.RESTART_PAUSE]


def test_a_pool_failing_while_stopping_is_not_restarted(monkeypatch):
    FakePool.runs = []
    monkeypatch.setattr(queued.prefork, 'Pool', FakePool)
    monkeypatch.setattr(queued, 'watch_fd0', lambda: False)
    monkeypatch.setattr(queued.durable, 'load_writeback', lambda: None)

    def serve(self, watch):
        FakePool.runs.append(self)
        queued.signal.getsignal(queued.signal.SIGTERM)(15, None)    # TERM came
        raise TypeError('a bug')
    monkeypatch.setattr(FakePool, 'serve', serve)
    with pytest.raises(TypeError):
        queued.serve(None, {})
    assert len(FakePool.runs) == 1 and FakePool.runs[0].stopped
