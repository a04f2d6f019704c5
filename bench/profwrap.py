"""Run an installed qmail program under cProfile, following its forks.

Usage:    RUNTIME -I bench/profwrap.py OUTDIR HOME module [arg ...]
Does:     what HOME/bin/<program> does (HOME/lib/python first on
          sys.path, then qmail.<module>.run()), with a cProfile profiler
          running in this process and started afresh in every forked
          child (os.register_at_fork).  Each process, when it ends
          (os._exit, which qmail's forked children use, or a normal exit),
          writes OUTDIR/<pid>.prof (pstats) and OUTDIR/<pid>.json: its
          lineage (the process titles of its ancestors at each fork, as
          setproctitle set them), its own title, and its own CPU time
          (RUSAGE_SELF, which starts at zero in a forked child).
Used by:  bench/profile_mta.py; nothing in make bench.
"""

import atexit
import cProfile
import json
import os
import resource
import sys
import time

OUT = sys.argv[1]
HOME = sys.argv[2]
MODULE = sys.argv[3]
sys.argv = [MODULE] + sys.argv[4:]

# PROFWRAP_TIMER=cpu: CPU time per function (time.process_time, a system
# call per event: slower, but blocking calls then cost what they cost
# the CPU); default wall time.
# PROFWRAP_TIMER=none: no profiler, only each process's CPU time.
TIMER = (time.process_time,) if os.environ.get('PROFWRAP_TIMER') == 'cpu' else ()
PROFILE = os.environ.get('PROFWRAP_TIMER') != 'none'
_real_exit = os._exit
state = {'prof': None, 'lineage': [], 'dumped': False, 't0': time.monotonic()}


def title() -> str:
    try:
        with open('/proc/self/cmdline', 'rb') as f:
            return f.read().replace(b'\0', b' ').decode('utf-8', 'replace').strip()[:80]
    except OSError:
        return '?'


def start():
    if state['prof'] is not None:
        state['prof'].disable()
    state['prof'] = cProfile.Profile(*TIMER)
    state['dumped'] = False
    state['t0'] = time.monotonic()
    if PROFILE:
        state['prof'].enable()


def after_fork():
    state['lineage'] = state['lineage'] + [title()]
    start()


def dump():
    if state['dumped'] or state['prof'] is None:
        return
    state['dumped'] = True
    state['prof'].disable()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    pid = os.getpid()
    try:
        if PROFILE:
            state['prof'].dump_stats(os.path.join(OUT, '%d.prof' % pid))
        with open(os.path.join(OUT, '%d.json' % pid), 'w') as f:
            json.dump({'pid': pid, 'lineage': state['lineage'], 'title': title(),
                       'utime': ru.ru_utime, 'stime': ru.ru_stime,
                       'oublock': ru.ru_oublock, 'minflt': ru.ru_minflt,
                       'nvcsw': ru.ru_nvcsw,
                       'wall': time.monotonic() - state['t0']}, f)
    except OSError:
        pass


def exit_(code):
    dump()
    _real_exit(code)


os._exit = exit_
atexit.register(dump)
os.register_at_fork(after_in_child=after_fork)
sys.path.insert(0, os.path.join(HOME, 'lib', 'python'))
start()
module = __import__('qmail.' + MODULE, fromlist=['run'])
module.run()
