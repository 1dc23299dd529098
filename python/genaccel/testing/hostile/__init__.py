"""The hostile-input battery: bad and extreme inputs against every registered op, each case in its own
forked child process with a time limit (and on the CPU a memory limit), so that a crash or a hang is a
failed case, not a dead run.

Each family registers its ops (`OpSpec`: how to call the op, valid base arguments, the float64
reference, the role of each argument) in a module of this package listed in FAMILIES. The catalogue
(`cases`) derives the generic cases from the roles: wrong ranks, zero-size dims, wrong dtypes, meta and
mixed devices, NaN/inf at several positions, huge expanded sizes, out-of-range plan entries,
non-contiguous / channels-last / stride-0 / overlapping views, scalars of the wrong type or out of range;
each family adds the cases only it knows (`OpSpec.extra`). Every case carries its expectation:

- ERROR: a clean error (RuntimeError, ValueError, TypeError, IndexError) whose message names the
  argument (regex `names`);
- RESULT: a result that matches the float64 reference on the same (hostile) arguments: the same
  non-finite pattern and the dtype's tolerance on the finite part;
- EITHER: one or the other (e.g. zero-size dims: computed or refused clearly);
- SHAPES: outputs with the shapes and dtypes of the real call (inputs on the meta device).

Outcomes: `refused` and `computed` pass when expected; the failures are `crash`, `hang`, `garbage` (a
result where an error was due, or one that differs from the reference), `unclear` (an error of another
type, or one that does not name the argument) and `unverified` (the reference itself failed).

Run: `python -m genaccel.testing.hostile [--device cpu|cuda] [--full] [--json PATH]`; tests/test_hostile.py
runs the CI sample (GENACCEL_HOSTILE=full: every case).
"""

import importlib
import json
import math
import os
import re
import resource
import select
import signal
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .. import RTOL

FAMILIES = ("genaccel.testing.hostile.block_sparse", "genaccel.testing.hostile.sla", "genaccel.testing.hostile.radial",
            "genaccel.testing.hostile.svg2", "genaccel.testing.hostile.xquant", "genaccel.testing.hostile.dcae")

ERROR, RESULT, EITHER, SHAPES = "error", "result", "either", "shapes"
PASSING = {ERROR: {"refused"}, RESULT: {"computed"}, EITHER: {"refused", "computed"}, SHAPES: {"computed"}}
CLEAN_ERRORS = ("RuntimeError", "ValueError", "TypeError", "IndexError")
# Messages that are never a clean refusal, whatever argument they name.
UNCLEAR_MESSAGES = re.compile(r"internal error|std::bad_alloc|INTERNAL ASSERT|Segmentation", re.I)

Args = Dict[str, Any]


@dataclass(frozen=True)
class Case:
    op: str
    id: str
    kind: str                          # the catalogue class, for the counts
    mutate: Callable[[Args], Args]     # base arguments -> hostile arguments (runs in the child)
    expect: str
    names: str = ""                    # regex an error message must match


@dataclass
class OpSpec:
    """How the battery calls one op (a raw torch.ops.genaccel op or a public wrapper).

    base(gen, device) -> valid keyword arguments, small; call(**args) -> the result; reference(args) ->
    the float64 expected outputs, a tuple aligned with outputs(result). tensors: argument -> role
    ("data": floating-point input, gets every layout and NaN case; "stat": a float32 statistic from a
    forward (lse, delta); "index": int32 plan entries; "count": int32 plan counts; "codes": int8 SLA
    codes; "mask": a bool block mask; "weight": a floating-point parameter). scalars: argument -> kind
    (a key of SCALARS). nonfinite: the data arguments that get
    NaN/inf cases. ok_dtypes: per argument, the dtypes it accepts besides its base dtype (their cases
    expect a result). aliases: per argument, a regex its errors may name instead (a wrapper's own name
    for it). extra: the family's own cases.
    """

    name: str
    call: Callable[..., Any]
    base: Callable[[torch.Generator, str], Args]
    reference: Optional[Callable[[Args], Tuple[torch.Tensor, ...]]]
    tensors: Dict[str, str]
    scalars: Dict[str, str] = field(default_factory=dict)
    outputs: Callable[[Any], Tuple[torch.Tensor, ...]] = lambda r: tuple(r) if isinstance(r, (tuple, list)) else (r,)
    nonfinite: Sequence[str] = ()
    ok_dtypes: Dict[str, Sequence[torch.dtype]] = field(default_factory=dict)
    aliases: Dict[str, str] = field(default_factory=dict)
    extra: Callable[["OpSpec"], List[Case]] = lambda spec: []
    # (shape, dtype) of each output on the meta device, where they depend on values (default: the real call's).
    meta_outputs: Optional[Callable[[Args], List[Tuple[Tuple[int, ...], torch.dtype]]]] = None
    # On CUDA a non-finite input poisons whole rows (last dim) of the outputs: compared per row there.
    cuda_poisons_rows: bool = False
    # Generic cases that do not apply to this op: case id -> why (listed with the counts as skipped).
    skip: Dict[str, str] = field(default_factory=dict)
    devices: Sequence[str] = ("cpu", "cuda")


_REGISTRY: Dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"op {spec.name} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def registry() -> Dict[str, OpSpec]:
    for module in FAMILIES:
        importlib.import_module(module)
    return _REGISTRY


# ------------------------------------------------------------------------------------------------
# The generic catalogue
# ------------------------------------------------------------------------------------------------


def names_regex(spec: OpSpec, arg: str) -> str:
    """An error about `arg` must name it (or its alias)."""
    alias = spec.aliases.get(arg)
    return rf"\b{re.escape(arg)}\b" + (f"|{alias}" if alias else "")


def any_arg_regex(spec: OpSpec) -> str:
    """An error that may legitimately name any argument (e.g. a shape mismatch found on the other side)."""
    names = list(spec.tensors) + list(spec.scalars) + [a for a in spec.aliases.values()]
    return "|".join(rf"\b{re.escape(n)}\b" if n.isidentifier() else n for n in names)


def _set(arg: str, fn: Callable[[Any], Any]) -> Callable[[Args], Args]:
    def mutate(args: Args) -> Args:
        out = dict(args)
        out[arg] = fn(args[arg])
        return out
    return mutate


def _value(arg: str, value: Any) -> Callable[[Args], Args]:
    return _set(arg, lambda _: value)


def overlapping_rows(t: torch.Tensor) -> torch.Tensor:
    """A view of t's values' shape whose consecutive rows overlap (row stride 1 < row length)."""
    *lead, n, d = t.shape
    per = n + d - 1
    flat = torch.randn(max(1, math.prod(lead)) * per, dtype=torch.float32).to(t.dtype).to(t.device)
    strides, step = [], per
    for s in reversed(lead):
        strides.insert(0, step)
        step *= s
    return flat.as_strided(t.shape, (*strides, 1, 1))


def _put(t: torch.Tensor, where: str, value: float, seed: int) -> torch.Tensor:
    t = t.clone()
    flat = t.view(-1)
    if flat.numel() == 0:
        return t
    index = {"first": 0, "last": flat.numel() - 1, "middle": flat.numel() // 2}.get(where)
    if index is None:
        index = int(torch.randint(0, flat.numel(), (1,), generator=torch.Generator().manual_seed(seed)))
    flat[index] = value
    return t


BAD_FLOAT_DTYPES = (torch.float64, torch.int32, torch.int64, torch.bool, torch.complex64, torch.uint8)
BAD_INT_DTYPES = (torch.int64, torch.int16, torch.float32, torch.bool)
# Views with the same values: every op must compute on them what it computes on contiguous tensors.
SAME_VALUES = {
    "transposed": lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() >= 2 else t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t,
    "strided": lambda t: torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0],
}
# Views whose memory is shared between elements (so their values change): stride-0 rows, overlapping rows.
SHARED_MEMORY = {
    "stride0_rows": lambda t: t[..., :1, :].expand_as(t) if t.dim() >= 2 and t.shape[-2] > 0 else t,
    "stride0_heads": lambda t: t[:, :1].expand_as(t) if t.dim() >= 3 and t.shape[1] > 0 else t,
    "overlapping_rows": lambda t: overlapping_rows(t) if t.dim() >= 2 else t,
}
HUGE = ((0, 1 << 40), (2, 1 << 40))  # stride-0 expands: no memory, but no kernel could compute them


def tensor_cases(spec: OpSpec, arg: str, role: str) -> List[Case]:
    op, named, anyone = spec.name, names_regex(spec, arg), any_arg_regex(spec)
    on_device = rf"(?s)({named}).*device|device.*({named})"
    cases = [
        Case(op, f"{arg}.rank_up", "rank", _set(arg, lambda t: t.unsqueeze(0)), ERROR, named),
        Case(op, f"{arg}.rank_down", "rank", _set(arg, lambda t: t[0]), ERROR, named),
        Case(op, f"{arg}.scalar", "rank", _set(arg, lambda t: t.reshape(-1)[0].clone()), ERROR, named),
    ]
    if len(spec.tensors) > 1:  # a lone tensor on the meta device is the all_meta case
        cases.append(Case(op, f"{arg}.meta", "device", _set(arg, lambda t: t.to("meta")), ERROR, on_device))
        cases.append(Case(op, f"{arg}.other_device", "device", _set(arg, _other_device), ERROR, on_device))
    bad_dtypes = BAD_FLOAT_DTYPES if role in ("data", "stat", "weight") else BAD_INT_DTYPES if role in (
        "index", "count", "codes") else (torch.uint8, torch.float32, torch.int64)
    for dtype in bad_dtypes:
        ok = dtype in spec.ok_dtypes.get(arg, ())
        cases.append(Case(op, f"{arg}.dtype_{str(dtype).removeprefix('torch.')}", "dtype",
                          _set(arg, lambda t, dtype=dtype: t.to(dtype)), RESULT if ok else ERROR, named))
    for dim in range(4):
        cases.append(Case(op, f"{arg}.empty_dim{dim}", "zero-size",
                          _set(arg, lambda t, dim=dim: t.narrow(dim, 0, 0) if t.dim() > dim else t), EITHER, anyone))
    for name, layout in SAME_VALUES.items():
        cases.append(Case(op, f"{arg}.{name}", "layout", _set(arg, layout), RESULT))
    # Shared memory changes the values: free for data, weights and masks; a plan may become invalid.
    for name, layout in SHARED_MEMORY.items():
        if role in ("data", "weight", "mask"):
            cases.append(Case(op, f"{arg}.{name}", "layout", _set(arg, layout), RESULT))
        elif role != "stat" and name.startswith("stride0"):
            cases.append(Case(op, f"{arg}.{name}", "layout", _set(arg, layout), EITHER, anyone))
    for dim, size in HUGE:
        cases.append(Case(op, f"{arg}.huge_dim{dim}", "huge", _set(arg, lambda t, dim=dim, size=size: _huge(t, dim, size)),
                          ERROR, anyone + "|memory|allocate"))
    if arg in spec.nonfinite:
        for i, (where, value) in enumerate((("first", math.nan), ("last", math.nan), ("middle", math.inf),
                                            ("random", -math.inf), ("random", math.nan))):
            cases.append(Case(op, f"{arg}.{'nan' if value != value else 'inf' if value > 0 else '-inf'}_{where}{i}",
                              "non-finite", _set(arg, lambda t, w=where, v=value, s=i: _put(t, w, v, s)), RESULT))
    if role == "index":
        for value in (-5, 1 << 20, (1 << 31) - 1):
            cases.append(Case(op, f"{arg}.fill_{value}", "plan", _set(arg, lambda t, v=value: torch.full_like(t, v)),
                              ERROR, named))
    if role == "count":
        for value in (-1, 1 << 20):
            cases.append(Case(op, f"{arg}.fill_{value}", "plan", _set(arg, lambda t, v=value: torch.full_like(t, v)),
                              ERROR, named))
    if role == "codes":
        for value in (2, -2, 127, -128):
            cases.append(Case(op, f"{arg}.fill_{value}", "plan", _set(arg, lambda t, v=value: torch.full_like(t, v)),
                              ERROR, named))
    return cases


def _other_device(t: torch.Tensor) -> torch.Tensor:
    """t on the other real device: the CPU for a CUDA tensor; on a CPU-only run, meta again."""
    return t.cpu() if t.is_cuda else t.to("meta")


def _huge(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """t with dim `dim` (its last, if it has fewer) enlarged to `size` through a stride-0 expand (no memory)."""
    if t.dim() == 0:
        return t
    dim = min(dim, t.dim() - 1)
    shape = list(t.shape)
    shape[dim] = size
    return t.narrow(dim, 0, 1).expand(*shape) if t.shape[dim] > 0 else t


SCALARS = {
    "int": [("str", "64", ERROR), ("float", 64.5, ERROR), ("none", None, ERROR), ("negative", -1, ERROR),
            ("zero", 0, EITHER), ("above_int32", 1 << 31, ERROR), ("huge", 1 << 62, ERROR)],
    "optional_int": [("str", "4", ERROR), ("float", 2.0, ERROR), ("bool", True, ERROR), ("negative", -1, ERROR),
                     ("above_int32", 1 << 31, ERROR)],
    "block": [("str", "64", ERROR), ("float", 64.5, ERROR), ("negative", -64, ERROR), ("zero", 0, ERROR),
              ("bool", True, ERROR), ("tuple1", (64,), ERROR), ("pair_zero", (64, 0), ERROR)],
    "float": [("str", "0.3", ERROR), ("nan", math.nan, ERROR), ("inf", math.inf, ERROR),
              ("-inf", -math.inf, ERROR), ("above_float32", 1e39, ERROR), ("zero", 0.0, RESULT),
              ("negative", -0.5, RESULT), ("tiny", 1e-30, RESULT), ("none", None, ERROR)],
    "optional_float": [("str", "0.3", ERROR), ("bool", True, ERROR), ("nan", math.nan, ERROR), ("inf", math.inf, ERROR),
                       ("above_float32", 1e39, ERROR), ("zero", 0.0, RESULT), ("negative", -0.5, RESULT)],
    "nonnegative_float": [("str", "0.3", ERROR), ("bool", True, ERROR), ("nan", math.nan, ERROR), ("inf", math.inf, ERROR),
                          ("negative", -0.5, ERROR), ("zero", 0.0, RESULT), ("large", 10.0, RESULT), ("none", None, ERROR)],
    "fraction": [("str", "0.2", ERROR), ("nan", math.nan, ERROR), ("negative", -0.1, ERROR), ("above_one", 1.5, ERROR),
                 ("bool", True, ERROR), ("inf", math.inf, ERROR)],
    # None for a bool with a default: torch's argument parsing takes the default, or refuses it.
    "bool": [("str", "yes", ERROR), ("none", None, EITHER)],
    "choice": [("bogus", "bogus", ERROR), ("empty", "", ERROR), ("int", 3, ERROR), ("none", None, ERROR)],
}


def scalar_cases(spec: OpSpec, arg: str, kind: str) -> List[Case]:
    return [Case(spec.name, f"{arg}.{label}", "scalar", _value(arg, value), expect, names_regex(spec, arg))
            for label, value, expect in SCALARS[kind]]


def cases(spec: OpSpec) -> List[Case]:
    out = [Case(spec.name, "base", "base", lambda a: a, RESULT)]
    out.append(Case(spec.name, "all_meta", "device", lambda a: {n: t.to("meta") if isinstance(t, torch.Tensor) else t
                                                               for n, t in a.items()}, SHAPES))
    for arg, role in spec.tensors.items():
        out += tensor_cases(spec, arg, role)
    for arg, kind in spec.scalars.items():
        out += scalar_cases(spec, arg, kind)
    out += spec.extra(spec)
    unknown = set(spec.skip) - {c.id for c in out}
    if unknown:
        raise ValueError(f"{spec.name}: skip names no case: {sorted(unknown)}")
    out = [c for c in out if c.id not in spec.skip]
    ids = [c.id for c in out]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"{spec.name}: duplicate case ids {sorted(duplicates)}")
    return out


def all_cases(device: str = "cpu") -> List[Tuple[OpSpec, Case]]:
    return [(spec, case) for spec in registry().values() if device in spec.devices for case in cases(spec)]


def sample(pairs: List[Tuple[OpSpec, Case]], fraction: float) -> List[Tuple[OpSpec, Case]]:
    """A fixed sample: every base and family case, and about `fraction` of the generic ones (by a hash of
    the id, so the sample is the same on every run and covers every kind)."""
    keep = []
    for spec, case in pairs:
        h = zlib.crc32(f"{case.op}/{case.id}".encode()) / 2**32
        if case.kind in ("base", "family") or h < fraction:
            keep.append((spec, case))
    return keep


# ------------------------------------------------------------------------------------------------
# Checking one case (in the child)
# ------------------------------------------------------------------------------------------------


def to_device(x: Any, device: str) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(to_device(t, device) for t in x)
    return x


def compare(outputs: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], dtype: torch.dtype,
            rows: bool = False) -> Optional[str]:
    """None if outputs match the float64 expectation: equal shapes, the same non-finite entries (with
    `rows`, the same rows holding one), and ||out - ref|| / ||ref|| within the dtype's tolerance on the
    finite ones (exact for integers)."""
    if len(outputs) != len(expected):
        return f"{len(outputs)} outputs, expected {len(expected)}"
    tol = RTOL.get(dtype, 1e-4)
    for i, (out, ref) in enumerate(zip(outputs, expected)):
        if not isinstance(out, torch.Tensor):
            return f"output {i} is a {type(out).__name__}, not a tensor"
        out = out.detach().cpu()
        if tuple(out.shape) != tuple(ref.shape):
            return f"output {i} has shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
        if not ref.is_floating_point():
            if not torch.equal(out.to(ref.dtype), ref):
                return f"output {i} differs from the reference in {(out.to(ref.dtype) != ref).sum().item()} entries"
            continue
        out = out.double()
        if rows and ref.dim() > 0:
            finite_rows = torch.isfinite(ref).all(-1, keepdim=True)
            if not torch.equal(torch.isfinite(out).all(-1, keepdim=True), finite_rows):
                return f"output {i}: non-finite values in other rows than the reference's"
            out, ref = out * finite_rows, ref.masked_fill(~finite_rows, 0.0)
            out = out.nan_to_num(0.0, 0.0, 0.0)
        finite = torch.isfinite(ref)
        if not torch.equal(torch.isfinite(out), finite):
            return (f"output {i}: {(~torch.isfinite(out)).sum().item()} non-finite entries, the reference has "
                    f"{(~finite).sum().item()} (at other places)")
        a, b = out[finite], ref[finite]
        norm = b.norm().item()
        err = (a - b).norm().item() / norm if norm > 0 else (a - b).norm().item()
        if not err <= tol:
            return f"output {i}: relative error {err:.3g} > {tol}"
    return None


def data_dtype(spec: OpSpec, args: Args) -> torch.dtype:
    """The dtype the op computes in, for its tolerance: that of its first floating-point data input."""
    for arg, role in spec.tensors.items():
        t = args.get(arg)
        if role == "data" and isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.dtype
    return torch.float32


def check_case(spec: OpSpec, case: Case, device: str, seed: int) -> Dict[str, Any]:
    """Runs the case: what it raised, or whether its result matched the expectation."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    base = spec.base(gen, device)
    args = case.mutate(dict(base))
    try:
        result = spec.call(**args)
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 (classified by the parent)
        return {"raised": type(e).__name__, "message": str(e)[:1500]}
    outputs = spec.outputs(result)
    if case.expect == SHAPES:
        got = [(tuple(o.shape), o.dtype) for o in outputs]
        want = (spec.meta_outputs(base) if spec.meta_outputs else
                [(tuple(o.shape), o.dtype) for o in spec.outputs(spec.call(**base))])
        return {"returned": True, "mismatch": None if got == want else f"meta outputs {got}, expected {want}"}
    if case.expect == ERROR:
        return {"returned": True, "mismatch": "returned a result where an error was due"}
    try:
        expected = spec.reference({n: to_device(v, "cpu") for n, v in args.items()})
    except Exception as e:  # noqa: BLE001
        return {"returned": True, "unverified": f"the reference raised {type(e).__name__}: {str(e)[:300]}"}
    rows = spec.cuda_poisons_rows and device == "cuda"
    return {"returned": True, "mismatch": compare(outputs, expected, data_dtype(spec, args), rows)}


def classify(case: Case, report: Optional[Dict[str, Any]], status: str) -> Tuple[str, str]:
    """(outcome, detail) of a finished case."""
    if status == "hang":
        return "hang", "exceeded the time limit"
    if report is None:
        return "crash", status
    if "raised" in report:
        message = report["message"]
        clean = (report["raised"] in CLEAN_ERRORS and not UNCLEAR_MESSAGES.search(message)
                 and (not case.names or re.search(case.names, message)))
        return ("refused" if clean else "unclear"), f"{report['raised']}: {message.splitlines()[0][:300] if message else ''}"
    if report.get("unverified"):
        return "unverified", report["unverified"]
    if report.get("mismatch"):
        return "garbage", report["mismatch"]
    return "computed", ""


# ------------------------------------------------------------------------------------------------
# Running cases in forked children
# ------------------------------------------------------------------------------------------------


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(spec: OpSpec, case: Case, device: str, seed: int, fd: int, memory_limit: int) -> None:
    try:
        torch.set_num_threads(1)
        if device == "cpu" and memory_limit > 0:
            limit = _vm_bytes() + memory_limit
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        report = check_case(spec, case, device, seed)
    except BaseException as e:  # noqa: BLE001 (the case's own setup failed: the battery's fault)
        report = {"returned": False, "unverified": f"setting up the case raised {type(e).__name__}: {e}"[:1500]}
    data = json.dumps(report).encode()
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os._exit(0)


def run(pairs: List[Tuple[OpSpec, Case]], device: str = "cpu", jobs: int = 2, timeout: float = 60.0,
        memory_limit: int = 4 << 30, progress: bool = True) -> List[Dict[str, Any]]:
    """Runs each case in a forked child (at most `jobs` at a time): its outcome, detail and pass/fail."""
    if device == "cuda" and torch.cuda.is_initialized():
        raise RuntimeError("hostile battery: CUDA is initialised in this process; the children it forks could not use it")
    pending = list(enumerate(pairs))
    running: Dict[int, Tuple[int, int, float, bytearray]] = {}  # pid -> (index, read fd, start, data)
    results: List[Optional[Dict[str, Any]]] = [None] * len(pairs)
    done = 0
    while pending or running:
        while pending and len(running) < jobs:
            index, (spec, case) = pending.pop(0)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                _child(spec, case, device, zlib.crc32(case.id.encode()), w, memory_limit)
            os.close(w)
            running[pid] = (index, r, time.monotonic(), bytearray())
        readable, _, _ = select.select([v[1] for v in running.values()], [], [], 0.05)
        for pid, (index, r, start, data) in list(running.items()):
            if r in readable:
                chunk = os.read(r, 1 << 16)
                data.extend(chunk)
                if chunk:
                    continue
            finished, status = os.waitpid(pid, os.WNOHANG)
            over = time.monotonic() - start > timeout
            if not finished and not over:
                continue
            if not finished:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                how = "hang"
            elif os.WIFSIGNALED(status):
                how = f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
            else:
                how = f"exit status {os.WEXITSTATUS(status)}"
            while True:  # the rest of what the child wrote
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    break
                data.extend(chunk)
            os.close(r)
            del running[pid]
            spec, case = pairs[index]
            report = None
            if how != "hang" and data:
                try:
                    report = json.loads(bytes(data))
                except ValueError:
                    report = None
            outcome, detail = classify(case, report, how)
            results[index] = {"op": case.op, "case": case.id, "kind": case.kind, "expect": case.expect,
                              "outcome": outcome, "passed": outcome in PASSING[case.expect], "detail": detail,
                              "seconds": round(time.monotonic() - start, 3)}
            done += 1
            if progress and (done % 25 == 0 or done == len(pairs)):
                print(f"hostile battery: {done}/{len(pairs)} cases", flush=True)
    return results  # type: ignore[return-value]


def summary(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Counts by outcome, by op and by kind, and the failed cases."""
    def count(key):
        table: Dict[str, Dict[str, int]] = {}
        for r in results:
            row = table.setdefault(r[key], {})
            row[r["outcome"]] = row.get(r["outcome"], 0) + 1
        return table

    by_outcome: Dict[str, int] = {}
    for r in results:
        by_outcome[r["outcome"]] = by_outcome.get(r["outcome"], 0) + 1
    return {"cases": len(results), "passed": sum(r["passed"] for r in results), "by_outcome": by_outcome,
            "by_op": count("op"), "by_kind": count("kind"), "failed": [r for r in results if not r["passed"]]}
