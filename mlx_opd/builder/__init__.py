"""The data builder, `mlx-opd build-data`: Vision-OPD training data from a folder of
photos, one module per stage (pipeline.py lists them; docs/build-data.md). Named builder,
not build, because build tools and editors treat build/ as output. It may import run,
data, models, method (the views, rollouts, answers) and evaluation (the page helpers)."""
