from typing import Dict, Mapping, Optional, Union

import torch
from torch import Tensor

from torch_geometric.data import HeteroData
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.dense.linear import HeteroDictLinear, Linear

from pyg_hsa.functional import hsa_attention
from pyg_hsa.functional.checks import check_float_on_tree, non_finite_row
from pyg_hsa.tree import Tree, _shape

Channels = Union[int, Dict[str, int]]


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
    :class:`~torch_geometric.nn.conv.MessagePassing` for PyG's conventions,
    but its messages flow along the hierarchy rather than through
    :meth:`propagate`, so propagate hooks and explainers do not apply.

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
        **kwargs,
    ):
        kwargs.setdefault('aggr', 'add')
        super().__init__(node_dim=0, **kwargs)
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"'out_channels' must be a positive integer "
                             f"(got {out_channels!r})")
        if not isinstance(heads, int) or heads < 1:
            raise ValueError(f"'heads' must be a positive integer "
                             f"(got {heads!r})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"'dropout' must lie in [0, 1) (got {dropout})")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.concat = concat
        self.pos_channels = pos_channels
        self.self_loops = self_loops
        self.qk_norm = qk_norm
        self.dropout = dropout
        self.root_weight = root_weight

        width = heads * out_channels
        self.lin_query = _leaf_linear(in_channels, width)
        self.lin_key = _leaf_linear(in_channels, width)
        self.lin_value = _leaf_linear(in_channels, width)
        if pos_channels is not None:
            self.lin_pos = _leaf_linear(pos_channels, width, bias=False)
        else:
            self.register_parameter('lin_pos', None)
        if qk_norm:
            self.norm_query = torch.nn.LayerNorm(out_channels)
            self.norm_key = torch.nn.LayerNorm(out_channels)
        else:
            self.register_parameter('norm_query', None)
            self.register_parameter('norm_key', None)
        if root_weight:
            self.lin_skip = _leaf_linear(
                in_channels, width if concat else out_channels, bias=bias)
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
            return_attention_weights (bool, optional): If :obj:`True`, also
                return ``(edge_index, alpha)``: the sibling edges in the
                tree's global numbering and their ``[E, H]`` weights.
            validate (bool, optional): If :obj:`True`, also check that
                :obj:`x` and :obj:`pe` hold no NaN or infinity (and that the
                projections of finite inputs stay finite), and raise a
                :class:`ValueError` naming the argument, the node type and
                the first offending row. Off by default, as the check reads
                every entry and synchronises with the device; shapes, dtypes
                and devices are always checked, and the hierarchy when its
                :class:`~pyg_hsa.Tree` is built. (default: :obj:`False`)
        """
        hetero = isinstance(x, Mapping)
        if hetero:
            tree = _hetero_tree(tree, x)
            self._check_leaves(x, tree)
        else:
            if not isinstance(x, Tensor):
                raise TypeError(f"'x' must be a tensor or a dictionary of "
                                f"tensors (got {type(x).__name__})")
            if isinstance(tree, Mapping):
                raise TypeError("A dictionary of nesting edges needs "
                                "dictionary input 'x' (leaf type -> "
                                "features)")
            if x.dim() != 2:
                raise ValueError(f"'x' must have shape [N, F] "
                                 f"(got {tuple(x.shape)})")
            if isinstance(self.lin_query, HeteroDictLinear):
                raise TypeError("The layer was built with 'in_channels' per "
                                "leaf node type, so 'x' must be a "
                                "dictionary (leaf type -> features)")
            if isinstance(tree, Tensor):
                tree = Tree.for_rows(tree, x.size(0), 'x')
            if not isinstance(tree, Tree):
                raise TypeError(f"'tree' must be a pyg_hsa.Tree, a parent "
                                f"LongTensor or an edge_index_dict (got "
                                f"{type(tree).__name__})")
            _check_input(x, "'x'", self.lin_query, tree)
        self._check_positions(pe, hetero, tree)
        if validate:
            self._check_finite_inputs(x, pe, hetero, tree)

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
            _check_finite_projections(tree, hetero, query=q, key=k, value=v,
                                      position=pos)
        result = hsa_attention(
            q, k, v, tree, pos=pos, self_loops=self.self_loops,
            dropout=self.dropout if self.training else 0.0,
            return_attention_weights=bool(return_attention_weights))
        out, attention = (result if return_attention_weights else
                          (result, None))

        out = out.reshape(num_leaves, heads * channels) if self.concat \
            else out.mean(dim=1)
        if self.root_weight:
            out = out + self._project(self.lin_skip, x, hetero, tree)

        if hetero:
            out = {
                nt: out[slice(*tree.node_slices[nt])]
                for nt in tree.leaf_types
            }
        if return_attention_weights:
            return out, attention
        return out

    def _check_leaves(self, x_dict: Mapping[str, Tensor], tree: Tree):
        for nt in tree.leaf_types:
            if nt in x_dict and not isinstance(x_dict[nt], Tensor):
                raise TypeError(f"'x['{nt}']' must be a tensor (got "
                                f"{type(x_dict[nt]).__name__})")
        if not isinstance(self.in_channels, Mapping):
            widths = {nt: x_dict[nt].size(-1) for nt in tree.leaf_types
                      if nt in x_dict}
            if len(set(widths.values())) > 1:
                raise ValueError(f"Leaf types have different feature widths "
                                 f"{widths}; pass in_channels as a dictionary "
                                 f"to project each type separately")
        missing = [nt for nt in tree.leaf_types if nt not in x_dict]
        if missing:
            raise ValueError(f"'x' has no features for leaf node types "
                             f"{missing} of the hierarchy")
        for nt in tree.leaf_types:
            _check_input(x_dict[nt], f"'x['{nt}']'",
                         _type_linear(self.lin_query, nt, 'in_channels'),
                         tree)
            lo, hi = tree.node_slices[nt]
            if x_dict[nt].size(0) != hi - lo:
                raise ValueError(f"'x['{nt}']' has {x_dict[nt].size(0)} rows "
                                 f"but the hierarchy has {hi - lo} nodes of "
                                 f"type '{nt}'")

    @staticmethod
    def _project(lin, x, hetero: bool, tree: Tree) -> Tensor:
        if not hetero:
            return lin(x)
        if isinstance(lin, HeteroDictLinear):
            out = lin({nt: x[nt] for nt in tree.leaf_types})
        else:
            out = {nt: lin(x[nt]) for nt in tree.leaf_types}
        return torch.cat([out[nt] for nt in tree.leaf_types], dim=0)

    def _check_positions(self, pe, hetero: bool, tree: Tree):
        if pe is None:
            return
        if self.lin_pos is None:
            raise ValueError("'pe' was given but the layer was built with "
                             "pos_channels=None; set pos_channels to the "
                             "width of 'pe'")
        if not hetero:
            if isinstance(self.lin_pos, HeteroDictLinear):
                raise TypeError("The layer was built with 'pos_channels' "
                                "per node type, so 'pe' must be a "
                                "dictionary (node type -> positions)")
            if not isinstance(pe, Tensor) or pe.dim() != 2 or \
                    pe.size(0) != tree.num_nodes:
                raise ValueError(f"'pe' must have shape [M, P] with M = "
                                 f"{tree.num_nodes} tree nodes (got "
                                 f"{_shape(pe)})")
            _check_input(pe, "'pe'", self.lin_pos, tree, 'pos_channels')
            return
        if not isinstance(pe, Mapping):
            raise TypeError("With dictionary input 'x', 'pe' must be a "
                            "dictionary (node type -> [num_nodes, P])")
        if not pe:
            raise ValueError("'pe' is an empty dictionary; pass None for "
                             "no positions")
        unknown = [nt for nt in pe if nt not in tree.node_slices]
        if unknown:
            raise ValueError(f"'pe' has node types {unknown} that the "
                             f"hierarchy does not have")
        if isinstance(self.lin_pos, HeteroDictLinear):
            unknown = [nt for nt in pe if nt not in self.lin_pos.types]
            if unknown:
                raise ValueError(f"'pe' has node types {unknown} that "
                                 f"'pos_channels' does not list")
        for nt, p in pe.items():
            name = f"'pe['{nt}']'"
            if not isinstance(p, Tensor):
                raise TypeError(f"{name} must be a tensor (got "
                                f"{type(p).__name__})")
            _check_input(p, name,
                         _type_linear(self.lin_pos, nt, 'pos_channels'),
                         tree, 'pos_channels')
            lo, hi = tree.node_slices[nt]
            if p.size(0) != hi - lo:
                raise ValueError(f"{name} has {p.size(0)} rows but the "
                                 f"hierarchy has {hi - lo} nodes of type "
                                 f"'{nt}'")

    @staticmethod
    def _check_finite_inputs(x, pe, hetero: bool, tree: Tree):
        if hetero:
            named = [(f"'x' of node type '{nt}'", x[nt])
                     for nt in tree.leaf_types]
            named += [(f"'pe' of node type '{nt}'", p)
                      for nt, p in (pe or {}).items()]
        else:
            named = [("'x'", x)] + ([] if pe is None else [("'pe'", pe)])
        for name, tensor in named:
            bad = non_finite_row(tensor)
            if bad is not None:
                raise ValueError(f"{name} has a non-finite value ({bad[1]}) "
                                 f"at row {bad[0]}; expected finite values")

    def _positions(self, pe, hetero: bool, tree: Tree) -> Optional[Tensor]:
        # (Checked by _check_positions.)
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
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, heads={self.heads})')


def _type_linear(lin: torch.nn.Module, node_type: str,
                 argument: str) -> torch.nn.Module:
    """The projection of one node type (a shared one for integer
    channels)."""
    if not isinstance(lin, HeteroDictLinear):
        return lin
    if node_type not in lin.lins:
        raise ValueError(f"Node type '{node_type}' has no entry in "
                         f"'{argument}' (it lists {list(lin.lins)})")
    return lin.lins[node_type]


def _check_input(x: Tensor, name: str, lin: Linear, tree: Tree,
                 argument: str = 'in_channels'):
    """``[rows, F]`` input :obj:`x` (called :obj:`name` in messages) fits
    the projection :obj:`lin` and lives where the tree does."""
    if x.dim() != 2:
        letter = 'P' if argument == 'pos_channels' else 'F'
        raise ValueError(f"{name} must have shape [num_nodes, {letter}] "
                         f"(got {tuple(x.shape)})")
    check_float_on_tree(x, name, tree, hint='; convert it with .float()')
    weight = lin.weight
    if x.device != weight.device:
        raise ValueError(f"{name} is on {x.device} but the layer's "
                         f"parameters are on {weight.device}; move one "
                         f"with .to()")
    # (Lazy projections, in_channels -1, take any width once.)
    if lin.in_channels > 0 and x.size(-1) != lin.in_channels:
        raise ValueError(f"{name} has {x.size(-1)} channels but the layer "
                         f"was built with {argument} = {lin.in_channels} "
                         f"for it")
    # (Under autocast the projection casts both.)
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(
            x.device.type):
        raise TypeError(f"{name} has dtype {x.dtype} but the layer's "
                        f"parameters have dtype {weight.dtype}; convert one "
                        f"with .to()")


def _check_finite_projections(tree: Tree, hetero: bool,
                              **projections: Optional[Tensor]):
    for what, x in projections.items():
        bad = None if x is None else non_finite_row(x)
        if bad is None:
            continue
        row = f'row {bad[0]}'
        if hetero:
            for nt, (lo, hi) in tree.node_slices.items():
                if lo <= bad[0] < hi:
                    row = f"row {bad[0] - lo} of node type '{nt}'"
        raise ValueError(f"The layer's {what} projection is non-finite "
                         f"({bad[1]}) at {row} although its inputs 'x' and "
                         f"'pe' are finite: a parameter is NaN or infinite, "
                         f"or the projection overflowed")


def _leaf_linear(in_channels: Channels, out_channels: int,
                 bias: bool = True) -> torch.nn.Module:
    if isinstance(in_channels, Mapping):
        return HeteroDictLinear(dict(in_channels), out_channels, bias=bias)
    return Linear(in_channels, out_channels, bias=bias)


def _hetero_tree(tree, x_dict: Mapping[str, Tensor]) -> Tree:
    if isinstance(tree, HeteroData):
        return Tree.from_hetero(tree)
    if isinstance(tree, Tree):
        if tree.node_slices is None:
            raise ValueError("Dictionary input 'x' needs a tree built with "
                             "Tree.from_hetero (it knows the node types)")
        return tree
    if isinstance(tree, Mapping):
        return Tree.from_hetero(
            tree, num_nodes_dict={nt: x.size(0)
                                  for nt, x in x_dict.items()
                                  if isinstance(x, Tensor) and x.dim()})
    raise TypeError(f"With dictionary input 'x', 'tree' must be a "
                    f"pyg_hsa.Tree from Tree.from_hetero or an "
                    f"edge_index_dict (got {type(tree).__name__})")
