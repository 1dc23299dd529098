"""Radial attention in the hostile-input battery: the block-mask planner against the readable reference
of its rules, and RadialAttention's forward against float64 block-sparse attention under that mask."""

import torch

import genaccel
from genaccel.attention.block_sparse.reference import block_sparse_attention_reference
from genaccel.attention.radial.reference import radial_block_mask_reference

from . import ERROR, RESULT, Case, OpSpec, register

# Frames straddle blocks, the last block is partial (text tokens), density about 0.7.
MASK_ARGS = dict(num_frames=6, tokens_per_frame=40, block_size=16, decay_factor=0.5, sink_frame=True, text_tokens=10)


def geometry(device):
    """RadialAttention's arguments: 16-token blocks on the CPU, 64-token blocks on CUDA (its kernels' least)."""
    if device == "cpu":
        return dict(MASK_ARGS)
    return dict(num_frames=6, tokens_per_frame=160, block_size=64, decay_factor=0.5, sink_frame=True, text_tokens=40)


register(OpSpec(
    name="genaccel.radial_block_mask",
    call=genaccel.radial_block_mask,
    base=lambda gen, device: dict(MASK_ARGS),
    reference=lambda a: (radial_block_mask_reference(**a),),
    tensors={},
    scalars=dict(num_frames="int", tokens_per_frame="int", block_size="int", decay_factor="nonnegative_float",
                 sink_frame="bool", text_tokens="int"),
    extra=lambda spec: [
        Case(spec.name, "tokens_2^31", "family", lambda a: {**a, "num_frames": 4096, "tokens_per_frame": 1 << 20},
             ERROR, r"below 2\^31"),
        Case(spec.name, "blocks_above_limit", "family", lambda a: {**a, "tokens_per_frame": 1 << 18, "block_size": 1},
             ERROR, r"blocks a side"),
        Case(spec.name, "frames_4097", "family", lambda a: {**a, "num_frames": 4097}, ERROR, r"num_frames"),
        Case(spec.name, "one_token_frames", "family", lambda a: {**a, "num_frames": 50, "tokens_per_frame": 1}, RESULT),
        Case(spec.name, "block_above_sequence", "family", lambda a: {**a, "block_size": 1000}, RESULT),
    ],
    devices=("cpu",),
))


def attention_call(q, k, v, layer_idx, step_idx):
    # The geometry follows the device's kernels; a meta or mixed-device call keeps the CPU's.
    args = geometry("cuda" if q.is_cuda else "cpu")
    return genaccel.nn.RadialAttention(**args, dense_layers=1, dense_timesteps=1)(q, k, v, layer_idx, step_idx)


def attention_base(gen, device):
    args = geometry(device)
    n = args["num_frames"] * args["tokens_per_frame"] + args["text_tokens"]
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    q, k, v = (torch.randn(1, h, n, 32, generator=gen).to(dtype).to(device) for h in (2, 1, 1))
    return dict(q=q, k=k, v=v, layer_idx=3, step_idx=5)


def attention_reference(a):
    q = a["q"]
    args = geometry("cuda" if q.is_cuda else "cpu")
    dense = (a["layer_idx"] is not None and a["layer_idx"] < 1) or (a["step_idx"] is not None and a["step_idx"] < 1)
    mask = genaccel.radial_block_mask(**args)
    mask = torch.ones_like(mask) if dense else mask
    bs = args["block_size"]
    return (block_sparse_attention_reference(q, a["k"], a["v"], mask[None, None].to(q.device), (bs, bs))[0],)


NOT_KERNEL_ARGUMENT = "a layer / step index is only compared with dense_layers / dense_timesteps, never sent to a kernel"

register(OpSpec(
    name="genaccel.nn.RadialAttention",
    call=attention_call,
    base=attention_base,
    reference=attention_reference,
    tensors=dict(q="data", k="data", v="data"),
    scalars=dict(layer_idx="optional_int", step_idx="optional_int"),
    nonfinite=("q", "k", "v"),
    aliases=dict(q="q, k, v", k="q, k, v", v="q, k, v"),
    skip={"layer_idx.above_int32": NOT_KERNEL_ARGUMENT, "step_idx.above_int32": NOT_KERNEL_ARGUMENT},
    extra=lambda spec: [
        Case(spec.name, "dense_layer", "family", lambda a: {**a, "layer_idx": 0}, RESULT),
        Case(spec.name, "dense_step", "family", lambda a: {**a, "step_idx": 0, "layer_idx": None}, RESULT),
    ],
))
