"""ResNet-50 backbone with torchvision's parameter names, a base width and a last stride."""

from __future__ import annotations

import torch
from torch import nn

from models.spec import STAGE_BLOCKS


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand, residual."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (N, C, H, W) -> (N, 4 * planes, H / stride, W / stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet-50 trunk (no pooling, no fc) whose state dict matches torchvision's resnet50.

    The video network interleaves non-local blocks and temporal pooling between the
    residual blocks, so it calls `stem` and iterates over `stages` rather than a forward.
    `stem_relu` False gives the STE-NVAN authors' stem, conv1 -> bn1 -> maxpool with no
    activation (their net/resnet.py); True gives torchvision's conv1 -> bn1 -> relu -> maxpool.
    """

    def __init__(self, width: int = 64, last_stride: int = 1, stem_relu: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.stem_relu = stem_relu
        if stem_relu:
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        strides = (1, 2, 2, last_stride)
        for stage, (blocks, stride) in enumerate(zip(STAGE_BLOCKS, strides), start=1):
            planes = width * 2 ** (stage - 1)
            layer = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            layer += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{stage}", nn.Sequential(*layer))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        """layer1..layer4, each a sequence of Bottleneck blocks."""
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W) -> (N, width, H / 4, W / 4) pixels."""
        x = self.bn1(self.conv1(x))
        return self.maxpool(self.relu(x) if self.stem_relu else x)
