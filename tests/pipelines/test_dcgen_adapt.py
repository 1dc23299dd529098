"""adapt_to_latent: the embedder / head swap of DC-Gen on diffusers' Wan (video) and Sana (image)
transformers with tiny random configs."""

import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from genaccel.autoencoder import DCAE, DCAEV  # noqa: E402
from genaccel.pipelines.dcgen import LatentSpace, adapt_to_latent  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent / "autoencoder"))
from test_dcae_model import TINY  # noqa: E402
from test_dcae_video import TINY as TINY_V  # noqa: E402


def tiny_wan(in_channels=4, seed=0):
    torch.manual_seed(seed)
    return diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32,
                                           in_channels=in_channels, out_channels=in_channels, text_dim=32,
                                           freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=64).eval()


def tiny_sana(in_channels=4, seed=0):
    torch.manual_seed(seed)
    return diffusers.SanaTransformer2DModel(in_channels=in_channels, out_channels=in_channels, num_attention_heads=2,
                                            attention_head_dim=16, num_layers=2, num_cross_attention_heads=2,
                                            cross_attention_head_dim=16, cross_attention_dim=32,
                                            caption_channels=32, patch_size=2, sample_size=8).eval()


def call(model, latent, seed=1):
    """Both transformers take (hidden_states, timestep, encoder_hidden_states) the same way."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return model(hidden_states=latent, timestep=torch.tensor([500.0]),
                     encoder_hidden_states=torch.randn(1, 8, 32, generator=g), return_dict=False)[0]


def others(model, adaptation):
    skip = (adaptation.embedder + ".", adaptation.head + ".")
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(skip)}


def test_wan_to_dcae_v_latent():
    base = LatentSpace(4, 8, 4)          # a Wan-like f8 t4 c4 latent with 1x2x2 patches
    target = DCAEV(TINY_V)               # f4 t4 c4 here: the tiny config's latent
    model = tiny_wan()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = adapt_to_latent(model, base, target)
    kept = others(model, a)
    assert kept and all(torch.equal(before[k], v) for k, v in kept.items())  # every other weight untouched
    assert model.patch_embedding.weight.shape == (64, 4, 1, 1, 1)
    assert model.proj_out.weight.shape == (4, 64)
    assert tuple(model.config.patch_size) == (1, 1, 1) and not a.copied
    z = torch.randn(1, 4, 2, 8, 8)
    assert call(model, z).shape == z.shape
    # 32 frames at 64x64: base f8 t4 with 1x2x2 patches = 8 x 4 x 4 tokens; the tiny f4 target with 1x1x1 = 8 x 16 x 16
    assert a.tokens(32, 64, 64) == (8 * 4 * 4, 8 * 16 * 16)


def test_sana_to_dcae_latent_and_the_token_count():
    model = tiny_sana()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = DCAE(TINY["in-style"])      # f8 c4 here
    a = adapt_to_latent(model, LatentSpace(4, 2), target)
    assert all(torch.equal(before[k], v) for k, v in others(model, a).items())
    assert model.patch_embed.proj.weight.shape == (32, 4, 1, 1) and model.proj_out.weight.shape == (4, 32)
    z = torch.randn(1, 4, 8, 8)
    assert call(model, z).shape == z.shape
    # a 64x64 image: base f2 with 2x2 patches = 16^2 tokens, target f8 with 1x1 = 8^2: 4x fewer
    assert a.tokens(1, 64, 64) == (256, 64)


@pytest.mark.parametrize("kind", ["wan", "sana"])
def test_same_latent_is_the_identity(kind):
    """Target = base and the same patch: the new modules are copies and the model is unchanged."""
    if kind == "wan":
        model, z, patch = tiny_wan(), torch.randn(1, 4, 3, 8, 12), (2, 2)
    else:
        model, z, patch = tiny_sana(), torch.randn(1, 4, 8, 12), 2
    want = call(model, z)
    a = adapt_to_latent(model, LatentSpace(4, 8, 4), LatentSpace(4, 8, 4), patch_size=patch)
    assert a.copied and torch.equal(call(model, z), want)
    b = adapt_to_latent(tiny_wan() if kind == "wan" else tiny_sana(), LatentSpace(4, 8), LatentSpace(4, 8),
                        patch_size=None)
    assert b.copied


def test_bad_inputs():
    with pytest.raises(TypeError, match="no recognisable patch embedder in a Linear"):
        adapt_to_latent(torch.nn.Linear(2, 2), LatentSpace(4, 8), LatentSpace(4, 8))
    with pytest.raises(ValueError, match="base_ae: the transformer takes 4 latent channels"):
        adapt_to_latent(tiny_wan(), LatentSpace(16, 8), LatentSpace(4, 8))
    with pytest.raises(ValueError, match="patch_size"):
        adapt_to_latent(tiny_wan(), LatentSpace(4, 8), LatentSpace(4, 8), patch_size=0)
    with pytest.raises(TypeError, match="ae must be"):
        adapt_to_latent(tiny_wan(), "f8", LatentSpace(4, 8))


def test_latent_space_of_diffusers_autoencoders():
    kl = diffusers.AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
                                 up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4)
    assert LatentSpace.of(kl) == LatentSpace(4, 2)
    wan_vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                         temperal_downsample=[False, True, True])
    assert LatentSpace.of(wan_vae) == LatentSpace(4, 8, 4)
    assert LatentSpace.of(DCAEV(TINY_V)) == LatentSpace(4, 4, 4)


@pytest.mark.parametrize("kind", ["wan", "sana"])
def test_alignment_steps_lower_the_embedding_loss(kind):
    """Stage 1's embedding term on a fixed batch: a few optimiser steps on the new embedder only lower it,
    and no other weight gets a gradient. The target latent is the base latent pooled 2x (a stand-in
    for the target AE's encoding of the same images)."""
    from genaccel.pipelines.dcgen import embedding_alignment_loss

    g = torch.Generator().manual_seed(3)
    if kind == "wan":
        model, base = tiny_wan(), torch.randn(2, 4, 2, 16, 16, generator=g)
        target = torch.nn.functional.avg_pool3d(base, (1, 2, 2)).repeat(1, 2, 1, 1, 1)  # 8 channels
    else:
        model, base = tiny_sana(), torch.randn(2, 4, 16, 16, generator=g)
        target = torch.nn.functional.avg_pool2d(base, 2).repeat(1, 2, 1, 1)
    a = adapt_to_latent(model, LatentSpace(4, 8, 4), LatentSpace(8, 16, 4))
    for p in model.parameters():
        p.requires_grad_(False)
    params = a.parameters(model)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(5):
        loss = embedding_alignment_loss(a, model, base, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a_ for a_, b in zip(losses, losses[1:])), losses  # every step lowers it
    assert all(p.grad is None for p in a.old_embedder.parameters())
    trained = {id(p) for p in params}
    assert all(p.grad is None for p in model.parameters() if id(p) not in trained)
