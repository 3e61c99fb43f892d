"""The windowed token forest of pyg_hsa.utils.token_forest, as the
transformers integration uses it (padded batches, tokens at the root,
unary nodes spliced out): against a brute-force construction and by hand.
(Its agreement with SequenceToHierarchy is tested with the transform.)"""
import random

import numpy as np
import pytest
import torch

from pyg_hsa import Tree, hsa_attention
from pyg_hsa.integrations.encoders import first_and_last
from pyg_hsa.utils.token_forest import (
    check_branching,
    splice_chains,
    token_hierarchy,
    token_levels,
)


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
    root_tokens = first_and_last(valid) if rng.random() < 0.5 else None
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
    parent = token_hierarchy(valid, (2, ), root_tokens=first_and_last(valid))
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
    with pytest.raises(TypeError, match="'valid' must be a boolean tensor"):
        token_hierarchy([[True, False]])
    with pytest.raises(TypeError, match="'root_tokens' must be a boolean"):
        token_hierarchy(valid, root_tokens=[[True] * 4])
    with pytest.raises(ValueError, match=r"'root_tokens' must have the "
                       r"shape \(1, 4\)"):
        token_hierarchy(valid, root_tokens=torch.ones(4, dtype=torch.bool))
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
    spliced = splice_chains(parent, 5)
    assert spliced.tolist() == [5, 5, 6, 6, 8, 7, 7, 8, -1]
    q, k, v = (torch.randn(5, 2, 4, dtype=torch.float64) for _ in range(3))
    expected = hsa_attention(q, k, v, parent, self_loops=True)
    torch.testing.assert_close(hsa_attention(q, k, v, spliced,
                                             self_loops=True), expected)


def test_token_levels_by_hand():
    # Two sequences; sentences 0 0 0 1 | 5 5; windows of 2 in each.
    sequence = torch.tensor([0, 0, 0, 0, 1, 1])
    sentence = torch.tensor([0, 0, 0, 1, 5, 5])
    windows, sentences = token_levels(sequence, (2, ), [sentence])
    assert windows.parent.tolist() == [0, 0, 1, 2, 3, 3]
    assert windows.num_nodes == 4
    assert windows.first.tolist() == [0, 2, 3, 4]
    assert sentences.parent.tolist() == [0, 0, 1, 2]
    assert sentences.first.tolist() == [0, 3, 4]
    assert token_levels(sequence[:0], (2, )) == []


def test_check_branching():
    assert check_branching(None) == ()
    assert check_branching(3) == (3, )
    assert check_branching([2, np.int64(4)]) == (2, 4)
    assert check_branching(range(2, 4)) == (2, 3)
    with pytest.raises(ValueError, match=r"'branching' must be a sequence "
                       r"of integers >= 2 \(got \(1,\)\)"):
        check_branching((1, ))
    with pytest.raises(ValueError, match='>= 2'):
        check_branching(0)
    for bad in ((2.0, ), 2.0, (True, ), 'ab', {2, 3}, object()):
        with pytest.raises(TypeError,
                           match="'branching' must be a sequence"):
            check_branching(bad)
