"""SLA: sparse-linear attention (critical blocks exact, marginal blocks linear, negligible skipped)."""

from .block_map import sla_block_map
from .ops import sparse_linear_attention

__all__ = ["sla_block_map", "sparse_linear_attention"]
