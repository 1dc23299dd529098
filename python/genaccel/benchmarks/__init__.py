"""Benchmarks behind `genaccel bench`: one module per family, shared timing in `timing.py`.

A family module provides `run(device, quick, overrides, progress_factory, out) -> (configs, rows,
notes)`, `plot(rows, env, path) -> note or None` and `failures(rows) -> [reason]`. Families are
imported only when picked, so a broken or slow-to-import family does not break the others.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from typing import List, Optional

import torch

# name -> (module, one-line description). SLA, XQuant, ... add their entry here.
FAMILIES = {
    "attention": ("genaccel.benchmarks.attention", "block-sparse attention vs dense SDPA and FlexAttention"),
    "sla": ("genaccel.benchmarks.sla", "sparse-linear attention (SLA) vs dense SDPA, forward and forward+backward"),
    "sla-finetune": ("genaccel.benchmarks.sla_finetune",
                     "SLA student vs dense teacher on a frozen attention stack: error before/after training"),
}


class BenchError(RuntimeError):
    """A benchmark cannot run at all here (no such device, unknown family): exit code 2."""


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch has no CUDA support" if torch.version.cuda is None
                   else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
            raise BenchError(f"--device cuda: no GPU available ({why}). Run on a GPU machine "
                             "(bench/gpu_check.sh) or use --device cpu.")
        return torch.device("cuda", torch.cuda.current_device())
    raise BenchError(f"unknown device {name!r}; use cpu or cuda")


def _jsonable(x):
    """JSON without NaN/Infinity (not valid JSON): non-finite floats become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def run_bench(
    family: str = "attention",
    device: str = "cpu",
    quick: bool = False,
    json_path: Optional[str] = None,
    plot_path: Optional[str] = None,
    overrides: Optional[dict] = None,
    out=None,
    progress: Optional[bool] = None,
) -> int:
    """Runs one family and prints its table; the internal entry of `genaccel bench`.

    overrides: config fields replaced in every configuration of the family (tests use it to shrink
    sizes; `--set KEY=VALUE` on the command line). progress: None = tqdm bar when stderr is a
    terminal. Returns the exit code: 0 ok, 1 when genaccel raised or exceeded its error bound on
    some row (the table and JSON are still written), 2 when nothing could run.
    """
    from .timing import Progress, environment

    out = out if out is not None else sys.stdout
    if family not in FAMILIES:
        raise BenchError(f"unknown family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    dev = resolve_device(device)
    mod = importlib.import_module(FAMILIES[family][0])
    env = environment(dev)
    git = env.get("git") or {}
    print(
        f"genaccel bench {family} on {env['device_name']} ({dev.type}), torch {env['torch_version']}, "
        f"{env['torch_num_threads']} threads, genaccel {env['genaccel_build_info'].get('version')}"
        + (f" @ {git['commit'][:10]}{'+dirty' if git.get('dirty') else ''}" if git.get("commit") else ""),
        file=out, flush=True,
    )

    def progress_factory(total: int, desc: str) -> Progress:
        return Progress(total, desc, out=out, enabled=progress)

    configs, rows, notes = mod.run(dev, quick, overrides, progress_factory, out)
    result = {
        "schema": 1,
        "family": family,
        "quick": quick,
        "environment": env,
        "configs": configs,
        "notes": notes,
        "rows": rows,
    }
    if plot_path:
        note = mod.plot(rows, env, plot_path)
        if note:
            result["notes"].append(note)
            print(f"note: {note}", file=out)
        else:
            print(f"plot written to {plot_path}", file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(_jsonable(result), f, indent=1)
            f.write("\n")
        print(f"json written to {json_path}", file=out)
    bad: List[str] = mod.failures(rows)
    for b in bad:
        print(f"FAIL: {b}", file=out)
    return 1 if bad else 0
