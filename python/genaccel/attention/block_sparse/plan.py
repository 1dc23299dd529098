"""Planning block-sparse attention (FlashInfer's plan/run): a block mask -> the key-block index lists
of each query block (and, for the CUDA backward, the key-major lists), built once and run as often
as needed."""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..._utils import BlockSize, block_size_pair, check_int


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
    if max_kv_blocks is not None:
        check_int("max_kv_blocks", max_kv_blocks)
    tk = block_mask.shape[-1]
    counts = block_mask.sum(dim=-1, dtype=torch.int32)
    # Under torch.compile and on the meta device the counts have no values to read.
    values = not torch.compiler.is_compiling() and not block_mask.is_meta and counts.numel() > 0
    if max_kv_blocks is None:
        max_kv_blocks = int(counts.max()) if values else tk
    elif values and int(counts.max()) > max_kv_blocks:
        raise ValueError(
            f"max_kv_blocks={max_kv_blocks} is smaller than the {int(counts.max())} blocks a row of "
            "block_mask selects; a plan must list every selected block"
        )
    if max_kv_blocks > tk:
        raise ValueError(f"max_kv_blocks must be in [0, {tk}], got {max_kv_blocks}")
    # Selected block ids sort before the sentinel tk; a stable sort keeps them ascending.
    ids = torch.arange(tk, device=block_mask.device, dtype=torch.int32)
    keyed = torch.where(block_mask, ids, torch.full_like(ids, tk))
    ordered = torch.sort(keyed, dim=-1, stable=True).values[..., :max_kv_blocks]
    kv_indices = torch.where(ordered == tk, torch.full_like(ordered, -1), ordered).contiguous()
    return kv_indices, counts.contiguous()


def mask_density(block_mask: torch.Tensor) -> float:
    """The fraction of True entries of a bool block mask (..., Tq, Tk): the share of (query block,
    key block) pairs computed, averaged over any leading batch / head dims."""
    if not isinstance(block_mask, torch.Tensor) or block_mask.dtype != torch.bool or block_mask.dim() < 2:
        raise ValueError(f"block_mask must be a bool tensor with at least 2 dims, got "
                         f"{getattr(block_mask, 'dtype', type(block_mask))} {tuple(getattr(block_mask, 'shape', ()))}")
    if block_mask.numel() == 0:
        raise ValueError(f"block_mask must not be empty, got shape {tuple(block_mask.shape)}")
    return float(block_mask.sum(dtype=torch.float64) / block_mask.numel())


@dataclass(frozen=True)
class BlockSparsePlan:
    """A planned block-sparse pattern, built once and run by every call that uses it.

    kv_indices int32 (Bm, Hm, Tq, max_kv) and kv_counts int32 (Bm, Hm, Tq): each query block's key
    blocks, in the format of `block_mask_to_indices` (Bm / Hm of 1 broadcast). block_q, block_k:
    tokens per block, or with variable-size blocks the largest block. q_offsets / k_offsets: int32
    token offsets (Bo, Ho, T + 1) of variable-size blocks per (batch, query head), from 0 to the
    sequence length (None: uniform blocks, the last one partial; variable-size blocks run on the CPU
    and the CUDA sm80 kernels, not on backend="sm90"). key_major: the lists transposed to key-major order (block_sparse_key_major_plan)
    for the CUDA backward, built once here instead of a sort in every backward (None on the CPU,
    whose backward walks the query-major lists, or when built with backward=False).
    """

    kv_indices: torch.Tensor
    kv_counts: torch.Tensor
    block_q: int
    block_k: int
    num_k_blocks: int
    q_offsets: Optional[torch.Tensor] = None
    k_offsets: Optional[torch.Tensor] = None
    key_major: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @staticmethod
    def from_mask(block_mask: torch.Tensor, block_size: BlockSize = (64, 64), *,
                  q_block_offsets: Optional[torch.Tensor] = None, k_block_offsets: Optional[torch.Tensor] = None,
                  max_kv_blocks: Optional[int] = None, backward: bool = True) -> "BlockSparsePlan":
        """Plans a bool block mask (Bm, Hm, Tq, Tk). With offsets, the blocks of that side are the
        offsets' (block_size is then unused for it) and Tq / Tk must match them."""
        kv_indices, kv_counts = block_mask_to_indices(block_mask, max_kv_blocks)
        return BlockSparsePlan.from_indices(kv_indices, kv_counts, block_mask.shape[-1], block_size,
                                            q_block_offsets=q_block_offsets, k_block_offsets=k_block_offsets,
                                            backward=backward)

    @staticmethod
    def from_indices(kv_indices: torch.Tensor, kv_counts: torch.Tensor, num_k_blocks: int,
                     block_size: BlockSize = (64, 64), *, q_block_offsets: Optional[torch.Tensor] = None,
                     k_block_offsets: Optional[torch.Tensor] = None, backward: bool = True) -> "BlockSparsePlan":
        """A plan from index lists of the block_mask_to_indices format over num_k_blocks key blocks.
        The lists are checked by the ops on their first use."""
        bq, bk = block_size_pair(block_size)
        for name, t in (("kv_indices", kv_indices), ("kv_counts", kv_counts)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int32:
                raise ValueError(f"{name} must be an int32 tensor, got {getattr(t, 'dtype', type(t))}")
        if kv_indices.dim() != 4 or kv_counts.shape != kv_indices.shape[:3]:
            raise ValueError(f"kv_indices must be (Bm, Hm, Tq, max_kv) and kv_counts (Bm, Hm, Tq), got "
                             f"{tuple(kv_indices.shape)} and {tuple(kv_counts.shape)}")
        if isinstance(num_k_blocks, bool) or not isinstance(num_k_blocks, int) or num_k_blocks < 1:
            raise ValueError(f"num_k_blocks must be a positive int, got {num_k_blocks!r}")
        if q_block_offsets is not None:
            bq = _largest_block(q_block_offsets, "q_block_offsets", kv_indices.shape[2], kv_indices.device)
        if k_block_offsets is not None:
            bk = _largest_block(k_block_offsets, "k_block_offsets", num_k_blocks, kv_indices.device)
        key_major = None
        if backward and kv_indices.is_cuda:
            key_major = tuple(torch.ops.genaccel.block_sparse_key_major_plan(kv_indices, kv_counts, num_k_blocks))
        return BlockSparsePlan(kv_indices, kv_counts, bq, bk, num_k_blocks, q_block_offsets, k_block_offsets,
                               key_major)

    @property
    def num_q_blocks(self) -> int:
        return self.kv_indices.shape[2]

    def density(self) -> float:
        """The fraction of (query block, key block) pairs the plan computes."""
        return float(self.kv_counts.double().mean()) / self.num_k_blocks

    def op_args(self) -> dict:
        """The plan's keyword arguments of ops block_sparse_attn_fwd / block_sparse_attn_bwd."""
        km = self.key_major or (None, None)
        return dict(q_block_offsets=self.q_offsets, k_block_offsets=self.k_offsets, key_major_offsets=km[0],
                    key_major_queries=km[1])


def _largest_block(offsets: torch.Tensor, name: str, blocks: int, device: torch.device) -> int:
    """The size of the largest block of variable-size block offsets (B or 1, H or 1, blocks + 1);
    the ops check their values."""
    if not isinstance(offsets, torch.Tensor) or offsets.dtype != torch.int32 or offsets.dim() != 3:
        raise ValueError(f"{name} must be a 3-D int32 tensor (B or 1, H or 1, blocks + 1), got "
                         f"{getattr(offsets, 'dtype', type(offsets))} {tuple(getattr(offsets, 'shape', ()))}")
    if offsets.shape[-1] != blocks + 1:
        raise ValueError(f"{name} must have {blocks + 1} entries per row for {blocks} blocks, got {offsets.shape[-1]}")
    if offsets.device != device:
        raise ValueError(f"{name} must be on the device of the plan ({device}), got {offsets.device}")
    return max(1, int(offsets.diff(dim=-1).max()))
