"""Checks every hierarchy transform's output must pass (test-only code)."""
import os
from typing import Dict, List, Sequence

import pytest
import torch
from torch_geometric.data import HeteroData, InMemoryDataset
from torch_geometric.loader import DataLoader

from pyg_hsa import Tree
from pyg_hsa.nn import HSAConv
from pyg_hsa.utils import io


def package_file(package: str, *parts: str) -> str:
    """Path of a data file shipped inside an installed package, found
    without importing it (pyvista cannot import without VTK). Skips when
    the package is missing, except in CI, where it must be there."""
    try:
        return io.package_file(package, *parts)
    except FileNotFoundError as error:
        if os.environ.get('CI'):
            pytest.fail(str(error))
        pytest.skip(str(error))


def check_hierarchy(data: HeteroData, leaf_type: str, root_type: str,
                    num_leaves: int) -> Tree:
    """The output is a valid single-example hierarchy in the core schema:
    one leaf type with ``num_leaves`` nodes, exactly one root, of type
    ``root_type``, every node type below the root carries a finite
    ``pe``, and every nesting edge type is ``(child, 'in', parent)``."""
    assert isinstance(data, HeteroData)
    tree = Tree.from_hetero(data)
    assert tree.leaf_types == [leaf_type]
    assert tree.num_leaves == num_leaves == data[leaf_type].num_nodes
    assert tree.num_roots == 1
    is_root = (tree.parent < 0).nonzero().view(-1)
    lo, hi = tree.node_slices[root_type]
    assert is_root.tolist() == [lo] and hi - lo == 1
    for nt in data.node_types:
        if nt == root_type:
            continue
        pe = data[nt].pe
        assert pe.dim() == 2 and pe.size(0) == data[nt].num_nodes
        assert torch.isfinite(pe).all()
    return tree


def assert_same_hierarchy(out: HeteroData, expected: HeteroData) -> None:
    """The same edge types, nesting and positions, exactly."""
    assert out.edge_types == expected.edge_types
    for et in out.edge_types:
        assert torch.equal(out[et].edge_index, expected[et].edge_index)
    for nt in out.node_types:
        if 'pe' in out[nt]:
            assert torch.equal(out[nt].pe, expected[nt].pe)


def pe_channels(data: HeteroData) -> Dict[str, int]:
    return {nt: data[nt].pe.size(-1) for nt in data.node_types
            if 'pe' in data[nt]}


def check_batching(examples: Sequence[HeteroData], leaf_type: str,
                   in_channels: int) -> None:
    """PyG's DataLoader batches the hierarchies into one forest with one
    root per example, and HSAConv on the batch equals HSAConv on each
    example alone."""
    batch = next(iter(DataLoader(list(examples), batch_size=len(examples))))
    tree = Tree.from_hetero(batch)
    assert tree.num_roots == len(examples)
    sizes = [ex[leaf_type].num_nodes for ex in examples]
    assert torch.equal(tree.batch, torch.repeat_interleave(
        torch.arange(len(examples)), torch.tensor(sizes)))

    conv = HSAConv(in_channels, 4, heads=2,
                   pos_channels=pe_channels(examples[0])).double().eval()

    def run(data: HeteroData) -> torch.Tensor:
        x = {leaf_type: data[leaf_type].x.double()}
        pe = {nt: pe.double() for nt, pe in data.pe_dict.items()}
        return conv(x, Tree.from_hetero(data), pe=pe)[leaf_type]

    alone: List[torch.Tensor] = [run(ex) for ex in examples]
    together = run(batch)
    assert torch.isfinite(together).all()
    assert torch.allclose(together, torch.cat(alone), atol=1e-10)
    check_in_memory_dataset(examples)


class _Collated(InMemoryDataset):
    def __init__(self, examples: Sequence[HeteroData]):
        super().__init__()
        self.data, self.slices = self.collate(list(examples))


def check_in_memory_dataset(examples: Sequence[HeteroData]) -> None:
    """As a ``pre_transform``: an InMemoryDataset collates the outputs and
    gives every example back unchanged."""
    dataset = _Collated(examples)
    assert len(dataset) == len(examples)
    for example, restored in zip(examples, dataset):
        assert restored.node_types == example.node_types
        for nt in example.node_types:
            assert restored[nt].num_nodes == example[nt].num_nodes
        for et in example.edge_types:
            assert torch.equal(restored[et].edge_index,
                               example[et].edge_index)
        for nt, pe in example.pe_dict.items():
            assert torch.equal(restored[nt].pe, pe)
