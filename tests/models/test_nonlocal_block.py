import pytest
import torch

from models.nonlocal_block import NonLocalBlock
from models.spec import SpecError


def explicit_nonlocal(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """Wang et al.'s formulation written out: pool stripes, softmax(theta^T phi) g per window, broadcast back."""
    b, c, t, h, w = x.shape
    s = block.stripes
    src = x.reshape(b, c, t, s, h // s, w).mean((4, 5)).unsqueeze(-1) if s else x
    theta, phi, g = block.theta(src), block.phi(src), block.g(src)
    frames = block.window or t
    windows = []
    for start in range(0, t, frames):
        part = slice(start, start + frames)
        q, k, v = (y[:, :, part].flatten(2) for y in (theta, phi, g))
        affinity = torch.softmax(q.transpose(1, 2) @ k, dim=-1)
        windows.append((v @ affinity.transpose(1, 2)).reshape(b, -1, frames, *src.shape[3:]))
    z = block.W(torch.cat(windows, dim=2))
    if s:
        z = z.repeat_interleave(h // s, dim=3).expand(-1, -1, -1, -1, w)
    return x + z


def _trained_block(channels: int, stripes: int, window: int) -> NonLocalBlock:
    torch.manual_seed(0)
    block = NonLocalBlock(channels, stripes, window).eval()
    with torch.no_grad():
        block.W[1].weight.normal_()
        block.W[1].bias.normal_()
    return block


@pytest.mark.parametrize("stripes, window", [(0, 0), (0, 2), (4, 0), (4, 2), (8, 4)])
def test_sdpa_equals_explicit_softmax(stripes, window):
    block = _trained_block(32, stripes, window).double()
    x = torch.randn(2, 32, 8, 8, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = explicit_nonlocal(block, x)
        scale = expected.abs().max()
        # float64: rounding (~1e-16 x 32-term sums x logits of tens) is far below 1e-10 of the scale.
        assert (block(x) - expected).abs().max() <= 1e-10 * scale
        # The model feeds channels-last views; results must not depend on the layout.
        x_cl = x.contiguous(memory_format=torch.channels_last_3d)
        assert (block(x_cl) - expected).abs().max() <= 1e-10 * scale
    assert not torch.allclose(expected, x, atol=1e-3)


def test_attention_is_not_over_windows_when_window_is_zero():
    whole, windowed = _trained_block(16, 0, 0), _trained_block(16, 0, 2)
    x = torch.randn(1, 16, 4, 4, 2)
    with torch.no_grad():
        assert not torch.allclose(whole(x), windowed(x), atol=1e-4)


def test_stripe_output_is_constant_within_each_stripe():
    block = _trained_block(16, 2, 0)
    # Constant within each stripe, different between stripes and channels.
    x = torch.randn(1, 16, 2, 2, 1).repeat_interleave(3, dim=3).expand(-1, -1, -1, -1, 4)
    with torch.no_grad():
        out = block(x)
    assert torch.allclose(out[:, :, :, :3], out[:, :, :, :1].expand_as(out[:, :, :, :3]))
    assert not torch.allclose(out[:, :, :, 0], out[:, :, :, 3])


@pytest.mark.parametrize("stripes, window", [(0, 0), (4, 2)])
def test_fresh_block_is_identity(stripes, window):
    block = NonLocalBlock(32, stripes, window)
    x = torch.randn(2, 32, 4, 8, 4)
    assert torch.equal(block(x), x)
    assert torch.equal(block.eval()(x), x)


def test_official_parameter_names():
    names = set(NonLocalBlock(16).state_dict())
    for part in ("g", "theta", "phi", "W.0"):
        assert {f"{part}.weight", f"{part}.bias"} <= names
    assert {"W.1.running_mean", "W.1.running_var", "W.1.num_batches_tracked"} <= names
    assert NonLocalBlock(16).theta.out_channels == 8


@pytest.mark.parametrize("stripes, window, shape", [(3, 0, (1, 8, 4, 8, 4)), (0, 3, (1, 8, 4, 8, 4))])
def test_sizes_that_do_not_divide_are_rejected(stripes, window, shape):
    with pytest.raises(SpecError, match="must divide"):
        NonLocalBlock(8, stripes, window)(torch.randn(shape))
