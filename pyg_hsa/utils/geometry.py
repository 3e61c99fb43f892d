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

Batch vectors assign every point to an example; the fallbacks accept them
in any order, PyG's kernels need them sorted.
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

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
    order = torch.sort(row, stable=True).indices
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


def _knn_kd_tree(x: Tensor, y: Tensor, k: int, self_x: Optional[Tensor],
                 self_y: Tensor) -> Tuple[Tensor, Tensor]:
    """kNN of one example by a kd-tree (float64 CPU tensors), re-ranked by
    the exact squared distances with the index tie-break. If
    :obj:`self_x` is given (x is y), query i excludes the point with
    ``self_x[j] == self_y[i]``.

    The tree returns the q nearest points, with arbitrary choices among
    ties at its q-th distance. A query is settled once its k-th exact
    distance lies strictly below the q-th one (so every point tied with
    its k-th neighbour was returned); the others are asked again with a
    larger q (q doubles; at q = n all points are seen).
    """
    tree = _SCIPY_SPATIAL.cKDTree(x.numpy())
    num_points = x.size(0)
    wanted = min(k, num_points - (self_x is not None))
    rows, cols = [], []
    pending = torch.arange(y.size(0))
    # A few more than needed settle all but the queries with ties.
    query_size = min(num_points, wanted + (self_x is not None) +
                     max(2, k // 4))
    while pending.numel() and wanted > 0:  # loop over doublings of q
        unsettled = []
        step = max(1, BLOCK_ENTRIES // query_size)
        for lo in range(0, pending.numel(), step):  # blocks of queries
            block = pending[lo:lo + step]
            row, col, settled = _kd_tree_block(tree, x, y, block, wanted,
                                               query_size, self_x, self_y)
            rows.append(row)
            cols.append(col)
            unsettled.append(block[~settled])
        pending = torch.cat(unsettled)
        query_size = min(num_points, 2 * query_size)
    if not rows:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty
    return torch.cat(rows), torch.cat(cols)


def _kd_tree_block(tree, x: Tensor, y: Tensor, block: Tensor, wanted: int,
                   query_size: int, self_x: Optional[Tensor],
                   self_y: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """One kd-tree query for the queries :obj:`block`: the settled ones'
    neighbours as ``(row, col)`` and the mask of settled queries."""
    _, found = tree.query(y[block].numpy(), k=query_size,
                          workers=torch.get_num_threads())
    found = torch.from_numpy(found).view(block.numel(), query_size)
    settled = torch.ones(block.numel(), dtype=torch.bool)
    if self_x is not None:
        found, settled = _drop_self(found, self_x, self_y[block])
    dist = _squared_distance(y[block].unsqueeze(1), x[found])
    found, dist = _sort_rows(found, dist)
    if query_size < x.size(0):
        # Every point nearer than the farthest one returned was returned;
        # the relative margin covers rounding differences in the tree.
        settled &= dist[:, wanted - 1] < dist[:, -1] * (1 - 1e-9)
    found = found[settled, :wanted]
    row = block[settled].unsqueeze(1).expand_as(found)
    return row.reshape(-1), found.reshape(-1), settled


def _drop_self(found: Tensor, self_x: Tensor,
               self_query: Tensor) -> Tuple[Tensor, Tensor]:
    """Removes each query's own point from its row of :obj:`found` (the
    last column where it is missing: then more than ``q`` duplicates of
    it exist, and the query is not settled)."""
    is_self = self_x[found] == self_query.unsqueeze(1)
    has_self = is_self.any(dim=1)
    width = found.size(1)
    drop = torch.where(has_self, is_self.to(torch.uint8).argmax(dim=1),
                       width - 1)
    column = torch.arange(width - 1).unsqueeze(0)
    column = column + (column >= drop.unsqueeze(1)).long()
    return found.gather(1, column), has_self


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
