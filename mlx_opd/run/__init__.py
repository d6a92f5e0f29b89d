"""A run's infrastructure: typed configs (config), the run folder and its markers (run_dir,
files), checkpoints and resume rules (checkpoint, resume), metrics, loggers and curves
(metrics, reporting, plot), signals and errors, several processes (distributed) and the
BLAS preload (blas). The bottom layer: it imports nothing else of mlx_opd."""
