from typing import List, Optional

import networkx as nx
import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform

from pyg_hsa.utils.checks import check_int, check_real
from pyg_hsa.utils.coarsen import symmetric_edges
from pyg_hsa.utils.hierarchy import (
    add_level,
    add_root,
    check_input,
    data_device,
    leaf_hetero,
    random_walk_encoding,
)


@functional_transform('graph_to_hierarchy')
class GraphToHierarchy(BaseTransform):
    r"""Turns any graph into a hierarchy of nested communities: nodes →
    :obj:`community0` → ... → :obj:`community{L-1}` → one :obj:`graph`
    root (functional name: :obj:`graph_to_hierarchy`).

    The communities are the levels of the Louvain dendrogram
    (:func:`networkx.community.louvain_partitions`: every level merges the
    communities of the one below, so they nest exactly), computed on the
    undirected graph with edge weights :obj:`edge_weight` when present.
    Louvain is randomised; a fixed :obj:`seed` makes the transform a pure
    function of its input. Louvain never merges communities with no edge
    between them, so a community lies inside one connected component.

    The dendrogram has a data-dependent number of levels. PyG's
    :class:`~torch_geometric.loader.DataLoader` can only batch hierarchies
    with the same node types, so the output always has :obj:`num_levels`
    community levels: levels are picked evenly from finest to coarsest
    when Louvain finds more, and the coarsest is repeated (each community
    then has a single child) when it finds fewer.

    Node attributes stay on the leaf type :obj:`node`, the edges become
    :obj:`('node', 'edge', 'node')`. The position of a node (or community)
    inside its parent's family is its random-walk structural encoding in
    the subgraph of its siblings, stored in :obj:`pe`:

    .. math::
        \mathrm{pe}_i = \left[ (P_F^t)_{ii} \right]_{t=1}^{T}

    where :math:`P_F` is the random-walk matrix of the graph restricted to
    the family :math:`F` (for communities: the graph between communities,
    two communities adjacent when an edge joins them), read as undirected
    like Louvain reads it, and :math:`T` = :obj:`walk_length`: it tells a
    hub from a leaf, a ring member from a chain member.

    Cost: Louvain is networkx's pure-Python implementation (about 3 s for
    5,000 nodes); the walks cost one entry per pair of siblings within
    :obj:`walk_length` hops of each other, so a community of thousands of
    nodes around a hub (a star) takes seconds and memory quadratic in its
    size. Apply the transform as a :obj:`pre_transform` on such graphs.

    Args:
        num_levels (int, optional): number of community levels.
            (default: :obj:`2`)
        resolution (float, optional): Louvain resolution; larger values
            give smaller communities. (default: :obj:`1.0`)
        threshold (float, optional): Louvain stops when a level improves
            modularity by less. (default: :obj:`1e-7`)
        walk_length (int, optional): width of :obj:`pe`.
            (default: :obj:`8`)
        seed (int, optional): seed of Louvain's random node order.
            (default: :obj:`0`)
    """
    leaf_type = 'node'
    root_type = 'graph'

    def __init__(self, num_levels: int = 2, resolution: float = 1.0,
                 threshold: float = 1e-7, walk_length: int = 8,
                 seed: int = 0):
        self.num_levels = check_int(num_levels, 'num_levels', minimum=1)
        self.resolution = check_real(resolution, 'resolution', minimum=0,
                                     strict=True)
        self.threshold = check_real(threshold, 'threshold', minimum=0)
        self.walk_length = check_int(walk_length, 'walk_length', minimum=1)
        self.seed = check_int(seed, 'seed', minimum=0)

    def forward(self, data: Data) -> HeteroData:
        num_nodes = check_input(data, 'GraphToHierarchy', 'node')
        device = data_device(data)
        # Louvain and the walks run on the CPU, on the undirected graph.
        edge_index = _edge_index(data, num_nodes)
        weight = _edge_weight(data, edge_index)
        partitions = self._partitions(edge_index, weight, num_nodes)
        # Self-loops never join two siblings, so dropping them here
        # changes no family graph.
        edge_index = symmetric_edges(edge_index, num_nodes)
        out = leaf_hetero(data, self.leaf_type, 'edge')

        # child_of_leaf: the node of the current level above every leaf.
        child_type = self.leaf_type
        child_of_leaf = torch.arange(num_nodes)
        for level, community in enumerate(partitions):
            num_parents = int(community.max()) + 1
            parent = torch.zeros(out[child_type].num_nodes, dtype=torch.long)
            parent[child_of_leaf] = community
            add_level(out, child_type, f'community{level}',
                      parent.to(device), num_parents)
            out[child_type].pe = self._family_pe(
                parent, edge_index, child_of_leaf).to(device)
            child_type, child_of_leaf = f'community{level}', community

        add_root(out, child_type, self.root_type, num_nodes, device)
        root = torch.zeros(out[child_type].num_nodes, dtype=torch.long)
        out[child_type].pe = self._family_pe(root, edge_index,
                                             child_of_leaf).to(device)
        return out

    def _partitions(self, edge_index: Tensor, weight: Optional[Tensor],
                    num_nodes: int) -> List[Tensor]:
        graph = nx.Graph()
        graph.add_nodes_from(range(num_nodes))
        # One undirected edge per node pair; parallel edges and both
        # directions add up (a uniform factor does not change modularity).
        low = torch.minimum(edge_index[0], edge_index[1])
        high = torch.maximum(edge_index[0], edge_index[1])
        key, inverse = torch.unique(low * num_nodes + high,
                                    return_inverse=True)
        total = torch.zeros(key.numel(), dtype=torch.float64).index_add_(
            0, inverse, torch.ones(inverse.numel(), dtype=torch.float64)
            if weight is None else weight)
        keep = total > 0  # zero-weight edges are no edges
        graph.add_weighted_edges_from(zip(
            (key[keep] // num_nodes).tolist(),
            (key[keep] % num_nodes).tolist(), total[keep].tolist()))
        levels = [
            _community_index(level, num_nodes)
            for level in nx.community.louvain_partitions(
                graph, weight='weight', resolution=self.resolution,
                threshold=self.threshold, seed=self.seed)
        ] or [torch.arange(num_nodes)]
        pick = torch.linspace(0, len(levels) - 1, self.num_levels)
        if len(levels) >= self.num_levels:
            pick = pick.round().long()
        else:  # Too few levels: repeat the coarsest at the top.
            pick = torch.arange(self.num_levels).clamp(max=len(levels) - 1)
        return [levels[i] for i in pick.tolist()]

    def _family_pe(self, parent: Tensor, edge_index: Tensor,
                   child_of_leaf: Tensor) -> Tensor:
        """Random-walk encoding of every child in its family graph:
        children adjacent when an edge of the input joins their leaves,
        kept only between siblings."""
        num_children = parent.numel()
        src, dst = child_of_leaf[edge_index[0]], child_of_leaf[edge_index[1]]
        keep = (src != dst) & (parent[src] == parent[dst])
        pairs = torch.unique(src[keep] * num_children + dst[keep])
        family_edges = torch.stack([pairs // num_children,
                                    pairs % num_children])
        return random_walk_encoding(family_edges, num_children,
                                    self.walk_length)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_levels={self.num_levels}, '
                f'resolution={self.resolution}, '
                f'threshold={self.threshold}, '
                f'walk_length={self.walk_length}, seed={self.seed})')


def _edge_index(data: Data, num_nodes: int) -> Tensor:
    edge_index = data.edge_index if 'edge_index' in data else None
    if edge_index is None:
        return torch.empty(2, 0, dtype=torch.long)
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or \
            edge_index.size(0) != 2:
        raise ValueError(f"'edge_index' must have shape [2, E] (got "
                         f"{getattr(edge_index, 'shape', edge_index)})")
    if edge_index.is_floating_point() or edge_index.dtype == torch.bool:
        raise ValueError(f"'edge_index' must be an integer tensor (got "
                         f"{edge_index.dtype})")
    edge_index = edge_index.long().cpu()
    bad = (edge_index < 0) | (edge_index >= num_nodes)
    if bool(bad.any()):
        column = int(bad.any(0).nonzero()[0])
        raise ValueError(f"'edge_index' column {column} refers to node "
                         f"{edge_index[:, column].tolist()}, but the graph "
                         f"has {num_nodes} nodes")
    return edge_index


def _edge_weight(data: Data, edge_index: Tensor) -> Optional[Tensor]:
    weight = data.edge_weight if 'edge_weight' in data else None
    if weight is None:
        return None
    if not isinstance(weight, Tensor) or weight.shape != (
            edge_index.size(1), ):
        raise ValueError(f"'edge_weight' must have shape "
                         f"[{edge_index.size(1)}] (got "
                         f"{getattr(weight, 'shape', weight)})")
    weight = weight.detach().double().cpu()
    if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
        raise ValueError("'edge_weight' must be finite and non-negative")
    return weight


def _community_index(communities, num_nodes: int) -> Tensor:
    """A partition (list of node sets) as a community id per node,
    communities numbered by their smallest node so the ids do not depend on
    networkx's set ordering."""
    # networkx hands out Python sets; flattening them is one pass over the
    # nodes inside C-implemented list/tensor constructors.
    members = [sorted(community) for community in communities]
    members.sort(key=lambda nodes: nodes[0])
    node = torch.tensor([n for nodes in members for n in nodes],
                        dtype=torch.long)
    sizes = torch.tensor([len(nodes) for nodes in members])
    community = torch.empty(num_nodes, dtype=torch.long)
    community[node] = torch.repeat_interleave(
        torch.arange(len(members)), sizes)
    return community
