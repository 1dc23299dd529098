"""XQuant's group quantizer: `quantize(x, bits, group_size, axis)` -> QuantizedTensor, `dequantize(qt)`.

Groups of `group_size` consecutive elements along `axis` (the last group along it may be shorter),
uniform asymmetric min-max codes of `bits` in {2, 3, 4, 8}, packed densely into uint8 (3-bit too), a
float16 scale per group and a zero point: a b-bit integer (zero="int", XQuant's accounting: the group's
range is widened to hold 0) or the group minimum as float16 (zero="fp16", KIVI's). The exact rules and
the byte layout are in reference.py. |x - dequantize(quantize(x))| <= scale / 2 elementwise, the scale
being the group's float16 scale (rounded up, so the bound needs no allowance for its rounding);
constant groups come back exactly (float16-representable values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch

from ..._utils import check_choice, check_int

BITS = (2, 3, 4, 8)
ZERO_KINDS = ("int", "fp16")


@dataclass
class QuantizedTensor:
    """What quantize() stores. codes (*lead, ceil(K bits / 8)) uint8, scales (*lead, groups) float16 and
    zeros (*lead, ceil(groups bits / 8)) uint8 or (*lead, groups) float16, where x moved `axis` last has
    shape (*lead, K); `shape`, `dtype`: x's."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    shape: Tuple[int, ...]
    bits: int
    group_size: int
    axis: int
    dtype: torch.dtype

    @property
    def zero(self) -> str:
        return "fp16" if self.zeros.dtype == torch.float16 else "int"

    @property
    def nbytes(self) -> int:
        """Every byte stored: codes, scales and zero points."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scales, self.zeros))

    def dequantize(self) -> torch.Tensor:
        return dequantize(self)


def quantize(x: torch.Tensor, bits: int, group_size: int = 128, axis: int = -1, zero: str = "int") -> QuantizedTensor:
    """x (any shape, float32/bfloat16/float16) quantized in groups along `axis` (module docstring).
    Raises ValueError for NaN or infinite values, and for a group whose range needs a scale beyond
    float16 (one host sync on CUDA: the check of the scales)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype == torch.float64 or x.dim() == 0:
        raise ValueError(f"x must be a float32, bfloat16 or float16 tensor with at least one dim, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    check_int("group_size", group_size, 8)
    if group_size % 8:
        raise ValueError(f"group_size must be a multiple of 8, got {group_size}")
    check_int("axis", axis, -x.dim())
    if axis >= x.dim():
        raise ValueError(f"axis must be in [-{x.dim()}, {x.dim() - 1}] for x of {x.dim()} dims, got {axis}")
    check_choice("zero", zero, ZERO_KINDS)
    axis = axis % x.dim()
    moved = x.movedim(axis, -1)
    lead, k = moved.shape[:-1], moved.shape[-1]
    codes, scales, zeros = torch.ops.genaccel.xquant_quantize(moved.reshape(math.prod(lead), k), bits, group_size, zero == "fp16")
    if not x.is_meta:
        _check_scales(x, scales, zeros, bits, zero)
    codes, scales, zeros = (t.view(*lead, t.shape[-1]) for t in (codes, scales, zeros))
    return QuantizedTensor(codes, scales, zeros, tuple(x.shape), bits, group_size, axis, x.dtype)


def _check_scales(x, scales, zeros, bits, zero) -> None:
    """Refuses what the op marked: a NaN scale (non-finite x), an infinite one (a range beyond float16)."""
    if bool((~torch.isfinite(scales)).any()):
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x holds NaN or infinite values: they cannot be quantized")
        raise ValueError(f"x has a group whose range needs a scale beyond float16 (|scale| > 65504 at {bits} bits); "
                         f"scale x down or use more bits")
    if zero == "fp16" and bool(torch.isinf(zeros).any()):
        raise ValueError("x has a group whose minimum is beyond float16 (< -65504): use zero='int'")


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = None) -> torch.Tensor:
    """The values qt stands for, of x's shape and dtype (or `dtype`)."""
    if not isinstance(qt, QuantizedTensor):
        raise ValueError(f"qt must be a QuantizedTensor (from genaccel.quantize), got {type(qt).__name__}")
    dtype = qt.dtype if dtype is None else dtype
    k = qt.shape[qt.axis]
    rows = qt.codes.shape[:-1]
    n = math.prod(rows)
    flat = torch.ops.genaccel.xquant_dequantize(*(t.reshape(n, t.shape[-1]) for t in (qt.codes, qt.scales, qt.zeros)),
                                                qt.bits, qt.group_size, k, dtype)
    return flat.view(*rows, k).movedim(-1, qt.axis)
