"""SVG2 family: k-means and SVG2 attention end to end, on video-like synthetic q/k/v
(genaccel.testing.video).

Rows: (1) `kmeans`: genaccel.attention.svg2.kmeans of k with `kmeans_clusters` clusters and
`warm_iters` iterations from converged centroids (SVG2's warm start; tol=0 so that both sides run
every iteration) against a plain torch implementation doing the same work (torch.cdist + argmin +
scatter_add means per iteration, then the final assignment); their labels compared. (2) one row per
top_p: SVG2Attention's warm call (centroid cache filled by a first call: k-means on q and k, the
cluster-pair selection, permutation, variable-block attention, inverse permutation) against dense
SDPA; its density, and its error on a few query rows against float64 attention under the same
selection. The issue's target (>= 3x SDPA at density <= 15 %) is reported per row, not asserted.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import List

import torch

from ..testing import DTYPE_NAMES
from . import common
from .registry import REL_ERR_COLUMN, Benchmark, column, fmt, register, short_error

TARGET_SPEEDUP, TARGET_DENSITY = 3.0, 0.15


@dataclass
class Svg2Config(common.AttentionShape):
    frames: int = 16  # N = frames * height * width
    height: int = 32
    width: int = 32
    # 100 / 500 clusters (the survey's values; the site says 100-200 / 500-1000): at N = 16k the same
    # quality as 200 / 1000 on these inputs, at half the k-means cost.
    num_q_clusters: int = 100
    num_k_clusters: int = 500
    min_kc_ratio: float = 0.10
    top_ps: List[float] = field(default_factory=lambda: [0.7, 0.8, 0.9])
    warm_iters: int = 2
    first_iters: int = 50
    kmeans_clusters: int = 256

    def label(self) -> str:
        return self.shape_label(f"H{self.H}").rsplit(" ", 1)[0] + f" QC{self.num_q_clusters} KC{self.num_k_clusters}"


def default_configs(device: str, quick: bool) -> List[Svg2Config]:
    """The issue's CPU shape: B=1, H=4, N=16384 (16 frames of 32 x 32 tokens), D=64, float32; on CUDA
    B=1, H=12, N=32760 (21 frames of 30 x 52, Wan 480p), D=128, bfloat16."""
    if device == "cuda":
        cfg = Svg2Config(B=1, H=12, N=32760, D=128, dtype="bfloat16", frames=21, height=30, width=52,
                         min_rounds=5, max_rounds=50, target_s=1.0)
    else:
        cfg = Svg2Config(B=1, H=4, N=16384, D=64)
    if quick:
        cfg = dataclasses.replace(cfg, N=3072, frames=16, height=12, width=16, num_q_clusters=20, num_k_clusters=100,
                                  kmeans_clusters=64, top_ps=[0.9], min_rounds=3, max_rounds=5, target_s=0.5)
    return [cfg]


def prepare(configs: List[Svg2Config], overrides: dict) -> List[Svg2Config]:
    for c in configs:
        if c.frames * c.height * c.width != c.N:
            raise ValueError(f"N = {c.N} must equal frames * height * width = {c.frames * c.height * c.width}")
    return configs


def torch_kmeans(x: torch.Tensor, init: torch.Tensor, iters: int):
    """Lloyd iterations in plain torch (what a user writes without a kernel), then the final assignment."""
    c = init
    B, H, N, D = x.shape
    for _ in range(iters):
        labels = torch.cdist(x, c).argmin(-1)
        sums = torch.zeros_like(c).scatter_add_(2, labels[..., None].expand(B, H, N, D), x)
        counts = torch.zeros(c.shape[:3], device=x.device).scatter_add_(2, labels, torch.ones_like(labels, dtype=x.dtype))
        c = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], c)
    return torch.cdist(x, c).argmin(-1), c


@torch.no_grad()
def rows(cfg: Svg2Config, run):
    import genaccel
    from genaccel.attention.svg2 import kmeans
    from genaccel.attention.svg2.reference import svg2_attention_reference
    from genaccel.testing.video import video_like_qkv

    device, dtype = run.device, DTYPE_NAMES[cfg.dtype]
    q, k, v = video_like_qkv(cfg.B, cfg.H, cfg.frames, cfg.height, cfg.width, cfg.D, seed=cfg.seed, dtype=dtype,
                             device=device)
    base = {"config": cfg.label(), "backend": cfg.backend}

    # k-means alone, from converged centroids.
    run.status(f"{cfg.label()} kmeans C={cfg.kmeans_clusters}")
    row = dict(base, what=f"kmeans C={cfg.kmeans_clusters} x{cfg.warm_iters}", notes=[])
    try:
        x = k.float()
        _, init, _ = kmeans(x, cfg.kmeans_clusters, iters=10, seed=cfg.seed)
        ours_labels = kmeans(x, cfg.kmeans_clusters, cfg.warm_iters, init, tol=0.0)[0]
        torch_labels = torch_kmeans(x, init, cfg.warm_iters)[0]
        row["labels_agree"] = float((ours_labels.long() == torch_labels).double().mean())
        run.time(row, {"torch_kmeans": lambda: torch_kmeans(x, init, cfg.warm_iters),
                       "genaccel": lambda: kmeans(x, cfg.kmeans_clusters, cfg.warm_iters, init, tol=0.0)})
    except Exception as exc:
        row["error"] = short_error(exc, 300)
    yield row

    scale = 1.0 / math.sqrt(cfg.D)
    sdpa, sdpa_backend, sdpa_note = common.sdpa_candidates(q, k, v, scale, device, dtype)
    err_rows = torch.randperm(cfg.N, generator=torch.Generator().manual_seed(cfg.seed + 1))[:cfg.err_blocks * 64]
    err_rows = err_rows.sort().values.to(device)
    for top_p in cfg.top_ps:
        run.status(f"{cfg.label()} svg2 top_p {top_p:g}")
        row = dict(base, what=f"svg2 top_p={top_p:g}", top_p=top_p, min_kc_ratio=cfg.min_kc_ratio,
                   sdpa_backend=sdpa_backend, notes=[sdpa_note] if sdpa_note else [])
        candidates = dict(sdpa)
        out = None
        try:
            layer = genaccel.nn.SVG2Attention(cfg.num_q_clusters, cfg.num_k_clusters, top_p, cfg.min_kc_ratio,
                                              cfg.first_iters, cfg.warm_iters, backend=cfg.backend)
            layer(q, k, v)  # the first call fills the centroid cache (first_iters iterations)
            out = layer(q, k, v)
            state = layer.last_state
            row["density"] = state["density"]
            candidates["genaccel"] = lambda: layer(q, k, v)
        except Exception as exc:
            row["error"] = short_error(exc, 300)
        timings = run.time(row, candidates)
        if "genaccel" in timings:
            row["target_speedup"] = TARGET_SPEEDUP
            row["meets_target"] = bool(row["density"] <= TARGET_DENSITY and row["speedup_vs_sdpa"] >= TARGET_SPEEDUP)
        if out is not None:
            run.status(f"{cfg.label()} svg2 top_p {top_p:g}: float64 reference")
            ref = svg2_attention_reference(q[:, :, err_rows], k, v, state["q_labels"][:, :, err_rows],
                                           state["k_labels"], state["pairs"])
            run.check(out[:, :, err_rows], ref, row)
            row["dense_rel_err"] = _rel(out, q, k, v, scale, err_rows)
        yield row


def _rel(out, q, k, v, scale, rows) -> float:
    """||out - dense|| / ||dense|| on the sampled rows: how far SVG2 is from dense attention."""
    from ..testing import rel_err

    dense = torch.softmax((q[:, :, rows].double() @ k.double().transpose(-1, -2)) * scale, -1) @ v.double()
    return rel_err(out[:, :, rows], dense)


BENCHMARK = register(Benchmark(
    name="svg2",
    description="SVG2: k-means vs plain torch, and SVG2 attention end to end vs dense SDPA (video-like inputs)",
    config=Svg2Config,
    configs=default_configs,
    rows=rows,
    count=lambda cfg: 1 + len(cfg.top_ps),
    where=lambda r: f"{r['config']} {r['what']}",
    prepare=prepare,
    notes=lambda device, quick: ["--quick: small sizes, few clusters, one top_p, few repeats"] if quick else [],
    needs_ops=("svg2_kmeans",),
    columns=[
        column("config", 34, "config"),
        column("what", 18, "what"),
        column("density", 7, "density", ".3f"),
        ("base ms", 9, lambda r: fmt(r.get("sdpa_ms", r.get("torch_kmeans_ms")), ".1f")),
        column("ours ms", 9, "genaccel_ms", ".1f"),
        ("speedup", 7, lambda r: fmt(r.get("speedup_vs_sdpa", r.get("speedup_vs_torch_kmeans")), ".2f", "x")),
        column("vs dense", 8, "dense_rel_err", ".3f"),
        REL_ERR_COLUMN,
    ],
))
