"""DC-AE (arXiv 2410.10733) and DC-AE-V (arXiv 2509.25182): the chunk-causal 3-D convolution, the
parameter-free space <-> channel shortcuts of residual autoencoding, LiteMLA, and the image (DCAE) and
video (DCAEV) models built from them."""

from .model import DCAE, DCAEConfig
from .video import DCAEV, DCAEVConfig
from .ops import channel_to_space, chunk_causal_conv3d, lite_mla, space_to_channel

__all__ = ["DCAE", "DCAEConfig", "DCAEV", "DCAEVConfig", "channel_to_space", "chunk_causal_conv3d", "lite_mla",
           "space_to_channel"]
