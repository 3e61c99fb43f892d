r"""Per-token sentence and paragraph ids from the texts of a batch and the
character offsets a fast tokenizer gives, for the ``'sentences'``
hierarchy of :func:`~pyg_hsa.integrations.transformers.patch_attention`.
"""
import re
from collections.abc import Mapping
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from pyg_hsa.utils.checks import check_choice, describe

__all__ = ['SEGMENT_UNITS', 'segment_ids']

SEGMENT_UNITS = ('sentence', 'paragraph')

# A sentence ends after . ! or ? (and closing quotes or brackets) followed
# by white space; a blank line ends a paragraph (and so a sentence too).
_PARAGRAPH_END = r'\n[ \t]*\n\s*'
_UNIT_END = {
    'sentence': re.compile(r'[.!?][\'")\]]*\s+|' + _PARAGRAPH_END),
    'paragraph': re.compile(_PARAGRAPH_END),
}


def segment_ids(texts: Union[str, Sequence[str]], encoding,
                unit: str = 'sentence', *,
                text_pair: Union[None, str, Sequence[str]] = None) -> Tensor:
    r"""Per-token sentence (or paragraph) ids for the ``'sentences'``
    hierarchy, from the character offsets of a fast tokenizer.

    Sentences end at ``.``, ``!`` or ``?`` (and any closing quotes or
    brackets) followed by white space, and at blank lines; paragraphs end
    at blank lines. This is a plain rule (abbreviations such as "e.g."
    also end a sentence); pass your own ids to
    :meth:`~pyg_hsa.integrations.transformers.HSAPatch.set_boundaries` for
    anything better.

    For text pairs (``tokenizer(texts, text_pair, ...)``) pass the second
    texts as :obj:`text_pair`: the tokens of each text are placed by that
    text's own offsets, and the units of the second text are counted on
    after those of the first, so no unit spans both. Which text a token
    belongs to comes from the encoding's ``sequence_ids()`` (or, for a
    plain mapping, its ``token_type_ids``).

    Args:
        texts (str or Sequence[str]): the (first) texts of the batch, as
            given to the tokenizer.
        encoding: the tokenizer's output for :obj:`texts`, made with
            ``return_offsets_mapping=True``.
        unit (str): ``'sentence'`` or ``'paragraph'``.
        text_pair (str or Sequence[str], optional): the second texts, if
            the tokenizer was given pairs.

    Returns:
        LongTensor ``[B, L]``: the index of the unit each token lies in,
        counted from 0 in every row, and ``-1`` for special tokens
        (``[CLS]``, ``[SEP]``, ...: their offsets are empty) and padding,
        which :func:`~pyg_hsa.integrations.transformers.patch_attention`
        then places directly under the root.
    """
    check_choice(unit, 'unit', SEGMENT_UNITS)
    texts = _check_texts(texts, 'texts')
    offsets = _offsets(encoding, len(texts))
    start, end = offsets[..., 0].contiguous(), offsets[..., 1]
    special = end <= start  # special tokens and padding have empty spans
    ids = _unit_ids(texts, start, _UNIT_END[unit])
    text = _text_index(encoding, special.shape)
    if text_pair is None:
        if text is not None and bool((text[~special] == 1).any()):
            raise ValueError("'encoding' holds text pairs (some tokens "
                             "belong to a second text): pass the second "
                             "texts as text_pair=")
    else:
        pairs = _check_texts(text_pair, 'text_pair')
        if len(pairs) != len(texts):
            raise ValueError(f"'text_pair' has {len(pairs)} texts but "
                             f"'texts' has {len(texts)}")
        if text is None:
            raise ValueError("Cannot tell which tokens belong to the second "
                             "text: pass the tokenizer's own output (a "
                             "BatchEncoding with sequence_ids()) or one "
                             "with 'token_type_ids'")
        first = ~special & (text == 0)
        count = torch.where(first, ids, -1).amax(1, keepdim=True) + 1
        second = _unit_ids(pairs, start, _UNIT_END[unit]) + count
        ids = torch.where(text == 1, second, ids)
    return torch.where(special, -1, ids)


def _unit_ids(texts: List[str], start: Tensor, pattern) -> Tensor:
    """The unit of every token of row ``b`` in ``texts[b]``, by its start
    offset."""
    # Start of every unit, per text, padded with a large sentinel so that
    # one batched search finds the unit of every token.
    starts = [[0] + [m.end() for m in pattern.finditer(text)]
              for text in texts]
    width = max(len(s) for s in starts)
    sentinel = max(len(t) for t in texts) + 1
    table = torch.tensor([s + [sentinel] * (width - len(s)) for s in starts],
                         dtype=torch.long)
    return torch.searchsorted(table, start, right=True) - 1


def _check_texts(texts, name: str) -> List[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, Sequence) and texts and \
            all(isinstance(t, str) for t in texts):
        return list(texts)
    raise TypeError(f"'{name}' must be a string or a non-empty sequence of "
                    f"strings (got {describe(texts)})")


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


def _text_index(encoding, shape) -> Optional[Tensor]:
    """``[B, L]``: which text of a pair every token belongs to (0 or 1;
    -1 for special tokens where known), or :obj:`None` if the encoding
    cannot tell."""
    if getattr(encoding, 'is_fast', False):  # a fast tokenizer's output
        rows = [encoding.sequence_ids(i) for i in range(shape[0])]
        index = torch.tensor([[-1 if s is None else s for s in row]
                              for row in rows], dtype=torch.long)
    elif isinstance(encoding, Mapping) and 'token_type_ids' in encoding:
        index = torch.as_tensor(encoding['token_type_ids'],
                                dtype=torch.long).cpu()
        index = index.unsqueeze(0) if index.dim() == 1 else index
    else:
        return None
    if index.shape != shape:
        raise ValueError(f"'encoding' has token types of shape "
                         f"{tuple(index.shape)} for offsets of shape "
                         f"{tuple(shape)}")
    return index
