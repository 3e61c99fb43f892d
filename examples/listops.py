r"""ListOps (Long Range Arena) with Hierarchical Self-Attention, offline.

Every model embeds the 15 tokens, applies a stack of layers and predicts
the value (10 classes). At one parameter budget it compares:

* ``hsa-tree``: HSA encoder layers over the expression's parse tree
  (:class:`~pyg_hsa.transforms.BracketsToHierarchy`); **given the parse
  tree**;
* ``hsa-windows``: the same layers over fixed windows
  (``SequenceToHierarchy((2, 4, 8, 16))``, the content-independent
  hierarchy of H-Transformer-1D); not given the parse tree;
* ``transformer``: the same layers over a flat tree, which is exactly
  softmax attention over all tokens (each expression is one family, run by
  PyTorch's fused attention kernel); not given the parse tree;
* ``gin``: GIN message passing over the parse tree's edges (tokens and
  expressions, both directions, deep enough for depth 10), read out at the
  root; **given the parse tree**.

Positions: the token's index among its siblings (Fourier features), as a
bias on the attention logits (``pe``). The dataset is
:class:`~pyg_hsa.datasets.ListOps` (LRA's generator, seeded; built under
``--root`` on first use, about 20 s). ``--train_examples`` trains on the
first N training expressions, ``--eval_examples`` validates on the first N
validation expressions; the test accuracy is taken on the full test split
at the epoch of best validation accuracy.

    python examples/listops.py --model hsa-tree --epochs 4
    torchrun --nproc_per_node=2 examples/listops.py --model gin   # DDP
    python examples/listops.py --smoke          # seconds; what CI runs

``--smoke`` fills in tiny defaults for the options not given and writes
to a temporary folder. The JSON result file (``--filename``) holds the
arguments, curves, parameters, seconds per epoch and peak memory.
"""
import argparse
import os.path as osp
import resource
import sys
import tempfile
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GINConv, global_mean_pool
from tqdm import tqdm
from training import (
    Distributed,
    add_checkpoint_arguments,
    add_size_arguments,
    checkpoint_from_filename,
    fill_sizes,
    fit,
    seed_everything,
    train_epoch,
    write_result,
)

from pyg_hsa import Tree
from pyg_hsa.datasets import ListOps
from pyg_hsa.nn import HSAEncoderLayer
from pyg_hsa.transforms import BracketsToHierarchy, SequenceToHierarchy

MODELS = ('hsa-tree', 'hsa-windows', 'transformer', 'gin')
GIVEN_PARSE_TREE = ('hsa-tree', 'gin')
PE_CHANNELS = 16
NUM_CLASSES = 10
DEFAULT_ROOT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                        'datasets', 'listops')
# (default, smoke default): --smoke changes only the options not given.
SIZES = {
    'epochs': (4, 1), 'batch_size': (32, 4), 'emb_dim': (64, 16),
    'num_layers': (4, 1), 'gin_layers': (12, 2), 'heads': (4, 2),
    'train_examples': (0, 16), 'eval_examples': (0, 8),
}
SMOKE_SPLITS = {'train': 16, 'val': 8, 'test': 8}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', choices=MODELS, default='hsa-tree')
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
    add_checkpoint_arguments(parser)
    add_size_arguments(parser, SIZES, '; 0 examples means all')
    args = parser.parse_args(argv)
    fill_sizes(args, SIZES)
    for name in ('epochs', 'batch_size', 'emb_dim', 'num_layers',
                 'gin_layers', 'heads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1')
    if args.train_examples < 0 or args.eval_examples < 0:
        parser.error('--train_examples and --eval_examples must be >= 0')
    if args.model != 'gin' and args.emb_dim % args.heads:
        parser.error('--emb_dim must be divisible by --heads (for the '
                     'attention models)')
    if not 0 <= args.dropout < 1:
        parser.error('--dropout must lie in [0, 1)')
    checkpoint_from_filename(parser, args)
    return args


def hierarchy(model: str):
    """The transform that gives each model its tree."""
    if model in GIVEN_PARSE_TREE:
        return BracketsToHierarchy(ListOps.OPERATOR_IDS, ListOps.CLOSING_ID,
                                   pe_channels=PE_CHANNELS)
    branching = (2, 4, 8, 16) if model == 'hsa-windows' else ()
    return SequenceToHierarchy(branching, pe_channels=PE_CHANNELS)


def node_positions(batch, tree: Tree) -> Tensor:
    """``pe`` of all tree nodes ``[M, P]`` in the tree's numbering (zeros
    for the types without one, the roots)."""
    pe = batch['token'].pe.new_zeros(tree.num_nodes, PE_CHANNELS)
    for node_type, (start, stop) in tree.node_slices.items():
        if 'pe' in batch[node_type]:
            pe[start:stop] = batch[node_type].pe
    return pe


class HSANet(torch.nn.Module):
    """Token embedding, HSA encoder layers, mean over the tokens, MLP."""
    def __init__(self, channels: int, num_layers: int, heads: int,
                 dropout: float):
        super().__init__()
        self.embed = torch.nn.Embedding(len(ListOps.TOKENS), channels)
        self.layers = torch.nn.ModuleList(
            HSAEncoderLayer(channels, heads, pos_channels=PE_CHANNELS,
                            self_loops=True, dropout=dropout)
            for _ in range(num_layers))
        self.head = torch.nn.Sequential(
            torch.nn.Linear(channels, channels), torch.nn.ReLU(),
            torch.nn.Linear(channels, NUM_CLASSES))

    def forward(self, batch) -> Tensor:
        tree = Tree.from_hetero(batch)
        pe = node_positions(batch, tree)
        h = self.embed(batch['token'].x)
        for layer in self.layers:
            h = layer(h, tree, pe)
        return self.head(global_mean_pool(h, tree.batch, tree.num_roots))


class GINNet(torch.nn.Module):
    """GIN over the parse tree (tokens and expressions as nodes, nesting
    edges both ways), with residual connections and LayerNorm; the root
    expression's state is the readout."""
    def __init__(self, channels: int, num_layers: int, dropout: float):
        super().__init__()
        self.embed = torch.nn.Embedding(len(ListOps.TOKENS), channels)
        self.expression = torch.nn.Parameter(torch.zeros(channels))
        self.lin_pe = torch.nn.Linear(PE_CHANNELS, channels)
        self.convs = torch.nn.ModuleList(
            GINConv(torch.nn.Sequential(
                torch.nn.Linear(channels, channels), torch.nn.ReLU(),
                torch.nn.Linear(channels, channels)), train_eps=True)
            for _ in range(num_layers))
        self.norms = torch.nn.ModuleList(
            torch.nn.LayerNorm(channels) for _ in range(num_layers))
        self.dropout = dropout
        self.head = torch.nn.Sequential(
            torch.nn.Linear(channels, channels), torch.nn.ReLU(),
            torch.nn.Linear(channels, NUM_CLASSES))

    def forward(self, batch) -> Tensor:
        tree = Tree.from_hetero(batch)
        tokens = self.embed(batch['token'].x)
        num_internal = tree.num_nodes - tree.num_leaves
        h = torch.cat([tokens, self.expression.expand(num_internal, -1)])
        h = h + self.lin_pe(node_positions(batch, tree))
        child = (tree.parent >= 0).nonzero().view(-1)
        edges = torch.stack([child, tree.parent[child]])
        edge_index = torch.cat([edges, edges.flip(0)], dim=1)
        for conv, norm in zip(self.convs, self.norms):
            update = F.dropout(conv(h, edge_index), self.dropout,
                               self.training)
            h = norm(h + update)
        roots = (tree.parent < 0).nonzero().view(-1)  # in root order
        return self.head(h[roots])


def make_model(args) -> torch.nn.Module:
    if args.model == 'gin':
        return GINNet(args.emb_dim, args.gin_layers, args.dropout)
    return HSANet(args.emb_dim, args.num_layers, args.heads, args.dropout)


def load_splits(args) -> Dict[str, torch.utils.data.Dataset]:
    num_examples = SMOKE_SPLITS if args.smoke else None
    splits = {}
    for name in ('train', 'val', 'test'):
        dataset = ListOps(args.root, name, transform=hierarchy(args.model),
                          num_examples=num_examples, seed=args.seed)
        keep = {'train': args.train_examples,
                'val': args.eval_examples}.get(name, 0)
        splits[name] = dataset[:keep] if keep else dataset
    return splits


@torch.no_grad()
def accuracy(net, dataset, args, device, ctx: Distributed) -> float:
    """Accuracy on :obj:`dataset`; every rank scores its share and the
    counts are summed, so it is the same with any number of processes."""
    net.eval()
    mine = dataset[ctx.rank::ctx.world_size]
    loader = DataLoader(mine, batch_size=args.batch_size, shuffle=False,
                        num_workers=args.num_workers)
    correct = 0
    for batch in tqdm(loader, desc='Evaluating',
                      disable=not ctx.show_progress, leave=False):
        batch = batch.to(device)
        correct += int((net(batch).argmax(-1) == batch.y).sum())
    correct, count = ctx.sum(correct, len(mine))
    return correct / count


def peak_memory_mb(device: torch.device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 2**20 if sys.platform == 'darwin' else 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if not args.root:
            args.root = osp.join(scratch, 'listops') if args.smoke \
                else DEFAULT_ROOT
        if args.smoke and not args.filename:
            args.filename = osp.join(scratch, 'result.json')
            args.checkpoint = args.checkpoint or args.filename + '.ckpt'
        return run(args)


# A checkpoint made with other values of these is refused by --resume.
CHECKED_ARGS = ('model', 'emb_dim', 'num_layers', 'gin_layers', 'heads',
                'lr', 'dropout', 'batch_size', 'seed', 'train_examples',
                'eval_examples', 'smoke')


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
    sampler = DistributedSampler(splits['train'], shuffle=True,
                                 seed=args.seed) if ctx.enabled else None
    loader = DataLoader(splits['train'], batch_size=args.batch_size,
                        shuffle=sampler is None, sampler=sampler,
                        generator=generator, num_workers=args.num_workers)

    def train(epoch: int) -> float:
        if sampler is not None:
            sampler.set_epoch(epoch)
        return train_epoch(model, loader, optimizer, ctx,
                           lambda batch: F.cross_entropy(model(batch),
                                                         batch.y))

    def score(name: str) -> float:
        split = splits['val' if name == 'valid' else name]
        return accuracy(net, split, args, device, ctx)

    result = fit(args, net, optimizer, generator, ctx, train, score,
                 'accuracy', higher_better=True, checked_args=CHECKED_ARGS,
                 test_every_epoch=False)
    result.update(given_parse_tree=args.model in GIVEN_PARSE_TREE,
                  peak_memory_mb=peak_memory_mb(device),
                  num_train=len(splits['train']),
                  num_val=len(splits['val']), num_test=len(splits['test']))
    write_result(result, args.filename, ctx)
    ctx.close()
    return result


if __name__ == '__main__':
    main()
