from typing import List, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform, FaceToEdge
from torch_geometric.utils import scatter

from pyg_hsa.utils.checks import check_int, check_real, describe
from pyg_hsa.utils.coarsen import cluster_edges, coarsen_graph
from pyg_hsa.utils.hierarchy import add_level, add_root, leaf_hetero

# Parents whose vertices all lie within this fraction of the mesh's radius
# of their centroid count as points: their children's offsets are set to 0
# instead of dividing rounding noise by a vanishing radius.
POINT_TOLERANCE = 1e-6
# Seeds go to torch.Generator.manual_seed, which takes 64-bit integers.
MAX_SEED = 1 << 63


@functional_transform('mesh_to_hierarchy')
class MeshToHierarchy(BaseTransform):
    r"""Turns a triangle mesh into a hierarchy of connected surface patches:
    vertices → :obj:`patch0` → :obj:`patch1` → ... → one :obj:`mesh` root
    (functional name: :obj:`mesh_to_hierarchy`).

    The input is a :class:`~torch_geometric.data.Data` with vertex
    positions :obj:`pos` ``[V, D]`` (usually :math:`D = 3`) and faces
    :obj:`face` ``[3, F]`` (``[4, F]`` tetrahedra also work) indexing them.
    Node-level attributes (:obj:`pos`, :obj:`x`, :obj:`normal`, per-vertex
    labels, ...) stay on the leaf type :obj:`vertex`; a mesh without
    :obj:`x` gets none (add features, e.g. :obj:`x = pos` or normals,
    before or after the transform). The mesh edges, computed by
    :class:`~torch_geometric.transforms.FaceToEdge` (undirected), become
    :obj:`('vertex', 'edge', 'vertex')`; they replace an input
    :obj:`edge_index` (attributes whose name contains ``edge`` are
    dropped with it), and :obj:`face` is dropped. Graph-level attributes
    (:obj:`y`, ...) go to the global store. The root stores the number of
    vertices as :obj:`num_leaves` ``[1]`` (which also lets
    :class:`~torch_geometric.data.InMemoryDataset` collate the outputs, as
    :obj:`pre_transform`).

    **Patches follow the surface.** Level :math:`l` partitions the graph of
    level :math:`l-1` (the mesh graph for :obj:`patch0`; for coarser
    levels, patches joined by a mesh edge) into graph Voronoi cells
    (:func:`~pyg_hsa.utils.coarsen.coarsen_graph`): seeds form a maximal
    :math:`k`-hop independent set, and every node joins its nearest seed
    by breadth-first search over the edges, with the hop radius :math:`k`
    chosen per level so that patches hold about :obj:`patch_size` children
    on average (about 10 for the default 8 on triangle meshes). Every
    patch is therefore a connected piece of the surface, at every level:
    two sheets closer than an edge length but not joined by an edge (a
    thin plate's two sides, two parts of a model that touch) are never
    glued, unlike with voxel grids. A mesh with several connected
    components keeps them apart: their coarsest patches all go into the
    one root. A vertex that no face references is a component of its own:
    a chain of single-child patches up to the root.

    **Fixed depth.** Every mesh gets exactly :obj:`num_levels` patch
    levels, the coarsest nested straight into the root, so all outputs
    have the same node and edge types and PyG's
    :class:`~torch_geometric.loader.DataLoader` batches them. A component
    already reduced to one patch stays one patch (a single-child chain) on
    the levels above. With the default :obj:`patch_size=8`, the default
    :obj:`num_levels=3` leaves about :math:`V / 1000` patches in the root
    (a handful for meshes of a few thousand vertices, about 100 for
    :math:`10^5`); raise :obj:`num_levels` for much larger meshes.

    **Positions.** For a node :math:`n` (vertex or patch) with parent
    :math:`p`, let :math:`\mathcal{V}(n)` be the vertices below :math:`n`,
    :math:`\mathbf{c}_n` their centroid (a vertex's own position) and
    :math:`r_p = \big(\frac{1}{|\mathcal{V}(p)|} \sum_{v \in
    \mathcal{V}(p)} \lVert \mathbf{pos}_v - \mathbf{c}_p \rVert^2
    \big)^{1/2}` the parent's RMS radius. Then

    .. math::
        \mathrm{pe}_n = \left[ \frac{\mathbf{c}_n - \mathbf{c}_p}{r_p},\;
        \log \frac{|\mathcal{V}(n)|}{|\mathcal{V}(p)|} \right]
        \in \mathbb{R}^{D + 1},

    where the child's offset from its parent's centre is scale- and
    translation-invariant (not rotation-invariant, like :obj:`pos`) and
    the last entry is the child's share of its parent's vertices
    (:math:`\le 0`). The offset is 0 when the parent is a point (radius
    below :math:`10^{-6}` of the mesh's). Every non-root type carries
    :obj:`pe` ``[num_nodes, D + 1]`` in the dtype of :obj:`pos`.

    Args:
        num_levels (int, optional): number of patch levels between the
            vertices and the root (0 nests the vertices in the root).
            (default: :obj:`3`)
        patch_size (float, optional): target mean number of children per
            patch, greater than 1; the hop radius of every level is the one
            whose mean comes closest, on a log scale. (default: :obj:`8.0`)
        seed (int, optional): seed of the pseudo-random seed-selection
            priorities, in :math:`[0, 2^{63})`; the output is deterministic
            for a given seed. (default: :obj:`0`)
    """
    leaf_type = 'vertex'
    root_type = 'mesh'
    edge_relation = 'edge'

    def __init__(self, num_levels: int = 3, patch_size: float = 8.0,
                 seed: int = 0):
        self.num_levels = check_int(num_levels, 'num_levels', minimum=0)
        self.patch_size = check_real(patch_size, 'patch_size', minimum=1,
                                     strict=True)
        # torch.Generator.manual_seed overflows past 2**64 and remaps
        # negative seeds; one range for all keeps seeds unambiguous.
        self.seed = check_int(seed, 'seed')
        if not 0 <= self.seed < MAX_SEED:
            raise ValueError(f"'seed' must be an integer in [0, 2**63) (got "
                             f"{self.seed})")

    @staticmethod
    def patch_type(level: int) -> str:
        """The node type of patch level :obj:`level` (0 is the finest)."""
        return f'patch{level}'

    def forward(self, data: Data) -> HeteroData:
        pos, face = _check_mesh(data)
        out = leaf_hetero(_with_mesh_edges(data, face), self.leaf_type,
                          self.edge_relation)
        edge_index = out[self.leaf_type, self.edge_relation,
                         self.leaf_type].edge_index

        # member[l]: the level-l node above every vertex (level 0 = the
        # vertices themselves, the last level = the root).
        num_vertices = pos.size(0)
        member = [torch.arange(num_vertices, device=pos.device)]
        types = [self.leaf_type]
        num_nodes = num_vertices
        for level in range(self.num_levels):
            cluster, num_clusters = coarsen_graph(
                edge_index, num_nodes, self.patch_size, self.seed)
            types.append(self.patch_type(level))
            add_level(out, types[-2], types[-1], cluster, num_clusters)
            edge_index = cluster_edges(edge_index, cluster, num_clusters)
            member.append(cluster[member[-1]])
            num_nodes = num_clusters
        add_root(out, types[-1], self.root_type, num_vertices, pos.device)
        types.append(self.root_type)
        member.append(torch.zeros_like(member[0]))

        for child_type, pe in zip(types, _positions(pos, member)):
            out[child_type].pe = pe
        return out

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_levels={self.num_levels}, '
                f'patch_size={self.patch_size}, seed={self.seed})')


def _check_mesh(data: Data) -> Tuple[Tensor, Tensor]:
    """Validates the mesh; returns :obj:`pos` and :obj:`face` (as long)."""
    if not isinstance(data, Data):
        raise TypeError(f"MeshToHierarchy expects a torch_geometric.data."
                        f"Data (got {type(data).__name__})")
    for key in ('pos', 'face'):
        if getattr(data, key, None) is None:
            raise ValueError(f"MeshToHierarchy needs the attribute '{key}' "
                             f"(vertex positions 'pos' [V, 3] and faces "
                             f"'face' [3, F])")
    pos, face = data.pos, data.face
    if not isinstance(pos, Tensor) or pos.dim() != 2 or \
            not pos.is_floating_point() or pos.size(0) == 0 or \
            pos.size(1) == 0:
        raise ValueError(f"'pos' must be a non-empty floating-point tensor "
                         f"of shape [V, D] (got {describe(pos)})")
    if not torch.isfinite(pos).all():
        raise ValueError("'pos' contains NaN or infinite coordinates")
    num_vertices = pos.size(0)
    if not isinstance(face, Tensor) or face.dim() != 2 or \
            face.size(0) not in (3, 4) or face.is_floating_point() or \
            face.is_complex() or face.dtype == torch.bool:
        raise ValueError(f"'face' must be an integer tensor of shape "
                         f"[3, F] (got {describe(face)})")
    if face.size(1) == 0:
        raise ValueError("'face' is empty: the mesh has no faces")
    face = face.long()
    if int(face.min()) < 0 or int(face.max()) >= num_vertices:
        raise ValueError(f"'face' indexes vertices outside [0, "
                         f"{num_vertices - 1}] (found indices from "
                         f"{int(face.min())} to {int(face.max())}), but "
                         f"'pos' holds {num_vertices} vertices")
    for key in ('x', 'normal'):
        value = getattr(data, key, None)
        if value is not None and (not isinstance(value, Tensor) or
                                  value.dim() == 0 or
                                  value.size(0) != num_vertices):
            raise ValueError(f"'{key}' must hold one row per vertex "
                             f"([{num_vertices}, ...]; got "
                             f"{describe(value)})")
    if data.num_nodes != num_vertices:
        raise ValueError(f"'num_nodes' is {data.num_nodes} but 'pos' holds "
                         f"{num_vertices} vertices")
    return pos, face


def _with_mesh_edges(data: Data, face: Tensor) -> Data:
    """A shallow copy of :obj:`data` whose edges are the mesh edges of
    :class:`FaceToEdge`, without faces, input edges and edge attributes
    (keys containing ``'edge'``, PyG's convention: they would no longer
    match the edges)."""
    # A new Data rather than copy.copy: a copied store shares the input's
    # cache of which keys are node/edge attributes, which leaf_hetero
    # would fill with answers about the copy.
    mesh = Data(**{key: value for key, value in data.items()
                   if 'edge' not in key and key != 'num_nodes'})
    mesh.face = face
    return FaceToEdge(remove_faces=True)(mesh)


def _statistics(pos: Tensor, member: Tensor,
                num_nodes: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Vertex count, centroid and RMS radius of every node above the
    vertices (:obj:`member` maps every vertex to its node)."""
    count = torch.bincount(member, minlength=num_nodes).to(pos.dtype)
    centroid = scatter(pos, member, 0, dim_size=num_nodes,
                       reduce='sum') / count.unsqueeze(-1)
    squared = (pos - centroid[member]).pow(2).sum(-1)
    radius = (scatter(squared, member, 0, dim_size=num_nodes,
                      reduce='sum') / count).sqrt()
    return count, centroid, radius


def _positions(pos: Tensor, member: List[Tensor]) -> List[Tensor]:
    """The :obj:`pe` of every level below the root (see the class
    docstring), computed in float64 around the mesh centroid so that
    rounding does not depend on where the mesh sits."""
    pos64 = pos.double()
    pos64 = pos64 - pos64.mean(0)
    stats = [_statistics(pos64, m, int(m.max()) + 1) for m in member]
    tolerance = POINT_TOLERANCE * stats[-1][2][0]
    out = []
    for level, (child, parent) in enumerate(zip(stats, stats[1:])):
        # The parent of every node of this level: the node above any one
        # of its vertices.
        parent_index = torch.zeros_like(child[0], dtype=torch.long)
        parent_index[member[level]] = member[level + 1]
        count, centroid, _ = child
        parent_count = parent[0][parent_index]
        parent_centroid = parent[1][parent_index]
        parent_radius = parent[2][parent_index].unsqueeze(-1)
        is_point = parent_radius <= tolerance
        offset = torch.where(
            is_point, 0.0,
            (centroid - parent_centroid) / torch.where(is_point, 1.0,
                                                       parent_radius))
        share = torch.log(count / parent_count).unsqueeze(-1)
        out.append(torch.cat([offset, share], dim=-1).to(pos.dtype))
    return out
