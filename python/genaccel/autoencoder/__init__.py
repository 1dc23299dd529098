"""Deep-compression autoencoders: DC-AE (image) and DC-AE-V (video) building blocks (variant `dcae`)."""

from .dcae import (DCAE, DCAEV, DCAEConfig, DCAEVConfig, channel_to_space, chunk_causal_conv3d, lite_mla,
                   space_to_channel)

__all__ = ["DCAE", "DCAEConfig", "DCAEV", "DCAEVConfig", "channel_to_space", "chunk_causal_conv3d", "lite_mla",
           "space_to_channel"]
