"""Family `attention`: block-sparse attention and the sparse-attention methods built on it (SLA, Radial, SVG2)."""

from .block_sparse import BlockSparsePlan, block_mask_to_indices, block_sparse_attention, mask_density

__all__ = ["BlockSparsePlan", "block_mask_to_indices", "block_sparse_attention", "mask_density"]
