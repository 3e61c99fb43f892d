from typing import Dict, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_geometric.nn import GINConv, GINEConv, global_mean_pool
from torch_geometric.nn.dense.linear import Linear

from pyg_hsa.nn.hsa_conv import HSAConv
from pyg_hsa.tree import Tree


def _mlp(in_channels: int, hidden: int, out_channels: int):
    return torch.nn.Sequential(Linear(in_channels, hidden), torch.nn.ReLU(),
                               Linear(hidden, out_channels))


def _global_update(conv: HSAConv, h: Tensor, tree: Tree, pe) -> Tensor:
    if not isinstance(pe, Mapping):
        return conv(h, tree, pe)
    # Positions per node type: the layer takes the leaves per type too.
    by_type = {nt: h[slice(*tree.node_slices[nt])] for nt in tree.leaf_types}
    out = conv(by_type, tree, pe)
    return torch.cat([out[nt] for nt in tree.leaf_types], dim=0)


class HSAGPS(torch.nn.Module):
    r"""A GPS-style graph-level model: every layer adds a local
    message-passing update over the leaf graph (GINE on bond/mesh edges, or
    GIN without edge features) and a global :class:`HSAConv` update over the
    hierarchy to the residual stream,

    .. math::
        \mathbf{h} = \mathrm{LN}\big(\mathbf{x} + \mathrm{GINE}(\mathbf{x},
        \mathcal{E}) + \mathrm{HSA}(\mathbf{x}, \mathcal{T})\big), \qquad
        \mathbf{x}^{\prime} = \mathrm{LN}(\mathbf{h} + \mathrm{MLP}(
        \mathbf{h})),

    then mean-pools the leaves of every root and applies an MLP head.

    Args:
        in_channels (int): Width of the leaf features (``-1`` for lazy).
        hidden_channels (int): Width of the residual stream (divisible by
            :obj:`heads`).
        out_channels (int): Number of graph-level outputs.
        num_layers (int): Number of GPS layers.
        heads (int, optional): HSA heads. (default: :obj:`4`)
        edge_dim (int, optional): Width of leaf edge features; enables GINE.
            (default: :obj:`None`)
        pos_channels (int or Dict[str, int], optional): Width of the
            tree's :obj:`pe` vectors, or a dictionary of widths per node
            type (then :meth:`forward` takes :obj:`pe` per node type, as
            the hierarchy transforms store it). (default: :obj:`None`)
        dropout (float, optional): Dropout in the residual branches.
            (default: :obj:`0.`)
    """
    def __init__(self, in_channels: int, hidden_channels: int,
                 out_channels: int, num_layers: int, heads: int = 4,
                 edge_dim: Optional[int] = None,
                 pos_channels: Union[int, Dict[str, int], None] = None,
                 dropout: float = 0.0):
        super().__init__()
        if hidden_channels % heads != 0:
            raise ValueError(f"'hidden_channels' ({hidden_channels}) must be "
                             f"divisible by 'heads' ({heads})")
        if num_layers < 1:
            raise ValueError(f"'num_layers' must be at least 1 "
                             f"(got {num_layers})")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.out_channels = out_channels
        self.num_layers = num_layers
        self.dropout = dropout
        self.encoder = Linear(in_channels, hidden_channels)
        self.local_convs = torch.nn.ModuleList()
        self.global_convs = torch.nn.ModuleList()
        self.norms = torch.nn.ModuleList()
        self.ffns = torch.nn.ModuleList()
        self.ffn_norms = torch.nn.ModuleList()
        for _ in range(num_layers):
            mlp = _mlp(hidden_channels, hidden_channels, hidden_channels)
            self.local_convs.append(
                GINEConv(mlp, edge_dim=edge_dim) if edge_dim is not None
                else GINConv(mlp))
            self.global_convs.append(
                HSAConv(hidden_channels, hidden_channels // heads, heads,
                        pos_channels=pos_channels, self_loops=True,
                        root_weight=False))
            self.norms.append(torch.nn.LayerNorm(hidden_channels))
            self.ffns.append(
                _mlp(hidden_channels, 2 * hidden_channels, hidden_channels))
            self.ffn_norms.append(torch.nn.LayerNorm(hidden_channels))
        self.head = _mlp(hidden_channels, hidden_channels, out_channels)
        self.reset_parameters()

    def reset_parameters(self):
        self.encoder.reset_parameters()
        for module in self.modules():
            if module is not self and hasattr(module, 'reset_parameters'):
                module.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, tree: Union[Tree, Tensor],
                edge_attr: Optional[Tensor] = None,
                pe: Union[Tensor, Dict[str, Tensor], None] = None) -> Tensor:
        """Leaf features and leaf edges in, ``[num_roots, out_channels]``
        out (one row per example of the batch, in root order).

        :obj:`x` holds all leaves in the tree's leaf order (for a tree from
        :meth:`~pyg_hsa.Tree.from_hetero`, the leaf types one after the
        other); :obj:`pe` is ``[M, P]`` for all tree nodes, or a dictionary
        of positions per node type."""
        if isinstance(tree, Tensor):
            tree = Tree.from_parent(tree, num_leaves=x.size(0))
        if isinstance(pe, Mapping) and tree.node_slices is None:
            raise ValueError("'pe' given per node type needs a tree built "
                             "with Tree.from_hetero (it names the types)")
        h = self.encoder(x)
        for local, glob, norm, ffn, ffn_norm in zip(
                self.local_convs, self.global_convs, self.norms, self.ffns,
                self.ffn_norms):
            if edge_attr is not None:
                h_local = local(h, edge_index, edge_attr)
            else:
                h_local = local(h, edge_index)
            h_global = _global_update(glob, h, tree, pe)
            h = norm(h + F.dropout(h_local, self.dropout, self.training) +
                     F.dropout(h_global, self.dropout, self.training))
            h = ffn_norm(h + F.dropout(ffn(h), self.dropout, self.training))
        pooled = global_mean_pool(h, tree.batch, size=tree.num_roots)
        return self.head(pooled)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.hidden_channels}, {self.out_channels}, '
                f'num_layers={self.num_layers})')
