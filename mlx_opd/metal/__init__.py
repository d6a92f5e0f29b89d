"""Fused divergence kernels (Metal, CUDA) and their dispatcher; see kernels.py."""
