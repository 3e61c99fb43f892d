"""The FLOP counts of pyg_hsa.functional.flops against hand counts, and
the padded count against the buckets the implementation really runs."""
import pytest
import torch

from pyg_hsa import Tree
from pyg_hsa.functional.flops import (
    dense_attention_flops,
    hsa_attention_flops,
)
from pyg_hsa.functional.layout import layout_of

# Per ordered pair of family members, with C = Cv = 2: 2C + 5 + 2Cv.
PAIR = 13


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
    # A lone leaf attends to itself only with self loops.
    lone = torch.tensor([-1])
    assert hsa_attention_flops(lone, 1, 2) - hsa_attention_flops(
        lone, 1, 2, self_loops=False) == PAIR


def test_query_resolved_flop_counts_by_hand():
    # Same tree. Rows x members: the root family (2 windows) is seen by 4
    # leaves, each window (2 leaves) by its 2 leaves: 4 * 2 + 2 * (2 * 2)
    # = 16 pairs of 13; pooling of k and v (C + Cv) * (E + I) = 4 * 9;
    # every leaf's own term and merge: 4 * 13.
    parent = torch.tensor([4, 4, 5, 5, 6, 6, -1])
    assert hsa_attention_flops(parent, 1, 2, resolution='query') == \
        16 * PAIR + 36 + 4 * PAIR
    # A flat tree is softmax attention: N^2 pairs, plus pooling and own.
    flat = torch.tensor([5] * 5 + [-1])
    assert hsa_attention_flops(flat, 2, 2, resolution='query') == \
        2 * (25 * PAIR + 4 * 6 + 5 * PAIR)
    with pytest.raises(ValueError, match="'resolution'"):
        hsa_attention_flops(flat, 1, 2, resolution='rows')


def test_padded_counts_the_bucket_widths():
    # Families of 3 (node 7), 4 (node 8) and 2 (the root 9): batched into
    # one bucket of width 4, so 3 * 16 pairs instead of 9 + 16 + 4.
    parent = torch.tensor([7, 7, 7, 8, 8, 8, 8, 9, 9, -1])
    tree = Tree.from_parent(parent)
    buckets = layout_of(tree, True).buckets
    assert [(b.width, b.index.size(0)) for b in buckets] == [(4, 3)]
    unpadded = hsa_attention_flops(tree, 1, 2)
    padded = hsa_attention_flops(tree, 1, 2, padded=True)
    assert padded - unpadded == (48 - 29) * PAIR
    # A family alone in its bucket is not padded (no power of two: 3).
    star = torch.tensor([3, 3, 3, -1])
    assert hsa_attention_flops(star, 1, 2, padded=True) == \
        hsa_attention_flops(star, 1, 2)
    # An only-child leaf: with self loops a family of one either way;
    # without, its chain is contracted and costs no attention.
    chain = torch.tensor([2, 3, 3, -1])
    assert hsa_attention_flops(chain, 1, 2, padded=True) == \
        hsa_attention_flops(chain, 1, 2)
    assert hsa_attention_flops(chain, 1, 2, self_loops=False) - \
        hsa_attention_flops(chain, 1, 2, self_loops=False,
                            padded=True) == PAIR


def test_padded_matches_the_buckets_on_token_forests():
    from pyg_hsa.utils.token_forest import token_hierarchy
    valid = torch.ones(3, 50, dtype=torch.bool)
    valid[1, 37:] = False
    valid[2, 5:] = False
    tree = Tree.from_parent(token_hierarchy(valid, (2, 4, 8)))
    for self_loops in (True, False):
        layout = layout_of(tree, self_loops)
        pairs = sum(b.width**2 * b.index.size(0) for b in layout.buckets)
        pairs += layout.lone_leaves.numel() if self_loops else 0
        base = hsa_attention_flops(tree, 1, 2, self_loops=self_loops)
        family = torch.bincount(tree.parent[tree.parent >= 0])
        exact = int((family[family > 0]**2).sum())
        exact += int(tree.num_roots == tree.num_nodes) if self_loops else 0
        assert hsa_attention_flops(tree, 1, 2, self_loops=self_loops,
                                   padded=True) - base == \
            (pairs - exact) * PAIR


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(heads=0), ValueError, "'heads' must be an integer >= 1"),
    (dict(heads=2.0), TypeError, "'heads' must be an integer"),
    (dict(head_dim=True), TypeError, "'head_dim' must be an integer"),
    (dict(value_dim=0), ValueError, "'value_dim' must be an integer >= 1"),
    (dict(padded=1), TypeError, "'padded' must be a bool"),
    (dict(self_loops='yes'), TypeError, "'self_loops' must be a bool"),
])
def test_flop_counts_reject_bad_arguments(kwargs, error, match):
    arguments = dict(heads=1, head_dim=2)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        hsa_attention_flops(torch.tensor([1, -1]), **arguments)
    if 'heads' in kwargs or 'head_dim' in kwargs:
        with pytest.raises(error, match=match):
            dense_attention_flops(4, arguments['heads'],
                                  arguments['head_dim'])
