r""":func:`~pyg_hsa.hsa_attention` under :func:`torch.compile`.

The dynamic program's Python-side structure (levels, buckets, family
widths) differs from tree to tree, so a traced graph of it would have to be
rebuilt for every new batch. Instead, under compilation the whole attention
is one custom operator, ``pyg_hsa::hsa``, opaque to the compiler: the graph
holds the projections around it and a call into the eager kernels, and a
new tree of the same kind reuses the graph (only the tensors' sizes change,
which dynamic shapes absorb).

A :class:`~pyg_hsa.Tree` reaches the operator as what defines it: its
parent vector (and the number of leaves, the rows of ``q``). The operator
finds the tree it rebuilt from that tensor before (:func:`tree_of`, keyed
by the tensor object and held only while it lives, so its plans are built
once per batch), or rebuilds it. The parent vector is an input of the
operator, so autograd keeps it for the backward pass: a training loop may
drop its batches (and trees) before calling backward, over any number of
micro-batches.

When a backward pass can follow (grad mode on and an input that requires
grad, decided when the graph is traced), the operator runs the eager
kernels under autograd and keeps that graph, under a number it returns as
a second output, for its backward operator, which differentiates it
without computing the forward pass again. The latest
:data:`KEEP_GRAPHS` graphs are kept; the backward pass of an older call
(gradient accumulation over more micro-batches than that) recomputes its
forward pass, which is exact too: dropout draws its masks from a seed the
compiled graph passes to both. Under ``no_grad``/``inference_mode``
nothing is kept.
"""
import collections
import contextlib
import itertools
import weakref
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from pyg_hsa.topology import depth_by_pointer_jumping
from pyg_hsa.tree import Tree

# Autograd graphs of the latest forward calls, by number: (output, leaves).
KEEP_GRAPHS = 32
_GRAPHS: 'collections.OrderedDict[int, tuple]' = collections.OrderedDict()
_NUMBERS = itertools.count(1)

# id(parent tensor) -> (a weak reference to it, the tree rebuilt from it).
_TREES: Dict[int, Tuple[weakref.ref, Tree]] = {}


def tree_of(parent: Tensor, num_leaves: int) -> Tree:
    """The :class:`~pyg_hsa.Tree` of a parent vector that came from a
    validated tree: rebuilt once per tensor object (the graph passes the
    same object on every call of its batch and to its backward pass)."""
    key = id(parent)
    entry = _TREES.get(key)
    if entry is not None and entry[0]() is parent and \
            entry[1].num_leaves == num_leaves:
        return entry[1]

    def forget(ref, key=key):
        if _TREES.get(key, (None, ))[0] is ref:
            del _TREES[key]

    # (The tree holds an alias, not the key object, which may then go.)
    alias = parent.detach()
    tree = Tree(alias, num_leaves, depth_by_pointer_jumping(alias))
    _TREES[key] = (weakref.ref(parent, forget), tree)
    return tree


def compiled_attention(tree: Tree, q: Tensor, k: Tensor, v: Tensor,
                       pe: Optional[Tensor], scale, self_loops: bool,
                       dropout: float, query: bool = False,
                       causal: bool = False) -> Tensor:
    """The custom operator's call, traced by the compiler in place of the
    dynamic program."""
    tensor_scale = scale if isinstance(scale, Tensor) else None
    scale = 0.0 if tensor_scale is not None else float(scale)
    seed = torch.randint(1, 2**62, (), dtype=torch.long) if dropout > 0 \
        else None
    keep = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, pe,
                                                    tensor_scale))
    return hsa(tree.parent, q, k, v, pe, tensor_scale, scale, self_loops,
               dropout, seed, query, causal, keep)[0]


def _eager(parent, q, k, v, pe, tensor_scale, scale, self_loops, dropout,
           seed, query, causal):
    from pyg_hsa.functional.attention import attend
    return attend(tree_of(parent, q.size(0)), q, k, v, pe,
                  tensor_scale if tensor_scale is not None else scale,
                  self_loops, dropout,
                  seed=None if seed is None else int(seed), query=query,
                  causal=causal)


@torch.library.custom_op('pyg_hsa::hsa', mutates_args=())
def hsa(parent: Tensor, q: Tensor, k: Tensor, v: Tensor,
        pe: Optional[Tensor], tensor_scale: Optional[Tensor], scale: float,
        self_loops: bool, dropout: float, seed: Optional[Tensor],
        query: bool, causal: bool, keep: bool) -> Tuple[Tensor, Tensor]:
    """The output, and the number its autograd graph is kept under (0 when
    nothing is kept)."""
    options = (scale, self_loops, dropout, seed, query, causal)
    if not keep:
        return (_own(_eager(parent, q, k, v, pe, tensor_scale, *options)),
                torch.zeros((), dtype=torch.long))
    with _autograd_inside_operator(), torch.enable_grad():
        leaves = [None if x is None else x.detach().requires_grad_()
                  for x in (q, k, v, pe, tensor_scale)]
        out = _eager(parent, *leaves, *options)
    number = next(_NUMBERS)
    _GRAPHS[number] = (out, leaves)
    while len(_GRAPHS) > KEEP_GRAPHS:
        _GRAPHS.popitem(last=False)
    return _own(out.detach()), torch.tensor(number)


@hsa.register_fake
def _(parent, q, k, v, pe, tensor_scale, scale, self_loops, dropout, seed,
      query, causal, keep):
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype),
                                v.dtype)
    return (v.new_empty(v.shape, dtype=dtype),
            torch.empty((), dtype=torch.long, device='cpu'))


@torch.library.custom_op('pyg_hsa::hsa_backward', mutates_args=())
def hsa_backward(parent: Tensor, q: Tensor, k: Tensor, v: Tensor,
                 pe: Optional[Tensor], tensor_scale: Optional[Tensor],
                 scale: float, self_loops: bool, dropout: float,
                 seed: Optional[Tensor], query: bool, causal: bool,
                 number: Tensor, grad: Tensor) -> List[Tensor]:
    inputs = [q, k, v, pe, tensor_scale]
    with _autograd_inside_operator(), torch.enable_grad():
        kept = _GRAPHS.pop(int(number), None)
        if kept is None:  # not kept, or older than KEEP_GRAPHS: recompute
            leaves = [None if x is None else x.detach().requires_grad_()
                      for x in inputs]
            out = _eager(parent, *leaves, scale, self_loops, dropout, seed,
                         query, causal)
        else:
            out, leaves = kept
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
def _(parent, q, k, v, pe, tensor_scale, scale, self_loops, dropout, seed,
      query, causal, number, grad):
    return [x.new_empty(x.shape) if x is not None else q.new_empty(0)
            for x in (q, k, v, pe, tensor_scale)]


def _setup_context(ctx, inputs, output):
    (parent, q, k, v, pe, tensor_scale, scale, self_loops, dropout, seed,
     query, causal, keep) = inputs
    ctx.save_for_backward(parent, q, k, v, pe, tensor_scale, seed, output[1])
    ctx.options = (scale, self_loops, dropout, query, causal)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad, _):
    parent, q, k, v, pe, tensor_scale, seed, number = ctx.saved_tensors
    scale, self_loops, dropout, query, causal = ctx.options
    dq, dk, dv, dpe, dscale = hsa_backward(parent, q, k, v, pe,
                                           tensor_scale, scale, self_loops,
                                           dropout, seed, query, causal,
                                           number, grad)
    return (None, dq, dk, dv, None if pe is None else dpe,
            None if tensor_scale is None else dscale, None, None, None, None,
            None, None, None)


hsa.register_autograd(_backward, setup_context=_setup_context)
