r"""Incremental decoding with causal query-resolved HSA.

A token attends, causally, to itself and to the *completed* left siblings
of every node on its path (see :func:`~pyg_hsa.hsa_attention` with
:obj:`resolution='query'` and :obj:`causal=True`). In a hierarchy that grows
left to right (every subtree's tokens contiguous: windows, lines,
sentences, brackets), a completed subtree never changes, so one summary
stands for it: the sum of its keys, the sum of its values, its number of
tokens and its position vector. The completed children of the open nodes
form a stack: when a node closes, the summaries of its children are popped
and its own summary is pushed, as a child of its parent. So the cache holds
at most :math:`b` entries per level, and a token costs
:math:`O(b \cdot \mathrm{depth})` time and memory instead of :math:`O(N)`.
"""
import math
import numbers
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from pyg_hsa.utils.checks import (
    check_int,
    check_real,
    describe,
    renamed_keyword,
)


class HierarchicalKVCache:
    r"""The key/value cache of one attention layer (all heads) for causal
    query-resolved HSA over a hierarchy that grows left to right.

    .. code-block:: python

        cache = HierarchicalKVCache()
        for t, token in enumerate(tokens):
            q, k, v = project(token)            # [H, C] each (or [B, H, C])
            cache.append(k, v, path=window_path(t, (16, 16, 16)))
            out = cache.attend(q)               # [H, Cv]

    Token :math:`t`'s output equals row :math:`t` of
    ``hsa_attention(q, k, v, tree, self_loops=True, resolution='query',
    causal=True)`` on the tree of all tokens (up to rounding):

    .. math::
        o_t = \frac{e^{s_{tt}} v_t + \sum_B n(B) e^{s_t(B)} \bar v(B)}
        {e^{s_{tt}} + \sum_B n(B) e^{s_t(B)}}, \quad
        s_t(B) = \mathrm{scale} \langle q_t, \bar k(B) \rangle +
        \langle e(A), e(B) \rangle,

    over the completed left siblings :math:`B` of every node :math:`A` on
    the path of :math:`t` (its own leaf included), with :math:`\bar k,
    \bar v` the means over :math:`B`'s tokens and :math:`s_{tt} =
    \mathrm{scale} \langle q_t, k_t \rangle + \lVert e(t) \rVert^2`.

    A token's :obj:`path` lists its ancestors root first (the root, ...,
    its parent), one id per depth; an id only needs to differ from the
    previous token's id at that depth when a new node opens there. Nodes of
    the previous path that are not on the new one are closed for good; a
    new root starts an independent sequence. Paths may have any length
    (brackets, lines in blocks).

    **Dtypes.** Counts, key and value sums and position vectors are kept
    in float32 (float64 for float64 inputs) whatever the input dtype: a
    float16 count would stop at 2048 tokens per block, a bfloat16 one at
    256; float32 counts exactly to :math:`2^{24}`. :meth:`attend` computes
    in float32 as well (float64 if any input is float64) and returns the
    promoted dtype of :obj:`q`, :obj:`k` and :obj:`v`, as
    :func:`~pyg_hsa.hsa_attention` does with half-precision inputs. Every
    token must keep the first token's shapes, dtypes, device and position
    width (or give no :obj:`pe`, as the first); a change raises a
    :class:`TypeError` (dtype) or :class:`ValueError` naming the argument.

    Args:
        scale (float, optional): the logit scale. (default:
            :math:`1/\sqrt{C}`)
    """
    def __init__(self, scale: Optional[float] = None):
        self.scale = None if scale is None else check_real(
            scale, 'scale', 0.0, strict=True)
        self.reset()

    def reset(self) -> None:
        """Forgets every token."""
        self.num_tokens = 0
        self._path: List[int] = []  # ids of the open nodes, root first
        # The stack of summaries: each entry's parent depth (a list, read
        # when popping) and buffers [capacity, ...] of key sums, value sums,
        # counts and position vectors; the first len(self._depth) count.
        self._depth: List[int] = []
        self._key = self._value = self._count = self._pe = None
        # Below each open node (depth d at row d): key and value sums and
        # counts; and the position vectors of the path and the last token.
        self._acc_key = self._acc_value = self._acc_count = None
        self._own_pe = None
        self._last = None  # the last token's (k, v), in the buffers' dtype
        # The first token's (shape, dtype, device) of 'k', 'v' and 'pe'
        # (None without positions), which every later token must keep.
        self._inputs = None

    def __len__(self) -> int:
        return self.num_tokens

    @property
    def num_entries(self) -> int:
        """Summaries held now (completed left siblings on the path)."""
        return len(self._depth)

    def append(self, k: Tensor, v: Tensor, path: Sequence[int],
               pe: Optional[Tensor] = None, *,
               pos: Optional[Tensor] = None) -> None:
        """Adds a token with key :obj:`k` ``[..., H, C]``, value :obj:`v`
        ``[..., H, Cv]`` and ancestors :obj:`path` (root first); closes the
        nodes of the previous path that :obj:`path` leaves. :obj:`pe`
        holds the position vectors of the path's nodes and of the token
        itself, ``[len(path) + 1, P]`` or ``[len(path) + 1, H, P]``, if the
        model uses them (for every token or for none). :obj:`pos` is a
        deprecated alias of :obj:`pe` (a :class:`FutureWarning`)."""
        pe = renamed_keyword(pe, pos, 'pe', 'pos', 'HierarchicalKVCache.append')
        path = self._check(k, v, path, pe)
        if self._inputs is None:
            self._allocate(k, v, pe)
        else:  # the previous token is now a completed child of its parent
            self._push(len(self._path) - 1, *self._last, 1.0, None if
                       self._pe is None else self._own_pe[len(self._path)])
        common = 0
        for old, new in zip(self._path, path):
            if old != new:
                break
            common += 1
        # Close the old nodes below the common part, deepest first: each
        # replaces its children's summaries by its own.
        for depth in range(len(self._path) - 1, common - 1, -1):
            while self._depth and self._depth[-1] >= depth:
                self._depth.pop()
            if depth > 0:
                self._push(depth - 1, self._acc_key[depth],
                           self._acc_value[depth], self._acc_count[depth],
                           None if self._pe is None else
                           self._own_pe[depth])
        dtype = self._key.dtype  # (float32 for half inputs)
        if k.dtype != dtype or v.dtype != dtype:
            k, v = k.to(dtype), v.to(dtype)
        if pe is not None:  # [len(path) + 1, 1 or H, P]
            pe = (pe.unsqueeze(1) if pe.dim() == 2 else pe).to(dtype)
        self._grow_levels(len(path) + 1)
        self._acc_key[common:len(path)] = 0
        self._acc_value[common:len(path)] = 0
        self._acc_count[common:len(path)] = 0
        self._acc_key[:len(path)] += k
        self._acc_value[:len(path)] += v
        self._acc_count[:len(path)] += 1
        if pe is not None:  # the new nodes' and the token's vectors
            self._own_pe[common:len(path) + 1] = pe[common:]
        self._path = path
        self._last = (k, v)
        self.num_tokens += 1

    def attend(self, q: Tensor) -> Tensor:
        """The output ``[..., H, Cv]`` of the last appended token for its
        query :obj:`q` ``[..., H, C]`` (of the keys' shape and device),
        in the promoted dtype of :obj:`q`, :obj:`k` and :obj:`v`."""
        if self._last is None:
            raise ValueError("attend() needs a token: call append() first")
        (shape, k_dtype, device), (_, v_dtype, _), _ = self._inputs
        if not isinstance(q, Tensor) or q.shape != shape or \
                not q.is_floating_point():
            raise ValueError(f"'q' must be a floating-point tensor of the "
                             f"key's shape {tuple(shape)} (got "
                             f"{describe(q)})")
        if q.device != device:
            raise ValueError(f"'q' is on {q.device} but the cache is on "
                             f"{device}; move one with .to()")
        out_dtype = torch.promote_types(q.dtype, torch.promote_types(
            k_dtype, v_dtype))
        # (As hsa_attention: half precision computes in float32.)
        dtype = torch.float64 if out_dtype == torch.float64 else \
            torch.float32
        size = len(self._depth)
        k, v = self._last
        key, value, count = (self._key[:size], self._value[:size],
                             self._count[:size])
        own_pos, pe = self._own_pe, self._pe
        if q.dtype != dtype:
            q = q.to(dtype)
        if key.dtype != dtype:  # float32 buffers, a float64 query
            k, v, key, value, count = (x.to(dtype) for x in (
                k, v, key, value, count))
            if pe is not None:
                own_pos, pe = own_pos.to(dtype), pe.to(dtype)
        scale = self.scale if self.scale is not None else \
            1.0 / math.sqrt(q.size(-1))
        self_logit = scale * (q * k).sum(-1)  # [..., H]
        if pe is not None:
            self_logit = self_logit + own_pos[len(self._path)].square().sum(
                -1)
        count = count.view(-1, *([1] * (q.dim() - 1)))
        # Blocks of n tokens: logit of the mean key, plus log n.
        logit = scale * (q * key).sum(-1) / count + count.log()
        if pe is not None:
            # An entry's sibling on the path: the open node (or the token)
            # one level below the entry's parent.
            mine = own_pos[self._depth_tensor(size) + 1]
            pe_logit = (mine * pe[:size]).sum(-1)  # [E, 1 or H]
            # Shared by the batch dimensions: [E, 1, ..., 1 or H].
            logit = logit + pe_logit.view(size, *([1] * (q.dim() - 2)),
                                           pe_logit.size(-1))
        logit = torch.cat([self_logit.unsqueeze(0), logit])  # [E+1, ..., H]
        weight = torch.softmax(logit, dim=0)
        values = torch.cat([v.unsqueeze(0), value / count.unsqueeze(-1)])
        out = (weight.unsqueeze(-1) * values).sum(0)
        return out if out.dtype == out_dtype else out.to(out_dtype)

    # Buffers ##############################################################

    def _allocate(self, k: Tensor, v: Tensor, pe: Optional[Tensor]):
        # Counts and sums in float32 (float64 for float64 inputs): a half
        # precision count would stop at 256 (bfloat16) or 2048 (float16).
        dtype = torch.float64 if torch.float64 in (k.dtype, v.dtype) else \
            torch.float32
        self._inputs = tuple(None if x is None else (x.shape, x.dtype,
                                                     x.device)
                             for x in (k, v, pe))

        def zeros(rows: int, *shape: int) -> Tensor:
            return torch.zeros(rows, *shape, dtype=dtype, device=k.device)

        capacity = 64
        self._key = zeros(capacity, *k.shape)
        self._value = zeros(capacity, *v.shape)
        self._count = zeros(capacity)
        self._acc_key = zeros(8, *k.shape)
        self._acc_value = zeros(8, *v.shape)
        self._acc_count = zeros(8)
        if pe is not None:
            width = pe.shape[1:] if pe.dim() == 3 else (1, pe.size(1))
            self._pe = zeros(capacity, *width)
            self._own_pe = zeros(8, *width)

    def _push(self, depth: int, key: Tensor, value: Tensor, count,
              pe: Optional[Tensor]) -> None:
        size = len(self._depth)
        if size == self._key.size(0):
            self._key, self._value, self._count, self._pe = (
                None if x is None else torch.cat([x, torch.zeros_like(x)])
                for x in (self._key, self._value, self._count, self._pe))
        self._key[size], self._value[size] = key, value
        self._count[size] = count
        if self._pe is not None:
            self._pe[size] = pe
        self._depth.append(depth)

    def _grow_levels(self, levels: int) -> None:
        while self._acc_key.size(0) < levels:
            self._acc_key, self._acc_value, self._acc_count, \
                self._own_pe = (
                    None if x is None else torch.cat([x, torch.zeros_like(x)])
                    for x in (self._acc_key, self._acc_value,
                              self._acc_count, self._own_pe))

    def _depth_tensor(self, size: int) -> Tensor:
        return torch.tensor(self._depth[:size], dtype=torch.long,
                            device=self._key.device)

    def _check(self, k, v, path, pe) -> List[int]:
        for name, x in (('k', k), ('v', v)):
            if not isinstance(x, Tensor) or x.dim() < 2 or \
                    not x.is_floating_point():
                raise TypeError(f"'{name}' must be a floating-point tensor "
                                f"[..., H, C] (got {describe(x)})")
        if v.shape[:-1] != k.shape[:-1]:
            raise ValueError(f"'k' {tuple(k.shape)} and 'v' "
                             f"{tuple(v.shape)} must agree up to the last "
                             f"dimension")
        if v.device != k.device:
            raise ValueError(f"'v' is on {v.device} but 'k' is on "
                             f"{k.device}; move one with .to()")
        if self._inputs is not None:
            (k_shape, _, _), (v_shape, _, _), _ = self._inputs
            if (k.shape, v.shape) != (k_shape, v_shape):
                raise ValueError(f"'k' and 'v' must keep the shapes "
                                 f"{tuple(k_shape)} and {tuple(v_shape)} "
                                 f"of the earlier tokens (got "
                                 f"{tuple(k.shape)} and {tuple(v.shape)})")
        if isinstance(path, Tensor):
            path = path.tolist() if path.dim() == 1 else None
        if not isinstance(path, (list, tuple)) or not path or not all(
                isinstance(node, (int, np.integer)) for node in path):
            raise ValueError(f"'path' must list the token's ancestors as "
                             f"integer ids, root first (at least the root; "
                             f"got {describe(path)})")
        if self._inputs is not None and (pe is None) != (
                self._inputs[2] is None):
            raise ValueError("'pe' must be given for every token or for "
                             "none")
        if pe is not None:
            if not isinstance(pe, Tensor) or not pe.is_floating_point():
                raise TypeError(f"'pe' must be a floating-point tensor "
                                f"[len(path) + 1, P] or [len(path) + 1, H, "
                                f"P] (got {describe(pe)})")
            if pe.dim() not in (2, 3) or pe.size(0) != len(path) + 1 or \
                    pe.dim() == 3 and pe.size(1) not in (1, k.size(-2)):
                raise ValueError(f"'pe' must be [len(path) + 1, P] or "
                                 f"[len(path) + 1, H, P] (got "
                                 f"{describe(pe)} for a path of "
                                 f"{len(path)})")
            if pe.device != k.device:
                raise ValueError(f"'pe' is on {pe.device} but 'k' is on "
                                 f"{k.device}; move one with .to()")
        if self._inputs is not None:
            self._check_like_first(k, v, pe)
        return [int(node) for node in path]

    def _check_like_first(self, k: Tensor, v: Tensor,
                          pe: Optional[Tensor]) -> None:
        """Dtypes, devices and position widths of the first token (whose
        buffers they fill)."""
        for name, x, first in zip(('k', 'v', 'pe'), (k, v, pe),
                                  self._inputs):
            if x is None:  # (no positions: checked above)
                continue
            shape, dtype, device = first
            if x.dtype != dtype:
                raise TypeError(f"'{name}' has dtype {x.dtype} but the "
                                f"earlier tokens' '{name}' had {dtype}; "
                                f"every token must keep its dtype")
            if x.device != device:
                raise ValueError(f"'{name}' is on {x.device} but the "
                                 f"earlier tokens were on {device}; every "
                                 f"token must stay on one device")
            if name == 'pe' and x.shape[1:] != shape[1:]:
                raise ValueError(f"'pe' has shape {tuple(x.shape)} but "
                                 f"the earlier tokens' positions were "
                                 f"[len(path) + 1, "
                                 f"{', '.join(map(str, shape[1:]))}]; every "
                                 f"token must keep their width")

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_tokens={self.num_tokens}, '
                f'num_entries={self.num_entries})')


def window_path(t: int, branching: Sequence[int]) -> list:
    """The ancestors of token :obj:`t` (an integer >= 0), root first, in
    fixed windows of ``branching[0]`` tokens, ``branching[1]`` windows,
    ...: one root above the last level. Every width must be an integer
    >= 1.

    Examples:
        >>> window_path(17, (4, 4))
        [0, 1, 4]
    """
    t = check_int(t, 't', minimum=0)
    wanted = "'branching' must be a sequence of integers >= 1 (the window " \
        "widths, finest first"
    if isinstance(branching, str) or not isinstance(
            branching, (Sequence, np.ndarray)):
        raise TypeError(f"{wanted}; got {describe(branching)})")
    widths = list(branching)
    if not all(isinstance(width, numbers.Integral) and not isinstance(
            width, (bool, np.bool_)) for width in widths):
        raise TypeError(f"{wanted}; got {widths})")
    if not all(width >= 1 for width in widths):
        raise ValueError(f"{wanted}; got {widths})")
    path, size = [], 1
    for width in widths:
        size *= int(width)
        path.append(t // size)
    return [0] + path[::-1]
