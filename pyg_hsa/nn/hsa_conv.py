from typing import Dict, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import HeteroDictLinear

from pyg_hsa.functional import hsa_attention
from pyg_hsa.functional.variants import check_variant
from pyg_hsa.nn.conv_inputs import (
    Channels,
    check_finite_inputs,
    check_finite_projections,
    check_leaves,
    check_positions,
    leaf_linear,
    resolve_tree,
)
from pyg_hsa.tree import Tree
from pyg_hsa.utils.checks import check_bool, check_int, check_real


class HSAConv(MessagePassing):
    r"""The Hierarchical Self-Attention operator from the `"Hierarchical
    Self-Attention: Generalizing Neural Attention Mechanics to Multi-Scale
    Problems" <https://arxiv.org/abs/2509.15448>`_ paper.

    Leaves of a hierarchy (atoms, points, tokens, ...) attend to each other
    through the tree: for leaf :math:`i`,

    .. math::
        \mathbf{x}^{\prime}_i = \mathbf{W}_{\mathrm{skip}} \mathbf{x}_i +
        \big\Vert_{h=1}^{H} \sum_j \Theta^{(h)}_{ij}
        \mathbf{W}^{(h)}_v \mathbf{x}_j,

    where :math:`\Theta^{(h)}` is the attention matrix that is constant on
    the sibling blocks of the tree and closest in KL divergence to softmax
    attention with logits :math:`\langle \mathrm{LN}(\mathbf{W}_q^{(h)}
    \mathbf{x}_i), \mathrm{LN}(\mathbf{W}_k^{(h)} \mathbf{x}_j)\rangle /
    \sqrt{C}` plus :math:`\langle \mathbf{W}_e^{(h)} \mathbf{e}_A,
    \mathbf{W}_e^{(h)} \mathbf{e}_B \rangle` for the sibling groups
    :math:`A \ni i, B \ni j` (see :func:`~pyg_hsa.hsa_attention`). It is
    computed exactly in time linear in the number of tree nodes and sibling
    pairs: segment reductions up the tree, one batched softmax per family
    width, and a pass down the tree. The layer subclasses
    :class:`~torch_geometric.nn.conv.MessagePassing`, although its messages
    flow along the hierarchy rather than through :meth:`propagate` (so
    propagate hooks and explainers do not apply), because it is meant to
    sit where PyG expects a convolution: code that collects a model's
    layers with ``isinstance(module, MessagePassing)`` finds it.

    Args:
        in_channels (int or Dict[str, int]): Size of each leaf feature, or
            ``-1`` for lazy initialisation; a dictionary of sizes per leaf
            node type for hierarchies with several kinds of leaves.
        out_channels (int): Size of each output per head.
        heads (int, optional): Number of attention heads. (default: :obj:`1`)
        concat (bool, optional): If :obj:`False`, heads are averaged instead
            of concatenated. (default: :obj:`True`)
        pos_channels (int or Dict[str, int], optional): Size of the
            position-in-family vectors :obj:`pe` (``-1`` for lazy, a
            dictionary for a separate projection per node type). If
            :obj:`None`, positions are not used. (default: :obj:`None`)
        self_loops (bool, optional): If :obj:`True`, every leaf also attends
            to itself, so that a one-level hierarchy is exactly softmax
            attention. (default: :obj:`False`)
        qk_norm (bool, optional): Apply LayerNorm to queries and keys per
            head. (default: :obj:`True`)
        dropout (float, optional): Dropout probability of the per-family
            attention weights during training. (default: :obj:`0.`)
        bias (bool, optional): If :obj:`False`, the skip connection has no
            bias. (default: :obj:`True`)
        root_weight (bool, optional): If :obj:`False`, drop the skip
            connection :math:`\mathbf{W}_{\mathrm{skip}} \mathbf{x}_i`.
            (default: :obj:`True`)
        resolution (str, optional): :obj:`'block'` (the paper's HSA) or
            :obj:`'query'` (every leaf's own projection of its softmax row,
            never further from softmax attention). What each variant
            supports is declared in :mod:`~pyg_hsa.functional.variants`
            (query resolution: no attention dropout, no attention weights);
            an unsupported combination raises a :class:`ValueError` here.
            (default: :obj:`'block'`)
        causal (bool, optional): Leaves attend only to themselves and the
            blocks left of their path (a smaller first leaf index); needs
            :obj:`resolution='query'` and :obj:`self_loops=True`.
            (default: :obj:`False`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** leaf features :math:`(N, F)` and a
          :class:`~pyg_hsa.Tree` (or parent vector), optional positions
          :math:`(M, P)` for all :math:`M` tree nodes; or dictionaries of
          those per node type with a tree from
          :meth:`~pyg_hsa.Tree.from_hetero` (or an :obj:`edge_index_dict`)
        - **output:** :math:`(N, H \cdot C)` or :math:`(N, C)` if
          :obj:`concat=False` (a dictionary per leaf type for dictionary
          input)
    """
    def __init__(
        self,
        in_channels: Channels,
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        pos_channels: Optional[Channels] = None,
        self_loops: bool = False,
        qk_norm: bool = True,
        dropout: float = 0.0,
        bias: bool = True,
        root_weight: bool = True,
        resolution: str = 'block',
        causal: bool = False,
        **kwargs,
    ):
        kwargs.setdefault('aggr', 'add')
        super().__init__(node_dim=0, **kwargs)
        self.in_channels = in_channels
        self.out_channels = check_int(out_channels, 'out_channels', 1)
        self.heads = heads = check_int(heads, 'heads', 1)
        self.concat = check_bool(concat, 'concat')
        self.pos_channels = pos_channels
        self.self_loops = check_bool(self_loops, 'self_loops')
        self.qk_norm = check_bool(qk_norm, 'qk_norm')
        self.dropout = check_real(dropout, 'dropout', 0.0)
        if self.dropout >= 1.0:
            raise ValueError(f"'dropout' must lie in [0, 1) (got {dropout})")
        self.root_weight = check_bool(root_weight, 'root_weight')
        bias = check_bool(bias, 'bias')
        self.causal = check_bool(causal, 'causal')
        # What the variant cannot do is refused now, not at the first call
        # (hsa_attention checks the same per call, e.g. attention weights).
        check_variant(resolution, self.causal, self_loops=self.self_loops,
                      dropout=self.dropout,
                      positions=pos_channels is not None)
        self.resolution = resolution

        width = heads * self.out_channels
        self.lin_query = leaf_linear(in_channels, width)
        self.lin_key = leaf_linear(in_channels, width)
        self.lin_value = leaf_linear(in_channels, width)
        if pos_channels is not None:
            self.lin_pos = leaf_linear(pos_channels, width, bias=False)
        else:
            self.register_parameter('lin_pos', None)
        if self.qk_norm:
            self.norm_query = torch.nn.LayerNorm(self.out_channels)
            self.norm_key = torch.nn.LayerNorm(self.out_channels)
        else:
            self.register_parameter('norm_query', None)
            self.register_parameter('norm_key', None)
        if self.root_weight:
            self.lin_skip = leaf_linear(
                in_channels, width if self.concat else self.out_channels,
                bias=bias)
        else:
            self.register_parameter('lin_skip', None)

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        for module in (self.lin_query, self.lin_key, self.lin_value,
                       self.lin_pos, self.norm_query, self.norm_key,
                       self.lin_skip):
            if module is not None:
                module.reset_parameters()

    def forward(
        self,
        x: Union[Tensor, Dict[str, Tensor]],
        tree: Union[Tree, Tensor, Mapping],
        pe: Union[Tensor, Dict[str, Tensor], None] = None,
        return_attention_weights: Optional[bool] = None,
        *,
        validate: bool = False,
    ):
        r"""Runs the layer.

        Args:
            x (Tensor or Dict[str, Tensor]): leaf features ``[N, F]`` in the
                tree's leaf order, or a dictionary of them per leaf type.
            tree (Tree, LongTensor or dict): the hierarchy: a compiled
                :class:`~pyg_hsa.Tree` (build it once per batch and share it
                across layers), a parent vector, or an
                :obj:`edge_index_dict` of nesting edges.
            pe (Tensor or Dict[str, Tensor], optional): position-in-family
                vectors ``[M, P]`` of all tree nodes, or a dictionary of them
                per node type (missing types get zeros).
            return_attention_weights (bool, optional): If set to a bool
                (:obj:`True`, or :obj:`False` as in PyG's attention layers),
                also return ``(edge_index, alpha)``: the sibling edges in
                the tree's global numbering and their ``[E, H]`` weights.
            validate (bool, optional): If :obj:`True`, also check that
                :obj:`x` and :obj:`pe` hold no NaN or infinity (and that the
                projections of finite inputs stay finite), and raise a
                :class:`ValueError` naming the argument, the node type and
                the first offending row. Off by default, as the check reads
                every entry and synchronises with the device; shapes, dtypes
                and devices are always checked, and the hierarchy when its
                :class:`~pyg_hsa.Tree` is built. (default: :obj:`False`)
        """
        validate = check_bool(validate, 'validate')
        hetero = isinstance(x, Mapping)
        tree = resolve_tree(self, x, tree, hetero)
        if hetero:
            check_leaves(self, x, tree)
        check_positions(self, pe, hetero, tree)
        if validate:
            check_finite_inputs(x, pe, hetero, tree)

        num_leaves, heads, channels = tree.num_leaves, self.heads, \
            self.out_channels
        q = self._project(self.lin_query, x, hetero, tree)
        k = self._project(self.lin_key, x, hetero, tree)
        v = self._project(self.lin_value, x, hetero, tree)
        if q.size(0) != num_leaves:
            raise ValueError(f"'x' has {q.size(0)} rows but the tree has "
                             f"{num_leaves} leaves")
        q = q.view(num_leaves, heads, channels)
        k = k.view(num_leaves, heads, channels)
        v = v.view(num_leaves, heads, channels)
        if self.qk_norm:
            q, k = self.norm_query(q), self.norm_key(k)

        pos = self._positions(pe, hetero, tree)
        if validate:
            check_finite_projections(tree, hetero, query=q, key=k, value=v,
                                     position=pos)
        # As in PyG's attention layers, a bool (True or False) asks for the
        # weights.
        weights = isinstance(return_attention_weights, (bool, np.bool_))
        result = hsa_attention(
            q, k, v, tree, pe=pos, self_loops=self.self_loops,
            dropout=self.dropout if self.training else 0.0,
            return_attention_weights=weights, resolution=self.resolution,
            causal=self.causal)
        out, attention = result if weights else (result, None)

        out = out.reshape(num_leaves, heads * channels) if self.concat \
            else out.mean(dim=1)
        if self.root_weight:
            out = out + self._project(self.lin_skip, x, hetero, tree)

        if hetero:
            out = {
                nt: out[slice(*tree.node_slices[nt])]
                for nt in tree.leaf_types
            }
        if weights:
            return out, attention
        return out

    @staticmethod
    def _project(lin, x, hetero: bool, tree: Tree) -> Tensor:
        if not hetero:
            return lin(x)
        if isinstance(lin, HeteroDictLinear):
            out = lin({nt: x[nt] for nt in tree.leaf_types})
        else:
            out = {nt: lin(x[nt]) for nt in tree.leaf_types}
        return torch.cat([out[nt] for nt in tree.leaf_types], dim=0)

    def _positions(self, pe, hetero: bool, tree: Tree) -> Optional[Tensor]:
        # (Checked by conv_inputs.check_positions in forward.)
        if pe is None:
            return None
        width = self.heads * self.out_channels
        if not hetero:
            pos = self.lin_pos(pe)
        else:
            if isinstance(self.lin_pos, HeteroDictLinear):
                projected = self.lin_pos(dict(pe))
            else:
                projected = {nt: self.lin_pos(p) for nt, p in pe.items()}
            ref = next(iter(projected.values()))
            pos = ref.new_zeros(tree.num_nodes, width)
            for nt, p in projected.items():
                lo, hi = tree.node_slices[nt]
                pos = pos.index_copy(
                    0, torch.arange(lo, hi, device=pos.device), p)
        return pos.view(tree.num_nodes, self.heads, self.out_channels)

    def __repr__(self) -> str:
        options = ''
        if self.resolution != 'block':
            options += f", resolution='{self.resolution}'"
        if self.causal:
            options += ', causal=True'
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, heads={self.heads}{options})')
