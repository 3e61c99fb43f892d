"""Utilities: hierarchy building blocks shared by the transforms."""
from pyg_hsa.utils.hierarchy import (
    add_level,
    fourier_encoding,
    group_sizes,
    leaf_hetero,
    random_walk_encoding,
    rank_in_group,
)

__all__ = [
    'add_level',
    'fourier_encoding',
    'group_sizes',
    'leaf_hetero',
    'random_walk_encoding',
    'rank_in_group',
]
