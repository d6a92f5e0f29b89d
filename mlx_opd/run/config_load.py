"""Reading a config: YAML and --set overrides into the typed dataclasses of config.py (the
one source of defaults), relative paths resolved against the YAML's folder, and one clear
line for each mistake (an unknown key with the nearest valid one, a wrong type)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path


class ConfigError(ValueError):
    """A config file or override that does not match the dataclasses."""


# Names other tools use for our fields, so a near-miss of them still finds ours.
ALIASES = {"learning_rate": "lr", "warmup": "warmup_steps", "batch_size": "prompts_per_step",
           "num_samples": "n", "samples_per_prompt": "n", "num_generations": "n",
           "max_new_tokens": "max_tokens", "max_response_length": "max_tokens",
           "steps": "max_steps", "alpha_jsd": "beta", "topk": "k", "top_k": "k",
           "ema_decay": "ema_rate", "model_path": "path", "output_dir": "out"}


def _nearest(name: str, valid) -> str:
    """'; did you mean X?' with the closest valid key (directly or through an alias)."""
    import difflib

    valid = list(valid)
    pool = valid + [a for a, target in ALIASES.items() if target in valid]
    close = difflib.get_close_matches(name, pool, n=1, cutoff=0.5) or \
        difflib.get_close_matches(name, pool, n=1, cutoff=0.0)
    best = ALIASES.get(close[0], close[0]) if close else valid[0]
    return f"; did you mean {best!r}? (valid keys: {', '.join(valid)})"


_TYPE_WORDS = {"float": "a number", "int": "an integer", "bool": "true or false",
               "str": "a string", "dict": "a mapping", "None": "null"}


def _check_type(value, annotation: str, key: str, where: str):
    """`value` converted to the field's annotated type, or a ConfigError that names the
    key, the value and the expected type. Numbers given as strings ("1e-5": YAML reads
    that as a string) are accepted for number fields."""
    allowed = [a.strip() for a in annotation.split("|")]
    if value is None:
        if "None" in allowed:
            return None
    for a in allowed:
        if a == "float" and not isinstance(value, bool):
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        elif a == "int" and not isinstance(value, bool):
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
        elif a == "bool" and isinstance(value, bool):
            return value
        elif a == "str" and isinstance(value, str):
            return value
        elif a == "dict" and isinstance(value, dict):
            return value
        elif a.startswith("tuple") and isinstance(value, (list, tuple)):
            return tuple(value)
    want = " or ".join(_TYPE_WORDS.get(a, "a list" if a.startswith("tuple") else a)
                       for a in allowed)
    raise ConfigError(f"{where}: {key} = {value!r} ({type(value).__name__}); expected {want}")


def build(cls, values: dict, where: str, prefix: str = "", overridden=frozenset()):
    """Build dataclass `cls` from a dict, recursing into nested dataclasses; unknown keys
    are errors that name the nearest valid key; every value is type-checked against its
    field. `overridden` holds the dotted keys that came from --set (named as such)."""
    import dataclasses

    def loc(dotted: str) -> str:
        given = [d for d in overridden if d == dotted or d.startswith(dotted + ".")]
        return f"--set {given[0]}" if given else where

    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {prefix or 'config'}: expected a mapping of keys, got "
                          f"{type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in known:
            raise ConfigError(f"{loc(dotted)}: unknown key {dotted!r}{_nearest(key, known)}")
        default = known[key].default_factory() if known[key].default_factory is not \
            dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[key] = build(type(default), value or {}, where, dotted, overridden)
        else:
            kwargs[key] = _check_type(value, str(known[key].type), dotted, loc(dotted))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        here = [d for d in overridden if d.startswith(prefix + ".")] if prefix else []
        src = f"--set {', '.join(sorted(here))}" if here else where
        raise ConfigError(f"{src}: {prefix or 'config'}: {e}") from None


def to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists), for YAML."""
    import dataclasses

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def apply_overrides(values: dict, overrides: dict) -> dict:
    """Set dotted keys ("optim.lr": 1e-4) in a nested dict (CLI > YAML)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {p} is not a section")
        node[leaf] = value
    return out


# Path fields: relative values resolve against the YAML file's folder (values from the
# YAML) or the working directory (overrides), so a config works from any directory and
# RUN_DIR/config.yaml records absolute paths. model.path may be a hub id: it is resolved
# only when it names an existing local path or starts with ./ or ../.
PATH_KEYS = ("data.path", "run.out", "model.adapter", "validation.path")


MODEL_KEYS = ("model.path",)


def _get(values: dict, dotted: str):
    node = values
    for p in dotted.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def resolve_path_value(dotted: str, value, base: Path):
    """`value` of path field `dotted`, made absolute against `base` when relative."""
    if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return value
    candidate = (base / Path(value).expanduser()).resolve()
    if dotted in MODEL_KEYS and not (candidate.exists() or value.startswith(("./", "../"))):
        return value  # a hub id such as mlx-community/Qwen2.5-VL-3B-Instruct-4bit
    return str(candidate)


def resolve_paths(values: dict, base: Path) -> dict:
    """A copy of nested `values` with relative path fields made absolute against `base`."""
    found = {d: _get(values, d) for d in PATH_KEYS + MODEL_KEYS if _get(values, d) is not None}
    return apply_overrides(values, {d: resolve_path_value(d, v, base) for d, v in found.items()})


def load_train_config(path: str | None, overrides: dict | None = None):
    """TrainConfig from a YAML file (keys 1:1 with the dataclass fields) plus overrides.
    Relative paths in the YAML resolve against its folder, those in overrides against the
    working directory (see PATH_KEYS)."""
    import yaml

    values = {}
    where = "config"
    if path:
        where = str(path)
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{at}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys (model:, data:, "
                              f"optim:, ...), got a {type(values).__name__}; see "
                              "examples/tiny.yaml")
        values = resolve_paths(values, Path(path).resolve().parent)
    overrides = {d: resolve_path_value(d, v, Path.cwd()) if d in PATH_KEYS + MODEL_KEYS else v
                 for d, v in (overrides or {}).items()}
    values = apply_overrides(values, overrides)
    from mlx_opd.run.config import TrainConfig  # config.py imports this module last

    return build(TrainConfig, values, where, overridden=frozenset(overrides or {}))
