"""qmail-remote for real: a dnsmasq serving MX, A, AAAA and CNAME records
on a loopback port, test SMTP servers in threads on 127.55.x.y (port 25
for MX deliveries), deliveries in-process through remote.deliver(), the
installed program as qmailr, and whole runs through qmail-send.

Needs root (port 25, the installed homes) and dnsmasq (Debian's
dnsmasq-base: the binary, no system service).
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import RUNTIME, TIMEOUT, install_home, needs_root, remove_home
from delivery import Mta, dnsmasq

from qmail import remote, remote_smtp, rspawn
from qmail.lib import control, tcpto

pytestmark = [needs_root,
              pytest.mark.skipif(shutil.which('dnsmasq') is None,
                                 reason='needs dnsmasq (dnsmasq-base)')]

WAIT = 20               # seconds any one thing may take here

# The test zone.  127.0.0.1 and ::1 are this host's (ipme); 127.55.x.y
# are routed to the loopback but on no interface, so not "me".
ZONE = """\
no-resolv
no-hosts
local=/qmt.test/
mx-host=mx.qmt.test,mx1.mx.qmt.test,10
mx-host=mx.qmt.test,mx2.mx.qmt.test,20
host-record=mx1.mx.qmt.test,127.55.1.1
host-record=mx2.mx.qmt.test,127.55.1.2
mx-host=ties.qmt.test,t1.ties.qmt.test,10
mx-host=ties.qmt.test,t2.ties.qmt.test,10
host-record=t1.ties.qmt.test,127.55.1.3
host-record=t2.ties.qmt.test,127.55.1.4
host-record=nomx.qmt.test,127.55.1.5
cname=alias.qmt.test,nomx.qmt.test
mx-host=me.qmt.test,loop.qmt.test,10
mx-host=me.qmt.test,mx2.mx.qmt.test,20
host-record=loop.qmt.test,127.0.0.1
mx-host=null.qmt.test,.,0
mx-host=noaddr.qmt.test,nxhost.qmt.test,10
host-record=relay.qmt.test,127.55.0.1
host-record=v6host.qmt.test,::1
mx-host=v6mx.qmt.test,v6host.qmt.test,10
mx-host=tls.qmt.test,mx.tls.qmt.test,10
host-record=mx.tls.qmt.test,127.55.1.6
mx-host=tlsbad.qmt.test,other.tls.qmt.test,10
mx-host=forged.qmt.test,mx.tls.qmt.test,10
host-record=other.tls.qmt.test,127.55.1.7
mx-host=notls.qmt.test,mx.notls.qmt.test,10
host-record=mx.notls.qmt.test,127.55.1.8
mx-host=backup.qmt.test,primary.soft.test,10
mx-host=backup.qmt.test,loop.qmt.test,20
host-record=mapped.qmt.test,::ffff:127.0.0.1
mx-host=v4mapped.qmt.test,mapped.qmt.test,10
"""
BULK = 5
for _i in range(1, BULK + 1):
    ZONE += 'mx-host=d%d.bulk.qmt.test,mx.d%d.bulk.qmt.test,10\n' % (_i, _i)
    ZONE += 'host-record=mx.d%d.bulk.qmt.test,127.55.2.%d\n' % (_i, _i)


@pytest.fixture(scope='module')
def dns_server():
    """dnsmasq answering for qmt.test: (address, port)."""
    with dnsmasq(ZONE, ('mx1.mx.qmt.test', 'A')) as port:
        yield '127.0.0.1', port


@pytest.fixture(scope='module')
def cert():
    """A self-signed certificate for mx.tls.qmt.test: (certfile, keyfile),
    world-readable, so qmailr may use it as a CA file."""
    tmp = tempfile.mkdtemp(prefix='qmt-cert.')
    os.chmod(tmp, 0o755)
    certfile, keyfile = os.path.join(tmp, 'cert.pem'), os.path.join(tmp, 'key.pem')
    self_signed(certfile, keyfile, 'mx.tls.qmt.test')
    yield certfile, keyfile
    shutil.rmtree(tmp, ignore_errors=True)


def self_signed(certfile, keyfile, name):
    """A self-signed certificate for name (world-readable) and its key."""
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyfile,
                    '-out', certfile, '-days', '2', '-subj', '/CN=' + name,
                    '-addext', 'subjectAltName=DNS:' + name],
                   check=True, capture_output=True, timeout=TIMEOUT)
    os.chmod(certfile, 0o644)


def server_context(cert):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    return ctx


def client_name(conn):
    """The CN of the client certificate a TLS connection showed, or None."""
    cert = conn.getpeercert()
    for rdn in (cert or {}).get('subject', ()):
        for key, value in rdn:
            if key == 'commonName':
                return value
    return None


# --- a test SMTP server ----------------------------------------------------------

class Sink:
    """An SMTP server in threads.  replies: per stage (greeting, ehlo,
    helo, mail, rcpt, data, dot) the reply, or for rcpt a function of the
    address; hang / drop: the stage at which it stops answering or closes;
    tls: an SSLContext to offer STARTTLS with, or 'broken' to answer 220
    and then talk nonsense.  backlog_full: accept nothing, so connecting
    times out.  Accepted messages land in .messages."""

    def __init__(self, host, port=0, tls=None, hang=None, drop=None,
                 backlog_full=False, implicit=False, **replies):
        self.replies = {'greeting': b'220 sink ESMTP', 'ehlo': None, 'helo': b'250 hi',
                        'mail': b'250 ok', 'rcpt': b'250 ok', 'data': b'354 go',
                        'dot': b'250 ok queued'}
        self.replies.update(replies)
        self.tls, self.hang, self.drop = tls, hang, drop
        self.implicit = implicit        # TLS from the start (port 465), no STARTTLS
        self.auths = []                 # the AUTH lines it got
        self.messages = []
        self.connections = 0
        self.stop = threading.Event()
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.held = []
        self.thread = None
        if backlog_full:
            self.sock.listen(0)
            filler = socket.create_connection((host, self.port), timeout=WAIT)
            self.held.append(filler)
            return
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        # the accept loop holds the socket in poll() for up to 0.1 s:
        # closing under it would keep the port bound that long
        if getattr(self, 'thread', None) is not None:
            self.thread.join(WAIT)
        self.sock.close()
        for s in self.held:
            s.close()

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn):
        try:
            conn.settimeout(WAIT)
            self.talk(conn)
        except (OSError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def cut(self, stage):
        """True if the conversation ends at stage."""
        if self.hang == stage:
            self.stop.wait(WAIT)
            return True
        return self.drop == stage

    def talk(self, conn):
        f = conn.makefile('rb')

        def say(reply):
            conn.sendall(reply + b'\r\n')

        tlsinfo = client = None
        if self.implicit:
            conn = self.tls.wrap_socket(conn, server_side=True)
            f = conn.makefile('rb')
            tlsinfo = conn.version()
            client = client_name(conn)
        if self.cut('greeting'):
            return
        say(self.replies['greeting'])
        helo, mail, rcpts = None, None, []
        while True:
            line = f.readline(10000)
            if not line:
                return
            verb = line[:4].upper()
            arg = line[5:].rstrip(b'\r\n') if len(line) > 5 else b''
            if verb == b'EHLO':
                if self.cut('ehlo'):
                    return
                helo = arg
                if self.replies['ehlo']:
                    say(self.replies['ehlo'])
                    continue
                ext = [b'250-sink', b'250-SIZE 10000000', b'250-8BITMIME', b'250-AUTH PLAIN']
                if self.tls is not None and tlsinfo is None:
                    ext.append(b'250-STARTTLS')
                ext[-1] = b'250 ' + ext[-1][4:]
                say(b'\r\n'.join(ext))
            elif verb == b'HELO':
                helo = arg
                say(self.replies['helo'])
            elif verb == b'STAR':
                say(b'220 go ahead')
                if self.tls == 'broken':
                    conn.sendall(b'this is not TLS\r\n' * 10)
                    return
                conn = self.tls.wrap_socket(conn, server_side=True)
                f = conn.makefile('rb')
                tlsinfo = conn.version()
                client = client_name(conn)
                helo = mail = None
                rcpts = []
            elif verb == b'MAIL':
                if self.cut('mail'):
                    return
                mail = arg
                say(self.replies['mail'])
            elif verb == b'RCPT':
                if self.cut('rcpt'):
                    return
                reply = self.replies['rcpt']
                if callable(reply):
                    reply = reply(arg)
                if reply.startswith(b'2'):
                    rcpts.append(arg)
                say(reply)
            elif verb == b'DATA':
                if self.cut('data'):
                    return
                say(self.replies['data'])
                if not self.replies['data'].startswith(b'3'):
                    continue
                lines = []
                while True:
                    dl = f.readline(1 << 20)
                    if not dl:
                        return
                    if dl == b'.\r\n':
                        break
                    lines.append(dl)
                raw = b''.join(lines)
                if self.cut('dot'):
                    return
                if self.replies['dot'].startswith(b'2'):   # before the reply: no race
                    self.messages.append({'helo': helo, 'mail': mail, 'rcpts': rcpts,
                                          'raw': raw, 'tls': tlsinfo, 'client': client,
                                          'data': unstuff(raw)})
                say(self.replies['dot'])
                mail, rcpts = None, []
            elif verb == b'AUTH':
                self.auths.append((arg, tlsinfo))
                say(self.replies.get('auth', b'235 ok'))
            elif verb == b'RSET':
                mail, rcpts = None, []
                say(b'250 ok')
            elif verb == b'QUIT':
                say(b'221 bye')
                return
            else:
                say(b'502 unimplemented')


def unstuff(raw: bytes) -> bytes:
    lines = raw.split(b'\r\n')
    return b'\r\n'.join(ln[1:] if ln.startswith(b'.') else ln for ln in lines)


@pytest.fixture
def sinks():
    made = []

    def make(*args, **kw):
        s = Sink(*args, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def wait_for(pred, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError('timed out waiting for ' + what)


# --- deliveries in-process ----------------------------------------------------------

@pytest.fixture
def home(tmp_path, dns_server):
    """A qmail home with just what qmail-remote reads."""
    h = tmp_path / 'qmail'
    (h / 'control').mkdir(parents=True)
    (h / 'queue' / 'lock').mkdir(parents=True)
    (h / 'queue' / 'lock' / 'tcpto').write_bytes(bytes(1024))
    setctl(h, me='remote.qmt.example', dnsservers='%s:%d' % dns_server,
           timeoutconnect='2', timeoutremote='3')
    return h


def setctl(home, **files):
    for name, text in files.items():
        path = os.path.join(str(home), 'control', name)
        if text is None:
            if os.path.exists(path):
                os.unlink(path)
            continue
        with open(path, 'w') as f:
            f.write(text + '\n')


def send(home, host, recips, message=b'Subject: t\n\nhello\n', sender=b'sender@src.example'):
    """remote.deliver() as qmail-remote's main() runs it: (records, report)."""
    settings = remote.Settings(control.Controls(os.path.join(str(home), 'control')))
    memory = tcpto.Memory(os.path.join(str(home), 'queue', 'lock', 'tcpto'))
    out = []
    with tempfile.TemporaryFile() as f:
        f.write(message)
        f.seek(0)
        try:
            final = remote.deliver(host, sender, list(recips), settings, f.fileno(), out,
                                   memory=memory)
        except remote.Report as r:
            final = r.record
    return out, final


def framed(out, final):
    return b''.join(r + b'\0' for r in out + [final])


def test_mx_lowest_preference_first(home, sinks):
    s1, s2 = sinks('127.55.1.1', 25), sinks('127.55.1.2', 25)
    out, final = send(home, b'mx.qmt.test', [b'joe@mx.qmt.test'])
    assert out == [b'r']
    assert final.startswith(b'K127.55.1.1 accepted message.\nRemote host said: 250 ok queued')
    assert len(s1.messages) == 1 and not s2.messages
    m = s1.messages[0]
    assert m['helo'] == b'remote.qmt.example'
    assert m['mail'] == b'FROM:<sender@src.example> SIZE=21'  # 18 bytes, 3 lines: as sent, CR LF
    assert m['rcpts'] == [b'TO:<joe@mx.qmt.test>']
    assert m['raw'] == b'Subject: t\r\n\r\nhello\r\n'


def test_mx_next_when_first_refuses(home, sinks):
    s2 = sinks('127.55.1.2', 25)            # nothing listens on 127.55.1.1
    out, final = send(home, b'mx.qmt.test', [b'joe@mx.qmt.test'])
    assert final.startswith(b'K127.55.1.2 accepted message.'), final
    assert len(s2.messages) == 1


def test_mx_ties_share_the_load(home, sinks):
    t1, t2 = sinks('127.55.1.3', 25), sinks('127.55.1.4', 25)
    for _ in range(24):
        _, final = send(home, b'ties.qmt.test', [b'x@ties.qmt.test'])
        assert final.startswith(b'K'), final
    assert t1.messages and t2.messages
    assert len(t1.messages) + len(t2.messages) == 24


@pytest.mark.parametrize('host', [b'nomx.qmt.test', b'alias.qmt.test', b'NoMx.Qmt.Test.'])
def test_no_mx_means_the_address_record(home, sinks, host):
    s = sinks('127.55.1.5', 25)
    _, final = send(home, host, [b'joe@' + host])
    assert final.startswith(b'K127.55.1.5 accepted message.'), final
    assert len(s.messages) == 1


@pytest.mark.parametrize('host, want', [
    (b'nx.qmt.test', b"DSorry, I couldn't find any host named nx.qmt.test. (#5.1.2)\n"),
    (b'x.soft.test', b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n"),
    (b'me.qmt.test', b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n"
                     b"it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n"),
    (b'v6mx.qmt.test', b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n"
                       b"it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n"),
    (b'[127.0.0.1]', b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n"
                     b"it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n"),
    # an AAAA record holding one of our IPv4 addresses, IPv4-mapped
    (b'v4mapped.qmt.test', b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n"
                           b"it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n"),
    # a backup MX whose better MX's addresses did not answer: later
    (b'backup.qmt.test', b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n"),
    (b'null.qmt.test', b'DSorry, null.qmt.test does not accept mail (null MX). (#5.1.10)\n'),
    (b'noaddr.qmt.test', b"DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n"),
    (b'bad..name', b"DSorry, I couldn't find any host named bad..name. (#5.1.2)\n"),
    (b'[127.55.9.9]', b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"),
])
def test_dns_and_routing_failures(home, host, want):
    out, final = send(home, host, [b'joe@' + host])
    assert (out, final) == ([], want), final
    assert rspawn.report(0, framed(out, final)) == want


def test_ip_literal(home, sinks):
    s = sinks('127.55.1.9', 25)
    _, final = send(home, b'[127.55.1.9]', [b'joe@[127.55.1.9]'])
    assert final.startswith(b'K127.55.1.9 accepted message.')
    assert s.messages[0]['rcpts'] == [b'TO:<joe@[127.55.1.9]>']


# --- smtproutes --------------------------------------------------------------------

def test_smtproutes(home, sinks):
    a = sinks('127.55.0.1')
    b = sinks('127.55.0.2')
    mx1 = sinks('127.55.1.1', 25)
    setctl(home, smtproutes='\n'.join([
        'routed.example:relay.qmt.test:%d' % a.port,       # a name, looked up
        '.sub.example:[127.55.0.2]:%d' % b.port,           # subdomains, a literal
        'mx.qmt.test:',                                    # MX as usual
        ':[127.55.0.2]:%d' % b.port,                       # everything else
    ]))
    for host, sink in ((b'routed.example', a), (b'x.sub.example', b),
                       (b'mx.qmt.test', mx1), (b'anything.example', b), (b'sub.example', b)):
        before = len(sink.messages)
        _, final = send(home, host, [b'u@' + host])
        assert final.startswith(b'K' + sink.host.encode()), (host, final)
        assert len(sink.messages) == before + 1
    assert b.messages[0]['rcpts'] == [b'TO:<u@x.sub.example>']


def test_smtproutes_relay_may_be_me(home, sinks):
    s = sinks('127.0.0.1')
    setctl(home, smtproutes=':127.0.0.1:%d' % s.port)
    _, final = send(home, b'example.com', [b'u@example.com'])
    assert final.startswith(b'K127.0.0.1 accepted message.')


def test_smtproutes_bad_port_defers(home):
    setctl(home, smtproutes=':relay.qmt.test:smtp')
    _, final = send(home, b'example.com', [b'u@example.com'])
    assert final == b'ZUnable to parse control/smtproutes. (#4.3.0)\n'


def test_smtproutes_with_a_password_authenticates_under_verified_tls(home, sinks, cert):
    """A smarthost with SMTP AUTH ("relay:port user password", the SMTP
    AUTH patches' form): STARTTLS, the relay's certificate verified
    against its name, then AUTH; the report says so."""
    s = sinks('127.55.1.6', tls=server_context(cert))
    setctl(home, smtproutes=':mx.tls.qmt.test:%d user secret' % s.port,
           tlsdestinations=':%s' % cert[0])
    out, final = send(home, b'far.example', [b'u@far.example'])
    assert out == [b'r']
    assert final.startswith(b'K127.55.1.6 accepted message.\nTLS TLSv1.3 '), final
    assert b' verified.\nSMTP AUTH as user.\nRemote host said: 250 ok queued' in final
    assert s.auths == [(b'PLAIN AHVzZXIAc2VjcmV0', 'TLSv1.3')]
    assert len(s.messages) == 1


def test_smtproutes_password_relay_ca_named_by_the_relay(home, sinks, cert):
    """The relay's CA file is found by the relay's name in tlsdestinations
    (a line for the domain, or ":" for all, made TLS required for every
    domain, and for a password-less route to a host without STARTTLS)."""
    s = sinks('127.55.1.6', tls=server_context(cert))
    plain = sinks('127.55.1.8')
    setctl(home, smtproutes=':mx.tls.qmt.test:%d user secret\ninternal.example:'
           'mx.notls.qmt.test:%d' % (s.port, plain.port),
           tlsdestinations='mx.tls.qmt.test:%s' % cert[0])
    _, final = send(home, b'far.example', [b'u@far.example'])
    assert final.startswith(b'K127.55.1.6 accepted message.\nTLS TLSv1.3 '), final
    assert b' verified.\nSMTP AUTH as user.\n' in final
    _, final = send(home, b'internal.example', [b'u@internal.example'])
    assert final.startswith(b'K127.55.1.8 accepted message.\nRemote host said: 250'), final


def test_smtproutes_password_needs_a_certificate_that_verifies(home, sinks, cert):
    """Without a CA that vouches for the relay (tlsdestinations names
    none: the system's CAs), no password is sent: the mail waits."""
    s = sinks('127.55.1.6', tls=server_context(cert))
    setctl(home, smtproutes=':mx.tls.qmt.test:%d user secret' % s.port)
    _, final = send(home, b'far.example', [b'u@far.example'])
    assert final.startswith(b'ZConnected to 127.55.1.6 but its certificate could not be '
                            b'verified for mx.tls.qmt.test'), final
    assert final.endswith(b'; my control/smtproutes gives a password for this route. '
                          b'(#4.7.5)\n'), final
    assert s.auths == [] and s.messages == []


def test_smtproutes_password_to_a_relay_without_starttls_waits(home, sinks):
    s = sinks('127.55.1.6')
    setctl(home, smtproutes=':mx.tls.qmt.test:%d user secret' % s.port)
    _, final = send(home, b'far.example', [b'u@far.example'])
    assert final == (b'ZConnected to 127.55.1.6 but it does not offer STARTTLS; my '
                     b'control/smtproutes gives a password for this route. (#4.7.10)\n')
    assert s.auths == [] and s.messages == []


def test_smtproutes_password_refused_waits(home, sinks, cert):
    s = sinks('127.55.1.6', tls=server_context(cert), auth=b'535 5.7.8 no')
    setctl(home, smtproutes=':mx.tls.qmt.test:%d user secret' % s.port,
           tlsdestinations=':%s' % cert[0])
    _, final = send(home, b'far.example', [b'u@far.example'])
    assert final == (b'ZConnected to 127.55.1.6 but it refused my SMTP AUTH; my '
                     b'control/smtproutes gives a user and password for this route. '
                     b'(#4.7.8)\nRemote host said: 535 5.7.8 no\n')
    assert s.messages == []


def test_smtproutes_port_465_is_tls_from_the_start(home, sinks, cert):
    """RFC 8314's submissions port: TLS before the greeting, no STARTTLS."""
    s = sinks('127.55.1.6', 465, tls=server_context(cert), implicit=True)
    setctl(home, smtproutes=':mx.tls.qmt.test:465 user secret',
           tlsdestinations=':%s' % cert[0])
    _, final = send(home, b'far.example', [b'u@far.example'])
    assert final.startswith(b'K127.55.1.6 accepted message.\nTLS TLSv1.3 '), final
    assert s.auths == [(b'PLAIN AHVzZXIAc2VjcmV0', 'TLSv1.3')]
    assert s.messages[0]['tls'] == 'TLSv1.3'


def test_ipv6_relay(home, sinks):
    s = sinks('::1')
    setctl(home, smtproutes='v6.example:v6host.qmt.test:%d\nlit.example:[IPv6:::1]:%d'
           % (s.port, s.port))
    for host in (b'v6.example', b'lit.example'):
        _, final = send(home, host, [b'u@' + host])
        assert final.startswith(b'K::1 accepted message.'), final
    assert len(s.messages) == 2


# --- SMTP stages -----------------------------------------------------------------------

def relay_home(home, sink):
    setctl(home, smtproutes=':[%s]:%d' % (sink.host, sink.port))


@pytest.mark.parametrize('kw, want_out, want', [
    (dict(greeting=b'421 not now'), [], b'ZConnected to 127.55.0.3 but greeting failed.\n'
                                        b'Remote host said: 421 not now\n'),
    (dict(greeting=b'554 go away'), [], b'ZConnected to 127.55.0.3 but greeting failed.\n'
                                        b'Remote host said: 554 go away\n'),
    (dict(ehlo=b'500 what', helo=b'550 who'), [],
     b'ZConnected to 127.55.0.3 but my name was rejected.\nRemote host said: 550 who\n'),
    (dict(mail=b'451 try later'), [],
     b'ZConnected to 127.55.0.3 but sender was rejected.\nRemote host said: 451 try later\n'),
    (dict(mail=b'553 you are banned'), [],
     b'DConnected to 127.55.0.3 but sender was rejected.\nRemote host said: 553 you are banned\n'),
    (dict(rcpt=b'450 greylisted'),
     [b's127.55.0.3 does not like recipient.\nRemote host said: 450 greylisted\n'],
     b'DGiving up on 127.55.0.3.\n'),
    (dict(rcpt=b'550 no such user'),
     [b'h127.55.0.3 does not like recipient.\nRemote host said: 550 no such user\n'],
     b'DGiving up on 127.55.0.3.\n'),
    (dict(data=b'451 no'), [b'r'],
     b'Z127.55.0.3 failed on DATA command.\nRemote host said: 451 no\n'),
    (dict(data=b'554 no'), [b'r'],
     b'D127.55.0.3 failed on DATA command.\nRemote host said: 554 no\n'),
    (dict(dot=b'452 disk full'), [b'r'],
     b'Z127.55.0.3 failed after I sent the message.\nRemote host said: 452 disk full\n'),
    (dict(dot=b'554 spam'), [b'r'],
     b'D127.55.0.3 failed after I sent the message.\nRemote host said: 554 spam\n'),
    (dict(drop='greeting'), [], b'ZConnected to 127.55.0.3 but connection died. (#4.4.2)\n'),
    (dict(drop='mail'), [], b'ZConnected to 127.55.0.3 but connection died. (#4.4.2)\n'),
    (dict(drop='rcpt'), [], b'ZConnected to 127.55.0.3 but connection died. (#4.4.2)\n'),
    (dict(drop='data'), [b'r'], b'ZConnected to 127.55.0.3 but connection died. (#4.4.2)\n'),
    (dict(drop='dot'), [b'r'],
     b'ZConnected to 127.55.0.3 but connection died. Possible duplicate! (#4.4.2)\n'),
    (dict(hang='greeting'), [], b'ZConnected to 127.55.0.3 but connection died. (#4.4.2)\n'),
    (dict(hang='rcpt'), [], b'ZConnected to 127.55.0.3 but connection died. (#4.4.2)\n'),
    (dict(hang='dot'), [b'r'],
     b'ZConnected to 127.55.0.3 but connection died. Possible duplicate! (#4.4.2)\n'),
])
def test_smtp_stage_failures(home, sinks, kw, want_out, want):
    s = sinks('127.55.0.3', **kw)
    relay_home(home, s)
    out, final = send(home, b'example.com', [b'u@example.com'])
    assert out == want_out, out
    assert final == want, final
    assert not s.messages


def test_helo_when_ehlo_refused(home, sinks):
    s = sinks('127.55.0.3', ehlo=b'502 no ESMTP here')
    relay_home(home, s)
    _, final = send(home, b'example.com', [b'u@example.com'])
    assert final.startswith(b'K')
    assert s.messages[0]['mail'] == b'FROM:<sender@src.example>'     # no SIZE without EHLO


def test_several_recipients_one_transaction(home, sinks):
    s = sinks('127.55.0.3', rcpt=lambda a: b'550 unknown' if b'bad' in a else b'250 ok')
    relay_home(home, s)
    out, final = send(home, b'example.com',
                      [b'a@example.com', b'bad@example.com', b'b c@example.com'])
    assert out == [b'r', b'h127.55.0.3 does not like recipient.\nRemote host said: 550 unknown\n',
                   b'r']
    assert final.startswith(b'K127.55.0.3 accepted message.')
    assert s.connections == 1 and len(s.messages) == 1
    assert s.messages[0]['rcpts'] == [b'TO:<a@example.com>', b'TO:<"b c"@example.com>']


def test_message_transparency(home, sinks):
    s = sinks('127.55.0.3')
    relay_home(home, s)
    message = b'Subject: dots\n\n.\n..two\n.leading\nbare\rcr\r\ncrlf\n\xe9\xff 8bit\n\n'
    _, final = send(home, b'example.com', [b'u@example.com'], message)
    assert final.startswith(b'K')
    raw = s.messages[0]['raw']
    assert raw == (b'Subject: dots\r\n\r\n..\r\n...two\r\n..leading\r\nbare\r\ncr\r\n'
                   b'crlf\r\n\xe9\xff 8bit\r\n\r\n')
    assert s.messages[0]['data'] == (b'Subject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nbare\r\n'
                                     b'cr\r\ncrlf\r\n\xe9\xff 8bit\r\n\r\n')


def test_big_message(home, sinks):
    s = sinks('127.55.0.3')
    relay_home(home, s)
    message = b'Subject: big\n\n' + b''.join(b'.line %d ' % i + b'x' * 70 + b'\n'
                                             for i in range(40000))
    _, final = send(home, b'example.com', [b'u@example.com'], message)
    assert final.startswith(b'K')
    assert s.messages[0]['data'] == message.replace(b'\n', b'\r\n')


def test_partial_final_line_bounces_without_connecting(home, sinks):
    s = sinks('127.55.0.3')
    relay_home(home, s)
    _, final = send(home, b'example.com', [b'u@example.com'], b'Subject: x\n\nno end')
    assert final == b'DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n'
    assert s.connections == 0


def test_verp_sender_used_as_given(home, sinks):
    s = sinks('127.55.0.3')
    relay_home(home, s)
    _, final = send(home, b'example.com', [b'joe@example.com'],
                    sender=b'owner-joe=example.com@lists.example.org')
    assert final.startswith(b'K')
    assert s.messages[0]['mail'] == b'FROM:<owner-joe=example.com@lists.example.org> SIZE=21'


def test_bounce_sender_is_null(home, sinks):
    s = sinks('127.55.0.3')
    relay_home(home, s)
    _, final = send(home, b'example.com', [b'joe@example.com'], sender=b'')
    assert final.startswith(b'K')
    assert s.messages[0]['mail'].startswith(b'FROM:<> ')


# --- TLS --------------------------------------------------------------------------------

def test_opportunistic_starttls(home, sinks, cert):
    s = sinks('127.55.1.6', 25, tls=server_context(cert))
    out, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
    assert out == [b'r']
    assert final.startswith(b'K127.55.1.6 accepted message.\nTLS TLSv1.3 '), final
    assert b' unverified.\nRemote host said: 250 ok queued' in final
    assert s.messages[0]['tls'] == 'TLSv1.3'
    assert s.messages[0]['helo'] == b'remote.qmt.example'      # EHLO again after TLS


def test_tlsclientciphers(home, sinks, cert):
    """control/tlsclientciphers (as the TLS patch) is the cipher list up
    to TLS 1.2; a list that selects none defers the mail, saying why."""
    ctx = server_context(cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    s = sinks('127.55.1.6', 25, tls=ctx)
    setctl(home, tlsclientciphers='ECDHE-ECDSA-AES256-GCM-SHA384\n')
    out, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
    assert out == [b'r'], out
    assert final.startswith(b'K127.55.1.6 accepted message.\n'
                            b'TLS TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384 '), final
    setctl(home, tlsclientciphers='NO-SUCH-CIPHER\n')
    out, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
    assert final == (b'ZThe cipher list in control/tlsclientciphers selects no cipher. '
                     b'(#4.3.0)\n'), final
    assert len(s.messages) == 1


def test_opportunistic_tls_dying_after_the_handshake_falls_back(home, sinks, cert):
    """A peer that wants a client certificate says so (TLS 1.3) only
    after the handshake, at the first read: the connection dies under
    TLS, and the mail goes again in the clear, as after a failed
    handshake; it waited for queuelifetime before (a helper's review)."""
    ctx = server_context(cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cert[0])
    s = sinks('127.55.1.6', 25, tls=ctx)
    out, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
    assert out == [b'r'] and final.startswith(
        b'K127.55.1.6 accepted message.\nIn the clear: TLS had failed.\n'), final
    assert s.connections == 2 and len(s.messages) == 1


def test_client_certificate_from_control_clientcert_pem(home, sinks, cert):
    """control/clientcert.pem (the TLS patch's): shown to a peer that
    asks for a client certificate, which then takes the mail under TLS
    (without it, the connection died and the mail went in the clear,
    above).  One that cannot be used is not shown, and the report says
    why; no passphrase is ever asked for."""
    tmp = tempfile.mkdtemp(prefix='qmt-client.')
    try:
        ccert, ckey = os.path.join(tmp, 'c.pem'), os.path.join(tmp, 'k.pem')
        self_signed(ccert, ckey, 'client.src.example')
        ctx = server_context(cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ccert)
        s = sinks('127.55.1.6', 25, tls=ctx)
        pem = open(ccert).read() + open(ckey).read()
        setctl(home, **{'clientcert.pem': pem})
        out, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
        assert out == [b'r'] and final.startswith(
            b'K127.55.1.6 accepted message.\nTLS TLSv1.3 '), final
        assert b'clientcert' not in final
        assert s.connections == 1 and s.messages[0]['client'] == 'client.src.example'
        # a certificate without its key; a key with a passphrase: to the
        # peer that wants one, none is shown (it ends the TLS session, and
        # the mail goes in the clear); to one that does not, the report
        # says why it was not loaded
        subprocess.run(['openssl', 'pkey', '-in', ckey, '-out', os.path.join(tmp, 'enc.pem'),
                        '-aes256', '-passout', 'pass:secret'], check=True, timeout=TIMEOUT)
        bad = ((open(ccert).read(), b'not a certificate with its key (OpenSSL: pem lib)'),
               (open(ccert).read() + open(os.path.join(tmp, 'enc.pem')).read(),
                b'its key has a passphrase'))
        for text, why in bad:
            setctl(home, **{'clientcert.pem': text})
            s.tls = ctx
            out, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
            assert final.startswith(
                b'K127.55.1.6 accepted message.\nIn the clear: TLS had failed (my '
                b'control/clientcert.pem was not shown: ' + why + b').\n'), final
            s.tls = server_context(cert)
            out, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
            assert final.startswith(b'K127.55.1.6 accepted message.\nTLS TLSv1.3 '), final
            assert b', without my control/clientcert.pem: ' + why + b'.\n' in final, final
        # a FIFO there is never opened (it held qmail-remote for good)
        setctl(home, **{'clientcert.pem': None})
        os.mkfifo(os.path.join(str(home), 'control', 'clientcert.pem'))
        out, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
        assert b', without my control/clientcert.pem: not a file.\n' in final, final
    finally:
        setctl(home, **{'clientcert.pem': None})
        shutil.rmtree(tmp, ignore_errors=True)


def test_required_tls_verified(home, sinks, cert):
    s = sinks('127.55.1.6', 25, tls=server_context(cert))
    setctl(home, tlsdestinations='tls.qmt.test:%s' % cert[0])
    _, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
    assert final.startswith(b'K127.55.1.6 accepted message.\nTLS TLSv1.3 '), final
    assert b' verified.\n' in final
    assert s.messages[0]['tls'] == 'TLSv1.3'


@pytest.mark.parametrize('table', ['forged.qmt.test:CERT:mx', 'forged.qmt.test:CERT:.tls.qmt.test',
                                   'forged.qmt.test:CERT:mx.tls.qmt.test'])
def test_required_tls_to_an_mx_elsewhere_as_the_admin_says(home, sinks, cert, table):
    """A domain whose MX lies under another (a hosted domain) is listed
    with the names its MX hosts' certificates hold, or "mx" for the MX
    host's own (which a forged MX record defeats)."""
    s = sinks('127.55.1.6', 25, tls=server_context(cert))
    setctl(home, tlsdestinations=table.replace('CERT', cert[0]))
    _, final = send(home, b'forged.qmt.test', [b'u@forged.qmt.test'])
    assert final.startswith(b'K127.55.1.6 accepted message.\nTLS TLSv1.3 '), final
    assert b' verified.\n' in final
    assert len(s.messages) == 1


def test_required_tls_suffix_and_default(home, sinks, cert):
    sinks('127.55.1.6', 25, tls=server_context(cert))
    for table in ('.qmt.test:%s' % cert[0], ':%s' % cert[0]):
        setctl(home, tlsdestinations=table)
        _, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
        assert b' verified.\n' in final, (table, final)


@pytest.mark.parametrize('host, table, want', [
    (b'notls.qmt.test', 'notls.qmt.test',
     b'ZConnected to 127.55.1.8 but it does not offer STARTTLS; my control/tlsdestinations '
     b'requires TLS for notls.qmt.test. (#4.7.10)\n'),
    (b'tls.qmt.test', 'tls.qmt.test',           # the system's CAs know no self-signed cert
     b'ZConnected to 127.55.1.6 but its certificate could not be verified for '
     b'mx.tls.qmt.test (self-signed certificate); my control/tlsdestinations requires '
     b'TLS for tls.qmt.test. (#4.7.5)\n'),
    (b'tlsbad.qmt.test', 'tlsbad.qmt.test:CERT',  # the certificate names another host
     b"ZConnected to 127.55.1.7 but its certificate could not be verified for "
     b"other.tls.qmt.test (it names mx.tls.qmt.test, not tlsbad.qmt.test or "
     b".tlsbad.qmt.test); my control/tlsdestinations requires TLS for tlsbad.qmt.test."
     b" (#4.7.5)\n"),
    (b'tlsbad.qmt.test', 'tlsbad.qmt.test:CERT:mx',   # checked against the MX name
     b"ZConnected to 127.55.1.7 but its certificate could not be verified for "
     b"other.tls.qmt.test (Hostname mismatch, certificate is not valid for "
     b"'other.tls.qmt.test'.); my control/tlsdestinations requires TLS for tlsbad.qmt.test."
     b" (#4.7.5)\n"),
    # A forged MX record names a host that holds a good certificate for
    # its own name: not one of the domain's, so the mail waits.
    (b'forged.qmt.test', 'forged.qmt.test:CERT',
     b"ZConnected to 127.55.1.6 but its certificate could not be verified for "
     b"mx.tls.qmt.test (it names mx.tls.qmt.test, not forged.qmt.test or "
     b".forged.qmt.test); my control/tlsdestinations requires TLS for forged.qmt.test."
     b" (#4.7.5)\n"),
])
def test_required_tls_defers(home, sinks, cert, host, table, want):
    ctx = server_context(cert)
    plain = sinks('127.55.1.8', 25)
    good = sinks('127.55.1.6', 25, tls=ctx)
    other = sinks('127.55.1.7', 25, tls=ctx)
    setctl(home, tlsdestinations=table.replace('CERT', cert[0]))
    out, final = send(home, host, [b'u@' + host])
    assert (out, final) == ([], want), final
    assert not (plain.messages or good.messages or other.messages)


def test_required_tls_missing_cafile_defers(home):
    setctl(home, tlsdestinations='tls.qmt.test:/nonexistent/ca.pem')
    _, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
    assert final == (b'ZUnable to load the CA file that control/tlsdestinations names for '
                     b'tls.qmt.test. (#4.3.0)\n')


def test_opportunistic_handshake_failure_falls_back_to_plain(home, sinks):
    s = sinks('127.55.1.6', 25, tls='broken')
    _, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
    assert final.startswith(b'K127.55.1.6 accepted message.\nIn the clear: TLS had failed.\n'
                            b'Remote host said: '), final
    assert s.connections == 2 and s.messages[0]['tls'] is None


@pytest.mark.parametrize('stage, reply, want_out, want_final', [
    # a peer that requires TLS (Postfix's smtpd_tls_security_level=encrypt)
    ('mail', b'530 5.7.0 Must issue a STARTTLS command first', [],
     b'ZConnected to 127.55.1.6 but sender was rejected.\nRemote host said: 530 5.7.0 Must '
     b'issue a STARTTLS command first\n(TLS had failed: this was the connection in the '
     b'clear)\n'),
    ('rcpt', b'550 5.7.1 TLS required for this recipient',
     [b's127.55.1.6 does not like recipient.\nRemote host said: 550 5.7.1 TLS required for '
      b'this recipient\n(TLS had failed: this was the connection in the clear)\n'], b'DGiving up on 127.55.1.6.\n'),
    # a refusal for another cause stays one
    ('rcpt', b'550 5.1.1 no such user',
     [b'h127.55.1.6 does not like recipient.\nRemote host said: 550 5.1.1 no such user\n'],
     b'DGiving up on 127.55.1.6.\n'),
])
def test_a_refusal_for_want_of_tls_after_a_failed_handshake_waits(home, sinks, stage, reply,
                                                                   want_out, want_final):
    """Opportunistic TLS failed in the handshake (OpenSSL 3 refusing a
    TLS 1.0 peer, say) and the plain connection was refused for the want
    of TLS: that was a bounce, where qmail's TLS patch and Postfix defer
    (found against Postfix by a helper's review)."""
    s = sinks('127.55.1.6', 25, tls='broken', **{stage: reply})
    out, final = send(home, b'tls.qmt.test', [b'u@tls.qmt.test'])
    assert (out, final) == (want_out, want_final)
    assert s.connections == 2 and not s.messages


@pytest.mark.parametrize('required', [False, True])
def test_tls_name_ssl_cannot_carry(sinks, cert, required):
    """An MX name with a label longer than 63 characters (DNS text may
    escape one so): opportunistic TLS goes on without SNI; required TLS
    defers, as for a name the certificate does not match."""
    s = sinks('127.55.1.6', 25, tls=server_context(cert))
    name = 'x' * 64 + '.tls.qmt.test'
    tls = remote_smtp.Tls(remote_smtp.tls_context(required, cert[0] if required else None),
                          name, required, required, b'tls.qmt.test')
    out = []
    session = remote_smtp.Session(remote_smtp.Conn(remote.connect('127.55.1.6', 25, WAIT), WAIT),
                                  b'127.55.1.6', b'remote.qmt.example', out)
    with tempfile.TemporaryFile() as f:
        f.write(b'Subject: t\n\nhi\n')
        f.seek(0)
        final = session.run(b'a@src.example', [b'u@tls.qmt.test'], f.fileno(), None, tls)
    session.conn.close()
    if required:
        assert final == (b'ZConnected to 127.55.1.6 but its name ' + name.encode()
                         + b' cannot be checked against a certificate; my control/'
                         b'tlsdestinations requires TLS for tls.qmt.test. (#4.7.5)\n')
        assert not s.messages
    else:
        assert final.startswith(b'K127.55.1.6 accepted message.\nTLS TLSv1.3 '), final
        assert s.messages[0]['tls'] == 'TLSv1.3' and s.connections == 1


# --- timeouts and tcpto -----------------------------------------------------------------

def test_connect_timeout_recorded_and_next_mx_tried(home, sinks):
    dead = sinks('127.55.1.1', 25, backlog_full=True)
    live = sinks('127.55.1.2', 25)
    setctl(home, timeoutconnect='1')
    _, final = send(home, b'mx.qmt.test', [b'u@mx.qmt.test'])
    assert final.startswith(b'K127.55.1.2 '), final
    buf = tcpto.read_table(os.path.join(str(home), 'queue', 'lock', 'tcpto'))
    assert [(ip, n) for ip, n, _ in tcpto.records(buf)] == [('127.55.1.1', 1)]
    assert dead and live.messages


# --- the installed program, as qmailr ------------------------------------------------------

@pytest.fixture
def installed(dns_server):
    h = install_home('remote.qmt.example')
    setctl(h, dnsservers='%s:%d' % dns_server, timeoutconnect='1', timeoutremote='3')
    yield h
    remove_home(h)


def run_installed(home, module, args=(), message=b'Subject: t\n\nhi\n', user='qmailr'):
    script = ('import sys; sys.path.insert(0, %r); from qmail.%s import run; run()'
              % (os.path.join(home, 'lib', 'python'), module))
    import pwd
    pw = pwd.getpwnam(user)
    with tempfile.TemporaryFile() as f:
        f.write(message)
        f.seek(0)
        return subprocess.run([RUNTIME, '-I', '-c', script] + list(args), stdin=f,
                              capture_output=True, timeout=TIMEOUT,
                              user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                              env={'PATH': '/usr/bin:/bin'})


def test_installed_program_output(installed, sinks):
    s = sinks('127.55.0.3')
    setctl(installed, smtproutes=':[127.55.0.3]:%d' % s.port)
    r = run_installed(installed, 'remote', ['example.com', 'a@src.example', 'x@example.com',
                                            'y@example.com'])
    assert r.returncode == 0 and not r.stderr, r
    assert r.stdout == b'r\0r\0K127.55.0.3 accepted message.\nRemote host said: 250 ok queued\n\0'
    r = run_installed(installed, 'remote', ['example.com', 'a@src.example'])
    assert r.returncode == 0
    assert r.stdout == b'DI (qmail-remote) was invoked improperly. (#5.3.5)\n\0'


def backdate(home, ip, seconds):
    """Move ip's last timeout back in time, as if two minutes had passed."""
    fn = tcpto.path(home)
    with open(fn, 'r+b') as f:
        buf = f.read()
        for i in range(64):
            rec = buf[i * 16:i * 16 + 16]
            if rec[:4] == tcpto.packed(ip):
                when = int.from_bytes(rec[8:12], 'little') - seconds
                f.seek(i * 16 + 8)
                f.write(when.to_bytes(4, 'little'))
                return
    raise AssertionError('%s not in tcpto' % ip)


def test_dead_host_skipped_until_tcpok(installed, sinks):
    dead = sinks('127.55.3.1', backlog_full=True)
    setctl(installed, smtproutes=':[127.55.3.1]:%d' % dead.port)
    args = ['example.com', 'a@src.example', 'x@example.com']
    nocon = b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0"
    assert run_installed(installed, 'remote', args).stdout == nocon       # timeout 1
    backdate(installed, '127.55.3.1', 200)
    assert run_installed(installed, 'remote', args).stdout == nocon       # timeout 2
    r = run_installed(installed, 'tcpto')
    assert r.returncode == 0
    assert r.stdout.startswith(b'127.55.3.1 timed out ') and \
        r.stdout.endswith(b' seconds ago; # recent timeouts: 2\n'), r.stdout
    # The host comes back; qmail-remote does not even try it...
    port = dead.port
    dead.close()
    alive = sinks('127.55.3.1', port)
    assert run_installed(installed, 'remote', args).stdout == nocon
    assert alive.connections == 0
    # ...until qmail-tcpok clears the memory.
    r = run_installed(installed, 'tcpok')
    assert r.returncode == 0 and not r.stderr
    assert run_installed(installed, 'tcpto').stdout == b''
    r = run_installed(installed, 'remote', args)
    assert r.stdout.startswith(b'r\0K127.55.3.1 accepted message.'), r.stdout
    # a connection that works clears the address's count too
    assert tcpto.records(tcpto.read_table(tcpto.path(installed))) == []


def test_tcpto_clean(installed):
    fn = tcpto.path(installed)
    tcpto.Memory(fn, pid=0).err('192.0.2.1', True, int(time.time()))
    assert tcpto.records(tcpto.read_table(fn))
    tcpto.tcpto_clean(fn)
    assert tcpto.records(tcpto.read_table(fn)) == []


# --- through qmail-send -----------------------------------------------------------------------

def queue(home, sender, recips, message=b'Subject: t\n\nhi\n'):
    env = b'F' + sender + b'\0' + b''.join(b'T' + r + b'\0' for r in recips) + b'\0'
    with tempfile.TemporaryFile() as m, tempfile.TemporaryFile() as e:
        m.write(message)
        e.write(env)
        m.seek(0)
        e.seek(0)
        r = subprocess.run([os.path.join(home, 'bin', 'qmail-queue')], stdin=m, stdout=e,
                           timeout=TIMEOUT)
    assert r.returncode == 0


@pytest.fixture
def mta_home(dns_server):
    h = install_home('remote.qmt.example')
    setctl(h, dnsservers='%s:%d' % dns_server, timeoutconnect='2', timeoutremote='5')
    made = []

    def start():
        m = Mta(h)
        made.append(m)
        return m
    yield h, start
    for m in made:
        m.stop()
    remove_home(h)


def test_send_mx_tls_verp(mta_home, sinks, cert):
    home, start = mta_home
    s = sinks('127.55.1.6', 25, tls=server_context(cert))
    mta = start()
    queue(home, b'owner-@lists.remote.qmt.example-@[]', [b'joe@tls.qmt.test'])
    mta.wait_log('delivery 1: success: 127.55.1.6_accepted_message./TLS_TLSv1.3_')
    assert 'unverified./Remote_host_said:_250_ok_queued/' in mta.log()
    m = s.messages[0]
    assert m['mail'].startswith(b'FROM:<owner-joe=tls.qmt.test@lists.remote.qmt.example>')
    assert m['rcpts'] == [b'TO:<joe@tls.qmt.test>']


def test_send_deferral_then_retry_after_alrm(mta_home, sinks):
    home, start = mta_home
    s = sinks('127.55.0.3', rcpt=b'451 greylisted, come back later')
    setctl(home, smtproutes=':[127.55.0.3]:%d' % s.port)
    mta = start()
    queue(home, b'a@src.example', [b'joe@example.com'])
    mta.wait_log('delivery 1: deferral: 127.55.0.3_does_not_like_recipient./'
                 'Remote_host_said:_451_greylisted,_come_back_later/'
                 'Giving_up_on_127.55.0.3./')
    s.replies['rcpt'] = b'250 ok'
    deadline = time.monotonic() + WAIT
    while 'delivery 2: success' not in mta.log():
        assert time.monotonic() < deadline, mta.log()
        mta.signal(signal.SIGALRM)
        time.sleep(0.5)
    assert len(s.messages) == 1


def test_send_bounce_after_queuelifetime(mta_home, sinks):
    home, start = mta_home
    s = sinks('127.55.0.3', rcpt=lambda a: b'250 ok' if b'catch' in a else b'451 not yet')
    setctl(home, smtproutes=':[127.55.0.3]:%d' % s.port, queuelifetime='1')
    mta = start()
    queue(home, b'sender@catch.example', [b'joe@example.com'])
    mta.wait_log('deferral: 127.55.0.3_does_not_like_recipient.')
    deadline = time.monotonic() + WAIT
    while 'failure:' not in mta.log():
        assert time.monotonic() < deadline, mta.log()
        mta.signal(signal.SIGALRM)
        time.sleep(0.5)
    wait_for(lambda: s.messages, 'the bounce')
    bounce = s.messages[0]
    assert bounce['mail'].startswith(b'FROM:<>')
    assert bounce['rcpts'] == [b'TO:<sender@catch.example>']
    text = bounce['data']
    assert b'<joe@example.com>:\r\n127.55.0.3 does not like recipient.\r\n' in text
    assert b'Remote host said: 451 not yet\r\n' in text
    assert b"I'm not going to try again; this message has been in the queue too long." in text


def test_send_required_tls_defers(mta_home, sinks):
    home, start = mta_home
    s = sinks('127.55.1.8', 25)
    setctl(home, tlsdestinations='notls.qmt.test')
    mta = start()
    queue(home, b'a@src.example', [b'joe@notls.qmt.test'])
    mta.wait_log('delivery 1: deferral: Connected_to_127.55.1.8_but_it_does_not_offer_STARTTLS;'
                 '_my_control/tlsdestinations_requires_TLS_for_notls.qmt.test._(#4.7.10)/')
    assert not s.messages


def test_send_500_recipients_at_5_domains(mta_home, sinks):
    home, start = mta_home
    servers = [sinks('127.55.2.%d' % i, 25) for i in range(1, BULK + 1)]
    mta = start()
    recips = [b'user%d@d%d.bulk.qmt.test' % (n, n % BULK + 1) for n in range(500)]
    queue(home, b'bulk@src.example', recips, b'Subject: bulk\n\nto many\n')
    wait_for(lambda: sum(len(s.messages) for s in servers) >= 500, '500 deliveries',
             timeout=180)
    mta.wait_log('success', count=500, timeout=WAIT)
    for i, s in enumerate(servers, 1):
        got = sorted(m['rcpts'][0] for m in s.messages)
        want = sorted(b'TO:<' + r + b'>' for r in recips if r.endswith(b'@d%d.bulk.qmt.test' % i))
        assert got == want
        assert all(m['data'].endswith(b'\r\nSubject: bulk\r\n\r\nto many\r\n')
                   for m in s.messages)
    assert 'deferral' not in mta.log() and 'failure' not in mta.log()


def test_send_through_a_smarthost_with_smtp_auth(mta_home, cert):
    """qmail-send, qmail-remote as qmailr, a route with a password in a
    control/smtproutes only root and group qmail may read, and a real
    smarthost: another home's qmail-smtpd under qmail-listen as qmaild,
    STARTTLS with a certificate for its name, SMTP AUTH through
    vcheckpassword.  It relays for the user it knows, not for a wrong
    password (the mail waits, the log says why)."""
    import grp
    import pwd
    from delivery import ensure_user, free_port
    home, start = mta_home
    relay = install_home('relay.qmt.test')
    listener = None
    try:
        user = ensure_user('qmtsmart')
        r = subprocess.run([os.path.join(relay, 'bin', 'qmail-vpasswd'), 'add', 'smart',
                            str(user[1]), str(user[2]), user[3]],
                           input=b'sm4rt-pass\n', capture_output=True, timeout=WAIT)
        assert r.returncode == 0, r.stderr
        # its own certificate for relay.qmt.test (127.55.0.1), the CA file
        # the sending home's tlsdestinations names
        certdir = os.path.dirname(cert[0])
        rcert, rkey = os.path.join(certdir, 'relay.pem'), os.path.join(certdir, 'relay.key')
        self_signed(rcert, rkey, 'relay.qmt.test')
        servercert = os.path.join(relay, 'control', 'servercert.pem')
        with open(servercert, 'wb') as f:
            f.write(open(rcert, 'rb').read() + open(rkey, 'rb').read())
        os.chown(servercert, 0, pwd.getpwnam('qmaild').pw_gid)
        os.chmod(servercert, 0o640)
        port = free_port()
        listener = subprocess.Popen(
            [os.path.join(relay, 'bin', 'qmail-listen'),
             '-u', str(pwd.getpwnam('qmaild').pw_uid), '-g', str(grp.getgrnam('nofiles').gr_gid),
             '127.55.0.1', str(port), os.path.join(relay, 'bin', 'qmail-smtpd'),
             'relay.qmt.test', os.path.join(relay, 'bin', 'vcheckpassword'), '/bin/true'],
            env={'PATH': '/usr/bin:/bin'}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection(('127.55.0.1', port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, 'the smarthost did not listen'
                time.sleep(0.05)
        routes = os.path.join(home, 'control', 'smtproutes')
        setctl(home, smtproutes=':relay.qmt.test:%d smart wrong-pass' % port,
               tlsdestinations=':%s' % rcert)
        os.chown(routes, 0, grp.getgrnam('qmail').gr_gid)   # the password's readers
        os.chmod(routes, 0o640)
        mta = start()
        queue(home, b'a@remote.qmt.example', [b'far@elsewhere.example'])
        mta.wait_log('delivery 1: deferral: Connected_to_127.55.0.1_but_it_refused_my_'
                     'SMTP_AUTH;_my_control/smtproutes_gives_a_user_and_password_'
                     'for_this_route._(#4.7.8)/Remote_host_said:_535')
        todo = os.path.join(relay, 'queue', 'todo')
        assert os.listdir(todo) == []
        with open(routes, 'w') as f:            # the admin fixes it
            f.write(':relay.qmt.test:%d smart sm4rt-pass\n' % port)
        time.sleep(1.1)                         # (a new second for its stamp)
        deadline = time.monotonic() + WAIT
        while 'delivery 2: success' not in mta.log():
            assert time.monotonic() < deadline, mta.log()
            mta.signal(signal.SIGALRM)
            time.sleep(0.5)
        assert re.search(r'delivery 2: success: 127\.55\.0\.1_accepted_message\./TLS_TLSv1\.3_'
                         r'\S+_verified\./SMTP_AUTH_as_smart\./Remote_host_said:_250_ok_',
                         mta.log()), mta.log()
        assert 'sm4rt' not in mta.log() and 'wrong-pass' not in mta.log()
        envs = [open(os.path.join(todo, n), 'rb').read() for n in os.listdir(todo)]
        assert len(envs) == 1 and b'Tfar@elsewhere.example\0' in envs[0]
        # the same smarthost on port 465: qmail-smtpd with SMTPS (TLS from
        # the start), qmail-remote's route to 465 likewise
        smtps = subprocess.Popen(
            [os.path.join(relay, 'bin', 'qmail-listen'),
             '-u', str(pwd.getpwnam('qmaild').pw_uid), '-g', str(grp.getgrnam('nofiles').gr_gid),
             '127.55.0.1', '465', os.path.join(relay, 'bin', 'qmail-smtpd'),
             'relay.qmt.test', os.path.join(relay, 'bin', 'vcheckpassword'), '/bin/true'],
            env={'PATH': '/usr/bin:/bin', 'SMTPS': '1'}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            with open(routes, 'w') as f:
                f.write(':relay.qmt.test:465 smart sm4rt-pass\n')
            time.sleep(1.1)
            queue(home, b'a@remote.qmt.example', [b'far2@elsewhere.example'])
            mta.wait_log('delivery 3: success: 127.55.0.1_accepted_message./TLS_TLSv1.3_')
            assert re.search(r'delivery 3: success: \S+_verified\./SMTP_AUTH_as_smart\./',
                             mta.log()), mta.log()
            assert len(os.listdir(todo)) == 2
        finally:
            smtps.terminate()
            smtps.wait(timeout=WAIT)
    finally:
        if listener is not None:
            listener.terminate()
            listener.wait(timeout=WAIT)
        remove_home(relay)


def test_dkim_reads_the_message_only_when_a_key_applies(home, sinks, monkeypatch):
    """Every delivery read the whole message into memory to look for a
    key, with none configured too: a 20 MB message under the README's
    softlimit -m 64000000 waited ("Out of memory") where it went before.
    Now: nothing read without control/domainkeys; the header alone
    where no key applies."""
    reads = []
    real = remote.read_span
    monkeypatch.setattr(remote, 'read_span', lambda fd, n: reads.append(n) or real(fd, n))
    s = sinks('127.55.1.1', 25)
    big = b'From: joe@other.example\n\n' + b'x' * 75 + b'\n' * 1 + (b'y' * 99 + b'\n') * 5000
    _, final = send(home, b'mx.qmt.test', [b'u@mx.qmt.test'], big, b'joe@other.example')
    assert final.startswith(b'K') and reads == []
    (home / 'control' / 'domainkeys' / 'example.org').mkdir(parents=True)
    _, final = send(home, b'mx.qmt.test', [b'u@mx.qmt.test'], big, b'joe@other.example')
    assert final.startswith(b'K') and reads == [remote.remote_dkim.HEADER_MAX]
    assert len(s.messages) == 2


DKIM_VERIFY = r'''
use strict;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $ARGV[0], recurse => 1));
my $v = Mail::DKIM::Verifier->new();
local $/;
my $m = <STDIN>;
$v->PRINT($m);
$v->CLOSE();
print $v->result, " ", ($v->signature ? $v->signature->domain : "-"), "\n";
'''


def test_send_signs_with_dkim_as_an_independent_verifier_checks(mta_home, sinks, tmp_path):
    """A key in control/domainkeys/DOMAIN/SELECTOR (the selector named in
    DOMAIN/selector) signs the mail from that domain (qmail-send,
    qmail-remote as qmailr); Perl's Mail::DKIM, asking a real DNS server
    for the selector's TXT record, finds the signature good as the
    message arrived.  Mail from other domains is not signed, nor mail
    with a From: here and an envelope from elsewhere (a forward); an
    unreadable key makes the mail wait."""
    import base64
    import grp
    from delivery import dnsmasq
    if subprocess.run(['perl', '-MMail::DKIM::Verifier', '-e', '1'],
                      capture_output=True, timeout=WAIT).returncode:
        pytest.skip('needs libmail-dkim-perl')
    home, start = mta_home
    keydir = os.path.join(home, 'control', 'domainkeys', 'dkim.qmt.test')
    os.makedirs(keydir)
    with open(os.path.join(keydir, 'selector'), 'w') as f:
        f.write('sel2026\n')
    key = os.path.join(keydir, 'sel2026')
    subprocess.run(['openssl', 'genrsa', '-out', key, '2048'], check=True,
                   capture_output=True, timeout=WAIT)
    os.chown(key, 0, grp.getgrnam('qmail').gr_gid)      # for qmailr alone
    os.chmod(key, 0o640)
    der = subprocess.run(['openssl', 'rsa', '-in', key, '-pubout', '-outform', 'DER'],
                         check=True, capture_output=True, timeout=WAIT).stdout
    txt = 'v=DKIM1; k=rsa; p=' + base64.b64encode(der).decode()
    parts = ','.join('"%s"' % txt[i:i + 200] for i in range(0, len(txt), 200))
    zone = ZONE + 'txt-record=sel2026._domainkey.dkim.qmt.test,%s\n' % parts
    s = sinks('127.55.1.1', 25)
    with dnsmasq(zone, ('mx1.mx.qmt.test', 'A')) as port:
        setctl(home, dnsservers='127.0.0.1:%d' % port)
        mta = start()
        signed = (b'From: Joe <joe@lists.dkim.qmt.test>\nTo: u@mx.qmt.test\n'
                  b'Subject: signed\nDate: Fri, 27 Nov 2026 21:00:00 +0000\n\n'
                  b'body line\n.a dot line\n')
        queue(home, b'joe@lists.dkim.qmt.test', [b'u@mx.qmt.test'], signed)
        mta.wait_log('delivery 1: success: 127.55.1.1_accepted_message./'
                     'DKIM_signed_for_dkim.qmt.test_(s=sel2026)./')
        queue(home, b'ann@other.example', [b'u@mx.qmt.test'],
              b'From: ann@other.example\nSubject: not ours\n\nb\n')
        mta.wait_log('delivery 2: success: 127.55.1.1_accepted_message./Remote_host_said')
        queue(home, b'attacker@evil.example', [b'u@mx.qmt.test'],
              b'From: CEO <ceo@dkim.qmt.test>\nSubject: forwarded forgery\n\nb\n')
        mta.wait_log('delivery 3: success: 127.55.1.1_accepted_message./Remote_host_said')
        got = [m['data'] for m in s.messages]
        assert got[0].startswith(b'DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; '
                                 b'd=dkim.qmt.test;'), got[0]
        assert b'DKIM-Signature' not in got[1] and b'DKIM-Signature' not in got[2]
        for data, want in ((got[0], 'pass dkim.qmt.test'), (got[0].replace(b'body line', b'body 1ine'), 'fail dkim.qmt.test'),
                           (got[1], 'none -')):
            r = subprocess.run(['perl', '-e', DKIM_VERIFY, str(port)], input=data,
                               capture_output=True, timeout=WAIT)
            assert r.stdout.decode().strip() == want, (r.stdout, r.stderr)
        # a key qmailr cannot read: the mail waits, saying why
        os.chmod(key, 0o600)
        queue(home, b'joe@dkim.qmt.test', [b'u@mx.qmt.test'], signed)
        mta.wait_log('delivery 4: deferral: Unable_to_read_the_DKIM_key_control/domainkeys/'
                     'dkim.qmt.test/sel2026:_Permission_denied._(#4.3.0)/')
        assert len(s.messages) == 3
