r"""Tree arithmetic on parent vectors, in one place: validation (every
message names the node), roots, depths, children counts, the leaves below
every node and ancestors. :class:`~pyg_hsa.Tree` and the kernels in
:mod:`pyg_hsa.functional` build on these; nothing here imports either."""
import operator
from typing import Optional, Tuple

import torch
from torch import Tensor


def validate_parent(parent: Tensor, num_leaves: Optional[int],
                    describe) -> Tuple[Tensor, int, Tensor]:
    """Checks a parent vector (``describe(i)`` names node ``i`` in
    messages) and returns it as a LongTensor, the number of leaves and the
    depth of every node."""
    if not isinstance(parent, Tensor):
        raise TypeError(f"'parent' must be a LongTensor "
                        f"(got {type(parent).__name__})")
    if parent.dim() != 1:
        raise ValueError(f"'parent' must be one-dimensional "
                         f"(got shape {tuple(parent.shape)})")
    if parent.dtype.is_floating_point or parent.dtype == torch.bool \
            or parent.is_complex():
        raise TypeError(f"'parent' must be an integer tensor "
                        f"(got {parent.dtype})")
    if num_leaves is not None:
        try:
            num_leaves = operator.index(num_leaves)
        except TypeError:
            raise TypeError(f"'num_leaves' must be an int (got "
                            f"{type(num_leaves).__name__})") from None
    parent = parent.long()
    num_nodes = parent.numel()
    if num_nodes == 0:
        raise ValueError("The hierarchy is empty (it has no nodes)")
    device = parent.device
    if num_leaves is not None and num_leaves > num_nodes:
        raise ValueError(f"'parent' has {num_nodes} entries, fewer than "
                         f"the {num_leaves} leaves; it needs one entry "
                         f"per leaf and per internal node")

    bad = (parent < -1) | (parent >= num_nodes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"The parent of {describe(i)} is "
                         f"{int(parent[i])}; expected -1 (a root) or a "
                         f"node index in [0, {num_nodes})")
    arange = torch.arange(num_nodes, device=device)
    own = parent == arange
    if bool(own.any()):
        node = describe(int(own.nonzero()[0]))
        raise ValueError(f"{capitalize(node)} is its own parent")

    childless = num_children(parent) == 0
    if num_leaves is None:
        num_leaves = int(childless.long().cumprod(0).sum())
        if num_leaves == 0:
            raise ValueError(f"Leaves must come first, but "
                             f"{describe(0)} has children")
    elif num_leaves < 1:
        raise ValueError(f"'num_leaves' must be positive "
                         f"(got {num_leaves})")
    if bool((~childless[:num_leaves]).any()):
        i = int((~childless[:num_leaves]).nonzero()[0])
        c = int((parent == i).nonzero()[0])
        raise ValueError(f"Leaves cannot have children, but leaf "
                         f"{describe(i)} is the parent of {describe(c)}")
    if bool(childless[num_leaves:].any()):
        i = num_leaves + int(childless[num_leaves:].nonzero()[0])
        raise ValueError(f"Internal {describe(i)} has no children; "
                         f"every group needs at least one leaf below it "
                         f"(leaves are nodes 0..{num_leaves - 1})")
    return parent, num_leaves, depth_by_pointer_jumping(parent, describe)


def roots_of(parent: Tensor) -> Tensor:
    """The root above every node of a forest, by pointer jumping."""
    root = torch.where(parent >= 0, parent, torch.arange(
        parent.numel(), device=parent.device))
    while True:
        higher = root[root]
        if bool((higher == root).all()):
            return root
        root = higher


def depth_by_pointer_jumping(parent: Tensor, describe=None) -> Tensor:
    """Depth of every node of a forest in ``O(M log depth)``; raises a
    :class:`ValueError` on cycles, naming the node with ``describe``."""
    num_nodes = parent.numel()
    jump = parent.clone()
    depth = (parent >= 0).long()
    # After k rounds ``jump`` points 2**k levels up; a node that still has a
    # target after ceil(log2(M)) + 1 rounds lies on or above a cycle.
    for _ in range(max(1, num_nodes.bit_length()) + 1):
        active = jump >= 0
        if not bool(active.any()):
            return depth
        target = jump.clamp(min=0)
        depth = torch.where(active, depth + depth[target], depth)
        jump = torch.where(active, jump[target], jump)
    # ``jump`` now points more than M steps up, which only a node on a
    # cycle can be reached by.
    on_cycle = int(jump[int((jump >= 0).nonzero()[0])])
    describe = describe or describe_global
    raise ValueError(f"The nesting contains a cycle: {describe(on_cycle)} "
                     f"is its own ancestor")


def num_children(parent: Tensor) -> Tensor:
    """The number of children of every node."""
    return torch.bincount(parent[parent >= 0], minlength=parent.numel())


def leaf_paths(parent: Tensor, num_leaves: int) -> Tuple[Tensor, Tensor]:
    """Every leaf with every node on its path to its root (itself
    included), as two aligned vectors ``(leaf, node)``: first each leaf
    with itself, then with its parent, and so on (leaves in order)."""
    leaves, nodes = [], []
    node = torch.arange(num_leaves, device=parent.device)
    leaf = node
    while node.numel():
        leaves.append(leaf)
        nodes.append(node)
        node = parent[node]
        up = node >= 0
        leaf, node = leaf[up], node[up]
    return torch.cat(leaves), torch.cat(nodes)


def leaves_below(parent: Tensor, num_leaves: int) -> Tensor:
    """The number of leaves below every node (1 for a leaf)."""
    return torch.bincount(leaf_paths(parent, num_leaves)[1],
                          minlength=parent.numel())


def ancestors(parent: Tensor) -> Tensor:
    """``[T, M]``: the ``t``-th ancestor of every node (the node itself at
    ``t = 0``, ``-1`` above its root), for ``T`` = the depth + 1 (quadratic
    callers only: it holds a row per level)."""
    rows = [torch.arange(parent.numel(), device=parent.device)]
    while bool((rows[-1] >= 0).any()):
        a = rows[-1]
        rows.append(torch.where(a >= 0, parent[a.clamp(min=0)], -1))
    return torch.stack(rows[:-1])


def describe_global(node: int) -> str:
    return f'node {node}'


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def is_uniform(parent: Tensor, num_leaves: int) -> bool:
    """Whether all leaves lie at one depth and, at every depth, all internal
    nodes have as many children (a complete tree, windows over a
    sequence): the level-by-level kernels then read every level as a
    strided view."""
    depth = depth_by_pointer_jumping(parent)
    if not bool((depth[:num_leaves] == depth[0]).all()):
        return False
    has_parent = parent >= 0
    internal = torch.zeros_like(has_parent)
    internal[parent[has_parent]] = True
    children = torch.bincount(parent[has_parent], minlength=parent.numel())
    level = depth[internal]
    low = torch.full((int(depth.max()) + 1, ), parent.numel(),
                     device=parent.device)
    low = low.scatter_reduce(0, level, children[internal], 'amin')
    high = torch.zeros_like(low).scatter_reduce(0, level, children[internal],
                                                'amax')
    return bool((low[level] == high[level]).all())
