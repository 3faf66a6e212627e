"""An independent transcription of the STE-NVAN authors' networks, for fidelity tests only.

Written from the forward passes in jackie840129/STE-NVAN at 3042bc8 (net/resnet.py:
ResNet, ResNet_Video_nonlocal, ResNet_Video_nonlocal_stripe_hr, NonLocalBlock,
Stripe_NonLocalBlock; net/models.py: CNN, Resnet50_s1, Resnet50_NL; evaluate.py: the temporal
mean of the baseline). It shares no code with `models/`, keeps the authors' module names (so
its state dict is their checkpoint layout) and their literal tensor manipulations: explicit
softmax(theta^T phi) g, stripes pooled through a (b*c*t, stripes, h/stripes, w) view and
broadcast back with `repeat`, windows of 2 frames as a (-1, 2, C, H, W) view, temporal pooling
as torch.max over frame pairs, no ReLU in the stem.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYERS = (3, 4, 6, 3)


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class NonLocalBlock(nn.Module):
    """Their NonLocalBlock(instance='soft', bn_layer=True, sub_sample=False)."""

    def __init__(self, channels: int):
        super().__init__()
        self.inter = channels // 2
        self.g = nn.Conv3d(channels, self.inter, 1)
        self.W = nn.Sequential(nn.Conv3d(self.inter, channels, 1), nn.BatchNorm3d(channels))
        self.theta = nn.Conv3d(channels, self.inter, 1)
        self.phi = nn.Conv3d(channels, self.inter, 1)

    def forward(self, x):  # (b, c, t, h, w)
        b = x.size(0)
        g_x = self.g(x).view(b, self.inter, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(b, self.inter, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(b, self.inter, -1)
        f = F.softmax(torch.matmul(theta_x, phi_x), dim=-1)
        y = torch.matmul(f, g_x).permute(0, 2, 1).contiguous().view(b, self.inter, *x.size()[2:])
        return self.W(y) + x


class StripeNonLocalBlock(nn.Module):
    """Their Stripe_NonLocalBlock(stripe, pool_type='mean', instance='soft')."""

    def __init__(self, stripes: int, channels: int):
        super().__init__()
        self.stripes, self.inter = stripes, channels // 2
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.g = nn.Conv3d(channels, self.inter, 1)
        self.theta = nn.Conv3d(channels, self.inter, 1)
        self.phi = nn.Conv3d(channels, self.inter, 1)
        self.W = nn.Sequential(nn.Conv3d(self.inter, channels, 1), nn.BatchNorm3d(channels))

    def forward(self, x):
        b, c, t, h, w = x.shape
        s = self.stripes
        pooled = self.pool(x.reshape(b * c * t, s, h // s, w)).reshape(b, c, t, s, 1)
        g = self.g(pooled).reshape(b, self.inter, -1).permute(0, 2, 1)
        theta = self.theta(pooled).reshape(b, self.inter, -1).permute(0, 2, 1)
        phi = self.phi(pooled).reshape(b, self.inter, -1)
        f = F.softmax(torch.matmul(theta, phi), dim=-1)
        y = torch.matmul(f, g).permute(0, 2, 1).contiguous().reshape(b, self.inter, *pooled.size()[2:])
        w_y = self.W(y).repeat(1, 1, 1, 1, h // s * w).reshape(b, c, t, h, w)
        return w_y + x


class Backbone(nn.Module):
    """ResNet-50 trunk, stem without ReLU; `kind` 'plain' (ResNet), 'normal' (ResNet_Video_nonlocal)
    or 'stripe_hr' (ResNet_Video_nonlocal_stripe_hr), at a base `width` (64 = theirs)."""

    def __init__(self, kind: str, width: int = 64, non_layers=(0, 0, 0, 0), stripes=(16, 16, 16, 16)):
        super().__init__()
        self.kind, self.inplanes = kind, width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.nl_idx = []
        for stage in range(4):
            layer = self._make_layer(width * 2 ** stage, LAYERS[stage], 1 if stage in (0, 3) else 2)
            self.add_module(f"layer{stage + 1}", layer)
            if kind != "plain":
                block = (lambda c: StripeNonLocalBlock(stripes[stage], c)) if kind == "stripe_hr" else NonLocalBlock
                self.add_module(f"NL_{stage + 1}", nn.ModuleList(block(self.inplanes) for _ in range(non_layers[stage])))
                self.nl_idx.append(sorted(LAYERS[stage] - (i + 1) for i in range(non_layers[stage])))

    def _make_layer(self, planes: int, blocks: int, stride: int):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.ModuleList(layers)

    def forward(self, x):
        if self.kind == "plain":  # (N, C, H, W) frames
            x = self.maxpool(self.bn1(self.conv1(x)))
            for stage in range(1, 5):
                for block in getattr(self, f"layer{stage}"):
                    x = block(x)
            return x
        b, t, c, h, w = x.shape
        x = self.maxpool(self.bn1(self.conv1(x.reshape(b * t, c, h, w))))
        for stage in range(1, 5):
            blocks, nl = getattr(self, f"layer{stage}"), getattr(self, f"NL_{stage}")
            counter = 0
            for i, block in enumerate(blocks):
                x = block(x)
                if counter < len(nl) and i == self.nl_idx[stage - 1][counter]:
                    _, c, h, w = x.shape
                    # NVAN attends over the whole clip; STE-NVAN over windows of 2 frames.
                    x = x.reshape(-1, 2 if self.kind == "stripe_hr" else t, c, h, w).permute(0, 2, 1, 3, 4)
                    x = nl[counter](x).permute(0, 2, 1, 3, 4).reshape(-1, c, h, w)
                    counter += 1
            if self.kind == "stripe_hr" and stage in (2, 3):
                _, c, h, w = x.shape
                x = torch.max(x.reshape(-1, 2, c, h, w), dim=1)[0]
                t //= 2
        _, c, h, w = x.shape
        return x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


class Features(nn.Module):
    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        x = self.backbone(x)
        if self.backbone.kind == "plain":  # Resnet50_s1: AdaptiveAvgPool2d(1) per frame
            return F.adaptive_avg_pool2d(x, 1).view(x.shape[0], -1)
        return F.adaptive_avg_pool3d(x, 1).reshape(x.shape[0], -1)  # Resnet50_NL, temporal='Done'


class AuthorsCNN(nn.Module):
    """net/models.py CNN: features, BNNeck (bias frozen), classifier; eval returns the BNNeck output."""

    def __init__(self, preset: str, num_classes: int, width: int = 64, stripes=(16, 16, 16, 16)):
        super().__init__()
        kind = {"baseline": "plain", "nvan": "normal", "ste_nvan": "stripe_hr"}[preset]
        non_layers = (0, 0, 0, 0) if kind == "plain" else (0, 2, 3, 0)
        self.features = Features(Backbone(kind, width, non_layers, stripes))
        dim = width * 32
        self.bottleneck = nn.BatchNorm1d(dim)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)

    def forward(self, x):
        x = self.features(x)
        bn = self.bottleneck(x)
        return (x, self.classifier(bn)) if self.training else bn


def clip_outputs(net: AuthorsCNN, clips: torch.Tensor):
    """What the authors' train/evaluate loops take from `net` for clips (B, S, 3, H, W).

    Eval: the tracklet feature (the baseline's per-frame BNNeck outputs averaged, evaluate.py
    --temporal mean). Train: (pool_feat, pool_output) of train_NL.py / train_baseline.py.
    """
    b, s = clips.shape[:2]
    if net.features.backbone.kind != "plain":
        return net(clips)
    out = net(clips.reshape(b * s, *clips.shape[2:]))
    if not net.training:
        return out.reshape(b, s, -1).mean(1)
    feat, logits = out
    return feat.reshape(b, s, -1).mean(1), logits.reshape(b, s, -1).mean(1)


def batch_hard_soft_triplet(feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """util/loss.py TripletLoss('soft', batch_hard=True)(feat, labels, dis_func='eu').mean()."""
    dist = ((feat.unsqueeze(1) - feat.unsqueeze(0)) ** 2).sum(2).add(1e-12).sqrt()
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    positive = same & ~torch.eye(len(feat), dtype=torch.bool)
    max_positive = (dist * positive.float()).max(1)[0]
    min_negative = (dist + 1e5 * same.float()).min(1)[0]
    return torch.log(1 + torch.exp(max_positive - min_negative)).mean()
