r"""Exact k-nearest neighbours with the contracts of
:func:`torch_geometric.nn.knn` and :func:`~torch_geometric.nn.knn_graph`.

Both hand over to PyG's compiled kernel when it is installed
(``torch_geometric.typing.WITH_KNN``: pyg-lib, which replaced
torch-cluster's kNN in PyG 2.8) and every batch vector is sorted, as that
kernel needs. Otherwise they run in plain PyTorch, vectorised over
points and examples, exactly and deterministically:

* distances are squared Euclidean distances accumulated dimension by
  dimension in float64 on the CPU (at least float32 elsewhere);
* neighbours come sorted by distance, ties broken by the smaller index, so
  the result does not depend on the search path: small problems are solved
  by blocked brute force in bounded memory
  (:mod:`~pyg_hsa.utils._knn_brute_force`), large ones on the CPU by
  SciPy's kd-tree over the distinct positions, when SciPy is installed,
  followed by the same tie-break (:mod:`~pyg_hsa.utils._knn_kd_tree`).

PyG's kernel finds the same neighbours up to exact ties, which it breaks
its own way; its :obj:`knn_graph(loop=False)` drops only the pair
``(i, i)``, so a point with copies can keep :obj:`k` + 1 neighbours there.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

import torch_geometric.typing
from pyg_hsa.utils._knn_brute_force import (
    knn_brute_force,
    num_examples,
    stable_order,
)
from pyg_hsa.utils._knn_kd_tree import knn_kd_tree, scipy_spatial
from pyg_hsa.utils.checks import (
    check_bool,
    check_choice,
    check_int,
    check_points,
    describe,
)

#: The kd-tree answers an example's queries when it has at least this many
#: (query, point) pairs; below, blocked brute force is faster.
KD_TREE_MIN_PAIRS = 1 << 18
#: kd-trees stop paying off in high dimensions.
KD_TREE_MAX_DIM = 16

FLOWS = ('source_to_target', 'target_to_source')


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
            :obj:`x` (in any order).
        batch_y (LongTensor, optional): example index of every point of
            :obj:`y` (in any order).

    Examples:
        >>> x = torch.tensor([[0.0], [1.0], [3.0]])
        >>> knn(x, torch.tensor([[0.9]]), 2)
        tensor([[0, 0],
                [1, 0]])
    """
    k = check_int(k, 'k', minimum=1)
    if _native(batch_x, batch_y):
        from torch_geometric.nn import knn as pyg_knn
        return pyg_knn(x, y, k, batch_x, batch_y)
    x, y = check_points(x, 'x'), check_points(y, 'y')
    if x.size(1) != y.size(1):
        raise ValueError(f"'x' and 'y' must have the same number of "
                         f"dimensions (got {x.size(1)} and {y.size(1)})")
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
    copies of it exist), so every point gets exactly ``min(k, n - 1)``
    neighbours, ``n`` the size of its example; with :obj:`loop=True` the
    point itself is a candidate at distance 0 (copies with a smaller index
    come first). For :obj:`flow='source_to_target'` row 0 holds the
    neighbours and row 1 the centres, sorted by centre, then distance, then
    neighbour index; :obj:`'target_to_source'` swaps the rows.

    Args:
        x (Tensor): points ``[N, D]``.
        k (int): number of neighbours, positive.
        batch (LongTensor, optional): example index of every point (in any
            order).
        loop (bool): whether a point may be its own neighbour.
        flow (str): :obj:`'source_to_target'` or :obj:`'target_to_source'`.

    Examples:
        >>> x = torch.tensor([[0.0], [1.0], [3.0]])
        >>> knn_graph(x, 1)
        tensor([[1, 0, 1],
                [0, 1, 2]])
    """
    k = check_int(k, 'k', minimum=1)
    loop = check_bool(loop, 'loop')
    check_choice(flow, 'flow', FLOWS)
    if _native(batch):
        from torch_geometric.nn import knn_graph as pyg_knn_graph
        return pyg_knn_graph(x, k, batch, loop, flow)
    x = check_points(x, 'x')
    batch = _check_batch(batch, x.size(0), 'batch', x.device)
    center, neighbour = _knn_pairs(x, x, k, batch, batch,
                                   exclude_self=not loop)
    if flow == 'source_to_target':
        return torch.stack([neighbour, center])
    return torch.stack([center, neighbour])


def _native(*batches: Optional[Tensor]) -> bool:
    """Whether PyG's compiled kNN is installed and can take these batch
    vectors (absent, or sorted 1-D tensors)."""
    return bool(torch_geometric.typing.WITH_KNN) and all(
        batch is None or (isinstance(batch, Tensor) and batch.dim() == 1
                          and bool((batch[1:] >= batch[:-1]).all()))
        for batch in batches)


def _check_batch(batch: Optional[Tensor], num_points: int, name: str,
                 device: torch.device) -> Tensor:
    """The example index of every point, ``[num_points]`` (zeros if
    :obj:`batch` is None)."""
    if batch is None:
        return torch.zeros(num_points, dtype=torch.long, device=device)
    if not isinstance(batch, Tensor) or batch.dtype not in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        raise TypeError(f"'{name}' must be an integer tensor (got "
                        f"{describe(batch)})")
    if batch.dim() != 1 or batch.numel() != num_points:
        raise ValueError(f"'{name}' must have shape [{num_points}] (got "
                         f"{list(batch.shape)})")
    if batch.numel() and int(batch.min()) < 0:
        raise ValueError(f"'{name}' must not contain negative indices")
    return batch.to(device=device, dtype=torch.long)


def _work_dtype(t: Tensor) -> torch.dtype:
    if t.device.type == 'cpu':
        return torch.float64
    return torch.promote_types(t.dtype, torch.float32)


def _kd_tree_applies(x: Tensor) -> bool:
    """SciPy's kd-tree is used on the CPU in low dimensions, if SciPy is
    installed."""
    return x.device.type == 'cpu' and x.size(1) <= KD_TREE_MAX_DIM and \
        scipy_spatial() is not None


def _knn_pairs(x: Tensor, y: Tensor, k: int, batch_x: Tensor,
               batch_y: Tensor, exclude_self: bool) -> Tuple[Tensor, Tensor]:
    """``(row, col)``: every query (index into y) with its neighbours
    (indices into x), sorted by query, distance, neighbour. With
    :obj:`exclude_self` (x is y), query i never gets neighbour i. Examples
    with at least :data:`KD_TREE_MIN_PAIRS` pairs go to the kd-tree, the
    others to blocked brute force."""
    device = x.device
    empty = torch.empty(0, dtype=torch.long, device=device)
    if x.size(0) == 0 or y.size(0) == 0:
        return empty, empty
    work = _work_dtype(x)
    x, y = x.to(work), y.to(work)
    size = num_examples(batch_x, batch_y)
    count_x = torch.bincount(batch_x, minlength=size)
    count_y = torch.bincount(batch_y, minlength=size)
    use_tree = torch.zeros(size, dtype=torch.bool, device=device)
    if _kd_tree_applies(x):
        use_tree = count_x * count_y >= KD_TREE_MIN_PAIRS

    rows: List[Tensor] = [empty]
    cols: List[Tensor] = [empty]
    brute = (~use_tree[batch_y]).nonzero().view(-1)
    if brute.numel():
        row, col = knn_brute_force(x, y, k, batch_x, batch_y, brute,
                                   exclude_self)
        rows.append(row)
        cols.append(col)
    # One kd-tree per large example: a loop over examples, not points.
    for example in use_tree.nonzero().view(-1).tolist():
        index_x = (batch_x == example).nonzero().view(-1)
        index_y = (batch_y == example).nonzero().view(-1)
        row, col = knn_kd_tree(x[index_x], y[index_y], k,
                               index_x if exclude_self else None, index_y)
        rows.append(index_y[row])
        cols.append(index_x[col])
    row, col = torch.cat(rows), torch.cat(cols)
    # Every query's entries come from one part, already in order.
    order = stable_order(row)
    return row[order], col[order]
