"""float64 specification of XQuant's group quantizer (never called by the fast path).

Layout (the same in the ops): x is read as rows (..., K) with groups of `group_size` consecutive
elements along the last dim (the last group of a row may be shorter). Per group:

- zero="int" (XQuant's accounting, a b-bit zero point): the range [lo, hi] = [min(min x, 0),
  max(max x, 0)] (it must hold 0 for the zero point to be an integer in [0, 2^b - 1]);
  s = (hi - lo) / (2^b - 1) rounded UP to float16; z = round(-lo / s); q = clamp(round(x / s) + z,
  0, 2^b - 1); x_hat = s (q - z).
- zero="fp16" (KIVI's: the group minimum as an fp16 offset): m = min x rounded DOWN to float16;
  s = (max x - m) / (2^b - 1) rounded UP to float16; q = clamp(round((x - m) / s), 0, 2^b - 1);
  x_hat = m + s q.
- Rounding is half to even. Rounding the scale up (and the offset down) keeps the whole group inside
  the representable range, so |x - x_hat| <= s / 2 for every element.
- A constant group (max x = min x = c) is exact: zero="fp16" stores m = c (s = 0, q = 0) when c is a
  float16 value; zero="int" stores s = |c| (rounded to nearest float16) with (z, q) = (0, 1) for c > 0,
  (1, 0) for c < 0 and all zeros for c = 0.
- A group holding a NaN or an infinity is not quantized: its scale is NaN, its codes and (integer)
  zero point 0, its fp16 offset NaN, so it dequantizes to NaN (genaccel.quantize refuses such x).
- Codes are packed densely per row: element j of a row occupies bits [j b, (j + 1) b) of the row's
  little-endian bit string, which has ceil(K b / 8) bytes; b-bit zero points are packed the same way
  per row of groups. Scales (and fp16 offsets) are float16 (rows, groups).
"""

from __future__ import annotations

import math
from typing import Dict

import torch

BITS = (2, 3, 4, 8)
ZERO_KINDS = ("int", "fp16")
FP16_MAX = 65504.0


def _fp16_up(t: torch.Tensor) -> torch.Tensor:
    """The smallest float16 >= t (t float64)."""
    h = t.to(torch.float16)
    low = h.double() < t
    return torch.where(low, torch.nextafter(h, torch.full_like(h, math.inf)), h)


def _fp16_down(t: torch.Tensor) -> torch.Tensor:
    """The largest float16 <= t (t float64)."""
    h = t.to(torch.float16)
    high = h.double() > t
    return torch.where(high, torch.nextafter(h, torch.full_like(h, -math.inf)), h)


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(rows, K) -> (rows, groups, group_size) float64, the short last group padded with NaN."""
    rows, k = x.shape
    n = -(-k // group_size)
    padded = torch.full((rows, n * group_size), math.nan, dtype=torch.float64)
    padded[:, :k] = x.double()
    return padded.view(rows, n, group_size)


def _padding(rows: int, k: int, group_size: int) -> torch.Tensor:
    """(rows, groups, group_size) True where _groups padded (beyond the row's k elements)."""
    n = -(-k // group_size)
    return (torch.arange(n * group_size) >= k).view(1, n, group_size).expand(rows, n, group_size)


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """(rows, K) integer codes in [0, 2^bits) -> (rows, ceil(K bits / 8)) uint8, dense little-endian."""
    rows, k = q.shape
    nbytes = -(-k * bits // 8)
    out = torch.zeros(rows, nbytes, dtype=torch.int64)
    q = q.long()
    for b in range(bits):
        bit = (q >> b) & 1  # bit b of element j sits at position j * bits + b of the row
        pos = torch.arange(k) * bits + b
        out.index_add_(1, pos // 8, bit << (pos % 8))
    return out.to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """The inverse of pack: (rows, bytes) uint8 -> (rows, k) int64 codes."""
    p = packed.long()
    q = torch.zeros(p.shape[0], k, dtype=torch.int64)
    for b in range(bits):
        pos = torch.arange(k) * bits + b
        q |= ((p[:, pos // 8] >> (pos % 8)) & 1) << b
    return q


def quantize(x: torch.Tensor, bits: int, group_size: int, zero: str = "int") -> Dict[str, torch.Tensor]:
    """x (rows, K) -> dict(codes, scales, zeros): the layout of the module docstring; also
    "q" (rows, K) int64 codes unpacked, "ratio" (rows, K) x / s (zero="int") or (x - m) / s before
    rounding, for tests that must tell rounding ties apart."""
    assert bits in BITS and zero in ZERO_KINDS and group_size >= 1
    rows, k = x.shape
    g = _groups(x, group_size)
    mn = torch.where(torch.isnan(g), math.inf, g).amin(-1)
    mx = torch.where(torch.isnan(g), -math.inf, g).amax(-1)
    levels = 2 ** bits - 1
    constant = mn == mx
    if zero == "int":
        lo, hi = mn.clamp(max=0), mx.clamp(min=0)
        s = _fp16_up((hi - lo) / levels)
        s64 = s.double()
        safe = torch.where(s64 > 0, s64, 1.0)
        z = torch.round(-lo / safe).clamp(0, levels)
        ratio = g / safe[..., None]
        q = (torch.round(ratio) + z[..., None]).clamp(0, levels)
        # constant groups: s = |c|, (z, q) = (0, 1) above zero, (1, 0) below, zeros at 0
        c = mn
        s = torch.where(constant, c.abs().to(torch.float16), s)
        z = torch.where(constant, (c < 0).double(), z)
        q = torch.where(constant[..., None], (c > 0).double()[..., None].expand_as(q), q)
        zeros = None  # packed below, once the non-finite groups are known
    else:
        m = _fp16_down(mn)
        s = _fp16_up((mx - m.double()) / levels)
        s64 = s.double()
        safe = torch.where(s64 > 0, s64, 1.0)
        ratio = (g - m.double()[..., None]) / safe[..., None]
        q = torch.where(s64[..., None] > 0, torch.round(ratio).clamp(0, levels), torch.zeros_like(ratio))
        zeros = m
    bad = ~torch.where(torch.isnan(g) & _padding(rows, k, group_size), 0.0, g).isfinite().all(-1)
    s = torch.where(bad, torch.tensor(math.nan, dtype=torch.float16), s)
    q = torch.where(bad[..., None], 0.0, q)
    if zero == "int":
        zeros = pack(torch.where(bad, 0, z.long()), bits)
    else:
        zeros = torch.where(bad, torch.tensor(math.nan, dtype=torch.float16), zeros)
    width = g.shape[1] * group_size
    q = q.reshape(rows, width)[:, :k].long()
    return dict(codes=pack(q, bits), scales=s, zeros=zeros, q=q, ratio=ratio.reshape(rows, width)[:, :k])


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int,
               k: int, zero: str = "int") -> torch.Tensor:
    """The stored (codes, scales, zeros) of `quantize` -> x_hat (rows, k) float64."""
    q = unpack(codes, bits, k).double()
    group = torch.arange(k) // group_size
    s = scales.double()[:, group]
    if zero == "int":
        z = unpack(zeros, bits, scales.shape[1]).double()[:, group]
        return s * (q - z)
    return zeros.double()[:, group] + s * q


def stored_bytes(rows: int, k: int, bits: int, group_size: int, zero: str = "int") -> int:
    """Bytes the layout stores for (rows, k): packed codes, fp16 scales, packed b-bit or fp16 zeros."""
    groups = -(-k // group_size)
    zero_bytes = -(-groups * bits // 8) if zero == "int" else 2 * groups
    return rows * (-(-k * bits // 8) + 2 * groups + zero_bytes)
