"""Bridges between HSA and other libraries.

Each submodule is imported on demand, e.g. ``from
pyg_hsa.integrations.transformers import patch_attention`` (needs ``pip
install "pyg_hsa[transformers]"``). For Hugging Face encoders:
:mod:`~pyg_hsa.integrations.transformers` (the patch, and every public name
of the parts below), :mod:`~pyg_hsa.integrations.dispatch` (the
AttentionInterface hook), :mod:`~pyg_hsa.integrations.encoders` (reading
the models and their masks), :mod:`~pyg_hsa.integrations.segments`
(sentence ids from texts); the cost counts are in
:mod:`~pyg_hsa.functional.flops`. Only the first two import transformers.
"""
