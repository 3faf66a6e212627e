"""Which scaled-dot-product-attention kernels torch ran: the aten op names its profiler records.

F.scaled_dot_product_attention dispatches to one of several kernels by device, dtype, shape and
strides; only the math fallback materialises the N x N affinity (slow, memory-hungry), and it is
picked silently. Names are aten ops without the "aten::" prefix, e.g.
`_scaled_dot_product_flash_attention_for_cpu`; a backward kernel adds `_backward`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch.profiler import ProfilerActivity, profile

PREFIX = "aten::_scaled_dot_product_"
MATH = "_scaled_dot_product_attention_math"
CPU_FLASH = "_scaled_dot_product_flash_attention_for_cpu"
CUDA_FUSED = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_cudnn_attention")
FUSED = frozenset({CPU_FLASH, *CUDA_FUSED})


def sdpa_kernels(fn: Callable, *args, **kwargs) -> set[str]:
    """The SDPA kernels (aten op names) that one call fn(*args, **kwargs) ran, e.g. a module's forward."""
    # CPU activity records every dispatched operator whatever its device, so no CUPTI is needed on a GPU.
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(*args, **kwargs)
    return {e.name.removeprefix("aten::") for e in prof.events() if e.name.startswith(PREFIX)}


def all_fused(kernels: Iterable[str]) -> bool:
    """True when some SDPA kernel ran and every one, forward or backward, is fused (flash, efficient, cuDNN)."""
    kernels = set(kernels)
    return bool(kernels) and all(k.removesuffix("_backward") in FUSED for k in kernels)


def short_names(kernels: Iterable[str]) -> str:
    """Kernel names without the common `_scaled_dot_product_` prefix, sorted, comma-separated; '-' if none."""
    return ", ".join(sorted(k.removeprefix("_scaled_dot_product_") for k in kernels)) or "-"
