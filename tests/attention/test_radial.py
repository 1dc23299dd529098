"""Radial attention: the fast block mask against the readable reference of the rules (and against a
pattern derived by hand), RadialAttention against float64 block-sparse attention under that mask
(forward and gradients), its dense warm-up gating, bad input."""

import itertools
import math

import pytest
import torch

import genaccel
from conftest import BAD, RTOL, devices, rel_err
from genaccel.attention.block_sparse.reference import block_sparse_attention_reference
from genaccel.attention.radial.reference import radial_block_mask_reference
from genaccel.nn import RadialAttention

# (num_frames, tokens_per_frame, block_size): frames 2-20, frames that straddle blocks, s < B, s = B.
GEOMETRIES = [(2, 100, 32), (3, 64, 64), (5, 130, 32), (7, 40, 16), (9, 50, 64), (12, 72, 32), (16, 33, 16),
              (20, 48, 32), (13, 96, 96), (6, 1, 3), (5, 300, 16), (4, 75, 16)]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "f{}s{}B{}".format(*g))
def test_mask_equals_reference(geometry):
    f, s, B = geometry
    for decay, sink, text in itertools.product((0.2, 0.5, 0.7, 1.0), (True, False), (0, 45)):
        fast = genaccel.radial_block_mask(f, s, B, decay, sink, text)
        ref = radial_block_mask_reference(f, s, B, decay, sink, text)
        assert fast.dtype == torch.bool and fast.shape == (math.ceil((f * s + text) / B),) * 2
        assert torch.equal(fast, ref), (geometry, decay, sink, text, int((fast != ref).sum()))


def test_one_block_per_frame_keeps_power_of_two_distances():
    # With s = B every frame is one block and every kept pair is dense (the band is clamped to B >= s);
    # decimation keeps distance d iff d is a multiple of 2^bitlen(d) / 2, i.e. d in {0, 1, 2, 4, 8, ...}.
    f = 20
    for sink in (False, True):
        mask = genaccel.radial_block_mask(f, 64, 64, 0.3, sink)
        expected = torch.tensor([[abs(i - j) in (0, 1, 2, 4, 8, 16) or (sink and j == 0) for j in range(f)]
                                 for i in range(f)])
        assert torch.equal(mask, expected)


def test_wan_window_sequence_and_text_rows():
    # s = 3840 = 30 blocks (brief A3): decay 0.2 gives w = 3840, 3840, 204.8, 204.8, then 128 from d = 4;
    # d = 1 is dense, so the near diagonal block band is fully set; text rows and columns are dense.
    mask = genaccel.radial_block_mask(4, 3840, 128, 0.2, True, text_tokens=300)
    assert mask.shape == (123, 123)
    assert mask[:60, :60].all() and mask[:, :30].all()
    assert mask[120:].all() and mask[:, 120:].all()
    # Frames 0 and 3 (d = 3, w = 204.8): a band of diagonal blocks, kept where > 60 % of the columns are busy.
    pair = mask[90:120, 0:30]
    assert pair.all()  # the sink
    far = mask[90:120, 30:60]  # frame 3 vs frame 1: d = 2, w = 204.8 -> the diagonal and its neighbours
    assert torch.equal(far, genaccel.radial_block_mask(4, 3840, 128, 0.2, False, 300)[90:120, 30:60])
    assert far.diagonal().all() and not far[0, 5:].any()


def test_mask_density():
    mask = torch.tensor([[True, False], [True, True]])
    assert genaccel.mask_density(mask) == 0.75
    assert genaccel.mask_density(mask[None, None].expand(2, 3, 2, 2)) == 0.75
    with pytest.raises(ValueError, match="block_mask"):
        genaccel.mask_density(mask.int())


@pytest.mark.parametrize("name,kwargs", [
    ("num_frames", dict(num_frames=0)), ("tokens_per_frame", dict(tokens_per_frame=2.5)),
    ("block_size", dict(block_size=0)), ("decay_factor", dict(decay_factor=-0.1)),
    ("decay_factor", dict(decay_factor=float("nan"))), ("sink_frame", dict(sink_frame=1)),
    ("text_tokens", dict(text_tokens=-1)),
])
def test_mask_bad_arguments(name, kwargs):
    args = dict(num_frames=4, tokens_per_frame=64, block_size=32) | kwargs
    with pytest.raises(BAD, match=name):
        genaccel.radial_block_mask(**args)


def radial_case(device):
    """(module arguments, dtype, B, H, Hkv, D): 16-token blocks on the CPU (a partial last block through
    the text tokens; density 0.66), bfloat16 and 64-token blocks on CUDA (frames straddle blocks; 0.74)."""
    if device == "cpu":
        return dict(num_frames=10, tokens_per_frame=96, block_size=16, decay_factor=0.5, text_tokens=20), \
            torch.float32, 2, 4, 2, 32
    return dict(num_frames=8, tokens_per_frame=320, block_size=64, decay_factor=0.5, text_tokens=40), \
        torch.bfloat16, 2, 4, 2, 64


@pytest.mark.parametrize("device", devices())
def test_attention_equals_reference_with_the_mask(device):
    args, dtype, B, H, Hkv, D = radial_case(device)
    module = RadialAttention(**args)
    N = module.seq_len
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, N, D, generator=gen).to(dtype).to(device).requires_grad_()
               for h in (H, Hkv, Hkv))
    out = module(q, k, v, layer_idx=3, step_idx=10)
    mask = genaccel.radial_block_mask(**args)
    assert 0.2 < genaccel.mask_density(mask) < 0.9  # a real sparse pattern, not dense or empty
    q64, k64, v64 = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    bs = args["block_size"]
    ref, _ = block_sparse_attention_reference(q64, k64, v64, mask[None, None], (bs, bs))
    assert rel_err(out, ref) <= RTOL[dtype]
    dout = torch.randn(out.shape, generator=gen).to(dtype).to(device)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double().cpu())
    for name, g, r in zip("qkv", grads, ref_grads):
        assert rel_err(g, r) <= RTOL[dtype] * (1 if dtype == torch.float32 else 2), name


def test_dense_warm_up_gating():
    module = RadialAttention(12, 64, 16, 0.5, dense_layers=2, dense_timesteps=3)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 768, 32, generator=gen) for _ in range(3))
    dense, _ = block_sparse_attention_reference(q, k, v, torch.ones(1, 1, 48, 48, dtype=torch.bool), (16, 16))
    sparse, _ = block_sparse_attention_reference(q, k, v, module.block_mask[None, None], (16, 16))
    assert rel_err(sparse, dense) > 1e-2  # the two paths differ on these inputs
    for layer, step, is_dense in [(0, None, True), (1, 5, True), (2, None, False), (None, 2, True),
                                  (5, 3, False), (None, None, False)]:
        assert module.is_dense(layer, step) == is_dense
        out = module(q, k, v, layer_idx=layer, step_idx=step)
        assert rel_err(out, dense if is_dense else sparse) <= RTOL[torch.float32], (layer, step)


def test_module_bad_input():
    module = RadialAttention(4, 64, 32)
    q = torch.randn(1, 2, 256, 16)
    with pytest.raises(ValueError, match="k must be a 4-D tensor .* N = .* = 256"):
        module(q, q[:, :, :200], q)
    with pytest.raises(ValueError, match="layer_idx"):
        module(q, q, q, layer_idx=-1)
    with pytest.raises(ValueError, match="dense_timesteps"):
        RadialAttention(4, 64, 32, dense_timesteps=1.5)
    with pytest.raises(ValueError, match="backend"):
        RadialAttention(4, 64, 32, backend="triton")
