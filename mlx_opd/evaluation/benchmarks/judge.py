"""Optional judge: a local MLX model decides, for the answers the rules do not score right,
whether the reply means the same as the gold, with the authors' judge prompt.

The authors send every reply their rules leave open to gpt-oss-120b with the prompt below
(VisionOPD/Vision-OPD eval/judge_qwenlm.py @c2e345f lines 33-42: question, gold, reply;
"Yes" or "No") and count "yes" as correct (cal_acc.py line 7-8, exact "yes"; we read the
reply with the yes/no rule, so "Yes." counts too). On a Mac that judge is out of reach, so
the rule-based accuracy stays the headline and the judge's result is reported beside it
(`judge` in OUT.json: how many it looked at, how many it accepted, the accuracy with its
verdicts), never mixed into the rule-based numbers. Any model mlx-vlm loads works
(Qwen2.5-VL-3B-Instruct-4bit is a reasonable small judge); it reads text only.
"""

from __future__ import annotations

from mlx_opd.evaluation.benchmarks.answers import clean, parse_yes_no

PROMPT = ("Your task is to judge whether the response expresses the same meaning as the "
          "answer of a question.\nThe question is: {question}\nThe answer is: {gt}\n"
          "The response is: {response}\nPlease check and compare them and then judge. "
          "If the response is correct, your output should be Yes. Otherwise, your output "
          "should be No. Directly give me your output.")


def judge_prompt(row: dict) -> str:
    return PROMPT.format(question=row["prompt"], gt=row["expected"],
                         response=clean(row["answer"]) or "(nothing)")


def read_verdict(text: str) -> bool | None:
    """The judge's reply: True (same meaning), False, or None (neither word)."""
    v = parse_yes_no(text)
    return None if v is None else v == "yes"


def make_judge(loaded, model_name: str, max_tokens: int = 8, log=None):
    """rows -> the judge's report; marks each row it looked at with `judged`."""
    from mlx_opd import models
    from mlx_opd.method import rollout

    def judge(rows: list[dict]) -> dict:
        todo = [r for r in rows if not r["correct"]]
        for i, r in enumerate(todo, 1):
            enc = models.encode_text(loaded, judge_prompt(r))
            out = rollout.sample(loaded, enc, max_tokens=max_tokens, temperature=0.0)
            r["judge_reply"] = models.decode(loaded, out.token_ids)
            r["judged"] = read_verdict(r["judge_reply"])
            if log:
                log(f"judge {i}/{len(todo)}")
        acc = {}
        for v in sorted({r["view"] for r in rows}):
            sel = [r for r in rows if r["view"] == v]
            acc[v] = sum(bool(r["correct"] or r.get("judged")) for r in sel) / len(sel)
        return {"model": model_name, "looked_at": len(todo),
                "accepted": sum(r.get("judged") is True for r in todo),
                "unreadable_verdicts": sum(r.get("judged") is None for r in todo),
                "acc_with_judge": acc,
                "readings": {f"{r['id']}|{r['view']}": r.get("judged") for r in todo}}
    return judge
