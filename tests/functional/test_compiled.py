"""``torch.compile(fullgraph=True)`` of hsa_attention, HSAConv and
HSAEncoderLayer on every kind of tree: compiled outputs and gradients equal
eager ones, with and without autograd, and new trees of the same kind do not
recompile the graph (the dynamic program is one opaque operator,
``pyg_hsa::hsa``)."""
import gc

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from pyg_hsa import Tree, hsa_attention
from pyg_hsa.nn import HSAConv, HSAEncoderLayer
from pyg_hsa.testing import random_forest

pytestmark = pytest.mark.slow


def flat(n):
    return Tree.from_parent(torch.tensor([n] * n + [-1])) if n > 1 else \
        Tree.from_parent(torch.tensor([-1]))


def perfect_binary(n=16):
    parents, start, width = [], 0, n
    while width > 1:
        parents.append(start + width + torch.arange(width) // 2)
        start, width = start + width, width // 2
    return Tree.from_parent(torch.cat(parents + [torch.tensor([-1])]), n)


def forest(seed):
    rng = np.random.default_rng(seed)
    parent, n = random_forest(rng, max_depth=4, max_branch=5, num_roots=2,
                              unary_prob=0.3)
    return Tree.from_parent(parent, n)


def molecules(count, start):
    from torch_geometric.loader import DataLoader
    from torch_geometric.utils import from_smiles

    from pyg_hsa.transforms import MoleculeToHierarchy
    smiles = ['c1ccccc1CCO', 'CC(=O)Oc1ccccc1C(=O)O', 'CCN(CC)CC',
              'c1ccc2ccccc2c1', 'OCC1OC(O)C(O)C(O)C1O', 'CC(C)Cc1ccc(C)cc1']
    data = [MoleculeToHierarchy()(from_smiles(s))
            for s in (smiles * 2)[start:start + count]]
    return next(iter(DataLoader(data, batch_size=count)))


def parse_tree():
    from torch_geometric.data import Data

    from pyg_hsa.datasets import ListOps
    from pyg_hsa.datasets.listops import from_text
    from pyg_hsa.transforms import BracketsToHierarchy
    tokens = from_text('[MAX 2 9 [MIN 4 7 [SM 1 [MED 3 5 6 ] ] ] 0 ]')
    transform = BracketsToHierarchy(ListOps.OPERATOR_IDS, ListOps.CLOSING_ID)
    return Tree.from_hetero(transform(Data(x=tokens)))


TREES = {
    'flat 1': lambda: flat(1),
    'flat 5': lambda: flat(5),
    'flat 8': lambda: flat(8),
    'perfect binary': perfect_binary,
    'forest with unary chains': lambda: forest(3),
    'another forest': lambda: forest(4),
    'parse tree': parse_tree,
}


def run(fn, grad: bool):
    """Outputs and, with :obj:`grad`, the gradients of the inputs."""
    def call(*inputs, **kwargs):
        if not grad:
            with torch.no_grad():
                return fn(*inputs, **kwargs), []
        leaves = [x.detach().requires_grad_() for x in inputs
                  if isinstance(x, torch.Tensor) and x.is_floating_point()]
        it = iter(leaves)
        args = [next(it) if isinstance(x, torch.Tensor) and
                x.is_floating_point() else x for x in inputs]
        out = fn(*args, **kwargs)
        weight = torch.linspace(-1, 1, out.numel()).view(out.shape)
        return out, list(torch.autograd.grad((out * weight).sum(), leaves))
    return call


def assert_same(got, expected):
    (out, grads), (ref, ref_grads) = got, expected
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('grad', [True, False])
@pytest.mark.parametrize('self_loops', [False, True])
@pytest.mark.parametrize('pos', [None, 'shared', 'per head'])
def test_hsa_attention_compiles_on_every_tree(pos, self_loops, grad):
    torch._dynamo.reset()

    def fn(q, k, v, p, tree):
        return hsa_attention(q, k, v, tree, pe=p, self_loops=self_loops)

    compiled = torch.compile(fn, fullgraph=True)
    for name, make in TREES.items():
        tree = make()
        n, m = tree.num_leaves, tree.num_nodes
        q, k, v = torch.randn(3, n, 2, 4).unbind(0)
        p = None if pos is None else torch.randn(
            (m, 3) if pos == 'shared' else (m, 2, 3))
        inputs = (q, k, v) + ((p, ) if p is not None else ())

        def call(*xs, tree=tree):
            p_ = xs[3] if len(xs) > 3 else None
            return (compiled if call.compiled else fn)(*xs[:3], p_, tree)

        call.compiled = True
        got = run(call, grad)(*inputs)
        call.compiled = False
        assert_same(got, run(call, grad)(*inputs)), name


@pytest.mark.parametrize('grad', [True, False])
@pytest.mark.parametrize('self_loops', [False, True])
@pytest.mark.parametrize('pos', [None, 'shared'])
def test_hsa_conv_and_encoder_layer_compile_on_every_tree(pos, self_loops,
                                                          grad):
    torch._dynamo.reset()
    conv = HSAConv(8, 4, heads=2, self_loops=self_loops,
                   pos_channels=None if pos is None else 3)
    layer = HSAEncoderLayer(8, heads=2, self_loops=self_loops,
                            pos_channels=None if pos is None else 3).eval()
    for module in (conv, layer):
        compiled = torch.compile(module, fullgraph=True)
        for name, make in TREES.items():
            tree = make()
            x = torch.randn(tree.num_leaves, 8)
            pe = None if pos is None else torch.randn(tree.num_nodes, 3)

            def call(x, module=module, tree=tree, pe=pe, use=compiled):
                return use(x, tree, pe)

            got = run(call, grad)(x)
            expected = run(lambda x, tree=tree, pe=pe, m=module:
                           m(x, tree, pe), grad)(x)
            assert_same(got, expected), (module, name)


@pytest.mark.parametrize('grad', [True, False])
def test_hsa_conv_compiles_on_molecule_batches_with_typed_positions(grad):
    torch._dynamo.reset()
    first = molecules(3, 0)
    widths = {nt: first[nt].pe.size(-1) for nt in ('atom', 'fragment',
                                                   'component')}
    conv = HSAConv(9, 4, heads=2, pos_channels=widths)
    compiled = torch.compile(conv, fullgraph=True)
    for start in (0, 3, 6):
        batch = molecules(3, start)
        tree = Tree.from_hetero(batch)
        x = batch['atom'].x.float()

        def call(x, use, tree=tree, batch=batch):
            return use({'atom': x}, tree, pe=batch.pe_dict)['atom']

        assert_same(run(lambda x: call(x, compiled), grad)(x),
                    run(lambda x: call(x, conv), grad)(x))


def test_new_trees_of_a_kind_reuse_the_compiled_graph():
    # Six random two-level trees: at most three graphs (the first, then one
    # with dynamic sizes, and one more at most), not one per tree.
    torch._dynamo.reset()
    counters.clear()
    conv = HSAConv(16, 8, heads=2, pos_channels=3)
    compiled = torch.compile(conv, fullgraph=True)
    rng = np.random.default_rng(0)
    for _ in range(6):
        sizes = rng.integers(2, 6, size=int(rng.integers(2, 5))).tolist()
        n, groups = sum(sizes), len(sizes)
        parent = [n + g for g, size in enumerate(sizes) for _ in range(size)]
        parent = torch.tensor(parent + [n + groups] * groups + [-1])
        tree = Tree.from_parent(parent, n)
        x = torch.randn(n, 16, requires_grad=True)
        pe = torch.randn(parent.numel(), 3)
        out = compiled(x, tree, pe)
        torch.testing.assert_close(out, conv(x, tree, pe), rtol=1e-5,
                                   atol=1e-5)
        out.sum().backward()
    assert counters['stats']['unique_graphs'] <= 3


def test_backward_after_the_batch_and_its_tree_are_dropped():
    # A training loop drops the batch (and its tree) between the forward
    # and the backward pass; the operator keeps the parent vector (its
    # input) and rebuilds the tree from it.
    torch._dynamo.reset()
    torch.manual_seed(0)
    conv = HSAConv(16, 8, heads=2)
    compiled = torch.compile(conv, fullgraph=True, dynamic=True)
    parent = torch.tensor([5, 5, 5, 6, 6, 7, 7, -1])
    x = torch.randn(5, 16)

    def loss_of(layer):
        return layer(x, Tree.from_parent(parent)).square().sum()

    losses = [loss_of(compiled) for _ in range(3)]  # three batches
    gc.collect()
    sum(losses).backward()
    grads = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    (3 * loss_of(conv)).backward()
    for grad, p in zip(grads, conv.parameters()):
        torch.testing.assert_close(grad, p.grad, rtol=1e-5, atol=1e-6)


def _dropped_trees(count, start=3):
    """:obj:`count` distinct flat trees (3, 4, ... leaves)."""
    return [Tree.from_parent(torch.tensor([n] * n + [-1]))
            for n in range(start, start + count)]


@pytest.mark.parametrize('mode', ['no_grad', 'inference_mode',
                                  'no input requires grad'])
def test_compiled_inference_keeps_no_trees(mode):
    # Without a backward pass to follow, the operator keeps no tree alive
    # (it once kept its last 16 even under no_grad: 1.2 and 2.4 GB for the
    # first two 300k-leaf trees; issue 22).
    import weakref

    from pyg_hsa.functional import compiled as compiled_module
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, tree: hsa_attention(
        q, k, v, tree), fullgraph=True)
    context = {'no_grad': torch.no_grad, 'inference_mode':
               torch.inference_mode}.get(mode, torch.enable_grad)
    refs = []
    with context():
        for tree in _dropped_trees(20):
            q, k, v = torch.randn(3, tree.num_leaves, 2, 4).unbind(0)
            compiled(q, k, v, tree)
            refs.append(weakref.ref(tree))
            del tree
    gc.collect()
    assert all(ref() is None for ref in refs)
    # (Nor the trees it rebuilt: they go with their parent vectors.)
    assert all(key() is not None for key, _ in
               compiled_module._TREES.values())


def test_gradient_accumulation_over_more_than_16_dropped_trees():
    # 20 compiled micro-batches whose trees are dropped before the
    # backward pass of their sum (a registry of the last 16 trees once
    # made this fail): the parent vectors are saved for backward, so it
    # works, and equals eager autograd with the trees kept.
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, tree: hsa_attention(
        q, k, v, tree), fullgraph=True)
    x = torch.randn(30, 2, 4, requires_grad=True)

    def loss(trees, fn):
        return sum(fn(x[:t.num_leaves], x[:t.num_leaves],
                      x[:t.num_leaves], t).square().sum() for t in trees)

    total = loss(_dropped_trees(20), compiled)
    gc.collect()
    grad, = torch.autograd.grad(total, x)
    trees = _dropped_trees(20)
    expected, = torch.autograd.grad(loss(trees, hsa_attention), x)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)


def test_parent_tensor_under_fullgraph_says_to_build_the_tree_outside():
    # A parent tensor is a valid 'tree' eagerly, but building the Tree
    # reads its values: under fullgraph=True the error was a compiler
    # message about data-dependent guards (issue 22). Without fullgraph,
    # the call still works (the frame falls back to eager).
    parent = torch.tensor([3, 3, 3, -1])
    q, k, v = torch.randn(3, 3, 2, 4).unbind(0)

    def fn(q, k, v, parent):
        return hsa_attention(q, k, v, parent)

    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"'tree' is a parent tensor inside a "
                       r"torch.compile region.*Build it outside the compiled "
                       r"function, tree = pyg_hsa.Tree.from_parent\(parent\)"):
        torch.compile(fn, fullgraph=True)(q, k, v, parent)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(fn)(q, k, v, parent),
                               fn(q, k, v, parent))


def test_backward_differentiates_the_kept_graph(monkeypatch):
    # The forward operator keeps its autograd graph for the backward one,
    # which then runs no forward pass of its own; under no_grad nothing
    # is kept.
    from pyg_hsa.functional import compiled as compiled_module
    calls, eager = [], compiled_module._eager

    def counted(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return eager(*args, **kwargs)

    monkeypatch.setattr(compiled_module, '_eager', counted)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, tree: hsa_attention(
        q, k, v, tree, self_loops=True), fullgraph=True)
    tree = perfect_binary(16)
    q, k, v = (torch.randn(16, 2, 4, requires_grad=True) for _ in range(3))
    out = compiled(q, k, v, tree)
    assert len(calls) == 1 and len(compiled_module._GRAPHS) >= 1
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    assert len(calls) == 1  # no recomputation
    ref = hsa_attention(q, k, v, tree, self_loops=True)
    for grad, expected in zip(grads, torch.autograd.grad(
            ref.square().sum(), (q, k, v))):
        torch.testing.assert_close(grad, expected)
    kept = len(compiled_module._GRAPHS)
    with torch.no_grad():
        compiled(q, k, v, tree)
    assert len(compiled_module._GRAPHS) == kept


def test_backward_of_calls_older_than_the_kept_graphs(monkeypatch):
    # With more micro-batches than KEEP_GRAPHS, the oldest calls' backward
    # passes recompute their forward passes: the same gradients.
    from pyg_hsa.functional import compiled as compiled_module
    monkeypatch.setattr(compiled_module, 'KEEP_GRAPHS', 3)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, tree: hsa_attention(
        q, k, v, tree), fullgraph=True)
    x = torch.randn(30, 2, 4, requires_grad=True)
    trees = _dropped_trees(8)
    total = sum(compiled(x[:t.num_leaves], x[:t.num_leaves],
                         x[:t.num_leaves], t).square().sum() for t in trees)
    assert len(compiled_module._GRAPHS) <= 3
    grad, = torch.autograd.grad(total, x)
    expected, = torch.autograd.grad(sum(hsa_attention(
        x[:t.num_leaves], x[:t.num_leaves], x[:t.num_leaves],
        t).square().sum() for t in trees), x)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)
