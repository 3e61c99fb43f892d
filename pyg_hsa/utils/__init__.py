"""Utilities: hierarchy building blocks shared by the transforms, and
drawing."""
from pyg_hsa.utils.draw import draw_hierarchy
from pyg_hsa.utils.hierarchy import (
    add_level,
    fourier_encoding,
    group_sizes,
    leaf_hetero,
    random_walk_encoding,
    rank_in_group,
)

__all__ = [
    'draw_hierarchy',
    'add_level',
    'fourier_encoding',
    'group_sizes',
    'leaf_hetero',
    'random_walk_encoding',
    'rank_in_group',
]
