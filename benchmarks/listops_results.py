r"""The ListOps table of docs/training.md: every model of
``examples/listops.py`` trained on Nangia and Bowman's expressions of at
most 100 tokens, at (about) one parameter budget and one training-time
budget, and tested on the same distribution, on the length-generalisation
windows (200-300, 500-600, 900-1,000 tokens) and on LRA's test split.

    python benchmarks/listops_results.py                # ~5 h on 2 cores
    python benchmarks/listops_results.py --rows hsa-tree tree-gru
    python benchmarks/listops_results.py --smoke        # seconds (CI)

Every row is an ``examples/listops.py`` process with one torch thread and
``--minutes`` of training (split into ``--epochs`` slices, each followed
by validation); ``--parallel`` of them run at once (one per core, so their
times compare). The widths are those whose parameter count is closest to
that of ``hsa-tree`` at ``--emb_dim``. Results are kept in
``<out>/runs/*.json``, and a row's checkpoint next to it: a row whose
result exists with the same arguments is not run again, and an
interrupted row resumes from its last epoch, so the table can be made
across sittings. Writes ``<out>/results.md`` and
``<out>/accuracy_vs_length.png``.
"""
import argparse
import os.path as osp
import sys
import tempfile
from typing import Dict, List, Optional

from sweep import (
    arguments,
    example_parameters,
    invocation,
    launched,
    machine,
    result_path,
    run_rows,
    write_table,
)

HERE = osp.dirname(osp.abspath(__file__))
SCRIPT = osp.join(osp.dirname(HERE), 'examples', 'listops.py')

# Row: (model, extra arguments, what the row shows). The first rows take
# longest to evaluate (flat attention over 2,000 tokens), so they start
# first.
ROWS = {
    'transformer': ('transformer', [], 'flat transformer'),
    'hsa-windows': ('hsa-windows', [], 'HSA on windows 2-4-8-16'),
    'hsa-tree': ('hsa-tree', [], 'HSA on the parse tree'),
    'gin': ('gin', [], 'GIN on the parse tree'),
    'tree-gru': ('tree-gru', [], 'Tree-GRU on the parse tree'),
    'hsa-tree-query': ('hsa-tree', ['--resolution', 'query'],
                       'HSA on the parse tree, query resolution'),
    'hsa-tree-unscheduled': ('hsa-tree', ['--no_schedule'],
                             'HSA on the parse tree, no schedule'),
    'hsa-tree-no-size-key': ('hsa-tree', ['--no_size_key'],
                             'HSA on the parse tree, no log-size key'),
}
TEST_COLUMNS = (('test', 'same distribution (≤ 100)'),
                ('test_200_300', '200-300'), ('test_500_600', '500-600'),
                ('test_900_1000', '900-1,000'),
                ('lra_test', 'LRA test (500-2,000, ≤ 10 args)'))
# Published results (test accuracy, %) for the same settings.
PUBLISHED = [
    ('Tree-LSTM, gold tree (Nangia and Bowman, 2018)', '98.7', '', '', '',
     ''),
    ('LSTM (Nangia and Bowman, 2018)', '71.5', '', '', '', ''),
    ('Ordered Memory (Shen et al., 2019)', '99.9', '', '', '', '80.1'),
    ('Beam Tree Cell (Ray Chowdhury and Caragea, 2023)', '99.9', '99.5',
     '99.0', '98.0', ''),
]


def model_arguments(row: str, width: int, args) -> List[str]:
    model, extra, _ = ROWS[row]
    return ['--model', model, '--emb_dim', str(width), '--heads',
            str(args.heads), '--per_level', str(args.per_level), *extra]


def widths(args) -> Dict[str, int]:
    """Every row's width: the one whose parameter count is closest to
    ``hsa-tree``'s at ``--emb_dim`` (a multiple of ``--heads`` for the
    attention models), as the example computes it."""
    budget = example_parameters(SCRIPT, model_arguments(
        'hsa-tree', args.emb_dim, args))['num_params']
    return {row: example_parameters(SCRIPT, model_arguments(
                row, args.emb_dim, args) + ['--match_parameters',
                                            str(budget)])['emb_dim']
            for row in args.rows}


def command(row: str, width: int, args) -> List[str]:
    filename = result_path(args.out, row)
    out = [sys.executable, SCRIPT,
           *model_arguments(row, width, args),
           '--epochs', str(args.epochs), '--batch_size', str(args.batch_size),
           '--lr', str(args.lr), '--seed', str(args.seed),
           '--train_examples', str(args.train_examples),
           '--filename', filename]
    if args.smoke:
        out.append('--smoke')
    if args.minutes:
        out += ['--minutes', str(args.minutes)]
    if args.root:
        out += ['--root', args.root]
    return out


def resumable(commands: Dict[str, List[str]],
              out: str) -> Dict[str, List[str]]:
    """``--resume`` for the rows whose checkpoint was made by a process
    launched with the same arguments (an interrupted row goes on from its
    last epoch; a row whose arguments changed starts over, overwriting its
    checkpoint)."""
    resumed = {}
    for row, cmd in commands.items():
        checkpoint = cmd[cmd.index('--filename') + 1] + '.ckpt'
        same = osp.exists(checkpoint) and \
            launched(out, row) == arguments(cmd)
        resumed[row] = cmd + (['--resume'] if same else [])
    return resumed


def percent(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{100 * value:.1f}'


def table(results: Dict[str, Dict], row_widths: Dict[str, int]) -> str:
    header = ' | '.join(name for _, name in TEST_COLUMNS)
    lines = [f'| model | given the parse tree | width | parameters | s / '
             f'epoch | training (min) | row wall-clock (min) | {header} |',
             '| --- | --- | ---: | ---: | ---: | ---: | ---: |' +
             ' ---: |' * len(TEST_COLUMNS)]
    for row, r in results.items():
        tests = ' | '.join(percent(r['tests'].get(key))
                           for key, _ in TEST_COLUMNS)
        wall = r.get('wall_seconds')
        given = '**yes**' if r['given_parse_tree'] else 'no'
        lines.append(
            f"| {ROWS[row][2]} | {given} | {row_widths[row]} | "
            f"{r['num_params']:,} | "
            f"{r['seconds_per_epoch']:.0f} | {r['train_seconds'] / 60:.1f} | "
            f"{'n/a' if wall is None else f'{wall / 60:.1f}'} | {tests} |")
    lines += ['', f'| published | {header} |',
              '| --- |' + ' ---: |' * len(TEST_COLUMNS)]
    lines += [f"| {' | '.join(entry)} |" for entry in PUBLISHED]
    return '\n'.join(lines)


def plot(results: Dict[str, Dict], path: str):
    """Accuracy against expression length: the bins of every test set of
    Nangia and Bowman's distribution joined by a line, LRA's test split
    (up to 10 arguments) as separate markers."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for row, r in results.items():
        points = {}
        for name, bins in r['accuracy_by_length'].items():
            for key, (correct, count) in bins.items():
                lo, hi = map(int, key.split('-'))
                mark = 'lra' if name == 'lra_test' else 'nb'
                c, n = points.get((mark, lo, hi), (0, 0))
                points[(mark, lo, hi)] = (c + correct, n + count)
        style = '-' if r['given_parse_tree'] else '--'
        line = None
        for mark in ('nb', 'lra'):
            keys = sorted(k for k in points if k[0] == mark)
            x = [(lo + hi) / 2 for _, lo, hi in keys]
            y = [100 * points[k][0] / points[k][1] for k in keys]
            if not x:
                continue
            if mark == 'nb':
                line, = ax.plot(x, y, style, marker='o', label=ROWS[row][2])
            else:
                ax.plot(x, y, 's', mfc='none', ms=8,
                        color=line.get_color() if line else None)
    ax.set_xscale('log')
    ax.set_xlabel('expression length (tokens; trained on ≤ 100)')
    ax.set_ylabel('test accuracy (%)')
    ax.set_title('ListOps: accuracy against length (□: LRA test, ≤ 10 '
                 'arguments)')
    ax.axvline(100, color='grey', lw=0.8, ls=':')
    ax.legend(fontsize='small')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rows', nargs='+', choices=tuple(ROWS),
                        default=list(ROWS))
    parser.add_argument('--minutes', type=float, default=60.0,
                        help='training time of every row')
    parser.add_argument('--epochs', type=int, default=10,
                        help='slices of the training time, each followed '
                             'by validation')
    parser.add_argument('--train_examples', type=int, default=0)
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--emb_dim', type=int, default=64,
                        help="hsa-tree's width; sets the parameter budget")
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--per_level', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--parallel', type=int, default=2)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--root', default='')
    parser.add_argument('--out', default='',
                        help=f"(default: {osp.join(HERE, 'listops')}; with "
                             f"--smoke, a temporary folder)")
    parser.add_argument('--smoke', action='store_true',
                        help="the example's --smoke data, a few seconds per "
                             "row (CI)")
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.error('--minutes must be positive')
    if args.smoke:
        args.minutes, args.epochs, args.emb_dim, args.heads = 0.01, 1, 8, 2
    scratch = None
    if not args.out:
        if args.smoke:
            scratch = tempfile.TemporaryDirectory(prefix='listops_smoke_')
            args.out = scratch.name
        else:
            args.out = osp.join(HERE, 'listops')
    try:
        return sweep(args, argv)
    finally:
        if scratch is not None:
            scratch.cleanup()


def sweep(args, argv) -> Dict[str, Dict]:
    row_widths = widths(args)
    commands = {row: command(row, row_widths[row], args)
                for row in args.rows}
    results = run_rows(resumable(commands, args.out), args.out,
                       args.threads, args.parallel)
    given = invocation('listops_results.py', argv)
    text = '\n'.join([
        '# ListOps: HSA on the parse tree against a flat transformer, HSA '
        'on windows, GIN and a Tree-GRU', '',
        f'`{given}`: trained on Nangia and Bowman\'s ListOps (2-5 '
        f'arguments, at most 100 tokens; '
        f"{'all 90,000' if not args.train_examples else args.train_examples}"
        f' training expressions) for {args.minutes:g} minutes each, in '
        f'{args.epochs} slices with validation on 1,000 expressions after '
        f'each; every test set scored once with the weights of the best '
        f'validation slice. Batch {args.batch_size}, Adam {args.lr:g}, '
        f'seed {args.seed}; widths matched to the parameter count of '
        f'hsa-tree at width {args.emb_dim} ({args.heads} heads); the '
        f'iterated models run {args.per_level} iterations per level of '
        f'nesting; every row one process with {args.threads} torch '
        f'thread(s), {args.parallel} at a time, on {machine()}. Test '
        f'accuracy (%):', '', table(results, row_widths), '',
        '![accuracy against length](accuracy_vs_length.png)', ''])
    write_table(args.out, text)
    plot(results, osp.join(args.out, 'accuracy_vs_length.png'))
    return results


if __name__ == '__main__':
    main()
