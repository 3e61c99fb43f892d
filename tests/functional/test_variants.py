"""pyg_hsa.functional.variants: one declaration of what each variant of
HSA supports, and every entry point (hsa_attention, hsa_dense,
hsa_attention_flops, HSAConv, HSAEncoderLayer, the transformers patch)
refusing what it does not, with the same ValueError, before any work."""
import re

import pytest
import torch

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.functional.flops import hsa_attention_flops
from pyg_hsa.functional.variants import VARIANTS, check_variant, variant_of
from pyg_hsa.nn import HSAConv, HSAEncoderLayer
from pyg_hsa.testing import random_qkv

TREE = Tree.from_parent(torch.tensor([4, 4, 5, 5, 6, 6, -1]))
QUERY_DROPOUT = r"'dropout=0.1' is not supported by the 'query' variant"
QUERY_WEIGHTS = (r"'return_attention_weights=True' is not supported by the "
                 r"'(query|causal)' variant")
NO_SELF_LOOPS = r"causal=True needs self_loops=True \(the 'causal' variant"
LEAK = r"causal=True needs resolution='query'.*see the future"


def test_the_table():
    assert variant_of('block', False) is VARIANTS['block']
    assert variant_of('query', False) is VARIANTS['query']
    assert variant_of('query', True) is VARIANTS['causal']
    assert [name for name, v in VARIANTS.items() if v.dropout] == ['block']
    assert [name for name, v in VARIANTS.items()
            if v.attention_weights] == ['block']
    assert all(v.positions for v in VARIANTS.values())
    assert [name for name, v in VARIANTS.items()
            if v.needs_self_loops] == ['causal']
    with pytest.raises(ValueError, match=LEAK):
        variant_of('block', True)


@pytest.mark.parametrize('options, match', [
    (dict(resolution='query', dropout=0.1), QUERY_DROPOUT),
    (dict(resolution='query', return_attention_weights=True), QUERY_WEIGHTS),
    (dict(resolution='query', causal=True, self_loops=True,
          return_attention_weights=True), QUERY_WEIGHTS),
    (dict(resolution='query', causal=True), NO_SELF_LOOPS),
    (dict(self_loops=True, causal=True), LEAK),
])
def test_hsa_attention_refuses_what_the_variant_lacks(options, match):
    q, k, v = random_qkv(4)
    with pytest.raises(ValueError, match=match):
        hsa_attention(q, k, v, TREE, **options)
    # The same message from the one check itself.
    options = dict(options, self_loops=options.get('self_loops', False))
    message = str(pytest.raises(ValueError, check_variant, **options).value)
    assert re.search(match, message)


def test_hsa_dense_and_flops_refuse_causal_without_self_loops():
    q, k, _ = random_qkv(4)
    with pytest.raises(ValueError, match=NO_SELF_LOOPS):
        hsa_dense(q, k, TREE, resolution='query', causal=True)
    with pytest.raises(ValueError, match=LEAK):
        hsa_dense(q, k, TREE, self_loops=True, causal=True)
    with pytest.raises(ValueError, match="'resolution' must be"):
        hsa_attention_flops(TREE, 2, 4, resolution='rows')


def test_hsa_conv_refuses_at_construction_and_per_call():
    with pytest.raises(ValueError, match=QUERY_DROPOUT):
        HSAConv(4, 4, resolution='query', dropout=0.1)
    with pytest.raises(ValueError, match=NO_SELF_LOOPS):
        HSAConv(4, 4, resolution='query', causal=True)
    with pytest.raises(ValueError, match=LEAK):
        HSAConv(4, 4, self_loops=True, causal=True)
    conv = HSAConv(4, 4, resolution='query')
    with pytest.raises(ValueError, match=QUERY_WEIGHTS):
        conv(torch.randn(4, 4), TREE, return_attention_weights=True)


def test_hsa_encoder_layer_says_how_to_keep_its_other_dropout():
    with pytest.raises(ValueError, match=QUERY_DROPOUT + r".*pass "
                       r"attention_dropout=0.0"):
        HSAEncoderLayer(8, heads=2, resolution='query', dropout=0.1)
    with pytest.raises(ValueError, match=QUERY_DROPOUT):
        HSAEncoderLayer(8, heads=2, resolution='query',
                        attention_dropout=0.1)
    layer = HSAEncoderLayer(8, heads=2, resolution='query', dropout=0.1,
                            attention_dropout=0.0)
    assert (layer.dropout, layer.attn.dropout) == (0.1, 0.0)
    block = HSAEncoderLayer(8, heads=2, dropout=0.1)
    assert block.attn.dropout == 0.1


def test_transformers_patch_refuses_attention_dropout_in_training():
    pytest.importorskip('transformers')
    from transformers import BertConfig, BertModel

    from pyg_hsa.integrations.transformers import patch_attention
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        attention_probs_dropout_prob=0.1)
    model = BertModel(config)
    ids = torch.randint(3, 50, (2, 7))
    with pytest.raises(ValueError, match=LEAK):
        patch_attention(model, causal=True)
    with patch_attention(model, resolution='query', branching=(2, )):
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)  # no dropout in evaluation
        model.train()
        with pytest.raises(ValueError, match=QUERY_DROPOUT +
                           r".*model's attention dropout"):
            model(input_ids=ids)
