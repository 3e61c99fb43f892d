"""Property-based tests (hypothesis) over random forests: spec section 5."""
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.testing import (
    dense_output,
    nested_to_forest,
    random_qkv,
    renumber,
)

trees = st.recursive(st.just('leaf'),
                     lambda children: st.lists(children, min_size=1,
                                               max_size=5), max_leaves=24)
forests = st.lists(trees, min_size=1, max_size=3)
SETTINGS = settings(max_examples=150, deadline=None)


def build(roots, seed):
    return nested_to_forest(roots, np.random.default_rng(seed))


# (resolution, self_loops, causal): paper HSA and query-resolved HSA.
MODES = [('block', False, False), ('block', True, False),
         ('query', False, False), ('query', True, False),
         ('query', True, True)]


@settings(max_examples=300, deadline=None)
@given(forests, st.integers(0, 2**16), st.sampled_from(MODES),
       st.sampled_from([None, 'shared', 'per_head']))
def test_dynamic_program_equals_dense(roots, seed, mode, pos_kind):
    resolution, self_loops, causal = mode
    parent, num_leaves = build(roots, seed)
    q, k, v = random_qkv(num_leaves, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    pos = None if pos_kind is None else torch.randn(
        (parent.numel(), 2) if pos_kind == 'shared' else
        (parent.numel(), 2, 2), generator=gen, dtype=torch.float64)
    tree = Tree.from_parent(parent, num_leaves)
    options = dict(pe=pos, self_loops=self_loops, resolution=resolution,
                   causal=causal)
    out = hsa_attention(q, k, v, tree, **options)
    theta = hsa_dense(q, k, tree, **options)
    torch.testing.assert_close(out, dense_output(theta, v), rtol=0,
                               atol=1e-10)
    # Rows are stochastic wherever a leaf has someone to attend to.
    alone = torch.bincount(tree.batch)[tree.batch] == 1
    expected = (~alone | self_loops).to(theta.dtype)
    torch.testing.assert_close(theta.sum(-1), expected.expand_as(
        theta.sum(-1)), rtol=0, atol=1e-12)


@SETTINGS
@given(forests, st.integers(0, 2**16), st.booleans())
def test_each_root_alone_equals_the_batch(roots, seed, self_loops):
    parent, num_leaves = build(roots, seed)
    q, k, v = random_qkv(num_leaves, seed=seed)
    out = hsa_attention(q, k, v, parent, self_loops=self_loops)
    tree = Tree.from_parent(parent, num_leaves)
    assert tree.num_roots == len(roots)
    for r in range(tree.num_roots):
        mask = tree.batch == r
        sub = hsa_attention(q[mask], k[mask], v[mask],
                            _restrict(parent, num_leaves, mask),
                            self_loops=self_loops)
        torch.testing.assert_close(sub, out[mask], rtol=0, atol=1e-12)


def _restrict(parent, num_leaves, leaf_mask):
    """The sub-forest above the masked leaves, renumbered (leaves first)."""
    keep = torch.zeros(parent.numel(), dtype=torch.bool)
    node = torch.arange(num_leaves)[leaf_mask]
    while node.numel():
        keep[node] = True
        node = parent[node]
        node = node[node >= 0]
    new = torch.full((parent.numel(), ), -1, dtype=torch.long)
    new[keep] = torch.arange(int(keep.sum()))
    kept = keep.nonzero().view(-1)
    return torch.where(parent[kept] >= 0, new[parent[kept].clamp(min=0)], -1)


@SETTINGS
@given(forests, st.integers(0, 2**16), st.booleans())
def test_equivariance_to_renumbering(roots, seed, self_loops):
    rng = np.random.default_rng(seed)
    parent, num_leaves = build(roots, seed)
    num_nodes = parent.numel()
    q, k, v = random_qkv(num_leaves, seed=seed)
    pos = torch.randn(num_nodes, 3, dtype=torch.float64)
    out = hsa_attention(q, k, v, parent, pe=pos, self_loops=self_loops)
    perm, new_parent = renumber(parent, num_leaves, rng)
    lp = perm[:num_leaves]
    out_new = hsa_attention(q[lp], k[lp], v[lp], new_parent, pe=pos[perm],
                            self_loops=self_loops)
    torch.testing.assert_close(out_new, out[lp], rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(forests, st.integers(0, 2**16), st.booleans(),
       st.sampled_from([1.0, 100.0]))
def test_outputs_and_gradients_are_finite(roots, seed, self_loops, mag):
    parent, num_leaves = build(roots, seed)
    q, k, v = random_qkv(num_leaves, channels=1, dtype=torch.float32,
                         seed=seed, magnitude=mag)
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    out = hsa_attention(q, k, v, parent, self_loops=self_loops)
    assert bool(out.isfinite().all())
    out.sum().backward()
    for grad in (q.grad, k.grad, v.grad):
        assert bool(grad.isfinite().all())


def complete(branching: int, depth: int):
    return 'leaf' if depth == 0 else [complete(branching, depth - 1)
                                      ] * branching


# Complete trees make every level one reshape of the level above: the paths
# with custom backward passes (pooling, deferred values) that random forests
# reach only on small levels.
balanced = st.builds(lambda b, depth, roots: [complete(b, depth)] * roots,
                     st.integers(1, 5), st.integers(1, 3), st.integers(1, 2))


@settings(max_examples=100, deadline=None)
@given(st.one_of(forests, balanced), st.integers(0, 2**16), st.booleans(),
       st.sampled_from([None, 'shared', 'per_head']))
def test_gradients_equal_the_dense_gradients(roots, seed, self_loops,
                                             pos_kind):
    parent, num_leaves = build(roots, seed)
    tree = Tree.from_parent(parent, num_leaves)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = random_qkv(num_leaves, seed=seed)
    inputs = [q, k, v]
    if pos_kind is not None:
        inputs.append(torch.randn(
            (parent.numel(), 2) if pos_kind == 'shared' else
            (parent.numel(), 2, 2), generator=gen, dtype=torch.float64))
    inputs = [x.requires_grad_() for x in inputs]
    pos = inputs[3] if pos_kind is not None else None
    weight = torch.randn(v.shape, generator=gen, dtype=torch.float64)

    out = hsa_attention(q, k, v, tree, pe=pos, self_loops=self_loops)
    grads = torch.autograd.grad((out * weight).sum(), inputs,
                                allow_unused=True)
    dense = dense_output(hsa_dense(q, k, tree, pe=pos,
                                   self_loops=self_loops), v)
    expected = torch.autograd.grad((dense * weight).sum(), inputs,
                                   allow_unused=True)
    for grad, reference, x in zip(grads, expected, inputs):
        grad = torch.zeros_like(x) if grad is None else grad
        reference = torch.zeros_like(x) if reference is None else reference
        torch.testing.assert_close(grad, reference, rtol=0, atol=1e-10)
