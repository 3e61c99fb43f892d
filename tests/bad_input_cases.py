"""Bad inputs and what pyg_hsa says about them: the cases that
``tests/test_bad_inputs.py`` runs and ``tests/bad_inputs_page.py`` lists
in the table of ``docs/bad_inputs.md``.

Every entry of :obj:`CASES` is a :class:`Case`: a short description of a bad
input, a callable without arguments that feeds it to the library, the
words its error message must contain (the argument, node type and index it
should name), and the exception it must raise (:class:`ValueError` unless
said otherwise). A case that lists no words must name something in quotes.

To add a case, append it here with the :func:`case` decorator::

    @case('dataset root that is a file', "'root'")
    def _():
        MyDataset(root=__file__)

or directly: ``CASES.append(Case('description', trigger, ("'root'", )))``;
then regenerate the page with ``python tests/bad_inputs_page.py``.
"""
import contextlib
import math
import os
import sys
import tempfile
from typing import Callable, List, NamedTuple, Tuple

import torch
from torch_geometric.data import Data, HeteroData


class Case(NamedTuple):
    #: What is wrong with the input, in a few words.
    input: str
    #: Feeds the bad input to the library; must raise.
    trigger: Callable[[], object]
    #: Words the error message must contain.
    names: Tuple[str, ...] = ()
    #: The exception it must raise: a TypeError for a wrong type, a
    #: ValueError for a wrong value, FileNotFoundError / FileExistsError
    #: for missing or half-written files.
    error: type = ValueError


CASES: List[Case] = []


def case(description: str, *names: str, error: type = ValueError):
    """Registers the decorated function as a :class:`Case`."""
    def register(trigger: Callable[[], object]):
        CASES.append(Case(description, trigger, names, error))
        return trigger

    return register


# Inputs ####################################################################

def molecule(num_atoms: int = 3, groups=(0, 0, 1)) -> HeteroData:
    """atoms -> fragments -> molecule, tokens directly in the molecule."""
    data = HeteroData()
    data['atom'].x = torch.randn(num_atoms, 4)
    data['token'].x = torch.randn(2, 4)
    data['fragment'].num_nodes = max(groups) + 1
    data['fragment'].pe = torch.randn(max(groups) + 1, 2)
    data['molecule'].num_nodes = 1
    data['atom', 'in', 'fragment'].edge_index = torch.tensor(
        [list(range(num_atoms)), list(groups)])
    data['fragment', 'in', 'molecule'].edge_index = torch.tensor(
        [list(range(max(groups) + 1)), [0] * (max(groups) + 1)])
    data['token', 'in', 'molecule'].edge_index = torch.tensor([[0, 1],
                                                               [0, 0]])
    return data


def big_molecule() -> HeteroData:
    return molecule(20, [i % 2 for i in range(20)])


def qkv(num_leaves: int = 3, heads: int = 2, channels: int = 4):
    return (torch.randn(num_leaves, heads, channels) for _ in range(3))


PARENT = torch.tensor([3, 3, 3, -1])  # three leaves under one root


def conv(**kwargs):
    from pyg_hsa.nn import HSAConv
    return HSAConv({'atom': 4, 'token': 4}, 2, heads=2, **kwargs)


def tree_of(data):
    from pyg_hsa import Tree
    return Tree.from_hetero(data)


def tetrahedron(**changes) -> Data:
    data = Data(pos=torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0],
                                  [0, 0, 1]]),
                face=torch.tensor([[0, 0, 0, 1], [1, 1, 2, 2],
                                   [2, 3, 3, 3]]))
    for key, value in changes.items():
        data[key] = value
    return data


# Trees from parent vectors #################################################

@case('parent vector with a cycle (2 -> 3 -> 2)', 'cycle',
      'is its own ancestor')
def _():
    from pyg_hsa import Tree
    Tree.from_parent(torch.tensor([2, 2, 3, 2]))


@case('node that is its own parent', 'Node 2', 'own parent')
def _():
    from pyg_hsa import Tree
    Tree.from_parent(torch.tensor([2, 2, 2, -1]))


@case('parent index past the last node', 'parent', 'node 2', '7')
def _():
    from pyg_hsa import Tree
    Tree.from_parent(torch.tensor([3, 3, 7, -1]))


@case('negative parent index other than -1', 'parent', 'node 1', '-3')
def _():
    from pyg_hsa import Tree
    Tree.from_parent(torch.tensor([3, -3, 3, -1]))


@case('leaf (one of the first num_leaves nodes) with a child',
      'leaf node 1', 'parent of node 0')
def _():
    from pyg_hsa import Tree
    Tree.from_parent(torch.tensor([1, 3, 3, -1]), num_leaves=3)


@case('group without children', 'node 3', 'no children')
def _():
    from pyg_hsa import Tree
    Tree.from_parent(torch.tensor([2, 2, -1, -1]), num_leaves=2)


@case('floating-point parent vector', "'parent'", 'integer', error=TypeError)
def _():
    from pyg_hsa import Tree
    Tree.from_parent(torch.tensor([3.0, 3.0, 3.0, -1.0]))


@case('parent vector as a Python list', "'parent'", 'LongTensor',
      error=TypeError)
def _():
    from pyg_hsa import Tree
    Tree.from_parent([3, 3, 3, -1])


@case('two-dimensional parent vector', "'parent'", 'one-dimensional')
def _():
    from pyg_hsa import Tree
    Tree.from_parent(PARENT.view(2, 2))


@case('empty parent vector', 'empty')
def _():
    from pyg_hsa import Tree
    Tree.from_parent(torch.tensor([], dtype=torch.long))


@case('fewer parent entries than leaves', "'parent'", '3 leaves')
def _():
    from pyg_hsa import Tree
    Tree.from_parent(torch.tensor([1, -1]), num_leaves=3)


# Trees from HeteroData #####################################################

@case('node with two parents in HeteroData', "Node 1 of type 'atom'",
      "2 outgoing 'in' edges")
def _():
    data = molecule()
    data['atom', 'in', 'molecule'].edge_index = torch.tensor([[1], [0]])
    tree_of(data)


@case('nesting edge to a node type the data does not have', "'ring'",
      'destination')
def _():
    data = molecule()
    data['molecule', 'in', 'ring'].edge_index = torch.tensor([[0], [0]])
    tree_of(data)


@case('nesting edge to a node index past the end of its type',
      "node 5 of type 'fragment'", 'only 2 nodes')
def _():
    data = molecule()
    data['atom', 'in', 'fragment'].edge_index = torch.tensor([[0, 1, 2],
                                                              [0, 0, 5]])
    tree_of(data)


@case('negative index in a nesting edge', "node -1 of type 'atom'")
def _():
    data = molecule()
    data['atom', 'in', 'fragment'].edge_index = torch.tensor([[0, -1, 2],
                                                              [0, 0, 1]])
    tree_of(data)


@case('cycle through two node types', 'cycle', "of type '")
def _():
    data = molecule()
    data['fragment', 'in', 'molecule'].edge_index = torch.tensor([[0, 1],
                                                                  [0, 1]])
    data['molecule'].num_nodes = 2
    data['token', 'in', 'molecule'].edge_index = torch.tensor([[0, 1],
                                                               [0, 1]])
    data['molecule', 'in', 'fragment'].edge_index = torch.tensor([[0, 1],
                                                                  [0, 1]])
    tree_of(data)


@case('group (fragment) without children in HeteroData',
      "node 2 of type 'fragment'", 'no children')
def _():
    data = molecule()
    data['fragment'].num_nodes = 3
    del data['fragment'].pe
    tree_of(data)


@case('floating-point nesting edge_index', 'edge_index', "'atom'",
      'integer', error=TypeError)
def _():
    data = molecule()
    data['atom', 'in', 'fragment'].edge_index = torch.tensor(
        [[0.0, 1.0, 2.0], [0.0, 0.0, 1.0]])
    tree_of(data)


@case('nesting edge_index of shape [3, E]', 'edge_index', "'fragment'",
      '[2, E]')
def _():
    data = molecule()
    data['atom', 'in', 'fragment'].edge_index = torch.zeros(
        3, 3, dtype=torch.long)
    tree_of(data)


@case('empty HeteroData', 'empty')
def _():
    tree_of(HeteroData())


@case('empty batch (every node type has 0 nodes)', 'empty')
def _():
    data = HeteroData()
    data['atom'].x = torch.zeros(0, 4)
    data['molecule'].num_nodes = 0
    data['atom', 'in', 'molecule'].edge_index = torch.zeros(
        2, 0, dtype=torch.long)
    tree_of(data)


@case('hierarchy given as a parent tensor to Tree.from_hetero', "'data'",
      'HeteroData', error=TypeError)
def _():
    tree_of(PARENT)


# hsa_attention / hsa_dense #################################################

@case('q with more rows than the tree has leaves', "'q'", '4 rows',
      '3 leaves')
def _():
    from pyg_hsa import hsa_attention
    q, k, v = qkv(4)
    hsa_attention(q, k, v, PARENT)


@case('k of another shape than q', "'q' and 'k'", 'same shape')
def _():
    from pyg_hsa import hsa_attention
    q, k, v = qkv()
    hsa_attention(q, k[..., :2], v, PARENT)


@case('v with another number of heads than q', "'v'", 'heads')
def _():
    from pyg_hsa import hsa_attention
    q, k, v = qkv()
    hsa_attention(q, k, v[:, :1], PARENT)


@case('q of shape [N, C] (no head dimension)', "'q'", '[N, H, C]')
def _():
    from pyg_hsa import hsa_attention
    q, k, v = qkv()
    hsa_attention(q[:, 0], k[:, 0], v[:, 0], PARENT)


@case('q with zero channels', "'q'", 'at least one head and one channel')
def _():
    from pyg_hsa import hsa_attention
    q, k, v = qkv(channels=0)
    hsa_attention(q, k, v, PARENT)


@case('pe with a row per leaf instead of per tree node', "'pe'",
      'M = 4')
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), PARENT, pe=torch.randn(3, 2))


@case('pe with another number of heads than q', "'pe'", 'heads')
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), PARENT, pe=torch.randn(4, 3, 2))


@case('integer q', "'q'", 'floating-point', error=TypeError)
def _():
    from pyg_hsa import hsa_attention
    q, k, v = qkv()
    hsa_attention(q.long(), k, v, PARENT)


@case('integer pe', "'pe'", 'floating-point', error=TypeError)
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), PARENT, pe=torch.zeros(4, 2, dtype=torch.long))


@case('k on another device than the tree', "'k'", 'meta', 'cpu')
def _():
    from pyg_hsa import hsa_attention
    q, k, v = qkv()
    hsa_attention(q, k.to('meta'), v, PARENT)


@case('tree given as a Python list', "'tree'", error=TypeError)
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), [3, 3, 3, -1])


@case('empty batch (no leaves, empty parent vector)', 'empty')
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(0), torch.tensor([], dtype=torch.long))


@case('dropout of 1.5', "'dropout'", '[0, 1)')
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), PARENT, dropout=1.5)


@case("resolution='row'", "'resolution'", "'block' or 'query'")
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), PARENT, resolution='row')


@case("causal=True with resolution='block'", 'causal=True',
      "resolution='query'", 'future')
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), PARENT, self_loops=True, causal=True)


@case("causal=True without self loops", 'causal=True', 'self_loops=True')
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), PARENT, resolution='query', causal=True)


@case("resolution='query' with attention dropout", "'dropout=0.1'",
      "'query' variant")
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), PARENT, resolution='query', dropout=0.1)


@case("resolution='query' asked for attention weights",
      "'return_attention_weights=True'", "'query' variant")
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), PARENT, resolution='query',
                  return_attention_weights=True)


@case("HSAConv built with resolution='query' and attention dropout",
      "'dropout=0.2'", "'query' variant")
def _():
    from pyg_hsa.nn import HSAConv
    HSAConv(4, 4, resolution='query', dropout=0.2)


@case("HSAEncoderLayer with resolution='query' and dropout, no "
      "attention_dropout", "'query' variant", 'attention_dropout=0.0')
def _():
    from pyg_hsa.nn import HSAEncoderLayer
    HSAEncoderLayer(8, heads=2, resolution='query', dropout=0.1)


@case("hsa_attention(..., pe=, pos=): the new name and its deprecated "
      "alias", "'pe'", "'pos'", error=TypeError)
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), PARENT, pe=torch.zeros(4, 2),
                  pos=torch.zeros(4, 2))


@case('KV cache: a token without a path', "'path'", 'root first')
def _():
    from pyg_hsa import HierarchicalKVCache
    HierarchicalKVCache().append(torch.randn(2, 4), torch.randn(2, 4), [])


@case('KV cache: attend() before append()', 'append()')
def _():
    from pyg_hsa import HierarchicalKVCache
    HierarchicalKVCache().attend(torch.randn(2, 4))


@case('KV cache: a float64 token after float32 tokens', "'k'",
      'torch.float32', error=TypeError)
def _():
    from pyg_hsa import HierarchicalKVCache
    cache, x = HierarchicalKVCache(), torch.randn(2, 4)
    cache.append(x, x, [0])
    cache.append(x.double(), x, [0])


@case('KV cache: a token on another device than the earlier ones', "'k'",
      'meta', 'cpu')
def _():
    from pyg_hsa import HierarchicalKVCache
    cache, x = HierarchicalKVCache(), torch.randn(2, 4)
    cache.append(x, x, [0])
    cache.append(x.to('meta'), x.to('meta'), [0])


@case('KV cache: position width changing between tokens', "'pe'",
      'earlier tokens')
def _():
    from pyg_hsa import HierarchicalKVCache
    cache, x = HierarchicalKVCache(), torch.randn(2, 4)
    cache.append(x, x, [0], pe=torch.randn(2, 3))
    cache.append(x, x, [0], pe=torch.randn(2, 5))


@case('KV cache: integer positions', "'pe'", 'floating-point',
      error=TypeError)
def _():
    from pyg_hsa import HierarchicalKVCache
    x = torch.randn(2, 4)
    HierarchicalKVCache().append(x, x, [0],
                                 pe=torch.zeros(2, 3, dtype=torch.long))


@case('window_path with a window of width 0', "'branching'", '>= 1')
def _():
    from pyg_hsa import window_path
    window_path(3, (0, ))


@case('window_path with a negative token index', "'t'", '>= 0')
def _():
    from pyg_hsa import window_path
    window_path(-1, (4, ))


@case('infinite scale', "'scale'", 'finite')
def _():
    from pyg_hsa import hsa_attention
    hsa_attention(*qkv(), PARENT, scale=math.inf)


@case('NaN in q, validate=True', "'q'", 'non-finite', 'row 1')
def _():
    from pyg_hsa import hsa_attention
    q, k, v = qkv()
    q[1, 0, 2] = math.nan
    hsa_attention(q, k, v, PARENT, validate=True)


@case('infinity in pe, validate=True', "'pe'", '(inf)', 'row 2')
def _():
    from pyg_hsa import hsa_attention
    pe = torch.randn(4, 2)
    pe[2, 1] = math.inf
    hsa_attention(*qkv(), PARENT, pe=pe, validate=True)


@case('NaN in k for hsa_dense, validate=True', "'k'", 'row 0')
def _():
    from pyg_hsa import hsa_dense
    q, k, _ = qkv()
    k[0, 1, 1] = math.nan
    hsa_dense(q, k, PARENT, validate=True)


# HSAConv ###################################################################

@case("NaN in the features of node type 'atom', validate=True",
      "'x' of node type 'atom'", 'row 17')
def _():
    data = big_molecule()
    data['atom'].x[17, 3] = math.nan
    conv()(data.x_dict, tree_of(data), validate=True)


@case("infinity in the positions of node type 'fragment', validate=True",
      "'pe' of node type 'fragment'", 'row 1')
def _():
    data = molecule()
    data['fragment'].pe[1, 0] = -math.inf
    conv(pos_channels={'fragment': 2})(data.x_dict, tree_of(data),
                                       pe=data.pe_dict, validate=True)


@case("NaN in plain tensor features, validate=True", "'x'", 'row 0')
def _():
    from pyg_hsa.nn import HSAConv
    x = torch.randn(3, 4)
    x[0, 0] = math.nan
    HSAConv(4, 2)(x, PARENT, validate=True)


@case('features of the wrong width for a node type', "'x['atom']'",
      'in_channels = 4')
def _():
    data = molecule()
    data['atom'].x = torch.randn(3, 5)
    conv()(data.x_dict, tree_of(data))


@case('float64 features for a float32 layer', "'x['atom']'", 'dtype',
      error=TypeError)
def _():
    data = molecule()
    data['atom'].x = data['atom'].x.double()
    conv()(data.x_dict, tree_of(data))


@case('integer (un-embedded) atom features', "'x['atom']'",
      'floating-point', error=TypeError)
def _():
    data = molecule()
    data['atom'].x = data['atom'].x.long()
    conv()(data.x_dict, tree_of(data))


@case('feature rows that do not match the node count of a type',
      "'x['token']'", "nodes of type 'token'")
def _():
    data = molecule()
    x = dict(data.x_dict, token=torch.randn(5, 4))
    conv()(x, tree_of(data))


@case('no features for one leaf type', "'x'", "['token']")
def _():
    data = molecule()
    conv()({'atom': data['atom'].x}, tree_of(data))


@case('leaf type missing from in_channels', "'token'", "'in_channels'")
def _():
    from pyg_hsa.nn import HSAConv
    data = molecule()
    HSAConv({'atom': 4}, 2)(data.x_dict, tree_of(data))


@case('leaf types of different widths with one integer in_channels',
      'different feature widths', 'in_channels')
def _():
    from pyg_hsa.nn import HSAConv
    data = molecule()
    data['token'].x = torch.randn(2, 3)
    HSAConv(-1, 2)(data.x_dict, tree_of(data))


@case('positions given to a layer built without pos_channels', "'pe'",
      'pos_channels')
def _():
    data = molecule()
    conv()(data.x_dict, tree_of(data), pe=data.pe_dict)


@case('positions with a wrong row count for a node type',
      "'pe['fragment']'", "nodes of type 'fragment'")
def _():
    data = molecule()
    conv(pos_channels={'fragment': 2})(
        data.x_dict, tree_of(data), pe={'fragment': torch.randn(5, 2)})


@case('positions for a node type the hierarchy does not have', "'pe'",
      "['ring']")
def _():
    data = molecule()
    conv(pos_channels=2)(data.x_dict, tree_of(data),
                         pe={'ring': torch.randn(1, 2)})


@case('features on another device than the tree', "'x['atom']'", 'meta')
def _():
    data = molecule()
    x = dict(data.x_dict, atom=data['atom'].x.to('meta'))
    conv()(x, tree_of(data))


@case('layer and features on another device than the tree', "'x'",
      'meta', 'the tree is on cpu')
def _():
    from pyg_hsa.nn import HSAConv
    HSAConv(4, 2).to('meta')(torch.randn(3, 4, device='meta'), PARENT)


@case('layer and features on another device than the tree (dictionary '
      'input)', "'x['atom']'", 'meta', 'the tree is on cpu')
def _():
    data = molecule()
    x = {nt: features.to('meta') for nt, features in data.x_dict.items()}
    conv().to('meta')(x, tree_of(data))


@case('features as a Python list (tree given as nesting edges)',
      "'x['atom']'", 'tensor', error=TypeError)
def _():
    data = molecule()
    conv()(dict(data.x_dict, atom=[[0.0] * 4] * 3), data.edge_index_dict)


@case('heads=0', "'heads'")
def _():
    from pyg_hsa.nn import HSAConv
    HSAConv(4, 2, heads=0)


# Transforms ################################################################

@case('invalid SMILES', "'data.smiles'", 'C1CC(')
def _():
    from pyg_hsa.transforms import MoleculeToHierarchy
    MoleculeToHierarchy()(Data(smiles='C1CC(', x=torch.zeros(
        4, 9, dtype=torch.long), edge_index=torch.zeros(2, 0,
                                                        dtype=torch.long)))


@case('empty SMILES', "'data.smiles'")
def _():
    from pyg_hsa.transforms import MoleculeToHierarchy
    MoleculeToHierarchy()(Data(smiles='', x=torch.zeros(0, 9,
                                                        dtype=torch.long)))


@case('molecule without atom features or SMILES', "'data.x'")
def _():
    from pyg_hsa.transforms import MoleculeToHierarchy
    MoleculeToHierarchy()(Data())


@case('mesh with no faces', "'face'", 'no faces')
def _():
    from pyg_hsa.transforms import MeshToHierarchy
    MeshToHierarchy()(tetrahedron(face=torch.zeros(3, 0, dtype=torch.long)))


@case("mesh without a 'face' attribute", "'face'")
def _():
    from pyg_hsa.transforms import MeshToHierarchy
    MeshToHierarchy()(Data(pos=torch.rand(4, 3)))


@case('faces indexing a vertex that does not exist', "'face'", '4 vertices')
def _():
    from pyg_hsa.transforms import MeshToHierarchy
    MeshToHierarchy()(tetrahedron(face=torch.tensor([[0, 1], [1, 2],
                                                     [2, 7]])))


@case('negative vertex index in faces', "'face'", '-1')
def _():
    from pyg_hsa.transforms import MeshToHierarchy
    MeshToHierarchy()(tetrahedron(face=torch.tensor([[0, 1], [1, 2],
                                                     [2, -1]])))


@case('NaN vertex position', "'pos'", 'NaN')
def _():
    from pyg_hsa.transforms import MeshToHierarchy
    data = tetrahedron()
    data.pos[2, 1] = math.nan
    MeshToHierarchy()(data)


@case('mesh without vertices', "'pos'", 'non-empty')
def _():
    from pyg_hsa.transforms import MeshToHierarchy
    MeshToHierarchy()(tetrahedron(pos=torch.zeros(0, 3),
                                  face=torch.zeros(3, 0, dtype=torch.long)))


@case('point cloud with 0 points', "'data.pos' has 0 points", 'at least 1')
def _():
    from pyg_hsa.transforms import PointCloudToHierarchy
    PointCloudToHierarchy()(Data(pos=torch.zeros(0, 3)))


@case('point cloud with a NaN coordinate', "'data.pos'", 'NaN')
def _():
    from pyg_hsa.transforms import PointCloudToHierarchy
    PointCloudToHierarchy()(Data(pos=torch.tensor([[0.0, 0, 0],
                                                   [math.nan, 0, 0]])))


@case('point cloud without positions', "'data.pos'", 'missing')
def _():
    from pyg_hsa.transforms import PointCloudToHierarchy
    PointCloudToHierarchy()(Data(x=torch.zeros(3, 3)))


@case('point cloud with integer positions', "'data.pos'", 'floating',
      error=TypeError)
def _():
    from pyg_hsa.transforms import PointCloudToHierarchy
    PointCloudToHierarchy()(Data(pos=torch.zeros(3, 3, dtype=torch.long)))


@case('graph with no nodes', 'GraphToHierarchy', 'no nodes')
def _():
    from pyg_hsa.transforms import GraphToHierarchy
    GraphToHierarchy()(Data(x=torch.zeros(0, 2),
                            edge_index=torch.zeros(2, 0, dtype=torch.long)))


@case('graph edge to a node that does not exist', "'edge_index'",
      '3 nodes')
def _():
    from pyg_hsa.transforms import GraphToHierarchy
    GraphToHierarchy()(Data(x=torch.zeros(3, 2),
                            edge_index=torch.tensor([[0], [5]])))


@case('sequence with no tokens', 'SequenceToHierarchy', 'no nodes')
def _():
    from pyg_hsa.transforms import SequenceToHierarchy
    SequenceToHierarchy()(Data(x=torch.zeros(0, 4)))


@case('segment ids of the wrong length', "'sentence'", '4 tokens')
def _():
    from pyg_hsa.transforms import SequenceToHierarchy
    SequenceToHierarchy((2, ), segments=('sentence', ))(
        Data(x=torch.zeros(4, 4), sentence=torch.tensor([0, 0, 1])))


@case('window branching of 1', "'branching'")
def _():
    from pyg_hsa.transforms import SequenceToHierarchy
    SequenceToHierarchy((1, ))


# Datasets and example scripts ###############################################
# (Missing or half-written files raise FileNotFoundError / FileExistsError,
# Python's own errors for them, with the path and what to do.)

@contextlib.contextmanager
def _temporary_root():
    """A fresh working folder, so messages show the relative 'datasets'."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            yield 'datasets'
        finally:
            os.chdir(here)


@case('OGB dataset that is not on disk (no downloads)', 'ogbg-molhiv',
      'cannot be downloaded', error=FileNotFoundError)
def _():
    from pyg_hsa.datasets.ogb import load_ogbg_dataset
    with _temporary_root() as root:
        load_ogbg_dataset('ogbg-molhiv', root)


@case('OGB dataset folder without RELEASE_v1.txt', 'RELEASE_v1.txt',
      'delete it', error=FileNotFoundError)
def _():
    from pyg_hsa.datasets.ogb import load_ogbg_dataset
    with _temporary_root() as root:
        os.makedirs(os.path.join(root, 'ogbg_molhiv'))
        load_ogbg_dataset('ogbg-molhiv', root)


@case('half-built ogbg-molfreesolv folder', 'delete the folder',
      error=FileExistsError)
def _():
    from pyg_hsa.datasets.ogb import build_ogbg_molfreesolv
    with _temporary_root() as root:
        os.makedirs(os.path.join(root, 'ogbg_molfreesolv', 'raw'))
        build_ogbg_molfreesolv(root)


@case('invalid SMILES in a scaffold split', "'smiles' entry 1")
def _():
    from pyg_hsa.datasets.ogb import scaffold_split
    scaffold_split(['CCO', 'C1CC'])


@case('example: --resume with a checkpoint of another model',
      '--resume', '--emb_dim')
def _():
    examples = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'examples')
    sys.path.insert(0, examples)
    import ogbg_mol
    import training
    from pyg_hsa.utils.io import atomic_save
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, 'run.ckpt')
        saved = vars(ogbg_mol.parse_args(['--emb_dim', '64']))
        atomic_save({'args': saved, 'state': {}, 'model': {},
                     'optimizer': {}, 'generator': None, 'torch_rng': None,
                     'best_model': None}, path)
        args = ogbg_mol.parse_args(['--checkpoint', path, '--resume'])
        training.resume(args, None, None, None, None,
                        ogbg_mol.CHECKED_ARGS)
