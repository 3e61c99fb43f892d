"""HierarchicalKVCache: decoding token by token equals the full causal
query-resolved forward, on random hierarchies that grow left to right
(segments opening and closing, new roots), with and without positions, in
float64 and float32, for batched heads; its size stays O(b * depth)."""
import random

import pytest
import torch

from pyg_hsa import HierarchicalKVCache, Tree, hsa_attention, window_path


def growing_paths(num_tokens, rng, max_depth=5):
    """Root-first ancestor ids of tokens arriving left to right: segments
    open, close and reopen at random, sometimes a new root starts."""
    paths, stack, fresh = [], [0], 1
    for _ in range(num_tokens):
        r = rng.random()
        if r < 0.3 and len(stack) < max_depth:
            stack.append(fresh)
            fresh += 1
        elif r < 0.5 and len(stack) > 1:
            stack.pop()
            if rng.random() < 0.5:
                stack.append(fresh)
                fresh += 1
        elif r < 0.53:
            stack = [fresh]
            fresh += 1
        paths.append(list(stack))
    return paths


def tree_of(paths):
    """The forest of the paths (leaves first) and each path node's index."""
    num_tokens, index = len(paths), {}
    for path in paths:
        for depth, node in enumerate(path):
            index.setdefault((depth, node), num_tokens + len(index))
    parent = [-1] * (num_tokens + len(index))
    for t, path in enumerate(paths):
        parent[t] = index[len(path) - 1, path[-1]]
        for depth in range(1, len(path)):
            above = index[depth - 1, path[depth - 1]]
            parent[index[depth, path[depth]]] = above
    nodes = [[index[d, node] for d, node in enumerate(path)] + [t]
             for t, path in enumerate(paths)]
    return Tree.from_parent(torch.tensor(parent), num_tokens), nodes


def decode(q, k, v, paths, pos=None, nodes=None, scale=None):
    cache = HierarchicalKVCache(scale=scale)
    outs = []
    for t, path in enumerate(paths):
        cache.append(k[t], v[t], path,
                     pos=None if pos is None else pos[nodes[t]])
        outs.append(cache.attend(q[t]))
    return torch.stack(outs), cache


@pytest.mark.parametrize('seed', range(12))
@pytest.mark.parametrize('pos_kind', [None, 'shared', 'per_head'])
def test_decoding_equals_the_causal_forward(seed, pos_kind):
    rng = random.Random(seed)
    paths = growing_paths(rng.randint(1, 60), rng)
    tree, nodes = tree_of(paths)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, len(paths), 2, 4, generator=gen,
                          dtype=torch.float64).unbind(0)
    pos = None if pos_kind is None else torch.randn(
        (tree.num_nodes, 3) if pos_kind == 'shared' else
        (tree.num_nodes, 2, 3), generator=gen, dtype=torch.float64)
    full = hsa_attention(q, k, v, tree, pos=pos, self_loops=True,
                         resolution='query', causal=True, scale=0.4)
    out, _ = decode(q, k, v, paths, pos, nodes, scale=0.4)
    torch.testing.assert_close(out, full, rtol=0, atol=1e-12)


def test_float32_windows_with_a_batch_dimension():
    branching = (4, 4, 4)
    paths = [window_path(t, branching) for t in range(200)]
    assert paths[0] == [0, 0, 0, 0] and paths[17] == [0, 0, 1, 4]
    tree, _ = tree_of(paths)
    q, k, v = torch.randn(3, 200, 3, 2, 8).unbind(0)  # [N, B, H, C]
    full = torch.stack([
        hsa_attention(q[:, b], k[:, b], v[:, b], tree, self_loops=True,
                      resolution='query', causal=True) for b in range(3)
    ], dim=1)
    out, cache = decode(q, k, v, paths)
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)
    # Completed siblings on the path only: at most 3 per level here.
    assert cache.num_entries <= 3 * len(branching)
    assert len(cache) == 200
    assert repr(cache) == (f'HierarchicalKVCache(num_tokens=200, '
                           f'num_entries={cache.num_entries})')


def test_entries_stay_bounded_by_branching_times_depth():
    cache, largest = HierarchicalKVCache(), 0
    x = torch.randn(2, 4)
    for t in range(4096):
        cache.append(x, x, window_path(t, (8, 8, 8, 8)))
        largest = max(largest, cache.num_entries)
    assert largest == 7 * 4
    cache.reset()
    assert len(cache) == 0 and cache.num_entries == 0


def test_bad_arguments():
    cache = HierarchicalKVCache()
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match='call append'):
        cache.attend(x)
    with pytest.raises(TypeError, match="'k' must be a floating-point"):
        cache.append(torch.ones(2, 4, dtype=torch.long), x, [0])
    with pytest.raises(ValueError, match="'path' must list"):
        cache.append(x, x, [])
    with pytest.raises(ValueError, match="'path' must list"):
        cache.append(x, x, 'root')
    with pytest.raises(ValueError, match="'pos' must be"):
        cache.append(x, x, [0, 1], pos=torch.randn(2, 3))
    cache.append(x, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='must keep the shapes'):
        cache.append(torch.randn(3, 4), torch.randn(3, 4), [0, 1])
    with pytest.raises(ValueError, match="'pos' must be given for every"):
        cache.append(x, x, [0, 1], pos=torch.randn(3, 3))
    with pytest.raises(ValueError, match="'q' must be a tensor"):
        cache.attend(torch.randn(2, 5))
    with pytest.raises(ValueError, match="'scale'"):
        HierarchicalKVCache(scale=-1.0)
