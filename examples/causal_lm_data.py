r"""Data of ``causal_lm.py``: the Python standard library's own source
files as one byte stream per split, and the hierarchies a causal HSA model
sees over it.

Every machine with Python has the text offline. Files are taken in sorted
order of their path below the standard library's folder (``site-packages``
left out); a file goes to validation or test by a CRC-32 of that path, so
the split is deterministic and whole files never straddle it. Each file
ends with a NUL byte (the separator; files that contain NUL are skipped).
The text is that of the running Python's standard library (3.11 for the
tables in the docs).

Hierarchies (a path of node ids per byte, coarsest level first; a chunk's
tree puts one root above them):

* **windows**: fixed windows of 16 bytes, 8 windows, 8 of those, ...
  (content-independent);
* **indentation**: files, then blocks by indentation (up to ``depth``
  levels), then lines, then bytes. A *line* starts at its first
  non-whitespace byte and runs up to the next line's first non-whitespace
  byte, so when a line starts its indentation is known: every byte's path
  depends on that byte and the bytes before it only, and the hierarchy
  grows left to right as decoding needs. A line of indentation ``I > 0``
  belongs to the innermost open block of indentation ``I`` (opening one if
  the innermost open block is less indented), closing the blocks indented
  more; lines deeper than ``depth`` blocks stay in their ``depth``-th
  block. Levels a line does not reach are unary nodes, which change
  nothing in the attention.
"""
import sysconfig
import zlib
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch
from torch import Tensor

SEPARATOR = 0
SPLITS = ('train', 'valid', 'test')
WHITESPACE = tuple(b' \t\r\n\x0b\x0c')


def split_of(relative_path: str) -> str:
    """``'valid'`` or ``'test'`` for one file in 20 each, else
    ``'train'``."""
    bucket = zlib.crc32(relative_path.encode()) % 20
    return {0: 'valid', 1: 'test'}.get(bucket, 'train')


def python_sources(root: str = '') -> Dict[str, np.ndarray]:
    """The byte stream (``uint8``) of every split of the ``.py`` files
    below :obj:`root` (default: the standard library)."""
    root = Path(root or sysconfig.get_paths()['stdlib'])
    parts = {split: [] for split in SPLITS}
    for path in sorted(root.rglob('*.py')):
        relative = path.relative_to(root).as_posix()
        if 'site-packages' in relative.split('/') or not path.is_file():
            continue
        data = path.read_bytes()
        if SEPARATOR in data:
            continue
        parts[split_of(relative)].append(data + bytes([SEPARATOR]))
    streams = {split: np.frombuffer(b''.join(chunks), dtype=np.uint8)
               for split, chunks in parts.items()}
    if any(stream.size == 0 for stream in streams.values()):
        raise ValueError(f"no Python source files below '{root}' for "
                         f"every split (need some in each of {SPLITS})")
    return streams


class IndentationPaths:
    """The indentation hierarchy of a byte stream: :meth:`__call__` gives
    the path ``[file, block_1 .. block_depth, line]`` of every byte asked
    for, as global ids (unique per level in the stream)."""
    def __init__(self, stream: np.ndarray, depth: int = 3):
        self.depth = depth
        index = np.arange(stream.size)
        text = ~np.isin(stream, WHITESPACE)
        file_start = np.zeros(stream.size, dtype=bool)
        file_start[0] = True
        file_start[1:] = stream[:-1] == SEPARATOR
        last_newline = np.maximum.accumulate(
            np.where(stream == ord('\n'), index, -1))
        last_text = np.maximum.accumulate(np.where(text, index, -1))
        before_newline = np.concatenate([[-1], last_newline[:-1]])
        before_text = np.concatenate([[-1], last_text[:-1]])
        line_start = file_start | (text & (before_newline > before_text))
        starts = np.flatnonzero(line_start)
        indent = np.where(file_start[starts], 0,
                          starts - before_newline[starts] - 1)
        self.line_of_byte = torch.from_numpy(
            (np.cumsum(line_start) - 1).astype(np.int32))
        self.file_of_line = torch.from_numpy(
            np.cumsum(file_start[starts]) - 1)
        self.blocks_of_line = torch.from_numpy(
            self._blocks(indent, file_start[starts], depth))

    @staticmethod
    def _blocks(indent: np.ndarray, new_file: np.ndarray,
                depth: int) -> np.ndarray:
        # One pass over the lines (not bytes) with a stack of open blocks;
        # done once per stream. Unreached levels get ids past the blocks'.
        out = np.empty((indent.size, depth), dtype=np.int64)
        reached = np.empty(indent.size, dtype=np.int64)
        open_indent, open_id, next_id = [], [], 0
        for line, (width, fresh) in enumerate(zip(indent.tolist(),
                                                  new_file.tolist())):
            if fresh:
                open_indent, open_id = [], []
            while open_indent and open_indent[-1] > width:
                open_indent.pop()
                open_id.pop()
            if width > 0 and (not open_indent or open_indent[-1] < width):
                open_indent.append(width)
                open_id.append(next_id)
                next_id += 1
            reached[line] = min(len(open_id), depth)
            out[line, :reached[line]] = open_id[:depth]
        # Unreached levels: unary nodes with the line's own id, shifted
        # past every block id.
        line = np.arange(indent.size)
        return np.where(np.arange(depth)[None, :] < reached[:, None], out,
                        next_id + line[:, None])

    def __call__(self, positions: Tensor) -> Tensor:
        """Paths ``[..., depth + 2]`` of the bytes at :obj:`positions`."""
        line = self.line_of_byte[positions].long()
        return torch.cat([self.file_of_line[line].unsqueeze(-1),
                          self.blocks_of_line[line],
                          line.unsqueeze(-1)], dim=-1)


def window_paths(length: int, branching: Sequence[int]) -> Tensor:
    """Paths ``[length, len(branching)]`` of positions ``0 .. length-1`` in
    fixed windows (``branching[0]`` bytes per window, ...), coarsest
    first."""
    position = torch.arange(length)
    sizes = np.cumprod(branching).tolist()
    return torch.stack([position // size for size in sizes[::-1]], dim=-1)


def forest_parent(paths: Tensor) -> Tensor:
    """The parent vector of the forest over ``B`` chunks whose bytes have
    the paths ``[B, L, K]`` (ids unique per level; the same id in two
    chunks means two nodes): leaves ``0 .. B*L-1`` in chunk order, one
    root per chunk, then the nodes of every level."""
    num_chunks, length, levels = paths.shape
    num_leaves = num_chunks * length
    chunk = torch.arange(num_chunks).repeat_interleave(length)
    flat = paths.reshape(num_leaves, levels)
    stride = int(flat.max()) + 1 if flat.numel() else 1
    above = num_leaves + chunk  # each byte's node at the current level
    parents = [torch.full((num_chunks,), -1, dtype=torch.long)]
    next_node = num_leaves + num_chunks
    for level in range(levels):
        nodes, inverse = torch.unique(chunk * stride + flat[:, level],
                                      return_inverse=True)
        # All bytes of a node share its parent: any of them may write it.
        parents.append(torch.empty(nodes.numel(), dtype=torch.long)
                       .scatter_(0, inverse, above))
        above = next_node + inverse
        next_node += nodes.numel()
    return torch.cat([above, *parents])
