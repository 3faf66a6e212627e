"""ModelSpec: the one description of a video re-ID network that every layer agrees on."""

from __future__ import annotations

from dataclasses import dataclass, field

# ResNet-50 bottleneck blocks per stage.
STAGE_BLOCKS = (3, 4, 6, 3)
# Where the BNNeck and classifier sit: on the clip feature, or on every frame's (then averaged).
HEADS = ("clip", "frame")


class SpecError(ValueError):
    """A ModelSpec (or a spec at a given input size) that cannot be built."""


@dataclass(frozen=True)
class ModelSpec:
    """Backbone width, non-local placement, spatial/temporal reduction and head of one model.

    `width` is the stem's channel count (64 = ResNet-50); stage i has width * 2**i * 4
    output channels. `non_local[i]` blocks go after the last blocks of stage i + 1;
    `stripes[i]` > 0 pools that stage's non-local input into horizontal stripes;
    `nl_window` > 0 restricts attention to windows of that many frames;
    `temporal_pool_after` lists stages (1-4) after which frame pairs are max-pooled.
    `stem_relu` adds torchvision's ReLU after the stem's batch norm; the STE-NVAN authors'
    network has none (False). `head` "clip" puts the BNNeck and classifier on the clip feature
    (the authors' NVAN and STE-NVAN); "frame" puts them on each frame's feature and averages
    features and logits over the frames (the authors' baseline, `--temporal mean`), so in
    training the BNNeck normalises with frame statistics.
    """

    num_classes: int
    width: int = 64
    last_stride: int = 1
    non_local: tuple[int, int, int, int] = (0, 0, 0, 0)
    stripes: tuple[int, int, int, int] = (0, 0, 0, 0)
    nl_window: int = 0
    temporal_pool_after: tuple[int, ...] = field(default_factory=tuple)
    stem_relu: bool = False
    head: str = "clip"

    def __post_init__(self) -> None:
        # Lists from YAML become tuples so the spec stays hashable and frozen.
        for name in ("non_local", "stripes", "temporal_pool_after"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    @property
    def feature_dim(self) -> int:
        """Channels of the last stage, i.e. the clip feature size."""
        return self.stage_channels(4)

    def stage_channels(self, stage: int) -> int:
        """Output channels of stage 1..4."""
        return self.width * 4 * 2 ** (stage - 1)

    def stage_stride(self, stage: int) -> int:
        """Spatial downsampling factor of stage 1..4's output relative to the input image."""
        strides = (4, 8, 16, 16 if self.last_stride == 1 else 32)
        return strides[stage - 1]

    def validate(self) -> None:
        """Raise SpecError naming the field when the spec is not buildable at any input."""
        if self.num_classes < 1:
            raise SpecError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.width < 1:
            raise SpecError(f"width must be a positive integer (64 = ResNet-50), got {self.width}")
        if self.last_stride not in (1, 2):
            raise SpecError(f"last_stride must be 1 or 2, got {self.last_stride}")
        if len(self.non_local) != 4:
            raise SpecError(
                f"non_local must list 4 block counts (one per stage), got {list(self.non_local)}"
            )
        for stage, (n, available) in enumerate(zip(self.non_local, STAGE_BLOCKS), start=1):
            if not isinstance(n, int) or n < 0 or n > available:
                raise SpecError(
                    f"non_local[{stage - 1}] = {n!r}: stage {stage} has {available} residual "
                    f"blocks, so it takes 0..{available} non-local blocks"
                )
        if len(self.stripes) != 4:
            raise SpecError(f"stripes must list 4 values (one per stage), got {list(self.stripes)}")
        for stage, s in enumerate(self.stripes, start=1):
            if not isinstance(s, int) or s < 0:
                raise SpecError(f"stripes[{stage - 1}] = {s!r}: expected 0 (full) or a positive count")
        if not isinstance(self.nl_window, int) or self.nl_window < 0:
            raise SpecError(f"nl_window = {self.nl_window!r}: expected 0 (whole clip) or a positive frame count")
        if not isinstance(self.stem_relu, bool):
            raise SpecError(f"stem_relu = {self.stem_relu!r}: expected true or false")
        if self.head not in HEADS:
            raise SpecError(f"head = {self.head!r}: expected one of {list(HEADS)}")
        if len(set(self.temporal_pool_after)) != len(self.temporal_pool_after) or any(
            s not in (1, 2, 3, 4) for s in self.temporal_pool_after
        ):
            raise SpecError(
                f"temporal_pool_after = {list(self.temporal_pool_after)}: expected distinct stages from 1..4"
            )

    def frames_at(self, stage: int, frames: int) -> int:
        """Frames entering stage 1..4 for a clip of `frames` frames (after earlier temporal pools)."""
        pools = sum(1 for s in self.temporal_pool_after if s < stage)
        return frames // 2**pools

    def validate_input(self, frames: int, height: int, width: int) -> None:
        """Raise SpecError when this spec cannot run on clips of frames x height x width."""
        if frames < 1 or height < 1 or width < 1:
            raise SpecError(f"input {frames}x{height}x{width} (T x H x W) must be positive")
        t = frames
        for stage in (1, 2, 3, 4):
            feat_h = -(-height // self.stage_stride(stage))
            if self.non_local[stage - 1]:
                s = self.stripes[stage - 1]
                if s and feat_h % s:
                    raise SpecError(
                        f"stripes[{stage - 1}] = {s} does not divide the feature height {feat_h} of "
                        f"stage {stage} at input height {height}; use a divisor of {feat_h} or 0"
                    )
                if self.nl_window and t % self.nl_window:
                    raise SpecError(
                        f"nl_window = {self.nl_window} does not divide the {t} frames reaching "
                        f"stage {stage} (clip of {frames}); choose T so that it does"
                    )
            if stage in self.temporal_pool_after:
                if t % 2:
                    raise SpecError(
                        f"temporal pooling after stage {stage} needs an even frame count there, "
                        f"got {t} (clip of {frames} frames); use T divisible by "
                        f"{2 ** len(self.temporal_pool_after)}"
                    )
                t //= 2
