"""The tree sums: pooling up (SubtreeSums) and summing down (PathSums,
GatedPathSums), against brute force on random forests; each is the other's
adjoint, so each is the other's backward pass."""
import numpy as np
import pytest
import torch

from pyg_hsa import Tree
from pyg_hsa.functional import level_ops
from pyg_hsa.functional.layout import layout_of
from pyg_hsa.functional.tree_sums import (
    GatedPathSums,
    PathSums,
    SubtreeSums,
)
from pyg_hsa.testing import random_forest, root_paths


@pytest.fixture(params=['one call', 'sliced'])
def indexing(request, monkeypatch):
    """Runs a test with index operations as one call and, forced, one 2-D
    slice at a time (the path large trees take)."""
    if request.param == 'sliced':
        monkeypatch.setattr(level_ops, 'SLICED_INDEXING', 1)
    return request.param


def case(seed, self_loops):
    rng = np.random.default_rng(seed)
    parent, num_leaves = random_forest(rng, max_depth=1 + seed % 6,
                                       max_branch=2 + seed % 7,
                                       num_roots=1 + seed % 3,
                                       unary_prob=0.25)
    tree = Tree.from_parent(parent, num_leaves)
    return parent, num_leaves, layout_of(tree, self_loops)


def below_and_paths(parent, num_leaves, layout):
    """Brute force: the user leaves below every level-order node, and the
    level-order nodes on every leaf's path."""
    user_to_level = {int(u): i for i, u in enumerate(layout.node)}
    below = [[] for _ in range(layout.num_nodes)]
    paths = []
    for path in root_paths(parent, num_leaves):
        kept = [user_to_level[u] for u in path if u in user_to_level]
        paths.append(kept)
        for node in kept:
            below[node].append(path[-1])
    return below, paths


@pytest.mark.parametrize('seed', range(12))
def test_subtree_and_path_sums_against_brute_force(seed, indexing):
    parent, num_leaves, layout = case(seed, self_loops=bool(seed % 2))
    below, paths = below_and_paths(parent, num_leaves, layout)
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(num_leaves, 2, 3, generator=gen, dtype=torch.float64)
          for _ in range(2)]
    for divide in (False, True):
        sums = SubtreeSums.apply(layout, divide, *xs)  # [2, H, M, C]
        for s, x in enumerate(xs):
            for node, leaves in enumerate(below):
                expected = x[leaves].sum(0)
                if divide:
                    expected = expected / len(leaves)
                torch.testing.assert_close(sums[s, :, node], expected,
                                           rtol=0, atol=1e-12)
        nodes = torch.randn(2, 2, layout.num_nodes, 3, generator=gen,
                            dtype=torch.float64)
        outs = PathSums.apply(layout, divide, nodes)
        size = layout.size.double()
        for s in range(2):
            for leaf, path in enumerate(paths):
                rows = nodes[s, :, path]
                if divide:
                    rows = rows / size[path].view(1, -1, 1)
                torch.testing.assert_close(outs[s][leaf], rows.sum(1),
                                           rtol=0, atol=1e-12)


@pytest.mark.parametrize('seed', range(6))
def test_the_sums_are_adjoint(seed, indexing):
    _, num_leaves, layout = case(seed, self_loops=False)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_leaves, 2, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(1, 2, layout.num_nodes, 3, generator=gen,
                    dtype=torch.float64)
    for divide in (False, True):
        up = SubtreeSums.apply(layout, divide, x)
        down, = PathSums.apply(layout, divide, y)
        torch.testing.assert_close((up * y).sum(), (x * down).sum(),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('seed', range(4))
def test_gradients_and_second_derivatives(seed, indexing):
    _, num_leaves, layout = case(seed, self_loops=True)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_leaves, 2, 2, generator=gen, dtype=torch.float64,
                    requires_grad=True)
    theta = torch.randn(2, layout.num_nodes, 2, generator=gen,
                        dtype=torch.float64, requires_grad=True)
    gain = torch.rand(2, layout.num_nodes, generator=gen,
                      dtype=torch.float64, requires_grad=True)

    def up(x):
        return SubtreeSums.apply(layout, True, x)

    def gated(theta, gain):
        return GatedPathSums.apply(layout, theta, gain)

    assert torch.autograd.gradcheck(up, (x, ))
    assert torch.autograd.gradgradcheck(up, (x, ))
    assert torch.autograd.gradcheck(gated, (theta, gain))
    assert torch.autograd.gradgradcheck(gated, (theta, gain))
    # The gated sums are the path sums of gain * theta.
    expected, = PathSums.apply(layout, False,
                               (gain.unsqueeze(-1) * theta).unsqueeze(0))
    torch.testing.assert_close(gated(theta, gain), expected)
