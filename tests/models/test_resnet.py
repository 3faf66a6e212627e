import pytest
import torch

from models.resnet import ResNet

# torchvision.models.resnet50(): 25,557,032 parameters, of which fc holds 2048 * 1000 + 1000.
RESNET50_WITHOUT_FC = 25_557_032 - 2_049_000


def test_width_64_has_resnet50_parameter_count():
    assert sum(p.numel() for p in ResNet(64).parameters()) == RESNET50_WITHOUT_FC


def test_state_dict_uses_torchvision_names():
    keys = ResNet(8).state_dict().keys()
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer2.0.downsample.1.num_batches_tracked",
        "layer3.5.conv3.weight",
        "layer4.2.bn3.bias",
    ):
        assert key in keys
    assert not any(k.startswith("fc.") for k in keys)
    assert len([k for k in keys if k.endswith("conv2.weight")]) == 3 + 4 + 6 + 3


@pytest.mark.parametrize("last_stride, final", [(1, (8, 4)), (2, (4, 2))])
def test_stage_shapes_and_last_stride(last_stride, final):
    net = ResNet(8, last_stride).eval()
    x = net.stem(torch.randn(2, 3, 128, 64))
    assert x.shape == (2, 8, 32, 16)
    sizes = []
    for layer in net.stages:
        x = layer(x)
        sizes.append((x.shape[1], *x.shape[2:]))
    assert sizes == [(32, 32, 16), (64, 16, 8), (128, 8, 4), (256, *final)]
