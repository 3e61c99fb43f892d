"""Time of the point-cloud transform against the number of points.

    python benchmarks/bench_transforms.py              # 10k .. 1M points
    python benchmarks/bench_transforms.py --smoke      # seconds; for CI
    python benchmarks/bench_transforms.py --threads 1 --out times.json

Times ``PointCloudToHierarchy`` (default size and levels) on points drawn
uniformly from the surface of a unit sphere, without and with kNN edges
(``knn=16``, smaller sizes only), each the best of a few repeats after one
warm-up call. Prints a markdown table; writes nothing else unless ``--out``
(JSON) is given.
"""
import argparse
import json
import os
import platform
import sys
import time

SIZES = [10_000, 50_000, 200_000, 1_000_000]
KNN_SIZES = [10_000, 50_000]
SMOKE_SIZES = [500, 2_000]
SMOKE_KNN_SIZES = [500]


def sphere_cloud(num_points: int):
    """Points on the unit sphere (normalised Gaussian samples), with the
    normals as features."""
    import torch
    from torch_geometric.data import Data
    generator = torch.Generator().manual_seed(num_points)
    pos = torch.randn(num_points, 3, generator=generator)
    pos = pos / pos.norm(dim=1, keepdim=True)
    return Data(pos=pos, x=pos.clone(), y=torch.tensor([0]))


def measure(num_points: int, knn: int, repeats: int) -> dict:
    from pyg_hsa.transforms.point_cloud_to_hierarchy import \
        PointCloudToHierarchy
    transform = PointCloudToHierarchy(knn=knn or None)
    data = sphere_cloud(num_points)
    out = transform(data)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = transform(data)
        times.append(time.perf_counter() - start)
    levels = sum(nt.startswith('voxel') for nt in out.node_types)
    nodes = sum(out[nt].num_nodes for nt in out.node_types)
    return dict(points=num_points, knn=knn, levels=levels, nodes=nodes,
                seconds=min(times), repeats=repeats)


def format_row(row: dict) -> str:
    per_point = row['seconds'] / row['points'] * 1e6
    return (f"| {row['points']} | {row['knn'] or '-'} | {row['levels']} | "
            f"{row['nodes']} | {row['seconds']:.3f} | {per_point:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--smoke', action='store_true',
                        help='tiny sizes, for CI')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed calls per size (the best one counts)')
    parser.add_argument('--threads', type=int,
                        help="torch's intra-op threads (default: torch's)")
    parser.add_argument('--out', help='also write the rows here (JSON)')
    args = parser.parse_args()

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = SMOKE_SIZES if args.smoke else SIZES
    knn_sizes = SMOKE_KNN_SIZES if args.smoke else KNN_SIZES
    print(f'Machine: {platform.processor() or platform.machine()}, '
          f'{os.cpu_count()} cores, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads; points on a sphere, '
          f'float32, best of {args.repeats}.')
    print(f"Command: python benchmarks/bench_transforms.py "
          f"{' '.join(sys.argv[1:])}")
    print()
    print('| points | knn | levels | nodes | seconds | µs/point |')
    print('| --- | --- | --- | --- | --- | --- |', flush=True)
    rows = []
    for knn, group in ((0, sizes), (16, knn_sizes)):
        for num_points in group:
            rows.append(measure(num_points, knn, args.repeats))
            print(format_row(rows[-1]), flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(threads=torch.get_num_threads(), rows=rows), f,
                      indent=1)


if __name__ == '__main__':
    main()
