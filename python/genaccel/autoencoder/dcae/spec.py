"""The chunk rule of DC-AE-V's convolution, shared by the float64 reference and the backward."""

from __future__ import annotations

from typing import Optional

import torch


def pad_chunks(x: torch.Tensor, cache: Optional[torch.Tensor], chunk_size: int, p: int) -> torch.Tensor:
    """x (B, C, T, H, W), T a multiple of chunk_size, cut into n = T / chunk_size chunks, each padded in
    time as DC-AE-V's ConvLayer3d pads it: on the left with the previous chunk's last p frames (for the
    first chunk, cache (B, C, p, H, W) or zeros), on the right with p zero frames. -> (B * n, C,
    chunk_size + 2p, H, W), chunks of one batch element consecutive."""
    b, c, t, h, w = x.shape
    n = t // chunk_size
    if n == 0:
        return x.new_zeros(0, c, chunk_size + 2 * p, h, w)
    chunks = x.reshape(b, c, n, chunk_size, h, w).permute(0, 2, 1, 3, 4, 5)  # (B, n, C, L, H, W)
    if p == 0:
        return chunks.reshape(b * n, c, chunk_size, h, w)
    first = cache if cache is not None else x.new_zeros(b, c, p, h, w)
    left = torch.cat([first.unsqueeze(1), chunks[:, :-1, :, chunk_size - p:]], dim=1)
    right = x.new_zeros(b, n, c, p, h, w)
    return torch.cat([left, chunks, right], dim=3).reshape(b * n, c, chunk_size + 2 * p, h, w)
