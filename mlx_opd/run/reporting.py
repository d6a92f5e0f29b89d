"""Metrics where people already look: TensorBoard or Weights & Biases (`run.report_to`),
as mlx-lm's `--report-to`, each through the library's own writer.

- tensorboard: TensorBoard's own event-file writer (the `tensorboard` package, an optional
  extra: `pip install "mlx-opd[report]"`), events in RUN_DIR/tensorboard/, scalars under
  the metric's own name (`loss/objective`, `val/plain_acc`, ...).
- wandb: `wandb.init(dir=RUN_DIR)` with the run's whole config; offline unless WANDB_MODE
  says otherwise (no login needed). The console says where the offline run is and how to
  upload it (`wandb sync RUN_DIR/wandb/offline-run-*`). Tested with the real package
  offline, read back with its own reader (tests/test_reporting.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class Reporter:
    """write(step, record) for every metric record; close() at the end."""

    def __init__(self, cfg, run_dir: Path):
        self.kind, self._tb, self._wandb = cfg.run.report_to, None, None
        if self.kind == "tensorboard":
            try:
                from tensorboard.summary.writer.event_file_writer import EventFileWriter
            except ImportError:
                raise RuntimeError("run.report_to=tensorboard needs the tensorboard package: "
                                   'pip install "mlx-opd[report]" (or pip install tensorboard)'
                                   ) from None
            self._tb = EventFileWriter(str(Path(run_dir) / "tensorboard"))
        elif self.kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise RuntimeError("run.report_to=wandb needs the wandb package: "
                                   "pip install wandb") from None
            from mlx_opd.run.config import to_dict

            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(project="mlx-opd", dir=str(run_dir),
                                     name=Path(run_dir).name,
                                     config={**to_dict(cfg), "run_dir": str(run_dir)})
            print(self.where(), flush=True)

    def write(self, step: int, record: dict) -> None:
        scalars = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary

            summary = Summary(value=[Summary.Value(tag=k, simple_value=v)
                                     for k, v in scalars.items()])
            self._tb.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=int(step))

    def where(self) -> str:
        """Where the metrics go, and for an offline W&B run how to upload it."""
        if self._wandb is None:
            return ""
        run_dir = Path(self._wandb.dir).parent  # .../wandb/<run>/files -> .../wandb/<run>
        if self._wandb.settings.mode == "offline" or "offline-run" in str(run_dir):
            return f"wandb: offline run in {run_dir}; upload it with: wandb sync {run_dir}"
        return f"wandb: {self._wandb.url}"

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            print(self.where(), flush=True)
            self._wandb.finish()
