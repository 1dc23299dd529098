"""SLA family: sparse-linear attention against dense SDPA: forward, backward, forward+backward.

For each configuration and topk: one set of random q/k/v and one random small projection shared by
all candidates, then dense SDPA and genaccel.sparse_linear_attention timed interleaved, per mode:
the forward ("fwd"), forward + backward of the loss sum(out * grad_out) ("fwd+bwd": gradients of q,
k, v, and for SLA also of the projection), and that backward alone ("bwd": the graph of one forward
is kept and its backward replayed). The projection is random rather than zero (a fresh layer's
init) so the linear branch and its backward are really computed and timed.

Correctness: the forward on a few whole query blocks against the float64 reference
(sla/reference.py), given the block codes of sla_block_map on the full q/k; the full reference at
N=16k would need tens of GB. The issue's targets (forward >= 12x SDPA, forward+backward >= 6x at
topk 0.05; on a GPU forward >= 14x and backward >= 7x SDPA's flash backend) are reported per row,
not asserted: timing on a shared machine is not a test.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import List

import torch

from ..attention.sla.spec import FEATURE_MAPS, PRECISIONS
from ..testing import DTYPE_NAMES
from . import common, plotting
from .registry import REL_ERR_COLUMN, Benchmark, choice, column, register, short_error

MODES = ["fwd", "bwd", "fwd+bwd"]
TOPKS = [0.05, 0.1, 0.2]
# The speedup targets (topk 0.05) per device type and mode: CPU against SDPA, CUDA against
# SDPA's flash backend. Shown next to each row so a reader sees how far a run is from them; at other
# topks as the bar the default one must clear. A mode without a target here has none in the issue.
TARGETS = {"cpu": {"fwd": 12.0, "fwd+bwd": 6.0}, "cuda": {"fwd": 14.0, "bwd": 7.0}}
# The modes run by default: those with targets (CPU time is scarce: one SDPA fwd+bwd round at the
# CPU shape is ~10 s), and on CUDA also fwd+bwd.
DEFAULT_MODES = {"cpu": ["fwd", "fwd+bwd"], "cuda": ["fwd", "bwd", "fwd+bwd"]}


@dataclass
class SlaConfig(common.AttentionShape):
    topks: List[float] = field(default_factory=lambda: list(TOPKS))
    low_k: float = 0.10
    feature_map: str = choice("softmax", FEATURE_MAPS)
    modes: List[str] = choice(DEFAULT_MODES["cpu"], MODES)
    proj_std: float = 0.05  # std of the random projection weights (times 1/sqrt(D))
    # SLA under torch.autocast in the config's half dtype: the module's training setting (float32
    # parameters, so the projection runs in the half dtype too). Off: a float32 projection.
    autocast: bool = False
    precision: str = choice("tf32", PRECISIONS)  # the CUDA linear branch's GEMMs (op argument)

    def label(self) -> str:
        return self.shape_label(f"H{self.H}") + (" amp" if self.autocast else "")


def default_configs(device: str, quick: bool) -> List[SlaConfig]:
    """The issue's CPU target: B=1, H=4, N=16384, D=64, float32, 64x64 blocks, topk 0.05 (plus 0.1
    and 0.2 to show how the speedup falls with the kept fraction). One round of fwd+bwd SDPA at
    N=16384 is ~18 s on 2 cores, hence min_rounds=3 and no more. CUDA: the issue's GPU shape, and
    at topk 0.05 also under autocast (the module's training setting: the projection in bf16)."""
    if device == "cuda":
        cfg = SlaConfig(B=1, H=12, N=8192 if quick else 32760, D=128, dtype="bfloat16",
                        modes=list(DEFAULT_MODES["cuda"]), min_rounds=5, max_rounds=50, target_s=1.0)
    else:
        cfg = SlaConfig(B=1, H=4, N=4096 if quick else 16384, D=64)
    if quick:
        cfg = dataclasses.replace(cfg, topks=[0.05], min_rounds=2, max_rounds=3, target_s=0.5)
    if device == "cuda":
        return [cfg, dataclasses.replace(cfg, topks=[0.05], autocast=True)]
    return [cfg]


def prepare(configs: List[SlaConfig], overrides: dict) -> List[SlaConfig]:
    if "autocast" not in overrides:  # a default autocast config does not survive dtype=float32
        configs = [c for c in configs if not (c.autocast and c.dtype == "float32")]
    if any(c.autocast and c.dtype == "float32" for c in configs):
        raise ValueError("autocast=true needs a bfloat16 or float16 config")
    return configs


def rows(cfg: SlaConfig, run):
    """One row per topk and mode; a topk's rows once its forward error is known."""
    import genaccel
    from genaccel.attention.sla.reference import CRITICAL, MARGINAL, NEGLIGIBLE, sparse_linear_attention_reference

    device, dtype = run.device, DTYPE_NAMES[cfg.dtype]
    B, H, N, D = cfg.B, cfg.H, cfg.N, cfg.D
    bq, bk = cfg.block_q, cfg.block_k
    scale = 1.0 / math.sqrt(D)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    q, k, v, grad_out = (torch.randn(B, H, N, D, device=device, dtype=dtype, generator=gen) for _ in range(4))
    # float32 like SparseLinearAttention's parameters.
    proj_w = torch.randn(D, D, device=device, generator=gen) * (cfg.proj_std / math.sqrt(D))
    proj_b = torch.randn(D, device=device, generator=gen) * cfg.proj_std
    dense_flops = 4.0 * B * H * N * N * D
    # Linear branch: phi(K_j)^T V_j per key block and phi(Q_i) H_i plus the denominators per query.
    linear_flops = B * H * (4.0 * N * D * D + 2.0 * N * D)
    err_blocks, err_rows = common.reference_query_blocks(math.ceil(N / bq), bq, N, cfg.err_blocks,
                                                         torch.Generator().manual_seed(cfg.seed + 1))
    err_rows = err_rows.to(device)
    # The baseline: SDPA's flash backend on CUDA (the issue's), torch's default backend timed beside it.
    sdpa_fwd, sdpa_backend, sdpa_note = common.sdpa_candidates(q, k, v, scale, device, dtype, wrap=common.no_grad)

    def sla(*args, **kwargs):
        with torch.autocast(device.type, dtype=dtype, enabled=cfg.autocast):
            return genaccel.sparse_linear_attention(*args, **kwargs)

    for topk in cfg.topks:
        sla_kw = dict(topk=topk, low_k=cfg.low_k, block_size=(bq, bk), feature_map=cfg.feature_map,
                      precision=cfg.precision, backend=cfg.backend)
        base: dict = {"config": cfg.label(), "topk": topk, "low_k": cfg.low_k, "feature_map": cfg.feature_map,
                      "backend": cfg.backend, "precision": cfg.precision, "sdpa_backend": sdpa_backend}
        forward_out = codes = None
        try:
            with torch.no_grad():
                codes, kv_indices, _ = genaccel.sla_block_map(q, k, topk, cfg.low_k, (bq, bk))
            codes_cpu = codes.cpu()
            for name, code in (("critical", CRITICAL), ("marginal", MARGINAL), ("negligible", NEGLIGIBLE)):
                base[f"{name}_fraction"] = (codes_cpu == code).float().mean().item()
            base["critical_blocks_per_row"] = int(kv_indices.shape[-1])
            base["ideal_speedup"] = dense_flops / (common.kept_flops(codes_cpu == CRITICAL, cfg, B, H) + linear_flops)
        except Exception as exc:
            base["error"] = short_error(exc, 300)

        done = []
        for mode in cfg.modes:
            run.status(f"{cfg.label()} topk {topk:g} {mode}")
            row = dict(base, mode=mode, target_speedup=TARGETS[device.type].get(mode),
                       notes=[sdpa_note] if sdpa_note else [])
            if mode == "fwd":
                candidates = dict(sdpa_fwd)

                def ours():
                    with torch.no_grad():
                        return sla(q, k, v, proj_w, proj_b, **sla_kw)
            else:
                leaves = [t.detach().requires_grad_() for t in (q, k, v)]
                w_leaf, b_leaf = proj_w.detach().requires_grad_(), proj_b.detach().requires_grad_()
                only_bwd = mode == "bwd"
                candidates, _, _ = common.sdpa_candidates(
                    *leaves, scale, device, dtype, wrap=lambda f: common.gradients(f, leaves, grad_out, only_bwd))
                ours = common.gradients(lambda: sla(*leaves, w_leaf, b_leaf, **sla_kw), [*leaves, w_leaf, b_leaf],
                                        grad_out, only_bwd)
            if "error" not in row:
                try:
                    got = ours()  # also the first warm-up; an exception here is reported, not timed
                    if mode == "fwd":
                        forward_out = got
                    candidates["genaccel"] = ours
                except Exception as exc:
                    row["error"] = short_error(exc, 300)
            run.time(row, candidates)
            if "genaccel_ms" in row and row["target_speedup"] is not None:
                row["meets_target"] = bool(row["speedup_vs_sdpa"] >= row["target_speedup"])
            done.append(row)

        # Forward error once per topk (the fwd+bwd rows run the same forward); after timing, so
        # the float64 work does not disturb the caches timed.
        if codes is not None:
            if forward_out is None:
                try:
                    with torch.no_grad():
                        forward_out = sla(q, k, v, proj_w, proj_b, **sla_kw)
                except Exception:
                    forward_out = None  # the error is already on the rows
            if forward_out is not None:
                run.status(f"{cfg.label()} topk {topk:g}: float64 reference")
                ref, _, _ = sparse_linear_attention_reference(
                    q[:, :, err_rows], k, v, codes[:, :, err_blocks], proj_w, proj_b, (bq, bk), cfg.feature_map)
                run.check(forward_out[:, :, err_rows].cpu(), ref.cpu(), *done)
                for row in done:
                    row["rel_err_query_blocks"] = err_blocks
                del ref
            del forward_out
        yield from done


BENCHMARK = register(Benchmark(
    name="sla",
    description="sparse-linear attention (SLA) vs dense SDPA, forward and forward+backward",
    config=SlaConfig,
    configs=default_configs,
    rows=rows,
    count=lambda cfg: len(cfg.topks) * len(cfg.modes),
    where=lambda r: f"{r['config']} topk {r['topk']:g} {r['mode']}",
    check_where=lambda r: f"{r['config']} topk {r['topk']:g} forward",
    prepare=prepare,
    notes=lambda device, quick: ["--quick: small sizes, one topk, few repeats"] if quick else [],
    needs_ops=("sla_fwd",),
    plot=plotting.sla_speedups,
    columns=[
        column("config", 30, "config"),
        column("mode", 7, "mode"),
        column("topk", 5, "topk", "g"),
        column("crit", 6, "critical_fraction", ".3f"),
        column("sdpa ms", 9, "sdpa_ms", ".1f"),
        column("sla ms", 8, "genaccel_ms", ".1f"),
        *common.VS_SDPA_COLUMNS,
        column("target", 6, "target_speedup", ".0f", "x"),
        column("floor", 6, "ideal_speedup", ".1f", "x"),
        REL_ERR_COLUMN,
    ],
))
