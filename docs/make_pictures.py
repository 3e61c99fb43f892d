"""Draws one hierarchy per transform, on real data shipped inside installed
packages, into docs/images/ (the pictures in the README).

    python docs/make_pictures.py [--out docs/images]
"""
import argparse
import os
import re

import matplotlib
import torch
import trimesh
from pydoc_data.topics import topics
from torch_geometric.data import Data
from torch_geometric.datasets import KarateClub
from torch_geometric.utils import from_smiles

from pyg_hsa.transforms import (
    GraphToHierarchy,
    MeshToHierarchy,
    MoleculeToHierarchy,
    PointCloudToHierarchy,
    SequenceToHierarchy,
)
from pyg_hsa.utils import draw_hierarchy
from pyg_hsa.utils.io import package_file

matplotlib.use('Agg')

# Imatinib mesylate: fused and single rings, acyclic linkers, two components.
IMATINIB_MESYLATE = ('Cc1ccc(NC(=O)c2ccc(CN3CCN(C)CC3)cc2)cc1Nc1nccc'
                     '(-c2cccnc2)n1.CS(=O)(=O)O')


def pyvista_mesh(name: str) -> trimesh.Trimesh:
    """A mesh pyvista ships (read with trimesh: pyvista needs VTK)."""
    path = package_file('pyvista', 'examples', name)
    return trimesh.load(path, process=False)


def mesh_data(mesh: trimesh.Trimesh) -> Data:
    return Data(pos=torch.tensor(mesh.vertices, dtype=torch.float),
                face=torch.tensor(mesh.faces, dtype=torch.long).t())


def sentences_of(text: str) -> Data:
    """Whitespace tokens of a text and the sentence id of every token."""
    sentence, tokens = [], []
    for i, part in enumerate(re.split(r'(?<=[.!?])\s+', text.strip())):
        words = part.split()
        tokens += words
        sentence += [i] * len(words)
    return Data(num_nodes=len(tokens), sentence=torch.tensor(sentence))


def examples():
    molecule = MoleculeToHierarchy()(from_smiles(IMATINIB_MESYLATE))
    yield 'molecule', molecule, dict(title='MoleculeToHierarchy: imatinib '
                                     'mesylate (atoms, bonds as arcs)')

    airplane = pyvista_mesh('airplane.ply')
    points, _ = trimesh.sample.sample_surface(airplane, 4096, seed=0)
    cloud = PointCloudToHierarchy()(Data(pos=torch.tensor(
        points, dtype=torch.float)))
    yield 'point_cloud', cloud, dict(
        color_by='voxel2', title='PointCloudToHierarchy: 4096 points '
        'sampled on pyvista\'s airplane')

    ant = MeshToHierarchy()(mesh_data(pyvista_mesh('ant.ply')))
    yield 'mesh', ant, dict(color_by='patch0', title='MeshToHierarchy: '
                            'pyvista\'s ant (mesh edges as arcs)')

    graph = GraphToHierarchy()(KarateClub()[0])
    yield 'graph', graph, dict(title='GraphToHierarchy: Zachary\'s karate '
                               'club (edges as arcs)')

    sentences = re.split(r'(?<=[.!?])\s+', topics['assert'].strip())
    text = ' '.join(sentences[:3])
    sequence = SequenceToHierarchy((2, 4), segments=('sentence', ))(
        sentences_of(text))
    yield 'sequence', sequence, dict(title='SequenceToHierarchy: a '
                                     'paragraph of Python\'s docs')


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), 'images'))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, data, options in examples():
        figure = draw_hierarchy(data, **options)
        path = os.path.join(args.out, f'{name}.png')
        figure.savefig(path, dpi=90)
        matplotlib.pyplot.close(figure)
        print(f'wrote {path}')


if __name__ == '__main__':
    main()
