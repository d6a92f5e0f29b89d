"""Record the authors' verl fork's composed `vopd` config as data (no files copied).

    python tests/engines/record_verl_fork.py GIT_DIR [--out tests/engines/verl_fork_vopd.json]

GIT_DIR is a git directory of VisionOPD/Vision-OPD (e.g. the snapshot `fetch` brings).
The fork's config tree (verl/trainer/config at HEAD) is extracted to a temporary folder
and composed with hydra-core exactly as `python3 -m verl.trainer.main_ppo --config-name
vopd` composes it (main_ppo.py:36: @hydra.main(config_path="config")), with no
overrides; the result is written unresolved (interpolations kept, `???` kept), with the
commit it was read at. tests/test_engines.py composes our launch scripts' overrides on top
of it with the same hydra-core (the fork pins hydra-core 1.3.2, omegaconf 2.3.0:
requirements.txt).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

CONFIG_DIR = "verl/trainer/config"
REPO = "VisionOPD/Vision-OPD"


def compose_vopd(git_dir: Path) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    commit = subprocess.run(["git", "-C", str(git_dir), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    date = subprocess.run(["git", "-C", str(git_dir), "log", "-1", "--format=%cI"], check=True,
                          capture_output=True, text=True).stdout.strip()
    tar_bytes = subprocess.run(["git", "-C", str(git_dir), "archive", "HEAD", CONFIG_DIR],
                               check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            tar.extractall(tmp, filter="data")
        with initialize_config_dir(str(Path(tmp) / CONFIG_DIR), version_base=None):
            cfg = compose(config_name="vopd")
    return {"repo": REPO, "commit": commit, "commit_date": date, "path": CONFIG_DIR,
            "config_name": "vopd", "composed_with": "hydra-core compose, no overrides",
            "missing": sorted(OmegaConf.missing_keys(cfg)),
            "config": OmegaConf.to_container(cfg, resolve=False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("git_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("verl_fork_vopd.json"))
    args = ap.parse_args()
    record = compose_vopd(args.git_dir)
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"recorded {record['repo']}@{record['commit'][:7]} {record['config_name']}: "
          f"{len(json.dumps(record['config']))} bytes, missing {record['missing']}")


if __name__ == "__main__":
    main()
