from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_geometric.nn.dense.linear import Linear

from pyg_hsa.functional.variants import check_variant
from pyg_hsa.nn.hsa_conv import HSAConv
from pyg_hsa.tree import Tree
from pyg_hsa.utils.checks import check_bool, check_real


class HSAEncoderLayer(torch.nn.Module):
    r"""The transformer encoder block of the HSA paper, with
    :class:`HSAConv` in place of softmax attention (post-norm):

    .. math::
        \mathbf{h} &= \mathrm{LN}\big(\mathbf{x} + \mathrm{Dropout}(
        \mathbf{W}_o\, \mathrm{HSA}(\mathbf{x}))\big) \\
        \mathbf{x}^{\prime} &= \mathrm{LN}\big(\mathbf{h} +
        \mathrm{Dropout}(\mathrm{FFN}(\mathbf{h}))\big)

    HSA itself adds no parameters beyond the per-head query/key/value
    projections (with LayerNorm on queries and keys).

    Args:
        channels (int): Width of the leaf features (divisible by
            :obj:`heads`).
        heads (int, optional): Number of attention heads. (default: :obj:`1`)
        ffn_channels (int, optional): Hidden width of the feed-forward
            network. (default: :obj:`4 * channels`)
        pos_channels (int, optional): Width of the :obj:`pe` vectors, if
            used. (default: :obj:`None`)
        self_loops (bool, optional): Leaves also attend to themselves.
            (default: :obj:`True`)
        dropout (float, optional): Dropout after attention and
            feed-forward. (default: :obj:`0.`)
        attention_dropout (float, optional): Dropout on the attention
            weights; :obj:`None` takes :obj:`dropout`. Query resolution has
            none (see :mod:`~pyg_hsa.functional.variants`): with
            :obj:`resolution='query'` and :obj:`dropout > 0`, pass
            :obj:`attention_dropout=0.0`; anything else raises a
            :class:`ValueError`. (default: :obj:`None`)
        resolution (str, optional): :obj:`'block'` or :obj:`'query'`, see
            :class:`HSAConv`. (default: :obj:`'block'`)
        causal (bool, optional): Causal attention (with
            :obj:`resolution='query'`), see :class:`HSAConv`.
            (default: :obj:`False`)
    """
    def __init__(self, channels: int, heads: int = 1,
                 ffn_channels: Optional[int] = None,
                 pos_channels: Optional[int] = None, self_loops: bool = True,
                 dropout: float = 0.0, resolution: str = 'block',
                 causal: bool = False,
                 attention_dropout: Optional[float] = None):
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"'channels' ({channels}) must be divisible by "
                             f"'heads' ({heads})")
        self.channels = channels
        self.heads = heads
        self.ffn_channels = ffn_channels or 4 * channels
        self.dropout = dropout
        if attention_dropout is None:
            attention_dropout = dropout
            check_variant(resolution, check_bool(causal, 'causal'),
                          self_loops=check_bool(self_loops, 'self_loops'),
                          dropout=check_real(dropout, 'dropout'),
                          hint="HSAEncoderLayer's 'dropout' also sets the "
                          "attention dropout: pass attention_dropout=0.0 "
                          "to keep dropout after attention and "
                          "feed-forward only")
        self.attn = HSAConv(channels, channels // heads, heads=heads,
                            pos_channels=pos_channels, self_loops=self_loops,
                            dropout=attention_dropout, root_weight=False,
                            resolution=resolution, causal=causal)
        self.lin_out = Linear(channels, channels)
        self.norm_attn = torch.nn.LayerNorm(channels)
        self.ffn = torch.nn.Sequential(
            Linear(channels, self.ffn_channels),
            torch.nn.GELU(),
            torch.nn.Dropout(dropout),
            Linear(self.ffn_channels, channels),
        )
        self.norm_ffn = torch.nn.LayerNorm(channels)
        self.reset_parameters()

    def reset_parameters(self):
        self.attn.reset_parameters()
        self.lin_out.reset_parameters()
        self.norm_attn.reset_parameters()
        for module in self.ffn:
            if hasattr(module, 'reset_parameters'):
                module.reset_parameters()
        self.norm_ffn.reset_parameters()

    def forward(self, x: Tensor, tree: Union[Tree, Tensor],
                pe: Optional[Tensor] = None) -> Tensor:
        """Leaf features ``[N, channels]`` in, same shape out."""
        h = self.lin_out(self.attn(x, tree, pe))
        h = self.norm_attn(x + F.dropout(h, self.dropout, self.training))
        out = F.dropout(self.ffn(h), self.dropout, self.training)
        return self.norm_ffn(h + out)

    def __repr__(self) -> str:
        options = ''
        if self.attn.resolution != 'block':
            options += f", resolution='{self.attn.resolution}'"
        if self.attn.causal:
            options += ', causal=True'
        return (f'{self.__class__.__name__}({self.channels}, '
                f'heads={self.heads}{options})')
