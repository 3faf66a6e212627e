"""Embedded-Gaussian non-local block (Wang et al., 2018) with stripe and frame-window reduction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.spec import SpecError


class NonLocalBlock(nn.Module):
    """z = x + BN(W(softmax(theta(x)^T phi(x)) g(x))) over the positions (t, h, w) of a clip.

    `stripes` > 0 average-pools each frame into that many horizontal stripes before theta,
    phi and g (SRNL); each stripe's output is added to all of its pixels. `window` > 0 lets
    positions attend only within groups of that many consecutive frames. The final BN starts
    at zero, so a fresh block is the identity.
    """

    def __init__(self, channels: int, stripes: int = 0, window: int = 0) -> None:
        super().__init__()
        inner = channels // 2
        self.stripes = stripes
        self.window = window
        self.theta = nn.Conv3d(channels, inner, 1)
        self.phi = nn.Conv3d(channels, inner, 1)
        self.g = nn.Conv3d(channels, inner, 1)
        self.W = nn.Sequential(nn.Conv3d(inner, channels, 1), nn.BatchNorm3d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clip features (B, C, T, H, W) -> same shape."""
        b, _, t, h, w = x.shape
        if self.stripes and h % self.stripes or self.window and t % self.window:
            raise SpecError(
                f"non-local block with stripes={self.stripes}, window={self.window} got T x H = "
                f"{t} x {h}; stripes must divide H and the window must divide T"
            )
        src = F.avg_pool3d(x, (1, h // self.stripes, w)) if self.stripes else x
        frames = self.window or t
        q, k, v = (self._tokens(conv(src), frames) for conv in (self.theta, self.phi, self.g))
        y = self.attention(q, k, v)
        # Back to (B, C/2, T, h', w'); with channels-last input this is a view, not a copy.
        y = y.reshape(b, t, *src.shape[3:], -1).permute(0, 4, 1, 2, 3)
        z = self.W(y)
        if not self.stripes:
            return x + z
        rows = x.unflatten(3, (self.stripes, h // self.stripes))
        return (rows + z.unsqueeze(4)).flatten(3, 4)

    @staticmethod
    def _tokens(y: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, C', T, h, w) -> (B * T / frames, 1, frames * h * w, C') contiguous, one row per window."""
        b, c, t, h, w = y.shape
        # A view for channels-last input; otherwise (batch 1 on CPU, NCDHW input) a copy: SDPA takes its fused
        # kernel only for a last-dimension stride of 1, and falls back to the slower math kernel.
        return y.permute(0, 2, 3, 4, 1).reshape(b * t // frames, 1, frames * h * w, c).contiguous()

    @staticmethod
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T) v without the 1/sqrt(d) scale, never materialising the N x N affinity."""
        # 4-D contiguous inputs select the flash kernel on CPU (3-D falls back to math).
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)
