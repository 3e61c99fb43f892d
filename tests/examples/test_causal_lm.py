"""The causal language-model example: its hierarchies grow left to right,
its models are causal, cached decoding equals the parallel forward, and
smoke runs leave the checkout untouched."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'examples'))

import causal_lm  # noqa: E402
from causal_lm_data import (  # noqa: E402
    IndentationPaths,
    forest_parent,
    python_sources,
    split_of,
    window_paths,
)
from causal_lm_models import CausalLM, sliding_softmax  # noqa: E402

from checkout import (  # noqa: E402
    git_status,
    require_git_checkout,
    run_script,
)
from pyg_hsa import Tree  # noqa: E402

SOURCE = b'''import os
x = 1

class A:
    def f(self):
        if x:
            return 1
        return 2

    y = 3
z = 4
\x00def g():
  pass
'''


def stream_of(text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8)


def canonical(paths: torch.Tensor) -> torch.Tensor:
    """Ids renumbered per level by first appearance (the grouping only)."""
    out = torch.empty_like(paths)
    for level in range(paths.size(1)):
        _, first = np.unique(paths[:, level].numpy(), return_index=True)
        order = {int(paths[i, level]): rank for rank, i in
                 enumerate(sorted(first))}
        out[:, level] = torch.tensor([order[int(i)] for i in paths[:, level]])
    return out


def test_indentation_hierarchy_groups_lines_blocks_and_files():
    stream = stream_of(SOURCE)
    paths = IndentationPaths(stream, depth=2)(torch.arange(stream.size))
    assert paths.shape == (stream.size, 4)  # file, 2 blocks, line

    def path_at(snippet: bytes):
        return paths[SOURCE.index(snippet)].tolist()

    # A line runs from its first non-blank byte to the next line's.
    assert path_at(b'x = 1')[-1] == paths[SOURCE.index(b'1\n\nclass')
                                          + 2][-1]
    assert path_at(b'x = 1')[-1] != path_at(b'class')[-1]
    # "def f" opens a block of indentation 4 inside the class; "if x" and
    # "return 2" are in it; "return 1" (indentation 12) is cut to depth 2.
    f, if_x, ret1, ret2 = (path_at(s) for s in (
        b'def f', b'if x', b'return 1', b'return 2'))
    assert f[1] == if_x[1] == ret1[1] == ret2[1]  # the class body block
    assert if_x[2] == ret1[2] == ret2[2] != f[2]  # f's body block
    assert path_at(b'y = 3')[1] == f[1] and path_at(b'y = 3')[2] != f[2]
    # Top-level lines reach no block (unary levels, one per line).
    z = path_at(b'z = 4')
    assert z[1] == z[2] and z[1] not in (f[1], if_x[2])
    # The NUL ends the first file; "def g" starts the second, whose
    # indentation-2 block is new.
    assert path_at(b'z = 4')[0] == 0 and path_at(b'def g')[0] == 1
    assert path_at(b'pass')[1] not in (f[1], if_x[2])


def test_indentation_paths_depend_on_the_past_only():
    """The grouping of bytes 0..t is the same in every prefix of the
    stream that contains t: decoding can build it as bytes arrive."""
    stream = stream_of(SOURCE)
    full = canonical(IndentationPaths(stream, 2)(torch.arange(stream.size)))
    for t in range(1, stream.size):
        prefix = IndentationPaths(stream[:t + 1], 2)(torch.arange(t + 1))
        assert torch.equal(canonical(prefix), full[:t + 1]), t


def test_windows_and_forest():
    paths = window_paths(40, (4, 2))
    assert paths[:, 1].tolist() == [t // 4 for t in range(40)]
    assert paths[:, 0].tolist() == [t // 8 for t in range(40)]
    batch = paths.expand(3, -1, -1)
    tree = Tree.from_parent(forest_parent(batch), 120)
    assert tree.num_roots == 3
    assert tree.batch.tolist() == [b for b in range(3) for _ in range(40)]
    parent = tree.parent
    # Leaves 0..3 share a window, 4 starts the next; windows 0, 1 share a
    # parent; every chunk has its own nodes.
    assert parent[0] == parent[3] != parent[4]
    assert parent[parent[0]] == parent[parent[4]] != parent[parent[8]]
    assert parent[40] != parent[0]
    # 3 roots + per chunk 5 pairs of windows + 10 windows.
    assert tree.num_nodes == 120 + 3 + 3 * (5 + 10)


@pytest.mark.slow  # (seconds: reads the standard library twice)
def test_split_is_by_file_and_deterministic():
    # CRC-32 of the path modulo 20: 0 is valid, 1 test, the rest train
    # (pinned, so that a change of the rule or of the hash shows).
    assert split_of('json/decoder.py') == 'train'  # bucket 15
    assert split_of('m6.py') == 'valid'  # bucket 0
    assert split_of('m31.py') == 'test'  # bucket 1
    splits = [split_of(f'pkg/module_{i}.py') for i in range(400)]
    assert splits.count('valid') == splits.count('test') == 17
    streams = python_sources()
    # Files end with the separator; no file is in two splits.
    assert all(s[-1] == 0 for s in streams.values())
    assert streams['train'].size > 10 * streams['valid'].size


def dense_sliding(q, k, v, window):
    length = q.size(1)
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    logits = torch.einsum('blhc,bmhc->bhlm', q, k) / q.size(-1) ** 0.5
    logits = logits.masked_fill(~((j <= i) & (j > i - window)),
                                float('-inf'))
    return torch.einsum('bhlm,bmhc->blhc', logits.softmax(-1), v)


@pytest.mark.parametrize('length,window', [(37, 8), (64, 16), (5, 8)])
def test_sliding_window_equals_masked_softmax(length, window):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, length, 3, 4, dtype=torch.float64)
               for _ in range(3))
    torch.testing.assert_close(sliding_softmax(q, k, v, window),
                               dense_sliding(q, k, v, window))


def small_model(name: str) -> CausalLM:
    torch.manual_seed(1)
    net = CausalLM(causal_lm.ATTENTION[name], 16, 2, 2, window=8)
    with torch.no_grad():  # peaked attention, so that errors would show
        for block in net.blocks:
            block.norm_query.weight.mul_(3)
            block.norm_key.weight.mul_(3)
            block.conv.normal_()
    return net.eval()


def corpus_for(name: str, context: int = 48, *extra: str):
    args = causal_lm.parse_args(['--smoke', '--model', name, '--context',
                                 str(context), *extra])
    return causal_lm.Corpus(args)


@pytest.fixture(scope='module')
def corpora():
    return {name: corpus_for(name) for name in causal_lm.MODELS}


@pytest.mark.parametrize('name', causal_lm.MODELS)
def test_future_bytes_change_nothing_before_them(name, corpora):
    """Changing byte s (and so, for HSA, the hierarchy after it) leaves
    the logits of every byte before s unchanged."""
    corpus, net = corpora[name], small_model(name)
    starts = torch.tensor([100, 5000])
    data, _, tree = corpus.batch('valid', starts)
    before = net(data, tree)
    s = 30
    stream = corpus.streams['valid']
    original = stream[starts + s].clone()
    try:
        stream[starts + s] = torch.tensor([ord('\n'), ord(' ')])
        if corpus.indentation:
            corpus.indentation['valid'] = IndentationPaths(
                stream.numpy().astype(np.uint8), 3)
        changed, _, tree = corpus.batch('valid', starts)
        after = net(changed, tree)
    finally:
        stream[starts + s] = original
        if corpus.indentation:
            corpus.indentation['valid'] = IndentationPaths(
                stream.numpy().astype(np.uint8), 3)
    assert not torch.equal(changed, data)
    torch.testing.assert_close(after[:, :s], before[:, :s], rtol=0,
                               atol=1e-5)
    assert (after[:, s:] - before[:, s:]).abs().max() > 1e-3


@pytest.mark.parametrize('name', causal_lm.MODELS)
def test_cached_decoding_equals_the_parallel_forward(name, corpora):
    corpus, net = corpora[name], small_model(name)
    assert causal_lm.decode_check(net, corpus) <= 1e-5


def test_cached_decoding_with_other_windows():
    # Two levels of windows, the context not a multiple of them.
    corpus = corpus_for('hsa-windows', 40, '--windows', '6', '3')
    # Windows of 6 and 3 cover 18 bytes; longer runs get unary levels of 8.
    assert corpus.path('valid', 39, 18) == [0, 2, 6]
    assert corpus.path('valid', 39, 40) == [0, 0, 2, 6]
    assert corpus.path('valid', 39, 200) == [0, 0, 0, 2, 6]
    net = small_model('hsa-windows')
    assert causal_lm.decode_check(net, corpus) <= 1e-5


def test_decoding_timing_fills_caches_to_each_context(corpora):
    corpus = corpora['hsa-windows']
    args = causal_lm.parse_args(['--smoke', '--model', 'hsa-windows',
                                 '--decode_contexts', '64', '512'])
    out = causal_lm.decode_timing(small_model('hsa-windows'), corpus, args)
    assert sorted(out['ms_per_byte']) == [64, 512]
    assert all(ms > 0 for ms in out['ms_per_byte'].values())
    # Windows 16-8-8 (they cover the 516 bytes): at most 3 + 7 + 15
    # completed siblings on a path below the root.
    assert 0 < out['cache_entries'][512] <= 25


def test_training_lowers_the_loss_and_result_file(tmp_path):
    filename = tmp_path / 'out.json'
    result = causal_lm.main(['--smoke', '--model', 'hsa-indent', '--steps',
                             '20', '--filename', str(filename)])
    assert json.loads(filename.read_text())['valid'] == result['valid']
    assert result['curves']['loss'][-1] < result['curves']['loss'][0]
    assert result['train_steps'] == 40
    assert result['train_bytes'] == 40 * 2 * 64
    assert result['decode_max_abs_diff'] <= 1e-5
    assert 0 < result['valid'] < 8


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, monkeypatch):
    def run(checkpoint, *extra):
        return causal_lm.main(['--smoke', '--model', 'hsa-windows',
                               '--epochs', '3', '--checkpoint',
                               str(tmp_path / checkpoint),
                               '--decode_contexts', *extra])
    straight = run('a.ckpt')
    # Interrupted in epoch 2's evaluation, after epoch 1's checkpoint.
    evaluate, calls = causal_lm.bits_per_byte, []

    def crash_on_third_call(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return evaluate(*args)
    monkeypatch.setattr(causal_lm, 'bits_per_byte', crash_on_third_call)
    with pytest.raises(KeyboardInterrupt):
        run('b.ckpt')
    monkeypatch.setattr(causal_lm, 'bits_per_byte', evaluate)
    resumed = run('b.ckpt', '--resume')
    for key in ('loss', 'valid'):
        assert resumed['curves'][key] == straight['curves'][key]
    for key in ('train_steps', 'train_bytes'):  # all epochs, not the last
        assert resumed[key] == straight[key] == 3 * 3 * (
            1 if key == 'train_steps' else 2 * 64)
    # The learning-rate schedule spans the epochs: they must not change.
    with pytest.raises(ValueError, match='--epochs'):
        causal_lm.main(['--smoke', '--model', 'hsa-windows', '--epochs',
                        '4', '--checkpoint', str(tmp_path / 'b.ckpt'),
                        '--resume', '--decode_contexts'])


@pytest.mark.slow
@pytest.mark.parametrize('script', ['examples/causal_lm.py',
                                    'benchmarks/causal_lm_results.py'])
def test_smoke_run_writes_nothing_into_the_checkout(tmp_path, script):
    require_git_checkout()
    before = git_status('--ignored', skip=('cache',))
    done = run_script([script, '--smoke'], tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'bits per byte' in done.stdout or 'bits/byte' in done.stdout
    assert git_status('--ignored', skip=('cache',)) == before


def test_arguments_and_bad_input():
    args = causal_lm.parse_args(['--smoke', '--heads', '4', '--emb_dim',
                                 '32'])
    assert (args.heads, args.context, args.steps) == (4, 64, 3)
    args = causal_lm.parse_args([])
    assert (args.minutes, args.context, args.steps) == (20.0, 1024, None)
    assert args.decode_contexts == [1024, 4096, 16384, 65536]
    args = causal_lm.parse_args(['--smoke', '--minutes', '0.01'])
    assert (args.minutes, args.steps) == (0.01, None)  # a time budget
    for argv in (['--resume'], ['--epochs', '0'], ['--model', 'lstm'],
                 ['--emb_dim', '12', '--heads', '4'], ['--minutes', '0'],
                 ['--steps', '0'], ['--decode_contexts', '0'],
                 ['--windows', '16', '1'],
                 ['--decode_contexts', '64', '66']):
        with pytest.raises(SystemExit):
            causal_lm.parse_args(argv)
    with pytest.raises(ValueError, match="'attention'"):
        CausalLM('linear', 16, 2, 1)
    net = CausalLM('hsa', 16, 2, 1)
    with pytest.raises(ValueError, match="'tree'"):
        net(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match='validation text has only'):
        causal_lm.Corpus(causal_lm.parse_args(
            ['--smoke', '--decode_contexts', str(10**8)]))
    cache = CausalLM('softmax', 16, 2, 1).new_caches(4)[0]
    with pytest.raises(ValueError, match='holds 4 bytes'):
        cache.fill_random(5, 2, 8, None, torch.Generator())


def test_models_share_one_parameter_budget():
    counts = {name: sum(p.numel() for p in CausalLM(
        name, 32, 4, 2).parameters()) for name in ('softmax', 'sliding',
                                                   'hsa')}
    assert len(set(counts.values())) == 1


def test_loss_is_bits_per_byte(corpora):
    corpus, net = corpora['softmax'], small_model('softmax')
    starts = corpus.eval_starts['valid']
    data, target, _ = corpus.batch('valid', starts)
    with torch.no_grad():
        nats = F.cross_entropy(net(data).flatten(0, 1), target.flatten())
    bits = causal_lm.bits_per_byte(net, corpus, 'valid', 2)
    assert bits == pytest.approx(float(nats) / np.log(2), rel=1e-5)
