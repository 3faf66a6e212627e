"""User-facing errors: bad input that is the user's to fix, printed as one paragraph with exit code 2.

They live here, below everything that raises them, so raising one never imports a command-line module.
"""

from __future__ import annotations

from datasets.errors import DatasetError
from models.checkpoints import CheckpointError
from models.spec import SpecError


class UserError(Exception):
    """Bad input that is the user's to fix: printed without a traceback, exit code 2."""


class ConfigError(Exception):
    """A user error in params or overrides; the CLI prints it and exits with code 2."""


class MetricsError(ValueError):
    """Bad input to the metrics (shapes, lengths, non-finite values, indices, names)."""


# Raised for bad input anywhere below a CLI; printed as one paragraph, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ConfigError, SpecError, CheckpointError, DatasetError,
                                                MetricsError)
