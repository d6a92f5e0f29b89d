"""Run the verl fork's OWN validators on our launch script (not part of `make test`).

    python tests/engines/check_real_fork.py GIT_DIR EXPORT_DIR

GIT_DIR: a git directory of VisionOPD/Vision-OPD. EXPORT_DIR: an `mlx-opd export-data
--format verl` folder. Needs the fork's import-time dependencies (ray, tensordict,
codetiming) importable; torch on CPU is enough. The script's argv (python3 intercepted)
is composed on the fork's real config tree, then handed to the fork's validate_config
and omega_conf_to_dataclass(actor), as main_ppo.py:295-316 does; the last two cases must
fail (an invalid loss_agg_mode; the crop teacher without its image column).
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CASES = ([], ["data.train_batch_size=96"],
         ["actor_rollout_ref.actor.loss_agg_mode=token_mean"],
         ["actor_rollout_ref.actor.self_distillation.teacher_image_key=null"])


def main() -> int:
    git_dir, export = Path(sys.argv[1]), Path(sys.argv[2])
    tmp = Path(tempfile.mkdtemp())
    tar = subprocess.run(["git", "-C", str(git_dir), "archive", "HEAD", "verl"], check=True,
                         capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(tmp, filter="data")
    sys.path.insert(0, str(tmp))
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    from tests.test_engines import run_script

    results = []
    for extra in CASES:
        argv = run_script(export / "run_vision_opd.sh", extra)
        with initialize_config_dir(str(tmp / "verl/trainer/config"), version_base=None):
            cfg = compose(config_name=argv[3], overrides=argv[4:])
        OmegaConf.resolve(cfg)
        try:
            validate_config(cfg, use_reference_policy=True, use_critic=False)
            omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
            results.append(True)
            print("passes the fork's checks:", extra or "(as written)")
        except Exception as e:  # the fork raises ValueError inside hydra's instantiate
            results.append(False)
            print("fails the fork's checks:", extra, "->", str(e).splitlines()[-1][:160])
    return 0 if results == [True, True, False, False] else 1


if __name__ == "__main__":
    sys.exit(main())
