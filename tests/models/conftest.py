"""Shared fixtures for the models tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture
def randomize_norms():
    """Give every BatchNorm random affine parameters and running stats (fresh non-local blocks are zeros;
    the BNNeck's frozen bias too, since a loaded checkpoint may hold any value there)."""

    def apply(model: nn.Module, seed: int = 0) -> nn.Module:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    n = m.num_features
                    m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                    m.bias.copy_(0.1 * torch.randn(n, generator=generator))
                    m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                    m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
        return model

    return apply


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}-threads")
def threads(request):
    """Run the test with 1 and with 2 torch threads: reduction order, hence rounding, depends on them."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
