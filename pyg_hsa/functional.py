r"""Hierarchical Self-Attention on tensors.

:func:`hsa_attention` is the exact linear-time dynamic program;
:func:`hsa_dense` builds the same attention matrix explicitly, in quadratic
time, by a separate route (lowest common ancestors of every leaf pair), as a
reference and for visualisation. See ``docs/hsa.md`` in the project's shared
folder for the derivation; the notation below follows it.
"""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_geometric.utils import segment

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
    inputs are computed in float32 and cast back.

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
        scale (float, optional): defaults to :math:`1/\sqrt{C}`.
        dropout (float): dropout probability on the per-family attention
            weights (training only; pass ``0.0`` in evaluation).
        return_attention_weights (bool): also return ``(edge_index, alpha)``:
            the sibling edges ``A -> B`` in the tree's numbering and their
            ``[E, H]`` softmax weights (summing to 1 over the edges that
            leave one node).

    Returns:
        ``[N, H, Cv]`` outputs (and the attention weights if requested).
    """
    tree = _as_tree(tree, q)
    _check_inputs(q, k, v, tree, pos)
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    out_dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype),
                                    v.dtype)
    dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if pos is not None:
        pos = pos.to(dtype)[tree.perm]

    channels = q.size(-1)
    rho = _pool_means(tree, torch.cat([q, k, v], dim=-1))
    rho_q = rho[..., :channels]
    rho_k = rho[..., channels:2 * channels]
    rho_v = rho[..., 2 * channels:]

    # A node has siblings if its family has another member, or if it is a
    # leaf attending to itself; elsewhere eta = +inf and theta = 0.
    loop = tree.is_leaf & self_loops
    has_sibling = ((tree.family_size > 1) | loop).unsqueeze(-1)  # [M, 1]
    theta, eta, weights = _sibling_attention(
        tree, rho_q, rho_k, rho_v, pos, scale, self_loops, dropout,
        return_attention_weights)

    phi, phi_finite = _energy(tree, eta, has_sibling)
    log_mu, log_one_minus_mu = _gates(tree, eta, has_sibling, phi,
                                      phi_finite)
    out = _accumulate_down(tree, theta, log_mu, log_one_minus_mu)
    out = out[tree.leaf_pos].to(out_dtype)

    if return_attention_weights:
        edge_index, alpha = weights
        return out, (tree.perm[edge_index], alpha)
    return out


def _sibling_attention(tree: Tree, rho_q: Tensor, rho_k: Tensor,
                       rho_v: Tensor, pos: Optional[Tensor], scale: float,
                       self_loops: bool, dropout: float, need_weights: bool):
    r"""Softmax attention of every node over its family, with each sibling
    :math:`B` a super-token of logit :math:`s(A, B) + \log n(B)`.

    Families are padded to power-of-two widths and processed as batched
    dense attention, one bucket of equal width at a time. Returns
    :math:`\vartheta` ``[M, H, Cv]``, :math:`\eta` ``[M, H]`` (a finite
    surrogate where a node has no sibling) and, if requested, the sibling
    edges (level order) with their weights.
    """
    log_size = tree.size.to(rho_q.dtype).log()
    loop = tree.is_leaf & self_loops
    positions, thetas, etas, edges, alphas = [], [], [], [], []
    for bucket in tree.buckets:
        if bucket.width == 1 and not self_loops:
            continue  # Lone nodes without self loops attend to nothing.
        if bucket.span is not None:
            lo, hi = bucket.span
            shape = (-1, bucket.width)

            def gather(x: Tensor) -> Tensor:
                return x[lo:hi].view(shape + x.shape[1:])

            index = torch.arange(lo, hi, device=rho_q.device).view(shape)
        else:
            index = bucket.index

            def gather(x: Tensor) -> Tensor:
                return x[index]

        q = gather(rho_q).transpose(1, 2)  # [F, H, W, C]
        k = gather(rho_k).transpose(1, 2)
        v = gather(rho_v).transpose(1, 2)
        logit = scale * (q @ k.transpose(-1, -2))  # [F, H, W, W]
        if pos is not None:
            p = gather(pos)
            p = p.unsqueeze(1) if p.dim() == 3 else p.transpose(1, 2)
            logit = logit + p @ p.transpose(-1, -2)
        logit = logit + log_size[index].unsqueeze(1).unsqueeze(1)

        # Keys: real members other than the query (or the query itself for
        # a leaf with a self loop).
        eye = torch.eye(bucket.width, dtype=torch.bool, device=index.device)
        allowed = bucket.valid.unsqueeze(1) & (~eye | loop[index].unsqueeze(
            -1))  # [F, W(query), W(key)]
        allowed = allowed.unsqueeze(1)
        # Masked entries get a finite fill and an explicit zero weight, so
        # rows without keys (and their gradients) stay finite.
        fill = torch.finfo(logit.dtype).min
        logit = torch.where(allowed, logit, fill)
        logit_max = logit.detach().amax(dim=-1, keepdim=True)
        exp = (logit - logit_max).exp() * allowed
        exp_sum = exp.sum(dim=-1, keepdim=True)
        exp_sum = torch.where(exp_sum > 0, exp_sum, 1.0)
        alpha = exp / exp_sum
        eta = -(exp_sum.log() + logit_max).squeeze(-1)  # [F, H, W]
        weight = F.dropout(alpha, p=dropout) if dropout > 0 else alpha
        theta = weight @ v  # [F, H, W, Cv]

        theta = theta.transpose(1, 2).flatten(0, 1)  # [F * W, H, Cv]
        eta = eta.transpose(1, 2).flatten(0, 1)
        if bucket.span is None:  # Drop the padding slots.
            theta, eta = theta[bucket.slot], eta[bucket.slot]
        positions.append(bucket.node)
        thetas.append(theta)
        etas.append(eta)
        if need_weights:
            real = allowed.squeeze(1) & bucket.valid.unsqueeze(-1)
            f, i, j = real.nonzero().unbind(-1)
            edges.append(torch.stack([index[f, i], index[f, j]]))
            alphas.append(alpha[f, :, i, j])

    num_nodes, heads = tree.num_nodes, rho_q.size(1)
    # (Multiplying by zero keeps outputs attached to the inputs' graph even
    # when no node has a sibling, e.g. a single-leaf tree.)
    theta = rho_v.new_zeros(num_nodes, heads, rho_v.size(-1)) + 0 * rho_v
    eta = rho_q.new_zeros(num_nodes, heads)
    if positions:
        position = torch.cat(positions)
        theta = theta.index_copy(0, position, torch.cat(thetas))
        eta = eta.index_copy(0, position, torch.cat(etas))
    weights = None
    if need_weights:
        weights = (torch.cat(edges, dim=1) if edges else
                   position.new_zeros(2, 0),
                   torch.cat(alphas) if alphas else rho_q.new_zeros(0, heads))
    return theta, eta, weights


def _pool_means(tree: Tree, x: Tensor) -> Tensor:
    """``[M, H, F]`` mean of the leaf rows of :obj:`x` below every node, in
    level order (up pass, deepest level first)."""
    x_node = x.new_zeros((tree.num_nodes, ) + x.shape[1:])
    x_node = x_node.index_copy(0, tree.leaf_pos, x)
    size = tree.size.to(x.dtype).view(-1, 1, 1)
    levels = [x_node[tree.level_slice(tree.depth)]]
    for d in range(tree.depth - 1, -1, -1):
        nodes = tree.level_slice(d)
        children = tree.level_slice(d + 1)
        total = segment(levels[-1] * size[children], tree.level_child_ptr[d],
                        reduce='sum')
        # Leaves have no children (total = 0) and internal nodes no own rows.
        levels.append(x_node[nodes] + total / size[nodes])
    return torch.cat(levels[::-1], dim=0)


def _energy(tree: Tree, eta: Tensor,
            has_sibling: Tensor) -> Tuple[Tensor, Tensor]:
    r"""The energy :math:`\varphi` of every node (up pass) as a finite
    surrogate plus a mask of where it is finite (it is :math:`+\infty` at
    leaves and above chains of only children ending in a leaf)."""
    size = tree.size.to(eta.dtype).unsqueeze(-1)
    num_heads = eta.size(-1)
    deepest = tree.level_slice(tree.depth)
    phi_levels = [eta.new_zeros(deepest.stop - deepest.start, num_heads)]
    finite_levels = [torch.zeros_like(has_sibling[deepest])]
    for d in range(tree.depth - 1, -1, -1):
        nodes, children = tree.level_slice(d), tree.level_slice(d + 1)
        phi_c, fin_c = phi_levels[-1], finite_levels[-1]
        eta_c, sib_c = eta[children], has_sibling[children]
        # -log(exp(-phi) + exp(-eta)) with the infinite cases spelled out,
        # so that no inf - inf is ever formed (forward or backward).
        both = -torch.logaddexp(-torch.where(fin_c, phi_c, 0.0),
                                -torch.where(sib_c, eta_c, 0.0))
        term = torch.where(fin_c & sib_c, both,
                           torch.where(fin_c, phi_c, eta_c))
        infinite = (~fin_c & ~sib_c).to(eta.dtype)
        ptr = tree.level_child_ptr[d]
        total = segment(term * size[children], ptr, reduce='sum')
        num_infinite = segment(infinite, ptr, reduce='sum')
        finite = (~tree.is_leaf[nodes]).unsqueeze(-1) & (num_infinite == 0)
        phi_levels.append(torch.where(finite, total / size[nodes], 0.0))
        finite_levels.append(finite)
    phi = torch.cat(phi_levels[::-1], dim=0)
    phi_finite = torch.cat(finite_levels[::-1], dim=0)
    return phi, phi_finite


def _gates(tree: Tree, eta: Tensor, has_sibling: Tensor, phi: Tensor,
           phi_finite: Tensor) -> Tuple[Tensor, Tensor]:
    r""":math:`\log\mu` and :math:`\log(1-\mu)` with :math:`\mu =
    \sigma(\eta - \varphi)`; :math:`\mu = 1` where only :math:`\eta` is
    infinite, :math:`\mu = 0` where :math:`\varphi` is. Roots get
    :math:`\log\mu = 0` so that :math:`W = 1` under a root."""
    diff = torch.where(phi_finite & has_sibling, eta - phi, 0.0)
    log_mu = torch.where(
        phi_finite, torch.where(has_sibling, F.logsigmoid(diff), 0.0),
        -math.inf)
    log_one_minus_mu = torch.where(
        phi_finite, torch.where(has_sibling, F.logsigmoid(-diff), -math.inf),
        0.0)
    is_root = (tree.parent_new < 0).unsqueeze(-1)
    log_mu = torch.where(is_root, 0.0, log_mu)
    return log_mu, log_one_minus_mu


def _accumulate_down(tree: Tree, theta: Tensor, log_mu: Tensor,
                     log_one_minus_mu: Tensor) -> Tensor:
    r"""Down pass: :math:`\log W(A) = \log W(\mathrm{pa}(A)) +
    \log\mu(\mathrm{pa}(A))` and :math:`\mathrm{acc}(A) =
    \mathrm{acc}(\mathrm{pa}(A)) + W(A)(1-\mu(A))\vartheta(A)`."""
    roots = tree.level_slice(0)
    log_w = torch.zeros_like(log_mu[roots])
    acc = (log_w + log_one_minus_mu[roots]).exp().unsqueeze(-1) * theta[roots]
    acc_levels = [acc]
    for d in range(1, tree.depth + 1):
        nodes, above = tree.level_slice(d), tree.level_slice(d - 1)
        par = tree.level_parent[d - 1]
        log_w = log_w[par] + log_mu[above][par]
        gain = (log_w + log_one_minus_mu[nodes]).exp().unsqueeze(-1)
        acc = acc[par] + gain * theta[nodes]
        acc_levels.append(acc)
    return torch.cat(acc_levels, dim=0)


def hsa_dense(
    q: Tensor,
    k: Tensor,
    tree: TreeLike,
    *,
    pos: Optional[Tensor] = None,
    self_loops: bool = False,
    scale: Optional[float] = None,
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
    of :func:`hsa_attention` (its reference), e.g. for plots.
    """
    tree = _as_tree(tree, q)
    _check_inputs(q, k, None, tree, pos)
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
    masked = torch.where(siblings, logit + size.log(), -inf)
    eta = -torch.logsumexp(masked, dim=-1)  # [H, M]; +inf without siblings

    # phi, one sweep per depth from the deepest internal nodes upwards.
    child_w = torch.where(parent.view(1, -1) == torch.arange(
        num_nodes, device=device).view(-1, 1), size.view(1, -1) /
                          size.view(-1, 1), 0.0)  # [P, A]
    is_leaf = torch.arange(num_nodes, device=device) < num_leaves
    phi = torch.where(is_leaf, inf, 0.0).expand_as(eta).clone()
    for _ in range(int(depth.max())):
        term = -torch.logaddexp(-phi, -eta)  # [H, A]
        summed = torch.where(child_w > 0, child_w * term.unsqueeze(1),
                             0.0).sum(-1)
        phi = torch.where(is_leaf, inf, summed)

    mu = torch.where(phi.isinf(), 0.0, torch.sigmoid(eta - phi))
    # log W(A): sum of log mu over the strict ancestors of A except the root.
    log_mu = mu.log()
    log_w = torch.zeros_like(eta)
    for t in range(1, ancestors.size(0)):
        a = ancestors[t]
        counts = (a >= 0) & (parent[a.clamp(min=0)] >= 0)
        log_w = log_w + torch.where(counts, log_mu[:, a.clamp(min=0)], 0.0)
    log_norm = torch.logaddexp(-phi, -eta)  # log(e^-phi + e^-eta)

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
        return Tree.from_parent(tree, num_leaves=q.size(0))
    raise TypeError(f"'tree' must be a pyg_hsa.Tree or a parent LongTensor "
                    f"(got {type(tree).__name__})")


def _check_inputs(q: Tensor, k: Tensor, v: Optional[Tensor], tree: Tree,
                  pos: Optional[Tensor]) -> None:
    named = [('q', q), ('k', k)] + ([('v', v)] if v is not None else [])
    for name, x in named + ([('pos', pos)] if pos is not None else []):
        if not isinstance(x, Tensor):
            raise TypeError(f"'{name}' must be a tensor "
                            f"(got {type(x).__name__})")
        if not x.is_floating_point():
            raise TypeError(f"'{name}' must be a floating-point tensor "
                            f"(got {x.dtype})")
        if x.device != tree.device:
            raise ValueError(f"'{name}' is on {x.device} but the tree is on "
                             f"{tree.device}; move one with .to()")
    for name, x in named:
        if x.dim() != 3:
            raise ValueError(f"'{name}' must have shape [N, H, C] "
                             f"(got {tuple(x.shape)})")
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
