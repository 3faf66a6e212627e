"""Decision records: the decision.json that `harness.train --until-decided` writes beside its runs' records.

One file per comparison A - B: the group-sequential plan, every look so far (seeds per arm, verdict, nominal level,
the difference and its repeated 95 % interval in points of percent, the runs trained for it, the round's wall time
and start-up in seconds), the verdict, the seeds used and the compute they cost. The report reads them
(`python -m harness.report --decision FILE`); `Decision` is their schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness import storage
from harness.echo import echo, short
from harness.errors import UserError

SCHEMA = "nvan-bench decision 1"
DECISION_FILE = "decision.json"
_WRITER = "`python -m harness.train --until-decided` writes <out>/decision.json"
SAID = {"decided": "decided", "futile": "futile: stopped", "budget": "undecided: seeds spent",
        "continue": "running"}  # what each verdict means to a reader, on the console and in the report


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class DecisionLook(_Section):
    """One look: its seeds per arm, verdict, nominal two-sided level, A - B and its repeated interval (points)."""

    seeds: int = Field(ge=1)
    verdict: str
    level: float = Field(ge=0, le=1)
    diff: float
    lo: float
    hi: float
    trained: int = Field(ge=0)
    round_s: float
    startup_s: float | None = None


class DecisionPlan(_Section):
    first: int = Field(ge=2)
    max_seeds: int = Field(ge=2)
    step: int = Field(ge=1)
    alpha: float
    spending: str


class DecisionCompute(_Section):
    train_s: float  # training seconds of every seed used, both arms, summed
    device: str | None = None


class Decision(_Section):
    """A decision record: what was compared, the plan, the looks, the verdict and its cost."""

    a: str
    b: str
    score: str
    protocol: str
    name: str
    plan: DecisionPlan
    verdict: str
    seeds: int = Field(ge=1)
    looks: list[DecisionLook] = Field(min_length=1)
    compute: DecisionCompute

    @property
    def device_hours(self) -> tuple[str, float]:
        """('core_hours' or 'gpu_hours', the hours): the compute in the device's own unit."""
        extra = self.compute.model_extra or {}
        return next(((k, float(v)) for k, v in extra.items() if k.endswith("_hours")), ("core_hours", float("nan")))


def write_decision(path: Path | str, decision: dict[str, Any]) -> None:
    """Write `decision` (Decision's fields, without the schema tag) whole, never half."""
    storage.write_text(path, json.dumps({"schema": SCHEMA} | decision, indent=2) + "\n")


def read_decision(path: Path | str) -> Decision:
    """The decision record at `path`; UserError naming it, what is wrong and how to get a good one."""
    fix = f"give a file {_WRITER} (run it again with --resume NAME to rewrite it from the records)"
    try:
        data = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise UserError(f"decision record {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"decision record {path} cannot be read as JSON ({type(e).__name__}: {short(e)}); "
                        f"{fix}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path} is not a decision record of this version (schema {echo(found)}, expected "
                        f"{SCHEMA!r}); {fix}")
    try:
        return Decision.model_validate({k: v for k, v in data.items() if k != "schema"})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                             for err in e.errors(include_url=False)[:5])
        raise UserError(f"decision record {path} has fields of the wrong type or value ({short(problems, 600)}); "
                        f"{fix}") from None
