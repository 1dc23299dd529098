import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
import torch

import genaccel  # noqa: F401  (registers torch.ops.genaccel)
from genaccel.attention.block_sparse.reference import block_sparse_attention_reference
from genaccel.attention.sla.reference import select_blocks_reference
from genaccel.testing import DTYPES, RTOL, rel_err  # noqa: F401  (re-exported to the tests)

CUDA = torch.cuda.is_available() and genaccel.has_cuda_kernels()
SLOW = os.environ.get("GENACCEL_SLOW_TESTS") == "1"
# Hopper (compute capability 9.0), where backend="sm90" runs the wgmma kernels;
# GENACCEL_SKIP_WGMMA=1 (set by bench/gpu_check.sh when tools/wgmma_probe.py finds them wrong) skips them.
SM90 = CUDA and torch.cuda.get_device_capability() == (9, 0)
SKIP_WGMMA = os.environ.get("GENACCEL_SKIP_WGMMA") == "1"

# A CUDA-only test carries both: @pytest.mark.cuda and @needs_cuda.
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")
CUDA_MARKS = (pytest.mark.cuda, needs_cuda)
HALF_DTYPES = (torch.bfloat16, torch.float16)  # what the CUDA kernels take
BAD = (RuntimeError, ValueError)  # what bad input raises (shared/DESIGN.md, "Op conventions")


def devices():
    """cpu always; cuda (marked) when a GPU and the CUDA kernels are both present."""
    return ["cpu", pytest.param("cuda", marks=CUDA_MARKS)]


def on_cuda(*values, id=None, marks=()):
    """One parameter set of a test parametrized over the device (first value "cuda"): marked cuda and
    skipped without a GPU, like the cuda parameter of devices(). For tests whose cases differ per
    device (the CUDA kernels take bf16/fp16 only, head dims up to 128 and 64/128-token query blocks)."""
    return pytest.param(*values, id=id, marks=[*CUDA_MARKS, *marks])


def backend_marks(backend):
    """The marks of a CUDA `backend=` value: "sm90" (the wgmma kernels) needs an sm_90 GPU."""
    if backend != "sm90":
        return []
    why = "needs an sm_90 GPU" if not SM90 else "GENACCEL_SKIP_WGMMA=1 (tools/wgmma_probe.py failed)"
    return [pytest.mark.skipif(not SM90 or SKIP_WGMMA, reason=why)]


def attention_backends():
    """The CUDA attention kernels to run a test with (the ops' `backend=`): "sm80" (mma.sync) always,
    "sm90" (wgmma) on Hopper."""
    return ["sm80", pytest.param("sm90", marks=backend_marks("sm90"))]


def device_backends():
    """(device, backend) parameter sets: ("cpu", "auto"), the CPU's one kernel, and ("cuda", b) for each
    CUDA kernel b of attention_backends(), marked like on_cuda()."""
    return [pytest.param("cpu", "auto", id="cpu")] + [
        on_cuda("cuda", b, id=f"cuda-{b}", marks=backend_marks(b)) for b in ("sm80", "sm90")]


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


_CHILD = r"""
import importlib.util
import sys
from pathlib import Path

import torch

module_path, name, args_path, result_path, conftest_dir = sys.argv[1:]
sys.path[:0] = [conftest_dir, str(Path(module_path).parent)]
spec = importlib.util.spec_from_file_location("child_" + Path(module_path).stem, module_path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
torch.save(getattr(module, name)(*torch.load(args_path)), result_path)
"""


def run_in_child(fn, *args, env, timeout=600):
    """fn(*args) computed in a fresh Python process whose environment is this one's with `env` applied
    (a value of None removes the variable), for the CUDA debugging knobs GENACCEL_SLA_ONE_STREAM and
    GENACCEL_SLA_CHUNK_BYTES: genaccel reads them once, when it loads, so setting them in a running
    process changes nothing (docs/env.md).

    fn is a module-level function of a test module (the child loads that file by path, with tests/
    and the module's folder on sys.path); args and the result travel through torch.save, so tensors
    keep their devices: a function that computes on CUDA should return CPU tensors, after a
    synchronize. A failure in the child fails the caller with the child's output."""
    child_env = dict(os.environ)
    for name, value in env.items():
        if value is None:
            child_env.pop(name, None)
        else:
            child_env[name] = str(value)
    with tempfile.TemporaryDirectory(prefix="genaccel_child_") as tmp:
        args_path, result_path = Path(tmp) / "args.pt", Path(tmp) / "result.pt"
        torch.save(args, args_path)
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, fn.__code__.co_filename, fn.__name__, str(args_path), str(result_path),
             str(Path(__file__).parent)],
            env=child_env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, (
            f"{fn.__name__} in a child process with {env} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        return torch.load(result_path)


# |lse - ref| / (1 + |ref|): the scores are computed from the same (rounded) inputs as the
# reference, in float32, so the lse is accurate to float32 rounding whatever the input dtype.
LSE_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-3}


def check_against_reference(out, lse, q, k, v, mask, block_size, scale, dtype):
    """out/lse of a block-sparse attention kernel vs the float64 reference, with the DESIGN.md
    tolerances; returns the relative error of out."""
    B, H, Nq, D = q.shape
    assert out.shape == (B, H, Nq, D) and out.dtype == q.dtype and out.device == q.device
    assert lse.shape == (B, H, Nq) and lse.dtype == torch.float32 and lse.device == q.device
    block = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    ref_out, ref_lse = block_sparse_attention_reference(q.cpu(), k.cpu(), v.cpu(), mask.cpu(), block, scale)
    out, lse = out.cpu(), lse.cpu()
    assert torch.isfinite(out).all(), "non-finite values in out"
    assert not torch.isnan(lse).any(), "NaN in lse"
    err = rel_err(out, ref_out)
    assert err <= RTOL[dtype], f"rel_err(out) = {err:.3e} > {RTOL[dtype]:.0e}"
    empty = torch.isneginf(ref_lse)
    got_empty = torch.isneginf(lse)
    assert torch.equal(got_empty, empty), (
        f"lse is -inf on {int(got_empty.sum())} rows, the reference on {int(empty.sum())}"
    )
    assert (out[empty] == 0).all(), "a row that selects no key block must be exactly zero"
    assert not torch.isposinf(lse).any()
    if (~empty).any():
        d = ((lse.double() - ref_lse).abs() / (1 + ref_lse.abs()))[~empty].max().item()
        assert d <= LSE_TOL[dtype], f"lse error {d:.3e} > {LSE_TOL[dtype]:.0e}"
    return err


def select_blocks_expected(scores, n_crit, n_neg):
    """Op sla_select_blocks' specification: the reference's codes, and their critical blocks in
    ascending order."""
    codes = select_blocks_reference(scores, n_crit, n_neg)
    return codes, genaccel.block_mask_to_indices(codes == 1)[0]


@pytest.fixture
def gen(request):
    """A fresh, per-test seeded generator: different data per test case, reproducible on failure.

    The seed is a CRC of the test id (str hash() is salted per process, so it would not reproduce),
    mixed with GENACCEL_TEST_SEED when set, to draw other data on demand."""
    seed = zlib.crc32(f"{request.node.nodeid}:{os.environ.get('GENACCEL_TEST_SEED', '')}".encode())
    return torch.Generator().manual_seed(seed)
