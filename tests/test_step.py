"""One training step is the authors' step: checked against an independent computation, the
optimizer against PyTorch's AdamW, module modes per phase, and a loop that survives
interruption at any moment."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten, tree_unflatten

from mlx_opd import models
from mlx_opd.cli import main
from mlx_opd.data import read_samples
from mlx_opd.method import score as scoring
from mlx_opd.method import step as stepping
from mlx_opd.method import trainer
from mlx_opd.method.teacher import Teacher, rate_per_step
from mlx_opd.method.views import student_view, teacher_view
from mlx_opd.models import lora
from mlx_opd.run import checkpoint
from mlx_opd.run.config import load_train_config

from .conftest import FP32

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.yaml"
DATA = ROOT / "examples" / "data" / "samples.jsonl"


def _cfg(model_dir, tmp_path, **overrides):
    base = {"model.path": str(model_dir), "data.path": str(DATA), "run.out": str(tmp_path / "run")}
    return load_train_config(str(EXAMPLE), {**base, **overrides})


# --- the whole step against an independent computation ----------------------------------

def _reference_loss(model, teacher_params, student_params, samples, encs, crop_encs, responses,
                    k, beta, temperature, reduction):
    """Written for the test, sharing nothing with loss.py: full logits from the model's own
    forward, a plain log-softmax under autograd, top-K by the student with the authors' tail,
    generalized JSD over K+1 buckets, token-mean (or sequence-mean) over the whole step."""
    def logits_at(enc, resp):
        ids = mx.array([enc.input_ids[0].tolist() + resp], dtype=mx.int32)
        models.reset_rope_state(model)
        out = model(ids, pixel_values=enc.pixel_values, image_grid_thw=enc.image_grid_thw,
                    mask=mx.ones(ids.shape, dtype=mx.int32))
        models.reset_rope_state(model)
        logits = getattr(out, "logits", out)[0]
        P = enc.prompt_len
        return logits[P - 1:P - 1 + len(resp)].astype(mx.float32)  # predicts each response token

    def log_softmax(z):
        z = z / temperature
        return z - mx.logsumexp(z, axis=-1, keepdims=True)

    teacher_lp = []
    model.update(tree_unflatten(list(teacher_params.items())))
    for ce, rs in zip(crop_encs, responses):
        teacher_lp.append([mx.stop_gradient(log_softmax(logits_at(ce, r))) for r in rs])
    model.update(tree_unflatten(list(student_params.items())))

    def objective(m):
        total, tokens, seqs = 0.0, 0, 0
        for enc, rs, tls in zip(encs, responses, teacher_lp):
            for r, t_lp in zip(rs, tls):
                s_lp = log_softmax(logits_at(enc, r))
                top = mx.stop_gradient(mx.argsort(-s_lp, axis=-1)[:, :k])
                s_k = mx.take_along_axis(s_lp, top, -1)
                t_k = mx.take_along_axis(t_lp, top, -1)
                # the authors' tail: log(-expm1(min(logsumexp(top-K log-probs), -1e-7)))
                s_tail = mx.log(-mx.expm1(mx.minimum(mx.logsumexp(s_k, -1, keepdims=True), -1e-7)))
                t_tail = mx.log(-mx.expm1(mx.minimum(mx.logsumexp(t_k, -1, keepdims=True), -1e-7)))
                ps, pt = mx.exp(mx.concatenate([s_k, s_tail], -1)), mx.exp(mx.concatenate([t_k, t_tail], -1))
                pm = beta * pt + (1 - beta) * ps
                per_tok = (beta * (pt * (mx.log(pt) - mx.log(pm))).sum(-1)
                           + (1 - beta) * (ps * (mx.log(ps) - mx.log(pm))).sum(-1))
                total = total + (per_tok.sum() if reduction == "token_mean" else per_tok.mean())
                tokens, seqs = tokens + len(r), seqs + 1
        return total / (tokens if reduction == "token_mean" else seqs)

    return nn.value_and_grad(model, objective)(model)


@pytest.fixture(scope="module")
def tied_qwen2_5_vl(tiny_dir, tmp_path_factory):
    """The tiny qwen2_5_vl with its LM head tied to the input embedding (as the real
    Qwen2.5-VL-3B): config flag set, the separate head weight dropped."""
    import shutil

    src = tiny_dir["qwen2_5_vl"]
    dst = tmp_path_factory.mktemp("tied") / "qwen2_5_vl_tied"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    if "text_config" in cfg:
        cfg["text_config"]["tie_word_embeddings"] = True
    (dst / "config.json").write_text(json.dumps(cfg))
    w = mx.load(str(dst / "model.safetensors"))
    mx.save_safetensors(str(dst / "model.safetensors"),
                        {k: v for k, v in w.items() if not k.endswith("lm_head.weight")},
                        metadata={"format": "pt"})
    return dst


MULTI = ROOT / "examples" / "data" / "multibox.jsonl"
# (family, finetune, reduction, teacher view): "crops" scores with a teacher of several
# crops, the two prompts' 2 and 3 (examples/data/multibox.jsonl)
CASES = [("qwen2_5_vl", "lora", "token_mean", "crop"),
         ("qwen2_5_vl", "lora", "sequence_mean", "crop"),
         ("qwen3_5", "lora", "token_mean", "crop"), ("qwen3_5", "lora", "sequence_mean", "crop"),
         ("qwen2_5_vl", "full", "token_mean", "crop"), ("tied", "full", "token_mean", "crop"),
         ("tied", "full", "sequence_mean", "crop"),
         ("qwen2_5_vl", "lora", "token_mean", "crops"), ("qwen3_5", "lora", "token_mean", "crops")]


@pytest.mark.numerics
@pytest.mark.parametrize("shared", [True, False], ids=["shared_prefix", "duplicated"])
@pytest.mark.parametrize("family,finetune,reduction,tview", CASES, ids=lambda x: str(x))
def test_one_whole_step_equals_an_independent_computation(family, finetune, reduction,
                                                          tview, shared, tiny_dir,
                                                          tied_qwen2_5_vl, tmp_path):
    """The trainer's scoring, on both paths (the prompt run once with the n responses
    continuing from it, and the reference that repeats it per row), equals a computation
    written independently of both: full logits, autograd, the duplicated batch."""
    path = tied_qwen2_5_vl if family == "tied" else tiny_dir[family]
    cfg = _cfg(path, tmp_path, **{
        "loss.reduction": reduction, "loss.k": 16, "rollout.max_tokens": 4,
        "rollout.temperature": 1.3, "loss.tail": True, "lora.rank": 4,
        "lora.finetune": finetune, "score.shared_prefix": shared,
        "views.teacher": tview, **({"data.path": str(MULTI)} if tview == "crops"
                                          else {})})
    L = models.load(path)
    adapter_config = lora.attach(L.model, cfg.lora)
    if family == "tied":
        assert L.model.language_model.args.tie_word_embeddings
        assert models.lm_head_key(L.model) in lora.trainable(L.model)
    rng = np.random.default_rng(0)
    base = lora.trainable(L.model)
    if finetune == "lora":  # random adapters on both sides (B = 0 would hide the teacher)
        student = {k: mx.array(rng.normal(0, 0.05, v.shape).astype(np.float32))
                   for k, v in base.items()}
        teacher_params = {k: mx.array(rng.normal(0, 0.05, v.shape).astype(np.float32))
                          for k, v in base.items()}
    else:  # a full fine-tune: the teacher's weights (its head included) differ a little
        student = dict(base)
        teacher_params = {k: v * mx.array(1 + rng.normal(0, 0.05, v.shape).astype(np.float32))
                          for k, v in base.items()}
    L.model.update(tree_unflatten(list(student.items())))
    teacher = Teacher(L.model, cfg.teacher)
    teacher.params = dict(teacher_params)
    samples = read_samples(cfg.data)[0][:2]
    eos = models.eos_token_ids(L)[-1]
    # two prompts (their images differ in size, so their prompt lengths differ) and several
    # responses of different lengths: one truncated at max_tokens, some ending in EOS
    responses = [[[5, 6, 7, 8], [9, eos], [11, 12, eos]], [[13, eos], [14, 15, 16, 17]]]
    encs = [models.encode(L, student_view(s, cfg.views).images,
                          student_view(s, cfg.views).text, cfg.pixels) for s in samples]
    crop_encs = [models.encode(L, teacher_view(s, cfg.views).images,
                               teacher_view(s, cfg.views).text, cfg.pixels.for_crop())
                 for s in samples]
    if tview == "crops":
        assert [c.num_images for c in crop_encs] == [2, 3]
        assert crop_encs[0].prompt_len != crop_encs[1].prompt_len
    else:
        assert encs[0].prompt_len != encs[1].prompt_len
        assert all(c.prompt_len < e.prompt_len for c, e in zip(crop_encs, encs))
    # the trainer's path: per-prompt scoring, gradients accumulated, the step's normaliser
    n_tokens = sum(len(r) for rs in responses for r in rs)
    normaliser = n_tokens if reduction == "token_mean" else sum(len(rs) for rs in responses)
    got_loss, got_grads = 0.0, None
    for s, enc, rs in zip(samples, encs, responses):
        scored = scoring.score(L, teacher, cfg, enc, stepping.teacher_prompt(L, s, cfg), rs,
                               normaliser)
        got_loss += scored.loss
        got_grads = stepping._add(got_grads, scored.grads)
    # the independent computation
    want_loss, want_grads = _reference_loss(
        L.model, teacher_params, student, samples, encs, crop_encs, responses, cfg.loss.k,
        cfg.loss.beta, cfg.rollout.temperature, reduction)
    assert got_loss == pytest.approx(float(want_loss.item()), rel=1e-5, abs=1e-7)
    got, want = dict(tree_flatten(got_grads)), dict(tree_flatten(want_grads))
    assert set(got) == set(want) and len(got) > 0 and adapter_config
    scale = max(float(mx.abs(v).max().item()) for v in want.values())
    assert scale > 0
    for name in want:
        np.testing.assert_allclose(np.array(got[name]), np.array(want[name]), rtol=1e-4,
                                   atol=1e-5 * scale, err_msg=name)
    # a deliberately wrong normaliser fails the same comparison
    wrong = (sum(len(rs) for rs in responses) if reduction == "token_mean" else n_tokens)
    assert abs(got_loss * normaliser / wrong - float(want_loss.item())) > 1e-3 * abs(got_loss)


# --- optimizer: PyTorch AdamW semantics ---------------------------------------------------

def test_optimizer_equals_torch_adamw_for_several_steps():
    torch = pytest.importorskip("torch")
    cfg = load_train_config(str(EXAMPLE), {"optim.lr": 1e-2, "optim.warmup_steps": 0,
                                           "optim.weight_decay": 0.01}).optim
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 7)).astype(np.float32)
    grads = [rng.normal(size=(5, 7)).astype(np.float32) * (i + 1) for i in range(6)]
    opt = stepping.make_optimizer(cfg)
    params = {"w": mx.array(w0)}
    opt.init(params)
    tw = torch.nn.Parameter(torch.tensor(w0))
    topt = torch.optim.AdamW([tw], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=cfg.weight_decay)
    for g in grads:
        params = opt.apply_gradients({"w": mx.array(g)}, params)
        tw.grad = torch.tensor(g)
        topt.step()
        np.testing.assert_allclose(np.array(params["w"]), tw.detach().numpy(), rtol=1e-6,
                                   atol=1e-6)


def test_first_step_moves_lora_b_by_about_lr(tiny_dir, tmp_path):
    """Adam with bias correction: |m_hat / sqrt(v_hat)| = 1 on the first step, so each
    LoRA B entry (zero at init, so no weight decay) moves by about lr, not ~3.2 lr."""
    lr = 1e-3
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA), "--out",
                                  str(out), "--max-steps", "1", "--set", f"optim.lr={lr}",
                                  "--set", "optim.warmup_steps=0", "--set", "optim.grad_clip=1e9"])
    assert r.exit_code == 0, r.output
    w = mx.load(str(out / "adapters" / "adapters.safetensors"))
    b = np.concatenate([np.abs(np.array(v)).ravel() for k, v in w.items() if k.endswith("lora_b")])
    moved = b[b > 0]
    assert moved.size > 0.5 * b.size
    assert np.median(moved) == pytest.approx(lr, rel=0.05)
    assert moved.max() <= lr * 1.001


def test_warmup_and_teacher_rate_are_in_the_recipes_units():
    cfg = load_train_config(str(EXAMPLE), {"optim.lr": 1.0, "optim.warmup_steps": 10,
                                           "optim.prompts_per_step": 4}).optim
    # 10 recipe steps of 96 prompts = 960 prompts = 240 steps of 4
    assert stepping.lr_at(cfg, 0) == pytest.approx(4 / 960, rel=1e-12)
    assert stepping.lr_at(cfg, 238) < 1.0 and stepping.lr_at(cfg, 239) == 1.0
    # the teacher keeps (1 - 0.05) per 96 prompts seen, whatever the batch
    per_step = rate_per_step(0.05, 4, 96)
    assert (1 - per_step) ** 24 == pytest.approx(0.95, rel=1e-12)
    assert rate_per_step(0.05, 96, 96) == pytest.approx(0.05, rel=1e-12)


def test_invalid_enums_stop_before_any_model_loads(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load", boom)
    t0 = time.perf_counter()
    r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--set",
                                  "loss.reduction=token-mean"])
    assert r.exit_code != 0 and "token_mean" in r.output and "sequence_mean" in r.output
    assert "did you mean 'token_mean'" in r.output
    assert time.perf_counter() - t0 < 10
    for bad in ("loss.kind=kl", "loss.estimator=topK", "loss.backend=gpu", "run.save_every=0",
                "optim.grad_clip=0", "teacher.ema_rate=1.5"):
        r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--set", bad])
        assert r.exit_code != 0 and bad.split("=")[0] in r.output, (bad, r.output)


# --- module modes per phase ---------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
def test_every_module_is_in_the_right_mode_in_each_phase(family, tiny_dir, tmp_path, monkeypatch):
    """Rollout and teacher pass in eval mode, the student's gradient pass in training mode,
    on every module (LoRA and base, qwen3_5's gated-delta layers included)."""
    cfg = _cfg(tiny_dir[family], tmp_path, **{"lora.dropout": 0.1, "optim.max_steps": 1})
    L = models.load(tiny_dir[family])
    lora.attach(L.model, cfg.lora)
    seen = {}
    phase = ["none"]
    cls = type(L.model)
    real_call = cls.__call__

    def recording_call(self, *a, **k):
        modes = {name: m.training for name, m in self.named_modules()}
        seen.setdefault(phase[0], []).append(modes)
        return real_call(self, *a, **k)

    monkeypatch.setattr(cls, "__call__", recording_call)

    def in_phase(name, fn):
        def wrapped(*a, **k):
            phase[0] = name
            try:
                return fn(*a, **k)
            finally:
                phase[0] = "none"
        return wrapped

    monkeypatch.setattr(stepping, "sample_prompts", in_phase("rollout", stepping.sample_prompts))
    real_hidden = scoring.response_hidden

    def hidden(model, *a, **k):
        # teacher pass: inside Teacher.weights_in (teacher params swapped in); student: else
        name = "teacher" if phase[0] == "teacher" else "student"
        phase[0] = name
        try:
            return real_hidden(model, *a, **k)
        finally:
            phase[0] = "none"

    monkeypatch.setattr(scoring, "response_hidden", hidden)
    real_weights_in = Teacher.weights_in

    from contextlib import contextmanager

    @contextmanager
    def weights_in(self, model):
        with real_weights_in(self, model):
            phase[0] = "teacher"
            yield

    monkeypatch.setattr(Teacher, "weights_in", weights_in)
    teacher = Teacher(L.model, cfg.teacher)
    optimizer = stepping.make_optimizer(cfg.optim)
    samples = read_samples(cfg.data)[0]
    stepping.train_step(cfg, L, optimizer, teacher, samples, stepping.RunState())
    assert {"rollout", "teacher", "student"} <= set(seen)
    names = list(seen["student"][0])
    assert any("lora" in n or "lora_a" in n for n in names) or any(
        type(m).__name__.startswith("LoRA") for _, m in L.model.named_modules())
    if family == "qwen3_5":
        assert any("linear_attn" in n for n in names)  # the gated-delta layers are covered
    for name in ("rollout", "teacher"):
        bad = sorted({n for modes in seen[name] for n, t in modes.items() if t})
        assert not bad, f"{name}: modules in training mode: {bad[:5]}"
    bad = sorted({n for modes in seen["student"] for n, t in modes.items() if not t})
    assert not bad, f"student: modules in eval mode: {bad[:5]}"


# --- interruptions ------------------------------------------------------------------------

def _run(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "mlx_opd.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _weights(run_dir):
    a = mx.load(str(Path(run_dir) / "adapters" / "adapters.safetensors"))
    ck = checkpoint.latest(run_dir)
    t = mx.load(str(ck / "teacher.safetensors"))
    return a, t


def _assert_same(a, b):
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_allclose(np.array(y[k]), np.array(x[k]), **FP32, err_msg=k)


# not numerics: a resume replays the same computation, so its equality does not hang on
# the BLAS's rounding; the default (threaded) configuration, the one that could differ, runs it
def test_sigint_and_sigkill_at_random_moments_then_resume_equals_uninterrupted(tiny_dir, tmp_path):
    common = ["train", "--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data", DATA,
              "--max-steps", 5, "--save-every", 1, "--set", "optim.prompts_per_step=1",
              "--set", "teacher.ema_rate=0.5", "--set", "optim.reference_prompts_per_step=1"]
    ref = _run([*common, "--out", tmp_path / "ref"])
    assert ref.wait(timeout=300) == 0, ref.stdout.read()
    want = _weights(tmp_path / "ref")
    rng = random.Random(0)
    for trial, sig in enumerate([signal.SIGINT, signal.SIGINT, signal.SIGKILL]):
        out = tmp_path / f"run{trial}"
        p = _run([*common, "--out", out])
        # land somewhere inside the steps (after the first metrics line appears)
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / "metrics.jsonl").exists()
                                              and (out / "metrics.jsonl").read_text()):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        p.send_signal(sig)
        p.wait(timeout=120)
        for _ in range(3):  # resume until done (a second signal could land again)
            if (out / "adapters").exists():
                break
            q = _run(["train", "--resume", out])
            assert q.wait(timeout=300) == 0, q.stdout.read()
        _assert_same(want, _weights(out))


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(tiny_dir, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA), "--out",
                                  str(out), "--max-steps", "2", "--save-every", "1"])
    assert r.exit_code == 0, r.output
    newest = checkpoint.latest(out)
    (newest / "optimizer.safetensors").write_bytes(b"not a safetensors file")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss/obj')  # a kill mid-write
    r = CliRunner().invoke(main, ["train", "--resume", str(out), "--max-steps", "3"])
    assert r.exit_code == 0, r.output
    assert f"checkpoint {newest} is unreadable" in r.output and "resumed from" in r.output
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_an_exception_inside_a_step_saves_the_last_consistent_state(tiny_dir, tmp_path, monkeypatch):
    calls = []
    real = stepping.score

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # the second step's first prompt (2 prompts per step)
            raise MemoryError("simulated out-of-memory")
        return real(*a, **k)

    monkeypatch.setattr(stepping, "score", failing)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA), "--out",
                                  str(out), "--max-steps", "3", "--save-every", "10"])
    assert r.exit_code != 0 and "simulated out-of-memory" in r.output and "--resume" in r.output
    ck = checkpoint.latest(out)
    assert ck is not None and json.loads((ck / "state.json").read_text())["step"] == 1
    monkeypatch.setattr(stepping, "score", real)
    r = CliRunner().invoke(main, ["train", "--resume", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((checkpoint.latest(out) / "state.json").read_text())["step"] == 3


def test_a_prompt_over_the_limit_stops_with_advice(tiny_dir, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA), "--out",
                                  str(out), "--max-steps", "1", "--set",
                                  "rollout.max_prompt_tokens=10"])
    assert r.exit_code != 0 and "rollout.max_prompt_tokens=10" in r.output
    assert "samples.jsonl:" in r.output and "pixels.max_pixels" in r.output


def test_ctrl_c_inside_the_commit_never_saves_a_mixed_step(tiny_dir, tmp_path, monkeypatch):
    """SIGINT while step 2 is being committed (between the optimizer update and the teacher
    update): the checkpoint saved on the way out is exactly an uninterrupted run's
    checkpoint of the same step, and resuming ends where the uninterrupted run ends."""
    over = {"optim.max_steps": 3, "run.save_every": 1, "run.keep_last": 5,
            "teacher.ema_rate": 0.5, "optim.reference_prompts_per_step": 2}
    ref = trainer.train(_cfg(tiny_dir["qwen2_5_vl"], tmp_path, **{**over, "run.out": str(tmp_path / "ref")}))
    real_update = Teacher.update
    calls = []

    def interrupted_update(self, model):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # lands inside the step's commit
            time.sleep(0.05)
        return real_update(self, model)

    monkeypatch.setattr(Teacher, "update", interrupted_update)
    cfg = _cfg(tiny_dir["qwen2_5_vl"], tmp_path, **{**over, "run.out": str(tmp_path / "cut")})
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg)
    ck = checkpoint.latest(tmp_path / "cut")
    step = json.loads((ck / "state.json").read_text())["step"]
    want = ref / "checkpoints" / ck.name
    for name in ("adapters.safetensors", "teacher.safetensors", "optimizer.safetensors"):
        a, b = mx.load(str(want / name)), mx.load(str(ck / name))
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_allclose(np.array(b[k]), np.array(a[k]), **FP32, err_msg=f"{step} {name} {k}")
    monkeypatch.setattr(Teacher, "update", real_update)
    trainer.train(cfg, resume=True)
    _assert_same(_weights(ref), _weights(tmp_path / "cut"))
