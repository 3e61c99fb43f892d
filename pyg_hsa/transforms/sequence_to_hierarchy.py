from typing import Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import BaseTransform

from pyg_hsa.utils.checks import check_real, describe
from pyg_hsa.utils.hierarchy import (
    add_level,
    add_root,
    check_fourier_channels,
    check_input,
    data_device,
    fourier_encoding,
    leaf_hetero,
    rank_in_group,
)
from pyg_hsa.utils.token_forest import check_branching, token_levels


class SequenceToHierarchy(BaseTransform):
    r"""Turns a sequence of tokens into a hierarchy: tokens → fixed windows
    → given segments (sentences, paragraphs, ...) → one :obj:`sequence`
    root.

    The input is a :class:`~torch_geometric.data.Data` whose node-level
    attributes (:obj:`x`, :obj:`input_ids`, ...) describe the tokens in
    order; they are kept on the leaf type :obj:`token`, and an
    :obj:`edge_index`, if present, becomes :obj:`('token', 'edge',
    'token')`.

    * **Windows.** :obj:`branching=(b_1, ..., b_L)` adds :obj:`L` window
      levels :obj:`window0 ... window{L-1}` bottom-up: level 1 groups
      :math:`b_1` consecutive tokens, level :math:`l` groups :math:`b_l`
      consecutive level-:math:`(l-1)` windows, so a level-:math:`l` window
      spans :math:`b_1 \cdots b_l` tokens. Windows never cross a segment
      boundary: they restart at the first token of every finest segment
      (a segment's last window may be shorter).
    * **Segments.** :obj:`segments=('sentence', 'paragraph')` names
      per-token attributes holding segment ids (finest first). Each segment
      must be a contiguous run of tokens and lie inside one segment of the
      next coarser attribute. Every segment becomes a node of the type of
      the same name, above the windows.

    Every level exists in every example, even where a segment is shorter
    than a window (its window is then the only child of its parent), so all
    outputs have the same node and edge types and PyG's
    :class:`~torch_geometric.loader.DataLoader` batches them. (The levels
    come from :func:`~pyg_hsa.utils.token_forest.token_levels`, which also
    builds the token forests of
    :func:`~pyg_hsa.integrations.transformers.patch_attention`.)

    The position of a node inside its parent's family is its index
    :math:`i` among its siblings, in sequence order, as Fourier features
    stored in :obj:`pe`:

    .. math::
        \mathrm{pe}_i = \left[\sin(i\,\omega_j),\, \cos(i\,\omega_j)
        \right]_{j < P/2}, \qquad \omega_j = T^{-2j/P}

    with :math:`P` = :obj:`pe_channels` and :math:`T` = :obj:`max_period`.

    Args:
        branching (Sequence[int], optional): children per window, bottom-up.
            (default: :obj:`(2, 4, 8, 16)`)
        segments (Sequence[str], optional): names of per-token segment-id
            attributes, finest first. (default: :obj:`None`)
        pe_channels (int, optional): width of :obj:`pe` (even).
            (default: :obj:`16`)
        max_period (float, optional): the longest wavelength of the Fourier
            features. (default: :obj:`10000.0`)
    """
    leaf_type = 'token'
    root_type = 'sequence'

    def __init__(
        self,
        branching: Optional[Sequence[int]] = (2, 4, 8, 16),
        segments: Optional[Sequence[str]] = None,
        pe_channels: int = 16,
        max_period: float = 10000.0,
    ):
        self.branching = check_branching(branching)
        if isinstance(segments, str):
            segments = (segments, )
        if segments is not None and not isinstance(segments, Sequence):
            raise ValueError(f"'segments' must be a sequence of attribute "
                             f"names (got {segments!r})")
        self.segments = tuple(segments or ())
        for name in self.segments:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"'segments' must name token attributes "
                                 f"(got {name!r})")
            if name in (self.leaf_type, self.root_type) or \
                    name.startswith('window'):
                raise ValueError(f"'segments' entry {name!r} clashes with "
                                 f"a node type of the hierarchy")
        if len(set(self.segments)) != len(self.segments):
            raise ValueError(f"'segments' has repeated names "
                             f"{self.segments}")
        self.pe_channels = check_fourier_channels(pe_channels, 'pe_channels')
        self.max_period = check_real(max_period, 'max_period', minimum=1,
                                     strict=True)

    def forward(self, data: Data) -> HeteroData:
        num_tokens = check_input(data, 'SequenceToHierarchy', 'token')
        segment_ids = [
            _segment_ids(data, name, num_tokens) for name in self.segments
        ]
        _check_nested(segment_ids, self.segments)

        out = leaf_hetero(data, self.leaf_type, 'edge')
        device = data_device(data)
        sequence = torch.zeros(num_tokens, dtype=torch.long, device=device)
        levels = token_levels(sequence, self.branching, segment_ids)
        names = [f'window{i}' for i in range(len(self.branching))]
        child_type = self.leaf_type
        for name, level in zip(names + list(self.segments), levels):
            child_type = self._nest(out, child_type, name, level.parent,
                                    level.num_nodes)

        add_root(out, child_type, self.root_type, num_tokens, device)
        out[child_type].pe = self._pe(torch.zeros(
            out[child_type].num_nodes, dtype=torch.long, device=device))
        return out

    def _nest(self, out: HeteroData, child_type: str, parent_type: str,
              parent: Tensor, num_parents: int) -> str:
        add_level(out, child_type, parent_type, parent, num_parents)
        out[child_type].pe = self._pe(parent)
        return parent_type

    def _pe(self, parent: Tensor) -> Tensor:
        # Children are numbered in sequence order, so the rank inside the
        # parent is the index within the parent window.
        return fourier_encoding(rank_in_group(parent), self.pe_channels,
                                self.max_period)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(branching={self.branching}, '
                f'segments={self.segments or None}, '
                f'pe_channels={self.pe_channels}, '
                f'max_period={self.max_period})')


def _segment_ids(data: Data, name: str, num_tokens: int) -> Tensor:
    """The attribute's segment ids relabelled to ``0, 1, ...`` in order."""
    if name not in data:
        raise ValueError(f"The input has no attribute '{name}' (named in "
                         f"'segments'): it must hold a segment id per token")
    ids = data[name]
    if not isinstance(ids, Tensor) or ids.dim() != 1 or \
            ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"Attribute '{name}' must be an integer tensor of "
                         f"shape [{num_tokens}] (got {describe(ids)})")
    if ids.numel() != num_tokens:
        raise ValueError(f"Attribute '{name}' has {ids.numel()} entries but "
                         f"the sequence has {num_tokens} tokens")
    change = torch.ones_like(ids, dtype=torch.bool)
    change[1:] = ids[1:] != ids[:-1]
    relabelled = torch.cumsum(change.long(), 0) - 1
    if int(relabelled[-1]) + 1 != torch.unique(ids).numel():
        raise ValueError(f"Segments in '{name}' must be contiguous runs of "
                         f"tokens (some id appears in two separate runs)")
    return relabelled


def _check_nested(segment_ids, names) -> None:
    for finer, coarser, fine_name, coarse_name in zip(
            segment_ids, segment_ids[1:], names, names[1:]):
        change = torch.ones_like(finer, dtype=torch.bool)
        change[1:] = finer[1:] != finer[:-1]
        coarse_change = torch.ones_like(coarser, dtype=torch.bool)
        coarse_change[1:] = coarser[1:] != coarser[:-1]
        crossing = coarse_change & ~change
        if bool(crossing.any()):
            token = int(crossing.nonzero()[0])
            raise ValueError(f"A '{fine_name}' segment crosses a "
                             f"'{coarse_name}' boundary at token {token}; "
                             f"segments must nest (finest first)")
