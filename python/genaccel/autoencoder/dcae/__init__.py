"""DC-AE (arXiv 2410.10733) and DC-AE-V (arXiv 2509.25182): the chunk-causal 3-D convolution and the
parameter-free space <-> channel shortcuts of residual autoencoding."""

from .model import DCAE, DCAEConfig
from .ops import channel_to_space, chunk_causal_conv3d, lite_mla, space_to_channel

__all__ = ["DCAE", "DCAEConfig", "channel_to_space", "chunk_causal_conv3d", "lite_mla", "space_to_channel"]
