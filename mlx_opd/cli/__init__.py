"""The `mlx-opd` command line, one module per command group; each command parses, builds
a config and calls one library function. Heavy imports (mlx, mlx-vlm, transformers)
happen inside the commands so `--help` is instant. It may import everything."""

from mlx_opd.cli import data, evaluating, models, toy, training  # noqa: F401  (commands)
from mlx_opd.cli.common import main

__all__ = ["main"]
