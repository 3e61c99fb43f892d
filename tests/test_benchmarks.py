"""The benchmark script runs end to end in its smoke mode (no timing is
asserted: unit tests never time things)."""
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
                   '| hsa_conv b=8 |', '| transformer_conv |'):
        assert method in table
    assert table.count('| fwd+bwd | 256 |') == 6
    assert plot.stat().st_size > 10_000
