"""Held-out validation during training, and the guards that stop a run drifting off.

    validation: {fraction: 0.1, every: 20, patience: 3, min_format: 0.5}

Every `validation.every` steps (and at the end) the student answers the held-out samples
greedily, all prompts of a group decoded together, their prompt encodings made once:
- accuracy per view where answers exist (`val/plain_acc`, `val/student_acc`,
  `val/teacher_acc`) and the gap (teacher - plain);
- `val/format`: the share of answers the reader can parse (plain and student views);
- `val/mean_answer_len`: tokens per student answer;
- `val/divergence`: the training divergence between the teacher (its current weights, on
  the crop) and the student (on its view) along the student's greedy answers, token mean.
  It needs no labels, so it guards unlabelled data too.
The guards (`check`) stop the run when the format share falls below `min_format`, when
the student's answers on the crop fall below their step-0 accuracy by more than
`max_teacher_drop` (closing the gap by forgetting; such a step is never the best, and
`patience` of them in a row stop the run; 0: they are only skipped), or when the criterion is worse than its
best by more than `margin` for `patience` evaluations in a row; the best adapter by the criterion is kept as RUN_DIR/adapters/best (trainer.py).
Guard state (history, best, the count of worse evaluations) lives in the checkpoint, so a
resumed run keeps it exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from mlx_opd.data import Sample, read_samples
from mlx_opd.method.answers import accuracy_by_view, card_fields, grade
from mlx_opd.run.config import DataConfig, TrainConfig, ValidationConfig

VAL_SEED_OFFSET = 1_000_003  # the carve's own stream, apart from the data order's


def carve(samples: list[Sample], cfg: TrainConfig) -> tuple[list[Sample], list[Sample], str]:
    """(training samples, validation samples, one line saying where they came from)."""
    v = cfg.validation
    if v.path:
        held, _ = read_samples(DataConfig(path=v.path, box_format=cfg.data.box_format,
                                          on_bad_sample=cfg.data.on_bad_sample),
                               cfg.views.needs_boxes())
        from mlx_opd.method.views import usable

        held = usable(held, cfg.views, cfg.data.on_bad_sample)[0]
        held = held[:v.limit] if v.limit else held
        return samples, held, f"validation: {len(held)} samples from {v.path}"
    if v.fraction <= 0:
        return samples, [], "validation: off"
    n = len(samples)
    k = max(1, round(v.fraction * n))
    if k >= n:
        raise ValueError(f"validation.fraction={v.fraction} leaves no training data of {n} "
                         "samples; lower it or give validation.path")
    order = np.random.default_rng(cfg.run.seed + VAL_SEED_OFFSET).permutation(n)
    val_idx = set(int(i) for i in order[:k])
    held = [samples[i] for i in sorted(val_idx)]
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    shown = held[:v.limit] if v.limit else held
    return train, shown, (f"validation: {len(shown)} of {k} samples carved from the training "
                          f"data (seed {cfg.run.seed}), never trained on; {len(train)} train")


def views_of(sample: Sample) -> tuple[str, ...]:
    plain = not sample.boxed_image or sample.clean_image is not None
    return (("plain",) if plain else ()) + ("student", "teacher")


class Validator:
    """The validation samples with their prompts encoded once per view."""

    def __init__(self, loaded, samples: list[Sample], cfg: TrainConfig):
        from mlx_opd import models
        from mlx_opd.method.views import plain_view, student_view, teacher_view

        self.samples, self.cfg = samples, cfg
        make = {"plain": plain_view, "student": student_view, "teacher": teacher_view}
        self.encs: dict[str, list] = {"plain": [], "student": [], "teacher": []}
        for i, s in enumerate(samples):
            for name in views_of(s):
                view = make[name](s, cfg.views)
                self.encs[name].append((i, models.encode(loaded, view.images, view.text,
                                                         cfg.pixels.for_view(name))))

    def _answers(self, loaded, name: str) -> dict[int, list[int]]:
        from mlx_opd import models
        from mlx_opd.method.rollout import sample_prompts

        v, out = self.cfg.validation, {}
        eos = set(models.eos_token_ids(loaded))
        pairs = self.encs[name]
        for a in range(0, len(pairs), v.batch):
            group = pairs[a:a + v.batch]
            rolled = sample_prompts(loaded, [e for _, e in group], 1, v.max_tokens,
                                    temperature=0.0)
            for (i, _), r in zip(group, rolled):
                out[i] = [t for t in r.token_ids[0] if t not in eos]
        return out

    def run(self, loaded, teacher) -> dict:
        """The `val/...` metrics of the model as it is now."""
        from mlx_opd import models

        loaded.model.eval()
        record, parsed_flags = {"val/n": len(self.samples)}, []
        answers, right, counted = {}, {}, {}
        self.rows = []  # per sample and view, as `eval` writes them (the run's page reads them)
        for name in ("plain", "student", "teacher"):
            if not self.encs[name]:
                continue
            answers[name] = self._answers(loaded, name)
            right[name], counted[name] = 0, 0
            for i, ids in answers[name].items():
                s = self.samples[i]
                text = models.decode(loaded, ids)
                got, ok = grade(text, s)
                if name != "teacher":
                    parsed_flags.append(got is not None)
                counted[name] += bool(s.answer)
                right[name] += ok
                self.rows.append({"id": s.id or str(i), "view": name, "answer": text,
                                  "parsed": got, "expected": s.answer, "correct": ok,
                                  **card_fields(s)})
        record.update({f"val/{k}": x for k, x in accuracy_by_view(right, counted).items()})
        record["val/format"] = sum(parsed_flags) / max(len(parsed_flags), 1)
        lens = [len(x) for x in answers["student"].values()]
        record["val/mean_answer_len"] = sum(lens) / max(len(lens), 1)
        record["val/divergence"] = self.divergence(loaded, teacher, answers["student"])
        return record

    def divergence(self, loaded, teacher, student_answers: dict[int, list[int]]) -> float:
        """Token-mean training divergence (teacher on the crop vs the student on its view)
        along the student's greedy answers; no gradients."""
        import mlx.core as mx

        from mlx_opd import models
        from mlx_opd.method import prefix
        from mlx_opd.method.loss import fused_token_divergence
        from mlx_opd.method.score import divergence_kwargs

        c, model = self.cfg.loss, loaded.model
        teacher_encs = dict(self.encs["teacher"])
        total, tokens = 0.0, 0
        for i, s_enc in self.encs["student"]:
            ids_list = student_answers.get(i) or []
            if not ids_list:
                continue
            ids, mask = models.pad_responses([ids_list])
            with teacher.weights_in(model):
                t_hidden = prefix.response_hidden(model, teacher_encs[i], ids)
            s_hidden = prefix.response_hidden(model, s_enc, ids)
            # the sampled estimator is a surrogate: validation reports the divergence
            per_token = fused_token_divergence(
                s_hidden, t_hidden, models.lm_head(model), mask, reduction="none",
                sampled_ids=ids, **divergence_kwargs(
                    self.cfg, "topk" if c.estimator == "sampled" else None))
            total += float(per_token.sum().item())
            tokens += int(mask.sum().item())
            mx.clear_cache()
        return total / tokens if tokens else 0.0


# --- guards ----------------------------------------------------------------------------------

@dataclass
class GuardState:
    """What the guards remember between evaluations (saved in every checkpoint)."""

    history: list
    best: dict | None = None        # {"step", "value", "criterion", "metrics"}
    worse_in_a_row: int = 0
    stopped: str | None = None      # why a guard stopped the run, once one has
    forgot_in_a_row: int = 0        # evaluations in a row with the crop view fallen

    def to_dict(self) -> dict:
        return {"history": self.history, "best": self.best, "worse_in_a_row": self.worse_in_a_row,
                "stopped": self.stopped, "forgot_in_a_row": self.forgot_in_a_row}

    @classmethod
    def from_dict(cls, d: dict | None) -> "GuardState":
        d = d or {}
        return cls(list(d.get("history", [])), d.get("best"), int(d.get("worse_in_a_row", 0)),
                   d.get("stopped"), int(d.get("forgot_in_a_row", 0)))


def criterion_of(v: ValidationConfig, record: dict) -> str:
    if v.criterion != "auto":
        return v.criterion
    if "val/plain_acc" in record:
        return "plain_acc"
    return "student_acc" if "val/student_acc" in record else "divergence"


def score_of(criterion: str, record: dict) -> float:
    """Higher is better: accuracy as is, divergence negated."""
    if criterion == "divergence":
        return -record["val/divergence"]
    key = f"val/{criterion}"
    if key not in record:
        raise ValueError(f"validation.criterion={criterion} needs {key}, which these validation "
                         "samples do not give (no answers, or no plain view); use divergence")
    return record[key]


def teacher_drop(state: GuardState, record: dict, v: ValidationConfig) -> str | None:
    """Why this evaluation counts as forgetting (the student's crop answers fell below
    their first evaluation's by more than `max_teacher_drop`), or None."""
    key = "val/teacher_acc"
    if v.max_teacher_drop is None or key not in record or not state.history \
            or key not in state.history[0]:
        return None
    start = state.history[0][key]
    if record[key] >= start - v.max_teacher_drop - 1e-9:  # 1e-9: shares of whole counts
        return None
    return (f"forgetting: the teacher view (crop) is answered at {record[key]:.2f}, below its "
            f"{start:.2f} at step {state.history[0]['step']} by more than "
            f"validation.max_teacher_drop={v.max_teacher_drop:g}")


def check(state: GuardState, record: dict, v: ValidationConfig, step: int
          ) -> tuple[bool, str | None]:
    """(is this the best so far, why to stop or None); updates `state`. Pure apart from it."""
    is_best, why = _check(state, record, v, step)
    state.stopped = why
    return is_best, why


def _check(state: GuardState, record: dict, v: ValidationConfig, step: int
           ) -> tuple[bool, str | None]:
    crit = criterion_of(v, record)
    value = score_of(crit, record)
    forgot = teacher_drop(state, record, v)
    state.history.append({"step": step, **record})
    is_best = forgot is None and (state.best is None or value > state.best["value"])
    if is_best:
        state.best = {"step": step, "value": value, "criterion": crit, "metrics": dict(record)}
    best = state.best["value"] if state.best is not None else value
    state.worse_in_a_row = state.worse_in_a_row + 1 if value < best - v.margin else 0
    state.forgot_in_a_row = state.forgot_in_a_row + 1 if forgot else 0
    if v.min_format > 0 and record["val/format"] < v.min_format:
        return is_best, (f"answer format: {record['val/format']:.2f} of the validation answers "
                         f"are readable, below validation.min_format={v.min_format:g}")
    if forgot and v.patience and state.forgot_in_a_row >= v.patience:
        return is_best, f"{forgot}, {state.forgot_in_a_row} evaluation(s) in a row"
    if v.patience and state.worse_in_a_row >= v.patience:
        shown = -value if crit == "divergence" else value
        best_shown = -best if crit == "divergence" else best
        return is_best, (f"{crit} {shown:.3f} has been worse than its best {best_shown:.3f} "
                         f"(step {state.best['step']}) by more than {v.margin:g} for "
                         f"{state.worse_in_a_row} evaluations in a row")
    return is_best, None


def format_line(step: int, record: dict, state: GuardState) -> str:
    """`val step 20 | plain 0.62 | student 0.62 | crop 0.95 | gap +0.33 | format 1.00 | ...`"""
    parts = [f"val step {step}"]
    for key, label in (("plain_acc", "plain"), ("student_acc", "student"),
                       ("teacher_acc", "crop")):
        if f"val/{key}" in record:
            parts.append(f"{label} {record[f'val/{key}']:.2f}")
    if "val/gap" in record:
        parts.append(f"gap {record['val/gap']:+.2f}")
    parts.append(f"format {record['val/format']:.2f}")
    parts.append(f"divergence {record['val/divergence']:.4g}")
    if state.best is not None:
        parts.append(f"best: step {state.best['step']} ({state.best['criterion']})")
    return " | ".join(parts)


ROWS_DIR = "validation"  # RUN_DIR/validation/step_NNNNNN.jsonl: each evaluation's answers


def write_rows(run_dir, step: int, rows: list[dict]) -> None:
    """One evaluation's answers per sample and view (the run's page compares them)."""
    from pathlib import Path

    folder = Path(run_dir) / ROWS_DIR
    folder.mkdir(exist_ok=True)
    (folder / f"step_{step:06d}.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def summary_lines(state: GuardState, step: int, run_dir, stop_reason: str | None) -> str:
    """The end of a validated run: why it ended, and both adapters with their figures."""
    from pathlib import Path

    from mlx_opd.run.run_dir import best_adapter_dir

    run_dir = Path(run_dir)
    last = state.history[-1] if state.history else {}
    lines = [f"stopped early at step {step}: {stop_reason}" if stop_reason
             else f"validation: {len(state.history)} evaluations, the last at step {step}"]

    def figures(rec: dict) -> str:
        keys = ("plain_acc", "student_acc", "teacher_acc", "gap", "format", "divergence")
        return ", ".join(f"{k} {rec[f'val/{k}']:.3f}" for k in keys if f"val/{k}" in rec)

    last_dir, best_dir = run_dir / "adapters", best_adapter_dir(run_dir)
    lines.append(f"  last adapter: {last_dir} (step {step}; {figures(last)})")
    if state.best is not None:
        b = state.best
        lines.append(f"  best adapter: {best_dir} (step {b['step']}, by "
                     f"{b['criterion']}; {figures(b['metrics'])})")
    return "\n".join(lines)
