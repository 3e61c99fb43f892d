"""The ListOps example: every model trains on its hierarchy, resume
continues exactly, smoke runs leave the checkout untouched, and the
models see what they claim to see."""
import json
import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.loader import DataLoader

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'examples'))

import listops  # noqa: E402

from checkout import (  # noqa: E402
    git_status,
    require_git_checkout,
    run_script,
)
from pyg_hsa import Tree  # noqa: E402
from pyg_hsa.datasets import ListOps  # noqa: E402

SMALL = ['--smoke', '--epochs', '2', '--emb_dim', '8', '--heads', '2']


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp('listops'))


@pytest.mark.slow
@pytest.mark.parametrize('model', listops.MODELS)
def test_every_model_trains(root, tmp_path, model):
    filename = tmp_path / 'out.json'
    result = listops.main(['--model', model, '--root', root, *SMALL,
                           '--filename', str(filename)])
    assert json.loads(filename.read_text())['test'] == result['test']
    assert len(result['curves']['loss']) == 2
    assert 0.0 <= result['test'] <= 1.0
    assert result['given_parse_tree'] == (model in ('hsa-tree', 'gin'))
    assert result['num_train'] == 16 and result['num_test'] == 8
    assert result['peak_memory_mb'] > 0


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch(root, tmp_path):
    def run(epochs, checkpoint, *extra):
        return listops.main(['--root', root, *SMALL, '--epochs', str(epochs),
                             '--dropout', '0.1', '--checkpoint',
                             str(tmp_path / checkpoint), *extra])
    straight = run(3, 'a.ckpt')
    run(1, 'b.ckpt')
    resumed = run(3, 'b.ckpt', '--resume')
    for key in ('loss', 'valid'):
        assert resumed['curves'][key] == straight['curves'][key]
    with pytest.raises(ValueError, match='--emb_dim'):
        run(4, 'b.ckpt', '--resume', '--emb_dim', '4')


@pytest.mark.slow
@pytest.mark.parametrize('script', ['examples/listops.py',
                                    'benchmarks/listops_results.py'])
def test_smoke_run_writes_nothing_into_the_checkout(tmp_path, script):
    require_git_checkout()
    before = git_status('--ignored', skip=('cache',))
    done = run_script([script, '--smoke'], tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'accuracy' in done.stdout
    assert git_status('--ignored', skip=('cache',)) == before


def test_arguments():
    args = listops.parse_args(['--smoke', '--heads', '4'])
    assert (args.heads, args.emb_dim, args.epochs) == (4, 16, 1)
    args = listops.parse_args([])
    assert (args.heads, args.emb_dim, args.train_examples) == (4, 64, 0)
    for argv in (['--resume'], ['--epochs', '0'], ['--model', 'lstm'],
                 ['--emb_dim', '10', '--heads', '4'], ['--dropout', '1'],
                 ['--train_examples', '-1']):
        with pytest.raises(SystemExit):
            listops.parse_args(argv)


def test_hierarchies_and_model_inputs(root):
    """The parse tree nests by brackets, the windows by position, the flat
    tree is one family per expression; GIN reads out at the roots."""
    data = ListOps(root, 'val', num_examples=listops.SMOKE_SPLITS)[:3]
    tokens = [d.x for d in data]
    trees = {}
    for model in ('hsa-tree', 'hsa-windows', 'transformer'):
        transform = listops.hierarchy(model)
        batch = next(iter(DataLoader([transform(d) for d in data],
                                     batch_size=3)))
        tree = Tree.from_hetero(batch)
        assert tree.num_roots == 3
        assert tree.num_leaves == sum(t.numel() for t in tokens)
        pe = listops.node_positions(batch, tree)
        assert pe.shape == (tree.num_nodes, listops.PE_CHANNELS)
        trees[model] = (tree, batch)
    flat, _ = trees['transformer']
    assert flat.depth == 1
    # Parse tree: one internal node per operator; depth = nesting + 1.
    parse, _ = trees['hsa-tree']
    operators = sum(int((t < 14).sum() - (t < 10).sum()) for t in tokens)
    assert parse.num_nodes - parse.num_leaves == operators
    nesting = max(int(torch.cumsum(torch.where(
        t == ListOps.CLOSING_ID, -1, (t >= 10).long()), 0).max())
        for t in tokens)
    assert parse.depth == nesting

    # Models are batching invariant: a batch equals each example alone.
    torch.manual_seed(0)
    for model in ('hsa-tree', 'gin'):
        args = listops.parse_args(['--smoke', '--model', model])
        net = listops.make_model(args).eval()
        transform = listops.hierarchy(model)
        examples = [transform(d) for d in data]
        batch = next(iter(DataLoader(examples, batch_size=3)))
        out = net(batch)
        for i, example in enumerate(examples):
            alone = net(next(iter(DataLoader([example], batch_size=1))))
            torch.testing.assert_close(out[i:i + 1], alone, rtol=1e-4,
                                       atol=1e-5)
