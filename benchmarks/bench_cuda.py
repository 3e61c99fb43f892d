"""HSA on a GPU: correctness against CPU float64, then latency against
``scaled_dot_product_attention`` on its fastest path (4-D ``[B, H, N, C]``
inputs: flash attention on CUDA) in the same run.

    python benchmarks/bench_cuda.py               # on a CUDA machine
    python benchmarks/bench_cuda.py --device cpu --smoke   # a dry run

Times are the best of a few synchronised runs after a warm-up; peak memory
is ``torch.cuda.max_memory_allocated`` of the cell. Complete 8- and 32-ary
trees as in ``bench_hsa.py``, and batches of 32 and 512 NCI molecules
(``MoleculeToHierarchy``) against SDPA over each molecule's atoms, padded
with a key mask.
"""
import argparse
import time

import numpy as np
import torch
from bench_hsa import CHANNELS, HEADS, balanced_parent, hierarchy

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.nn import HSAConv
from pyg_hsa.testing import random_forest


def correctness(device: str, num_forests: int) -> None:
    worst = {'float64': 0.0, 'float32': 0.0, 'dense64': 0.0, 'grad64': 0.0}
    for seed in range(num_forests):
        rng = np.random.default_rng(seed)
        parent, n = random_forest(rng, max_depth=1 + seed % 6,
                                  max_branch=2 + seed % 12,
                                  num_roots=1 + seed % 3)
        gen = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(n, 2, 4, generator=gen, dtype=torch.float64)
                   for _ in range(3))
        pos = torch.randn(parent.numel(), 2, 3, generator=gen,
                          dtype=torch.float64)
        self_loops = seed % 2 == 0
        cpu_tree = Tree.from_parent(parent, n)
        ref = hsa_attention(q, k, v, cpu_tree, pe=pos, self_loops=self_loops)
        tree = cpu_tree.to(device)
        on = [x.to(device).clone().requires_grad_() for x in (q, k, v, pos)]
        out = hsa_attention(*on[:3], tree, pe=on[3], self_loops=self_loops)
        out.square().sum().backward()
        qc = q.detach().clone().requires_grad_()
        hsa_attention(qc, k, v, cpu_tree, pe=pos,
                      self_loops=self_loops).square().sum().backward()
        out32 = hsa_attention(*(x.detach().float() for x in on[:3]), tree,
                              pe=on[3].detach().float(),
                              self_loops=self_loops)
        theta = hsa_dense(on[0].detach(), on[1].detach(), tree,
                          pe=on[3].detach(), self_loops=self_loops)
        dense = torch.einsum('hij,jhc->ihc', theta, on[2].detach())
        worst['float64'] = max(worst['float64'],
                               (out.detach().cpu() - ref).abs().max().item())
        worst['float32'] = max(worst['float32'],
                               (out32.double().cpu() - ref).abs().max().item())
        worst['dense64'] = max(worst['dense64'],
                               (dense.cpu() - ref).abs().max().item())
        worst['grad64'] = max(worst['grad64'],
                              (on[0].grad.cpu() - qc.grad).abs().max().item())
        assert bool(out.isfinite().all()) and bool(on[0].grad.isfinite().all())
    print(f'Correctness on {device}, {num_forests} random forests, largest '
          f'|difference| to CPU float64: ' +
          ', '.join(f'{k} {v:.1e}' for k, v in worst.items()))

    # A layer under bfloat16 autocast stays within a documented tolerance.
    parent, n = random_forest(np.random.default_rng(0), max_depth=4,
                              max_branch=8)
    tree = Tree.from_parent(parent, n).to(device)
    conv = HSAConv(16, 8, heads=2).to(device)
    x = torch.randn(n, 16, device=device)
    ref = conv(x, tree)
    with torch.autocast(device_type=torch.device(device).type,
                        dtype=torch.bfloat16):
        low = conv(x, tree)
    print(f'HSAConv bfloat16 autocast vs float32 on {device}: largest '
          f'|difference| {(low.float() - ref).abs().max().item():.1e} '
          f'(outputs of magnitude {ref.abs().max().item():.1f})')


def timed(fn, device, repeats):
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    fn()
    sync()
    best = float('inf')
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def timings(device: str, sizes, repeats: int, sdpa_limit: int) -> None:
    print('\n| method | pass | leaves | time (ms) | us/leaf | peak memory '
          '(MB) | Tree build (ms) |\n| --- | --- | --- | --- | --- | --- '
          '| --- |')
    for backward in (False, True):
        for n in sizes:
            for method, branching in (('sdpa', 0), ('hsa', 8), ('hsa', 32)):
                if method == 'sdpa' and n > sdpa_limit:
                    continue
                build = ''
                if method == 'hsa':
                    start = time.perf_counter()
                    tree = Tree.from_parent(
                        balanced_parent(branching, n).to(device), n)
                    if device == 'cuda':
                        torch.cuda.synchronize()
                    build = f'{(time.perf_counter() - start) * 1e3:.1f}'
                q, k, v = (torch.randn(n, HEADS, CHANNELS, device=device,
                                       requires_grad=backward)
                           for _ in range(3))

                def run():
                    if method == 'sdpa':  # 4-D: the fused kernels
                        out = torch.nn.functional.scaled_dot_product_attention(
                            *(x.transpose(0, 1).unsqueeze(0)
                              for x in (q, k, v)))
                    else:
                        out = hsa_attention(q, k, v, tree)
                    if backward:
                        out.sum().backward()

                if device == 'cuda':
                    torch.cuda.reset_peak_memory_stats()
                try:
                    t = timed(run, device, repeats)
                except torch.OutOfMemoryError:
                    print(f'| {method} | {n} | out of memory |')
                    continue
                peak = (torch.cuda.max_memory_allocated() / 2**20
                        if device == 'cuda' else float('nan'))
                name = method + (f' b={branching}' if branching else '')
                print(f"| {name} | {'fwd+bwd' if backward else 'fwd'} | {n} "
                      f'| {t * 1e3:.2f} | {t / n * 1e6:.3f} | {peak:.0f} '
                      f'| {build} |', flush=True)
                if device == 'cuda':
                    torch.cuda.empty_cache()


def molecule_timings(device: str, batches, repeats: int) -> None:
    """HSA on molecule batches against padded SDPA, fwd+bwd."""
    print('\n| molecules | atoms | HSA (ms) | padded SDPA (ms) | ratio |\n'
          '| --- | --- | --- | --- | --- |')
    for batch in batches:
        tree, _, lengths = hierarchy('molecules', batch)
        tree = tree.to(device)
        n, width = tree.num_leaves, int(lengths.max())
        q, k, v = (torch.randn(n, HEADS, CHANNELS, device=device,
                               requires_grad=True) for _ in range(3))
        qp, kp, vp = (torch.randn(batch, HEADS, width, CHANNELS,
                                  device=device, requires_grad=True)
                      for _ in range(3))
        mask = (torch.arange(width) < lengths.view(-1, 1)).view(
            batch, 1, 1, width).to(device)

        def hsa():
            hsa_attention(q, k, v, tree).sum().backward()

        def sdpa():
            torch.nn.functional.scaled_dot_product_attention(
                qp, kp, vp, attn_mask=mask).sum().backward()

        t_hsa, t_sdpa = timed(hsa, device, repeats), timed(sdpa, device,
                                                           repeats)
        print(f'| {batch} | {n} | {t_hsa * 1e3:.2f} | {t_sdpa * 1e3:.2f} | '
              f'{t_hsa / t_sdpa:.2f} |', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--smoke', action='store_true')
    args = parser.parse_args()
    if args.device == 'cuda':
        print(torch.cuda.get_device_name(), 'torch', torch.__version__)
    correctness(args.device, 4 if args.smoke else 40)
    sizes = [2**10, 2**12] if args.smoke else [
        2**10, 2**12, 2**14, 2**16, 2**18, 2**20, 2**22
    ]
    timings(args.device, sizes, 1 if args.smoke else 3,
            sdpa_limit=2**12 if args.smoke else 2**18)
    molecule_timings(args.device, [4] if args.smoke else [32, 512],
                     1 if args.smoke else 10)


if __name__ == '__main__':
    main()
