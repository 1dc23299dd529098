"""The gathered-GEMM backward of block-sparse attention (registered as the CUDA kernel of
genaccel::block_sparse_attn_bwd) run on CPU tensors against the CPU kernel and the float64
reference: same function, so its logic (gathering, masking, scatter, chunking) is tested here."""

import pytest
import torch

import genaccel
from conftest import rel_err
from genaccel.attention import gathered_backward
from genaccel.attention.block_sparse import attention_delta
from test_block_sparse_attention import make_input, make_mask
from test_block_sparse_backward import GRAD_CASES, reference_grads


@pytest.mark.parametrize("chunk_bytes", [1 << 30, 1], ids=["one_chunk", "chunk_per_query_block"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c[0])
def test_gathered_backward_matches_cpu_kernel_and_reference(case, dtype, chunk_bytes, gen, monkeypatch):
    monkeypatch.setattr(gathered_backward, "_CHUNK_BYTES", chunk_bytes)
    _, B, H, Hkv, Nq, Nk, D, block, kind, density = case
    q = make_input(gen, (B, H, Nq, D), dtype, "cpu")
    k, v = (make_input(gen, (B, Hkv, Nk, D), dtype, "cpu") for _ in range(2))
    mask = make_mask(gen, (B, 1, -(-Nq // block[0]), -(-Nk // block[1])), kind, density)
    scale = 0.7 / D**0.5
    idx, cnt = genaccel.block_mask_to_indices(mask)
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, *block, scale)
    go = torch.randn(out.shape, generator=gen).to(dtype)
    delta = attention_delta(go, out, None)
    got = gathered_backward.block_sparse_attn_bwd_gathered(go, q, k, v, delta, lse, idx, cnt, *block, scale)
    kernel = torch.ops.genaccel.block_sparse_attn_bwd(go, q, k, v, delta, lse, idx, cnt, *block, scale)
    expected = reference_grads(q, k, v, mask, block, scale, go, torch.zeros(lse.shape))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, g, c, e in zip("qkv", got, kernel, expected):
        assert g.dtype == dtype and g.shape == c.shape, name
        if e.norm() == 0:
            assert not g.any(), name
        else:
            assert rel_err(g, c.float()) <= tol, (name, rel_err(g, c.float()))
            assert rel_err(g, e) <= (1e-4 if dtype == torch.float32 else 2e-2), (name, rel_err(g, e))


def test_registered_as_the_cuda_kernel():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("genaccel::block_sparse_attn_bwd", "CUDA")


def test_gathered_backward_checks_its_inputs(gen):
    """Run directly (as the CUDA dispatcher does), it validates like the CPU op: clear errors."""
    q, k, v = (make_input(gen, (1, 2, 64, 16), torch.float32, "cpu") for _ in range(3))
    idx, cnt = genaccel.block_mask_to_indices(torch.ones(1, 2, 2, 2, dtype=torch.bool))
    out, lse = torch.ops.genaccel.block_sparse_attn_fwd(q, k, v, idx, cnt, 32, 32, 0.25)
    delta = attention_delta(out, out, None)
    bwd = gathered_backward.block_sparse_attn_bwd_gathered
    with pytest.raises(RuntimeError, match="kv_indices must lie in"):
        bwd(out, q, k, v, delta, lse, idx + 3, cnt, 32, 32, 0.25)
    with pytest.raises(RuntimeError, match="delta and lse must be float32"):
        bwd(out, q, k, v, delta[..., :5], lse, idx, cnt, 32, 32, 0.25)
    with pytest.raises(RuntimeError, match="dout must match q"):
        bwd(out[..., :8], q, k, v, delta, lse, idx, cnt, 32, 32, 0.25)
