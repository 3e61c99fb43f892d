r"""The models of ``ogbg_mol.py``: one OGB-style GIN backbone (AtomEncoder,
per-layer BondEncoder, GIN with edge features, BatchNorm, mean readout) with
four choices of global interaction added to every layer:

* ``gin``: none;
* ``gin-virtual``: a virtual node per molecule (OGB's GIN-virtual);
* ``hsa``: :class:`~pyg_hsa.nn.HSAConv` over the molecule's hierarchy
  (atoms → fragments → components → molecule, with positions ``pe``
  unless :obj:`pos_channels` is :obj:`None`);
* ``transformer``: the same :class:`HSAConv` over a flat tree (every atom
  directly under the molecule), which is exactly softmax attention over
  the molecule's atoms.

So the four differ only in that global term, and ``hsa`` vs
``transformer`` isolates the hierarchy.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.nn import GINEConv, global_add_pool, global_mean_pool

from pyg_hsa import Tree
from pyg_hsa.nn import HSAConv

MODELS = ('hsa', 'gin', 'gin-virtual', 'transformer')
LEAF = 'atom'  # MoleculeToHierarchy's leaf type
# MoleculeToHierarchy's pe widths with its default walk_length=8 (atom,
# fragment, component), for counting parameters without loading data.
PE_WIDTHS = {'atom': 9, 'fragment': 10, 'component': 2}


def _mlp(channels: int, hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(channels, hidden), torch.nn.BatchNorm1d(hidden),
        torch.nn.ReLU(), torch.nn.Linear(hidden, channels))


class MolecularBatch:
    """What the models read from a batch, whether it is a plain OGB
    ``Data`` batch or a ``HeteroData`` batch of hierarchies."""
    def __init__(self, batch, needs_tree: Optional[str]):
        hetero = isinstance(batch, HeteroData)
        atoms = batch[LEAF] if hetero else batch
        bonds = batch[LEAF, 'bond', LEAF] if hetero else batch
        self.x, self.batch = atoms.x, atoms.batch
        self.edge_index, self.edge_attr = bonds.edge_index, bonds.edge_attr
        self.num_graphs = batch.num_graphs
        self.tree: Optional[Tree] = None
        self.pe: Optional[Dict[str, Tensor]] = None
        if needs_tree == 'hierarchy':
            if not hetero:
                raise ValueError("the 'hsa' model needs hierarchies: load "
                                 "the dataset with MoleculeToHierarchy")
            self.tree = Tree.from_hetero(batch)
            self.pe = {nt: batch[nt].pe for nt in batch.node_types
                       if 'pe' in batch[nt]}
        elif needs_tree == 'flat':
            num_atoms = self.x.size(0)
            self.tree = Tree.from_parent(
                torch.cat([num_atoms + self.batch,
                           self.batch.new_full((self.num_graphs, ), -1)]),
                num_leaves=num_atoms)


class MolecularNet(torch.nn.Module):
    r"""OGB's GIN (Xu et al., 2019; Hu et al., 2020) with an optional
    global term :math:`g` in every layer :math:`\ell`:

    .. math::
        \mathbf{h}^{(\ell+1)} = \mathrm{Dropout}\big(\sigma\big(\mathrm{BN}
        (\mathrm{GIN}(\mathbf{h}^{(\ell)}, \mathcal{E}) +
        g(\mathbf{h}^{(\ell)}))\big)\big)

    (no ReLU after the last layer), then mean pooling and a linear head.
    For ``gin-virtual`` the input of every layer instead has the virtual
    node's state added, as in OGB.
    """
    def __init__(self, model: str, num_tasks: int, num_layers: int = 5,
                 emb_dim: int = 300, drop_ratio: float = 0.5,
                 heads: int = 4,
                 pos_channels: Optional[Dict[str, int]] = None):
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"'model' must be one of {MODELS} "
                             f"(got {model!r})")
        if num_layers < 2:
            raise ValueError(f"'num_layers' must be at least 2 "
                             f"(got {num_layers})")
        if model in ('hsa', 'transformer') and emb_dim % heads:
            raise ValueError(f"'emb_dim' ({emb_dim}) must be divisible by "
                             f"'heads' ({heads})")
        self.model = model
        self.uses_pe = model == 'hsa' and pos_channels is not None
        self.num_layers = num_layers
        self.drop_ratio = drop_ratio
        self.atom_encoder = AtomEncoder(emb_dim)
        self.bond_encoders = torch.nn.ModuleList(
            BondEncoder(emb_dim) for _ in range(num_layers))
        self.convs = torch.nn.ModuleList(
            GINEConv(_mlp(emb_dim, 2 * emb_dim), train_eps=True)
            for _ in range(num_layers))
        self.norms = torch.nn.ModuleList(
            torch.nn.BatchNorm1d(emb_dim) for _ in range(num_layers))
        self.attentions = torch.nn.ModuleList()
        if model in ('hsa', 'transformer'):
            pos = pos_channels if model == 'hsa' else None
            self.attentions.extend(
                HSAConv(emb_dim if pos is None else {LEAF: emb_dim},
                        emb_dim // heads, heads, pos_channels=pos,
                        self_loops=True, root_weight=False)
                for _ in range(num_layers))
        self.virtual_mlps = torch.nn.ModuleList()
        if model == 'gin-virtual':
            self.virtual_node = torch.nn.Embedding(1, emb_dim)
            self.virtual_mlps.extend(
                torch.nn.Sequential(
                    torch.nn.Linear(emb_dim, 2 * emb_dim),
                    torch.nn.BatchNorm1d(2 * emb_dim), torch.nn.ReLU(),
                    torch.nn.Linear(2 * emb_dim, emb_dim),
                    torch.nn.BatchNorm1d(emb_dim), torch.nn.ReLU())
                for _ in range(num_layers - 1))
        self.head = torch.nn.Linear(emb_dim, num_tasks)
        self.reset_parameters()

    @property
    def needs_tree(self) -> Optional[str]:
        return {'hsa': 'hierarchy', 'transformer': 'flat'}.get(self.model)

    def reset_parameters(self):
        for module in self.modules():
            if module is not self and hasattr(module, 'reset_parameters'):
                module.reset_parameters()
        # Embedding.reset_parameters draws N(0, 1); OGB's encoders start
        # from Xavier-uniform (about 10x smaller), and so do we.
        encoders = [self.atom_encoder.atom_embedding_list] + [
            encoder.bond_embedding_list for encoder in self.bond_encoders]
        for embeddings in encoders:
            for embedding in embeddings:
                torch.nn.init.xavier_uniform_(embedding.weight)
        if self.model == 'gin-virtual':  # OGB starts virtual nodes at 0
            torch.nn.init.zeros_(self.virtual_node.weight)

    def forward(self, data: MolecularBatch) -> Tensor:
        h = self.atom_encoder(data.x)
        if self.model == 'gin-virtual':
            virtual = self.virtual_node.weight.expand(data.num_graphs, -1)
        for layer in range(self.num_layers):
            if self.model == 'gin-virtual':
                h = h + virtual[data.batch]
            out = self.convs[layer](
                h, data.edge_index, self.bond_encoders[layer](data.edge_attr))
            if self.attentions:
                out = out + self._attend(layer, h, data)
            out = self.norms[layer](out)
            if layer < self.num_layers - 1:
                out = F.relu(out)
            out = F.dropout(out, self.drop_ratio, self.training)
            if self.model == 'gin-virtual' and layer < self.num_layers - 1:
                virtual = F.dropout(
                    self.virtual_mlps[layer](
                        global_add_pool(h, data.batch, data.num_graphs) +
                        virtual), self.drop_ratio, self.training)
            h = out
        return self.head(global_mean_pool(h, data.batch, data.num_graphs))

    def _attend(self, layer: int, h: Tensor, data: MolecularBatch) -> Tensor:
        attention = self.attentions[layer]
        if self.model == 'transformer':
            return attention(h, data.tree)
        pe = data.pe if self.uses_pe else None
        return attention({LEAF: h}, data.tree, pe=pe)[LEAF]

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.model!r}, '
                f'num_layers={self.num_layers})')
