"""The script behind the README's pictures runs and draws every transform."""
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from transform_checks import package_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_make_pictures(tmp_path):
    package_file('pyvista', 'examples', 'ant.ply')  # the data it draws
    subprocess.run([sys.executable, str(ROOT / 'docs' / 'make_pictures.py'),
                    '--out', str(tmp_path)], check=True, capture_output=True)
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ['graph.png', 'mesh.png', 'molecule.png',
                     'point_cloud.png', 'sequence.png']
    for name in names:
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert image[..., :3].std() > 0.05  # not a blank canvas
