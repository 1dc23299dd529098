"""Hypothesis fuzz of sparse_linear_attention: on the CPU, random shapes, block sizes, fractions,
feature maps, semantics, dtypes and layouts give the float64 reference's output (on the same block
codes) and, in float32, its gradients (every draw is valid: bad arguments are the hostile-input
battery's, genaccel.testing.hostile);
on CUDA, within its kernels' limits (bf16/fp16, D 32/64/96/128, block_q 64/128, block_k 64..256), the
output and gradients (the linear branch in chunks: test_sla.py). Skipped where hypothesis is not
installed."""

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import genaccel  # noqa: E402
from conftest import DTYPES, RTOL, devices, needs_cuda, rel_err  # noqa: E402
from genaccel.attention.sla import sla_block_map  # noqa: E402
from genaccel.attention.sla.reference import FEATURE_MAPS, sparse_linear_attention_reference  # noqa: E402


@st.composite
def sla_configs(draw, head_dims=(1, 5, 8, 16, 33), q_blocks=st.integers(1, 48), k_blocks=st.integers(1, 48),
                dtypes=tuple(DTYPES), max_len=120):
    """A random SLA call: shapes, GQA, block sizes, fractions, feature map, semantics, dtype,
    layout, projection and seed (the CUDA fuzz narrows head dims, blocks and dtypes to its kernels)."""
    H = draw(st.sampled_from([1, 2, 4]))
    topk = draw(st.floats(0.0, 1.0))
    return dict(
        B=draw(st.integers(1, 2)), H=H, Hkv=draw(st.sampled_from([d for d in (1, 2, 4) if H % d == 0])),
        D=draw(st.sampled_from(head_dims)),
        Nq=draw(st.integers(1, max_len)), Nk=draw(st.integers(1, max_len)),
        bq=draw(q_blocks), bk=draw(k_blocks),
        topk=topk, low_k=draw(st.floats(0.0, 1.0)) * (1.0 - topk),
        fmap=draw(st.sampled_from(FEATURE_MAPS)), all_keys=draw(st.booleans()),
        dtype=draw(st.sampled_from(dtypes)), transposed=draw(st.booleans()),
        with_proj=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
    )


def fuzz_inputs(c, gen):
    """q, k, v of config c (a (B, N, H, D) storage seen as (B, H, N, D) when c["transposed"]) and
    the projection [w, b], or [] without one."""

    def tensor(heads, n):
        if c["transposed"]:
            return torch.randn(c["B"], n, heads, c["D"], generator=gen).to(c["dtype"]).transpose(1, 2)
        return torch.randn(c["B"], heads, n, c["D"], generator=gen).to(c["dtype"])

    qkv = [tensor(c["H"], c["Nq"]), tensor(c["Hkv"], c["Nk"]), tensor(c["Hkv"], c["Nk"])]
    if not c["with_proj"]:
        return qkv, []
    return qkv, [0.3 * torch.randn(c["D"], c["D"], generator=gen), 0.3 * torch.randn(c["D"], generator=gen)]


def check_output(out, ref_parts, dtype):
    """out against the reference's (out, out_sparse, out_linear): out is the sum of two branches each
    rounded to the output dtype, so its error is relative to the branches' sizes, not to their sum,
    which can cancel (one token, one feature: 0.1866 - 0.1910 = -0.0044, where one bf16 rounding of
    each branch is already 2e-3 of it)."""
    ref, ref_sparse = ref_parts[0].detach(), ref_parts[1].detach()
    scale = (ref_sparse.abs() + (ref - ref_sparse).abs()).norm()
    assert out.dtype == dtype
    assert (out.detach().cpu().double() - ref).norm() <= RTOL[dtype] * scale, rel_err(out.detach().cpu(), ref)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=sla_configs())
def test_fuzz_matches_reference(c):
    gen = torch.Generator().manual_seed(c["seed"])
    (q, k, v), proj = fuzz_inputs(c, gen)
    w, b = proj or (None, None)
    block = (c["bq"], c["bk"])
    float32 = c["dtype"] == torch.float32
    leaves = [t for t in (q, k, v, w, b) if t is not None]
    if float32:
        for t in leaves:
            t.requires_grad_()
    out = genaccel.sparse_linear_attention(q, k, v, w, b, c["topk"], c["low_k"], block, c["fmap"], c["all_keys"])
    codes = sla_block_map(q, k, c["topk"], c["low_k"], block)[0]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    rq, rk, rv, *rp = ref_leaves
    ref_parts = sparse_linear_attention_reference(rq, rk, rv, codes, *(rp or [None, None]), block, c["fmap"],
                                                  c["all_keys"])
    ref = ref_parts[0]
    assert out.shape == q.shape
    check_output(out, ref_parts, c["dtype"])
    if float32:
        go = torch.randn(out.shape, generator=gen)
        grads = torch.autograd.grad(out, leaves, go)
        expected = torch.autograd.grad(ref, ref_leaves, go.double())
        for i, (g, e) in enumerate(zip(grads, expected)):
            # Relative, plus a float32-rounding floor (on the scale of grad_out) for gradients that
            # cancel to 0 exactly (one key: dq = 0; one marginal key: O^l = v, dk = 0).
            assert (g.double() - e).norm() <= 1e-4 * e.norm() + 1e-5 * go.norm(), (i, rel_err(g, e))


CUDA_CONFIGS = sla_configs(head_dims=(32, 64, 96, 128), q_blocks=st.sampled_from([64, 128]),
                           k_blocks=st.sampled_from([64, 128, 192, 256]),
                           dtypes=(torch.bfloat16, torch.float16), max_len=400)


@pytest.mark.cuda
@needs_cuda
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=CUDA_CONFIGS)
def test_cuda_fuzz_matches_reference(c):
    gen = torch.Generator().manual_seed(c["seed"])
    qkv, proj = fuzz_inputs(c, gen)
    cpu = qkv + proj
    leaves = [t.cuda().requires_grad_() for t in cpu]
    q, k, v = leaves[:3]
    w, b = leaves[3:] or (None, None)
    block = (c["bq"], c["bk"])
    out = genaccel.sparse_linear_attention(q, k, v, w, b, c["topk"], c["low_k"], block, c["fmap"], c["all_keys"])
    go = torch.randn(out.shape, generator=gen).to(c["dtype"])
    grads = torch.autograd.grad(out, leaves, go.cuda())
    codes = sla_block_map(q, k, c["topk"], c["low_k"], block)[0].cpu()
    ref_leaves = [t.double().requires_grad_() for t in cpu]
    rq, rk, rv, *rp = ref_leaves
    ref_parts = sparse_linear_attention_reference(rq, rk, rv, codes, *(rp or [None, None]), block, c["fmap"],
                                                  c["all_keys"])
    assert out.shape == q.shape
    check_output(out, ref_parts, c["dtype"])
    expected = torch.autograd.grad(ref_parts[0], ref_leaves, go.double())
    for i, (g, e) in enumerate(zip(grads, expected)):
        # Relative, plus a rounding floor on the scale of go for gradients that cancel to about 0
        # (one key: dq = 0; one marginal key: O^l = v, dk = 0).
        err = (g.cpu().double() - e).norm()
        assert torch.isfinite(g).all() and err <= 2e-2 * e.norm() + 1e-3 * go.double().norm(), (i, err, e.norm())


@pytest.mark.parametrize("device", devices())
@settings(max_examples=60, deadline=None)
@given(rows=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 5)), tk=st.integers(1, 300),
       crit=st.floats(0.0, 1.0), neg=st.floats(0.0, 1.0), tie_share=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**31 - 1))
def test_select_blocks_fuzz(device, rows, tk, crit, neg, tie_share, seed):
    """sla_select_blocks against the stable sort on scores mixing random values with a pool of
    ties (signed zeros, infinities, NaN), for any block count and class sizes."""
    from test_sla_reference import select_blocks_expected

    gen = torch.Generator().manual_seed(seed)
    n_crit = max(1, round(crit * tk))
    n_neg = round(neg * (tk - n_crit))
    pool = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), -float("inf"), float("nan")])
    scores = torch.randn(*rows, tk, generator=gen)
    tied = torch.rand(scores.shape, generator=gen) < tie_share
    scores[tied] = pool[torch.randint(0, len(pool), (int(tied.sum()),), generator=gen)]
    codes, kv_indices = torch.ops.genaccel.sla_select_blocks(scores.to(device), n_crit, n_neg)
    want_codes, want_indices = select_blocks_expected(scores, n_crit, n_neg)
    assert torch.equal(codes.cpu(), want_codes) and torch.equal(kv_indices.cpu(), want_indices)
