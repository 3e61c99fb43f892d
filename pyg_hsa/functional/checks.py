"""Checks of the functional core's inputs, each in one place:
:func:`~pyg_hsa.hsa_attention`, :func:`~pyg_hsa.hsa_dense` and the layers
call these rather than repeating them (plain arguments follow
:mod:`pyg_hsa.utils.checks`)."""
import math
import numbers
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from pyg_hsa.functional.variants import RESOLUTIONS
from pyg_hsa.tree import Tree
from pyg_hsa.utils.checks import (
    check_bool,
    check_choice,
    check_real,
    describe,
)

TreeLike = Union[Tree, Tensor]


def as_tree(tree: TreeLike, q: Tensor) -> Tree:
    if isinstance(tree, Tree):
        return tree
    if isinstance(tree, Tensor):
        if torch.compiler.is_compiling():
            raise TypeError(
                "'tree' is a parent tensor inside a torch.compile region: "
                "building a Tree reads its values, which a compiled graph "
                "cannot. Build it outside the compiled function, "
                "tree = pyg_hsa.Tree.from_parent(parent), and pass the Tree "
                "(a new Tree of the same kind reuses the compiled graph)")
        if not isinstance(q, Tensor) or q.dim() < 1:
            raise TypeError("'q' must be a tensor of shape [N, H, C]")
        return Tree.for_rows(tree, q.size(0), 'q')
    raise TypeError(f"'tree' must be a pyg_hsa.Tree or a parent LongTensor "
                    f"(got {type(tree).__name__})")


def check_inputs(q: Tensor, k: Tensor, v: Optional[Tensor], tree: Tree,
                 pe: Optional[Tensor]) -> None:
    named = [('q', q), ('k', k)] + ([('v', v)] if v is not None else [])
    for name, x in named + ([('pe', pe)] if pe is not None else []):
        if not isinstance(x, Tensor):
            raise TypeError(f"'{name}' must be a tensor "
                            f"(got {type(x).__name__})")
        check_float_on_tree(x, f"'{name}'", tree)
    for name, x in named:
        if x.dim() != 3:
            raise ValueError(f"'{name}' must have shape [N, H, C] "
                             f"(got {tuple(x.shape)})")
        if x.size(1) == 0 or x.size(2) == 0:
            raise ValueError(f"'{name}' must have at least one head and one "
                             f"channel (got shape {tuple(x.shape)})")
        if x.size(0) != tree.num_leaves:
            raise ValueError(f"'{name}' has {x.size(0)} rows but the tree has "
                             f"{tree.num_leaves} leaves")
    if q.shape != k.shape:
        raise ValueError(f"'q' and 'k' must have the same shape "
                         f"(got {tuple(q.shape)} and {tuple(k.shape)})")
    if v is not None and v.size(1) != q.size(1):
        raise ValueError(f"'v' has {v.size(1)} heads but 'q' has {q.size(1)}")
    if pe is not None:
        if pe.dim() not in (2, 3) or pe.size(0) != tree.num_nodes:
            raise ValueError(f"'pe' must have shape [M, P] or [M, H, P] with "
                             f"M = {tree.num_nodes} tree nodes (got "
                             f"{tuple(pe.shape)})")
        if pe.dim() == 3 and pe.size(1) != q.size(1):
            raise ValueError(f"'pe' has {pe.size(1)} heads but 'q' has "
                             f"{q.size(1)}")
        if pe.size(-1) == 0:
            raise ValueError(f"'pe' must have at least one channel (got "
                             f"shape {tuple(pe.shape)}); pass pe=None for "
                             f"no positions")


def check_float_on_tree(x: Tensor, name: str, tree: Tree,
                        hint: str = '') -> None:
    """Input :obj:`x` (called :obj:`name` in messages) is floating point
    and on the tree's device."""
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (got "
                        f"{x.dtype}){hint}")
    if x.device != tree.device:
        raise ValueError(f"{name} is on {x.device} but the tree is on "
                         f"{tree.device}; move one with .to()")


class Options(NamedTuple):
    """The options of :func:`~pyg_hsa.hsa_attention` as the core uses them
    (checked by :func:`check_options`)."""
    scale: Union[None, float, Tensor]
    dropout: float
    self_loops: bool
    return_attention_weights: bool
    validate: bool
    resolution: str
    causal: bool


def check_options(scale, dropout, self_loops, return_attention_weights,
                  validate, resolution, causal) -> Options:
    """The options, type- and range-checked: :obj:`scale` a float,
    ``None`` or a finite one-element tensor (e.g. a learned temperature,
    taken as it is and differentiated), :obj:`dropout` in ``[0, 1)``,
    :obj:`resolution` a string and every flag a bool. (What each variant
    supports is :func:`~pyg_hsa.functional.variants.check_variant`'s.)"""
    if isinstance(scale, Tensor):
        if scale.numel() != 1 or not scale.is_floating_point():
            raise ValueError(f"'scale' must be a number or a one-element "
                             f"floating-point tensor (got a {scale.dtype} "
                             f"tensor of shape {tuple(scale.shape)})")
        # (A data-dependent check: not inside a compiled graph.)
        if not torch.compiler.is_compiling() and not bool(
                torch.isfinite(scale.detach()).all()):
            raise ValueError(f"'scale' must be finite (got "
                             f"{float(scale.detach().reshape(()))})")
    elif scale is not None:
        if isinstance(scale, (bool, np.bool_)) or not isinstance(
                scale, numbers.Real):
            raise TypeError(f"'scale' must be a number, a one-element tensor "
                            f"or None (got {describe(scale)})")
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"'scale' must be finite (got {scale})")
    dropout = check_real(dropout, 'dropout')
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"'dropout' must lie in [0, 1) (got {dropout})")
    return Options(scale, dropout, check_bool(self_loops, 'self_loops'),
                   check_bool(return_attention_weights,
                              'return_attention_weights'),
                   check_bool(validate, 'validate'),
                   check_choice(resolution, 'resolution', RESOLUTIONS),
                   check_bool(causal, 'causal'))


def non_finite_row(x: Tensor) -> Optional[Tuple[int, float]]:
    """The first row of :obj:`x` holding a NaN or an infinity and that
    value, or :obj:`None` if :obj:`x` is finite (one synchronisation)."""
    finite = torch.isfinite(x.detach())
    if finite.dim() > 1:
        finite = finite.flatten(1).all(1)
    if bool(finite.all()):
        return None
    row = int((~finite).nonzero()[0])
    values = x.detach()[row].reshape(-1)
    return row, float(values[~torch.isfinite(values)][0])


def check_finite(**tensors: Optional[Tensor]) -> None:
    for name, x in tensors.items():
        bad = None if x is None else non_finite_row(x)
        if bad is not None:
            raise ValueError(f"'{name}' has a non-finite value ({bad[1]}) at "
                             f"row {bad[0]}; expected finite values")


def under_torch_func(*tensors: Tensor) -> bool:
    """Whether a :mod:`torch.func` transform (``grad``, ``vmap``) wraps any
    of :obj:`tensors`: the kernels whose constants are sparse matrices
    then give way to the level-by-level ones, which functorch can trace."""
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t)
               for t in tensors)
