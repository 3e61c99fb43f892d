r"""The ListOps generator (Long Range Arena, Tay et al., 2021, after
Nangia and Bowman, 2018), vectorised: random operator trees of ``[MIN``,
``[MAX``, ``[MED`` and ``[SM`` over digits, kept when their token count
lies strictly between a minimum and a maximum length, with their values;
the text form (and LRA's TSV files) and an independent evaluator.

Two distributions share the generator and differ only in four numbers
(:class:`Distribution`): LRA's (:data:`LRA`: up to 10 arguments, depth
10, 500-2,000 tokens) and that of Nangia and Bowman's original ListOps
(:data:`NANGIA_BOWMAN`: up to 5 arguments, depth 20; trained at up to 100
tokens and tested for length generalisation at 200-300, 500-600 and
900-1,000 tokens, the windows of Havrylov et al., 2019)."""
import csv
import hashlib
import numbers
from typing import List, NamedTuple, Optional, Sequence, Tuple

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


class Distribution(NamedTuple):
    r"""The four numbers that tell ListOps distributions apart: operators
    take :math:`k \sim \mathcal{U}\{2, \dots,` :obj:`max_args` :math:`\}`
    arguments, a node at depth :obj:`max_depth` (the root is at depth 1)
    is always a digit, and an expression is kept when
    :obj:`min_length` :math:`<` its number of tokens :math:`<`
    :obj:`max_length` (both strict, as in LRA's and Havrylov et al.'s
    scripts). Every node above :obj:`max_depth` is an operator with
    probability :data:`OPERATOR_PROB` (0.25) in all of them."""
    max_args: int
    max_depth: int
    min_length: int
    max_length: int


#: Long Range Arena's ListOps: 2-10 arguments, depth 10, 501-1,999 tokens.
LRA = Distribution(MAX_ARGS, MAX_DEPTH, MIN_LENGTH, MAX_LENGTH)
#: Nangia and Bowman's ListOps (ListOps-O) as trained on: 2-5 arguments,
#: depth 20, 2-100 tokens (a bare digit, one of at most ten such
#: expressions in their files, is left out).
NANGIA_BOWMAN = Distribution(5, 20, 1, 101)
#: The length-generalisation windows of the same trees (Havrylov et al.,
#: 2019; Ray Chowdhury and Caragea, 2023): 200-300, 500-600, 900-1,000.
LENGTH_WINDOWS = ((200, 300), (500, 600), (900, 1000))

# Trees drawn per random stream; fixed, so the stream of accepted
# expressions (and thereby every split) does not depend on the sizes asked
# for: a larger dataset extends a smaller one.
CHUNK = 1 << 14
# generate() gives up after this many chunks in a row without a new
# expression: the 900-1,000 token window of NANGIA_BOWMAN accepts about one
# tree in 90,000 (0.18 per chunk, so 1,024 empty chunks in a row never
# happen by chance), and a window with too few distinct expressions would
# otherwise loop for ever.
MAX_BARREN_CHUNKS = 1024
# Bumped whenever the generator changes, so stale caches are not reused.
# (The distribution options left LRA's stream unchanged: still version 1.)
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


# LRA's TSV files ############################################################

TSV_HEADER = ('Source', 'Target')
_IGNORED = ('(', ')')  # LRA's binary bracketing, not part of the task


def write_tsv(path: str, tokens, offsets, labels) -> None:
    r"""Writes expressions as a TSV file in LRA's format: a header
    ``Source<TAB>Target``, then one expression per line (its symbols
    separated by spaces, without LRA's ``(`` ``)``) and its value.
    :obj:`tokens` holds all token ids concatenated, expression :math:`i`
    being ``tokens[offsets[i]:offsets[i + 1]]`` (as :func:`generate`
    returns them), :obj:`labels` the values. The file is written whole or
    not at all."""
    import os
    tokens = np.asarray(tokens).reshape(-1)
    offsets = np.asarray(offsets).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if offsets.size != labels.size + 1 or \
            (offsets.size and int(offsets[-1]) != tokens.size):
        raise ValueError(f"'offsets' must hold one entry per expression and "
                         f"one more, ending at the number of tokens (got "
                         f"{offsets.size} offsets, {labels.size} labels, "
                         f"{tokens.size} tokens)")
    symbols = np.array(TOKENS, dtype=object)[tokens.astype(np.int64)]
    tmp = f'{path}.tmp'
    with open(tmp, 'w', newline='') as f:
        writer = csv.writer(f, delimiter='\t', lineterminator='\n')
        writer.writerow(TSV_HEADER)
        writer.writerows(
            (' '.join(symbols[offsets[i]:offsets[i + 1]]), int(labels[i]))
            for i in range(labels.size))
    os.replace(tmp, path)


def read_tsv(path: str) -> Tuple[List[Tensor], Tensor]:
    r"""Reads a TSV file in LRA's format (see :func:`write_tsv`; LRA's own
    files parse too: their ``(`` ``)`` are ignored) and returns the token
    ids of every expression (LongTensors) and the values ``[E]``. Raises a
    :class:`ValueError` naming the file and line of the first malformed
    entry (a missing header, a line without two fields, an unknown symbol,
    a value outside :math:`0 .. 9`, or no expression at all)."""
    ids = {symbol: i for i, symbol in enumerate(TOKENS)}
    expressions: List[Tensor] = []
    labels: List[int] = []
    with open(path, newline='') as f:
        rows = csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header) != TSV_HEADER:
            raise ValueError(f"'{path}' is not a ListOps TSV file: its first "
                             f"line must be the header 'Source<TAB>Target' "
                             f"(got {header!r})")
        for row in rows:
            line = rows.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != 2:
                raise ValueError(f"'{path}' line {line}: expected two "
                                 f"tab-separated fields (got {len(row)})")
            symbols = [s for s in row[0].split() if s not in _IGNORED]
            unknown = [s for s in symbols if s not in ids]
            if unknown or not symbols:
                raise ValueError(f"'{path}' line {line}: "
                                 + (f"unknown symbol {unknown[0]!r}; "
                                    f"expected one of {TOKENS}"
                                    if unknown else 'empty expression'))
            target = row[1].strip()
            if target not in TOKENS[:NUM_DIGITS]:
                raise ValueError(f"'{path}' line {line}: the target must be a "
                                 f"digit 0 .. 9 (got {target!r})")
            expressions.append(torch.tensor([ids[s] for s in symbols]))
            labels.append(int(target))
    if not expressions:
        raise ValueError(f"'{path}' holds no expression")
    return expressions, torch.tensor(labels)


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


def generate(num_examples: int, seed: int = 0,
             distribution: Distribution = LRA
             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The first :obj:`num_examples` distinct accepted expressions of the
    stream seeded by :obj:`seed` (see :class:`ListOps`), as ``(tokens,
    offsets, labels)``: all token ids concatenated (:obj:`uint8`),
    expression :math:`i` being ``tokens[offsets[i]:offsets[i + 1]]``, and
    the values (:obj:`int64`).

    Trees are drawn :obj:`CHUNK` at a time, breadth-first and vectorised
    over the whole batch, chunk :math:`c` from the stream
    :obj:`numpy.random.default_rng([seed, c])` for :data:`LRA` (so LRA's
    splits are those of earlier versions) and
    ``default_rng([seed, c, *distribution])`` for any other
    :class:`Distribution`; the accepted trees of a chunk, in order, are
    then laid out as token sequences and evaluated, again one depth level
    at a time for all of them together. Raises a :class:`RuntimeError`
    when :obj:`MAX_BARREN_CHUNKS` chunks in a row add no new expression
    (a window that holds fewer distinct expressions than asked for).
    """
    num_examples = check_int(num_examples, 'num_examples', minimum=0)
    seed = check_int(seed, 'seed', minimum=0)
    distribution = check_distribution(distribution)
    pieces_tokens: List[np.ndarray] = []
    pieces_lengths: List[np.ndarray] = []
    pieces_labels: List[np.ndarray] = []
    seen = set()
    count, chunk, barren = 0, 0, 0
    while count < num_examples:
        key = [seed, chunk] if distribution == LRA else \
            [seed, chunk, *distribution]
        rng = np.random.default_rng(key)
        levels, length, accepted = _draw_trees(rng, CHUNK, distribution)
        candidates = np.flatnonzero(accepted)
        start, before = 0, count
        while count < num_examples and start < candidates.size:
            # Lay out only as many trees as still needed (repeats take
            # another round).
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
        barren = barren + 1 if count == before else 0
        if barren == MAX_BARREN_CHUNKS:
            raise RuntimeError(
                f"ListOps: {MAX_BARREN_CHUNKS} chunks of {CHUNK} trees in a "
                f"row added no new expression of {distribution} after "
                f"{count} of the {num_examples} asked for; the window holds "
                f"too few distinct expressions (or they are too rare)")
        chunk += 1
    if not pieces_lengths:
        return (np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64),
                np.zeros(0, dtype=np.int64))
    lengths = np.concatenate(pieces_lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return (np.concatenate(pieces_tokens), offsets,
            np.concatenate(pieces_labels).astype(np.int64))


def permute(tokens: np.ndarray, offsets: np.ndarray, labels: np.ndarray,
            order: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The expressions ``(tokens, offsets, labels)`` (as :func:`generate`
    returns them) in the order :obj:`order` (a permutation), without a
    loop over expressions."""
    lengths = np.diff(offsets)[order]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    within = np.arange(int(new_offsets[-1])) - np.repeat(new_offsets[:-1],
                                                          lengths)
    gather = np.repeat(offsets[:-1][order], lengths) + within
    return tokens[gather], new_offsets, labels[order]


def check_distribution(distribution, name: str = 'distribution'
                       ) -> Distribution:
    r"""A :class:`Distribution` (or four integers) that some expression
    can satisfy; a :class:`TypeError` or :class:`ValueError` naming
    :obj:`name` otherwise."""
    if not isinstance(distribution, Sequence) or \
            isinstance(distribution, (str, bytes)) or len(distribution) != 4:
        raise TypeError(f"'{name}' must be a Distribution (max_args, "
                        f"max_depth, min_length, max_length) (got "
                        f"{describe(distribution)})")
    fields = Distribution._fields
    values = [check_int(value, f'{name}.{field}')
              for field, value in zip(fields, distribution)]
    out = Distribution(*values)
    if out.max_args < 2 or out.max_depth < 1 or out.min_length < 0:
        raise ValueError(f"'{name}' needs max_args >= 2, max_depth >= 1 and "
                         f"min_length >= 0 (got {out})")
    # The longest tree: full operators down to max_depth.
    longest = 1
    for _ in range(out.max_depth - 1):
        longest = 2 + out.max_args * longest
    if out.max_length <= out.min_length + 1 or out.min_length >= longest:
        raise ValueError(f"'{name}' admits no expression: lengths lie "
                         f"strictly between min_length and max_length, and "
                         f"no tree of depth {out.max_depth} with "
                         f"{out.max_args} arguments has more than {longest} "
                         f"tokens (got {out})")
    return out


# A batch of trees is stored level by level (depth 1 .. MAX_DEPTH); level d
# holds, for each of its nodes, the tree it belongs to, its token id (0-9
# for a digit, 10-13 for an operator), its number of arguments (0 for a
# digit) and its parent's index in level d - 1. Every node's arguments are
# consecutive in the next level, in order, and nodes are grouped by tree.
Level = Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]


def _draw_trees(rng: np.random.Generator, num_trees: int,
                distribution: Distribution = LRA
                ) -> Tuple[List[Level], np.ndarray, np.ndarray]:
    """Draws :obj:`num_trees` trees breadth-first; returns the levels, the
    length of every tree and which trees are accepted. A tree whose length
    is already known to reach the maximum length grows no further (it is
    rejected anyway; its length is then a lower bound)."""
    max_args, max_depth, min_length, max_length = distribution
    levels: List[Level] = []
    tree = np.arange(num_trees)
    parent: Optional[np.ndarray] = None
    length = np.zeros(num_trees, dtype=np.int64)
    alive = np.ones(num_trees, dtype=bool)
    for depth in range(1, max_depth + 1):
        n = tree.size
        if depth < max_depth:
            is_op = rng.random(n) < OPERATOR_PROB
        else:
            is_op = np.zeros(n, dtype=bool)
        nargs = np.where(is_op, rng.integers(2, max_args + 1, size=n), 0)
        token = np.where(is_op, OPERATOR_IDS[0] + rng.integers(
            0, len(OPERATOR_IDS), size=n), rng.integers(0, NUM_DIGITS, n))
        length += np.bincount(tree, weights=np.where(is_op, 2, 1),
                              minlength=num_trees).astype(np.int64)
        pending = np.bincount(tree, weights=nargs,
                              minlength=num_trees).astype(np.int64)
        # Every pending argument adds at least one token.
        alive &= length + pending < max_length
        nargs = np.where(alive[tree], nargs, 0)
        levels.append((tree, token.astype(np.int64), nargs, parent))
        parent = np.repeat(np.arange(n), nargs)
        tree = tree[parent]
        if tree.size == 0:
            break
    accepted = alive & (length > min_length) & (length < max_length)
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
