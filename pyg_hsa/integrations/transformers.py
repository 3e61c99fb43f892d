r"""Zero-shot HSA inside pre-trained Hugging Face encoders.

:func:`patch_attention` replaces the softmax self-attention of chosen
encoder layers of a BERT/RoBERTa-family model from :mod:`transformers`
with Hierarchical Self-Attention over a hierarchy imposed on the tokens of
every input, without any training (see ``docs/zero_shot.md``). Its parts,
all importable from here: :func:`token_hierarchy` builds the forests
(:mod:`pyg_hsa.utils.token_forest`, shared with
:class:`~pyg_hsa.transforms.SequenceToHierarchy`), :func:`segment_ids`
turns texts or text pairs into sentence or paragraph ids
(:mod:`~pyg_hsa.integrations.segments`), :func:`hsa_attention_flops` and
:func:`dense_attention_flops` count the cost of both
(:mod:`~pyg_hsa.functional.flops`), and
:mod:`~pyg_hsa.integrations.dispatch` routes patched layers to HSA
through transformers' :class:`~transformers.AttentionInterface`.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from pyg_hsa.functional import hsa_attention
from pyg_hsa.functional.flops import (
    NODE_FLOPS,
    SOFTMAX_FLOPS,
    dense_attention_flops,
    hsa_attention_flops,
)
from pyg_hsa.functional.variants import check_variant
from pyg_hsa.integrations.dispatch import ATTENTION_NAME, ConfigView, patch_of
from pyg_hsa.integrations.encoders import (
    check_layers,
    first_and_last,
    padding_mask,
    self_attention_modules,
)
from pyg_hsa.integrations.segments import SEGMENT_UNITS, segment_ids
from pyg_hsa.tree import Tree
from pyg_hsa.utils.checks import check_bool, check_choice, describe
from pyg_hsa.utils.token_forest import (
    check_branching,
    check_segments,
    check_valid,
    token_hierarchy,
)

__all__ = [
    'ATTENTION_NAME',
    'HIERARCHIES',
    'HSAPatch',
    'NODE_FLOPS',
    'SEGMENT_UNITS',
    'SOFTMAX_FLOPS',
    'SPECIAL_TOKENS',
    'dense_attention_flops',
    'hsa_attention_flops',
    'patch_attention',
    'segment_ids',
    'token_hierarchy',
]

HIERARCHIES = ('flat', 'windows', 'sentences')
SPECIAL_TOKENS = ('root', 'inline')


def patch_attention(model: nn.Module,
                    layers: Union[None, int, Sequence[int]] = None,
                    hierarchy: str = 'windows',
                    branching: Sequence[int] = (2, 4, 8, 16),
                    boundaries: Union[None, Tensor,
                                      Sequence[Tensor]] = None,
                    special_tokens: str = 'root',
                    resolution: str = 'block',
                    causal: bool = False) -> 'HSAPatch':
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
    ``<s>`` and ``</s>`` for RoBERTa) are direct children of the root, so
    ``[CLS]`` attends to the top-level blocks, which cover every token, and
    every token sees both as blocks of their own (BERT's heads use them as
    sinks). With ``'inline'`` they are ordinary tokens of the first and the
    last window. In ``'sentences'``, tokens whose id is negative
    (:func:`segment_ids` gives ``-1`` to special tokens) are always
    children of the root.

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
        resolution (str): ``'block'`` (the paper's HSA) or ``'query'``
            (every token's own projection of its softmax row: closer to the
            original model, see :func:`~pyg_hsa.hsa_attention`).
        causal (bool): every token attends only to itself and the blocks
            on its left (needs ``resolution='query'``). The patched encoder
            was trained bidirectionally, so this is an ablation, not a way
            to patch decoders (causal self-attention modules are refused).
    """
    return HSAPatch(model, layers, hierarchy, branching, boundaries,
                    special_tokens, resolution, causal)


class HSAPatch:
    """The handle returned by :func:`patch_attention`; also a context
    manager that removes the patch on exit.

    The patch belongs to the patched modules (their config views hold it),
    so :func:`copy.deepcopy` and :mod:`pickle` of the model give a model
    patched like the original, with a copy of this handle of its own:
    :meth:`HSAPatch.of` finds it (to :meth:`remove` the copy's patch or set
    its boundaries).

    Attributes:
        model: the patched model.
        layers (tuple): the patched encoder layer indices (non-negative).
        hierarchy, branching, special_tokens, resolution, causal: as given.
    """
    def __init__(self, model, layers, hierarchy, branching, boundaries,
                 special_tokens, resolution='block', causal=False):
        check_choice(hierarchy, 'hierarchy', HIERARCHIES)
        check_choice(special_tokens, 'special_tokens', SPECIAL_TOKENS)
        self.branching = check_branching(branching)
        self.causal = check_bool(causal, 'causal')
        check_variant(resolution, self.causal, self_loops=True)
        self.resolution = resolution
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

        modules = self_attention_modules(model)
        self.layers = check_layers(layers, len(modules))
        self.model = model
        self._modules: Dict[int, nn.Module] = {}
        self._configs: Dict[int, object] = {}
        for i in self.layers:
            if patch_of(modules[i]) is not None:
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
        module.config = ConfigView(module.config, self)

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
        self._modules, self._configs = {}, {}
        self._cache = None

    @staticmethod
    def of(model: nn.Module) -> List['HSAPatch']:
        """The patches applied to the encoder layers of :obj:`model`, in
        layer order, e.g. the handle of a copied or unpickled patched
        model."""
        patches = []
        for module in self_attention_modules(model):
            patch = patch_of(module)
            if patch is not None and patch not in patches:
                patches.append(patch)
        return patches

    def __getstate__(self) -> dict:
        # Copies and pickles leave out the cached forest (rebuilt on use).
        return dict(self.__dict__, _cache=None, _probed=None)

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
                                f"{describe(boundaries)})")
            shape = boundaries[0].shape if isinstance(
                boundaries[0], Tensor) else None
            self._boundaries = tuple(check_segments(boundaries, shape))
        self._version += 1
        self._cache = None

    def hierarchy_for(self, valid: Tensor) -> Tuple[Tree, Tensor]:
        """The compiled forest for a batch whose non-padding tokens are
        :obj:`valid` (``[B, L]``), and the flat indices ``b * L + t`` of its
        leaves. The last one is cached (all patched layers of a forward
        share it)."""
        valid = check_valid(valid)
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
            arguments['root_tokens'] = first_and_last(valid)
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
        check_variant(self.resolution, self.causal, dropout=dropout,
                      hint="Here it is the model's attention dropout, "
                      "applied in training mode: set it to 0 (e.g. "
                      "config.attention_probs_dropout_prob = 0.0 before "
                      "loading the model) or call model.eval()")
        if query.dim() != 4 or key.shape != query.shape or \
                value.shape[:3] != query.shape[:3]:
            raise ValueError(f"HSA needs self-attention inputs [B, H, L, C] "
                             f"of one shape (got query "
                             f"{tuple(query.shape)}, key {tuple(key.shape)}, "
                             f"value {tuple(value.shape)})")
        batch, heads, length, _ = query.shape
        valid = padding_mask(attention_mask, batch, length, query.device)
        out = value.new_zeros(batch * length, heads, value.size(-1))
        if not bool(valid.any()):
            return out.view(batch, length, heads, -1)
        tree, leaves = self.hierarchy_for(valid)

        def rows(x: Tensor) -> Tensor:
            return x.transpose(1, 2).reshape(batch * length, heads,
                                             x.size(-1))[leaves]

        mixed = hsa_attention(rows(query), rows(key), rows(value), tree,
                              self_loops=True, scale=scaling,
                              dropout=dropout, resolution=self.resolution,
                              causal=self.causal)
        return out.index_copy(0, leaves, mixed).view(batch, length, heads, -1)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(layers={list(self.layers)}, '
                f'hierarchy={self.hierarchy!r}, branching={self.branching}, '
                f'special_tokens={self.special_tokens!r}, '
                f'resolution={self.resolution!r}, causal={self.causal}, '
                f'active={self.active})')
