"""Dataset transforms that turn molecules, point clouds, meshes, graphs and
sequences into multi-scale hierarchies."""
