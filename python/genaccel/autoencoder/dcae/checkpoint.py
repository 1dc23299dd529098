"""The original checkpoint layout of DC-AE (mit-han-lab/efficientvit, dc-ai-projects/DC-Gen) and
DC-AE-V (DC-Gen's dc_videogen), mapped onto our parameter names (diffusers' AutoencoderDC names).

The original wraps everything in small containers, so its keys carry extra levels:
  ConvLayer(.conv = the conv, .norm)       -> "x.conv.weight", a norm after it "x.norm.weight"
  ResidualBlock(.main, .shortcut)          -> "x.main..."          (shortcuts have no parameters)
  OpSequential(.op_list)                   -> "x.op_list.<i>..."   (None entries dropped)
  EfficientViTBlock                        -> "context_module.main" (LiteMLA) + "local_module.main" (GLUMBConv)
and LiteMLA keeps one fused 1x1 qkv conv whose output rows are [to_q | to_k | to_v] stacked (our three
linears). `original_key_map` walks our module tree and writes down, for every one of our keys, the key
the original module at that position has; the converters below use it in both directions.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn

from . import model as image
from . import video

QKV = ("to_q", "to_k", "to_v")  # stacked in this order along the fused conv's output channels


def _params(module: nn.Module, ours: str, orig: str, table: Dict[str, str]) -> None:
    for key in module.state_dict():
        table[f"{ours}.{key}"] = f"{orig}.{key}"


def _conv_layer(module: nn.Module, ours: str, orig: str, table: Dict[str, str]) -> None:
    """A bare conv of ours is the `.conv` of an original ConvLayer / ConvLayer3d."""
    _params(module, ours, f"{orig}.conv", table)


def _sampler(module: nn.Module, ours: str, orig: str, table: Dict[str, str]) -> None:
    """Down/up blocks: ResidualBlock(main=<layer>) when they carry a shortcut. The (un)shuffle and
    interpolate layers hold their conv as a ConvLayer (`.conv.conv`); the stride-2 down is a ConvLayer."""
    base = f"{orig}.main" if module.shortcut else orig
    wrapped = not (isinstance(module, image.Downsample) and not module.unshuffle)
    _conv_layer(module.conv, f"{ours}.conv", f"{base}.conv" if wrapped else base, table)


def _block(module: nn.Module, ours: str, orig: str, table: Dict[str, str]) -> None:
    if isinstance(module, (image.ResBlock, video.ResBlock3d)):
        _conv_layer(module.conv1, f"{ours}.conv1", f"{orig}.main.conv1", table)
        _conv_layer(module.conv2, f"{ours}.conv2", f"{orig}.main.conv2", table)
        _params(module.norm, f"{ours}.norm", f"{orig}.main.conv2.norm", table)
    elif isinstance(module, image.EfficientViTBlock):
        attn, mlp = f"{orig}.context_module.main", f"{orig}.local_module.main"
        for name in QKV:
            table[f"{ours}.attn.{name}.weight"] = f"{attn}.qkv.conv.weight"
        for s, _ in enumerate(module.attn.to_qkv_multiscale):
            table[f"{ours}.attn.to_qkv_multiscale.{s}.proj_in.weight"] = f"{attn}.aggreg.{s}.0.weight"
            table[f"{ours}.attn.to_qkv_multiscale.{s}.proj_out.weight"] = f"{attn}.aggreg.{s}.1.weight"
        _conv_layer(module.attn.to_out, f"{ours}.attn.to_out", f"{attn}.proj", table)
        _params(module.attn.norm_out, f"{ours}.attn.norm_out", f"{attn}.proj.norm", table)
        glu = module.conv_out
        for mine, theirs in (("conv_inverted", "inverted_conv"), ("conv_depth", "depth_conv"),
                             ("conv_point", "point_conv")):
            _conv_layer(getattr(glu, mine), f"{ours}.conv_out.{mine}", f"{mlp}.{theirs}", table)
        _params(glu.norm, f"{ours}.conv_out.norm", f"{mlp}.point_conv.norm", table)
    else:
        _sampler(module, ours, orig, table)


def _stages(stages: nn.ModuleList, ours: str, orig: str, table: Dict[str, str]) -> None:
    for i, stage in enumerate(stages):
        for j, block in enumerate(stage):
            _block(block, f"{ours}.{i}.{j}", f"{orig}.stages.{i}.op_list.{j}", table)


def _conv_or_sampler(module: nn.Module, ours: str, orig: str, table: Dict[str, str]) -> None:
    (_sampler if hasattr(module, "shortcut") else _conv_layer)(module, ours, orig, table)


def original_key_map(model: nn.Module) -> Dict[str, str]:
    """Our state-dict key -> the original checkpoint's key, for a DCAE or a DCAEV (the three q/k/v
    linears of a LiteMLA all name the one fused qkv key)."""
    table: Dict[str, str] = {}
    enc, dec = model.encoder, model.decoder
    if isinstance(model, image.DCAE):
        _conv_or_sampler(enc.conv_in, "encoder.conv_in", "encoder.project_in", table)
        _stages(enc.down_blocks, "encoder.down_blocks", "encoder", table)
        out = "encoder.project_out.main" if enc.out_shortcut else "encoder.project_out"
        _conv_layer(enc.conv_out, "encoder.conv_out", f"{out}.op_list.0", table)
        _conv_layer(dec.conv_in, "decoder.conv_in", "decoder.project_in.main" if dec.in_shortcut
                    else "decoder.project_in", table)
        _stages(dec.up_blocks, "decoder.up_blocks", "decoder", table)
    elif isinstance(model, video.DCAEV):  # DC-AE-V has no in/out shortcuts
        _sampler(enc.conv_in, "encoder.conv_in", "encoder.project_in", table)
        _stages(enc.stages, "encoder.stages", "encoder", table)
        _conv_layer(enc.conv_out, "encoder.conv_out", "encoder.project_out", table)
        _conv_layer(dec.conv_in, "decoder.conv_in", "decoder.project_in", table)
        _stages(dec.stages, "decoder.stages", "decoder", table)
    else:
        raise TypeError(f"model must be a DCAE or a DCAEV, got {type(model).__name__}")
    _params(dec.norm_out, "decoder.norm_out", "decoder.project_out.op_list.0", table)  # op_list.1: the activation
    _conv_or_sampler(dec.conv_out, "decoder.conv_out", "decoder.project_out.op_list.2", table)
    missing = set(model.state_dict()) - set(table)
    if missing:  # a module the walk does not know: fail here rather than write a partial checkpoint
        raise RuntimeError(f"no original name for {sorted(missing)[:5]}")
    return table


def _qkv_part(key: str) -> Optional[int]:
    for i, name in enumerate(QKV):
        if key.endswith(f".attn.{name}.weight"):
            return i
    return None


def to_original(model: nn.Module, state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """Our state dict (default: the model's) in the original layout: 1x1 convs as 4-D tensors, q/k/v fused."""
    ours = dict(model.state_dict() if state_dict is None else state_dict)
    table = original_key_map(model)
    out: Dict[str, torch.Tensor] = {}
    for key, orig in table.items():
        if _qkv_part(key) == 0:
            stem = key[: -len("to_q.weight")]
            out[orig] = torch.cat([ours[f"{stem}{n}.weight"] for n in QKV])[:, :, None, None]
        elif _qkv_part(key) is None:
            tensor = ours[key]
            # nn.Linear 1x1 convs of ours are (out, in); the original's are (out, in, 1, 1)
            out[orig] = tensor[:, :, None, None] if key.endswith("weight") and tensor.dim() == 2 else tensor
    return out


def from_original(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An original-layout state dict in our layout, checked against the model: every key present,
    nothing left over, every shape right (errors name the keys)."""
    table = original_key_map(model)
    expected = model.state_dict()
    needed = set(table.values())
    missing, unexpected = sorted(needed - set(state_dict)), sorted(set(state_dict) - needed)
    if missing or unexpected:
        raise ValueError(f"not a checkpoint of this config in the original layout: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    out: Dict[str, torch.Tensor] = {}
    for key, orig in table.items():
        tensor = state_dict[orig]
        part = _qkv_part(key)
        if part is not None:
            if tensor.dim() != 4 or tensor.shape[0] % 3:
                raise ValueError(f"{orig} must be a fused (3 inner, C, 1, 1) qkv weight, got {tuple(tensor.shape)}")
            tensor = tensor.flatten(1).chunk(3)[part]
        shape = expected[key].shape
        if tensor.shape != shape:
            if tensor.numel() != expected[key].numel() or tensor.dim() != 4:
                raise ValueError(f"{orig} has shape {tuple(tensor.shape)}, the config needs {tuple(shape)}")
            tensor = tensor.reshape(shape)  # a 1x1 conv weight for one of our linears
        out[key] = tensor
    return out


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A checkpoint file or folder as a flat state dict: safetensors, or a torch file (weights_only)
    with the original trainers' wrappers removed ("state_dict", "model", "module", and DC-AE-V's FSDP
    dict, whose EMA weights are preferred)."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith((".safetensors", ".pt", ".pth", ".bin")))
        if len(names) != 1:
            raise ValueError(f"path {path!r} must hold exactly one .safetensors/.pt/.pth/.bin file, found {names}")
        path = os.path.join(path, names[0])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if "ema_model_state_dict" in sd:  # {decay: state dict}
        ema = sd["ema_model_state_dict"]
        sd = ema[next(iter(ema))]
    for wrapper in ("model_state_dict", "state_dict", "model", "module"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def config_name(path: str) -> Optional[str]:
    """The registered name in an original folder's config.json (the hub mixin writes {"model_name": ...})."""
    cfg = os.path.join(path, "config.json") if os.path.isdir(path) else None
    if cfg and os.path.isfile(cfg):
        with open(cfg) as f:
            return json.load(f).get("model_name")
    return None


def resolve_config(path: str, config):
    """The config to build: the one given, else the folder's config.json model_name ("-bf16" names the
    same architecture)."""
    config = config if config is not None else config_name(path)
    if config is None:
        raise ValueError(f"config is needed: {path!r} has no config.json with a model_name")
    return config.removesuffix("-bf16") if isinstance(config, str) else config


def save(model: nn.Module, folder: str) -> None:
    """Our own layout: config.json {"genaccel_model": "DCAE" | "DCAEV", "config": {...}} and
    model.safetensors (our key names); `load` reads it back."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    if not isinstance(model, (image.DCAE, video.DCAEV)):
        raise TypeError(f"model must be a DCAE or a DCAEV, got {type(model).__name__}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"genaccel_model": type(model).__name__, "config": asdict(model.config)}, f, indent=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, "model.safetensors"))


def load(path: str, config=None) -> nn.Module:
    """A DCAE or DCAEV from any layout: a folder saved by `save`, a diffusers AutoencoderDC folder, an
    original folder (config.json with model_name), or an original checkpoint file with `config` (a
    registered name or a config object)."""
    cfg_file = os.path.join(path, "config.json")
    if os.path.isdir(path) and os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            meta = json.load(f)
        if "genaccel_model" in meta:
            kind = {"DCAE": (image.DCAE, image.DCAEConfig), "DCAEV": (video.DCAEV, video.DCAEVConfig)}
            if meta["genaccel_model"] not in kind:
                raise ValueError(f"{cfg_file}: genaccel_model must be DCAE or DCAEV, got {meta['genaccel_model']!r}")
            cls, cfg_cls = kind[meta["genaccel_model"]]
            model = cls(cfg_cls(**meta["config"]))
            from safetensors.torch import load_file

            model.load_state_dict(load_file(os.path.join(path, "model.safetensors")))
            return model
        if meta.get("_class_name") == "AutoencoderDC":
            return image.DCAE.from_diffusers(path)
    config = resolve_config(path, config)
    is_video = isinstance(config, video.DCAEVConfig) or (isinstance(config, str) and config.startswith("dc-ae-v-"))
    return (video.DCAEV if is_video else image.DCAE).from_original(path, config)
