"""The DC-AE-V video model (genaccel.autoencoder.DCAEV): streaming equals the full pass exactly, the
latent is causal across chunks, and the released config's structure matches the brief's
config-derived parameter counts."""

import pytest
import torch

from genaccel.autoencoder import DCAEV, DCAEVConfig
from genaccel.testing import rel_err

TINY = DCAEVConfig(latent_channels=4, block_out_channels=(4, 8, 16, 16), layers_per_block=(0, 1, 1, 1),
                   temporal_down_stage=2, chunk=8, latent_chunk=2)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = DCAEV(TINY).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if not name.endswith("weight") or p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def video(frames=24, size=16, seed=1):
    return torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes():
    model = tiny_model()
    with torch.no_grad():
        z = model.encode(video())
        assert z.shape == (1, 4, 6, 4, 4)
        assert model.decode(z).shape == (1, 3, 24, 16, 16)


@pytest.mark.parametrize("tile_chunks", [1, 3])
def test_streamed_equals_full_pass(tile_chunks):
    model, x = tiny_model(), video()
    with torch.no_grad():
        z = model.encode(x)
        streamed = torch.cat(list(model.encode_stream(x.split(8 * tile_chunks, dim=2))), dim=2)
        assert torch.equal(streamed, z)
        y = model.decode(z)
        assert torch.equal(torch.cat(list(model.decode_stream(z.split(2 * tile_chunks, dim=2))), dim=2), y)
        # the caches are gone afterwards: a plain call is the plain pass again
        assert torch.equal(model.encode(x), z)


def test_causal_across_chunks():
    model, x = tiny_model(), video()
    x2 = x.clone()
    x2[:, :, 16:] = torch.rand_like(x2[:, :, 16:])  # the third chunk only
    with torch.no_grad():
        z, z2 = model.encode(x), model.encode(x2)
        assert torch.equal(z[:, :, :4], z2[:, :, :4])     # latents of chunks 0 and 1 unchanged
        assert not torch.equal(z[:, :, 4:], z2[:, :, 4:])
        y, y2 = model.decode(z), model.decode(z2)
        assert torch.equal(y[:, :, :16], y2[:, :, :16])


def test_released_config_parameter_counts():
    with torch.device("meta"):
        model = DCAEV("dc-ae-v-f32t4c32-1.0")
    enc = sum(p.numel() for p in model.encoder.parameters()) / 1e9
    dec = sum(p.numel() for p in model.decoder.parameters()) / 1e9
    assert abs(enc - 0.92) < 0.01 and abs(dec - 1.22) < 0.01  # the brief: about 0.92B + 1.22B
    assert model.config.spatial_compression == 32


def test_bad_inputs():
    model = tiny_model()
    with pytest.raises(ValueError, match="multiple of 8"):
        model.encode(video(frames=12))
    with pytest.raises(ValueError, match="H, W of 4"):
        model.encode(video(size=18))
    with pytest.raises(ValueError, match="latent must be"):
        model.decode(torch.zeros(1, 4, 3, 4, 4))
    with pytest.raises(ValueError, match="chunk"):
        DCAEV(DCAEVConfig(chunk=30, latent_chunk=10))


def test_spatial_tiling():
    # One tile covering the frame is the plain call; otherwise the error shrinks as the overlap grows
    # past the (finite) receptive field: only the blend ramp's error is left.
    model, x = tiny_model(), video(frames=8, size=128)
    with torch.no_grad():
        z = model.encode(x)
        assert torch.equal(model.encode_tiled(x, tile=128, overlap=0), z)
        errs = [rel_err(model.encode_tiled(x, tile=t, overlap=o), z) for t, o in ((64, 16), (64, 32), (96, 48))]
        assert errs[0] > errs[1] > errs[2] and errs[2] < 0.1, errs
        y = model.decode(z)
        assert torch.equal(model.decode_tiled(z, tile=128, overlap=0), y)
        assert rel_err(model.decode_tiled(z, tile=96, overlap=48), y) < 0.1
    with pytest.raises(ValueError, match="tile must be"):
        model.encode_tiled(x, tile=30)
    with pytest.raises(ValueError, match="overlap must be"):
        model.encode_tiled(x, tile=64, overlap=64)


def test_streamed_and_tiled_equals_tiled_full_pass():
    """Streaming with spatial tiles: every crop carries its own halos, so the streamed result is exactly
    the tiled pass over the whole video (crops of a frame are disjoint work, tiles of time are not)."""
    model, x = tiny_model(), video(frames=24, size=48)
    with torch.no_grad():
        z = model.encode_tiled(x, tile=32, overlap=8)
        streamed = torch.cat(list(model.encode_stream(x.split(8, dim=2), tile=32, overlap=8)), dim=2)
        assert torch.equal(streamed, z)
        y = model.decode_tiled(z, tile=32, overlap=8)
        assert torch.equal(torch.cat(list(model.decode_stream(z.split(2, dim=2), tile=32, overlap=8)), dim=2), y)
        # the halos are carried: the second tile on its own (zeros before it) gives another latent
        assert not torch.equal(model.encode_tiled(x[:, :, 8:16], tile=32, overlap=8), streamed[:, :, 2:4])
    with pytest.raises(ValueError, match="tile must be"):
        next(model.encode_stream([x[:, :, :8]], tile=30))
