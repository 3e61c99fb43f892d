r"""The ListOps task of the Long Range Arena, generated offline."""
import hashlib
import numbers
import os
import os.path as osp
from typing import (Callable, Dict, List, Mapping, Optional, Sequence,
                    Tuple, Union)

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from pyg_hsa.utils.checks import check_bool, check_int, describe
from pyg_hsa.utils.io import atomic_save

SPLITS = ('train', 'val', 'test')
DEFAULT_NUM_EXAMPLES = {'train': 96000, 'val': 2000, 'test': 2000}

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


class ListOps(InMemoryDataset):
    r"""The ListOps task of the `"Long Range Arena: A Benchmark for Efficient
    Transformers" <https://arxiv.org/abs/2011.04006>`_ paper (Tay et al.,
    ICLR 2021): evaluate a nested prefix expression of the operators
    :obj:`[MIN`, :obj:`[MAX`, :obj:`[MED` (median) and :obj:`[SM` (sum
    modulo 10) over the digits :math:`0, \dots, 9`, e.g.

    .. code-block:: none

        [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]  ->  5

    Generated offline (nothing to download) from the same random process as
    LRA's :obj:`lra_benchmarks/data/listops.py`:

    * A node at depth :math:`d < 10` (the root is at depth 1) is a digit,
      uniform over :math:`0, \dots, 9`, with probability :math:`0.75`, and
      otherwise an operator, uniform over the four, with
      :math:`k \sim \mathcal{U}\{2, \dots, 10\}` arguments (both bounds
      inclusive, as Python's :obj:`random.randint(2, 10)` in LRA), each an
      independent node at depth :math:`d + 1`. A node at depth 10 is always
      a digit.
    * The value of :obj:`[MIN`, :obj:`[MAX` and :obj:`[SM` is
      :math:`\min`, :math:`\max` and :math:`\sum \bmod 10` of the
      arguments' values; that of :obj:`[MED` is :obj:`int(numpy.median(.))`:
      the middle value, or for an even number of arguments the mean of the
      two middle values rounded down (e.g. :math:`(3 + 6) / 2 \to 4`).
    * The length of an expression counts 2 tokens per operator (its opening
      token and the closing :obj:`]`) and 1 per digit; only expressions
      with :math:`500 < \text{length} < 2000` are kept (rejection
      sampling; about 8% of the trees, of about 1,000 tokens on average).
    * Expressions are distinct across all splits: the generator draws one
      stream of accepted expressions, drops repeats, and hands the first
      :obj:`num_examples["test"]` to :obj:`"test"`, the next
      :obj:`num_examples["val"]` to :obj:`"val"` and the rest to
      :obj:`"train"`.

    Unlike LRA's, whose draws come from Python's unseeded global
    :obj:`random` module, the generation is seeded (:class:`numpy
    .random.Generator` streams derived from :obj:`seed` only; no global
    random state is read or changed): the same :obj:`seed` gives identical
    data on every build and machine (for a given :obj:`numpy` version). The
    stream does not depend on the sizes asked for, so for a given
    :obj:`seed` the test split only depends on its own size, the validation
    split on the test and validation sizes, and a larger training split
    extends a smaller one. Trees are drawn breadth-first in batches (the
    same distribution as LRA's depth-first recursion, not the same draws)
    and trees that already exceed the maximum length are discarded before
    they are complete.

    Each example is a :class:`~torch_geometric.data.Data` with :obj:`x`
    ``[L]`` (:obj:`torch.long`): token ids, a symbol's id being its index
    in :obj:`ListOps.TOKENS` (:obj:`'0'` .. :obj:`'9'` are 0 .. 9,
    :obj:`'[MIN'`, :obj:`'[MAX'`, :obj:`'[MED'`, :obj:`'[SM'` are 10 .. 13
    and the closing :obj:`']'` is 14; no parentheses), and :obj:`y` ``[1]``
    (:obj:`torch.long`): the value 0 .. 9. Without a :obj:`pre_transform`
    the tokens are kept as :obj:`torch.uint8` on disk and in memory (8
    times smaller: the training split holds about 100 million tokens) and
    converted to :obj:`torch.long` per example on access.
    :class:`~pyg_hsa.transforms.BracketsToHierarchy` turns an example into
    its parse tree:

    .. code-block:: python

        transform = BracketsToHierarchy(ListOps.OPERATOR_IDS,
                                        ListOps.CLOSING_ID)
        dataset = ListOps(root, split='train', transform=transform)

    All three splits are generated together, once, and cached (compactly)
    in :obj:`expressions.pt`, and each split is written to its own
    :obj:`data.pt`, all atomically, under :obj:`root/processed`, in a
    folder named after the sizes and :obj:`seed`
    (:obj:`n{train}-{val}-{test}_s{seed}`), so datasets of different
    sizes live side by side and an interrupted build leaves nothing
    half-written. The full default build (all three splits) takes about
    20 seconds on one CPU core and about 210 MB of disk.

    Args:
        root (str): Root directory where the dataset should be saved.
        split (str, optional): :obj:`"train"`, :obj:`"val"` or
            :obj:`"test"`. (default: :obj:`"train"`)
        transform (callable, optional): A function/transform that takes in
            a :obj:`torch_geometric.data.Data` object and returns a
            transformed version. The data object will be transformed before
            every access. (default: :obj:`None`)
        pre_transform (callable, optional): A function/transform that takes
            in a :obj:`torch_geometric.data.Data` object and returns a
            transformed version. The data object will be transformed before
            being saved to disk. (default: :obj:`None`)
        num_examples (int or Dict[str, int], optional): Size of every
            split (an integer), or a dictionary with the size of each of
            :obj:`"train"`, :obj:`"val"` and :obj:`"test"`. If :obj:`None`,
            96,000 / 2,000 / 2,000 as in LRA. (default: :obj:`None`)
        seed (int, optional): Seed of the generator (a non-negative
            integer). (default: :obj:`0`)
        pre_filter (callable, optional): A function that takes in a
            :obj:`torch_geometric.data.Data` object and returns a boolean
            value, indicating whether the data object should be included in
            the final dataset. (default: :obj:`None`)
        force_reload (bool, optional): Whether to re-process the dataset
            (and regenerate the cached expressions). (default:
            :obj:`False`)

    **STATS:**

    .. list-table::
        :widths: 20 10 10 10
        :header-rows: 1

        * - #graphs
          - #nodes
          - #features
          - #classes
        * - 96,000 / 2,000 / 2,000
          - 501 .. 1,999
          - 1 (15 token ids)
          - 10
    """
    TOKENS: List[str] = TOKENS
    OPERATOR_IDS: Tuple[int, ...] = OPERATOR_IDS
    CLOSING_ID: int = CLOSING_ID

    def __init__(
        self,
        root: str,
        split: str = 'train',
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        num_examples: Union[int, Dict[str, int], None] = None,
        seed: int = 0,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"'root' must be a path (got {describe(root)})")
        root = os.fspath(root)
        if not root:
            raise ValueError("'root' must be a non-empty path (got '')")
        if not isinstance(split, str):
            raise TypeError(f"'split' must be 'train', 'val' or 'test' (got "
                            f"{describe(split)})")
        if split not in SPLITS:
            raise ValueError(f"'split' must be 'train', 'val' or 'test' "
                             f"(got {split!r})")
        self.num_examples = _check_num_examples(num_examples)
        for name, value in (('transform', transform),
                            ('pre_transform', pre_transform),
                            ('pre_filter', pre_filter)):
            if value is not None and not callable(value):
                raise TypeError(f"'{name}' must be callable or None (got "
                                f"{describe(value)})")
        self.split = str(split)
        self.seed = check_int(seed, 'seed', minimum=0)
        force_reload = check_bool(force_reload, 'force_reload')
        self._regenerate = force_reload
        super().__init__(root, transform, pre_transform, pre_filter,
                         force_reload=force_reload)
        path = self.processed_paths[0]
        try:
            # Truncated or garbled files fail in many ways (zip, pickle or
            # collate errors), so every failure to read gets the same
            # advice.
            self.load(path, data_cls=Data)
            if 'y' not in self._data:
                raise ValueError('no labels')
        except Exception as error:
            raise RuntimeError(
                f"The processed file '{path}' of {self.__class__.__name__} "
                f"is corrupted or unreadable ({type(error).__name__}: "
                f"{error}); delete the folder '{self.config_dir}' and run "
                f"again to rebuild it") from error

    @property
    def raw_file_names(self) -> List[str]:
        return []  # generated, nothing to download

    @property
    def config_dir(self) -> str:
        """The folder of this configuration (sizes and seed): the cached
        expressions of all splits and one folder per split."""
        n = self.num_examples
        name = f"n{n['train']}-{n['val']}-{n['test']}_s{self.seed}"
        return osp.join(self.root, 'processed', name)

    @property
    def processed_dir(self) -> str:
        return osp.join(self.config_dir, self.split)

    @property
    def processed_file_names(self) -> List[str]:
        return ['data.pt']

    @property
    def expressions_path(self) -> str:
        """The cache of all splits' expressions (compact tensors)."""
        return osp.join(self.config_dir, 'expressions.pt')

    def process(self) -> None:
        tokens, offsets, labels = self._expressions()
        begin, end = self._split_range()
        # Copies, not views: torch.save writes a view's whole storage.
        tokens = tokens[offsets[begin]:offsets[end]].clone()
        offsets = offsets[begin:end + 1] - offsets[begin]
        labels = labels[begin:end].clone()
        if self.pre_filter is None and self.pre_transform is None:
            # The collated storage directly, as InMemoryDataset.collate
            # would build it, without 100k intermediate objects.
            data = Data(x=tokens, y=labels)
            slices = {'x': offsets, 'y': torch.arange(labels.numel() + 1)}
            atomic_save((data.to_dict(), slices, Data),
                        self.processed_paths[0])
            return
        data_list = [
            Data(x=tokens[offsets[i]:offsets[i + 1]].long(),
                 y=labels[i:i + 1]) for i in range(labels.numel())
        ]
        if self.pre_filter is not None:
            data_list = [d for d in data_list if self.pre_filter(d)]
        if self.pre_transform is not None:
            data_list = [self.pre_transform(d) for d in data_list]
        if not data_list:
            raise ValueError("'pre_filter' rejected every example")
        data, slices = self.collate(data_list)
        atomic_save((data.to_dict(), slices, data.__class__),
                    self.processed_paths[0])

    def _split_range(self) -> Tuple[int, int]:
        n = self.num_examples
        bounds = {'test': (0, n['test']),
                  'val': (n['test'], n['test'] + n['val'])}
        bounds['train'] = (n['test'] + n['val'], sum(n.values()))
        return bounds[self.split]

    def _expressions(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(tokens, offsets, labels)`` of all splits (in the order test,
        val, train), generated once per configuration and cached."""
        path = self.expressions_path
        total = sum(self.num_examples.values())
        if osp.exists(path) and not self._regenerate:
            try:
                cache = torch.load(path, weights_only=True)
                tokens, offsets = cache['tokens'], cache['offsets']
                labels = cache['y']
                if cache['version'] != GENERATOR_VERSION or \
                        cache['seed'] != self.seed or \
                        labels.numel() != total or \
                        offsets.numel() != total + 1 or \
                        int(offsets[-1]) != tokens.numel():
                    raise ValueError('it holds another configuration')
            except Exception as error:
                raise RuntimeError(
                    f"The cached expressions '{path}' of "
                    f"{self.__class__.__name__} are corrupted or unreadable "
                    f"({type(error).__name__}: {error}); delete the folder "
                    f"'{self.config_dir}' and run again to rebuild it"
                ) from error
            return tokens, offsets, labels
        tokens, offsets, labels = generate(total, self.seed)
        tokens = torch.from_numpy(tokens)
        offsets = torch.from_numpy(offsets)
        labels = torch.from_numpy(labels)
        atomic_save(
            {
                'tokens': tokens, 'offsets': offsets, 'y': labels,
                'seed': self.seed, 'version': GENERATOR_VERSION
            }, path)
        self._regenerate = False
        return tokens, offsets, labels

    def get(self, idx: int) -> Data:
        data = super().get(idx)
        # Tokens are stored as uint8; examples hand them out as long.
        if isinstance(data, Data) and isinstance(data.get('x'), Tensor) \
                and data.x.dtype == torch.uint8:
            data.x = data.x.long()
        return data

    @staticmethod
    def evaluate(tokens) -> int:
        r"""The value of an expression, see :func:`evaluate`."""
        return evaluate(tokens)

    @staticmethod
    def to_text(tokens) -> str:
        r"""Token ids as text, see :func:`to_text`."""
        return to_text(tokens)

    @staticmethod
    def from_text(text: str) -> Tensor:
        r"""Text as token ids, see :func:`from_text`."""
        return from_text(text)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({len(self)}, '
                f'split={self.split!r}, seed={self.seed})')


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


def _check_num_examples(num_examples) -> Dict[str, int]:
    if num_examples is None:
        return dict(DEFAULT_NUM_EXAMPLES)
    if isinstance(num_examples, Mapping):
        if set(num_examples) != set(SPLITS):
            raise ValueError(f"'num_examples' must give the size of each of "
                             f"'train', 'val' and 'test' (got keys "
                             f"{sorted(map(str, num_examples))})")
        return {
            split: check_int(num_examples[split], f"num_examples['{split}']",
                             minimum=1)
            for split in SPLITS
        }
    if isinstance(num_examples, (bool, np.bool_)) or not isinstance(
            num_examples, numbers.Integral):
        raise TypeError(f"'num_examples' must be an integer or a dictionary "
                        f"of split sizes (got {describe(num_examples)})")
    return dict.fromkeys(SPLITS,
                         check_int(num_examples, 'num_examples', minimum=1))
