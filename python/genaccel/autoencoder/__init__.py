"""Deep-compression autoencoders: DC-AE (image) and DC-AE-V (video) building blocks (variant `dcae`)."""

from .dcae import channel_to_space, chunk_causal_conv3d, space_to_channel

__all__ = ["channel_to_space", "chunk_causal_conv3d", "space_to_channel"]
