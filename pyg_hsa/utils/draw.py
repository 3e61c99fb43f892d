from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch_geometric.data import HeteroData

from pyg_hsa.tree import NESTING_RELATION, Tree


def draw_hierarchy(
    data: HeteroData,
    color_by: Optional[str] = None,
    max_leaf_edges: int = 5000,
    title: Optional[str] = None,
    figsize: Optional[Tuple[float, float]] = None,
):
    r"""Draws a hierarchy (the output of a transform, or any
    :class:`~torch_geometric.data.HeteroData` in the package's schema) as a
    matplotlib figure, so you can look at what a transform made.

    The left panel is the tree: leaves on the bottom row, in depth-first
    order so every family is contiguous, each node type on its own row
    (a type sits one row above the highest type nested in it), node types
    coloured, nesting edges grey, and the other relations between leaves
    (bonds, mesh or kNN edges) as faint arcs under the leaf row. When the
    leaves have a :obj:`pos`, a right panel shows them in space (projected
    on their two principal axes, leaf edges faint), coloured by their
    ancestor of type :obj:`color_by` (default: the lowest internal type).

    Args:
        data (HeteroData): one hierarchy (or a batch of them).
        color_by (str, optional): internal node type whose groups colour
            the spatial panel.
        max_leaf_edges (int, optional): draw at most this many leaf edges
            (an even subsample beyond). (default: :obj:`5000`)
        title (str, optional): figure title.
        figsize (tuple, optional): figure size in inches.

    Returns:
        matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    if not isinstance(data, HeteroData):
        raise TypeError(f"'data' must be a HeteroData hierarchy (got "
                        f"{type(data).__name__})")
    tree = Tree.from_hetero(data)
    # Checked even when there is no spatial panel to colour: a typo should
    # not pass silently on data without positions.
    color_by = _check_color_by(tree, color_by)
    parent = tree.parent.cpu()
    row_of_type = _type_rows(data, tree)
    x = _tree_layout(parent, tree.num_leaves)
    y = np.zeros(parent.numel())
    for nt, (lo, hi) in tree.node_slices.items():
        y[lo:hi] = row_of_type[nt]

    leaf_pos = None
    if len(tree.leaf_types) == 1 and 'pos' in data[tree.leaf_types[0]]:
        leaf_pos = data[tree.leaf_types[0]].pos.detach().cpu().float()
    spatial = leaf_pos is not None and leaf_pos.size(-1) >= 2
    if figsize is None:
        figsize = (13, 4.8) if spatial else (9, 4.8)
    fig, axes = plt.subplots(1, 2 if spatial else 1, figsize=figsize,
                             squeeze=False, gridspec_kw=dict(
                                 width_ratios=[1.5, 1] if spatial else [1]))
    ax = axes[0, 0]

    # Nesting edges.
    child = (parent >= 0).nonzero().view(-1)
    segments = np.stack([
        np.stack([x[child], y[child]], -1),
        np.stack([x[parent[child]], y[parent[child]]], -1)
    ], 1)
    ax.add_collection(LineCollection(segments, colors='0.6',
                                     linewidths=0.5, zorder=1))
    _leaf_arcs(ax, data, tree, x, max_leaf_edges)

    colors = _type_colors(tree.node_slices)
    many = tree.num_leaves > 300
    for nt, (lo, hi) in tree.node_slices.items():
        if hi == lo:
            continue
        ax.scatter(x[lo:hi], y[lo:hi], s=6 if many and nt in
                   tree.leaf_types else 28, color=colors[nt], zorder=2,
                   label=f'{nt} ({hi - lo})', linewidths=0)
    ax.set_yticks(sorted(set(row_of_type.values())))
    ax.set_yticklabels([
        ' / '.join(nt for nt, r in row_of_type.items() if r == row)
        for row in sorted(set(row_of_type.values()))
    ])
    ax.set_xticks([])
    ax.set_ylim(-1.0, max(row_of_type.values()) + 0.5)
    ax.set_xlim(-0.02 * tree.num_leaves - 1, 1.02 * tree.num_leaves)
    for side in ('top', 'right', 'bottom'):
        ax.spines[side].set_visible(False)
    ax.legend(loc='upper left', fontsize=8, frameon=False,
              bbox_to_anchor=(1.0, 1.0) if not spatial else (0.0, 1.0))

    if spatial:
        _spatial_panel(axes[0, 1], data, tree, parent, leaf_pos, color_by)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _type_rows(data: HeteroData, tree: Tree) -> Dict[str, int]:
    """Leaf types on row 0; every other type one row above the highest type
    nested in it."""
    row = {nt: 0 for nt in tree.node_slices}
    nested = [(src, dst) for src, rel, dst in data.edge_types
              if rel == NESTING_RELATION]
    for _ in range(len(row)):  # longest-path relaxation over the type DAG
        for src, dst in nested:
            row[dst] = max(row[dst], row[src] + 1)
    return row


def _tree_layout(parent: torch.Tensor, num_leaves: int) -> np.ndarray:
    """Leaves at ``x = 0, 1, ...`` in depth-first order (sorted by their
    ancestors from the root down, so every family is contiguous); an
    internal node at the mean ``x`` of its leaves."""
    parent_np = parent.numpy()
    # Bottom-up ancestor chains, -1 past the root: one column per level.
    chains = [np.arange(num_leaves)]
    while (chains[-1] >= 0).any():
        node = chains[-1]
        chains.append(np.where(node >= 0, parent_np[np.maximum(node, 0)],
                               -1))
    bottom_up = np.stack(chains[:-1], 1)  # [L, D + 1]
    depth = (bottom_up >= 0).sum(1) - 1
    # Top-down: column j is the ancestor at depth j (-1 below the leaf),
    # so equal keys at column j mean the same subtree.
    level = np.arange(bottom_up.shape[1])
    source = depth[:, None] - level[None, :]
    top_down = np.where(
        source >= 0,
        np.take_along_axis(bottom_up, np.maximum(source, 0), 1), -1)
    order = np.lexsort(top_down.T[::-1])
    x = np.zeros(parent.numel())
    x[order] = np.arange(num_leaves)
    internal = np.arange(num_leaves, parent.numel())
    _accumulate_ancestors(parent_np, num_leaves, x, internal)
    return x


def _accumulate_ancestors(parent: np.ndarray, num_leaves: int,
                          x: np.ndarray, internal: np.ndarray) -> None:
    """``x[a]`` = mean x of the leaves under ``a``, one pass per level."""
    num_nodes = parent.size
    total = np.zeros(num_nodes)
    count = np.zeros(num_nodes)
    node = np.arange(num_leaves)
    value = x[:num_leaves].copy()
    while node.size:
        up = parent[node]
        keep = up >= 0
        node, value = up[keep], value[keep]
        np.add.at(total, node, value)
        np.add.at(count, node, 1)
    has = count[internal] > 0
    x[internal[has]] = total[internal[has]] / count[internal[has]]


def _type_colors(node_slices) -> Dict[str, tuple]:
    import matplotlib
    palette = matplotlib.colormaps['tab10']
    return {nt: palette(i % 10) for i, nt in enumerate(node_slices)}


def _leaf_arcs(ax, data: HeteroData, tree: Tree, x: np.ndarray,
               max_edges: int) -> None:
    """Relations between leaves as faint half-ellipses under the leaves."""
    from matplotlib.collections import LineCollection
    arcs = []
    for src, rel, dst in data.edge_types:
        if rel == NESTING_RELATION or src not in tree.leaf_types or \
                dst not in tree.leaf_types:
            continue
        edge_index = data[src, rel, dst].edge_index.cpu()
        u = edge_index[0] + tree.node_slices[src][0]
        v = edge_index[1] + tree.node_slices[dst][0]
        keep = u < v  # draw undirected edges once
        arcs.append((x[u[keep]], x[v[keep]]))
    if not arcs:
        return
    start = np.concatenate([a for a, _ in arcs])
    end = np.concatenate([b for _, b in arcs])
    if start.size > max_edges:
        pick = np.linspace(0, start.size - 1, max_edges).astype(int)
        start, end = start[pick], end[pick]
    t = np.linspace(0, np.pi, 16)
    mid, half = (start + end) / 2, (end - start) / 2
    depth = 0.9 * np.sqrt(np.abs(half) / max(tree.num_leaves, 1))
    curve_x = mid[:, None] - half[:, None] * np.cos(t)[None]
    curve_y = -depth[:, None] * np.sin(t)[None]
    lines = np.stack([curve_x, curve_y], -1)
    ax.add_collection(LineCollection(lines, colors='tab:blue', alpha=0.15,
                                     linewidths=0.5, zorder=0))


def _principal_plane(pos: torch.Tensor) -> torch.Tensor:
    """Positions projected on their two principal axes: a flat view that
    shows the widest spread of any point set."""
    centred = pos - pos.mean(0)
    if centred.size(-1) == 2:
        return centred
    _, _, basis = torch.linalg.svd(centred, full_matrices=False)
    return centred @ basis[:2].t()


def _check_color_by(tree: Tree, color_by: Optional[str]) -> str:
    """The internal node type that colours the spatial panel (default:
    the lowest one)."""
    internal = [nt for nt in tree.node_slices if nt not in tree.leaf_types]
    if color_by is None:
        return internal[0]
    if not isinstance(color_by, str) or color_by not in internal:
        raise ValueError(f"'color_by' must be an internal node type, one of "
                         f"{internal} (got {color_by!r})")
    return color_by


def _spatial_panel(ax, data: HeteroData, tree: Tree, parent: torch.Tensor,
                   pos: torch.Tensor, color_by: str) -> None:
    from matplotlib.collections import LineCollection
    lo, hi = tree.node_slices[color_by]
    group = torch.full((tree.num_leaves, ), -1, dtype=torch.long)
    node = torch.arange(tree.num_leaves)
    while bool((node >= 0).any()):  # one step per depth level
        found = (node >= lo) & (node < hi) & (group < 0)
        group[found] = node[found] - lo
        node = torch.where(node >= 0, parent[node.clamp(min=0)], node)
    screen = _principal_plane(pos)
    for src, rel, dst in data.edge_types:  # leaf relations, faint
        if rel != NESTING_RELATION and src == dst == tree.leaf_types[0]:
            u, v = data[src, rel, dst].edge_index.cpu()
            segments = torch.stack([screen[u], screen[v]], 1)
            ax.add_collection(LineCollection(
                segments.numpy(), colors='0.5', alpha=0.15,
                linewidths=0.4, zorder=0))
    # Shuffled colours so neighbouring groups differ.
    rng = np.random.default_rng(0)
    shade = rng.permutation(max(hi - lo, 1))[group.clamp(min=0).numpy()]
    size = float(np.clip(4000 / max(tree.num_leaves, 1), 1, 30))
    ax.scatter(screen[:, 0], screen[:, 1], c=shade, cmap='tab20', s=size,
               linewidths=0)
    ax.set_title(f"leaves coloured by '{color_by}' ({hi - lo} groups)",
                 fontsize=9)
    ax.set_aspect('equal')
    ax.axis('off')
