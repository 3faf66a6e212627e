"""SDPA kernel detection on CPU: the non-local block runs the flash kernel in the layout the model feeds it."""

import torch

from harness.measure.sdpa_kernels import CPU_FLASH, MATH, all_fused, sdpa_kernels, short_names
from models.nonlocal_block import NonLocalBlock
from models.presets import preset_spec
from models.video_reid import build_model


def test_non_local_block_runs_the_cpu_flash_kernel():
    block = NonLocalBlock(32).eval()
    # What the model passes: (B, C, T, H, W) views of the channels-last backbone's output.
    x = torch.randn(2, 32, 4, 8, 4).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        kernels = sdpa_kernels(block, x)
    assert kernels == {CPU_FLASH} and all_fused(kernels)


def test_three_dimensional_inputs_are_reported_as_math():
    q, k, v = torch.randn(3, 2, 64, 16)  # (batch, N, d): no heads dimension
    with torch.no_grad():
        kernels = sdpa_kernels(NonLocalBlock.attention, q, k, v)
    assert kernels == {MATH} and not all_fused(kernels)
    assert short_names(kernels) == "attention_math"


def test_nvan_training_step_runs_flash_forward_and_backward():
    torch.manual_seed(0)
    model = build_model(preset_spec("nvan", 5, width=4)).train()
    clips = torch.randn(2, 4, 3, 128, 64)

    def step():
        features, logits = model(clips)
        (features.sum() + logits.sum()).backward()

    kernels = sdpa_kernels(step)
    assert kernels == {CPU_FLASH, CPU_FLASH + "_backward"} and all_fused(kernels)


def test_a_model_without_attention_runs_no_kernel():
    model = build_model(preset_spec("baseline", 5, width=4)).eval()
    with torch.no_grad():
        kernels = sdpa_kernels(model, torch.randn(1, 2, 3, 64, 32))
    assert kernels == set() and not all_fused(kernels) and short_names(kernels) == "-"


# The block once gave SDPA tokens with a last-dimension stride != 1 here, which runs the math kernel.
def test_nvan_at_batch_one_runs_the_cpu_flash_kernel():
    model = build_model(preset_spec("nvan", 5, width=4)).eval()
    with torch.no_grad():
        assert sdpa_kernels(model, torch.randn(1, 4, 3, 128, 64)) == {CPU_FLASH}
