import math

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch_geometric.data import Data
from torch_geometric.utils import from_smiles

from pyg_hsa.utils import (
    add_level,
    fourier_encoding,
    group_sizes,
    leaf_hetero,
    random_walk_encoding,
    rank_in_group,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(-3, 3)),
                max_size=30))
def test_rank_in_group_matches_sorting_each_group(items):
    group = torch.tensor([g for g, _ in items], dtype=torch.long)
    key = torch.tensor([k for _, k in items], dtype=torch.float)
    by_key, by_index = rank_in_group(group, key), rank_in_group(group)
    for g in set(group.tolist()):
        members = [i for i in range(len(items)) if items[i][0] == g]
        ordered = sorted(members, key=lambda i: (items[i][1], i))
        assert [int(by_key[i]) for i in ordered] == list(range(len(members)))
        assert [int(by_index[i]) for i in members] == list(
            range(len(members)))


def test_group_sizes():
    assert group_sizes(torch.tensor([2, 0, 2]), 4).tolist() == [1, 0, 2, 0]


def test_fourier_encoding():
    out = fourier_encoding(torch.tensor([0, 3]), 4, max_period=100.0)
    expected = [[0, 0, 1, 1], [math.sin(3), math.sin(0.3), math.cos(3),
                               math.cos(0.3)]]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)
    with pytest.raises(ValueError, match="'channels' must be a positive "
                       "even number"):
        fourier_encoding(torch.arange(2), 3)


@pytest.mark.parametrize('seed', range(5))
def test_random_walk_encoding_matches_matrix_powers(seed):
    graph = nx.gnm_random_graph(25, 30, seed=seed)
    edges = list(graph.edges)
    edge_index = torch.tensor(edges + [(v, u) for u, v in edges]).t()
    out = random_walk_encoding(edge_index, 25, 6)
    adjacency = nx.to_numpy_array(graph, nodelist=range(25))
    isolated = adjacency.sum(1) == 0
    adjacency[isolated, isolated] = 1  # an isolated walker stays put
    transition = adjacency / adjacency.sum(1, keepdims=True)
    power = np.eye(25)
    for step in range(6):
        power = power @ transition
        assert np.allclose(out[:, step].numpy(), np.diag(power), atol=1e-6)


def test_random_walk_encoding_edge_cases():
    assert random_walk_encoding(torch.empty(2, 0).long(), 0, 3).shape == (
        0, 3)
    assert random_walk_encoding(torch.empty(2, 0).long(), 2, 3).tolist() == [
        [1, 1, 1], [1, 1, 1]]


def test_leaf_hetero_sorts_attributes():
    data = from_smiles('CCO')
    data.y = torch.tensor([[0.5]])
    out = leaf_hetero(data, 'atom', 'bond')
    assert out['atom'].x is data.x
    assert out['atom', 'bond', 'atom'].edge_attr is data.edge_attr
    assert out.smiles == 'CCO' and out.y is data.y
    assert out['atom'].num_nodes == 3
    # A node label stays on the nodes; a 1-node graph's y is graph-level.
    labelled = leaf_hetero(Data(x=torch.randn(3, 1), y=torch.arange(3)),
                           'node', 'edge')
    assert torch.equal(labelled['node'].y, torch.arange(3))
    single = leaf_hetero(Data(x=torch.randn(1, 1), y=torch.ones(1)),
                         'node', 'edge')
    assert 'y' not in single['node'] and single.y.tolist() == [1.0]
    with pytest.raises(TypeError, match="'data' must be a torch_geometric"):
        leaf_hetero({'x': torch.randn(2)}, 'node', 'edge')


def test_add_level():
    data = leaf_hetero(Data(x=torch.randn(3, 1)), 'node', 'edge')
    add_level(data, 'node', 'group', torch.tensor([1, 0, 1]), 2)
    assert data['group'].num_nodes == 2
    edge_index = data['node', 'in', 'group'].edge_index
    assert edge_index.tolist() == [[0, 1, 2], [1, 0, 1]]


def test_first_child():
    from pyg_hsa.utils import first_child
    parent = torch.tensor([1, 1, 0, 2, 0])
    assert first_child(parent).tolist() == [2, 0, 3]
    assert first_child(parent, 4).tolist() == [2, 0, 3, 5]  # 5: no child
