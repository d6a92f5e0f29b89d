"""Exports checked against the engines' own definitions, not against what we write.

- verl fork: the generated script is executed with `python3` intercepted; the argv it
  hands to verl.trainer.main_ppo is composed with hydra-core (the fork's pin, 1.3.2) on
  the fork's recorded composed `vopd` config (tests/engines/verl_fork_vopd.json, made by
  tests/engines/record_verl_fork.py from a snapshot, with its commit), then checked with
  the fork's own checks (tests/engines/fork_checks.py, each citing file and line).
- ms-swift: the real package (ms-swift 4.6.0) parses the generated arguments with its
  own parser, decides the teacher with its own code, and reads the rows with its own
  dataset loader.
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_opd.cli import main
from mlx_opd.method.teacher import rate_per_step

from .authors_layout import write_prepared, write_published
from .engines import fork_checks

ROOT = Path(__file__).resolve().parents[1]
RECORD = Path(__file__).parent / "engines" / "verl_fork_vopd.json"
FAKE_PYTHON = ('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$ARGV_OUT"\n'
               'printf "%s" "${NPROC_PER_NODE:-}" > "$ARGV_OUT.nproc"\n')


def _export(tmp_path, data, *extra, fmt="verl", name="v"):
    out = tmp_path / name
    r = CliRunner().invoke(main, ["export-data", "--data", str(data), "--out", str(out),
                                  "--format", fmt, *extra])
    assert r.exit_code == 0, r.output
    return out


def run_script(script: Path, args=(), env=None, binary: str = "python3"):
    """The argv the script hands to `binary` (intercepted: nothing of the engine runs),
    or the finished process when the script itself stops first."""
    bin_dir = script.parent.parent / f"fake-{binary}"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / binary).write_text(FAKE_PYTHON)
    (bin_dir / binary).chmod(0o755)
    argv_out = script.parent.parent / f"argv-{binary}.bin"
    if binary == "python3" and env is None:
        env = {"GPUS": "8"}  # the verl fork's node, as a user there says (no GPU here)
    e = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", ARGV_OUT=str(argv_out),
             **(env or {}))
    p = subprocess.run(["bash", str(script), *args], env=e, capture_output=True, text=True)
    if p.returncode != 0:
        return p
    return argv_out.read_bytes().decode().split("\0")[:-1]


def compose(argv: list[str]) -> dict:
    """Hydra's composition of main_ppo's command line on the fork's recorded config."""
    from hydra import compose as hydra_compose
    from hydra import initialize
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    assert argv[:4] == ["-m", "verl.trainer.main_ppo", "--config-name", "vopd"], argv[:4]
    record = json.loads(RECORD.read_text())
    ConfigStore.instance().store(name="vopd_recorded", node=record["config"])
    GlobalHydra.instance().clear()
    with initialize(version_base=None, config_path=None):
        cfg = hydra_compose(config_name="vopd_recorded", overrides=argv[4:])
    missing = OmegaConf.missing_keys(cfg)
    assert not missing, f"mandatory values left unset: {sorted(missing)}"
    return OmegaConf.to_container(cfg, resolve=True)


def _rows(parquet: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(parquet).to_pylist()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("vopd6k") / "Vision-OPD-6K"
    write_published(root, n=100)  # >= 96 rows: the recipe's batch fits
    return root


def test_record_is_the_forks_vopd_config():
    record = json.loads(RECORD.read_text())
    assert record["repo"] == "VisionOPD/Vision-OPD" and len(record["commit"]) == 40
    sd = record["config"]["actor_rollout_ref"]["actor"]["self_distillation"]
    # the fork's defaults that made the old script run without the crop teacher
    assert sd["teacher_always_on"] is False and sd["teacher_image_key"] is None
    assert record["missing"] == ["reward_model.rollout.name"]


@pytest.mark.parametrize("batch", [None, 96])
def test_verl_script_composes_and_passes_the_forks_checks(tmp_path, dataset, batch):
    out = _export(tmp_path, dataset, "--model", "Qwen/Qwen3.5-4B")
    args = [] if batch is None else [f"data.train_batch_size={batch}"]
    argv = run_script(out / "run_vision_opd.sh", args)
    assert isinstance(argv, list), argv.stderr
    cfg = compose(argv)
    rows = _rows(out / "train.parquet")
    fork_checks.check_all(cfg, rows)
    n = batch or 4  # optim.prompts_per_step's default
    a = cfg["actor_rollout_ref"]["actor"]
    sd = a["self_distillation"]
    assert cfg["data"]["train_batch_size"] == n and a["ppo_mini_batch_size"] == n
    assert a["ppo_epochs"] == 1  # one on-policy update per step (ray_trainer.py:199-214)
    assert a["policy_loss"]["loss_mode"] == "vopd" and sd["teacher_always_on"] is True
    assert sd["teacher_image_key"] == "bbox_images" and "bbox_images" in rows[0]
    assert sd["alpha"] == 0.5 and sd["distillation_topk"] == 100
    assert sd["distillation_add_tail"] is True and a["loss_agg_mode"] == "token-mean"
    assert sd["teacher_regularization"] == "ema" and sd["teacher_model_source"] == "legacy"
    # the recipe's units per prompt seen: 10 warm-up steps and EMA 0.05 per 96 prompts
    assert a["optim"]["lr_warmup_steps"] == math.ceil(10 * 96 / n)
    assert sd["teacher_update_rate"] == pytest.approx(rate_per_step(0.05, n, 96), rel=1e-9)
    assert cfg["trainer"]["total_training_steps"] == 100 // n and cfg["trainer"]["total_epochs"] == 1
    assert cfg["actor_rollout_ref"]["model"]["lora_rank"] == 0  # full fine-tune (verl.py)
    assert a["optim"]["lr"] == pytest.approx(2e-6, rel=1e-12)
    assert cfg["trainer"]["logger"] == ["console"] and cfg["data"]["val_files"] == []
    tmpl = cfg["actor_rollout_ref"]["model"]["custom_chat_template_file"]
    assert Path(tmpl).is_file() and Path(tmpl).parent == out
    assert cfg["data"]["train_files"] == [str(out.resolve() / "train.parquet")]


def test_recipe_batch_gives_the_recipe_units_exactly(tmp_path, dataset):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("optim:\n  prompts_per_step: 96\n")
    out = _export(tmp_path, dataset, "--config", str(cfg_file))
    argv = run_script(out / "run_vision_opd.sh")
    over = dict(a.split("=", 1) for a in argv[4:] if "=" in a)
    assert over["actor_rollout_ref.actor.self_distillation.teacher_update_rate"] == "0.05"
    assert over["actor_rollout_ref.actor.optim.lr_warmup_steps"] == "10"
    cfg = compose(argv)
    fork_checks.check_all(cfg, _rows(out / "train.parquet"))
    assert cfg["actor_rollout_ref"]["actor"]["ppo_mini_batch_size"] == 96
    assert "custom_chat_template_file" not in " ".join(argv)  # not a Qwen3.5 base


def test_the_old_script_fails_the_same_checks():
    """The checks can fail: the launch line mlx-opd wrote before this change."""
    old = ["-m", "verl.trainer.main_ppo", "data.train_batch_size=4",
           "actor_rollout_ref.rollout.n=8", "actor_rollout_ref.model.lora_alpha=32.0"]
    with pytest.raises(AssertionError):
        compose(old)  # no --config-name vopd
    cfg = compose(["-m", "verl.trainer.main_ppo", "--config-name", "vopd",
                   "reward_model.rollout.name=vllm", "actor_rollout_ref.model.lora_alpha=32.0"])
    with pytest.raises(AssertionError, match="reward-free"):
        fork_checks.main_ppo(cfg)
    with pytest.raises(AssertionError, match="lora_alpha must be an int"):
        fork_checks.workers(cfg)
    with pytest.raises(Exception, match="OPD_ALPHA|Could not override|not in struct"):
        compose(["-m", "verl.trainer.main_ppo", "--config-name", "vopd",
                 "actor_rollout_ref.actor.self_distillation.opd_alpha=0.5"])


def test_bad_batch_override_is_refused(tmp_path, dataset):
    out = _export(tmp_path, dataset)
    for bad, said in (("data.train_batch_size=0", "positive integer"),
                      ("data.train_batch_size=500", "exceeds the 100 rows")):
        p = run_script(out / "run_vision_opd.sh", [bad])
        assert not isinstance(p, list) and p.returncode == 2 and said in p.stderr


def test_export_mixes_with_the_authors_parquet(tmp_path, dataset):
    """verl reads data.train_files with datasets and concatenates them
    (rl_dataset.py:153-164): the authors' prepared parquet and ours must align."""
    import datasets

    theirs = write_prepared(dataset)
    for extra in ([], ["--like", str(theirs)]):
        out = _export(tmp_path, dataset, *extra, name=f"v{len(extra)}")
        frames = [datasets.load_dataset("parquet", data_files=str(f))["train"]
                  for f in (theirs, out / "train.parquet")]
        mixed = datasets.concatenate_datasets(frames)
        assert len(mixed) == 200
        fork_checks.data(compose(run_script(out / "run_vision_opd.sh")), list(mixed))
        row = mixed[150]
        assert Path(row["images"][0]["path"]).is_file() and Path(row["bbox_images"][0]["path"]).is_file()
        assert row["prompt"][0]["content"].startswith("<image>\n")


def test_the_non_thinking_template_closes_an_empty_think_block():
    import jinja2

    from mlx_opd.engines.verl import nonthinking_template

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    env = jinja2.Environment()
    env.filters["tojson"] = json.dumps
    for thinking in (True, False, None):
        kw = {} if thinking is None else {"enable_thinking": thinking}
        text = env.from_string(nonthinking_template()).render(
            messages=msgs, add_generation_prompt=True, **kw)
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), text[-80:]


def test_verl_script_takes_the_gpus_from_the_environment(tmp_path, dataset):
    """GPUS / NNODES as a user sets them reach the fork's trainer and pass its checks;
    without them the machine's count (none here: 1); a count the batch does not split over
    is refused by the script before the fork starts."""
    out = _export(tmp_path, dataset, "--model", "Qwen/Qwen3.5-4B")
    script = out / "run_vision_opd.sh"
    for env, per_node, nodes in (({"GPUS": "8"}, 8, 1), ({"CUDA_VISIBLE_DEVICES": "0,1"}, 2, 1),
                                 ({"GPUS": "4", "NNODES": "2"}, 4, 2)):
        cfg = compose(run_script(script, env=env))
        assert (cfg["trainer"]["n_gpus_per_node"], cfg["trainer"]["nnodes"]) == (per_node, nodes)
        fork_checks.check_all(cfg, _rows(out / "train.parquet"))
    p = run_script(script, env={"GPUS": "3"})
    assert p.returncode == 2 and "do not split over" in p.stderr
    p = run_script(script, env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU here: say so, not guess
    assert p.returncode == 2 and "set GPUS=N" in p.stderr


def test_verl_refuses_what_the_fork_cannot_run(tmp_path, dataset):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("loss:\n  estimator: sampled\n  kind: jsd\n")
    r = CliRunner().invoke(main, ["export-data", "--data", str(dataset), "--out",
                                  str(tmp_path / "x"), "--config", str(cfg_file)])
    assert r.exit_code != 0 and "reverse KL only" in r.output and not (tmp_path / "x").exists()


# --- ms-swift ------------------------------------------------------------------------------

def _swift_parse(argv):
    """ms-swift's own parser over its RLHFArguments (swift/utils/utils.py parse_args),
    stopping before __post_init__ (which would download the model's config)."""
    from swift.arguments import RLHFArguments
    from swift.utils.utils import _patch_get_type_hints
    from transformers import HfArgumentParser

    with _patch_get_type_hints():
        parser = HfArgumentParser([RLHFArguments])
    ns, remaining = parser.parse_known_args(argv)
    assert remaining == [], f"ms-swift does not know: {remaining}"
    args = object.__new__(RLHFArguments)
    args.__dict__.update(vars(ns))
    return args


def _script_argv(script: Path, model: str, **env) -> list[str]:
    """The argv the script hands to `swift` (intercepted), with a user's variables."""
    argv = run_script(script, env={"MODEL": model, **env}, binary="swift")
    assert isinstance(argv, list) and argv[0] == "rlhf", argv
    return argv[1:]


def _launched_processes(script: Path) -> str:
    """NPROC_PER_NODE as the intercepted `swift` saw it (ms-swift's torchrun switch)."""
    return (script.parent.parent / "argv-swift.bin.nproc").read_text()


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_swift_arguments_parse_with_ms_swift(tmp_path, dataset, finetune):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"lora:\n  finetune: {finetune}\n")
    out = _export(tmp_path, dataset, "--config", str(cfg_file), fmt="swift", name="s")
    model = "Qwen/Qwen3.5-4B"
    args = _swift_parse(_script_argv(out / "run_swift_opsd.sh", model))
    assert args.rlhf_type == "gkd" and args.lmbda == 1.0 and args.beta == 0.5
    assert args.gkd_logits_topk == 100 and args.max_completion_length == 256
    assert args.model == model and args.tuner_type == finetune
    # ms-swift's own teacher decision: same model + LoRA = the adapter disabled (frozen)
    args._check_teacher()
    if finetune == "lora":
        assert args._teacher_use_disable_adapter is True and args.teacher_model is None
        assert args.freeze_vit is True and args.target_modules == ["all-linear"]
    else:
        assert args._teacher_use_disable_adapter is False and args.teacher_model == model
    # no GPU here: one process takes the whole step (4 prompts x 8 samples), no vLLM
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 32
    assert args.use_vllm is False and _launched_processes(out / "run_swift_opsd.sh") == ""
    rows = [json.loads(ln) for ln in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 100 * 8
    head = (out / "run_swift_opsd.sh").read_text().splitlines()[:5]
    assert any("FROZEN" in ln and "no EMA teacher" in ln for ln in head)


@pytest.mark.parametrize("gpus,accumulation", [("8", 4), ("4", 8), ("1", 32)])
def test_swift_script_takes_the_machine_from_the_environment(tmp_path, dataset, gpus,
                                                            accumulation):
    """NPROC_PER_NODE and USE_VLLM as a user sets them: the launch and the accumulation
    that keeps the Mac run's 32 rows per step (intercepted, not run)."""
    out = _export(tmp_path, dataset, fmt="swift", name="s")
    script = out / "run_swift_opsd.sh"
    args = _swift_parse(_script_argv(script, "Qwen/Qwen2.5-VL-3B-Instruct",
                                     NPROC_PER_NODE=gpus, USE_VLLM="true"))
    assert _launched_processes(script) == ("" if gpus == "1" else gpus)
    assert args.gradient_accumulation_steps == accumulation
    assert int(gpus) * args.per_device_train_batch_size * args.gradient_accumulation_steps == 32
    assert args.use_vllm is True and args.vllm_mode == "colocate"
    args = _swift_parse(_script_argv(script, "Qwen/Qwen2.5-VL-3B-Instruct", USE_VLLM="false"))
    assert args.use_vllm is False and args.vllm_mode is None  # ms-swift refuses a mode here
    p = run_script(script, env={"NPROC_PER_NODE": "3"}, binary="swift")
    assert p.returncode == 2 and "do not split over NPROC_PER_NODE=3" in p.stderr
    # the GPUs this process may use, not every GPU of the machine
    args = _swift_parse(_script_argv(script, "Qwen/Qwen2.5-VL-3B-Instruct",
                                     CUDA_VISIBLE_DEVICES="0,1", USE_VLLM="false"))
    assert _launched_processes(script) == "2" and args.gradient_accumulation_steps == 16
    assert args.torch_dtype == "bfloat16" and not args.use_cpu


def test_swift_export_refuses_models_ms_swift_cannot_load(tmp_path, dataset, tiny_dir):
    import mlx.core as mx

    config = {"model_type": "qwen2_5_vl", "image_token_id": 151655}
    quantized, named = tmp_path / "q", tmp_path / "n"
    for folder, extra in ((quantized, {"quantization": {"group_size": 64, "bits": 4}}),
                          (named, {})):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**config, **extra}))
    mx.save_safetensors(str(named / "model.safetensors"),
                        {"language_model.model.embed_tokens.weight": mx.zeros((2, 2))})
    cases = [("mlx-community/Qwen2.5-VL-3B-Instruct-4bit", "MLX-format"),
             (str(quantized), "quantized"), (str(named), "MLX-named weights"),
             (str(tiny_dir["qwen2_5_vl"]), "hard-codes 151655")]  # a toy's vocabulary
    for model, words in cases:
        r = CliRunner().invoke(main, ["export-data", "--data", str(dataset), "--out",
                                      str(tmp_path / "x"), "--format", "swift", "--model", model])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, r.output
        assert len([ln for ln in r.output.splitlines() if ln.startswith("Error:")]) == 1
        assert not (tmp_path / "x").exists()


def test_swift_reads_the_rows_with_the_crop_as_teacher_images(tmp_path, dataset):
    """ms-swift's own dataset loader keeps `teacher_images` (RowPreprocessor.standard_keys),
    and its OPSD sample hands them to the teacher's template while the student keeps its
    images and both keep the same messages (rl_core/data.py from_row, build_teacher_view,
    to_teacher_template_dict)."""
    from swift.dataset import load_dataset
    from swift.rl_core.data import GKDSample

    out = _export(tmp_path, dataset, fmt="swift", name="s")
    train, _ = load_dataset([str(out / "train.jsonl")], split_dataset_ratio=0.0, num_proc=1)
    assert len(train) == 800
    sample = GKDSample.from_row(dict(train[0]))
    assert sample.build_teacher_view() is True
    teacher, student = sample.to_teacher_template_dict(), sample.to_template_dict()
    assert teacher["messages"] == student["messages"]
    assert _path(teacher["images"][0]).endswith("teacher_images/000000.png")
    assert _path(student["images"][0]).endswith("/images/000000.png")


def _path(image) -> str:
    return image["path"] if isinstance(image, dict) else str(image)
