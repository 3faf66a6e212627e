import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from harness.config import InputSize
from harness.measure.cost import cost_of
from harness.measure.macs import PARTS, count_macs, count_params, macs_on_meta, part_of
from harness.measure.timing import Latency, measure
from models.nonlocal_block import NonLocalBlock
from models.presets import preset_spec
from models.video_reid import build_model

ROOT = Path(__file__).resolve().parents[3]


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_small_layers_match_hand_count():
    # conv: 4 out x 8 x 8 positions x (3 in x 3 x 3) = 6912; linear: 256 x 5 = 1280; batch of 2.
    macs, _, _ = count_macs(Tiny(), torch.randn(2, 3, 8, 8))
    assert macs == 2 * (4 * 8 * 8 * 3 * 3 * 3 + 256 * 5)


class Attention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)


class BroadcastMatmul(nn.Module):
    def forward(self, a, b):
        return torch.matmul(a, b)


def test_attention_macs_equal_formula():
    # N positions, C' channels: theta^T phi is N*N*C', times g another N*N*C' -> 2 N^2 C'.
    n, c = 96, 16
    q, k, v = (torch.randn(1, 1, n, c) for _ in range(3))
    model = Attention()
    macs, _, _ = count_macs(model, (q, k, v))
    assert macs == 2 * n * n * c


def test_matmul_with_broadcast_batch_on_the_right():
    a, b = torch.randn(7, 5), torch.randn(3, 5, 4)
    macs, _, _ = count_macs(BroadcastMatmul(), (a, b))
    assert macs == 3 * 7 * 5 * 4


@pytest.mark.parametrize("preset", ["baseline", "nvan", "ste_nvan"])
def test_fvcore_agrees_with_flop_counter_mode(preset):
    spec = preset_spec(preset, num_classes=11, width=8, stripes=(4, 4, 4, 4) if preset == "ste_nvan" else (0,) * 4)
    model = build_model(spec).eval()
    clips = torch.randn(1, 4, 3, 64, 32)
    macs, by_part, _ = count_macs(model, clips)
    counter = FlopCounterMode(display=False)
    # FlopCounterMode has no formula for the CPU flash kernel the blocks run (it counts it as 0): count
    # the same attention in its math form.
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(clips)
    assert macs == counter.get_total_flops() // 2
    assert sum(by_part.values()) == macs
    assert macs == macs_on_meta(spec, InputSize(frames=4, height=64, width=32))
    assert (by_part["non_local"] > 0) == (preset != "baseline")


def test_non_local_part_is_attention_plus_projections():
    # One full block on C channels, N positions: 3 projections C->C/2, W: C/2->C, attention 2 N^2 C/2.
    c, t, h, w = 32, 2, 4, 4
    n = t * h * w
    block = NonLocalBlock(c).eval()
    macs, _, _ = count_macs(block, torch.randn(1, c, t, h, w))
    assert macs == 3 * n * c * (c // 2) + n * (c // 2) * c + 2 * n * n * (c // 2)


def test_part_of_names():
    assert part_of("backbone.conv1") == "stem"
    assert part_of("backbone.layer3.2.conv2") == "stage3"
    assert part_of("non_local.layer2.0.theta") == "non_local"
    assert part_of("bottleneck") == "head"


def test_params_split_and_report_fields():
    spec = preset_spec("nvan", num_classes=13, width=8)
    model = build_model(spec)
    total, by_part, classifier = count_params(model)
    assert classifier == 13 * spec.feature_dim
    assert total + classifier == sum(p.numel() for p in model.parameters())
    assert set(by_part) == set(PARTS) and by_part["non_local"] > 0
    report = cost_of("nvan", spec, InputSize(frames=4, height=64, width=32), measure_time=True, repeats=5, warmup=1, threads=1)
    lat = report.latency
    assert 0 < lat.min_s <= lat.q1_s <= lat.median_s <= lat.q3_s <= lat.max_s and lat.repeats == 5
    assert lat.threads == 1 and lat.device.startswith("cpu: ") and report.peak_memory_mb > 0
    assert lat.other_cpus is None or lat.other_cpus >= 0
    assert report.input_label == "4x64x32" and report.as_dict()["latency"]["noisy"] == lat.noisy


def test_latency_spread_and_noise():
    quiet = Latency.of([0.010, 0.0101, 0.0102, 0.0099, 0.0100], threads=2, device="cpu: x", other_cpus=0.02)
    assert quiet.median_s == 0.0100 and quiet.min_s == 0.0099 and quiet.max_s == 0.0102 and not quiet.noisy
    assert Latency.of([0.0064, 0.0285, 0.0070], 2, "cpu: x", 0.0).noisy  # the spread: 3.4x the median
    assert Latency.of([0.010, 0.010, 0.010], 2, "cpu: x", 1.5).noisy  # a core and a half of other work
    assert Latency.of([0.010], 1, "cpu: x", None).as_dict()["spread"] == 0.0


def test_peak_memory_holds_the_largest_activation():
    """One forward must hold some layer's input and output at once: a floor for the peak memory."""
    spec = preset_spec("baseline", num_classes=13, width=64)
    size = InputSize(frames=8, height=256, width=128)
    model = build_model(spec).eval()
    floor = 0

    def hook(module, inputs, output):
        nonlocal floor
        floor = max(floor, inputs[0].nbytes + output.nbytes)

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.inference_mode():
        model(torch.randn(1, size.frames, 3, size.height, size.width))
    _, peak_mb = measure(spec, size, warmup=1, repeats=1, threads=1)
    assert floor / 2**20 > 20
    assert peak_mb >= floor / 2**20


@pytest.mark.slow
def test_cli_writes_json(tmp_path):
    out = tmp_path / "cost.json"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cost", "--set", "cost.width=8", "--input", "4x64x32",
         "--preset", "baseline", "--preset", "nvan", "--set", "cost.benchmark=false", "--no-measure", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["reports"]] == ["baseline", "nvan"]
    assert data["reports"][1]["macs"] > data["reports"][0]["macs"]
    assert "GMACs" in proc.stdout


@pytest.mark.slow
def test_cli_costs_the_benchmark_models_with_their_preset_params(tmp_path):
    out = tmp_path / "cost.json"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cost", "--set", "cost.width=8", "--input", "8x256x128", "--preset", "ste_nvan",
         "--set", "model.width=4", "--set", "presets.ste_nvan.stripes=[4,4,4,4]", "--set", "data.height=128",
         "--set", "data.width=64", "--no-measure", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    paper, trained = json.loads(out.read_text())["reports"]
    assert (paper["model_width"], paper["input"]) == (8, "8x256x128")
    assert (trained["model_width"], trained["input"]) == (4, "8x128x64")
    assert trained["macs"] == macs_on_meta(preset_spec("ste_nvan", 625, width=4, stripes=(4, 4, 4, 4)),
                                           InputSize(frames=8, height=128, width=64))


def test_cli_rejects_bad_input_size():
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cost", "--input", "8x256", "--no-measure"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 2 and "TxHxW" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("sampler", ["dense", "chunk_first"])
def test_gmacs_per_tracklet_match_a_hand_count(prepared_root, sampler):
    """Under `dense` a tracklet of F frames runs ceil(F / T) clips; other test samplers run one."""
    import polars as pl

    from harness.params import load_config
    from harness.measure.run_cost import run_cost

    frames = 3
    lengths = pl.read_parquet(prepared_root / "mars" / "tracklets.parquet").filter(
        pl.col("split") == "test")["num_frames"].to_list()
    assert len(set(lengths)) > 2 and max(lengths) > 2 * frames  # tracklets of one, two and more clips
    by_hand = [1 + (n - 1) // frames if sampler == "dense" else 1 for n in lengths]
    config = load_config(Path(__file__).resolve().parents[3] / "params.yaml", [
        f"data.prepared_root={prepared_root}", f"data.frames={frames}", "data.height=64", "data.width=32",
        "model.preset=nvan", "model.width=4", "model.stripes=null", f"eval.sampler={sampler}", "cost.measure=false"])
    spec = config.spec(5)
    cost = run_cost(config, spec, prepared_root / "mars")
    per_clip = macs_on_meta(spec, InputSize(frames=frames, height=64, width=32)) / 1e9
    assert cost["gmacs"] == pytest.approx(per_clip, rel=1e-12)
    assert cost["test_tracklets"] == len(lengths)
    assert cost["clips_per_tracklet"] == pytest.approx(sum(by_hand) / len(lengths), rel=1e-12)
    assert cost["gmacs_per_tracklet"] == pytest.approx(per_clip * sum(by_hand) / len(lengths), rel=1e-12)
    assert cost["gmacs_per_frame"] == pytest.approx(per_clip / frames, rel=1e-12)
    assert cost["eval_sampler"] == sampler and cost["latency"] is None
