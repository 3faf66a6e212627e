import pytest
import torch
from torch import nn

from models.fuse import fuse_for_inference
from models.presets import PRESETS, preset_spec
from models.video_reid import build_model

SMALL = {"baseline": {}, "nvan": {}, "ste_nvan": {"stripes": (4, 4, 4, 4)}}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_fused_model_gives_the_same_features(name, randomize_norms, threads):
    torch.manual_seed(0)
    model = randomize_norms(build_model(preset_spec(name, 5, width=8, **SMALL[name]))).eval().double()
    fused = fuse_for_inference(model)
    clips = torch.randn(2, 8, 3, 64, 32, dtype=torch.float64)
    with torch.inference_mode():
        expected = model(clips)
        # Folding is exact algebra; in float64 the reordered rounding, even amplified by the unscaled
        # attention logits, stays below 1e-11 of the feature scale (fp32 would need ~1e-4).
        assert (fused(clips) - expected).abs().max() <= 1e-9 * expected.abs().max()
    norms = [n for n, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms == ["bottleneck"]
    assert isinstance(model.backbone.bn1, nn.BatchNorm2d) and model.backbone.conv1.bias is None
    assert fused.backbone.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
