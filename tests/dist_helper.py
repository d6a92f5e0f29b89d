"""Run under `mlx.launch` by tests/test_distributed.py (one copy per rank).

    dist_helper.py mismatch            ranks hash different configs -> DistributedError
    dist_helper.py die RUN_DIR ARGS..  train; rank 1 dies at step 2
"""

import os
import sys

import mlx_opd  # noqa: F401
from mlx_opd.method import step as stepping
from mlx_opd.method import trainer
from mlx_opd.run import distributed
from mlx_opd.run.config import load_train_config

mode = sys.argv[1]
if mode == "mismatch":
    d = distributed.init(required=True)
    cfg = load_train_config(None, {"run.seed": d.rank})  # rank 1 differs
    try:
        distributed.check_same(d, distributed.config_hash(
            __import__("mlx_opd.run.config", fromlist=["to_dict"]).to_dict(cfg), "tiny"))
    except distributed.DistributedError as e:
        print(f"rank {d.rank}: {e}", flush=True)
        sys.exit(4)
    print(f"rank {d.rank}: no mismatch found", flush=True)
elif mode == "die":
    config, model, data, out = sys.argv[2:6]
    cfg = load_train_config(config, {"model.path": model, "data.path": data, "run.out": out,
                                     "run.save_every": 1, "optim.epochs": 4, "optim.max_steps": 6,
                                     "optim.prompts_per_step": 2, "run.step_timeout_s": 30})
    real_step = stepping.train_step

    def step(cfg, loaded, optimizer, teacher, samples, state, dist=None, *rest):
        if dist is not None and dist.rank == 1 and state.step == 2:
            os._exit(9)  # a rank dies mid-run
        return real_step(cfg, loaded, optimizer, teacher, samples, state, dist, *rest)

    stepping.train_step = step
    trainer.train(cfg)
