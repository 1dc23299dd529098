"""Attention family, quality: how far each sparse selection is from dense attention at equal density,
on video-like synthetic q/k/v (genaccel.testing.video: semantic regions that move across frames plus
a smooth positional field).

Methods, each over a sweep of its own knob: SVG2 (k-means clusters, top-p of the centroid estimate;
knob top_p), Radial (the static spatio-temporal mask; knob decay_factor) and top-k blocks from
mean-pooled scores (SLA's selection, `sla_block_map` with low_k=0: the critical blocks only; knob
topk). Per row: the token-pair density the selection computes and ||out - dense|| / ||dense|| against
float64 dense attention. The notes interpolate each method's error at a few common densities
(log-linear along its sweep; "-" outside its range). Nothing is timed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch

from ..testing import rel_err
from . import common
from .registry import Benchmark, column, register, short_error

COMMON_DENSITIES = [0.1, 0.15, 0.2, 0.3, 0.4, 0.5]


@dataclass
class QualityConfig:
    B: int = 1
    H: int = 2
    # 32 frames: Radial keeps frame distances 0 and 1 dense (and the sink frame), so its density falls
    # with the frame count and stays above ~0.35 at fewer frames.
    frames: int = 32
    height: int = 12
    width: int = 16
    D: int = 64
    block: int = 32  # Radial's and top-k's blocks
    num_q_clusters: int = 80  # N / 80 and N / 16, as 200 and 1000 at N = 16k
    num_k_clusters: int = 400
    kmeans_iters: int = 50
    top_ps: List[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999])
    topks: List[float] = field(default_factory=lambda: [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7])
    decay_factors: List[float] = field(default_factory=lambda: [0.05, 0.2, 0.5, 1.0, 2.0, 4.0])
    seed: int = 0

    @property
    def N(self) -> int:
        return self.frames * self.height * self.width

    def label(self) -> str:
        return f"B{self.B} H{self.H} f{self.frames}x{self.height}x{self.width} D{self.D}"


def default_configs(device: str, quick: bool) -> List[QualityConfig]:
    if quick:
        return [QualityConfig(frames=8, num_q_clusters=20, num_k_clusters=100, top_ps=[0.7, 0.9], topks=[0.1, 0.3],
                              decay_factors=[0.5])]
    return [QualityConfig()]


@torch.no_grad()
def rows(cfg: QualityConfig, run):
    import genaccel
    from genaccel.testing.video import video_like_qkv

    q, k, v = video_like_qkv(cfg.B, cfg.H, cfg.frames, cfg.height, cfg.width, cfg.D, seed=cfg.seed,
                             device=run.device)
    dense = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(cfg.D), -1) @ v.double()
    shape = common.AttentionShape(B=cfg.B, H=cfg.H, N=cfg.N, D=cfg.D, block_q=cfg.block, block_k=cfg.block)
    dense_flops = 4.0 * cfg.B * cfg.H * cfg.N * cfg.N * cfg.D

    def block_row(method, knob, value, mask):
        out = genaccel.block_sparse_attention(q, k, v, mask, cfg.block)
        density = common.kept_flops(mask.cpu(), shape, cfg.B, cfg.H) / dense_flops
        return dict(method=method, knob=knob, value=value, density=density, rel_err_vs_dense=rel_err(out, dense))

    _, first = genaccel.svg2_attention(q, k, v, cfg.num_q_clusters, cfg.num_k_clusters, 0.9, 0.0,
                                       iters=cfg.kmeans_iters, seed=cfg.seed)
    sweeps = [("svg2", "top_p", cfg.top_ps), ("topk", "topk", cfg.topks), ("radial", "decay_factor", cfg.decay_factors)]
    done = []
    for method, knob, values in sweeps:
        for value in values:
            run.status(f"{cfg.label()} {method} {knob}={value:g}")
            row = {"config": cfg.label()}
            try:
                if method == "svg2":  # the converged centroids, as SVG2's cache holds them after a step
                    out, state = genaccel.svg2_attention(q, k, v, cfg.num_q_clusters, cfg.num_k_clusters, value, 0.0,
                                                         iters=0, q_init=first["q_centroids"],
                                                         k_init=first["k_centroids"])
                    row.update(method=method, knob=knob, value=value, density=state["density"],
                               rel_err_vs_dense=rel_err(out, dense))
                elif method == "topk":
                    codes, _, _ = genaccel.sla_block_map(q, k, value, 0.0, cfg.block)
                    row.update(block_row(method, knob, value, codes == 1))
                else:
                    mask = genaccel.radial_block_mask(cfg.frames, cfg.height * cfg.width, cfg.block, value)
                    row.update(block_row(method, knob, value, mask[None, None].to(run.device)))
            except Exception as exc:
                row.update(method=method, knob=knob, value=value, error=short_error(exc, 300))
            done.append(row)
            yield row
    for line in summary(done):
        run.notes.append(f"{cfg.label()}: {line}")
        run.write(f"note: {line}")


def at_density(rows: List[dict], method: str, density: float, key: str = "rel_err_vs_dense"):
    """The method's error (row[key]) at `density`, log-linear between its two nearest sweep points
    (None outside)."""
    pts = sorted((r["density"], r[key]) for r in rows if r.get("method") == method and "density" in r and key in r)
    for (d0, e0), (d1, e1) in zip(pts, pts[1:]):
        if d0 <= density <= d1 and d1 > d0 and e0 > 0 and e1 > 0:
            w = (density - d0) / (d1 - d0)
            return math.exp((1 - w) * math.log(e0) + w * math.log(e1))
    return None


def summary(rows: List[dict]) -> List[str]:
    lines = []
    for d in COMMON_DENSITIES:
        parts = []
        for method in ("svg2", "radial", "topk"):
            e = at_density(rows, method, d)
            parts.append(f"{method} {e:.3f}" if e is not None else f"{method} -")
        lines.append(f"rel err vs dense at density {d:g}: " + ", ".join(parts))
    return lines


def plot(rows: List[dict], env: dict, path: str):
    from . import plotting

    plt = plotting.pyplot()
    if plt is None:
        return plotting.NO_MATPLOTLIB
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for method, marker in (("svg2", "o-"), ("radial", "s-"), ("topk", "^-")):
        pts = sorted((r["density"], r["rel_err_vs_dense"]) for r in rows if r.get("method") == method and "density" in r)
        if pts:
            ax.plot(*zip(*pts), marker, label={"topk": "top-k blocks (mean-pooled scores)"}.get(method, method))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("density (fraction of query-key pairs computed)")
    ax.set_ylabel("||out - dense|| / ||dense||")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    configs = sorted({r["config"] for r in rows})
    ax.set_title(f"Sparse attention quality on video-like inputs\n{', '.join(configs)}", fontsize=10)
    plotting.save_figure(fig, path)
    return None


BENCHMARK = register(Benchmark(
    name="attention-quality",
    description="error vs dense attention at equal density: SVG2, Radial, top-k blocks (video-like inputs)",
    config=QualityConfig,
    configs=default_configs,
    rows=rows,
    count=lambda cfg: len(cfg.top_ps) + len(cfg.topks) + len(cfg.decay_factors),
    where=lambda r: f"{r['config']} {r['method']} {r['knob']}={r['value']:g}",
    needs_ops=("svg2_kmeans", "block_sparse_attn_fwd"),
    plot=plot,
    columns=[
        column("config", 24, "config"),
        column("method", 7, "method"),
        column("knob", 12, "knob"),
        column("value", 6, "value", "g"),
        column("density", 7, "density", ".3f"),
        column("rel err", 8, "rel_err_vs_dense", ".3f"),
    ],
))
