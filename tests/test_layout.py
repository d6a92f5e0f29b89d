"""The package layout (docs/design/architecture.md): each package imports only the layers
below it, and mlx-vlm is reached only through mlx_opd/models."""

import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mlx_opd"
# what each package may import (besides itself and the package root's __version__)
ALLOWED = {
    "run": set(),
    "data": {"run"},
    "models": {"run"},
    "metal": {"run"},
    "method": {"run", "data", "models", "metal"},
    "preflight": {"run", "data", "models", "metal", "method"},
    "engines": {"run", "data", "models", "method"},
    "evaluation": {"run", "data", "models", "method"},
    "builder": {"run", "data", "models", "method", "evaluation"},
    "toy": {"run", "data", "models", "method", "evaluation"},
}
IMPORT = re.compile(r"^\s*(?:from|import)\s+mlx_opd\.(\w+)", re.M)
VLM = re.compile(r"^\s*(?:from|import)\s+mlx_vlm\b", re.M)


def _sources():
    return [(p.relative_to(PKG).parts, p.read_text()) for p in PKG.rglob("*.py")]


def test_every_package_imports_only_the_layers_below_it():
    wrong = []
    for parts, text in _sources():
        own = parts[0]
        if len(parts) < 2 or own == "cli":
            continue  # the root's __init__ and the command line may import anything
        assert own in ALLOWED, f"{own}/ is a package the layout does not name"
        for used in IMPORT.findall(text):
            if used != own and used not in ALLOWED[own]:
                wrong.append(f"{'/'.join(parts)} imports mlx_opd.{used}")
    assert not wrong, wrong


def test_mlx_vlm_is_imported_only_inside_the_models_package():
    outside = ["/".join(parts) for parts, text in _sources()
               if parts[0] != "models" and VLM.search(text)]
    assert not outside, outside
    # mlx-vlm's private state is read and written only there, too
    private = ["/".join(parts) for parts, text in _sources()
               if parts[0] != "models" and re.search(r"\._vlm_adapter_config|\._rope_deltas", text)]
    assert not private, private


def test_every_package_says_what_it_holds_and_may_import():
    for name in ALLOWED:
        if name == "metal":
            continue
        doc = (PKG / name / "__init__.py").read_text()
        assert doc.startswith('"""') and "import" in doc.split('"""')[1], name


# Functions over 60 lines, each with its reason (docs/design/architecture.md lists them).
LONG_FUNCTIONS = {
    "method/loss.py:fused_token_divergence": "one custom VJP: its forward and backward share "
    "closures over the spec, the heads and the saved tensors",
    "preflight/plan.py:predict": "the memory model, one formula per phase, read top to "
    "bottom against docs/design/mlx.md",
    "toy/tiny.py:model_config": "a data table: each family's tiny config",
    "engines/verl.py:_script_header": "a data table: the launch script's header lines",
}


def test_modules_and_functions_stay_short():
    """No module over 400 lines; no function over 60 lines but the ones listed above."""
    import ast

    long_modules, long_functions = [], []
    for parts, text in _sources():
        name = "/".join(parts)
        if text.count("\n") > 400:
            long_modules.append(name)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.end_lineno - node.lineno + 1 > 60:
                long_functions.append(f"{name}:{node.name}")
    assert not long_modules, long_modules
    assert sorted(long_functions) == sorted(LONG_FUNCTIONS), long_functions


# a CLI option's default written as a literal: the only ones, each with its reason
CLI_LITERALS = {
    ('data.py', '"--format"'): "export-data's target engine, a choice of command, not a setting",
    ('data.py', '"--n"'): "synth's dataset size, an argument of write_dataset",
    ('data.py', '"--seed"'): "synth's first seed",
    ('models.py', '"--seed"'): "tiny-model's weights seed",
    ('models.py', '"--out"'): "doctor --bench's report folder",
    ('toy.py', '"--out"'): "the demo's run folder",
    ('training.py', '"--backend"'): "plan's backend, a choice of what to plan for",
}
LITERAL_DEFAULT = re.compile(r'@click\.option\(([^,]+),(?:[^@]*?)\bdefault=("[^"]*"|-?[\d.]+)[,)]',
                             re.S)


def test_cli_defaults_come_from_the_dataclasses():
    """Help texts read the configs' defaults (run/config.py and the others); a literal
    default is only one of CLI_LITERALS, so a changed dataclass default cannot leave a
    stale one behind."""
    found = set()
    for f in sorted((PKG / "cli").glob("*.py")):
        for m in LITERAL_DEFAULT.finditer(f.read_text()):
            found.add((f.name, m.group(1).strip()))
    assert found <= set(CLI_LITERALS), sorted(found - set(CLI_LITERALS))
    assert ("evaluating.py", '"--max-tokens"') not in found  # compare/studio: CompareConfig
