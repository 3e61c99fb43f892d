r"""The functional core of HSA: :func:`hsa_attention` (the linear-time
dynamic program) and :func:`hsa_dense` (the explicit attention matrix)."""
from pyg_hsa.functional.attention import hsa_attention
from pyg_hsa.functional.dense import hsa_dense

__all__ = ['hsa_attention', 'hsa_dense']
