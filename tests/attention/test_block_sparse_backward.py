"""Gradients of genaccel.block_sparse_attention (the CPU backward kernel) against autograd through
the float64 reference, including gradients that reach the lse output."""

import pytest
import torch

import genaccel
from conftest import RTOL, rel_err
from genaccel.attention.block_sparse.reference import block_sparse_attention_reference
from genaccel.testing import make_input, make_mask

GRAD_CASES = [
    # id, B, H, Hkv, Nq, Nk, D, block, mask kind, density
    ("basic", 1, 2, 2, 256, 256, 64, (64, 64), "random", 0.5),
    ("gqa_partial", 2, 4, 2, 200, 150, 32, (64, 32), "random", 0.6),
    ("empty_rows", 1, 2, 1, 300, 260, 16, (64, 64), "empty_rows", 0.5),
    ("full_odd_d", 1, 1, 1, 100, 70, 40, (32, 32), "full", 1.0),
    ("tiny", 2, 2, 2, 20, 30, 8, (64, 64), "random", 1.0),
    ("wide_blocks", 1, 2, 2, 130, 520, 32, (32, 128), "random", 0.4),
]


def reference_grads(q, k, v, mask, block, scale, go, gl):
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    out, lse = block_sparse_attention_reference(qd, kd, vd, mask, block, scale)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    loss = (out * go.double()).sum() + (lse * gl.double()).sum()
    return torch.autograd.grad(loss, (qd, kd, vd))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("with_lse_grad", [False, True], ids=["out", "out+lse"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c[0])
def test_gradients_match_reference(case, with_lse_grad, dtype, gen):
    _, B, H, Hkv, Nq, Nk, D, block, kind, density = case
    q = make_input(gen, (B, H, Nq, D), dtype, "cpu").requires_grad_()
    k, v = (make_input(gen, (B, Hkv, Nk, D), dtype, "cpu").requires_grad_() for _ in range(2))
    mask = make_mask(gen, (B, 1, -(-Nq // block[0]), -(-Nk // block[1])), kind, density)
    scale = 0.7 / D**0.5
    out, lse = genaccel.block_sparse_attention(q, k, v, mask, block, scale=scale, return_lse=True)
    go = torch.randn(out.shape, generator=gen).to(dtype)
    gl = torch.randn(lse.shape, generator=gen) if with_lse_grad else torch.zeros(lse.shape)
    gl = torch.where(torch.isfinite(lse), gl, torch.zeros_like(gl))
    grads = torch.autograd.grad((out * go).float().sum() + (lse * gl).sum(), (q, k, v))
    expected = reference_grads(q, k, v, mask, block, scale, go, gl)
    tol = 2 * RTOL[dtype]
    for name, g, e in zip("qkv", grads, expected):
        assert g.dtype == dtype and g.shape == e.shape, name
        if e.norm() == 0:
            assert torch.equal(g, torch.zeros_like(g)), name
        else:
            assert rel_err(g, e) <= tol, (name, rel_err(g, e))


def test_no_selected_key_gives_zero_gradients(gen):
    q, k, v = (make_input(gen, (1, 2, 64, 16), torch.float32, "cpu").requires_grad_() for _ in range(3))
    mask = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    out = genaccel.block_sparse_attention(q, k, v, mask, 32)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_noncontiguous_inputs_and_grad_output(gen):
    base = torch.randn(1, 96, 2, 32, generator=gen)
    q = base.transpose(1, 2).requires_grad_()  # (1, 2, 96, 32), non-contiguous view
    k = torch.randn(1, 2, 96, 32, generator=gen).requires_grad_()
    v = torch.randn(1, 2, 96, 32, generator=gen).requires_grad_()
    mask = make_mask(gen, (1, 2, 3, 3), "random", 0.7)
    out = genaccel.block_sparse_attention(q, k, v, mask, 32)
    go = torch.randn(1, 96, 2, 32, generator=gen).transpose(1, 2)
    grads = torch.autograd.grad(out, (q, k, v), go)
    expected = reference_grads(q, k, v, mask, (32, 32), 32**-0.5, go, torch.zeros(1, 2, 96))
    assert all(rel_err(g, e) <= 2e-4 for g, e in zip(grads, expected))


def test_compiled_backward(gen):
    q, k, v = (make_input(gen, (1, 2, 128, 32), torch.float32, "cpu").requires_grad_() for _ in range(3))
    mask = make_mask(gen, (1, 2, 4, 4), "random", 0.6)

    def loss(q, k, v):
        return genaccel.block_sparse_attention(q, k, v, mask, 32).square().sum()

    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(q, k, v), (q, k, v))
    assert all(rel_err(c, e) < 1e-6 for c, e in zip(compiled, eager))


def test_bwd_op_rejects_bad_input(gen):
    q, k, v = (make_input(gen, (1, 2, 64, 16), torch.float32, "cpu") for _ in range(3))
    idx, cnt = genaccel.block_mask_to_indices(torch.ones(1, 2, 2, 2, dtype=torch.bool))
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, 32, 32, 0.25)
    delta = (out * out).sum(-1)
    bwd = torch.ops.genaccel.block_sparse_attn_bwd
    with pytest.raises(RuntimeError, match="dout must match q"):
        bwd(out[..., :8], q, k, v, delta, lse, idx, cnt, 32, 32, 0.25)
    with pytest.raises(RuntimeError, match="delta and lse must be float32"):
        bwd(out, q, k, v, delta.double(), lse, idx, cnt, 32, 32, 0.25)
    with pytest.raises(RuntimeError, match="delta and lse must be float32"):
        bwd(out, q, k, v, delta, lse[..., :3], idx, cnt, 32, 32, 0.25)
    with pytest.raises(RuntimeError, match="kv_indices must lie in"):
        bwd(out, q, k, v, delta, lse, idx + 3, cnt, 32, 32, 0.25)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(
    "B,H,Hkv,D",
    [(2, 4, 1, 32), (1, 6, 2, 24), (2, 3, 3, 16)],
    ids=["mqa_fewer_groups_than_threads", "gqa_d_not_16x", "more_groups_than_threads"],
)
def test_gradients_for_thread_counts(B, H, Hkv, D, threads, gen):
    """dK/dV work is split by (batch, kv head): a thread owns a group and writes its dK/dV, and
    threads left without a group help (into buffers added in at the end). Whatever the thread count,
    the gradients must match the reference (and each other)."""
    q = make_input(gen, (B, H, 520, D), torch.float32, "cpu").requires_grad_()
    k, v = (make_input(gen, (B, Hkv, 300, D), torch.float32, "cpu").requires_grad_() for _ in range(2))
    mask = make_mask(gen, (B, H, 17, 10), "random", 0.5)
    go = torch.randn(B, H, 520, D, generator=gen)
    expected = reference_grads(q, k, v, mask, (32, 32), D**-0.5, go, torch.zeros(B, H, 520))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for _ in range(2):  # the second call reuses the helpers' cached buffers
            out = genaccel.block_sparse_attention(q, k, v, mask, 32)
            grads = torch.autograd.grad(out, (q, k, v), go)
            for name, g, e in zip("qkv", grads, expected):
                assert rel_err(g, e) <= 2e-4, (name, rel_err(g, e))
    finally:
        torch.set_num_threads(before)


def test_double_backward_raises(gen):
    q, k, v = (make_input(gen, (1, 2, 64, 16), torch.float32, "cpu").requires_grad_() for _ in range(3))
    out = genaccel.block_sparse_attention(q, k, v, torch.ones(1, 1, 2, 2, dtype=torch.bool), 32)
    (gq,) = torch.autograd.grad(out.square().sum(), (q,), create_graph=True)
    with pytest.raises(RuntimeError, match="block_sparse_attention: double backward"):
        gq.sum().backward()


def test_nan_reaches_only_the_rows_that_attend_it(gen):
    q, k, v = (make_input(gen, (1, 1, 128, 16), torch.float32, "cpu") for _ in range(3))
    k[0, 0, 70, 3] = float("nan")
    mask = torch.tensor([[[[False, True], [True, False]]]])
    out = genaccel.block_sparse_attention(q, k, v, mask, 64)
    assert out[..., :64, :].isnan().all() and out[..., 64:, :].isfinite().all()
