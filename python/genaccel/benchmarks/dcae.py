"""DC-AE's kernels against the formulation a PyTorch user (and the original code) runs instead.

- conv rows: genaccel.chunk_causal_conv3d vs the reference formulation, every chunk padded explicitly
  (spec.pad_chunks: the previous chunk's last frame on the left, a zero frame on the right) and one
  torch conv3d over the padded chunks, as DC-AE-V's ConvLayer3d does; and, for scale, torch's plain
  conv3d over the unchunked video (bidirectional everywhere: not the same function). rel_diff: ours vs
  the padded formulation in float32 (the float64 check is in tests/autoencoder). <name>_peak_mb: the
  rise of resident memory during one call (output and scratch included).
- video rows: a small DC-AE-V config (random weights: speed and memory do not depend on them), encode
  and decode of `frames` frames, the whole video at once vs streamed in tiles of one chunk
  (encode_stream / decode_stream, outputs dropped as they come, as a writer would): frames/s and peak
  memory. Streamed peaks should stay flat as the video grows; the PNG plots them against length.
  stream_equals_full: the streamed latent (and video) equal the full pass exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from ..autoencoder.dcae.spec import pad_chunks
from ..testing import DTYPE_NAMES
from . import plotting
from .common import SHORT_DTYPE
from .registry import Benchmark, column, register
from .timing import peak_bytes


@dataclass
class DcaeConfig:
    kind: str = "conv"    # conv | video
    batch: int = 1
    channels: int = 128
    frames: int = 40
    size: int = 64        # H = W
    kernel: int = 3
    chunk: int = 40
    dtype: str = "float32"
    seed: int = 0
    warmup: int = 1
    min_rounds: int = 3
    max_rounds: int = 10
    target_s: float = 5.0

    def label(self) -> str:
        if self.kind == "video":
            return f"DCAEV small T{self.frames} {self.size}px"
        return f"C{self.channels} T{self.frames} {self.size}px chunk {self.chunk} {SHORT_DTYPE[self.dtype]}"


def default_configs(device: str, quick: bool) -> List[DcaeConfig]:
    if quick:
        return [DcaeConfig(channels=32, frames=8, size=32, chunk=4, min_rounds=2, max_rounds=3, target_s=0.5),
                DcaeConfig(kind="video", frames=16, size=32, min_rounds=1, max_rounds=2, target_s=0.5)]
    dtype = "bfloat16" if device == "cuda" else "float32"  # bf16 as DC-VideoGen runs DC-AE-V on GPUs
    video = [DcaeConfig(kind="video", frames=f, size=64, min_rounds=1, max_rounds=3, target_s=2.0)
             for f in (16, 32, 64, 128)]
    return [DcaeConfig(chunk=40, dtype=dtype), DcaeConfig(chunk=10, dtype=dtype)] + video


def padded_conv3d(x, weight, bias, chunk):
    """The original formulation: pad every chunk, one conv3d over them, frames back in order."""
    b, c, t, h, w = x.shape
    p, ph, pw = ((k - 1) // 2 for k in weight.shape[2:])
    y = F.conv3d(pad_chunks(x, None, chunk, p), weight, bias, padding=(0, ph, pw))
    n = t // chunk
    return y.reshape(b, n, -1, chunk, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b, -1, t, h, w)


def small_dcaev():
    """A DC-AE-V of the released shape at a small scale: f8 t4, 16 latent channels, chunks of 8 frames."""
    from ..autoencoder import DCAEV, DCAEVConfig

    return DCAEV(DCAEVConfig(latent_channels=16, block_out_channels=(32, 64, 128, 128, 256),
                             layers_per_block=(0, 2, 2, 2, 2), temporal_down_stage=3, chunk=8, latent_chunk=2))


def video_rows(cfg: DcaeConfig, run):
    torch.manual_seed(cfg.seed)
    model = small_dcaev().to(run.device).eval()
    x = (torch.rand(cfg.batch, 3, cfg.frames, cfg.size, cfg.size) * 2 - 1).to(run.device)
    chunk, latent_chunk = model.config.chunk, model.config.latent_chunk
    with torch.no_grad():
        run.status(f"{cfg.label()}: checking")
        z = model.encode(x)
        z_streamed = torch.cat(list(model.encode_stream(x.split(chunk, dim=2))), dim=2)
        y = model.decode(z)
        y_streamed = torch.cat(list(model.decode_stream(z.split(latent_chunk, dim=2))), dim=2)
        same = bool(torch.equal(z, z_streamed) and torch.equal(y, y_streamed))
        del z_streamed, y, y_streamed

        def drain(tiles):
            for _ in tiles:
                pass

        candidates = {
            "encode_full": lambda: model.encode(x),
            "encode_stream": lambda: drain(model.encode_stream(x.split(chunk, dim=2))),
            "decode_full": lambda: model.decode(z),
            "decode_stream": lambda: drain(model.decode_stream(z.split(latent_chunk, dim=2))),
        }
        row = dict(config=cfg.label(), kind="video", frames=cfg.frames, size=cfg.size, stream_equals_full=same,
                   input_mb=x.numel() * 4 / 2 ** 20)
        for name, fn in candidates.items():
            peak = peak_bytes(fn, torch.device(run.device))
            row[f"{name}_peak_mb"] = None if peak is None else peak / 2 ** 20
        run.status(cfg.label())
        run.time(row, candidates)
    for name in candidates:
        row[f"{name}_fps"] = cfg.batch * cfg.frames / (row[f"{name}_ms"] / 1e3)
    yield row


def rows(cfg: DcaeConfig, run):
    if cfg.kind == "video":
        yield from video_rows(cfg, run)
        return
    import genaccel

    gen = torch.Generator().manual_seed(cfg.seed)
    c, k = cfg.channels, cfg.kernel
    dtype = DTYPE_NAMES[cfg.dtype]
    x = torch.randn(cfg.batch, c, cfg.frames, cfg.size, cfg.size, generator=gen).to(run.device, dtype)
    weight = (torch.randn(c, c, k, k, k, generator=gen) / (c * k ** 3) ** 0.5).to(run.device, dtype)
    bias = torch.randn(c, generator=gen).to(run.device, dtype)
    candidates = {"genaccel": lambda: genaccel.chunk_causal_conv3d(x, weight, bias, chunk_size=cfg.chunk)[0],
                  "padded_conv3d": lambda: padded_conv3d(x, weight, bias, cfg.chunk),
                  "conv3d_unchunked": lambda: F.conv3d(x, weight, bias, padding=k // 2)}
    run.status(f"{cfg.label()}: checking")
    ours, theirs = candidates["genaccel"](), candidates["padded_conv3d"]()
    row = dict(config=cfg.label(), kind="conv", batch=cfg.batch, channels=c, frames=cfg.frames, size=cfg.size,
               kernel=k, chunk=cfg.chunk, gflop=2 * x.numel() * c * k ** 3 / 1e9,
               dtype=cfg.dtype, rel_diff_vs_padded_conv3d=((ours - theirs).float().norm() / theirs.float().norm()).item(),
               input_mb=x.numel() * x.element_size() / 2 ** 20)
    del ours, theirs
    for name, fn in candidates.items():
        peak = peak_bytes(fn, torch.device(run.device))
        row[f"{name}_peak_mb"] = None if peak is None else peak / 2 ** 20
    if row["genaccel_peak_mb"] is not None and row["padded_conv3d_peak_mb"]:
        row["peak_saving_vs_padded_conv3d"] = 1 - row["genaccel_peak_mb"] / row["padded_conv3d_peak_mb"]
    run.status(cfg.label())
    run.time(row, candidates)
    yield row


def _peaks(row: dict, part: str) -> str:
    full, streamed = row.get(f"{part}_full_peak_mb"), row.get(f"{part}_stream_peak_mb")
    return "-" if full is None or streamed is None else f"{full:.0f} / {streamed:.0f}"


def plot(rows_: List[dict], env: dict, path: str) -> Optional[str]:
    plt = plotting.pyplot()
    if plt is None:
        return plotting.NO_MATPLOTLIB
    video = sorted((r for r in rows_ if r["kind"] == "video" and r.get("encode_full_peak_mb") is not None),
                   key=lambda r: r["frames"])
    if not video:
        return "no video rows with peak memory: no plot written"
    fig, ax = plt.subplots(figsize=(6, 4))
    frames = [r["frames"] for r in video]
    for name, style in (("encode_full", "o-"), ("encode_stream", "o--"), ("decode_full", "s-"), ("decode_stream", "s--")):
        ax.plot(frames, [r[f"{name}_peak_mb"] for r in video], style, label=name.replace("_", " "))
    ax.set_xlabel("video length (frames)")
    ax.set_ylabel("peak memory rise (MB)")
    ax.set_title(f"{video[0]['config'].rsplit(' T', 1)[0]}, {video[0]['size']}px ({env.get('device_name', '')})",
                 fontsize=9)
    ax.legend(fontsize=8)
    plotting.save_figure(fig, path)
    return None


BENCHMARK = register(Benchmark(
    name="dcae",
    description="DC-AE-V's chunk-causal conv3d vs padding every chunk + torch conv3d (time, peak memory); "
                "a small DC-AE-V's encode/decode, whole vs streamed (frames/s, peak memory vs length)",
    config=DcaeConfig,
    configs=default_configs,
    rows=rows,
    count=lambda cfg: 1,
    where=lambda r: r["config"],
    plot=plot,
    needs_ops=("dcae_chunk_causal_conv3d",),
    columns=[
        column("config", 31, "config"),
        column("ours ms", 8, "genaccel_ms", ".1f"),
        column("padded ms", 9, "padded_conv3d_ms", ".1f"),
        column("vs padded", 9, "speedup_vs_padded_conv3d", ".2f", "x"),
        column("unchunked ms", 12, "conv3d_unchunked_ms", ".1f"),
        column("ours MB", 7, "genaccel_peak_mb", ".0f"),
        column("padded MB", 9, "padded_conv3d_peak_mb", ".0f"),
        column("saved", 5, "peak_saving_vs_padded_conv3d", ".0%"),
        column("rel diff", 8, "rel_diff_vs_padded_conv3d", ".1e"),
        column("enc fps", 7, "encode_full_fps", ".1f"),
        column("dec fps", 7, "decode_full_fps", ".1f"),
        ("enc MB full/str", 15, lambda r: _peaks(r, "encode")),
        ("dec MB full/str", 15, lambda r: _peaks(r, "decode")),
        column("= full", 6, "stream_equals_full"),
    ],
))
