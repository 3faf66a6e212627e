"""Inference copy of a VideoReIDNet with every BatchNorm that follows a convolution folded into it."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from models.video_reid import VideoReIDNet


def fuse_for_inference(model: VideoReIDNet) -> VideoReIDNet:
    """An eval-mode copy of `model` with conv+BN pairs folded (those BNs become Identity); same features."""
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        # Our modules register each BN right after the conv whose output it normalises.
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    # Folding allocates new weights in the default layout; keep the backbone's NHWC ones.
    fused.backbone.to(memory_format=torch.channels_last)
    return fused


def inference_model(model: VideoReIDNet, compile: bool = False) -> nn.Module:
    """The model as evaluated and as timed by the cost table: BN folded, eval mode, optionally torch.compile'd."""
    fused = fuse_for_inference(model)
    return torch.compile(fused) if compile else fused
