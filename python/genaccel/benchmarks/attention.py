"""Attention family: block-sparse attention against dense SDPA and FlexAttention.

For each configuration and density: one set of random q/k/v shared by all candidates, a random
block mask with the same number of key blocks in every (b, h, query block) row, planning timed on its
own, then dense SDPA, genaccel's op on the planned indices and (full runs) compiled FlexAttention on
the same block mask, timed interleaved; with `backward` (default on CUDA) also the backward of one
forward's graph replayed, genaccel against SDPA's backward (bwd_* fields). Correctness: genaccel (and FlexAttention) against the float64
reference on a few whole query blocks, because the full float64 reference at N=16k-32k would need
tens of GB.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import common
from .timing import Progress, TimingPlan, time_interleaved, time_median

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# ||out - ref|| / ||ref|| bounds of shared/DESIGN.md "Tests"; a row above it is flagged and makes the
# run exit non-zero, because a fast wrong kernel is not a result.
REL_TOL = {"float32": 1e-4, "bfloat16": 1e-2, "float16": 5e-3}
DENSITIES = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]


@dataclass
class AttnConfig:
    B: int
    H: int
    N: int
    D: int
    dtype: str = "float32"
    Hkv: Optional[int] = None  # None = H (no GQA)
    block_q: int = 64
    block_k: int = 64
    densities: List[float] = field(default_factory=lambda: list(DENSITIES))
    flex: bool = True  # time FlexAttention (full runs only)
    # Also time the backward (replayed on one forward's graph) against SDPA's backward; on by
    # default on CUDA only (a dense CPU backward round at the CPU shape takes tens of seconds).
    backward: bool = False
    err_blocks: int = 3  # query blocks checked against the float64 reference
    seed: int = 0
    # Timing plan: rounds fill about target_s per row, within [min_rounds, max_rounds].
    warmup: int = 1
    min_rounds: int = 5
    max_rounds: int = 30
    target_s: float = 10.0

    @property
    def hkv(self) -> int:
        return self.Hkv if self.Hkv is not None else self.H

    def label(self) -> str:
        heads = f"H{self.H}" if self.hkv == self.H else f"H{self.H}/{self.hkv}"
        return (
            f"B{self.B} {heads} N{self.N} D{self.D} {SHORT_DTYPE.get(self.dtype, self.dtype)} "
            f"{self.block_q}x{self.block_k}"
        )

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["Hkv"] = self.hkv
        d["label"] = self.label()
        return d


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
        cfg = dataclasses.replace(cfg, densities=[0.1, 0.5, 1.0], flex=False,
                                  min_rounds=3, max_rounds=5, target_s=0.5)
    return [cfg]


def apply_overrides(configs: List[AttnConfig], overrides: Optional[dict]) -> List[AttnConfig]:
    """Replaces fields of every config; values may be strings (from `--set KEY=VALUE`)."""
    return common.apply_overrides(configs, overrides, "attention", _coerce, cls=AttnConfig)


def _coerce(key: str, value, sample: Optional[AttnConfig]):
    if key == "dtype" and isinstance(value, str) and value not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {value!r}")
    return common.coerce_from_type(AttnConfig, key, value)


def random_block_mask(B: int, H: int, tq: int, tk: int, density: float, gen: torch.Generator) -> torch.Tensor:
    """Bool (B, H, tq, tk) with round(density * tk) (at least 1) key blocks in every row, so the
    measured density is the target up to rounding, and no query block is idle."""
    keep = min(tk, max(1, round(density * tk)))
    order = torch.rand(B, H, tq, tk, generator=gen).argsort(dim=-1)
    mask = torch.zeros(B, H, tq, tk, dtype=torch.bool)
    mask.scatter_(-1, order[..., :keep], True)
    return mask


def _block_lengths(n: int, b: int) -> torch.Tensor:
    """Tokens in each block of a length-n axis (the last block may be partial)."""
    t = math.ceil(n / b)
    lengths = torch.full((t,), b, dtype=torch.float64)
    if t:
        lengths[-1] = n - (t - 1) * b
    return lengths


def kept_flops(mask: torch.Tensor, cfg: AttnConfig, B: int, H: int) -> float:
    """Multiply-add FLOPs of QK^T and PV over the kept blocks only (the work floor of the kernel)."""
    rows = _block_lengths(cfg.N, cfg.block_q)
    cols = _block_lengths(cfg.N, cfg.block_k)
    per_head = (mask.double() * rows[:, None] * cols[None, :]).sum().item()
    scale = (B * H) / (mask.shape[0] * mask.shape[1])
    return 4.0 * cfg.D * per_head * scale


_rel_err = common.rel_err
_short = common.short_error


# ---- candidates -------------------------------------------------------------------------------


class _Flex:
    """Compiled FlexAttention for one configuration; one compile serves every density (the
    BlockMask tensors keep their shapes, only their contents change)."""

    def __init__(self, cfg: AttnConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.failed: Optional[str] = None
        self.variant: Optional[str] = None  # "full" or "partial" once one compiled
        self.compile_s: Optional[float] = None
        self.fn = None
        self.kernel_options = None
        self.note: Optional[str] = None  # why the preferred variant was not used, once
        try:
            from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
        except Exception as exc:
            self.failed = f"FlexAttention unavailable: {_short(exc)}"
            return
        self.fn = torch.compile(flex_attention, dynamic=False)
        if device.type == "cuda":
            # torch's default Triton tile (BLOCK_M=128 for half precision on sm80/sm90) must divide
            # the BlockMask block size; with 64-row blocks it does not, so ask for tiles that do.
            opts = {}
            if cfg.block_q % 128:
                opts["BLOCK_M"] = math.gcd(cfg.block_q, 128)
            if cfg.block_k % 64:
                opts["BLOCK_N"] = math.gcd(cfg.block_k, 64)
            self.kernel_options = opts or None

    def block_mask(self, mask: torch.Tensor, variant: str):
        """BlockMask from our block mask. Every selected block is unmasked inside, so "full" blocks
        (no mask_mod evaluated) are the fair FlexAttention setup; "partial" (noop mask_mod per
        element) is the fallback where the full-block kernel does not compile."""
        from torch.nn.attention.flex_attention import BlockMask

        counts = mask.sum(dim=-1, dtype=torch.int32)
        # FlexAttention reads kv_indices as a full (.., tq, tk) table: selected blocks first,
        # ascending, then the rest (never read past counts, but must be valid block ids).
        order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        counts, order = counts.to(self.device), order.to(self.device)
        bs = (self.cfg.block_q, self.cfg.block_k)
        seq = (self.cfg.N, self.cfg.N)
        if variant == "full":
            return BlockMask.from_kv_blocks(torch.zeros_like(counts), order, counts, order,
                                            BLOCK_SIZE=bs, seq_lengths=seq)
        return BlockMask.from_kv_blocks(counts, order, BLOCK_SIZE=bs, seq_lengths=seq)

    def candidate(self, q, k, v, scale, mask: torch.Tensor, status: Callable[[str], None]):
        """(callable, output) for this mask, compiling on first use; None when it cannot run."""
        import time

        if self.failed:
            return None
        gqa = q.shape[1] != k.shape[1]
        variants = [self.variant] if self.variant else ["full", "partial"]
        errors = []
        for variant in variants:
            try:
                bm = self.block_mask(mask, variant)
                kw = {"block_mask": bm, "scale": scale, "enable_gqa": gqa}
                if self.kernel_options:
                    kw["kernel_options"] = self.kernel_options

                def run(kw=kw):
                    return self.fn(q, k, v, **kw)

                if self.variant is None:
                    status(f"compiling FlexAttention ({variant} blocks)")
                t0 = time.perf_counter()
                out = run()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                if self.variant is None:
                    self.compile_s = time.perf_counter() - t0
                    self.variant = variant
                    if errors:
                        self.note = (f"FlexAttention with full blocks failed ({'; '.join(errors)}); "
                                     f"timed with {variant} blocks and a no-op mask_mod instead")
                return run, out
            except Exception as exc:
                errors.append(f"{variant} blocks: {_short(exc)}")
        self.failed = "FlexAttention skipped, compile/run failed: " + "; ".join(errors)
        return None


# ---- one configuration ----------------------------------------------------------------------------


def run_config(cfg: AttnConfig, device: torch.device, quick: bool, progress: Progress) -> List[dict]:
    """Rows (one per density) for one configuration."""
    import genaccel
    from genaccel.attention.block_sparse.reference import block_sparse_attention_reference

    dtype = DTYPES[cfg.dtype]
    B, H, Hkv, N, D = cfg.B, cfg.H, cfg.hkv, cfg.N, cfg.D
    bq, bk = cfg.block_q, cfg.block_k
    tq, tk = math.ceil(N / bq), math.ceil(N / bk)
    scale = 1.0 / math.sqrt(D)
    plan = TimingPlan(cfg.warmup, cfg.min_rounds, cfg.max_rounds, cfg.target_s)

    dev_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    q = torch.randn(B, H, N, D, device=device, dtype=dtype, generator=dev_gen)
    k = torch.randn(B, Hkv, N, D, device=device, dtype=dtype, generator=dev_gen)
    v = torch.randn(B, Hkv, N, D, device=device, dtype=dtype, generator=dev_gen)
    grad_out = torch.randn(B, H, N, D, device=device, dtype=dtype, generator=dev_gen) if cfg.backward else None
    mask_gen = torch.Generator().manual_seed(cfg.seed + 1)

    sdpa_fn, sdpa_backend, sdpa_note, sdpa_default = common.sdpa_candidate(q, k, v, scale, device, dtype)
    flex = _Flex(cfg, device) if (cfg.flex and not quick) else None
    dense_flops = 4.0 * B * H * N * N * D

    err_blocks, err_rows = common.reference_query_blocks(tq, bq, N, cfg.err_blocks, mask_gen)
    err_rows = err_rows.to(device)

    rows = []
    for density in cfg.densities:
        progress.status(f"{cfg.label()} density {density:g}")
        row: dict = {
            "config": cfg.label(),
            "density_target": density,
            "sdpa_backend": sdpa_backend,
            "notes": [sdpa_note] if sdpa_note else [],
            "timings": {},
        }
        mask_cpu = random_block_mask(B, H, tq, tk, density, mask_gen)
        mask = mask_cpu.to(device)
        row["density"] = mask_cpu.float().mean().item()
        row["kept_blocks"] = int(mask_cpu.sum())
        row["total_blocks"] = mask_cpu.numel()
        flops = kept_flops(mask_cpu, cfg, B, H)
        row["ideal_speedup"] = dense_flops / flops if flops > 0 else None

        candidates: Dict[str, Callable] = {"sdpa": sdpa_fn}
        if sdpa_default is not None:
            candidates["sdpa_default"] = sdpa_default
        ours_out = None
        try:
            kv_indices, kv_counts = genaccel.block_mask_to_indices(mask)
            row["plan_ms"] = time_median(lambda: genaccel.block_mask_to_indices(mask), device)
            op = torch.ops.genaccel.block_sparse_attn_fwd

            def ours(kv_indices=kv_indices, kv_counts=kv_counts):
                return op(q, k, v, kv_indices, kv_counts, bq, bk, scale)

            ours_out = ours()[0]
            candidates["genaccel"] = ours
        except Exception as exc:
            row["error"] = _short(exc, 300)

        flex_out = None
        if flex is not None:
            got = flex.candidate(q, k, v, scale, mask, progress.status)
            if got is not None:
                candidates["flex"], flex_out = got
                row["flex_variant"] = flex.variant
                if flex.note:
                    row["notes"].append(flex.note)
                    flex.note = None
                if flex.kernel_options:
                    row["flex_kernel_options"] = flex.kernel_options
                if flex.compile_s is not None and not any(r.get("flex_compile_s") for r in rows):
                    row["flex_compile_s"] = round(flex.compile_s, 2)
            else:
                row["notes"].append(flex.failed)

        progress.status(f"{cfg.label()} density {density:g}: timing {', '.join(candidates)}")
        timings = time_interleaved(candidates, device, plan)
        row["timings"] = {name: t.as_dict() for name, t in timings.items()}
        sdpa_ms = timings["sdpa"].median_ms
        row["sdpa_ms"] = sdpa_ms
        row["sdpa_tflops"] = dense_flops / sdpa_ms / 1e9
        if "genaccel" in timings:
            ms = timings["genaccel"].median_ms
            row["genaccel_ms"] = ms
            row["speedup_vs_sdpa"] = sdpa_ms / ms
            row["fraction_of_ideal"] = row["speedup_vs_sdpa"] / row["ideal_speedup"] if row["ideal_speedup"] else None
            row["genaccel_tflops"] = flops / ms / 1e9  # on kept blocks only
        common.record_sdpa_default(row, timings)
        if "flex" in timings:
            row["flex_ms"] = timings["flex"].median_ms
            row["flex_speedup_vs_sdpa"] = sdpa_ms / row["flex_ms"]
            if "genaccel_ms" in row:
                row["speedup_vs_flex"] = row["flex_ms"] / row["genaccel_ms"]

        if cfg.backward and "genaccel" in timings:
            progress.status(f"{cfg.label()} density {density:g}: timing the backward")
            time_backward(row, q, k, v, grad_out, mask, (bq, bk), scale, device, dtype, plan)

        # Correctness on the sampled query blocks. The float64 reference depends on the mask, so it
        # is computed per density; it runs after timing so it cannot disturb the caches timed.
        if ours_out is not None or flex_out is not None:
            progress.status(f"{cfg.label()} density {density:g}: float64 reference")
            ref, _ = block_sparse_attention_reference(
                q[:, :, err_rows], k, v, mask[:, :, err_blocks], (bq, bk), scale)
            row["rel_err_tol"] = REL_TOL[cfg.dtype]
            row["rel_err_query_blocks"] = err_blocks
            if ours_out is not None:
                row["rel_err"] = _rel_err(ours_out[:, :, err_rows], ref)
                row["rel_err_ok"] = bool(row["rel_err"] <= REL_TOL[cfg.dtype])
            if flex_out is not None:
                row["flex_rel_err"] = _rel_err(flex_out[:, :, err_rows], ref)
            del ref
        del ours_out, flex_out
        rows.append(row)
        progress.advance()
        progress.write(format_row(row))
    return rows


def time_backward(row: dict, q, k, v, grad_out, mask, block_size, scale, device, dtype, plan: TimingPlan) -> None:
    """Adds bwd_* fields to the row: the backward of one forward's graph replayed (gradients of q,
    k, v), genaccel.block_sparse_attention against SDPA's backward (flash on CUDA, and torch's
    default backend beside it), interleaved."""
    import genaccel

    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    sdpa, _, _, sdpa_default = common.sdpa_candidate(*leaves, scale, device, dtype)
    candidates = {"sdpa": common.gradients(sdpa, leaves, grad_out, True),
                  "genaccel": common.gradients(lambda: genaccel.block_sparse_attention(
                      *leaves, mask, block_size, scale=scale), leaves, grad_out, True)}
    if sdpa_default is not None:
        candidates["sdpa_default"] = common.gradients(sdpa_default, leaves, grad_out, True)
    timings = time_interleaved(candidates, device, plan)
    row["bwd_timings"] = {name: t.as_dict() for name, t in timings.items()}
    row["bwd_sdpa_ms"] = timings["sdpa"].median_ms
    row["bwd_genaccel_ms"] = timings["genaccel"].median_ms
    row["bwd_speedup_vs_sdpa"] = row["bwd_sdpa_ms"] / row["bwd_genaccel_ms"]
    if "sdpa_default" in timings:
        row["bwd_sdpa_default_ms"] = timings["sdpa_default"].median_ms
        row["bwd_speedup_vs_sdpa_default"] = row["bwd_sdpa_default_ms"] / row["bwd_genaccel_ms"]


# ---- output -----------------------------------------------------------------------------------------

_COLUMNS = [
    # (header, width, formatter of a row)
    ("config", 30, lambda r: r["config"]),
    ("density", 7, lambda r: f"{r['density']:.3f}"),
    ("plan ms", 8, lambda r: _f(r.get("plan_ms"), ".2f")),
    ("sdpa ms", 9, lambda r: _f(r.get("sdpa_ms"), ".2f")),
    ("ours ms", 9, lambda r: _f(r.get("genaccel_ms"), ".2f")),
    ("vs sdpa", 7, lambda r: _f(r.get("speedup_vs_sdpa"), ".2f", "x")),
    ("vs dflt", 7, lambda r: _f(r.get("speedup_vs_sdpa_default"), ".2f", "x")),
    ("ideal", 6, lambda r: _f(r.get("ideal_speedup"), ".1f", "x")),
    ("%ideal", 6, lambda r: _f(None if r.get("fraction_of_ideal") is None else 100 * r["fraction_of_ideal"], ".0f", "%")),
    ("flex ms", 9, lambda r: _f(r.get("flex_ms"), ".2f")),
    ("vs flex", 7, lambda r: _f(r.get("speedup_vs_flex"), ".2f", "x")),
    ("bwd ms", 8, lambda r: _f(r.get("bwd_genaccel_ms"), ".2f")),
    ("bwd vs", 7, lambda r: _f(r.get("bwd_speedup_vs_sdpa"), ".2f", "x")),
    ("rel err", 9, lambda r: _f(r.get("rel_err"), ".1e") + ("!" if r.get("rel_err_ok") is False else "")),
]


_f = common.fmt


def format_header() -> str:
    return common.format_header(_COLUMNS)


def format_row(row: dict) -> str:
    return common.format_row(_COLUMNS, row)


def plot(rows: List[dict], env: dict, path: str) -> Optional[str]:
    """Speedup over dense SDPA against density, log-log, with the ideal 1/density line. Returns a
    note instead of raising when matplotlib is missing (GPU machines may not have it)."""
    plt = common.pyplot()
    if plt is None:
        return common.NO_MATPLOTLIB

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    all_d = [r["density"] for r in rows if r.get("density")]
    if all_d:
        lo, hi = min(all_d), max(all_d)
        xs = [lo * (hi / lo) ** (i / 50) for i in range(51)] if hi > lo else [lo]
        ax.plot(xs, [1 / x for x in xs], "k--", lw=1, label="ideal (1/density)")
    ax.axhline(1.0, color="0.6", lw=1, ls=":", label="dense SDPA")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, cfg in enumerate(configs):
        rs = [r for r in rows if r["config"] == cfg]
        tag = f" ({cfg})" if len(configs) > 1 else ""
        c = colors[(2 * i) % len(colors)]
        ours = [(r["density"], r["speedup_vs_sdpa"]) for r in rs if r.get("speedup_vs_sdpa")]
        if ours:
            ax.plot(*zip(*ours), "o-", color=c, label=f"genaccel{tag}")
            for d, s in ours:
                ax.annotate(f"{s:.2f}x", (d, s), textcoords="offset points", xytext=(5, -12), fontsize=8, color=c)
        flex = [(r["density"], r["flex_speedup_vs_sdpa"]) for r in rs if r.get("flex_speedup_vs_sdpa")]
        if flex:
            ax.plot(*zip(*flex), "s-", color=colors[(2 * i + 1) % len(colors)], label=f"FlexAttention{tag}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("block density (fraction of key blocks kept)")
    ax.set_ylabel("speedup over dense SDPA")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)
    from matplotlib.ticker import FuncFormatter

    # Plain-number ticks at the densities people quote; log axes alone label only decades.
    if all_d:
        ax.set_xlim(lo / 1.3, hi * 1.3)
        ax.set_xticks([t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0) if lo / 1.3 <= t <= hi * 1.3])
    y0, y1 = ax.get_ylim()
    ax.set_yticks([t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if y0 <= t <= y1])
    fmt = FuncFormatter(lambda x, _: f"{x:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    sub = configs[0] if len(configs) == 1 else f"{len(configs)} configs"
    ax.set_title(
        f"Block-sparse attention, {env.get('device_name', '?')}\n{sub}, torch {env.get('torch_version', '?')}, "
        f"{env.get('torch_num_threads', '?')} threads",
        fontsize=10,
    )
    common.save_figure(fig, path)
    return None


def run(device: torch.device, quick: bool, overrides: Optional[dict], progress_factory, out) -> Tuple[List[dict], List[dict], List[str]]:
    """The family entry used by genaccel.benchmarks.run_bench: returns (configs, rows, notes)."""
    import genaccel

    notes = []
    if device.type == "cuda" and not genaccel.has_cuda_kernels():
        notes.append("genaccel was built without CUDA kernels: its rows will show the error; "
                     "rebuild with GENACCEL_CUDA=ON")
    if quick:
        notes.append("--quick: small sizes, few repeats, FlexAttention skipped")
    configs = apply_overrides(default_configs(device.type, quick), overrides)
    total = sum(len(c.densities) for c in configs)
    progress = progress_factory(total, "attention")
    for n in notes:
        progress.write(f"note: {n}")
    progress.write(format_header())
    rows: List[dict] = []
    try:
        with torch.no_grad():
            for cfg in configs:
                rows.extend(run_config(cfg, device, quick, progress))
                flex_notes = {n for r in rows if r["config"] == cfg.label() for n in r["notes"]}
                for n in sorted(flex_notes):
                    progress.write(f"note ({cfg.label()}): {n}")
    finally:
        progress.close()
    return [c.as_dict() for c in configs], rows, notes


def failures(rows: List[dict]) -> List[str]:
    """Why the run should exit non-zero: the op raised, or was wrong."""
    bad = []
    for r in rows:
        where = f"{r['config']} density {r['density']:.3f}"
        if r.get("error"):
            bad.append(f"{where}: genaccel raised: {r['error']}")
        elif r.get("rel_err_ok") is False:
            bad.append(f"{where}: rel err {r['rel_err']:.2e} above {r['rel_err_tol']:.0e}")
    return bad
