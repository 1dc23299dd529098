"""The `genaccel` command: bench runs end to end on tiny sizes and writes what it promises.

No timing assertions on genaccel (timing belongs in benchmarks); this checks the plumbing: table
rows, JSON keys, the exit codes, the error on a missing GPU, the registry (a benchmark declared in
this file runs through the same runner; its candidates pause for known times, so that the speedup it
reports has a known value).
"""

import json
import statistics
import time
from dataclasses import dataclass, field
from typing import List

import pytest
import torch

import genaccel
from genaccel.benchmarks import Benchmark, register
from genaccel.benchmarks.registry import REGISTRY, REL_ERR_COLUMN, column
from genaccel.cli import main
from genaccel.testing import RTOL

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
    # The speedup is SDPA's median backward sample over genaccel's (not the forward's, not inverted).
    medians = {name: statistics.median(t["samples_ms"]) for name, t in row["bwd_timings"].items()}
    assert medians["genaccel"] > 0
    assert row["bwd_speedup_vs_sdpa"] == pytest.approx(medians["sdpa"] / medians["genaccel"], rel=1e-4)


def test_bench_list_names_every_family(capsys):
    assert main(["bench", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert {"attention", "attention-quality", "radial", "sla", "sla-finetune", "svg2", "video-dit", "xquant", "xquant-minilm", "xquant-ppl", "xquant-speed"} <= set(names)
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # name, then its description


@pytest.mark.parametrize("family", ["attention", "attention-quality", "radial", "sla", "sla-finetune", "svg2", "video-dit", "xquant",
                                    "xquant-minilm", "xquant-ppl", "xquant-speed"])
def test_bench_unknown_override_is_refused_in_every_family(family, capsys):
    assert main(["bench", "--family", family, "--quick", "--no-progress", "--set", "no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert "no_such_key" in err and family in err


RADIAL_TINY = ["--set", "N=544", "--set", "num_frames=4", "--set", "text_tokens=32", "--set", "block_q=32",
               "--set", "block_k=32", "--set", "H=2", "--set", "min_rounds=1", "--set", "max_rounds=1"]


def test_bench_radial_rows_describe_the_mask(tmp_path):
    out = tmp_path / "radial.json"
    assert main(["bench", "--family", "radial", "--quick", "--no-progress", "--json", str(out), *RADIAL_TINY,
                 "--set", "decay_factors=0.2,1.0"]) == 0
    data = json.loads(out.read_text())
    assert [r["decay_factor"] for r in data["rows"]] == [0.2, 1.0]
    for row in data["rows"]:
        mask = genaccel.radial_block_mask(4, 128, 32, row["decay_factor"], True, 32)
        assert row["density"] == genaccel.mask_density(mask) and row["tokens_per_frame"] == 128
        assert row["rel_err"] <= 1e-4 and row["speedup_vs_sdpa"] == pytest.approx(row["sdpa_ms"] / row["genaccel_ms"])


@pytest.mark.parametrize("bad,what", [(["--set", "block_k=64"], "block_q and block_k"),
                                      (["--set", "num_frames=5"], "num_frames")])
def test_bench_radial_bad_geometry_is_refused(bad, what, capsys):
    assert main(["bench", "--family", "radial", "--quick", "--no-progress", *RADIAL_TINY, *bad]) == 2
    assert what in capsys.readouterr().err


def test_bench_bad_choice_is_refused(capsys):
    assert main(["bench", "--quick", "--no-progress", *TINY, "--set", "backend=sm99"]) == 2
    err = capsys.readouterr().err
    assert "backend" in err and "sm99" in err and "sm80" in err


def test_bench_backend_reaches_config_and_rows(tmp_path):
    """--set backend=... is the op's backend= argument (it replaced GENACCEL_ATTENTION_SM90=1); the
    CPU validates it and runs its one kernel. The JSON records it per config and per row."""
    out = tmp_path / "sm80.json"
    assert main(["bench", "--quick", "--no-progress", "--json", str(out), *TINY, "--set", "densities=0.5",
                 "--set", "backend=sm80"]) == 0
    data = json.loads(out.read_text())
    assert [c["backend"] for c in data["configs"]] == ["sm80"]
    assert [r["backend"] for r in data["rows"]] == ["sm80"]


def test_environment_records_only_the_debug_knobs(monkeypatch):
    from genaccel.benchmarks.timing import DEBUG_KNOBS, environment

    monkeypatch.setenv("GENACCEL_SLA_CHUNK_BYTES", "4096")
    monkeypatch.delenv("GENACCEL_SLA_ONE_STREAM", raising=False)
    monkeypatch.setenv("GENACCEL_NOT_A_KNOB", "1")
    assert "GENACCEL_SLA_ONE_STREAM" in DEBUG_KNOBS
    assert environment(torch.device("cpu"))["genaccel_env"] == {"GENACCEL_SLA_CHUNK_BYTES": "4096"}


# ---- a benchmark declared here: what adding a family's benchmark takes ---------------------------------

@dataclass
class MatmulConfig:
    n: int = 32
    sizes: List[int] = field(default_factory=lambda: [8, 16])
    wrong: bool = False  # the candidate adds 1: its rows fail their error bound
    dtype: str = "float32"
    warmup: int = 1
    min_rounds: int = 1
    max_rounds: int = 2
    target_s: float = 0.0

    def label(self) -> str:
        return f"matmul n{self.n}"


# Each call of a candidate pauses first, genaccel for PAUSE_S and outer for 3 * PAUSE_S: far longer
# than the arithmetic at these sizes, so the speedup over outer must come out near 3 (a busy machine
# delays the first matmul after a pause by up to ~15 ms, hence pauses this long).
PAUSE_S = 0.04


def paused(seconds, fn):
    def call():
        time.sleep(seconds)
        return fn()
    return call


def matmul_rows(cfg: MatmulConfig, run):
    for size in cfg.sizes:
        a, b = torch.randn(size, cfg.n), torch.randn(cfg.n, size)
        row = {"config": cfg.label(), "size": size}
        run.status(f"{cfg.label()} size {size}")
        run.time(row, {"outer": paused(3 * PAUSE_S, lambda: sum(a[:, i, None] * b[i] for i in range(cfg.n))),
                       "genaccel": paused(PAUSE_S, lambda: a @ b)})
        run.check(a @ b + cfg.wrong, a.double() @ b.double(), row)
        yield row


@pytest.fixture
def matmul_bench():
    bench = register(Benchmark(
        name="test-matmul", description="a @ b vs a sum of outer products (test)", config=MatmulConfig,
        configs=lambda device, quick: [MatmulConfig()], rows=matmul_rows, count=lambda cfg: len(cfg.sizes),
        where=lambda r: f"{r['config']} size {r['size']}",
        columns=[column("config", 12, "config"), column("size", 5, "size"),
                 column("vs outer", 8, "speedup_vs_outer", ".2f", "x"), REL_ERR_COLUMN],
    ))
    yield bench
    REGISTRY.pop(bench.name)


def test_registered_benchmark_runs_end_to_end(matmul_bench, tmp_path, capsys):
    assert main(["bench", "--list"]) == 0
    assert "test-matmul" in capsys.readouterr().out
    path = tmp_path / "matmul.json"
    argv = ["bench", "--family", "test-matmul", "--no-progress", "--json", str(path), "--set", "sizes=4,8,12",
            "--set", "min_rounds=3", "--set", "max_rounds=3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    assert set(data) == {"schema", "family", "quick", "environment", "configs", "notes", "rows"}
    assert data["family"] == "test-matmul" and data["quick"] is False
    assert data["configs"] == [dict(n=32, sizes=[4, 8, 12], wrong=False, dtype="float32", warmup=1, min_rounds=3,
                                    max_rounds=3, target_s=0.0, label="matmul n32")]
    assert [r["size"] for r in data["rows"]] == [4, 8, 12]
    for r in data["rows"]:
        assert set(r["timings"]) == {"outer", "genaccel"}
        assert r["timings"]["outer"]["n"] == r["timings"]["genaccel"]["n"] == 3
        medians = {name: statistics.median(t["samples_ms"]) for name, t in r["timings"].items()}
        assert r["speedup_vs_outer"] == pytest.approx(medians["outer"] / medians["genaccel"], rel=1e-4)
        assert 1.5 <= r["speedup_vs_outer"] <= 6  # the pauses' ratio is 3
        assert r["rel_err_tol"] == RTOL[torch.float32] and r["rel_err_ok"] is True
    assert len(_table_rows(out, "matmul n32")) == 3 and "FAIL" not in out


def test_registered_benchmark_fails_its_error_bound(matmul_bench, capsys):
    assert main(["bench", "--family", "test-matmul", "--no-progress", "--set", "wrong=true", "--set", "sizes=4"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: matmul n32 size 4: rel err" in out


def test_registered_benchmark_without_its_kernel_says_so(matmul_bench, tmp_path, capsys):
    """A benchmark whose op has no kernel on the device: a note, no rows, exit 0 (nothing failed)."""
    matmul_bench.needs_ops = ("no_such_op",)
    path = tmp_path / "none.json"
    assert main(["bench", "--family", "test-matmul", "--no-progress", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["rows"] == [] and data["configs"][0]["label"] == "matmul n32"
    assert any("no CPU kernel" in n and "genaccel::no_such_op" in n for n in data["notes"])
    assert "genaccel::no_such_op" in capsys.readouterr().out


def test_bench_svg2_rows(tmp_path):
    out = tmp_path / "svg2.json"
    tiny = ["--set", "N=768", "--set", "frames=4", "--set", "height=12", "--set", "width=16", "--set", "H=2",
            "--set", "num_q_clusters=8", "--set", "num_k_clusters=32", "--set", "kmeans_clusters=16",
            "--set", "top_ps=0.9", "--set", "err_blocks=1", "--set", "min_rounds=1", "--set", "max_rounds=1"]
    assert main(["bench", "--family", "svg2", "--quick", "--no-progress", "--json", str(out), *tiny]) == 0
    kmeans_row, svg2_row = json.loads(out.read_text())["rows"]
    assert kmeans_row["labels_agree"] > 0.99 and kmeans_row["speedup_vs_torch_kmeans"] > 0
    assert 0 < svg2_row["density"] <= 1 and svg2_row["rel_err"] <= 1e-4
    assert main(["bench", "--family", "svg2", "--quick", "--no-progress", *tiny, "--set", "N=700"]) == 2


def test_bench_attention_quality_interpolates_between_sweep_points():
    from genaccel.benchmarks.attention_quality import at_density

    rows = [dict(method="svg2", density=0.1, rel_err_vs_dense=0.4), dict(method="svg2", density=0.3, rel_err_vs_dense=0.1),
            dict(method="topk", density=0.2, rel_err_vs_dense=1.0)]
    assert at_density(rows, "svg2", 0.2) == pytest.approx(0.2)  # geometric mean of 0.4 and 0.1
    assert at_density(rows, "svg2", 0.05) is None and at_density(rows, "topk", 0.2) is None


def test_bench_video_dit_rows(tmp_path):
    pytest.importorskip("diffusers", reason="the video-dit benchmark needs diffusers")
    out = tmp_path / "video_dit.json"
    tiny = ["--set", "frames=2", "--set", "height=16", "--set", "width=16", "--set", "text_dim=32",
            "--set", "methods=dense,block_topk", "--set", "min_rounds=1", "--set", "max_rounds=1", "--set", "sweep=true"]
    assert main(["bench", "--family", "video-dit", "--quick", "--no-progress", "--json", str(out), *tiny]) == 0
    result = json.loads(out.read_text())
    dense, topk, *sweep = result["rows"]
    assert [r["value"] for r in sweep] == [0.2, 0.3, 0.4, 0.5, 0.6] and all(r["kind"] == "sweep" for r in sweep)
    assert all(0 < r["density"] <= 1 and "speedup_vs_stock" not in r for r in sweep)
    assert any("at density 0.4: block_topk" in n for n in result["notes"])
    assert dense["rel_err_ok"] and dense["density"] == 1.0 and dense["rel_err_vs_stock"] <= 1e-5
    assert 0 < topk["density"] < 1 and topk["rel_err_vs_stock"] > 0 and topk["speedup_vs_stock"] > 0


def test_bench_xquant_rows(tmp_path):
    out = tmp_path / "xquant.json"
    tiny = ["--set", "tokens=64", "--set", "channels=256", "--set", "bits=3", "--set", "min_rounds=1",
            "--set", "max_rounds=1"]
    assert main(["bench", "--family", "xquant", "--quick", "--no-progress", "--json", str(out), *tiny]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["within_half_scale"] and row["codes_match_reference"]
    assert row["ratio_vs_fp16_kv"] == pytest.approx(2 * 64 * 256 * 2 / row["nbytes"])
    assert row["quantize_speedup_vs_torch"] > 0 and row["dequantize_speedup_vs_torch"] > 0
