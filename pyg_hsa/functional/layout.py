r"""The level-order layout of a forest, built once per
:class:`~pyg_hsa.Tree` and ``self_loops`` (:func:`layout_of`, cached by
:mod:`~pyg_hsa.functional.plan`).

:class:`Layout` renumbers the nodes of a validated forest in *level order*:
the roots first, then depth 1, depth 2, and so on, each level sorted by
parent. Then every depth level is one contiguous slice, so the dynamic
program takes one vectorised step per level, and every family (the
children of one parent) is one contiguous slice: the children of node ``P``
start at ``num_roots + (number of children of the nodes before P)``.

Families of two or more members, from every level at once, are grouped into
:class:`Bucket` s of one padded width, the unit of batched attention (see
:func:`plan_buckets`).
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from pyg_hsa.functional.level_ops import sum_children
from pyg_hsa.functional.plan import cached_plan
from pyg_hsa.topology import depth_by_pointer_jumping, num_children

# Families of at least this many members run through the fused attention
# kernel (measured: from 32 members it beats batched matrix products here).
WIDE_FAMILY = 32
# Bucket planning: cost of one bucket call in units of per-element work,
# and the nominal head count and channels the work is counted for.
BUCKET_OVERHEAD = 300_000
NOMINAL_HEADS, NOMINAL_CHANNELS = 4, 32
# A run of equal, back-to-back families with at least this many members is
# its own bucket even where merging would save a call: its inputs are
# views, not gathers.
SPAN_MIN_NODES = 4096


class Bucket(NamedTuple):
    """Families of one padded ``width``: ``index[f, w]`` is the level-order
    node in slot ``w`` of family ``f`` (padding repeats the family's first
    member); ``valid`` marks real members."""
    width: int
    index: Tensor  # [F, W]
    valid: Tensor  # [F, W] bool
    #: Level-order start of the nodes if the families are exactly
    #: ``start .. start + F * W - 1``, back to back (inputs are then views).
    start: Optional[int]
    #: Run through the fused kernel (families of at least WIDE_FAMILY).
    wide: bool
    #: Whether every member is a leaf (all sizes 1: no key bias needed).
    all_leaves: bool
    #: Whether the members' log-sum-exps (eta) can reach the output: through
    #: an internal member's own gate, or through the energy of a parent
    #: that is not a root. (A family of leaves under a root, like a flat
    #: tree, uses none.)
    eta_used: bool
    #: The real slots (``[K]``, into ``index.view(-1)``) and their nodes.
    slots: Tensor
    nodes: Tensor


def layout_of(tree, self_loops: bool) -> 'Layout':
    """:obj:`tree`'s :class:`Layout` for :obj:`self_loops` (cached)."""
    return cached_plan(tree, ('layout', bool(self_loops)),
                       lambda: Layout(tree.parent, tree.num_leaves,
                                      bool(self_loops)))


class Layout:
    r"""Level-order structure of a validated forest (see module docstring),
    for one value of ``self_loops``.

    **Unary chains are contracted.** A node with one child has the same
    means as that child, and the child has no sibling, so the child
    contributes nothing of its own and passes its energy up unchanged
    (:math:`\eta = +\infty` gives :math:`\varphi(P) = \varphi(A)` and
    :math:`\mu(A) = 1`). The child can therefore take its parent's place
    in the parent's family, with the parent's position: the result is the
    same, with fewer nodes and levels. With self loops, a leaf that is an
    only child attends to itself at its own level, so its parent stays.

    All tensors are level-ordered unless named otherwise."""
    def __init__(self, parent: Tensor, num_leaves: int, self_loops: bool):
        device = parent.device
        self.self_loops = self_loops
        self._constants = {}
        kept, parent, rep = contract_unary_chains(parent, num_leaves,
                                                  self_loops)
        num_nodes = parent.numel()
        self.num_leaves, self.num_nodes = num_leaves, num_nodes
        depth = depth_by_pointer_jumping(parent)

        # Level order: roots in the order of the user's roots, then each
        # level by family, larger families first (so that families of one
        # size lie back to back) and by parent.
        num_levels = int(depth.max()) + 1
        counts = torch.bincount(depth, minlength=num_levels).tolist()
        by_depth = torch.argsort(depth * (int(rep.max()) + 1) + rep)
        children = num_children(parent)
        new_id = torch.empty(num_nodes, dtype=torch.long, device=device)
        levels, start = [], 0
        for count in counts:
            nodes = by_depth[start:start + count]
            if start > 0:  # Not the roots: by family size, then parent.
                above = parent[nodes]
                nodes = nodes[torch.argsort(
                    -children[above] * (num_nodes + 1) + new_id[above],
                    stable=True)]
            new_id[nodes] = torch.arange(start, start + count, device=device)
            levels.append(nodes)
            start += count
        order = torch.cat(levels)
        #: ``perm[level-order id]``: the user's node whose position the node
        #: takes (the top of its contracted chain) and whose id its sibling
        #: edges report.
        self.perm = rep[order]
        #: ``node[level-order id]``: the user's node it is.
        self.node = kept[order]
        self.level_ptr = tuple([0] + torch.tensor(counts).cumsum(0).tolist())
        self.level_sizes = tuple(counts)
        self.depth = num_levels - 1
        self.num_roots = counts[0]
        has_parent = parent[order] >= 0
        self.parent = torch.where(has_parent, new_id[parent[order]], -1)
        self.num_children = num_children(self.parent)
        self.is_leaf = self.num_children == 0
        #: Members of every node's family (1 for roots).
        self.family_size = torch.where(
            has_parent, self.num_children[self.parent.clamp(min=0)], 1)
        #: Leaves without siblings: with self loops, they attend only to
        #: themselves.
        self.lone_leaves = (self.is_leaf &
                            (self.family_size == 1)).nonzero().view(-1)
        #: Level-order node of every leaf, in the user's leaf order (leaves
        #: are never contracted and come first among the kept nodes).
        self.leaf_node = new_id[:num_leaves]
        #: ``s`` if leaf ``i`` sits at node ``s + i`` for every ``i`` (the
        #: layout changes are then strided copies, not index operations).
        self.leaf_start = _start_of_run(self.leaf_node)
        self.internal_nodes = (~self.is_leaf).nonzero().view(-1)

        # Per level d >= 1, relative to level d - 1: the parent of every
        # node, and ``W`` if every node of level d - 1 has exactly W
        # children (then sums over children are reshapes).
        self.level_parent: List[Optional[Tensor]] = [None]
        self.level_width: List[Optional[int]] = [None]
        for d in range(1, num_levels):
            lo, hi = self.level_ptr[d - 1], self.level_ptr[d]
            self.level_parent.append(
                self.parent[hi:self.level_ptr[d + 1]] - lo)
            children = self.num_children[lo:hi]
            width = int(children[0])
            uniform = bool((children == width).all())
            self.level_width.append(width if uniform else None)

        #: Number of leaves below every node.
        self.size = torch.zeros(num_nodes, dtype=torch.long, device=device)
        self.size[self.leaf_node] = 1
        sizes = self.by_level(self.size)
        for d in range(num_levels - 1, 0, -1):
            sizes[d - 1].add_(sum_children(self, d, sizes[d].view(1, -1)
                                           )[0])

        #: Per level: the positions of its leaves inside the level, and
        #: their indices in the user's leaf order.
        user_leaf = torch.full((num_nodes, ), -1, dtype=torch.long,
                               device=device)
        user_leaf[self.leaf_node] = torch.arange(num_leaves, device=device)
        self.level_leaves = []
        for leaf, users in zip(self.by_level(self.is_leaf),
                               self.by_level(user_leaf)):
            where = leaf.nonzero().view(-1)
            self.level_leaves.append((where, users[where]))
        #: Whether the leaves are exactly the deepest level, in the user's
        #: order (then the layout changes are strided copies).
        self.leaves_deepest = self.leaf_start == self.level_ptr[-2] and \
            num_leaves == counts[-1]
        self.buckets = plan_buckets(self)
        #: The node ranges of the view buckets, in order.
        self.view_ranges = sorted(
            (b.start, b.start + b.index.numel()) for b in self.buckets
            if b.start is not None)

    def bucket_constants(self, i: int, dtype: torch.dtype):
        r"""Bucket ``i``'s ``(log_size, loop, mask)`` in :obj:`dtype`: the
        keys' :math:`\log n` ``[F, W]`` (``None`` for leaves only), which
        members attend to themselves (``None`` without self loops), and for
        narrow buckets the additive mask of
        :func:`~pyg_hsa.functional.family_softmax.additive_mask`. Built once
        per dtype."""
        key = (i, dtype)
        if key not in self._constants:
            from pyg_hsa.functional.family_softmax import mask_for
            bucket = self.buckets[i]
            log_size = None if bucket.all_leaves else \
                self.size[bucket.index].to(dtype).log()
            loop = self.is_leaf[bucket.index] if self.self_loops else None
            mask = None if bucket.wide else mask_for(bucket.valid, loop,
                                                     log_size, dtype)
            self._constants[key] = (log_size, loop, mask)
        return self._constants[key]

    def by_level(self, x: Tensor, dim: int = 0) -> Tuple[Tensor, ...]:
        """Views of a level-ordered :obj:`x` (nodes along :obj:`dim`), one
        per depth level."""
        return x.split(self.level_sizes, dim)


# Contraction and depth ####################################################


def contract_unary_chains(parent: Tensor, num_leaves: int,
                          self_loops: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Removes the nodes with exactly one child (with self loops: those
    whose only child is internal; see :class:`Layout`). Returns the user
    ids of the kept nodes (leaves first, in order), their parents among the
    kept nodes (``-1`` for roots) and the user node each takes the family
    position of (the top of the removed chain above it, or itself)."""
    num_nodes = parent.numel()
    device = parent.device
    has_parent = parent >= 0
    children = num_children(parent)
    removable = children == 1
    if self_loops:  # an only child that is a leaf keeps its parent
        only = has_parent & (children[parent.clamp(min=0)] == 1)
        leaf_child = torch.zeros_like(removable)
        leaf_child[parent[only]] = only[only] & (
            torch.arange(num_nodes, device=device)[only] < num_leaves)
        removable &= ~leaf_child
    arange = torch.arange(num_nodes, device=device)
    if not bool(removable.any()):
        return arange, parent, arange
    # Nearest kept ancestor, and the top of the removed chain right above,
    # by pointer jumping (chains may be long).
    up = parent.clone()
    top = torch.where(has_parent & removable[parent.clamp(min=0)], parent,
                      arange)
    for _ in range(max(1, num_nodes.bit_length()) + 1):
        skip = (up >= 0) & removable[up.clamp(min=0)]
        if not bool(skip.any()):
            break
        up = torch.where(skip, up[up.clamp(min=0)], up)
    for _ in range(max(1, num_nodes.bit_length()) + 1):
        higher = top[top]
        if bool((higher == top).all()):
            break
        top = higher
    kept = (~removable).nonzero().view(-1)
    index = torch.full((num_nodes, ), -1, dtype=torch.long, device=device)
    index[kept] = torch.arange(kept.numel(), device=device)
    new_parent = torch.where(up[kept] >= 0, index[up[kept].clamp(min=0)], -1)
    return kept, new_parent, top[kept]


# Buckets ##################################################################


def plan_buckets(layout: Layout) -> Tuple[Bucket, ...]:
    r"""Groups the families of two or more members, across all levels, into
    buckets of one padded width.

    Wide families (:data:`WIDE_FAMILY` members or more) go to the fused
    kernel in buckets of one exact size. Narrow families are grouped by
    exact size, and adjacent sizes are merged into one padded bucket where
    that is cheaper: a dynamic program over the sorted sizes minimises
    ``BUCKET_OVERHEAD`` per bucket plus, per family, the work of a padded
    family of width :math:`W`, :math:`H(10 W^2 + 4 C W)` (ten passes over
    the logits, four over the features). A run of back-to-back equal
    families with at least :data:`SPAN_MIN_NODES` members stays a bucket of
    its own, read as a view; other buckets gather their inputs.
    """
    device = layout.perm.device
    count = layout.num_children
    nodes = torch.arange(layout.num_nodes, device=device)
    has_parent = layout.parent >= 0
    first_child = torch.full_like(count, layout.num_nodes).scatter_reduce_(
        0, layout.parent[has_parent], nodes[has_parent], 'amin')
    # One row per family: its first node, size and level.
    is_family = count >= 2
    starts, sizes = first_child[is_family], count[is_family]
    parents = is_family.nonzero().view(-1)
    eta_used = layout.parent[parents] >= 0  # parent of the family not a root
    level = torch.bucketize(starts, torch.tensor(layout.level_ptr[1:],
                                                 device=device), right=True)

    spans, narrow, wide = [], [], []
    for size, st, lv, used in _by_size(sizes, starts, level, eta_used):
        if _view(size, st):  # equal families back to back, across levels
            spans.append((size, st, bool(used.any())))
            continue
        pool = wide if size >= WIDE_FAMILY else narrow
        rest, rest_used = [], []
        for value in torch.unique(lv).tolist():  # or within one level
            sel = lv == value
            if _view(size, st[sel]):
                spans.append((size, st[sel], bool(used[sel].any())))
            else:
                rest.append(st[sel])
                rest_used.append(used[sel])
        if rest:
            pool.append((size, torch.cat(rest),
                         bool(torch.cat(rest_used).any())))
    merged = [[g] for g in wide] + _merge_narrow(narrow)

    buckets = []
    for size, st, used in spans:
        index = st.view(-1, 1) + torch.arange(size, device=device)
        buckets.append(_bucket(layout, size, index,
                               torch.ones_like(index, dtype=torch.bool),
                               int(st[0]), used))
    for group in merged:
        width = max(size for size, _, _ in group)
        slot = torch.arange(width, device=device)
        st = torch.cat([s for _, s, _ in group])
        sz = torch.cat([torch.full_like(s, size) for size, s, _ in group])
        valid = slot < sz.view(-1, 1)
        index = torch.where(valid, st.view(-1, 1) + slot, st.view(-1, 1))
        buckets.append(_bucket(layout, width, index, valid, None,
                               any(used for _, _, used in group)))
    return tuple(buckets)


def _by_size(sizes: Tensor, starts: Tensor, level: Tensor, used: Tensor):
    """Families grouped by exact size: ``(size, starts, levels, used)``,
    each sorted by start."""
    if sizes.numel() == 0:
        return []
    order = torch.argsort(sizes * (int(starts.max()) + 1) + starts)
    sizes, starts, level, used = (x[order]
                                  for x in (sizes, starts, level, used))
    unique, counts = torch.unique_consecutive(sizes, return_counts=True)
    out, lo = [], 0
    for size, num in zip(unique.tolist(), counts.tolist()):
        part = slice(lo, lo + num)
        out.append((size, starts[part], level[part], used[part]))
        lo += num
    return out


def _view(size: int, starts: Tensor) -> bool:
    """Whether families of :obj:`size` at :obj:`starts` are back to back
    and worth a view bucket."""
    if starts.numel() == 0:
        return False
    large = starts.numel() * size >= SPAN_MIN_NODES or size >= WIDE_FAMILY
    return large and bool((starts[1:] - starts[:-1] == size).all())


def _merge_narrow(groups: list) -> List[list]:
    """Partitions the exact-size groups (sorted by size) into contiguous
    runs, each run one bucket padded to its largest size, at the least
    modelled cost (dynamic program over the sorted sizes)."""
    if not groups:
        return []

    def family_cost(width: int) -> int:
        return NOMINAL_HEADS * (10 * width * width +
                                4 * NOMINAL_CHANNELS * width)

    best = [0.0] + [float('inf')] * len(groups)
    cut = [0] * (len(groups) + 1)
    for j in range(1, len(groups) + 1):
        width, families = groups[j - 1][0], 0
        for i in range(j, 0, -1):  # run i - 1 .. j - 1 at `width`
            families += groups[i - 1][1].numel()
            cost = best[i - 1] + BUCKET_OVERHEAD + families * family_cost(
                width)
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    runs, j = [], len(groups)
    while j > 0:
        runs.append(groups[cut[j]:j])
        j = cut[j]
    return runs[::-1]


def _bucket(layout: Layout, width: int, index: Tensor, valid: Tensor,
            start: Optional[int], parent_not_root: bool) -> Bucket:
    all_leaves = bool(layout.is_leaf[index].all())
    slots = valid.view(-1).nonzero().view(-1)
    return Bucket(width, index, valid, start, width >= WIDE_FAMILY,
                  all_leaves, parent_not_root or not all_leaves, slots,
                  index.view(-1)[slots])


def _start_of_run(index: Tensor) -> Optional[int]:
    """``s`` if :obj:`index` is ``s, s + 1, ..., s + len - 1``."""
    if index.numel() == 0:
        return None
    first = int(index[0])
    run = torch.arange(first, first + index.numel(), device=index.device)
    return first if bool((index == run).all()) else None
