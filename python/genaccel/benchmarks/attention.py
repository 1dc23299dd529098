"""Attention family: block-sparse attention against dense SDPA and FlexAttention.

For each configuration and density: one set of random q/k/v shared by all candidates, a random
block mask with the same number of key blocks in every (b, h, query block) row, planning timed on its
own, then dense SDPA, genaccel's op on the planned indices and (full runs) compiled FlexAttention on
the same block mask, timed interleaved; with `backward` (default on CUDA) also the backward of one
forward's graph replayed, genaccel against SDPA's backward (bwd_* fields). Correctness: genaccel (and
FlexAttention) against the float64 reference on a few whole query blocks, because the full float64
reference at N=16k-32k would need tens of GB.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..testing import DTYPE_NAMES, rel_err
from . import common, plotting
from .registry import REL_ERR_COLUMN, Benchmark, column, fmt, register, short_error
from .timing import time_median

DENSITIES = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]


@dataclass
class AttnConfig(common.AttentionShape):
    Hkv: Optional[int] = None  # None = H (no GQA)
    densities: List[float] = field(default_factory=lambda: list(DENSITIES))
    flex: bool = True  # time FlexAttention (full runs only)
    # Also time the backward (replayed on one forward's graph) against SDPA's backward; on by
    # default on CUDA only (a dense CPU backward round at the CPU shape takes tens of seconds).
    backward: bool = False
    min_rounds: int = 5
    max_rounds: int = 30

    @property
    def hkv(self) -> int:
        return self.Hkv if self.Hkv is not None else self.H

    def label(self) -> str:
        return self.shape_label(f"H{self.H}" if self.hkv == self.H else f"H{self.H}/{self.hkv}")

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), Hkv=self.hkv, label=self.label())


def default_configs(device: str, quick: bool) -> List[AttnConfig]:
    """The configurations of the issue: the CPU target (≥ 9× SDPA at 10%, ≤ 1.5× slower at 100%)
    and a video-DiT-sized CUDA shape (N=32760 is not a multiple of 64: the last block is partial)."""
    if device == "cuda":
        cfg = AttnConfig(B=1, H=12, N=8192 if quick else 32760, D=128, dtype="bfloat16",
                         min_rounds=5, max_rounds=50, target_s=1.0, backward=True)
    else:
        # min_rounds=3: one round at full density is ~5 s of dense work on 2 cores.
        cfg = AttnConfig(B=1, H=4, N=4096 if quick else 16384, D=64, dtype="float32", min_rounds=3)
    if quick:
        cfg = dataclasses.replace(cfg, densities=[0.1, 0.5, 1.0], flex=False, min_rounds=3, max_rounds=5, target_s=0.5)
    return [cfg]


@torch.no_grad()
def rows(cfg: AttnConfig, run):
    """One row per density."""
    import genaccel
    from genaccel.attention.block_sparse.reference import block_sparse_attention_reference

    device, dtype = run.device, DTYPE_NAMES[cfg.dtype]
    B, H, Hkv, N, D = cfg.B, cfg.H, cfg.hkv, cfg.N, cfg.D
    bq, bk = cfg.block_q, cfg.block_k
    tq, tk = math.ceil(N / bq), math.ceil(N / bk)
    scale = 1.0 / math.sqrt(D)
    dev_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    q = torch.randn(B, H, N, D, device=device, dtype=dtype, generator=dev_gen)
    k = torch.randn(B, Hkv, N, D, device=device, dtype=dtype, generator=dev_gen)
    v = torch.randn(B, Hkv, N, D, device=device, dtype=dtype, generator=dev_gen)
    grad_out = torch.randn(B, H, N, D, device=device, dtype=dtype, generator=dev_gen) if cfg.backward else None
    mask_gen = torch.Generator().manual_seed(cfg.seed + 1)
    sdpa, sdpa_backend, sdpa_note = common.sdpa_candidates(q, k, v, scale, device, dtype)
    flex = common.Flex(cfg, device) if (cfg.flex and not run.quick) else None
    dense_flops = 4.0 * B * H * N * N * D
    err_blocks, err_rows = common.reference_query_blocks(tq, bq, N, cfg.err_blocks, mask_gen)
    err_rows = err_rows.to(device)
    for density in cfg.densities:
        run.status(f"{cfg.label()} density {density:g}")
        row: dict = {"config": cfg.label(), "density_target": density, "backend": cfg.backend,
                     "sdpa_backend": sdpa_backend, "notes": [sdpa_note] if sdpa_note else []}
        mask_cpu = common.random_block_mask(B, H, tq, tk, density, mask_gen)
        mask = mask_cpu.to(device)
        row.update(density=mask_cpu.float().mean().item(), kept_blocks=int(mask_cpu.sum()),
                   total_blocks=mask_cpu.numel())
        flops = common.kept_flops(mask_cpu, cfg, B, H)
        row["ideal_speedup"] = dense_flops / flops if flops > 0 else None

        candidates = dict(sdpa)
        ours_out = flex_out = None
        try:
            kv_indices, kv_counts = genaccel.block_mask_to_indices(mask)
            row["plan_ms"] = time_median(lambda: genaccel.block_mask_to_indices(mask), device)
            op, backend = torch.ops.genaccel.block_sparse_attn_fwd, cfg.backend

            def ours(kv_indices=kv_indices, kv_counts=kv_counts):
                return op(q, k, v, kv_indices, kv_counts, bq, bk, scale, backend=backend)

            ours_out = ours()[0]
            candidates["genaccel"] = ours
        except Exception as exc:
            row["error"] = short_error(exc, 300)
        if flex is not None:
            flex_out = flex.add(row, candidates, q, k, v, scale, mask, run.status)

        timings = run.time(row, candidates)
        row["sdpa_tflops"] = dense_flops / row["sdpa_ms"] / 1e9
        if "genaccel" in timings:
            row["fraction_of_ideal"] = row["speedup_vs_sdpa"] / row["ideal_speedup"] if row["ideal_speedup"] else None
            row["genaccel_tflops"] = flops / row["genaccel_ms"] / 1e9  # on kept blocks only
        if "flex" in timings:
            row["flex_speedup_vs_sdpa"] = row["sdpa_ms"] / row["flex_ms"]
        if cfg.backward and "genaccel" in timings:
            # The backward of one forward's graph replayed (gradients of q, k, v).
            run.status(f"{cfg.label()} density {density:g}: backward")
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            sdpa_bwd, _, _ = common.sdpa_candidates(*leaves, scale, device, dtype,
                                                    wrap=lambda f: common.gradients(f, leaves, grad_out, True))
            ours_bwd = common.gradients(lambda: genaccel.block_sparse_attention(
                *leaves, mask, (bq, bk), scale=scale, backend=cfg.backend), leaves, grad_out, True)
            run.time(row, {"sdpa": sdpa_bwd.pop("sdpa"), "genaccel": ours_bwd, **sdpa_bwd}, prefix="bwd_")

        # Correctness on the sampled query blocks, after timing so it cannot disturb the caches timed.
        if ours_out is not None or flex_out is not None:
            run.status(f"{cfg.label()} density {density:g}: float64 reference")
            ref, _ = block_sparse_attention_reference(q[:, :, err_rows], k, v, mask[:, :, err_blocks], (bq, bk), scale)
            row["rel_err_query_blocks"] = err_blocks
            if ours_out is not None:
                run.check(ours_out[:, :, err_rows], ref, row)
            if flex_out is not None:
                row["flex_rel_err"] = rel_err(flex_out[:, :, err_rows], ref)
            del ref
        del ours_out, flex_out
        yield row


def notes(device: torch.device, quick: bool) -> List[str]:
    import genaccel

    said = []
    if device.type == "cuda" and not genaccel.has_cuda_kernels():
        said.append("genaccel was built without CUDA kernels: its rows will show the error; "
                    "rebuild with GENACCEL_CUDA=ON")
    if quick:
        said.append("--quick: small sizes, few repeats, FlexAttention skipped")
    return said


BENCHMARK = register(Benchmark(
    name="attention",
    description="block-sparse attention vs dense SDPA and FlexAttention",
    config=AttnConfig,
    configs=default_configs,
    rows=rows,
    count=lambda cfg: len(cfg.densities),
    where=lambda r: f"{r['config']} density {r['density']:.3f}",
    notes=notes,
    plot=plotting.block_sparse_speedups,
    columns=[
        column("config", 30, "config"),
        column("density", 7, "density", ".3f"),
        column("plan ms", 8, "plan_ms", ".2f"),
        column("sdpa ms", 9, "sdpa_ms", ".2f"),
        column("ours ms", 9, "genaccel_ms", ".2f"),
        *common.VS_SDPA_COLUMNS,
        column("ideal", 6, "ideal_speedup", ".1f", "x"),
        ("%ideal", 6, lambda r: fmt(r.get("fraction_of_ideal") and 100 * r["fraction_of_ideal"], ".0f", "%")),
        column("flex ms", 9, "flex_ms", ".2f"),
        column("vs flex", 7, "speedup_vs_flex", ".2f", "x"),
        column("bwd ms", 8, "bwd_genaccel_ms", ".2f"),
        column("bwd vs", 7, "bwd_speedup_vs_sdpa", ".2f", "x"),
        REL_ERR_COLUMN,
    ],
))
