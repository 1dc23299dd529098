"""SLA block classification: which key blocks each query block attends to exactly (critical),
through the linear branch (marginal), or not at all (negligible).

Scores are mean-pooled q . mean-pooled (k - mean_tokens(k)) (the "smooth-K" shift changes no
row's order but keeps the pooled values small), pooled over the valid tokens of each block in
float32. Per row, the top floor(topk * Tk) blocks (at least one) are critical and the bottom
floor(low_k * Tk) negligible; ties go to the lower block index (op sla_select_blocks, a CPU and a
CUDA kernel).
"""

import contextlib
from typing import Tuple

import torch

from ..._utils import BlockSize, autocast_enabled, block_size_pair, check_fraction
from .spec import block_counts


def check_sla_fractions(topk: float, low_k: float) -> Tuple[float, float]:
    """Validated (topk, low_k): each in [0, 1] and topk + low_k <= 1."""
    topk, low_k = check_fraction("topk", topk), check_fraction("low_k", low_k)
    if topk + low_k > 1.0 + 1e-12:
        raise ValueError(f"topk + low_k must be at most 1, got {topk} + {low_k}")
    return topk, low_k


def _pooled_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """float32 mean over the tokens of each block along dim -2; a partial last block divides by its
    own size. Whole blocks are summed through a view (no padded copy of x)."""
    n = x.shape[-2]
    full = n // block
    # mean(dtype=float32) accumulates half inputs in float32 without a float32 copy of x.
    parts = [x[..., : full * block, :].unflatten(-2, (full, block)).mean(dim=-2, dtype=torch.float32)] if full else []
    if n > full * block:
        parts.append(x[..., full * block :, :].mean(dim=-2, keepdim=True, dtype=torch.float32))
    return torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]


def sla_block_map(q: torch.Tensor, k: torch.Tensor, topk: float = 0.05, low_k: float = 0.10,
                  block_size: BlockSize = (64, 64)):
    """Classifies the (query block, key block) pairs of q (B, H, Nq, D) and k (B, Hkv, Nk, D).

    Returns (codes, kv_indices, kv_counts): codes int8 (B, H, Tq, Tk) with 1 critical, 0 marginal,
    -1 negligible; kv_indices / kv_counts list the critical blocks in the format of
    `genaccel.block_mask_to_indices`, ready for the sparse branch.
    """
    bq, bk = block_size_pair(block_size)
    topk, low_k = check_sla_fractions(topk, low_k)
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[3] < 1:
            raise ValueError(f"{name} must be a 4-D tensor (B, H, N, D) with D >= 1, got {getattr(t, 'shape', type(t))}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on one device, got {q.device} and {k.device}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and head dim")
    if k.shape[1] == 0 or q.shape[1] == 0:
        raise ValueError(f"q and k need at least one head, got {q.shape[1]} and {k.shape[1]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of key heads {k.shape[1]}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"sla_block_map: q and k need at least one token each, got Nq={q.shape[2]}, Nk={k.shape[2]}")
    group = q.shape[1] // k.shape[1]
    pooled_q = _pooled_blocks(q, bq)                                                  # (B, H, Tq, D)
    # Smooth-K: pooling is linear, so pool(k - mean_tokens(k)) = pool(k) - mean_tokens(k), and
    # mean_tokens(k) is the block means weighted by block sizes (no second pass over k).
    pooled_k = _pooled_blocks(k, bk)
    nk = k.shape[-2]
    sizes = torch.full((pooled_k.shape[-2], 1), float(bk), device=k.device)
    sizes[-1] = nk - (pooled_k.shape[-2] - 1) * bk
    pooled_k = pooled_k - (pooled_k * sizes).sum(dim=-2, keepdim=True) / nk
    # float32 scores also under autocast (which would run this matmul in half precision and so
    # change which blocks are critical).
    with torch.autocast(q.device.type, enabled=False) if autocast_enabled(q) else contextlib.nullcontext():
        scores = pooled_q @ pooled_k.repeat_interleave(group, dim=1).transpose(-1, -2)  # (B, H, Tq, Tk)
    n_crit, n_neg = block_counts(scores.shape[-1], topk, low_k)
    # Per row: the n_crit highest scores critical, the n_neg lowest negligible (ties to the lower
    # block index, as the reference's stable sort), and the critical ids in ascending order: the
    # format of block_mask_to_indices without its padding, since every row has n_crit of them.
    codes, kv_indices = torch.ops.genaccel.sla_select_blocks(scores.contiguous(), n_crit, n_neg)
    kv_counts = torch.full(scores.shape[:-1], n_crit, dtype=torch.int32, device=q.device)
    return codes, kv_indices, kv_counts
