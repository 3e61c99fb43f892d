r"""Builds the offline datasets into this folder (the examples do it on
first use; run this to build ahead, e.g. before going offline with a
cluster job).

    python datasets/build.py                      # ogbg-molfreesolv
    python datasets/build.py --root /data/ogb
"""
import argparse
import os.path as osp

from pyg_hsa.datasets.ogb import build_ogbg_molfreesolv, load_ogbg_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', default=osp.dirname(osp.abspath(__file__)))
    args = parser.parse_args(argv)
    folder = build_ogbg_molfreesolv(args.root)
    dataset = load_ogbg_dataset('ogbg-molfreesolv', args.root)
    sizes = {k: len(v) for k, v in dataset.get_idx_split().items()}
    print(f'{folder}: {len(dataset)} molecules, split {sizes}')


if __name__ == '__main__':
    main()
