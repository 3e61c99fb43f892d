r"""Block-resolution HSA with a fixed, small number of operations per level.

For trees whose families all fit one padded batch (molecules, parse trees,
point clouds of a few thousand points) the dynamic program of
:mod:`~pyg_hsa.functional.dynamic_program` runs as:

1. **means:** :math:`\rho_q, \rho_k, \rho_v` of every node from one sparse
   product (``[M, N]``, :math:`1/n(B)` on the leaves below :math:`B`);
2. **siblings:** every family of every level in one batch ``[R * H, W,
   W]``, the families packed side by side into rows of the widest one's
   width (an additive bias keeps them apart): :math:`\vartheta` and the
   log-normaliser :math:`-\eta = \log\sum_B n(B) e^{s(A, B)}` of every
   member;
3. **gains:** :math:`W(A)(1 - \mu(A))` of every node (:func:`_gains`): the
   energy :math:`\varphi` bottom up (three operations per level), then
   :math:`\log W` as one sparse product with the strict-ancestor matrix;
4. **down:** every leaf's output :math:`\sum_A W(A)(1 - \mu(A))
   \vartheta(A)` over its path, one sparse product.

All four are one autograd Function, :class:`BlockAttention`, with a
hand-written backward pass (four operations per level for step 3).

Energies are kept negated (:math:`-\varphi`, :math:`-\eta`), so that the
infinite ones (leaves, nodes without siblings) are :math:`-\infty`, which
:func:`torch.logaddexp` and sums carry without ``inf - inf``.
"""
import bisect
import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_hsa.functional.layout import contract_unary_chains
from pyg_hsa.functional.plan import (
    cached_plan,
    grads_of_reference,
    sparse_pair,
)
from pyg_hsa.topology import ancestors as ancestors_of
from pyg_hsa.topology import depth_by_pointer_jumping, is_uniform, leaf_paths

# Largest padded family batch (rows * W * W cells) and widest family run
# this way; beyond either, the level-by-level dynamic program is used.
FAMILY_ELEMENTS = 1 << 22
MAX_WIDTH = 64
# On CPU, where time is arithmetic more than dispatch, larger trees run
# faster level by level: its subtree sums are O(M) reshapes, the sparse
# products here O(N * depth). Measured (benchmarks/bench_hsa.py, C=32):
# at 16k leaves the families take 1.2x (irregular trees) to 1.8x (uniform
# ones, whose levels are strided views) the time, at 4k uniform leaves
# 1.8x, while molecules, ListOps and 4k-point clouds break even or gain.
# On a GPU every level's dozens of launches cost more than the padding,
# so the caps do not apply there.
MAX_LEAVES = 1 << 15
MAX_UNIFORM_LEAVES = 1 << 10


class FamilyPlan(NamedTuple):
    """Index tensors of one tree's families (see module docstring); nodes
    are those left after contracting chains of only children, numbered in
    level order (by depth)."""
    num_leaves: int
    order: Tensor
    #: ``[M]`` the user's node whose position (``pe``) every node takes.
    position: Tensor
    #: ``[R, W]`` level-order node in every slot of the packed rows (pads:
    #: the row's first node).
    slot_node: Tensor
    #: ``[R, 1, W, W]`` additive bias, float64: ``log n(B)`` where slot
    #: ``a`` attends to slot ``b``, ``-inf`` elsewhere (pads see slot 0).
    bias: Tensor
    #: ``[M]`` every node's flat slot ``row * W + slot`` (0 without a
    #: family).
    node_slot: Tensor
    #: ``[M]`` nodes without a family (no siblings, no self loop).
    alone: Tensor
    #: ``[M]`` nodes whose energy :math:`\varphi` is infinite.
    phi_inf: Tensor
    #: Level boundaries, and per level >= 1 the parent of each node inside
    #: the level above and :math:`n(A) / n(P)`, float64.
    level_ptr: Tuple[int, ...]
    level_parent: Tuple[Tensor, ...]
    level_ratio: Tuple[Tensor, ...]
    #: Sparse CSR matrices, float64, and their transposes: the means
    #: ``[M, N]``, the strict non-root ancestors ``[M, M]`` and the paths
    #: ``[N, M]`` (leaf ``i``: every node on its path).
    means: Tuple[Tensor, Tensor]
    ancestors: Tuple[Tensor, Tensor]
    paths: Tuple[Tensor, Tensor]
    casts: dict


def family_plan(tree, self_loops: bool) -> Optional[FamilyPlan]:
    """:obj:`tree`'s :class:`FamilyPlan` (cached), or :obj:`None` where its
    families exceed :data:`FAMILY_ELEMENTS` or :data:`MAX_WIDTH`, or (on
    CPU) its leaves :data:`MAX_LEAVES` (:data:`MAX_UNIFORM_LEAVES` for
    uniform trees)."""
    return cached_plan(tree, ('block families', bool(self_loops),
                              FAMILY_ELEMENTS, MAX_WIDTH, MAX_LEAVES,
                              MAX_UNIFORM_LEAVES),
                       lambda: build_family_plan(tree.parent, tree.num_leaves,
                                                 self_loops))


def build_family_plan(parent: Tensor, num_leaves: int,
                      self_loops: bool) -> Optional[FamilyPlan]:
    # Chains of only children carry nothing of their own (see
    # :class:`~pyg_hsa.functional.layout.Layout`): fewer nodes and levels.
    _, parent, position = contract_unary_chains(parent, num_leaves,
                                                self_loops)
    device, num_nodes = parent.device, parent.numel()
    has_parent = parent >= 0
    count = torch.bincount(parent[has_parent], minlength=num_nodes)
    is_leaf = torch.arange(num_nodes, device=device) < num_leaves
    family = torch.where(has_parent, count[parent.clamp(min=0)], 1)
    # Members of a family: siblings, or a leaf attending to itself.
    member = (has_parent & (family > 1)) | (is_leaf & self_loops)
    if not bool(member.any()):
        return None  # no family at all: nothing to batch
    width = int(family[member].max())
    if width > MAX_WIDTH:
        return None
    if not parent.is_cuda and num_leaves > (
            MAX_UNIFORM_LEAVES if is_uniform(parent, num_leaves)
            else MAX_LEAVES):
        return None

    depth = depth_by_pointer_jumping(parent)
    order = torch.argsort(depth, stable=True)
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(num_nodes, device=device)
    counts = torch.bincount(depth, minlength=int(depth.max()) + 1).tolist()
    level_ptr = tuple([0] + torch.tensor(counts).cumsum(0).tolist())

    # Leaves below every node, from the (leaf, ancestor) pairs.
    pair_leaf, pair_node = leaf_paths(parent, num_leaves)
    size = torch.bincount(pair_node, minlength=num_nodes)

    # Families: members grouped by parent (a root leaf is its own family).
    owner = torch.where(has_parent, parent, num_nodes + torch.arange(
        num_nodes, device=device))[member]
    members = member.nonzero().view(-1)
    members = members[torch.argsort(owner, stable=True)]
    owner = torch.sort(owner, stable=True).values
    _, fam_id, per_family = torch.unique_consecutive(
        owner, return_inverse=True, return_counts=True)
    start = torch.cumsum(per_family, 0) - per_family
    slot = torch.arange(members.numel(), device=device) - start[fam_id]
    # Families share padded rows of `width` slots, side by side (the bias
    # keeps them apart): the padding is that of a bin packing, not that of
    # every family padded to the widest.
    row, offset = (torch.tensor(x, device=device) for x in _pack(
        per_family.tolist(), width))
    num_rows = int(row.max()) + 1
    if num_rows * width * width > FAMILY_ELEMENTS:
        return None
    member_row = row[fam_id]
    member_col = offset[fam_id] + slot
    slot_node = torch.empty(num_rows, width, dtype=torch.long, device=device)
    slot_node[row, offset] = new_id[members[start]]  # pads: a real node
    slot_node[:] = slot_node[:, :1]
    slot_node[member_row, member_col] = new_id[members]
    bias = torch.full((num_rows, width, width), -math.inf,
                      dtype=torch.float64, device=device)
    log_size = size.double().log()
    # Member a attends to every other member b (and to itself if a leaf
    # with self loops): all (a, b) of each family.
    reps = per_family[fam_id]
    a = torch.repeat_interleave(torch.arange(members.numel(), device=device),
                                reps)
    b = start[fam_id[a]] + torch.arange(a.numel(), device=device) - \
        (torch.cumsum(reps, 0) - reps)[a]
    keep = (a != b) | (is_leaf[members[a]] & self_loops)
    a, b = a[keep], b[keep]
    bias[member_row[a], member_col[a], member_col[b]] = log_size[members[b]]
    used = torch.zeros(num_rows, width, dtype=torch.bool, device=device)
    used[member_row, member_col] = True
    bias[:, :, 0].masked_fill_(~used, 0.0)  # pad rows: finite, unused
    node_slot = torch.zeros(num_nodes, dtype=torch.long, device=device)
    node_slot[new_id[members]] = member_row * width + member_col
    alone = torch.ones(num_nodes, dtype=torch.bool, device=device)
    alone[new_id[members]] = False

    # Level structure in level order.
    parent_new = torch.where(has_parent, new_id[parent.clamp(min=0)], -1)[
        order]
    size_new = size[order].double()
    level_parent, level_ratio = [], []
    for d in range(1, len(counts)):
        lo, hi = level_ptr[d], level_ptr[d + 1]
        up = parent_new[lo:hi]
        level_parent.append(up - level_ptr[d - 1])
        level_ratio.append((size_new[lo:hi] / size_new[up]).unsqueeze(1))
    # phi is infinite at leaves and above any child whose phi and eta are
    # both infinite (structure only).
    phi_inf = is_leaf[order].clone()
    eta_inf = alone
    for d in range(len(counts) - 1, 0, -1):
        lo, hi = level_ptr[d], level_ptr[d + 1]
        blocked = phi_inf[lo:hi] & eta_inf[lo:hi]
        above = torch.zeros(counts[d - 1], dtype=torch.bool, device=device)
        above[level_parent[d - 1][blocked]] = True
        phi_inf[level_ptr[d - 1]:lo] |= above

    means = sparse_pair(new_id[pair_node], pair_leaf,
                        1.0 / size[pair_node].double(),
                        (num_nodes, num_leaves))
    # Strict ancestors that are not roots: pairs (node, ancestor).
    anc = ancestors_of(parent)[1:]  # [depth, M], -1 above the root
    strict = (anc >= 0) & (parent[anc.clamp(min=0)] >= 0)
    anc_node = torch.arange(num_nodes, device=device).expand_as(anc)[strict]
    anc = anc[strict]
    ancestors = sparse_pair(new_id[anc_node], new_id[anc],
                            torch.ones(anc.numel(), device=device),
                            (num_nodes, num_nodes))
    paths = sparse_pair(pair_leaf, new_id[pair_node],
                        torch.ones(pair_leaf.numel(), device=device),
                        (num_leaves, num_nodes))
    return FamilyPlan(num_leaves, order, position[order], slot_node, bias.unsqueeze(1),
                      node_slot, alone, phi_inf, level_ptr,
                      tuple(level_parent), tuple(level_ratio), means,
                      ancestors, paths, {})


def _pack(sizes: List[int], width: int) -> Tuple[List[int], List[int]]:
    """Rows of :obj:`width` slots holding families of :obj:`sizes` side by
    side (best fit, largest first): each family's row and first slot."""
    rows, offsets = [0] * len(sizes), [0] * len(sizes)
    free: List[Tuple[int, int]] = []  # (free slots, row), sorted
    num_rows = 0
    for f in sorted(range(len(sizes)), key=lambda f: -sizes[f]):
        i = bisect.bisect_left(free, (sizes[f], -1))
        if i == len(free):  # no row has room: a new one
            capacity, r = width, num_rows
            num_rows += 1
        else:
            capacity, r = free.pop(i)
        rows[f], offsets[f] = r, width - capacity
        if capacity > sizes[f]:
            bisect.insort(free, (capacity - sizes[f], r))
    return rows, offsets


class SparseProduct(torch.autograd.Function):
    """``matrix @ x`` for a constant sparse ``matrix`` whose transpose is
    given (one sparse product each way)."""
    @staticmethod
    def forward(x: Tensor, matrix: Tensor, matrix_t: Tensor) -> Tensor:
        return matrix @ x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.matrix_t = inputs[2]
        ctx.matrix = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return SparseProduct.apply(grad, ctx.matrix_t, ctx.matrix), None, None


class Constants(NamedTuple):
    """A :class:`FamilyPlan` for one dtype and head count (see
    :func:`constants`)."""
    bias: Tensor  # [R * H, W, W], keys first: [r, b, a] for a -> b
    slot_index: Tensor  # [R * H * W] into [M * H]
    node_slot: Tensor  # [M * H] into [R * H * W]
    phi_inf: Tensor  # [M, 1]
    alone: Tensor  # [M, 1]
    none: Tensor  # [M, 1]: infinite phi and eta
    not_both: Tensor  # [M, 1]: phi or eta infinite
    phi_start: Tensor  # [M, H]: -inf where phi is infinite, else 0
    zero: Tensor  # a scalar 0 (for baddbmm with beta=0)
    sizes: list  # nodes per level
    parents: Tuple[Tensor, ...]
    ratios: Tuple[Tensor, ...]
    means: Tuple[Tensor, Tensor]
    ancestors: Tuple[Tensor, Tensor]
    paths: Tuple[Tensor, Tensor]


def constants(plan: FamilyPlan, dtype: torch.dtype, heads: int) -> Constants:
    """The plan's tensors for :obj:`heads` heads in :obj:`dtype`, built once:
    heads are folded into the family dimension, so that slot ``(f, h, a)``
    reads row ``node * H + h`` of the ``[M * H, ...]`` node tensors."""
    key = (dtype, heads)
    if key not in plan.casts:
        head = torch.arange(heads, device=plan.order.device)
        families, width = plan.slot_node.shape
        slot_index = (plan.slot_node.unsqueeze(1) * heads +
                      head.view(1, -1, 1)).view(-1)
        node_slot = ((plan.node_slot // width * heads).view(-1, 1) +
                     head) * width + (plan.node_slot % width).view(-1, 1)
        sizes = [hi - lo for lo, hi in zip(plan.level_ptr[:-1],
                                           plan.level_ptr[1:])]
        phi_inf, alone = plan.phi_inf.view(-1, 1), plan.alone.view(-1, 1)
        plan.casts[key] = Constants(
            plan.bias.to(dtype).transpose(2, 3).expand(
                -1, heads, -1, -1).reshape(families * heads, width, width),
            slot_index, node_slot.view(-1), phi_inf, alone, phi_inf & alone,
            phi_inf | alone, torch.zeros(phi_inf.size(0), heads, dtype=dtype,
                                         device=phi_inf.device).masked_fill_(
                phi_inf, -math.inf),
            torch.zeros((), dtype=dtype, device=phi_inf.device), sizes, plan.level_parent,
            tuple(r.to(dtype) for r in plan.level_ratio),
            *(tuple(m.to(dtype) for m in pair)
              for pair in (plan.means, plan.ancestors, plan.paths)))
    return plan.casts[key]


def family_attention(plan: FamilyPlan, q: Tensor, k: Tensor, v: Tensor,
                     pos: Optional[Tensor], scale) -> Tensor:
    """Block-resolution HSA ``[N, H, Cv]`` over the plan's padded families
    (``pos`` in the tree's numbering, ``[M, P]`` or ``[M, H, P]``)."""
    c = constants(plan, q.dtype, q.size(1))
    bias = c.bias
    if pos is not None:
        bias = bias + _position_bias(plan, pos, q.size(1))
    if isinstance(scale, Tensor):  # a learned temperature: its gradient
        q, scale = q * scale, 1.0
    out = BlockAttention.apply(q, k, v, bias, float(scale), c)[0]
    return out.view(q.size(0), q.size(1), -1)  # (a view made outside)


class BlockAttention(torch.autograd.Function):
    r"""The four steps of the module docstring in one operator, with a
    hand-written backward pass. Under ``create_graph=True`` the backward
    pass differentiates :func:`block_reference` instead, so second
    derivatives are exact."""
    @staticmethod
    def forward(q, k, v, bias, scale, c: Constants):
        num_leaves, heads, channels = q.shape
        num_nodes, values = c.phi_inf.size(0), v.size(-1)
        batch, width, _ = bias.shape
        x = torch.cat([q, k, v], -1).view(num_leaves, -1)
        fam = (c.means[0] @ x).view(num_nodes * heads, -1).index_select(
            0, c.slot_index).view(batch, width, -1)
        qf, kf, vf = fam.split([channels, channels, values], -1)
        # Keys along dim 1, queries along dim 2: CPU softmax kernels are
        # several times slower over a short last dimension.
        logits = torch.baddbmm(bias, kf, qf.transpose(1, 2), alpha=scale)
        lse = torch.logsumexp(logits, 1, keepdim=True)
        alpha = logits.sub_(lse).exp_()  # [R * H, keys, queries]
        # Every node's theta and log-normaliser, from its slot.
        node = torch.cat([torch.bmm(alpha.transpose(1, 2), vf),
                          lse.transpose(1, 2)], -1).view(
            -1, values + 1).index_select(0, c.node_slot)
        theta, neg_eta = node.view(num_nodes, heads, -1).split([values, 1],
                                                                -1)
        gain, mu, out_coef = _gains(neg_eta.squeeze(-1).masked_fill(
            c.alone, -math.inf), c)
        out = c.paths[0] @ (theta * gain.unsqueeze(-1)).view(num_nodes, -1)
        return out, fam, alpha, theta, gain, mu, out_coef

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.scale, ctx.c = inputs[4], inputs[5]
        ctx.save_for_backward(*inputs[:4], *output[1:])
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad, *_):
        if grad is None:  # (grads are not materialised)
            return (None, ) * 6
        q, k, v, bias, fam, alpha, theta, gain, mu, out_coef = \
            ctx.saved_tensors
        c, scale = ctx.c, ctx.scale
        if torch.is_grad_enabled():  # create_graph: differentiate again
            return grads_of_reference(
                lambda *x: block_reference(*x, scale, c), (q, k, v, bias),
                grad) + (None, None)
        num_leaves, heads, channels = q.shape
        num_nodes, values = gain.size(0), v.size(-1)
        batch, width, _ = alpha.shape
        qf, kf, vf = fam.split([channels, channels, values], -1)
        grad = (c.paths[1] @ grad.contiguous()).view(num_nodes, heads, values)
        grad_eta = _gains_backward((grad * theta).sum(-1), gain, mu,
                                   out_coef, c)
        # Back to the slots: theta's and the log-normaliser's gradients.
        node = torch.cat([grad * gain.unsqueeze(-1), grad_eta.unsqueeze(-1)],
                         -1).view(-1, values + 1)
        slot = node.new_zeros(batch * width, values + 1).index_add_(
            0, c.node_slot, node).view(batch, width, -1)
        grad_theta, grad_lse = slot.split([values, 1], -1)
        grad_logits = torch._softmax_backward_data(
            torch.bmm(vf, grad_theta.transpose(1, 2)), alpha, 1,
            alpha.dtype).addcmul_(alpha, grad_lse.transpose(1, 2))
        grad_fam = torch.cat([
            torch.baddbmm(c.zero, grad_logits.transpose(1, 2), kf, beta=0,
                          alpha=scale),
            torch.baddbmm(c.zero, grad_logits, qf, beta=0, alpha=scale),
            torch.bmm(alpha, grad_theta)], -1)
        grad_x = grad_fam.new_zeros(num_nodes * heads, fam.size(-1))
        grad_x.index_add_(0, c.slot_index, grad_fam.view(-1, fam.size(-1)))
        grad_x = (c.means[1] @ grad_x.view(num_nodes, -1)).view(
            num_leaves, heads, -1)
        return (*grad_x.split([channels, channels, values], -1),
                grad_logits if ctx.needs_input_grad[3] else None, None, None)


def _gains(neg_eta: Tensor, c: Constants) -> Tuple[Tensor, Tensor, Tensor]:
    r"""The weight :math:`W(A)(1 - \mu(A))` of every node's
    :math:`\vartheta(A)`, ``[M, H]``, from the negated energies
    :math:`-\eta` (level order, :math:`-\infty` for nodes without a
    family), and :math:`\mu` and :math:`1 - \mu` for the backward pass.

    :math:`-\varphi(P) = \sum_{A} \frac{n(A)}{n(P)} \log(e^{-\varphi(A)}
    + e^{-\eta(A)})` level by level from the leaves (:math:`-\infty` at
    leaves); :math:`\mu = \sigma(\eta - \varphi)` from the difference
    itself (a difference of two energies of order :math:`10^4` keeps its
    precision, a log-sum-exp of them would not); :math:`\log W` is the
    strict non-root ancestors' :math:`\log\mu` summed (one sparse
    product)."""
    neg_phi = c.phi_start.clone()
    phis, etas = neg_phi.split(c.sizes), neg_eta.split(c.sizes)
    for d in range(len(c.sizes) - 1, 0, -1):
        norm = torch.logaddexp(phis[d], etas[d])
        phis[d - 1].index_add_(0, c.parents[d - 1], norm.mul_(c.ratios[d - 1]))
    # eta - phi; -inf where both are infinite (then mu = 0: phi first).
    diff = neg_phi.sub_(neg_eta).masked_fill_(c.none, -math.inf)
    log_out = F.logsigmoid(-diff).masked_fill_(c.alone, -math.inf)
    gain = (c.ancestors[0] @ F.logsigmoid(diff)).add_(log_out).exp_()
    return gain, torch.sigmoid(diff), log_out.exp_()


def _gains_backward(grad: Tensor, gain: Tensor, mu: Tensor, out: Tensor,
                    c: Constants) -> Tensor:
    r"""The gradient of :math:`-\eta` from that of the gains.
    :math:`\partial\ell / \partial(-\varphi) = \mu` and
    :math:`\partial\ell / \partial(-\eta) = 1 - \mu` (0 and 1 at
    infinite :math:`\varphi`, 1 and 0 at infinite :math:`\eta`) carry the
    gradient of :math:`-\varphi(P)` to the children, from the roots
    down."""
    t = grad * gain  # the gradient of log W and of log(1 - mu)
    d_log_mu = c.ancestors[1] @ t
    grad_phi = (d_log_mu * out).sub_(t * mu).masked_fill_(c.not_both, 0.0)
    grad_eta = -grad_phi
    phis, etas, mus, outs = (x.split(c.sizes) for x in (
        grad_phi, grad_eta, mu, out))
    for d in range(1, len(c.sizes)):
        above = phis[d - 1].index_select(0, c.parents[d - 1]).mul_(
            c.ratios[d - 1])
        phis[d].addcmul_(above, mus[d])
        etas[d].addcmul_(above, outs[d])
    return grad_eta


def block_reference(q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
                    scale: float, c: Constants) -> Tensor:
    """:class:`BlockAttention`'s forward pass in out-of-place autograd
    operations (for second derivatives and tests)."""
    num_leaves, heads, channels = q.shape
    num_nodes, values = c.phi_inf.size(0), v.size(-1)
    batch, width, _ = bias.shape
    x = torch.cat([q, k, v], -1).view(num_leaves, -1)
    fam = SparseProduct.apply(x, *c.means).view(num_nodes * heads, -1)[
        c.slot_index].view(batch, width, -1)
    qf, kf, vf = fam.split([channels, channels, values], -1)
    logits = torch.baddbmm(bias.transpose(1, 2), qf, kf.transpose(1, 2),
                           alpha=scale)
    lse = torch.logsumexp(logits, -1, keepdim=True)
    theta = torch.bmm(torch.softmax(logits, -1), vf).view(-1, values)[
        c.node_slot].view(num_nodes, heads, values)
    neg_eta = lse.view(-1)[c.node_slot].view(num_nodes, heads)
    neg_eta = torch.where(c.alone, -math.inf, neg_eta)
    # Energies with finite stand-ins wherever one is infinite, so that no
    # first or second derivative meets an infinity (logaddexp's would).
    phi_inf, eta_inf = c.phi_inf, c.alone
    eta = torch.where(eta_inf, 0.0, neg_eta)
    phis = list(neg_eta.new_zeros(neg_eta.shape).split(c.sizes))
    etas = eta.split(c.sizes)
    phi_infs, eta_infs = phi_inf.split(c.sizes), eta_inf.split(c.sizes)
    for d in range(len(c.sizes) - 1, 0, -1):
        # log(e^-phi + e^-eta): eta alone, phi alone, or both (a node with
        # neither adds nothing finite: its parent's phi is infinite).
        norm = torch.where(phi_infs[d], etas[d], torch.where(
            eta_infs[d], phis[d], torch.logaddexp(phis[d], etas[d])))
        phis[d - 1] = phis[d - 1].index_add(0, c.parents[d - 1],
                                            norm * c.ratios[d - 1])
    neg_phi = torch.where(phi_inf, 0.0, torch.cat(phis))
    diff = torch.where(phi_inf | eta_inf, 0.0, neg_phi - eta)
    log_mu = torch.where(phi_inf, -math.inf, torch.where(
        eta_inf, 0.0, F.logsigmoid(diff)))
    log_out = torch.where(eta_inf, -math.inf,
                          torch.where(phi_inf, 0.0, F.logsigmoid(-diff)))
    gain = (SparseProduct.apply(torch.where(phi_inf, 0.0, log_mu),
                                *c.ancestors) +
            _blocked(c, phi_inf) + log_out).exp()
    return SparseProduct.apply((theta * gain.unsqueeze(-1)).view(
        num_nodes, -1), *c.paths).view(num_leaves, heads, values)


def _blocked(c: Constants, phi_inf: Tensor) -> Tensor:
    r"""``-inf`` for nodes below a strict non-root ancestor with infinite
    :math:`\varphi` (its :math:`\mu` is 0), else 0: ``[M, 1]``."""
    below = c.ancestors[0] @ phi_inf.to(c.ratios[0].dtype if c.ratios
                                        else torch.float32)
    return torch.where(below > 0, -math.inf, 0.0)


def _position_bias(plan: FamilyPlan, pos: Tensor, heads: int) -> Tensor:
    r""":math:`\langle e(A), e(B)\rangle` of every pair of slots, ``[R * H,
    W, W]``."""
    families, width = plan.slot_node.shape
    pos = pos[plan.position[plan.slot_node]]  # [R, W, P] or [R, W, H, P]
    if pos.dim() == 3:
        dots = torch.bmm(pos, pos.transpose(1, 2)).unsqueeze(1)
        return dots.expand(-1, heads, -1, -1).reshape(-1, width, width)
    pos = pos.transpose(1, 2).reshape(families * heads, width, -1)
    return torch.bmm(pos, pos.transpose(1, 2))
