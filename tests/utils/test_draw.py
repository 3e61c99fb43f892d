import matplotlib
import numpy as np
import pytest
import torch
from torch_geometric.data import Data, HeteroData

from pyg_hsa.testing import random_forest
from pyg_hsa.transforms.sequence_to_hierarchy import SequenceToHierarchy
from pyg_hsa.utils.draw import _tree_layout, draw_hierarchy

matplotlib.use('Agg')


@pytest.mark.parametrize('seed', range(30))
def test_layout_keeps_every_subtree_contiguous(seed):
    parent, num_leaves = random_forest(np.random.default_rng(seed),
                                       num_roots=1 + seed % 3)
    x = _tree_layout(parent, num_leaves)
    assert sorted(x[:num_leaves]) == list(range(num_leaves))
    # Leaves under every internal node occupy a contiguous run of x, and
    # the node sits at their mean.
    under = {node: [] for node in range(num_leaves, parent.numel())}
    for leaf in range(num_leaves):
        node = int(parent[leaf])
        while node >= 0:
            under[node].append(x[leaf])
            node = int(parent[node])
    for node, xs in under.items():
        assert max(xs) - min(xs) + 1 == len(xs)
        assert x[node] == pytest.approx(np.mean(xs))


def sequence_example():
    data = Data(x=torch.randn(12, 2), pos=torch.randn(12, 3),
                sentence=torch.arange(12) // 5,
                edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]))
    return SequenceToHierarchy((2, ), segments='sentence')(data)


def test_figure_shows_every_type_and_the_space_panel():
    fig = draw_hierarchy(sequence_example(), color_by='sentence',
                         title='a sequence')
    tree_ax, space_ax = fig.axes
    labels = [t.get_text() for t in tree_ax.get_legend().get_texts()]
    assert labels == ['token (12)', 'window0 (7)', 'sentence (3)',
                      'sequence (1)']
    assert [t.get_text() for t in tree_ax.get_yticklabels()] == [
        'token', 'window0', 'sentence', 'sequence']
    assert space_ax.get_title() == "leaves coloured by 'sentence' (3 groups)"
    assert fig._suptitle.get_text() == 'a sequence'
    matplotlib.pyplot.close(fig)


def test_figure_without_positions_has_one_panel():
    data = sequence_example()
    del data['token'].pos
    fig = draw_hierarchy(data)
    assert len(fig.axes) == 1
    matplotlib.pyplot.close(fig)


def test_bad_arguments():
    with pytest.raises(TypeError, match="'data' must be a HeteroData"):
        draw_hierarchy(Data(x=torch.randn(3, 2)))
    with pytest.raises(ValueError, match="'color_by' must be an internal "
                       "node type"):
        draw_hierarchy(sequence_example(), color_by='token')
    with pytest.raises(ValueError):
        draw_hierarchy(HeteroData())


@pytest.mark.parametrize('with_pos', [True, False])
def test_color_by_is_checked_with_or_without_positions(with_pos):
    data = sequence_example()
    if not with_pos:
        del data['token'].pos
    figures = matplotlib.pyplot.get_fignums()
    message = (r"'color_by' must be an internal node type, one of "
               r"\['window0', 'sentence', 'sequence'\] \(got 'nope'\)")
    with pytest.raises(ValueError, match=message):
        draw_hierarchy(data, color_by='nope')
    with pytest.raises(ValueError, match="'color_by' must be an internal"):
        draw_hierarchy(data, color_by=3)
    assert matplotlib.pyplot.get_fignums() == figures  # no figure leaked
    fig = draw_hierarchy(data, color_by='sequence')
    assert len(fig.axes) == (2 if with_pos else 1)
    if with_pos:
        assert fig.axes[1].get_title() == \
            "leaves coloured by 'sequence' (1 groups)"
    matplotlib.pyplot.close(fig)
