"""Point clouds as hierarchies of nested voxels (octrees in 3D)."""
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform

from pyg_hsa.utils.checks import check_int, check_points, check_real
from pyg_hsa.utils.geometry import knn_graph
from pyg_hsa.utils.hierarchy import add_level, add_root, leaf_hetero

LEAF_TYPE = 'point'
ROOT_TYPE = 'cloud'
# Attributes that are node-level by name: PyG's own (it reads the number of
# nodes from them) and the normals of scans and sampled meshes.
NODE_KEYS = ('x', 'normal', 'feat', 'batch', 'node_type', 'n_id')
# Above 2**62 cells per axis, coordinates would overflow int64.
MAX_CELL_COORD = 1 << 62
# Coordinates from this magnitude on are scaled down by a power of two
# first: extents, centroid sums and kNN's squared distances would overflow
# float64 near its largest finite values (about 1.8e308).
LARGE_COORD = 2.0**500


def voxel_type(level: int) -> str:
    """Node type of the voxels of level ``level`` (side ``size * 2**l``)."""
    return f'voxel{level}'


@functional_transform('point_cloud_to_hierarchy')
class PointCloudToHierarchy(BaseTransform):
    r"""Turns a point cloud into a multi-scale hierarchy of nested voxels,
    an octree in 3D (functional name: :obj:`point_cloud_to_hierarchy`):

    .. code-block:: none

        point -> voxel0 -> voxel1 -> ... -> voxel{L-1} -> cloud

    A :class:`~torch_geometric.data.Data` with positions :obj:`pos` ``[N,
    D]`` (any ``D``) and optionally :obj:`x`, :obj:`normal`, :obj:`y`,
    :obj:`edge_index`, ... becomes a
    :class:`~torch_geometric.data.HeteroData` with

    * leaves of type :obj:`'point'`, keeping every node-level attribute;
      an existing :obj:`edge_index` (and its edge attributes) becomes edge
      type :obj:`('point', 'edge', 'point')`;
    * one node type per level, :obj:`'voxel0'` (finest) to
      :obj:`'voxel{L-1}'` (coarsest): the occupied cells of a grid of side
      :math:`s_l = s \cdot 2^l`. All grids start at the same origin, the
      smallest coordinates :math:`\mathbf{o}` of the cloud, so a point in
      level-0 cell :math:`\mathbf{c} = \lfloor (\mathbf{p} - \mathbf{o}) /
      s \rfloor` lies in level-:math:`l` cell :math:`\lfloor \mathbf{c} /
      2^l \rfloor` (integer shift), and every cell is the union of the
      cells below it: the nesting is exact. Cells are numbered in
      lexicographic order of their integer coordinates, and carry the
      centroid of their points as :obj:`pos`;
    * one root of type :obj:`'cloud'` (also with its centroid :obj:`pos`,
      and the number of points as :obj:`num_leaves` ``[1]``);
    * nesting edges :obj:`('point', 'in', 'voxel0')`, ...,
      :obj:`('voxel{L-1}', 'in', 'cloud')` (with :math:`L = 0`:
      :obj:`('point', 'in', 'cloud')`);
    * with :obj:`knn=k`, edges :obj:`('point', 'knn', 'point')` from each
      point's :math:`k` nearest points (row 0) to the point (row 1).

    Graph-level attributes such as a class label :obj:`y` go to the global
    store; a :obj:`y` with one entry per point (segmentation) stays on
    :obj:`'point'`. :class:`~pyg_hsa.nn.HSAConv` reads the features
    :obj:`x` of :obj:`'point'`; for clouds without any, build them first
    (e.g. from :obj:`pos` and :obj:`normal`).

    **Positions in the family.** With :math:`\bar{\mathbf{p}}_v` the
    centroid (mean position of the points) of node :math:`v`, its parent
    :math:`u` and :math:`h_u` the side of :math:`u`'s cell,

    .. math::
        \mathrm{pe}_v = (\bar{\mathbf{p}}_v - \bar{\mathbf{p}}_u) / h_u,

    a :math:`D`-vector in :math:`(-1, 1)^D` for points and voxels (a point
    is its own centroid). For the children of the root, :math:`h_u` is the
    extent :math:`E = \max_d (\max_i p_{id} - \min_i p_{id})` of the cloud
    (1 if :math:`E = 0`). :obj:`pe` is set on every type but the root, in
    the dtype of :obj:`pos`.

    **Sizes and levels.** If :obj:`size` is :obj:`None`, the cells
    subdivide the cloud's bounding cube (side :math:`E`, corner
    :math:`\mathbf{o}`) :math:`J` times, :math:`s = E / 2^J` (points on the
    upper faces belong to the last cells), where :math:`J` depends on the
    number of points :math:`N` only: the largest :math:`J \ge 0` with
    :math:`2^{mJ} \cdot` :obj:`points_per_cell` :math:`\le N`, :math:`m =
    \min(` :obj:`intrinsic_dim` :math:`, D)`, i.e. an :math:`m`-dimensional
    set filling its bounding cube would hold at least
    :obj:`points_per_cell` points per occupied finest cell (curved
    surfaces occupy more cells than a flat one, so expect up to a few
    times fewer). Without :obj:`num_levels` there are :math:`L = J` levels:
    :obj:`voxel{L-1}` has at most :math:`2^D` cells of side :math:`E / 2`.
    The structure is thus invariant under translations and uniform
    scalings of the cloud (exactly when these are exact in floating point,
    e.g. power-of-two scalings; otherwise up to rounding for points on
    cell faces). A cloud with :math:`E = 0` (one point, or duplicates)
    gets one cell per level. Any finite coordinates work: from
    :math:`2^{500}` in magnitude on, the cloud is handled in units of a
    power of two (exact), so that nothing overflows float64.

    If :obj:`size` is given (absolute units), :math:`s` = :obj:`size`, and
    without :obj:`num_levels` the levels go on until a single cell would
    hold the whole cloud (that cell is the root).

    With :obj:`num_levels` given there are exactly :math:`L` =
    :obj:`num_levels` levels whatever the cloud: when the grids would need
    fewer, the extra coarse levels hold one cell each; when they would
    need more, the cells of :obj:`voxel{L-1}` all go straight into the
    root (which then has many children).

    **Batching.** PyG's :class:`~torch_geometric.loader.DataLoader` can
    only batch examples with the same node and edge types, i.e. the same
    number of levels, and silently drops the types that the first example
    lacks. The default depth depends on :math:`N` only, so clouds with
    equal point counts (e.g. after
    :class:`~torch_geometric.transforms.SamplePoints` or
    :class:`~torch_geometric.transforms.FixedPoints`) always batch; for
    clouds of varying sizes, or with an absolute :obj:`size`, set
    :obj:`num_levels`.

    **Unary chains.** A cell with a single occupied child (or a single
    point) is kept: removing it would make a child skip a level, and so
    change the edge types from cloud to cloud, which breaks batching. A
    family of one costs HSA next to nothing, its :obj:`pe` is zero, and the
    default depth keeps such cells rare except in sparse regions.

    Args:
        size (float, optional): side of the finest cells, in the units of
            :obj:`pos`. If :obj:`None`, derived from the bounding box and
            the number of points (see above). (default: :obj:`None`)
        num_levels (int, optional): number of voxel levels :math:`L \ge
            0`. If :obj:`None`, derived (see above). (default: :obj:`None`)
        points_per_cell (float, optional): the target number of points per
            finest cell of the derived size. (default: :obj:`16.0`)
        intrinsic_dim (int, optional): the dimension of the set the points
            are sampled from, for the derived size: 2 for surfaces (the
            usual scans and meshes), 3 for volumes. (default: :obj:`2`)
        knn (int, optional): if positive, add the edges from each point's
            :obj:`knn` nearest points (exact, ties to the smaller index;
            fewer in clouds of at most :obj:`knn` points) as
            :obj:`('point', 'knn', 'point')`, by
            :func:`pyg_hsa.utils.knn_graph` (PyG's compiled kNN where
            installed breaks exact ties its own way). (default:
            :obj:`None`)
    """
    def __init__(self, size: Optional[float] = None,
                 num_levels: Optional[int] = None,
                 points_per_cell: float = 16.0, intrinsic_dim: int = 2,
                 knn: Optional[int] = None):
        self.size = check_real(size, 'size', minimum=0, strict=True,
                               allow_none=True)
        self.num_levels = check_int(num_levels, 'num_levels', minimum=0,
                                    allow_none=True)
        self.points_per_cell = check_real(points_per_cell, 'points_per_cell',
                                          minimum=0, strict=True)
        self.intrinsic_dim = check_int(intrinsic_dim, 'intrinsic_dim',
                                       minimum=1)
        self.knn = check_int(knn, 'knn', minimum=0, allow_none=True) or None

    def forward(self, data: Data) -> HeteroData:
        pos = _check_pos(data)
        _check_node_count(data, pos.size(0))
        if 'pe' in data:
            raise ValueError("'data' already has an attribute 'pe', which "
                             "the hierarchy's positions would overwrite; "
                             "rename it")
        out = leaf_hetero(data, LEAF_TYPE, 'edge')
        pos64 = pos.double()
        origin, corner = pos64.min(dim=0).values, pos64.max(dim=0).values
        # Huge coordinates in units of a power of two (exact: the hierarchy
        # and pe do not change).
        unit = _coordinate_unit(origin, corner)
        if unit != 1.0:
            pos64, origin, corner = pos64 / unit, origin / unit, \
                corner / unit
        extent = float((corner - origin).max())
        cell, size, num_levels = self._grid(pos64 - origin, extent, unit)

        # Bottom-up: the parent of every level-l cell (and of every point).
        parents: List[Tensor] = []
        for _ in range(num_levels):  # loop over levels
            parent, cell = _compact_rows(cell)
            parents.append(parent)
            cell = cell >> 1

        centroids = self._add_levels(out, pos64, parents, pos.dtype, unit,
                                     (origin, corner))
        self._add_positions(out, parents, centroids, size, extent,
                            pos.dtype)
        if self.knn:
            out[LEAF_TYPE, 'knn', LEAF_TYPE].edge_index = knn_graph(
                pos if unit == 1.0 else pos64, self.knn)
        return out

    def _grid(self, offset: Tensor, extent: float,
              unit: float) -> Tuple[Tensor, float, int]:
        """Level-0 integer cell coordinates ``[N, D]`` of the points (from
        their offsets to the origin), the finest side and the number of
        levels, in coordinates divided by :obj:`unit`."""
        if self.size is None:
            depth = self.default_depth(offset.size(0), offset.size(1))
            num_levels = depth if self.num_levels is None \
                else self.num_levels
            if extent == 0:
                return torch.zeros_like(offset, dtype=torch.long), 0.0, \
                    num_levels
            size = extent / 2**depth
            cell = torch.floor(offset / size).long()
            # Points on the cube's upper faces go to the last cells.
            return cell.clamp_(max=2**depth - 1), size, num_levels
        size = self.size / unit
        # (A size that vanishes in the cloud's unit is too small as well.)
        scaled = offset / size if size > 0 else None
        if scaled is None or float(scaled.max()) >= MAX_CELL_COORD:
            raise ValueError(f"'size' ({self.size}) is too small for a "
                             f"cloud of extent {extent * unit}: more than "
                             f"2**62 cells per axis")
        cell = torch.floor(scaled).long()
        num_levels = self.num_levels
        if num_levels is None:
            num_levels = int(cell.max()).bit_length()
        return cell, size, num_levels

    def default_depth(self, num_points: int, dim: int) -> int:
        """:math:`J`: the largest :math:`J \\ge 0` with :math:`2^{mJ}
        \\cdot` :obj:`points_per_cell` :math:`\\le N`."""
        m = min(self.intrinsic_dim, dim)
        depth = 0
        while 2**(m * (depth + 1)) * self.points_per_cell <= num_points:
            depth += 1
        return depth

    @staticmethod
    def _add_levels(out: HeteroData, pos64: Tensor, parents: List[Tensor],
                    dtype: torch.dtype, unit: float,
                    box: Tuple[Tensor, Tensor]) -> List[Tensor]:
        """Adds the voxel and root types and their nesting edges; returns
        the centroids of every level (points first, root last) in the units
        of :obj:`pos64`, and sets them as ``pos`` in the cloud's units and
        :obj:`dtype`."""
        def unscaled(centroid: Tensor) -> Tensor:
            # (Within the bounding box: a rounded mean of points at the
            # largest float64 would otherwise become infinite.)
            if unit != 1.0:
                centroid = centroid.clamp(*box) * unit
            return centroid.to(dtype)

        total = pos64
        count = torch.ones_like(pos64[:, 0])
        centroids = [pos64]
        child_type = LEAF_TYPE
        for level, parent in enumerate(parents):  # loop over levels
            num_cells = int(parent.max()) + 1
            total = pos64.new_zeros(num_cells, pos64.size(1)).index_add_(
                0, parent, total)
            count = count.new_zeros(num_cells).index_add_(0, parent, count)
            centroids.append(total / count.unsqueeze(1))
            add_level(out, child_type, voxel_type(level), parent, num_cells)
            out[voxel_type(level)].pos = unscaled(centroids[-1])
            child_type = voxel_type(level)
        add_root(out, child_type, ROOT_TYPE, pos64.size(0), pos64.device)
        centroids.append(pos64.mean(dim=0, keepdim=True))
        out[ROOT_TYPE].pos = unscaled(centroids[-1])
        return centroids

    @staticmethod
    def _add_positions(out: HeteroData, parents: List[Tensor],
                       centroids: List[Tensor], size: float, extent: float,
                       dtype: torch.dtype) -> None:
        """``pe`` of every node: its centroid's offset from its parent's,
        over the parent's cell side (the cloud's extent under the
        root)."""
        num_levels = len(parents)
        types = [LEAF_TYPE] + [voxel_type(lv) for lv in range(num_levels)]
        root = torch.zeros(centroids[-2].size(0), dtype=torch.long,
                           device=centroids[-2].device)
        for level, node_type in enumerate(types):  # loop over levels
            if level < num_levels:
                parent, side = parents[level], size * 2**level
            else:
                parent, side = root, extent
            offset = centroids[level] - centroids[level + 1][parent]
            out[node_type].pe = (offset / (side or 1.0)).to(dtype)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(size={self.size}, '
                f'num_levels={self.num_levels}, '
                f'points_per_cell={self.points_per_cell}, '
                f'intrinsic_dim={self.intrinsic_dim}, knn={self.knn})')


def _check_pos(data: Data) -> Tensor:
    """The positions ``[N, D]`` of a non-empty, finite cloud."""
    if not isinstance(data, Data):
        raise TypeError(f"'data' must be a torch_geometric.data.Data (got "
                        f"{type(data).__name__})")
    pos = getattr(data, 'pos', None)
    if pos is None:
        raise ValueError("'data.pos' is missing: a point cloud needs "
                         "positions [num_points, dim]")
    return check_points(pos, 'data.pos', min_points=1)


def _coordinate_unit(low: Tensor, high: Tensor) -> float:
    """The power of two that the coordinates (between :obj:`low` and
    :obj:`high`) are divided by: 1, unless they reach :obj:`LARGE_COORD`;
    then the largest in magnitude becomes at most 2."""
    top = max(-float(low.min()), float(high.max()))
    if top < LARGE_COORD:
        return 1.0
    return 2.0**(math.frexp(top)[1] - 1)  # (at most 2**1023)


def _check_node_count(data: Data, num_points: int) -> None:
    """Node-level attributes and :obj:`num_nodes` must count the points of
    :obj:`pos`: PyG reads the number of nodes from :obj:`num_nodes` or
    :obj:`x` first, and would then take :obj:`pos` (or :obj:`x`) for a
    graph-level attribute."""
    wrong = []
    if 'num_nodes' in data and data['num_nodes'] != num_points:
        wrong.append(f"'data.num_nodes' is {data['num_nodes']!r}")
    for key in NODE_KEYS:
        value = data[key] if key in data else None
        if not isinstance(value, Tensor):
            continue
        if value.dim() == 0:
            wrong.append(f"'data.{key}' is a scalar")
            continue
        rows = value.size(data.__cat_dim__(key, value))
        if rows != num_points:
            wrong.append(f"'data.{key}' has {rows} rows")
    if wrong:
        raise ValueError(f"{', '.join(wrong)}, but 'data.pos' holds "
                         f"{num_points} points: node-level attributes "
                         f"({', '.join(NODE_KEYS)}) and 'num_nodes' must "
                         f"count the points")


def _compact_rows(cell: Tensor) -> Tuple[Tensor, Tensor]:
    """Numbers the distinct rows of the integer coordinates ``cell [C,
    D]`` (all >= 0) in lexicographic order: returns the number of every
    row and the distinct rows."""
    extent = (cell.max(dim=0).values + 1).tolist()
    stride, total = [], 1
    for width in reversed(extent):  # loop over dimensions
        stride.insert(0, total)
        total *= width
    if total >= MAX_CELL_COORD:  # the flat key would overflow int64
        distinct, inverse = torch.unique(cell, dim=0, return_inverse=True)
        return inverse, distinct
    key = (cell * torch.tensor(stride, device=cell.device)).sum(dim=1)
    key_id, distinct_key = _compact_keys(key, total)
    distinct = torch.stack([distinct_key // s % w
                            for s, w in zip(stride, extent)], dim=1)
    return key_id, distinct


def _compact_keys(key: Tensor, num_keys: int) -> Tuple[Tensor, Tensor]:
    """``(rank of every key among the distinct keys, distinct keys)`` for
    keys in ``[0, num_keys)``. An occupancy table replaces the sort when
    it is not much longer than the keys."""
    if num_keys <= 8 * key.numel() + 4096:
        occupied = torch.zeros(num_keys, dtype=torch.bool,
                               device=key.device)
        occupied[key] = True
        rank = torch.cumsum(occupied, dim=0) - 1
        return rank[key], occupied.nonzero().view(-1)
    distinct, inverse = torch.unique(key, return_inverse=True)
    return inverse, distinct
