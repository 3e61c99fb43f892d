r"""Zero-shot HSA inside pre-trained Hugging Face encoders.

:func:`patch_attention` replaces the softmax self-attention of chosen
encoder layers of a BERT/RoBERTa-family model from :mod:`transformers`
with Hierarchical Self-Attention over a hierarchy imposed on the tokens of
every input, without any training. The layers keep their own query, key,
value and output projections and heads; only the way the values are mixed
changes. :func:`token_hierarchy` builds the forests, :func:`segment_ids`
turns texts into sentence or paragraph ids for the ``'sentences'``
hierarchy, and :func:`hsa_attention_flops` / :func:`dense_attention_flops`
count the cost of both.

How the patch works: transformers (4.48 and later) sends the mixing step
of every self-attention module through its
:class:`~transformers.AttentionInterface`, looked up by the name in
``module.config._attn_implementation``. Importing this module registers
the name ``'pyg_hsa'``; patching a layer gives its self-attention module a
read-through view of the model's config that answers ``'pyg_hsa'`` to that
one attribute, and :meth:`HSAPatch.remove` puts the original config object
back. The model still builds its masks for its own implementation
(``sdpa``, ``eager``, ...), and the padding is read from them; the layers
that are not patched are not touched at all.
"""
import copy
import re
import weakref
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from transformers import AttentionInterface

from pyg_hsa.functional import hsa_attention
from pyg_hsa.tree import Tree
from pyg_hsa.utils.hierarchy import first_child, rank_in_group

__all__ = [
    'HSAPatch',
    'dense_attention_flops',
    'hsa_attention_flops',
    'patch_attention',
    'segment_ids',
    'token_hierarchy',
]

#: The name under which HSA is registered in transformers'
#: :class:`~transformers.AttentionInterface`.
ATTENTION_NAME = 'pyg_hsa'
HIERARCHIES = ('flat', 'windows', 'sentences')
SPECIAL_TOKENS = ('root', 'inline')
SEGMENT_UNITS = ('sentence', 'paragraph')

# Self-attention module -> the patch that owns it. Weak, so that a patched
# model that is dropped is not kept alive by this table.
_PATCHED: 'weakref.WeakKeyDictionary[nn.Module, HSAPatch]' = \
    weakref.WeakKeyDictionary()


# Building the hierarchy ###################################################


def token_hierarchy(
    valid: Tensor,
    branching: Sequence[int] = (),
    segments: Sequence[Tensor] = (),
    root_tokens: Optional[Tensor] = None,
) -> Tensor:
    r"""The parent vector of a forest over the tokens of a padded batch:
    one tree per sequence, the padding left out.

    Leaves ``0 .. N-1`` are the tokens with :obj:`valid` set, in row-major
    order (sequence by sequence, left to right). Above them, bottom-up:

    1. window levels: level :math:`l` groups :math:`b_l` consecutive nodes
       of level :math:`l - 1` (:obj:`branching` :math:`= (b_1, b_2,
       \dots)`); windows restart at every segment of the finest level of
       :obj:`segments`, whose last window may be shorter;
    2. one level per entry of :obj:`segments` (finest first): all the
       tokens with the same id in one sequence form one node;
    3. one root per sequence.

    Tokens set in :obj:`root_tokens`, and tokens with a negative id at any
    level of :obj:`segments`, are direct children of the root. Internal
    nodes with a single child, and an internal only child of a root, are
    spliced out (HSA is unchanged by them, and they cost work), e.g. the
    windows of a segment shorter than a window.

    Args:
        valid (BoolTensor): ``[B, L]``, :obj:`True` for real tokens.
        branching (Sequence[int]): window sizes, bottom-up, each >= 2.
        segments (Sequence[LongTensor]): ``[B, L]`` segment ids per
            level, finest first; the segments of a level must nest in those
            of the next. Ids at padding positions are ignored.
        root_tokens (BoolTensor, optional): ``[B, L]`` tokens to attach
            directly to the root.

    Returns:
        LongTensor ``[M]``: the parent of every node, ``-1`` for roots
        (one per sequence with at least one valid token, in order).
    """
    valid = _check_valid(valid)
    branching = _check_branching(branching)
    segments = _check_segments(segments, valid.shape)
    length = valid.size(1)
    token = valid.reshape(-1).nonzero().view(-1)
    if token.numel() == 0:
        raise ValueError("'valid' has no True entry: the hierarchy would be "
                         "empty")
    example = token // length
    at_root = torch.zeros_like(token, dtype=torch.bool)
    if root_tokens is not None:
        if not isinstance(root_tokens, Tensor) or \
                root_tokens.shape != valid.shape:
            raise ValueError(f"'root_tokens' must be a tensor of shape "
                             f"{tuple(valid.shape)} like 'valid' (got "
                             f"{_describe(root_tokens)})")
        at_root |= root_tokens.reshape(-1)[token].bool()
    levels = [s.reshape(-1)[token].long() for s in segments]
    for ids in levels:
        at_root |= ids < 0

    # `first`: the first token (leaf) below every node still without a
    # parent; `owner`: that node for every leaf below it (-1 at the root).
    first = (~at_root).nonzero().view(-1)
    builder = _ForestBuilder(token.numel(), first)
    owner = torch.full_like(token, -1)
    owner[first] = torch.arange(first.numel(), device=token.device)
    group = _combine(example[first], levels[0][first]) if levels else \
        example[first]
    for width in branching:
        if first.numel() == 0:
            break
        # Consecutive runs of `width` nodes of one segment share a parent.
        window = rank_in_group(group) // width
        parent = builder.add_level(_combine(group, window))
        first, owner = _up(first, owner, parent)
        group = group[first_child(parent)]
    for depth, ids in enumerate(levels):
        if first.numel() == 0:
            break
        parent = builder.add_level(_combine(example[first], ids[first]))
        first, owner = _up(first, owner, parent)
        _check_nesting(ids, owner, first, depth)
    return builder.finish(example, first, at_root)


class _ForestBuilder:
    """Collects the levels of a forest whose leaves are ``0 .. N-1``;
    internal nodes are numbered level by level, roots last."""
    def __init__(self, num_leaves: int, frontier: Tensor):
        self.num_leaves = num_leaves
        self.frontier = frontier  # the nodes that still need a parent
        self.children: List[Tensor] = []
        self.parents: List[Tensor] = []
        self.next_id = num_leaves

    def add_level(self, key: Tensor) -> Tensor:
        """Nodes of the frontier with equal :obj:`key` get one new parent
        (parents numbered in key order); returns the parent of every
        frontier node, relative to the new level."""
        _, parent = torch.unique(key, return_inverse=True)
        num_parents = int(parent.max()) + 1
        self.children.append(self.frontier)
        self.parents.append(parent + self.next_id)
        self.frontier = self.next_id + torch.arange(num_parents,
                                                    device=key.device)
        self.next_id += num_parents
        return parent

    def finish(self, example: Tensor, first: Tensor,
               at_root: Tensor) -> Tensor:
        """Attaches the frontier (nodes over the tokens :obj:`first`) and
        the :obj:`at_root` leaves to the root of their sequence."""
        device = example.device
        rows, root_of = torch.unique(example, return_inverse=True)
        roots = self.next_id + torch.arange(rows.numel(), device=device)
        self.children += [self.frontier, at_root.nonzero().view(-1)]
        self.parents += [roots[root_of[first]], roots[root_of[at_root]]]
        parent = torch.full((int(roots[-1]) + 1, ), -1, dtype=torch.long,
                            device=device)
        parent[torch.cat(self.children)] = torch.cat(self.parents)
        return _splice_chains(parent, self.num_leaves)


def _up(first: Tensor, owner: Tensor,
        parent: Tensor) -> Tuple[Tensor, Tensor]:
    """The first tokens of the new level's nodes, and every leaf's owner
    moved from the old level to the new one."""
    head = first_child(parent)
    return first[head], torch.where(owner >= 0, parent[owner.clamp(min=0)],
                                    -1)


def _combine(major: Tensor, minor: Tensor) -> Tensor:
    """One integer key ordered by :obj:`major`, then :obj:`minor` (both
    non-negative, or :obj:`minor` of any sign: it is shifted)."""
    minor = minor - minor.min() if minor.numel() else minor
    return major * (int(minor.max()) + 1 if minor.numel() else 1) + minor


def _check_nesting(ids: Tensor, owner: Tensor, first: Tensor,
                   depth: int) -> None:
    """Every token must have the segment id of the first token of the
    node of this level it lies under."""
    below = owner >= 0
    expected = ids[first][owner[below]]
    if not torch.equal(ids[below], expected):
        raise ValueError(f"'segments' level {depth} does not nest: some "
                         f"segment of the level below it (or window) "
                         f"straddles two of its segments")


def _splice_chains(parent: Tensor, num_leaves: int) -> Tensor:
    """Removes internal non-root nodes that have one child or are the only
    child of a root, attaching their children to their parent, and
    renumbers."""
    num_nodes = parent.numel()
    device = parent.device
    internal = torch.arange(num_nodes, device=device) >= num_leaves
    kept = torch.ones(num_nodes, dtype=torch.bool, device=device)
    while True:
        has_parent = parent >= 0
        num_children = torch.zeros(num_nodes, dtype=torch.long,
                                   device=device)
        num_children.index_add_(0, parent[has_parent & kept],
                                torch.ones_like(parent[has_parent & kept]))
        # (An only child is spliced out only under a root: any other
        # parent of one child goes itself, and removing both at once
        # would merge the child's family into the grandparent's.)
        above = parent.clamp(min=0)
        only_child_of_root = has_parent & (num_children[above] == 1) & \
            (parent[above] < 0)
        removable = kept & internal & has_parent & (
            (num_children == 1) | only_child_of_root)
        if not bool(removable.any()):
            break
        # Point every node past removable ancestors (a chain of them is
        # crossed in as many rounds as it is long).
        while True:
            above = parent.clamp(min=0)
            skip = (parent >= 0) & removable[above]
            if not bool(skip.any()):
                break
            parent = torch.where(skip, parent[above], parent)
        kept &= ~removable
    new_id = torch.cumsum(kept.long(), 0) - 1
    parent = parent[kept]
    return torch.where(parent >= 0, new_id[parent.clamp(min=0)], -1)


# Sentence and paragraph ids from texts ####################################

# A sentence ends after . ! or ? (and closing quotes or brackets) followed
# by white space; a blank line ends a paragraph (and so a sentence too).
_PARAGRAPH_END = r'\n[ \t]*\n\s*'
_UNIT_END = {
    'sentence': re.compile(r'[.!?][\'")\]]*\s+|' + _PARAGRAPH_END),
    'paragraph': re.compile(_PARAGRAPH_END),
}


def segment_ids(texts: Union[str, Sequence[str]], encoding,
                unit: str = 'sentence') -> Tensor:
    r"""Per-token sentence (or paragraph) ids for the ``'sentences'``
    hierarchy, from the character offsets of a fast tokenizer.

    Sentences end at ``.``, ``!`` or ``?`` (and any closing quotes or
    brackets) followed by white space, and at blank lines; paragraphs end
    at blank lines. This is a plain rule (abbreviations such as "e.g."
    also end a sentence); pass your own ids to
    :meth:`HSAPatch.set_boundaries` for anything better.

    Args:
        texts (str or Sequence[str]): the texts of the batch, as given to
            the tokenizer (single texts, not pairs).
        encoding: the tokenizer's output for :obj:`texts`, made with
            ``return_offsets_mapping=True``.
        unit (str): ``'sentence'`` or ``'paragraph'``.

    Returns:
        LongTensor ``[B, L]``: the index of the unit each token lies in,
        counted from 0 in every text, and ``-1`` for special tokens
        (``[CLS]``, ``[SEP]``, ...: their offsets are empty) and padding,
        which :func:`patch_attention` then places directly under the root.
    """
    if unit not in _UNIT_END:
        raise ValueError(f"'unit' must be one of {SEGMENT_UNITS} (got "
                         f"{unit!r})")
    if isinstance(texts, str):
        texts = [texts]
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("'texts' must be a string or a sequence of strings")
    offsets = _offsets(encoding, len(texts))
    start, end = offsets[..., 0], offsets[..., 1]
    # Start of every unit, per text, padded with a large sentinel so that
    # one batched search finds the unit of every token.
    starts = [[0] + [m.end() for m in _UNIT_END[unit].finditer(text)]
              for text in texts]
    width = max(len(s) for s in starts)
    sentinel = max(len(t) for t in texts) + 1
    table = torch.tensor([s + [sentinel] * (width - len(s)) for s in starts],
                         dtype=torch.long)
    ids = torch.searchsorted(table, start.contiguous(), right=True) - 1
    special = end <= start  # special tokens and padding have empty spans
    return torch.where(special, -1, ids)


def _offsets(encoding, num_texts: int) -> Tensor:
    try:
        offsets = encoding['offset_mapping']
    except (KeyError, TypeError):
        raise ValueError("'encoding' has no 'offset_mapping': call the "
                         "tokenizer with return_offsets_mapping=True (it "
                         "needs a fast tokenizer)") from None
    offsets = torch.as_tensor(offsets, dtype=torch.long).cpu()
    if offsets.dim() == 2:
        offsets = offsets.unsqueeze(0)
    if offsets.dim() != 3 or offsets.size(-1) != 2 or \
            offsets.size(0) != num_texts:
        raise ValueError(f"'encoding' offset_mapping must have shape "
                         f"[{num_texts}, L, 2], one row per text (got "
                         f"{tuple(offsets.shape)})")
    return offsets


# FLOP counts ##############################################################

#: FLOPs per attention logit besides the dot product: scaling, exponential,
#: accumulation into the normaliser, division (and, in HSA, adding
#: :math:`\log n(B)`: one more).
SOFTMAX_FLOPS = 4
#: FLOPs per node and head of HSA's scalar recursions: the family
#: normaliser :math:`\eta`, the energy :math:`\varphi`, the gate
#: :math:`\mu` and the path weight :math:`W` (logs, exponentials,
#: sigmoids and the weighted sum over children, counted generously).
NODE_FLOPS = 12


def dense_attention_flops(lengths: Union[int, Sequence[int], Tensor],
                          heads: int, head_dim: int,
                          value_dim: Optional[int] = None) -> int:
    r"""FLOPs of softmax self-attention over sequences of the given
    lengths (each counted unpadded, which favours the dense side):

    .. math::
        H \sum_s L_s^2 \, (2C + 4 + 2C_v),

    a multiply-add counted as two FLOPs: :math:`2C` per logit
    :math:`\langle q_i, k_j\rangle`, :data:`SOFTMAX_FLOPS` for the softmax
    and :math:`2C_v` for the weighted sum of the values.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.long).view(-1)
    value_dim = head_dim if value_dim is None else value_dim
    pairs = int((lengths**2).sum())
    return heads * pairs * (2 * head_dim + SOFTMAX_FLOPS + 2 * value_dim)


def hsa_attention_flops(tree: Union[Tree, Tensor], heads: int, head_dim: int,
                        value_dim: Optional[int] = None, *,
                        self_loops: bool = True,
                        padded: bool = False) -> int:
    r"""FLOPs of :func:`~pyg_hsa.hsa_attention` on a tree, counted like
    :func:`dense_attention_flops`. Per head, with :math:`M` nodes,
    :math:`I` internal nodes, :math:`E = M - \#\text{roots}` child edges
    and families :math:`F` (the children of one internal node, of size
    :math:`b_F`):

    .. math::
        \sum_F b_F^2 (2C + 5 + 2C_v)
        + (2C + C_v)(E + I) + (2 C_v + 12) M

    * every family runs dense attention among its members: a logit, the
      softmax (:data:`SOFTMAX_FLOPS` plus adding :math:`\log n(B)`) and the
      weighted sum per ordered pair, self pairs included (the dense block
      computes them; with :obj:`self_loops` a lone leaf under a root still
      attends to itself);
    * pooling: the means of :math:`q, k, v` below every internal node, one
      addition per child edge and one division per internal node and
      channel;
    * the down pass adds :math:`W(1-\mu)\vartheta` to every node
      (:math:`2C_v`) after :data:`NODE_FLOPS` of scalar recursions.

    Args:
        tree (Tree or LongTensor): the hierarchy, or its parent vector.
        heads (int): number of heads :math:`H`.
        head_dim (int): query/key width :math:`C`.
        value_dim (int, optional): value width :math:`C_v` (default
            :math:`C`).
        self_loops (bool): whether leaves attend to themselves.
        padded (bool): count families at the power-of-two widths that the
            implementation pads them to (its real work) instead of their
            sizes (the algorithm's).
    """
    parent = tree.parent if isinstance(tree, Tree) else \
        Tree.from_parent(tree).parent
    value_dim = head_dim if value_dim is None else value_dim
    num_nodes = parent.numel()
    has_parent = parent >= 0
    num_children = torch.bincount(parent[has_parent], minlength=num_nodes)
    family = num_children[num_children > 0]
    if self_loops:  # A root that is itself a leaf attends to itself.
        lone = (~has_parent & (num_children == 0)).sum()
        family = torch.cat([family, family.new_ones(int(lone))])
    if padded:
        family = 2**torch.ceil(torch.log2(family.double())).long()
    num_internal = int((num_children > 0).sum())
    num_edges = int(has_parent.sum())
    per_head = (int((family**2).sum()) *
                (2 * head_dim + SOFTMAX_FLOPS + 1 + 2 * value_dim) +
                (2 * head_dim + value_dim) * (num_edges + num_internal) +
                (2 * value_dim + NODE_FLOPS) * num_nodes)
    return heads * per_head


# The patch ################################################################


def patch_attention(model: nn.Module,
                    layers: Union[None, int, Sequence[int]] = None,
                    hierarchy: str = 'windows',
                    branching: Sequence[int] = (2, 4, 8, 16),
                    boundaries: Union[None, Tensor,
                                      Sequence[Tensor]] = None,
                    special_tokens: str = 'root') -> 'HSAPatch':
    r"""Replaces the self-attention of encoder layers of a pre-trained
    BERT/RoBERTa-family model with HSA over a hierarchy of its tokens,
    zero-shot; returns a handle whose :meth:`~HSAPatch.remove` restores the
    model exactly.

    .. code-block:: python

        handle = patch_attention(model, layers=[3, 4, 5])
        out = model(**batch)          # HSA in layers 3-5
        handle.remove()               # the original model again

    Each layer keeps its own query, key and value projections, heads,
    scaling and output projection; HSA runs with self loops (every token
    also attends to itself, as in softmax attention) and without position
    terms (the model's embeddings already carry positions). Padding is
    read from the attention mask and left out of the hierarchy; the
    attention outputs at padding positions are zero (the rest of the
    layer still runs there; its results there mean nothing, as usual).
    One forest serves the whole padded batch (one root per sequence); it
    is built once per forward and shared by all patched layers.
    Hierarchies:

    * ``'flat'``: every token is a child of the root. HSA is then softmax
      attention over the non-padding tokens: the original model, up to
      rounding.
    * ``'windows'``: tokens, then windows of :math:`b_1` consecutive
      tokens, windows of :math:`b_2` such windows, ..., then the root.
    * ``'sentences'``: tokens, then windows of :obj:`branching` inside
      every sentence (restarting at each; pass ``branching=()`` for none),
      then sentences, then (optionally) paragraphs, then the root. The
      per-token ids come from :obj:`boundaries` or
      :meth:`HSAPatch.set_boundaries`, e.g. from :func:`segment_ids`.

    Special tokens: with ``special_tokens='root'`` the first and the last
    non-padding token of every sequence (``[CLS]`` and ``[SEP]`` for BERT,
    ``<s>`` and ``</s>`` for RoBERTa) are direct children of the root. So
    ``[CLS]`` sits at the coarsest scale: it attends to the top-level
    blocks of the sequence (and to itself and ``[SEP]``), which together
    cover every token, and every token sees it as a block of its own at
    the top, wherever it is; the same goes for ``[SEP]``, which BERT's
    heads use as a sink. With ``'inline'`` they are ordinary tokens of the
    first and the last window. In ``'sentences'``, tokens whose id is
    negative (:func:`segment_ids` gives ``-1`` to special tokens) are
    always children of the root.

    Internal nodes with a single child are left out (HSA is unchanged by
    them), e.g. the windows of a short sentence; see
    :func:`token_hierarchy`.

    Args:
        model (PreTrainedModel): a BERT/RoBERTa-family encoder from
            :mod:`transformers` (its ``base_model.encoder.layer[i]
            .attention.self`` modules dispatching through the
            :class:`~transformers.AttentionInterface`), or a model with one
            as its base (e.g. ``BertForMaskedLM``).
        layers (int or Sequence[int], optional): indices of the encoder
            layers to patch (negative ones count from the end); all by
            default.
        hierarchy (str): ``'flat'``, ``'windows'`` or ``'sentences'``.
        branching (Sequence[int]): window sizes bottom-up, each >= 2;
            ignored by ``'flat'``.
        boundaries (LongTensor or Sequence[LongTensor], optional): for
            ``'sentences'``, per-token segment ids ``[B, L]`` of the next
            inputs, or several levels of them, finest first (sentences,
            paragraphs); see :meth:`HSAPatch.set_boundaries`.
        special_tokens (str): ``'root'`` or ``'inline'`` (see above).
    """
    return HSAPatch(model, layers, hierarchy, branching, boundaries,
                    special_tokens)


class HSAPatch:
    """The handle returned by :func:`patch_attention`; also a context
    manager that removes the patch on exit.

    Attributes:
        model: the patched model.
        layers (tuple): the patched encoder layer indices (non-negative).
        hierarchy, branching, special_tokens: as given.
    """
    def __init__(self, model, layers, hierarchy, branching, boundaries,
                 special_tokens):
        if hierarchy not in HIERARCHIES:
            raise ValueError(f"'hierarchy' must be one of {HIERARCHIES} "
                             f"(got {hierarchy!r})")
        if special_tokens not in SPECIAL_TOKENS:
            raise ValueError(f"'special_tokens' must be one of "
                             f"{SPECIAL_TOKENS} (got {special_tokens!r})")
        self.branching = _check_branching(branching)
        self.hierarchy = hierarchy
        self.special_tokens = special_tokens
        if boundaries is not None and hierarchy != 'sentences':
            raise ValueError(f"'boundaries' only apply to hierarchy="
                             f"'sentences' (got hierarchy={hierarchy!r})")
        self._boundaries: Tuple[Tensor, ...] = ()
        self._version = 0
        self._cache = None
        self._probed = None  # set of modules reached while probing
        self.set_boundaries(boundaries)

        modules = _self_attention_modules(model)
        self.layers = _check_layers(layers, len(modules))
        self.model = model
        self._modules: Dict[int, nn.Module] = {}
        self._configs: Dict[int, object] = {}
        for i in self.layers:
            if modules[i] in _PATCHED:
                raise ValueError(f"Layer {i} is already patched; remove() "
                                 f"the other handle first")
        try:
            for i in self.layers:
                self._patch(i, modules[i])
            self._probe(model)
        except Exception:
            self.remove()
            raise

    # Patching #############################################################

    def _patch(self, index: int, module: nn.Module) -> None:
        if getattr(module, 'is_causal', False):
            raise TypeError(f"Layer {index}'s self-attention is causal; HSA "
                            f"here replaces bidirectional (encoder) "
                            f"attention only")
        self._modules[index] = module
        self._configs[index] = module.config
        # A plain attribute: restoring it on remove() is exact.
        module.config = _ConfigView(module.config)
        _PATCHED[module] = self

    def _probe(self, model: nn.Module) -> None:
        """Runs every patched self-attention on two dummy tokens and checks
        that it reached HSA, so that a model whose layers bypass the
        AttentionInterface fails here, not silently later."""
        self._probed = set()
        parameter = next(model.parameters())
        try:
            with torch.no_grad():
                for index, module in self._modules.items():
                    width = module.query.in_features if hasattr(
                        module, 'query') else model.config.hidden_size
                    module(torch.zeros(1, 2, width, dtype=parameter.dtype,
                                       device=parameter.device))
        except Exception as error:
            raise TypeError(f"Could not run the self-attention of layer "
                            f"{index} ({type(module).__name__}): "
                            f"{error}") from error
        finally:
            probed, self._probed = self._probed, None
        missed = [i for i, m in self._modules.items() if id(m) not in probed]
        if missed:
            raise TypeError(f"The self-attention of layers {missed} does "
                            f"not dispatch through transformers' "
                            f"AttentionInterface, so it cannot be patched")

    def remove(self) -> None:
        """Restores the original attention of every patched layer (the
        modules get their original config object back). Idempotent."""
        for index, module in self._modules.items():
            module.config = self._configs[index]
            if _PATCHED.get(module) is self:
                del _PATCHED[module]
        self._modules, self._configs = {}, {}
        self._cache = None

    @property
    def active(self) -> bool:
        """Whether the patch is still applied."""
        return bool(self._modules)

    def __enter__(self) -> 'HSAPatch':
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # The hierarchy ########################################################

    def set_boundaries(
            self, boundaries: Union[None, Tensor, Sequence[Tensor]]) -> None:
        """Sets the per-token segment ids for the next forward passes of
        the ``'sentences'`` hierarchy: a ``[B, L]`` integer tensor matching
        the inputs (e.g. from :func:`segment_ids`), or a sequence of them,
        finest first (sentences, then paragraphs). Negative ids put a token
        directly under the root; ids at padding positions are ignored. Call
        it before every batch."""
        if boundaries is None:
            self._boundaries = ()
        else:
            if isinstance(boundaries, Tensor):
                boundaries = (boundaries, )
            if not isinstance(boundaries, (list, tuple)) or not boundaries:
                raise TypeError(f"'boundaries' must be a LongTensor [B, L] "
                                f"or a non-empty sequence of them (got "
                                f"{_describe(boundaries)})")
            shape = boundaries[0].shape if isinstance(
                boundaries[0], Tensor) else None
            self._boundaries = tuple(_check_segments(boundaries, shape))
        self._version += 1
        self._cache = None

    def hierarchy_for(self, valid: Tensor) -> Tuple[Tree, Tensor]:
        """The compiled forest for a batch whose non-padding tokens are
        :obj:`valid` (``[B, L]``), and the flat indices ``b * L + t`` of its
        leaves. The last one is cached (all patched layers of a forward
        share it)."""
        valid = _check_valid(valid)
        cache = self._cache
        if cache is not None and cache[0] == self._version and \
                cache[1].shape == valid.shape and \
                cache[1].device == valid.device and \
                torch.equal(cache[1], valid):
            return cache[2], cache[3]
        parent = token_hierarchy(valid, **self._hierarchy_arguments(valid))
        tree = Tree.from_parent(parent, int(valid.sum()))
        leaves = valid.reshape(-1).nonzero().view(-1)
        self._cache = (self._version, valid.clone(), tree, leaves)
        return tree, leaves

    def clear_cache(self) -> None:
        """Forgets the cached forest (the next forward builds it anew)."""
        self._cache = None

    def _hierarchy_arguments(self, valid: Tensor) -> dict:
        if self.hierarchy == 'flat':
            return {'root_tokens': valid}
        arguments = {'branching': self.branching}
        if self.special_tokens == 'root':
            arguments['root_tokens'] = _ends(valid)
        if self.hierarchy == 'sentences':
            if not self._boundaries:
                raise ValueError(
                    "hierarchy='sentences' needs per-token segment ids: "
                    "pass boundaries= to patch_attention or call "
                    "handle.set_boundaries(segment_ids(texts, encoding)) "
                    "before each forward")
            if self._boundaries[0].shape != valid.shape:
                raise ValueError(
                    f"The boundaries have shape "
                    f"{tuple(self._boundaries[0].shape)} but the input has "
                    f"{tuple(valid.shape)}; call handle.set_boundaries() "
                    f"for every batch")
            arguments['segments'] = [
                b.to(valid.device) for b in self._boundaries
            ]
        return arguments

    # Attention ############################################################

    def attend(self, query: Tensor, key: Tensor, value: Tensor,
               attention_mask=None, *, scaling: Optional[float] = None,
               dropout: float = 0.0) -> Tensor:
        """HSA on ``[B, H, L, C]`` queries, keys and values (the layout of
        transformers' attention interface); returns ``[B, L, H, C]``.
        :obj:`attention_mask` is a 2D padding mask (1 = token) or a 4D
        boolean/additive mask as transformers builds it, or :obj:`None`."""
        if query.dim() != 4 or key.shape != query.shape or \
                value.shape[:3] != query.shape[:3]:
            raise ValueError(f"HSA needs self-attention inputs [B, H, L, C] "
                             f"of one shape (got query "
                             f"{tuple(query.shape)}, key {tuple(key.shape)}, "
                             f"value {tuple(value.shape)})")
        batch, heads, length, _ = query.shape
        valid = _token_validity(attention_mask, batch, length, query.device)
        out = value.new_zeros(batch * length, heads, value.size(-1))
        if not bool(valid.any()):
            return out.view(batch, length, heads, -1)
        tree, leaves = self.hierarchy_for(valid)

        def rows(x: Tensor) -> Tensor:
            return x.transpose(1, 2).reshape(batch * length, heads,
                                             x.size(-1))[leaves]

        mixed = hsa_attention(rows(query), rows(key), rows(value), tree,
                              self_loops=True, scale=scaling,
                              dropout=dropout)
        return out.index_copy(0, leaves, mixed).view(batch, length, heads, -1)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(layers={list(self.layers)}, '
                f'hierarchy={self.hierarchy!r}, branching={self.branching}, '
                f'special_tokens={self.special_tokens!r}, '
                f'active={self.active})')


class _ConfigView:
    """Reads through to a model config, except that it names HSA as the
    attention implementation; writes go to the config itself."""
    _attn_implementation = ATTENTION_NAME

    def __init__(self, config):
        object.__setattr__(self, '_config', config)

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, '_config'), name)

    def __setattr__(self, name, value):
        setattr(self._config, name, value)

    def __deepcopy__(self, memo):
        return _ConfigView(copy.deepcopy(self._config, memo))

    def __repr__(self) -> str:
        return f'_ConfigView({self._config!r})'


def _hsa_attention_forward(module: nn.Module, query: Tensor, key: Tensor,
                           value: Tensor, attention_mask, dropout=0.0,
                           scaling=None, **kwargs):
    """The function registered in transformers' AttentionInterface."""
    patch = _PATCHED.get(module)
    if patch is None:
        raise RuntimeError(f"{type(module).__name__} asked for "
                           f"'{ATTENTION_NAME}' attention but is not patched "
                           f"(use pyg_hsa's patch_attention)")
    if kwargs.get('is_causal'):
        raise ValueError("HSA here replaces bidirectional attention; got "
                         "is_causal=True")
    if patch._probed is not None:  # patch_attention's dispatch check
        patch._probed.add(id(module))
        return value.new_zeros(value.transpose(1, 2).shape), None
    out = patch.attend(query, key, value, attention_mask, scaling=scaling,
                       dropout=dropout if module.training else 0.0)
    return out, None


AttentionInterface.register(ATTENTION_NAME, _hsa_attention_forward)


# Helpers ##################################################################


def _self_attention_modules(model) -> List[nn.Module]:
    """``base_model.encoder.layer[i].attention.self`` of every layer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a transformers model (got "
                        f"{type(model).__name__})")
    config = getattr(model, 'config', None)
    if config is not None and getattr(config, 'is_decoder', False):
        raise TypeError("'model' is configured as a decoder (causal "
                        "attention); HSA here replaces encoder attention")
    base = getattr(model, 'base_model', model)
    layers = getattr(getattr(base, 'encoder', None), 'layer', None)
    modules = [
        getattr(getattr(layer, 'attention', None), 'self', None)
        for layer in (layers if isinstance(layers, nn.ModuleList) else ())
    ]
    if not modules or not all(
            isinstance(m, nn.Module) and hasattr(m, 'config')
            for m in modules):
        raise TypeError(f"patch_attention supports BERT/RoBERTa-family "
                        f"encoders from transformers (with "
                        f"base_model.encoder.layer[i].attention.self "
                        f"modules); got {type(model).__name__}")
    return modules


def _check_layers(layers, num_layers: int) -> Tuple[int, ...]:
    if layers is None:
        return tuple(range(num_layers))
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = (layers, )
    if not isinstance(layers, (list, tuple, range)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise TypeError(f"'layers' must be None, an int or a sequence of "
                        f"ints (got {layers!r})")
    if not layers:
        raise ValueError("'layers' is empty: name at least one layer")
    bad = [i for i in layers if not -num_layers <= i < num_layers]
    if bad:
        raise ValueError(f"'layers' has indices {bad} out of range for a "
                         f"model with {num_layers} layers")
    layers = tuple(i % num_layers for i in layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"'layers' names a layer twice ({list(layers)})")
    return tuple(sorted(layers))


def _check_branching(branching) -> Tuple[int, ...]:
    if branching is None:
        return ()
    if isinstance(branching, int) and not isinstance(branching, bool):
        branching = (branching, )
    try:
        branching = tuple(branching)
    except TypeError:
        raise TypeError(f"'branching' must be a sequence of integers (got "
                        f"{type(branching).__name__})") from None
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 2
               for b in branching):
        raise ValueError(f"'branching' must be a sequence of integers >= 2 "
                         f"(got {branching!r})")
    return branching


def _check_valid(valid) -> Tensor:
    if not isinstance(valid, Tensor) or valid.dim() != 2:
        raise ValueError(f"'valid' must be a boolean tensor of shape [B, L] "
                         f"(got {_describe(valid)})")
    return valid.bool()


def _check_segments(segments, shape) -> List[Tensor]:
    if isinstance(segments, Tensor):
        segments = (segments, )
    out = []
    for i, ids in enumerate(segments):
        if not isinstance(ids, Tensor) or ids.is_floating_point() or \
                ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"Segment ids (level {i}) must be an integer "
                            f"tensor (got {_describe(ids)})")
        if shape is None or ids.shape != shape or ids.dim() != 2:
            raise ValueError(f"Segment ids (level {i}) must have shape "
                             f"{tuple(shape or ('B', 'L'))}, one id per "
                             f"token (got {tuple(ids.shape)})")
        out.append(ids)
    return out


def _ends(valid: Tensor) -> Tensor:
    """The first and the last True entry of every row."""
    position = torch.arange(valid.size(1), device=valid.device)
    first = torch.where(valid, position, valid.size(1)).amin(1, True)
    last = torch.where(valid, position, -1).amax(1, True)
    return valid & ((position == first) | (position == last))


def _token_validity(mask, batch: int, length: int,
                    device: torch.device) -> Tensor:
    """``[B, L]`` non-padding tokens from a transformers attention mask,
    which must be a pure padding mask (every real query row the same)."""
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor):
        raise TypeError(f"HSA needs the attention mask as a tensor (got "
                        f"{type(mask).__name__}); use the model with "
                        f"attn_implementation='sdpa' or 'eager'")
    if mask.dim() == 2 and mask.shape == (batch, length):
        return mask.bool() if mask.dtype == torch.bool else mask != 0
    if mask.dim() != 4 or mask.size(0) != batch or \
            mask.size(-2) not in (1, length) or mask.size(-1) != length:
        raise ValueError(f"Unexpected attention mask of shape "
                         f"{tuple(mask.shape)} for {batch} sequences of "
                         f"{length} tokens")
    if mask.is_floating_point():  # additive: 0 or very negative
        allowed = mask > torch.finfo(mask.dtype).min / 2
    else:  # boolean or 0/1: True / 1 where allowed
        allowed = mask != 0
    valid = allowed.any(dim=2).any(dim=1)  # [B, L] keys anyone may see
    rows = allowed ^ valid[:, None, None, :]
    if bool((rows & valid[:, None, :, None]).any()):
        raise ValueError("HSA can only follow padding masks (the same keys "
                         "for every query); this attention mask restricts "
                         "queries differently")
    return valid


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
