"""sla_fwd on CUDA (block-sparse kernel + tensor-core linear branch) against the float64 reference
and against the CPU op. Skipped without a GPU and genaccel's CUDA kernels."""

import pytest
import torch

import genaccel
from conftest import CUDA, RTOL, attention_kernels, rel_err, run_without_host_sync
from genaccel.attention.sla import sla_block_map
from genaccel.attention.sla.reference import FEATURE_MAPS, sparse_linear_attention_reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")]

CASES = [
    # B, H, Hkv, Nq, Nk, D, block
    (1, 2, 2, 256, 256, 64, (64, 64)),
    (2, 4, 2, 300, 260, 64, (64, 64)),     # GQA, partial blocks, Nq != Nk
    (1, 2, 1, 130, 400, 128, (128, 64)),   # D=128, block_q 128, Nk > Nq
    (1, 3, 3, 40, 50, 128, (64, 128)),     # N below one block
]


def inputs(gen, B, H, Hkv, Nq, Nk, D, dtype):
    def r(*s):
        return torch.randn(*s, generator=gen).to(dtype).cuda()

    return r(B, H, Nq, D), r(B, Hkv, Nk, D), r(B, Hkv, Nk, D)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("fmap", FEATURE_MAPS)
@pytest.mark.parametrize("topk,low_k,all_keys", [(0.05, 0.1, False), (0.2, 0.0, False), (1.0, 0.0, False), (0.2, 0.1, True)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_forward_matches_reference(case, topk, low_k, all_keys, fmap, dtype, gen):
    B, H, Hkv, Nq, Nk, D, block = case
    q, k, v = inputs(gen, B, H, Hkv, Nq, Nk, D, dtype)
    w = (0.2 * torch.randn(D, D, generator=gen)).cuda()
    b = (0.2 * torch.randn(D, generator=gen)).cuda()
    out = genaccel.sparse_linear_attention(q, k, v, w, b, topk, low_k, block, fmap, linear_over_all_keys=all_keys)
    assert out.dtype == dtype and out.shape == q.shape and out.is_cuda
    codes = sla_block_map(q, k, topk, low_k, block)[0]
    ref = sparse_linear_attention_reference(q.cpu(), k.cpu(), v.cpu(), codes.cpu(), w.cpu(), b.cpu(), block, fmap,
                                            linear_over_all_keys=all_keys)[0]
    assert rel_err(out.cpu(), ref) <= RTOL[dtype]


@pytest.mark.parametrize("attention_kernel", attention_kernels(), indirect=True)
@pytest.mark.parametrize("case", CASES[1:3], ids=lambda c: "x".join(map(str, c[:6])))
def test_forward_with_each_attention_kernel(case, attention_kernel, gen):
    """SLA's sparse branch on the mma.sync kernel and, on Hopper, the wgmma one."""
    B, H, Hkv, Nq, Nk, D, block = case
    q, k, v = inputs(gen, B, H, Hkv, Nq, Nk, D, torch.bfloat16)
    w = (0.2 * torch.randn(D, D, generator=gen)).cuda()
    out = genaccel.sparse_linear_attention(q, k, v, w, None, 0.2, 0.1, block)
    codes = sla_block_map(q, k, 0.2, 0.1, block)[0]
    ref = sparse_linear_attention_reference(q.cpu(), k.cpu(), v.cpu(), codes.cpu(), w.cpu(), None, block)[0]
    assert rel_err(out.cpu(), ref) <= RTOL[torch.bfloat16]


@pytest.mark.parametrize("strict", [False, True], ids=["tf32", "float32_gemms"])
@pytest.mark.parametrize("fmap", FEATURE_MAPS)
def test_linear_branch_matches_cpu_float32(fmap, strict, gen, monkeypatch):
    """The linear branch's own outputs (before the bf16 cast of O^l, via the denominator) agree with
    the CPU op's float32 computation to TF32-level error: the two-part bf16 splits of the mask sums
    lose at most 2^-16 per term, and the per-block GEMMs round their operands to TF32 (2^-11 relative; a float model of
    the branch moves the denominators by 4e-5 with round-to-nearest and 1e-3 with truncation).
    With GENACCEL_SLA_FLOAT32_GEMMS=1 the GEMMs stay float32 and the splits take three parts (exact),
    so they agree to float32-level error."""
    if strict:
        monkeypatch.setenv("GENACCEL_SLA_FLOAT32_GEMMS", "1")
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    B, H, Hkv, N, D, bq, bk = 1, 4, 2, 1000, 128, 64, 64
    q, k, v = inputs(gen, B, H, Hkv, N, N, D, torch.bfloat16)
    codes, kv_indices, kv_counts = sla_block_map(q, k, 0.05, 0.1, (bq, bk))
    args = (codes, kv_indices, kv_counts, bq, bk, D ** -0.5, fmap, False)
    got = torch.ops.genaccel.sla_fwd(q, k, v, *args)
    want = torch.ops.genaccel.sla_fwd(q.cpu(), k.cpu(), v.cpu(), *(a.cpu() if torch.is_tensor(a) else a for a in args))
    assert rel_err(got[3].cpu(), want[3]) <= (1e-5 if strict else 2e-3)  # denominators, float32
    assert rel_err(got[1].cpu(), want[1]) <= 1e-5          # lse of the sparse branch
    assert rel_err(got[2].cpu().float(), want[2].float()) <= 1e-2  # O^l, both rounded to bf16


def test_select_blocks_long_rows_in_chunks_match_cpu(gen):
    """Rows of 4097 blocks sort in global scratch, 4096 rows per launch: 4100 rows take two."""
    scores = torch.randn(1, 1, 4100, 4097, generator=gen)
    got = torch.ops.genaccel.sla_select_blocks(scores.cuda(), 200, 400)
    want = torch.ops.genaccel.sla_select_blocks(scores, 200, 400)
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))


def test_rows_without_marginal_blocks_are_zero_not_nan(gen):
    q, k, v = inputs(gen, 1, 2, 2, 256, 256, 64, torch.bfloat16)
    out = genaccel.sparse_linear_attention(q, k, v, torch.eye(64).cuda(), topk=1.0, low_k=0.0)
    assert torch.isfinite(out).all()


def test_float32_under_autocast_runs_in_half_precision(gen):
    """A float32 model under autocast: q, k, v are cast to the autocast dtype, as for SDPA."""
    q, k, v = (t.requires_grad_() for t in inputs(gen, 1, 2, 2, 200, 200, 64, torch.float32))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = genaccel.nn.SparseLinearAttention(64).cuda()(q, k, v)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_float32_is_refused_clearly(gen):
    q, k, v = inputs(gen, 1, 2, 2, 128, 128, 64, torch.float32)
    with pytest.raises(RuntimeError, match="bfloat16 and float16"):
        genaccel.sparse_linear_attention(q, k, v)


def test_opcheck(gen):
    q, k, v = inputs(gen, 1, 2, 1, 200, 130, 64, torch.bfloat16)
    codes, kv_indices, kv_counts = sla_block_map(q, k, 0.2, 0.1, 64)
    torch.library.opcheck(torch.ops.genaccel.sla_fwd,
                          (q, k, v, codes, kv_indices, kv_counts, 64, 64, 0.125, "softmax", False),
                          test_utils=("test_schema", "test_faketensor"))


GRAD_CASES = [
    # B, H, Hkv, Nq, Nk, D, block
    (1, 4, 2, 300, 260, 64, (64, 64)),     # GQA, partial blocks, Nq != Nk
    (2, 2, 1, 200, 330, 128, (128, 64)),   # MQA, D=128, block_q 128, two batches
    (1, 3, 3, 40, 50, 128, (64, 128)),     # N below one block
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("fmap", FEATURE_MAPS)
@pytest.mark.parametrize("topk,low_k,all_keys", [(0.2, 0.1, False), (1.0, 0.0, False), (0.3, 0.2, True)])
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_gradients_match_reference(case, topk, low_k, all_keys, fmap, dtype, gen):
    """CUDA backward (the fused block-sparse backward kernels plus the linear branch's GEMMs and row
    kernels) against autograd through the float64 reference, for q, k, v and the projection."""
    check_forward_and_gradients(case, topk, low_k, all_keys, fmap, dtype, gen)


@pytest.mark.parametrize("case", [(1, 4, 2, 200, 170, 96, (64, 64)), (1, 2, 2, 130, 100, 32, (64, 64))],
                         ids=["D96_gqa", "D32"])
def test_head_dims_without_their_own_attention_kernel(case, gen):
    """D 96 and 32: the sparse branch runs zero-padded to the 128 / 64 kernels, the linear branch's
    row kernels at the true head dim."""
    check_forward_and_gradients(case, 0.2, 0.1, False, "elu", torch.bfloat16, gen)


def check_forward_and_gradients(case, topk, low_k, all_keys, fmap, dtype, gen):
    B, H, Hkv, Nq, Nk, D, block = case
    q, k, v = (t.requires_grad_() for t in inputs(gen, B, H, Hkv, Nq, Nk, D, dtype))
    w = (0.2 * torch.randn(D, D, generator=gen)).cuda().requires_grad_()
    out = genaccel.sparse_linear_attention(q, k, v, w, None, topk, low_k, block, fmap, linear_over_all_keys=all_keys)
    go = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad((out * go.cuda()).float().sum(), (q, k, v, w))
    codes = sla_block_map(q, k, topk, low_k, block)[0].cpu()
    ref_in = [t.detach().cpu().double().requires_grad_() for t in (q, k, v, w)]
    ref = sparse_linear_attention_reference(*ref_in[:3], codes, ref_in[3], None, block, fmap,
                                            linear_over_all_keys=all_keys)[0]
    assert rel_err(out.detach().cpu(), ref.detach()) <= RTOL[dtype]
    expected = torch.autograd.grad((ref * go.double()).sum(), ref_in)
    for name, g, e in zip(["q", "k", "v", "proj_weight"], grads, expected):
        assert g.is_cuda and g.dtype == (torch.float32 if name == "proj_weight" else dtype), name
        assert torch.isfinite(g).all() and rel_err(g.cpu(), e) <= 2e-2, (name, rel_err(g.cpu(), e))


@pytest.mark.parametrize("chunk_bytes", [None, "1"], ids=["one_chunk", "chunk_per_pair"])
@pytest.mark.parametrize("all_keys", [False, True], ids=["marginal", "all_keys"])
@pytest.mark.parametrize("fmap", FEATURE_MAPS)
def test_linear_backward_matches_cpu_op(fmap, all_keys, chunk_bytes, gen, monkeypatch):
    """sla_bwd's linear branch alone (grad_sparse = 0, so the sparse branch adds exact zeros) on CUDA
    and on the CPU op: both compute in float32 from the same inputs and round once, so they agree to
    about one bf16 rounding, also when every (batch, kv head) pair is its own chunk."""
    if chunk_bytes is not None:
        monkeypatch.setenv("GENACCEL_SLA_CHUNK_BYTES", chunk_bytes)
    B, H, Hkv, N, D, bq, bk = 2, 4, 2, 500, 64, 64, 64
    q, k, v = inputs(gen, B, H, Hkv, N, N, D, torch.bfloat16)
    codes, idx, cnt = sla_block_map(q, k, 0.2, 0.1, (bq, bk))
    scale = D ** -0.5
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, bq, bk, scale, fmap, all_keys)
    g_s = torch.zeros_like(out_s)
    g_l = torch.randn(out_l.shape, generator=gen).to(torch.bfloat16).cuda()
    delta = torch.zeros_like(lse)
    args = (g_s, g_l, q, k, v, codes, idx, cnt, out_s, lse, delta, out_l, denom, bq, bk, scale, fmap, all_keys)
    got = torch.ops.genaccel.sla_bwd(*args)
    want = torch.ops.genaccel.sla_bwd(*(a.cpu() if torch.is_tensor(a) else a for a in args))
    for name, g, w in zip("qkv", got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert rel_err(g.cpu().float(), w.float()) <= 5e-3, (name, rel_err(g.cpu().float(), w.float()))


@pytest.mark.parametrize("chunk_bytes", [None, "1"], ids=["one_chunk", "chunk_per_pair"])
def test_projection_matches_cpu_op(chunk_bytes, gen, monkeypatch):
    """proj_weight inside the ops (the linear branch on V W^T; dW = d(V W^T)^T V summed over the
    chunks, dV = d(V W^T) W, on TF32 GEMMs) against the CPU op's float32: out_linear to about one bf16
    rounding, the gradients to TF32-level error."""
    if chunk_bytes is not None:
        monkeypatch.setenv("GENACCEL_SLA_CHUNK_BYTES", chunk_bytes)
    B, H, Hkv, N, D, bq, bk = 2, 4, 2, 400, 128, 64, 64
    q, k, v = inputs(gen, B, H, Hkv, N, N, D, torch.bfloat16)
    w = (0.3 * torch.randn(D, D, generator=gen)).cuda()
    codes, idx, cnt = sla_block_map(q, k, 0.2, 0.1, (bq, bk))
    scale = D ** -0.5
    fwd = (q, k, v, codes, idx, cnt, bq, bk, scale, "softmax", False, w)
    cpu = lambda args: [a.cpu() if torch.is_tensor(a) else a for a in args]  # noqa: E731
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(*fwd)
    want_l = torch.ops.genaccel.sla_fwd(*cpu(fwd))[2]
    assert rel_err(out_l.cpu().float(), want_l.float()) <= 1e-2
    g_l = torch.randn(out_l.shape, generator=gen).to(torch.bfloat16).cuda()
    bwd = (torch.zeros_like(out_s), g_l, q, k, v, codes, idx, cnt, out_s, lse, torch.zeros_like(lse), out_l, denom,
           bq, bk, scale, "softmax", False, w)
    got = torch.ops.genaccel.sla_bwd(*bwd)
    want = torch.ops.genaccel.sla_bwd(*cpu(bwd))
    for name, g, e in zip(["dq", "dk", "dv", "dw"], got, want):
        assert g.dtype == e.dtype and g.shape == e.shape, name
        assert rel_err(g.cpu().float(), e.float()) <= 5e-3, (name, rel_err(g.cpu().float(), e.float()))


def test_forward_and_backward_make_no_host_sync(gen):
    """sparse_linear_attention passes check_plan=False (its plan comes from sla_block_map) and the
    backward trusts the plan its forward saw: neither waits on the device, so a model's layers
    queue up without stalls, and the forward can be captured in a CUDA graph (next test)."""
    q, k, v = (t.requires_grad_() for t in inputs(gen, 1, 4, 2, 300, 300, 64, torch.bfloat16))
    w, b = ((0.1 * torch.randn(*s, generator=gen)).cuda().requires_grad_() for s in ((64, 64), (64,)))
    go = torch.randn(q.shape, generator=gen).to(torch.bfloat16).cuda()

    def step():
        out = genaccel.sparse_linear_attention(q, k, v, w, b, 0.2, 0.1, (64, 64))
        return torch.autograd.grad(out, (q, k, v, w, b), go)

    assert all(torch.isfinite(g).all() for g in run_without_host_sync(step))


def test_forward_replays_in_a_cuda_graph(gen):
    q, k, v = inputs(gen, 1, 4, 2, 300, 300, 64, torch.bfloat16)
    w, b = ((0.1 * torch.randn(*s, generator=gen)).cuda() for s in ((64, 64), (64,)))
    run = lambda: genaccel.sparse_linear_attention(q, k, v, w, b, 0.2, 0.1, (64, 64))  # noqa: E731
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        eager = run()
    torch.cuda.current_stream().wait_stream(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    q.copy_(torch.randn(q.shape, generator=gen).to(q.dtype))
    graph.replay()
    fresh = run()
    torch.cuda.synchronize()
    # Same kernels on the new q (cuBLAS may pick other algorithms under capture: not bit for bit).
    assert rel_err(captured, fresh) <= 1e-3 and rel_err(captured, eager) > 0.1


def test_unsupported_head_dim_is_refused_clearly(gen):
    q, k, v = inputs(gen, 1, 2, 2, 128, 128, 80, torch.bfloat16)
    with pytest.raises(RuntimeError, match="sla_fwd \\(CUDA\\): the linear branch's kernels take head dims 32, 64, 96"):
        genaccel.sparse_linear_attention(q, k, v)


def test_backward_opcheck(gen):
    q, k, v = inputs(gen, 1, 2, 1, 200, 130, 64, torch.bfloat16)
    codes, idx, cnt = sla_block_map(q, k, 0.2, 0.1, 64)
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 64, 64, 0.125, "elu", False)
    g = torch.randn(out_s.shape, generator=gen).to(torch.bfloat16).cuda()
    args = (g, g, q, k, v, codes, idx, cnt, out_s, lse, torch.zeros_like(lse), out_l, denom, 64, 64, 0.125, "elu",
            False)
    torch.library.opcheck(torch.ops.genaccel.sla_bwd, args, test_utils=("test_schema", "test_faketensor"))
    w = torch.randn(64, 64, generator=gen).cuda()
    torch.library.opcheck(torch.ops.genaccel.sla_bwd, args + (w,), test_utils=("test_schema", "test_faketensor"))


def test_backward_errors_name_the_op(gen):
    q, k, v = inputs(gen, 1, 2, 1, 128, 128, 64, torch.bfloat16)
    codes, idx, cnt = sla_block_map(q, k, 0.2, 0.1, 64)
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 64, 64, 0.125, "relu", False)
    args = [out_s, out_l, q, k, v, codes, idx, cnt, out_s, lse, lse, out_l, denom, 64, 64, 0.125, "relu", False]
    for index, bad, match in [(5, codes.int(), "sla_bwd: codes must be int8"),
                              (16, "hedgehog", "sla_bwd: feature_map must be one of"),
                              (12, denom.half(), "sla_bwd: denom must be float32")]:
        broken = list(args)
        broken[index] = bad
        with pytest.raises(RuntimeError, match=match):
            torch.ops.genaccel.sla_bwd(*broken)


def op_and_args_with_plan(op_name, gen):
    """(op, its args, the index of kv_indices - 1 in them, kv_indices, kv_counts) of sla_fwd or
    sla_bwd on a small bf16 problem, so that args[at + 1] is the plan's indices, args[at + 2] its counts."""
    q, k, v = inputs(gen, 1, 2, 1, 200, 130, 64, torch.bfloat16)
    codes, idx, cnt = sla_block_map(q, k, 0.5, 0.0, 64)
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 64, 64, 0.125, "softmax", False)
    fwd = [q, k, v, codes, idx, cnt, 64, 64, 0.125, "softmax", False]
    bwd = [out_s, out_l, q, k, v, codes, idx, cnt, out_s, lse, lse, out_l, denom, 64, 64, 0.125, "softmax", False]
    args, at = (fwd, 3) if op_name == "sla_fwd" else (bwd, 5)
    return getattr(torch.ops.genaccel, op_name), args, at, idx, cnt


@pytest.mark.parametrize("op_name", ["sla_fwd", "sla_bwd"])
def test_bad_plans_raise_and_leave_the_device_usable(op_name, gen):
    """The plan's ranges and its consistency with the codes are checked together on the device: an
    out-of-range index (negative too, which gather would assert on) or count raises a clear error,
    and the next call still works (no device-side assert)."""
    op, args, at, idx, cnt = op_and_args_with_plan(op_name, gen)
    for i, bad, match in [(1, idx - 9, "kv_indices must lie in"), (1, idx + 9, "kv_indices must lie in"),
                          (2, cnt + 5, "kv_counts must lie in"), (1, 2 - idx, "must list exactly the critical blocks"),
                          (2, cnt - 1, "must list exactly the critical blocks")]:
        broken = list(args)
        broken[at + i] = bad
        with pytest.raises(RuntimeError, match=f"{op_name}: .*{match}"):
            op(*broken)
    torch.cuda.synchronize()
    assert all(torch.isfinite(t).all() for t in op(*args)[:3])


@pytest.mark.parametrize("op_name", ["sla_fwd", "sla_bwd"])
def test_plans_taken_on_trust_cannot_read_out_of_bounds(op_name, gen):
    """check_plan=False skips the value checks, not the kernels' guards: out-of-range entries are
    skipped and counts clamped to the list's length, so a wrong plan gives wrong numbers, never an
    illegal address (the next call still works)."""
    op, args, at, idx, cnt = op_and_args_with_plan(op_name, gen)
    for i, bad in [(1, idx - 100000), (1, idx + 100000), (2, cnt + 5), (2, cnt - 9)]:
        broken = list(args)
        broken[at + i] = bad
        op(*broken, check_plan=False)
        torch.cuda.synchronize()
    assert all(torch.isfinite(t).all() for t in op(*args)[:3])


def test_side_stream_matches_one_stream_bitwise(gen, monkeypatch):
    """The linear branch runs on a second stream, joined before the op returns (and, in the backward,
    adding into the sparse gradients only once they are complete): forward outputs and gradients
    equal those of GENACCEL_SLA_ONE_STREAM=1 bit for bit, also when the caller works on a stream of its
    own and reads the results at once."""
    q, k, v = (t.requires_grad_() for t in inputs(gen, 2, 4, 2, 700, 650, 128, torch.bfloat16))
    w = (0.2 * torch.randn(128, 128, generator=gen)).cuda().requires_grad_()
    go = torch.randn(q.shape, generator=gen).to(torch.bfloat16).cuda()

    def run():
        out = genaccel.sparse_linear_attention(q, k, v, w, None, 0.1, 0.1, (64, 64))
        return (out.detach().clone(), *torch.autograd.grad(out, (q, k, v, w), go))

    user_stream = torch.cuda.Stream()
    user_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(user_stream):
        two = run()
    monkeypatch.setenv("GENACCEL_SLA_ONE_STREAM", "1")
    one = run()
    torch.cuda.synchronize()
    for name, a, b in zip(["out", "dq", "dk", "dv", "dw"], two, one):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("fmap", FEATURE_MAPS)
def test_nan_in_k_reaches_the_output(fmap, gen):
    """As on the CPU: a NaN key poisons the rows that use it (here all: its block is marginal or
    critical for every query block), it does not vanish in a max or a division guard."""
    q, k, v = inputs(gen, 1, 2, 2, 256, 256, 64, torch.bfloat16)
    k[0, :, 70, 3] = float("nan")
    out = genaccel.sparse_linear_attention(q, k, v, topk=0.5, low_k=0.0, feature_map=fmap)
    codes = sla_block_map(q, k, 0.5, 0.0, (64, 64))[0].cpu()
    ref = sparse_linear_attention_reference(q.cpu(), k.cpu(), v.cpu(), codes, block_size=(64, 64),
                                            feature_map_name=fmap)[0]
    assert torch.equal(out.isnan().cpu(), ref.isnan()) and ref.isnan().any()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_backward(backend, gen):
    """On CUDA too: forward and backward through torch.compile(fullgraph=True) trace the ops' fakes
    and autograd registration, and give the eager gradients (the same kernels run)."""
    q, k, v = inputs(gen, 1, 4, 2, 300, 260, 64, torch.bfloat16)
    w, b = (0.2 * torch.randn(64, 64, generator=gen)).cuda(), (0.2 * torch.randn(64, generator=gen)).cuda()
    leaves = [t.requires_grad_() for t in (q, k, v, w, b)]

    def loss(q, k, v, w, b):
        return genaccel.sparse_linear_attention(q, k, v, w, b, 0.2, 0.1, 64, "elu").float().square().sum()

    eager = torch.autograd.grad(loss(*leaves), leaves)
    torch._dynamo.reset()
    compiled = torch.autograd.grad(torch.compile(loss, backend=backend, fullgraph=True)(*leaves), leaves)
    for name, g, e in zip(["q", "k", "v", "w", "b"], compiled, eager):
        assert rel_err(g.float(), e.float()) < 1e-2, name
