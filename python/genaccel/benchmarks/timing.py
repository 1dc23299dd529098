"""Shared benchmark machinery: interleaved timing, progress display, environment record.

Every family times its baselines and genaccel in the same process and in the same rounds, so slow
drift of the machine (other tenants, thermal state, frequency scaling) hits all candidates alike;
comparing medians taken minutes apart on a shared machine would mostly measure the drift.
"""

from __future__ import annotations

import ctypes
import datetime
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

# The only environment variables the library reads (once, when it loads: csrc/cuda/common/debug_knobs).
DEBUG_KNOBS = ("GENACCEL_SLA_ONE_STREAM", "GENACCEL_SLA_CHUNK_BYTES")


@dataclass
class Timing:
    """Per-candidate result of `time_interleaved`, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    samples_ms: List[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "n": len(self.samples_ms),
            "samples_ms": self.samples_ms,
        }


@dataclass
class TimingPlan:
    """How long to time: warm-up calls, then enough rounds to fill `target_s` (within bounds)."""

    warmup: int = 1
    min_rounds: int = 3
    max_rounds: int = 10
    target_s: float = 2.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call. On CUDA, events on the current stream measure device time of the
    launched work; the synchronize before makes sure earlier work does not leak into this call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_interleaved(
    candidates: Dict[str, Callable[[], object]],
    device: torch.device,
    plan: TimingPlan = TimingPlan(),
    on_round: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, Timing]:
    """Times several callables against each other.

    Warm-up: each candidate runs `plan.warmup` times (caches, lazy allocations, autotuning). Then in
    each round every candidate runs once; the starting candidate rotates from round to round so no
    candidate always follows the same neighbour. The number of rounds fills about `plan.target_s`
    (estimated from the warm-up) within [min_rounds, max_rounds]. Returns the median per candidate.
    `on_round(done, total)` is called after each round (progress display).
    """
    names = list(candidates)
    if not names:
        return {}
    est_round_s = 0.0
    for _ in range(max(plan.warmup, 1)):
        est_round_s = 0.0
        for name in names:
            est_round_s += _time_once(candidates[name], device) / 1e3
    if est_round_s > 0:
        rounds = math.ceil(plan.target_s / est_round_s)
    else:
        rounds = plan.max_rounds
    rounds = max(plan.min_rounds, min(plan.max_rounds, rounds))
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time_once(candidates[name], device))
        if on_round is not None:
            on_round(r + 1, rounds)
    _sync(device)
    return {
        n: Timing(statistics.median(s), min(s), max(s), [round(x, 6) for x in s])
        for n, s in samples.items()
    }


def time_median(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """Median milliseconds of `repeats` calls after one warm-up (for things timed on their own,
    such as planning, that have nothing to be interleaved with)."""
    fn()
    return statistics.median(_time_once(fn, device) for _ in range(max(repeats, 1)))


class Progress:
    """A tqdm bar on stderr when tqdm is installed and stderr is a terminal; otherwise nothing.

    Table lines go through `write`, which keeps them from being torn by the bar. GPU machines may
    lack tqdm, and logs written to files should not fill up with carriage-return frames.
    """

    def __init__(self, total: int, desc: str, out=None, enabled: Optional[bool] = None):
        self.out = out if out is not None else sys.stdout
        self._bar = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    def status(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def peak_bytes(fn, device: torch.device) -> Optional[int]:
    """The rise of resident memory (CUDA: of torch's allocated memory) during fn() above the level
    before it (None off Linux on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        del out
        return torch.cuda.max_memory_allocated(device) - before
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc: freed memory goes back, so a new allocation shows
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set, to the current one
        before = _status_bytes("VmRSS")
    except (OSError, AttributeError):
        return None
    out = fn()
    peak = _status_bytes("VmHWM") - before
    del out
    return peak


def _git_commit() -> Optional[dict]:
    """Commit of the source tree genaccel was imported from, when it is a git checkout (editable
    installs), else of the current directory. GPU machines get a copy of the tree without .git:
    there GENACCEL_GIT_COMMIT (set by whoever starts bench/gpu_check.sh) names the commit."""
    given = os.environ.get("GENACCEL_GIT_COMMIT")
    if given:
        return {"commit": given.strip(), "dirty": None, "from": "GENACCEL_GIT_COMMIT"}
    try:
        import genaccel

        here = Path(genaccel.__file__).resolve().parent
    except Exception:
        return None
    for cwd in (here, Path.cwd()):
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
            )
            if sha.returncode != 0:
                continue
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd, capture_output=True, text=True, timeout=10,
            )
            return {
                "commit": sha.stdout.strip(),
                "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None,
                "from": "genaccel package dir" if cwd == here else "current dir",
            }
        except (OSError, subprocess.SubprocessError):
            return None
    return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


def environment(device: torch.device) -> dict:
    """What a result needs to be reproduced and compared: device, software, build, commit, date."""
    import genaccel

    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device_type": device.type,
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "genaccel_build_info": genaccel.build_info(),
        "genaccel_has_cuda_kernels": genaccel.has_cuda_kernels(),
        "git": _git_commit(),
        # The debugging knobs that are set (kernel choice and numerics are op arguments, recorded
        # in each config and row): a result taken with one says so.
        "genaccel_env": {k: os.environ[k] for k in DEBUG_KNOBS if k in os.environ},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["cuda_capability"] = f"{props.major}.{props.minor}"
        env["cuda_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["cuda_sm_count"] = props.multi_processor_count
    return env
