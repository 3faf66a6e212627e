"""Weights from files: ImageNet ResNet-50 init and the STE-NVAN authors' released checkpoints."""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from models.presets import preset_spec
from models.video_reid import VideoReIDNet, build_model

# Official layout (DataParallel): module.features.backbone.<torchvision names | NL_<stage>.<j>.*>,
# module.bottleneck.*, module.classifier.weight.
_OFFICIAL_NL = re.compile(r"features\.backbone\.NL_(\d)\.(\d+)\.(.+)")
_OFFICIAL_PREFIXES = {"features.backbone.": "backbone.", "bottleneck.": "bottleneck.", "classifier.": "classifier."}


class CheckpointError(ValueError):
    """A weights file that is missing or does not match the model it is loaded into."""


def load_imagenet(model: VideoReIDNet, path: str | Path) -> None:
    """Load a torchvision resnet50 state-dict file into `model.backbone` (fc.* ignored), in place.

    Both of torchvision's layouts load: resnet50-0676ba61.pth has a `num_batches_tracked` counter per
    batch norm, the older resnet50-19c8e357.pth (the same weights) has none; BatchNorm's own loader
    fills a missing counter (with 0), as it does for any state dict of before PyTorch 0.4.1.
    """
    state = _read(path)
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _load_strict(model.backbone, backbone, f"ImageNet file {path}", "a torchvision resnet50 state dict",
                 optional=("num_batches_tracked",))


def load_official_checkpoint(
    source: str | Path | Mapping[str, torch.Tensor], preset: str, **overrides: object
) -> VideoReIDNet:
    """Build preset `preset` with the class count and width found in an official STE-NVAN checkpoint and load it.

    The keys fix num_classes, width and the non-local placement; the parameter-free
    settings (stripes, window, temporal pooling, last stride) come from the preset and
    `overrides` (ModelSpec fields), so NVAN.pth and STE_NVAN.pth are told apart by name only.
    """
    name = str(source) if isinstance(source, (str, Path)) else "the given state dict"
    state = _read(source) if isinstance(source, (str, Path)) else dict(source)
    # DataParallel saves under "module."; a plain save lacks it.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for key in ("classifier.weight", "features.backbone.conv1.weight"):
        if key not in state:
            raise CheckpointError(
                f"{name} has no key 'module.{key}', so it is not an STE-NVAN checkpoint "
                f"(R50_baseline_mean.pth, NVAN.pth or STE_NVAN.pth); its first keys are {sorted(state)[:5]}"
            )
    found = [0, 0, 0, 0]
    for key in state:
        if match := _OFFICIAL_NL.fullmatch(key):
            stage, j = int(match[1]), int(match[2])
            if 1 <= stage <= 4:
                found[stage - 1] = max(found[stage - 1], j + 1)
    spec = preset_spec(
        preset,
        num_classes=state["classifier.weight"].shape[0],
        width=state["features.backbone.conv1.weight"].shape[0],
        **overrides,
    )
    if tuple(found) != spec.non_local:
        raise CheckpointError(
            f"{name} has non-local blocks {found} per stage but preset {preset!r} places "
            f"{list(spec.non_local)}; load it with the preset it was trained as"
        )
    model = build_model(spec)
    _load_strict(model, {_our_key(k): v for k, v in state.items()}, name, f"preset {preset!r}")
    return model


def _our_key(official: str) -> str:
    """Official key (without 'module.') -> VideoReIDNet key; unknown keys pass through to be reported."""
    if match := _OFFICIAL_NL.fullmatch(official):
        return f"non_local.layer{match[1]}.{match[2]}.{match[3]}"
    for prefix, ours in _OFFICIAL_PREFIXES.items():
        if official.startswith(prefix):
            return ours + official.removeprefix(prefix)
    return official


def _read(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensor dict saved at `path` (tensors only, no pickled code)."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist; give the path of a local .pth file")
    state = safe_load(path, "a .pth state dict (official STE-NVAN checkpoints and torchvision weights are tensors)")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a state dict (key -> tensor)")
    return dict(state)


def safe_load(path: str | Path, expected: str, shown: str | Path | None = None) -> object:
    """torch.load with the weights-only unpickler, which builds tensors and plain data and nothing else.

    A file that would import anything (a pickled os.system call, say) is refused before it runs;
    that and files that are not checkpoints at all raise one-paragraph CheckpointErrors naming
    `expected`, instead of torch's advice to turn the protection off. The messages name `shown` (where
    the user keeps the file) when `path` is a local copy of it.
    """
    name = path if shown is None else shown
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        blocked = next((line for line in lines if "GLOBAL" in line), None)
        if blocked:
            raise CheckpointError(f"refusing to load {name}: it holds Python objects beyond tensors and plain data "
                                  f"({blocked}), and unpickling them could run code; give {expected}") from None
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[-1] if lines else "")
        raise CheckpointError(f"{name} is not a PyTorch checkpoint (the unpickler says: {detail}); "
                              f"give {expected}") from None
    except Exception as error:  # noqa: BLE001 - random bytes reach IndexError, KeyError, ... inside the unpickler
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(f"{name} is not a PyTorch checkpoint ({type(error).__name__}: {first}); "
                              f"give {expected}") from None


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], name: str, expected: str,
                 optional: tuple[str, ...] = ()) -> None:
    """load_state_dict(strict) with one error listing missing, unexpected and mis-shaped keys; keys ending in an
    `optional` name may be missing."""
    own = module.state_dict()
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith(optional))
    unexpected = sorted(state.keys() - own.keys())
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(own.keys() & state.keys())
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{name} does not match {expected} (width {_width(module)}): "
            f"missing keys {_few(missing)}; unexpected keys {_few(unexpected)}; "
            f"shape mismatches (file vs model) {_few(shapes)}. Check that the file and the "
            f"model's preset and width belong together."
        )
    module.load_state_dict(state, strict=not optional)


def _width(module: nn.Module) -> int:
    """Stem channels of the backbone in `module`."""
    backbone = getattr(module, "backbone", module)
    return backbone.conv1.out_channels


def _few(items: list[str], limit: int = 10) -> str:
    """At most `limit` items, then how many more."""
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return (str(items[:limit]) + more) if items else "none"
