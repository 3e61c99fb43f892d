"""What :func:`~pyg_hsa.integrations.transformers.patch_attention` reads
from a BERT/RoBERTa-family encoder: its self-attention modules, the layers
to patch, and the padding in the attention masks it builds."""
from typing import List, Tuple

import torch
from torch import Tensor, nn

from pyg_hsa.utils.checks import check_int, describe


def self_attention_modules(model) -> List[nn.Module]:
    """``base_model.encoder.layer[i].attention.self`` of every layer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a transformers model (got "
                        f"{describe(model)})")
    config = getattr(model, 'config', None)
    if config is not None and getattr(config, 'is_decoder', False):
        raise TypeError("'model' is configured as a decoder (causal "
                        "attention); HSA here replaces encoder attention")
    base = getattr(model, 'base_model', model)
    layers = getattr(getattr(base, 'encoder', None), 'layer', None)
    modules = [
        getattr(getattr(layer, 'attention', None), 'self', None)
        for layer in (layers if isinstance(layers, nn.ModuleList) else ())
    ]
    if not modules or not all(
            isinstance(m, nn.Module) and hasattr(m, 'config')
            for m in modules):
        raise TypeError(f"patch_attention supports BERT/RoBERTa-family "
                        f"encoders from transformers (with "
                        f"base_model.encoder.layer[i].attention.self "
                        f"modules); got {type(model).__name__}")
    return modules


def check_layers(layers, num_layers: int) -> Tuple[int, ...]:
    """Layer indices (negative ones from the end) as a sorted tuple of
    distinct non-negative ones; :obj:`None` for all."""
    if layers is None:
        return tuple(range(num_layers))
    if not isinstance(layers, (list, tuple, range)):
        layers = (check_int(layers, 'layers'), )
    layers = tuple(check_int(i, f'layers[{j}]') for j, i in enumerate(layers))
    if not layers:
        raise ValueError("'layers' is empty: name at least one layer")
    bad = [i for i in layers if not -num_layers <= i < num_layers]
    if bad:
        raise ValueError(f"'layers' has indices {bad} out of range for a "
                         f"model with {num_layers} layers")
    layers = tuple(i % num_layers for i in layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"'layers' names a layer twice ({list(layers)})")
    return tuple(sorted(layers))


def first_and_last(valid: Tensor) -> Tensor:
    """The first and the last :obj:`True` entry of every row of
    :obj:`valid` (``[B, L]``): ``[CLS]`` and ``[SEP]``, ``<s>`` and
    ``</s>``."""
    position = torch.arange(valid.size(1), device=valid.device)
    first = torch.where(valid, position, valid.size(1)).amin(1, True)
    last = torch.where(valid, position, -1).amax(1, True)
    return valid & ((position == first) | (position == last))


def padding_mask(mask, batch: int, length: int,
                 device: torch.device) -> Tensor:
    """``[B, L]`` non-padding tokens from a transformers attention mask
    (2D, or 4D boolean or additive), which must be a pure padding mask
    (every real query row the same)."""
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor):
        raise TypeError(f"HSA needs the attention mask as a tensor (got "
                        f"{describe(mask)}); use the model with "
                        f"attn_implementation='sdpa' or 'eager'")
    if mask.dim() == 2 and mask.shape == (batch, length):
        return mask.bool() if mask.dtype == torch.bool else mask != 0
    if mask.dim() != 4 or mask.size(0) != batch or \
            mask.size(-2) not in (1, length) or mask.size(-1) != length:
        raise ValueError(f"Unexpected attention mask of shape "
                         f"{tuple(mask.shape)} for {batch} sequences of "
                         f"{length} tokens")
    if mask.is_floating_point():  # additive: 0 or very negative
        allowed = mask > torch.finfo(mask.dtype).min / 2
    else:  # boolean or 0/1: True / 1 where allowed
        allowed = mask != 0
    valid = allowed.any(dim=2).any(dim=1)  # [B, L] keys anyone may see
    rows = allowed ^ valid[:, None, None, :]
    if bool((rows & valid[:, None, :, None]).any()):
        raise ValueError("HSA can only follow padding masks (the same keys "
                         "for every query); this attention mask restricts "
                         "queries differently")
    return valid
