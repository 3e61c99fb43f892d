import os

import pytest
import torch

from pyg_hsa.utils.io import atomic_directory, atomic_save


def test_atomic_save_replaces_whole_file(tmp_path):
    path = str(tmp_path / 'sub' / 'state.pt')
    atomic_save({'a': torch.arange(3)}, path)
    atomic_save({'a': torch.arange(5)}, path)
    assert torch.equal(torch.load(path)['a'], torch.arange(5))
    assert os.listdir(tmp_path / 'sub') == ['state.pt']


def test_atomic_save_failure_keeps_old_file(tmp_path):
    path = str(tmp_path / 'state.pt')
    atomic_save({'a': 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('cannot pickle')

    with pytest.raises(RuntimeError, match='cannot pickle'):
        atomic_save({'a': Unpicklable()}, path)
    assert torch.load(path) == {'a': 1}
    assert os.listdir(tmp_path) == ['state.pt']  # no temporary left


def test_atomic_directory(tmp_path):
    target = str(tmp_path / 'data')
    with atomic_directory(target) as tmp:
        assert not os.path.exists(target)
        open(os.path.join(tmp, 'x.txt'), 'w').write('x')
    assert os.listdir(target) == ['x.txt']
    assert os.listdir(tmp_path) == ['data']
    with pytest.raises(FileExistsError, match='delete it to rebuild'):
        with atomic_directory(target):
            pass


def test_atomic_directory_interrupted(tmp_path):
    target = str(tmp_path / 'data')
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as tmp:
            open(os.path.join(tmp, 'half.txt'), 'w').write('x')
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []  # nothing half-built remains


def test_permissions_follow_the_umask(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_save(1, str(tmp_path / 'x.pt'))
        with atomic_directory(str(tmp_path / 'd')):
            pass
    finally:
        os.umask(mask)
    assert (tmp_path / 'x.pt').stat().st_mode & 0o777 == 0o644
    assert (tmp_path / 'd').stat().st_mode & 0o777 == 0o755


def test_package_file():
    import pyg_hsa
    from pyg_hsa.utils.io import package_file
    path = package_file('pyg_hsa', 'utils', 'io.py')
    assert os.path.samefile(path, os.path.join(
        os.path.dirname(pyg_hsa.__file__), 'utils', 'io.py'))
    with pytest.raises(FileNotFoundError, match="pyg_hsa/no_such.csv"):
        package_file('pyg_hsa', 'no_such.csv')
    with pytest.raises(FileNotFoundError, match="'not_a_package'.*pip"):
        package_file('not_a_package', 'x', install='pip install it')
