"""Datasets built offline from data shipped inside installed packages."""
from pyg_hsa.datasets.ogb import (
    build_ogbg_molfreesolv,
    load_ogbg_dataset,
    scaffold_split,
)
from pyg_hsa.datasets.listops import ListOps
from pyg_hsa.datasets.shape_primitives import ShapePrimitives

__all__ = [
    'ListOps',
    'ShapePrimitives',
    'build_ogbg_molfreesolv',
    'load_ogbg_dataset',
    'scaffold_split',
]
