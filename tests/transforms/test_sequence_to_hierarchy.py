import copy
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch_geometric.data import Data

from pyg_hsa.transforms.sequence_to_hierarchy import SequenceToHierarchy
from pyg_hsa.utils.token_forest import splice_chains, token_hierarchy
from transform_checks import check_batching, check_hierarchy


def brute_force_parents(num_tokens, segment_ids, branching):
    """Level by level, every node's parent, built with plain loops: windows
    of ``branching[l]`` consecutive siblings restarting in every finest
    segment, then one node per segment."""
    levels = []
    # A node is (finest segment, first token); tokens first.
    nodes = [(segment_ids[0][t] if segment_ids else 0, t)
             for t in range(num_tokens)]
    for width in branching:
        parents, new_nodes, rank, last_group = [], [], 0, None
        for group, first in nodes:
            rank = rank + 1 if group == last_group else 0
            last_group = group
            if rank % width == 0:
                new_nodes.append((group, first))
            parents.append(len(new_nodes) - 1)
        levels.append(parents)
        nodes = new_nodes
    for ids in segment_ids:
        relabel, parents = {}, []
        for value in ids:
            relabel.setdefault(value, len(relabel))
        parents = [relabel[ids[first]] for _, first in nodes]
        levels.append(parents)
        firsts = {}
        for t, value in enumerate(ids):
            firsts.setdefault(relabel[value], t)
        nodes = [(0, firsts[s]) for s in range(len(relabel))]
    levels.append([0] * len(nodes))
    return levels


def sinusoid(index, channels, max_period=10000.0):
    half = channels // 2
    row = []
    for j in range(half):
        row.append(math.sin(index * max_period**(-j / half)))
    for j in range(half):
        row.append(math.cos(index * max_period**(-j / half)))
    return row


def output_parents(data, transform):
    types = ['token'] + [f'window{i}' for i in range(len(
        transform.branching))] + list(transform.segments) + ['sequence']
    return [
        data[child, 'in', parent].edge_index for child, parent in zip(
            types, types[1:])
    ], types


def check_against_brute_force(data, transform, segment_ids):
    out = transform(data)
    edges, types = output_parents(out, transform)
    expected = brute_force_parents(data.num_nodes, segment_ids,
                                   transform.branching)
    for child_type, edge_index, parents in zip(types, edges, expected):
        assert edge_index[0].tolist() == list(range(len(parents)))
        assert edge_index[1].tolist() == parents
        # pe: the index among siblings, in order, as Fourier features.
        ranks, seen = [], {}
        for p in parents:
            ranks.append(seen.get(p, 0))
            seen[p] = seen.get(p, 0) + 1
        reference = torch.tensor(
            [sinusoid(r, transform.pe_channels) for r in ranks])
        assert torch.allclose(out[child_type].pe, reference, atol=1e-5)
    return out


@pytest.mark.parametrize('length', [1, 2, 7, 16, 33])
@pytest.mark.parametrize('branching', [(2, ), (2, 4, 8, 16), (3, 2)])
def test_windows_match_brute_force(length, branching):
    data = Data(x=torch.randn(length, 5))
    transform = SequenceToHierarchy(branching, pe_channels=6)
    out = check_against_brute_force(data, transform, [])
    check_hierarchy(out, 'token', 'sequence', length)
    assert torch.equal(out['token'].x, data.x)


def test_default_window_sizes():
    out = SequenceToHierarchy()(Data(x=torch.randn(1500, 2)))
    counts = [out[f'window{i}'].num_nodes for i in range(4)]
    # Windows of 2, 8, 64 and 1024 tokens.
    assert counts == [750, 188, 24, 2]
    assert out['sequence'].num_nodes == 1


def test_segments_match_brute_force():
    sentence = [0, 0, 0, 0, 0, 1, 1, 7, 7, 7, 7, 7, 7, 3]
    paragraph = [4, 4, 4, 4, 4, 4, 4, 9, 9, 9, 9, 9, 9, 9]
    data = Data(x=torch.randn(14, 3), sentence=torch.tensor(sentence),
                paragraph=torch.tensor(paragraph))
    transform = SequenceToHierarchy((2, 2), segments=('sentence',
                                                      'paragraph'))
    out = check_against_brute_force(data, transform, [sentence, paragraph])
    tree = check_hierarchy(out, 'token', 'sequence', 14)
    assert out['sentence'].num_nodes == 4
    assert out['paragraph'].num_nodes == 2
    assert tree.depth == 5
    # A window never spans two sentences.
    window = out['token', 'in', 'window0'].edge_index[1]
    sentence_of_window = torch.full((out['window0'].num_nodes, ), -1)
    for token, w in enumerate(window.tolist()):
        assert sentence_of_window[w] in (-1, sentence[token])
        sentence_of_window[w] = sentence[token]


def test_segments_without_windows():
    sentence = torch.tensor([0, 0, 1, 1, 1, 2])
    transform = SequenceToHierarchy(None, segments='sentence')
    out = transform(Data(x=torch.randn(6, 2), sentence=sentence))
    assert out['token', 'in', 'sentence'].edge_index[1].tolist() == \
        sentence.tolist()
    assert out.node_types == ['token', 'sentence', 'sequence']


@settings(max_examples=60, deadline=None)
@given(runs=st.lists(st.integers(1, 6), min_size=1, max_size=8),
       coarse_every=st.integers(1, 3),
       branching=st.lists(st.integers(2, 4), max_size=3))
def test_random_segments_match_brute_force(runs, coarse_every, branching):
    sentence = [i for i, n in enumerate(runs) for _ in range(n)]
    paragraph = [s // coarse_every for s in sentence]
    data = Data(x=torch.randn(len(sentence), 2),
                sentence=torch.tensor(sentence),
                paragraph=torch.tensor(paragraph))
    transform = SequenceToHierarchy(tuple(branching), pe_channels=4,
                                    segments=('sentence', 'paragraph'))
    out = check_against_brute_force(data, transform, [sentence, paragraph])
    check_hierarchy(out, 'token', 'sequence', len(sentence))


def test_batching_different_lengths():
    transform = SequenceToHierarchy((2, 3), pe_channels=4,
                                    segments=('sentence', ))
    examples = []
    for length in (1, 5, 12, 30):
        sentence = torch.arange(length) // 4
        examples.append(transform(Data(x=torch.randn(length, 3),
                                       sentence=sentence)))
    check_batching(examples, 'token', 3)


def test_keeps_attributes_and_edges():
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 3]])
    data = Data(x=torch.randn(4, 2), input_ids=torch.arange(4) + 100,
                edge_index=edge_index, y=torch.tensor([1]))
    out = SequenceToHierarchy((2, ))(data)
    assert torch.equal(out['token'].input_ids, data.input_ids)
    assert torch.equal(out['token', 'edge', 'token'].edge_index, edge_index)
    assert torch.equal(out.y, data.y)


def test_pure_function_of_input():
    data = Data(x=torch.randn(9, 2), sentence=torch.tensor(
        [0, 0, 0, 1, 1, 1, 1, 2, 2]))
    before = copy.deepcopy(data)
    transform = SequenceToHierarchy((2, ), segments=('sentence', ))
    first, second = transform(data), transform(data)
    for key in before.keys():
        assert torch.equal(data[key], before[key])
    for (et, a), (_, b) in zip(first.edge_index_dict.items(),
                               second.edge_index_dict.items()):
        assert torch.equal(a, b)


def test_root_counts_the_tokens():
    out = SequenceToHierarchy((2, ))(Data(input_ids=torch.arange(10),
                                          num_nodes=10))
    assert out['sequence'].num_leaves.tolist() == [10]
    assert out['token'].num_nodes == 10


def test_repr():
    assert repr(SequenceToHierarchy()) == (
        'SequenceToHierarchy(branching=(2, 4, 8, 16), segments=None, '
        'pe_channels=16, max_period=10000.0)')
    assert repr(SequenceToHierarchy([3], segments='sentence',
                                    pe_channels=4)) == (
        "SequenceToHierarchy(branching=(3,), segments=('sentence',), "
        "pe_channels=4, max_period=10000.0)")


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(branching=(2, 1)), ValueError,
     r"'branching' must be a sequence of integers >= 2 \(got \(2, 1\)\)"),
    (dict(branching=(2.0, )), TypeError,
     "'branching' must be a sequence of integers"),
    (dict(branching=2.0), TypeError,
     "'branching' must be a sequence of integers"),
    (dict(pe_channels=3), ValueError, "'pe_channels' must be a positive even"),
    (dict(pe_channels=0), ValueError, "'pe_channels' must be an integer >= 2"),
    (dict(pe_channels=4.0), TypeError, "'pe_channels' must be an integer"),
    (dict(max_period=1), ValueError,
     "'max_period' must be a finite number > 1"),
    (dict(max_period='x'), TypeError, "'max_period' must be a finite number"),
    (dict(segments=('sentence', 'sentence')), ValueError, "repeated names"),
    (dict(segments=('window0', )), ValueError, "clashes with a node type"),
    (dict(segments=('token', )), ValueError, "clashes with a node type"),
    (dict(segments=('not a name', )), ValueError, "'segments' must name"),
    (dict(segments=3), ValueError, "'segments' must be a sequence"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SequenceToHierarchy(**kwargs)


@pytest.mark.parametrize('sentence, match', [
    (None, "no attribute 'sentence'"),
    (torch.tensor([0., 0., 1.]), "must be an integer tensor of shape"),
    (torch.tensor([0, 1]), "has 2 entries but the sequence has 3 tokens"),
    (torch.tensor([0, 1, 0]), "must be contiguous runs"),
])
def test_bad_segments(sentence, match):
    data = Data(x=torch.randn(3, 2))
    if sentence is not None:
        data.sentence = sentence
    with pytest.raises(ValueError, match=match):
        SequenceToHierarchy(segments='sentence')(data)


def test_segments_must_nest():
    data = Data(x=torch.randn(4, 2), sentence=torch.tensor([0, 0, 1, 1]),
                paragraph=torch.tensor([0, 1, 1, 1]))
    with pytest.raises(ValueError, match="'sentence' segment crosses a "
                       "'paragraph' boundary at token 1"):
        SequenceToHierarchy(segments=('sentence', 'paragraph'))(data)


def test_bad_input():
    with pytest.raises(ValueError, match='at least one token'):
        SequenceToHierarchy()(Data(x=torch.randn(0, 2)))
    with pytest.raises(ValueError, match="Cannot tell the number of nodes"
                       ".*set 'num_nodes'"):
        SequenceToHierarchy()(Data(input_ids=torch.arange(10)))
    with pytest.raises(ValueError, match="Cannot tell the number of nodes"):
        SequenceToHierarchy()(Data(x=torch.tensor(1.0)))
    with pytest.raises(ValueError, match="already has an attribute 'pe'"):
        SequenceToHierarchy()(Data(x=torch.randn(3, 2),
                                   pe=torch.randn(3, 2)))
    with pytest.raises(TypeError, match='expects a torch_geometric'):
        SequenceToHierarchy()(torch.randn(3, 2))


# One builder: the same forest as the transformers integration ############


def as_parent_vector(out, transform):
    """The transform's hierarchy as one parent vector: the tokens, then
    every level in order, the root last (token_hierarchy's numbering)."""
    types = ['token'] + [f'window{i}' for i in range(len(
        transform.branching))] + list(transform.segments) + ['sequence']
    parts, start = [], 0
    for child, parent in zip(types, types[1:]):
        edge_index = out[child, 'in', parent].edge_index
        assert edge_index[0].tolist() == list(range(out[child].num_nodes))
        start += out[child].num_nodes
        parts.append(edge_index[1] + start)
    return torch.cat(parts + [torch.tensor([-1])])


def leaf_sets(parent, num_leaves, offset=0):
    """The leaves (shifted by :obj:`offset`) below every internal node."""
    below = {}
    for leaf in range(num_leaves):
        node = int(parent[leaf])
        while node >= 0:
            below.setdefault(node, set()).add(leaf + offset)
            node = int(parent[node])
    return {frozenset(s) for s in below.values()}


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=4),
       branching=st.lists(st.integers(2, 5), max_size=3),
       levels=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_same_forest_as_token_hierarchy(lengths, branching, levels, seed):
    """Where their semantics overlap (no tokens at the root, segments as
    contiguous runs), the transform's hierarchy with unary nodes spliced
    out is token_hierarchy's forest: node for node for one sequence, and
    sequence by sequence for a padded batch."""
    generator = torch.Generator().manual_seed(seed)
    names = ('sentence', 'paragraph')[:levels]
    transform = SequenceToHierarchy(tuple(branching), segments=names,
                                    pe_channels=2)
    valid = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    ids = [torch.zeros(valid.shape, dtype=torch.long) for _ in names]
    expected, offset = set(), 0
    for row, length in enumerate(lengths):
        valid[row, :length] = True
        starts = torch.rand(length, generator=generator) < 0.3
        starts[0] = True
        sentence = starts.long().cumsum(0) - 1
        per_level = [sentence, sentence // 2][:levels]
        for level, values in zip(ids, per_level):
            level[row, :length] = values
        data = Data(x=torch.randn(length, 2),
                    **dict(zip(names, per_level)))
        parent = splice_chains(as_parent_vector(transform(data), transform),
                               length)
        if len(lengths) == 1:
            assert torch.equal(parent, token_hierarchy(valid, branching,
                                                       ids))
        expected |= leaf_sets(parent, length, offset)
        offset += length
    batched = token_hierarchy(valid, branching, ids)
    assert leaf_sets(batched, offset) == expected
