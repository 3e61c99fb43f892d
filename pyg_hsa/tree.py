r"""Hierarchies as data: the :class:`Tree` every HSA call takes.

A :class:`Tree` is built once per batch (from a parent vector or from a
:class:`~torch_geometric.data.HeteroData` nesting graph) and then reused by
every stacked :class:`~pyg_hsa.nn.HSAConv`. Building it validates the input
(:func:`~pyg_hsa.topology.validate_parent`); it holds the parent vector
and what is read off it (depth, roots, batch), nothing else. The plans the
kernels run on are built from it on first use and cached beside it, keyed
weakly, by :mod:`pyg_hsa.functional.plan`.
"""
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from torch_geometric.data import HeteroData
from torch_geometric.typing import EdgeType

from pyg_hsa.topology import (
    describe_global,
    roots_of,
    validate_parent,
)

NESTING_RELATION = 'in'


class Tree:
    r"""A validated forest of hierarchies, for :func:`~pyg_hsa.hsa_attention`.

    Nodes ``0 .. N-1`` are the leaves, in the order of the leaf features;
    nodes ``N .. M-1`` are internal groups. ``parent[r] == -1`` marks a root;
    every root is an independent example.

    Use :meth:`from_parent` or :meth:`from_hetero` to build one.

    Attributes:
        parent (LongTensor): ``[M]`` parent of every node in the user's
            numbering, ``-1`` for roots.
        num_leaves (int): ``N``.
        num_nodes (int): ``M``.
        num_roots (int): number of independent examples.
        depth (int): the largest number of edges between a leaf and its root.
        batch (LongTensor): ``[N]`` index of the example (root, ordered by
            root id) that each leaf belongs to; use it for graph-level pooling.
        node_slices (dict): for trees built with :meth:`from_hetero`, the
            ``(start, stop)`` range of every node type in the global numbering.
        leaf_types (list): for trees built with :meth:`from_hetero`, the leaf
            node types in the order their nodes occupy ``0 .. N-1``.
    """
    def __init__(self, parent: Tensor, num_leaves: int, depth: Tensor):
        # Use the ``from_*`` constructors: they validate first.
        self.parent = parent
        self.num_leaves = num_leaves
        self.num_nodes = parent.numel()
        self.depth = int(depth.max())
        roots = (parent < 0).nonzero().view(-1)
        self.num_roots = roots.numel()
        rank = torch.empty_like(parent)
        rank[roots] = torch.arange(roots.numel(), device=parent.device)
        self.batch = rank[roots_of(parent)[:num_leaves]]
        self.node_slices: Optional[Dict[str, Tuple[int, int]]] = None
        self.leaf_types: Optional[List[str]] = None

    # Construction ##########################################################

    @classmethod
    def from_parent(cls, parent: Tensor,
                    num_leaves: Optional[int] = None) -> 'Tree':
        r"""Validates a parent vector.

        Args:
            parent (LongTensor): ``[M]``, the parent of every node, ``-1`` for
                roots.
            num_leaves (int, optional): ``N``. Nodes ``0 .. N-1`` must be
                exactly the nodes without children. If :obj:`None`, ``N`` is
                the number of childless nodes, which must come first.
        """
        return cls(*validate_parent(parent, num_leaves, describe_global))

    @classmethod
    def for_rows(cls, parent: Tensor, num_rows: int, name: str) -> 'Tree':
        """:meth:`from_parent` for a parent vector given with :obj:`num_rows`
        leaf rows of the argument :obj:`name`; a mismatch is reported as
        such rather than as a malformed tree."""
        tree = cls.from_parent(parent)
        if tree.num_leaves != num_rows:
            raise ValueError(f"'{name}' has {num_rows} rows but the tree has "
                             f"{tree.num_leaves} leaves (its childless "
                             f"nodes 0..{tree.num_leaves - 1})")
        return tree

    @classmethod
    def from_hetero(
        cls,
        data: Union[HeteroData, Mapping[EdgeType, Tensor]],
        num_nodes_dict: Optional[Mapping[str, int]] = None,
    ) -> 'Tree':
        r"""Reads the nesting edges of a hierarchy stored as
        :class:`~torch_geometric.data.HeteroData`.

        Nesting edges have edge type ``(child_type, 'in', parent_type)`` and
        point from child to parent; every non-root node has exactly one
        outgoing ``'in'`` edge. Leaf node types are those that receive no
        ``'in'`` edge type; their nodes come first in the global numbering,
        in the order of :obj:`data.node_types`, followed by the internal node
        types. All other relations are ignored.

        Args:
            data (HeteroData or dict): a (batched) hierarchy, or its
                :obj:`edge_index_dict`.
            num_nodes_dict (dict, optional): number of nodes per type; taken
                from :obj:`data` when it is a :class:`HeteroData`. For an
                :obj:`edge_index_dict`, types missing here are counted from
                the edge indices (largest index + 1).
        """
        if isinstance(data, HeteroData):
            node_types = list(data.node_types)
            edge_index_dict = {
                et: _nesting_edges(data[et], et)
                for et in data.edge_types if et[1] == NESTING_RELATION
            }
            if num_nodes_dict is None:
                num_nodes_dict = {}
                for nt in node_types:
                    num = data[nt].num_nodes
                    if num is None:
                        raise ValueError(
                            f"Cannot tell how many nodes of type '{nt}' the "
                            f"hierarchy has; set data['{nt}'].num_nodes")
                    num_nodes_dict[nt] = num
        elif isinstance(data, Mapping):
            edge_index_dict = {
                et: ei
                for et, ei in data.items() if et[1] == NESTING_RELATION
            }
            given = dict(num_nodes_dict or {})
            node_types = list(given)
            for src, _, dst in edge_index_dict:
                node_types += [nt for nt in (src, dst) if nt not in node_types]
            # Counts not given are read off the edges (max index + 1).
            num_nodes_dict = {nt: 0 for nt in node_types}
            for (src, _, dst), ei in edge_index_dict.items():
                if isinstance(ei, Tensor) and ei.dim() == 2 and ei.numel():
                    for nt, row in ((src, ei[0]), (dst, ei[1])):
                        num_nodes_dict[nt] = max(num_nodes_dict[nt],
                                                 int(row.max()) + 1)
            num_nodes_dict.update(given)
        else:
            raise TypeError(f"'data' must be a HeteroData or an "
                            f"edge_index_dict (got {type(data).__name__})")

        for (src, rel, dst), ei in edge_index_dict.items():
            for role, nt in (('source', src), ('destination', dst)):
                if nt not in num_nodes_dict:
                    raise ValueError(
                        f"Nesting edge type {(src, rel, dst)} has {role} node "
                        f"type '{nt}', which the hierarchy does not have")
            if not (isinstance(ei, Tensor) and ei.dim() == 2
                    and ei.size(0) == 2):
                raise ValueError(f"edge_index of {(src, rel, dst)} must have "
                                 f"shape [2, E] (got {_shape(ei)})")
            if ei.is_floating_point() or ei.dtype == torch.bool:
                raise TypeError(f"edge_index of {(src, rel, dst)} must be an "
                                f"integer tensor (got {ei.dtype})")

        internal = {dst for _, _, dst in edge_index_dict}
        leaf_types = [nt for nt in node_types if nt not in internal]
        order = leaf_types + [nt for nt in node_types if nt in internal]
        node_slices, start = {}, 0
        for nt in order:
            node_slices[nt] = (start, start + int(num_nodes_dict[nt]))
            start += int(num_nodes_dict[nt])
        num_nodes = start
        num_leaves = sum(node_slices[nt][1] - node_slices[nt][0]
                         for nt in leaf_types)

        device = None
        for ei in edge_index_dict.values():
            device = ei.device
        parent = torch.full((num_nodes, ), -1, dtype=torch.long,
                            device=device)
        out_degree = torch.zeros(num_nodes, dtype=torch.long, device=device)
        for (src, _, dst), ei in edge_index_dict.items():
            ei = ei.long()
            (s0, s1), (d0, d1) = node_slices[src], node_slices[dst]
            for row, (lo, hi), nt in ((ei[0], (s0, s1), src),
                                      (ei[1], (d0, d1), dst)):
                bad = (row < 0) | (row >= hi - lo)
                if bool(bad.any()):
                    i = int(bad.nonzero()[0])
                    raise ValueError(
                        f"Nesting edge type {(src, 'in', dst)} refers to node "
                        f"{int(row[i])} of type '{nt}', which has only "
                        f"{hi - lo} nodes")
            child, par = ei[0] + s0, ei[1] + d0
            parent[child] = par
            out_degree.index_add_(0, child, torch.ones_like(child))

        twice = (out_degree > 1).nonzero()
        if twice.numel():
            node = int(twice[0])
            nt, i = _describe(node, node_slices)
            raise ValueError(f"Node {i} of type '{nt}' has "
                             f"{int(out_degree[node])} outgoing "
                             f"'{NESTING_RELATION}' edges; a node can have at "
                             f"most one parent")

        def describe(node: int) -> str:
            nt, i = _describe(node, node_slices)
            return f"node {i} of type '{nt}'"

        if num_leaves == 0 and num_nodes > 0:
            has_child = torch.zeros(num_nodes, dtype=torch.bool,
                                    device=device)
            has_child[parent[parent >= 0]] = True
            childless = int((~has_child).nonzero()[0])
            raise ValueError(f"The hierarchy has no leaves: its leaf types "
                             f"{leaf_types} have no nodes, so "
                             f"{describe(childless)} has no leaf below it")
        tree = cls(*validate_parent(parent, num_leaves, describe))
        tree.node_slices = node_slices
        tree.leaf_types = leaf_types
        return tree

    # Utilities ############################################################

    def to(self, device: Union[str, torch.device]) -> 'Tree':
        """The same tree with every tensor on :obj:`device` (its plans are
        built there on first use)."""
        out = object.__new__(Tree)
        out.__dict__.update({
            key: value.to(device) if isinstance(value, Tensor) else value
            for key, value in self.__dict__.items()
        })
        return out

    def __getstate__(self) -> dict:
        # Only what defines the tree is saved; loading validates it again.
        # Tensors, ints, lists and dicts only, so that ``torch.load`` with
        # ``weights_only=True`` takes it (``Tree`` is a safe global).
        return {'parent': self.parent, 'num_leaves': self.num_leaves,
                'node_slices': self.node_slices,
                'leaf_types': self.leaf_types}

    def __setstate__(self, state: dict):
        parent, num_leaves = state['parent'], state['num_leaves']
        self.__init__(*validate_parent(parent, num_leaves, describe_global))
        self.node_slices = state['node_slices']
        self.leaf_types = state['leaf_types']

    @property
    def device(self) -> torch.device:
        return self.parent.device

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_nodes={self.num_nodes}, '
                f'num_leaves={self.num_leaves}, num_roots={self.num_roots}, '
                f'depth={self.depth})')


torch.serialization.add_safe_globals([Tree])


def _nesting_edges(store, edge_type: EdgeType) -> Tensor:
    """The ``[2, E]`` child-to-parent edges of one nesting edge type,
    stored as :obj:`edge_index`, or as a sparse :obj:`adj_t` (what
    :class:`~torch_geometric.transforms.ToSparseTensor` leaves) or
    :obj:`adj`."""
    if 'edge_index' in store:
        return store.edge_index
    for key, flip in (('adj_t', True), ('adj', False)):
        if key in store:
            from torch_geometric.utils import to_edge_index
            edge_index = to_edge_index(store[key])[0]
            return edge_index.flip(0) if flip else edge_index
    raise ValueError(f"Nesting edge type {edge_type} stores neither "
                     f"'edge_index' nor a sparse 'adj_t'/'adj'")


def _describe(node: int,
              node_slices: Dict[str, Tuple[int, int]]) -> Tuple[str, int]:
    for nt, (lo, hi) in node_slices.items():
        if lo <= node < hi:
            return nt, node - lo
    return '?', node


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
