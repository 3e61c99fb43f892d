r"""The ListOps task of the Long Range Arena, generated offline."""
import numbers
import os.path as osp
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from pyg_hsa.datasets.listops_generator import (  # noqa: F401 (re-exported)
    CLOSING_ID,
    GENERATOR_VERSION,
    MAX_ARGS,
    MAX_DEPTH,
    MAX_LENGTH,
    MIN_LENGTH,
    OPERATOR_IDS,
    TOKENS,
    evaluate,
    from_text,
    generate,
    to_text,
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

SPLITS = ('train', 'val', 'test')
DEFAULT_NUM_EXAMPLES = {'train': 96000, 'val': 2000, 'test': 2000}


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
        root = check_path(root, 'root')
        check_choice(split, 'split', SPLITS)
        self.num_examples = _check_num_examples(num_examples)
        for name, value in (('transform', transform),
                            ('pre_transform', pre_transform),
                            ('pre_filter', pre_filter)):
            check_callable(value, name)
        self.split = str(split)
        self.seed = check_int(seed, 'seed', minimum=0)
        force_reload = check_bool(force_reload, 'force_reload')
        self._regenerate = force_reload
        super().__init__(root, transform, pre_transform, pre_filter,
                         force_reload=force_reload)
        load_generated(self, self.config_dir, list_of_examples=False)

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
