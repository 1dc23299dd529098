"""DC-AE, the deep-compression image autoencoder (arXiv 2410.10733), built from genaccel's DC-AE ops.

Parameter names follow diffusers' `AutoencoderDC`, so its safetensors state dicts load as they are
(`DCAE.load_state_dict`, or `DCAE.from_diffusers(path)` for a local folder); configs carry the same keys
(`DCAEConfig.from_diffusers_config`). `CONFIGS` holds the released configurations (the brief's table:
widths, depths, block types, norms, activations, down/up sampling, shortcuts, scaling factor).
Everything resolution-changing uses the parameter-free shortcuts (genaccel.space_to_channel /
channel_to_space) and the EfficientViT blocks' attention is genaccel.autoencoder.lite_mla.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import channel_to_space, lite_mla, space_to_channel
from .tiling import check_tiling, run_tiled


@dataclass
class DCAEConfig:
    """diffusers' AutoencoderDC config keys (a str for a per-stage field means every stage)."""

    in_channels: int = 3
    latent_channels: int = 32
    attention_head_dim: int = 32
    encoder_block_types: Sequence[str] = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
    decoder_block_types: Sequence[str] = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
    encoder_block_out_channels: Sequence[int] = (128, 256, 512, 512, 1024, 1024)
    decoder_block_out_channels: Sequence[int] = (128, 256, 512, 512, 1024, 1024)
    encoder_layers_per_block: Sequence[int] = (0, 4, 8, 2, 2, 2)
    decoder_layers_per_block: Sequence[int] = (0, 5, 10, 2, 2, 2)
    encoder_qkv_multiscales: Sequence[Sequence[int]] = ((),) * 6
    decoder_qkv_multiscales: Sequence[Sequence[int]] = ((),) * 6
    upsample_block_type: str = "pixel_shuffle"      # or "interpolate" (nearest 2x, then a conv)
    downsample_block_type: str = "pixel_unshuffle"  # or "conv" (a stride-2 conv)
    decoder_norm_types: Sequence[str] = ("batch_norm",) * 3 + ("rms_norm",) * 3
    decoder_act_fns: Sequence[str] = ("relu",) * 3 + ("silu",) * 3
    encoder_out_shortcut: bool = True
    decoder_in_shortcut: bool = True
    decoder_conv_act_fn: str = "relu"
    scaling_factor: float = 0.3189  # the diffusion model sees z * scaling_factor

    @classmethod
    def from_diffusers_config(cls, cfg: dict) -> "DCAEConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in known})

    def stage(self, name: str, i: int):
        value = getattr(self, name)
        return value if isinstance(value, str) else value[i]


def _sana(**kw) -> DCAEConfig:
    return DCAEConfig(encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
                      encoder_qkv_multiscales=((),) * 3 + ((5,),) * 3, decoder_qkv_multiscales=((),) * 3 + ((5,),) * 3,
                      upsample_block_type="interpolate", downsample_block_type="conv",
                      decoder_norm_types=("rms_norm",) * 6, decoder_act_fns=("silu",) * 6, scaling_factor=0.41407, **kw)


CONFIGS: Dict[str, DCAEConfig] = {
    "dc-ae-f32c32-in-1.0": DCAEConfig(),
    "dc-ae-f64c128-in-1.0": DCAEConfig(
        latent_channels=128, encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 4,
        decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 4,
        encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024, 2048),
        decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024, 2048),
        encoder_layers_per_block=(0, 4, 8, 2, 2, 2, 2), decoder_layers_per_block=(0, 5, 10, 2, 2, 2, 2),
        encoder_qkv_multiscales=((),) * 7, decoder_qkv_multiscales=((),) * 7,
        decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * 4, decoder_act_fns=("relu",) * 3 + ("silu",) * 4,
        scaling_factor=0.2889),
    "dc-ae-f32c32-sana-1.0": _sana(),
}


class RMSNorm2d(nn.Module):
    """RMS over the channels at each position, then an affine with a bias (eps 1e-5, float32 statistics)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.rsqrt(x.float().pow(2).mean(dim=1, keepdim=True) + self.eps)
        y = (x.float() * rms).to(x.dtype)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "rms_norm":
        return RMSNorm2d(channels)
    if kind == "batch_norm":
        return nn.BatchNorm2d(channels)  # inference: its running statistics (an affine)
    raise ValueError(f"norm type must be rms_norm or batch_norm, got {kind!r}")


def _act(kind: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "silu": nn.SiLU, "relu6": nn.ReLU6}
    if kind not in acts:
        raise ValueError(f"activation must be one of {tuple(acts)}, got {kind!r}")
    return acts[kind]()


def _channels_last_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution stored as an nn.Linear (diffusers' layout)."""
    return F.conv2d(x, layer.weight[:, :, None, None], layer.bias)


class ResBlock(nn.Module):
    """x + norm(conv2(act(conv1(x)))); conv2 has no bias, there is no pre-norm."""

    def __init__(self, channels: int, norm: str, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.nonlinearity = _act(act)
        self.norm = _norm(norm, channels)

    def forward(self, x):
        return x + self.norm(self.conv2(self.nonlinearity(self.conv1(x))))


class MultiscaleProjection(nn.Module):
    """DC-AE's multi-scale aggregation of qkv: a depthwise k x k conv, then a 1x1 conv grouped per
    32-channel q / k / v block of each head."""

    def __init__(self, inner: int, heads: int, kernel: int):
        super().__init__()
        self.proj_in = nn.Conv2d(3 * inner, 3 * inner, kernel, padding=kernel // 2, groups=3 * inner, bias=False)
        self.proj_out = nn.Conv2d(3 * inner, 3 * inner, 1, groups=3 * heads, bias=False)

    def forward(self, x):
        return self.proj_out(self.proj_in(x))


class LiteMLA(nn.Module):
    """x + norm(proj([attention(qkv), attention(aggregated qkv), ...])): ReLU linear attention with
    heads of head_dim channels (genaccel.autoencoder.lite_mla), run in float32 as the original does."""

    def __init__(self, channels: int, head_dim: int, norm: str, scales: Sequence[int]):
        super().__init__()
        self.head_dim = head_dim
        heads = channels // head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(channels, inner, bias=False)
        self.to_v = nn.Linear(channels, inner, bias=False)
        self.to_qkv_multiscale = nn.ModuleList(MultiscaleProjection(inner, heads, k) for k in scales)
        self.to_out = nn.Linear(inner * (1 + len(scales)), channels, bias=False)
        self.norm_out = _norm(norm, channels)

    def forward(self, x):
        # [all q | all k | all v] concatenated is the fused qkv conv's per-head interleaved layout: head h
        # owns channels [3 d h, 3 d h + 3 d) of it, q, k and v of d channels each.
        qkv = torch.cat([_channels_last_linear(p, x) for p in (self.to_q, self.to_k, self.to_v)], dim=1)
        qkv = torch.cat([qkv] + [m(qkv) for m in self.to_qkv_multiscale], dim=1)
        out = lite_mla(qkv, self.head_dim).to(x.dtype)
        return x + self.norm_out(_channels_last_linear(self.to_out, out))


class GLUMBConv(nn.Module):
    """x + norm(point(a * SiLU(gate))), [a | gate] = depthwise3x3(SiLU(conv1x1(x))), expansion 4."""

    def __init__(self, channels: int, expand: int = 4):
        super().__init__()
        hidden = expand * channels
        self.conv_inverted = nn.Conv2d(channels, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, 1, 1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, channels, 1, bias=False)
        self.norm = RMSNorm2d(channels)

    def forward(self, x):
        h = self.conv_depth(F.silu(self.conv_inverted(x)))
        a, gate = h.chunk(2, dim=1)
        return x + self.norm(self.conv_point(a * F.silu(gate)))


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, norm: str, scales: Sequence[int]):
        super().__init__()
        self.attn = LiteMLA(channels, head_dim, norm, scales)
        self.conv_out = GLUMBConv(channels)

    def forward(self, x):
        return self.conv_out(self.attn(x))


class Downsample(nn.Module):
    """2x down: a conv then pixel_unshuffle ("pixel_unshuffle") or a stride-2 conv ("conv"), plus the
    averaging shortcut (space_to_channel)."""

    def __init__(self, cin: int, cout: int, kind: str, shortcut: bool):
        super().__init__()
        self.unshuffle = kind == "pixel_unshuffle"
        self.cout, self.shortcut = cout, shortcut
        self.conv = nn.Conv2d(cin, cout // 4 if self.unshuffle else cout, 3, 1 if self.unshuffle else 2, 1)

    def forward(self, x):
        y = self.conv(x)
        if self.unshuffle:
            y = space_to_channel(y, 2, out_channels=self.cout)
        return y + space_to_channel(x, 2, out_channels=self.cout) if self.shortcut else y


class Upsample(nn.Module):
    """2x up: a conv then pixel_shuffle ("pixel_shuffle") or nearest 2x then a conv ("interpolate"),
    plus the duplicating shortcut (channel_to_space)."""

    def __init__(self, cin: int, cout: int, kind: str, shortcut: bool):
        super().__init__()
        self.interpolate = kind == "interpolate"
        self.cout, self.shortcut = cout, shortcut
        self.conv = nn.Conv2d(cin, cout if self.interpolate else cout * 4, 3, 1, 1)

    def forward(self, x):
        if self.interpolate:
            y = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        else:
            y = channel_to_space(self.conv(x), 2, out_channels=self.cout)
        return y + channel_to_space(x, 2, out_channels=self.cout) if self.shortcut else y


def _block(cfg: DCAEConfig, kind: str, channels: int, norm: str, act: str, scales) -> nn.Module:
    if kind == "ResBlock":
        return ResBlock(channels, norm, act)
    if kind == "EfficientViTBlock":
        return EfficientViTBlock(channels, cfg.attention_head_dim, norm, tuple(scales))
    raise ValueError(f"block type must be ResBlock or EfficientViTBlock, got {kind!r}")


class Encoder(nn.Module):
    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        widths, depths = cfg.encoder_block_out_channels, cfg.encoder_layers_per_block
        first = widths[0] if depths[0] > 0 else widths[1]
        self.conv_in = (nn.Conv2d(cfg.in_channels, first, 3, 1, 1) if depths[0] > 0
                        else Downsample(cfg.in_channels, first, cfg.downsample_block_type, shortcut=False))
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = [_block(cfg, cfg.stage("encoder_block_types", i), width, "rms_norm", "silu",
                             cfg.encoder_qkv_multiscales[i]) for _ in range(depth)]
            if i < len(widths) - 1 and depth > 0:
                blocks.append(Downsample(width, widths[i + 1], cfg.downsample_block_type, shortcut=True))
            stages.append(nn.Sequential(*blocks))
        self.down_blocks = nn.ModuleList(stages)
        self.conv_out = nn.Conv2d(widths[-1], cfg.latent_channels, 3, 1, 1)
        self.out_shortcut, self.latent = cfg.encoder_out_shortcut, cfg.latent_channels

    def forward(self, x):
        x = self.conv_in(x)
        for stage in self.down_blocks:
            x = stage(x)
        z = self.conv_out(x)
        return z + space_to_channel(x, 1, out_channels=self.latent) if self.out_shortcut else z


class Decoder(nn.Module):
    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        widths, depths = cfg.decoder_block_out_channels, cfg.decoder_layers_per_block
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[-1], 3, 1, 1)
        self.in_shortcut, self.width = cfg.decoder_in_shortcut, widths[-1]
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            if i < len(widths) - 1 and depth > 0:
                blocks.append(Upsample(widths[i + 1], width, cfg.upsample_block_type, shortcut=True))
            blocks += [_block(cfg, cfg.stage("decoder_block_types", i), width, cfg.stage("decoder_norm_types", i),
                              cfg.stage("decoder_act_fns", i), cfg.decoder_qkv_multiscales[i]) for _ in range(depth)]
            stages.append(nn.Sequential(*blocks))
        self.up_blocks = nn.ModuleList(stages)
        last = widths[0] if depths[0] > 0 else widths[1]
        self.norm_out = RMSNorm2d(last)
        self.conv_act = _act(cfg.decoder_conv_act_fn)
        self.conv_out = (nn.Conv2d(last, cfg.in_channels, 3, 1, 1) if depths[0] > 0
                         else Upsample(last, cfg.in_channels, cfg.upsample_block_type, shortcut=False))

    def forward(self, z):
        x = self.conv_in(z)
        if self.in_shortcut:
            x = x + channel_to_space(z, 1, out_channels=self.width)
        for stage in reversed(self.up_blocks):
            x = stage(x)
        return self.conv_out(self.conv_act(self.norm_out(x)))


class DCAE(nn.Module):
    """encode(x) -> z (raw latent; the diffusion model sees z * config.scaling_factor), decode(z) -> x.
    Pixels in [-1, 1], NCHW; H and W multiples of the spatial compression 2^(stages - 1)."""

    def __init__(self, config: DCAEConfig | str = "dc-ae-f32c32-in-1.0"):
        super().__init__()
        if isinstance(config, str):
            if config not in CONFIGS:
                raise ValueError(f"config must be a DCAEConfig or one of {tuple(CONFIGS)}, got {config!r}")
            config = CONFIGS[config]
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.config.encoder_block_out_channels) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        f = self.spatial_compression
        if x.dim() != 4 or x.shape[1] != self.config.in_channels or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"x must be (B, {self.config.in_channels}, H, W) with H, W multiples of {f}, "
                             f"got {tuple(x.shape)}")
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"z must be (B, {self.config.latent_channels}, h, w), got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def encode_tiled(self, x: torch.Tensor, tile: int = 512, overlap: int = 64) -> torch.Tensor:
        """encode() over overlapping tile x tile pixel crops, latents blended (tiling.py: not identical
        to encode(); the EfficientViT stages see only their tile)."""
        f = self.spatial_compression
        check_tiling(tile, overlap, f)
        return run_tiled(self.encode, x, tile, overlap, 1, f)

    def decode_tiled(self, z: torch.Tensor, tile: int = 512, overlap: int = 64) -> torch.Tensor:
        """decode() over overlapping latent crops of tile x tile output pixels, blended in pixel space."""
        f = self.spatial_compression
        check_tiling(tile, overlap, f)
        return run_tiled(self.decode, z, tile // f, overlap // f, f, 1)

    @classmethod
    def from_diffusers(cls, path: str, dtype: Optional[torch.dtype] = None) -> "DCAE":
        """A local diffusers AutoencoderDC folder (config.json + diffusion_pytorch_model.safetensors)."""
        from safetensors.torch import load_file

        with open(os.path.join(path, "config.json")) as f:
            model = cls(DCAEConfig.from_diffusers_config(json.load(f)))
        model.load_state_dict(load_file(os.path.join(path, "diffusion_pytorch_model.safetensors")))
        return model.to(dtype) if dtype is not None else model

    @classmethod
    def from_original(cls, path: str, config: DCAEConfig | str | None = None,
                      dtype: Optional[torch.dtype] = None) -> "DCAE":
        """An original DC-AE checkpoint (efficientvit / DC-Gen names: a model.safetensors folder with
        config.json {"model_name": ...}, or a .pt/.safetensors file with `config` given; checkpoint.py)."""
        from .checkpoint import from_original, read_state_dict, resolve_config

        model = cls(resolve_config(path, config))
        model.load_state_dict(from_original(model, read_state_dict(path)))
        return model.to(dtype) if dtype is not None else model

    def original_state_dict(self) -> Dict[str, torch.Tensor]:
        """The weights in the original checkpoint layout (from_original reads them back)."""
        from .checkpoint import to_original

        return to_original(self)

    def diffusers_config(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()}
