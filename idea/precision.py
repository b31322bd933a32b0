"""Arithmetic precision of training steps on a GPU. Evaluation always ranks in full float32, so every
precision is scored alike (reduced-precision scores would add ties, which count against a target).

- fp32: float32 everywhere, TF32 off for matrix products and cuDNN (the reference).
- tf32: float32 tensors; matrix products and cuDNN's GRU on the TF32 tensor cores (10-bit mantissa).
- bf16: as tf32, and the forward pass of each training step under bfloat16 autocast (matrix products,
  the GRU and attention in bfloat16 with float32 accumulation; losses, softmax and norms in float32).
  Weights, gradients and Adam's state stay float32.
- auto: bf16 on a GPU, except fp32 for Mamba4Rec (its compiled read-out computes in float32, and the
  casts around it cost more than bf16 saves: 23.8 against 15.3 ms per ERM step on an H200); fp32 on a CPU.

On an H200 (torch 2.11, cuDNN 9.19) PyTorch's autocast runs cuDNN's GRU in float16 even under bfloat16
autocast (its kernels are the __half ones); without loss scaling. Beauty leave-one-out accuracy matched
float32 over 3 seeds (README, "Accuracy and speed").
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from idea.config import PRECISIONS

__all__ = ["PRECISIONS", "exact_float32", "forward_precision", "resolve_precision", "set_tensor_cores"]


def resolve_precision(name: str, device: torch.device, backbone: str = "gru4rec") -> str:
    """The precision a run of `backbone` uses on `device`; tf32 and bf16 are GPU modes (a CPU run would
    silently ignore TF32 and slow down under bfloat16), so they are refused there."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and backbone != "mamba4rec" else "fp32"
    if name != "fp32" and device.type != "cuda":
        raise ValueError(f"precision {name!r} needs a CUDA device (this run is on {device}); use fp32 or auto")
    return name


def set_tensor_cores(precision: str) -> None:
    """TF32 on or off for this process's matrix products and cuDNN (process-wide switches)."""
    on = precision in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def forward_precision(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context of a training step's forward pass: bfloat16 autocast under bf16, else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Full float32 (TF32 off) inside, the previous switches restored after: evaluation ranks with it."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    set_tensor_cores("fp32")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
