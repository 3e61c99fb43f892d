r"""Query-resolved HSA through :func:`torch.nn.attention.flex_attention`,
the CUDA path.

FlexAttention computes softmax attention with a user's mask and score
modification, skipping whole masked blocks of the score matrix, in one
fused kernel (forward and backward) on a GPU. Query-resolved HSA is such
an attention:

* the queries are the leaves, the keys and values **every node**: the
  leaves, and the internal nodes with the means of the keys and values
  below them (one sparse product);
* ``mask_mod`` lets leaf :math:`i` see node :math:`B` exactly when
  :math:`B` is a sibling of the ancestor :math:`A` of :math:`i` at
  :math:`B`'s depth (:math:`B \neq A`), or :math:`B = i` with self loops;
  under ``causal`` only siblings left of :math:`A` (smaller first leaf);
* ``score_mod`` adds :math:`\log n(B)`, the block's size.

A leaf that sees nothing gets 0, as in the other kernels. Position
encodings are not supported here (their logit term pairs :math:`A` with
:math:`B`; such calls keep the tiled kernel). On CPU FlexAttention runs
only forward and returns no log-sum-exp, so
:mod:`~pyg_hsa.functional.query_tiles` stays the CPU kernel; the tests
check this one's forward pass against it on CPU, and whenever a GPU is
present, its gradients too.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from pyg_hsa.functional.plan import cached_plan, sparse_pair
from pyg_hsa.topology import depth_by_pointer_jumping, leaf_paths

#: Route query-resolved HSA on CUDA tensors without positions through
#: FlexAttention (set to False to use the tiled kernel there too).
ENABLED = True


class FlexPlan(NamedTuple):
    """What the mask and score modifications index, per tree."""
    ancestor: Tensor  # [N, D + 1]: leaf i's ancestor at depth d (-1: none)
    depth: Tensor  # [M]
    parent: Tensor  # [M] (roots: -1)
    first: Tensor  # [M] smallest leaf below
    log_size: Tensor  # [M] float64
    means: Tensor  # sparse [M, N]: 1 / n(B) on the leaves below B
    block_masks: dict  # (causal, self_loops) -> BlockMask
    casts: dict  # dtype -> (means, log_size) in that dtype


def available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa
    except ImportError:
        return False
    return True


def flex_plan(tree) -> FlexPlan:
    return cached_plan(tree, 'flex', lambda: build_flex_plan(
        tree.parent, tree.num_leaves))


def build_flex_plan(parent: Tensor, num_leaves: int) -> FlexPlan:
    device, num_nodes = parent.device, parent.numel()
    depth = depth_by_pointer_jumping(parent)
    path_leaf, path_node = leaf_paths(parent, num_leaves)
    ancestor = torch.full((num_leaves, int(depth.max()) + 1), -1,
                          dtype=torch.long, device=device)
    ancestor[path_leaf, depth[path_node]] = path_node
    size = torch.bincount(path_node, minlength=num_nodes)
    first = torch.full((num_nodes, ), num_leaves, device=device)
    first = first.scatter_reduce(0, path_node, path_leaf, 'amin')
    means = sparse_pair(path_node, path_leaf, 1.0 / size[path_node].double(),
                        (num_nodes, num_leaves))[0]
    return FlexPlan(ancestor, depth, parent, first,
                    size.clamp(min=1).double().log(), means, {}, {})


def flex_query_attention(tree, q: Tensor, k: Tensor, v: Tensor, scale,
                         self_loops: bool, causal: bool) -> Tensor:
    """Query-resolved HSA ``[N, H, Cv]`` through FlexAttention (see the
    module docstring)."""
    from torch.nn.attention.flex_attention import (
        create_block_mask,
        flex_attention,
    )
    plan = flex_plan(tree)
    num_leaves, heads, channels = q.shape
    num_nodes = plan.depth.numel()
    key = (bool(causal), bool(self_loops))
    if key not in plan.block_masks:
        plan.block_masks[key] = create_block_mask(
            _mask_mod(plan, causal, self_loops), None, None, num_leaves,
            num_nodes, device=q.device)
    if q.dtype not in plan.casts:  # (cast once per dtype, not per call)
        plan.casts[q.dtype] = (plan.means.to(q.dtype),
                               plan.log_size.to(q.dtype))
    means, log_size = plan.casts[q.dtype]
    kv = torch.cat([k, v], -1).reshape(num_leaves, -1)
    kv = (means @ kv).view(num_nodes, heads, -1)
    keys, values = kv.transpose(0, 1).unsqueeze(0).split(
        [channels, v.size(-1)], -1)

    def score_mod(score, b, h, i, j):
        return score + log_size[j]

    attend = flex_attention if not q.is_cuda else _compiled()
    if isinstance(scale, Tensor):
        q, scale = q * scale, 1.0
    out = attend(q.transpose(0, 1).unsqueeze(0), keys.contiguous(),
                 values.contiguous(), score_mod=score_mod,
                 block_mask=plan.block_masks[key], scale=float(scale))
    return out[0].transpose(0, 1)


def _mask_mod(plan: FlexPlan, causal: bool, self_loops: bool):
    ancestor, depth, parent, first = (plan.ancestor, plan.depth,
                                      plan.parent, plan.first)

    def mask_mod(b, h, i, j):
        a = ancestor[i, depth[j]]  # the ancestor of i at j's depth
        sees = (depth[j] >= 1) & (a >= 0) & (a != j) & \
            (parent[j] == parent[a.clamp(min=0)])
        if causal:
            sees = sees & (first[j] < first[a.clamp(min=0)])
        if self_loops:
            sees = sees | (i == j)
        return sees
    return mask_mod


_COMPILED = None


def _compiled():
    """:func:`flex_attention` compiled once (its fused CUDA kernels)."""
    global _COMPILED
    if _COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention
        _COMPILED = torch.compile(flex_attention, dynamic=True)
    return _COMPILED


def use_flex(q: Tensor, pe: Optional[Tensor]) -> bool:
    """Whether a query-resolved call takes this kernel: CUDA tensors
    without positions, where FlexAttention exists."""
    return ENABLED and q.is_cuda and pe is None and available()

