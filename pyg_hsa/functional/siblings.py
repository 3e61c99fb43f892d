r"""Step 2 of the dynamic program: softmax attention of every node over its
family, for all families of all levels at once, one kernel call per bucket
(:mod:`~pyg_hsa.functional.family_softmax` for narrow families,
:mod:`~pyg_hsa.functional.fused_attention` for wide ones).

:class:`SiblingAttention` is one autograd Function for the whole step: the
buckets read views or one gather of the pooled means, and their gradients
land in one buffer, instead of a full-size zero tensor per slice that
autograd would write. Its second derivatives, and the attention weights,
come from :func:`sibling_reference`, the same computation by plain
differentiable operations.
"""
import threading
from typing import Optional, Tuple

import torch
from torch import Tensor

from pyg_hsa.functional.family_softmax import (
    NarrowInputs,
    Scale,
    allowed_keys,
    block_rows,
    narrow_backward,
    narrow_forward,
    narrow_reference,
    _keep_mask,
)
from pyg_hsa.functional.fused_attention import (
    fused_backward,
    fused_forward,
    has_fused_kernel,
    prepare,
    unprepare,
)
from pyg_hsa.functional.layout import Bucket, Layout
from pyg_hsa.functional.level_ops import copy_nodes_, select_nodes


def sibling_attention(layout: Layout, stacks: Tuple[Tensor, ...],
                      pos: Optional[Tensor], self_loops: bool, scale: Scale,
                      dropout: float, need_weights: bool,
                      seed: Optional[int] = None):
    r""":math:`\vartheta` ``[H, M, Cv]`` and :math:`\eta` ``[H, M]`` of every
    node (0 where it has no sibling) from the pooled means, stacked as
    ``[3, H, M, C]`` (queries, keys, values) or as ``[2, H, M, C]`` and
    ``[1, H, M, Cv]``, and positions ``[H or 1, M, P]`` (level order); with
    :obj:`need_weights` also the sibling edges (level order) and their
    ``[E, H]`` weights. Dropout masks are drawn from :obj:`seed` (by
    default from the global generator)."""
    if dropout <= 0:
        seed = 0
    elif seed is None:
        seed = int(torch.randint(1, 2**62, ()))
    if need_weights:
        return sibling_reference(layout, self_loops, dropout, seed, pos,
                                 scale, *stacks, need_weights=True)
    theta, eta = SiblingAttention.apply(layout, self_loops, dropout, seed,
                                        pos, scale, *stacks)
    return theta, eta, None


def planes(stacks) -> Tuple[Tensor, Tensor, Tensor]:
    """The query, key and value planes of the stacks."""
    return tuple(plane for stack in stacks for plane in stack.unbind(0))


def _inputs(layout: Layout, i: int, stacks,
            pos: Optional[Tensor]) -> NarrowInputs:
    """Bucket ``i``'s inputs ``[H, F, W, .]``: views of a slice of the
    nodes, or gathered."""
    bucket = layout.buckets[i]
    shape = bucket.index.shape
    if bucket.start is not None:
        rows = slice(bucket.start, bucket.start + bucket.index.numel())
        stacks = [stack[:, :, rows] for stack in stacks]
        pos = None if pos is None else pos[:, rows]
    else:
        index = bucket.index.view(-1)
        stacks = [select_nodes(stack.flatten(0, 1), index).view(
            stack.shape[:2] + (-1, ) + stack.shape[3:]) for stack in stacks]
        pos = None if pos is None else select_nodes(pos, index)
    q, k, v = (x.view(x.shape[:1] + shape + x.shape[2:])
               for x in planes(stacks))
    if pos is not None:
        pos = pos.view(pos.shape[:1] + shape + pos.shape[2:])
    log_size, loop, mask = layout.bucket_constants(i, q.dtype)
    return NarrowInputs(q, k, v, pos, log_size, bucket.valid, loop, mask)


def _node_rows(bucket: Bucket, x: Tensor) -> Tensor:
    """``x`` ``[H, M, ...]``'s rows of a view bucket as ``[H, F, W, ...]``."""
    rows = x[:, bucket.start:bucket.start + bucket.index.numel()]
    return rows.view(x.shape[:1] + bucket.index.shape + x.shape[2:])


def _fused(bucket: Bucket, x: Tensor, dropout: float) -> bool:
    return bucket.wide and dropout == 0 and has_fused_kernel(x)


def _generator(x: Tensor, seed: int, i: int) -> Optional[torch.Generator]:
    if seed == 0:
        return None
    return torch.Generator(device=x.device).manual_seed(seed + i)


_FORWARD_STATE = threading.local()


class SiblingAttention(torch.autograd.Function):
    r""":func:`sibling_attention` without weights; ``seed`` seeds the
    dropout masks of bucket ``i`` with ``seed + i``, so the backward pass
    draws them again."""
    @staticmethod
    def forward(layout: Layout, self_loops: bool, dropout: float,
                seed: int, pos: Optional[Tensor], scale: Scale,
                *stacks: Tensor):
        q, k, v = planes(stacks)
        heads, num_nodes, value_channels = v.shape
        theta = v.new_empty(heads, num_nodes, value_channels)
        _zero_rows_outside_views_(layout, theta)
        eta = v.new_zeros(heads, num_nodes)
        states, inputs = [], []
        for i, bucket in enumerate(layout.buckets):
            x = _inputs(layout, i, stacks, pos)
            inputs.append(x)
            view = bucket.start is not None
            if _fused(bucket, v, dropout):
                prepared = prepare(x.q, x.k, x.v, x.pos, scale)
                out, lse, state = fused_forward(
                    *prepared[:3], _key_bias(x), _exclusions(x), prepared[3],
                    value_channels)
                t = out[..., :value_channels].transpose(0, 1)
                e = lse.neg().transpose(0, 1)
                if view:
                    _node_rows(bucket, theta).copy_(t)
            else:
                t, e, state = narrow_forward(
                    x, scale, dropout, _generator(v, seed, i),
                    _node_rows(bucket, theta) if view else None)
            if view:
                _node_rows(bucket, eta).copy_(e)
            else:
                slots = bucket.slots
                copy_nodes_(theta, bucket.nodes,
                            select_nodes(t.flatten(1, 2), slots))
                copy_nodes_(eta, bucket.nodes,
                            select_nodes(e.flatten(1, 2), slots))
            states.append(state)
        if self_loops and layout.lone_leaves.numel():
            lone_theta, lone_eta = _lone_leaves(layout, q, k, v, pos, scale)
            theta.index_copy_(1, layout.lone_leaves, lone_theta)
            eta.index_copy_(1, layout.lone_leaves, lone_eta)

        # What the backward pass reuses goes to setup_context, which runs
        # right after (forward has no ctx, so that torch.func transforms
        # work).
        _FORWARD_STATE.saved = (states, inputs)
        return theta, eta

    @staticmethod
    def setup_context(ctx, inputs, output):
        layout, self_loops, dropout, seed, pos, scale, *stacks = inputs
        # (None where a transform calls setup_context again, e.g. nested
        # torch.func levels: the backward pass then differentiates
        # sibling_reference.)
        ctx.states, ctx.inputs = getattr(_FORWARD_STATE, 'saved', None) \
            or (None, None)
        _FORWARD_STATE.saved = None
        ctx.layout, ctx.self_loops = layout, self_loops
        ctx.dropout, ctx.seed = dropout, seed
        learned = isinstance(scale, Tensor)
        ctx.scale = None if learned else scale
        ctx.save_for_backward(pos, scale if learned else None, *stacks)

    @staticmethod
    def backward(ctx, grad_theta: Tensor, grad_eta: Tensor):
        pos, learned, *stacks = ctx.saved_tensors
        scale = ctx.scale if learned is None else learned
        layout = ctx.layout
        if torch.is_grad_enabled() or ctx.states is None:
            # second derivatives (or no saved state)
            return _double_backward(ctx, pos, scale, stacks, grad_theta,
                                    grad_eta)
        want_scale = learned is not None and ctx.needs_input_grad[5]
        grad_stacks = [torch.empty_like(stack) for stack in stacks]
        for g in grad_stacks:
            _zero_rows_outside_views_(layout, g.flatten(0, 1))
        grads = planes(grad_stacks)
        q, k, v = planes(stacks)
        grad_pos = None if pos is None else torch.zeros_like(pos)
        grad_scale = 0.0 if want_scale else None
        for i, (bucket, state, x) in enumerate(
                zip(layout.buckets, ctx.states, ctx.inputs)):
            view = bucket.start is not None
            shape = x.q.shape[:3]
            if view:
                g_theta = _node_rows(bucket, grad_theta)
                g_eta = _node_rows(bucket, grad_eta)
                out = tuple(_node_rows(bucket, g) for g in grads)
            else:
                g_theta, g_eta = _slot_rows(bucket, grad_theta, shape), \
                    _slot_rows(bucket, grad_eta, shape)
                slot_stacks = [stack.new_empty(stack.shape[:2] +
                                               (bucket.index.numel(), ) +
                                               stack.shape[3:])
                               for stack in stacks]
                out = tuple(g.view(g.shape[:1] + shape[1:] + g.shape[2:])
                            for g in planes(slot_stacks))
            if isinstance(state, dict):  # the fused kernel
                parts = fused_backward(
                    state, _pad_like(g_theta.transpose(0, 1), state['v']),
                    g_eta.neg().transpose(0, 1) if bucket.eta_used
                    else None)
                dq, dk, dv, dp, ds = unprepare(parts, x.q, x.k, x.v, x.pos,
                                               scale, want_scale)
                for target, part in zip(out, (dq, dk, dv)):
                    target.copy_(part)
            else:
                dq, dk, dv, dp, ds = narrow_backward(
                    x, scale, ctx.dropout, _generator(v, ctx.seed, i), state,
                    g_theta, g_eta, want_scale, out)
            if not view:
                index = bucket.index.view(-1)
                for target, part in zip(grad_stacks, slot_stacks):
                    target.index_add_(2, index, part)
            if dp is not None:
                if view:
                    _node_rows(bucket, grad_pos).add_(dp)
                else:
                    grad_pos.index_add_(1, bucket.index.view(-1),
                                        dp.flatten(1, 2))
            if want_scale:
                grad_scale = grad_scale + ds
        if ctx.self_loops and layout.lone_leaves.numel():
            _lone_leaves_backward(layout, q, k, v, pos, scale, grad_theta,
                                  grad_eta, grads, grad_pos)
            if want_scale:
                grad_scale = grad_scale + _lone_scale_grad(layout, q, k,
                                                           grad_eta)
        if want_scale:
            grad_scale = torch.as_tensor(grad_scale, dtype=v.dtype).reshape(
                learned.shape)
        return (None, None, None, None,
                grad_pos if ctx.needs_input_grad[4] else None, grad_scale,
                *grad_stacks)


def _zero_rows_outside_views_(layout: Layout, x: Tensor) -> None:
    """Zeros the rows of :obj:`x` ``[H, M, ...]`` that no view bucket
    writes."""
    start = 0
    for lo, hi in layout.view_ranges:
        x[:, start:lo].zero_()
        start = hi
    x[:, start:].zero_()


def _slot_rows(bucket: Bucket, x: Tensor, shape) -> Tensor:
    """``x`` ``[H, M, ...]``'s rows in a gathered bucket's slots (zero in
    padding slots), ``[H, F, W, ...]``."""
    rows = select_nodes(x, bucket.index.view(-1))
    rows = rows.view(x.shape[:1] + tuple(shape[1:]) + x.shape[2:])
    valid = bucket.valid.view(bucket.valid.shape + (1, ) * (x.dim() - 2))
    return rows.mul_(valid) if not bool(bucket.valid.all()) else rows


def _key_bias(x: NarrowInputs) -> Optional[Tensor]:
    r"""The fused kernel's additive mask ``[F, 1, 1, W]``: :math:`\log n`."""
    if x.key_bias is None:
        return None
    return x.key_bias.view(x.key_bias.size(0), 1, 1, -1)


def _exclusions(x: NarrowInputs) -> Optional[Tensor]:
    """Rows that must not attend to themselves (see
    :func:`~pyg_hsa.functional.fused_attention.fused_forward`)."""
    if x.loop is None:
        return x.valid.new_ones(())
    return None if bool(x.loop.all()) else ~x.loop


def _pad_like(grad: Tensor, like: Tensor) -> Tensor:
    if grad.size(-1) == like.size(-1):
        return grad
    return torch.nn.functional.pad(grad, (0, like.size(-1) - grad.size(-1)))


# Lone leaves: with self loops, a leaf without siblings attends to itself.


def _lone_leaves(layout: Layout, q: Tensor, k: Tensor, v: Tensor,
                 pos: Optional[Tensor], scale: Scale) -> Tuple[Tensor, Tensor]:
    lone = layout.lone_leaves
    logit = scale * (q.index_select(1, lone) *
                     k.index_select(1, lone)).sum(-1)
    if pos is not None:
        p = pos.index_select(1, lone)
        logit = logit + (p * p).sum(-1)
    return v.index_select(1, lone), -logit


def _lone_leaves_backward(layout, q, k, v, pos, scale, grad_theta, grad_eta,
                          grads, grad_pos) -> None:
    lone = layout.lone_leaves
    g_logit = -grad_eta.index_select(1, lone).unsqueeze(-1)
    grad_q, grad_k, grad_v = grads
    grad_q.index_add_(1, lone, g_logit * scale * k.index_select(1, lone))
    grad_k.index_add_(1, lone, g_logit * scale * q.index_select(1, lone))
    grad_v.index_add_(1, lone, grad_theta.index_select(1, lone))
    if pos is not None:
        g = 2 * g_logit * pos.index_select(1, lone)
        if pos.size(0) == 1:
            g = g.sum(0, keepdim=True)
        grad_pos.index_add_(1, lone, g)


def _lone_scale_grad(layout, q, k, grad_eta) -> Tensor:
    lone = layout.lone_leaves
    dot = (q.index_select(1, lone) * k.index_select(1, lone)).sum(-1)
    return -(grad_eta.index_select(1, lone) * dot).sum()


# The reference: plain differentiable operations ###########################


def sibling_reference(layout: Layout, self_loops: bool, dropout: float,
                      seed: int, pos: Optional[Tensor], scale: Scale,
                      *stacks: Tensor, need_weights: bool = False):
    """:func:`sibling_attention` by plain differentiable operations, with
    the same dropout masks; returns ``(theta, eta, weights)``, the weights
    ``None`` unless :obj:`need_weights`."""
    q, k, v = planes(stacks)
    heads, num_nodes, value_channels = v.shape
    nodes, values_theta, values_eta, edges = [], [], [], []
    for i, bucket in enumerate(layout.buckets):
        x = _inputs(layout, i, stacks, pos)
        keep = _reference_keep(x, dropout, _generator(v, seed, i))
        theta, eta, alpha = narrow_reference(
            x, scale, None if keep is None else (lambda a: a * keep))
        valid = bucket.valid
        nodes.append(bucket.index[valid])
        values_theta.append(theta[:, valid])
        values_eta.append(eta[:, valid])
        if need_weights:
            allowed = allowed_keys(valid, x.loop, 0, valid.size(1))
            f, r, c = (allowed & valid.unsqueeze(-1)).nonzero().unbind(-1)
            edges.append((torch.stack([bucket.index[f, r],
                                       bucket.index[f, c]]),
                          alpha[:, f, r, c].t()))
    lone = layout.lone_leaves
    if self_loops and lone.numel():
        lone_theta, lone_eta = _lone_leaves(layout, q, k, v, pos, scale)
        nodes.append(lone)
        values_theta.append(lone_theta)
        values_eta.append(lone_eta)
        edges.append((torch.stack([lone, lone]),
                      v.new_ones(lone.numel(), heads)))
    index = torch.cat(nodes + [lone.new_zeros(0)]).view(1, -1)
    heads_index = torch.arange(heads, device=v.device).view(-1, 1)
    # (Zeros made from the inputs keep them in the autograd graph, with zero
    # gradients, even where no node has a sibling, e.g. in a one-leaf tree.)
    zero = (q[:, :1, :1] + k[:, :1, :1] + v[:, :1, :1]) * 0
    theta = zero.expand(heads, num_nodes, value_channels).index_put(
        (heads_index, index),
        torch.cat(values_theta + [v.new_zeros(heads, 0, value_channels)], 1))
    eta = zero[..., 0].expand(heads, num_nodes).index_put(
        (heads_index, index), torch.cat(values_eta +
                                        [v.new_zeros(heads, 0)], 1))
    if not need_weights:
        return theta, eta, None
    edge_index = torch.cat([e for e, _ in edges] +
                           [layout.perm.new_zeros(2, 0)], dim=1)
    alpha = torch.cat([a for _, a in edges] + [v.new_zeros(0, heads)])
    return theta, eta, (edge_index, alpha)


def _reference_keep(x: NarrowInputs, dropout: float,
                    generator: Optional[torch.Generator]):
    """The dropout multipliers :func:`narrow_forward` draws, block by
    block, as one ``[H, F, W, W]`` tensor."""
    if dropout <= 0:
        return None
    width, rows = x.q.size(2), block_rows(x)
    rows = min(rows, width)
    return torch.cat([
        _keep_mask(x, lo, min(lo + rows, width), dropout, generator)
        for lo in range(0, width, rows)
    ], dim=2)


def _double_backward(ctx, pos, scale, stacks, grad_theta, grad_eta):
    """Gradients as differentiable functions of the inputs, from
    :func:`sibling_reference` (also where no forward state was saved)."""
    learned = scale if isinstance(scale, Tensor) else None
    inputs = [pos, learned] + list(stacks)
    # (Inputs wanted but not requiring grad, e.g. unwrapped by a torch.func
    # transform, become leaves of the recomputation.)
    inputs = [x if x is None or not need or x.requires_grad
              else x.detach().requires_grad_()
              for x, need in zip(inputs, ctx.needs_input_grad[4:])]
    pos, learned, stacks = inputs[0], inputs[1], inputs[2:]
    with torch.enable_grad():
        theta, eta, _ = sibling_reference(
            ctx.layout, ctx.self_loops, ctx.dropout, ctx.seed, pos,
            scale if learned is None else learned, *stacks)
    wanted = [x for x in inputs if x is not None and x.requires_grad]
    found = iter(torch.autograd.grad((theta, eta), wanted,
                                     (grad_theta, grad_eta),
                                     create_graph=True, allow_unused=True))
    grads = [next(found) if x is not None and x.requires_grad else None
             for x in inputs]
    return (None, None, None, None) + tuple(grads)
