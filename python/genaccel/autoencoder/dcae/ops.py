"""The DC-AE ops' wrappers and their autograd.

- `chunk_causal_conv3d(x, weight, bias=None, *, chunk_size, cache=None) -> (y, new_cache)`: DC-AE-V's
  3-D convolution, bidirectional inside chunks of `chunk_size` frames and causal across them. `cache` is
  the previous call's `new_cache` (its input's last p = (kt - 1) / 2 frames), so calling chunk by chunk
  gives exactly one full pass. The kernels read the halo in place: no padded copy of the video.
- `space_to_channel(x, r, rt=1, *, out_channels)` / `channel_to_space(x, r, rt=1, *, out_channels)`:
  the parameter-free shortcuts of DC-AE's resolution-changing blocks, images (B, C, H, W) and videos
  (B, C, T, H, W).
- `lite_mla(qkv, head_dim=32, eps=1e-15)`: the ReLU linear attention of DC-AE's EfficientViT blocks on
  qkv grouped per head ([q | k | v] of head_dim channels each, head after head, as the original's qkv
  conv lays them out), (sum_m v_m k'_m . q'_n) / (sum_m k'_m . q'_n + eps) in float32 whatever the
  input dtype (eps 1e-15 underflows in float16). The original's quadratic form for small maps is the
  same function, so there is one op.

The conv's backward runs torch's convolution backward on the chunk-padded copy (spec.pad_chunks): it
is exact, and it holds that copy, (1 + 2p / chunk_size) times x, while it runs.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..._utils import check_int
from .spec import pad_chunks

_conv = torch.ops.genaccel.dcae_chunk_causal_conv3d


def chunk_causal_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                        chunk_size: int, cache: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """y (B, Cout, T, H, W) and new_cache (B, Cin, p, H, W), the last p input frames (module docstring).
    T must be a multiple of chunk_size and p <= chunk_size (a clear error otherwise)."""
    check_int("chunk_size", chunk_size, 1)
    y = _conv(x, weight, bias, chunk_size, cache)
    p = (weight.shape[2] - 1) // 2
    t = x.shape[2]
    if t >= p:
        new_cache = x[:, :, t - p:].contiguous()
    else:  # T == 0 < p: nothing new, the old halo stays
        new_cache = cache if cache is not None else x.new_zeros(*x.shape[:2], p, *x.shape[3:])
    return y, new_cache


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, chunk_size, cache = inputs
    ctx.save_for_backward(x, weight, cache)
    ctx.chunk_size = chunk_size
    ctx.has_bias = bias is not None


def _conv_backward(ctx, grad):
    x, weight, cache = ctx.saved_tensors
    L = ctx.chunk_size
    b, c, t, h, w = x.shape
    n, p = t // L, (weight.shape[2] - 1) // 2
    kh, kw = weight.shape[3:]
    if b * t == 0:
        zeros = [torch.zeros_like(x), torch.zeros_like(weight)]
        return (*zeros, weight.new_zeros(weight.shape[0]) if ctx.has_bias else None, None,
                None if cache is None else torch.zeros_like(cache))
    want_x, want_w, want_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
    want_cache = cache is not None and ctx.needs_input_grad[4]
    xp = pad_chunks(x, cache, L, p)
    g = grad.reshape(b, -1, n, L, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b * n, -1, L, h, w)
    gxp, gw, gb = torch.ops.aten.convolution_backward(
        g.to(x.dtype), xp, weight, [weight.shape[0]], [1, 1, 1], [0, (kh - 1) // 2, (kw - 1) // 2], [1, 1, 1], False,
        [0, 0, 0], 1, [want_x or want_cache, want_w, want_b])
    gx = gcache = None
    if gxp is not None:
        gxp = gxp.reshape(b, n, c, L + 2 * p, h, w)
        frames = gxp[:, :, :, p:p + L].clone()
        if p:
            # A chunk's left pad is the previous chunk's last p frames (the first chunk's: the cache).
            frames[:, :-1, :, L - p:] += gxp[:, 1:, :, :p]
            gcache = gxp[:, 0, :, :p].contiguous() if want_cache else None
        gx = frames.permute(0, 2, 1, 3, 4, 5).reshape(b, c, t, h, w) if want_x else None
    return gx, gw, gb if ctx.has_bias else None, None, gcache


torch.library.register_autograd("genaccel::dcae_chunk_causal_conv3d", _conv_backward, setup_context=_conv_setup_context)


def _shuffle_args(r: int, rt: int, out_channels: int) -> None:
    check_int("r", r, 1)
    check_int("rt", rt, 1)
    check_int("out_channels", out_channels, 1)


def space_to_channel(x: torch.Tensor, r: int, rt: int = 1, *, out_channels: int) -> torch.Tensor:
    """pixel_unshuffle by (rt, r, r), then the mean of groups of consecutive channels: (B, C, [T,] H, W)
    -> (B, out_channels, [T / rt,] H / r, W / r). rt applies to videos only."""
    _shuffle_args(r, rt, out_channels)
    return torch.ops.genaccel.dcae_space_to_channel(x, r, rt, out_channels)


def channel_to_space(x: torch.Tensor, r: int, rt: int = 1, *, out_channels: int) -> torch.Tensor:
    """repeat_interleave of the channels, then pixel_shuffle by (rt, r, r): (B, C, [T,] H, W) ->
    (B, out_channels, [T rt,] H r, W r)."""
    _shuffle_args(r, rt, out_channels)
    return torch.ops.genaccel.dcae_channel_to_space(x, r, rt, out_channels)


# The two shortcuts are each other's adjoints up to the group size g = fine channels x rt r r / coarse
# channels: a mean over g one way, g repeats the other.
def _space_to_channel_setup_context(ctx, inputs, output):
    x, r, rt, out_channels = inputs
    ctx.args = (x.shape[1], r, rt, x.shape[1] * rt * r * r // out_channels)


def _channel_to_space_setup_context(ctx, inputs, output):
    x, r, rt, out_channels = inputs
    ctx.args = (x.shape[1], r, rt, out_channels * rt * r * r // x.shape[1])


def _space_to_channel_backward(ctx, grad):
    c, r, rt, g = ctx.args
    return torch.ops.genaccel.dcae_channel_to_space(grad, r, rt, c) / g, None, None, None


def _channel_to_space_backward(ctx, grad):
    c, r, rt, g = ctx.args
    return torch.ops.genaccel.dcae_space_to_channel(grad, r, rt, c) * g, None, None, None


torch.library.register_autograd("genaccel::dcae_space_to_channel", _space_to_channel_backward,
                                setup_context=_space_to_channel_setup_context)
torch.library.register_autograd("genaccel::dcae_channel_to_space", _channel_to_space_backward,
                                setup_context=_channel_to_space_setup_context)


def lite_mla(qkv: torch.Tensor, head_dim: int = 32, eps: float = 1e-15) -> torch.Tensor:
    """qkv (B, heads * 3 * head_dim, H, W) -> (B, heads * head_dim, H, W) of qkv's dtype (module docstring)."""
    check_int("head_dim", head_dim, 1)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ValueError(f"eps must be a real number, got {eps!r}")
    return torch.ops.genaccel.dcae_lite_mla(qkv, head_dim, float(eps))


def _lite_mla_setup_context(ctx, inputs, output):
    qkv, head_dim, eps = inputs
    ctx.save_for_backward(qkv)
    ctx.head_dim, ctx.eps = head_dim, eps


def _lite_mla_backward(ctx, grad):
    # The linear form's gradient, O(N d^2) like the forward, in float32: out_n = S q'_n / (z . q'_n + eps)
    # with S = V K'^T and z = sum_m k'_m.
    (qkv,) = ctx.saved_tensors
    b, c, h, w = qkv.shape
    d, heads = ctx.head_dim, c // (3 * ctx.head_dim)
    x = qkv.float().reshape(b, heads, 3, d, h * w)
    q, k, v = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    qr, kr = q.relu(), k.relu()
    g = grad.float().reshape(b, heads, d, h * w)
    s = v @ kr.transpose(-1, -2)                    # (B, heads, d, d)
    z = kr.sum(dim=-1)                              # (B, heads, d)
    den = torch.einsum("bhj,bhjn->bhn", z, qr) + ctx.eps
    out = (s @ qr) / den.unsqueeze(-2)
    g_num = g / den.unsqueeze(-2)
    g_den = -(g * out).sum(dim=-2) / den            # (B, heads, N)
    g_qr = s.transpose(-1, -2) @ g_num + z.unsqueeze(-1) * g_den.unsqueeze(-2)
    g_s = g_num @ qr.transpose(-1, -2)              # (B, heads, d, d)
    g_z = torch.einsum("bhn,bhjn->bhj", g_den, qr)
    g_v = g_s @ kr
    g_kr = g_s.transpose(-1, -2) @ v + g_z.unsqueeze(-1)
    gx = torch.stack([g_qr * (q > 0), g_kr * (k > 0), g_v], dim=2)
    return gx.reshape(b, c, h, w).to(qkv.dtype), None, None


torch.library.register_autograd("genaccel::dcae_lite_mla", _lite_mla_backward, setup_context=_lite_mla_setup_context)
