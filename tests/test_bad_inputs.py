"""Nothing lost, nothing silently changed, one clear line for every bad input.

- Every command that writes a folder: a user's file in the target survives with and
  without --force (files.py's rule: a user's folder is never written into; a folder mlx-opd
  wrote that holds anything else is moved aside, not deleted).
- A resume is the run it resumes: settings that define the run are refused with both
  values; those that may change are said and recorded.
- One adapter check wherever an adapter meets a base.
- The catalogue: each bad input ends in one line (what, where, how to fix), exit status 2,
  no traceback, and nothing already written is lost.
"""

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from mlx_opd.cli import main
from mlx_opd.run.files import MARKER

from .next_steps import run_next

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.yaml"
DATA = ROOT / "examples" / "data" / "samples.jsonl"
USER_TEXT = "my own notes"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, *words):
    """Exit 2, one `Error:` line naming `words`, no traceback."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, r.output
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


def user_folder(path: Path) -> Path:
    """A folder a user wrote: a file and a sub-folder with a file."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text(USER_TEXT)
    (path / "sub" / "x.txt").write_text(USER_TEXT)
    return path


def survives(root: Path, name: str = "notes.txt") -> bool:
    """The user's file is still there, with its text, in place or in a moved-aside copy."""
    return any(p.read_text() == USER_TEXT for p in root.rglob(name))


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory):
    """A finished 2-step run on the tiny model (qwen2_5_vl)."""
    out = tmp_path_factory.mktemp("run") / "run"
    r = invoke("train", "--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data", DATA,
               "--out", out, "--max-steps", 2)
    assert r.exit_code == 0, r.output
    return out


# --- every command that writes a folder ----------------------------------------------------

def _archive_dataset(root: Path) -> Path:
    """A dataset folder in the authors' layout with an image archive (extract-data)."""
    (root / "images").mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, "PNG")
    with tarfile.open(root / "images" / "images.tar.gz", "w:gz") as tar:
        for name in ("a.png", "notes.txt"):
            data = buf.getvalue() if name.endswith(".png") else b"from the archive"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return root


def _commands(tiny, run, tmp):
    """command -> argv writing into {out} (each a folder the command owns when it wrote it)."""
    synth = tmp / "synth-src"
    if not synth.exists():
        assert invoke("synth", "--out", synth, "--n", 2, "--n-heldout", 1).exit_code == 0
    return {
        "train": ["train", "--config", EXAMPLE, "--model", tiny, "--data", DATA, "--out", "{out}",
                  "--max-steps", 1],
        "views": ["views", "--data", DATA, "--out", "{out}", "--limit", 1],
        "export": ["export", "--model", tiny, "--adapter", run, "--out", "{out}", "--format",
                   "peft"],
        "export-data": ["export-data", "--data", DATA, "--out", "{out}", "--format", "verl"],
        "synth": ["synth", "--out", "{out}", "--n", 2, "--n-heldout", 1],
        "tiny-model": ["tiny-model", "--family", "qwen2_vl", "--out", "{out}"],
        "build-data": ["build-data", "--images", synth / "train", "--model", tiny, "--out",
                       "{out}", "--question", "What colour is the small {label}?", "--options",
                       "red,green", "--no-validate", "--k", 1, "--m", 1, "--limit", 1],
    }


FOLDER_COMMANDS = ["train", "views", "export", "export-data", "synth", "tiny-model",
                   "build-data"]


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_a_users_folder_is_never_written_into(command, tiny_dir, run, tmp_path):
    argv = _commands(tiny_dir["qwen2_5_vl"], run, tmp_path)[command]
    out = user_folder(tmp_path / "mine")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for force in ([], ["--force"]):
        r = invoke(*[str(a).replace("{out}", str(out)) for a in argv], *force)
        one_line_error(r, str(out))
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
        assert (out / "notes.txt").read_text() == USER_TEXT


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
def test_force_on_its_own_output_keeps_what_the_user_added(command, tiny_dir, run, tmp_path):
    argv = _commands(tiny_dir["qwen2_5_vl"], run, tmp_path)[command]
    out = tmp_path / "out"
    args = [str(a).replace("{out}", str(out)) for a in argv]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert (out / MARKER).exists()
    (out / "notes.txt").write_text(USER_TEXT)  # the user adds a file to mlx-opd's folder
    if command != "build-data":  # build-data resumes a build in place without --force
        r = invoke(*args)
        one_line_error(r, "--force")
        assert (out / "notes.txt").read_text() == USER_TEXT
    r = invoke(*args, "--force")
    assert r.exit_code == 0, r.output
    assert survives(tmp_path)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("out.old-")]
    assert len(aside) == 1 and (aside[0] / "notes.txt").read_text() == USER_TEXT
    assert str(aside[0]) in r.output  # said, not silent


def test_force_replaces_its_own_untouched_output_without_a_copy(tiny_dir, run, tmp_path):
    """A sealed folder nobody touched is replaced in place (no pile of old copies)."""
    argv = _commands(tiny_dir["qwen2_5_vl"], run, tmp_path)["views"]
    args = [str(a).replace("{out}", str(tmp_path / "v")) for a in argv]
    assert invoke(*args).exit_code == 0
    assert invoke(*args, "--force").exit_code == 0
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name]
    (tmp_path / "v" / "0000_plain.txt").write_text("edited by the user")  # an edit counts
    assert invoke(*args, "--force").exit_code == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("v.old-")]
    assert (aside[0] / "0000_plain.txt").read_text() == "edited by the user"


def test_eval_keeps_an_existing_result(tiny_dir, tmp_path):
    out = tmp_path / "e.json"
    out.write_text('{"mine": 1}')
    r = invoke("eval", "--model", tiny_dir["qwen2_5_vl"], "--data", DATA, "--out", out,
               "--views", "plain", "--max-tokens", 2)
    assert r.exit_code == 0, r.output
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("e.old-")]
    assert [p.read_text() for p in kept] == ['{"mine": 1}'] and str(kept[0]) in r.output
    assert json.loads(out.read_text())["n"] == 3


def test_demo_refuses_a_users_folder(tmp_path):
    out = user_folder(tmp_path / "mine")
    one_line_error(invoke("demo", "--quick", "--out", out), str(out))
    assert (out / "notes.txt").read_text() == USER_TEXT


def test_extract_data_never_overwrites_a_file_already_there(tmp_path):
    root = _archive_dataset(tmp_path / "ds")
    (root / "images" / "notes.txt").write_text(USER_TEXT)
    (root / "mine.txt").write_text(USER_TEXT)
    r = invoke("extract-data", root)
    assert r.exit_code == 0, r.output
    assert (root / "images" / "a.png").exists()
    assert (root / "images" / "notes.txt").read_text() == USER_TEXT
    assert (root / "mine.txt").read_text() == USER_TEXT and "left as they are" in r.output
    assert f"next: mlx-opd train --data {root} --model MODEL" in r.output


def test_checkpoint_pruning_keeps_a_file_the_user_put_there(tiny_dir, tmp_path):
    out = tmp_path / "run"
    r = invoke("train", "--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data", DATA,
               "--out", out, "--max-steps", 2, "--save-every", 1, "--set", "run.keep_last=1")
    assert r.exit_code == 0, r.output
    first = out / "checkpoints" / "step_000002"
    (first / "notes.txt").write_text(USER_TEXT)
    r = invoke("train", "--resume", out, "--max-steps", 4)
    assert r.exit_code == 0, r.output
    assert survives(out) and not first.exists()


# --- a resume is the run it resumes --------------------------------------------------------

@pytest.mark.parametrize("change,key,old,new", [
    (["--set", "lora.rank=4"], "lora.rank", "8", "4"),
    (["--set", "optim.lr=0.1"], "optim.lr", "0.001", "0.1"),
    (["--seed", "5"], "run.seed", "0", "5"),
    (["--set", "loss.kind=forward_kl"], "loss.kind", "'jsd'", "'forward_kl'"),
])
def test_resume_refuses_a_change_to_what_defines_the_run(run, change, key, old, new):
    before = (run / "config.yaml").read_bytes()
    r = invoke("train", "--resume", run, "--max-steps", 3, *change)
    err = one_line_error(r, key, f"{old} in the run", f"{new} now", "model.adapter=")
    assert "--out NEW_RUN" in err
    assert (run / "config.yaml").read_bytes() == before


def test_resume_with_another_config_file_follows_the_same_rules(run, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"lora": {"rank": 4}}))
    one_line_error(invoke("train", "--resume", run, "--config", other), "lora.rank")
    other.write_text(yaml.safe_dump({"run": {"save_every": 7}}))
    r = invoke("train", "--resume", run, "--config", other, "--max-steps", 2)
    assert r.exit_code == 0, r.output
    assert "resume: run.save_every 2 -> 7" in r.output


def test_resume_changes_what_may_change_with_a_notice_and_a_record(tiny_dir, tmp_path):
    out = tmp_path / "run"
    assert invoke("train", "--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data",
                  DATA, "--out", out, "--max-steps", 1).exit_code == 0
    r = invoke("train", "--resume", out, "--max-steps", 2)
    assert r.exit_code == 0, r.output
    assert "resume: optim.max_steps 1 -> 2" in r.output
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["changed"] == {"optim.max_steps": [1, 2]} and history[-1]["step"] == 1
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["max_steps"] == 2 and saved["lora"]["rank"] == 8
    # config.yaml describes the tensors: rank 8 in the adapter too
    adapter = json.loads((out / "adapters" / "adapter_config.json").read_text())
    assert adapter["lora_parameters"]["rank"] == 8


def test_a_new_run_from_a_runs_adapters_takes_their_shape(run, tiny_dir, tmp_path):
    """The fork the refusal suggests: config.yaml then says the adapter's rank."""
    r = invoke("train", "--config", run / "config.yaml", "--set",
               f"model.adapter={run / 'adapters'}", "--out", tmp_path / "fork", "--max-steps", 1,
               "--set", "lora.rank=4")
    assert r.exit_code == 0, r.output
    assert "lora.rank = 8" in r.output
    assert yaml.safe_load((tmp_path / "fork" / "config.yaml").read_text())["lora"]["rank"] == 8


# --- one adapter check wherever an adapter meets a base -------------------------------------

@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A run on a wider qwen2_5_vl toy (hidden 128) than the shared tiny one (64)."""
    from mlx_opd.toy.tiny import TinySize, build_tiny_model

    root = tmp_path_factory.mktemp("wide")
    wide = build_tiny_model("qwen2_5_vl", root / "wide", size=TinySize(hidden_size=128,
                                                                       intermediate_size=256))
    r = invoke("train", "--config", EXAMPLE, "--model", wide, "--data", DATA, "--out",
               root / "run", "--max-steps", 1)
    assert r.exit_code == 0, r.output
    return root / "run"


def _adapter_commands(base, adapter, tmp):
    image = ROOT / "examples" / "data" / "scene0.png"
    return {
        "eval": ["eval", "--model", base, "--adapter", adapter, "--data", DATA, "--out",
                 tmp / "e.json", "--views", "plain", "--max-tokens", 2],
        "compare": ["compare", "--model", base, "--adapter", adapter, "--image", image,
                    "--question", "What colour?", "--box", "84,14,98,28", "--max-tokens", 2],
        "export": ["export", "--model", base, "--adapter", adapter, "--out", tmp / "x",
                   "--format", "mlx"],
        "build-data": ["build-data", "--images", ROOT / "examples" / "data", "--model", base,
                       "--adapter", adapter, "--out", tmp / "d", "--question", "What {label}?",
                       "--options", "a,b", "--no-validate", "--k", 1, "--m", 1],
        "train": ["train", "--config", EXAMPLE, "--model", base, "--data", DATA, "--out",
                  tmp / "r", "--set", f"model.adapter={adapter}", "--max-steps", 1],
    }


@pytest.mark.parametrize("command", ["eval", "compare", "export", "build-data", "train"])
def test_an_adapter_from_a_wider_model_is_one_line(command, tiny_dir, wide_run, tmp_path):
    argv = _adapter_commands(tiny_dir["qwen2_5_vl"], wide_run / "adapters", tmp_path)[command]
    one_line_error(invoke(*argv), "does not fit", str(tiny_dir["qwen2_5_vl"]))


@pytest.mark.parametrize("command", ["eval", "compare", "export", "build-data"])
def test_an_adapter_from_another_family_is_one_line(command, tiny_dir, run, tmp_path):
    argv = _adapter_commands(tiny_dir["qwen3_vl"], run / "adapters", tmp_path)[command]
    one_line_error(invoke(*argv), "qwen2_5_vl", "qwen3_vl", str(tiny_dir["qwen3_vl"]))


def test_eval_with_a_run_uses_the_runs_views_and_says_so(tiny_dir, tmp_path):
    out = tmp_path / "run"
    assert invoke("train", "--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data", DATA,
                  "--out", out, "--max-steps", 1, "--set", "pixels.max_pixels=3136",
                  "--set", "views.zoom=3").exit_code == 0
    r = invoke("eval", "--model", tiny_dir["qwen2_5_vl"], "--adapter", out, "--data", DATA,
               "--out", tmp_path / "e.json", "--views", "plain", "--max-tokens", 2)
    assert r.exit_code == 0, r.output
    assert f"views and pixel settings from {out / 'config.yaml'}" in r.output
    row = json.loads((tmp_path / "e.jsonl").read_text().splitlines()[0])
    r = invoke("eval", "--model", tiny_dir["qwen2_5_vl"], "--data", DATA, "--out",
               tmp_path / "d.json", "--views", "plain", "--max-tokens", 2)
    default = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])
    assert row["prompt_tokens"] < default["prompt_tokens"]  # 56 x 56 pixels: the run's


# --- bad rows are skipped where asked, whatever their fault --------------------------------

def _mixed_data(tmp_path: Path) -> Path:
    """Two good rows and one bad row of each kind, in a JSONL beside the example images."""
    good = [json.loads(x) for x in DATA.read_text().splitlines()]
    for row in good:
        row["image"] = str(DATA.parent / row["image"])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    bad = ['{"image": "x.png", "question": ',  # malformed JSON
           "[1, 2, 3]",  # not an object
           json.dumps({**good[0], "box": "84,14,98,28"}),  # wrong type
           json.dumps({**good[0], "box": [98, 28, 84, 14]}),  # inverted box
           json.dumps({**good[0], "image": str(tmp_path / "broken.png")}),  # bad image
           json.dumps({**good[0], "image": str(tmp_path / "missing.png")}),  # missing image
           json.dumps({**good[0], "options": "red"})]  # options not a list
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(good[0])] + bad + [json.dumps(good[1])]) + "\n")
    return path


BAD_ROWS = 7


@pytest.mark.parametrize("command", ["train", "eval", "views", "export-data"])
def test_bad_rows_stop_by_default_and_are_skipped_and_counted_when_asked(command, tiny_dir,
                                                                       tmp_path):
    data = _mixed_data(tmp_path)
    tiny = tiny_dir["qwen2_5_vl"]
    argv = {"train": ["train", "--config", EXAMPLE, "--model", tiny, "--data", data, "--out",
                      tmp_path / "run", "--max-steps", 1],
            "eval": ["eval", "--model", tiny, "--data", data, "--out", tmp_path / "e.json",
                     "--views", "plain", "--max-tokens", 2],
            "views": ["views", "--data", data, "--out", tmp_path / "v"],
            "export-data": ["export-data", "--data", data, "--out", tmp_path / "x"]}[command]
    err = one_line_error(invoke(*argv), f"{data}:2", "invalid JSON", "--on-bad-sample skip")
    assert err.count("Fix:") == 1
    r = invoke(*argv, "--on-bad-sample", "skip")
    assert r.exit_code == 0, r.output
    assert f"{BAD_ROWS} skipped" in r.output or r.output.count("skipped:") == BAD_ROWS, r.output
    assert f"{data}:2" in r.output  # file and line of the first


def test_a_data_error_in_train_is_said_once(tiny_dir, tmp_path):
    r = invoke("train", "--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data",
               tmp_path / "none.jsonl", "--out", tmp_path / "run")
    one_line_error(r, "none.jsonl")
    assert "memory check skipped" not in r.output


# --- what comes next works as printed ------------------------------------------------------

def test_trains_next_steps_run_as_printed(run, tiny_dir, tmp_path):
    r = invoke("train", "--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data", DATA,
               "--out", tmp_path / "run", "--max-steps", 1)
    assert r.exit_code == 0, r.output
    results = run_next(r.output, {"HELDOUT.jsonl": DATA}, expect=2)
    # and the eval's own next step (a comparison with the base's eval)
    base = invoke("eval", "--model", tiny_dir["qwen2_5_vl"], "--data", DATA, "--out",
                  tmp_path / "before.json", "--views", "plain", "--max-tokens", 2)
    run_next(results[0].output, {"BEFORE.json": tmp_path / "before.json"})
    run_next(base.output, {"AFTER.json": tmp_path / "run-eval.json"})


def test_a_validated_runs_next_steps_agree_and_run(tiny_dir, tmp_path):
    r = invoke("train", "--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data", DATA,
               "--out", tmp_path / "run", "--max-steps", 2, "--set", f"validation.path={DATA}",
               "--set", "validation.every=1")
    assert r.exit_code == 0, r.output
    assert r.output.count("next:") == 1, r.output
    run_next(r.output, expect=2)  # no placeholder: the validation file is the data


@pytest.mark.parametrize("fmt", ["hf", "mlx"])
def test_exports_next_steps_run_as_printed(fmt, run, tiny_dir, tmp_path):
    r = invoke("export", "--model", tiny_dir["qwen2_5_vl"], "--adapter", run, "--out",
               tmp_path / "x", "--format", fmt)
    assert r.exit_code == 0, r.output
    run_next(r.output, {"HELDOUT.jsonl": DATA})


@pytest.mark.parametrize("fmt", ["verl", "swift"])
def test_export_data_says_what_to_run_on_the_gpu_machine(fmt, tmp_path):
    r = invoke("export-data", "--data", DATA, "--out", tmp_path / "x", "--format", fmt)
    assert r.exit_code == 0, r.output
    line = [ln for ln in r.output.splitlines() if ln.startswith("next:")]
    script = "run_vision_opd.sh" if fmt == "verl" else "run_swift_opsd.sh"
    assert len(line) == 1 and script in line[0] and (tmp_path / "x" / script).exists()


# --- the catalogue of bad inputs -----------------------------------------------------------

def _catalogue(tiny, run, tmp):
    """(case, argv, words the one line must hold)."""
    (tmp / "empty.jsonl").write_text("")
    (tmp / "binary.jsonl").write_bytes(b"\x00\xff\xfe garbage \x89PNG")
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "tab.yaml").write_text("optim:\n\tlr: 1\n")
    (tmp / "notjson.json").write_text("{not json")
    (tmp / "other.json").write_text(json.dumps({"views": {"plain": 0.5}}))
    (tmp / "adir").mkdir(exist_ok=True)
    dir_image = tmp / "dir-image.jsonl"
    dir_image.write_text(json.dumps({"image": str(tmp / "adir"), "question": "Q?",
                                     "box": [1, 1, 5, 5]}) + "\n")
    image = ROOT / "examples" / "data" / "scene0.png"
    return [
        ("set typo blamed on --set", ["train", "--config", EXAMPLE, "--set", "rolout.n=2"],
         ["--set rolout.n", "rollout"]),
        ("set without =", ["train", "--config", EXAMPLE, "--set", "optim.lr"], ["--set"]),
        ("config is a list", ["train", "--config", tmp / "list.yaml", "--model", tiny, "--data",
                              DATA], ["list.yaml"]),
        ("config with a tab", ["train", "--config", tmp / "tab.yaml"], ["tab.yaml", "YAML"]),
        ("empty data", ["eval", "--model", tiny, "--data", tmp / "empty.jsonl", "--out",
                        tmp / "e.json"], ["empty.jsonl", "empty"]),
        ("binary data", ["views", "--data", tmp / "binary.jsonl", "--out", tmp / "v"],
         ["binary.jsonl"]),
        ("image is a folder", ["views", "--data", dir_image, "--out", tmp / "v"],
         ["dir-image.jsonl:1"]),
        ("resume without a run", ["train", "--resume", tmp / "adir"], ["config.yaml"]),
        ("resume and force", ["train", "--resume", run, "--force"], ["--resume", "--force"]),
        ("adapter is not an adapter", ["eval", "--model", tiny, "--adapter", tmp / "adir",
                                       "--data", DATA, "--out", tmp / "e.json"], ["adir"]),
        ("compare on a non-eval JSON", ["eval", "--compare", tmp / "other.json",
                                        tmp / "other.json"], ["other.json", "eval"]),
        ("compare on unreadable JSON", ["eval", "--compare", tmp / "notjson.json",
                                        tmp / "other.json"], ["notjson.json"]),
        ("box outside the image", ["compare", "--model", tiny, "--image", image, "--question",
                                   "Q?", "--box", "10,10,9000,9000"], ["box"]),
        ("box not numbers", ["compare", "--model", tiny, "--image", image, "--question", "Q?",
                             "--box", "a,b,c,d"], ["--box"]),
        ("views into a file", ["views", "--data", DATA, "--out", tmp / "notjson.json"],
         ["notjson.json"]),
        ("demo into a file", ["demo", "--quick", "--out", tmp / "notjson.json"],
         ["notjson.json"]),
        ("export-data like for swift", ["export-data", "--data", DATA, "--out", tmp / "x2",
                                        "--format", "swift", "--like", tmp / "notjson.json"],
         ["--like"]),
        ("build-data into its photos", ["build-data", "--images", tmp, "--model", tiny,
                                        "--out", tmp / "adir"], ["--images"]),
        ("unknown family", ["tiny-model", "--like", "nobody/nothing", "--out", tmp / "t"],
         ["nobody/nothing"]),
    ]


def test_the_catalogue_of_bad_inputs_ends_in_one_line_each(tiny_dir, run, tmp_path):
    (tmp_path / "keep.txt").write_text(USER_TEXT)
    cases = _catalogue(tiny_dir["qwen2_5_vl"], run, tmp_path)
    listing = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    failures = []
    for case, argv, words in cases:
        r = invoke(*argv)
        try:
            one_line_error(r, *words)
        except AssertionError as e:
            failures.append(f"{case}: {e}")
    assert not failures, "\n".join(failures)
    assert (tmp_path / "keep.txt").read_text() == USER_TEXT
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == listing
    assert len(cases) >= 19


def test_compare_takes_comma_separated_options(tiny_dir, tmp_path):
    image = ROOT / "examples" / "data" / "scene0.png"
    r = invoke("compare", "--model", tiny_dir["qwen2_5_vl"], "--image", image, "--question",
               "What colour is it?", "--box", "84,14,98,28", "--options", "purple,yellow",
               "--max-tokens", 2, "--json", tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    text = json.dumps(json.loads((tmp_path / "c.json").read_text()))
    assert "A. purple" in text and "B. yellow" in text


def test_every_other_commands_next_step_runs_as_printed(tiny_dir, run, tmp_path):
    """synth -> views -> eval; tiny-model -> train; compare -> eval; plan -> train."""
    tiny = tiny_dir["qwen2_5_vl"]
    r = invoke("synth", "--out", tmp_path / "s", "--n", 3, "--n-heldout", 1)
    assert r.exit_code == 0, r.output
    (views,) = run_next(r.output)
    run_next(views.output, {"MODEL": tiny, "EVAL.json": tmp_path / "v-eval.json"})
    r = invoke("tiny-model", "--family", "qwen2_vl", "--out", tmp_path / "t")
    assert r.exit_code == 0, r.output
    run_next(r.output, {"DATA.jsonl": DATA, "RUN_DIR": tmp_path / "t-run"})
    r = invoke("compare", "--model", tiny, "--adapter", run, "--image",
               ROOT / "examples" / "data" / "scene0.png", "--question", "What colour?", "--box",
               "84,14,98,28", "--max-tokens", 2)
    assert r.exit_code == 0, r.output
    run_next(r.output, {"DATA.jsonl": DATA, "EVAL.json": tmp_path / "c-eval.json"})
    r = invoke("plan", "--config", EXAMPLE, "--model", tiny, "--data", DATA)
    assert r.exit_code == 0, r.output
    run_next(r.output, {"RUN_DIR": tmp_path / "p-run"})


# --- from a review: the rule's corners ------------------------------------------------------

def test_a_validated_run_keeps_its_adapters_folder_in_place(tiny_dir, tmp_path):
    out = tmp_path / "run"
    r = invoke("train", "--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data", DATA,
               "--out", out, "--max-steps", 2, "--set", f"validation.path={DATA}",
               "--set", "validation.every=1")
    assert r.exit_code == 0, r.output
    assert not [p for p in out.iterdir() if ".old-" in p.name] and "moved" not in r.output
    assert (out / "adapters" / "adapters.safetensors").exists()


def test_another_commands_force_moves_a_run_aside_never_deletes_it(run, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(run, target)  # a finished (sealed) run, copied with its times
    r = invoke("views", "--data", DATA, "--out", target, "--limit", 1, "--force")
    assert r.exit_code == 0, r.output
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").exists() and str(aside[0]) in r.output


def test_compare_out_in_a_new_folder_and_a_resume_elsewhere(run, tiny_dir, tmp_path):
    e = tmp_path / "e.json"
    assert invoke("eval", "--model", tiny_dir["qwen2_5_vl"], "--data", DATA, "--out", e,
                  "--views", "plain", "--max-tokens", 2).exit_code == 0
    r = invoke("eval", "--compare", e, e, "--out", tmp_path / "new" / "c.json")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "new" / "c.html").exists() and (tmp_path / "new" / "c.json").exists()
    one_line_error(invoke("train", "--resume", run, "--out", tmp_path / "elsewhere"),
                   "its own folder")


def test_doctor_bench_never_writes_into_a_users_folder(tmp_path):
    out = user_folder(tmp_path / "mine")
    (out / "report.json").write_text(USER_TEXT)
    one_line_error(invoke("doctor", "--bench", "Qwen/Qwen2-VL-2B-Instruct", "--out", out),
                   "did not write")
    assert (out / "report.json").read_text() == USER_TEXT
    one_line_error(invoke("doctor", "--bench", "nobody/nothing", "--out", tmp_path / "b"),
                   "choose one of")
    assert not (tmp_path / "b").exists()  # nothing left behind to block the next try
    one_line_error(invoke("doctor", "--bench", "Qwen/Qwen2-VL-2B-Instruct", "--photo", 80, 60,
                          "--out", tmp_path / "b"), "--photo")


def test_a_line_that_is_not_utf8_is_a_bad_row(tiny_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    good = json.loads(DATA.read_text().splitlines()[0])
    good["image"] = str(DATA.parent / good["image"])
    data.write_bytes(json.dumps(good).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    one_line_error(invoke("views", "--data", data, "--out", tmp_path / "v"), f"{data}:2",
                   "UTF-8")
    r = invoke("views", "--data", data, "--out", tmp_path / "v", "--on-bad-sample", "skip")
    assert r.exit_code == 0 and "1 skipped" in r.output, r.output
