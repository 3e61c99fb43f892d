import copy

import numpy as np
import pytest
import torch

from torch_geometric.data import HeteroData
from torch_geometric.loader import DataLoader

from pyg_hsa import Tree, hsa_dense
from pyg_hsa.nn import HSAConv
from pyg_hsa.testing import dense_output, random_forest, renumber


def hierarchy(num_atoms, groups, num_tokens, seed):
    """Two leaf types (atoms of width 6, tokens of width 4) under fragments
    and one molecule, with position vectors on atoms and fragments."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    num_frags = max(groups) + 1
    data = HeteroData()
    data['atom'].x = randn(num_atoms, 6)
    data['atom'].pe = randn(num_atoms, 3)
    data['token'].x = randn(num_tokens, 4)
    data['fragment'].num_nodes = num_frags
    data['fragment'].pe = randn(num_frags, 3)
    data['molecule'].num_nodes = 1
    data['atom', 'in', 'fragment'].edge_index = torch.stack(
        [torch.arange(num_atoms), torch.tensor(groups)])
    data['fragment', 'in', 'molecule'].edge_index = torch.stack(
        [torch.arange(num_frags),
         torch.zeros(num_frags, dtype=torch.long)])
    data['token', 'in', 'molecule'].edge_index = torch.stack(
        [torch.arange(num_tokens),
         torch.zeros(num_tokens, dtype=torch.long)])
    return data


def test_hsa_conv_matches_manual_computation():
    parent, num_leaves = random_forest(np.random.default_rng(0), max_depth=3,
                                       max_branch=5)
    x = torch.randn(num_leaves, 8, dtype=torch.float64)
    pe = torch.randn(parent.numel(), 5, dtype=torch.float64)
    conv = HSAConv(8, 4, heads=3, pos_channels=5).double()
    assert str(conv) == 'HSAConv(8, 4, heads=3)'
    out = conv(x, parent, pe=pe)
    assert out.shape == (num_leaves, 12)

    q = conv.norm_query(conv.lin_query(x).view(-1, 3, 4))
    k = conv.norm_key(conv.lin_key(x).view(-1, 3, 4))
    v = conv.lin_value(x).view(-1, 3, 4)
    pos = conv.lin_pos(pe).view(-1, 3, 4)
    theta = hsa_dense(q, k, parent, pe=pos)
    expected = dense_output(theta, v).reshape(-1, 12) + conv.lin_skip(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize('concat', [True, False])
@pytest.mark.parametrize('root_weight', [True, False])
def test_hsa_conv_options_against_a_manual_computation(concat, root_weight):
    parent = torch.tensor([5, 5, 6, 6, 6, 7, 7, -1])
    x = torch.randn(5, 16, dtype=torch.float64)
    conv = HSAConv(-1, 8, heads=2, concat=concat, root_weight=root_weight,
                   qk_norm=False, self_loops=True).double()
    out = conv(x, Tree.from_parent(parent))
    assert conv.norm_query is None and conv.lin_pos is None
    assert (conv.lin_skip is None) == (not root_weight)
    # By hand: per-head projections, dense HSA with self loops, heads
    # concatenated or averaged, plus the skip connection.
    q, k, v = (lin(x).view(5, 2, 8)
               for lin in (conv.lin_query, conv.lin_key, conv.lin_value))
    mixed = dense_output(hsa_dense(q, k, parent, self_loops=True), v)
    expected = mixed.reshape(5, 16) if concat else mixed.mean(1)
    if root_weight:
        expected = expected + conv.lin_skip(x)
    assert out.shape == (5, 16 if concat else 8)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_hsa_conv_attention_weights():
    parent = torch.tensor([4, 4, 5, 5, 6, 6, -1])
    conv = HSAConv(3, 2, heads=2)
    out, (edge_index, alpha) = conv(torch.randn(4, 3), parent,
                                    return_attention_weights=True)
    assert out.shape == (4, 4)
    pairs = sorted(zip(*edge_index.tolist()))
    assert pairs == [(0, 1), (1, 0), (2, 3), (3, 2), (4, 5), (5, 4)]
    # Every node has one sibling: its only softmax weight is 1.
    torch.testing.assert_close(alpha, torch.ones(6, 2))


def test_hsa_conv_reset_parameters_and_state_dict():
    conv = HSAConv(6, 4, heads=2, pos_channels=3)
    x, parent = torch.randn(3, 6), torch.tensor([3, 3, 3, -1])
    pe = torch.randn(4, 3)
    out = conv(x, parent, pe=pe)
    other = HSAConv(6, 4, heads=2, pos_channels=3)
    other.load_state_dict(conv.state_dict())
    torch.testing.assert_close(other(x, parent, pe=pe), out)
    before = copy.deepcopy(conv.state_dict())
    conv.reset_parameters()
    assert not torch.equal(conv.lin_query.weight, before['lin_query.weight'])
    assert set(conv.state_dict()) == set(before)


def test_hsa_conv_renumbering_equivariance():
    rng = np.random.default_rng(3)
    parent, num_leaves = random_forest(rng, max_depth=4, max_branch=4,
                                       num_roots=2)
    num_nodes = parent.numel()
    x = torch.randn(num_leaves, 5, dtype=torch.float64)
    pe = torch.randn(num_nodes, 2, dtype=torch.float64)
    conv = HSAConv(5, 3, heads=2, pos_channels=2).double()
    out = conv(x, parent, pe=pe)
    perm, new_parent = renumber(parent, num_leaves, rng)
    out_new = conv(x[perm[:num_leaves]], new_parent, pe=pe[perm])
    torch.testing.assert_close(out_new, out[perm[:num_leaves]], rtol=0,
                               atol=1e-12)


def test_hsa_conv_hetero_batch_equals_each_example():
    examples = [
        hierarchy(5, [0, 0, 1, 1, 1], 2, seed=0),
        hierarchy(3, [0, 0, 0], 4, seed=1),
        hierarchy(6, [0, 1, 1, 2, 2, 2], 1, seed=2),
    ]
    conv = HSAConv({'atom': 6, 'token': 4}, 4, heads=2,
                   pos_channels={'atom': 3, 'fragment': 3}).double()
    batch = next(iter(DataLoader(examples, batch_size=3)))
    tree = Tree.from_hetero(batch)
    pe = {'atom': batch['atom'].pe, 'fragment': batch['fragment'].pe}
    out = conv(batch.x_dict, tree, pe=pe)
    assert set(out) == {'atom', 'token'}
    assert out['atom'].shape == (14, 8) and out['token'].shape == (7, 8)
    atom_ptr, token_ptr = batch['atom'].ptr, batch['token'].ptr
    for i, data in enumerate(examples):
        alone = conv(data.x_dict, Tree.from_hetero(data), pe={
            'atom': data['atom'].pe,
            'fragment': data['fragment'].pe
        })
        torch.testing.assert_close(out['atom'][atom_ptr[i]:atom_ptr[i + 1]],
                                   alone['atom'], rtol=0, atol=1e-12)
        torch.testing.assert_close(
            out['token'][token_ptr[i]:token_ptr[i + 1]], alone['token'],
            rtol=0, atol=1e-12)
    # The edge_index_dict form builds the same tree.
    again = conv(batch.x_dict, batch.edge_index_dict, pe=pe)
    torch.testing.assert_close(again['atom'], out['atom'])


def test_hsa_conv_hetero_gradients_reach_every_leaf_type():
    data = hierarchy(4, [0, 0, 1, 1], 3, seed=5)
    conv = HSAConv({'atom': -1, 'token': -1}, 4, heads=2).double()
    out = conv(data.x_dict, Tree.from_hetero(data))
    (out['atom'].sum() + out['token'].sum()).backward()
    for lin in conv.lin_value.lins.values():
        assert lin.weight.grad is not None
        assert bool(lin.weight.grad.abs().sum() > 0)


def test_hsa_conv_errors():
    parent = torch.tensor([3, 3, 3, -1])
    conv = HSAConv(4, 2)
    with pytest.raises(ValueError, match="'x' has 2 rows but the tree has 3"):
        conv(torch.randn(2, 4), Tree.from_parent(parent))
    with pytest.raises(ValueError, match='pos_channels=None'):
        conv(torch.randn(3, 4), parent, pe=torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"'pe' must have shape \[M, P\]"):
        HSAConv(4, 2, pos_channels=2)(torch.randn(3, 4), parent,
                                      pe=torch.randn(3, 2))
    with pytest.raises(ValueError, match="'x' has 2 rows but the tree has 3"):
        conv(torch.randn(2, 4), parent)
    with pytest.raises(ValueError, match=r"'x' must have shape \[N, F\]"):
        conv(torch.randn(3), parent)
    with pytest.raises(TypeError, match="'tree' must be a pyg_hsa.Tree"):
        conv(torch.randn(3, 4), [3, 3, 3, -1])
    with pytest.raises(ValueError, match=r"'heads' must be an integer >= 1 "
                       r"\(got 0\)"):
        HSAConv(4, 2, heads=0)
    with pytest.raises(ValueError, match="'dropout' must lie in"):
        HSAConv(4, 2, dropout=1.5)
    with pytest.raises(TypeError, match="'self_loops' must be a bool"):
        HSAConv(4, 4, self_loops=1)
    with pytest.raises(TypeError, match="'out_channels' must be an integer"):
        HSAConv(4, 2.0)
    data = hierarchy(3, [0, 0, 1], 2, seed=0)
    hetero = HSAConv({'atom': 6, 'token': 4}, 2).double()
    with pytest.raises(ValueError, match=r"no features for leaf node types "
                       r"\['token'\]"):
        hetero({'atom': data['atom'].x}, Tree.from_hetero(data))
    with pytest.raises(ValueError, match='needs a tree built with '
                       'Tree.from_hetero'):
        hetero(data.x_dict, Tree.from_parent(parent))
    with pytest.raises(ValueError, match='different feature widths'):
        HSAConv(-1, 2)(data.x_dict, data)
    with_pos = HSAConv({'atom': 6, 'token': 4}, 2,
                       pos_channels={'fragment': 3}).double()
    with pytest.raises(ValueError, match=r"node types \['atom'\] that "
                       "'pos_channels' does not list"):
        with_pos(data.x_dict, data, pe={'atom': data['atom'].pe})
    with pytest.raises(ValueError, match="'pe' is an empty dictionary"):
        with_pos(data.x_dict, data, pe={})


def test_hsa_conv_names_the_users_tensors_on_another_device_than_the_tree():
    """The layer and its features on one device, the tree on another: the
    error names 'x' (or 'x['type']'), not the core's projected 'q'. (The
    'meta' device stands in for a GPU.)"""
    parent = torch.tensor([3, 3, 3, -1])
    conv = HSAConv(4, 2, heads=2).to('meta')
    with pytest.raises(ValueError, match=r"^'x' is on meta but the tree is "
                       r"on cpu; move one with \.to\(\)$"):
        conv(torch.randn(3, 4, device='meta'), parent)
    with pytest.raises(ValueError, match="^'x' is on meta but the tree"):
        conv(torch.randn(3, 4, device='meta'), Tree.from_parent(parent))
    data = hierarchy(3, [0, 0, 1], 2, seed=0)
    hetero = HSAConv({'atom': 6, 'token': 4}, 2).double().to('meta')
    x_dict = {nt: x.to('meta') for nt, x in data.x_dict.items()}
    for tree in (Tree.from_hetero(data), data, data.edge_index_dict):
        with pytest.raises(ValueError, match=r"^'x\['atom'\]' is on meta "
                           r"but the tree is on cpu"):
            hetero(x_dict, tree)


def test_hsa_conv_takes_numpy_scalars_and_flags():
    parent = torch.tensor([3, 3, 3, -1])
    x = torch.randn(3, 4)
    torch.manual_seed(0)
    ref = HSAConv(4, 4, heads=2, self_loops=True, dropout=0.25)
    torch.manual_seed(0)
    conv = HSAConv(4, np.int64(4), heads=np.int32(2),
                   self_loops=np.bool_(True), dropout=np.float32(0.25))
    assert repr(conv) == repr(ref) == 'HSAConv(4, 4, heads=2)'
    assert type(conv.out_channels) is int and type(conv.heads) is int
    conv.eval(), ref.eval()
    torch.testing.assert_close(conv(x, parent), ref(x, parent))


def test_return_attention_weights_follows_pyg():
    # As in PyG's TransformerConv: any bool (False too) asks for the
    # weights; None (the default) does not.
    parent = torch.tensor([3, 3, 3, -1])
    conv = HSAConv(4, 2, heads=2)
    x = torch.randn(3, 4)
    out = conv(x, parent)
    for flag in (True, False):
        result, (edge_index, alpha) = conv(x, parent,
                                           return_attention_weights=flag)
        torch.testing.assert_close(result, out)
        assert edge_index.shape == (2, 6) and alpha.shape == (6, 2)
        torch.testing.assert_close(
            torch.zeros(3, 2).index_add_(0, edge_index[0], alpha),
            torch.ones(3, 2))


def test_hsa_conv_dropout_is_off_in_eval():
    conv = HSAConv(4, 4, heads=2, dropout=0.5)
    x, parent = torch.randn(6, 4), torch.tensor([6] * 6 + [-1])
    conv.eval()
    torch.testing.assert_close(conv(x, parent), conv(x, parent))
    conv.train()
    assert not torch.allclose(conv(x, parent), conv(x, parent))


@pytest.mark.slow
def test_hsa_conv_torch_compile_without_graph_breaks():
    import torch._dynamo

    parent, num_leaves = random_forest(np.random.default_rng(1), max_depth=3,
                                       max_branch=4)
    conv = HSAConv(8, 4, heads=2, self_loops=True)
    x = torch.randn(num_leaves, 8)
    expected = conv(x, Tree.from_parent(parent, num_leaves))
    torch._dynamo.reset()
    tree = Tree.from_parent(parent, num_leaves)  # fresh: nothing cached
    explanation = torch._dynamo.explain(conv)(x, tree)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(conv, fullgraph=True)
    for _ in range(2):
        torch.testing.assert_close(compiled(x, tree), expected, rtol=1e-5,
                                   atol=1e-5)


def test_hsa_conv_hetero_positions_match_manual_computation():
    data = hierarchy(5, [0, 0, 1, 1, 1], 3, seed=4)
    tree = Tree.from_hetero(data)
    conv = HSAConv({'atom': 6, 'token': 4}, 4, heads=2,
                   pos_channels={'atom': 3, 'fragment': 3}).double()
    pe = {'atom': data['atom'].pe, 'fragment': data['fragment'].pe}
    out = conv(data.x_dict, tree, pe=pe)

    def project(lin):
        return torch.cat([lin.lins[nt](data[nt].x) for nt in tree.leaf_types
                          ]).view(-1, 2, 4)

    q = conv.norm_query(project(conv.lin_query))
    k = conv.norm_key(project(conv.lin_key))
    v = project(conv.lin_value)
    pos = torch.zeros(tree.num_nodes, 8, dtype=torch.float64)
    for nt in pe:
        lo, hi = tree.node_slices[nt]
        pos[lo:hi] = conv.lin_pos.lins[nt](pe[nt])
    theta = hsa_dense(q, k, tree, pe=pos.view(-1, 2, 4))
    expected = dense_output(theta, v).reshape(-1, 8) + torch.cat(
        [conv.lin_skip.lins[nt](data[nt].x) for nt in tree.leaf_types])
    got = torch.cat([out[nt] for nt in tree.leaf_types])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    # Positions matter: without them the output differs.
    assert not torch.allclose(got, torch.cat(
        list(conv(data.x_dict, tree).values())))


@pytest.mark.parametrize('causal', [False, True])
def test_hsa_conv_query_resolution_is_hsa_attention(causal):
    rng = np.random.default_rng(4)
    parent, num_leaves = random_forest(rng, num_roots=2)
    tree = Tree.from_parent(parent, num_leaves)
    x = torch.randn(num_leaves, 6, dtype=torch.float64)
    pe = torch.randn(tree.num_nodes, 3, dtype=torch.float64)
    conv = HSAConv(6, 4, heads=2, pos_channels=3, self_loops=True,
                   resolution='query', causal=causal).double()
    expected = "HSAConv(6, 4, heads=2, resolution='query'" + (
        ', causal=True)' if causal else ')')
    assert repr(conv) == expected
    q = conv.norm_query(conv.lin_query(x).view(-1, 2, 4))
    k = conv.norm_key(conv.lin_key(x).view(-1, 2, 4))
    v = conv.lin_value(x).view(-1, 2, 4)
    pos = conv.lin_pos(pe).view(-1, 2, 4)
    theta = hsa_dense(q, k, tree, pe=pos, self_loops=True,
                      resolution='query', causal=causal)
    ref = dense_output(theta, v).reshape(-1, 8) + conv.lin_skip(x)
    torch.testing.assert_close(conv(x, tree, pe), ref, rtol=0, atol=1e-10)


def test_hsa_conv_refuses_bad_resolution_options():
    with pytest.raises(ValueError, match="'resolution' must be"):
        HSAConv(4, 4, resolution='rows')
    with pytest.raises(ValueError, match='see the future'):
        HSAConv(4, 4, self_loops=True, causal=True)
    with pytest.raises(ValueError, match='needs self_loops=True'):
        HSAConv(4, 4, resolution='query', causal=True)
    with pytest.raises(ValueError, match="'dropout=0.1' is not supported "
                       "by the 'query' variant"):
        HSAConv(4, 4, resolution='query', dropout=0.1)


@pytest.mark.parametrize('parent', [
    [6] * 6 + [-1],  # one family: softmax attention
    [6, 6, 6, 7, 7, 7, 8, 8, -1],  # two groups of three leaves
])
def test_attention_dropout_scales_kept_weights(parent):
    """With one-hot values the output rows are the effective attention
    weights: in training, every weight is either dropped (0) or the
    evaluation weight times 1 / (1 - p), and whole sibling blocks drop
    together; averaged over draws the output is the evaluation output."""
    n, p = 6, 0.25
    tree = Tree.from_parent(torch.tensor(parent), n)
    conv = HSAConv(n, n, dropout=p, self_loops=True, root_weight=False)
    with torch.no_grad():
        conv.lin_value.weight.copy_(torch.eye(n))
        conv.lin_value.bias.zero_()
    x = torch.eye(n)
    with torch.no_grad():
        theta = conv.eval()(x, tree)
        conv.train()
        torch.manual_seed(3)
        ratio = conv(x, tree) / theta
        assert theta.sum(dim=1).tolist() == pytest.approx([1.0] * n)
        kept = ratio > 0
        torch.testing.assert_close(ratio[kept],
                                   torch.full_like(ratio[kept], 1 / (1 - p)))
        assert 0 < int((~kept).sum()) < n * n
        if len(parent) > n + 1:  # leaf 3 sees leaves 0-2 as one block
            assert bool((kept[3, :3] == kept[3, 0]).all())
        mean = sum(conv(x, tree) for _ in range(2000)) / 2000
    # (Monte Carlo: one entry's standard error is about 0.004.)
    assert float((mean - theta).abs().max()) < 0.03
