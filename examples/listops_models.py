r"""The models of ``listops.py``. Every model reads a batch of expressions
as a :class:`ListOpsBatch` (tokens, a hierarchy over them, and what the
hierarchy says about every token) and returns ``[B, 10]`` logits.

* :class:`IteratedHSA`: one :class:`~pyg_hsa.nn.HSAEncoderLayer` applied
  with shared weights for many iterations (a fixed number, or a number per
  level of nesting), optionally through a GRU gate, read out at the first
  token (the root's operator). Over the parse tree it is ``hsa-tree``
  (**given the parse tree**), over fixed windows ``hsa-windows`` and over
  a flat tree ``transformer`` (exactly softmax attention).
* :class:`TreeMessagePassing`: GIN message passing on the parse tree's
  nodes (tokens and expressions) with separate weights for messages up and
  down the tree, shared over the iterations, a GRU update and the root
  expression as the readout (**given the parse tree**).
* :class:`TreeGRU`: a recursive cell that composes every expression from
  its children bottom-up (a GRU over the family in order), one level of
  the parse tree at a time (**given the parse tree**): the gold-tree
  ceiling.

Only the models given the parse tree see what it says about a token
(depth, the size and height of its expressions); the others see the
tokens and their positions in their own hierarchy.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GINConv

from pyg_hsa import Tree, hsa_attention
from pyg_hsa.datasets import ListOps
from pyg_hsa.nn import HSAEncoderLayer

NUM_TOKENS = len(ListOps.TOKENS)
NUM_CLASSES = 10
PE_CHANNELS = 16  # the transforms' Fourier positions
MAX_FEATURE_DEPTH = 32  # depths beyond share the last embedding


def nesting(tokens: Tensor, example: Tensor, num_examples: int) -> Tensor:
    """The number of open brackets at every token (an operator token
    counts its own), and the deepest one of every example ``[B]``."""
    is_open = (tokens >= ListOps.OPERATOR_IDS[0]) & \
        (tokens < ListOps.CLOSING_ID)
    step = is_open.long() - (tokens == ListOps.CLOSING_ID).long()
    level = torch.cumsum(step, 0) + (tokens == ListOps.CLOSING_ID).long()
    # Examples are consecutive and balanced: the running sum restarts at 0.
    deepest = level.new_zeros(num_examples).scatter_reduce(
        0, example, level, 'amax', include_self=True)
    return deepest


class ListOpsBatch:
    r"""What the models read from a batch of hierarchies (``HeteroData``
    with leaf type ``token``):

    * :obj:`tree` (:class:`~pyg_hsa.Tree`), :obj:`tokens` ``[N]``,
      :obj:`pe` ``[M, 16]`` (every node's position in its family) and
      :obj:`first` ``[B]`` (every example's first token);
    * :obj:`depth`, :obj:`size`, :obj:`height` and :obj:`first_leaf`
      ``[M]``: every node's number of edges to its root, leaves below it,
      edges down to its deepest leaf, and first leaf, in the tree's
      numbering;
    * :obj:`levels` ``[M]``: the deepest bracket nesting of every node's
      example, from the tokens alone (so every model runs equally many
      iterations on an expression, whatever its hierarchy and batch).
    """
    def __init__(self, batch):
        self.tree = tree = Tree.from_hetero(batch)
        self.tokens = batch['token'].x.view(-1)
        self.num_examples = tree.num_roots
        self.first = batch['token'].ptr[:-1]
        self.pe = batch['token'].pe.new_zeros(tree.num_nodes, PE_CHANNELS)
        for node_type, (start, stop) in tree.node_slices.items():
            if 'pe' in batch[node_type]:
                self.pe[start:stop] = batch[node_type].pe
        self.depth, self.size, self.height, self.first_leaf = \
            structure(tree)
        self.roots = (tree.parent < 0).nonzero().view(-1)  # in root order
        # Every node's example: the rank of its root.
        root = torch.arange(tree.num_nodes, device=tree.parent.device)
        for _ in range(tree.depth):
            root = torch.where(tree.parent[root] >= 0, tree.parent[root],
                               root)
        rank = torch.empty_like(root)
        rank[self.roots] = torch.arange(self.roots.numel(),
                                        device=root.device)
        deepest = nesting(self.tokens, tree.batch, self.num_examples)
        self.levels = deepest[rank[root]]


def structure(tree: Tree):
    """``(depth, size, height, first leaf)`` of every node of :obj:`tree`,
    one level at a time (no loop over nodes)."""
    parent = tree.parent
    has_parent = parent >= 0
    safe = parent.clamp(min=0)
    depth = torch.zeros_like(parent)
    for _ in range(tree.depth):
        depth = torch.where(has_parent, depth[safe] + 1, 0)
    size = torch.zeros_like(parent)
    size[:tree.num_leaves] = 1
    height = torch.zeros_like(parent)
    first = torch.full_like(parent, tree.num_leaves)
    first[:tree.num_leaves] = torch.arange(tree.num_leaves,
                                           device=parent.device)
    for level in range(tree.depth, 0, -1):
        at = (depth == level).nonzero().view(-1)
        size.index_add_(0, parent[at], size[at])
        height.scatter_reduce_(0, parent[at], height[at] + 1, 'amax')
        first.scatter_reduce_(0, parent[at], first[at], 'amin')
    return depth, size, height, first


class Schedule:
    r"""The bottom-up order of the parse tree as per-iteration roles of
    the tokens. Expressions of height :math:`s` (the innermost ones have
    height 1) are evaluated at stage :math:`s` in two iterations:

    * *compute*: the operator token of every expression of height
      :math:`s` (whose arguments are all evaluated) updates its state from
      its family, role 1;
    * *broadcast*: every token below such an expression takes its value
      from that operator token (role 2; the operator token itself,
      role 3), so the expression's leaves all carry its value and the
      block mean that its parent's operator sees is exact.

    All other tokens keep their state (role 0). Built once per batch from
    the tree (one step per level, no loop over nodes)."""
    def __init__(self, data: 'ListOpsBatch'):
        tree = data.tree
        leaves = torch.arange(tree.num_leaves, device=data.tokens.device)
        ancestors, node = [], leaves
        for _ in range(tree.depth):
            node = torch.where(node >= 0, tree.parent[node.clamp(min=0)], -1)
            ancestors.append(node)
        # Every leaf and its ancestors [N, D + 2] (-1 past the root).
        chain = torch.stack([leaves, *ancestors, leaves.new_full(
            leaves.shape, -1)], dim=1)
        big = torch.iinfo(torch.long).max
        # Heights of the strict ancestors: increasing along the path.
        self.path = torch.where(chain[:, 1:] >= 0,
                                data.height[chain[:, 1:].clamp(min=0)], big)
        self.chain_log_size = data.size[chain.clamp(min=0)].float().log()
        self.is_operator = (data.tokens >= ListOps.OPERATOR_IDS[0]) & \
            (data.tokens < ListOps.CLOSING_ID)
        self.num_stages = int(data.height[tree.num_leaves:].max()) \
            if tree.num_nodes > tree.num_leaves else 0

    def roles(self, stage: int, broadcast: bool) -> Tensor:
        """Every token's role ``[N]`` in one iteration of :obj:`stage`."""
        source = self.is_operator & (self.path[:, 0] == stage)
        if not broadcast:
            return source.long()
        # The first ancestor not yet evaluated before this stage is the
        # parent of the block a token carries; its height says whether
        # that block's parent is evaluated now.
        resolved = (self.path < stage).sum(1, keepdim=True)
        receive = self.path.gather(1, resolved).view(-1) == stage
        return torch.where(source, 3, 2 * receive.long())

    def carried_log_size(self, stage: int) -> Tensor:
        r""":math:`\log n(B)` ``[N]`` of the block :math:`B` whose value
        every token carries at :obj:`stage`: its highest ancestor evaluated
        at an earlier stage (or itself)."""
        resolved = (self.path < stage).sum(1, keepdim=True)
        return self.chain_log_size.gather(1, resolved).view(-1)


class SizedHSALayer(torch.nn.Module):
    r""":class:`~pyg_hsa.nn.HSAEncoderLayer` (post-norm: HSA with
    LayerNorm on queries and keys, output projection, residual, LayerNorm,
    feed-forward, residual, LayerNorm) on :func:`~pyg_hsa.hsa_attention`
    directly, with one more query-key channel per head: a learned constant
    :math:`g_h` against every token's :math:`-\log n(B)`, the size of the
    block whose value it carries, so that

    .. math::
        s_i(B) = \mathrm{scale}\,\langle \mathbf{q}_i,
        \boldsymbol{\rho}_k(B) \rangle + \langle \mathbf{e}(A),
        \mathbf{e}(B) \rangle - g_h \log n(B)

    for a block whose tokens all carry it, and with :math:`g_h = 1` a
    block's weight no longer grows with its size :math:`n(B)`: the
    attention then averages over arguments, not over tokens. (HSA weighs a
    block by its size in both resolutions; positions cannot undo it, as
    their term is a Gram matrix of the two nodes.)"""
    def __init__(self, channels: int, heads: int, pos_channels: int,
                 resolution: str = 'query', dropout: float = 0.0):
        super().__init__()
        if channels % heads:
            raise ValueError(f"'channels' ({channels}) must be divisible by "
                             f"'heads' ({heads})")
        self.heads, self.head_channels = heads, channels // heads
        self.resolution, self.dropout = resolution, dropout
        self.lin_qkv = torch.nn.Linear(channels, 3 * channels)
        self.lin_pos = torch.nn.Linear(pos_channels, channels, bias=False)
        self.norm_q = torch.nn.LayerNorm(self.head_channels)
        self.norm_k = torch.nn.LayerNorm(self.head_channels)
        self.size_gain = torch.nn.Parameter(torch.ones(heads))
        self.lin_out = torch.nn.Linear(channels, channels)
        self.norm_attn = torch.nn.LayerNorm(channels)
        self.ffn = torch.nn.Sequential(
            torch.nn.Linear(channels, 4 * channels), torch.nn.GELU(),
            torch.nn.Dropout(dropout), torch.nn.Linear(4 * channels,
                                                       channels))
        self.norm_ffn = torch.nn.LayerNorm(channels)

    def forward(self, x: Tensor, tree: Tree, pe: Tensor,
                log_size: Tensor) -> Tensor:
        num = x.size(0)
        out = self.attend(x, tree, pe, log_size)
        h = self.lin_out(out.reshape(num, -1))
        h = self.norm_attn(x + F.dropout(h, self.dropout, self.training))
        out = F.dropout(self.ffn(h), self.dropout, self.training)
        return self.norm_ffn(h + out)

    def attend(self, x: Tensor, tree: Tree, pe: Tensor,
               log_size: Tensor) -> Tensor:
        """The attention's output ``[N, heads, channels / heads]``."""
        num, heads, width = x.size(0), self.heads, self.head_channels
        q, k, v = self.lin_qkv(x).view(num, 3, heads, width).unbind(1)
        q, k = self.norm_q(q), self.norm_k(k)
        scale = width ** -0.5
        q = torch.cat([q, (self.size_gain / scale).view(1, heads, 1).expand(
            num, heads, 1)], dim=-1)
        k = torch.cat([k, -log_size.view(num, 1, 1).expand(num, heads, 1)],
                      dim=-1)
        pos = self.lin_pos(pe).view(-1, heads, width)
        dropout = self.dropout if self.training and \
            self.resolution == 'block' else 0.0
        return hsa_attention(q, k, v, tree, pe=pos, self_loops=True,
                             scale=scale, dropout=dropout,
                             resolution=self.resolution)


def iterations(model, levels: Tensor) -> Tensor:
    """The number of iterations of every node: :obj:`model.iterations`,
    or :obj:`model.per_level` per level of its example's nesting, plus
    one level."""
    if model.iterations:
        return torch.full_like(levels, model.iterations)
    return model.per_level * (levels + 1)


def mlp_head(channels: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(channels, channels), torch.nn.ReLU(),
        torch.nn.Linear(channels, NUM_CLASSES))


class IteratedHSA(torch.nn.Module):
    r"""Token embedding (plus, with :obj:`tree_features`, embeddings of
    the token's depth in the parse tree, the height of its expression and
    its number of arguments), then :math:`T` iterations of one
    weight-tied :class:`~pyg_hsa.nn.HSAEncoderLayer` over the batch's
    hierarchy,

    .. math::
        \mathbf{h}^{(t+1)} = \mathrm{GRU}\big(\mathrm{Enc}(
        \mathbf{h}^{(t)}), \mathbf{h}^{(t)}\big) \quad\text{or}\quad
        \mathbf{h}^{(t+1)} = \mathrm{Enc}(\mathbf{h}^{(t)}),

    with :math:`T` = :obj:`iterations`, or (:obj:`iterations` = 0)
    :obj:`per_level` times the batch's deepest nesting plus one; then an
    MLP on the first token of every example (the root's operator). The
    attention's positions are the transform's ``pe`` and, with
    :obj:`log_size`, :math:`\log n(B)` of every node.

    With :obj:`schedule` (the parse tree's bottom-up order, see
    :class:`Schedule`) the iterations are two per stage, every token's
    role in the iteration is embedded into the block's input, and only
    the tokens with a role update their state.
    """
    def __init__(self, channels: int, heads: int, iterations: int = 0,
                 per_level: int = 2, resolution: str = 'block',
                 gru: bool = True, tree_features: bool = False,
                 log_size: bool = True, schedule: bool = False,
                 size_key: bool = False, dropout: float = 0.0):
        super().__init__()
        self.iterations, self.per_level = iterations, per_level
        self.tree_features, self.log_size = tree_features, log_size
        self.schedule, self.size_key = schedule, size_key
        self.embed = torch.nn.Embedding(NUM_TOKENS, channels)
        if tree_features:
            self.depth = torch.nn.Embedding(MAX_FEATURE_DEPTH, channels)
            self.height = torch.nn.Embedding(MAX_FEATURE_DEPTH, channels)
            self.arity = torch.nn.Embedding(MAX_FEATURE_DEPTH, channels)
        if schedule:
            self.role = torch.nn.Embedding(4, channels)
            self.phase = torch.nn.Embedding(2, channels)
        pos_channels = PE_CHANNELS + int(log_size)
        if size_key:
            self.layer = SizedHSALayer(channels, heads, pos_channels,
                                       resolution, dropout)
        else:
            # (Query-resolved weights have no dropout.)
            self.layer = HSAEncoderLayer(
                channels, heads, pos_channels=pos_channels, self_loops=True,
                dropout=dropout, resolution=resolution,
                attention_dropout=None if resolution == 'block' else 0.0)
        self.gru = torch.nn.GRUCell(channels, channels) if gru else None
        self.head = mlp_head(channels)

    def features(self, data: ListOpsBatch) -> Tensor:
        tree = data.tree
        h = self.embed(data.tokens)
        if self.tree_features:
            leaves = slice(0, tree.num_leaves)
            cap = MAX_FEATURE_DEPTH - 1
            parent = tree.parent[leaves]
            arity = torch.zeros_like(tree.parent).index_add_(
                0, tree.parent[tree.parent >= 0],
                torch.ones_like(tree.parent[tree.parent >= 0]))[parent] - 2
            h = h + self.depth(data.depth[leaves].clamp(max=cap)) + \
                self.height(data.height[parent].clamp(max=cap)) + \
                self.arity(arity.clamp(0, cap))
        return h

    def step(self, h: Tensor, x: Tensor, data: ListOpsBatch, pe: Tensor,
             log_size: Optional[Tensor] = None) -> Tensor:
        if self.size_key:
            if log_size is None:  # every token carries itself
                log_size = x.new_zeros(x.size(0))
            out = self.layer(x, data.tree, pe, log_size)
        else:
            out = self.layer(x, data.tree, pe)
        return out if self.gru is None else self.gru(out, h)

    def forward(self, data: ListOpsBatch) -> Tensor:
        h = self.features(data)
        pe = data.pe
        if self.log_size:
            pe = torch.cat([pe, data.size.to(pe.dtype).log().unsqueeze(1)],
                           dim=1)
        if not self.schedule:
            steps = iterations(self, data.levels[:data.tree.num_leaves])
            for t in range(int(steps.max())):
                # (An expression stops after its own number of steps.)
                h = torch.where((t < steps).unsqueeze(1),
                                self.step(h, h, data, pe), h)
            return self.head(h[data.first])
        schedule = Schedule(data)
        for stage in range(1, schedule.num_stages + 1):
            for broadcast in (False, True):
                role = schedule.roles(stage, broadcast)
                x = h + self.role(role) + self.phase.weight[int(broadcast)]
                new = self.step(h, x, data, pe,
                                schedule.carried_log_size(stage))
                h = torch.where((role > 0).unsqueeze(1), new, h)
        return self.head(h[data.first])


class TreeMessagePassing(torch.nn.Module):
    r"""GIN on the parse tree's nodes (tokens, and expressions starting
    from a learned vector), with depth and position features: every
    iteration sends messages up (child to parent) and down (parent to
    child) through two :class:`~torch_geometric.nn.conv.GINConv` with
    their own weights, and a GRU cell takes their sum as its input. The
    weights are shared by the :math:`T` iterations (:obj:`iterations`, or
    :obj:`per_level` per level of nesting); the root expression's state is
    the readout.

    (The earlier GIN of ``listops.py`` stayed at the majority class: its
    messages had no direction, so an expression could not tell its
    arguments from its parent; twelve untied post-norm layers had to carry
    a leaf's value up to ten levels with no gate; and it read out a
    root whose state was mostly its own embedding.)"""
    def __init__(self, channels: int, iterations: int = 0,
                 per_level: int = 2, dropout: float = 0.0):
        super().__init__()
        self.iterations, self.per_level = iterations, per_level
        self.dropout = dropout
        self.embed = torch.nn.Embedding(NUM_TOKENS + 1, channels)
        self.depth = torch.nn.Embedding(MAX_FEATURE_DEPTH, channels)
        self.lin_pe = torch.nn.Linear(PE_CHANNELS, channels)

        def gin():
            return GINConv(torch.nn.Sequential(
                torch.nn.Linear(channels, channels), torch.nn.ReLU(),
                torch.nn.Linear(channels, channels)), train_eps=True)
        self.up, self.down = gin(), gin()
        self.gru = torch.nn.GRUCell(channels, channels)
        self.norm = torch.nn.LayerNorm(channels)
        self.head = mlp_head(channels)

    def forward(self, data: ListOpsBatch) -> Tensor:
        tree = data.tree
        kind = torch.full((tree.num_nodes, ), NUM_TOKENS,
                          device=data.tokens.device)
        kind[:tree.num_leaves] = data.tokens
        h = self.embed(kind) + self.lin_pe(data.pe) + self.depth(
            data.depth.clamp(max=MAX_FEATURE_DEPTH - 1))
        child = (tree.parent >= 0).nonzero().view(-1)
        up = torch.stack([child, tree.parent[child]])
        down = up.flip(0)
        steps = iterations(self, data.levels)
        for t in range(int(steps.max())):
            x = self.norm(h)
            message = self.up(x, up) + self.down(x, down)
            message = F.dropout(message, self.dropout, self.training)
            h = torch.where((t < steps).unsqueeze(1), self.gru(message, h),
                            h)
        return self.head(h[data.roots])


class TreeGRU(torch.nn.Module):
    r"""A recursive cell on the parse tree (the gold-tree ceiling): every
    expression's state is a GRU run over its children in order (its
    operator token, its arguments and its closing token; a token enters
    as its embedding, a sub-expression as its state), from a zero state,
    as Nangia and Bowman's Tree-LSTM composes a list left to right.
    Expressions are composed one depth level at a time, deepest first,
    all expressions of a level together (one GRU step per position in the
    family, no loop over nodes); the root expression's state is the
    readout."""
    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        self.channels, self.dropout = channels, dropout
        self.embed = torch.nn.Embedding(NUM_TOKENS, channels)
        self.cell = torch.nn.GRUCell(channels, channels)
        self.head = mlp_head(channels)

    def forward(self, data: ListOpsBatch) -> Tensor:
        tree = data.tree
        x = F.dropout(self.embed(data.tokens), self.dropout, self.training)
        state = torch.cat([x, x.new_zeros(tree.num_nodes - tree.num_leaves,
                                          self.channels)])
        for level in range(tree.depth, 0, -1):
            child = (data.depth == level).nonzero().view(-1)
            parent = tree.parent[child]
            # Children in family order: by parent, then first token.
            order = torch.argsort(parent * (tree.num_leaves + 1) +
                                  data.first_leaf[child])
            child, parent = child[order], parent[order]
            families, count = torch.unique_consecutive(parent,
                                                       return_counts=True)
            start = torch.cumsum(count, 0) - count
            h = x.new_zeros(families.numel(), self.channels)
            for k in range(int(count.max())):
                alive = count > k
                index = child[(start + k).clamp(max=child.numel() - 1)]
                h = torch.where(alive.unsqueeze(1),
                                self.cell(state[index], h), h)
            state = state.index_copy(0, families, h)
        return self.head(state[data.roots])
