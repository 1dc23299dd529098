"""genaccel.sparse_linear_attention and ops sla_fwd / sla_bwd on each device against the float64 SLA
reference (forward and gradients), its identities, the op contract (opcheck, torch.compile), bad
input, the module; on the CPU also the fused backward against the linear branch's formula. CUDA-only
(at the end): each backend and precision, the CUDA op against the CPU op (also with the linear branch
in chunks), no host syncs, CUDA graphs, corrupted plans, the side stream."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import genaccel
from conftest import (
    HALF_DTYPES,
    RTOL,
    attention_backends,
    check_against_reference,
    devices,
    on_cuda,
    rel_err,
    run_in_child,
    run_without_host_sync,
)
from genaccel.attention.block_sparse import attention_delta
from genaccel.attention.block_sparse.reference import block_sparse_attention_reference
from genaccel.attention.sla import sla_block_map
from genaccel.attention.sla.reference import (
    FEATURE_MAPS,
    feature_map,
    linear_branch_backward_reference,
    sla_block_map_reference,
    sparse_linear_attention_reference,
)


def inputs(gen, B, H, Hkv, Nq, Nk, D, dtype, device="cpu"):
    def r(*s):
        return torch.randn(*s, generator=gen).to(dtype).to(device)

    return r(B, H, Nq, D), r(B, Hkv, Nk, D), r(B, Hkv, Nk, D)


def proj(gen, D, device="cpu"):
    return (0.2 * torch.randn(D, D, generator=gen)).to(device), (0.2 * torch.randn(D, generator=gen)).to(device)


def case_id(case):
    return "x".join(map(str, case[:6]))


def dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


CASES = [
    # B, H, Hkv, Nq, Nk, D, block
    (1, 2, 2, 256, 256, 64, (64, 64)),
    (2, 4, 2, 300, 260, 32, (64, 32)),   # GQA, partial blocks, Nq != Nk
    (1, 2, 1, 130, 400, 128, (32, 64)),  # D=128, Nk > Nq
    (1, 1, 1, 40, 50, 40, (64, 64)),     # N < one block, odd D
]
# Within the CUDA kernels' limits: bf16/fp16, D 32/64/96/128, block_q 64/128, block_k 64..256.
CUDA_CASES = [
    # B, H, Hkv, Nq, Nk, D, block
    (1, 2, 2, 256, 256, 64, (64, 64)),
    (2, 4, 2, 300, 260, 64, (64, 64)),     # GQA, partial blocks, Nq != Nk
    (1, 2, 1, 130, 400, 128, (128, 64)),   # D=128, block_q 128, Nk > Nq
    (1, 3, 3, 40, 50, 128, (64, 128)),     # N below one block
]
# device, case, topk, low_k, linear_over_all_keys, dtype
FORWARD_PARAMS = [
    pytest.param("cpu", case, topk, low_k, False, dtype, id=f"cpu-{case_id(case)}-{topk}-{low_k}-{dtype_id(dtype)}")
    for case in CASES for topk, low_k in [(0.05, 0.1), (0.2, 0.0), (0.2, 0.1), (1.0, 0.0)]
    for dtype in (torch.float32, torch.bfloat16, torch.float16)
] + [
    on_cuda("cuda", case, topk, low_k, all_keys, dtype,
            id=f"cuda-{case_id(case)}-{topk}-{low_k}{'-all_keys' if all_keys else ''}-{dtype_id(dtype)}")
    for case in CUDA_CASES for topk, low_k, all_keys in [(0.05, 0.1, False), (0.2, 0.0, False), (1.0, 0.0, False),
                                                         (0.2, 0.1, True)]
    for dtype in HALF_DTYPES
]


@pytest.mark.parametrize("fmap", FEATURE_MAPS)
@pytest.mark.parametrize("device, case, topk, low_k, all_keys, dtype", FORWARD_PARAMS)
def test_forward_matches_reference(device, case, topk, low_k, all_keys, fmap, dtype, gen):
    B, H, Hkv, Nq, Nk, D, block = case
    q, k, v = inputs(gen, B, H, Hkv, Nq, Nk, D, dtype, device)
    w, b = proj(gen, D, device)
    out = genaccel.sparse_linear_attention(q, k, v, w, b, topk, low_k, block, fmap, linear_over_all_keys=all_keys)
    assert out.dtype == dtype and out.shape == q.shape and out.device == q.device
    codes = sla_block_map(q, k, topk, low_k, block)[0]
    ref = sparse_linear_attention_reference(q.cpu(), k.cpu(), v.cpu(), codes.cpu(), w.cpu(), b.cpu(), block, fmap,
                                            linear_over_all_keys=all_keys)[0]
    assert rel_err(out.cpu(), ref) <= RTOL[dtype]


@pytest.mark.parametrize("fmap", FEATURE_MAPS)
def test_linear_over_all_keys_variant(fmap, gen):
    q, k, v = inputs(gen, 1, 4, 2, 200, 330, 32, torch.float32)
    w, b = proj(gen, 32)
    out = genaccel.sparse_linear_attention(q, k, v, w, b, 0.2, 0.1, (64, 64), fmap, linear_over_all_keys=True)
    codes = sla_block_map(q, k, 0.2, 0.1, 64)[0]
    ref = sparse_linear_attention_reference(q, k, v, codes, w, b, (64, 64), fmap, linear_over_all_keys=True)[0]
    assert rel_err(out, ref) <= 1e-4


def test_topk_one_is_dense_attention(gen):
    q, k, v = inputs(gen, 1, 2, 2, 200, 200, 64, torch.float32)
    w = torch.zeros(64, 64)
    out = genaccel.sparse_linear_attention(q, k, v, w, topk=1.0, low_k=0.0)
    dense = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert rel_err(out, dense) <= 1e-5


def test_zero_projection_is_sparse_only(gen):
    """A zero projection leaves the float64 block-sparse attention over the critical blocks."""
    q, k, v = inputs(gen, 2, 4, 1, 256, 300, 32, torch.float32)
    zero_w, zero_b = torch.zeros(32, 32), torch.zeros(32)
    out = genaccel.sparse_linear_attention(q, k, v, zero_w, zero_b, 0.25, 0.1, 64)
    codes = sla_block_map(q, k, 0.25, 0.1, 64)[0]
    assert rel_err(out, block_sparse_attention_reference(q, k, v, codes == 1, (64, 64))[0]) <= RTOL[torch.float32]


def test_identity_projection_adds_the_linear_branch(gen):
    """No projection and an identity one both give the float64 reference without a projection
    (5 of the 6 key blocks marginal: the linear branch is most of the output)."""
    q, k, v = inputs(gen, 1, 2, 2, 128, 192, 16, torch.float32)
    plain = genaccel.sparse_linear_attention(q, k, v, None, None, 0.3, 0.0, 32)
    eye = genaccel.sparse_linear_attention(q, k, v, torch.eye(16), torch.zeros(16), 0.3, 0.0, 32)
    codes = sla_block_map(q, k, 0.3, 0.0, 32)[0]
    ref = sparse_linear_attention_reference(q, k, v, codes, None, None, (32, 32))[0]
    assert rel_err(plain, ref) <= RTOL[torch.float32] and rel_err(eye, ref) <= RTOL[torch.float32]


@pytest.mark.parametrize("device, D, dtype", [("cpu", 16, torch.float32), on_cuda("cuda", 64, torch.bfloat16)])
@pytest.mark.parametrize("topk, low_k", [(0.25, 0.75), (1.0, 0.0)], ids=["critical_or_negligible", "all_critical"])
def test_rows_without_marginal_blocks_have_no_nan(device, D, dtype, topk, low_k, gen):
    """No marginal block at all: O^l is zero, not NaN (the denominators are 0), so the output is
    exactly the sparse branch, with or without a projection."""
    q, k, v = inputs(gen, 1, 2, 2, 256, 256, D, dtype, device)
    out = genaccel.sparse_linear_attention(q, k, v, None, None, topk=topk, low_k=low_k, block_size=64)
    assert torch.isfinite(out).all()
    critical = sla_block_map(q, k, topk, low_k, 64)[0].cpu() == 1
    ref = block_sparse_attention_reference(q.cpu(), k.cpu(), v.cpu(), critical, (64, 64))[0]
    assert rel_err(out.cpu(), ref) <= RTOL[dtype]
    sparse = genaccel.sparse_linear_attention(q, k, v, torch.zeros(D, D, device=device), None, topk=topk,
                                              low_k=low_k, block_size=64)
    identity = genaccel.sparse_linear_attention(q, k, v, torch.eye(D, device=device), None, topk=topk, low_k=low_k,
                                                block_size=64)
    assert torch.equal(out, sparse) and torch.equal(identity, sparse)


def test_relu_features_that_never_meet_give_zero_not_nan(gen):
    """Marginal blocks exist but relu(q) . relu(k) = 0 everywhere: denominator 0, O^l = 0, finite
    gradients (the kernel, not only the reference)."""
    q, k, v = inputs(gen, 1, 2, 2, 256, 256, 16, torch.float32)
    q = (-q.abs()).requires_grad_()  # relu(q) = 0
    k, v = k.requires_grad_(), v.requires_grad_()
    codes, idx, cnt = sla_block_map(q, k, 0.25, 0.0, 64)
    assert (codes == 0).any()
    out_s, _, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 64, 64, 0.25, "relu", False)
    assert not out_l.any() and not denom.any()
    grads = torch.autograd.grad((out_s + out_l).sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("Nk, block, topk, n_critical", [
    (650, 64, 0.2, 2),     # 11 key blocks (the last partial): floor(2.2)
    (448, 64, 0.25, 1),    # 7 blocks: floor(1.75), not round
    (300, 64, 0.01, 1),    # 5 blocks: floor(0.05) = 0, but at least one
    (1600, 16, 0.29, 29),  # 100 blocks: 0.29 * 100 is just below 29 in binary floating point
])
def test_return_sparsity(Nk, block, topk, n_critical, gen):
    """The fraction returned is the share of critical blocks in the float64 block map: the
    n_critical blocks of each row (floor(topk * Tk), at least one) over the Tk key blocks."""
    q, k, v = inputs(gen, 1, 2, 1, 200, Nk, 16, torch.float32)
    _, kept = genaccel.sparse_linear_attention(q, k, v, topk=topk, low_k=0.1, block_size=block, return_sparsity=True)
    codes = sla_block_map_reference(q, k, topk, 0.1, (block, block))
    assert ((codes == 1).sum(-1) == n_critical).all()
    assert kept == pytest.approx((codes == 1).double().mean().item())


def test_op_reports_denominator_and_lse(gen):
    q, k, v = inputs(gen, 1, 2, 2, 128, 128, 16, torch.float32)
    codes, idx, cnt = sla_block_map(q, k, 0.5, 0.0, 32)
    fq, fk = torch.softmax(q, -1), torch.softmax(k, -1)
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 32, 32, 0.25, "softmax", False)
    check_against_reference(out_s, lse, q, k, v, codes == 1, 32, 0.25, torch.float32)
    marginal = (codes == 0).repeat_interleave(32, 2).repeat_interleave(32, 3)
    expected = ((fq.double() @ fk.double().transpose(-1, -2)) * marginal).sum(-1)
    assert rel_err(denom, expected) < 1e-5


@pytest.mark.parametrize("device, dtype, Nq, Nk, D, block, topk, low_k, test_utils", [
    ("cpu", torch.float32, 96, 80, 16, 32, 0.3, 0.2, ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")),
    on_cuda("cuda", torch.bfloat16, 200, 130, 64, 64, 0.2, 0.1, ("test_schema", "test_faketensor")),
])
def test_opcheck(device, dtype, Nq, Nk, D, block, topk, low_k, test_utils, gen):
    q, k, v = inputs(gen, 1, 2, 1, Nq, Nk, D, dtype, device)
    codes, idx, cnt = sla_block_map(q, k, topk, low_k, block)
    args = (q, k, v, codes, idx, cnt, block, block, D**-0.5, "softmax", False)
    torch.library.opcheck(torch.ops.genaccel.sla_fwd.default, args, test_utils=test_utils)


def test_opcheck_with_grad(gen):
    q, k, v = (t.requires_grad_() for t in inputs(gen, 1, 2, 1, 96, 80, 16, torch.float32))
    w = proj(gen, 16)[0].requires_grad_()
    codes, idx, cnt = sla_block_map(q, k, 0.3, 0.2, 32)
    for fmap in FEATURE_MAPS:
        args = (q, k, v, codes, idx, cnt, 32, 32, 0.25, fmap, False)
        torch.library.opcheck(torch.ops.genaccel.sla_fwd.default, args)
        torch.library.opcheck(torch.ops.genaccel.sla_fwd.default, args + (w,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_projection_is_the_linear_branch_of_projected_values(dtype, gen):
    """With proj_weight W the op's out_linear is O^l W^T (the branch on V W^T) and sla_bwd returns
    dW = sum over rows of grad_linear^T O^l, with dq, dk, dv through the projection: against the
    float64 reference (its linear branch through autograd)."""
    B, H, Hkv, Nq, Nk, D, blk = 1, 4, 2, 150, 130, 32, 32
    q, k, v = inputs(gen, B, H, Hkv, Nq, Nk, D, dtype)
    w = proj(gen, D)[0] * 4
    codes, idx, cnt = sla_block_map(q, k, 0.3, 0.2, blk)
    scale = D ** -0.5
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, blk, blk, scale, "elu", False, w)
    leaves = [t.double().requires_grad_() for t in (q, k, v, w)]
    ref_l = sparse_linear_attention_reference(*leaves[:3], codes, None, None, (blk, blk), "elu")[2] @ leaves[3].t()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert out_l.dtype == dtype and rel_err(out_l, ref_l) <= tol
    g_l = torch.randn(out_l.shape, generator=gen).to(dtype)
    g_s = torch.zeros_like(g_l)
    delta = attention_delta(g_s, out_s, None)
    dq, dk, dv, dw = torch.ops.genaccel.sla_bwd(g_s, g_l, q, k, v, codes, idx, cnt, out_s, lse, delta, out_l, denom,
                                                blk, blk, scale, "elu", False, w)
    expected = torch.autograd.grad(ref_l, leaves, g_l.double())
    for name, g, e in zip(["dq", "dk", "dv", "dw"], (dq, dk, dv, dw), expected):
        assert rel_err(g, e) <= tol, (name, rel_err(g, e))
    assert dw.dtype == w.dtype


def test_op_checks_the_projection_weight(gen):
    q, k, v = inputs(gen, 1, 2, 1, 96, 80, 16, torch.float32)
    codes, idx, cnt = sla_block_map(q, k, 0.3, 0.2, 32)
    args = (q, k, v, codes, idx, cnt, 32, 32, 0.25, "softmax", False)
    with pytest.raises(RuntimeError, match=r"sla_fwd: proj_weight must be a floating-point \(D, D\) = \(16, 16\)"):
        torch.ops.genaccel.sla_fwd(*args, torch.zeros(16, 8))
    with pytest.raises(RuntimeError, match="sla_fwd: proj_weight must be a floating-point"):
        torch.ops.genaccel.sla_fwd(*args, torch.zeros(16, 16, dtype=torch.int32))


def test_op_checks_the_plan_on_cpu_even_when_told_not_to(gen):
    """check_plan=False only spares CUDA its host sync; the CPU kernels index with the plan unguarded."""
    q, k, v = inputs(gen, 1, 2, 1, 96, 80, 16, torch.float32)
    codes, idx, cnt = sla_block_map(q, k, 0.3, 0.2, 32)
    with pytest.raises(RuntimeError, match="sla_fwd: kv_indices must lie in"):
        torch.ops.genaccel.sla_fwd(q, k, v, codes, idx + 7, cnt, 32, 32, 0.25, "softmax", False, check_plan=False)


def test_op_rejects_a_plan_that_lists_a_block_twice(gen):
    """As many entries as critical blocks, all critical, but one listed twice and one left out."""
    q, k, v = inputs(gen, 1, 1, 1, 64, 64, 16, torch.float32)
    codes = torch.ones(1, 1, 2, 2, dtype=torch.int8)
    idx, cnt = torch.zeros(1, 1, 2, 2, dtype=torch.int32), torch.full((1, 1, 2), 2, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="sla_fwd: kv_indices / kv_counts must list exactly the critical blocks"):
        torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 32, 32, 0.25, "softmax", False)


def test_compile_fullgraph(gen):
    q, k, v = inputs(gen, 1, 2, 2, 128, 128, 16, torch.float32)
    w, b = proj(gen, 16)
    eager = genaccel.sparse_linear_attention(q, k, v, w, b, 0.25, 0.25, 32)
    compiled = torch.compile(genaccel.sparse_linear_attention, backend="aot_eager", fullgraph=True)
    assert rel_err(compiled(q, k, v, w, b, 0.25, 0.25, 32), eager) < 1e-6


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("device, dtype, Nq, Nk, D, topk, low_k, block, tol", [
    ("cpu", torch.float32, 160, 130, 16, 0.25, 0.25, 32, 1e-5),
    on_cuda("cuda", torch.bfloat16, 300, 260, 64, 0.2, 0.1, 64, 1e-2),
])
def test_compile_fullgraph_backward(device, dtype, Nq, Nk, D, topk, low_k, block, tol, backend, gen):
    """Forward and backward through torch.compile(fullgraph=True): the ops' fakes and
    register_autograd trace, and the compiled gradients equal eager ones (the same kernels run)."""
    leaves = [t.requires_grad_() for t in (*inputs(gen, 1, 4, 2, Nq, Nk, D, dtype, device), *proj(gen, D, device))]

    def loss(q, k, v, w, b):
        return genaccel.sparse_linear_attention(q, k, v, w, b, topk, low_k, block, "elu").float().square().sum()

    eager = torch.autograd.grad(loss(*leaves), leaves)
    torch._dynamo.reset()
    compiled = torch.autograd.grad(torch.compile(loss, backend=backend, fullgraph=True)(*leaves), leaves)
    for name, g, e in zip(["q", "k", "v", "w", "b"], compiled, eager):
        assert rel_err(g.float(), e.float()) < tol, name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(feature_map="hedgehog"), "feature_map must be one of"),
        (dict(topk=1.2), "topk must be a number in"),
        (dict(topk=0.5, low_k=0.6), "topk \\+ low_k must be at most 1"),
        (dict(proj_bias=torch.zeros(16)), "proj_bias needs proj_weight"),
        (dict(proj_weight=torch.zeros(8, 16)), "proj_weight must be a floating-point tensor of shape \\(16, 16\\)"),
        (dict(proj_weight=torch.zeros(16, 16, dtype=torch.long)), "proj_weight must be a floating-point"),
        (dict(proj_weight=torch.zeros(16, 16), proj_bias=torch.zeros(64, 16)), "proj_bias must be a floating-point"),
        (dict(block_size=(64,)), "block_size"),
        (dict(proj_weight=torch.zeros(16, 16), proj_bias=torch.zeros(16, device="meta")),
         "proj_bias must be .* on the device of q"),
        (dict(proj_weight=torch.zeros(16, 16, device="meta")), "proj_weight must be .* on the device of q"),
    ],
)
def test_bad_arguments(kwargs, match, gen):
    q, k, v = inputs(gen, 1, 2, 2, 64, 64, 16, torch.float32)
    with pytest.raises(ValueError, match=match):
        genaccel.sparse_linear_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_block_map_refuses_non_floating_inputs(dtype, gen):
    q, k, _ = inputs(gen, 1, 2, 2, 64, 64, 16, torch.float32)
    with pytest.raises(ValueError, match="q must be a floating-point tensor"):
        sla_block_map(q.to(dtype), k.to(dtype))


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_meta_tensor_among_cpu_tensors_is_refused(name, gen):
    """The Meta kernel, which such a call dispatches to, runs the op's own device checks."""
    args = dict(zip("qkv", inputs(gen, 1, 2, 2, 128, 128, 16, torch.float32)))
    block_map = sla_block_map(args["q"], args["k"], 0.5, 0.0)
    args[name] = args[name].to("meta")
    with pytest.raises(RuntimeError, match="sla_fwd: q, k, v must be on one device"):
        genaccel.sparse_linear_attention(**args, block_map=block_map)


def test_meta_inputs_give_shapes_and_bad_meta_shapes_are_refused():
    q, k, v = (torch.empty(1, 2, 96, 16, device="meta") for _ in range(3))
    assert genaccel.sparse_linear_attention(q, k, v).shape == q.shape
    with pytest.raises(RuntimeError, match="sla_select_blocks: n_critical must be in \\[1, 11\\], got 20"):
        torch.ops.genaccel.sla_select_blocks(torch.empty(1, 1, 4, 11, device="meta"), 20, 0)
    with pytest.raises(RuntimeError, match="sla_fwd: k and v must have the same length"):
        torch.ops.genaccel.sla_fwd(q, k, v[:, :, :32], *sla_block_map(q, k, 0.5, 0.0, 32), 32, 32, 0.25, "softmax",
                                   False)


def test_bad_shapes_say_what_is_wrong(gen):
    q, k, v = inputs(gen, 1, 2, 2, 64, 64, 16, torch.float32)
    with pytest.raises(ValueError, match="D >= 1"):
        genaccel.sparse_linear_attention(q[..., :0], k[..., :0], v[..., :0])
    with pytest.raises(ValueError, match="at least one head"):
        genaccel.sparse_linear_attention(q[:, :0], k[:, :0], v[:, :0])
    with pytest.raises(RuntimeError, match="^sla_fwd: k and v must have the same length"):
        torch.ops.genaccel.sla_fwd(q, k, v[:, :, :32], *sla_block_map(q, k, 0.5, 0.0, 32), 32, 32, 0.25,
                                   "softmax", False)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("tensor", ["k", "v"])
@pytest.mark.parametrize("fmap", FEATURE_MAPS)
@pytest.mark.parametrize("device, dtype", [("cpu", torch.float32), on_cuda("cuda", torch.bfloat16)])
def test_non_finite_input_reaches_exactly_the_rows_that_use_it(device, dtype, fmap, tensor, value, gen):
    """As in dense attention: a NaN or inf in k or v poisons the rows whose computation uses its
    key, and only those (here, with a quarter of the blocks negligible for each query block, some
    rows use each key and some do not). The plan comes from the finite inputs, so it is the same for
    the op and the reference. The CPU matches the reference per element; CUDA per row (docs/sla.md)."""
    q, k, v = inputs(gen, 1, 2, 2, 512, 512, 32, dtype, device)
    block_map = sla_block_map(q, k, 0.25, 0.25, (64, 64))
    codes = block_map[0].cpu()
    for key in (5, 200, 511):
        bad_k, bad_v = k.clone(), v.clone()
        {"k": bad_k, "v": bad_v}[tensor][0, 1, key, 3] = value
        out = genaccel.sparse_linear_attention(q, bad_k, bad_v, block_map=block_map, feature_map=fmap).cpu()
        ref = sparse_linear_attention_reference(q.cpu(), bad_k.cpu(), bad_v.cpu(), codes, feature_map_name=fmap)[0]
        rows = ref.isfinite().all(-1)
        assert rows.any() and not rows.all(), "the case must have rows that use the key and rows that do not"
        if device == "cpu":
            assert torch.equal(out.isfinite(), ref.isfinite()), key
        else:
            assert torch.equal(out.isfinite().all(-1), rows), key


def test_double_backward_raises(gen):
    q, k, v = (t.requires_grad_() for t in inputs(gen, 1, 2, 2, 128, 128, 16, torch.float32))
    out = genaccel.sparse_linear_attention(q, k, v, topk=0.5, low_k=0.0)
    (gq,) = torch.autograd.grad(out.square().sum(), (q,), create_graph=True)
    with pytest.raises(RuntimeError, match="sparse_linear_attention: double backward"):
        gq.sum().backward()


def test_projection_under_autocast_does_not_depend_on_grad_mode(gen):
    q, k, v = inputs(gen, 1, 2, 2, 128, 128, 16, torch.float32)
    w, b = proj(gen, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            plain = genaccel.sparse_linear_attention(q, k, v, w, b)
        tracked = genaccel.sparse_linear_attention(q, k, v, w.requires_grad_(), b)
    assert torch.equal(plain, tracked.detach())


def test_op_rejects_bad_codes_and_feature_maps(gen):
    q, k, v = inputs(gen, 1, 2, 2, 64, 64, 16, torch.float32)
    codes, idx, cnt = sla_block_map(q, k, 0.5, 0.0, 32)
    op = torch.ops.genaccel.sla_fwd
    with pytest.raises(RuntimeError, match="codes must be int8"):
        op(q, k, v, codes.int(), idx, cnt, 32, 32, 0.25, "softmax", False)
    with pytest.raises(RuntimeError, match="codes must have shape"):
        op(q, k, v, codes[..., :1], idx, cnt, 32, 32, 0.25, "softmax", False)
    with pytest.raises(RuntimeError, match="sla_fwd: feature_map must be one of softmax, elu, relu, got 'hedgehog'"):
        op(q, k, v, codes, idx, cnt, 32, 32, 0.25, "hedgehog", False)
    with pytest.raises(RuntimeError, match="kv_indices must lie in"):
        op(q, k, v, codes, idx + 5, cnt, 32, 32, 0.25, "softmax", False)
    with pytest.raises(RuntimeError, match="sla_fwd: kv_indices / kv_counts must list exactly the critical blocks"):
        op(q, k, v, codes, 1 - idx, cnt, 32, 32, 0.25, "softmax", False)  # the other key block of 2
    with pytest.raises(RuntimeError, match="must list exactly the critical blocks"):
        op(q, k, v, codes, idx, cnt - 1, 32, 32, 0.25, "softmax", False)
    with pytest.raises(RuntimeError, match=r"sla_fwd: kv_counts must lie in \[0, 1\]"):
        op(q, k, v, codes, idx, cnt + 1, 32, 32, 0.25, "softmax", False)
    with pytest.raises(RuntimeError, match="sla_fwd: kv_indices must lie in"):
        op(q, k, v, codes, idx - 7, cnt, 32, 32, 0.25, "softmax", False)


# ---- gradients and the module ----------------------------------------------------------------

GRAD_CASES = [
    # B, H, Hkv, Nq, Nk, D, block, topk, low_k, fmap, all_keys
    (1, 2, 2, 256, 256, 32, (64, 64), 0.05, 0.1, "softmax", False),
    (2, 4, 2, 300, 260, 32, (64, 32), 0.2, 0.1, "elu", False),
    (1, 2, 1, 130, 400, 16, (32, 64), 0.2, 0.0, "relu", False),
    (1, 2, 2, 200, 200, 16, (64, 64), 1.0, 0.0, "softmax", False),
    (1, 2, 2, 200, 330, 16, (64, 64), 0.2, 0.1, "softmax", True),
    (1, 4, 2, 260, 300, 24, (32, 32), 0.6, 0.0, "elu", False),  # few marginal blocks: direct sums
]
CUDA_GRAD_CASES = [
    # B, H, Hkv, Nq, Nk, D, block
    (1, 4, 2, 300, 260, 64, (64, 64)),     # GQA, partial blocks, Nq != Nk
    (2, 2, 1, 200, 330, 128, (128, 64)),   # MQA, D=128, block_q 128, two batches
    (1, 3, 3, 40, 50, 128, (64, 128)),     # N below one block
]
# device, case, topk, low_k, feature map, linear_over_all_keys, dtype
GRAD_PARAMS = [
    pytest.param("cpu", c[:7], *c[7:], dtype, id=f"cpu-{c[9]}-topk{c[7]}-lowk{c[8]}-all{int(c[10])}-D{c[5]}-{dtype_id(dtype)}")
    for c in GRAD_CASES for dtype in (torch.float32, torch.bfloat16)
] + [
    on_cuda("cuda", case, topk, low_k, fmap, all_keys, dtype,
            id=f"cuda-{case_id(case)}-{fmap}-topk{topk}-lowk{low_k}-all{int(all_keys)}-{dtype_id(dtype)}")
    for case in CUDA_GRAD_CASES for topk, low_k, all_keys in [(0.2, 0.1, False), (1.0, 0.0, False), (0.3, 0.2, True)]
    for fmap in FEATURE_MAPS for dtype in HALF_DTYPES
]


@pytest.mark.parametrize("device, case, topk, low_k, fmap, all_keys, dtype", GRAD_PARAMS)
def test_gradients_match_reference(device, case, topk, low_k, fmap, all_keys, dtype, gen):
    """Forward and the gradients of q, k, v and the projection (on CUDA: the fused block-sparse
    backward kernels plus the linear branch's GEMMs and row kernels) against autograd through the
    float64 reference."""
    check_forward_and_gradients(device, case, topk, low_k, fmap, all_keys, dtype, gen)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", [(1, 4, 2, 200, 170, 96, (64, 64)), (1, 2, 2, 130, 100, 32, (64, 64))],
                         ids=["D96_gqa", "D32"])
def test_head_dims_without_their_own_attention_kernel(case, device, gen):
    """D 96 and 32: on CUDA the sparse branch runs zero-padded to the 128 / 64 kernels, the linear
    branch's row kernels at the true head dim."""
    check_forward_and_gradients(device, case, 0.2, 0.1, "elu", False, torch.bfloat16, gen)


def check_forward_and_gradients(device, case, topk, low_k, fmap, all_keys, dtype, gen):
    B, H, Hkv, Nq, Nk, D, block = case
    q, k, v = (t.requires_grad_() for t in inputs(gen, B, H, Hkv, Nq, Nk, D, dtype, device))
    w, b = (t.requires_grad_() for t in proj(gen, D, device))
    out = genaccel.sparse_linear_attention(q, k, v, w, b, topk, low_k, block, fmap, linear_over_all_keys=all_keys)
    go = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad((out * go.to(device)).float().sum(), (q, k, v, w, b))
    codes = sla_block_map(q, k, topk, low_k, block)[0].cpu()
    ref_in = [t.detach().cpu().double().requires_grad_() for t in (q, k, v, w, b)]
    ref = sparse_linear_attention_reference(*ref_in[:3], codes, *ref_in[3:], block, fmap,
                                            linear_over_all_keys=all_keys)[0]
    assert rel_err(out.detach().cpu(), ref.detach()) <= RTOL[dtype]
    expected = torch.autograd.grad((ref * go.double()).sum(), ref_in)
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # the bounds for gradients
    for name, g, e in zip(["q", "k", "v", "proj_weight", "proj_bias"], grads, expected):
        assert g.device == q.device and g.dtype == (torch.float32 if name.startswith("proj") else dtype), name
        g = g.cpu()
        if e.norm() == 0:
            assert g.abs().max() == 0, name
        else:
            assert torch.isfinite(g).all() and rel_err(g, e) <= tol, (name, rel_err(g, e))


@pytest.mark.parametrize("all_keys", [False, True], ids=["marginal", "all_keys"])
@pytest.mark.parametrize("fmap", FEATURE_MAPS)
@pytest.mark.parametrize("topk,low_k", [(0.05, 0.0), (0.05, 0.1), (0.2, 0.0), (0.2, 0.1), (1.0, 0.0)])
def test_gradient_matrix_matches_reference(topk, low_k, fmap, all_keys, gen):
    """Every (topk, low_k, phi, semantics) of the issue (topk 1 leaves no room for low_k), float32,
    all five gradients against autograd through the float64 reference (GQA, partial blocks; 20 key
    blocks so topk 0.05 keeps one)."""
    B, H, Hkv, Nq, Nk, D, block = 1, 2, 1, 150, 620, 8, (32, 32)
    q, k, v = (t.requires_grad_() for t in inputs(gen, B, H, Hkv, Nq, Nk, D, torch.float32))
    w, b = (t.requires_grad_() for t in proj(gen, D))
    out = genaccel.sparse_linear_attention(q, k, v, w, b, topk, low_k, block, fmap, all_keys)
    go = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad(out, (q, k, v, w, b), go)
    codes = sla_block_map(q, k, topk, low_k, block)[0]
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v, w, b)]
    ref = sparse_linear_attention_reference(*ref_in[:3], codes, *ref_in[3:], block, fmap, all_keys)[0]
    assert rel_err(out, ref) <= 1e-5
    expected = torch.autograd.grad(ref, ref_in, go.double())
    for name, g, e in zip(["q", "k", "v", "proj_weight", "proj_bias"], grads, expected):
        if e.norm() == 0:
            assert g.abs().max() == 0, name
        else:
            assert rel_err(g, e) <= 1e-4, (name, rel_err(g, e))


@pytest.mark.parametrize("fmap", ["relu", "elu"])
def test_outlier_keys_do_not_cancel_the_linear_branch(fmap, gen):
    """Key blocks of huge norm (critical for every row) next to tiny marginal features: subtracting
    the heavy critical blocks from the total would cancel the marginal sums' digits in float32, so
    such rows sum their marginal blocks directly. Forward and gradients against the reference."""
    N, D, bs = 64 * 16, 16, 64
    q = (torch.rand(1, 1, N, D, generator=gen) + 0.5).requires_grad_()
    k = torch.rand(1, 1, N, D, generator=gen)
    k[:, :, : 2 * bs] = k[:, :, : 2 * bs] * 1e3 + 1e3
    if fmap == "relu":
        k[:, :, 2 * bs :] *= 1e-3
    else:  # elu + 1 = exp(x) ~ 1e-3
        k[:, :, 2 * bs :] = -7.9 + 0.1 * k[:, :, 2 * bs :]
    k.requires_grad_()
    v = torch.randn(1, 1, N, D, generator=gen).requires_grad_()
    codes, idx, cnt = sla_block_map(q, k, 2 / 16, 0.0, bs)
    assert (codes[..., :2] == 1).all()
    args = (codes, idx, cnt, bs, bs, D**-0.5, fmap, False)
    out_linear = torch.ops.genaccel.sla_fwd(q, k, v, *args)[2]
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = sparse_linear_attention_reference(*ref_in, codes, None, None, (bs, bs), fmap)[2]
    assert rel_err(out_linear, ref) <= 1e-5
    go = torch.randn(out_linear.shape, generator=gen)
    grads = torch.autograd.grad(out_linear, (q, k, v), go)
    expected = torch.autograd.grad(ref, ref_in, go.double())
    for name, g, e in zip("qkv", grads, expected):
        assert rel_err(g, e) <= 1e-4, (name, rel_err(g, e))


def test_module_starts_as_sparse_only_and_trains(gen):
    q, k, v = inputs(gen, 1, 2, 2, 256, 256, 32, torch.float32)
    layer = genaccel.nn.SparseLinearAttention(32, topk=0.25, low_k=0.0, block_size=64)
    assert layer.proj.weight.dtype == torch.float32 and layer.proj.weight.abs().max() == 0
    codes = sla_block_map(q, k, 0.25, 0.0, 64)[0]
    sparse_only = block_sparse_attention_reference(q, k, v, codes == 1, (64, 64))[0]
    assert rel_err(layer(q, k, v), sparse_only) <= RTOL[torch.float32]
    target = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (layer(q, k, v) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]  # the linear branch compensates part of the sparse error


def test_module_under_bf16_autocast(gen):
    q, k, v = inputs(gen, 1, 2, 2, 128, 128, 16, torch.bfloat16)
    layer = genaccel.nn.SparseLinearAttention(16, topk=0.5, low_k=0.0, block_size=32)
    torch.nn.init.normal_(layer.proj.weight, std=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(q, k, v)
    assert out.dtype == torch.bfloat16
    codes = sla_block_map(q, k, 0.5, 0.0, 32)[0]
    expected = sparse_linear_attention_reference(q, k, v, codes, layer.proj.weight.detach(), layer.proj.bias.detach(),
                                                 (32, 32))[0]
    assert rel_err(out, expected) <= RTOL[torch.bfloat16]
    out.float().sum().backward()
    assert layer.proj.weight.grad is not None and layer.proj.weight.grad.dtype == torch.float32
    assert torch.isfinite(layer.proj.weight.grad).all()


@pytest.mark.parametrize("device, Hkv, Nq, Nk, D, topk, low_k, block", [
    ("cpu", 1, 130, 100, 16, 0.3, 0.1, 32),
    on_cuda("cuda", 2, 200, 200, 64, 0.05, 0.10, 64),
])
def test_float32_inputs_under_autocast_run_in_the_autocast_dtype(device, Hkv, Nq, Nk, D, topk, low_k, block, gen):
    """As SDPA: under autocast, float32 q, k, v are cast to the autocast dtype (on CUDA the kernels
    take half precision only), and gradients reach the float32 leaves."""
    q, k, v = (t.requires_grad_() for t in inputs(gen, 1, 2, Hkv, Nq, Nk, D, torch.float32, device))
    layer = genaccel.nn.SparseLinearAttention(D, topk=topk, low_k=low_k, block_size=block).to(device)
    torch.nn.init.normal_(layer.proj.weight, std=0.1)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = layer(q, k, v)
    assert out.dtype == torch.bfloat16
    q16, k16, v16 = (t.detach().bfloat16() for t in (q, k, v))
    codes = sla_block_map(q16, k16, topk, low_k, block)[0].cpu()
    w, b = (p.detach().cpu() for p in (layer.proj.weight, layer.proj.bias))
    expected = sparse_linear_attention_reference(q16.cpu(), k16.cpu(), v16.cpu(), codes, w, b, (block, block))[0]
    assert rel_err(out.cpu(), expected) <= RTOL[torch.bfloat16]
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_module_rejects_bad_configuration():
    with pytest.raises(ValueError, match="feature_map must be one of"):
        genaccel.nn.SparseLinearAttention(16, feature_map="hedgehog")
    with pytest.raises(ValueError, match="topk \\+ low_k"):
        genaccel.nn.SparseLinearAttention(16, topk=0.7, low_k=0.5)


def test_module_loads_the_original_repositorys_projection(gen):
    """thu-ml/SLA names the projection proj_l: its state dict loads into `proj`, nested too, and the
    layer then computes with those weights; our own state dicts round-trip unchanged."""
    w, b = proj(gen, 16)
    outer = torch.nn.Sequential(genaccel.nn.SparseLinearAttention(16, topk=0.5, low_k=0.0))
    outer.load_state_dict({"0.proj_l.weight": w, "0.proj_l.bias": b})
    layer = outer[0]
    assert torch.equal(layer.proj.weight, w) and torch.equal(layer.proj.bias, b)
    q, k, v = inputs(gen, 1, 2, 2, 96, 96, 16, torch.float32)
    codes = sla_block_map(q, k, 0.5, 0.0, 64)[0]  # of the 2 key blocks one critical, one marginal
    expected = sparse_linear_attention_reference(q, k, v, codes, w, b, (64, 64))[0]
    assert rel_err(layer(q, k, v), expected) <= RTOL[torch.float32]
    fresh = genaccel.nn.SparseLinearAttention(16)
    fresh.load_state_dict(layer.state_dict())
    assert set(layer.state_dict()) == {"proj.weight", "proj.bias"} and torch.equal(fresh.proj.weight, w)


def test_autograd_runs_the_fused_backward_op(gen):
    q, k, v = (t.requires_grad_() for t in inputs(gen, 1, 2, 2, 128, 128, 16, torch.float32))
    out = genaccel.sparse_linear_attention(q, k, v, torch.eye(16), None, 0.25, 0.25, 32)

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            called.add(func._schema.name)
            return func(*args, **(kwargs or {}))

    called = set()
    with Record():
        out.sum().backward()
    assert "genaccel::sla_bwd" in called and "genaccel::block_sparse_attn_bwd" not in called


# ---- sla_bwd, the fused backward op, against the linear branch's formula ----------------------


def phi_vjp(x, fmap, grad):
    """The gradient through the feature map, J_phi(x)^T grad, in float64 by autograd."""
    x64 = x.detach().double().requires_grad_()
    return torch.autograd.grad(feature_map(x64, fmap), x64, grad.double())[0]


def sla_fwd_bwd(gen, q, k, v, codes, kv_indices, kv_counts, block, fmap, all_keys, grad_sparse=True):
    """Runs sla_fwd, then sla_bwd on random output gradients (zero for the sparse branch unless
    grad_sparse). Returns sla_bwd's (dq, dk, dv) and what they must be: the sparse branch's
    gradients by autograd through the float64 block-sparse reference plus the linear branch's by its
    reference formula (d_phi chained through phi), on the same inputs and forward outputs."""
    bq, bk = block
    scale = q.shape[-1] ** -0.5
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, kv_indices, kv_counts, bq, bk, scale,
                                                          fmap, all_keys)
    g_s, g_l = (torch.randn(out_s.shape, generator=gen).to(q.dtype) for _ in range(2))
    g_s = g_s if grad_sparse else torch.zeros_like(g_s)
    delta = attention_delta(g_s, out_s, None)
    grads = torch.ops.genaccel.sla_bwd(g_s, g_l, q, k, v, codes, kv_indices, kv_counts, out_s, lse, delta,
                                       out_l, denom, bq, bk, scale, fmap, all_keys)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    sparse = torch.autograd.grad(block_sparse_attention_reference(*leaves, codes == 1, block, scale)[0], leaves,
                                 g_s.double())
    fq, fk = feature_map(q.float(), fmap), feature_map(k.float(), fmap)
    d_phi_q, d_phi_k, dv_l = linear_branch_backward_reference(g_l, fq, fk, v, codes, out_l, denom, block, all_keys)
    expected = (sparse[0] + phi_vjp(q, fmap, d_phi_q), sparse[1] + phi_vjp(k, fmap, d_phi_k), sparse[2] + dv_l)
    return grads, expected


def check_sla_bwd(grads, expected, dtype, inputs_):
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, g, e, like in zip(["dq", "dk", "dv"], grads, expected, inputs_):
        assert g.dtype == like.dtype and g.shape == like.shape, name
        if e.norm() == 0:
            assert g.abs().max() == 0, name
        else:
            assert rel_err(g, e) <= tol, (name, rel_err(g, e))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("all_keys", [False, True], ids=["marginal", "all_keys"])
@pytest.mark.parametrize("fmap", FEATURE_MAPS)
# topk 0.5 + low_k 0.1 leaves 40 % marginal blocks (direct sums); 1.0 none (zero gradients).
@pytest.mark.parametrize("topk,low_k", [(0.05, 0.0), (0.05, 0.1), (0.2, 0.0), (0.2, 0.1), (0.5, 0.1), (1.0, 0.0)])
def test_sla_bwd_matches_linear_branch_formula(topk, low_k, fmap, all_keys, dtype, gen):
    # GQA, partial last blocks on both sides (Tq=10, Tk=21), D not a multiple of the vector width.
    q, k, v = inputs(gen, 1, 4, 2, 300, 330, 24, dtype)
    block = (32, 16)
    codes, idx, cnt = sla_block_map(q, k, topk, low_k, block)
    grads, expected = sla_fwd_bwd(gen, q, k, v, codes, idx, cnt, block, fmap, all_keys)
    check_sla_bwd(grads, expected, dtype, (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sla_bwd_direct_and_preaggregated_sums(dtype, gen):
    """Hand-made codes whose rows (query blocks) and columns (key blocks) range from no marginal
    block to all marginal, so both the direct sums (few marginal) and total-minus-the-rest
    (most marginal) run for H_i and for the scatter dh_j = sum_i dH_i; checked per key block."""
    B, H, Hkv, Nq, Nk, D, block = 2, 4, 2, 24 * 16 - 5, 20 * 16 - 3, 64, (16, 16)
    q, k, v = inputs(gen, B, H, Hkv, Nq, Nk, D, dtype)
    tq, tk = 24, 20
    row_bias = torch.linspace(-4, 4, tq).view(1, 1, tq, 1)
    col_bias = torch.linspace(4, -4, tk)[torch.randperm(tk, generator=gen)].view(1, 1, 1, tk)
    logits = row_bias + col_bias + torch.randn(1, H, tq, tk, generator=gen)
    other = torch.where(torch.rand(1, H, tq, tk, generator=gen) < 0.5, 1, -1)
    codes = torch.where(logits > 0, 0, other).to(torch.int8)
    codes[0, 0, 0], codes[0, 0, -1] = other[0, 0, 0], 0  # head 0: a query block with none, one with all
    codes[0, 1, :, 0], codes[0, 1, :, 1] = other[0, 1, :, 0], 0  # head 1: the same for key blocks
    marginal = codes == 0
    rows, cols = marginal.sum(-1), marginal.sum(-2)
    for count, n in [(rows, tk), (cols, tq)]:  # both paths, and the empty and full extremes
        assert (2 * count < n).any() and (2 * count >= n).any() and (count == 0).any() and (count == n).any()
    idx, cnt = genaccel.block_mask_to_indices(codes == 1)
    grads, expected = sla_fwd_bwd(gen, q, k, v, codes, idx, cnt, block, "softmax", False)
    check_sla_bwd(grads, expected, dtype, (q, k, v))
    # Per key block, so that no single block (e.g. one marginal for one query block only) hides in
    # the norm of the others.
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for j in range(tk):
        g, e = grads[1][:, :, j * 16 : (j + 1) * 16], expected[1][:, :, j * 16 : (j + 1) * 16]
        assert rel_err(g, e) <= tol, (j, rel_err(g, e))


def sla_bwd_args(gen, Nq=96, Nk=80, D=16, H=2, Hkv=1):
    q, k, v = inputs(gen, 1, H, Hkv, Nq, Nk, D, torch.float32)
    codes, idx, cnt = sla_block_map(q, k, 0.3, 0.2, 32)
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 32, 32, 0.25, "softmax", False)
    g_s, g_l = torch.randn(out_s.shape, generator=gen), torch.randn(out_l.shape, generator=gen)
    delta = attention_delta(g_s, out_s, None)
    return [g_s, g_l, q, k, v, codes, idx, cnt, out_s, lse, delta, out_l, denom, 32, 32, 0.25, "softmax", False]


@pytest.mark.parametrize("fmap", FEATURE_MAPS)
def test_sla_bwd_opcheck(fmap, gen):
    args = sla_bwd_args(gen)
    args[16] = fmap
    torch.library.opcheck(torch.ops.genaccel.sla_bwd.default, tuple(args))


def test_sla_bwd_opcheck_with_a_transposed_projection(gen):
    """d_proj_weight comes back contiguous whatever the weight's strides, in the fake kernel too."""
    args = sla_bwd_args(gen)
    torch.library.opcheck(torch.ops.genaccel.sla_bwd.default, (*args, torch.randn(16, 16, generator=gen).t()))


def test_sla_bwd_without_queries(gen):
    args = sla_bwd_args(gen)
    q, k = args[2], args[3]
    empty, rows = q[:, :, :0], q.new_zeros(q.shape[:2] + (0,))
    tk = args[5].shape[-1]
    codes = torch.zeros(1, q.shape[1], 0, tk, dtype=torch.int8)
    idx, cnt = torch.zeros(1, q.shape[1], 0, 1, dtype=torch.int32), torch.zeros(1, q.shape[1], 0, dtype=torch.int32)
    args[0:3] = [empty, empty, empty]
    args[5:13] = [codes, idx, cnt, empty, rows, rows, empty, rows]
    dq, dk, dv, dw = torch.ops.genaccel.sla_bwd(*args)
    assert dq.shape == empty.shape and dk.shape == k.shape and dw.numel() == 0
    assert not dk.any() and not dv.any()


@pytest.mark.parametrize(
    "index, bad, match",
    [
        (1, lambda t: t[..., :8], "sla_bwd: grad_linear must have the shape of q"),
        (0, lambda t: t.double(), "sla_bwd: grad_sparse must be float32, float16 or bfloat16"),
        (11, lambda t: t[:, :1], "sla_bwd: out_linear must have the shape of q"),
        (9, lambda t: t.double(), "sla_bwd: lse must be float32 of shape"),
        (10, lambda t: t[..., :5], "sla_bwd: delta must be float32 of shape"),
        (12, lambda t: t.half(), "sla_bwd: denom must be float32 of shape"),
        (5, lambda t: t.int(), "sla_bwd: codes must be int8"),
        (6, lambda t: t + 5, "kv_indices must lie in"),
        (15, lambda t: float("nan"), "sla_bwd: scale must be finite"),
        (16, lambda t: "hedgehog", "sla_bwd: feature_map must be one of softmax, elu, relu"),
    ],
)
def test_sla_bwd_rejects_bad_input(index, bad, match, gen):
    args = sla_bwd_args(gen)
    args[index] = bad(args[index])
    with pytest.raises(RuntimeError, match=match):
        torch.ops.genaccel.sla_bwd(*args)


@pytest.mark.parametrize("fmap", FEATURE_MAPS)
@pytest.mark.parametrize("D", [1, 13, 33])
def test_feature_maps_any_head_dim(D, fmap, gen):
    """The ops compute phi and its gradient themselves, in 8-lane vectors: head dims that are not a
    multiple of 8 take a padded tail, and must match the reference in value and gradient."""
    q, k, v = (t.requires_grad_() for t in inputs(gen, 1, 2, 1, 150, 140, D, torch.float32))
    w = (0.3 * torch.randn(D, D, generator=gen)).requires_grad_()
    out = genaccel.sparse_linear_attention(q, k, v, w, None, 0.2, 0.1, (32, 32), fmap)
    go = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad((out * go).sum(), (q, k, v, w))
    codes = sla_block_map(q, k, 0.2, 0.1, (32, 32))[0]
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v, w)]
    ref = sparse_linear_attention_reference(*ref_in[:3], codes, ref_in[3], None, (32, 32), fmap)[0]
    expected = torch.autograd.grad((ref * go.double()).sum(), ref_in)
    assert rel_err(out, ref) <= 1e-4
    for name, g, e in zip(["q", "k", "v", "proj_weight"], grads, expected):
        assert rel_err(g, e) <= 1e-4, (name, rel_err(g, e))


@pytest.mark.parametrize("fmap", FEATURE_MAPS)
def test_feature_maps_large_inputs(fmap, gen):
    """|x| up to ~100: exp overflows float32 on the side of elu+1 that is not taken, and softmax
    over the features is near one-hot. phi (through the denominators) and the gradients through it
    stay finite and right. The sparse branch gets a zero output gradient (its gradients are then
    exactly zero), so the very peaked attention these inputs give does not enter the tolerance."""
    q, k, v = inputs(gen, 1, 2, 1, 150, 140, 13, torch.float32)
    q, k = q * 30, k * 30
    codes, idx, cnt = sla_block_map(q, k, 0.2, 0.1, (32, 32))
    grads, expected = sla_fwd_bwd(gen, q, k, v, codes, idx, cnt, (32, 32), fmap, False, grad_sparse=False)
    check_sla_bwd(grads, expected, torch.float32, (q, k, v))
    denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 32, 32, 13 ** -0.5, fmap, False)[3]
    fq, fk = feature_map(q.double(), fmap), feature_map(k.double(), fmap)
    marginal = (codes == 0).repeat_interleave(32, 2)[:, :, :150].repeat_interleave(32, 3)[..., :140]
    assert rel_err(denom, ((fq @ fk.transpose(-1, -2)) * marginal).sum(-1)) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_block_map_is_the_same_under_autocast(dtype, gen):
    """The scores stay float32 under autocast (the module's training setting): a half-precision
    matmul there would change which blocks are critical."""
    q, k = (torch.randn(1, 4, 1024, 64, generator=gen).to(dtype) for _ in range(2))
    plain = sla_block_map(q, k, 0.1, 0.2, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = sla_block_map(q, k, 0.1, 0.2, 64)
    for a, b in zip(plain, amp):
        assert torch.equal(a, b)


# ---- CUDA only: each backend and precision, the CUDA op against the CPU op, host syncs, CUDA graphs,
# corrupted plans, the side stream. The debugging knobs (chunk bytes, one stream) are read when genaccel
# loads, so their variants run in a child process (conftest.run_in_child).

cuda_only = pytest.mark.parametrize("device", [on_cuda("cuda", id="cuda")])
CUDA_FORWARD_CASES = CUDA_CASES[1:3]


@cuda_only
@pytest.mark.parametrize("backend", attention_backends())
@pytest.mark.parametrize("case", CUDA_FORWARD_CASES, ids=case_id)
def test_forward_with_each_attention_kernel(device, case, backend, gen):
    """SLA's sparse branch on the mma.sync kernels (sm80) and, on Hopper, the wgmma ones (sm90)."""
    B, H, Hkv, Nq, Nk, D, block = case
    q, k, v = inputs(gen, B, H, Hkv, Nq, Nk, D, torch.bfloat16, device)
    w = proj(gen, D, device)[0]
    out = genaccel.sparse_linear_attention(q, k, v, w, None, 0.2, 0.1, block, backend=backend)
    codes = sla_block_map(q, k, 0.2, 0.1, block)[0]
    ref = sparse_linear_attention_reference(q.cpu(), k.cpu(), v.cpu(), codes.cpu(), w.cpu(), None, block)[0]
    assert rel_err(out.cpu(), ref) <= RTOL[torch.bfloat16]


@cuda_only
@pytest.mark.parametrize("precision", ["tf32", "fp32"])
@pytest.mark.parametrize("fmap", FEATURE_MAPS)
def test_linear_branch_matches_cpu_float32(device, fmap, precision, gen, monkeypatch):
    """The linear branch's own outputs (before the bf16 cast of O^l, via the denominator) agree with
    the CPU op's float32 computation: with precision="tf32" to TF32-level error (the two-part bf16
    splits of the mask sums lose at most 2^-16 per term, the per-block GEMMs round their operands to
    TF32, 2^-11 relative; a float model of the branch moves the denominators by 4e-5 with
    round-to-nearest and 1e-3 with truncation); with precision="fp32" the GEMMs stay float32 and the
    splits take three parts (exact), so to float32-level error."""
    if precision == "fp32":
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    B, H, Hkv, N, D, bq, bk = 1, 4, 2, 1000, 128, 64, 64
    q, k, v = inputs(gen, B, H, Hkv, N, N, D, torch.bfloat16, device)
    codes, kv_indices, kv_counts = sla_block_map(q, k, 0.05, 0.1, (bq, bk))
    args = (codes, kv_indices, kv_counts, bq, bk, D ** -0.5, fmap, False)
    got = torch.ops.genaccel.sla_fwd(q, k, v, *args, precision=precision)
    want = torch.ops.genaccel.sla_fwd(q.cpu(), k.cpu(), v.cpu(), *(a.cpu() if torch.is_tensor(a) else a for a in args))
    assert rel_err(got[3].cpu(), want[3]) <= (1e-5 if precision == "fp32" else 2e-3)  # denominators, float32
    assert rel_err(got[1].cpu(), want[1]) <= 1e-5  # lse of the sparse branch
    assert rel_err(got[2].cpu().float(), want[2].float()) <= 1e-2  # O^l, both rounded to bf16


@cuda_only
def test_select_blocks_long_rows_in_chunks_match_cpu(device, gen):
    """Rows of 4097 blocks sort in global scratch, 4096 rows per launch: 4100 rows take two."""
    scores = torch.randn(1, 1, 4100, 4097, generator=gen)
    got = torch.ops.genaccel.sla_select_blocks(scores.to(device), 200, 400)
    want = torch.ops.genaccel.sla_select_blocks(scores, 200, 400)
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))


@cuda_only
def test_float32_is_refused_clearly(device, gen):
    q, k, v = inputs(gen, 1, 2, 2, 128, 128, 64, torch.float32, device)
    with pytest.raises(RuntimeError, match="bfloat16 and float16"):
        genaccel.sparse_linear_attention(q, k, v)


def linear_backward_errors(seed):
    """rel_err of sla_bwd's linear branch alone (grad_sparse = 0, so the sparse branch adds exact
    zeros) on CUDA against the CPU op, per (feature map, linear_over_all_keys, gradient)."""
    gen = torch.Generator().manual_seed(seed)
    B, H, Hkv, N, D, bq, bk = 2, 4, 2, 500, 64, 64, 64
    errors = {}
    for fmap in FEATURE_MAPS:
        for all_keys in (False, True):
            q, k, v = inputs(gen, B, H, Hkv, N, N, D, torch.bfloat16, "cuda")
            codes, idx, cnt = sla_block_map(q, k, 0.2, 0.1, (bq, bk))
            scale = D ** -0.5
            out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, bq, bk, scale, fmap,
                                                                  all_keys)
            g_l = torch.randn(out_l.shape, generator=gen).to(torch.bfloat16).cuda()
            args = (torch.zeros_like(out_s), g_l, q, k, v, codes, idx, cnt, out_s, lse, torch.zeros_like(lse), out_l,
                    denom, bq, bk, scale, fmap, all_keys)
            got = torch.ops.genaccel.sla_bwd(*args)
            want = torch.ops.genaccel.sla_bwd(*(a.cpu() if torch.is_tensor(a) else a for a in args))
            for name, g, w in zip("qkv", got, want):
                assert g.dtype == w.dtype and g.shape == w.shape, name
                errors[fmap, all_keys, name] = rel_err(g.cpu().float(), w.float())
    return errors


def projection_errors(seed):
    """rel_err of the CUDA ops against the CPU ops with proj_weight inside them (the linear branch on
    V W^T; dW = d(V W^T)^T V summed over the chunks, dV = d(V W^T) W): out_linear, dq, dk, dv, dw."""
    gen = torch.Generator().manual_seed(seed)
    B, H, Hkv, N, D, bq, bk = 2, 4, 2, 400, 128, 64, 64
    q, k, v = inputs(gen, B, H, Hkv, N, N, D, torch.bfloat16, "cuda")
    w = (0.3 * torch.randn(D, D, generator=gen)).cuda()
    codes, idx, cnt = sla_block_map(q, k, 0.2, 0.1, (bq, bk))
    scale = D ** -0.5
    fwd = (q, k, v, codes, idx, cnt, bq, bk, scale, "softmax", False, w)

    def cpu(args):
        return [a.cpu() if torch.is_tensor(a) else a for a in args]

    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(*fwd)
    errors = {"out_linear": rel_err(out_l.cpu().float(), torch.ops.genaccel.sla_fwd(*cpu(fwd))[2].float())}
    g_l = torch.randn(out_l.shape, generator=gen).to(torch.bfloat16).cuda()
    bwd = (torch.zeros_like(out_s), g_l, q, k, v, codes, idx, cnt, out_s, lse, torch.zeros_like(lse), out_l, denom,
           bq, bk, scale, "softmax", False, w)
    for name, g, e in zip(["dq", "dk", "dv", "dw"], torch.ops.genaccel.sla_bwd(*bwd), torch.ops.genaccel.sla_bwd(*cpu(bwd))):
        assert g.dtype == e.dtype and g.shape == e.shape, name
        errors[name] = rel_err(g.cpu().float(), e.float())
    return errors


CHUNKS = [None, "1"]  # GENACCEL_SLA_CHUNK_BYTES: the default (one chunk here), every (batch, kv head) pair its own


def in_chunks(fn, seed, chunk_bytes):
    return fn(seed) if chunk_bytes is None else run_in_child(fn, seed, env={"GENACCEL_SLA_CHUNK_BYTES": chunk_bytes})


@cuda_only
@pytest.mark.parametrize("chunk_bytes", CHUNKS, ids=["one_chunk", "chunk_per_pair"])
def test_linear_backward_matches_cpu_op(device, chunk_bytes, gen):
    """Both compute in float32 from the same inputs and round once, so they agree to about one bf16
    rounding, also when every (batch, kv head) pair is its own chunk."""
    errors = in_chunks(linear_backward_errors, int(torch.randint(1 << 30, (1,), generator=gen)), chunk_bytes)
    assert max(errors.values()) <= 5e-3, errors


@cuda_only
@pytest.mark.parametrize("chunk_bytes", CHUNKS, ids=["one_chunk", "chunk_per_pair"])
def test_projection_matches_cpu_op(device, chunk_bytes, gen):
    """out_linear to about one bf16 rounding, the gradients (TF32 GEMMs) to TF32-level error."""
    errors = in_chunks(projection_errors, int(torch.randint(1 << 30, (1,), generator=gen)), chunk_bytes)
    assert errors.pop("out_linear") <= 1e-2
    assert max(errors.values()) <= 5e-3, errors


@cuda_only
def test_forward_and_backward_make_no_host_sync(device, gen):
    """sparse_linear_attention passes check_plan=False (its plan comes from sla_block_map) and the
    backward trusts the plan its forward saw: neither waits on the device, so a model's layers
    queue up without stalls, and the forward can be captured in a CUDA graph (next test)."""
    q, k, v = (t.requires_grad_() for t in inputs(gen, 1, 4, 2, 300, 300, 64, torch.bfloat16, device))
    w, b = (t.requires_grad_() for t in proj(gen, 64, device))
    go = torch.randn(q.shape, generator=gen).to(torch.bfloat16).to(device)

    def step():
        out = genaccel.sparse_linear_attention(q, k, v, w, b, 0.2, 0.1, (64, 64))
        return torch.autograd.grad(out, (q, k, v, w, b), go)

    assert all(torch.isfinite(g).all() for g in run_without_host_sync(step))


@cuda_only
def test_forward_replays_in_a_cuda_graph(device, gen):
    q, k, v = inputs(gen, 1, 4, 2, 300, 300, 64, torch.bfloat16, device)
    w, b = proj(gen, 64, device)
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


@cuda_only
def test_unsupported_head_dim_is_refused_clearly(device, gen):
    q, k, v = inputs(gen, 1, 2, 2, 128, 128, 80, torch.bfloat16, device)
    with pytest.raises(RuntimeError, match="sla_fwd \\(CUDA\\): the linear branch's kernels take head dims 32, 64, 96"):
        genaccel.sparse_linear_attention(q, k, v)


@cuda_only
def test_backward_opcheck(device, gen):
    q, k, v = inputs(gen, 1, 2, 1, 200, 130, 64, torch.bfloat16, device)
    codes, idx, cnt = sla_block_map(q, k, 0.2, 0.1, 64)
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 64, 64, 0.125, "elu", False)
    g = torch.randn(out_s.shape, generator=gen).to(torch.bfloat16).to(device)
    args = (g, g, q, k, v, codes, idx, cnt, out_s, lse, torch.zeros_like(lse), out_l, denom, 64, 64, 0.125, "elu",
            False)
    torch.library.opcheck(torch.ops.genaccel.sla_bwd, args, test_utils=("test_schema", "test_faketensor"))
    w = torch.randn(64, 64, generator=gen).to(device)
    torch.library.opcheck(torch.ops.genaccel.sla_bwd, args + (w,), test_utils=("test_schema", "test_faketensor"))


@cuda_only
def test_backward_errors_name_the_op(device, gen):
    q, k, v = inputs(gen, 1, 2, 1, 128, 128, 64, torch.bfloat16, device)
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


def op_and_args_with_plan(op_name, gen, device):
    """(op, its args, the index of kv_indices - 1 in them, kv_indices, kv_counts) of sla_fwd or
    sla_bwd on a small bf16 problem, so that args[at + 1] is the plan's indices, args[at + 2] its counts."""
    q, k, v = inputs(gen, 1, 2, 1, 200, 130, 64, torch.bfloat16, device)
    codes, idx, cnt = sla_block_map(q, k, 0.5, 0.0, 64)
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 64, 64, 0.125, "softmax", False)
    fwd = [q, k, v, codes, idx, cnt, 64, 64, 0.125, "softmax", False]
    bwd = [out_s, out_l, q, k, v, codes, idx, cnt, out_s, lse, lse, out_l, denom, 64, 64, 0.125, "softmax", False]
    args, at = (fwd, 3) if op_name == "sla_fwd" else (bwd, 5)
    return getattr(torch.ops.genaccel, op_name), args, at, idx, cnt


@cuda_only
@pytest.mark.parametrize("op_name", ["sla_fwd", "sla_bwd"])
def test_bad_plans_raise_and_leave_the_device_usable(device, op_name, gen):
    """The plan's ranges and its consistency with the codes are checked together on the device: an
    out-of-range index (negative too, which gather would assert on) or count raises a clear error,
    and the next call still works (no device-side assert)."""
    op, args, at, idx, cnt = op_and_args_with_plan(op_name, gen, device)
    for i, bad, match in [(1, idx - 9, "kv_indices must lie in"), (1, idx + 9, "kv_indices must lie in"),
                          (2, cnt + 5, "kv_counts must lie in"), (1, 2 - idx, "must list exactly the critical blocks"),
                          (2, cnt - 1, "must list exactly the critical blocks")]:
        broken = list(args)
        broken[at + i] = bad
        with pytest.raises(RuntimeError, match=f"{op_name}: .*{match}"):
            op(*broken)
    torch.cuda.synchronize()
    assert all(torch.isfinite(t).all() for t in op(*args)[:3])


@cuda_only
@pytest.mark.parametrize("op_name", ["sla_fwd", "sla_bwd"])
def test_plans_taken_on_trust_cannot_read_out_of_bounds(device, op_name, gen):
    """check_plan=False skips the value checks, not the kernels' guards: out-of-range entries are
    skipped and counts clamped to the list's length, so a wrong plan gives wrong numbers, never an
    illegal address (the next call still works)."""
    op, args, at, idx, cnt = op_and_args_with_plan(op_name, gen, device)
    for i, bad in [(1, idx - 100000), (1, idx + 100000), (2, cnt + 5), (2, cnt - 9)]:
        broken = list(args)
        broken[at + i] = bad
        op(*broken, check_plan=False)
        torch.cuda.synchronize()
    assert all(torch.isfinite(t).all() for t in op(*args)[:3])


def forward_and_gradients_on_a_user_stream(seed):
    """SLA's output and gradients (on the CPU) computed on a stream of the caller's own, read at once."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (t.requires_grad_() for t in inputs(gen, 2, 4, 2, 700, 650, 128, torch.bfloat16, "cuda"))
    w = (0.2 * torch.randn(128, 128, generator=gen)).cuda().requires_grad_()
    go = torch.randn(q.shape, generator=gen).to(torch.bfloat16).cuda()
    user_stream = torch.cuda.Stream()
    user_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(user_stream):
        out = genaccel.sparse_linear_attention(q, k, v, w, None, 0.1, 0.1, (64, 64))
        results = [t.cpu() for t in (out, *torch.autograd.grad(out, (q, k, v, w), go))]
    torch.cuda.synchronize()
    return results


@cuda_only
def test_side_stream_matches_one_stream_bitwise(device, gen):
    """The linear branch runs on a second stream, joined before the op returns (and, in the backward,
    adding into the sparse gradients only once they are complete): forward outputs and gradients equal
    those of GENACCEL_SLA_ONE_STREAM=1 (in a child process) bit for bit."""
    seed = int(torch.randint(1 << 30, (1,), generator=gen))
    two = forward_and_gradients_on_a_user_stream(seed)
    one = run_in_child(forward_and_gradients_on_a_user_stream, seed, env={"GENACCEL_SLA_ONE_STREAM": "1"})
    for name, a, b in zip(["out", "dq", "dk", "dv", "dw"], two, one):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("bad_code", [2, 127, -2, -128])
@pytest.mark.parametrize("op_name", ["sla_fwd", "sla_bwd"])
def test_ops_refuse_codes_outside_minus_one_to_one(op_name, bad_code, gen):
    """Other code values were read as negligible or dropped the marginal part."""
    q, k, v = inputs(gen, 1, 2, 1, 200, 130, 16, torch.float32)
    codes, idx, cnt = sla_block_map(q, k, 0.5, 0.0, 64)
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 64, 64, 0.25, "softmax", False)
    bad = codes.clone()
    bad[codes != 1] = bad_code  # the plan still lists exactly the critical blocks
    fwd = [q, k, v, bad, idx, cnt, 64, 64, 0.25, "softmax", False]
    bwd = [out_s, out_l, q, k, v, bad, idx, cnt, out_s, lse, lse, out_l, denom, 64, 64, 0.25, "softmax", False]
    with pytest.raises(RuntimeError, match=f"{op_name}: codes must be -1 \\(negligible\\), 0 \\(marginal\\) or 1"):
        getattr(torch.ops.genaccel, op_name)(*(fwd if op_name == "sla_fwd" else bwd))


def test_ops_refuse_a_scale_beyond_float32(gen):
    q, k, v = inputs(gen, 1, 2, 1, 200, 130, 16, torch.float32)
    codes, idx, cnt = sla_block_map(q, k, 0.5, 0.0, 64)
    with pytest.raises(RuntimeError, match="sla_fwd: scale must be finite in float32"):
        torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 64, 64, 1e39, "softmax", False)
