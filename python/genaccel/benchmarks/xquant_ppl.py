"""XQuant's quality benchmark: held-out perplexity and memory of each XQuantCache mode on a small
Llama-architecture causal LM trained here.

No pretrained language model can be downloaded, so one is trained once on real text every machine has:
the Python standard library's source files (byte-level: vocabulary 256), split by file into train
and held-out (a file goes to held-out when a hash of its path says so, ~1 in 10). The trained model is
cached under genaccel's cache folder (GENACCEL_CACHE, default ~/.cache/genaccel), keyed by its
config, so only the first run trains (a few minutes on 2 CPU cores for the default size).

Evaluation, per held-out window of `context` bytes: the first `prefill` bytes go in as one prefill,
then the rest one byte per step through the cache, as generation would feed them; the perplexity is
over the decoded bytes (the prefill's own predictions see no cached token and are left out). Every
past token's K / V then comes from the cache, so the numbers measure the cache's loss. The memory
ratio is fp16 K + V bytes over the bytes the cache stores at the end of a window (memory_report: the
full-precision residual tokens of KIVI count). Modes: fp16_kv (the baseline), kivi, xquant,
xquant_cl (post-norm X deltas) and xquant_cl_pre (XQuantCache's xquant_cl with cl_input="pre_norm":
residual-stream deltas) on the MHA model and kivi, xquant_gqa on a GQA variant (trained alike), at 4,
3, 2 bits.
Each model's first row, mode "none", is the same bytes predicted by one float32 forward over the whole
window without a cache: fp16_kv must match it to within fp16 rounding (FP16_TOL), which checks the
decode loop itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .._utils import cache_dir
from . import plotting
from .registry import Benchmark, BenchError, column, register

# Row names that are an XQuantCache mode with options; every other name is the mode itself.
VARIANTS = {"xquant_cl_pre": dict(mode="xquant_cl", cl_input="pre_norm")}
FP16_TOL = 2e-3  # relative perplexity gap allowed between the fp16 K / V cache and no cache


@dataclass
class PplConfig:
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4          # 4: MHA; the GQA variant uses gqa_kv_heads
    gqa_kv_heads: int = 1
    train_steps: int = 600
    train_context: int = 512
    batch: int = 8
    lr: float = 3e-3
    context: int = 512         # evaluation window
    prefill: int = 64
    windows: int = 8           # held-out windows evaluated per mode
    bits: List[int] = field(default_factory=lambda: [4, 3, 2])
    group_size: int = 128
    residual_length: int = 128
    seed: int = 0

    def label(self) -> str:
        return f"LM d{self.hidden} L{self.layers} ctx{self.context}"


def default_configs(device: str, quick: bool) -> List[PplConfig]:
    if quick:  # a tiny run for make demo: trains in ~15 s, two windows
        return [PplConfig(hidden=128, layers=2, heads=2, kv_heads=2, gqa_kv_heads=1, train_steps=60,
                          train_context=256, context=256, prefill=32, windows=2, bits=[4, 2])]
    return [PplConfig()]


# ---- data ---------------------------------------------------------------------------------------------


def stdlib_files() -> List[Path]:
    """The standard library's .py files (tests and site-packages left out), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__")
    files = [p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts)]
    if not files:
        raise BenchError(f"no standard-library sources under {root}")
    return sorted(files)


def held_out(path: Path) -> bool:
    """~1 file in 10, by a hash of its name and folder (the same split on every machine)."""
    return hashlib.sha1(f"{path.parent.name}/{path.name}".encode()).digest()[0] < 26


def corpus() -> Tuple[torch.Tensor, torch.Tensor]:
    """(train bytes, held-out bytes) as uint8 tensors, files joined with a blank line."""
    parts = {True: [], False: []}
    for p in stdlib_files():
        parts[held_out(p)].append(p.read_bytes() + b"\n\n")
    return tuple(torch.frombuffer(bytearray(b"".join(parts[k])), dtype=torch.uint8) for k in (False, True))


# ---- the model ----------------------------------------------------------------------------------------


def small_llama(hidden: int, layers: int, heads: int, kv_heads: int, context: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 16 * 16,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max(context, 1024), rope_theta=10000.0, tie_word_embeddings=True,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def trained_model(cfg: PplConfig, kv_heads: int, train: torch.Tensor, status) -> torch.nn.Module:
    """The cached model for (cfg's architecture and training fields, kv_heads), trained when missing."""
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its loading / shard-writing bars would break our progress line
    key_fields = dict(hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads, kv_heads=kv_heads,
                      steps=cfg.train_steps, context=cfg.train_context, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed,
                      data=len(train))
    key = hashlib.sha1(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / "xquant_ppl" / key
    if (folder / "config.json").exists():
        return LlamaForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    model = small_llama(cfg.hidden, cfg.layers, cfg.heads, kv_heads, cfg.train_context, cfg.seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.train_steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    for step in range(cfg.train_steps):
        offsets = torch.randint(0, len(train) - cfg.train_context, (cfg.batch,), generator=gen)
        batch = torch.stack([train[o:o + cfg.train_context] for o in offsets.tolist()]).long()
        loss = model(batch, labels=batch).loss  # the model shifts the labels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step == cfg.train_steps - 1:
            status(f"training the {'MHA' if kv_heads == cfg.heads else 'GQA'} LM (cached after): step {step + 1}/"
                   f"{cfg.train_steps}, loss {loss.item():.3f}, {time.time() - start:.0f} s")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    (folder / "training.json").write_text(json.dumps({**key_fields, "final_loss": loss.item(),
                                                      "seconds": time.time() - start}))
    return model.eval()


# ---- evaluation ---------------------------------------------------------------------------------------


def windows(held: torch.Tensor, cfg: PplConfig) -> torch.Tensor:
    """cfg.windows evenly spaced held-out windows, (windows, context) int64."""
    stride = (len(held) - cfg.context) // max(cfg.windows, 1)
    return torch.stack([held[i * stride:i * stride + cfg.context] for i in range(cfg.windows)]).long()


@torch.no_grad()
def evaluate_without_cache(model, tokens: torch.Tensor, cfg: PplConfig) -> Dict[str, float]:
    """The perplexity of the same bytes as evaluate(), from one forward per window."""
    logits = model(tokens).logits[:, cfg.prefill - 1:cfg.context - 1].float()
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, cfg.prefill:].flatten(), reduction="sum")
    return {"ppl": math.exp(nll.item() / logits.shape[0] / logits.shape[1])}


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, cfg: PplConfig, make_cache) -> Dict[str, float]:
    """Perplexity over the decoded bytes of every window, and the memory of the last window's cache."""
    nll, count, report = 0.0, 0, None
    for w in tokens:
        cache = make_cache()
        seq = w.view(1, -1)
        logits = [model(seq[:, :cfg.prefill], cache=cache, use_cache=True).logits[:, -1:]]
        for t in range(cfg.prefill, cfg.context - 1):
            logits.append(model(seq[:, t:t + 1], cache=cache, use_cache=True).logits)
        logits = torch.cat(logits, dim=1)[0].float()  # predictions of bytes prefill .. context-1
        target = w[cfg.prefill:cfg.context]
        nll += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        count += target.numel()
        report = cache.memory_report()
    return {"ppl": math.exp(nll / count), "ratio_vs_fp16_kv": report["ratio"],
            "bytes_per_token_layer": report["bytes"] / (report["tokens"] * report["batch"] * len(report["layers"]))}


def rows(cfg: PplConfig, run):
    try:
        from ..kvcache import XQuantCache
    except ImportError as exc:
        raise BenchError(f"xquant-ppl needs transformers ({exc}); run make setup") from exc
    run.status("reading the standard library's sources")
    train, held = corpus()
    tokens = windows(held, cfg)
    models = {"MHA": (cfg.kv_heads, ["fp16_kv", "kivi", "xquant", "xquant_cl", "xquant_cl_pre"]),
              "GQA": (cfg.gqa_kv_heads, ["fp16_kv", "kivi", "xquant_gqa"])}
    for arch, (kv_heads, modes) in models.items():
        model = trained_model(cfg, kv_heads, train, run.status)
        base = dict(config=cfg.label(), arch=arch, kv_heads=kv_heads, group_size=cfg.group_size,
                    windows=cfg.windows, context=cfg.context, decoded_tokens=cfg.windows * (cfg.context - cfg.prefill))
        run.status(f"{cfg.label()} {arch}: no cache")
        yield dict(base, mode="none", bits=32, **evaluate_without_cache(model, tokens, cfg), settings=asdict(cfg))
        for mode in modes:
            for bits in ([16] if mode == "fp16_kv" else cfg.bits):
                run.status(f"{cfg.label()} {arch} {mode} {bits}-bit")
                opts = dict(mode=mode, bits=bits, group_size=cfg.group_size, residual_length=cfg.residual_length,
                            dtype=torch.float16)  # what a float16 deployment stores
                opts.update(VARIANTS.get(mode, {}))
                start = time.time()
                result = evaluate(model, tokens, cfg, lambda: XQuantCache(model, **opts))
                yield dict(base, mode=mode, bits=bits, eval_s=time.time() - start, **result, settings=asdict(cfg))


def failures(rows_: List[dict]) -> List[str]:
    """fp16_kv's perplexity off the no-cache one by more than FP16_TOL (the decode loop is wrong)."""
    bad = []
    for arch in dict.fromkeys(r["arch"] for r in rows_):
        ppl = {r["mode"]: r["ppl"] for r in rows_ if r["arch"] == arch and r["mode"] in ("none", "fp16_kv")}
        if len(ppl) == 2 and not abs(ppl["fp16_kv"] / ppl["none"] - 1) <= FP16_TOL:
            bad.append(f"{arch}: fp16_kv perplexity {ppl['fp16_kv']:.4f} vs {ppl['none']:.4f} without a cache")
    return bad


def plot(rows_: List[dict], env: dict, path: str) -> Optional[str]:
    plt = plotting.pyplot()
    if plt is None:
        return plotting.NO_MATPLOTLIB
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, arch in zip(axes, ("MHA", "GQA")):
        sub = [r for r in rows_ if r["arch"] == arch and r["mode"] != "none"]
        for mode in dict.fromkeys(r["mode"] for r in sub):
            pts = sorted((r["ratio_vs_fp16_kv"], r["ppl"], r["bits"]) for r in sub if r["mode"] == mode)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=mode)
            for x, y, b in pts:
                ax.annotate(f"{b}b", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("memory saving vs fp16 K/V (x)")
        ax.set_ylabel("held-out perplexity (bytes)")
        ax.set_title(f"{arch}: {sub[0]['config'] if sub else ''}")
        ax.legend(fontsize=8)
    fig.suptitle(f"XQuant caches on a small LM trained on stdlib source ({env.get('device_name', '')})", fontsize=9)
    plotting.save_figure(fig, path)
    return None


BENCHMARK = register(Benchmark(
    name="xquant-ppl",
    description="XQuantCache modes on a small LM trained on stdlib source: held-out perplexity vs memory",
    config=PplConfig,
    configs=default_configs,
    rows=rows,
    count=lambda cfg: 4 + len(cfg.bits) * 6,
    where=lambda r: f"{r['arch']} {r['mode']} {r['bits']}-bit",
    columns=[
        column("model", 4, "arch"),
        column("mode", 13, "mode"),
        column("bits", 4, "bits"),
        column("ppl", 7, "ppl", ".3f"),
        column("memory x", 8, "ratio_vs_fp16_kv", ".2f", "x"),
        column("B/tok/layer", 11, "bytes_per_token_layer", ".1f"),
    ],
    failures=failures,
    plot=plot,
))
