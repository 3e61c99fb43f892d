"""hsa_attention under torch.func transforms (issue 22): its autograd
Functions define ``setup_context``, so :func:`torch.func.grad` works and
equals autograd's gradients (block and query resolution; under a
transform the kernels with sparse constants, padded families and query
tiles, give way to the level-by-level ones)."""
import pytest
import torch

from pyg_hsa import Tree, hsa_attention
from pyg_hsa.functional import query_tiles
from pyg_hsa.testing import nested_to_forest, random_qkv

L = 'leaf'
MODES = {'block': {}, 'block self loops': dict(self_loops=True),
         'query': dict(resolution='query'),
         'causal': dict(resolution='query', self_loops=True, causal=True)}


def tree():
    parent, num_leaves = nested_to_forest([[[L, L], [L, L, L], L], [L, L]])
    return Tree.from_parent(parent, num_leaves)


@pytest.mark.parametrize('kernel', ['default', 'family by family'])
@pytest.mark.parametrize('mode', list(MODES))
@pytest.mark.parametrize('with_pos', [False, True])
def test_func_grad_equals_autograd(mode, with_pos, kernel, monkeypatch):
    if kernel != 'default':
        if 'resolution' not in MODES[mode]:
            pytest.skip('one kernel')
        monkeypatch.setattr(query_tiles, 'TILE_ELEMENTS', 0)
    t = tree()
    q, k, v = random_qkv(t.num_leaves, seed=1)
    pos = torch.randn(t.num_nodes, 2, dtype=torch.float64) if with_pos \
        else None

    def loss(q, k, v, pos):
        out = hsa_attention(q, k, v, t, pe=pos, **MODES[mode])
        return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
                .view(out.shape)).square().sum()

    argnums = (0, 1, 2, 3) if with_pos else (0, 1, 2)
    grads = torch.func.grad(loss, argnums=argnums)(q, k, v, pos)
    inputs = [x.clone().requires_grad_() for x in (q, k, v, pos)
              if x is not None]
    expected = torch.autograd.grad(loss(*inputs, *([None] * (4 - len(
        inputs)))), inputs)
    for grad, ref in zip(grads, expected):
        torch.testing.assert_close(grad, ref, rtol=1e-10, atol=1e-12)
