r"""Exact k-nearest neighbours of one large example by SciPy's kd-tree,
re-ranked by the exact squared distances with the index tie-break (the
same answer as :func:`~pyg_hsa.utils._knn_brute_force.knn_brute_force`).
The tree is built over the distinct positions, so copies of a point (say
the many returns at a LiDAR's origin) cost no more than one."""
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from pyg_hsa.utils import _knn_brute_force as brute
from pyg_hsa.utils._knn_brute_force import (
    exclusive_cumsum,
    squared_distance,
    stable_order,
)

_SCIPY_SPATIAL = None


def scipy_spatial():
    """:mod:`scipy.spatial`, or :obj:`None` if SciPy is not installed."""
    global _SCIPY_SPATIAL
    if _SCIPY_SPATIAL is None:
        try:
            import scipy.spatial
            _SCIPY_SPATIAL = scipy.spatial
        except ImportError:
            _SCIPY_SPATIAL = False
    return _SCIPY_SPATIAL or None


class _Groups(NamedTuple):
    """The points of one example grouped by identical coordinates. Groups
    are numbered in the order of their smallest point, so that ordering
    groups by number orders them by index, as the tie-break wants."""
    #: ``[G, D]``: the coordinates of every group.
    coords: Tensor
    #: ``[G]``: the smallest point of every group (ascending).
    point: Tensor
    #: ``[G]``: how many points every group holds.
    count: Tensor
    #: ``[G]``: where every group starts in :obj:`members`.
    first: Tensor
    #: ``[N]``: the point indices, group by group, ascending in a group.
    members: Tensor
    #: ``[N]``: the group of every point.
    of_point: Tensor
    #: Whether every group is a single point (then group ``g`` is point
    #: ``g``).
    trivial: bool


def _duplicate_groups(x: Tensor) -> _Groups:
    """Groups the rows of :obj:`x` (a float64 CPU tensor) that are exactly
    equal. Without duplicates (the common case, detected by hashing the
    rows) every point is its own group."""
    if not _has_equal_rows(x.numpy()):
        return _trivial_groups(x)
    num_points = x.size(0)
    order = torch.from_numpy(_lexicographic_order(x.numpy()))
    rows = x[order]
    starts = torch.ones(num_points, dtype=torch.bool)
    starts[1:] = (rows[1:] != rows[:-1]).any(dim=1)
    first = starts.nonzero().view(-1)
    count = torch.diff(first, append=first.new_tensor([num_points]))
    # Renumber the groups (lexicographic so far) by their smallest point,
    # which is the first in the stable order.
    by_point = stable_order(order[first])
    number = torch.empty_like(by_point)
    number[by_point] = torch.arange(by_point.numel())
    of_point = torch.empty(num_points, dtype=torch.long)
    of_point[order] = number[torch.cumsum(starts, 0) - 1]
    first, count = first[by_point], count[by_point]
    point = order[first]
    return _Groups(x[point], point, count, first, order, of_point, False)


def _lexicographic_order(rows: np.ndarray) -> np.ndarray:
    """The stable lexicographic order of the rows (np.lexsort's last key is
    the primary one), so equal rows keep ascending indices."""
    return np.lexsort(rows.T[::-1])


def _has_equal_rows(rows: np.ndarray) -> bool:
    """Whether two rows are equal: rows are hashed to one integer each
    (from their bit patterns, -0.0 made 0.0), and only rows sharing a hash
    are compared."""
    bits = (rows + 0.0).view(np.uint64)
    key = np.zeros(rows.shape[0], dtype=np.uint64)
    for d in range(bits.shape[1]):  # loop over dimensions
        key = _mix_bits(key ^ bits[:, d])
    sorted_key = np.sort(key)
    shared = sorted_key[1:][sorted_key[1:] == sorted_key[:-1]]
    if shared.size == 0:
        return False
    rows = rows[np.isin(key, shared)]
    rows = rows[_lexicographic_order(rows)]
    return bool((rows[1:] == rows[:-1]).all(axis=1).any())


def _mix_bits(value: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every input bit affects every output bit
    (coordinates such as small integers differ in a few high bits only).
    Products wrap around modulo 2**64."""
    value = (value ^ (value >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    value = (value ^ (value >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return value ^ (value >> np.uint64(31))


def _trivial_groups(x: Tensor) -> _Groups:
    index = torch.arange(x.size(0))
    return _Groups(x, index, torch.ones_like(index), index, index, index,
                   True)


def knn_kd_tree(x: Tensor, y: Tensor, k: int, self_x: Optional[Tensor],
                self_y: Tensor) -> Tuple[Tensor, Tensor]:
    """kNN of one example by a kd-tree (float64 CPU tensors), re-ranked by
    the exact squared distances with the index tie-break. If
    :obj:`self_x` is given (x is y), query i excludes the point with
    ``self_x[j] == self_y[i]``.

    The tree holds one entry per group of identical points: a kd-tree
    cannot split copies of a point and would scan all of them for every
    query, so the cost would grow quadratically with the copies. It
    returns the q nearest groups, with arbitrary choices among ties at its
    q-th distance. A query is settled once the exact distance of its k-th
    neighbour (counting every point of every group) lies strictly below
    the q-th one, so every group tied with its k-th neighbour was
    returned; the others are asked again with a larger q (q doubles; at q
    = the number of groups all are seen). Ties at the k-th distance thus
    cost in proportion to the number of tied positions, whatever the
    number of copies.
    """
    groups = _duplicate_groups(x)
    num_groups = groups.coords.size(0)
    tree = scipy_spatial().cKDTree(groups.coords.numpy())
    wanted = min(k, x.size(0) - (self_x is not None))
    own = None
    if self_x is not None:
        own = _own_point(self_x, self_y)
    rows, cols = [], []
    pending = torch.arange(y.size(0))
    # A few more than needed settle all but the queries with ties.
    query_size = min(num_groups, wanted + (self_x is not None) +
                     max(2, k // 4))
    while pending.numel() and wanted > 0:  # loop over doublings of q
        unsettled = []
        step = max(1, brute.BLOCK_ENTRIES // query_size)
        for lo in range(0, pending.numel(), step):  # blocks of queries
            block = pending[lo:lo + step]
            row, col, settled = _kd_tree_block(
                tree, groups, y[block], wanted, query_size,
                None if own is None else own[block])
            rows.append(block[row])
            cols.append(col)
            unsettled.append(block[~settled])
        pending = torch.cat(unsettled)
        query_size = min(num_groups, 2 * query_size)
    if not rows:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty
    return torch.cat(rows), torch.cat(cols)


def _own_point(self_x: Tensor, self_y: Tensor) -> Tensor:
    """For every query, the index of its own point in x (``-1`` if x
    lacks it); :obj:`self_x` is sorted (it comes from ``nonzero``)."""
    index = torch.searchsorted(self_x, self_y).clamp(max=self_x.numel() - 1)
    return torch.where(self_x[index] == self_y, index, -1)


def _kd_tree_block(tree, groups: _Groups, y: Tensor, wanted: int,
                   query_size: int, own: Optional[Tensor]
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    """One kd-tree query for the queries :obj:`y` (rows of a block): the
    settled ones' neighbours as ``(row, col)`` (row into :obj:`y`, col
    into x) and the mask of settled queries. :obj:`own` is the point each
    query excludes (``-1``: none)."""
    _, found = tree.query(y.numpy(), k=query_size,
                          workers=torch.get_num_threads())
    found = torch.from_numpy(found).view(y.size(0), query_size)
    dist = squared_distance(y.unsqueeze(1), groups.coords[found])
    found, dist = _sort_rows(found, dist)
    # Every group nearer than the farthest one returned was returned,
    # unless the tree returned all groups.
    partial = query_size < groups.coords.size(0)
    if groups.trivial:
        return _nearest_points(found, dist, wanted, partial, own)
    return _nearest_in_groups(groups, found, dist, wanted, partial, own)


def _settles(kth: Tensor, dist: Tensor, partial: bool) -> Tensor:
    """Whether a query with k-th distance :obj:`kth` is settled by the
    distance-sorted rows :obj:`dist` that the tree returned; the relative
    margin covers rounding differences in the tree."""
    if not partial:
        return torch.ones(dist.size(0), dtype=torch.bool)
    return kth < dist[:, -1] * (1 - 1e-9)


def _nearest_points(found: Tensor, dist: Tensor, wanted: int,
                    partial: bool, own: Optional[Tensor]
                    ) -> Tuple[Tensor, Tensor, Tensor]:
    """The block's answer when every group is one point: the first
    :obj:`wanted` columns of every settled row, without its own point."""
    settled = torch.ones(found.size(0), dtype=torch.bool)
    if own is not None:
        found, dist, settled = _drop_self(found, dist, own)
    settled &= _settles(dist[:, wanted - 1], dist, partial)
    found = found[settled, :wanted]
    row = settled.nonzero().expand_as(found)
    return row.reshape(-1), found.reshape(-1), settled


def _drop_self(found: Tensor, dist: Tensor,
               own: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Removes each query's own point from its row of :obj:`found` (the
    last column where it is missing: then the row is not settled)."""
    is_self = found == own.unsqueeze(1)
    has_self = is_self.any(dim=1)
    width = found.size(1)
    drop = torch.where(has_self, is_self.to(torch.uint8).argmax(dim=1),
                       width - 1)
    column = torch.arange(width - 1).unsqueeze(0)
    column = column + (column >= drop.unsqueeze(1)).long()
    return found.gather(1, column), dist.gather(1, column), has_self


def _nearest_in_groups(groups: _Groups, found: Tensor, dist: Tensor,
                       wanted: int, partial: bool, own: Optional[Tensor]
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """The block's answer when :obj:`found` holds groups of identical
    points. A row's k-th neighbour lies in the first group where the
    points offered so far reach :obj:`wanted`. Rows whose groups up to
    that distance are single points are answered as without duplicates;
    in the others, the groups up to that distance offer candidates,
    ranked by distance, then index."""
    offered = groups.count[found]
    own_group = torch.full((found.size(0), ), -1)
    if own is not None:
        own_group = torch.where(own >= 0, groups.of_point[own.clamp(min=0)],
                                -1)
        offered = offered - (found == own_group.unsqueeze(1)).long()
    kth_column = (torch.cumsum(offered, dim=1) < wanted).sum(dim=1)
    kth = dist.gather(1, kth_column.clamp(max=found.size(1) - 1).view(-1, 1))
    candidate = dist <= kth
    heavy = ((groups.count[found] > 1) & candidate).any(dim=1)
    light = (~heavy).nonzero().view(-1)
    heavy = heavy.nonzero().view(-1)
    settled = _settles(kth[:, 0], dist, partial)
    empty = torch.empty(0, dtype=torch.long)
    rows, points = [empty], [empty]
    if light.numel():
        row, point, settled[light] = _nearest_points(
            groups.point[found[light]], dist[light], wanted, partial,
            None if own is None else own[light])
        rows.append(light[row])
        points.append(point)
    # The groups nearer than the k-th distance give all their points;
    # those at it give what is still needed (one more for the own point).
    need = wanted - (offered * (dist < kth)).sum(dim=1)
    row, column = (candidate[heavy] & settled[heavy].unsqueeze(1)).nonzero(
        as_tuple=True)
    row = heavy[row]
    group = found[row, column]
    entry_dist = dist[row, column]
    take = torch.where(entry_dist < kth[row, 0], groups.count[group],
                       torch.minimum(groups.count[group],
                                     need[row] + (group == own_group[row])))
    for part in _parts_by_size(row, take):  # a few parts, bounded memory
        part_row, point = _group_members(groups, row[part], group[part],
                                         entry_dist[part], take[part])
        if own is not None:
            keep = point != own[part_row]
            part_row, point = part_row[keep], point[keep]
        keep = _rank_in_row(part_row) < wanted
        rows.append(part_row[keep])
        points.append(point[keep])
    return torch.cat(rows), torch.cat(points), settled


def _parts_by_size(row: Tensor, size: Tensor) -> List[slice]:
    """Splits entries grouped by row into contiguous parts of whole rows,
    each of total :obj:`size` about
    :data:`~pyg_hsa.utils._knn_brute_force.BLOCK_ENTRIES` (or one row)."""
    if row.numel() == 0:
        return []
    part = (torch.cumsum(size, 0) - size) // brute.BLOCK_ENTRIES
    first = torch.ones_like(row, dtype=torch.bool)
    first[1:] = row[1:] != row[:-1]
    # A row belongs to the part of its first entry.
    part = part[first][torch.cumsum(first, 0) - 1]
    bounds = torch.cat([torch.zeros(1, dtype=torch.long),
                        torch.cumsum(torch.unique_consecutive(
                            part, return_counts=True)[1], 0)]).tolist()
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _group_members(groups: _Groups, row: Tensor, group: Tensor,
                   dist: Tensor, take: Tensor) -> Tuple[Tensor, Tensor]:
    """The :obj:`take` smallest points of every candidate group, as
    ``(row, point)`` sorted by row, distance, point."""
    entry = torch.repeat_interleave(take)
    offset = torch.arange(entry.numel()) - exclusive_cumsum(take)[entry]
    point = groups.members[groups.first[group][entry] + offset]
    return _sort_tied_rows(row[entry], point, dist[entry])


def _sort_tied_rows(row: Tensor, point: Tensor,
                    dist: Tensor) -> Tuple[Tensor, Tensor]:
    """Entries come grouped by row, sorted by distance, and group by group
    with ascending points; only where groups tie in distance do their
    points need merging by index."""
    tied = (dist[1:] == dist[:-1]) & (row[1:] == row[:-1]) & \
        (point[1:] < point[:-1])
    if not bool(tied.any()):
        return row, point
    tied_rows = torch.zeros(int(row.max()) + 1, dtype=torch.bool)
    tied_rows[row[1:][tied]] = True
    where = tied_rows[row].nonzero().view(-1)
    sub_row, sub_point, sub_dist = row[where], point[where], dist[where]
    order = stable_order(sub_point)
    order = order[stable_order(sub_dist[order])]
    order = order[stable_order(sub_row[order])]
    point = point.clone()
    point[where] = sub_point[order]
    return row, point


def _rank_in_row(row: Tensor) -> Tensor:
    """The position of every entry among those of its row (entries come
    grouped by row)."""
    if row.numel() == 0:
        return row
    counts = torch.bincount(row)
    return torch.arange(row.numel()) - exclusive_cumsum(counts)[row]


def _sort_rows(found: Tensor, dist: Tensor) -> Tuple[Tensor, Tensor]:
    """Orders every row by distance, then index. The tree already sorts
    by its own distances, so only rows with ties (or rounding
    differences) need sorting."""
    step_dist = dist[:, 1:] - dist[:, :-1]
    in_order = (step_dist > 0) | ((step_dist == 0) &
                                  (found[:, 1:] > found[:, :-1]))
    rows = (~in_order.all(dim=1)).nonzero().view(-1)
    if rows.numel():
        sub_found, sub_dist = found[rows], dist[rows]
        order = torch.sort(sub_found, dim=1, stable=True).indices
        order = order.gather(1, torch.sort(sub_dist.gather(1, order), dim=1,
                                           stable=True).indices)
        found, dist = found.clone(), dist.clone()
        found[rows] = sub_found.gather(1, order)
        dist[rows] = sub_dist.gather(1, order)
    return found, dist
