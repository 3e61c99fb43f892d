r"""Point-cloud geometry without compiled extensions: voxel grids, exact
k-nearest neighbours and farthest point sampling, with the contracts of
:func:`torch_geometric.nn.voxel_grid`, :func:`~torch_geometric.nn.knn`,
:func:`~torch_geometric.nn.knn_graph` and :func:`~torch_geometric.nn.fps`.

Each function hands over to PyG's compiled kernel when ``pyg-lib`` provides
it (``torch_geometric.typing.WITH_GRID_CLUSTER``, ``WITH_KNN``,
``WITH_FPS``) and otherwise runs in plain PyTorch, vectorised over points
and examples. The fallbacks are exact and deterministic:

* distances are squared Euclidean distances accumulated dimension by
  dimension in float64 on the CPU (at least float32 elsewhere);
* kNN neighbours come sorted by distance, ties broken by the smaller index,
  so the result does not depend on the search path: small problems are
  solved by blocked brute force in bounded memory, large ones on the CPU by
  SciPy's kd-tree (when SciPy is installed) followed by the same tie-break.
  The tree is built over the distinct positions, so copies of a point (say
  the many returns at a LiDAR's origin) cost no more than one.

Batch vectors assign every point to an example; the fallbacks accept them
in any order, PyG's kernels need them sorted.
"""
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

import torch_geometric.typing

#: Entries of one block of the brute-force distance matrix (float64: 32 MB).
BLOCK_ENTRIES = 1 << 22
#: The kd-tree answers an example's queries when it has at least this many
#: (query, point) pairs; below, blocked brute force is faster.
KD_TREE_MIN_PAIRS = 1 << 18
#: kd-trees stop paying off in high dimensions.
KD_TREE_MAX_DIM = 16

Scalars = Union[float, Sequence[float], Tensor]


def _native(flag: str) -> bool:
    """Whether PyG's compiled kernel behind ``flag`` is installed."""
    return bool(getattr(torch_geometric.typing, flag, False))


def _work_dtype(t: Tensor) -> torch.dtype:
    if t.device.type == 'cpu':
        return torch.float64
    return torch.promote_types(t.dtype, torch.float32)


def _check_points(t: Tensor, name: str) -> Tensor:
    """A finite floating ``[num_points, dim]`` tensor."""
    if not isinstance(t, Tensor):
        raise TypeError(f"'{name}' must be a tensor (got "
                        f"{type(t).__name__})")
    if not t.is_floating_point():
        raise TypeError(f"'{name}' must be a floating point tensor (got "
                        f"{t.dtype})")
    if t.dim() != 2:
        raise ValueError(f"'{name}' must have shape [num_points, dim] (got "
                         f"{list(t.shape)})")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"'{name}' contains NaN or infinite values")
    return t


def _check_batch(batch: Optional[Tensor], num_points: int, name: str,
                 device: torch.device) -> Tensor:
    """The example index of every point, ``[num_points]`` (zeros if
    :obj:`batch` is None)."""
    if batch is None:
        return torch.zeros(num_points, dtype=torch.long, device=device)
    if not isinstance(batch, Tensor) or batch.dtype not in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        raise TypeError(f"'{name}' must be an integer tensor")
    if batch.dim() != 1 or batch.numel() != num_points:
        raise ValueError(f"'{name}' must have shape [{num_points}] (got "
                         f"{list(batch.shape)})")
    if batch.numel() and int(batch.min()) < 0:
        raise ValueError(f"'{name}' must not contain negative indices")
    return batch.to(device=device, dtype=torch.long)


def _per_dim(value: Scalars, dim: int, name: str, like: Tensor) -> Tensor:
    """A scalar or per-dimension sequence as a ``[dim]`` tensor."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.dim() == 0:
        value = value.repeat(dim)
    if value.shape != (dim, ):
        raise ValueError(f"'{name}' must be a number or have {dim} entries "
                         f"(got shape {list(value.shape)})")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"'{name}' must be finite")
    return value


def _exclusive_cumsum(counts: Tensor) -> Tensor:
    return torch.cumsum(counts, 0) - counts


def _num_examples(*batches: Tensor) -> int:
    return max([int(b.max()) + 1 for b in batches if b.numel()] + [0])


# ---------------------------------------------------------------- voxel grid


def voxel_grid(pos: Tensor, size: Scalars, batch: Optional[Tensor] = None,
               start: Optional[Scalars] = None,
               end: Optional[Scalars] = None) -> Tensor:
    r"""Overlays a regular grid of voxels of side :obj:`size` on the points
    and returns the voxel (cluster) id of every point, as
    :func:`torch_geometric.nn.voxel_grid`.

    Voxel coordinates are ``trunc((pos - start) / size)`` per dimension,
    flattened with dimension 0 fastest and the example index slowest, with
    ``ceil``-style extents ``trunc((end - start) / size) + 1``; ids are not
    consecutive (use :func:`torch.unique` to compact them). Points outside
    ``[start, end]`` get ids that may collide, as in PyG.

    Args:
        pos (Tensor): positions ``[N, D]`` (or ``[N]`` for ``D = 1``).
        size (float or [float] or Tensor): voxel side, per dimension or one
            for all, positive.
        batch (LongTensor, optional): example index of every point.
        start (float or [float] or Tensor, optional): grid origin (default:
            the smallest coordinates of :obj:`pos`).
        end (float or [float] or Tensor, optional): grid end (default: the
            largest coordinates of :obj:`pos`).
    """
    if _native('WITH_GRID_CLUSTER'):
        from torch_geometric.nn import voxel_grid as pyg_voxel_grid
        return pyg_voxel_grid(pos, size, batch, start, end)

    if isinstance(pos, Tensor) and pos.dim() == 1:
        pos = pos.unsqueeze(-1)
    pos = _check_points(pos, 'pos')
    num_points, dim = pos.shape
    batch = _check_batch(batch, num_points, 'batch', pos.device)
    size = _per_dim(size, dim, 'size', pos)
    if not bool((size > 0).all()):
        raise ValueError(f"'size' must be positive (got {size.tolist()})")
    if num_points == 0:
        return torch.empty(0, dtype=torch.long, device=pos.device)

    # The example index is one more coordinate, in voxels of side 1.
    pos = torch.cat([pos, batch.view(-1, 1).to(pos.dtype)], dim=-1)
    size = torch.cat([size, size.new_ones(1)])
    if start is None:
        start = pos.min(dim=0).values
    else:
        start = torch.cat([_per_dim(start, dim, 'start', pos),
                           pos.new_zeros(1)])
    if end is None:
        end = pos.max(dim=0).values
    else:
        end = torch.cat([_per_dim(end, dim, 'end', pos),
                         batch.max().to(pos.dtype).view(1)])

    extent = ((end - start) / size).to(torch.long) + 1
    stride = torch.cat([extent.new_ones(1), extent.cumprod(0)[:-1]])
    voxel = ((pos - start) / size).to(torch.long)
    return (voxel * stride).sum(dim=1)


# ------------------------------------------------------- k nearest neighbours


def knn(x: Tensor, y: Tensor, k: int, batch_x: Optional[Tensor] = None,
        batch_y: Optional[Tensor] = None) -> Tensor:
    r"""For every point of :obj:`y`, its :obj:`k` nearest points of
    :obj:`x` in the same example, as :func:`torch_geometric.nn.knn`.

    Returns the assignment index ``[2, E]``: row 0 indexes :obj:`y`, row 1
    :obj:`x`; sorted by :obj:`y` index, then by distance, then by :obj:`x`
    index (so exact ties go to the smaller index). A point of :obj:`y`
    whose example has fewer than :obj:`k` points of :obj:`x` gets all of
    them, one with none gets no entry.

    Args:
        x (Tensor): points searched, ``[N, D]``.
        y (Tensor): query points, ``[M, D]``.
        k (int): number of neighbours, positive.
        batch_x (LongTensor, optional): example index of every point of
            :obj:`x`.
        batch_y (LongTensor, optional): example index of every point of
            :obj:`y`.
    """
    if _native('WITH_KNN'):
        from torch_geometric.nn import knn as pyg_knn
        return pyg_knn(x, y, k, batch_x, batch_y)
    x, y = _check_points(x, 'x'), _check_points(y, 'y')
    _check_same_dim(x, y)
    _check_k(k)
    batch_x = _check_batch(batch_x, x.size(0), 'batch_x', x.device)
    batch_y = _check_batch(batch_y, y.size(0), 'batch_y', x.device)
    row, col = _knn_pairs(x, y.to(x.device), k, batch_x, batch_y,
                          exclude_self=False)
    return torch.stack([row, col])


def knn_graph(x: Tensor, k: int, batch: Optional[Tensor] = None,
              loop: bool = False, flow: str = 'source_to_target') -> Tensor:
    r"""The directed graph from every point to its :obj:`k` nearest points
    in the same example, as :func:`torch_geometric.nn.knn_graph`.

    With :obj:`loop=False` a point is never its own neighbour (even when
    duplicates of it exist), so every point gets exactly ``min(k, n - 1)``
    neighbours, ``n`` the size of its example; with :obj:`loop=True` the
    point itself is a candidate at distance 0 (duplicates with a smaller
    index come first). For :obj:`flow='source_to_target'` row 0 holds the
    neighbours and row 1 the centres, sorted by centre, then distance, then
    neighbour index; :obj:`'target_to_source'` swaps the rows.

    Args:
        x (Tensor): points ``[N, D]``.
        k (int): number of neighbours, positive.
        batch (LongTensor, optional): example index of every point.
        loop (bool): whether a point may be its own neighbour.
        flow (str): :obj:`'source_to_target'` or :obj:`'target_to_source'`.
    """
    if flow not in ('source_to_target', 'target_to_source'):
        raise ValueError(f"'flow' must be 'source_to_target' or "
                         f"'target_to_source' (got {flow!r})")
    if _native('WITH_KNN'):
        from torch_geometric.nn import knn_graph as pyg_knn_graph
        return pyg_knn_graph(x, k, batch, loop, flow)
    x = _check_points(x, 'x')
    _check_k(k)
    batch = _check_batch(batch, x.size(0), 'batch', x.device)
    center, neighbour = _knn_pairs(x, x, k, batch, batch,
                                   exclude_self=not loop)
    if flow == 'source_to_target':
        return torch.stack([neighbour, center])
    return torch.stack([center, neighbour])


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"'k' must be a positive integer (got {k!r})")


def _check_same_dim(x: Tensor, y: Tensor) -> None:
    if x.size(1) != y.size(1):
        raise ValueError(f"'x' and 'y' must have the same number of "
                         f"dimensions (got {x.size(1)} and {y.size(1)})")


def _knn_pairs(x: Tensor, y: Tensor, k: int, batch_x: Tensor,
               batch_y: Tensor, exclude_self: bool) -> Tuple[Tensor, Tensor]:
    """``(row, col)``: every query (index into y) with its neighbours
    (indices into x), sorted by query, distance, neighbour. With
    :obj:`exclude_self` (x is y), query i never gets neighbour i."""
    device = x.device
    empty = torch.empty(0, dtype=torch.long, device=device)
    if x.size(0) == 0 or y.size(0) == 0:
        return empty, empty
    work = _work_dtype(x)
    x, y = x.to(work), y.to(work)
    num_examples = _num_examples(batch_x, batch_y)
    count_x = torch.bincount(batch_x, minlength=num_examples)
    count_y = torch.bincount(batch_y, minlength=num_examples)
    use_tree = torch.zeros(num_examples, dtype=torch.bool, device=device)
    if _kd_tree_applies(x):
        use_tree = count_x * count_y >= KD_TREE_MIN_PAIRS

    rows: List[Tensor] = [empty]
    cols: List[Tensor] = [empty]
    brute = (~use_tree[batch_y]).nonzero().view(-1)
    if brute.numel():
        row, col = _knn_brute(x, y, k, batch_x, batch_y, brute,
                              exclude_self)
        rows.append(row)
        cols.append(col)
    # One kd-tree per large example: a loop over examples, not points.
    for example in use_tree.nonzero().view(-1).tolist():
        index_x = (batch_x == example).nonzero().view(-1)
        index_y = (batch_y == example).nonzero().view(-1)
        row, col = _knn_kd_tree(x[index_x], y[index_y], k,
                                index_x if exclude_self else None,
                                index_y)
        rows.append(index_y[row])
        cols.append(index_x[col])
    row, col = torch.cat(rows), torch.cat(cols)
    # Every query's entries come from one part, already in order.
    order = _stable_order(row)
    return row[order], col[order]


def _squared_distance(y: Tensor, x: Tensor) -> Tensor:
    """``|y_i - x_j|^2`` for ``y [..., D]`` against ``x [..., D]``
    (broadcast), summed over dimensions in a fixed order so that every
    search path computes bit-identical values."""
    out = (y[..., 0] - x[..., 0]).square()
    for d in range(1, y.size(-1)):
        out += (y[..., d] - x[..., d]).square()
    return out


def _knn_brute(x: Tensor, y: Tensor, k: int, batch_x: Tensor,
               batch_y: Tensor, queries: Tensor,
               exclude_self: bool) -> Tuple[Tensor, Tensor]:
    """Blocked brute force for the queries :obj:`queries` (indices into
    y): points and queries are grouped by example, and every block of
    queries is compared with the contiguous range of points of its
    examples only."""
    order_x = torch.sort(batch_x, stable=True).indices
    sorted_x, sorted_batch_x = x[order_x], batch_x[order_x]
    queries = queries[torch.sort(batch_y[queries], stable=True).indices]
    query_batch = batch_y[queries]
    count_x = torch.bincount(batch_x, minlength=_num_examples(batch_x,
                                                              batch_y))
    first_x = _exclusive_cumsum(count_x)
    lo = first_x[query_batch].tolist()
    hi = (first_x + count_x)[query_batch].tolist()

    rows, cols = [], []
    start = 0
    while start < len(lo):  # loop over blocks of queries
        stop = _block_end(lo, hi, start)
        a, b = lo[start], hi[stop - 1]
        if b > a:
            block = queries[start:stop]
            dist = _squared_distance(y[block].unsqueeze(1),
                                     sorted_x[a:b].unsqueeze(0))
            valid = query_batch[start:stop, None] == sorted_batch_x[None,
                                                                    a:b]
            if exclude_self:
                valid &= block[:, None] != order_x[None, a:b]
            row, col = _k_smallest(dist, valid, k)
            rows.append(block[row])
            cols.append(order_x[a:b][col])
        start = stop
    if not rows:
        empty = torch.empty(0, dtype=torch.long, device=x.device)
        return empty, empty
    return torch.cat(rows), torch.cat(cols)


def _block_end(lo: List[int], hi: List[int], start: int) -> int:
    """End of the block of queries from :obj:`start` whose distance matrix
    (queries x the union of their point ranges) fits in
    :data:`BLOCK_ENTRIES` (a single query always fits)."""
    width = max(1, hi[start] - lo[start])
    stop = min(len(lo), start + max(1, BLOCK_ENTRIES // width))
    while stop - start > 1 and \
            (stop - start) * (hi[stop - 1] - lo[start]) > BLOCK_ENTRIES:
        stop = start + (stop - start) // 2
    return stop


def _k_smallest(dist: Tensor, valid: Tensor,
                k: int) -> Tuple[Tensor, Tensor]:
    """Per row of ``dist [R, L]``, the (at most) :obj:`k` valid columns of
    smallest distance, ties to the smaller column; as ``(row, col)`` sorted
    by row, distance, column."""
    dist = dist.masked_fill(~valid, math.inf)
    kth = dist.topk(min(k, dist.size(1)), dim=1, largest=False).values
    kth = kth.max(dim=1, keepdim=True).values
    # Candidates: everything up to the k-th distance, ties included.
    row, col = ((dist <= kth) & valid).nonzero(as_tuple=True)
    order = torch.sort(dist[row, col], stable=True).indices
    order = order[torch.sort(row[order], stable=True).indices]
    row, col = row[order], col[order]
    counts = torch.bincount(row, minlength=dist.size(0))
    rank = torch.arange(row.numel(), device=row.device) - \
        _exclusive_cumsum(counts)[row]
    keep = rank < k
    return row[keep], col[keep]


_SCIPY_SPATIAL = None


def _kd_tree_applies(x: Tensor) -> bool:
    """SciPy's kd-tree is used on the CPU in low dimensions, if SciPy is
    installed."""
    global _SCIPY_SPATIAL
    if x.device.type != 'cpu' or x.size(1) > KD_TREE_MAX_DIM:
        return False
    if _SCIPY_SPATIAL is None:
        try:
            import scipy.spatial
            _SCIPY_SPATIAL = scipy.spatial
        except ImportError:
            _SCIPY_SPATIAL = False
    return _SCIPY_SPATIAL is not False


def _stable_order(values: Tensor) -> Tensor:
    """The stable argsort of a 1-D tensor (NumPy's on the CPU: a radix or
    merge sort, several times faster than :func:`torch.sort` there)."""
    if values.device.type == 'cpu':
        return torch.from_numpy(np.argsort(values.numpy(), kind='stable'))
    return torch.sort(values, stable=True).indices


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
    by_point = _stable_order(order[first])
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


def _knn_kd_tree(x: Tensor, y: Tensor, k: int, self_x: Optional[Tensor],
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
    tree = _SCIPY_SPATIAL.cKDTree(groups.coords.numpy())
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
        step = max(1, BLOCK_ENTRIES // query_size)
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
    dist = _squared_distance(y.unsqueeze(1), groups.coords[found])
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
    each of total :obj:`size` about :data:`BLOCK_ENTRIES` (or one row)."""
    if row.numel() == 0:
        return []
    part = (torch.cumsum(size, 0) - size) // BLOCK_ENTRIES
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
    offset = torch.arange(entry.numel()) - _exclusive_cumsum(take)[entry]
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
    order = _stable_order(sub_point)
    order = order[_stable_order(sub_dist[order])]
    order = order[_stable_order(sub_row[order])]
    point = point.clone()
    point[where] = sub_point[order]
    return row, point


def _rank_in_row(row: Tensor) -> Tensor:
    """The position of every entry among those of its row (entries come
    grouped by row)."""
    if row.numel() == 0:
        return row
    counts = torch.bincount(row)
    return torch.arange(row.numel()) - _exclusive_cumsum(counts)[row]


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


# ------------------------------------------------- farthest point sampling


def fps(x: Tensor, ratio: float = 0.5, batch: Optional[Tensor] = None,
        random_start: bool = False) -> Tensor:
    r"""Farthest point sampling from the `"PointNet++"
    <https://arxiv.org/abs/1706.02413>`_ paper, as
    :func:`torch_geometric.nn.fps` (whose positional order is ``x, batch,
    ratio``; pass keywords): from each example of ``n`` points, ``ceil(n
    * ratio)`` points, each the one farthest from those already taken.

    Returns the indices of the samples, example by example (in increasing
    example index), in sampling order. The first sample is the example's
    first point (or a random one with :obj:`random_start`, drawn from
    :mod:`torch`'s generator); exact ties go to the smaller index. The
    samples are distinct even when points are duplicated (PyG's kernel may
    repeat an index then). The loop runs over sample ranks only, each step
    vectorised over all points of all examples: ``O(N * max_samples)``.

    Args:
        x (Tensor): points ``[N, D]``.
        ratio (float): sampling ratio in ``(0, 1]``.
        batch (LongTensor, optional): example index of every point.
        random_start (bool): start from a random point of each example.
    """
    if isinstance(ratio, Tensor):
        raise TypeError("'ratio' must be a float; note the argument order "
                        "fps(x, ratio, batch) (PyG's is fps(x, batch, "
                        "ratio))")
    if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"'ratio' must be in (0, 1] (got {ratio!r})")
    if _native('WITH_FPS'):
        from torch_geometric.nn import fps as pyg_fps
        return pyg_fps(x, batch, ratio, random_start)
    x = _check_points(x, 'x')
    device = x.device
    batch = _check_batch(batch, x.size(0), 'batch', device)
    num_examples = _num_examples(batch)
    count = torch.bincount(batch, minlength=num_examples)
    num_samples = torch.ceil(count.double() * ratio).long()
    if x.size(0) == 0:
        return torch.empty(0, dtype=torch.long, device=device)

    x = x.to(_work_dtype(x))
    members = torch.sort(batch, stable=True).indices
    first = _exclusive_cumsum(count)
    offset = torch.zeros_like(count)
    if random_start:
        offset = (torch.rand(num_examples, dtype=torch.float64) *
                  count.cpu()).long().to(device)
    has_points = count > 0
    current = members[(first + offset).clamp(max=x.size(0) - 1)]
    # The distance of every point to the samples so far; -1 once taken.
    nearest = torch.full((x.size(0), ), math.inf, dtype=x.dtype,
                         device=device)
    index = torch.arange(x.size(0), device=device)
    steps = int(num_samples.max())
    taken = torch.empty(num_examples, steps, dtype=torch.long,
                        device=device)
    for step in range(steps):  # loop over sample ranks only
        taken[:, step] = current
        dist = _squared_distance(x, x[current][batch])
        nearest = torch.minimum(nearest, dist)
        nearest[current[has_points]] = -1.0
        farthest = torch.full((num_examples, ), -2.0, dtype=x.dtype,
                              device=device).scatter_reduce(
                                  0, batch, nearest, 'amax')
        candidate = torch.where(nearest == farthest[batch], index,
                                x.size(0))
        current = torch.full_like(count, x.size(0)).scatter_reduce(
            0, batch, candidate, 'amin').clamp(max=x.size(0) - 1)
    keep = torch.arange(steps, device=device) < num_samples.unsqueeze(1)
    return taken[keep]
