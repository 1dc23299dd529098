"""Block-sparse attention: FlashAttention-style attention of each query block over a planned list of
key blocks (the primitive under SLA, Radial and SVG2)."""

from .ops import ATTENTION_BACKENDS, attention_delta, block_sparse_attention
from .plan import BlockSparsePlan, block_mask_to_indices, mask_density

__all__ = ["ATTENTION_BACKENDS", "BlockSparsePlan", "attention_delta", "block_mask_to_indices", "block_sparse_attention",
           "mask_density"]
