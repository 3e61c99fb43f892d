import copy

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.utils import barabasi_albert_graph, to_undirected

from pyg_hsa.transforms.graph_to_hierarchy import GraphToHierarchy
from transform_checks import (
    assert_same_hierarchy,
    check_batching,
    check_hierarchy,
)


def two_cliques_and_a_path():
    """Two 6-cliques joined by one edge, plus a separate 4-node path."""
    edges = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    edges += [(i + 6, j + 6) for i, j in edges]
    edges += [(5, 6), (12, 13), (13, 14), (14, 15)]
    edge_index = to_undirected(torch.tensor(edges).t())
    return Data(x=torch.randn(16, 3), edge_index=edge_index)


def random_graph(seed, num_nodes=40):
    graph = nx.connected_caveman_graph(4, num_nodes // 4)
    graph = nx.relabel_nodes(graph, dict(zip(
        graph, np.random.default_rng(seed).permutation(len(graph)))))
    edge_index = torch.tensor(list(graph.edges)).t()
    return Data(x=torch.randn(len(graph), 3),
                edge_index=to_undirected(edge_index))


def leaf_communities(out, num_levels):
    """The level-l community of every leaf node, composed along the tree."""
    community = out['node', 'in', 'community0'].edge_index[1]
    result = [community]
    for level in range(1, num_levels):
        edge_index = out[f'community{level - 1}', 'in',
                         f'community{level}'].edge_index
        up = torch.empty_like(edge_index[1])
        up[edge_index[0]] = edge_index[1]
        community = up[community]
        result.append(community)
    return result


def same_partition(a, b):
    """Two labelings describe the same partition."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def brute_force_walks(edges, num_nodes, walk_length):
    adjacency = np.zeros((num_nodes, num_nodes))
    for u, v in edges:
        adjacency[u, v] = 1
    isolated = adjacency.sum(1) == 0
    adjacency[isolated, isolated] = 1
    transition = adjacency / adjacency.sum(1, keepdims=True)
    power, out = np.eye(num_nodes), []
    for _ in range(walk_length):
        power = power @ transition
        out.append(np.diag(power))
    return np.stack(out, 1)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_levels_are_louvain_levels(seed):
    data = random_graph(seed)
    transform = GraphToHierarchy(num_levels=2, seed=seed)
    out = transform(data)
    check_hierarchy(out, 'node', 'graph', data.num_nodes)

    graph = nx.Graph()  # nodes in index order, as Louvain's seed needs
    graph.add_nodes_from(range(data.num_nodes))
    graph.add_edges_from(data.edge_index.t().tolist())
    louvain = list(nx.community.louvain_partitions(graph, seed=seed))
    picked = [louvain[0], louvain[-1]]
    for ours, theirs in zip(leaf_communities(out, 2), picked):
        label = torch.empty(data.num_nodes, dtype=torch.long)
        for i, community in enumerate(theirs):
            label[list(community)] = i
        assert same_partition(ours, label)


def test_two_cliques():
    out = GraphToHierarchy(num_levels=1)(two_cliques_and_a_path())
    community = out['node', 'in', 'community0'].edge_index[1]
    # Each clique is a community; the path is one or two communities.
    assert len(set(community[:6].tolist())) == 1
    assert len(set(community[6:12].tolist())) == 1
    assert community[0] != community[6]
    assert not set(community[12:].tolist()) & set(community[:12].tolist())


def test_communities_stay_in_connected_components():
    data = two_cliques_and_a_path()
    for level in leaf_communities(GraphToHierarchy(num_levels=3)(data), 3):
        assert not set(level[12:].tolist()) & set(level[:12].tolist())


@pytest.mark.parametrize('num_levels', [1, 2, 4])
def test_pe_is_random_walk_encoding_among_siblings(num_levels):
    data = random_graph(3)
    out = GraphToHierarchy(num_levels=num_levels, walk_length=5)(data)
    edges = data.edge_index.t().tolist()
    communities = leaf_communities(out, num_levels)
    child_of_leaf = torch.arange(data.num_nodes)
    types = ['node'] + [f'community{i}' for i in range(num_levels)]
    for level, child_type in enumerate(types):
        parent_of_leaf = communities[level] if level < num_levels else \
            torch.zeros(data.num_nodes, dtype=torch.long)
        num_children = out[child_type].num_nodes
        family_edges = {
            (int(child_of_leaf[u]), int(child_of_leaf[v]))
            for u, v in edges
            if parent_of_leaf[u] == parent_of_leaf[v]
            and child_of_leaf[u] != child_of_leaf[v]
        }
        reference = brute_force_walks(family_edges, num_children, 5)
        assert np.allclose(out[child_type].pe.numpy(), reference, atol=1e-5)
        child_of_leaf = parent_of_leaf


def test_fixed_levels_make_graphs_batchable():
    transform = GraphToHierarchy(num_levels=3, walk_length=4)
    examples = [transform(random_graph(seed, n))
                for seed, n in ((0, 8), (1, 40), (2, 20))]
    examples.append(transform(Data(x=torch.randn(1, 3),
                                   edge_index=torch.empty(2, 0).long())))
    assert len({tuple(ex.node_types) for ex in examples}) == 1
    check_batching(examples, 'node', 3)


def test_edgeless_graph_and_single_node():
    out = GraphToHierarchy(num_levels=2)(Data(x=torch.randn(3, 2)))
    check_hierarchy(out, 'node', 'graph', 3)
    assert out['community1'].num_nodes == 3
    out = GraphToHierarchy()(Data(x=torch.randn(1, 2)))
    check_hierarchy(out, 'node', 'graph', 1)


def test_edge_weight_is_used():
    # A 4-cycle; heavy edges 0-1 and 2-3 decide the communities.
    edge_index = to_undirected(torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]]))
    low, high = edge_index.min(0).values, edge_index.max(0).values
    heavy = (low % 2 == 0) & (high == low + 1)  # {0, 1} and {2, 3}
    data = Data(x=torch.randn(4, 2), edge_index=edge_index,
                edge_weight=torch.where(heavy, 10.0, 0.1))
    community = GraphToHierarchy(num_levels=1)(data)[
        'node', 'in', 'community0'].edge_index[1]
    assert community[0] == community[1] and community[2] == community[3]
    assert community[0] != community[2]


def test_deterministic_and_pure():
    data = Data(x=torch.randn(300, 2),
                edge_index=barabasi_albert_graph(300, 2))
    before = copy.deepcopy(data)
    transform = GraphToHierarchy(seed=7)
    first, second = transform(data), transform(data)
    for key in before.keys():
        assert torch.equal(data[key], before[key])
    for et in first.edge_types:
        assert torch.equal(first[et].edge_index, second[et].edge_index)
    for nt in first.node_types[:-1]:
        assert torch.equal(first[nt].pe, second[nt].pe)


def test_directed_input_reads_as_undirected():
    # Louvain reads the graph as undirected; the walks must too.
    graph = nx.karate_club_graph()
    one_way = torch.tensor(list(graph.edges)).t()
    x = torch.ones(34, 1)
    a = GraphToHierarchy()(Data(x=x, edge_index=one_way))
    b = GraphToHierarchy()(Data(x=x, edge_index=to_undirected(one_way)))
    for nt in ('node', 'community0', 'community1'):
        assert torch.allclose(a[nt].pe, b[nt].pe)
    for et in b.edge_types:
        if et[1] == 'in':
            assert torch.equal(a[et].edge_index, b[et].edge_index)


def test_parallel_and_zero_weight_edges():
    edge_index = torch.tensor([[0, 0, 1, 2, 3], [1, 1, 0, 3, 2]])
    zero = Data(x=torch.ones(4, 1), edge_index=edge_index,
                edge_weight=torch.zeros(5))
    out = GraphToHierarchy(num_levels=1)(zero)  # no edge at all
    assert out['community0'].num_nodes == 4
    check_hierarchy(out, 'node', 'graph', 4)


def test_root_counts_leaves_and_input_pe_is_refused():
    out = GraphToHierarchy()(Data(x=torch.ones(5, 1), num_nodes=5))
    assert out['graph'].num_leaves.tolist() == [5]
    assert 'num_nodes' not in out.to_dict()  # no stray global count
    with pytest.raises(ValueError, match="already has an attribute 'pe'"):
        GraphToHierarchy()(Data(x=torch.ones(2, 1), pe=torch.ones(2, 1)))
    with pytest.raises(ValueError, match="Cannot tell the number of nodes"):
        GraphToHierarchy()(Data(label=torch.ones(2)))


def test_repr():
    assert repr(GraphToHierarchy()) == (
        'GraphToHierarchy(num_levels=2, resolution=1.0, threshold=1e-07, '
        'walk_length=8, seed=0)')


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_levels=0), "'num_levels' must be an integer >= 1"),
    (dict(num_levels=np.int64(0)), "'num_levels' must be an integer >= 1"),
    (dict(walk_length=0), "'walk_length' must be an integer >= 1"),
    (dict(seed=-1), "'seed' must be an integer >= 0"),
    (dict(resolution=0), "'resolution' must be a finite number > 0"),
    (dict(resolution=np.float32('inf')), "'resolution' must be a finite"),
    (dict(threshold=float('nan')), "'threshold' must be a finite number "
     ">= 0"),
    (dict(threshold=-1e-3), "'threshold' must be a finite number >= 0"),
])
def test_out_of_range_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraphToHierarchy(**kwargs)


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_levels=2.0), r"'num_levels' must be an integer >= 1 \(got "
     r"2.0 of type float\)"),
    (dict(num_levels=True), "'num_levels'"),
    (dict(walk_length=2.5), "'walk_length' must be an integer >= 1"),
    (dict(seed=np.float64(1)), "'seed' must be an integer >= 0"),
    (dict(seed=None), "'seed'"),
    (dict(resolution='a'), r"'resolution' must be a finite number > 0 "
     r"\(got 'a' of type str\)"),
    (dict(resolution=np.bool_(True)), "'resolution'"),
    (dict(threshold=None), "'threshold'"),
])
def test_wrong_types_are_type_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        GraphToHierarchy(**kwargs)


def test_numpy_scalars_equal_python_scalars():
    data = random_graph(3)
    numpy = GraphToHierarchy(num_levels=np.int64(2),
                             resolution=np.float64(1.5),
                             threshold=np.float32(0), walk_length=np.int8(4),
                             seed=np.uint16(7))
    python = GraphToHierarchy(num_levels=2, resolution=1.5, threshold=0.0,
                              walk_length=4, seed=7)
    assert repr(numpy) == repr(python)
    assert [type(v) for v in vars(numpy).values()] == [int, float, float,
                                                       int, int]
    out, expected = numpy(data), python(data)
    assert_same_hierarchy(out, expected)


def test_functional_transform():
    from torch_geometric.data.datapipes import DatasetAdapter

    data = two_cliques_and_a_path()
    out = next(iter(DatasetAdapter([data]).graph_to_hierarchy(seed=1)))
    expected = GraphToHierarchy(seed=1)(data)
    assert out.node_types == expected.node_types
    for et in expected.edge_types:
        assert torch.equal(out[et].edge_index, expected[et].edge_index)


@pytest.mark.parametrize('data, match', [
    (Data(x=torch.randn(0, 2)), 'at least one node'),
    (Data(x=torch.randn(3, 2), edge_index=torch.tensor([[0, 1], [1, 3]])),
     r"column 1 refers to node \[1, 3\], but the graph has 3 nodes"),
    (Data(x=torch.randn(3, 2), edge_index=torch.tensor([[0.], [1.]])),
     "'edge_index' must be an integer tensor"),
    (Data(x=torch.randn(3, 2), edge_index=torch.tensor([0, 1])),
     r"'edge_index' must have shape \[2, E\]"),
    (Data(x=torch.randn(3, 2), edge_index=torch.tensor([[0], [1]]),
          edge_weight=torch.tensor([float('nan')])),
     "'edge_weight' must be finite and non-negative"),
    (Data(x=torch.randn(3, 2), edge_index=torch.tensor([[0], [1]]),
          edge_weight=torch.tensor([1.0, 2.0])),
     r"'edge_weight' must have shape \[1\]"),
])
def test_bad_input(data, match):
    with pytest.raises(ValueError, match=match):
        GraphToHierarchy()(data)
    with pytest.raises(TypeError, match='expects a torch_geometric'):
        GraphToHierarchy()({'x': torch.randn(2, 2)})
