"""The metrics' inputs checked and made tensors: every bad array ends in a MetricsError that names it, says what
was expected and how to fix it."""

from __future__ import annotations

import numpy as np
import torch

from harness.errors import MetricsError

ArrayLike = np.ndarray | torch.Tensor


def as_tensor(name: str, value: ArrayLike) -> torch.Tensor:
    """A tensor view of a numpy array or tensor (detached)."""
    try:
        return torch.as_tensor(value).detach()
    except (TypeError, ValueError, RuntimeError) as error:
        message = f"{name} must be a numpy array or torch tensor, got {describe(value)} ({error})."
        raise MetricsError(message) from error


def finite_tensor(name: str, value: ArrayLike, ndim: int) -> torch.Tensor:
    """Float32 copy (or view) of a real array, checked for shape and NaN/inf."""
    tensor = as_tensor(name, value)
    if tensor.ndim != ndim or tensor.is_complex() or tensor.dtype == torch.bool:
        raise MetricsError(f"{name} must be a {ndim}-D array of real numbers, got {describe(tensor)}.")
    tensor = tensor.float()
    # A sum is finite only if every term is: one pass in the common case.
    if torch.isfinite(tensor.sum()):
        return tensor
    bad = ~torch.isfinite(tensor)
    if not bad.any():
        return tensor
    first = torch.nonzero(bad)[0].tolist()
    raise MetricsError(
        f"{name} (shape {tuple(tensor.shape)}) has {int(bad.sum())} NaN or infinite values, "
        f"the first at index {first} ({tensor[tuple(first)].item()}). Scores need finite "
        "values: check the model output (a diverged run gives NaN features) before scoring."
    )


def label_tensor(name: str, value: ArrayLike, length: int, what: str, device: torch.device) -> torch.Tensor:
    """A 1-D int64 tensor of `length` labels (pids or cameras), one per row of `what`, on `device`."""
    tensor = as_tensor(name, value)
    if tensor.ndim != 1 or tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise MetricsError(f"{name} must be a 1-D integer array, got {describe(tensor)}.")
    if len(tensor) != length:
        raise MetricsError(
            f"{name} has {len(tensor)} entries but there are {length} {what}; "
            "give one pid and one camera per feature row, in the same order."
        )
    return tensor.long().to(device)


def query_index(value: ArrayLike, size: int, device: torch.device) -> torch.Tensor:
    """The 0-based, distinct test rows of the queries, each in [0, size), as an int64 tensor on `device`."""
    tensor = as_tensor("query_index", value)
    index = label_tensor("query_index", tensor, tensor.numel(), "queries", device)
    outside = index[(index < 0) | (index >= size)]
    if len(outside):
        raise MetricsError(
            f"query_index has {len(outside)} entries outside the {size} test rows "
            f"(e.g. {outside[:5].tolist()}); it holds 0-based row numbers in [0, {size}) "
            "(MARS's query_IDX.mat is 1-based: subtract 1)."
        )
    unique, counts = torch.unique(index, return_counts=True)
    if (counts > 1).any():
        raise MetricsError(
            f"query_index repeats rows {unique[counts > 1][:5].tolist()}; each query row must "
            "appear once (a repeated query would be counted twice)."
        )
    return index


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise MetricsError unless `value` is one of `choices`."""
    if value not in choices:
        raise MetricsError(f"Unknown {name} {value!r}; expected one of {', '.join(choices)}.")


def check_same_dim(query: torch.Tensor, gallery: torch.Tensor) -> None:
    """Raise MetricsError unless query and gallery features have the same dimension."""
    if query.shape[1] != gallery.shape[1]:
        raise MetricsError(
            f"query features have {query.shape[1]} dimensions but gallery features have "
            f"{gallery.shape[1]}; both must come from the same model."
        )


def describe(value: object) -> str:
    """A short description of a value for an error: shape and dtype of an array, else its type."""
    if isinstance(value, np.ndarray | torch.Tensor):
        return f"shape {tuple(value.shape)} dtype {str(value.dtype).removeprefix('torch.')}"
    return "None" if value is None else type(value).__name__
