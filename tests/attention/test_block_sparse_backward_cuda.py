"""The fused CUDA block-sparse backward (include/genaccel/attention/block_sparse_bwd.cuh: a dK/dV
kernel over the key-major plan and a dQ kernel over the plan) against the float64 reference and
the CPU kernel: head dims, block sizes, GQA, partial blocks, empty rows, broadcast and per-head
plans, repeated plan entries, determinism, and its errors."""

import pytest
import torch

import genaccel
from conftest import CUDA, RTOL, attention_kernels, rel_err
from genaccel.attention.block_sparse import attention_delta
from genaccel.testing import make_input, make_mask
from test_block_sparse_backward import reference_grads

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")]

CASES = [
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


@pytest.mark.parametrize("per_head_plan", [False, True], ids=["plan_per_batch", "plan_per_head"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("attention_kernel", attention_kernels(), indirect=True)
def test_gradients_match_reference(case, dtype, per_head_plan, attention_kernel, gen):
    """Forward and backward on the mma.sync kernels and, on Hopper, on the wgmma ones."""
    _, B, H, Hkv, Nq, Nk, D, block, kind, density = case
    q = make_input(gen, (B, H, Nq, D), dtype, "cuda").requires_grad_()
    k, v = (make_input(gen, (B, Hkv, Nk, D), dtype, "cuda").requires_grad_() for _ in range(2))
    mask = make_mask(gen, (B, H if per_head_plan else 1, -(-Nq // block[0]), -(-Nk // block[1])), kind, density)
    scale = 0.7 / D**0.5
    out = genaccel.block_sparse_attention(q, k, v, mask.cuda(), block, scale=scale)
    go = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), go.cuda())
    expected = reference_grads(q.cpu(), k.cpu(), v.cpu(), mask, block, scale, go, torch.zeros(B, H, Nq))
    for name, g, e in zip("qkv", grads, expected):
        assert g.is_cuda and g.dtype == dtype and g.shape == e.shape, name
        if e.norm() == 0:
            assert not g.any(), name
        else:
            assert rel_err(g.cpu(), e) <= 2 * RTOL[torch.bfloat16], (name, rel_err(g.cpu(), e))


def run_bwd_op(gen, idx, cnt, B=1, H=2, Hkv=1, Nq=200, Nk=300, D=64, block=(64, 64), dtype=torch.bfloat16):
    """(CUDA grads, CPU-kernel grads) of block_sparse_attn_bwd for one plan, same inputs."""
    q = make_input(gen, (B, H, Nq, D), dtype, "cpu")
    k, v = (make_input(gen, (B, Hkv, Nk, D), dtype, "cpu") for _ in range(2))
    go = make_input(gen, (B, H, Nq, D), dtype, "cpu")
    scale = D**-0.5
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, *block, scale)
    delta = attention_delta(go, out, None)
    args = (go, q, k, v, delta, lse, idx, cnt)
    cpu = torch.ops.genaccel.block_sparse_attn_bwd(*args, *block, scale)
    cuda = torch.ops.genaccel.block_sparse_attn_bwd(*(t.cuda() for t in args), *block, scale)
    return cuda, cpu


def test_repeated_plan_entries_count_twice_like_the_cpu_kernel(gen):
    """A key block listed twice is attended twice by the forward; the key-major plan keeps both."""
    idx = torch.tensor([[[[0, 2, 2, 4], [1, 1, 3, 0], [4, 0, 0, 0], [3, 2, 1, 0]]]], dtype=torch.int32)
    cnt = torch.tensor([[[4, 3, 1, 0]]], dtype=torch.int32)
    cuda, cpu = run_bwd_op(gen, idx, cnt)
    for name, g, c in zip("qkv", cuda, cpu):
        assert rel_err(g.cpu().float(), c.float()) <= 2e-2, (name, rel_err(g.cpu().float(), c.float()))


@pytest.mark.parametrize("attention_kernel", attention_kernels(), indirect=True)
def test_deterministic(attention_kernel, gen):
    """No atomics: two calls give bitwise equal gradients."""
    mask = make_mask(gen, (1, 2, 4, 5), "random", 0.6)
    idx, cnt = genaccel.block_mask_to_indices(mask)
    q, go = (make_input(gen, (1, 2, 256, 64), torch.bfloat16, "cuda") for _ in range(2))
    k, v = (make_input(gen, (1, 2, 300, 64), torch.bfloat16, "cuda") for _ in range(2))
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx.cuda(), cnt.cuda(), 64, 64, 0.125)
    args = (go, q, k, v, attention_delta(go, out, None), lse, idx.cuda(), cnt.cuda(), 64, 64, 0.125)
    first = torch.ops.genaccel.block_sparse_attn_bwd(*args)
    second = torch.ops.genaccel.block_sparse_attn_bwd(*args)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_noncontiguous_and_misaligned_views(gen):
    """Views the kernels cannot read in 16-byte pieces are copied once; results match the CPU kernel."""
    base = make_input(gen, (1, 200, 2, 72), torch.bfloat16, "cpu")
    q = base[..., 4:68].transpose(1, 2)  # (1, 2, 200, 64), starts 8 bytes off a 16-byte boundary
    k, v, go = (make_input(gen, (1, 2, 200, 64), torch.bfloat16, "cpu") for _ in range(3))
    idx, cnt = genaccel.block_mask_to_indices(make_mask(gen, (1, 2, 4, 4), "random", 0.6))
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, 64, 64, 0.125)
    args = (go.transpose(1, 2).contiguous().transpose(1, 2), q, k, v, attention_delta(go, out, None), lse, idx, cnt)
    cpu = torch.ops.genaccel.block_sparse_attn_bwd(*args, 64, 64, 0.125)
    cuda = torch.ops.genaccel.block_sparse_attn_bwd(*(t.cuda() for t in args), 64, 64, 0.125)
    assert all(rel_err(g.cpu().float(), c.float()) <= 2e-2 for g, c in zip(cuda, cpu))


def test_empty_sequences(gen):
    q = make_input(gen, (1, 2, 0, 64), torch.bfloat16, "cuda")
    k = v = make_input(gen, (1, 2, 100, 64), torch.bfloat16, "cuda")
    idx = torch.zeros(1, 2, 0, 2, dtype=torch.int32, device="cuda")
    cnt = torch.zeros(1, 2, 0, dtype=torch.int32, device="cuda")
    rows = torch.zeros(1, 2, 0, device="cuda")
    dq, dk, dv = torch.ops.genaccel.block_sparse_attn_bwd(q, q, k, v, rows, rows, idx, cnt, 64, 64, 0.125)
    assert dq.shape == q.shape and not dk.any() and not dv.any()


def test_unsupported_configuration_raises(gen):
    q, k, v = (make_input(gen, (1, 2, 64, 160), torch.bfloat16, "cuda") for _ in range(3))
    idx = torch.zeros(1, 1, 1, 1, dtype=torch.int32, device="cuda")
    cnt = torch.ones(1, 1, 1, dtype=torch.int32, device="cuda")
    rows = torch.zeros(1, 2, 64, device="cuda")
    with pytest.raises(RuntimeError, match="block_sparse_attn_bwd \\(CUDA\\): head dims above 128 are not supported"):
        torch.ops.genaccel.block_sparse_attn_bwd(q, q, k, v, rows, rows, idx, cnt, 64, 64, 0.125)
    with pytest.raises(RuntimeError, match="block_sparse_attn_fwd \\(CUDA\\): head dims above 128 are not supported"):
        torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, 64, 64, 0.125)


def test_opcheck(gen):
    q, k, v, go = (make_input(gen, (1, 2, 130, 64), torch.bfloat16, "cuda") for _ in range(4))
    idx, cnt = genaccel.block_mask_to_indices(make_mask(gen, (1, 1, 3, 3), "random", 0.7))
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx.cuda(), cnt.cuda(), 64, 64, 0.125)
    args = (go, q, k, v, attention_delta(go, out, None), lse, idx.cuda(), cnt.cuda(), 64, 64, 0.125)
    torch.library.opcheck(torch.ops.genaccel.block_sparse_attn_bwd, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("attention_kernel", attention_kernels(), indirect=True)
def test_very_negative_logits_with_a_partial_last_key_block(dtype, attention_kernel, gen):
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
    qc, kc, vc = (t.cuda().requires_grad_() for t in (q, k, v))
    out = genaccel.block_sparse_attention(qc, kc, vc, mask.cuda(), 64, scale=scale)
    grads = torch.autograd.grad(out, (qc, kc, vc), go.cuda())
    expected = reference_grads(q, k, v, mask, (64, 64), scale, go, torch.zeros(B, H, Nq))
    for name, g, e in zip("qkv", grads, expected):
        assert torch.isfinite(g).all(), name
        assert rel_err(g.cpu(), e) <= 2 * RTOL[torch.bfloat16], (name, rel_err(g.cpu(), e))
