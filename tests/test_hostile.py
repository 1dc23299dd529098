"""The hostile-input battery (genaccel.testing.hostile): its CI sample (GENACCEL_HOSTILE=full: every
case) passes with no crash, hang, garbage or unclear error; it holds the cases the issue asked for;
and the battery itself tells a wrong result, a crash, a hang and an unclear error from a pass."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from conftest import run_in_child
from genaccel.testing import hostile


def test_battery_passes(tmp_path):
    full = os.environ.get("GENACCEL_HOSTILE") == "full"
    path = tmp_path / "hostile.json"
    cmd = [sys.executable, "-m", "genaccel.testing.hostile", "--json", str(path)] + (["--full"] if full else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    report = json.loads(path.read_text())
    failed = "\n".join(f"{r['op']} {r['case']} (expect {r['expect']}): {r['outcome']}: {r['detail']}"
                       for r in report["failed"])
    assert proc.returncode == 0 and not report["failed"], f"{failed}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert report["cases"] >= (400 if full else 150)


def test_catalogue_covers_every_op_and_kind():
    pairs = hostile.all_cases("cpu")
    assert len(pairs) >= 400
    kinds = {"rank", "device", "dtype", "zero-size", "layout", "huge", "non-finite", "plan", "scalar", "family"}
    per_op = {}
    for _, case in pairs:
        per_op.setdefault(case.op, Counter())[case.kind] += 1
    ops = {"genaccel.block_sparse_attention", "genaccel.block_mask_to_indices", "genaccel::block_sparse_attn_fwd",
           "genaccel::block_sparse_attn_bwd", "genaccel::attention_delta", "genaccel::block_sparse_key_major_plan",
           "genaccel.sparse_linear_attention", "genaccel.sla_block_map", "genaccel::sla_select_blocks",
           "genaccel::sla_fwd", "genaccel::sla_bwd"}
    assert ops <= set(per_op), ops - set(per_op)
    assert kinds <= {k for c in per_op.values() for k in c}
    # the sample keeps every kind
    sampled = {case.kind for _, case in hostile.sample(pairs, 0.35)}
    assert kinds <= sampled


def _battery_on_broken_ops():
    """Runs the battery's runner on four broken versions of attention_delta; returns the outcomes."""
    import os as _os
    import time

    from genaccel.testing import hostile as h

    spec = h.registry()["genaccel::attention_delta"]
    good = spec.call
    broken = {
        "wrong": lambda dout, out: good(dout, out) * 1.01,
        "crash": lambda dout, out: _os.kill(_os.getpid(), 11),
        "hang": lambda dout, out: time.sleep(60),
        "unclear": lambda dout, out: (_ for _ in ()).throw(RuntimeError("something went wrong")),
    }
    base = [c for c in h.cases(spec) if c.id == "base"]
    bad_rank = [c for c in h.cases(spec) if c.id == "dout.rank_up"]
    outcomes = {}
    for name, fn in broken.items():
        spec.call = fn
        outcomes[name] = [(r["outcome"], r["passed"])
                          for r in h.run([(spec, c) for c in base + bad_rank], timeout=3, progress=False)]
    spec.call = good
    outcomes["good"] = [(r["outcome"], r["passed"]) for r in h.run([(spec, c) for c in base + bad_rank], progress=False)]
    return outcomes


def test_battery_tells_failures_from_passes():
    """(outcome, passed) of the base case and of a case that must be refused (dout 5-D)."""
    outcomes = run_in_child(_battery_on_broken_ops, env={})
    assert outcomes["good"] == [("computed", True), ("refused", True)]
    assert outcomes["wrong"] == [("garbage", False), ("refused", True)]
    assert outcomes["crash"] == [("crash", False), ("crash", False)]
    assert outcomes["hang"] == [("hang", False), ("hang", False)]
    # an error where a result was due fails; one that does not name dout is unclear
    assert outcomes["unclear"] == [("refused", False), ("unclear", False)]


@pytest.mark.parametrize("message, expect, outcome", [
    ("attention_delta: dout must be 4-D", hostile.ERROR, "refused"),
    ("attention_delta: out must be 4-D", hostile.ERROR, "unclear"),      # names another argument
    ("std::bad_alloc", hostile.ERROR, "unclear"),
    ("dout: internal error", hostile.ERROR, "unclear"),
])
def test_classify_requires_the_argument_name(message, expect, outcome):
    case = hostile.Case("op", "dout.rank_up", "rank", lambda a: a, expect, r"\bdout\b")
    assert hostile.classify(case, {"raised": "RuntimeError", "message": message}, "exit status 0")[0] == outcome
    assert hostile.classify(case, {"raised": "KeyError", "message": "dout"}, "exit status 0")[0] == "unclear"
