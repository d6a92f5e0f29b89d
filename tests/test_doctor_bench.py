"""`mlx-opd doctor --bench`: the report a Mac hands back, produced here on the CPU path."""

import json

from click.testing import CliRunner

from mlx_opd.cli import main
from mlx_opd.preflight.doctor_bench import FLAG_FACTOR, judge, markdown


def test_a_prediction_off_by_more_than_the_factor_is_flagged():
    assert judge(10.0, 10.0)["flagged"] is False
    assert judge(FLAG_FACTOR * 10.0, 10.0)["flagged"] is False  # the bound itself holds
    assert judge(FLAG_FACTOR * 10.0 * 1.01, 10.0)["flagged"] is True  # too slow / too big
    assert judge(10.0 / FLAG_FACTOR / 1.01, 10.0)["flagged"] is True  # too optimistic a plan
    assert judge(3.0, None) == {"measured": 3.0, "predicted": None, "ratio": None,
                                "flagged": False}  # no prediction: shown, never flagged


def test_doctor_bench_writes_its_report_on_this_cpu(tmp_path):
    out = tmp_path / "bench"
    r = CliRunner().invoke(main, ["doctor", "--bench", "Qwen/Qwen2-VL-2B-Instruct", "--layers",
                                  "1", "--photo", "320", "240", "--max-tokens", "4", "--out",
                                  str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["kind"] == "mlx-opd doctor --bench" and rep["machine"]["backend"] == "cpu"
    k = rep["kernel"]
    assert k["vocab"] == 151936 and k["ok"] and k["grad_err"] <= 1e-4  # the real vocabulary
    f = rep["figures"]
    assert set(f) == {"peak_memory_bytes", "step_seconds", "decode_tokens_per_s"}
    assert all(x["measured"] > 0 for x in f.values())
    mem = f["peak_memory_bytes"]  # plan predicts memory on every backend
    assert mem["predicted"] > 0 and mem["ratio"] == mem["measured"] / mem["predicted"]
    assert f["step_seconds"]["predicted"] is None  # plan times Apple chips only
    assert rep["flagged"] == sorted(n for n, x in f.items() if x["flagged"])
    text = (out / "report.md").read_text()
    assert "| peak_memory_bytes |" in text and text in r.output
    assert not (out / "replica").exists() and (out / "train.log").exists()
    # the same report with a plan twice too optimistic says so
    rep["figures"]["peak_memory_bytes"] = judge(mem["predicted"] * 3, mem["predicted"])
    assert "off by more than 2x" in markdown(rep)
