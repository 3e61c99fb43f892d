r"""Softmax attention inside families of equal padded width, by batched
matrix products: the inner step of HSA for narrow families.

Every member :math:`A` of a family attends to its siblings :math:`B` (and,
for a leaf with a self loop, to itself), each sibling one super-token with
logit :math:`s(A, B) + \log n(B)`:

.. math::
    \vartheta(A) = \sum_B \mathrm{softmax}_B\big(s(A, B) + \log n(B)\big)
    \rho_v(B), \qquad \eta(A) = -\log \sum_B n(B)\, e^{s(A, B)}.

Inputs are one bucket of families (see :mod:`pyg_hsa.functional.layout`):
queries, keys and values ``[H, F, W, C]``, positions ``[H or 1, F, W, P]``,
the keys' bias :math:`\log n` ``[F, W]``. The forward pass builds the
``[H, F, W, W]`` logits in place in one buffer; the backward pass needs only
the weights :math:`\alpha`: :math:`\partial\ell/\partial\mathrm{logit} =
\alpha \odot (g_\alpha - \langle g_\alpha, \alpha\rangle - g_\eta)`.
Padding, and a member's own key unless it loops, are an additive mask of a
large finite negative number: exact zero weights, finite gradients.
Families whose logits would exceed :data:`FAMILY_BLOCK_ENTRIES` go a block
of query rows at a time, and the backward pass recomputes each block, so
memory stays bounded.
"""
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

Scale = Union[float, Tensor]

# Families are processed a block of query rows at a time, each block
# recomputed in the backward pass, when their logits would have more entries
# than this and than the bucket's values.
FAMILY_BLOCK_ENTRIES = 1 << 24
# The backward pass of a bucket goes a slice of families at a time whose
# [H, F, W, W] temporaries have at most this many entries.
FAMILY_CHUNK_ENTRIES = 1 << 22


class NarrowInputs(NamedTuple):
    """One bucket's inputs (see the module docstring); ``valid`` ``[F, W]``
    marks real members, ``loop`` ``[F, W]`` (or ``None``) members that
    attend to themselves; ``mask`` (optional) is the additive ``[F, W, W]``
    form of all three, :func:`additive_mask`, precomputed."""
    q: Tensor
    k: Tensor
    v: Tensor
    pos: Optional[Tensor]
    key_bias: Optional[Tensor]
    valid: Tensor
    loop: Optional[Tensor]
    mask: Optional[Tensor] = None


def matmul(a: Tensor, b: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``a @ b`` for ``[H, F, ., .]`` views without copying them: one
    batched product where heads and families merge into one batch
    dimension, else one per head (e.g. for a bucket that is a slice of the
    nodes); written into :obj:`out` if given."""
    if all(_mergeable(t) for t in (a, b) + (() if out is None else (out, ))):
        flat = torch.bmm(a.flatten(0, 1), b.flatten(0, 1),
                         out=None if out is None else out.view(
                             (-1, ) + out.shape[2:]))
        return flat.view(a.shape[:2] + flat.shape[1:]) if out is None \
            else out
    if out is None:
        out = a.new_empty(a.shape[:3] + b.shape[3:])
    for h in range(a.size(0)):
        torch.bmm(a[h], b[h] if b.size(0) > 1 else b[0], out=out[h])
    return out


def _mergeable(t: Tensor) -> bool:
    return t.size(0) == 1 or t.stride(0) == t.size(1) * t.stride(1)


def block_rows(x: NarrowInputs) -> int:
    """Query rows per block (the width itself when one block fits)."""
    heads, families, width = x.q.shape[:3]
    return max(FAMILY_BLOCK_ENTRIES // max(heads * families * width, 1),
               x.q.size(3), x.v.size(3), 1)


def narrow_forward(x: NarrowInputs, scale: Scale, dropout: float,
                   generator: Optional[torch.Generator],
                   theta: Optional[Tensor] = None):
    r"""Returns :math:`\vartheta` ``[H, F, W, Cv]`` (written into
    :obj:`theta` if given), :math:`\eta` ``[H, F, W]`` (0 where a member has
    nothing to attend to) and what the backward pass needs (``None`` when
    it recomputes blocks). Dropout masks come from :obj:`generator`, so the
    backward pass can draw them again."""
    width, rows = x.q.size(2), block_rows(x)
    if rows >= width:
        mask = x.mask if x.mask is not None else additive_mask(x, 0, width)
        keep = _keep_mask(x, 0, width, dropout, generator)
        theta, eta, alpha = _block_forward(x, 0, width, mask, scale, keep,
                                           theta)
        return theta, eta, (alpha, keep)
    if theta is None:
        theta = x.v.new_empty(x.q.shape[:3] + x.v.shape[3:])
    etas = []
    for lo in range(0, width, rows):
        hi = min(lo + rows, width)
        mask = additive_mask(x, lo, hi - lo)
        keep = _keep_mask(x, lo, hi, dropout, generator)
        block, eta, _ = _block_forward(x, lo, hi, mask, scale, keep)
        theta[:, :, lo:hi] = block
        etas.append(eta)
    return theta, torch.cat(etas, dim=2), None


def narrow_backward(x: NarrowInputs, scale: Scale, dropout: float,
                    generator: Optional[torch.Generator], saved,
                    grad_theta: Tensor, grad_eta: Tensor, want_scale: bool,
                    out: Optional[Tuple[Tensor, Tensor, Tensor]] = None):
    """Gradients ``(q, k, v, pos, scale)`` of one bucket (``None`` for no
    positions or a fixed scale), those of q, k, v written into :obj:`out`
    if given. :obj:`generator` must be in the state it had before
    :func:`narrow_forward`."""
    width, rows = x.q.size(2), block_rows(x)
    if saved is not None:
        return _backward_by_families(x, saved, scale, grad_theta, grad_eta,
                                     want_scale, out)
    if out is None:
        out = tuple(torch.empty_like(t) for t in (x.q, x.k, x.v))
    grad_q, grad_k, grad_v = out
    grad_k.zero_()
    grad_v.zero_()
    grad_pos = None if x.pos is None else torch.zeros_like(x.pos)
    grad_scale = 0.0 if want_scale else None
    for lo in range(0, width, rows):  # recompute every block
        hi = min(lo + rows, width)
        mask = additive_mask(x, lo, hi - lo)
        keep = _keep_mask(x, lo, hi, dropout, generator)
        _, _, alpha = _block_forward(x, lo, hi, mask, scale, keep)
        gq, gk, gv, gp, gs = _block_backward(
            x, lo, hi, alpha, keep, scale, grad_theta[:, :, lo:hi],
            grad_eta[:, :, lo:hi], want_scale)
        grad_q[:, :, lo:hi] = gq
        grad_k += gk
        grad_v += gv
        if gp is not None:
            grad_pos += gp
        if want_scale:
            grad_scale = grad_scale + gs
    return grad_q, grad_k, grad_v, grad_pos, grad_scale


def _backward_by_families(x: NarrowInputs, saved, scale: Scale,
                          grad_theta: Tensor, grad_eta: Tensor,
                          want_scale: bool, out=None):
    """The backward pass of a bucket whose weights were kept, a slice of
    families at a time, so that its ``[H, F, W, W]`` temporaries stay
    within :data:`FAMILY_CHUNK_ENTRIES` (families are independent)."""
    alpha, keep = saved
    heads, families, width = alpha.shape[:3]
    step = max(1, FAMILY_CHUNK_ENTRIES // max(heads * width * width, 1))
    if step >= families:
        return _block_backward(x, 0, width, alpha, keep, scale, grad_theta,
                               grad_eta, want_scale, out)
    parts = []
    for lo in range(0, families, step):
        rows = slice(lo, lo + step)
        part = NarrowInputs(*(
            None if t is None else t[:, rows] if t.dim() == 4 else t[rows]
            for t in x))
        parts.append(_block_backward(
            part, 0, width, alpha[:, rows],
            None if keep is None else keep[:, rows], scale,
            grad_theta[:, rows], grad_eta[:, rows], want_scale,
            None if out is None else tuple(t[:, rows] for t in out)))
    grads = [out[i] if out is not None else torch.cat([p[i] for p in parts],
                                                      1) for i in range(3)]
    grads.append(None if x.pos is None else torch.cat([p[3] for p in parts],
                                                      1))
    grads.append(sum(p[4] for p in parts) if want_scale else None)
    return tuple(grads)


def allowed_keys(valid: Tensor, loop: Optional[Tensor], lo: int,
                 rows: int) -> Tensor:
    """``[F, rows, W]``: the keys query ``lo + r`` may attend to (real
    members other than itself, or itself where it loops)."""
    width = valid.size(1)
    query = torch.arange(lo, lo + rows, device=valid.device)
    is_self = query.unsqueeze(-1) == torch.arange(width, device=valid.device)
    allowed = valid.unsqueeze(1) & ~is_self
    if loop is not None:
        allowed = allowed | (is_self & loop[:, lo:lo + rows].unsqueeze(-1))
    return allowed


def additive_mask(x: NarrowInputs, lo: int, rows: int) -> Tensor:
    r"""``[F, rows, W]``: the keys' bias :math:`\log n` where query ``lo +
    r`` may attend to the key, a large negative number elsewhere (whose
    weight is then exactly zero: every row has a key, since every family
    has two members or more)."""
    return mask_for(x.valid, x.loop, x.key_bias, x.q.dtype, lo, rows)


def mask_for(valid: Tensor, loop: Optional[Tensor],
             key_bias: Optional[Tensor], dtype: torch.dtype, lo: int = 0,
             rows: Optional[int] = None) -> Tensor:
    """:func:`additive_mask` from its parts."""
    rows = valid.size(1) if rows is None else rows
    allowed = allowed_keys(valid, loop, lo, rows)
    fill = torch.full((), _masked(dtype), dtype=dtype, device=valid.device)
    bias = fill.new_zeros(()) if key_bias is None else \
        key_bias.unsqueeze(1).to(dtype)
    return torch.where(allowed, bias, fill)


def _masked(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min / 4


def _keep_mask(x: NarrowInputs, lo: int, hi: int, dropout: float,
               generator: Optional[torch.Generator]) -> Optional[Tensor]:
    """Inverted-dropout multipliers of the weights of rows ``lo .. hi``."""
    if dropout <= 0:
        return None
    heads, families, width = x.q.shape[:3]
    shape = (heads, families, hi - lo, width)
    keep = torch.empty(shape, dtype=x.q.dtype, device=x.q.device)
    return keep.bernoulli_(1 - dropout, generator=generator).div_(1 - dropout)


def _rows(x: NarrowInputs, lo: int, hi: int):
    """Queries and their positions for rows ``lo .. hi``."""
    if lo == 0 and hi == x.q.size(2):
        return x.q, x.pos
    pos = None if x.pos is None else x.pos[:, :, lo:hi]
    return x.q[:, :, lo:hi], pos


def _block_forward(x: NarrowInputs, lo: int, hi: int, mask: Tensor,
                   scale: Scale, keep: Optional[Tensor],
                   theta: Optional[Tensor] = None):
    q, pos_q = _rows(x, lo, hi)
    logit = matmul(q, x.k.transpose(-1, -2)).mul_(scale)
    if pos_q is not None:
        logit.add_(matmul(pos_q, x.pos.transpose(-1, -2)))
    logit.add_(mask)
    eta = torch.logsumexp(logit, dim=-1).neg_()
    alpha = torch.softmax(logit, dim=-1)
    weight = alpha if keep is None else alpha * keep
    return matmul(weight, x.v, theta), eta, alpha


def _block_backward(x: NarrowInputs, lo: int, hi: int, alpha: Tensor,
                    keep: Optional[Tensor], scale: Scale, grad_theta: Tensor,
                    grad_eta: Tensor, want_scale: bool,
                    out: Optional[Tuple[Tensor, Tensor, Tensor]] = None):
    """Gradients of rows ``lo .. hi``; those of q (the rows), k and v (all
    members) go into :obj:`out` if given."""
    q, pos_q = _rows(x, lo, hi)
    out_q, out_k, out_v = (None, None, None) if out is None else out
    weight = alpha if keep is None else alpha * keep
    grad_weight = matmul(grad_theta, x.v.transpose(-1, -2))
    grad_v = matmul(weight.transpose(-1, -2), grad_theta, out_v)
    grad_alpha = grad_weight if keep is None else grad_weight.mul_(keep)
    # eta = -logsumexp: its gradient w.r.t. the logits is -alpha.
    grad_logit = torch._softmax_backward_data(grad_alpha, alpha, -1,
                                              alpha.dtype)
    grad_logit.sub_(alpha * grad_eta.unsqueeze(-1))
    scaled = grad_logit * scale
    grad_q = matmul(scaled, x.k, out_q)
    grad_k = matmul(scaled.transpose(-1, -2), q, out_k)
    grad_pos = None
    if pos_q is not None:
        per_pair = grad_logit if x.pos.size(0) == grad_logit.size(0) \
            else grad_logit.sum(0, keepdim=True)
        grad_pos = matmul(per_pair.transpose(-1, -2), pos_q)  # as keys
        as_query = matmul(per_pair, x.pos)
        if lo == 0 and hi == x.q.size(2):
            grad_pos = grad_pos + as_query
        else:
            grad_pos[:, :, lo:hi] += as_query
    grad_scale = None
    if want_scale:
        grad_scale = (grad_logit * matmul(q, x.k.transpose(-1, -2))).sum()
    return grad_q, grad_k, grad_v, grad_pos, grad_scale


def narrow_reference(x: NarrowInputs, scale: Scale,
                     weight_fn=None) -> Tuple[Tensor, Tensor, Tensor]:
    """The same by plain differentiable operations (for attention weights
    and second derivatives); returns :math:`\\vartheta`, :math:`\\eta` and
    the ``[H, F, W, W]`` weights. :obj:`weight_fn` (e.g. dropout) maps the
    weights before they meet the values."""
    width = x.q.size(2)
    allowed = allowed_keys(x.valid, x.loop, 0, width)
    logit = scale * (x.q @ x.k.transpose(-1, -2))
    if x.pos is not None:
        logit = logit + x.pos @ x.pos.transpose(-1, -2)
    if x.key_bias is not None:
        logit = logit + x.key_bias.unsqueeze(1)
    logit = logit.masked_fill(~allowed, torch.finfo(logit.dtype).min)
    lse = torch.logsumexp(logit, dim=-1)
    alpha = torch.where(allowed, (logit - lse.unsqueeze(-1)).exp(), 0.0)
    eta = torch.where(allowed.any(-1), -lse, 0.0)
    weight = alpha if weight_fn is None else weight_fn(alpha)
    return weight @ x.v, eta, alpha
