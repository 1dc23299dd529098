"""DC-AE's kernels against the formulation a PyTorch user (and the original code) runs instead.

- conv rows: genaccel.chunk_causal_conv3d vs the reference formulation, every chunk padded explicitly
  (spec.pad_chunks: the previous chunk's last frame on the left, a zero frame on the right) and one
  torch conv3d over the padded chunks, as DC-AE-V's ConvLayer3d does; and, for scale, torch's plain
  conv3d over the unchunked video (bidirectional everywhere: not the same function). rel_diff: ours vs
  the padded formulation in float32 (the float64 check is in tests/autoencoder). <name>_peak_mb: the
  rise of resident memory during one call (output and scratch included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F

from ..autoencoder.dcae.spec import pad_chunks
from ..testing import DTYPE_NAMES
from .common import SHORT_DTYPE
from .registry import Benchmark, column, register
from .timing import peak_bytes


@dataclass
class DcaeConfig:
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
        return f"C{self.channels} T{self.frames} {self.size}px chunk {self.chunk} {SHORT_DTYPE[self.dtype]}"


def default_configs(device: str, quick: bool) -> List[DcaeConfig]:
    if quick:
        return [DcaeConfig(channels=32, frames=8, size=32, chunk=4, min_rounds=2, max_rounds=3, target_s=0.5)]
    dtype = "bfloat16" if device == "cuda" else "float32"  # bf16 as DC-VideoGen runs DC-AE-V on GPUs
    return [DcaeConfig(chunk=40, dtype=dtype), DcaeConfig(chunk=10, dtype=dtype)]


def padded_conv3d(x, weight, bias, chunk):
    """The original formulation: pad every chunk, one conv3d over them, frames back in order."""
    b, c, t, h, w = x.shape
    p, ph, pw = ((k - 1) // 2 for k in weight.shape[2:])
    y = F.conv3d(pad_chunks(x, None, chunk, p), weight, bias, padding=(0, ph, pw))
    n = t // chunk
    return y.reshape(b, n, -1, chunk, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b, -1, t, h, w)


def rows(cfg: DcaeConfig, run):
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


BENCHMARK = register(Benchmark(
    name="dcae",
    description="DC-AE-V's chunk-causal conv3d vs padding every chunk + torch conv3d: time and peak memory",
    config=DcaeConfig,
    configs=default_configs,
    rows=rows,
    count=lambda cfg: 1,
    where=lambda r: r["config"],
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
    ],
))
