r"""Exact k-nearest neighbours by blocked brute force: every block of
queries is compared with the points of its examples only, in bounded
memory. Helpers shared with :mod:`pyg_hsa.utils._knn_kd_tree`."""
import math
from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor

#: Entries of one block of the brute-force distance matrix (float64: 32 MB).
#: Read at call time (tests shrink it), also by the kd-tree search.
BLOCK_ENTRIES = 1 << 22


def exclusive_cumsum(counts: Tensor) -> Tensor:
    return torch.cumsum(counts, 0) - counts


def num_examples(*batches: Tensor) -> int:
    return max([int(b.max()) + 1 for b in batches if b.numel()] + [0])


def stable_order(values: Tensor) -> Tensor:
    """The stable argsort of a 1-D tensor (NumPy's on the CPU: a radix or
    merge sort, several times faster than :func:`torch.sort` there)."""
    if values.device.type == 'cpu':
        return torch.from_numpy(np.argsort(values.numpy(), kind='stable'))
    return torch.sort(values, stable=True).indices


def squared_distance(y: Tensor, x: Tensor) -> Tensor:
    """``|y_i - x_j|^2`` for ``y [..., D]`` against ``x [..., D]``
    (broadcast), summed over dimensions in a fixed order so that every
    search path computes bit-identical values."""
    out = (y[..., 0] - x[..., 0]).square()
    for d in range(1, y.size(-1)):
        out += (y[..., d] - x[..., d]).square()
    return out


def knn_brute_force(x: Tensor, y: Tensor, k: int, batch_x: Tensor,
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
    count_x = torch.bincount(batch_x,
                             minlength=num_examples(batch_x, batch_y))
    first_x = exclusive_cumsum(count_x)
    lo = first_x[query_batch].tolist()
    hi = (first_x + count_x)[query_batch].tolist()

    rows, cols = [], []
    start = 0
    while start < len(lo):  # loop over blocks of queries
        stop = _block_end(lo, hi, start)
        a, b = lo[start], hi[stop - 1]
        if b > a:
            block = queries[start:stop]
            dist = squared_distance(y[block].unsqueeze(1),
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
        exclusive_cumsum(counts)[row]
    keep = rank < k
    return row[keep], col[keep]
