"""qmail-fsck on fake queues in a scratch directory: each kind of problem
is found, and the repair never deletes mail."""

import os
import shutil
import stat
import time

import pytest

from qmail import fsck, install
from qmail.lib import auto
from qmail.lib.qfile import qfn

SPLIT = 3
OLD = time.time() - fsck.OSSIFIED - 3600
ENVELOPE = b'u0\0p1\0Fa@far.example\0Tb@here.example\0Tc@far.example\0'


def fake_ids():
    """Every qmail user and group as the one running the test."""
    names = [u for u, _, _ in install.USERS] + ['root']
    return (dict.fromkeys(names, os.getuid()),
            dict.fromkeys(install.GROUPS, os.getgid()))


class Queue:
    """A home with an installed tree, and queue files made by hand."""

    def __init__(self, root):
        self.home = str(root / 'qmail')
        self.qdir = os.path.join(self.home, 'queue')
        self.uids, self.gids = fake_ids()
        install.install_tree(self.home, self.uids, self.gids, SPLIT)

    def path(self, d, messid):
        return os.path.join(self.qdir, qfn(d, messid, SPLIT))

    def put(self, d, messid, data, age=None):
        with open(self.path(d, messid), 'wb') as f:
            f.write(data)
        if age is not None:
            os.utime(self.path(d, messid), (age, age))

    def mess(self, text=None, age=None) -> int:
        """A message file named by its inode, as qmail-queue makes it."""
        if text is None:
            self.count = getattr(self, 'count', 0) + 1
            text = b'Received: x\n\nhello %d\n' % self.count
        tmp = os.path.join(self.qdir, 'pid', 'tmp')
        with open(tmp, 'wb') as f:
            f.write(text)
        messid = os.stat(tmp).st_ino
        os.link(tmp, self.path('mess', messid))
        os.unlink(tmp)
        if age is not None:
            os.utime(self.path('mess', messid), (age, age))
        return messid

    def queued(self) -> int:                        # S4
        messid = self.mess()
        self.put('todo', messid, ENVELOPE)
        return messid

    def preprocessed(self) -> int:                  # S5
        messid = self.mess()
        self.put('info', messid, b'Fa@far.example\0')
        self.put('local', messid, b'Db@here.example\0')
        self.put('remote', messid, b'Tc@far.example\0')
        return messid

    def check(self, now=None):
        return fsck.check_queue(self.qdir, SPLIT, now or time.time(), self.uids)

    def fsck(self, repair=False):
        said = []
        code = fsck.fsck(self.home, install.HIER, SPLIT, self.uids, self.gids,
                         time.time(), repair, said.append)
        return code, said

    def all_files(self) -> dict:
        """{relative path: (inode, bytes)} of every file under queue/."""
        out = {}
        for dirpath, _, names in os.walk(self.qdir):
            for n in names:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode):
                    with open(p, 'rb') as f:
                        out[os.path.relpath(p, self.qdir)] = (st.st_ino, f.read())
        return out


@pytest.fixture
def q(tmp_path):
    return Queue(tmp_path)


def kinds(problems):
    return sorted(p.kind for p in problems)


def test_a_healthy_queue_is_clean(q):
    q.queued()
    q.preprocessed()
    q.mess()                                        # young S2: injecting
    m = q.mess()
    q.put('intd', m, b'u0\0p1\0Fa@b\0')              # young S3
    s4 = q.queued()
    q.put('intd', s4, ENVELOPE)                      # S4 with intd
    q.put('info', s4, b'F')                          # preprocessing, half way
    s5 = q.preprocessed()
    q.put('bounce', s5, b'<x@y>:\nno\n\n')
    q.put('intd', s5, ENVELOPE)                      # a crash after todo/ went
    with open(os.path.join(q.qdir, 'pid', '1.2.3'), 'wb'):
        pass
    assert q.check() == []
    code, said = q.fsck()
    assert (code, said) == (0, [])


def test_a_big_envelope_is_judged_whole(q):
    """A message with the largest envelope qmail-queue takes (8 MB) is
    healthy, not "malformed" because only its first megabyte was read
    (which had qmail-fsck -r pull a live mailing-list post out)."""
    from qmail import queue
    head = b'u0\0p1\0Fa@far.example\0'
    rcpt = b'Tbob@here.example.org\0'
    env = head + rcpt * ((queue.ENVELOPEMAX - 1) // len(rcpt))
    assert (1 << 20) < len(env) <= queue.ENVELOPEMAX + len(head)
    m = q.mess()
    q.put('todo', m, env)
    assert q.check() == []


def make_todo_without_mess(q):
    q.put('todo', 4242, ENVELOPE)


def make_todo_empty_mess(q):
    q.put('todo', q.mess(b''), ENVELOPE)


def make_todo_malformed(q):
    q.put('todo', q.mess(), b'u0\0p1\0Fa@b\0Xjunk\0')


def make_todo_incomplete(q):
    q.put('todo', q.mess(), b'u0\0p1\0Fa@b\0Tc@')


def make_info_without_mess(q):
    q.put('info', 4243, b'Fa@b\0')
    q.put('local', 4243, b'Tc@d\0')


def make_info_malformed(q):
    q.put('info', q.mess(), b'a@b')


def make_local_without_info(q):
    q.put('local', q.mess(), b'Tc@d\0')


def make_remote_malformed(q):
    m = q.preprocessed()
    q.put('remote', m, b'Tc@far.example\0Qx\0')


def make_local_empty(q):
    m = q.preprocessed()
    q.put('local', m, b'')


def make_bounce_without_info(q):
    q.put('bounce', q.mess(), b'<c@d>:\nSorry.\n\n')


def make_mess_name(q):
    m = q.preprocessed()
    other = m + SPLIT * 1000
    os.rename(q.path('mess', m), q.path('mess', other))
    for d in ('info', 'local', 'remote'):
        os.rename(q.path(d, m), q.path(d, other))


def make_mess_stale(q):
    q.mess(age=OLD)


def make_mess_stale_s3(q):
    m = q.mess(age=OLD)
    q.put('intd', m, b'u0\0p1\0Fa@b\0')


def make_intd_without_mess(q):
    q.put('intd', 4244, b'u0\0p1\0Fa@b\0', age=OLD)


def make_pid_stale(q):
    path = os.path.join(q.qdir, 'pid', '99.1.1')
    with open(path, 'wb'):
        pass
    os.utime(path, (OLD, OLD))


def make_misplaced(q):
    m = q.preprocessed()
    wrong = os.path.join(q.qdir, 'info', str((m + 1) % SPLIT), str(m))
    os.rename(q.path('info', m), wrong)


def make_pid_dir(q):
    path = os.path.join(q.qdir, 'pid', '98.1.1')
    os.mkdir(path)
    os.utime(path, (OLD, OLD))


def make_stray(q):
    with open(os.path.join(q.qdir, 'todo', 'notes.txt'), 'wb') as f:
        f.write(b'mine')


PROBLEMS = [
    (make_todo_without_mess, 'todo-without-mess', 'quarantine'),
    (make_todo_empty_mess, 'todo-empty-mess', 'quarantine'),
    (make_todo_malformed, 'todo-malformed', 'quarantine'),
    (make_todo_incomplete, 'todo-malformed', 'quarantine'),
    (make_info_without_mess, 'info-without-mess', 'quarantine'),
    (make_info_malformed, 'info-malformed', 'quarantine'),
    (make_local_without_info, 'local-without-info', 'quarantine'),
    (make_remote_malformed, 'remote-malformed', 'quarantine'),
    (make_local_empty, 'local-malformed', 'quarantine'),
    (make_bounce_without_info, 'bounce-without-info', 'quarantine'),
    (make_mess_name, 'mess-name', ''),             # delivered as it is (a restored queue)
    (make_mess_stale, 'mess-stale', 'remove'),
    (make_mess_stale_s3, 'mess-stale', 'remove'),
    (make_intd_without_mess, 'intd-without-mess', 'remove'),
    (make_pid_stale, 'pid-stale', 'remove'),
    (make_misplaced, 'misplaced', 'move'),
    (make_stray, 'stray', ''),
    (make_pid_dir, 'stray', ''),                 # not removed as a pid/ file: reported
]


@pytest.mark.parametrize('make, kind, repair', PROBLEMS,
                         ids=[p[1] + '-' + p[0].__name__[5:] for p in PROBLEMS])
def test_each_problem_is_found_and_repaired(q, make, kind, repair):
    q.preprocessed()                                 # a bystander
    make(q)
    found = q.check()
    assert [(p.kind, p.repair) for p in found] == [(kind, repair)], found
    code, said = q.fsck(repair=True)
    assert code == 1
    assert any(line.startswith(kind) for line in said), said
    after = q.check()
    if repair:
        assert after == [], after
        assert q.fsck() == (0, [])
    else:
        assert kinds(after) == [kind]                # reported, left alone


def test_young_leftovers_are_not_problems(q):
    q.mess()                                         # S2, an injection
    q.put('intd', 4245, b'u0\0p1\0Fa@b\0')           # intd, mess just gone?
    with open(os.path.join(q.qdir, 'pid', '1.1.1'), 'wb'):
        pass
    assert q.check() == []


def test_repair_never_deletes_a_message(q):
    keep = q.preprocessed()
    for make, kind, repair in PROBLEMS:
        make(q)
    stale = [p.messid for p in q.check() if p.kind == 'mess-stale']
    before = q.all_files()
    stale_files = {rel for rel in before
                   if any(rel.endswith('/%d' % m) for m in stale)}
    stale_files |= {'intd/4244', 'pid/99.1.1'}       # what qmail removes too
    code, said = q.fsck(repair=True)
    assert code == 1
    after = set(q.all_files().values())
    lost = [rel for rel, kept in before.items()
            if rel not in stale_files and kept not in after]
    assert lost == [], said
    # Every quarantined message has its report and its envelope.
    base = os.path.join(q.qdir, fsck.QUARANTINE)
    reports = [open(os.path.join(base, d, 'REPORT')).read()
               for d in sorted(os.listdir(base))]
    assert len(reports) == 10
    assert any('to <b@here.example>' in r and 'todo-without-mess' in r
               for r in reports)
    # The healthy message was not touched; what is left is clean.
    assert os.path.exists(q.path('info', keep))
    assert kinds(q.check()) == ['mess-name', 'stray', 'stray']


def test_no_quarantine_while_qmail_send_runs(q):
    """A message taken from under a running qmail-send stays a job in its
    memory, "trouble opening" logged at each retry until a restart: with
    the send mutex held, -r moves nothing and says so; the other repairs
    are made.  Stopped, the next -r moves it."""
    import fcntl
    q.put('todo', 4242, ENVELOPE)
    q.put('intd', 4242, ENVELOPE)
    make_pid_stale(q)
    mutex = os.open(os.path.join(q.qdir, 'lock', 'sendmutex'), os.O_WRONLY)
    try:
        fcntl.flock(mutex, fcntl.LOCK_EX | fcntl.LOCK_NB)   # as qmail-send
        code, said = q.fsck(repair=True)
    finally:
        os.close(mutex)
    assert code == 1
    assert any(line.startswith('not repaired: todo-without-mess') for line in said), said
    assert any(line.startswith('qmail-send may be running') for line in said), said
    assert os.path.exists(q.path('todo', 4242))
    assert kinds(q.check()) == ['todo-without-mess']         # the stale pid/ file went
    code, said = q.fsck(repair=True)
    assert not os.path.exists(q.path('todo', 4242))
    assert q.check() == []


@pytest.mark.parametrize('plant', ['fifo', 'symlink', 'missing'])
def test_no_quarantine_when_the_mutex_cannot_be_told(q, tmp_path, plant):
    """lock/ is qmailq's: a FIFO there must not hang root's open, a link
    not be followed; a missing mutex may have been unlinked under a
    running qmail-send.  In each case nothing is moved; -r makes a
    missing mutex, and the next run moves the message."""
    q.put('todo', 4242, ENVELOPE)
    q.put('intd', 4242, ENVELOPE)
    mutex = os.path.join(q.qdir, 'lock', 'sendmutex')
    os.unlink(mutex)
    if plant == 'fifo':
        os.mkfifo(mutex)
    elif plant == 'symlink':
        target = tmp_path / 'elsewhere'
        target.write_bytes(b'')
        os.symlink(str(target), mutex)
    code, said = q.fsck(repair=True)
    assert code == 1
    assert any(line.startswith('qmail-send may be running') for line in said), said
    assert os.path.exists(q.path('todo', 4242))
    if plant == 'missing':
        assert os.path.isfile(mutex)                    # made by -r
        q.fsck(repair=True)
        assert not os.path.exists(q.path('todo', 4242))


def test_quarantine_keeps_the_files_and_says_why(q):
    q.put('todo', 4242, ENVELOPE)
    q.put('intd', 4242, ENVELOPE)
    code, said = q.fsck(repair=True)
    assert code == 1
    assert not os.path.exists(q.path('todo', 4242))
    base = os.path.join(q.qdir, fsck.QUARANTINE)
    dest, = os.listdir(base)
    assert dest.startswith('4242.')
    assert sorted(os.listdir(os.path.join(base, dest))) == ['REPORT', 'intd', 'todo']
    report = open(os.path.join(base, dest, 'REPORT')).read()
    assert 'todo-without-mess queue/todo/4242' in report
    assert 'from <a@far.example>' in report and 'to <c@far.example>' in report
    assert any('moved message 4242' in line for line in said)


def test_quarantine_into_a_planted_link_is_refused(q, tmp_path):
    """queue/ is qmailq's: a queue/fsck it made a symlink must not have
    root make directories and move mail where the link points."""
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    os.symlink(str(elsewhere), os.path.join(q.qdir, fsck.QUARANTINE))
    q.put('todo', 4242, ENVELOPE)
    q.fsck(repair=True)
    assert os.listdir(elsewhere) == []
    assert os.path.exists(q.path('todo', 4242))


def test_a_message_moving_during_the_scan_is_no_problem(q, monkeypatch):
    messid = q.preprocessed()
    real = fsck.look_at
    calls = []

    def moving(qdir, m, split):
        calls.append(m)
        look = real(qdir, m, split)
        if len(calls) == 1:
            look.mess = None        # as if seen between two states
        return look

    monkeypatch.setattr(fsck, 'look_at', moving)
    assert q.check() == []
    assert calls == [messid, messid]


@pytest.mark.parametrize('first, second, want', [
    # todo/ at both looks, no mess/: lost
    ({'todo': (7, 0, 9)}, {'todo': (7, 0, 9)}, ['todo-without-mess']),
    # todo/ went meanwhile: the message was finished, nothing lost
    ({'todo': (7, 0, 9)}, {}, []),
    # todo/ replaced by another file of that name: not the same message
    ({'todo': (7, 0, 9)}, {'todo': (8, 0, 9)}, []),
    # local/ without info/ while todo/ was there: preprocessing
    ({'local': (5, 0, 9), 'todo': (7, 0, 9)},
     {'local': (5, 0, 9), 'todo': (7, 0, 9)}, ['todo-without-mess']),
    ({'local': (5, 0, 9)}, {'local': (5, 0, 9)}, ['local-without-info']),
    ({'local': (5, 0, 9)}, {'local': (6, 0, 9)}, []),
])
def test_judge_needs_both_looks(first, second, want):
    look = fsck.Look()
    for d in fsck.LOOK_ORDER1:
        look.first[d] = first.get(d)
        look.second[d] = second.get(d)
    assert kinds(fsck.judge(4242, look, SPLIT, time.time())) == want


@pytest.mark.parametrize('data, trouble', [
    (ENVELOPE, None),
    (b'', 'empty envelope'),
    (b'u0\0p1\0Fa@b\0Tc', 'envelope ends inside a record'),
    (b'u0\0p1\0Ta@b\0', '0 sender records'),
    (b'ux\0Fa@b\0', 'bad u record'),
    (b'Fa@b\0Fc@d\0', '2 sender records'),
])
def test_todo_trouble(data, trouble):
    assert fsck.todo_trouble(data) == trouble


@pytest.mark.parametrize('data, trouble', [
    (b'Ta@b\0Dc@d\0', None),
    (b'', 'empty recipient list'),
    (b'Ta@b\0Dc@', 'recipient list ends inside a record'),
    (b'Ta@b\0Xc@d\0', 'unknown record type X'),
    (b'Ta@b\0\x01c@d\0', 'unknown record type \\x01'),
    (b'Ta@b\0\0', 'unknown record type (an empty record)'),
    (b'Ta@b\0 c@d\0', 'unknown record type \\x20'),
])
def test_chan_trouble(data, trouble):
    assert fsck.chan_trouble(data) == trouble


def test_tree_owners_modes_and_split(q):
    os.chmod(os.path.join(q.qdir, 'todo'), 0o777)
    os.rmdir(os.path.join(q.qdir, 'info', '2'))
    os.unlink(os.path.join(q.qdir, 'lock', 'trigger'))
    problems = fsck.check_tree(q.home, install.HIER, SPLIT, q.uids, q.gids)
    assert sorted((p.kind, p.path) for p in problems) == [
        ('missing', 'queue/info/2'), ('missing', 'queue/lock/trigger'),
        ('mode', 'queue/todo')]
    code, said = q.fsck(repair=True)
    assert code == 1
    assert fsck.check_tree(q.home, install.HIER, SPLIT, q.uids, q.gids) == []
    assert stat.S_ISFIFO(os.lstat(os.path.join(q.qdir, 'lock', 'trigger')).st_mode)


def test_wrong_type_of_a_fifo_is_made_one_a_directory_left_to_the_admin(q):
    """lock/trigger and lock/command hold nothing: a file or a link in
    their place is replaced by the FIFO (qmail-send's warning says
    qmail-fsck -r makes it one: a review found it did not); a directory,
    which may hold something, is left."""
    trigger = os.path.join(q.qdir, 'lock', 'trigger')
    command = os.path.join(q.qdir, 'lock', 'command')
    os.unlink(trigger)
    with open(trigger, 'wb'):
        pass
    os.unlink(command)
    os.symlink('/etc/passwd', command)
    problems = fsck.check_tree(q.home, install.HIER, SPLIT, q.uids, q.gids)
    assert sorted((p.kind, p.path, p.repair) for p in problems) == [
        ('type', 'queue/lock/command', 'create'), ('type', 'queue/lock/trigger', 'create')]
    q.fsck(repair=True)
    assert fsck.check_tree(q.home, install.HIER, SPLIT, q.uids, q.gids) == []
    assert stat.S_ISFIFO(os.lstat(trigger).st_mode) and stat.S_ISFIFO(os.lstat(command).st_mode)
    os.unlink(trigger)
    os.mkdir(trigger)
    problems = fsck.check_tree(q.home, install.HIER, SPLIT, q.uids, q.gids)
    assert [(p.kind, p.repair) for p in problems] == [('type', '')]


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root')
def test_file_owners(q):
    m = q.preprocessed()
    uids = dict(q.uids, qmails=q.uids['qmails'] + 4321)
    problems = fsck.check_queue(q.qdir, SPLIT, time.time(), uids)
    assert sorted(p.path for p in problems if p.kind == 'file-owner') == [
        'queue/' + qfn(d, m, SPLIT) for d in ('info', 'local', 'remote')]
    fixer = fsck.Repairer(q.home, install.HIER, SPLIT, uids, q.gids,
                          time.time(), lambda text: None)
    for p in problems:
        assert fixer.repair(p, problems)
    assert os.stat(q.path('info', m)).st_uid == uids['qmails']


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root')
def test_a_file_with_a_link_elsewhere_is_not_given_away(q, tmp_path):
    """A qmail user who links a file of root's into the queue (where the
    kernel lets them) must not have qmail-fsck -r chown it to them."""
    m = q.preprocessed()
    precious = tmp_path / 'shadow'
    precious.write_text('root:$6$secret\n')
    os.chmod(precious, 0o600)
    os.unlink(q.path('info', m))
    os.link(precious, q.path('info', m))
    uids = dict(q.uids, qmails=q.uids['qmails'] + 4321)
    problems = [p for p in fsck.check_queue(q.qdir, SPLIT, time.time(), uids)
                if p.kind == 'file-owner' and p.path.startswith('queue/info/')]
    assert problems
    said = []
    fixer = fsck.Repairer(q.home, install.HIER, SPLIT, uids, q.gids, time.time(), said.append)
    for p in problems:
        assert not fixer.repair(p, problems)
    assert os.stat(precious).st_uid == 0
    assert any('links' in line for line in said), said


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root')
@pytest.mark.parametrize('d', ['todo', 'intd'])
def test_a_todo_linked_to_a_file_of_roots_is_not_given_away(q, tmp_path, d):
    """todo/N and intd/N may share their inode, so two links were let be
    there whatever the other was: qmailq linking /etc/shadow in as
    todo/N had qmail-fsck -r make it qmailq's, mode 0644.  The partner
    alone is let be."""
    m = q.mess()
    precious = tmp_path / 'shadow'
    precious.write_text('root:$6$secret\n')
    os.chmod(precious, 0o600)
    os.link(precious, q.path(d, m))
    said = []
    fixer = fsck.Repairer(q.home, install.HIER, SPLIT, q.uids, q.gids, time.time(), said.append)
    problems = [p for p in fsck.check_queue(q.qdir, SPLIT, time.time(), q.uids)
                if p.kind.startswith('file-') and p.path.startswith('queue/%s/' % d)]
    assert problems
    for p in problems:
        assert not fixer.repair(p, problems)
    st = os.stat(precious)
    assert (st.st_uid, oct(stat.S_IMODE(st.st_mode))) == (0, oct(0o600))
    assert any('links' in line for line in said), said
    # the partner: todo/N and intd/N one file, as qmail-queue leaves them
    m = q.queued()
    os.link(q.path('todo', m), q.path('intd', m))
    os.chmod(q.path('todo', m), 0o600)
    problems = [p for p in fsck.check_queue(q.qdir, SPLIT, time.time(), q.uids)
                if p.kind.startswith('file-') and p.path == 'queue/' + qfn(d, m, SPLIT)]
    assert problems
    for p in problems:
        assert fixer.repair(p, problems)
    assert oct(stat.S_IMODE(os.stat(q.path('todo', m)).st_mode)) == oct(0o644)


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root')
def test_main_exit_codes(tmp_path, capsys):
    home = str(tmp_path / 'qmail')
    uids, gids = install.lookup_ids()
    install.install_tree(home, uids, gids, auto.SPLIT)
    assert fsck.main(['-q', home]) == 0
    with open(os.path.join(home, 'queue', 'todo', '4242'), 'wb') as f:
        f.write(ENVELOPE)
    assert fsck.main([home]) == 1
    assert 'todo-without-mess queue/todo/4242' in capsys.readouterr().out
    assert fsck.main(['-r', home]) == 1
    assert fsck.main([home]) == 0
    assert fsck.main([str(tmp_path / 'nothing')]) == 111
    assert fsck.main(['-x']) == 100             # usage, as qmail's programs
    assert fsck.main(['a', 'b']) == 100


@pytest.mark.parametrize('where', ['pid', 'mess/1', 'todo', 'lock'])
def test_a_directory_link_planted_in_the_queue_stops_fsck(q, tmp_path, where):
    """queue/ is qmailq's: a link it makes in place of one of the queue's
    directories would have root read, chown, move or delete, through it,
    files anywhere (pid/ -> /etc removed every file not read for 36
    hours).  Nothing is checked through it nor repaired: exit 111."""
    victims = tmp_path / 'victims'
    victims.mkdir()
    for name in ('28', 'passwd'):
        (victims / name).write_text('root only\n')
        os.chmod(victims / name, 0o600)
        os.utime(victims / name, (1000, 1000))
    path = os.path.join(q.qdir, where)
    shutil.rmtree(path)
    os.symlink(str(victims), path)
    code, said = q.fsck(repair=True)
    assert code == 111
    assert any('%s is not a directory of its own' % ('queue/' + where) in line
               for line in said), said
    assert sorted(os.listdir(victims)) == ['28', 'passwd']
    for name in ('28', 'passwd'):
        st = os.stat(victims / name)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)


def test_a_repair_follows_no_link_swapped_in_after_the_check(q, tmp_path, monkeypatch):
    """A queue file reported as qmailq's to chown, then replaced by a
    link before the repair: the link is not followed (it made a root
    file 0644 through lock/tcpto)."""
    victim = tmp_path / 'victim'
    victim.write_text('secret\n')
    os.chmod(victim, 0o600)
    tcpto = os.path.join(q.qdir, 'lock', 'tcpto')
    os.chown(tcpto, 4321, 4321)                     # an owner problem: chown+chmod
    real = fsck.Repairer.repair

    def swapped(self, problem, problems):
        if problem.path == 'queue/lock/tcpto' and os.path.isfile(tcpto):
            os.unlink(tcpto)
            os.symlink(str(victim), tcpto)
        return real(self, problem, problems)
    monkeypatch.setattr(fsck.Repairer, 'repair', swapped)
    code, said = q.fsck(repair=True)
    assert code == 1
    assert any(line.startswith('unable to repair queue/lock/tcpto') for line in said), said
    st = os.stat(victim)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)


def test_output_lines_cannot_be_forged_by_a_file_name(capfdbinary):
    fsck.say_line('stray queue/todo/x\x1b[2K\rqmail-fsck: fake\nline \udcff')
    out = capfdbinary.readouterr().out
    assert out.count(b'\n') == 1 and b'\x1b' not in out and b'\r' not in out, out
    assert out.startswith(b'qmail-fsck: stray queue/todo/x?[2K?qmail-fsck: fake?line ')


def test_a_queue_root_moved_elsewhere_is_repaired_through_its_link(tmp_path):
    """HOME/queue as root's link to another disk: its own owner and mode
    are repaired through it (a link refused everywhere else)."""
    q = Queue(tmp_path)
    elsewhere = tmp_path / 'disk2' / 'queue'
    os.makedirs(elsewhere.parent)
    shutil.move(q.qdir, str(elsewhere))
    os.symlink(str(elsewhere), q.qdir)
    os.chmod(elsewhere, 0o777)
    code, said = q.fsck(repair=True)
    assert stat.S_IMODE(os.stat(elsewhere).st_mode) == 0o750, said
    assert not any(line.startswith('unable to repair queue:') for line in said), said


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root')
def test_a_file_its_owner_cannot_read_is_found_and_repaired_with_its_group(q):
    """root:root mode 000: -r gave the owner back but left the mode, and
    qmail-send said 'trouble opening' forever; a second run saw nothing."""
    m = q.preprocessed()
    # (the fixture's ids are all ours, root's: qmailq, qmails, qmail made others)
    uids = dict(q.uids, qmails=q.uids['qmails'] + 4321, qmailq=q.uids['qmailq'] + 4322)
    gids = dict(q.gids, qmail=q.gids['qmail'] + 4321)
    for d in ('info', 'remote'):
        os.chown(q.path(d, m), uids['qmails'], gids['qmail'])
    os.chown(q.path('mess', m), uids['qmailq'], gids['qmail'])
    os.chmod(q.path('local', m), stat.S_ISVTX)  # (held: qmail-qhold's mark stays)
    os.chmod(q.path('mess', m), 0o600)      # qmail-rspawn, as qmailr, reads it
    problems = fsck.check_queue(q.qdir, SPLIT, time.time(), uids)
    assert sorted((p.kind, p.path, p.repair) for p in problems) == [
        ('file-mode', 'queue/' + qfn('local', m, SPLIT), 'chmod'),
        ('file-mode', 'queue/' + qfn('mess', m, SPLIT), 'chmod'),
        ('file-owner', 'queue/' + qfn('local', m, SPLIT), 'chown')], problems
    fixer = fsck.Repairer(q.home, install.HIER, SPLIT, uids, gids,
                          time.time(), lambda text: None)
    for p in problems:
        assert fixer.repair(p, problems)
    for d, user, mode in (('local', 'qmails', 0o1600), ('mess', 'qmailq', 0o644)):
        st = os.stat(q.path(d, m))
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == \
            (uids[user], gids['qmail'], mode), d
    assert fsck.check_queue(q.qdir, SPLIT, time.time(), uids) == []
