r"""Checks of plain arguments, one rule for the whole package: integers are
any :class:`numbers.Integral` (NumPy's included), reals any
:class:`numbers.Real`, flags a :class:`bool` or :class:`numpy.bool_`;
``True`` is not an integer here. A value of the wrong type raises a
:class:`TypeError`, one out of range a :class:`ValueError`; both name the
argument and what it must be."""
import math
import numbers
import os
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor


def renamed_keyword(value, old_value, name: str, old_name: str,
                    where: str):
    """The value of keyword :obj:`name`, also accepted under its former name
    :obj:`old_name` (deprecated: a :class:`FutureWarning` names the new
    one; both at once raise a :class:`TypeError`)."""
    if old_value is None:
        return value
    if value is not None:
        raise TypeError(f"{where}() got both '{name}' and its deprecated "
                        f"alias '{old_name}'; pass only '{name}'")
    warnings.warn(f"{where}(..., {old_name}=) is deprecated; use "
                  f"{name}= (the same argument, renamed)", FutureWarning,
                  stacklevel=3)
    return old_value


def check_bool(value: Any, name: str) -> bool:
    """:obj:`value` as a :class:`bool`."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"'{name}' must be a bool (got {describe(value)})")


def check_int(value: Any, name: str, minimum: Optional[int] = None,
              allow_none: bool = False) -> Optional[int]:
    """:obj:`value` as an :class:`int` (at least :obj:`minimum`)."""
    if value is None and allow_none:
        return None
    wanted = 'an integer' + ('' if minimum is None else f' >= {minimum}') + (
        ' or None' if allow_none else '')
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, numbers.Integral):
        raise TypeError(f"'{name}' must be {wanted} (got {describe(value)})")
    if minimum is not None and value < minimum:
        raise ValueError(f"'{name}' must be {wanted} (got {int(value)})")
    return int(value)


def check_real(value: Any, name: str, minimum: Optional[float] = None,
               strict: bool = False, maximum: Optional[float] = None,
               allow_none: bool = False) -> Optional[float]:
    """:obj:`value` as a finite :class:`float` in ``[minimum, maximum]``
    (``(minimum, maximum)`` with :obj:`strict`)."""
    if value is None and allow_none:
        return None
    low = '' if minimum is None else (
        f" {'>' if strict else '>='} {minimum}")
    high = '' if maximum is None else (
        f" {'<' if strict else '<='} {maximum}")
    wanted = f"a finite number{low}{' and' if low and high else ''}{high}" + (
        ' or None' if allow_none else '')
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, numbers.Real):
        raise TypeError(f"'{name}' must be {wanted} (got {describe(value)})")
    value = float(value)
    below = minimum is not None and (value <= minimum if strict else
                                     value < minimum)
    above = maximum is not None and (value >= maximum if strict else
                                     value > maximum)
    # (Not math.isfinite: torch.compile(dynamic=True) traces floats as
    # symbols, which comparisons accept and math.isfinite does not.)
    if not abs(value) < math.inf or below or above:
        raise ValueError(f"'{name}' must be {wanted} (got {value})")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """:obj:`value` as one of the strings :obj:`choices`."""
    if not isinstance(value, str) or value not in choices:
        options = ', '.join(repr(c) for c in choices[:-1]) + \
            f' or {choices[-1]!r}' if len(choices) > 1 else repr(choices[0])
        if len(choices) > 2:
            options = f'one of {options}'
        got = repr(value) if isinstance(value, str) else describe(value)
        error = ValueError if isinstance(value, str) else TypeError
        raise error(f"'{name}' must be {options} (got {got})")
    return str(value)


def check_path(value: Any, name: str) -> str:
    """:obj:`value` as a non-empty path string."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"'{name}' must be a path (got {describe(value)})")
    value = os.fspath(value)
    if not value:
        raise ValueError(f"'{name}' must be a non-empty path (got '')")
    return value


def check_callable(value: Any, name: str) -> Any:
    """:obj:`value` if it is callable or :obj:`None`."""
    if value is not None and not callable(value):
        raise TypeError(f"'{name}' must be callable or None (got "
                        f"{describe(value)})")
    return value


def check_points(value: Any, name: str, min_points: int = 0) -> Tensor:
    """:obj:`value` as finite positions ``[num_points, dim]`` (``dim >= 1``,
    at least :obj:`min_points` points): a :class:`TypeError` for anything
    but a floating-point tensor, a :class:`ValueError` for a wrong shape,
    too few points or NaN/infinity."""
    if not isinstance(value, Tensor):
        raise TypeError(f"'{name}' must be a tensor of positions "
                        f"[num_points, dim] (got {describe(value)})")
    if not value.is_floating_point():
        raise TypeError(f"'{name}' must be a floating point tensor (got "
                        f"{value.dtype})")
    if value.dim() != 2 or value.size(1) == 0:
        raise ValueError(f"'{name}' must have shape [num_points, dim] with "
                         f"dim >= 1 (got {list(value.shape)})")
    if value.size(0) < min_points:
        raise ValueError(f"'{name}' has {value.size(0)} points: at least "
                         f"{min_points} point(s) needed")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"'{name}' contains NaN or infinite values")
    return value


def describe(value: Any) -> str:
    """A short description of :obj:`value` for error messages: scalars as
    their value and type, tensors by dtype and shape."""
    if isinstance(value, Tensor):
        return f'a {value.dtype} tensor of shape {tuple(value.shape)}'
    if isinstance(value, (bool, int, float, str, np.generic)) or value is None:
        return f'{value!r} of type {type(value).__name__}'
    return f'a {type(value).__name__}'
