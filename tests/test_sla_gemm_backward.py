"""The GEMM-composed SLA backward (genaccel/attention/sla/gemm_backward.py, registered as the CUDA
kernel of genaccel::sla_bwd) run on CPU tensors against the CPU op sla_bwd, which is itself checked
against the float64 reference (test_sla.py): same function, so its logic is tested here."""

import pytest
import torch

from conftest import CUDA, rel_err
from genaccel.attention.block_sparse import attention_delta
from genaccel.attention.sla import gemm_backward, sla_block_map
from genaccel.attention.sla.reference import FEATURE_MAPS
from test_sla import inputs


@pytest.mark.parametrize("chunk_bytes", [1 << 30, 1], ids=["one_chunk", "chunk_per_pair"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("all_keys", [False, True], ids=["marginal", "all_keys"])
@pytest.mark.parametrize("fmap", FEATURE_MAPS)
@pytest.mark.parametrize("topk,low_k", [(0.05, 0.1), (0.2, 0.0), (1.0, 0.0)])
def test_gemm_backward_matches_cpu_op(topk, low_k, fmap, all_keys, dtype, chunk_bytes, gen, monkeypatch):
    monkeypatch.setattr(gemm_backward, "_CHUNK_BYTES", chunk_bytes)
    # GQA, partial last blocks on both sides, two batches.
    q, k, v = inputs(gen, 2, 4, 2, 300, 330, 24, dtype)
    bq, bk = 32, 16
    codes, idx, cnt = sla_block_map(q, k, topk, low_k, (bq, bk))
    scale = 24 ** -0.5
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, bq, bk, scale, fmap, all_keys)
    g_s, g_l = (torch.randn(out_s.shape, generator=gen).to(dtype) for _ in range(2))
    delta = attention_delta(g_s, out_s, None)
    args = (g_s, g_l, q, k, v, codes, idx, cnt, out_s, lse, delta, out_l, denom, bq, bk, scale, fmap, all_keys)
    got = gemm_backward.sla_bwd_gemm(*args)
    want = torch.ops.genaccel.sla_bwd(*args)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    for name, g, w in zip("qkv", got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert (not g.any()) if w.float().norm() == 0 else rel_err(g, w) <= tol, (name, rel_err(g, w))


def test_registered_as_the_cuda_kernel():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("genaccel::sla_bwd", "CUDA")


def test_gemm_backward_checks_its_inputs(gen):
    """Run directly (as the CUDA dispatcher does), it validates like the CPU op: clear errors."""
    q, k, v = inputs(gen, 1, 2, 1, 96, 80, 16, torch.float32)
    codes, idx, cnt = sla_block_map(q, k, 0.3, 0.2, 32)
    out_s, lse, out_l, denom = torch.ops.genaccel.sla_fwd(q, k, v, codes, idx, cnt, 32, 32, 0.25, "softmax", False)
    delta = attention_delta(out_s, out_s, None)
    args = [out_s, out_l, q, k, v, codes, idx, cnt, out_s, lse, delta, out_l, denom, 32, 32, 0.25, "softmax", False]
    for index, bad, match in [(5, codes.int(), "sla_bwd: codes must be int8"),
                              (16, "hedgehog", "sla_bwd: feature_map must be one of"),
                              (12, denom.half(), "sla_bwd: denom must be float32"),
                              (6, idx + 5, "kv_indices must lie in")]:
        broken = list(args)
        broken[index] = bad
        with pytest.raises(RuntimeError, match=match):
            gemm_backward.sla_bwd_gemm(*broken)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not CUDA, reason="needs a GPU and genaccel built with CUDA")])])
def test_sla_mask_matmul_has_float32_accuracy(device, gen):
    """mask @ x for a 0/1 mask: float32-accurate (on CUDA through x split into three bf16 parts; a
    plain bf16 product would be off by ~1e-3), over a wide dynamic range of x."""
    mask = torch.rand(3, 40, 70, generator=gen) < 0.6
    x = torch.randn(3, 70, 96, generator=gen) * torch.logspace(-6, 6, 96).view(1, 1, 96).float()
    got = torch.ops.genaccel.sla_mask_matmul(mask.to(device), x.to(device))
    expected = mask.double() @ x.double()
    assert got.dtype == torch.float32 and got.shape == (3, 40, 96)
    # Per column of x (scales 1e-6 .. 1e6), so that small columns count as much as large ones.
    col_err = (got.cpu().double() - expected).norm(dim=(0, 1)) / expected.norm(dim=(0, 1))
    assert col_err.max() < 1e-6, col_err.max()


def test_sla_mask_matmul_rejects_bad_input(gen):
    mm = torch.ops.genaccel.sla_mask_matmul
    mask, x = torch.ones(2, 3, 4, dtype=torch.bool), torch.randn(2, 4, 5)
    with pytest.raises(RuntimeError, match="mask must be a 3-D"):
        mm(mask.float(), x)
    with pytest.raises(RuntimeError, match="x must be a 3-D"):
        mm(mask, x.double())
    with pytest.raises(RuntimeError, match=r"x must have shape \(2, 4, E\)"):
        mm(mask, x[:, :3])
    torch.library.opcheck(mm, (mask, x), test_utils=("test_schema", "test_faketensor"))
