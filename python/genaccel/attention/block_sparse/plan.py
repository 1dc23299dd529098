"""Planning block-sparse attention (FlashInfer's plan/run): a block mask -> the key-block index lists
of each query block, built once and run as often as needed."""

from typing import Optional

import torch


def block_mask_to_indices(block_mask: torch.Tensor, max_kv_blocks: Optional[int] = None):
    """Plans a block mask: returns (kv_indices, kv_counts).

    block_mask: bool (Bm, Hm, Tq, Tk); True = compute that (query block, key block) pair.
    kv_indices: int32 (Bm, Hm, Tq, max_kv_blocks), the selected key blocks of each query block in
    ascending order, padded with -1; kv_counts: int32 (Bm, Hm, Tq). Bm/Hm stay as in the mask (1
    broadcasts over batch/heads). max_kv_blocks defaults to the largest row count (one host sync);
    under torch.compile it defaults to Tk, which needs no sync.
    """
    if not isinstance(block_mask, torch.Tensor) or block_mask.dtype != torch.bool:
        raise ValueError(f"block_mask must be a bool tensor, got {getattr(block_mask, 'dtype', type(block_mask))}")
    if block_mask.dim() != 4:
        raise ValueError(f"block_mask must be 4-D (B or 1, H or 1, Tq, Tk), got shape {tuple(block_mask.shape)}")
    tk = block_mask.shape[-1]
    counts = block_mask.sum(dim=-1, dtype=torch.int32)
    if max_kv_blocks is None:
        if torch.compiler.is_compiling() or counts.numel() == 0:
            max_kv_blocks = tk
        else:
            max_kv_blocks = int(counts.max())
    elif not torch.compiler.is_compiling() and counts.numel() > 0 and int(counts.max()) > max_kv_blocks:
        raise ValueError(
            f"max_kv_blocks={max_kv_blocks} is smaller than the {int(counts.max())} blocks a row of "
            "block_mask selects; a plan must list every selected block"
        )
    if not 0 <= max_kv_blocks <= tk:
        raise ValueError(f"max_kv_blocks must be in [0, {tk}], got {max_kv_blocks}")
    # Selected block ids sort before the sentinel tk; a stable sort keeps them ascending.
    ids = torch.arange(tk, device=block_mask.device, dtype=torch.int32)
    keyed = torch.where(block_mask, ids, torch.full_like(ids, tk))
    ordered = torch.sort(keyed, dim=-1, stable=True).values[..., :max_kv_blocks]
    kv_indices = torch.where(ordered == tk, torch.full_like(ordered, -1), ordered).contiguous()
    return kv_indices, counts.contiguous()
