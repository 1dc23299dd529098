"""Readable float64 specification of block-sparse attention (never used in the fast path).

Dense attention in which a query token attends to a key token exactly when the block mask selects
the (query block, key block) pair; rows with no selected key give zeros and lse = -inf.
"""

import math

import torch


def expand_block_mask(block_mask: torch.Tensor, nq: int, nk: int, block_size, q_offsets=None,
                      k_offsets=None) -> torch.Tensor:
    """Token-level mask (Bm, Hm, nq, nk) from a block mask (Bm, Hm, Tq, Tk): uniform blocks of
    block_size, or, per side, variable-size blocks given by int32 token offsets (Bo, Ho, T + 1)
    (the result then broadcasts mask and offsets over batch and heads)."""
    bq, bk = block_size
    if q_offsets is None and k_offsets is None:
        rows = torch.arange(nq, device=block_mask.device) // bq
        cols = torch.arange(nk, device=block_mask.device) // bk
        return block_mask[:, :, rows][:, :, :, cols]
    rows = _token_blocks(nq, bq, q_offsets, block_mask.device)
    cols = _token_blocks(nk, bk, k_offsets, block_mask.device)
    B = max(block_mask.shape[0], rows.shape[0], cols.shape[0])
    H = max(block_mask.shape[1], rows.shape[1], cols.shape[1])
    tq, tk = block_mask.shape[2:]
    m = block_mask.expand(B, H, tq, tk)
    per_row = torch.gather(m, 2, rows.expand(B, H, nq)[..., None].expand(B, H, nq, tk))
    return torch.gather(per_row, 3, cols.expand(B, H, nk)[:, :, None, :].expand(B, H, nq, nk))


def _token_blocks(n: int, block: int, offsets, device) -> torch.Tensor:
    """(Bo, Ho, n) block id of each token: offsets[..., t] <= token < offsets[..., t + 1]."""
    if offsets is None:
        return (torch.arange(n, device=device) // block).view(1, 1, n)
    tokens = torch.arange(n, device=device, dtype=torch.int64).expand(*offsets.shape[:-1], n).contiguous()
    return torch.searchsorted(offsets.long().contiguous(), tokens, right=True) - 1


def block_sparse_attention_reference(q, k, v, block_mask, block_size=(64, 64), scale=None, q_offsets=None,
                                     k_offsets=None):
    """Returns (out, lse) in float64: out (B, H, Nq, D), lse (B, H, Nq) natural log. q_offsets /
    k_offsets: variable-size blocks (see expand_block_mask)."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, nq, D = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    group = H // hkv
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    mask = expand_block_mask(block_mask.bool(), nq, nk, block_size, q_offsets, k_offsets).expand(B, H, nq, nk)
    logits = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - lse.unsqueeze(-1).clamp_min(torch.finfo(torch.float64).min))
    return masked_matmul(probs, mask, v), lse


def masked_matmul(weights: torch.Tensor, mask: torch.Tensor, v: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """out[..., i, :] = sum over the keys k with mask[..., i, k] of weights[..., i, k] * v[..., k, :].

    Unlike (weights masked to 0) @ v, a NaN or inf in v reaches only the rows whose mask selects its
    key (0 * NaN is NaN), as a kernel that never reads unselected blocks gives. Finite v takes the
    plain product; otherwise the keys are summed in chunks of `chunk` to bound the memory."""
    masked = weights.masked_fill(~mask, 0.0)
    if bool(torch.isfinite(v).all()):
        return masked @ v
    out = torch.zeros((*masked.shape[:-1], v.shape[-1]), dtype=torch.result_type(masked, v), device=v.device)
    for s in range(0, v.shape[-2], chunk):
        terms = masked[..., s : s + chunk, None] * v[..., None, s : s + chunk, :]
        out = out + torch.where(mask[..., s : s + chunk, None], terms, 0.0).sum(dim=-2)
    return out
