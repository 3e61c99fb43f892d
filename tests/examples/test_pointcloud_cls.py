"""examples/pointcloud_cls.py: the smoke run every CI run makes, the model
budgets, the flat baseline's tree and the offline ModelNet error."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip('trimesh')

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'examples' / 'pointcloud_cls.py'


@pytest.fixture(scope='module')
def example():
    spec = importlib.util.spec_from_file_location('pointcloud_cls', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def smoke(example, tmp_path_factory):
    folder = tmp_path_factory.mktemp('pointcloud')
    filename = folder / 'results.json'
    out = example.main(['--smoke', '--quiet', '--root', str(folder),
                        '--device', 'cpu', '--filename', str(filename)])
    return out, json.loads(filename.read_text())


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
    params = example.num_parameters(model)

    def size(w):
        return example.num_parameters(example.PointNet(
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
