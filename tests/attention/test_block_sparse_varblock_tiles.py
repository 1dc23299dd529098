"""The CUDA block-sparse kernels' variable-block tile policies (VarRowTile, VarBlockTiles,
VarKeyMajorQueryTiles), run on the CPU by tools/varblock_tiles_check.cu: every (query head, query,
key) pair a plan selects is computed exactly once by the forward / dQ walk and by the dK/dV walk,
nothing else, every query row by one CTA; corrupted plans and offsets (check_plan=False) keep every
tile in range. Needs nvcc (the policies are the kernels' own host-device code), not a GPU."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc") or next((c for c in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(c)), None)


@pytest.mark.skipif(NVCC is None, reason="needs nvcc (CUDA toolkit) to build tools/varblock_tiles_check.cu")
def test_variable_block_tile_policies(tmp_path):
    exe = tmp_path / "varblock_tiles_check"
    build = subprocess.run([NVCC, "-std=c++17", "-O1", "-arch=sm_80", "-I", str(ROOT / "include"), "-x", "cu",
                            str(ROOT / "tools" / "varblock_tiles_check.cu"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([str(exe), "300"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "0 failures" in run.stdout, run.stdout + run.stderr
