"""Gradients of genaccel.block_sparse_attention and op block_sparse_attn_bwd on each device (the CPU
kernel; on CUDA the fused backward of include/genaccel/attention/block_sparse: a dK/dV kernel over
the key-major plan and a dQ kernel over the plan, on each `backend=`) against autograd through the
float64 reference, including gradients that reach the lse output: head dims, block sizes, GQA,
partial blocks, empty rows, broadcast and per-head plans, determinism, and the errors. CUDA-only:
repeated plan entries and misaligned views against the CPU kernel, unsupported configurations."""

import pytest
import torch

import genaccel
from conftest import HALF_DTYPES, RTOL, backend_marks, device_backends, devices, needs_cuda, on_cuda, rel_err
from genaccel.attention.block_sparse import attention_delta
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
# Within the CUDA kernels' limits (head dims up to 128, 64/128-token query blocks, key blocks of
# 64-key tiles).
CUDA_GRAD_CASES = [
    # id, B, H, Hkv, Nq, Nk, D, block, mask kind, density
    ("basic", 1, 2, 2, 256, 256, 64, (64, 64), "random", 0.5),
    ("gqa_partial_d128", 2, 4, 2, 200, 150, 128, (64, 64), "random", 0.6),
    ("mqa_empty_rows", 1, 3, 1, 300, 260, 64, (64, 64), "empty_rows", 0.5),
    ("block_q128_partial", 1, 4, 2, 330, 270, 128, (128, 64), "random", 0.5),
    ("key_blocks_256", 1, 2, 2, 200, 520, 64, (64, 256), "random", 0.4),
    ("single_last", 2, 2, 1, 130, 190, 64, (128, 128), "single_last", 1.0),
    ("full_d128", 1, 2, 2, 192, 192, 128, (64, 128), "full", 1.0),
    # Head dims without a kernel of their own run zero-padded to 128 / 64.
    ("padded_d96_gqa", 1, 4, 2, 200, 150, 96, (64, 64), "random", 0.6),
    ("padded_d40", 1, 2, 2, 130, 190, 40, (128, 64), "random", 0.5),
]
# device, case, with_lse_grad, per_head_plan, dtype, backend, tolerance. The CPU with gradients into
# the lse too; CUDA with broadcast and per-head plans, on each backend, within 2e-2 for both half
# types.
GRAD_PARAMS = [
    pytest.param("cpu", case, lse, False, dtype, "auto", 2 * RTOL[dtype],
                 id=f"cpu-{case[0]}-{'out+lse' if lse else 'out'}-{str(dtype)[6:]}")
    for case in GRAD_CASES for lse in (False, True) for dtype in (torch.float32, torch.bfloat16, torch.float16)
] + [
    on_cuda("cuda", case, False, per_head, dtype, backend, 2 * RTOL[torch.bfloat16],
            id=f"cuda-{backend}-{case[0]}-{'plan_per_head' if per_head else 'plan_per_batch'}-{str(dtype)[6:]}",
            marks=backend_marks(backend))
    for backend in ("sm80", "sm90") for case in CUDA_GRAD_CASES for dtype in HALF_DTYPES for per_head in (False, True)
]


def reference_grads(q, k, v, mask, block, scale, go, gl):
    """d(sum(out * go) + sum(lse * gl)) / d(q, k, v) through the float64 reference, on the CPU."""
    qd, kd, vd = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    out, lse = block_sparse_attention_reference(qd, kd, vd, mask.cpu(), block, scale)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    loss = (out * go.cpu().double()).sum() + (lse * gl.cpu().double()).sum()
    return torch.autograd.grad(loss, (qd, kd, vd))


@pytest.mark.parametrize("device, case, with_lse_grad, per_head_plan, dtype, backend, tol", GRAD_PARAMS)
def test_gradients_match_reference(device, case, with_lse_grad, per_head_plan, dtype, backend, tol, gen):
    _, B, H, Hkv, Nq, Nk, D, block, kind, density = case
    q = make_input(gen, (B, H, Nq, D), dtype, device).requires_grad_()
    k, v = (make_input(gen, (B, Hkv, Nk, D), dtype, device).requires_grad_() for _ in range(2))
    mask = make_mask(gen, (B, H if per_head_plan else 1, -(-Nq // block[0]), -(-Nk // block[1])), kind, density)
    scale = 0.7 / D**0.5
    out, lse = genaccel.block_sparse_attention(q, k, v, mask.to(device), block, scale=scale, return_lse=True,
                                               backend=backend)
    go = torch.randn(out.shape, generator=gen).to(dtype)
    gl = torch.randn(lse.shape, generator=gen) if with_lse_grad else torch.zeros(lse.shape)
    gl = torch.where(torch.isfinite(lse.cpu()), gl, torch.zeros_like(gl))
    grads = torch.autograd.grad((out * go.to(device)).float().sum() + (lse * gl.to(device)).sum(), (q, k, v))
    expected = reference_grads(q, k, v, mask, block, scale, go, gl)
    for name, g, e in zip("qkv", grads, expected):
        assert g.device == q.device and g.dtype == dtype and g.shape == e.shape, name
        g = g.cpu()
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


@pytest.mark.cuda
@needs_cuda
def test_noncontiguous_and_misaligned_views(gen):
    """Views the CUDA kernels cannot read in 16-byte pieces are copied once; results match the CPU
    kernel."""
    base = make_input(gen, (1, 200, 2, 72), torch.bfloat16, "cpu")
    q = base[..., 4:68].transpose(1, 2)  # (1, 2, 200, 64), starts 8 bytes off a 16-byte boundary
    k, v, go = (make_input(gen, (1, 2, 200, 64), torch.bfloat16, "cpu") for _ in range(3))
    idx, cnt = genaccel.block_mask_to_indices(make_mask(gen, (1, 2, 4, 4), "random", 0.6))
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, 64, 64, 0.125)
    args = (go.transpose(1, 2).contiguous().transpose(1, 2), q, k, v, attention_delta(go, out, None), lse, idx, cnt)
    cpu = torch.ops.genaccel.block_sparse_attn_bwd(*args, 64, 64, 0.125)
    cuda = torch.ops.genaccel.block_sparse_attn_bwd(*(t.cuda() for t in args), 64, 64, 0.125)
    assert all(rel_err(g.cpu().float(), c.float()) <= 2e-2 for g, c in zip(cuda, cpu))


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


@pytest.mark.cuda
@needs_cuda
def test_unsupported_configuration_raises(gen):
    q, k, v = (make_input(gen, (1, 2, 64, 160), torch.bfloat16, "cuda") for _ in range(3))
    idx = torch.zeros(1, 1, 1, 1, dtype=torch.int32, device="cuda")
    cnt = torch.ones(1, 1, 1, dtype=torch.int32, device="cuda")
    rows = torch.zeros(1, 2, 64, device="cuda")
    with pytest.raises(RuntimeError, match="block_sparse_attn_bwd \\(CUDA\\): head dims above 128 are not supported"):
        torch.ops.genaccel.block_sparse_attn_bwd(q, q, k, v, rows, rows, idx, cnt, 64, 64, 0.125)
    with pytest.raises(RuntimeError, match="block_sparse_attn_fwd \\(CUDA\\): head dims above 128 are not supported"):
        torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, 64, 64, 0.125)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(
    "B,H,Hkv,D",
    [(2, 4, 1, 32), (1, 6, 2, 24), (2, 3, 3, 16)],
    ids=["mqa_fewer_groups_than_threads", "gqa_d_not_16x", "more_groups_than_threads"],
)
def test_gradients_for_thread_counts(B, H, Hkv, D, threads, gen):
    """dK/dV work is split by (batch, kv head) groups, and a group split between threads sums the
    later parts' buffers into dK/dV at the end. Whatever the thread count, the gradients must match
    the reference (and the second call, on reused buffers, the first bit for bit)."""
    q = make_input(gen, (B, H, 520, D), torch.float32, "cpu").requires_grad_()
    k, v = (make_input(gen, (B, Hkv, 300, D), torch.float32, "cpu").requires_grad_() for _ in range(2))
    mask = make_mask(gen, (B, H, 17, 10), "random", 0.5)
    go = torch.randn(B, H, 520, D, generator=gen)
    expected = reference_grads(q, k, v, mask, (32, 32), D**-0.5, go, torch.zeros(B, H, 520))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        calls = [torch.autograd.grad(genaccel.block_sparse_attention(q, k, v, mask, 32), (q, k, v), go)
                 for _ in range(2)]
        for name, g, again, e in zip("qkv", *calls, expected):
            assert rel_err(g, e) <= 2e-4 and torch.equal(g, again), (name, rel_err(g, e))
    finally:
        torch.set_num_threads(before)


def test_double_backward_raises(gen):
    q, k, v = (make_input(gen, (1, 2, 64, 16), torch.float32, "cpu").requires_grad_() for _ in range(3))
    out = genaccel.block_sparse_attention(q, k, v, torch.ones(1, 1, 2, 2, dtype=torch.bool), 32)
    (gq,) = torch.autograd.grad(out.square().sum(), (q,), create_graph=True)
    with pytest.raises(RuntimeError, match="block_sparse_attention: double backward"):
        gq.sum().backward()


@pytest.mark.parametrize("tensor", ["k", "v"])
def test_nan_reaches_only_the_rows_that_attend_it(tensor, gen):
    """The kernel and the float64 reference alike: rows ..64 attend key 70, rows 64.. do not."""
    q, k, v = (make_input(gen, (1, 1, 128, 16), torch.float32, "cpu") for _ in range(3))
    {"k": k, "v": v}[tensor][0, 0, 70, 3] = float("nan")
    mask = torch.tensor([[[[False, True], [True, False]]]])
    out = genaccel.block_sparse_attention(q, k, v, mask, 64)
    ref, _ = block_sparse_attention_reference(q, k, v, mask, (64, 64))
    assert out[..., :64, :].isnan().any(-1).all() and out[..., 64:, :].isfinite().all()
    assert torch.equal(out.isnan(), ref.isnan())


@pytest.mark.cuda
@needs_cuda
def test_repeated_plan_entries_count_twice_like_the_cpu_kernel(gen):
    """A key block listed twice is attended twice by the forward; the CUDA key-major plan keeps
    both, as the CPU kernel does."""
    idx = torch.tensor([[[[0, 2, 2, 4], [1, 1, 3, 0], [4, 0, 0, 0], [3, 2, 1, 0]]]], dtype=torch.int32)
    cnt = torch.tensor([[[4, 3, 1, 0]]], dtype=torch.int32)
    B, H, Hkv, Nq, Nk, D, block, dtype = 1, 2, 1, 200, 300, 64, (64, 64), torch.bfloat16
    q = make_input(gen, (B, H, Nq, D), dtype, "cpu")
    k, v = (make_input(gen, (B, Hkv, Nk, D), dtype, "cpu") for _ in range(2))
    go = make_input(gen, (B, H, Nq, D), dtype, "cpu")
    scale = D**-0.5
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, *block, scale)
    args = (go, q, k, v, attention_delta(go, out, None), lse, idx, cnt)
    cpu = torch.ops.genaccel.block_sparse_attn_bwd(*args, *block, scale)
    cuda = torch.ops.genaccel.block_sparse_attn_bwd(*(t.cuda() for t in args), *block, scale)
    for name, g, c in zip("qkv", cuda, cpu):
        assert rel_err(g.cpu().float(), c.float()) <= 2e-2, (name, rel_err(g.cpu().float(), c.float()))


@pytest.mark.parametrize("device, backend", device_backends())
def test_deterministic(device, backend, gen):
    """Two calls give bitwise equal gradients: no atomics on CUDA; on the CPU a (batch, kv head)
    group split between threads is summed in a fixed order (here one group of two heads on three
    threads, so it is split)."""
    mask = make_mask(gen, (1, 2, 4, 5), "random", 0.6)
    idx, cnt = (t.to(device) for t in genaccel.block_mask_to_indices(mask))
    q, go = (make_input(gen, (1, 2, 256, 64), torch.bfloat16, device) for _ in range(2))
    k, v = (make_input(gen, (1, 1, 300, 64), torch.bfloat16, device) for _ in range(2))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, 64, 64, 0.125, backend=backend)
        args = (go, q, k, v, attention_delta(go, out, None), lse, idx, cnt, 64, 64, 0.125)
        first = torch.ops.genaccel.block_sparse_attn_bwd(*args, backend=backend)
        second = torch.ops.genaccel.block_sparse_attn_bwd(*args, backend=backend)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("device", devices())
def test_empty_sequences(device, gen):
    q = make_input(gen, (1, 2, 0, 64), torch.bfloat16, device)
    k = v = make_input(gen, (1, 2, 100, 64), torch.bfloat16, device)
    idx = torch.zeros(1, 2, 0, 2, dtype=torch.int32, device=device)
    cnt = torch.zeros(1, 2, 0, dtype=torch.int32, device=device)
    rows = torch.zeros(1, 2, 0, device=device)
    dq, dk, dv = torch.ops.genaccel.block_sparse_attn_bwd(q, q, k, v, rows, rows, idx, cnt, 64, 64, 0.125)
    assert dq.shape == q.shape and not dk.any() and not dv.any()


@pytest.mark.parametrize("device", devices())
def test_opcheck(device, gen):
    q, k, v, go = (make_input(gen, (1, 2, 130, 64), torch.bfloat16, device) for _ in range(4))
    idx, cnt = (t.to(device) for t in genaccel.block_mask_to_indices(make_mask(gen, (1, 1, 3, 3), "random", 0.7)))
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, 64, 64, 0.125)
    args = (go, q, k, v, attention_delta(go, out, None), lse, idx, cnt, 64, 64, 0.125)
    torch.library.opcheck(torch.ops.genaccel.block_sparse_attn_bwd, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("device, backend", device_backends())
def test_very_negative_logits_with_a_partial_last_key_block(device, backend, dtype, gen):
    """lse far below 0: keys past seqlen_k would get P = exp(0 - lse), huge (past float16's range),
    unless masked; dQ must stay finite and right.

    The shift comes from one feature shared by all queries (-10) and all keys (+10): lse is about
    -22 to -29. Its part of dQ sums dS over the keys, which is 0, so only that one feature cancels.
    (Keys that share a large component in every feature make all of dQ such a cancellation, and
    the bfloat16 rounding of dS alone then costs about 2e-2 relative, at any correct kernel.)"""
    B, H, Nq, Nk, D = 1, 2, 128, 100, 64  # last key block: 36 keys
    q, k = torch.randn(B, H, Nq, D, generator=gen), torch.randn(B, H, Nk, D, generator=gen)
    q[..., 0], k[..., 0] = -10, 10
    q, k = q.to(dtype), k.to(dtype)
    v = torch.randn(B, H, Nk, D, generator=gen).to(dtype)
    go = (4 * torch.randn(B, H, Nq, D, generator=gen)).to(dtype)
    mask = torch.ones(B, 1, 2, 2, dtype=torch.bool)
    scale = 0.35
    qc, kc, vc = (t.to(device).requires_grad_() for t in (q, k, v))
    out = genaccel.block_sparse_attention(qc, kc, vc, mask.to(device), 64, scale=scale, backend=backend)
    grads = torch.autograd.grad(out, (qc, kc, vc), go.to(device))
    expected = reference_grads(q, k, v, mask, (64, 64), scale, go, torch.zeros(B, H, Nq))
    for name, g, e in zip("qkv", grads, expected):
        assert torch.isfinite(g).all(), name
        assert rel_err(g.cpu(), e) <= 2 * RTOL[torch.bfloat16], (name, rel_err(g.cpu(), e))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64], ids=str)
def test_bwd_op_refuses_a_dout_that_is_not_floating(dtype, gen):
    """dout of another dtype was read as if it were float (complex lost its imaginary part)."""
    q, k, v = (make_input(gen, (1, 1, 96, 16), torch.float32, "cpu") for _ in range(3))
    idx, cnt = genaccel.block_mask_to_indices(torch.ones(1, 1, 2, 2, dtype=torch.bool))
    rows = torch.zeros(1, 1, 96)
    with pytest.raises(RuntimeError, match="block_sparse_attn_bwd: dout must be float32, float16 or bfloat16"):
        torch.ops.genaccel.block_sparse_attn_bwd(q.to(dtype), q, k, v, rows, rows, idx, cnt, 64, 64, 0.25)


@pytest.mark.parametrize("scale", [1e39, -1e39])
def test_ops_refuse_a_scale_beyond_float32(scale, gen):
    """A finite double above float32's range became inf in the kernels: every output NaN."""
    q, k, v = (make_input(gen, (1, 1, 96, 16), torch.float32, "cpu") for _ in range(3))
    idx, cnt = genaccel.block_mask_to_indices(torch.ones(1, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="block_sparse_attn_fwd: scale must be finite in float32"):
        torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, 64, 64, scale)
    rows = torch.zeros(1, 1, 96)
    with pytest.raises(RuntimeError, match="block_sparse_attn_bwd: scale must be finite in float32"):
        torch.ops.genaccel.block_sparse_attn_bwd(q, q, k, v, rows, rows, idx, cnt, 64, 64, scale)
