"""The DC-AE ops in the hostile-input battery: dcae_chunk_causal_conv3d, dcae_space_to_channel,
dcae_channel_to_space and (through its wrapper) dcae_lite_mla, each checked against its float64
reference (autoencoder/dcae/reference.py)."""

import torch

from genaccel.autoencoder import lite_mla
from genaccel.autoencoder.dcae import reference as R

from . import ERROR, RESULT, Case, OpSpec, register

B, CIN, COUT, T, H, W, CHUNK = 1, 3, 4, 4, 5, 6, 2


# -- op dcae_chunk_causal_conv3d ----------------------------------------------------------------------------


def conv_base(gen, device):
    def rnd(*s):
        return torch.randn(*s, generator=gen).to(device)

    return dict(x=rnd(B, CIN, T, H, W), weight=rnd(COUT, CIN, 3, 3, 3) / 9, bias=rnd(COUT), chunk_size=CHUNK,
                cache=rnd(B, CIN, 1, H, W))


def conv_reference(a):
    cache = None if a["cache"] is None else a["cache"].cpu()
    bias = None if a["bias"] is None else a["bias"].cpu()
    return (R.chunk_causal_conv3d(a["x"].cpu(), a["weight"].cpu(), bias, a["chunk_size"], cache),)


def conv_extra(spec):
    def kernel(kt, kh, kw):  # a weight of that kernel size, the cache of its halo (p = 1 or none)
        def mutate(a):
            weight = torch.ones(COUT, CIN, kt, kh, kw, device=a["x"].device) / 50
            return {**a, "weight": weight, "cache": a["cache"] if kt == 3 else None}

        return mutate

    return [
        Case(spec.name, "no_cache", "family", lambda a: {**a, "cache": None}, RESULT),
        Case(spec.name, "no_bias", "family", lambda a: {**a, "bias": None}, RESULT),
        Case(spec.name, "one_chunk", "family", lambda a: {**a, "chunk_size": T}, RESULT),
        Case(spec.name, "chunk_of_one", "family", lambda a: {**a, "chunk_size": 1}, RESULT),
        Case(spec.name, "frames_not_multiple_of_chunk", "family", lambda a: {**a, "chunk_size": 3}, ERROR,
             r"chunk_size"),
        Case(spec.name, "even_kernel", "family", kernel(3, 2, 3), ERROR, r"weight"),
        Case(spec.name, "temporal_kernel_1", "family", kernel(1, 3, 1), RESULT),
        Case(spec.name, "half_kernel_above_chunk", "family", lambda a: {**a, "chunk_size": 1, "cache": None,
             "weight": torch.ones(COUT, CIN, 5, 1, 1, device=a["x"].device)}, ERROR, r"chunk_size"),
        Case(spec.name, "cache_wrong_frames", "family", lambda a: {**a, "cache": a["cache"].expand(-1, -1, 2, -1, -1)},
             ERROR, r"cache"),
        Case(spec.name, "weight_wrong_cin", "family", lambda a: {**a, "weight": a["weight"][:, :2]}, ERROR, r"weight"),
        Case(spec.name, "kernel_larger_than_frame", "family", kernel(3, 7, 9), RESULT),
    ]


register(OpSpec(
    name="genaccel::dcae_chunk_causal_conv3d",
    call=torch.ops.genaccel.dcae_chunk_causal_conv3d,
    base=conv_base,
    reference=conv_reference,
    tensors=dict(x="data", weight="weight", bias="weight", cache="data"),
    scalars=dict(chunk_size="int"),
    nonfinite=("x", "cache"),
    extra=conv_extra,
))


# -- ops dcae_space_to_channel / dcae_channel_to_space -----------------------------------------------------


def shuffle_spec(name, reference, to_channel):
    def base(gen, device):
        shape = (1, 4, 4, 6, 8) if to_channel else (1, 8, 2, 3, 4)
        return dict(x=torch.randn(*shape, generator=gen).to(device), r=2, rt=2, out_channels=8 if to_channel else 4)

    def ref(a):
        return (reference(a["x"].cpu(), a["r"], a["rt"], a["out_channels"]),)

    def extra(spec):
        cases = [
            Case(spec.name, "image", "family", lambda a: {**a, "x": a["x"][:, :, 0], "rt": 1}, RESULT),
            Case(spec.name, "image_with_rt", "family", lambda a: {**a, "x": a["x"][:, :, 0]}, ERROR, r"\brt\b"),
            Case(spec.name, "factor_one", "family", lambda a: {**a, "r": 1, "rt": 1,
                                                             "out_channels": a["x"].shape[1]}, RESULT),
            Case(spec.name, "factor_huge", "family", lambda a: {**a, "r": 1 << 20}, ERROR, r"\br\b"),
        ]
        if to_channel:
            cases += [Case(spec.name, "groups_uneven", "family", lambda a: {**a, "out_channels": 7}, ERROR,
                           r"out_channels"),
                      Case(spec.name, "height_not_multiple", "family", lambda a: {**a, "x": a["x"][..., :5, :]},
                           ERROR, r"height")]
        else:
            cases += [Case(spec.name, "repeats_uneven", "family", lambda a: {**a, "x": a["x"][:, :3]}, ERROR,
                           r"channel count")]
        return cases

    register(OpSpec(
        name=name,
        call=getattr(torch.ops.genaccel, name.split("::")[1]),
        base=base,
        reference=ref,
        tensors=dict(x="data"),
        scalars=dict(r="int", rt="int", out_channels="int"),
        nonfinite=("x",),
        ok_dtypes=dict(x=(torch.bfloat16, torch.float16)),
        extra=extra,
    ))


shuffle_spec("genaccel::dcae_space_to_channel", R.space_to_channel, True)
shuffle_spec("genaccel::dcae_channel_to_space", R.channel_to_space, False)


# -- op dcae_lite_mla -------------------------------------------------------------------------------------


def lite_mla_extra(spec):
    def dead_head(a):  # head 0's keys all negative: ReLU(k) = 0, the denominator is eps alone
        qkv = a["qkv"].clone()
        qkv[:, 8:16] = -qkv[:, 8:16].abs()
        return {**a, "qkv": qkv}

    return [
        Case(spec.name, "dead_head", "family", dead_head, RESULT),
        Case(spec.name, "dead_head_fp16", "family", lambda a: {**dead_head(a), "qkv": dead_head(a)["qkv"].half()},
             RESULT),
        Case(spec.name, "one_position", "family", lambda a: {**a, "qkv": a["qkv"][..., :1, :1]}, RESULT),
        Case(spec.name, "channels_not_3_head_dim", "family", lambda a: {**a, "qkv": a["qkv"][:, :40]}, ERROR,
             r"head_dim"),
        Case(spec.name, "eps_zero", "family", lambda a: {**a, "eps": 0.0}, RESULT),
        Case(spec.name, "eps_negative", "family", lambda a: {**a, "eps": -1.0}, ERROR, r"\beps\b"),
        Case(spec.name, "head_dim_huge", "family", lambda a: {**a, "head_dim": 1 << 20}, ERROR, r"head_dim"),
    ]


# The wrapper, whose eps check refuses what the raw op's float argument cannot tell apart (True is 1.0).
register(OpSpec(
    name="genaccel.autoencoder.lite_mla",
    call=lite_mla,
    base=lambda gen, device: dict(qkv=torch.randn(1, 2 * 3 * 8, 4, 5, generator=gen).to(device), head_dim=8,
                                  eps=1e-15),
    reference=lambda a: (R.lite_mla(a["qkv"].cpu(), a["head_dim"], a["eps"]),),
    tensors=dict(qkv="data"),
    scalars=dict(head_dim="int", eps="nonnegative_float"),
    nonfinite=("qkv",),
    ok_dtypes=dict(qkv=(torch.bfloat16, torch.float16)),
    extra=lite_mla_extra,
))
