"""Video-like synthetic attention inputs: what the sparse-attention quality comparison and the SVG2
benchmark run on, so that clusters and spatio-temporal locality both mean something.

Tokens sit on a (frames, height, width) grid in frame-major order, as a video DiT lays out its latent
patches. Each token belongs to one of a few semantic regions (discs whose centres drift across the
frames, on a background), so that a region's tokens are scattered in memory order but similar in
feature space; q and k carry the region's embedding (shared by q and k, so that queries attend to
their region's keys) plus a smooth spatio-temporal positional field (so that near tokens attend to
each other, the locality Radial attention assumes) and noise. v is random.
"""

import math
from typing import Tuple

import torch


def video_like_qkv(B: int, H: int, frames: int, height: int, width: int, D: int, regions: int = 6,
                   region_strength: float = 2.5, position_strength: float = 1.5, noise: float = 0.5,
                   seed: int = 0, dtype: torch.dtype = torch.float32,
                   device="cpu") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v), each (B, H, frames * height * width, D)."""
    gen = torch.Generator().manual_seed(seed)
    N = frames * height * width
    t = torch.arange(frames).repeat_interleave(height * width).double() / max(frames - 1, 1)
    y = (torch.arange(height).repeat_interleave(width).repeat(frames).double() + 0.5) / height
    x = (torch.arange(width).repeat(frames * height).double() + 0.5) / width
    # Regions: discs of radius 0.15-0.3 whose centres move linearly over the clip; region 0 is the background.
    start = torch.rand(regions, 2, generator=gen, dtype=torch.float64)
    drift = (torch.rand(regions, 2, generator=gen, dtype=torch.float64) - 0.5) * 0.6
    radius = 0.15 + 0.15 * torch.rand(regions, generator=gen, dtype=torch.float64)
    cy = start[:, 0][None] + drift[:, 0][None] * t[:, None]
    cx = start[:, 1][None] + drift[:, 1][None] * t[:, None]
    inside = (y[:, None] - cy) ** 2 + (x[:, None] - cx) ** 2 < radius[None] ** 2
    # The last listed disc wins where discs overlap; tokens in no disc are background (label 0).
    label = torch.where(inside.any(-1), regions - inside.flip(-1).int().argmax(-1), torch.zeros(N, dtype=torch.long))
    # Smooth positional field: a few low-frequency sinusoids of (t, y, x) mixed into D features per head.
    freqs = 1 + 2 * torch.rand(B, H, 8, 3, generator=gen, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(B, H, 8, generator=gen, dtype=torch.float64)
    coords = torch.stack([t, y, x], -1)  # (N, 3)
    waves = torch.sin(2 * math.pi * torch.einsum("nc,bhfc->bhnf", coords, freqs) + phase[:, :, None])
    mix = torch.randn(B, H, 8, D, generator=gen, dtype=torch.float64) / math.sqrt(8)
    position = waves @ mix
    embed = torch.randn(B, H, regions + 1, D, generator=gen, dtype=torch.float64)
    region = torch.gather(embed, 2, label.view(1, 1, N, 1).expand(B, H, N, D))

    def features():
        return (region_strength * region + position_strength * position
                + noise * torch.randn(B, H, N, D, generator=gen, dtype=torch.float64)) / math.sqrt(D) ** 0.5

    q, k = features(), features()
    v = torch.randn(B, H, N, D, generator=gen, dtype=torch.float64)
    return tuple(a.to(dtype=dtype, device=device) for a in (q, k, v))
