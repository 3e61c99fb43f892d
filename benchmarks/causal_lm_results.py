r"""The language-model table of docs/causal.md: a byte-level transformer on
the Python standard library's source with causal softmax, sliding-window
softmax and causal query-resolved HSA (fixed windows; indentation), at one
parameter budget and one training-time budget, trained by
``examples/causal_lm.py``.

    python benchmarks/causal_lm_results.py        # ~75 minutes on 2 cores
    python benchmarks/causal_lm_results.py --smoke    # seconds (CI)

Every row is an ``examples/causal_lm.py`` process with one torch thread;
``--parallel`` of them run at once (one per core, so their training times
and decoding times compare). Results are kept in ``<out>/runs/*.json``; a
row whose file exists with the same arguments is not repeated. Writes
``<out>/results.md`` and ``<out>/causal_lm.png``.
"""
import argparse
import os.path as osp
import platform
import sys
import tempfile
from typing import Dict, List

import numpy as np

from sweep import invocation, machine, result_path, run_rows, write_table

HERE = osp.dirname(osp.abspath(__file__))
SCRIPT = osp.join(osp.dirname(HERE), 'examples', 'causal_lm.py')

# Row: (model, extra arguments). Slowest first within a round, so that
# the rows of one round take about the same time.
ROWS = {
    'softmax': ('softmax', []),
    'hsa-indent': ('hsa-indent', []),
    'hsa-windows': ('hsa-windows', []),
    'sliding': ('sliding', []),
    'hsa-windows-128': ('hsa-windows', ['--windows', '128', '8']),
    'softmax-seed1': ('softmax', ['--seed', '1']),
}
LABELS = {'softmax': 'causal softmax (full context)',
          'sliding': 'sliding-window softmax (128 bytes)',
          'hsa-windows': 'causal HSA, windows 16-8-8',
          'hsa-windows-128': 'causal HSA, windows 128-8',
          'hsa-indent': 'causal HSA, files/indentation/lines',
          'softmax-seed1': 'causal softmax (full context), seed 1'}


def command(row: str, args) -> List[str]:
    model, extra = ROWS[row]
    out = [sys.executable, SCRIPT,
           '--model', model, '--seed', str(args.seed), '--threads',
           str(args.threads), '--filename', result_path(args.out, row),
           *extra]
    if args.smoke:
        out.append('--smoke')
    else:
        out += ['--minutes', str(args.minutes)]
    return out


def table(results: Dict[str, Dict]) -> str:
    softmax = results['softmax']
    contexts = sorted(softmax['decoding']['ms_per_byte'], key=int)
    lines = ['| model | parameters | training (min) | steps | bytes seen '
             '(M) | valid bits/byte | test bits/byte | valid vs softmax | '
             'test vs softmax | decoding = forward (max abs logit diff) |',
             '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | '
             '---: |']
    for row, r in results.items():
        lines.append(
            f"| {LABELS[row]} | {r['num_params']:,} | "
            f"{r['train_seconds'] / 60:.1f} | {r['train_steps']:,} "
            f"| {r['train_bytes'] / 1e6:.1f} | {r['valid']:.4f} | "
            f"{r['test']:.4f} | {_relative(r, softmax, 'valid')} | "
            f"{_relative(r, softmax, 'test')} | "
            f"{r['decode_max_abs_diff']:.1e} |")
    lines += ['', '**Decoding** one byte through the whole model (ms, '
              'median of the steps), by context in bytes; `/ full` is the '
              'ratio to causal softmax with a full KV cache', '',
              '| model | ' + ' | '.join(contexts) + ' | ' +
              ' | '.join(f'/ full at {c}' for c in contexts) + ' |',
              '| --- |' + ' ---: |' * 2 * len(contexts)]
    full = results['softmax']['decoding']['ms_per_byte']
    for row, r in results.items():
        ms = r['decoding']['ms_per_byte']
        lines.append(f'| {LABELS[row]} | ' + ' | '.join(
            f'{ms[c]:.3f}' for c in contexts) + ' | ' + ' | '.join(
            f'{ms[c] / full[c]:.2f}' for c in contexts) + ' |')
    return '\n'.join(lines)


def _relative(result: Dict, reference: Dict, key: str) -> str:
    return f'{100 * (result[key] / reference[key] - 1):+.1f}%'


def plot(results: Dict[str, Dict], path: str):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    for row, r in results.items():
        minutes = np.cumsum(r['curves']['seconds']) / 60
        line, = left.plot(minutes, r['curves']['valid'], marker='o',
                          label=LABELS[row])
        ms = r['decoding']['ms_per_byte']
        contexts = sorted(ms, key=int)
        right.plot([int(c) for c in contexts], [ms[c] for c in contexts],
                   marker='o', color=line.get_color(), label=LABELS[row])
    left.set_xlabel('training time (min, one core)')
    left.set_ylabel('validation bits per byte')
    left.set_title('Learning curves (equal parameters and time)')
    right.set_xscale('log', base=2)
    right.set_yscale('log')
    right.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    right.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set_yticks([1, 2, 5, 10, 20, 50])
    right.set_xlabel('context (bytes)')
    right.set_ylabel('ms to decode one byte')
    right.set_title('Decoding cost against context')
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--minutes', type=float, default=20.0,
                        help='training time of every row')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--parallel', type=int, default=2)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', default='',
                        help=f"(default: {osp.join(HERE, 'causal_lm')}; "
                             f"with --smoke, a temporary folder)")
    parser.add_argument('--smoke', action='store_true',
                        help="the example's --smoke sizes (CI)")
    args = parser.parse_args(argv)
    if not args.out:
        args.out = tempfile.mkdtemp(prefix='causal_lm_smoke_') \
            if args.smoke else osp.join(HERE, 'causal_lm')

    results = run_rows({row: command(row, args) for row in ROWS}, args.out,
                       args.threads, args.parallel)
    given = invocation('causal_lm_results.py', argv)
    first = results['softmax']['args']
    text = '\n'.join([
        '# Byte-level language model: causal softmax, sliding window, '
        'causal HSA', '',
        f'`{given}`: every row the same model ({first["num_layers"]} '
        f'layers of width {first["emb_dim"]}, {first["heads"]} heads, '
        f'contexts of {first["context"]} bytes, batch '
        f'{first["batch_size"]}, AdamW {first["lr"]}) trained for '
        f'{first["minutes"]:g} minutes on the standard library of Python '
        f'{platform.python_version()} (files split by a hash of their '
        f'path); bits per byte on the first {first["eval_kb"]} KB of the '
        f'validation and test files, test at the best validation epoch; '
        f'sliding window {first["window"]} bytes; one process per row with '
        f'{args.threads} torch thread(s), {args.parallel} at a time, on '
        f'{machine()}.', '', table(results), ''])
    write_table(args.out, text)
    plot(results, osp.join(args.out, 'causal_lm.png'))
    return results


if __name__ == '__main__':
    main()
