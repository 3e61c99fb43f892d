r"""The ListOps table of docs/training.md: HSA on the parse tree, HSA on
fixed windows, a flat transformer (exact softmax attention) and GIN on the
parse tree, trained by ``examples/listops.py`` on the same data, for the
same number of epochs, at (about) one parameter budget.

    python benchmarks/listops_results.py            # ~1 hour on 2 cores

Every row is an ``examples/listops.py`` process with one torch thread;
``--parallel`` of them run at once (one per core, so their seconds per
epoch compare). GIN's width is the one whose parameter count is closest to
the HSA models'. Results are kept in ``<out>/runs/*.json``; a row whose
file exists with the same arguments is not repeated, so an interrupted
sweep resumes. Writes ``<out>/results.md`` and ``<out>/accuracy_vs_time.png``.
"""
import argparse
import os.path as osp
import sys
import tempfile
from typing import Dict, List, Optional

import numpy as np

HERE = osp.dirname(osp.abspath(__file__))
EXAMPLES = osp.join(osp.dirname(HERE), 'examples')
sys.path.insert(0, EXAMPLES)

import listops  # noqa: E402
from sweep import (  # noqa: E402
    invocation,
    machine,
    result_path,
    run_rows,
    write_table,
)
from training import closest_width, count_parameters  # noqa: E402

# Long Range Arena's published ListOps test accuracies (%), none of which
# uses the parse tree (Tay et al., 2021; S4: Gu et al., 2022; Mega: Ma et
# al., 2023; H-Transformer-1D: Zhu and Soricut, 2021).
LRA = [('Transformer', 36.37), ('Reformer', 37.27), ('BigBird', 36.05),
       ('Performer', 18.01), ('H-Transformer-1D', 49.53), ('S4', 59.60),
       ('Mega', 63.14)]
# Longest first, so that the slow flat transformer overlaps the others.
ROWS = ('transformer', 'hsa-tree', 'hsa-windows', 'gin')


def gin_width(budget: int, args) -> int:
    """GIN's width whose parameter count is closest to the budget."""
    def count(width):
        return count_parameters(listops.GINNet(width, args.gin_layers, 0.0))
    return closest_width(count, budget, 8 * args.emb_dim)


def command(row: str, width: int, args) -> List[str]:
    out = [sys.executable, osp.join(EXAMPLES, 'listops.py'),
           '--model', row, '--emb_dim', str(width),
           '--num_layers', str(args.num_layers),
           '--gin_layers', str(args.gin_layers), '--heads', str(args.heads),
           '--epochs', str(args.epochs), '--batch_size', str(args.batch_size),
           '--train_examples', str(args.train_examples),
           '--eval_examples', str(args.eval_examples),
           '--seed', str(args.seed), '--filename',
           result_path(args.out, row)]
    if args.smoke:
        out.append('--smoke')
    if args.root:
        out += ['--root', args.root]
    return out


def table(results: Dict[str, Dict], widths: Dict[str, int]) -> str:
    lines = ['| model | given the parse tree | width | parameters | test '
             'accuracy (%) | valid accuracy (%) | best epoch | s / epoch | '
             'peak memory (MB) | row wall-clock (min) |',
             '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: '
             '| ---: |']
    for row, r in results.items():
        lines.append(
            f"| {row} | {'**yes**' if r['given_parse_tree'] else 'no'} | "
            f"{widths[row]} | {r['num_params']:,} | {100 * r['test']:.2f} | "
            f"{100 * r['valid']:.2f} | {r['best_epoch']} | "
            f"{r['seconds_per_epoch']:.0f} | {r['peak_memory_mb']:.0f} | "
            f"{_minutes(r.get('wall_seconds'))} |")
    lines += ['', '| published (LRA, full data, no parse tree) | test '
              'accuracy (%) |', '| --- | ---: |']
    lines += [f'| {name} | {acc:.2f} |' for name, acc in LRA]
    return '\n'.join(lines)


def _minutes(seconds: Optional[float]) -> str:
    # (A row run outside this script has no wall-clock of its own.)
    return 'n/a' if seconds is None else f'{seconds / 60:.1f}'


def plot(results: Dict[str, Dict], path: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for row, r in results.items():
        seconds = np.cumsum(r['curves']['seconds']) / 60
        valid = 100 * np.array(r['curves']['valid'])
        style = '-' if r['given_parse_tree'] else '--'
        label = row + (' (parse tree)' if r['given_parse_tree'] else '')
        line, = ax.plot(seconds, valid, style, marker='o', label=label)
        best = r['best_epoch'] - 1
        ax.plot(seconds[best], 100 * r['test'], '*', ms=12,
                color=line.get_color())
    for name, acc in LRA:
        if name in ('Transformer', 'S4', 'Mega'):
            ax.axhline(acc, color='grey', lw=0.8, ls=':')
            ax.text(0, acc + 0.5, f'LRA {name}', fontsize='x-small',
                    color='grey')
    ax.set_xlabel('training time (min, one core)')
    ax.set_ylabel('validation accuracy (%)  ★ test at best epoch')
    ax.set_title('ListOps: accuracy against training time')
    ax.legend(fontsize='small')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--train_examples', type=int, default=4000)
    parser.add_argument('--eval_examples', type=int, default=500)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--emb_dim', type=int, default=64,
                        help="the HSA models' width; sets the budget")
    parser.add_argument('--num_layers', type=int, default=4)
    parser.add_argument('--gin_layers', type=int, default=12)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--parallel', type=int, default=2)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--root', default='')
    parser.add_argument('--out', default='',
                        help=f"(default: {osp.join(HERE, 'listops')}; with "
                             f"--smoke, a temporary folder)")
    parser.add_argument('--smoke', action='store_true',
                        help="the example's --smoke data, 1 epoch (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_examples, args.eval_examples, args.epochs = 16, 8, 1
        args.emb_dim, args.num_layers, args.gin_layers = 8, 1, 2
        args.heads = 2
    if not args.out:
        args.out = tempfile.mkdtemp(prefix='listops_smoke_') if args.smoke \
            else osp.join(HERE, 'listops')

    budget = count_parameters(listops.HSANet(args.emb_dim, args.num_layers,
                                             args.heads, 0.0))
    widths = {row: gin_width(budget, args) if row == 'gin' else args.emb_dim
              for row in ROWS}
    results = run_rows({row: command(row, width, args)
                        for row, width in widths.items()}, args.out,
                       listops.parse_args, args.threads, args.parallel)
    given = invocation('listops_results.py', argv)
    text = '\n'.join([
        '# ListOps: HSA on the parse tree and on windows, a flat '
        'transformer, GIN', '',
        f'`{given}`: the first {args.train_examples:,} training '
        f'expressions, {args.epochs} epochs, validation on the first '
        f'{args.eval_examples:,} validation expressions, test accuracy on '
        f'the whole test split at the epoch of best validation accuracy; '
        f'batch {args.batch_size}, Adam 1e-3, seed {args.seed}; HSA models '
        f'{args.num_layers} layers of width {args.emb_dim}, {args.heads} '
        f'heads; GIN {args.gin_layers} layers; every row one process with '
        f'{args.threads} torch thread(s), {args.parallel} at a time, on '
        f'{machine()}.', '', table(results, widths), ''])
    write_table(args.out, text)
    plot(results, osp.join(args.out, 'accuracy_vs_time.png'))
    return results


if __name__ == '__main__':
    main()
