"""HierarchicalKVCache: decoding token by token equals the full causal
query-resolved forward, on random hierarchies that grow left to right
(segments opening and closing, new roots), with and without positions, in
float64 and float32, for batched heads and a batch dimension; half
precision counts and sums in float32; its size stays O(b * depth); every
token keeps the first token's dtypes, device and widths."""
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
                     pe=None if pos is None else pos[nodes[t]])
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
    full = hsa_attention(q, k, v, tree, pe=pos, self_loops=True,
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
    with pytest.raises(ValueError, match="'pe' must be"):
        cache.append(x, x, [0, 1], pe=torch.randn(2, 3))
    cache.append(x, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='must keep the shapes'):
        cache.append(torch.randn(3, 4), torch.randn(3, 4), [0, 1])
    with pytest.raises(ValueError, match="'pe' must be given for every"):
        cache.append(x, x, [0, 1], pe=torch.randn(3, 3))
    with pytest.raises(ValueError, match="'q' must be a floating-point "
                       "tensor of the key's shape"):
        cache.attend(torch.randn(2, 5))
    with pytest.raises(ValueError, match="'scale'"):
        HierarchicalKVCache(scale=-1.0)


@pytest.mark.parametrize('dtype,atol', [(torch.float16, 2e-3),
                                        (torch.bfloat16, 2e-2)])
def test_half_precision_counts_and_sums_in_float32(dtype, atol):
    # A window of 3000 tokens closes into one entry: its count passes 2048
    # (the last integer float16 counts to) and 256 (bfloat16).
    window, extra = 3000, 6
    paths = [window_path(t, (window, )) for t in range(window + extra)]
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, window + extra, 2, 4, generator=gen,
                          dtype=torch.float64).to(dtype).unbind(0)
    v = v + 2  # values whose mean is far from 0: a wrong count shows
    half, exact = HierarchicalKVCache(), HierarchicalKVCache()
    for t, path in enumerate(paths):
        half.append(k[t], v[t], path)
        exact.append(k[t].double(), v[t].double(), path)
        if t >= window:
            assert half.num_entries == t - window + 1
            out, ref = half.attend(q[t]), exact.attend(q[t].double())
            assert out.dtype == dtype
            # One rounding of the output to the input dtype.
            torch.testing.assert_close(out.double(), ref, rtol=0,
                                       atol=atol * (1 + ref.abs().max()))


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('pos_kind', ['shared', 'per_head'])
def test_a_batch_dimension_with_positions(seed, pos_kind):
    """[B, H, C] tokens sharing one hierarchy and its positions: every
    sample as if decoded alone, and as the causal forward. The batch size
    equals the number of entries at some tokens, where a wrong broadcast
    of the position logits would still run."""
    batch = 3
    rng = random.Random(seed)
    paths = growing_paths(40, rng)
    tree, nodes = tree_of(paths)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, len(paths), batch, 2, 4, generator=gen,
                          dtype=torch.float64).unbind(0)
    pos = torch.randn((tree.num_nodes, 3) if pos_kind == 'shared' else
                      (tree.num_nodes, 2, 3), generator=gen,
                      dtype=torch.float64)
    cache, outs, entries = HierarchicalKVCache(scale=0.4), [], set()
    for t, path in enumerate(paths):
        cache.append(k[t], v[t], path, pe=pos[nodes[t]])
        entries.add(cache.num_entries)
        outs.append(cache.attend(q[t]))
    out = torch.stack(outs)  # [N, B, H, C]
    assert batch in entries
    for b in range(batch):
        alone, _ = decode(q[:, b], k[:, b], v[:, b], paths, pos, nodes,
                          scale=0.4)
        full = hsa_attention(q[:, b], k[:, b], v[:, b], tree, pe=pos,
                             self_loops=True, resolution='query',
                             causal=True, scale=0.4)
        torch.testing.assert_close(out[:, b], alone, rtol=0, atol=1e-12)
        torch.testing.assert_close(out[:, b], full, rtol=0, atol=1e-12)


def test_every_token_keeps_the_first_tokens_dtypes_device_and_widths():
    x = torch.randn(2, 4)
    cache = HierarchicalKVCache()
    cache.append(x, x, [0], pe=torch.randn(2, 3))
    with pytest.raises(TypeError, match="'k' has dtype torch.float64 but "
                       "the earlier tokens' 'k' had torch.float32"):
        cache.append(x.double(), x, [0], pe=torch.randn(2, 3))
    with pytest.raises(TypeError, match="'v' has dtype torch.float16"):
        cache.append(x, x.half(), [0], pe=torch.randn(2, 3))
    with pytest.raises(ValueError, match="'k' is on meta but the earlier "
                       "tokens were on cpu"):
        cache.append(x.to('meta'), x.to('meta'), [0],
                     pe=torch.randn(2, 3, device='meta'))
    with pytest.raises(ValueError, match="'v' is on meta but 'k' is on "
                       "cpu"):
        cache.append(x, x.to('meta'), [0], pe=torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"'pe' has shape \(2, 5\) but "
                       r"the earlier tokens' positions were \[len\(path\) "
                       r"\+ 1, 3\]"):
        cache.append(x, x, [0], pe=torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"'pe' has shape \(2, 2, 3\)"):
        cache.append(x, x, [0], pe=torch.randn(2, 2, 3))
    with pytest.raises(TypeError, match="'pe' has dtype torch.float64"):
        cache.append(x, x, [0], pe=torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="'pe' must be a floating-point"):
        cache.append(x, x, [0], pe=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="'pe' is on meta but 'k' is on "
                       "cpu"):
        cache.append(x, x, [0], pe=torch.randn(2, 3, device='meta'))
    with pytest.raises(ValueError, match="'q' is on meta but the cache is "
                       "on cpu"):
        cache.attend(x.to('meta'))
    # Nothing was appended by the refused tokens; a good one still works,
    # and a float64 query gets a float64 output (the promoted dtype).
    assert len(cache) == 1
    cache.append(x, x, [0], pe=torch.randn(2, 3))
    assert len(cache) == 2 and cache.attend(x.double()).dtype == \
        torch.float64


@pytest.mark.parametrize('t,branching,error,match', [
    (3, (0, ), ValueError, r"'branching' must be a sequence of integers >= "
     r"1 \(the window widths, finest first; got \[0\]\)"),
    (3, (4, -2), ValueError, "'branching'"),
    (3, 4, TypeError, "'branching'.*got 4 of type int"),
    (3, (2.0, ), TypeError, "'branching'"),
    (-1, (4, ), ValueError, r"'t' must be an integer >= 0 \(got -1\)"),
    (1.5, (4, ), TypeError, "'t' must be an integer >= 0"),
])
def test_window_path_bad_arguments(t, branching, error, match):
    with pytest.raises(error, match=match):
        window_path(t, branching)


def test_window_path():
    assert window_path(17, (4, 4)) == [0, 1, 4]
    assert window_path(17, ()) == [0]  # one flat sequence
    assert window_path(17, [1, 2]) == [0, 8, 17]


def test_append_pos_is_a_deprecated_alias_of_pe():
    paths = growing_paths(12, random.Random(0))
    tree, nodes = tree_of(paths)
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, len(paths), 2, 4, generator=gen,
                          dtype=torch.float64).unbind(0)
    pe = torch.randn(tree.num_nodes, 3, generator=gen, dtype=torch.float64)
    new, _ = decode(q, k, v, paths, pe, nodes)
    cache, outs = HierarchicalKVCache(), []
    for t, path in enumerate(paths):
        with pytest.warns(FutureWarning, match=r"append\(\.\.\., pos=\) is "
                          r"deprecated; use pe="):
            cache.append(k[t], v[t], path, pos=pe[nodes[t]])
        outs.append(cache.attend(q[t]))
    assert torch.equal(torch.stack(outs), new)
    with pytest.raises(TypeError, match="both 'pe' and its deprecated "
                       "alias 'pos'"):
        cache.append(k[0], v[0], paths[0], pe=pe[nodes[0]],
                     pos=pe[nodes[0]])
