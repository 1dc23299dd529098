"""The SLA ops in the hostile-input battery: the wrapper, the block map, ops sla_select_blocks / sla_fwd /
sla_bwd, each checked against the float64 SLA reference (attention/sla/reference.py) on the plan the
float64 block map makes."""

import math

import torch

import genaccel
from genaccel.attention.sla import sla_block_map
from genaccel.attention.sla.reference import (
    feature_map,
    linear_branch_backward_reference,
    select_blocks_reference,
    sla_block_map_reference,
    sparse_linear_attention_reference,
)

from . import ERROR, RESULT, Case, OpSpec, register
from .block_sparse import bwd_reference as sparse_bwd_reference

TOPK, LOW_K = 0.4, 0.2


def sizes(device):
    """(dtype, B, H, Hkv, Nq, Nk, D, block): on the CPU float32 with blocks of 32 (7 x 5 blocks, partial
    last ones); on CUDA bfloat16 within its kernels' limits (block_q 64, head dim 32)."""
    if device == "cpu":
        return torch.float32, 1, 2, 1, 200, 160, 32, 32
    return torch.bfloat16, 1, 2, 1, 320, 352, 32, 64


def qkv(gen, device):
    dtype, B, H, Hkv, Nq, Nk, D, _ = sizes(device)
    return [torch.randn(*s, generator=gen).to(dtype).to(device) for s in ((B, H, Nq, D), (B, Hkv, Nk, D), (B, Hkv, Nk, D))]


def plan_of_codes(codes, width=None):
    """(kv_indices, kv_counts) of the critical blocks (code 1) of each row, ascending, padded with -1 to
    `width` (default: the largest count)."""
    critical = codes == 1
    counts = critical.sum(-1, dtype=torch.int32)
    if width is None:
        width = int(counts.max()) if counts.numel() else 0
    ids = torch.arange(codes.shape[-1], dtype=torch.int32, device=codes.device)
    keyed = torch.where(critical, ids, codes.shape[-1])
    ordered = torch.nn.functional.pad(torch.sort(keyed, dim=-1).values, (0, max(0, width - codes.shape[-1])),
                                      value=codes.shape[-1])[..., :width]
    return torch.where(ordered == codes.shape[-1], -1, ordered).to(torch.int32).contiguous(), counts


def reference_plan(q, k, block):
    codes = sla_block_map_reference(q.cpu(), k.cpu(), TOPK, LOW_K, (block, block)).to(q.device)
    return (codes, *plan_of_codes(codes))


def projection(gen, device, D):
    return (0.2 * torch.randn(D, D, generator=gen)).to(device), (0.2 * torch.randn(D, generator=gen)).to(device)


# Identical key rows (k.stride0_rows) make every pooled score mathematically equal: float32 rounding breaks the
# ties differently from the float64 reference, so no reference comparison can decide these cases.
TIES = "identical keys tie every block score; float32 and float64 break such ties differently"


# -- genaccel.sparse_linear_attention ---------------------------------------------------------------


def wrapper_base(gen, device):
    q, k, v = qkv(gen, device)
    block = sizes(device)[-1]
    w, b = projection(gen, device, q.shape[-1])
    return dict(q=q, k=k, v=v, proj_weight=w, proj_bias=b, topk=TOPK, low_k=LOW_K, block_size=block,
                feature_map="softmax", linear_over_all_keys=False, precision="tf32", backend="auto")


def wrapper_reference(a):
    bs = a["block_size"]
    bs = (bs, bs) if isinstance(bs, int) else tuple(bs)
    codes = sla_block_map_reference(a["q"], a["k"], a["topk"], a["low_k"], bs)
    return (sparse_linear_attention_reference(a["q"], a["k"], a["v"], codes, a["proj_weight"], a["proj_bias"], bs,
                                              a["feature_map"], a["linear_over_all_keys"])[0],)


register(OpSpec(
    name="genaccel.sparse_linear_attention",
    call=genaccel.sparse_linear_attention,
    base=wrapper_base,
    reference=wrapper_reference,
    tensors=dict(q="data", k="data", v="data", proj_weight="weight", proj_bias="weight"),
    scalars=dict(topk="fraction", low_k="fraction", block_size="block", feature_map="choice", precision="choice",
                 backend="choice"),
    nonfinite=("q", "k", "v"),
    cuda_poisons_rows=True,
    ok_dtypes=dict(proj_weight=(torch.float64,), proj_bias=(torch.float64,)),
    aliases=dict(q="q, k, v|q and k", k="q, k, v|q and k", v="q, k, v"),
    skip={"k.stride0_rows": TIES},
    extra=lambda spec: [
        Case(spec.name, "topk_plus_low_k_above_one", "family", lambda a: {**a, "topk": 0.7, "low_k": 0.5}, ERROR,
             r"topk \+ low_k"),
        Case(spec.name, "proj_bias_without_weight", "family", lambda a: {**a, "proj_weight": None}, ERROR,
             r"proj_bias needs proj_weight"),
        Case(spec.name, "relu_features", "family", lambda a: {**a, "feature_map": "relu"}, RESULT),
        Case(spec.name, "all_keys_variant", "family", lambda a: {**a, "linear_over_all_keys": True}, RESULT),
        Case(spec.name, "topk_one_low_k_zero", "family", lambda a: {**a, "topk": 1.0, "low_k": 0.0}, RESULT),
        Case(spec.name, "block_map_not_a_tuple", "family", lambda a: {**a, "block_map": a["q"]}, ERROR, r"block_map"),
    ],
))


# -- genaccel.attention.sla.sla_block_map ---------------------------------------------------------------


def block_map_base(gen, device):
    q, k, _ = qkv(gen, device)
    return dict(q=q, k=k, topk=TOPK, low_k=LOW_K, block_size=sizes(device)[-1])


def block_map_reference(a):
    bs = a["block_size"]
    codes = sla_block_map_reference(a["q"], a["k"], a["topk"], a["low_k"], (bs, bs) if isinstance(bs, int) else bs)
    return (codes, *plan_of_codes(codes))


register(OpSpec(
    name="genaccel.sla_block_map",
    call=sla_block_map,
    base=block_map_base,
    reference=block_map_reference,
    tensors=dict(q="data", k="data"),
    scalars=dict(topk="fraction", low_k="fraction", block_size="block"),
    nonfinite=("q", "k"),
    ok_dtypes=dict(q=(torch.float64,), k=(torch.float64,)),
    aliases=dict(q="q and k|q \\(", k="q and k|k \\("),
    skip={"k.stride0_rows": TIES},
))


# -- op sla_select_blocks ----------------------------------------------------------------------------------


def select_reference(a):
    codes = select_blocks_reference(a["scores"], a["n_critical"], a["n_negligible"])
    return codes, plan_of_codes(codes, a["n_critical"])[0]


register(OpSpec(
    name="genaccel::sla_select_blocks",
    call=torch.ops.genaccel.sla_select_blocks,
    base=lambda gen, device: dict(scores=torch.randn(1, 2, 7, 9, generator=gen).to(device), n_critical=3,
                                  n_negligible=2),
    reference=select_reference,
    tensors=dict(scores="data"),
    scalars=dict(n_critical="int", n_negligible="int"),
    nonfinite=("scores",),
    extra=lambda spec: [
        Case(spec.name, "ties", "family", lambda a: {**a, "scores": a["scores"].round()}, RESULT),
        Case(spec.name, "minus_zero_and_zero", "family",
             lambda a: {**a, "scores": torch.where(a["scores"] > 0, 0.0, -0.0)}, RESULT),
        Case(spec.name, "all_nan", "family", lambda a: {**a, "scores": torch.full_like(a["scores"], math.nan)}, RESULT),
        Case(spec.name, "n_critical_above_tk", "family", lambda a: {**a, "n_critical": 20}, ERROR, r"n_critical"),
        Case(spec.name, "n_negligible_above_rest", "family", lambda a: {**a, "n_negligible": 7}, ERROR,
             r"n_negligible"),
    ],
))


# -- ops sla_fwd / sla_bwd -----------------------------------------------------------------------------------


def fwd_base(gen, device):
    q, k, v = qkv(gen, device)
    block = sizes(device)[-1]
    codes, kv_indices, kv_counts = reference_plan(q, k, block)
    w, _ = projection(gen, device, q.shape[-1])
    return dict(q=q, k=k, v=v, codes=codes, kv_indices=kv_indices, kv_counts=kv_counts, block_q=block,
                block_k=block, scale=q.shape[-1] ** -0.5, feature_map="softmax", linear_over_all_keys=False,
                proj_weight=w, check_plan=True, precision="tf32", backend="auto")


def fwd_reference(a):
    """out_sparse and out_linear = O^l W^T (the op leaves Proj's bias to the wrapper)."""
    _, out_sparse, out_linear = sparse_linear_attention_reference(
        a["q"], a["k"], a["v"], a["codes"], None, None, (a["block_q"], a["block_k"]), a["feature_map"],
        a["linear_over_all_keys"], a["scale"])
    w = a["proj_weight"]
    return out_sparse, out_linear if w is None else out_linear @ w.double().t()


def codes_extra(spec):
    def critical_not_listed(a):  # a critical block missing from kv_indices: counted by neither branch
        codes = a["codes"].clone()
        codes[..., 0, :] = torch.where(codes[..., 0, :] == 0, 1, codes[..., 0, :])
        return {**a, "codes": codes}

    return [
        Case(spec.name, "critical_block_not_listed", "family", critical_not_listed, ERROR, r"critical blocks of codes"),
        Case(spec.name, "kv_counts_above_max_kv", "family",
             lambda a: {**a, "kv_counts": a["kv_counts"] + a["kv_indices"].shape[-1]}, ERROR, r"kv_counts"),
        Case(spec.name, "no_projection", "family", lambda a: {**a, "proj_weight": None}, RESULT),
        Case(spec.name, "relu_features", "family", lambda a: {**a, "feature_map": "relu"}, RESULT),
        Case(spec.name, "all_keys_variant", "family", lambda a: {**a, "linear_over_all_keys": True}, RESULT),
    ]


SLA_SCALARS = dict(block_q="int", block_k="int", scale="float", feature_map="choice", linear_over_all_keys="bool",
                   check_plan="bool", precision="choice", backend="choice")
SLA_ALIASES = dict(q="q, k, v", k="q, k, v", v="q, k, v", block_q="block_q and block_k",
                   block_k="block_q and block_k", kv_indices="kv_indices / kv_counts|kv_indices and kv_counts",
                   kv_counts="kv_indices / kv_counts|kv_indices and kv_counts")

register(OpSpec(
    name="genaccel::sla_fwd",
    call=torch.ops.genaccel.sla_fwd,
    base=fwd_base,
    reference=fwd_reference,
    outputs=lambda r: (r[0], r[2]),
    tensors=dict(q="data", k="data", v="data", codes="codes", kv_indices="index", kv_counts="count",
                 proj_weight="weight"),
    scalars=SLA_SCALARS,
    nonfinite=("q", "k", "v"),
    cuda_poisons_rows=True,
    ok_dtypes=dict(proj_weight=(torch.float64,)),
    aliases=SLA_ALIASES,
    extra=codes_extra,
))


def bwd_base(gen, device):
    a = fwd_base(gen, device)
    out_sparse, lse, out_linear, denom = torch.ops.genaccel.sla_fwd(**a)
    grad_sparse = torch.randn(out_sparse.shape, generator=gen).to(out_sparse.dtype).to(device)
    grad_linear = torch.randn(out_linear.shape, generator=gen).to(out_linear.dtype).to(device)
    delta = torch.ops.genaccel.attention_delta(grad_sparse, out_sparse)
    return dict(grad_sparse=grad_sparse, grad_linear=grad_linear, q=a["q"], k=a["k"], v=a["v"], codes=a["codes"],
                kv_indices=a["kv_indices"], kv_counts=a["kv_counts"], out_sparse=out_sparse, lse=lse, delta=delta,
                out_linear=out_linear, denom=denom, block_q=a["block_q"], block_k=a["block_k"], scale=a["scale"],
                feature_map=a["feature_map"], linear_over_all_keys=False, proj_weight=a["proj_weight"],
                check_plan=True, precision="tf32", backend="auto")


def bwd_reference(a):
    """dq, dk, dv (and dW) of both branches from the given statistics: the sparse branch's
    (block_sparse's specification), plus the linear branch's by the paper's formulas on phi(q), phi(k)
    and the projected values V W^T, carried back through phi and W."""
    dq, dk, dv = sparse_bwd_reference(dict(a, dout=a["grad_sparse"]))
    q, k, v = (a[n].double().requires_grad_() for n in "qkv")
    w = a["proj_weight"]
    vp = v if w is None else v @ w.double().t()
    phi_q, phi_k = feature_map(q, a["feature_map"]), feature_map(k, a["feature_map"])
    d_phi_q, d_phi_k, d_vp = linear_branch_backward_reference(
        a["grad_linear"], phi_q.detach(), phi_k.detach(), vp.detach(), a["codes"], a["out_linear"], a["denom"],
        (a["block_q"], a["block_k"]), a["linear_over_all_keys"])
    dq_l, dk_l, dv_l = torch.autograd.grad((phi_q, phi_k, vp), (q, k, v), (d_phi_q, d_phi_k, d_vp), allow_unused=True)
    dv_l = d_vp if dv_l is None else dv_l
    d_w = torch.empty(0, dtype=torch.float64) if w is None else d_vp.reshape(-1, w.shape[0]).t() @ a["v"].double().reshape(-1, w.shape[0])
    return dq + dq_l, dk + dk_l, dv + dv_l, d_w


register(OpSpec(
    name="genaccel::sla_bwd",
    call=torch.ops.genaccel.sla_bwd,
    base=bwd_base,
    reference=bwd_reference,
    tensors=dict(grad_sparse="data", grad_linear="data", q="data", k="data", v="data", codes="codes",
                 kv_indices="index", kv_counts="count", out_sparse="stat", lse="stat", delta="stat", out_linear="stat",
                 denom="stat", proj_weight="weight"),
    scalars=SLA_SCALARS,
    ok_dtypes=dict(proj_weight=(torch.float64,)),
    aliases=dict(SLA_ALIASES, lse="lse", delta="delta", denom="denom"),
    extra=codes_extra,
))
