"""The DC-AE image model (genaccel.autoencoder.DCAE) against diffusers' AutoencoderDC with the same
random weights (the peer check of issue 19: equal to 1e-5 in float32), on small configs of both
released styles (in-1.0: pixel (un)shuffle, BatchNorm decoder stages, in/out shortcuts; SANA: stride-2
conv / interpolate, multi-scale aggregation, a full-resolution first stage), plus the released configs'
shapes."""

import pytest
import torch

from genaccel.autoencoder import DCAE, DCAEConfig
from genaccel.autoencoder.dcae.model import CONFIGS
from genaccel.testing import rel_err

TINY = {
    "in-style": DCAEConfig(
        latent_channels=4, attention_head_dim=8,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16, 16, 32), decoder_block_out_channels=(8, 16, 16, 32),
        encoder_layers_per_block=(0, 1, 1, 2), decoder_layers_per_block=(0, 2, 1, 1),
        encoder_qkv_multiscales=((),) * 4, decoder_qkv_multiscales=((),) * 4,
        decoder_norm_types=("batch_norm", "batch_norm", "rms_norm", "rms_norm"),
        decoder_act_fns=("relu", "relu", "silu", "silu")),
    "sana-style": DCAEConfig(
        latent_channels=8, attention_head_dim=8,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16, 32), decoder_block_out_channels=(8, 16, 32),
        encoder_layers_per_block=(1, 1, 2), decoder_layers_per_block=(1, 1, 2),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        upsample_block_type="interpolate", downsample_block_type="conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407),
}


def randomize(model, seed):
    """Every float tensor of the state dict random (BatchNorm running variances positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                r = torch.randn(t.shape, generator=g) * 0.2
                t.copy_(1 + r.abs() if name.endswith("running_var") else r)
    return model


@pytest.mark.parametrize("style", list(TINY))
def test_equals_diffusers_autoencoder_dc(style):
    diffusers = pytest.importorskip("diffusers")
    cfg = TINY[style]
    ours = randomize(DCAE(cfg), 0).eval()
    theirs = diffusers.AutoencoderDC(**ours.diffusers_config()).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # the same parameter names
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z, z_ref = ours.encode(x), theirs.encode(x).latent
        assert z.shape == (2, cfg.latent_channels, 32 // ours.spatial_compression, 48 // ours.spatial_compression)
        assert rel_err(z, z_ref) < 1e-5
        y, y_ref = ours.decode(z_ref), theirs.decode(z_ref).sample
        assert y.shape == x.shape and rel_err(y, y_ref) < 1e-5


@pytest.mark.parametrize("name, params_m, f, c", [("dc-ae-f32c32-in-1.0", 323, 32, 32),
                                                  ("dc-ae-f64c128-in-1.0", None, 64, 128),
                                                  ("dc-ae-f32c32-sana-1.0", None, 32, 32)])
def test_released_configs_build(name, params_m, f, c):
    with torch.device("meta"):
        model = DCAE(name)
    assert model.spatial_compression == f and model.config.latent_channels == c
    if params_m is not None:  # the brief: about 123M encoder + 200M decoder, counted from the config
        assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - params_m) / params_m < 0.05


def test_bad_inputs():
    model = DCAE(TINY["sana-style"])
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="z must be"):
        model.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="config must be"):
        DCAE("dc-ae-nope")


def test_spatial_tiling():
    # The EfficientViT stages' linear attention is global, so tiles never match exactly; one tile does.
    model = randomize(DCAE(TINY["sana-style"]), 2).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        assert torch.equal(model.encode_tiled(x, tile=64, overlap=0), z)
        assert model.encode_tiled(x, tile=32, overlap=16).shape == z.shape
        assert torch.equal(model.decode_tiled(z, tile=64, overlap=0), model.decode(z))
        assert model.decode_tiled(z, tile=32, overlap=8).shape == x.shape
