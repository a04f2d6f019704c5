"""make setup's installer: users, tree, owners, modes, the setuid launcher."""

import grp
import os
import pwd
import stat
import subprocess
import sys
import time

import pytest

from conftest import RUNTIME, TIMEOUT, needs_root
from qmail.install import HIER, derive_defaultdomain, derive_plusdomain

pytestmark = needs_root


def owner_of(path):
    st = os.lstat(path)
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name


@pytest.mark.parametrize('user, group', [
    ('alias', 'nofiles'), ('qmaild', 'nofiles'), ('qmaill', 'nofiles'),
    ('qmailp', 'nofiles'), ('qmailq', 'qmail'), ('qmailr', 'qmail'),
    ('qmails', 'qmail'),
])
def test_users_exist(home, user, group):
    pw = pwd.getpwnam(user)
    assert grp.getgrgid(pw.pw_gid).gr_name == group
    assert pw.pw_uid != 0


WANT = [
    ('', 'd', 'root', 'qmail', 0o755),
    ('alias', 'd', 'alias', 'qmail', 0o2755),
    ('bin', 'd', 'root', 'qmail', 0o755),
    ('control', 'd', 'root', 'qmail', 0o755),
    ('users', 'd', 'root', 'qmail', 0o755),
    ('queue', 'd', 'qmailq', 'qmail', 0o750),
    ('queue/pid', 'd', 'qmailq', 'qmail', 0o700),
    ('queue/intd', 'd', 'qmailq', 'qmail', 0o700),
    ('queue/todo', 'd', 'qmailq', 'qmail', 0o750),
    ('queue/bounce', 'd', 'qmails', 'qmail', 0o700),
    ('queue/mess/0', 'd', 'qmailq', 'qmail', 0o750),
    ('queue/mess/22', 'd', 'qmailq', 'qmail', 0o750),
    ('queue/info/22', 'd', 'qmails', 'qmail', 0o700),
    ('queue/local/22', 'd', 'qmails', 'qmail', 0o700),
    ('queue/remote/22', 'd', 'qmails', 'qmail', 0o700),
    ('queue/lock', 'd', 'qmailq', 'qmail', 0o750),
    ('queue/lock/tcpto', 'f', 'qmailr', 'qmail', 0o644),
    ('queue/lock/sendmutex', 'f', 'qmails', 'qmail', 0o600),
    ('queue/lock/syncfs', 'f', 'qmailq', 'qmail', 0o600),
    ('queue/lock/trigger', 'p', 'qmails', 'qmail', 0o622),
    ('queue/lock/command', 'p', 'qmails', 'qmail', 0o600),
    ('bin/qmail-qhold', 'f', 'root', 'qmail', 0o700),
    ('bin/qmail-queue', 'f', 'qmailq', 'qmail', 0o4711),
    ('bin/checkpassword', 'f', 'root', 'nofiles', 0o4710),
    ('bin/vcheckpassword', 'f', 'root', 'nofiles', 0o4710),
    ('lib/checkpassword.py', 'f', 'root', 'root', 0o644),
    ('bin/qmail-inject', 'f', 'root', 'qmail', 0o755),
    ('bin/sendmail', 'f', 'root', 'qmail', 0o755),
    ('bin/qmail-qread', 'f', 'root', 'qmail', 0o755),
    ('bin/qmail-qstat', 'f', 'root', 'qmail', 0o755),
    ('bin/qmail-showctl', 'f', 'root', 'qmail', 0o755),
]
KINDS = {'d': stat.S_ISDIR, 'f': stat.S_ISREG, 'p': stat.S_ISFIFO}


def check_tree(home):
    for rel, kind, user, group, mode in WANT:
        path = os.path.join(home, rel)
        st = os.lstat(path)
        assert KINDS[kind](st.st_mode), '%s: wrong type' % rel
        assert owner_of(path) == (user, group), \
            '%s: got %s want %s' % (rel, owner_of(path), (user, group))
        assert stat.S_IMODE(st.st_mode) == mode, \
            '%s: got %o want %o' % (rel, stat.S_IMODE(st.st_mode), mode)
    assert sorted(os.listdir(os.path.join(home, 'queue/mess'))) == \
        sorted(str(i) for i in range(23))
    assert os.path.getsize(os.path.join(home, 'queue/lock/tcpto')) == 1024


def test_tree(home):
    check_tree(home)


def test_every_queue_entry_checked():
    """WANT covers every queue entry of the installer's table."""
    checked = {w[0] for w in WANT}
    for kind, what, *_ in HIER:
        path = what[0] if kind == 'z' else what
        if kind == 's':
            path += '/22'
        if path.startswith('queue') or path in ('', 'alias'):
            assert path in checked, path


def test_code_is_root_owned_and_fixed(home):
    lib = os.path.join(home, 'lib')
    assert os.path.islink(os.path.join(lib, 'python'))
    for dirpath, dirnames, filenames in os.walk(os.path.join(lib, 'python') + '/'):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            assert st.st_uid == 0, path
            assert not st.st_mode & 0o022, '%s is writable by others' % path
    auto = open(os.path.join(lib, 'python/qmail/lib/auto.py')).read()
    assert 'QMAIL = %r' % home in auto
    assert "UIDS = {" in auto and "'qmailq': %d" % pwd.getpwnam('qmailq').pw_uid in auto


def test_config_fast(fresh_home):
    ctl = os.path.join(fresh_home, 'control')
    got = {n: open(os.path.join(ctl, n)).read() for n in os.listdir(ctl)
           if not n.startswith('tcp.smtp')}
    assert sorted(n for n in os.listdir(ctl) if n.startswith('tcp.smtp')) == [
        'tcp.smtp', 'tcp.smtp.cdb']
    assert got == {
        'me': 'test.example.org\n',
        'defaultdomain': 'example.org\n',
        'plusdomain': 'example.org\n',
        'locals': 'test.example.org\n',
        'rcpthosts': 'test.example.org\n',
    }


@pytest.mark.parametrize('fqdn, ddom, pdom', [
    ('a.b.c.d', 'b.c.d', 'c.d'),
    ('mail.example.org', 'example.org', 'example.org'),
    ('example.org', 'example.org', 'example.org'),
    ('vm', 'vm', 'vm'),
])
def test_config_fast_derivations(fqdn, ddom, pdom):
    assert derive_defaultdomain(fqdn) == ddom
    assert derive_plusdomain(fqdn) == pdom


def test_reinstall_is_idempotent_and_repairs(fresh_home):
    ctl = os.path.join(fresh_home, 'control')
    with open(os.path.join(ctl, 'locals'), 'a') as f:
        f.write('other.example.org\n')
    os.chmod(os.path.join(fresh_home, 'queue/todo'), 0o777)
    os.chown(os.path.join(fresh_home, 'queue/lock/trigger'), 0, 0)
    # A page an earlier install filed in another section goes.
    stale = os.path.join(fresh_home, 'man', 'man1', 'checkpassword.1')
    open(stale, 'w').close()
    r = subprocess.run([sys.executable, '-m', 'qmail.install', '--home', fresh_home,
                        '--fqdn', 'changed.example.org'], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=TIMEOUT)
    check_tree(fresh_home)
    assert not os.path.exists(stale)
    assert os.path.exists(os.path.join(fresh_home, 'man', 'man8', 'checkpassword.8'))
    assert open(os.path.join(ctl, 'me')).read() == 'test.example.org\n'
    assert b'--fqdn changed.example.org not applied' in r.stderr, r.stderr   # said, not silent
    assert open(os.path.join(ctl, 'locals')).read() == \
        'test.example.org\nother.example.org\n'
    lib = os.path.join(fresh_home, 'lib')

    def copies():
        return {n for n in os.listdir(lib) if n.startswith('python.')}
    current = os.path.basename(os.path.realpath(os.path.join(lib, 'python')))
    first = copies()
    assert len(first) == 2 and current in first, first   # and the one before, still running
    subprocess.run([sys.executable, '-m', 'qmail.install', '--home', fresh_home],
                   check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT)
    second = copies()
    newest = os.path.basename(os.path.realpath(os.path.join(lib, 'python')))
    assert second == {current, newest}, (first, second)  # the oldest gone
    # each program resolves the link once: one copy, whatever an upgrade does
    script = open(os.path.join(fresh_home, 'bin', 'qmail-send')).read()
    assert 'os.path.realpath(' in script


def test_reinstall_follows_no_link_planted_by_a_qmail_user(fresh_home, tmp_path):
    """qmailq owns queue/lock and the alias user alias/: a symlink one of
    them plants where the installer (root) fixes a file or writes one
    must not make it chmod, chown or write root's files."""
    secret = tmp_path / 'secret'
    secret.write_text('root:$6$secret\n')
    os.chmod(secret, 0o600)
    victim = tmp_path / 'victim'
    victim.write_text('keep\n')
    os.chmod(victim, 0o600)
    qmailq, alias = pwd.getpwnam('qmailq').pw_uid, pwd.getpwnam('alias').pw_uid
    tcpto = os.path.join(fresh_home, 'queue', 'lock', 'tcpto')
    os.unlink(tcpto)
    os.symlink(str(secret), tcpto)
    os.lchown(tcpto, qmailq, -1)                    # as qmailq would have made it
    root_qmail = os.path.join(fresh_home, 'alias', '.qmail-root')
    os.unlink(root_qmail)
    planted = root_qmail + '.tmp'
    os.symlink(str(victim), planted)
    os.lchown(planted, alias, -1)
    r = subprocess.run([sys.executable, '-m', 'qmail.install', '--home', fresh_home],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode != 0 and 'symlink not made by root' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert victim.read_text() == 'keep\n' and stat.S_IMODE(os.stat(victim).st_mode) == 0o600
    os.unlink(tcpto)                                # the admin removes it: repaired
    subprocess.run([sys.executable, '-m', 'qmail.install', '--home', fresh_home],
                   check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT)
    check_tree(fresh_home)
    assert os.path.isfile(root_qmail) and not os.path.islink(root_qmail)
    assert victim.read_text() == 'keep\n'


def test_install_refuses_a_runtime_another_user_may_change(tmp_path):
    """The interpreter runs as root and as qmailq (setuid qmail-queue): in
    a directory some user owns, that user would become root."""
    venv = tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    (venv / 'lib').mkdir()
    os.symlink(sys.executable, venv / 'bin' / 'python3')
    nobody = pwd.getpwnam('nobody')
    os.chown(venv, nobody.pw_uid, nobody.pw_gid)
    r = subprocess.run([sys.executable, '-m', 'qmail.install', '--home', str(tmp_path / 'home'),
                        '--python', str(venv / 'bin' / 'python3')],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode != 0 and "is not root's alone" in r.stderr, r.stderr
    assert not (tmp_path / 'home').exists()


def test_install_refuses_bad_home(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'qmail.install', '--home',
                        'relative/path'], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 100
    assert r.stderr.startswith('qmail-install: fatal:')
    assert 'Traceback' not in r.stderr


def test_alias_user_keeps_mail_for_root_and_postmaster(home):
    alias = os.path.join(home, 'alias')
    for name in ('.qmail-postmaster', '.qmail-mailer-daemon', '.qmail-root'):
        assert open(os.path.join(alias, name)).read() == './Maildir/\n'
    for sub in ('', 'new', 'cur', 'tmp'):
        path = os.path.join(alias, 'Maildir', sub)
        assert owner_of(path)[0] == 'alias'
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


@pytest.mark.parametrize('name, want', [
    ('vm', 'vm.localdomain'), ('mail.example.org', 'mail.example.org'),
    ('MAIL.Example.ORG.', 'mail.example.org'),
])
def test_host_fqdn_never_dotless(monkeypatch, name, want):
    import socket
    from qmail import install
    monkeypatch.setattr(socket, 'getfqdn', lambda: name)
    assert install.host_fqdn() == want


def test_queue_directories_spread_over_block_groups(home):
    """queue/ and the split directories carry ext4's Orlov hint (chattr
    +T), so the directories made in them are placed apart, where the
    filesystem has the hint at all."""
    from qmail.install import FS_IOC_GETFLAGS, FS_TOPDIR_FL
    import fcntl
    import struct

    def flags(path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return struct.unpack('i', fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack('i', 0)))[0]
        finally:
            os.close(fd)
    try:
        flags(home)
    except OSError:
        pytest.skip('no inode flags on this filesystem')
    for d in ('queue', 'queue/mess', 'queue/info', 'queue/local', 'queue/remote'):
        assert flags(os.path.join(home, d)) & FS_TOPDIR_FL, d
    assert not flags(os.path.join(home, 'queue/todo')) & FS_TOPDIR_FL


def test_only_a_link_root_alone_could_place_is_followed(tmp_path):
    """fix() follows a symlink only where nobody but root could have put
    it (a root-owned, not group- or world-writable directory): a
    directory root made in qmailq's queue could be swapped for a link."""
    from qmail import install
    root_dir = tmp_path / 'root'
    root_dir.mkdir(mode=0o755)
    target = tmp_path / 'target'
    target.mkdir()
    link = root_dir / 'queue'
    os.symlink(str(target), link)
    assert install.root_made_link(str(link))
    open_dir = tmp_path / 'users'
    open_dir.mkdir()
    os.chown(open_dir, pwd.getpwnam('nobody').pw_uid, -1)   # another user's directory
    link2 = open_dir / 'mess'
    os.symlink(str(target), link2)
    assert not install.root_made_link(str(link2))
    os.chmod(root_dir, 0o777)
    assert not install.root_made_link(str(link))


def test_no_link_in_the_middle_of_a_path_is_followed(tmp_path):
    """qmailq may swap queue/lock for a symlink between two of the
    installer's (or qmail-fsck -r's) steps: the helpers reach each
    directory a name at a time and refuse the link, where a full path
    given to the kernel went through it (root then made qmail-owned
    files in any directory, /etc/cron.daily for one)."""
    from qmail import install
    qmailq = pwd.getpwnam('qmailq').pw_uid
    queue = tmp_path / 'queue'
    queue.mkdir()
    os.chown(queue, qmailq, -1)
    elsewhere = tmp_path / 'cron.daily'
    elsewhere.mkdir(mode=0o755)
    lock = queue / 'lock'
    os.symlink(str(elsewhere), lock)
    os.lchown(lock, qmailq, -1)
    for make in (lambda p: install.make_zero_file(p, 4, qmailq, 0, 0o600),
                 lambda p: install.make_fifo(p, qmailq, 0, 0o600),
                 lambda p: install.make_dir(p, qmailq, 0, 0o700),
                 lambda p: install.fix(p, qmailq, 0, 0o600)):
        with pytest.raises(install.InstallError) as e:
            make(str(lock / 'syncfs'))
        assert 'symlink not made by root' in str(e.value), e.value
    assert os.listdir(elsewhere) == []


def test_a_file_with_another_link_is_not_given_away(tmp_path):
    """A user who can write a queue directory could hard-link a file of
    root's there (same disk, where the kernel lets them): fix() must not
    chown it to qmail's user."""
    from qmail import install
    precious = tmp_path / 'shadow'
    precious.write_text('root:$6$secret\n')
    os.chmod(precious, 0o600)
    planted = tmp_path / 'syncfs'
    os.link(precious, planted)
    with pytest.raises(install.InstallError) as e:
        install.fix(str(planted), pwd.getpwnam('qmailq').pw_uid, 0, 0o644)
    assert 'links' in str(e.value)
    st = os.stat(precious)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)


def test_a_home_made_by_someone_else_after_the_check_is_refused(tmp_path, test_user,
                                                                 monkeypatch):
    """In a sticky world-writable directory, another user making HOME
    just after check_home looked had the installer take it over, with
    their service/ (run by svscan as root), control/ and alias/ files."""
    from qmail import install
    os.chmod(tmp_path, 0o1777)
    home = str(tmp_path / 'qmail')
    real_check = install.check_home

    def check_then_race(path):
        real_check(path)
        os.mkdir(path)
        os.makedirs(os.path.join(path, 'service', 'evil'))
        for d in (path, os.path.join(path, 'service'), os.path.join(path, 'service', 'evil')):
            os.chown(d, test_user[1], test_user[2])
    monkeypatch.setattr(install, 'check_home', check_then_race)
    with pytest.raises(install.InstallError) as e:
        install.install(home, RUNTIME, 'x.example.org')
    assert 'appeared' in str(e.value), e.value
    assert sorted(os.listdir(home)) == ['service']          # nothing of ours put there
    assert os.stat(home).st_uid == test_user[1]


def test_svscan_runs_no_service_directory_of_someone_elses(tmp_path, test_user):
    from qmail import svscan
    home = str(tmp_path)
    os.makedirs(os.path.join(home, 'supervise', 'qmail-send'))
    os.makedirs(os.path.join(home, 'service'))
    os.chown(os.path.join(home, 'service'), test_user[1], test_user[2])
    with pytest.raises(OSError) as e:
        svscan.link_services(home, ['qmail-send'])
    assert "root's alone" in str(e.value), e.value
    assert os.listdir(os.path.join(home, 'service')) == []
    os.chown(os.path.join(home, 'service'), 0, 0)
    os.chmod(os.path.join(home, 'service'), 0o777)
    with pytest.raises(OSError):
        svscan.link_services(home, ['qmail-send'])
    os.chmod(os.path.join(home, 'service'), 0o755)
    assert os.listdir(svscan.link_services(home, ['qmail-send'])) == ['qmail-send']


def qmaild_dir(tmp_path, name):
    """tmp_path/name, a directory of qmaild's."""
    d = tmp_path / name
    d.mkdir()
    os.chown(d, pwd.getpwnam('qmaild').pw_uid, -1)
    os.chmod(tmp_path, 0o755)
    return d


def check_home_refused(home):
    r = subprocess.run([sys.executable, '-m', 'qmail.install', '--home', home,
                        '--python', RUNTIME, '--fqdn', 'x.example.org'],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode != 0 and "is not root's alone" in r.stderr, r.stderr
    assert not os.path.exists(home)


def test_install_refuses_a_home_another_user_may_rename(tmp_path):
    """The set-uid launchers run HOME/lib's scripts as root and qmailq:
    a user who may rename HOME (owning a directory above it) could put
    their own there."""
    check_home_refused(str(qmaild_dir(tmp_path, 'bob') / 'qmail'))


def test_install_refuses_a_home_reached_through_a_link_to_another_users_directory(tmp_path):
    """root_only() exempts links it walks through: the directory a link
    leads to must be root's alone too."""
    link = tmp_path / 'lnk'
    os.symlink(str(qmaild_dir(tmp_path, 'real')), link)
    check_home_refused(str(link / 'qmail'))


def test_boot_and_doc_say_where_qmails_rc_and_manuals_went(home):
    """An admin following qmail's INSTALL looks for boot/proc and /var/qmail/rc,
    and for the manual pages under doc/: each directory says what stands in."""
    import grp
    for sub, words in (('boot', ['control/defaultdelivery', 'supervise/qmail-send/run']),
                       ('doc', ['lib/python/qmail/', 'qmail-showctl'])):
        path = os.path.join(home, sub, 'README')
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (
            0, grp.getgrnam('qmail').gr_gid, 0o644)
        text = open(path).read()
        for word in words:
            assert home + '/' + word in text or word in text, (sub, word, text)
    assert os.path.isfile(os.path.join(home, 'supervise', 'qmail-send', 'run'))
    assert os.path.isdir(os.path.join(home, 'lib', 'python', 'qmail'))


def test_every_program_has_a_man_page_that_man_finds(home):
    """An admin types `man qmail-send` with HOME/bin in PATH (man-db looks
    in ../man of each PATH directory), as with qmail's /var/qmail/man."""
    import grp
    qmail_gid = grp.getgrnam('qmail').gr_gid
    programs = sorted(os.listdir(os.path.join(home, 'bin')))
    assert 'qmail-send' in programs and 'qmail-queue' in programs
    env = dict(os.environ, PATH=os.path.join(home, 'bin') + ':/usr/bin:/bin',
               MANWIDTH='80', MANPAGER='cat', PAGER='cat')
    env.pop('MANPATH', None)
    for name in programs:
        section = '1' if name in ('maildirmake', 'forward', 'preline', 'tcp-env') else None
        found = [d for d in os.listdir(os.path.join(home, 'man'))
                 if os.path.exists(os.path.join(home, 'man', d, name + '.' + d[3:]))]
        assert len(found) == 1, (name, found)
        if section:
            assert found == ['man' + section], name
        st = os.stat(os.path.join(home, 'man', found[0], name + '.' + found[0][3:]))
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, qmail_gid, 0o644)
    for name, words in (('qmail-send', ['qmail-send - deliver the messages in the queue',
                                        'Runs as', 'qmails']),
                        ('qmail-control', ['concurrencyremote', 'Default: 20.']),
                        ('qmail', ['qmail-smtpd(8)', 'receive mail via SMTP']),
                        ('maildirmake', ['maildirmake name']),
                        ('dot-qmail', ['.qmail-list-default and .qmail-default',
                                       'Sorry, no mailbox here by that name']),
                        ('qmail-log', ['info msg m: bytes b from <s> qp q uid u']),
                        ('qmail-users', ['+loc:user:uid:gid:homedir:dash:pre:']),
                        ('tcp-environ', ['TCPREMOTEIP', 'qmail-listen']),
                        ('addresses', ['#@[]', 'VERP']),
                        ('envelopes', ['F, the sender and a NUL']),
                        ('qmail-header', ['not shown: ;', 'MBOX']),
                        ('maildir', ['(#4.2.1)', 'cur/']),
                        ('mbox', ['30 seconds straight', 'mboxrd']),
                        ('qmail-command', ['EXT2', 'Aack, child crashed.'])):
        where = subprocess.run(['man', '-w', name], env=env, capture_output=True,
                               text=True, timeout=TIMEOUT)
        assert where.stdout.startswith(os.path.join(home, 'man') + '/'), (name, where)
        shown = subprocess.run(['man', name], env=env, capture_output=True,
                               text=True, timeout=TIMEOUT)
        assert shown.returncode == 0, (name, shown.stderr)
        flat = ' '.join(shown.stdout.replace('\u2010\n', '').split())
        for word in words:
            assert word in flat, (name, word, flat[:500])


def test_a_runtime_without_the_libraries_is_refused(tmp_path):
    """Debian's own python3 has no dnspython: installed with it, every
    remote delivery crashed ("qmail-remote crashed") and waited in the
    queue for its lifetime."""
    from qmail import install
    install.check_runtime(RUNTIME)                  # make's: everything there
    bare = tmp_path / 'bare'                        # the standard library alone
    subprocess.run(['/usr/bin/python3', '-m', 'venv', '--without-pip', str(bare)],
                   check=True, timeout=TIMEOUT)
    with pytest.raises(install.InstallError) as e:
        install.check_runtime(str(bare / 'bin' / 'python3'))
    assert 'lacks a library' in str(e.value) and 'dns' in str(e.value), e.value


def test_reinstall_keeps_what_the_admin_edited(fresh_home, tmp_path):
    """make run reinstalls every time: the AUTH arguments README has the
    admin add to the run script went, and the port with them, and a
    tcp.smtp.cdb built from the admin's own rules was rebuilt from the
    default."""
    sup = os.path.join(fresh_home, 'supervise')
    smtpd_run = os.path.join(sup, 'qmail-smtpd', 'run')
    send_run = os.path.join(sup, 'qmail-send', 'run')
    text = open(smtpd_run).read()
    edited = text.replace('/bin/qmail-smtpd 2>&1',
                          '/bin/qmail-smtpd mail.example.org /bin/checkpassword /bin/true 2>&1')
    assert edited != text
    with open(smtpd_run, 'w') as f:
        f.write(edited)
    os.chmod(smtpd_run, 0o777)          # kept, but its mode repaired: supervise runs it as root
    ctl = os.path.join(fresh_home, 'control')
    own = tmp_path / 'rules'
    own.write_text('127.0.0.3:deny\n:allow\n')
    cdb = os.path.join(ctl, 'tcp.smtp.cdb')
    subprocess.run('tcprules %s %s.tmp < %s' % (cdb, cdb, own), shell=True, check=True,
                   timeout=TIMEOUT)
    made = open(cdb, 'rb').read()

    def reinstall(*args):
        return subprocess.run([sys.executable, '-m', 'qmail.install', '--home', fresh_home,
                               '--python', RUNTIME] + list(args), capture_output=True,
                              text=True, check=True, timeout=TIMEOUT)
    r = reinstall('--smtp-port', '2525')
    assert open(smtpd_run).read() == edited
    assert stat.S_IMODE(os.stat(smtpd_run).st_mode) == 0o755
    assert 'kept %s' % smtpd_run in r.stderr, r.stderr
    assert ' 2525 ' in open(smtpd_run + '.new').read()
    assert open(cdb, 'rb').read() == made
    # what nobody edited follows the installer
    assert 'qmail-start' in open(send_run).read() and not os.path.exists(send_run + '.new')
    os.unlink(smtpd_run)
    reinstall('--smtp-port', '2526')
    assert ' 2526 ' in open(smtpd_run).read()
    reinstall('--smtp-port', '2527')
    assert ' 2527 ' in open(smtpd_run).read()       # still the installer's: replaced
    # make run again without SMTP_ADDR (a home set up to listen on every
    # address went back to 127.0.0.1 and port 25): kept, as each port
    reinstall('--smtp-addr', '0', '--pop3-port', '1110')
    reinstall()
    assert ' 0 2527 ' in open(smtpd_run).read()
    pop3d_run = os.path.join(sup, 'qmail-pop3d', 'run')
    assert ' 0 1110 ' in open(pop3d_run).read()
    # an edited script (rblsmtpd before qmail-smtpd) still tells them
    text = open(smtpd_run).read().replace(' %s/bin/qmail-smtpd' % fresh_home,
                                          ' /usr/bin/rblsmtpd -r zen.example %s/bin/qmail-smtpd'
                                          % fresh_home)
    with open(smtpd_run, 'w') as f:
        f.write(text)
    reinstall()
    assert open(smtpd_run).read() == text
    assert ' 0 2527 ' in open(smtpd_run + '.new').read()
    assert ' 0 1110 ' in open(pop3d_run).read()
    # rules edited after their cdb: compiled again
    time.sleep(0.01)
    with open(os.path.join(ctl, 'tcp.smtp'), 'a') as f:
        f.write('127.0.0.4:deny\n')
    r = reinstall()
    assert open(cdb, 'rb').read() != made and b'127.0.0.4' in open(cdb, 'rb').read()
    assert 'limits memory' not in r.stderr, r.stderr
    # a run script kept from C qmail, with Life with qmail's softlimit:
    # every interpreter would die at its start (a segfault at 2 MB)
    with open(smtpd_run, 'w') as f:
        f.write('#!/bin/sh\nexec softlimit -m 2000000 tcpserver -v 0 smtp %s/bin/qmail-smtpd 2>&1\n'
                % fresh_home)
    r = reinstall()
    assert ('warning: %s limits memory to 2000000 bytes (softlimit -m 2000000)' % smtpd_run
            in r.stderr), r.stderr
    assert 'softlimit' in open(smtpd_run).read()    # kept: the admin's to change


def test_a_copy_a_daemon_runs_on_outlives_two_upgrades(fresh_home):
    """Two installs without a restart removed the copy qmail-send and its
    spawns ran on: a late import (qmail-remote in a new qmail-rspawn
    worker, qmail-smtpd's TLS) failed until the next restart."""
    from delivery import Mta
    lib = os.path.join(fresh_home, 'lib')
    running_on = os.path.basename(os.path.realpath(os.path.join(lib, 'python')))
    mta = Mta(fresh_home)
    try:
        for _ in range(2):
            subprocess.run([sys.executable, '-m', 'qmail.install', '--home', fresh_home,
                            '--python', RUNTIME], check=True, stdout=subprocess.DEVNULL,
                           timeout=TIMEOUT)
        assert os.path.isdir(os.path.join(lib, running_on))
    finally:
        mta.stop()
    subprocess.run([sys.executable, '-m', 'qmail.install', '--home', fresh_home,
                    '--python', RUNTIME], check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT)
    assert not os.path.exists(os.path.join(lib, running_on))    # nobody on it now


@needs_root
def test_install_over_a_queue_keeps_its_split(tmp_path):
    """A C qmail's home built with another conf-split: the installer took
    23, and qmail-send looked for every queued message in the wrong
    subdirectory ("unable to stat mess/4/..."), delivering none."""
    import tempfile
    top = tempfile.mkdtemp(prefix='qmailtest.', dir='/tmp')
    os.chmod(top, 0o755)
    home = os.path.join(top, 'qmail')
    try:
        for i in range(47):
            os.makedirs(os.path.join(home, 'queue', 'mess', str(i)))
        base = [sys.executable, '-m', 'qmail.install', '--home', home, '--python', RUNTIME,
                '--fqdn', 'split.example.org']
        r = subprocess.run(base + ['--split', '23'], capture_output=True, timeout=TIMEOUT)
        assert r.returncode == 100 and b'split 47 ways; --split 23' in r.stderr, r
        r = subprocess.run(base, capture_output=True, timeout=TIMEOUT)
        assert r.returncode == 0 and b'queue split 47 ways' in r.stdout, r
        auto_py = open(os.path.join(home, 'lib', 'python', 'qmail', 'lib', 'auto.py')).read()
        assert 'SPLIT = 47' in auto_py, auto_py
        for d in ('info', 'local', 'remote'):
            assert sorted(map(int, os.listdir(os.path.join(home, 'queue', d)))) == list(range(47))
        r = subprocess.run([os.path.join(home, 'bin', 'qmail-fsck'), '-q'],
                           capture_output=True, timeout=TIMEOUT)
        assert (r.returncode, r.stdout) == (0, b''), r
        os.makedirs(os.path.join(home, 'queue', 'mess', '60'))     # not one split
        r = subprocess.run(base, capture_output=True, timeout=TIMEOUT)
        assert r.returncode == 100 and b'not the split of one queue' in r.stderr, r
    finally:
        import shutil
        shutil.rmtree(top, ignore_errors=True)


def test_installed_showctl_explains_every_kind_of_control(fresh_home):
    """bin/qmail-showctl as installed (its interpreter's flags, its
    site-packages): control/smtproutes, domainkeys/ and clientcert.pem
    each need a module of qmail-remote's (dnspython, dkimpy, ssl); it
    had crashed ("internal bug: ModuleNotFoundError") where smtproutes
    existed, as it ran without site-packages."""
    ctl = os.path.join(fresh_home, 'control')
    with open(os.path.join(ctl, 'smtproutes'), 'w') as f:
        f.write(':relay.example:587 user pass\nbad.example:relay:x\n')
    keys = os.path.join(ctl, 'domainkeys', 'example.org')
    os.makedirs(keys)
    with open(os.path.join(keys, 'selector'), 'w') as f:
        f.write('sel\n')
    with open(os.path.join(ctl, 'clientcert.pem'), 'w') as f:
        f.write('not a certificate\n')
    with open(os.path.join(ctl, 'srs_domain'), 'w') as f:
        f.write('srs.example.org\n')
    r = subprocess.run([os.path.join(fresh_home, 'bin', 'qmail-showctl')],
                       capture_output=True, timeout=TIMEOUT)
    assert r.returncode == 0 and r.stderr == b'', r
    out = r.stdout.decode()
    assert 'SMTP route: :relay.example:587 user (password not shown)' in out, out
    assert 'Oops! qmail-remote cannot use it (' in out
    assert 'Oops! No key example.org/sel to sign with: the mail waits.' in out, out
    assert 'Oops! No secret in srs_secrets: forwards wait.' in out
