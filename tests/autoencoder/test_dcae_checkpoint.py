"""Weight loading from the original DC-AE / DC-AE-V checkpoint layout (efficientvit and DC-Gen module
names): round trips between both layouts, key names read off the original module tree, the fused qkv
conv's per-head layout checked with the original attention formula, and the file wrappers."""

import json

import pytest
import torch
import torch.nn.functional as F

from genaccel.autoencoder import DCAE, DCAEV
from genaccel.autoencoder.dcae.checkpoint import (from_original, original_key_map, read_state_dict,
                                                 resolve_config)

from test_dcae_model import TINY, randomize
from test_dcae_video import TINY as TINY_V

# Keys of the original modules, written from efficientvit's dc_ae.py / nn/ops.py and DC-Gen's
# dc_ae_v.py: project_in/out, ResidualBlock(.main), OpSequential(.op_list), ConvLayer(.conv/.norm).
EXPECTED = {
    "in-style": [
        "encoder.project_in.conv.conv.weight",                   # ConvPixelUnshuffle(.conv: ConvLayer)
        "encoder.stages.1.op_list.0.main.conv1.conv.bias",       # ResBlock
        "encoder.stages.1.op_list.0.main.conv2.norm.weight",
        "encoder.stages.1.op_list.1.main.conv.conv.weight",      # the stage's down block, after 1 block
        "encoder.stages.3.op_list.1.context_module.main.qkv.conv.weight",
        "encoder.stages.3.op_list.1.context_module.main.proj.norm.bias",
        "encoder.stages.3.op_list.1.local_module.main.point_conv.norm.weight",
        "encoder.project_out.main.op_list.0.conv.weight",        # ResidualBlock(OpSequential([ConvLayer]))
        "decoder.project_in.main.conv.weight",
        "decoder.stages.1.op_list.0.main.conv.conv.weight",      # up block first in a decoder stage
        "decoder.stages.1.op_list.2.main.conv2.norm.running_var",  # BatchNorm buffers
        "decoder.project_out.op_list.0.weight",                  # [norm, act, ConvPixelShuffle]
        "decoder.project_out.op_list.2.conv.conv.weight",
    ],
    "sana-style": [
        "encoder.project_in.conv.weight",                        # a plain ConvLayer (first stage has blocks)
        "encoder.stages.0.op_list.1.main.conv.weight",           # stride-2 ConvLayer down
        "encoder.stages.2.op_list.0.context_module.main.aggreg.0.0.weight",
        "encoder.stages.2.op_list.1.context_module.main.aggreg.0.1.weight",
        "decoder.stages.1.op_list.0.main.conv.conv.weight",      # InterpolateConv(.conv: ConvLayer)
        "decoder.project_out.op_list.2.conv.weight",
    ],
}
EXPECTED_V = [
    "encoder.project_in.conv.conv.weight",
    "encoder.stages.1.op_list.0.main.conv2.conv.weight",
    "encoder.stages.1.op_list.1.main.conv.conv.weight",
    "encoder.stages.2.op_list.1.main.conv.conv.bias",  # the temporal down
    "encoder.project_out.conv.weight",                 # DC-AE-V: no out shortcut
    "decoder.project_in.conv.bias",
    "decoder.stages.2.op_list.0.main.conv.conv.weight",
    "decoder.project_out.op_list.0.bias",
    "decoder.project_out.op_list.2.conv.conv.weight",
]


def image_model(style, seed=0):
    return randomize(DCAE(TINY[style]).eval(), seed)


def video_model(seed=0):
    return randomize(DCAEV(TINY_V).eval(), seed)


@pytest.mark.parametrize("style", list(TINY))
def test_image_original_keys(style):
    model = image_model(style)
    orig = model.original_state_dict()
    for key in EXPECTED[style]:
        assert key in orig, key
    blocks = sum(type(m).__name__ == "EfficientViTBlock" for m in model.modules())
    assert len(orig) == len(model.state_dict()) - 2 * blocks  # q, k, v -> one fused qkv per block
    assert all(k.startswith(("encoder.", "decoder.")) for k in orig)


def test_video_original_keys():
    model = video_model()
    orig = model.original_state_dict()
    for key in EXPECTED_V:
        assert key in orig, key
    assert len(orig) == len(model.state_dict())
    assert orig["encoder.project_out.conv.weight"].shape == model.encoder.conv_out.weight.shape


@pytest.mark.parametrize("style", list(TINY))
def test_image_round_trip(style):
    model = image_model(style, seed=1)
    other = image_model(style, seed=2)
    other.load_state_dict(from_original(other, model.original_state_dict()))
    for key, value in model.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_video_round_trip_through_files(tmp_path):
    """DC-Gen's FSDP dict (EMA weights preferred) in a .pt, and a safetensors folder with config.json."""
    model = video_model(seed=3)
    orig = model.original_state_dict()
    decoy = {k: torch.zeros_like(v) for k, v in orig.items()}
    torch.save({"model_state_dict": decoy, "ema_model_state_dict": {"0.9999": orig}}, tmp_path / "ae.pt")
    loaded = DCAEV.from_original(str(tmp_path / "ae.pt"), config=TINY_V)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    # a wrapped plain state dict with a DDP prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in orig.items()}}, tmp_path / "ddp.pth")
    assert torch.equal(read_state_dict(str(tmp_path / "ddp.pth"))["decoder.project_in.conv.bias"],
                       orig["decoder.project_in.conv.bias"])


def test_image_folder_with_model_name(tmp_path):
    from safetensors.torch import save_file

    with torch.device("meta"):
        released = DCAE("dc-ae-f32c32-sana-1.0")
    keys = original_key_map(released)
    assert "encoder.stages.3.op_list.0.context_module.main.aggreg.0.0.weight" in keys.values()
    model = image_model("in-style", seed=4)
    save_file(model.original_state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "dc-ae-f32c32-in-1.0"}))
    assert resolve_config(str(tmp_path), None) == "dc-ae-f32c32-in-1.0"
    assert resolve_config(str(tmp_path), "dc-ae-v-f32t4c32-1.0-bf16") == "dc-ae-v-f32t4c32-1.0"
    loaded = DCAE.from_original(str(tmp_path), config=TINY["in-style"])
    assert torch.equal(loaded.decoder.conv_in.weight, model.decoder.conv_in.weight)


def test_fused_qkv_matches_the_original_attention():
    """Run one EfficientViT block's attention the original way from the original-layout weights: the fused
    1x1 qkv conv, reshape to (B, heads, 3 dim, N) and slice q, k, v per head, ReLU, V padded with a ones
    row, eps 1e-15, then proj conv + norm. It must equal our LiteMLA minus its residual."""
    model = image_model("in-style", seed=5)
    block = model.encoder.down_blocks[3][0]
    prefix = "encoder.stages.3.op_list.0.context_module.main."
    orig = model.original_state_dict()
    x = torch.randn(2, 32, 4, 4)
    qkv = F.conv2d(x, orig[prefix + "qkv.conv.weight"])
    b, _, h, w = qkv.shape
    dim = 8
    qkv = qkv.reshape(b, -1, 3 * dim, h * w)
    q, k, v = F.relu(qkv[:, :, :dim]), F.relu(qkv[:, :, dim:2 * dim]), qkv[:, :, 2 * dim:]
    v = F.pad(v, (0, 0, 0, 1), value=1.0)
    out = (v @ k.transpose(-1, -2)) @ q
    out = (out[:, :, :-1] / (out[:, :, -1:] + 1e-15)).reshape(b, -1, h, w)
    out = F.conv2d(out, orig[prefix + "proj.conv.weight"])
    rms = torch.rsqrt(out.pow(2).mean(1, keepdim=True) + 1e-5)
    out = out * rms * orig[prefix + "proj.norm.weight"][:, None, None] + orig[prefix + "proj.norm.bias"][:, None, None]
    with torch.no_grad():
        ours = block.attn(x) - x
    assert (ours - out).abs().max() < 1e-5


def test_bad_checkpoints(tmp_path):
    model = image_model("in-style")
    orig = model.original_state_dict()
    broken = dict(orig)
    del broken["decoder.project_in.main.conv.weight"]
    broken["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['decoder.project_in.main.conv.weight'\].*unexpected"):
        from_original(model, broken)
    wrong = dict(orig)
    wrong["encoder.project_in.conv.conv.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(ValueError, match="encoder.project_in.conv.conv.weight has shape"):
        from_original(model, wrong)
    with pytest.raises(ValueError, match="config is needed"):
        DCAE.from_original(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        read_state_dict(str(tmp_path / "none.pt"))
