"""The edge matrix (issue 22): every attention path against the float64
reference, on the edge cases that broke one path or another.

Rows are PATHS (a resolution/causal mode and how it is run: eagerly, by
a given kernel, or under ``torch.compile``), columns are CASES (trees with padded families,
several families of one shape, families large enough to be chunked or to
take the fused kernel, causal first children, a single leaf, several
roots; with and without positions), crossed with the logits' magnitude
(1, 1e2, 1e4), the input dtype (float64, float32, bfloat16, float16) and
autograd (with gradients, or under ``no_grad``). Every cell must give
finite outputs (and finite gradients of q, k, v and pos), equal to
:func:`~pyg_hsa.hsa_dense` in float64 on the same (rounded) inputs within
the dtype's precision.

A new kernel or variant joins by adding one line to PATHS: a name, its
options (the reference is :func:`~pyg_hsa.hsa_dense` with the same
options) and a callable ``(tree, q, k, v, pos) -> out``. A new edge case
joins by adding one line to CASES. The fast tier runs a fixed subset (every
eager path on every case, each case with its own magnitude, dtype and grad
mode); the full cross product is slow.
"""
import itertools
import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np
import pytest
import torch
import torch._dynamo

from pyg_hsa import Tree, hsa_attention, hsa_dense
from pyg_hsa.functional import compiled as compiled_module
from pyg_hsa.functional import (
    block_families,
    family_softmax,
    layout,
    query_resolved,
    query_tiles,
)
from pyg_hsa.testing import nested_to_forest, random_forest

L = 'leaf'

# Paths ####################################################################


def eager(tree, q, k, v, pos, **options):
    return hsa_attention(q, k, v, tree, pe=pos, **options)


def _without(module, limit: str):
    """A path that runs with ``module.limit = 0``: the kernel the limit
    guards gives the tree to the next one."""
    def run(tree, q, k, v, pos, **options):
        before = getattr(module, limit)
        setattr(module, limit, 0)
        try:
            return hsa_attention(q, k, v, tree, pe=pos, **options)
        finally:
            setattr(module, limit, before)
    return run


# Query resolution by the family-by-family kernel (query_resolved.py),
# which the tiled kernel (query_tiles.py) leaves to trees too large for
# tiles; block resolution by the level-by-level dynamic program
# (dynamic_program.py), which the padded families (block_families.py)
# leave to trees with too many or too wide families.
family_by_family = _without(query_tiles, 'TILE_ELEMENTS')
level_by_level = _without(block_families, 'FAMILY_ELEMENTS')


_COMPILED: Dict[Tuple, Callable] = {}


def compiled(tree, q, k, v, pos, **options):
    """``torch.compile(fullgraph=True)`` of hsa_attention, one compiled
    function per set of options (recompiled per dtype, pos kind and grad
    mode: the recompile limit is raised for this module)."""
    key = tuple(sorted(options.items()))
    if key not in _COMPILED:
        def fn(q, k, v, pos, tree):
            return hsa_attention(q, k, v, tree, pe=pos, **options)
        _COMPILED[key] = torch.compile(fn, fullgraph=True)
    # The call must go through the pyg_hsa::hsa operator (not fall back to
    # eager, e.g. past the recompile limit).
    calls, eager_call = [], compiled_module._eager

    def counted(*args, **kwargs):
        calls.append(1)
        return eager_call(*args, **kwargs)

    compiled_module._eager = counted
    try:
        out = _COMPILED[key](q, k, v, pos, tree)
    finally:
        compiled_module._eager = eager_call
    assert calls, 'not through the compiled operator'
    return out


class Path(NamedTuple):
    name: str
    options: dict  # of hsa_attention, and of the reference hsa_dense
    run: Callable  # (tree, q, k, v, pos, **options) -> out
    slow: bool = False  # only in the slow tier (e.g. compiling)

    def __call__(self, tree, q, k, v, pos=None):
        return self.run(tree, q, k, v, pos, **self.options)


BLOCK = {}
BLOCK_LOOPS = dict(self_loops=True)
QUERY = dict(resolution='query')
CAUSAL = dict(resolution='query', self_loops=True, causal=True)

PATHS = [
    Path('block', BLOCK, eager),
    Path('block self loops', BLOCK_LOOPS, eager),
    Path('block by levels', BLOCK, level_by_level),
    Path('block self loops by levels', BLOCK_LOOPS, level_by_level),
    Path('query', QUERY, eager),  # (tiles)
    Path('causal', CAUSAL, eager),  # (tiles)
    Path('query by families', QUERY, family_by_family),
    Path('causal by families', CAUSAL, family_by_family),
    Path('block compiled', BLOCK, compiled, slow=True),
    Path('block self loops compiled', BLOCK_LOOPS, compiled, slow=True),
    Path('query compiled', QUERY, compiled, slow=True),
    Path('causal compiled', CAUSAL, compiled, slow=True),
]

# Cases ####################################################################


def nested(*roots) -> Tree:
    """A tree from nested lists (see pyg_hsa.testing.nested_to_forest),
    leaves and internal nodes numbered in creation order."""
    parent, num_leaves = nested_to_forest(list(roots))
    return Tree.from_parent(parent, num_leaves)


def random_tree(seed: int, **kwargs) -> Tree:
    parent, num_leaves = random_forest(np.random.default_rng(seed),
                                       **kwargs)
    return Tree.from_parent(parent, num_leaves)


# The smallest sizes that chunk: query-resolved row chunks of 2 rows with
# several families in a group, family blocks of 2 query rows and backward
# slices of one family.
CHUNKED = {(query_resolved, 'CHUNK_ELEMENTS'): 128,
           (family_softmax, 'FAMILY_BLOCK_ENTRIES'): 16,
           (family_softmax, 'FAMILY_CHUNK_ENTRIES'): 16}


class Case(NamedTuple):
    name: str
    tree: Callable[[], Tree]  # built after the limits are set
    pos: Optional[str] = None  # None, 'shared' ([M, P]) or 'per head'
    limits: dict = {}  # {(module, constant): value} set for the case

    def __str__(self):
        return self.name


CASES = [
    Case('padded families', lambda: nested([[L, L], [L, L, L], L, [L]])),
    Case('padded families, positions',
         lambda: nested([[L, L], [L, L, L, L], [L, L, L]]), pos='shared'),
    Case('families of one shape',
         lambda: nested([[L, L, L], [L, L, L], [L, L, L]])),
    Case('chunked families (two flat sequences)',
         lambda: nested([L] * 7, [L] * 7), limits=CHUNKED),
    Case('chunked, padded families, positions per head',
         lambda: nested([[L] * 5, [L] * 6, [L, L]]), pos='per head',
         limits=CHUNKED),
    Case('wide families (fused kernel)',
         lambda: nested([[L, L, L], [L, L], L]),
         limits={(layout, 'WIDE_FAMILY'): 2}),
    Case('causal first children (ordered windows)',
         lambda: nested([[[L, L], [L, L]], [[L, L], [L, L]]])),
    Case('single leaf', lambda: nested(L)),
    Case('several roots', lambda: nested([[L, L], L], L, [L, L, L])),
    Case('random forest, unary chains, positions per head',
         lambda: random_tree(5, num_roots=2, max_leaves=20, unary_prob=0.3),
         pos='per head'),
]

MAGNITUDES = [1.0, 1e2, 1e4]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
GRADS = [True, False]

# Inputs and tolerances ####################################################


def inputs(tree: Tree, case: Case, magnitude: float, heads: int = 2,
           channels: int = 4, value_channels: int = 3, seed: int = 0):
    """float64 q, k, v (and pos) whose largest leaf-pair logit
    ``|<q_i, k_j>| / sqrt(C)`` (and ``|<pos_a, pos_b>|``) is
    :obj:`magnitude`."""
    gen = torch.Generator().manual_seed(seed)
    n = tree.num_leaves

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = randn(n, heads, channels), randn(n, heads, channels), \
        randn(n, heads, value_channels)
    top = torch.einsum('ihc,jhc->hij', q, k).abs().max() / math.sqrt(
        channels)
    factor = math.sqrt(magnitude / float(top))
    q, k = q * factor, k * factor
    pos = None
    if case.pos is not None:
        pos = randn(*((tree.num_nodes, 3) if case.pos == 'shared' else
                      (tree.num_nodes, heads, 3)))
        top = torch.einsum('a...p,b...p->...ab', pos, pos).abs().max()
        pos = pos * math.sqrt(magnitude / float(top))
    return q, k, v, pos


# The precision of the inputs' dtype (outputs and gradients are rounded to
# it) and of the dtype the computation runs in (float32 for half inputs).
EPS = {dtype: torch.finfo(dtype).eps for dtype in DTYPES}
COMPUTE = {torch.float64: torch.float64, torch.float32: torch.float32,
           torch.bfloat16: torch.float32, torch.float16: torch.float32}


def tolerance(dtype, magnitude: float) -> float:
    """Relative to the reference's largest entry (plus one): the output's
    rounding, and the logits' absolute rounding error (relative error of
    the computation's dtype times the logits' size) carried into the
    weights."""
    return 4 * EPS[dtype] + 4 * EPS[COMPUTE[dtype]] * magnitude


def reference(path: Path, tree: Tree, q, k, v, pos):
    theta = hsa_dense(q, k, tree, pe=pos, **path.options)
    return torch.einsum('hij,jhc->ihc', theta, v)


# The cells ################################################################

# Fast tier: every eager path on every case, each case with one magnitude,
# dtype and grad mode (cycled so that every value occurs, the 1e4 logits
# in every dtype with gradients).
FAST_SETTINGS = [
    (1e4, torch.float32, True), (1e4, torch.bfloat16, True),
    (1e4, torch.float16, True), (1e4, torch.float64, True),
    (1e2, torch.float32, True), (1.0, torch.float16, False),
    (1e2, torch.bfloat16, True), (1.0, torch.float64, True),
    (1e2, torch.float64, False), (1e4, torch.float32, False),
]


def _id(path, case, magnitude, dtype, grad):
    return (f'{path.name}-{case.name}-{magnitude:g}-'
            f'{str(dtype).split(".")[-1]}-{"grad" if grad else "no_grad"}')


def _cells():
    fast, cells = set(), []
    for i, case in enumerate(CASES):
        for path in PATHS:
            if not path.slow:
                fast.add((path.name, case.name) +
                         FAST_SETTINGS[i % len(FAST_SETTINGS)])
    for path, case, magnitude, dtype, grad in itertools.product(
            PATHS, CASES, MAGNITUDES, DTYPES, GRADS):
        cell = (path, case, magnitude, dtype, grad)
        is_fast = (path.name, case.name, magnitude, dtype, grad) in fast
        cells.append(pytest.param(
            *cell, id=_id(*cell),
            marks=() if is_fast else pytest.mark.slow))
    return cells


@pytest.fixture
def limits(request, monkeypatch):
    def apply(case: Case):
        for (module, name), value in case.limits.items():
            monkeypatch.setattr(module, name, value)  # (raises if renamed)
    return apply


@pytest.fixture(scope='module', autouse=True)
def _recompiles():
    # One compiled function per path recompiles per dtype, pos kind and
    # grad mode.
    with torch._dynamo.config.patch(cache_size_limit=256,
                                    accumulated_cache_size_limit=4096):
        yield
    torch._dynamo.reset()
    _COMPILED.clear()


@pytest.mark.parametrize('path,case,magnitude,dtype,grad', _cells())
def test_edge_matrix(path, case, magnitude, dtype, grad, limits):
    limits(case)
    tree = case.tree()
    q64, k64, v64, pos64 = inputs(tree, case, magnitude)
    given = [x.to(dtype) if x is not None else None
             for x in (q64, k64, v64, pos64)]
    # The reference sees the same (rounded) inputs, in float64.
    ref_in = [x.double().requires_grad_() if x is not None else None
              for x in given]
    ref = reference(path, tree, *ref_in)
    tol = tolerance(dtype, magnitude)
    wanted = [x for x in ref_in if x is not None]
    weight = torch.linspace(-1, 1, ref.numel(),
                            dtype=torch.float64).view(ref.shape)
    ref_grads = torch.autograd.grad((ref * weight).sum(), wanted,
                                    allow_unused=True)
    ref_grads = [torch.zeros_like(x) if g is None else g
                 for x, g in zip(wanted, ref_grads)]
    assert all(bool(g.isfinite().all()) for g in ref_grads), 'reference'

    if grad:
        xs = [x.clone().requires_grad_() if x is not None else None
              for x in given]
        out = path(tree, *xs)
        leaves = [x for x in xs if x is not None]
        grads = torch.autograd.grad((out * weight.to(out.dtype)).sum(),
                                    leaves, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g
                 for x, g in zip(leaves, grads)]
    else:
        with torch.no_grad():
            out = path(tree, *given)
        grads = []
    assert out.dtype == dtype and out.shape == ref.shape
    assert bool(out.isfinite().all()), 'output'
    close(out, ref.detach(), tol, 'output')
    for name, g, ref_g in zip('q k v pos'.split(), grads, ref_grads):
        assert g.dtype == dtype, name
        assert bool(g.isfinite().all()), f'gradient of {name}'
        close(g, ref_g, tol, f'gradient of {name}')


def close(got, expected, tol: float, what: str) -> None:
    """Within :obj:`tol` of the reference's largest entry plus one."""
    scale = 1 + float(expected.abs().max()) if expected.numel() else 1
    error = float((got.detach().double() - expected).abs().max()) \
        if expected.numel() else 0.0
    assert error <= tol * scale, \
        f'{what}: error {error:.3g} > {tol:.3g} * {scale:.3g}'
