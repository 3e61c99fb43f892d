"""The inputs of :class:`~pyg_hsa.nn.HSAConv`: what only the layer can
check (features and positions against its projections and the hierarchy's
node types). Tensor checks of the attention itself are the functional
core's (:mod:`pyg_hsa.functional.checks`)."""
from typing import Dict, Mapping, Optional, Union

import torch
from torch import Tensor

from torch_geometric.data import HeteroData
from torch_geometric.nn.dense.linear import HeteroDictLinear, Linear

from pyg_hsa.functional.checks import non_finite_row
from pyg_hsa.tree import Tree
from pyg_hsa.utils.checks import describe

Channels = Union[int, Dict[str, int]]


def resolve_tree(layer, x, tree, hetero: bool) -> Tree:
    """The :class:`~pyg_hsa.Tree` of the call (built from a parent vector,
    a ``HeteroData`` or an ``edge_index_dict`` where one is given)."""
    if hetero:
        return hetero_tree(tree, x)
    if not isinstance(x, Tensor):
        raise TypeError(f"'x' must be a tensor or a dictionary of tensors "
                        f"(got {describe(x)})")
    if isinstance(tree, Mapping):
        raise TypeError("A dictionary of nesting edges needs dictionary "
                        "input 'x' (leaf type -> features)")
    if x.dim() != 2:
        raise ValueError(f"'x' must have shape [N, F] (got "
                         f"{tuple(x.shape)})")
    if isinstance(layer.lin_query, HeteroDictLinear):
        raise TypeError("The layer was built with 'in_channels' per leaf "
                        "node type, so 'x' must be a dictionary (leaf type "
                        "-> features)")
    if isinstance(tree, Tensor):
        tree = Tree.for_rows(tree, x.size(0), 'x')
    if not isinstance(tree, Tree):
        raise TypeError(f"'tree' must be a pyg_hsa.Tree, a parent "
                        f"LongTensor or an edge_index_dict (got "
                        f"{describe(tree)})")
    check_features(x, "'x'", layer.lin_query)
    check_on_tree(x, "'x'", tree)
    return tree


def check_leaves(layer, x_dict: Mapping[str, Tensor], tree: Tree) -> None:
    """Per leaf type: a tensor, of the width the layer expects, with one
    row per node of the type."""
    for nt in tree.leaf_types:
        if nt in x_dict and not isinstance(x_dict[nt], Tensor):
            raise TypeError(f"'x['{nt}']' must be a tensor (got "
                            f"{type(x_dict[nt]).__name__})")
    if not isinstance(layer.in_channels, Mapping):
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
        check_features(x_dict[nt], f"'x['{nt}']'",
                       type_linear(layer.lin_query, nt, 'in_channels'))
        check_on_tree(x_dict[nt], f"'x['{nt}']'", tree)
        lo, hi = tree.node_slices[nt]
        if x_dict[nt].size(0) != hi - lo:
            raise ValueError(f"'x['{nt}']' has {x_dict[nt].size(0)} rows "
                             f"but the hierarchy has {hi - lo} nodes of "
                             f"type '{nt}'")


def check_positions(layer, pe, hetero: bool, tree: Tree) -> None:
    """:obj:`pe`: one tensor ``[M, P]`` or a dictionary per node type, of
    the widths the layer projects."""
    if pe is None:
        return
    if layer.lin_pos is None:
        raise ValueError("'pe' was given but the layer was built with "
                         "pos_channels=None; set pos_channels to the "
                         "width of 'pe'")
    if not hetero:
        if isinstance(layer.lin_pos, HeteroDictLinear):
            raise TypeError("The layer was built with 'pos_channels' "
                            "per node type, so 'pe' must be a "
                            "dictionary (node type -> positions)")
        if not isinstance(pe, Tensor) or pe.dim() != 2 or \
                pe.size(0) != tree.num_nodes:
            raise ValueError(f"'pe' must have shape [M, P] with M = "
                             f"{tree.num_nodes} tree nodes (got "
                             f"{describe(pe)})")
        check_features(pe, "'pe'", layer.lin_pos, 'pos_channels')
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
    if isinstance(layer.lin_pos, HeteroDictLinear):
        unknown = [nt for nt in pe if nt not in layer.lin_pos.types]
        if unknown:
            raise ValueError(f"'pe' has node types {unknown} that "
                             f"'pos_channels' does not list")
    for nt, p in pe.items():
        name = f"'pe['{nt}']'"
        if not isinstance(p, Tensor):
            raise TypeError(f"{name} must be a tensor (got "
                            f"{type(p).__name__})")
        check_features(p, name,
                       type_linear(layer.lin_pos, nt, 'pos_channels'),
                       'pos_channels')
        lo, hi = tree.node_slices[nt]
        if p.size(0) != hi - lo:
            raise ValueError(f"{name} has {p.size(0)} rows but the "
                             f"hierarchy has {hi - lo} nodes of type "
                             f"'{nt}'")


def check_finite_inputs(x, pe, hetero: bool, tree: Tree) -> None:
    """``validate=True``: :obj:`x` and :obj:`pe` hold no NaN or infinity."""
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


def type_linear(lin: torch.nn.Module, node_type: str,
                argument: str) -> torch.nn.Module:
    """The projection of one node type (a shared one for integer
    channels)."""
    if not isinstance(lin, HeteroDictLinear):
        return lin
    if node_type not in lin.lins:
        raise ValueError(f"Node type '{node_type}' has no entry in "
                         f"'{argument}' (it lists {list(lin.lins)})")
    return lin.lins[node_type]


def check_features(x: Tensor, name: str, lin: Linear,
                   argument: str = 'in_channels') -> None:
    """``[rows, F]`` input :obj:`x` (called :obj:`name` in messages) fits
    the projection :obj:`lin`: its width, device and dtype."""
    if x.dim() != 2:
        letter = 'P' if argument == 'pos_channels' else 'F'
        raise ValueError(f"{name} must have shape [num_nodes, {letter}] "
                         f"(got {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (got "
                        f"{x.dtype}); convert it with .float()")
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


def check_on_tree(x: Tensor, name: str, tree: Tree) -> None:
    """Input :obj:`x` (called :obj:`name` in messages) is on the tree's
    device; the functional core would name its projection ``'q'``. (The
    positions :obj:`pe` must be on the device of the layer, so of :obj:`x`,
    which is checked first.)"""
    if x.device != tree.device:
        raise ValueError(f"{name} is on {x.device} but the tree is on "
                         f"{tree.device}; move one with .to()")


def check_finite_projections(tree: Tree, hetero: bool,
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


def leaf_linear(in_channels: Channels, out_channels: int,
                bias: bool = True) -> torch.nn.Module:
    if isinstance(in_channels, Mapping):
        return HeteroDictLinear(dict(in_channels), out_channels, bias=bias)
    return Linear(in_channels, out_channels, bias=bias)


def hetero_tree(tree, x_dict: Mapping[str, Tensor]) -> Tree:
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
