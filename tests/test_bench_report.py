"""bench/report.py: the end-to-end tables, the CPU split by kind among
them (the figures the README's speed section quotes)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'bench'))

import report    # noqa: E402


class Case:
    def __init__(self, count):
        self.count = count


def test_cpu_by_kind_table():
    results = {
        '2 KB, 10 sessions, 1 msg/conn': (Case(2000), {
            'qmail-py': {'rate': 600.0, 'cpu': 2.5, 'user': 1.2, 'kernel': 1.3},
            'Postfix': {'rate': 800.0, 'cpu': 2.0, 'user': 0.6, 'kernel': 1.4}}),
        '2 KB, open loop, 50 msg/s offered, 1 msg/conn': (Case(1000), {
            'qmail-py': {'p50': 0.002, 'p95': 0.003},
            'Postfix': {'p50': 0.0025, 'p95': 0.003}}),
    }
    tables = report.e2e_tables(results, ('qmail-py', 'Postfix'))
    titles = [t for t, _, _ in tables]
    assert len(titles) == 4 and 'by kind' in titles[3]
    _, header, rows = tables[3]
    assert header == ['case', 'user s qmail-py', 'user s Postfix', 'ratio',
                      'kernel s qmail-py', 'kernel s Postfix', 'ratio']
    assert rows == [['2 KB, 10 sessions, 1 msg/conn (2000 msgs)',
                     '1.20', '0.60', '2.00', '1.30', '1.40', '0.93']]


def test_throughput_figures_are_the_median_of_the_rounds():
    import e2e
    runs = [{'rate': 500.0, 'cpu': 2.9}, {'rate': 700.0, 'cpu': 2.1}, {'rate': 610.0, 'cpu': 2.5}]
    assert e2e.medians(runs) == {'rate': 610.0, 'cpu': 2.5}
    assert e2e.medians(runs[:2]) == {'rate': 600.0, 'cpu': 2.5}
    assert e2e.medians(runs[:1]) == runs[0]
