"""genaccel.block_sparse_attention / torch.ops.genaccel.block_sparse_attn_fwd against the float64
reference (genaccel.attention.block_sparse.reference), plus the planner, every input check, empty tensors,
opcheck, torch.compile and autograd (the hypothesis fuzz is in test_block_sparse_fuzz.py).

Data: fresh random inputs from the per-test `gen` fixture (conftest.py) or from seeds hypothesis
draws; never zeros, never one seed for everything.
"""

import math
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

import genaccel
from genaccel.attention.block_sparse.reference import expand_block_mask
from genaccel.testing import make_input, make_mask

from conftest import (
    BAD,
    DTYPES,
    attention_backends,
    check_against_reference,
    devices,
    needs_cuda,
    rel_err,
    run_without_host_sync,
)

OP = torch.ops.genaccel.block_sparse_attn_fwd
DTYPE_ID = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _pair(bs):
    return (bs, bs) if isinstance(bs, int) else tuple(bs)


def hand_plan(mask, max_kv=None, pad=-1, reverse=False):
    """Index lists built with plain Python loops (independent of block_mask_to_indices)."""
    Bm, Hm, Tq, Tk = mask.shape
    rows = {}
    for b in range(Bm):
        for h in range(Hm):
            for i in range(Tq):
                sel = [j for j in range(Tk) if mask[b, h, i, j]]
                rows[b, h, i] = sel[::-1] if reverse else sel
    width = max([len(r) for r in rows.values()] + [0]) if max_kv is None else max_kv
    idx = torch.full((Bm, Hm, Tq, width), pad, dtype=torch.int32)
    cnt = torch.zeros((Bm, Hm, Tq), dtype=torch.int32)
    for (b, h, i), sel in rows.items():
        cnt[b, h, i] = len(sel)
        if sel:
            idx[b, h, i, : len(sel)] = torch.tensor(sel, dtype=torch.int32)
    return idx, cnt


def skip_if_cuda_refuses(device, fn):
    """Runs fn(). A configuration the CUDA kernel has no kernel for (dtype, head dim, block sizes)
    is refused with a RuntimeError saying so (DESIGN.md: "If a configuration has no kernel, say
    so"): skip then. Failed launches and every CPU error still fail. test_cuda_core_configs
    pins down what the CUDA kernel must run."""
    if device != "cuda":
        return fn()
    try:
        return fn()
    except RuntimeError as e:
        msg = str(e)
        if "(CUDA)" in msg and "launch" not in msg:
            pytest.skip(f"no CUDA kernel for this configuration: {msg.splitlines()[0]}")
        raise


def attn(device, *args, **kwargs):
    """genaccel.block_sparse_attention, skipping a configuration the CUDA kernel refuses."""
    return skip_if_cuda_refuses(device, lambda: genaccel.block_sparse_attention(*args, **kwargs))


def op(device, *args):
    """The raw op, skipping a configuration the CUDA kernel refuses."""
    return skip_if_cuda_refuses(device, lambda: OP(*args))


# ----------------------------------------------------------------------------------------------
# the matrix: kernel vs float64 reference
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    B: int = 1
    H: int = 2
    Hkv: Optional[int] = None  # default H
    Nq: int = 256
    Nk: Optional[int] = None  # default Nq
    D: int = 64
    bs: object = (64, 64)
    mask: str = "random"
    density: float = 0.5
    mask_b: bool = True  # False: the mask has batch size 1 (broadcast)
    mask_h: bool = True  # False: the mask has 1 head (broadcast)
    layout: str = "contig"
    scale: Optional[float] = None

    @property
    def hkv(self):
        return self.H if self.Hkv is None else self.Hkv

    @property
    def nk(self):
        return self.Nq if self.Nk is None else self.Nk


CASES = [
    Case("full_mask", B=2, mask="full"),
    Case("empty_mask", mask="empty", Nq=200),
    Case("single_block", B=2, H=3, Nq=300, mask="single"),
    Case("single_last_partial_block", Nq=200, Nk=150, mask="single_last"),
    Case("density_0.05", B=2, Nq=300, bs=32, density=0.05),
    Case("density_0.2", Nq=300, bs=32, density=0.2),
    Case("density_0.5", Nq=288, density=0.5),
    Case("density_0.9", Nq=256, bs=32, density=0.9),
    Case("empty_rows", B=2, Nq=256, mask="empty_rows", density=0.6),
    Case("n_not_multiple_of_block", Nq=200, density=0.7),
    Case("n_less_than_block", Nq=40, mask="full"),
    Case("n_less_than_block_nq_ne_nk", Nq=17, Nk=50, mask="full"),
    Case("gqa_h4_hkv1", H=4, Hkv=1, Nq=192, density=0.6),
    Case("gqa_h4_hkv2", B=2, H=4, Hkv=2, Nq=190, density=0.6),
    Case("nq_gt_nk", Nq=300, Nk=130, density=0.6),
    Case("nq_lt_nk", Nq=70, Nk=260, density=0.6),
    Case("batch3", B=3, Nq=130, density=0.6),
    Case("d32", D=32, Nq=200, density=0.6),
    Case("d128", D=128, Nq=200, density=0.6),
    Case("d40_odd", D=40, Nq=150, density=0.6),
    Case("block_64x32", Nq=200, Nk=250, bs=(64, 32), density=0.5),
    Case("block_32x128", Nq=200, Nk=300, bs=(32, 128), density=0.6),
    Case("block_int_32", Nq=150, bs=32, density=0.5),
    Case("block_16x16", Nq=100, bs=(16, 16), density=0.4),
    Case("block_1x1_token_mask", Nq=30, Nk=40, bs=(1, 1), density=0.3),
    Case("mask_bcast_1x1", B=2, H=3, Nq=130, mask_b=False, mask_h=False),
    Case("mask_bcast_Bx1", B=2, H=3, Nq=130, mask_h=False),
    Case("mask_bcast_1xH", B=2, H=3, Nq=130, mask_b=False),
    Case("mask_bcast_1x1_gqa", B=2, H=4, Hkv=2, Nq=130, mask_b=False, mask_h=False),
    Case("layout_transposed_BNHD", B=2, Nq=150, layout="transposed"),
    Case("layout_transposed_gqa", B=2, H=4, Hkv=2, Nq=150, layout="transposed"),
    Case("layout_sliced_last_dim", B=2, Nq=150, layout="sliced"),
    Case("layout_narrow_rows", Nq=150, layout="narrow"),
    Case("layout_expanded_batch", B=3, Nq=150, layout="expanded"),
    Case("scale_2_peaky", Nq=200, scale=2.0),
    Case("scale_0.01", Nq=200, scale=0.01),
    Case("scale_negative", Nq=200, scale=-0.3),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_ID.get)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(case, device, dtype, gen):
    bq, bk = _pair(case.bs)
    q = make_input(gen, (case.B, case.H, case.Nq, case.D), dtype, device, case.layout)
    k = make_input(gen, (case.B, case.hkv, case.nk, case.D), dtype, device, case.layout)
    v = make_input(gen, (case.B, case.hkv, case.nk, case.D), dtype, device, case.layout)
    mshape = (case.B if case.mask_b else 1, case.H if case.mask_h else 1, -(-case.Nq // bq), -(-case.nk // bk))
    mask = make_mask(gen, mshape, case.mask, case.density).to(device)
    before = [t.clone() for t in (q, k, v, mask)]

    def run():
        return genaccel.block_sparse_attention(q, k, v, mask, case.bs, scale=case.scale, return_lse=True)

    out, lse = skip_if_cuda_refuses(device, run)
    check_against_reference(out, lse, q, k, v, mask, case.bs, case.scale, dtype)
    for t, t0 in zip((q, k, v, mask), before):
        assert torch.equal(t, t0), "an input was modified"
    if case.mask == "empty":
        assert torch.isneginf(lse).all() and (out == 0).all()
    if case.mask == "full":
        assert torch.isfinite(lse).all()


CUDA_CORE = [
    # (id, B, H, Hkv, Nq, Nk, D, block_size, layout, mask batch/heads broadcast)
    ("d64_b64_gqa_tail", 2, 4, 2, 200, 150, 64, (64, 64), "contig", (True, True)),
    ("d128_b128x64_nq_lt_nk", 1, 2, 1, 100, 300, 128, (128, 64), "transposed", (False, True)),
    ("d64_b64x128_bcast", 2, 3, 3, 257, 129, 64, (64, 128), "narrow", (False, False)),
    ("d128_b64x256_lt_block", 1, 2, 2, 40, 50, 128, (64, 256), "sliced", (True, False)),
    # the D=64, block_q=128 kernel instance (no other CUDA test reaches it); block_k 192 with a
    # 2-key last tile and a skipped one
    ("d64_b128x192_tail", 1, 2, 2, 300, 450, 64, (128, 192), "contig", (True, True)),
    # long lists (~20 tiles per query block): the double-buffered walk well past its first stages
    ("d128_b64_long_lists", 1, 2, 2, 1500, 2600, 128, (64, 64), "contig", (False, True)),
]


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=DTYPE_ID.get)
@pytest.mark.parametrize("cfg", CUDA_CORE, ids=lambda c: c[0])
@pytest.mark.parametrize("backend", attention_backends())
def test_cuda_core_configs(cfg, dtype, backend, gen):
    """What the CUDA kernels must run (never skipped as unsupported): half types, D 64/128,
    64/128-token query blocks, with GQA, ragged tails, Nq != Nk, broadcast masks, strided inputs;
    with the mma.sync kernel and, on Hopper, the wgmma one."""
    _, B, H, Hkv, Nq, Nk, D, bs, layout, (mb, mh) = cfg
    q = make_input(gen, (B, H, Nq, D), dtype, "cuda", layout)
    k, v = (make_input(gen, (B, Hkv, Nk, D), dtype, "cuda", layout) for _ in range(2))
    Tq, Tk = -(-Nq // bs[0]), -(-Nk // bs[1])
    # Not "empty_rows": it empties the first and last query blocks, i.e. every row when Tq == 1
    # and always the partial last query block. Here the last (partial) query block always attends
    # to the last (partial) key block, and with Tq >= 3 one query block selects nothing (count 0).
    mask = make_mask(gen, (B if mb else 1, H if mh else 1, Tq, Tk), "random", 0.6)
    mask[..., -1, -1] = True
    if Tq >= 3:
        mask[..., 1, :] = False
    out, lse = genaccel.block_sparse_attention(q, k, v, mask.cuda(), bs, return_lse=True, backend=backend)
    check_against_reference(out, lse, q, k, v, mask, bs, None, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_ID.get)
@pytest.mark.parametrize("device", devices())
def test_matches_reference_n1000(device, dtype, gen):
    B, H, N, D, bs = 1, 2, 1000, 64, (64, 64)
    q, k, v = (make_input(gen, (B, H, N, D), dtype, device) for _ in range(3))
    mask = make_mask(gen, (B, H, 16, 16), "empty_rows", 0.3).to(device)
    out, lse = attn(device, q, k, v, mask, bs, return_lse=True)
    check_against_reference(out, lse, q, k, v, mask, bs, None, dtype)


@pytest.mark.parametrize("device", devices())
def test_large_logits_are_stable(device, gen):
    """Scores of magnitude ~1e3 (online-softmax rescaling across key blocks must not overflow)."""
    q, k, v = (make_input(gen, (1, 2, 160, 32), torch.float32, device) for _ in range(3))
    q = q * 100
    mask = make_mask(gen, (1, 2, 5, 5), "random", 0.7).to(device)
    out, lse = attn(device, q, k, v, mask, 32, return_lse=True)
    assert lse[torch.isfinite(lse)].abs().max() > 100  # the case is what it says
    check_against_reference(out, lse, q, k, v, mask, 32, None, torch.float32)


@pytest.mark.parametrize("device", devices())
def test_return_lse_flag_and_block_size_forms(device, gen):
    q, k, v = (make_input(gen, (2, 2, 100, 32), torch.float32, device) for _ in range(3))
    mask = make_mask(gen, (2, 2, 4, 4), "random", 0.6).to(device)
    out_only = attn(device, q, k, v, mask, 32)
    assert isinstance(out_only, torch.Tensor)
    res = genaccel.block_sparse_attention(q, k, v, mask, (32, 32), return_lse=True)
    assert isinstance(res, tuple) and len(res) == 2
    out, lse = res
    torch.testing.assert_close(out_only, out, rtol=0, atol=0)
    out_list = genaccel.block_sparse_attention(q, k, v, mask, [32, 32])
    torch.testing.assert_close(out_list, out, rtol=0, atol=0)
    check_against_reference(out, lse, q, k, v, mask, 32, None, torch.float32)


@pytest.mark.parametrize("device", devices())
def test_default_scale_is_inverse_sqrt_d(device, gen):
    q, k, v = (make_input(gen, (1, 2, 80, 48), torch.float32, device) for _ in range(3))
    mask = make_mask(gen, (1, 2, 3, 3), "random", 0.7).to(device)
    default = attn(device, q, k, v, mask, 32)
    explicit = genaccel.block_sparse_attention(q, k, v, mask, 32, scale=1 / math.sqrt(48))
    other = genaccel.block_sparse_attention(q, k, v, mask, 32, scale=0.5)
    torch.testing.assert_close(default, explicit, rtol=1e-6, atol=1e-6)
    assert rel_err(other, default) > 1e-3  # the scale is used at all


@pytest.mark.parametrize("device", devices())
def test_scale_zero_averages_selected_values(device, gen):
    """scale = 0: uniform weights over the selected keys, lse = log(number of selected keys)."""
    q, k, v = (make_input(gen, (1, 1, 50, 16), torch.float32, device) for _ in range(3))
    mask = make_mask(gen, (1, 1, 4, 4), "empty_rows", 0.5).to(device)
    out, lse = attn(device, q, k, v, mask, 16, scale=0.0, return_lse=True)
    check_against_reference(out, lse, q, k, v, mask, 16, 0.0, torch.float32)
    tok = expand_block_mask(mask.cpu(), 50, 50, (16, 16))[0, 0]
    n = tok.sum(-1)
    torch.testing.assert_close(lse[0, 0].cpu()[n > 0], n[n > 0].float().log(), rtol=1e-5, atol=1e-5)


def test_thread_count_does_not_change_result(gen):
    q, k, v = (make_input(gen, (2, 2, 200, 32), torch.float32, "cpu") for _ in range(3))
    mask = make_mask(gen, (2, 2, 7, 7), "random", 0.5)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a, la = genaccel.block_sparse_attention(q, k, v, mask, 32, return_lse=True)
        torch.set_num_threads(max(2, old))
        b, lb = genaccel.block_sparse_attention(q, k, v, mask, 32, return_lse=True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.parametrize("device", devices())
def test_output_is_fresh_contiguous_memory(device, gen):
    q, k, v = (make_input(gen, (1, 2, 64, 32), torch.float32, device) for _ in range(3))
    mask = make_mask(gen, (1, 2, 2, 2), "full").to(device)
    out, lse = attn(device, q, k, v, mask, 32, return_lse=True)
    assert out.is_contiguous() and lse.is_contiguous()
    assert out.data_ptr() not in (q.data_ptr(), k.data_ptr(), v.data_ptr())


# ----------------------------------------------------------------------------------------------
# the raw op with hand-built plans
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_ID.get)
@pytest.mark.parametrize("device", devices())
def test_raw_op_hand_built_plan_equals_wrapper(device, dtype, gen):
    B, H, Hkv, Nq, Nk, D, bs = 2, 4, 2, 150, 110, 32, (32, 64)
    q = make_input(gen, (B, H, Nq, D), dtype, device)
    k, v = (make_input(gen, (B, Hkv, Nk, D), dtype, device) for _ in range(2))
    mask = make_mask(gen, (B, H, 5, 2), "empty_rows", 0.6)
    scale = 0.2
    want, want_lse = attn(device, q, k, v, mask.to(device), bs, scale=scale, return_lse=True)
    # Padding beyond the counts is garbage on purpose (must never be read), and wider than Tk.
    idx, cnt = hand_plan(mask, max_kv=4, pad=12345)
    out, lse = OP(q, k, v, idx.to(device), cnt.to(device), bs[0], bs[1], scale)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse, want_lse, rtol=1e-6, atol=1e-6)
    check_against_reference(out, lse, q, k, v, mask, bs, scale, dtype)


@pytest.mark.parametrize("device", devices())
def test_raw_op_broadcast_plan(device, gen):
    """A (1, 1, Tq, max_kv) plan serves every batch and head; so does an expanded one."""
    B, H, N, D, bs = 2, 4, 130, 32, 32
    q, k, v = (make_input(gen, (B, H, N, D), torch.float32, device) for _ in range(3))
    mask = make_mask(gen, (1, 1, 5, 5), "empty_rows", 0.5)
    idx, cnt = hand_plan(mask)
    out, lse = op(device, q, k, v, idx.to(device), cnt.to(device), bs, bs, 0.25)
    check_against_reference(out, lse, q, k, v, mask, bs, 0.25, torch.float32)
    idx_e = idx.to(device).expand(B, H, -1, -1)
    cnt_e = cnt.to(device).expand(B, H, -1)
    assert idx_e.stride(0) == 0
    out_e, lse_e = OP(q, k, v, idx_e, cnt_e, bs, bs, 0.25)
    torch.testing.assert_close(out_e, out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse_e, lse, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", devices())
def test_raw_op_unsorted_and_noncontiguous_plan(device, gen):
    """Descending index lists and a non-contiguous plan select the same key blocks."""
    B, H, N, D, bs = 1, 2, 200, 32, 32
    q, k, v = (make_input(gen, (B, H, N, D), torch.float32, device) for _ in range(3))
    mask = make_mask(gen, (B, H, 7, 7), "random", 0.6)
    idx, cnt = hand_plan(mask, reverse=True)
    out, lse = op(device, q, k, v, idx.to(device), cnt.to(device), bs, bs, 0.15)
    check_against_reference(out, lse, q, k, v, mask, bs, 0.15, torch.float32)
    # An ascending plan in non-contiguous int32 tensors (stored in another dim order, viewed back).
    idx2, cnt2 = hand_plan(mask)
    idx_nc = idx2.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
    cnt_nc = cnt2.transpose(1, 2).contiguous().transpose(1, 2)
    assert not idx_nc.is_contiguous() and not cnt_nc.is_contiguous()
    out2, lse2 = OP(q, k, v, idx_nc.to(device), cnt_nc.to(device), bs, bs, 0.15)
    torch.testing.assert_close(out2, out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse2, lse, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# the planner
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 6, 3), (3, 1, 1, 9)], ids=lambda s: "x".join(map(str, s)))
def test_planner_format(shape, gen):
    mask = make_mask(gen, shape, "empty_rows" if shape[2] > 2 else "random", 0.5)
    idx, cnt = genaccel.block_mask_to_indices(mask)
    want_cnt = mask.sum(-1)
    width = int(want_cnt.max())
    assert idx.dtype == torch.int32 and cnt.dtype == torch.int32
    assert idx.shape == (*shape[:3], width) and cnt.shape == shape[:3]
    assert idx.is_contiguous() and cnt.is_contiguous()
    assert torch.equal(cnt, want_cnt.int())
    for b in range(shape[0]):
        for h in range(shape[1]):
            for i in range(shape[2]):
                sel = torch.nonzero(mask[b, h, i]).flatten().tolist()  # ascending
                row = idx[b, h, i].tolist()
                assert row == sel + [-1] * (width - len(sel)), (b, h, i)
    # It is exactly what the hand-built plan says.
    hidx, hcnt = hand_plan(mask)
    assert torch.equal(idx, hidx) and torch.equal(cnt, hcnt)


def test_planner_max_kv_blocks_argument(gen):
    mask = make_mask(gen, (2, 2, 4, 6), "empty_rows", 0.5)
    tk = mask.shape[-1]
    idx, cnt = genaccel.block_mask_to_indices(mask, max_kv_blocks=tk)
    assert idx.shape == (2, 2, 4, tk)
    hidx, hcnt = hand_plan(mask, max_kv=tk)
    assert torch.equal(idx, hidx) and torch.equal(cnt, hcnt)
    # Exactly the largest row count: the same lists as the default.
    m = int(mask.sum(-1).max())
    assert torch.equal(genaccel.block_mask_to_indices(mask, max_kv_blocks=m)[0], genaccel.block_mask_to_indices(mask)[0])
    # 0 on an empty mask.
    idx0, cnt0 = genaccel.block_mask_to_indices(torch.zeros(1, 1, 3, 4, dtype=torch.bool))
    assert idx0.shape == (1, 1, 3, 0) and torch.equal(cnt0, torch.zeros(1, 1, 3, dtype=torch.int32))
    idx0, cnt0 = genaccel.block_mask_to_indices(torch.zeros(1, 1, 3, 4, dtype=torch.bool), max_kv_blocks=0)
    assert idx0.shape == (1, 1, 3, 0)


def test_planner_max_kv_blocks_below_row_count_is_refused():
    """A cap below the largest row would silently drop selected blocks: refused."""
    mask = torch.tensor([[[[True, False, True, True], [False, True, False, False]]]])
    with pytest.raises(ValueError, match="max_kv_blocks=2 is smaller than the 3 blocks"):
        genaccel.block_mask_to_indices(mask, max_kv_blocks=2)
    idx, cnt = genaccel.block_mask_to_indices(mask, max_kv_blocks=3)
    assert idx.tolist() == [[[[0, 2, 3], [1, -1, -1]]]]
    assert cnt.tolist() == [[[3, 1]]]


@pytest.mark.parametrize("mshape", [(1, 1, 3, 5), (2, 1, 3, 5), (1, 3, 3, 5), (2, 3, 3, 5)], ids=["1x1", "Bx1", "1xH", "BxH"])
def test_planner_keeps_broadcast_dims(mshape, gen):
    mask = make_mask(gen, mshape, "random", 0.5)
    idx, cnt = genaccel.block_mask_to_indices(mask)
    assert idx.shape[:3] == mshape[:3] and cnt.shape == mshape[:3]


def test_planner_noncontiguous_mask(gen):
    base = make_mask(gen, (3, 2, 6, 5), "random", 0.5)
    mask = base.transpose(0, 1)  # (2, 3, 6, 5), non-contiguous
    assert not mask.is_contiguous()
    idx, cnt = genaccel.block_mask_to_indices(mask)
    hidx, hcnt = hand_plan(mask.contiguous())
    assert torch.equal(idx, hidx) and torch.equal(cnt, hcnt)


@pytest.mark.parametrize("shape", [(0, 2, 3, 4), (1, 1, 0, 4), (1, 1, 3, 0), (0, 0, 0, 0)], ids=lambda s: "x".join(map(str, s)))
def test_planner_empty_masks(shape):
    mask = torch.zeros(shape, dtype=torch.bool)
    idx, cnt = genaccel.block_mask_to_indices(mask)
    assert idx.dtype == torch.int32 and cnt.dtype == torch.int32
    assert cnt.shape == shape[:3] and idx.shape[:3] == shape[:3]
    assert idx.shape[3] <= shape[3]
    assert (cnt == 0).all()


@pytest.mark.parametrize(
    "mask, kwargs, match",
    [
        pytest.param(torch.ones(1, 1, 2, 2, dtype=torch.uint8), {}, "block_mask must be a bool", id="uint8"),
        pytest.param(torch.ones(1, 1, 2, 2), {}, "block_mask must be a bool", id="float"),
        pytest.param([[[[True]]]], {}, "block_mask must be a bool", id="list"),
        pytest.param(torch.ones(2, 2, dtype=torch.bool), {}, "block_mask must be 4-D", id="2d"),
        pytest.param(torch.ones(1, 2, 2, dtype=torch.bool), {}, "block_mask must be 4-D", id="3d"),
        pytest.param(torch.ones(1, 1, 1, 2, 2, dtype=torch.bool), {}, "block_mask must be 4-D", id="5d"),
        pytest.param(torch.ones(1, 1, 2, 3, dtype=torch.bool), {"max_kv_blocks": -1}, "max_kv_blocks", id="max_kv_negative"),
        pytest.param(torch.ones(1, 1, 2, 3, dtype=torch.bool), {"max_kv_blocks": 4}, "max_kv_blocks", id="max_kv_above_tk"),
        pytest.param(torch.ones(1, 1, 2, 3, dtype=torch.bool), {"max_kv_blocks": "3"}, "max_kv_blocks must be an int", id="max_kv_str"),
        pytest.param(torch.ones(1, 1, 2, 3, dtype=torch.bool), {"max_kv_blocks": True}, "max_kv_blocks must be an int", id="max_kv_bool"),
        pytest.param(torch.ones(1, 1, 2, 3, dtype=torch.bool), {"max_kv_blocks": 3.0}, "max_kv_blocks must be an int", id="max_kv_float"),
    ],
)
def test_planner_bad_inputs(mask, kwargs, match):
    with pytest.raises(BAD, match=match):
        genaccel.block_mask_to_indices(mask, **kwargs)


def test_planner_compiled_defaults_to_tk(gen):
    mask = make_mask(gen, (2, 2, 4, 6), "empty_rows", 0.4)
    f = torch.compile(genaccel.block_mask_to_indices, backend="aot_eager", fullgraph=True)
    idx, cnt = f(mask)
    want_idx, want_cnt = genaccel.block_mask_to_indices(mask, max_kv_blocks=6)
    assert torch.equal(idx, want_idx) and torch.equal(cnt, want_cnt)


# ----------------------------------------------------------------------------------------------
# bad input: every check of csrc/ops/attention.cpp (raw op) and of the Python wrapper
# ----------------------------------------------------------------------------------------------

# Valid base: B=2, H=4, Hkv=2, Nq=100, Nk=80, D=32, blocks (32, 32) -> Tq=4, Tk=3.
B0, H0, HKV0, NQ0, NK0, D0, BQ0, BK0 = 2, 4, 2, 100, 80, 32, 32, 32


def _base_op_args(gen, device="cpu", dtype=torch.float32):
    q = make_input(gen, (B0, H0, NQ0, D0), dtype, device)
    k = make_input(gen, (B0, HKV0, NK0, D0), dtype, device)
    v = make_input(gen, (B0, HKV0, NK0, D0), dtype, device)
    mask = make_mask(gen, (B0, H0, 4, 3), "random", 0.6)
    mask[..., 0] = True  # every row selects block 0: counts >= 1 everywhere
    idx, cnt = hand_plan(mask, max_kv=3)
    return dict(q=q, k=k, v=v, kv_indices=idx.to(device), kv_counts=cnt.to(device), block_q=BQ0, block_k=BK0, scale=0.125)


def _set(**kw):
    return lambda a: {**a, **kw}


def _with(name, fn):
    return lambda a: {**a, name: fn(a[name], a)}


def _plan_edit(fn):
    """Edit a copy of kv_indices / kv_counts in place."""

    def mutate(a):
        idx, cnt = a["kv_indices"].clone(), a["kv_counts"].clone()
        fn(idx, cnt)
        return {**a, "kv_indices": idx, "kv_counts": cnt}

    return mutate


OP_BAD = [
    # ranks and dtypes of q / k / v
    ("q_3d", _with("q", lambda t, a: t[0]), r"q must be 4-D"),
    ("q_5d", _with("q", lambda t, a: t.unsqueeze(0)), r"q must be 4-D"),
    ("k_3d", _with("k", lambda t, a: t[0]), r"k must be 4-D"),
    ("v_2d", _with("v", lambda t, a: t[0, 0]), r"v must be 4-D"),
    ("q_float64", lambda a: {**a, "q": a["q"].double(), "k": a["k"].double(), "v": a["v"].double()}, r"q must be float32, float16 or bfloat16.*Double"),
    ("k_int32", _with("k", lambda t, a: t.int()), r"k must be float32, float16 or bfloat16"),
    ("v_bool", _with("v", lambda t, a: t > 0), r"v must be float32, float16 or bfloat16"),
    ("q_int64", _with("q", lambda t, a: t.long()), r"q must be float32, float16 or bfloat16"),
    ("k_fp16_q_fp32", _with("k", lambda t, a: t.half()), r"q, k, v must share one dtype"),
    ("v_bf16_q_fp32", _with("v", lambda t, a: t.bfloat16()), r"q, k, v must share one dtype"),
    # shapes of q / k / v
    ("k_batch", _with("k", lambda t, a: t[:1]), r"batch of k 1 and v 2 must equal batch of q 2"),
    ("v_batch", _with("v", lambda t, a: t[:1]), r"batch of k 2 and v 1 must equal batch of q 2"),
    ("kv_heads_differ", _with("v", lambda t, a: t[:, :1]), r"k and v must have the same number of heads, got 2 and 1"),
    ("kv_length_differ", _with("v", lambda t, a: t[:, :, :70]), r"k and v must have the same length, got 80 and 70"),
    ("k_head_dim", _with("k", lambda t, a: t[..., :16]), r"head dim of k 16 and v 32 must equal head dim of q 32"),
    ("qkv_head_dim_differs_from_q", lambda a: {**a, "k": a["k"][..., :16], "v": a["v"][..., :16]}, r"must equal head dim of q 32"),
    ("h_not_multiple_of_hkv", lambda a: {**a, "k": torch.cat([a["k"], a["k"][:, :1]], 1), "v": torch.cat([a["v"], a["v"][:, :1]], 1)}, r"query heads 4 must be a multiple of key/value heads 3"),
    ("hkv_zero", lambda a: {**a, "k": a["k"][:, :0], "v": a["v"][:, :0]}, r"multiple of key/value heads 0"),
    ("head_dim_0", lambda a: {**a, **{n: a[n][..., :0] for n in "qkv"}}, r"head dim must be in \[1, 256\], got 0"),
    ("head_dim_257", lambda a: {**a, **{n: torch.randn(*a[n].shape[:3], 257, dtype=a[n].dtype) for n in "qkv"}}, r"head dim must be in \[1, 256\], got 257"),
    # block sizes and scale
    ("block_q_0", _set(block_q=0), r"block_q and block_k must be in \[1, 2\^31 - 1\], got \(0, 32\)"),
    ("block_k_negative", _set(block_k=-32), r"block_q and block_k must be in \[1, 2\^31 - 1\], got \(32, -32\)"),
    ("scale_nan", _set(scale=float("nan")), r"scale must be finite"),
    ("scale_inf", _set(scale=float("inf")), r"scale must be finite"),
    ("scale_minus_inf", _set(scale=float("-inf")), r"scale must be finite"),
    # the plan: dtypes, ranks, shapes
    ("kv_indices_int64", _with("kv_indices", lambda t, a: t.long()), r"kv_indices and kv_counts must be int32.*Long"),
    ("kv_counts_int64", _with("kv_counts", lambda t, a: t.long()), r"kv_indices and kv_counts must be int32"),
    ("kv_indices_float", _with("kv_indices", lambda t, a: t.float()), r"kv_indices and kv_counts must be int32"),
    ("kv_indices_3d", _with("kv_indices", lambda t, a: t[0]), r"kv_indices must be 4-D"),
    ("kv_counts_4d", _with("kv_counts", lambda t, a: t.unsqueeze(-1)), r"kv_counts must be 3-D"),
    ("kv_indices_batch_3", _with("kv_indices", lambda t, a: torch.cat([t, t[:1]])), r"kv_indices must have shape \(2 or 1, 4 or 1, 4, max_kv\)"),
    ("kv_indices_heads_2", _with("kv_indices", lambda t, a: t[:, :2]), r"kv_indices must have shape"),
    ("kv_indices_tq_3", _with("kv_indices", lambda t, a: t[:, :, :3]), r"kv_indices must have shape .* for Nq=100 and block_q=32"),
    ("kv_counts_shape", _with("kv_counts", lambda t, a: t[:, :, :3]), r"kv_counts must have shape"),
    ("kv_counts_broadcast_mismatch", _with("kv_counts", lambda t, a: t[:1]), r"kv_counts must have shape"),
    # the plan: value ranges
    ("kv_counts_negative", _plan_edit(lambda i, c: c.__setitem__((0, 0, 0), -1)), r"kv_counts must lie in \[0, 3\]"),
    ("kv_counts_above_max_kv", _plan_edit(lambda i, c: c.__setitem__((1, 3, 2), 4)), r"kv_counts must lie in \[0, 3\]"),
    ("kv_indices_negative", _plan_edit(lambda i, c: i.__setitem__((1, 2, 3, 0), -1)), r"kv_indices must lie in \[0, 3\)"),
    ("kv_indices_eq_tk", _plan_edit(lambda i, c: i.__setitem__((0, 1, 2, 0), 3)), r"kv_indices must lie in \[0, 3\) .*Nk=80, block_k=32"),
    ("kv_indices_huge", _plan_edit(lambda i, c: i.__setitem__((0, 0, 0, 0), 2**31 - 1)), r"kv_indices must lie in \[0, 3\)"),
    ("kv_indices_min_int", _plan_edit(lambda i, c: i.__setitem__((0, 0, 0, 0), -(2**31))), r"kv_indices must lie in \[0, 3\)"),
]


@pytest.mark.parametrize("mutate, match", [pytest.param(m, r, id=i) for i, m, r in OP_BAD])
def test_op_rejects_bad_input(mutate, match, gen):
    args = mutate(_base_op_args(gen))
    with pytest.raises(BAD, match=match):
        OP(**args)


def test_op_base_args_are_valid(gen):
    """The base of test_op_rejects_bad_input is itself accepted and correct (so each failure
    there is due to its one mutation)."""
    a = _base_op_args(gen)
    out, lse = OP(**a)
    mask = torch.zeros(B0, H0, 4, 3, dtype=torch.bool)
    for b in range(B0):
        for h in range(H0):
            for i in range(4):
                for j in a["kv_indices"][b, h, i, : a["kv_counts"][b, h, i]].tolist():
                    mask[b, h, i, j] = True
    check_against_reference(out, lse, a["q"], a["k"], a["v"], mask, (BQ0, BK0), a["scale"], torch.float32)


def test_op_ignores_padding_beyond_counts(gen):
    """Out-of-range values past each row's count are padding, not errors."""
    a = _base_op_args(gen)
    want, want_lse = OP(**a)
    idx = a["kv_indices"].clone()
    pos = torch.arange(idx.shape[-1]).view(1, 1, 1, -1)
    idx[pos >= a["kv_counts"].unsqueeze(-1)] = -7
    out, lse = OP(**{**a, "kv_indices": idx})
    assert torch.equal(out, want) and torch.equal(lse, want_lse)


# The value-range cases of OP_BAD: what check_plan=False takes on trust on CUDA.
PLAN_VALUE_BAD = [pytest.param(m, r, id=i) for i, m, r in OP_BAD if i.startswith(("kv_counts_negative",
                  "kv_counts_above", "kv_indices_negative", "kv_indices_eq", "kv_indices_huge", "kv_indices_min"))]


@pytest.mark.parametrize("mutate, match", PLAN_VALUE_BAD)
def test_cpu_checks_plan_values_even_when_told_not_to(mutate, match, gen):
    """check_plan=False only spares CUDA its host sync; the CPU kernels index with the plan unguarded."""
    with pytest.raises(BAD, match=match):
        OP(**mutate(_base_op_args(gen)), check_plan=False)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("mutate, match", PLAN_VALUE_BAD)
def test_cuda_plan_taken_on_trust_cannot_read_out_of_bounds(mutate, match, gen):
    """On CUDA check_plan=False skips the value checks, not the kernel's guards: entries outside
    [0, key blocks) are skipped and counts clamped to [0, max_kv], so a wrong plan gives wrong
    numbers, never an illegal address; with check_plan=True the same plan raises."""
    a = mutate(_base_op_args(gen, device="cuda", dtype=torch.bfloat16))
    out, lse = OP(**a, check_plan=False)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    with pytest.raises(BAD, match=match):
        OP(**a)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("D", [40, 96])
def test_cuda_padded_head_dims_take_channels_last_inputs(D, gen):
    """Head dims without a kernel run zero-padded; a channels-last (B, H, N, D) input, whose padded
    copy would keep that layout, still reaches the kernel with contiguous rows."""
    q, k, v = (make_input(gen, (1, 4, 150, D), torch.bfloat16, "cuda").contiguous(memory_format=torch.channels_last)
               for _ in range(3))
    mask = make_mask(gen, (1, 4, 3, 3), "random", 0.6)
    out, lse = genaccel.block_sparse_attention(q, k, v, mask.cuda(), 64, return_lse=True)
    check_against_reference(out, lse, q, k, v, mask, 64, None, torch.bfloat16)


@pytest.mark.cuda
@needs_cuda
def test_cuda_trusted_plan_makes_no_host_sync(gen):
    """A plan made once and passed with check_plan=False: forward and backward (whose autograd
    formula trusts the plan its forward saw) never wait on the device, so they can be captured in
    a CUDA graph."""
    a = _base_op_args(gen, device="cuda", dtype=torch.bfloat16)
    for name in "qkv":
        a[name].requires_grad_()
    go = torch.randn(a["q"].shape, generator=gen).to(torch.bfloat16).cuda()

    def step():
        out, _ = OP(**a, check_plan=False)
        return torch.autograd.grad(out, [a[n] for n in "qkv"], go)

    assert all(torch.isfinite(g).all() for g in run_without_host_sync(step))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(
    "where, match",
    [("k", r"q, k, v must be on one device"), ("v", r"q, k, v must be on one device"),
     ("kv_indices", r"kv_indices and kv_counts must be on the device of q"),
     ("kv_counts", r"kv_indices and kv_counts must be on the device of q")],
)
def test_op_rejects_mixed_devices(where, match, gen):
    a = _base_op_args(gen, device="cuda")
    a[where] = a[where].cpu()
    with pytest.raises(BAD, match=match):
        OP(**a)


def _base_wrapper_args(gen, device="cpu", dtype=torch.float32):
    q = make_input(gen, (B0, H0, NQ0, D0), dtype, device)
    k = make_input(gen, (B0, HKV0, NK0, D0), dtype, device)
    v = make_input(gen, (B0, HKV0, NK0, D0), dtype, device)
    mask = make_mask(gen, (B0, H0, 4, 3), "random", 0.6).to(device)
    return dict(q=q, k=k, v=v, block_mask=mask, block_size=(BQ0, BK0))


WRAPPER_BAD = [
    # block_size
    ("block_size_0", _set(block_size=0), r"block_size must be a positive int"),
    ("block_size_negative", _set(block_size=-64), r"block_size must be a positive int"),
    ("block_size_pair_with_0", _set(block_size=(32, 0)), r"block_size must be a positive int"),
    ("block_size_len1", _set(block_size=(32,)), r"block_size must be a positive int or a pair"),
    ("block_size_len3", _set(block_size=(32, 32, 32)), r"block_size must be a positive int or a pair"),
    ("block_size_float_in_pair", _set(block_size=(32, 32.0)), r"block_size"),
    ("block_size_str_in_pair", _set(block_size=(32, "32")), r"block_size"),
    ("block_size_float", _set(block_size=32.0), r"block_size"),
    ("block_size_none", _set(block_size=None), r"block_size"),
    # q / k / v
    ("q_3d", _with("q", lambda t, a: t[0]), r"q must be a 4-D tensor"),
    ("k_5d", _with("k", lambda t, a: t.unsqueeze(0)), r"k must be a 4-D tensor"),
    ("v_list", _with("v", lambda t, a: t.tolist()), r"v must be a 4-D tensor"),
    ("q_none", _set(q=None), r"q must be a 4-D tensor"),
    # block_mask
    ("mask_float", _with("block_mask", lambda t, a: t.float()), r"block_mask must be a bool tensor"),
    ("mask_int8", _with("block_mask", lambda t, a: t.to(torch.int8)), r"block_mask must be a bool tensor"),
    ("mask_list", _with("block_mask", lambda t, a: t.tolist()), r"block_mask must be a bool tensor"),
    ("mask_3d", _with("block_mask", lambda t, a: t[0]), r"block_mask must have shape \(2 or 1, 4 or 1, 4, 3\)"),
    ("mask_5d", _with("block_mask", lambda t, a: t.unsqueeze(0)), r"block_mask must have shape"),
    ("mask_batch_3", _with("block_mask", lambda t, a: torch.cat([t, t[:1]])), r"block_mask must have shape \(2 or 1, 4 or 1, 4, 3\) for Nq=100, Nk=80"),
    ("mask_heads_2", _with("block_mask", lambda t, a: t[:, :2]), r"block_mask must have shape"),
    ("mask_tq_5", _with("block_mask", lambda t, a: torch.cat([t, t[:, :, :1]], 2)), r"block_mask must have shape"),
    ("mask_tk_2", _with("block_mask", lambda t, a: t[..., :2]), r"block_mask must have shape .*block_size=\(32, 32\)"),
    ("mask_for_other_block_size", _set(block_size=(16, 16)), r"block_mask must have shape \(2 or 1, 4 or 1, 7, 5\)"),
    ("mask_meta_device", _with("block_mask", lambda t, a: t.to("meta")), r"block_mask must be on the device of q"),
    # what the op checks, reached through the wrapper
    ("qkv_float64", lambda a: {**a, **{n: a[n].double() for n in "qkv"}}, r"q must be float32, float16 or bfloat16"),
    ("k_dtype_mismatch", _with("k", lambda t, a: t.half()), r"q, k, v must share one dtype"),
    ("k_batch", _with("k", lambda t, a: t[:1]), r"batch of k"),
    ("kv_heads_differ", _with("k", lambda t, a: t[:, :1]), r"k and v must have the same number of heads"),
    ("v_length", _with("v", lambda t, a: t[:, :, :50]), r"k and v must have the same length"),
    ("v_head_dim", _with("v", lambda t, a: t[..., :8]), r"head dim of k 32 and v 8"),
    ("h_not_multiple_of_hkv", lambda a: {**a, "q": a["q"][:, :3], "block_mask": a["block_mask"][:, :3]}, r"query heads 3 must be a multiple of key/value heads 2"),
    ("head_dim_257", lambda a: {**a, **{n: torch.randn(*a[n].shape[:3], 257) for n in "qkv"}}, r"head dim must be in \[1, 256\], got 257"),
    ("head_dim_0", lambda a: {**a, **{n: a[n][..., :0] for n in "qkv"}}, r"head dim must be in \[1, 256\], got 0"),
    ("scale_nan", _set(scale=float("nan")), r"scale must be finite"),
    ("scale_above_float32", _set(scale=1e39), r"scale must be finite in float32"),
    ("scale_str", _set(scale="0.3"), r"scale must be a real number"),
    ("scale_bool", _set(scale=True), r"scale must be a real number"),
    # a meta tensor among CPU tensors dispatches to the Meta kernel, which runs the op's checks
    ("k_meta", _with("k", lambda t, a: t.to("meta")), r"q, k, v must be on one device, got cpu, meta, cpu"),
    ("mask_meta", _with("block_mask", lambda t, a: t.to("meta")), r"block_mask must be on the device of q"),
]


@pytest.mark.parametrize("mutate, match", [pytest.param(m, r, id=i) for i, m, r in WRAPPER_BAD])
def test_wrapper_rejects_bad_input(mutate, match, gen):
    args = mutate(_base_wrapper_args(gen))
    with pytest.raises(BAD, match=match):
        genaccel.block_sparse_attention(**args)


def test_wrapper_base_args_are_valid(gen):
    a = _base_wrapper_args(gen)
    out, lse = genaccel.block_sparse_attention(**a, return_lse=True)
    check_against_reference(out, lse, a["q"], a["k"], a["v"], a["block_mask"], a["block_size"], None, torch.float32)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("where, match", [("block_mask", r"block_mask must be on the device of q"), ("k", r"q, k, v must be on one device")])
def test_wrapper_rejects_mixed_devices(where, match, gen):
    a = _base_wrapper_args(gen, device="cuda")
    a[where] = a[where].cpu()
    with pytest.raises(BAD, match=match):
        genaccel.block_sparse_attention(**a)


# Block sizes past int32: the op takes int64 block sizes but the kernels hold them in int. Run in a
# child process: a failure here has been a SIGFPE that would take the whole test run down.
_HUGE_BLOCK_SCRIPT = textwrap.dedent(
    """
    import sys, torch, genaccel
    from genaccel.attention.block_sparse.reference import block_sparse_attention_reference as ref
    bq, bk = int(sys.argv[1]), int(sys.argv[2])
    g = torch.Generator().manual_seed(bq % 1000 + bk % 997)
    q, k, v = (torch.randn(1, 1, 10, 16, generator=g) for _ in range(3))
    m = torch.ones(1, 1, 1, 1, dtype=torch.bool)
    try:
        out, lse = genaccel.block_sparse_attention(q, k, v, m, (bq, bk), return_lse=True)
    except (RuntimeError, ValueError) as e:
        print("REFUSED", str(e).replace(chr(10), " "))
    else:
        ro, rl = ref(q, k, v, m, (bq, bk))
        err = ((out.double() - ro).norm() / ro.norm()).item()
        lerr = (lse.double() - rl).abs().max().item()
        print("RAN", err, lerr)
    """
)


@pytest.mark.parametrize(
    "bq, bk",
    [(2**32 + 1, 16), (16, 2**32), (2**31, 16)],
    ids=["block_q=2^32+1", "block_k=2^32", "block_q=2^31"],
)
def test_block_size_beyond_int32_is_correct_or_refused(bq, bk):
    r = subprocess.run(
        [sys.executable, "-c", _HUGE_BLOCK_SCRIPT, str(bq), str(bk)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"crashed with exit status {r.returncode}: {r.stderr[-2000:]}"
    line = r.stdout.strip().splitlines()[-1]
    if line.startswith("REFUSED"):
        assert "block" in line, f"the refusal does not name the block size: {line}"
    else:
        _, err, lerr = line.split()
        assert float(err) <= 1e-4 and float(lerr) <= 1e-4, f"wrong result for block_size=({bq}, {bk}): {line}"
        assert "MKL ERROR" not in r.stdout + r.stderr, r.stdout + r.stderr


# ----------------------------------------------------------------------------------------------
# empty tensors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "B, H, Hkv, Nq, Nk",
    [(0, 2, 2, 64, 64), (2, 2, 1, 0, 64), (2, 2, 2, 64, 0), (1, 2, 2, 0, 0), (0, 0, 1, 0, 0), (1, 0, 1, 10, 10)],
    ids=["B=0", "Nq=0", "Nk=0", "Nq=Nk=0", "all_zero", "H=0"],
)
@pytest.mark.parametrize("device", devices())
def test_empty_tensors(B, H, Hkv, Nq, Nk, device, gen):
    D, bs, dtype = 64, (64, 64), torch.bfloat16
    q = make_input(gen, (B, H, Nq, D), dtype, device)
    k, v = (make_input(gen, (B, Hkv, Nk, D), dtype, device) for _ in range(2))
    mask = torch.ones(1, 1, -(-Nq // 64), -(-Nk // 64), dtype=torch.bool, device=device)
    out, lse = genaccel.block_sparse_attention(q, k, v, mask, bs, return_lse=True)
    assert out.shape == (B, H, Nq, D) and lse.shape == (B, H, Nq)
    assert out.dtype == dtype and lse.dtype == torch.float32
    if out.numel():  # Nk = 0: every row selects nothing
        assert (out == 0).all() and torch.isneginf(lse).all()
        check_against_reference(out, lse, q, k, v, mask, bs, None, dtype)
    # The raw op with an all-zero plan.
    idx = torch.zeros(1, 1, -(-Nq // 64), 0, dtype=torch.int32, device=device)
    cnt = torch.zeros(1, 1, -(-Nq // 64), dtype=torch.int32, device=device)
    out2, lse2 = OP(q, k, v, idx, cnt, 64, 64, 0.5)
    assert out2.shape == (B, H, Nq, D) and lse2.shape == (B, H, Nq)
    if out2.numel():
        assert (out2 == 0).all() and torch.isneginf(lse2).all()


# ----------------------------------------------------------------------------------------------
# opcheck, torch.compile, autograd
# ----------------------------------------------------------------------------------------------

OPCHECK_CASES = [
    dict(id="fp32_dense", B=1, H=2, Hkv=2, Nq=100, Nk=100, D=32, dtype=torch.float32, bs=(32, 32), layout="contig"),
    dict(id="bf16_gqa_nq_ne_nk", B=2, H=4, Hkv=2, Nq=70, Nk=130, D=64, dtype=torch.bfloat16, bs=(64, 64), layout="contig"),
    dict(id="fp16_transposed", B=2, H=2, Hkv=1, Nq=90, Nk=160, D=64, dtype=torch.float16, bs=(64, 128), layout="transposed"),
    dict(id="fp32_sliced", B=1, H=2, Hkv=2, Nq=50, Nk=50, D=16, dtype=torch.float32, bs=(16, 16), layout="sliced"),
]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("c", OPCHECK_CASES, ids=lambda c: c["id"])
def test_opcheck(c, device, gen):
    q = make_input(gen, (c["B"], c["H"], c["Nq"], c["D"]), c["dtype"], device, c["layout"])
    k, v = (make_input(gen, (c["B"], c["Hkv"], c["Nk"], c["D"]), c["dtype"], device, c["layout"]) for _ in range(2))
    bq, bk = c["bs"]
    mask = make_mask(gen, (1, c["H"], -(-c["Nq"] // bq), -(-c["Nk"] // bk)), "empty_rows", 0.5)
    idx, cnt = genaccel.block_mask_to_indices(mask)
    args = (q, k, v, idx.to(device), cnt.to(device), bq, bk, 0.3)
    op(device, *args)
    torch.library.opcheck(OP.default, args)


@pytest.mark.parametrize("device", devices())
def test_opcheck_inputs_requiring_grad(device, gen):
    """The autograd registration is in place; on CPU opcheck also runs the backward through AOT
    dispatch (the CUDA backward kernel does not exist yet)."""
    q, k, v = (make_input(gen, (1, 2, 64, 32), torch.float32, device).requires_grad_() for _ in range(3))
    idx, cnt = genaccel.block_mask_to_indices(make_mask(gen, (1, 2, 2, 2), "random", 0.7))
    args = (q, k, v, idx.to(device), cnt.to(device), 32, 32, 0.2)
    with torch.no_grad():
        op(device, *args)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(OP.default, args, test_utils=utils + (("test_aot_dispatch_dynamic",) if device == "cpu" else ()))


COMPILE_CASES = [
    dict(id="fp32_lse", B=1, H=2, Hkv=2, Nq=100, Nk=100, D=32, dtype=torch.float32, bs=32, mb=1, mh=2, lse=True, scale=None),
    dict(id="bf16_gqa_bcast_mask", B=2, H=4, Hkv=1, Nq=130, Nk=70, D=64, dtype=torch.bfloat16, bs=64, mb=1, mh=1, lse=True, scale=None),
    dict(id="fp16_batch_mask", B=2, H=2, Hkv=2, Nq=60, Nk=90, D=64, dtype=torch.float16, bs=(64, 64), mb=2, mh=1, lse=False, scale=0.1),
]


def _compile_inputs(c, gen, device, nq=None, nk=None):
    nq, nk = nq or c["Nq"], nk or c["Nk"]
    bq, bk = _pair(c["bs"])
    q = make_input(gen, (c["B"], c["H"], nq, c["D"]), c["dtype"], device)
    k, v = (make_input(gen, (c["B"], c["Hkv"], nk, c["D"]), c["dtype"], device) for _ in range(2))
    mask = make_mask(gen, (c["mb"], c["mh"], -(-nq // bq), -(-nk // bk)), "empty_rows", 0.5).to(device)
    return q, k, v, mask


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("c", COMPILE_CASES, ids=lambda c: c["id"])
def test_compile_fullgraph_aot_eager(c, device, gen):
    torch._dynamo.reset()
    f = torch.compile(genaccel.block_sparse_attention, backend="aot_eager", fullgraph=True)
    q, k, v, mask = _compile_inputs(c, gen, device)
    want = attn(device, q, k, v, mask, c["bs"], scale=c["scale"], return_lse=c["lse"])
    got = f(q, k, v, mask, c["bs"], scale=c["scale"], return_lse=c["lse"])
    if c["lse"]:
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)
        check_against_reference(got[0], got[1], q, k, v, mask, c["bs"], c["scale"], c["dtype"])
    else:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph_dynamic_shapes(device, gen):
    """One compiled function over changing sequence lengths (symbolic Nq, Nk, Tq, Tk)."""
    torch._dynamo.reset()
    c = COMPILE_CASES[1]
    f = torch.compile(genaccel.block_sparse_attention, backend="aot_eager", fullgraph=True, dynamic=True)
    for nq, nk in [(100, 100), (130, 70), (45, 200)]:
        q, k, v, mask = _compile_inputs(c, gen, device, nq, nk)
        attn(device, q, k, v, mask, c["bs"])
        out, lse = f(q, k, v, mask, c["bs"], return_lse=True)
        check_against_reference(out, lse, q, k, v, mask, c["bs"], None, c["dtype"])


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph_inductor(device, gen):
    torch._dynamo.reset()
    c = COMPILE_CASES[0]

    def fn(q, k, v, mask):  # the op between two inductor-generated kernels
        out, lse = genaccel.block_sparse_attention(q * 1.0, k, v, mask, 32, return_lse=True)
        return out + 0.0, lse

    f = torch.compile(fn, backend="inductor", fullgraph=True)
    q, k, v, mask = _compile_inputs(c, gen, device)
    attn(device, q, k, v, mask, 32)
    out, lse = f(q, k, v, mask)
    check_against_reference(out, lse, q, k, v, mask, 32, None, torch.float32)
