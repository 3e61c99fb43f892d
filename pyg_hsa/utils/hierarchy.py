"""Building blocks the transforms share: copying a homogeneous graph onto a
leaf type, adding nesting levels, and position-in-family encodings."""
import math
from typing import Optional

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.utils import scatter

from pyg_hsa.tree import NESTING_RELATION
from pyg_hsa.utils.checks import check_int


def leaf_hetero(data: Data, leaf_type: str, edge_relation: str) -> HeteroData:
    r"""Starts a hierarchy from a homogeneous graph: node-level attributes
    (:obj:`x`, :obj:`pos`, ...) go to :obj:`leaf_type`, :obj:`edge_index`
    and edge-level attributes to :obj:`(leaf_type, edge_relation,
    leaf_type)`, everything else (:obj:`y`, :obj:`smiles`, ...) to the
    graph-level store. Tensors are shared, not copied; :obj:`data` is not
    modified.

    A :obj:`y` whose first dimension equals the number of nodes is a node
    label, unless the graph has a single node: then it is read as a graph
    label, the common case for molecules and clouds.
    """
    if not isinstance(data, Data):
        raise TypeError(f"'data' must be a torch_geometric.data.Data (got "
                        f"{type(data).__name__})")
    num_nodes = count_nodes(data)
    out = HeteroData()
    edge_type = (leaf_type, edge_relation, leaf_type)
    for key, value in data.items():
        if key == 'num_nodes':
            continue  # set on the leaf type below
        if key == 'edge_index':
            out[edge_type].edge_index = value
        elif key == 'y' and (num_nodes or 0) <= 1:
            out[key] = value
        elif data.is_edge_attr(key) and 'edge_index' in data:
            out[edge_type][key] = value
        elif data.is_node_attr(key):
            out[leaf_type][key] = value
        else:
            out[key] = value
    out[leaf_type].num_nodes = num_nodes
    return out


def count_nodes(data: Data) -> int:
    """The number of nodes of :obj:`data`, or a ValueError saying why PyG
    cannot tell it."""
    try:
        num_nodes = data.num_nodes
    except Exception as error:  # PyG indexes sizes of malformed attributes
        raise ValueError(f"Cannot tell the number of nodes of the input "
                         f"({type(error).__name__}: {error}); node-level "
                         f"attributes such as 'x' must have one row per "
                         f"node") from None
    if num_nodes is None:
        raise ValueError("Cannot tell the number of nodes of the input: "
                         "give it 'x' or 'pos', or set 'num_nodes'")
    return int(num_nodes)


def check_input(data: Data, owner: str, noun: str) -> int:
    """The checks every transform makes on its input: a non-empty
    :class:`Data` without a :obj:`pe` of its own. Returns the number of
    nodes."""
    if not isinstance(data, Data):
        raise TypeError(f"{owner} expects a torch_geometric.data.Data (got "
                        f"{type(data).__name__})")
    num_nodes = count_nodes(data)
    if num_nodes == 0:
        raise ValueError(f"{owner} needs at least one {noun} (the input has "
                         f"no nodes)")
    reject_pe(data)
    return num_nodes


def reject_pe(data: Data) -> None:
    """Transforms write :obj:`pe`; refuse to overwrite the user's."""
    if 'pe' in data:
        raise ValueError("The input already has an attribute 'pe', which "
                         "the hierarchy's positions would overwrite; rename "
                         "it")


def data_device(data: Data) -> torch.device:
    """The device of the input's tensors (CPU if it has none)."""
    for value in data.values():
        if isinstance(value, Tensor):
            return value.device
    return torch.device('cpu')


def add_level(out: HeteroData, child_type: str, parent_type: str,
              parent_index: Tensor, num_parents: int) -> None:
    r"""Nests every :obj:`child_type` node ``i`` in :obj:`parent_type` node
    :obj:`parent_index[i]` (edge type :obj:`(child_type, 'in',
    parent_type)`, rows child → parent)."""
    child = torch.arange(parent_index.numel(), device=parent_index.device)
    out[parent_type].num_nodes = int(num_parents)
    out[child_type, NESTING_RELATION, parent_type].edge_index = torch.stack(
        [child, parent_index.long()])


def add_root(out: HeteroData, child_type: str, root_type: str,
             num_leaves: int, device=None) -> None:
    r"""Nests every :obj:`child_type` node in one :obj:`root_type` node, the
    example's root, and stores the number of leaves below it as
    :obj:`out[root_type].num_leaves` ``[1]``.

    The attribute is not only informative: a node type whose store holds
    nothing but :obj:`num_nodes` gets no slices when
    :class:`~torch_geometric.data.InMemoryDataset` collates a dataset (as
    :obj:`pre_transform` does), and indexing the dataset then fails.
    """
    num_children = out[child_type].num_nodes
    add_level(out, child_type, root_type,
              torch.zeros(num_children, dtype=torch.long, device=device), 1)
    out[root_type].num_leaves = torch.tensor([int(num_leaves)],
                                             device=device)


def rank_in_group(group: Tensor, key: Optional[Tensor] = None) -> Tensor:
    r"""The position ``0, 1, ...`` of every element inside its group,
    ordered by :obj:`key` (ties, or no key: by element index).

    Args:
        group (LongTensor): group id of every element, ``[n]``.
        key (Tensor, optional): sort key ``[n]``.
    """
    n = group.numel()
    order = torch.arange(n, device=group.device)
    if key is not None:
        order = torch.sort(key, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    sorted_group = group[order]
    # First sorted position of every group, broadcast to its members.
    is_first = torch.ones(n, dtype=torch.bool, device=group.device)
    is_first[1:] = sorted_group[1:] != sorted_group[:-1]
    start = torch.arange(n, device=group.device)
    start = torch.cummax(torch.where(is_first, start, 0), dim=0).values
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=group.device) - start
    return rank


def first_child(parent: Tensor, num_parents: Optional[int] = None) -> Tensor:
    """For parents ``0 .. P-1`` (``P`` = :obj:`num_parents`, by default
    ``parent.max() + 1``), the index of the first element with that parent:
    the leftmost child when children are in order."""
    if num_parents is None:
        num_parents = int(parent.max()) + 1
    position = torch.arange(parent.numel(), device=parent.device)
    first = torch.full((num_parents, ), parent.numel(), dtype=torch.long,
                       device=parent.device)
    return first.scatter_reduce(0, parent, position, 'amin')


def group_sizes(group: Tensor, num_groups: int) -> Tensor:
    """Number of elements in each of :obj:`num_groups` groups."""
    return torch.bincount(group, minlength=num_groups)[:num_groups]


def check_fourier_channels(value, name: str) -> int:
    """A width for :func:`fourier_encoding`: an even integer >= 2."""
    channels = check_int(value, name, minimum=2)
    if channels % 2:
        raise ValueError(f"'{name}' must be a positive even integer (got "
                         f"{channels})")
    return channels


def fourier_encoding(position: Tensor, channels: int,
                     max_period: float = 10000.0) -> Tensor:
    r"""Sinusoidal features of (integer or real) positions, as in the
    Transformer: ``[sin(p w_j), cos(p w_j)]`` with frequencies
    ``w_j = max_period^(-2j / channels)``.

    Args:
        position (Tensor): positions ``[n]``.
        channels (int): output width, even.
        max_period (float): the longest wavelength.
    """
    if channels <= 0 or channels % 2:
        raise ValueError(f"'channels' must be a positive even number (got "
                         f"{channels})")
    half = channels // 2
    freq = torch.exp(-math.log(max_period) * torch.arange(
        half, dtype=torch.float, device=position.device) / half)
    angle = position.float().unsqueeze(-1) * freq
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


def random_walk_encoding(edge_index: Tensor, num_nodes: int,
                         walk_length: int) -> Tensor:
    r"""Random-walk structural encoding: the probability that a random walk
    from each node is back at it after ``1 .. walk_length`` steps, ``[n,
    walk_length]`` (isolated nodes stay put). Restrict :obj:`edge_index` to
    edges inside a group to encode every node's role in its group; the cost
    grows with the number of nodes each node can reach in
    :obj:`walk_length` steps, so keep groups small or walks short.
    """
    device = edge_index.device
    out = torch.zeros(num_nodes, max(walk_length, 0), device=device)
    if walk_length <= 0 or num_nodes == 0:
        return out
    row, col = edge_index.long()
    deg = torch.bincount(row, minlength=num_nodes)
    loop = (deg == 0).nonzero().view(-1)
    row, col = torch.cat([row, loop]), torch.cat([col, loop])
    order = torch.sort(row, stable=True).indices
    row, col = row[order], col[order]
    deg = torch.bincount(row, minlength=num_nodes)
    ptr = torch.cumsum(deg, 0) - deg
    step_prob = 1.0 / deg.float()
    # The walk distribution of every start node as sparse triples
    # (start, node, probability), advanced one step at a time.
    start = torch.arange(num_nodes, device=device)
    node, prob = start.clone(), torch.ones(num_nodes, device=device)
    for step in range(walk_length):
        fan = deg[node]
        entry = torch.repeat_interleave(torch.arange(node.numel(),
                                                     device=device), fan)
        offset = torch.arange(entry.numel(), device=device) - \
            torch.repeat_interleave(torch.cumsum(fan, 0) - fan, fan)
        edge = ptr[node][entry] + offset
        key = start[entry] * num_nodes + col[edge]
        key, inverse = torch.unique(key, return_inverse=True)
        prob = scatter(prob[entry] * step_prob[node][entry], inverse, 0,
                       dim_size=key.numel(), reduce='sum')
        start, node = key // num_nodes, key % num_nodes
        back = start == node
        out[start[back], step] = prob[back]
    return out
