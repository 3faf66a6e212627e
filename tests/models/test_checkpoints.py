import re

import pytest
import torch

from models.checkpoints import CheckpointError, load_imagenet, load_official_checkpoint
from models.presets import PRESETS, preset_spec
from models.resnet import ResNet
from models.video_reid import build_model

SMALL = {"baseline": {}, "nvan": {}, "ste_nvan": {"stripes": (4, 4, 4, 4)}}


def official_layout(model) -> dict[str, torch.Tensor]:
    """The state dict the STE-NVAN authors' DataParallel model would save for `model`'s weights."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("non_local."):
            _, layer, j, rest = key.split(".", 3)
            key = f"features.backbone.NL_{layer.removeprefix('layer')}.{j}.{rest}"
        elif key.startswith("backbone."):
            key = "features." + key
        out["module." + key] = value.clone()
    return out


def trained(name, randomize_norms, num_classes=7):
    torch.manual_seed(1)
    return randomize_norms(build_model(preset_spec(name, num_classes, width=8, **SMALL[name]))).eval()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_official_round_trip(name, randomize_norms, tmp_path):
    source = trained(name, randomize_norms)
    path = tmp_path / "official.pth"
    torch.save(official_layout(source), path)
    loaded = load_official_checkpoint(path, name, **SMALL[name])
    assert loaded.spec == source.spec
    clips = torch.randn(2, 8, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(clips), source(clips))
    if name != "baseline":
        assert torch.equal(loaded.non_local.layer3[2].W[1].weight, source.non_local.layer3[2].W[1].weight)


def test_official_checkpoint_without_module_prefix(randomize_norms):
    source = trained("nvan", randomize_norms)
    state = {k.removeprefix("module."): v for k, v in official_layout(source).items()}
    loaded = load_official_checkpoint(state, "nvan")
    assert torch.equal(loaded.classifier.weight, source.classifier.weight)


def test_missing_and_unexpected_keys_are_listed(randomize_norms):
    state = official_layout(trained("nvan", randomize_norms))
    del state["module.features.backbone.NL_3.1.phi.bias"]
    del state["module.bottleneck.running_var"]
    state["module.features.backbone.fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as error:
        load_official_checkpoint(state, "nvan")
    message = str(error.value)
    assert "non_local.layer3.1.phi.bias" in message and "bottleneck.running_var" in message
    assert re.search(r"unexpected keys \['backbone.fc.weight'\]", message)


def test_wrong_preset_is_detected(randomize_norms):
    nvan = official_layout(trained("nvan", randomize_norms))
    with pytest.raises(CheckpointError, match=r"non-local blocks \[0, 2, 3, 0\] .* preset 'baseline' places \[0, 0, 0, 0\]"):
        load_official_checkpoint(nvan, "baseline")
    baseline = official_layout(trained("baseline", randomize_norms))
    with pytest.raises(CheckpointError, match="preset 'ste_nvan'"):
        load_official_checkpoint(baseline, "ste_nvan")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an STE-NVAN checkpoint"):
        load_official_checkpoint(path, "nvan")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official_checkpoint(tmp_path / "NVAN.pth", "nvan")


def torchvision_file(tmp_path, width=8):
    """A torchvision-named resnet50 state dict with an fc head, saved like torchvision's download."""
    torch.manual_seed(2)
    state = ResNet(width).state_dict()
    state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v for k, v in state.items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 32 * width), torch.randn(1000)
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    return path, state


def test_load_imagenet_round_trip(tmp_path):
    path, state = torchvision_file(tmp_path)
    model = build_model(preset_spec("nvan", 5, width=8))
    before = model.non_local.layer2[0].theta.weight.clone()
    load_imagenet(model, path)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(model.non_local.layer2[0].theta.weight, before)


def test_both_torchvision_layouts_load_the_same_weights(tmp_path):
    # resnet50-0676ba61.pth has a num_batches_tracked per batch norm; the older resnet50-19c8e357.pth has none.
    path, state = torchvision_file(tmp_path)
    assert any(k.endswith("num_batches_tracked") for k in state)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "resnet50-19c8e357.pth")
    models = [build_model(preset_spec("baseline", 5, width=8)) for _ in range(2)]
    load_imagenet(models[0], path)
    load_imagenet(models[1], tmp_path / "resnet50-19c8e357.pth")
    new, older = models[0].backbone.state_dict(), models[1].backbone.state_dict()
    assert new.keys() == older.keys()
    for key in new:
        if key.endswith("num_batches_tracked"):
            assert int(older[key]) == 0  # filled by BatchNorm's loader; training counts on from there
        else:
            assert torch.equal(new[key], older[key]) and torch.equal(new[key], state[key]), key
    # Only the counters may be missing: any other missing key is still an error.
    del old["layer1.0.bn1.weight"]
    torch.save(old, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="layer1.0.bn1.weight"):
        load_imagenet(build_model(preset_spec("baseline", 5, width=8)), tmp_path / "broken.pth")


def test_load_imagenet_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"resnet50\.pth does not exist"):
        load_imagenet(build_model(preset_spec("baseline", 5, width=8)), tmp_path / "resnet50.pth")


def test_load_imagenet_mismatched_keys_and_shapes(tmp_path):
    path, state = torchvision_file(tmp_path)
    del state["layer4.2.bn3.bias"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['layer4.2.bn3.bias'\]; unexpected keys \['layer5.0.conv1.weight'\]"):
        load_imagenet(build_model(preset_spec("baseline", 5, width=8)), path)
    wide, _ = torchvision_file(tmp_path, width=16)
    with pytest.raises(CheckpointError, match=r"conv1.weight: \(16, 3, 7, 7\) vs \(8, 3, 7, 7\)"):
        load_imagenet(build_model(preset_spec("baseline", 5, width=8)), wide)
