"""genaccel's nn.Modules, one import away: `genaccel.nn.SparseLinearAttention`."""

from ..attention.sla.module import SparseLinearAttention

__all__ = ["SparseLinearAttention"]
