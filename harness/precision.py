"""The run's numeric precision, one of ``fp32`` (the faithful path), ``tf32`` (fp32 tensors, TF32
tensor-core matmuls on CUDA) and ``bf16`` (bf16 autocast of the frozen-encoder passes and the mask step).

Optimiser state, losses, cached features and every head stay fp32 whatever the precision.
"""
from __future__ import annotations

import contextlib

from .errors import BenchError

PRECISIONS = ("fp32", "tf32", "bf16")


def default_precision(device: str) -> str:
    """bf16 on CUDA (README: what it changes on the synthetic suite), fp32 elsewhere."""
    return "bf16" if device == "cuda" else "fp32"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise BenchError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    return precision


def use_matmul_precision(precision: str) -> None:
    """TF32 tensor-core matmuls and convolutions exactly when ``tf32`` is asked for (process-wide)."""
    import torch  # here, not at the top: planning checks a precision before torch is loaded

    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"


def autocast(device, precision: str):
    """The context the encoder's passes run in: bf16 autocast on the device's type, or nothing."""
    import torch

    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
