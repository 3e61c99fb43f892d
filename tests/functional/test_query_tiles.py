"""The tiled path of query-resolved HSA (functional/query_tiles.py) against
the family-by-family path and the dense matrix, and its plan."""
import numpy as np
import pytest
import torch

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.testing import dense_output, random_forest, random_qkv
import pyg_hsa.functional.query_tiles as query_tiles

MODES = [(False, False), (True, False), (True, True)]  # self_loops, causal


def run(tree, inputs, self_loops, causal):
    q, k, v, pos = inputs
    out = hsa_attention(q, k, v, tree, pe=pos, self_loops=self_loops,
                        causal=causal, resolution='query')
    wanted = [x for x in inputs if x is not None]
    if not out.requires_grad:  # no leaf sees a block (one-leaf trees)
        return out, [torch.zeros_like(x) for x in wanted]
    grads = torch.autograd.grad(out.square().sum(), wanted,
                                allow_unused=True, materialize_grads=True)
    return out, grads


@pytest.mark.parametrize('seed', range(12))
@pytest.mark.parametrize('mode', MODES)
def test_tiles_equal_families_and_dense(seed, mode, monkeypatch):
    rng = np.random.default_rng(seed)
    parent, num_leaves = random_forest(rng, max_leaves=40,
                                       num_roots=1 + seed % 3)
    tree = Tree.from_parent(parent, num_leaves)
    assert query_tiles.tile_plan(tree, mode[1], mode[0]) is not None
    q, k, v = random_qkv(num_leaves, seed=seed)
    pos = None
    if seed % 2:
        shape = (tree.num_nodes, 2) if seed % 4 == 1 else \
            (tree.num_nodes, 2, 2)
        pos = torch.randn(shape, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(seed))
    inputs = [None if x is None else x.clone().requires_grad_()
              for x in (q, k, v, pos)]
    out, grads = run(tree, inputs, *mode)
    monkeypatch.setattr(query_tiles, 'TILE_ELEMENTS', 0)
    assert query_tiles.tile_plan(tree, mode[1], mode[0]) is None
    out_ref, grads_ref = run(tree, inputs, *mode)
    torch.testing.assert_close(out, out_ref, atol=1e-12, rtol=1e-10)
    for grad, ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, ref, atol=1e-12, rtol=1e-10)
    if pos is None:
        theta = hsa_dense(q, k, tree, self_loops=mode[0],
                          resolution='query', causal=mode[1])
        torch.testing.assert_close(out.detach(), dense_output(theta, v),
                                   atol=1e-12, rtol=1e-10)


def test_leaves_without_blocks_get_zero():
    # A lone leaf under its own root, and a leaf that is a root: without
    # self loops neither sees any block.
    parent = torch.tensor([4, 4, 5, -1, -1, -1])  # leaf 3 is a root
    tree = Tree.from_parent(parent, 4)
    num_leaves = tree.num_leaves
    q, k, v = (x.requires_grad_() for x in random_qkv(num_leaves, seed=1))
    out = hsa_attention(q, k, v, tree, resolution='query')
    lone = [2, 3]
    assert torch.equal(out[lone], torch.zeros_like(out[lone]))
    out.square().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_depth_first_order_keeps_ordered_trees():
    # Windows over a sequence: leaves already depth first, rows in order.
    parent = torch.cat([16 + torch.arange(16) // 4, 20 + torch.arange(4) // 2,
                        torch.tensor([22, 22, -1])])
    plan = query_tiles.build_tile_plan(parent, 16, causal=False,
                                       self_loops=True)
    assert torch.equal(plan.leaf_row, torch.arange(16))
    # Shuffled leaf ids: rows still follow the tree, not the ids.
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    shuffled = parent.clone()
    shuffled[perm] = parent[:16]
    plan = query_tiles.build_tile_plan(shuffled, 16, causal=False,
                                       self_loops=True)
    rows = plan.leaf_row[perm].view(4, 4).sort(1).values
    assert torch.equal(rows - rows[:, :1], torch.arange(4).expand(4, 4))
    assert torch.equal(rows[:, 0].sort().values, torch.arange(0, 16, 4))


def test_tile_choice_and_bias():
    parent, num_leaves = random_forest(np.random.default_rng(3),
                                       max_leaves=48, num_roots=3)
    plan = query_tiles.build_tile_plan(parent, num_leaves, False, False)
    assert plan.tile in query_tiles.TILE_SIZES
    tiles, width = plan.key_node.shape
    assert plan.bias.shape == (tiles, 1, plan.tile, width)
    # Every pair's bias is log n(B) >= 0; each seen slot is one pair.
    tile, row, slot, _, b = plan.pairs
    # Rows that see nothing (pads, leaves without blocks) see slot 0 alone.
    rows_seeing = torch.unique(tile * plan.tile + row).numel()
    assert int(torch.isfinite(plan.bias).sum()) == tile.numel() + \
        tiles * plan.tile - rows_seeing
    assert torch.equal(plan.key_node[tile, slot], b)


def test_second_derivatives_through_tiles():
    parent, num_leaves = random_forest(np.random.default_rng(5),
                                       max_leaves=8)
    tree = Tree.from_parent(parent, num_leaves)
    q, k, v = (x.requires_grad_() for x in random_qkv(num_leaves, seed=2))

    def f(q, k, v):
        return hsa_attention(q, k, v, tree, resolution='query',
                             self_loops=True)
    assert torch.autograd.gradgradcheck(f, (q, k, v))


def test_routing_on_cpu(monkeypatch):
    # Tiles up to MAX_LEAVES leaves, MAX_UNIFORM_LEAVES for uniform trees
    # (whose families the family-by-family kernel reads as slices).
    monkeypatch.setattr(query_tiles, 'MAX_UNIFORM_LEAVES', 8)
    monkeypatch.setattr(query_tiles, 'MAX_LEAVES', 40)
    uniform = Tree.from_parent(torch.cat([16 + torch.arange(16) // 4,
                                          torch.tensor([20] * 4 + [-1])]))
    assert query_tiles.tile_plan(uniform, False, True) is None
    parent, num_leaves = random_forest(np.random.default_rng(0),
                                       max_leaves=30)
    irregular = Tree.from_parent(parent, num_leaves)
    assert 8 < num_leaves <= 40
    assert query_tiles.tile_plan(irregular, False, True) is not None
