"""Dataset transforms that turn molecules, point clouds, meshes, graphs and
sequences into multi-scale hierarchies (``HeteroData`` in the package's
schema), for ``dataset.transform`` / ``pre_transform``."""
from pyg_hsa.transforms.brackets_to_hierarchy import BracketsToHierarchy
from pyg_hsa.transforms.graph_to_hierarchy import GraphToHierarchy
from pyg_hsa.transforms.mesh_to_hierarchy import MeshToHierarchy
from pyg_hsa.transforms.molecule_to_hierarchy import MoleculeToHierarchy
from pyg_hsa.transforms.point_cloud_to_hierarchy import PointCloudToHierarchy
from pyg_hsa.transforms.sequence_to_hierarchy import SequenceToHierarchy

__all__ = [
    'MoleculeToHierarchy',
    'PointCloudToHierarchy',
    'MeshToHierarchy',
    'GraphToHierarchy',
    'SequenceToHierarchy',
    'BracketsToHierarchy',
]
