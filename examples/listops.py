r"""ListOps with Hierarchical Self-Attention, offline: train, score any TSV
file, or write a split as one.

Every model embeds the 15 tokens and predicts the value of the expression
(10 classes); the models are in ``listops_models.py``:

* ``hsa-tree``: one HSA encoder block applied with shared weights over
  the expression's parse tree
  (:class:`~pyg_hsa.transforms.BracketsToHierarchy`), two iterations per
  level in the tree's bottom-up order (an expression's operator token
  computes its value from its family, then every token below it takes
  that value), with depth, height and arity features and a log-size key
  channel that weighs every argument alike; **given the parse tree**;
* ``hsa-windows``: an HSA encoder block iterated with shared weights
  through a GRU gate over fixed windows
  (``SequenceToHierarchy((2, 4, 8, 16))``, the content-independent
  hierarchy of H-Transformer-1D); not given the parse tree;
* ``transformer``: the same over a flat tree, which is exactly softmax
  attention over all tokens (PyTorch's fused kernel); not given the parse
  tree;
* ``gin``: GIN message passing on the parse tree's nodes, messages up and
  down with their own weights, a GRU update shared by the iterations;
  **given the parse tree**;
* ``tree-gru``: a recursive cell composing every expression from its
  children bottom-up (a GRU over the family in order), one level at a
  time; **given the parse tree** (the ceiling).

The iterated models without the schedule run ``--iterations`` steps, or
with ``0`` (the default) ``--per_level`` steps per level of the
expression's bracket nesting (counted from the tokens, so all models run
equally many, and every expression its own number whatever its batch).

The data is :class:`~pyg_hsa.datasets.ListOps`, generated under ``--root``
on first use. ``--distribution nangia-bowman`` (the default) trains on
Nangia and Bowman's expressions of at most 100 tokens (2-5 arguments) and
tests on the same distribution, on the length-generalisation windows
200-300, 500-600 and 900-1,000 tokens, and on LRA's test split (500-2,000
tokens, up to 10 arguments); ``--distribution lra`` trains and tests on
LRA's. ``--train_examples`` / ``--eval_examples`` / ``--test_examples``
keep the first N of the training, validation and every test split. Epochs
are passes over the training data, or with ``--minutes`` equal slices of
that training-time budget. The test sets are scored once, after training,
with the weights of the best validation epoch.

    python examples/listops.py --model hsa-tree --minutes 60
    python examples/listops.py --evaluate run.json.ckpt --data test.tsv
    python examples/listops.py --export test_500_600 --data test_500_600.tsv
    torchrun --nproc_per_node=2 examples/listops.py --model gin   # DDP
    python examples/listops.py --smoke          # seconds; what CI runs

``--evaluate CHECKPOINT --data FILE`` rebuilds the model from a checkpoint
of this script alone (the best validation weights), scores every
expression of a TSV file in LRA's format (``Source<TAB>Target``; LRA's
``(`` ``)`` are ignored), prints ``accuracy 0.xxxx`` last and writes
nothing. ``--export SPLIT --data FILE`` writes a generated split (or
``lra_test``) in that format. ``--smoke`` fills in tiny defaults for the
options not given and writes to a temporary folder. The JSON result file
(``--filename``) holds the arguments, curves, every test accuracy and the
accuracy by expression length, parameters, seconds per epoch and peak
memory.
"""
import argparse
import math
import os.path as osp
import resource
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from listops_models import (
    IteratedHSA,
    ListOpsBatch,
    TreeGRU,
    TreeMessagePassing,
)
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from tqdm import tqdm
from training import (
    Distributed,
    add_checkpoint_arguments,
    add_parameter_arguments,
    add_size_arguments,
    checkpoint_from_filename,
    fill_sizes,
    fit,
    report_parameters,
    seed_everything,
    write_result,
)

from pyg_hsa.datasets import ListOps
from pyg_hsa.datasets.listops import DEFAULT_NUM_EXAMPLES
from pyg_hsa.transforms import BracketsToHierarchy, SequenceToHierarchy

MODELS = ('hsa-tree', 'hsa-windows', 'transformer', 'gin', 'tree-gru')
GIVEN_PARSE_TREE = ('hsa-tree', 'gin', 'tree-gru')
PE_CHANNELS = 16
DEFAULT_ROOT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                        'datasets', 'listops')
# The test sets scored after training, per training distribution;
# 'lra_test' is LRA's test split.
TEST_SETS = {
    'nangia-bowman': ('test', 'test_200_300', 'test_500_600',
                      'test_900_1000', 'lra_test'),
    'lra': ('test', ),
}
LRA_TEST_SIZE = 2000
# (default, smoke default): --smoke changes only the options not given.
SIZES = {
    'epochs': (4, 1), 'batch_size': (64, 4), 'emb_dim': (64, 16),
    'heads': (4, 2), 'train_examples': (0, 16), 'eval_examples': (0, 8),
    'test_examples': (0, 0),
}
EXAMPLE_COUNTS = ('train_examples', 'eval_examples', 'test_examples')
SMOKE_SPLITS = {
    'nangia-bowman': {'train': 16, 'val': 8, 'test': 8, 'test_200_300': 4,
                      'test_500_600': 3, 'test_900_1000': 2},
    'lra': {'train': 16, 'val': 8, 'test': 8},
}
SMOKE_LRA_TEST = 4
# Bins of expression length for the accuracy-by-length curve.
LENGTH_BINS = (0, 25, 50, 100, 200, 300, 500, 600, 900, 1000, 1500, 2000)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', choices=MODELS, default='hsa-tree')
    parser.add_argument('--distribution', choices=tuple(TEST_SETS),
                        default='nangia-bowman',
                        help='training data: Nangia and Bowman\'s ListOps '
                             '(up to 100 tokens) or LRA\'s')
    parser.add_argument('--iterations', type=int, default=0,
                        help='iterations of the shared block (0: '
                             '--per_level per level of nesting)')
    parser.add_argument('--per_level', type=int, default=2,
                        help='iterations per level of nesting, with '
                             '--iterations 0')
    parser.add_argument('--resolution', choices=('block', 'query'),
                        default='block',
                        help="HSA's resolution (the attention models)")
    parser.add_argument('--update', choices=('auto', 'gru', 'replace'),
                        default='auto',
                        help='how an iteration updates a token: through a '
                             'GRU gate, or with the block\'s output (auto: '
                             'replace under the schedule, whose roles gate '
                             'the update, GRU otherwise)')
    parser.add_argument('--no_tree_features', action='store_true',
                        help='hsa-tree without its depth, height and '
                             'arity features')
    parser.add_argument('--no_schedule', action='store_true',
                        help='hsa-tree without the bottom-up schedule: '
                             'every token updates at every iteration')
    parser.add_argument('--no_size_key', action='store_true',
                        help='hsa-tree as HSAEncoderLayer, without the '
                             'log-size key channel (which needs the '
                             'schedule)')
    parser.add_argument('--minutes', type=float, default=0.0,
                        help='training-time budget, split evenly into the '
                             'epochs (0: epochs are passes over the data)')
    parser.add_argument('--device', type=int, default=0,
                        help='first CUDA device, if CUDA is available')
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--dropout', type=float, default=0.0)
    parser.add_argument('--num_workers', type=int, default=0)
    parser.add_argument('--root', type=str, default='',
                        help=f'dataset folder (default: {DEFAULT_ROOT}; '
                             f'with --smoke, a temporary folder)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--filename', type=str, default='',
                        help='JSON result file')
    parser.add_argument('--evaluate', type=str, default='',
                        metavar='CHECKPOINT',
                        help='score the model of this checkpoint on --data '
                             'and exit (writes nothing)')
    parser.add_argument('--export', type=str, default='', metavar='SPLIT',
                        help='write this split of --distribution (or '
                             'lra_test) to --data as TSV and exit')
    parser.add_argument('--data', type=str, default='', metavar='FILE',
                        help='the TSV file of --evaluate or --export')
    add_checkpoint_arguments(parser)
    add_parameter_arguments(parser)
    add_size_arguments(parser, SIZES, dict.fromkeys(
        EXAMPLE_COUNTS, 'the first N examples (0 means all)'))
    args = parser.parse_args(argv)
    fill_sizes(args, SIZES)
    if args.evaluate or args.export:
        if args.evaluate and args.export:
            parser.error('give --evaluate or --export, not both')
        if not args.data:
            parser.error(f"--{'evaluate' if args.evaluate else 'export'} "
                         f"needs --data FILE")
        if args.export and args.export not in splits_of(args):
            parser.error(f'--export: {args.export!r} is not a split of '
                         f'--distribution {args.distribution} (one of '
                         f'{", ".join(splits_of(args))})')
        return args
    if args.data:
        parser.error('--data goes with --evaluate or --export')
    for name in ('epochs', 'batch_size', 'emb_dim', 'heads', 'per_level'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1')
    if args.iterations < 0:
        parser.error('--iterations must be >= 0 (0: --per_level per level)')
    if not args.minutes >= 0 or math.isinf(args.minutes):
        parser.error('--minutes must be >= 0 (0: no time budget)')
    sizes = split_sizes(args)
    tests = [size for name, size in sizes.items()
             if name not in ('train', 'val')]
    for name, split, size in (('train_examples', 'training', sizes['train']),
                              ('eval_examples', 'validation', sizes['val']),
                              ('test_examples', 'smallest test',
                               min(tests))):
        value = getattr(args, name)
        if value < 0:
            parser.error(f'--{name} must be >= 0 (0 means all)')
        if value > size:
            parser.error(f'--{name} {value} is more than the {size:,} '
                         f'expressions of the {split} split')
    if args.emb_dim % args.heads and args.model not in ('gin', 'tree-gru'):
        parser.error('--emb_dim must be divisible by --heads (for the '
                     'attention models)')
    if not 0 <= args.dropout < 1:
        parser.error('--dropout must lie in [0, 1)')
    checkpoint_from_filename(parser, args)
    return args


def splits_of(args) -> List[str]:
    """The splits the script can load: training, validation and tests."""
    return ['train', 'val', *TEST_SETS[args.distribution]]


def split_sizes(args) -> Dict[str, int]:
    """The size of every split of :func:`splits_of` (before
    ``--*_examples``)."""
    if args.smoke:
        sizes = dict(SMOKE_SPLITS[args.distribution])
        lra = SMOKE_LRA_TEST
    else:
        sizes = dict(DEFAULT_NUM_EXAMPLES[args.distribution])
        lra = LRA_TEST_SIZE
    if 'lra_test' in TEST_SETS[args.distribution]:
        sizes['lra_test'] = lra
    return sizes


def hierarchy(model: str):
    """The transform that gives each model its tree."""
    if model in GIVEN_PARSE_TREE:
        return BracketsToHierarchy(ListOps.OPERATOR_IDS, ListOps.CLOSING_ID,
                                   pe_channels=PE_CHANNELS)
    branching = (2, 4, 8, 16) if model == 'hsa-windows' else ()
    return SequenceToHierarchy(branching, pe_channels=PE_CHANNELS)


def make_model(args) -> torch.nn.Module:
    if args.model == 'gin':
        return TreeMessagePassing(args.emb_dim, args.iterations,
                                  args.per_level, args.dropout)
    if args.model == 'tree-gru':
        return TreeGRU(args.emb_dim, args.dropout)
    tree = args.model == 'hsa-tree'
    schedule = tree and not args.no_schedule
    gru = args.update == 'gru' or (args.update == 'auto' and not schedule)
    return IteratedHSA(
        args.emb_dim, args.heads, args.iterations, args.per_level,
        args.resolution, gru=gru,
        tree_features=tree and not args.no_tree_features,
        schedule=schedule, size_key=schedule and not args.no_size_key,
        dropout=args.dropout)


def count_parameters_only(args) -> Dict[str, int]:
    """``--count_parameters``: widths up to ``4 * --emb_dim``, multiples
    of ``--heads`` for the attention models."""
    step = 1 if args.model in ('gin', 'tree-gru') else args.heads
    return report_parameters(
        args, lambda width: make_model(argparse.Namespace(
            **dict(vars(args), emb_dim=width))), 4 * args.emb_dim, step)


def load_split(args, name: str, transform=None) -> ListOps:
    """One split (all of it) of :func:`splits_of`."""
    sizes = split_sizes(args)
    if name == 'lra_test':
        return ListOps(args.root, 'test', transform=transform,
                       num_examples={'train': 1, 'val': 1,
                                     'test': sizes[name]},
                       seed=args.seed, distribution='lra')
    own = {split: sizes[split]
           for split in DEFAULT_NUM_EXAMPLES[args.distribution]}
    return ListOps(args.root, name, transform=transform, num_examples=own,
                   seed=args.seed, distribution=args.distribution)


def load_splits(args) -> Dict[str, ListOps]:
    transform = hierarchy(args.model)
    keep = {'train': args.train_examples, 'val': args.eval_examples}
    splits = {}
    for name in splits_of(args):
        dataset = load_split(args, name, transform)
        count = keep.get(name, args.test_examples)
        splits[name] = dataset[:count] if count else dataset
    return splits


def nesting_depths(dataset: ListOps) -> Tensor:
    """The deepest bracket nesting of every expression of
    :obj:`dataset` (a split, or a part of one), from its stored tokens."""
    tokens = dataset._data.x.long()
    offsets = dataset.slices['x']
    step = torch.where(tokens == ListOps.CLOSING_ID, -1,
                       (tokens >= ListOps.OPERATOR_IDS[0]).long())
    level = torch.cumsum(step, 0)
    example = torch.repeat_interleave(torch.arange(offsets.numel() - 1),
                                      offsets.diff())
    deepest = level.new_zeros(offsets.numel() - 1).scatter_reduce(
        0, example, level, 'amax', include_self=True)
    return deepest[torch.as_tensor(dataset.indices())]


class DepthBuckets(torch.utils.data.Sampler):
    """Batches of expressions of similar nesting depth, so a batch runs
    about as many iterations as its expressions need: every pass shuffles
    the expressions, sorts each pool of :obj:`pool` batches by depth, cuts
    it into batches and shuffles the batches (all from :obj:`generator`)."""
    def __init__(self, depths: Tensor, batch_size: int,
                 generator: torch.Generator, pool: int = 32):
        self.depths, self.batch_size = depths, batch_size
        self.generator, self.pool = generator, pool

    def batches(self) -> List[Tensor]:
        order = torch.randperm(self.depths.numel(), generator=self.generator)
        out = []
        for chunk in order.split(self.batch_size * self.pool):
            ranked = chunk[torch.sort(self.depths[chunk], stable=True)[1]]
            out += list(ranked.split(self.batch_size))
        return out

    def __iter__(self) -> Iterator[List[int]]:
        batches = self.batches()
        for i in torch.randperm(len(batches), generator=self.generator):
            yield batches[i].tolist()

    def __len__(self) -> int:
        pool = self.batch_size * self.pool
        full, rest = divmod(self.depths.numel(), pool)
        return full * self.pool + math.ceil(rest / self.batch_size)


def ordered_loader(dataset, batch_size: int) -> DataLoader:
    """The expressions of :obj:`dataset` in batches of similar depth (a
    fixed order)."""
    order = torch.sort(nesting_depths(dataset), stable=True)[1]
    return DataLoader(dataset[order], batch_size=batch_size, shuffle=False)


@torch.no_grad()
def predictions(net, dataset, batch_size: int, device,
                ctx: Optional[Distributed] = None,
                show: bool = False) -> Dict[str, Tensor]:
    """Whether :obj:`net` gets every expression right, with its length
    (this rank's share under DDP)."""
    net.eval()
    if ctx is not None and ctx.enabled:
        dataset = dataset[ctx.rank::ctx.world_size]
    correct, lengths = [], []
    for batch in tqdm(ordered_loader(dataset, batch_size), desc='Evaluating',
                      disable=not show, leave=False):
        batch = batch.to(device)
        correct.append(net(ListOpsBatch(batch)).argmax(-1) == batch.y)
        lengths.append(batch['token'].ptr.diff())
    return {'correct': torch.cat(correct).cpu(),
            'length': torch.cat(lengths).cpu()}


def accuracy(net, dataset, args, device, ctx: Distributed) -> float:
    """Accuracy on :obj:`dataset`; every rank scores its share and the
    counts are summed, so it is the same with any number of processes."""
    out = predictions(net, dataset, args.batch_size, device, ctx,
                      ctx.show_progress)
    correct, count = ctx.sum(int(out['correct'].sum()),
                             out['correct'].numel())
    return correct / count


def by_length(correct: Tensor, length: Tensor) -> Dict[str, List[int]]:
    """``{'lo-hi': [correct, count]}`` over :data:`LENGTH_BINS`."""
    edges = torch.tensor(LENGTH_BINS)
    index = torch.bucketize(length, edges[1:-1], right=True)
    out = {}
    for i in torch.unique(index).tolist():
        inside = index == i
        out[f'{LENGTH_BINS[i]}-{LENGTH_BINS[i + 1]}'] = [
            int(correct[inside].sum()), int(inside.sum())]
    return out


def peak_memory_mb(device: torch.device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 2**20 if sys.platform == 'darwin' else 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.count_parameters:
        return count_parameters_only(args)
    if args.evaluate:
        return evaluate_file(args.evaluate, args.data, args.batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        if not args.root:
            args.root = osp.join(scratch, 'listops') if args.smoke \
                else DEFAULT_ROOT
        if args.export:
            load_split(args, args.export).to_tsv(args.data)
            print(f'wrote {args.export} to {args.data}')
            return {}
        if args.smoke and not args.filename:
            args.filename = osp.join(scratch, 'result.json')
            args.checkpoint = args.checkpoint or args.filename + '.ckpt'
        return run(args)


def load_checkpoint(path: str):
    """The model of a checkpoint of this script (its best validation
    weights) and its arguments, from the file alone."""
    try:
        saved = torch.load(path, map_location='cpu', weights_only=False)
        saved_args = argparse.Namespace(**saved['args'])
        weights = saved.get('best_model') or saved['model']
        net = make_model(saved_args)
        net.load_state_dict(weights)
    except Exception as error:
        raise RuntimeError(f"--evaluate: '{path}' is not a readable "
                           f"checkpoint of listops.py ({type(error).__name__}"
                           f": {error})") from error
    return net.eval(), saved_args


def evaluate_file(checkpoint: str, path: str, batch_size: int) -> Dict:
    """Scores the checkpoint's model on a TSV file; prints the accuracy
    last."""
    net, saved_args = load_checkpoint(checkpoint)
    expressions, labels = ListOps.read_tsv(path)
    transform = hierarchy(saved_args.model)
    examples = [transform(Data(x=x, y=y.view(1)))
                for x, y in zip(expressions, labels)]
    out = predictions(net, TSVExamples(examples), batch_size,
                      torch.device('cpu'), show=sys.stderr.isatty())
    accuracy = float(out['correct'].float().mean())
    print(f'model {saved_args.model}, {len(examples):,} expressions of '
          f'{int(out["length"].min())}-{int(out["length"].max())} tokens '
          f'from {path}')
    print(f'accuracy {accuracy:.4f}')
    return {'accuracy': accuracy, 'num_examples': len(examples)}


class TSVExamples(torch.utils.data.Dataset):
    """A list of transformed examples with what :func:`nesting_depths`
    reads (their tokens, concatenated), indexable by a tensor."""
    def __init__(self, examples: List):
        self.examples = examples
        tokens = [e['token'].x.view(-1) for e in examples]
        self._data = Data(x=torch.cat(tokens))
        self.slices = {'x': torch.tensor([0] + [t.numel() for t in tokens]
                                         ).cumsum(0)}
        self._order = list(range(len(examples)))

    def indices(self) -> List[int]:
        return self._order

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            out = TSVExamples.__new__(TSVExamples)
            out.examples, out._data, out.slices = self.examples, \
                self._data, self.slices
            out._order = [self._order[i] for i in index.tolist()]
            return out
        return self.examples[self._order[index]]


# A checkpoint made with other values of these is refused by --resume.
CHECKED_ARGS = ('model', 'distribution', 'emb_dim', 'heads', 'iterations',
                'per_level', 'resolution', 'update', 'no_tree_features',
                'no_schedule', 'no_size_key', 'minutes', 'lr', 'dropout',
                'batch_size', 'seed', 'train_examples', 'eval_examples',
                'smoke')


def run(args) -> Dict:
    ctx = Distributed(torch.cuda.is_available(), args.device)
    device = ctx.device
    seed_everything(args.seed)
    splits = ctx.first_then_others(lambda: load_splits(args))
    net = make_model(args).to(device)
    model = net
    if ctx.enabled:
        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == 'cuda' else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    generator = torch.Generator().manual_seed(args.seed)
    if ctx.enabled:
        sampler = DistributedSampler(splits['train'], shuffle=True,
                                     seed=args.seed)
        loader = DataLoader(splits['train'], batch_size=args.batch_size,
                            sampler=sampler, num_workers=args.num_workers)
    else:
        sampler = None
        buckets = DepthBuckets(nesting_depths(splits['train']),
                               args.batch_size, generator)
        loader = DataLoader(splits['train'], batch_sampler=buckets,
                            num_workers=args.num_workers)
    counts = {'steps': 0, 'examples': 0, 'seconds': 0.0}  # (fit resumes)
    batches: Dict[str, Iterator] = {}

    def step(batch) -> float:
        batch = batch.to(device)
        loss = F.cross_entropy(model(ListOpsBatch(batch)), batch.y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        counts['steps'] += 1
        counts['examples'] += batch.num_graphs
        return loss.item() * batch.num_graphs

    def train(epoch: int) -> float:
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        if sampler is not None:
            sampler.set_epoch(epoch)
        if not args.minutes:  # one pass
            for batch in tqdm(loader, desc='Iteration', leave=False,
                              disable=not ctx.show_progress):
                total += step(batch)
                seen += batch.num_graphs
        else:  # a slice of the budget, passes continuing across epochs
            budget = 60.0 * args.minutes / args.epochs
            while time.perf_counter() - start < budget or not seen:
                batch = next(batches.get('train', iter(())), None)
                if batch is None:
                    batches['train'] = iter(loader)
                    continue
                total += step(batch)
                seen += batch.num_graphs
        counts['seconds'] += time.perf_counter() - start
        total, seen = ctx.sum(total, seen)
        return total / max(seen, 1)

    def score(name: str) -> float:
        if name == 'test':  # every test set is scored once, at the end
            return float('nan')
        return accuracy(net, splits['val'], args, device, ctx)

    result = fit(args, net, optimizer, generator, ctx, train, score,
                 'accuracy', higher_better=True, checked_args=CHECKED_ARGS,
                 test_every_epoch=False, extra={'counts': counts},
                 restore_best=True)
    tests, lengths = {}, {}
    for name in TEST_SETS[args.distribution]:
        out = predictions(net, splits[name], args.batch_size, device, ctx,
                          ctx.show_progress)
        correct, count = ctx.sum(int(out['correct'].sum()),
                                 out['correct'].numel())
        tests[name] = correct / count
        lengths[name] = by_length(
            torch.tensor(ctx.gather(out['correct'].tolist())),
            torch.tensor(ctx.gather(out['length'].tolist())))
        if ctx.main:
            print(f'{name}: accuracy {tests[name]:.4f} ({int(count):,} '
                  f'expressions)', flush=True)
    result.update(test=tests['test'], tests=tests, accuracy_by_length=lengths,
                  given_parse_tree=args.model in GIVEN_PARSE_TREE,
                  train_seconds=counts['seconds'], train_steps=counts['steps'],
                  train_examples_seen=counts['examples'],
                  peak_memory_mb=peak_memory_mb(device),
                  num_train=len(splits['train']), num_val=len(splits['val']),
                  num_tests={name: len(splits[name]) for name in tests},
                  threads=torch.get_num_threads())
    write_result(result, args.filename, ctx)
    ctx.close()
    return result


if __name__ == '__main__':
    main()
