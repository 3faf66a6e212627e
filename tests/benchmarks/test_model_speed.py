"""SDPA non-local and full-model inference speed against a straightforward implementation.

The full model runs as deployed for inference: eval mode, torch.inference_mode, channels-last
backbone, SDPA attention and conv+BN folding (fuse_for_inference), on torch's default
thread count. The reference has the same weights, default layouts, explicit attention and
no folding.

Run: pytest tests/benchmarks/test_model_speed.py --benchmark-only -n 0
"""

import copy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.measure.memory import peak_rss_mib, reset_peak_rss
from models.fuse import fuse_for_inference
from models.nonlocal_block import NonLocalBlock
from models.presets import PRESETS, preset_spec
from models.video_reid import build_model
from reference import ExplicitNonLocal, straightforward

ROUNDS = 7
STAGE2 = (1, 512, 8, 32, 16)  # NVAN's stage-2 non-local input at T = 8, 256 x 128: (B, C, T, H, W)


def open_non_local(model: nn.Module) -> nn.Module:
    """Eval-mode `model` whose non-local blocks add their output (a fresh block adds zero)."""
    for m in model.modules():
        if isinstance(m, NonLocalBlock):
            nn.init.ones_(m.W[1].weight)
    return model.eval()


def race(benchmark, fast, reference, *args) -> tuple[float, float]:
    """Fastest-round seconds of `fast` (benchmarked) and `reference`, timed alternately.

    The reference runs in pytest-benchmark's untimed setup before each round, so load from
    other processes on a shared machine hits both sides alike; the minimum is the least noisy.
    """
    reference_times = []

    def time_reference():
        start = time.perf_counter()
        reference(*args)
        reference_times.append(time.perf_counter() - start)

    reference(*args)
    benchmark.pedantic(fast, args=args, setup=time_reference, rounds=ROUNDS, warmup_rounds=1)
    return benchmark.stats.stats.min, min(reference_times)


def block_peak_mib(variant: str) -> float:
    """Peak resident memory (MiB) added by one stage-2 block forward, measured in this fresh process."""
    torch.manual_seed(0)
    block = (ExplicitNonLocal if variant == "explicit" else NonLocalBlock)(STAGE2[1]).eval()
    x = torch.randn(STAGE2).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        block(x)
        before = reset_peak_rss()  # so only this forward counts
        block(x)
        return peak_rss_mib(before)


def _peak_in_child(variant: str) -> float:
    """block_peak_mib in a fresh interpreter: the pytest process's freed pages would hide allocations."""
    here = Path(__file__).parent  # the benchmark and, one up, tests/reference.py
    code = (f"import sys; sys.path[:0] = [{str(here)!r}, {str(here.parent)!r}]; import test_model_speed as t; "
            f"print(t.block_peak_mib({variant!r}))")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory needs Linux /proc")
def test_nonlocal_stage2_sdpa_vs_explicit(benchmark):
    torch.manual_seed(0)
    block = open_non_local(NonLocalBlock(STAGE2[1]))
    explicit = copy.deepcopy(block)
    explicit.__class__ = ExplicitNonLocal
    x = torch.randn(STAGE2).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        assert torch.allclose(block(x), explicit(x), atol=1e-4)
        sdpa_s, explicit_s = race(benchmark, block, explicit, x)
    sdpa_mib, explicit_mib = _peak_in_child("sdpa"), _peak_in_child("explicit")
    benchmark.extra_info.update(
        threads=torch.get_num_threads(),
        shape_BCTHW=STAGE2,
        sdpa_min_s=sdpa_s,
        explicit_min_s=explicit_s,
        sdpa_peak_mib=sdpa_mib,
        explicit_peak_mib=explicit_mib,
    )
    assert sdpa_s <= explicit_s, f"SDPA {sdpa_s:.3f} s vs explicit {explicit_s:.3f} s"
    assert sdpa_mib <= explicit_mib / 2, f"SDPA {sdpa_mib:.1f} MiB vs explicit {explicit_mib:.1f} MiB"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_full_forward_vs_straightforward(benchmark, name):
    torch.manual_seed(0)
    model = open_non_local(build_model(preset_spec(name, num_classes=625, width=64)))
    reference, model = straightforward(model), fuse_for_inference(model)
    clips = torch.randn(1, 8, 3, 256, 128)
    with torch.inference_mode():
        fast, slow = model(clips), reference(clips)
        assert (fast - slow).abs().max() <= 1e-5 * slow.abs().max()
        model_s, reference_s = race(benchmark, model, reference, clips)
    benchmark.extra_info.update(
        threads=torch.get_num_threads(), input_TxHxW="8x256x128", model_min_s=model_s, reference_min_s=reference_s
    )
    if name == "nvan":
        assert model_s <= 0.9 * reference_s, f"NVAN {model_s:.3f} s vs straightforward {reference_s:.3f} s"
