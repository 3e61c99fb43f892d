"""ShapePrimitives: deterministic, balanced, well-formed, written
atomically, and loud about corrupted files and bad arguments."""
import os

import numpy as np
import pytest
import torch

from pyg_hsa.datasets.shape_primitives import ShapePrimitives

pytest.importorskip('trimesh')

NUM_CLASSES = 8


def build(root, **kwargs):
    kwargs.setdefault('num_per_class', 2)
    kwargs.setdefault('num_points', 64)
    return ShapePrimitives(str(root), **kwargs)


@pytest.fixture(scope='module')
def train(tmp_path_factory):
    return build(tmp_path_factory.mktemp('shapes'), split='train')


def test_shapes_labels_and_balance(train):
    assert len(train) == NUM_CLASSES * 2
    assert train.num_classes == NUM_CLASSES
    assert len(ShapePrimitives.classes) == NUM_CLASSES
    for i, data in enumerate(train):
        assert data.pos.shape == (64, 3) and data.pos.dtype == torch.float
        assert data.y.shape == (1, ) and data.y.dtype == torch.long
        assert int(data.y) == i // 2  # ordered by class
        assert bool(torch.isfinite(data.pos).all())
    counts = torch.bincount(torch.cat([d.y for d in train]))
    assert counts.tolist() == [2] * NUM_CLASSES


def test_geometry(train):
    # Overall scale 0.5-2 on shapes about one unit across: every cloud is
    # centred near the origin with a diameter in a sane range.
    for data in train:
        extent = data.pos.max(0).values - data.pos.min(0).values
        assert 0.1 < float(extent.max()) < 4.5
        assert float(data.pos.mean(0).norm()) < 1.0
    # The ellipsoids (class 1): radius 0.5 stretched by at most 1.25 and
    # 0.8 per axis, so every point lies between 0.4 and 0.625 times the
    # scale from the centre, up to the noise. The ratio of the largest
    # to the smallest distance is scale free.
    for data in train[2:4]:
        radius = (data.pos - data.pos.mean(0)).norm(dim=1)
        assert float(radius.max() / radius.min()) < 0.625 / 0.4 * 1.2
    # The tori (class 5) have a hole: no point is closer to the centre
    # than (R - r) / (R + r) >= 0.15 / 0.55 of the farthest one.
    for data in train[10:12]:
        radius = (data.pos - data.pos.mean(0)).norm(dim=1)
        assert float(radius.min() / radius.max()) > 0.2


def test_independent_of_global_rng_and_build(tmp_path, train):
    torch.manual_seed(1)
    np.random.seed(1)
    state = (torch.get_rng_state(), np.random.get_state()[1].copy())
    again = build(tmp_path / 'again', split='train')
    # A second build in another folder gives identical data ...
    assert torch.equal(again._data.pos, train._data.pos)
    assert torch.equal(again._data.y, train._data.y)
    # ... and leaves the global random state alone.
    assert torch.equal(torch.get_rng_state(), state[0])
    assert np.array_equal(np.random.get_state()[1], state[1])
    # Example j of class c depends on (seed, split, c, j) only: more
    # examples per class extend the smaller dataset.
    bigger = build(tmp_path / 'bigger', split='train', num_per_class=3)
    for c in range(NUM_CLASSES):
        for j in range(2):
            assert torch.equal(bigger[3 * c + j].pos, train[2 * c + j].pos)
        assert not torch.equal(bigger[3 * c + 2].pos, train[2 * c + 1].pos)
    assert torch.equal(bigger.generate('train', 5).pos, bigger[5].pos)


def test_splits_and_seeds_differ(tmp_path, train):
    test = build(tmp_path, split='test', num_per_class=1)
    assert len(test) == NUM_CLASSES
    assert torch.cat([d.y for d in test]).tolist() == list(range(8))
    assert not torch.equal(test[0].pos, train[0].pos)
    other = build(tmp_path, split='train', seed=1)
    assert not torch.equal(other[0].pos, train[0].pos)
    # Both live side by side in their own processed folders.
    folders = sorted(os.listdir(tmp_path / 'processed'))
    assert folders == ['test_n1_p64_s0', 'train_n2_p64_s1']


def test_default_sizes(tmp_path, monkeypatch):
    # Avoid generating 800 clouds: only the sizes are checked here.
    monkeypatch.setattr(ShapePrimitives, 'generate',
                        lambda self, split, i: torch_geometric_data(i, self))
    assert len(ShapePrimitives(str(tmp_path))) == NUM_CLASSES * 80
    assert len(ShapePrimitives(str(tmp_path), split='test')) == \
        NUM_CLASSES * 20


def torch_geometric_data(i, dataset):
    from torch_geometric.data import Data
    return Data(pos=torch.zeros(1, 3),
                y=torch.tensor([i // dataset.num_per_class]))


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    dataset = build(tmp_path, num_per_class=1)
    folder = dataset.processed_dir
    assert sorted(os.listdir(folder)) == [
        'data.pt', 'pre_filter.pt', 'pre_transform.pt'
    ]


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def fail(self, split, i):
        if i == 3:
            raise RuntimeError('boom')
        return torch_geometric_data(i, self)

    monkeypatch.setattr(ShapePrimitives, 'generate', fail)
    with pytest.raises(RuntimeError, match='boom'):
        build(tmp_path)
    folder = tmp_path / 'processed' / 'train_n2_p64_s0'
    assert not folder.exists() or os.listdir(folder) == []


@pytest.mark.parametrize('content', [b'', b'not a torch file', None])
def test_corrupted_file_names_the_folder(tmp_path, content):
    dataset = build(tmp_path, num_per_class=1)
    path = dataset.processed_paths[0]
    if content is None:  # a truncated file
        with open(path, 'rb') as f:
            content = f.read()[:200]
    with open(path, 'wb') as f:
        f.write(content)
    with pytest.raises(RuntimeError) as info:
        build(tmp_path, num_per_class=1)
    message = str(info.value)
    assert 'corrupted' in message and 'delete the folder' in message
    assert dataset.processed_dir in message


def test_pre_transform_and_pre_filter(tmp_path):
    def keep(data):
        return int(data.y) % 2 == 0

    def center(data):
        data.pos = data.pos - data.pos.mean(0)
        return data

    dataset = build(tmp_path, num_per_class=1, pre_filter=keep,
                    pre_transform=center)
    assert torch.cat([d.y for d in dataset]).tolist() == [0, 2, 4, 6]
    for data in dataset:
        assert torch.allclose(data.pos.mean(0), torch.zeros(3), atol=1e-5)


@pytest.mark.parametrize('kwargs, name', [
    (dict(split='val'), 'split'),
    (dict(num_per_class=0), 'num_per_class'),
    (dict(num_points=0), 'num_points'),
    (dict(num_points=np.int64(-5)), 'num_points'),
    (dict(seed=-1), 'seed'),
])
def test_out_of_range_arguments_are_value_errors(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=f"'{name}' must be"):
        build(tmp_path, **kwargs)
    assert not (tmp_path / 'processed').exists()


@pytest.mark.parametrize('kwargs, name', [
    (dict(split=None), 'split'),
    (dict(num_per_class=2.5), 'num_per_class'),
    (dict(num_points=True), 'num_points'),
    (dict(num_points=np.float64(64)), 'num_points'),
    (dict(seed='0'), 'seed'),
    (dict(transform='x'), 'transform'),
    (dict(pre_filter=3), 'pre_filter'),
    (dict(force_reload=1), 'force_reload'),
])
def test_wrong_types_are_type_errors(tmp_path, kwargs, name):
    with pytest.raises(TypeError, match=f"'{name}' must be"):
        build(tmp_path, **kwargs)
    assert not (tmp_path / 'processed').exists()


def test_bad_root():
    with pytest.raises(ValueError, match="'root' must be a non-empty path"):
        ShapePrimitives('')
    with pytest.raises(TypeError, match="'root' must be a path"):
        ShapePrimitives(None)


def test_numpy_scalars_and_path_root(tmp_path, train):
    dataset = ShapePrimitives(tmp_path, split=np.str_('train'),
                              num_per_class=np.int64(2),
                              num_points=np.int32(64), seed=np.uint8(0),
                              force_reload=np.bool_(False))
    assert dataset.processed_dir == str(tmp_path / 'processed' /
                                        'train_n2_p64_s0')
    assert [type(v) for v in (dataset.split, dataset.num_per_class,
                              dataset.num_points, dataset.seed)] == [
                                  str, int, int, int]
    assert repr(dataset) == repr(train)
    assert torch.equal(dataset._data.pos, train._data.pos)


def test_repr(train):
    assert repr(train) == \
        "ShapePrimitives(16, split='train', num_points=64)"


def test_hierarchy_pre_transform_round_trips(tmp_path):
    # Pre-transformed into HeteroData, the processed file keeps the class.
    from pyg_hsa.transforms import PointCloudToHierarchy

    transform = PointCloudToHierarchy(num_levels=1)
    dataset = build(tmp_path, num_per_class=1, pre_transform=transform)
    plain = build(tmp_path / 'plain', num_per_class=1)
    for hetero, data in zip(dataset, plain):
        expected = transform(data)
        assert hetero.node_types == expected.node_types
        assert torch.equal(hetero['point'].pos, data.pos)
        assert torch.equal(hetero['point'].pe, expected['point'].pe)
        assert torch.equal(hetero['voxel0', 'in', 'cloud'].edge_index,
                           expected['voxel0', 'in', 'cloud'].edge_index)
        assert torch.equal(hetero.y, data.y)
