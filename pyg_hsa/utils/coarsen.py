r"""Coarsening a graph into *connected* clusters, vectorised.

The clusters are graph Voronoi cells: seeds form a maximal
:math:`k`-independent set (no two seeds within :math:`k` hops of each other,
every node within :math:`k` hops of a seed), and every node joins the
cluster of its nearest seed, found by a multi-source breadth-first search
over the edges. Each node takes its label from a neighbour one step closer
to the same seed, so every cluster contains a path from each member back to
its seed: clusters are connected subgraphs, and never cross a gap the edges
do not cross (unlike voxel grids, which glue two close sheets together).

Loops run over breadth-first steps, hops and the rounds of the independent
set, never over nodes or edges.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

NO_LABEL = -1


def symmetric_edges(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Both directions of every edge, without self-loops or duplicates."""
    row, col = edge_index.long()
    keep = row != col
    row, col = row[keep], col[keep]
    key = torch.unique(torch.cat([row * num_nodes + col,
                                  col * num_nodes + row]))
    return torch.stack([key // num_nodes, key % num_nodes])


def _neighbourhood_max(value: Tensor, edge_index: Tensor, hops: int) -> Tensor:
    """The maximum of :obj:`value` over every node's :obj:`hops`-hop
    neighbourhood (itself included), on symmetric edges."""
    src, dst = edge_index
    for _ in range(hops):
        value = value.scatter_reduce(0, dst, value[src], reduce='amax',
                                     include_self=True)
    return value


def maximal_independent_set(edge_index: Tensor, num_nodes: int,
                            hops: int = 1, seed: int = 0) -> Tensor:
    r"""A maximal :math:`k`-independent set (:math:`k` = :obj:`hops`) as a
    boolean mask: selected nodes are more than :obj:`hops` hops apart, and
    every node is within :obj:`hops` hops of a selected one.

    Luby's algorithm with fixed pseudo-random priorities (a permutation
    drawn from a generator seeded with :obj:`seed`, so the result is
    deterministic): every round selects the candidates whose priority is
    the largest in their :obj:`hops`-hop neighbourhood, then removes every
    candidate they cover. Random priorities keep the number of rounds
    logarithmic in expectation; priorities following the node order could
    take a round per node on a path.

    Args:
        edge_index (LongTensor): symmetric edges ``[2, E]``.
        num_nodes (int): number of nodes.
        hops (int): the distance :math:`k`.
        seed (int): seed of the priorities.
    """
    device = edge_index.device
    generator = torch.Generator().manual_seed(seed)
    # 1..n, so that 0 marks "not a candidate" and every priority is unique.
    priority = torch.randperm(num_nodes, generator=generator).to(device) + 1
    candidate = torch.ones(num_nodes, dtype=torch.bool, device=device)
    selected = torch.zeros_like(candidate)
    while candidate.any():
        masked = torch.where(candidate, priority, 0)
        new = candidate & (_neighbourhood_max(masked, edge_index, hops) ==
                           masked)
        selected |= new
        covered = _neighbourhood_max(new.long(), edge_index, hops) > 0
        candidate &= ~covered
    return selected


def voronoi_clusters(edge_index: Tensor, num_nodes: int,
                     is_seed: Tensor) -> Tensor:
    r"""The cluster of every node: the index (in node order) of its nearest
    seed in hops, ties going to the smallest index. A node takes its label
    from a labelled neighbour, so every cluster is connected. Nodes no seed
    reaches keep the label :obj:`-1`.

    Args:
        edge_index (LongTensor): symmetric edges ``[2, E]``.
        num_nodes (int): number of nodes.
        is_seed (BoolTensor): the seeds ``[num_nodes]``.
    """
    src, dst = edge_index
    label = torch.full((num_nodes, ), NO_LABEL, dtype=torch.long,
                       device=edge_index.device)
    label[is_seed] = torch.arange(int(is_seed.sum()), device=label.device)
    frontier = is_seed
    while True:
        # Edges from the last breadth-first layer into unlabelled nodes.
        grow = frontier[src] & (label[dst] == NO_LABEL)
        if not grow.any():
            return label
        reached = torch.full_like(label, num_nodes)
        reached = reached.scatter_reduce(0, dst[grow], label[src[grow]],
                                         reduce='amin', include_self=True)
        frontier = reached < num_nodes
        label = torch.where(frontier, reached, label)


def cluster_edges(edge_index: Tensor, cluster: Tensor,
                  num_clusters: int) -> Tensor:
    """Edges between clusters that some edge joins (symmetric, without
    self-loops or duplicates)."""
    return symmetric_edges(cluster[edge_index], num_clusters)


def _log_distance(size: float, target: float) -> float:
    return abs(math.log(size) - math.log(target))


def coarsen_graph(edge_index: Tensor, num_nodes: int,
                  cluster_size: float = 8.0, seed: int = 0,
                  max_hops: Optional[int] = None) -> Tuple[Tensor, int]:
    r"""Partitions a graph into connected clusters of about
    :obj:`cluster_size` nodes: graph Voronoi cells around a maximal
    :math:`k`-independent set.

    The radius :math:`k` is the number of hops, starting at 1, whose mean
    cluster size :math:`n / \#\text{seeds}` is closest to
    :obj:`cluster_size` on a log scale (the search stops at the first
    :math:`k` that reaches it, or at :obj:`max_hops`, by default
    :math:`\lceil` :obj:`cluster_size` :math:`\rceil`, or once a larger
    :math:`k` selects as many seeds as the last). On a surface mesh
    the mean size grows roughly quadratically with :math:`k`, so it lands
    within a factor of about 1.5 of the target. Clusters never span two
    connected components; a node without edges is a cluster of its own.

    Args:
        edge_index (LongTensor): edges ``[2, E]``, either direction; self
            loops and duplicates are ignored.
        num_nodes (int): number of nodes.
        cluster_size (float): target mean number of nodes per cluster,
            greater than 1.
        seed (int): seed of the independent set's priorities.
        max_hops (int, optional): the largest radius tried.

    Returns:
        ``(cluster, num_clusters)``: the cluster of every node ``[n]``,
        numbered in the order of the seeds' indices, and their number.
    """
    if cluster_size <= 1:
        raise ValueError(f"'cluster_size' must be greater than 1 (got "
                         f"{cluster_size})")
    device = edge_index.device
    if num_nodes == 0:
        return torch.zeros(0, dtype=torch.long, device=device), 0
    edge_index = symmetric_edges(edge_index, num_nodes)
    if max_hops is None:
        max_hops = math.ceil(cluster_size)
    best, best_distance, last_count = None, math.inf, num_nodes + 1
    for hops in range(1, max(max_hops, 1) + 1):
        is_seed = maximal_independent_set(edge_index, num_nodes, hops, seed)
        count = int(is_seed.sum())
        distance = _log_distance(num_nodes / count, cluster_size)
        if distance < best_distance:
            best, best_distance = is_seed, distance
        # Stop at the target, or once a wider radius stops merging (every
        # component is down to one or a few clusters).
        if num_nodes / count >= cluster_size or count == last_count or \
                edge_index.numel() == 0:
            break
        last_count = count
    cluster = voronoi_clusters(edge_index, num_nodes, best)
    return cluster, int(best.sum())
