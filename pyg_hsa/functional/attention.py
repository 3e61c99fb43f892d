r"""Hierarchical Self-Attention on tensors: :func:`hsa_attention`.

The math and its derivation are in ``docs/hsa.md``; the notation below
follows it. The computation is split by responsibility:
:mod:`~pyg_hsa.functional.layout` (level order, buckets, tree sums),
:mod:`~pyg_hsa.functional.family_softmax` (attention inside families),
:mod:`~pyg_hsa.functional.dynamic_program` (the passes up and down) and
:mod:`~pyg_hsa.functional.dense` (the quadratic reference).
"""
import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from pyg_hsa.functional.checks import (
    TreeLike,
    as_tree,
    check_finite,
    check_inputs,
    check_options,
    under_torch_func,
)
from pyg_hsa.utils.checks import renamed_keyword
from pyg_hsa.functional.block_families import family_attention, family_plan
from pyg_hsa.functional.compiled import compiled_attention
from pyg_hsa.functional.flex import flex_query_attention, use_flex
from pyg_hsa.functional.dynamic_program import dynamic_program
from pyg_hsa.functional.layout import layout_of
from pyg_hsa.functional.query_resolved import query_resolved
from pyg_hsa.functional.variants import check_variant
from pyg_hsa.tree import Tree


def hsa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tree: TreeLike,
    *,
    pe: Optional[Tensor] = None,
    self_loops: bool = False,
    scale: Optional[float] = None,
    dropout: float = 0.0,
    return_attention_weights: bool = False,
    validate: bool = False,
    resolution: str = 'block',
    causal: bool = False,
    pos: Optional[Tensor] = None,
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
        pe (Tensor, optional): ``[M, P]`` (shared by heads) or ``[M, H, P]``
            position-in-family vectors of all nodes, in the tree's numbering;
            siblings :math:`A, B` add :math:`\langle \mathrm{pe}_A,
            \mathrm{pe}_B \rangle` to their logit. Roots' rows are unused.
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
            :obj:`pe` are finite, and raise a :class:`ValueError` naming the
            argument and its first row holding a NaN or an infinity. Off by
            default: the check reads every entry and, on a GPU, waits for
            it. (Shapes, dtypes and devices are always checked, and the tree
            when it is built.)
        resolution (str): :obj:`'block'` (the paper's HSA, above) or
            :obj:`'query'`: every leaf's own KL projection of its softmax
            row onto the blocks seen from it, :math:`\Theta_{ij} \propto
            \exp(\mathrm{scale}\langle q_i, \rho_k(B)\rangle +
            \langle e(A), e(B)\rangle)` for :math:`j` in a sibling
            :math:`B` of an ancestor :math:`A` of :math:`i` (see
            :mod:`~pyg_hsa.functional.query_resolved`). Never further from
            softmax attention in KL than :obj:`'block'`; cost
            :math:`O(N \sum_\ell b_\ell)`.
        causal (bool): attend only to the leaf itself and the blocks left
            of its path (a smaller first leaf index). Needs
            :obj:`resolution='query'` (block resolution would leak the
            future through the block's mean query) and
            :obj:`self_loops=True`. With every subtree's leaves numbered
            contiguously (sequences, windows), leaf :math:`i` sees exactly
            leaves :math:`j \le i`.
        pos (Tensor, optional): deprecated alias of :obj:`pe` (a
            :class:`FutureWarning`).

    Returns:
        ``[N, H, Cv]`` outputs (and the attention weights if requested).
    """
    pe = renamed_keyword(pe, pos, 'pe', 'pos', 'hsa_attention')
    tree = as_tree(tree, q)
    check_inputs(q, k, v, tree, pe)
    options = check_options(scale, dropout, self_loops,
                            return_attention_weights, validate, resolution,
                            causal)
    variant = check_variant(
        options.resolution, options.causal, self_loops=options.self_loops,
        dropout=options.dropout,
        return_attention_weights=options.return_attention_weights,
        positions=pe is not None)
    query = variant.resolution == 'query'
    scale = options.scale
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    if torch.compiler.is_compiling():
        if options.return_attention_weights or options.validate:
            raise ValueError("'return_attention_weights' and 'validate' are "
                             "not available under torch.compile; call "
                             "hsa_attention eagerly for them")
        return compiled_attention(tree, q, k, v, pe, scale,
                                  options.self_loops, options.dropout, query,
                                  options.causal)
    if options.validate:
        check_finite(q=q, k=k, v=v, pe=pe)
    return attend(tree, q, k, v, pe, scale, options.self_loops,
                  options.dropout, options.return_attention_weights,
                  query=query, causal=options.causal)


def attend(tree: Tree, q: Tensor, k: Tensor, v: Tensor,
           pe: Optional[Tensor], scale, self_loops: bool, dropout: float,
           need_weights: bool = False, seed: Optional[int] = None,
           query: bool = False, causal: bool = False):
    """:func:`hsa_attention` on checked arguments, eagerly."""
    out_dtype = q.dtype if q.dtype == k.dtype == v.dtype else \
        torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if query and not causal and tree.depth <= 1:
        # One level: every leaf's blocks are its single siblings (and
        # itself), so query resolution is block resolution, which runs a
        # wide family through the fused kernel.
        query = False
    if query:
        with torch.autocast(q.device.type, enabled=False):
            if use_flex(q, pe) and not under_torch_func(q, k, v):
                out = flex_query_attention(tree, q, k, v, scale, self_loops,
                                           causal)
            else:
                out = query_resolved(tree, q, k, v, None if pe is None else
                                     pe.to(dtype), scale, self_loops, causal)
        return out.to(out_dtype)
    plan = None if need_weights or dropout > 0 or under_torch_func(q, k, v) \
        else family_plan(tree, self_loops)
    if plan is not None:
        with torch.autocast(q.device.type, enabled=False):
            out = family_attention(plan, q, k, v, None if pe is None else
                                   pe.to(dtype), scale)
        return out.to(out_dtype)
    layout = layout_of(tree, self_loops)
    if pe is not None:  # to level order, heads first: [H or 1, M, P]
        pe = pe.to(dtype)[layout.perm]
        pe = pe.unsqueeze(0) if pe.dim() == 2 else pe.transpose(0, 1)

    # The whole dynamic program runs in `dtype`: autocast would otherwise
    # send its matrix products to half precision.
    with torch.autocast(q.device.type, enabled=False):
        out, weights = dynamic_program(layout, q, k, v, pe, self_loops,
                                       scale, dropout, need_weights, seed)
    out = out.to(out_dtype)
    if need_weights:
        edge_index, alpha = weights
        return out, (layout.perm[edge_index], alpha)
    return out
