"""Wide families through PyTorch's fused CPU attention kernel: the own-key
removal (by subtraction, or two causal passes where a row is dominated by
its own key) and the log-sum-exp gradient carried by a zero value channel,
checked against the explicit ``hsa_dense`` on random forests."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.functional import fused_attention, layout
from pyg_hsa.testing import dense_output, random_forest, random_qkv


@pytest.fixture
def every_family_fused(monkeypatch, levels_path):
    """Trees built under this fixture send every family of two or more
    members to the fused kernel."""
    monkeypatch.setattr(layout, 'WIDE_FAMILY', 2)


@pytest.fixture
def split_calls(monkeypatch):
    calls = []
    original = fused_attention._split_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused_attention, '_split_forward', spy)
    return calls


def forest(seed):
    rng = np.random.default_rng(seed)
    return random_forest(rng, max_depth=1 + seed % 5,
                         max_branch=2 + seed % 9, num_roots=1 + seed % 3,
                         max_leaves=48, unary_prob=0.2)


def positions(kind, num_nodes, seed):
    gen = torch.Generator().manual_seed(seed)
    if kind == 'shared':
        return torch.randn(num_nodes, 3, generator=gen, dtype=torch.float64)
    if kind == 'per_head':
        return torch.randn(num_nodes, 2, 3, generator=gen,
                           dtype=torch.float64)
    return None


def assert_matches_dense(tree, q, k, v, pos, self_loops, scale=None):
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    pos_in = None if pos is None else pos.clone().requires_grad_()
    out = hsa_attention(*inputs, tree, pe=pos_in, self_loops=self_loops,
                        scale=scale)
    ref_inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_pos = None if pos is None else pos.clone().requires_grad_()
    theta = hsa_dense(ref_inputs[0], ref_inputs[1], tree, pe=ref_pos,
                      self_loops=self_loops, scale=scale)
    ref = dense_output(theta, ref_inputs[2])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    weight = torch.randn_like(out)
    wanted = inputs + ([pos_in] if pos is not None else [])
    ref_wanted = ref_inputs + ([ref_pos] if pos is not None else [])
    grads = torch.autograd.grad((out * weight).sum(), wanted)
    ref_grads = torch.autograd.grad((ref * weight).sum(), ref_wanted)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-9)


@pytest.mark.parametrize('seed', range(60))
def test_fused_families_match_dense(seed, every_family_fused):
    parent, num_leaves = forest(seed)
    tree = Tree.from_parent(parent, num_leaves)
    q, k, v = random_qkv(num_leaves, heads=2, channels=3,
                         value_channels=(3, 4, 2)[seed % 3], seed=seed)
    pos = positions((None, 'shared', 'per_head')[seed % 3], parent.numel(),
                    seed)
    assert_matches_dense(tree, q, k, v, pos, self_loops=bool(seed % 2))


@pytest.mark.parametrize('self_loops', [False, True])
def test_rows_dominated_by_their_own_key_are_exact(self_loops,
                                                   every_family_fused,
                                                   split_calls):
    # k = 4 q: every member's logit with itself is the largest of its row
    # by far (its share is ~1), so subtracting it would cancel
    # catastrophically; the bucket must take the two causal passes.
    parent, num_leaves = forest(7)
    tree = Tree.from_parent(parent, num_leaves)
    q, _, v = random_qkv(num_leaves, heads=2, channels=4, seed=3,
                         magnitude=3.0)
    k = 4 * q
    pos = positions('shared', parent.numel(), 1)
    assert_matches_dense(tree, q, k, v, pos, self_loops)
    assert split_calls


def test_learned_scale_through_the_fused_kernel(every_family_fused):
    parent, num_leaves = forest(11)
    tree = Tree.from_parent(parent, num_leaves)
    q, k, v = random_qkv(num_leaves, seed=11)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    out = hsa_attention(q, k, v, tree, scale=scale)
    ref = dense_output(hsa_dense(q, k, tree, scale=scale), v)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    grad, = torch.autograd.grad(out.square().sum(), scale)
    ref_grad, = torch.autograd.grad(ref.square().sum(), scale)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize('self_loops', [False, True])
def test_second_derivatives_through_the_fused_kernel(self_loops,
                                                     every_family_fused):
    tree = Tree.from_parent(torch.tensor([7, 7, 7, 8, 8, 8, 8, 9, 9, -1]))
    q, k, v = (t.requires_grad_() for t in random_qkv(7, seed=2))
    assert torch.autograd.gradgradcheck(
        lambda q, k, v: hsa_attention(q, k, v, tree, self_loops=self_loops),
        (q, k, v))


@pytest.mark.parametrize('self_loops', [False, True])
def test_a_wide_flat_family_equals_sdpa(self_loops, split_calls):
    # 600 leaves under one root: by default a wide family, one kernel call.
    n = 600
    q, k, v = random_qkv(n, heads=2, channels=8, value_channels=8,
                         dtype=torch.float32, seed=5)
    q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0).requires_grad_()
                  for x in (q, k, v))
    mask = None if self_loops else ~torch.eye(n, dtype=torch.bool)
    ref = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask)
    inputs = [x.requires_grad_() for x in (q, k, v)]
    parent = torch.cat([torch.full((n, ), n), torch.tensor([-1])])
    out = hsa_attention(*inputs, parent, self_loops=self_loops)
    torch.testing.assert_close(out, ref[0].transpose(0, 1), rtol=1e-5,
                               atol=1e-5)
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    ref_grads = torch.autograd.grad(
        (ref[0].transpose(0, 1) * weight).sum(), (q4, k4, v4))
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad[0].transpose(0, 1),
                                   rtol=1e-4, atol=1e-5)
    assert not split_calls  # random logits: removal by subtraction


def test_has_fused_kernel_only_for_cpu_floats():
    assert fused_attention.has_fused_kernel(torch.zeros(1))
    assert fused_attention.has_fused_kernel(torch.zeros(1).double())
    assert not fused_attention.has_fused_kernel(torch.zeros(1).half())
    assert not fused_attention.has_fused_kernel(
        torch.zeros(1, device='meta'))
