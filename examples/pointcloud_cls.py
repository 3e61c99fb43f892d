"""Point-cloud classification with Hierarchical Self-Attention.

Each cloud becomes a voxel hierarchy (``point -> voxel0 -> ... -> cloud``,
:class:`pyg_hsa.transforms.PointCloudToHierarchy`) and a stack of
:class:`pyg_hsa.nn.HSAEncoderLayer` blocks mixes its points through it.
Two baselines, at the same parameter budget and number of epochs:

* ``flat``: the very same network on a flat tree, every point directly
  under one root per cloud (``PointCloudToHierarchy(num_levels=0)``): this
  is exactly softmax attention over the cloud's points, with the same
  positional term;
* ``pointnet``: a PointNet-style model, a shared per-point MLP (BatchNorm,
  ReLU) whose hidden width is chosen so that the model has as many
  parameters as the HSA model.

All three use the same input features (the coordinates after centring the
cloud and scaling it into ``[-1, 1]^3``, PyG's ``NormalizeScale``), the
same read-out (max and mean over the cloud's points, BatchNorm across the
batch, then a two-layer MLP) and the same optimiser (Adam with a cosine
schedule). HSA and flat attention add the transform's ``pe`` (each node's
offset from its parent's centroid, over the parent's cell side) to the
attention logits of siblings.

Data (nothing is downloaded):

* ``--dataset shapes`` (default): :class:`pyg_hsa.datasets.ShapePrimitives`,
  eight classes of trimesh primitives with random proportions, scale,
  rotation and noise, generated under ``--root/ShapePrimitives`` on first
  use (fixed data seed 0; ``--seed`` only seeds the models and the
  shuffling). Without ``--root``, a ``--smoke`` run generates them in a
  temporary folder that it deletes at the end, so it writes nothing else;
* ``--dataset ModelNet10`` / ``ModelNet40``: PyG's
  :class:`~torch_geometric.datasets.ModelNet` with ``SamplePoints``, read
  from ``--root/ModelNet10`` (or 40) when its ``raw`` folder is there.

Examples::

    python examples/pointcloud_cls.py                  # shapes, all models
    python examples/pointcloud_cls.py --model hsa --epochs 50
    python examples/pointcloud_cls.py --smoke          # seconds; what CI runs
    python examples/pointcloud_cls.py --smoke --heads 4   # smoke, 4 heads

``--smoke`` only changes the defaults of the sizes (see ``--help``): flags
given explicitly keep their values.

Prints a markdown table (test accuracy after the last epoch, train
accuracy, parameters, seconds per training epoch) and writes it, with the
arguments, to ``--filename`` as JSON.
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.datasets import ModelNet
from torch_geometric.loader import DataLoader
from torch_geometric.nn import MLP, global_max_pool, global_mean_pool
from torch_geometric.transforms import (BaseTransform, NormalizeScale,
                                        SamplePoints)
from tqdm import tqdm
from training import Distributed, closest_width, count_parameters, train_epoch

from pyg_hsa import Tree
from pyg_hsa.datasets.shape_primitives import ShapePrimitives
from pyg_hsa.nn import HSAEncoderLayer
from pyg_hsa.transforms import PointCloudToHierarchy

MODELS = ('hsa', 'flat', 'pointnet')
DATASETS = ('shapes', 'ModelNet10', 'ModelNet40')
# The data of --dataset shapes never changes with --seed: runs with
# different seeds then differ only in the models' initialisation and the
# order of the batches.
SHAPES_SEED = 0
POS_CHANNELS = 3  # width of PointCloudToHierarchy's pe in 3D
DEFAULT_ROOT = 'data'
# The sizes --smoke shrinks: (default, smoke default, help). Flags given
# explicitly keep their values.
SIZES = {
    'num_points': (256, 64, 'points per cloud, at least 2'),
    'num_per_class': (40, 2, 'shapes: training clouds per class'),
    'num_test_per_class': (20, 1, 'shapes: test clouds per class'),
    'epochs': (18, 1, 'training epochs'),
    'batch_size': (8, 4, 'clouds per batch'),
    'emb_dim': (64, 16, 'width of the models'),
    'num_layers': (2, 1, 'attention blocks (PointNet: hidden layers)'),
    'heads': (4, 2, 'attention heads'),
}
ONE_CLOUD_NOTE = (
    "--batch_size 1: the read-out's BatchNorm has no batch statistics to "
    "compute from one cloud, so it normalises with its running statistics, "
    "which then never change (a fixed affine map); expect lower accuracy "
    "than with larger batches")


class PointFeatures(BaseTransform):
    r"""Sets the point features :obj:`x` to the (normalised) coordinates."""
    def forward(self, data):
        data.x = data.pos.clone()
        return data


class Readout(torch.nn.Module):
    r"""Max and mean over each cloud's points, BatchNorm over the clouds
    of the batch, then a two-layer MLP.

    The BatchNorm matters: pooled over a centred, randomly rotated cloud,
    most of each feature is the same for every cloud, and the class shows
    in small differences between clouds. Without it the attention models
    barely moved off chance in 10 epochs (PointNet, whose per-point MLP
    ends in BatchNorm and ReLU, did).

    A training batch of one cloud has no batch statistics: it is
    normalised with the running statistics, as in evaluation, and leaves
    them unchanged. Only :obj:`--batch_size 1` makes such batches (larger
    batch sizes drop a last batch of one cloud)."""
    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(2 * channels)
        self.mlp = MLP([2 * channels, channels, num_classes], norm=None,
                       dropout=dropout)

    def reset_parameters(self):
        self.norm.reset_parameters()
        self.mlp.reset_parameters()

    def forward(self, h: Tensor, batch: Tensor, size: int) -> Tensor:
        pooled = torch.cat([global_max_pool(h, batch, size),
                            global_mean_pool(h, batch, size)], dim=-1)
        if self.training and pooled.size(0) == 1:
            norm = self.norm
            return self.mlp(F.batch_norm(
                pooled, norm.running_mean, norm.running_var, norm.weight,
                norm.bias, training=False, eps=norm.eps))
        return self.mlp(self.norm(pooled))


class HSAClassifier(torch.nn.Module):
    r"""Point encoder MLP, :obj:`num_layers` :class:`HSAEncoderLayer`
    blocks over the hierarchy of each cloud, and a :class:`Readout`. On a
    one-level hierarchy (points directly under the cloud) this is a
    transformer encoder with softmax attention. With :obj:`use_pe=False`
    the attention ignores the hierarchy's :obj:`pe`."""
    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 num_layers: int, heads: int, dropout: float = 0.0,
                 use_pe: bool = True):
        super().__init__()
        self.use_pe = use_pe
        self.encoder = MLP([in_channels, channels, channels],
                           norm='batch_norm')
        self.layers = torch.nn.ModuleList([
            HSAEncoderLayer(channels, heads, ffn_channels=2 * channels,
                            pos_channels=POS_CHANNELS if use_pe else None,
                            self_loops=True, dropout=dropout)
            for _ in range(num_layers)
        ])
        self.readout = Readout(channels, num_classes, dropout)

    def forward(self, batch) -> Tensor:
        # Compiled once per batch and shared by every layer.
        tree = Tree.from_hetero(batch)
        x = batch['point'].x
        # pe of all tree nodes in the tree's global numbering (the roots'
        # rows stay zero: HSA never uses a root's position).
        pe = x.new_zeros(tree.num_nodes, POS_CHANNELS) if self.use_pe \
            else None
        for node_type, (start, stop) in tree.node_slices.items():
            if pe is not None and 'pe' in batch[node_type]:
                pe[start:stop] = batch[node_type].pe
        h = self.encoder(x)
        for layer in self.layers:
            h = layer(h, tree, pe)
        # 'point' is the only leaf type, so h is in the batch's point order.
        return self.readout(h, batch['point'].batch, batch.num_graphs)


class PointNet(torch.nn.Module):
    r"""PointNet-style: a shared per-point MLP (:obj:`num_layers` + 2
    linear layers of width :obj:`hidden_channels`, BatchNorm and ReLU, the
    last one to :obj:`channels`), then the same :class:`Readout`."""
    def __init__(self, in_channels: int, hidden_channels: int,
                 channels: int, num_classes: int, num_layers: int,
                 dropout: float = 0.0):
        super().__init__()
        self.mlp = MLP([in_channels] + [hidden_channels] * (num_layers + 1) +
                       [channels], norm='batch_norm', plain_last=False)
        self.readout = Readout(channels, num_classes, dropout)

    def forward(self, batch) -> Tensor:
        h = self.mlp(batch['point'].x)
        return self.readout(h, batch['point'].batch, batch.num_graphs)


def pointnet_like(budget: int, **kwargs) -> PointNet:
    r"""The :class:`PointNet` whose hidden width (up to 16 times its
    :obj:`channels`) gives the parameter count closest to :obj:`budget`."""
    def count(width: int) -> int:
        return count_parameters(PointNet(hidden_channels=width, **kwargs))

    width = closest_width(count, budget, 16 * kwargs['channels'])
    return PointNet(hidden_channels=width, **kwargs)


class OfflineModelNet(ModelNet):
    r"""PyG's :class:`~torch_geometric.datasets.ModelNet`, but a missing
    download is an error saying where the files should be."""
    def download(self):
        raise FileNotFoundError(
            f"ModelNet{self.name} was not found under '{self.raw_dir}' (one "
            f"folder per class, as in the official ModelNet{self.name}.zip); "
            f"nothing can be downloaded here. Unpack it there or use "
            f"--dataset shapes")


def load_clouds(args, train: bool):
    """The split's clouds (:class:`~torch_geometric.data.Data` with
    :obj:`pos` and :obj:`y`) and the number of classes."""
    if args.dataset == 'shapes':
        split = 'train' if train else 'test'
        num = args.num_per_class if train else args.num_test_per_class
        dataset = ShapePrimitives(osp.join(args.root, 'ShapePrimitives'),
                                  split=split, num_per_class=num,
                                  num_points=args.num_points,
                                  seed=SHAPES_SEED)
        return dataset, len(ShapePrimitives.classes)
    name = args.dataset[len('ModelNet'):]
    dataset = OfflineModelNet(osp.join(args.root, args.dataset), name,
                              train,
                              pre_transform=SamplePoints(args.num_points))
    num_classes = dataset.num_classes
    if args.smoke:  # a handful of clouds from all over the dataset
        generator = torch.Generator().manual_seed(args.seed)
        keep = 16 if train else 8
        dataset = dataset[torch.randperm(len(dataset),
                                         generator=generator)[:keep]]
    return dataset, num_classes


def hierarchies(clouds: Sequence, num_levels: int) -> List:
    """Normalised clouds with point features, as hierarchies of
    :obj:`num_levels` voxel levels; computed once, as nothing is
    random."""
    normalize, features = NormalizeScale(), PointFeatures()
    to_tree = PointCloudToHierarchy(num_levels=num_levels)
    out = []
    for index, data in enumerate(clouds):
        data = normalize(data.clone())
        if not bool(torch.isfinite(data.pos).all()):
            raise ValueError(
                f'cloud {index} has all its {data.pos.size(0)} point(s) at '
                f'one position: it cannot be scaled into [-1, 1]^3')
        out.append(to_tree(features(data)))
    return out


def progress(iterable, desc: str, quiet: bool):
    # disable=None: bars only on a terminal, never in logs or CI.
    return iterable if quiet else tqdm(iterable, desc=desc, leave=False,
                                       disable=None)


@torch.no_grad()
def accuracy(model, loader, device, quiet: bool) -> float:
    model.eval()
    correct, count = 0, 0
    for batch in progress(loader, 'eval', quiet):
        batch = batch.to(device)
        correct += int((model(batch).argmax(dim=-1) == batch.y).sum())
        count += batch.num_graphs
    return correct / count


def build_model(name: str, args, num_classes: int,
                budget: Optional[int] = None) -> torch.nn.Module:
    if name in ('hsa', 'flat'):
        return HSAClassifier(3, args.emb_dim, num_classes, args.num_layers,
                             args.heads, args.drop_ratio,
                             use_pe=not args.no_pe)
    return pointnet_like(budget, in_channels=3, channels=args.emb_dim,
                         num_classes=num_classes,
                         num_layers=args.num_layers,
                         dropout=args.drop_ratio)


def run_model(name: str, data: Dict[str, List], args, num_classes: int,
              device: torch.device, budget: Optional[int]) -> Dict:
    # The same seed for every model: identical batch order, and models of
    # the same architecture (hsa, flat) start from identical weights.
    torch.manual_seed(args.seed)
    model = build_model(name, args, num_classes, budget).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    # A last batch of one cloud would be normalised differently by the
    # read-out (see Readout); --batch_size 1 keeps all its batches.
    drop_last = args.batch_size > 1 and \
        len(data['train']) % args.batch_size == 1
    train_loader = DataLoader(data['train'], batch_size=args.batch_size,
                              shuffle=True, generator=generator,
                              drop_last=drop_last,
                              num_workers=args.num_workers)
    test_loader = DataLoader(data['test'], batch_size=args.batch_size,
                             num_workers=args.num_workers)
    train_eval_loader = DataLoader(data['train'],
                                   batch_size=args.batch_size,
                                   num_workers=args.num_workers)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    ctx = Distributed(device.type == 'cuda', device.index or 0)

    def loss_of(batch) -> Tensor:
        return F.cross_entropy(model(batch), batch.y)

    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=args.epochs)
    train_time, losses = 0.0, []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        losses.append(train_epoch(model, train_loader, optimizer, ctx,
                                  loss_of))
        train_time += time.perf_counter() - start
        scheduler.step()
        if not args.quiet:
            print(f'{name} epoch {epoch:3d}: loss {losses[-1]:.4f}',
                  file=sys.stderr)
    return {
        'params': count_parameters(model),
        'test_acc': accuracy(model, test_loader, device, args.quiet),
        'train_acc': accuracy(model, train_eval_loader, device, args.quiet),
        'seconds_per_epoch': train_time / args.epochs,
        'final_loss': losses[-1],
    }


def markdown_table(results: Dict[str, Dict]) -> str:
    lines = ['| model | parameters | test accuracy | train accuracy | '
             's / epoch |', '|---|---|---|---|---|']
    for name, r in results.items():
        lines.append(f"| {name} | {r['params']:,} | {r['test_acc']:.3f} | "
                     f"{r['train_acc']:.3f} | "
                     f"{r['seconds_per_epoch']:.2f} |")
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(
        description='Point-cloud classification: HSA vs flat attention vs '
        'PointNet')
    parser.add_argument('--root', type=str, default=None,
                        help=f'folder of the datasets (default: '
                        f'{DEFAULT_ROOT}; with --smoke, a temporary folder '
                        f'deleted after the run)')
    parser.add_argument('--dataset', type=str, default='shapes',
                        choices=DATASETS)
    parser.add_argument('--model', type=str, default='all',
                        choices=MODELS + ('all', ))
    for name, (default, smoke, text) in SIZES.items():
        parser.add_argument(f'--{name}', type=int, default=None,
                            help=f'{text} (default: {default}; with '
                            f'--smoke: {smoke})')
    parser.add_argument('--num_levels', type=int, default=None,
                        help='voxel levels of the hierarchy (default: '
                        'derived from --num_points)')
    parser.add_argument('--drop_ratio', type=float, default=0.0)
    parser.add_argument('--no_pe', action='store_true',
                        help='HSA and flat attention ignore the '
                        'hierarchy\'s pe (for ablations)')
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', type=str, default='0',
                        help='GPU index, "cpu" or a torch device; CPU when '
                        'CUDA is unavailable (default: 0)')
    parser.add_argument('--num_workers', type=int, default=0)
    parser.add_argument('--filename', type=str, default='',
                        help='write the results as JSON to this file')
    parser.add_argument('--quiet', action='store_true',
                        help='no per-epoch lines and no evaluation '
                             'progress bars (training bars show only on a '
                             'terminal)')
    parser.add_argument('--smoke', action='store_true',
                        help='a handful of tiny clouds, 1 epoch (for CI): '
                        'changes the defaults of the sizes above, never '
                        'values given explicitly; writes only to a '
                        'temporary folder unless --root or --filename is '
                        'given')
    args = parser.parse_args(argv)
    for name, (default, smoke, _) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else default)
        elif getattr(args, name) < 1:
            parser.error(f'--{name} must be a positive integer')
    if args.num_points < 2:
        parser.error('--num_points must be at least 2: a cloud of one point '
                     'has no extent, so it cannot be centred and scaled into '
                     '[-1, 1]^3 (NormalizeScale would divide by zero)')
    if args.smoke and args.root is None and args.dataset != 'shapes':
        parser.error(f'--smoke with --dataset {args.dataset} needs --root, '
                     f'the folder that holds {args.dataset}/raw')
    if args.num_levels is not None and args.num_levels < 0:
        parser.error('--num_levels must be >= 0')
    if args.emb_dim % args.heads:
        parser.error(f'--emb_dim ({args.emb_dim}) must be divisible by '
                     f'--heads ({args.heads})')
    if not 0 <= args.drop_ratio < 1 or not args.lr > 0:
        parser.error('--drop_ratio must lie in [0, 1) and --lr be > 0')
    return args


def pick_device(name: str) -> torch.device:
    if name.isdigit():
        return torch.device(f'cuda:{name}' if torch.cuda.is_available()
                            else 'cpu')
    return torch.device(name)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.root is not None or not args.smoke:
        args.root = args.root or DEFAULT_ROOT
        return run(args)
    # A smoke run without --root leaves nothing behind.
    with tempfile.TemporaryDirectory(prefix='pointcloud_cls_') as root:
        args.root = root
        return run(args)


def run(args) -> Dict:
    device = pick_device(args.device)
    try:
        clouds = {split: load_clouds(args, split == 'train')
                  for split in ('train', 'test')}
    except FileNotFoundError as error:
        raise SystemExit(f'error: {error}') from None
    num_classes = clouds['train'][1]
    num_points = args.num_points
    # One depth for all clouds, so that every batch has the same node
    # types (PyG's DataLoader drops types the first example lacks).
    num_levels = args.num_levels
    if num_levels is None:
        num_levels = PointCloudToHierarchy().default_depth(num_points, 3)
    names = MODELS if args.model == 'all' else (args.model, )
    data = {}
    for name in names:
        levels = 0 if name == 'flat' else num_levels
        if levels not in data:
            data[levels] = {split: hierarchies(c[0], levels)
                            for split, c in clouds.items()}
    print(f"{args.dataset}: {len(clouds['train'][0])} training and "
          f"{len(clouds['test'][0])} test clouds of {num_points} points, "
          f"{num_classes} classes; HSA hierarchy with {num_levels} voxel "
          f"levels; device {device}")
    notes = [ONE_CLOUD_NOTE] if args.batch_size == 1 else []
    for note in notes:
        print(f'note: {note}', file=sys.stderr)

    results = {}
    budget = None
    if 'pointnet' in names:  # the budget is the attention model's size
        budget = count_parameters(build_model('hsa', args, num_classes))
    for name in names:
        levels = 0 if name == 'flat' else num_levels
        results[name] = run_model(name, data[levels], args, num_classes,
                                  device, budget)
    table = markdown_table(results)
    print(table)
    out = {
        'dataset': args.dataset,
        'num_classes': num_classes,
        'num_levels': num_levels,
        'args': vars(args),
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'results': results,
        'table': table,
        'notes': notes,
    }
    if args.filename:
        folder = osp.dirname(osp.abspath(args.filename))
        os.makedirs(folder, exist_ok=True)
        with open(args.filename, 'w') as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == '__main__':
    main()
