"""Utilities: hierarchy building blocks shared by the transforms, exact kNN
(PyG's compiled kernel when installed, pure torch otherwise), connected
graph coarsening, and drawing."""
from pyg_hsa.utils.coarsen import (
    cluster_edges,
    coarsen_graph,
    maximal_independent_set,
    symmetric_edges,
    voronoi_clusters,
)
from pyg_hsa.utils.draw import draw_hierarchy
from pyg_hsa.utils.geometry import knn, knn_graph
from pyg_hsa.utils.hierarchy import (
    add_level,
    first_child,
    fourier_encoding,
    group_sizes,
    leaf_hetero,
    random_walk_encoding,
    rank_in_group,
)

__all__ = [
    'draw_hierarchy',
    'add_level',
    'leaf_hetero',
    'rank_in_group',
    'first_child',
    'group_sizes',
    'fourier_encoding',
    'random_walk_encoding',
    'knn',
    'knn_graph',
    'coarsen_graph',
    'maximal_independent_set',
    'voronoi_clusters',
    'cluster_edges',
    'symmetric_edges',
]
