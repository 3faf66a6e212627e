"""The CUDA paths of every preset: real training steps (amp none / bf16 / fp16, both layouts, SyncBatchNorm in
DDP), features against the CPU's, and the SDPA kernels the non-local blocks run.

Skipped without CUDA; `python -m harness.gpu_check` runs it on a GPU node.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from datasets.loaders import EvalClips, TrainClips, set_epoch, train_loader
from harness.config import TrainConfig
from harness.evaluate.features import autocast, extract_features
from harness.measure.sdpa_kernels import all_fused, sdpa_kernels
from harness.train.worker import build_optimizer, train_epoch, training_model
from models.fuse import inference_model
from models.presets import preset_spec
from models.video_reid import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: python -m harness.gpu_check")

DEVICE = torch.device("cuda")
PRESETS = ("baseline", "nvan", "ste_nvan")
ATTENDING = ("nvan", "ste_nvan")
AMPS = ("none", "bf16", "fp16")
FRAMES, HEIGHT, WIDTH, P, K = 8, 256, 128, 2, 2  # the paper's clips, batches of 2 identities x 2 tracklets
MODEL_WIDTH = 16  # every layer and non-local block of the real network, at a sixteenth of ResNet-50's MACs
# GradScaler skips steps whose gradients overflow at its first scales (2**16, halving each time); a skipped
# step creates no Adam state. The test set's two P x K steps per pass, over this many passes, leave it room.
PASSES = 4
# Features of fp32 on CUDA (TF32 off, the harness's default), TF32 (torch's own default for cuDNN convolutions;
# the harness's with train.tf32: true) and bf16 autocast against fp32 on the CPU: bounds on max |cuda - cpu| /
# max |cpu| and on 1 - the least per-tracklet cosine similarity. fp32 differs only in summation order (1e-5
# between CPU batch sizes). bf16 autocast on the CPU is off by up to 1.9e-2 and 2.3e-4 on these models; TF32
# keeps 3 more mantissa bits (errors 8x smaller, cosine's 64x).
BOUNDS = {"fp32": (1e-4, 1e-6), "tf32": (2e-2, 2.5e-4), "bf16": (8e-2, 1e-3)}


@pytest.fixture(scope="module")
def train_set(prepared_mars) -> TrainClips:
    return TrainClips(prepared_mars, FRAMES, seed=0)


@pytest.fixture(scope="module")
def eval_set(prepared_mars) -> EvalClips:
    return EvalClips(prepared_mars, FRAMES)


def fresh_model(preset: str, num_classes: int, channels_last: bool = True, sync_bn: bool = False) -> nn.Module:
    """The training model of `preset` at MODEL_WIDTH on the GPU; build_model leaves its backbone channels-last."""
    torch.manual_seed(0)
    model = training_model(preset_spec(preset, num_classes, width=MODEL_WIDTH), sync_bn=sync_bn)
    if not channels_last:
        model.backbone.to(memory_format=torch.contiguous_format)
    return model.to(DEVICE)


def assert_trains(model: nn.Module, plain: nn.Module, data: TrainClips, amp: str) -> None:
    """Train `model` (`plain`, or DDP around it) with harness.train_loop under `amp`: finite loss, weights move."""
    before = {n: p.detach().clone() for n, p in plain.named_parameters()}
    train = TrainConfig(batch_size=P * K, k=K, amp=amp)
    optimizer = build_optimizer(model, train)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    loader = train_loader(data, P, K)
    for epoch in range(PASSES):
        set_epoch(loader, epoch)
        stats = train_epoch(model, loader, optimizer, train, DEVICE, scaler, epoch)
        assert math.isfinite(stats["loss"]) and stats["loss"] > 0, stats
        if optimizer.state:
            break
    assert optimizer.state, f"no optimizer step in {PASSES} passes: GradScaler found inf gradients every time"
    after = dict(plain.named_parameters())
    assert all(torch.isfinite(p).all() for p in after.values())
    changed = {n for n, p in after.items() if not torch.equal(p.detach(), before[n])}
    # The stem sees gradients through the whole network; a fresh non-local block's convs get none (its last BN is 0).
    assert {"backbone.conv1.weight", "classifier.weight"} <= changed


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "contiguous"])
@pytest.mark.parametrize("amp", AMPS)
@pytest.mark.parametrize("preset", PRESETS)
def test_training_step(preset, amp, channels_last, train_set):
    model = fresh_model(preset, train_set.num_classes, channels_last)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert_trains(model, model, train_set, amp)


@pytest.mark.parametrize("amp", AMPS)
@pytest.mark.parametrize("preset", PRESETS)
def test_sync_bn_training_step_in_ddp(preset, amp, train_set, nccl_group):
    plain = fresh_model(preset, train_set.num_classes, sync_bn=True)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in plain.modules()) > 50
    model = DistributedDataParallel(plain, device_ids=[torch.cuda.current_device()])
    assert_trains(model, plain, train_set, amp)


def attending_model(preset: str) -> nn.Module:
    """A fresh CPU model of `preset` whose non-local blocks contribute (a fresh one is the identity: its last BN is 0)."""
    torch.manual_seed(0)
    model = build_model(preset_spec(preset, 625, width=MODEL_WIDTH)).eval()
    with torch.no_grad():
        for blocks in model.non_local.values():
            for block in blocks:
                block.W[1].weight.fill_(1.0)
    return model


@pytest.fixture(scope="module")
def reference(eval_set):
    """preset -> (its attending model, its float32 CPU features), each computed once."""
    cache = {}

    def get(preset: str) -> tuple[nn.Module, np.ndarray]:
        if preset not in cache:
            model = attending_model(preset)
            cache[preset] = model, extract_features(model, eval_set, 4, "cpu", progress=False)
        return cache[preset]

    return get


@pytest.mark.parametrize("precision", list(BOUNDS))
@pytest.mark.parametrize("preset", PRESETS)
def test_cuda_features_match_cpu(preset, precision, eval_set, reference, monkeypatch):
    model, expected = reference(preset)
    # TF32 is cuDNN's default for convolutions; cuBLAS matmuls stay full float32 unless asked.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", precision != "fp32")
    amp = "bf16" if precision == "bf16" else "none"
    features = extract_features(model, eval_set, 4, DEVICE, progress=False, amp=amp)
    assert features.dtype == np.float32 and features.shape == expected.shape
    error = np.abs(features - expected).max() / np.abs(expected).max()
    cosine = (features * expected).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(expected, axis=1)
    worst, least_cosine = BOUNDS[precision]
    assert error <= worst and 1 - cosine.min() <= least_cosine, (error, 1 - cosine.min())


# At full width the non-local blocks' head dims are 256 (stage 2) and 512 (stage 3); STE-NVAN's windows hold
# 32 tokens. The math fallback materialises every N x N affinity: evaluation must never run it.
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("amp", AMPS)
@pytest.mark.parametrize("preset", ATTENDING)
def test_evaluation_attention_runs_fused_kernels(preset, amp, batch, record_property):
    torch.manual_seed(0)
    model = inference_model(build_model(preset_spec(preset, 625)).eval()).to(DEVICE)
    clips = torch.randn(batch, FRAMES, 3, HEIGHT, WIDTH, device=DEVICE)
    with torch.inference_mode(), autocast(DEVICE, amp):
        kernels = sdpa_kernels(model, clips)
    record_property("sdpa_kernels", sorted(kernels))
    assert all_fused(kernels), f"{preset}, amp {amp}, batch {batch} ran {sorted(kernels)}"


@pytest.mark.parametrize("amp", AMPS)
@pytest.mark.parametrize("preset", ATTENDING)
def test_training_attention_runs_fused_kernels(preset, amp, record_property):
    torch.manual_seed(0)
    model = build_model(preset_spec(preset, 625)).train().to(DEVICE)
    clips = torch.randn(2, FRAMES, 3, HEIGHT, WIDTH, device=DEVICE)  # training batch norm needs 2 clips

    def step():
        with autocast(DEVICE, amp):
            features, logits = model(clips)
        (features.float().sum() + logits.float().sum()).backward()

    kernels = sdpa_kernels(step)
    record_property("sdpa_kernels", sorted(kernels))
    assert all_fused(kernels) and any(k.endswith("_backward") for k in kernels), sorted(kernels)
