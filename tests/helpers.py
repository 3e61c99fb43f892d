"""The tests' former helper module, kept for the test files that still
import it: everything lives in :mod:`pyg_hsa.testing` now (import from
there)."""
from pyg_hsa.testing import (  # noqa: F401
    brute_force_theta,
    dense_output,
    nested_to_forest,
    random_forest,
    random_qkv,
    relabel,
    renumber,
    root_paths,
)
