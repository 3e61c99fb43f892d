from typing import List, Optional

import networkx as nx
import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import BaseTransform

from pyg_hsa.utils.hierarchy import (
    add_level,
    leaf_hetero,
    random_walk_encoding,
)


class GraphToHierarchy(BaseTransform):
    r"""Turns any graph into a hierarchy of nested communities: nodes →
    :obj:`community0` → ... → :obj:`community{L-1}` → one :obj:`graph`
    root.

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
    two communities adjacent when an edge joins them) and :math:`T` =
    :obj:`walk_length`: it tells a hub from a leaf, a ring member from a
    chain member.

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
        for name, value, low in (('num_levels', num_levels, 1),
                                 ('walk_length', walk_length, 1),
                                 ('seed', seed, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or \
                    value < low:
                raise ValueError(f"'{name}' must be an integer >= {low} "
                                 f"(got {value!r})")
        if not resolution > 0:
            raise ValueError(f"'resolution' must be positive (got "
                             f"{resolution!r})")
        if not threshold >= 0:
            raise ValueError(f"'threshold' must be non-negative (got "
                             f"{threshold!r})")
        self.num_levels = num_levels
        self.resolution = float(resolution)
        self.threshold = float(threshold)
        self.walk_length = walk_length
        self.seed = seed

    def forward(self, data: Data) -> HeteroData:
        if not isinstance(data, Data):
            raise TypeError(f"GraphToHierarchy expects a "
                            f"torch_geometric.data.Data (got "
                            f"{type(data).__name__})")
        num_nodes = data.num_nodes
        if not num_nodes:
            raise ValueError("GraphToHierarchy needs a graph with at least "
                             "one node (the input has none)")
        edge_index = _edge_index(data, num_nodes)
        weight = _edge_weight(data, edge_index)

        partitions = self._partitions(edge_index, weight, num_nodes)
        out = leaf_hetero(data, self.leaf_type, 'edge')

        # community[l][i]: the level-l community of leaf node i.
        child_type = self.leaf_type
        child_of_leaf = torch.arange(num_nodes)
        for level, community in enumerate(partitions):
            num_parents = int(community.max()) + 1
            parent = torch.zeros(out[child_type].num_nodes, dtype=torch.long)
            parent[child_of_leaf] = community
            self._nest(out, child_type, f'community{level}', parent,
                       num_parents, edge_index, child_of_leaf)
            child_type, child_of_leaf = f'community{level}', community

        self._nest(out, child_type, self.root_type,
                   torch.zeros(out[child_type].num_nodes, dtype=torch.long),
                   1, edge_index, child_of_leaf)
        return out

    def _partitions(self, edge_index: Tensor, weight: Optional[Tensor],
                    num_nodes: int) -> List[Tensor]:
        graph = nx.Graph()
        graph.add_nodes_from(range(num_nodes))
        pairs = edge_index.t().tolist()
        if weight is None:
            graph.add_edges_from(pairs)
        else:
            graph.add_weighted_edges_from(
                (u, v, w) for (u, v), w in zip(pairs, weight.tolist()))
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

    def _nest(self, out: HeteroData, child_type: str, parent_type: str,
              parent: Tensor, num_parents: int, edge_index: Tensor,
              child_of_leaf: Tensor) -> None:
        add_level(out, child_type, parent_type, parent, num_parents)
        # The family graph: children adjacent when an edge of the input
        # joins their leaves, kept only between siblings.
        src, dst = child_of_leaf[edge_index[0]], child_of_leaf[edge_index[1]]
        keep = (src != dst) & (parent[src] == parent[dst])
        num_children = out[child_type].num_nodes
        pairs = torch.unique(src[keep] * num_children + dst[keep])
        family_edges = torch.stack([pairs // num_children,
                                    pairs % num_children])
        out[child_type].pe = random_walk_encoding(family_edges, num_children,
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
