"""Query-resolved and causal HSA (``resolution='query'``; its dense matrix
against the scipy KL minimiser is in tests/test_dense.py, against the
dynamic computation on hypothesis forests in tests/test_properties.py):
softmax attention on a flat tree, exact causality of the
gradients, the KL order against paper HSA, gradients and errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.testing import nested_to_forest, random_forest, random_qkv
import pyg_hsa.functional.query_resolved as query_resolved

trees = st.recursive(st.just('leaf'),
                     lambda children: st.lists(children, min_size=1,
                                               max_size=5), max_leaves=24)
SETTINGS = settings(max_examples=120, deadline=None)
# (self_loops, causal): causal needs self loops.
MODES = [(False, False), (True, False), (True, True)]


def windows(sizes):
    """A tree over contiguous leaves: ``sizes[0]`` leaves per window, then
    ``sizes[1]`` windows per window, ..., one root (every subtree's leaves
    are contiguous, as in a sequence)."""
    num_leaves = math.prod(sizes)
    parents, start, width = [], 0, num_leaves
    for size in sizes:
        parents.append(start + width + torch.arange(width) // size)
        start, width = start + width, width // size
    return Tree.from_parent(torch.cat(parents + [torch.tensor([-1])]),
                            num_leaves)


def random_pos(kind, num_nodes, heads, seed):
    if kind is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    shape = (num_nodes, 2) if kind == 'shared' else (num_nodes, heads, 2)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize('seed', range(4))
def test_chunked_groups_equal_one_chunk(seed, monkeypatch):
    parent, num_leaves = random_forest(np.random.default_rng(seed),
                                       max_leaves=64, num_roots=2)
    tree = Tree.from_parent(parent, num_leaves)
    q, k, v = random_qkv(num_leaves, seed=seed)
    pos = random_pos('per_head', tree.num_nodes, 2, seed)
    inputs = [x.clone().requires_grad_() for x in (q, k, v, pos)]

    def run():
        out = hsa_attention(*inputs[:3], tree, pe=inputs[3],
                            self_loops=True, resolution='query', causal=True)
        grads = torch.autograd.grad(out.square().sum(), inputs)
        return out, grads

    expected = run()
    monkeypatch.setattr(query_resolved, 'CHUNK_ELEMENTS', 1)
    got = run()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize('num_leaves', [1, 2, 7, 64])
@pytest.mark.parametrize('causal', [False, True])
def test_flat_tree_is_softmax_attention(num_leaves, causal):
    parent = torch.tensor([num_leaves] * num_leaves + [-1]) \
        if num_leaves > 1 else torch.tensor([-1])
    q, k, v = random_qkv(num_leaves, heads=3, channels=4, value_channels=5)
    out = hsa_attention(q, k, v, parent, self_loops=True,
                        resolution='query', causal=causal)
    ref = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
        is_causal=causal).transpose(0, 1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize('sizes', [[4, 4], [2, 3, 2], [8], [1, 5, 3]])
def test_causal_gradients_of_the_future_are_exactly_zero(sizes):
    tree = windows(sizes)
    n = tree.num_leaves
    q, k, v = random_qkv(n, seed=len(sizes))
    pos = random_pos('per_head', tree.num_nodes, 2, 3).requires_grad_()
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = hsa_attention(q, k, v, tree, pe=pos, self_loops=True,
                        resolution='query', causal=True)
    gen = torch.Generator().manual_seed(0)
    for t in range(n):
        weight = torch.randn(out[:t + 1].shape, generator=gen,
                             dtype=out.dtype)
        grads = torch.autograd.grad((weight * out[:t + 1]).sum(),
                                    (q, k, v), retain_graph=True)
        for grad in grads:
            assert bool((grad[t + 1:] == 0).all())
        assert bool((grads[2][:t + 1] != 0).any())  # the past does count
    # And the outputs of a prefix do not depend on what follows it.
    for t in (1, n // 2):
        later = [x.detach().clone() for x in (q, k, v)]
        for x in later:
            x[t:] = torch.randn_like(x[t:])
        changed = hsa_attention(*later, tree, pe=pos, self_loops=True,
                                resolution='query', causal=True)
        assert torch.equal(changed[:t], out[:t])


def kl_rows(theta, q, k, scale):
    """Sum over rows and heads of KL(theta_i || softmax_j(scale q_i k_j))."""
    logits = scale * torch.einsum('ihc,jhc->hij', q, k)
    log_p = torch.log_softmax(logits, -1)
    safe = torch.where(theta > 0, theta, 1.0)
    return float((theta * (safe.log() - log_p)).sum())


@SETTINGS
@given(trees, st.integers(0, 2**16), st.booleans(),
       st.floats(0.2, 3.0))
def test_kl_to_softmax_is_at_most_paper_hsa(root, seed, self_loops,
                                            magnitude):
    parent, num_leaves = nested_to_forest([root],
                                          np.random.default_rng(seed))
    if num_leaves < 2:
        return
    q, k, _ = random_qkv(num_leaves, seed=seed, magnitude=magnitude)
    scale = 1 / math.sqrt(q.size(-1))
    block = hsa_dense(q, k, parent, self_loops=self_loops)
    query = hsa_dense(q, k, parent, self_loops=self_loops,
                      resolution='query')
    # Without self loops both put 0 on the diagonal: leaving it out of the
    # softmax shifts every row's KL by the same constant for both.
    assert kl_rows(query, q, k, scale) <= kl_rows(block, q, k, scale) + 1e-9


@pytest.mark.parametrize('pos_kinds,modes', [
    (['per_head'], [(True, True)]),
    pytest.param([None, 'shared', 'per_head'], MODES,
                 marks=pytest.mark.slow),
])
def test_gradcheck(pos_kinds, modes):
    parent, num_leaves = random_forest(np.random.default_rng(3),
                                       max_leaves=14, num_roots=2)
    tree = Tree.from_parent(parent, num_leaves)
    q, k, v = random_qkv(num_leaves, channels=2, value_channels=2)
    for pos_kind in pos_kinds:
        pos = random_pos(pos_kind, tree.num_nodes, 2, 1)
        for self_loops, causal in modes:
            scale = torch.tensor(0.7, dtype=torch.float64)
            inputs = [x.clone().requires_grad_() for x in
                      (q, k, v, scale) + ((pos, ) if pos is not None else ())]

            def f(q, k, v, scale, *pos):
                return hsa_attention(q, k, v, tree, pe=pos[0] if pos else
                                     None, scale=scale, self_loops=self_loops,
                                     resolution='query', causal=causal)

            assert torch.autograd.gradcheck(f, inputs)


def test_dtypes_follow_the_inputs():
    tree = windows([2, 3])
    q, k, v = random_qkv(6, dtype=torch.float32)
    out = hsa_attention(q, k, v, tree, resolution='query')
    assert out.dtype == torch.float32
    ref = hsa_attention(q.double(), k.double(), v.double(), tree,
                        resolution='query')
    torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-6)


def test_bad_resolution_and_causal_arguments():
    tree = windows([2, 2])
    q, k, v = random_qkv(4)
    with pytest.raises(TypeError, match="'resolution' must be"):
        hsa_attention(q, k, v, tree, resolution=1)
    with pytest.raises(ValueError, match="'resolution' must be"):
        hsa_attention(q, k, v, tree, resolution='row')
    with pytest.raises(ValueError, match='see the future'):
        hsa_attention(q, k, v, tree, self_loops=True, causal=True)
    with pytest.raises(ValueError, match='see the future'):
        hsa_dense(q, k, tree, self_loops=True, causal=True)
    with pytest.raises(ValueError, match='causal=True needs self_loops'):
        hsa_attention(q, k, v, tree, resolution='query', causal=True)
    with pytest.raises(TypeError, match="'causal'"):
        hsa_attention(q, k, v, tree, resolution='query', causal='yes')
    with pytest.raises(ValueError, match='dropout'):
        hsa_attention(q, k, v, tree, resolution='query', dropout=0.1)
    with pytest.raises(ValueError, match='return_attention_weights'):
        hsa_attention(q, k, v, tree, resolution='query',
                      return_attention_weights=True)


@pytest.mark.slow
@pytest.mark.parametrize('causal', [False, True])
def test_query_resolved_compiles(causal):
    torch._dynamo.reset()
    parent, num_leaves = random_forest(np.random.default_rng(5),
                                       max_leaves=30, num_roots=2)
    tree = Tree.from_parent(parent, num_leaves)
    q, k, v = random_qkv(num_leaves)
    pos = random_pos('shared', tree.num_nodes, 2, 0)

    def f(q, k, v):
        return hsa_attention(q, k, v, tree, pe=pos, self_loops=True,
                             resolution='query', causal=causal)

    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    out = torch.compile(f, fullgraph=True)(*inputs)
    grads = torch.autograd.grad(out.square().sum(), inputs)
    eager = [x.clone().requires_grad_() for x in (q, k, v)]
    ref = f(*eager)
    ref_grads = torch.autograd.grad(ref.square().sum(), eager)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grads, ref_grads, rtol=0, atol=1e-12)


def test_second_derivatives():
    parent, num_leaves = random_forest(np.random.default_rng(8),
                                       max_leaves=10)
    tree = Tree.from_parent(parent, num_leaves)
    q, k, v = random_qkv(num_leaves, channels=2, value_channels=2)
    pos = random_pos('shared', tree.num_nodes, 2, 2)
    inputs = [x.clone().requires_grad_() for x in (q, k, v, pos)]

    def f(q, k, v, pos):
        return hsa_attention(q, k, v, tree, pe=pos, self_loops=True,
                             resolution='query', causal=True)

    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('causal', [False, True])
def test_masked_rows_keep_gradients_finite_at_large_logits(causal, dtype):
    # Pad rows of a padded family (widths 2 and 3 in one shape) and, under
    # causal, rows in a family's first child have no weight but got a
    # logit; past ~88 (float32) or ~709 (float64) its exp overflowed and
    # the backward pass computed 0 * inf: NaN gradients of q and k (issue
    # 22). Logits reach +-1e4 here; the reference is float64 from the
    # definition (hsa_dense), where no row overflows after its max.
    tree = Tree.from_parent(torch.tensor([5, 5, 6, 6, 6, 7, 7, -1]), 5)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 2, 4, generator=gen, dtype=torch.float64)
               for _ in range(3))
    q, k = q * 100, k * 100  # scale 1/2: |logits| up to ~1e4
    inputs = [x.to(dtype).requires_grad_() for x in (q, k, v)]
    out = hsa_attention(*inputs, tree, self_loops=causal, causal=causal,
                        resolution='query')
    weight = torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape)
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    assert all(bool(g.isfinite().all()) for g in grads)
    ref_inputs = [x.detach().double().requires_grad_() for x in inputs]
    theta = hsa_dense(*ref_inputs[:2], tree, self_loops=causal,
                      causal=causal, resolution='query')
    ref = torch.einsum('hij,jhc->ihc', theta, ref_inputs[2])
    ref_grads = torch.autograd.grad((ref * weight.double()).sum(),
                                    ref_inputs)
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad.double(), ref_grad, rtol=tol,
                                   atol=tol * (1 + ref_grad.abs().max()))


@pytest.mark.parametrize('causal', [False, True])
def test_several_chunked_families_of_one_shape(causal, monkeypatch):
    # Two flat sequences (one padded shape, two families) whose logits
    # need row chunks: the chunks were non-contiguous slices of the
    # group's [F, R] rows and a .view raised (issue 22: two 1,100-token
    # sequences with 4 heads; a small chunk here keeps it fast).
    # 2 families x 4 heads x 8 members: 64 per row, 2 rows per chunk.
    monkeypatch.setattr(query_resolved, 'CHUNK_ELEMENTS', 128)
    n = 7
    tree = Tree.from_parent(torch.tensor([2 * n] * n + [2 * n + 1] * n +
                                         [-1, -1]), 2 * n)
    q, k, v = random_qkv(2 * n, heads=4, seed=3)
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    out = hsa_attention(*inputs, tree, self_loops=causal, causal=causal,
                        resolution='query')
    grads = torch.autograd.grad(out.square().sum(), inputs)
    ref_inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    theta = hsa_dense(*ref_inputs[:2], tree, self_loops=causal,
                      causal=causal, resolution='query')
    ref = torch.einsum('hij,jhc->ihc', theta, ref_inputs[2])
    ref_grads = torch.autograd.grad(ref.square().sum(), ref_inputs)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grads, ref_grads, rtol=0, atol=1e-12)


def test_single_leaves_without_self_loops_have_zero_gradients():
    # Nothing to attend to: the output is zero, and (as with block
    # resolution) a backward pass through it gives zero gradients instead
    # of 'element 0 of tensors does not require grad' (issue 22's edge
    # matrix, the single-leaf tree).
    for parent in ([-1], [-1, -1]):
        tree = Tree.from_parent(torch.tensor(parent))
        q, k, v = random_qkv(tree.num_leaves)
        inputs = [x.clone().requires_grad_() for x in (q, k, v)]
        out = hsa_attention(*inputs, tree, resolution='query')
        assert bool((out == 0).all())
        for grad in torch.autograd.grad(out.sum(), inputs):
            assert bool((grad == 0).all())
