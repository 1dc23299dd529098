"""The `genaccel` command: bench runs end to end on tiny sizes and writes what it promises.

No timing assertions (timing belongs in benchmarks); this checks the plumbing: table rows, JSON
keys, the exit codes, the error on a missing GPU.
"""

import json

import pytest
import torch

from genaccel.cli import main

DENSITIES = [0.25, 0.5, 1.0]
TINY = [
    "--set", "N=320", "--set", "H=2", "--set", "D=32",  # 5 blocks: the last one full, 320 = 5 * 64
    "--set", "densities=" + ",".join(map(str, DENSITIES)),
    "--set", "warmup=1", "--set", "min_rounds=1", "--set", "max_rounds=2", "--set", "target_s=0",
]


def _table_rows(text: str, label: str):
    return [line for line in text.splitlines() if line.startswith(label)]


def test_bench_quick_tiny_writes_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = main(["bench", "--quick", "--no-progress", "--json", str(path), *TINY])
    out = capsys.readouterr().out
    assert rc == 0, out
    data = json.loads(path.read_text())
    assert {"schema", "family", "quick", "environment", "configs", "notes", "rows"} <= set(data)
    assert data["family"] == "attention" and data["quick"] is True
    env = data["environment"]
    for key in ("device_name", "torch_version", "genaccel_build_info", "git", "date_utc", "torch_num_threads"):
        assert key in env
    (cfg,) = data["configs"]
    assert (cfg["N"], cfg["H"], cfg["D"], cfg["densities"]) == (320, 2, 32, DENSITIES)
    rows = data["rows"]
    assert [r["density_target"] for r in rows] == DENSITIES
    for r in rows:
        assert "error" not in r, r["error"]
        for key in ("density", "plan_ms", "sdpa_ms", "genaccel_ms", "speedup_vs_sdpa", "ideal_speedup",
                    "fraction_of_ideal", "rel_err", "timings"):
            assert r[key] is not None, key
        assert set(r["timings"]) == {"sdpa", "genaccel"}  # --quick skips FlexAttention
        # Every (b, h, query block) row keeps round(density * 5) of the 5 key blocks.
        assert r["density"] == pytest.approx(max(1, round(r["density_target"] * 5)) / 5)
        assert r["ideal_speedup"] == pytest.approx(1 / r["density"])
        assert r["rel_err"] <= r["rel_err_tol"]
    # One table line per density, under one header.
    assert len(_table_rows(out, cfg["label"])) == len(DENSITIES)
    assert sum(line.startswith("config") for line in out.splitlines()) == 1


def test_bench_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    rc = main(["bench", "--quick", "--no-progress", "--plot", str(png), *TINY, "--set", "densities=0.5,1.0"])
    assert rc == 0, capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_unknown_override_is_refused(capsys):
    assert main(["bench", "--quick", "--set", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_bench_cuda_without_gpu_says_so(capsys):
    assert main(["bench", "--device", "cuda", "--quick"]) == 2
    assert "no GPU" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__ and "genaccel" in info


def test_bench_backward_rows(tmp_path):
    """With backward on (the CUDA default), each row also times the backward of one forward's graph
    against SDPA's."""
    out = tmp_path / "bwd.json"
    assert main(["bench", "--quick", "--no-progress", "--json", str(out), *TINY, "--set", "densities=0.5",
                 "--set", "backward=true"]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert set(row["bwd_timings"]) == {"sdpa", "genaccel"}
    assert row["bwd_genaccel_ms"] > 0 and row["bwd_speedup_vs_sdpa"] == row["bwd_sdpa_ms"] / row["bwd_genaccel_ms"]
