"""examples/pointcloud_cls.py: the smoke run every CI run makes (and that it
writes nothing into the checkout), the model budgets, the flat baseline's
tree, batches of one cloud, and the clear errors (offline ModelNet, clouds
of one point)."""
import json
import sys
from pathlib import Path

import pytest
import torch

from checkout import git_status, require_git_checkout, run_script

pytest.importorskip('trimesh')

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'examples' / 'pointcloud_cls.py'


@pytest.fixture(scope='module')
def example():
    sys.path.insert(0, str(ROOT / 'examples'))  # as the other example tests
    import pointcloud_cls
    return pointcloud_cls


@pytest.fixture(scope='module')
def smoke(example, tmp_path_factory):
    folder = tmp_path_factory.mktemp('pointcloud')
    filename = folder / 'results.json'
    out = example.main(['--smoke', '--quiet', '--root', str(folder),
                        '--device', 'cpu', '--filename', str(filename)])
    return out, json.loads(filename.read_text())


@pytest.mark.slow
def test_smoke_results(smoke):
    out, written = smoke
    assert written['results'] == json.loads(json.dumps(out['results']))
    assert set(written['results']) == {'hsa', 'flat', 'pointnet'}
    for result in written['results'].values():
        assert 0.0 <= result['test_acc'] <= 1.0
        assert 0.0 <= result['train_acc'] <= 1.0
        # 8 test clouds: accuracy is a multiple of 1/8.
        assert abs(result['test_acc'] * 8 - round(result['test_acc'] * 8)) \
            < 1e-9
        assert result['params'] > 0 and result['seconds_per_epoch'] > 0
    results = written['results']
    # The same network on two trees; PointNet sized to the same budget.
    assert results['hsa']['params'] == results['flat']['params']
    assert abs(results['pointnet']['params'] - results['hsa']['params']) \
        <= 0.02 * results['hsa']['params']
    assert written['table'].count('\n') == 4  # header, rule, 3 models


def test_pointnet_budget(example):
    budget = 50_000
    model = example.pointnet_like(budget, in_channels=3, channels=32,
                                  num_classes=8, num_layers=2)
    width = model.mlp.channel_list[1]
    params = example.count_parameters(model)

    def size(w):
        return example.count_parameters(example.PointNet(
            3, w, 32, 8, num_layers=2))

    # No other width comes closer to the budget.
    assert abs(params - budget) <= abs(size(width - 1) - budget)
    assert abs(params - budget) <= abs(size(width + 1) - budget)


def test_flat_tree_is_softmax_attention(example):
    # With num_levels=0 every point sits directly under its cloud, so the
    # attention layer is ordinary softmax attention (plus the pe term,
    # switched off here by zeroing the pe projection).
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader

    torch.manual_seed(0)
    clouds = [Data(pos=torch.randn(n, 3), y=torch.tensor([0]))
              for n in (5, 7)]
    flat = example.hierarchies(clouds, 0)
    assert flat[0].node_types == ['point', 'cloud']
    batch = next(iter(DataLoader(flat, batch_size=2)))
    model = example.HSAClassifier(3, 8, 2, num_layers=1, heads=2).eval()
    conv = model.layers[0].attn
    torch.nn.init.zeros_(conv.lin_pos.weight)
    x = model.encoder(batch['point'].x)
    with torch.no_grad():
        tree = _tree(batch)
        got = model.layers[0](x, tree, torch.zeros(tree.num_nodes, 3))
        q = conv.norm_query(conv.lin_query(x).view(-1, 2, 4))
        k = conv.norm_key(conv.lin_key(x).view(-1, 2, 4))
        v = conv.lin_value(x).view(-1, 2, 4)
        attn = torch.zeros(12, 2, 4)
        for lo, hi in ((0, 5), (5, 12)):
            attn[lo:hi] = torch.nn.functional.scaled_dot_product_attention(
                q[lo:hi].transpose(0, 1), k[lo:hi].transpose(0, 1),
                v[lo:hi].transpose(0, 1)).transpose(0, 1)
        layer = model.layers[0]
        h = layer.norm_attn(x + layer.lin_out(attn.reshape(12, 8)))
        expected = layer.norm_ffn(h + layer.ffn(h))
    assert torch.allclose(got, expected, atol=1e-5)


def _tree(batch):
    from pyg_hsa import Tree
    return Tree.from_hetero(batch)


def test_hierarchies_batch_with_fixed_depth(example):
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader

    # A nearly flat cloud and a round one get the same node types.
    torch.manual_seed(0)
    clouds = [Data(pos=torch.randn(64, 3) * torch.tensor([1, 1, 1e-3]),
                   y=torch.tensor([0])),
              Data(pos=torch.randn(64, 3), y=torch.tensor([1]))]
    trees = example.hierarchies(clouds, 2)
    assert trees[0].node_types == trees[1].node_types == [
        'point', 'voxel0', 'voxel1', 'cloud']
    for data in trees:  # centred, scaled into [-1, 1]^3, x = pos
        pos = data['point'].pos
        assert torch.equal(data['point'].x, pos)
        assert float(pos.abs().max()) == pytest.approx(1.0, abs=1e-5)
        assert torch.allclose(pos.mean(0), torch.zeros(3), atol=1e-5)
    batch = next(iter(DataLoader(trees, batch_size=2)))
    assert batch.y.tolist() == [0, 1]
    model = example.HSAClassifier(3, 8, 2, num_layers=1, heads=2)
    assert model(batch).shape == (2, 2)


def test_modelnet_missing_is_a_clear_error(example, tmp_path):
    with pytest.raises(SystemExit) as info:
        example.main(['--dataset', 'ModelNet10', '--root', str(tmp_path),
                      '--smoke', '--quiet'])
    message = str(info.value.code)
    assert 'ModelNet10 was not found' in message
    assert str(tmp_path / 'ModelNet10' / 'raw') in message
    assert 'nothing can be downloaded' in message


def test_bad_arguments(example):
    with pytest.raises(SystemExit):
        example.parse_args(['--emb_dim', '30', '--heads', '4'])
    with pytest.raises(SystemExit):
        example.parse_args(['--epochs', '0'])
    with pytest.raises(SystemExit):
        example.parse_args(['--dataset', 'ModelNet5'])


SIZE_NAMES = ('num_points', 'num_per_class', 'num_test_per_class', 'epochs',
              'batch_size', 'emb_dim', 'num_layers', 'heads')


def sizes(args):
    return {name: getattr(args, name) for name in SIZE_NAMES}


def test_smoke_changes_only_defaults(example):
    full = dict(num_points=256, num_per_class=40, num_test_per_class=20,
                epochs=18, batch_size=8, emb_dim=64, num_layers=2, heads=4)
    smoke = dict(num_points=64, num_per_class=2, num_test_per_class=1,
                 epochs=1, batch_size=4, emb_dim=16, num_layers=1, heads=2)
    assert sizes(example.parse_args([])) == full
    assert sizes(example.parse_args(['--smoke'])) == smoke
    # Explicit flags win, before or after --smoke.
    args = example.parse_args(['--num_points', '128', '--smoke', '--heads',
                               '4', '--batch_size', '2'])
    assert sizes(args) == dict(smoke, num_points=128, heads=4, batch_size=2)
    # ... also when they equal the full run's defaults.
    args = example.parse_args(['--smoke', '--epochs', '18'])
    assert sizes(args) == dict(smoke, epochs=18)
    assert sizes(example.parse_args(['--num_points', '64'])) == dict(
        full, num_points=64)


def test_smoke_conflicts_are_clear_errors(example, capsys):
    # The smoke width (16) does not split into 3 heads.
    with pytest.raises(SystemExit):
        example.parse_args(['--smoke', '--heads', '3'])
    assert '--emb_dim (16) must be divisible by --heads (3)' in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        example.parse_args(['--smoke', '--dataset', 'ModelNet10'])
    assert '--smoke with --dataset ModelNet10 needs --root' in \
        capsys.readouterr().err


@pytest.mark.parametrize('argv', [['--num_points', '1'],
                                  ['--smoke', '--num_points', '1']])
def test_one_point_clouds_are_a_clear_error(example, capsys, argv):
    with pytest.raises(SystemExit):
        example.parse_args(argv)
    err = capsys.readouterr().err
    assert '--num_points must be at least 2: a cloud of one point has no ' \
        'extent' in err
    with pytest.raises(SystemExit):
        example.parse_args(['--num_points', '0'])
    assert '--num_points must be a positive integer' in \
        capsys.readouterr().err


def test_clouds_without_extent_are_a_clear_error(example):
    from torch_geometric.data import Data

    clouds = [Data(pos=torch.randn(5, 3), y=torch.tensor([0])),
              Data(pos=torch.ones(4, 3), y=torch.tensor([1]))]
    with pytest.raises(ValueError, match='cloud 1 has all its 4 point'):
        example.hierarchies(clouds, 1)


def test_readout_with_one_cloud(example):
    """In training, a batch of one cloud is normalised with the running
    statistics (it has no batch statistics) and leaves them unchanged."""
    torch.manual_seed(0)
    readout = example.Readout(4, 3, dropout=0.0)
    readout.train()
    readout(torch.randn(20, 4), torch.arange(4).repeat_interleave(5), 4)
    mean = readout.norm.running_mean.clone()
    h, batch = torch.randn(6, 4), torch.zeros(6, dtype=torch.long)
    out = readout(h, batch, 1)
    assert torch.equal(readout.norm.running_mean, mean)
    assert bool(torch.isfinite(out).all())
    assert torch.allclose(out, readout.eval()(h, batch, 1))


@pytest.mark.slow
def test_batch_size_one_runs(example, tmp_path):
    filename = tmp_path / 'results.json'
    out = example.main(['--smoke', '--quiet', '--root', str(tmp_path),
                        '--device', 'cpu', '--batch_size', '1',
                        '--filename', str(filename)])
    assert out['args']['batch_size'] == 1
    assert out['notes'] and '--batch_size 1' in out['notes'][0]
    assert json.loads(filename.read_text())['notes'] == out['notes']
    for result in out['results'].values():
        assert 0.0 <= result['test_acc'] <= 1.0
        assert torch.isfinite(torch.tensor(result['final_loss']))


@pytest.mark.slow
def test_smoke_run_writes_nothing_into_the_checkout(tmp_path):
    """The documented CI command, run from the repository root without
    --root: it generates its data in a temporary folder (here under
    pytest's tmp_path, through TMPDIR) and deletes it; the checkout,
    ignored folders such as data/ included, stays as it was."""
    require_git_checkout()
    before = git_status(), git_status('--ignored')
    filename = tmp_path / 'results.json'
    done = run_script([str(SCRIPT), '--smoke', '--quiet', '--device', 'cpu',
                       '--filename', str(filename)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert '| hsa |' in done.stdout
    assert (git_status(), git_status('--ignored')) == before
    # The data lived in a temporary folder, now gone (PyG and torch keep
    # generated code and caches of their own in TMPDIR).
    root = Path(json.loads(filename.read_text())['args']['root'])
    assert root.parent == tmp_path and root.name.startswith('pointcloud_cls_')
    assert not root.exists()
