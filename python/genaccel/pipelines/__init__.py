"""Pipelines built on genaccel's kernels: dcgen (moving a diffusion transformer into a deep-compression
latent space)."""
