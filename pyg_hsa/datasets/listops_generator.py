r"""The ListOps generator (Long Range Arena, Tay et al., 2021, after
Nangia and Bowman, 2018), vectorised: random operator trees of ``[MIN``,
``[MAX``, ``[MED`` and ``[SM`` over digits, kept when their token count
lies strictly between :data:`MIN_LENGTH` and :data:`MAX_LENGTH`, with their
values; the text form and an independent evaluator."""
import hashlib
import numbers
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from pyg_hsa.utils.checks import check_int, describe

#: The vocabulary: a symbol's index in the list is its token id.
TOKENS: List[str] = [str(d) for d in range(10)] + [
    '[MIN', '[MAX', '[MED', '[SM', ']'
]
NUM_DIGITS = 10
OPERATORS = ('[MIN', '[MAX', '[MED', '[SM')
OPERATOR_IDS = tuple(TOKENS.index(op) for op in OPERATORS)  # 10 .. 13
CLOSING_ID = TOKENS.index(']')  # 14

MAX_DEPTH = 10  # a node at this depth is always a digit (the root: 1)
MAX_ARGS = 10  # an operator takes randint(2, MAX_ARGS) arguments, inclusive
OPERATOR_PROB = 0.25  # a node above MAX_DEPTH is an operator w.p. 0.25
MIN_LENGTH = 500  # kept: MIN_LENGTH < length < MAX_LENGTH (both strict)
MAX_LENGTH = 2000

# Trees drawn per random stream; fixed, so the stream of accepted
# expressions (and thereby every split) does not depend on the sizes asked
# for: a larger dataset extends a smaller one.
CHUNK = 1 << 14
# Bumped whenever the generator changes, so stale caches are not reused.
GENERATOR_VERSION = 1


# Text and evaluation #######################################################


def to_text(tokens) -> str:
    r"""Token ids (a tensor, array or sequence of integers in
    :math:`[0, 15)`) as text, symbols separated by spaces, e.g.
    ``'[MAX 2 9 ]'``."""
    ids = _ids(tokens, 'tokens')
    return ' '.join(TOKENS[i] for i in ids)


def from_text(text: str) -> Tensor:
    r"""Text (symbols of :obj:`ListOps.TOKENS` separated by white space) as
    a LongTensor of token ids; the inverse of :func:`to_text`."""
    if not isinstance(text, str):
        raise TypeError(f"'text' must be a string (got {describe(text)})")
    ids = []
    for position, symbol in enumerate(text.split()):
        if symbol not in TOKENS:
            raise ValueError(f"Unknown symbol {symbol!r} at token "
                             f"{position}; expected one of {TOKENS}")
        ids.append(TOKENS.index(symbol))
    return torch.tensor(ids, dtype=torch.long)


def evaluate(tokens) -> int:
    r"""The value of one ListOps expression given as token ids (a tensor,
    array or sequence of integers) or as text (see :func:`from_text`), with
    the semantics of LRA: :obj:`[MED` is :obj:`int(numpy.median(.))` and
    :obj:`[SM` is the sum modulo 10. A lone digit is its own value. Raises
    a :class:`ValueError` naming the position of the first malformed token
    (unbalanced brackets, an operator without arguments, or more than one
    value at the top level)."""
    ids = from_text(tokens).tolist() if isinstance(tokens, str) else \
        _ids(tokens, 'tokens')
    if not ids:
        raise ValueError("'tokens' is empty; an expression has at least "
                         "one token")
    # One frame per open operator: [operator id, position, arguments].
    stack: list = [[None, -1, []]]
    for position, token in enumerate(ids):
        if token < NUM_DIGITS:
            stack[-1][2].append(token)
        elif token != CLOSING_ID:
            stack.append([token, position, []])
        else:
            if len(stack) == 1:
                raise ValueError(f"The ']' at token {position} closes no "
                                 f"open operator")
            operator, opened, args = stack.pop()
            if not args:
                raise ValueError(f"The operator {TOKENS[operator]!r} at "
                                 f"token {opened} has no arguments")
            stack[-1][2].append(_apply(operator, args))
    if len(stack) > 1:
        raise ValueError(f"The operator {TOKENS[stack[1][0]]!r} at token "
                         f"{stack[1][1]} is never closed")
    if len(stack[0][2]) != 1:
        raise ValueError(f"The expression has {len(stack[0][2])} values at "
                         f"the top level; expected one operator or digit")
    return stack[0][2][0]


def _apply(operator: int, args: List[int]) -> int:
    name = TOKENS[operator]
    if name == '[MIN':
        return min(args)
    if name == '[MAX':
        return max(args)
    if name == '[MED':
        return int(np.median(args))
    return sum(args) % 10


def _ids(tokens, name: str) -> List[int]:
    if isinstance(tokens, Tensor):
        if tokens.is_floating_point() or tokens.dtype == torch.bool or \
                tokens.is_complex():
            raise TypeError(f"'{name}' must hold integer token ids (got a "
                            f"{tokens.dtype} tensor)")
        ids = tokens.reshape(-1).tolist()
    elif isinstance(tokens, np.ndarray):
        if not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"'{name}' must hold integer token ids (got a "
                            f"{tokens.dtype} array)")
        ids = tokens.reshape(-1).tolist()
    elif isinstance(tokens, Sequence) and not isinstance(tokens,
                                                         (str, bytes)):
        ids = list(tokens)
        for value in ids:
            if isinstance(value, (bool, np.bool_)) or not isinstance(
                    value, numbers.Integral):
                raise TypeError(f"'{name}' must hold integer token ids "
                                f"(got {describe(value)})")
        ids = [int(value) for value in ids]
    else:
        raise TypeError(f"'{name}' must be a tensor, an array or a sequence "
                        f"of token ids (got {describe(tokens)})")
    for position, value in enumerate(ids):
        if not 0 <= value < len(TOKENS):
            raise ValueError(f"'{name}' has id {value} at token {position}; "
                             f"ids lie in [0, {len(TOKENS)})")
    return ids


# Generation ################################################################


def generate(num_examples: int,
             seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The first :obj:`num_examples` distinct accepted expressions of the
    stream seeded by :obj:`seed` (see :class:`ListOps`), as ``(tokens,
    offsets, labels)``: all token ids concatenated (:obj:`uint8`),
    expression :math:`i` being ``tokens[offsets[i]:offsets[i + 1]]``, and
    the values (:obj:`int64`).

    Trees are drawn :obj:`CHUNK` at a time, breadth-first and vectorised
    over the whole batch, chunk :math:`c` from the stream
    :obj:`numpy.random.default_rng([seed, c])`; the accepted trees of a
    chunk, in order, are then laid out as token sequences and evaluated,
    again one depth level at a time for all of them together.
    """
    num_examples = check_int(num_examples, 'num_examples', minimum=0)
    seed = check_int(seed, 'seed', minimum=0)
    pieces_tokens: List[np.ndarray] = []
    pieces_lengths: List[np.ndarray] = []
    pieces_labels: List[np.ndarray] = []
    seen = set()
    count, chunk = 0, 0
    while count < num_examples:
        rng = np.random.default_rng([seed, chunk])
        levels, length, accepted = _draw_trees(rng, CHUNK)
        candidates = np.flatnonzero(accepted)
        start = 0
        while count < num_examples and start < candidates.size:
            # Lay out only as many trees as still needed (repeats, which
            # practically never happen, take another round).
            stop = start + num_examples - count
            selected = np.zeros(CHUNK, dtype=bool)
            selected[candidates[start:stop]] = True
            start = stop
            tokens, lengths, labels = _layout(levels, length, selected)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            keep = np.ones(lengths.size, dtype=bool)
            for i in range(lengths.size):
                key = hashlib.blake2b(
                    tokens[offsets[i]:offsets[i + 1]].tobytes(),
                    digest_size=16).digest()
                # Equal expressions have equal digests, so no repeat is
                # ever kept (a digest collision would only drop one more).
                keep[i] = key not in seen
                seen.add(key)
            if not keep.all():
                mask = np.repeat(keep, lengths)
                tokens, lengths, labels = tokens[mask], lengths[keep], \
                    labels[keep]
            pieces_tokens.append(tokens)
            pieces_lengths.append(lengths)
            pieces_labels.append(labels)
            count += lengths.size
        chunk += 1
    if not pieces_lengths:
        return (np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64),
                np.zeros(0, dtype=np.int64))
    lengths = np.concatenate(pieces_lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return (np.concatenate(pieces_tokens), offsets,
            np.concatenate(pieces_labels).astype(np.int64))


# A batch of trees is stored level by level (depth 1 .. MAX_DEPTH); level d
# holds, for each of its nodes, the tree it belongs to, its token id (0-9
# for a digit, 10-13 for an operator), its number of arguments (0 for a
# digit) and its parent's index in level d - 1. Every node's arguments are
# consecutive in the next level, in order, and nodes are grouped by tree.
Level = Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]


def _draw_trees(rng: np.random.Generator,
                num_trees: int) -> Tuple[List[Level], np.ndarray,
                                         np.ndarray]:
    """Draws :obj:`num_trees` trees breadth-first; returns the levels, the
    length of every tree and which trees are accepted. A tree whose length
    is already known to reach MAX_LENGTH grows no further (it is rejected
    anyway; its length is then a lower bound)."""
    levels: List[Level] = []
    tree = np.arange(num_trees)
    parent: Optional[np.ndarray] = None
    length = np.zeros(num_trees, dtype=np.int64)
    alive = np.ones(num_trees, dtype=bool)
    for depth in range(1, MAX_DEPTH + 1):
        n = tree.size
        if depth < MAX_DEPTH:
            is_op = rng.random(n) < OPERATOR_PROB
        else:
            is_op = np.zeros(n, dtype=bool)
        nargs = np.where(is_op, rng.integers(2, MAX_ARGS + 1, size=n), 0)
        token = np.where(is_op, OPERATOR_IDS[0] + rng.integers(
            0, len(OPERATOR_IDS), size=n), rng.integers(0, NUM_DIGITS, n))
        length += np.bincount(tree, weights=np.where(is_op, 2, 1),
                              minlength=num_trees).astype(np.int64)
        pending = np.bincount(tree, weights=nargs,
                              minlength=num_trees).astype(np.int64)
        # Every pending argument adds at least one token.
        alive &= length + pending < MAX_LENGTH
        nargs = np.where(alive[tree], nargs, 0)
        levels.append((tree, token.astype(np.int64), nargs, parent))
        parent = np.repeat(np.arange(n), nargs)
        tree = tree[parent]
        if tree.size == 0:
            break
    accepted = alive & (length > MIN_LENGTH) & (length < MAX_LENGTH)
    return levels, length, accepted


def _layout(levels: List[Level], length: np.ndarray, selected: np.ndarray
            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The token sequences (concatenated, in tree order), their lengths and
    the values of the :obj:`selected` (complete) trees."""
    # Keep the selected trees' nodes, renumbering parents.
    kept = []
    index_map = None
    for tree, token, nargs, parent in levels:
        keep = selected[tree]
        new_parent = None if parent is None else index_map[parent[keep]]
        kept.append((token[keep], nargs[keep], new_parent))
        index_map = np.cumsum(keep) - 1
    while kept and kept[-1][0].size == 0:
        kept.pop()

    # Bottom-up: the number of tokens below every node, and its value.
    # An operator's arguments are consecutive in the next level, starting
    # at `first` (the exclusive cumulative sum of the argument counts).
    sizes, values, firsts = [None] * len(kept), [None] * len(kept), \
        [None] * len(kept)
    for d in range(len(kept) - 1, -1, -1):
        token, nargs, _ = kept[d]
        is_op = token >= NUM_DIGITS
        size = np.where(is_op, 2, 1).astype(np.int64)
        value = np.where(is_op, 0, token)
        ops = np.flatnonzero(is_op)
        first = np.cumsum(nargs) - nargs
        firsts[d] = first
        if ops.size:
            count, start = nargs[ops], first[ops]
            size[ops] += np.add.reduceat(sizes[d + 1], start)
            value[ops] = _reduce(token[ops], values[d + 1], start, count)
        sizes[d], values[d] = size, value

    # Top-down: the position of every node's first token. An argument
    # starts after its operator's opening token and its earlier siblings.
    num_tokens = sizes[0]
    assert np.array_equal(num_tokens, length[selected])
    total = int(num_tokens.sum())
    out = np.empty(total, dtype=np.uint8)
    start = np.cumsum(num_tokens) - num_tokens
    for d in range(len(kept)):
        token, nargs, parent = kept[d]
        if d > 0:
            before = np.cumsum(sizes[d]) - sizes[d]
            family_first = firsts[d - 1][parent]
            start = start[parent] + 1 + before - before[family_first]
        out[start] = token
        is_op = token >= NUM_DIGITS
        out[start[is_op] + sizes[d][is_op] - 1] = CLOSING_ID
    return out, num_tokens, values[0].astype(np.int64)


def _reduce(operator: np.ndarray, args: np.ndarray, start: np.ndarray,
            count: np.ndarray) -> np.ndarray:
    """The values of operators whose (consecutive) arguments are
    ``args[start[i]:start[i] + count[i]]``."""
    minimum = np.minimum.reduceat(args, start)
    maximum = np.maximum.reduceat(args, start)
    total = np.add.reduceat(args, start) % 10
    # Sort every family (values < 16, so family * 16 + value sorts by
    # family, then value); the median is the mean of the two middle
    # values, rounded down (int() of a non-negative mean).
    family = np.repeat(np.arange(start.size), count)
    ordered = np.sort(family * 16 + args) & 15
    median = (ordered[start + (count - 1) // 2] +
              ordered[start + count // 2]) // 2
    choice = operator - OPERATOR_IDS[0]  # MIN, MAX, MED, SM
    return np.choose(choice, [minimum, maximum, median, total])
