"""The SLA benchmark families end to end on tiny sizes: rows, JSON keys, exit codes.

No timing assertions (timing belongs in benchmarks). The fine-tuning claim (trained SLA beats
sparse-only) is not asserted here: at a few steps on tiny inputs the gain is within the noise of
the first minibatches, so only its plumbing, the exact "untrained = sparse-only" identity, and an
exit code that follows the recorded errors (or a learning rate that cannot help) are.
"""

import json
import math

import pytest
import torch

from genaccel.benchmarks import common, run_bench
from genaccel.benchmarks import sla as sla_bench
from genaccel.benchmarks import sla_finetune
from genaccel.benchmarks.registry import has_kernel

TINY_SLA = {
    "N": "384", "H": "2", "D": "32",  # 6 blocks of 64
    "topks": "0.2,0.5", "warmup": "1", "min_rounds": "1", "max_rounds": "1", "target_s": "0",
}
TINY_FT = {
    "frames": "4", "height": "8", "width": "8",  # 256 tokens = 4 cubes of 4x4x4
    "layers": "2", "heads": "2", "head_dim": "16", "topk": "0.25", "low_k": "0.25",
    "n_eval": "1", "batch": "1", "steps": "3", "eval_every": "2",
}


def _table_rows(text: str, label: str):
    return [line for line in text.splitlines() if line.startswith(label)]


def test_sla_family_tiny_writes_table_and_json(tmp_path, capsys):
    path = tmp_path / "sla.json"
    rc = run_bench("sla", quick=True, json_path=str(path), overrides=TINY_SLA, progress=False)
    out = capsys.readouterr().out
    assert rc == 0, out
    data = json.loads(path.read_text())
    assert data["family"] == "sla" and data["quick"] is True
    (cfg,) = data["configs"]
    assert (cfg["N"], cfg["H"], cfg["D"], cfg["topks"]) == (384, 2, 32, [0.2, 0.5])
    rows = data["rows"]
    assert [(r["topk"], r["mode"]) for r in rows] == [(t, m) for t in (0.2, 0.5) for m in ("fwd", "fwd+bwd")]
    for r in rows:
        assert "error" not in r, r["error"]
        for key in ("sdpa_ms", "genaccel_ms", "speedup_vs_sdpa", "target_speedup", "critical_fraction",
                    "marginal_fraction", "negligible_fraction", "ideal_speedup", "rel_err", "timings"):
            assert r[key] is not None, key
        assert set(r["timings"]) == {"sdpa", "genaccel"}
        # floor(topk * 6) critical blocks in every row (at least one).
        assert r["critical_fraction"] == pytest.approx(max(1, math.floor(r["topk"] * 6)) / 6)
        assert r["rel_err"] <= r["rel_err_tol"]
    assert len(_table_rows(out, cfg["label"])) == len(rows)


def test_sla_family_fails_a_wrong_forward(tmp_path, monkeypatch, capsys):
    """An op that is off by one everywhere exceeds its error bound: exit 1, the rows say so."""
    import genaccel

    real = genaccel.sparse_linear_attention
    monkeypatch.setattr(genaccel, "sparse_linear_attention", lambda *args, **kwargs: real(*args, **kwargs) + 1)
    path = tmp_path / "sla.json"
    rc = run_bench("sla", quick=True, json_path=str(path), progress=False,
                   overrides=dict(TINY_SLA, topks="0.5", modes="fwd"))
    assert rc == 1
    (row,) = json.loads(path.read_text())["rows"]
    assert row["rel_err_ok"] is False and row["rel_err"] > row["rel_err_tol"]
    assert f"FAIL: {row['config']} topk 0.5 forward: rel err" in capsys.readouterr().out


def test_sla_family_backward_only_mode(tmp_path):
    path = tmp_path / "sla.json"
    rc = run_bench("sla", quick=True, json_path=str(path), progress=False,
                   overrides=dict(TINY_SLA, topks="0.5", modes="bwd,fwd"))
    assert rc == 0
    rows = json.loads(path.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["bwd", "fwd"]
    assert rows[0]["genaccel_ms"] > 0 and rows[0]["sdpa_ms"] > 0
    assert rows[0]["target_speedup"] is None and "meets_target" not in rows[0]  # no CPU target for bwd
    assert rows[1]["target_speedup"] == sla_bench.TARGETS["cpu"]["fwd"]


def test_sla_family_under_autocast(tmp_path):
    """autocast=true (the module's training setting) runs SLA under torch.autocast in the config's
    half dtype and stays within its error bound; a float32 config refuses it."""
    path = tmp_path / "sla.json"
    rc = run_bench("sla", quick=True, json_path=str(path), progress=False,
                   overrides=dict(TINY_SLA, topks="0.5", modes="fwd,bwd", dtype="bfloat16", autocast="true"))
    assert rc == 0
    rows = json.loads(path.read_text())["rows"]
    assert [r["config"].endswith(" amp") for r in rows] == [True, True]
    assert all(r["rel_err_ok"] and r["genaccel_ms"] > 0 for r in rows)
    with pytest.raises(ValueError, match="autocast=true needs a bfloat16 or float16 config"):
        run_bench("sla", quick=True, progress=False, overrides=dict(TINY_SLA, autocast="true"))


def test_sla_family_backend_and_precision_reach_the_op(tmp_path, monkeypatch):
    """--set backend=... / precision=... are the op's arguments (they replaced the environment
    switches GENACCEL_ATTENTION_SM90 / GENACCEL_SLA_FLOAT32_GEMMS); recorded per config and row."""
    import genaccel

    seen = []
    real = genaccel.sparse_linear_attention

    def spy(*args, **kwargs):
        seen.append((kwargs.get("backend"), kwargs.get("precision")))
        return real(*args, **kwargs)

    monkeypatch.setattr(genaccel, "sparse_linear_attention", spy)
    path = tmp_path / "sla.json"
    rc = run_bench("sla", quick=True, json_path=str(path), progress=False,
                   overrides=dict(TINY_SLA, topks="0.5", modes="fwd", backend="sm80", precision="fp32"))
    assert rc == 0
    data = json.loads(path.read_text())
    assert [(c["backend"], c["precision"]) for c in data["configs"]] == [("sm80", "fp32")]
    assert [(r["backend"], r["precision"]) for r in data["rows"]] == [("sm80", "fp32")]
    assert seen and set(seen) == {("sm80", "fp32")}


def test_cuda_defaults_add_an_autocast_config():
    cfgs = sla_bench.default_configs("cuda", quick=False)
    assert [c.autocast for c in cfgs] == [False, True] and cfgs[1].topks == [0.05]
    assert [c.autocast for c in sla_bench.BENCHMARK.make_configs("cuda", False, {"dtype": "float32"})] == [False]
    assert [c.autocast for c in sla_bench.default_configs("cpu", quick=False)] == [False]


def test_gradients_backward_only_replays_one_forward(gen):
    x = torch.randn(5, 3, generator=gen).requires_grad_()
    grad_out = torch.randn(5, 3, generator=gen)
    calls = []

    def forward():
        calls.append(1)
        return x.exp() * 2

    full = common.gradients(forward, [x], grad_out, backward_only=False)
    only = common.gradients(forward, [x], grad_out, backward_only=True)
    expected = full()[0]
    assert len(calls) == 1
    for _ in range(3):
        assert torch.allclose(only()[0], expected)
    assert len(calls) == 2  # one forward for all three backward calls
    assert torch.allclose(expected, 2 * x.exp() * grad_out)


def test_sla_family_refuses_unknown_key():
    with pytest.raises(ValueError, match="no_such_key"):
        run_bench("sla", quick=True, overrides={"no_such_key": "1"}, progress=False)


def test_sla_family_skips_devices_without_kernel(capsys):
    """Where genaccel::sla_fwd has no kernel the family says so and returns no rows (exit 0)."""
    class Fake:
        type = "cuda"

    if has_kernel(Fake(), "sla_fwd"):
        pytest.skip("this build has a CUDA SLA kernel")
    configs, rows, notes = sla_bench.BENCHMARK.run(Fake(), True, None, None, out=__import__("sys").stdout)
    assert rows == [] and any("no CUDA kernel" in n for n in notes)
    assert "no CUDA kernel" in capsys.readouterr().out


def test_sla_finetune_skips_devices_without_backward(capsys):
    """Training needs genaccel::sla_bwd too: without it on a device the family says so, no rows."""
    class Fake:
        type = "cuda"

    if has_kernel(Fake(), "sla_bwd"):
        pytest.skip("this build has a CUDA SLA backward")
    configs, rows, notes = sla_finetune.BENCHMARK.run(Fake(), True, None, None, out=__import__("sys").stdout)
    assert rows == [] and any("genaccel::sla_bwd" in n for n in notes)


def test_sla_finetune_main_tiny(tmp_path, capsys):
    path = tmp_path / "ft.json"
    argv = ["--json", str(path), "--no-progress", "--seed", "1"]
    for k, v in TINY_FT.items():
        argv += ["--set", f"{k}={v}"]
    rc = sla_finetune.main(argv)
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["family"] == "sla-finetune"
    (cfg,) = data["configs"]
    assert cfg["tokens"] == 256 and cfg["steps"] == 3 and cfg["seed"] == 1
    rows = data["rows"]
    curves = [r["curve"] for r in rows]
    assert curves[:3] == ["sparse-only", "sla-untrained", "sla"] and curves[-1] == "summary"
    sla_rows = [r for r in rows if r["curve"] == "sla"]
    assert [r["step"] for r in sla_rows] == [0, 2, 3]
    for r in rows[:-1]:
        assert math.isfinite(r["rel_err"]) and math.isfinite(r["rel_err_output"])
    summary = rows[-1]
    for key in ("sparse_only_rel_err", "sla_untrained_rel_err", "sla_trained_rel_err", "trained_beats_sparse_only",
                "teacher_critical_mass", "critical_fraction"):
        assert summary[key] is not None, key
    # A zero-initialised projection computes exactly sparse-only attention.
    assert summary["untrained_matches_sparse_only"]
    assert summary["sla_untrained_rel_err"] == pytest.approx(summary["sparse_only_rel_err"], rel=1e-5)
    # The exit code is the claim on the recorded errors: 1 exactly when the last SLA point is not
    # below sparse-only (whichever way these 3 steps went).
    beats = sla_rows[-1]["rel_err"] < rows[0]["rel_err"]
    assert rc == (0 if beats else 1), out
    assert ("does not beat sparse-only" in out) == (not beats)


# Adam's first step moves every projection weight by about the learning rate: at 10 the trained SLA
# is far worse than sparse-only, so the run must fail its claim (exit 1).
LR_TOO_HIGH = "10"


def test_sla_finetune_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "ft.png"
    overrides = dict(TINY_FT, steps="2", lr=LR_TOO_HIGH)
    rc = run_bench("sla-finetune", plot_path=str(png), overrides=overrides, progress=False)
    out = capsys.readouterr().out
    assert rc == 1 and "does not beat sparse-only" in out, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sla_finetune_script_runs_main(tmp_path, monkeypatch, capsys):
    """bench/sla_finetune.py passes its arguments to sla_finetune.main and exits with its code."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "sla_finetune.py"
    path = tmp_path / "ft.json"
    argv = [str(script), "--json", str(path), "--no-progress"]
    for k, v in dict(TINY_FT, steps="2", lr=LR_TOO_HIGH).items():
        argv += ["--set", f"{k}={v}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code == 1, capsys.readouterr().out
    (cfg,) = json.loads(path.read_text())["configs"]
    assert (cfg["steps"], cfg["lr"], cfg["tokens"]) == (2, 10.0, 256)


def test_finetune_inputs_are_tiled_cubes():
    """With tile 4 the first 64 tokens form one 4x4x4 space-time cube."""
    cfg = sla_finetune.FinetuneConfig(frames=8, height=8, width=8)
    grid = sla_finetune._grid(cfg)[:64] * torch.tensor([8.0, 8.0, 8.0], dtype=torch.float64)
    for axis in range(3):
        assert sorted(set(grid[:, axis].round().long().tolist())) == [0, 1, 2, 3]


def test_sla_finetune_whole_student_tiny(capsys):
    """train=model: a sparse-only student and an SLA student, both starting from the teacher's
    weights, train side by side; the sparse-only student's step 0 is the frozen sparse-only error."""
    overrides = dict(TINY_FT, train="model")
    configs, rows, notes = sla_finetune.BENCHMARK.run(torch.device("cpu"), False, overrides,
                                                      lambda total, name: _Silent(), out=__import__("sys").stdout)
    by_curve = {}
    for r in rows:
        by_curve.setdefault(r["curve"], []).append(r)
    assert [r["step"] for r in by_curve["sparse-only-ft"]] == [0, 2, 3]
    assert [r["step"] for r in by_curve["sla"]] == [0, 2, 3]
    assert by_curve["sparse-only-ft"][0]["rel_err"] == by_curve["sparse-only"][0]["rel_err"]
    # Training moved the sparse-only student's own weights (nothing else could change its error).
    assert by_curve["sparse-only-ft"][-1]["rel_err"] != by_curve["sparse-only"][0]["rel_err"]
    summary = by_curve["summary"][0]
    assert summary["train"] == "model" and math.isfinite(summary["sparse_only_ft_rel_err"])
    # The claim against the fine-tuned baseline follows the two students' last recorded errors.
    beats = by_curve["sla"][-1]["rel_err"] < by_curve["sparse-only-ft"][-1]["rel_err"]
    assert summary["trained_beats_sparse_only_ft"] is beats
    assert any("does not beat sparse-only fine-tuned" in f for f in sla_finetune.failures(rows)) == (not beats)
    assert "sparse-only fine-tuned" in notes[-1]


def test_sla_finetune_rejects_unknown_train_mode():
    with pytest.raises(ValueError, match="train must be"):
        sla_finetune.BENCHMARK.run(torch.device("cpu"), False, dict(TINY_FT, train="everything"),
                                   lambda total, name: _Silent(), out=__import__("sys").stdout)


class _Silent:
    """A progress sink for direct calls of a family's run()."""

    def write(self, *_):
        pass

    def status(self, *_):
        pass

    def advance(self, *_):
        pass

    def close(self):
        pass
