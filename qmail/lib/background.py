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

Work is held at submit(); at the end of its turn the loop decides where
it runs.  If nothing else is ready (a poll that does not wait), the
loop would only sleep until the disk is done: run_held() does the work
right there, each then() after its work(), and costs no thread switch,
no lock handed between threads and no extra turn (at one message at a
time, that was a third of qmail-send's CPU).  If something is ready,
the loop sees to it first (once: passed_over), and if something is
ready again, release() gives the held work to the threads.  Work that
took longer than INLINE_SLOW, in the loop or a thread (a slow or failing
disk), sends what comes in the next INLINE_PAUSE seconds (or ten times
as long as it took) to the threads.

An exception inside work() is raised again by finish() (or run_held()),
in the loop, as if the work had been done there.

Inline (crash tests, where each durable step must be a numbered crash
point, and with durable's hooks set): work() and then() run at once, in
submit(), one after another: the same steps in the same order, without
the overlap.
"""

import collections
import os
import queue
import threading
import time

from qmail.lib import durable

INLINE_SLOW = 0.005  # held work that took longer in the loop (a slow disk) ...
INLINE_PAUSE = 1.0   # ... sends the next second's to the threads
THREADS = 2         # a batch of new messages and a batch of D marks at once
# Each thread's stack: glibc's default is the soft stack limit, which
# softlimit -m N (a run script's) makes N, so that two threads needed
# twice the address space allowed and could not start.
THREAD_STACK = 1 << 20


class Background:
    def __init__(self, inline: bool = False):
        self.inline = inline
        self.pending = 0                     # submitted, then() not yet run
        self._done = collections.deque()     # (then, result, exception)
        self._work = None                    # queue.SimpleQueue, once started
        self.fd = -1                         # readable when finish() has work
        self._wake = -1
        self.held = []                       # (work, then): submitted, not yet begun
        self.passed_over = False             # the loop chose other work over it once
        self.threads_until = 0.0             # monotonic: inline not before then

    def submit(self, work, then):
        if self.inline or durable.hook is not None or durable.after is not None:
            then(work())
            return
        self.pending += 1
        self.held.append((work, then))

    def run_held(self):
        """The loop has nothing else to do: the held work, here and now,
        each then() right after its work() (not what its sequels submit:
        that waits for the loop's next decision)."""
        batch, self.held = self.held, []
        self.passed_over = False
        for i, (work, then) in enumerate(batch):
            self.pending -= 1
            start = time.monotonic()
            try:
                result = work()
            except BaseException:
                self.held[:0] = batch[i + 1:]
                raise
            slow = self._timed(start)
            if slow:
                self.held[:0] = batch[i + 1:]   # to the threads, next turn
            then(result)
            if slow:
                return

    def _timed(self, start: float) -> bool:
        """Work that began at start is done: if it took long, the loop
        leaves the held work to the threads for a while (longer, the
        slower the disk).  True if it took long."""
        now = time.monotonic()
        took = now - start
        if took <= INLINE_SLOW:
            return False
        self.threads_until = max(self.threads_until, now + max(INLINE_PAUSE, 10 * took))
        return True

    def inline_ok(self) -> bool:
        """May the loop do held work itself?  Not for a while after some
        took long (a slow or failing disk): the loop must stay free."""
        return not self.threads_until or time.monotonic() >= self.threads_until

    def release(self):
        """The loop is busy: the threads take the held work."""
        self.passed_over = False
        if not self.held:
            return
        if self._work is None:
            try:
                self.fd, self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                # No descriptor for the threads' wake-up (the table full,
                # a backlog's files open): the loop does the work itself,
                # now, and the threads start another time.  (Ending the
                # program here made qmail-send exit at every start.)
                self.run_held()
                return
            self._work = queue.SimpleQueue()
            if not self._start_threads():
                # None would start (no process left to the user, say):
                # the same as no descriptor, the loop does the work.
                os.close(self.fd)
                os.close(self._wake)
                self.fd = self._wake = -1
                self._work = None
                self.run_held()
                return
        for item in self.held:
            self._work.put(item)
        self.held = []

    def _start_threads(self) -> int:
        """How many of THREADS started."""
        threading.stack_size(THREAD_STACK)
        started = 0
        for _ in range(THREADS):
            try:
                threading.Thread(target=self._thread, name='disk', daemon=True).start()
            except RuntimeError:        # "can't start new thread"
                break
            started += 1
        return started

    def _thread(self):
        while True:
            work, then = self._work.get()
            start = time.monotonic()
            try:
                self._done.append((then, work(), None))
                self._timed(start)      # a float stored: the loop reads it
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
    added meanwhile making the next.

    window (seconds): an item that finds the lane idle waits that long
    for others before its batch goes (the loop calls tick(), and sleeps
    no longer than due); a quiet loop then makes one batch of a few
    items, one cache flush for all, where it made one each.  Items that
    waited for a batch on its way go at once after it.  No window under
    crash tests (the steps stay in order) or once flush() was called."""

    def __init__(self, bg: Background, work, then, window: float = 0.0):
        self.bg, self.work, self.then = bg, work, then
        self.window = window
        self.waiting = []
        self.busy = False
        self.inflight = 0           # items in the batch under way
        self.due = None             # monotonic: when the waiting batch goes

    def add(self, items):
        self.waiting.extend(items)
        if self.busy or self.due is not None:
            return
        if (not self.window or self.bg.inline
                or durable.hook is not None or durable.after is not None):
            self._go()
        else:
            self.due = time.monotonic() + self.window

    def tick(self, now: float):
        """The loop's turn: start the batch whose window is over."""
        if self.due is not None and now >= self.due:
            self._go()

    def flush(self):
        """No more windows (the program is stopping): the waiting batch
        goes now."""
        self.window = 0.0
        if self.due is not None or (self.waiting and not self.busy):
            self._go()

    def _go(self):
        self.due = None
        if self.busy or not self.waiting:
            return
        batch, self.waiting = self.waiting, []
        self.busy = True
        self.inflight = len(batch)
        self.bg.submit(lambda: self.work(batch), lambda result: self._done(batch, result))

    def _done(self, batch, result):
        self.busy = False
        self.inflight = 0
        self.then(batch, result)
        if self.waiting and not self.busy:
            self._go()
