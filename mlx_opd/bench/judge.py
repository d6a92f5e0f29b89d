"""Optional judge: a local MLX model maps answers the rules could not read to an option.

The authors judge every answer with gpt-oss-120b; on a Mac that is out of reach, so the
rule-based accuracy stays the headline and the judge only looks at the `unparsed` rows.
Its result is reported separately (`judge` in OUT.json: how many it resolved and the
accuracy with its readings), never mixed into the rule-based numbers. Any model mlx-vlm
loads works (Qwen2.5-VL-3B-Instruct-4bit is a reasonable small judge); it reads text only.
"""

from __future__ import annotations

from .answers import parse_letter

PROMPT = ("Below is a multiple-choice question and an answer someone gave to it.\n\n"
          "Question:\n{prompt}\n\nAnswer given:\n{answer}\n\n"
          "Which option does the answer given choose? Reply with the option's letter only, "
          "or with the word none if it chooses no option.")
YES_NO_OPTIONS = ("yes", "no")


def judge_prompt(row: dict, kind: str) -> str:
    prompt = row["prompt"]
    if kind == "yesno":
        prompt += "\nA. yes\nB. no"
    return PROMPT.format(prompt=prompt, answer=row["answer"].strip() or "(nothing)")


def read_verdict(text: str, row: dict, kind: str) -> str | None:
    """The judge's reply as an answer in the benchmark's format, or None."""
    options = YES_NO_OPTIONS if kind == "yesno" else tuple(row.get("options") or ())
    letter = parse_letter(text, options)
    if letter is None:
        return None
    if kind == "yesno":
        return YES_NO_OPTIONS[ord(letter) - 65] if letter in "AB" else None
    return letter


def make_judge(loaded, kind: str, model_name: str, max_tokens: int = 8, log=None):
    """rows -> the judge's report; marks each unparsed row with `judged`."""
    from .. import models, rollout

    def judge(rows: list[dict]) -> dict:
        todo = [r for r in rows if r["parsed"] is None]
        for i, r in enumerate(todo, 1):
            enc = models.encode_text(loaded, judge_prompt(r, kind))
            out = rollout.sample(loaded, enc, max_tokens=max_tokens, temperature=0.0)
            r["judge_reply"] = models.decode(loaded, out.token_ids)
            r["judged"] = read_verdict(r["judge_reply"], r, kind)
            if log:
                log(f"judge {i}/{len(todo)}")
        acc = {}
        for v in sorted({r["view"] for r in rows}):
            sel = [r for r in rows if r["view"] == v]
            ok = sum(r["correct"] or (r.get("judged") is not None and r["judged"] == r["expected"])
                     for r in sel)
            acc[v] = ok / len(sel)
        return {"model": model_name, "looked_at": len(todo),
                "resolved": sum(r.get("judged") is not None for r in todo),
                "still_unparsed": sum(r.get("judged") is None for r in todo),
                "acc_with_judge": acc,
                "readings": {f"{r['id']}|{r['view']}": r.get("judged") for r in todo}}
    return judge
