"""Hypothesis fuzz of sparse_linear_attention on CUDA, within the CUDA kernels' limits (bf16/fp16, D 32,
64, 96 or 128, block_q 64/128, block_k 64..256): random batch, GQA, lengths (also below one block and not
multiples of it), fractions, feature maps, semantics, layouts, projections and chunking of the linear
branch give the float64 reference's output and gradients (on the same block codes). Skipped without
a GPU or hypothesis."""

import os

import pytest
import torch

from conftest import CUDA

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")]

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import genaccel  # noqa: E402
from genaccel.attention.sla import sla_block_map  # noqa: E402
from genaccel.attention.sla.reference import sparse_linear_attention_reference  # noqa: E402
from test_sla_fuzz import check_output, fuzz_inputs, sla_configs  # noqa: E402

CUDA_CONFIGS = sla_configs(head_dims=(32, 64, 96, 128), q_blocks=st.sampled_from([64, 128]),
                           k_blocks=st.sampled_from([64, 128, 192, 256]),
                           dtypes=(torch.bfloat16, torch.float16), max_len=400)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=CUDA_CONFIGS, chunk_per_pair=st.booleans())
def test_cuda_fuzz_matches_reference(c, chunk_per_pair, monkeypatch_session):
    if os.environ.get("GENACCEL_FUZZ_VERBOSE") == "1":
        print("cuda sla", c, "chunk_per_pair", chunk_per_pair, flush=True)
    gen = torch.Generator().manual_seed(c["seed"])
    qkv, proj = fuzz_inputs(c, gen)
    cpu = qkv + proj
    leaves = [t.cuda().requires_grad_() for t in cpu]
    q, k, v = leaves[:3]
    w, b = leaves[3:] or (None, None)
    block = (c["bq"], c["bk"])
    monkeypatch_session.setenv("GENACCEL_SLA_CHUNK_BYTES", "1" if chunk_per_pair else str(1 << 30))
    out = genaccel.sparse_linear_attention(q, k, v, w, b, c["topk"], c["low_k"], block, c["fmap"], c["all_keys"])
    go = torch.randn(out.shape, generator=gen).to(c["dtype"])
    grads = torch.autograd.grad(out, leaves, go.cuda())
    codes = sla_block_map(q, k, c["topk"], c["low_k"], block)[0].cpu()
    ref_leaves = [t.double().requires_grad_() for t in cpu]
    rq, rk, rv, *rp = ref_leaves
    ref_parts = sparse_linear_attention_reference(rq, rk, rv, codes, *(rp or [None, None]), block, c["fmap"],
                                                  c["all_keys"])
    ref = ref_parts[0]
    assert out.shape == q.shape
    check_output(out, ref_parts, c["dtype"])
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
