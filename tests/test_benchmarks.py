"""The benchmark script runs end to end in its smoke mode (no timing is
asserted: unit tests never time things)."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
                 ('molecules x4', 'hsa'), ('molecules x4', 'sdpa'),
                 ('hsa_conv', 'hsa_conv')):
        assert name in names, name
    assert 'error' not in table and 'over ' not in table
    # Ratios relate each cell's rows: its reference row reads 1.00.
    assert '| flat | hsa | fwd+bwd | 256 |' in table
    assert table.count(' | 1.00 |') >= 4
    assert 'points cube, 512 leaves:' in table
    assert plot.stat().st_size > 10_000


@pytest.mark.slow
def test_ogbg_mol_results_smoke(tmp_path, freesolv_root):
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import ogbg_mol_results
    results = ogbg_mol_results.main([
        '--smoke', '--models', 'hsa', 'gin', '--root', freesolv_root,
        '--out', str(tmp_path)])
    table = (tmp_path / 'results.md').read_text()
    assert '| hsa | 16 |' in table and '| gin |' in table
    for model, runs in results.items():
        assert len(runs) == 1 and runs[0]['args']['model'] == model
        assert f"{runs[0]['num_params']:,}" in table
    assert (tmp_path / 'curves.png').stat().st_size > 5_000
    # Each model's width gives the parameter count closest to the budget.
    args = argparse.Namespace(num_layers=3, heads=4, emb_dim=64)
    budget = ogbg_mol_results.parameters('hsa', 64, args)
    width = ogbg_mol_results.matched_width('gin', budget, args)
    gaps = [abs(ogbg_mol_results.parameters('gin', w, args) - budget)
            for w in (width - 4, width, width + 4)]
    assert gaps[1] == min(gaps)


@pytest.mark.slow
def test_listops_results_smoke_and_resume(tmp_path):
    """Every row trains and is scored on every test set; widths match the
    budget; a finished row is not run again, an interrupted one resumes
    from its checkpoint, and one with other arguments starts over."""
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import listops_results
    argv = ['--smoke', '--out', str(tmp_path), '--root',
            str(tmp_path / 'data')]
    results = listops_results.main(argv)
    assert set(results) == set(listops_results.ROWS)
    table = (tmp_path / 'results.md').read_text()
    for row, result in results.items():
        assert f"| {listops_results.ROWS[row][2]} |" in table
        assert f"{result['num_params']:,}" in table
        assert set(result['tests']) == {key for key, _ in
                                        listops_results.TEST_COLUMNS}
    assert '| **yes** |' in table and table.count('| no |') == 2
    assert (tmp_path / 'accuracy_vs_length.png').stat().st_size > 5_000
    # Finished rows come back from their files.
    stamps = {p: p.stat().st_mtime_ns
              for p in (tmp_path / 'runs').glob('*.json')}
    again = listops_results.main(argv + ['--rows', 'gin', 'tree-gru'])
    assert set(again) == {'gin', 'tree-gru'}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # A checkpoint made with the same arguments resumes; with others, not.
    smoke = argparse.Namespace(
        out=str(tmp_path), heads=2, per_level=2, epochs=1, batch_size=64,
        lr=1e-3, seed=0, train_examples=0, smoke=True, minutes=0.01,
        root=str(tmp_path / 'data'))
    width = results['gin']['args']['emb_dim']
    resumed = listops_results.resumable({
        'gin': listops_results.command('gin', width, smoke),
        'other': listops_results.command('gin', width + 1, smoke)})
    assert resumed['gin'][-1] == '--resume'
    assert resumed['other'][-1] != '--resume'
    # Every row's width gives the parameter count closest to the budget.
    args = argparse.Namespace(heads=4, emb_dim=64, per_level=2,
                              rows=['tree-gru', 'gin'])
    budget = listops_results.parameters('hsa-tree', 64, args)
    widths = listops_results.widths(args)
    for row, width in widths.items():
        gaps = [abs(listops_results.parameters(row, w, args) - budget)
                for w in (width - 1, width, width + 1)]
        assert gaps[1] == min(gaps), row


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
