"""The paper's three models as ModelSpec values: baseline, NVAN and STE-NVAN."""

from __future__ import annotations

from dataclasses import replace

from models.spec import ModelSpec, SpecError

# Field values that differ from ModelSpec's defaults (Liu et al., BMVC 2019, Sec. 3-4, and the
# authors' code, jackie840129/STE-NVAN). Every preset keeps ModelSpec's default stem_relu=False:
# the authors' ResNet stem has no ReLU (net/resnet.py), and their released checkpoints were
# trained without one.
PRESETS: dict[str, dict] = {
    # ResNet-50; BNNeck and classifier per frame, features and logits averaged over the frames
    # (the authors' Resnet50_s1 with --temporal mean, run_baseline.sh).
    "baseline": {"head": "frame"},
    # Five full non-local blocks: after the last 2 blocks of stage 2 and last 3 of stage 3.
    "nvan": {"non_local": (0, 2, 3, 0)},
    # NVAN plus spatial reduction (16 stripes) and temporal reduction (windows of 2 frames,
    # frame pairs max-pooled after stages 2 and 3: 8 frames -> 4 -> 2).
    "ste_nvan": {
        "non_local": (0, 2, 3, 0),
        "stripes": (16, 16, 16, 16),
        "nl_window": 2,
        "temporal_pool_after": (2, 3),
    },
}


def preset_spec(name: str, num_classes: int, width: int = 64, **overrides) -> ModelSpec:
    """The ModelSpec of preset `name`, with any ModelSpec fields in `overrides` replaced."""
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    spec = ModelSpec(num_classes=num_classes, width=width, **PRESETS[name])
    return replace(spec, **overrides) if overrides else spec
