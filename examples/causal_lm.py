r"""A byte-level causal language model on the Python standard library's
own source, with causal query-resolved HSA, offline.

One transformer (:mod:`causal_lm_models`), the same parameters for every
row, trained from scratch for the same wall-clock time on the same bytes
(:mod:`causal_lm_data`: files split by a hash of their path). Only the
attention differs:

* ``softmax``: causal softmax attention over the whole context (PyTorch's
  fused kernel; a full KV cache when decoding);
* ``sliding``: causal softmax over the last ``--window`` bytes (a ring
  buffer of ``--window`` keys when decoding);
* ``hsa-windows``: causal query-resolved HSA over fixed windows
  (``--windows``: 16 bytes, 8 windows, 8 of those by default);
* ``hsa-indent``: causal query-resolved HSA over files, blocks by
  indentation, lines and bytes, a hierarchy that grows left to right.

Both HSA rows decode with :class:`~pyg_hsa.HierarchicalKVCache`. Reported:
validation and test bits per byte (the test at the epoch of best
validation), training steps and time, the largest difference between the
logits of cached decoding and of the parallel forward on a validation
chunk, and the time to decode one byte (the whole model) at contexts of
``--decode_contexts`` bytes. For that timing the caches are brought to
each context with random keys and values (a step's cost does not depend on
their values; the HSA caches follow the real text's hierarchy).

    python examples/causal_lm.py --model hsa-indent --minutes 20
    python examples/causal_lm.py --smoke      # seconds; what CI runs
    python benchmarks/causal_lm_results.py    # the table of docs/causal.md

``--epochs`` splits the budget (``--minutes``, or ``--steps`` per epoch
for runs that must repeat exactly) into evaluation points; the learning
rate warms up and follows a cosine over the whole budget. ``--train_mb``
trains on the first N MB of the training split (0: all of it). ``--smoke``
fills in tiny defaults for the options not given and writes to a
temporary folder. The JSON result file (``--filename``) holds the
arguments, curves and all the numbers above.
"""
import argparse
import math
import os
import os.path as osp
import statistics
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from causal_lm_data import (
    IndentationPaths,
    forest_parent,
    python_sources,
    window_paths,
)
from causal_lm_models import CausalLM
from training import (
    Distributed,
    add_checkpoint_arguments,
    add_size_arguments,
    checkpoint_from_filename,
    fill_sizes,
    fit,
    seed_everything,
    write_result,
)

from pyg_hsa import Tree, window_path

MODELS = ('softmax', 'sliding', 'hsa-windows', 'hsa-indent')
ATTENTION = {'softmax': 'softmax', 'sliding': 'sliding',
             'hsa-windows': 'hsa', 'hsa-indent': 'hsa'}
# (default, smoke default): --smoke changes only the options not given.
SIZES = {
    'epochs': (4, 2), 'context': (1024, 64), 'batch_size': (8, 2),
    'emb_dim': (128, 16), 'heads': (4, 2), 'num_layers': (4, 1),
    'window': (128, 16), 'eval_kb': (256, 1), 'train_mb': (0, 1),
    'decode_steps': (64, 4),
}
SMOKE = {'minutes': 0.0, 'steps': 3, 'decode_contexts': [64, 256]}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', choices=MODELS, default='hsa-indent')
    parser.add_argument('--minutes', type=float, default=None,
                        help='training time budget (default: 20)')
    parser.add_argument('--steps', type=int, default=None,
                        help='training steps per epoch instead of a time '
                             'budget')
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--windows', type=int, nargs='+', default=[16, 8, 8],
                        help='window sizes of hsa-windows, finest first')
    parser.add_argument('--depth', type=int, default=3,
                        help='indentation levels of hsa-indent')
    parser.add_argument('--decode_contexts', type=int, nargs='*',
                        default=None,
                        help='(default: 1024 4096 16384 65536; none: no '
                             'decoding timing)')
    parser.add_argument('--root', type=str, default='',
                        help='folder of .py files (default: the standard '
                             'library)')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads (default: torch\'s choice)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--filename', type=str, default='',
                        help='JSON result file')
    add_checkpoint_arguments(parser)
    add_size_arguments(parser, SIZES)
    args = parser.parse_args(argv)
    fill_sizes(args, SIZES)
    defaults = dict(SMOKE) if args.smoke else {
        'minutes': 20.0, 'decode_contexts': [1024, 4096, 16384, 65536]}
    if args.minutes is not None:  # a time budget given: no step budget
        defaults.pop('steps', None)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ('epochs', 'context', 'batch_size', 'emb_dim', 'heads',
                 'num_layers', 'window', 'eval_kb', 'decode_steps', 'depth'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1')
    if any(w < 2 for w in args.windows):
        parser.error('--windows must be at least 2 each')
    if args.steps is not None and args.steps < 1:
        parser.error('--steps must be at least 1')
    if args.steps is None and not args.minutes > 0:
        parser.error('--minutes must be positive (or give --steps)')
    if args.emb_dim % (2 * args.heads):
        parser.error('--emb_dim must be divisible by 2 * --heads (RoPE '
                     'rotates channel pairs of every head)')
    contexts = sorted(set(args.decode_contexts))
    if any(c < 1 for c in contexts) or any(
            b - a < args.decode_steps for a, b in zip(contexts, contexts[1:])):
        parser.error('--decode_contexts must be positive and at least '
                     '--decode_steps apart')
    checkpoint_from_filename(parser, args)
    return args


class Corpus:
    """The byte streams and, per model, the tree of a batch of chunks."""
    def __init__(self, args):
        streams = python_sources(args.root)
        if args.train_mb:
            streams['train'] = streams['train'][:args.train_mb * 2**20]
        self.streams = {name: torch.from_numpy(stream.astype(np.int64))
                        for name, stream in streams.items()}
        self.model, self.context = args.model, args.context
        self.windows = tuple(args.windows)
        self.indentation = {}
        if args.model == 'hsa-indent':
            self.indentation = {name: IndentationPaths(stream, args.depth)
                                for name, stream in streams.items()}
        longest = max(args.decode_contexts, default=0) + args.decode_steps
        if longest >= streams['valid'].size:
            raise ValueError(f"--decode_contexts: the validation text has "
                             f"only {streams['valid'].size} bytes (need "
                             f"more than {longest})")
        eval_bytes = args.eval_kb * 1024
        self.eval_starts = {
            name: torch.arange(0, min(eval_bytes, stream.size - 1)
                               - args.context + 1, args.context)
            for name, stream in streams.items() if name != 'train'}

    def batch(self, split: str, starts: torch.Tensor):
        """Inputs and targets ``[B, L]`` of the chunks at :obj:`starts`,
        and their tree (HSA models)."""
        positions = starts[:, None] + torch.arange(self.context)
        stream = self.streams[split]
        return stream[positions], stream[positions + 1], \
            self.tree(split, positions)

    def tree(self, split: str, positions: torch.Tensor) -> Optional[Tree]:
        if self.model == 'hsa-windows':
            paths = window_paths(self.context, self.windows).expand(
                positions.size(0), -1, -1)
        elif self.model == 'hsa-indent':
            paths = self.indentation[split](positions)
        else:
            return None
        return Tree.from_parent(forest_parent(paths), positions.numel())

    def path(self, split: str, position: int, span: int) -> List[int]:
        """A byte's ancestors for decoding, root first, in a run of
        :obj:`span` bytes (windows get one fixed number of levels for the
        run: unary levels on top change nothing)."""
        if self.model == 'hsa-windows':
            branching = list(self.windows)
            while math.prod(branching) < span:
                branching.append(8)
            return window_path(position, branching)
        if self.model == 'hsa-indent':
            return [0] + self.indentation[split](
                torch.tensor(position)).tolist()
        return [0]


@torch.no_grad()
def bits_per_byte(net: CausalLM, corpus: Corpus, split: str,
                  batch_size: int) -> float:
    net.eval()
    total, count = 0.0, 0
    for starts in corpus.eval_starts[split].split(batch_size):
        data, target, tree = corpus.batch(split, starts)
        logits = net(data, tree)
        total += F.cross_entropy(logits.flatten(0, 1), target.flatten(),
                                 reduction='sum').item()
        count += target.numel()
    return total / count / math.log(2)


def learning_rate(args, progress: float) -> float:
    """A cosine from :obj:`args.lr` down to a tenth over the whole budget,
    times a linear warm-up from 0 over its first 2%."""
    warm = min(1.0, progress / 0.02)
    return args.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def decode_check(net: CausalLM, corpus: Corpus) -> float:
    """Largest |logit| difference between decoding the first validation
    chunk byte by byte with the caches and the parallel forward."""
    net.eval()
    data, _, tree = corpus.batch('valid', torch.tensor([0]))
    parallel = net(data, tree)[0]
    caches = net.new_caches(corpus.context)
    diff = 0.0
    for t in range(corpus.context):
        logits = net.step(int(data[0, t]), t,
                          corpus.path('valid', t, corpus.context), caches)
        diff = max(diff, float((logits - parallel[t]).abs().max()))
    return diff


@torch.no_grad()
def decode_timing(net: CausalLM, corpus: Corpus, args) -> Dict:
    """Milliseconds to decode one byte at each context (median of
    ``--decode_steps`` steps) and the HSA cache's entries there."""
    net.eval()
    contexts = sorted(set(args.decode_contexts))
    stream = corpus.streams['valid']  # (long enough: see Corpus)
    generator = torch.Generator().manual_seed(args.seed)
    heads, channels = args.heads, args.emb_dim // args.heads
    caches = net.new_caches(contexts[-1] + args.decode_steps)
    span = contexts[-1] + args.decode_steps
    size, out = 0, {'ms_per_byte': {}, 'cache_entries': {}}
    for context in contexts:
        paths = [corpus.path('valid', t, span) for t in range(size, context)]
        for cache in caches:
            cache.fill_random(context - size, heads, channels, paths,
                              generator)
            cache.inputs = torch.randn(cache.conv.size(-1), args.emb_dim,
                                       generator=generator)
        seconds = []
        for t in range(context, context + args.decode_steps):
            byte, path = int(stream[t]), corpus.path('valid', t, span)
            start = time.perf_counter()
            net.step(byte, t, path, caches)
            seconds.append(time.perf_counter() - start)
        size = context + args.decode_steps
        out['ms_per_byte'][context] = 1e3 * statistics.median(seconds)
        out['cache_entries'][context] = getattr(
            caches[0].attention, 'num_entries', None)
        print(f'Decoding at {context} bytes: '
              f"{out['ms_per_byte'][context]:.3f} ms per byte", flush=True)
    return out


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke and not args.filename:
            args.filename = osp.join(scratch, 'result.json')
            args.checkpoint = args.checkpoint or args.filename + '.ckpt'
        return run(args)


# A checkpoint made with other values of these is refused by --resume.
CHECKED_ARGS = ('model', 'epochs', 'minutes', 'steps', 'lr', 'windows',
                'depth', 'context', 'batch_size', 'emb_dim', 'heads',
                'num_layers', 'window', 'eval_kb', 'train_mb', 'seed', 'root',
                'smoke')


def run(args) -> Dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if int(os.environ.get('WORLD_SIZE', 1)) > 1:
        raise ValueError('causal_lm.py runs in one process (no torchrun)')
    ctx = Distributed(use_cuda=False)
    seed_everything(args.seed)
    corpus = Corpus(args)
    net = CausalLM(ATTENTION[args.model], args.emb_dim, args.heads,
                   args.num_layers, args.window)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr,
                                  weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    train = corpus.streams['train']
    seconds_per_epoch = 60.0 * args.minutes / args.epochs
    counts = {'steps': 0, 'bytes': 0, 'seconds': 0.0}  # (fit resumes them)

    def train_epoch(epoch: int) -> float:
        net.train()
        total, steps, start = 0.0, 0, time.perf_counter()
        while True:
            elapsed = time.perf_counter() - start
            if args.steps is not None:
                if steps == args.steps:
                    break
                progress = (epoch - 1 + steps / args.steps) / args.epochs
            else:
                if elapsed >= seconds_per_epoch:
                    break
                progress = (epoch - 1 + elapsed / seconds_per_epoch) \
                    / args.epochs
            for group in optimizer.param_groups:
                group['lr'] = learning_rate(args, progress)
            starts = torch.randint(0, train.numel() - args.context - 1,
                                   (args.batch_size,), generator=generator)
            data, target, tree = corpus.batch('train', starts)
            loss = F.cross_entropy(net(data, tree).flatten(0, 1),
                                   target.flatten())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            total += loss.item()
            steps += 1
        counts['steps'] += steps
        counts['bytes'] += steps * args.batch_size * args.context
        counts['seconds'] += time.perf_counter() - start
        return total / max(steps, 1) / math.log(2)

    def evaluate(name: str) -> float:
        return bits_per_byte(net, corpus, name, args.batch_size)

    result = fit(args, net, optimizer, generator, ctx, train_epoch,
                 evaluate, 'bits per byte', higher_better=False,
                 checked_args=CHECKED_ARGS, test_every_epoch=False,
                 extra={'counts': counts})
    result.update(train_steps=counts['steps'], train_bytes=counts['bytes'],
                  train_seconds=counts['seconds'],
                  decode_max_abs_diff=decode_check(net, corpus),
                  threads=torch.get_num_threads())
    if args.decode_contexts:
        result['decoding'] = decode_timing(net, corpus, args)
    print(f"Cached decoding vs parallel forward: largest logit difference "
          f"{result['decode_max_abs_diff']:.2e}", flush=True)
    write_result(result, args.filename, ctx)
    return result


if __name__ == '__main__':
    main()
