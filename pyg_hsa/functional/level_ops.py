r"""Moves between the levels of a :class:`~pyg_hsa.functional.layout.Layout`
and index operations along the node dimension of ``[B, n, ...]`` tensors
(rows of level ``d`` are its nodes in level order)."""
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from pyg_hsa.functional.layout import Layout

# Moves between levels ####################################################

# Index operations along the node dimension of ``[B, n, ...]`` tensors. On
# the CPU one 2-D operation per leading slice copies whole rows and is
# several times faster than the 3-D operation (which indexes element by
# element) once a slice has this many elements (measured: 5x at 32k rows of
# 32 channels, slower below 8k rows).
SLICED_INDEXING = 1 << 18


def _sliced(x: Tensor, rows: int) -> bool:
    # (The sliced form writes into its output: not for autograd.)
    return x.dim() >= 2 and x.device.type == 'cpu' and \
        rows * x[0, 0].numel() >= SLICED_INDEXING and \
        not (x.requires_grad and torch.is_grad_enabled())


def select_nodes(x: Tensor, index: Tensor) -> Tensor:
    """``x.index_select(1, index)`` for ``x`` ``[B, n, ...]``."""
    if not _sliced(x, index.numel()):
        return x.index_select(1, index)
    out = x.new_empty((x.size(0), index.numel()) + x.shape[2:])
    for part, target in zip(x, out):
        torch.ops.aten.index_select.out(part, 0, index, out=target)
    return out


def copy_nodes_(out: Tensor, index: Tensor, src: Tensor) -> Tensor:
    """``out.index_copy_(1, index, src)`` for ``[B, n, ...]`` tensors."""
    if not _sliced(src, index.numel()):
        return out.index_copy_(1, index, src)
    for target, part in zip(out, src):
        target.index_copy_(0, index, part)
    return out


def sum_children(layout: 'Layout', d: int, x: Tensor) -> Tensor:
    """Per node of level ``d - 1``, the sum of its children's rows of
    :obj:`x` ``[H, n_d, ...]`` (zero for childless nodes)."""
    width = layout.level_width[d]
    if width is not None:
        return x.reshape((x.size(0), -1, width) + x.shape[2:]).sum(2)
    out = x.new_zeros((x.size(0), layout.level_sizes[d - 1]) + x.shape[2:])
    return out.index_add_(1, layout.level_parent[d], x)


def add_children_(layout: 'Layout', d: int, rows: Tensor, x: Tensor) -> None:
    """Adds to every node of level ``d - 1`` (:obj:`rows`) the sum of its
    children's rows of :obj:`x`, in place."""
    width = layout.level_width[d]
    if width is not None:
        rows.add_(x.reshape((x.size(0), -1, width) + x.shape[2:]).sum(2))
    else:
        rows.index_add_(1, layout.level_parent[d], x)


def add_parents_(layout: 'Layout', d: int, rows: Tensor,
                 above: Tensor) -> None:
    """Adds to every node of level ``d`` (:obj:`rows`) its parent's row of
    :obj:`above`, in place (gathering one slice at a time through one small
    buffer, see :data:`SLICED_INDEXING`)."""
    width = layout.level_width[d]
    if width is not None:
        rows.view((rows.size(0), -1, width) + rows.shape[2:]).add_(
            above.unsqueeze(2))
    elif not _sliced(rows, rows.size(1)):
        rows.add_(above.index_select(1, layout.level_parent[d]))
    else:
        buffer = rows.new_empty(rows.shape[1:])
        for target, part in zip(rows, above):
            torch.ops.aten.index_select.out(part, 0, layout.level_parent[d],
                                            out=buffer)
            target.add_(buffer)


def from_parents(layout: 'Layout', d: int, above: Tensor) -> Tensor:
    """Every node of level ``d`` takes its parent's row of :obj:`above`
    ``[H, n_{d-1}, ...]``."""
    width = layout.level_width[d]
    if width is not None:
        return above.repeat_interleave(width, dim=1)
    return select_nodes(above, layout.level_parent[d])
