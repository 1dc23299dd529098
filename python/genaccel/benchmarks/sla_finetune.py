"""SLA fine-tuning experiment: does SLA's learned linear branch recover what 95% sparsity loses?

A small pre-norm attention stack (`layers` x [LayerNorm -> q, k, v projections -> attention -> out
projection -> residual]) with frozen random weights runs on video-like inputs: tokens laid out as
frames x height x width, carrying smooth random fields over (t, h, w) plus a fixed positional code,
so attention has spatio-temporal locality the way a video DiT's does. The query and key projections
share a common random part, so q_i . k_j is large for similar tokens and similar tokens are near in
space-time: attention is local but far from one-hot, leaving real mass outside the few exact blocks.

  teacher      = the stack with dense SDPA;
  sparse-only  = every attention is block-sparse attention over SLA's critical blocks (topk 0.05);
  SLA          = every attention is genaccel.nn.SparseLinearAttention at the same topk; only the
                 SLA projections train (Adam), fitting the teacher's outputs on training inputs.

SLA with its zero-initialised projection computes exactly sparse-only attention, so "SLA untrained"
and "sparse-only" must coincide (both are reported as a check). The metric is the relative L2 error
of the stack output against the teacher's on held-out inputs, taken on the attention part of the
output (y - x, the residual stream's input cancels out of both and would otherwise hide the error
behind the input's norm); the error of the full output y is reported next to it.

What to expect: per query, dense attention is a O^s + (1 - a) O^m (a = the attention mass on the
critical blocks, O^m the average over the rest), so sparse-only misses (1 - a)(O^m - O^s). With q, k,
v frozen the projections can only add a linear map of O^l, which carries (part of) O^m but not the
-(1 - a) O^s term, so training them alone recovers a few percent of the error at most. The summary
reports that bound (an in-sample least-squares fit per layer) next to the trained result. The paper
fine-tunes the whole model, and its maintainers say the projection alone is not enough
(TurboDiffusion#117); this experiment isolates the projections, as the issue asks.

Runs as `genaccel bench --family sla-finetune` (rows = the points of the curve) and as
`bench/sla_finetune.py` (see `main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..testing import rel_err
from . import plotting
from .registry import Benchmark, choice, column, format_cells, format_header, register


@dataclass
class FinetuneConfig:
    frames: int = 16
    height: int = 16
    width: int = 16  # 16x16x16 = 4096 tokens: 64 blocks of 64, topk 0.05 -> 3 critical per row
    tile: int = 4  # token order: 4x4x4 space-time cubes (one 64-token block each); 0 = raster
    layers: int = 2
    heads: int = 2
    head_dim: int = 32
    block: int = 64
    topk: float = 0.05
    low_k: float = 0.10
    feature_map: str = "softmax"
    qk_gain: float = 4.0  # scales the logits: sets how peaked the teacher's attention is
    qk_shared: float = 3.0  # weight of the part shared by Wq and Wk (locality) vs their own noise
    pos_scale: float = 1.0  # weight of the positional code against the smooth content field
    pos_len: float = 2.0  # length scale (tokens) over which positional similarity decays
    field_modes: int = 8  # low-frequency sinusoids per input field
    n_eval: int = 4
    batch: int = 4
    steps: int = 200
    lr: float = 3e-3
    eval_every: int = 10
    seed: int = 0
    # "proj": only SLA's projections train (q, k, v, o frozen), against the frozen sparse-only stack.
    # "model": the paper's setting: the whole student trains (its q, k, v, o weights start from the
    # teacher's), SLA's with its projections, and a sparse-only student is fine-tuned on the same
    # batches as the baseline it must beat.
    train: str = choice("proj", ("proj", "model"))

    @property
    def tokens(self) -> int:
        return self.frames * self.height * self.width

    def label(self) -> str:
        return (f"L{self.layers} H{self.heads} D{self.head_dim} {self.frames}x{self.height}x{self.width} "
                f"N{self.tokens} b{self.block} topk{self.topk:g} train={self.train}")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tokens"] = self.tokens
        d["label"] = self.label()
        return d


def default_config(quick: bool) -> FinetuneConfig:
    if quick:
        # 8x16x16 = 2048 tokens, 32 blocks: topk 0.05 still keeps 1 block of 32 (97% sparse).
        return FinetuneConfig(frames=8, n_eval=2, steps=60, eval_every=10)
    return FinetuneConfig()


# ---- data and the frozen stack -------------------------------------------------------------------


def _grid(cfg: FinetuneConfig) -> torch.Tensor:
    """(N, 3) coordinates (t, h, w) in [0, 1), in token order. With tile > 0 the tokens are ordered
    tile by tile (tile^3 tokens per t x h x w cube, cubes in raster order), as video sparse-attention
    methods do so that one attention block is a compact space-time cube; with tile 0 in raster order
    (frame-major, then rows, then columns), where a 64-token block is a thin strip of one frame."""
    t, h, w = torch.meshgrid(torch.arange(cfg.frames) / cfg.frames, torch.arange(cfg.height) / cfg.height,
                             torch.arange(cfg.width) / cfg.width, indexing="ij")
    grid = torch.stack([t, h, w], dim=-1).double()
    if cfg.tile:
        s = cfg.tile
        grid = grid.view(cfg.frames // s, s, cfg.height // s, s, cfg.width // s, s, 3).permute(0, 2, 4, 1, 3, 5, 6)
    return grid.reshape(-1, 3)


def _positional(cfg: FinetuneConfig, width: int, gen: torch.Generator) -> torch.Tensor:
    """(N, width) fixed positional code whose dot products decay with space-time distance: random
    Fourier features, pos_i . pos_j / width ~ exp(-|p_i - p_j|^2 / (2 pos_len^2)) with p in token
    units (frame, row, column). Shared by Wq and Wk, this is what makes attention local."""
    p = _grid(cfg) * torch.tensor([cfg.frames, cfg.height, cfg.width], dtype=torch.float64)
    omega = torch.randn(3, width, generator=gen, dtype=torch.float64) / cfg.pos_len
    phase = 2 * math.pi * torch.rand(width, generator=gen, dtype=torch.float64)
    return (math.sqrt(2.0) * torch.cos(p @ omega + phase)).float()


def smooth_fields(cfg: FinetuneConfig, count: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """(count, N, width) smooth random fields over (t, h, w): sums of `field_modes` plane waves with
    integer frequencies 0..2 per axis (periodic, low frequency) and random phases and amplitudes."""
    grid = _grid(cfg)
    out = torch.zeros(count, grid.shape[0], width, dtype=torch.float64)
    for m in range(cfg.field_modes):
        freq = torch.randint(0, 3, (count, 1, 3), generator=gen).double()
        phase = 2 * math.pi * torch.rand(count, 1, 1, generator=gen, dtype=torch.float64)
        amp = torch.randn(count, 1, width, generator=gen, dtype=torch.float64)
        wave = torch.cos(2 * math.pi * (grid[None] * freq).sum(-1, keepdim=True) + phase)
        out += wave * amp
    return (out / out.std(dim=1, keepdim=True).clamp_min(1e-6)).float()


class FrozenStack(torch.nn.Module):
    """Pre-norm attention stack with frozen random weights; `attention(layer, q, k, v)` is swapped
    between teacher, sparse-only and SLA, everything else is shared."""

    def __init__(self, cfg: FinetuneConfig, gen: torch.Generator):
        super().__init__()
        self.cfg = cfg
        c = cfg.heads * cfg.head_dim
        self.width = c

        def rand(*shape):
            return torch.randn(*shape, generator=gen) / math.sqrt(shape[0])

        wq, wk, wv, wo = [], [], [], []
        for _ in range(cfg.layers):
            shared = rand(c, c)
            # Normalised so q and k have unit-variance entries whatever the mixing weights.
            norm = math.sqrt(cfg.qk_shared ** 2 + 1.0)
            wq.append((cfg.qk_shared * shared + rand(c, c)) / norm)
            wk.append((cfg.qk_shared * shared + rand(c, c)) / norm)
            wv.append(rand(c, c))
            wo.append(rand(c, c))
        for name, ws in (("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo)):
            self.register_buffer(name, torch.stack(ws))  # buffers: frozen, never in parameters()

    def student_weights(self) -> torch.nn.ParameterDict:
        """Trainable copies of the frozen weights (a student fine-tuned from the teacher)."""
        return torch.nn.ParameterDict({n: torch.nn.Parameter(getattr(self, n).clone()) for n in ("wq", "wk", "wv", "wo")})

    def forward(self, x: torch.Tensor, attention, weights=None) -> torch.Tensor:
        """weights: a student_weights() dict to run with instead of the frozen ones."""
        B, N, C = x.shape
        H, D = self.cfg.heads, self.cfg.head_dim
        w = weights if weights is not None else {n: getattr(self, n) for n in ("wq", "wk", "wv", "wo")}
        for layer in range(self.cfg.layers):
            h = torch.nn.functional.layer_norm(x, (C,))

            def heads(m):
                return (h @ m).view(B, N, H, D).transpose(1, 2)

            # qk_gain folded into q: the logits are q.k / sqrt(D) in every attention variant.
            q = heads(w["wq"][layer]) * self.cfg.qk_gain
            o = attention(layer, q, heads(w["wk"][layer]), heads(w["wv"][layer]))
            x = x + o.transpose(1, 2).reshape(B, N, C) @ w["wo"][layer]
        return x


def make_inputs(cfg: FinetuneConfig, count: int, width: int, gen: torch.Generator, pos: torch.Tensor) -> torch.Tensor:
    return smooth_fields(cfg, count, width, gen) + cfg.pos_scale * pos


# ---- the experiment --------------------------------------------------------------------------------


def _errors(y: torch.Tensor, teacher: torch.Tensor, x: torch.Tensor) -> Tuple[float, float]:
    """(error of the attention part y - x, error of the full output y), relative to the teacher."""
    return rel_err(y - x, teacher - x), rel_err(y, teacher)


def run_experiment(cfg: FinetuneConfig, device: torch.device, progress) -> Tuple[List[dict], dict]:
    """Returns (rows, summary). Rows: one "sparse-only" and one "sla-untrained" at step 0, then one
    "sla" row per evaluation (step 0 included) with train loss and held-out errors."""
    import genaccel
    from genaccel.nn import SparseLinearAttention

    F = torch.nn.functional
    gen = torch.Generator().manual_seed(cfg.seed)
    stack = FrozenStack(cfg, gen).to(device)
    pos = _positional(cfg, stack.width, gen)
    x_eval = make_inputs(cfg, cfg.n_eval, stack.width, gen, pos).to(device)
    bs = (cfg.block, cfg.block)

    def dense(layer, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    def sparse_only(layer, q, k, v):
        codes, _, _ = genaccel.sla_block_map(q, k, cfg.topk, cfg.low_k, bs)
        return genaccel.block_sparse_attention(q, k, v, codes == 1, bs)

    slas = torch.nn.ModuleList(
        SparseLinearAttention(cfg.head_dim, cfg.topk, cfg.low_k, bs, cfg.feature_map) for _ in range(cfg.layers)
    ).to(device)

    def sla(layer, q, k, v):
        return slas[layer](q, k, v)

    stats = {}

    def dense_with_stats(layer, q, k, v):
        # How much of the teacher's attention mass SLA's critical blocks hold (what sparse-only keeps).
        codes, _, _ = genaccel.sla_block_map(q, k, cfg.topk, cfg.low_k, bs)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim), dim=-1)
        from genaccel.attention.block_sparse.reference import expand_block_mask

        crit = expand_block_mask(codes == 1, q.shape[2], k.shape[2], bs)
        stats.setdefault("critical_mass", []).append((probs * crit).sum(-1).mean().item())
        stats.setdefault("critical_fraction", []).append((codes == 1).float().mean().item())
        # What a projection could recover at this layer at best: least squares of what sparse-only
        # misses (O - O^s) on [O^l, 1], one D x D map shared by the heads as in SLA, O^l being SLA's
        # linear branch (identity projection minus the sparse part). Fitted in-sample on these very
        # inputs (on the teacher's activations), so an optimistic bound for training the projections
        # alone: a projection trained on other inputs cannot do better here.
        out = dense(layer, q, k, v)
        out_s = genaccel.block_sparse_attention(q, k, v, codes == 1, bs)
        out_l = genaccel.sparse_linear_attention(q, k, v, None, None, cfg.topk, cfg.low_k, bs, cfg.feature_map) - out_s
        X = out_l.reshape(-1, cfg.head_dim).double()
        X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1)
        Y = (out - out_s).reshape(-1, cfg.head_dim).double()
        fit = X @ torch.linalg.lstsq(X.cpu(), Y.cpu()).solution.to(X.device)
        stats.setdefault("proj_lstsq_residual", []).append(rel_err(fit, Y))
        return out

    progress.status("teacher")
    with torch.no_grad():
        stack(x_eval[:2], dense_with_stats)
        y_eval = torch.cat([stack(x_eval[i : i + 1], dense) for i in range(cfg.n_eval)])
        ref_sparse = torch.cat([stack(x_eval[i : i + 1], sparse_only) for i in range(cfg.n_eval)])

    def evaluate(attention, weights=None) -> Tuple[float, float]:
        with torch.no_grad():
            y = torch.cat([stack(x_eval[i : i + 1], attention, weights) for i in range(cfg.n_eval)])
        return _errors(y, y_eval, x_eval)

    rows: List[dict] = []
    err_s, err_s_out = _errors(ref_sparse, y_eval, x_eval)
    rows.append({"curve": "sparse-only", "step": 0, "rel_err": err_s, "rel_err_output": err_s_out})
    progress.write(format_row(rows[-1]))
    err_u, err_u_out = evaluate(sla)
    rows.append({"curve": "sla-untrained", "step": 0, "rel_err": err_u, "rel_err_output": err_u_out})
    progress.write(format_row(rows[-1]))

    # The students trained side by side on the same batches: (curve, attention, weights, parameters).
    if cfg.train == "proj":
        students = [("sla", sla, None, list(slas.parameters()))]
    elif cfg.train == "model":
        w_sparse, w_sla = stack.student_weights(), stack.student_weights()
        students = [("sparse-only-ft", sparse_only, w_sparse, list(w_sparse.parameters())),
                    ("sla", sla, w_sla, list(w_sla.parameters()) + list(slas.parameters()))]
    else:
        raise ValueError(f"train must be 'proj' or 'model', got {cfg.train!r}")
    for curve, *_ in students:
        start = rows[0] if curve == "sparse-only-ft" else rows[1]
        rows.append(dict(start, curve=curve, train_loss=None, elapsed_s=0.0))
    opts = [torch.optim.Adam(params, lr=cfg.lr) for *_, params in students]
    # Cosine decay to zero: the gain over sparse-only is a few percent, so the last steps must not
    # be dominated by the noise of fresh minibatches at full learning rate.
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
              for o in opts]
    # Fresh training inputs every step (teacher outputs computed on the fly): a fixed small training
    # set lets the students fit its particular fields, which raises the held-out error.
    data_gen = torch.Generator().manual_seed(cfg.seed + 1)
    t0 = time.perf_counter()
    losses: List[List[float]] = [[] for _ in students]
    for step in range(1, cfg.steps + 1):
        xb = make_inputs(cfg, cfg.batch, stack.width, data_gen, pos).to(device)
        with torch.no_grad():
            yb = stack(xb, dense)
        for (curve, attention, weights, _), opt, sched, hist in zip(students, opts, scheds, losses):
            y = stack(xb, attention, weights)
            # Squared relative error of the attention part, the square of the reported metric.
            loss = (y - yb).pow(2).sum() / (yb - xb).pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hist.append(loss.item())
        progress.advance()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            for (curve, attention, weights, _), hist in zip(students, losses):
                err, err_out = evaluate(attention, weights)
                rows.append({"curve": curve, "step": step, "rel_err": err, "rel_err_output": err_out,
                             "train_loss": sum(hist) / len(hist), "elapsed_s": time.perf_counter() - t0})
                hist.clear()
                progress.write(format_row(rows[-1]))

    final = next(r for r in reversed(rows) if r["curve"] == "sla")
    summary = {
        "train": cfg.train,
        "sparse_only_rel_err": err_s,
        "sla_untrained_rel_err": err_u,
        "sla_trained_rel_err": final["rel_err"],
        "sla_trained_step": final["step"],
        "untrained_matches_sparse_only": abs(err_u - err_s) <= 1e-5 * max(err_s, 1e-12) + 1e-7,
        "trained_beats_sparse_only": final["rel_err"] < err_s,
        "error_reduction": 1.0 - final["rel_err"] / err_s if err_s > 0 else None,
        "teacher_critical_mass": stats.get("critical_mass"),
        "critical_fraction": stats.get("critical_fraction"),
        "proj_lstsq_residual": stats.get("proj_lstsq_residual"),
        "train_s": time.perf_counter() - t0,
    }
    if cfg.train == "model":
        ft = next(r for r in reversed(rows) if r["curve"] == "sparse-only-ft")
        summary["sparse_only_ft_rel_err"] = ft["rel_err"]
        summary["trained_beats_sparse_only_ft"] = final["rel_err"] < ft["rel_err"]
        summary["error_reduction_vs_sparse_only_ft"] = 1.0 - final["rel_err"] / ft["rel_err"] if ft["rel_err"] > 0 else None
    return rows, summary


# ---- output -----------------------------------------------------------------------------------------

COLUMNS = [
    column("curve", 14, "curve"),
    column("step", 5, "step"),
    column("rel err (y-x)", 13, "rel_err", ".4f"),
    column("rel err (y)", 11, "rel_err_output", ".5f"),
    column("train loss", 10, "train_loss", ".5f"),
    column("time s", 7, "elapsed_s", ".1f"),
]


def format_row(row: dict) -> str:
    return format_cells(COLUMNS, row)


def plot(rows: List[dict], env: dict, path: str) -> Optional[str]:
    """Held-out error against training step for SLA (and the fine-tuned sparse-only student with
    train=model), with the frozen sparse-only error as a horizontal line."""
    plt = plotting.pyplot()
    if plt is None:
        return plotting.NO_MATPLOTLIB

    def points(name):
        return [(r["step"], r["rel_err"]) for r in rows if r["curve"] == name and r.get("rel_err") is not None]

    curve, curve_ft = points("sla"), points("sparse-only-ft")
    sparse = [r["rel_err"] for r in rows if r["curve"] == "sparse-only"]
    model = bool(curve_ft)
    if not curve:
        return "no SLA rows: no plot written"
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    ax.plot(*zip(*curve), "o-", ms=3, label="SLA (whole student trained)" if model else "SLA (trained projections)")
    if model:
        ax.plot(*zip(*curve_ft), "s-", ms=3, color="C2", label="sparse-only (whole student trained)")
        ax.annotate(f"{curve_ft[-1][1]:.3f}", curve_ft[-1], textcoords="offset points", xytext=(-10, 8), fontsize=8)
    if sparse:
        ax.axhline(sparse[0], color="C3", ls="--", label=f"sparse-only = SLA untrained ({sparse[0]:.3f})")
    ax.annotate(f"{curve[-1][1]:.3f}", curve[-1], textcoords="offset points", xytext=(-10, 8), fontsize=8)
    ax.set_xlabel("training step (Adam on the whole student)" if model else "training step (Adam on the SLA projections only)")
    ax.set_ylabel("held-out rel. L2 error vs dense teacher (attention part)")
    # No zero baseline: the gain is a few percent of the error and would be invisible on [0, max].
    ax.margins(y=0.25)
    ax.grid(True, alpha=0.3)
    ax.legend()
    label = next((r.get("config") for r in rows if r.get("config")), "")
    base = curve_ft[-1][1] if model else (sparse[0] if sparse else None)
    change = f", {100 * (curve[-1][1] / base - 1):+.2f}% vs sparse-only{' fine-tuned' if model else ''}" if base else ""
    what = "whole student" if model else "projections only"
    ax.set_title(f"SLA fine-tuning ({what}), random attention stack teacher{change}\n{label}, "
                 f"{env.get('device_name', '?')} (y axis zoomed)", fontsize=9)
    plotting.save_figure(fig, path)
    return None


def experiment(configs: List[FinetuneConfig], run) -> List[dict]:
    """The runner's custom run (a training curve, not a timing sweep): rows of the curve, then a
    "summary" row (not in the table); the summary is also the last note."""
    (cfg,) = configs
    if cfg.tokens // cfg.block * cfg.topk < 1:
        run.notes.append(f"topk {cfg.topk:g} of {math.ceil(cfg.tokens / cfg.block)} blocks rounds below one "
                         "block: SLA keeps one critical block per row")
    run.write(f"{cfg.label()}: fresh training inputs each step, {cfg.n_eval} held-out, {cfg.steps} steps, "
              f"Adam lr {cfg.lr:g}, batch {cfg.batch}")
    run.write(format_header(COLUMNS))
    rows, summary = run_experiment(cfg, run.device, run.progress)
    run.progress.close()
    for r in rows:
        r["config"] = cfg.label()
    mass = summary["teacher_critical_mass"]
    note = (
        f"sparse-only {summary['sparse_only_rel_err']:.4f}, SLA untrained {summary['sla_untrained_rel_err']:.4f}, "
        f"SLA after {summary['sla_trained_step']} steps {summary['sla_trained_rel_err']:.4f} "
        f"(error {-100 * (summary['error_reduction'] or 0):+.2f}% vs sparse-only); teacher attention mass on "
        f"the critical blocks per layer (held-out inputs 1-2): {', '.join(f'{m:.2f}' for m in mass or [])}; "
        f"best in-sample least-squares projection per layer leaves "
        f"{', '.join(f'{100 * r:.1f}%' for r in summary['proj_lstsq_residual'] or [])} of the sparse-only "
        "attention error (an optimistic bound on what training the projections alone can recover)"
    )
    if cfg.train == "model":
        note += (f"; sparse-only fine-tuned on the same batches {summary['sparse_only_ft_rel_err']:.4f} "
                 f"(SLA {-100 * (summary['error_reduction_vs_sparse_only_ft'] or 0):+.2f}% vs it)")
    run.notes.append(note)
    print(f"summary: {note}", file=run.out, flush=True)
    rows.append(dict(summary, curve="summary", step=summary["sla_trained_step"], config=cfg.label()))
    return rows


def failures(rows: List[dict]) -> List[str]:
    """The experiment's claims: untrained SLA is sparse-only, and trained SLA beats it."""
    bad = []
    summary = next((r for r in rows if r["curve"] == "summary"), None)
    if summary is None:
        return bad
    if not summary["untrained_matches_sparse_only"]:
        bad.append(f"SLA untrained ({summary['sla_untrained_rel_err']:.6f}) differs from sparse-only "
                   f"({summary['sparse_only_rel_err']:.6f}): a zero projection must change nothing")
    if summary.get("trained_beats_sparse_only_ft") is False:
        bad.append(f"SLA after {summary['sla_trained_step']} steps ({summary['sla_trained_rel_err']:.4f}) does not beat "
                   f"sparse-only fine-tuned the same way ({summary['sparse_only_ft_rel_err']:.4f})")
    if not summary["trained_beats_sparse_only"]:
        bad.append(f"SLA after {summary['sla_trained_step']} steps ({summary['sla_trained_rel_err']:.4f}) does not beat "
                   f"sparse-only ({summary['sparse_only_rel_err']:.4f})")
    for r in rows:
        if r["curve"] != "summary" and not math.isfinite(r.get("rel_err") or float("nan")):
            bad.append(f"{r['curve']} step {r['step']}: non-finite error")
    return bad


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`bench/sla_finetune.py`: the experiment with its own flags, through run_bench so the JSON has
    the same schema and environment record as every `genaccel bench` family."""
    import sys

    from .registry import BenchError, parse_sets, run_bench

    p = argparse.ArgumentParser(prog="sla_finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, help="training steps (default 200, --quick 60)")
    p.add_argument("--json", metavar="FILE", help="write environment, config, curve and summary as JSON")
    p.add_argument("--plot", metavar="FILE", help="write the error curve as PNG (needs matplotlib)")
    p.add_argument("--quick", action="store_true", help="smaller stack input and fewer steps (~1.5 min on 2 cores)")
    p.add_argument("--seed", type=int, help="seed of weights, inputs and batch order (default 0)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override any config field, e.g. --set lr=3e-3 --set layers=3 (keys: "
                   + " ".join(f.name for f in dataclasses.fields(FinetuneConfig)) + ")")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        overrides = parse_sets(args.set)
        overrides.update({k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None})
        return run_bench("sla-finetune", device=args.device, quick=args.quick, json_path=args.json,
                         plot_path=args.plot, overrides=overrides, progress=False if args.no_progress else None)
    except (BenchError, ValueError) as exc:
        print(f"sla_finetune: {exc}", file=sys.stderr)
        return 2


BENCHMARK = register(Benchmark(
    name="sla-finetune",
    description="SLA student vs dense teacher on a frozen attention stack: error before/after training",
    config=FinetuneConfig,
    configs=lambda device, quick: [default_config(quick)],
    experiment=experiment,
    count=lambda cfg: cfg.steps,
    needs_ops=("sla_fwd", "sla_bwd"),
    failures=failures,
    plot=plot,
    columns=COLUMNS,
))
