"""A small SMTP load client that stamps each message, for the latency runs.

smtp-source sends identical messages and records no times, so the
latency runs use this client instead, driving the server the way
smtp-source does: `sessions` SMTP sessions in parallel, either one
message per connection (connect, EHLO, MAIL, RCPT, DATA, QUIT) or, like
smtp-source -d, every message of a session over one connection; no
pipelining.  With a rate, an open loop instead: a new connection with one
message every 1/rate seconds, however many are still under way.  Each message carries its number in an X-Bench-Id header,
and the client records, per number, the wall-clock time (time.time())
just after the final "." of the DATA was written to the socket: the
moment the client sent it.  Latency is computed later against the
moment the delivered file appeared in Maildir/new (bench/watch.py).
"""

import asyncio
import os
import re
import signal
import time

TIMEOUT = 120            # per SMTP reply; a stuck server fails the run
ID_RE = re.compile(rb'^X-Bench-Id: (\d+)\r?$', re.M)


class SmtpError(Exception):
    pass


def body(length: int) -> bytes:
    """length bytes of payload in 80-byte lines, as smtp-source -l does."""
    line = b'X' * 78 + b'\r\n'
    full, rest = divmod(length, len(line))
    out = line * full
    if rest:
        out += b'X' * max(rest - 2, 0) + b'\r\n'
    return out


def message(num: int, sender: str, recip: str, payload: bytes) -> bytes:
    head = ('From: <%s>\r\nTo: <%s>\r\nSubject: bench %d\r\n'
            'Message-Id: <%d.bench@client.example.com>\r\nX-Bench-Id: %d\r\n\r\n'
            % (sender, recip, num, num, num)).encode()
    return head + payload + b'.\r\n'


async def reply(reader, want: bytes):
    """Read one (multi-line) reply; SmtpError unless its code starts with want."""
    while True:
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        if not line:
            raise SmtpError('connection closed')
        if line[3:4] != b'-':
            break
    if not line.startswith(want):
        raise SmtpError(line.decode('latin-1').strip())


class Load:
    def __init__(self, host, port, count, sessions, reuse, length,
                 sender, recip, helo='client.example.com', rate=None):
        self.rate = rate
        self.host, self.port = host, port
        self.count, self.sessions = count, sessions
        self.reuse = reuse
        self.payload = body(length)
        self.sender, self.recip, self.helo = sender, recip, helo
        self.next = 0
        self.interrupted = []
        self.sent = {}              # number -> time.time() after the final "."
        self.accepted = {}          # number -> time.time() at the 250

    def take(self):
        if self.next >= self.count or self.interrupted:
            return None
        self.next += 1
        return self.next

    async def connect(self):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), TIMEOUT)
        await reply(reader, b'220')
        writer.write(b'EHLO %s\r\n' % self.helo.encode())
        await reply(reader, b'250')
        return reader, writer

    async def transaction(self, reader, writer, num):
        writer.write(b'MAIL FROM:<%s>\r\n' % self.sender.encode())
        await reply(reader, b'250')
        writer.write(b'RCPT TO:<%s>\r\n' % self.recip.encode())
        await reply(reader, b'250')
        writer.write(b'DATA\r\n')
        await reply(reader, b'354')
        writer.write(message(num, self.sender, self.recip, self.payload))
        await writer.drain()
        self.sent[num] = time.time()
        await reply(reader, b'250')
        self.accepted[num] = time.time()

    async def quit(self, reader, writer):
        writer.write(b'QUIT\r\n')
        try:
            await reply(reader, b'221')
        finally:
            writer.close()

    async def session(self):
        if self.reuse:
            num = self.take()
            if num is None:
                return
            reader, writer = await self.connect()
            while num is not None:
                await self.transaction(reader, writer, num)
                num = self.take()
            await self.quit(reader, writer)
            return
        while True:
            num = self.take()
            if num is None:
                return
            reader, writer = await self.connect()
            await self.transaction(reader, writer, num)
            await self.quit(reader, writer)

    async def one(self, num):
        reader, writer = await self.connect()
        await self.transaction(reader, writer, num)
        await self.quit(reader, writer)

    async def open_loop(self):
        """A new connection with one message every 1/rate seconds, whether
        or not the earlier ones are done: an offered load, not a closed loop."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for num in range(1, self.count + 1):
            if self.interrupted:
                break
            delay = start + (num - 1) / self.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self.one(num)))
        await asyncio.gather(*tasks)

    async def run_all(self):
        if self.rate:
            await self.open_loop()
            return
        await asyncio.gather(*(self.session() for _ in range(self.sessions)))

    def run(self, timeout):
        """Send everything within timeout seconds; (first connection time,
        time of the last 250)."""
        # Ctrl-C: asyncio.run would cancel the task, and wait_for (3.11)
        # can swallow a cancellation; instead, no new message is started
        # and KeyboardInterrupt is raised once the sessions have ended.
        old = signal.signal(signal.SIGINT, lambda signum, frame: self.interrupted.append(signum))
        try:
            t0 = time.time()
            asyncio.run(asyncio.wait_for(self.run_all(), timeout))
        finally:
            signal.signal(signal.SIGINT, old)
        if self.interrupted:
            raise KeyboardInterrupt
        return t0, time.time()


def delivered(newdir: str, appeared: dict):
    """{bench number: time its file appeared in new/} from the watcher's
    {file name: time} (bench/watch.py) and each file's X-Bench-Id."""
    out = {}
    for name in os.listdir(newdir):
        if name not in appeared:
            continue
        with open(os.path.join(newdir, name), 'rb') as f:
            head = f.read(4096)
        m = ID_RE.search(head)
        if m:
            out[int(m.group(1))] = appeared[name]
    return out


def latencies(sent: dict, arrived: dict):
    """Seconds from sending to delivery, one per message that has both."""
    return sorted(arrived[n] - sent[n] for n in sent if n in arrived)


def percentile(values, p):
    """Nearest-rank percentile of sorted values."""
    if not values:
        return float('nan')
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]
