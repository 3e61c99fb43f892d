"""Query-resolved and causal HSA: training cost against paper HSA, and
decoding cost of the hierarchical KV cache against a full KV cache, all
measured in one run (compare ratios, not absolute times).

    python benchmarks/bench_causal.py --out benchmarks/causal/results.md \
        --plot benchmarks/causal/decoding.png      # ~5 minutes on 2 cores
    python benchmarks/bench_causal.py --smoke      # seconds

H=4 heads, C=32 channels, float32, one process; methods alternate within
a size and each keeps its fastest round.

* ``training``: ``hsa_attention`` forward + backward on complete 8-ary
  trees, ``resolution='block'`` (the paper's HSA), ``'query'`` and
  ``'query'`` with ``causal=True`` (both with self loops), in microseconds
  per leaf; ``x block`` is the ratio to paper HSA.
* ``decoding``: the cost of one more token at a context of ``t`` tokens
  (append its key and value, attend with its query). The hierarchical KV
  cache (:class:`~pyg_hsa.HierarchicalKVCache`, windows of 16 tokens, 16
  windows, ...) against a full KV cache: keys and values in preallocated
  ``[1, H, T, C]`` buffers and ``scaled_dot_product_attention`` of the one
  query over the first ``t + 1`` (PyTorch's fused CPU kernel).
"""
import argparse
import os
import os.path as osp
import platform
import time

import torch
import torch.nn.functional as F

from bench_hsa import balanced_parent

from pyg_hsa import (
    HierarchicalKVCache,
    Tree,
    hsa_attention,
    window_path,
)

HEADS, CHANNELS = 4, 32
MODES = {
    'block': dict(resolution='block'),
    'query': dict(resolution='query'),
    'query causal': dict(resolution='query', causal=True),
}


def fastest(steps: dict, rounds: int) -> dict:
    """Alternates the steps, after one warm-up each; fastest round each."""
    for step in steps.values():
        step()
    best = {name: float('inf') for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def training(num_leaves: int, rounds: int) -> dict:
    tree = Tree.from_parent(balanced_parent(8, num_leaves), num_leaves)
    torch.manual_seed(0)
    q, k, v = (torch.randn(num_leaves, HEADS, CHANNELS, requires_grad=True)
               for _ in range(3))

    def step_of(options):
        def step():
            for x in (q, k, v):
                x.grad = None
            hsa_attention(q, k, v, tree, self_loops=True,
                          **options).sum().backward()
        return step

    best = fastest({name: step_of(o) for name, o in MODES.items()}, rounds)
    return {name: 1e6 * s / num_leaves for name, s in best.items()}


def decoding(context: int, tokens: int, branching) -> dict:
    """Seconds per token at a context of ``context`` tokens: two passes of
    ``tokens`` tokens each, methods alternating, the faster pass kept."""
    torch.manual_seed(0)
    total = context + 2 * tokens
    q, k, v = torch.randn(3, total, HEADS, CHANNELS).unbind(0)
    cache = HierarchicalKVCache()
    keys = torch.zeros(1, HEADS, total, CHANNELS)
    values = torch.zeros(1, HEADS, total, CHANNELS)

    def hierarchical(lo, hi):
        for t in range(lo, hi):
            cache.append(k[t], v[t], window_path(t, branching))
            cache.attend(q[t])

    def full(lo, hi):
        for t in range(lo, hi):
            keys[0, :, t] = k[t]
            values[0, :, t] = v[t]
            F.scaled_dot_product_attention(
                q[t].view(1, HEADS, 1, CHANNELS), keys[:, :, :t + 1],
                values[:, :, :t + 1])

    best = {'hierarchical': float('inf'), 'full': float('inf')}
    with torch.no_grad():
        for t in range(context):
            cache.append(k[t], v[t], window_path(t, branching))
        keys[0, :, :context] = k[:context].transpose(0, 1)
        values[0, :, :context] = v[:context].transpose(0, 1)
        for lo in (context, context + tokens):
            for name, run in (('hierarchical', hierarchical),
                              ('full', full)):
                start = time.perf_counter()
                run(lo, lo + tokens)
                best[name] = min(best[name],
                                 (time.perf_counter() - start) / tokens)
    assert cache.num_tokens == total
    return dict(best, entries=cache.num_entries)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--smoke', action='store_true')
    parser.add_argument('--out', default=None, help='markdown table')
    parser.add_argument('--plot', default=None, help='png of decoding')
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    sizes = [512, 4096] if args.smoke else [4096, 32768, 131072]
    contexts = [256, 1024] if args.smoke else [1024, 4096, 16384, 65536]
    branching = (16, 16, 16, 16)
    lines = [f'`python benchmarks/bench_causal.py` on {platform.machine()}, '
             f'{torch.get_num_threads()} threads, torch {torch.__version__}',
             '', '**Training** (fwd+bwd, complete 8-ary trees, '
             'us per leaf)', '',
             '| leaves | block | query | query causal | query / block | '
             'causal / block |', '| --- | --- | --- | --- | --- | --- |']
    for size in sizes:
        t = training(size, 2 if args.smoke else 5)
        lines.append(f"| {size} | {t['block']:.2f} | {t['query']:.2f} | "
                     f"{t['query causal']:.2f} | "
                     f"{t['query'] / t['block']:.2f}x | "
                     f"{t['query causal'] / t['block']:.2f}x |")
        print(lines[-1], flush=True)
    lines += ['', '**Decoding** (one token at a context of t tokens, '
              f'windows {"-".join(map(str, branching))}, us per token)', '',
              '| context | hierarchical cache | entries | full KV cache | '
              'hierarchical / full |', '| --- | --- | --- | --- | --- |']
    results = []
    for context in contexts:
        d = decoding(context, 64 if args.smoke else 256, branching)
        results.append((context, d))
        lines.append(f"| {context} | {1e6 * d['hierarchical']:.0f} | "
                     f"{d['entries']} | {1e6 * d['full']:.0f} | "
                     f"{d['hierarchical'] / d['full']:.3f} |")
        print(lines[-1], flush=True)
    first, last = results[0][1]['hierarchical'], results[-1][1][
        'hierarchical']
    lines += ['', f'Hierarchical cache, {contexts[-1]} against '
              f'{contexts[0]} tokens of context: {last / first:.2f}x per '
              f'token.']
    table = '\n'.join(lines) + '\n'
    print(table)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(table)
    if args.plot:
        plot(results, args.plot)


def plot(results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    contexts = [c for c, _ in results]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, label in (('hierarchical', 'hierarchical KV cache (HSA)'),
                       ('full', 'full KV cache (softmax, SDPA)')):
        ax.plot(contexts, [1e6 * d[key] for _, d in results], 'o-',
                label=label)
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xlabel('context (tokens)')
    ax.set_ylabel('time per generated token (us)')
    ax.set_title('Decoding one token, H=4, C=32, CPU')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == '__main__':
    main()
