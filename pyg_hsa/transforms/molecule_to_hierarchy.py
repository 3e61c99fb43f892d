r"""Molecules as atom → fragment → (component →) molecule hierarchies."""
from typing import Any, List, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform
from torch_geometric.utils import scatter

from pyg_hsa.utils.checks import check_bool, check_choice, check_int
from pyg_hsa.utils.hierarchy import (
    add_level,
    add_root,
    leaf_hetero,
    random_walk_encoding,
)
from pyg_hsa.utils.molecules import read_molecule

FRAGMENT_SCHEMES = ('brics', 'rings', 'atoms')

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
        self.fragments = check_choice(fragments, 'fragments',
                                      FRAGMENT_SCHEMES)
        self.components = check_bool(components, 'components')
        self.walk_length = check_int(walk_length, 'walk_length', minimum=1)

    def forward(self, data: Data) -> HeteroData:
        mol, bonds = read_molecule(data)
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
