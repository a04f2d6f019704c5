"""qmail-listen: serve TCP connections with the server's code already
loaded: tcpserver without an interpreter start per connection.

Usage:    qmail-listen [-c limit] [-x rules.cdb] [-X] [-u uid] [-g gid] [-U]
          [-l localname] [-b backlog] [-B banner] [-vqQ] [-dD] [-1]
          [-hHpPrRoO46] [-t timeout] [-I interface] host port program [arg ...]
Runs as:  root to bind the port, then the -u/-g user (qmaild for SMTP)
          before the first connection is accepted.
Does:     what tcpserver(1) does for qmail-smtpd, qmail-qmtpd,
          qmail-qmqpd and qmail-popup, minus the interpreter start.  Their
          code is loaded here and run by pre-forked workers (the -u user),
          each serving up to MAX_USE connections one after another, with
          SPARE of them kept idle (qmail.lib.prefork); any other program
          gets a forked child per connection that execs it.  For each
          connection the worker or child consults the rules (-x: the cdb
          written by tcprules(1), read at every connection, so edits apply
          at once), drops or sets the environment of tcp-environ(5) (PROTO,
          TCPLOCALIP, TCPLOCALPORT, TCPLOCALHOST, TCPREMOTEIP,
          TCPREMOTEPORT, plus the rule's variables such as RELAYCLIENT),
          puts the socket on fds 0 and 1 and calls the program's main().
          A worker then restores its environment, signals and fds 0 and 1,
          so nothing of one connection (RELAYCLIENT least of all) reaches
          the next; one that finds a descriptor left open retires.
          A program this listener does not know (rblsmtpd, for one), or
          a path that is not this home's bin/<name> (a wrapper script of
          that name), is exec'd as tcpserver would.  At most -c connections (default 40;
          more than LIMIT_MAX, 10000, is taken as that) are served at
          once; beyond that, connections wait in the kernel's backlog.
          host 0 is every IPv4 address, :: every IPv6 and IPv4 address;
          IPv4-mapped peers are shown as IPv4.
Writes:   as tcpserver(1): with -v its log lines on fd 2: status (busy
          workers / limit), pid ... from, ok, deny, end (with the wait
          status, as tcpserver: 256 for exit code 1); -Q (the
          default) only errors, -q nothing.  A pid repeats: a worker
          serves many.  -1 prints the local port on fd 1 once bound.
Exits:    111 when it cannot start (bad usage 100); runs until TERM.
Options:  tcpserver's, so that a run script moves over as it is: -U
          takes the uid and gid from $UID and $GID; -B writes a banner
          to the client first; -D sets TCP_NODELAY (-d: not); -I names
          the interface of an IPv6 link-local host (Debian's).  A relative
          -x path is the one the listener started in, whatever a program
          does to its working directory.
Differs:  no DNS or ident lookups (tcpserver -H -R): TCPREMOTEHOST and
          TCPREMOTEINFO stay unset, so -h -H -p -P -r -R -t and the IP
          options -o -O are accepted and change nothing, as are -4 -6
          (host decides); TCPLOCALHOST is -l, else control/me.
See:      tcpserver(1), tcprules(1), tcp-environ(5); README "Receiving".
"""

import errno
import getopt
import os
import _signal
import signal
import socket
import sys

from qmail.lib import auto, control, prefork, proctitle, tcprules
from qmail.lib.error import error_str

# The programs whose code this listener loads and runs in-process.
BUILTIN = {
    'qmail-smtpd': 'smtpd',
    'qmail-qmtpd': 'qmtpd',
    'qmail-qmqpd': 'qmqpd',
    'qmail-popup': 'popup',
}
DEFAULT_LIMIT = 40           # tcpserver's default -c
DEFAULT_BACKLOG = 20         # tcpserver's default -b
LIMIT_MAX = 10000            # -c above it is taken as it (a worker is 2 MB and more)
BACKLOG_MAX = 65535          # -b above it is taken as it (the kernel's somaxconn caps it)
SPARE = 4                    # idle workers kept ready for a built-in program
MAX_USE = 1000               # connections a worker serves before it retires
TCP_ENV = ('PROTO', 'TCPLOCALIP', 'TCPLOCALPORT', 'TCPLOCALHOST', 'TCPREMOTEIP',
           'TCPREMOTEPORT', 'TCPREMOTEHOST', 'TCPREMOTEINFO',
           'TCP6LOCALIP', 'TCP6LOCALPORT', 'TCP6LOCALHOST', 'TCP6REMOTEIP',
           'TCP6REMOTEPORT', 'TCP6REMOTEHOST', 'TCP6REMOTEINFO', 'TCP6INTERFACE')
TCP_ENVB = tuple(os.fsencode(k) for k in TCP_ENV)


class Options:
    def __init__(self):
        self.limit = DEFAULT_LIMIT
        self.rules = None
        self.rules_optional = False
        self.uid = None
        self.gid = None
        self.localname = None
        self.backlog = DEFAULT_BACKLOG
        self.banner = b''
        self.nodelay = False
        self.printport = False
        self.interface = None
        self.verbosity = 0          # tcpserver's -Q: errors only
        self.host = self.port = None
        self.program = []


ID_MAX = 2 ** 32 - 2         # the largest uid or gid (-1 means none)


def _number(flag: str, value: str, least: int, most: int, clamp: bool = True) -> int:
    """The value of -c, -b, -u, -g or the port: at least least, at most
    most; a greater one (control/concurrencyincoming's "as many as you
    like") taken as most where clamp, refused where not (a uid).
    ValueError naming the option otherwise."""
    if not (value.isascii() and value.isdigit()):
        raise ValueError('%s wants a number, not %r' % (flag, value[:40]))
    digits = value.lstrip('0') or '0'
    n = most + 1 if len(digits) > 20 else int(digits)
    if n < least:
        raise ValueError('%s wants a number of at least %d' % (flag, least))
    if n > most:
        if not clamp:
            raise ValueError('%s wants a number of at most %d' % (flag, most))
        n = most
    return n


OPTSPEC = 'c:x:Xu:g:Ul:b:B:vqQdD1hHpPrRoO46t:I:'     # getopt's, as tcpserver's


def parse_args(argv):
    """Options from argv (without the program name); raises ValueError."""
    o = Options()
    try:
        opts, rest = getopt.getopt(argv, OPTSPEC)
    except getopt.GetoptError as e:
        raise ValueError(str(e)) from None
    for flag, value in opts:
        if flag == '-c':
            o.limit = _number('-c', value, 1, LIMIT_MAX)
        elif flag == '-x':
            # Now: the program's working directory is not ours to keep.
            o.rules = os.path.abspath(value)
        elif flag == '-X':
            o.rules_optional = True
        elif flag == '-u':
            o.uid = _number('-u', value, 0, ID_MAX, clamp=False)
        elif flag == '-g':
            o.gid = _number('-g', value, 0, ID_MAX, clamp=False)
        elif flag == '-U':              # as tcpserver: each only if set
            if 'UID' in os.environ:
                o.uid = _number('$UID', os.environ['UID'], 0, ID_MAX, clamp=False)
            if 'GID' in os.environ:
                o.gid = _number('$GID', os.environ['GID'], 0, ID_MAX, clamp=False)
        elif flag == '-B':
            o.banner = os.fsencode(value)
        elif flag in ('-d', '-D'):
            o.nodelay = flag == '-D'
        elif flag == '-1':
            o.printport = True
        elif flag == '-l':
            o.localname = value
        elif flag == '-I':              # Debian's tcpserver: the interface
            o.interface = value         # of an IPv6 link-local address
        elif flag == '-b':
            o.backlog = _number('-b', value, 0, BACKLOG_MAX)
        elif flag == '-v':
            o.verbosity = 1
        elif flag == '-Q':
            o.verbosity = 0
        elif flag == '-q':
            o.verbosity = -1
    if len(rest) < 3 or o.limit < 1:
        raise ValueError('need host port program')
    o.host, o.port, o.program = rest[0], rest[1], rest[2:]
    if o.port.isdigit():            # (else a service name, as tcpserver takes)
        o.port = str(_number('port', o.port, 0, 65535, clamp=False))
    return o


def unmap(ip: str) -> str:
    """An address as tcpserver writes it (Debian's, with the IPv6 patch:
    ip6_fmt), so that its rules files match the same keys: an
    IPv4-mapped address as IPv4; an IPv6 one with its longest run of
    zero groups, even a single one, written "::" (the first of equal
    runs), hex digits lowercase.  (glibc's inet_ntop leaves a single
    zero group as "0".)"""
    ip = ip.split('%', 1)[0]
    if ':' not in ip:
        return ip
    try:
        b = socket.inet_pton(socket.AF_INET6, ip)
    except OSError:
        return ip
    if b[:10] == bytes(10) and b[10:12] == b'\xff\xff':
        return socket.inet_ntop(socket.AF_INET, b[12:])
    groups = [b[i] << 8 | b[i + 1] for i in range(0, 16, 2)]
    best, bestlen, i = -1, 0, 0
    while i < 8:
        if groups[i] == 0:
            j = i
            while j < 8 and groups[j] == 0:
                j += 1
            if j - i > bestlen:
                best, bestlen = i, j - i
            i = j
        else:
            i += 1
    if bestlen == 0:
        return ':'.join('%x' % g for g in groups)
    head = ':'.join('%x' % g for g in groups[:best])
    tail = ':'.join('%x' % g for g in groups[best + bestlen:])
    return head + '::' + tail


def base_environ() -> dict:
    """The environment as bytes, less tcp-environ(5)'s variables."""
    return {k: v for k, v in os.environb.items() if k not in TCP_ENVB}


def connection_env(base: dict, local, remote, localname: str, rule_env: dict) -> dict:
    """The child's environment, as bytes: base (from base_environ()),
    tcp-environ(5), then the rule's variables.  As Debian's tcpserver
    (with the IPv6 patch) does: PROTO=TCP6 for an IPv6 client, TCP for
    an IPv4 one, and for both each TCP variable as TCP6 too, an IPv4
    address there in its IPv4-mapped form (::ffff:192.0.2.1), and
    TCP6INTERFACE, the interface's name, for a client whose address has
    a scope (link-local: fe80::/10)."""
    env = dict(base)
    localip, remoteip = unmap(local[0]), unmap(remote[0])
    tcp = {
        b'TCPLOCALIP': os.fsencode(localip),
        b'TCPLOCALPORT': b'%d' % local[1],
        b'TCPLOCALHOST': os.fsencode(localname),
        b'TCPREMOTEIP': os.fsencode(remoteip),
        b'TCPREMOTEPORT': b'%d' % remote[1],
    }
    env.update(tcp)
    env.update((b'TCP6' + key[3:], value) for key, value in tcp.items())
    for key, ip in ((b'TCP6LOCALIP', localip), (b'TCP6REMOTEIP', remoteip)):
        if ':' not in ip:
            env[key] = b'::ffff:' + os.fsencode(ip)
    env[b'PROTO'] = b'TCP6' if ':' in remoteip else b'TCP'
    if len(remote) > 3 and remote[3]:
        # A link-local client's interface, by its scope (as tcpserver)
        try:
            env[b'TCP6INTERFACE'] = os.fsencode(socket.if_indextoname(remote[3]))
        except OSError:
            pass
    for key, value in rule_env.items():
        # The rule's bytes, as tcpserver passes them (tcprules.parse
        # reads them as latin-1, one char a byte), as C strings; a
        # variable with no name (tcprules takes ="x") is none.
        key = key.encode('latin-1').split(b'\0', 1)[0]
        if key:
            env[key] = value.encode('latin-1').split(b'\0', 1)[0]
    return env


def set_environ(env: dict):
    """Make the environment exactly env (bytes to bytes), touching only
    what differs (each change is a putenv or unsetenv).  Twice per
    connection in a pool worker: what is there is read from CPython's
    own bytes copy (os.environ._data) when it has one, not through
    os.environ's decoding, five times the cost."""
    now = getattr(os.environ, '_data', None)
    if not isinstance(now, dict):
        now = dict(os.environb)
    change = os.environb
    for key in [k for k in now if k not in env]:
        del change[key]
    for key, value in env.items():
        if now.get(key) != value:
            change[key] = value


def builtin_module(program: str, home=None):
    """The module of a program this listener runs in-process, else None.
    A path must be this home's bin/<name> itself (through links); any
    other file of that name, a wrapper script setting DATABYTES or
    another home's program, is exec'd as tcpserver would.  A bare name
    is this home's program."""
    base = os.path.basename(program)
    name = BUILTIN.get(base)
    if name is None or '/' not in program:
        return name
    try:
        if os.path.samefile(program, os.path.join(home or auto.QMAIL, 'bin', base)):
            return name
    except OSError:
        pass
    return None


def bind(host: str, port: str, backlog: int, interface=None) -> socket.socket:
    """The listening socket; interface (-I) is an IPv6 address's scope,
    as tcpserver takes it (fe80::1 on eth0)."""
    if host == '0':
        host = '0.0.0.0'
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host == '::':
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    address = (host, int(port) if port.isascii() and port.isdigit()
               else socket.getservbyname(port, 'tcp'))
    if family == socket.AF_INET6 and interface:
        address += (0, socket.if_nametoindex(interface))
    s.bind(address)
    s.listen(backlog)
    return s


class Listener:
    warm = retire = descriptors = None      # (a built-in program's, below)

    def __init__(self, o: Options, sock: socket.socket, localname: str, log):
        self.o = o
        self.sock = sock
        self.localname = localname
        self.log = log
        self.children = set()
        self.flagexit = False
        self.module = None
        self.pool = None
        name = builtin_module(o.program[0])
        if name:
            self.module = __import__('qmail.' + name, fromlist=['main'])
        # What qmail-smtpd and qmail-qmtpd offer a pool: warm() in the
        # parent loads the control files its workers share; retire()
        # after a session says a worker read them again for itself.
        self.warm = getattr(self.module, 'warm', None)
        self.retire = getattr(self.module, 'retire', None)
        # and descriptors(): those it keeps open between sessions, on
        # purpose (a big cdb read in pieces), not left open by mistake
        self.descriptors = getattr(self.module, 'descriptors', None)

    def status(self):
        self.log(1, 'status: %d/%d' % (len(self.children), self.o.limit))

    def reap(self):
        for pid, wstat in prefork.reaped():
            if pid in self.children:
                self.children.discard(pid)
                self.log(1, 'end %d status %d' % (pid, wstat))   # as tcpserver: the wait status
                self.status()

    def serve(self, wakeup_r: int):
        """The program is exec'd: a fork per connection, as tcpserver."""
        import gc
        import select
        gc.freeze()         # children share the loaded code's pages
        self.sock.setblocking(False)
        self.status()
        while not self.flagexit:
            self.reap()
            poller = select.poll()
            poller.register(wakeup_r, select.POLLIN)
            if len(self.children) < self.o.limit:
                poller.register(self.sock.fileno(), select.POLLIN)
            try:
                ready = dict(poller.poll())
            except InterruptedError:
                continue
            if wakeup_r in ready:
                try:
                    os.read(wakeup_r, 512)
                except OSError:
                    pass
                continue
            try:
                conn, remote = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log(0, 'warning: unable to accept: %s' % e.strerror)
                    poller.poll(1000)
                continue
            conn.setblocking(True)
            try:
                pid = os.fork()
            except OSError as e:            # as tcpserver: this one goes, the rest go on
                self.log(0, 'warning: dropping connection, unable to fork: %s'
                         % error_str(e).decode())
                conn.close()
                continue
            if pid == 0:
                self.child(conn, remote)           # never returns
            conn.close()
            self.children.add(pid)
            self.log(1, 'pid %d from %s' % (pid, unmap(remote[0])))
            self.status()
        return 0

    def serve_pool(self):
        """The program is built in: pre-forked workers, each serving up
        to MAX_USE connections in turn (qmail.lib.prefork)."""
        self.pool = prefork.Pool(
            self.sock, self.handle, self.o.limit, spare=SPARE, max_use=MAX_USE,
            child_init=self.worker_init,
            # (the worker that takes or ends a connection writes the
            # status line: the pool's parent is not woken for it)
            status=(lambda busy, limit: self.log(1, 'status: %d/%d' % (busy, limit)))
            if self.o.verbosity >= 1 else None,
            log=self.log, before_fork=self.warm)
        self.pool.serve()
        return 0

    def worker_init(self):
        self.pid = os.getpid()          # (a syscall each time: glibc keeps none)
        self.base_env = base_environ()
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        # The programs chdir (qmail-smtpd to its home): each connection
        # starts where the listener did, as a tcpserver child would.  A
        # directory the -u user may not read is not kept (-x is absolute
        # already): the worker serves on from wherever it is.
        try:
            self.cwd = os.open('.', os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self.cwd = None
        self.baseline_fds = self.open_fds()

    def open_fds(self) -> int:
        """The worker's descriptors but those the program keeps on
        purpose; -1 where they cannot be counted."""
        n = prefork.open_fds()
        if n >= 0 and self.descriptors is not None:
            n -= self.descriptors()
        return n

    def handle(self, conn, remote) -> bool:
        """One connection in a pool worker; False retires the worker."""
        pid = self.pid
        self.log(1, 'pid %d from %s' % (pid, unmap(remote[0])))
        keep = True
        code = 111
        try:
            code = self.connection(conn, remote, pid)
        except SystemExit as e:
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
            keep = False
        except BaseException as e:
            self.log(0, 'warning: %s in child' % type(e).__name__)
            keep = False
        finally:
            _signal.alarm(0)
            _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)     # no enums: 30 us less
            try:
                sys.stdout.flush()
            except Exception:
                pass
            os.dup2(self.devnull, 0)        # the peer sees the close
            os.dup2(self.devnull, 1)
            if self.cwd is not None:
                try:
                    os.fchdir(self.cwd)
                except OSError:
                    keep = False
            try:
                conn.close()
            except OSError:
                pass
            # The environment stays as the connection left it: the next
            # one's set_environ() makes it exactly that one's, changing
            # only what differs (most often TCPREMOTEPORT alone).
        # tcpserver's status is the wait status: an exit code times 256
        self.log(1, 'end %d status %d' % (pid, ((code if isinstance(code, int) else 111) & 255) << 8))
        if keep and self.retire is not None and self.retire():
            keep = False                    # for a worker sharing the new controls
        if not self.pool.orphan and self.open_fds() != self.baseline_fds:
            import gc
            gc.collect()                    # a forgotten file object's close
            if not self.pool.orphan and self.open_fds() != self.baseline_fds:
                self.log(0, 'warning: worker %d retired: descriptor left open (%s)'
                         % (pid, prefork.describe_fds()))
                keep = False
        return keep

    def connection(self, conn, remote, pid: int):
        """Rules, environment, fds 0 and 1, then the program: its exit
        code.  In a fork-per-connection child, or in a pool worker (pid:
        this process's)."""
        local = conn.getsockname()
        ip = unmap(remote[0])
        rule_env = {}
        if self.o.banner:
            # As tcpserver: before the rules are looked at, so a client
            # that is then dropped gets it too.
            try:
                conn.sendall(self.o.banner)
            except OSError as e:
                self.log(0, 'warning: dropping connection, unable to print banner: %s'
                         % error_str(e).decode())
                return 111
        if self.o.rules:
            try:
                allowed, rule_env, _ = tcprules.lookup(self.o.rules, ip)
            except FileNotFoundError:
                if not self.o.rules_optional:
                    self.log(0, 'warning: dropping connection, unable to read %s: '
                             'file does not exist' % self.o.rules)
                    return 111
                allowed = True
            except Exception as e:
                self.log(0, 'warning: dropping connection, unable to read %s: %s'
                         % (self.o.rules, error_str(e).decode()
                            if isinstance(e, OSError) and e.errno else e))
                return 111
            if not allowed:
                self.log(1, 'deny %d %s:%s:%d :%s::%d' % (
                    pid, self.localname, unmap(local[0]), local[1], ip, remote[1]))
                return 100
        base = self.base_env if self.pool is not None else base_environ()
        env = connection_env(base, local, remote, self.localname, rule_env)
        self.log(1, 'ok %d %s:%s:%d :%s::%d' % (
            pid, self.localname, unmap(local[0]), local[1], ip, remote[1]))
        if self.o.nodelay:
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        os.dup2(conn.fileno(), 0)
        os.dup2(conn.fileno(), 1)
        conn.close()
        set_environ(env)
        if self.module is None:
            # A fresh program's signals, as tcpserver leaves them (ours
            # ignores SIGPIPE; Python, SIGXFSZ).
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            try:
                os.execvp(self.o.program[0], self.o.program)
            except OSError as e:
                self.log(0, 'warning: dropping connection, unable to run %s: %s'
                         % (self.o.program[0], error_str(e).decode()))
                return 111
        code = self.module.main(self.o.program[1:])
        try:
            sys.stdout.flush()
        except Exception:
            pass
        return code

    def child(self, conn, remote):
        code = 111
        try:
            import gc
            gc.disable()    # one session: no collection copying shared pages
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            self.sock.close()
            code = self.connection(conn, remote, os.getpid())
        except BaseException as e:
            try:
                self.log(0, 'warning: %s in child' % type(e).__name__)
            except Exception:
                pass
        finally:
            os._exit(code if isinstance(code, int) else 111)

    def on_signal(self, signum, frame):
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.flagexit = True
            if self.pool is not None:
                self.pool.stop()


def make_log(verbosity):
    def log(level, text):
        if level <= verbosity:
            try:
                os.write(2, ('qmail-listen: %s\n' % text).encode('utf-8', 'replace'))
            except OSError:
                pass
    return log


def drop(o: Options):
    if o.gid is not None:
        os.setgroups([o.gid])
        os.setgid(o.gid)
    if o.uid is not None:
        os.setuid(o.uid)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        o = parse_args(argv)
    except ValueError as e:
        sys.stderr.write('qmail-listen: usage: qmail-listen [-c limit] [-x rules.cdb] '
                         '[-X] [-u uid] [-g gid] [-U] [-l localname] [-b backlog] '
                         '[-B banner] [-vqQ] [-dD] [-1] host port program [arg ...] '
                         '(%s)\n' % e)
        return 100
    log = make_log(o.verbosity)
    from qmail.lib import inuse
    inuse.mark()                # this copy stays while the workers run on it
    localname = o.localname
    if localname is None:
        try:
            me = control.readline(os.path.join(auto.QMAIL, 'control', 'me'))
        except OSError:
            me = None
        localname = me.decode('latin-1') if me else socket.gethostname()
    try:
        sock = bind(o.host, o.port, o.backlog, o.interface)
    except (OSError, ValueError) as e:
        log(0, 'fatal: unable to bind: %s' % e)
        return 111
    if o.printport:
        try:
            os.write(1, b'%d\n' % sock.getsockname()[1])
        except OSError:
            pass
    try:
        drop(o)
    except OSError as e:
        log(0, 'fatal: unable to drop privileges: %s' % e.strerror)
        return 111
    listener = Listener(o, sock, localname, log)
    r, w = os.pipe()
    os.set_blocking(w, False)
    os.set_blocking(r, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda s, f: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, listener.on_signal)
    proctitle.set_title('qmail-listen %s %s %s' % (o.host, o.port, ' '.join(o.program)))
    if listener.module is not None:
        return listener.serve_pool()
    return listener.serve(r)


def run():
    try:
        code = main()
    except OSError as e:
        # Out of descriptors or memory at start (a low ulimit -n): the
        # system's word for it, not a bug.
        sys.stderr.write('qmail-listen: fatal: unable to start: %s\n'
                         % (e.strerror or type(e).__name__))
        code = 111
    except Exception as e:
        sys.stderr.write('qmail-listen: fatal: internal bug: %s\n' % type(e).__name__)
        code = 111
    sys.exit(code)


if __name__ == '__main__':
    run()
