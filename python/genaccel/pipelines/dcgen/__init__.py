"""DC-Gen / DC-VideoGen (arXiv 2509.25180, 2509.25182): adapt a pretrained diffusion transformer to a
deep-compression autoencoder's latent. So far: the embedder / head swap and stage 1's embedding term
(adapt.py)."""

from .adapt import Adaptation, LatentSpace, adapt_to_latent, embedding_alignment_loss

__all__ = ["Adaptation", "LatentSpace", "adapt_to_latent", "embedding_alignment_loss"]
