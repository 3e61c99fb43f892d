"""Zero-shot HSA in Hugging Face encoders: the patch on the packaged
pre-trained all-MiniLM-L6-v2 (flat == original, remove() restores it
exactly, padding-free batching, errors) and on small random encoders
(copies and pickles keep the patch). The forests, sentence ids and FLOP
counts have their own test files."""
import copy
import importlib.util
import pickle
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

import pyg_hsa.integrations.transformers as integration
from pyg_hsa.integrations.dispatch import ConfigView
from pyg_hsa.integrations.encoders import first_and_last
from pyg_hsa.integrations.transformers import (
    HSAPatch,
    patch_attention,
    segment_ids,
)

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    'The "if" statement is used for conditional execution. It selects '
    'exactly one of the suites by evaluating the expressions one by one '
    'until one is found to be true; then that suite is executed.\n\nIf '
    'all expressions are false, the suite of the "else" clause is run.',
    'A short one.',
    'Names refer to objects. Names are introduced by name binding '
    'operations! Is every block a piece of Python program text that is '
    'executed as a unit? Yes: a module, a function body and a class '
    'definition are blocks.',
]


# The patch on the pre-trained MiniLM #####################################


def run(model, tokenizer, texts, handle=None, **kwargs):
    enc = tokenizer(texts, padding=True, return_tensors='pt',
                    return_offsets_mapping=True)
    if handle is not None and handle.hierarchy == 'sentences':
        handle.set_boundaries(segment_ids(texts, enc))
    with torch.no_grad():
        out = model(input_ids=enc['input_ids'],
                    attention_mask=enc['attention_mask'], **kwargs)
    return out, enc['attention_mask'].bool()


def test_flat_reproduces_minilm_and_remove_restores_it(minilm):
    model, tokenizer = minilm
    base, mask = run(model, tokenizer, TEXTS)
    configs = [module.config for module in _self_attention(model)]
    with patch_attention(model, hierarchy='flat') as handle:
        assert patched_layers(model) == list(range(6))
        flat, _ = run(model, tokenizer, TEXTS)
        single, _ = run(model, tokenizer, TEXTS[:1])
    assert not handle.active
    diff = (flat.last_hidden_state - base.last_hidden_state)[mask]
    assert diff.abs().max() < 1e-5
    # Padding positions come out as zeros from HSA, so compare a single
    # (unpadded) text on all positions too.
    alone, _ = run(model, tokenizer, TEXTS[:1])
    torch.testing.assert_close(single.last_hidden_state,
                               alone.last_hidden_state, atol=1e-5,
                               rtol=0)
    # remove(): the very same config objects, bit-identical outputs.
    restored = [module.config for module in _self_attention(model)]
    assert all(now is before for now, before in zip(restored, configs))
    assert not patched_layers(model)
    again, _ = run(model, tokenizer, TEXTS)
    assert torch.equal(again.last_hidden_state, base.last_hidden_state)
    handle.remove()  # idempotent
    assert model.config._attn_implementation == 'sdpa'


def test_windows_and_sentences_change_minilm_only_where_patched(minilm):
    model, tokenizer = minilm
    base, mask = run(model, tokenizer, TEXTS, output_hidden_states=True)
    for hierarchy, branching in (('windows', (2, 4, 8, 16)),
                                 ('sentences', ()), ('sentences', (4, ))):
        with patch_attention(model, layers=[-2], hierarchy=hierarchy,
                             branching=branching) as handle:
            assert handle.layers == (4, )
            out, _ = run(model, tokenizer, TEXTS, handle,
                         output_hidden_states=True)
        hidden = out.hidden_states
        assert len(hidden) == 7  # embeddings + 6 layers
        for i in range(5):  # embeddings and layers 0..3: untouched
            assert torch.equal(hidden[i], base.hidden_states[i])
        for i in (5, 6):
            assert torch.isfinite(hidden[i]).all()
            assert (hidden[i] - base.hidden_states[i])[mask].abs().max() \
                > 1e-2
    assert not patched_layers(model)


@pytest.mark.slow
def test_minilm_batched_equals_one_by_one(minilm):
    model, tokenizer = minilm
    for kwargs in ({'hierarchy': 'windows'},
                   {'hierarchy': 'sentences', 'branching': (3, ),
                    'special_tokens': 'inline'}):
        with patch_attention(model, **kwargs) as handle:
            batched, mask = run(model, tokenizer, TEXTS, handle)
            for i, text in enumerate(TEXTS):
                alone, _ = run(model, tokenizer, [text], handle)
                n = int(mask[i].sum())
                torch.testing.assert_close(
                    batched.last_hidden_state[i, :n],
                    alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)


def test_patch_attention_rejects_bad_arguments(minilm):
    model, tokenizer = minilm
    with pytest.raises(TypeError, match='BERT/RoBERTa'):
        patch_attention(nn.Linear(2, 2))
    with pytest.raises(TypeError, match='transformers model'):
        patch_attention('bert')
    with pytest.raises(ValueError, match='out of range'):
        patch_attention(model, layers=[6])
    with pytest.raises(ValueError, match='twice'):
        patch_attention(model, layers=[1, -5])
    with pytest.raises(ValueError, match='empty'):
        patch_attention(model, layers=[])
    with pytest.raises(TypeError, match='layers'):
        patch_attention(model, layers=[1.0])
    with pytest.raises(ValueError, match='hierarchy'):
        patch_attention(model, hierarchy='paragraphs')
    with pytest.raises(ValueError, match='branching'):
        patch_attention(model, branching=(2, 1))
    with pytest.raises(ValueError, match='special_tokens'):
        patch_attention(model, special_tokens='cls')
    with pytest.raises(ValueError, match="only apply to hierarchy"):
        patch_attention(model, boundaries=torch.zeros(1, 3).long())
    with pytest.raises(TypeError, match='integer'):
        patch_attention(model, hierarchy='sentences',
                        boundaries=torch.zeros(1, 3))
    with pytest.raises(ValueError, match='shape'):
        patch_attention(model, hierarchy='sentences',
                        boundaries=[torch.zeros(1, 3).long(),
                                    torch.zeros(1, 4).long()])
    assert not patched_layers(model)

    with patch_attention(model, layers=[0, 1]):
        with pytest.raises(ValueError, match='already patched'):
            patch_attention(model, layers=[1, 2])
    assert not patched_layers(model)

    with patch_attention(model, hierarchy='sentences') as handle:
        with pytest.raises(ValueError, match='set_boundaries'):
            run(model, tokenizer, TEXTS)
        handle.set_boundaries(torch.zeros(2, 5).long())
        with pytest.raises(ValueError, match='for every batch'):
            run(model, tokenizer, TEXTS)

    # A mask that is not a padding mask cannot be followed.
    with patch_attention(model, layers=0) as handle:
        q = torch.randn(1, 2, 4, 3)
        causal = torch.ones(4, 4, dtype=torch.bool).tril().view(1, 1, 4, 4)
        with pytest.raises(ValueError, match='padding masks'):
            handle.attend(q, q, q, causal)
        padding = torch.tensor([[True, True, True, False]])
        out = handle.attend(q, q, q, padding)
        assert not bool(out[0, 3].any())
        # The same padding as 4D boolean (broadcast or not) and additive
        # masks, as transformers builds them for sdpa and eager.
        additive = torch.where(padding, 0.0, torch.finfo(q.dtype).min)
        for mask in (padding.view(1, 1, 1, 4),
                     padding.view(1, 1, 1, 4).expand(1, 1, 4, 4),
                     additive.view(1, 1, 1, 4).expand(1, 1, 4, 4)):
            assert torch.equal(handle.attend(q, q, q, mask), out)
        with pytest.raises(ValueError, match='Unexpected attention mask'):
            handle.attend(q, q, q, padding.view(1, 1, 4, 1))


def test_layers_that_bypass_the_attention_interface_are_refused():
    class Plain(nn.Module):  # mixes values itself, no interface
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(hidden_size=4)
            self.query = nn.Linear(4, 4)

        def forward(self, hidden_states, **kwargs):
            return self.query(hidden_states), None

    model = nn.Module()
    model.encoder = nn.Module()
    layer = nn.Module()
    layer.attention = nn.Module()
    layer.attention.self = Plain()
    model.encoder.layer = nn.ModuleList([layer])
    config = layer.attention.self.config
    with pytest.raises(TypeError, match='AttentionInterface'):
        patch_attention(model)
    assert layer.attention.self.config is config  # rolled back


def sharpen(model):
    """Peaked attention (unlike at initialisation), so that HSA differs
    clearly from softmax attention."""
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.query.weight.mul_(30)
            layer.attention.self.key.weight.mul_(30)


@pytest.mark.parametrize('family', ['bert-eager', 'roberta-sdpa'])
def test_flat_reproduces_small_random_encoders(family):
    """Other members of the family and the eager (additive) masks."""
    if family == 'bert-eager':
        config = BertConfig(vocab_size=50, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64)
        config._attn_implementation = 'eager'
        model = BertModel(config).eval()
    else:
        config = RobertaConfig(vocab_size=50, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64)
        config._attn_implementation = 'sdpa'
        model = RobertaModel(config).eval()
    sharpen(model)
    ids = torch.randint(3, 50, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).last_hidden_state
        with patch_attention(model, hierarchy='flat'):
            flat = model(input_ids=ids, attention_mask=mask)
        with patch_attention(model, branching=(2, )):
            windows = model(input_ids=ids, attention_mask=mask)
    valid = mask.bool()
    torch.testing.assert_close(flat.last_hidden_state[valid], base[valid],
                               atol=1e-5, rtol=1e-5)
    assert (windows.last_hidden_state - base)[valid].abs().max() > 1e-3


def test_gradients_flow_through_the_patch():
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)
    model = BertModel(config).train()
    ids = torch.randint(3, 50, (2, 7))
    with patch_attention(model, branching=(2, )):
        out = model(input_ids=ids).last_hidden_state
        out.square().sum().backward()
    grad = model.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    assert grad.abs().sum() > 0


def zero_shot_example():
    """The example script as a module, run in this process (the libraries
    are imported already): its main() takes the command-line arguments."""
    path = ROOT / 'examples' / 'zero_shot_minilm.py'
    spec = importlib.util.spec_from_file_location('zero_shot_minilm', path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


@pytest.mark.slow
def test_example_script_smoke(tmp_path, capsys):
    zero_shot_example().main(['--smoke', '--out', str(tmp_path)])
    printed = capsys.readouterr().out
    table = (tmp_path / 'results.md').read_text()
    assert table in printed
    flat = next(line for line in table.splitlines()
                if line.startswith('| 1 | flat | all 6 |'))
    # HSA on one level is softmax attention: same embeddings, same
    # neighbours; and it costs a little more than dense attention.
    assert '| 1.0000 / 1.0000 | 1.000 | 1.000 |' in flat
    assert '| -' in flat
    assert '| 2 | windows 2-4-8-16 | all 6 |' in table
    assert '| 3 | sentences, paragraphs | all 6 |' in table
    assert '| 32 | original (SDPA) |' in table
    assert table.count('faster') + table.count('slower') == 2
    assert 'Best fidelity with at least 50%' in table
    assert (tmp_path / 'fidelity_vs_flops.png').stat().st_size > 10_000


@pytest.mark.slow
def test_example_script_smoke_deletes_its_temporary_folder(
        tmp_path, monkeypatch, capsys):
    # Without --out, the smoke run writes to a temporary folder (here under
    # tmp_path) and deletes it at the end.
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    zero_shot_example().main(['--smoke'])
    assert not list(tmp_path.glob('zero_shot_smoke_*'))
    printed = capsys.readouterr().out
    assert '| 1 | flat | all 6 |' in printed  # the tables were printed
    wrote = re.search(r'^wrote (\S+) \(a temporary folder, now deleted: '
                      r'pass --out to keep the files\)$', printed, re.M)
    assert wrote is not None, printed[-300:]
    folder = Path(wrote.group(1))
    assert folder.parent == tmp_path
    assert folder.name.startswith('zero_shot_smoke_')


def _self_attention(model):
    return [layer.attention.self for layer in model.encoder.layer]


def patched_layers(model):
    return [i for i, m in enumerate(_self_attention(model))
            if type(m.config) is ConfigView]


def test_first_and_last_marks_the_ends_of_the_real_tokens():
    valid = torch.tensor([[False, True, True, True, False],
                          [True, False, False, False, False]])
    assert first_and_last(valid).tolist() == [
        [False, True, False, True, False],
        [True, False, False, False, False],
    ]


# Copies and pickles #######################################################


def tiny_bert():
    config = BertConfig(hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37,
                        vocab_size=100)
    model = BertModel(config).eval()
    sharpen(model)
    ids = torch.randint(3, 100, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    return model, ids, mask


def hidden(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def clone(model, how):
    if how == 'deepcopy':
        return copy.deepcopy(model)
    return pickle.loads(pickle.dumps(model))


@pytest.mark.parametrize('how', ['deepcopy', 'pickle'])
@pytest.mark.parametrize('hierarchy', ['windows', 'sentences'])
def test_copies_of_a_patched_model_keep_the_patch(how, hierarchy):
    model, ids, mask = tiny_bert()
    valid = mask.bool()
    plain = hidden(model, ids, mask)
    kwargs = {'branching': (2, 3)}
    if hierarchy == 'sentences':
        kwargs['boundaries'] = torch.arange(11).expand(2, 11) // 4
    handle = patch_attention(model, layers=[1], hierarchy=hierarchy,
                             **kwargs)
    patched = hidden(model, ids, mask)
    assert (patched - plain)[valid].abs().max() > 1e-3

    copied = clone(model, how)
    # The copy has a patch of its own, a copy of the original's.
    [twin] = HSAPatch.of(copied)
    assert twin is not handle and twin.model is copied and twin.active
    assert (twin.layers, twin.hierarchy, twin.branching) == \
        ((1, ), hierarchy, (2, 3))
    assert twin._cache is None  # the cached forest is not copied
    module = copied.encoder.layer[1].attention.self
    assert type(module.config) is ConfigView
    assert module.config._config is copied.config
    assert copied.encoder.layer[0].attention.self.config is copied.config
    assert torch.equal(hidden(copied, ids, mask), patched)

    # Removing either patch leaves the other model as it is.
    handle.remove()
    assert torch.equal(hidden(model, ids, mask), plain)
    assert torch.equal(hidden(copied, ids, mask), patched)
    twin.remove()
    assert module.config is copied.config
    assert HSAPatch.of(copied) == []
    assert torch.equal(hidden(copied, ids, mask), plain)

    # A copy of the model after remove() is the plain model; it can be
    # patched again.
    again = clone(model, how)
    assert HSAPatch.of(again) == []
    assert torch.equal(hidden(again, ids, mask), plain)
    with patch_attention(again, layers=[1], hierarchy=hierarchy, **kwargs):
        assert torch.equal(hidden(again, ids, mask), patched)


def test_patch_of_finds_the_handles():
    model, _, _ = tiny_bert()
    assert HSAPatch.of(model) == []
    with patch_attention(model, layers=[1]) as second:
        with patch_attention(model, layers=[0], hierarchy='flat') as first:
            assert HSAPatch.of(model) == [first, second]
        assert HSAPatch.of(model) == [second]
    with pytest.raises(TypeError, match='BERT/RoBERTa'):
        HSAPatch.of(nn.Linear(2, 2))


def test_public_names_stay_importable_from_the_patch_module():
    from pyg_hsa.functional import flops
    from pyg_hsa.integrations import dispatch, segments
    from pyg_hsa.utils import token_forest
    for name in ('ATTENTION_NAME', 'HIERARCHIES', 'HSAPatch', 'NODE_FLOPS',
                 'SEGMENT_UNITS', 'SOFTMAX_FLOPS', 'SPECIAL_TOKENS',
                 'dense_attention_flops', 'hsa_attention_flops',
                 'patch_attention', 'segment_ids', 'token_hierarchy'):
        assert name in integration.__all__
        assert hasattr(integration, name)
    assert integration.token_hierarchy is token_forest.token_hierarchy
    assert integration.segment_ids is segments.segment_ids
    assert integration.hsa_attention_flops is flops.hsa_attention_flops
    assert integration.dense_attention_flops is flops.dense_attention_flops
    assert integration.ATTENTION_NAME == dispatch.ATTENTION_NAME == \
        'pyg_hsa'


def test_query_resolution_is_closer_to_minilm(minilm):
    model, tokenizer = minilm
    base, mask = run(model, tokenizer, TEXTS)

    def mean_cosine(**options):
        with patch_attention(model, branching=(2, 4), **options) as handle:
            assert handle.resolution == options.get('resolution', 'block')
            out, _ = run(model, tokenizer, TEXTS)
        return torch.cosine_similarity(out.last_hidden_state[mask],
                                       base.last_hidden_state[mask]).mean()

    with patch_attention(model, hierarchy='flat', resolution='query'):
        flat, _ = run(model, tokenizer, TEXTS)
    torch.testing.assert_close(flat.last_hidden_state[mask],
                               base.last_hidden_state[mask], atol=1e-4,
                               rtol=1e-4)
    assert mean_cosine(resolution='query') > mean_cosine() + 0.01


def test_causal_patch_keeps_earlier_tokens_unchanged():
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32)
    model = BertModel(config).eval()
    ids = torch.randint(3, 50, (1, 12))
    changed = ids.clone()
    changed[0, 7:-1] = (changed[0, 7:-1] + 1) % 47 + 3
    with patch_attention(model, branching=(2, 2), resolution='query',
                         causal=True) as handle:
        assert 'causal=True' in repr(handle)
        with torch.no_grad():
            a = model(input_ids=ids).last_hidden_state
            b = model(input_ids=changed).last_hidden_state
    torch.testing.assert_close(a[0, :7], b[0, :7], rtol=0, atol=1e-6)
    assert (a[0, 7:] - b[0, 7:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match='see the future'):
        patch_attention(model, causal=True)
