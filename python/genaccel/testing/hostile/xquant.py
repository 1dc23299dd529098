"""The XQuant group quantizer in the hostile-input battery: ops xquant_quantize / xquant_dequantize and
the wrapper genaccel.quantize, each checked against the float64 layout (kvcache/xquant/reference.py).
The kernels take their quotients in double, as the reference does, so codes and scales compare exactly."""

import math

import torch

from genaccel.kvcache.xquant import quantize
from genaccel.kvcache.xquant import reference as R

from . import ERROR, RESULT, Case, OpSpec, register

ROWS, K, BITS, GROUP = 4, 72, 3, 16  # the last group of a row is short (72 = 4 x 16 + 8)


def data(gen, device):
    return (torch.randn(ROWS, K, generator=gen) * 2 + 0.5).to(device)


# -- op xquant_quantize ---------------------------------------------------------------------------------


def quantize_base(gen, device):
    return dict(x=data(gen, device), bits=BITS, group_size=GROUP, fp16_zero=False)


def quantize_reference(a):
    ref = R.quantize(a["x"].cpu().double(), a["bits"], a["group_size"], "fp16" if a["fp16_zero"] else "int")
    return ref["codes"], ref["scales"], ref["zeros"]


def quantize_extra(spec):
    def constant_groups(a):
        x = a["x"].clone()
        x[0] = 1.5
        x[1, :GROUP] = -0.25
        x[2] = 0.0
        return {**a, "x": x}

    return [
        Case(spec.name, "constant_groups", "family", constant_groups, RESULT),
        Case(spec.name, "fp16_zero", "family", lambda a: {**a, "fp16_zero": True}, RESULT),
        Case(spec.name, "bits_2", "family", lambda a: {**a, "bits": 2}, RESULT),
        Case(spec.name, "bits_8", "family", lambda a: {**a, "bits": 8}, RESULT),
        Case(spec.name, "bits_5", "family", lambda a: {**a, "bits": 5}, ERROR, r"\bbits\b"),
        Case(spec.name, "group_not_multiple_of_8", "family", lambda a: {**a, "group_size": 12}, ERROR,
             r"group_size"),
        Case(spec.name, "group_above_row", "family", lambda a: {**a, "group_size": 128}, RESULT),
        Case(spec.name, "range_beyond_float16", "family", lambda a: {**a, "x": a["x"] * 1e5}, RESULT),
    ]


register(OpSpec(
    name="genaccel::xquant_quantize",
    call=torch.ops.genaccel.xquant_quantize,
    base=quantize_base,
    reference=quantize_reference,
    tensors=dict(x="data"),
    scalars=dict(bits="int", group_size="int", fp16_zero="bool"),
    nonfinite=("x",),
    ok_dtypes=dict(x=(torch.bfloat16, torch.float16)),
    extra=quantize_extra,
))


# -- op xquant_dequantize -------------------------------------------------------------------------------


def dequantize_base(gen, device):
    codes, scales, zeros = torch.ops.genaccel.xquant_quantize(data(gen, "cpu"), BITS, GROUP, False)
    return dict(codes=codes.to(device), scales=scales.to(device), zeros=zeros.to(device), bits=BITS,
                group_size=GROUP, cols=K, dtype=torch.float32)


def dequantize_reference(a):
    zero = "fp16" if a["zeros"].dtype == torch.float16 else "int"
    out = R.dequantize(a["codes"].cpu(), a["scales"].cpu(), a["zeros"].cpu(), a["bits"], a["group_size"], a["cols"], zero)
    return (out.to(a["dtype"]).double(),)  # the values in the output dtype the op is asked for


def dequantize_extra(spec):
    def fp16_offsets(a):
        codes, scales, zeros = torch.ops.genaccel.xquant_quantize(data(torch.Generator().manual_seed(5), "cpu"), BITS,
                                                                  GROUP, True)
        d = a["codes"].device
        return {**a, "codes": codes.to(d), "scales": scales.to(d), "zeros": zeros.to(d)}

    return [
        Case(spec.name, "fp16_offsets", "family", fp16_offsets, RESULT),
        Case(spec.name, "bfloat16_out", "family", lambda a: {**a, "dtype": torch.bfloat16}, RESULT),
        Case(spec.name, "cols_mismatch", "family", lambda a: {**a, "cols": K + 8}, ERROR, r"\bcodes\b"),
        Case(spec.name, "int_dtype", "family", lambda a: {**a, "dtype": torch.int32}, ERROR, r"\bdtype\b"),
        Case(spec.name, "nan_scale", "family",
             lambda a: {**a, "scales": a["scales"].index_fill(1, torch.tensor([1], device=a["scales"].device),
                                                               math.nan)}, RESULT),
    ]


register(OpSpec(
    name="genaccel::xquant_dequantize",
    call=torch.ops.genaccel.xquant_dequantize,
    base=dequantize_base,
    reference=dequantize_reference,
    # codes: packed bytes (any value is a valid code); scales, zeros: float16 / packed uint8.
    tensors=dict(codes="mask", scales="stat", zeros="mask"),
    scalars=dict(bits="int", group_size="int", cols="int"),
    nonfinite=(),
    ok_dtypes=dict(codes=(torch.uint8,), zeros=(torch.uint8,)),
    extra=dequantize_extra,
))


# -- genaccel.quantize ------------------------------------------------------------------------------------


def wrapper_base(gen, device):
    return dict(x=data(gen, device), bits=BITS, group_size=GROUP, axis=-1, zero="int")


def wrapper_reference(a):
    ref = R.quantize(a["x"].cpu().double(), a["bits"], a["group_size"], a["zero"])
    return ref["codes"], ref["scales"], ref["zeros"]


register(OpSpec(
    name="genaccel.quantize",
    call=quantize,
    base=wrapper_base,
    reference=wrapper_reference,
    outputs=lambda qt: (qt.codes, qt.scales, qt.zeros),
    tensors=dict(x="data"),
    scalars=dict(bits="int", group_size="int", zero="choice"),
    ok_dtypes=dict(x=(torch.bfloat16, torch.float16)),
    skip={"x.rank_up": "quantize takes x of any rank (groups run along axis)",
          "x.rank_down": "quantize takes x of any rank (groups run along axis)"},
    extra=lambda spec: [
        Case(spec.name, "nan", "family", lambda a: {**a, "x": a["x"].index_fill(1, torch.tensor([3]), math.nan)},
             ERROR, r"\bx\b"),
        Case(spec.name, "range_beyond_float16", "family", lambda a: {**a, "x": a["x"] * 1e6}, ERROR, r"\bx\b"),
        Case(spec.name, "axis_out_of_range", "family", lambda a: {**a, "axis": 2}, ERROR, r"\baxis\b"),
    ],
))


# -- ops xquant_matmul / xquant_weighted_sum ----------------------------------------------------------------

N, M, BATCH = 6, 3, 2  # weight rows; attention rows; the weighted sum's batch (ROWS = BATCH x 2 tokens)


def _codes(device):
    codes, scales, zeros = torch.ops.genaccel.xquant_quantize(data(torch.Generator().manual_seed(3), "cpu"), BITS,
                                                              GROUP, False)
    return dict(codes=codes.to(device), scales=scales.to(device), zeros=zeros.to(device), bits=BITS,
                group_size=GROUP, cols=K)


def _x(a):
    zero = "fp16" if a["zeros"].dtype == torch.float16 else "int"
    return R.dequantize(a["codes"].cpu(), a["scales"].cpu(), a["zeros"].cpu(), a["bits"], a["group_size"], a["cols"],
                        zero)


def matmul_base(gen, device):
    return dict(**_codes(device), weight=torch.randn(N, K, generator=gen).to(device),
                bias=torch.randn(N, generator=gen).to(device))


def matmul_reference(a):
    out = _x(a) @ a["weight"].cpu().double().T
    return (out if a["bias"] is None else out + a["bias"].cpu().double(),)


register(OpSpec(
    name="genaccel::xquant_matmul",
    call=torch.ops.genaccel.xquant_matmul,
    base=matmul_base,
    reference=matmul_reference,
    tensors=dict(codes="mask", scales="stat", zeros="mask", weight="data", bias="weight"),
    scalars=dict(bits="int", group_size="int", cols="int"),
    nonfinite=("weight",),
    ok_dtypes=dict(codes=(torch.uint8,), zeros=(torch.uint8,)),
    extra=lambda spec: [
        Case(spec.name, "no_bias", "family", lambda a: {**a, "bias": None}, RESULT),
        Case(spec.name, "bfloat16_weight", "family",
             lambda a: {**a, "weight": a["weight"].bfloat16(), "bias": a["bias"].bfloat16()}, RESULT),
        Case(spec.name, "bias_dtype_mismatch", "family", lambda a: {**a, "bias": a["bias"].half()}, ERROR, r"\bbias\b"),
        Case(spec.name, "weight_cols_mismatch", "family", lambda a: {**a, "weight": a["weight"][:, :-8]}, ERROR,
             r"\bweight\b"),
        Case(spec.name, "cols_mismatch", "family", lambda a: {**a, "cols": K + 8}, ERROR, r"\bcodes\b"),
    ],
))


def weighted_sum_base(gen, device):
    a = torch.softmax(torch.randn(BATCH, M, ROWS // BATCH, generator=gen), -1)
    return dict(a=a.to(device), **_codes(device))


def weighted_sum_reference(a):
    t = a["a"].shape[2]
    return (a["a"].cpu().double() @ _x(a).view(-1, t, a["cols"]),)


register(OpSpec(
    name="genaccel::xquant_weighted_sum",
    call=torch.ops.genaccel.xquant_weighted_sum,
    base=weighted_sum_base,
    reference=weighted_sum_reference,
    tensors=dict(a="data", codes="mask", scales="stat", zeros="mask"),
    scalars=dict(bits="int", group_size="int", cols="int"),
    nonfinite=("a",),
    ok_dtypes=dict(codes=(torch.uint8,), zeros=(torch.uint8,)),
    extra=lambda spec: [
        Case(spec.name, "float16_a", "family", lambda a: {**a, "a": a["a"].half()}, RESULT),
        Case(spec.name, "tokens_mismatch", "family", lambda a: {**a, "a": a["a"][:, :, :1]}, ERROR, r"\bcodes\b"),
    ],
))
