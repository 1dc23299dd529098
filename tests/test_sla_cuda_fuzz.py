"""Hypothesis fuzz of sparse_linear_attention on CUDA, within the CUDA kernels' limits (bf16/fp16, D 64
or 128, block_q 64/128, block_k 64..256): random batch, GQA, lengths (also below one block and not
multiples of it), fractions, feature maps, semantics, layouts, projections and chunking of the linear
branch give the float64 reference's output and gradients (on the same block codes). Skipped without
a GPU or hypothesis."""

import os

import pytest
import torch

from conftest import CUDA, RTOL, rel_err

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")]

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import genaccel  # noqa: E402
from genaccel.attention.sla import sla_block_map  # noqa: E402
from genaccel.attention.sla.reference import FEATURE_MAPS, sparse_linear_attention_reference  # noqa: E402


@st.composite
def cuda_sla_configs(draw):
    H = draw(st.sampled_from([1, 2, 4]))
    topk = draw(st.floats(0.0, 1.0))
    return dict(
        B=draw(st.integers(1, 2)), H=H, Hkv=draw(st.sampled_from([d for d in (1, 2, 4) if H % d == 0])),
        D=draw(st.sampled_from([64, 128])), Nq=draw(st.integers(1, 400)), Nk=draw(st.integers(1, 400)),
        bq=draw(st.sampled_from([64, 128])), bk=draw(st.sampled_from([64, 128, 192, 256])),
        topk=topk, low_k=draw(st.floats(0.0, 1.0)) * (1.0 - topk),
        fmap=draw(st.sampled_from(FEATURE_MAPS)), all_keys=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.bfloat16, torch.float16])), transposed=draw(st.booleans()),
        with_proj=draw(st.booleans()), chunk_per_pair=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=cuda_sla_configs())
def test_cuda_fuzz_matches_reference(c, monkeypatch_session):
    if os.environ.get("GENACCEL_FUZZ_VERBOSE") == "1":
        print("cuda sla", c, flush=True)
    gen = torch.Generator().manual_seed(c["seed"])

    def tensor(heads, n):
        if c["transposed"]:  # (B, N, H, D) storage seen as (B, H, N, D)
            return torch.randn(c["B"], n, heads, c["D"], generator=gen).to(c["dtype"]).transpose(1, 2)
        return torch.randn(c["B"], heads, n, c["D"], generator=gen).to(c["dtype"])

    cpu = [tensor(c["H"], c["Nq"]), tensor(c["Hkv"], c["Nk"]), tensor(c["Hkv"], c["Nk"])]
    if c["with_proj"]:
        cpu += [0.3 * torch.randn(c["D"], c["D"], generator=gen), 0.3 * torch.randn(c["D"], generator=gen)]
    leaves = [t.cuda().requires_grad_() for t in cpu]
    q, k, v, *proj = leaves
    block = (c["bq"], c["bk"])
    monkeypatch_session.setenv("GENACCEL_SLA_CHUNK_BYTES", "1" if c["chunk_per_pair"] else str(1 << 30))
    out = genaccel.sparse_linear_attention(q, k, v, *(proj or [None, None]), c["topk"], c["low_k"], block,
                                           c["fmap"], c["all_keys"])
    go = torch.randn(out.shape, generator=gen).to(c["dtype"])
    grads = torch.autograd.grad(out, leaves, go.cuda())
    codes = sla_block_map(q, k, c["topk"], c["low_k"], block)[0].cpu()
    ref_leaves = [t.double().requires_grad_() for t in cpu]
    rq, rk, rv, *rp = ref_leaves
    ref = sparse_linear_attention_reference(rq, rk, rv, codes, *(rp or [None, None]), block, c["fmap"],
                                            c["all_keys"])[0]
    assert out.dtype == c["dtype"] and out.shape == q.shape
    assert rel_err(out.detach().cpu(), ref.detach()) <= RTOL[c["dtype"]]
    expected = torch.autograd.grad(ref, ref_leaves, go.double())
    for i, (g, e) in enumerate(zip(grads, expected)):
        # Relative, plus a rounding floor on the scale of go for gradients that cancel to about 0
        # (one key: dq = 0; one marginal key: O^l = v, dk = 0).
        err = (g.cpu().double() - e).norm()
        assert torch.isfinite(g).all() and err <= 2e-2 * e.norm() + 1e-3 * go.double().norm(), (i, err, e.norm())


@pytest.fixture(scope="module")
def monkeypatch_session():
    """An environment patch that outlives hypothesis' examples (the function-scoped monkeypatch
    fixture is not reset between them) and is undone after the module."""
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
