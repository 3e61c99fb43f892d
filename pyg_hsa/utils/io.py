r"""Crash-safe files: everything a build or a training run writes appears
whole or not at all, so an interrupted run never leaves a dataset that
half-loads or a checkpoint that is cut off."""
import contextlib
import importlib.util
import os
import os.path as osp
import shutil
import tempfile
from typing import Any, Iterator

import torch


def package_file(package: str, *parts: str, install: str = '') -> str:
    r"""Path of a data file shipped inside the installed :obj:`package`,
    found without importing it (some ship data but cannot be imported
    without heavy dependencies, e.g. pyvista without VTK). Raises a
    :class:`FileNotFoundError` naming the package, and :obj:`install`
    (how to get it) when given."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        folder = list(spec.submodule_search_locations)[0]
        path = osp.join(folder, *parts)
        if osp.exists(path):
            return path
    raise FileNotFoundError(
        f"{'/'.join((package, ) + parts)} is not installed (it ships inside "
        f"the {package!r} package){'; ' + install if install else ''}")


def atomic_save(obj: Any, path: str) -> None:
    r"""Saves :obj:`obj` with :func:`torch.save` to a temporary file next to
    :obj:`path`, flushes it to disk and renames it over :obj:`path`
    (an atomic replace on POSIX and Windows)."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.',
                               suffix='.tmp', dir=folder)
    try:
        # mkstemp makes the file private (0600); give it the permissions a
        # plain open() would, so shared dataset folders stay readable.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    r"""Yields a fresh temporary folder next to :obj:`path`; when the block
    finishes without an exception the folder is renamed to :obj:`path`,
    otherwise it is removed. :obj:`path` must not exist yet (a finished
    build is never overwritten; delete it to rebuild)."""
    path = osp.abspath(path)
    if osp.exists(path):
        raise FileExistsError(f"'{path}' already exists; delete it to "
                              f"rebuild")
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + osp.basename(path) + '.',
                           suffix='.partial', dir=osp.dirname(path))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
        yield tmp
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_generated(dataset, folder: str, list_of_examples: bool) -> None:
    """Loads the processed file of a dataset generated at run time
    (:obj:`dataset.load`). Truncated or garbled files fail in many ways
    (zip, pickle or collate errors, missing labels), so every failure to
    read raises one :class:`RuntimeError` with the same advice: delete
    :obj:`folder` and run again."""
    from torch_geometric.data import Data
    path = dataset.processed_paths[0]
    try:
        dataset.load(path, data_cls=Data)
        if 'y' not in dataset._data:
            raise ValueError('no labels')
        if list_of_examples and dataset.slices is None:
            raise ValueError('not a list of examples')
    except Exception as error:
        raise RuntimeError(
            f"The processed file '{path}' of {type(dataset).__name__} is "
            f"corrupted or unreadable ({type(error).__name__}: {error}); "
            f"delete the folder '{folder}' and run again to rebuild "
            f"it") from error
