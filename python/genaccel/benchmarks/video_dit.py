"""Video DiT end to end: a random-weight diffusers WanTransformer3DModel's forward with the stock
processors against the same weights with genaccel's self-attention (apply_sparse_attention), per method.

One latent input per config; per method a copy of the model with the method installed, timed
interleaved with the stock model (a warm call first: SVG2 fills its centroid cache there, Radial
builds its mask). Per row: the speedup, the output's relative error against the stock output (what
the method's sparsity costs at the model level; for "dense" it is checked against the float32 bound,
since that path must equal the stock processor), and the mean density of the sparse calls. Needs
diffusers (pip install genaccel[diffusers]).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..testing import rel_err
from . import plotting
from .registry import Benchmark, BenchError, column, register, short_error

# The sweeps of the equal-density comparison: each method's knob and values.
SWEEPS = {
    "sla": ("topk", (0.2, 0.3, 0.4, 0.5, 0.6)),
    "block_topk": ("topk", (0.2, 0.3, 0.4, 0.5, 0.6)),
    "radial": ("decay_factor", (0.2, 0.5, 1.0, 2.0, 4.0)),
    "svg2": ("top_p", (0.3, 0.5, 0.7, 0.8, 0.9)),
}
EQUAL_DENSITIES = (0.4, 0.5)  # within every sweep's range at 16,384 tokens (Radial's starts near 0.37)

# The options each method runs with here (apply_sparse_attention's method_options).
METHOD_SETTINGS = {
    "dense": {},
    "sla": dict(topk=0.05, low_k=0.10),
    "block_topk": dict(topk=0.1),
    "radial": dict(decay_factor=0.2),
    "svg2": dict(num_q_clusters=100, num_k_clusters=500, top_p=0.8),
}


@dataclass
class VideoDitConfig:
    frames: int = 16  # latent frames; tokens = frames * (height / 2) * (width / 2)
    height: int = 64
    width: int = 64
    layers: int = 2
    heads: int = 4
    head_dim: int = 64
    ffn_dim: int = 1024
    text_dim: int = 4096
    text_tokens: int = 64
    methods: List[str] = field(default_factory=lambda: list(METHOD_SETTINGS))
    seed: int = 0
    warmup: int = 1
    min_rounds: int = 2
    max_rounds: int = 5
    target_s: float = 10.0
    dtype: str = "float32"
    sweep: bool = False  # also the equal-density comparison (untimed rows over SWEEPS)

    @property
    def tokens(self) -> int:
        return self.frames * (self.height // 2) * (self.width // 2)

    def label(self) -> str:
        return f"Wan L{self.layers} H{self.heads}x{self.head_dim} N{self.tokens}"


def default_configs(device: str, quick: bool) -> List[VideoDitConfig]:
    """The issue's CPU model (2 layers, 4 heads of 64, ffn 1024, text dim 4096) at 4,096 tokens (4 latent
    frames of 64x64), 16,384 (16 of 64x64), 32,760 (21 of 60x104, Wan's 480x832) and 53,760 (21 of 80x128)."""
    if quick:
        return [VideoDitConfig(frames=4, height=32, width=32, methods=["dense", "sla", "radial"], max_rounds=2,
                               target_s=0.5)]
    return [VideoDitConfig(frames=4), VideoDitConfig(sweep=True), VideoDitConfig(frames=21, height=60, width=104),
            VideoDitConfig(frames=21, height=80, width=128)]


@torch.no_grad()
def rows(cfg: VideoDitConfig, run):
    try:
        from diffusers import WanTransformer3DModel
    except ImportError as exc:
        raise BenchError("the video-dit benchmark needs diffusers: pip install genaccel[diffusers]") from exc

    from ..integrations.diffusers import apply_sparse_attention
    from ..integrations.video_demo import timed_self_attention

    torch.manual_seed(cfg.seed)
    stock = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim,
                                  in_channels=16, out_channels=16, text_dim=cfg.text_dim, freq_dim=256,
                                  ffn_dim=cfg.ffn_dim, num_layers=cfg.layers).eval().to(run.device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    x = dict(hidden_states=torch.randn(1, 16, cfg.frames, cfg.height, cfg.width, generator=gen).to(run.device),
             timestep=torch.tensor([900.0], device=run.device),
             encoder_hidden_states=torch.randn(1, cfg.text_tokens, cfg.text_dim, generator=gen).to(run.device),
             return_dict=False)
    reference = stock(**x)[0]
    # The share of the stock forward spent in self-attention (one more call, its processors timed).
    with timed_self_attention(stock, run.device) as timers:
        t0 = time.perf_counter()
        stock(**x)
        share = sum(t.seconds for t in timers) / (time.perf_counter() - t0)
    # The dense method must equal the stock processor: checked against the float64 model's output.
    reference64 = copy.deepcopy(stock).double()(**{**x, **{k: x[k].double() for k in ("hidden_states",
                  "encoder_hidden_states")}})[0] if "dense" in cfg.methods else None
    for method in cfg.methods:
        run.status(f"{cfg.label()} {method}")
        options = METHOD_SETTINGS.get(method, {})
        row = dict(config=cfg.label(), method=method, tokens=cfg.tokens, options=options, stock_self_attn_share=share,
                   setting=" ".join(f"{k}={v:g}" for k, v in options.items() if k != "num_q_clusters"), notes=[])
        candidates = {"stock": lambda: stock(**x)}
        try:
            model = copy.deepcopy(stock)
            handle = apply_sparse_attention(model, method, **METHOD_SETTINGS[method])
            model(**x)  # warm: SVG2's first k-means, Radial's mask
            out = model(**x)[0]
            row["rel_err_vs_stock"] = rel_err(out, reference)
            recent = handle.stats()[-cfg.layers:]
            row["density"] = sum(s["density"] for s in recent) / len(recent) if recent else 1.0
            candidates["genaccel"] = lambda model=model: model(**x)
            if method == "dense":
                run.check(out, reference64, row)
        except Exception as exc:
            row["error"] = short_error(exc, 300)
        run.time(row, candidates)
        yield row
    if cfg.sweep:
        yield from sweep_rows(cfg, run, stock, x, reference)


def sweep_rows(cfg: VideoDitConfig, run, stock, x: dict, reference: torch.Tensor):
    """Each method's output error vs stock over its knob (untimed), then the errors interpolated at
    EQUAL_DENSITIES as notes: the model-level cost of each method's sparsity at equal density."""
    from ..integrations.diffusers import apply_sparse_attention
    from .attention_quality import at_density

    done = []
    for method in [m for m in cfg.methods if m in SWEEPS]:
        knob, values = SWEEPS[method]
        for value in values:
            run.status(f"{cfg.label()} sweep {method} {knob}={value:g}")
            options = {**METHOD_SETTINGS[method], knob: value}
            row = dict(config=cfg.label(), method=method, kind="sweep", knob=knob, value=value, tokens=cfg.tokens,
                       options=options, setting=f"{knob}={value:g} (untimed)")
            try:
                handle = apply_sparse_attention(stock, method, **options)
                try:
                    out = stock(**x)[0]
                    recent = handle.stats()
                finally:
                    handle.remove()
                row.update(density=sum(s["density"] for s in recent) / len(recent),
                           rel_err_vs_stock=rel_err(out, reference))
            except Exception as exc:
                row["error"] = short_error(exc, 300)
            done.append(row)
            yield row
    for d in EQUAL_DENSITIES:
        parts = []
        for method in [m for m in cfg.methods if m in SWEEPS]:
            e = at_density(done, method, d, key="rel_err_vs_stock")
            parts.append(f"{method} {e:.4f}" if e is not None else f"{method} -")
        line = f"{cfg.label()}: output rel err vs stock at density {d:g}: " + ", ".join(parts)
        run.notes.append(line)
        run.write(f"note: {line}")


def plot(rows: List[dict], env: dict, path: str) -> Optional[str]:
    """Speedup over the stock processor (left) and output error vs stock (right) against tokens."""
    plt = plotting.pyplot()
    if plt is None:
        return plotting.NO_MATPLOTLIB
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        mine = [r for r in rows if r["method"] == method and "speedup_vs_stock" in r]
        if not mine:
            continue
        tokens = [r["tokens"] for r in mine]
        left.plot(tokens, [r["speedup_vs_stock"] for r in mine], "o-", color=f"C{i}", label=method)
        if method != "dense":
            right.plot(tokens, [r["rel_err_vs_stock"] for r in mine], "o-", color=f"C{i}", label=method)
    left.axhline(1.0, color="0.6", lw=1, ls=":")
    left.set(xlabel="tokens", ylabel="transformer forward speedup vs stock", xscale="log")
    right.set(xlabel="tokens", ylabel="output rel. error vs stock", xscale="log", yscale="log")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"random Wan transformer (2 layers, 4x64 heads) on {env['device_name']}, torch {env['torch_version']}",
                 fontsize=9)
    plotting.save_figure(fig, path)
    return None


BENCHMARK = register(Benchmark(
    name="video-dit",
    description="a random Wan transformer's forward: stock processors vs genaccel's sparse self-attention per method",
    config=VideoDitConfig,
    configs=default_configs,
    rows=rows,
    count=lambda cfg: len(cfg.methods) + (sum(len(SWEEPS[m][1]) for m in cfg.methods if m in SWEEPS)
                                           if cfg.sweep else 0),
    where=lambda r: f"{r['config']} {r['method']}" + (f" {r['knob']}={r['value']:g}" if "knob" in r else ""),
    needs_ops=("block_sparse_attn_fwd",),
    plot=plot,
    columns=[
        column("config", 26, "config"),
        column("method", 10, "method"),
        column("setting", 28, "setting"),
        column("attn share", 10, "stock_self_attn_share", ".2f"),
        column("density", 7, "density", ".3f"),
        column("stock ms", 9, "stock_ms", ".0f"),
        column("ours ms", 9, "genaccel_ms", ".0f"),
        column("speedup", 7, "speedup_vs_stock", ".2f", "x"),
        column("err vs stock", 12, "rel_err_vs_stock", ".4f"),
    ],
))
