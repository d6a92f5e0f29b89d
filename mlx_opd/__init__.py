"""mlx-opd: Vision-OPD (on-policy self-distillation for VLMs) on Apple's MLX."""

from mlx_opd.run import blas as _blas

__version__ = "0.1.0"

# Must run before anything imports mlx.core (see blas.py); it is a cheap ctypes call.
_blas.preload()
