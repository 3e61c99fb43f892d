r"""Softmax attention inside wide families through PyTorch's fused CPU
attention kernel, which never holds the ``W x W`` logits.

The kernel (``aten::_scaled_dot_product_flash_attention_for_cpu``) returns
the output and the log-sum-exp :math:`L` of every row; it needs ``[B, H, W,
D]`` inputs of one width ``D`` with unit stride in the last dimension. Here
``B`` is the bucket's families (of one exact size: no padding). The bias
:math:`\log n(B)` is its additive mask, ``[F, 1, 1, W]`` (broadcast over
heads and queries); positions are extra query and key channels, ``[scale
q, e] . [k, e]``; q, k and v are zero-padded to one width.

**The member's own key.** The kernel includes every key in every row, but a
member attends to its siblings only (a leaf with a self loop excepted).
Where the member's own share :math:`p = e^{s_{ii} - L_i}` of its row is at
most :data:`MAX_SELF_SHARE`, it is taken out exactly: :math:`o' = (o - p
v_i)/(1 - p)`, :math:`L' = L + \log(1 - p)` (dividing by :math:`1 - p \ge
1/2` at most doubles rounding errors). If any row of the bucket is
dominated by its own key, the bucket is recomputed instead as two causal
passes (keys left of the row; keys right of it, on the flipped sequence)
merged by their log-sum-exps, with the own key added back where it loops:
exact for any logits, at about 1.1-1.5x the work.

**Gradients.** The backward pass calls the kernel's own backward. The
kernel has no gradient for its log-sum-exp, so that one rides on a zero
value channel: with :math:`-g_L` in that channel of the output and ``1`` in
the output's gradient, the kernel's row term :math:`D_i = \langle g_i,
o_i\rangle` becomes :math:`D_i - g_{L,i}`, exactly the log-sum-exp's
contribution :math:`\partial L_i / \partial s_{ij} = P_{ij}`. Where the own
key was subtracted, the kernel runs with gradients scaled by :math:`1/(1 -
p)` and the diagonal's contribution is taken back out.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_hsa.functional.family_softmax import Scale

# A member's own key is removed by subtraction when its share of the row is
# at most this; otherwise the rows are recomputed without it.
MAX_SELF_SHARE = 0.5


def has_fused_kernel(x: Tensor) -> bool:
    """Whether the fused kernel runs on :obj:`x`'s device and dtype."""
    return x.device.type == 'cpu' and x.dtype in (torch.float32,
                                                  torch.float64)


def _kernel():
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _kernel_backward_op():
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def prepare(q: Tensor, k: Tensor, v: Tensor, pos: Optional[Tensor],
            scale: Scale) -> Tuple[Tensor, Tensor, Tensor, float]:
    """Heads-first ``[H, F, W, .]`` inputs as the kernel's ``[F, H, W, D]``
    (views where possible) and the kernel's scale."""
    heads = q.size(0)
    q, k, v = (x.transpose(0, 1) for x in (q, k, v))
    kernel_scale = scale
    if pos is not None or isinstance(scale, Tensor):
        kernel_scale = 1.0
        q = q * scale
        if pos is not None:
            pos = pos.transpose(0, 1).expand(-1, heads, -1, -1)
            q, k = torch.cat([q, pos], -1), torch.cat([k, pos], -1)
    dim = max(q.size(-1), v.size(-1))
    q, k, v = (_pad(x, dim) for x in (q, k, v))
    return q, k, v, float(kernel_scale)


def unprepare(grads: Tuple[Tensor, Tensor, Tensor], q: Tensor, k: Tensor,
              v: Tensor, pos: Optional[Tensor], scale: Scale,
              want_scale: bool):
    """Gradients of :func:`prepare`'s outputs as gradients ``(q, k, v, pos,
    scale)`` of its heads-first inputs."""
    dq, dk, dv = (g.transpose(0, 1) for g in grads)
    channels = q.size(-1)
    dq_scaled = dq[..., :channels]
    grad_scale = None
    if pos is not None or isinstance(scale, Tensor):
        if want_scale:
            grad_scale = (dq_scaled * q).sum()
        dq_scaled = dq_scaled * scale
    grad_pos = None
    if pos is not None:
        width = pos.size(-1)
        grad_pos = dq[..., channels:channels + width] + \
            dk[..., channels:channels + width]
        if pos.size(0) == 1:
            grad_pos = grad_pos.sum(0, keepdim=True)
    return (dq_scaled, dk[..., :channels], dv[..., :v.size(-1)], grad_pos,
            grad_scale)


def _pad(x: Tensor, dim: int) -> Tensor:
    return x if x.size(-1) == dim else F.pad(x, (0, dim - x.size(-1)))


def fused_forward(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                  exclude: Optional[Tensor], scale: float,
                  value_channels: int):
    """Attention of every member of ``[F, H, W, D]`` families over the
    others (over itself too where it loops); returns the output, its
    log-sum-exp ``[F, H, W]`` and what the backward pass needs.

    ``exclude`` says which rows must not attend to themselves: ``None``
    (no row), or an ``[F, W]`` mask (or a scalar ``True``: every row)."""
    out, lse = _kernel()(q, k, v, 0.0, False, attn_mask=bias, scale=scale)
    state = {'q': q, 'k': k, 'v': v, 'bias': bias, 'scale': scale,
             'value_channels': value_channels}
    if exclude is None:
        state.update(mode='plain', out=out, lse=lse)
        return out, lse, state
    mask = exclude.to(q.dtype)
    if mask.dim() == 2:
        mask = mask.unsqueeze(1)
    share = (_own_logit(q, k, bias, scale) - lse).exp_().mul_(mask)
    if bool((share > MAX_SELF_SHARE).any()):
        return _split_forward(state, mask)
    # o' = (o - p v) / (1 - p) = c o - (c - 1) v with c = 1 / (1 - p).
    gain = share.neg().add_(1.0).reciprocal_().unsqueeze(-1)  # c
    out = out.mul(gain).sub_(v * (gain - 1))
    state.update(mode='subtract', out=out, lse=lse, gain=gain)
    return out, lse - gain.squeeze(-1).log(), state


def fused_backward(state: dict, grad_out: Tensor,
                   grad_lse: Optional[Tensor]) -> Tuple[Tensor, ...]:
    """Gradients ``(q, k, v)`` of :func:`fused_forward`; :obj:`grad_lse`
    ``None`` when the log-sum-exp does not reach the loss."""
    if state['mode'] == 'split':
        return _split_backward(state, grad_out, grad_lse)
    q, k, v, scale = state['q'], state['k'], state['v'], state['scale']
    gain = state.get('gain')  # c = 1 / (1 - p) where the own key went out
    grad, lse_grad = grad_out, grad_lse
    if gain is not None:
        grad = grad_out * gain
        lse_grad = None if grad_lse is None else grad_lse * gain[..., 0]
    dq, dk, dv = _kernel_backward(q, k, v, state['bias'], state['out'],
                                  state['lse'], grad, lse_grad, scale, False,
                                  state['value_channels'])
    if gain is not None:
        # The kernel counted every row's own key, of weight p c = c - 1:
        # take it back out.
        ratio = gain - 1
        own = (grad_out * (v - state['out'])).sum(-1, keepdim=True)
        if grad_lse is not None:
            own.add_(grad_lse.unsqueeze(-1))
        own.mul_(ratio)
        dq.addcmul_(own, k, value=-scale)
        dk.addcmul_(own, q, value=-scale)
        dv.addcmul_(ratio, grad_out, value=-1.0)
    return dq, dk, dv


def _own_logit(q: Tensor, k: Tensor, bias: Optional[Tensor],
               scale: float) -> Tensor:
    """``[F, H, W]`` logit of every member with itself."""
    logit = (q * k).sum(-1).mul_(scale)
    if bias is not None:
        logit = logit + bias.view(bias.size(0), 1, -1)
    return logit


def _kernel_backward(q, k, v, bias, out, lse, grad, grad_lse, scale, causal,
                     value_channels):
    """The kernel's backward pass; :obj:`grad_lse` (if any) rides on a zero
    value channel (see the module docstring)."""
    dim = q.size(-1)
    if grad_lse is not None:
        if value_channels == dim:  # no zero channel yet: add one
            q, k, v, out, grad = (F.pad(x, (0, 1))
                                  for x in (q, k, v, out, grad))
        out = out.clone()
        out[..., value_channels] = -grad_lse
        grad = grad.clone()
        grad[..., value_channels] = 1.0
    dq, dk, dv = _kernel_backward_op()(grad.contiguous(), q, k, v, out, lse,
                                       0.0, causal, attn_mask=bias,
                                       scale=scale)
    return dq[..., :dim], dk[..., :dim], dv[..., :dim]


def _flipped(flip: bool, q, k, v, bias):
    if not flip:
        return q, k, v, bias
    return (q.flip(2), k.flip(2), v.flip(2),
            None if bias is None else bias.flip(-1))


def _split_forward(state: dict, mask: Tensor):
    """Rows without their own key as two causal kernel calls, merged with
    the own key of rows that keep it (see the module docstring)."""
    q, k, v, bias, scale = (state[key]
                            for key in ('q', 'k', 'v', 'bias', 'scale'))
    outs, lses = [], []
    for flip in (False, True):
        qf, kf, vf, bf = _flipped(flip, q, k, v, bias)
        o, lse = _kernel()(qf[:, :, 1:], kf[:, :, :-1], vf[:, :, :-1], 0.0,
                           True, attn_mask=None if bf is None else
                           bf[..., :-1], scale=scale)
        o = F.pad(o, (0, 0, 1, 0))  # row 0 has no keys on this side
        lse = F.pad(lse, (1, 0), value=-math.inf)
        outs.append(o.flip(2) if flip else o)
        lses.append(lse.flip(2) if flip else lse)
    own = _own_logit(q, k, bias, scale).masked_fill(mask > 0, -math.inf)
    total = torch.logsumexp(torch.stack(lses + [own]), dim=0)
    weights = [(lse - total).exp() for lse in lses + [own]]
    out = sum(w.unsqueeze(-1) * x for w, x in zip(weights, outs + [v]))
    state.update(mode='split', out=out, total=total, outs=outs, lses=lses,
                 own=weights[2])
    return out, total, state


def _split_backward(state: dict, grad_out: Tensor,
                    grad_lse: Optional[Tensor]):
    """Each causal pass ``h`` of weight ``w`` gets output gradient ``w g_o``
    and log-sum-exp gradient ``w (<g_o, o_h - o> + g_L)``."""
    q, k, v, bias, scale = (state[key]
                            for key in ('q', 'k', 'v', 'bias', 'scale'))
    out, total = state['out'], state['total']
    grads = [torch.zeros_like(x) for x in (q, k, v)]
    for flip, (o, lse) in enumerate(zip(state['outs'], state['lses'])):
        weight = (lse - total).exp()
        g_out = weight.unsqueeze(-1) * grad_out
        g_lse = weight * (grad_out * (o - out)).sum(-1)
        if grad_lse is not None:
            g_lse = g_lse + weight * grad_lse
        qf, kf, vf, bf = _flipped(flip, q, k, v, bias)
        of, gf, lf, glf = (x.flip(2) if flip else x
                           for x in (o, g_out, lse, g_lse))
        gq, gk, gv = _kernel_backward(
            qf[:, :, 1:], kf[:, :, :-1], vf[:, :, :-1],
            None if bf is None else bf[..., :-1], of[:, :, 1:],
            lf[:, :, 1:].contiguous(), gf[:, :, 1:], glf[:, :, 1:], scale,
            True, state['value_channels'])
        parts = (F.pad(gq, (0, 0, 1, 0)), F.pad(gk, (0, 0, 0, 1)),
                 F.pad(gv, (0, 0, 0, 1)))
        for g, part in zip(grads, parts):
            g.add_(part.flip(2) if flip else part)
    # The own key of rows that keep it.
    own = state['own']
    g_own = own * (grad_out * (v - out)).sum(-1)
    if grad_lse is not None:
        g_own = g_own + own * grad_lse
    dq, dk, dv = grads
    dq.add_(g_own.unsqueeze(-1) * (scale * k))
    dk.add_(g_own.unsqueeze(-1) * (scale * q))
    dv.add_(own.unsqueeze(-1) * grad_out)
    return dq, dk, dv
