r"""What each variant of HSA supports, declared once and checked once.

A *variant* is what :obj:`resolution` and :obj:`causal` select:

=========  ==============  ==========  =======  =================  =========
variant    selected by     self loops  dropout  attention weights  positions
=========  ==============  ==========  =======  =================  =========
block      ``'block'``     optional    yes      yes                yes
query      ``'query'``     optional    no       no                 yes
causal     ``'query'`` +   required    no       no                 yes
           ``causal``
=========  ==============  ==========  =======  =================  =========

``'block'`` with :obj:`causal` is no variant: every leaf of a block attends
with the weights of the block's mean query, which includes the queries of
the block's later leaves. :func:`check_variant` is the one check of these
rules; :func:`~pyg_hsa.hsa_attention`, :func:`~pyg_hsa.hsa_dense`, the
layers (at construction and per call) and the transformers integration all
call it, and an unsupported option raises a :class:`ValueError` naming the
option and the variant (nothing is switched off silently). A new variant or
kernel is one new row of :data:`VARIANTS`.
"""
from typing import Dict, NamedTuple, Optional

from pyg_hsa.utils.checks import check_choice


class Variant(NamedTuple):
    """One variant of HSA and what it supports."""
    name: str
    resolution: str
    causal: bool
    #: Dropout on the attention weights.
    dropout: bool
    #: ``return_attention_weights`` (per sibling edge).
    attention_weights: bool
    #: Position vectors ``pe``.
    positions: bool
    #: Needs ``self_loops=True``.
    needs_self_loops: bool
    #: Why the unsupported options are unsupported (for messages).
    why: str = ''


VARIANTS: Dict[str, Variant] = {
    'block': Variant('block', 'block', causal=False, dropout=True,
                     attention_weights=True, positions=True,
                     needs_self_loops=False),
    'query': Variant('query', 'query', causal=False, dropout=False,
                     attention_weights=False, positions=True,
                     needs_self_loops=False,
                     why='its weights are per leaf and block, not per '
                     'sibling edge'),
    'causal': Variant('causal', 'query', causal=True, dropout=False,
                      attention_weights=False, positions=True,
                      needs_self_loops=True,
                      why='its weights are per leaf and block, not per '
                      'sibling edge'),
}
RESOLUTIONS = ('block', 'query')
CAUSAL_LEAK = (
    "causal=True needs resolution='query': with resolution='block' every "
    "leaf of a block attends with the weights of the block's mean query, "
    "which includes the queries of the block's later leaves, so the "
    "earlier leaves would see the future")


def variant_of(resolution: str, causal: bool) -> Variant:
    """The variant :obj:`resolution` and :obj:`causal` select."""
    check_choice(resolution, 'resolution', RESOLUTIONS)
    if causal and resolution != 'query':
        raise ValueError(CAUSAL_LEAK)
    return VARIANTS['causal' if causal else resolution]


def check_variant(resolution: str = 'block', causal: bool = False, *,
                  self_loops: bool = True, dropout: float = 0.0,
                  return_attention_weights: bool = False,
                  positions: bool = False,
                  hint: Optional[str] = None) -> Variant:
    """The variant :obj:`resolution` and :obj:`causal` select, after
    checking that it supports the options asked for (arguments already of
    the right types); raises a :class:`ValueError` naming the option and
    the variant otherwise (:obj:`hint`, if given, ends the message)."""
    variant = variant_of(resolution, causal)
    asked = (('dropout', dropout > 0, variant.dropout,
              f'dropout={dropout}', 'pass dropout=0.0'),
             ('attention weights', return_attention_weights,
              variant.attention_weights, 'return_attention_weights=True',
              'call it without return_attention_weights'),
             ('positions', positions, variant.positions, 'pe',
              'pass pe=None'))
    selected = f"resolution={variant.resolution!r}" + (
        ', causal=True' if variant.causal else '')
    for _, wanted, supported, option, fix in asked:
        if wanted and not supported:
            why = f': {variant.why}' if variant.why else ''
            other = '' if variant.name == 'block' else \
                " or use resolution='block'" + (
                    ' without causal' if variant.causal else '')
            raise ValueError(
                f"'{option}' is not supported by the '{variant.name}' variant "
                f"of HSA ({selected}){why}; {fix}{other}" +
                (f'. {hint}' if hint else ''))
    if variant.needs_self_loops and not self_loops:
        raise ValueError(
            f"causal=True needs self_loops=True (the '{variant.name}' "
            f"variant of HSA, {selected}): a leaf attends to itself and the "
            f"blocks on its left, and the first leaf has nothing else")
    return variant
