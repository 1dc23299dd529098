"""Radial attention (arXiv 2506.19852): a static spatio-temporal block mask whose window shrinks
with frame distance, run by the block-sparse kernels."""

from .module import RadialAttention
from .plan import radial_block_mask

__all__ = ["RadialAttention", "radial_block_mask"]
