r"""The windowed token forest: tokens, then windows of consecutive tokens
that restart in every segment, then the segments themselves (sentences,
paragraphs, ...).

:func:`token_levels` builds its levels; it is the one implementation that
:class:`~pyg_hsa.transforms.SequenceToHierarchy` (one sequence, one node
type per level) and :func:`token_hierarchy` (a padded batch as one parent
vector, for :func:`~pyg_hsa.integrations.transformers.patch_attention`)
both use.
"""
import numbers
from collections.abc import Iterable, Mapping, Set
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from pyg_hsa.utils.checks import check_int, describe
from pyg_hsa.utils.hierarchy import first_child, rank_in_group


class TokenLevel(NamedTuple):
    """One level of the forest above the level below it."""
    #: ``[n]``: the node of this level above every node of the level below.
    parent: Tensor
    #: The number of nodes of this level.
    num_nodes: int
    #: ``[num_nodes]``: the first token below every node of this level.
    first: Tensor


def token_levels(sequence: Tensor, branching: Sequence[int] = (),
                 segments: Sequence[Tensor] = ()) -> List[TokenLevel]:
    r"""The levels of the windowed token forest over tokens ``0 .. N-1``,
    bottom-up, without the roots:

    1. one window level per entry of :obj:`branching` :math:`= (b_1, b_2,
       \dots)`: level :math:`l` groups :math:`b_l` consecutive nodes of
       level :math:`l - 1`; windows restart at every segment of the finest
       level of :obj:`segments`, whose last window may be shorter;
    2. one level per entry of :obj:`segments` (finest first): the nodes
       below whose first tokens have the same sequence and id form one
       node.

    The nodes of a level are numbered by sequence, then segment id, then
    window: in token order where ids grow along every sequence. Every
    level is built, even where its nodes have a single child.

    Args:
        sequence (LongTensor): ``[N]`` the sequence of every token; the
            tokens of one sequence must be in order.
        branching (Sequence[int]): window sizes, bottom-up (checked by
            :func:`check_branching`).
        segments (Sequence[LongTensor]): ``[N]`` segment ids per level,
            finest first. Nesting is the caller's to check: a node takes the
            id of its first token.
    """
    levels: List[TokenLevel] = []
    if sequence.numel() == 0:
        return levels
    first = torch.arange(sequence.numel(), device=sequence.device)
    group = _combine(sequence, segments[0]) if segments else sequence
    for width in branching:
        parent, num_nodes = _number(_combine(group, rank_in_group(group) //
                                             width))
        head = first_child(parent, num_nodes)
        first, group = first[head], group[head]
        levels.append(TokenLevel(parent, num_nodes, first))
    for ids in segments:
        parent, num_nodes = _number(_combine(sequence[first], ids[first]))
        first = first[first_child(parent, num_nodes)]
        levels.append(TokenLevel(parent, num_nodes, first))
    return levels


def token_hierarchy(
    valid: Tensor,
    branching: Sequence[int] = (),
    segments: Sequence[Tensor] = (),
    root_tokens: Optional[Tensor] = None,
) -> Tensor:
    r"""The parent vector of a forest over the tokens of a padded batch:
    one tree per sequence, the padding left out.

    Leaves ``0 .. N-1`` are the tokens with :obj:`valid` set, in row-major
    order (sequence by sequence, left to right). Above them the levels of
    :func:`token_levels` (windows of :obj:`branching` inside the finest
    segments, then one level per entry of :obj:`segments`, where all the
    tokens with the same id in one sequence form one node), then one root
    per sequence.

    Tokens set in :obj:`root_tokens`, and tokens with a negative id at any
    level of :obj:`segments`, are direct children of the root. Internal
    nodes with a single child, and an internal only child of a root, are
    spliced out (HSA is unchanged by them, and they cost work), e.g. the
    windows of a segment shorter than a window.

    Args:
        valid (BoolTensor): ``[B, L]``, :obj:`True` for real tokens.
        branching (Sequence[int]): window sizes, bottom-up, each >= 2.
        segments (Sequence[LongTensor]): ``[B, L]`` segment ids per
            level, finest first; the segments of a level must nest in those
            of the next. Ids at padding positions are ignored.
        root_tokens (BoolTensor, optional): ``[B, L]`` tokens to attach
            directly to the root.

    Returns:
        LongTensor ``[M]``: the parent of every node, ``-1`` for roots
        (one per sequence with at least one valid token, in order).

    Examples:
        >>> valid = torch.tensor([[True, True, True, False]])
        >>> token_hierarchy(valid, (2, )).tolist()
        [3, 3, 4, 4, -1]
    """
    valid = check_valid(valid)
    branching = check_branching(branching)
    segments = check_segments(segments, valid.shape)
    token = valid.reshape(-1).nonzero().view(-1)
    if token.numel() == 0:
        raise ValueError("'valid' has no True entry: the hierarchy would be "
                         "empty")
    sequence = token // valid.size(1)
    at_root = torch.zeros_like(token, dtype=torch.bool)
    if root_tokens is not None:
        if not isinstance(root_tokens, Tensor):
            raise TypeError(f"'root_tokens' must be a boolean tensor (got "
                            f"{describe(root_tokens)})")
        if root_tokens.shape != valid.shape:
            raise ValueError(f"'root_tokens' must have the shape "
                             f"{tuple(valid.shape)} of 'valid' (got "
                             f"{tuple(root_tokens.shape)})")
        at_root |= root_tokens.reshape(-1)[token].bool()
    ids = [s.reshape(-1)[token].long() for s in segments]
    for level in ids:
        at_root |= level < 0

    # The levels over the tokens that are not at the root; their nodes are
    # numbered level by level after the leaves, the roots last.
    member = (~at_root).nonzero().view(-1)
    member_ids = [level[member] for level in ids]
    levels = token_levels(sequence[member], branching, member_ids)
    _check_nesting(levels, member_ids, len(branching))
    children, parents, next_id = [member], [], token.numel()
    for level in levels:
        parents.append(level.parent + next_id)
        children.append(next_id + torch.arange(level.num_nodes,
                                               device=token.device))
        next_id += level.num_nodes
    top = member[levels[-1].first] if levels else member
    _, root_of = torch.unique(sequence, return_inverse=True)
    parents += [next_id + root_of[top], next_id + root_of[at_root]]
    children.append(at_root.nonzero().view(-1))
    parent = torch.full((next_id + int(root_of.max()) + 1, ), -1,
                        dtype=torch.long, device=token.device)
    parent[torch.cat(children)] = torch.cat(parents)
    return splice_chains(parent, token.numel())


def splice_chains(parent: Tensor, num_leaves: int) -> Tensor:
    """Removes the internal non-root nodes that have one child or are the
    only child of a root, attaching their children to their parent, and
    renumbers the rest in order."""
    num_nodes = parent.numel()
    device = parent.device
    internal = torch.arange(num_nodes, device=device) >= num_leaves
    kept = torch.ones(num_nodes, dtype=torch.bool, device=device)
    while True:
        has_parent = parent >= 0
        num_children = torch.zeros(num_nodes, dtype=torch.long,
                                   device=device)
        num_children.index_add_(0, parent[has_parent & kept],
                                torch.ones_like(parent[has_parent & kept]))
        # (An only child is spliced out only under a root: any other
        # parent of one child goes itself, and removing both at once
        # would merge the child's family into the grandparent's.)
        above = parent.clamp(min=0)
        only_child_of_root = has_parent & (num_children[above] == 1) & \
            (parent[above] < 0)
        removable = kept & internal & has_parent & (
            (num_children == 1) | only_child_of_root)
        if not bool(removable.any()):
            break
        # Point every node past removable ancestors (a chain of them is
        # crossed in as many rounds as it is long).
        while True:
            above = parent.clamp(min=0)
            skip = (parent >= 0) & removable[above]
            if not bool(skip.any()):
                break
            parent = torch.where(skip, parent[above], parent)
        kept &= ~removable
    new_id = torch.cumsum(kept.long(), 0) - 1
    parent = parent[kept]
    return torch.where(parent >= 0, new_id[parent.clamp(min=0)], -1)


# Checks ###################################################################


def check_branching(branching) -> Tuple[int, ...]:
    """Window sizes as a tuple of ints >= 2: :obj:`None` for none, an int
    for one level. A TypeError for anything but integers, a ValueError for
    sizes below 2."""
    if branching is None:
        return ()
    if isinstance(branching, numbers.Integral) and \
            not isinstance(branching, bool):
        branching = (branching, )
    wanted = "'branching' must be a sequence of integers >= 2"
    if isinstance(branching, (str, bytes, Set, Mapping)) or \
            not isinstance(branching, Iterable):
        raise TypeError(f"{wanted} (got {describe(branching)})")
    branching = tuple(branching)
    try:
        return tuple(check_int(b, 'branching', minimum=2) for b in branching)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{wanted} (got {branching!r})") from None


def check_valid(valid) -> Tensor:
    """The ``[B, L]`` token mask as a boolean tensor."""
    if not isinstance(valid, Tensor):
        raise TypeError(f"'valid' must be a boolean tensor of shape [B, L] "
                        f"(got {describe(valid)})")
    if valid.dim() != 2:
        raise ValueError(f"'valid' must be a boolean tensor of shape [B, L] "
                         f"(got {describe(valid)})")
    return valid.bool()


def check_segments(segments, shape) -> List[Tensor]:
    """Integer id tensors of :obj:`shape` (``[B, L]``), one per level."""
    if isinstance(segments, Tensor):
        segments = (segments, )
    out = []
    for i, ids in enumerate(segments):
        if not isinstance(ids, Tensor) or ids.is_floating_point() or \
                ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"Segment ids (level {i}) must be an integer "
                            f"tensor (got {describe(ids)})")
        if shape is None or ids.shape != shape or ids.dim() != 2:
            raise ValueError(f"Segment ids (level {i}) must have shape "
                             f"{tuple(shape or ('B', 'L'))}, one id per "
                             f"token (got {tuple(ids.shape)})")
        out.append(ids)
    return out


def _check_nesting(levels: List[TokenLevel], ids: List[Tensor],
                   num_windows: int) -> None:
    """Every token must have the segment id of the first token of the node
    of each segment level that it lies under."""
    owner = None  # the node of the current level above every token
    for depth, level in enumerate(levels):
        owner = level.parent if owner is None else level.parent[owner]
        if depth < num_windows:
            continue
        level_ids = ids[depth - num_windows]
        if not torch.equal(level_ids, level_ids[level.first][owner]):
            raise ValueError(f"'segments' level {depth - num_windows} does "
                             f"not nest: some segment of the level below it "
                             f"(or window) straddles two of its segments")


def _number(key: Tensor) -> Tuple[Tensor, int]:
    """Equal keys share a node, numbered in key order."""
    _, node = torch.unique(key, return_inverse=True)
    return node, int(node.max()) + 1


def _combine(major: Tensor, minor: Tensor) -> Tensor:
    """One integer key ordered by :obj:`major`, then :obj:`minor` (both
    non-negative, or :obj:`minor` of any sign: it is shifted)."""
    minor = minor - minor.min()
    return major * (int(minor.max()) + 1) + minor
