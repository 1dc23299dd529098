"""XQuant's group quantizer: `quantize(x, bits, group_size, axis)` -> QuantizedTensor, `dequantize(qt)`.

Groups of `group_size` consecutive elements along `axis` (the last group along it may be shorter),
uniform asymmetric min-max codes of `bits` in {2, 3, 4, 8}, packed densely into uint8 (3-bit too), a
float16 scale per group and a zero point: a b-bit integer (zero="int", XQuant's accounting: the group's
range is widened to hold 0) or the group minimum as float16 (zero="fp16", KIVI's). The exact rules and
the byte layout are in reference.py. |x - dequantize(quantize(x))| <= scale / 2 elementwise, the scale
being the group's float16 scale (rounded up, so the bound needs no allowance for its rounding);
constant groups come back exactly (float16-representable values).

A growing cache: x is (..., tokens, channels) and `append(tokens)` adds tokens along dim -2. With
axis=-1 (per-token groups, over channels) new tokens are quantized at once. With axis=-2 (per-channel
groups, over tokens, as KIVI's keys) the tokens wait in `residual`, in full precision, until they fill
a group of `group_size`, as KIVI keeps its most recent tokens; nbytes counts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..._utils import check_choice, check_int

BITS = (2, 3, 4, 8)
ZERO_KINDS = ("int", "fp16")


@dataclass
class QuantizedTensor:
    """What quantize() stores. codes (*lead, ceil(K bits / 8)) uint8, scales (*lead, groups) float16 and
    zeros (*lead, ceil(groups bits / 8)) uint8 or (*lead, groups) float16, where x moved `axis` last has
    shape (*lead, K); `shape`, `dtype`: x's (residual tokens included). residual: the tokens appended
    with axis=-2 that do not fill a group yet, (..., r, channels) in x's dtype (None: none)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    shape: Tuple[int, ...]
    bits: int
    group_size: int
    axis: int
    dtype: torch.dtype
    residual: Optional[torch.Tensor] = None

    @classmethod
    def empty(cls, shape: Tuple[int, ...], bits: int, group_size: int = 128, axis: int = -1, zero: str = "int",
              dtype: torch.dtype = torch.float16, device="cpu") -> "QuantizedTensor":
        """An empty cache for tokens of shape (..., 0, channels) = `shape` (its dim -2 must be 0), to
        append() to."""
        if len(shape) < 2 or shape[-2] != 0:
            raise ValueError(f"shape must be (..., 0, channels) (no tokens yet), got {tuple(shape)}")
        return quantize(torch.zeros(shape, dtype=dtype, device=device), bits, group_size, axis, zero)

    @property
    def zero(self) -> str:
        return "fp16" if self.zeros.dtype == torch.float16 else "int"

    @property
    def nbytes(self) -> int:
        """Every byte stored: codes, scales, zero points and the full-precision residual tokens."""
        stored = [self.codes, self.scales, self.zeros] + ([self.residual] if self.residual is not None else [])
        return sum(t.numel() * t.element_size() for t in stored)

    def dequantize(self) -> torch.Tensor:
        return dequantize(self)

    def append(self, tokens: torch.Tensor) -> "QuantizedTensor":
        """Adds tokens (..., t, channels) along dim -2, in place; returns self."""
        nd = len(self.shape)
        if self.axis not in (nd - 1, nd - 2) or nd < 2:
            raise ValueError(f"append needs x as (..., tokens, channels) quantized along axis -1 or -2, "
                             f"got axis {self.axis} of {nd} dims")
        want = self.shape[:-2] + (self.shape[-1],)
        if (not isinstance(tokens, torch.Tensor) or tokens.dim() != nd
                or tuple(tokens.shape[:-2]) + (tokens.shape[-1],) != want):
            raise ValueError(f"tokens must have shape (..., t, channels) = {self.shape[:-2]} + (t, {self.shape[-1]}), "
                             f"got {tuple(getattr(tokens, 'shape', ()))}")
        if tokens.dtype != self.dtype:
            raise ValueError(f"tokens must have the cache's dtype {self.dtype}, got {tokens.dtype}")
        if self.axis == nd - 1:  # per-token groups: the new rows at once
            new = quantize(tokens, self.bits, self.group_size, -1, self.zero)
            self.codes, self.scales, self.zeros = (torch.cat([a, b], dim=-2) for a, b in
                                                   ((self.codes, new.codes), (self.scales, new.scales),
                                                    (self.zeros, new.zeros)))
        else:
            self._append_per_channel(tokens)
        self.shape = self.shape[:-2] + (self.shape[-2] + tokens.shape[-2], self.shape[-1])
        return self

    def _append_per_channel(self, tokens: torch.Tensor) -> None:
        """Groups along tokens: whole groups are quantized and joined to the codes (a group is
        group_size * bits / 8 bytes, whole bytes); the rest stays in the residual."""
        done = self.shape[-2] - (0 if self.residual is None else self.residual.shape[-2])
        if done % self.group_size:
            raise ValueError(f"append with axis=-2 needs whole groups quantized, but {done} tokens are (start the "
                             f"cache with QuantizedTensor.empty, or quantize a multiple of {self.group_size})")
        pending = tokens if self.residual is None else torch.cat([self.residual, tokens], dim=-2)
        full = pending.shape[-2] // self.group_size * self.group_size
        if full:
            new = quantize(pending[..., :full, :], self.bits, self.group_size, -2, self.zero)
            self.codes = torch.cat([self.codes, new.codes], dim=-1)
            self.scales = torch.cat([self.scales, new.scales], dim=-1)
            if self.zero == "fp16":
                self.zeros = torch.cat([self.zeros, new.zeros], dim=-1)
            else:  # b-bit zero points of consecutive groups share bytes: unpacked, joined, packed again
                old_groups = done // self.group_size
                joined = torch.cat([unpack_bits(self.zeros, self.bits, old_groups),
                                    unpack_bits(new.zeros, self.bits, new.scales.shape[-1])], dim=-1)
                self.zeros = pack_bits(joined, self.bits)
        rest = pending[..., full:, :]
        self.residual = rest.clone() if rest.shape[-2] else None


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
    """The values qt stands for, of x's shape and dtype (or `dtype`), residual tokens included."""
    if not isinstance(qt, QuantizedTensor):
        raise ValueError(f"qt must be a QuantizedTensor (from genaccel.quantize), got {type(qt).__name__}")
    dtype = qt.dtype if dtype is None else dtype
    r = 0 if qt.residual is None else qt.residual.shape[-2]
    k = qt.shape[qt.axis] - r
    rows = qt.codes.shape[:-1]
    n = math.prod(rows)
    flat = torch.ops.genaccel.xquant_dequantize(*(t.reshape(n, t.shape[-1]) for t in (qt.codes, qt.scales, qt.zeros)),
                                                qt.bits, qt.group_size, k, dtype)
    out = flat.view(*rows, k).movedim(-1, qt.axis)
    return out if qt.residual is None else torch.cat([out, qt.residual.to(dtype)], dim=-2)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., n) integer codes in [0, 2^bits) -> (..., ceil(n bits / 8)) uint8, the ops' dense layout (8
    codes make `bits` bytes, little-endian)."""
    n = codes.shape[-1]
    padded = torch.nn.functional.pad(codes.long(), (0, -n % 8)).unflatten(-1, (-1, 8))
    word = (padded << (torch.arange(8, device=codes.device) * bits)).sum(-1, keepdim=True)
    out = (word >> (torch.arange(bits, device=codes.device) * 8)) & 255
    return out.flatten(-2)[..., :-(-n * bits // 8)].to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The inverse of pack_bits: (..., bytes) uint8 -> (..., n) int64 codes."""
    full = -(-n // 8) * bits  # whole 8-code words
    p = torch.nn.functional.pad(packed.long(), (0, full - packed.shape[-1])).unflatten(-1, (-1, bits))
    word = (p << (torch.arange(bits, device=packed.device) * 8)).sum(-1, keepdim=True)
    codes = (word >> (torch.arange(8, device=packed.device) * bits)) & ((1 << bits) - 1)
    return codes.flatten(-2)[..., :n]


def _flat_codes(qt: QuantizedTensor):
    """qt's codes, scales and zeros as the ops' 2-D (rows, bytes) tensors, and the quantized length."""
    r = 0 if qt.residual is None else qt.residual.shape[-2]
    k = qt.shape[qt.axis] - r
    n = math.prod(qt.codes.shape[:-1])
    return [t.reshape(n, t.shape[-1]) for t in (qt.codes, qt.scales, qt.zeros)], k


def _check_cache_layout(qt, name: str) -> None:
    if not isinstance(qt, QuantizedTensor):
        raise ValueError(f"{name} must be a QuantizedTensor (from genaccel.quantize), got {type(qt).__name__}")
    nd = len(qt.shape)
    if nd < 2 or qt.axis not in (nd - 1, nd - 2):
        raise ValueError(f"{name} must hold x as (..., tokens, channels) quantized along axis -1 or -2, got axis "
                         f"{qt.axis} of shape {qt.shape}")


def xquant_matmul(qt: QuantizedTensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dequantize(qt) @ weight.T (+ bias) without materialising dequantize(qt): qt holds x (..., T, K)
    quantized along axis -1 (per-token groups) or -2 (per-channel groups, residual tokens included);
    weight (N, K), bias (N,) or None -> (..., T, N) of weight's dtype, float32 accumulation. XQuant's
    rematerialisation K = X W_k^T, V = X W_v^T."""
    _check_cache_layout(qt, "qt")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != qt.shape[-1]:
        raise ValueError(f"weight must be a 2-D (N, K = {qt.shape[-1]}) tensor, got "
                         f"{tuple(getattr(weight, 'shape', ()))}")
    (codes, scales, zeros), k = _flat_codes(qt)
    lead = qt.shape[:-2]
    if qt.axis == len(qt.shape) - 1:  # rows are tokens, groups run along the product's reduction dim
        out = torch.ops.genaccel.xquant_matmul(codes, scales, zeros, qt.bits, qt.group_size, k, weight, bias)
        return out.view(*lead, qt.shape[-2], weight.shape[0])
    # Per-channel groups: rows are channels, so X W^T = (W X^T)^T is the weighted sum of those rows.
    b = math.prod(lead)
    a = weight.unsqueeze(0).expand(b, *weight.shape).contiguous()
    out = torch.ops.genaccel.xquant_weighted_sum(a, codes, scales, zeros, qt.bits, qt.group_size, k)
    out = out.transpose(1, 2).reshape(*lead, k, weight.shape[0])
    if qt.residual is not None:
        out = torch.cat([out, torch.nn.functional.linear(qt.residual.to(weight.dtype), weight)], dim=-2)
    return out if bias is None else out + bias


def xquant_weighted_sum(a: torch.Tensor, qt: QuantizedTensor) -> torch.Tensor:
    """a @ dequantize(qt) without materialising dequantize(qt): a (..., M, T), qt holds x (..., T, K)
    (the same leading dims) -> (..., M, K) of a's dtype, float32 accumulation. The attention-weighted
    sum of cached X rows: XQuant's absorbed value path (sum_j a_j X_j first, then W_v per head, exact)."""
    _check_cache_layout(qt, "qt")
    lead, t = qt.shape[:-2], qt.shape[-2]
    if not isinstance(a, torch.Tensor) or a.dim() != len(qt.shape) or tuple(a.shape[:-2]) != lead or a.shape[-1] != t:
        raise ValueError(f"a must have shape (..., M, T) = {lead} + (M, {t}) for qt of shape {qt.shape}, got "
                         f"{tuple(getattr(a, 'shape', ()))}")
    (codes, scales, zeros), k = _flat_codes(qt)
    b, m = math.prod(lead), a.shape[-2]
    if qt.axis == len(qt.shape) - 1:
        out = torch.ops.genaccel.xquant_weighted_sum(a.reshape(b, m, t), codes, scales, zeros, qt.bits,
                                                     qt.group_size, k)
        return out.view(*lead, m, qt.shape[-1])
    # Per-channel groups: rows are channels (b * K of them), a @ X = (X^T a^T)^T, one product per batch.
    c = qt.shape[-1]
    a3 = a.reshape(b, m, t)
    parts = []
    for i in range(b):
        rows = slice(i * c, (i + 1) * c)
        part = torch.ops.genaccel.xquant_matmul(codes[rows], scales[rows], zeros[rows], qt.bits, qt.group_size, k,
                                                a3[i, :, :k].contiguous()).t()
        if qt.residual is not None:
            part = part + a3[i, :, k:] @ qt.residual.reshape(b, -1, c)[i].to(a.dtype)
        parts.append(part)
    return torch.stack(parts).view(*lead, m, c)
