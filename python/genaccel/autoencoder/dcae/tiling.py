"""Spatial tiling of DC-AE / DC-AE-V calls for frames too large for one pass (4K video: S1 activations
alone are tens of GB): the frame is cut into overlapping tiles, each run on its own, and the outputs
blended with weights that ramp linearly across the overlaps, as diffusers' AutoencoderDC tiling does.
Activations are then bounded by one tile; the output (and a weight plane) are full size.

Tiled output is not identical to untiled: near a tile's edge its convolutions see zero padding instead
of the neighbour's pixels. Overlaps wider than the receptive field leave only the blend ramp in error;
DC-AE's EfficientViT stages have a global receptive field (linear attention), so there it never
vanishes.
"""

from __future__ import annotations

from typing import Callable, List

import torch


def _starts(size: int, tile: int, stride: int) -> List[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length: int, overlap: int, lead: bool, trail: bool, device) -> torch.Tensor:
    """1 inside, rising over `overlap` samples at a leading edge shared with a neighbour, falling at a
    trailing one (never 0, so every output sample has weight)."""
    w = torch.ones(length, device=device)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, device=device, dtype=torch.float32) / (overlap + 1)
        if lead:
            w[:overlap] = torch.minimum(w[:overlap], ramp)
        if trail:
            w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0))
    return w


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
              scale_num: int, scale_den: int) -> torch.Tensor:
    """fn applied to overlapping (tile x tile) crops of x's last two dims and blended; fn maps an input of
    spatial size s to s * scale_num / scale_den. tile and overlap are in x's units; both must map to
    whole output samples, and overlap < tile."""
    h, w = x.shape[-2:]
    stride = tile - overlap
    out_overlap = overlap * scale_num // scale_den
    out, weight = None, None
    for top in _starts(h, tile, stride):
        for left in _starts(w, tile, stride):
            y = fn(x[..., top:top + tile, left:left + tile])
            oh, ow = y.shape[-2:]
            ot, ol = top * scale_num // scale_den, left * scale_num // scale_den
            if out is None:
                out_shape = (*y.shape[:-2], h * scale_num // scale_den, w * scale_num // scale_den)
                out = torch.zeros(out_shape, dtype=torch.float32, device=y.device)
                weight = torch.zeros(out_shape[-2:], dtype=torch.float32, device=y.device)
            wy = _ramp(oh, out_overlap, top > 0, top + tile < h, y.device)
            wx = _ramp(ow, out_overlap, left > 0, left + tile < w, y.device)
            m = wy[:, None] * wx[None, :]
            out[..., ot:ot + oh, ol:ol + ow] += y.float() * m
            weight[ot:ot + oh, ol:ol + ow] += m
    return (out / weight).to(x.dtype)


def check_tiling(tile: int, overlap: int, unit: int) -> None:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < unit or tile % unit:
        raise ValueError(f"tile must be a positive multiple of {unit} pixels, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0 or overlap >= tile or overlap % unit:
        raise ValueError(f"overlap must be a multiple of {unit} pixels in [0, tile), got {overlap!r}")
