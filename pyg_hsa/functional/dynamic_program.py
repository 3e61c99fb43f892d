r"""The dynamic program of HSA on prepared tensors (see ``docs/hsa.md``).

All steps are vectorised over every node of every tree in the batch, with
one loop step per depth level at most:

1. **up:** the means :math:`\rho_q, \rho_k, \rho_v` below every node
   (:class:`~pyg_hsa.functional.tree_sums.SubtreeSums`);
2. **siblings:** softmax attention inside every family, all levels at
   once, one call per bucket of families
   (:func:`~pyg_hsa.functional.siblings.sibling_attention`):
   :math:`\vartheta` and :math:`\eta`;
3. **energy:** :math:`\varphi`, level by level from the leaves up;
4. **gates:** :math:`\mu = \sigma(\eta - \varphi)` and the weight
   :math:`W(A)(1 - \mu(A))` of every node, level by level down;
5. **down:** every leaf sums :math:`W(1 - \mu)\vartheta` over its root
   path (:class:`~pyg_hsa.functional.tree_sums.GatedPathSums`).

Infinite :math:`\eta` (no sibling) and :math:`\varphi` (leaves, and nodes
above chains of only children ending in a leaf) are kept as finite
stand-ins plus masks, so no step ever forms ``inf - inf``, forward or
backward.
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_hsa.functional.layout import Layout
from pyg_hsa.functional.level_ops import from_parents, sum_children
from pyg_hsa.functional.siblings import sibling_attention
from pyg_hsa.functional.tree_sums import GatedPathSums, SubtreeSums

Weights = Optional[Tuple[Tensor, Tensor]]


def dynamic_program(layout: Layout, q: Tensor, k: Tensor, v: Tensor,
                    pos: Optional[Tensor], self_loops: bool, scale,
                    dropout: float, need_weights: bool,
                    seed: Optional[int] = None) -> Tuple[Tensor, Weights]:
    """HSA's output ``[N, H, Cv]`` for leaf queries, keys and values ``[N,
    H, C]`` in the user's layout and positions ``[H or 1, M, P]`` in level
    order; with :obj:`need_weights` also the sibling edges (level order)
    and their ``[E, H]`` weights."""
    size = layout.size.to(q.dtype)
    # The means below every node, stacked [3, H, M, C] (or [2, H, M, C] and
    # [1, H, M, Cv]), so that each step moves all three at once.
    if v.size(-1) == q.size(-1):
        stacks = (SubtreeSums.apply(layout, True, q, k, v), )
    else:
        stacks = (SubtreeSums.apply(layout, True, q, k),
                  SubtreeSums.apply(layout, True, v))
    has_sibling = (layout.family_size > 1) | (layout.is_leaf & self_loops)
    theta, eta, weights = sibling_attention(layout, stacks, pos, self_loops,
                                            scale, dropout, need_weights,
                                            seed)
    gain = node_gains(layout, eta, has_sibling, size)
    return GatedPathSums.apply(layout, theta, gain), weights


# Energy, gates, weights ###################################################


def node_gains(layout: Layout, eta: Tensor, has_sibling: Tensor,
               size: Tensor) -> Tensor:
    r"""The weight :math:`W(A)(1 - \mu(A))` of every node's
    :math:`\vartheta(A)` in the outputs of the leaves below it, ``[H,
    M]``."""
    etas = layout.by_level(eta, dim=1)
    siblings = layout.by_level(has_sibling)
    sizes = layout.by_level(size)
    leaves = layout.by_level(layout.is_leaf)
    depth = layout.depth

    # Energy phi, deepest level first (+inf at leaves: finite = False).
    # Roots need none.
    phis: List[Optional[Tensor]] = [None] * (depth + 1)
    finite: List[Optional[Tensor]] = [None] * (depth + 1)
    phis[depth] = torch.zeros_like(etas[depth])
    finite[depth] = torch.zeros_like(leaves[depth])
    for d in range(depth, 1, -1):  # children at level d, parents at d - 1
        phi, fin, eta_d, sib = phis[d], finite[d], etas[d], siblings[d]
        # -log(exp(-phi) + exp(-eta)), the infinite cases spelled out.
        both = -torch.logaddexp(-torch.where(fin, phi, 0.0),
                                -torch.where(sib, eta_d, 0.0))
        term = torch.where(fin & sib, both, torch.where(fin, phi, eta_d))
        total = sum_children(layout, d, term * sizes[d])
        infinite = (~fin & ~sib).to(term.dtype).unsqueeze(0)
        has_infinite = sum_children(layout, d, infinite)[0] > 0
        finite[d - 1] = ~leaves[d - 1] & ~has_infinite
        phis[d - 1] = torch.where(finite[d - 1], total / sizes[d - 1], 0.0)

    # Gates and weights, shallowest level first. W = 1 under a root.
    gains = []
    log_w = log_mu = None  # of the level above
    for d in range(depth + 1):
        sib = siblings[d]
        if d == 0:  # W = 1; only a leaf attending to itself has siblings
            gains.append(sib.to(etas[0].dtype).expand_as(etas[0]))
            continue
        fin = finite[d]
        diff = torch.where(fin & sib, etas[d] - phis[d], 0.0)
        # log(1 - mu): 0 where phi = +inf (mu = 0), -inf without siblings.
        log_out = torch.where(fin, torch.where(sib, F.logsigmoid(-diff),
                                               -math.inf), 0.0)
        if d == 1:
            log_w = torch.zeros_like(etas[1])
        else:
            log_w = from_parents(layout, d, log_w + log_mu)
        gains.append((log_w + log_out).exp())
        # log mu: 0 without siblings (mu = 1), -inf where phi = +inf.
        log_mu = torch.where(fin, torch.where(sib, F.logsigmoid(diff), 0.0),
                             -math.inf)
    return torch.cat(gains, 1)
