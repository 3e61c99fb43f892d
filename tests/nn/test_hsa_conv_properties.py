"""Property-based tests (hypothesis) of ``Tree.from_hetero`` + ``HSAConv``
over random ``HeteroData`` hierarchies: several leaf types of different
widths, nesting that skips levels, node ids shuffled within every type,
several examples batched by PyG's ``DataLoader``.

(Random forests on the functional core are in tests/test_properties.py.)
"""
from typing import Dict, List, NamedTuple, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_geometric.data import HeteroData
from torch_geometric.loader import DataLoader

from pyg_hsa import Tree, hsa_dense
from pyg_hsa.nn import HSAConv
from pyg_hsa.testing import dense_output

LEAF_WIDTHS = {'atom': 3, 'point': 5, 'token': 2}
INTERNAL = {1: ['root'], 2: ['level1', 'root'],
            3: ['level1', 'level2', 'root']}  # bottom-up
PE_WIDTHS = {'atom': 2, 'point': 3, 'token': 1, 'level1': 2, 'level2': 4,
             'root': 2}
HEADS, CHANNELS = 2, 3
SETTINGS = settings(max_examples=60, deadline=None)


class Schema(NamedTuple):
    leaf_types: List[str]
    internal_types: List[str]  # bottom-up; the last one is the root type
    pe_types: List[str]
    type_order: List[str]  # order the types are added to the HeteroData

    def level(self, node_type: str) -> int:
        if node_type in self.leaf_types:
            return 0
        return 1 + self.internal_types.index(node_type)

    def nesting(self) -> List[Tuple[str, str]]:
        """Every (child, parent) type pair: any type may sit in any higher
        internal type, skipping levels."""
        types = self.leaf_types + self.internal_types
        return [(c, p) for c in types for p in self.internal_types
                if self.level(p) > self.level(c)]


class Example(NamedTuple):
    data: HeteroData
    counts: Dict[str, int]
    #: (child type, child id, parent type, parent id) of every non-root.
    edges: List[Tuple[str, int, str, int]]


@st.composite
def schemas(draw) -> Schema:
    leaf_types = draw(st.lists(st.sampled_from(sorted(LEAF_WIDTHS)),
                               min_size=1, max_size=3, unique=True))
    internal = INTERNAL[draw(st.integers(1, 3))]
    types = leaf_types + internal
    pe_types = draw(st.lists(st.sampled_from(types), unique=True))
    order = draw(st.permutations(types))
    return Schema(leaf_types, internal, pe_types, list(order))


def make_example(schema: Schema, rng: np.random.Generator) -> Example:
    """One random hierarchy: a single root, every internal node with at
    least one child, node ids shuffled within each type."""
    counts = {'root': 1}
    for nt in schema.internal_types[:-1]:
        counts[nt] = int(rng.integers(0, 4))
    for nt in schema.leaf_types:
        counts[nt] = int(rng.integers(0, 6))
    edges = []
    # Parents: any node of any higher internal type (levels may skip).
    for nt in schema.internal_types[:-1][::-1] + schema.leaf_types:
        above = [p for p in schema.internal_types
                 if schema.level(p) > schema.level(nt) and counts[p] > 0]
        for i in range(counts[nt]):
            p = above[int(rng.integers(len(above)))]
            edges.append((nt, i, p, int(rng.integers(counts[p]))))
    # A childless group gets a new leaf of a random leaf type.
    has_child = {(p, j) for _, _, p, j in edges}
    for nt in schema.internal_types:
        for j in range(counts[nt]):
            if (nt, j) not in has_child:
                leaf = schema.leaf_types[int(rng.integers(
                    len(schema.leaf_types)))]
                edges.append((leaf, counts[leaf], nt, j))
                counts[leaf] += 1
    # Shuffle the ids within every type.
    perm = {nt: rng.permutation(n) for nt, n in counts.items()}
    edges = [(c, int(perm[c][i]), p, int(perm[p][j]))
             for c, i, p, j in edges]

    data = HeteroData()
    for nt in schema.type_order:
        if nt in LEAF_WIDTHS:
            data[nt].x = torch.from_numpy(rng.standard_normal(
                (counts[nt], LEAF_WIDTHS[nt])))
        else:
            data[nt].num_nodes = counts[nt]
        if nt in schema.pe_types:
            data[nt].pe = torch.from_numpy(rng.standard_normal(
                (counts[nt], PE_WIDTHS[nt])))
    for c, p in schema.nesting():
        cols = [(i, j) for ct, i, pt, j in edges if (ct, pt) == (c, p)]
        cols = [cols[i] for i in rng.permutation(len(cols))]
        data[c, 'in', p].edge_index = torch.tensor(
            cols, dtype=torch.long).view(-1, 2).t()
    return Example(data, counts, edges)


def make_conv(schema: Schema, self_loops: bool, seed: int) -> HSAConv:
    torch.manual_seed(seed)
    pos_channels = {nt: PE_WIDTHS[nt] for nt in schema.pe_types} or None
    conv = HSAConv({nt: LEAF_WIDTHS[nt] for nt in schema.leaf_types},
                   CHANNELS, heads=HEADS, pos_channels=pos_channels,
                   self_loops=self_loops).double()
    with torch.no_grad():  # (LayerNorm starts as the identity otherwise)
        for param in conv.parameters():
            param.normal_(0.0, 0.7)
    return conv


def brute_force(conv: HSAConv, schema: Schema, examples: List[Example]
                ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """HSAConv on the batch of :obj:`examples`, from the generator's own
    record of the nesting: the documented global numbering (leaf types
    first, then internal types, each in the order the types were added,
    examples one after the other inside a type), projections applied by
    hand, and the explicit attention matrix of :func:`hsa_dense`. Returns
    the outputs per leaf type and the example index of every leaf."""
    leaf_types = [nt for nt in schema.type_order if nt in LEAF_WIDTHS]
    order = leaf_types + [nt for nt in schema.type_order
                          if nt not in LEAF_WIDTHS]
    start, offset = 0, {}
    for nt in order:
        for e, example in enumerate(examples):
            offset[nt, e] = start
            start += example.counts[nt]
    num_nodes = start
    num_leaves = sum(ex.counts[nt] for ex in examples for nt in leaf_types)
    parent = torch.full((num_nodes, ), -1, dtype=torch.long)
    for e, example in enumerate(examples):
        for c, i, p, j in example.edges:
            parent[offset[c, e] + i] = offset[p, e] + j
    example_of = torch.tensor([e for nt in leaf_types
                               for e, ex in enumerate(examples)
                               for _ in range(ex.counts[nt])])

    def leaf_rows(lins, attr='x') -> torch.Tensor:
        return torch.cat([
            F.linear(torch.cat([ex.data[nt][attr] for ex in examples]),
                     lins[nt].weight, lins[nt].bias) for nt in leaf_types
        ])

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, HEADS, CHANNELS)

    def norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
        return F.layer_norm(x, (CHANNELS, ), ln.weight, ln.bias, ln.eps)

    q = norm(heads(leaf_rows(conv.lin_query.lins)), conv.norm_query)
    k = norm(heads(leaf_rows(conv.lin_key.lins)), conv.norm_key)
    v = heads(leaf_rows(conv.lin_value.lins))
    pos = None
    if schema.pe_types:
        pos = torch.zeros(num_nodes, HEADS * CHANNELS, dtype=torch.float64)
        for nt in schema.pe_types:
            for e, ex in enumerate(examples):
                lo = offset[nt, e]
                pos[lo:lo + ex.counts[nt]] = F.linear(
                    ex.data[nt].pe, conv.lin_pos.lins[nt].weight)
        pos = heads(pos)
    theta = hsa_dense(q, k, Tree.from_parent(parent, num_leaves), pe=pos,
                      self_loops=conv.self_loops)
    out = dense_output(theta, v).reshape(num_leaves, -1)
    out = out + leaf_rows(conv.lin_skip.lins)
    by_type, start = {}, 0
    for nt in leaf_types:
        n = sum(ex.counts[nt] for ex in examples)
        by_type[nt] = out[start:start + n]
        start += n
    return by_type, example_of


def run(conv: HSAConv, data: HeteroData) -> Dict[str, torch.Tensor]:
    return conv(data.x_dict, Tree.from_hetero(data),
                pe=data.collect('pe', allow_empty=True) or None)


def batch_of(examples: List[Example]) -> HeteroData:
    loader = DataLoader([ex.data for ex in examples],
                        batch_size=len(examples))
    return next(iter(loader))


cases = st.tuples(schemas(), st.integers(1, 3), st.integers(0, 2**16),
                  st.booleans())


def draw_case(case):
    schema, num_examples, seed, self_loops = case
    rng = np.random.default_rng(seed)
    examples = [make_example(schema, rng) for _ in range(num_examples)]
    return schema, examples, make_conv(schema, self_loops, seed)


@SETTINGS
@given(cases)
def test_hetero_conv_equals_brute_force(case):
    schema, examples, conv = draw_case(case)
    batch = batch_of(examples)
    tree = Tree.from_hetero(batch)
    out = run(conv, batch)
    expected, example_of = brute_force(conv, schema, examples)
    assert tree.num_roots == len(examples)
    assert torch.equal(tree.batch, example_of)
    assert sorted(out) == sorted(expected)
    for nt in expected:
        torch.testing.assert_close(out[nt], expected[nt], rtol=0,
                                   atol=1e-10)


@SETTINGS
@given(cases)
def test_hetero_batch_equals_each_example_alone(case):
    _, examples, conv = draw_case(case)
    batch = batch_of(examples)
    out = run(conv, batch)
    alone = [run(conv, ex.data) for ex in examples]
    for nt, rows in out.items():
        expected = torch.cat([a[nt] for a in alone])
        torch.testing.assert_close(rows, expected, rtol=0, atol=1e-12)


@SETTINGS
@given(cases)
def test_hetero_equivariance_to_renumbering(case):
    schema, examples, conv = draw_case(case)
    seed = case[2]
    batch = batch_of(examples)
    out = run(conv, batch)
    # New ids inside every node type of the whole batch (examples mixed),
    # nesting edges in a new column order: perm[nt][new] = old.
    rng = np.random.default_rng(seed + 1)
    perm = {nt: torch.from_numpy(rng.permutation(batch[nt].num_nodes))
            for nt in batch.node_types}
    inv = {nt: torch.argsort(p) for nt, p in perm.items()}
    renumbered = HeteroData()
    for nt in schema.type_order:
        store = batch[nt]
        if 'x' in store:
            renumbered[nt].x = store.x[perm[nt]]
        else:
            renumbered[nt].num_nodes = store.num_nodes
        if 'pe' in store:
            renumbered[nt].pe = store.pe[perm[nt]]
    for (c, rel, p), ei in batch.edge_index_dict.items():
        cols = torch.from_numpy(rng.permutation(ei.size(1)))
        renumbered[c, rel, p].edge_index = torch.stack(
            [inv[c][ei[0]], inv[p][ei[1]]])[:, cols]
    out_new = run(conv, renumbered)
    for nt, rows in out.items():
        torch.testing.assert_close(out_new[nt], rows[perm[nt]], rtol=0,
                                   atol=1e-12)
