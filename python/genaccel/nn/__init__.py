"""genaccel's nn.Modules, one import away: `genaccel.nn.SparseLinearAttention`, `genaccel.nn.RadialAttention`, `genaccel.nn.SVG2Attention`."""

from ..attention.radial.module import RadialAttention
from ..attention.sla.module import SparseLinearAttention
from ..attention.svg2.module import SVG2Attention

__all__ = ["RadialAttention", "SVG2Attention", "SparseLinearAttention"]
