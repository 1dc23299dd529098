"""Attention kernels: block-sparse attention (the primitive under SLA, Radial and SVG2)."""

from .block_sparse import block_mask_to_indices, block_sparse_attention

__all__ = ["block_mask_to_indices", "block_sparse_attention"]
