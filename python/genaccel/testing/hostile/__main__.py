"""python -m genaccel.testing.hostile [--device cpu|cuda] [--full | --fraction F] [--op NAME] [--json PATH]:
runs the hostile-input battery, prints the counts and the failed cases, exits 1 if any case failed."""

import argparse
import json
import sys
import time

import torch

from ...benchmarks.timing import environment
from . import all_cases, registry, run, sample, summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m genaccel.testing.hostile", description=__doc__)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--full", action="store_true", help="every case (default: the CI sample)")
    p.add_argument("--fraction", type=float, default=0.35, help="share of the generic cases in the sample")
    p.add_argument("--op", action="append", help="only this op (repeatable)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--json", help="write every case's outcome and the counts here")
    a = p.parse_args(argv)
    pairs = all_cases(a.device)
    skipped = {f"{name} {case}": why for name, spec in registry().items() for case, why in spec.skip.items()}
    if a.op:
        pairs = [(s, c) for s, c in pairs if c.op in a.op]
    if not a.full:
        pairs = sample(pairs, a.fraction)
    if a.list:
        for _, c in pairs:
            print(f"{c.op}  {c.id}  [{c.kind}, expect {c.expect}]")
        return 0
    start = time.monotonic()
    results = run(pairs, a.device, jobs=a.jobs, timeout=a.timeout)
    s = summary(results)
    s["device"], s["seconds"], s["full"], s["skipped"] = a.device, round(time.monotonic() - start, 1), a.full, skipped
    # After the run: on CUDA, naming the device initialises CUDA, which the forked children could not use.
    s["environment"] = environment(torch.device(a.device))
    print(f"hostile battery on {a.device}: {s['cases']} cases, {s['passed']} passed, in {s['seconds']} s")
    print("  by outcome: " + ", ".join(f"{k} {v}" for k, v in sorted(s["by_outcome"].items())))
    for op, row in sorted(s["by_op"].items()):
        print(f"  {op}: " + ", ".join(f"{k} {v}" for k, v in sorted(row.items())))
    print(f"  skipped as not applicable: {len(skipped)} (listed with the reasons in --json)")
    for r in s["failed"]:
        print(f"FAILED {r['op']} {r['case']} (expect {r['expect']}): {r['outcome']}: {r['detail']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**s, "results": results}, f, indent=1)
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
