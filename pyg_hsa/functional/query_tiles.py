r"""Query-resolved HSA as one masked attention over tiles of leaves.

Leaf :math:`i` attends to its *blocks*: every sibling :math:`B` of every
non-root node :math:`A` on its path (the leaf itself included), with logit
:math:`\mathrm{scale}\langle q_i, \rho_k(B)\rangle + \langle e(A),
e(B)\rangle + \log n(B)` and value :math:`\rho_v(B)` (plus the leaf itself
with self loops; under ``causal`` only the blocks left of the path). No
block depends on another level's result, so the whole computation is one
logits -> softmax -> weighted sum chain, whatever the tree's shape.

The plan (:class:`TilePlan`, built once per tree) orders the leaves depth
first and cuts them into tiles of :math:`T` consecutive leaves. Leaves of
one tile share most of their blocks (all of them above their lowest common
ancestor), so each tile lists the union of its leaves' blocks once, padded
to :math:`U` slots, and an additive bias holds :math:`\log n(B)` where a
leaf sees a slot and :math:`-\infty` where it does not. A call is then:
the means below every node from one sparse product, one gather of the
tiles' keys and values (``[tiles, U]`` rows, never ``[leaves, blocks]``),
and a batched masked attention ``[tiles, heads, T, U]``. :math:`T` is
chosen per tree to minimise the padded work :math:`\#\text{tiles}\cdot U
\cdot (T + 16)`.

The plan exists for trees whose tiles hold at most :data:`TILE_ELEMENTS`
(leaf, slot) cells: batches of molecules, parse trees, point clouds of a
few thousand points. Larger trees (a flat tree of :math:`N` leaves has
:math:`N^2` pairs) run family by family
(:mod:`~pyg_hsa.functional.query_resolved`).
"""
import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from pyg_hsa.functional.plan import (
    cached_plan,
    grads_of_reference,
    sparse_pair,
)
from pyg_hsa.topology import is_uniform, leaf_paths

# Upper bound on tiles x T x U (cells of the additive bias); beyond it the
# family-by-family path is used.
TILE_ELEMENTS = 1 << 23
# On CPU, larger trees run faster family by family: a complete 8-ary tree
# of 131k leaves in 2.5 s against 2.8 s fwd+bwd, of 32k leaves in 0.34 s
# against 0.40 s (uniform trees' families are slices there), while 16
# ListOps parse trees (17k leaves) take 0.28 s here against 0.59 s. On a
# GPU the one kernel chain pays at any size that fits.
MAX_LEAVES = 1 << 15
MAX_UNIFORM_LEAVES = 1 << 14
TILE_SIZES = (8, 16, 32, 64, 128)  # (each twice the one before)
# Per key slot, the work of gathering it, in units of one (row, slot)
# logit: the cost model is tiles * U * (T + KEY_COST).
KEY_COST = 16


class TilePlan(NamedTuple):
    """Index tensors of one tree's tiles (see module docstring)."""
    num_leaves: int
    tile: int  # T
    #: ``[tiles * T]`` the leaf in every row (pads: leaf 0).
    row_leaf: Tensor
    #: ``[N]`` the row of every leaf.
    leaf_row: Tensor
    #: ``[tiles, U]`` the node in every key slot (pads: node 0).
    key_node: Tensor
    #: ``[tiles, 1, T, U]`` additive bias in float64: ``log n(B)`` where the
    #: row sees the slot, ``-inf`` elsewhere (a row that sees nothing, a pad
    #: or a leaf without blocks, sees slot 0 and is zeroed).
    bias: Tensor
    #: ``[N]`` leaves that see no block (their output is 0), or None.
    blind: Optional[Tensor]
    #: The (tile, row, slot) of every pair, its ``A`` and ``B`` (for the
    #: position term), and the sparse means below every node and their
    #: transpose, float64 (cast per dtype on use).
    pairs: Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
    means: Tensor
    means_t: Tensor
    #: The float tensors cast to each dtype used so far.
    casts: dict


def tile_plan(tree, causal: bool, self_loops: bool) -> Optional[TilePlan]:
    """:obj:`tree`'s :class:`TilePlan` (cached), or :obj:`None` where the
    tiles would exceed :data:`TILE_ELEMENTS` or (on CPU) the leaves
    :data:`MAX_LEAVES` (:data:`MAX_UNIFORM_LEAVES` for uniform trees)."""
    if not tree.parent.is_cuda and tree.num_leaves > MAX_UNIFORM_LEAVES and (
            tree.num_leaves > MAX_LEAVES or cached_plan(
                tree, 'uniform', lambda: is_uniform(tree.parent,
                                                    tree.num_leaves))):
        return None
    return cached_plan(tree, ('query tiles', bool(causal), bool(self_loops),
                              TILE_ELEMENTS),
                       lambda: build_tile_plan(tree.parent, tree.num_leaves,
                                               causal, self_loops))


def build_tile_plan(parent: Tensor, num_leaves: int, causal: bool,
                    self_loops: bool) -> Optional[TilePlan]:
    device, num_nodes = parent.device, parent.numel()
    arange = torch.arange(num_leaves, device=device)
    path_leaf, path_node = leaf_paths(parent, num_leaves)
    size = torch.bincount(path_node, minlength=num_nodes)
    first = torch.full((num_nodes, ), num_leaves, device=device)
    first = first.scatter_reduce(0, path_node, path_leaf, 'amin')
    means = sparse_pair(path_node, path_leaf, 1.0 / size[path_node].double(),
                        (num_nodes, num_leaves))
    # From here on, the non-root nodes on the paths (roots see nothing).
    below_root = parent[path_node] >= 0
    path_leaf, path_node = path_leaf[below_root], path_node[below_root]

    has_parent = parent >= 0
    count = torch.bincount(parent[has_parent], minlength=num_nodes)
    family = torch.where(has_parent, count[parent.clamp(min=0)], 1)
    reps = family[path_node] - 1
    if int(reps.sum()) + num_leaves > TILE_ELEMENTS:
        return None

    # Children by parent, then first leaf: each family is a slice.
    child = has_parent.nonzero().view(-1)
    children = child[torch.argsort(parent[child] * (num_leaves + 1) +
                                   first[child])]
    offset = torch.cumsum(count, 0) - count
    slot = torch.empty(num_nodes, dtype=torch.long, device=device)
    slot[children] = torch.arange(children.numel(), device=device) - \
        offset[parent[children]]

    # Pairs (leaf i, A on its path, B a sibling of A).
    which = torch.repeat_interleave(torch.arange(reps.numel(),
                                                 device=device), reps)
    rank = torch.arange(which.numel(), device=device) - \
        (torch.cumsum(reps, 0) - reps)[which]
    pair_a = path_node[which]
    rank = rank + (rank >= slot[pair_a]).long()  # skip A itself
    pair_b = children[offset[parent[pair_a]] + rank]
    pair_i = path_leaf[which]
    if causal:
        left = first[pair_b] < first[pair_a]
        pair_i, pair_a, pair_b = pair_i[left], pair_a[left], pair_b[left]
    if self_loops:
        pair_i, pair_a, pair_b = (torch.cat([x, arange])
                                  for x in (pair_i, pair_a, pair_b))

    leaf_row = _depth_first_rank(path_leaf, path_node, first, num_leaves)
    row_of_pair = leaf_row[pair_i]
    # The union of blocks of every tile, for each tile size: each size's
    # (tile, block) set comes from the previous one's (tiles double), so
    # only the first sort sees every pair.
    best, unique, previous = None, None, None
    for tile in TILE_SIZES:
        tiles = -(-num_leaves // tile)
        if unique is None:
            unique = torch.unique((row_of_pair // tile) * num_nodes + pair_b)
        else:
            unique = torch.unique(unique // num_nodes // (tile // previous) *
                                  num_nodes + unique % num_nodes)
        previous = tile
        per_tile = torch.bincount(unique // num_nodes, minlength=tiles)
        width = max(1, int(per_tile.max()) if per_tile.numel() else 1)
        cost = tiles * width * (tile + KEY_COST)
        if best is None or cost < best[0]:
            best = (cost, tile, tiles, width, unique, per_tile)
        if tiles == 1:
            break
    _, tile, tiles, width, unique, per_tile = best
    if tiles * tile * width > TILE_ELEMENTS:
        return None
    inverse = torch.searchsorted(unique, (row_of_pair // tile) * num_nodes +
                                 pair_b)

    pair_tile = row_of_pair // tile
    start = torch.cumsum(per_tile, 0) - per_tile
    pair_slot = inverse - start[pair_tile]
    key_tile = unique // num_nodes
    key_node = torch.zeros(tiles, width, dtype=torch.long, device=device)
    key_node[key_tile, torch.arange(unique.numel(), device=device) -
             start[key_tile]] = unique % num_nodes
    pair_row = row_of_pair % tile
    bias = torch.full((tiles, tile, width), -math.inf, dtype=torch.float64,
                      device=device)
    bias[pair_tile, pair_row, pair_slot] = size[pair_b].double().log()
    sees = torch.zeros(tiles * tile, dtype=torch.bool, device=device)
    sees[row_of_pair] = True
    bias.view(-1, width)[~sees, 0] = 0.0  # finite rows: no NaN anywhere
    blind = (~sees[leaf_row]).nonzero().view(-1)

    row_leaf = torch.zeros(tiles * tile, dtype=torch.long, device=device)
    row_leaf[leaf_row] = arange
    return TilePlan(num_leaves, tile, row_leaf, leaf_row, key_node,
                    bias.unsqueeze(1), blind if blind.numel() else None,
                    (pair_tile, pair_row, pair_slot, pair_a, pair_b),
                    *means, {})


def _depth_first_rank(path_leaf: Tensor, path_node: Tensor, first: Tensor,
                      num_leaves: int) -> Tensor:
    """Every leaf's position when leaves are ordered depth first, siblings
    by first leaf (ordered trees keep their order): a stable sort by the
    first leaf of the ancestor at each depth, deepest first."""
    device = path_leaf.device
    depth = torch.bincount(path_leaf, minlength=num_leaves)  # of each leaf
    # Distance of each path entry above its leaf: entries come level by
    # level from the leaves up, so it is the entry's rank for its leaf.
    above = torch.empty_like(path_leaf)
    order = torch.argsort(path_leaf, stable=True)
    starts = torch.cumsum(depth, 0) - depth
    above[order] = torch.arange(order.numel(), device=device) - \
        starts[path_leaf[order]]
    node_depth = depth[path_leaf] - above  # 1 for children of roots
    rank = torch.arange(num_leaves, device=device)
    keys = torch.zeros(int(depth.max()) + 1 if num_leaves else 1, num_leaves,
                       dtype=torch.long, device=device)
    keys[node_depth, path_leaf] = first[path_node]
    for d in range(keys.size(0) - 1, 0, -1):
        rank = rank[torch.argsort(keys[d][rank], stable=True)]
    position = torch.empty_like(rank)
    position[rank] = torch.arange(num_leaves, device=device)
    return position


def _cast(plan: TilePlan, dtype: torch.dtype, heads: int):
    """The plan's tensors for :obj:`heads` heads in :obj:`dtype` (built
    once): the bias ``[tiles * H, T, U]``, the sparse means and their
    transpose, the (leaf, head) rows of leaves without blocks, and the
    head-resolved indices of the key slots (into ``[M *
    H]``), of the query rows and of the leaves' rows (into ``[N * H]``)."""
    key = (dtype, heads)
    if key not in plan.casts:
        tiles, _, tile, width = plan.bias.shape
        head = torch.arange(heads, device=plan.bias.device)
        # (tile, head, slot) -> node * H + head; (tile, head, row) -> ...
        key_index = (plan.key_node.unsqueeze(1) * heads +
                     head.view(1, -1, 1)).view(-1)
        row_index = (plan.row_leaf.view(tiles, 1, tile) * heads +
                     head.view(1, -1, 1)).view(-1)
        tile_of, row_of = plan.leaf_row // tile, plan.leaf_row % tile
        out_index = ((tile_of.view(-1, 1) * heads + head) * tile +
                     row_of.view(-1, 1)).view(-1)
        bias = plan.bias.to(dtype).expand(-1, heads, -1, -1).reshape(
            tiles * heads, tile, width)
        blind = None if plan.blind is None else (
            plan.blind.view(-1, 1) * heads + head).view(-1)
        plan.casts[key] = (bias, blind, plan.means.to(dtype),
                           plan.means_t.to(dtype), key_index, row_index,
                           out_index)
    return plan.casts[key]


def tiled_attention(plan: TilePlan, q: Tensor, k: Tensor, v: Tensor,
                    pos: Optional[Tensor], scale) -> Tensor:
    """Query-resolved HSA ``[N, H, Cv]`` over the plan's tiles (``pos`` in
    the tree's numbering, ``[M, P]`` or ``[M, H, P]``)."""
    heads = q.size(1)
    constants = _cast(plan, q.dtype, heads)
    bias = constants[0]
    if pos is not None:
        bias = bias + _position_bias(plan, pos, heads)
    if isinstance(scale, Tensor):  # a learned temperature: its gradient
        q, scale = q * scale, 1.0
    out = TiledAttention.apply(q, k, v, bias, float(scale),
                               *constants[1:])[0]
    return out.view(q.shape[:2] + v.shape[-1:])  # (a view made outside)


class TiledAttention(torch.autograd.Function):
    r"""The tiles' masked attention with a hand-written backward pass (a
    few batched products, no per-op autograd bookkeeping). Heads are folded
    into the tile dimension by the gathers, so every product is one
    :func:`torch.bmm` on contiguous ``[tiles * H, ...]`` operands.

    Under ``create_graph=True`` the backward pass differentiates
    :func:`tiled_reference`, so second derivatives are exact."""
    @staticmethod
    def forward(q, k, v, bias, scale, blind, means, means_t, key_index,
                row_index, out_index):
        num_leaves, heads, channels = q.shape
        batch, tile, width = bias.shape
        kv = _gathered_keys(k, v, means, key_index, batch, width)
        rows = q.reshape(-1, channels).index_select(0, row_index).view(
            batch, tile, channels)
        weights = torch.softmax(torch.baddbmm(
            bias, rows, kv[..., :channels].transpose(1, 2), alpha=scale),
            dim=-1)
        out = torch.bmm(weights, kv[..., channels:])
        out = out.view(-1, v.size(-1)).index_select(0, out_index)
        if blind is not None:
            out = out.index_fill(0, blind, 0.0)
        return out, rows, kv, weights

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, bias, scale = inputs[:5]
        ctx.scale = scale
        ctx.constants = inputs[5:]
        ctx.save_for_backward(q, k, v, bias, *output[1:])
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad, *_):
        if grad is None:  # (grads are not materialised)
            return (None, ) * 11
        q, k, v, bias, rows, kv, weights = ctx.saved_tensors
        blind, means, means_t, key_index, row_index, out_index = \
            ctx.constants
        if torch.is_grad_enabled():  # create_graph: differentiate again
            return grads_of_reference(
                lambda *x: tiled_reference(*x, ctx.scale, *ctx.constants),
                (q, k, v, bias), grad) + (None, ) * 7
        batch, tile, width = weights.shape
        channels, values = q.size(-1), v.size(-1)
        if blind is not None:
            grad = grad.index_fill(0, blind, 0.0)
        grad_rows = grad.new_zeros(batch * tile, values).index_copy_(
            0, out_index, grad.reshape(-1, values)).view(batch, tile, values)
        grad_weights = torch.bmm(grad_rows, kv[..., channels:].transpose(1, 2))
        grad_logits = torch._softmax_backward_data(grad_weights, weights, -1,
                                                   weights.dtype)
        grad_kv = torch.cat([
            torch.bmm(grad_logits.transpose(1, 2), rows).mul_(ctx.scale),
            torch.bmm(weights.transpose(1, 2), grad_rows)], -1)
        grad_q = torch.bmm(grad_logits, kv[..., :channels]).mul_(ctx.scale)
        grad_q = grad_q.view(-1, channels).index_select(0, out_index)
        grad_kv = grad_kv.new_zeros(means.size(0) * q.size(1),
                                    grad_kv.size(-1)).index_add_(
            0, key_index, grad_kv.view(-1, grad_kv.size(-1)))
        grad_kv = (means_t @ grad_kv.view(means.size(0), -1)).view(
            q.size(0), q.size(1), -1)
        grad_k, grad_v = grad_kv.split([channels, values], -1)
        grad_bias = grad_logits if ctx.needs_input_grad[3] else None
        return (grad_q.view_as(q), grad_k, grad_v, grad_bias,
                *[None] * 7)


def _gathered_keys(k: Tensor, v: Tensor, means: Tensor, key_index: Tensor,
                   batch: int, width: int) -> Tensor:
    """The mean keys and values of the tiles' slots, ``[tiles * H, U, C +
    Cv]``."""
    kv = torch.cat([k, v], -1)
    kv = means @ kv.view(kv.size(0), -1)
    return kv.view(-1, kv.size(-1) // k.size(1)).index_select(
        0, key_index).view(batch, width, -1)


def tiled_reference(q, k, v, bias, scale, blind, means, means_t, key_index,
                    row_index, out_index) -> Tensor:
    """:class:`TiledAttention`'s forward pass in autograd operations (for
    second derivatives)."""
    batch, tile, width = bias.shape
    channels = q.size(-1)
    kv = _gathered_keys(k, v, means, key_index, batch, width)
    rows = q.reshape(-1, channels)[row_index].view(batch, tile, channels)
    weights = torch.softmax(torch.baddbmm(
        bias, rows, kv[..., :channels].transpose(1, 2), alpha=scale), -1)
    out = torch.bmm(weights, kv[..., channels:]).view(-1, v.size(-1))
    out = out[out_index]
    return out if blind is None else out.index_fill(0, blind, 0.0)


def _position_bias(plan: TilePlan, pos: Tensor, heads: int) -> Tensor:
    r""":math:`\langle e(A), e(B)\rangle` of every pair, in a ``[tiles * H,
    T, U]`` tensor (0 where no pair)."""
    tile, row, slot, a, b = plan.pairs
    pos = pos.unsqueeze(1) if pos.dim() == 2 else pos  # [M, H or 1, P]
    dots = (pos[a] * pos[b]).sum(-1).expand(-1, heads)  # [pairs, H]
    tiles, _, size, width = plan.bias.shape
    out = pos.new_zeros(tiles, size, width, heads)
    out = out.index_put((tile, row, slot), dots)
    return out.permute(0, 3, 1, 2).reshape(tiles * heads, size, width)
