import pytest
import torch

from pyg_hsa import Tree, hsa_attention
from pyg_hsa.nn import HSAEncoderLayer


def test_hsa_encoder_layer_is_the_post_norm_block():
    torch.manual_seed(0)
    parent = torch.tensor([5, 5, 5, 6, 6, 7, 7, -1])
    tree = Tree.from_parent(parent)
    x = torch.randn(5, 8, dtype=torch.float64)
    layer = HSAEncoderLayer(8, heads=2, ffn_channels=16).double().eval()
    assert str(layer) == 'HSAEncoderLayer(8, heads=2)'
    out = layer(x, tree)
    assert out.shape == (5, 8)

    attn = layer.attn
    q = attn.norm_query(attn.lin_query(x).view(5, 2, 4))
    k = attn.norm_key(attn.lin_key(x).view(5, 2, 4))
    v = attn.lin_value(x).view(5, 2, 4)
    hsa = hsa_attention(q, k, v, tree, self_loops=True).reshape(5, 8)
    h = layer.norm_attn(x + layer.lin_out(hsa))
    expected = layer.norm_ffn(h + layer.ffn(h))
    torch.testing.assert_close(out, expected)


def test_hsa_encoder_layer_checks_heads_and_resets():
    with pytest.raises(ValueError, match='divisible'):
        HSAEncoderLayer(10, heads=4)
    layer = HSAEncoderLayer(8, heads=2)
    before = layer.lin_out.weight.clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.lin_out.weight)


def test_causal_encoder_layers_keep_the_past_unchanged():
    # Windows of 4, then 2 windows, then the root: every subtree is a
    # contiguous run of leaves, so a causal stack is exactly causal.
    parent = torch.cat([16 + torch.arange(16) // 4,
                        20 + torch.arange(4) // 2, torch.tensor([22, 22]),
                        torch.tensor([-1])])
    tree = Tree.from_parent(parent, 16)
    torch.manual_seed(0)
    layers = torch.nn.Sequential(*[
        HSAEncoderLayer(8, heads=2, resolution='query', causal=True,
                        dropout=0.1, attention_dropout=0.0)
        for _ in range(2)
    ]).double().eval()
    assert str(layers[0]) == \
        "HSAEncoderLayer(8, heads=2, resolution='query', causal=True)"
    assert layers[0].attn.dropout == 0.0  # no dropout on these weights

    def run(x):
        for layer in layers:
            x = layer(x, tree)
        return x

    x = torch.randn(16, 8, dtype=torch.float64)
    out = run(x)
    for t in (1, 5, 12):
        changed = x.clone()
        changed[t:] = torch.randn(16 - t, 8, dtype=torch.float64)
        assert torch.equal(run(changed)[:t], out[:t])
        assert not torch.equal(run(changed)[t:], out[t:])
