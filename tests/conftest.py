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
