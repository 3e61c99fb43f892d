import copy
import functools
import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import FaceToEdge

from pyg_hsa.transforms.mesh_to_hierarchy import MeshToHierarchy
from transform_checks import (
    assert_same_hierarchy,
    check_batching,
    check_hierarchy,
    package_file,
)


def to_data(mesh: trimesh.Trimesh) -> Data:
    return Data(pos=torch.tensor(np.asarray(mesh.vertices),
                                 dtype=torch.float),
                face=torch.tensor(np.asarray(mesh.faces).T.copy(),
                                  dtype=torch.long))


@functools.lru_cache(maxsize=None)
def pyvista_mesh(name: str) -> trimesh.Trimesh:
    return trimesh.load(package_file('pyvista', 'examples', name),
                        process=False)


def grid_sheet(size: int, z: float, offset: int = 0):
    """A flat ``size x size`` triangulated grid at height ``z``."""
    u, v = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
    vertices = np.stack([u.ravel(), v.ravel(), np.full(u.size, z)], 1)
    corner = (u[:-1, :-1] * size + v[:-1, :-1]).ravel()
    faces = np.concatenate([
        np.stack([corner, corner + size, corner + 1], 1),
        np.stack([corner + 1, corner + size, corner + size + 1], 1),
    ]) + offset
    return vertices / size, faces


def parallel_sheets(gap: float = 1e-3, size: int = 20) -> trimesh.Trimesh:
    """Two parallel sheets ``gap`` apart, far closer than an edge (1/20):
    a voxel grid fine enough for the sheets glues them together."""
    bottom, bottom_faces = grid_sheet(size, 0.0)
    top, top_faces = grid_sheet(size, gap, offset=size * size)
    return trimesh.Trimesh(np.concatenate([bottom, top]),
                           np.concatenate([bottom_faces, top_faces]),
                           process=False)


def thin_box() -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=(1.0, 1.0, 1e-3))
    for _ in range(3):
        mesh = mesh.subdivide()
    return mesh


MESHES = {
    'ant': lambda: pyvista_mesh('ant.ply'),
    'airplane': lambda: pyvista_mesh('airplane.ply'),
    'icosphere': lambda: trimesh.creation.icosphere(subdivisions=3),
    'box': lambda: trimesh.creation.box().subdivide().subdivide(),
    'cylinder': lambda: trimesh.creation.cylinder(0.5, 2.0, sections=48),
    'capsule': lambda: trimesh.creation.capsule(height=2.0, radius=0.5),
    'torus': lambda: trimesh.creation.torus(1.0, 0.3, major_sections=48,
                                            minor_sections=16),
    'thin_box': thin_box,
    'parallel_sheets': parallel_sheets,
}


@functools.lru_cache(maxsize=None)
def hierarchy(name: str, num_levels: int = 3) -> HeteroData:
    return MeshToHierarchy(num_levels=num_levels)(to_data(MESHES[name]()))


def vertex_members(out: HeteroData, num_levels: int):
    """For every patch level, the patch above every vertex."""
    member = torch.arange(out['vertex'].num_nodes)
    child, members = 'vertex', []
    for level in range(num_levels):
        parent = f'patch{level}'
        child_index, parent_index = out[child, 'in', parent].edge_index
        parent_of = torch.full((out[child].num_nodes, ), -1)
        parent_of[child_index] = parent_index
        member = parent_of[member]
        members.append(member)
        child = parent
    return members


def components(edge_index: torch.Tensor, num_nodes: int, keep=None):
    row, col = edge_index.numpy()
    if keep is not None:
        row, col = row[keep], col[keep]
    matrix = coo_matrix((np.ones(len(row)), (row, col)),
                        shape=(num_nodes, num_nodes))
    return connected_components(matrix, directed=False)


def num_pieces(edge_index: torch.Tensor, member: torch.Tensor) -> int:
    """Connected pieces of all patches together (:obj:`member`: the patch
    of every vertex): components of the mesh edges inside patches."""
    inside = (member[edge_index[0]] == member[edge_index[1]]).numpy()
    count, _ = components(edge_index, member.numel(), inside)
    return count


def assert_patches_connected(out: HeteroData, num_levels: int) -> None:
    """Every patch, at every level, is a connected set of vertices on the
    mesh: one piece per patch (more would mean a patch in pieces)."""
    edge_index = out['vertex', 'edge', 'vertex'].edge_index
    for level, member in enumerate(vertex_members(out, num_levels)):
        num_patches = out[f'patch{level}'].num_nodes
        assert torch.bincount(member, minlength=num_patches).min() >= 1
        assert num_pieces(edge_index, member) == num_patches


@pytest.mark.parametrize('name', list(MESHES))
def test_patches_are_connected_pieces_of_the_mesh(name):
    mesh = MESHES[name]()
    data = to_data(mesh)
    out = hierarchy(name)
    check_hierarchy(out, 'vertex', 'mesh', data.num_nodes)
    assert out.node_types == ['vertex', 'patch0', 'patch1', 'patch2',
                              'mesh']
    assert_patches_connected(out, 3)
    # Mesh edges are FaceToEdge's.
    expected = FaceToEdge()(copy.copy(data)).edge_index
    assert torch.equal(out['vertex', 'edge', 'vertex'].edge_index, expected)
    assert torch.equal(out['vertex'].pos, data.pos)
    assert 'x' not in out['vertex'] and 'face' not in out['vertex']
    # The root holds at least one patch per connected component.
    num_components, _ = components(expected, data.num_nodes)
    counts = [out[f'patch{level}'].num_nodes for level in range(3)]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] >= num_components


def test_patch_sizes_follow_the_target():
    out = hierarchy('icosphere')  # 642 vertices
    counts = [out[t].num_nodes for t in ('vertex', 'patch0', 'patch1')]
    for finer, coarser in zip(counts, counts[1:]):
        assert 8 / 1.6 <= finer / coarser <= 8 * 1.6
    data = to_data(MESHES['icosphere']())
    small = MeshToHierarchy(num_levels=1, patch_size=3)(data)
    big = MeshToHierarchy(num_levels=1, patch_size=30)(data)
    assert small['patch0'].num_nodes > counts[1] > big['patch0'].num_nodes


def test_real_mesh_patch_counts():
    # ant: 486 vertices in 15 components; airplane: 1335 in 7.
    ant, airplane = hierarchy('ant'), hierarchy('airplane')
    assert [ant[f'patch{i}'].num_nodes for i in range(3)] == [53, 15, 15]
    assert [airplane[f'patch{i}'].num_nodes for i in range(3)] == [
        138, 17, 7]


def test_parallel_sheets_are_never_glued():
    out = hierarchy('parallel_sheets')
    on_top = out['vertex'].pos[:, 2] > 0
    # Voxels at the edge length put each vertex in one cell with the vertex
    # above it: patches in two pieces, which the check catches.
    cell = torch.floor(out['vertex'].pos * 20 + 0.5)
    assert torch.equal(cell[on_top], cell[~on_top])
    voxel = torch.unique(cell, dim=0, return_inverse=True)[1]
    edge_index = out['vertex', 'edge', 'vertex'].edge_index
    assert num_pieces(edge_index, voxel) == 2 * (int(voxel.max()) + 1)
    for member in vertex_members(out, 3):
        top_patches = set(member[on_top].tolist())
        assert not top_patches & set(member[~on_top].tolist())
    assert out['patch2'].num_nodes >= 2


def brute_force_pe(out: HeteroData, num_levels: int):
    """pe of every non-root type, node by node, from the vertex sets."""
    pos = out['vertex'].pos.double()
    num_vertices = pos.size(0)
    members = [torch.arange(num_vertices)] + vertex_members(
        out, num_levels) + [torch.zeros(num_vertices, dtype=torch.long)]
    types = ['vertex'] + [f'patch{i}' for i in range(num_levels)]
    mesh_radius = pos.sub(pos.mean(0)).pow(2).sum(1).mean().sqrt()
    expected = {}
    for level, child_type in enumerate(types):
        rows = []
        for node in range(out[child_type].num_nodes):
            mine = members[level] == node
            parent = members[level + 1][mine][0]
            theirs = members[level + 1] == parent
            centre = pos[theirs].mean(0)
            radius = pos[theirs].sub(centre).pow(2).sum(1).mean().sqrt()
            offset = pos[mine].mean(0) - centre
            if radius > 1e-6 * mesh_radius:
                offset = offset / radius
            else:
                offset = torch.zeros_like(offset)
            share = math.log(int(mine.sum()) / int(theirs.sum()))
            rows.append(torch.cat([offset, torch.tensor([share])]))
        expected[child_type] = torch.stack(rows)
    return expected


def with_isolated_vertices(data: Data) -> Data:
    """Adds three vertices no face references (two at one point)."""
    extra = torch.tensor([[5.0, 5.0, 5.0], [5.0, 5.0, 5.0], [-5.0, 0, 0]])
    return Data(pos=torch.cat([data.pos, extra]), face=data.face)


@pytest.mark.parametrize('num_levels', [0, 2])
def test_pe_matches_a_brute_force_computation(num_levels):
    data = with_isolated_vertices(to_data(trimesh.creation.icosphere(2)))
    out = MeshToHierarchy(num_levels=num_levels)(data)
    check_hierarchy(out, 'vertex', 'mesh', data.num_nodes)
    expected = brute_force_pe(out, num_levels)
    assert set(expected) == set(out.pe_dict)
    for node_type, pe in expected.items():
        assert out[node_type].pe.shape == (out[node_type].num_nodes, 4)
        assert out[node_type].pe.dtype == torch.float
        assert torch.allclose(out[node_type].pe.double(), pe, atol=1e-5)
    # Patch sizes are shares of the parent; a vertex alone in its patch
    # sits at its centre.
    assert (out['vertex'].pe[:, 3] <= 0).all()
    if num_levels:
        alone = out['vertex'].pe[:, 3] == 0
        assert alone[-3:].all() and (out['vertex'].pe[alone, :3] == 0).all()


def test_isolated_vertices_become_single_patch_chains():
    data = with_isolated_vertices(to_data(trimesh.creation.icosphere(2)))
    out = MeshToHierarchy()(data)
    check_hierarchy(out, 'vertex', 'mesh', 165)
    for member in vertex_members(out, 3):
        sizes = torch.bincount(member)
        assert (sizes[member[-3:]] == 1).all()
        assert len(set(member[-3:].tolist())) == 3
    assert_patches_connected(out, 3)


def test_pe_is_invariant_to_translation_and_scale():
    data = to_data(MESHES['torus']())
    moved = Data(pos=data.pos * 250.0 + torch.tensor([1e3, -40.0, 7.0]),
                 face=data.face)
    out, out_moved = MeshToHierarchy()(data), MeshToHierarchy()(moved)
    for node_type, pe in out.pe_dict.items():
        assert torch.allclose(out_moved[node_type].pe, pe, atol=1e-4)


def test_batching_meshes_with_different_components():
    examples = []
    for name in ('ant', 'box', 'parallel_sheets'):
        data = to_data(MESHES[name]())
        data.x = data.pos
        data.y = torch.tensor([len(examples)])
        examples.append(MeshToHierarchy()(data))
    check_batching(examples, 'vertex', in_channels=3)


def test_attributes_are_kept_and_input_edges_replaced():
    data = to_data(trimesh.creation.icosphere(1))
    num_vertices = data.num_nodes
    data.x = torch.randn(num_vertices, 5)
    data.normal = torch.nn.functional.normalize(data.pos, dim=1)
    data.y = torch.tensor([3])
    data.label = torch.arange(num_vertices)
    data.edge_index = torch.tensor([[0], [1]])
    data.edge_attr = torch.ones(1, 2)
    out = MeshToHierarchy()(data)
    vertex = out['vertex']
    for key in ('x', 'normal', 'pos', 'label'):
        assert torch.equal(vertex[key], data[key])
    assert torch.equal(out.y, data.y)
    store = out['vertex', 'edge', 'vertex']
    assert torch.equal(store.edge_index,
                       FaceToEdge()(Data(face=data.face,
                                         num_nodes=num_vertices)).edge_index)
    assert set(store.keys()) == {'edge_index'}


def test_deterministic_and_input_untouched():
    data = to_data(MESHES['capsule']())
    data.x = torch.randn(data.num_nodes, 2)
    snapshot = {key: value.clone() for key, value in data.items()}
    first = MeshToHierarchy()(data)
    second = MeshToHierarchy()(data)
    assert set(data.keys()) == set(snapshot)
    # Not even PyG's cache of which keys are node or edge attributes.
    assert not data._store.__dict__.get('_cached_attr')
    for key, value in snapshot.items():
        assert torch.equal(data[key], value)
    for store, other in zip(first.stores, second.stores):
        assert set(store.keys()) == set(other.keys())
        for key, value in store.items():
            assert torch.equal(value, other[key]) if isinstance(
                value, torch.Tensor) else value == other[key]
    # Another seed gives another, equally valid, partition.
    third = MeshToHierarchy(seed=1)(data)
    assert not torch.equal(third['vertex', 'in', 'patch0'].edge_index,
                           first['vertex', 'in', 'patch0'].edge_index)
    assert_patches_connected(third, 3)


def test_num_levels_is_honoured_even_past_one_patch():
    data = to_data(trimesh.creation.icosphere(1))  # 42 vertices
    out = MeshToHierarchy(num_levels=5)(data)
    check_hierarchy(out, 'vertex', 'mesh', 42)
    assert out.node_types == ['vertex'] + [f'patch{i}' for i in range(5)] + [
        'mesh']
    assert out['patch4'].num_nodes == 1
    flat = MeshToHierarchy(num_levels=0)(data)
    assert flat.node_types == ['vertex', 'mesh']
    assert flat['vertex', 'in', 'mesh'].edge_index[1].tolist() == [0] * 42


def test_float64_tetrahedra_and_degenerate_faces():
    pos = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1],
                        [1, 1, 1]], dtype=torch.double)
    tets = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4]])
    out = MeshToHierarchy(num_levels=1)(Data(pos=pos, face=tets))
    check_hierarchy(out, 'vertex', 'mesh', 5)
    assert out['vertex'].pe.dtype == torch.double
    # A face with a repeated vertex gives a self-loop edge, nothing worse.
    face = torch.tensor([[0, 0], [1, 1], [2, 1]], dtype=torch.int32)
    out = MeshToHierarchy(num_levels=2)(Data(pos=pos[:3].float(), face=face))
    check_hierarchy(out, 'vertex', 'mesh', 3)
    assert [0, 1] in out['vertex', 'edge', 'vertex'].edge_index.t().tolist()


def _mesh(**changes) -> Data:
    data = to_data(trimesh.creation.icosahedron())
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


GOOD_POS = _mesh().pos
GOOD_FACE = _mesh().face
NAN_POS = GOOD_POS.clone()
NAN_POS[3, 1] = float('nan')
INF_POS = GOOD_POS.clone()
INF_POS[0, 0] = float('inf')


@pytest.mark.parametrize('changes, match', [
    (dict(pos=None), "'pos'"),
    (dict(face=None), "'face'"),
    (dict(face=torch.zeros(3, 0, dtype=torch.long)), "'face' is empty"),
    (dict(face=GOOD_FACE - 1), "'face' indexes vertices outside"),
    (dict(face=GOOD_FACE + 1), "'face' indexes vertices outside"),
    (dict(face=GOOD_FACE.float()), "'face' must be an integer tensor"),
    (dict(face=GOOD_FACE[:2]), r"'face' must be .* shape \[3, F\]"),
    (dict(face=GOOD_FACE.t().contiguous()), "'face' must be"),
    (dict(pos=NAN_POS), "'pos' contains NaN"),
    (dict(pos=INF_POS), "'pos' contains NaN or infinite"),
    (dict(pos=GOOD_POS.long()), "'pos' must be a non-empty floating"),
    (dict(pos=GOOD_POS.view(-1)), "'pos' must be"),
    (dict(pos=torch.zeros(0, 3)), "'pos' must be a non-empty"),
    (dict(x=torch.zeros(5, 2)), "'x' must hold one row per vertex"),
    (dict(normal=torch.zeros(13, 3)), "'normal' must hold one row"),
    (dict(num_nodes=20), "'num_nodes' is 20"),
])
def test_bad_meshes_raise(changes, match):
    with pytest.raises(ValueError, match=match):
        MeshToHierarchy()(_mesh(**changes))


def test_bad_arguments_raise():
    with pytest.raises(TypeError, match='Data'):
        MeshToHierarchy()(HeteroData())
    with pytest.raises(TypeError, match='Data'):
        MeshToHierarchy()(GOOD_POS)
    # Out of range: ValueError.
    for value in (-1, np.int64(-2)):
        with pytest.raises(ValueError, match="'num_levels' must be an "
                           "integer >= 0"):
            MeshToHierarchy(num_levels=value)
    for value in (1, 0.5, np.float32(1), float('nan'), float('inf')):
        with pytest.raises(ValueError, match="'patch_size' must be a finite "
                           "number > 1"):
            MeshToHierarchy(patch_size=value)
    for value in (-1, 2**63, 2**64, np.uint64(2**63)):
        with pytest.raises(ValueError, match=r"'seed' must be an integer in "
                           r"\[0, 2\*\*63\)"):
            MeshToHierarchy(seed=value)
    # Wrong type: TypeError naming the argument.
    for value in (1.5, True, None, np.float64(2), '2'):
        with pytest.raises(TypeError, match="'num_levels' must be an "
                           "integer"):
            MeshToHierarchy(num_levels=value)
    for value in ('8', True, np.bool_(True), None, torch.tensor(8.0)):
        with pytest.raises(TypeError, match="'patch_size' must be a finite "
                           "number"):
            MeshToHierarchy(patch_size=value)
    for value in (0.5, True, '0'):
        with pytest.raises(TypeError, match="'seed' must be an integer"):
            MeshToHierarchy(seed=value)


def test_numpy_scalars_equal_python_scalars():
    data = to_data(trimesh.creation.icosphere(2))
    numpy = MeshToHierarchy(num_levels=np.int64(2),
                            patch_size=np.float64(6.0), seed=np.uint32(3))
    python = MeshToHierarchy(num_levels=2, patch_size=6.0, seed=3)
    assert repr(numpy) == repr(python)
    assert [type(v) for v in vars(numpy).values()] == [int, float, int]
    out, expected = numpy(data), python(data)
    assert_same_hierarchy(out, expected)
    # float32 patch sizes are read as their exact value.
    assert MeshToHierarchy(patch_size=np.float32(1.5)).patch_size == 1.5


def test_functional_transform():
    from torch_geometric.data.datapipes import DatasetAdapter

    data = to_data(trimesh.creation.icosphere(1))
    out = next(iter(DatasetAdapter([data]).mesh_to_hierarchy(num_levels=1)))
    expected = MeshToHierarchy(num_levels=1)(data)
    assert out.node_types == expected.node_types
    assert torch.equal(out['vertex', 'in', 'patch0'].edge_index,
                       expected['vertex', 'in', 'patch0'].edge_index)


def test_largest_seed_works():
    data = to_data(trimesh.creation.icosphere(1))
    out = MeshToHierarchy(num_levels=1, seed=2**63 - 1)(data)
    check_hierarchy(out, 'vertex', 'mesh', 42)
    assert out['mesh'].num_leaves.tolist() == [42]
    assert torch.equal(
        out['vertex', 'in', 'patch0'].edge_index,
        MeshToHierarchy(num_levels=1, seed=2**63 - 1)(data)[
            'vertex', 'in', 'patch0'].edge_index)


def test_repr():
    assert repr(MeshToHierarchy()) == (
        'MeshToHierarchy(num_levels=3, patch_size=8.0, seed=0)')
    assert repr(MeshToHierarchy(num_levels=2, patch_size=16, seed=4)) == (
        'MeshToHierarchy(num_levels=2, patch_size=16.0, seed=4)')
