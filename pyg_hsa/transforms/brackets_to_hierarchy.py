import numbers
from typing import Collection, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform

from pyg_hsa.utils.checks import describe
from pyg_hsa.utils.hierarchy import (
    NESTING_RELATION,
    check_fourier_channels,
    check_input,
    fourier_encoding,
    leaf_hetero,
    rank_in_group,
)

TokenIds = Union[int, Collection[int], Tensor]


@functional_transform('brackets_to_hierarchy')
class BracketsToHierarchy(BaseTransform):
    r"""Turns a bracketed token sequence (a prefix expression such as a
    :class:`~pyg_hsa.datasets.ListOps` example, a Lisp s-expression, or
    balanced parentheses) into its parse tree.

    The input is a :class:`~torch_geometric.data.Data` whose :obj:`x`
    holds the token ids in order, ``[L]`` or ``[L, 1]`` (an integer
    tensor). Tokens whose id is in :obj:`opening` open an expression (e.g.
    :obj:`[MAX`), tokens whose id is in :obj:`closing` close the innermost
    open one (e.g. :obj:`]`), all other tokens are arguments. The output is
    a :class:`~torch_geometric.data.HeteroData` with

    * the leaf type :obj:`token`, one node per input token in order, which
      keeps :obj:`x` and every other node-level attribute (an
      :obj:`edge_index` becomes :obj:`('token', 'edge', 'token')`), and
    * one internal type :obj:`expr`, one node per expression, numbered in
      the order of their opening tokens (so expression 0 is the root),
      which nests recursively: :obj:`('expr', 'in', 'expr')` links every
      expression but the root to the expression it is an argument of, and
      :obj:`('token', 'in', 'expr')` every token to the innermost
      expression containing it. Trees of any depth therefore have the same
      node and edge types, and PyG's
      :class:`~torch_geometric.loader.DataLoader` batches them.

    The family (children) of an expression is, in sequence order: its
    opening token, each of its arguments (a token, or a sub-expression
    standing at the place of its opening token) and its closing token, so
    :obj:`[MAX 4 [MIN 2 3 ] 1 ]` has the root family
    :math:`(\texttt{[MAX}, 4, e_1, 1, \texttt{]})` and :math:`e_1` the
    family :math:`(\texttt{[MIN}, 2, 3, \texttt{]})`.

    The input must be exactly one expression spanning the whole sequence
    (its first token opens it and its last token closes it), or a single
    token that neither opens nor closes one: that becomes the only child
    of a root :obj:`expr` without brackets. Anything else raises a
    :class:`ValueError` naming the position (token index) of the first
    offending token: a closing token that closes no open expression, an
    expression still open at the end, or a token outside the outermost
    expression.

    The position of a node inside its parent's family is its index
    :math:`i` among its siblings (the opening token is 0), as Fourier
    features stored in :obj:`pe` of both :obj:`token` and :obj:`expr` (the
    root, alone, has position 0):

    .. math::
        \mathrm{pe}_i = \left[\sin(i\,\omega_j),\, \cos(i\,\omega_j)
        \right]_{j < P/2}, \qquad \omega_j = 10000^{-2j/P}

    with :math:`P` = :obj:`pe_channels`. Graph-level attributes such as
    :obj:`y` go to the graph-level store.

    The parse runs in a handful of tensor operations, without a Python
    loop over tokens: the nesting depth is a cumulative sum of
    :math:`\pm 1`, and the expression containing a token is the last
    opening token before it at the same depth, found by one sort of the
    opening tokens by (depth, position) and one binary search.

    Args:
        opening (int or Collection[int]): the id(s) of the tokens that open
            an expression.
        closing (int or Collection[int]): the id(s) of the tokens that close
            one (disjoint from :obj:`opening`).
        pe_channels (int, optional): width of :obj:`pe` (even).
            (default: :obj:`16`)
    """
    leaf_type = 'token'
    node_type = 'expr'

    def __init__(self, opening: TokenIds, closing: TokenIds,
                 pe_channels: int = 16):
        self.opening = _check_ids(opening, 'opening')
        self.closing = _check_ids(closing, 'closing')
        both = sorted(set(self.opening) & set(self.closing))
        if both:
            raise ValueError(f"'opening' and 'closing' share the ids {both}; "
                             f"a token cannot both open and close")
        self.pe_channels = check_fourier_channels(pe_channels, 'pe_channels')

    def forward(self, data: Data) -> HeteroData:
        num_tokens = check_input(data, 'BracketsToHierarchy', 'token')
        ids = _token_ids(data, num_tokens)
        device = ids.device
        token_parent, expr_parent, expr_position = self._parse(ids)
        num_exprs = expr_parent.numel()

        out = leaf_hetero(data, self.leaf_type, 'edge')
        out[self.node_type].num_nodes = num_exprs
        tokens = torch.arange(num_tokens, device=device)
        out[self.leaf_type, NESTING_RELATION,
            self.node_type].edge_index = torch.stack([tokens, token_parent])
        child = (expr_parent >= 0).nonzero().view(-1)
        out[self.node_type, NESTING_RELATION,
            self.node_type].edge_index = torch.stack(
                [child, expr_parent[child]])

        # Index in the family: rank by position among the children of the
        # same parent; the root is alone in a group of its own.
        group = torch.cat([
            token_parent,
            torch.where(expr_parent >= 0, expr_parent, num_exprs)
        ])
        key = torch.cat([tokens, expr_position])
        rank = rank_in_group(group, key)
        # Families are small: encode each index once and look it up (the
        # same values as encoding every node, at a fraction of the cost).
        table = fourier_encoding(
            torch.arange(int(rank.max()) + 1, device=device),
            self.pe_channels)
        out[self.leaf_type].pe = table[rank[:num_tokens]]
        out[self.node_type].pe = table[rank[num_tokens:]]
        return out

    def _parse(self, ids: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(token_parent [L], expr_parent [E], expr_position [E])``: the
        expression of every token, the parent expression of every
        expression (``-1`` for the root) and the position of its opening
        token (the root's: ``0``, or ``-1`` for a bracketless token)."""
        num_tokens = ids.numel()
        device = ids.device
        is_open = torch.isin(ids, torch.tensor(self.opening, device=device))
        is_close = torch.isin(ids, torch.tensor(self.closing, device=device))
        # Depth after every token; a closing token sits at the depth before.
        depth = torch.cumsum(is_open.long() - is_close.long(), 0)
        _check_balanced(depth, is_open, num_tokens)

        if num_tokens == 1 and not bool(is_open[0]):
            # A single bare token: the only child of a bracketless root.
            return (torch.zeros(1, dtype=torch.long, device=device),
                    torch.full((1, ), -1, dtype=torch.long, device=device),
                    torch.full((1, ), -1, dtype=torch.long, device=device))

        level = depth + is_close.long()  # depth of the token's expression
        open_position = is_open.nonzero().view(-1)  # expression ids' order
        # Sort the opening tokens by (depth, position); the expression that
        # a token belongs to is the last opening before it at its level
        # (one at the same level in between would have had to close first,
        # taking the depth below the level). An opening token asks for the
        # level above its own: its parent.
        stride = num_tokens + 1
        source_key, order = torch.sort(level[open_position] * stride +
                                       open_position)
        positions = torch.arange(num_tokens, device=device)
        query_level = level - is_open.long()
        # No opening token has a query's key, so this counts the openings
        # strictly before the query (in (level, position) order).
        found = torch.searchsorted(source_key,
                                   query_level * stride + positions) - 1
        match = source_key[found.clamp(min=0)]
        found_ok = (found >= 0) & (match // stride == query_level)
        expr_of = torch.where(found_ok, order[found.clamp(min=0)], -1)

        own = torch.cumsum(is_open.long(), 0) - 1  # what an opening opens
        token_parent = torch.where(is_open, own, expr_of)
        expr_parent = expr_of[open_position]
        return token_parent, expr_parent, open_position

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(opening={self.opening}, '
                f'closing={self.closing}, pe_channels={self.pe_channels})')


def _check_balanced(depth: Tensor, is_open: Tensor, num_tokens: int) -> None:
    """Raises a ValueError naming the first token that breaks the rule of
    one bracketed expression spanning the whole sequence."""
    below = (depth < 0).nonzero()
    if below.numel():
        position = int(below[0])
        raise ValueError(f"Unbalanced brackets: the closing token at "
                         f"position {position} closes no open expression")
    if int(depth[-1]) > 0:
        # The outermost expression still open starts right after the last
        # return to depth 0 (the depth never drops below it again).
        zero = (depth == 0).nonzero()
        position = int(zero[-1]) + 1 if zero.numel() else 0
        raise ValueError(f"Unbalanced brackets: the expression opened at "
                         f"position {position} is never closed "
                         f"({int(depth[-1])} expression(s) left open at the "
                         f"end)")
    if num_tokens == 1 and not bool(is_open[0]):
        return  # a single bare token
    if not bool(is_open[0]):
        raise ValueError("The token at position 0 lies outside any "
                         "expression; the input must be one bracketed "
                         "expression spanning the whole sequence (or a "
                         "single token)")
    end = int((depth == 0).nonzero()[0])
    if end != num_tokens - 1:
        raise ValueError(f"The token at position {end + 1} lies after the "
                         f"outermost expression (positions 0..{end}); the "
                         f"input must be one bracketed expression spanning "
                         f"the whole sequence (or a single token)")


def _check_ids(ids: TokenIds, name: str) -> Tuple[int, ...]:
    wanted = f"'{name}' must be a token id or a collection of token ids"
    if isinstance(ids, Tensor):
        if ids.is_floating_point() or ids.is_complex() or \
                ids.dtype == torch.bool or ids.dim() > 1:
            raise TypeError(f"{wanted} (got {describe(ids)})")
        ids = ids.reshape(-1).tolist()
    elif _is_int(ids):
        ids = [ids]
    elif isinstance(ids, Collection) and not isinstance(ids, (str, bytes)):
        ids = list(ids)
    else:
        raise TypeError(f"{wanted} (got {describe(ids)})")
    for value in ids:
        if not _is_int(value):
            raise TypeError(f"'{name}' must hold integer token ids (got "
                            f"{describe(value)})")
    if not ids:
        raise ValueError(f"'{name}' must name at least one token id")
    return tuple(sorted({int(value) for value in ids}))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(
        value, (bool, np.bool_))


def _token_ids(data: Data, num_tokens: int) -> Tensor:
    """The input's token ids as a 1-D tensor."""
    if 'x' not in data:
        raise ValueError("BracketsToHierarchy needs the token ids in 'x' "
                         "(the input has no attribute 'x')")
    x = data.x
    if not isinstance(x, Tensor) or x.is_floating_point() or \
            x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"'x' must be an integer tensor of token ids (got "
                        f"{describe(x)})")
    if not (x.dim() == 1 or (x.dim() == 2 and x.size(1) == 1)):
        raise ValueError(f"'x' must have shape [{num_tokens}] or "
                         f"[{num_tokens}, 1] (got {tuple(x.shape)})")
    return x.reshape(-1).long()
