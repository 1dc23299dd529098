"""Decode attention over a cached X with XQuant's absorbed value path (brief A6): the past tokens' values
V_j = X_j W_v^T + b_v are never rematerialised; per query head the attention-weighted sum of the cached
rows comes first, sum_j a_j X_j (genaccel.xquant_weighted_sum: dequantized tile by tile), then one
(head_dim x d) product with that head's slice of W_v, plus (sum_j a_j) b_v. Exact; it replaces
L x d x d_kv multiply-adds per layer and step by H x L x d + H x d x head_dim. Keys cannot be absorbed
(RoPE depends on the position), so K_past comes rematerialised (xquant_matmul, then RoPE).

`attention_forward` is the transformers attention function ("genaccel_xquant") that an XQuantCache
with absorbed_values=True installs: it takes the past part from the cache layer's state and the new
tokens' K / V from the model, and delegates to torch SDPA whenever there is no such state (prefill,
other caches).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from .ops import QuantizedTensor, xquant_weighted_sum

ATTENTION_NAME = "genaccel_xquant"


def weighted_rows(a: torch.Tensor, x: Union[QuantizedTensor, torch.Tensor]) -> torch.Tensor:
    """a (B, M, L) @ X (B, L, d), X quantized or not."""
    if isinstance(x, QuantizedTensor):
        return xquant_weighted_sum(a, x)
    return a @ x.to(a.dtype)


def xquant_decode_attention(q: torch.Tensor, k_past: torch.Tensor, x_past: Union[QuantizedTensor, torch.Tensor],
                            w_v: torch.Tensor, b_v: Optional[torch.Tensor], k_new: torch.Tensor, v_new: torch.Tensor,
                            mask: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """softmax(q [K_past; K_new]^T scale + mask) [V_past; V_new] with V_past = X_past W_v^T + b_v absorbed.

    q (B, H, Tq, hd) after RoPE; k_past (B, Hkv, L, hd) after RoPE; x_past (B, L, d) the cached rows (a
    QuantizedTensor or a tensor); w_v (Hkv hd, d), b_v (Hkv hd,) or None; k_new, v_new (B, Hkv, T, hd)
    the new tokens' exact keys / values; mask (B, 1 or H, Tq, L + T), bool (True = attend) or additive,
    or None (the new tokens attend causally to each other, as SDPA's is_causal with Tq = T). H is a
    multiple of Hkv, query head h using kv head h // (H / Hkv). Returns (B, H, Tq, hd) in q's dtype."""
    b, h, tq, hd = q.shape
    hkv, length, t = k_past.shape[1], k_past.shape[2], k_new.shape[2]
    if h % hkv or k_new.shape[1] != hkv or v_new.shape[:3] != k_new.shape[:3] or x_past.shape[-2] != length:
        raise ValueError(f"shapes do not fit: q {tuple(q.shape)}, k_past {tuple(k_past.shape)}, x_past "
                         f"{tuple(x_past.shape)}, k_new {tuple(k_new.shape)}, v_new {tuple(v_new.shape)}")
    g = h // hkv
    scale = 1 / math.sqrt(hd) if scale is None else scale
    qg = q.view(b, hkv, g, tq, hd).float()
    scores = torch.cat([torch.einsum("bkgtd,bkld->bkgtl", qg, k_past.float()),
                        torch.einsum("bkgtd,bksd->bkgts", qg, k_new.float())], dim=-1) * scale
    if mask is None:
        if tq > 1:  # causal among the new tokens (query i is new token t - tq + i)
            i = torch.arange(tq, device=q.device)[:, None] + (t - tq)
            allowed = torch.cat([torch.ones(tq, length, dtype=torch.bool, device=q.device),
                                 torch.arange(t, device=q.device)[None, :] <= i], dim=-1)
            scores = scores.masked_fill(~allowed, -math.inf)
    else:
        m = mask.view(b, -1, 1, tq, length + t) if mask.shape[1] == 1 else mask.view(b, hkv, g, tq, length + t)
        scores = scores.masked_fill(~m, -math.inf) if m.dtype == torch.bool else scores + m.float()
    p = torch.softmax(scores, dim=-1)
    a_past, a_new = p[..., :length], p[..., length:]
    out = torch.einsum("bkgts,bksd->bkgtd", a_new, v_new.float())
    summed = weighted_rows(a_past.reshape(b, h * tq, length), x_past).float()  # (B, H Tq, d)
    w = w_v.float().view(hkv, hd, -1)
    past = torch.einsum("bkmd,ked->bkme", summed.view(b, hkv, g * tq, -1), w).view(b, hkv, g, tq, hd)
    if b_v is not None:
        past = past + a_past.sum(-1, keepdim=True) * b_v.float().view(1, hkv, 1, 1, hd)
    return (out + past).view(b, h, tq, hd).to(q.dtype)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: the absorbed path where the module's XQuantCache layer
    left a state for this call, torch SDPA (transformers' own function) otherwise."""
    ref = getattr(module, "_genaccel_xquant_layer", None)
    layer = ref() if ref is not None else None
    state = layer.take_absorbed() if layer is not None else None
    if state is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout:
        raise ValueError("the absorbed XQuant attention has no dropout: run the model in eval mode")
    out = xquant_decode_attention(query, state["k_past"], state["x_past"], state["w_v"], state["b_v"], key, value,
                                  attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, attention_forward)
