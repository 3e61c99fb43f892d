"""Numerical robustness beyond tests/test_functional.py: logits of magnitude
1e4 in deep trees and in half-precision inputs, gradients through chains
of depth 64, one-leaf examples in HSAConv, and HSAConv under CPU autocast.

Documented tolerance of autocast (float16 / bfloat16) against float32: the
dynamic program itself runs in float32, so only the projections and the
final cast are in half precision, and
``|out - out_float32| <= tol * (1 + |out_float32|)`` elementwise with
``tol = 1e-2`` for float16 and ``tol = 5e-2`` for bfloat16 (about ten units
in the last place of each format; measured worst cases on random forests
are 2e-3 and 2e-2 for outputs of magnitude ~2).
"""
import numpy as np
import pytest
import torch

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.nn import HSAConv
from pyg_hsa.testing import (
    dense_output,
    nested_to_forest,
    random_forest,
    random_qkv,
)

AUTOCAST_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def caterpillar(depth: int, unary_every: int = 5):
    """A spine of ``depth`` groups, each holding one leaf and the next
    group (the deepest holds two leaves); every ``unary_every``-th link of
    the spine goes through a single-child group."""
    item = ['leaf', 'leaf']
    for level in range(depth - 1):
        item = ['leaf', [item] if level % unary_every == 0 else item]
    parent, num_leaves = nested_to_forest([item], np.random.default_rng(0))
    return parent, num_leaves


def test_caterpillar_of_depth_64_matches_dense_with_gradients():
    parent, num_leaves = caterpillar(64)
    tree = Tree.from_parent(parent, num_leaves)
    assert tree.depth >= 64
    q, k, v = random_qkv(num_leaves, seed=1)
    pos = torch.randn(parent.numel(), 2, 3, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v, pos)]
    for self_loops in (False, True):
        out = hsa_attention(q, k, v, tree, pe=pos, self_loops=self_loops)
        ref = dense_output(hsa_dense(q, k, tree, pe=pos,
                                     self_loops=self_loops), v)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
        grads = torch.autograd.grad(out.square().sum(), inputs)
        ref_grads = torch.autograd.grad(ref.square().sum(), inputs)
        for grad, ref_grad in zip(grads, ref_grads):
            torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-9)


@pytest.mark.parametrize('dtype,self_loops', [
    (torch.float32, False), (torch.float32, True), (torch.float16, False),
    (torch.bfloat16, True)])
def test_logits_of_1e4_in_deep_trees_and_half_precision(dtype, self_loops):
    # Queries and keys of +-100 in one channel with scale 1: every logit is
    # exactly +1e4 or -1e4 (many ties), positions add +-1e4 more. With
    # unit values each output row is the row sum of Theta, 1 exactly.
    parent, num_leaves = caterpillar(64)
    gen = torch.Generator().manual_seed(0)

    def signs(*shape):
        return torch.randint(0, 2, shape, generator=gen) * 2.0 - 1.0

    q = (100 * signs(num_leaves, 2, 1)).to(dtype).requires_grad_()
    k = (100 * signs(num_leaves, 2, 1)).to(dtype).requires_grad_()
    pos = (100 * signs(parent.numel(), 1)).to(dtype).requires_grad_()
    ones = torch.ones(num_leaves, 2, 1, dtype=dtype, requires_grad=True)
    out = hsa_attention(q, k, ones, parent, pe=pos, scale=1.0,
                        self_loops=self_loops)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), torch.ones(num_leaves, 2, 1),
                               rtol=0, atol=1e-2 if dtype in (
                                   torch.float16, torch.bfloat16) else 1e-5)
    values = torch.randn(num_leaves, 2, 3, generator=gen).to(dtype)
    out = hsa_attention(q, k, values, parent, pe=pos, scale=1.0,
                        self_loops=self_loops)
    assert bool(out.isfinite().all())
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, pos))
    for grad in grads:
        assert grad.dtype == dtype and bool(grad.isfinite().all())
    if dtype == torch.float32:
        # The same (exactly representable) inputs in float64 against the
        # explicit matrix: saturated softmaxes stay exact.
        q64, k64, pos64 = (t.detach().double() for t in (q, k, pos))
        theta = hsa_dense(q64, k64, parent, pe=pos64, scale=1.0,
                          self_loops=self_loops)
        torch.testing.assert_close(out.double(), dense_output(
            theta, values.double()), rtol=0, atol=1e-5)


@pytest.mark.parametrize('self_loops', [False, True])
def test_unary_chain_of_depth_64_gradients(self_loops):
    # Leaf 0 under a chain of 63 single-child groups, next to leaf 1: each
    # leaf attends to the other only (and itself with self loops), so
    # queries and keys get exactly zero gradient without self loops.
    parent = torch.tensor([2, 65] + list(range(3, 66)) + [-1])
    tree = Tree.from_parent(parent, 2)
    assert tree.depth == 64
    q, k, v = (t.requires_grad_() for t in random_qkv(2, seed=4))
    out = hsa_attention(q, k, v, tree, self_loops=self_loops)
    ref = dense_output(hsa_dense(q, k, tree, self_loops=self_loops), v)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    for grad, ref_grad in zip(grads, ref_grads):
        assert bool(grad.isfinite().all())
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    if not self_loops:
        torch.testing.assert_close(out, v.flip(0).detach())
        assert bool((grads[0] == 0).all()) and bool((grads[1] == 0).all())


@pytest.mark.parametrize('self_loops', [False, True])
def test_hsa_conv_on_one_leaf_examples(self_loops):
    # Five examples: a lone root leaf, leaves under unary chains of length
    # 1 and 3, and a two-leaf example. A one-leaf example sees nothing but
    # itself: its output is the skip connection (plus its own value with
    # self loops), with finite gradients.
    parent = torch.tensor([-1, 5, 6, 9, 9, -1, 7, 8, -1, -1])
    conv = HSAConv(3, 2, heads=2, self_loops=self_loops).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    out = conv(x, parent)
    skip = conv.lin_skip(x)
    value = conv.lin_value(x)
    alone = torch.tensor([0, 1, 2])
    expected = skip[alone] + (value[alone] if self_loops else 0)
    torch.testing.assert_close(out[alone], expected, rtol=0, atol=1e-12)
    out.square().sum().backward()
    assert bool(x.grad.isfinite().all())
    for param in conv.parameters():
        assert param.grad is None or bool(param.grad.isfinite().all())


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('seed', range(3))
def test_hsa_conv_autocast_within_documented_tolerance(dtype, seed):
    parent, num_leaves = random_forest(np.random.default_rng(seed),
                                       max_depth=5, max_branch=6,
                                       num_roots=2, max_leaves=60)
    tree = Tree.from_parent(parent, num_leaves)
    torch.manual_seed(seed)
    conv = HSAConv(16, 8, heads=4, pos_channels=4, self_loops=seed == 1)
    x = torch.randn(num_leaves, 16)
    pe = torch.randn(parent.numel(), 4)
    ref = conv(x, tree, pe=pe)
    ref_grads = torch.autograd.grad(ref.square().sum(),
                                    list(conv.parameters()))
    with torch.autocast('cpu', dtype=dtype):
        out = conv(x, tree, pe=pe)
        loss = out.float().square().sum()
    assert out.dtype == dtype
    tol = AUTOCAST_TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    grads = torch.autograd.grad(loss, list(conv.parameters()))
    for grad, ref_grad in zip(grads, ref_grads):
        assert bool(grad.isfinite().all())
        # Parameter gradients sum over all leaves: tolerance relative to
        # their scale.
        scale = 1 + ref_grad.abs().max()
        torch.testing.assert_close(grad.float() / scale, ref_grad / scale,
                                   rtol=0, atol=5 * tol)
