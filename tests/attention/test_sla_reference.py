"""SLA planning (sla_block_map) against its float64 reference, and the identities that pin down the
SLA reference itself (the spec every SLA kernel is tested against)."""

import math

import pytest
import torch

import genaccel
from conftest import devices, rel_err, select_blocks_expected
from genaccel.attention.sla import sla_block_map
from genaccel.attention.sla.reference import (
    ALL_KEYS_EPS,
    FEATURE_MAPS,
    block_counts,
    feature_map,
    sla_block_map_reference,
    sparse_linear_attention_reference,
)


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen)


# ---- block map --------------------------------------------------------------------------------

MAP_CASES = [
    # B, H, Hkv, Nq, Nk, D, block, topk, low_k
    (1, 2, 2, 256, 256, 32, (64, 64), 0.05, 0.10),
    (2, 4, 2, 300, 250, 16, (64, 32), 0.2, 0.3),   # partial blocks, GQA, Nq != Nk
    (1, 3, 1, 130, 700, 8, (32, 64), 0.5, 0.0),    # no negligible class
    (1, 1, 1, 64, 640, 8, (64, 64), 1.0, 0.0),     # every block critical
    (1, 2, 2, 100, 100, 8, (16, 16), 0.0, 1.0),    # topk*Tk < 1: still one critical block
    (2, 2, 2, 40, 30, 8, (64, 64), 0.05, 0.1),     # N < one block
    (1, 2, 2, 512, 512, 8, (64, 64), 0.25, 0.75),  # topk + low_k = 1: no marginal block
]


@pytest.mark.parametrize("B,H,Hkv,Nq,Nk,D,block,topk,low_k", MAP_CASES)
def test_block_map_matches_reference(B, H, Hkv, Nq, Nk, D, block, topk, low_k, gen):
    q, k = rand(gen, B, H, Nq, D), rand(gen, B, Hkv, Nk, D)
    codes, kv_indices, kv_counts = sla_block_map(q, k, topk, low_k, block)
    ref = sla_block_map_reference(q, k, topk, low_k, block)
    assert codes.dtype == torch.int8 and codes.shape == ref.shape
    assert torch.equal(codes, ref)
    tk = codes.shape[-1]
    n_crit, n_neg = block_counts(tk, topk, low_k)
    assert ((codes == 1).sum(-1) == n_crit).all() and ((codes == -1).sum(-1) == n_neg).all()
    # The index list names exactly the critical blocks, ascending.
    expected_idx, expected_cnt = genaccel.block_mask_to_indices(codes == 1)
    assert torch.equal(kv_indices, expected_idx) and torch.equal(kv_counts, expected_cnt)


@pytest.mark.parametrize("kind", ["all_equal", "negative_and_signed_zero"])
def test_block_map_breaks_ties_like_a_stable_sort(kind, gen):
    """Equal scores: the lower block index is the more critical (and the less negligible), as in the
    reference's stable descending sort."""
    B, H, N, D = 1, 2, 640, 8
    q, k = rand(gen, B, H, N, D), rand(gen, B, H, N, D)
    if kind == "all_equal":
        q = torch.zeros_like(q)  # every score is exactly 0
    else:
        q = torch.zeros_like(q)
        q[:, :, :64] = -1.0  # query block 0: scores -pool(k).sum; the rest 0 (some -0.0)
    codes, kv_indices, _ = sla_block_map(q, k, 0.3, 0.3, 64)
    assert torch.equal(codes, sla_block_map_reference(q, k, 0.3, 0.3, (64, 64)))
    if kind == "all_equal":
        assert (codes[..., :3] == 1).all() and (codes[..., 7:] == -1).all() and (codes[..., 3:7] == 0).all()
        assert (kv_indices == torch.tensor([0, 1, 2], dtype=torch.int32)).all()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("tk,n_crit,n_neg", [(37, 5, 9), (37, 1, 36), (37, 37, 0), (1, 1, 0), (3, 2, 1),
                                             (4096, 200, 400), (5000, 250, 500)])
def test_select_blocks_orders_like_a_stable_sort(device, tk, n_crit, n_neg, gen):
    """sla_select_blocks on scores full of ties (signed zeros, infinities, NaN) against the stable
    sort; 5000 blocks take the CUDA kernel's global-memory path."""
    values = torch.tensor([-2.0, -1.0, -0.0, 0.0, 0.5, 1.0, float("inf"), -float("inf"), float("nan"), 1e-30])
    rows = (2, 3, 7) if tk < 1000 else (1, 2, 3)
    scores = values[torch.randint(0, len(values), (*rows, tk), generator=gen)]
    scores[0, 0, 0] = torch.randn(tk, generator=gen)  # and one row without ties
    codes, kv_indices = torch.ops.genaccel.sla_select_blocks(scores.to(device), n_crit, n_neg)
    want_codes, want_indices = select_blocks_expected(scores, n_crit, n_neg)
    assert codes.dtype == torch.int8 and kv_indices.dtype == torch.int32
    assert torch.equal(codes.cpu(), want_codes) and torch.equal(kv_indices.cpu(), want_indices)


@pytest.mark.parametrize("device", devices())
def test_select_blocks_errors_and_opcheck(device, gen):
    scores = torch.randn(1, 2, 4, 10, generator=gen).to(device)
    op = torch.ops.genaccel.sla_select_blocks
    for args, match in [((scores.double(), 1, 0), "float32"), ((scores[0], 1, 0), "4-D"),
                        ((scores, 0, 0), "n_critical must be in \\[1, 10\\]"),
                        ((scores, 11, 0), "n_critical"), ((scores, 4, 7), "n_negligible must be in \\[0, 6\\]"),
                        ((scores[..., :0], 1, 0), "1 to 2\\^30")]:
        with pytest.raises(RuntimeError, match=match):
            op(*args)
    torch.library.opcheck(op, (scores, 3, 2), test_utils=("test_schema", "test_faketensor"))


def test_block_counts_floor_and_clamp():
    assert block_counts(512, 0.05, 0.10) == (25, 51)
    assert block_counts(10, 0.0, 0.0) == (1, 0)  # at least one critical block
    assert block_counts(10, 0.0, 1.0) == (1, 9)  # negligible never takes the critical block
    assert block_counts(7, 1.0, 0.0) == (7, 0)
    assert block_counts(100, 0.29, 0.57) == (29, 57)  # 0.29 * 100 = 28.999999999999996 in float64


def test_block_map_uses_valid_tokens_of_partial_blocks(gen):
    """A partial last key block is pooled over its real tokens: padding it with large keys must not
    change anything."""
    q, k = rand(gen, 1, 1, 128, 8), rand(gen, 1, 1, 100, 8)
    codes = sla_block_map(q, k, 0.5, 0.0, 64)[0]
    ref = sla_block_map_reference(q, k, 0.5, 0.0, (64, 64))
    assert torch.equal(codes, ref)
    # Score of the partial block by hand: mean over its 36 tokens (after the smooth-K shift).
    ks = k - k.mean(dim=-2, keepdim=True)
    score = q[0, 0, :64].mean(0) @ ks[0, 0, 64:].mean(0)
    other = q[0, 0, :64].mean(0) @ ks[0, 0, :64].mean(0)
    assert codes[0, 0, 0, 1].item() == (1 if score > other else 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(topk=-0.1), "topk must be a number in"),
        (dict(topk=1.5), "topk must be a number in"),
        (dict(low_k=-0.01), "low_k must be a number in"),
        (dict(topk=0.6, low_k=0.5), "topk \\+ low_k must be at most 1"),
        (dict(topk="0.1"), "topk must be a number in"),
        (dict(block_size=0), "block_size"),
    ],
)
def test_block_map_bad_arguments(kwargs, match, gen):
    q, k = rand(gen, 1, 2, 64, 8), rand(gen, 1, 2, 64, 8)
    with pytest.raises(ValueError, match=match):
        sla_block_map(q, k, **kwargs)


def test_block_map_bad_shapes(gen):
    with pytest.raises(ValueError, match="q must be a 4-D tensor"):
        sla_block_map(rand(gen, 2, 64, 8), rand(gen, 1, 2, 64, 8))
    with pytest.raises(ValueError, match="must be a multiple of key heads"):
        sla_block_map(rand(gen, 1, 3, 64, 8), rand(gen, 1, 2, 64, 8))
    with pytest.raises(ValueError, match="must share batch and head dim"):
        sla_block_map(rand(gen, 1, 2, 64, 8), rand(gen, 1, 2, 64, 16))
    with pytest.raises(ValueError, match="q and k need at least one token each"):
        sla_block_map(rand(gen, 1, 2, 0, 8), rand(gen, 1, 2, 64, 8))


# ---- identities of the reference --------------------------------------------------------------


def qkv(gen, B=1, H=2, Hkv=2, Nq=200, Nk=200, D=16):
    return rand(gen, B, H, Nq, D), rand(gen, B, Hkv, Nk, D), rand(gen, B, Hkv, Nk, D)


def test_topk_one_is_dense_attention(gen):
    q, k, v = qkv(gen, Hkv=1)
    codes = sla_block_map(q, k, 1.0, 0.0, 64)[0]
    out, out_s, out_l = sparse_linear_attention_reference(q, k, v, codes, block_size=(64, 64))
    kk, vv = k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1)
    dense = torch.nn.functional.scaled_dot_product_attention(q.double(), kk, vv)
    assert rel_err(out_s, dense) < 1e-12
    assert torch.equal(out_l, torch.zeros_like(out_l))  # no marginal block, no NaN
    assert rel_err(out, dense) < 1e-12


@pytest.mark.parametrize("fmap", FEATURE_MAPS)
def test_zero_projection_is_sparse_only_and_matches_the_kernel(fmap, gen):
    q, k, v = qkv(gen, B=2, H=4, Hkv=2, Nq=190, Nk=230, D=32)
    codes, kv_indices, kv_counts = sla_block_map(q, k, 0.3, 0.2, (32, 64))
    zero_w, zero_b = torch.zeros(32, 32), torch.zeros(32)
    out, out_s, _ = sparse_linear_attention_reference(q, k, v, codes, zero_w, zero_b, (32, 64), fmap)
    assert torch.equal(out, out_s)
    kernel = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, kv_indices, kv_counts, 32, 64, 32 ** -0.5)[0]
    assert rel_err(kernel, out_s) < 1e-5


@pytest.mark.parametrize("fmap", FEATURE_MAPS)
def test_all_marginal_is_plain_linear_attention(fmap, gen):
    q, k, v = qkv(gen, Nq=96, Nk=160)
    codes = torch.zeros(1, 2, 3, 3, dtype=torch.int8)  # every block marginal
    _, _, out_l = sparse_linear_attention_reference(q, k, v, codes, block_size=(32, 64), feature_map_name=fmap)
    fq, fk = feature_map(q.double(), fmap), feature_map(k.double(), fmap)
    num = fq @ (fk.transpose(-1, -2) @ v.double())
    den = fq @ fk.sum(dim=-2, keepdim=True).transpose(-1, -2)
    expected = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))
    assert rel_err(out_l, expected) < 1e-12


@pytest.mark.parametrize("fmap", FEATURE_MAPS)
def test_pre_aggregation_equals_direct_summation(fmap, gen):
    """H_i = H_total - sum_critical h_j - sum_negligible h_j (what the kernels compute, blockwise)
    equals the reference's masked token-level formulation."""
    q, k, v = qkv(gen, B=1, H=2, Hkv=1, Nq=150, Nk=330, D=16)
    bq, bk = 32, 64
    codes = sla_block_map(q, k, 0.2, 0.2, (bq, bk))[0]
    _, _, out_l = sparse_linear_attention_reference(q, k, v, codes, block_size=(bq, bk), feature_map_name=fmap)
    fq = feature_map(q.double(), fmap)
    fk = feature_map(k.double(), fmap).repeat_interleave(2, 1)
    vv = v.double().repeat_interleave(2, 1)
    tk = math.ceil(330 / bk)
    h = torch.stack([fk[..., j * bk:(j + 1) * bk, :].transpose(-1, -2) @ vv[..., j * bk:(j + 1) * bk, :] for j in range(tk)], 2)
    z = torch.stack([fk[..., j * bk:(j + 1) * bk, :].sum(-2) for j in range(tk)], 2)
    h_total, z_total = h.sum(2), z.sum(2)
    for i in range(math.ceil(150 / bq)):
        skip = (codes[:, :, i] != 0).double()  # critical or negligible
        H_i = h_total - torch.einsum("bhj,bhjde->bhde", skip, h)
        Z_i = z_total - torch.einsum("bhj,bhjd->bhd", skip, z)
        fqi = fq[..., i * bq:(i + 1) * bq, :]
        den = fqi @ Z_i.unsqueeze(-1)
        expected = torch.where(den.abs() > 1e-12, (fqi @ H_i) / den, torch.zeros_like(fqi @ H_i))
        assert rel_err(out_l[..., i * bq:(i + 1) * bq, :], expected) < 1e-9


def test_linear_over_all_keys_variant(gen):
    q, k, v = qkv(gen, Nq=128, Nk=128)
    codes = sla_block_map(q, k, 0.25, 0.25, 32)[0]
    _, _, out_l = sparse_linear_attention_reference(q, k, v, codes, block_size=(32, 32), linear_over_all_keys=True)
    fq, fk = feature_map(q.double(), "softmax"), feature_map(k.double(), "softmax")
    expected = (fq @ (fk.transpose(-1, -2) @ v.double())) / (fq @ fk.sum(-2, keepdim=True).transpose(-1, -2) + ALL_KEYS_EPS)
    assert rel_err(out_l, expected) < 1e-12


def test_relu_zero_denominator_gives_zero_not_nan(gen):
    q, k, v = qkv(gen, Nq=64, Nk=64, D=8)
    q = -q.abs() - 0.1  # relu(q) = 0: every denominator is 0
    codes = torch.tensor([[[[1, 0]], [[0, 1]]]], dtype=torch.int8)
    _, _, out_l = sparse_linear_attention_reference(q, k, v, codes, block_size=(64, 32), feature_map_name="relu")
    assert torch.equal(out_l, torch.zeros_like(out_l))


def test_projection_is_a_shared_linear_on_the_linear_branch(gen):
    q, k, v = qkv(gen, Nq=64, Nk=128, D=8)
    codes = sla_block_map(q, k, 0.5, 0.0, 32)[0]
    w, b = rand(gen, 8, 8), rand(gen, 8)
    out, out_s, out_l = sparse_linear_attention_reference(q, k, v, codes, w, b, (32, 32))
    assert rel_err(out, out_s + out_l @ w.double().T + b.double()) < 1e-12


def test_reference_gradients_pass_gradcheck(gen):
    q, k, v = (t.double().requires_grad_() for t in qkv(gen, Nq=24, Nk=40, D=4))
    w = rand(gen, 4, 4).double().requires_grad_()
    b = rand(gen, 4).double().requires_grad_()
    codes = torch.tensor([[[[1, 0, -1], [0, 1, 0]], [[0, 0, 1], [1, -1, 0]]]], dtype=torch.int8)

    def f(q, k, v, w, b):
        return sparse_linear_attention_reference(q, k, v, codes, w, b, (16, 16))[0]

    assert torch.autograd.gradcheck(f, (q, k, v, w, b))
