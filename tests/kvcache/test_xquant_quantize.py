"""XQuant's group quantizer (ops xquant_quantize / xquant_dequantize, genaccel.quantize / dequantize)
against the float64 layout of genaccel.kvcache.xquant.reference, on fresh random inputs."""

import math

import pytest
import torch

from conftest import BAD, devices

import genaccel
from genaccel.kvcache.xquant import reference as R
from genaccel.testing import quantizer_input

BITS = [2, 3, 4, 8]


def rows_of(x, group_size, bits, zero):
    """The op's raw outputs for a 2-D x."""
    return torch.ops.genaccel.xquant_quantize(x, bits, group_size, zero == "fp16")


def random_x(rows, k, dtype=torch.float32, seed=0, device="cpu"):
    return quantizer_input(torch.Generator().manual_seed(seed), rows, k).to(dtype).to(device)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("zero", ["int", "fp16"])
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("rows, k, group", [(37, 256, 128), (5, 200, 32), (3, 7, 8), (64, 130, 64)])
def test_layout_and_bound_match_the_reference(device, zero, bits, rows, k, group):
    x = random_x(rows, k, seed=bits * 100 + k, device=device)
    codes, scales, zeros = rows_of(x, group, bits, zero)
    ref = R.quantize(x.cpu(), bits, group, zero)
    assert codes.shape == ref["codes"].shape and scales.shape == ref["scales"].shape
    assert zeros.shape == ref["zeros"].shape and zeros.dtype == ref["zeros"].dtype
    # Scales from float32 arithmetic may sit one float16 step from the float64 ones, no further.
    step = (scales.cpu().view(torch.int16).int() - ref["scales"].view(torch.int16).int()).abs()
    assert int(step.max()) <= 1
    same_scale = step == 0
    # Where the scale agrees, the codes agree except at rounding ties (x / s within 1e-4 of a half).
    q = R.unpack(codes.cpu(), bits, k)
    group_of = torch.arange(k) // group
    tie = ((ref["ratio"] - ref["ratio"].floor() - 0.5).abs() < 1e-4)
    compare = same_scale[:, group_of] & ~tie
    assert torch.equal(q[compare], ref["q"][compare])
    # The kernel's dequantization is the reference's dequantization of the kernel's own stored bytes.
    out = torch.ops.genaccel.xquant_dequantize(codes, scales, zeros, bits, group, k, torch.float32)
    mine = R.dequantize(codes.cpu(), scales.cpu(), zeros.cpu(), bits, group, k, zero)
    assert torch.allclose(out.cpu().double(), mine, rtol=1e-6, atol=1e-7)
    # The error bound: half a scale, the group's own.
    bound = scales.cpu().double()[:, group_of] / 2
    assert ((out.cpu().double() - x.cpu().double()).abs() <= bound * (1 + 1e-5) + 1e-7).all()


@pytest.mark.parametrize("zero", ["int", "fp16"])
@pytest.mark.parametrize("bits", BITS)
def test_constant_groups_are_exact(zero, bits):
    x = torch.tensor([1.5, -0.25, 0.0, 3.0, -7.0, 2.0 ** -10]).repeat_interleave(16).view(1, -1)  # 6 groups of 16
    qt = genaccel.quantize(x, bits, 16, zero=zero)
    assert torch.equal(genaccel.dequantize(qt), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_quantize_any_axis_round_trips_within_the_bound(dtype, axis):
    x = random_x(48, 96, dtype, seed=7).view(4, 12, 96)
    qt = genaccel.quantize(x, 4, 32, axis=axis)
    back = genaccel.dequantize(qt)
    assert back.shape == x.shape and back.dtype == dtype
    moved = x.movedim(axis, -1)
    # scales per group along axis, broadcast back to elements
    s = qt.scales.double().repeat_interleave(32, dim=-1)[..., :moved.shape[-1]] / 2
    err = (back.movedim(axis, -1).double() - moved.double()).abs()
    slack = 0 if dtype == torch.float32 else moved.double().abs() * 2 ** -8  # the output dtype's rounding
    assert (err <= s * (1 + 1e-5) + slack + 1e-7).all()


def test_non_contiguous_input_equals_contiguous():
    x = random_x(64, 256, seed=3)
    codes, scales, zeros = rows_of(x[:, ::2], 32, 3, "int")
    ref = rows_of(x[:, ::2].contiguous(), 32, 3, "int")
    assert all(torch.equal(a, b) for a, b in zip((codes, scales, zeros), ref))


@pytest.mark.parametrize("zero", ["int", "fp16"])
def test_nbytes_counts_what_is_stored_and_the_mha_ratio_is_7_70(zero):
    # A token of a Llama-2-7B-like layer: d = 4096; its fp16 K and V take 2 * 4096 * 2 bytes.
    x = random_x(16, 4096, seed=1)
    qt = genaccel.quantize(x, 4, 128, zero=zero)
    assert qt.nbytes == R.stored_bytes(16, 4096, 4, 128, zero)
    ratio = 16 * 2 * 4096 * 2 / qt.nbytes
    assert ratio == pytest.approx(7.70 if zero == "int" else 7.53, abs=0.005)  # brief A3's arithmetic


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_refused(bad):
    x = random_x(4, 64)
    x[2, 5] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        genaccel.quantize(x, 4, 32)


def test_a_range_beyond_float16_scales_is_refused():
    x = torch.tensor([[-1e5, 1e5] * 4])
    with pytest.raises(ValueError, match="beyond float16"):
        genaccel.quantize(x, 2, 8)


@pytest.mark.parametrize("kwargs, what", [(dict(bits=5), "bits"), (dict(group_size=12), "group_size"),
                                          (dict(group_size=0), "group_size"), (dict(axis=3), "axis"),
                                          (dict(zero="none"), "zero")])
def test_bad_arguments_are_named(kwargs, what):
    args = {**dict(x=random_x(4, 64), bits=4), **kwargs}
    with pytest.raises(ValueError, match=what):
        genaccel.quantize(**args)


def test_op_checks_name_the_argument():
    x = random_x(4, 64)
    with pytest.raises(BAD, match="x must be a 2-D"):
        torch.ops.genaccel.xquant_quantize(x.view(2, 2, 64), 4, 32)
    with pytest.raises(BAD, match="bits"):
        torch.ops.genaccel.xquant_quantize(x, 6, 32)
    with pytest.raises(BAD, match="group_size"):
        torch.ops.genaccel.xquant_quantize(x, 4, 30)
    codes, scales, zeros = torch.ops.genaccel.xquant_quantize(x, 4, 32)
    deq = torch.ops.genaccel.xquant_dequantize
    with pytest.raises(BAD, match="codes must have"):
        deq(codes, scales, zeros, 4, 32, 65, torch.float32)
    with pytest.raises(BAD, match="scales must be"):
        deq(codes, scales.float(), zeros, 4, 32, 64, torch.float32)
    with pytest.raises(BAD, match="zeros must be"):
        deq(codes, scales, zeros[:, :0], 4, 32, 64, torch.float32)
    with pytest.raises(BAD, match="dtype"):
        deq(codes, scales, zeros, 4, 32, 64, torch.int32)


def test_empty_inputs():
    codes, scales, zeros = torch.ops.genaccel.xquant_quantize(torch.zeros(0, 64), 4, 32)
    assert codes.shape == (0, 32) and scales.shape == (0, 2)
    assert genaccel.dequantize(genaccel.quantize(torch.zeros(3, 0), 4, 32)).shape == (3, 0)


@pytest.mark.parametrize("zero", ["int", "fp16"])
def test_opcheck(zero):
    x = random_x(6, 80)
    torch.library.opcheck(torch.ops.genaccel.xquant_quantize, (x, 3, 16, zero == "fp16"))
    codes, scales, zeros = torch.ops.genaccel.xquant_quantize(x, 3, 16, zero == "fp16")
    torch.library.opcheck(torch.ops.genaccel.xquant_dequantize, (codes, scales, zeros, 3, 16, 80, torch.bfloat16))


@pytest.mark.parametrize("bits", BITS)
def test_pack_bits_is_the_ops_layout(bits):
    from genaccel.kvcache.xquant.ops import pack_bits, unpack_bits

    gen = torch.Generator().manual_seed(bits)
    q = torch.randint(0, 2 ** bits, (3, 2, 29), generator=gen)
    packed = pack_bits(q, bits)
    assert torch.equal(packed.view(6, -1), R.pack(q.view(6, -1), bits))
    assert torch.equal(unpack_bits(packed, bits, 29), q)


@pytest.mark.parametrize("zero", ["int", "fp16"])
@pytest.mark.parametrize("bits", [3, 4])
def test_append_per_token_equals_quantizing_everything(zero, bits):
    x = random_x(2 * 40, 64, seed=11).view(2, 40, 64)
    qt = genaccel.quantize(x[:, :7], bits, 32, axis=-1, zero=zero)
    for a, b in ((7, 8), (8, 23), (23, 40)):
        qt.append(x[:, a:b])
    whole = genaccel.quantize(x, bits, 32, axis=-1, zero=zero)
    assert qt.shape == (2, 40, 64) and qt.residual is None
    assert all(torch.equal(a, b) for a, b in ((qt.codes, whole.codes), (qt.scales, whole.scales),
                                             (qt.zeros, whole.zeros)))


@pytest.mark.parametrize("zero", ["int", "fp16"])
@pytest.mark.parametrize("bits", [2, 3])
def test_append_per_channel_keeps_the_partial_group_in_full_precision(zero, bits):
    x = random_x(2 * 75, 24, seed=5).view(2, 75, 24)  # 75 tokens: 4 groups of 16, 11 tokens left over
    qt = genaccel.QuantizedTensor.empty((2, 0, 24), bits, 16, axis=-2, zero=zero, dtype=torch.float32)
    for a, b in ((0, 1), (1, 16), (16, 17), (17, 50), (50, 75)):
        qt.append(x[:, a:b])
    assert qt.shape == (2, 75, 24) and torch.equal(qt.residual, x[:, 64:])
    whole = genaccel.quantize(x[:, :64], bits, 16, axis=-2, zero=zero)
    assert all(torch.equal(a, b) for a, b in ((qt.codes, whole.codes), (qt.scales, whole.scales),
                                             (qt.zeros, whole.zeros)))
    back = genaccel.dequantize(qt)
    assert back.shape == x.shape and torch.equal(back[:, 64:], x[:, 64:])
    assert torch.equal(back[:, :64], genaccel.dequantize(whole))
    assert qt.nbytes == whole.nbytes + x[:, 64:].numel() * 4


def test_append_refuses_what_does_not_fit():
    qt = genaccel.QuantizedTensor.empty((2, 0, 24), 4, 16, axis=-2, dtype=torch.float32)
    with pytest.raises(ValueError, match="tokens must have shape"):
        qt.append(torch.zeros(2, 3, 25))
    with pytest.raises(ValueError, match="dtype"):
        qt.append(torch.zeros(2, 3, 24, dtype=torch.float16))
    partial = genaccel.quantize(torch.randn(2, 20, 24), 4, 16, axis=-2)  # the last group holds 4 tokens
    with pytest.raises(ValueError, match="whole groups"):
        partial.append(torch.zeros(2, 3, 24))
    with pytest.raises(ValueError, match="no tokens yet"):
        genaccel.QuantizedTensor.empty((2, 3, 24), 4)
