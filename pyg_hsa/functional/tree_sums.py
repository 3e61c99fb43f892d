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
from typing import Optional

import torch
from torch import Tensor

from pyg_hsa.functional.layout import Layout, from_parents, sum_children


class SubtreeSums(torch.autograd.Function):
    """Leaf rows ``[N, H, C_i]`` (any number of tensors) to the sums (means
    with :obj:`divide`) over the leaves below every node, ``[H, M,
    C_i]``."""
    @staticmethod
    def forward(ctx, layout: Layout, divide: bool, *xs: Tensor):
        ctx.layout, ctx.divide = layout, divide
        return tuple(_subtree_sums(layout, divide, x) for x in xs)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        return (None, None) + PathSums.apply(ctx.layout, ctx.divide, *grads)


class PathSums(torch.autograd.Function):
    """Per-node rows ``[H, M, C_i]`` to the sum over every leaf's root path
    (of the rows divided by the leaf counts with :obj:`divide`), ``[N, H,
    C_i]``."""
    @staticmethod
    def forward(ctx, layout: Layout, divide: bool, *xs: Tensor):
        ctx.layout, ctx.divide = layout, divide
        return tuple(_path_sums(layout, divide, x) for x in xs)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        return (None, None) + SubtreeSums.apply(ctx.layout, ctx.divide,
                                                *grads)


class GatedPathSums(torch.autograd.Function):
    """:class:`PathSums` of ``gain.unsqueeze(-1) * theta`` for ``theta``
    ``[H, M, C]`` and ``gain`` ``[H, M]``, with the product formed only on
    the internal rows."""
    @staticmethod
    def forward(ctx, layout: Layout, theta: Tensor, gain: Tensor):
        ctx.layout = layout
        ctx.save_for_backward(theta, gain)
        return _path_sums(layout, False, theta, gain)

    @staticmethod
    def backward(ctx, grad: Tensor):
        theta, gain = ctx.saved_tensors
        layout = ctx.layout
        if torch.is_grad_enabled():  # second derivatives
            below, = SubtreeSums.apply(layout, False, grad)
            return (None, gain.unsqueeze(-1) * below,
                    (below * theta).sum(-1))
        below = _subtree_sums(layout, False, grad)
        grad_gain = (below * theta).sum(-1) if ctx.needs_input_grad[2] \
            else None
        grad_theta = below.mul_(gain.unsqueeze(-1)) \
            if ctx.needs_input_grad[1] else None
        return None, grad_theta, grad_gain


def _subtree_sums(layout: Layout, divide: bool, x: Tensor) -> Tensor:
    heads, channels = x.size(1), x.size(2)
    out = x.new_empty(heads, layout.num_nodes, channels)
    start = layout.leaf_start
    if start is not None:  # the leaves' rows are one block
        out[:, start:start + layout.num_leaves].copy_(x.transpose(0, 1))
        out[:, :start].zero_()
        out[:, start + layout.num_leaves:].zero_()
    else:
        out.zero_().index_copy_(1, layout.leaf_node, x.transpose(0, 1))
    levels = layout.by_level(out, dim=1)
    for d in range(layout.depth, 0, -1):
        levels[d - 1].add_(sum_children(layout, d, levels[d]))
    if divide:
        _divide_internal_(layout, out)
    return out


def _divide_internal_(layout: Layout, x: Tensor) -> None:
    """Divides the rows above the deepest level (which holds only leaves)
    by their leaf counts, in place."""
    end = layout.level_ptr[layout.depth]
    x[:, :end].div_(layout.size[:end].to(x.dtype).view(1, -1, 1))


def _path_sums(layout: Layout, divide: bool, x: Tensor,
               gain: Optional[Tensor] = None) -> Tensor:
    """Leaf rows ``[N, H, C]`` of the path sums of ``x`` (``x / size`` with
    :obj:`divide`, ``gain * x`` with :obj:`gain`)."""
    depth, end = layout.depth, layout.level_ptr[layout.depth]
    # Internal rows (above the deepest level), weighted.
    acc = x[:, :end]
    if gain is not None:
        acc = acc * gain[:, :end].unsqueeze(-1)
    elif divide:
        acc = acc / layout.size[:end].to(x.dtype).view(1, -1, 1)
    else:
        acc = acc.clone()
    levels = acc.split(layout.level_sizes[:-1], 1)
    for d in range(1, depth):
        levels[d].add_(from_parents(layout, d, levels[d - 1]))
    deepest = x[:, end:]
    heads, channels = x.size(0), x.size(2)
    out = x.new_empty(layout.num_leaves, heads, channels)
    width = layout.level_width[depth]
    if layout.leaves_deepest and width is not None and depth > 0:
        # leaf = deepest row (* gain) + parent's sum, written in the user's
        # layout by the same pass.
        parents = levels[depth - 1].unsqueeze(2)
        rows = deepest.view(heads, -1, width, channels)
        target = out.view(-1, width, heads, channels).permute(2, 0, 1, 3)
        if gain is None:
            torch.add(rows, parents, out=target)
        else:
            torch.addcmul(parents, rows,
                          gain[:, end:].view(heads, -1, width, 1),
                          out=target)
        return out
    # General case: the deepest level's sums too, then the leaves' rows.
    deep = deepest if gain is None else deepest * gain[:, end:].unsqueeze(-1)
    if depth > 0:
        deep = deep + from_parents(layout, depth, levels[depth - 1])
    elif gain is None:
        deep = deep.clone()
    full = torch.cat([acc, deep], 1) if end > 0 else deep
    if layout.leaf_start is not None:
        rows = full[:, layout.leaf_start:layout.leaf_start +
                    layout.num_leaves]
    else:
        rows = full.index_select(1, layout.leaf_node)
    out.copy_(rows.transpose(0, 1))
    return out
