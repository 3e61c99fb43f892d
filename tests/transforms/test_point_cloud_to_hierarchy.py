import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_geometric.typing
from torch_geometric.data import Data

from pyg_hsa.transforms.point_cloud_to_hierarchy import PointCloudToHierarchy
from transform_checks import check_batching, check_hierarchy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pure_torch_knn(monkeypatch):
    """The exact tie-break is the pure-torch kNN's; PyG's compiled one,
    where installed, breaks ties (and treats copies) its own way."""
    monkeypatch.setattr(torch_geometric.typing, 'WITH_KNN', False)


def sphere(num_points: int, seed: int = 0, dtype=torch.float) -> Data:
    """Points on the unit sphere with random features and a class label."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(num_points, 3, generator=gen, dtype=torch.float64)
    pos = pos / pos.norm(dim=1, keepdim=True)
    x = torch.randn(num_points, 4, generator=gen)
    return Data(pos=pos.to(dtype), x=x, y=torch.tensor([seed]))


def num_voxel_levels(out) -> int:
    levels = [nt for nt in out.node_types if nt.startswith('voxel')]
    assert levels == [f'voxel{lv}' for lv in range(len(levels))]
    return len(levels)


def parent_of(out, child: str, parent: str) -> torch.Tensor:
    edge_index = out[child, 'in', parent].edge_index
    parent_index = torch.full((out[child].num_nodes, ), -1)
    parent_index[edge_index[0]] = edge_index[1]
    assert edge_index.size(1) == out[child].num_nodes
    assert bool((parent_index >= 0).all())
    return parent_index


def point_ancestors(out):
    """``[N]`` voxel of every point at each level, finest first."""
    anc, child = [], 'point'
    index = torch.arange(out['point'].num_nodes)
    for level in range(num_voxel_levels(out)):
        index = parent_of(out, child, f'voxel{level}')[index]
        anc.append(index)
        child = f'voxel{level}'
    return anc


def expected_cells(pos: torch.Tensor, size: float, clamp=None):
    """Level-0 integer cells from the documented rule."""
    offset = pos.double() - pos.double().min(0).values
    cell = torch.floor(offset / size).long() if size > 0 else \
        torch.zeros_like(offset, dtype=torch.long)
    return cell if clamp is None else cell.clamp(max=clamp)


def assert_nested(out, pos, size, clamp=None):
    """Every point's ancestor at level l is exactly its level-l cell
    (cell index >> l, a bijection between voxels and occupied cells), and
    the cell's bounds contain the point."""
    cell = expected_cells(pos, size, clamp)
    origin = pos.double().min(0).values
    for level, anc in enumerate(point_ancestors(out)):
        coarse = cell >> level
        pairs = {(a, tuple(c)) for a, c in zip(anc.tolist(),
                                               coarse.tolist())}
        assert len(pairs) == len(set(anc.tolist())) == len(
            {tuple(c) for c in coarse.tolist()})
        assert out[f'voxel{level}'].num_nodes == len(pairs)
        side = size * 2**level
        low = origin + coarse.double() * side
        tol = 1e-9 * max(side, 1.0)
        assert bool((pos.double() >= low - tol).all())
        inside = pos.double() <= low + side + tol
        assert bool(inside.all())


# ------------------------------------------------------------- structure


def test_default_hierarchy_schema():
    data = sphere(1000)
    out = PointCloudToHierarchy()(data)
    check_hierarchy(out, 'point', 'cloud', 1000)
    # J: the largest J with 4**J * 16 <= 1000.
    assert num_voxel_levels(out) == 2
    assert out['voxel1'].num_nodes <= 8
    assert set(out.edge_types) == {('point', 'in', 'voxel0'),
                                   ('voxel0', 'in', 'voxel1'),
                                   ('voxel1', 'in', 'cloud')}
    assert torch.equal(out['point'].x, data.x)
    assert torch.equal(out['point'].pos, data.pos)
    assert torch.equal(out.y, data.y)
    assert out['cloud'].num_nodes == 1
    assert out['cloud'].num_leaves.tolist() == [1000]
    assert torch.allclose(out['cloud'].pos, data.pos.mean(0, keepdim=True))
    for nt in ('point', 'voxel0', 'voxel1'):
        assert out[nt].pe.dtype == torch.float
        assert out[nt].pe.shape == (out[nt].num_nodes, 3)
        assert bool((out[nt].pe.abs() < 1).all())


@pytest.mark.parametrize('num_points,depth', [(1, 0), (63, 0), (64, 1),
                                              (255, 1), (256, 2),
                                              (200_000, 6)])
def test_default_depth(num_points, depth):
    transform = PointCloudToHierarchy()
    assert transform.default_depth(num_points, 3) == depth
    assert PointCloudToHierarchy(intrinsic_dim=3).default_depth(
        4096, 3) == 2
    assert PointCloudToHierarchy(points_per_cell=1).default_depth(
        64, 1) == 6  # m = min(intrinsic_dim, D) = 1


@pytest.mark.parametrize('num_points,dim', [(40, 1), (300, 2), (700, 3),
                                            (500, 5)])
def test_nesting_is_exact_with_default_size(num_points, dim):
    gen = torch.Generator().manual_seed(dim)
    pos = torch.rand(num_points, dim, generator=gen) * torch.tensor(
        [3.0, 0.5, 1.0, 2.0, 1.5][:dim])
    transform = PointCloudToHierarchy(points_per_cell=2)
    out = transform(Data(pos=pos))
    depth = transform.default_depth(num_points, dim)
    assert num_voxel_levels(out) == depth >= 2
    pos64 = pos.double()
    extent = float((pos64.max(0).values - pos64.min(0).values).max())
    assert_nested(out, pos, extent / 2**depth, clamp=2**depth - 1)
    assert out[f'voxel{depth - 1}'].num_nodes <= 2**dim
    check_hierarchy(out, 'point', 'cloud', num_points)


@pytest.mark.parametrize('size', [0.3, 1e-3, 1e-7])
def test_nesting_is_exact_with_absolute_size(size):
    """Coarse grids use an occupancy table, fine ones a sort, and grids
    beyond int64 flat keys compare rows."""
    pos = torch.rand(60, 3, dtype=torch.float64) * 2 - 1
    out = PointCloudToHierarchy(size=size)(Data(pos=pos))
    cell = expected_cells(pos, size)
    # Levels until one cell would hold everything.
    assert num_voxel_levels(out) == int(cell.max()).bit_length()
    assert_nested(out, pos, size)
    check_hierarchy(out, 'point', 'cloud', 60)


def test_fixed_number_of_levels():
    data = sphere(1000)  # default depth 2
    few = PointCloudToHierarchy(num_levels=1)(data)
    assert num_voxel_levels(few) == 1
    full = PointCloudToHierarchy()(data)
    # The finest cells stay; they go straight into the root.
    assert torch.equal(few['point', 'in', 'voxel0'].edge_index,
                       full['point', 'in', 'voxel0'].edge_index)
    assert few['voxel0'].num_nodes > 8
    assert torch.equal(few['voxel0', 'in', 'cloud'].edge_index[1],
                       torch.zeros(few['voxel0'].num_nodes,
                                   dtype=torch.long))
    many = PointCloudToHierarchy(num_levels=4)(data)
    assert [many[f'voxel{lv}'].num_nodes for lv in range(4)] == [
        full['voxel0'].num_nodes, full['voxel1'].num_nodes, 1, 1
    ]
    assert torch.equal(many['voxel3'].pe, torch.zeros(1, 3))
    flat = PointCloudToHierarchy(num_levels=0)(data)
    assert set(flat.node_types) == {'point', 'cloud'}
    for out in (few, many, flat):
        check_hierarchy(out, 'point', 'cloud', 1000)


# -------------------------------------------------------------------- pe


def brute_force_pe(out, pos, size, extent):
    """``pe`` of every node type, from the points under every node (loops
    over nodes: test-only)."""
    pos = pos.double()
    anc = point_ancestors(out)
    num_levels = len(anc)
    members = [[torch.arange(pos.size(0))[a == v]
                for v in range(int(a.max()) + 1)] for a in anc]

    def centroid(level, node):
        if level == num_levels:
            return pos.mean(0)
        return pos[members[level][node]].mean(0)

    expected = {}
    pe = []
    for i in range(pos.size(0)):
        if num_levels == 0:
            pe.append((pos[i] - centroid(0, 0)) / extent)
        else:
            pe.append((pos[i] - centroid(0, int(anc[0][i]))) / size)
    expected['point'] = torch.stack(pe)
    for level in range(num_levels):
        pe = []
        for node in range(len(members[level])):
            point = members[level][node][0]
            if level + 1 < num_levels:
                parent = int(anc[level + 1][point])
                side = size * 2**(level + 1)
            else:
                parent, side = 0, extent
            pe.append((centroid(level, node) - centroid(level + 1, parent)) /
                      side)
        expected[f'voxel{level}'] = torch.stack(pe)
    return expected


@pytest.mark.parametrize('kwargs', [{}, {'num_levels': 1},
                                    {'num_levels': 0}, {'size': 0.2}])
def test_pe_matches_brute_force(kwargs):
    gen = torch.Generator().manual_seed(1)
    pos = torch.rand(300, 3, generator=gen, dtype=torch.float64)
    pos[:, 2] *= 0.5  # extent from the longest axis
    transform = PointCloudToHierarchy(points_per_cell=4, **kwargs)
    out = transform(Data(pos=pos))
    extent = float((pos.max(0).values - pos.min(0).values).max())
    size = kwargs.get('size', extent / 2**transform.default_depth(300, 3))
    expected = brute_force_pe(out, pos, size, extent)
    assert set(expected) == set(out.node_types) - {'cloud'}
    for nt, pe in expected.items():
        assert out[nt].pe.dtype == torch.float64
        assert torch.allclose(out[nt].pe, pe, atol=1e-12), nt
        assert bool((pe.abs() < 1).all())


# -------------------------------------------------------- batching, kNN


def test_batching_equal_point_counts_with_default_levels():
    # A degenerate cloud of the same size gets the same types.
    clouds = [sphere(300, seed) for seed in range(3)]
    clouds.append(Data(pos=torch.ones(300, 3), x=torch.randn(300, 4),
                       y=torch.tensor([9])))
    transform = PointCloudToHierarchy()
    outs = [transform(c) for c in clouds]
    assert len({tuple(o.edge_types) for o in outs}) == 1
    check_batching(outs, 'point', 4)


def test_batching_varying_sizes_with_fixed_levels():
    transform = PointCloudToHierarchy(num_levels=3, knn=4)
    outs = [transform(sphere(n, n)) for n in (1, 90, 400, 1500)]
    for out, n in zip(outs, (1, 90, 400, 1500)):
        assert num_voxel_levels(out) == 3
        check_hierarchy(out, 'point', 'cloud', n)
    check_batching(outs, 'point', 4)


def knn_pairs_reference(pos, k):
    """``(neighbour, centre)`` pairs by brute force, ties to the smaller
    index."""
    pos = pos.double()
    pairs = []
    for i in range(pos.size(0)):
        dist = ((pos - pos[i])**2).sum(1).tolist()
        others = sorted((d, j) for j, d in enumerate(dist) if j != i)
        pairs += [(j, i) for _, j in others[:k]]
    return pairs


def test_knn_edges_and_existing_edges(pure_torch_knn):
    gen = torch.Generator().manual_seed(2)
    pos = torch.randint(0, 5, (150, 3), generator=gen).float()  # ties
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    data = Data(pos=pos, edge_index=edge_index,
                edge_attr=torch.tensor([1.0, 2.0, 3.0]))
    out = PointCloudToHierarchy(knn=6)(data)
    knn_edges = out['point', 'knn', 'point'].edge_index
    assert [tuple(e) for e in knn_edges.t().tolist()] == \
        knn_pairs_reference(pos, 6)
    assert torch.equal(out['point', 'edge', 'point'].edge_index, edge_index)
    assert torch.equal(out['point', 'edge', 'point'].edge_attr,
                       data.edge_attr)
    assert ('point', 'knn', 'point') not in \
        PointCloudToHierarchy(knn=0)(data).edge_types
    check_hierarchy(out, 'point', 'cloud', 150)


def test_point_labels_stay_on_points():
    data = sphere(100)
    data.y = torch.arange(100)  # segmentation
    data.category = torch.tensor([3])
    out = PointCloudToHierarchy()(data)
    assert torch.equal(out['point'].y, data.y)
    assert torch.equal(out.category, data.category)


# ------------------------------------------------------------ invariances


def structure(out):
    return ({et: out[et].edge_index for et in out.edge_types},
            {nt: out[nt].pe for nt in out.node_types if 'pe' in out[nt]})


def assert_same_structure(a, b, atol=0.0):
    (edges_a, pe_a), (edges_b, pe_b) = structure(a), structure(b)
    assert edges_a.keys() == edges_b.keys() and pe_a.keys() == pe_b.keys()
    for et in edges_a:
        assert torch.equal(edges_a[et], edges_b[et]), et
    for nt in pe_a:
        assert torch.allclose(pe_a[nt], pe_b[nt], rtol=0, atol=atol), nt


def test_translation_and_scale_invariance():
    gen = torch.Generator().manual_seed(4)
    # Dyadic coordinates: shifts and power-of-two scalings are exact.
    pos = torch.randint(0, 1024, (500, 3), generator=gen).float() / 1024
    transform = PointCloudToHierarchy(knn=3)
    out = transform(Data(pos=pos))
    shift = torch.tensor([3.5, -17.25, 100.0])
    assert_same_structure(out, transform(Data(pos=pos + shift)))
    assert_same_structure(out, transform(Data(pos=pos * 8 - 2)))
    # General shifts and scalings, in float64: equal up to rounding.
    pos64 = torch.rand(500, 3, generator=gen, dtype=torch.float64)
    out = transform(Data(pos=pos64))
    moved = transform(Data(pos=pos64 * math.pi + torch.tensor(
        [0.1, -7.3, 1e3], dtype=torch.float64)))
    assert_same_structure(out, moved, atol=1e-9)


@pytest.mark.parametrize('kwargs', [{}, {'knn': 4}, {'num_levels': 3},
                                    {'size': 2e6}])
def test_coordinates_near_the_largest_float64(pure_torch_knn, kwargs):
    """Finite coordinates up to +-1.8e308 (the extent, centroid sums and
    squared distances would overflow): the same hierarchy as the cloud
    scaled down by an exact power of two, pos scaled back exactly."""
    gen = torch.Generator().manual_seed(5)
    biggest = torch.finfo(torch.float64).max
    small = (torch.rand(400, 3, generator=gen, dtype=torch.float64) * 2 -
             1) * (biggest * 2.0**-1000)
    small[:2] = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]],
                             dtype=torch.float64) * (biggest * 2.0**-1000)
    large = small * 2.0**1000  # near +-1e308, exactly the largest at two
    assert float(large.abs().max()) == biggest
    size = kwargs.pop('size', None)
    out_small = PointCloudToHierarchy(size=size, **kwargs)(Data(pos=small))
    out_large = PointCloudToHierarchy(
        size=None if size is None else size * 2.0**1000, **kwargs)(
            Data(pos=large))
    assert out_large.node_types == out_small.node_types
    assert len(out_small.node_types) > 3  # levels of voxels
    assert_same_structure(out_large, out_small)  # edges and pe, exactly
    for nt in out_small.node_types:
        assert bool(torch.isfinite(out_large[nt].pos).all()), nt
        assert torch.equal(out_large[nt].pos, out_small[nt].pos * 2.0**1000)


def test_point_order_only_relabels_points():
    data = sphere(400, dtype=torch.float64)
    perm = torch.randperm(400)
    out = PointCloudToHierarchy()(data)
    shuffled = PointCloudToHierarchy()(Data(pos=data.pos[perm]))
    assert torch.equal(parent_of(shuffled, 'point', 'voxel0'),
                       parent_of(out, 'point', 'voxel0')[perm])
    # Centroids are sums in another order: equal up to rounding.
    assert torch.allclose(shuffled['point'].pe, out['point'].pe[perm],
                          atol=1e-12)
    for et in out.edge_types:
        if et[0] != 'point':
            assert torch.equal(out[et].edge_index, shuffled[et].edge_index)
            assert torch.allclose(out[et[0]].pe, shuffled[et[0]].pe,
                                  atol=1e-12)


def test_deterministic_and_input_unchanged():
    data = sphere(2000)
    data.normal = data.pos.clone()
    before = copy.deepcopy(data)
    transform = PointCloudToHierarchy(knn=5)
    first, second = transform(data), transform(data)
    assert_same_structure(first, second)
    for key, value in before.items():
        assert torch.equal(data[key], value), key
    assert set(data.keys()) == set(before.keys())
    assert torch.equal(first['point'].normal, data.normal)


# ------------------------------------------------------ degenerate clouds


def test_single_point(pure_torch_knn):
    data = Data(pos=torch.tensor([[1.0, 2.0, 3.0]]), x=torch.ones(1, 4))
    out = PointCloudToHierarchy(knn=3)(data)
    check_hierarchy(out, 'point', 'cloud', 1)
    assert set(out.node_types) == {'point', 'cloud'}
    assert torch.equal(out['point'].pe, torch.zeros(1, 3))
    assert out['point', 'knn', 'point'].edge_index.shape == (2, 0)
    chain = PointCloudToHierarchy(num_levels=2)(data)
    assert [chain[nt].num_nodes for nt in ('voxel0', 'voxel1')] == [1, 1]
    check_hierarchy(chain, 'point', 'cloud', 1)


@pytest.mark.parametrize('kwargs', [{}, {'size': 0.5}, {'num_levels': 3}])
def test_duplicate_points(pure_torch_knn, kwargs):
    data = Data(pos=torch.full((100, 2), 7.0), x=torch.randn(100, 4))
    out = PointCloudToHierarchy(knn=4, **kwargs)(data)
    check_hierarchy(out, 'point', 'cloud', 100)
    for nt in out.node_types:
        if nt.startswith('voxel'):
            assert out[nt].num_nodes == 1
        if nt != 'cloud':
            assert torch.equal(out[nt].pe, torch.zeros(out[nt].num_nodes, 2))
    knn_edges = out['point', 'knn', 'point'].edge_index
    assert torch.equal(torch.bincount(knn_edges[1]), torch.full((100, ), 4))
    assert bool((knn_edges[0] != knn_edges[1]).all())


def test_knn_on_a_scan_with_many_returns_at_the_origin(pure_torch_knn):
    """LiDAR-like: 15,000 returns at exactly the origin. The kNN edges
    stay exact (every origin point's neighbours are the 8 smallest other
    origin indices) and cheap."""
    gen = torch.Generator().manual_seed(5)
    pos = torch.cat([torch.zeros(15_000, 3),
                     torch.randn(5_000, 3, generator=gen) + 10])
    out = PointCloudToHierarchy(knn=8)(Data(pos=pos))
    check_hierarchy(out, 'point', 'cloud', 20_000)
    source, target = out['point', 'knn', 'point'].edge_index
    assert torch.equal(target, torch.arange(20_000).repeat_interleave(8))
    centre, rank = target[:15_000 * 8], torch.arange(8).repeat(15_000)
    assert torch.equal(source[:15_000 * 8],
                       rank + (rank >= centre).long())
    assert bool((source[15_000 * 8:] >= 15_000).all())


def test_flat_cloud():
    """Zero extent along some axes only: the cube follows the longest."""
    pos = torch.zeros(256, 3)
    pos[:, 0] = torch.linspace(0, 1, 256)
    out = PointCloudToHierarchy()(Data(pos=pos))
    assert num_voxel_levels(out) == 2
    assert [out[f'voxel{lv}'].num_nodes for lv in range(2)] == [4, 2]
    assert_nested(out, pos, 0.25, clamp=3)


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize('data,error,match', [
    (Data(pos=torch.empty(0, 3)), ValueError, 'at least 1 point'),
    (Data(pos=torch.tensor([[0.0, float('nan')]])), ValueError, 'NaN'),
    (Data(pos=torch.tensor([[0.0, float('inf')]])), ValueError, 'infinite'),
    (Data(x=torch.rand(5, 3)), ValueError, "'data.pos' is missing"),
    (Data(pos=torch.rand(5)), ValueError, r'shape \[num_points, dim\]'),
    (Data(pos=torch.rand(5, 0)), ValueError, r'shape \[num_points, dim\]'),
    (Data(pos=[[0.0, 1.0]]), TypeError, "'data.pos' must be a tensor"),
    (Data(pos=torch.ones(5, 3, dtype=torch.long)), TypeError,
     'floating point'),
    (Data(pos=torch.rand(5, 3), pe=torch.rand(5, 2)), ValueError,
     "attribute 'pe'"),
    (torch.rand(5, 3), TypeError, 'torch_geometric.data.Data'),
])
def test_bad_input(data, error, match):
    with pytest.raises(error, match=match):
        PointCloudToHierarchy()(data)


@pytest.mark.parametrize('kwargs,match', [
    ({'size': 0.0}, "'size' must be a finite number > 0 or None"),
    ({'size': -1}, "'size'"),
    ({'size': float('inf')}, "'size'"),
    ({'size': np.float64('nan')}, "'size'"),
    ({'num_levels': -1}, "'num_levels' must be an integer >= 0 or None"),
    ({'num_levels': np.int64(-1)}, "'num_levels'"),
    ({'points_per_cell': 0}, "'points_per_cell'"),
    ({'intrinsic_dim': 0}, "'intrinsic_dim'"),
    ({'knn': -2}, "'knn'"),
])
def test_out_of_range_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PointCloudToHierarchy(**kwargs)


@pytest.mark.parametrize('kwargs,match', [
    ({'size': '0.1'}, r"'size' must be a finite number > 0 or None \(got "
     r"'0.1' of type str\)"),
    ({'size': True}, "'size'"),
    ({'size': torch.tensor(0.1)}, "'size'"),
    ({'num_levels': 2.0}, r"'num_levels' must be an integer >= 0 or None "
     r"\(got 2.0 of type float\)"),
    ({'num_levels': np.float32(2)}, "'num_levels'"),
    ({'num_levels': True}, "'num_levels'"),
    ({'points_per_cell': None}, "'points_per_cell'"),
    ({'intrinsic_dim': 2.5}, "'intrinsic_dim'"),
    ({'knn': np.bool_(True)}, "'knn'"),
])
def test_wrong_types_are_type_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        PointCloudToHierarchy(**kwargs)


def test_numpy_scalars_equal_python_scalars():
    data = sphere(600)
    numpy = PointCloudToHierarchy(size=np.float32(.1), num_levels=np.int64(2),
                                  points_per_cell=np.float64(8),
                                  intrinsic_dim=np.int32(3),
                                  knn=np.uint8(4))
    # The float32 0.1 is kept exactly: 0.10000000149011612.
    python = PointCloudToHierarchy(size=float(np.float32(.1)), num_levels=2,
                                   points_per_cell=8.0, intrinsic_dim=3,
                                   knn=4)
    assert repr(numpy) == repr(python)
    for value in vars(numpy).values():
        assert value is None or type(value) in (int, float)
    out, expected = numpy(data), python(data)
    assert_same_structure(out, expected)
    assert out['point', 'knn', 'point'].edge_index.size(1) == 600 * 4
    # Against the decimal 0.1 only the last bits of pe may differ.
    assert_same_structure(out, PointCloudToHierarchy(
        size=.1, num_levels=2, knn=4)(data), atol=1e-6)
    default = PointCloudToHierarchy(num_levels=np.int64(2))
    assert default.num_levels == 2 and type(default.num_levels) is int
    assert_same_structure(default(data),
                          PointCloudToHierarchy(num_levels=2)(data))


@pytest.mark.parametrize('kwargs', [{}, {'size': 0.5}, {'knn': 3},
                                    {'num_levels': 2}])
@pytest.mark.parametrize('shape', [(7, 0), (1, 0), (0, 0)])
def test_points_without_coordinates(kwargs, shape):
    """``pos [M, 0]`` is refused up front, whatever the options (it used
    to reach a reshape deep inside the transform)."""
    with pytest.raises(ValueError) as info:
        PointCloudToHierarchy(**kwargs)(Data(pos=torch.empty(shape)))
    message = str(info.value)
    assert "'data.pos'" in message
    assert 'shape [num_points, dim] with dim >= 1' in message
    assert f'got {list(shape)}' in message


def test_functional_transform():
    from torch_geometric.data.datapipes import DatasetAdapter

    assert hasattr(DatasetAdapter([]), 'point_cloud_to_hierarchy')
    clouds = [sphere(100, seed) for seed in range(2)]
    pipe = DatasetAdapter(clouds).point_cloud_to_hierarchy(num_levels=1)
    for out, data in zip(pipe, clouds):
        assert_same_structure(out,
                              PointCloudToHierarchy(num_levels=1)(data))


@pytest.mark.parametrize('extra,wrong', [
    ({'x': torch.randn(30, 3)}, "'data.x' has 30 rows"),
    ({'num_nodes': 30}, "'data.num_nodes' is 30"),
    ({'normal': torch.randn(41, 3)}, "'data.normal' has 41 rows"),
    ({'x': torch.randn(30, 3), 'num_nodes': 30},
     "'data.num_nodes' is 30, 'data.x' has 30 rows"),
    ({'x': torch.tensor(1.0)}, "'data.x' is a scalar"),
])
def test_node_attributes_must_count_the_points(extra, wrong):
    """PyG would count 30 nodes and file pos under the global store; the
    transform must refuse instead of building a broken hierarchy."""
    data = Data(pos=torch.randn(40, 3), **extra)
    with pytest.raises(ValueError, match=wrong + r".*'data\.pos' holds 40 "
                       r"points: node-level attributes"):
        PointCloudToHierarchy()(data)


def test_consistent_num_nodes_is_accepted():
    data = Data(pos=torch.randn(40, 3), x=torch.randn(40, 2), num_nodes=40,
                y=torch.tensor([1]))
    out = PointCloudToHierarchy()(data)
    check_hierarchy(out, 'point', 'cloud', 40)
    assert torch.equal(out['point'].pos, data.pos)
    assert torch.equal(out['point'].x, data.x)
    assert torch.equal(out.y, data.y)


def test_size_too_small_for_the_cloud():
    data = Data(pos=torch.tensor([[0.0], [1e3]], dtype=torch.float64))
    with pytest.raises(ValueError, match="'size'.*too small"):
        PointCloudToHierarchy(size=1e-20)(data)


def test_repr():
    assert repr(PointCloudToHierarchy(num_levels=3, knn=16)) == (
        'PointCloudToHierarchy(size=None, num_levels=3, '
        'points_per_cell=16.0, intrinsic_dim=2, knn=16)')


# -------------------------------------------------------------- benchmark


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    out = tmp_path / 'times.json'
    done = subprocess.run([
        sys.executable,
        str(ROOT / 'benchmarks' / 'bench_transforms.py'), '--smoke',
        '--repeats', '1', '--out',
        str(out)
    ], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert '| points | knn | levels | nodes | seconds | µs/point |' in \
        done.stdout
    rows = json.loads(out.read_text())['rows']
    assert [(r['points'], r['knn']) for r in rows] == [(500, 0), (2000, 0),
                                                       (500, 16)]
    # 500 points: J = 2 (4**2 * 16 <= 500 < 4**3 * 16).
    assert rows[0]['levels'] == 2
    assert rows[0]['nodes'] > 500 + 1
    assert all(np.isfinite(r['seconds']) and r['seconds'] > 0
               for r in rows)
