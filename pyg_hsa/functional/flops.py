r"""FLOP counts of softmax self-attention and of HSA (e.g. to put the cost
of :func:`~pyg_hsa.integrations.transformers.patch_attention` next to the
original's). A multiply-add counts as two FLOPs."""
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from pyg_hsa.functional.layout import layout_of
from pyg_hsa.functional.variants import check_variant
from pyg_hsa.topology import leaves_below, num_children
from pyg_hsa.tree import Tree
from pyg_hsa.utils.checks import check_bool, check_int

__all__ = [
    'NODE_FLOPS',
    'SOFTMAX_FLOPS',
    'dense_attention_flops',
    'hsa_attention_flops',
]

#: FLOPs per attention logit besides the dot product: scaling, exponential,
#: accumulation into the normaliser, division (and, in HSA, adding
#: :math:`\log n(B)`: one more).
SOFTMAX_FLOPS = 4
#: FLOPs per node and head of HSA's scalar recursions: the family
#: normaliser :math:`\eta`, the energy :math:`\varphi`, the gate
#: :math:`\mu` and the path weight :math:`W` (logs, exponentials,
#: sigmoids and the weighted sum over children, counted generously).
NODE_FLOPS = 12


def dense_attention_flops(lengths: Union[int, Sequence[int], Tensor],
                          heads: int, head_dim: int,
                          value_dim: Optional[int] = None) -> int:
    r"""FLOPs of softmax self-attention over sequences of the given
    lengths (each counted unpadded, which favours the dense side):

    .. math::
        H \sum_s L_s^2 \, (2C + 4 + 2C_v),

    :math:`2C` per logit :math:`\langle q_i, k_j\rangle`,
    :data:`SOFTMAX_FLOPS` for the softmax and :math:`2C_v` for the weighted
    sum of the values.

    Examples:
        >>> dense_attention_flops([3, 4], heads=2, head_dim=2)
        600
    """
    heads, head_dim, value_dim = _check_widths(heads, head_dim, value_dim)
    lengths = torch.as_tensor(lengths, dtype=torch.long).view(-1)
    pairs = int((lengths**2).sum())
    return heads * pairs * (2 * head_dim + SOFTMAX_FLOPS + 2 * value_dim)


def hsa_attention_flops(tree: Union[Tree, Tensor], heads: int, head_dim: int,
                        value_dim: Optional[int] = None, *,
                        self_loops: bool = True,
                        padded: bool = False,
                        resolution: str = 'block') -> int:
    r"""FLOPs of :func:`~pyg_hsa.hsa_attention` on a tree, counted like
    :func:`dense_attention_flops`. Per head, with :math:`M` nodes,
    :math:`I` internal nodes, :math:`E = M - \#\text{roots}` child edges
    and families :math:`F` (the children of one internal node, of size
    :math:`b_F`):

    .. math::
        \sum_F b_F^2 (2C + 5 + 2C_v)
        + (2C + C_v)(E + I) + (2 C_v + 12) M

    * every family runs dense attention among its members: a logit, the
      softmax (:data:`SOFTMAX_FLOPS` plus adding :math:`\log n(B)`) and the
      weighted sum per ordered pair, self pairs included (the dense block
      computes them; with :obj:`self_loops` a lone leaf under a root still
      attends to itself);
    * pooling: the means of :math:`q, k, v` below every internal node, one
      addition per child edge and one division per internal node and
      channel;
    * the down pass adds :math:`W(1-\mu)\vartheta` to every node
      (:math:`2C_v`) after :data:`NODE_FLOPS` of scalar recursions.

    With :obj:`resolution='query'` every leaf attends on its own to every
    family above it, :math:`n(P_F)` rows per family (the leaves below its
    parent), and only keys and values are pooled:

    .. math::
        \sum_F n(P_F)\, b_F (2C + 5 + 2C_v) + (C + C_v)(E + I)
        + N (2C + 5 + 2C_v)

    (the last term: every leaf's own term with :obj:`self_loops`, and
    merging its levels).

    Args:
        tree (Tree or LongTensor): the hierarchy, or its parent vector.
        heads (int): number of heads :math:`H`.
        head_dim (int): query/key width :math:`C`.
        value_dim (int, optional): value width :math:`C_v` (default
            :math:`C`).
        self_loops (bool): whether leaves attend to themselves.
        resolution (str): ``'block'`` or ``'query'``, as in
            :func:`~pyg_hsa.hsa_attention` (``padded`` applies to
            ``'block'``).
        padded (bool): count the families as the implementation runs them
            (its real work) instead of the algorithm's :math:`b_F`: every
            family of two or more members at the width of the bucket it is
            batched in (see :func:`~pyg_hsa.functional.layout.plan_buckets`;
            unary chains contracted), and, with :obj:`self_loops`, every
            leaf without siblings as a family of one.
    """
    heads, head_dim, value_dim = _check_widths(heads, head_dim, value_dim)
    self_loops = check_bool(self_loops, 'self_loops')
    padded = check_bool(padded, 'padded')
    query = check_variant(resolution, self_loops=self_loops).resolution == \
        'query'
    if not isinstance(tree, Tree):
        tree = Tree.from_parent(tree)
    parent = tree.parent
    num_nodes = parent.numel()
    has_parent = parent >= 0
    children = num_children(parent)
    if query:
        return heads * _query_flops(tree, children, head_dim, value_dim)
    if padded:
        family = _bucket_widths(tree, self_loops)
    else:
        family = children[children > 0]
        if self_loops:  # A root that is itself a leaf attends to itself.
            lone = (~has_parent & (children == 0)).sum()
            family = torch.cat([family, family.new_ones(int(lone))])
    num_internal = int((children > 0).sum())
    num_edges = int(has_parent.sum())
    per_head = (int((family**2).sum()) *
                (2 * head_dim + SOFTMAX_FLOPS + 1 + 2 * value_dim) +
                (2 * head_dim + value_dim) * (num_edges + num_internal) +
                (2 * value_dim + NODE_FLOPS) * num_nodes)
    return heads * per_head


def _query_flops(tree: Tree, children: Tensor, head_dim: int,
                 value_dim: int) -> int:
    """Per head: query-resolved HSA's FLOPs (see
    :func:`hsa_attention_flops`)."""
    internal = children > 0
    below = leaves_below(tree.parent, tree.num_leaves)
    pairs = int((below[internal] * children[internal]).sum())
    per_pair = 2 * head_dim + SOFTMAX_FLOPS + 1 + 2 * value_dim
    edges = int((tree.parent >= 0).sum())
    return (pairs * per_pair +
            (head_dim + value_dim) * (edges + int(internal.sum())) +
            tree.num_leaves * per_pair)


def _bucket_widths(tree: Tree, self_loops: bool) -> Tensor:
    """The width every family of the implementation is computed at."""
    layout = layout_of(tree, self_loops)
    widths = [
        torch.full((bucket.index.size(0), ), bucket.width, dtype=torch.long)
        for bucket in layout.buckets
    ]
    if self_loops:  # leaves without siblings attend to themselves alone
        widths.append(torch.ones(layout.lone_leaves.numel(),
                                 dtype=torch.long))
    return torch.cat(widths) if widths else torch.zeros(0, dtype=torch.long)


def _check_widths(heads, head_dim, value_dim):
    heads = check_int(heads, 'heads', minimum=1)
    head_dim = check_int(head_dim, 'head_dim', minimum=1)
    value_dim = check_int(value_dim, 'value_dim', minimum=1, allow_none=True)
    return heads, head_dim, head_dim if value_dim is None else value_dim
