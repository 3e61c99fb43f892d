"""Sentence and paragraph ids from texts and a fast tokenizer's offsets
(pyg_hsa.integrations.segments), for single texts and text pairs."""
import pytest


def test_segment_ids(minilm):
    from pyg_hsa.integrations.transformers import segment_ids
    _, tokenizer = minilm
    texts = ['One two. Three four!\n\nFive (six?) Seven', 'Eight']
    enc = tokenizer(texts, padding=True, return_offsets_mapping=True,
                    return_tensors='pt')
    tokens = tokenizer.convert_ids_to_tokens(enc['input_ids'][0])
    assert tokens == ['[CLS]', 'one', 'two', '.', 'three', 'four', '!',
                      'five', '(', 'six', '?', ')', 'seven', '[SEP]']
    sentences = segment_ids(texts, enc)
    assert sentences[0].tolist() == [-1, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2,
                                     3, -1]
    assert sentences[1].tolist() == [-1, 0, -1] + [-1] * 11
    paragraphs = segment_ids(texts, enc, unit='paragraph')
    assert paragraphs[0].tolist() == [-1] + [0] * 6 + [1] * 6 + [-1]
    # One text, unbatched and as lists.
    single = tokenizer(texts[1], return_offsets_mapping=True)
    assert segment_ids(texts[1], single).tolist() == [[-1, 0, -1]]
    with pytest.raises(ValueError, match='return_offsets_mapping'):
        segment_ids(texts, {'input_ids': enc['input_ids']})
    with pytest.raises(ValueError, match='unit'):
        segment_ids(texts, enc, unit='word')
    with pytest.raises(ValueError, match='one row per text'):
        segment_ids(texts[:1], enc)
    with pytest.raises(TypeError, match="'texts' must be a string"):
        segment_ids([1, 2], enc)


PAIRS_A = ['One two. Three!', 'Eight']
PAIRS_B = ['Four five. Six', 'Nine. Ten\n\nEleven']


def test_segment_ids_of_text_pairs(minilm):
    from pyg_hsa.integrations.segments import segment_ids
    _, tokenizer = minilm
    enc = tokenizer(PAIRS_A, PAIRS_B, padding=True,
                    return_offsets_mapping=True, return_tensors='pt')
    tokens = [tokenizer.convert_ids_to_tokens(row)
              for row in enc['input_ids']]
    assert tokens[0] == ['[CLS]', 'one', 'two', '.', 'three', '!', '[SEP]',
                         'four', 'five', '.', 'six', '[SEP]']
    assert tokens[1] == ['[CLS]', 'eight', '[SEP]', 'nine', '.', 'ten',
                         'eleven', '[SEP]'] + ['[PAD]'] * 4
    # The second text's sentences by its own offsets, counted on after the
    # first text's.
    sentences = segment_ids(PAIRS_A, enc, text_pair=PAIRS_B)
    assert sentences.tolist() == [
        [-1, 0, 0, 0, 1, 1, -1, 2, 2, 2, 3, -1],
        [-1, 0, -1, 1, 1, 2, 3, -1] + [-1] * 4,
    ]
    paragraphs = segment_ids(PAIRS_A, enc, 'paragraph', text_pair=PAIRS_B)
    assert paragraphs.tolist() == [
        [-1, 0, 0, 0, 0, 0, -1, 1, 1, 1, 1, -1],
        [-1, 0, -1, 1, 1, 1, 2, -1] + [-1] * 4,
    ]
    # A plain mapping: the token types tell the texts apart.
    plain = {key: enc[key] for key in ('offset_mapping', 'token_type_ids')}
    assert segment_ids(PAIRS_A, plain, text_pair=PAIRS_B).equal(sentences)
    # One pair, unbatched.
    one = tokenizer(PAIRS_A[0], PAIRS_B[0], return_offsets_mapping=True)
    assert segment_ids(PAIRS_A[0], one, text_pair=PAIRS_B[0]).tolist() == \
        [sentences[0].tolist()]


def test_segment_ids_refuse_pairs_they_cannot_place(minilm):
    from pyg_hsa.integrations.segments import segment_ids
    _, tokenizer = minilm
    enc = tokenizer(PAIRS_A, PAIRS_B, padding=True,
                    return_offsets_mapping=True, return_tensors='pt')
    with pytest.raises(ValueError, match='holds text pairs.*text_pair='):
        segment_ids(PAIRS_A, enc)
    with pytest.raises(ValueError, match="'text_pair' has 1 texts but "
                       "'texts' has 2"):
        segment_ids(PAIRS_A, enc, text_pair=PAIRS_B[:1])
    with pytest.raises(ValueError, match='Cannot tell which tokens'):
        segment_ids(PAIRS_A, {'offset_mapping': enc['offset_mapping']},
                    text_pair=PAIRS_B)
    with pytest.raises(TypeError, match="'text_pair' must be a string"):
        segment_ids(PAIRS_A, enc, text_pair=[None, None])
