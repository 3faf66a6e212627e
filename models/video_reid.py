"""VideoReIDNet: per-frame ResNet-50 with non-local blocks, temporal pooling and a BNNeck head.

Module names, for per-stage cost breakdowns and state dicts:
  stem        backbone.conv1, backbone.bn1, backbone.maxpool (and backbone.relu if spec.stem_relu)
  stage i     backbone.layer{i}        (torchvision names; an ImageNet resnet50 loads here)
  non-local   non_local.layer{i}.{j}   (j-th block of stage i in order of depth)
  head        bottleneck (BatchNorm1d BNNeck, bias frozen at 0), classifier (Linear, no bias)
Temporal pooling and the clip average have no parameters and no modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.nonlocal_block import NonLocalBlock
from models.resnet import ResNet
from models.spec import ModelSpec, SpecError


class VideoReIDNet(nn.Module):
    """Clips (B, T, 3, H, W) -> (feature, logits) in train mode, the BNNeck feature in eval mode.

    Stage i's non-local blocks follow its last `spec.non_local[i-1]` residual blocks; after
    each stage in `spec.temporal_pool_after`, consecutive frame pairs are max-pooled. The
    clip feature is the average of the last stage over T, H and W. With `spec.head == "frame"`
    the BNNeck and classifier see each frame's average over H and W, and their outputs are
    averaged over the frames.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = ResNet(spec.width, spec.last_stride, spec.stem_relu)
        self.non_local = nn.ModuleDict(
            {
                f"layer{stage}": nn.ModuleList(
                    NonLocalBlock(spec.stage_channels(stage), spec.stripes[stage - 1], spec.nl_window)
                    for _ in range(n)
                )
                for stage, n in enumerate(spec.non_local, start=1)
                if n
            }
        )
        self.bottleneck = nn.BatchNorm1d(spec.feature_dim)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(spec.feature_dim, spec.num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        # oneDNN convolutions run faster on NHWC; channels-last weights make every conv
        # output NHWC, which also lets the non-local blocks view (B, T, H, W, C) tokens.
        self.backbone.to(memory_format=torch.channels_last)

    def forward(self, clips: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Clips (B, T, 3, H, W) pixels -> (B, D) BNNeck feature, or (B, D) feature and (B, classes) logits when training."""
        if clips.dim() != 5 or clips.shape[2] != 3:
            raise SpecError(f"expected clips of shape (B, T, 3, H, W), got {tuple(clips.shape)}")
        b, t, _, h, w = clips.shape
        self.spec.validate_input(t, h, w)
        x = self.backbone.stem(clips.flatten(0, 1))
        for stage, layer in enumerate(self.backbone.stages, start=1):
            key = f"layer{stage}"
            blocks = self.non_local[key] if key in self.non_local else ()
            first = len(layer) - len(blocks)
            for i, residual in enumerate(layer):
                x = residual(x)
                if i >= first:
                    x = blocks[i - first](x.unflatten(0, (b, -1)).transpose(1, 2)).transpose(1, 2).flatten(0, 1)
            if stage in self.spec.temporal_pool_after:
                x = _pool_frame_pairs(x, b)
        frames = x.unflatten(0, (b, -1)).mean((3, 4))  # (B, T', D)
        if self.spec.head == "frame":
            neck = self.bottleneck(frames.flatten(0, 1)).unflatten(0, (b, -1))
            if not self.training:
                return neck.mean(1)
            return frames.mean(1), self.classifier(neck).mean(1)
        feature = frames.mean(1)
        if not self.training:
            return self.bottleneck(feature)
        return feature, self.classifier(self.bottleneck(feature))


def _pool_frame_pairs(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Frames (B * T, C, H, W) -> (B * T / 2, C, H, W): max over frames (0, 1), (2, 3), ..."""
    clip = x.unflatten(0, (batch, -1)).transpose(1, 2)
    return F.max_pool3d(clip, (2, 1, 1)).transpose(1, 2).flatten(0, 1)


def build_model(spec: ModelSpec) -> VideoReIDNet:
    """A freshly initialised VideoReIDNet for `spec` (non-local blocks start as identity)."""
    return VideoReIDNet(spec)
