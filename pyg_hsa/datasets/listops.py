r"""The ListOps task of the Long Range Arena, generated offline."""
import numbers
import os.path as osp
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from torch_geometric.data.dataset import _repr

from pyg_hsa.datasets.listops_generator import (  # noqa: F401 (re-exported)
    CLOSING_ID,
    GENERATOR_VERSION,
    LENGTH_WINDOWS,
    LRA,
    MAX_ARGS,
    MAX_DEPTH,
    MAX_LENGTH,
    MIN_LENGTH,
    NANGIA_BOWMAN,
    OPERATOR_IDS,
    TOKENS,
    Distribution,
    evaluate,
    from_text,
    generate,
    permute,
    read_tsv,
    to_text,
    write_tsv,
)
from pyg_hsa.utils.checks import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_path,
    describe,
)
from pyg_hsa.utils.io import atomic_save, load_generated

SPLITS = ('train', 'val', 'test')  # drawn from one stream
DISTRIBUTIONS = ('lra', 'nangia-bowman')
# The length-generalisation splits of 'nangia-bowman', each its own stream.
WINDOW_SPLITS = {f'test_{lo}_{hi}': Distribution(5, 20, lo, hi)
                 for lo, hi in LENGTH_WINDOWS}
DEFAULT_NUM_EXAMPLES = {
    'lra': {'train': 96000, 'val': 2000, 'test': 2000},
    'nangia-bowman': {'train': 90000, 'val': 1000, 'test': 10000,
                      **dict.fromkeys(WINDOW_SPLITS, 2000)},
}


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

    With :obj:`distribution="nangia-bowman"` the trees are those of
    Nangia and Bowman's original ListOps (`"ListOps: A Diagnostic Dataset
    for Latent Tree Learning" <https://arxiv.org/abs/1804.06028>`_, NAACL
    SRW 2018; "ListOps-O" in later papers), drawn by the same process with
    their numbers (:data:`NANGIA_BOWMAN`): :math:`k \sim \mathcal{U}\{2,
    \dots, 5\}` arguments, the same probability 0.25 of an operator, and
    a node at depth 20 always a digit. :obj:`"train"`, :obj:`"val"` and
    :obj:`"test"` keep the expressions of at most 100 tokens (the
    training set of Havrylov et al., 2019 and later work; a bare digit is
    left out), 90,000 / 1,000 / 10,000 by default, and the
    length-generalisation splits :obj:`"test_200_300"`,
    :obj:`"test_500_600"` and :obj:`"test_900_1000"` (2,000 each by
    default) those of :math:`200 < \text{length} < 300`, and so on, each
    drawn from its own stream (Havrylov et al.'s windows, used by Ordered
    Memory and Beam Tree Cell). Few short expressions are distinct (400 of
    the form :obj:`[OP d d ]`), so the head of a stream of distinct
    expressions holds more of them than its tail; as Nangia and Bowman
    split one set of distinct expressions, the first
    :math:`n_\text{train} + n_\text{val} + n_\text{test}` distinct
    expressions are shuffled (seeded) before they are cut into
    :obj:`"test"`, :obj:`"val"` and :obj:`"train"`, so the three splits
    are identically distributed (and each depends on all three sizes).
    LRA's test split, for testing these models at up to 2,000 tokens and
    10 arguments, is :obj:`split="test"` of :obj:`distribution="lra"`,
    which depends on the test size only.

    Unlike LRA's, whose draws come from Python's unseeded global
    :obj:`random` module, the generation is seeded (:class:`numpy
    .random.Generator` streams derived from :obj:`seed` only; no global
    random state is read or changed): the same :obj:`seed` gives identical
    data on every build and machine (for a given :obj:`numpy` version). The
    stream does not depend on the sizes asked for, so for a given
    :obj:`seed` LRA's test split only depends on its own size, the
    validation split on the test and validation sizes, and a larger
    training split extends a smaller one. Trees are drawn breadth-first in
    batches (the same distribution as LRA's depth-first recursion, not the
    same draws) and trees that already exceed the maximum length are
    discarded before they are complete.

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

    The splits of one stream are generated together, once, and cached
    (compactly) in :obj:`expressions.pt`, and each split is written to its
    own :obj:`data.pt`, all atomically, under :obj:`root/processed`, in a
    folder named after the distribution, the sizes and :obj:`seed`
    (:obj:`n{train}-{val}-{test}_s{seed}` for LRA,
    :obj:`nangia-bowman_n{train}-{val}-{test}_s{seed}` and
    :obj:`nangia-bowman_{lo}-{hi}_n{size}_s{seed}`), so datasets of
    different sizes live side by side and an interrupted build leaves
    nothing half-written. A split processed with another
    :obj:`pre_transform` or :obj:`pre_filter` (their :func:`repr`, as PyG
    compares them) is processed again from the cached expressions. The
    full default LRA build (all three splits) takes about 20 seconds on one
    CPU core and about 210 MB of disk; the default Nangia-Bowman splits
    take about a minute (the longest window accepts one tree in 90,000).

    Args:
        root (str): Root directory where the dataset should be saved.
        split (str, optional): :obj:`"train"`, :obj:`"val"` or
            :obj:`"test"`; with :obj:`distribution="nangia-bowman"` also
            :obj:`"test_200_300"`, :obj:`"test_500_600"` or
            :obj:`"test_900_1000"`. (default: :obj:`"train"`)
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
            :obj:`"train"`, :obj:`"val"` and :obj:`"test"` (and optionally
            of the length-generalisation splits, 2,000 if not given). If
            :obj:`None`, 96,000 / 2,000 / 2,000 as in LRA, or 90,000 /
            1,000 / 10,000 for :obj:`"nangia-bowman"`.
            (default: :obj:`None`)
        seed (int, optional): Seed of the generator (a non-negative
            integer). (default: :obj:`0`)
        pre_filter (callable, optional): A function that takes in a
            :obj:`torch_geometric.data.Data` object and returns a boolean
            value, indicating whether the data object should be included in
            the final dataset. (default: :obj:`None`)
        force_reload (bool, optional): Whether to re-process the dataset
            (and regenerate the cached expressions). (default:
            :obj:`False`)
        distribution (str, optional): :obj:`"lra"` (Long Range Arena) or
            :obj:`"nangia-bowman"` (the original ListOps).
            (default: :obj:`"lra"`)

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
        distribution: str = 'lra',
    ) -> None:
        root = osp.expanduser(osp.normpath(check_path(root, 'root')))
        self.distribution = check_choice(distribution, 'distribution',
                                         DISTRIBUTIONS)
        check_choice(split, 'split', tuple(
            DEFAULT_NUM_EXAMPLES[self.distribution]))
        self.num_examples = _check_num_examples(num_examples,
                                                self.distribution)
        for name, value in (('transform', transform),
                            ('pre_transform', pre_transform),
                            ('pre_filter', pre_filter)):
            check_callable(value, name)
        self.split = str(split)
        self.seed = check_int(seed, 'seed', minimum=0)
        force_reload = check_bool(force_reload, 'force_reload')
        self._regenerate = force_reload
        # A split processed with another pre_transform or pre_filter is
        # processed again (PyG itself only warns and reuses it).
        self.root = root
        reprocess = force_reload or self._processed_with_other(
            pre_transform, pre_filter)
        super().__init__(root, transform, pre_transform, pre_filter,
                         force_reload=reprocess)
        load_generated(self, self.config_dir, list_of_examples=False)

    @property
    def raw_file_names(self) -> List[str]:
        return []  # generated, nothing to download

    @property
    def _stream(self) -> Tuple[Distribution, List[Tuple[str, int]], str]:
        """The distribution of this split's stream, the splits it holds
        with their sizes in stream order, and the folder's name."""
        n = self.num_examples
        if self.split in SPLITS:
            order = [(split, n[split]) for split in ('test', 'val', 'train')]
            name = f"n{n['train']}-{n['val']}-{n['test']}_s{self.seed}"
            if self.distribution == 'lra':
                return LRA, order, name
            return NANGIA_BOWMAN, order, f'{self.distribution}_{name}'
        window = WINDOW_SPLITS[self.split]
        name = (f'{self.distribution}_{window.min_length}-'
                f'{window.max_length}_n{n[self.split]}_s{self.seed}')
        return window, [(self.split, n[self.split])], name

    @property
    def config_dir(self) -> str:
        """The folder of this split's stream (distribution, sizes and
        seed): the cached expressions of its splits and one folder per
        split."""
        return osp.join(self.root, 'processed', self._stream[2])

    @property
    def processed_dir(self) -> str:
        return osp.join(self.config_dir, self.split)

    @property
    def processed_file_names(self) -> List[str]:
        return ['data.pt']

    @property
    def expressions_path(self) -> str:
        """The cache of the stream's expressions (compact tensors)."""
        return osp.join(self.config_dir, 'expressions.pt')

    def _processed_with_other(self, pre_transform, pre_filter) -> bool:
        """Whether this split's processed file exists but was made with
        another :obj:`pre_transform` or :obj:`pre_filter` (or without a
        record of them, as after an interrupted build)."""
        if not osp.exists(osp.join(self.processed_dir, 'data.pt')):
            return False
        for name, value in (('pre_transform', pre_transform),
                            ('pre_filter', pre_filter)):
            path = osp.join(self.processed_dir, f'{name}.pt')
            try:
                if torch.load(path, weights_only=False) != _repr(value):
                    return True
            except Exception:
                return True  # missing or unreadable: rebuild the split
        return False

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
        begin = 0
        for split, size in self._stream[1]:
            if split == self.split:
                return begin, begin + size
            begin += size
        raise AssertionError(self.split)  # (the stream holds the split)

    def _expressions(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(tokens, offsets, labels)`` of all splits of the stream (in
        stream order), generated once per configuration and cached."""
        path = self.expressions_path
        distribution, order, _ = self._stream
        total = sum(size for _, size in order)
        if osp.exists(path) and not self._regenerate:
            try:
                cache = torch.load(path, weights_only=True)
                tokens, offsets = cache['tokens'], cache['offsets']
                labels = cache['y']
                if cache['version'] != GENERATOR_VERSION or \
                        cache['seed'] != self.seed or \
                        tuple(cache.get('distribution', LRA)) != \
                        distribution or \
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
        tokens, offsets, labels = generate(total, self.seed, distribution)
        if distribution != LRA and len(order) > 1:
            # Few small expressions are distinct (400 of the form [OP d d ]),
            # so the head of the stream holds more of them than its tail:
            # a seeded shuffle makes every split a uniform part of the set
            # of distinct expressions, as in Nangia and Bowman's files.
            rng = np.random.default_rng([self.seed, *distribution, total])
            tokens, offsets, labels = permute(tokens, offsets, labels,
                                              rng.permutation(total))
        tokens = torch.from_numpy(tokens)
        offsets = torch.from_numpy(offsets)
        labels = torch.from_numpy(labels)
        atomic_save(
            {
                'tokens': tokens, 'offsets': offsets, 'y': labels,
                'seed': self.seed, 'version': GENERATOR_VERSION,
                'distribution': torch.tensor(distribution)
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

    @staticmethod
    def read_tsv(path: str) -> Tuple[List[Tensor], Tensor]:
        r"""The expressions and values of a TSV file in LRA's format, see
        :func:`read_tsv`."""
        return read_tsv(path)

    def to_tsv(self, path: str) -> None:
        r"""Writes this split as a TSV file in LRA's format (see
        :func:`write_tsv`), whatever the :obj:`transform`."""
        tokens, offsets, labels = self._expressions()
        begin, end = self._split_range()
        if self.pre_filter is not None:
            raise ValueError("to_tsv writes the generated split; build the "
                             "dataset without 'pre_filter' to write it")
        write_tsv(path, tokens[offsets[begin]:offsets[end]].numpy(),
                  (offsets[begin:end + 1] - offsets[begin]).numpy(),
                  labels[begin:end].numpy())

    def __repr__(self) -> str:
        distribution = '' if self.distribution == 'lra' else \
            f', distribution={self.distribution!r}'
        return (f'{self.__class__.__name__}({len(self)}, '
                f'split={self.split!r}{distribution}, seed={self.seed})')


def _check_num_examples(num_examples, distribution: str) -> Dict[str, int]:
    defaults = DEFAULT_NUM_EXAMPLES[distribution]
    if num_examples is None:
        return dict(defaults)
    if isinstance(num_examples, Mapping):
        keys = set(num_examples)
        if not set(SPLITS) <= keys <= set(defaults):
            optional = sorted(set(defaults) - set(SPLITS))
            raise ValueError(f"'num_examples' must give the size of each of "
                             f"'train', 'val' and 'test'"
                             + (f" (and may give those of {optional})"
                                if optional else '')
                             + f" (got keys {sorted(map(str, keys))})")
        return {
            split: check_int(num_examples.get(split, default),
                             f"num_examples['{split}']", minimum=1)
            for split, default in defaults.items()
        }
    if isinstance(num_examples, (bool, np.bool_)) or not isinstance(
            num_examples, numbers.Integral):
        raise TypeError(f"'num_examples' must be an integer or a dictionary "
                        f"of split sizes (got {describe(num_examples)})")
    return dict.fromkeys(defaults,
                         check_int(num_examples, 'num_examples', minimum=1))
