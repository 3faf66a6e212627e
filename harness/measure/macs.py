"""Parameters and multiply-accumulates (MACs) of a model, in total and per part of the network.

Units: MACs are multiply-accumulates of convolutions, linear layers, matrix products and
attention (what fvcore calls "flops"; FLOPs = 2 x MACs). Elementwise work (batch norm,
pooling, softmax, additions) is not counted, as in the ResNet and NVAN papers. The parts are
those of VideoReIDNet: stem, stage1..4, non_local, head (the classifier is counted apart).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from harness.config import InputSize
from models.spec import ModelSpec
from models.video_reid import build_model

PARTS = ("stem", "stage1", "stage2", "stage3", "stage4", "non_local", "head")


def part_of(module_name: str) -> str:
    """The cost-table part (stem, stage1..4, non_local, head) a module of VideoReIDNet belongs to."""
    if "non_local" in module_name:
        return "non_local"
    for stage in (1, 2, 3, 4):
        prefix = f"backbone.layer{stage}"
        if module_name == prefix or module_name.startswith(prefix + "."):
            return f"stage{stage}"
    if module_name.startswith("backbone."):
        return "stem"
    return "head"


def _shape(value) -> list[int]:
    return value.type().sizes()


def _matmul_macs(inputs, outputs) -> int:
    # torch.matmul broadcasts batch dims of either operand; fvcore's stock handle assumes the
    # left operand holds them, so count from the output shape instead: out elements x inner dim.
    a = _shape(inputs[0])
    return math.prod(_shape(outputs[0])) * a[-1]


def _sdpa_macs(inputs, outputs) -> int:
    # softmax(q k^T) v: q (..., N, d), k (..., M, d), v (..., M, dv) -> N*M*d + N*M*dv per batch.
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_macs(model: nn.Module, clips: torch.Tensor) -> tuple[int, dict[str, int], list[str]]:
    """MACs of one eval forward on `clips` (whole batch), per part, and op names left uncounted."""
    from fvcore.nn import FlopCountAnalysis  # slow import; only cost counting needs it
    from fvcore.nn.jit_handles import addmm_flop_jit, conv_flop_jit, linear_flop_jit

    analysis = FlopCountAnalysis(model, clips)
    # Only MAC-bearing ops (see module docstring); fvcore's defaults also count batch norm and
    # pooling, and its matmul/bmm handles assume the left operand holds the batch dimensions.
    analysis.clear_op_handles()
    analysis.set_op_handle(
        "aten::_convolution", conv_flop_jit,
        "aten::addmm", addmm_flop_jit,
        "aten::linear", linear_flop_jit,
        "aten::mm", _matmul_macs,
        "aten::matmul", _matmul_macs,
        "aten::bmm", _matmul_macs,
        "aten::scaled_dot_product_attention", _sdpa_macs,
    )
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        totals = analysis.by_module()
    by_part = dict.fromkeys(PARTS, 0)
    for name, module in model.named_modules():
        own = totals.get(name, 0) - sum(
            totals.get(f"{name}.{child}" if name else child, 0) for child, _ in module.named_children()
        )
        by_part[part_of(name)] += own
    return int(totals[""]), by_part, sorted(analysis.unsupported_ops())


def macs_on_meta(spec: ModelSpec, size: InputSize, batch: int = 1) -> int:
    """MACs per clip of `spec` at `size`, counted by torch's FlopCounterMode on the meta device (ms)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(spec).eval()
        clips = torch.empty(batch, size.frames, 3, size.height, size.width)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(clips)
    return counter.get_total_flops() // 2 // batch  # FlopCounterMode counts 2 per MAC


def count_params(model: nn.Module) -> tuple[int, dict[str, int], int]:
    """Parameter count without the classifier, per part, and the classifier's count separately."""
    by_part = dict.fromkeys(PARTS, 0)
    classifier = 0
    for name, p in model.named_parameters():
        if name.startswith("classifier."):
            classifier += p.numel()
        else:
            by_part[part_of(name.rpartition(".")[0])] += p.numel()
    return sum(by_part.values()), by_part, classifier
