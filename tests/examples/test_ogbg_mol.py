"""The OGB example: every model trains, resume continues exactly, DDP with
two processes gives the same metric definition."""
import json
import math
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip('ogb')
pytest.importorskip('rdkit')

EXAMPLES = osp.join(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))), 'examples')
sys.path.insert(0, EXAMPLES)

import ogbg_mol  # noqa: E402
from ogbg_mol_models import MolecularBatch, MolecularNet  # noqa: E402

SMALL = ['--emb_dim', '16', '--num_layers', '2', '--heads', '2',
         '--batch_size', '8', '--max_graphs', '24']


def run(root, *extra):
    return ogbg_mol.main(['--root', root, *SMALL, *extra])


@pytest.mark.slow
@pytest.mark.parametrize('model', ['hsa', 'gin', 'gin-virtual',
                                   'transformer', 'hsa --no_pe',
                                   'hsa --hierarchy atoms'])
def test_every_model_trains(freesolv_root, tmp_path, model):
    filename = str(tmp_path / 'result.json')
    result = run(freesolv_root, '--model', *model.split(), '--epochs', '2',
                 '--filename', filename)
    with open(filename) as f:
        saved = json.load(f)
    assert saved['test'] == result['test'] and saved['metric'] == 'rmse'
    assert saved['world_size'] == 1 and saved['num_params'] > 0
    assert len(saved['curves']['valid']) == 2
    assert saved['valid'] == min(saved['curves']['valid'])
    assert saved['test'] == saved['curves']['test'][saved['best_epoch'] - 1]
    assert all(math.isfinite(v) and v > 0 for v in saved['curves']['test'])


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch(freesolv_root, tmp_path):
    straight = run(freesolv_root, '--epochs', '3', '--model', 'hsa',
                   '--checkpoint', str(tmp_path / 'a.ckpt'))
    run(freesolv_root, '--epochs', '1', '--model', 'hsa',
        '--checkpoint', str(tmp_path / 'b.ckpt'))
    saved = torch.load(str(tmp_path / 'b.ckpt'))
    assert saved['state']['epoch'] == 1
    resumed = run(freesolv_root, '--epochs', '3', '--model', 'hsa',
                  '--checkpoint', str(tmp_path / 'b.ckpt'), '--resume')
    # Model, optimiser, shuffling and dropout state all continue, so the
    # interrupted run is the uninterrupted one.
    for key in ('loss', 'valid', 'test'):
        assert resumed['curves'][key] == straight['curves'][key]
    assert len(resumed['curves']['seconds']) == 3
    with pytest.raises(ValueError, match='--emb_dim'):
        run(freesolv_root, '--epochs', '4', '--checkpoint',
            str(tmp_path / 'b.ckpt'), '--resume', '--emb_dim', '8')


def test_bad_checkpoints(freesolv_root, tmp_path):
    path = str(tmp_path / 'c.ckpt')
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        run(freesolv_root, '--checkpoint', path, '--resume')
    with open(path, 'wb') as f:
        f.write(b'not a checkpoint')
    with pytest.raises(RuntimeError, match='delete it to start over'):
        run(freesolv_root, '--checkpoint', path, '--resume')


def test_argument_errors(capsys):
    for argv in (['--resume'], ['--epochs', '0'], ['--drop_ratio', '1'],
                 ['--model', 'gcn'], ['--hierarchy', 'bonds']):
        with pytest.raises(SystemExit):
            ogbg_mol.parse_args(argv)
    assert '--resume needs --checkpoint' in capsys.readouterr().err


def test_encoders_start_like_ogbs():
    from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
    torch.manual_seed(0)
    net = MolecularNet('gin', 1, 2, 64)
    ours = net.atom_encoder.atom_embedding_list[0].weight
    bond = net.bond_encoders[1].bond_embedding_list[0].weight
    reference = AtomEncoder(64).atom_embedding_list[0].weight
    bound = math.sqrt(6 / sum(reference.shape))  # Xavier-uniform
    assert ours.abs().max() <= bound and reference.abs().max() <= bound
    assert bond.abs().max() <= math.sqrt(6 / sum(
        BondEncoder(64).bond_embedding_list[0].weight.shape))
    assert ours.std() > bound / 3  # not zero either


def test_flat_tree_is_one_family_per_molecule(freesolv_root):
    dataset, split = ogbg_mol.load_splits(ogbg_mol.parse_args(
        ['--root', freesolv_root, '--model', 'gin']))
    from torch_geometric.loader import DataLoader
    batch = next(iter(DataLoader(dataset[:5], batch_size=5)))
    data = MolecularBatch(batch, 'flat')
    n = batch.num_nodes
    assert data.tree.num_leaves == n and data.tree.num_roots == 5
    assert torch.equal(data.tree.batch, batch.batch)
    with pytest.raises(ValueError, match='MoleculeToHierarchy'):
        MolecularBatch(batch, 'hierarchy')
    with pytest.raises(ValueError, match="'model'"):
        MolecularNet('gcn', 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes(freesolv_root, tmp_path):
    filename = str(tmp_path / 'ddp.json')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    command = [sys.executable, '-m', 'torch.distributed.run',
               '--nproc_per_node=2', '--master_port', str(_free_port()),
               osp.join(EXAMPLES, 'ogbg_mol.py'), '--root', freesolv_root,
               *SMALL, '--epochs', '1', '--model', 'hsa',
               '--filename', filename]
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(filename) as f:
        result = json.load(f)
    assert result['world_size'] == 2 and math.isfinite(result['test'])
    # The metric the two ranks reported is that of rank 0's trained model
    # (BatchNorm statistics included) scored by one process.
    saved = torch.load(filename + '.ckpt')
    args = ogbg_mol.parse_args(['--root', freesolv_root, *SMALL,
                                '--model', 'hsa'])
    dataset, split = ogbg_mol.load_splits(args)
    sample = dataset[0]
    net = MolecularNet('hsa', 1, 2, 16, 0.5, 2, {
        nt: sample[nt].pe.size(-1) for nt in sample.node_types
        if 'pe' in sample[nt]})
    net.load_state_dict(saved['model'])
    from ogb.graphproppred import Evaluator
    single = ogbg_mol.evaluate(
        net, dataset, split['valid'], args, Evaluator(args.dataset),
        saved['target_scale'], torch.device('cpu'),
        ogbg_mol.Distributed(use_cuda=False), show=False)
    assert math.isclose(single, result['curves']['valid'][-1],
                        rel_tol=1e-5)


def _evaluate_in_group(rank, world_size, port, root, out):
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    out[rank] = _fixed_model_metric(root)
    torch.distributed.destroy_process_group()


def _fixed_model_metric(root):
    """The validation metric of one fixed (seeded, untrained) model."""
    args = ogbg_mol.parse_args(['--root', root, *SMALL, '--model', 'hsa',
                                '--max_graphs', '0'])
    ctx = ogbg_mol.Distributed(use_cuda=False)
    dataset, split = ogbg_mol.load_splits(args)
    torch.manual_seed(0)
    sample = dataset[0]
    net = MolecularNet('hsa', 1, 2, 16, 0.5, 2, {
        nt: sample[nt].pe.size(-1) for nt in sample.node_types
        if 'pe' in sample[nt]})
    from ogb.graphproppred import Evaluator
    return ogbg_mol.evaluate(net, dataset, split['valid'], args,
                             Evaluator(args.dataset), (-3.8, 3.8),
                             torch.device('cpu'), ctx, show=False)


@pytest.mark.slow
def test_ddp_metric_equals_single_process(freesolv_root):
    """Sharded evaluation gathered over two processes scores exactly the
    predictions one process makes (64 molecules, odd shards of 8)."""
    single = _fixed_model_metric(freesolv_root)
    context = torch.multiprocessing.get_context('spawn')
    with context.Manager() as manager:
        out = manager.dict()
        torch.multiprocessing.start_processes(
            _evaluate_in_group, args=(2, _free_port(), freesolv_root, out),
            nprocs=2, start_method='spawn')
        assert out[0] == out[1]
        assert math.isclose(out[0], single, rel_tol=1e-6)


def test_count_and_match_parameters(capsys):
    """--count_parameters builds the model only (no data) and prints its
    size; with --match_parameters N, the multiple of --heads whose count
    is closest to N (how benchmarks/ogbg_mol_results.py matches budgets)."""
    common = ['--num_layers', '3', '--heads', '4', '--count_parameters']
    hsa = ogbg_mol.main(['--model', 'hsa', '--emb_dim', '64', *common])
    assert hsa == {'emb_dim': 64, 'num_params': 106244}
    assert capsys.readouterr().out == \
        '{"emb_dim": 64, "num_params": 106244}\n'
    gin = ogbg_mol.main(['--model', 'gin', '--emb_dim', '64', *common,
                         '--match_parameters', '106244'])
    assert gin['emb_dim'] % 4 == 0
    gaps = [abs(ogbg_mol.main(['--model', 'gin', '--emb_dim', str(width),
                               *common])['num_params'] - 106244)
            for width in (gin['emb_dim'] - 4, gin['emb_dim'],
                          gin['emb_dim'] + 4)]
    assert gaps[1] == min(gaps) == abs(gin['num_params'] - 106244)
