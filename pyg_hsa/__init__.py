"""Hierarchical Self-Attention for PyTorch Geometric."""
from pyg_hsa.tree import Tree
from pyg_hsa.functional import hsa_attention, hsa_dense
from pyg_hsa.kv_cache import HierarchicalKVCache, window_path

__version__ = '0.1.0'

__all__ = [
    'Tree',
    'HierarchicalKVCache',
    'window_path',
    'hsa_attention',
    'hsa_dense',
    '__version__',
]
