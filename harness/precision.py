"""Float32 that is float32: TF32 only when asked for (train.tf32), for training, evaluation, cost and bench alike.

Since PyTorch 1.7, cuDNN convolutions on Ampere and newer GPUs (A100, H100, H200, RTX 30xx and on) run in
TF32 by default (`torch.backends.cudnn.allow_tf32 = True`): 10 bits of mantissa in the multiplies instead
of 23. The STE-NVAN authors trained with PyTorch 1.0, before TF32 existed, so in true fp32; `train.tf32:
false` (the default) turns it off for convolutions and matrix products, `true` turns both on. Under AMP only
the float32 operations outside autocast are concerned. On a CPU torch passes the request on to oneDNN's
matmuls (`torch.backends.mkldnn.matmul.fp32_precision`); on the AMX-BF16 Xeon this was written on, matmul
and convolution outputs are bit-identical either way.
"""

from __future__ import annotations

import torch


def set_tf32(enabled: bool) -> dict[str, object]:
    """Allow TF32 in cuDNN convolutions and CUDA matrix products, or forbid it; return the effective settings."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    return effective()


def effective() -> dict[str, object]:
    """The TF32 settings torch runs with now, as a run records them."""
    return {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}
