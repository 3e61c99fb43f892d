r"""Models of ``causal_lm.py``: one byte-level transformer whose attention
is causal softmax, sliding-window softmax or causal query-resolved HSA, and
its decoding caches.

Every variant has the same parameters (so one parameter budget holds by
construction): byte embedding; pre-norm blocks of

.. math::
    \mathbf{u} &= \mathrm{LN}(\mathbf{x}), \quad
    \mathbf{u} \leftarrow \mathbf{u} + \mathrm{conv}_4(\mathbf{u}) \\
    \mathbf{x} &\leftarrow \mathbf{x} + \mathbf{W}_o\,
    \mathrm{Attn}\big(\mathrm{RoPE}(\mathrm{LN}(\mathbf{W}_q \mathbf{u})),
    \mathrm{RoPE}(\mathrm{LN}(\mathbf{W}_k \mathbf{u})),
    \mathbf{W}_v \mathbf{u}\big) \\
    \mathbf{x} &\leftarrow \mathbf{x} + \mathrm{FFN}(\mathrm{LN}(\mathbf{x}))

(:math:`\mathrm{conv}_4`: a depthwise causal convolution over the last 4
bytes, so that every model sees the previous bytes exactly whatever its
attention groups; RoPE on queries and keys, per head); then LayerNorm and
a linear read-out over the 256 bytes. Rotating keys before HSA averages
them is exact for the cache too: a block's summary is the mean of its
rotated keys.
"""
import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_hsa import HierarchicalKVCache, Tree, hsa_attention

ATTENTIONS = ('softmax', 'sliding', 'hsa')
VOCAB = 256


def rotate(x: Tensor, position: Tensor) -> Tensor:
    """RoPE: ``x`` ``[..., L, H, C]`` rotated by angle ``position *
    10000^(-2i/C)`` in its channel pairs ``(i, i + C/2)``."""
    half = x.size(-1) // 2
    frequency = 10000.0 ** (-torch.arange(half, device=x.device,
                                          dtype=x.dtype) / half)
    angle = position.to(x.dtype)[:, None, None] * frequency  # [L, 1, half]
    cos, sin = angle.cos(), angle.sin()
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin,
                      first * sin + second * cos], dim=-1)


def causal_softmax(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``[B, L, H, C]`` in and out; PyTorch's fused causal kernel."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        is_causal=True)
    return out.transpose(1, 2)


def sliding_softmax(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """Byte ``i`` attends to bytes ``i - window < j <= i``: blocks of
    :obj:`window` queries against their own and the previous block's keys,
    ``O(L * window)``."""
    batch, length, heads, channels = q.shape
    blocks = -(-length // window)
    pad = blocks * window - length

    def split(x):  # [B, H, blocks, window, C]
        x = F.pad(x, (0, 0, 0, 0, 0, pad)).transpose(1, 2)
        return x.reshape(batch, heads, blocks, window, channels)

    q, k, v = split(q), split(k), split(v)

    def with_previous(x):  # [B, H, blocks, 2 * window, C]
        return torch.cat([F.pad(x, (0, 0, 0, 0, 1, 0))[:, :, :-1], x], -2)

    i = torch.arange(window, device=q.device)[:, None]
    j = torch.arange(2 * window, device=q.device)[None, :] - window
    allowed = (j <= i) & (j > i - window)
    allowed = allowed.expand(blocks, window, 2 * window).clone()
    allowed[0, :, :window] = False  # no block before the first
    out = F.scaled_dot_product_attention(q, with_previous(k),
                                         with_previous(v), attn_mask=allowed)
    out = out.reshape(batch, heads, blocks * window, channels)
    return out[:, :, :length].transpose(1, 2)


def causal_hsa(q: Tensor, k: Tensor, v: Tensor, tree: Tree) -> Tensor:
    """Causal query-resolved HSA over the forest of the chunks (one root
    per chunk, leaves in chunk order)."""
    batch, length, heads, channels = q.shape
    out = hsa_attention(*(x.reshape(batch * length, heads, channels)
                          for x in (q, k, v)), tree, self_loops=True,
                        resolution='query', causal=True)
    return out.view(batch, length, heads, channels)


class Block(torch.nn.Module):
    def __init__(self, channels: int, heads: int, kernel: int = 4):
        super().__init__()
        self.heads = heads
        self.norm_attn = torch.nn.LayerNorm(channels)
        self.conv = torch.nn.Parameter(torch.zeros(channels, 1, kernel))
        self.lin_qkv = torch.nn.Linear(channels, 3 * channels)
        self.norm_query = torch.nn.LayerNorm(channels // heads)
        self.norm_key = torch.nn.LayerNorm(channels // heads)
        self.lin_out = torch.nn.Linear(channels, channels)
        self.norm_ffn = torch.nn.LayerNorm(channels)
        self.ffn = torch.nn.Sequential(
            torch.nn.Linear(channels, 4 * channels), torch.nn.GELU(),
            torch.nn.Linear(4 * channels, channels))

    def mix(self, u: Tensor) -> Tensor:
        """``u + conv(u)`` over ``[B, L, F]``, causally."""
        kernel = self.conv.size(-1)
        shifted = F.pad(u.transpose(1, 2), (kernel - 1, 0))
        return u + F.conv1d(shifted, self.conv,
                            groups=u.size(-1)).transpose(1, 2)

    def project(self, u: Tensor, position: Tensor):
        """Queries, keys, values ``[..., L, H, C]`` of mixed inputs."""
        shape = (*u.shape[:-1], self.heads, -1)
        q, k, v = self.lin_qkv(u).chunk(3, dim=-1)
        q = rotate(self.norm_query(q.reshape(shape)), position)
        k = rotate(self.norm_key(k.reshape(shape)), position)
        return q, k, v.reshape(shape)

    def finish(self, x: Tensor, attended: Tensor) -> Tensor:
        x = x + self.lin_out(attended.flatten(-2))
        return x + self.ffn(self.norm_ffn(x))

    def forward(self, x: Tensor, position: Tensor, attend) -> Tensor:
        u = self.mix(self.norm_attn(x))
        return self.finish(x, attend(*self.project(u, position)))


class CausalLM(torch.nn.Module):
    r"""A byte-level causal language model (see the module docstring).

    Args:
        attention (str): ``'softmax'``, ``'sliding'`` or ``'hsa'``.
        channels (int): model width.
        heads (int): attention heads.
        num_layers (int): blocks.
        window (int, optional): the sliding window. (default: :obj:`128`)
    """
    def __init__(self, attention: str, channels: int, heads: int,
                 num_layers: int, window: int = 128):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"'attention' must be one of {ATTENTIONS} "
                             f"(got {attention!r})")
        self.attention = attention
        self.window = window
        self.embed = torch.nn.Embedding(VOCAB, channels)
        self.blocks = torch.nn.ModuleList(
            Block(channels, heads) for _ in range(num_layers))
        self.norm = torch.nn.LayerNorm(channels)
        self.head = torch.nn.Linear(channels, VOCAB)

    def forward(self, data: Tensor, tree: Optional[Tree] = None) -> Tensor:
        """Logits ``[B, L, 256]`` of the next byte after every byte of
        :obj:`data` ``[B, L]``; :obj:`tree` is the forest of the chunks
        (for ``'hsa'``)."""
        if self.attention == 'hsa':
            if tree is None or tree.num_leaves != data.numel():
                raise ValueError(f"'tree' must be the forest of the "
                                 f"{data.numel()} bytes for HSA")

            def attend(q, k, v):
                return causal_hsa(q, k, v, tree)
        elif self.attention == 'sliding':
            def attend(q, k, v):
                return sliding_softmax(q, k, v, self.window)
        else:
            attend = causal_softmax
        position = torch.arange(data.size(1), device=data.device)
        x = self.embed(data)
        for block in self.blocks:
            x = block(x, position, attend)
        return self.head(self.norm(x))

    # Decoding #############################################################

    def new_caches(self, capacity: int) -> List['LayerCache']:
        """One empty cache per block, for up to :obj:`capacity` bytes."""
        return [LayerCache(block, self.attention, capacity, self.window)
                for block in self.blocks]

    @torch.no_grad()
    def step(self, byte: int, position: int, path: Sequence[int],
             caches: List['LayerCache']) -> Tensor:
        """The logits ``[256]`` after one more byte at :obj:`position`,
        whose ancestors (for HSA) are :obj:`path`, root first; the caches
        hold the bytes before."""
        x = self.embed.weight[byte]
        position = torch.tensor([position])
        for block, cache in zip(self.blocks, caches):
            u = cache.mix(block.norm_attn(x))
            q, k, v = (y[0] for y in block.project(u[None], position))
            cache.append(k, v, path)
            x = block.finish(x, cache.attend(q))
        return self.head(self.norm(x))


class FullKVCache:
    """Keys and values of every earlier byte in preallocated ``[1, H, T,
    C]`` buffers; a byte attends to all of them with PyTorch's fused
    kernel."""
    def __init__(self, capacity: int):
        self.capacity, self.size = capacity, 0
        self.key = self.value = None

    def fill(self, k: Tensor, v: Tensor, paths=None) -> None:
        """Appends ``[T, H, C]`` keys and values at once."""
        if self.key is None:
            shape = (1, k.size(-2), self.capacity, k.size(-1))
            self.key, self.value = k.new_zeros(shape), v.new_zeros(shape)
        count = k.size(0)
        if self.size + count > self.capacity:
            raise ValueError(f'the cache holds {self.capacity} bytes '
                             f'(got {self.size + count})')
        self.key[0, :, self.size:self.size + count] = k.transpose(0, 1)
        self.value[0, :, self.size:self.size + count] = v.transpose(0, 1)
        self.size += count

    def append(self, k: Tensor, v: Tensor, path=None) -> None:
        self.fill(k[None], v[None])

    def attend(self, q: Tensor) -> Tensor:
        keys = self.key[:, :, :self.size]
        values = self.value[:, :, :self.size]
        return F.scaled_dot_product_attention(
            q[None, :, None], keys, values)[0, :, 0]


class WindowKVCache(FullKVCache):
    """The last :obj:`window` keys and values, in a ring buffer."""
    def __init__(self, window: int):
        super().__init__(window)
        self.seen = 0

    def fill(self, k: Tensor, v: Tensor, paths=None) -> None:
        for start in range(0, k.size(0), self.capacity):
            part = slice(start, start + self.capacity)
            self._write(k[part], v[part])

    def _write(self, k: Tensor, v: Tensor) -> None:
        if self.key is None:
            shape = (1, k.size(-2), self.capacity, k.size(-1))
            self.key, self.value = k.new_zeros(shape), v.new_zeros(shape)
        slot = (self.seen + torch.arange(k.size(0))) % self.capacity
        self.key[0, :, slot] = k.transpose(0, 1)
        self.value[0, :, slot] = v.transpose(0, 1)
        self.seen += k.size(0)
        self.size = min(self.seen, self.capacity)


class TreeKVCache(HierarchicalKVCache):
    """:class:`~pyg_hsa.HierarchicalKVCache` with the interface of the
    others (keys and values ``[H, C]``)."""
    def fill(self, k: Tensor, v: Tensor, paths: Sequence) -> None:
        for key, value, path in zip(k, v, paths):  # one append per byte
            self.append(key, value, path)


class LayerCache:
    """What one block keeps while decoding: its convolution's last inputs
    and its attention cache."""
    def __init__(self, block: Block, attention: str, capacity: int,
                 window: int):
        self.conv = block.conv
        self.inputs: Optional[Tensor] = None  # [kernel, F], oldest first
        if attention == 'hsa':
            self.attention = TreeKVCache()
        elif attention == 'sliding':
            self.attention = WindowKVCache(window)
        else:
            self.attention = FullKVCache(capacity)

    def mix(self, u: Tensor) -> Tensor:
        kernel = self.conv.size(-1)
        if self.inputs is None:
            self.inputs = u.new_zeros(kernel, u.size(-1))
        self.inputs = torch.cat([self.inputs[1:], u[None]])
        return u + (self.conv[:, 0].t() * self.inputs).sum(0)

    def append(self, k: Tensor, v: Tensor, path) -> None:
        self.attention.append(k, v, path)

    def attend(self, q: Tensor) -> Tensor:
        return self.attention.attend(q)

    def fill_random(self, count: int, heads: int, channels: int,
                    paths: Sequence, generator: torch.Generator) -> None:
        """:obj:`count` more bytes of random keys and values (timing only:
        a step's cost does not depend on them)."""
        k, v = (torch.randn(count, heads, channels, generator=generator)
                for _ in range(2))
        k = k / math.sqrt(channels)
        self.attention.fill(k, v, paths)
