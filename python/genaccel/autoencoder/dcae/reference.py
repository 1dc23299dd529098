"""float64 references of the DC-AE ops, written as the original code computes them (explicit padded
copies, pixel_unshuffle then a mean, repeat_interleave then pixel_shuffle). Never called by the fast
path."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .spec import pad_chunks


def chunk_causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], chunk_size: int,
                        cache: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each chunk padded explicitly (spec.pad_chunks), then an ordinary conv3d without temporal padding
    and with spatial zero padding (kh - 1) / 2, (kw - 1) / 2. -> (B, Cout, T, H, W) float64."""
    x, weight = x.double(), weight.double()
    bias = None if bias is None else bias.double()
    cache = None if cache is None else cache.double()
    b, _, t, h, w = x.shape
    kt, kh, kw = weight.shape[2:]
    xp = pad_chunks(x, cache, chunk_size, (kt - 1) // 2)
    y = F.conv3d(xp, weight, bias, padding=(0, (kh - 1) // 2, (kw - 1) // 2))  # (B n, Cout, L, H, W)
    n = t // chunk_size
    cout = weight.shape[0]
    return y.reshape(b, n, cout, chunk_size, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b, cout, t, h, w)


def unshuffle(x: torch.Tensor, r: int, rt: int = 1) -> torch.Tensor:
    """pixel_unshuffle generalised to (B, C, T, H, W) (4-D: rt = 1): channel ((c rt + dt) r + dh) r + dw
    holds channel c at phase (dt, dh, dw)."""
    image = x.dim() == 4
    if image:
        x = x.unsqueeze(2)
    b, c, t, h, w = x.shape
    y = x.reshape(b, c, t // rt, rt, h // r, r, w // r, r).permute(0, 1, 3, 5, 7, 2, 4, 6)
    y = y.reshape(b, c * rt * r * r, t // rt, h // r, w // r)
    return y.squeeze(2) if image else y


def shuffle(x: torch.Tensor, r: int, rt: int = 1) -> torch.Tensor:
    """The inverse of unshuffle (pixel_shuffle for images)."""
    image = x.dim() == 4
    if image:
        x = x.unsqueeze(2)
    b, cu, t, h, w = x.shape
    c = cu // (rt * r * r)
    y = x.reshape(b, c, rt, r, r, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c, t * rt, h * r, w * r)
    return y.squeeze(2) if image else y


def space_to_channel(x: torch.Tensor, r: int, rt: int, out_channels: int) -> torch.Tensor:
    """unshuffle, then the mean of groups of consecutive channels (DC-AE's downsampling shortcut)."""
    u = unshuffle(x.double(), r, rt)
    return u.reshape(u.shape[0], out_channels, u.shape[1] // out_channels, *u.shape[2:]).mean(dim=2)


def channel_to_space(x: torch.Tensor, r: int, rt: int, out_channels: int) -> torch.Tensor:
    """repeat_interleave of the channels, then shuffle (DC-AE's upsampling shortcut)."""
    repeats = out_channels * rt * r * r // x.shape[1]
    return shuffle(x.double().repeat_interleave(repeats, dim=1), r, rt)


def lite_mla(qkv: torch.Tensor, head_dim: int = 32, eps: float = 1e-15) -> torch.Tensor:
    """LiteMLA's attention in its quadratic form: per head A = ReLU(K)^T ReLU(Q) (keys x queries), each
    query's column divided by its sum + eps, out = V A. qkv (B, heads * [q | k | v], H, W) -> (B, heads
    head_dim, H, W) float64."""
    b, c, h, w = qkv.shape
    heads = c // (3 * head_dim)
    x = qkv.double().reshape(b, heads, 3, head_dim, h * w)
    q, k, v = x[:, :, 0].relu(), x[:, :, 1].relu(), x[:, :, 2]
    a = k.transpose(-1, -2) @ q                      # (B, heads, keys, queries)
    a = a / (a.sum(dim=-2, keepdim=True) + eps)
    return (v @ a).reshape(b, heads * head_dim, h, w)
