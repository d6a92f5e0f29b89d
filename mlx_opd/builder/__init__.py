"""`mlx-opd build-data`: Vision-OPD training data from a folder of photos, one module per
stage (pipeline.py lists them); docs/build-data.md."""
