r"""Per-tree plans, built on first use and cached beside the tree.

Everything the attention kernels need that depends only on the tree (index
tensors, masks, sparse sum matrices) is a *plan*. A plan is built once per
:class:`~pyg_hsa.Tree` and key (e.g. ``('query tiles', causal,
self_loops)``) and reused by every layer, head and call. The cache holds
the tree weakly: plans go when the tree goes, and :class:`~pyg_hsa.Tree`
itself stays plain data.
"""
import weakref
from typing import Callable, Hashable, TypeVar

Plan = TypeVar('Plan')

_PLANS: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()


def cached_plan(tree, key: Hashable, build: Callable[[], Plan]) -> Plan:
    """The plan of :obj:`tree` under :obj:`key`, from :obj:`build()` on
    first use (a plan may be :obj:`None`: "this kernel does not apply")."""
    plans = _PLANS.setdefault(tree, {})
    if key not in plans:
        plans[key] = build()
    return plans[key]
