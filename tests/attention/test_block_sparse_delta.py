"""op attention_delta: rowsum(dout * out) in float32, the row term of the block-sparse and SLA
backwards (one pass over half-precision inputs on CUDA: 16-byte loads where rows allow, else scalar)."""

import pytest
import torch

from conftest import devices


def reference(dout, out):
    return (dout.double() * out.double()).sum(-1)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [1, 13, 64, 128, 256])
def test_matches_float64(device, dtype, D, gen):
    dout = torch.randn(2, 3, 37, D, generator=gen).to(dtype).to(device)
    out = torch.randn(2, 3, 37, D, generator=gen).to(dtype).to(device)
    got = torch.ops.genaccel.attention_delta(dout, out)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 37) and got.device == dout.device
    want = reference(dout.cpu(), out.cpu())
    # Products of half inputs are exact in float32 (of float32 inputs within 2^-24); then only the
    # float32 sum rounds: the classic bound D * 2^-24 * sum |terms| for any summation order.
    scale = (dout.cpu().double().abs() * out.cpu().double().abs()).sum(-1)
    assert ((got.cpu().double() - want).abs() <= (D + 1) * 2.0 ** -24 * scale).all()


@pytest.mark.parametrize("device", devices())
def test_strided_and_mixed_inputs(device, gen):
    """Transposed (B, N, H, D) storage, a row-sliced view (rows not 16-byte aligned: the scalar path)
    and mixed dtypes give the float64 row sums too."""
    base = torch.randn(2, 50, 4, 72, generator=gen).to(torch.bfloat16).to(device)
    dout = base.transpose(1, 2)
    out = torch.randn(2, 4, 50, 73, generator=gen).to(torch.bfloat16).to(device)[..., 1:]
    for d, o in [(dout, out), (dout.float(), out), (dout, out.half())]:
        got = torch.ops.genaccel.attention_delta(d, o)
        assert torch.allclose(got.cpu().double(), reference(d.cpu(), o.cpu()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", devices())
def test_empty_and_nan(device):
    empty = torch.zeros(1, 2, 0, 64, device=device, dtype=torch.bfloat16)
    assert torch.ops.genaccel.attention_delta(empty, empty).shape == (1, 2, 0)
    x = torch.ones(1, 1, 3, 64, device=device, dtype=torch.bfloat16)
    y = x.clone()
    y[0, 0, 1, 5] = float("nan")
    got = torch.ops.genaccel.attention_delta(x, y).cpu()
    assert got[0, 0, 0] == 64 and got[0, 0, 1].isnan() and got[0, 0, 2] == 64


def test_rejects_bad_input():
    op = torch.ops.genaccel.attention_delta
    x = torch.randn(1, 2, 3, 4)
    with pytest.raises(RuntimeError, match="attention_delta: dout must be 4-D"):
        op(x[0], x)
    with pytest.raises(RuntimeError, match="attention_delta: out must be float32, float16 or bfloat16"):
        op(x, x.double())
    with pytest.raises(RuntimeError, match="attention_delta: dout and out must have one shape"):
        op(x, x[..., :2])
    torch.library.opcheck(op, (x, x), test_utils=("test_schema", "test_faketensor"))
