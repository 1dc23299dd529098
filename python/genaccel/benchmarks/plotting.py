"""The PNGs of `genaccel bench --plot`: matplotlib when present, one size and palette for every
family, and the speedup plots of the attention families (block-sparse, SLA) on shared axes."""

from __future__ import annotations

from typing import List, Optional, Sequence

NO_MATPLOTLIB = "matplotlib is not installed: no plot written"


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None where matplotlib is missing (GPU
    machines may not have it; a plot is then skipped with NO_MATPLOTLIB as the note)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: str) -> None:
    """Writes a benchmark figure as a PNG (one size and resolution for every family) and frees it.
    The PNG is palettised to 64 colours: line plots need no more, and result files committed under
    bench/results stay ~20 KB instead of ~80 KB."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image  # a dependency of matplotlib

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def finish_speedup_plot(fig, ax, path: str, what: str, rows: List[dict], env: dict, xlabel: str,
                        xticks: Optional[Sequence[float]], yticks: Sequence[float], legend: dict) -> None:
    """Log-log axes of speedup over dense SDPA with plain-number ticks (log axes alone label only
    decades, or in scientific notation), the title naming device, configs and torch; saves."""
    from matplotlib.ticker import FuncFormatter

    ax.axhline(1.0, color="0.6", lw=1, ls=":", label="dense SDPA")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("speedup over dense SDPA")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(**legend)
    if xticks:
        ax.set_xticks(list(xticks))
    y0, y1 = ax.get_ylim()
    ax.set_yticks([t for t in yticks if y0 <= t <= y1])
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    sub = configs[0] if len(configs) == 1 else f"{len(configs)} configs"
    ax.set_title(f"{what}, {env.get('device_name', '?')}\n{sub}, torch {env.get('torch_version', '?')}, "
                 f"{env.get('torch_num_threads', '?')} threads", fontsize=10)
    save_figure(fig, path)


def block_sparse_speedups(rows: List[dict], env: dict, path: str, what: str = "Block-sparse attention") -> Optional[str]:
    """Speedup over dense SDPA against density, log-log, with the ideal 1/density line; `what` titles it."""
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    all_d = [r["density"] for r in rows if r.get("density")]
    if all_d:
        lo, hi = min(all_d), max(all_d)
        xs = [lo * (hi / lo) ** (i / 50) for i in range(51)] if hi > lo else [lo]
        ax.plot(xs, [1 / x for x in xs], "k--", lw=1, label="ideal (1/density)")
        ax.set_xlim(lo / 1.3, hi * 1.3)
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
    # Plain-number ticks at the densities people quote.
    xticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0) if all_d and lo / 1.3 <= t <= hi * 1.3]
    finish_speedup_plot(fig, ax, path, what, rows, env,
                        "block density (fraction of key blocks kept)", xticks,
                        (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100), dict(loc="upper right", fontsize=9))
    return None


def sla_speedups(rows: List[dict], env: dict, path: str) -> Optional[str]:
    """Speedup over dense SDPA against the critical fraction, one line per mode, with the
    FLOP-floor line and the issue's targets."""
    from .sla import MODES  # one colour per mode, whichever ran

    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    if not rows:
        return "no rows: no plot written"
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    for ci, cfg in enumerate(configs):
        tag = f" ({cfg})" if len(configs) > 1 else ""
        for mi, mode in enumerate(MODES):
            pts = sorted((r["critical_fraction"], r["speedup_vs_sdpa"]) for r in rows
                         if r["config"] == cfg and r["mode"] == mode and r.get("speedup_vs_sdpa"))
            if not pts:
                continue
            c = colors[(2 * ci + mi) % len(colors)]
            ax.plot(*zip(*pts), "o-", color=c, label=f"SLA {mode}{tag}")
            for x, s in pts:
                ax.annotate(f"{s:.1f}x", (x, s), textcoords="offset points", xytext=(5, -12), fontsize=8, color=c)
            target = next(r["target_speedup"] for r in rows if r["config"] == cfg and r["mode"] == mode)
            if target is not None:
                ax.axhline(target, color=c, lw=1, ls="--", alpha=0.7, label=f"target {mode} ({target:g}x)")
        floor = sorted((r["critical_fraction"], r["ideal_speedup"]) for r in rows
                       if r["config"] == cfg and r["mode"] == MODES[0] and r.get("ideal_speedup"))
        if floor:
            ax.plot(*zip(*floor), "k:", lw=1, label=f"FLOP floor{tag}")
    xs = sorted(set(round(r["critical_fraction"], 3) for r in rows if r.get("critical_fraction")))
    finish_speedup_plot(fig, ax, path, "Sparse-linear attention", rows, env,
                        "critical fraction (key blocks computed exactly)", xs,
                        (1, 2, 5, 10, 20, 50, 100), dict(fontsize=8))
    return None
