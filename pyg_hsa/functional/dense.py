r"""The explicit HSA attention matrix, built by a separate route from the
dynamic program: lowest common ancestors of every leaf pair, in quadratic
memory. It is the reference :func:`~pyg_hsa.hsa_attention` is tested
against, and serves plots."""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_hsa import topology
from pyg_hsa.functional.checks import (
    TreeLike,
    as_tree,
    check_finite,
    check_inputs,
    check_options,
)
from pyg_hsa.functional.variants import check_variant
from pyg_hsa.utils.checks import renamed_keyword


def hsa_dense(
    q: Tensor,
    k: Tensor,
    tree: TreeLike,
    *,
    pe: Optional[Tensor] = None,
    self_loops: bool = False,
    scale: Optional[float] = None,
    validate: bool = False,
    resolution: str = 'block',
    causal: bool = False,
    pos: Optional[Tensor] = None,
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
    :obj:`q`, :obj:`k` and :obj:`pe` for NaN and infinity.

    With :obj:`resolution='query'`, row :math:`i` is its own projection:
    :math:`\Theta_{ij} \propto \exp(\mathrm{scale} \langle q_i,
    \rho_k(B') \rangle + \langle e(A'), e(B') \rangle)`, and with
    :obj:`causal` only for :math:`B'` left of :math:`A'` (a smaller first
    leaf) and :math:`j = i`. :obj:`pos` is a deprecated alias of
    :obj:`pe` (a :class:`FutureWarning`).
    """
    pe = renamed_keyword(pe, pos, 'pe', 'pos', 'hsa_dense')
    tree = as_tree(tree, q)
    check_inputs(q, k, None, tree, pe)
    options = check_options(scale, 0.0, self_loops, False, validate,
                            resolution, causal)
    scale, self_loops, causal = options.scale, options.self_loops, \
        options.causal
    query = check_variant(resolution, causal, self_loops=self_loops,
                          positions=pe is not None).resolution == 'query'
    if options.validate:
        check_finite(q=q, k=k, pe=pe)
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k = q.to(dtype), k.to(dtype)
    parent, num_leaves = tree.parent, tree.num_leaves
    num_nodes, device = parent.numel(), parent.device
    inf = math.inf

    # ancestors[t, x]: the t-th ancestor of node x (x itself at t = 0).
    ancestors = topology.ancestors(parent)  # [T, M]
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

    branch_a, branch_b, pair_ok = _branches(ancestors, depth, num_leaves)
    if query:
        return _query_resolved(q, k, rho_k, pe, scale, branch_a, branch_b,
                               pair_ok, below, self_loops, causal)
    logit = scale * torch.einsum('ahc,bhc->hab', rho_q, rho_k)
    if pe is not None:
        pe = pe.to(dtype)
        if pe.dim() == 2:
            logit = logit + (pe @ pe.t()).unsqueeze(0)
        else:
            logit = logit + torch.einsum('ahp,bhp->hab', pe, pe)

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

    heads = torch.arange(q.size(1), device=device).view(-1, 1, 1)
    a, b = branch_a, branch_b
    log_theta = (log_w[heads, a] + logit[heads, a, b] - log_norm[heads, a])
    # (Masked before the exp: pairs outside the support have stand-in
    # logits whose exp may overflow, and 0 * inf in the backward pass.)
    log_theta = torch.where(pair_ok, log_theta, -inf)
    if self_loops:
        i = torch.arange(num_leaves, device=device)
        log_theta[:, i, i] = log_w[:, i] + logit[:, i, i] + eta[:, i]
    return log_theta.exp()


def _branches(ancestors: Tensor, depth: Tensor, num_leaves: int):
    """For every leaf pair ``(i, j)``: the children ``A'``, ``B'`` of their
    lowest common ancestor above ``i`` and ``j``, and whether the pair
    counts (distinct leaves of one root)."""
    device = ancestors.device
    cols = torch.arange(num_leaves, device=device)
    root_first = torch.full((int(depth.max()) + 1, num_leaves), -1,
                            device=device, dtype=torch.long)
    leaf_depth = depth[:num_leaves]
    for t in range(ancestors.size(0)):
        ok = t <= leaf_depth
        level = (leaf_depth - t).clamp(min=0)
        root_first[level[ok], cols[ok]] = ancestors[t, :num_leaves][ok]
    same = (root_first.unsqueeze(2) == root_first.unsqueeze(1)) & \
        (root_first.unsqueeze(2) >= 0)  # [D, N, N]
    shared = same.long().cumprod(0).sum(0)  # length of the common path
    below_lca = shared.clamp(max=root_first.size(0) - 1)
    a = root_first.t().gather(1, below_lca)  # A'[i, j] = branch of i
    b = root_first.gather(0, below_lca)  # B'[i, j] = branch of j
    pair_ok = (shared > 0) & ~torch.eye(num_leaves, dtype=torch.bool,
                                        device=device)
    return a.clamp(min=0), b.clamp(min=0), pair_ok


def _query_resolved(q, k, rho_k, pe, scale, a, b, pair_ok, below,
                    self_loops: bool, causal: bool) -> Tensor:
    """Query-resolved rows, straight from their definition."""
    num_leaves = q.size(0)
    i = torch.arange(num_leaves, device=q.device)
    logit = scale * torch.einsum('ihc,ijhc->hij', q, rho_k[b])
    own = scale * (q * k).sum(-1).t()  # [H, N]
    if pe is not None:
        pe = pe.to(q.dtype)
        pe = pe.unsqueeze(1) if pe.dim() == 2 else pe
        logit = logit + (pe[a] * pe[b]).sum(-1).permute(2, 0, 1)
        own = own + pe[i].square().sum(-1).t()
    ok = pair_ok
    if causal:
        leaf_index = torch.arange(num_leaves, device=q.device, dtype=q.dtype)
        first = torch.where(below > 0, leaf_index, math.inf).amin(1)
        ok = ok & (first[b] < first[a])
    logit = logit.masked_fill(~ok, -math.inf)
    if self_loops or causal:
        logit[:, i, i] = own
    top = logit.amax(-1, keepdim=True)
    theta = torch.exp(logit - torch.where(torch.isfinite(top), top, 0.0))
    total = theta.sum(-1, keepdim=True)
    return theta / torch.where(total > 0, total, 1.0)
