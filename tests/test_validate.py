"""Input checks of the functional core and of HSAConv: ``validate=True``
(NaN/inf, reported by argument, node type and first row) and the shape,
dtype and device checks that always run."""
import math

import numpy as np
import pytest
import torch

from torch_geometric.data import HeteroData

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.nn import HSAConv
from pyg_hsa.testing import random_qkv

PARENT = torch.tensor([5, 5, 5, 6, 6, 7, 7, -1])  # 5 leaves


def two_leaf_types(num_atoms=20, num_tokens=4):
    """Atoms (width 6) in two fragments, tokens (width 3) directly in the
    molecule; positions on atoms and fragments."""
    data = HeteroData()
    data['token'].x = torch.randn(num_tokens, 3, dtype=torch.float64)
    data['atom'].x = torch.randn(num_atoms, 6, dtype=torch.float64)
    data['atom'].pe = torch.randn(num_atoms, 2, dtype=torch.float64)
    data['fragment'].num_nodes = 2
    data['fragment'].pe = torch.randn(2, 2, dtype=torch.float64)
    data['molecule'].num_nodes = 1
    data['atom', 'in', 'fragment'].edge_index = torch.stack(
        [torch.arange(num_atoms), torch.arange(num_atoms) % 2])
    data['fragment', 'in', 'molecule'].edge_index = torch.tensor([[0, 1],
                                                                  [0, 0]])
    data['token', 'in', 'molecule'].edge_index = torch.stack(
        [torch.arange(num_tokens),
         torch.zeros(num_tokens, dtype=torch.long)])
    return data


def hetero_conv():
    return HSAConv({'token': 3, 'atom': 6}, 4, heads=2,
                   pos_channels={'atom': 2, 'fragment': 2}).double()


# ----------------------------------------------------- functional core


@pytest.mark.parametrize('name', ['q', 'k', 'v', 'pe'])
@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf])
def test_hsa_attention_validate_names_argument_and_row(name, value):
    q, k, v = random_qkv(5)
    pe = torch.randn(8, 2, dtype=torch.float64)
    args = dict(q=q, k=k, v=v, pe=pe)
    bad = args[name].clone()
    bad[3, -1] = value  # (the last entry of row 3; row 4 is finite)
    args[name] = bad
    match = (rf"'{name}' has a non-finite value \({value}\) at row 3; "
             rf"expected finite values")
    with pytest.raises(ValueError, match=match):
        hsa_attention(args['q'], args['k'], args['v'], PARENT,
                      pe=args['pe'], validate=True)
    if name != 'v':
        with pytest.raises(ValueError, match=match):
            hsa_dense(args['q'], args['k'], PARENT, pe=args['pe'],
                      validate=True)


def test_validate_is_off_by_default_and_changes_nothing_when_finite():
    q, k, v = random_qkv(5)
    pos = torch.randn(8, 2, 2, dtype=torch.float64)
    out = hsa_attention(q, k, v, PARENT, pe=pos)
    checked = hsa_attention(q, k, v, PARENT, pe=pos, validate=True)
    assert torch.equal(out, checked)
    assert torch.equal(hsa_dense(q, k, PARENT, pe=pos),
                       hsa_dense(q, k, PARENT, pe=pos, validate=True))
    # Without the check a NaN spreads silently: a key reaches every leaf
    # of its example (through its group's mean key).
    k[0, 0, 0] = math.nan
    out = hsa_attention(q, k, v, PARENT)
    assert bool(out[:, 0].isnan().all())


def test_validate_reports_the_first_bad_row_in_half_precision():
    q, k, v = (t.half() for t in random_qkv(5))
    k[4, 1, 0] = math.inf
    k[2, 0, 2] = math.nan
    with pytest.raises(ValueError, match=r"'k' .*\(nan\) at row 2;"):
        hsa_attention(q, k, v, PARENT, validate=True)


def test_validate_keeps_the_autograd_graph():
    q, k, v = random_qkv(5)
    q.requires_grad_()
    out = hsa_attention(q, k, v, PARENT, validate=True)
    grad, = torch.autograd.grad(out.sum(), q)
    expected, = torch.autograd.grad(hsa_attention(q, k, v, PARENT).sum(), q)
    assert torch.equal(grad, expected)


def test_heads_channels_scale_and_dropout_checks():
    q, k, v = random_qkv(5)
    with pytest.raises(ValueError, match=r"'q' must have at least one head "
                       r"and one channel \(got shape \(5, 2, 0\)\)"):
        hsa_attention(q[..., :0], k[..., :0], v, PARENT)
    with pytest.raises(ValueError, match=r"'v' must have at least one head"):
        hsa_attention(q, k, v[..., :0], PARENT)
    with pytest.raises(ValueError, match=r"'q' must have at least one head"):
        hsa_dense(q[:, :0], k[:, :0], PARENT)
    with pytest.raises(ValueError, match=r"'dropout' must lie in \[0, 1\) "
                       r"\(got 1.0\)"):
        hsa_attention(q, k, v, PARENT, dropout=1.0)
    with pytest.raises(ValueError, match=r"'dropout' must lie in \[0, 1\)"):
        hsa_attention(q, k, v, PARENT, dropout=-0.1)
    with pytest.raises(ValueError, match=r"'scale' must be finite \(got "
                       r"inf\)"):
        hsa_attention(q, k, v, PARENT, scale=math.inf)
    with pytest.raises(TypeError, match="'scale' must be a number, a one-"
                       r"element tensor or None \(got '0.5' of type str\)"):
        hsa_dense(q, k, PARENT, scale='0.5')
    with pytest.raises(ValueError, match=r"'scale' must be finite \(got "
                       r"nan\)"):
        hsa_attention(q, k, v, PARENT, scale=torch.tensor(math.nan))
    with pytest.raises(ValueError, match="'scale' must be a number or a "
                       "one-element floating-point tensor"):
        hsa_attention(q, k, v, PARENT, scale=torch.tensor(2))
    with pytest.raises(ValueError, match=r"'pe' must have at least one "
                       r"channel \(got shape \(8, 0\)\)"):
        hsa_attention(q, k, v, PARENT, pe=torch.zeros(8, 0).double())
    # A tensor scale (a learned temperature) is allowed and differentiable.
    scale = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    out = hsa_attention(q, k, v, PARENT, scale=scale)
    torch.testing.assert_close(out, hsa_attention(q, k, v, PARENT, scale=0.3))
    grad, = torch.autograd.grad(out.square().sum(), scale)
    assert bool(grad.isfinite()) and float(grad) != 0.0


@pytest.mark.parametrize('name', ['self_loops', 'validate',
                                  'return_attention_weights'])
def test_flags_are_booleans(name):
    q, k, v = random_qkv(5)
    for value in (1, 0, 'yes', None):
        with pytest.raises(TypeError, match=f"'{name}' must be a bool"):
            hsa_attention(q, k, v, PARENT, **{name: value})
    # NumPy's booleans are booleans.
    out = hsa_attention(q, k, v, PARENT, **{name: np.bool_(True)})
    expected = hsa_attention(q, k, v, PARENT, **{name: True})
    torch.testing.assert_close(out, expected)
    if name == 'self_loops':
        with pytest.raises(TypeError, match="'self_loops' must be a bool"):
            hsa_dense(q, k, PARENT, self_loops=1)


def test_numpy_scalars_are_numbers():
    q, k, v = random_qkv(5)
    torch.testing.assert_close(
        hsa_attention(q, k, v, PARENT, scale=np.float32(0.25)),
        hsa_attention(q, k, v, PARENT, scale=0.25))
    torch.manual_seed(0)
    dropped = hsa_attention(q, k, v, PARENT, dropout=np.float64(0.5))
    torch.manual_seed(0)
    torch.testing.assert_close(
        dropped, hsa_attention(q, k, v, PARENT, dropout=0.5))


def test_device_mismatch_with_the_tree():
    # (The meta device stands in for a GPU: no data, real device checks.)
    q, k, v = random_qkv(5)
    with pytest.raises(ValueError, match="'k' is on meta but the tree is on "
                       "cpu; move one with .to()"):
        hsa_attention(q, k.to('meta'), v, PARENT)
    with pytest.raises(ValueError, match="'pe' is on meta but the tree is "
                       "on cpu"):
        hsa_attention(q, k, v, PARENT, pe=torch.zeros(8, 2, device='meta'))
    with pytest.raises(TypeError, match="'pe' must be a floating-point "
                       "tensor"):
        hsa_attention(q, k, v, PARENT, pe=torch.zeros(8, 2).long())


# ------------------------------------------------------------- HSAConv


def test_hsa_conv_validate_names_node_type_and_row():
    data = two_leaf_types()
    tree = Tree.from_hetero(data)
    conv = hetero_conv()
    x, pe = dict(data.x_dict), dict(data.pe_dict)
    assert torch.equal(conv(x, tree, pe=pe)['atom'],
                       conv(x, tree, pe=pe, validate=True)['atom'])

    x['atom'] = x['atom'].clone()
    x['atom'][17, 2] = math.nan
    x['atom'][19, 0] = math.inf
    with pytest.raises(ValueError, match=r"^'x' of node type 'atom' has a "
                       r"non-finite value \(nan\) at row 17; expected finite "
                       r"values$"):
        conv(x, tree, pe=pe, validate=True)
    # Off by default: no error, the NaN spreads to every leaf.
    out = conv(x, tree, pe=pe)
    assert bool(out['token'].isnan().all())

    x, pe = dict(data.x_dict), dict(data.pe_dict)
    pe['fragment'] = pe['fragment'].clone()
    pe['fragment'][1, 1] = -math.inf
    with pytest.raises(ValueError, match=r"'pe' of node type 'fragment' has "
                       r"a non-finite value \(-inf\) at row 1"):
        conv(x, tree, pe=pe, validate=True)


def test_hsa_conv_validate_plain_tensors():
    conv = HSAConv(4, 2, heads=2, pos_channels=3)
    x, pe = torch.randn(5, 4), torch.randn(8, 3)
    torch.testing.assert_close(conv(x, PARENT, pe=pe, validate=True),
                               conv(x, PARENT, pe=pe))
    x[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"^'x' has a non-finite value "
                       r"\(nan\) at row 2"):
        conv(x, PARENT, pe=pe, validate=True)
    x[2, 1] = 0.0
    pe[6, 0] = math.inf
    with pytest.raises(ValueError, match=r"^'pe' has a non-finite value "
                       r"\(inf\) at row 6"):
        conv(x, PARENT, pe=pe, validate=True)


def test_hsa_conv_validate_catches_non_finite_projections():
    data = two_leaf_types()
    conv = hetero_conv()
    with torch.no_grad():
        conv.lin_key.lins['token'].bias[1] = math.nan
    with pytest.raises(ValueError, match=r"The layer's key projection is "
                       r"non-finite \(nan\) at row 0 of node type 'token' "
                       r"although its inputs 'x' and 'pe' are finite"):
        conv(data.x_dict, Tree.from_hetero(data), validate=True)
    # Overflow of a finite input: float16 features of magnitude 1e4 whose
    # projection exceeds 65504.
    conv = HSAConv(2, 2, qk_norm=False).half()
    with torch.no_grad():
        conv.lin_value.weight.fill_(10.0)
    x = torch.tensor([[1.0, 1.0], [1e4, 1e4]]).half()
    with pytest.raises(ValueError, match=r"value projection is non-finite "
                       r"\(inf\) at row 1 "):
        conv(x, torch.tensor([2, 2, -1]), validate=True)


def test_hsa_conv_input_checks():
    data = two_leaf_types()
    tree = Tree.from_hetero(data)
    conv = hetero_conv()
    x, pe = data.x_dict, data.pe_dict
    cases = [
        ({**x, 'atom': x['atom'][:, :5]}, pe, ValueError,
         r"'x\['atom'\]' has 5 channels but the layer was built with "
         r"in_channels = 6 for it"),
        ({**x, 'atom': x['atom'].float()}, pe, TypeError,
         r"'x\['atom'\]' has dtype torch.float32 but the layer's parameters "
         r"have dtype torch.float64"),
        ({**x, 'atom': x['atom'].long()}, pe, TypeError,
         r"'x\['atom'\]' must be a floating-point tensor \(got torch.int64\)"),
        ({**x, 'atom': x['atom'][0]}, pe, ValueError,
         r"'x\['atom'\]' must have shape \[num_nodes, F\] \(got \(6,\)\)"),
        ({**x, 'atom': x['atom'].tolist()}, pe, TypeError,
         r"'x\['atom'\]' must be a tensor \(got list\)"),
        ({**x, 'token': x['token'].to('meta')}, pe, ValueError,
         r"'x\['token'\]' is on meta but the layer's parameters are on "
         r"cpu"),
        (x, {**pe, 'fragment': pe['fragment'][:, :1]}, ValueError,
         r"'pe\['fragment'\]' has 1 channels but the layer was built with "
         r"pos_channels = 2 for it"),
        (x, {**pe, 'fragment': pe['fragment'][:1]}, ValueError,
         r"'pe\['fragment'\]' has 1 rows but the hierarchy has 2 nodes of "
         r"type 'fragment'"),
        (x, {**pe, 'fragment': 1.0}, TypeError,
         r"'pe\['fragment'\]' must be a tensor \(got float\)"),
        (x, {**pe, 'atom': pe['atom'].int()}, TypeError,
         r"'pe\['atom'\]' must be a floating-point tensor"),
        (x, {**pe, 'atom': pe['atom'][:, 0]}, ValueError,
         r"'pe\['atom'\]' must have shape \[num_nodes, P\]"),
    ]
    for x_in, pe_in, error, match in cases:
        with pytest.raises(error, match=match):
            conv(x_in, tree, pe=pe_in)
    with pytest.raises(ValueError, match=r"Node type 'token' has no entry in "
                       r"'in_channels' \(it lists \['atom'\]\)"):
        HSAConv({'atom': 6}, 2).double()(x, tree)
    with pytest.raises(TypeError, match="'x' must be a dictionary"):
        conv(x['atom'], torch.tensor([1, -1]))


def test_hsa_conv_plain_input_checks():
    conv = HSAConv(4, 2, pos_channels=3)
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match="'x' has 3 channels but the layer "
                       "was built with in_channels = 4"):
        conv(x[:, :3], PARENT)
    with pytest.raises(TypeError, match=r"'x' has dtype torch.float64 but "
                       r"the layer's parameters have dtype torch.float32; "
                       r"convert one with .to\(\)"):
        conv(x.double(), PARENT)
    with pytest.raises(ValueError, match="'x' is on meta but the layer's "
                       "parameters are on cpu"):
        conv(x.to('meta'), Tree.from_parent(PARENT).to('meta'))
    with pytest.raises(ValueError, match="'pe' has 2 channels but the layer "
                       "was built with pos_channels = 3"):
        conv(x, PARENT, pe=torch.randn(8, 2))
    with pytest.raises(TypeError, match="'pos_channels' per node type, so "
                       "'pe' must be a dictionary"):
        HSAConv(4, 2, pos_channels={'a': 3})(x, PARENT, pe=torch.randn(8, 3))
    # Lazy layers take any width once, then check it.
    lazy = HSAConv(-1, 2)
    lazy(x[:, :3], PARENT)
    with pytest.raises(ValueError, match="'x' has 4 channels but the layer "
                       "was built with in_channels = 3"):
        lazy(x, PARENT)


def test_hsa_conv_mixed_dtypes_under_autocast_are_allowed():
    conv = HSAConv(4, 2, heads=2, pos_channels=3)
    x, pe = torch.randn(5, 4), torch.randn(8, 3)
    ref = conv(x, PARENT, pe=pe)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = conv(x.bfloat16(), PARENT, pe=pe, validate=True)
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)


def test_scale_tensor_with_several_elements():
    q, k, v = random_qkv(5)
    with pytest.raises(ValueError, match=r"'scale' must be a number or a "
                       r"one-element floating-point tensor \(got a "
                       r"torch.float32 tensor of shape \(2,\)\)"):
        hsa_attention(q, k, v, PARENT, scale=torch.ones(2))
