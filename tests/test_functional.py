import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.functional import family_softmax
from pyg_hsa.functional.layout import layout_of
from pyg_hsa.testing import (
    dense_output,
    random_forest,
    random_qkv,
    renumber,
    root_paths,
)

POS_KINDS = [None, 'shared', 'per_head']


def make_pos(kind, num_nodes, heads, seed=1):
    gen = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    shape = (num_nodes, 3) if kind == 'shared' else (num_nodes, heads, 3)
    return 0.7 * torch.randn(*shape, generator=gen, dtype=torch.float64)


def random_case(seed):
    """Forest i of the 200-forest sweep: depth 1-8, branching 1-16."""
    rng = np.random.default_rng(seed)
    max_depth = 1 + seed % 8
    max_branch = 1 + int(rng.integers(1, 16))
    parent, num_leaves = random_forest(
        rng, max_depth=max_depth, max_branch=max_branch,
        num_roots=1 + seed % 3, max_leaves=int(rng.integers(2, 80)),
        unary_prob=0.2)
    return parent, num_leaves


@pytest.mark.parametrize('path', ['families', 'levels'])
@pytest.mark.parametrize('seed', range(200))
def test_dynamic_program_matches_dense(seed, path, request):
    if path == 'levels':
        request.getfixturevalue('levels_path')
    parent, num_leaves = random_case(seed)
    pos_kind = POS_KINDS[seed % 3]
    self_loops = bool(seed % 2)
    q, k, v = random_qkv(num_leaves, heads=2, seed=seed)
    pos = make_pos(pos_kind, parent.numel(), heads=2, seed=seed)
    tree = Tree.from_parent(parent, num_leaves)
    out = hsa_attention(q, k, v, tree, pe=pos, self_loops=self_loops)
    theta = hsa_dense(q, k, tree, pe=pos, self_loops=self_loops)
    assert out.shape == (num_leaves, 2, 4)
    torch.testing.assert_close(out, dense_output(theta, v), rtol=0,
                               atol=1e-10)


@pytest.mark.parametrize('seed', range(40))
def test_rows_are_stochastic(seed):
    parent, num_leaves = random_case(seed)
    tree = Tree.from_parent(parent, num_leaves)
    q, k, _ = random_qkv(num_leaves, seed=seed)
    ones = torch.ones(num_leaves, 2, 1, dtype=torch.float64)
    leaves_per_root = torch.bincount(tree.batch)[tree.batch]
    for self_loops in (False, True):
        out = hsa_attention(q, k, ones, tree, self_loops=self_loops)[..., 0]
        expected = (leaves_per_root > 1) | self_loops
        expected = expected.to(out.dtype).unsqueeze(-1).expand_as(out)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
        theta = hsa_dense(q, k, tree, self_loops=self_loops)
        assert bool((theta >= 0).all())


def test_flat_tree_with_self_loops_is_sdpa():
    q, k, v = random_qkv(37, heads=3, channels=8, value_channels=5)
    parent = torch.tensor([37] * 37 + [-1])
    out = hsa_attention(q, k, v, parent, self_loops=True)
    ref = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                         v.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_flat_tree_without_self_loops_masks_the_diagonal():
    q, k, v = random_qkv(20, heads=2, channels=4, value_channels=3)
    parent = torch.tensor([20] * 20 + [-1])
    logits = torch.einsum('ihc,jhc->hij', q, k) / 2.0
    logits = logits.masked_fill(torch.eye(20, dtype=torch.bool), -math.inf)
    theta = logits.softmax(dim=-1)
    torch.testing.assert_close(hsa_dense(q, k, parent), theta, rtol=0,
                               atol=1e-12)
    torch.testing.assert_close(hsa_attention(q, k, v, parent),
                               dense_output(theta, v), rtol=0, atol=1e-12)


def test_custom_scale_and_positions_on_flat_tree():
    q, k, v = random_qkv(6, heads=1, channels=2)
    pos = torch.randn(7, 3, dtype=torch.float64)
    parent = torch.tensor([6] * 6 + [-1])
    logits = 0.3 * torch.einsum('ihc,jhc->hij', q, k) + pos[:6] @ pos[:6].t()
    theta = logits.softmax(dim=-1)
    out = hsa_attention(q, k, v, parent, pe=pos, self_loops=True, scale=0.3)
    torch.testing.assert_close(out, dense_output(theta, v), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize('seed', range(10))
def test_constant_on_sibling_blocks(seed):
    # (That Theta depends on the leaf logits only through block means is
    # tested against the brute-force KL minimiser in test_dense.py.)
    rng = np.random.default_rng(seed)
    parent, num_leaves = random_forest(rng, max_depth=3, max_branch=4)
    tree = Tree.from_parent(parent, num_leaves)
    q, k, _ = random_qkv(num_leaves, seed=seed)
    theta = hsa_dense(q, k, tree)
    # Sibling block of every ordered leaf pair from its root-to-leaf paths.
    paths = root_paths(parent, num_leaves)
    blocks = {}
    for i in range(num_leaves):
        for j in range(num_leaves):
            if i == j or paths[i][0] != paths[j][0]:
                continue
            depth = 0
            while paths[i][depth] == paths[j][depth]:
                depth += 1
            blocks.setdefault((paths[i][depth], paths[j][depth]),
                              []).append((i, j))
    for pairs in blocks.values():
        values = torch.stack([theta[:, i, j] for i, j in pairs])
        torch.testing.assert_close(values, values[:1].expand_as(values),
                                   rtol=0, atol=1e-14)


@pytest.mark.parametrize('seed', range(20))
def test_batching_invariance(seed):
    rng = np.random.default_rng(seed)
    trees = [random_forest(rng, max_depth=4, max_branch=5) for _ in range(3)]
    outs, qs, ks, vs = [], [], [], []
    for t, (parent, num_leaves) in enumerate(trees):
        q, k, v = random_qkv(num_leaves, seed=100 * seed + t)
        outs.append(hsa_attention(q, k, v, parent, self_loops=seed % 2 == 0))
        qs.append(q)
        ks.append(k)
        vs.append(v)
    # Batch: all leaves first, then all internal nodes (shifted indices).
    num_leaves = [n for _, n in trees]
    num_internal = [p.numel() - n for p, n in trees]
    leaf_offset = np.cumsum([0] + num_leaves)
    internal_offset = sum(num_leaves) + np.cumsum([0] + num_internal)
    parts = []
    for t, (parent, n) in enumerate(trees):
        shift = torch.where(parent < n, parent + int(leaf_offset[t]),
                            parent - n + int(internal_offset[t]))
        parts.append(torch.where(parent < 0, -1, shift))
    batch_parent = torch.cat([p[:n] for p, (_, n) in zip(parts, trees)] +
                             [p[n:] for p, (_, n) in zip(parts, trees)])
    out = hsa_attention(torch.cat(qs), torch.cat(ks), torch.cat(vs),
                        batch_parent, self_loops=seed % 2 == 0)
    torch.testing.assert_close(out, torch.cat(outs), rtol=0, atol=1e-12)


@pytest.mark.parametrize('seed', range(20))
def test_equivariance_to_renumbering(seed):
    rng = np.random.default_rng(seed)
    parent, num_leaves = random_forest(rng, max_depth=5, max_branch=5,
                                       num_roots=2)
    num_nodes = parent.numel()
    q, k, v = random_qkv(num_leaves, seed=seed)
    pos = make_pos('per_head', num_nodes, heads=2, seed=seed)
    out = hsa_attention(q, k, v, parent, pe=pos)
    # new ids: a random permutation of the leaves and of the internal nodes
    # (which also reorders children inside every family).
    perm, new_parent = renumber(parent, num_leaves, rng)
    leaf_perm = perm[:num_leaves]
    out_new = hsa_attention(q[leaf_perm], k[leaf_perm], v[leaf_perm],
                            new_parent, pe=pos[perm])
    torch.testing.assert_close(out_new, out[leaf_perm], rtol=0, atol=1e-12)


@pytest.mark.parametrize('self_loops', [False, True])
def test_unary_chains_and_single_leaf_trees(self_loops):
    # Root 5 -> 6 -> 7 -> leaf 0 (a lone leaf under a chain); root 8 with
    # leaves 1, 2 and a unary node 9 above leaf 3; leaf 4 is its own root.
    parent = torch.tensor([7, 8, 8, 9, -1, -1, 5, 6, -1, 8])
    q, k, v = random_qkv(5, seed=3)
    q.requires_grad_()
    out = hsa_attention(q, k, v, parent, self_loops=self_loops)
    theta = hsa_dense(q, k, parent, self_loops=self_loops)
    torch.testing.assert_close(out, dense_output(theta, v), rtol=0,
                               atol=1e-12)
    lone = out[[0, 4]].detach()
    if self_loops:  # A lone leaf attends only to itself.
        torch.testing.assert_close(lone, v[[0, 4]], rtol=0, atol=1e-12)
    else:
        assert bool((lone == 0).all())
    out.sum().backward()
    assert bool(q.grad.isfinite().all())


@pytest.mark.parametrize('self_loops', [False, True])
def test_gradcheck_on_trees_with_unary_chains(self_loops):
    parent = torch.tensor([6, 6, 7, 8, 8, 9, 10, 10, 11, 11, 11, -1])
    # Leaves 0..5; 6 = {0,1}; 7 = {2} (unary); 8 = {3,4}; 9 = {5} (unary);
    # 10 = {6,7}; 11 = root {8,9,10}.
    q, k, v = random_qkv(6, heads=2, channels=2, value_channels=2, seed=5)
    pos = make_pos('shared', 12, 2, seed=7).requires_grad_()
    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v)) + (pos, )
    tree = Tree.from_parent(parent, 6)

    def fn(q, k, v, pos):
        return hsa_attention(q, k, v, tree, pe=pos, self_loops=self_loops)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize('self_loops', [False, True])
def test_huge_logits_keep_outputs_and_gradients_finite(self_loops):
    rng = np.random.default_rng(0)
    parent, num_leaves = random_forest(rng, max_depth=5, max_branch=6,
                                       num_roots=2, unary_prob=0.3)
    for dtype in (torch.float64, torch.float32):
        q, k, v = random_qkv(num_leaves, channels=1, dtype=dtype, seed=1,
                             magnitude=100.0)  # logits of magnitude ~1e4
        pos = make_pos('shared', parent.numel(), 2).to(dtype) * 100
        q.requires_grad_(), k.requires_grad_(), pos.requires_grad_()
        out = hsa_attention(q, k, v, parent, pe=pos, self_loops=self_loops)
        assert bool(out.isfinite().all())
        out.square().sum().backward()
        for grad in (q.grad, k.grad, pos.grad):
            assert bool(grad.isfinite().all())
        if dtype == torch.float64:
            theta = hsa_dense(q.detach(), k.detach(), parent,
                              pe=pos.detach(), self_loops=self_loops)
            torch.testing.assert_close(out.detach(), dense_output(theta, v),
                                       rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5),
                                       (torch.bfloat16, 5e-2),
                                       (torch.float16, 1e-2)])
def test_low_precision_inputs(dtype, tol):
    rng = np.random.default_rng(1)
    parent, num_leaves = random_forest(rng, max_depth=4, max_branch=6)
    q, k, v = random_qkv(num_leaves, seed=2)
    ref = hsa_attention(q, k, v, parent)
    out = hsa_attention(q.to(dtype), k.to(dtype), v.to(dtype), parent)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def test_autocast_bfloat16():
    rng = np.random.default_rng(2)
    parent, num_leaves = random_forest(rng, max_depth=3, max_branch=5)
    x = torch.randn(num_leaves, 8)
    lin = torch.nn.Linear(8, 3 * 2 * 4)
    ref_q, ref_k, ref_v = lin(x).view(num_leaves, 3, 2, 4).unbind(1)
    ref = hsa_attention(ref_q, ref_k, ref_v, parent)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        q, k, v = lin(x).view(num_leaves, 3, 2, 4).unbind(1)
        out = hsa_attention(q, k, v, parent)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize('self_loops', [False, True])
def test_attention_weights_are_per_family_softmax(self_loops):
    rng = np.random.default_rng(4)
    parent, num_leaves = random_forest(rng, max_depth=3, max_branch=5,
                                       num_roots=2)
    q, k, v = random_qkv(num_leaves, seed=4)
    out, (edge_index, alpha) = hsa_attention(q, k, v, parent,
                                             self_loops=self_loops,
                                             return_attention_weights=True)
    src, dst = edge_index
    # Sibling edges: same parent, never roots, self loops only on leaves.
    assert bool((parent[src] == parent[dst]).all())
    assert bool((parent[src] >= 0).all() | self_loops)
    loops = src == dst
    assert bool((loops.sum() == (num_leaves if self_loops else 0)))
    sums = torch.zeros(parent.numel(), 2, dtype=alpha.dtype)
    sums.index_add_(0, src, alpha)
    has_edges = torch.bincount(src, minlength=parent.numel()) > 0
    torch.testing.assert_close(sums[has_edges],
                               torch.ones_like(sums[has_edges]))
    num_children = torch.bincount(parent[parent >= 0],
                                  minlength=parent.numel())
    expected = int((num_children * (num_children - 1)).sum())
    assert src.numel() == expected + (num_leaves if self_loops else 0)


def test_dropout_zero_is_identity_and_positive_dropout_changes_output():
    parent = torch.tensor([4, 4, 4, 4, -1])
    q, k, v = random_qkv(4, seed=0)
    ref = hsa_attention(q, k, v, parent)
    torch.testing.assert_close(hsa_attention(q, k, v, parent, dropout=0.0),
                               ref)
    torch.manual_seed(0)
    dropped = hsa_attention(q, k, v, parent, dropout=0.5)
    assert not torch.allclose(dropped, ref)


def test_input_errors():
    parent = torch.tensor([3, 3, 3, -1])
    q, k, v = random_qkv(3)
    with pytest.raises(ValueError, match="'q' has 2 rows but the tree has 3"):
        hsa_attention(q[:2], k[:2], v[:2], Tree.from_parent(parent))
    with pytest.raises(ValueError, match="'q' and 'k' must have the same"):
        hsa_attention(q, k[..., :2], v, parent)
    with pytest.raises(ValueError, match="'v' has 1 heads but 'q' has 2"):
        hsa_attention(q, k, v[:, :1], parent)
    with pytest.raises(ValueError, match=r"'q' must have shape \[N, H, C\]"):
        hsa_attention(q[:, 0], k[:, 0], v[:, 0], parent)
    with pytest.raises(ValueError, match="'pe' must have shape"):
        hsa_attention(q, k, v, parent, pe=torch.randn(3, 2).double())
    with pytest.raises(ValueError, match="'pe' has 3 heads"):
        hsa_attention(q, k, v, parent, pe=torch.randn(4, 3, 2).double())
    with pytest.raises(TypeError, match="'q' must be a floating-point"):
        hsa_attention(q.long(), k, v, parent)
    with pytest.raises(TypeError, match="'tree' must be a pyg_hsa.Tree"):
        hsa_attention(q, k, v, [3, 3, 3, -1])
    with pytest.raises(ValueError, match="'q' has 3 rows but the tree has 2 "
                       "leaves"):
        hsa_attention(q, k, v, torch.tensor([2, 2, -1]))
    with pytest.raises(ValueError, match="'q' has 3 rows but the tree has 4 "
                       "leaves"):
        hsa_attention(q, k, v, torch.tensor([4, 4, 4, 4, -1]))


@pytest.mark.parametrize('branching,num_leaves', [(2, 16), (4, 64), (8, 64),
                                                  (8, 50), (3, 27)])
@pytest.mark.parametrize('self_loops', [False, True])
def test_complete_trees_take_the_reshape_paths(branching, num_leaves,
                                               self_loops):
    # Consecutive runs of `branching` nodes share a parent, level by level:
    # power-of-two runs make every level a reshape of the one below.
    parents, start, width = [], 0, num_leaves
    while width > 1:
        parents.append(start + width + torch.arange(width) // branching)
        start, width = start + width, -(-width // branching)
    parent = torch.cat(parents + [torch.tensor([-1])])
    tree = Tree.from_parent(parent, num_leaves)
    uniform = num_leaves == branching**tree.depth
    assert all(w is not None
               for w in layout_of(tree, False).level_width[1:]) == uniform
    q, k, v = random_qkv(num_leaves, seed=branching)
    pos = make_pos('per_head', parent.numel(), 2)
    out = hsa_attention(q, k, v, tree, pe=pos, self_loops=self_loops)
    theta = hsa_dense(q, k, tree, pe=pos, self_loops=self_loops)
    torch.testing.assert_close(out, dense_output(theta, v), rtol=0,
                               atol=1e-10)
    # Non-contiguous inputs take the same reshape paths.
    strided = [x.transpose(0, 1).contiguous().transpose(0, 1)
               for x in (q, k, v)]
    assert not strided[0].is_contiguous()
    torch.testing.assert_close(
        hsa_attention(*strided, tree, pe=pos, self_loops=self_loops), out)


@pytest.mark.parametrize('self_loops', [False, True])
def test_dense_gradients_are_finite_and_match_the_dynamic_program(
        self_loops):
    # A unary chain above leaf 0, a lone root leaf 4 and a real family.
    parent = torch.tensor([7, 8, 8, 9, -1, -1, 5, 6, -1, 8])
    q, k, v = random_qkv(5, seed=9)
    q.requires_grad_(), k.requires_grad_()
    dense = dense_output(hsa_dense(q, k, parent, self_loops=self_loops), v)
    dense_grads = torch.autograd.grad(dense.square().sum(), (q, k))
    out = hsa_attention(q, k, v, parent, self_loops=self_loops)
    grads = torch.autograd.grad(out.square().sum(), (q, k))
    for dense_grad, grad in zip(dense_grads, grads):
        assert bool(dense_grad.isfinite().all())
        torch.testing.assert_close(dense_grad, grad, rtol=0, atol=1e-10)


def test_attention_weights_without_any_family():
    q, k, v = random_qkv(3)
    lone_leaves, unary_chains = [-1, -1, -1], [3, 4, -1, -1, -1]
    for parent in (torch.tensor(lone_leaves), torch.tensor(unary_chains)):
        out, (edge_index, alpha) = hsa_attention(
            q, k, v, parent, return_attention_weights=True)
        assert edge_index.shape == (2, 0) and edge_index.dtype == torch.long
        assert alpha.shape == (0, 2)
        assert bool((out == 0).all())
        grads = torch.autograd.grad(
            hsa_attention(q.requires_grad_(), k, v, parent).sum(), q)
        assert bool((grads[0] == 0).all())


def test_attention_weights_are_the_softmax_of_block_mean_logits():
    rng = np.random.default_rng(8)
    parent, num_leaves = random_forest(rng, max_depth=3, max_branch=6,
                                       num_roots=2)
    q, k, v = random_qkv(num_leaves, seed=8)
    pos = make_pos('shared', parent.numel(), 2)
    _, (edge_index, alpha) = hsa_attention(q, k, v, parent, pe=pos,
                                           return_attention_weights=True)
    # Leaves below every node, by walking up from each leaf.
    below = [[] for _ in range(parent.numel())]
    for path in root_paths(parent, num_leaves):
        for node in path:
            below[node].append(path[-1])
    scale = 1 / math.sqrt(3)
    expected = torch.empty_like(alpha)
    for e, (a, b) in enumerate(edge_index.t().tolist()):
        logit = scale * torch.einsum('hc,hc->h', q[below[a]].mean(0),
                                     k[below[b]].mean(0))
        expected[e] = logit + pos[a] @ pos[b] + math.log(len(below[b]))
    for a in edge_index[0].unique().tolist():
        group = edge_index[0] == a
        expected[group] = expected[group].softmax(dim=0)
    torch.testing.assert_close(alpha, expected, rtol=0, atol=1e-12)


def test_autocast_on_levels_with_several_family_widths():
    # Families of 2, 3 and 5 members at one level: several buckets whose
    # outputs are merged, which must not mix autocast's half precision in.
    parent = torch.tensor([10, 10, 11, 11, 11, 12, 12, 12, 12, 12, 13, 13,
                           13, -1])
    x = torch.randn(10, 8)
    lin = torch.nn.Linear(8, 3 * 2 * 4)
    ref = hsa_attention(*lin(x).view(10, 3, 2, 4).unbind(1), parent)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = hsa_attention(*lin(x).view(10, 3, 2, 4).unbind(1), parent)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize('seed', range(12))
def test_wide_families_in_query_blocks_match_dense(seed, monkeypatch,
                                                   levels_path):
    # Tiny blocks force every family through the blocked, recomputed path.
    monkeypatch.setattr(family_softmax, 'FAMILY_BLOCK_ENTRIES', 7)
    parent, num_leaves = random_case(seed)
    q, k, v = random_qkv(num_leaves, seed=seed)
    for tensor in (q, k, v):
        tensor.requires_grad_()
    pos = torch.randn(parent.numel(), 2, dtype=torch.float64)
    self_loops = bool(seed % 2)
    out = hsa_attention(q, k, v, parent, pe=pos, self_loops=self_loops)
    theta = hsa_dense(q, k, parent, pe=pos, self_loops=self_loops)
    expected = dense_output(theta, v)
    assert torch.allclose(out, expected, atol=1e-10)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.allclose(grad, expected_grad, atol=1e-9)


def test_one_wide_family_in_query_blocks(monkeypatch, levels_path):
    # Flat: one softmax over 1500 leaves, in blocks of 32 queries (as a
    # family of ~500k members would be by default); equal to SDPA, with
    # finite gradients.
    monkeypatch.setattr(family_softmax, 'FAMILY_BLOCK_ENTRIES', 1 << 16)
    num_leaves = 1500
    parent = torch.cat([torch.full((num_leaves, ), num_leaves),
                        torch.tensor([-1])])
    q, k, v = random_qkv(num_leaves, heads=1, channels=4, value_channels=2,
                         dtype=torch.float32, magnitude=3.0)
    q.requires_grad_()
    out = hsa_attention(q, k, v, parent, self_loops=True)
    expected = F.scaled_dot_product_attention(
        q.detach().transpose(0, 1), k.transpose(0, 1),
        v.transpose(0, 1)).transpose(0, 1)
    assert torch.allclose(out, expected, atol=1e-5)
    grad, = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize('branching', [2, 4])
def test_dropout_gradients_on_levels_of_equal_families(branching):
    # Complete trees with power-of-two families take the reshape paths and
    # the deferred-values down pass; with the seed fixed
    # the dropped-out output is a deterministic function of q, k, v and pos,
    # whose gradient gradcheck compares with finite differences.
    width = branching**3
    parent = torch.cat([width + torch.arange(width) // branching,
                        width + width // branching +
                        torch.arange(width // branching) // branching,
                        torch.full((branching, ), width + width // branching
                                   + width // branching**2),
                        torch.tensor([-1])])
    tree = Tree.from_parent(parent, width)
    widths = layout_of(tree, False).level_width[1:]
    assert all(w == branching for w in widths)
    q, k, v = (t.requires_grad_() for t in random_qkv(width, seed=3))
    pos = torch.randn(parent.numel(), 2, dtype=torch.float64,
                      requires_grad=True)

    def fn(q, k, v, pos):
        torch.manual_seed(0)
        return hsa_attention(q, k, v, tree, pe=pos, dropout=0.3)

    assert not torch.allclose(fn(q, k, v, pos),
                              hsa_attention(q, k, v, tree, pe=pos))
    assert torch.autograd.gradcheck(fn, (q, k, v, pos), fast_mode=True)


@pytest.mark.parametrize('self_loops', [False, True])
def test_learned_scale_gradient_equals_the_dense_gradient(self_loops):
    parent, num_leaves = random_case(4)
    q, k, v = random_qkv(num_leaves, seed=4)
    pos = torch.randn(parent.numel(), 2, 3, dtype=torch.float64,
                      requires_grad=True)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v.shape, dtype=torch.float64)
    out = hsa_attention(q, k, v, parent, pe=pos, scale=scale,
                        self_loops=self_loops)
    dense = dense_output(hsa_dense(q, k, parent, pe=pos, scale=scale,
                                   self_loops=self_loops), v)
    grads = torch.autograd.grad((out * weight).sum(), (scale, pos))
    expected = torch.autograd.grad((dense * weight).sum(), (scale, pos))
    for grad, reference in zip(grads, expected):
        torch.testing.assert_close(grad, reference, rtol=0, atol=1e-10)
    assert float(grads[0]) != 0.0


@pytest.mark.slow  # (seconds: gradgradcheck on two trees)
@pytest.mark.parametrize('parent', [
    [8, 8, 8, 8, 9, 9, 9, 9, 10, 10, -1],  # equal families: reshape paths
    [7, 8, 8, 9, -1, -1, 5, 6, -1, 8],  # chains, a lone root, buckets
])
@pytest.mark.parametrize('self_loops', [False, True])
def test_second_derivatives(parent, self_loops):
    # The custom backward passes are built from differentiable operations,
    # so gradient penalties and Hessian-vector products work.
    parent = torch.tensor(parent)
    tree = Tree.from_parent(parent)
    q, k, v = (t.requires_grad_()
               for t in random_qkv(tree.num_leaves, seed=1))
    pos = torch.randn(parent.numel(), 2, dtype=torch.float64,
                      requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda q, k, v, pos: hsa_attention(q, k, v, tree, pe=pos,
                                           self_loops=self_loops),
        (q, k, v, pos))


@pytest.mark.parametrize('heads,parent', [
    (1, [4, 4, 5, 5, 6, 6, -1]),  # one head: the layout change is a no-op
    (2, [-1]),  # one leaf
])
def test_output_can_be_modified_in_place(heads, parent):
    parent = torch.tensor(parent)
    num_leaves = int((parent.numel() + 1) // 2) if parent.numel() > 1 else 1
    q, k, v = (t.requires_grad_()
               for t in random_qkv(num_leaves, heads=heads, seed=2))
    out = hsa_attention(q, k, v, parent)
    expected = 2 * hsa_attention(q, k, v, parent)
    out.mul_(2)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), (q, v))
    expected_grads = torch.autograd.grad(expected.sum(), (q, v))
    for grad, reference in zip(grads, expected_grads):
        torch.testing.assert_close(grad, reference)


@pytest.mark.parametrize('function', ['hsa_attention', 'hsa_dense'])
def test_pos_is_a_deprecated_alias_of_pe(function):
    parent, num_leaves = random_case(3)
    q, k, v = random_qkv(num_leaves, heads=2, seed=3)
    pe = make_pos('per_head', parent.numel(), heads=2)
    tree = Tree.from_parent(parent, num_leaves)
    call = ((lambda **kw: hsa_attention(q, k, v, tree, **kw))
            if function == 'hsa_attention' else
            (lambda **kw: hsa_dense(q, k, tree, **kw)))
    with pytest.warns(FutureWarning, match=rf"{function}\(\.\.\., pos=\) is "
                      rf"deprecated; use pe="):
        old = call(pos=pe)
    assert torch.equal(old, call(pe=pe))
    with pytest.raises(TypeError, match="both 'pe' and its deprecated "
                       "alias 'pos'"):
        call(pe=pe, pos=pe)
