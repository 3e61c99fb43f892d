"""HSA against dense attention: time and peak memory against the number of
leaves, all measured in one run (compare ratios, not absolute times).

    python benchmarks/bench_hsa.py             # full sweep (~50 minutes)
    python benchmarks/bench_hsa.py --smoke     # ~2 minutes; what CI runs

Every measurement runs in a fresh subprocess so that its peak resident
memory is its own. Methods:

* ``hsa``        -- ``hsa_attention`` on a balanced tree of the given branching
  (the ``Tree`` is compiled once, outside the timing; its build time is a
  separate column)
* ``hsa_conv``   -- ``HSAConv`` (projections, LayerNorm, HSA, skip) on it
* ``hsa_flat``   -- ``hsa_attention`` on a one-level tree (= softmax)
* ``hsa_points`` -- ``hsa_attention`` on the hierarchy
  ``PointCloudToHierarchy()`` makes of points on a sphere (irregular
  families: the gather paths)
* ``hsa_sequence`` -- ``hsa_attention`` on ``SequenceToHierarchy()``'s
  token windows of 2, 8, 64 and 1024 tokens
* ``sdpa``       -- ``torch.nn.functional.scaled_dot_product_attention``
* ``transformer_conv`` -- PyG's ``TransformerConv`` on the complete graph

Writes a markdown table to stdout (and ``--out``), and a log-log plot of
time and memory against leaves to ``--plot``. Peak memory is the peak
resident set of the measuring process minus its size after imports.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

HEADS, CHANNELS = 4, 32


def balanced_parent(branching: int, num_leaves: int):
    """Parent vector of a complete tree: consecutive runs of ``branching``
    nodes share a parent, level by level up to one root (leaves first)."""
    import torch
    parents, level_start, width = [], 0, num_leaves
    while width > 1:
        above = level_start + width
        parents.append(above + torch.arange(width) // branching)
        level_start, width = above, -(-width // branching)
    parents.append(torch.tensor([-1]))
    return torch.cat(parents)


REAL = ('hsa_points', 'hsa_sequence')


def real_hierarchy(method: str, num_leaves: int):
    """The hierarchy a dataset transform makes of ``num_leaves`` points
    (uniform on the unit sphere) or tokens, with its default arguments."""
    import torch
    from torch_geometric.data import Data

    from pyg_hsa.transforms import PointCloudToHierarchy, SequenceToHierarchy
    gen = torch.Generator().manual_seed(0)
    if method == 'hsa_points':
        pos = torch.randn(num_leaves, 3, generator=gen)
        pos = pos / pos.norm(dim=1, keepdim=True)
        return PointCloudToHierarchy()(Data(pos=pos))
    return SequenceToHierarchy()(Data(x=torch.zeros(num_leaves, 1)))


def worker(method: str, num_leaves: int, branching: int, backward: bool,
           repeats: int, scatter: bool) -> dict:
    import torch
    import torch_geometric.typing
    torch_geometric.typing.WITH_TORCH_SCATTER &= scatter
    from pyg_hsa import Tree, hsa_attention
    from pyg_hsa.nn import HSAConv

    torch.manual_seed(0)
    baseline_mb = _current_rss_mb()  # torch and the libraries, no data yet
    shape = (num_leaves, HEADS, CHANNELS)
    result = {'compile_s': None}

    if method in ('hsa', 'hsa_conv', 'hsa_flat'):
        parent = (torch.full((num_leaves + 1, ), num_leaves).index_fill_(
            0, torch.tensor([num_leaves]), -1) if method == 'hsa_flat' else
                  balanced_parent(branching, num_leaves))
        start = time.perf_counter()
        tree = Tree.from_parent(parent, num_leaves)
        result['compile_s'] = time.perf_counter() - start
    elif method in REAL:
        hierarchy = real_hierarchy(method, num_leaves)
        start = time.perf_counter()
        tree = Tree.from_hetero(hierarchy)
        result['compile_s'] = time.perf_counter() - start
    if method == 'hsa_conv':
        conv = HSAConv(HEADS * CHANNELS, CHANNELS, heads=HEADS)
        x = torch.randn(num_leaves, HEADS * CHANNELS, requires_grad=backward)

        def run():
            return conv(x, tree)
    elif method == 'transformer_conv':
        from torch_geometric.nn import TransformerConv
        conv = TransformerConv(HEADS * CHANNELS, CHANNELS, heads=HEADS)
        x = torch.randn(num_leaves, HEADS * CHANNELS, requires_grad=backward)
        idx = torch.arange(num_leaves)
        edge_index = torch.stack([idx.repeat_interleave(num_leaves),
                                  idx.repeat(num_leaves)])

        def run():
            return conv(x, edge_index)
    else:
        q, k, v = (torch.randn(*shape, requires_grad=backward)
                   for _ in range(3))
        if method == 'sdpa':
            def run():
                return torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
        else:
            def run():
                return hsa_attention(q, k, v, tree)

    def step():
        out = run()
        if backward:
            out.sum().backward()

    step()  # warm-up (allocator, lazy init)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result['time_s'] = min(times)
    result['peak_rss_mb'] = resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline_mb
    return result


def _current_rss_mb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def measure(method, num_leaves, branching, backward, repeats, scatter,
            timeout):
    cmd = [
        sys.executable, __file__, '--worker', method,
        str(num_leaves),
        str(branching),
        str(int(backward)),
        str(repeats),
        str(int(scatter))
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'error': f'over {timeout:.0f} s'}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ['killed'])[-1]
        return {'error': 'out of memory' if 'memory' in last.lower() or
                done.returncode < 0 else last[:60]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep(args):
    sizes = ([2**8] if args.smoke else
             [2**10, 2**12, 2**14, 2**15, 2**16, 2**17, 2**18, 2**20])
    rows = []
    stopped = set()  # methods that failed: larger sizes are skipped
    for backward in (False, True):
        for num_leaves in sizes:
            configs = [('sdpa', 0), ('transformer_conv', 0), ('hsa_flat', 0),
                       ('hsa', 8), ('hsa', 32), ('hsa_conv', 8),
                       ('hsa_points', 0), ('hsa_sequence', 0)]
            for method, branching in configs:
                for scatter in ((False, True) if method == 'hsa' else
                                (False, )):
                    if scatter and not args.with_scatter:
                        continue
                    key = (method, branching, backward, scatter)
                    if key in stopped:
                        continue
                    res = measure(method, num_leaves, branching, backward,
                                  1 if num_leaves > 2**16 else 3, scatter,
                                  args.timeout)
                    if 'error' in res:
                        stopped.add(key)
                    row = dict(method=method, branching=branching,
                               backward=backward, scatter=scatter,
                               leaves=num_leaves, **res)
                    rows.append(row)
                    print(_format_row(row), flush=True)
    return rows


def _format_row(row):
    name = row['method'] + (f" b={row['branching']}"
                            if row['branching'] else '')
    name += ' +scatter' if row['scatter'] else ''
    if 'error' in row:
        cells = [row['error'], '', '', '']
    else:
        per_leaf = row['time_s'] / row['leaves'] * 1e6
        compile_s = row['compile_s']
        cells = [
            f"{row['time_s'] * 1e3:.1f}", f'{per_leaf:.2f}',
            f"{row['peak_rss_mb']:.0f}",
            '' if compile_s is None else f'{compile_s * 1e3:.1f}'
        ]
    phase = 'fwd+bwd' if row['backward'] else 'fwd'
    return f"| {name} | {phase} | {row['leaves']} | " + ' | '.join(
        cells) + ' |'


def ratios(rows):
    """Speed-up of HSA (branching 8) over SDPA at each size, fwd+bwd."""
    lines = []
    by_key = {(r['method'], r['branching'], r['backward'], r['scatter'],
               r['leaves']): r
              for r in rows if 'error' not in r}
    for key in sorted(by_key, key=lambda key: key[-1]):
        (method, b, backward, scatter, n), row = key, by_key[key]
        if method != 'hsa' or b != 8 or not backward or scatter:
            continue
        sdpa = by_key.get(('sdpa', 0, True, False, n))
        if sdpa:
            lines.append(f'- {n} leaves, fwd+bwd: SDPA takes '
                         f"{sdpa['time_s'] / row['time_s']:.1f}x the time "
                         f'of HSA (b=8)')
    return lines


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    series = {}
    for r in rows:
        if 'error' in r or not r['backward'] or r['scatter']:
            continue
        name = r['method'] + (f" b={r['branching']}"
                              if r['branching'] else '')
        series.setdefault(name, []).append(r)
    for name, rs in sorted(series.items()):
        rs.sort(key=lambda r: r['leaves'])
        n = [r['leaves'] for r in rs]
        axes[0].plot(n, [r['time_s'] for r in rs], 'o-', label=name)
        axes[1].plot(n, [r['peak_rss_mb'] for r in rs], 'o-', label=name)
    for ax, label in zip(axes, ['forward+backward time (s)',
                                'peak memory above baseline (MB)']):
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('leaves N')
        ax.set_ylabel(label)
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f'HSA vs dense attention, H={HEADS}, C={CHANNELS}, '
                 f'float32, {os.cpu_count()} CPU cores')
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--worker', nargs=6, metavar='ARG')
    parser.add_argument('--smoke', action='store_true',
                        help='one tiny size, for CI')
    parser.add_argument('--timeout', type=float, default=300.0,
                        help='seconds per measurement before giving up')
    parser.add_argument('--with-scatter', action='store_true',
                        help='also time HSA with torch_scatter enabled')
    parser.add_argument('--out', help='also write the table here')
    parser.add_argument('--plot', help='write the PNG plot here')
    args = parser.parse_args()
    if args.worker:
        method, n, b, backward, repeats, scatter = args.worker
        print(json.dumps(worker(method, int(n), int(b), bool(int(backward)),
                                int(repeats), bool(int(scatter)))))
        return

    import torch
    header = [
        f'Machine: {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} cores, torch {torch.__version__}, '
        f'{torch.get_num_threads()} threads; H={HEADS}, C={CHANNELS}, '
        f'float32.',
        f"Command: python benchmarks/bench_hsa.py {' '.join(sys.argv[1:])}",
        '',
        '| method | pass | leaves | time (ms) | µs/leaf | peak memory (MB) '
        '| Tree build (ms) |',
        '| --- | --- | --- | --- | --- | --- | --- |',
    ]
    print('\n'.join(header), flush=True)
    rows = sweep(args)
    summary = ratios(rows)
    print('\n'.join([''] + summary))
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(header + [_format_row(r) for r in rows] +
                              [''] + summary) + '\n')
    if args.plot:
        plot(rows, args.plot)


if __name__ == '__main__':
    main()
