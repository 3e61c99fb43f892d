"""The FlexAttention kernel of query-resolved HSA (functional/flex.py):
its forward pass equals the tiled kernel's on CPU (FlexAttention's CPU
build runs forward only); on a GPU, outputs and gradients equal the CPU
path's."""
import numpy as np
import pytest
import torch

from pyg_hsa import Tree, hsa_attention
from pyg_hsa.functional import flex
from pyg_hsa.testing import random_forest, random_qkv

pytestmark = [
    pytest.mark.skipif(not flex.available(),
                       reason='no FlexAttention in this torch'),
    # ("flex_attention called without torch.compile()": on CPU, as meant)
    pytest.mark.filterwarnings('ignore::UserWarning'),
]
MODES = [(False, False), (True, False), (True, True)]  # self_loops, causal


def tree_of(seed):
    rng = np.random.default_rng(seed)
    return Tree.from_parent(*random_forest(rng, max_depth=4, max_branch=5,
                                           num_roots=1 + seed % 3,
                                           max_leaves=40))


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('mode', MODES)
def test_forward_equals_the_tiled_kernel_on_cpu(seed, mode):
    tree = tree_of(seed)
    q, k, v = random_qkv(tree.num_leaves, heads=2, channels=4,
                         value_channels=3, dtype=torch.float32, seed=seed)
    with torch.no_grad():
        out = flex.flex_query_attention(tree, q, k, v, 0.5, *mode)
        ref = hsa_attention(q, k, v, tree, scale=0.5, resolution='query',
                            self_loops=mode[0], causal=mode[1])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no GPU')
@pytest.mark.parametrize('mode', MODES)
def test_cuda_outputs_and_gradients_equal_the_cpu_path(mode):
    tree = tree_of(1)
    inputs = [x.requires_grad_() for x in random_qkv(
        tree.num_leaves, heads=2, channels=16, value_channels=16,
        dtype=torch.float32, seed=1)]
    options = dict(resolution='query', self_loops=mode[0], causal=mode[1])
    ref = hsa_attention(*inputs, tree, **options)
    ref_grads = torch.autograd.grad(ref.square().sum(), inputs)
    cuda = [x.detach().cuda().requires_grad_() for x in inputs]
    assert flex.use_flex(cuda[0], None)
    out = hsa_attention(*cuda, tree.to('cuda'), **options)
    grads = torch.autograd.grad(out.square().sum(), cuda)
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
    for grad, expected in zip(grads, ref_grads):
        torch.testing.assert_close(grad.cpu(), expected, rtol=1e-4,
                                   atol=1e-4)


def test_cpu_calls_keep_the_tiled_kernel():
    assert not flex.use_flex(torch.zeros(1, 1, 1), None)
