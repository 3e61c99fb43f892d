"""The repository checkout as the example tests see it: its git status,
and a script run from its root the way CI and a new user run one."""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHES = ('__pycache__', '.pytest_cache', '.hypothesis')


def require_git_checkout() -> None:
    if shutil.which('git') is None or not (ROOT / '.git').exists():
        pytest.skip('not a git checkout')


def git_status(*options: str, skip: Sequence[str] = CACHES) -> List[str]:
    """``git status --porcelain`` lines, sorted, without those naming any
    of :obj:`skip` (caches that tests and Python write)."""
    done = subprocess.run(['git', 'status', '--porcelain', *options],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return sorted(line for line in done.stdout.splitlines()
                  if not any(name in line for name in skip))


def run_script(argv: Sequence[str], tmp_path: Path,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """``python *argv`` from the repository root, its temporary files
    (``TMPDIR``) under :obj:`tmp_path`, writing no bytecode."""
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONDONTWRITEBYTECODE='1')
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
