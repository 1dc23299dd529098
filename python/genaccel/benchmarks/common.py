"""Helpers shared by the benchmark families: config overrides, error metric, table formatting.

They live here rather than in one family so that every family prints, coerces and measures the same
way (a `--set` value or a relative error means one thing across `genaccel bench` families).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Callable, List, Optional, Sequence, Tuple

import torch

# (header, width, formatter of a row): one table column. The first column is left-aligned.
Column = Tuple[str, int, Callable[[dict], str]]


def apply_overrides(configs: list, overrides: Optional[dict], family: str,
                    coerce: Optional[Callable[[str, object, object], object]] = None, cls=None) -> list:
    """Replaces fields of every (dataclass) config; values may be strings (from `--set KEY=VALUE`).

    `coerce(key, value, sample_config)` turns a string into the field's value; by default
    `coerce_from_type` reads the field's annotation. `cls` (the config dataclass) is needed only
    when `configs` may be empty; it defaults to the type of the first config. Unknown keys raise
    ValueError naming the known ones, so a typo on the command line is refused, not ignored.
    """
    if not overrides:
        return configs
    cls = cls if cls is not None else type(configs[0])
    fields = {f.name: f for f in dataclasses.fields(cls)}
    coerce = coerce or (lambda key, value, sample: coerce_from_type(cls, key, value))
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"unknown {family} config key {key!r}; known: {', '.join(sorted(fields))}")
        changes[key] = coerce(key, value, configs[0] if configs else None)
    return [dataclasses.replace(c, **changes) for c in configs]


def _parse_bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


def coerce_from_type(cls, key: str, value):
    """Converts a `--set` string to the type annotated on dataclass field `key` of `cls`: int,
    float, bool, str, List[int|float|str] (comma separated) and Optional[...] ("none" = None).
    Non-strings (overrides given from Python) pass through unchanged."""
    if not isinstance(value, str):
        return value
    hint = typing.get_type_hints(cls)[key]
    return _coerce_hint(hint, value, key)


def _coerce_hint(hint, value: str, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if type(None) in args and value.lower() == "none":
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce_hint(inner[0], value, key)
    if origin in (list, List):
        item = args[0] if args else str
        return [_coerce_hint(item, x.strip(), key) for x in value.split(",") if x.strip()]
    if hint is bool:
        return _parse_bool(value)
    if hint in (int, float, str):
        try:
            return hint(value)
        except ValueError:
            raise ValueError(f"{key} expects {hint.__name__}, got {value!r}") from None
    raise ValueError(f"cannot set {key} from the command line (type {hint})")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (the absolute norm when ref is zero)."""
    out, ref = out.double(), ref.double()
    denom = ref.norm()
    diff = (out - ref).norm()
    return (diff / denom).item() if denom > 0 else diff.item()


def short_error(exc: BaseException, limit: int = 160) -> str:
    """First line of an exception (inductor puts whole compiler logs into its messages)."""
    text = str(exc).strip().splitlines()
    first = next((line.strip() for line in text if line.strip()), "")
    msg = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def fmt(x, spec: str, suffix: str = "") -> str:
    """A table cell: '-' for a missing value."""
    return "-" if x is None else f"{x:{spec}}{suffix}"


def format_header(columns: Sequence[Column]) -> str:
    return "  ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w, _) in enumerate(columns))


def format_cells(columns: Sequence[Column], row: dict) -> str:
    cells = []
    for i, (_, w, f) in enumerate(columns):
        text = f(row)
        cells.append(f"{text:<{w}}" if i == 0 else f"{text:>{w}}")
    return "  ".join(cells)


def format_row(columns: Sequence[Column], row: dict) -> str:
    """One table line; a row on which genaccel raised carries the error after its cells."""
    line = format_cells(columns, row)
    if row.get("error"):
        line += f"  genaccel error: {row['error']}"
    return line


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


def sdpa_candidate(q, k, v, scale, device: torch.device, dtype: torch.dtype) -> Tuple[Callable, str, Optional[str], Optional[Callable]]:
    """Dense SDPA as a PyTorch user would call it; on CUDA in half precision pinned to the flash
    backend (otherwise torch may pick cuDNN/efficient, and the baseline would change between torch
    versions). Returns (callable, backend name, note, torch's default backend when the first is
    pinned to flash, else None): benchmarks time that one too, since it can be faster."""
    F = torch.nn.functional
    gqa = q.shape[1] != k.shape[1]
    kwargs = {"scale": scale}
    if gqa:
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
        return plain, "default", f"flash SDPA unavailable ({short_error(exc, 100)}); baseline uses torch's default backend", None


def record_sdpa_default(row: dict, timings: dict) -> None:
    """Fills sdpa_default_ms and speedup_vs_sdpa_default when torch's default SDPA backend was timed
    too (candidate "sdpa_default", see sdpa_candidate)."""
    if "sdpa_default" in timings:
        row["sdpa_default_ms"] = timings["sdpa_default"].median_ms
        if row.get("genaccel_ms"):
            row["speedup_vs_sdpa_default"] = row["sdpa_default_ms"] / row["genaccel_ms"]


def gradients(forward: Callable, inputs: List[torch.Tensor], grad_out: torch.Tensor, backward_only: bool) -> Callable:
    """A callable returning the gradients of sum(forward() * grad_out) in `inputs`: each call runs
    the forward and its backward, or (backward_only) the first call runs the forward once and every
    call the backward of that graph, retained for the next."""
    graph: List[torch.Tensor] = []

    def run():
        with torch.enable_grad():
            if not backward_only:
                return torch.autograd.grad(forward(), inputs, grad_out)
            if not graph:
                graph.append(forward())
            return torch.autograd.grad(graph[0], inputs, grad_out, retain_graph=True)

    return run
