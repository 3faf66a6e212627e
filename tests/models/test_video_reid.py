from dataclasses import replace

import pytest
import torch
from torch import nn

from models.nonlocal_block import NonLocalBlock
from models.presets import PRESETS, preset_spec
from models.resnet import Bottleneck
from models.spec import ModelSpec, SpecError
from models.video_reid import build_model
from reference import straightforward

# Width 8 and 8 x 64 x 32 clips: stage heights 16, 8, 4, 4, so STE-NVAN needs 4 stripes, not 16.
SMALL = {"baseline": {}, "nvan": {}, "ste_nvan": {"stripes": (4, 4, 4, 4)}}
CLIP = (2, 8, 3, 64, 32)


def small_model(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return build_model(preset_spec(name, num_classes=5, width=8, **{**SMALL[name], **overrides}))


def call_order(model: nn.Module, clips: torch.Tensor) -> list[str]:
    names = []
    for name, m in model.named_modules():
        if isinstance(m, (Bottleneck, NonLocalBlock)):
            m.register_forward_pre_hook(lambda mod, args, name=name: names.append(name))
    model(clips)
    return names


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_train_and_eval_outputs(name):
    model = small_model(name)
    clips = torch.randn(CLIP)
    feature, logits = model.train()(clips)
    assert feature.shape == (2, 256) and logits.shape == (2, 5)
    if model.spec.head == "clip":  # a frame head's logits average per-frame logits (test_authors_network)
        assert torch.allclose(model.bottleneck(feature) @ model.classifier.weight.T, logits, atol=1e-6)
    feature.sum().backward()
    assert model.backbone.conv1.weight.grad is not None
    with torch.no_grad():
        embedding = model.eval()(clips)
    assert embedding.shape == (2, 256)
    assert embedding.isfinite().all()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_equals_straightforward_implementation(name, randomize_norms, threads):
    # float64: the two paths sum in different orders (SDPA, channels-last), and the unscaled attention
    # logits (hundreds here) amplify rounding: in fp32 the paths differ by up to ~1e-5 relative,
    # machine- and thread-dependently. In float64 rounding is ~1e-16 x depth x logits <= 1e-11.
    model = randomize_norms(small_model(name)).eval().double()
    clips = torch.randn(CLIP, dtype=torch.float64)
    with torch.inference_mode():
        fast, reference = model(clips), straightforward(model)(clips)
    assert (fast - reference).abs().max() <= 1e-9 * reference.abs().max()


def test_head_layout():
    model = small_model("nvan")
    assert isinstance(model.bottleneck, nn.BatchNorm1d)
    assert not model.bottleneck.bias.requires_grad and torch.all(model.bottleneck.bias == 0)
    assert model.classifier.bias is None and model.classifier.weight.shape == (5, 256)
    assert model.spec == preset_spec("nvan", 5, width=8)


def test_nvan_places_blocks_after_the_last_residual_blocks():
    order = call_order(small_model("nvan").eval(), torch.randn(1, 2, 3, 64, 32))
    stage2_3 = [n for n in order if "layer2" in n or "layer3" in n]
    assert stage2_3 == [
        "backbone.layer2.0", "backbone.layer2.1", "backbone.layer2.2", "non_local.layer2.0",
        "backbone.layer2.3", "non_local.layer2.1",
        "backbone.layer3.0", "backbone.layer3.1", "backbone.layer3.2", "backbone.layer3.3",
        "non_local.layer3.0", "backbone.layer3.4", "non_local.layer3.1",
        "backbone.layer3.5", "non_local.layer3.2",
    ]  # fmt: skip
    assert len(order) == 16 + 5


def test_baseline_has_no_non_local_blocks():
    model = small_model("baseline")
    assert not any(isinstance(m, NonLocalBlock) for m in model.modules())


def test_temporal_pooling_halves_frames_with_pairwise_max():
    model = small_model("ste_nvan").eval()
    seen = {}

    def record(key, module):
        module.register_forward_pre_hook(lambda m, args: seen.update({key: args[0]}))

    record("nl2", model.non_local.layer2[0])
    record("stage2", model.non_local.layer2[-1])
    record("stage3", model.backbone.layer3[0])
    record("nl3", model.non_local.layer3[0])
    with torch.no_grad():
        model(torch.randn(1, 8, 3, 64, 32))
    assert (seen["nl2"].shape[2], seen["nl3"].shape[2]) == (8, 4)
    with torch.no_grad():
        clip = model.non_local.layer2[-1](seen["stage2"])  # (B, C, T, H, W) leaving stage 2
    pooled = torch.maximum(clip[:, :, 0::2], clip[:, :, 1::2]).transpose(1, 2).flatten(0, 1)
    assert torch.equal(seen["stage3"], pooled)


def test_parameters_of_each_preset():
    sizes = {name: sum(p.numel() for p in small_model(name).parameters()) for name in PRESETS}
    # Stage 2 blocks: 4 convs over C=64 <-> 32 plus a BN of 64; stage 3 over C=128 <-> 64.
    per_block = {64: 4 * (64 * 32 + 32) - 32 + 64 + 2 * 64, 128: 4 * (128 * 64 + 64) - 64 + 128 + 2 * 128}
    assert sizes["nvan"] - sizes["baseline"] == 2 * per_block[64] + 3 * per_block[128]
    assert sizes["ste_nvan"] == sizes["nvan"]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"non_local": (0, 2, 3)}, "4 block counts"),
        ({"non_local": (0, -1, 3, 0)}, r"non_local\[1\]"),
        ({"non_local": (0, 5, 3, 0)}, "stage 2 has 4"),
        ({"width": 0}, "width"),
        ({"width": -8}, "width"),
        ({"stripes": (0, -2, 0, 0)}, r"stripes\[1\]"),
        ({"temporal_pool_after": (5,)}, "temporal_pool_after"),
    ],
)
def test_invalid_specs_are_rejected(fields, message):
    with pytest.raises(SpecError, match=message):
        ModelSpec(num_classes=5, **fields)
    with pytest.raises(SpecError, match=message):
        replace(preset_spec("nvan", 5, width=8), **fields)


def test_unknown_preset():
    with pytest.raises(SpecError, match="unknown preset 'nvan2'"):
        preset_spec("nvan2", 5)


@pytest.mark.parametrize(
    "name, overrides, clip, message",
    [
        ("ste_nvan", {}, (1, 8, 3, 64, 32), r"stripes\[1\] = 16 does not divide the feature height 8"),
        ("nvan", {"stripes": (0, 3, 0, 0)}, (1, 4, 3, 64, 32), "does not divide the feature height"),
        ("ste_nvan", {"stripes": (4, 4, 4, 4), "nl_window": 0}, (1, 6, 3, 64, 32), "even frame count"),
        ("nvan", {"nl_window": 3}, (1, 4, 3, 64, 32), "nl_window = 3 does not divide"),
        ("nvan", {}, (1, 3, 64, 32), r"\(B, T, 3, H, W\)"),
    ],
)
def test_inputs_the_spec_cannot_run_are_rejected(name, overrides, clip, message):
    model = build_model(preset_spec(name, 5, width=8, **overrides))
    with pytest.raises(SpecError, match=message):
        model(torch.randn(clip))
