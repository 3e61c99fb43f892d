r"""Per-tree plans, built on first use and cached beside the tree (and
the second-derivative rule of the kernels that run them).

Everything the attention kernels need that depends only on the tree (index
tensors, masks, sparse sum matrices) is a *plan*. A plan is built once per
:class:`~pyg_hsa.Tree` and key (e.g. ``('query tiles', causal,
self_loops)``) and reused by every layer, head and call. The cache holds
the tree weakly: plans go when the tree goes, and :class:`~pyg_hsa.Tree`
itself stays plain data.
"""
import warnings
import weakref
from typing import Callable, Hashable, Optional, Sequence, Tuple, TypeVar

import torch
from torch import Tensor

Plan = TypeVar('Plan')

_PLANS: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


def cached_plan(tree, key: Hashable, build: Callable[[], Plan]) -> Plan:
    """The plan of :obj:`tree` under :obj:`key`, from :obj:`build()` on
    first use (a plan may be :obj:`None`: "this kernel does not apply")."""
    plans = _PLANS.setdefault(tree, {})
    if key not in plans:
        plans[key] = build()
    return plans[key]


def grads_of_reference(reference: Callable[..., Tensor],
                       inputs: Sequence[Tensor], grad: Tensor
                       ) -> Tuple[Optional[Tensor], ...]:
    """The gradients of :obj:`reference(*inputs)` (a kernel's forward pass
    in plain autograd operations) against :obj:`grad`, themselves
    differentiable: what a kernel with a hand-written backward pass returns
    under ``create_graph=True``, so that second derivatives are exact."""
    wanted = [x.requires_grad for x in inputs]
    with torch.enable_grad():
        out = reference(*inputs).reshape(grad.shape)
        grads = iter(torch.autograd.grad(
            out, [x for x, w in zip(inputs, wanted) if w], grad,
            create_graph=True, allow_unused=True, materialize_grads=True))
    return tuple(next(grads) if w else None for w in wanted)


def sparse_pair(rows: Tensor, cols: Tensor, values: Tensor,
                shape: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """A constant sparse matrix of a plan (float64, CSR) and its transpose,
    the two a sparse product needs forward and backward."""
    matrix = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values.double(), shape,
        check_invariants=False).coalesce()
    with warnings.catch_warnings():  # "CSR support is in beta state"
        warnings.simplefilter('ignore', UserWarning)
        return (matrix.to_sparse_csr(),
                matrix.t().coalesce().to_sparse_csr())
