"""Moving a diffusion transformer from its own latent space into a deep-compression one (DC-Gen, arXiv
2509.25180; DC-VideoGen's AE-Adapt-V, arXiv 2509.25182): the latent input embedding (patch embedder)
and the output head are replaced by ones for the target latent's channels and patch size, and every
other weight stays as it is. Training the new embedder and head (stage 1, embedding alignment) and
LoRA fine-tuning (stage 2) build on this.

A `LatentSpace` says what an autoencoder's latent is (channels, spatial and temporal compression);
`LatentSpace.of(ae)` reads it from our DCAE / DCAEV or diffusers' AutoencoderDC, AutoencoderKL and
AutoencoderKLWan. Transformers are recognised by the modules that hold the embedder and head
(`_ADAPTERS`): diffusers' WanTransformer3DModel (video) and SanaTransformer2DModel (image, without a
positional embedding: interpolation_scale None, its default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn


@dataclass(frozen=True)
class LatentSpace:
    """channels x (frames / temporal) x (H / spatial) x (W / spatial) for a video of frames x H x W."""

    channels: int
    spatial: int
    temporal: int = 1

    @classmethod
    def of(cls, ae) -> "LatentSpace":
        if isinstance(ae, LatentSpace):
            return ae
        from ...autoencoder.dcae import DCAE, DCAEV

        if isinstance(ae, DCAEV):
            c = ae.config
            return cls(c.latent_channels, c.spatial_compression, c.temporal_factor)
        if isinstance(ae, DCAE):
            return cls(ae.config.latent_channels, ae.spatial_compression)
        name, cfg = type(ae).__name__, getattr(ae, "config", None)
        if name == "AutoencoderDC":
            return cls(cfg.latent_channels, 2 ** (len(cfg.encoder_block_out_channels) - 1))
        if name == "AutoencoderKLWan":
            return cls(cfg.z_dim, 2 ** len(cfg.temperal_downsample), 2 ** sum(cfg.temperal_downsample))
        if name == "AutoencoderKL":
            return cls(cfg.latent_channels, 2 ** (len(cfg.block_out_channels) - 1))
        raise TypeError(f"ae must be a LatentSpace, a genaccel DCAE / DCAEV or a diffusers AutoencoderDC / "
                        f"AutoencoderKL / AutoencoderKLWan, got {name}")


@dataclass(frozen=True)
class _Adapter:
    """Where a transformer class keeps its patch embedder (a conv with kernel = stride = patch) and
    its output head (a linear to out_channels x prod(patch)), and how many patch dims it has."""

    embedder: str  # attribute path of the conv
    head: str      # attribute path of the linear
    dims: int      # 3 for video (t, h, w), 2 for images


_ADAPTERS = {
    "WanTransformer3DModel": _Adapter("patch_embedding", "proj_out", 3),
    "SanaTransformer2DModel": _Adapter("patch_embed.proj", "proj_out", 2),
}


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(module, parent) if parent else module, name, value)


def _adapter(transformer: nn.Module) -> _Adapter:
    name = type(transformer).__name__
    if name not in _ADAPTERS:
        raise TypeError(f"transformer: no recognisable patch embedder in a {name}; supported: {sorted(_ADAPTERS)}")
    return _ADAPTERS[name]


def _patch_tuple(patch, dims: int) -> Tuple[int, ...]:
    patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch,) * dims
    if len(patch) != dims or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in patch):
        raise ValueError(f"patch_size must be a positive int or {dims} of them, got {patch!r}")
    return patch


def current_patch(transformer: nn.Module) -> Tuple[int, ...]:
    a = _adapter(transformer)
    return _patch_tuple(transformer.config.patch_size, a.dims)


@dataclass(frozen=True)
class Adaptation:
    """What adapt_to_latent changed: the new modules' attribute paths (stage 1 trains only these), the
    latent spaces and patch sizes, and the token counts they imply."""

    embedder: str
    head: str
    base: LatentSpace
    target: LatentSpace
    base_patch: Tuple[int, ...]
    target_patch: Tuple[int, ...]
    copied: bool  # the new modules started as copies of the old (same latent and patch)
    # the replaced modules, frozen, outside the transformer: stage 1 aligns the new ones against them
    old_embedder: nn.Module = field(repr=False, compare=False, default=None)
    old_head: nn.Module = field(repr=False, compare=False, default=None)

    def tokens(self, frames: int, height: int, width: int) -> Tuple[int, int]:
        """(base, target) token counts for a frames x height x width video (frames = 1: an image)."""

        def count(space: LatentSpace, patch: Tuple[int, ...]) -> int:
            sizes = [height // space.spatial // patch[-2], width // space.spatial // patch[-1]]
            if len(patch) == 3:
                sizes.append(math.ceil(frames / space.temporal) // patch[0] if frames > 1 else 1)
            return math.prod(sizes)

        return count(self.base, self.base_patch), count(self.target, self.target_patch)

    def parameters(self, transformer: nn.Module):
        """The new embedder's and head's parameters (what stage 1 trains)."""
        return [*_get(transformer, self.embedder).parameters(), *_get(transformer, self.head).parameters()]


def adapt_to_latent(transformer: nn.Module, base_ae, target_ae, patch_size: Union[int, Sequence[int], None] = 1,
                    seed: int = 0) -> Adaptation:
    """Replace `transformer`'s patch embedder and output head (in place) with ones for target_ae's latent
    and `patch_size` (default 1: DC-Gen's 1x1 patches; None keeps the current one; for video the temporal
    patch stays the base's). The transformer's config follows (in/out channels, patch size), so its own
    forward patchifies and unpatchifies the new latent. When the latent and the patch are unchanged the
    new modules start as exact copies (the adapted model then equals the base model); otherwise they
    are freshly initialised from `seed`, to be trained by stage 1."""
    a = _adapter(transformer)
    base, target = LatentSpace.of(base_ae), LatentSpace.of(target_ae)
    old_patch = current_patch(transformer)
    if patch_size is None:
        new_patch = old_patch
    else:
        new_patch = _patch_tuple(patch_size, a.dims - (1 if a.dims == 3 else 0))
        new_patch = (old_patch[0], *new_patch) if a.dims == 3 else new_patch
    cfg = transformer.config
    if cfg.in_channels != base.channels:
        raise ValueError(f"base_ae: the transformer takes {cfg.in_channels} latent channels, base_ae has {base.channels}")
    old_embed, old_head = _get(transformer, a.embedder), _get(transformer, a.head)
    inner = old_embed.out_channels
    conv = nn.Conv3d if a.dims == 3 else nn.Conv2d
    param = old_embed.weight
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        embed = conv(target.channels, inner, kernel_size=new_patch, stride=new_patch, bias=old_embed.bias is not None)
        head = nn.Linear(old_head.in_features, target.channels * math.prod(new_patch), bias=old_head.bias is not None)
    same = base == target and new_patch == old_patch
    if same:
        embed.load_state_dict(old_embed.state_dict())
        head.load_state_dict(old_head.state_dict())
    _set(transformer, a.embedder, embed.to(device=param.device, dtype=param.dtype))
    _set(transformer, a.head, head.to(device=old_head.weight.device, dtype=old_head.weight.dtype))
    # the forward reads these: patchify / unpatchify shapes and the rotary grid
    stored_patch = list(new_patch) if a.dims == 3 else new_patch[0]
    if a.dims == 2 and new_patch[0] != new_patch[1]:
        raise ValueError(f"patch_size: {type(transformer).__name__} takes square patches, got {new_patch}")
    transformer.register_to_config(in_channels=target.channels, out_channels=target.channels, patch_size=stored_patch)
    for m in transformer.modules():
        if m is not transformer and hasattr(m, "patch_size") and type(m).__name__ in ("WanRotaryPosEmbed", "PatchEmbed"):
            m.patch_size = tuple(new_patch) if a.dims == 3 else new_patch[0]
    for m in (old_embed, old_head):
        m.requires_grad_(False)
    return Adaptation(a.embedder, a.head, base, target, old_patch, tuple(new_patch), same, old_embed, old_head)


def embedding_alignment_loss(adaptation: Adaptation, transformer: nn.Module, base_latent: torch.Tensor,
                             target_latent: torch.Tensor) -> torch.Tensor:
    """Stage 1's embedding term: the new embedder's tokens of the target latent against the old (frozen)
    embedder's tokens of the base latent of the same images / videos, the old token grid average-pooled
    to the new one (each new token covers the pixels of that many old tokens), mean squared error
    normalised by the old tokens' mean square, so 1.0 is "as far as zero tokens"."""
    new = _get(transformer, adaptation.embedder)(target_latent)
    with torch.no_grad():
        old = adaptation.old_embedder(base_latent)
        pool = nn.functional.adaptive_avg_pool3d if old.dim() == 5 else nn.functional.adaptive_avg_pool2d
        old = pool(old.float(), new.shape[2:])
    return (new.float() - old).pow(2).mean() / old.pow(2).mean().clamp_min(1e-12)
