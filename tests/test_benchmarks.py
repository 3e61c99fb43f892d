"""The benchmark script runs end to end in its smoke mode (no timing is
asserted: unit tests never time things)."""
import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    for method in ('| sdpa |', '| hsa b=8 |', '| hsa b=32 |', '| hsa_flat |',
                   '| hsa_conv b=8 |', '| transformer_conv |',
                   '| hsa_points |', '| hsa_sequence |'):
        assert method in table
    assert table.count('| fwd+bwd | 256 |') == 8
    assert plot.stat().st_size > 10_000


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
