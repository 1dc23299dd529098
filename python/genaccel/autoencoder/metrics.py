"""Reconstruction metrics for autoencoder round trips: PSNR and SSIM (Wang et al. 2004: 11x11 Gaussian
window, sigma 1.5, K1 0.01, K2 0.03, statistics over the window positions that fit inside the frame, as
scikit-image's gaussian_weights=True computes it), on (N, C, H, W) frames."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a.double() - b.double()).pow(2).mean().item()


def psnr_from_mse(err: float, data_range: float) -> float:
    return math.inf if err == 0 else 10 * math.log10(data_range ** 2 / err)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB; data_range is max - min of the pixel scale (2 for [-1, 1])."""
    return psnr_from_mse(mse(a, b), data_range)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x * x / (2 * sigma * sigma))
    return w / w.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of each (C, H, W) frame of a and b, (N, C, H, W) -> (N,) float64, averaged over channels."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"a and b must be (N, C, H, W) of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < window:
        raise ValueError(f"frames must be at least {window} pixels on each side for SSIM, got {tuple(a.shape[-2:])}")
    c = a.shape[1]
    g = _gaussian(window, sigma).to(a.device)
    w = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    x, y = a.double(), b.double()

    def blur(t):
        return F.conv2d(t, w, groups=c)

    mx, my = blur(x), blur(y)
    # sample (unbiased) covariances, as scikit-image uses
    n = window * window
    cov = n / (n - 1)
    vx = cov * (blur(x * x) - mx * mx)
    vy = cov * (blur(y * y) - my * my)
    vxy = cov * (blur(x * y) - mx * my)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))
