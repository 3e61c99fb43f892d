"""Block resolution on packed families (functional/block_families.py)
against the level-by-level dynamic program, its plan, its routing, and the
number of operations it dispatches."""
import math

import numpy as np
import pytest
import torch

from pyg_hsa import Tree, hsa_attention
from pyg_hsa.functional import block_families
from pyg_hsa.testing import count_aten_ops, random_forest, random_qkv


def forest_batch(num_trees: int, seed: int = 0):
    """A batch of small random trees (molecule-like: depth <= 3)."""
    rng = np.random.default_rng(seed)
    return Tree.from_parent(*random_forest(
        rng, max_depth=3, max_branch=6, num_roots=num_trees,
        max_leaves=12 * num_trees))


def run(tree, inputs, **options):
    q, k, v, pos, scale = inputs
    out = hsa_attention(q, k, v, tree, pe=pos, scale=scale, **options)
    wanted = [x for x in inputs if isinstance(x, torch.Tensor) and
              x.requires_grad]
    return out, torch.autograd.grad(out.square().sum(), wanted)


@pytest.mark.parametrize('seed', range(10))
@pytest.mark.parametrize('self_loops', [False, True])
def test_families_equal_levels(seed, self_loops, monkeypatch):
    rng = np.random.default_rng(seed)
    tree = None
    while tree is None or tree.num_leaves < 8:  # (some draws are tiny)
        tree = Tree.from_parent(*random_forest(
            rng, max_depth=5, max_branch=7, num_roots=1 + seed % 3,
            max_leaves=60, unary_prob=0.2))
    assert block_families.family_plan(tree, self_loops) is not None
    q, k, v = random_qkv(tree.num_leaves, seed=seed)
    pos = None
    if seed % 3:
        shape = (tree.num_nodes, 3) if seed % 3 == 1 else \
            (tree.num_nodes, 2, 3)
        pos = torch.randn(shape, dtype=torch.float64)
    scale = torch.tensor(0.8, dtype=torch.float64) if seed % 2 else None
    inputs = [x if x is None else x.clone().requires_grad_()
              for x in (q, k, v, pos, scale)]
    out, grads = run(tree, inputs, self_loops=self_loops)
    monkeypatch.setattr(block_families, 'FAMILY_ELEMENTS', 0)
    assert block_families.family_plan(tree, self_loops) is None
    out_ref, grads_ref = run(tree, inputs, self_loops=self_loops)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-12)
    for grad, ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, ref, rtol=0, atol=1e-10)


def test_second_derivatives_through_families():
    tree = Tree.from_parent(torch.tensor([5, 5, 6, 6, 6, 7, 7, -1]))
    q, k, v = (x.requires_grad_() for x in random_qkv(tree.num_leaves,
                                                       seed=3))
    assert block_families.family_plan(tree, True) is not None
    assert torch.autograd.gradgradcheck(
        lambda q, k, v: hsa_attention(q, k, v, tree, self_loops=True),
        (q, k, v))


@pytest.mark.parametrize('seed', range(5))
def test_packing_places_each_family_once(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 17, size=int(rng.integers(1, 80))).tolist()
    rows, offsets = block_families._pack(sizes, 16)
    taken = set()
    for size, row, offset in zip(sizes, rows, offsets):
        assert 0 <= offset and offset + size <= 16
        cells = {(row, offset + i) for i in range(size)}
        assert not cells & taken
        taken |= cells
    # Best fit decreasing is within 11/9 of the fewest rows, plus one.
    fewest = math.ceil(sum(sizes) / 16)
    assert max(rows) + 1 <= math.ceil(11 / 9 * fewest) + 1


@pytest.mark.parametrize('self_loops', [False, True])
def test_bias_keeps_packed_families_apart(self_loops):
    # In every packed row, a real slot sees exactly the other members of
    # its family (and itself, if a leaf with self loops), each with the
    # log of its number of leaves; families sit in contiguous slots.
    tree = forest_batch(8, seed=1)
    plan = block_families.family_plan(tree, self_loops)
    width = plan.slot_node.size(1)
    num_nodes = plan.node_slot.numel()
    parent = torch.full((num_nodes, ), -1)  # in the plan's numbering
    for d, up in enumerate(plan.level_parent, start=1):
        lo, hi = plan.level_ptr[d], plan.level_ptr[d + 1]
        parent[lo:hi] = up + plan.level_ptr[d - 1]
    leaves_below = plan.means[0].crow_indices().diff()
    is_leaf = plan.order < plan.num_leaves  # (leaves keep the first ids)
    members = (~plan.alone).nonzero().view(-1)
    slot = plan.node_slot[members]
    node_at = dict(zip(slot.tolist(), members.tolist()))
    bias = plan.bias[:, 0].reshape(-1, width)  # [rows * W, W]
    for s, node in node_at.items():
        row = s // width
        seen = torch.isfinite(bias[s]).nonzero().view(-1).tolist()
        family = sorted(t for t, n in node_at.items() if t // width == row
                        and parent[n] == parent[node] and
                        (parent[node] >= 0 or n == node))
        expected = [t % width for t in family if t != s or (
            self_loops and bool(is_leaf[node]))]
        assert seen == expected
        assert family == list(range(family[0], family[0] + len(family)))
        for t in expected:
            n = node_at[row * width + t]
            assert float(bias[s, t]) == pytest.approx(
                math.log(int(leaves_below[n])))


def test_routing_on_cpu(monkeypatch):
    monkeypatch.setattr(block_families, 'MAX_UNIFORM_LEAVES', 16)
    monkeypatch.setattr(block_families, 'MAX_LEAVES', 40)
    # Uniform (complete binary) trees: families up to 16 leaves.
    def complete(n):
        parents, start, width = [], 0, n
        while width > 1:
            parents.append(start + width + torch.arange(width) // 2)
            start, width = start + width, width // 2
        return Tree.from_parent(torch.cat(parents + [torch.tensor([-1])]))
    assert block_families.family_plan(complete(16), False) is not None
    assert block_families.family_plan(complete(32), False) is None
    # Uniform level by level (a root with fewer children) is uniform too.
    parent = torch.cat([32 + torch.arange(32) // 4, 40 + torch.arange(8) // 4,
                        torch.tensor([42, 42, -1])])  # 4, 4, then 2
    assert block_families.family_plan(Tree.from_parent(parent),
                                      False) is None
    # Irregular trees: up to 40 leaves.
    assert block_families.family_plan(forest_batch(2), False) is not None
    assert block_families.family_plan(forest_batch(8), False) is None
    # A family wider than MAX_WIDTH: never.
    flat = Tree.from_parent(torch.cat([torch.full((65, ), 65),
                                       torch.tensor([-1])]))
    assert block_families.family_plan(flat, False) is None


@pytest.mark.parametrize('options,bound', [({}, 115), (dict(
    resolution='query', self_loops=True), 60)])
def test_operations_per_call_do_not_grow_with_the_batch(options, bound):
    # Molecule-like batches (depth 3): the dispatched operations of one
    # forward + backward call depend on the depth, not on the number or
    # the shapes of the trees.
    counts = []
    for num_trees, seed in ((8, 0), (32, 1), (64, 2)):
        tree = forest_batch(num_trees, seed)
        q, k, v = (torch.randn(tree.num_leaves, 4, 16, requires_grad=True)
                   for _ in range(3))

        def step():
            hsa_attention(q, k, v, tree, **options).sum().backward()
        step()  # (plans built once per tree)
        counts.append(count_aten_ops(step))
    assert max(counts) <= bound
    assert max(counts) - min(counts) <= 8  # (one more level at most)
