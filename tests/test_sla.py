"""genaccel.sparse_linear_attention (forward) against the float64 SLA reference, its identities, the
op contract (opcheck, torch.compile) and bad input."""

import pytest
import torch

import genaccel
from conftest import RTOL, rel_err
from genaccel.attention.sla import sla_block_map
from genaccel.attention.sla.reference import FEATURE_MAPS, sparse_linear_attention_reference


def inputs(gen, B, H, Hkv, Nq, Nk, D, dtype, device="cpu"):
    def r(*s):
        return torch.randn(*s, generator=gen).to(dtype).to(device)

    return r(B, H, Nq, D), r(B, Hkv, Nk, D), r(B, Hkv, Nk, D)


def proj(gen, D, device="cpu"):
    return (0.2 * torch.randn(D, D, generator=gen)).to(device), (0.2 * torch.randn(D, generator=gen)).to(device)


CASES = [
    # B, H, Hkv, Nq, Nk, D, block
    (1, 2, 2, 256, 256, 64, (64, 64)),
    (2, 4, 2, 300, 260, 32, (64, 32)),   # GQA, partial blocks, Nq != Nk
    (1, 2, 1, 130, 400, 128, (32, 64)),  # D=128, Nk > Nq
    (1, 1, 1, 40, 50, 40, (64, 64)),     # N < one block, odd D
]


# CPU only until the CUDA SLA kernels exist (sla_fwd has no CUDA registration yet).
@pytest.mark.parametrize("device", ["cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("fmap", FEATURE_MAPS)
@pytest.mark.parametrize("topk,low_k", [(0.05, 0.1), (0.2, 0.0), (0.2, 0.1), (1.0, 0.0)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_forward_matches_reference(case, topk, low_k, fmap, dtype, device, gen):
    B, H, Hkv, Nq, Nk, D, block = case
    q, k, v = inputs(gen, B, H, Hkv, Nq, Nk, D, dtype, device)
    w, b = proj(gen, D, device)
    out = genaccel.sparse_linear_attention(q, k, v, w, b, topk, low_k, block, fmap)
    assert out.dtype == dtype and out.shape == q.shape
    codes = sla_block_map(q, k, topk, low_k, block)[0]
    ref = sparse_linear_attention_reference(q.cpu(), k.cpu(), v.cpu(), codes.cpu(), w.cpu(), b.cpu(), block, fmap)[0]
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
    q, k, v = inputs(gen, 2, 4, 1, 256, 300, 32, torch.float32)
    zero_w, zero_b = torch.zeros(32, 32), torch.zeros(32)
    out = genaccel.sparse_linear_attention(q, k, v, zero_w, zero_b, 0.25, 0.1, 64)
    codes = sla_block_map(q, k, 0.25, 0.1, 64)[0]
    sparse_only = genaccel.block_sparse_attention(q, k, v, codes == 1, 64)
    assert torch.equal(out, sparse_only)


def test_identity_projection_adds_the_linear_branch(gen):
    q, k, v = inputs(gen, 1, 2, 2, 128, 192, 16, torch.float32)
    plain = genaccel.sparse_linear_attention(q, k, v, None, None, 0.3, 0.0, 32)
    eye = genaccel.sparse_linear_attention(q, k, v, torch.eye(16), torch.zeros(16), 0.3, 0.0, 32)
    assert rel_err(plain, eye) < 1e-6


def test_rows_without_marginal_blocks_have_no_nan(gen):
    q, k, v = inputs(gen, 1, 2, 2, 256, 256, 16, torch.float32)
    out = genaccel.sparse_linear_attention(q, k, v, None, None, topk=0.25, low_k=0.75, block_size=64)
    assert torch.isfinite(out).all()


def test_return_sparsity(gen):
    q, k, v = inputs(gen, 1, 2, 2, 640, 640, 16, torch.float32)
    out, kept = genaccel.sparse_linear_attention(q, k, v, topk=0.2, block_size=64, return_sparsity=True)
    assert kept == pytest.approx(0.2)


def test_op_reports_denominator_and_lse(gen):
    q, k, v = inputs(gen, 1, 2, 2, 128, 128, 16, torch.float32)
    codes, idx, cnt = sla_block_map(q, k, 0.5, 0.0, 32)
    fq, fk = torch.softmax(q, -1), torch.softmax(k, -1)
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, fq, fk, codes, idx, cnt, 32, 32, 0.25, False)
    ref_s, ref_lse = genaccel.block_sparse_attention(q, k, v, codes == 1, 32, scale=0.25, return_lse=True)
    assert rel_err(out_s, ref_s) < 1e-6 and rel_err(lse, ref_lse) < 1e-6
    marginal = (codes == 0).repeat_interleave(32, 2).repeat_interleave(32, 3)
    expected = ((fq.double() @ fk.double().transpose(-1, -2)) * marginal).sum(-1)
    assert rel_err(denom, expected) < 1e-5


def test_opcheck(gen):
    q, k, v = inputs(gen, 1, 2, 1, 96, 80, 16, torch.float32)
    codes, idx, cnt = sla_block_map(q, k, 0.3, 0.2, 32)
    args = (q, k, v, torch.softmax(q, -1), torch.softmax(k, -1), codes, idx, cnt, 32, 32, 0.25, False)
    torch.library.opcheck(torch.ops.genaccel.sla_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_opcheck_with_grad(gen):
    q, k, v = (t.requires_grad_() for t in inputs(gen, 1, 2, 1, 96, 80, 16, torch.float32))
    codes, idx, cnt = sla_block_map(q, k, 0.3, 0.2, 32)
    fq, fk = (torch.softmax(t.detach(), -1).requires_grad_() for t in (q, k))
    args = (q, k, v, fq, fk, codes, idx, cnt, 32, 32, 0.25, False)
    torch.library.opcheck(torch.ops.genaccel.sla_fwd.default, args)


def test_compile_fullgraph(gen):
    q, k, v = inputs(gen, 1, 2, 2, 128, 128, 16, torch.float32)
    w, b = proj(gen, 16)
    eager = genaccel.sparse_linear_attention(q, k, v, w, b, 0.25, 0.25, 32)
    compiled = torch.compile(genaccel.sparse_linear_attention, backend="aot_eager", fullgraph=True)
    assert rel_err(compiled(q, k, v, w, b, 0.25, 0.25, 32), eager) < 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(feature_map="hedgehog"), "feature_map must be one of"),
        (dict(topk=1.2), "topk must be a number in"),
        (dict(topk=0.5, low_k=0.6), "topk \\+ low_k must be at most 1"),
        (dict(proj_bias=torch.zeros(16)), "proj_bias needs proj_weight"),
        (dict(proj_weight=torch.zeros(8, 16)), "proj_weight must have shape"),
        (dict(block_size=(64,)), "block_size"),
    ],
)
def test_bad_arguments(kwargs, match, gen):
    q, k, v = inputs(gen, 1, 2, 2, 64, 64, 16, torch.float32)
    with pytest.raises(ValueError, match=match):
        genaccel.sparse_linear_attention(q, k, v, **kwargs)


def test_op_rejects_bad_codes_and_feature_maps(gen):
    q, k, v = inputs(gen, 1, 2, 2, 64, 64, 16, torch.float32)
    codes, idx, cnt = sla_block_map(q, k, 0.5, 0.0, 32)
    fq, fk = torch.softmax(q, -1), torch.softmax(k, -1)
    op = torch.ops.genaccel.sla_fwd
    with pytest.raises(RuntimeError, match="codes must be int8"):
        op(q, k, v, fq, fk, codes.int(), idx, cnt, 32, 32, 0.25, False)
    with pytest.raises(RuntimeError, match="codes must have shape"):
        op(q, k, v, fq, fk, codes[..., :1], idx, cnt, 32, 32, 0.25, False)
    with pytest.raises(RuntimeError, match="phi_q / phi_k must have the shapes"):
        op(q, k, v, fq[..., :8], fk, codes, idx, cnt, 32, 32, 0.25, False)
    with pytest.raises(RuntimeError, match="phi_q and phi_k must be float32"):
        op(q, k, v, fq.double(), fk, codes, idx, cnt, 32, 32, 0.25, False)
    with pytest.raises(RuntimeError, match="kv_indices must lie in"):
        op(q, k, v, fq, fk, codes, idx + 5, cnt, 32, 32, 0.25, False)


# ---- gradients and the module ----------------------------------------------------------------

GRAD_CASES = [
    # B, H, Hkv, Nq, Nk, D, block, topk, low_k, fmap, all_keys
    (1, 2, 2, 256, 256, 32, (64, 64), 0.05, 0.1, "softmax", False),
    (2, 4, 2, 300, 260, 32, (64, 32), 0.2, 0.1, "elu", False),
    (1, 2, 1, 130, 400, 16, (32, 64), 0.2, 0.0, "relu", False),
    (1, 2, 2, 200, 200, 16, (64, 64), 1.0, 0.0, "softmax", False),
    (1, 2, 2, 200, 330, 16, (64, 64), 0.2, 0.1, "softmax", True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"{c[9]}-topk{c[7]}-lowk{c[8]}-all{int(c[10])}-D{c[5]}")
def test_gradients_match_reference(case, dtype, gen):
    B, H, Hkv, Nq, Nk, D, block, topk, low_k, fmap, all_keys = case
    q, k, v = (t.requires_grad_() for t in inputs(gen, B, H, Hkv, Nq, Nk, D, dtype))
    w, b = (t.requires_grad_() for t in proj(gen, D))
    out = genaccel.sparse_linear_attention(q, k, v, w, b, topk, low_k, block, fmap, all_keys)
    go = torch.randn(out.shape, generator=gen).to(dtype)
    grads = torch.autograd.grad((out * go).float().sum(), (q, k, v, w, b))
    codes = sla_block_map(q, k, topk, low_k, block)[0]
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v, w, b)]
    ref = sparse_linear_attention_reference(*ref_in[:3], codes, *ref_in[3:], block, fmap, all_keys)[0]
    expected = torch.autograd.grad((ref * go.double()).sum(), ref_in)
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # the bounds for gradients
    for name, g, e in zip(["q", "k", "v", "proj_weight", "proj_bias"], grads, expected):
        if e.norm() == 0:
            assert g.abs().max() == 0, name
        else:
            assert rel_err(g, e) <= tol, (name, rel_err(g, e))


def test_module_starts_as_sparse_only_and_trains(gen):
    q, k, v = inputs(gen, 1, 2, 2, 256, 256, 32, torch.float32)
    layer = genaccel.nn.SparseLinearAttention(32, topk=0.25, low_k=0.0, block_size=64)
    assert layer.proj.weight.dtype == torch.float32 and layer.proj.weight.abs().max() == 0
    codes = sla_block_map(q, k, 0.25, 0.0, 64)[0]
    assert torch.equal(layer(q, k, v), genaccel.block_sparse_attention(q, k, v, codes == 1, 64))
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
    out.float().sum().backward()
    assert layer.proj.weight.grad is not None and layer.proj.weight.grad.dtype == torch.float32
    assert torch.isfinite(layer.proj.weight.grad).all()


def test_module_rejects_bad_configuration():
    with pytest.raises(ValueError, match="feature_map must be one of"):
        genaccel.nn.SparseLinearAttention(16, feature_map="hedgehog")
    with pytest.raises(ValueError, match="topk \\+ low_k"):
        genaccel.nn.SparseLinearAttention(16, topk=0.7, low_k=0.5)
