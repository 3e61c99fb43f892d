r"""Molecules for the transforms: an RDKit molecule from a PyG ``Data``
(its ``smiles``, or OGB's integer atom and bond features), its bonds, and
the checks that the two agree."""
from typing import Any, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import scatter

# Columns and value ranges of OGB's integer atom and bond features
# (``ogb.utils.features``) that the molecule is rebuilt from.
OGB_ATOMIC_NUM, OGB_CHARGE, OGB_NUM_HS, OGB_RADICALS, OGB_AROMATIC = \
    0, 3, 4, 5, 7
OGB_NUM_ATOM_FEATURES = 9
OGB_ATOM_RANGES = (  # (column, name, largest valid index)
    (OGB_ATOMIC_NUM, 'atomic number', 117),
    (OGB_CHARGE, 'formal charge', 10),
    (OGB_NUM_HS, 'number of hydrogens', 8),
    (OGB_RADICALS, 'number of radical electrons', 4),
    (OGB_AROMATIC, 'aromaticity', 1),
)
OGB_CHARGE_OFFSET = 5  # index 0 is formal charge -5
OGB_NUM_BOND_TYPES = 4  # SINGLE, DOUBLE, TRIPLE, AROMATIC; 4 is 'misc'


def read_molecule(data: Data) -> Tuple[Any, Tensor]:
    """Validates :obj:`data`; returns its RDKit molecule and its bonds as
    sorted unique atom pairs ``[B, 2]`` (``i < j``, on the CPU)."""
    if not isinstance(data, Data):
        raise TypeError(f"'data' must be a torch_geometric.data.Data (got "
                        f"{type(data).__name__})")
    smiles = data.smiles if 'smiles' in data else None
    mol = _parse_smiles(smiles) if smiles is not None else None
    num_atoms = _check_atoms(data)
    bonds, bond_of_edge = _undirected_bonds(data, num_atoms)
    if mol is not None:
        _check_same_molecule(mol, num_atoms, bonds)
    else:
        mol = _mol_from_ogb(data, bonds, bond_of_edge)
    return mol, bonds


def _check_atoms(data: Data) -> int:
    """Validates :obj:`data.x` and returns the number of atoms."""
    x = data.x if 'x' in data else None
    if not isinstance(x, Tensor):
        raise ValueError("'data.x' is required: a tensor with one row of "
                         "features per atom")
    if x.dim() != 2 or x.size(0) == 0:
        raise ValueError(f"'data.x' must be a non-empty 2-D tensor [num_atoms,"
                         f" num_features] (got shape {tuple(x.shape)})")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("'data.x' contains NaN or infinite values")
    if 'pe' in data:
        raise ValueError("'data.pe' would be overwritten by the atom "
                         "positions; rename it")
    return x.size(0)


def _undirected_bonds(data: Data, num_atoms: int) -> Tuple[Tensor, Tensor]:
    """The bonds as sorted unique pairs ``[B, 2]`` with ``i < j``, and the
    bond of every directed edge of :obj:`edge_index`."""
    edge_index = data.edge_index if 'edge_index' in data else None
    if not isinstance(edge_index, Tensor):
        raise ValueError("'data.edge_index' is required: a LongTensor "
                         "[2, num_edges] of bonds")
    if edge_index.dim() != 2 or edge_index.size(0) != 2 or \
            edge_index.is_floating_point() or edge_index.dtype == torch.bool:
        raise ValueError(f"'data.edge_index' must be an integer tensor "
                         f"[2, num_edges] (got {edge_index.dtype} of shape "
                         f"{tuple(edge_index.shape)})")
    edge_index = edge_index.long().cpu()
    if edge_index.numel() and (edge_index.min() < 0
                               or edge_index.max() >= num_atoms):
        raise ValueError(f"'data.edge_index' must index atoms 0 .. "
                         f"{num_atoms - 1} (rows of 'data.x')")
    if (edge_index[0] == edge_index[1]).any():
        raise ValueError("'data.edge_index' contains self-loops, which are "
                         "not bonds")
    low, high = edge_index.min(dim=0).values, edge_index.max(dim=0).values
    key, bond_of_edge = torch.unique(low * num_atoms + high,
                                     return_inverse=True)
    bonds = torch.stack([key // num_atoms, key % num_atoms], dim=1)
    return bonds, bond_of_edge


def _parse_smiles(smiles: Any) -> Any:
    from rdkit import Chem, rdBase

    if not isinstance(smiles, str):
        raise TypeError(f"'data.smiles' must be a str (got "
                        f"{type(smiles).__name__})")
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        raise ValueError(f"'data.smiles' is not a valid SMILES string of a "
                         f"non-empty molecule (got {smiles!r})")
    return mol


def _check_same_molecule(mol: Any, num_atoms: int, bonds: Tensor) -> None:
    """The parsed SMILES must describe the graph's atoms and bonds."""
    if mol.GetNumAtoms() != num_atoms:
        raise ValueError(
            f"'data.smiles' has {mol.GetNumAtoms()} heavy atoms but 'data.x' "
            f"has {num_atoms} rows (explicit hydrogens are not supported)")
    # RDKit hands bonds out one object at a time.
    pairs = torch.tensor([sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
                          for b in mol.GetBonds()], dtype=torch.long)
    pairs = pairs.view(-1, 2)
    pairs = pairs[torch.argsort(pairs[:, 0] * num_atoms + pairs[:, 1])]
    if not torch.equal(pairs, bonds):
        raise ValueError("the bonds of 'data.smiles' do not match "
                         "'data.edge_index'")


def _mol_from_ogb(data: Data, bonds: Tensor, bond_of_edge: Tensor) -> Any:
    """Rebuilds the RDKit molecule from OGB's integer features."""
    from rdkit import Chem

    x = data.x
    if x.is_floating_point() or x.dtype == torch.bool or \
            x.size(1) < OGB_NUM_ATOM_FEATURES:
        raise ValueError(
            f"without 'data.smiles', 'data.x' must hold OGB's integer atom "
            f"features [num_atoms, {OGB_NUM_ATOM_FEATURES}] (got {x.dtype} "
            f"of shape {tuple(x.shape)})")
    for column, name, largest in OGB_ATOM_RANGES:
        if x[:, column].min() < 0 or x[:, column].max() > largest:
            raise ValueError(f"'data.x[:, {column}]' ({name}, OGB-encoded) "
                             f"must lie in 0 .. {largest}")
    bond_type = _ogb_bond_types(data, bond_of_edge, bonds.size(0))
    atoms = x.long().cpu().tolist()
    mol = Chem.RWMol()
    # RDKit builds molecules one atom and one bond at a time.
    for row in atoms:
        atom = Chem.Atom(row[OGB_ATOMIC_NUM] + 1)
        atom.SetFormalCharge(row[OGB_CHARGE] - OGB_CHARGE_OFFSET)
        atom.SetNumExplicitHs(row[OGB_NUM_HS])
        atom.SetNoImplicit(True)
        atom.SetNumRadicalElectrons(row[OGB_RADICALS])
        atom.SetIsAromatic(bool(row[OGB_AROMATIC]))
        mol.AddAtom(atom)
    types = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE,
             Chem.BondType.TRIPLE, Chem.BondType.AROMATIC)
    for (i, j), t in zip(bonds.tolist(), bond_type.tolist()):
        mol.AddBond(i, j, types[t])
        if types[t] == Chem.BondType.AROMATIC:
            mol.GetBondBetweenAtoms(i, j).SetIsAromatic(True)
    mol = mol.GetMol()
    mol.UpdatePropertyCache(strict=False)
    Chem.GetSymmSSSR(mol)  # ring information for the BRICS patterns
    return mol


def _ogb_bond_types(data: Data, bond_of_edge: Tensor,
                    num_bonds: int) -> Tensor:
    """OGB bond type (0 .. 3) of every bond, read off :obj:`edge_attr`."""
    edge_attr = data.edge_attr if 'edge_attr' in data else None
    num_edges = data.edge_index.size(1)
    if not isinstance(edge_attr, Tensor) or edge_attr.dim() != 2 or \
            edge_attr.size(0) != num_edges or edge_attr.size(1) == 0 or \
            edge_attr.is_floating_point() or edge_attr.dtype == torch.bool:
        got = (f"{edge_attr.dtype} of shape {tuple(edge_attr.shape)}"
               if isinstance(edge_attr, Tensor) else type(edge_attr).__name__)
        raise ValueError(
            f"without 'data.smiles', 'data.edge_attr' must hold OGB's "
            f"integer bond features [{num_edges}, 3] (got {got})")
    bond_type = edge_attr[:, 0].long().cpu()
    if num_edges and (bond_type.min() < 0
                      or bond_type.max() >= OGB_NUM_BOND_TYPES):
        raise ValueError(f"'data.edge_attr[:, 0]' (bond type, OGB-encoded) "
                         f"must lie in 0 .. {OGB_NUM_BOND_TYPES - 1}")
    lowest = scatter(bond_type, bond_of_edge, 0, dim_size=num_bonds,
                     reduce='min')
    highest = scatter(bond_type, bond_of_edge, 0, dim_size=num_bonds,
                      reduce='max')
    if not torch.equal(lowest, highest):
        raise ValueError("'data.edge_attr[:, 0]' gives the two directions "
                         "of a bond different bond types")
    return lowest
