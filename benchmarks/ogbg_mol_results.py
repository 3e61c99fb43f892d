r"""The README's ogbg-molfreesolv results: HSA vs GIN vs GIN-virtual vs a
flat transformer, trained by ``examples/ogbg_mol.py`` for the same number
of epochs at (about) the same number of parameters, over several seeds.

    python benchmarks/ogbg_mol_results.py            # 5 seeds, ~30 min CPU

Every run is a separate ``examples/ogbg_mol.py`` process with one torch
thread, one after the other, so the seconds per epoch compare. Each
model's width is the multiple of the head count whose parameter count is
closest to the budget (the HSA model at ``--emb_dim``). Seconds per epoch
come from short timing runs made one after the other at the end. Results are
kept in ``<out>/runs/*.json``; a run whose file exists with the same
arguments is not repeated, so an interrupted sweep resumes. Writes
``<out>/results.md`` and ``<out>/curves.png``.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
from typing import Dict, List, Tuple

import numpy as np

from sweep import example_parameters, invocation, machine, write_table

HERE = osp.dirname(osp.abspath(__file__))
SCRIPT = osp.join(osp.dirname(HERE), 'examples', 'ogbg_mol.py')
MODELS = ('hsa', 'gin', 'gin-virtual', 'transformer')  # its --model choices

# Table rows: the four models, and HSA ablations (other fragmentations,
# no positions) run with --models.
ROWS = {model: (model, []) for model in MODELS}
ROWS.update({
    'hsa, no pe': ('hsa', ['--no_pe']),
    'hsa, rings': ('hsa', ['--hierarchy', 'rings']),
    'hsa, atoms': ('hsa', ['--hierarchy', 'atoms']),
})


def model_arguments(row: str, emb_dim: int, args) -> List[str]:
    model, extra = ROWS[row]
    return ['--model', model, *extra, '--emb_dim', str(emb_dim),
            '--num_layers', str(args.num_layers), '--heads', str(args.heads)]


def widths(args) -> Tuple[int, Dict[str, int]]:
    """The parameter budget (HSA at ``--emb_dim``) and every row's width:
    the multiple of ``--heads`` whose parameter count is closest to it, as
    the example computes it."""
    budget = example_parameters(SCRIPT, model_arguments(
        'hsa', args.emb_dim, args))['num_params']
    return budget, {
        row: example_parameters(SCRIPT, model_arguments(
            row, args.emb_dim, args) + ['--match_parameters', str(budget)]
        )['emb_dim'] for row in args.models}


def run(row: str, seed: int, emb_dim: int, args, epochs: int = 0,
        name: str = '') -> Dict:
    """One training run of the example (cached by its file name)."""
    os.makedirs(osp.join(args.out, 'runs'), exist_ok=True)
    label = row.replace(', ', '_').replace(' ', '-')
    filename = osp.join(args.out, 'runs', f'{name}{label}_seed{seed}.json')
    epochs = epochs or args.epochs
    command = [sys.executable, SCRIPT, *model_arguments(row, emb_dim, args),
               '--seed', str(seed), '--epochs', str(epochs),
               '--root', args.root,
               '--max_graphs', str(args.max_graphs),
               '--filename', filename]
    if osp.exists(filename):
        with open(filename) as f:
            result = json.load(f)
        if result['args']['epochs'] == epochs and \
                result['args']['emb_dim'] == emb_dim and \
                result['args']['num_layers'] == args.num_layers:
            return result
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), PYTHONWARNINGS='ignore')
    print(' '.join(command[1:]), flush=True)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    with open(filename) as f:
        return json.load(f)


def epoch_seconds(args, widths) -> Dict[str, float]:
    """Seconds per training epoch of every row, from short runs made one
    after the other right here (the median epoch, so the first epoch's
    warm-up does not count), so that the rows compare even when the sweep
    itself shared the machine with other work."""
    seconds = {}
    for row in widths:
        path = osp.join(args.out, 'runs',
                        'timing_' + row.replace(', ', '_').replace(' ', '-')
                        + '_seed0.json')
        if osp.exists(path):
            os.remove(path)  # always measure afresh
        result = run(row, 0, widths[row], args, epochs=args.timing_epochs,
                     name='timing_')
        seconds[row] = float(np.median(result['curves']['seconds']))
    return seconds


def summary_table(results: Dict[str, List[Dict]], widths,
                  seconds: Dict[str, float]) -> str:
    reference = seconds.get('gin')
    lines = ['| model | width | parameters | test RMSE | valid RMSE | '
             'best epoch | s / epoch |' + (' × gin |' if reference else ''),
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: |' +
             (' ---: |' if reference else '')]
    for model, runs in results.items():
        test = np.array([r['test'] for r in runs])
        valid = np.array([r['valid'] for r in runs])
        epochs = np.array([r['best_epoch'] for r in runs])
        std = (lambda a: a.std(ddof=1) if len(a) > 1 else 0.0)
        line = (f"| {model} | {widths[model]} | {runs[0]['num_params']:,} | "
                f"{test.mean():.3f} ± {std(test):.3f} | "
                f"{valid.mean():.3f} ± {std(valid):.3f} | "
                f"{epochs.mean():.0f} | {seconds[model]:.2f} |")
        if reference:
            line += f' {seconds[model] / reference:.1f} |'
        lines.append(line)
    return '\n'.join(lines)


def plot(results: Dict[str, List[Dict]], path: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for model, runs in results.items():
        curves = np.array([r['curves']['valid'] for r in runs])
        epochs = np.arange(1, curves.shape[1] + 1)
        mean, std = curves.mean(0), curves.std(0)
        ax.plot(epochs, mean, label=model)
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.12)
    ax.set_xlabel('epoch')
    ax.set_ylabel('validation RMSE (kcal/mol)')
    ax.set_title(f'ogbg-molfreesolv (local rebuild), {len(runs)} seeds, '
                 f'mean ± std')
    ax.legend(ncol=3, fontsize='small', loc='upper center')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', type=int, default=5)
    parser.add_argument('--epochs', type=int, default=50)
    parser.add_argument('--num_layers', type=int, default=3)
    parser.add_argument('--emb_dim', type=int, default=64,
                        help="the HSA model's width; sets the budget")
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--models', nargs='+', choices=list(ROWS),
                        default=list(MODELS), metavar='ROW',
                        help=f'table rows, of {list(ROWS)} (default: the '
                             f'four models)')
    parser.add_argument('--max_graphs', type=int, default=0)
    parser.add_argument('--root', default=osp.join(osp.dirname(HERE),
                                                   'datasets'))
    parser.add_argument('--out', default=osp.join(HERE, 'ogbg_mol'))
    parser.add_argument('--timing_epochs', type=int, default=5,
                        help='epochs of the timing runs (seed 0)')
    parser.add_argument('--smoke', action='store_true',
                        help='1 seed, 1 epoch, 24 graphs per split (CI)')
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs, args.max_graphs = 1, 1, 24
        args.emb_dim, args.num_layers = 16, 2
        args.timing_epochs = 1

    budget, row_widths = widths(args)
    results = {m: [run(m, seed, row_widths[m], args)
                   for seed in range(args.seeds)] for m in args.models}

    seconds = epoch_seconds(args, row_widths)
    command = invocation('ogbg_mol_results.py', argv)
    table = summary_table(results, row_widths, seconds)
    text = '\n'.join([
        '# ogbg-molfreesolv (local rebuild): HSA vs GIN vs GIN-virtual vs '
        'transformer', '',
        f'`{command}` — {args.seeds} seeds (0..{args.seeds - 1}), '
        f'{args.epochs} epochs, {args.num_layers} layers, batch 32, Adam '
        f'1e-3, dropout 0.5, parameter budget {budget:,} (HSA at width '
        f'{args.emb_dim}); test RMSE (kcal/mol) at the epoch of best '
        f'validation RMSE, mean ± std over seeds; seconds per training '
        f'epoch: the median epoch of a {args.timing_epochs}-epoch run of '
        f'each model (seed 0), one after the other, with {args.threads} '
        f'torch thread(s) on {machine()}.', '', table, ''])
    write_table(args.out, text)
    plot(results, osp.join(args.out, 'curves.png'))
    return results


if __name__ == '__main__':
    main()
