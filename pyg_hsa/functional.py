r"""Hierarchical Self-Attention on tensors.

:func:`hsa_attention` is the exact linear-time dynamic program;
:func:`hsa_dense` builds the same attention matrix explicitly, in quadratic
time, by a separate route (lowest common ancestors of every leaf pair), as a
reference and for visualisation. See ``docs/hsa.md`` in the project's shared
folder for the derivation; the notation below follows it.
"""
import math
import numbers
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from pyg_hsa.tree import Tree

TreeLike = Union[Tree, Tensor]


def hsa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tree: TreeLike,
    *,
    pos: Optional[Tensor] = None,
    self_loops: bool = False,
    scale: Optional[float] = None,
    dropout: float = 0.0,
    return_attention_weights: bool = False,
    validate: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    r"""Hierarchical Self-Attention (Amizadeh et al., NeurIPS 2025).

    For leaves :math:`i`, returns :math:`\mathbf{o}_i = \sum_j \Theta_{ij}
    \mathbf{v}_j`, where :math:`\Theta` is the row-stochastic matrix that is
    constant on the sibling blocks of the tree and closest in KL divergence
    to softmax attention. With :math:`\rho` the mean over the leaves below a
    node, :math:`n(B)` the number of those leaves and, for siblings
    :math:`A \neq B`,

    .. math::
        s(A, B) = \mathrm{scale} \cdot \langle \rho_q(A), \rho_k(B) \rangle
        + \langle \mathbf{e}(A), \mathbf{e}(B) \rangle,

    the output telescopes along the path from a leaf to its root:

    .. math::
        \mathbf{o}_i = \sum_{A} W(A)\,(1 - \mu(A))\, \vartheta(A), \qquad
        \vartheta(A) = \sum_{B \in \mathrm{sib}(A)}
        \mathrm{softmax}_B\big(s(A, B) + \log n(B)\big)\, \rho_v(B),

    with :math:`\eta(A) = -\log \sum_{B \in \mathrm{sib}(A)} n(B)
    e^{s(A, B)}`, :math:`\varphi(P) = -\sum_{A \in \mathrm{chd}(P)}
    \frac{n(A)}{n(P)} \log(e^{-\varphi(A)} + e^{-\eta(A)})`
    (:math:`+\infty` at leaves), the gate :math:`\mu(A) =
    \sigma(\eta(A) - \varphi(A))` and :math:`W(A)` the product of the gates
    of the strict non-root ancestors of :math:`A`.

    The cost is :math:`O(\#\text{nodes} + \#\text{sibling pairs})` per head
    and channel, with one sequential step per depth level. Half-precision
    inputs are computed in float32 and cast back, so under autocast only
    the projections before and the cast after lose precision (tested:
    :class:`~pyg_hsa.nn.HSAConv` under CPU autocast stays within
    ``1e-2 * (1 + |out|)`` of float32 in float16, ``5e-2 * (1 + |out|)``
    in bfloat16). Logits of magnitude ``1e4`` and trees of depth 64 keep
    outputs and gradients finite.

    Args:
        q (Tensor): ``[N, H, C]`` leaf queries.
        k (Tensor): ``[N, H, C]`` leaf keys.
        v (Tensor): ``[N, H, Cv]`` leaf values.
        tree (Tree or LongTensor): a compiled :class:`~pyg_hsa.Tree`, or a
            parent vector of length ``M >= N`` (leaves ``0 .. N-1`` first,
            ``-1`` for roots), compiled on the fly.
        pos (Tensor, optional): ``[M, P]`` (shared by heads) or ``[M, H, P]``
            position-in-family vectors of all nodes, in the tree's numbering;
            siblings :math:`A, B` add :math:`\langle \mathrm{pos}_A,
            \mathrm{pos}_B \rangle` to their logit. Roots' rows are unused.
        self_loops (bool): every leaf also attends to itself, with logit
            :math:`\mathrm{scale}\langle q_i, k_i\rangle + \langle e_i,
            e_i\rangle`; a depth-1 tree then equals
            :func:`~torch.nn.functional.scaled_dot_product_attention`.
        scale (float or Tensor, optional): defaults to :math:`1/\sqrt{C}`;
            a one-element tensor (e.g. a learned temperature) gets a
            gradient.
        dropout (float): dropout probability on the per-family attention
            weights (training only; pass ``0.0`` in evaluation).
        return_attention_weights (bool): also return ``(edge_index, alpha)``:
            the sibling edges ``A -> B`` in the tree's numbering and their
            ``[E, H]`` softmax weights (summing to 1 over the edges that
            leave one node).
        validate (bool): also check that :obj:`q`, :obj:`k`, :obj:`v` and
            :obj:`pos` are finite, and raise a :class:`ValueError` naming the
            argument and its first row holding a NaN or an infinity. Off by
            default: the check reads every entry and, on a GPU, waits for
            it. (Shapes, dtypes and devices are always checked, and the tree
            when it is built.)

    Returns:
        ``[N, H, Cv]`` outputs (and the attention weights if requested).
    """
    tree = _as_tree(tree, q)
    _check_inputs(q, k, v, tree, pos)
    _check_options(scale, dropout)
    if validate:
        _check_finite(q=q, k=k, v=v, pos=pos)
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    out_dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype),
                                    v.dtype)
    dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if pos is not None:
        pos = pos.to(dtype)[tree.perm]

    # The whole dynamic program runs in `dtype`: autocast would otherwise
    # send its matrix products to half precision.
    with torch.autocast(q.device.type, enabled=False):
        out, weights = _dynamic_program(tree, q, k, v, pos, self_loops, scale,
                                        dropout, return_attention_weights)
    out = out.to(out_dtype)
    if return_attention_weights:
        return out, weights
    return out


def _dynamic_program(tree: Tree, q: Tensor, k: Tensor, v: Tensor,
                     pos: Optional[Tensor], self_loops: bool, scale: float,
                     dropout: float, need_weights: bool):
    """Spec section 4 on prepared inputs; returns the leaf outputs and, if
    requested, the sibling edges in the user's numbering with weights.

    Features are kept heads first, ``[H, n, C]``, throughout: the families
    of a level are then contiguous ``[H * F, W, C]`` batches for the matrix
    products, with no transposes (copies) around every one of them."""
    dtype, heads = q.dtype, q.size(1)
    # Everything below is a list with one tensor per depth level.
    sizes = tree.by_level(tree.size.to(dtype))  # [n_d]
    rho_q, rho_k, rho_v = (_pool_means(tree, x, sizes) for x in (q, k, v))
    if pos is not None:  # [1 or H, n_d, P]
        pos = tree.by_level(
            pos.unsqueeze(0) if pos.dim() == 2 else pos.transpose(0, 1),
            dim=1)
    # A node has siblings if its family has another member, or if it is a
    # leaf attending to itself; elsewhere eta = +inf and theta = 0.
    has_sibling = tree.by_level((tree.family_size > 1)
                                | (tree.is_leaf & self_loops))

    loops = tree.by_level(tree.is_leaf & self_loops)
    thetas, etas, weights = [], [], []
    for d in range(tree.depth + 1):
        theta, eta = _sibling_attention(
            tree, d, rho_q[d], rho_k[d], rho_v[d],
            None if pos is None else pos[d], sizes[d].log(), loops[d],
            self_loops, scale, dropout, weights if need_weights else None)
        thetas.append(theta)
        etas.append(eta)

    phis, phi_finite = _energy(tree, etas, has_sibling, sizes)
    log_mu, log_one_minus_mu = _gates(etas, has_sibling, phis, phi_finite)
    out = _accumulate_down(tree, thetas, log_mu, log_one_minus_mu)
    out = _UserRows.apply(tree, *out)
    if not need_weights:
        return out, None
    # (No edges at all where no node has a sibling.)
    edge_index = torch.cat([e for e, _ in weights] +
                           [tree.perm.new_zeros(2, 0)], dim=1)
    alpha = torch.cat([a for _, a in weights] +
                      [out.new_zeros(0, heads, dtype=dtype)])
    return out, (tree.perm[edge_index], alpha)


class _UserRows(torch.autograd.Function):
    """The leaves' rows of per-level ``[H, n_d, ...]`` tensors, in the
    user's ``[N, H, ...]`` order and layout (the inverse of
    :func:`_leaf_levels`, which is its backward)."""
    @staticmethod
    def forward(ctx, tree: Tree, *levels: Tensor) -> Tensor:
        ctx.tree = tree
        return _to_user_rows(tree, levels)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return (None, *_leaf_levels(ctx.tree, grad.transpose(0, 1)))


def _leaf_levels(tree: Tree, x: Tensor) -> List[Optional[Tensor]]:
    """Per depth, the contiguous ``[H, n_d, ...]`` rows of the leaves'
    :obj:`x` ``[H, N, ...]`` (any strides) at that depth (zeros for internal
    nodes), or ``None`` where there are none."""
    out = []
    for d, (pos, src, span) in enumerate(
            zip(tree.level_leaf_pos, tree.level_leaf_src,
                tree.level_leaf_span)):
        if span is not None:  # The whole level, in the user's order.
            out.append(_rows(x, *span).contiguous())
        elif src.numel() == 0:
            out.append(None)
        elif src.numel() == tree.level_sizes[d]:  # Only leaves, permuted.
            out.append(x.index_select(1, src))
        else:
            rows = x.new_zeros((x.size(0), tree.level_sizes[d]) +
                               x.shape[2:])
            out.append(rows.index_copy(1, pos, x.index_select(1, src)))
    return out


def _rows(x: Tensor, lo: int, hi: int) -> Tensor:
    """``x[:, lo:hi]``, or :obj:`x` itself when that is all of it (the
    backward of a slice writes a full-size zero tensor)."""
    return x if (lo, hi) == (0, x.size(1)) else x[:, lo:hi]


def _leaf_rows(tree: Tree, levels: List[Tensor]) -> Tensor:
    """Inverse of :func:`_leaf_levels`: the leaf rows ``[H, N, ...]`` in the
    user's order."""
    rows = [
        level if span is not None else level.index_select(1, pos)
        for level, pos, span in zip(levels, tree.level_leaf_pos,
                                    tree.level_leaf_span)
        if span is not None or pos.numel() > 0
    ]
    rows = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
    return rows if tree.leaf_order is None else rows.index_select(
        1, tree.leaf_order)


def _to_user_rows(tree: Tree, levels: List[Tensor]) -> Tensor:
    """:func:`_leaf_rows` in the user's ``[N, H, ...]`` layout, the
    transpose riding on the copy where all leaves share the deepest level.
    Always a new tensor (with one head or one leaf the layout change alone
    would be a view, and outputs must own their memory for in-place use)."""
    d, leaves = tree.depth, tree.level_leaf_src[-1]
    if leaves.numel() != tree.num_leaves:
        return _leaf_rows(tree, levels).transpose(0, 1).clone(
            memory_format=torch.contiguous_format)
    level = levels[d].transpose(0, 1)
    if tree.level_leaf_span[d] is not None:  # (then it is 0 .. N-1)
        return level.clone(memory_format=torch.contiguous_format)
    return level.new_empty(level.shape).index_copy_(0, leaves, level)


def _sum_children(tree: Tree, d: int, x: Tensor) -> Tensor:
    """Per node at depth :obj:`d`, the sum of its children's rows of
    :obj:`x` ``[H, n_{d+1}, ...]`` (zero for leaves)."""
    width = tree.level_width[d + 1]
    if width is not None:  # Every parent has `width` children in a row.
        return x.reshape((x.size(0), -1, width) + x.shape[2:]).sum(2)
    out = x.new_zeros((x.size(0), tree.level_sizes[d]) + x.shape[2:])
    return out.index_add(1, tree.level_parent[d], x)


def _pool_means(tree: Tree, x: Tensor,
                sizes: Tuple[Tensor, ...]) -> List[Tensor]:
    """Per depth, the mean ``[H, n_d, C]`` of the leaf rows of :obj:`x`
    ``[N, H, C]`` below every node (up pass, deepest level first; sums are
    pooled, then divided by the ``[n_d]`` leaf counts :obj:`sizes`)."""
    return list(_PoolMeans.apply(x, tree, sizes))


class _PoolMeans(torch.autograd.Function):
    """:func:`_pool_means`, heads first, with a backward pass that is
    itself one down pass (``grad(x) = sum over the ancestors A of
    grad(rho(A)) / n(A)``) instead of a broadcast, a copy and an add per
    level, and that writes the leaves' gradient in :obj:`x`'s layout."""
    @staticmethod
    def forward(ctx, x: Tensor, tree: Tree, sizes: Tuple[Tensor, ...]):
        ctx.tree, ctx.sizes = tree, sizes
        leaves = _leaf_levels(tree, x.transpose(0, 1))
        sums = [leaves[-1]]
        for d in range(tree.depth - 1, -1, -1):
            total = _sum_children(tree, d, sums[-1])
            # Leaves have no children (total = 0), internal nodes no rows.
            sums.append(total if leaves[d] is None else total + leaves[d])
        return tuple(
            total if d == tree.depth else total / sizes[d].unsqueeze(-1)
            for d, total in enumerate(sums[::-1]))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        # (Autograd passes zeros for outputs that were not used.)
        tree, sizes = ctx.tree, ctx.sizes
        below = None  # sum of grad(rho) / n over the ancestors so far
        levels = []
        for d, grad in enumerate(grads):
            if d < tree.depth:
                grad = grad / sizes[d].unsqueeze(-1)
            width = tree.level_width[d]
            if below is None:
                below = grad
            elif width is None:
                below = below.index_select(1, tree.level_parent[d - 1]) + grad
            elif d == tree.depth and tree.leaf_order is None and \
                    tree.level_leaf_span[d] == (0, tree.num_leaves) and \
                    not torch.is_grad_enabled():  # (out= is not recorded)
                # All leaves, in order: the add writes x's [N, H, C] layout.
                heads, parents = below.shape[:2]
                out = below.new_empty((tree.num_leaves, heads) +
                                      below.shape[2:])
                torch.add(grad.reshape((heads, parents, width) +
                                       below.shape[2:]),
                          below.unsqueeze(2),
                          out=out.view((parents, width, heads) +
                                       below.shape[2:]).permute(2, 0, 1, 3))
                return out, None, None
            else:
                shape = below.shape[:2] + (width, ) + below.shape[2:]
                below = (grad.reshape(shape) +
                         below.unsqueeze(2)).flatten(1, 2)
            levels.append(below)
        return _to_user_rows(tree, levels), None, None


def _sibling_attention(tree: Tree, d: int, rho_q: Tensor, rho_k: Tensor,
                       rho_v: Tensor, pos: Optional[Tensor],
                       log_size: Tensor, loop: Tensor, self_loops: bool,
                       scale: float, dropout: float,
                       weights: Optional[list]) -> Tuple[Tensor, Tensor]:
    r"""Softmax attention of every node at depth :obj:`d` over its family,
    each sibling :math:`B` a super-token of logit :math:`s(A, B) + \log
    n(B)`.

    Families are padded to power-of-two widths and run as batched dense
    attention, one bucket of equal width at a time. Returns
    :math:`\vartheta` ``[H, n_d, Cv]`` (or, on a level whose families are
    reshapes, the ``([H, F, W, W], [H, F, W, Cv])`` weights and values it is
    the product of) and :math:`\eta` ``[H, n_d]`` (a
    finite surrogate where a node has no sibling); appends the sibling edges
    (level order) and their ``[E, H]`` weights to :obj:`weights` if it is a
    list.
    """
    num_nodes = rho_q.size(1)
    offset = tree.level_ptr[d]
    buckets = tree.level_buckets[d]
    # Where every parent above has `width` children in a row, the down pass
    # multiplies the weights into the values itself (no theta is stored).
    defer = weights is None and d > 0 and tree.level_width[d] is not None
    whole = len(buckets) == 1 and buckets[0].span == (0, num_nodes)
    if whole:  # The level is its families, back to back: a reshape.
        indices = [torch.arange(num_nodes, device=rho_q.device).view(
            -1, buckets[0].width)]

        def blocks(x: Tensor) -> List[Tensor]:  # [H, F, W, ...] per bucket
            return [x.reshape((x.size(0), -1, buckets[0].width) +
                              x.shape[2:])]
    else:  # One gather into bucket order, then a view per bucket.
        indices = [bucket.index for bucket in buckets]

        def blocks(x: Tensor) -> List[Tensor]:
            parts = x.index_select(1, tree.level_bucket_order[d]).split(
                [index.numel() for index in indices], dim=1)
            return [
                part.reshape((x.size(0), ) + index.shape + x.shape[2:])
                for part, index in zip(parts, indices)
            ]

    ps = [None] * len(buckets) if pos is None else blocks(pos)
    parts = []
    for bucket, index, q, k, v, p in zip(buckets, indices, blocks(rho_q),
                                         blocks(rho_k), blocks(rho_v), ps):
        if bucket.width == 1 and not self_loops:
            parts.append(None)  # Lone nodes without self loops: no keys.
            continue
        args = (q, k, v, p, p, log_size[index].unsqueeze(1), bucket.valid,
                loop[index], scale, dropout)
        if weights is None:
            theta, eta = _family_softmax_blocks(*args, defer_values=defer)
            if not isinstance(theta, Tensor):  # (weights, values), deferred
                return theta, eta.flatten(1, 2)
        else:
            theta, eta, alpha, allowed = _family_softmax(
                *args, query_lo=0, with_weights=True)
            f, i, j = (allowed & bucket.valid.unsqueeze(-1)).nonzero().unbind(
                -1)
            weights.append((torch.stack([index[f, i], index[f, j]]) + offset,
                            alpha[:, f, i, j].t()))
        parts.append((theta.flatten(1, 2), eta.flatten(1, 2)))  # [H, F*W, .]

    if all(part is None for part in parts):
        # (Multiplying by zero keeps q, k and v in the autograd graph, with
        # zero gradients, even where no node has a sibling, e.g. in a
        # one-leaf tree.)
        return 0 * rho_v, 0 * (rho_q[..., 0] + rho_k[..., 0])
    if whole:
        return parts[0]
    # Back from bucket order (dropping the padding slots): one gather.
    heads, slot = rho_v.size(0), tree.level_bucket_slot[d]
    theta = torch.cat([
        rho_v.new_zeros((heads, index.numel(), rho_v.size(2)))
        if part is None else part[0] for part, index in zip(parts, indices)
    ], dim=1)
    eta = torch.cat([
        rho_v.new_zeros((heads, index.numel())) if part is None else part[1]
        for part, index in zip(parts, indices)
    ], dim=1)
    return theta.index_select(1, slot), eta.index_select(1, slot)


# Wide families are processed a block of queries at a time, each block
# recomputed in the backward pass, so that a family of b members never holds
# its b x b logits at once: a block's logits have at most this many entries,
# or as many as the bucket's values where that is more (so families no wider
# than the channels are never split: their logits are smaller than q).
FAMILY_BLOCK_ENTRIES = 1 << 24


def _family_softmax_blocks(q: Tensor, k: Tensor, v: Tensor,
                           p_query: Optional[Tensor], p_key: Optional[Tensor],
                           key_bias: Tensor, valid: Tensor, loop: Tensor,
                           scale: float, dropout: float,
                           defer_values: bool = False):
    """:func:`_family_softmax` over blocks of queries when the bucket's
    logits would exceed :obj:`FAMILY_BLOCK_ENTRIES` and its values' size
    (rows are independent, so the result is the same). With
    :obj:`defer_values`, a bucket that fits in one block returns
    ``((weight, v), eta)`` instead of ``(theta, eta)``."""
    heads, num_families, width = q.size(0), q.size(1), q.size(2)
    rows = max(FAMILY_BLOCK_ENTRIES // (num_families * heads * width),
               q.size(3), v.size(3), 1)
    if rows >= width:
        theta, eta = _family_softmax(q, k, v, p_query, p_key, key_bias, valid,
                                     loop, scale, dropout, query_lo=0,
                                     with_values=not defer_values)
        return ((theta, v) if defer_values else theta), eta
    thetas, etas = [], []
    for lo in range(0, width, rows):  # loop over query blocks
        hi = min(lo + rows, width)
        block = (q[:, :, lo:hi], k, v,
                 None if p_query is None else p_query[:, :, lo:hi], p_key,
                 key_bias, valid, loop[:, lo:hi], scale, dropout, lo)
        if torch.is_grad_enabled():
            theta, eta = torch.utils.checkpoint.checkpoint(
                _family_softmax, *block, use_reentrant=False)
        else:
            theta, eta = _family_softmax(*block)
        thetas.append(theta)
        etas.append(eta)
    return torch.cat(thetas, dim=2), torch.cat(etas, dim=2)


def _family_softmax(q: Tensor, k: Tensor, v: Tensor,
                    p_query: Optional[Tensor], p_key: Optional[Tensor],
                    key_bias: Tensor, valid: Tensor, loop: Tensor,
                    scale: float, dropout: float, query_lo: int,
                    with_weights: bool = False, with_values: bool = True):
    r"""Softmax attention of queries ``q [H, F, Wq, C]`` (slots
    ``query_lo ..`` of their families) over all members ``k, v [H, F, W,
    .]`` of their family: logit ``scale <q, k> + <p_query, p_key> +
    key_bias``, positions ``[H or 1, F, Wq or W, P]`` (or :obj:`None`),
    :obj:`key_bias` ``[F, 1, W]``; :obj:`valid` ``[F, W]`` marks real
    members, :obj:`loop` ``[F, Wq]`` queries that may attend to themselves.
    Returns :math:`\vartheta` ``[H, F, Wq, Cv]``, :math:`\eta` ``[H, F,
    Wq]`` and, with :obj:`with_weights`, the weights and the ``[F, Wq, W]``
    mask of allowed keys. Without :obj:`with_values`, the (dropped-out)
    weights ``[H, F, Wq, W]`` take :math:`\vartheta`'s place."""
    # Keys: real members other than the query (or the query itself for a
    # leaf with a self loop).
    width = k.size(2)
    query = torch.arange(query_lo, query_lo + q.size(2), device=q.device)
    is_self = query.unsqueeze(-1) == torch.arange(width, device=q.device)
    allowed = valid.unsqueeze(1) & (~is_self | loop.unsqueeze(-1))
    if isinstance(scale, Tensor):
        scale = scale.to(q.dtype).reshape(())
    alpha, eta = _FamilySoftmax.apply(q, k, p_query, p_key, key_bias,
                                      allowed, scale)
    weight = F.dropout(alpha, p=dropout) if dropout > 0 else alpha
    if not with_values:
        return weight, eta
    theta = weight @ v
    if with_weights:
        return theta, eta, alpha, allowed
    return theta, eta


class _FamilySoftmax(torch.autograd.Function):
    r"""Per family, the weights :math:`\alpha` ``[H, F, Wq, W]`` =
    softmax over the allowed keys of ``scale <q, k> + <p_query, p_key> +
    key_bias`` and :math:`\eta = -\log\sum \exp` ``[H, F, Wq]``
    (arguments as in :func:`_family_softmax`; ``allowed`` ``[F, Wq, W]``).

    The forward pass works in place on one logits buffer and the backward
    pass needs only :math:`\alpha`: :math:`\partial\ell / \partial
    \mathrm{logit} = \alpha \odot (g_\alpha - \langle g_\alpha,
    \alpha\rangle - g_\eta)`. Disallowed keys get a finite fill and an
    exact zero weight, so rows without keys (and their gradients) stay
    finite."""
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, p_query: Optional[Tensor],
                p_key: Optional[Tensor], key_bias: Tensor, allowed: Tensor,
                scale: Union[float, Tensor]) -> Tuple[Tensor, Tensor]:
        logit = (q @ k.transpose(-1, -2)).mul_(scale)
        if p_key is not None:
            logit.add_(p_query @ p_key.transpose(-1, -2))
        logit.add_(key_bias).masked_fill_(~allowed,
                                          torch.finfo(logit.dtype).min)
        logit_max = logit.amax(dim=-1, keepdim=True)
        alpha = logit.sub_(logit_max).exp_().mul_(allowed)
        total = alpha.sum(dim=-1, keepdim=True)
        total = torch.where(total > 0, total, 1.0)
        alpha.div_(total)
        eta = (total.log_() + logit_max).squeeze(-1).neg_()
        learned = isinstance(scale, Tensor)  # saved, so in-place edits
        ctx.scale = None if learned else scale  # are caught by autograd
        ctx.save_for_backward(q, k, p_query, p_key, alpha,
                              scale if learned else None)
        return alpha, eta

    @staticmethod
    def backward(ctx, grad_alpha: Tensor, grad_eta: Tensor):
        q, k, p_query, p_key, alpha, learned = ctx.saved_tensors
        scale = ctx.scale if learned is None else learned
        grad_logit = alpha * (grad_alpha - grad_eta.unsqueeze(-1) - (
            grad_alpha * alpha).sum(dim=-1, keepdim=True))
        grads = [None] * 7
        scaled = grad_logit * scale
        if ctx.needs_input_grad[0]:
            grads[0] = scaled @ k
        if ctx.needs_input_grad[1]:
            grads[1] = scaled.transpose(-1, -2) @ q
        if p_key is not None and any(ctx.needs_input_grad[2:4]):
            per_pair = grad_logit if p_key.size(0) == grad_logit.size(0) \
                else grad_logit.sum(0, keepdim=True)
            grads[2] = per_pair @ p_key
            grads[3] = per_pair.transpose(-1, -2) @ p_query
        if ctx.needs_input_grad[6]:
            grads[6] = (grad_logit * (q @ k.transpose(-1, -2))).sum()
        return tuple(grads)


def _energy(tree: Tree, etas: List[Tensor], has_sibling: List[Tensor],
            sizes: Tuple[Tensor, ...]) -> Tuple[List[Tensor], List[Tensor]]:
    r"""The energy :math:`\varphi` ``[H, n_d]`` per depth (up pass) as a
    finite surrogate plus an ``[n_d]`` mask of where it is finite (it is
    :math:`+\infty` at leaves and above chains of only children ending in a
    leaf)."""
    leaves = tree.by_level(tree.is_leaf)
    phi_levels = [torch.zeros_like(etas[-1])]
    finite_levels = [torch.zeros_like(has_sibling[-1])]
    for d in range(tree.depth - 1, -1, -1):
        phi_c, fin_c = phi_levels[-1], finite_levels[-1]
        eta_c, sib_c = etas[d + 1], has_sibling[d + 1]
        # -log(exp(-phi) + exp(-eta)) with the infinite cases spelled out,
        # so that no inf - inf is ever formed (forward or backward).
        both = -torch.logaddexp(-torch.where(fin_c, phi_c, 0.0),
                                -torch.where(sib_c, eta_c, 0.0))
        term = torch.where(fin_c & sib_c, both,
                           torch.where(fin_c, phi_c, eta_c))
        total = _sum_children(tree, d, term * sizes[d + 1])
        infinite = (~fin_c & ~sib_c).to(term.dtype).unsqueeze(0)
        num_infinite = _sum_children(tree, d, infinite)[0]
        finite = ~leaves[d] & (num_infinite == 0)
        phi_levels.append(torch.where(finite, total / sizes[d], 0.0))
        finite_levels.append(finite)
    return phi_levels[::-1], finite_levels[::-1]


def _gates(etas: List[Tensor], has_sibling: List[Tensor],
           phis: List[Tensor], phi_finite: List[Tensor]
           ) -> Tuple[List[Tensor], List[Tensor]]:
    r"""Per depth, :math:`\log\mu` and :math:`\log(1-\mu)` ``[H, n_d]``
    with :math:`\mu = \sigma(\eta - \varphi)`; :math:`\mu = 1` where only
    :math:`\eta` is infinite, :math:`\mu = 0` where :math:`\varphi` is.
    Roots get :math:`\log\mu = 0` so that :math:`W = 1` under a root."""
    log_mu, log_one_minus_mu = [], []
    for d, (eta, sib, phi, fin) in enumerate(
            zip(etas, has_sibling, phis, phi_finite)):
        diff = torch.where(fin & sib, eta - phi, 0.0)
        log_mu.append(
            torch.where(fin, torch.where(sib, F.logsigmoid(diff), 0.0),
                        -math.inf) if d > 0 else torch.zeros_like(eta))
        log_one_minus_mu.append(
            torch.where(fin, torch.where(sib, F.logsigmoid(-diff),
                                         -math.inf), 0.0))
    return log_mu, log_one_minus_mu


def _accumulate_down(tree: Tree, thetas: List[Tensor], log_mu: List[Tensor],
                     log_one_minus_mu: List[Tensor]) -> List[Tensor]:
    r"""Down pass: :math:`\log W(A) = \log W(\mathrm{pa}(A)) +
    \log\mu(\mathrm{pa}(A))` and :math:`\mathrm{acc}(A) =
    \mathrm{acc}(\mathrm{pa}(A)) + W(A)(1-\mu(A))\vartheta(A)`, per depth
    ``[H, n_d, Cv]``."""
    log_w = torch.zeros_like(log_mu[0])  # W = 1 at the roots
    acc = (log_w + log_one_minus_mu[0]).exp().unsqueeze(-1) * thetas[0]
    acc_levels = [acc]
    for d in range(1, tree.depth + 1):
        width = tree.level_width[d]
        log_w = log_w + log_mu[d - 1]
        if width is not None:  # Broadcast each parent over its children.
            log_w = log_w.unsqueeze(2).expand(-1, -1, width).flatten(1, 2)
            gain = (log_w + log_one_minus_mu[d]).exp()
            if isinstance(thetas[d], Tensor):
                acc = (acc.unsqueeze(2) +
                       (gain.unsqueeze(-1) * thetas[d]).view(
                           (acc.size(0), -1, width, acc.size(2))))
            else:  # (weights, values), deferred by _sibling_attention
                weight, value = thetas[d]
                acc = _GatedValues.apply(acc, gain.view(weight.shape[:3]),
                                         weight, value)
            acc = acc.flatten(1, 2)
        else:
            par = tree.level_parent[d - 1]
            log_w = log_w.index_select(1, par)
            gain = (log_w + log_one_minus_mu[d]).exp().unsqueeze(-1)
            acc = acc.index_select(1, par) + gain * thetas[d]
        acc_levels.append(acc)
    return acc_levels


class _GatedValues(torch.autograd.Function):
    r"""One step of the down pass on a level of equal families: ``acc[:,
    f] + gain * (weight @ v)`` for parents' ``acc`` ``[H, F, Cv]``, the
    children's ``gain`` :math:`W(A)(1 - \mu(A))` ``[H, F, W]``, family
    weights ``[H, F, W, W]`` and values ``[H, F, W, Cv]``.

    Autograd would store :math:`\vartheta` = ``weight @ v`` and form
    ``grad * gain`` and ``grad * theta`` at full size; here
    :math:`\vartheta` is never stored, and the gradients go through the
    small ``[H, F, W, W]`` product ``grad @ v^T`` instead."""
    @staticmethod
    def forward(ctx, acc: Tensor, gain: Tensor, weight: Tensor,
                v: Tensor) -> Tensor:
        ctx.save_for_backward(gain, weight, v)
        out = weight @ v
        return out.mul_(gain.unsqueeze(-1)).add_(acc.unsqueeze(2))

    @staticmethod
    def backward(ctx, grad: Tensor):
        gain, weight, v = ctx.saved_tensors
        grad = grad.contiguous()
        grad_values = grad @ v.transpose(-1, -2)  # <grad_i, v_j>
        grad_gain = (grad_values * weight).sum(-1)
        grad_weight = grad_values * gain.unsqueeze(-1)
        grad_v = (weight * gain.unsqueeze(-1)).transpose(-1, -2) @ grad
        return grad.sum(2), grad_gain, grad_weight, grad_v


def hsa_dense(
    q: Tensor,
    k: Tensor,
    tree: TreeLike,
    *,
    pos: Optional[Tensor] = None,
    self_loops: bool = False,
    scale: Optional[float] = None,
    validate: bool = False,
) -> Tensor:
    r"""The explicit ``[H, N, N]`` HSA attention matrix :math:`\Theta`.

    For leaves :math:`i \neq j` with lowest common ancestor :math:`C`, and
    :math:`A', B'` the children of :math:`C` above :math:`i` and :math:`j`,

    .. math::
        \Theta_{ij} = W(A') \frac{\exp s(A', B')}{e^{-\varphi(A')} +
        e^{-\eta(A')}},

    and :math:`\Theta_{ij} = 0` for leaves of different roots. With
    :obj:`self_loops`, :math:`\Theta_{ii} = W(i)\, e^{s(i, i) + \eta(i)}`.
    Built from the leaf-pair ancestry in :math:`O(N^2)` memory, independently
    of :func:`hsa_attention` (its reference), e.g. for plots. The
    arguments are those of :func:`hsa_attention`; :obj:`validate` checks
    :obj:`q`, :obj:`k` and :obj:`pos` for NaN and infinity.
    """
    tree = _as_tree(tree, q)
    _check_inputs(q, k, None, tree, pos)
    _check_options(scale, 0.0)
    if validate:
        _check_finite(q=q, k=k, pos=pos)
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k = q.to(dtype), k.to(dtype)
    parent, num_leaves = tree.parent, tree.num_leaves
    num_nodes, device = parent.numel(), parent.device
    inf = math.inf

    # ancestors[t, x]: the t-th ancestor of node x (x itself at t = 0).
    ancestors = [torch.arange(num_nodes, device=device)]
    while bool((ancestors[-1] >= 0).any()):
        a = ancestors[-1]
        ancestors.append(torch.where(a >= 0, parent[a.clamp(min=0)], -1))
    ancestors = torch.stack(ancestors[:-1])  # [T, M]
    depth = (ancestors >= 0).sum(0) - 1

    # below[A, i] = 1 if leaf i lies below (or is) node A.
    below = torch.zeros(num_nodes, num_leaves, dtype=dtype, device=device)
    leaf_anc = ancestors[:, :num_leaves]
    cols = torch.arange(num_leaves, device=device).expand_as(leaf_anc)
    valid = leaf_anc >= 0
    below[leaf_anc[valid], cols[valid]] = 1.0
    size = below.sum(1)
    rho_q = torch.einsum('mi,ihc->mhc', below, q) / size.view(-1, 1, 1)
    rho_k = torch.einsum('mi,ihc->mhc', below, k) / size.view(-1, 1, 1)

    logit = scale * torch.einsum('ahc,bhc->hab', rho_q, rho_k)
    if pos is not None:
        pos = pos.to(dtype)
        if pos.dim() == 2:
            logit = logit + (pos @ pos.t()).unsqueeze(0)
        else:
            logit = logit + torch.einsum('ahp,bhp->hab', pos, pos)

    siblings = (parent.view(-1, 1) == parent.view(1, -1)) & \
        (parent.view(-1, 1) >= 0)
    siblings.fill_diagonal_(False)
    if self_loops:
        idx = torch.arange(num_leaves, device=device)
        siblings[idx, idx] = True
    # +inf values are kept as finite stand-ins plus masks (eta is infinite
    # where there is no sibling, phi where phi_finite is False), so that the
    # backward pass never differentiates inf - inf.
    has_sibling = siblings.any(-1)  # [M]
    masked = torch.where(siblings, logit + size.log(),
                         torch.finfo(dtype).min)
    eta = torch.where(has_sibling, -torch.logsumexp(masked, dim=-1), 0.0)

    # phi, one sweep per depth from the deepest internal nodes upwards.
    child_w = torch.where(parent.view(1, -1) == torch.arange(
        num_nodes, device=device).view(-1, 1), size.view(1, -1) /
                          size.view(-1, 1), 0.0)  # [P, A]
    is_leaf = torch.arange(num_nodes, device=device) < num_leaves
    phi = torch.zeros_like(eta)
    phi_finite = torch.zeros_like(is_leaf)
    for _ in range(int(depth.max())):
        # -log(e^-phi(A) + e^-eta(A)); +inf when both are.
        term = torch.where(phi_finite & has_sibling,
                           -torch.logaddexp(-phi, -eta),
                           torch.where(phi_finite, phi, eta))
        infinite = ~phi_finite & ~has_sibling
        summed = (child_w * term.unsqueeze(1)).sum(-1)
        phi_finite = ~is_leaf & ~((child_w > 0) & infinite).any(-1)
        phi = torch.where(phi_finite, summed, 0.0)

    # mu = sigmoid(eta - phi): 1 where only eta is infinite, 0 where phi is.
    log_mu = torch.where(
        phi_finite,
        torch.where(has_sibling, F.logsigmoid(eta - phi), 0.0), -inf)
    # log W(A): sum of log mu over the strict ancestors of A except the root.
    log_w = torch.zeros_like(eta)
    for t in range(1, ancestors.size(0)):
        a = ancestors[t]
        counts = (a >= 0) & (parent[a.clamp(min=0)] >= 0)
        log_w = log_w + torch.where(counts, log_mu[:, a.clamp(min=0)], 0.0)
    # log(e^-phi + e^-eta), only used where eta is finite.
    log_norm = torch.where(phi_finite & has_sibling,
                           torch.logaddexp(-phi, -eta), -eta)

    # Lowest common ancestor of every leaf pair from the root-first paths.
    root_first = torch.full((int(depth.max()) + 1, num_leaves), -1,
                            device=device, dtype=torch.long)
    leaf_depth = depth[:num_leaves]
    for t in range(ancestors.size(0)):
        ok = t <= leaf_depth
        level = (leaf_depth - t).clamp(min=0)
        root_first[level[ok], cols[0][ok]] = ancestors[t, :num_leaves][ok]
    same = (root_first.unsqueeze(2) == root_first.unsqueeze(1)) & \
        (root_first.unsqueeze(2) >= 0)  # [D, N, N]
    shared = same.long().cumprod(0).sum(0)  # length of the common path
    below_lca = shared.clamp(max=root_first.size(0) - 1)
    a = root_first.t().gather(1, below_lca)  # A'[i, j] = branch of i
    b = root_first.gather(0, below_lca)  # B'[i, j] = branch of j
    a, b = a.clamp(min=0), b.clamp(min=0)
    heads = torch.arange(q.size(1), device=device).view(-1, 1, 1)
    log_theta = (log_w[heads, a] + logit[heads, a, b] - log_norm[heads, a])
    pair_ok = (shared > 0) & ~torch.eye(num_leaves, dtype=torch.bool,
                                        device=device)
    theta = torch.where(pair_ok, log_theta.exp(), 0.0)
    if self_loops:
        i = torch.arange(num_leaves, device=device)
        diag = (log_w[:, i] + logit[:, i, i] + eta[:, i]).exp()
        theta[:, i, i] = diag
    return theta


def _as_tree(tree: TreeLike, q: Tensor) -> Tree:
    if isinstance(tree, Tree):
        return tree
    if isinstance(tree, Tensor):
        if not isinstance(q, Tensor) or q.dim() < 1:
            raise TypeError("'q' must be a tensor of shape [N, H, C]")
        return Tree.for_rows(tree, q.size(0), 'q')
    raise TypeError(f"'tree' must be a pyg_hsa.Tree or a parent LongTensor "
                    f"(got {type(tree).__name__})")


def _check_inputs(q: Tensor, k: Tensor, v: Optional[Tensor], tree: Tree,
                  pos: Optional[Tensor]) -> None:
    named = [('q', q), ('k', k)] + ([('v', v)] if v is not None else [])
    for name, x in named + ([('pos', pos)] if pos is not None else []):
        if not isinstance(x, Tensor):
            raise TypeError(f"'{name}' must be a tensor "
                            f"(got {type(x).__name__})")
        check_float_on_tree(x, f"'{name}'", tree)
    for name, x in named:
        if x.dim() != 3:
            raise ValueError(f"'{name}' must have shape [N, H, C] "
                             f"(got {tuple(x.shape)})")
        if x.size(1) == 0 or x.size(2) == 0:
            raise ValueError(f"'{name}' must have at least one head and one "
                             f"channel (got shape {tuple(x.shape)})")
        if x.size(0) != tree.num_leaves:
            raise ValueError(f"'{name}' has {x.size(0)} rows but the tree has "
                             f"{tree.num_leaves} leaves")
    if q.shape != k.shape:
        raise ValueError(f"'q' and 'k' must have the same shape "
                         f"(got {tuple(q.shape)} and {tuple(k.shape)})")
    if v is not None and v.size(1) != q.size(1):
        raise ValueError(f"'v' has {v.size(1)} heads but 'q' has {q.size(1)}")
    if pos is not None:
        if pos.dim() not in (2, 3) or pos.size(0) != tree.num_nodes:
            raise ValueError(f"'pos' must have shape [M, P] or [M, H, P] with "
                             f"M = {tree.num_nodes} tree nodes (got "
                             f"{tuple(pos.shape)})")
        if pos.dim() == 3 and pos.size(1) != q.size(1):
            raise ValueError(f"'pos' has {pos.size(1)} heads but 'q' has "
                             f"{q.size(1)}")


def check_float_on_tree(x: Tensor, name: str, tree: Tree,
                        hint: str = '') -> None:
    """Input :obj:`x` (called :obj:`name` in messages) is floating point
    and on the tree's device."""
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (got "
                        f"{x.dtype}){hint}")
    if x.device != tree.device:
        raise ValueError(f"{name} is on {x.device} but the tree is on "
                         f"{tree.device}; move one with .to()")


def _check_options(scale, dropout) -> None:
    # (A one-element tensor scale, e.g. a learned temperature, is taken as
    # it is and differentiated.)
    if isinstance(scale, Tensor) and scale.numel() != 1:
        raise ValueError(f"'scale' must be a number or a one-element tensor "
                         f"(got a tensor of shape {tuple(scale.shape)})")
    if scale is not None and not isinstance(scale, Tensor):
        if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
            raise TypeError(f"'scale' must be a number or None "
                            f"(got {type(scale).__name__})")
        if not math.isfinite(scale):
            raise ValueError(f"'scale' must be finite (got {scale})")
    if not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"'dropout' must lie in [0, 1) (got {dropout!r})")


def _non_finite_row(x: Tensor) -> Optional[Tuple[int, float]]:
    """The first row of :obj:`x` holding a NaN or an infinity and that
    value, or :obj:`None` if :obj:`x` is finite (one synchronisation)."""
    finite = torch.isfinite(x.detach())
    if finite.dim() > 1:
        finite = finite.flatten(1).all(1)
    if bool(finite.all()):
        return None
    row = int((~finite).nonzero()[0])
    values = x.detach()[row].reshape(-1)
    return row, float(values[~torch.isfinite(values)][0])


def _check_finite(**tensors: Optional[Tensor]) -> None:
    for name, x in tensors.items():
        bad = None if x is None else _non_finite_row(x)
        if bad is not None:
            raise ValueError(f"'{name}' has a non-finite value ({bad[1]}) at "
                             f"row {bad[0]}; expected finite values")
