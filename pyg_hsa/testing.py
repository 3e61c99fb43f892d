r"""Helpers shared by the tests and the benchmarks, as
:mod:`torch_geometric.testing` is for PyG: random hierarchies in the
library's numbering, random queries, keys and values, and oracles for
:func:`~pyg_hsa.hsa_attention` (the dense output of an attention matrix,
a brute-force minimisation of the KL objective).

Reference code: Python loops are fine here, nothing in :mod:`pyg_hsa`
imports this module, and :obj:`scipy` is imported only by
:func:`brute_force_theta`.
"""
import math
from typing import List, Optional, Tuple

import numpy as np
import torch

__all__ = [
    'random_forest',
    'relabel',
    'nested_to_forest',
    'random_qkv',
    'dense_output',
    'renumber',
    'root_paths',
    'brute_force_theta',
    'count_aten_ops',
]


def random_forest(rng: np.random.Generator, max_depth: int = 4,
                  max_branch: int = 4, num_roots: int = 1,
                  max_leaves: int = 48, unary_prob: float = 0.15,
                  leaf_prob: float = 0.25) -> Tuple[torch.Tensor, int]:
    """A random forest as ``(parent, num_leaves)`` in the library's
    numbering (leaves first), with shuffled node ids."""
    parents: List[int] = []  # creation order, -1 for roots
    is_leaf: List[bool] = []
    budget = [max_leaves]

    def grow(par: int, depth: int):
        node = len(parents)
        parents.append(par)
        stop = depth >= max_depth or budget[0] <= 1 or (
            depth > 0 and rng.random() < leaf_prob)
        if stop:
            is_leaf.append(True)
            budget[0] -= 1
            return
        is_leaf.append(False)
        if rng.random() < unary_prob:
            num_children = 1
        else:
            num_children = int(rng.integers(2, max_branch + 1))
        for _ in range(num_children):
            grow(node, depth + 1)

    for _ in range(num_roots):
        budget[0] = max(budget[0], 2)
        grow(-1, 0)
    return relabel(parents, is_leaf, rng)


def relabel(parents: List[int], is_leaf: List[bool],
            rng: Optional[np.random.Generator]) -> Tuple[torch.Tensor, int]:
    """Leaves get ids ``0..N-1`` and internal nodes ``N..M-1``, each in a
    random order (or in creation order without ``rng``)."""
    leaves = [i for i, leaf in enumerate(is_leaf) if leaf]
    internal = [i for i, leaf in enumerate(is_leaf) if not leaf]
    if rng is not None:
        leaves = list(rng.permutation(leaves))
        internal = list(rng.permutation(internal))
    new = {old: new for new, old in enumerate(leaves + internal)}
    parent = torch.full((len(parents), ), -1, dtype=torch.long)
    for old, par in enumerate(parents):
        if par >= 0:
            parent[new[old]] = new[par]
    return parent, len(leaves)


def nested_to_forest(roots, rng=None) -> Tuple[torch.Tensor, int]:
    """A forest from nested lists: ``'leaf'`` is a leaf, a list is a group
    of its items; ``roots`` is a list of trees."""
    parents, is_leaf = [], []

    def add(item, par):
        node = len(parents)
        parents.append(par)
        is_leaf.append(item == 'leaf')
        if item != 'leaf':
            for child in item:
                add(child, node)

    for root in roots:
        add(root, -1)
    return relabel(parents, is_leaf, rng)


def random_qkv(num_leaves: int, heads: int = 2, channels: int = 3,
               value_channels: int = 4, dtype=torch.float64, seed: int = 0,
               magnitude: float = 1.0):
    """Seeded standard-normal queries, keys (both times
    :obj:`magnitude`) and values, ``[N, H, C]`` each."""
    gen = torch.Generator().manual_seed(seed)
    q = magnitude * torch.randn(num_leaves, heads, channels, generator=gen,
                                dtype=dtype)
    k = magnitude * torch.randn(num_leaves, heads, channels, generator=gen,
                                dtype=dtype)
    v = torch.randn(num_leaves, heads, value_channels, generator=gen,
                    dtype=dtype)
    return q, k, v


def dense_output(theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``out_i = sum_j theta_ij v_j`` per head, as ``[N, H, Cv]``."""
    return torch.einsum('hij,jhc->ihc', theta, v)


def renumber(parent: torch.Tensor, num_leaves: int,
             rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """A random renumbering of the leaves and of the internal nodes (which
    also reorders children inside families): ``(perm, new_parent)`` with
    ``perm[new] = old``."""
    num_nodes = parent.numel()
    leaves = torch.from_numpy(rng.permutation(num_leaves))
    internal = torch.from_numpy(rng.permutation(num_nodes - num_leaves))
    perm = torch.cat([leaves, num_leaves + internal])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(num_nodes)
    new_parent = torch.where(parent[perm] < 0, -1, inv[parent[perm]])
    return perm, new_parent


def root_paths(parent: torch.Tensor, num_leaves: int) -> List[List[int]]:
    """The root-to-leaf path of every leaf."""
    paths = []
    for leaf in range(num_leaves):
        path = [leaf]
        while int(parent[path[-1]]) >= 0:
            path.append(int(parent[path[-1]]))
        paths.append(path[::-1])
    return paths


def brute_force_theta(logits_fn, parent, num_leaves, self_loops,
                      query=False, causal=False):
    """Minimise the KL objective over block-constant stochastic matrices
    (scipy's SLSQP; it knows nothing of the closed forms).

    ``logits_fn(i, j, a, b)`` is the leaf-level logit of leaves ``i, j`` in
    block ``(a, b)``: ``a`` and ``b`` are the children of the leaves' lowest
    common ancestor on their paths. Paper HSA (``query=False``) shares one
    value per block ``(a, b)`` across rows and columns; query-resolved HSA
    one per ``(i, b)``, and ``causal`` keeps only the ``b`` whose first leaf
    is smaller than ``a``'s."""
    from scipy.optimize import minimize

    paths = root_paths(parent, num_leaves)
    first = {}
    for leaf, path in enumerate(paths):
        for node in path:
            first[node] = min(first.get(node, leaf), leaf)
    block_of, logits = {}, np.full((num_leaves, num_leaves), -np.inf)
    for i in range(num_leaves):
        for j in range(num_leaves):
            if i == j:
                if not self_loops:
                    continue
                a = b = i
            else:
                if paths[i][0] != paths[j][0]:
                    continue  # different roots
                d = 0
                while paths[i][d] == paths[j][d]:
                    d += 1
                a, b = paths[i][d], paths[j][d]
                if causal and first[b] > first[a]:
                    continue
            block_of[i, j] = (i, b) if query else (a, b)
            logits[i, j] = logits_fn(i, j, a, b)
    top = logits.max(1, keepdims=True)
    target = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    target /= np.maximum(target.sum(1, keepdims=True), 1e-300)
    blocks = sorted(set(block_of.values()))
    index = {blk: t for t, blk in enumerate(blocks)}
    members = np.zeros((len(blocks), num_leaves, num_leaves))
    for (i, j), blk in block_of.items():
        members[index[blk], i, j] = 1.0

    def theta_of(z):
        return np.einsum('b,bij->ij', np.exp(z), members)

    def objective(z):
        theta = theta_of(z)
        mask = members.sum(0) > 0
        return float((theta[mask] * (np.log(theta[mask]) -
                                     np.log(target[mask]))).sum())

    rows = sorted({i for i, _ in block_of})
    constraints = [{
        'type': 'eq',
        'fun': lambda z, i=i: theta_of(z)[i].sum() - 1.0
    } for i in rows]
    z0 = np.full(len(blocks), -math.log(num_leaves))
    res = minimize(objective, z0, method='SLSQP', constraints=constraints,
                   options={'ftol': 1e-15, 'maxiter': 2000})
    assert res.success, res.message
    return theta_of(res.x)


def count_aten_ops(fn) -> int:
    """The number of aten operations :obj:`fn()` dispatches (views and
    in-place ones included): on a GPU, each is a kernel launch or at least
    a trip through the dispatcher. Counted with a
    :class:`~torch.utils._python_dispatch.TorchDispatchMode`, which sees
    the autograd engine's operations in a backward pass too."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.count += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.count
