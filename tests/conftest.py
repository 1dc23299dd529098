import os
import zlib

import pytest
import torch

import genaccel  # noqa: F401  (registers torch.ops.genaccel)
from genaccel.testing import DTYPES, RTOL, rel_err  # noqa: F401  (re-exported to the tests)

CUDA = torch.cuda.is_available() and genaccel.has_cuda_kernels()
SLOW = os.environ.get("GENACCEL_SLOW_TESTS") == "1"
# Hopper (compute capability 9.0), where GENACCEL_ATTENTION_SM90=1 selects the wgmma kernels;
# GENACCEL_SKIP_WGMMA=1 (set by bench/gpu_check.sh when tools/wgmma_probe.py finds them wrong) skips them.
SM90 = CUDA and torch.cuda.get_device_capability() == (9, 0)
SKIP_WGMMA = os.environ.get("GENACCEL_SKIP_WGMMA") == "1"


def attention_kernels():
    """The CUDA attention kernels to run a test with: mma.sync always, wgmma on Hopper."""
    why = "needs an sm_90 GPU" if not SM90 else "GENACCEL_SKIP_WGMMA=1 (tools/wgmma_probe.py failed)"
    return ["mma.sync", pytest.param("wgmma", marks=pytest.mark.skipif(not SM90 or SKIP_WGMMA, reason=why))]


@pytest.fixture
def attention_kernel(request, monkeypatch):
    """Selects the forward kernel named by the test's `kernel` parameter (environment, per call)."""
    if request.param == "wgmma":
        monkeypatch.setenv("GENACCEL_ATTENTION_SM90", "1")
    else:
        monkeypatch.delenv("GENACCEL_ATTENTION_SM90", raising=False)
    return request.param


def devices():
    """cpu always; cuda (marked) when a GPU and the CUDA kernels are both present."""
    return ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")])]


def run_without_host_sync(step):
    """Runs step() once to warm up (first calls initialise cuBLAS and the like), then again with
    torch's sync debug mode set to raise on any host sync; returns the second result."""
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.fixture
def gen(request):
    """A fresh, per-test seeded generator: different data per test case, reproducible on failure.

    The seed is a CRC of the test id (str hash() is salted per process, so it would not reproduce),
    mixed with GENACCEL_TEST_SEED when set, to draw other data on demand."""
    seed = zlib.crc32(f"{request.node.nodeid}:{os.environ.get('GENACCEL_TEST_SEED', '')}".encode())
    return torch.Generator().manual_seed(seed)
