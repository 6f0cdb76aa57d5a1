"""Typed configuration machinery: YAML + dotted overrides -> validated dataclasses.

Every config section is a keyword-only dataclass. Loading is strict so that a typo in a 30-hour job
fails in the first second: an unknown key, a wrong type or a missing required field raises
`ConfigError` naming the dotted key (and the file it came from).

YAML extras:
- `extends: other.yaml` at the top of any file deep-merges this file over `other.yaml`
  (relative paths resolve against the including file's directory).
- A section whose value is a string path (`model: models/qwen2.5-7b.yaml`) is loaded from that
  file, resolved relative to the including file's directory, then `examples/configs/`.
Overrides `a.b.c=value` parse `value` as YAML (`1e-5`, `true`, `[1, 2]`, `null`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Union, get_args, get_origin

import yaml

__all__ = [
    "ConfigError",
    "from_dict",
    "to_dict",
    "load_yaml_tree",
    "apply_overrides",
    "parse_override",
]


class ConfigError(ValueError):
    """A user mistake in a configuration: the message names the dotted key and, if known, the file."""


# ----------------------------------------------------------------------------------------------
# YAML loading with `extends:` and section includes
# ----------------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict, over: Mapping) -> dict:
    """Return `base` with `over` merged in; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _search_dirs(base_dir: Path) -> list[Path]:
    dirs = [base_dir]
    repo_configs = Path(__file__).resolve().parent.parent / "examples" / "configs"
    if repo_configs.is_dir():
        dirs.append(repo_configs)
    return dirs


def resolve_path(ref: str, base_dir: Path) -> Path:
    """Find a referenced YAML file relative to the including file, then examples/configs/."""
    p = Path(os.path.expanduser(ref))
    if p.is_absolute():
        return p
    for d in _search_dirs(base_dir):
        if (d / p).is_file():
            return d / p
    return base_dir / p


def load_yaml_tree(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """Load a YAML config, following `extends:` chains (cycles are an error)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"`extends` cycle: {chain}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: `extends` must be a file path string")
        base = load_yaml_tree(resolve_path(parent, path.parent), (*_seen, path))
        data = deep_merge(base, data)
    _mark_dir(data, path.parent)
    return data


_DIR_KEY = "__dir__"  # where string includes inside this mapping resolve from


def _mark_dir(data: dict, base_dir: Path) -> None:
    """Record, on every nested mapping not yet marked, the directory its includes resolve from."""
    data.setdefault(_DIR_KEY, str(base_dir))
    for v in data.values():
        if isinstance(v, dict):
            _mark_dir(v, base_dir)


def _strip_dirs(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _strip_dirs(v) for k, v in data.items() if k != _DIR_KEY}
    if isinstance(data, list):
        return [_strip_dirs(v) for v in data]
    return data


# ----------------------------------------------------------------------------------------------
# Dotted overrides
# ----------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key component")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides to a raw config mapping (creating intermediate mappings)."""
    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif isinstance(child, str):
                # A section given as an include path: load it so the override lands inside it.
                base_dir = Path(node.get(_DIR_KEY, "."))
                child = node[k] = load_yaml_tree(resolve_path(child, base_dir))
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(keys[: i + 1])} is a value, not a section"
                )
            node = child
        node[keys[-1]] = value
    return out


# ----------------------------------------------------------------------------------------------
# dict -> dataclass with strict types
# ----------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str, base_dir: Path) -> Any:
    """Check/convert one value against a type hint; raise ConfigError naming `where`."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: must not be null (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, base_dir)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]", base_dir) for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{where}[{i}]", base_dir) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        args = get_args(tp) or (Any, Any)
        return {
            _coerce(k, args[0], f"{where}.<key>", base_dir): _coerce(v, args[1], f"{where}.{k}", base_dir)
            for k, v in value.items()
            if k != _DIR_KEY
        }
    if _is_dataclass_type(tp):
        if isinstance(value, str):
            path = resolve_path(value, base_dir)
            if not path.is_file():
                raise ConfigError(f"{where}: include file {value!r} not found (looked in {base_dir})")
            value = load_yaml_tree(path)
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a section (mapping), got {type(value).__name__}")
        return _build(tp, value, where, base_dir)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
    raise TypeError(f"unsupported config type {tp!r} at {where}")  # a bug in the schema, not user input


def _build(cls: type, data: Mapping, where: str, base_dir: Path) -> Any:
    base_dir = Path(data.get(_DIR_KEY, base_dir))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key == _DIR_KEY:
            continue
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {where + '.' if where else ''}{close[0]}?)" if close else ""
            raise ConfigError(f"{dotted}: unknown key{hint}; known keys: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], dotted, base_dir)
    for name, f in fields.items():
        if name in kwargs:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            dotted = f"{where}.{name}" if where else name
            raise ConfigError(f"{dotted}: required key is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            # sections report their own field names; prefix them with the section's path
            msg = str(e)
            raise ConfigError(f"{where}.{msg}" if where and not msg.startswith(where) else msg) from None
    return obj


def from_dict(cls: type, data: Mapping, *, where: str = "", base_dir: str | os.PathLike = ".") -> Any:
    """Build dataclass `cls` from a raw mapping, strictly (see module docstring)."""
    return _build(cls, data, where, Path(base_dir))


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain dict/list values (for YAML dumps and logging)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def strip_internal(data: dict) -> dict:
    """Raw mapping without the loader's bookkeeping keys."""
    return _strip_dirs(data)
