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

from pyg_hsa.functional.layout import Layout, from_parents, sum_children


class SubtreeSums(torch.autograd.Function):
    """Leaf rows ``[N, H, C]`` of :obj:`xs` (tensors of one width) to the
    sums (means with :obj:`divide`) over the leaves below every node,
    stacked: ``[len(xs), H, M, C]``."""
    @staticmethod
    def forward(ctx, layout: Layout, divide: bool, *xs: Tensor):
        ctx.layout, ctx.divide = layout, divide
        return _subtree_sums(layout, divide, xs)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return (None, None) + PathSums.apply(ctx.layout, ctx.divide, grad)


class PathSums(torch.autograd.Function):
    """Stacked per-node rows ``[S, H, M, C]`` to the sum over every leaf's
    root path (of the rows divided by the leaf counts with
    :obj:`divide`): ``S`` tensors ``[N, H, C]``."""
    @staticmethod
    def forward(ctx, layout: Layout, divide: bool, x: Tensor):
        ctx.layout, ctx.divide = layout, divide
        return tuple(_path_sums(layout, divide, x))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        return None, None, SubtreeSums.apply(ctx.layout, ctx.divide, *grads)


class GatedPathSums(torch.autograd.Function):
    """:class:`PathSums` of ``gain.unsqueeze(-1) * theta`` for ``theta``
    ``[H, M, C]`` and ``gain`` ``[H, M]``, with the product formed only on
    the internal rows: ``[N, H, C]``."""
    @staticmethod
    def forward(ctx, layout: Layout, theta: Tensor, gain: Tensor):
        ctx.layout = layout
        ctx.save_for_backward(theta, gain)
        out, = _path_sums(layout, False, theta.unsqueeze(0), gain)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        theta, gain = ctx.saved_tensors
        layout = ctx.layout
        if torch.is_grad_enabled():  # second derivatives
            below = SubtreeSums.apply(layout, False, grad)[0]
            return (None, gain.unsqueeze(-1) * below,
                    (below * theta).sum(-1))
        below = _subtree_sums(layout, False, (grad, ))[0]
        grad_gain = (below * theta).sum(-1) if ctx.needs_input_grad[2] \
            else None
        grad_theta = below.mul_(gain.unsqueeze(-1)) \
            if ctx.needs_input_grad[1] else None
        return None, grad_theta, grad_gain


def _subtree_sums(layout: Layout, divide: bool, xs) -> Tensor:
    heads, channels = xs[0].size(1), xs[0].size(2)
    out = xs[0].new_empty(len(xs), heads, layout.num_nodes, channels)
    start = layout.leaf_start
    for x, rows in zip(xs, out):
        if start is not None:  # the leaves' rows are one block
            rows[:, start:start + layout.num_leaves].copy_(x.transpose(0, 1))
        else:
            rows.index_copy_(1, layout.leaf_node, x.transpose(0, 1))
    flat = out.view(-1, layout.num_nodes, channels)  # [S * H, M, C]
    if start is not None:
        flat[:, :start].zero_()
        flat[:, start + layout.num_leaves:].zero_()
    else:
        flat.index_fill_(1, layout.internal_nodes, 0.0)
    levels = layout.by_level(flat, dim=1)
    for d in range(layout.depth, 0, -1):
        levels[d - 1].add_(sum_children(layout, d, levels[d]))
    if divide:
        end = layout.level_ptr[layout.depth]
        flat[:, :end].div_(layout.size[:end].to(flat.dtype).view(1, -1, 1))
    return out


def _path_sums(layout: Layout, divide: bool, x: Tensor,
               gain: Optional[Tensor] = None) -> List[Tensor]:
    """Leaf rows ``[N, H, C]`` (``S`` tensors) of the path sums of the
    stacked ``x``
    ``[S, H, M, C]`` (of ``x / size`` with :obj:`divide`, of ``gain * x``
    with :obj:`gain` ``[H, M]``, for ``S = 1``)."""
    stack, heads, _, channels = x.shape
    depth, end = layout.depth, layout.level_ptr[layout.depth]
    flat = x.reshape(stack * heads, -1, channels)
    # Internal rows (above the deepest level), weighted.
    acc = flat[:, :end]
    if gain is not None:
        acc = acc * gain[:, :end].unsqueeze(-1)
    elif divide:
        acc = acc / layout.size[:end].to(x.dtype).view(1, -1, 1)
    else:
        acc = acc.clone()
    levels = acc.split(layout.level_sizes[:-1], 1)
    for d in range(1, depth):
        levels[d].add_(from_parents(layout, d, levels[d - 1]))
    deepest = flat[:, end:]
    out = [x.new_empty(layout.num_leaves, heads, channels)
           for _ in range(stack)]
    width = layout.level_width[depth]
    if layout.leaves_deepest and width is not None and depth > 0:
        # leaf = deepest row (* gain) + parent's sum, written in the user's
        # layout by the same pass.
        parents = levels[depth - 1].view(stack, heads, -1, 1, channels)
        rows = deepest.view(stack, heads, -1, width, channels)
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
    # General case: every level's leaves, written to their user rows.
    for d, (where, users) in enumerate(layout.level_leaves):
        if d == depth:  # (the deepest level is only leaves)
            rows = deepest if gain is None else \
                deepest * gain[:, end:].unsqueeze(-1)
            if depth > 0:
                rows = rows + from_parents(layout, depth, levels[depth - 1])
        elif users.numel():
            rows = levels[d].index_select(1, where)
        else:
            continue
        rows = rows.view(stack, heads, -1, channels)
        for target, part in zip(out, rows):
            target.index_copy_(0, users, part.transpose(0, 1))
    return out
