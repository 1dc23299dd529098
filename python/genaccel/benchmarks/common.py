"""What the attention benchmark families (attention, sla) share: the config fields of an attention
shape, the baselines a PyTorch user would pick instead (dense SDPA, compiled FlexAttention), random
block masks, the FLOPs of kept blocks, the query blocks checked against the float64 reference and
the gradient callables timed in the backward modes."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from ..attention.block_sparse.ops import ATTENTION_BACKENDS
from ..testing import DTYPE_NAMES
from .registry import choice, column, short_error

SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# The table columns of the speedup over SDPA (flash on CUDA) and over torch's default SDPA beside it.
VS_SDPA_COLUMNS = [column("vs sdpa", 7, "speedup_vs_sdpa", ".2f", "x"),
                   column("vs dflt", 7, "speedup_vs_sdpa_default", ".2f", "x")]


@dataclass
class AttentionShape:
    """The fields every attention config has; `backend` goes to the op as `backend=`."""

    B: int
    H: int
    N: int
    D: int
    dtype: str = choice("float32", DTYPE_NAMES)
    block_q: int = 64
    block_k: int = 64
    backend: str = choice("auto", ATTENTION_BACKENDS)
    err_blocks: int = 3  # query blocks checked against the float64 reference
    seed: int = 0
    # Timing plan: rounds fill about target_s per row, within [min_rounds, max_rounds].
    warmup: int = 1
    min_rounds: int = 3
    max_rounds: int = 10
    target_s: float = 10.0

    def shape_label(self, heads: str) -> str:
        dtype = SHORT_DTYPE.get(self.dtype, self.dtype)
        return f"B{self.B} {heads} N{self.N} D{self.D} {dtype} {self.block_q}x{self.block_k}"


def no_grad(fn: Callable) -> Callable:
    """fn called under torch.no_grad (a forward timed without building a graph)."""
    def run():
        with torch.no_grad():
            return fn()

    return run


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


def kept_flops(mask: torch.Tensor, cfg: AttentionShape, B: int, H: int) -> float:
    """Multiply-add FLOPs of QK^T and PV over the kept blocks only (the work floor of the kernel)."""
    rows = _block_lengths(cfg.N, cfg.block_q)
    cols = _block_lengths(cfg.N, cfg.block_k)
    per_head = (mask.double() * rows[:, None] * cols[None, :]).sum().item()
    scale = (B * H) / (mask.shape[0] * mask.shape[1])
    return 4.0 * cfg.D * per_head * scale


def reference_query_blocks(tq: int, bq: int, n: int, count: int, gen: torch.Generator):
    """Query blocks checked against the float64 reference (the full reference at N=16k-32k would
    need tens of GB): the first, the last (partial when n % bq) and random ones between, ascending,
    so rows sliced from a block mask or block codes line up with them. Returns (blocks, token rows)."""
    count = max(1, min(count, tq))
    picks = {0, tq - 1}
    while len(picks) < count:
        picks.add(int(torch.randint(0, tq, (1,), generator=gen)))
    blocks = sorted(picks)
    return blocks, torch.cat([torch.arange(b * bq, min((b + 1) * bq, n)) for b in blocks])


def sdpa_candidate(q, k, v, scale, device: torch.device,
                   dtype: torch.dtype) -> Tuple[Callable, str, Optional[str], Optional[Callable]]:
    """Dense SDPA as a PyTorch user would call it; on CUDA in half precision pinned to the flash
    backend (otherwise torch may pick cuDNN/efficient, and the baseline would change between torch
    versions). Returns (callable, backend name, note, torch's default backend when the first is
    pinned to flash, else None): benchmarks time that one too ("sdpa_default"), since it can be faster."""
    F = torch.nn.functional
    kwargs = {"scale": scale}
    if q.shape[1] != k.shape[1]:
        kwargs["enable_gqa"] = True

    def plain():
        return F.scaled_dot_product_attention(q, k, v, **kwargs)

    if device.type != "cuda":
        return plain, "default", None, None
    if dtype not in (torch.bfloat16, torch.float16):
        return plain, "default", "flash SDPA needs bf16/fp16; baseline uses torch's default backend", None
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, **kwargs)

        flash()
        torch.cuda.synchronize()
        return flash, "flash", None, plain
    except Exception as exc:  # not built in, or shape/GQA not supported by it
        why = f"flash SDPA unavailable ({short_error(exc, 100)}); baseline uses torch's default backend"
        return plain, "default", why, None


def sdpa_candidates(q, k, v, scale, device, dtype, wrap: Callable[[Callable], Callable] = lambda f: f):
    """{"sdpa": ..., "sdpa_default": ... (CUDA half precision only)} from sdpa_candidate, each
    passed through wrap (no_grad, gradients); and the backend name and note of "sdpa"."""
    fn, backend, note, default = sdpa_candidate(q, k, v, scale, device, dtype)
    candidates = {"sdpa": wrap(fn)}
    if default is not None:
        candidates["sdpa_default"] = wrap(default)
    return candidates, backend, note


def gradients(forward: Callable, inputs: List[torch.Tensor], grad_out: torch.Tensor, backward_only: bool) -> Callable:
    """A callable returning the gradients of sum(forward() * grad_out) in `inputs`: each call runs
    the forward and its backward, or (backward_only) the first call runs the forward once and every
    call the backward of that graph, retained for the next. (autograd.grad rather than .backward():
    nothing accumulates in .grad between calls.)"""
    graph: List[torch.Tensor] = []

    def run():
        with torch.enable_grad():
            if not backward_only:
                return torch.autograd.grad(forward(), inputs, grad_out)
            if not graph:
                graph.append(forward())
            return torch.autograd.grad(graph[0], inputs, grad_out, retain_graph=True)

    return run


class Flex:
    """Compiled FlexAttention for one configuration; one compile serves every density (the
    BlockMask tensors keep their shapes, only their contents change)."""

    def __init__(self, cfg: AttentionShape, device: torch.device):
        self.cfg, self.device = cfg, device
        self.failed: Optional[str] = None
        self.variant: Optional[str] = None  # "full" or "partial" once one compiled
        self.compile_s: Optional[float] = None
        self.fn = None
        self.kernel_options = None
        self.note: Optional[str] = None  # why the preferred variant was not used, once
        self.compile_recorded = False
        try:
            from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
        except Exception as exc:
            self.failed = f"FlexAttention unavailable: {short_error(exc)}"
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
        if self.failed:
            return None
        variants = [self.variant] if self.variant else ["full", "partial"]
        errors = []
        for variant in variants:
            try:
                kw = {"block_mask": self.block_mask(mask, variant), "scale": scale,
                      "enable_gqa": q.shape[1] != k.shape[1]}
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
                errors.append(f"{variant} blocks: {short_error(exc)}")
        self.failed = "FlexAttention skipped, compile/run failed: " + "; ".join(errors)
        return None

    def add(self, row: dict, candidates: dict, q, k, v, scale, mask: torch.Tensor, status: Callable[[str], None]):
        """Adds "flex" to the candidates and its fields (variant, kernel options, compile time once,
        notes) to the row; returns its output, or None (with the reason in the row's notes)."""
        got = self.candidate(q, k, v, scale, mask, status)
        if got is None:
            row["notes"].append(self.failed)
            return None
        candidates["flex"], out = got
        row["flex_variant"] = self.variant
        if self.note:
            row["notes"].append(self.note)
            self.note = None
        if self.kernel_options:
            row["flex_kernel_options"] = self.kernel_options
        if self.compile_s is not None and not self.compile_recorded:
            row["flex_compile_s"], self.compile_recorded = round(self.compile_s, 2), True
        return out
