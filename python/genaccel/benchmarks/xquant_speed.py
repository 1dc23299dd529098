"""XQuant's speed: what rematerialisation costs, and a decode step with each cache mode.

- remat rows: K = X_hat W_k^T for a cached X of `context` tokens x d channels at 4 bits (per-token
  groups of 128), W_k (d x d, an MHA layer's keys), three ways: genaccel.xquant_matmul (fused: tiles
  dequantized inside the GEMM), dequantize-then-matmul (the dequantized X materialised, then torch's
  matmul), and reading an fp16 K cache of the same tokens into float32 (what the KV-cache baseline does
  instead of recomputing). dequantized_x_bytes: the float32 X that dequantize-then-matmul materialises
  and the fused op does not (it dequantizes tile by tile into per-thread scratch). <name>_peak_bytes:
  how far the process's resident memory rose above its level before one call (Linux: the peak is
  reset through /proc/self/clear_refs after glibc's malloc_trim), everything the call touched, output and scratch included.
- decode rows: one decode step (one new token, batch 1) of the small Llama of the xquant-ppl benchmark
  (random weights: speed does not depend on them) with `context` tokens already cached, per mode;
  xquant_abs / xquant_gqa_abs: the same caches with absorbed_values=True (V never rematerialised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .registry import Benchmark, column, register
from .timing import peak_bytes
from .xquant_ppl import small_llama


@dataclass
class SpeedConfig:
    kind: str = "remat"   # remat | decode
    context: int = 4096
    channels: int = 1024  # remat: d; decode: the LM's hidden size
    layers: int = 4
    heads: int = 4
    bits: int = 4
    group_size: int = 128
    seed: int = 0
    warmup: int = 1
    min_rounds: int = 3
    max_rounds: int = 10
    target_s: float = 5.0

    def label(self) -> str:
        return f"{self.kind} {self.context // 1024}K d{self.channels}"


def default_configs(device: str, quick: bool) -> List[SpeedConfig]:
    if quick:
        return [SpeedConfig(context=2048, channels=512, min_rounds=2, max_rounds=3, target_s=0.5),
                SpeedConfig(kind="decode", context=1024, channels=256, layers=2, min_rounds=2, max_rounds=3,
                            target_s=0.5)]
    remat = [SpeedConfig(context=c, channels=d) for d, cs in ((1024, (4096, 16384, 32768)), (4096, (4096, 16384)))
             for c in cs]
    decode = SpeedConfig(kind="decode", context=8192, channels=256)
    if device == "cuda":  # bench/gpu_check.sh's short step: the shapes, fewer rounds
        return [SpeedConfig(**{**vars(c), "target_s": 0.5}) for c in remat + [decode]]
    return remat + [decode]


def remat_rows(cfg: SpeedConfig, run):
    import genaccel

    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.context, cfg.channels, generator=gen).to(run.device)
    w = (torch.randn(cfg.channels, cfg.channels, generator=gen) / cfg.channels ** 0.5).to(run.device)
    qt = genaccel.quantize(x, cfg.bits, cfg.group_size)
    k_fp16 = (x @ w.T).half()
    del x
    candidates = {"genaccel": lambda: genaccel.xquant_matmul(qt, w),
                  "dequant_matmul": lambda: genaccel.dequantize(qt) @ w.T,
                  "fp16_kv_read": lambda: k_fp16.float()}
    run.status(f"{cfg.label()}: checking")
    err = (genaccel.xquant_matmul(qt, w) - genaccel.dequantize(qt) @ w.T).norm().item()
    row = dict(config=cfg.label(), kind="remat", context=cfg.context, channels=cfg.channels, bits=cfg.bits,
               group_size=cfg.group_size, gflop=2 * cfg.context * cfg.channels ** 2 / 1e9,
               rel_diff_fused_vs_dequant=err / (genaccel.dequantize(qt) @ w.T).norm().item(),
               cached_bytes_x=qt.nbytes, cached_bytes_fp16_k=k_fp16.numel() * 2,
               dequantized_x_bytes=cfg.context * cfg.channels * 4)
    for name, fn in candidates.items():
        row[f"{name}_peak_bytes"] = peak_bytes(fn, torch.device(run.device))
    run.status(cfg.label())
    run.time(row, candidates)
    for name in candidates:
        peak = row[f"{name}_peak_bytes"]
        row[f"{name}_peak_mb"] = None if peak is None else peak / 2 ** 20
    row["fused_vs_dequant"] = row["dequant_matmul_ms"] / row["genaccel_ms"]
    row["fused_vs_fp16_read"] = row["fp16_kv_read_ms"] / row["genaccel_ms"]
    yield row


def decode_rows(cfg: SpeedConfig, run):
    from ..kvcache import XQuantCache

    torch.manual_seed(cfg.seed)
    archs = {"MHA": (cfg.heads, ["fp16_kv", "kivi", "xquant", "xquant_abs", "xquant_cl"]),
             "GQA": (1, ["fp16_kv", "xquant_gqa", "xquant_gqa_abs"])}
    prompt = torch.randint(0, 256, (1, cfg.context), generator=torch.Generator().manual_seed(cfg.seed)).to(run.device)
    for arch, (kv_heads, modes) in archs.items():
        model = small_llama(cfg.channels, cfg.layers, cfg.heads, kv_heads, cfg.context + 64, cfg.seed)
        model = model.to(run.device).eval()
        steps = {}
        for mode in modes:
            run.status(f"{cfg.label()} {arch} {mode}: prefill")
            bits = 16 if mode == "fp16_kv" else cfg.bits
            cache = XQuantCache(model, mode=mode.removesuffix("_abs"), bits=bits, group_size=cfg.group_size,
                                dtype=torch.float16, absorbed_values=mode.endswith("_abs"))
            with torch.no_grad():
                model(prompt, cache=cache, use_cache=True)
            token = prompt[:, -1:]

            def step(cache=cache, token=token):
                with torch.no_grad():
                    return model(token, cache=cache, use_cache=True)

            steps[mode] = step
        row = dict(config=cfg.label(), kind="decode", arch=arch, context=cfg.context, channels=cfg.channels,
                   layers=cfg.layers, bits=cfg.bits)
        run.status(f"{cfg.label()} {arch}")
        run.time(row, steps, prefix="step_")
        yield row


def rows(cfg: SpeedConfig, run):
    yield from (remat_rows if cfg.kind == "remat" else decode_rows)(cfg, run)


BENCHMARK = register(Benchmark(
    name="xquant-speed",
    description="XQuant rematerialisation (fused xquant_matmul vs dequantize+matmul vs reading fp16 K) and decode steps",
    config=SpeedConfig,
    configs=default_configs,
    rows=rows,
    count=lambda cfg: 1 if cfg.kind == "remat" else 2,
    where=lambda r: r["config"] + (f" {r['arch']}" if r["kind"] == "decode" else ""),
    needs_ops=("xquant_matmul",),
    columns=[
        column("config", 18, "config"),
        column("arch", 4, "arch"),
        column("fused ms", 9, "genaccel_ms", ".1f"),
        column("deq+mm ms", 9, "dequant_matmul_ms", ".1f"),
        column("fp16 rd", 8, "fp16_kv_read_ms", ".1f"),
        column("vs deq", 6, "fused_vs_dequant", ".2f", "x"),
        column("fused MB", 8, "genaccel_peak_mb", ".0f"),
        column("deq+mm MB", 9, "dequant_matmul_peak_mb", ".0f"),
        column("fp16kv", 7, "step_fp16_kv_ms", ".1f"),
        column("kivi", 6, "step_kivi_ms", ".1f"),
        column("xquant", 7, "step_xquant_ms", ".1f"),
        column("x abs", 6, "step_xquant_abs_ms", ".1f"),
        column("cl", 6, "step_xquant_cl_ms", ".1f"),
        column("gqa", 6, "step_xquant_gqa_ms", ".1f"),
        column("gqa abs", 7, "step_xquant_gqa_abs_ms", ".1f"),
    ],
))
