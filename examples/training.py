r"""Training machinery shared by the example scripts (``ogbg_mol.py``,
``listops.py``, ``causal_lm.py``, ``pointcloud_cls.py``): the process
group under ``torchrun``, seeding, one training epoch, the width that
matches a parameter budget (and ``--count_parameters``, through which the
benchmarks ask for it), the ``--smoke`` sizes, and the epoch loop with best-validation selection,
atomic checkpoints, ``--resume`` and the JSON result file.

A script imports it as ``from training import ...``: Python puts the
script's own folder first on ``sys.path``, so this works from any working
directory and under ``torchrun``.
"""
import argparse
import json
import os
import os.path as osp
import random
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pyg_hsa.utils.io import atomic_save


class Distributed:
    """The process group when launched by torchrun (``WORLD_SIZE > 1``),
    a single process otherwise. On GPUs every rank uses its own device
    (``first_device`` + local rank), with nccl for CUDA tensors and gloo
    for the small CPU collectives."""
    def __init__(self, use_cuda: bool, first_device: int = 0):
        self.world_size = int(os.environ.get('WORLD_SIZE', 1))
        self.rank = int(os.environ.get('RANK', 0))
        self.local_rank = int(os.environ.get('LOCAL_RANK', 0))
        self.device = torch.device('cpu')
        if use_cuda:
            self.device = torch.device('cuda', first_device + self.local_rank)
            torch.cuda.set_device(self.device)
        if self.enabled and not dist.is_initialized():
            if use_cuda:
                dist.init_process_group('cpu:gloo,cuda:nccl',
                                        device_id=self.device)
            else:
                dist.init_process_group('gloo')

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def show_progress(self) -> bool:
        """Progress bars on rank 0, and only on a terminal."""
        return self.main and sys.stderr.isatty()

    def first_then_others(self, build: Callable):
        """``build()`` on rank 0 first (which may write a dataset to disk),
        then on the other ranks (which then only read it)."""
        if self.enabled and not self.main:
            dist.barrier()
        out = build()
        if self.enabled and self.main:
            dist.barrier()
        return out

    def gather(self, items: list) -> list:
        """Every rank's list, concatenated in rank order, on all ranks."""
        if not self.enabled:
            return items
        out: List[list] = [None] * self.world_size
        dist.all_gather_object(out, items)
        return [item for part in out for item in part]

    def share_buffers(self, module: torch.nn.Module):
        """Rank 0's buffers (BatchNorm statistics) on every rank: DDP syncs
        them only at the start of a forward, so after training each rank
        would otherwise evaluate with its own last batch's statistics."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def sum(self, *values: float) -> List[float]:
        """The sums of :obj:`values` over all ranks."""
        if not self.enabled:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()

    def close(self):
        if self.enabled:
            dist.destroy_process_group()


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` and ``--resume``; see
    :func:`checkpoint_from_filename`."""
    parser.add_argument('--checkpoint', type=str, default='',
                        help='checkpoint file (default: <filename>.ckpt '
                             'when --filename is given, else none)')
    parser.add_argument('--resume', action='store_true',
                        help='continue from --checkpoint')


def add_size_arguments(parser: argparse.ArgumentParser,
                       sizes: Dict[str, Tuple[int, int]],
                       notes: Optional[Dict[str, str]] = None) -> None:
    """``--smoke`` and an integer option per entry ``name: (default, smoke
    default)`` of :obj:`sizes`, with ``notes[name]`` (if any) added to its
    help; :func:`fill_sizes` fills in the ones not given, so ``--smoke``
    changes only those."""
    parser.add_argument('--smoke', action='store_true',
                        help='tiny sizes and data (seconds)')
    for name, (default, smoke) in sizes.items():
        note = (notes or {}).get(name, '')
        parser.add_argument(f'--{name}', type=int, default=None,
                            help=f'{note + " " if note else ""}(default: '
                                 f'{default}; --smoke: {smoke})')


def fill_sizes(args: argparse.Namespace,
               sizes: Dict[str, Tuple[int, int]]) -> None:
    """The default (or, with ``--smoke``, the smoke default) of every size
    not given."""
    for name, (default, smoke) in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else default)


def checkpoint_from_filename(parser: argparse.ArgumentParser,
                             args: argparse.Namespace) -> None:
    """``--checkpoint`` defaults to ``<filename>.ckpt``; ``--resume``
    needs one."""
    if not args.checkpoint and args.filename:
        args.checkpoint = args.filename + '.ckpt'
    if args.resume and not args.checkpoint:
        parser.error('--resume needs --checkpoint (or --filename)')


def train_epoch(model: torch.nn.Module, loader, optimizer,
                ctx: Distributed,
                loss_of: Callable[[object], Optional[torch.Tensor]]) -> float:
    """One pass over :obj:`loader` (batches moved to ``ctx.device``): the
    mean of ``loss_of(batch)`` over the examples of all ranks, weighted by
    ``batch.num_graphs``; a batch whose loss is :obj:`None` is skipped."""
    model.train()
    total, count = 0.0, 0
    for batch in tqdm(loader, desc='Iteration', disable=not ctx.show_progress,
                      leave=False):
        batch = batch.to(ctx.device)
        loss = loss_of(batch)
        if loss is None:
            continue
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * batch.num_graphs
        count += batch.num_graphs
    total, count = ctx.sum(total, count)
    return total / max(count, 1)


def add_parameter_arguments(parser: argparse.ArgumentParser) -> None:
    """``--count_parameters`` and ``--match_parameters``; see
    :func:`report_parameters`."""
    parser.add_argument('--count_parameters', action='store_true',
                        help='print the model\'s width and parameter count '
                             'as JSON and exit (builds the model only)')
    parser.add_argument('--match_parameters', type=int, default=0,
                        metavar='N',
                        help='with --count_parameters: the width whose '
                             'parameter count is closest to N instead of '
                             '--emb_dim')


def report_parameters(args: argparse.Namespace,
                      build: Callable[[int], torch.nn.Module], maximum: int,
                      step: int = 1) -> Dict[str, int]:
    """Prints ``{"emb_dim": width, "num_params": count}`` as one JSON line
    (and returns it) for the model ``build(width)``: at ``--emb_dim``, or,
    with ``--match_parameters N``, at the multiple of :obj:`step` up to
    :obj:`maximum` whose count is closest to ``N``. The benchmarks match
    their rows' parameter budgets through it."""
    def count(width: int) -> int:
        return count_parameters(build(width))

    width = args.emb_dim
    if args.match_parameters:
        width = closest_width(count, args.match_parameters, maximum, step)
    out = {'emb_dim': width, 'num_params': count(width)}
    print(json.dumps(out))
    return out


def closest_width(count: Callable[[int], int], budget: int, maximum: int,
                  step: int = 1) -> int:
    """The multiple of :obj:`step` up to :obj:`maximum` whose parameter
    count ``count(width)`` is closest to :obj:`budget`, by bisection
    (parameters grow monotonically with the width)."""
    lo, hi = 1, max(1, maximum // step)  # in units of step
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid * step) < budget:
            lo = mid + 1
        else:
            hi = mid
    candidates = [w * step for w in (lo - 1, lo) if w >= 1]
    return min(candidates, key=lambda w: abs(count(w) - budget))


def fit(args, net: torch.nn.Module, optimizer, generator: torch.Generator,
        ctx: Distributed, train_epoch: Callable[[int], float],
        evaluate: Callable[[str], float], metric: str, higher_better: bool,
        checked_args: Sequence[str], extra: Optional[Dict] = None,
        test_every_epoch: bool = True, restore_best: bool = False) -> Dict:
    """Epochs ``1 .. args.epochs`` (continuing after the checkpoint's with
    ``args.resume``): ``train_epoch(epoch)`` returns the mean training
    loss, ``evaluate('valid' | 'test')`` the metric. The weights of the
    best validation epoch are kept; after every epoch rank 0 saves a
    checkpoint atomically to ``args.checkpoint`` (model, optimiser, data
    order and dropout random state, best weights, and :obj:`extra`); on
    ``--resume``, the dictionaries among :obj:`extra`'s values (running
    counts, say) are updated in place from the checkpoint. A checkpoint
    made with other values of :obj:`checked_args` is refused. Without
    :obj:`test_every_epoch` the test metric is computed only when the
    validation metric improves (NaN in the curve otherwise). With
    :obj:`restore_best`, :obj:`net` ends with the best epoch's weights.
    Returns the result (written to ``args.filename`` by
    :func:`write_result`)."""
    state = {'epoch': 0, 'best': None,
             'curves': {'loss': [], 'valid': [], 'test': [], 'seconds': []}}
    best_model = None  # the weights of the best validation epoch
    if args.resume:
        state, best_model = resume(args, net, optimizer, generator, ctx,
                                   checked_args, extra)

    for epoch in range(state['epoch'] + 1, args.epochs + 1):
        start = time.perf_counter()
        loss = train_epoch(epoch)
        seconds = time.perf_counter() - start
        ctx.share_buffers(net)  # evaluate (and save) rank 0's model
        valid = evaluate('valid')
        best = state['best']
        improved = best is None or np.isnan(best['valid']) or (
            valid > best['valid'] if higher_better else valid < best['valid'])
        test = evaluate('test') if test_every_epoch or improved \
            else float('nan')
        curves = state['curves']
        for key, value in (('loss', loss), ('valid', valid), ('test', test),
                           ('seconds', seconds)):
            curves[key].append(value)
        if improved:
            state['best'] = {'epoch': epoch, 'valid': valid, 'test': test}
            best_model = {k: v.detach().clone()
                          for k, v in net.state_dict().items()}
        state['epoch'] = epoch
        if ctx.main:
            # (The test split is evaluated when validation improves.)
            shown = 'not evaluated' if np.isnan(test) else f'{test:.4f}'
            print(f'Epoch {epoch:3d}  loss {loss:.4f}  valid {metric} '
                  f'{valid:.4f}  test {shown}  ({seconds:.2f} s)',
                  flush=True)
            if args.checkpoint:
                atomic_save({'args': vars(args), 'state': state,
                             'model': net.state_dict(),
                             'optimizer': optimizer.state_dict(),
                             'generator': generator.get_state(),
                             'torch_rng': torch.get_rng_state(),
                             'best_model': best_model, **(extra or {})},
                            args.checkpoint)

    best = state['best']
    if restore_best and best_model is not None:
        net.load_state_dict(best_model)
    result = {
        'args': vars(args), 'metric': metric,
        'num_params': count_parameters(net), 'world_size': ctx.world_size,
        'best_epoch': best['epoch'], 'valid': best['valid'],
        'test': best['test'],
        'seconds_per_epoch': float(np.mean(state['curves']['seconds'])),
        'curves': state['curves'],
    }
    if ctx.main:
        test = '' if np.isnan(best['test']) else \
            f"; test {best['test']:.4f}"
        print(f"Best validation {metric} {best['valid']:.4f} at epoch "
              f"{best['epoch']}{test}")
    return result


def write_result(result: Dict, filename: str, ctx: Distributed):
    """The JSON result file, written whole or not at all (rank 0)."""
    if ctx.main and filename:
        with open(filename + '.tmp', 'w') as f:
            json.dump(result, f, indent=1)
        os.replace(filename + '.tmp', filename)


def resume(args, net, optimizer, generator, ctx: Distributed,
           checked_args: Sequence[str], extra: Optional[Dict] = None):
    """Restores model, optimiser, random state and the dictionaries of
    :obj:`extra` from the checkpoint and returns the training state and
    the best weights so far; training continues at the epoch after the
    saved one. (Exact for one process;
    under DDP every rank restarts from rank 0's random state.)"""
    if not osp.exists(args.checkpoint):
        raise FileNotFoundError(f"--resume: no checkpoint at "
                                f"'{args.checkpoint}'")
    try:
        saved = torch.load(args.checkpoint, map_location='cpu')
        keys = ('args', 'state', 'model', 'optimizer', 'generator',
                'torch_rng', 'best_model')
        if not isinstance(saved, dict) or any(k not in saved for k in keys):
            raise ValueError('missing entries')
    except Exception as error:
        raise RuntimeError(f"--resume: '{args.checkpoint}' is not a "
                           f"readable checkpoint of this script ({error}); "
                           f"delete it to start over") from error
    for key in checked_args:
        if saved['args'].get(key) != getattr(args, key):
            raise ValueError(f"--resume: the checkpoint was made with "
                             f"--{key} {saved['args'].get(key)}, not "
                             f"{getattr(args, key)}")
    net.load_state_dict(saved['model'])
    optimizer.load_state_dict(saved['optimizer'])
    generator.set_state(saved['generator'])
    torch.set_rng_state(saved['torch_rng'])
    for key, value in (extra or {}).items():
        if isinstance(value, dict):
            value.update(saved.get(key, {}))
    if ctx.main:
        print(f"Resuming after epoch {saved['state']['epoch']}", flush=True)
    return saved['state'], saved['best_model']
