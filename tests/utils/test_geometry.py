"""The pure-torch kNN against brute-force references (test-only loops over
points are fine here), and the hand-over to PyG's compiled kernel."""
import doctest

import numpy as np
import pytest
import torch

import torch_geometric.nn
import torch_geometric.typing
from pyg_hsa.utils import _knn_brute_force, geometry
from pyg_hsa.utils.geometry import knn, knn_graph


@pytest.fixture(autouse=True)
def pure_torch(monkeypatch):
    """Every test runs the pure-torch search, also where pyg-lib is
    installed (its kernel breaks exact ties its own way); the dispatch
    tests switch the flag back on."""
    monkeypatch.setattr(torch_geometric.typing, 'WITH_KNN', False)


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
    monkeypatch.setattr(_knn_brute_force, 'BLOCK_ENTRIES', 1 << 16)
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
    monkeypatch.setattr(_knn_brute_force, 'BLOCK_ENTRIES', 1 << 9)
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


def test_numpy_integers_and_flags():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(40, 3, generator=gen)
    batch = torch.randint(0, 2, (40, ), generator=gen)
    assert torch.equal(knn(x, x[:9], np.int64(3), batch, batch[:9]),
                       knn(x, x[:9], 3, batch, batch[:9]))
    assert torch.equal(knn_graph(x, np.int32(4), batch, np.bool_(True)),
                       knn_graph(x, 4, batch, True))


def test_knn_errors():
    x = torch.rand(5, 3)
    with pytest.raises(ValueError, match="'k' must be an integer >= 1"):
        knn(x, x, 0)
    with pytest.raises(TypeError, match="'k' must be an integer >= 1"):
        knn_graph(x, 2.5)
    with pytest.raises(TypeError, match="'k' must be an integer"):
        knn(x, x, True)
    with pytest.raises(TypeError, match="'loop' must be a bool"):
        knn_graph(x, 2, loop=1)
    with pytest.raises(TypeError, match="'flow' must be"):
        knn_graph(x, 2, flow=None)
    with pytest.raises(TypeError, match="'x' must be a tensor"):
        knn([[0.0, 1.0]], x, 2)
    with pytest.raises(TypeError, match="'batch' must be an integer tensor"):
        knn_graph(x, 2, torch.zeros(5))
    with pytest.raises(TypeError, match='floating point'):
        knn_graph(torch.ones(5, 3, dtype=torch.long), 2)
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
    with pytest.raises(ValueError, match="'batch' must have shape"):
        knn_graph(x, 2, torch.zeros(4, dtype=torch.long))


def test_docstring_examples():
    result = doctest.testmod(geometry, extraglobs={'torch': torch})
    assert result.attempted >= 2 and result.failed == 0


# ------------------------------------------------- dispatch to PyG's kernel


def record_pyg(monkeypatch, name):
    """Replaces PyG's kernel :obj:`name` by a recorder."""
    calls = []
    monkeypatch.setattr(torch_geometric.typing, 'WITH_KNN', True)
    monkeypatch.setattr(torch_geometric.nn, name,
                        lambda *args: calls.append(args) or 'pyg')
    return calls


@pytest.mark.parametrize('name,call', [
    ('knn', lambda x, b: knn(x, x, np.int64(2), b, b)),
    ('knn_graph', lambda x, b: knn_graph(x, np.int64(2), b)),
])
def test_dispatch_to_pyg(monkeypatch, name, call):
    calls = record_pyg(monkeypatch, name)
    x = torch.rand(4, 3)
    assert call(x, None) == 'pyg'
    assert call(x, torch.tensor([0, 0, 1, 1])) == 'pyg'
    assert len(calls) == 2 and calls[0][0] is x
    assert type(calls[0][1 if name == 'knn_graph' else 2]) is int
    if name == 'knn_graph':
        assert calls[0][3:] == (False, 'source_to_target')


@pytest.mark.parametrize('name,call', [
    ('knn', lambda x, b: knn(x, x, 2, b, b)),
    ('knn_graph', lambda x, b: knn_graph(x, 2, b)),
])
def test_unsorted_batches_stay_in_pure_torch(monkeypatch, name, call):
    """PyG's kernel needs sorted batch vectors; ours takes any order."""
    calls = record_pyg(monkeypatch, name)
    x = torch.rand(6, 3)
    batch = torch.tensor([1, 0, 1, 0, 1, 0])
    out = call(x, batch)
    assert calls == [] and isinstance(out, torch.Tensor)
    monkeypatch.setattr(torch_geometric.typing, 'WITH_KNN', False)
    assert torch.equal(out, call(x, batch))
    # Argument errors come first, whichever search runs.
    monkeypatch.setattr(torch_geometric.typing, 'WITH_KNN', True)
    with pytest.raises(ValueError, match="'k'"):
        knn_graph(x, 0)
