"""The `sweep:` section of params.yaml (python -m harness.sweep): the search space, how Ray Tune searches it and how
many seeds each candidate trains; part of the typed config (harness.config.Config.sweep)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from harness.section import Section
from models.spec import STAGE_BLOCKS

# Temporal-pool choices of a sweep as scalar keys (Optuna wants scalar categories).
TEMPORAL_POOLS: dict[str, tuple[int, ...]] = {"none": (), "2": (2,), "3": (3,), "23": (2, 3)}


def placement_blocks(name: str) -> tuple[int, int, int, int]:
    """Non-local blocks per stage 1-4 of a named placement: 'p0230' -> (0, 2, 3, 0)."""
    digits = name[1:] if name[:1] == "p" else ""
    if len(digits) != 4 or not digits.isdigit() or any(
        int(d) > n for d, n in zip(digits, STAGE_BLOCKS)
    ):
        raise ValueError(
            f"placement {name!r}: expected 'p' and 4 digits, the non-local blocks of stages 1-4, each at most "
            f"the stage's residual blocks {list(STAGE_BLOCKS)}, e.g. 'p0230' (NVAN)"
        )
    return tuple(int(d) for d in digits)


def _choices(values: list | None) -> list | None:
    if values is not None and (not values or len(set(values)) != len(values)):
        raise ValueError(f"{values!r}: expected a non-empty list of distinct choices, or null to not search it")
    return values


class SearchSpace(Section):
    """Choices per searched dimension; null keeps the trial config's value (not searched)."""

    placement: list[str] | None = Field(None, description="named placements, e.g. p0230 = blocks per stage")
    stripes: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="at non-local stages; 0 = full")
    window: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="attention window, frames; 0 = clip")
    temporal_pool: list[str] | None = Field(None, description="stages followed by temporal pooling: none, 2, 3, 23")
    frames: list[Annotated[int, Field(ge=1)]] | None = Field(None, description="clip length T")
    sampler: list[Literal["chunk_random", "chunk_first", "segment_random", "segment_first", "evenly"]] | None = None
    stride: list[Annotated[int, Field(ge=1)]] | None = None
    lr: list[Annotated[float, Field(gt=0)]] | None = None
    width: list[Annotated[int, Field(ge=1)]] | None = None

    @field_validator("temporal_pool", mode="before")
    @classmethod
    def _pool_keys(cls, values: Any) -> Any:
        # YAML reads `23` as a number: the keys are names, so accept both.
        return [str(v) if isinstance(v, int) else v for v in values] if isinstance(values, list) else values

    @field_validator("*")
    @classmethod
    def _distinct(cls, values: list | None) -> list | None:
        return _choices(values)

    @field_validator("placement")
    @classmethod
    def _placements(cls, values: list[str] | None) -> list[str] | None:
        for name in values or ():
            placement_blocks(name)
        return values

    @field_validator("temporal_pool")
    @classmethod
    def _pools(cls, values: list[str] | None) -> list[str] | None:
        bad = [v for v in values or () if v not in TEMPORAL_POOLS]
        if bad:
            raise ValueError(f"{bad} are not pool keys; choose from {list(TEMPORAL_POOLS)}")
        return values

    @model_validator(mode="after")
    def _something(self) -> SearchSpace:
        if not self.searched():
            raise ValueError(f"nothing to search; list choices for at least one of {list(type(self).model_fields)}")
        return self

    def searched(self) -> dict[str, list]:
        """The searched dimensions and their choices."""
        return {k: v for k, v in self if v is not None}


class SweepConfig(Section):
    """A Ray Tune sweep: search space, search algorithm, early stopping and per-trial overrides."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                             description="reports/sweeps/<name>, Ray experiment, MLflow parent; null = sweep-<time>")
    search: Literal["optuna", "random", "grid"] = "optuna"
    optuna_sampler: Literal["nsga2", "tpe"] = "nsga2"
    metric: Literal["map", "rank1"] = "map"
    cost_frames: int | None = Field(None, ge=1, description="T of the costed T x 256 x 128 clip; null = the trial's")
    cost_objective: Literal["gmacs", "latency"] = Field(
        "gmacs", description="minimise GMACs per clip, or the latency (ms per clip) each trial measures with its "
                             "own worker resources (needs cost.measure)")
    num_samples: int = Field(8, ge=1, description="trials; grid: repeats of the whole grid")
    seeds: int | Literal["adaptive"] = Field(
        1, description="training seeds per candidate (seed, seed + 1, ...), or 'adaptive': min_seeds each, then more "
                       "for the candidates a race leaves undecided, up to max_seeds; the objectives are the means")
    min_seeds: int = Field(2, ge=2, description="sweep.seeds: adaptive: the seeds every candidate trains first")
    max_seeds: int = Field(5, ge=2, description="sweep.seeds: adaptive: the most seeds a candidate trains")
    max_concurrent: int = Field(2, ge=1)
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: int = Field(2, ge=2)
    trial: dict[str, Any] = Field(default_factory=lambda: {"eval": {"every": 1}},
                                  description="params every trial gets (a partial params tree)")
    space: SearchSpace = SearchSpace(placement=["p0000", "p0200", "p0230"])

    @property
    def adaptive(self) -> bool:
        """Whether candidates race for seeds (sweep.seeds: adaptive)."""
        return self.seeds == "adaptive"

    @property
    def first_seeds(self) -> int:
        """The seeds each candidate trains inside its Tune trial."""
        return self.min_seeds if self.adaptive else self.seeds

    @property
    def most_seeds(self) -> int:
        """The most seeds a candidate can train."""
        return self.max_seeds if self.adaptive else self.seeds

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        # One message for both forms, rather than pydantic's one per member of the union.
        if value == "adaptive" or (type(value) is int and value >= 1):
            return value
        raise ValueError(f"{value!r} is neither a number of seeds per candidate (>= 1) nor 'adaptive'")

    @model_validator(mode="after")
    def _seed_range(self) -> SweepConfig:
        if self.min_seeds > self.max_seeds:
            raise ValueError(f"sweep.min_seeds = {self.min_seeds} exceeds sweep.max_seeds = {self.max_seeds}; a race "
                             f"starts every candidate at min_seeds and adds seeds up to max_seeds")
        return self
