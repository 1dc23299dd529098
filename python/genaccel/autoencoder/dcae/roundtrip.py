"""`genaccel ae encode | decode | roundtrip`: a DC-AE-V (or a DC-AE, frame by frame) on a real video file
or a folder of frames, streamed tile by tile so memory stays flat in the video's length.

Frames are padded (edge pixels repeated) up to a multiple of the spatial compression and the last
temporal tile is filled by repeating the last frame (as the original's reconstruct_video does); both are
cropped off again after decoding. Latents go to a safetensors file whose metadata records what the
decoder needs to undo that (frames, height, width, fps). PSNR and SSIM compare the 8-bit frames a
viewer would see (input vs decoded), accumulated frame by frame.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...benchmarks.timing import Progress
from ..metrics import psnr_from_mse, ssim
from ..video_io import probe, read_frames, write_frames
from .checkpoint import load
from .model import DCAE
from .video import DCAEV


class VideoCodec:
    """A DCAEV streamed over temporal tiles of whole chunks, or a DCAE run on batches of frames (each
    frame is its own latent frame); `tile` > 0 adds spatial tiling with `overlap` pixels (default a
    quarter of the tile), for a DCAEV with per-crop halo caches (still streamed)."""

    def __init__(self, model: nn.Module, tile: int = 0, overlap: Optional[int] = None, frames_per_batch: int = 4):
        self.model, self.tile = model.eval(), tile
        self.video = isinstance(model, DCAEV)
        cfg = model.config
        if self.video:
            self.f, self.frames_per_tile, self.latents_per_tile = cfg.spatial_compression, cfg.chunk, cfg.latent_chunk
        elif isinstance(model, DCAE):
            self.f, self.frames_per_tile = model.spatial_compression, frames_per_batch
            self.latents_per_tile = frames_per_batch
        else:
            raise TypeError(f"model must be a DCAE or a DCAEV, got {type(model).__name__}")
        self.overlap = overlap if overlap is not None else tile // 4 // self.f * self.f
        self.latent_channels = cfg.latent_channels
        self.dtype = next(model.parameters()).dtype

    def encode(self, tiles: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """(1, 3, T, H, W) video tiles -> (1, C, t, h, w) latent tiles."""
        tiles = (x.to(self.dtype) for x in tiles)
        if self.video:
            yield from (z.float() for z in self.model.encode_stream(tiles, self.tile, self.overlap))
            return
        enc = (lambda x: self.model.encode_tiled(x, self.tile, self.overlap)) if self.tile else self.model.encode
        for x in tiles:
            yield enc(x[0].transpose(0, 1)).transpose(0, 1)[None].float()

    def decode(self, latents: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        latents = (z.to(self.dtype) for z in latents)
        if self.video:
            yield from (x.float() for x in self.model.decode_stream(latents, self.tile, self.overlap))
            return
        dec = (lambda z: self.model.decode_tiled(z, self.tile, self.overlap)) if self.tile else self.model.decode
        for z in latents:
            yield dec(z[0].transpose(0, 1)).transpose(0, 1)[None].float()


def video_tiles(frames: Iterable[np.ndarray], per_tile: int, f: int) -> Iterator[Tuple[torch.Tensor, int]]:
    """(1, 3, per_tile, H', W') tiles in [-1, 1], H' and W' padded up to multiples of f, and the number
    of real frames in each (the last tile repeats its last frame)."""
    it = iter(frames)
    while True:
        group = list(itertools.islice(it, per_tile))
        if not group:
            return
        if any(g.shape != group[0].shape for g in group):
            raise ValueError(f"input frames must all have one size, got {group[0].shape} and others")
        real = len(group)
        group += [group[-1]] * (per_tile - real)
        x = torch.from_numpy(np.stack(group)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % f, -w % f
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")
        yield x, real


def to_frames(video: torch.Tensor, frames: int, height: int, width: int) -> Iterator[np.ndarray]:
    """The first `frames` frames of a (1, 3, T, H', W') tile in [-1, 1], cropped, as uint8 RGB."""
    x = ((video[0, :, :frames, :height, :width].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    for t in range(x.shape[1]):
        yield x[:, t].permute(1, 2, 0).contiguous().numpy()


def _first_frame(path: str) -> Tuple[Iterator[np.ndarray], int, int]:
    frames = read_frames(path)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"input {path!r} has no frames")
    return itertools.chain([first], frames), first.shape[0], first.shape[1]


def encode_file(codec: VideoCodec, path: str, out: str, progress: bool = True) -> dict:
    count, fps = probe(path)
    frames, height, width = _first_frame(path)
    bar = Progress(count, "encode", enabled=None if progress else False)
    latents, n = [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        tiles = video_tiles(frames, codec.frames_per_tile, codec.f)
        sizes = []

        def counted():
            for x, real in tiles:
                sizes.append(real)
                yield x

        for z in codec.encode(counted()):
            latents.append(z)
            n += sizes[-1]
            bar.advance(sizes[-1])
    bar.close()
    seconds = time.perf_counter() - start
    latent = torch.cat(latents, dim=2).contiguous()
    meta = {"frames": n, "height": height, "width": width, "fps": fps,
            "scaling_factor": codec.model.config.scaling_factor, "model": type(codec.model).__name__}
    from safetensors.torch import save_file

    save_file({"latent": latent}, out, metadata={k: str(v) for k, v in meta.items()})
    return {**meta, "latent_shape": list(latent.shape), "encode_s": seconds, "encode_fps": n / seconds}


def read_latent(path: str) -> Tuple[torch.Tensor, dict]:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        if "latent" not in f.keys() or not {"frames", "height", "width"} <= set(meta):
            raise ValueError(f"{path!r} is not a latent file written by `genaccel ae encode`")
        latent = f.get_tensor("latent")
    return latent, {"frames": int(meta["frames"]), "height": int(meta["height"]), "width": int(meta["width"]),
                    "fps": float(meta.get("fps", 16))}


def decode_file(codec: VideoCodec, path: str, out: str, progress: bool = True) -> dict:
    latent, meta = read_latent(path)
    if latent.dim() != 5 or latent.shape[1] != codec.latent_channels:
        raise ValueError(f"latent in {path!r} is {tuple(latent.shape)}; this model decodes "
                         f"(1, {codec.latent_channels}, t, h, w)")
    bar = Progress(meta["frames"], "decode", enabled=None if progress else False)
    start = time.perf_counter()

    def frames():
        left = meta["frames"]
        with torch.inference_mode():
            for x in codec.decode(latent.split(codec.latents_per_tile, dim=2)):
                take = min(left, x.shape[2])
                yield from to_frames(x, take, meta["height"], meta["width"])
                bar.advance(take)
                left -= take

    n = write_frames(out, frames(), meta["fps"])
    bar.close()
    seconds = time.perf_counter() - start
    return {**meta, "decoded_frames": n, "decode_s": seconds, "decode_fps": n / seconds}


def roundtrip_file(codec: VideoCodec, path: str, out: Optional[str] = None, progress: bool = True) -> dict:
    """Encode and decode tile by tile (each decoded tile right after its latent), comparing 8-bit frames."""
    count, fps = probe(path)
    frames, height, width = _first_frame(path)
    bar = Progress(count, "round trip", enabled=None if progress else False)
    sq_err, ssim_sum, n = 0.0, 0.0, 0
    start = time.perf_counter()
    tiles_a, tiles_b = itertools.tee(video_tiles(frames, codec.frames_per_tile, codec.f), 2)
    latent_shape = [0, 0, 0, 0]  # (C, t, h, w) of the whole latent

    def latents():
        for z in codec.encode(x for x, _ in tiles_b):
            latent_shape[:] = [z.shape[1], latent_shape[1] + z.shape[2], *z.shape[3:]]
            yield z

    def decoded():
        nonlocal sq_err, ssim_sum, n
        with torch.inference_mode():
            for (x, real), y in zip(tiles_a, codec.decode(latents())):
                a = torch.stack([torch.from_numpy(fr) for fr in to_frames(x, real, height, width)])
                b_frames = list(to_frames(y, real, height, width))
                b = torch.stack([torch.from_numpy(fr) for fr in b_frames])
                a_f, b_f = a.permute(0, 3, 1, 2).double(), b.permute(0, 3, 1, 2).double()
                sq_err += (a_f - b_f).pow(2).mean(dim=(1, 2, 3)).sum().item()
                if min(height, width) >= 11:
                    ssim_sum += ssim(a_f, b_f, data_range=255.0).sum().item()
                n += real
                bar.advance(real)
                yield from b_frames

    if out:
        write_frames(out, decoded(), fps)
    else:
        for _ in decoded():
            pass
    bar.close()
    seconds = time.perf_counter() - start
    pixels = 3 * height * width * n
    latent_numel = math.prod(latent_shape)
    return {"frames": n, "height": height, "width": width, "fps": fps, "latent_shape": latent_shape,
            "compression": pixels / latent_numel if latent_numel else None,
            "psnr_db": psnr_from_mse(sq_err / max(n, 1), 255.0),
            "ssim": ssim_sum / n if n and min(height, width) >= 11 else None,
            "seconds": seconds, "frames_per_s": n / seconds}


def main(args) -> int:
    if args.model is None:
        from .tiny import default_model_path

        args.model = default_model_path()
    model = load(args.model, args.config)
    if args.dtype != "float32":
        model = model.to(getattr(torch, args.dtype))
    codec = VideoCodec(model, tile=args.tile, overlap=args.overlap)
    progress = not args.no_progress
    if args.action == "encode":
        result = encode_file(codec, args.input, args.output or "latent.safetensors", progress)
    elif args.action == "decode":
        result = decode_file(codec, args.input, args.output or "decoded.mp4", progress)
    else:
        result = roundtrip_file(codec, args.input, args.output, progress)
    print(json.dumps(result, indent=1))
    if args.json:
        from ...benchmarks.timing import environment

        with open(args.json, "w") as f:
            json.dump({"environment": environment(torch.device("cpu")), "command": args.action,
                       "input": args.input, "model": args.model, **result}, f, indent=1)
    return 0
