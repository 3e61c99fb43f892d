import numpy as np
import pytest
import torch

from torch_geometric.data import HeteroData
from torch_geometric.loader import DataLoader

from pyg_hsa import Tree, hsa_attention
from pyg_hsa.functional.layout import layout_of
from pyg_hsa.testing import random_forest, random_qkv


def molecule_like(num_atoms, groups, num_tokens=0):
    """atoms -> fragments -> molecule, plus optional tokens directly in the
    molecule (nesting that skips a level)."""
    data = HeteroData()
    data['atom'].x = torch.randn(num_atoms, 5)
    data['fragment'].num_nodes = len(set(groups))
    data['molecule'].num_nodes = 1
    data['atom', 'in', 'fragment'].edge_index = torch.stack(
        [torch.arange(num_atoms), torch.tensor(groups)])
    data['fragment', 'in', 'molecule'].edge_index = torch.stack([
        torch.arange(len(set(groups))),
        torch.zeros(len(set(groups)), dtype=torch.long)
    ])
    data['atom', 'bond', 'atom'].edge_index = torch.tensor([[0, 1], [1, 0]])
    if num_tokens:
        data['token'].x = torch.randn(num_tokens, 3)
        data['token', 'in', 'molecule'].edge_index = torch.stack([
            torch.arange(num_tokens),
            torch.zeros(num_tokens, dtype=torch.long)
        ])
    return data


def test_from_parent_compiles_levels_and_sizes():
    # Leaves 0..4, 5 = {0, 1, 2}, 6 = {3}, 7 = root {5, 6, 4}.
    tree = Tree.from_parent(torch.tensor([5, 5, 5, 6, 7, 7, 7, -1]))
    assert tree.num_leaves == 5 and tree.num_nodes == 8
    assert tree.num_roots == 1 and tree.depth == 2
    layout = layout_of(tree, True)  # (without self loops node 6 is
    assert layout.level_ptr == (0, 1, 4, 8)  # contracted away)
    assert layout_of(tree, False).level_ptr == (0, 1, 4, 7)
    assert repr(tree) == ('Tree(num_nodes=8, num_leaves=5, num_roots=1, '
                          'depth=2)')
    size = torch.empty(8, dtype=torch.long)
    size[layout.perm] = layout.size
    assert size.tolist() == [1, 1, 1, 1, 1, 3, 1, 5]
    assert tree.batch.tolist() == [0] * 5


@pytest.mark.parametrize('seed', range(10))
def test_level_order_keeps_families_contiguous(seed):
    parent, num_leaves = random_forest(np.random.default_rng(seed),
                                       max_depth=5, max_branch=6,
                                       num_roots=3)
    tree = Tree.from_parent(parent, num_leaves)
    layout = layout_of(tree, seed % 2 == 0)
    new_parent = layout.parent
    non_root = new_parent[tree.num_roots:]
    assert bool((new_parent[:tree.num_roots] == -1).all())
    # Every family is one run of nodes, larger families first in a level.
    changes = (non_root[1:] != non_root[:-1]).sum() + 1
    assert int(changes) == int(non_root.unique().numel())
    size = layout.num_children[non_root]
    for lo, hi in zip(layout.level_ptr[1:], layout.level_ptr[2:]):
        part = size[lo - tree.num_roots:hi - tree.num_roots]
        assert bool((part[1:] <= part[:-1]).all())
    # Every node's new parent is the user's node above it once unary
    # chains are contracted: between them only nodes with one child, the
    # topmost of which lends the node its position (perm).
    children = torch.bincount(parent[parent >= 0], minlength=parent.numel())
    for x, p in enumerate(new_parent.tolist()):
        node, top = int(layout.node[x]), int(layout.node[x])
        node = int(parent[node])
        while node >= 0 and (p < 0 or node != int(layout.node[p])):
            assert int(children[node]) == 1
            top, node = node, int(parent[node])
        assert top == int(layout.perm[x])
    # Buckets: every member of a family of two or more sits in exactly one
    # real slot, next to exactly its siblings; views are back to back.
    seen = torch.zeros(layout.num_nodes, dtype=torch.long)
    for bucket in layout.buckets:
        assert bucket.index.size(1) == bucket.width
        members = bucket.index[bucket.valid]
        seen.index_add_(0, members, torch.ones_like(members))
        first = bucket.index[:, :1].expand_as(bucket.index)
        same = new_parent[bucket.index] == new_parent[first]
        assert bool(same[bucket.valid].all())
        count = bucket.valid.sum(1)
        assert bool((layout.family_size[bucket.index[:, 0]] == count).all())
        assert bool((count >= 2).all())
        if bucket.start is not None:
            assert bucket.index.flatten().tolist() == list(
                range(bucket.start, bucket.start + bucket.index.numel()))
    assert bool(((seen == 1) == (layout.family_size >= 2)).all())
    # Example index of each leaf: roots ordered by id.
    roots = (parent < 0).nonzero().view(-1)
    root_of = parent.clone()
    node = torch.arange(parent.numel())
    while bool((parent[node] >= 0).any()):
        node = torch.where(parent[node] >= 0, parent[node], node)
    root_of = node[:num_leaves]
    assert tree.batch.tolist() == [
        int((roots == r).nonzero()) for r in root_of.tolist()
    ]


@pytest.mark.parametrize('parent,num_leaves,match', [
    ([2, 3, 3, 1], None, 'contains a cycle: node [13] is its own ancestor'),
    ([2, 2, 2, -1], None, 'Node 2 is its own parent'),
    ([3, 3, 7, -1], None, 'parent of node 2 is 7; expected -1'),
    ([3, -3, 3, -1], None, 'parent of node 1 is -3'),
    ([1, 3, 3, -1], 3, 'leaf node 1 is the parent of node 0'),
    ([2, 2, -1, -1], 2, 'Internal node 3 has no children'),
    ([1, -1], 3, "'parent' has 2 entries, fewer than the 3 leaves"),
    ([], None, 'empty'),
])
def test_from_parent_errors(parent, num_leaves, match):
    with pytest.raises(ValueError, match=match):
        Tree.from_parent(torch.tensor(parent, dtype=torch.long), num_leaves)


def test_from_parent_type_errors():
    with pytest.raises(TypeError, match="'parent' must be an integer"):
        Tree.from_parent(torch.tensor([1.0, -1.0]))
    with pytest.raises(TypeError, match="'parent' must be a LongTensor"):
        Tree.from_parent([1, -1])
    with pytest.raises(ValueError, match="one-dimensional"):
        Tree.from_parent(torch.tensor([[1, -1]]))


def test_long_unary_chain():
    # A chain of depth 64 above one leaf, next to a second leaf.
    parent = torch.tensor([2, 65] + list(range(3, 66)) + [-1])
    tree = Tree.from_parent(parent, 2)
    assert tree.depth == 64
    q, k, v = random_qkv(2)
    out = hsa_attention(q, k, v, tree)
    # Each leaf attends only to the other one.
    torch.testing.assert_close(out, v.flip(0))


def test_from_hetero_schema_and_node_slices():
    data = molecule_like(5, [0, 0, 1, 1, 1], num_tokens=2)
    tree = Tree.from_hetero(data)
    assert tree.leaf_types == ['atom', 'token']
    assert tree.node_slices == {
        'atom': (0, 5),
        'token': (5, 7),
        'fragment': (7, 9),
        'molecule': (9, 10)
    }
    expected = [7, 7, 8, 8, 8, 9, 9, 9, 9, -1]
    assert tree.parent.tolist() == expected
    same = Tree.from_hetero(data.edge_index_dict)
    assert same.parent.tolist() == expected
    assert same.node_slices == tree.node_slices


def test_from_hetero_batched_by_dataloader_equals_each_example():
    examples = [
        molecule_like(5, [0, 0, 1, 1, 1]),
        molecule_like(3, [0, 0, 0], num_tokens=0),
        molecule_like(6, [0, 1, 1, 2, 2, 2]),
    ]
    batch = next(iter(DataLoader(examples, batch_size=3)))
    tree = Tree.from_hetero(batch)
    assert tree.num_roots == 3
    assert tree.batch.tolist() == [0] * 5 + [1] * 3 + [2] * 6
    q, k, v = random_qkv(tree.num_leaves, seed=0)
    out = hsa_attention(q, k, v, tree)
    start = 0
    for data in examples:
        t = Tree.from_hetero(data)
        n = t.num_leaves
        alone = hsa_attention(q[start:start + n], k[start:start + n],
                              v[start:start + n], t)
        torch.testing.assert_close(out[start:start + n], alone, rtol=0,
                                   atol=1e-12)
        start += n


def test_from_hetero_errors():
    data = molecule_like(3, [0, 0, 1])
    data['atom', 'in', 'molecule'].edge_index = torch.tensor([[1], [0]])
    with pytest.raises(ValueError, match="Node 1 of type 'atom' has 2 "
                       "outgoing 'in' edges"):
        Tree.from_hetero(data)

    data = molecule_like(3, [0, 0, 1])
    data['fragment'].num_nodes = 3
    with pytest.raises(ValueError, match="node 2 of type 'fragment' has no "
                       "children"):
        Tree.from_hetero(data)

    data = molecule_like(3, [0, 0, 1])
    data['atom', 'in', 'fragment'].edge_index = torch.tensor([[0, 1, 2],
                                                              [0, 0, 5]])
    with pytest.raises(ValueError, match="refers to node 5 of type "
                       "'fragment', which has only 2 nodes"):
        Tree.from_hetero(data)

    data = molecule_like(3, [0, 0, 1])
    data['molecule', 'in', 'ring'].edge_index = torch.tensor([[0], [0]])
    assert 'ring' not in data.node_types
    with pytest.raises(ValueError, match="has destination node type 'ring'"):
        Tree.from_hetero(data)

    data = molecule_like(3, [0, 0, 1])
    data['fragment', 'in', 'molecule'].edge_index = torch.tensor([[0, 1],
                                                                  [0, 1]])
    data['molecule'].num_nodes = 2
    data['molecule', 'in', 'fragment'].edge_index = torch.tensor([[0], [0]])
    with pytest.raises(ValueError, match='cycle'):
        Tree.from_hetero(data)

    data = molecule_like(3, [0, 0, 1])
    data['atom', 'in', 'fragment'].edge_index = torch.tensor(
        [[0.0, 1.0, 2.7], [0.0, 0.0, 0.9]])
    with pytest.raises(TypeError, match='must be an integer tensor'):
        Tree.from_hetero(data)

    with pytest.raises(TypeError, match="HeteroData or an edge_index_dict"):
        Tree.from_hetero(torch.tensor([1, -1]))
    with pytest.raises(ValueError, match='empty'):
        Tree.from_hetero(HeteroData())


def test_to_moves_every_tensor_and_keeps_results():
    parent, num_leaves = random_forest(np.random.default_rng(0))
    tree = Tree.from_parent(parent, num_leaves)
    moved = tree.to('cpu')
    assert layout_of(moved, False).buckets[0].index.device == \
        torch.device('cpu')
    assert moved.device == torch.device('cpu')
    q, k, v = random_qkv(num_leaves)
    torch.testing.assert_close(hsa_attention(q, k, v, moved, self_loops=True),
                               hsa_attention(q, k, v, tree, self_loops=True))


def test_from_hetero_reads_sparse_nesting():
    import torch_geometric.transforms as T
    data = molecule_like(5, [0, 0, 1, 1, 1], num_tokens=2)
    expected = Tree.from_hetero(data)
    sparse = T.ToSparseTensor()(data.clone())
    assert 'edge_index' not in sparse['atom', 'in', 'fragment']
    assert Tree.from_hetero(sparse).parent.tolist() == \
        expected.parent.tolist()
    # Non-transposed ``adj`` points child -> parent directly.
    for et in sparse.edge_types:
        if 'adj_t' in sparse[et]:
            sparse[et].adj = sparse[et].adj_t.t()
            del sparse[et].adj_t
    assert Tree.from_hetero(sparse).parent.tolist() == \
        expected.parent.tolist()

    data = molecule_like(3, [0, 0, 1])
    data['fragment', 'in', 'molecule'].weight = torch.ones(2)
    del data['fragment', 'in', 'molecule'].edge_index
    with pytest.raises(ValueError, match="stores neither 'edge_index'"):
        Tree.from_hetero(data)


def test_from_hetero_without_leaves_names_a_childless_group():
    data = molecule_like(3, [0, 0, 1])
    data['atom'].x = torch.empty(0, 5)
    data['atom', 'in', 'fragment'].edge_index = torch.empty(
        2, 0, dtype=torch.long)
    with pytest.raises(ValueError, match=r"no leaves: its leaf types "
                       r"\['atom'\] have no nodes"):
        Tree.from_hetero(data)


@pytest.mark.parametrize('hetero', [False, True])
def test_save_and_load_with_weights_only(tmp_path, hetero):
    if hetero:
        tree = Tree.from_hetero(molecule_like(5, [0, 0, 1, 1, 1], 2))
    else:
        tree = Tree.from_parent(*random_forest(np.random.default_rng(3)))
    torch.save({'tree': tree}, tmp_path / 'tree.pt')
    loaded = torch.load(tmp_path / 'tree.pt')['tree']  # weights_only=True
    assert loaded.parent.tolist() == tree.parent.tolist()
    assert (loaded.num_leaves, loaded.depth, loaded.node_slices,
            loaded.leaf_types) == (tree.num_leaves, tree.depth,
                                   tree.node_slices, tree.leaf_types)
    q, k, v = random_qkv(tree.num_leaves)
    torch.testing.assert_close(hsa_attention(q, k, v, loaded),
                               hsa_attention(q, k, v, tree))


def test_tree_is_data():
    # Tree imports nothing from the functional core and holds only what
    # defines the hierarchy; the plans are cached beside it, keyed weakly.
    import ast
    import inspect

    import pyg_hsa.topology
    import pyg_hsa.tree
    for module in (pyg_hsa.tree, pyg_hsa.topology):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [getattr(node, 'module', None) or ''] + [
                    alias.name for alias in node.names]
                assert not any('functional' in n for n in names), names
    tree = Tree.from_parent(torch.tensor([3, 3, 4, 4, -1]))
    q, k, v = random_qkv(tree.num_leaves)
    hsa_attention(q, k, v, tree)
    assert set(vars(tree)) == {'parent', 'num_leaves', 'num_nodes', 'depth',
                               'num_roots', 'batch', 'node_slices',
                               'leaf_types'}
