"""The DC-AE ops (genaccel.chunk_causal_conv3d, space_to_channel, channel_to_space) against their float64
references (genaccel.autoencoder.dcae.reference: explicit padded chunks + conv3d, pixel_unshuffle + mean,
repeat_interleave + pixel_shuffle) on fresh random inputs, gradients included."""

import pytest
import torch
import torch.nn.functional as F

from conftest import BAD, devices

import genaccel
from genaccel.autoencoder.dcae import reference as R
from genaccel.testing import RTOL, rel_err


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand(g, *shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)


CONV_CASES = [  # (B, Cin, Cout, T, H, W), (kt, kh, kw), chunk
    ((1, 3, 5, 8, 6, 7), (3, 3, 3), 4),
    ((2, 4, 7, 6, 5, 9), (3, 3, 3), 2),
    ((1, 2, 3, 4, 4, 4), (3, 3, 3), 1),      # p == chunk: the halo is the whole previous chunk
    ((1, 3, 2, 10, 3, 70), (5, 1, 3), 5),    # wider than one 64-column tile, kt 5
    ((1, 5, 130, 4, 9, 4), (1, 3, 5), 2),    # kt 1 (no temporal halo), Cout past one 128-channel block
    ((1, 1, 1, 3, 1, 1), (3, 1, 1), 3),      # single pixel
]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("with_cache", [False, True])
@pytest.mark.parametrize("shape, kernel, chunk", CONV_CASES)
def test_chunk_conv_matches_reference(device, shape, kernel, chunk, with_cache):
    b, cin, cout, t, h, w = shape
    g = gen(sum(shape) + chunk)
    x = rand(g, b, cin, t, h, w, device=device)
    weight = rand(g, cout, cin, *kernel, device=device) / (cin * kernel[0] * kernel[1] * kernel[2]) ** 0.5
    bias = rand(g, cout, device=device)
    p = (kernel[0] - 1) // 2
    cache = rand(g, b, cin, p, h, w, device=device) if with_cache else None
    y, new_cache = genaccel.chunk_causal_conv3d(x, weight, bias, chunk_size=chunk, cache=cache)
    ref = R.chunk_causal_conv3d(x.cpu(), weight.cpu(), bias.cpu(), chunk, None if cache is None else cache.cpu())
    assert y.shape == (b, cout, t, h, w) and y.dtype == torch.float32
    assert rel_err(y.cpu(), ref) < RTOL[torch.float32]
    assert torch.equal(new_cache, x[:, :, t - p:])


def test_chunk_conv_is_causal_across_chunks_and_bidirectional_inside():
    # Independent of the reference (kt = 3, chunks of 4): frame 4, the first of chunk 1, reaches outputs 4
    # and 5 but not 3 (no look-ahead into the next chunk); frame 7, its last, reaches 6 and 7 and, as the
    # next chunk's left halo, 8.
    g = gen(3)
    x = rand(g, 1, 2, 12, 5, 5)
    weight = rand(g, 3, 2, 3, 3, 3)
    y0, _ = genaccel.chunk_causal_conv3d(x, weight, chunk_size=4)
    for frame, reached in ((4, {4, 5}), (7, {6, 7, 8})):
        x1 = x.clone()
        x1[:, :, frame] += 1.0
        y1, _ = genaccel.chunk_causal_conv3d(x1, weight, chunk_size=4)
        moved = (y1 - y0).abs().amax(dim=(0, 1, 3, 4)) > 1e-6
        assert moved.tolist() == [t in reached for t in range(12)]


@pytest.mark.parametrize("device", devices())
def test_chunk_conv_streamed_equals_full_pass(device):
    g = gen(7)
    x = rand(g, 1, 3, 12, 6, 6, device=device)
    weight, bias = rand(g, 4, 3, 3, 3, 3, device=device), rand(g, 4, device=device)
    full, _ = genaccel.chunk_causal_conv3d(x, weight, bias, chunk_size=3)
    cache, parts = None, []
    for piece in x.split(6, dim=2):  # two calls of two chunks each
        y, cache = genaccel.chunk_causal_conv3d(piece, weight, bias, chunk_size=3, cache=cache)
        parts.append(y)
    assert torch.equal(torch.cat(parts, dim=2), full)


def test_chunk_conv_without_chunking_is_an_ordinary_conv():
    # One chunk spanning the video with no cache is conv3d with zero padding: a check against torch itself.
    g = gen(11)
    x, weight, bias = rand(g, 2, 3, 5, 6, 7), rand(g, 4, 3, 3, 3, 5), rand(g, 4)
    y, _ = genaccel.chunk_causal_conv3d(x, weight, bias, chunk_size=5)
    assert rel_err(y, F.conv3d(x.double(), weight.double(), bias.double(), padding=(1, 1, 2))) < 1e-5


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunk_conv_16bit(device, dtype):
    g = gen(5)
    x = rand(g, 1, 8, 4, 6, 6, dtype=dtype, device=device)
    weight = (rand(g, 8, 8, 3, 3, 3) / 15).to(dtype=dtype, device=device)
    bias = rand(g, 8, dtype=dtype, device=device)
    y, _ = genaccel.chunk_causal_conv3d(x, weight, bias, chunk_size=2)
    assert y.dtype == dtype
    assert rel_err(y.cpu(), R.chunk_causal_conv3d(x.cpu(), weight.cpu(), bias.cpu(), 2)) < RTOL[dtype]


@pytest.mark.parametrize("device", devices())
def test_chunk_conv_non_contiguous_input(device):
    g = gen(9)
    x = rand(g, 1, 4, 6, 5, 10, device=device)[..., ::2]
    weight = rand(g, 3, 4, 3, 3, 3, device=device)
    y, _ = genaccel.chunk_causal_conv3d(x, weight, chunk_size=3)
    assert rel_err(y.cpu(), R.chunk_causal_conv3d(x.cpu(), weight.cpu(), None, 3)) < RTOL[torch.float32]


@pytest.mark.parametrize("with_cache", [False, True])
def test_chunk_conv_gradients(with_cache):
    g = gen(13)
    x = rand(g, 1, 2, 6, 4, 5).double().requires_grad_()
    weight = rand(g, 3, 2, 3, 3, 3).double().requires_grad_()
    bias = rand(g, 3).double().requires_grad_()
    cache = rand(g, 1, 2, 1, 4, 5).double().requires_grad_() if with_cache else None
    gy = rand(g, 1, 3, 6, 4, 5).double()
    inputs = [x, weight, bias] + ([cache] if with_cache else [])

    ref = R.chunk_causal_conv3d(x, weight, bias, 3, cache)
    ref_grads = torch.autograd.grad(ref, inputs, gy)
    y, _ = genaccel.chunk_causal_conv3d(x.float(), weight.float(), bias.float(), chunk_size=3,
                                        cache=None if cache is None else cache.float())
    grads = torch.autograd.grad(y, inputs, gy.float())
    for got, want in zip(grads, ref_grads):
        assert rel_err(got, want) < RTOL[torch.float32]


def test_chunk_conv_opcheck():
    g = gen(17)
    x, weight, bias = rand(g, 1, 2, 4, 3, 3), rand(g, 3, 2, 3, 3, 3), rand(g, 3)
    cache = rand(g, 1, 2, 1, 3, 3)
    torch.library.opcheck(torch.ops.genaccel.dcae_chunk_causal_conv3d, (x, weight, bias, 2, cache))
    torch.library.opcheck(torch.ops.genaccel.dcae_chunk_causal_conv3d, (x, weight, None, 4, None))


@pytest.mark.parametrize("device", devices())
def test_chunk_conv_bad_inputs(device):
    g = gen(19)
    x, weight = rand(g, 1, 2, 8, 4, 4, device=device), rand(g, 3, 2, 3, 3, 3, device=device)
    conv = genaccel.chunk_causal_conv3d
    with pytest.raises(BAD, match="multiple of chunk_size"):
        conv(x, weight, chunk_size=3)
    with pytest.raises(BAD, match="chunk_size must be >= the temporal half-kernel"):
        conv(x, rand(g, 3, 2, 5, 3, 3, device=device), chunk_size=1)
    with pytest.raises(BAD, match="x must be a 5-D"):
        conv(x[0], weight, chunk_size=4)
    with pytest.raises(BAD, match="weight must be a 5-D .*Cin = 2"):
        conv(x, rand(g, 3, 5, 3, 3, 3, device=device), chunk_size=4)
    with pytest.raises(BAD, match="odd"):
        conv(x, rand(g, 3, 2, 3, 2, 3, device=device), chunk_size=4)
    with pytest.raises(BAD, match="bias"):
        conv(x, weight, rand(g, 4, device=device), chunk_size=4)
    with pytest.raises(BAD, match="cache"):
        conv(x, weight, chunk_size=4, cache=rand(g, 1, 2, 2, 4, 4, device=device))
    with pytest.raises(BAD, match="chunk_size"):
        conv(x, weight, chunk_size=0)


SHUFFLE_CASES = [  # x shape, r, rt, out channels of space_to_channel
    ((2, 4, 6, 8), 2, 1, 8),        # G = 2 (DC-AE's 128 -> 256 shape)
    ((1, 3, 4, 4), 2, 1, 3),        # G = 4: a 2x2 average pool
    ((1, 6, 9, 3), 3, 1, 27),       # G = 2, r = 3
    ((1, 4, 8, 4, 6), 2, 4, 16),    # video, rt = 4
    ((2, 2, 4, 2, 2), 1, 4, 4),     # temporal only (DC-AE-V's 4x temporal down)
    ((1, 5, 2, 2), 1, 1, 5),        # identity
]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape, r, rt, out", SHUFFLE_CASES)
def test_space_to_channel_matches_reference(device, shape, r, rt, out):
    x = rand(gen(len(shape) + out), *shape, device=device)
    y = genaccel.space_to_channel(x, r, rt, out_channels=out)
    assert rel_err(y.cpu(), R.space_to_channel(x.cpu(), r, rt, out)) < 1e-6
    # and back: channel_to_space from the coarse grid to the fine one
    z = genaccel.channel_to_space(y, r, rt, out_channels=shape[1])
    assert z.shape == x.shape
    assert rel_err(z.cpu(), R.channel_to_space(y.cpu(), r, rt, shape[1])) < 1e-6


def test_shortcuts_are_torch_pixel_shuffles_for_images():
    # Independent of the reference: with one channel per group they are torch's own maps.
    x = rand(gen(1), 2, 3, 8, 6)
    assert torch.equal(genaccel.space_to_channel(x, 2, out_channels=12), F.pixel_unshuffle(x, 2))
    assert torch.equal(genaccel.channel_to_space(F.pixel_unshuffle(x, 2), 2, out_channels=3), x)
    assert torch.allclose(genaccel.space_to_channel(x, 2, out_channels=3), F.avg_pool2d(x, 2), atol=1e-6)
    assert torch.equal(genaccel.channel_to_space(x, 2, out_channels=3), F.interpolate(x, scale_factor=2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("device", devices())
def test_shortcuts_16bit(device, dtype):
    x = rand(gen(2), 1, 4, 4, 6, 6, dtype=dtype, device=device)
    y = genaccel.space_to_channel(x, 2, 2, out_channels=16)
    assert y.dtype == dtype and rel_err(y.cpu(), R.space_to_channel(x.cpu(), 2, 2, 16)) < RTOL[dtype]


@pytest.mark.parametrize("shape, r, rt, out", SHUFFLE_CASES[:4])
def test_shortcut_gradients(shape, r, rt, out):
    g = gen(4)
    x = rand(g, *shape).requires_grad_()
    gy = rand(g, *R.space_to_channel(x.detach(), r, rt, out).shape)
    got = torch.autograd.grad(genaccel.space_to_channel(x, r, rt, out_channels=out), x, gy)[0]
    xd = x.detach().double().requires_grad_()
    want = torch.autograd.grad(R.space_to_channel(xd, r, rt, out), xd, gy.double())[0]
    assert rel_err(got, want) < 1e-6
    c = rand(g, *gy.shape).requires_grad_()
    gz = rand(g, *shape)
    got = torch.autograd.grad(genaccel.channel_to_space(c, r, rt, out_channels=shape[1]), c, gz)[0]
    cd = c.detach().double().requires_grad_()
    want = torch.autograd.grad(R.channel_to_space(cd, r, rt, shape[1]), cd, gz.double())[0]
    assert rel_err(got, want) < 1e-6


def test_shortcut_opcheck():
    x = rand(gen(6), 1, 4, 4, 4, 6)
    torch.library.opcheck(torch.ops.genaccel.dcae_space_to_channel, (x, 2, 2, 8))
    torch.library.opcheck(torch.ops.genaccel.dcae_channel_to_space, (x, 2, 2, 8))


@pytest.mark.parametrize("device", devices())
def test_shortcut_bad_inputs(device):
    x = rand(gen(8), 1, 4, 6, 6, device=device)
    with pytest.raises(BAD, match="multiples of r"):
        genaccel.space_to_channel(x, 4, out_channels=4)
    with pytest.raises(BAD, match="out_channels must divide"):
        genaccel.space_to_channel(x, 2, out_channels=5)
    with pytest.raises(BAD, match="rt must be 1"):
        genaccel.space_to_channel(x, 2, 2, out_channels=4)
    with pytest.raises(BAD, match="channel count C must divide"):
        genaccel.channel_to_space(x[:, :3], 2, out_channels=2)  # 2 x 4 unshuffled channels from 3
    with pytest.raises(BAD, match="frame count T must be a multiple of rt"):
        genaccel.space_to_channel(x.unsqueeze(2).expand(1, 4, 3, 6, 6), 2, 2, out_channels=4)
    with pytest.raises(BAD, match="r must be"):
        genaccel.space_to_channel(x, 0, out_channels=4)
    with pytest.raises(BAD, match="x must be a 4-D"):
        genaccel.channel_to_space(x[0], 2, out_channels=4)
