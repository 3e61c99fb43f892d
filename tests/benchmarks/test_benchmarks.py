"""The benchmark script runs end to end in its smoke mode (no timing is
asserted: unit tests never time things)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from checkout import run_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_hsa_smoke(tmp_path):
    out = tmp_path / 'table.md'
    plot = tmp_path / 'plot.png'
    done = subprocess.run([
        sys.executable,
        str(ROOT / 'benchmarks' / 'bench_hsa.py'), '--smoke', '--out',
        str(out), '--plot',
        str(plot)
    ], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    rows = [line.split(' | ') for line in table.splitlines()
            if line.startswith('| ') and (' | hsa' in line or
                                          ' | sdpa' in line)]
    names = {(r[0].strip('| '), r[1]) for r in rows}
    for name in (('flat', 'hsa'), ('flat', 'sdpa'),
                 ('flat', 'sdpa 3-D (math path)'), ('complete b=8', 'hsa'),
                 ('complete b=8', 'sdpa'), ('points sphere', 'hsa'),
                 ('points cube', 'hsa'), ('sequence', 'hsa'),
                 ('molecules x4', 'hsa'), ('molecules x4', 'hsa query'),
                 ('molecules x4', 'sdpa'), ('listops x1', 'hsa'),
                 ('listops x1', 'hsa query'),
                 ('complete b=8 (as listops)', 'hsa query'),
                 ('hsa_conv', 'hsa_conv')):
        assert name in names, name
    # The aten-ops column: a positive count in every row (SDPA's few).
    assert '| Tree + plan (ms) | ops | x |' in table
    ops = [int(r[8]) for r in rows]
    assert all(n > 0 for n in ops) and min(ops) < 50
    assert 'error' not in table and 'over ' not in table
    # Ratios relate each cell's rows: its reference row reads 1.00.
    assert '| flat | hsa | fwd+bwd | 256 |' in table
    assert table.count(' | 1.00 |') >= 4
    assert 'points cube, 512 leaves, hsa:' in table
    assert plot.stat().st_size > 10_000


def results_script(name: str, argv, tmp_path) -> str:
    """Runs ``benchmarks/<name>`` from the repository root, as a process
    (the tests import nothing from ``benchmarks/``); its output."""
    done = run_script([f'benchmarks/{name}', *argv], tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout


def runs(folder: Path):
    return {p.name: json.loads(p.read_text())
            for p in (folder / 'runs').glob('*.json')
            if not p.name.endswith('.command.json')}


@pytest.mark.slow
def test_ogbg_mol_results_smoke(tmp_path, freesolv_root):
    out = tmp_path / 'out'
    results_script('ogbg_mol_results.py', [
        '--smoke', '--models', 'hsa', 'gin', '--root', freesolv_root,
        '--out', str(out)], tmp_path)
    table = (out / 'results.md').read_text()
    assert '| hsa | 16 |' in table and '| gin |' in table
    made = runs(out)
    assert set(made) == {'hsa_seed0.json', 'gin_seed0.json',
                         'timing_hsa_seed0.json', 'timing_gin_seed0.json'}
    # Widths come from the example (its --match_parameters, tested in
    # tests/examples/test_ogbg_mol.py): gin's is the one it chose.
    budget = made['hsa_seed0.json']['num_params']
    assert f'parameter budget {budget:,} (HSA at width 16)' in table
    gin = made['gin_seed0.json']
    assert f"| gin | {gin['args']['emb_dim']} | {gin['num_params']:,} |" \
        in table
    assert (out / 'curves.png').stat().st_size > 5_000


@pytest.mark.slow
def test_listops_results_smoke_and_resume(tmp_path):
    """Every row trains and is scored on every test set; a finished row is
    not run again, an interrupted one resumes from its checkpoint, and one
    with other arguments starts over."""
    out = tmp_path / 'out'
    argv = ['--smoke', '--out', str(out), '--root', str(tmp_path / 'data')]
    printed = results_script('listops_results.py', argv, tmp_path)
    table = (out / 'results.md').read_text()
    made = runs(out)
    rows = ('transformer', 'hsa-windows', 'hsa-tree', 'gin', 'tree-gru',
            'hsa-tree-query', 'hsa-tree-unscheduled', 'hsa-tree-no-size-key')
    assert set(made) == {f'{row}.json' for row in rows}
    for row in rows:
        result = made[f'{row}.json']
        assert f" | {result['args']['emb_dim']} | " \
            f"{result['num_params']:,} |" in table
        assert set(result['tests']) == {
            'test', 'test_200_300', 'test_500_600', 'test_900_1000',
            'lra_test'}
    assert printed.count('--resume') == 0
    assert '| **yes** |' in table and table.count('| no |') == 2
    assert (out / 'accuracy_vs_length.png').stat().st_size > 5_000
    # Finished rows come back from their files.
    stamps = {p: p.stat().st_mtime_ns for p in (out / 'runs').glob('*.json')}
    printed = results_script('listops_results.py',
                             argv + ['--rows', 'gin', 'tree-gru'], tmp_path)
    assert 'examples/listops.py' not in printed
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # A row whose result is gone but whose checkpoint was made with the
    # same arguments resumes; with other arguments it starts over.
    (out / 'runs' / 'gin.json').unlink()
    printed = results_script('listops_results.py', argv + ['--rows', 'gin'],
                             tmp_path)
    assert printed.count('examples/listops.py') == 1
    assert '--resume' in printed
    (out / 'runs' / 'gin.json').unlink()
    printed = results_script('listops_results.py',
                             argv + ['--rows', 'gin', '--seed', '1'],
                             tmp_path)
    assert printed.count('examples/listops.py') == 1
    assert '--resume' not in printed and '--seed 1' in printed


@pytest.mark.slow
def test_bench_causal_smoke(tmp_path):
    out, plot = tmp_path / 'results.md', tmp_path / 'decoding.png'
    done = subprocess.run([
        sys.executable, str(ROOT / 'benchmarks' / 'bench_causal.py'),
        '--smoke', '--out', str(out), '--plot', str(plot)
    ], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    for size in (512, 4096):
        assert f'| {size} | ' in table
    for context in (256, 1024):
        assert f'| {context} | ' in table
    assert 'against 256 tokens of context' in table
    assert plot.stat().st_size > 10_000
