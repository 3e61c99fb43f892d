"""An offline point-cloud classification dataset of geometric primitives."""
import os.path as osp
from typing import Callable, List, Optional

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from pyg_hsa.utils.checks import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_path,
)
from pyg_hsa.utils.io import atomic_save, load_generated

SPLITS = ('train', 'test')
DEFAULT_NUM_PER_CLASS = {'train': 80, 'test': 20}


class ShapePrimitives(InMemoryDataset):
    r"""Point clouds sampled from the surfaces of eight kinds of geometric
    primitives, generated offline with :obj:`trimesh` (like
    :class:`~torch_geometric.datasets.ModelNet` after
    :class:`~torch_geometric.transforms.SamplePoints`, but nothing to
    download).

    Every example is one primitive with random proportions, a random
    overall scale :math:`\sigma \sim \mathcal{U}(0.5, 2)`, a rotation drawn
    uniformly from :math:`SO(3)`, :obj:`num_points` points sampled
    uniformly (by area) on its surface, and isotropic Gaussian noise of
    standard deviation :math:`0.01\,\sigma` on every coordinate (the
    unscaled shapes are about one unit across). The classes and their
    random proportions (:math:`\mathcal{U}(a, b)` drawn per example):

    .. list-table::
        :widths: 5 15 80
        :header-rows: 1

        * - :obj:`y`
          - Class
          - Shape
        * - 0
          - :obj:`box`
          - cuboid, three edges :math:`\mathcal{U}(0.4, 1)`
        * - 1
          - :obj:`ellipsoid`
          - sphere of radius 0.5 stretched by :math:`\mathcal{U}(0.8,
            1.25)` along each axis
        * - 2
          - :obj:`cylinder`
          - radius :math:`\mathcal{U}(0.2, 0.5)`, height
            :math:`\mathcal{U}(0.5, 1.5)`, closed
        * - 3
          - :obj:`cone`
          - base radius :math:`\mathcal{U}(0.25, 0.6)`, height
            :math:`\mathcal{U}(0.5, 1.2)`, closed
        * - 4
          - :obj:`capsule`
          - radius :math:`\mathcal{U}(0.15, 0.35)`, straight part
            :math:`\mathcal{U}(0.4, 1)`
        * - 5
          - :obj:`torus`
          - radii :math:`\mathcal{U}(0.35, 0.5)` and
            :math:`\mathcal{U}(0.08, 0.2)`
        * - 6
          - :obj:`tube`
          - thick-walled tube (annulus): outer radius
            :math:`\mathcal{U}(0.35, 0.6)`, inner radius
            :math:`\mathcal{U}(0.5, 0.8)` times the outer, height
            :math:`\mathcal{U}(0.2, 0.8)`
        * - 7
          - :obj:`pyramid`
          - square pyramid: base half-diagonal
            :math:`\mathcal{U}(0.35, 0.6)`, height
            :math:`\mathcal{U}(0.4, 1)`

    Examples are ordered by class, :obj:`num_per_class` of each. The
    :math:`j`-th example of class :math:`c` in a split is generated from
    its own random stream, seeded by :obj:`(seed, split, c, j)` only, so a
    dataset is identical on every build and machine (for given
    :obj:`numpy` and :obj:`trimesh` versions), does not depend on, or
    change, any global random state, and a larger :obj:`num_per_class`
    adds examples to each class without changing the first ones. Each
    example is a :class:`~torch_geometric.data.Data` with :obj:`pos`
    ``[num_points, 3]`` (:obj:`torch.float`) and :obj:`y` ``[1]``
    (:obj:`torch.long`).

    The processed file is written atomically, in a folder named after the
    split, :obj:`num_per_class`, :obj:`num_points` and :obj:`seed` under
    :obj:`root/processed`, so datasets of different sizes live side by
    side and an interrupted build leaves nothing half-written.

    Args:
        root (str or os.PathLike): Root directory where the dataset should
            be saved.
        split (str, optional): :obj:`"train"` or :obj:`"test"`; the two
            splits are drawn independently. (default: :obj:`"train"`)
        num_per_class (int, optional): Number of examples of each class.
            If :obj:`None`, 80 for :obj:`"train"` and 20 for
            :obj:`"test"`. (default: :obj:`None`)
        num_points (int, optional): Number of points per cloud.
            (default: :obj:`1024`)
        seed (int, optional): Seed of the generator (a non-negative
            integer). (default: :obj:`0`)
        transform (callable, optional): A function/transform that takes in
            a :obj:`torch_geometric.data.Data` object and returns a
            transformed version. The data object will be transformed before
            every access. (default: :obj:`None`)
        pre_transform (callable, optional): A function/transform that takes
            in a :obj:`torch_geometric.data.Data` object and returns a
            transformed version. The data object will be transformed before
            being saved to disk. (default: :obj:`None`)
        pre_filter (callable, optional): A function that takes in a
            :obj:`torch_geometric.data.Data` object and returns a boolean
            value, indicating whether the data object should be included in
            the final dataset. (default: :obj:`None`)
        force_reload (bool, optional): Whether to re-process the dataset.
            (default: :obj:`False`)

    **STATS:**

    .. list-table::
        :widths: 20 10 10 10
        :header-rows: 1

        * - #graphs
          - #nodes
          - #features
          - #classes
        * - :obj:`8 * num_per_class`
          - :obj:`num_points`
          - 0
          - 8
    """
    classes: List[str] = [
        'box', 'ellipsoid', 'cylinder', 'cone', 'capsule', 'torus', 'tube',
        'pyramid'
    ]
    #: Standard deviation of the noise, relative to the overall scale.
    noise: float = 0.01

    def __init__(
        self,
        root: str,
        split: str = 'train',
        num_per_class: Optional[int] = None,
        num_points: int = 1024,
        seed: int = 0,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
    ) -> None:
        root = check_path(root, 'root')
        check_choice(split, 'split', SPLITS)
        if num_per_class is None:
            num_per_class = DEFAULT_NUM_PER_CLASS[split]
        for name, value in (('transform', transform),
                            ('pre_transform', pre_transform),
                            ('pre_filter', pre_filter)):
            check_callable(value, name)
        self.split = str(split)
        self.num_per_class = check_int(num_per_class, 'num_per_class',
                                       minimum=1)
        self.num_points = check_int(num_points, 'num_points', minimum=1)
        self.seed = check_int(seed, 'seed', minimum=0)
        force_reload = check_bool(force_reload, 'force_reload')
        super().__init__(root, transform, pre_transform, pre_filter,
                         force_reload=force_reload)
        load_generated(self, self.processed_dir, list_of_examples=True)

    @property
    def raw_file_names(self) -> List[str]:
        return []  # generated, nothing to download

    @property
    def processed_dir(self) -> str:
        name = (f'{self.split}_n{self.num_per_class}_p{self.num_points}'
                f'_s{self.seed}')
        return osp.join(self.root, 'processed', name)

    @property
    def processed_file_names(self) -> List[str]:
        return ['data.pt']

    def process(self) -> None:
        data_list = [
            self.generate(self.split, i)
            for i in range(len(self.classes) * self.num_per_class)
        ]
        if self.pre_filter is not None:
            data_list = [d for d in data_list if self.pre_filter(d)]
        if self.pre_transform is not None:
            data_list = [self.pre_transform(d) for d in data_list]
        if not data_list:
            raise ValueError("'pre_filter' rejected every example")
        data, slices = self.collate(data_list)
        atomic_save((data.to_dict(), slices, data.__class__),
                    self.processed_paths[0])

    def generate(self, split: str, index: int) -> Data:
        r"""Example :obj:`index` of :obj:`split` (class :obj:`index //
        num_per_class`), from its own random stream (no global random
        state is read or changed)."""
        import trimesh  # optional dependency (the `mesh` extra)

        label, rank = divmod(index, self.num_per_class)
        # Seeded by the position within the class rather than the index,
        # so that a dataset with more examples per class extends a
        # smaller one instead of reshuffling it.
        rng = np.random.default_rng(
            [self.seed, SPLITS.index(split), label, rank])
        mesh = _primitive(trimesh, self.classes[label], rng)
        points, _ = trimesh.sample.sample_surface(mesh, self.num_points,
                                                  seed=rng)
        scale = rng.uniform(0.5, 2.0)
        quaternion = rng.standard_normal(4)  # uniform on SO(3)
        rotation = trimesh.transformations.quaternion_matrix(
            quaternion / np.linalg.norm(quaternion))[:3, :3]
        points = scale * (points @ rotation.T + self.noise *
                          rng.standard_normal(points.shape))
        return Data(pos=torch.from_numpy(points).float(),
                    y=torch.tensor([label]))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({len(self)}, '
                f'split={self.split!r}, num_points={self.num_points})')


def _primitive(trimesh, name: str, rng: np.random.Generator):
    """The mesh of one primitive of class :obj:`name`, centred near the
    origin, with random proportions."""
    creation = trimesh.creation
    if name == 'box':
        return creation.box(extents=rng.uniform(0.4, 1.0, size=3))
    if name == 'ellipsoid':
        mesh = creation.icosphere(subdivisions=3, radius=0.5)
        mesh.apply_scale(rng.uniform(0.8, 1.25, size=3))
        return mesh
    if name == 'cylinder':
        return creation.cylinder(radius=rng.uniform(0.2, 0.5),
                                 height=rng.uniform(0.5, 1.5), sections=48)
    if name == 'cone':
        return creation.cone(radius=rng.uniform(0.25, 0.6),
                             height=rng.uniform(0.5, 1.2), sections=48)
    if name == 'capsule':
        return creation.capsule(height=rng.uniform(0.4, 1.0),
                                radius=rng.uniform(0.15, 0.35))
    if name == 'torus':
        return creation.torus(major_radius=rng.uniform(0.35, 0.5),
                              minor_radius=rng.uniform(0.08, 0.2))
    if name == 'tube':
        r_max = rng.uniform(0.35, 0.6)
        return creation.annulus(r_min=r_max * rng.uniform(0.5, 0.8),
                                r_max=r_max, height=rng.uniform(0.2, 0.8),
                                sections=48)
    if name == 'pyramid':
        return creation.cone(radius=rng.uniform(0.35, 0.6),
                             height=rng.uniform(0.4, 1.0), sections=4)
    raise ValueError(f"Unknown primitive {name!r}")
