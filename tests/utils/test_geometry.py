"""The pure-torch geometry kernels against brute-force references (test-only
loops over points are fine here)."""
import numpy as np
import pytest
import torch

import torch_geometric.nn
import torch_geometric.typing
from pyg_hsa.utils import geometry
from pyg_hsa.utils.geometry import fps, knn, knn_graph, voxel_grid


@pytest.fixture(params=['brute', 'kd_tree'])
def search(request, monkeypatch):
    """Runs a kNN test with blocked brute force only, and with the kd-tree
    for every example (when SciPy is installed)."""
    if request.param == 'kd_tree':
        pytest.importorskip('scipy.spatial')
        monkeypatch.setattr(geometry, 'KD_TREE_MIN_PAIRS', 1)
    else:
        monkeypatch.setattr(geometry, 'KD_TREE_MIN_PAIRS', 1 << 62)
    return request.param


def squared_distances(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``[M, N]``, accumulated dimension by dimension (the exact same float
    operations as the library, so ties are ties)."""
    out = np.zeros((y.shape[0], x.shape[0]))
    for d in range(y.shape[1]):
        out += (y[:, None, d] - x[None, :, d])**2
    return out


def knn_reference(x, y, k, batch_x, batch_y, exclude_self=False):
    """``[(query, neighbour)]``, brute force with the index tie-break."""
    x, y = x.double().numpy(), y.double().numpy()
    dist = squared_distances(y, x)
    pairs = []
    for i in range(y.shape[0]):
        cand = [j for j in range(x.shape[0])
                if batch_x[j] == batch_y[i] and not (exclude_self and i == j)]
        cand.sort(key=lambda j: (dist[i, j], j))
        pairs += [(i, j) for j in cand[:k]]
    return pairs


def pairs_of(edge_index: torch.Tensor):
    return [tuple(p) for p in edge_index.t().tolist()]


def lattice(n, dim, side, generator):
    """Random points of a small integer lattice: many exact ties and
    duplicates."""
    return torch.randint(0, side, (n, dim), generator=generator).float()


# ---------------------------------------------------------------- voxel grid


def voxel_reference(pos, size, batch, start, end):
    """The grid-cluster arithmetic of torch_cluster / pyg-lib, as loops."""
    pos = np.concatenate([pos.numpy(), batch.numpy()[:, None]], axis=1)
    size = list(size) + [1.0]
    start = pos.min(0) if start is None else list(start) + [0.0]
    end = pos.max(0) if end is None else list(end) + [batch.max().item()]
    ids = []
    for p in pos:
        cluster, stride = 0, 1
        for d in range(pos.shape[1]):
            cluster += int((p[d] - start[d]) / size[d]) * stride
            stride *= int((end[d] - start[d]) / size[d]) + 1
        ids.append(cluster)
    return ids


def test_voxel_grid_known_values():
    pos = torch.tensor([[0., 0.], [11., 9.], [2., 8.], [2., 2.], [8., 3.]])
    assert voxel_grid(pos, size=5).tolist() == [0, 5, 3, 0, 1]
    batch = torch.tensor([0, 0, 0, 1, 1])
    assert voxel_grid(pos, 5, batch).tolist() == [0, 5, 3, 6, 7]
    assert voxel_grid(pos, 5, batch, start=-1,
                      end=[18, 14]).tolist() == [0, 10, 4, 16, 17]


@pytest.mark.parametrize('dim', [1, 2, 3])
def test_voxel_grid_random(dim):
    gen = torch.Generator().manual_seed(dim)
    pos = torch.rand(200, dim, generator=gen, dtype=torch.float64) * 10
    batch = torch.sort(torch.randint(0, 4, (200, ), generator=gen)).values
    size = [0.7, 1.3, 2.0][:dim]
    assert voxel_grid(pos, size, batch).tolist() == voxel_reference(
        pos, size, batch, None, None)
    start, end = [-1.0] * dim, [12.0] * dim
    assert voxel_grid(pos, size, batch, start, end).tolist() == \
        voxel_reference(pos, size, batch, start, end)
    # Points in one voxel share an id, and different voxels differ.
    cell = np.floor((pos.numpy() - pos.numpy().min(0)) / size).astype(int)
    keys = [tuple(c) + (b, ) for c, b in zip(cell, batch.tolist())]
    ids = voxel_grid(pos, size, batch).tolist()
    assert len(set(keys)) == len(set(ids)) == len(set(zip(keys, ids)))


def test_voxel_grid_one_dimensional_and_empty():
    pos = torch.tensor([0.0, 0.4, 1.2, 3.9])
    assert voxel_grid(pos, 1.0).tolist() == [0, 0, 1, 3]
    assert voxel_grid(pos.view(-1, 1), 1.0).tolist() == [0, 0, 1, 3]
    assert voxel_grid(torch.empty(0, 3), 1.0).tolist() == []


def test_voxel_grid_errors():
    pos = torch.rand(5, 2)
    with pytest.raises(ValueError, match="'size' must be positive"):
        voxel_grid(pos, 0.0)
    with pytest.raises(ValueError, match="'size' must be a number or have"):
        voxel_grid(pos, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match='NaN'):
        voxel_grid(torch.tensor([[0.0, float('nan')]]), 1.0)
    with pytest.raises(ValueError, match="'batch' must have shape"):
        voxel_grid(pos, 1.0, torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="'batch' must be an integer"):
        voxel_grid(pos, 1.0, torch.zeros(5))
    with pytest.raises(TypeError, match='floating point'):
        voxel_grid(torch.ones(5, 2, dtype=torch.long), 1.0)


# ------------------------------------------------------- k nearest neighbours


@pytest.mark.parametrize('points', ['random', 'lattice'])
@pytest.mark.parametrize('k', [1, 4, 40])
def test_knn_matches_brute_force(search, points, k):
    gen = torch.Generator().manual_seed(k)
    if points == 'random':
        x = torch.rand(120, 3, generator=gen)
        y = torch.rand(70, 3, generator=gen)
    else:
        x, y = lattice(120, 3, 3, gen), lattice(70, 3, 3, gen)
    # Unsorted batches; example 3 has queries but no points.
    batch_x = torch.randint(0, 3, (120, ), generator=gen)
    batch_y = torch.randint(0, 4, (70, ), generator=gen)
    out = knn(x, y, k, batch_x, batch_y)
    assert pairs_of(out) == knn_reference(x, y, k, batch_x, batch_y)
    # Fewer than k points in an example: all of them; none: no entry.
    count = torch.bincount(out[0], minlength=70)
    size_x = torch.bincount(batch_x, minlength=4)
    assert torch.equal(count, size_x[batch_y].clamp(max=k))


def test_knn_without_batch_and_dtypes(search):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(90, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    zeros_x, zeros_y = torch.zeros(90, dtype=torch.long), torch.zeros(30)
    expected = knn_reference(x, y, 6, zeros_x, zeros_y)
    assert pairs_of(knn(x, y, 6)) == expected
    assert pairs_of(knn(x.float(), y.float(), 6)) == knn_reference(
        x.float(), y.float(), 6, zeros_x, zeros_y)
    assert knn(x, y[:0], 3).shape == (2, 0)
    assert knn(x[:0], y, 3).shape == (2, 0)


@pytest.mark.parametrize('loop', [False, True])
def test_knn_graph_matches_brute_force(search, loop):
    gen = torch.Generator().manual_seed(int(loop))
    x = lattice(150, 2, 4, gen)  # 16 sites: heavy duplication
    batch = torch.randint(0, 2, (150, ), generator=gen)
    out = knn_graph(x, 5, batch, loop=loop)
    # source_to_target: row 0 neighbours, row 1 centres.
    expected = knn_reference(x, x, 5, batch, batch, exclude_self=not loop)
    assert pairs_of(out.flip(0)) == expected
    assert torch.equal(knn_graph(x, 5, batch, loop=loop,
                                 flow='target_to_source'), out.flip(0))
    if not loop:
        assert bool((out[0] != out[1]).all())
        assert torch.equal(torch.bincount(out[1], minlength=150),
                           torch.full((150, ), 5))


def test_knn_graph_small_examples(search):
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    batch = torch.tensor([0, 0, 0, 1])
    out = knn_graph(x, 10, batch)  # k beyond the example size
    assert pairs_of(out.flip(0)) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 1),
                                     (2, 0)]
    assert knn_graph(x[:1], 3).shape == (2, 0)


def test_knn_kd_tree_equals_brute_force_at_scale(monkeypatch):
    """The kd-tree path with re-queries (duplicate-heavy lattice) returns
    exactly what blocked brute force does, on a problem big enough to use
    several brute-force blocks."""
    pytest.importorskip('scipy.spatial')
    gen = torch.Generator().manual_seed(7)
    x = torch.cat([lattice(900, 3, 6, gen), torch.rand(600, 3,
                                                       generator=gen)])
    batch = torch.sort(torch.randint(0, 2, (1500, ), generator=gen)).values
    monkeypatch.setattr(geometry, 'BLOCK_ENTRIES', 1 << 16)
    monkeypatch.setattr(geometry, 'KD_TREE_MIN_PAIRS', 1 << 62)
    graph = knn_graph(x, 12, batch)
    pairs = knn(x, x[::7], 12, batch, batch[::7])
    monkeypatch.setattr(geometry, 'KD_TREE_MIN_PAIRS', 1)
    assert torch.equal(knn_graph(x, 12, batch), graph)
    assert torch.equal(knn(x, x[::7], 12, batch, batch[::7]), pairs)


def with_copies(gen):
    """Few distinct points, most of them many times (shuffled), exact
    signed zeros and neighbours one ulp apart: groups of identical points
    that the kd-tree path must expand exactly."""
    base = torch.rand(10, 3, generator=gen, dtype=torch.float64)
    base[0] = 0.0
    base[1] = torch.tensor([-0.0, 0.0, -0.0], dtype=torch.float64)
    base[2] = torch.nextafter(base[3], torch.full((3, ), 2.0,
                                                  dtype=torch.float64))
    x = torch.cat([base[torch.randint(0, 10, (170, ), generator=gen)],
                   torch.rand(30, 3, generator=gen, dtype=torch.float64)])
    return x[torch.randperm(200, generator=gen)]


@pytest.mark.parametrize('k', [1, 6, 45])
def test_knn_with_many_copies_matches_brute_force(monkeypatch, k):
    gen = torch.Generator().manual_seed(k)
    x = with_copies(gen)
    y = torch.cat([x[:30], torch.rand(10, 3, generator=gen,
                                      dtype=torch.float64)])
    batch_x = torch.randint(0, 2, (200, ), generator=gen)
    batch_y = torch.randint(0, 2, (40, ), generator=gen)
    expected = [knn_reference(x, y, k, batch_x, batch_y)] + [
        knn_reference(x, x, k, batch_x, batch_x, exclude_self=not loop)
        for loop in (False, True)]
    for min_pairs in (1 << 62, 1):  # brute force, then kd-tree
        monkeypatch.setattr(geometry, 'KD_TREE_MIN_PAIRS', min_pairs)
        assert pairs_of(knn(x, y, k, batch_x, batch_y)) == expected[0]
        for loop in (False, True):
            out = knn_graph(x, k, batch_x, loop=loop).flip(0)
            assert pairs_of(out) == expected[1 + loop]


def test_knn_kd_tree_with_copies_equals_brute_force_at_scale(monkeypatch):
    """A LiDAR-like cloud (many returns at the origin, a voxelised part
    full of exact ties, scattered points), with small blocks so that the
    kd-tree path splits its queries and expansions."""
    pytest.importorskip('scipy.spatial')
    gen = torch.Generator().manual_seed(11)
    x = torch.cat([torch.zeros(500, 3),
                   torch.randint(0, 5, (700, 3), generator=gen).float(),
                   torch.rand(600, 3, generator=gen) * 5])
    x = x[torch.randperm(1800, generator=gen)]
    batch = torch.sort(torch.randint(0, 2, (1800, ), generator=gen)).values
    monkeypatch.setattr(geometry, 'KD_TREE_MIN_PAIRS', 1 << 62)
    graphs = [knn_graph(x, k, batch) for k in (3, 20)]
    pairs = knn(x, x[::5] + 0.5, 9, batch, batch[::5])
    monkeypatch.setattr(geometry, 'KD_TREE_MIN_PAIRS', 1)
    monkeypatch.setattr(geometry, 'BLOCK_ENTRIES', 1 << 9)
    for k, graph in zip((3, 20), graphs):
        assert torch.equal(knn_graph(x, k, batch), graph)
    assert torch.equal(knn(x, x[::5] + 0.5, 9, batch, batch[::5]), pairs)


def test_knn_graph_of_copies_is_fast_and_exact():
    """20,000 copies of one point (and 20 points 1,000 times each): the
    kd-tree path groups identical points, where it used to scan every
    copy for every query (minutes, quadratic)."""
    pytest.importorskip('scipy.spatial')
    n, k = 20_000, 8
    out = knn_graph(torch.zeros(n, 3), k)
    # Every centre gets the k smallest other indices.
    centre = torch.arange(n).repeat_interleave(k)
    rank = torch.arange(k).repeat(n)
    assert torch.equal(out[1], centre)
    assert torch.equal(out[0], rank + (rank >= centre).long())

    base = torch.rand(20, 3, generator=torch.Generator().manual_seed(0))
    x = base.repeat(1000, 1)  # point i is a copy of base[i % 20]
    out = knn_graph(x, k)
    copy = rank + (rank >= centre // 20).long()  # skips the centre itself
    assert torch.equal(out[1], centre)
    assert torch.equal(out[0], centre % 20 + 20 * copy)
    out = knn(x, base, k)
    assert torch.equal(out[1], torch.arange(20).repeat_interleave(k) +
                       20 * torch.arange(k).repeat(20))


def test_knn_errors():
    x = torch.rand(5, 3)
    with pytest.raises(ValueError, match="'k' must be a positive integer"):
        knn(x, x, 0)
    with pytest.raises(ValueError, match="'k' must be a positive integer"):
        knn_graph(x, 2.5)
    with pytest.raises(ValueError, match='same number of dimensions'):
        knn(x, torch.rand(5, 2), 2)
    with pytest.raises(ValueError, match="'y' contains NaN"):
        knn(x, torch.full((1, 3), float('inf')), 2)
    with pytest.raises(ValueError, match=r"'x' must have shape \[num_"):
        knn_graph(torch.rand(5), 2)
    with pytest.raises(ValueError, match="'batch_y' must not contain neg"):
        knn(x, x, 2, None, torch.tensor([0, 0, -1, 0, 0]))
    with pytest.raises(ValueError, match="'flow' must be"):
        knn_graph(x, 2, flow='up')


# ------------------------------------------------- farthest point sampling


def fps_reference(x, ratio, batch):
    """Farthest point sampling example by example, first point first."""
    x = x.double().numpy()
    out = []
    for b in range(int(batch.max()) + 1):
        members = (batch == b).nonzero().view(-1).numpy()
        if members.size == 0:
            continue
        pts = x[members]
        num = int(np.ceil(members.size * ratio))
        nearest = np.full(members.size, np.inf)
        chosen = [0]
        while len(chosen) < num:
            dist = squared_distances(pts[chosen[-1]][None], pts)[0]
            nearest = np.minimum(nearest, dist)
            nearest[chosen] = -1
            chosen.append(int(np.argmax(nearest)))
        out += members[chosen].tolist()
    return out


@pytest.mark.parametrize('ratio', [0.05, 0.3, 1.0])
def test_fps_matches_reference(ratio):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(200, 3, generator=gen)
    batch = torch.randint(0, 3, (200, ), generator=gen)
    batch[batch == 2] = 4  # examples 2 and 3 are empty
    out = fps(x, ratio, batch)
    assert out.tolist() == fps_reference(x, ratio, batch)
    counts = torch.bincount(batch, minlength=5)
    assert torch.equal(torch.bincount(batch[out], minlength=5),
                       torch.ceil(counts * ratio).long())
    assert out.unique().numel() == out.numel()
    assert fps(x, ratio).tolist() == fps_reference(
        x, ratio, torch.zeros(200, dtype=torch.long))


def test_fps_ties_and_duplicates():
    # A square: from corner 0 the farthest is 3, then 1 and 2 tie.
    x = torch.tensor([[0., 0.], [1., 0.], [0., 1.], [1., 1.]])
    assert fps(x, 1.0).tolist() == [0, 3, 1, 2]
    # Duplicates are never sampled twice.
    dup = torch.zeros(6, 3)
    assert sorted(fps(dup, 0.5).tolist()) == [0, 1, 2]
    assert fps(x[:0], 0.5).tolist() == []


def test_fps_random_start():
    x = torch.rand(50, 2)
    batch = torch.tensor([0] * 20 + [1] * 30)
    torch.manual_seed(1)
    first = fps(x, 0.2, batch, random_start=True)
    torch.manual_seed(1)
    assert torch.equal(fps(x, 0.2, batch, random_start=True), first)
    assert batch[first].tolist() == [0] * 4 + [1] * 6
    # After its start, every example follows the farthest-point rule.
    sub = x[20:]
    start = int(first[4]) - 20
    order = [start]
    nearest = torch.full((30, ), float('inf'), dtype=torch.float64)
    for _ in range(5):
        nearest = torch.minimum(
            nearest, ((sub.double() - sub[order[-1]].double())**2).sum(1))
        nearest[order] = -1
        order.append(int(nearest.argmax()))
    assert (first[4:] - 20).tolist() == order


def test_fps_errors():
    x = torch.rand(5, 3)
    with pytest.raises(TypeError, match='argument order'):
        fps(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"'ratio' must be in \(0, 1\]"):
        fps(x, 1.5)
    with pytest.raises(ValueError, match=r"'ratio' must be in \(0, 1\]"):
        fps(x, 0.0)


# ------------------------------------------------- dispatch to PyG kernels


@pytest.mark.parametrize('flag,name,call', [
    ('WITH_GRID_CLUSTER', 'voxel_grid', lambda x: voxel_grid(x, 0.5)),
    ('WITH_KNN', 'knn', lambda x: knn(x, x, 2)),
    ('WITH_KNN', 'knn_graph', lambda x: knn_graph(x, 2)),
    ('WITH_FPS', 'fps', lambda x: fps(x, 0.5)),
])
def test_dispatch_to_pyg(monkeypatch, flag, name, call):
    calls = []
    monkeypatch.setattr(torch_geometric.typing, flag, True)
    monkeypatch.setattr(torch_geometric.nn, name,
                        lambda *args: calls.append(args) or 'pyg')
    x = torch.rand(4, 3)
    assert call(x) == 'pyg'
    assert len(calls) == 1 and calls[0][0] is x
    if name == 'fps':  # PyG's order: x, batch, ratio, random_start
        assert calls[0][1:] == (None, 0.5, False)
