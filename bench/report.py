"""The benchmark's tables: plain text (terminal, bench/results.txt) and
markdown (bench/results.md, for the README)."""


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def fmt(value, spec):
    if value is None:
        return 'n/a'
    if isinstance(value, str):
        return value
    if spec == 'ms':                  # a tenth of a ms where it matters
        return ('%.1f' if value < 100 else '%.0f') % value
    return spec % value


METRICS = (
    # title, [(column, key, scale, format)]
    ('Throughput, messages/s (smtp-source; ratio above 1: qmail-py faster)',
     [('msg/s', 'rate', 1, '%.0f')]),
    ('Latency per message, ms, from the final "." to the file in Maildir/new '
     '(ratio above 1: qmail-py slower)',
     [('p50', 'p50', 1000, 'ms'), ('p95', 'p95', 1000, 'ms')]),
    ('CPU seconds per 1,000 messages, all the MTA\'s processes '
     '(ratio above 1: qmail-py costlier)',
     [('CPU s', 'cpu', 1, '%.2f')]),
    ('The same CPU seconds by kind: user (the programs\' own code) and '
     'kernel (system calls: the disk, the network, processes)',
     [('user s', 'user', 1, '%.2f'), ('kernel s', 'kernel', 1, '%.2f')]),
)


def e2e_tables(results, names):
    """[(title, header, rows)] of the end-to-end comparison; names[0] is
    this project, names[1] Postfix (ratios are names[0] / names[1]).
    A case without any value for a metric is left out of its table."""
    a, b = names
    out = []
    for title, cols in METRICS:
        header = ['case']
        for col, _, _, _ in cols:
            header += ['%s %s' % (col, a), '%s %s' % (col, b), 'ratio']
        rows = []
        for label, (case, got) in results.items():
            ra, rb = got.get(a, {}), got.get(b, {})
            if not any(k in ra or k in rb for _, k, _, _ in cols):
                continue
            row = ['%s (%d msgs)' % (label, case.count)]
            for _, key, scale, spec in cols:
                va, vb = ra.get(key), rb.get(key)
                va = va * scale if va is not None else None
                vb = vb * scale if vb is not None else None
                row += [fmt(va, spec), fmt(vb, spec), fmt(ratio(va, vb), '%.2f')]
            rows.append(row)
        out.append((title, header, rows))
    return out


def text_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = []
    for n, r in enumerate([header] + rows):
        cells = [str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                 for i, c in enumerate(r)]
        lines.append('  '.join(cells).rstrip())
        if n == 0:
            lines.append('  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def md_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |',
             '| ' + ' | '.join(['---'] + ['---:'] * (len(header) - 1)) + ' |']
    for r in rows:
        lines.append('| ' + ' | '.join(str(c) for c in r) + ' |')
    return '\n'.join(lines)


def pair_rows(rows):
    """(what, result) rows as a two-column table."""
    return ['what', 'result'], [[a, b] for a, b in rows]
