"""Typed config from params.yaml plus `--set a.b=value` overrides, validated once at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.presets import PRESETS, preset_spec
from models.spec import ModelSpec, SpecError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(Exception):
    """A user error in params or overrides; the CLI prints it and exits with code 2."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSize(Section):
    """A clip size: frames x height x width (pixels)."""

    frames: int = Field(8, ge=1)
    height: int = Field(256, ge=16)
    width: int = Field(128, ge=8)

    def label(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"

    @classmethod
    def parse(cls, text: str) -> InputSize:
        """Parse 'TxHxW' (frames x height x width), e.g. '8x256x128'."""
        try:
            frames, height, width = (int(x) for x in text.lower().split("x"))
            return cls(frames=frames, height=height, width=width)
        except (ValueError, ValidationError):
            raise ConfigError(
                f"input size {text!r}: expected TxHxW with T >= 1, H >= 16, W >= 8, e.g. 8x256x128"
            ) from None


class DataConfig(Section):
    dataset: str = "mars"
    prepared_root: Path = Path("data/prepared")
    frames: int = Field(8, ge=1)
    height: int = Field(256, ge=16)
    width: int = Field(128, ge=8)

    @property
    def input(self) -> InputSize:
        return InputSize(frames=self.frames, height=self.height, width=self.width)


class ModelConfig(Section):
    """A preset plus optional overrides of its ModelSpec fields (null keeps the preset's)."""

    preset: Literal["baseline", "nvan", "ste_nvan"] = "ste_nvan"
    width: int = Field(64, ge=1)
    last_stride: Literal[1, 2] = 1
    non_local: list[int] | None = None
    stripes: list[int] | None = None
    nl_window: int | None = None
    temporal_pool_after: list[int] | None = None

    @model_validator(mode="after")
    def _buildable(self) -> ModelConfig:
        self.spec(num_classes=1)  # SpecError is a ValueError: pydantic reports it under `model`
        return self

    def spec(self, num_classes: int) -> ModelSpec:
        """The ModelSpec this section describes, for a classifier of `num_classes` identities."""
        overrides = {
            k: getattr(self, k)
            for k in ("non_local", "stripes", "nl_window", "temporal_pool_after")
            if getattr(self, k) is not None
        }
        return preset_spec(
            self.preset, num_classes, width=self.width, last_stride=self.last_stride, **overrides
        )


class CostConfig(Section):
    width: int = Field(64, ge=1, description="backbone width costed (64 = ResNet-50)")
    presets: list[Literal["baseline", "nvan", "ste_nvan"]] = ["baseline", "nvan", "ste_nvan"]
    inputs: list[InputSize] = [InputSize()]
    batch: int = Field(1, ge=1)
    num_classes: int = Field(625, ge=1)
    warmup: int = Field(2, ge=0)
    repeats: int = Field(10, ge=1)
    threads: int = Field(0, ge=0, description="torch threads for latency; 0 = all cores")
    measure: bool = True


class Config(Section):
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    cost: CostConfig = CostConfig()

    @model_validator(mode="after")
    def _model_fits_input(self) -> Config:
        try:
            self.model.spec(num_classes=1).validate_input(
                self.data.frames, self.data.height, self.data.width
            )
        except SpecError as e:
            raise ValueError(f"model {self.model.preset!r} at data input {self.data.input.label()}: {e}")
        return self


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
        return key.strip(), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e.problem}); quote it") from e


def _describe(err: dict) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "params"
    if err["type"] == "extra_forbidden":
        return f"unknown key {where!r}; check the spelling against params.yaml"
    if err["type"] == "value_error":  # a cross-field check: its message names the fields
        return f"{where}: {err['msg'].removeprefix('Value error, ')}"
    return f"{where} = {err.get('input')!r}: {err['msg']}"


def load_config(path: Path | str = DEFAULT_PARAMS, overrides: list[str] = ()) -> Config:
    """Read `path`, apply `overrides` ('a.b=value'), validate; raise ConfigError naming the key."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"params file {path} not found; pass --params FILE or run from the project root") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"params file {path} is not valid YAML: {e}") from e
    if not isinstance(tree, dict):
        raise ConfigError(f"params file {path}: expected a mapping of sections, got {type(tree).__name__}")
    for item in overrides:
        key, value = parse_override(item)
        _set_path(tree, key, value, f"--set {item!r}")
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        problems = "; ".join(_describe(err) for err in e.errors(include_url=False))
        raise ConfigError(f"invalid config in {path} (after --set overrides): {problems}") from None


def flatten(config: Config) -> dict[str, Any]:
    """The config as flat 'a.b' -> value pairs (lists and paths as strings), for MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)

    walk("", config.model_dump(mode="json"))
    return out


__all__ = ["Config", "ConfigError", "InputSize", "load_config", "flatten", "PRESETS"]
