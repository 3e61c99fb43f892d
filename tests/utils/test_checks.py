import subprocess
import sys

import pytest
import torch
from torch_geometric.data import Data

from pyg_hsa.transforms import PointCloudToHierarchy
from pyg_hsa.utils import knn
from pyg_hsa.utils.checks import check_points

GOOD = torch.rand(4, 3)


@pytest.mark.parametrize('value, error, message', [
    ([[0.0, 1.0]], TypeError,
     "'p' must be a tensor of positions [num_points, dim] (got a list)"),
    (torch.zeros(4, 3, dtype=torch.long), TypeError,
     "'p' must be a floating point tensor (got torch.int64)"),
    (torch.zeros(4), ValueError,
     "'p' must have shape [num_points, dim] with dim >= 1 (got [4])"),
    (torch.zeros(4, 0), ValueError,
     "'p' must have shape [num_points, dim] with dim >= 1 (got [4, 0])"),
    (torch.zeros(0, 3), ValueError,
     "'p' has 0 points: at least 1 point(s) needed"),
    (torch.tensor([[0.0, float('nan')]]), ValueError,
     "'p' contains NaN or infinite values"),
])
def test_check_points(value, error, message):
    with pytest.raises(error) as info:
        check_points(value, 'p', min_points=1)
    assert str(info.value) == message
    assert check_points(GOOD, 'p') is GOOD
    assert check_points(torch.zeros(0, 3), 'p').shape == (0, 3)


@pytest.mark.parametrize('bad, error', [
    (torch.zeros(4, 3, dtype=torch.long), TypeError),
    (torch.zeros(4), ValueError),
    (torch.tensor([[0.0, float('inf')]]), ValueError),
])
def test_points_fail_alike_in_knn_and_point_cloud_transform(bad, error):
    """One check, one behaviour: the same positions raise the same
    exception type in the kNN utility and in PointCloudToHierarchy."""
    with pytest.raises(error, match="'x'"):
        knn(bad, GOOD, 1)
    with pytest.raises(error, match="'data.pos'"):
        PointCloudToHierarchy()(Data(pos=bad))


@pytest.mark.slow  # (seconds: a fresh interpreter imports torch)
def test_importing_the_core_loads_no_utilities():
    """``import pyg_hsa`` reads utils.checks, and ``pyg_hsa.utils`` loads
    kNN, coarsening and drawing only when they are used."""
    code = ('import sys, pyg_hsa; '
            'print(sorted(m for m in sys.modules if m.startswith("pyg_hsa.'
            'utils"))); import pyg_hsa.utils as u; u.knn; '
            'print("pyg_hsa.utils.geometry" in sys.modules, '
            '"pyg_hsa.utils.draw" in sys.modules)')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, check=True)
    assert done.stdout.splitlines() == [
        "['pyg_hsa.utils', 'pyg_hsa.utils.checks']", 'True False']


def test_nesting_relation_is_defined_once():
    from pyg_hsa.tree import NESTING_RELATION
    from pyg_hsa.utils import hierarchy
    assert hierarchy.NESTING_RELATION is NESTING_RELATION == 'in'
    import pyg_hsa.utils as utils
    assert set(utils.__all__) <= set(dir(utils))
    with pytest.raises(AttributeError, match='no_such_name'):
        utils.no_such_name
