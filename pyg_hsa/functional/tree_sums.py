r"""The linear maps that move features along the tree, between the user's
leaf rows ``[N, H, C]`` and per-node rows ``[H, M, C]`` (heads first, level
order, see :class:`~pyg_hsa.functional.layout.Layout`):

* :class:`SubtreeSums`: leaf rows to the sum over the leaves below every
  node (with ``divide``: the mean), one pass up the levels;
* :class:`PathSums`: per-node rows to, for every leaf, the sum over its
  path from the root (with ``divide``: of the rows divided by the nodes'
  leaf counts), one pass down the levels;
* :class:`GatedPathSums`: :class:`PathSums` of ``gain * theta`` without
  forming the product at full size.

:class:`SubtreeSums` and :class:`PathSums` (with the same ``divide``) are
each other's adjoint, so each is the other's backward pass, and second
derivatives come for free. Where the leaves are exactly the deepest level
in the user's order (complete trees, sequences), the change of layout rides
on the one pass that reads or writes the leaves.
"""
from typing import List, Optional

import torch
from torch import Tensor

from pyg_hsa.functional.layout import Layout
from pyg_hsa.functional.level_ops import (
    SLICED_INDEXING,
    add_children_,
    add_parents_,
    copy_nodes_,
    select_nodes,
)


class SubtreeSums(torch.autograd.Function):
    """Leaf rows ``[N, H, C]`` of :obj:`xs` (tensors of one width) to the
    sums (means with :obj:`divide`) over the leaves below every node,
    stacked: ``[len(xs), H, M, C]``."""
    @staticmethod
    def forward(layout: Layout, divide: bool, *xs: Tensor):
        return _subtree_sums(layout, divide, xs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.layout, ctx.divide = inputs[:2]

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not torch.is_grad_enabled():  # (no second derivatives asked)
            return (None, None) + tuple(
                _path_sums(ctx.layout, ctx.divide, grad, in_place=True))
        return (None, None) + PathSums.apply(ctx.layout, ctx.divide, grad)


class PathSums(torch.autograd.Function):
    """Stacked per-node rows ``[S, H, M, C]`` to the sum over every leaf's
    root path (of the rows divided by the leaf counts with
    :obj:`divide`): ``S`` tensors ``[N, H, C]``."""
    @staticmethod
    def forward(layout: Layout, divide: bool, x: Tensor):
        return tuple(_path_sums(layout, divide, x))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.layout, ctx.divide = inputs[:2]

    @staticmethod
    def backward(ctx, *grads: Tensor):
        return None, None, SubtreeSums.apply(ctx.layout, ctx.divide, *grads)


class GatedPathSums(torch.autograd.Function):
    """:class:`PathSums` of ``gain.unsqueeze(-1) * theta`` for ``theta``
    ``[H, M, C]`` and ``gain`` ``[H, M]``, with the product formed only on
    the internal rows: ``[N, H, C]``."""
    @staticmethod
    def forward(layout: Layout, theta: Tensor, gain: Tensor):
        out, = _path_sums(layout, False, theta.unsqueeze(0), gain)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        layout, theta, gain = inputs
        ctx.layout = layout
        ctx.save_for_backward(theta, gain)

    @staticmethod
    def backward(ctx, grad: Tensor):
        theta, gain = ctx.saved_tensors
        layout = ctx.layout
        if torch.is_grad_enabled():  # second derivatives
            below = SubtreeSums.apply(layout, False, grad)[0]
            return (None, gain.unsqueeze(-1) * below,
                    (below * theta).sum(-1))
        below = _subtree_sums(layout, False, (grad, ))[0]
        grad_gain = _row_dots(below, theta) if ctx.needs_input_grad[2] \
            else None
        grad_theta = below.mul_(gain.unsqueeze(-1)) \
            if ctx.needs_input_grad[1] else None
        return None, grad_theta, grad_gain


def _row_dots(x: Tensor, y: Tensor, rows: int = 1 << 14) -> Tensor:
    """``(x * y).sum(-1)`` for ``[H, M, C]`` tensors, a block of rows at a
    time (no full-size product in memory)."""
    out = x.new_empty(x.shape[:2])
    for lo in range(0, x.size(1), rows):
        torch.sum(x[:, lo:lo + rows] * y[:, lo:lo + rows], -1,
                  out=out[:, lo:lo + rows])
    return out


def _subtree_sums(layout: Layout, divide: bool, xs) -> Tensor:
    heads, channels = xs[0].size(1), xs[0].size(2)
    out = xs[0].new_empty(len(xs), heads, layout.num_nodes, channels)
    start = layout.leaf_start
    for x, rows in zip(xs, out):
        if start is not None:  # the leaves' rows are one block
            rows[:, start:start + layout.num_leaves].copy_(x.transpose(0, 1))
            continue
        for where, users, level in zip(*zip(*layout.level_leaves),
                                       layout.by_level(rows, dim=1)):
            if where.numel() == level.size(1):  # a level of only leaves
                gather_leaves(x, users, out=level)
            elif where.numel():
                rows = level.new_empty(heads, where.numel(), channels)
                copy_nodes_(level, where, gather_leaves(x, users, out=rows))
    flat = out.view(-1, layout.num_nodes, channels)  # [S * H, M, C]
    if start is not None:
        flat[:, :start].zero_()
        flat[:, start + layout.num_leaves:].zero_()
    else:
        flat.index_fill_(1, layout.internal_nodes, 0.0)
    levels = layout.by_level(flat, dim=1)
    for d in range(layout.depth, 0, -1):
        add_children_(layout, d, levels[d - 1], levels[d])
    if divide:
        end = layout.level_ptr[layout.depth]
        flat[:, :end].div_(layout.size[:end].to(flat.dtype).view(1, -1, 1))
    return out


def _path_sums(layout: Layout, divide: bool, x: Tensor,
               gain: Optional[Tensor] = None,
               in_place: bool = False) -> List[Tensor]:
    """Leaf rows ``[N, H, C]`` (``S`` tensors) of the path sums of the
    stacked ``x`` ``[S, H, M, C]`` (of ``x / size`` with :obj:`divide`, of
    ``gain * x`` with :obj:`gain` ``[H, M]``, for ``S = 1``). With
    :obj:`in_place`, :obj:`x` may be overwritten and the results may be
    views of it."""
    stack, heads, _, channels = x.shape
    depth, end = layout.depth, layout.level_ptr[layout.depth]
    flat = x.reshape(stack * heads, -1, channels)
    width = layout.level_width[depth]
    if in_place and gain is None and layout.leaves_deepest and depth > 0:
        # (A gradient nobody else holds: sum down inside it, and hand out
        # the leaves' rows as views in the user's layout.)
        if divide:
            flat[:, :end].div_(layout.size[:end].to(x.dtype).view(1, -1, 1))
        levels = layout.by_level(flat, dim=1)
        for d in range(1, depth + 1):
            add_parents_(layout, d, levels[d], levels[d - 1])
        return list(x[:, :, end:].transpose(1, 2).unbind(0))
    out = [x.new_empty(layout.num_leaves, heads, channels)
           for _ in range(stack)]
    if layout.leaves_deepest and width is not None and depth > 0:
        # Internal rows weighted and summed down; then leaf = deepest row
        # (* gain) + parent's sum, written in the user's layout by the same
        # pass.
        acc = _weighted(layout, flat[:, :end], divide, gain, 0, end)
        levels = acc.split(layout.level_sizes[:-1], 1)
        for d in range(1, depth):
            add_parents_(layout, d, levels[d], levels[d - 1])
        parents = levels[depth - 1].view(stack, heads, -1, 1, channels)
        rows = flat[:, end:].view(stack, heads, -1, width, channels)
        for s in range(stack):
            target = out[s].view(-1, width, heads, channels).permute(
                2, 0, 1, 3)
            if gain is None:
                torch.add(rows[s], parents[s], out=target)
            else:
                torch.addcmul(parents[s], rows[s],
                              gain[:, end:].view(heads, -1, width, 1),
                              out=target)
        return out
    # General case: all rows weighted and summed down in one buffer, then
    # one gather of the leaves' rows and one change of layout per tensor.
    full = _weighted(layout, flat, divide, gain, 0, flat.size(1))
    levels = layout.by_level(full, dim=1)
    for d in range(1, depth + 1):
        add_parents_(layout, d, levels[d], levels[d - 1])
    rows = select_nodes(full, layout.leaf_node).view(
        stack, heads, layout.num_leaves, channels)
    for target, part in zip(out, rows):
        target.copy_(part.transpose(0, 1))
    return out


def _weighted(layout: Layout, x: Tensor, divide: bool,
              gain: Optional[Tensor], lo: int, hi: int) -> Tensor:
    """A new tensor: rows ``lo .. hi`` of the ``[B, M, C]`` :obj:`x` times
    the gain, or divided by the leaf counts, or as they are."""
    if gain is not None:
        return x * gain[:, lo:hi].unsqueeze(-1)
    if divide:
        return x / layout.size[lo:hi].to(x.dtype).view(1, -1, 1)
    return x.clone()


def gather_leaves(x: Tensor, users: Tensor, out: Tensor) -> Tensor:
    """``out[h, i] = x[users[i], h]`` for the user's ``[N, H, C]``
    :obj:`x` (a gather per head, see
    :data:`~pyg_hsa.functional.level_ops.SLICED_INDEXING`)."""
    if out[0].numel() < SLICED_INDEXING:
        return out.copy_(x.index_select(0, users).transpose(0, 1))
    for h in range(x.size(1)):
        torch.ops.aten.index_select.out(x[:, h], 0, users, out=out[h])
    return out
