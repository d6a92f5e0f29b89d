"""`mlx-opd train` on a tiny checkpoint: config, rollouts, views, teacher, checkpoints, resume."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mlx.core as mx
import mlx_vlm
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mlx.utils import tree_flatten

from mlx_opd import models
from mlx_opd.cli import main
from mlx_opd.data import read_samples
from mlx_opd.method import rollout, trainer
from mlx_opd.method import step as stepping
from mlx_opd.method.teacher import Teacher
from mlx_opd.models import lora
from mlx_opd.run import checkpoint
from mlx_opd.run.config import ConfigError, LoraConfig, TeacherConfig, load_train_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.yaml"
DATA = ROOT / "examples" / "data" / "samples.jsonl"


def _cfg(tiny_dir, tmp_path, **overrides):
    base = {"model.path": str(tiny_dir["qwen2_5_vl"]), "data.path": str(DATA),
            "run.out": str(tmp_path / "run")}
    return load_train_config(str(EXAMPLE), {**base, **overrides})


def test_config_layers_and_unknown_keys(tmp_path):
    cfg = load_train_config(str(EXAMPLE), {"optim.lr": 0.5})
    assert cfg.optim.lr == 0.5                       # CLI > YAML
    assert cfg.rollout.n == 4                        # YAML > defaults
    assert cfg.optim.weight_decay == 0.01            # defaults
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rat: 1e-4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'optim.learning_rat'.*'lr'"):
        load_train_config(str(bad))
    bad.write_text("rollouts:\n  n: 2\n")
    with pytest.raises(ConfigError, match="did you mean 'rollout'"):
        load_train_config(str(bad))
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_train_config(str(bad))
    with pytest.raises(ConfigError, match="teacher.mode must be"):
        load_train_config(None, {"teacher.mode": "average"})


@pytest.mark.numerics
def test_rollouts_are_scored_as_sampled(loaded, tiny_dir, tmp_path):
    """Teacher view = the crop (its own prompt length); scored ids = sampled ids."""
    cfg = _cfg(tiny_dir, tmp_path)
    L = loaded("qwen2_5_vl")
    sample = read_samples(cfg.data)[0][0]
    (enc,), (r,), _ = stepping.roll_out(L, [sample], cfg, [mx.random.key(1)])
    assert len(r.token_ids) == cfg.rollout.n
    assert all(1 <= len(t) <= cfg.rollout.max_tokens for t in r.token_ids)
    blocked = set(models.blocked_token_ids(L))
    assert not any(t in blocked for row in r.token_ids for t in row)
    s_batch = models.make_batch([enc] * len(r.token_ids), r.token_ids)
    for i, ids in enumerate(r.token_ids):
        assert np.array(s_batch.response_ids[i, :len(ids)]).tolist() == ids
        row = np.array(s_batch.input_ids[i]).tolist()
        assert row[enc.prompt_len:enc.prompt_len + len(ids)] == ids
    # decoding and re-tokenising would NOT give the same ids: the test above could fail
    retok = [L.tokenizer.encode(models.decode(L, ids), add_special_tokens=False) for ids in r.token_ids]
    assert retok != [[t for t in ids if t not in models.eos_token_ids(L)] for ids in r.token_ids]
    # the teacher's prompt is the crop's: its image-token count is the crop's, not the full's
    t_batch = models.make_batch([stepping.teacher_prompt(L, sample, cfg)] * len(r.token_ids),
                                r.token_ids)
    from mlx_opd.method.views import teacher_view

    crop = teacher_view(sample, cfg.views)
    crop_enc = models.encode(L, crop.image, crop.text, cfg.pixels)
    image_id = L.model.config.image_token_id
    n_img_teacher = int((t_batch.input_ids[0] == image_id).sum().item())
    assert n_img_teacher == models.image_token_count(L, crop_enc)
    assert n_img_teacher < models.image_token_count(L, enc)
    assert np.array(t_batch.response_ids).tolist() == np.array(s_batch.response_ids).tolist()
    # log-probs kept from the sampler equal teacher-forced ones (same ids, same positions)
    lp = models.response_logprobs(L.model, s_batch)
    bias = np.zeros(lp.shape[-1], np.float32)
    bias[sorted(blocked)] = models.BLOCK_BIAS
    lp = lp + mx.array(bias)
    lp = lp - mx.logsumexp(lp, -1, keepdims=True)
    for i, ids in enumerate(r.token_ids):
        got = [float(lp[i, t, tok].item()) for t, tok in enumerate(ids)]
        np.testing.assert_allclose(got, r.logprobs[i], atol=1e-5)


def test_batched_rollout_is_seeded(loaded):
    L = loaded("qwen3_vl")
    from .conftest import random_image

    enc = models.encode(L, random_image(3, 64, 96), "Q?")
    a = rollout.sample_batch(L, enc, 3, 6, key=mx.random.key(5))
    b = rollout.sample_batch(L, enc, 3, 6, key=mx.random.key(5))
    c = rollout.sample_batch(L, enc, 3, 6, key=mx.random.key(6))
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_teacher_modes(tiny_dir):
    L = models.load(tiny_dir["qwen2_vl"])
    lora.attach(L.model, LoraConfig(rank=4))
    init = {k: np.array(v) for k, v in lora.trainable(L.model).items()}
    ema, frozen = Teacher(L.model, TeacherConfig("ema", 0.25)), Teacher(L.model, TeacherConfig("frozen"))
    with pytest.warns(UserWarning, match="collapse"):
        live = Teacher(L.model, TeacherConfig("live"))
    new = {k: mx.array(v + 1.0) for k, v in init.items()}
    from mlx.utils import tree_unflatten

    L.model.update(tree_unflatten(list(new.items())))
    ema.update(L.model)
    frozen.update(L.model)
    for k, v in init.items():
        np.testing.assert_allclose(np.array(ema.params[k]), 0.75 * v + 0.25 * (v + 1.0), atol=1e-6)
        np.testing.assert_array_equal(np.array(frozen.params[k]), v)
    # inside weights_in the model carries the teacher's parameters, outside the student's
    k0 = next(iter(init))
    with frozen.weights_in(L.model):
        np.testing.assert_array_equal(np.array(lora.trainable(L.model)[k0]), init[k0])
    np.testing.assert_array_equal(np.array(lora.trainable(L.model)[k0]), init[k0] + 1.0)
    with live.weights_in(L.model):
        np.testing.assert_array_equal(np.array(lora.trainable(L.model)[k0]), init[k0] + 1.0)


def test_train_cli_writes_everything(tiny_dir, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA), "--out",
                                  str(out), "--max-steps", "3", "--save-every", "1", "--set", "optim.epochs=2"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    for key in ("loss/objective", "rollout/mean_response_len", "rollout/tokens_per_s",
                "time/step_seconds", "memory/peak_bytes", "optim/lr", "optim/grad_norm",
                "teacher/argmax_agreement"):
        assert all(np.isfinite(row[key]) for row in rows), key
    assert all(row["loss/objective"] > 0 for row in rows)
    for row in rows:  # what the rows kept vs what the decode computed
        assert row["rollout/tokens"] <= row["rollout/tokens_computed"]
        assert row["rollout/useful_frac"] == row["rollout/tokens"] / row["rollout/tokens_computed"]
        assert row["rollout/mean_response_len"] <= row["rollout/max_response_len"]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["optim"]["max_steps"] == 3 and resolved["model"]["path"] == str(tiny_dir["qwen2_5_vl"])
    assert [p.name for p in checkpoint.complete(out)] == ["step_000002", "step_000003"]  # keep 2
    # the adapters moved, and load through mlx-vlm's own loader and `compare --adapter`
    m, _ = mlx_vlm.load(str(tiny_dir["qwen2_5_vl"]), adapter_path=str(out / "adapters"))
    b = {k: v for k, v in tree_flatten(m.parameters()) if "lora_b" in k}
    assert b and max(float(mx.abs(v).max().item()) for v in b.values()) > 0
    scene = json.loads(DATA.read_text().splitlines()[0])
    r = CliRunner().invoke(main, ["compare", "--model", str(tiny_dir["qwen2_5_vl"]), "--adapter",
                                  str(out / "adapters"), "--image", str(DATA.parent / scene["image"]),
                                  "--question", scene["question"], "--box",
                                  ",".join(map(str, scene["box"])), "--max-tokens", "4"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["plot", str(out)])
    assert r.exit_code == 0 and (out / "plots" / "overview.png").stat().st_size > 1000


def _run(args, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "mlx_opd.cli", "train", *map(str, args)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _adapters(path):
    return {k: np.array(v) for k, v in mx.load(str(path / "adapters.safetensors")).items()}


# not numerics: a resume replays the same computation, so its equality does not hang on
# the BLAS's rounding; the default (threaded) configuration, the one that could differ, runs it
def test_kill_mid_checkpoint_then_resume_equals_uninterrupted(tiny_dir, tmp_path):
    common = ["--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data", DATA,
              "--max-steps", 4, "--save-every", 1, "--set", "optim.prompts_per_step=1",
              "--set", "optim.epochs=2",
              "--set", "run.keep_last=5"]
    straight = _run(common + ["--out", tmp_path / "a"])
    assert straight.wait(timeout=300) == 0

    b = tmp_path / "b"
    proc = _run(common + ["--out", b], {"MLX_OPD_TEST_CHECKPOINT_PAUSE": "1.5"})
    deadline = time.time() + 240
    while time.time() < deadline:  # wait for step 1 to be complete and step 2 mid-write
        tmp = list((b / "checkpoints").glob(".step_000002.tmp-*")) if (b / "checkpoints").exists() else []
        if tmp and checkpoint.latest(b) is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp, "the run never reached the second checkpoint"
    assert checkpoint.latest(b).name == "step_000001"  # the half-written one is ignored
    assert checkpoint.load(checkpoint.latest(b))["state"]["step"] == 1

    resumed = subprocess.run([sys.executable, "-m", "mlx_opd.cli", "train", "--resume", str(b)],
                             env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout
    a_w, b_w = _adapters(tmp_path / "a" / "adapters"), _adapters(b / "adapters")
    assert set(a_w) == set(b_w)
    for k in a_w:
        np.testing.assert_allclose(b_w[k], a_w[k], atol=1e-5, err_msg=k)
    steps = [json.loads(ln)["step"] for ln in (b / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # teacher copies match too
    ta = mx.load(str(checkpoint.latest(tmp_path / "a") / "teacher.safetensors"))
    tb = mx.load(str(checkpoint.latest(b) / "teacher.safetensors"))
    for k in ta:
        np.testing.assert_allclose(np.array(tb[k]), np.array(ta[k]), atol=1e-5)


def test_nonfinite_steps_are_skipped_then_stop(tiny_dir, tmp_path, monkeypatch):
    cfg = _cfg(tiny_dir, tmp_path, **{"run.max_nonfinite": 1, "optim.max_steps": 4})
    real_score = stepping.score

    def nan_score(*args, **kw):  # the scorer reports a NaN loss; the loop must cope
        s = real_score(*args, **kw)
        s.loss = float("nan")
        return s

    monkeypatch.setattr(stepping, "score", nan_score)
    with pytest.raises(trainer.TrainingStopped, match="non-finite steps in a row"):
        trainer.train(cfg)
    ck = checkpoint.latest(Path(cfg.run.out))
    state = checkpoint.load(ck)["state"]
    assert state["nonfinite_total"] == 2 and state["step"] == 2
    # skipped steps never touched the adapters: B is still exactly its zero init
    b = {k: v for k, v in mx.load(str(ck / "adapters.safetensors")).items() if "lora_b" in k}
    assert all(float(mx.abs(v).max().item()) == 0.0 for v in b.values())


def test_train_rejects_bad_input(tiny_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--data", str(empty), "--out",
                                  str(tmp_path / "r")])
    assert r.exit_code != 0 and "empty" in r.output
    r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--set", "optim.lrr=1"])
    assert r.exit_code != 0 and "did you mean 'lr'" in r.output
    r = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "nothing")])
    assert r.exit_code != 0 and "config.yaml" in r.output
    warnings.simplefilter("default")


def test_training_never_reads_the_answers(tiny_dir, tmp_path):
    rows = [json.loads(ln) for ln in DATA.read_text().splitlines()]
    for r in rows:
        r["image"] = str(DATA.parent / r["image"])
    scrambled = tmp_path / "scrambled.jsonl"
    scrambled.write_text("".join(json.dumps({**r, "answer": "Z"}) + "\n" for r in rows))
    results = []
    for name, data in (("a", DATA), ("b", scrambled)):
        cfg = load_train_config(str(EXAMPLE), {"model.path": str(tiny_dir["qwen2_5_vl"]),
                                               "data.path": str(data), "optim.max_steps": 2,
                                               "run.out": str(tmp_path / name)})
        trainer.train(cfg)
        results.append(mx.load(str(tmp_path / name / "adapters" / "adapters.safetensors")))
    for k in results[0]:
        np.testing.assert_array_equal(np.array(results[0][k]), np.array(results[1][k]))
