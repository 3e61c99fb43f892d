r"""Molecules as atom → fragment → (component →) molecule hierarchies."""
from typing import Any, List, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform
from torch_geometric.utils import scatter

from pyg_hsa.utils.checks import check_bool, check_int, describe
from pyg_hsa.utils.hierarchy import (
    add_level,
    add_root,
    leaf_hetero,
    random_walk_encoding,
)

FRAGMENT_SCHEMES = ('brics', 'rings', 'atoms')

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
# Largest graph whose random walk runs on a dense transition matrix; larger
# ones take the sparse walk.
DENSE_WALK_NODES = 128


@functional_transform('molecule_to_hierarchy')
class MoleculeToHierarchy(BaseTransform):
    r"""Turns a molecular graph into a hierarchy of atoms, chemically
    meaningful fragments, connected components and the molecule, for
    Hierarchical Self-Attention (functional name:
    :obj:`molecule_to_hierarchy`).

    The input is a :class:`~torch_geometric.data.Data` with one row of
    :obj:`x` per heavy atom and the bonds in :obj:`edge_index` (usually in
    both directions), as made by
    :func:`torch_geometric.utils.from_smiles` or by OGB
    (:func:`ogb.utils.smiles2graph`, the OGB molecule datasets).

    * With a :obj:`smiles` attribute, the molecule is parsed from it by
      RDKit; its atom count must equal the rows of :obj:`x` and its bonds
      the pairs in :obj:`edge_index` (so hydrogens added with
      :obj:`from_smiles(..., with_hydrogen=True)` are refused). :obj:`x`
      may then hold any features.
    * Without :obj:`smiles`, the molecule is rebuilt from :obj:`x` and
      :obj:`edge_attr`, which are **assumed to be OGB-encoded**: atomic
      number ``x[:, 0] + 1``, formal charge ``x[:, 3] - 5``, hydrogen count
      ``x[:, 4]``, radical electrons ``x[:, 5]``, aromaticity ``x[:, 7]``,
      bond type ``edge_attr[:, 0]`` (single, double, triple, aromatic).
      PyG's :func:`from_smiles` encodes the atomic number differently
      (``x[:, 0]`` *is* the atomic number), so keep its :obj:`smiles`.

    Both routes give the same hierarchy for the same molecule. The output
    :class:`~torch_geometric.data.HeteroData` has

    * leaf type :obj:`'atom'` with :obj:`x` and all other node-level
      attributes; bonds as :obj:`('atom', 'bond', 'atom')` with their
      :obj:`edge_attr`; graph-level attributes (:obj:`y`, :obj:`smiles`)
      in the global store;
    * :obj:`'fragment'`: every atom lies in exactly one fragment, a
      connected substructure. A ring system (all rings that share an atom,
      fused, bridged or spiro) is always one whole fragment. The acyclic
      rest is split according to :obj:`fragments`;
    * :obj:`'component'` (with :obj:`components=True`): the connected
      parts of the molecule (salt ions, solvent molecules, the parts of a
      mixture written with ``'.'`` in SMILES);
    * root :obj:`'molecule'`, one per example.

    The work runs on the CPU, where RDKit lives; the new tensors are placed
    on the device of :obj:`x`.

    Nesting edges are :obj:`('atom', 'in', 'fragment')`,
    :obj:`('fragment', 'in', 'component')` and
    :obj:`('component', 'in', 'molecule')`, or
    :obj:`('fragment', 'in', 'molecule')` without components. Fragments and
    components are numbered by their lowest atom index.

    Bonds between fragments are never ring bonds, so they are bridges and
    the *fragment graph* (fragments joined by the bonds between them) is a
    tree in every component, the molecule's junction tree. Positions
    (:obj:`pe`) say where a node sits inside its parent's family, with
    :math:`K` = :obj:`walk_length` and :math:`P = D^{-1} A` the transition
    matrix of a graph's simple random walk (an isolated node stays put,
    :math:`P_{ii} = 1`):

    * atom, width :math:`K + 1`: the random-walk return probabilities
      :math:`(P^k)_{ii}, k = 1..K` of the walk on the bonds *inside the
      atom's fragment* (they tell ring atoms, ring sizes, chain ends and
      branch points apart), followed by the number of the atom's bonds
      that leave its fragment (its attachment points);
    * fragment, width :math:`K + 2`: the random-walk return probabilities
      of the fragment in the junction tree (a terminal group, a linker or
      a hub), a ring-system flag (1 if the fragment contains a ring), and
      the fragment's share of the atoms of its parent (component, or
      molecule without components);
    * component, width 2: its share of the molecule's atoms and its net
      formal charge (a counter-ion vs. the main species).

    Args:
        fragments (str, optional): how acyclic atoms are grouped. Ring
            systems are always whole fragments, and every bond between a
            ring atom and an atom outside its ring system is cut.
            :obj:`'brics'`: in addition, the BRICS bonds (Degen et al.,
            2008, RDKit's :func:`FindBRICSBonds`) between acyclic atoms are
            cut, so chains split into functional groups and linkers.
            :obj:`'rings'`: every connected acyclic piece is one fragment.
            :obj:`'atoms'`: every acyclic atom is its own fragment.
            (default: :obj:`'brics'`)
        components (bool, optional): if :obj:`True`, a :obj:`'component'`
            level always sits between fragments and molecule, also for
            connected molecules (then it has one node). Keep it on so that
            every example of a dataset has the same node and edge types,
            which PyG's :class:`DataLoader` needs to batch
            :class:`HeteroData`; with :obj:`False`, fragments of all
            components nest directly in the molecule. (default:
            :obj:`True`)
        walk_length (int, optional): :math:`K`, the number of random-walk
            steps in the atom and fragment positions. (default: :obj:`8`)

    Example:
        >>> from torch_geometric.utils import from_smiles
        >>> data = MoleculeToHierarchy()(from_smiles('c1ccccc1CCO.[Na+]'))
        >>> data['fragment'].num_nodes, data['component'].num_nodes
        (3, 2)
    """
    def __init__(self, fragments: str = 'brics', components: bool = True,
                 walk_length: int = 8):
        if not isinstance(fragments, str):
            raise TypeError(f"'fragments' must be one of {FRAGMENT_SCHEMES} "
                            f"(got {describe(fragments)})")
        if fragments not in FRAGMENT_SCHEMES:
            raise ValueError(f"'fragments' must be one of {FRAGMENT_SCHEMES}"
                             f" (got {fragments!r})")
        self.fragments = str(fragments)
        self.components = check_bool(components, 'components')
        self.walk_length = check_int(walk_length, 'walk_length', minimum=1)

    def forward(self, data: Data) -> HeteroData:
        mol, bonds = _molecule(data)
        num_atoms = data.x.size(0)
        in_ring, ring_bond = _ring_systems(mol, bonds, num_atoms)
        cut = self._cut_bonds(mol, bonds, in_ring, ring_bond, num_atoms)
        fragment = _connected_components(bonds[~cut], num_atoms)
        num_fragments = int(fragment.max()) + 1
        component = _connected_components(bonds, num_atoms)
        num_components = int(component.max()) + 1
        # Fragments never straddle components: read it off any member.
        component_of_fragment = scatter(component, fragment, 0,
                                        dim_size=num_fragments, reduce='min')
        if self.components:
            parent_of_fragment = component_of_fragment
        else:
            parent_of_fragment = torch.zeros_like(component_of_fragment)

        # Everything above ran on the CPU, where RDKit lives.
        device = data.x.device
        out = leaf_hetero(data, 'atom', 'bond')
        add_level(out, 'atom', 'fragment', fragment.to(device),
                  num_fragments)
        out['atom'].pe = self._atom_pe(bonds, cut, fragment).to(device)
        out['fragment'].pe = self._fragment_pe(
            bonds[cut], fragment, in_ring, parent_of_fragment).to(device)
        if self.components:
            add_level(out, 'fragment', 'component',
                      component_of_fragment.to(device), num_components)
            add_root(out, 'component', 'molecule', num_atoms, device)
            out['component'].pe = _component_pe(
                mol, component, num_components).to(device)
        else:
            add_root(out, 'fragment', 'molecule', num_atoms, device)
        return out

    def _cut_bonds(self, mol: Any, bonds: Tensor, in_ring: Tensor,
                   ring_bond: Tensor, num_atoms: int) -> Tensor:
        """Which bonds separate two fragments."""
        if self.fragments == 'atoms':
            return ~ring_bond
        at_ring = in_ring[bonds[:, 0]] | in_ring[bonds[:, 1]]
        # A non-ring bond at a ring atom leaves its ring system.
        cut = ~ring_bond & at_ring
        # BRICS bonds are never ring bonds and those at ring atoms are cut
        # already: RDKit is only needed if two acyclic atoms share a bond.
        if self.fragments == 'brics' and not bool(at_ring.all()):
            cut |= _brics_bonds(mol, bonds, num_atoms)
        return cut

    def _atom_pe(self, bonds: Tensor, cut: Tensor,
                 fragment: Tensor) -> Tensor:
        inside = _both_directions(bonds[~cut])
        walk = _return_probabilities(inside, fragment.numel(),
                                     self.walk_length)
        attachments = torch.bincount(bonds[cut].reshape(-1),
                                     minlength=fragment.numel()).float()
        return torch.cat([walk, attachments.unsqueeze(-1)], dim=-1)

    def _fragment_pe(self, cut_bonds: Tensor, fragment: Tensor,
                     in_ring: Tensor, parent: Tensor) -> Tensor:
        num_fragments = parent.numel()
        junction_tree = _both_directions(fragment[cut_bonds])
        walk = _return_probabilities(junction_tree, num_fragments,
                                     self.walk_length)
        has_ring = scatter(in_ring.float(), fragment, 0,
                           dim_size=num_fragments, reduce='max')
        size = torch.bincount(fragment, minlength=num_fragments).float()
        parent_size = scatter(size, parent, 0, reduce='sum')[parent]
        return torch.cat([walk, has_ring.unsqueeze(-1),
                          (size / parent_size).unsqueeze(-1)], dim=-1)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(fragments={self.fragments!r}, '
                f'components={self.components}, '
                f'walk_length={self.walk_length})')


def _molecule(data: Data) -> Tuple[Any, Tensor]:
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


def _brics_bonds(mol: Any, bonds: Tensor, num_atoms: int) -> Tensor:
    """Which bonds BRICS would break."""
    from rdkit.Chem import BRICS

    found = [pair for pair, _ in BRICS.FindBRICSBonds(mol)]
    found = torch.tensor(found, dtype=torch.long).view(-1, 2)
    low, high = found.min(dim=1).values, found.max(dim=1).values
    return torch.isin(bonds[:, 0] * num_atoms + bonds[:, 1],
                      low * num_atoms + high)


def _ring_systems(mol: Any, bonds: Tensor,
                  num_atoms: int) -> Tuple[Tensor, Tensor]:
    """Ring atoms, and the bonds inside a ring system (rings that share an
    atom merged). A bond joining two atoms of one ring system closes a
    cycle, so it is a ring bond; no other bond is."""
    rings: List[Tuple[int, ...]] = list(mol.GetRingInfo().AtomRings())
    atom = torch.tensor([a for ring in rings for a in ring],
                        dtype=torch.long)
    ring = torch.repeat_interleave(
        torch.arange(len(rings)),
        torch.tensor([len(r) for r in rings], dtype=torch.long))
    in_ring = torch.zeros(num_atoms, dtype=torch.bool)
    in_ring[atom] = True
    # Atoms and rings as one bipartite graph: its components are the ring
    # systems (plus every acyclic atom alone).
    system = _connected_components(
        torch.stack([atom, num_atoms + ring], dim=1),
        num_atoms + len(rings))[:num_atoms]
    i, j = bonds[:, 0], bonds[:, 1]
    ring_bond = in_ring[i] & (system[i] == system[j])
    return in_ring, ring_bond


def _connected_components(pairs: Tensor, num_nodes: int) -> Tensor:
    """Component of every node, numbered by its lowest node, from the
    undirected edges ``pairs`` ``[E, 2]``: minimum-label propagation with
    pointer jumping (a loop over propagation rounds, not nodes)."""
    label = torch.arange(num_nodes)
    row, col = _both_directions(pairs)
    while row.numel():
        new = label.scatter_reduce(0, row, label[col], reduce='amin')
        new = new[new]
        if torch.equal(new, label):
            break
        label = new
    return torch.unique(label, return_inverse=True)[1]


def _return_probabilities(edge_index: Tensor, num_nodes: int,
                          walk_length: int) -> Tensor:
    """:func:`random_walk_encoding`, computed with dense matrix powers for
    molecule-sized graphs (much faster there than the sparse walk)."""
    if num_nodes > DENSE_WALK_NODES:
        return random_walk_encoding(edge_index, num_nodes, walk_length)
    adj = torch.zeros(num_nodes, num_nodes)
    adj[edge_index[0], edge_index[1]] = 1.0
    # Isolated nodes stay put, as in random_walk_encoding.
    lonely = (adj.sum(1) == 0).nonzero().view(-1)
    adj[lonely, lonely] = 1.0
    step = adj / adj.sum(1, keepdim=True)
    out = torch.empty(num_nodes, walk_length)
    walk = step
    for k in range(walk_length):
        out[:, k] = walk.diagonal()
        if k + 1 < walk_length:
            walk = walk @ step
    return out


def _both_directions(pairs: Tensor) -> Tensor:
    """``[2, 2E]`` directed edges of the undirected pairs ``[E, 2]``."""
    return torch.cat([pairs, pairs.flip(1)], dim=0).t()


def _component_pe(mol: Any, component: Tensor, num_components: int) -> Tensor:
    # RDKit hands formal charges out one atom at a time.
    charge = torch.tensor([a.GetFormalCharge() for a in mol.GetAtoms()],
                          dtype=torch.float)
    size = torch.bincount(component, minlength=num_components).float()
    net_charge = scatter(charge, component, 0, dim_size=num_components,
                         reduce='sum')
    return torch.stack([size / size.sum(), net_charge], dim=-1)
