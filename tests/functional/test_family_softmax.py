"""Narrow families by batched matrix products: the blocked forward (query
rows) and the backward pass by slices of families agree with the explicit
``hsa_dense``."""
import numpy as np
import pytest
import torch

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.functional import family_softmax
from pyg_hsa.testing import dense_output, random_forest, random_qkv


@pytest.mark.parametrize('seed', range(8))
@pytest.mark.parametrize('limit', ['FAMILY_CHUNK_ENTRIES',
                                   'FAMILY_BLOCK_ENTRIES'])
def test_slicing_families_or_rows_changes_nothing(seed, limit, monkeypatch):
    monkeypatch.setattr(family_softmax, limit, 3)  # slices of one
    rng = np.random.default_rng(seed)
    parent, num_leaves = random_forest(rng, max_depth=3, max_branch=6,
                                       num_roots=2)
    tree = Tree.from_parent(parent, num_leaves)
    q, k, v = (t.requires_grad_() for t in random_qkv(num_leaves, seed=seed))
    pos = torch.randn(parent.numel(), 2, 3, dtype=torch.float64,
                      requires_grad=True)
    scale = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    self_loops = bool(seed % 2)
    out = hsa_attention(q, k, v, tree, pe=pos, scale=scale,
                        self_loops=self_loops)
    ref = dense_output(hsa_dense(q, k, tree, pe=pos, scale=scale,
                                 self_loops=self_loops), v)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    weight = torch.randn_like(out)
    inputs = (q, k, v, pos, scale)
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * weight).sum(), inputs)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-9)
