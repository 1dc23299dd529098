"""Loads the compiled extension (registering torch.ops.genaccel.*) and reports how it was built."""

import torch

from . import _C


def build_info() -> dict:
    """How the loaded binary was built: version, torch version it was compiled against, whether the
    CUDA kernels are compiled in, their CUDA archs, and the CPU vector ISA of the CPU kernels."""
    return _C.build_info()


def has_cuda_kernels(op: str = "block_sparse_attn_fwd") -> bool:
    """True when torch.ops.genaccel.<op> has a CUDA kernel registered in this build."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"genaccel::{op}", "CUDA")
