"""`genaccel video-demo`: a Wan transformer's denoising loop with the stock processors and with a
genaccel method, step by step on the same latents, reporting time, the self-attention share and the
error the method costs.

The transformer is a small random-weight WanTransformer3DModel built here (or one loaded from a local
folder; never from a hub), driven by diffusers' FlowMatchEulerDiscreteScheduler on random latents and
random text embeddings, so no text encoder or VAE is needed. Both runs start from the same seed; the
stock run is the reference. Frames and size are the video's (pixels), turned into latents by Wan's VAE
compression (4x in time after the first frame, 8x in space) and into tokens by the patch size.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from typing import List, Optional

import torch

from ..benchmarks.timing import Progress
from ..testing import rel_err
from .diffusers import METHODS, apply_sparse_attention

# The random transformer (the CPU model): 2 layers, 4 heads of 64, ffn 1024, text dim 4096.
RANDOM_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=16,
                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=1024, num_layers=2)
TEXT_TOKENS = 64
# Wan's VAE: 4x temporal compression after the first frame, 8x spatial.
VAE_TIME, VAE_SPACE = 4, 8


def latent_shape(frames: int, height: int, width: int, patch_size=(1, 2, 2)) -> tuple:
    """(latent frames, latent height, latent width) of a video, refused where Wan's VAE and patching
    would not tile it."""
    if frames < 1 or (frames - 1) % VAE_TIME:
        raise ValueError(f"frames must be 4k + 1 (Wan's VAE compresses time 4x after the first frame); got {frames}")
    step = VAE_SPACE * patch_size[1], VAE_SPACE * patch_size[2]
    if height < step[0] or width < step[1] or height % step[0] or width % step[1]:
        raise ValueError(f"size must be a multiple of {step[0]}x{step[1]} (VAE 8x and patch {patch_size[1:]}); "
                         f"got {height}x{width}")
    return (frames - 1) // VAE_TIME + 1, height // VAE_SPACE, width // VAE_SPACE


def load_transformer(path: Optional[str], dtype: torch.dtype, device: str):
    """The random Wan (seeded) or a WanTransformer3DModel from a local folder (a pipeline folder's
    `transformer/` is used where there is one)."""
    import os

    from diffusers import WanTransformer3DModel

    if path is None:
        torch.manual_seed(0)
        model = WanTransformer3DModel(**RANDOM_WAN)
    else:
        sub = "transformer" if os.path.isdir(os.path.join(path, "transformer")) else None
        model = WanTransformer3DModel.from_pretrained(path, subfolder=sub, local_files_only=True)
    model = model.to(device)  # (a dtype only where asked: diffusers warns on any dtype cast)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


class TimedProcessor:
    """Wraps an attention processor and adds the wall time of its calls to `seconds` (synchronising
    the GPU around each call, so the share is real there too)."""

    def __init__(self, processor, device: torch.device):
        self.processor, self.device, self.seconds = processor, device, 0.0

    def __call__(self, *args, **kwargs):
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.processor(*args, **kwargs)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out


@contextlib.contextmanager
def timed_self_attention(transformer, device: torch.device):
    """Wraps each block's attn1 processor in a TimedProcessor while the context lasts; yields them."""
    attns = [block.attn1 for block in transformer.blocks]
    originals = [attn.processor for attn in attns]
    timers = [TimedProcessor(p, device) for p in originals]
    for attn, timer in zip(attns, timers):
        attn.processor = timer
    try:
        yield timers
    finally:
        for attn, original in zip(attns, originals):
            attn.processor = original


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of x against ref in dB, the peak being ref's value range."""
    mse = float((x.double() - ref.double()).pow(2).mean())
    peak = float(ref.max() - ref.min())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


@torch.no_grad()
def run_demo(method: str = "sla", frames: int = 17, height: int = 480, width: int = 832, steps: int = 8,
             model: Optional[str] = None, dense_layers: int = 0, dense_steps: int = 0, guidance: float = 1.0,
             dtype: str = "float32", device: str = "cpu", seed: int = 0, out=None, progress: Optional[bool] = None,
             **method_options) -> dict:
    """Runs both denoising loops step by step; returns the per-step rows and the summary."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    dev = torch.device(device)
    stock = load_transformer(model, torch_dtype, device)
    ours = copy.deepcopy(stock)
    handle = apply_sparse_attention(ours, method, dense_layers, dense_steps, **method_options)
    transformers = {"stock": stock, "genaccel": ours}

    cfg = stock.config
    f, h, w = latent_shape(frames, height, width, cfg.patch_size)
    tokens = f * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
    gen = torch.Generator().manual_seed(seed)
    batch = 2 if guidance > 1 else 1  # classifier-free guidance: conditional and unconditional in one batch
    latents = torch.randn(1, cfg.in_channels, f, h, w, generator=gen).to(dev, torch_dtype)
    text = torch.randn(1, TEXT_TOKENS, cfg.text_dim, generator=gen).to(dev, torch_dtype)
    if batch == 2:
        text = torch.cat([text, torch.zeros_like(text)])
    schedulers = {name: FlowMatchEulerDiscreteScheduler(shift=3.0) for name in transformers}
    for s in schedulers.values():
        s.set_timesteps(steps, device=dev)
    state = {name: latents.clone() for name in transformers}

    rows: List[dict] = []
    bar = Progress(steps, f"video-demo {method}", out=out, enabled=progress)
    with contextlib.ExitStack() as stack:
        timers = {name: stack.enter_context(timed_self_attention(t, dev)) for name, t in transformers.items()}
        for i, t in enumerate(schedulers["stock"].timesteps):
            row = dict(step=i, timestep=float(t))
            for name, transformer in transformers.items():
                x = state[name]
                for timer in timers[name]:
                    timer.seconds = 0.0
                _sync(dev)
                t0 = time.perf_counter()
                pred = transformer(hidden_states=torch.cat([x] * batch), timestep=t.expand(batch),
                                   encoder_hidden_states=text, return_dict=False)[0]
                _sync(dev)
                row[f"{name}_ms"] = 1e3 * (time.perf_counter() - t0)
                row[f"{name}_self_attn_share"] = sum(tm.seconds for tm in timers[name]) * 1e3 / row[f"{name}_ms"]
                if batch == 2:
                    cond, uncond = pred.chunk(2)
                    pred = uncond + guidance * (cond - uncond)
                state[name] = schedulers[name].step(pred, t, x, return_dict=False)[0]
            calls = [s for s in handle.stats() if s["step"] == i]
            row["density"] = sum(s["density"] for s in calls) / len(calls) if calls else 1.0
            row["rel_err"] = rel_err(state["genaccel"], state["stock"])
            rows.append(row)
            bar.advance()
            bar.write(f"step {i:3d}  t={row['timestep']:6.1f}  stock {row['stock_ms']:8.1f} ms "
                      f"(self-attn {100 * row['stock_self_attn_share']:4.1f} %)  {method} {row['genaccel_ms']:8.1f} ms"
                      f"  density {row['density']:.3f}  latent error {row['rel_err']:.4f}")
    bar.close()
    handle.remove()
    total = {name: sum(r[f"{name}_ms"] for r in rows) for name in transformers}
    summary = dict(method=method, options={**handle.options}, frames=frames, size=f"{height}x{width}",
                   latent=[f, h, w], tokens=tokens, steps=steps, batch=batch, dtype=dtype, device=str(dev),
                   model=model or "random Wan (2 layers, 4x64 heads, ffn 1024)", dense_layers=dense_layers,
                   dense_steps=dense_steps, stock_ms=total["stock"], genaccel_ms=total["genaccel"],
                   speedup=total["stock"] / total["genaccel"],
                   stock_self_attn_share=sum(r["stock_self_attn_share"] * r["stock_ms"] for r in rows) / total["stock"],
                   rel_err=rel_err(state["genaccel"], state["stock"]), psnr_db=psnr(state["genaccel"], state["stock"]))
    return dict(summary=summary, steps=rows)


def plot_demo(result: dict, path: str) -> Optional[str]:
    """Per-step transformer time of both runs (left) and the latent error vs the stock run (right)."""
    from ..benchmarks import plotting

    plt = plotting.pyplot()
    if plt is None:
        return plotting.NO_MATPLOTLIB
    s, rows = result["summary"], result["steps"]
    steps = [r["step"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(steps, [r["stock_ms"] for r in rows], "o-", label="stock processors")
    left.plot(steps, [r["genaccel_ms"] for r in rows], "o-", label=f"genaccel {s['method']}")
    left.set(xlabel="denoising step", ylabel="transformer time per step (ms)", ylim=(0, None))
    right.plot(steps, [max(r["rel_err"], 1e-12) for r in rows], "o-", color="C1")
    right.set(xlabel="denoising step", ylabel="latent rel. error vs stock run", yscale="log")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend()
    fig.suptitle(f"video-demo {s['method']}: {s['tokens']} tokens, {s['steps']} steps, {s['speedup']:.2f}x, "
                 f"PSNR {s['psnr_db']:.1f} dB ({s['device']}, {s['dtype']})", fontsize=9)
    plotting.save_figure(fig, path)
    return None


def main(args, out=None) -> int:
    """The `genaccel video-demo` command (cli.py parses the arguments)."""
    import sys

    out = out if out is not None else sys.stdout
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("video-demo needs diffusers: pip install genaccel[diffusers]", file=sys.stderr)
        return 2
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"--size must be HxW, e.g. 480x832; got {args.size!r}", file=sys.stderr)
        return 2
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)  # numbers and true / false; anything else stays a string
        except json.JSONDecodeError:
            options[key] = value
    try:
        result = run_demo(args.method, args.frames, height, width, args.steps, args.model, args.dense_layers,
                          args.dense_steps, args.guidance, args.dtype, args.device, args.seed, out,
                          False if args.no_progress else None, **options)
    except ValueError as exc:
        print(f"video-demo: {exc}", file=sys.stderr)
        return 2
    s = result["summary"]
    print(f"{s['method']} on {s['tokens']} tokens ({s['frames']} frames {s['size']} -> latent "
          f"{'x'.join(map(str, s['latent']))}), {s['steps']} steps, {s['device']} {s['dtype']}: "
          f"transformer {s['stock_ms'] / 1e3:.2f} s stock (self-attention {100 * s['stock_self_attn_share']:.1f} %) "
          f"vs {s['genaccel_ms'] / 1e3:.2f} s = {s['speedup']:.2f}x; final latents rel. error {s['rel_err']:.4f}, "
          f"PSNR {s['psnr_db']:.1f} dB vs the stock run", file=out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"json written to {args.json}", file=out)
    if args.plot:
        note = plot_demo(result, args.plot)
        print(f"note: {note}" if note else f"plot written to {args.plot}", file=out)
    return 0
