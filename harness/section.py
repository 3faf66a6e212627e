"""The base of every params section (harness.config, harness.sweep_params): frozen, and an unknown key is an error
(a misspelt key must not be silently ignored)."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
