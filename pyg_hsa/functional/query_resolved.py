r"""Query-resolved HSA, causal or not: every leaf's own KL projection.

Paper HSA makes :math:`\Theta` constant on sibling blocks in rows *and*
columns. Query-resolved HSA keeps only the column constraint: row
:math:`i` is the distribution closest in KL (:math:`\mathrm{KL}(\theta \|
p_i)`) to the softmax row :math:`p_i` among those constant on the blocks
seen from leaf :math:`i`: at every ancestor :math:`A_s` of :math:`i`
(:math:`A_0 = i`), each sibling :math:`B` of :math:`A_{s-1}` is one block
of :math:`n(B)` leaves. The projection has a closed form, one softmax per
row over the blocks,

.. math::
    \Theta_{ij} = \frac{\exp s_i(B)}{Z_i}, \quad
    s_i(B) = \mathrm{scale} \langle q_i, \rho_k(B) \rangle +
    \langle e(A_{s-1}), e(B) \rangle \quad (j \in B),

with :math:`Z_i = \sum_B n(B) e^{s_i(B)}` (plus :math:`e^{s_{ii}}` with
self loops). So :math:`o_i = \sum_B e^{s_i(B) - \log Z_i}\, S_v(B)` with
:math:`S_v(B)` the sum of the values below :math:`B`. Causal: only the
blocks left of the path (smaller first leaf) and the leaf itself.

The computation goes family by family, batched: the leaves below a family
(its *rows*, each with the child it sits in) meet the family's children
(its *members*) in one dense product, families of one padded shape
``(rows, members)`` together, with no ``N x N`` matrix unless one family
has ``N`` members (a flat tree, which is then processed in checkpointed
row chunks). Every leaf's levels merge through their log-sum-exps.
"""
import math
from typing import List, NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from pyg_hsa.functional.checks import under_torch_func
from pyg_hsa.functional.plan import cached_plan
from pyg_hsa.functional.query_tiles import tile_plan, tiled_attention
from pyg_hsa.topology import depth_by_pointer_jumping, leaf_paths, num_children

# Logits ([families, heads, rows, members]) one chunk may hold; larger
# groups go in row chunks whose backward pass recomputes them.
CHUNK_ELEMENTS = 1 << 24


class FamilyGroup(NamedTuple):
    """Families of one padded shape ``[F, R, W]``: the rows of family ``f``
    are the pairs (leaf below it, the child the leaf sits in), its members
    its children ordered by first leaf. Pads point at node 0 and are
    masked."""
    leaf: Tensor  # [F, R] leaf of each row (0 for pads)
    own: Tensor  # [F, R] the child of the family the leaf sits in
    allowed: Tensor  # [F, R, W] which members the row attends to (pads: 0)
    members: Tensor  # [F, W] (0 for pads)
    row_ok: Tensor  # [F, R] rows that count (not pads, not causally empty)
    # ``leaf`` is ``first, first + 1, ...`` without pads (ordered trees:
    # sequences, windows, complete trees), else -1: rows are a slice.
    first: int


class QueryPlan:
    """The families of a tree for query-resolved HSA (built once per tree
    and ``causal``): for every family, the leaves below it with the child
    each one sits in, and the children ordered by first leaf."""
    def __init__(self, parent: Tensor, num_leaves: int, causal: bool):
        device, num_nodes = parent.device, parent.numel()
        self.num_leaves = num_leaves
        # Every leaf with every node on its path that is a child.
        leaf, own = leaf_paths(parent, num_leaves)
        child = parent[own] >= 0
        leaf, own = leaf[child], own[child]
        #: Leaves below every node (0 for roots: never a member), and the
        #: first (smallest) of them.
        self.size = torch.bincount(own, minlength=num_nodes)
        first = torch.full((num_nodes, ), num_leaves, device=device)
        self.first_leaf = first.scatter_reduce(0, own, leaf, 'amin')
        # Nodes by depth, deepest first, for the sums below every node.
        depth = depth_by_pointer_jumping(parent)
        order = torch.argsort(depth, descending=True, stable=True)
        per_depth = torch.bincount(depth, minlength=int(depth.max()) + 1)
        #: (children, their parents) per depth, deepest first.
        self.levels = [(c, parent[c]) for c in torch.split(
            order, per_depth.flip(0).tolist())[:-1]]

        # Children sorted by parent, then first leaf: slots in families.
        child = (parent >= 0).nonzero().view(-1)
        key = parent[child] * (num_leaves + 1) + self.first_leaf[child]
        children = child[torch.argsort(key)]
        count = num_children(parent)
        offset = torch.cumsum(count, 0) - count
        slot = torch.empty(num_nodes, dtype=torch.long, device=device)
        slot[children] = torch.arange(
            child.numel(), device=device) - offset[parent[children]]

        # Rows: the pairs in families of two or more. For causal, a row in
        # the first child has no block on its left: it stays (so that the
        # rows of ordered trees stay contiguous) but does not count.
        fam = parent[own]
        keep = count[fam] > 1
        leaf, own, fam = leaf[keep], own[keep], fam[keep]
        # Rows by family (families by first leaf), leaves in order: ordered
        # trees get contiguous rows.
        order = torch.argsort(fam, stable=True)
        order = order[torch.argsort(self.first_leaf[fam[order]],
                                    stable=True)]
        leaf, own, fam = leaf[order], own[order], fam[order]
        families, rows = torch.unique_consecutive(fam, return_counts=True)
        row_start = torch.cumsum(rows, 0) - rows
        widths = count[families]
        if causal:  # members right of every row never count
            widths = torch.zeros_like(widths).scatter_reduce(
                0, torch.repeat_interleave(
                    torch.arange(families.numel(), device=device), rows),
                slot[own], 'amax')
        shape_rows, shape_width = _pow2(rows), _pow2(widths)
        self.groups: List[FamilyGroup] = []
        for r, w in torch.unique(torch.stack([shape_rows, shape_width], 1),
                                 dim=0).tolist():
            sel = ((shape_rows == r) & (shape_width == w)).nonzero().view(-1)
            index = row_start[sel].unsqueeze(1) + torch.arange(
                r, device=device)
            real = torch.arange(r, device=device) < rows[sel].unsqueeze(1)
            index = torch.where(real, index, 0)
            row_ok = real & (slot[own[index]] > 0) if causal else real
            member_slot = torch.arange(w, device=device)
            member_ok = member_slot < widths[sel].unsqueeze(1)
            members = children[torch.where(
                member_ok, offset[families[sel]].unsqueeze(1) + member_slot,
                0)]
            own_slot = slot[own[index]].unsqueeze(-1)  # [F, R, 1]
            # (Pad rows see the first member: a finite log-sum-exp keeps
            # NaN out of second derivatives; their weights are dropped.)
            allowed = member_ok.unsqueeze(1) & torch.where(
                row_ok.unsqueeze(-1), member_slot < own_slot if causal else
                member_slot != own_slot, member_slot == 0)
            rows_leaf = torch.where(real, leaf[index], 0)
            first = int(rows_leaf[0, 0])
            if not (bool(real.all()) and torch.equal(
                    rows_leaf.view(-1), first + torch.arange(
                        rows_leaf.numel(), device=device))):
                first = -1
            self.groups.append(FamilyGroup(
                rows_leaf, torch.where(real, own[index], 0), allowed,
                torch.where(member_ok, members, 0), row_ok, first))


def _pow2(x: Tensor) -> Tensor:
    """The smallest power of two >= x (x >= 1)."""
    return torch.where(x > 1, 2**torch.ceil(torch.log2(
        x.clamp(min=1).double())).long(), 1)


def query_plan(tree, causal: bool) -> QueryPlan:
    """The tree's plan, built on first use and cached."""
    return cached_plan(tree, ('query families', bool(causal)),
                       lambda: QueryPlan(tree.parent, tree.num_leaves,
                                         bool(causal)))


def query_resolved(tree, q: Tensor, k: Tensor, v: Tensor,
                   pos: Optional[Tensor], scale, self_loops: bool,
                   causal: bool) -> Tensor:
    """Query-resolved HSA ``[N, H, Cv]`` on checked arguments (``pos`` in
    the tree's numbering, ``[M, P]`` or ``[M, H, P]``)."""
    tiles = None if under_torch_func(q, k, v) else \
        tile_plan(tree, causal, self_loops)
    if tiles is not None:
        return tiled_attention(tiles, q, k, v, pos, scale)
    plan = query_plan(tree, causal)
    num_leaves, heads = q.size(0), q.size(1)
    parts = [part for group in plan.groups
             for part in _row_chunks(group, heads)]
    # Heads first ([H, rows, C]) so that the batched products need no
    # copies. Rows of a part that covers every leaf in order are the
    # tensor itself; the other parts' rows, and all members, are gathered
    # once and split (one scatter each in the backward pass).
    query = (scale * q).transpose(0, 1).contiguous()
    size = plan.size.clamp(min=1).to(q.dtype).view(1, -1, 1)
    key_mean = _node_sums(plan, k) / size
    value_mean = _node_sums(plan, v) / size
    whole = [part.first == 0 and part.leaf.numel() == num_leaves
             for part, _ in parts]
    q_rows = _gather(query, [None if w else part.leaf for w, (part, _) in
                             zip(whole, parts)])
    keys = _gather(key_mean, [part.members for part, _ in parts])
    values = _gather(value_mean, [part.members for part, _ in parts])
    if pos is not None:
        pos = (pos.unsqueeze(1) if pos.dim() == 2 else pos).transpose(0, 1)
        pos_own = _gather(pos, [part.own for part, _ in parts])
        pos_members = _gather(pos, [part.members for part, _ in parts])

    # Pass 1: every row's log-sum-exp, merged by leaf into the log of the
    # leaf's normaliser (with its own term, if any).
    inputs, logits, lse, leaves = [], [], [], []
    for i, (part, chunked) in enumerate(parts):
        inputs.append((q_rows[i] if q_rows[i] is not None else query,
                       keys[i], None if pos is None else pos_own[i],
                       None if pos is None else pos_members[i],
                       plan.size[part.members].to(q.dtype).log(),
                       part.allowed))
        if chunked and torch.is_grad_enabled():
            # A chunk of a huge group (a family of N members holds N x N
            # logits): recompute its logits in pass 2 and in backward.
            logits.append(None)
            lse.append(checkpoint(_row_lse, *inputs[-1],
                                  use_reentrant=False))
            lse[-1] = torch.where(part.row_ok, lse[-1], -math.inf)
        else:
            logits.append(_logits(*inputs[-1]))
            lse.append(torch.where(part.row_ok, torch.logsumexp(
                logits[-1], dim=-1), -math.inf))
        leaves.append(part.leaf.reshape(-1))
    own = None
    if self_loops or causal:
        own = (query * k.transpose(0, 1)).sum(-1)  # [H, N]
        if pos is not None:
            own = own + pos[:, :num_leaves].square().sum(-1)
        lse.append(own)
        leaves.append(torch.arange(num_leaves, device=q.device))
    if not lse:  # single leaves without self loops: nothing to attend to
        # (Zeros made from the inputs: a backward pass gives them zero
        # gradients, as block resolution does.)
        return v * 0 + (q * 0 + k * 0).sum(-1, keepdim=True)
    log_norm = _merge_lse([x.reshape(heads, -1) for x in lse], leaves,
                          num_leaves)

    # Pass 2: every row's weights over its blocks, normalised across all
    # its levels, times the blocks' mean values, added up by leaf.
    # (Accumulated in place: a fresh full-size tensor per level costs page
    # faults; the additions' backward passes need no saved values.)
    out = v.new_zeros(heads, num_leaves, v.size(-1))
    scattered, scattered_rows = [], []
    for i, (part, _) in enumerate(parts):
        norm = log_norm if whole[i] else log_norm[:, part.leaf.view(-1)]
        if logits[i] is None:
            weighted = checkpoint(_weighted_values, None, norm, values[i],
                                  part.row_ok,
                                  *inputs[i], use_reentrant=False)
        else:
            weighted = _weighted_values(logits[i], norm, values[i],
                                        part.row_ok)
        weighted = weighted.reshape(heads, -1, weighted.size(-1))
        if whole[i]:
            out.add_(weighted)
        else:
            scattered.append(weighted)
            scattered_rows.append(part.leaf.view(-1))
    if scattered:
        out.index_add_(1, torch.cat(scattered_rows),
                       torch.cat(scattered, dim=1))
    if own is not None:
        out.add_(torch.exp(own - log_norm).unsqueeze(-1) * v.transpose(0, 1))
    return out.transpose(0, 1)


def _gather(x: Tensor, indices: List[Optional[Tensor]]) -> List:
    """``x[:, index]`` for every index (:obj:`None` for none), in one
    gather split by index."""
    wanted = [index.reshape(-1) for index in indices if index is not None]
    if not wanted:
        return [None] * len(indices)
    pieces = iter(torch.split(x[:, torch.cat(wanted)],
                              [index.numel() for index in wanted], dim=1))
    return [None if index is None else next(pieces) for index in indices]


def _node_sums(plan: QueryPlan, x: Tensor) -> Tensor:
    """Sums of ``x`` ``[N, H, C]`` below every node, as ``[H, M, C]``."""
    return _SumsUp.apply(plan, x)


class _SumsUp(torch.autograd.Function):
    """Leaf rows ``[N, H, C]`` to the sums below every node ``[H, M, C]``:
    one pass up the depths. Its adjoint (the backward pass) sends every
    node's row down to the leaves below it: :class:`_SumsDown`."""
    @staticmethod
    def forward(plan: QueryPlan, x: Tensor) -> Tensor:
        sums = x.new_zeros(x.size(1), plan.size.numel(), x.size(2))
        sums[:, :x.size(0)] = x.transpose(0, 1)
        for children, parents in plan.levels:
            sums.index_add_(1, parents, sums[:, children])
        return sums

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.plan = inputs[0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, _SumsDown.apply(ctx.plan, grad)


class _SumsDown(torch.autograd.Function):
    """Node rows ``[H, M, C]`` to, for every leaf, the sum over the nodes
    on its path ``[N, H, C]``: one pass down the depths."""
    @staticmethod
    def forward(plan: QueryPlan, x: Tensor) -> Tensor:
        total = x.clone()
        for children, parents in reversed(plan.levels):
            total.index_add_(1, children, total[:, parents])
        return total[:, :plan.num_leaves].transpose(0, 1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.plan = inputs[0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, _SumsUp.apply(ctx.plan, grad)


def _row_chunks(group: FamilyGroup, heads: int):
    """``(group, False)``, or ``(chunk, True)`` for chunks of rows when
    the group's logits are large."""
    num_fam, num_rows, width = group.allowed.shape
    per_row = num_fam * heads * width
    if num_rows * per_row <= CHUNK_ELEMENTS:
        yield group, False
        return
    step = max(1, CHUNK_ELEMENTS // per_row)
    for lo in range(0, num_rows, step):
        first = group.first + lo if group.first >= 0 and num_fam == 1 \
            else -1
        # (Contiguous: with several families, a slice of rows is not.)
        yield FamilyGroup(group.leaf[:, lo:lo + step].contiguous(),
                          group.own[:, lo:lo + step].contiguous(),
                          group.allowed[:, lo:lo + step].contiguous(),
                          group.members,
                          group.row_ok[:, lo:lo + step].contiguous(),
                          first), True


def _logits(q: Tensor, k: Tensor, pos_own: Optional[Tensor],
            pos_members: Optional[Tensor], log_size: Tensor,
            allowed: Tensor) -> Tensor:
    """Masked logits ``[H, F, R, W]`` of every row (queries ``[H, F * R,
    C]``) over its family's members (key means ``[H, F * W, C]``), plus
    log n(B) (a block of n(B) leaves)."""
    heads = q.size(0)
    num_fam, num_rows, width = allowed.shape
    s = torch.bmm(q.reshape(heads * num_fam, num_rows, -1),
                  k.reshape(heads * num_fam, width, -1).transpose(1, 2))
    s = s.view(heads, num_fam, num_rows, width)
    if pos_own is not None:
        e_own = pos_own.reshape(-1, num_rows, pos_own.size(-1))
        e_mem = pos_members.reshape(-1, width, pos_members.size(-1))
        s = s + torch.bmm(e_own, e_mem.transpose(1, 2)).view(
            pos_own.size(0), num_fam, num_rows, width)
    s = s + log_size.view(1, num_fam, 1, width)
    return s.masked_fill(~allowed, -math.inf)


def _row_lse(*inputs) -> Tensor:
    return torch.logsumexp(_logits(*inputs), dim=-1)


def _weighted_values(s: Optional[Tensor], log_norm: Tensor, values: Tensor,
                     row_ok: Tensor, *inputs) -> Tensor:
    """``[H, F, R, Cv]``: each row's weights over its blocks (logits
    :obj:`s`, or recomputed from :obj:`inputs`), normalised over all of
    its leaf's levels (:obj:`log_norm`, ``[H, F * R]``), times the blocks'
    mean values (``[H, F * W, Cv]``)."""
    if s is None:
        s = _logits(*inputs)
    heads, num_fam, num_rows, width = s.shape
    # Rows that do not count (pads; causal rows in a first child) weigh
    # nothing. They are masked before the exp: their logits are not bounded
    # by their leaf's normaliser, and an exp that overflows would make the
    # backward pass compute 0 * inf.
    s = torch.where(row_ok.unsqueeze(-1), s - log_norm.view(
        heads, num_fam, num_rows, 1), -math.inf)
    p = torch.exp(s)
    out = torch.bmm(p.view(heads * num_fam, num_rows, width),
                    values.reshape(heads * num_fam, width, -1))
    return _DenseGrad.apply(out).view(heads, num_fam, num_rows, -1)


class _DenseGrad(torch.autograd.Function):
    """The identity, with a contiguous gradient: ``bmm``'s backward pass
    on CPU loops over the batch for a broadcast gradient (``out.sum()``
    gives one), 20x slower than on a dense one."""
    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


def _merge_lse(lse: List[Tensor], leaves: List[Tensor],
               num_leaves: int) -> Tensor:
    """``[H, N]``: the log-sum-exp by leaf of the rows' log-sum-exps (0
    for a leaf with nothing to attend to, alone without self loops)."""
    lse, leaves = torch.cat(lse, dim=1), torch.cat(leaves)
    heads = lse.size(0)
    index = leaves.view(1, -1).expand(heads, -1)
    top = lse.new_full((heads, num_leaves), -math.inf).scatter_reduce(
        1, index, lse.detach(), 'amax')
    top = torch.where(torch.isfinite(top), top, 0.0)
    total = lse.new_zeros(heads, num_leaves).index_add(
        1, leaves, torch.exp(lse - top.gather(1, index)))
    return torch.where(total > 0, top + total.clamp(min=1e-300).log(), 0.0)
