"""XQuant's fused products (ops xquant_matmul / xquant_weighted_sum, genaccel.xquant_matmul /
xquant_weighted_sum) against float64 products of the float64 reference dequantization of the same
stored bytes (genaccel.kvcache.xquant.reference), on fresh random inputs."""

import math

import pytest
import torch

from conftest import BAD, devices

import genaccel
from genaccel.kvcache.xquant import reference as R
from genaccel.testing import RTOL, quantizer_input, rel_err


def gen(seed):
    return torch.Generator().manual_seed(seed)


def reference_x(qt):
    """The float64 values qt stores, (..., T, K), from its bytes by the reference (not the ops)."""
    r = 0 if qt.residual is None else qt.residual.shape[-2]
    k = qt.shape[qt.axis] - r
    rows = qt.codes.shape[:-1]
    flat = [t.reshape(math.prod(rows), t.shape[-1]).cpu() for t in (qt.codes, qt.scales, qt.zeros)]
    x = R.dequantize(*flat, qt.bits, qt.group_size, k, qt.zero).view(*rows, k).movedim(-1, qt.axis)
    return x if qt.residual is None else torch.cat([x, qt.residual.cpu().double()], dim=-2)


def cached_x(shape, bits, group, axis, zero, seed, device, dtype=torch.float32):
    x = quantizer_input(gen(seed), shape[0] * shape[1] if len(shape) == 3 else shape[0], shape[-1])
    x = x.view(*shape).to(dtype).to(device)
    return genaccel.quantize(x, bits, group, axis=axis, zero=zero)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("zero", ["int", "fp16"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape, group, n, bias", [((70, 256), 128, 48, True), ((3, 40, 200), 32, 130, False),
                                                   ((1, 24), 8, 5, True), ((130, 1000), 64, 17, False)])
def test_matmul_per_token_matches_reference(device, zero, bits, shape, group, n, bias):
    qt = cached_x(shape, bits, group, -1, zero, seed=bits + n, device=device)
    g = gen(n)
    w = torch.randn(n, shape[-1], generator=g).to(device)
    b = torch.randn(n, generator=g).to(device) if bias else None
    out = genaccel.xquant_matmul(qt, w, b)
    ref = reference_x(qt) @ w.cpu().double().T + (b.cpu().double() if bias else 0)
    assert out.shape == (*shape[:-1], n) and out.dtype == torch.float32
    assert rel_err(out.cpu(), ref) < 1e-5


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rows, k, n", [(1601, 300, 300), (200, 40, 530), (7, 3000, 20)])
def test_matmul_work_split_matches_reference(threads, rows, k, n):
    # The CPU kernel cuts rows into balanced groups (several 192-row sub-tiles each, fewer rows when k
    # is large) and splits columns when there are fewer groups than threads: every split must cover
    # each output once.
    qt = cached_x((rows, k), 3, 64, -1, "int", seed=rows, device="cpu")
    w = torch.randn(n, k, generator=gen(k))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = genaccel.xquant_matmul(qt, w)
    finally:
        torch.set_num_threads(before)
    assert rel_err(out, reference_x(qt) @ w.double().T) < 1e-5


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("zero", ["int", "fp16"])
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("tokens", [0, 16, 50, 64])
def test_matmul_per_channel_cache_with_residual(device, zero, bits, tokens):
    # A KIVI-style growing cache: groups of 16 tokens per channel, the rest full precision.
    qt = genaccel.QuantizedTensor.empty((2, 0, 24), bits, 16, axis=-2, zero=zero, dtype=torch.float32, device=device)
    x = quantizer_input(gen(tokens), 2 * tokens, 24).view(2, tokens, 24).to(device)
    qt.append(x[:, : tokens // 2]).append(x[:, tokens // 2:])
    w = torch.randn(7, 24, generator=gen(1)).to(device)
    b = torch.randn(7, generator=gen(2)).to(device)
    out = genaccel.xquant_matmul(qt, w, b)
    ref = reference_x(qt) @ w.cpu().double().T + b.cpu().double()
    assert out.shape == (2, tokens, 7)
    assert rel_err(out.cpu(), ref) < 1e-5 if tokens else out.numel() == 0


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("zero", ["int", "fp16"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("batch, m, tokens, k, group", [(1, 4, 300, 256, 128), (3, 1, 17, 40, 8),
                                                        (2, 33, 129, 600, 64)])
def test_weighted_sum_per_token_matches_reference(device, zero, bits, batch, m, tokens, k, group):
    qt = cached_x((batch, tokens, k), bits, group, -1, zero, seed=tokens + bits, device=device)
    a = torch.softmax(torch.randn(batch, m, tokens, generator=gen(k)), -1).to(device)
    out = genaccel.xquant_weighted_sum(a, qt)
    ref = a.cpu().double() @ reference_x(qt)
    assert out.shape == (batch, m, k) and out.dtype == torch.float32
    assert rel_err(out.cpu(), ref) < 1e-5


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("tokens", [16, 40])
def test_weighted_sum_per_channel_cache(device, tokens):
    qt = genaccel.QuantizedTensor.empty((3, 0, 24), 3, 16, axis=-2, dtype=torch.float32, device=device)
    qt.append(quantizer_input(gen(tokens), 3 * tokens, 24).view(3, tokens, 24).to(device))
    a = torch.randn(3, 5, tokens, generator=gen(3)).to(device)
    out = genaccel.xquant_weighted_sum(a, qt)
    assert rel_err(out.cpu(), a.cpu().double() @ reference_x(qt)) < 1e-5


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_weights(device, dtype):
    # The product is float32-accumulated; the output is rounded to the weight's dtype (on CUDA the
    # dequantized tiles too), so it matches the float64 product to that dtype's rounding.
    qt = cached_x((96, 256), 4, 128, -1, "int", seed=5, device=device)
    w = torch.randn(80, 256, generator=gen(6)).to(dtype).to(device)
    b = torch.randn(80, generator=gen(7)).to(dtype).to(device)
    out = genaccel.xquant_matmul(qt, w, b)
    ref = reference_x(qt) @ w.cpu().double().T + b.cpu().double()
    assert out.dtype == dtype and rel_err(out.cpu(), ref) < 2 * RTOL[dtype]
    a = torch.softmax(torch.randn(1, 8, 96, generator=gen(8)), -1).to(dtype).to(device)
    qt3 = cached_x((1, 96, 256), 4, 128, -1, "int", seed=9, device=device)
    out = genaccel.xquant_weighted_sum(a, qt3)
    assert out.dtype == dtype and rel_err(out.cpu(), a.cpu().double() @ reference_x(qt3)) < 2 * RTOL[dtype]


@pytest.mark.parametrize("device", devices())
def test_empty_reduction_gives_bias(device):
    codes = torch.zeros(4, 0, dtype=torch.uint8, device=device)
    scales = torch.zeros(4, 0, dtype=torch.float16, device=device)
    zeros = torch.zeros(4, 0, dtype=torch.uint8, device=device)
    w = torch.zeros(6, 0, device=device)
    b = torch.arange(6.0, device=device)
    out = torch.ops.genaccel.xquant_matmul(codes, scales, zeros, 4, 8, 0, w, b)
    assert torch.equal(out.cpu(), b.cpu().expand(4, 6))
    a = torch.ones(2, 3, 0, device=device)  # no tokens: zeros
    empty = genaccel.quantize(torch.zeros(0, 5, device=device), 4, 8)
    out = torch.ops.genaccel.xquant_weighted_sum(a, empty.codes, empty.scales, empty.zeros, 4, 8, 5)
    assert torch.equal(out.cpu(), torch.zeros(2, 3, 5))


def test_matmul_keeps_no_full_size_temporary():
    # The dequantized X (rows x k float32 = 64 MB here) is never allocated through torch: all the op
    # allocates is its 4 MB output (the kernel's dequantized row groups are per-thread scratch of at most
    # 12 MB, outside torch's allocator). A dequantize-then-matmul would show the 64 MB here.
    rows, k, n = 16384, 1024, 64
    qt = genaccel.quantize(quantizer_input(gen(0), rows, k), 4, 128)
    w = torch.randn(n, k, generator=gen(1))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = genaccel.xquant_matmul(qt, w)
    op = [e for e in prof.events() if e.name == "genaccel::xquant_matmul"]
    assert len(op) == 1 and out.shape == (rows, n)
    assert op[0].cpu_memory_usage <= out.numel() * 4 + 4096, f"{op[0].cpu_memory_usage} bytes allocated"


@pytest.mark.parametrize("device", devices())
def test_bad_input_is_refused(device):
    qt = cached_x((8, 64), 4, 32, -1, "int", seed=1, device=device)
    with pytest.raises(BAD, match="weight"):
        genaccel.xquant_matmul(qt, torch.randn(5, 63, device=device))
    with pytest.raises(BAD, match="bias"):
        torch.ops.genaccel.xquant_matmul(qt.codes, qt.scales, qt.zeros, 4, 32, 64, torch.randn(5, 64, device=device),
                                         torch.randn(4, device=device))
    with pytest.raises(BAD, match="weight"):
        torch.ops.genaccel.xquant_matmul(qt.codes, qt.scales, qt.zeros, 4, 32, 64,
                                         torch.randn(5, 64, device=device).long())
    with pytest.raises(BAD, match="codes must hold batch"):
        torch.ops.genaccel.xquant_weighted_sum(torch.randn(1, 2, 7, device=device), qt.codes, qt.scales, qt.zeros,
                                               4, 32, 64)
    with pytest.raises(BAD, match="a must have shape"):
        genaccel.xquant_weighted_sum(torch.randn(2, 8, device=device), cached_x((1, 8, 64), 4, 32, -1, "int", 1, device))
    with pytest.raises(BAD, match="qt must be"):
        genaccel.xquant_matmul(torch.randn(8, 64), torch.randn(5, 64))


def test_opcheck():
    qt = cached_x((20, 64), 3, 32, -1, "fp16", seed=2, device="cpu")
    w, b = torch.randn(9, 64), torch.randn(9)
    torch.library.opcheck(torch.ops.genaccel.xquant_matmul.default, (qt.codes, qt.scales, qt.zeros, 3, 32, 64, w, b))
    a = torch.randn(2, 3, 10)
    torch.library.opcheck(torch.ops.genaccel.xquant_weighted_sum.default, (a, qt.codes, qt.scales, qt.zeros, 3, 32, 64))
