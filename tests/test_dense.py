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
from scipy.optimize import minimize

from helpers import nested_to_forest, random_qkv, root_paths
from pyg_hsa import hsa_dense

TINY_TREES = [
    [['leaf', 'leaf'], ['leaf', ['leaf', 'leaf']]],
    [['leaf', 'leaf', 'leaf'], 'leaf'],
    [[['leaf', 'leaf']], 'leaf', ['leaf', 'leaf']],  # a unary node
    [['leaf', ['leaf', 'leaf', 'leaf']], ['leaf']],
]


def brute_force_theta(logits_fn, parent, num_leaves, self_loops):
    """Minimise the KL objective over block-constant stochastic matrices.

    ``logits_fn(i, j, a, b)`` is the leaf-level logit of leaves ``i, j`` in
    block ``(a, b)``."""
    paths = root_paths(parent, num_leaves)
    block_of, logits = {}, np.full((num_leaves, num_leaves), -np.inf)
    for i in range(num_leaves):
        for j in range(num_leaves):
            if i == j:
                if not self_loops:
                    continue
                a = b = i
            else:
                d = 0
                while paths[i][d] == paths[j][d]:
                    d += 1
                a, b = paths[i][d], paths[j][d]
            block_of[i, j] = (a, b)
            logits[i, j] = logits_fn(i, j, a, b)
    target = np.exp(logits - logits.max(1, keepdims=True))
    target /= target.sum(1, keepdims=True)
    blocks = sorted(set(block_of.values()))
    index = {blk: t for t, blk in enumerate(blocks)}
    members = np.zeros((len(blocks), num_leaves, num_leaves))
    for (i, j), blk in block_of.items():
        members[index[blk], i, j] = 1.0

    def theta_of(z):
        return np.einsum('b,bij->ij', np.exp(z), members)

    def objective(z):
        theta = theta_of(z)
        mask = members.sum(0) > 0
        return float((theta[mask] * (np.log(theta[mask]) -
                                     np.log(target[mask]))).sum())

    constraints = [{
        'type': 'eq',
        'fun': lambda z, i=i: theta_of(z)[i].sum() - 1.0
    } for i in range(num_leaves)]
    z0 = np.full(len(blocks), -math.log(num_leaves))
    res = minimize(objective, z0, method='SLSQP', constraints=constraints,
                   options={'ftol': 1e-15, 'maxiter': 2000})
    assert res.success, res.message
    return theta_of(res.x)


@pytest.mark.parametrize('tree_index', range(len(TINY_TREES)))
@pytest.mark.parametrize('self_loops', [False, True])
@pytest.mark.parametrize('with_pos', [False, True])
def test_dense_is_the_kl_minimiser(tree_index, self_loops, with_pos):
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

    expected = brute_force_theta(leaf_logit, parent, num_leaves, self_loops)
    theta = hsa_dense(q, k, parent, pos=pos, self_loops=self_loops)[0]
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
