r""":func:`~pyg_hsa.hsa_attention` under :func:`torch.compile`.

The dynamic program's Python-side structure (levels, buckets, family
widths) differs from tree to tree, so a traced graph of it would have to be
rebuilt for every new batch. Instead, under compilation the whole attention
is one custom operator, ``pyg_hsa::hsa``, opaque to the compiler: the graph
holds the projections around it and a call into the eager dynamic program,
and a new tree of the same kind reuses the graph (only the tensors' sizes
change, which dynamic shapes absorb).

A :class:`~pyg_hsa.Tree` reaches the operator as a handle: a one-element
tensor with its number in a registry of live trees (weakly referenced, so a
tree is freed as usual). The compiled graph keeps only the handle, while a
training loop typically drops its batch (and tree) between the forward
and the backward pass, so the operator also holds the trees of its last
:data:`KEEP_RECENT_TREES` calls that a backward pass can follow (grad mode
on and an input requiring grad, decided when the graph is traced; none
under ``no_grad`` or ``inference_mode``). The backward operator recomputes the
forward pass with autograd and differentiates it; dropout draws its masks
from a seed the compiled graph passes to both, so they agree.
"""
import collections
import contextlib
import itertools
import weakref
from typing import Iterator, List, Optional

import torch
from torch import Tensor

_TREES: 'weakref.WeakValueDictionary[int, object]' = \
    weakref.WeakValueDictionary()
_NUMBERS = itertools.count(1)
# Trees of the latest forward calls, kept alive for their backward passes
# (gradient accumulation over up to this many batches).
KEEP_RECENT_TREES = 16
_RECENT: 'collections.OrderedDict[int, object]' = collections.OrderedDict()


def register(tree) -> Tensor:
    """A new handle for :obj:`tree` (a CPU int64 tensor)."""
    number = next(_NUMBERS)
    _TREES[number] = tree
    return torch.tensor(number, dtype=torch.long)


def _tree(handle: Tensor, keep: bool = False):
    number = int(handle)
    tree = _TREES.get(number)
    if tree is None:
        raise RuntimeError(
            f'pyg_hsa: the Tree of this compiled call was freed before its '
            f'backward pass (more than {KEEP_RECENT_TREES} newer trees went '
            f'through compiled HSA in between, e.g. gradient accumulation '
            f'over more than {KEEP_RECENT_TREES} micro-batches). Either keep '
            f'a reference to every micro-batch\'s Tree (or batch) until the '
            f'backward pass, call backward() per micro-batch, or raise '
            f'pyg_hsa.functional.compiled.KEEP_RECENT_TREES')
    if keep:
        _RECENT[number] = tree
        _RECENT.move_to_end(number)
        while len(_RECENT) > KEEP_RECENT_TREES:
            _RECENT.popitem(last=False)
    return tree


def compiled_attention(tree, q: Tensor, k: Tensor, v: Tensor,
                       pe: Optional[Tensor], scale, self_loops: bool,
                       dropout: float, query: bool = False,
                       causal: bool = False) -> Tensor:
    """The custom operator's call, traced by the compiler in place of the
    dynamic program."""
    tensor_scale = scale if isinstance(scale, Tensor) else None
    value = 0.0 if tensor_scale is not None else float(scale)
    seed = torch.randint(1, 2**62, (), dtype=torch.long) if dropout > 0 \
        else None
    # Keep the tree only when a backward pass can follow (the compiler
    # guards on grad mode and on which inputs require grad).
    keep = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, pe,
                                                    tensor_scale))
    return hsa(tree._handle, q, k, v, pe, tensor_scale, value, self_loops,
               dropout, seed, query, causal, keep)


def _eager(handle, q, k, v, pe, tensor_scale, value, self_loops, dropout,
           seed, query, causal, keep=False):
    from pyg_hsa.functional.attention import attend
    scale = tensor_scale if tensor_scale is not None else value
    return attend(_tree(handle, keep), q, k, v, pe, scale, self_loops,
                  dropout, seed=None if seed is None else int(seed),
                  query=query, causal=causal)


@torch.library.custom_op('pyg_hsa::hsa', mutates_args=())
def hsa(handle: Tensor, q: Tensor, k: Tensor, v: Tensor,
        pe: Optional[Tensor], tensor_scale: Optional[Tensor], value: float,
        self_loops: bool, dropout: float, seed: Optional[Tensor],
        query: bool, causal: bool, keep: bool) -> Tensor:
    return _own(_eager(handle, q, k, v, pe, tensor_scale, value,
                       self_loops, dropout, seed, query, causal, keep=keep))


@hsa.register_fake
def _(handle, q, k, v, pe, tensor_scale, value, self_loops, dropout, seed,
      query, causal, keep):
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype),
                                v.dtype)
    return v.new_empty(v.shape, dtype=dtype)


@torch.library.custom_op('pyg_hsa::hsa_backward', mutates_args=())
def hsa_backward(handle: Tensor, q: Tensor, k: Tensor, v: Tensor,
                 pe: Optional[Tensor], tensor_scale: Optional[Tensor],
                 value: float, self_loops: bool, dropout: float,
                 seed: Optional[Tensor], query: bool, causal: bool,
                 grad: Tensor) -> List[Tensor]:
    inputs = [q, k, v, pe, tensor_scale]
    with _autograd_inside_operator(), torch.enable_grad():
        leaves = [None if x is None else x.detach().requires_grad_()
                  for x in inputs]
        out = _eager(handle, *leaves, value, self_loops, dropout, seed,
                     query, causal)
        wanted = [x for x in leaves if x is not None]
        found = iter(torch.autograd.grad(out, wanted, grad))
    # (Absent inputs get empty gradients: an operator returns tensors; and
    # its outputs may not be views of one another, as the leaves' gradients
    # of the tree sums can be.)
    return [_own(next(found)) if x is not None else q.new_empty(0)
            for x in leaves]


def _own(x: Tensor) -> Tensor:
    """A contiguous tensor of its own (as the fake kernel promises)."""
    x = x.contiguous()
    return x.clone() if x._base is not None else x


_AUTOGRAD_KEYS = [getattr(torch._C.DispatchKey, name) for name in (
    'AutogradFunctionality', 'AutogradOther', 'AutogradNestedTensor',
    'ADInplaceOrView') if hasattr(torch._C.DispatchKey, name)]


@contextlib.contextmanager
def _autograd_inside_operator() -> Iterator[None]:
    """A custom operator's kernel runs with autograd's dispatch keys
    excluded, so plain operations would not be recorded; the recomputation
    needs them, so they are let back in for its duration."""
    before = [torch._C._dispatch_tls_is_dispatch_key_excluded(key)
              for key in _AUTOGRAD_KEYS]
    for key in _AUTOGRAD_KEYS:
        torch._C._dispatch_tls_set_dispatch_key_excluded(key, False)
    try:
        yield
    finally:
        for key, excluded in zip(_AUTOGRAD_KEYS, before):
            torch._C._dispatch_tls_set_dispatch_key_excluded(key, excluded)


@hsa_backward.register_fake
def _(handle, q, k, v, pe, tensor_scale, value, self_loops, dropout, seed,
      query, causal, grad):
    return [x.new_empty(x.shape) if x is not None else q.new_empty(0)
            for x in (q, k, v, pe, tensor_scale)]


def _setup_context(ctx, inputs, output):
    (handle, q, k, v, pe, tensor_scale, value, self_loops, dropout, seed,
     query, causal, keep) = inputs
    ctx.save_for_backward(handle, q, k, v, pe, tensor_scale, seed)
    ctx.options = (value, self_loops, dropout, query, causal)


def _backward(ctx, grad):
    handle, q, k, v, pe, tensor_scale, seed = ctx.saved_tensors
    value, self_loops, dropout, query, causal = ctx.options
    dq, dk, dv, dpe, dscale = hsa_backward(handle, q, k, v, pe,
                                            tensor_scale, value, self_loops,
                                            dropout, seed, query, causal,
                                            grad)
    return (None, dq, dk, dv, None if pe is None else dpe,
            None if tensor_scale is None else dscale, None, None, None, None,
            None, None, None)


hsa.register_autograd(_backward, setup_context=_setup_context)
