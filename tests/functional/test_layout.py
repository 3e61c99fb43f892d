"""The level-order layout: unary chains contracted exactly, families in
buckets (views where they are back to back), and the sliced index
operations."""
import itertools

import numpy as np
import pytest
import torch

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.functional import layout as layout_module
from pyg_hsa.functional import level_ops
from pyg_hsa.functional.layout import (
    _merge_narrow,
    contract_unary_chains,
    layout_of,
)
from pyg_hsa.functional.level_ops import copy_nodes_, select_nodes
from pyg_hsa.testing import dense_output, random_forest, random_qkv


def test_unary_chains_are_contracted():
    # Leaves 0..3; 4 = {0, 1}; 5 = {4} (unary, internal child); 6 = {2}
    # (unary, leaf child); 7 = root {5, 6, 3}.
    parent = torch.tensor([4, 4, 6, 7, 5, 7, 7, -1])
    kept, new_parent, rep = contract_unary_chains(parent, 4, False)
    assert kept.tolist() == [0, 1, 2, 3, 4, 7]
    # 4 takes 5's place (and position) under 7; leaf 2 takes 6's.
    assert kept[new_parent.clamp(min=0)].tolist()[:5] == [4, 4, 7, 7, 7]
    assert rep.tolist() == [0, 1, 6, 3, 5, 7]
    # With self loops, leaf 2 keeps its parent 6 (it attends to itself
    # there); 5 still goes.
    kept, _, rep = contract_unary_chains(parent, 4, True)
    assert kept.tolist() == [0, 1, 2, 3, 4, 6, 7]
    assert rep.tolist() == [0, 1, 2, 3, 5, 6, 7]


def test_a_long_chain_contracts_to_its_leaf():
    depth = 2000  # pointer jumping, not one step per level
    parent = torch.cat([torch.arange(1, depth + 1), torch.tensor([-1])])
    tree = Tree.from_parent(parent, 1)
    layout = layout_of(tree, False)
    assert layout.num_nodes == 1 and layout.depth == 0
    q, k, v = random_qkv(1, seed=0)
    assert bool((hsa_attention(q, k, v, tree) == 0).all())
    torch.testing.assert_close(hsa_attention(q, k, v, tree,
                                             self_loops=True), v)


@pytest.mark.parametrize('seed', range(20))
def test_contraction_changes_nothing(seed):
    # Long unary chains with positions on every node: the node that takes
    # a removed parent's place uses the parent's position.
    rng = np.random.default_rng(seed)
    parent, num_leaves = random_forest(rng, max_depth=6, max_branch=4,
                                       num_roots=2, unary_prob=0.5)
    tree = Tree.from_parent(parent, num_leaves)
    q, k, v = random_qkv(num_leaves, seed=seed)
    pos = torch.randn(parent.numel(), 2, 3, dtype=torch.float64)
    for self_loops in (False, True):
        out = hsa_attention(q, k, v, tree, pe=pos, self_loops=self_loops)
        theta = hsa_dense(q, k, tree, pe=pos, self_loops=self_loops)
        torch.testing.assert_close(out, dense_output(theta, v), rtol=0,
                                   atol=1e-10)


def test_equal_families_back_to_back_are_views(monkeypatch):
    monkeypatch.setattr(layout_module, 'SPAN_MIN_NODES', 16)
    # A complete 4-ary tree of 64 leaves: every family of every level one
    # view bucket (the root's children are the only family of their level).
    parent, start, width = [], 0, 64
    while width > 1:
        parent.append(start + width + torch.arange(width) // 4)
        start, width = start + width, width // 4
    tree = Tree.from_parent(torch.cat(parent + [torch.tensor([-1])]), 64)
    buckets = layout_of(tree, False).buckets
    assert [b.start is not None for b in buckets] == [True]
    assert buckets[0].index.shape == (21, 4)


def test_a_level_of_mixed_families_keeps_large_equal_runs_as_views(
        monkeypatch):
    monkeypatch.setattr(layout_module, 'SPAN_MIN_NODES', 12)
    # Under one root: four families of 3 leaves and two of 2 (each under a
    # group node). The families of 3 are sorted first in their level and
    # lie back to back: a view; the families of 2 are gathered.
    groups = [3, 3, 2, 3, 2, 3]
    parent = []
    for g, size in enumerate(groups):
        parent += [16 + g] * size
    parent += [22] * len(groups) + [-1]
    tree = Tree.from_parent(torch.tensor(parent), 16)
    buckets = layout_of(tree, False).buckets
    views = [b for b in buckets if b.start is not None]
    assert [(b.width, b.index.size(0)) for b in views] == [(3, 4)]
    # The rest (two families of 2, the root's family of 6) is gathered.
    gathered = [b for b in buckets if b.start is None]
    assert sum(int(b.valid.sum()) for b in gathered) == 10


def test_bucket_merging_is_optimal():
    # Brute force over every partition of the sorted sizes into runs.
    rng = np.random.default_rng(0)
    for _ in range(30):
        sizes = sorted(rng.choice(np.arange(2, 30), size=int(
            rng.integers(1, 7)), replace=False).tolist())
        groups = [(s, torch.zeros(int(rng.integers(1, 5000))), False)
                  for s in sizes]

        def cost(runs):
            return sum(
                layout_module.BUCKET_OVERHEAD + sum(g[1].numel() for g in run)
                * layout_module.NOMINAL_HEADS *
                (10 * run[-1][0]**2 + 4 * layout_module.NOMINAL_CHANNELS *
                 run[-1][0]) for run in runs)

        best = min(
            cost([groups[a:b] for a, b in zip((0, ) + cuts,
                                              cuts + (len(groups), ))])
            for r in range(len(groups))
            for cuts in itertools.combinations(range(1, len(groups)), r))
        assert cost(_merge_narrow(groups)) == pytest.approx(best)


def test_sliced_index_operations_equal_the_plain_ones(monkeypatch):
    monkeypatch.setattr(level_ops, 'SLICED_INDEXING', 1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 50, 4, generator=gen)
    index = torch.randint(0, 50, (30, ), generator=gen)
    torch.testing.assert_close(select_nodes(x, index),
                               x.index_select(1, index), rtol=0, atol=0)
    target = torch.randperm(50, generator=gen)[:30]
    src = torch.randn(6, 30, 4, generator=gen)
    expected = x.clone().index_copy_(1, target, src)
    torch.testing.assert_close(copy_nodes_(x.clone(), target, src),
                               expected, rtol=0, atol=0)
    # Under autograd the plain operation is taken (the sliced one writes
    # into its output).
    y = x.clone().requires_grad_()
    assert select_nodes(y, index).grad_fn is not None
