"""BracketsToHierarchy against a brute-force stack parser: parents,
families in order, root, positions, errors, batching and HSA layers."""
import copy
import math
import random

import numpy as np
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from pyg_hsa import Tree
from pyg_hsa.datasets.listops import ListOps, from_text, generate
from pyg_hsa.nn import HSAConv
from pyg_hsa.transforms import BracketsToHierarchy
from transform_checks import check_batching, check_in_memory_dataset

OPENING = (3, 7, 9)
CLOSING = (0, 5)
PLAIN = (1, 2, 4, 6, 8, 10, 11)


def listops_transform(pe_channels=8):
    return BracketsToHierarchy(ListOps.OPERATOR_IDS, ListOps.CLOSING_ID,
                               pe_channels=pe_channels)


def brute_force(ids, opening, closing):
    """One pass with a stack: the expression of every token, the parent
    of every expression (-1 for the root), and every expression's family
    as ('token', i) / ('expr', j) in order. A lone token is the only child
    of a root expression. Raises ValueError('position p') at the first
    closing token without an open expression, else at the outermost
    expression still open at the end, else at the first token outside the
    first top-level expression."""
    stack, opened, outside = [], [], None
    token_parent, expr_parent, families = [], [], []
    for position, token in enumerate(ids):
        if token in opening:
            e = len(expr_parent)
            if not stack and e and outside is None:
                outside = position  # a second top-level expression
            expr_parent.append(stack[-1] if stack else -1)
            if stack:
                families[stack[-1]].append(('expr', e))
            families.append([('token', position)])
            opened.append(position)
            stack.append(e)
            token_parent.append(e)
        elif token in closing:
            if not stack:
                raise ValueError(f'position {position}')
            e = stack.pop()
            families[e].append(('token', position))
            token_parent.append(e)
        elif stack:
            families[stack[-1]].append(('token', position))
            token_parent.append(stack[-1])
        else:
            token_parent.append(None)
            if outside is None:
                outside = position
    if stack:
        raise ValueError(f'position {opened[stack[0]]}')
    if len(ids) == 1 and outside == 0:
        return [0], [-1], [[('token', 0)]]
    if outside is not None:
        raise ValueError(f'position {outside}')
    return token_parent, expr_parent, families


def sinusoid(index, channels, max_period=10000.0):
    half = channels // 2
    return [math.sin(index * max_period**(-j / half)) for j in range(half)] \
        + [math.cos(index * max_period**(-j / half)) for j in range(half)]


def check_against_brute_force(ids, transform, opening, closing, **attrs):
    data = Data(x=torch.tensor(ids), **attrs)
    out = transform(data)
    token_parent, expr_parent, families = brute_force(ids, opening, closing)
    num_tokens, num_exprs = len(ids), len(expr_parent)
    assert out['token'].num_nodes == num_tokens
    assert out['expr'].num_nodes == num_exprs
    assert torch.equal(out['token'].x, data.x)
    # Parents.
    edge_index = out['token', 'in', 'expr'].edge_index
    assert edge_index[0].tolist() == list(range(num_tokens))
    assert edge_index[1].tolist() == token_parent
    edge_index = out['expr', 'in', 'expr'].edge_index
    children = [e for e in range(num_exprs) if expr_parent[e] >= 0]
    assert edge_index[0].tolist() == children
    assert edge_index[1].tolist() == [expr_parent[e] for e in children]
    # One root, expression 0, without an outgoing 'in' edge.
    assert expr_parent.count(-1) == 1 and expr_parent[0] == -1
    assert 0 not in edge_index[0].tolist()
    # Families in order: the index in the family, decoded from pe.
    index = {('expr', 0): 0}
    for family in families:
        for i, member in enumerate(family):
            index[member] = i
    channels = transform.pe_channels
    for node_type, count in (('token', num_tokens), ('expr', num_exprs)):
        expected = torch.tensor(
            [sinusoid(index[(node_type, n)], channels) for n in range(count)])
        assert out[node_type].pe.shape == (count, channels)
        assert torch.allclose(out[node_type].pe, expected, atol=1e-5)
    # The families are the brute force's, member by member.
    rebuilt = [[] for _ in range(num_exprs)]
    for t, e in enumerate(token_parent):
        rebuilt[e].append((index[('token', t)], ('token', t)))
    for e in children:
        rebuilt[expr_parent[e]].append((index[('expr', e)], ('expr', e)))
    assert [[m for _, m in sorted(f)] for f in rebuilt] == families
    tree = Tree.from_hetero(out)
    assert tree.num_roots == 1 and tree.num_leaves == num_tokens
    return out


def random_expression(rng, depth=0, max_depth=6):
    """Token ids of one random expression (several opening and closing
    ids; a closing id is not tied to an opening one)."""
    out = [rng.choice(OPENING)]
    for _ in range(rng.randint(0, 5)):
        if depth < max_depth and rng.random() < 0.35:
            out += random_expression(rng, depth + 1, max_depth)
        else:
            out.append(rng.choice(PLAIN))
    out.append(rng.choice(CLOSING))
    return out


@pytest.mark.parametrize('seed', range(40))
def test_random_expressions_match_brute_force(seed):
    rng = random.Random(seed)
    transform = BracketsToHierarchy(OPENING, CLOSING, pe_channels=6)
    for _ in range(5):
        ids = random_expression(rng)
        check_against_brute_force(ids, transform, OPENING, CLOSING)


def test_listops_examples_match_brute_force():
    tokens, offsets, labels = generate(6, seed=11)
    transform = listops_transform()
    for i in range(6):
        ids = tokens[offsets[i]:offsets[i + 1]].tolist()
        out = check_against_brute_force(
            ids, transform, ListOps.OPERATOR_IDS, (ListOps.CLOSING_ID, ),
            y=torch.tensor([int(labels[i])]))
        assert out.y.tolist() == [int(labels[i])]
        # A ListOps family: opening token, 2 .. 10 arguments, ']'.
        sizes = torch.bincount(torch.cat([
            out['token', 'in', 'expr'].edge_index[1],
            out['expr', 'in', 'expr'].edge_index[1]
        ]))
        assert int(sizes.min()) >= 4 and int(sizes.max()) <= 12


def test_small_example():
    x = from_text('[MAX 4 [MIN 2 3 ] 1 ]')
    out = listops_transform(pe_channels=4)(Data(x=x, y=torch.tensor([4])))
    assert out['token', 'in', 'expr'].edge_index[1].tolist() == \
        [0, 0, 1, 1, 1, 1, 0, 0]
    assert out['expr', 'in', 'expr'].edge_index.tolist() == [[1], [0]]
    # Positions: [MAX 0, 4 1, [MIN.. is expr 1 at 2, 1 at 3, ] at 4.
    assert out['token'].pe[:, 0].tolist() == pytest.approx(
        [math.sin(i) for i in (0, 1, 0, 1, 2, 3, 3, 4)], abs=1e-6)
    assert out['expr'].pe[:, 0].tolist() == pytest.approx(
        [0.0, math.sin(2)], abs=1e-6)
    assert out.y.tolist() == [4]


def test_bare_token_is_a_tree():
    out = listops_transform(pe_channels=4)(Data(x=torch.tensor([7]),
                                                y=torch.tensor([7])))
    assert out['expr'].num_nodes == 1
    assert out['token', 'in', 'expr'].edge_index.tolist() == [[0], [0]]
    assert out['expr', 'in', 'expr'].edge_index.shape == (2, 0)
    assert torch.equal(out['token'].pe, torch.tensor([[0., 0., 1., 1.]]))
    assert torch.equal(out['expr'].pe, torch.tensor([[0., 0., 1., 1.]]))
    tree = Tree.from_hetero(out)
    assert tree.num_roots == 1 and tree.num_nodes == 2
    assert out.y.tolist() == [7]


def test_column_input_and_other_attributes():
    ids = from_text('[SM 1 [MED 2 3 4 ] ]')
    edge_index = torch.tensor([[0, 1], [1, 2]])
    data = Data(x=ids.view(-1, 1), mask=torch.arange(ids.numel()) % 2 == 0,
                edge_index=edge_index, y=torch.tensor([0]), name='example')
    before = copy.deepcopy(data)
    out = listops_transform()(data)
    assert torch.equal(out['token'].x, data.x)  # kept as [L, 1]
    assert torch.equal(out['token'].mask, data.mask)
    assert torch.equal(out['token', 'edge', 'token'].edge_index, edge_index)
    assert out.y.tolist() == [0] and out.name == 'example'
    flat = listops_transform()(Data(x=ids))
    for et in flat.edge_types:
        assert torch.equal(out[et].edge_index, flat[et].edge_index)
    for key in before.keys():  # the input is not modified
        assert torch.equal(data[key], before[key]) if isinstance(
            data[key], torch.Tensor) else data[key] == before[key]
    assert 'pe' not in data


def test_uint8_and_tensor_ids():
    ids = from_text('[MIN 5 [MAX 1 2 ] ]')
    transform = BracketsToHierarchy(torch.tensor([10, 11]), 14)
    out = transform(Data(x=ids.to(torch.uint8)))
    ref = listops_transform(16)(Data(x=ids))
    for et in ref.edge_types:
        assert torch.equal(out[et].edge_index, ref[et].edge_index)


@pytest.mark.parametrize('text, position', [
    (']', 0),
    ('[MAX 1 2 ] ]', 4),
    ('[MAX 1 ] 2 ]', 4),
    ('[MAX', 0),
    ('[MAX 1 [MIN 2 ]', 0),
    ('[MAX 1 ] [MIN 2', 3),
    ('[MAX 1 [MIN 2 [SM 3 ]', 0),
    ('1 [MAX 2 ]', 0),
    ('1 2', 0),
    ('[MAX 1 ] 2', 3),
    ('[MAX 1 ] [MIN 2 ]', 3),
])
def test_unbalanced_and_outside_tokens_name_the_position(text, position):
    with pytest.raises(ValueError, match=f'position {position}\\b'):
        listops_transform()(Data(x=from_text(text)))


@pytest.mark.parametrize('seed', range(10))
def test_random_malformed_input_matches_brute_force(seed):
    rng = random.Random(seed)
    transform = BracketsToHierarchy(OPENING, CLOSING, pe_channels=4)
    for _ in range(20):
        ids = random_expression(rng)
        brackets = [i for i, t in enumerate(ids) if t in OPENING + CLOSING]
        kind = rng.randrange(3)
        if kind == 0:  # a bracket deleted: always unbalanced
            del ids[rng.choice(brackets)]
        elif kind == 1:  # a token added before or after
            ids.insert(rng.choice([0, len(ids)]),
                       rng.choice(OPENING + CLOSING + PLAIN))
        else:  # two expressions side by side: balanced, two roots
            ids += random_expression(rng)
        if not ids:
            continue
        with pytest.raises(ValueError) as expected:
            brute_force(ids, OPENING, CLOSING)
        with pytest.raises(ValueError, match=f'{expected.value}\\b'):
            transform(Data(x=torch.tensor(ids)))


def test_empty_and_wrong_inputs():
    transform = listops_transform()
    with pytest.raises(ValueError, match='at least one token'):
        transform(Data(x=torch.zeros(0, dtype=torch.long)))
    with pytest.raises(TypeError, match='Data'):
        transform(torch.tensor([10, 1, 14]))
    with pytest.raises(TypeError, match="'x'"):
        transform(Data(x=torch.tensor([10.0, 1.0, 14.0])))
    with pytest.raises(TypeError, match="'x'"):
        transform(Data(x=torch.tensor([True, False])))
    with pytest.raises(ValueError, match="'x'"):
        transform(Data(x=torch.zeros(3, 2, dtype=torch.long)))
    with pytest.raises(ValueError, match="'x'"):
        transform(Data(pos=torch.zeros(3, 2)))
    with pytest.raises(ValueError, match="'pe'"):
        transform(Data(x=from_text('[MAX 1 ]'), pe=torch.zeros(3, 2)))


@pytest.mark.parametrize('kwargs, error, name', [
    (dict(opening='[', closing=14), TypeError, 'opening'),
    (dict(opening=[10, 1.5], closing=14), TypeError, 'opening'),
    (dict(opening=10, closing=True), TypeError, 'closing'),
    (dict(opening=10, closing=torch.tensor([1.0])), TypeError, 'closing'),
    (dict(opening=10, closing=[]), ValueError, 'closing'),
    (dict(opening=[10, 14], closing=14), ValueError, 'opening'),
    (dict(opening=10, closing=14, pe_channels=3), ValueError, 'pe_channels'),
    (dict(opening=10, closing=14, pe_channels=0), ValueError, 'pe_channels'),
    (dict(opening=10, closing=14, pe_channels=2.0), TypeError,
     'pe_channels'),
])
def test_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=f"'{name}'"):
        BracketsToHierarchy(**kwargs)


def test_repr():
    assert repr(listops_transform(16)) == (
        'BracketsToHierarchy(opening=(10, 11, 12, 13), closing=(14,), '
        'pe_channels=16)')
    assert repr(BracketsToHierarchy({9, 3}, np.int64(5), pe_channels=4)) == \
        'BracketsToHierarchy(opening=(3, 9), closing=(5,), pe_channels=4)'


def test_registered_as_functional_transform():
    from torch.utils.data import IterDataPipe
    from torch.utils.data.datapipes.iter import IterableWrapper

    assert 'brackets_to_hierarchy' in IterDataPipe.functions
    pipe = IterableWrapper([Data(x=from_text('[MAX 1 2 ]'))])
    out = list(pipe.brackets_to_hierarchy(ListOps.OPERATOR_IDS,
                                          ListOps.CLOSING_ID))
    assert out[0]['expr'].num_nodes == 1


def parse_trees():
    tokens, offsets, labels = generate(3, seed=2)
    examples = [
        Data(x=torch.from_numpy(tokens[offsets[i]:offsets[i + 1]]).long(),
             y=torch.tensor([int(labels[i])])) for i in range(3)
    ]
    for text in ('7', '[MAX 1 [MIN 2 3 ] ]', '[SM 4 5 6 ]'):
        examples.append(Data(x=from_text(text), y=torch.tensor([0])))
    transform = listops_transform(pe_channels=6)
    return [transform(data) for data in examples]


def test_batches_into_one_forest():
    trees = parse_trees()
    batch = next(iter(DataLoader(trees, batch_size=len(trees))))
    tree = Tree.from_hetero(batch)
    assert tree.num_roots == len(trees)
    assert tree.leaf_types == ['token']
    sizes = [t['token'].num_nodes for t in trees]
    assert torch.equal(tree.batch, torch.repeat_interleave(
        torch.arange(len(trees)), torch.tensor(sizes)))
    # The roots are the examples' expressions 0, in order.
    lo, _ = tree.node_slices['expr']
    starts = np.cumsum([0] + [t['expr'].num_nodes for t in trees])[:-1]
    roots = (tree.parent < 0).nonzero().view(-1) - lo
    assert roots.tolist() == starts.tolist()
    assert batch.y.tolist() == [int(t.y) for t in trees]
    check_in_memory_dataset(trees)


def test_hsa_conv_batching_invariance():
    trees = parse_trees()
    conv = HSAConv(15, 4, heads=2, pos_channels=6).double().eval()

    def run(data):
        x = {'token': torch.nn.functional.one_hot(data['token'].x,
                                                  15).double()}
        pe = {nt: p.double() for nt, p in data.pe_dict.items()}
        return conv(x, Tree.from_hetero(data), pe=pe)['token']

    batch = next(iter(DataLoader(trees, batch_size=len(trees))))
    together = run(batch)
    alone = torch.cat([run(t) for t in trees])
    assert torch.isfinite(together).all()
    assert torch.allclose(together, alone, rtol=0, atol=1e-10)


def test_shared_batching_checks():
    # The checks every transform passes (features: the ids as [L, 1]).
    transform = listops_transform(pe_channels=4)
    examples = [transform(Data(x=from_text(text).view(-1, 1)))
                for text in ('[MAX 1 [MIN 2 3 ] ]', '5', '[SM 4 5 6 ]')]
    check_batching(examples, 'token', 1)
