import os

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
    """A fresh, per-test seeded generator: different data per test case, reproducible on failure."""
    seed = abs(hash(request.node.nodeid)) % (2**31)
    return torch.Generator().manual_seed(seed)
