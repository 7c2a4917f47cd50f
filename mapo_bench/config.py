"""Config machinery: strict pydantic models, YAML files, ``key.path=value`` overrides, one validation pass.

Stage configs (build, train, sample, eval, mismatch, pipeline) subclass :class:`StrictModel` in the
module of their stage; this module holds what they share. Every error is one line naming the file
and the key, with the closest valid key when the key is unknown.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mapo_bench.errors import MapoBenchError
from mapo_bench.registry import suggest

M = TypeVar("M", bound=BaseModel)


Seed = Annotated[int, Field(ge=0)]
"""A random seed: numpy's generators refuse negative ones, so every config says so before anything runs."""


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class SamplerConfig(StrictModel):
    """How images are sampled; recorded with every generated image."""

    steps: int = 25
    guidance: float = 5.0
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None


def parse_value(raw: str) -> Any:
    """A command-line value as YAML reads it, plus ``1e-5`` as a float (YAML 1.1 reads it as a string)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
        return float(value)
    return value


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``; a malformed item is a one-line error."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MapoBenchError(f"override {item!r} is not key.path=value (example: train.lr=1e-5)")
        set_path(tree, key.strip(), parse_value(raw))
    return tree


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in; nested dicts merge, everything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; missing files and bad YAML are one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MapoBenchError(f"{path}: config file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise MapoBenchError(f"{path}: line {line} is not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise MapoBenchError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise MapoBenchError(f"{path}: a config must be a YAML mapping of keys, got {type(data).__name__}")
    _refuse_self_reference(data, path)
    return data


MAX_YAML_NODES = 100_000  # a config is tens of keys; aliases that expand past this are an alias bomb


def _refuse_self_reference(data: Any, path: Path) -> None:
    """Refuse an anchor used inside itself (``a: &x [*x]``, a cycle no config can mean) and alias bombs.

    PyYAML's safe_load builds such a cycle as a list that contains itself; every later step (validation,
    hashing, dumping) would recurse without end. Walks the tree as it would be expanded, stopping early.
    """
    nodes = 0
    stack: list[tuple[Any, str, frozenset[int]]] = [(data, "", frozenset())]
    while stack:
        node, where, ancestors = stack.pop()
        nodes += 1
        if nodes > MAX_YAML_NODES:
            raise MapoBenchError(f"{path}: expands to more than {MAX_YAML_NODES} values (aliases of aliases?); "
                                 "write the values out")
        if not isinstance(node, dict | list):
            continue
        if id(node) in ancestors:
            raise MapoBenchError(f"{path}: key {where or '(top)'} refers to itself (an anchor used inside itself); "
                                 "a config cannot be self-referencing")
        inside = ancestors | {id(node)}
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            stack.append((value, f"{where}.{key}" if where else str(key), inside))


def _fields_at(model_cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid field names of the (nested) model that ``loc`` points into, for "did you mean"."""
    cls: Any = model_cls
    for part in loc[:-1]:
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        cls = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def format_validation_error(exc: ValidationError, model_cls: type[BaseModel], source: str) -> str:
    """The first error of ``exc`` as one line: ``source: key 'a.b': message (did you mean ...)``."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "<root>"
    if err["type"] == "extra_forbidden":
        hint = suggest(str(loc[-1]), _fields_at(model_cls, loc))
        message = f"unknown key{hint}"
    else:
        message = err["msg"]
        if "input" in err and err["type"] != "missing" and loc:
            message += f" (got {err['input']!r})"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: key {key!r}: {message}{more}"


def validate(model_cls: type[M], data: dict[str, Any], source: str = "<config>") -> M:
    """One validation pass; a failure is a :class:`MapoBenchError` naming ``source`` and the key."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise MapoBenchError(format_validation_error(exc, model_cls, source)) from None


def load_config(
    model_cls: type[M],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> M:
    """defaults <- YAML file <- ``key.path=value`` overrides, then validated once."""
    data: dict[str, Any] = dict(defaults or {})
    source = "<command line>"
    if path is not None:
        data = deep_merge(data, read_yaml(path))
        source = str(path)
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
        source = f"{source} + overrides" if path is not None else source
    return validate(model_cls, data, source)


# Keys added after configs were first hashed, with their defaults: a config leaving them at the default keeps
# the hash it had before, so finished runs and checkpoints stay valid.
LATER_KEYS: dict[tuple[str, ...], Any] = {("backend_options",): {}, ("reference_dtype",): "auto",
                                          ("compile_denoiser",): False, ("optim", "implementation"): "auto"}


def config_hash(model: BaseModel | dict[str, Any], exclude: set[str] | None = None) -> str:
    """16 hex digits of the sha256 of the canonical JSON of a config (order-independent)."""
    data = model.model_dump(mode="json") if isinstance(model, BaseModel) else copy.deepcopy(dict(model))
    for key in exclude or ():
        data.pop(key, None)
    for path, default in LATER_KEYS.items():  # at their defaults: hash as configs written before they existed
        parent = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent.get(key), dict) else {}
        if path[-1] in parent and parent[path[-1]] == default:
            parent.pop(path[-1])
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def dump_yaml(model: BaseModel) -> str:
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)
