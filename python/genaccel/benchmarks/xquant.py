"""XQuant's group quantizer (genaccel.quantize / dequantize) against the group quantizer a PyTorch user
writes by hand: the same rules (range widened to hold 0, float16 scale, integer zero point) in torch
ops, one uint8 per code (no packing). Per row: quantize and dequantize time, the bytes stored and their
ratio to a float16 K+V cache of the same tokens (an MHA layer: K and V each as wide as X), the relative
error of x_hat, whether every element is within half its group's scale, and whether the codes of the
first rows equal the float64 reference's (kvcache/xquant/reference.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch

from ..testing import rel_err
from .registry import Benchmark, column, register


@dataclass
class XquantConfig:
    tokens: int = 16384
    channels: int = 4096
    bits: List[int] = field(default_factory=lambda: [4, 3, 2])
    group_size: int = 128
    seed: int = 0
    warmup: int = 1
    min_rounds: int = 3
    max_rounds: int = 10
    target_s: float = 5.0

    def label(self) -> str:
        return f"X {self.tokens}x{self.channels} g{self.group_size}"


def default_configs(device: str, quick: bool) -> List[XquantConfig]:
    if quick:
        return [XquantConfig(tokens=1024, channels=1024, min_rounds=2, max_rounds=3, target_s=0.5)]
    return [XquantConfig(tokens=4096), XquantConfig(tokens=32768)]


def torch_quantize(x: torch.Tensor, bits: int, group: int):
    """The hand-written baseline: codes (rows, K) uint8, scales (rows, groups) float16, zeros uint8."""
    levels = 2 ** bits - 1
    g = x.float().unflatten(-1, (-1, group))
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    s = ((hi - lo) / levels).half()
    safe = s.float().clamp(min=torch.finfo(torch.float16).tiny)
    z = torch.round(-lo / safe).clamp(0, levels)
    q = (torch.round(g / safe[..., None]) + z[..., None]).clamp(0, levels).to(torch.uint8)
    return q.flatten(-2), s, z.to(torch.uint8)


def torch_dequantize(q, s, z, group: int):
    g = q.unflatten(-1, (-1, group)).float()
    return ((g - z[..., None].float()) * s[..., None].float()).flatten(-2)


def rows(cfg: XquantConfig, run):
    import genaccel
    from ..kvcache.xquant import reference as R

    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.tokens, cfg.channels, generator=gen).to(run.device)
    kv_fp16_bytes = 2 * x.numel() * 2
    for bits in cfg.bits:
        run.status(f"{cfg.label()} {bits}-bit")
        row = dict(config=cfg.label(), bits=bits, tokens=cfg.tokens, channels=cfg.channels,
                   group_size=cfg.group_size)
        qt = genaccel.quantize(x, bits, cfg.group_size)
        base = torch_quantize(x, bits, cfg.group_size)
        run.time(row, {"torch": lambda: torch_quantize(x, bits, cfg.group_size),
                       "genaccel": lambda: genaccel.quantize(x, bits, cfg.group_size)}, prefix="quantize_")
        run.time(row, {"torch": lambda: torch_dequantize(*base, cfg.group_size),
                       "genaccel": lambda: genaccel.dequantize(qt)}, prefix="dequantize_")
        x_hat = genaccel.dequantize(qt)
        bound = qt.scales.float().repeat_interleave(cfg.group_size, dim=-1) / 2
        head = slice(0, 64)
        ref = R.quantize(x[head].cpu().double(), bits, cfg.group_size)
        row.update(nbytes=qt.nbytes, ratio_vs_fp16_kv=kv_fp16_bytes / qt.nbytes,
                   torch_nbytes=sum(t.numel() * t.element_size() for t in base),
                   rel_err_vs_x=rel_err(x_hat, x), within_half_scale=bool(((x_hat - x).abs() <= bound * 1.00001).all()),
                   codes_match_reference=bool(torch.equal(qt.codes[head].cpu(), ref["codes"])))
        yield row


BENCHMARK = register(Benchmark(
    name="xquant",
    description="XQuant's group quantizer (packed codes) vs a hand-written torch group quantizer: time, bytes, error",
    config=XquantConfig,
    configs=default_configs,
    rows=rows,
    count=lambda cfg: len(cfg.bits),
    where=lambda r: f"{r['config']} {r['bits']}-bit",
    needs_ops=("xquant_quantize",),
    columns=[
        column("config", 22, "config"),
        column("bits", 4, "bits"),
        column("quant x", 8, "quantize_speedup_vs_torch", ".2f", "x"),
        column("dequant x", 9, "dequantize_speedup_vs_torch", ".2f", "x"),
        column("vs fp16 KV", 10, "ratio_vs_fp16_kv", ".2f", "x"),
        column("rel err", 8, "rel_err_vs_x", ".4f"),
        column("<= s/2", 6, "within_half_scale"),
        column("= ref", 5, "codes_match_reference"),
    ],
))
