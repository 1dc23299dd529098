"""LiteMLA (genaccel.autoencoder.lite_mla, op dcae_lite_mla) against its float64 reference (the quadratic
form, genaccel.autoencoder.dcae.reference.lite_mla) and against diffusers' SanaMultiscaleLinearAttention
maths (its linear and quadratic paths) on the same qkv, gradients included."""

import pytest
import torch

from conftest import BAD, devices

from genaccel.autoencoder import lite_mla
from genaccel.autoencoder.dcae import reference as R
from genaccel.testing import RTOL, rel_err


def qkv_input(seed, b, heads, d, h, w, dtype=torch.float32, device="cpu"):
    return torch.randn(b, heads * 3 * d, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype=dtype,
                                                                                              device=device)


CASES = [(2, 2, 32, 8, 9), (1, 3, 8, 5, 5), (1, 1, 20, 1, 1), (1, 2, 17, 40, 3), (1, 4, 32, 16, 20),
         (3, 1, 64, 2, 300)]  # (B, heads, head_dim, H, W): N past one 256-position tile, odd dims, N = 1


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("b, heads, d, h, w", CASES)
def test_matches_reference(device, b, heads, d, h, w):
    qkv = qkv_input(b + heads + d + h + w, b, heads, d, h, w, device=device)
    out = lite_mla(qkv, d)
    assert out.shape == (b, heads * d, h, w) and out.dtype == torch.float32
    assert rel_err(out.cpu(), R.lite_mla(qkv.cpu(), d)) < RTOL[torch.float32]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit(device, dtype):
    qkv = qkv_input(1, 2, 4, 32, 16, 16, dtype=dtype, device=device)
    out = lite_mla(qkv)
    assert out.dtype == dtype
    assert rel_err(out.cpu(), R.lite_mla(qkv.cpu(), 32)) < RTOL[dtype]


@pytest.mark.parametrize("device", devices())
def test_dead_head_in_float16_is_finite(device):
    # A head whose ReLU(k) is all zero: the denominator is exactly eps = 1e-15, which is 0 in float16, so
    # a float16 normaliser would divide 0 by 0 (the original upcasts for this). Float32 inside gives 0.
    qkv = qkv_input(2, 1, 2, 32, 8, 8)
    qkv[:, 32:64] = -qkv[:, 32:64].abs()  # head 0's keys
    out = lite_mla(qkv.to(device, torch.float16)).cpu()
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :32], torch.zeros_like(out[:, :32]))
    assert rel_err(out[:, 32:], R.lite_mla(qkv, 32)[:, 32:]) < RTOL[torch.float16]


def diffusers_attention(qkv, d, linear):
    from diffusers.models.attention_processor import SanaMultiscaleLinearAttention

    attn = SanaMultiscaleLinearAttention(3 * d, 3 * d, attention_head_dim=d, norm_type="rms_norm")
    b, c, h, w = qkv.shape
    q, k, v = qkv.reshape(b, -1, 3 * d, h * w).chunk(3, dim=2)  # as its processor splits the heads
    fn = attn.apply_linear_attention if linear else attn.apply_quadratic_attention
    return fn(q.relu(), k.relu(), v).reshape(b, -1, h, w)


@pytest.mark.parametrize("h, w, linear", [(8, 8, True), (4, 4, False)])
def test_equals_diffusers_paths(h, w, linear):
    pytest.importorskip("diffusers")
    qkv = qkv_input(3, 2, 3, 32, h, w)
    assert rel_err(lite_mla(qkv), diffusers_attention(qkv.double(), 32, linear)) < 1e-6


def test_gradients():
    qkv = qkv_input(4, 2, 2, 8, 5, 7).requires_grad_()
    g = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad(lite_mla(qkv, 8), qkv, g)[0]
    ref_in = qkv.detach().double().requires_grad_()
    want = torch.autograd.grad(R.lite_mla(ref_in, 8), ref_in, g.double())[0]
    assert rel_err(got, want) < RTOL[torch.float32]


def test_opcheck():
    torch.library.opcheck(torch.ops.genaccel.dcae_lite_mla, (qkv_input(6, 1, 2, 8, 3, 4), 8, 1e-15))


@pytest.mark.parametrize("device", devices())
def test_bad_inputs(device):
    qkv = qkv_input(7, 1, 2, 8, 3, 3, device=device)
    with pytest.raises(BAD, match="multiple of 3 head_dim"):
        lite_mla(qkv, 32)
    with pytest.raises(BAD, match="qkv must be a 4-D"):
        lite_mla(qkv[0], 8)
    with pytest.raises(BAD, match="head_dim"):
        lite_mla(qkv, 0)
    with pytest.raises(BAD, match="eps"):
        lite_mla(qkv, 8, float("nan"))
    with pytest.raises(BAD, match="qkv must be"):
        lite_mla(qkv.long(), 8)
