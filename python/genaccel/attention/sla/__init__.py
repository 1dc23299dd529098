"""SLA: sparse-linear attention (critical blocks exact, marginal blocks linear, negligible skipped)."""

from .block_map import sla_block_map

__all__ = ["sla_block_map"]
