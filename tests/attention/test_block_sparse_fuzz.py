"""Hypothesis fuzz of block-sparse attention: random shapes / dtypes / block sizes / masks / layouts
either match the float64 reference (output, lse and gradients) or raise a clean RuntimeError /
ValueError -- never crash.
Skipped where hypothesis is not installed (GPU machines)."""

import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import genaccel  # noqa: E402
from conftest import BAD, DTYPES, check_against_reference, devices  # noqa: E402
from genaccel.attention.block_sparse.reference import block_sparse_attention_reference  # noqa: E402
from genaccel.testing import make_input, make_mask  # noqa: E402

# ----------------------------------------------------------------------------------------------
# hypothesis fuzz: random shapes / dtypes / blocks / masks / layouts match the reference, and
# invalid combinations raise a clean RuntimeError / ValueError
# ----------------------------------------------------------------------------------------------


@st.composite
def fuzz_configs(draw):
    B = draw(st.integers(0, 2))
    H = draw(st.sampled_from([1, 2, 3, 4]))
    divisors = [d for d in range(1, H + 1) if H % d == 0]
    Hkv = draw(st.one_of(st.sampled_from(divisors), st.integers(1, 4))) if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(divisors))
    D = draw(st.sampled_from([1, 4, 8, 16, 24, 33, 64])) if draw(st.integers(0, 19)) else draw(st.sampled_from([0, 257]))
    return dict(
        B=B, H=H, Hkv=Hkv, D=D,
        Nq=draw(st.integers(0, 70)), Nk=draw(st.integers(0, 70)),
        dtype=draw(st.sampled_from(DTYPES)),
        bq=draw(st.integers(1, 48)), bk=draw(st.integers(1, 48)),
        mb=draw(st.sampled_from([1, B])), mh=draw(st.sampled_from([1, H])),
        density=draw(st.floats(0.0, 1.0)),
        layout=draw(st.sampled_from(["contig", "transposed", "sliced", "narrow", "expanded"])),
        scale=draw(st.one_of(st.none(), st.floats(-2.0, 2.0))),
        int_block=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.mark.parametrize("device", devices())
@settings(max_examples=40, deadline=None, database=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
@given(c=fuzz_configs())
def test_fuzz_matches_reference_or_refuses_cleanly(device, c):
    if os.environ.get("GENACCEL_FUZZ_VERBOSE") == "1":
        print(device, c, flush=True)  # the last line names the case, should the process die
    gen = torch.Generator().manual_seed(c["seed"])
    bq, bk = (c["bq"], c["bq"]) if c["int_block"] else (c["bq"], c["bk"])
    bs = c["bq"] if c["int_block"] else (bq, bk)
    q = make_input(gen, (c["B"], c["H"], c["Nq"], c["D"]), c["dtype"], device, c["layout"])
    k, v = (make_input(gen, (c["B"], c["Hkv"], c["Nk"], c["D"]), c["dtype"], device, c["layout"]) for _ in range(2))
    mask = make_mask(gen, (c["mb"], c["mh"], -(-c["Nq"] // bq), -(-c["Nk"] // bk)), "random", c["density"]).to(device)
    valid = c["H"] % c["Hkv"] == 0 and 1 <= c["D"] <= 256
    try:
        out, lse = genaccel.block_sparse_attention(q, k, v, mask, bs, scale=c["scale"], return_lse=True)
    except BAD as e:
        assert str(e), "an error without a message"
        if valid and device == "cpu":
            raise AssertionError(f"a valid configuration was refused: {e}") from e
        return
    assert valid, "an invalid configuration was accepted"
    check_against_reference(out, lse, q, k, v, mask, (bq, bk), c["scale"], c["dtype"])
    check_gradients(q, k, v, mask, bs, c["scale"], gen)


def check_gradients(q, k, v, mask, block_size, scale, gen):
    """Gradients of sum(out * go) against autograd through the float64 reference: relative, plus a
    rounding floor on the scale of go for gradients that cancel to zero (one key: dq = 0)."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = genaccel.block_sparse_attention(*leaves, mask, block_size, scale=scale)
    go = torch.randn(out.shape, generator=gen).to(out.dtype).to(out.device)
    grads = torch.autograd.grad(out, leaves, go)
    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    bq, bk = (block_size, block_size) if isinstance(block_size, int) else block_size
    ref = block_sparse_attention_reference(*ref_leaves, mask.cpu(), (bq, bk), scale)[0]
    expected = torch.autograd.grad(ref, ref_leaves, go.cpu().double())
    rel, floor = (1e-4, 1e-5) if q.dtype == torch.float32 else (2e-2, 1e-3)
    for name, g, e in zip("qkv", grads, expected):
        assert g.shape == e.shape and g.dtype == q.dtype, name
        err = (g.cpu().double() - e).norm()
        assert err <= rel * e.norm() + floor * go.double().norm(), (name, err.item(), e.norm().item())
