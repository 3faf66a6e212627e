"""Params into one validated Config: a YAML file (bounded against alias bombs), the chosen preset's train block and
`--set a.b=value` overrides, in that order of precedence; and a Config back as flat dotted keys."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.errors import ConfigError
from harness.config import Config, ModelConfig
from harness.echo import echo, short

DEFAULT_PARAMS = Path("params.yaml")


def _set_path(tree: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            where = ".".join(keys[: i + 1])
            raise ConfigError(
                f"{source}: cannot set {dotted!r} because {where!r} is a value, not a section; "
                f"write --set {where}=VALUE instead"
            )
        node = child
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """Split 'a.b=value' into the dotted key and its YAML-typed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.non_local=[0,2,3,0]")
    try:
        return key.strip(), safe_yaml(raw, f"--set {short(item)!r}") if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e.problem}); quote it") from e


def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "params"
    if err["type"] == "extra_forbidden":
        return f"unknown key {short(where)!r}; check the spelling against params.yaml"
    if err["type"] == "value_error":  # a cross-field check: its message names the fields
        return f"{where}: {short(err['msg'].removeprefix('Value error, '))}"
    return f"{where} = {echo(err.get('input'))}: {short(err['msg'])}"


def _problems(error: ValidationError) -> str:
    """The first few problems of a failed validation, one line, bounded."""
    found = error.errors(include_url=False)
    more = f"; and {len(found) - 5} more" if len(found) > 5 else ""
    return "; ".join(_describe(err) for err in found[:5]) + more


# Values a params file may expand to through YAML aliases: params.yaml has about 300; a "billion laughs"
# file (aliases of aliases) would expand to billions, in validation and in any message that echoes it.
MAX_YAML_VALUES = 100_000


def safe_yaml(text: str, source: str) -> Any:
    """YAML `text` as plain data (yaml.safe_load), refused when its aliases expand it beyond MAX_YAML_VALUES or refer
    to themselves; ConfigError names `source`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set(), source)
        if size > MAX_YAML_VALUES:
            raise ConfigError(f"{source} expands to {size:,} values through YAML aliases (&anchor / *alias), more than "
                              f"the {MAX_YAML_VALUES:,} a params file may hold; write the values out, or remove the "
                              f"aliases of aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int], source: str) -> int:
    """Values under `node` once every alias is expanded; a node reached twice is counted twice, computed once."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise ConfigError(f"{source}: a YAML alias refers to the node that contains it (a cycle); params are a tree")
    open_.add(id(node))
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes, open_, source) + _expanded_size(v, sizes, open_, source)
                       for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, sizes, open_, source) for v in node.value)
    else:
        size = 1
    open_.discard(id(node))
    sizes[id(node)] = min(size, 10 * MAX_YAML_VALUES)  # enough to refuse; keeps the sums small
    return sizes[id(node)]


def load_config(path: Path | str = DEFAULT_PARAMS, overrides: list[str] = ()) -> Config:
    """Read `path`, apply `overrides` ('a.b=value'), validate; raise ConfigError naming the key."""
    path = Path(path)
    try:
        tree = safe_yaml(path.read_text(encoding="utf-8"), f"params file {path}") or {}
    except FileNotFoundError:
        raise ConfigError(f"params file {path} not found; pass --params FILE or run from the project root") from None
    except IsADirectoryError:
        raise ConfigError(f"params file {path} is a folder; pass --params FILE with a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"params file {path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 "
                          f"YAML") from None
    except OSError as e:
        raise ConfigError(f"params file {path} cannot be read ({e.strerror}); check its permissions") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"params file {path} is not valid YAML: {e}") from e
    if not isinstance(tree, dict):
        raise ConfigError(f"params file {path}: expected a mapping of sections, got {type(tree).__name__}")
    parsed = [(item, *parse_override(item)) for item in overrides]
    # params.yaml < presets.<name> < --set: the preset's train block is merged first (as the command line sets the
    # preset and the block), then the command line is applied over it, so an explicit --set always wins.
    staged = copy.deepcopy(tree)
    for item, key, value in parsed:
        _set_path(staged, key, value, f"--set {item!r}")
    _apply_preset_train(tree, staged)
    for item, key, value in parsed:
        _set_path(tree, key, value, f"--set {item!r}")
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"invalid config in {path} (after --set overrides): {_problems(e)}") from None


def _apply_preset_train(tree: dict, staged: dict) -> None:
    """Merge presets.<model.preset>.train over the train section of a raw params tree, in place; the preset and its
    block are read from `staged` (the tree with the command line applied).

    Done once, where params are read, so later overrides (a sweep's trial params) are not undone.
    """
    model = staged.get("model") if isinstance(staged.get("model"), dict) else {}
    preset = model.get("preset", ModelConfig.model_fields["preset"].default)
    presets = staged.get("presets") if isinstance(staged.get("presets"), dict) else {}
    extra = (presets.get(preset) or {}).get("train") if isinstance(presets.get(preset), dict) else None
    if isinstance(extra, dict) and extra:
        train = tree.get("train") if isinstance(tree.get("train"), dict) else {}
        tree["train"] = {**train, **extra}


def override(config: Config, overrides: dict[str, Any], source: str) -> Config:
    """`config` with dotted-key `overrides` applied, validated; ConfigError names `source` and the key."""
    tree = config.model_dump(mode="json")
    for key, value in overrides.items():
        _set_path(tree, key, value, source)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_problems(e)}") from None


def dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested params tree as flat 'a.b' -> value pairs (values as they are)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def flatten(config: Config | dict[str, Any]) -> dict[str, Any]:
    """The config (or a params tree) as flat 'a.b' -> value pairs (lists and paths as strings), for MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)

    walk("", config if isinstance(config, dict) else config.model_dump(mode="json"))
    return out
