"""HSA against dense attention on its fastest path: time and memory, all
measured in one run (compare ratios, not absolute times).

    python benchmarks/bench_hsa.py --out table.md --plot bench_hsa.png
    python benchmarks/bench_hsa.py --smoke     # seconds; what CI runs
    python benchmarks/bench_hsa.py --rows molecules,listops  # some rows
    python benchmarks/bench_hsa.py --rows flat --sizes 65536 --timeout 2400
    python benchmarks/bench_hsa.py --replot table.md --plot bench_hsa.png

Every row is forward + backward (``fwd+bwd``) unless it says ``fwd``, with
H=4 heads, C=32 channels, float32. ``hsa`` is block resolution (the
paper's HSA), ``hsa query`` query resolution with self loops. ``ops`` is
the number of aten operations one step dispatches (views and the autograd
engine's included; :func:`pyg_hsa.testing.count_aten_ops`): on a GPU each
is a kernel launch, so it is this machine's proxy for launch overhead. The reference is
``torch.nn.functional.scaled_dot_product_attention`` with 4-D ``[B, H, N,
C]`` inputs (``sdpa``), which takes PyTorch's fused (flash) CPU kernel in
O(N) memory; the 3-D ``[H, N, C]`` call falls back to the math path that
holds ``[H, N, N]``, shown only as the labelled extra row ``sdpa 3-D (math
path)``.

A ``fwd+bwd`` step is ``out.sum().backward()`` after setting the inputs'
(and parameters') gradients to ``None``, as ``optimizer.zero_grad()`` does.
Each cell runs in a fresh subprocess. Where a cell compares methods or
hierarchies, they alternate in that process, several rounds after a
warm-up, and each keeps its fastest round: the machine's drift hits all
alike, so their ratio (``x``) is what to read. ``peak MB`` is the process's
peak
resident set above its size after the imports, over everything it ran.

Rows:

* ``flat`` -- a one-level tree (one family: softmax attention without the
  diagonal) against ``sdpa`` at 1k-64k leaves, and a 100k-member family;
* ``complete b=8`` -- complete 8-ary trees from 1k to 1M leaves (time per
  leaf, memory, ``Tree`` build), against ``sdpa`` up to 64k;
* ``points sphere`` / ``points cube`` / ``sequence`` -- the hierarchies
  ``PointCloudToHierarchy()`` makes of 131k points on a sphere or filling a
  cube and ``SequenceToHierarchy()`` of 131k tokens, in one cell with the
  complete tree of 131k leaves (``x``: time per leaf against it);
* ``molecules xB`` -- ``MoleculeToHierarchy()`` batches of B NCI molecules
  (RDKit's ``first_5K.smi``) against ``sdpa`` over each molecule's atoms,
  padded to the largest with a key mask;
* ``listops x16`` -- ``BracketsToHierarchy`` parse trees of the first 16
  LRA ListOps expressions (seed 0), in one cell with the complete 8-ary
  tree of the same number of leaves (``x``: time per leaf against it, in
  the same resolution);
* ``hsa_conv`` -- :class:`~pyg_hsa.nn.HSAConv` (projections, LayerNorm,
  skip) on the complete tree.
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


def flat_parent(num_leaves: int):
    import torch
    return torch.cat([torch.full((num_leaves, ), num_leaves),
                      torch.tensor([-1])])


def hierarchy(kind: str, size: int):
    """``(tree, Tree build seconds, molecule sizes or None)`` for a row's
    hierarchy (the transform's own time not counted)."""
    import torch
    from torch_geometric.data import Data

    from pyg_hsa import Tree
    gen = torch.Generator().manual_seed(0)
    lengths = None
    if kind == 'flat':
        build, source = Tree.from_parent, flat_parent(size)
    elif kind == 'complete':
        build, source = Tree.from_parent, balanced_parent(8, size)
    elif kind in ('sphere', 'cube'):
        from pyg_hsa.transforms import PointCloudToHierarchy
        pos = torch.randn(size, 3, generator=gen)
        pos = pos / pos.norm(dim=1, keepdim=True) if kind == 'sphere' else \
            torch.rand(size, 3, generator=gen)
        build, source = Tree.from_hetero, PointCloudToHierarchy()(
            Data(pos=pos))
    elif kind == 'sequence':
        from pyg_hsa.transforms import SequenceToHierarchy
        build, source = Tree.from_hetero, SequenceToHierarchy()(
            Data(x=torch.zeros(size, 1)))
    elif kind == 'molecules':
        build, source = Tree.from_hetero, molecule_batch(size)
    elif kind == 'listops':
        build, source = Tree.from_hetero, listops_batch(size)
    elif kind == 'complete_as_listops':  # as many leaves as that batch
        num_leaves = Tree.from_hetero(listops_batch(size)).num_leaves
        build, source = Tree.from_parent, balanced_parent(8, num_leaves)
    else:
        raise ValueError(kind)
    start = time.perf_counter()
    tree = build(source)
    seconds = time.perf_counter() - start
    if kind == 'molecules':
        lengths = torch.bincount(tree.batch)
    return tree, seconds, lengths


def molecule_batch(num_molecules: int):
    """The first :obj:`num_molecules` NCI molecules (RDKit's shipped
    ``first_5K.smi``) that RDKit parses, as one ``MoleculeToHierarchy``
    batch."""
    from torch_geometric.loader import DataLoader
    from torch_geometric.utils import from_smiles

    from pyg_hsa.transforms import MoleculeToHierarchy
    from pyg_hsa.utils.io import package_file
    path = package_file('rdkit', 'Data', 'NCI', 'first_5K.smi',
                        install="pip install rdkit")
    transform, out = MoleculeToHierarchy(), []
    with open(path) as f:
        for line in f:
            try:
                out.append(transform(from_smiles(line.split()[0])))
            except ValueError:  # salts and the like RDKit or BRICS refuse
                continue
            if len(out) == num_molecules:
                break
    return next(iter(DataLoader(out, batch_size=num_molecules)))


def listops_batch(num_expressions: int):
    """The first :obj:`num_expressions` LRA ListOps expressions (the seeded
    generator, seed 0) as one batch of ``BracketsToHierarchy`` parse
    trees."""
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader

    from pyg_hsa.datasets import ListOps
    from pyg_hsa.datasets.listops_generator import generate
    from pyg_hsa.transforms import BracketsToHierarchy
    tokens, offsets, _ = generate(num_expressions, seed=0)
    transform = BracketsToHierarchy(ListOps.OPERATOR_IDS, ListOps.CLOSING_ID)
    import torch
    out = [transform(Data(x=torch.from_numpy(
        tokens[offsets[i]:offsets[i + 1]].astype('int64'))))
        for i in range(num_expressions)]
    return next(iter(DataLoader(out, batch_size=num_expressions)))


def plan_seconds(tree, method: str) -> float:
    """Seconds to build the per-tree plan of the kernel :obj:`method` uses
    (once per tree, on its first call: a fresh batch pays it). The plan is
    cached, so the timed calls reuse it."""
    try:
        from pyg_hsa.functional.block_families import family_plan
        from pyg_hsa.functional.query_tiles import tile_plan
    except ImportError:  # (an older pyg_hsa, run for a baseline)
        return 0.0
    start = time.perf_counter()
    if method == 'hsa_query' and tree.depth > 1:  # (one level: block)
        tile_plan(tree, False, True)
    else:
        family_plan(tree, method == 'hsa_query')
    return time.perf_counter() - start


def make_step(method: str, kind: str, size: int, backward: bool):
    """``(step, leaves, seconds to build the Tree and the kernel's plan)``
    for one method on one row."""
    import torch
    import torch.nn.functional as F

    from pyg_hsa import hsa_attention
    from pyg_hsa.nn import HSAConv

    torch.manual_seed(0)
    tree, build, lengths = hierarchy(kind, size)
    n = tree.num_leaves

    def tensors(*shape):
        return [torch.randn(*shape, requires_grad=backward) for _ in range(3)]

    if method in ('hsa', 'hsa_query'):
        q, k, v = tensors(n, HEADS, CHANNELS)
        options = dict(resolution='query', self_loops=True) \
            if method == 'hsa_query' else {}
        build += plan_seconds(tree, method)

        def run():
            return hsa_attention(q, k, v, tree, **options)
    elif method == 'hsa_conv':
        conv = HSAConv(HEADS * CHANNELS, CHANNELS, heads=HEADS)
        x = torch.randn(n, HEADS * CHANNELS, requires_grad=backward)

        def run():
            return conv(x, tree)
    elif method == 'sdpa' and lengths is not None:  # padded molecules
        width = int(lengths.max())
        q, k, v = tensors(lengths.numel(), HEADS, width, CHANNELS)
        keep = torch.arange(width) < lengths.view(-1, 1)
        mask = keep.view(-1, 1, 1, width)

        def run():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    elif method == 'sdpa':
        q, k, v = tensors(1, HEADS, n, CHANNELS)

        def run():
            return F.scaled_dot_product_attention(q, k, v)
    elif method == 'sdpa3d':
        q, k, v = tensors(HEADS, n, CHANNELS)

        def run():
            return F.scaled_dot_product_attention(q, k, v)
    else:
        raise ValueError(method)

    leaves = [t for t in (q, k, v) if isinstance(t, torch.Tensor)] if \
        method != 'hsa_conv' else [x] + list(conv.parameters())

    def step():
        # As a training step after optimizer.zero_grad() (which sets the
        # gradients to None): no accumulation into earlier gradients.
        for t in leaves:
            t.grad = None
        out = run()
        if backward:
            out.sum().backward()

    return step, n, build


def worker(spec: dict) -> dict:
    """Runs the ``(method, hierarchy)`` entries of one cell, alternating,
    and reports each one's fastest round."""
    baseline_mb = _current_rss_mb()
    steps = {f'{m}@{k}': make_step(m, k, spec['size'], spec['backward'])
             for m, k in spec['entries']}
    for step, _, _ in steps.values():  # warm-up (allocator, lazy init)
        step()
    best = {key: float('inf') for key in steps}
    for _ in range(spec['rounds']):
        for key, (step, _, _) in steps.items():
            start = time.perf_counter()
            step()
            best[key] = min(best[key], time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from pyg_hsa.testing import count_aten_ops
    ops = {key: count_aten_ops(s[0]) for key, s in steps.items()}
    return {'leaves': {key: s[1] for key, s in steps.items()},
            'ops': ops,
            'time_s': best,
            'build_s': {key: s[2] for key, s in steps.items()},
            'peak_mb': peak - baseline_mb}


def _current_rss_mb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def measure(cell, timeout: float) -> dict:
    """Runs one cell in a fresh subprocess."""
    _, entries, size, backward, rounds = cell[:5]
    spec = {'entries': entries, 'size': size, 'backward': backward,
            'rounds': rounds}
    cmd = [sys.executable, __file__, '--worker', json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'error': f'over {timeout:.0f} s'}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ['killed'])[-1]
        return {'error': 'out of memory' if 'memory' in last.lower() or
                done.returncode < 0 else last[:80]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cells(smoke: bool):
    """The cells of the run: ``(labels, entries, size, backward, rounds,
    refs)``; each entry ``(method, hierarchy)`` is one table row, under the
    label of the same position, and ``refs[i]`` is the entry row ``i`` is
    compared with (``x``)."""
    K = 1024
    both = [('hsa', 'hsa_query')]
    if smoke:
        n = 512
        return [
            cell(['flat'] * 4, [('hsa', 'flat'), ('hsa_query', 'flat'),
                                ('sdpa', 'flat'), ('sdpa3d', 'flat')], 256,
                 True, 2, ref=2),
            cell(['complete b=8'] * 3, [('hsa', 'complete'),
                                        ('hsa_query', 'complete'),
                                        ('sdpa', 'complete')], n, True, 2,
                 ref=2),
            cell(['complete b=8'], [('hsa', 'complete')], n, False, 2),
            cell(REAL + ['complete b=8'], [('hsa', k) for k in REAL_KINDS] +
                 [('hsa', 'complete')], n, True, 2, ref=3),
            cell(['molecules x4'] * 3, [('hsa', 'molecules'),
                                        ('hsa_query', 'molecules'),
                                        ('sdpa', 'molecules')], 4, True, 2,
                 ref=2),
            listops_cell(1, 2),
            cell(['hsa_conv'], [('hsa_conv', 'complete')], n, True, 2),
        ]
    out = []
    for n, rounds in ((K, 7), (4 * K, 5), (16 * K, 3), (64 * K, 1)):
        # (On a one-level tree query resolution runs as block resolution,
        # so its row is shown where the cell stays short.)
        methods = ['hsa'] + (['hsa_query'] if n <= 4 * K else []) + \
            ['sdpa'] + (['sdpa3d'] if n <= 4 * K else [])
        out.append(cell(['flat'] * len(methods),
                        [(m, 'flat') for m in methods], n, True, rounds,
                        ref=methods.index('sdpa')))
    for method in ('hsa', 'sdpa'):  # alone: their own memory
        out.append(cell(['flat'], [(method, 'flat')], 100_000, True, 1))
    for n, rounds in ((K, 7), (4 * K, 5), (16 * K, 5), (64 * K, 1)):
        out.append(cell(['complete b=8'] * 3,
                        [('hsa', 'complete'), ('hsa_query', 'complete'),
                         ('sdpa', 'complete')], n, True, rounds, ref=2))
    for n in (16 * K, 128 * K, 1024 * K):  # alone: their own memory
        for backward in (True, False):
            out.append(cell(['complete b=8'], [('hsa', 'complete')], n,
                            backward, 5 if n < 1024 * K else 2))
    out.append(cell(['complete b=8'], [('hsa_query', 'complete')], 128 * K,
                    True, 3))
    for method in both[0]:
        out.append(cell(REAL + ['complete b=8'],
                        [(method, k) for k in REAL_KINDS] +
                        [(method, 'complete')], 128 * K, True, 3, ref=3))
    for batch, rounds in ((32, 30), (512, 10)):
        out.append(cell([f'molecules x{batch}'] * 3,
                        [('hsa', 'molecules'), ('hsa_query', 'molecules'),
                         ('sdpa', 'molecules')], batch, True, rounds, ref=2))
        for method in both[0]:  # alone: their own memory
            out.append(cell([f'molecules x{batch}'],
                            [(method, 'molecules')], batch, True, 3))
    out.append(listops_cell(16, 5))
    for method in both[0]:  # alone: their own memory
        out.append(cell(['listops x16'], [(method, 'listops')], 16, True, 2))
    out.append(cell(['hsa_conv'], [('hsa_conv', 'complete')], 128 * K, True,
                    3))
    return out


def cell(labels, entries, size, backward, rounds, ref=0):
    """A cell whose rows are all compared with entry :obj:`ref`."""
    return (labels, entries, size, backward, rounds, [ref] * len(entries))


def listops_cell(size, rounds):
    """ListOps parse trees and the complete tree of as many leaves, in
    both resolutions, each compared with the complete tree in its own."""
    label = f'listops x{size}'
    return ([label, 'complete b=8 (as listops)'] * 2,
            [('hsa', 'listops'), ('hsa', 'complete_as_listops'),
             ('hsa_query', 'listops'), ('hsa_query', 'complete_as_listops')],
            size, True, rounds, [1, 1, 3, 3])


REAL = ['points sphere', 'points cube', 'sequence']
REAL_KINDS = ['sphere', 'cube', 'sequence']
LABELS = {'hsa': 'hsa', 'hsa_query': 'hsa query', 'sdpa': 'sdpa',
          'sdpa3d': 'sdpa 3-D (math path)', 'hsa_conv': 'hsa_conv'}


def rows_of(cell, result):
    """Table rows ``(row, method, pass, leaves, ms, us/leaf, peak MB,
    build ms, ops, x)`` of one measured cell; ``x`` is the time per leaf
    relative to the row's reference entry."""
    labels, entries, size, backward, _, refs = cell
    phase = 'fwd+bwd' if backward else 'fwd'
    if 'error' in result:
        return [(labels[0], '/'.join(m for m, _ in entries), phase, size,
                 result['error'], '', '', '', '', '')]
    keys = [f'{m}@{k}' for m, k in entries]
    per_leaf = {key: result['time_s'][key] / result['leaves'][key]
                for key in keys}
    out = []
    for label, (method, _), key, ref in zip(labels, entries, keys, refs):
        t, n = result['time_s'][key], result['leaves'][key]
        build = result['build_s'][key] * 1e3 if method.startswith('hsa') \
            else None
        out.append((label, LABELS[method], phase, n, t * 1e3, t / n * 1e6,
                    result['peak_mb'], build, result['ops'][key],
                    per_leaf[key] / per_leaf[keys[ref]]))
    return out


def format_row(row) -> str:
    name, method, phase, n, ms, per_leaf, peak, build, ops, ratio = row
    if isinstance(ms, str):  # an error
        return f'| {name} | {method} | {phase} | {n} | {ms} | | | | | |'
    build = '' if build is None else f'{build:.0f}'
    return (f'| {name} | {method} | {phase} | {n} | {ms:.2f} | '
            f'{per_leaf:.2f} | {peak:.0f} | {build} | {ops} | '
            f'{ratio:.2f} |')


HEADER = ('| row | method | pass | leaves | time (ms) | µs/leaf | peak MB '
          '(cell) | Tree + plan (ms) | ops | x |')


def summary(rows) -> list:
    """The targets of the performance work, as measured in this run."""
    def find(name, method, phase='fwd+bwd', n=None):
        for r in rows:
            if r[:3] == (name, method, phase) and (n is None or r[3] == n) \
                    and not isinstance(r[4], str):
                return r
        return None

    lines = []
    for n in (1024, 4096, 16384, 65536):
        sdpa = find('flat', 'sdpa', n=n)
        for method in ('hsa', 'hsa query'):
            hsa = find('flat', method, n=n)
            if hsa and sdpa:
                lines.append(f'- flat tree, {n} leaves: {method} takes '
                             f'{hsa[4] / sdpa[4]:.2f}x the time of SDPA (4-D)')
    big, big_sdpa = find('flat', 'hsa', n=100_000), find('flat', 'sdpa',
                                                         n=100_000)
    if big:
        sdpa_text = f'; SDPA (4-D) {big_sdpa[4] / 1e3:.1f} s' \
            if big_sdpa else ''
        lines.append(f'- 100k-member family: {big[4] / 1e3:.1f} s, peak '
                     f'{big[6]:.0f} MB' + sdpa_text)
    for n in (1024, 4096, 16384, 65536):
        sdpa = find('complete b=8', 'sdpa', n=n)
        for method in ('hsa', 'hsa query'):
            hsa = find('complete b=8', method, n=n)
            if hsa and sdpa:
                lines.append(f'- complete 8-ary tree, {n} leaves: SDPA (4-D)'
                             f' takes {sdpa[4] / hsa[4]:.1f}x the time of '
                             f'{method}')
    for a, b in ((16384, 131072), (131072, 1048576)):
        ra, rb = (find('complete b=8', 'hsa', n=n) for n in (a, b))
        if ra and rb:
            lines.append(f'- complete 8-ary tree, {a} -> {b} leaves (8x): '
                         f'{rb[4] / ra[4]:.1f}x the time')
    for name in REAL:
        for method in ('hsa', 'hsa query'):
            r = find(name, method)
            if r:
                lines.append(f'- {name}, {r[3]} leaves, {method}: '
                             f'{r[5]:.2f} µs/leaf, {r[9]:.2f}x the complete '
                             f'tree of that size per leaf (same process)')
    memory = {}
    for r in rows:  # cells of one entry: that entry's own peak
        if not isinstance(r[4], str) and (r[0], r[1]) not in memory and \
                sum(x[:2] == r[:2] for x in rows) >= 1:
            memory.setdefault((r[0], r[1]), []).append(r[6])
    for batch in (32, 512):
        name = f'molecules x{batch}'
        sdpa = find(name, 'sdpa')
        for method in ('hsa', 'hsa query'):
            r = find(name, method)
            if r and sdpa:
                lines.append(f'- {batch} molecules ({r[3]} atoms), {method}:'
                             f' {r[8]} ops, {r[4]:.2f} ms, padded SDPA (4-D)'
                             f' {sdpa[4]:.2f} ms ({r[4] / sdpa[4]:.2f}x)')
    for method in ('hsa', 'hsa query'):
        r = find('listops x16', method)
        if r:
            lines.append(f'- 16 ListOps parse trees ({r[3]} leaves), '
                         f'{method}: {r[8]} ops, {r[9]:.2f}x the complete '
                         f'8-ary tree of as many leaves (same resolution)')
    for name in ('molecules x32', 'molecules x512', 'listops x16'):
        alone = {r[1]: r[6] for r in rows if r[0] == name and
                 not isinstance(r[4], str) and
                 sum(x[0] == name and x[1] == r[1] for x in rows) == 2}
        if 'hsa' in alone and 'hsa query' in alone and alone['hsa'] > 0:
            lines.append(f'- {name}, peak memory measured alone: query '
                         f'{alone["hsa query"]:.0f} MB, block '
                         f'{alone["hsa"]:.0f} MB')
    top = find('complete b=8', 'hsa', n=1048576)
    if top:
        lines.append(f'- 1M leaves: peak {top[6]:.0f} MB fwd+bwd; Tree '
                     f'build {top[7]:.0f} ms')
    return lines


def read_rows(path: str) -> list:
    """The rows of a table that --out wrote, as :func:`rows_of` gives
    them (errors as their text)."""
    rows = []
    with open(path) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if len(cells) != 10 or not cells[3].isdigit():
                continue
            name, method, phase, n = cells[0], cells[1], cells[2], int(
                cells[3])
            try:
                numbers = [float(c) if c else None for c in cells[4:]]
            except ValueError:  # an error row
                rows.append((name, method, phase, n, cells[4], '', '', '',
                             '', ''))
                continue
            rows.append((name, method, phase, n, *numbers))
    return rows


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    series = {}
    for r in rows:
        if isinstance(r[4], str) or r[2] != 'fwd+bwd':
            continue
        if r[0] in ('flat', 'complete b=8'):
            label = f'{r[1]} ({r[0]})' if r[1].startswith('hsa') else r[1]
            if r[0] == 'complete b=8' and not r[1].startswith('hsa'):
                continue  # one SDPA curve (the flat rows' is the same)
            series.setdefault(label, {})[r[3]] = (r[4] / 1e3, r[6])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, points in sorted(series.items()):
        n = sorted(points)
        axes[0].plot(n, [points[x][0] for x in n], 'o-', label=label)
        axes[1].plot(n, [points[x][1] for x in n], 'o-', label=label)
    for name in REAL:
        for r in rows:
            if r[0] == name and not isinstance(r[4], str):
                axes[0].plot([r[3]], [r[4] / 1e3], 's',
                             label=f'{r[1]} ({name})')
    for ax, label in zip(axes, ['forward+backward time (s)',
                                'peak memory of the cell (MB)']):
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('leaves N')
        ax.set_ylabel(label)
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend(fontsize=8)
    import torch
    fig.suptitle(f'HSA vs SDPA (fused, 4-D), H={HEADS}, C={CHANNELS}, '
                 f'float32, {torch.get_num_threads()} CPU thread(s)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--worker', metavar='JSON')
    parser.add_argument('--smoke', action='store_true',
                        help='tiny sizes, for CI (seconds)')
    parser.add_argument('--timeout', type=float, default=900.0,
                        help='seconds per cell before giving up')
    parser.add_argument('--out', help='also write the table here')
    parser.add_argument('--plot', help='write the PNG plot here')
    parser.add_argument('--replot', metavar='TABLE',
                        help='only draw --plot from a table --out wrote')
    parser.add_argument('--rows', help='only the cells whose row names '
                        'contain one of these comma-separated words')
    parser.add_argument('--sizes', help='only the cells of these '
                        'comma-separated sizes (leaves, or molecules)')
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.replot:
        plot(read_rows(args.replot), args.plot)
        return

    import torch
    header = [
        f'Machine: {platform.machine()}, {os.cpu_count()} cores, torch '
        f'{torch.__version__}, {torch.get_num_threads()} threads; '
        f'H={HEADS}, C={CHANNELS}, float32.',
        f"Command: python benchmarks/bench_hsa.py {' '.join(sys.argv[1:])}",
        '', HEADER, '| --- ' * 10 + '|'
    ]
    print('\n'.join(header), flush=True)
    rows = []
    wanted = args.rows.split(',') if args.rows else None
    for cell in cells(args.smoke):
        if wanted and not any(w in label for w in wanted for label in cell[0]):
            continue
        if args.sizes and cell[2] not in map(int, args.sizes.split(',')):
            continue
        for row in rows_of(cell, measure(cell, args.timeout)):
            rows.append(row)
            print(format_row(row), flush=True)
    lines = summary(rows)
    print('\n'.join([''] + lines))
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(header + [format_row(r) for r in rows] + [''] +
                              lines) + '\n')
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == '__main__':
    main()
