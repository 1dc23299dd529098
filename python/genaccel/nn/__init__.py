"""genaccel's nn.Modules, one import away: `genaccel.nn.SparseLinearAttention`, `genaccel.nn.RadialAttention`."""

from ..attention.radial.module import RadialAttention
from ..attention.sla.module import SparseLinearAttention

__all__ = ["RadialAttention", "SparseLinearAttention"]
