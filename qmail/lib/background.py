"""Disk work done beside an event loop, its results handed back to the loop.

qmail-send's loop must not wait for the disk: while one batch of new
messages is being fsynced it should be starting deliveries and reading
reports.  Background.submit(work, then) runs work() in a thread and,
once it is done, the loop (having seen readiness on self.fd) calls
finish(), which runs then(result) in the loop's own thread, in the order
the work finished.  Work does file steps only (qmail.lib.durable) on
files nothing else touches meanwhile; every decision, every change of
the program's state, stays in then(), so the loop's state never needs a
lock.  A step that must follow another is chained: the first's then()
submits the second.

A Lane batches work of one kind: items added while its batch is on its
way to disk wait, and go together in the next batch (one journal commit
for what arrived during the last one, as group commit does), so a busy
loop makes few large batches and an idle one acts on each item at once.

An exception inside work() is raised again by finish(), in the loop, as
if the work had been done there.

Inline (crash tests, where each durable step must be a numbered crash
point, and with durable's hooks set): work() and then() run at once, in
submit(), one after another: the same steps in the same order, without
the overlap.
"""

import collections
import os
import queue
import threading

from qmail.lib import durable

THREADS = 2         # a batch of new messages and a batch of D marks at once


class Background:
    def __init__(self, inline: bool = False):
        self.inline = inline
        self.pending = 0                     # submitted, then() not yet run
        self._done = collections.deque()     # (then, result, exception)
        self._work = None                    # queue.SimpleQueue, once started
        self.fd = -1                         # readable when finish() has work
        self._wake = -1

    def submit(self, work, then):
        if self.inline or durable.hook is not None or durable.after is not None:
            then(work())
            return
        if self._work is None:
            self.fd, self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._work = queue.SimpleQueue()
            for _ in range(THREADS):
                threading.Thread(target=self._thread, name='disk', daemon=True).start()
        self.pending += 1
        self._work.put((work, then))

    def _thread(self):
        while True:
            work, then = self._work.get()
            try:
                self._done.append((then, work(), None))
            except BaseException as e:       # raised again in the loop
                self._done.append((then, None, e))
            try:
                os.write(self._wake, b'.')
            except OSError:                  # full: the loop is woken already
                pass

    def finish(self):
        """Run then() of every finished work, in the loop's thread."""
        if self.fd == -1:
            return
        try:
            os.read(self.fd, 4096)      # a wake-up byte per work done, at most
        except OSError:
            pass
        while self._done:
            then, result, exc = self._done.popleft()
            self.pending -= 1
            if exc is not None:
                raise exc
            then(result)


class Lane:
    """add(items): work(batch) -> result in the background, then
    then(batch, result) in the loop; one batch at a time, the items
    added meanwhile making the next."""

    def __init__(self, bg: Background, work, then):
        self.bg, self.work, self.then = bg, work, then
        self.waiting = []
        self.busy = False

    def add(self, items):
        self.waiting.extend(items)
        if not self.busy:
            self._go()

    def _go(self):
        batch, self.waiting = self.waiting, []
        self.busy = True
        self.bg.submit(lambda: self.work(batch), lambda result: self._done(batch, result))

    def _done(self, batch, result):
        self.busy = False
        self.then(batch, result)
        if self.waiting and not self.busy:
            self._go()
