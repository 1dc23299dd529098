"""Procedural videos for training and checking a small DC-AE-V where no real footage or released weights
are reachable: textured shapes (discs, boxes, rings) moving and bouncing over a drifting textured
background, with soft anti-aliased edges. Everything is drawn from one torch.Generator, so a seed
gives the same clips on every machine."""

from __future__ import annotations

import math

import torch


def _texture(u: torch.Tensor, v: torch.Tensor, g: torch.Generator, n: int, fmin: float, fmax: float) -> torch.Tensor:
    """(n, T, H, W) in [0, 1]: stripes at a random angle and frequency (cycles per unit of u, v), or a
    checkerboard."""
    angle = torch.rand(n, 1, 1, 1, generator=g) * math.pi
    freq = fmin + torch.rand(n, 1, 1, 1, generator=g) * (fmax - fmin)
    a = u * torch.cos(angle) + v * torch.sin(angle)
    b = -u * torch.sin(angle) + v * torch.cos(angle)
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * a)
    checker = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * a).sign() * torch.sin(2 * math.pi * freq * b).sign()
    pick = (torch.rand(n, 1, 1, 1, generator=g) < 0.5).float()
    return pick * stripes + (1 - pick) * checker


def moving_shapes(batch: int, frames: int, height: int, width: int, *, seed: int = 0, shapes: int = 3,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, 3, frames, height, width) float32 video in [-1, 1]."""
    g = generator or torch.Generator().manual_seed(seed)
    t = torch.arange(frames, dtype=torch.float32)[None, :, None, None]
    y = torch.linspace(-1, 1, height)[None, None, :, None]
    x = torch.linspace(-1, 1, width)[None, None, None, :] * (width / height)
    # background: a colour gradient times a slowly drifting texture
    drift = (torch.rand(batch, 2, generator=g) - 0.5) * 0.06
    tex = _texture(x + drift[:, 0, None, None, None] * t, y + drift[:, 1, None, None, None] * t, g, batch, 0.5, 2.0)
    c0, c1 = torch.rand(batch, 3, generator=g), torch.rand(batch, 3, generator=g)
    ramp = (0.5 + 0.5 * (x * torch.rand(batch, 1, 1, 1, generator=g) + y * 0.5)).clamp(0, 1)
    base = c0[:, :, None, None, None] * (1 - ramp[:, None]) + c1[:, :, None, None, None] * ramp[:, None]
    video = base * (0.6 + 0.4 * tex[:, None])
    edge = 1.5 * height  # edge sharpness: about one pixel of blend
    for _ in range(shapes):
        pos = (torch.rand(batch, 2, generator=g) - 0.5) * 1.4
        vel = (torch.rand(batch, 2, generator=g) - 0.5) * 0.15
        size = 0.15 + torch.rand(batch, generator=g) * 0.3
        kind = torch.randint(0, 3, (batch,), generator=g)
        # bounce: reflect the position into [-0.9, 0.9]
        path = pos[:, :, None] + vel[:, :, None] * torch.arange(frames, dtype=torch.float32)
        path = (path + 0.9).remainder(3.6)
        path = torch.where(path > 1.8, 3.6 - path, path) - 0.9
        px, py = path[:, 0, :, None, None], path[:, 1, :, None, None]
        dx, dy = x - px, y - py
        r = size[:, None, None, None]
        disc = torch.sqrt(dx * dx + dy * dy) - r
        box = torch.maximum(dx.abs(), dy.abs()) - r * 0.9
        ring = (torch.sqrt(dx * dx + dy * dy) - r).abs() - r * 0.35
        sdf = torch.where((kind == 0)[:, None, None, None], disc, torch.where((kind == 1)[:, None, None, None], box, ring))
        alpha = torch.sigmoid(-sdf * edge)[:, None]
        colour = torch.rand(batch, 3, generator=g)[:, :, None, None, None]
        shade = _texture(dx, dy, g, batch, 1.0, 4.0)[:, None]  # the texture moves with the shape
        video = video * (1 - alpha) + alpha * colour * (0.5 + 0.5 * shade)
    return (video * 2 - 1).clamp(-1, 1)
