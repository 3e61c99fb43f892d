r"""Compiled hierarchies: the bookkeeping every HSA forward pass shares.

A :class:`Tree` is built once per batch (from a parent vector or from a
:class:`~torch_geometric.data.HeteroData` nesting graph) and then reused by
every stacked :class:`~pyg_hsa.nn.HSAConv`. Building it validates the input and
renumbers the nodes in *level order*: all roots first, then depth 1, depth 2,
and so on, and inside each level sorted by parent. In that order

* every depth level is one contiguous slice, so the dynamic program runs one
  vectorised step per level and never loops over nodes;
* every family (the children of one parent) is one contiguous slice, so
  child-to-parent reductions are CSR segment reductions, and families of
  equal (power-of-two padded) width run their sibling softmax as one
  batched dense attention, usually on a plain reshape of the level.
"""
import operator
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from torch_geometric.data import HeteroData
from torch_geometric.typing import EdgeType

NESTING_RELATION = 'in'


class FamilyBucket(NamedTuple):
    """Families (children of one parent; a root alone) of one depth level
    whose size pads to one power of two ``width``, laid out for batched
    dense attention. Positions are relative to the start of the level."""
    width: int
    #: ``[F, width]`` level-order node in every slot (padding repeats the
    #: family's first member, so gathers stay in range).
    index: Tensor
    #: ``[F, width]`` whether a slot holds a real member.
    valid: Tensor
    #: ``[S]`` flat slot (in ``index.view(-1)``) of every real member.
    slot: Tensor
    #: ``[S]`` position of every real member, ``index.view(-1)[slot]``.
    node: Tensor
    #: ``(lo, hi)`` if the families are exactly the nodes ``lo .. hi - 1``,
    #: back to back without padding, so a reshape replaces the gather.
    span: Optional[Tuple[int, int]]


def _cumsum(x: Tensor) -> Tensor:
    """Exclusive-start cumulative sum: ``[0, x0, x0+x1, ...]``."""
    return torch.cat([x.new_zeros(1), x.cumsum(0)])


class Tree:
    r"""A forest of hierarchies, compiled for :func:`~pyg_hsa.hsa_attention`.

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
    def __init__(self, *, parent: Tensor, num_leaves: int, perm: Tensor,
                 parent_new: Tensor, level_ptr: Tuple[int, ...],
                 num_children: Tensor, size: Tensor, batch: Tensor):
        # Use the ``from_*`` constructors: they validate and compile.
        self.parent = parent
        self.num_leaves = num_leaves
        self.num_nodes = parent.numel()
        self.num_roots = level_ptr[1]
        self.level_ptr = level_ptr
        self.level_sizes = tuple(hi - lo
                                 for lo, hi in zip(level_ptr, level_ptr[1:]))
        self.depth = len(level_ptr) - 2
        self.batch = batch
        self.node_slices: Optional[Dict[str, Tuple[int, int]]] = None
        self.leaf_types: Optional[List[str]] = None

        # Level-order internals (``perm[new] = old``), all built once here
        # so that stacked layers and torch.compile reuse them:
        self.perm = perm
        self.parent_new = parent_new
        self.size = size  # number of leaves below every node
        self.num_children = num_children
        self.is_leaf = num_children == 0
        # Family size of every node (1 for roots).
        self.family_size = torch.where(
            parent_new < 0, 1, num_children[parent_new.clamp(min=0)])

        # Everything below is per depth level, so that the dynamic program
        # never touches a full [M, ...] tensor of features.
        by_level = self.by_level
        children = by_level(num_children)
        #: Leaves at depth d: their positions inside the level and their
        #: rows in the user's leaf order.
        self.level_leaf_pos = [
            leaf.nonzero().view(-1) for leaf in by_level(self.is_leaf)
        ]
        self.level_leaf_src = [
            old[pos] for old, pos in zip(by_level(perm), self.level_leaf_pos)
        ]
        #: ``(a, b)`` where depth d holds exactly the user's leaves a..b-1
        #: in order (then inputs and outputs are views, not gathers).
        self.level_leaf_span = [
            _as_span(src) if src.numel() == self.level_sizes[d] else None
            for d, src in enumerate(self.level_leaf_src)
        ]
        #: How leaf rows gathered level by level map back to the user's
        #: order (``None`` when they already are in it).
        order = torch.cat(self.level_leaf_src)
        self.leaf_order = None if _as_span(order) == (0, num_leaves) else \
            torch.argsort(order)
        #: Per depth d: the parents of level d + 1 relative to level d.
        self.level_parent = [
            parent_new[level_ptr[d + 1]:level_ptr[d + 2]] - level_ptr[d]
            for d in range(self.depth)
        ]
        #: Per depth d: the families made of level-d nodes (children of one
        #: parent at depth d - 1; each root alone), bucketed by width.
        self.level_buckets = [
            _family_buckets(torch.arange(self.num_roots, device=perm.device),
                            torch.ones_like(children[0]))
        ]
        for d in range(1, self.depth + 1):
            count = children[d - 1]
            start = _cumsum(count)[:-1]
            internal = count > 0
            self.level_buckets.append(
                _family_buckets(start[internal], count[internal]))
        #: Per depth d: the level's rows in bucket order (every bucket's
        #: ``index``, flattened, one bucket after another) and the place of
        #: every node of the level in that order, so that a level takes one
        #: gather in and one out whatever its number of buckets.
        self.level_bucket_order, self.level_bucket_slot = [], []
        for d, buckets in enumerate(self.level_buckets):
            self.level_bucket_order.append(
                torch.cat([b.index.reshape(-1) for b in buckets]))
            slot = torch.empty(self.level_sizes[d], dtype=torch.long,
                               device=perm.device)
            start = 0
            for b in buckets:
                slot[b.node] = start + b.slot
                start += b.index.numel()
            self.level_bucket_slot.append(slot)
        #: Per depth d >= 1: ``W`` if every node at depth d - 1 has exactly
        #: ``W`` children, so that parent-child maps are reshapes.
        self.level_width = [None] + [
            buckets[0].width if len(buckets) == 1 and buckets[0].span == (
                0, self.level_sizes[d]) and self.level_leaf_pos[d - 1].numel()
            == 0 else None
            for d, buckets in enumerate(self.level_buckets) if d > 0
        ]

    # Construction ##########################################################

    @classmethod
    def from_parent(cls, parent: Tensor,
                    num_leaves: Optional[int] = None) -> 'Tree':
        r"""Validates and compiles a parent vector.

        Args:
            parent (LongTensor): ``[M]``, the parent of every node, ``-1`` for
                roots.
            num_leaves (int, optional): ``N``. Nodes ``0 .. N-1`` must be
                exactly the nodes without children. If :obj:`None`, ``N`` is
                the number of childless nodes, which must come first.
        """
        return cls._compile(parent, num_leaves, describe=_describe_global)

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
        r"""Compiles the nesting edges of a hierarchy stored as
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
                et: data[et].edge_index
                for et in data.edge_types if et[1] == NESTING_RELATION
                and 'edge_index' in data[et]
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

        tree = cls._compile(parent, num_leaves, describe=describe)
        tree.node_slices = node_slices
        tree.leaf_types = leaf_types
        return tree

    @classmethod
    def _compile(cls, parent: Tensor, num_leaves: Optional[int],
                 describe) -> 'Tree':
        if not isinstance(parent, Tensor):
            raise TypeError(f"'parent' must be a LongTensor "
                            f"(got {type(parent).__name__})")
        if parent.dim() != 1:
            raise ValueError(f"'parent' must be one-dimensional "
                             f"(got shape {tuple(parent.shape)})")
        if parent.dtype.is_floating_point or parent.dtype == torch.bool \
                or parent.is_complex():
            raise TypeError(f"'parent' must be an integer tensor "
                            f"(got {parent.dtype})")
        if num_leaves is not None:
            try:
                num_leaves = operator.index(num_leaves)
            except TypeError:
                raise TypeError(f"'num_leaves' must be an int (got "
                                f"{type(num_leaves).__name__})") from None
        parent = parent.long()
        num_nodes = parent.numel()
        if num_nodes == 0:
            raise ValueError("The hierarchy is empty (it has no nodes)")
        device = parent.device
        if num_leaves is not None and num_leaves > num_nodes:
            raise ValueError(f"'parent' has {num_nodes} entries, fewer than "
                             f"the {num_leaves} leaves; it needs one entry "
                             f"per leaf and per internal node")

        bad = (parent < -1) | (parent >= num_nodes)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"The parent of {describe(i)} is "
                             f"{int(parent[i])}; expected -1 (a root) or a "
                             f"node index in [0, {num_nodes})")
        arange = torch.arange(num_nodes, device=device)
        own = parent == arange
        if bool(own.any()):
            raise ValueError(f"{_cap(describe(int(own.nonzero()[0])))} is its "
                             f"own parent")

        has_parent = parent >= 0
        num_children = torch.zeros(num_nodes, dtype=torch.long, device=device)
        num_children.index_add_(0, parent[has_parent],
                                torch.ones_like(parent[has_parent]))
        childless = num_children == 0
        if num_leaves is None:
            num_leaves = int(childless.long().cumprod(0).sum())
            if num_leaves == 0:
                raise ValueError(f"Leaves must come first, but "
                                 f"{describe(0)} has children")
        elif num_leaves < 1:
            raise ValueError(f"'num_leaves' must be positive "
                             f"(got {num_leaves})")
        if bool((~childless[:num_leaves]).any()):
            i = int((~childless[:num_leaves]).nonzero()[0])
            c = int((parent == i).nonzero()[0])
            raise ValueError(f"Leaves cannot have children, but leaf "
                             f"{describe(i)} is the parent of {describe(c)}")
        if bool(childless[num_leaves:].any()):
            i = num_leaves + int(childless[num_leaves:].nonzero()[0])
            raise ValueError(f"Internal {describe(i)} has no children; "
                             f"every group needs at least one leaf below it "
                             f"(leaves are nodes 0..{num_leaves - 1})")

        depth = _depth_by_pointer_jumping(parent, describe)

        # Level order: roots by id, then each level sorted by parent's new id.
        levels = []
        num_levels = int(depth.max()) + 1
        by_depth = torch.argsort(depth, stable=True)
        counts = torch.bincount(depth, minlength=num_levels).tolist()
        new_id = torch.empty(num_nodes, dtype=torch.long, device=device)
        start = 0
        for count in counts:
            nodes = by_depth[start:start + count]
            if start > 0:  # Not the roots: sort by the parent's new id.
                nodes = nodes[torch.argsort(new_id[parent[nodes]],
                                            stable=True)]
            new_id[nodes] = torch.arange(start, start + count, device=device)
            levels.append(nodes)
            start += count
        perm = torch.cat(levels)
        level_ptr = tuple([0] + torch.tensor(counts).cumsum(0).tolist())

        # Leaf counts, deepest level first.
        size = torch.zeros(num_nodes, dtype=torch.long, device=device)
        size[new_id[:num_leaves]] = 1
        parent_new = torch.where(has_parent[perm], new_id[parent[perm]], -1)
        for d in range(num_levels - 1, 0, -1):
            lo, hi = level_ptr[d], level_ptr[d + 1]
            size.index_add_(0, parent_new[lo:hi], size[lo:hi].clone())

        # Example index of every leaf: propagate the root index downwards.
        root_of = torch.empty(num_nodes, dtype=torch.long, device=device)
        root_of[:level_ptr[1]] = torch.arange(level_ptr[1], device=device)
        for d in range(1, num_levels):
            lo, hi = level_ptr[d], level_ptr[d + 1]
            root_of[lo:hi] = root_of[parent_new[lo:hi]]
        batch = root_of[new_id[:num_leaves]]

        return cls(parent=parent, num_leaves=num_leaves, perm=perm,
                   parent_new=parent_new, level_ptr=level_ptr,
                   num_children=num_children[perm], size=size, batch=batch)

    # Derived structure ####################################################

    def by_level(self, x: Tensor, dim: int = 0) -> Tuple[Tensor, ...]:
        """Splits a level-order tensor (nodes along :obj:`dim`) into one view
        per depth.

        (One split instead of a slice per level keeps the backward pass
        linear: every slice's gradient would be a full-size tensor.)"""
        return x.split(self.level_sizes, dim)

    # Utilities ############################################################

    def to(self, device: Union[str, torch.device]) -> 'Tree':
        """The same tree with every tensor on :obj:`device`."""
        out = object.__new__(Tree)
        out.__dict__.update({
            key: _to_device(value, device)
            for key, value in self.__dict__.items()
        })
        return out

    @property
    def device(self) -> torch.device:
        return self.parent.device

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_nodes={self.num_nodes}, '
                f'num_leaves={self.num_leaves}, num_roots={self.num_roots}, '
                f'depth={self.depth})')


def _family_buckets(start: Tensor, size: Tensor) -> List[FamilyBucket]:
    """Groups the families ``start[i] .. start[i] + size[i] - 1`` (sorted,
    positions inside one level) by size rounded up to a power of two."""
    device = start.device
    width = 2**torch.ceil(torch.log2(size.double())).long()
    buckets = []
    for w in torch.unique(width).tolist():  # at most log2(M) + 1 widths
        sel = (width == w).nonzero().view(-1)
        st, sz = start[sel], size[sel]
        slot = torch.arange(w, device=device)
        valid = slot < sz.view(-1, 1)
        index = torch.where(valid, st.view(-1, 1) + slot, st.view(-1, 1))
        span = None
        if bool((sz == w).all()) and bool((st[1:] - st[:-1] == w).all()):
            span = (int(st[0]), int(st[0]) + w * st.numel())
        slot = valid.view(-1).nonzero().view(-1)
        buckets.append(
            FamilyBucket(w, index, valid, slot, index.view(-1)[slot], span))
    return buckets


def _as_span(index: Tensor) -> Optional[Tuple[int, int]]:
    """``(a, b)`` if :obj:`index` is ``a, a + 1, ..., b - 1``."""
    if index.numel() == 0:
        return None
    first = int(index[0])
    if bool((index == torch.arange(first, first + index.numel(),
                                   device=index.device)).all()):
        return first, first + index.numel()
    return None


def _to_device(value, device):
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, FamilyBucket):
        return FamilyBucket(*(_to_device(v, device) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _depth_by_pointer_jumping(parent: Tensor, describe) -> Tensor:
    """Depth of every node in ``O(M log depth)``; raises on cycles."""
    num_nodes = parent.numel()
    jump = parent.clone()
    depth = (parent >= 0).long()
    # After k rounds ``jump`` points 2**k levels up; a node that still has a
    # target after ceil(log2(M)) + 1 rounds lies on or above a cycle.
    for _ in range(max(1, num_nodes.bit_length()) + 1):
        active = jump >= 0
        if not bool(active.any()):
            return depth
        target = jump.clamp(min=0)
        depth = torch.where(active, depth + depth[target], depth)
        jump = torch.where(active, jump[target], jump)
    # ``jump`` now points more than M steps up, which only a node on a
    # cycle can be reached by.
    on_cycle = int(jump[int((jump >= 0).nonzero()[0])])
    raise ValueError(f"The nesting contains a cycle: {describe(on_cycle)} "
                     f"is its own ancestor")


def _describe(node: int,
              node_slices: Dict[str, Tuple[int, int]]) -> Tuple[str, int]:
    for nt, (lo, hi) in node_slices.items():
        if lo <= node < hi:
            return nt, node - lo
    return '?', node


def _describe_global(node: int) -> str:
    return f'node {node}'


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
