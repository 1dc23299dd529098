"""DC-AE-V, the chunk-causal video autoencoder of DC-VideoGen (arXiv 2509.25182), built from genaccel's
DC-AE ops: every convolution is genaccel.chunk_causal_conv3d, every resolution change adds the
parameter-free shortcut, and there is no attention, so a frame's latent depends on its chunk and the
chunks before it only.

`DCAEV.encode(video)` / `decode(latent)` run the whole sequence; `encode_stream(frames)` /
`decode_stream(latents)` take iterables of tiles (whole chunks: 40 frames / 10 latent frames for the
released config) and carry each convolution's halo from tile to tile, so memory is constant in the
video's length and the result equals the full pass exactly. `encode_tiled` / `decode_tiled` cut large
frames into overlapping spatial tiles (tiling.py); `encode_stream(..., tile=N)` combines both, each
spatial crop carrying its own halo caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from .ops import channel_to_space, chunk_causal_conv3d, space_to_channel
from .tiling import check_tiling, run_tiled


@dataclass
class DCAEVConfig:
    in_channels: int = 3
    latent_channels: int = 32
    block_out_channels: Sequence[int] = (128, 256, 512, 512, 1024, 1024, 1024)
    layers_per_block: Sequence[int] = (0, 5, 10, 4, 4, 4, 4)  # encoder and decoder alike
    temporal_down_stage: int = 5     # the 4x temporal (un)shuffle comes after this stage
    temporal_factor: int = 4
    chunk: int = 40                  # frames per chunk at the pixel frame rate
    latent_chunk: int = 10           # after the temporal down
    scaling_factor: float = 0.7241   # the T2V pipeline's

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.block_out_channels) - 2)  # the last stage keeps the resolution


CONFIGS: Dict[str, DCAEVConfig] = {"dc-ae-v-f32t4c32-1.0": DCAEVConfig()}


class ChunkCausalConv3d(nn.Module):
    """A 3x3x3 chunk-causal convolution (genaccel.chunk_causal_conv3d). While `streaming`, the halo
    (the last input frame) is kept in `cache` for the next call."""

    def __init__(self, cin: int, cout: int, chunk: int, bias: bool = True):
        super().__init__()
        self.chunk = chunk
        self.weight = nn.Parameter(torch.empty(cout, cin, 3, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.streaming, self.cache = False, None

    def forward(self, x):
        y, cache = chunk_causal_conv3d(x, self.weight, self.bias, chunk_size=self.chunk,
                                       cache=self.cache if self.streaming else None)
        if self.streaming:
            self.cache = cache
        return y


class RMSNorm3d(nn.Module):
    """RMS over the channels at each (t, h, w), then an affine with a bias (eps 1e-5, float32 statistics)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        y = (x.float() * torch.rsqrt(x.float().pow(2).mean(dim=1, keepdim=True) + self.eps)).to(x.dtype)
        return y * self.weight[:, None, None, None] + self.bias[:, None, None, None]


class ResBlock3d(nn.Module):
    """x + norm(conv2(SiLU(conv1(x)))), both convs chunk-causal; conv2 has no bias."""

    def __init__(self, channels: int, chunk: int):
        super().__init__()
        self.conv1 = ChunkCausalConv3d(channels, channels, chunk)
        self.conv2 = ChunkCausalConv3d(channels, channels, chunk, bias=False)
        self.norm = RMSNorm3d(channels)

    def forward(self, x):
        return x + self.norm(self.conv2(torch.nn.functional.silu(self.conv1(x))))


class Down3d(nn.Module):
    """Spatial 2x (r = 2, rt = 1) or temporal (r = 1, rt = 4) down: a chunk-causal conv to cout / (rt r r)
    channels, then the (un)shuffle, plus the averaging shortcut when `shortcut`."""

    def __init__(self, cin: int, cout: int, r: int, rt: int, chunk: int, shortcut: bool = True):
        super().__init__()
        self.r, self.rt, self.cout, self.shortcut = r, rt, cout, shortcut
        self.conv = ChunkCausalConv3d(cin, cout // (r * r * rt), chunk)

    def forward(self, x):
        y = space_to_channel(self.conv(x), self.r, self.rt, out_channels=self.cout)
        return y + space_to_channel(x, self.r, self.rt, out_channels=self.cout) if self.shortcut else y


class Up3d(nn.Module):
    """The mirror of Down3d: a chunk-causal conv to cout (rt r r) channels, the shuffle, plus the
    duplicating shortcut."""

    def __init__(self, cin: int, cout: int, r: int, rt: int, chunk: int, shortcut: bool = True):
        super().__init__()
        self.r, self.rt, self.cout, self.shortcut = r, rt, cout, shortcut
        self.conv = ChunkCausalConv3d(cin, cout * r * r * rt, chunk)

    def forward(self, x):
        y = channel_to_space(self.conv(x), self.r, self.rt, out_channels=self.cout)
        return y + channel_to_space(x, self.r, self.rt, out_channels=self.cout) if self.shortcut else y


def _stage_chunk(cfg: DCAEVConfig, i: int) -> int:
    return cfg.chunk if i <= cfg.temporal_down_stage else cfg.latent_chunk


class EncoderV(nn.Module):
    def __init__(self, cfg: DCAEVConfig):
        super().__init__()
        widths, depths = cfg.block_out_channels, cfg.layers_per_block
        self.conv_in = Down3d(cfg.in_channels, widths[1], 2, 1, cfg.chunk, shortcut=False)
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            chunk = _stage_chunk(cfg, i)
            blocks = [ResBlock3d(width, chunk) for _ in range(depth)]
            if i == cfg.temporal_down_stage:
                blocks.append(Down3d(width, widths[i + 1], 1, cfg.temporal_factor, cfg.chunk))
            elif i < len(widths) - 1 and depth > 0:
                blocks.append(Down3d(width, widths[i + 1], 2, 1, chunk))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.conv_out = ChunkCausalConv3d(widths[-1], cfg.latent_channels, cfg.latent_chunk)

    def forward(self, x):
        x = self.conv_in(x)
        for stage in self.stages:
            x = stage(x)
        return self.conv_out(x)


class DecoderV(nn.Module):
    def __init__(self, cfg: DCAEVConfig):
        super().__init__()
        widths, depths = cfg.block_out_channels, cfg.layers_per_block
        self.conv_in = ChunkCausalConv3d(cfg.latent_channels, widths[-1], cfg.latent_chunk)
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            chunk = _stage_chunk(cfg, i)
            blocks = []
            if i == cfg.temporal_down_stage:  # runs at the latent rate, so its conv takes the latent chunk
                blocks.append(Up3d(widths[i + 1], width, 1, cfg.temporal_factor, cfg.latent_chunk))
            elif i < len(widths) - 1 and depth > 0:
                blocks.append(Up3d(widths[i + 1], width, 2, 1, chunk))
            blocks += [ResBlock3d(width, chunk) for _ in range(depth)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.norm_out = RMSNorm3d(widths[1])
        self.conv_out = Up3d(widths[1], cfg.in_channels, 2, 1, cfg.chunk, shortcut=False)

    def forward(self, z):
        x = self.conv_in(z)
        for stage in reversed(self.stages):
            x = stage(x)
        return self.conv_out(torch.nn.functional.silu(self.norm_out(x)))


class DCAEV(nn.Module):
    """encode(video (B, 3, T, H, W) in [-1, 1]) -> latent (B, c, T / 4, H / f, W / f); decode back.
    T must be a multiple of the chunk (40 for the released config) and H, W of f (32): a clear error
    otherwise (the original silently runs a bidirectional conv when T is not)."""

    def __init__(self, config: DCAEVConfig | str = "dc-ae-v-f32t4c32-1.0"):
        super().__init__()
        if isinstance(config, str):
            if config not in CONFIGS:
                raise ValueError(f"config must be a DCAEVConfig or one of {tuple(CONFIGS)}, got {config!r}")
            config = CONFIGS[config]
        if config.chunk % config.temporal_factor or config.chunk // config.temporal_factor != config.latent_chunk:
            raise ValueError(f"chunk {config.chunk} must be temporal_factor x latent_chunk = "
                             f"{config.temporal_factor} x {config.latent_chunk}")
        self.config = config
        self.encoder = EncoderV(config)
        self.decoder = DecoderV(config)

    def _check(self, x: torch.Tensor, what: str, channels: int, chunk: int, f: int) -> None:
        if x.dim() != 5 or x.shape[1] != channels or x.shape[2] % chunk or x.shape[3] % f or x.shape[4] % f:
            raise ValueError(f"{what} must be (B, {channels}, T, H, W) with T a multiple of {chunk} and H, W of {f}, "
                             f"got {tuple(x.shape)}")

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        c = self.config
        self._check(video, "video", c.in_channels, c.chunk, c.spatial_compression)
        return self.encoder(video)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        c = self.config
        self._check(latent, "latent", c.latent_channels, c.latent_chunk, 1)
        return self.decoder(latent)

    def _stream(self, part: nn.Module, tiles: Iterable[torch.Tensor], step, tiling=None) -> Iterator[torch.Tensor]:
        """step on each tile with every conv's halo carried over. With tiling = (tile, overlap, num,
        den), each tile is also cut into run_tiled's spatial crops, and crop k of every tile (the same
        region each time) gets its own set of halos."""
        convs = [m for m in part.modules() if isinstance(m, ChunkCausalConv3d)]
        for m in convs:
            m.streaming, m.cache = True, None
        halos: Dict[int, list] = {}  # crop index -> the convs' caches after that crop's last tile

        def crop_step(crop: torch.Tensor, k: int) -> torch.Tensor:
            for m, cache in zip(convs, halos.get(k, [None] * len(convs))):
                m.cache = cache
            out = step(crop)
            halos[k] = [m.cache for m in convs]
            return out

        try:
            for tile in tiles:
                if tiling is None:
                    yield step(tile)
                else:
                    count = iter(range(1 << 62))
                    yield run_tiled(lambda crop: crop_step(crop, next(count)), tile, *tiling)
        finally:
            for m in convs:
                m.streaming, m.cache = False, None

    def _tiling(self, tile: int, overlap: int, encode: bool):
        """run_tiled's (tile, overlap, scale) for encode or decode, in that side's units."""
        f = self.config.spatial_compression
        check_tiling(tile, overlap, f)
        return (tile, overlap, 1, f) if encode else (tile // f, overlap // f, f, 1)

    def encode_stream(self, tiles: Iterable[torch.Tensor], tile: int = 0, overlap: int = 128) -> Iterator[torch.Tensor]:
        """Latent tiles of video tiles (each a whole number of chunks), equal to encode() of the whole.
        tile > 0 also cuts every frame into encode_tiled's crops, each with its own halos: equal to
        encode_tiled() of the whole, with activations bounded by one crop of one tile (the halos hold
        one frame of every conv's input at full frame size)."""
        return self._stream(self.encoder, tiles, self.encode, self._tiling(tile, overlap, True) if tile else None)

    def decode_stream(self, tiles: Iterable[torch.Tensor], tile: int = 0, overlap: int = 128) -> Iterator[torch.Tensor]:
        """Video tiles of latent tiles (each a whole number of latent chunks), equal to decode() of the
        whole; tile > 0 as in encode_stream (equal to decode_tiled() of the whole)."""
        return self._stream(self.decoder, tiles, self.decode, self._tiling(tile, overlap, False) if tile else None)

    def encode_tiled(self, video: torch.Tensor, tile: int = 512, overlap: int = 128) -> torch.Tensor:
        """encode() over overlapping tile x tile pixel crops of every frame, latents blended (tiling.py).
        DC-AE-V's receptive field is finite, so a wide overlap leaves only the blend ramp's error."""
        return run_tiled(self.encode, video, *self._tiling(tile, overlap, True))

    def decode_tiled(self, latent: torch.Tensor, tile: int = 512, overlap: int = 128) -> torch.Tensor:
        """decode() over overlapping latent crops of tile x tile output pixels, blended in pixel space."""
        return run_tiled(self.decode, latent, *self._tiling(tile, overlap, False))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(video))

    @classmethod
    def from_original(cls, path: str, config: DCAEVConfig | str | None = None,
                      dtype: Optional[torch.dtype] = None) -> "DCAEV":
        """An original DC-AE-V checkpoint (DC-Gen's FSDP .pt, EMA weights preferred, or a safetensors
        file; checkpoint.py). `config` defaults to the folder's config.json model_name."""
        from .checkpoint import from_original, read_state_dict, resolve_config

        model = cls(resolve_config(path, config))
        model.load_state_dict(from_original(model, read_state_dict(path)))
        return model.to(dtype) if dtype is not None else model

    def original_state_dict(self) -> Dict[str, torch.Tensor]:
        """The weights in the original checkpoint layout (from_original reads them back)."""
        from .checkpoint import to_original

        return to_original(self)
