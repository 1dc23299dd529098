"""BlockSparsePlan (plan once, run many times): variable-size blocks by offsets against the float64
reference, forward and backward, on the CPU and on CUDA (the mma.sync kernels' variable-block
instances; the wgmma backend refuses offsets), CUDA against the CPU op too; the key-major lists of op
block_sparse_key_major_plan against a brute-force transposition; the checks of offsets and key-major
lists; the backend / precision arguments; SLA's block_map reuse."""

import pytest
import torch

import genaccel
from genaccel.attention import BlockSparsePlan
from genaccel.attention.block_sparse.reference import block_sparse_attention_reference
from genaccel.testing import make_input, random_block_offsets

from conftest import CUDA, CUDA_MARKS, HALF_DTYPES, RTOL, on_cuda, rel_err


def varlen_case(gen, B, H, Hkv, nq, nk, tq, tk, per_head, allow_empty, density=0.4):
    ob, oh = (B, H) if per_head else (1, 1)
    q_off = random_block_offsets(gen, ob * oh, nq, tq, allow_empty).view(ob, oh, tq + 1)
    k_off = random_block_offsets(gen, ob * oh, nk, tk, allow_empty).view(ob, oh, tk + 1)
    mask = torch.rand(B, 1, tq, tk, generator=gen) < density
    mask[:, :, 0] = False  # an empty row: zeros, lse = -inf
    return q_off, k_off, mask


CASES = [
    # B, H, Hkv, nq, nk, tq, tk, per-head offsets, empty blocks
    (1, 2, 2, 150, 150, 7, 9, True, False),
    (2, 4, 2, 97, 203, 5, 11, True, True),
    (1, 3, 1, 64, 40, 4, 3, False, True),
    (2, 2, 2, 300, 300, 3, 2, False, False),  # blocks longer than 64 tokens
    # SVG2-like: many small key clusters packed into runs, empty ones among them, some past 256 keys
    (1, 2, 1, 400, 1500, 9, 60, True, True),
    (1, 2, 2, 120, 900, 3, 4, True, False),  # key blocks of ~225 tokens: runs of one or two blocks
]
# The CUDA kernels' variable-block instances: the same edges at their head dims (64, 128; 96 runs
# padded), plus blocks longer than 128 tokens (several row tiles of a query block, several 64-key
# tiles of a key block), single-token blocks on both sides, and per-query-head key partitions under
# GQA (each query head of a kv head cuts its keys differently: the dK/dV kernel's hardest case).
CUDA_CASES = [
    # B, H, Hkv, nq, nk, tq, tk, per-head offsets, empty blocks, D
    (1, 2, 2, 150, 150, 7, 9, True, False, 64),
    (2, 4, 2, 300, 403, 5, 11, True, True, 128),
    (1, 3, 1, 64, 40, 4, 3, False, True, 64),
    (2, 2, 2, 600, 700, 3, 2, False, False, 128),    # blocks of ~200-350 tokens
    (1, 2, 1, 1000, 900, 2, 3, True, False, 64),     # blocks of ~300-500 tokens, GQA 2:1
    (1, 2, 1, 40, 50, 40, 50, True, False, 64),      # every block one token
    (2, 4, 1, 257, 190, 37, 23, True, True, 96),     # small and empty blocks, D padded to 128
]
VARLEN_PARAMS = [
    pytest.param("cpu", (*case, 32), dtype, RTOL[dtype], RTOL[dtype], id=f"cpu-{'-'.join(map(str, case))}-{dtype}")
    for case in CASES for dtype in (torch.float32, torch.bfloat16)
] + [
    # CUDA gradients within 2e-2 for both half types, as the uniform-block CUDA gradient tests.
    on_cuda("cuda", case, dtype, RTOL[dtype], 2 * RTOL[torch.bfloat16], id=f"cuda-{'-'.join(map(str, case))}-{dtype}")
    for case in CUDA_CASES for dtype in HALF_DTYPES
]


def check_against_reference(device, q, k, v, mask, plan, q_off, k_off, tol, grad_tol, gen):
    """block_sparse_attention with `plan` on `device` against the float64 reference with the
    offsets, forward (out, lse, the -inf rows) and backward (dq, dk, dv)."""
    dtype = q.dtype
    leaves = [t.detach().to(device).requires_grad_() for t in (q, k, v)]
    out, lse = genaccel.block_sparse_attention(*leaves, plan, return_lse=True)
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = block_sparse_attention_reference(*ref_leaves, mask.cpu(), (plan.block_q, plan.block_k), None,
                                                    None if q_off is None else q_off.cpu(),
                                                    None if k_off is None else k_off.cpu())
    assert out.dtype == dtype and out.device == leaves[0].device
    assert rel_err(out.detach().cpu(), ref.detach()) <= tol
    finite = torch.isfinite(ref_lse)
    lse = lse.cpu()
    assert torch.equal(torch.isfinite(lse), finite)
    assert rel_err(lse[finite], ref_lse[finite]) <= 1e-5
    assert torch.equal(out.detach().cpu()[~finite], torch.zeros_like(out.detach().cpu()[~finite]))  # no key: 0
    grad = torch.randn(out.shape, generator=gen).to(dtype)
    out.backward(grad.to(device))
    ref.backward(grad.double())
    for name, got, want in zip("qkv", leaves, ref_leaves):
        assert got.grad.dtype == dtype and rel_err(got.grad.cpu(), want.grad) <= grad_tol, name


@pytest.mark.parametrize("device, case, dtype, tol, grad_tol", VARLEN_PARAMS)
def test_variable_size_blocks_match_reference(device, case, dtype, tol, grad_tol, gen):
    B, H, Hkv, nq, nk, tq, tk, per_head, allow_empty, D = case
    q_off, k_off, mask = varlen_case(gen, B, H, Hkv, nq, nk, tq, tk, per_head, allow_empty)
    q_off, k_off, mask = q_off.to(device), k_off.to(device), mask.to(device)
    plan = BlockSparsePlan.from_mask(mask, q_block_offsets=q_off, k_block_offsets=k_off)
    assert plan.block_q == int(q_off.diff().max()) and plan.block_k == int(k_off.diff().max())
    assert (plan.key_major is not None) == (device == "cuda")
    q = make_input(gen, (B, H, nq, D), dtype, "cpu")
    k, v = (make_input(gen, (B, Hkv, nk, D), dtype, "cpu") for _ in range(2))
    check_against_reference(device, q, k, v, mask, plan, q_off, k_off, tol, grad_tol, gen)


def one_sided_case(gen, side, B, H, Hkv, nq, nk, blocks, uniform_block):
    """Offsets on one side only (`side` "q" or "k", `blocks` variable blocks, empty ones included), the
    other side uniform blocks of `uniform_block` tokens (any size: the variable-block kernels take it)."""
    n_var, n_uni = (nq, nk) if side == "q" else (nk, nq)
    off = random_block_offsets(gen, B * H, n_var, blocks, True).view(B, H, blocks + 1)
    t_uni = -(-n_uni // uniform_block)
    tq, tk = (blocks, t_uni) if side == "q" else (t_uni, blocks)
    mask = torch.rand(B, H, tq, tk, generator=gen) < 0.5
    mask[:, :, -1] = False  # an empty row
    return off, mask, tq, tk


ONE_SIDED = [
    # side, B, H, Hkv, nq, nk, variable blocks, uniform block size, D
    ("q", 2, 2, 1, 300, 250, 9, 100, 64),   # uniform key blocks of 100 (not whole 64-key tiles)
    ("k", 1, 4, 2, 333, 420, 13, 100, 128),  # uniform query blocks of 100 (one 128-row tile)
    ("k", 2, 2, 2, 200, 500, 4, 64, 64),
]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_MARKS)])
@pytest.mark.parametrize("case", ONE_SIDED, ids=lambda c: "-".join(map(str, c)))
def test_offsets_on_one_side(device, case, gen):
    side, B, H, Hkv, nq, nk, blocks, ub, D = case
    off, mask, tq, tk = one_sided_case(gen, side, B, H, Hkv, nq, nk, blocks, ub)
    off, mask = off.to(device), mask.to(device)
    kw = dict(q_block_offsets=off) if side == "q" else dict(k_block_offsets=off)
    plan = BlockSparsePlan.from_mask(mask, (ub, ub), **kw)
    dtype = torch.bfloat16
    q = make_input(gen, (B, H, nq, D), dtype, "cpu")
    k, v = (make_input(gen, (B, Hkv, nk, D), dtype, "cpu") for _ in range(2))
    q_off, k_off = (off, None) if side == "q" else (None, off)
    check_against_reference(device, q, k, v, mask, plan, q_off, k_off, RTOL[dtype], 2 * RTOL[dtype], gen)


def no_key_case(device):
    """Key block 1 and query block 2 empty; query block 1 selects only key block 1 (an empty one), query
    block 3 nothing: both rows get out 0, lse -inf and no gradient; key block 3 is selected by no one:
    dk = dv = 0 there."""
    q_off = torch.tensor([[[0, 30, 100, 100, 150]]], dtype=torch.int32, device=device)
    k_off = torch.tensor([[[0, 70, 70, 200, 260]]], dtype=torch.int32, device=device)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool, device=device)
    mask[0, 0, 0, [0, 2]] = True
    mask[0, 0, 1, 1] = True
    mask[0, 0, 2, 0] = True
    return q_off, k_off, mask


@pytest.mark.parametrize("device, dtype", [("cpu", torch.float32)] + [
    on_cuda("cuda", dtype, id=f"cuda-{dtype}") for dtype in HALF_DTYPES])
def test_rows_without_keys_and_unused_keys(device, dtype, gen):
    q_off, k_off, mask = no_key_case(device)
    plan = BlockSparsePlan.from_mask(mask, q_block_offsets=q_off, k_block_offsets=k_off)
    q = make_input(gen, (2, 2, 150, 64), dtype, device).requires_grad_()
    k, v = (make_input(gen, (2, 1, 260, 64), dtype, device).requires_grad_() for _ in range(2))
    out, lse = genaccel.block_sparse_attention(q, k, v, plan, return_lse=True)
    (out.float() * torch.randn(out.shape, generator=gen).to(device)).sum().backward()
    assert torch.isfinite(lse[..., :30]).all()
    assert torch.equal(lse[..., 30:], torch.full_like(lse[..., 30:], -float("inf")))
    assert not out[..., 30:, :].any() and not q.grad[..., 30:, :].any() and q.grad[..., :30, :].any()
    assert not k.grad[..., 200:, :].any() and not v.grad[..., 200:, :].any()
    assert k.grad[..., :70, :].any() and v.grad[..., 70:200, :].any()


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_cuda_variable_blocks_match_the_cpu_op(dtype, gen):
    """The CUDA op against the CPU op on the same (rounded) inputs and plan, forward and backward,
    trusted plan (check_plan=False) and checked alike."""
    B, H, Hkv, nq, nk, tq, tk, D = 2, 4, 2, 333, 290, 6, 9, 128
    q_off, k_off, mask = varlen_case(gen, B, H, Hkv, nq, nk, tq, tk, True, True)
    q = make_input(gen, (B, H, nq, D), dtype, "cpu")
    k, v = (make_input(gen, (B, Hkv, nk, D), dtype, "cpu") for _ in range(2))
    dout = make_input(gen, (B, H, nq, D), dtype, "cpu")
    results = {}
    for device in ("cpu", "cuda"):
        plan = BlockSparsePlan.from_mask(mask.to(device), q_block_offsets=q_off.to(device),
                                         k_block_offsets=k_off.to(device))
        args = [t.to(device) for t in (q, k, v)]
        fwd = torch.ops.genaccel.block_sparse_attn_fwd
        out, lse = fwd(*args, plan.kv_indices, plan.kv_counts, plan.block_q, plan.block_k, D ** -0.5,
                       **plan.op_args())
        out2, _ = fwd(*args, plan.kv_indices, plan.kv_counts, plan.block_q, plan.block_k, D ** -0.5,
                      check_plan=False, **plan.op_args())
        assert torch.equal(out, out2)
        delta = torch.ops.genaccel.attention_delta(dout.to(device), out)
        grads = torch.ops.genaccel.block_sparse_attn_bwd(dout.to(device), *args, delta, lse, plan.kv_indices,
                                                         plan.kv_counts, plan.block_q, plan.block_k, D ** -0.5,
                                                         **plan.op_args())
        results[device] = [t.cpu().float() for t in (out, lse, *grads)]
    cpu, cuda = results["cpu"], results["cuda"]
    finite = torch.isfinite(cpu[1])
    assert torch.equal(torch.isfinite(cuda[1]), finite)
    assert rel_err(cuda[1][finite], cpu[1][finite]) <= 1e-4
    for name, got, want in zip(["out", "", "dq", "dk", "dv"], cuda, cpu):
        if name:
            assert rel_err(got, want) <= 2 * RTOL[torch.bfloat16], name


def test_uniform_offsets_equal_uniform_blocks(gen):
    """Offsets that describe the uniform blocks (the last one partial) give the same attention, up to
    the summation order (variable-size blocks pack non-adjacent key blocks into one run)."""
    B, H, n, D, bs = 1, 2, 200, 16, 64
    q, k, v = (make_input(gen, (B, H, n, D), torch.float32, "cpu") for _ in range(3))
    mask = torch.rand(1, H, 4, 4, generator=gen) < 0.5
    offsets = torch.tensor([0, 64, 128, 192, 200], dtype=torch.int32).view(1, 1, 5)
    plan = BlockSparsePlan.from_mask(mask, q_block_offsets=offsets, k_block_offsets=offsets)
    assert rel_err(genaccel.block_sparse_attention(q, k, v, plan),
                   genaccel.block_sparse_attention(q, k, v, mask, bs)) <= 1e-6


def test_plan_from_indices_equals_plan_from_mask(gen):
    mask = torch.rand(2, 3, 5, 6, generator=gen) < 0.5
    a = BlockSparsePlan.from_mask(mask, (32, 16))
    kv_indices, kv_counts = genaccel.block_mask_to_indices(mask)
    b = BlockSparsePlan.from_indices(kv_indices, kv_counts, 6, (32, 16))
    assert torch.equal(a.kv_indices, b.kv_indices) and torch.equal(a.kv_counts, b.kv_counts)
    assert (a.block_q, a.block_k, a.num_k_blocks, a.num_q_blocks) == (32, 16, 6, 5)
    assert a.density() == pytest.approx(mask.float().mean().item())
    assert a.key_major is None  # CPU plans: the CPU backward walks the query-major lists


def test_plan_and_mask_give_the_same_gradients(gen):
    q, k, v = (make_input(gen, (2, 2, 130, 32), torch.float32, "cpu") for _ in range(3))
    mask = torch.rand(2, 2, 3, 3, generator=gen) < 0.6
    plan = BlockSparsePlan.from_mask(mask, 64)
    grads = []
    for pattern, bs in ((mask, 64), (plan, None)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        genaccel.block_sparse_attention(*leaves, pattern, bs).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def brute_force_key_major(kv_indices, kv_counts, num_k_blocks):
    bi, hi, tq, _ = kv_indices.shape
    offsets = torch.zeros(bi, hi, num_k_blocks + 1, dtype=torch.int32)
    lists = [[[] for _ in range(hi)] for _ in range(bi)]
    for b in range(bi):
        for h in range(hi):
            per_key = [[] for _ in range(num_k_blocks)]
            for qb in range(tq):
                for kb in kv_indices[b, h, qb, : kv_counts[b, h, qb]].tolist():
                    per_key[kb].append(qb)
            for kb in range(num_k_blocks):
                offsets[b, h, kb + 1] = offsets[b, h, kb] + len(per_key[kb])
                lists[b][h] += sorted(per_key[kb])
    return offsets, lists


@pytest.mark.parametrize("shape", [(1, 1, 4, 5), (2, 3, 6, 4), (1, 2, 1, 7)])
def test_key_major_plan_is_the_transposed_plan(shape, gen):
    mask = torch.rand(shape, generator=gen) < 0.5
    kv_indices, kv_counts = genaccel.block_mask_to_indices(mask, max_kv_blocks=shape[-1])
    offsets, queries = torch.ops.genaccel.block_sparse_key_major_plan(kv_indices, kv_counts, shape[-1])
    want_offsets, want_lists = brute_force_key_major(kv_indices, kv_counts, shape[-1])
    assert torch.equal(offsets, want_offsets)
    assert queries.shape == (*shape[:2], shape[2] * shape[3]) and queries.dtype == torch.int32
    for b in range(shape[0]):
        for h in range(shape[1]):
            n = int(want_offsets[b, h, -1])
            assert queries[b, h, :n].tolist() == want_lists[b][h]


def test_key_major_plan_opcheck(gen):
    mask = torch.rand(2, 1, 3, 4, generator=gen) < 0.5
    kv_indices, kv_counts = genaccel.block_mask_to_indices(mask)
    torch.library.opcheck(torch.ops.genaccel.block_sparse_key_major_plan.default, (kv_indices, kv_counts, 4))


def test_key_major_plan_rejects_bad_plans():
    op = torch.ops.genaccel.block_sparse_key_major_plan
    good_i, good_c = torch.zeros(1, 1, 2, 2, dtype=torch.int32), torch.ones(1, 1, 2, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="block_sparse_key_major_plan: kv_indices"):
        op(good_i.long(), good_c, 2)
    with pytest.raises(RuntimeError, match="the entries of kv_indices they count in \\[0, num_k_blocks=2\\)"):
        op(good_i + 5, good_c, 2)
    with pytest.raises(RuntimeError, match="num_k_blocks"):
        op(good_i, good_c, -1)


def test_ops_check_key_major_shapes(gen):
    q, k, v = (make_input(gen, (1, 1, 128, 16), torch.float32, "cpu") for _ in range(3))
    kv_indices, kv_counts = genaccel.block_mask_to_indices(torch.ones(1, 1, 2, 2, dtype=torch.bool))
    offsets, queries = torch.ops.genaccel.block_sparse_key_major_plan(kv_indices, kv_counts, 2)
    fwd = torch.ops.genaccel.block_sparse_attn_fwd
    out, _ = fwd(q, k, v, kv_indices, kv_counts, 64, 64, 0.25, key_major_offsets=offsets, key_major_queries=queries)
    assert torch.equal(out, fwd(q, k, v, kv_indices, kv_counts, 64, 64, 0.25)[0])
    with pytest.raises(RuntimeError, match="come together"):
        fwd(q, k, v, kv_indices, kv_counts, 64, 64, 0.25, key_major_offsets=offsets)
    with pytest.raises(RuntimeError, match="key_major_offsets must have 3 entries"):
        fwd(q, k, v, kv_indices, kv_counts, 64, 64, 0.25, key_major_offsets=offsets[..., :2],
            key_major_queries=queries)


def offsets_op_call(q_off=None, k_off=None, block_q=64, block_k=64, tq=2):
    q, k, v = (torch.randn(1, 2, 100, 16) for _ in range(3))
    kv_indices, kv_counts = genaccel.block_mask_to_indices(torch.ones(1, 1, tq, 2, dtype=torch.bool))
    return torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, kv_indices, kv_counts, block_q, block_k, 0.25,
                                                    q_block_offsets=q_off, k_block_offsets=k_off)


@pytest.mark.parametrize("offsets, message", [
    (torch.tensor([[[1, 50, 100]]], dtype=torch.int32), "must start at 0 and end at the sequence length 100"),
    (torch.tensor([[[0, 50, 99]]], dtype=torch.int32), "must start at 0 and end at the sequence length 100"),
    (torch.tensor([[[0, 70, 100]]], dtype=torch.int32), "has a block of 70 tokens, more than block_q=64"),
    (torch.tensor([[[0, 50, 100]]], dtype=torch.int64), "q_block_offsets must be int32"),
    (torch.tensor([0, 50, 100], dtype=torch.int32), "q_block_offsets must be int32 of shape"),
    (torch.tensor([[[0, 50, 100]]] * 3, dtype=torch.int32), r"q_block_offsets must be int32 of shape \(1 or 1"),
])
def test_bad_query_offsets_are_refused(offsets, message):
    with pytest.raises(RuntimeError, match=message):
        offsets_op_call(q_off=offsets)


def test_decreasing_offsets_are_refused():
    with pytest.raises(RuntimeError, match="k_block_offsets must be non-decreasing"):
        offsets_op_call(k_off=torch.tensor([[[0, 110, 100]]], dtype=torch.int32), block_k=128)


def test_offsets_must_match_the_plan():
    with pytest.raises(RuntimeError, match="kv_indices must have shape"):
        offsets_op_call(q_off=torch.tensor([[[0, 20, 50, 100]]], dtype=torch.int32))  # 3 blocks, plan has 2
    with pytest.raises(ValueError, match="q_block_offsets must have 3 entries"):
        BlockSparsePlan.from_mask(torch.ones(1, 1, 2, 2, dtype=torch.bool),
                                  q_block_offsets=torch.tensor([[[0, 100]]], dtype=torch.int32))


def test_variable_size_blocks_opcheck(gen):
    q, k, v = (make_input(gen, (1, 2, 90, 16), torch.float32, "cpu") for _ in range(3))
    q_off = torch.tensor([[[0, 10, 10, 90]], [[0, 40, 60, 90]]], dtype=torch.int32).view(1, 2, 4)
    k_off = torch.tensor([[[0, 45, 90]]], dtype=torch.int32)
    kv_indices, kv_counts = genaccel.block_mask_to_indices(torch.rand(1, 2, 3, 2, generator=gen) < 0.7)
    args = (q, k, v, kv_indices, kv_counts, 80, 45, 0.25)
    kwargs = dict(q_block_offsets=q_off, k_block_offsets=k_off)
    torch.library.opcheck(torch.ops.genaccel.block_sparse_attn_fwd.default, args, kwargs)


def test_compiled_with_a_plan(gen):
    q, k, v = (make_input(gen, (1, 2, 130, 32), torch.float32, "cpu").requires_grad_() for _ in range(3))
    plan = BlockSparsePlan.from_mask(torch.rand(1, 2, 3, 3, generator=gen) < 0.6, 64)
    compiled = torch.compile(lambda q, k, v: genaccel.block_sparse_attention(q, k, v, plan), backend="aot_eager",
                             fullgraph=True)
    out = compiled(q, k, v)
    assert torch.equal(out, genaccel.block_sparse_attention(q, k, v, plan))
    out.sum().backward()
    assert all(t.grad is not None for t in (q, k, v))


def test_plan_with_block_size_is_refused():
    plan = BlockSparsePlan.from_mask(torch.ones(1, 1, 1, 1, dtype=torch.bool), 64)
    q = torch.randn(1, 1, 10, 8)
    with pytest.raises(ValueError, match="block_size comes with the plan"):
        genaccel.block_sparse_attention(q, q, q, plan, 64)


@pytest.mark.parametrize("op_call", [
    lambda q, ki, kc: torch.ops.genaccel.block_sparse_attn_fwd(q, q, q, ki, kc, 64, 64, 0.25, backend="sm70"),
    lambda q, ki, kc: genaccel.block_sparse_attention(q, q, q, torch.ones(1, 1, 1, 1, dtype=torch.bool),
                                                      backend="gpu"),
], ids=["op", "wrapper"])
def test_bad_backend_is_refused(op_call):
    q = torch.randn(1, 1, 10, 8)
    ki, kc = genaccel.block_mask_to_indices(torch.ones(1, 1, 1, 1, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="backend must be 'auto', 'sm80' or 'sm90'"):
        op_call(q, ki, kc)


def test_bad_precision_is_refused():
    q = torch.randn(1, 1, 64, 16)
    with pytest.raises(RuntimeError, match="precision must be 'tf32' or 'fp32'"):
        genaccel.sparse_linear_attention(q, q, q, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        genaccel.nn.SparseLinearAttention(16, precision="bf16")
    with pytest.raises(ValueError, match="backend must be one of"):
        genaccel.nn.SparseLinearAttention(16, backend="sm70")


def test_sla_reuses_a_block_map(gen):
    q, k, v = (make_input(gen, (1, 2, 256, 32), torch.float32, "cpu") for _ in range(3))
    w = torch.randn(32, 32, generator=gen) * 0.1
    block_map = genaccel.sla_block_map(q, k, 0.25, 0.25)
    want = genaccel.sparse_linear_attention(q, k, v, w, None, 0.25, 0.25)
    assert torch.equal(genaccel.sparse_linear_attention(q, k, v, w, block_map=block_map), want)
    codes, kv_indices, kv_counts = block_map
    with pytest.raises(RuntimeError, match="sla_fwd"):  # the op checks a plan it is handed
        genaccel.sparse_linear_attention(q, k, v, w, block_map=(codes, kv_indices + 3, kv_counts))
    with pytest.raises(ValueError, match="block_map must be the"):
        genaccel.sparse_linear_attention(q, k, v, w, block_map=codes)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")
def test_cuda_wgmma_backend_refuses_variable_size_blocks():
    """backend="sm90" (the wgmma kernels) refuses offsets on any GPU, naming them; "auto" and "sm80"
    run them."""
    q = torch.randn(1, 1, 100, 64, device="cuda", dtype=torch.bfloat16)
    offsets = torch.tensor([[[0, 50, 100]]], dtype=torch.int32, device="cuda")
    plan = BlockSparsePlan.from_mask(torch.ones(1, 1, 2, 2, dtype=torch.bool, device="cuda"),
                                     q_block_offsets=offsets, k_block_offsets=offsets)
    with pytest.raises(RuntimeError, match=r"backend 'sm90' .* does not take variable-size blocks "
                                           r"\(q_block_offsets / k_block_offsets\)"):
        genaccel.block_sparse_attention(q, q, q, plan, backend="sm90")
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, q, q, plan.kv_indices, plan.kv_counts, 50, 50, 0.125,
                                                        **plan.op_args())
    delta = torch.ops.genaccel.attention_delta(out, out)
    with pytest.raises(RuntimeError, match="block_sparse_attn_bwd .*does not take variable-size blocks"):
        torch.ops.genaccel.block_sparse_attn_bwd(out, q, q, q, delta, lse, plan.kv_indices, plan.kv_counts, 50, 50,
                                                 0.125, backend="sm90", **plan.op_args())
    for backend in ("auto", "sm80"):
        assert torch.isfinite(genaccel.block_sparse_attention(q, q, q, plan, backend=backend)).all()


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")
def test_cuda_variable_blocks_trusted_bad_offsets_stay_in_bounds(gen):
    """Offsets taken on trust (check_plan=False) that are out of range, decreasing or longer than
    block_q / block_k give wrong numbers but no illegal access (run under compute-sanitizer by
    tools/cuda_correctness_smoke.py); the checked op refuses them."""
    q = make_input(gen, (1, 2, 100, 64), torch.bfloat16, "cuda")
    kv_indices, kv_counts = genaccel.block_mask_to_indices(torch.ones(1, 1, 3, 3, dtype=torch.bool, device="cuda"))
    bad = torch.tensor([[[0, 90, -50, 100000]]], dtype=torch.int32, device="cuda")
    op = torch.ops.genaccel
    with pytest.raises(RuntimeError, match="q_block_offsets must be non-decreasing|must start at 0"):
        op.block_sparse_attn_fwd(q, q, q, kv_indices, kv_counts, 64, 64, 0.125, q_block_offsets=bad)
    out, lse = op.block_sparse_attn_fwd(q, q, q, kv_indices, kv_counts, 64, 64, 0.125, check_plan=False,
                                        q_block_offsets=bad, k_block_offsets=bad)
    delta = op.attention_delta(out, out)
    op.block_sparse_attn_bwd(out, q, q, q, delta, lse, kv_indices, kv_counts, 64, 64, 0.125, check_plan=False,
                             q_block_offsets=bad, k_block_offsets=bad)
    torch.cuda.synchronize()


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a GPU and genaccel built with CUDA")
def test_cuda_backward_with_the_plans_key_major_lists(gen):
    """A CUDA plan carries its key-major lists; the backward that uses them equals the one that
    builds its own; corrupted lists are refused when checked and stay memory-safe when trusted."""
    mask = torch.rand(1, 2, 5, 5, generator=gen) < 0.5
    plan = BlockSparsePlan.from_mask(mask.cuda(), 64)
    assert plan.key_major is not None
    offsets, queries = plan.key_major
    want = brute_force_key_major(plan.kv_indices.cpu(), plan.kv_counts.cpu(), 5)[0]
    assert torch.equal(offsets.cpu(), want)
    q, k, v = (make_input(gen, (1, 2, 300, 64), torch.bfloat16, "cuda") for _ in range(3))
    grads = []
    for pattern, bs in ((plan, None), (mask.cuda(), 64)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        genaccel.block_sparse_attention(*leaves, pattern, bs).float().square().sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    out, lse = genaccel.block_sparse_attention(q, k, v, plan, return_lse=True)
    delta = torch.ops.genaccel.attention_delta(out, out)
    args = (out, q, k, v, delta, lse, plan.kv_indices, plan.kv_counts, 64, 64, 0.125)
    bad = dict(key_major_offsets=offsets, key_major_queries=queries + 7)
    with pytest.raises(RuntimeError, match="not the key-major form"):
        torch.ops.genaccel.block_sparse_attn_bwd(*args, **bad)
    torch.ops.genaccel.block_sparse_attn_bwd(*args, check_plan=False, **bad)
    torch.cuda.synchronize()
