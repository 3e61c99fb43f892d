import math

import networkx as nx
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pyg_hsa.utils.coarsen import (
    cluster_edges,
    coarsen_graph,
    maximal_independent_set,
    voronoi_clusters,
)


def edges_of(graph: nx.Graph) -> torch.Tensor:
    """Both directions of every edge of a networkx graph."""
    pairs = list(graph.edges())
    if not pairs:
        return torch.zeros(2, 0, dtype=torch.long)
    edge_index = torch.tensor(pairs, dtype=torch.long).t()
    return torch.cat([edge_index, edge_index.flip(0)], dim=1)


def grid(rows: int, cols: int) -> nx.Graph:
    return nx.convert_node_labels_to_integers(nx.grid_2d_graph(rows, cols))


def distances(graph: nx.Graph):
    return dict(nx.all_pairs_shortest_path_length(graph))


def assert_clusters_connected(graph: nx.Graph, cluster: torch.Tensor,
                              num_clusters: int) -> None:
    assert sorted(set(cluster.tolist())) == list(range(num_clusters))
    for c in range(num_clusters):
        members = (cluster == c).nonzero().view(-1).tolist()
        assert nx.is_connected(graph.subgraph(members))


random_graphs = st.builds(
    lambda n, p, seed: nx.gnp_random_graph(n, p, seed=seed),
    st.integers(1, 25), st.floats(0.0, 0.4), st.integers(0, 10**6))


@settings(max_examples=60, deadline=None)
@given(random_graphs, st.integers(1, 3), st.integers(0, 3))
def test_maximal_independent_set_is_independent_and_maximal(graph, hops,
                                                            seed):
    n = graph.number_of_nodes()
    selected = maximal_independent_set(edges_of(graph), n, hops, seed)
    chosen = selected.nonzero().view(-1).tolist()
    dist = distances(graph)
    for a in chosen:
        for b in chosen:
            assert a == b or dist[a].get(b, math.inf) > hops
    for v in range(n):
        assert any(dist[v].get(s, math.inf) <= hops for s in chosen)


def test_maximal_independent_set_is_deterministic_per_seed():
    edge_index = edges_of(grid(12, 12))
    first = maximal_independent_set(edge_index, 144, 2, seed=0)
    assert torch.equal(first, maximal_independent_set(edge_index, 144, 2))
    others = [maximal_independent_set(edge_index, 144, 2, seed=s)
              for s in range(1, 4)]
    assert any(not torch.equal(first, other) for other in others)


@settings(max_examples=60, deadline=None)
@given(random_graphs, st.data())
def test_voronoi_clusters_join_a_nearest_seed(graph, draw):
    n = graph.number_of_nodes()
    seeds = sorted(draw.draw(st.sets(st.integers(0, n - 1), min_size=1)))
    is_seed = torch.zeros(n, dtype=torch.bool)
    is_seed[seeds] = True
    label = voronoi_clusters(edges_of(graph), n, is_seed)
    dist = distances(graph)
    for v in range(n):
        reach = [dist[v].get(s) for s in seeds]
        if all(d is None for d in reach):
            assert label[v] == -1
            continue
        nearest = min(d for d in reach if d is not None)
        # The nearest seed, ties going to the smallest index.
        assert int(label[v]) == reach.index(nearest)
    for c in range(len(seeds)):
        members = (label == c).nonzero().view(-1).tolist()
        assert nx.is_connected(graph.subgraph(members))


def test_cluster_edges_joins_touching_clusters():
    # Path 0-1-2-3-4 in clusters {0, 1}, {2}, {3, 4}; a self-loop on 2.
    edge_index = torch.tensor([[0, 1, 2, 3, 2], [1, 2, 3, 4, 2]])
    cluster = torch.tensor([0, 0, 1, 2, 2])
    assert cluster_edges(edge_index, cluster, 3).tolist() == [
        [0, 1, 1, 2], [1, 0, 2, 1]]


def test_coarsen_graph_on_a_grid_hits_the_target_size():
    graph = grid(30, 30)
    cluster, num_clusters = coarsen_graph(edges_of(graph), 900, 8.0)
    assert_clusters_connected(graph, cluster, num_clusters)
    mean = 900 / num_clusters
    assert 8 / 1.6 <= mean <= 8 * 1.6
    # A bigger target gives bigger clusters.
    _, fewer = coarsen_graph(edges_of(graph), 900, 30.0)
    assert fewer < num_clusters / 2


def test_coarsen_graph_ignores_direction_self_loops_and_duplicates():
    graph = grid(10, 10)
    both = edges_of(graph)
    one_way = torch.tensor(list(graph.edges()), dtype=torch.long).t()
    messy = torch.cat([one_way, one_way, torch.arange(5).repeat(2, 1)], 1)
    expected = coarsen_graph(both, 100, 6.0)
    for edge_index in (one_way, messy):
        cluster, num_clusters = coarsen_graph(edge_index, 100, 6.0)
        assert num_clusters == expected[1]
        assert torch.equal(cluster, expected[0])


@settings(max_examples=40, deadline=None)
@given(random_graphs, st.floats(1.5, 20.0))
def test_coarsen_graph_clusters_are_connected(graph, size):
    n = graph.number_of_nodes()
    cluster, num_clusters = coarsen_graph(edges_of(graph), n, size)
    assert_clusters_connected(graph, cluster, num_clusters)
    # No cluster spans two components; isolated nodes are alone.
    assert num_clusters >= nx.number_connected_components(graph)
    for v in nx.isolates(graph):
        assert int((cluster == cluster[v]).sum()) == 1


def test_coarsen_graph_edge_cases():
    empty = torch.zeros(2, 0, dtype=torch.long)
    cluster, num_clusters = coarsen_graph(empty, 0)
    assert cluster.numel() == 0 and num_clusters == 0
    cluster, num_clusters = coarsen_graph(empty, 4)
    assert cluster.tolist() == [0, 1, 2, 3] and num_clusters == 4
    with pytest.raises(ValueError, match='cluster_size'):
        coarsen_graph(empty, 4, cluster_size=1.0)
