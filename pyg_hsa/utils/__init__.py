"""Utilities: hierarchy building blocks shared by the transforms, exact kNN
(PyG's compiled kernel when installed, pure torch otherwise), connected
graph coarsening, and drawing.

The submodules load on first use (:pep:`562`), so that the core, which
imports :mod:`pyg_hsa.utils.checks`, does not load kNN, coarsening and
drawing."""
import importlib
from typing import Any

# Public name -> the submodule that defines it.
_SOURCES = {
    'draw_hierarchy': 'draw',
    'add_level': 'hierarchy',
    'leaf_hetero': 'hierarchy',
    'rank_in_group': 'hierarchy',
    'first_child': 'hierarchy',
    'group_sizes': 'hierarchy',
    'fourier_encoding': 'hierarchy',
    'random_walk_encoding': 'hierarchy',
    'knn': 'geometry',
    'knn_graph': 'geometry',
    'coarsen_graph': 'coarsen',
    'maximal_independent_set': 'coarsen',
    'voronoi_clusters': 'coarsen',
    'cluster_edges': 'coarsen',
    'symmetric_edges': 'coarsen',
}

__all__ = list(_SOURCES)


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute "
                             f"{name!r}")
    module = importlib.import_module(f'{__name__}.{_SOURCES[name]}')
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
