"""Bridges between HSA and other libraries.

Each submodule needs its own optional dependency and is imported on
demand, e.g. ``from pyg_hsa.integrations.transformers import
patch_attention`` (needs ``pip install "pyg_hsa[transformers]"``).
"""
