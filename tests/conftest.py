import os
import zlib

import pytest
import torch

import genaccel  # noqa: F401  (registers torch.ops.genaccel)

# Tolerances on ||out - ref|| / ||ref|| against the float64 reference (shared/DESIGN.md).
RTOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 5e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

CUDA = torch.cuda.is_available() and genaccel.has_cuda_kernels()
SLOW = os.environ.get("GENACCEL_SLOW_TESTS") == "1"


def devices():
    """cpu always; cuda (marked) when a GPU and the CUDA kernels are both present."""
    return ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")])]


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    denom = ref.norm()
    return ((out - ref).norm() / denom).item() if denom > 0 else (out - ref).norm().item()


@pytest.fixture
def gen(request):
    """A fresh, per-test seeded generator: different data per test case, reproducible on failure.

    The seed is a CRC of the test id (str hash() is salted per process, so it would not reproduce),
    mixed with GENACCEL_TEST_SEED when set, to draw other data on demand."""
    seed = zlib.crc32(f"{request.node.nodeid}:{os.environ.get('GENACCEL_TEST_SEED', '')}".encode())
    return torch.Generator().manual_seed(seed)
