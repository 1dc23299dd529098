"""The benchmark registry and its one runner.

A benchmark is a declaration (`Benchmark`): its config dataclass, its default configs, and per
config a generator of rows that builds the inputs and hands the callables to time (the baselines
and the candidate, `CANDIDATE`) to `Run.time` and the output to check to `Run.check`. The runner
does everything else the same way for every family: `--set` overrides coerced from the dataclass
field types, progress, interleaved timing with warm-up and medians (timing.py), speedup fields,
the error against the float64 reference with `genaccel.testing.RTOL`, the table, the environment
record, JSON, PNG and the exit code. `genaccel bench --list` lists what is registered.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pkgutil
import sys
import typing
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .._utils import check_choice
from ..testing import DTYPE_NAMES, RTOL, rel_err
from .timing import Progress, Timing, TimingPlan, environment, time_interleaved

CANDIDATE = "genaccel"  # the timed callable every other one (a baseline) is compared with
# (header, width, formatter of a row): one table column. The first column is left-aligned.
Column = Tuple[str, int, Callable[[dict], str]]
REGISTRY: Dict[str, "Benchmark"] = {}
BROKEN: Dict[str, str] = {}  # module -> why it failed to import (the other families still run)


class BenchError(RuntimeError):
    """A benchmark cannot run at all here (no such device, unknown family): exit code 2."""


def choice(default, values: Sequence):
    """A config field restricted to `values` (a list field: each item), checked after `--set`."""
    meta = {"choices": tuple(values)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Benchmark:
    """One `genaccel bench --family NAME`, declared; `run` is the runner.

    - config: the dataclass of one configuration. Its fields are the `--set` keys (int, float, bool,
      str, List[...], Optional[...]; `choice(...)` fields are checked); warmup / min_rounds /
      max_rounds / target_s, where present, are the timing plan; `dtype` (a name of
      genaccel.testing.DTYPE_NAMES) picks the error bound; `label()` names the config's rows.
    - configs(device_type, quick): the default configurations.
    - rows(cfg, run): yields the rows of one configuration as they are done (see `Run`).
    - columns: the table; count(cfg): rows per configuration (the progress total).
    - where(row): a row in failure messages; check_where(row): its error check, where rows share one.
    - prepare(configs, overrides): drops or refuses configurations after the overrides.
    - notes(device, quick): said before the table and kept in the JSON.
    - needs_ops: the genaccel ops it runs; on a device where one has no kernel yet the run says so
      in a note and has no rows (exit 0).
    - plot(rows, env, path): writes the PNG, or returns why not.
    - experiment(configs, run): instead of rows, for a benchmark that is no timing sweep: returns
      its rows itself; failures(rows) then says what makes the run fail.
    """

    name: str
    description: str
    config: type
    configs: Callable[[str, bool], list]
    rows: Optional[Callable[[object, "Run"], Iterable[dict]]] = None
    columns: Sequence[Column] = ()
    count: Callable[[object], int] = lambda cfg: 1
    where: Callable[[dict], str] = lambda row: row["config"]
    check_where: Optional[Callable[[dict], str]] = None
    prepare: Optional[Callable[[list, dict], list]] = None
    notes: Optional[Callable[[torch.device, bool], List[str]]] = None
    needs_ops: Sequence[str] = ()
    plot: Optional[Callable[[List[dict], dict, str], Optional[str]]] = None
    experiment: Optional[Callable[[list, "Run"], List[dict]]] = None
    failures: Optional[Callable[[List[dict]], List[str]]] = None

    def make_configs(self, device_type: str, quick: bool, overrides: Optional[dict] = None) -> list:
        """The default configs with the overrides applied, checked."""
        configs = apply_overrides(self.configs(device_type, quick), overrides, self.name, self.config)
        if self.prepare is not None:
            configs = self.prepare(configs, overrides or {})
        for c in configs:
            check_config(c)
        return configs

    def run(self, device, quick: bool, overrides: Optional[dict] = None,
            progress_factory: Optional[Callable[[int, str], Progress]] = None, out=None):
        """Runs every config; returns (configs as dicts, rows, notes). The table goes to `out`."""
        out = out if out is not None else sys.stdout
        configs = self.make_configs(device.type, quick, overrides)
        dicts = [config_dict(c) for c in configs]
        missing = [op for op in self.needs_ops if not has_kernel(device, op)]
        if missing:  # not a failure of the run: there is nothing to time on this device yet
            ops = ", ".join("genaccel::" + op for op in missing)
            why = f"genaccel has no {device.type.upper()} kernel yet ({ops}): {self.name} skipped on {device.type}"
            print(f"note: {why}", file=out, flush=True)
            return dicts, [], [why]
        notes = list(self.notes(device, quick)) if self.notes is not None else []
        progress_factory = progress_factory or (lambda total, desc: Progress(total, desc, out=out))
        progress = progress_factory(sum(self.count(c) for c in configs), self.name)
        run = Run(device, quick, out, progress, notes)
        rows: List[dict] = []
        try:
            if self.experiment is not None:
                run.cfg = configs[0] if len(configs) == 1 else None
                return dicts, self.experiment(configs, run), notes
            for n in notes:
                progress.write(f"note: {n}")
            progress.write(format_header(self.columns))
            for cfg in configs:
                run.cfg = cfg
                done = []
                for row in self.rows(cfg, run):
                    done.append(row)
                    progress.advance()
                    progress.write(format_row(self.columns, row))
                for n in sorted({n for r in done for n in r.get("notes") or [] if n}):
                    progress.write(f"note ({config_dict(cfg).get('label')}): {n}")
                rows.extend(done)
        finally:
            progress.close()
        return dicts, rows, notes

    def failed(self, rows: List[dict]) -> List[str]:
        """Why the run exits 1: by default a row whose candidate raised or exceeded its error bound
        (speed targets are reported, not enforced)."""
        if self.failures is not None:
            return self.failures(rows)
        bad: List[str] = []
        for r in rows:
            if r.get("error"):
                why = f"{self.where(r)}: genaccel raised: {r['error']}"
            elif r.get("rel_err_ok") is False:
                where = (self.check_where or self.where)(r)
                why = f"{where}: rel err {r['rel_err']:.2e} above {r['rel_err_tol']:.0e}"
            else:
                continue
            if why not in bad:
                bad.append(why)
        return bad


def has_kernel(device: torch.device, op: str) -> bool:
    """Whether genaccel::<op> has a kernel for this device type. Asked of the dispatcher rather
    than assumed, so the rows of a device start running as soon as its kernel is registered."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    try:
        return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"genaccel::{op}", key)
    except AttributeError:  # a torch without the dispatcher query: every op has a CPU kernel
        return device.type == "cpu"
    except RuntimeError:  # no such op
        return False


class Run:
    """What a benchmark's rows(cfg, run) is handed: the device, the progress display, the timing
    and the error check, so that every family times and checks alike."""

    def __init__(self, device, quick: bool, out, progress: Progress, notes: List[str]):
        self.device, self.quick, self.out = device, quick, out
        self.progress, self.notes = progress, notes
        self.cfg = None  # the config being run
        self._status = ""

    def status(self, text: str) -> None:
        """What is running now (on the progress bar)."""
        self._status = text
        self.progress.status(text)

    def write(self, line: str) -> None:
        self.progress.write(line)

    def plan(self) -> TimingPlan:
        """The timing plan from the config's warmup / min_rounds / max_rounds / target_s."""
        default = TimingPlan()
        return TimingPlan(**{f.name: getattr(self.cfg, f.name, getattr(default, f.name))
                             for f in dataclasses.fields(TimingPlan)})

    def time(self, row: dict, candidates: Dict[str, Callable[[], object]], prefix: str = "") -> Dict[str, Timing]:
        """Times the callables interleaved and fills the row: {prefix}timings (all samples),
        {prefix}{name}_ms (medians) and, when CANDIDATE ran, {prefix}speedup_vs_{baseline}."""
        self.progress.status(f"{self._status}: timing {', '.join(prefix + name for name in candidates)}")
        timings = time_interleaved(candidates, self.device, self.plan())
        row[prefix + "timings"] = {name: t.as_dict() for name, t in timings.items()}
        for name, t in timings.items():
            row[f"{prefix}{name}_ms"] = t.median_ms
        if CANDIDATE in timings:
            ours = timings[CANDIDATE].median_ms
            for name, t in timings.items():
                if name != CANDIDATE:
                    row[f"{prefix}speedup_vs_{name}"] = t.median_ms / ours
        return timings

    def check(self, out: torch.Tensor, ref: torch.Tensor, *rows: dict) -> float:
        """||out - ref|| / ||ref|| against the float64 reference, bounded by RTOL of the config's
        dtype (of out's where the config has none): rel_err, rel_err_tol, rel_err_ok on each row."""
        dtype = getattr(self.cfg, "dtype", None)
        tol = RTOL[DTYPE_NAMES[dtype] if dtype is not None else out.dtype]
        err = rel_err(out, ref)
        for row in rows:
            row.update(rel_err=err, rel_err_tol=tol, rel_err_ok=bool(err <= tol))
        return err


# ---- the registry -------------------------------------------------------------------------------------


def register(bench: Benchmark) -> Benchmark:
    """Adds (or replaces) a benchmark under its name."""
    REGISTRY[bench.name] = bench
    return bench


def benchmarks() -> Dict[str, Benchmark]:
    """Every registered benchmark. The modules of this package are imported first (a family's
    module registers its benchmark when imported: adding one is adding its file); one failing to
    import is recorded in BROKEN and does not hide the others."""
    package = sys.modules[__package__]
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{__package__}.{info.name}"
        if name not in sys.modules and info.name not in BROKEN:
            try:
                importlib.import_module(name)
            except Exception as exc:
                BROKEN[info.name] = short_error(exc)
    return dict(REGISTRY)


def get(name: str) -> Benchmark:
    known = benchmarks()
    if name not in known:
        broken = f" (failed to import: {'; '.join(f'{m}: {e}' for m, e in BROKEN.items())})" if BROKEN else ""
        raise BenchError(f"unknown family {name!r}; known: {', '.join(sorted(known))}{broken}")
    return known[name]


# ---- configs and overrides ---------------------------------------------------------------------------


def parse_sets(items: Sequence[str]) -> dict:
    """`--set KEY=VALUE` items as {key: value string}."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def apply_overrides(configs: list, overrides: Optional[dict], family: str, cls) -> list:
    """Replaces fields of every config; string values (from `--set`) are converted to the field's
    annotated type. Unknown keys raise ValueError naming the known ones (a typo is refused)."""
    if not overrides:
        return configs
    fields = {f.name for f in dataclasses.fields(cls)}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"unknown {family} config key {key!r}; known: {', '.join(sorted(fields))}")
        changes[key] = _coerce(typing.get_type_hints(cls)[key], value, key) if isinstance(value, str) else value
    return [dataclasses.replace(c, **changes) for c in configs]


def _coerce(hint, value: str, key: str):
    """A `--set` string as int, float, bool, str, List[...] (comma separated), Optional[...] ("none")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if type(None) in args and value.lower() == "none":
            return None
        return _coerce([a for a in args if a is not type(None)][0], value, key)
    if origin in (list, List):
        return [_coerce(args[0] if args else str, x.strip(), key) for x in value.split(",") if x.strip()]
    if hint is bool:
        return value.lower() in ("1", "true", "yes", "on")
    if hint in (int, float, str):
        try:
            return hint(value)
        except ValueError:
            raise ValueError(f"{key} expects {hint.__name__}, got {value!r}") from None
    raise ValueError(f"cannot set {key} from the command line (type {hint})")


def check_config(cfg) -> None:
    """Raises ValueError naming the field whose value is not among its `choice(...)` values."""
    for f in dataclasses.fields(cfg):
        values = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if values is None:
            continue
        if isinstance(value, list):
            bad = [v for v in value if v not in values]
            if bad:
                raise ValueError(f"{f.name} must be among {list(values)}, got {bad}")
        else:
            check_choice(f.name, value, values)


def config_dict(cfg) -> dict:
    """A config as recorded in the JSON: its fields and its label (or its own as_dict())."""
    if hasattr(cfg, "as_dict"):
        return cfg.as_dict()
    d = dataclasses.asdict(cfg)
    if hasattr(cfg, "label"):
        d["label"] = cfg.label()
    return d


# ---- table --------------------------------------------------------------------------------------------


def fmt(x, spec: str, suffix: str = "") -> str:
    """A table cell: '-' for a missing value."""
    return "-" if x is None else f"{x:{spec}}{suffix}"


def column(header: str, width: int, key: str, spec: str = "", suffix: str = "") -> Column:
    """A column showing row[key] formatted with spec and suffix ('-' when missing)."""
    return (header, width, lambda r: fmt(r.get(key), spec, suffix))


# The error against the float64 reference (Run.check), marked "!" above its bound.
REL_ERR_COLUMN: Column = ("rel err", 9, lambda r: fmt(r.get("rel_err"), ".1e")
                          + ("!" if r.get("rel_err_ok") is False else ""))


def format_header(columns: Sequence[Column]) -> str:
    return "  ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w, _) in enumerate(columns))


def format_cells(columns: Sequence[Column], row: dict) -> str:
    return "  ".join(f"{f(row):<{w}}" if i == 0 else f"{f(row):>{w}}" for i, (_, w, f) in enumerate(columns))


def format_row(columns: Sequence[Column], row: dict) -> str:
    """One table line; a row on which genaccel raised carries the error after its cells."""
    line = format_cells(columns, row)
    if row.get("error"):
        line += f"  genaccel error: {row['error']}"
    return line


def short_error(exc: BaseException, limit: int = 160) -> str:
    """First line of an exception (inductor puts whole compiler logs into its messages)."""
    text = str(exc).strip().splitlines()
    first = next((line.strip() for line in text if line.strip()), "")
    msg = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# ---- the run ------------------------------------------------------------------------------------------


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
    """Runs one benchmark and prints its table; the entry of `genaccel bench`.

    overrides: config fields replaced in every configuration (`--set KEY=VALUE`). progress: None =
    a tqdm bar when stderr is a terminal. Returns the exit code: 0 ok, 1 when genaccel raised or
    exceeded its error bound on some row (the table and JSON are still written). Raises BenchError
    or ValueError when nothing can run (exit code 2 on the command line).
    """
    out = out if out is not None else sys.stdout
    bench = get(family)
    dev = resolve_device(device)
    env = environment(dev)
    git = env.get("git") or {}
    print(
        f"genaccel bench {family} on {env['device_name']} ({dev.type}), torch {env['torch_version']}, "
        f"{env['torch_num_threads']} threads, genaccel {env['genaccel_build_info'].get('version')}"
        + (f" @ {git['commit'][:10]}{'+dirty' if git.get('dirty') else ''}" if git.get("commit") else ""),
        file=out, flush=True,
    )
    configs, rows, notes = bench.run(dev, quick, overrides,
                                     lambda total, desc: Progress(total, desc, out=out, enabled=progress), out)
    result = {"schema": 1, "family": family, "quick": quick, "environment": env,
              "configs": configs, "notes": notes, "rows": rows}
    if plot_path:
        note = bench.plot(rows, env, plot_path) if bench.plot is not None else f"{family} has no plot"
        if note:
            notes.append(note)
            print(f"note: {note}", file=out)
        else:
            print(f"plot written to {plot_path}", file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(_jsonable(result), f, indent=1)
            f.write("\n")
        print(f"json written to {json_path}", file=out)
    bad = bench.failed(rows)
    for b in bad:
        print(f"FAIL: {b}", file=out)
    return 1 if bad else 0
