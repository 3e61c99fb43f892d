"""hsa_dense against a brute-force constrained KL minimisation (scipy).

The spec defines Theta as the row-stochastic matrix, constant on sibling
blocks, that minimises sum_i KL(Theta_i || softmax_j(s_ij)) for the *leaf*
logits s_ij. The optimiser below knows nothing of eta, phi or mu: it only
sees the blocks, the constraints and the leaf-level softmax target, so it
also checks that Theta depends on the leaf logits only through block means.
"""
import math

import numpy as np
import pytest
import torch

from pyg_hsa import hsa_dense
from pyg_hsa.testing import brute_force_theta, nested_to_forest, random_qkv

TINY_TREES = [
    [['leaf', 'leaf'], ['leaf', ['leaf', 'leaf']]],
    [['leaf', 'leaf', 'leaf'], 'leaf'],
    [[['leaf', 'leaf']], 'leaf', ['leaf', 'leaf']],  # a unary node
    [['leaf', ['leaf', 'leaf', 'leaf']], ['leaf']],
]


# (resolution, self_loops, causal): the paper's HSA and query-resolved HSA,
# causal or not.
MODES = [('block', False, False), ('block', True, False),
         ('query', False, False), ('query', True, False),
         ('query', True, True)]


@pytest.mark.parametrize('tree_index', range(len(TINY_TREES)))
@pytest.mark.parametrize('resolution,self_loops,causal', MODES)
@pytest.mark.parametrize('with_pos', [False, True])
def test_dense_is_the_kl_minimiser(tree_index, resolution, self_loops,
                                   causal, with_pos):
    rng = np.random.default_rng(tree_index)
    parent, num_leaves = nested_to_forest([TINY_TREES[tree_index]], rng)
    q, k, _ = random_qkv(num_leaves, heads=1, channels=2, seed=tree_index)
    gen = torch.Generator().manual_seed(7)
    pos = torch.randn(parent.numel(), 2, generator=gen,
                      dtype=torch.float64) if with_pos else None
    scale = 1 / math.sqrt(2)
    qn, kn = q[:, 0].numpy(), k[:, 0].numpy()
    pn = pos.numpy() if with_pos else None

    def leaf_logit(i, j, a, b):
        logit = scale * float(qn[i] @ kn[j])
        if pn is not None:
            logit += float(pn[a] @ pn[b])
        return logit

    expected = brute_force_theta(leaf_logit, parent, num_leaves, self_loops,
                                 query=resolution == 'query', causal=causal)
    theta = hsa_dense(q, k, parent, pe=pos, self_loops=self_loops,
                      resolution=resolution, causal=causal)[0]
    np.testing.assert_allclose(theta.numpy(), expected, rtol=0, atol=2e-5)


def test_dense_of_separate_roots_is_block_diagonal():
    parent, num_leaves = nested_to_forest(
        [['leaf', 'leaf'], ['leaf', ['leaf', 'leaf']], 'leaf'])
    q, k, _ = random_qkv(num_leaves)
    theta = hsa_dense(q, k, parent, self_loops=True)
    # Leaves 0, 1 | 2, 3, 4 | 5 (creation order keeps roots together).
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    different = groups.view(-1, 1) != groups.view(1, -1)
    assert bool((theta[:, different] == 0).all())
    torch.testing.assert_close(theta.sum(-1), torch.ones(2, num_leaves,
                                                         dtype=theta.dtype))


@pytest.mark.parametrize('self_loops', [False, True])
def test_dense_gradients_are_finite_at_logits_of_1e4(self_loops):
    # Pairs outside Theta's support (a leaf and itself, leaves of other
    # roots) got exp(log Theta) of a stand-in logit that overflowed, and the
    # backward pass of the mask computed 0 * inf (issue 22's edge matrix).
    # Compared with hsa_attention's dynamic program in float64.
    from pyg_hsa import hsa_attention
    parent, num_leaves = nested_to_forest(
        [[['leaf', 'leaf'], ['leaf', 'leaf', 'leaf'], 'leaf'], 'leaf',
         ['leaf', 'leaf']])
    q, k, v = random_qkv(num_leaves, seed=3, magnitude=60.0)
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    theta = hsa_dense(*inputs[:2], parent, self_loops=self_loops)
    out = torch.einsum('hij,jhc->ihc', theta, inputs[2])
    assert float(torch.einsum('ihc,jhc->hij', q, k).abs().max()) > 1e3
    grads = torch.autograd.grad(out.square().sum(), inputs)
    ref_inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    ref = hsa_attention(*ref_inputs, parent, self_loops=self_loops)
    ref_grads = torch.autograd.grad(ref.square().sum(), ref_inputs)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
    for grad, ref_grad in zip(grads, ref_grads):
        assert bool(grad.isfinite().all())
        torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-9)
