import pytest
import torch

from torch_geometric.data import HeteroData
from torch_geometric.loader import DataLoader

from pyg_hsa import Tree
from pyg_hsa.nn import HSAGPS


def molecule(num_atoms, groups, seed):
    gen = torch.Generator().manual_seed(seed)
    data = HeteroData()
    data['atom'].x = torch.randn(num_atoms, 5, generator=gen)
    chain = torch.arange(num_atoms - 1)
    data['atom', 'bond', 'atom'].edge_index = torch.cat(
        [torch.stack([chain, chain + 1]),
         torch.stack([chain + 1, chain])], dim=1)
    data['atom', 'bond', 'atom'].edge_attr = torch.randn(
        2 * (num_atoms - 1), 3, generator=gen)
    data['fragment'].num_nodes = max(groups) + 1
    data['molecule'].num_nodes = 1
    data['atom', 'in', 'fragment'].edge_index = torch.stack(
        [torch.arange(num_atoms), torch.tensor(groups)])
    data['fragment', 'in', 'molecule'].edge_index = torch.stack([
        torch.arange(max(groups) + 1),
        torch.zeros(max(groups) + 1, dtype=torch.long)
    ])
    return data


def run(model, data):
    bond = data['atom', 'bond', 'atom']
    return model(data['atom'].x, bond.edge_index, Tree.from_hetero(data),
                 edge_attr=bond.edge_attr)


@pytest.mark.slow
def test_hsa_gps_batched_equals_each_graph_and_trains():
    torch.manual_seed(0)
    graphs = [molecule(5, [0, 0, 1, 1, 1], 0), molecule(4, [0, 1, 1, 1], 1),
              molecule(7, [0, 0, 0, 1, 1, 2, 2], 2)]
    model = HSAGPS(5, 16, 2, num_layers=2, heads=4, edge_dim=3).eval()
    assert str(model) == 'HSAGPS(5, 16, 2, num_layers=2)'
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    out = run(model, batch)
    assert out.shape == (3, 2)
    for i, graph in enumerate(graphs):
        torch.testing.assert_close(out[i:i + 1], run(model, graph), rtol=1e-5,
                                   atol=1e-5)

    # It can fit two targets on three graphs.
    model.train()
    target = torch.tensor([[1.0, -1.0], [0.0, 2.0], [-1.0, 0.5]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = (run(model, batch) - target).square().mean()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.1 * first


def test_hsa_gps_without_edge_features_and_errors():
    from torch_geometric.nn import GINConv
    torch.manual_seed(0)
    data = molecule(4, [0, 0, 1, 1], 3)
    model = HSAGPS(5, 8, 1, num_layers=1, heads=2).eval()
    assert type(model.local_convs[0]) is GINConv
    edge_index = data['atom', 'bond', 'atom'].edge_index
    out = model(data['atom'].x, edge_index, Tree.from_hetero(data))
    assert out.shape == (1, 1)
    # The leaf edges are used: dropping one bond changes the output, and
    # the output equals the model's layers applied by hand.
    fewer = model(data['atom'].x, edge_index[:, 2:], Tree.from_hetero(data))
    assert not torch.allclose(out, fewer)
    tree = Tree.from_hetero(data)
    h = model.encoder(data['atom'].x)
    h = model.norms[0](h + model.local_convs[0](h, edge_index) +
                       model.global_convs[0](h, tree))
    h = model.ffn_norms[0](h + model.ffns[0](h))
    torch.testing.assert_close(out, model.head(h.mean(0, keepdim=True)))
    with pytest.raises(ValueError, match='divisible'):
        HSAGPS(5, 10, 1, num_layers=1, heads=4)
    with pytest.raises(ValueError, match='num_layers'):
        HSAGPS(5, 8, 1, num_layers=0)


def test_hsa_gps_with_positions_per_node_type_of_real_molecules():
    pytest.importorskip('rdkit')
    from torch_geometric.utils import from_smiles
    from pyg_hsa.transforms import MoleculeToHierarchy

    transform = MoleculeToHierarchy()
    smiles = ['c1ccccc1CC(=O)O', 'CCN(CC)C1CCCCC1', 'OC1CC1c1ccncc1']
    graphs = [transform(from_smiles(s)) for s in smiles]
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    pos_channels = {nt: batch[nt].pe.size(-1) for nt in batch.node_types
                    if 'pe' in batch[nt]}
    assert {'atom', 'fragment'} <= set(pos_channels)
    torch.manual_seed(0)
    model = HSAGPS(9, 8, 1, num_layers=2, heads=2, edge_dim=3,
                   pos_channels=pos_channels).eval()

    def run(data):
        bond = data['atom', 'bond', 'atom']
        pe = {nt: data[nt].pe for nt in pos_channels}
        return model(data['atom'].x.float(), bond.edge_index,
                     Tree.from_hetero(data), bond.edge_attr.float(), pe)

    out = run(batch)
    assert out.shape == (3, 1)
    for i, graph in enumerate(graphs):
        torch.testing.assert_close(out[i:i + 1], run(graph), rtol=1e-5,
                                   atol=1e-5)
    # The positions enter the result: zeroing them changes it.
    for nt in pos_channels:
        batch[nt].pe = torch.zeros_like(batch[nt].pe)
    assert not torch.allclose(run(batch), out, atol=1e-4)

    bond = batch['atom', 'bond', 'atom']
    with pytest.raises(ValueError, match='needs a tree built with '
                       'Tree.from_hetero'):
        model(batch['atom'].x.float(), bond.edge_index,
              Tree.from_hetero(batch).parent, bond.edge_attr.float(),
              {nt: batch[nt].pe for nt in pos_channels})
