"""Readable float64 specification of block-sparse attention (never used in the fast path).

Dense attention in which a query token attends to a key token exactly when the block mask selects
the (query block, key block) pair; rows with no selected key give zeros and lse = -inf.
"""

import math

import torch


def expand_block_mask(block_mask: torch.Tensor, nq: int, nk: int, block_size) -> torch.Tensor:
    """Token-level mask (Bm, Hm, nq, nk) from a block mask (Bm, Hm, ceil(nq/bq), ceil(nk/bk))."""
    bq, bk = block_size
    rows = torch.arange(nq, device=block_mask.device) // bq
    cols = torch.arange(nk, device=block_mask.device) // bk
    return block_mask[:, :, rows][:, :, :, cols]


def block_sparse_attention_reference(q, k, v, block_mask, block_size=(64, 64), scale=None):
    """Returns (out, lse) in float64: out (B, H, Nq, D), lse (B, H, Nq) natural log."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, nq, D = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    group = H // hkv
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    mask = expand_block_mask(block_mask.bool(), nq, nk, block_size).expand(B, H, nq, nk)
    logits = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - lse.unsqueeze(-1).clamp_min(torch.finfo(torch.float64).min))
    probs = probs.masked_fill(~mask, 0.0)
    out = torch.einsum("bhqk,bhkd->bhqd", probs, v)
    return out, lse
